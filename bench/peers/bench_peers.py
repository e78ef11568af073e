"""textclf against the servers users would pick instead, one load generator, one run (issue 11).

    .venv/bin/python bench/peers/bench_peers.py                  # full run (see docs/benchmarks.md)
    .venv/bin/python bench/peers/bench_peers.py --quick          # a few seconds per cell, c=1 and 16
    .venv/bin/python bench/peers/bench_peers.py --servers textclf kserve --concurrency 1 --lengths short

Peers, each in its own virtual environment under .peers/ (created or reused by
bench/peers/venvs.py, pinned, no torch or CUDA), each serving the same bundle
``<model-repository>/<model>/<latest>`` with the same tokenizer and onnxruntime settings
(bench/peers/peer_model.py): MLServer 1.7.1 with adaptive batching and without, the KServe 0.21
Python model server, PyTriton 0.7 with Triton's dynamic batcher; and textclf itself
(``python -m service``, 1 intra-op and 1 inter-op thread).

Per cell (text length x concurrency) the servers run in turn, textclf first and last: each is
started fresh alone on free loopback ports, waited for through KServe v2 ServerReady/ModelReady,
asked for every text of the cell (labels and probabilities must equal textclf's), then driven
by the same closed-loop load generator (bench/serving_load.py, ``tritonclient.grpc.aio``,
single-text ModelInfer, TEXT ``BYTES [1, 1]``) for a warm-up and a measured window, and stopped
(SIGTERM; anything left in its process group is killed and counted).
Writes bench/results/peers.json and peers.png (``-quick`` with --quick) and prints the tables.
Exit status 1 when a server failed, answered differently, or left processes behind.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(HERE))

import agreement  # noqa: E402
import bench_serving  # noqa: E402
import peers_report as report  # noqa: E402
import serving_report  # noqa: E402
import serving_support as support  # noqa: E402
import venvs  # noqa: E402

logger = logging.getLogger("bench.peers")

TEXT_DIMS = 2  # TEXT as [1, 1]: the one shape every server accepts (PyTriton needs [N, 1])
START_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class ServerKind:
    name: str
    label: str
    venv: str | None  # None: textclf, from the project's own venv
    script: str | None = None


SERVERS = {
    "textclf": ServerKind("textclf", "textclf: python -m service (batching on, greedy)", None),
    "mlserver": ServerKind("mlserver", "MLServer 1.7.1, custom runtime, adaptive batching", "mlserver",
                           "mlserver_server.py"),
    "mlserver-nobatch": ServerKind("mlserver-nobatch", "MLServer 1.7.1, custom runtime, batching off", "mlserver",
                                   "mlserver_server.py"),
    "kserve": ServerKind("kserve", "KServe 0.21.0 Python model server (no batcher)", "kserve", "kserve_server.py"),
    "pytriton": ServerKind("pytriton", "PyTriton 0.7.0: Triton C++ frontend + dynamic batcher", "pytriton",
                           "pytriton_server.py"),
    # a prototype front end of textclf (project venv), only when asked for: docs/benchmarks.md
    "textclf-sync": ServerKind("textclf-sync", "prototype: grpcio sync server + combining batcher (not the product)",
                               None, "../prototypes/sync_front.py"),
}
PROTOTYPES = ("textclf-sync",)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-repository", type=Path, default=ROOT / "models", help="default: models/")
    p.add_argument("--model", default="news", help="model name in the repository (default: news)")
    p.add_argument("--servers", nargs="+", choices=list(SERVERS), default=[s for s in SERVERS if s not in PROTOTYPES],
                   help="textclf runs first and last in each cell when listed (default: all but the prototypes)")
    p.add_argument("--lengths", nargs="+", choices=("short", "long"), default=["short", "long"])
    p.add_argument("--concurrency", type=int, nargs="+", help="default 1 16 64 (--quick: 1 16)")
    p.add_argument("--seconds", type=float, help="measured seconds per run (default 10; --quick 1.5)")
    p.add_argument("--warmup", type=float, help="seconds of load before each window (default 2; --quick 0.3)")
    p.add_argument("--num-texts", type=int, help="distinct texts per length (default 64; --quick 16)")
    p.add_argument("--texts-jsonl", type=Path, help="JSONL with a 'text' field (default: the BBC News corpus)")
    p.add_argument("--short-tokens", type=int, default=40)
    p.add_argument("--long-tokens", type=int, default=300)
    p.add_argument("--mlserver-max-batch-time-ms", type=float, default=5.0,
                   help="MLServer adaptive batching window (max_batch_time; max_batch_size 64)")
    p.add_argument("--pytriton-max-queue-delay-us", type=int, default=100,
                   help="Triton dynamic batcher max_queue_delay_microseconds (max_batch_size 64)")
    p.add_argument("--sync-threads", type=int, default=4, help="textclf-sync prototype: handler threads")
    p.add_argument("--atol", type=float, default=1e-5, help="largest |probability difference| to textclf")
    p.add_argument("--no-install", action="store_true",
                   help="do not create or update the peer venvs (fail when one is not current)")
    p.add_argument("--quick", action="store_true", help="development run: short windows, c=1 and 16")
    p.add_argument("--output", type=Path, help="JSON (default bench/results/peers.json, peers-quick.json)")
    p.add_argument("--plot", type=Path, help="PNG (default bench/results/peers.png, peers-quick.png)")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    quick = args.quick
    defaults = {"concurrency": [1, 16] if quick else [1, 16, 64], "seconds": 1.5 if quick else 10.0,
                "warmup": 0.3 if quick else 2.0, "num_texts": 16 if quick else 64}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.client_procs, args.client_channels = 1, 1  # one grpc.aio client process (bench_serving.run_cell)
    results = ROOT / "bench" / "results"
    suffix = "-quick" if quick else ""
    args.output = args.output or results / f"peers{suffix}.json"
    args.plot = args.plot or results / f"peers{suffix}.png"
    return args


# ----------------------------------------------------------------------------- servers

def peer_command(kind: ServerKind, bundle: support.Bundle, ports: dict[str, int], workdir: Path,
                 args: argparse.Namespace) -> list[str]:
    assert kind.script
    python = sys.executable if kind.venv is None else str(venvs.venv_python(kind.venv))
    command = [python, str(HERE / kind.script), "--bundle", str(bundle.path),
               "--model", bundle.name, "--grpc-port", str(ports["grpc"]), "--http-port", str(ports["http"]),
               "--metrics-port", str(ports["metrics"]), "--workdir", str(workdir)]
    if kind.name == "mlserver":
        command += ["--max-batch-size", "64", "--max-batch-time-ms", str(args.mlserver_max_batch_time_ms)]
    elif kind.name == "mlserver-nobatch":
        command += ["--max-batch-size", "1"]
    elif kind.name == "pytriton":
        command += ["--max-batch-size", "64", "--max-queue-delay-us", str(args.pytriton_max_queue_delay_us)]
    elif kind.name == "textclf-sync":
        command += ["--threads", str(args.sync_threads)]
    return command


def start(kind: ServerKind, bundle: support.Bundle, args: argparse.Namespace, log_dir: Path) -> support.ServerProcess:
    """Start one server alone (its own process group) on free loopback ports; wait until the model is ready."""
    ports = {"grpc": support.free_port(), "http": support.free_port(), "metrics": support.free_port()}
    metrics_url = None
    if kind.venv is None and kind.script is None:
        command = support.server_command(bundle.repository, ports["grpc"], ports["metrics"], batching=True,
                                         threads=1, extra_args=["--inter-op-threads", "1"])
        metrics_url = f"http://127.0.0.1:{ports['metrics']}/metrics"
    else:
        command = peer_command(kind, bundle, ports, log_dir / f"{kind.name}-{ports['grpc']}", args)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    log_path = log_dir / f"{kind.name}-{ports['grpc']}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    server = support.ServerProcess(process, f"127.0.0.1:{ports['grpc']}", metrics_url, log_path, command)
    try:
        agreement.wait_model_ready(server.address, bundle.name, START_TIMEOUT_S, lambda: process.poll() is None)
    except BaseException as exc:
        stop(server)
        raise RuntimeError(f"{kind.name} did not start: {exc}\n{server.log_tail()}") from exc
    return server


ORPHAN_GRACE_S = 5.0


def _live_group_members(pgid: int) -> list[int]:
    """Processes of process group ``pgid`` that are not zombies (a zombie re-parented to PID 1,
    e.g. a multiprocessing resource tracker of PyTriton's stub, is already gone but for its entry)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return members


def stop(server: support.ServerProcess) -> int:
    """SIGTERM (PyTriton's launcher maps it to SIGINT), then kill whatever is left of the server's
    process group ORPHAN_GRACE_S after the server process exited. Returns how many processes were
    left behind (0 for a clean shutdown)."""
    server.stop()
    deadline = time.monotonic() + ORPHAN_GRACE_S
    while (left := _live_group_members(server.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)  # polling /proc for the last children to exit
    if left:
        logger.warning("%s left %d process(es) behind after SIGTERM: killing them", server.command[1], len(left))
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(left)


# ----------------------------------------------------------------------------- one run

def run_one(kind: ServerKind, position: int, length: str, concurrency: int, pool: list[str],
            bundle: support.Bundle, references: dict[str, tuple[str, agreement.Answers]],
            args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    record: dict[str, Any] = {"server": kind.name, "position": position, "length": length,
                              "concurrency": concurrency}
    began = time.monotonic()
    try:
        server = start(kind, bundle, args, log_dir)
    except Exception as exc:  # noqa: BLE001 - a peer that fails is reported, the others still run
        logger.error("%s", exc)
        return {**record, "failed": str(exc)[-2000:]}
    record["start_s"] = time.monotonic() - began
    try:
        answers = agreement.fetch_answers(server.address, bundle.name, pool, TEXT_DIMS)
        reference_server, reference = references.setdefault(length, (kind.name, answers))
        check = {**agreement.compare(reference, answers), "reference": reference_server}
        results = bench_serving.run_cell(server, "kserve-triton", bundle.name, pool, concurrency, args,
                                         text_dims=TEXT_DIMS)
        cell = serving_report.summarize_cell(kind.name, length, concurrency, results)
        record.update({k: v for k, v in cell.items() if k != "mode"}, agreement=check)
    except Exception as exc:  # noqa: BLE001
        logger.error("%s failed: %s\n%s", kind.name, exc, server.log_tail())
        record["failed"] = f"{type(exc).__name__}: {exc}"[-2000:]
    finally:
        record["orphans"] = stop(server)
    return record


def run_order(servers: list[str]) -> list[str]:
    """textclf first and last (when it runs), the peers in between."""
    peers = [s for s in servers if s != "textclf"]
    return ["textclf", *peers, "textclf"] if "textclf" in servers else peers


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    started = time.monotonic()
    bundle = support.find_bundle(args.model_repository, args.model)
    if bundle is None:
        logger.error("no bundle %s/%s/<version>: train and export one first (docs/benchmarks.md, peers)",
                     args.model_repository, args.model)
        return 2
    for peer in sorted({SERVERS[s].venv for s in args.servers if SERVERS[s].venv}):
        if args.no_install and not venvs.is_current(peer):
            logger.error("the %s venv is missing or stale and --no-install was given: run bench/peers/venvs.py", peer)
            return 2
        venvs.ensure(peer)
    texts, text_stats = bench_serving.prepare_texts(bundle, args)
    order = run_order(args.servers)
    logger.info("model %s/%d; order per cell: %s; %s s windows after %s s warm-up", bundle.name, bundle.version,
                " -> ".join(order), args.seconds, args.warmup)
    info = bench_serving.machine_info()
    runs: list[dict[str, Any]] = []
    # per length: the first answers (textclf's first run, when textclf runs) every run is compared with
    references: dict[str, tuple[str, agreement.Answers]] = {}
    with tempfile.TemporaryDirectory(prefix="textclf-peers-") as tmp:
        for length in args.lengths:
            for concurrency in args.concurrency:
                for position, name in enumerate(order):
                    record = run_one(SERVERS[name], position, length, concurrency, texts[length], bundle,
                                     references, args, Path(tmp))
                    runs.append(record)
                    logger.info("%s", report.run_line(record))
    summary = report.summarize(runs, order)
    agreement_rows = report.agreement_by_server(runs, args.atol)
    problems = report.problems(runs, agreement_rows)
    output = {
        "benchmark": "bench/peers/bench_peers.py (issue 11)",
        "command": " ".join([Path(sys.executable).name, "bench/peers/bench_peers.py", *(argv or sys.argv[1:])]),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "quick": args.quick,
        "elapsed_s": time.monotonic() - started, "machine": {**info, "loadavg_end": os.getloadavg()},
        "model": {"repository": str(bundle.repository), "name": bundle.name, "version": bundle.version,
                  "architecture": bundle.card.to_dict().get("architecture"), "max_len": bundle.card.max_len},
        "servers": {name: SERVERS[name].label for name in args.servers}, "order": order,
        "peer_versions": {peer: {k: v for k, v in venvs.locked_packages(peer).items()
                                 if k in ("mlserver", "kserve", "nvidia-pytriton", "onnxruntime", "tokenizers",
                                          "grpcio", "numpy", "uvloop")}
                          for peer in sorted({SERVERS[s].venv for s in args.servers if SERVERS[s].venv})},
        "settings": {"seconds": args.seconds, "warmup": args.warmup, "concurrency": args.concurrency,
                     "lengths": args.lengths, "num_texts": args.num_texts, "text_dims": TEXT_DIMS,
                     "load_generator": "bench/serving_load.py kserve-triton (tritonclient.grpc.aio), 1 process",
                     "mlserver_max_batch_time_ms": args.mlserver_max_batch_time_ms,
                     "pytriton_max_queue_delay_us": args.pytriton_max_queue_delay_us, "atol": args.atol},
        "texts": text_stats, "runs": runs, "summary": summary, "agreement": agreement_rows, "problems": problems,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(output, indent=2, default=str) + "\n")
    if not args.no_plot:
        report.plot(runs, order, args.plot)
    print("\n" + report.format_summary(summary) + "\n\n" + report.format_runs(runs) + "\n\n"
          + report.format_agreement(agreement_rows))
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print(f"\nwrote {args.output}" + ("" if args.no_plot else f" and {args.plot}")
          + f" in {time.monotonic() - started:.0f} s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
