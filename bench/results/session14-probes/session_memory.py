"""One-off (session 14): what the batch session adds in memory. In process, default model, the
service's warm-up shapes: RSS added by (a) one session warmed with every shape (what a runtime held
before RunAsync), then, in a fresh process, (b) the lone-request session warmed with batch 1 only and
(c) the batch session (2 intra-op threads, RunAsync) warmed with every shape.
Run from the repository root: .venv/bin/python bench/results/session14-probes/session_memory.py"""
import subprocess
import sys
import threading

import numpy as np
import onnxruntime as ort

MODEL = "models/news/1/model.onnx"
MAX_LEN, FULL = 384, 64


def rss_mb() -> float:
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024


def session(threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(MODEL, sess_options=options, providers=["CPUExecutionProvider"])


def feed(rows: int, length: int) -> dict:
    return {"input_ids": np.ones((rows, length), dtype=np.int64), "lengths": np.full((rows,), length, dtype=np.int64)}


SMALL = [feed(1, 1), feed(1, MAX_LEN)]
EVERY = SMALL + [feed(FULL, 1), feed(FULL, MAX_LEN)]


def run_async(s: ort.InferenceSession, f: dict) -> None:
    done = threading.Event()
    s.run_async(["logits"], f, lambda *_: done.set(), None)
    done.wait(60)


def main(part: str) -> None:
    base = rss_mb()
    if part == "before":
        s = session(1)
        for f in EVERY:
            s.run(["logits"], f)
        print(f"one session, every shape: +{rss_mb() - base:.1f} MB")
        return
    lone = session(1)
    for f in SMALL:
        lone.run(["logits"], f)
    after_lone = rss_mb()
    batch = session(2)
    for f in EVERY:
        run_async(batch, f)
    print(f"lone-request session, batch 1 only: +{after_lone - base:.1f} MB; "
          f"batch session, every shape: +{rss_mb() - after_lone:.1f} MB; both: +{rss_mb() - base:.1f} MB")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        for part in ("before", "now"):
            subprocess.run([sys.executable, __file__, part], check=True)
