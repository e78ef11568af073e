"""The container engine for the image tests (tests/deploy/test_deploy_containers.py).

* ``require_engine``: a Docker engine that answers, with the local Debian base image; set up
  once per session by scripts/install_container_engine.sh (installs docker.io / debootstrap /
  docker-compose, starts dockerd, builds the base). Skips the caller with one line saying why
  when that is impossible (no root, no apt, dockerd cannot start here).
* ``Engine``: the ``docker`` command line, the image builds (cached by the engine's layer cache)
  and the few container queries the tests make.

Every test container runs with ``--network host`` and binds 127.0.0.1 only: no bridge
networks exist (dockerd runs with ``--bridge=none``) and no address outside 127.0.0.0/8 is used.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.deploy_env import REPO

logger = logging.getLogger(__name__)

ENGINE_SCRIPT = REPO / "scripts" / "install_container_engine.sh"
BASE_IMAGE = os.environ.get("TEXTCLF_TEST_BASE_IMAGE", "textclf-test/debian-python:bookworm")
SERVE_IMAGE = "textclf-test/serve:latest"
NGINX_IMAGE = "textclf-test/nginx:latest"
NGINX_CONTEXT = Path(__file__).resolve().parent / "images" / "nginx"
# The script may debootstrap the base image (about a minute, more on a busy machine).
SETUP_TIMEOUT_S = 900
BUILD_TIMEOUT_S = 900


def _docker_cli() -> str | None:
    """Debian's client next to Debian's daemon; another ``docker`` earlier on PATH may be newer."""
    return "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else shutil.which("docker")


@dataclass(frozen=True)
class Engine:
    docker: str

    def run(self, *args: str, timeout: float = 120, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([self.docker, *args], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args[:3])}... exit {done.returncode}:\n"
                                 f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def build(self, tag: str, context: Path, *, dockerfile: Path | None = None, target: str | None = None,
              build_args: dict[str, str] | None = None) -> float:
        """``docker build`` with host networking (pip / apt reach their registries); seconds taken.

        The classic builder: this engine has no BuildKit frontend image to pull (the Dockerfile's
        ``# syntax=`` line is then a comment), and its layer cache makes a rebuild of unchanged
        sources a few seconds."""
        argv = ["build", "--network", "host", "-t", tag]
        if dockerfile is not None:
            argv += ["-f", str(dockerfile)]
        if target is not None:
            argv += ["--target", target]
        for key, value in (build_args or {}).items():
            argv += ["--build-arg", f"{key}={value}"]
        started = time.monotonic()
        done = subprocess.run(["nice", "-n", "5", self.docker, *argv, str(context)], capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT_S, env={**os.environ, "DOCKER_BUILDKIT": "0"})
        if done.returncode != 0:
            pytest.fail(f"docker build {tag} failed (exit {done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}")
        return time.monotonic() - started

    def inspect(self, kind: str, name: str) -> dict[str, Any]:
        return json.loads(self.run(kind, "inspect", name).stdout)[0]

    def image_size_bytes(self, image: str) -> int:
        return int(self.inspect("image", image)["Size"])

    def health(self, container: str) -> str:
        state = self.inspect("container", container)["State"]
        return str(state.get("Health", {}).get("Status", "none"))

    def remove(self, container: str) -> None:
        self.run("rm", "-f", "-v", container, check=False)

    def logs(self, container: str, tail: int = 60) -> str:
        done = self.run("logs", "--tail", str(tail), container, check=False)
        return done.stdout + done.stderr


def _answers(docker: str | None) -> bool:
    if docker is None:
        return False
    try:
        return subprocess.run([docker, "image", "inspect", BASE_IMAGE], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@functools.cache
def _set_up() -> tuple[int, str]:
    """Run the engine script at most once per session: (exit status, its last line)."""
    logger.info("setting up the container engine with %s", ENGINE_SCRIPT)
    try:
        done = subprocess.run(["bash", str(ENGINE_SCRIPT)], capture_output=True, text=True, timeout=SETUP_TIMEOUT_S,
                              env={**os.environ, "TEXTCLF_TEST_BASE_IMAGE": BASE_IMAGE})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, f"{ENGINE_SCRIPT.name} did not finish: {exc}"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode, lines[-1] if lines else ""


def require_engine() -> Engine:
    """A Docker engine with the base image, or skip the caller with one line saying why."""
    if not _answers(_docker_cli()):
        status, line = _set_up()
        if not _answers(_docker_cli()):
            pytest.skip(f"no container engine: {line or f'{ENGINE_SCRIPT.name} exit {status}'}")
    docker = _docker_cli()
    assert docker is not None
    return Engine(docker)


@functools.cache
def build_serve_image(docker: str) -> float:
    """deploy/Dockerfile's ``serve`` target on the local base; seconds the build took."""
    return Engine(docker).build(SERVE_IMAGE, REPO, dockerfile=REPO / "deploy" / "Dockerfile", target="serve",
                                build_args={"BASE_IMAGE": BASE_IMAGE})


@functools.cache
def build_nginx_image(docker: str) -> float:
    return Engine(docker).build(NGINX_IMAGE, NGINX_CONTEXT, build_args={"BASE_IMAGE": BASE_IMAGE})
