"""Cell statistics, ratios, goals, the printed table and the latency-vs-load plot."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

MODE_LABELS = {
    "textclf": "(a) textclf.v1 Classify, batching on",
    "kserve": "(b) KServe v2 ModelInfer (raw grpc.aio stubs), batching on",
    "kserve-triton": "(b') KServe v2 ModelInfer (tritonclient.grpc.aio), batching on",
    "textclf-nobatch": "(c) textclf.v1 Classify, batching off",
    "textclf-multi": "(d) textclf.v1 Classify with --multi-texts texts per request (texts/s = req/s x texts)",
    "textclf-stream": "(d') textclf.v1 ClassifyStream: one stream per connection, one text per message, c in flight",
    "textclf-workers": "(e) textclf.v1 Classify, batching on, --workers N server processes on one port",
    "textclf-traced": "(g) textclf.v1 Classify, batching on, tracing on: every request sampled, spans exported over "
                      "OTLP to a discarding collector on loopback",
    "kserve-rest": "(h) KServe v2 infer over HTTP/REST (JSON, keep-alive), batching on, its own server with the REST "
                   "port on",
    "grpc-floor": "(f) gRPC floor: textclf.v1 Classify on the same grpc.aio stack, fixed answer, no model",
    "grpc-floor-deep": "(f'') gRPC floor with the service's deeper call intake (grpc_intake_depth)",
    "grpc-floor-sync": "(f') gRPC floor on grpcio's thread-pool (sync) server, fixed answer, no model",
}


def _delta(results: list[dict[str, Any]], key: str, name: str) -> float:
    return sum((r.get(f"{key}_end") or {}).get(name, 0.0) - (r.get(f"{key}_start") or {}).get(name, 0.0)
               for r in results[:1])  # one server: every worker scraped the same counters; use the first


def _cpu(results: list[dict[str, Any]], window: float) -> dict[str, float | None]:
    client = sum(r["cpu_end"]["client_s"] - r["cpu_start"]["client_s"] for r in results)
    first = results[0]
    start, end = first["cpu_start"], first["cpu_end"]
    server = None if start["server_s"] is None or end["server_s"] is None else end["server_s"] - start["server_s"]
    busy = end["machine_busy_s"] - start["machine_busy_s"]
    total = end["machine_total_s"] - start["machine_total_s"]
    other = busy - client - (server or 0.0)
    return {"client_cpu_pct": 100 * client / window, "server_cpu_pct": None if server is None else 100 * server / window,
            "other_cpu_pct": 100 * other / window, "machine_busy_pct": 100 * busy / total if total else None}


def summarize_cell(mode: str, length: str, concurrency: int, results: list[dict[str, Any]],
                   texts_per_request: int = 1) -> dict[str, Any]:
    latencies = np.concatenate([np.asarray(r["latencies_ms"], dtype=np.float64) for r in results])
    window = results[0]["window_s"]
    errors: dict[str, int] = {}
    for r in results:
        for code, n in r["errors"].items():
            errors[code] = errors.get(code, 0) + n
    cell: dict[str, Any] = {"mode": mode, "length": length, "concurrency": concurrency, "seconds": window,
                            "requests": int(latencies.size), "errors": errors,
                            "throughput_rps": latencies.size / window, "texts_per_request": texts_per_request,
                            "texts_per_s": latencies.size * texts_per_request / window}
    for q in (50, 95, 99):
        cell[f"p{q}_ms"] = float(np.percentile(latencies, q)) if latencies.size else float("nan")
    cell["mean_ms"] = float(latencies.mean()) if latencies.size else float("nan")
    batches = _delta(results, "metrics", "textclf_batch_size_count")
    if batches:
        cell["mean_batch"] = _delta(results, "metrics", "textclf_batch_size_sum") / batches
        cell["batches_per_s"] = batches / window
        cell["infer_ms_per_batch"] = 1e3 * _delta(results, "metrics", "textclf_inference_duration_seconds_sum") / batches
    texts = _delta(results, "metrics", "textclf_queue_duration_seconds_count")
    if texts:
        cell["queue_ms_per_text"] = 1e3 * _delta(results, "metrics", "textclf_queue_duration_seconds_sum") / texts
    calls = _delta(results, "metrics", "textclf_request_duration_seconds_count")
    if calls:
        cell["server_request_ms"] = 1e3 * _delta(results, "metrics", "textclf_request_duration_seconds_sum") / calls
    cell.update(_cpu(results, window))
    return cell


def find(cells: list[dict[str, Any]], mode: str, length: str, concurrency: int) -> dict[str, Any] | None:
    return next((c for c in cells if c["mode"] == mode and c["length"] == length and c["concurrency"] == concurrency),
                None)


def ratios_and_goals(cells: list[dict[str, Any]], ceilings: dict[str, dict[str, Any]],
                     top: int, low: int) -> dict[str, Any]:
    """Per text length: served/ceiling and batching on/off at the top concurrency, p50 at the low one
    minus in-process single-text latency; goal verdicts."""
    out: dict[str, Any] = {}
    for length, ceiling in ceilings.items():
        row: dict[str, Any] = {}
        on = find(cells, "textclf", length, top)
        off = find(cells, "textclf-nobatch", length, top)
        kserve = find(cells, "kserve", length, top)
        if on:
            row["served_over_ceiling"] = on["throughput_rps"] / ceiling["ceiling_per_s"]
            row["served_over_ort_ceiling"] = on["throughput_rps"] / ceiling["ceiling_ort_per_s"]
        if kserve:
            row["kserve_over_ceiling"] = kserve["throughput_rps"] / ceiling["ceiling_per_s"]
        if on and off:
            row["batching_on_over_off"] = on["throughput_rps"] / off["throughput_rps"]
        for mode in ("textclf", "kserve"):
            c1 = find(cells, mode, length, low)
            if c1:
                row[f"{mode}_p50_c{low}_minus_inprocess_ms"] = c1["p50_ms"] - ceiling["single_text_p50_ms"]
        for mode in ("textclf-multi", "textclf-stream"):
            amortised = find(cells, mode, length, top)
            if amortised:
                row[f"{mode.removeprefix('textclf-')}_texts_over_ceiling"] = amortised["texts_per_s"] / ceiling["ceiling_per_s"]
        workers = find(cells, "textclf-workers", length, top)
        if workers:
            row["workers_served_over_ceiling"] = workers["throughput_rps"] / ceiling["ceiling_per_s"]
            if on:
                row["workers_over_one_worker"] = workers["throughput_rps"] / on["throughput_rps"]
            if off:
                row["workers_over_batching_off"] = workers["throughput_rps"] / off["throughput_rps"]
        c1 = find(cells, "textclf-workers", length, low)
        if c1:
            row[f"workers_p50_c{low}_minus_inprocess_ms"] = c1["p50_ms"] - ceiling["single_text_p50_ms"]
        row.update(_floor_bounds(cells, ceiling, length, top, low))
        row["goals"] = {
            f"c{top}_served_ge_0.8x_ceiling": _goal(row.get("served_over_ceiling"), lambda v: v >= 0.8),
            f"c{top}_batching_ge_3x_off": _goal(row.get("batching_on_over_off"), lambda v: v >= 3.0),
            f"c{low}_p50_within_1ms": _goal(row.get(f"textclf_p50_c{low}_minus_inprocess_ms"), lambda v: v <= 1.0),
        }
        if workers or c1:
            row["goals"].update({
                f"workers_c{top}_served_ge_0.8x_ceiling": _goal(row.get("workers_served_over_ceiling"),
                                                               lambda v: v >= 0.8),
                f"workers_c{top}_ge_3x_batching_off": _goal(row.get("workers_over_batching_off"), lambda v: v >= 3.0),
                f"workers_c{low}_p50_within_1ms": _goal(row.get(f"workers_p50_c{low}_minus_inprocess_ms"),
                                                       lambda v: v <= 1.0),
            })
        out[length] = row
    return out


def _floor_bounds(cells: list[dict[str, Any]], ceiling: dict[str, Any], length: str, top: int,
                  low: int) -> dict[str, Any]:
    """What the gRPC stack alone allows (mode grpc-floor: same server stack, no model): a goal whose
    bound is out of reach cannot be met by any servicer on that stack on this machine."""
    floor_top = find(cells, "grpc-floor", length, top)
    floor_low = find(cells, "grpc-floor", length, low)
    if not floor_top and not floor_low:
        return {}
    row: dict[str, Any] = {}
    reachable: dict[str, str] = {}
    if floor_top:
        rps = floor_top["throughput_rps"]
        row[f"floor_c{top}_rps"] = rps
        row["floor_over_ceiling"] = rps / ceiling["ceiling_per_s"]
        reachable[f"c{top}_served_ge_0.8x_ceiling"] = "yes" if rps >= 0.8 * ceiling["ceiling_per_s"] else (
            f"no: the gRPC floor ({rps:.0f} req/s with no model) < 0.8 x ceiling "
            f"({0.8 * ceiling['ceiling_per_s']:.0f})")
        on, off = find(cells, "textclf", length, top), find(cells, "textclf-nobatch", length, top)
        if on:
            row["served_over_floor"] = on["throughput_rps"] / rps
        if off:
            needed = 3 * off["throughput_rps"]
            bound = min(rps, ceiling["ceiling_per_s"])
            row["batching_off_x3_rps"] = needed
            reachable[f"c{top}_batching_ge_3x_off"] = "yes" if bound >= needed else (
                f"no: 3 x batching off = {needed:.0f} req/s > min(gRPC floor {rps:.0f}, "
                f"in-process ceiling {ceiling['ceiling_per_s']:.0f})")
    if floor_low:
        p50 = floor_low["p50_ms"]
        row[f"floor_p50_c{low}_ms"] = p50
        c1 = find(cells, "textclf", length, low)
        if c1:
            row[f"textclf_p50_c{low}_minus_floor_minus_inprocess_ms"] = (
                c1["p50_ms"] - p50 - ceiling["single_text_p50_ms"])
        reachable[f"c{low}_p50_within_1ms"] = "yes" if p50 <= 1.0 else (
            f"no: a call with no model already takes {p50:.2f} ms (p50)")
    row["reachable_here"] = reachable
    return row


def _goal(value: float | None, test) -> str:
    return "n/a" if value is None else ("MET" if test(value) else "NOT MET")


def _fmt(value: Any, spec: str = ".1f") -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return format(value, spec)


def format_table(cells: list[dict[str, Any]]) -> str:
    header = ("| mode | texts | c | req/s | texts/s | p50 ms | p95 ms | p99 ms | mean batch | queue ms | infer ms/batch "
              "| server CPU % | client CPU % | others CPU % | errors |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for c in cells:
        errors = ", ".join(f"{k} {v}" for k, v in c["errors"].items()) or "0"
        lines.append(f"| {c['mode']} | {c['length']} | {c['concurrency']} | {_fmt(c['throughput_rps'])} "
                     f"| {_fmt(c.get('texts_per_s', c['throughput_rps']))} "
                     f"| {_fmt(c['p50_ms'], '.2f')} | {_fmt(c['p95_ms'], '.2f')} | {_fmt(c['p99_ms'], '.2f')} "
                     f"| {_fmt(c.get('mean_batch'))} | {_fmt(c.get('queue_ms_per_text'), '.2f')} "
                     f"| {_fmt(c.get('infer_ms_per_batch'), '.2f')} | {_fmt(c.get('server_cpu_pct'), '.0f')} "
                     f"| {_fmt(c.get('client_cpu_pct'), '.0f')} | {_fmt(c.get('other_cpu_pct'), '.0f')} | {errors} |")
    return "\n".join(lines)


def format_ceiling(ceilings: dict[str, dict[str, Any]]) -> str:
    lines = ["| texts | in-process single text p50 ms (tokenize+ORT) | ORT only p50 ms | best batch "
             "| ceiling texts/s (tokenize+ORT) | ORT-only ceiling texts/s | texts/s by batch (tokenize+ORT) |",
             "|---|---|---|---|---|---|---|"]
    for length, c in ceilings.items():
        by_batch = ", ".join(f"b{b}: {v['text_per_s']:.0f}" for b, v in c["by_batch"].items())
        lines.append(f"| {length} | {c['single_text_p50_ms']:.2f} | {c['single_ort_p50_ms']:.2f} | {c['best_batch']} "
                     f"| {c['ceiling_per_s']:.0f} | {c['ceiling_ort_per_s']:.0f} | {by_batch} |")
    return "\n".join(lines)


def format_ratios(ratios: dict[str, Any]) -> str:
    lines = []
    for length, row in ratios.items():
        values = ", ".join(f"{k} = {v:.2f}" for k, v in row.items() if isinstance(v, float))
        goals = ", ".join(f"{k}: {v}" for k, v in row["goals"].items())
        lines.append(f"{length}: {values}\n  goals: {goals}")
        for goal, verdict in row.get("reachable_here", {}).items():
            lines.append(f"  reachable on this machine and gRPC stack, {goal}: {verdict}")
    return "\n".join(lines)


def plot(cells: list[dict[str, Any]], ceilings: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = list(ceilings)
    fig, axes = plt.subplots(1, len(lengths), figsize=(6.5 * len(lengths), 4.8), squeeze=False)
    for ax, length in zip(axes[0], lengths):
        for index, mode in enumerate(MODE_LABELS):
            rows = sorted((c for c in cells if c["mode"] == mode and c["length"] == length),
                          key=lambda c: c["concurrency"])
            if not rows:
                continue
            color = f"C{index}"
            x = [c.get("texts_per_s", c["throughput_rps"]) for c in rows]
            ax.plot(x, [c["p50_ms"] for c in rows], "o-", color=color, label=f"{mode} p50")
            ax.plot(x, [c["p99_ms"] for c in rows], "x--", color=color, label=f"{mode} p99")
            for c in rows:
                ax.annotate(f"c{c['concurrency']}", (c.get("texts_per_s", c["throughput_rps"]), c["p50_ms"]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
        ax.axvline(ceilings[length]["ceiling_per_s"], color="k", linestyle=":", label="in-process ceiling")
        ax.set_yscale("log")
        ax.set_xlabel("throughput (texts/s; = requests/s except mode textclf-multi)")
        ax.set_ylabel("latency (ms, log)")
        ax.set_title(f"{length} texts")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
