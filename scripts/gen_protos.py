"""Generate Python stubs for every .proto under protos/ into textclf_protos/.

The stubs are committed; tests/test_protos_current.py regenerates them into a temp dir and
fails when the committed ones differ. Run after editing a .proto:
    .venv/bin/python scripts/gen_protos.py
"""
from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
PACKAGE = "textclf_protos"
# Proto packages whose descriptors go into a private pool instead of protobuf's default one.
# `inference` is the KServe v2 protocol: tritonclient (and MLServer) register the same
# `inference.*` names in the default pool from their own copy of the .proto, and a second
# registration fails with "duplicate symbol" (SeldonIO/MLServer#1730). A private pool lets our
# server and the real tritonclient live in one process (tests, in-process clients).
PRIVATE_POOL_PACKAGES = {"inference"}


def generate(out_dir: Path) -> list[Path]:
    protos = sorted(PROTO_DIR.rglob("*.proto"))
    if not protos:
        return []
    include = Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}"] + [str(p) for p in protos]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    written = []
    top_packages = {p.relative_to(PROTO_DIR).parts[0] for p in protos}
    pattern = re.compile(r"^(from|import) (" + "|".join(map(re.escape, sorted(top_packages))) + r")(\.| )", re.M)
    for path in sorted(out_dir.rglob("*.py*")):
        text = pattern.sub(lambda m: f"{m.group(1)} {PACKAGE}.{m.group(2)}{m.group(3)}", path.read_text())
        if path.name.endswith("_pb2.py") and path.relative_to(out_dir).parts[0] in PRIVATE_POOL_PACKAGES:
            text = text.replace("_descriptor_pool.Default()", "_descriptor_pool.DescriptorPool()")
        path.write_text(text)
        written.append(path)
    for directory in [out_dir, *[d for d in out_dir.rglob("*") if d.is_dir()]]:
        init = directory / "__init__.py"
        if not init.exists():
            init.write_text("")
            written.append(init)
    return written


def main() -> int:
    target = ROOT / PACKAGE
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        for path in sorted(Path(tmp).rglob("*")):
            if path.is_file():
                dest = target / path.relative_to(tmp)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(path.read_bytes())
    print(f"generated stubs in {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
