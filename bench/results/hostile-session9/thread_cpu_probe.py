import multiprocessing, os, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, "bench"); sys.path.insert(0, ".")
import serving_support as support
import bench_hostile as bh

def threads(pid):
    out = {}
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (t / "stat").read_text(); name = (t / "comm").read_text().strip()
        except OSError:
            continue
        f = stat[stat.rindex(")") + 2:].split()
        out[t.name] = (name, (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK"), int(f[11]) / os.sysconf("SC_CLK_TCK"))
    return out

if __name__ == "__main__":
    kind = sys.argv[1]
    if kind.startswith("textclf"):
        extra = sys.argv[2:]
        server = support.start_server(Path("models"), batching=True, threads=1, extra_args=extra,
                                      env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}, log_dir=Path(tempfile.mkdtemp()))
        prefix, streams = "", 4
    else:
        server = support.start_floor_server(kind, Path(tempfile.mkdtemp()))
        prefix, streams = "textclf/", 0
    try:
        ctx = multiprocessing.get_context("spawn"); out = ctx.Queue()
        p = ctx.Process(target=bh._attack_process, args=(server.address, "news", 2, streams, 14.0, bh.FULL_MESSAGE_BYTES, prefix, out))
        p.start(); time.sleep(3)
        a = threads(server.pid); t0 = time.time(); time.sleep(10); b = threads(server.pid); dt = time.time() - t0
        r = out.get(); p.join()
        if server.metrics_url:
            import urllib.request
            text = urllib.request.urlopen(server.metrics_url).read().decode()
            print([l for l in text.splitlines() if l.startswith("textclf_memory_trimmed")])
            print(open(f"/proc/{server.pid}/status").read().split("VmRSS:")[1].split("\n")[0])
        print("requests", sum(v["requests"] for v in r["kinds"].values()), "attacker cores", round(r["attacker_cpu_cores"], 2))
        print({k: (v["requests"], v["codes"]) for k, v in r["kinds"].items()})
        for tid, (name, cpu, ut) in sorted(b.items()):
            c0 = a.get(tid, (name, 0, 0))
            print(f"{tid:>8} {name:20s} cpu {(cpu - c0[1]) / dt:.3f} cores (user {(ut - c0[2]) / dt:.3f})")
    finally:
        server.stop()
