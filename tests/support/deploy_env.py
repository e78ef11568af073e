"""Shared helpers of the deployment tests (tests/deploy/test_deploy_*.py).

* ``require_tools``: find nginx / prometheus / promtool / docker-compose, installing them with
  scripts/install_test_deps.sh (apt-get) once per session when missing; skip with the
  installer's own message only when that is impossible.
* ``compose_config``: docker-compose.yml as docker-compose resolves it (anchors, merges,
  ``${VAR:-default}`` interpolation with defaults only), so every cross-check reads the values
  an operator would get.
* ``render_nginx``: deploy/nginx/nginx.conf rendered the way the nginx image renders it, for
  loopback upstreams;
* ``MODEL``, ``TEXTS``: the model and the texts the traffic through nginx sends;
  ``nginx_failovers``: what nginx's access log says about re-sent and non-OK calls.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
INSTALL_SCRIPT = REPO / "scripts" / "install_test_deps.sh"
MODEL = "news"
TEXTS = ["the market rallied as shares of the bank rose", "the striker scored twice",
         "a new phone with a faster chip", "investors expect the central bank to raise rates"]
# Debian puts nginx in /usr/sbin, which a non-root PATH may lack.
_EXTRA_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def find_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in _EXTRA_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


@functools.cache
def _install_once() -> tuple[int, str]:
    """Run the installer at most once per test session; (exit status, last lines of output)."""
    logger.info("installing deployment test tools with %s", INSTALL_SCRIPT)
    try:
        done = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, f"{INSTALL_SCRIPT.name} did not run: {exc}"
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-5:])
    return done.returncode, tail


def require_tools(*names: str) -> dict[str, str]:
    """Paths of the named tools; installs them when missing, else skips the calling test."""
    paths = {name: find_tool(name) for name in names}
    if any(path is None for path in paths.values()):
        status, output = _install_once()
        paths = {name: find_tool(name) for name in names}
        missing = sorted(name for name, path in paths.items() if path is None)
        if missing:
            pytest.skip(f"{', '.join(missing)} not available and could not be installed "
                        f"(scripts/install_test_deps.sh exit {status}): {output}")
    return {name: str(path) for name, path in paths.items()}


def compose_env() -> dict[str, str]:
    """The environment with every variable the compose file interpolates removed (defaults only)."""
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    return {k: v for k, v in os.environ.items() if k not in used and not k.startswith("COMPOSE_")}


def run_compose(*args: str, compose_file: Path = COMPOSE_FILE, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    tool = require_tools("docker-compose")["docker-compose"]
    return subprocess.run([tool, "-f", str(compose_file), *args], cwd=cwd or compose_file.parent,
                          env=compose_env(), capture_output=True, text=True, timeout=120)


@functools.cache
def compose_config() -> dict[str, Any]:
    """docker-compose.yml resolved by ``docker-compose --profile gpu config`` (all services)."""
    done = run_compose("--profile", "gpu", "config")
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def compose_service(name: str) -> dict[str, Any]:
    return compose_config()["services"][name]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def duration_seconds(value: str | int | float) -> float:
    """Compose durations: '15s', '1m30s', '500ms', or a number of seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"not a compose duration: {value!r}")
    return sum(float(n) * units[u] for n, u in parts)


def ok_requests(metrics_port: int) -> float:
    """Successful requests a server counted, from its own /metrics on 127.0.0.1 (resets on restart)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2.0) as response:  # noqa: S310
        text = response.read().decode("utf-8")
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "textclf_requests":
            total += sum(s.value for s in family.samples
                         if s.name == "textclf_requests_total" and s.labels.get("code") == "OK")
    return total


def nginx_failovers(access_log: Path) -> tuple[int, int]:
    """(calls nginx passed to a second replica, attempts nginx answered with a non-OK status)."""
    failovers = non_ok = 0
    for line in access_log.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if "," in entry["upstream"]:
            failovers += 1
        if entry["status"] != 200 or entry["grpc_status"] not in ("0", ""):
            non_ok += 1
    return failovers, non_ok


def render_nginx(directory: Path, upstreams: list[str], listen: int, status_listen: int) -> Path:
    """deploy/nginx/nginx.conf rendered with compose's nginx environment for loopback replicas."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("deploy_render", REPO / "deploy" / "render.py")
    assert spec and spec.loader
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    env = env_of(compose_service("nginx"))
    server_line = env["TEXTCLF_UPSTREAM_SERVERS"].strip()
    compose_target = f"textclf:{env_of(compose_service('textclf'))['TEXTCLF_PORT']}"
    assert server_line.count("server ") == 1 and compose_target in server_line, server_line
    env.update({
        "NGINX_GRPC_LISTEN": f"127.0.0.1:{listen}",
        "NGINX_STATUS_LISTEN": f"127.0.0.1:{status_listen}",
        # compose's one `server textclf:8001 <params>;` line, once per loopback replica
        "TEXTCLF_UPSTREAM_SERVERS": " ".join(server_line.replace(compose_target, u) for u in upstreams),
    })
    template = (REPO / "deploy" / "nginx" / "nginx.conf").read_text(encoding="utf-8")
    path = directory / "nginx.conf"
    path.write_text(render.render(template, env, env["NGINX_ENVSUBST_FILTER"]), encoding="utf-8")
    return path
