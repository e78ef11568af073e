"""The service and the client never import torch, training/ or export/."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_service_and_client_import_without_torch() -> None:
    code = (
        "import sys\n"
        "import service.__main__, service.server, service.healthcheck, client.cli, client.client\n"
        "from service.server import register_servicers\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.split('.')[0] in ('torch', 'training', 'export'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
