"""``textclf demo`` (the README's main job): the whole flow on the embedded default.

1. train the default BBC News model unless ``runs/news/best.pt`` exists;
2. export it (parity suite included) unless the repository already holds a ``news`` bundle;
3. start the gRPC service as a separate process and wait for its health check;
4. classify sample texts through the gRPC client and show a few live metrics;
5. stop the service with SIGTERM (or keep it running with ``--keep-serving``).

This module is the only place that spans the offline and online halves, and it does so only
through their CLIs and the bundle on disk: the service process never imports torch.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from bundle.store import BundleError, list_versions, verify_bundle

logger = logging.getLogger(__name__)

SAMPLE_TEXTS = [
    "The central bank raised interest rates again as inflation pushed share prices lower.",
    "The striker scored twice in the second half to send the club through to the cup final.",
    "The prime minister faces a vote in parliament on the new immigration bill next week.",
    "The band's new album tops the charts as the singer prepares for a world tour and film role.",
    "A new smartphone chip promises faster broadband downloads and longer battery life.",
    "",
    "Центральный банк повысил ставку 🙂",
]


def free_port(preferred: int) -> int:
    """``preferred`` when it is free on 127.0.0.1, else any free port."""
    for candidate in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise OSError("no free port")


def ensure_bundle(repository: Path, name: str, run_dir: Path, train_args: Sequence[str]) -> None:
    versions = list_versions(repository, name)
    if versions:
        try:
            verify_bundle(repository / name / str(versions[-1]))
            logger.info("using existing bundle %s (versions %s)", repository / name, versions)
            return
        except BundleError as exc:  # e.g. published before the card carried answers_sha256
            logger.warning("the latest bundle would be refused by the service (%s): exporting a new version", exc)
    checkpoint = run_dir / "best.pt"
    if not checkpoint.exists():
        logger.info("no model yet: training the default model into %s (progress below)", run_dir)
        from training.cli import main as train_main

        if train_main(["--run-dir", str(run_dir), *train_args]) != 0:
            raise SystemExit("training failed")
    logger.info("exporting %s to %s (ONNX + parity suite)", checkpoint, repository / name)
    from export.cli import main as export_main

    if export_main([str(checkpoint), "--repository", str(repository), "--name", name]) != 0:
        raise SystemExit("export failed (see the parity table above)")


def wait_until_serving(address: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    """Wait for health SERVING; each check waits (up to 1 s) for the port instead of spinning."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"the service exited with code {process.returncode} before it was ready")
            try:
                response = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0, wait_for_ready=True)
            except grpc.RpcError:
                continue  # not listening yet (the call waited for the port) or still loading
            if response.status == health_pb2.HealthCheckResponse.SERVING:
                return
    raise SystemExit(f"the service at {address} was not SERVING within {timeout:.0f} s")


def show_metrics(url: str) -> None:
    wanted = ("textclf_requests_total", "textclf_texts_total", "textclf_tokens_total", "textclf_batch_size_count",
              "textclf_model_loaded")
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    lines = [line for line in body.splitlines() if line.startswith(wanted)]
    print(f"\nmetrics at {url} (a few lines):")
    print("\n".join(f"  {line}" for line in lines[:12]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="textclf demo", description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--name", default="news")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/news"))
    parser.add_argument("--port", type=int, default=8001, help="gRPC port (another free one if taken)")
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--keep-serving", action="store_true", help="leave the server running until Ctrl-C")
    parser.add_argument("--train-arg", action="append", default=[], help="extra argument for `textclf train`")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    ensure_bundle(args.repository, args.name, args.run_dir, args.train_arg)
    port, metrics_port = free_port(args.port), free_port(args.metrics_port)
    address = f"127.0.0.1:{port}"
    command = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port),
               "--metrics-host", "127.0.0.1", "--metrics-port", str(metrics_port),
               "--model-repository", str(args.repository)]
    logger.info("starting the service: %s", " ".join(command))
    server = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_until_serving(address, server)
        from client.cli import format_table
        from client.client import TextclfClient

        with TextclfClient(address, timeout=30) as client:
            result = client.classify(SAMPLE_TEXTS, args.name, top_k=2)
        print(f"\nclassified {len(SAMPLE_TEXTS)} texts over gRPC at {address}:\n")
        print(format_table(SAMPLE_TEXTS, result, width=72))
        show_metrics(f"http://127.0.0.1:{metrics_port}/metrics")
        if args.keep_serving:
            print(f"\nTry it yourself: .venv/bin/textclf classify --address {address} --model {args.name} \"some news text\"")
        else:
            print("\nTo keep the server up and call it yourself: .venv/bin/textclf demo --keep-serving, then "
                  f".venv/bin/textclf classify --address {address} --model {args.name} \"some news text\"")
        if args.keep_serving:
            print("serving until Ctrl-C ...")
            server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
