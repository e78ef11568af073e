"""How long the event loop polls (textclf_event_loop_spin_seconds_total) over 200 sequential
single-text calls from our sync client, on a fresh server with a tiny bundle, 12 times.

    .venv/bin/python bench/results/session15-probes/spin_seconds_sync_client.py
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import tests.conftest  # noqa: E402,F401 - gRPC's I/O settings as the server and the tests use them
from client.client import TextclfClient  # noqa: E402
from tests.support.metrics import metric, scrape  # noqa: E402
from tests.support.onnx_bundle import make_onnx_bundle  # noqa: E402
from tests.support.service_process import ServiceProcess  # noqa: E402

CALLS = 200

with tempfile.TemporaryDirectory() as tmp:
    make_onnx_bundle(Path(tmp) / "models", name="news", version=1)
    for trial in range(12):
        server = ServiceProcess(Path(tmp) / "models")
        try:
            with TextclfClient(server.address, retry=False) as client:
                for _ in range(CALLS):
                    client.classify(["the market rallied"], "news")
            polled = metric(scrape(server.metrics_url), "textclf_event_loop_spin_seconds_total")
            print(f"server {trial}: polled {polled * 1e3:.1f} ms over {CALLS} calls")
        finally:
            server.kill()
