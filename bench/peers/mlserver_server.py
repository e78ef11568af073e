"""Start MLServer 1.7 on a textclf bundle (run with the .peers/mlserver venv's python).

Writes settings.json and model-settings.json into ``--workdir`` and replaces itself with
``mlserver start`` (so signals reach MLServer directly). Loopback only; access logs off
(``debug: false``, a fair run); inference in the server process (``parallel_workers: 0``).
Adaptive batching: ``max_batch_size`` / ``max_batch_time`` (``--max-batch-size 1`` turns it off).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from launch_args import launcher_parser

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = launcher_parser(__doc__)
    p.add_argument("--max-batch-size", type=int, default=64, help="1 = adaptive batching off")
    p.add_argument("--max-batch-time-ms", type=float, default=5.0)
    args = p.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    settings = {"host": "127.0.0.1", "http_port": args.http_port, "grpc_port": args.grpc_port,
                "metrics_port": args.metrics_port, "parallel_workers": 0, "debug": False,
                "load_models_at_startup": True}
    model_settings = {
        "name": args.model,
        "implementation": "mlserver_runtime.TextclfRuntime",
        "parameters": {"uri": str(args.bundle.resolve()), "version": args.bundle.name},
        "inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [-1, 1], "parameters": {"content_type": "str"}}],
        "outputs": [{"name": "PROBABILITIES", "datatype": "FP32", "shape": [-1, -1]},
                    {"name": "LABEL", "datatype": "BYTES", "shape": [-1, 1]}],
        "max_batch_size": args.max_batch_size,
        "max_batch_time": args.max_batch_time_ms / 1000.0 if args.max_batch_size > 1 else 0,
    }
    (args.workdir / "settings.json").write_text(json.dumps(settings, indent=2))
    (args.workdir / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    mlserver = shutil.which("mlserver", path=str(Path(sys.executable).parent))
    if mlserver is None:
        raise SystemExit("mlserver is not installed next to this python (run bench/peers/venvs.py)")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    os.chdir(args.workdir)  # MLServer writes .metrics / .envs folders into its working directory
    os.execv(mlserver, [mlserver, "start", str(args.workdir)])


if __name__ == "__main__":
    main()
