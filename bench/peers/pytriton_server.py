"""PyTriton 0.7 on a textclf bundle (run with the .peers/pytriton venv's python).

A ``@batch`` Python callable bound behind Triton's C++ gRPC frontend and its dynamic batcher
(``max_batch_size`` 64, ``max_queue_delay`` 100 us, one instance), as PyTriton's docs write one.
TEXT is ``BYTES [N, 1]`` (PyTriton's batched tensors carry the batch dimension).

Two facts of this setup (docs/benchmarks.md, peers):
- Triton's Python-backend stub links ``libpython3.11.so.1.0`` and can pick up the system copy
  while this venv runs another 3.11 patch release (model load then fails with
  ``'_thread.RLock' object has no attribute '_recursion_count'``): this interpreter's LIBDIR goes
  first on ``LD_LIBRARY_PATH``.
- PyTriton cleans up ``tritonserver`` and its stubs only on SIGINT (KeyboardInterrupt): SIGTERM
  is mapped to it here, so every launcher can stop it the same way.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import sysconfig
from pathlib import Path

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_model import BundleModel, decode_texts  # noqa: E402
from launch_args import launcher_parser  # noqa: E402

LOOPBACK = "127.0.0.1"


def main() -> None:
    p = launcher_parser(__doc__)
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--max-queue-delay-us", type=int, default=100)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    libdir = sysconfig.get_config_var("LIBDIR")
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")]))
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    model = BundleModel(args.bundle)

    @batch
    def infer(TEXT: np.ndarray) -> dict[str, np.ndarray]:  # noqa: N803 - the tensor's name
        probabilities, labels = model.classify(decode_texts(TEXT))
        return {"PROBABILITIES": probabilities, "LABEL": labels.reshape(-1, 1)}

    config = TritonConfig(grpc_address=LOOPBACK, grpc_port=args.grpc_port, http_address=LOOPBACK,
                          http_port=args.http_port, metrics_address=LOOPBACK, metrics_port=args.metrics_port,
                          log_verbose=0)
    with Triton(config=config, workspace=str(args.workdir)) as triton:
        triton.bind(
            model_name=args.model, infer_func=infer,
            inputs=[Tensor(name="TEXT", dtype=bytes, shape=(1,))],
            outputs=[Tensor(name="PROBABILITIES", dtype=np.float32, shape=(-1,)),
                     Tensor(name="LABEL", dtype=bytes, shape=(1,))],
            config=ModelConfig(max_batch_size=args.max_batch_size,
                               batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us)),
            strict=True)
        try:
            triton.serve()
        except KeyboardInterrupt:
            pass  # leaving the `with` stops tritonserver and the stubs


if __name__ == "__main__":
    main()
