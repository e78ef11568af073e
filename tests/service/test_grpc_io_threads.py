"""Which threads receive the calls' bytes (``grpc_event_engine_io``, service/grpc_io.py): by default
gRPC core's EventEngine pool does none of the socket I/O, so a burst of large messages cannot make that
pool start threads; with the setting on (gRPC's default) the same burst is read by the pool."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from client.client import classify_request
from service.grpc_io import GRPC_EXPERIMENTS_ENV, choose_grpc_io
from tests.support.service_process import ServiceProcess
from textclf_protos.textclf.v1 import textclf_pb2_grpc as pb_grpc

EVENT_ENGINE_THREAD = "event_engine"  # gRPC core's name for its EventEngine worker threads
CONNECTIONS, CALLS, TEXT_BYTES, TEXTS = 2, 60, 60_000, 60  # 120 messages of ~3.6 MB: two fit the bytes budget
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _event_engine_threads(pid: int) -> tuple[int, float]:
    """(how many, CPU seconds used) of the EventEngine worker threads of process ``pid``."""
    count, ticks = 0, 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as stat:
                fields = stat.read()
        except FileNotFoundError:  # the thread ended while we looked
            continue
        name, rest = fields[fields.index("(") + 1:fields.rindex(")")], fields[fields.rindex(")") + 2:].split()
        if name == EVENT_ENGINE_THREAD:
            count += 1
            ticks += int(rest[11]) + int(rest[12])  # utime, stime (fields 14 and 15 of stat)
    return count, ticks / CLOCK_TICKS


def _send_large_messages(address: str) -> dict[str, int]:
    """CONNECTIONS clients, each sending CALLS large Classify requests one after the other (an unknown
    model: each message is received and parsed in full, then answered NOT_FOUND)."""
    request = classify_request(["a" * TEXT_BYTES] * TEXTS, "absent")
    codes: dict[str, int] = {}

    def client(index: int) -> list[str]:
        options = [("grpc.max_send_message_length", 8 << 20), ("grpc.use_local_subchannel_pool", 1),
                   ("grpc.channel_id", index)]  # one connection per client
        with grpc.insecure_channel(address, options=options) as channel:
            stub, got = pb_grpc.TextClassifierStub(channel), []
            for _ in range(CALLS):
                try:
                    stub.Classify(request, timeout=30)
                    got.append("OK")
                except grpc.RpcError as exc:
                    got.append(exc.code().name)
            return got

    with ThreadPoolExecutor(CONNECTIONS) as pool:
        for got in pool.map(client, range(CONNECTIONS)):
            for code in got:
                codes[code] = codes.get(code, 0) + 1
    return codes


def _burst(repo: Path, *flags: str) -> tuple[dict[str, int], tuple[int, float], tuple[int, float]]:
    server = ServiceProcess(repo, *flags, env={GRPC_EXPERIMENTS_ENV: None})
    try:
        before = _event_engine_threads(server.process.pid)
        codes = _send_large_messages(server.address)
        return codes, before, _event_engine_threads(server.process.pid)
    finally:
        server.kill()


def test_a_burst_of_large_messages_is_not_read_by_the_event_engine_pool_and_adds_no_thread(bundles, repo_path) -> None:
    codes, before, after = _burst(repo_path)
    assert codes == {"NOT_FOUND": CONNECTIONS * CALLS}  # every message arrived whole and was parsed
    assert after[0] == before[0]  # no thread added to gRPC core's pool
    default_cpu = after[1] - before[1]
    # the same burst with gRPC's default I/O threads: the pool reads it (what the default avoids)
    codes, before, after = _burst(repo_path, "--grpc-event-engine-io")
    assert codes == {"NOT_FOUND": CONNECTIONS * CALLS}
    event_engine_cpu = after[1] - before[1]
    assert event_engine_cpu >= 0.03, event_engine_cpu  # ~430 MB received on those threads
    assert default_cpu <= event_engine_cpu / 5, (default_cpu, event_engine_cpu)


def test_in_process_servers_of_the_suite_run_on_the_same_io_path(bundles, server) -> None:
    """tests/conftest.py chose the production I/O threads before anything imported grpc: this test
    process's EventEngine pool (its servers' and clients' alike) reads none of a burst either."""
    before = _event_engine_threads(os.getpid())
    assert _send_large_messages(server.address) == {"NOT_FOUND": CONNECTIONS * CALLS}
    after = _event_engine_threads(os.getpid())
    assert after[0] == before[0]
    assert after[1] - before[1] <= 0.02, after[1] - before[1]  # 0.09-0.11 s when the pool does the I/O


def test_grpc_experiments_turn_the_event_engine_io_off_unless_the_caller_named_a_flag() -> None:
    environ: dict[str, str] = {}
    value = choose_grpc_io(False, environ)
    assert value == ("-event_engine_listener,-event_engine_for_all_other_endpoints,-event_engine_client,"
                     "-event_engine_callback_cq")
    assert choose_grpc_io(False, environ) == value  # a worker repeats its supervisor's choice unchanged
    caller = {GRPC_EXPERIMENTS_ENV: "event_engine_listener, some_other_flag"}
    assert choose_grpc_io(False, caller) == ("event_engine_listener, some_other_flag,-event_engine_for_all_other_endpoints,"
                                             "-event_engine_client,-event_engine_callback_cq")
    on: dict[str, str] = {}
    assert choose_grpc_io(True, on) == "" and on == {}
    assert choose_grpc_io(True, {GRPC_EXPERIMENTS_ENV: "-event_engine_client"}) == "-event_engine_client"
