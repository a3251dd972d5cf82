"""Prototype of `SequenceAwarePolicy` in Python (session 23, issue 26 item 4), replaying a routing trace in the
shared pool as `bench trace`'s `sequence_global` does (it matches it to the fourth decimal). Standard library only.

    TRACES=DIR BOUNDS=FILE python3 seqsim.py '[("fixed", {})]'

DIR holds python.jsonl, prose.jsonl and synth.jsonl (`scripts/demo_trace_table.sh`, `scripts/synthetic_trace.py`,
docs/expert-cache.md); FILE has one line per trace and size (8 / 12 / 16 per layer, in that order): the
`lru_global` and `belady_global` hit rates from `bench trace`, so that the output is the share of the gap closed
(default: bounds.txt here, for the session-18 traces, whose third column is the fixed policy's `sequence_global`).
"""
import os
TRACES = os.environ.get('TRACES', 'traces')
BOUNDS = os.environ.get('BOUNDS', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'bounds.txt'))
import json, sys, math, collections
def load(path): return [json.loads(l) for l in open(path)]
NB = 14
def bucket(a):  # age in refs -> log2 bucket: 0:[0,1),1:[1,2),2:[2,4),...
    return 0 if a < 1 else min(NB-1, int(math.log2(a)) + 1)
LO = [0] + [2**(b-1) for b in range(1, NB)]
HI = [1] + [2**b for b in range(1, NB-1)] + [float('inf')]
class Seq:
    def __init__(s, prior=128, rw=0.025, rhl=64, lhl=4096, adaptive=False, keep_rec=False, decay_every=256, stat_hl=8192):
        s.prior, s.rw, s.rhl, s.lhl, s.adaptive, s.keep_rec = prior, rw, rhl, lhl, adaptive, keep_rec
        s.clock = collections.Counter(); s.total = collections.Counter()
        s.count = {}; s.countedAt = {}; s.touched = {}
        s.local = collections.Counter(); s.localTotal = collections.Counter(); s.bySeq = collections.defaultdict(collections.Counter)
        s.uses = [0.0]*NB; s.time = [0.0]*NB; s.pred = [0.0]*NB; s.bonus = [0.0]*NB
        s.refs = 0; s.decay_every = decay_every; s.stat_decay = 2**(-decay_every/stat_hl)
    def d(s, r): return 2**(-r/s.lhl)
    def est(s, k):
        L = k[0]; c = s.count.get(k, 0.0) * s.d(s.clock[L] - s.countedAt.get(k, 0))
        share = c / s.total[L] if s.total[L] > 0 else 0
        return (s.local[k] + s.prior*share) / (s.localTotal[L] + s.prior)
    def age(s, k): return s.clock[k[0]] - s.touched.get(k, s.clock[k[0]])
    def score(s, k):
        e = s.est(k); a = s.age(k)
        if s.adaptive:
            v = e + s.bonus[bucket(a)]
            if s.keep_rec: v += s.rw * 2**(-a/s.rhl)
            return v
        return e + s.rw * 2**(-a/s.rhl)
    def close(s, k, a, e, use):
        # add the interval [0,a) of k's life to the time buckets
        for b in range(NB):
            if LO[b] >= a: break
            o = min(a, HI[b]) - LO[b]
            s.time[b] += o; s.pred[b] += e*o
        if use: s.uses[bucket(a)] += 1
    def recompute(s):
        t = s.time[:]; p = s.pred[:]
        for k in s.touched:
            a = s.age(k); e = s.est(k)
            for b in range(NB):
                if LO[b] >= a: break
                o = min(a, HI[b]) - LO[b]; t[b] += o; p[b] += e*o
        s.bonus = [max(0.0, (s.uses[b] - p[b]) / t[b]) if t[b] > 50 else 0.0 for b in range(NB)]
        s.uses = [x*s.stat_decay for x in s.uses]; s.time = [x*s.stat_decay for x in s.time]; s.pred = [x*s.stat_decay for x in s.pred]
    def insert(s, k):
        if s.adaptive and k in s.touched: s.close(k, s.age(k), s.est(k), False)
        s.touched[k] = s.clock[k[0]]
    def access(s, k):
        L = k[0]
        if s.adaptive and k in s.touched: s.close(k, s.age(k), s.est(k), True)
        s.clock[L] += 1; s.total[L] = 1 + s.total[L]*s.d(1)
        s.count[k] = 1 + s.count.get(k, 0.0)*s.d(s.clock[L] - s.countedAt.get(k, 0)); s.countedAt[k] = s.clock[L]; s.touched[k] = s.clock[L]
        s.refs += 1
        if s.adaptive and s.refs % s.decay_every == 0: s.recompute()
    def seq(s, q, routed, L):
        for e in routed:
            k = (L, e); s.bySeq[q][k] += 1; s.local[k] += 1
        s.localTotal[L] += len(routed)
    def ended(s, q):
        for k, c in s.bySeq.pop(q, {}).items():
            s.local[k] -= c; s.localTotal[k[0]] -= c
def replay(trace, pol, C, glob=True, floor=4):
    layers = len(trace[0]['layers']); rec = [l for l in range(layers) if any(t['layers'][l] for t in trace)]
    last = {t['seq']: i for i, t in enumerate(trace)}
    res = set(); slots = collections.Counter(); hits = req = 0; cap = C*len(rec)
    for ti, t in enumerate(trace):
        for L in rec:
            group = list(dict.fromkeys(t['layers'][L])); pinned = set((L, e) for e in group)
            misses = []
            for e in group:
                k = (L, e); req += 1
                if k in res: hits += 1; pol.access(k)
                else: misses.append(k)
            for k in misses:
                full = (len(res) >= cap) if glob else (slots[L] >= C)
                if full:
                    cands = [x for x in res if x not in pinned and (x[0] == L or slots[x[0]] > floor)] if glob else [x for x in res if x[0] == L and x not in pinned]
                    v = min(cands, key=lambda x: (pol.score(x), x)); res.remove(v); slots[v[0]] -= 1
                res.add(k); slots[L] += 1; pol.insert(k); pol.access(k)
            pol.seq(t['seq'], group, L)
        if last[t['seq']] == ti: pol.ended(t['seq'])
    return hits/req
def lru_belady(trace, C):
    pass
if __name__ == '__main__':
    import itertools
    T = {n: load(os.path.join(TRACES, '%s.jsonl' % n)) for n in ['python', 'prose', 'synth']}
    configs = eval(sys.argv[1])
    for name, kw in configs:
        row = []
        for n in ['python', 'prose', 'synth']:
            for C in [8, 12, 16]:
                row.append(replay(T[n], Seq(**kw), C))
        B = [tuple(map(float, l.split())) for l in open(BOUNDS)]
        gaps = [100*(x-b[0])/(b[1]-b[0]) for x, b in zip(row, B)]
        print('%-28s' % name, ' '.join('%4.0f' % g for g in gaps), ' min %3.0f sum %4.0f' % (min(gaps), sum(gaps)), flush=True)
