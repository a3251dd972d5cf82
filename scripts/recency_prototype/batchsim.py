"""Batched replays of the demo's traces with and without each sequence's prefill as one step (as the runtime
runs them): does the measured recency bonus lose there, as it did live? `TRACES=DIR python3 batchsim.py`.
"""
import os
from seqsim import TRACES, BOUNDS  # noqa: F401
import json, sys, collections
import seqsim, stepsim
def load(n): return [json.loads(l) for l in open(os.path.join(TRACES, '%s.jsonl' % n))]
def steps_with_prefill(trace, lanes, decode_len=32, prompt_len=16):
    by = collections.OrderedDict()
    for t in trace: by.setdefault(t['seq'], []).append(t)
    seqs = list(by.values())
    steps = []
    chosen = [seqs[i % len(seqs)] for i in range(lanes)]
    # prefill: one step per sequence, its first prompt_len tokens as rows
    for i, s in enumerate(chosen):
        steps.append([(i, tok) for tok in s[:prompt_len]])
    for p in range(decode_len):
        steps.append([(i, s[prompt_len + p]) for i, s in enumerate(chosen) if prompt_len + p < len(s)])
    return steps
def replay(steps, pol, C, floor=4):
    layers = len(steps[0][0][1]['layers'])
    rec = [l for l in range(layers) if any(tok['layers'][l] for st in steps for _, tok in st)]
    res = set(); slots = collections.Counter(); hits = req = 0; cap = C*len(rec)
    for st in steps:
        for L in rec:
            union = list(dict.fromkeys(e for _, tok in st for e in (tok['layers'][L] or [])))
            if not union: continue
            pinned = set((L, e) for e in union); misses = []
            for e in union:
                k = (L, e); req += 1
                if k in res: hits += 1; pol.access(k)
                else: misses.append(k)
            for k in misses:
                if len(res) >= cap:
                    cands = [x for x in res if x not in pinned and (x[0] == L or slots[x[0]] > floor)]
                    v = min(cands, key=lambda x: (pol.score(x), x)); res.remove(v); slots[v[0]] -= 1
                res.add(k); slots[L] += 1; pol.insert(k); pol.access(k)
            for lane, tok in st:
                pol.seq(lane, list(dict.fromkeys(tok['layers'][L] or [])), L)
    return hits/req, req - hits
for n in ['python', 'prose']:
    T = load(n)
    for lanes in [1, 8]:
        for C in [8]:
            for pre in [0, 16]:
                st = steps_with_prefill(T, lanes, decode_len=32 if pre else 48, prompt_len=pre) if pre else [[(i, s)] for i, s in []]
                if not pre:
                    by = collections.OrderedDict()
                    for t in T: by.setdefault(t['seq'], []).append(t)
                    seqs = list(by.values()); ch = [seqs[i % len(seqs)] for i in range(lanes)]
                    st = [[(i, s[16 + p]) for i, s in enumerate(ch)] for p in range(32)]
                # repeat the run 3 times (bench batch --runs 3, same process)
                st3 = st * 3
                fixed = replay(st3, seqsim.Seq(), C)
                meas = replay(st3, stepsim.SeqStep(mode='2d', rw=0.025), C)
                print(n, 'lanes', lanes, 'C', C, 'prefill' if pre else 'decode-only', 'fixed hit %.3f misses %d | measured hit %.3f misses %d' % (fixed[0], fixed[1], meas[0], meas[1]), flush=True)

class StepAges(stepsim.SeqStep):
    """Ages in steps (rows reported together), the chance still per row."""
    def __init__(s, **kw):
        super().__init__(**kw); s.reporting = collections.Counter()
    def access(s, key):
        s.reporting[key[0]] = 0
        super().access(key)
    def seq(s, q, routed, L):
        seqsim.Seq.seq(s, q, routed, L)
        if not s.reporting[L]: s.step[L] += 1
        s.reporting[L] = 1
        s.kref[L] += len(routed); s.ksteps[L] += 1
print('--- ages in steps')
for n in ['python', 'prose']:
    T = load(n)
    by = collections.OrderedDict()
    for t in T: by.setdefault(t['seq'], []).append(t)
    for lanes in [1, 8]:
        for pre in [0, 16]:
            if pre: st = steps_with_prefill(T, lanes, decode_len=32, prompt_len=16)
            else:
                seqs = list(by.values()); ch = [seqs[i % len(seqs)] for i in range(lanes)]
                st = [[(i, s[16 + p]) for i, s in enumerate(ch)] for p in range(32)]
            st3 = st * 3
            fixed = replay(st3, seqsim.Seq(), 8)
            meas = replay(st3, StepAges(mode='2d', rw=0.025), 8)
            print(n, 'lanes', lanes, 'prefill' if pre else 'decode-only', 'fixed hit %.3f | step-ages hit %.3f' % (fixed[0], meas[0]), flush=True)
