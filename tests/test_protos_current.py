"""The committed stubs in textclf_protos/ must match what scripts/gen_protos.py generates now."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_protos(tmp_path: Path) -> None:
    generated = _load_generator().generate(tmp_path)
    assert generated, "no .proto files found under protos/"
    stale = []
    for path in sorted(p for p in tmp_path.rglob("*") if p.is_file()):
        committed = ROOT / "textclf_protos" / path.relative_to(tmp_path)
        if not committed.is_file() or committed.read_bytes() != path.read_bytes():
            stale.append(str(path.relative_to(tmp_path)))
    assert not stale, f"stale or missing stubs (run scripts/gen_protos.py): {stale}"


def test_textclf_stubs_import() -> None:
    from textclf_protos.textclf.v1 import textclf_pb2, textclf_pb2_grpc

    assert textclf_pb2.DESCRIPTOR.package == "textclf.v1"
    assert hasattr(textclf_pb2_grpc, "TextClassifierStub")
