"""``textclf export CHECKPOINT --repository models --name news [--version N] [--quantize int8]``.

export -> onnx.checker -> onnxruntime optimisation -> (INT8) -> parity on the staged files ->
model card -> atomic publish. Nothing is published when parity fails.
"""
from __future__ import annotations

import argparse
import logging
import platform
import sys
import tempfile
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from bundle.card import GOLDEN_FILE, ModelCard, default_inputs, default_outputs
from bundle.store import BundleError, publish_bundle, sha256_file, validate_model_name
from export.golden import golden_fixtures, golden_texts, write_golden
from export.onnx_export import OPSET, ExportError, check_onnx, export_onnx
from export.optimize import check_int8_pays, int8_speedup, optimize_onnx, quantize_int8, quantized_parts
from export.parity import edge_case_texts, format_table, load_test_split, run_parity
from export.parity_cli import configure_logging
from training.checkpoint import CheckpointError, load_checkpoint

logger = logging.getLogger(__name__)

VERSIONED_PACKAGES = ("torch", "onnx", "onnxscript", "onnxruntime", "tokenizers", "numpy")


class ParityFailed(Exception):
    """The exported model does not match the checkpoint; the report says where."""

    def __init__(self, report: dict) -> None:
        super().__init__("parity failed: " + "; ".join(report.get("failures", []) + [
            f"{p}: {', '.join(r.get('failures', []))}" for p, r in report["providers"].items() if not r["passed"]
        ]))
        self.report = report


def library_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "missing"
    return found


def export_bundle(
    checkpoint_path: str | Path,
    repository: str | Path,
    name: str,
    *,
    version: int | None = None,
    quantize: str | None = None,
    optimization: str = "basic",
    providers: list[str] | None = None,
    test_split: tuple[list[str], list[str]] | None = None,
    allow_no_test_split: bool = False,
    force_int8: bool = False,
) -> Path:
    """Export, check, optimise, (quantise), run parity and publish; returns the bundle directory.

    ``test_split`` overrides the checkpoint's saved test split (texts, labels). Without either,
    the export is refused (ValueError) unless ``allow_no_test_split``; the parity report then
    records the waiver. Raises ParityFailed (nothing published) when a parity bound is broken.
    """
    validate_model_name(name)
    # recorded as given (relative paths stay relative, like the data manifest) so that a
    # project directory can move or be copied and `textclf parity` still finds the checkpoint
    checkpoint_path = Path(checkpoint_path)
    checkpoint = load_checkpoint(checkpoint_path)
    quantization = quantize or "none"
    details: dict = {}
    if quantization == "int8":
        check_int8_pays(checkpoint.config.cell, force_int8)
    split = test_split if test_split is not None else load_test_split(checkpoint.manifest_path)
    if split is None and not allow_no_test_split:
        raise ValueError(f"{checkpoint_path} records no test split: parity would rest on edge cases alone "
                         "(pass --allow-no-test-split to export anyway; the parity report will say so)")
    with tempfile.TemporaryDirectory(prefix="textclf-stage-") as tmp:
        stage = Path(tmp)
        logger.info("[1/6] exporting %s (dynamo, opset %d)", checkpoint_path, OPSET)
        raw = export_onnx(checkpoint.model, stage / "raw.onnx")
        logger.info("[2/6] onnx.checker (full check)")
        check_onnx(raw)
        logger.info("[3/6] onnxruntime graph optimisation (%s)", optimization)
        final = optimize_onnx(raw, stage / "model.onnx", level=optimization)
        if quantization == "int8":
            logger.info("[4/6] dynamic INT8 quantisation")
            quantize_int8(final, stage / "model.int8.onnx")
            details = quantized_parts(final, stage / "model.int8.onnx")
            details["speedup_vs_fp32_b64_len256_1thread"] = round(int8_speedup(final, stage / "model.int8.onnx"), 2)
            final = stage / "model.int8.onnx"
            if details["partial"]:
                logger.warning("PARTIAL INT8: %s stay float (integer: %s)", details["float"], details["integer"])
            if details["speedup_vs_fp32_b64_len256_1thread"] < 1.0:
                logger.warning("INT8 is SLOWER than fp32 here (%.2fx at batch 64); the card records it",
                               details["speedup_vs_fp32_b64_len256_1thread"])
        elif quantization != "none":
            raise ValueError(f"unknown quantization {quantization!r} (use int8)")
        else:
            logger.info("[4/6] quantisation: none")
        tokenizer_path = stage / "tokenizer.json"
        tokenizer_path.write_text(checkpoint.raw["tokenizer_json"], encoding="utf-8")
        logger.info("[5/6] parity suite on the staged files")
        if split is None:
            logger.warning("checkpoint records no data manifest: parity runs on edge cases only (allowed)")
        texts, labels = split if split else (None, None)
        report = run_parity(checkpoint, final, tokenizer_path, quantization=quantization,
                            test_texts=texts, test_labels=labels, providers=providers,
                            allow_no_test_texts=allow_no_test_split,
                            bundle_labels=checkpoint.labels, bundle_max_len=checkpoint.max_len)
        print(format_table(report))
        if not report["passed"]:
            raise ParityFailed(report)
        golden = golden_fixtures(final, checkpoint.encoder, golden_texts(texts or [], edge_case_texts(checkpoint.encoder)),
                                 checkpoint.labels, quantization)
        golden_path = write_golden(stage / GOLDEN_FILE, golden)
        card = ModelCard(
            name=name,
            version=version or 0,  # publish_bundle sets the real version
            labels=checkpoint.labels,
            max_len=checkpoint.max_len,
            architecture=checkpoint.config.to_dict(),
            inputs=default_inputs(),
            outputs=default_outputs(len(checkpoint.labels)),
            sha256={},
            quantization=quantization,
            quantization_details=details,
            opset=OPSET,
            metrics=checkpoint.metrics,
            parity=report,
            versions=library_versions(),
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            source={
                "checkpoint": str(checkpoint_path),
                "checkpoint_sha256": sha256_file(checkpoint_path),
                "data_manifest": checkpoint.manifest_path,
                "optimization": optimization,
            },
        )
        logger.info("[6/6] publishing to %s/%s", repository, name)
        return publish_bundle(repository, card, final, tokenizer_path, version=version,
                              extra_files={GOLDEN_FILE: golden_path})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="textclf export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--name", default="news")
    parser.add_argument("--version", type=int, help="default: the next free version")
    parser.add_argument("--quantize", choices=["int8"], help="dynamic INT8 quantisation")
    parser.add_argument("--force-int8", action="store_true",
                        help="publish INT8 even for a GRU/RNN (only embedding and head quantised; the card says so)")
    parser.add_argument("--optimization", choices=["basic", "extended"], default="basic")
    parser.add_argument("--providers", nargs="+", help="onnxruntime providers for parity (default: all)")
    parser.add_argument("--allow-no-test-split", action="store_true",
                        help="export a checkpoint without a saved test split (parity on edge cases only; recorded)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        target = export_bundle(args.checkpoint, args.repository, args.name, version=args.version,
                               quantize=args.quantize, optimization=args.optimization, providers=args.providers,
                               allow_no_test_split=args.allow_no_test_split, force_int8=args.force_int8)
    except ParityFailed as exc:
        print(f"textclf export: NOT published: {exc}", file=sys.stderr)
        return 1
    except (BundleError, CheckpointError, ExportError, OSError, ValueError) as exc:
        print(f"textclf export: {exc}", file=sys.stderr)
        return 2
    print(f"published {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
