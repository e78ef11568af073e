"""model.json, the model card: everything the service needs besides model.onnx and tokenizer.json."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CARD_FORMAT = "textclf-bundle/1"
MODEL_FILE, TOKENIZER_FILE, CARD_FILE = "model.onnx", "tokenizer.json", "model.json"
BUNDLE_FILES = (MODEL_FILE, TOKENIZER_FILE, CARD_FILE)

# The I/O contract of every exported model.
INPUT_IDS, INPUT_LENGTHS, OUTPUT_LOGITS = "input_ids", "lengths", "logits"


@dataclass
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name, e.g. "int64", "float32"
    shape: list[str | int]  # symbolic dims are strings ("batch", "seq")


def default_inputs() -> list[TensorSpec]:
    return [
        TensorSpec(INPUT_IDS, "int64", ["batch", "seq"]),
        TensorSpec(INPUT_LENGTHS, "int64", ["batch"]),
    ]


def default_outputs(num_labels: int) -> list[TensorSpec]:
    return [TensorSpec(OUTPUT_LOGITS, "float32", ["batch", num_labels])]


@dataclass
class ModelCard:
    name: str
    version: int
    labels: list[str]
    max_len: int
    architecture: dict[str, Any]  # ModelConfig as a dict
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    sha256: dict[str, str]  # file name -> hex digest (model.onnx, tokenizer.json)
    quantization: str = "none"  # "none" | "int8"
    # int8 only: what really runs in integer arithmetic (export.optimize.quantized_parts):
    # {"integer": [...], "float": [...], "partial": bool, sizes, batch-invariance bound}
    quantization_details: dict[str, Any] = field(default_factory=dict)
    opset: int = 18
    metrics: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] | None = None  # the parity report; must contain "passed": bool
    versions: dict[str, str] = field(default_factory=dict)  # library versions at export time
    created_at: str = ""
    source: dict[str, Any] = field(default_factory=dict)  # checkpoint path/sha, data manifest
    format: str = CARD_FORMAT

    @property
    def parity_passed(self) -> bool:
        return bool(self.parity and self.parity.get("passed") is True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelCard":
        data = dict(data)
        data["inputs"] = [TensorSpec(**spec) for spec in data.get("inputs", [])]
        data["outputs"] = [TensorSpec(**spec) for spec in data.get("outputs", [])]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(cls, path: str | Path) -> "ModelCard":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
