"""One-off probe of session 13 (docs/benchmarks.md "Session 13"), run from the repository root:
    .venv/bin/python bench/results/session13-probes/served_ort_per_text.py 300 kserve 3000 <concurrency>
"""
import sys
from pathlib import Path
ROOT = Path(__file__).resolve().parents[3]
import asyncio, sys, time, os, tempfile, ast
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / 'bench'))
from pathlib import Path
import serving_support as support
import bench_request_path as brp
tokens = int(sys.argv[1]); api = sys.argv[2]; n = int(sys.argv[3]); conc=int(sys.argv[4]); extra = sys.argv[5:]
bundle = support.find_bundle(ROOT / 'models', 'news')
from bundle.tokenization import TextEncoder
enc = TextEncoder.from_file(bundle.path / "tokenizer.json", int(bundle.card.max_len))
texts = support.make_texts(enc, support.bbc_corpus_texts(), tokens, 64, seed=1)
stat = tempfile.mktemp()
env = dict(os.environ, RUNPATCH=stat, PYTHONPATH=str(Path(__file__).resolve().parent / 'sitecustomize') + ':' + os.environ.get('PYTHONPATH',''))
server = support.start_server(bundle.repository, batching=True, threads=1, extra_args=extra, env=env, log_dir=Path(tempfile.mkdtemp()))
def read():
    return ast.literal_eval(open(stat).read())
async def main():
    import grpc
    async with grpc.aio.insecure_channel(server.address) as ch:
        call = brp.make_call(ch, api, 'news', texts)
        for i in range(300): await call(i)
        await asyncio.sleep(0.7); s0 = read()
        c0=brp.process_cpu_seconds(server.pid); t0=time.perf_counter()
        it=iter(range(n))
        async def user():
            for i in it: await call(i)
        await asyncio.gather(*(user() for _ in range(conc)))
        wall=time.perf_counter()-t0; c1=brp.process_cpu_seconds(server.pid)
        await asyncio.sleep(0.7); s1 = read()
        d = {k: s1[k]-s0[k] for k in s0}
        import urllib.request
        m=[l for l in urllib.request.urlopen(server.metrics_url).read().decode().splitlines() if l.startswith('textclf_memory_trimmed')]
        rss=int(open(f'/proc/{server.pid}/statm').read().split()[1])*4096/2**20
        print('  ', m, f'rss {rss:.0f} MB')
        print(f'c={conc} rps {n/wall:.0f} cpu/call {1e3*(c1-c0)/n:.3f} ms | batches {d["n"]} texts/batch {d["texts"]/max(d["n"],1):.1f} | per text: run wall {1e3*d["wall"]/d["texts"]:.3f} run thread-cpu {1e3*d["cpu"]/d["texts"]:.3f} ort wall {1e3*d["ort_wall"]/d["texts"]:.3f} ms')
try: asyncio.run(main())
finally: server.stop()
