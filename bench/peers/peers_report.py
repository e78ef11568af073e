"""Ratios, goal verdicts, tables and the plot of the peer benchmark (bench/peers/bench_peers.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

# issue 11: textclf >= 1.3x the best peer's req/s at c=1, >= 1.2x at higher concurrency, p99 no worse
GOAL_C1, GOAL_CN = 1.3, 1.2


def _ok(run: dict[str, Any]) -> bool:
    return "failed" not in run and run.get("requests", 0) > 0


def _fmt(value: Any, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def run_line(run: dict[str, Any]) -> str:
    head = f"{run['server']:<17} {run['length']:<5} c={run['concurrency']:<3}"
    if "failed" in run:
        return f"{head} FAILED: {run['failed'].splitlines()[0] if run['failed'] else ''}"
    check = run["agreement"]
    return (f"{head} {run['throughput_rps']:8.1f} req/s  p50 {run['p50_ms']:7.2f}  p99 {run['p99_ms']:7.2f} ms  "
            f"server CPU {_fmt(run.get('server_cpu_pct'), '.0f')}%  errors {run['errors'] or 0}  labels "
            f"{check['same_labels']}/{check['texts']}  max|dp| {check['max_abs_dp']:.1e}  start {run['start_s']:.1f} s"
            + (f"  ORPHANS {run['orphans']}" if run.get("orphans") else ""))


def summarize(runs: list[dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    """Per cell: textclf's runs (first and last), the best peer by req/s, ratio range and goals.

    The ratio is stated as a range (textclf's slower run / best peer .. faster run / best peer) and
    a goal counts as met only when the slower of textclf's runs meets it: only what holds across
    the passes is claimed."""
    cells: list[dict[str, Any]] = []
    keys = sorted({(r["length"], r["concurrency"]) for r in runs},
                  key=lambda k: (["short", "long"].index(k[0]) if k[0] in ("short", "long") else 9, k[1]))
    for length, concurrency in keys:
        here = [r for r in runs if r["length"] == length and r["concurrency"] == concurrency and _ok(r)]
        ours = [r for r in here if r["server"] == "textclf"]
        peers = [r for r in here if r["server"] != "textclf"]
        cell: dict[str, Any] = {"length": length, "concurrency": concurrency,
                                "textclf": [{k: r[k] for k in ("position", "throughput_rps", "p50_ms", "p99_ms")}
                                            for r in ours],
                                "peers": {r["server"]: {k: r[k] for k in ("throughput_rps", "p50_ms", "p99_ms")}
                                          for r in peers}}
        if ours and peers:
            best = max(peers, key=lambda r: r["throughput_rps"])
            low = min(r["throughput_rps"] for r in ours)
            high = max(r["throughput_rps"] for r in ours)
            worst_p99 = max(r["p99_ms"] for r in ours)
            goal = GOAL_C1 if concurrency == 1 else GOAL_CN
            cell.update({
                "best_peer": best["server"], "best_peer_rps": best["throughput_rps"],
                "best_peer_p99_ms": best["p99_ms"], "ratio_low": low / best["throughput_rps"],
                "ratio_high": high / best["throughput_rps"], "textclf_worst_p99_ms": worst_p99,
                "goal_ratio": goal,
                "goal_throughput": "MET" if low / best["throughput_rps"] >= goal else "NOT MET",
                "goal_p99": "MET" if worst_p99 <= best["p99_ms"] else "NOT MET",
            })
        cells.append(cell)
    return cells


def agreement_by_server(runs: list[dict[str, Any]], atol: float) -> dict[str, dict[str, Any]]:
    """Per server over all its runs: texts checked, same labels as textclf, largest |dp|."""
    rows: dict[str, dict[str, Any]] = {}
    for run in runs:
        if "agreement" not in run:
            continue
        row = rows.setdefault(run["server"], {"texts": 0, "same_labels": 0, "max_abs_dp": 0.0})
        row["texts"] += run["agreement"]["texts"]
        row["same_labels"] += run["agreement"]["same_labels"]
        row["max_abs_dp"] = max(row["max_abs_dp"], run["agreement"]["max_abs_dp"])
    for row in rows.values():
        row["agrees"] = row["same_labels"] == row["texts"] and row["max_abs_dp"] <= atol
    return rows


def problems(runs: list[dict[str, Any]], agreement_rows: dict[str, dict[str, Any]]) -> list[str]:
    found = []
    for run in runs:
        where = f"{run['server']} {run['length']} c={run['concurrency']}"
        if "failed" in run:
            found.append(f"{where}: failed: {run['failed'].splitlines()[0] if run['failed'] else ''}")
        elif run.get("errors"):
            found.append(f"{where}: errors {run['errors']}")
        if run.get("orphans"):
            found.append(f"{where}: {run['orphans']} process(es) left behind after SIGTERM")
    for server, row in agreement_rows.items():
        if not row["agrees"]:
            found.append(f"{server}: {row['same_labels']}/{row['texts']} labels as textclf, "
                         f"max |dp| {row['max_abs_dp']:.2e}")
    return found


def format_summary(cells: list[dict[str, Any]]) -> str:
    lines = ["| texts | c | textclf req/s (first / last) | textclf p50 / p99 ms | best peer | peer req/s "
             "| peer p50 / p99 ms | textclf / best peer | goal (req/s; p99) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        ours = c["textclf"]
        rps = " / ".join(f"{r['throughput_rps']:.0f}" for r in ours) or "-"
        lat = " ; ".join(f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f}" for r in ours) or "-"
        if "best_peer" in c:
            peer = c["peers"][c["best_peer"]]
            lines.append(f"| {c['length']} | {c['concurrency']} | {rps} | {lat} | {c['best_peer']} "
                         f"| {peer['throughput_rps']:.0f} | {peer['p50_ms']:.2f} / {peer['p99_ms']:.2f} "
                         f"| {c['ratio_low']:.2f}-{c['ratio_high']:.2f} "
                         f"| >= {c['goal_ratio']}x: {c['goal_throughput']}; p99: {c['goal_p99']} |")
        else:
            lines.append(f"| {c['length']} | {c['concurrency']} | {rps} | {lat} | - | - | - | - | - |")
    return "\n".join(lines)


def format_runs(runs: list[dict[str, Any]]) -> str:
    lines = ["| texts | c | # | server | req/s | p50 ms | p99 ms | server CPU % | client CPU % | others CPU % "
             "| start s | errors |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        if "failed" in r:
            lines.append(f"| {r['length']} | {r['concurrency']} | {r['position']} | {r['server']} "
                         "| failed | | | | | | | |")
            continue
        errors = ", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "0"
        lines.append(f"| {r['length']} | {r['concurrency']} | {r['position']} | {r['server']} "
                     f"| {r['throughput_rps']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                     f"| {_fmt(r.get('server_cpu_pct'), '.0f')} | {_fmt(r.get('client_cpu_pct'), '.0f')} "
                     f"| {_fmt(r.get('other_cpu_pct'), '.0f')} | {r['start_s']:.1f} | {errors} |")
    return "\n".join(lines)


def format_agreement(rows: dict[str, dict[str, Any]]) -> str:
    lines = ["| server | texts checked | same label as textclf | max abs prob. diff |", "|---|---|---|---|"]
    for server, row in rows.items():
        lines.append(f"| {server} | {row['texts']} | {row['same_labels']} | {row['max_abs_dp']:.1e} |")
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], order: list[str], path: Path) -> None:
    """Per text length: req/s (top) and p99 (bottom) per concurrency, one bar per run in cell order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = [x for x in ("short", "long") if any(r["length"] == x for r in runs)]
    concurrencies = sorted({r["concurrency"] for r in runs})
    fig, axes = plt.subplots(2, len(lengths), figsize=(6.5 * len(lengths), 7.5), squeeze=False)
    width = 0.8 / max(1, len(order))
    names = list(dict.fromkeys(order))
    for col, length in enumerate(lengths):
        for row, (key, ylabel) in enumerate((("throughput_rps", "requests/s"), ("p99_ms", "p99 latency (ms)"))):
            ax = axes[row][col]
            for position, name in enumerate(order):
                xs, ys = [], []
                for i, c in enumerate(concurrencies):
                    run = next((r for r in runs if r["length"] == length and r["concurrency"] == c
                                and r["position"] == position and _ok(r)), None)
                    if run:
                        xs.append(i + (position - (len(order) - 1) / 2) * width)
                        ys.append(run[key])
                first = position == order.index(name)
                ax.bar(xs, ys, width, color=f"C{names.index(name)}", hatch="" if first else "//",
                       label=name if first else f"{name} (again, last)")
            ax.set_xticks(range(len(concurrencies)), [f"c={c}" for c in concurrencies])
            ax.set_ylabel(ylabel)
            if key == "p99_ms":
                ax.set_yscale("log")
            ax.set_title(f"{length} texts: {ylabel}")
            ax.grid(True, axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("textclf vs peers: one load generator (tritonclient.grpc.aio, single-text ModelInfer), "
                 "servers in turn per cell", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
