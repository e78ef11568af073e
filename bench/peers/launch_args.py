"""The command line every peer launcher takes from bench_peers.py (stdlib only: runs in each peer venv)."""
from __future__ import annotations

import argparse
from pathlib import Path


def launcher_parser(description: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--bundle", type=Path, required=True, help="<repository>/<name>/<version>")
    p.add_argument("--model", required=True, help="the model name clients ask for")
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--metrics-port", type=int, required=True)
    p.add_argument("--workdir", type=Path, required=True, help="a scratch folder for the server's files")
    return p
