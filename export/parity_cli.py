"""``textclf parity BUNDLE [--checkpoint PATH] [--providers ...]``: re-run the parity suite on a bundle.

Exit codes: 0 parity passed, 1 a bound was broken, 2 the bundle or checkpoint could not be used.
The report is written into the bundle's model.json (model.json is not covered by the sha256s).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bundle.card import MODEL_FILE, TOKENIZER_FILE
from bundle.store import BundleError, verify_bundle, write_card
from export.parity import format_table, load_test_split, run_parity
from training.checkpoint import CheckpointError, load_checkpoint

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="textclf parity", description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="bundle directory, e.g. models/news/1")
    parser.add_argument("--checkpoint", type=Path, help="PyTorch checkpoint (default: the card's source)")
    parser.add_argument("--providers", nargs="+", help="onnxruntime providers (default: all available)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random batches")
    parser.add_argument("--no-write", action="store_true", help="do not write the report into model.json")
    parser.add_argument("--allow-no-test-split", action="store_true",
                        help="pass without labelled test texts (edge cases only); the report records the waiver")
    return parser


def configure_logging() -> None:
    """INFO for textclf's own progress lines; the exporter's libraries are chatty at INFO."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("onnxscript", "onnx_ir", "torch", "root"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        card = verify_bundle(args.bundle, require_parity=False)
        checkpoint_path = args.checkpoint or card.source.get("checkpoint")
        if not checkpoint_path:
            raise BundleError(f"{args.bundle}: model.json records no source checkpoint; pass --checkpoint")
        checkpoint = load_checkpoint(checkpoint_path)
        split = load_test_split(checkpoint.manifest_path)
    except (BundleError, CheckpointError, OSError, ValueError) as exc:
        print(f"textclf parity: {exc}", file=sys.stderr)
        return 2
    if split is None:
        logger.warning("checkpoint records no data manifest: no test texts to compare on")
    texts, labels = split if split else (None, None)
    report = run_parity(
        checkpoint,
        Path(args.bundle) / MODEL_FILE,
        Path(args.bundle) / TOKENIZER_FILE,
        quantization=card.quantization,
        test_texts=texts,
        test_labels=labels,
        providers=args.providers,
        seed=args.seed,
        allow_no_test_texts=args.allow_no_test_split,
        bundle_labels=card.labels,
        bundle_max_len=card.max_len,
    )
    print(format_table(report))
    if not args.no_write:
        card.parity = report
        write_card(args.bundle, card)
        logger.info("parity report written to %s", Path(args.bundle) / "model.json")
    if not report["passed"]:
        print(f"textclf parity: FAILED for {args.bundle}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
