# Synthetic Qwen3-MoE-shaped checkpoint with realistic expert sizes (hidden 2048, expert width 768:
# the Qwen3-30B-A3B expert shape, 9.4 MB per bf16 expert) for `moe-serve bench io`.
import json, os, torch
from safetensors.torch import save_file
out = "/work/bench/hf_qwen3_io"
os.makedirs(out, exist_ok=True)
H, I, E, L, V, heads, kv, hd = 2048, 768, 64, 4, 1024, 16, 4, 128
torch.manual_seed(0)
g = lambda *s: (torch.randn(*s) * 0.02).to(torch.bfloat16)
index = {}
for l in range(L):
    t = {}
    p = f"model.layers.{l}"
    t[f"{p}.input_layernorm.weight"] = torch.ones(H, dtype=torch.bfloat16)
    t[f"{p}.post_attention_layernorm.weight"] = torch.ones(H, dtype=torch.bfloat16)
    t[f"{p}.self_attn.q_proj.weight"] = g(heads * hd, H)
    t[f"{p}.self_attn.k_proj.weight"] = g(kv * hd, H)
    t[f"{p}.self_attn.v_proj.weight"] = g(kv * hd, H)
    t[f"{p}.self_attn.o_proj.weight"] = g(H, heads * hd)
    t[f"{p}.self_attn.q_norm.weight"] = torch.ones(hd, dtype=torch.bfloat16)
    t[f"{p}.self_attn.k_norm.weight"] = torch.ones(hd, dtype=torch.bfloat16)
    t[f"{p}.mlp.gate.weight"] = g(E, H)
    for e in range(E):
        q = f"{p}.mlp.experts.{e}"
        t[f"{q}.gate_proj.weight"] = g(I, H)
        t[f"{q}.up_proj.weight"] = g(I, H)
        t[f"{q}.down_proj.weight"] = g(H, I)
    if l == 0:
        t["model.embed_tokens.weight"] = g(V, H)
        t["lm_head.weight"] = g(V, H)
        t["model.norm.weight"] = torch.ones(H, dtype=torch.bfloat16)
    name = f"model-{l+1:05d}-of-{L:05d}.safetensors"
    save_file(t, os.path.join(out, name))
    index.update({k: name for k in t})
json.dump({"metadata": {}, "weight_map": index}, open(os.path.join(out, "model.safetensors.index.json"), "w"))
json.dump({"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": H, "intermediate_size": 6144,
           "moe_intermediate_size": I, "num_experts": E, "num_experts_per_tok": 8, "num_hidden_layers": L,
           "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": hd, "vocab_size": V, "rms_norm_eps": 1e-6,
           "rope_theta": 1000000.0, "max_position_embeddings": 4096, "norm_topk_prob": True, "decoder_sparse_step": 1,
           "mlp_only_layers": [], "tie_word_embeddings": False, "torch_dtype": "bfloat16"}, open(os.path.join(out, "config.json"), "w"), indent=1)
print("done")
