"""``textclf`` command: dispatches to each part's own CLI, importing only that part.

The serving commands (serve, classify, healthcheck) never import torch.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("training.cli", "train a classifier (default: BBC News)"),
    "export": ("export.cli", "export a checkpoint to an ONNX bundle (runs parity)"),
    "parity": ("export.parity_cli", "compare a checkpoint and its ONNX bundle end to end"),
    "serve": ("service.__main__", "serve a model repository over gRPC"),
    "classify": ("client.cli", "classify texts through a running server"),
    "healthcheck": ("service.healthcheck", "gRPC health probe (exit 0 when SERVING)"),
    "demo": ("pipeline.demo", "train (if needed), export, serve and classify sample texts"),
}


def usage() -> str:
    lines = ["usage: textclf <command> [args]", "", "commands:"]
    lines += [f"  {name:<12} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"textclf: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    result = module.main(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
