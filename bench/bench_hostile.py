"""Hostile-load benchmark (issue 9): legitimate traffic with and without an attack of the most
expensive valid requests.

1. starts ``python -m service`` (defaults: batching on);
2. measures capacity: closed loop, ``--concurrency`` callers, single-text requests;
3. no attack: ``--legit-clients`` closed-loop callers paced to ``--legit-fraction`` (0.5) of that
   capacity, for ``--seconds``;
4. attack: the same legitimate callers while a separate process sends the most expensive valid
   requests it can build, closed loop: 64 texts of ~64 KiB (the 4 MiB message limit) of
   ``"a "`` repeated, ``"."`` repeated, U+FDFA (NFKC: 18 characters, 4 words) and no spaces at
   all, over textclf.v1 and KServe (raw contents); KServe requests declaring ~1M empty elements;
   and ClassifyStreams that keep writing such requests and never read an answer;
5. after: 10 s (``--after-seconds``) without traffic, then the server's RSS and threads again;
6. with ``--compare-floor``: steps 2-5 again against the gRPC floor server
   (``bench/grpc_floor_server.py --kind aio-deep``: the same grpcio stack and intake, no model; its
   ``Classify`` parses the request and answers at once), at the service's legitimate rate, with
   the attack the floor can serve (the textclf.v1 unary kinds: it has no KServe API and no
   streams), and the service's own run uses that same attack. What the floor shows is what any
   servicer on this gRPC stack gets from the attack before doing any work of its own. Then once
   more with the legitimate load on one floor server and the attack sent to a second floor
   server process: what the attack costs the legitimate clients through the machine alone (CPU,
   memory bandwidth, the kernel's loopback), when no server process receives both.
7. with ``--compare-separate``: the legitimate load on one service process and the whole attack
   (every kind, streams included) on a second service process of the same bundle and settings,
   at normal priority, under ``nice -n 19`` and under ``SCHED_IDLE`` (``chrt --idle 0``: it runs only
   when nothing else wants a core): what the attack costs the legitimate clients when it is handled
   exactly as the service handles it, but in a process of its own (the bound for any design that
   moves the attack's work to another process on this machine), and what is left when that process
   also yields the CPU to the legitimate one.

Reports legitimate p50/p99 without and with the attack, per hostile kind how long requests took
to be answered and with which status, and the server's CPU, RSS and threads in each phase; checks
the goals (legit p99 under attack <= 2x, every hostile request answered within 1 s, RSS within
+100 MB 10 s after, no thread growth) and prints them. Asserts nothing (``--quick`` is run by
tests/bench/test_bench_hostile.py so it cannot rot).

    python bench/bench_hostile.py --repository models
    python bench/bench_hostile.py --repository models --compare-floor --output bench/results/hostile-vs-floor.json
    python bench/bench_hostile.py --repository models --compare-separate --output bench/results/hostile-separate.json
    python bench/bench_hostile.py --quick --repository /tmp/tiny-models --texts-jsonl texts.jsonl
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402

import serving_support as support  # noqa: E402
from open_loop import CHANNEL_OPTIONS, make_caller, measure_capacity  # noqa: E402
from serving_load import process_cpu_seconds  # noqa: E402

logger = logging.getLogger("bench_hostile")

TEXTS_PER_REQUEST = 64
TEXT_CHARS = {"a-space": ("a ", 32_000), "dots": (".", 64_000), "nfkc-18x": ("\ufdfa", 21_300),
              "no-space": ("x", 64_000)}  # ~64 KiB of UTF-8 each: 64 of them fill a 4 MiB message
EMPTY_ELEMENTS = 1_000_000
FULL_MESSAGE_BYTES = 4 * 1024 * 1024  # what TEXT_CHARS and EMPTY_ELEMENTS fill
HOSTILE_TIMEOUT_S = 10.0
GOALS = {"legit_p99_under_attack_le_2x": 2.0, "hostile_answered_within_s": 1.0, "rss_growth_after_le_mb": 100.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, default=ROOT / "models")
    p.add_argument("--model", default="news")
    p.add_argument("--texts-jsonl", type=Path, help="legitimate texts ({'text': ...} per line; default: BBC News)")
    p.add_argument("--tokens", type=int, default=40, help="tokens per legitimate text")
    p.add_argument("--concurrency", type=int, default=16, help="closed-loop callers measuring capacity")
    p.add_argument("--capacity-seconds", type=float, default=5.0)
    p.add_argument("--legit-clients", type=int, default=8)
    p.add_argument("--legit-fraction", type=float, default=0.5, help="legitimate load as a fraction of capacity")
    p.add_argument("--seconds", type=float, default=20.0, help="duration of the no-attack and the attack phase")
    p.add_argument("--after-seconds", type=float, default=10.0)
    p.add_argument("--late-seconds", type=float, default=30.0,
                   help="a second look at RSS and threads this long after the attack (gRPC core's own thread "
                        "pool retires threads it added under load after ~20 s idle); 0 = none")
    p.add_argument("--hostile-clients", type=int, default=2, help="closed-loop callers per hostile request kind")
    p.add_argument("--never-read-streams", type=int, default=4)
    p.add_argument("--message-bytes", type=int, default=FULL_MESSAGE_BYTES,
                   help="size of the hostile messages (scale them to a server's --max-receive-message-bytes)")
    p.add_argument("--compare-floor", action="store_true",
                   help="also run against the gRPC floor server (textclf.v1 unary attack only, for both)")
    p.add_argument("--floor-kind", choices=("aio-deep", "aio-deep-raw"), default="aio-deep",
                   help="the floor server of --compare-floor (aio-deep-raw: receives without parsing)")
    p.add_argument("--compare-separate", action="store_true",
                   help="also run with the whole attack sent to a second service process (normal priority, "
                        "nice 19, SCHED_IDLE)")
    p.add_argument("--attacker-sched-idle", action="store_true",
                   help="run the attacker's process under SCHED_IDLE (a diagnostic: what the attack costs "
                        "when its own CPU use yields to everything else)")
    p.add_argument("--threads", type=int, default=1, help="server --intra-op-threads")
    p.add_argument("--server-arg", action="append", default=[], help="extra `python -m service` flag")
    p.add_argument("--quick", action="store_true", help="seconds, not minutes: for the test that keeps this alive")
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "hostile.json")
    args = p.parse_args(argv)
    if args.quick:
        args.capacity_seconds, args.seconds, args.after_seconds, args.late_seconds = 1.0, 2.0, 1.0, 0.0
        args.concurrency, args.legit_clients, args.hostile_clients, args.never_read_streams = 4, 2, 1, 1
    # the attack the floor server can serve (it has only textclf.v1 Classify), used for both runs
    args.kind_prefix = "textclf/" if args.compare_floor else ""
    if args.compare_floor:
        args.never_read_streams = 0
    return args


# ----------------------------------------------------------------------------- server sampling

def _status(pid: int) -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"rss_mb": int(fields["VmRSS"].split()[0]) // 1024, "threads": int(fields["Threads"])}


def _thread_names(pid: int) -> dict[str, int]:
    """The server's threads by name (which pool a new thread belongs to)."""
    names: Counter[str] = Counter()
    for comm in Path(f"/proc/{pid}/task").glob("*/comm"):
        try:
            names[comm.read_text().strip()] += 1
        except OSError:
            continue
    return dict(names)


@dataclass
class Sampler:
    """Server CPU (cores busy), RSS and threads every ``interval`` seconds while running."""

    pid: int
    interval: float = 0.5
    samples: list[dict[str, float]] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        last_cpu, last_t = process_cpu_seconds(self.pid) or 0.0, time.monotonic()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.interval)
            except TimeoutError:
                pass
            cpu, now = process_cpu_seconds(self.pid) or 0.0, time.monotonic()
            self.samples.append({"cpu_cores": (cpu - last_cpu) / max(now - last_t, 1e-9), **_status(self.pid)})
            last_cpu, last_t = cpu, now

    def summary(self) -> dict[str, float]:
        if not self.samples:
            return {}
        return {"cpu_cores_mean": sum(s["cpu_cores"] for s in self.samples) / len(self.samples),
                "rss_mb_max": max(s["rss_mb"] for s in self.samples),
                "threads_max": max(s["threads"] for s in self.samples)}


# ----------------------------------------------------------------------------- legitimate load

async def paced_closed_loop(call, clients: int, rate: float, seconds: float) -> dict:
    """``clients`` callers, each with one call outstanding at most, together paced to ``rate``."""
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    interval = clients / rate
    t0 = time.monotonic()
    end = t0 + seconds

    async def client(k: int) -> None:
        due = t0 + k * interval / clients
        i = k
        while due < end:
            await asyncio.sleep(max(0.0, due - time.monotonic()))  # pacing, not synchronising
            start = time.perf_counter()
            try:
                await call(i)
                codes["OK"] += 1
                latencies.append((time.perf_counter() - start) * 1e3)
            except grpc.aio.AioRpcError as exc:
                codes[exc.code().name] += 1
            due += interval
            i += clients

    await asyncio.gather(*(client(k) for k in range(clients)))
    return {"requests": sum(codes.values()), "per_s": codes["OK"] / seconds, "codes": dict(codes),
            "p50_ms": support.percentile(latencies, 50), "p99_ms": support.percentile(latencies, 99)}


async def legit_phase(address: str, model: str, texts: list[str], clients: int, rate: float, seconds: float,
                      pid: int) -> dict:
    sampler, stop = Sampler(pid), asyncio.Event()
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        call = make_caller(channel, "textclf", address, model, texts)
        sampling = asyncio.ensure_future(sampler.run(stop))
        result = await paced_closed_loop(call, clients, rate, seconds)
        stop.set()
        await sampling
    return {**result, "server": sampler.summary()}


# ----------------------------------------------------------------------------- hostile load

def _hostile_payloads(model: str, message_bytes: int = FULL_MESSAGE_BYTES) -> dict[str, tuple[str, bytes]]:
    """kind -> (full method name, serialized request): built once, sent as raw bytes; each fills
    about ``message_bytes``."""
    from service.api.kserve_codec import encode_bytes_raw
    from textclf_protos.inference import grpc_service_pb2 as kpb
    from textclf_protos.textclf.v1 import textclf_pb2 as pb

    payloads = {}
    scale = message_bytes / FULL_MESSAGE_BYTES
    for kind, (unit, repeat) in TEXT_CHARS.items():
        texts = [unit * int(repeat * scale)] * TEXTS_PER_REQUEST
        payloads[f"textclf/{kind}"] = ("/textclf.v1.TextClassifier/Classify",
                                       pb.ClassifyRequest(model=model, texts=texts).SerializeToString())
        request = kpb.ModelInferRequest(model_name=model)
        request.inputs.add(name="TEXT", datatype="BYTES", shape=[len(texts)])
        request.raw_input_contents.append(encode_bytes_raw([t.encode() for t in texts]))
        payloads[f"kserve/{kind}"] = ("/inference.GRPCInferenceService/ModelInfer", request.SerializeToString())
    request = kpb.ModelInferRequest(model_name=model)
    elements = int(EMPTY_ELEMENTS * scale)
    request.inputs.add(name="TEXT", datatype="BYTES", shape=[elements])
    request.raw_input_contents.append(encode_bytes_raw([b""] * elements))
    payloads["kserve/1M-empty-elements"] = ("/inference.GRPCInferenceService/ModelInfer", request.SerializeToString())
    return payloads


async def _hostile_attack(address: str, model: str, clients: int, streams: int, seconds: float,
                          message_bytes: int = FULL_MESSAGE_BYTES, kind_prefix: str = "") -> dict:
    payloads = {kind: payload for kind, payload in _hostile_payloads(model, message_bytes).items()
                if kind.startswith(kind_prefix)}
    # per call: seconds to its answer, status, seconds after the attack began that it was sent
    records: dict[str, list[tuple[float, str, float]]] = {kind: [] for kind in payloads}
    written = [0]
    end = time.monotonic() + seconds
    began = time.perf_counter()
    channels = [grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS + [("grpc.use_local_subchannel_pool", 1)])
                for _ in range(clients)]

    async def caller(channel: grpc.aio.Channel, kind: str) -> None:
        method, body = payloads[kind]
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        while time.monotonic() < end:
            start = time.perf_counter()
            try:
                await call(body, timeout=HOSTILE_TIMEOUT_S)
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
            records[kind].append((time.perf_counter() - start, code, start - began))

    async def never_read(channel: grpc.aio.Channel) -> None:
        from textclf_protos.textclf.v1 import textclf_pb2 as pb
        request = pb.ClassifyRequest.FromString(payloads["textclf/nfkc-18x"][1])
        stream = channel.stream_stream("/textclf.v1.TextClassifier/ClassifyStream",
                                       request_serializer=lambda m: m.SerializeToString(),
                                       response_deserializer=None)()
        try:
            i = 0
            while time.monotonic() < end:
                try:
                    await asyncio.wait_for(stream.write(pb.ClassifyStreamRequest(id=str(i), request=request)),
                                           max(0.01, end - time.monotonic()))
                except TimeoutError:
                    break  # flow control: the server stopped reading this stream
                written[0] += 1
                i += 1
        finally:
            stream.cancel()

    tasks = [caller(channels[c % len(channels)], kind) for kind in payloads for c in range(clients)]
    # their own connections: a stream that is never read stalls its connection (HTTP/2 flow control)
    stream_channels = [grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS + [("grpc.use_local_subchannel_pool", 1)])
                       for _ in range(streams)]
    tasks += [never_read(channel) for channel in stream_channels]
    await asyncio.gather(*tasks)
    for channel in channels + stream_channels:
        await channel.close()
    summary = {}
    for kind, rows in records.items():
        latencies = [s * 1e3 for s, _, _ in rows]
        slowest = max(rows, default=None)
        summary[kind] = {"requests": len(rows), "codes": dict(Counter(code for _, code, _ in rows)),
                         "within_1s": sum(1 for s, _, _ in rows if s <= GOALS["hostile_answered_within_s"]),
                         "slowest": None if slowest is None else {"ms": slowest[0] * 1e3, "code": slowest[1],
                                                                    "sent_at_s": slowest[2]},
                         "p50_ms": support.percentile(latencies, 50),
                         "max_ms": float("nan") if slowest is None else slowest[0] * 1e3}
    return {"kinds": summary, "never_read_streams": streams, "never_read_messages_written": written[0]}


def _attack_process(address: str, model: str, clients: int, streams: int, seconds: float, message_bytes: int,
                    kind_prefix: str, out, sched_idle: bool = False) -> None:
    """The hostile clients in their own process, so building and sending 4 MiB messages does not
    slow the legitimate clients' event loop. Reports the CPU the attacker itself used: on one
    machine it is taken from the server and the legitimate clients. ``sched_idle``: the attacker
    runs under SCHED_IDLE (a diagnostic: how much of the attack's cost is its own CPU)."""
    import resource

    if sched_idle:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # threads started later inherit it
    start, began = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    result = asyncio.run(_hostile_attack(address, model, clients, streams, seconds, message_bytes, kind_prefix))
    end = resource.getrusage(resource.RUSAGE_SELF)
    used = (end.ru_utime + end.ru_stime) - (start.ru_utime + start.ru_stime)
    result["attacker_cpu_cores"] = used / max(time.monotonic() - began, 1e-9)
    result["attacker_sched_idle"] = os.sched_getscheduler(0) == os.SCHED_IDLE
    out.put(result)


# ----------------------------------------------------------------------------- server-side timing

SERVER_SIDE_APIS = ("kserve.ModelInfer", "textclf.v1.ClassifyStream.message")  # only hostile clients use them


def server_side_within(url: str, seconds: float = 1.0) -> dict[str, dict[str, float]]:
    """Per API: requests the server answered so far, and how many within ``seconds`` of the
    servicer taking them (``textclf_request_duration_seconds``; excludes the upload of the
    request and gRPC core's queue, which the client-side times include)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    counts = {api: {"answered": 0.0, "within": 0.0} for api in SERVER_SIDE_APIS}
    for family in text_string_to_metric_families(text):
        if family.name != "textclf_request_duration_seconds":
            continue
        for sample in family.samples:
            api = sample.labels.get("api")
            if api not in counts:
                continue
            if sample.name.endswith("_count"):
                counts[api]["answered"] += sample.value
            elif sample.name.endswith("_bucket") and float(sample.labels["le"]) == seconds:
                counts[api]["within"] += sample.value
    return counts


# ----------------------------------------------------------------------------- run

async def run(args: argparse.Namespace, server: support.ServerProcess, texts: list[str],
              legit_rate: float | None = None, attack_target: support.ServerProcess | None = None) -> dict:
    """One server through every phase; ``legit_rate``: this legitimate load instead of a fraction of
    the capacity measured here (the floor runs at the service's); ``attack_target``: send the attack
    to this other server instead (the legitimate one then receives none of it)."""
    target = attack_target or server
    async with grpc.aio.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        capacity = await measure_capacity(channel, "textclf", server.address, args.model, texts,
                                          concurrency=args.concurrency, seconds=args.capacity_seconds)
    rate = legit_rate or max(1.0, capacity["per_s"] * args.legit_fraction)
    logger.info("capacity %.0f req/s; legitimate load %.0f req/s", capacity["per_s"], rate)
    before = _status(server.pid)
    baseline = await legit_phase(server.address, args.model, texts, args.legit_clients, rate, args.seconds, server.pid)
    logger.info("no attack: %s", baseline)
    rss_baseline = {**_status(server.pid), "thread_names": _thread_names(server.pid)}
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    attacker = context.Process(target=_attack_process, args=(target.address, args.model, args.hostile_clients,
                                                             args.never_read_streams, args.seconds + 1.0,
                                                             args.message_bytes, args.kind_prefix, out,
                                                             args.attacker_sched_idle))
    attacker.start()
    await asyncio.sleep(1.0)  # let the attack build up before measuring (pacing, not synchronising)
    attacked = await legit_phase(server.address, args.model, texts, args.legit_clients, rate, args.seconds,
                                 server.pid)
    hostile = await asyncio.get_running_loop().run_in_executor(None, out.get)
    attacker.join(30)
    hostile["server_side"] = server_side_within(target.metrics_url) if target.metrics_url else {}
    if attack_target is not None:
        # what the legitimate clients' server answered of the hostile-only APIs (none, if it received none)
        hostile["legit_server_side"] = server_side_within(server.metrics_url) if server.metrics_url else {}
        hostile["attack_target_nice"] = os.getpriority(os.PRIO_PROCESS, attack_target.pid)
        hostile["attack_target_sched_idle"] = os.sched_getscheduler(attack_target.pid) == os.SCHED_IDLE
    logger.info("under attack: %s", attacked)
    await asyncio.sleep(args.after_seconds)  # the measurement is "N seconds after the attack"
    after = {**_status(server.pid), "thread_names": _thread_names(server.pid)}
    late = None
    if args.late_seconds > args.after_seconds:
        await asyncio.sleep(args.late_seconds - args.after_seconds)
        late = {**_status(server.pid), "thread_names": _thread_names(server.pid)}
    hostile_max = max((k["max_ms"] for k in hostile["kinds"].values() if k["requests"]), default=float("nan"))
    goals = {
        "legit_p99_under_attack_le_2x": attacked["p99_ms"] <= GOALS["legit_p99_under_attack_le_2x"] * baseline["p99_ms"],
        "hostile_answered_within_1s": hostile_max <= 1000 * GOALS["hostile_answered_within_s"],
        "rss_after_within_100mb": after["rss_mb"] - rss_baseline["rss_mb"] <= GOALS["rss_growth_after_le_mb"],
        "no_thread_growth": after["threads"] <= rss_baseline["threads"],
    }
    return {"capacity": capacity, "legit_rate_per_s": rate, "start": before, "no_attack": baseline,
            "no_attack_end": rss_baseline, "attack": attacked, "hostile": hostile, "after": after, "late": late,
            "hostile_max_ms": hostile_max, "goals": goals}


def format_report(result: dict) -> str:
    base, attack, after, idle = result["no_attack"], result["attack"], result["after"], result["no_attack_end"]
    lines = [f"capacity {result['capacity']['per_s']:.0f} req/s; legitimate load {result['legit_rate_per_s']:.0f} req/s",
             "", "| phase | legit OK/s | legit p50 ms | legit p99 ms | legit errors | server CPU (cores) | RSS MB | threads |",
             "|---|---|---|---|---|---|---|---|"]
    for name, phase in (("no attack", base), ("under attack", attack)):
        errors = {k: v for k, v in phase["codes"].items() if k != "OK"}
        server = phase["server"]
        lines.append(f"| {name} | {phase['per_s']:.0f} | {phase['p50_ms']:.1f} | {phase['p99_ms']:.1f} | {errors or 0} "
                     f"| {server.get('cpu_cores_mean', float('nan')):.2f} | {server.get('rss_mb_max', '-')} "
                     f"| {server.get('threads_max', '-')} |")
    lines.append(f"| end of no attack (idle) | | | | | | {idle['rss_mb']} | {idle['threads']} |")
    lines.append(f"| {result.get('after_seconds', 10):.0f} s after the attack | | | | | | {after['rss_mb']} "
                 f"| {after['threads']} |")
    late = result.get("late")
    if late:
        lines.append(f"| {result.get('late_seconds', 30):.0f} s after the attack | | | | | | {late['rss_mb']} "
                     f"| {late['threads']} |")
    lines += ["", "| hostile request | sent | statuses | answered within 1 s | p50 ms | max ms (its status, sent s into the attack) |",
              "|---|---|---|---|---|---|"]
    for kind, row in result["hostile"]["kinds"].items():
        slowest = row.get("slowest") or {}
        where = f" ({slowest['code']}, {slowest['sent_at_s']:.1f})" if slowest else ""
        lines.append(f"| {kind} | {row['requests']} | {row['codes']} | {row['within_1s']} | {row['p50_ms']:.0f} "
                     f"| {row['max_ms']:.0f}{where} |")
    lines.append(f"| ClassifyStream never read ({result['hostile']['never_read_streams']} streams) "
                 f"| {result['hostile']['never_read_messages_written']} messages written | – | – | – | – |")
    if "attacker_cpu_cores" in result["hostile"]:
        lines.append(f"\nthe attacker's own process used {result['hostile']['attacker_cpu_cores']:.2f} cores of this machine")
    lines += ["", "server side (from the servicer taking a hostile request to its answer):"]
    for api, row in result["hostile"]["server_side"].items():
        lines.append(f"- {api}: {row['within']:.0f} of {row['answered']:.0f} answered within 1 s")
    lines += ["", "goals: " + ", ".join(f"{k}={'met' if v else 'NOT met'}" for k, v in result["goals"].items())]
    return "\n".join(lines)


def load_texts(args: argparse.Namespace, bundle: support.Bundle) -> list[str]:
    from bundle.tokenization import TextEncoder
    encoder = TextEncoder.from_file(bundle.path / "tokenizer.json", int(bundle.card.max_len))
    source = support.jsonl_texts(args.texts_jsonl) if args.texts_jsonl else support.bbc_corpus_texts()
    return support.make_texts(encoder, source, args.tokens, 16 if args.quick else 64)


# --compare-separate: result key -> (report title, the command the attack's server runs under)
SEPARATE_ARMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "attack_on_second_service": ("a second service process at normal priority", ()),
    "attack_on_second_service_nice19": ("a second service process under nice 19", ("nice", "-n", "19")),
    "attack_on_second_service_sched_idle": ("a second service process under SCHED_IDLE", ("chrt", "--idle", "0")),
}


def _start_service(args: argparse.Namespace, bundle: support.Bundle, log_dir: Path,
                   wrapper: tuple[str, ...] = ()) -> support.ServerProcess:
    return support.start_server(bundle.repository, batching=True, threads=args.threads, extra_args=args.server_arg,
                                env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}, log_dir=log_dir, wrapper=wrapper)


def run_separate(args: argparse.Namespace, bundle: support.Bundle, texts: list[str], log_dir: Path,
                 wrapper: tuple[str, ...], legit_rate: float) -> dict:
    """The legitimate load on one service process, the whole attack on a second one (run under ``wrapper``)."""
    server = _start_service(args, bundle, log_dir)
    try:
        sink = _start_service(args, bundle, log_dir, wrapper=wrapper)
        try:
            return asyncio.run(run(args, server, texts, attack_target=sink, legit_rate=legit_rate))
        finally:
            sink.stop()
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    bundle = support.find_bundle(args.repository, args.model) or support.build_random_bundle(args.model)
    texts = load_texts(args, bundle)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    started, load_start = time.time(), os.getloadavg()
    server = _start_service(args, bundle, log_dir)
    try:
        result = asyncio.run(run(args, server, texts))
    finally:
        server.stop()
    if args.compare_floor:
        logger.info("the same attack against the gRPC floor server")
        floor = support.start_floor_server(args.floor_kind, log_dir)
        try:
            result["floor"] = asyncio.run(run(args, floor, texts, legit_rate=result["legit_rate_per_s"]))
        finally:
            floor.stop()
        logger.info("the legitimate load on one floor server, the attack on another")
        floor = support.start_floor_server(args.floor_kind, log_dir)
        try:
            sink = support.start_floor_server(args.floor_kind, log_dir)
            try:
                result["floor_attack_elsewhere"] = asyncio.run(run(args, floor, texts, attack_target=sink,
                                                                   legit_rate=result["legit_rate_per_s"]))
            finally:
                sink.stop()
        finally:
            floor.stop()
    if args.compare_separate:
        for key, (title, wrapper) in SEPARATE_ARMS.items():
            logger.info("the legitimate load on one service process, the whole attack on %s", title)
            result[key] = run_separate(args, bundle, texts, log_dir, wrapper, result["legit_rate_per_s"])
    result["after_seconds"], result["late_seconds"] = args.after_seconds, args.late_seconds
    report = support.run_report("bench_hostile.py", argv, started, load_start, bundle, args, server, result)
    support.write_json(args.output, report)
    print(format_report(result))
    if "floor" in result:
        print("\n## the gRPC floor server (no model), the same legitimate load and attack\n")
        print(format_report(result["floor"]))
        print("\n## the legitimate load on a gRPC floor server, the attack on a second one (the machine's share)\n")
        print(format_report(result["floor_attack_elsewhere"]))
    for key, (title, _) in SEPARATE_ARMS.items():
        if key in result:
            print(f"\n## the legitimate load on one service process, the whole attack on {title}\n")
            print(format_report(result[key]))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
