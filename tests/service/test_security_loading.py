"""Security (issue 5): what the service may load. Bundles hold only ONNX and JSON; no pickle,
``marshal``, ``eval``/``exec``, ``yaml.load`` or torch in service/, bundle/, client/ (an AST
scan); every ``torch.load`` in the repository is ``weights_only=True`` and a checkpoint holding
an arbitrary pickled object is refused without running it. docs/security.md describes what these
tests prove.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


BANNED_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve", "torch"}
BANNED_CALLS = {"eval", "exec", "compile", "__import__"}


def _python_files() -> list[Path]:
    files = [p for d in ("service", "bundle", "client") for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 10
    return files


def test_service_and_bundle_code_never_unpickle_or_evaluate() -> None:
    problems = []
    for path in _python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                problems += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in BANNED_MODULES]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in BANNED_MODULES:
                problems.append(f"{where}: from {node.module} import")
            elif isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Name) and func.id in BANNED_CALLS:
                    problems.append(f"{where}:{node.lineno}: {func.id}()")
                if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                    dotted = f"{func.value.id}.{func.attr}"
                    if dotted in {"yaml.load", "yaml.unsafe_load", "torch.load", "pickle.load", "pickle.loads"}:
                        problems.append(f"{where}:{node.lineno}: {dotted}()")
                    if func.attr == "load" and func.value.id in {"np", "numpy"} and any(
                            k.arg == "allow_pickle" for k in node.keywords):
                        problems.append(f"{where}:{node.lineno}: np.load(allow_pickle=...)")
    assert problems == []


def test_bundles_hold_only_onnx_and_json() -> None:
    from bundle.card import BUNDLE_FILES, MODEL_FILE, TOKENIZER_FILE

    assert {Path(f).suffix for f in BUNDLE_FILES} == {".onnx", ".json"}
    runtime = (ROOT / "service" / "runtime.py").read_text(encoding="utf-8")
    assert "InferenceSession" in runtime and MODEL_FILE == "model.onnx" and TOKENIZER_FILE == "tokenizer.json"
    tokenization = (ROOT / "bundle" / "tokenization.py").read_text(encoding="utf-8")
    assert "from tokenizers import" in tokenization and "Tokenizer.from_str" in tokenization


class _Payload:
    """Unpickling this would run code: it would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoints_with_arbitrary_pickled_objects_are_refused(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    import pickle

    from training.checkpoint import load_checkpoint

    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"format": "textclf-checkpoint/1", "state_dict": {}, "payload": _Payload(marker)}, path)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_checkpoint(path)
    assert not marker.exists()  # refused before anything was constructed
    loads, unsafe = 0, []
    for directory in ("training", "export", "pipeline", "bench", "service", "bundle"):
        for source in sorted((ROOT / directory).rglob("*.py")):
            for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                    loads += 1
                    weights_only = [k.value for k in node.keywords if k.arg == "weights_only"]
                    if not (weights_only and isinstance(weights_only[0], ast.Constant) and weights_only[0].value is True):
                        unsafe.append(f"{source.relative_to(ROOT)}:{node.lineno}")
    assert loads >= 3 and unsafe == [], unsafe
