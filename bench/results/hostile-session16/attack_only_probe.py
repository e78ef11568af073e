"""Attack-only probe: a fresh service, the hostile attack for N s, the slowest hostile answer."""
import asyncio, os, sys, tempfile, time, json
from pathlib import Path
ROOT = Path(__file__).resolve().parents[3]; sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "bench"))
import serving_support as support
import bench_hostile as bh

def main():
    extra = sys.argv[2:]
    seconds = float(sys.argv[1])
    bundle = support.find_bundle(ROOT / "models", "news")
    log_dir = Path(tempfile.mkdtemp())
    server = support.start_server(bundle.repository, batching=True, threads=1, extra_args=extra,
                                  env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}, log_dir=log_dir)
    try:
        r = asyncio.run(bh._hostile_attack(server.address, "news", 2, 4, seconds))
    finally:
        server.stop()
    worst = sorted(((k["slowest"]["ms"], k["slowest"]["sent_at_s"], k["slowest"]["code"], kind) for kind, k in r["kinds"].items() if k["slowest"]), reverse=True)[:4]
    over = sum(k["requests"] - k["within_1s"] for k in r["kinds"].values())
    print(json.dumps({"extra": extra, "over_1s": over, "worst": [(round(a), round(b, 2), c, d) for a, b, c, d in worst]}))

main()
