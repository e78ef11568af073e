"""One-off probe of session 13 (docs/benchmarks.md "Session 13"), run from the repository root:
    .venv/bin/python bench/results/session13-probes/ort_lone_call_threads.py <intra-op threads>
"""
import sys
from pathlib import Path
ROOT = Path(__file__).resolve().parents[3]
import time, numpy as np, onnxruntime as ort, sys
sys.path.insert(0,'.')
so=ort.SessionOptions(); so.intra_op_num_threads=int(sys.argv[1]); so.inter_op_num_threads=1
s=ort.InferenceSession(str(ROOT / 'models/news/1/model.onnx'), so, providers=['CPUExecutionProvider'])
for L in (40,300):
    ids=np.random.randint(5,16000,size=(1,L)).astype(np.int64); ln=np.array([L],dtype=np.int64)
    for _ in range(50): s.run(None,{'input_ids':ids,'lengths':ln})
    ts=[]
    for _ in range(500):
        t=time.perf_counter(); s.run(None,{'input_ids':ids,'lengths':ln}); ts.append(time.perf_counter()-t)
    print(L, 'p50 ms', round(np.median(ts)*1e3,3), 'min', round(min(ts)*1e3,3))
