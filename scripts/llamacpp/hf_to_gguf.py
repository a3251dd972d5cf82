#!/usr/bin/env python3
"""Convert a Hugging Face OLMoE checkpoint (OlmoeForCausalLM) to GGUF for llama.cpp, streaming.

    python hf_to_gguf.py HF_DIR OUT.gguf [--tokenizer tokenizer.json] [--outtype auto|bf16|f32]

Needs only `numpy` and `gguf` (no torch, no transformers): safetensors files are parsed directly
(their header is JSON, the data raw little-endian), so bf16 tensors are copied byte for byte.
Memory stays small: one tensor (or one expert matrix) at a time; the stacked expert tensors are
written expert by expert straight into the output file.

Mirrors llama.cpp's own converter (vendor/llama.cpp/conversion/olmo.py `OlmoeModel` and
conversion/base.py `TextModel` in the llama-cpp-python 0.3.36 sdist), which needs torch and
transformers and so cannot run here:
  * architecture "olmoe"; tensor names from gguf's TensorNameMap for MODEL_ARCH.OLMOE;
  * no q/k permutation (OLMoE uses NeoX rope in llama.cpp, like HF's rotate_half);
  * experts stacked per layer into blk.N.ffn_{gate,up,down}_exps.weight of numpy shape
    (n_expert, rows, cols), i.e. ggml {cols, rows, n_expert};
  * 1-D tensors, *_norm.weight and the router (ffn_gate_inp) stored as F32, every other weight
    kept in its source type (bf16 stays bf16: file type MOSTLY_BF16);
  * hyper-parameters as TextModel.set_gguf_parameters writes them.
Deliberate differences, each because llama.cpp's converter would produce something wrong here:
  * rms_norm_eps comes from config.json (OlmoeModel hard-codes 1e-5, right for the released
    OLMoE, wrong for a checkpoint with another epsilon);
  * tie_word_embeddings: llama.cpp's OLMoE loader requires output.weight, so a tied checkpoint
    gets a copy of the embedding as output.weight;
  * the tokenizer is read from tokenizer.json directly (the reference uses transformers'
    AutoTokenizer and identifies the pre-tokenizer by hashing the encoding of a test string, which
    fails for a new 4,096-entry vocabulary): model "gpt2", pre-tokenizer "qwen2" when the
    pre-tokenizer regex is Qwen2's, tokens in id order, types (CONTROL for special added tokens,
    UNUSED for holes), merges and special ids through gguf.SpecialVocab;
  * a checkpoint without tokenizer.json (the tiny test fixtures) gets tokenizer model "none" and
    olmoe.vocab_size: llama.cpp then runs on token ids only.
Not supported by llama.cpp's OLMoE graph (so this converter refuses or warns): clip_qkv (no
clamp in src/models/olmoe.cpp), norm_topk_prob=true (build_moe_ffn is called with norm_w=false),
num_key_value_heads != num_attention_heads (k_norm is created with n_embd, HF's is n_kv*head_dim).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import struct
import sys
import time
from pathlib import Path

import numpy as np
import gguf

QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

ST_DTYPES = {
    "BF16": (np.uint16, gguf.GGMLQuantizationType.BF16),
    "F16": (np.float16, gguf.GGMLQuantizationType.F16),
    "F32": (np.float32, gguf.GGMLQuantizationType.F32),
}


class SafetensorsIndex:
    """Tensor name -> (file, dtype, shape, absolute byte offset, nbytes), from the headers only."""

    def __init__(self, model_dir: Path):
        files: list[Path]
        index = model_dir / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted({model_dir / f for f in weight_map.values()})
        elif (model_dir / "model.safetensors").exists():
            files = [model_dir / "model.safetensors"]
        else:
            raise SystemExit(f"no model.safetensors(.index.json) in {model_dir}")
        self.entries: dict[str, tuple[Path, str, list[int], int, int]] = {}
        for path in files:
            with open(path, "rb") as f:
                (hlen,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(hlen))
            base = 8 + hlen
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                start, end = info["data_offsets"]
                self.entries[name] = (path, info["dtype"], list(info["shape"]), base + start, end - start)
        self._fds: dict[Path, int] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def dtype(self, name: str) -> str:
        return self.entries[name][1]

    def shape(self, name: str) -> list[int]:
        return self.entries[name][2]

    def read(self, name: str) -> np.ndarray:
        path, dt, shape, offset, nbytes = self.entries[name]
        if dt not in ST_DTYPES:
            raise SystemExit(f"{name}: unsupported safetensors dtype {dt}")
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY)
        buf = os.pread(fd, nbytes, offset)
        if len(buf) != nbytes:
            raise SystemExit(f"{name}: short read from {path}")
        # Done with these pages: keep the source from crowding the page cache (13+ GB).
        os.posix_fadvise(fd, offset, nbytes, os.POSIX_FADV_DONTNEED)
        return np.frombuffer(buf, dtype=ST_DTYPES[dt][0]).reshape(shape)


def to_f32(a: np.ndarray, st_dtype: str) -> np.ndarray:
    if st_dtype == "BF16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32)


def write_vocab(w: gguf.GGUFWriter, tok_path: Path | None, model_dir: Path, n_vocab: int) -> None:
    if tok_path is None or not tok_path.exists():
        print("no tokenizer.json: tokenizer model 'none' (token ids only)", file=sys.stderr)
        w.add_tokenizer_model("none")
        w.add_vocab_size(n_vocab)
        return
    tok = json.loads(tok_path.read_text())
    model = tok["model"]
    if model.get("type") != "BPE":
        raise SystemExit(f"{tok_path}: only byte-level BPE tokenizers are supported, got {model.get('type')}")
    vocab: dict[str, int] = dict(model["vocab"])
    special: set[int] = set()
    for t in tok.get("added_tokens", []):
        vocab[t["content"]] = t["id"]
        if t.get("special"):
            special.add(t["id"])
    if max(vocab.values()) >= n_vocab:
        raise SystemExit(f"tokenizer has id {max(vocab.values())} >= vocab_size {n_vocab}")
    rev = {i: s for s, i in vocab.items()}
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in rev:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(rev[i])
            types.append(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL)

    # Pre-tokenizer: llama.cpp identifies it by name; accept Qwen2's regex (what our tokenizers use).
    regexes = re.findall(r'"Regex":\s*"((?:[^"\\]|\\.)*)"', json.dumps(tok.get("pre_tokenizer")))
    regexes = [json.loads(f'"{r}"') for r in regexes]
    if regexes and regexes[0] == QWEN2_REGEX:
        pre = "qwen2"
    else:
        pre = "qwen2"
        print(f"warning: pre-tokenizer regex {regexes!r} is not Qwen2's; writing 'qwen2' anyway "
              "(token ids fed directly are unaffected)", file=sys.stderr)

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    # gguf.SpecialVocab reads merges from tokenizer.json and bos/eos/pad/add_bos from
    # tokenizer_config.json and config.json, exactly as llama.cpp's converter does.
    sv_dir = tok_path.parent
    special_vocab = gguf.SpecialVocab(sv_dir, load_merges=True, n_vocab=n_vocab)
    if sv_dir != model_dir:  # config.json ids of the checkpoint win
        cfg = json.loads((model_dir / "config.json").read_text())
        for typ in ("bos", "eos", "pad"):
            v = cfg.get(f"{typ}_token_id")
            if isinstance(v, int):
                special_vocab.special_token_ids[typ] = v
    special_vocab.add_to_gguf(w)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("hf_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--tokenizer", type=Path, default=None,
                    help="tokenizer.json to use (default: HF_DIR/tokenizer.json if present)")
    ap.add_argument("--outtype", choices=["auto", "f32"], default="auto",
                    help="auto keeps each matrix in its source type; f32 widens everything")
    ap.add_argument("--force", action="store_true", help="convert even what llama.cpp computes differently")
    args = ap.parse_args()

    d: Path = args.hf_dir
    cfg = json.loads((d / "config.json").read_text())
    if cfg.get("model_type") != "olmoe":
        raise SystemExit(f"model_type {cfg.get('model_type')!r} is not 'olmoe'")
    n_layer = cfg["num_hidden_layers"]
    n_embd = cfg["hidden_size"]
    n_head = cfg["num_attention_heads"]
    n_head_kv = cfg.get("num_key_value_heads") or n_head
    n_expert = cfg["num_experts"]
    n_vocab = cfg["vocab_size"]
    problems = []
    if cfg.get("clip_qkv") is not None:
        problems.append(f"clip_qkv={cfg['clip_qkv']} (llama.cpp's OLMoE graph never clamps q/k/v)")
    if cfg.get("norm_topk_prob"):
        problems.append("norm_topk_prob=true (llama.cpp's OLMoE graph never renormalises the top-k weights)")
    if n_head_kv != n_head:
        problems.append(f"num_key_value_heads={n_head_kv} != num_attention_heads={n_head} "
                        "(llama.cpp's OLMoE k_norm has n_embd entries; the file would not load)")
    if cfg.get("head_dim") not in (None, n_embd // n_head):
        problems.append("head_dim != hidden_size / num_attention_heads")
    for p in problems:
        print(f"{'warning' if args.force else 'error'}: {p}", file=sys.stderr)
    if problems and not args.force:
        raise SystemExit("refusing: llama.cpp would compute a different model (use --force to write it anyway)")

    st = SafetensorsIndex(d)
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.OLMOE, n_layer)

    # --- plan: (gguf name, numpy shape, ggml type, source) where source yields arrays in order ---
    plan: list[tuple[str, list[int], gguf.GGMLQuantizationType, object]] = []

    def out_type(gname: str, st_dtype: str, ndim: int) -> gguf.GGMLQuantizationType:
        if args.outtype == "f32" or ndim <= 1 or gname.endswith("_norm.weight") or ".ffn_gate_inp." in gname:
            return gguf.GGMLQuantizationType.F32
        return ST_DTYPES[st_dtype][1]

    def add_plain(hf_name: str, gname: str | None = None) -> None:
        if hf_name not in st:
            raise SystemExit(f"missing tensor {hf_name}")
        if gname is None:
            gname = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if gname is None:
                raise SystemExit(f"no GGUF name for {hf_name}")
        shape = st.shape(hf_name)
        plan.append((gname, shape, out_type(gname, st.dtype(hf_name), len(shape)), ("plain", hf_name)))

    used: set[str] = set()

    def use(name: str) -> str:
        used.add(name)
        return name

    add_plain(use("model.embed_tokens.weight"))
    for L in range(n_layer):
        p = f"model.layers.{L}"
        for n in ("input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                  "self_attn.q_norm", "self_attn.k_norm", "self_attn.o_proj",
                  "post_attention_layernorm", "mlp.gate"):
            add_plain(use(f"{p}.{n}.weight"))
        # Stacked experts, in the order llama.cpp's converter emits them (down, gate, up).
        for w_name in ("down_proj", "gate_proj", "up_proj"):
            names = [use(f"{p}.mlp.experts.{e}.{w_name}.weight") for e in range(n_expert)]
            for n in names:
                if n not in st:
                    raise SystemExit(f"missing tensor {n}")
            shapes = {tuple(st.shape(n)) for n in names}
            dtypes = {st.dtype(n) for n in names}
            if len(shapes) != 1 or len(dtypes) != 1:
                raise SystemExit(f"layer {L} {w_name}: experts differ in shape or dtype")
            gname = tmap.get_name(f"{p}.mlp.experts.{w_name}.weight", try_suffixes=(".weight",))
            shape = [n_expert, *shapes.pop()]
            plan.append((gname, shape, out_type(gname, dtypes.pop(), 3), ("stack", names)))
    add_plain(use("model.norm.weight"))
    if "lm_head.weight" in st and not cfg.get("tie_word_embeddings", False):
        add_plain(use("lm_head.weight"))
    else:
        # Tied: llama.cpp's OLMoE loader requires output.weight, so write the embedding again.
        add_plain("model.embed_tokens.weight", "output.weight")
        used.add("lm_head.weight")
    unused = sorted(set(st.entries) - used)
    if unused:
        raise SystemExit(f"tensors not converted: {unused[:8]}{'...' if len(unused) > 8 else ''}")

    # --- metadata, as TextModel.set_gguf_parameters + OlmoeModel.set_gguf_parameters write it ---
    w = gguf.GGUFWriter(args.out, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.OLMOE])
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(d.name)
    w.add_block_count(n_layer)
    w.add_context_length(cfg.get("max_position_embeddings", 4096))
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    rope = cfg.get("rope_parameters") or {}
    rope_theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    if (cfg.get("rope_scaling") or {}).get("rope_type", rope.get("rope_type", "default")) not in ("default", None):
        raise SystemExit("rope scaling is not supported by this converter")
    w.add_rope_freq_base(float(rope_theta))
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-5)))
    w.add_expert_count(n_expert)
    w.add_expert_used_count(cfg["num_experts_per_tok"])
    all_bf16 = all(t in (gguf.GGMLQuantizationType.BF16, gguf.GGMLQuantizationType.F32) for _, _, t, _ in plan)
    any_bf16 = any(t == gguf.GGMLQuantizationType.BF16 for _, _, t, _ in plan)
    any_f16 = any(t == gguf.GGMLQuantizationType.F16 for _, _, t, _ in plan)
    ftype = (gguf.LlamaFileType.MOSTLY_BF16 if any_bf16 and all_bf16
             else gguf.LlamaFileType.MOSTLY_F16 if any_f16 else gguf.LlamaFileType.ALL_F32)
    w.add_file_type(ftype)
    tok_path = args.tokenizer or (d / "tokenizer.json")
    write_vocab(w, tok_path if tok_path.exists() else None, d, n_vocab)

    itemsize = {gguf.GGMLQuantizationType.BF16: 2, gguf.GGMLQuantizationType.F16: 2,
                gguf.GGMLQuantizationType.F32: 4}
    np_out = {gguf.GGMLQuantizationType.BF16: np.uint16, gguf.GGMLQuantizationType.F16: np.float16,
              gguf.GGMLQuantizationType.F32: np.float32}
    for gname, shape, gtype, _ in plan:
        nbytes = int(np.prod(shape)) * itemsize[gtype]
        w.add_tensor_info(gname, shape, np.dtype(np_out[gtype]), nbytes, raw_dtype=gtype)

    total = sum(int(np.prod(s)) * itemsize[t] for _, s, t, _ in plan)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    fout = w.fout[0]

    def convert(a: np.ndarray, src_dtype: str, gtype) -> np.ndarray:
        if gtype == ST_DTYPES[src_dtype][1]:
            return a
        if gtype == gguf.GGMLQuantizationType.F32:
            return to_f32(a, src_dtype)
        raise SystemExit(f"cannot convert {src_dtype} to {gtype.name}")

    t0 = time.time()
    done = 0
    last = 0.0
    for gname, shape, gtype, (kind, src) in plan:
        # Same layout as GGUFWriter.write_tensor_data: pad to alignment, data, pad.
        w.write_padding(fout, fout.tell())
        nbytes = 0
        names = [src] if kind == "plain" else src
        for n in names:
            a = convert(st.read(n), st.dtype(n), gtype)
            a = np.ascontiguousarray(a)
            fout.write(a.tobytes())
            nbytes += a.nbytes
        expect = int(np.prod(shape)) * itemsize[gtype]
        if nbytes != expect:
            raise SystemExit(f"{gname}: wrote {nbytes} bytes, expected {expect}")
        w.write_padding(fout, nbytes)
        w.tensors[0].pop(gname)
        done += nbytes
        now = time.time()
        if now - last > 5 or done == total:
            last = now
            fout.flush()
            os.posix_fadvise(fout.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            rate = done / max(now - t0, 1e-9) / 1e6
            print(f"  {done / 1e9:6.2f} / {total / 1e9:.2f} GB  ({rate:.0f} MB/s)  {gname}", file=sys.stderr)
    w.state = gguf.gguf_writer.WriterState.WEIGHTS
    fout.flush()
    os.fsync(fout.fileno())
    os.posix_fadvise(fout.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    w.close()
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e9:.2f} GB, {len(plan)} tensors, "
          f"file type {ftype.name}) in {time.time() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
