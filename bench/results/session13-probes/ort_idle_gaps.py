"""One-off probe of session 13 (docs/benchmarks.md "Session 13"), run from the repository root:
    .venv/bin/python bench/results/session13-probes/ort_idle_gaps.py 
"""
import sys
from pathlib import Path
ROOT = Path(__file__).resolve().parents[3]
import sys, time, numpy as np
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / 'bench'))
from pathlib import Path
import serving_support as support
from bundle.tokenization import TextEncoder
bundle = support.find_bundle(ROOT / 'models', 'news')
enc = TextEncoder.from_file(bundle.path / "tokenizer.json", int(bundle.card.max_len))
import onnxruntime as ort
so=ort.SessionOptions(); so.intra_op_num_threads=1; so.inter_op_num_threads=1
s=ort.InferenceSession(str(bundle.path/'model.onnx'), so, providers=['CPUExecutionProvider'])
texts = support.make_texts(enc, support.bbc_corpus_texts(), 300, 64, seed=1)
rows=[e.ids for e in enc.encode(texts)]
junk = np.random.rand(1<<20)  # 8 MB to evict caches
for mode in ('hot','sleep1ms','evict','sleep+evict','spin1ms'):
    ts=[]
    for i in range(400):
        r=rows[i%64]
        if mode in ('sleep1ms','sleep+evict'): time.sleep(0.001)
        if mode in ('evict','sleep+evict'): junk.sum()
        if mode=='spin1ms':
            t=time.perf_counter()
            while time.perf_counter()-t<0.001: pass
        t0=time.perf_counter(); s.run(None,{'input_ids':r[None,:],'lengths':np.array([len(r)],dtype=np.int64)}); ts.append(time.perf_counter()-t0)
    print(mode, f'p50 {np.median(ts)*1e3:.3f} ms  mean {np.mean(ts)*1e3:.3f}')
