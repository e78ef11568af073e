"""TF-IDF + linear SVM baseline on the recurrent models' own split (scikit-learn, bench only).

    .venv/bin/python bench/baseline_tfidf.py [--manifest runs/news/split/manifest.json]

The regularisation strength C and the n-gram range are chosen on the validation split; the
chosen pipeline is refitted on the training split only and scored on the test split once,
with the same metrics code and 95 % Wilson interval as ``textclf train``.
Results: bench/results/baseline_tfidf.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import sklearn  # noqa: E402
from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: E402
from sklearn.pipeline import Pipeline, make_pipeline  # noqa: E402
from sklearn.svm import LinearSVC  # noqa: E402

from training.data import load_split, read_manifest  # noqa: E402
from training.metrics import classification_report  # noqa: E402
from training.train import wilson_interval  # noqa: E402

logger = logging.getLogger("bench.baseline_tfidf")

DEFAULT_MANIFEST = ROOT / "runs" / "news" / "split" / "manifest.json"
GRID = [{"ngram_range": ngrams, "C": c} for ngrams in ((1, 1), (1, 2)) for c in (0.1, 0.3, 1.0, 3.0)]


def make_model(ngram_range: tuple[int, int], C: float) -> Pipeline:
    return make_pipeline(
        TfidfVectorizer(lowercase=True, ngram_range=ngram_range, min_df=2, sublinear_tf=True),
        LinearSVC(C=C),
    )


def scores(model: Pipeline, texts: list[str], labels: list[str], names: list[str]) -> dict:
    index = {label: i for i, label in enumerate(names)}
    y_true = np.array([index[label] for label in labels])
    y_pred = np.array([index[label] for label in model.predict(texts)])
    return classification_report(y_true, y_pred, names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST, help="a run's split/manifest.json")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "baseline_tfidf")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    names = read_manifest(args.manifest)["labels"]
    train_texts, train_labels = load_split(args.manifest, "train")
    val_texts, val_labels = load_split(args.manifest, "val")

    grid = []
    for params in GRID:
        start = time.perf_counter()
        model = make_model(**params).fit(train_texts, train_labels)
        val = scores(model, val_texts, val_labels, names)
        grid.append({**params, "val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"],
                     "fit_seconds": time.perf_counter() - start})
        logger.info("%s: val accuracy %.4f, macro-F1 %.4f", params, val["accuracy"], val["macro_f1"])
    # best validation accuracy; ties go to the simpler model (unigrams, then smaller C)
    best = max(grid, key=lambda row: (row["val_accuracy"], row["val_macro_f1"], -row["ngram_range"][1], -row["C"]))
    model = make_model(best["ngram_range"], best["C"]).fit(train_texts, train_labels)

    test_texts, test_labels = load_split(args.manifest, "test")  # read once, for the chosen model
    test = scores(model, test_texts, test_labels, names)
    correct = int(round(test["accuracy"] * test["num_examples"]))
    result = {
        "manifest": str(args.manifest), "split_sha256": read_manifest(args.manifest)["files"]["test"]["sha256"],
        "sklearn": sklearn.__version__, "grid": grid,
        "chosen": {"ngram_range": best["ngram_range"], "C": best["C"], "val_accuracy": best["val_accuracy"],
                   "val_macro_f1": best["val_macro_f1"]},
        "test": {"accuracy": test["accuracy"], "macro_f1": test["macro_f1"], "num_examples": test["num_examples"],
                 "errors": test["num_examples"] - correct, "accuracy_ci95": wilson_interval(correct, test["num_examples"])},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    low, high = result["test"]["accuracy_ci95"]
    table = (
        "| model | chosen on validation | val accuracy | test accuracy (95 % Wilson CI) | test macro-F1 |\n"
        "|---|---|---:|---:|---:|\n"
        f"| TF-IDF word {best['ngram_range'][0]}-{best['ngram_range'][1]}-grams + LinearSVC | C={best['C']} "
        f"| {best['val_accuracy']:.4f} | {test['accuracy']:.4f} ({low:.3f}-{high:.3f}) | {test['macro_f1']:.4f} |\n"
    )
    args.out.with_suffix(".md").write_text(table, encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
