import os, atexit, time, threading
if os.environ.get("RUNPATCH"):
    import service.runtime as R
    orig_session_run = None
    stats = {"n": 0, "wall": 0.0, "cpu": 0.0, "ort_wall": 0.0, "texts": 0}
    orig = R.ModelRuntime.run
    def run(self, rows):
        w0 = time.perf_counter(); c0 = time.thread_time()
        sess = self.session
        if not hasattr(sess, "_patched"):
            inner = sess.run
            def srun(*a, **k):
                t = time.perf_counter(); r = inner(*a, **k); stats["ort_wall"] += time.perf_counter() - t; return r
            sess.run = srun; sess._patched = True
        out = orig(self, rows)
        stats["n"] += 1; stats["texts"] += len(rows)
        stats["wall"] += time.perf_counter() - w0; stats["cpu"] += time.thread_time() - c0
        return out
    R.ModelRuntime.run = run
    import signal
    def dump(*_):
        with open(os.environ["RUNPATCH"], "w") as f: f.write(repr(stats))
    def loop():
        while True:
            time.sleep(0.5); dump()
    threading.Thread(target=loop, daemon=True).start()
