"""``textclf classify``: classify texts through a running server.

    textclf classify --address localhost:8001 --model news "text one" "text two"
    cat texts.txt | textclf classify --model news --json
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict

import grpc

from client.client import ClassifyResult, TextclfClient


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="textclf classify", description="Classify texts through a textclf server.")
    parser.add_argument("texts", nargs="*", help="texts to classify (default: one per line from stdin)")
    parser.add_argument("--address", default="localhost:8001", help="server HOST:PORT")
    parser.add_argument("--model", required=True, help="model name")
    parser.add_argument("--version", type=int, default=None, help="model version (default: the server's default)")
    parser.add_argument("--top-k", type=int, default=None, help="labels to show per text")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--tls", action="store_true", help="use TLS, verifying the server with the system roots")
    parser.add_argument("--tls-ca", default=None, help="PEM CA that signed the server's certificate (implies --tls)")
    parser.add_argument("--tls-cert", default=None, help="PEM client certificate, for a server that requires mTLS")
    parser.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    return parser


def format_table(texts: Sequence[str], result: ClassifyResult, width: int = 48) -> str:
    lines = [f"model {result.model} version {result.version}", f"{'label':<16} {'prob':>7}  text"]
    for text, p in zip(texts, result.predictions):
        shown = text.replace("\n", " ")
        shown = shown if len(shown) <= width else shown[: width - 1] + "…"
        lines.append(f"{p.label:<16} {p.probability:7.4f}  {shown}")
        for label, prob in p.top[1:]:
            lines.append(f"  {label:<14} {prob:7.4f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    texts = list(args.texts) or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        print("textclf classify: no texts (give them as arguments or on stdin)", file=sys.stderr)
        return 2
    try:
        with TextclfClient(args.address, timeout=args.timeout, tls=args.tls, tls_ca=args.tls_ca,
                           tls_cert=args.tls_cert, tls_key=args.tls_key) as client:
            result = client.classify(texts, args.model, version=args.version, top_k=args.top_k)
    except grpc.RpcError as exc:
        print(f"textclf classify: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:  # unreadable TLS file, cert without key
        print(f"textclf classify: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"model": result.model, "version": result.version,
                          "predictions": [dict(asdict(p), text=t) for t, p in zip(texts, result.predictions)]},
                         ensure_ascii=False, indent=2))
    else:
        print(format_table(texts, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
