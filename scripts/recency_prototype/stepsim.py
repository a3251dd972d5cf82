"""The measured recency bonus (`RecencyCalibration`) on top of seqsim.py: ages in a layer's tokens, a table of
residual use rates by age and estimate class (`mode="2d"` is what was built). Same usage as seqsim.py.
"""
import os
from seqsim import TRACES, BOUNDS  # noqa: F401
import math, collections, sys
import seqsim
from seqsim import load, replay
def abucket(a):  # age in steps: 0,1,2,3,[4,8),[8,16),...
    if a < 4: return a
    return min(15, 2 + int(math.log2(a)))
AB = 16
def alo(b): return b if b < 4 else 2**(b-2)
def ahi(b): return b+1 if b < 4 else (2**(b-1) if b < 15 else float('inf'))
def ebucket(e, n):  # est (per step) in log2 classes
    if e <= 0: return 0
    return max(0, min(n-1, math.floor(math.log2(e)) + n))
class SeqStep(seqsim.Seq):
    def __init__(s, mode='add', ebuckets=8, shrink=20.0, stat_hl=8192, every=256, **kw):
        super().__init__(**kw)
        s.mode, s.EB, s.shrink = mode, ebuckets, shrink
        s.step = collections.Counter(); s.tstep = {}; s.istep = {}
        s.kref = collections.Counter(); s.ksteps = collections.Counter()
        nb = AB * (s.EB if mode == '2d' else 1)
        s.U = [0.0]*nb; s.T = [0.0]*nb; s.P = [0.0]*nb; s.tab = [0.0]*nb; s.tabT=[0.0]*nb; s.tabP=[0.0]*nb
        s.every = every; s.sd = 2**(-every/stat_hl); s.n = 0
    def k(s, L): return s.kref[L]/s.ksteps[L] if s.ksteps[L] else 1.0
    def estep(s, key): return min(1.0, s.est(key) * s.k(key[0]))
    def sage(s, key): return s.step[key[0]] - s.tstep[key]
    def cell(s, a, e):
        b = abucket(a)
        return b if s.mode != '2d' else b*s.EB + ebucket(e, s.EB)
    def close(s, key, a, e, use):
        # exposures at ages 1..a (a use at a), or 1..a-1 when still open
        top = a + 1 if use else a
        for b in range(1, AB):
            lo = alo(b)
            if lo >= top: break
            o = min(top, ahi(b)) - lo
            c = b if s.mode != '2d' else b*s.EB + ebucket(e, s.EB)
            s.T[c] += o; s.P[c] += e*o
        if use: s.U[s.cell(a, e)] += 1
    def recompute(s):
        T = s.T[:]; P = s.P[:]
        for key in s.tstep:
            a = s.sage(key); e = s.estep(key)
            for b in range(1, AB):
                lo = alo(b)
                if lo >= a: break
                o = min(a, ahi(b)) - lo
                c = b if s.mode != '2d' else b*s.EB + ebucket(e, s.EB)
                T[c] += o; P[c] += e*o
        s.tab = [(s.U[c] - P[c]) / T[c] if T[c] > 0 else 0 for c in range(len(T))]
        s.tabT = T; s.tabP = P
        s.U = [x*s.sd for x in s.U]; s.T = [x*s.sd for x in s.T]; s.P = [x*s.sd for x in s.P]
    def score(s, key):
        e = s.estep(key)
        if key not in s.tstep: return e
        a = s.step[key[0]] - max(s.tstep[key], s.istep.get(key, -1)); c = s.cell(a, e)
        if s.mode == 'add':
            return e + max(0.0, s.tab[c]) * s.tabT[c]/(s.tabT[c] + s.shrink)
        if s.mode == 'addneg':
            return e + s.tab[c] * s.tabT[c]/(s.tabT[c] + s.shrink)
        if s.mode == '2d':
            return e + s.tab[c] * s.tabT[c]/(s.tabT[c] + s.shrink)
        return e
    def insert(s, key):
        L = key[0]
        s.istep[key] = s.step[L]
        super().insert(key)
    def access(s, key):
        L = key[0]
        if key in s.tstep and s.tstep[key] != s.step[L]:
            s.close(key, s.sage(key), s.estep(key), True)
        s.tstep[key] = s.step[L]; s.istep[key] = s.step[L]
        seqsim.Seq.access(s, key)
        s.n += 1
        if s.n % s.every == 0: s.recompute()
    def seq(s, q, routed, L):
        super().seq(q, routed, L)
        s.step[L] += 1; s.kref[L] += len(routed); s.ksteps[L] += 1
# disable parent's adaptive
if __name__ == '__main__':
    T = {n: load(os.path.join(TRACES, '%s.jsonl' % n)) for n in ['python', 'prose', 'synth']}
    B = [tuple(map(float, l.split())) for l in open(BOUNDS)]
    for name, kw in eval(sys.argv[1]):
        row = [replay(T[n], SeqStep(**kw), C) for n in ['python', 'prose', 'synth'] for C in [8, 12, 16]]
        gaps = [100*(x-b[0])/(b[1]-b[0]) for x, b in zip(row, B)]
        print('%-28s' % name, ' '.join('%4.0f' % g for g in gaps), ' min %3.0f sum %4.0f' % (min(gaps), sum(gaps)), flush=True)
