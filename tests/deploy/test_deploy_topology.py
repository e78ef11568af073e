"""The compose topology as real processes on 127.0.0.1 (issue 4).

Two service replicas (``python -m service`` with compose's environment, a tiny bundle), nginx
(Debian) running the repo's deploy/nginx/nginx.conf rendered for them the way the nginx image
renders it, and Prometheus (Debian) running the repo's deploy/prometheus/ files unchanged (the
replicas reach it through the config's file_sd directory, as any non-DNS replica would).
Bounded client traffic goes through nginx with our client: its gRPC retry policy (UNAVAILABLE,
CANCELLED) and its own retry of calls reset mid-response (RST_STREAM from nginx).

Proves: both replicas serve behind nginx; Prometheus scrapes both and loads the rules; SIGKILL
of one replica mid-traffic and SIGTERM (drain) + restart of the other lose no client call.
nginx and Prometheus are installed with scripts/install_test_deps.sh when missing; the module
is skipped (with the installer's message) only when that is impossible.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from client.client import TextclfClient, retry_service_config
from service.healthcheck import check as health_check
from tests.support.deploy_env import (MODEL, REPO, TEXTS, compose_service, env_of, nginx_failovers, ok_requests,
                                      render_nginx, require_tools)
from tests.support.onnx_bundle import make_onnx_bundle
from tests.support.ports import free_port
from tests.support.traffic import Traffic, wait_for

logger = logging.getLogger(__name__)

pytestmark = pytest.mark.timeout(240)

START_TIMEOUT_S = 30.0
TRAFFIC_THREADS = 4
# The retry policy docs/deployment.md recommends behind a load balancer: UNAVAILABLE (replica
# dead, draining, or no replica left: nginx's error_page answers grpc-status 14) and CANCELLED.
# CANCELLED because grpc-core's server shutdown cancels the calls it has received but not yet
# handed to the application (a grpc.aio server accepts one call at a time), even within the
# grace period; a client never retries its own cancellations, so this only covers that case.
DEPLOY_RETRY_CODES = ("UNAVAILABLE", "CANCELLED")


# ------------------------------------------------------------------------------ plumbing
def http_get(url: str, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback only
        return response.read().decode("utf-8")


@dataclass
class Process:
    """A child process in its own session, with its output in a log file."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        log.write(f"\n===== start #{self.starts}: {' '.join(self.argv)}\n".encode())
        log.flush()
        self.popen = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                      cwd=REPO, start_new_session=True)
        log.close()

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def assert_running(self) -> None:
        if not self.running():
            pytest.fail(f"{self.name} exited with {self.popen.returncode if self.popen else None}:\n{self.log_tail()}")

    def signal(self, signum: int) -> None:
        assert self.popen is not None and self.running(), f"{self.name} is not running"
        self.popen.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.popen is not None
        return self.popen.wait(timeout=timeout)

    def stop(self) -> None:
        """Terminate (then kill) this process only, by its own pid."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=5)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class Replica:
    process: Process
    port: int
    metrics_port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        return health_check(self.address, timeout=1.0) == "SERVING"

    def wait_healthy(self) -> None:
        wait_for(self.healthy, START_TIMEOUT_S, f"{self.process.name} to be SERVING",
                 alive=self.process.assert_running)

    def ok_requests(self) -> float:
        """Successful requests this replica counted (its own /metrics; resets on restart)."""
        return ok_requests(self.metrics_port)

    def restart_until_it_serves(self, what: str) -> None:
        """Start again on the same ports; wait until SERVING and until nginx sends it traffic."""
        self.process.start()
        self.wait_healthy()
        wait_for(lambda: self.ok_requests() > 0, 30, what, alive=self.process.assert_running)


@dataclass
class Topology:
    replicas: list[Replica]
    nginx: Process
    nginx_address: str
    nginx_access_log: Path
    prometheus: Process
    prometheus_url: str

    def prometheus_query(self, query: str) -> list[dict[str, Any]]:
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        body = json.loads(http_get(url))
        assert body["status"] == "success", body
        return body["data"]["result"]


# ------------------------------------------------------------------------------- fixture
def _replica_env(base: dict[str, str], port: int, metrics_port: int, repository: Path) -> dict[str, str]:
    """compose's environment for the `textclf` service, with loopback addresses and the tmp repo."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEXTCLF_")}
    env.update(base)
    env.update({
        "TEXTCLF_HOST": "127.0.0.1", "TEXTCLF_PORT": str(port),
        "TEXTCLF_METRICS_HOST": "127.0.0.1", "TEXTCLF_METRICS_PORT": str(metrics_port),
        "TEXTCLF_MODEL_REPOSITORY": str(repository),
        # two CPU cores shared by everything here
        "TEXTCLF_INTRA_OP_THREADS": "1", "TEXTCLF_INTER_OP_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    })
    return env


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    tools = require_tools("nginx", "prometheus")
    work = tmp_path_factory.mktemp("topology")
    repository = work / "models"
    make_onnx_bundle(repository, name=MODEL, version=1)
    base_env = {k: v for k, v in env_of(compose_service("textclf")).items() if k.startswith("TEXTCLF_")}
    processes: list[Process] = []
    try:
        replicas = []
        for index in range(2):
            port, metrics_port = free_port(), free_port()
            process = Process(f"replica-{index}", [sys.executable, "-m", "service"], work / f"replica-{index}.log",
                              env=_replica_env(base_env, port, metrics_port, repository))
            processes.append(process)
            process.start()
            replicas.append(Replica(process, port, metrics_port))

        # nginx with the repo's template
        nginx_dir = work / "nginx"
        nginx_dir.mkdir()
        grpc_port, status_port = free_port(), free_port()
        config = render_nginx(nginx_dir, [r.address for r in replicas], grpc_port, status_port)
        nginx = Process("nginx", [tools["nginx"], "-p", str(nginx_dir), "-c", str(config),
                                  "-e", str(nginx_dir / "error.log"),
                                  "-g", f"pid {nginx_dir / 'nginx.pid'}; daemon off;"],
                        nginx_dir / "access.log")
        processes.append(nginx)
        nginx.start()

        # Prometheus with the repo's files, unchanged; the replicas go in via file_sd
        prom_dir = work / "prometheus"
        shutil.copytree(REPO / "deploy" / "prometheus", prom_dir)
        targets = [{"targets": [f"127.0.0.1:{r.metrics_port}" for r in replicas],
                    # per-target interval (Prometheus >= 2.29): a fast test without editing the config
                    "labels": {"__scrape_interval__": "1s", "__scrape_timeout__": "1s", "topology": "test"}}]
        (prom_dir / "targets" / "replicas.json").write_text(json.dumps(targets), encoding="utf-8")
        prom_port = free_port()
        prometheus = Process("prometheus", [tools["prometheus"], f"--config.file={prom_dir / 'prometheus.yml'}",
                                            f"--storage.tsdb.path={work / 'tsdb'}",
                                            f"--web.listen-address=127.0.0.1:{prom_port}"],
                             work / "prometheus.log")
        processes.append(prometheus)
        prometheus.start()

        for replica in replicas:
            replica.wait_healthy()
        wait_for(lambda: http_get(f"http://127.0.0.1:{status_port}/healthz").strip() == "ok", START_TIMEOUT_S,
                 "nginx", alive=nginx.assert_running)
        prometheus_url = f"http://127.0.0.1:{prom_port}"
        wait_for(lambda: http_get(f"{prometheus_url}/-/ready"), START_TIMEOUT_S, "Prometheus ready",
                 alive=prometheus.assert_running)
        yield Topology(replicas, nginx, f"127.0.0.1:{grpc_port}", nginx_dir / "access.log", prometheus,
                       prometheus_url)
    finally:
        for process in reversed(processes):
            process.stop()
        for process in processes:
            logger.info("%s log tail:\n%s", process.name, process.log_tail(15))


# --------------------------------------------------------------------------------- tests
def test_nginx_balances_over_both_replicas(topology: Topology) -> None:
    before = [r.ok_requests() for r in topology.replicas]
    with TextclfClient(topology.nginx_address, retry=True, timeout=10.0) as client:
        for i in range(60):
            result = client.classify([TEXTS[i % len(TEXTS)]], model=MODEL)
            assert result.model == MODEL and len(result.predictions) == 1
    served = [r.ok_requests() - b for r, b in zip(topology.replicas, before)]
    assert all(n > 0 for n in served), f"a replica served nothing through nginx: {served}"
    assert sum(served) >= 60


def test_prometheus_scrapes_both_replicas_with_the_repo_rules(topology: Topology) -> None:
    replicas = {f"127.0.0.1:{r.metrics_port}" for r in topology.replicas}
    with TextclfClient(topology.nginx_address, retry=True) as client:
        for i in range(20):
            client.classify([TEXTS[i % len(TEXTS)]], model=MODEL)

    def up_targets() -> set[str]:
        return {s["metric"]["instance"] for s in topology.prometheus_query('up{job="textclf"} == 1')}

    wait_for(lambda: replicas <= up_targets(), 30, "Prometheus to scrape both replicas",
             interval=0.25, alive=topology.prometheus.assert_running)

    def counted() -> set[str]:
        query = 'sum by (instance) (textclf_requests_total{job="textclf",code="OK"}) > 0'
        return {s["metric"]["instance"] for s in topology.prometheus_query(query)}

    wait_for(lambda: replicas <= counted(), 30, "request counters of both replicas in Prometheus", interval=0.25)
    # the repo's recording and alert rules are loaded and evaluate without errors
    body = json.loads(http_get(f"{topology.prometheus_url}/api/v1/rules"))
    groups = {g["name"]: g for g in body["data"]["groups"]}
    assert {"textclf-recording", "textclf-alerts"} <= set(groups), set(groups)
    bad = [r["name"] for g in groups.values() for r in g["rules"] if r.get("health") == "err"]
    assert not bad, f"rules failing to evaluate: {bad}"


def test_sigkill_and_drain_lose_no_client_call(topology: Topology) -> None:
    first, second = topology.replicas
    # the client's default gRPC retry policy covers the codes docs/deployment.md recommends
    assert set(DEPLOY_RETRY_CODES) <= set(json.loads(retry_service_config())["methodConfig"][0]["retryPolicy"]
                                              ["retryableStatusCodes"])
    # our client: gRPC's retry policy, plus its own retry of calls reset mid-response
    client = TextclfClient(topology.nginx_address, retry=True)
    traffic = Traffic(lambda texts: len(client.classify(texts, MODEL, timeout=15.0).predictions),
                      TEXTS, threads=TRAFFIC_THREADS)
    traffic.start()
    try:
        traffic.wait_more(100, "before the kill")

        # 1. SIGKILL one replica mid-traffic; nginx / the client retry route around it.
        first.process.signal(signal.SIGKILL)
        first.process.wait(timeout=10)
        traffic.wait_more(200, "with one replica dead")

        first.restart_until_it_serves("the restarted replica to serve through nginx")

        # 2. SIGTERM the other mid-traffic: it drains (admitted calls finish) and exits cleanly
        traffic.wait_more(50, "before the drain")
        second.process.signal(signal.SIGTERM)
        grace = float(env_of(compose_service("textclf"))["TEXTCLF_GRACE_PERIOD"])
        code = second.process.wait(timeout=grace + 10)
        assert code == 0, f"drained replica exited with {code}:\n{second.process.log_tail()}"
        traffic.wait_more(200, "with one replica drained")

        second.restart_until_it_serves("the second restarted replica to serve")  # both serve again
        traffic.wait_more(100, "after both restarts")
    finally:
        traffic.stop()
        client.close()

    total = traffic.completed
    failovers, retried_by_client = nginx_failovers(topology.nginx_access_log)
    logger.info("client outcomes: %s; nginx re-sent %d calls to the other replica; %d attempts ended "
                "non-OK at nginx and were retried by the client policy (%d by the client's own retry of calls "
                "reset mid-response)", dict(traffic.outcomes), failovers, retried_by_client, client.retries)
    assert traffic.outcomes["OK"] == total and total >= 650, (
        f"lost client calls: {dict(traffic.outcomes)}; first failures: {traffic.failures[:5]}")
    # the dead replica really was tried mid-traffic: nginx re-sent calls to the live one
    assert failovers >= 1, "no call ever reached the killed replica; the kill proved nothing"

