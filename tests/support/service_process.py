"""``python -m service`` as a real child process for tests: its log lines collected as they come,
awaitable with deadlines (no sleeps), and the ports it bound read from its start-up line."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
READY_LINE = re.compile(r"serving gRPC on [^:]+:(\d+); metrics http://[^:]+:(\d+)/metrics")
# logged by ``python -m service`` after the drain: {api: {code: n}} as JSON
FINAL_COUNTS = re.compile(r"final request counts: (\{.*\})")


class ServiceProcess:
    """``python -m service`` on 127.0.0.1 with stdout and stderr collected line by line.

    ``extra`` flags come last, so they override the defaults here (e.g. ``--log-level DEBUG``);
    ``env`` entries are added to (``None`` values removed from) this process's environment.
    """

    def __init__(self, repo: Path, *extra: str, port: int = 0, metrics_port: int = 0,
                 env: dict[str, str | None] | None = None) -> None:
        command = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port), "--metrics-host",
                   "127.0.0.1", "--metrics-port", str(metrics_port), "--model-repository", str(repo),
                   "--providers", "cpu", "--intra-op-threads", "1", "--log-level", "INFO", *extra]
        environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for key, value in (env or {}).items():
            if value is None:
                environment.pop(key, None)
            else:
                environment[key] = value
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, env=environment)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        match = self.wait_line(READY_LINE, timeout=60)
        self.port, self.metrics_port = int(match.group(1)), int(match.group(2))

    def _read(self) -> None:
        for line in self.process.stdout:  # type: ignore[union-attr]
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self.lines.append("")  # EOF marker
            self._changed.notify_all()

    def wait_line(self, pattern: re.Pattern, timeout: float = 30.0) -> re.Match:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    match = pattern.search(line)
                    if match:
                        return match
                if self.lines and self.lines[-1] == "":
                    raise AssertionError(f"server exited ({self.process.poll()}) without {pattern.pattern!r}:\n"
                                         + "".join(self.lines[-30:]))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no line matching {pattern.pattern!r}:\n" + "".join(self.lines[-30:]))
                self._changed.wait(remaining)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def log(self) -> str:
        """Everything the process wrote so far (all of it once it has exited and ``kill``/``wait`` ran)."""
        with self._changed:
            return "".join(self.lines)

    def wait(self, timeout: float) -> int:
        """Wait for the exit code, then for the log reader to reach end of output."""
        code = self.process.wait(timeout)
        self._reader.join(10)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.wait(10)
