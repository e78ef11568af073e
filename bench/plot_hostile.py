"""Plot the legitimate p99 of ``bench/bench_hostile.py`` runs: without and under the attack, for each
arm a run has (the attack on the legitimate clients' own process, on a second service process at
normal priority / nice 19 / SCHED_IDLE, the floor arms), with the goal (2x the no-attack p99) marked.

    python bench/plot_hostile.py bench/results/hostile-session16/separate-*.json --output bench/results/hostile-session16/separate.png
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger("plot_hostile")

# result key -> label; the run's own top level is the attack on the legitimate clients' process
ARMS = {
    "": "same process\n(as deployed)",
    "attack_on_second_service": "attack on a 2nd\nservice process",
    "attack_on_second_service_nice19": "2nd process,\nnice 19",
    "attack_on_second_service_sched_idle": "2nd process,\nSCHED_IDLE",
    "floor": "gRPC floor\n(no model)",
    "floor_attack_elsewhere": "floor, attack on\na 2nd floor",
}


def arm_p99s(report: dict) -> dict[str, tuple[float, float]]:
    """label -> (legitimate p99 ms without the attack, under it), for the arms this report has."""
    found = {}
    for key, label in ARMS.items():
        arm = report if key == "" else report.get(key)
        if arm and "no_attack" in arm:
            found[label] = (arm["no_attack"]["p99_ms"], arm["attack"]["p99_ms"])
    return found


def plot(reports: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p99s_by_report = {name: arm_p99s(report) for name, report in reports.items()}
    labels = [label for label in ARMS.values() if any(label in p99s for p99s in p99s_by_report.values())]
    fig, ax = plt.subplots(figsize=(max(7.0, 1.6 * len(labels)), 4.5))
    width = 0.8 / max(1, len(reports))
    for i, (name, p99s) in enumerate(p99s_by_report.items()):
        xs = [j + i * width for j, label in enumerate(labels) if label in p99s]
        ratios = [p99s[label][1] / p99s[label][0] for label in labels if label in p99s]
        ax.bar(xs, ratios, width, label=name)
    ax.axhline(2.0, color="red", linestyle="--", linewidth=1, label="goal: 2x")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))], labels, fontsize=8)
    ax.set_yscale("log")
    ticks = [1, 2, 5, 10, 20, 50]
    ax.set_yticks(ticks, [f"{t}x" for t in ticks])
    ax.set_ylabel("legitimate p99 under attack / without (log)")
    ax.set_title("Hostile load: what the attack costs legitimate calls, by where it is handled")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", type=Path, nargs="+", help="bench_hostile.py JSON reports")
    p.add_argument("--output", type=Path, required=True, help="the PNG to write")
    args = p.parse_args(argv)
    reports = {path.stem: json.loads(path.read_text()) for path in args.reports}
    for name, report in reports.items():
        for label, (before, under) in arm_p99s(report).items():
            print(f"{name}: {' '.join(label.split())}: {before:.1f} -> {under:.1f} ms ({under / before:.1f}x)")
    plot(reports, args.output)
    logger.info("wrote %s", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
