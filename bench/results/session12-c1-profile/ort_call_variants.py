"""One 40-token text through onnxruntime, called several ways (docs/benchmarks.md "Session 12"):
.venv/bin/python bench/results/session12-c1-profile/ort_call_variants.py > ort_call_variants.txt"""
import time

import numpy as np
import onnxruntime as ort


def session(**options):
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for key, value in options.items():
        setattr(so, key, value)
    return ort.InferenceSession("models/news/1/model.onnx", so, providers=["CPUExecutionProvider"])


def median_us(call, n=5000):
    for _ in range(200):
        call()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return np.median(times) * 1e6


ids = np.random.default_rng(0).integers(1, 16000, size=(1, 40)).astype(np.int64)
feed = {"input_ids": ids, "lengths": np.array([40], np.int64)}
s = session()
print("InferenceSession.run", round(median_us(lambda: s.run(None, feed)), 1))
print("_sess.run", round(median_us(lambda: s._sess.run(["logits"], feed, None)), 1))
plain = session(enable_mem_pattern=False)
print("memory pattern off", round(median_us(lambda: plain.run(None, feed)), 1))
no_arena = session(enable_cpu_mem_arena=False)
print("CPU arena off", round(median_us(lambda: no_arena.run(None, feed)), 1))
