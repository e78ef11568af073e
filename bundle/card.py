"""model.json, the model card: everything the service needs besides model.onnx and tokenizer.json.

The card is checked against a schema (``card_problems``) before anything trusts it, and the card
fields that change answers (``ANSWER_FIELDS``: the label order and ``max_len``) are covered by a
digest stored in the card (``answers_sha256``), the way ``sha256`` covers the bundle's files.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CARD_FORMAT = "textclf-bundle/1"
MODEL_FILE, TOKENIZER_FILE, CARD_FILE = "model.onnx", "tokenizer.json", "model.json"
# Files whose sha256 the card records and verification checks. A new bundle file the answers
# depend on is one line here (publish_bundle copies and hashes it, verify_bundle requires it).
HASHED_FILES = (MODEL_FILE, TOKENIZER_FILE)
BUNDLE_FILES = (*HASHED_FILES, CARD_FILE)
# golden.json: texts -> ids -> logits from the export (export/golden.py), written by every export;
# optional (bundles made before it load), hashed in model.json and verified whenever the card lists it.
GOLDEN_FILE = "golden.json"
# Card fields that change answers; covered by ``answers_sha256``. A new one is one line here.
ANSWER_FIELDS = ("labels", "max_len")
QUANTIZATIONS = ("none", "int8")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

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
    sha256: dict[str, str]  # file name -> hex digest (every name in HASHED_FILES)
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
    answers_sha256: str = ""  # answers_digest(labels, max_len), set by publish_bundle

    @property
    def parity_passed(self) -> bool:
        return bool(self.parity and self.parity.get("passed") is True)

    def answers_digest(self) -> str:
        return answers_digest(self.to_dict())

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


def answers_digest(card: dict[str, Any]) -> str:
    """sha256 over the canonical JSON of the card's ``ANSWER_FIELDS`` (order of labels included)."""
    fields_ = {name: card.get(name) for name in ANSWER_FIELDS}
    canonical = json.dumps(fields_, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tensor_problems(key: str, specs: Any) -> list[str]:
    if not isinstance(specs, list) or not specs:
        return [f"{key} must be a non-empty list of tensor specs"]
    for i, spec in enumerate(specs):
        ok = (isinstance(spec, dict) and set(spec) == {"name", "dtype", "shape"} and isinstance(spec["name"], str)
              and isinstance(spec["dtype"], str) and isinstance(spec["shape"], list)
              and all(isinstance(d, str) or _is_int(d) for d in spec["shape"]))
        if not ok:
            return [f"{key}[{i}] must be {{name: str, dtype: str, shape: [str | int]}}"]
    return []


def card_problems(data: Any) -> list[str]:
    """Everything wrong with a parsed model.json (empty = it matches the schema). Unknown keys are
    allowed (ignored) so a newer exporter's extra fields do not break an older service."""
    if not isinstance(data, dict):
        return [f"must be a JSON object, got {type(data).__name__}"]
    problems: list[str] = []

    def need(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    required = ("name", "version", "labels", "max_len", "architecture", "inputs", "outputs", "sha256",
                "answers_sha256")
    missing = [key for key in required if key not in data]
    if missing:
        return [f"missing field(s) {', '.join(missing)}"]
    need(data.get("format", CARD_FORMAT) == CARD_FORMAT, f"format must be {CARD_FORMAT!r}")
    need(isinstance(data["name"], str) and bool(data["name"]), "name must be a non-empty string")
    need(_is_int(data["version"]) and data["version"] >= 1, "version must be an integer >= 1")
    labels = data["labels"]
    labels_ok = (isinstance(labels, list) and len(labels) >= 2
                 and all(isinstance(label, str) and label.strip() for label in labels)
                 and len(set(labels)) == len(labels))
    need(labels_ok, "labels must be a list of at least 2 unique non-empty strings")
    need(_is_int(data["max_len"]) and data["max_len"] >= 1, "max_len must be an integer >= 1")
    need(isinstance(data["architecture"], dict), "architecture must be an object")
    problems += _tensor_problems("inputs", data["inputs"]) + _tensor_problems("outputs", data["outputs"])
    if labels_ok and not _tensor_problems("outputs", data["outputs"]):
        width = data["outputs"][0]["shape"][-1] if data["outputs"][0]["shape"] else None
        need(width == len(labels), f"outputs[0] declares {width} logits for {len(labels)} labels")
    digests = data["sha256"]
    need(isinstance(digests, dict) and all(isinstance(k, str) and isinstance(v, str) and _HEX64.fullmatch(v)
                                           for k, v in digests.items()),
         "sha256 must map file names to 64-digit lower-case hex digests")
    need(isinstance(data["answers_sha256"], str) and bool(_HEX64.fullmatch(data["answers_sha256"])),
         "answers_sha256 must be a 64-digit lower-case hex digest")
    need(data.get("quantization", "none") in QUANTIZATIONS, f"quantization must be one of {', '.join(QUANTIZATIONS)}")
    need(_is_int(data.get("opset", 18)), "opset must be an integer")
    for key in ("metrics", "versions", "source"):
        need(isinstance(data.get(key, {}), dict), f"{key} must be an object")
    need(data.get("parity") is None or isinstance(data["parity"], dict), "parity must be an object or null")
    need(isinstance(data.get("created_at", ""), str), "created_at must be a string")
    return problems
