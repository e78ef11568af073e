"""One single-text onnxruntime run of the default bundle, hot and after what a server does between
two calls at c=1 (idles, or touches other memory): its wall time and its thread's CPU time.

    .venv/bin/python bench/results/session15-probes/ort_cold_cache.py models/news/1/model.onnx
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort

RUNS = 1500


def main(model: str, tokens: int = 40) -> None:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the service's lone-request session
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(0).integers(1, 16000, size=(1, tokens), dtype=np.int64)
    feed = {"input_ids": ids, "lengths": np.array([tokens], dtype=np.int64)}
    other = np.ones(8_000_000, dtype=np.uint8)  # 8 MB: more than this machine's L2, less than its L3

    def measure(label: str, between: Callable[[], object]) -> None:
        wall, cpu = [], []
        for _ in range(RUNS):
            between()
            start, start_cpu = time.perf_counter(), time.thread_time()
            session.run(["logits"], feed)
            wall.append(time.perf_counter() - start)
            cpu.append(time.thread_time() - start_cpu)
        print(f"{label:34s} wall p50 {np.median(wall) * 1e3:.3f} ms  CPU mean {np.mean(cpu) * 1e3:.3f} ms")

    print(f"{tokens} tokens, {RUNS} runs each, onnxruntime {ort.__version__}")
    measure("back to back (hot)", lambda: None)
    measure("after 0.5 ms asleep", lambda: time.sleep(0.0005))
    measure("after reading 8 MB", other.sum)
    measure("after 0.5 ms asleep + reading 125 KB", lambda: (time.sleep(0.0005), other[::64].sum()))
    measure("back to back (hot), again", lambda: None)


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:]))
