"""One-off (session 14): onnxruntime run with 1 and 2 intra-op threads against run_async on a 2-thread
session, waited for with an Event; default model, in process. Prints time per batch and cores used."""
import onnxruntime as ort, numpy as np, threading, time, resource, statistics as st
def sess(n):
    o=ort.SessionOptions(); o.intra_op_num_threads=n; o.inter_op_num_threads=1
    o.add_session_config_entry("session.intra_op.allow_spinning","0")
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession("models/news/1/model.onnx", sess_options=o, providers=["CPUExecutionProvider"])
s1=sess(1); s2=sess(2)
feed=lambda b,t: {"input_ids":np.ones((b,t),dtype=np.int64),"lengths":np.full((b,),t,dtype=np.int64)}
def sync(s,f): return s.run(["logits"],f)[0]
def asyncwait(s,f):
    ev=threading.Event(); box=[]
    s.run_async(["logits"],f,lambda r,u,e:(box.append(r[0]),ev.set()),None); ev.wait(); return box[0]
def measure(fn,s,f,n,gap):
    ts=[]; c0=time.process_time()
    for _ in range(n):
        t=time.perf_counter(); fn(s,f); ts.append(time.perf_counter()-t)
        if gap: 
            e=time.perf_counter()+gap
            while time.perf_counter()<e: pass
    cpu=time.process_time()-c0
    return st.median(ts)*1000, cpu
for b,t in ((1,40),(1,300),(16,300),(20,40)):
    f=feed(b,t)
    for name,fn,s in (("sync1",sync,s1),("sync2",sync,s2),("async2",asyncwait,s2)):
        fn(s,f); n=300 if t==40 else 100
        med,cpu=measure(fn,s,f,n,0)
        medg,_=measure(fn,s,f,n,0.0005)
        # cpu per call vs wall: with gap=0
        print(f"b{b} t{t} {name:7s} median {med:.3f} ms  (gap .5ms: {medg:.3f})  cpu/wall {cpu/(n*med/1000):.2f}")
np.testing.assert_allclose(sync(s1,feed(16,300)), asyncwait(s2,feed(16,300)), rtol=0, atol=0)
print("identical")
