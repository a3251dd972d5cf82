#!/usr/bin/env python3
"""Why int8 experts through the integer-dot kernels move gpt-oss fixture logits 9x more than float (issue 22).

    /work/venv/bin/python scripts/gptoss_activation_rounding.py gptoss-sliding4-sinks

Runs a Tests/Fixtures/models gpt-oss checkpoint in PyTorch (transformers' GptOss) on the prompt
GptOssStoreTests uses (17 tokens, then 4 and 9) with its experts replaced by: int8 weights (per-row
scale, as Quantization.quantizeInt8) or q4 (blocks of 32, as quantizeQ4), and optionally the expert
inputs (`a_in`) and the clamped-SwiGLU outputs (`a_mid`) rounded to 8-bit blocks of 32 as
moe_quantize_q8 rounds them; prints the relative logit RMS error of each against the float model,
then which top-k routings the int8 + rounded-activations run changes, and the error per position.
"""
import torch, sys, json
from transformers import AutoModelForCausalLM
from transformers.models.gpt_oss import modeling_gpt_oss as m
torch.manual_seed(0)
import pathlib
path = str(pathlib.Path(__file__).resolve().parent.parent / "Tests/Fixtures/models" / sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
model.eval()
cfg = model.config
V = cfg.vocab_size
tokens = [(i * 29 + 3) % V for i in range(17)] + [4, 9]

def q_rows_int8(w):  # w [out, in]
    s = w.abs().amax(dim=1, keepdim=True) / 127
    inv = torch.where(s > 0, 1 / s, torch.zeros_like(s))
    return torch.clamp(torch.round(w * inv), -127, 127) * s

def q_rows_q4(w):
    o, i = w.shape
    b = w.reshape(o, i // 32, 32)
    s = b.abs().amax(dim=2, keepdim=True) / 7
    inv = torch.where(s > 0, 1 / s, torch.zeros_like(s))
    return (torch.clamp(torch.round(b * inv), -7, 7) * s).reshape(o, i)

def q_act(x, bits=8, block=32):
    n, c = x.shape
    b = x.reshape(n, c // block, block)
    lim = 2 ** (bits - 1) - 1
    d = b.abs().amax(dim=2, keepdim=True) / lim
    inv = torch.where(d > 0, 1 / d, torch.zeros_like(d))
    return (torch.clamp(torch.round(b * inv), -lim, lim) * d).reshape(n, c)

MODE = {}
def forward(self, hidden_states, router_indices=None, routing_weights=None):
    wq = MODE["w"]
    next_states = torch.zeros_like(hidden_states)
    for e in range(self.num_experts):
        mask = (router_indices == e)
        tok, pos = torch.where(mask)
        if len(tok) == 0: continue
        x = hidden_states[tok]
        gu = self.gate_up_proj[e].T  # [2I, H]
        dn = self.down_proj[e].T     # [H, I]
        if wq: gu, dn = wq(gu), wq(dn)
        xa = q_act(x, MODE["abits"]) if MODE["a_in"] else x
        gate_up = xa @ gu.T + self.gate_up_proj_bias[e]
        g = self._apply_gate(gate_up)
        ga = q_act(g, MODE["abits"]) if MODE["a_mid"] else g
        out = ga @ dn.T + self.down_proj_bias[e]
        next_states.index_add_(0, tok, out * routing_weights[tok, pos, None])
    return next_states
m.GptOssExperts.forward = forward

def run(**kw):
    MODE.clear(); MODE.update(dict(w=None, a_in=False, a_mid=False, abits=8)); MODE.update(kw)
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].double()
ref = run()
def rel(l): return ((l - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()
for name, kw in [("int8", dict(w=q_rows_int8)), ("int8+a_in", dict(w=q_rows_int8, a_in=True)), ("int8+a_mid", dict(w=q_rows_int8, a_mid=True)),
                 ("int8+both", dict(w=q_rows_int8, a_in=True, a_mid=True)), ("int8+both16", dict(w=q_rows_int8, a_in=True, a_mid=True, abits=16)),
                 ("q4", dict(w=q_rows_q4)), ("q4+both", dict(w=q_rows_q4, a_in=True, a_mid=True)), ("none+both", dict(a_in=True, a_mid=True))]:
    print(name, round(rel(run(**kw)), 4))
# Which routing decisions change, and where the logit error sits.
orig_router = m.GptOssTopKRouter.forward
picks = []
def router(self, h):
    r = orig_router(self, h); picks.append((r[2].clone(), r[0].clone())); return r
m.GptOssTopKRouter.forward = router
picks.clear(); base = run(); a = list(picks)
picks.clear(); other = run(w=q_rows_int8, a_in=True, a_mid=True); b = list(picks)
for layer, ((ia, la), (ib, lb)) in enumerate(zip(a, b)):
    for t in range(ia.shape[0]):
        if set(ia[t].tolist()) != set(ib[t].tolist()):
            s = la[t].sort(descending=True).values
            print("layer", layer, "token", t, ia[t].tolist(), "->", ib[t].tolist(), "router margin 2nd-3rd", round((s[1]-s[2]).item(), 5))
err = (other - base).pow(2).mean(dim=1).sqrt() / base.pow(2).mean().sqrt()
print("per-position relative error", [round(v, 3) for v in err.tolist()])
