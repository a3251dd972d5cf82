#!/usr/bin/env python3
"""Train MoEServe's bundled demo model: a small Qwen3-MoE on the Python standard library.

Pipeline (one process, CPU only):

  1. corpus     every ``*.py`` under ``--corpus`` (site-packages, ``__pycache__`` and
                ``pydoc_data`` excluded), sorted by relative path; ~2% of the files are held
                out for validation by a hash of their relative path (stable, order-free).
  2. tokenizer  byte-level BPE with ``--vocab`` entries trained with ``tokenizers`` on the
                training files, Qwen2-style pre-tokenizer (regex split + ByteLevel), special
                tokens ``<|endoftext|>`` (0), ``<|im_start|>`` (1), ``<|im_end|>`` (2).
  3. model      ``Qwen3MoeForCausalLM`` from a fresh config (see the flags), router
                load-balancing loss on, trained with AdamW for ``--minutes`` of wall clock
                (or ``--max-steps`` steps), warmup then cosine decay over that budget.
  4. output     ``--out``: config.json, model.safetensors (bf16 by default),
                generation_config.json, tokenizer.json, tokenizer_config.json (ChatML chat
                template) and training_report.json (loss, throughput, routing statistics,
                greedy sample completions). Intermediate checkpoints go to ``--ckpt-dir``.

The default flags give the bundled ~28M-parameter model (8 layers, 32 experts, top-4).
A larger benchmark variant is the same script with e.g. ``--experts 64 --layers 12``.

Requirements (in a virtual environment outside the repository):
  pip install torch transformers tokenizers safetensors
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

DEFAULT_CORPUS = "/root/.pyenv/versions/3.11.7/lib/python3.11"

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# The pre-tokenizer regex of Qwen2/Qwen3 (GPT-4-like, single digits).
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# ChatML, as Qwen2/Qwen3 use it (without the tool-calling branches).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

SAMPLE_PROMPTS = ["def fibonacci(n):", "import os\n", "class Stack:"]

EXCLUDED_DIRS = {"site-packages", "__pycache__", "pydoc_data"}


# --------------------------------------------------------------------------------------------
# logging


class Log:
    """Prints to stdout (flushed) and appends the same line to a file."""

    def __init__(self, path: Path | None):
        self.file = open(path, "a", encoding="utf-8") if path else None
        self.start = time.time()

    def __call__(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')} +{time.time() - self.start:7.1f}s] {msg}"
        print(line, flush=True)
        if self.file:
            self.file.write(line + "\n")
            self.file.flush()


# --------------------------------------------------------------------------------------------
# corpus


def list_corpus(root: Path, max_files: int | None) -> list[Path]:
    """Every .py file under root, excluded directories skipped, sorted by relative path."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
        for name in filenames:
            if name.endswith(".py"):
                files.append(Path(dirpath) / name)
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    if max_files:
        files = files[:max_files]
    return files


def is_validation(rel: str, val_percent: float) -> bool:
    """Deterministic hold-out: sha256 of the relative path, independent of file order."""
    h = int.from_bytes(hashlib.sha256(rel.encode()).digest()[:8], "big")
    return (h % 10_000) < val_percent * 100


def read_corpus(root: Path, files: list[Path], val_percent: float, log: Log):
    train, val, skipped = [], [], []
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            skipped.append(rel)  # a few test files are deliberately not UTF-8
            continue
        if not text.strip():
            continue
        (val if is_validation(rel, val_percent) else train).append((rel, text))
    log(
        f"corpus: {len(train)} train files ({sum(len(t) for _, t in train) / 1e6:.1f}M chars), "
        f"{len(val)} validation files ({sum(len(t) for _, t in val) / 1e6:.2f}M chars), "
        f"{len(skipped)} skipped (not UTF-8)"
    )
    return train, val, skipped


# --------------------------------------------------------------------------------------------
# tokenizer


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    assert tok.get_vocab_size() == vocab_size, tok.get_vocab_size()
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(s) == i
    return tok


def wrap_tokenizer(tok, eos_token: str):
    """A transformers fast tokenizer around `tok`, with the ChatML template."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=eos_token,
        pad_token="<|endoftext|>",
        additional_special_tokens=[s for s in SPECIAL_TOKENS if s not in (eos_token, "<|endoftext|>")],
        clean_up_tokenization_spaces=False,
        model_max_length=None,
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def save_tokenizer(hf_tok, out: Path, max_len: int) -> None:
    hf_tok.model_max_length = max_len
    hf_tok.save_pretrained(str(out))
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["bos_token"] = None
    cfg["add_bos_token"] = False
    cfg["add_eos_token"] = False
    cfg["chat_template"] = CHAT_TEMPLATE  # also inline, for readers that ignore chat_template.jinja
    # Spell the class and the extra tokens so that transformers 4.x reads the file too (5.x reads both).
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    if "extra_special_tokens" in cfg:
        cfg["additional_special_tokens"] = cfg.pop("extra_special_tokens")
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def encode_stream(tok, texts: list[str], eot_id: int):
    """All documents, each followed by <|endoftext|>, as one flat int64 tensor."""
    import torch

    ids: list[int] = []
    for start in range(0, len(texts), 256):
        for enc in tok.encode_batch(texts[start : start + 256], add_special_tokens=False):
            ids.extend(enc.ids)
            ids.append(eot_id)
    return torch.tensor(ids, dtype=torch.int64)


# --------------------------------------------------------------------------------------------
# model


def build_config(args, eos_id: int, pad_id: int):
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 4,  # unused: every layer is sparse
        moe_intermediate_size=args.expert_width,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        head_dim=args.head_dim,
        num_experts=args.experts,
        num_experts_per_tok=args.top_k,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        max_position_embeddings=args.max_positions,
        rope_theta=args.rope_theta,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        output_router_logits=True,
        router_aux_loss_coef=args.aux_coef,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        use_cache=True,
        initializer_range=0.02,
    )


def count_params(model) -> dict:
    total = sum(p.numel() for p in model.parameters())
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    cfg = model.config
    per_expert = 3 * cfg.hidden_size * cfg.moe_intermediate_size
    active = total - experts + cfg.num_hidden_layers * cfg.num_experts_per_tok * per_expert
    return {"total": total, "routed_experts": experts, "dense": total - experts, "active_per_token": active}


def lr_at(progress: float, step: int, args) -> float:
    """Linear warmup over --warmup steps, then cosine from --lr to --lr * --min-lr-ratio."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    p = min(max(progress, 0.0), 1.0)
    floor = args.lr * args.min_lr_ratio
    return floor + 0.5 * (args.lr - floor) * (1 + math.cos(math.pi * p))


def evaluate(model, val_chunks, batch: int, max_chunks: int | None, num_experts: int):
    """Mean next-token cross-entropy over validation chunks, plus per-layer expert load."""
    import torch
    import torch.nn.functional as F

    model.eval()
    chunks = val_chunks
    if max_chunks is not None and len(val_chunks) > max_chunks:
        # Evenly spaced windows: the stream is in path order, and a prefix would be a few files only.
        chunks = val_chunks[torch.linspace(0, len(val_chunks) - 1, max_chunks).long()]
    total_loss, total_tokens = 0.0, 0
    load = None
    with torch.no_grad():
        for i in range(0, len(chunks), batch):
            x = chunks[i : i + batch]
            out = model(input_ids=x, output_router_logits=True, use_cache=False)
            logits = out.logits[:, :-1].float()
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1), reduction="sum")
            total_loss += loss.item()
            total_tokens += x[:, 1:].numel()
            k = model.config.num_experts_per_tok
            counts = torch.stack(
                [
                    torch.bincount(rl.topk(k, dim=-1).indices.reshape(-1), minlength=num_experts)
                    for rl in out.router_logits
                ]
            ).double()
            load = counts if load is None else load + counts
    model.train()
    share = load / load.sum(dim=1, keepdim=True)  # [layers, experts]
    entropy = -(share.clamp_min(1e-12) * share.clamp_min(1e-12).log()).sum(1) / math.log(num_experts)
    routing = {
        "normalized_entropy_per_layer": [round(v, 4) for v in entropy.tolist()],
        "max_share_per_layer": [round(v, 4) for v in share.max(1).values.tolist()],
        "min_share_per_layer": [round(v, 5) for v in share.min(1).values.tolist()],
        "uniform_share": round(1 / num_experts, 5),
    }
    return total_loss / max(total_tokens, 1), total_tokens, routing


def save_model(model, out: Path, dtype_name: str) -> None:
    """save_pretrained a copy in the requested dtype (the training model stays fp32)."""
    import copy

    import torch

    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype_name]
    out.mkdir(parents=True, exist_ok=True)
    clone = copy.deepcopy(model).to(dtype)
    clone.config.use_cache = True
    clone.save_pretrained(str(out))
    del clone
    # transformers 5 writes num_local_experts / rope_parameters / dtype; published Qwen3-MoE checkpoints
    # (and readers written for them) use num_experts / rope_theta / torch_dtype. Write both spellings.
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["num_experts"] = model.config.num_experts
    cfg["rope_theta"] = float(model.config.rope_parameters["rope_theta"])
    cfg["torch_dtype"] = dtype_name
    cfg["output_router_logits"] = False
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def sample_completions(model_dir: Path, hf_tok, max_new_tokens: int):
    """Reload the saved checkpoint (computed in float32); return it and its greedy completions."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    results = []
    for prompt in SAMPLE_PROMPTS:
        enc = hf_tok(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(
                **enc,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=hf_tok.pad_token_id,
                eos_token_id=hf_tok.convert_tokens_to_ids("<|endoftext|>"),
            )
        new = out[0, enc["input_ids"].shape[1] :].tolist()
        results.append(
            {
                "prompt": prompt,
                "prompt_ids": enc["input_ids"][0].tolist(),
                "completion_ids": new,
                "completion": hf_tok.decode(new, skip_special_tokens=False),
            }
        )
    return model, results


# --------------------------------------------------------------------------------------------
# main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default=DEFAULT_CORPUS, help="Python library directory to train on")
    p.add_argument("--out", default="/work/demo-model-hf", help="final HF model directory")
    p.add_argument("--ckpt-dir", default=None, help="intermediate checkpoints (default: OUT-checkpoints)")
    p.add_argument("--tokenizer", default=None, help="reuse this tokenizer.json instead of training one")
    p.add_argument(
        "--init-from",
        metavar="MODEL_DIR",
        default=None,
        help="continue training a saved model (its weights, config and tokenizer; model flags are ignored); "
        "give a new --seed so that the data order differs from the first run",
    )
    p.add_argument("--max-files", type=int, default=None, help="use only the first N files (smoke runs)")
    p.add_argument("--val-percent", type=float, default=2.0, help="percent of files held out")
    # tokenizer
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--eos-token", default="<|endoftext|>", choices=SPECIAL_TOKENS[0:1] + SPECIAL_TOKENS[2:])
    # model
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--experts", type=int, default=32)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--expert-width", type=int, default=128, help="moe_intermediate_size")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--max-positions", type=int, default=1024)
    p.add_argument("--rope-theta", type=float, default=10000.0)
    p.add_argument("--aux-coef", type=float, default=0.01, help="router load-balancing loss weight")
    p.add_argument(
        "--experts-impl",
        default="grouped_mm",
        help="transformers experts_implementation (grouped_mm: same results as eager, ~3x faster on CPU)",
    )
    # training
    p.add_argument("--minutes", type=float, default=60.0, help="wall-clock budget of the training loop")
    p.add_argument("--max-steps", type=int, default=None, help="stop (and schedule) on steps instead")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=60, help="warmup steps")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 beats 2 when the cores are shared)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--log-every", type=int, default=10, help="steps")
    p.add_argument("--eval-minutes", type=float, default=10.0)
    p.add_argument("--eval-chunks", type=int, default=128, help="validation chunks for periodic evals")
    p.add_argument(
        "--final-eval-chunks", type=int, default=None, help="validation chunks for the final eval (default: all)"
    )
    p.add_argument("--ckpt-minutes", type=float, default=15.0)
    p.add_argument("--save-dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--sample-tokens", type=int, default=60)
    p.add_argument(
        "--eval-only",
        metavar="MODEL_DIR",
        default=None,
        help="only evaluate MODEL_DIR (its tokenizer.json) on the whole validation split; adds the result to "
        "MODEL_DIR/training_report.json",
    )
    return p.parse_args(argv)


def eval_only(args) -> int:
    """Validation loss of a saved model on the whole validation split (same corpus flags as training)."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    model_dir = Path(args.eval_only)
    log = Log(None)
    root = Path(args.corpus)
    _, val_docs, _ = read_corpus(root, list_corpus(root, args.max_files), args.val_percent, log)
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    val_ids = encode_stream(tok, [t for _, t in val_docs], tok.token_to_id("<|endoftext|>"))
    val_chunks = val_ids[: (len(val_ids) // args.seq) * args.seq].view(-1, args.seq)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    t0 = time.time()
    loss, tokens, routing = evaluate(model, val_chunks, args.batch, None, model.config.num_experts)
    result = {
        "val_loss": round(loss, 4),
        "val_perplexity": round(math.exp(loss), 3),
        "val_tokens_evaluated": tokens,
        "val_files": len(val_docs),
        "seq": args.seq,
        "routing_on_validation": routing,
    }
    log(f"{model_dir}: val loss {loss:.4f} over {tokens:,} tokens in {time.time() - t0:.1f}s")
    report_path = model_dir / "training_report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    report["eval_full_validation"] = result
    report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.eval_only:
        return eval_only(args)
    out = Path(args.out)
    ckpt_dir = Path(args.ckpt_dir) if args.ckpt_dir else Path(str(out).rstrip("/") + "-checkpoints")
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "train.log")
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    script_sha256 = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()  # now: the file may change later
    log(f"command: {command}")

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    log(
        f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"threads {torch.get_num_threads()}"
    )
    t_prep = time.time()

    # 1. corpus
    root = Path(args.corpus)
    files = list_corpus(root, args.max_files)
    train_docs, val_docs, skipped = read_corpus(root, files, args.val_percent, log)
    train_texts = [t for _, t in train_docs]
    val_texts = [t for _, t in val_docs]

    # 2. tokenizer
    from tokenizers import Tokenizer

    if args.init_from and not args.tokenizer:
        args.tokenizer = str(Path(args.init_from) / "tokenizer.json")
    if args.tokenizer:
        tok = Tokenizer.from_file(args.tokenizer)
        log(f"tokenizer: loaded {args.tokenizer} ({tok.get_vocab_size()} entries)")
    else:
        t0 = time.time()
        tok = train_tokenizer(train_texts, args.vocab)
        log(f"tokenizer: trained {tok.get_vocab_size()} entries in {time.time() - t0:.1f}s")
    eot_id = tok.token_to_id("<|endoftext|>")
    hf_tok = wrap_tokenizer(tok, args.eos_token)
    save_tokenizer(hf_tok, out, args.max_positions)

    t0 = time.time()
    train_ids = encode_stream(tok, train_texts, eot_id)
    val_ids = encode_stream(tok, val_texts, eot_id)
    n_chars = sum(len(t) for t in train_texts)
    log(
        f"tokens: {len(train_ids):,} train ({n_chars / len(train_ids):.2f} chars/token), "
        f"{len(val_ids):,} validation, encoded in {time.time() - t0:.1f}s"
    )
    n_train_chunks = len(train_ids) // args.seq
    train_chunks = train_ids[: n_train_chunks * args.seq].view(n_train_chunks, args.seq)
    val_chunks = val_ids[: (len(val_ids) // args.seq) * args.seq].view(-1, args.seq)
    del train_ids

    # 3. model
    eos_id = tok.token_to_id(args.eos_token)
    if args.init_from:
        # Continue from saved weights (architecture from their config.json; a fresh optimizer and warmup).
        model = transformers.AutoModelForCausalLM.from_pretrained(
            args.init_from, dtype=torch.float32, experts_implementation=args.experts_impl
        )
        model.config.router_aux_loss_coef = args.aux_coef
        args.experts, args.max_positions = model.config.num_experts, model.config.max_position_embeddings
        log(f"model: initialized from {args.init_from}")
    else:
        config = build_config(args, eos_id, eot_id)
        config._experts_implementation = args.experts_impl
        model = transformers.Qwen3MoeForCausalLM(config)
    model.train()
    params = count_params(model)
    log(f"model: {json.dumps(params)}")

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "embed_tokens" not in name else no_decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    prep_seconds = time.time() - t_prep
    log(f"preparation took {prep_seconds:.1f}s; training for {args.max_steps or f'{args.minutes} min'}")

    gen = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(n_train_chunks, generator=gen)
    cursor, epoch = 0, 0
    budget = args.minutes * 60.0
    step, tokens_seen = 0, 0
    t_start = time.time()
    last_log_t, last_log_tokens = t_start, 0
    next_eval = t_start + args.eval_minutes * 60
    next_ckpt = t_start + args.ckpt_minutes * 60
    evals, checkpoints, loss_history = [], [], []
    ema_loss = None

    def progress() -> float:
        if args.max_steps:
            return step / args.max_steps
        return (time.time() - t_start) / budget

    while True:
        if args.max_steps and step >= args.max_steps:
            break
        if not args.max_steps and time.time() - t_start >= budget:
            break
        if cursor + args.batch > n_train_chunks:
            epoch += 1
            order = torch.randperm(n_train_chunks, generator=gen)
            cursor = 0
            log(f"epoch {epoch} begins")
        x = train_chunks[order[cursor : cursor + args.batch]]
        cursor += args.batch

        lr = lr_at(progress(), step, args)
        for g in opt.param_groups:
            g["lr"] = lr
        out_ = model(input_ids=x, labels=x, output_router_logits=True, use_cache=False)
        aux = out_.aux_loss.item() if out_.aux_loss is not None else 0.0
        lm_loss = out_.loss.item() - args.aux_coef * aux
        opt.zero_grad(set_to_none=True)
        out_.loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip).item()
        opt.step()
        step += 1
        tokens_seen += x.numel()
        ema_loss = lm_loss if ema_loss is None else 0.95 * ema_loss + 0.05 * lm_loss
        loss_history.append(lm_loss)

        now = time.time()
        if step % args.log_every == 0 or step == 1:
            tps = (tokens_seen - last_log_tokens) / max(now - last_log_t, 1e-9)
            elapsed = now - t_start
            if args.max_steps:
                eta = elapsed / step * (args.max_steps - step)
            else:
                eta = budget - elapsed
            log(
                f"step {step:5d} | loss {lm_loss:.4f} (ema {ema_loss:.4f}) | aux {aux:.3f} | lr {lr:.2e} | "
                f"gnorm {gnorm:.2f} | {tps:,.0f} tok/s | tokens {tokens_seen / 1e6:.2f}M | "
                f"epoch {epoch + cursor / n_train_chunks:.2f} | elapsed {elapsed / 60:.1f}m | ETA {eta / 60:.1f}m"
            )
            last_log_t, last_log_tokens = now, tokens_seen
        if now >= next_eval:
            vl, vt, routing = evaluate(model, val_chunks, args.batch, args.eval_chunks, args.experts)
            evals.append({"step": step, "tokens": tokens_seen, "val_loss": round(vl, 4), "val_tokens": vt})
            log(f"eval step {step}: val loss {vl:.4f} ({vt:,} tokens), routing entropy {routing['normalized_entropy_per_layer']}")
            next_eval = time.time() + args.eval_minutes * 60
        if now >= next_ckpt:
            path = ckpt_dir / f"step-{step:06d}"
            save_model(model, path, args.save_dtype)
            save_tokenizer(hf_tok, path, args.max_positions)
            checkpoints.append(str(path))
            log(f"checkpoint saved: {path}")
            next_ckpt = time.time() + args.ckpt_minutes * 60

    train_seconds = time.time() - t_start
    tail = loss_history[-50:]
    final_train_loss = sum(tail) / max(len(tail), 1)
    log(
        f"training done: {step} steps, {tokens_seen:,} tokens in {train_seconds / 60:.1f} min "
        f"({tokens_seen / train_seconds:,.0f} tok/s); train loss (mean of last {len(tail)} steps) {final_train_loss:.4f}"
    )

    # 4. output
    save_model(model, out, args.save_dtype)
    log(f"saved {args.save_dtype} model to {out}")
    del model, opt

    saved, samples = sample_completions(out, hf_tok, args.sample_tokens)
    vl_saved, vt, routing_saved = evaluate(saved, val_chunks, args.batch, args.final_eval_chunks, args.experts)
    log(f"final val loss (saved {args.save_dtype} weights): {vl_saved:.4f} over {vt:,} tokens")
    for s in samples:
        log(f"sample {s['prompt']!r} -> {s['completion']!r}")

    report = {
        "command": command,
        "script_sha256": script_sha256,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "args": vars(args),
        "corpus": {
            "root": str(root),
            "licence": "Python Software Foundation License (see LICENSE.txt in the corpus root)",
            "excluded_dirs": sorted(EXCLUDED_DIRS),
            "train_files": len(train_docs),
            "val_files": len(val_docs),
            "skipped_not_utf8": len(skipped),
            "train_chars": n_chars,
            "train_tokens": int(n_train_chunks * args.seq),
            "val_tokens": int(val_chunks.numel()),
        },
        "tokenizer": {"vocab_size": tok.get_vocab_size(), "special_tokens": SPECIAL_TOKENS, "eos_token": args.eos_token},
        "params": params,
        "steps": step,
        "epochs": round(epoch + cursor / n_train_chunks, 3),
        "tokens_seen": tokens_seen,
        "prep_seconds": round(prep_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "wall_seconds": round(time.time() - log.start, 1),
        "tokens_per_second": round(tokens_seen / train_seconds, 1),
        "final_train_loss": round(final_train_loss, 4),
        "final_val_loss": round(vl_saved, 4),
        "val_tokens_evaluated": vt,
        "val_perplexity": round(math.exp(vl_saved), 3),
        "saved_dtype": args.save_dtype,
        "evals": evals,
        "checkpoints": checkpoints,
        "routing_on_validation": routing_saved,
        "samples": samples,
    }
    (out / "training_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    log(f"report written: {out / 'training_report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
