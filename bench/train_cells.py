"""Model selection on validation over several seeds; the test split read once, for the choice.

    # 1. selection: every variant x seed, validation only (the test split is never read)
    nice -n 5 .venv/bin/python bench/train_cells.py select --variants lstm-bi,gru-bi --seeds 13,14,15
    # 2. the decision (validation only) and, once, the test scores of the chosen variant
    .venv/bin/python bench/train_cells.py final [--variant lstm-bi]

A variant is ``<cell>-<bi|uni>`` optionally followed by ``:key=value,...`` overrides of
``training.train.TrainConfig`` (e.g. ``lstm-bi:pooling=max,max_len=256``); everything else is the
default model's configuration (full epochs, default max_len). All runs share one split
(``split_seed``), checked through the split files' sha256; runs differ only in the variant and
the training seed. ``select`` skips finished runs and continues interrupted ones from their ``last.pt``; several
``select`` processes with the same lists share the work (one per core).

Decision rule (``final`` without ``--variant``; ``decide``): among LSTM variants (the product's
cell) with 3+ seeds, the cheapest to train whose mean validation accuracy is within one standard
error (over seeds) of the best mean; another cell replaces it only if its mean beats it by more than the
seeds' spread (the spread: the larger of the two variants' max-min ranges over seeds).
Results: bench/results/train_cells.{json,md}; run folders under runs/bench_cells/<variant>/seed<N>.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import resource
import statistics
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from training.data import read_manifest  # noqa: E402
from training.model import CELLS  # noqa: E402
from training.train import TrainConfig, evaluate_on_test, train  # noqa: E402

logger = logging.getLogger("bench.train_cells")

RESULTS = ROOT / "bench" / "results" / "train_cells"
BUDGET = ("epochs", "max_minutes", "patience", "threads")  # what a resumed run takes from its variant
RUNS = ROOT / "runs" / "bench_cells"


def variant_config(variant: str, seed: int, runs_dir: Path) -> TrainConfig:
    """``lstm-bi:pooling=max`` -> the default TrainConfig with those changes and ``seed``."""
    name, _, extra = variant.partition(":")
    cell, _, direction = name.partition("-")
    if direction not in {"bi", "uni"}:
        raise SystemExit(f"variant {variant!r}: expected <cell>-<bi|uni>[:key=value,...]")
    types = {f.name: type(getattr(TrainConfig(), f.name)) for f in fields(TrainConfig)}
    changes: dict[str, Any] = {"cell": cell, "bidirectional": direction == "bi"}
    for item in filter(None, extra.split(",")):
        key, _, value = item.partition("=")
        if key not in types:
            raise SystemExit(f"variant {variant!r}: unknown setting {key!r}")
        changes[key] = value.lower() == "true" if types[key] is bool else types[key](value)
    safe = variant.replace(":", "_").replace(",", "_").replace("=", "")
    return replace(TrainConfig(), **changes, seed=seed, progress=False,
                   run_dir=str(runs_dir / safe / f"seed{seed}"))


def split_variants(text: str) -> list[str]:
    """``lstm-bi,lstm-bi:pooling=max,max_len=256`` -> two variants: a comma starts a new variant
    only where ``<cell>-`` follows (a variant's own overrides are comma-separated too)."""
    return [v for v in re.split(rf",(?=(?:{'|'.join(CELLS)})-)", text) if v]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_results(path: Path) -> dict[str, Any]:
    results = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return results if isinstance(results.get("runs"), dict) else {"runs": {}}  # older layouts start over


def save_results(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    results["machine"] = {"platform": platform.platform(), "torch": torch.__version__}
    path.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text(markdown(results), encoding="utf-8")


def select(variants: list[str], seeds: list[int], out: Path, runs_dir: Path) -> dict[str, Any]:
    """Train every variant x seed without reading the test split; record validation scores.

    Work items are claimed with an exclusive ``<run_dir>.claim`` file (holding the owner's pid),
    so several ``select`` processes given the same lists share the work; each result is merged
    into the results file as it finishes. A run whose owner died is taken over and resumed.
    """
    for seed in seeds:
        for variant in variants:
            key = f"{variant}@{seed}"
            config = variant_config(variant, seed, runs_dir)
            if key in load_results(out.with_suffix(".json"))["runs"] or not claim(Path(config.run_dir)):
                logger.info("=== %s: done or taken ===", key)
                continue
            logger.info("=== %s -> %s ===", key, config.run_dir)
            cpu_start, wall_start = cpu_seconds(), time.perf_counter()
            # an interrupted run continues; so does a copy of a shorter run given more epochs
            # (resume is bit-identical to an uninterrupted run: tests/training/test_training.py)
            partial = (Path(config.run_dir) / "last.pt").is_file()
            report = train(config, resume=partial, overrides=set(BUDGET), final_test=False)
            manifest = read_manifest(Path(config.run_dir) / "split" / "manifest.json")
            row = {
                "variant": variant, "seed": seed, "run_dir": config.run_dir,
                "val_accuracy": report["val"]["accuracy"], "val_macro_f1": report["val"]["macro_f1"],
                "best_epoch": report["best_epoch"], "epochs_run": report["epochs_run"],
                "stop_reason": report["stop_reason"], "train_seconds": report["train_seconds"],
                "wall_seconds": time.perf_counter() - wall_start, "cpu_seconds": cpu_seconds() - cpu_start,
                "num_parameters": report["num_parameters"], "train_config": asdict(config),
                "split_sha256": {name: manifest["files"][name]["sha256"] for name in ("train", "val", "test")},
            }
            results = load_results(out.with_suffix(".json"))
            results["runs"][key] = row
            check_one_split(results)
            save_results(results, out)
    return load_results(out.with_suffix(".json"))


def claim(run_dir: Path) -> bool:
    """Take a work item: an exclusive claim file holding our pid (a dead owner's claim is taken over)."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    path = Path(f"{run_dir}.claim")
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            owner = int(path.read_text() or 0)
            if owner <= 0:
                raise ProcessLookupError
            os.kill(owner, 0)
            return False  # a live process is on it
        except (ValueError, ProcessLookupError):
            path.unlink(missing_ok=True)
            return claim(run_dir)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def check_one_split(results: dict[str, Any]) -> None:
    splits = {json.dumps(run["split_sha256"], sort_keys=True) for run in results["runs"].values()}
    if len(splits) > 1:
        raise RuntimeError(f"runs did not share one split: {splits}")


def summary(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per variant: mean, standard deviation and max-min range of the validation scores."""
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for run in results["runs"].values():
        by_variant.setdefault(run["variant"], []).append(run)
    table = {}
    for variant, runs in by_variant.items():
        acc = [r["val_accuracy"] for r in runs]
        f1 = [r["val_macro_f1"] for r in runs]
        table[variant] = {
            "seeds": sorted(r["seed"] for r in runs),
            "val_accuracy_mean": statistics.mean(acc), "val_accuracy_std": statistics.pstdev(acc),
            "val_accuracy_range": max(acc) - min(acc),
            # standard error of the mean (sample std / sqrt(n)): the one-standard-error rule's yardstick
            "val_accuracy_se": statistics.stdev(acc) / len(acc) ** 0.5 if len(acc) > 1 else 0.0,
            "val_macro_f1_mean": statistics.mean(f1),
            "epochs_run_mean": statistics.mean(r["epochs_run"] for r in runs),
            "best_epoch_mean": statistics.mean(r["best_epoch"] for r in runs),
            "train_seconds_mean": statistics.mean(r["train_seconds"] for r in runs),
            "cpu_seconds_mean": statistics.mean(r["cpu_seconds"] for r in runs),
            "num_parameters": runs[0]["num_parameters"],
        }
    return table


def decide(table: dict[str, dict[str, Any]], min_seeds: int = 3) -> tuple[str, str]:
    """The LSTM configuration, then the cell, both on validation only.

    1. Among LSTM variants with >= ``min_seeds`` seeds: the best mean validation accuracy; then the
       cheapest (mean CPU seconds of training) LSTM variant whose mean is within one standard error
       (over seeds) of that best - the one-standard-error rule: a difference smaller than the
       best's own uncertainty does not buy a costlier model.
    2. Another cell (with >= ``min_seeds`` seeds) replaces it only if its mean beats the chosen
       LSTM's by more than the seeds' spread.
    Without any LSTM variant of ``min_seeds`` seeds, the LSTM variant with the most seeds stands.
    """
    lstm = [name for name in table if name.startswith("lstm-")]
    if not lstm:
        raise SystemExit("no lstm variant in the results")
    complete = [name for name in lstm if len(table[name]["seeds"]) >= min_seeds]
    if complete:
        best = max(complete, key=lambda name: table[name]["val_accuracy_mean"])
        close = [name for name in complete
                 if table[best]["val_accuracy_mean"] - table[name]["val_accuracy_mean"] <= table[best]["val_accuracy_se"]]
        base = min(close, key=lambda name: (table[name]["cpu_seconds_mean"], -table[name]["val_accuracy_mean"]))
        reason = (f"{base}: the cheapest LSTM variant ({table[base]['cpu_seconds_mean']:.0f} CPU s) within one "
                  f"standard error ({table[best]['val_accuracy_se']:.4f}) of the best mean validation accuracy "
                  f"({best}: {table[best]['val_accuracy_mean']:.4f}; {len(close)} of {len(complete)} LSTM variants "
                  f"with {min_seeds}+ seeds were that close)")
    else:
        base = max(lstm, key=lambda name: (len(table[name]["seeds"]), table[name]["val_accuracy_mean"]))
        reason = (f"{base}: the LSTM variant with the most seeds (selection incomplete: "
                  f"{len(table[base]['seeds'])} of {min_seeds} seeds)")
    choice = base
    for name, row in table.items():
        if name.startswith("lstm-") or len(row["seeds"]) < min_seeds:
            continue
        margin = row["val_accuracy_mean"] - table[base]["val_accuracy_mean"]
        spread = max(row["val_accuracy_range"], table[base]["val_accuracy_range"])
        if margin > spread and row["val_accuracy_mean"] > table[choice]["val_accuracy_mean"]:
            choice, reason = name, f"{name} beats {base} by {margin:.4f} > seed spread {spread:.4f}"
    if choice == base:
        reason += "; no other cell beat it by more than the seeds' spread"
    return choice, reason


def final(variant: str | None, out: Path) -> dict[str, Any]:
    """The decision, then the one test evaluation of the chosen variant's runs (every seed)."""
    results = load_results(out.with_suffix(".json"))
    table = summary(results)
    choice, reason = (variant, "given with --variant") if variant else decide(table)
    logger.info("chosen on validation: %s (%s)", choice, reason)
    tests = []
    for run in sorted((r for r in results["runs"].values() if r["variant"] == choice), key=lambda r: r["seed"]):
        metrics_path = Path(run["run_dir"]) / "metrics.json"
        report = json.loads(metrics_path.read_text(encoding="utf-8"))
        if report.get("split") != "test":  # each run's test split is read once; later calls reuse it
            report = evaluate_on_test(run["run_dir"])
        tests.append({"seed": run["seed"], "accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
                      "accuracy_ci95": report["accuracy_ci95"], "num_examples": report["num_examples"],
                      "errors": report["num_examples"] - int(round(report["accuracy"] * report["num_examples"]))})
    results["decision"] = {"variant": choice, "reason": reason}
    results["test"] = {"variant": choice, "runs": tests,
                       "accuracy_mean": statistics.mean(t["accuracy"] for t in tests)}
    save_results(results, out)
    print(markdown(results))
    return results


def markdown(results: dict[str, Any]) -> str:
    table = summary(results)
    lines = [
        "Selection on the validation split (test never read); mean over seeds, std and range in brackets.",
        "",
        "| variant | seeds | val accuracy mean (std, range) | val macro-F1 mean | best epoch (mean) | epochs run (mean) "
        "| training s (mean) | CPU s (mean) | parameters |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in sorted(table.items(), key=lambda item: -item[1]["val_accuracy_mean"]):
        lines.append(
            f"| {name} | {','.join(map(str, row['seeds']))} | {row['val_accuracy_mean']:.4f} "
            f"({row['val_accuracy_std']:.4f}, {row['val_accuracy_range']:.4f}) | {row['val_macro_f1_mean']:.4f} "
            f"| {row['best_epoch_mean']:.1f} | {row['epochs_run_mean']:.1f} | {row['train_seconds_mean']:.0f} "
            f"| {row['cpu_seconds_mean']:.0f} | {row['num_parameters']:,} |"
        )
    if "decision" in results:
        lines += ["", f"Decision (validation only): **{results['decision']['variant']}** - {results['decision']['reason']}."]
    if "test" in results:
        lines += ["", f"Test split, read once for {results['test']['variant']} "
                      f"(mean accuracy over seeds {results['test']['accuracy_mean']:.4f}):", "",
                  "| seed | test accuracy | 95 % Wilson CI | errors | test macro-F1 |", "|---|---:|---|---:|---:|"]
        for t in results["test"]["runs"]:
            low, high = t["accuracy_ci95"]
            lines.append(f"| {t['seed']} | {t['accuracy']:.4f} | {low:.3f}-{high:.3f} | {t['errors']}/{t['num_examples']} "
                         f"| {t['macro_f1']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", required=True)
    sel = sub.add_parser("select", help="train variants x seeds; validation only")
    sel.add_argument("--variants", default="lstm-bi,lstm-uni,gru-bi,gru-uni")
    sel.add_argument("--seeds", default="13,14,15")
    fin = sub.add_parser("final", help="decide on validation, then read the test split once")
    fin.add_argument("--variant", help="skip the decision rule and report this variant")
    for stage in (sel, fin):
        stage.add_argument("--out", type=Path, default=RESULTS)
    sel.add_argument("--runs-dir", type=Path, default=RUNS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.stage == "select":
        results = select(split_variants(args.variants), [int(s) for s in args.seeds.split(",")], args.out, args.runs_dir)
        print(markdown(results))
    else:
        final(args.variant, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
