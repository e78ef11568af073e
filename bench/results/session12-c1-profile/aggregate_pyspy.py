import collections,sys
fn=sys.argv[1]; want=sys.argv[2] if len(sys.argv)>2 else "MainThread"
incl=collections.Counter(); selfc=collections.Counter(); N=0
for line in open(fn):
    stack, n = line.rsplit(" ",1); n=int(n)
    frames = stack.split(";")
    if want not in frames[0]: continue
    N+=n
    seen=set()
    for f in frames[1:]:
        key=f.split(" (")[0]+" ("+f.split("/")[-1] if "/" in f else f
        if key not in seen: incl[key]+=n; seen.add(key)
    selfc[frames[-1].split("/")[-1] if "/" in frames[-1] else frames[-1]]+=n
print("total", N)
print("--- inclusive")
for k,v in incl.most_common(60): print(f"{100*v/N:5.1f}% {k[:150]}")
print("--- self")
for k,v in selfc.most_common(30): print(f"{100*v/N:5.1f}% {k[:150]}")
