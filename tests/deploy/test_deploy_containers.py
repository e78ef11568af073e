"""The real images and the real compose stack (issue 12).

Where a container engine can run (scripts/install_container_engine.sh installs Debian's
docker.io, starts dockerd and builds a local Debian base image, since no registry is reachable):

* the serving image is built from deploy/Dockerfile (``--build-arg BASE_IMAGE=`` the local base;
  the default stays the official python image), started with host networking on a free
  loopback port with a tiny bundle mounted read-only, and must: answer our client and
  tritonclient with the reference probabilities, turn ``healthy`` by its own HEALTHCHECK, run as
  non-root, contain no torch, and exit 0 within compose's ``stop_grace_period`` after SIGTERM
  with calls in flight;
* docker-compose.yml itself runs: the ``textclf`` replicas and ``nginx`` with a test override
  that only swaps in the locally built images and host networking (see ``compose_override``),
  and a replica SIGKILLed under traffic through nginx costs no client call; no network is
  created (Docker's network events are checked), so no bridge and no address outside 127/8.

Where no engine can run, every test here skips with one line saying why. Sizes and times are
printed at the end of the session (``deployment measurements``).
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
import yaml

from client.client import TextclfClient
from service.healthcheck import check as health_check
from tests.support.containers import (BASE_IMAGE, NGINX_IMAGE, SERVE_IMAGE, Engine, build_nginx_image,
                                      build_serve_image, require_engine)
from tests.support.deploy_env import (COMPOSE_FILE, MODEL, REPO, TEXTS, compose_env, compose_service,
                                      duration_seconds, env_of, nginx_failovers, ok_requests)
from tests.support.onnx_bundle import TinyBundle, make_onnx_bundle
from tests.support.ports import free_port
from tests.support.service_process import READY_LINE
from tests.support.traffic import Traffic, wait_for

logger = logging.getLogger(__name__)

pytestmark = pytest.mark.timeout(900)

READY_TIMEOUT_S = 60.0
MEASUREMENTS: list[str] = []


def measured(line: str) -> None:
    logger.info("measured: %s", line)
    MEASUREMENTS.append(line)


class _MeasurementsReport:
    """Prints MEASUREMENTS in pytest's terminal summary (registered by the fixture below)."""

    @staticmethod
    def pytest_terminal_summary(terminalreporter: Any) -> None:
        if MEASUREMENTS:
            terminalreporter.write_sep("-", "deployment measurements (tests/deploy/test_deploy_containers.py)")
            for line in MEASUREMENTS:
                terminalreporter.write_line(line)


@pytest.fixture(scope="module", autouse=True)
def _report_measurements(request: pytest.FixtureRequest) -> None:
    if not request.config.pluginmanager.has_plugin("textclf-deploy-measurements"):
        request.config.pluginmanager.register(_MeasurementsReport(), "textclf-deploy-measurements")


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no conflict
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class HealthEvents:
    """``docker events`` for one container's health, read as they happen (no polling of inspect)."""

    def __init__(self, engine: Engine, container: str) -> None:
        self._process = subprocess.Popen(
            [engine.docker, "events", "--filter", f"container={container}", "--filter", "event=health_status",
             "--format", "{{.Status}}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._statuses: list[tuple[float, str]] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            with self._changed:
                self._statuses.append((time.monotonic(), line.strip()))
                self._changed.notify_all()

    def wait(self, status: str, timeout: float) -> float:
        """monotonic time at which the container reported ``health_status: <status>``."""
        with self._changed:
            found = self._changed.wait_for(
                lambda: any(s.endswith(status) for _, s in self._statuses), timeout=timeout)
            if not found:
                pytest.fail(f"no health_status {status} within {timeout:.0f}s (saw {self._statuses})")
            return next(t for t, s in self._statuses if s.endswith(status))

    def close(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=10)


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def engine() -> Engine:
    return require_engine()


@pytest.fixture(scope="module")
def serve_image(engine: Engine) -> str:
    seconds = build_serve_image(engine.docker)
    size = engine.image_size_bytes(SERVE_IMAGE)
    base = engine.image_size_bytes(BASE_IMAGE)
    measured(f"serving image {size / 1e6:.0f} MB ({(size - base) / 1e6:.0f} MB above the {base / 1e6:.0f} MB "
             f"Debian base); docker build took {seconds:.1f} s (layer cache: a full build only when "
             f"pyproject.toml changes)")
    return SERVE_IMAGE


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> TinyBundle:
    repository = tmp_path_factory.mktemp("container-models")
    tiny = make_onnx_bundle(repository, name=MODEL, version=1)
    for path in [repository, *repository.rglob("*")]:  # readable by the image's user (uid 10001)
        path.chmod(0o755 if path.is_dir() else 0o644)
    return tiny


def stop_grace_seconds() -> float:
    return duration_seconds(compose_service("textclf")["stop_grace_period"])


@dataclass
class ServingContainer:
    engine: Engine
    name: str
    port: int
    metrics_port: int
    started: float
    serving_after_s: float = 0.0
    healthy_after_s: float = 0.0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def exec(self, *argv: str) -> str:
        return self.engine.run("exec", self.name, *argv).stdout.strip()


@pytest.fixture(scope="module")
def serving(engine: Engine, serve_image: str, bundle: TinyBundle) -> Iterator[ServingContainer]:
    name = f"textclf-test-{os.getpid()}-serve"
    port, metrics_port = free_port(), free_port()
    repository = bundle.path.parent.parent
    engine.remove(name)
    events = HealthEvents(engine, name)
    started = time.monotonic()
    engine.run("run", "-d", "--name", name, "--network", "host",
               "--volume", f"{repository}:/models:ro",
               # loopback only; everything else is the image's own configuration
               "--env", "TEXTCLF_HOST=127.0.0.1", "--env", f"TEXTCLF_PORT={port}",
               "--env", "TEXTCLF_METRICS_HOST=127.0.0.1", "--env", f"TEXTCLF_METRICS_PORT={metrics_port}",
               "--stop-timeout", str(int(stop_grace_seconds())), serve_image)
    container = ServingContainer(engine, name, port, metrics_port, started)
    try:
        wait_for(lambda: health_check(container.address, timeout=1.0) == "SERVING", READY_TIMEOUT_S,
                 f"the container to answer SERVING\n{engine.logs(name)}")
        container.serving_after_s = time.monotonic() - started
        healthy_at = events.wait("healthy", READY_TIMEOUT_S + 15)
        container.healthy_after_s = healthy_at - started
        measured(f"container start to gRPC SERVING {container.serving_after_s:.1f} s; to Docker health "
                 f"'healthy' {container.healthy_after_s:.1f} s (the image's HEALTHCHECK probes every 10 s)")
        yield container
    finally:
        events.close()
        engine.remove(name)


# --------------------------------------------------------------------- the serving image
def test_serving_image_runs_as_non_root_without_torch(serving: ServingContainer) -> None:
    assert serving.engine.inspect("container", serving.name)["Config"]["User"] == "textclf"
    assert serving.exec("id", "-u") == "10001"
    uids = next(line for line in serving.exec("cat", "/proc/1/status").splitlines() if line.startswith("Uid:"))
    assert uids.split()[1:] == ["10001"] * 4, f"the server process is not uid 10001: {uids}"
    installed = serving.exec("python", "-c", "import importlib.metadata as m; "
                                             "print('\\n'.join(sorted(d.metadata['Name'].lower() for d in m.distributions())))")
    names = installed.splitlines()
    assert "onnxruntime" in names and "textclf" in names, names
    assert not [n for n in names if n.startswith(("torch", "nvidia-"))], f"torch in the serving image: {names}"
    assert serving.exec("python", "-c", "import importlib.util; print(importlib.util.find_spec('torch'))") == "None"


def test_container_answers_our_client_and_tritonclient(serving: ServingContainer, bundle: TinyBundle) -> None:
    expected = bundle.expected_probabilities(TEXTS)
    with TextclfClient(serving.address) as client:
        result = client.classify(TEXTS, MODEL)
    assert (result.model, result.version) == (MODEL, 1)
    assert [p.label for p in result.predictions] == [bundle.labels[i] for i in expected.argmax(axis=1)]
    np.testing.assert_allclose([p.probability for p in result.predictions], expected.max(axis=1), atol=1e-5)

    text = triton.InferInput("TEXT", [len(TEXTS)], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=np.object_))
    with triton.InferenceServerClient(serving.address) as kserve:
        assert kserve.is_server_ready() and kserve.is_model_ready(MODEL)
        answer = kserve.infer(MODEL, [text], outputs=[triton.InferRequestedOutput("PROBABILITIES"),
                                                      triton.InferRequestedOutput("LABEL")])
    np.testing.assert_allclose(answer.as_numpy("PROBABILITIES"), expected, atol=1e-5)
    assert [label.decode() for label in answer.as_numpy("LABEL")] == [p.label for p in result.predictions]


def test_health_check_turns_healthy(serving: ServingContainer) -> None:
    # The image's own HEALTHCHECK (python -m service.healthcheck) made Docker report healthy
    # (the fixture awaited the health_status event); it still does.
    assert serving.engine.health(serving.name) == "healthy"
    assert serving.healthy_after_s >= serving.serving_after_s
    probe = serving.engine.inspect("container", serving.name)["Config"]["Healthcheck"]["Test"]
    assert "service.healthcheck" in " ".join(probe), probe


def client_traffic(client: TextclfClient) -> Traffic:
    """Closed-loop Classify calls (1-8 texts) from 4 threads with our client's normal API."""
    return Traffic(lambda texts: len(client.classify(texts, MODEL, timeout=20.0).predictions), TEXTS, max_texts=8)


def test_sigterm_drains_within_stop_grace_period(serving: ServingContainer) -> None:
    """Last test of the single container: `docker stop` (SIGTERM, then SIGKILL after compose's
    stop_grace_period) with calls in flight ends in a clean exit 0 well before the SIGKILL."""
    grace = stop_grace_seconds()
    client = TextclfClient(serving.address)
    traffic = client_traffic(client)
    traffic.start()
    try:
        traffic.wait_more(50, "before SIGTERM")
        started = time.monotonic()
        serving.engine.run("stop", "-t", str(int(grace)), serving.name, timeout=grace + 30)
        took = time.monotonic() - started
    finally:
        traffic.stop()
        client.close()
    state = serving.engine.inspect("container", serving.name)["State"]
    logs = serving.engine.logs(serving.name, tail=20)
    measured(f"SIGTERM to exit {took:.1f} s with calls in flight (stop_grace_period {grace:.0f} s); "
             f"client outcomes {dict(traffic.outcomes)}")
    assert state["ExitCode"] == 0 and not state["OOMKilled"], f"not a clean exit: {state}\n{logs}"
    assert took < grace, f"the drain took {took:.1f}s, Docker would have SIGKILLed it at {grace:.0f}s"
    assert "draining" in logs and "stopped" in logs, logs
    # Admitted calls finished; calls after the drain began were refused (UNAVAILABLE) and the
    # client's retries then found no server, or were cancelled by gRPC core's shutdown before the
    # server took them (CANCELLED, docs/deployment.md "Client retry policy"). Nothing else may
    # appear: no call cut mid-way (INTERNAL, UNKNOWN) or left hanging (DEADLINE_EXCEEDED).
    assert set(traffic.outcomes) <= {"OK", "UNAVAILABLE", "CANCELLED"}, traffic.failures[:5]
    assert traffic.outcomes["OK"] >= 50


# ------------------------------------------------------------------- the compose stack
COMPOSE_SERVICES = ("textclf", "nginx")


def compose_override(grpc_listen: int, status_listen: int, replica_port: int) -> dict[str, Any]:
    """The test override of docker-compose.yml: locally built images and host networking.

    Host networking puts every container in the host's network namespace, which forces the only
    other changes, all of them addresses: everything binds 127.0.0.1 (not 0.0.0.0); the replicas
    (one environment for all of them, hence one port) share compose's port 8001 through
    SO_REUSEPORT (``TEXTCLF_WORKERS=2``: each replica is a supervisor whose worker processes join
    the port's reuse group, so the kernel spreads nginx's connections over every replica) and
    take any free metrics port; nginx listens on a free port (8001 is the replicas') and its
    upstream is compose's ``server`` line with that one address. (Listing it once per replica
    would let nginx mark every entry failed at once when one replica dies, ``max_fails=1``,
    and refuse all calls for ``fail_timeout``; a single entry is never marked failed.)"""
    nginx_env = env_of(compose_service("nginx"))
    server_line = nginx_env["TEXTCLF_UPSTREAM_SERVERS"].replace("server textclf:", "server 127.0.0.1:")
    assert f"127.0.0.1:{replica_port}" in server_line, server_line
    return {
        "services": {
            "textclf": {
                "image": SERVE_IMAGE,
                "network_mode": "host",
                "environment": {"TEXTCLF_HOST": "127.0.0.1", "TEXTCLF_METRICS_HOST": "127.0.0.1",
                                "TEXTCLF_METRICS_PORT": "0", "TEXTCLF_WORKERS": "2"},
            },
            "nginx": {
                "image": NGINX_IMAGE,
                "network_mode": "host",
                "environment": {"NGINX_GRPC_LISTEN": f"127.0.0.1:{grpc_listen}",
                                "NGINX_STATUS_LISTEN": f"127.0.0.1:{status_listen}",
                                "TEXTCLF_UPSTREAM_SERVERS": server_line},
            },
            # not started, but on the default network compose would create a bridge for them
            "model-init": {"network_mode": "host"},
            "prometheus": {"network_mode": "host"},
        },
    }


@dataclass
class Stack:
    engine: Engine
    project: str
    files: list[Path]
    nginx_address: str
    status_url: str
    work: Path
    since: str = ""  # engine time at `up`, for `docker events --since`

    def compose(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        argv = ["docker-compose", "--project-name", self.project, "--project-directory", str(REPO)]
        for path in self.files:
            argv += ["--file", str(path)]
        done = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                              env={**compose_env(), "DOCKER_HOST": "unix:///var/run/docker.sock"})
        assert done.returncode == 0, f"docker-compose {' '.join(args)}: exit {done.returncode}\n{done.stderr[-3000:]}"
        return done

    def replicas(self) -> list[str]:
        return self.compose("ps", "-q", "textclf").stdout.split()

    def nginx_log(self) -> str:
        return self.compose("logs", "--no-color", "nginx").stdout


def _resolved_for_host_network(resolved: str, path: Path) -> Path:
    """The override merged into docker-compose.yml (``docker-compose config``), written out with
    two consequences of host networking that an override cannot express:

    * no ``ports``: Docker publishes nothing for a host-networked container (its ports are the
      host's), and docker-compose 1.x refuses the combination instead of ignoring it; an
      override cannot remove list entries (compose concatenates ``ports``);
    * no services of profiles that are not enabled (``textclf-gpu``): compose would not start
      them, but docker-compose 1.x still creates the bridge network they name."""
    config = yaml.safe_load(resolved)
    config["services"] = {name: service for name, service in config["services"].items()
                          if not service.get("profiles")}
    for service in config["services"].values():
        if service.get("network_mode") == "host":
            service.pop("ports", None)
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def victim_metrics_port(engine: Engine, container: str) -> int:
    """The metrics port a replica picked (TEXTCLF_METRICS_PORT=0), from its start-up log line."""
    match = READY_LINE.search(engine.logs(container, tail=200))
    assert match, engine.logs(container)
    return int(match.group(2))


def _populate_models_volume(engine: Engine, volume: str, repository: Path) -> None:
    """What compose's one-shot model-init does on first run: put a bundle into the models volume."""
    engine.run("volume", "create", volume)
    engine.run("run", "--rm", "--network", "none", "--volume", f"{volume}:/models",
               "--volume", f"{repository}:/bundle:ro", BASE_IMAGE, "cp", "-a", "/bundle/.", "/models/")


@pytest.fixture(scope="module")
def stack(engine: Engine, serve_image: str, bundle: TinyBundle,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    textclf_env = env_of(compose_service("textclf"))
    replica_port = int(textclf_env["TEXTCLF_PORT"])
    if not port_free(replica_port):
        pytest.skip(f"compose's replica port 127.0.0.1:{replica_port} is taken on this host")
    replicas = int(compose_service("textclf")["deploy"]["replicas"])
    seconds = build_nginx_image(engine.docker)
    measured(f"local nginx stand-in image {engine.image_size_bytes(NGINX_IMAGE) / 1e6:.0f} MB, built in {seconds:.1f} s")
    grpc_listen, status_listen = free_port(), free_port()
    work = tmp_path_factory.mktemp("compose")
    override = work / "docker-compose.test.yml"
    override.write_text(yaml.safe_dump(compose_override(grpc_listen, status_listen, replica_port)),
                        encoding="utf-8")
    project = f"textclftest{os.getpid()}"
    merged = Stack(engine, project, [COMPOSE_FILE, override], "", "", work).compose("config").stdout
    stack = Stack(engine, project, [_resolved_for_host_network(merged, work / "docker-compose.resolved.yml")],
                  f"127.0.0.1:{grpc_listen}", f"http://127.0.0.1:{status_listen}/healthz", work)
    try:
        _populate_models_volume(engine, f"{project}_models", bundle.path.parent.parent)
        stack.since = str(int(time.time()) - 1)
        started = time.monotonic()
        # model-init (the torch training image) is replaced by the populated volume; compose
        # still waits for the replicas' health checks before it starts nginx (depends_on).
        stack.compose("up", "--detach", "--no-build", "--no-deps", *COMPOSE_SERVICES, timeout=240)
        import urllib.request

        wait_for(lambda: urllib.request.urlopen(stack.status_url, timeout=2).read().strip() == b"ok",  # noqa: S310
                 READY_TIMEOUT_S, "nginx /healthz")
        measured(f"compose stack ({replicas} replicas healthy, then nginx) up in {time.monotonic() - started:.1f} s")
        assert len(stack.replicas()) == replicas
        yield stack
    finally:
        try:
            stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "20", timeout=120)
        finally:
            engine.run("volume", "rm", "-f", f"{project}_models", check=False)


def test_compose_stack_survives_sigkill_of_a_replica(stack: Stack) -> None:
    replicas = stack.replicas()
    assert all(stack.engine.health(r) == "healthy" for r in replicas)
    victim = replicas[0]
    client = TextclfClient(stack.nginx_address)
    traffic = client_traffic(client)
    traffic.start()
    try:
        traffic.wait_more(200, "through nginx before the kill")
        # the victim must be taking calls right now (the kernel spreads nginx's connections over
        # the replicas' sockets): the kill removes a replica that serves, and cuts the calls that
        # happen to be inside it (0-4 per run here; each call spends ~1 ms of its time there)
        victim_metrics = victim_metrics_port(stack.engine, victim)
        served = ok_requests(victim_metrics)
        wait_for(lambda: ok_requests(victim_metrics) >= served + 20, 60, "the victim replica to serve calls")
        # a crash, not `docker kill` (which counts as a manual stop): SIGKILL the replica's main
        # process from the host; its PID namespace dies with it, restart: unless-stopped applies
        pid = int(stack.engine.inspect("container", victim)["State"]["Pid"])
        restarts = int(stack.engine.inspect("container", victim)["RestartCount"])
        os.kill(pid, signal.SIGKILL)
        traffic.wait_more(300, "with one replica killed")
        wait_for(lambda: int(stack.engine.inspect("container", victim)["RestartCount"]) > restarts, 60,
                 "Docker to restart the killed replica")
        wait_for(lambda: stack.engine.health(victim) == "healthy", 60, "the restarted replica to be healthy")
        traffic.wait_more(200, "after the restart")
    finally:
        traffic.stop()
        client.close()
    access_log = stack.work / "nginx-access.log"
    access_log.write_text("\n".join(line.split("| ", 1)[-1] for line in stack.nginx_log().splitlines()),
                          encoding="utf-8")
    created = stack.engine.run("events", "--since", stack.since, "--until", str(int(time.time()) + 1),
                               "--filter", "type=network", "--filter", "event=create",
                               "--format", "{{.Actor.Attributes.name}} {{.Actor.Attributes.type}}").stdout.split("\n")
    assert [line for line in created if line.strip()] == [], f"the stack created networks: {created}"
    resent, retried = nginx_failovers(access_log)
    measured(f"compose SIGKILL of 1 of {len(replicas)} replicas under traffic: client outcomes "
             f"{dict(traffic.outcomes)}; nginx re-sent {resent} calls, {retried} attempts failed at nginx "
             f"and were retried by the client")
    assert traffic.outcomes["OK"] == traffic.completed, (
        f"failed client calls: {dict(traffic.outcomes)}; first failures: {traffic.failures[:5]}")
