#!/usr/bin/env python3
"""Writes a random-weight Qwen3-MoE checkpoint of about 100M parameters (bf16) for speed
measurements of the forward pass. Random weights route almost uniformly: use it for
throughput, never for hit rates.

    /path/to/venv/bin/python scripts/make_random_model.py --out /tmp/random-100m
"""
import argparse

import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--hidden", type=int, default=512)
parser.add_argument("--layers", type=int, default=8)
parser.add_argument("--experts", type=int, default=12)
parser.add_argument("--top-k", type=int, default=2)
parser.add_argument("--expert-width", type=int, default=512)
parser.add_argument("--vocab", type=int, default=16384)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

torch.manual_seed(args.seed)
config = Qwen3MoeConfig(
    vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
    num_attention_heads=8, num_key_value_heads=4, head_dim=args.hidden // 8,
    num_experts=args.experts, num_experts_per_tok=args.top_k, moe_intermediate_size=args.expert_width,
    intermediate_size=args.expert_width * 4, max_position_embeddings=2048, tie_word_embeddings=False,
    norm_topk_prob=True, initializer_range=0.05,
)
model = Qwen3MoeForCausalLM(config).to(torch.bfloat16)
total = sum(p.numel() for p in model.parameters())
experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
print(f"parameters: {total/1e6:.1f}M total, {experts/1e6:.1f}M in routed experts")
model.save_pretrained(args.out)
