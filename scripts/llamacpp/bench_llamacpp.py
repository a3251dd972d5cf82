#!/usr/bin/env python3
"""llama-bench-style prefill / decode timings of a GGUF model through llama-cpp-python.

    python bench_llamacpp.py --model OUT.gguf --prompt-tokens 64 --gen-tokens 16 --runs 3 \
        [--threads 2] [--no-mmap] [--seed 0] [--drop-caches]

Each run starts cold: the model is unloaded, the GGUF file's pages are dropped from the page cache
(posix_fadvise(POSIX_FADV_DONTNEED) on the file; with --drop-caches also `echo 1 >
/proc/sys/vm/drop_caches`, which is machine-wide), the fraction of the file still resident is
measured (mincore) and reported, then the model is loaded again (mmap by default, as llama.cpp
does), a fixed random prompt of N token ids is decoded in one batch (n_batch = n_ubatch >= N),
and M tokens are sampled (temperature 1, seeded), one llama_decode per token.

prefill tokens/s = N / (time of the prompt's llama_decode)
decode tokens/s  = M / (time of the M single-token llama_decodes, sampling included)

Decode inputs are sampled at temperature 1 with a seeded generator, as `moe-serve bench decode` does:
greedy decoding of a random-weight model repeats one token and would route every step to the same
experts.
Load time (model + context creation) is reported apart and counted in neither.

stdout: JSON {"prefill_tokens_per_second": median, "decode_tokens_per_second": median, "runs": [...],
              "peak_rss_bytes": ..., ...}
stderr: a Markdown table.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import platform
import resource
import statistics
import sys
import time

import numpy as np


def drop_file_cache(path: str, global_drop: bool) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    if global_drop:
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("1\n")
        except OSError as e:
            print(f"warning: cannot write /proc/sys/vm/drop_caches: {e}", file=sys.stderr)


def resident_fraction(path: str) -> float:
    """Fraction of the file's pages in the page cache (mincore on a fresh read-only mapping)."""
    size = os.path.getsize(path)
    if size == 0:
        return 0.0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            return float("nan")
        try:
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(addr, size, vec) != 0:
                return float("nan")
            arr = np.frombuffer(vec, dtype=np.uint8)
            return float(np.count_nonzero(arr & 1)) / pages
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)


def proc_status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) * 1024
    return out


def one_run(args, prompt: list[int]) -> dict:
    import llama_cpp
    from llama_cpp import Llama

    drop_file_cache(args.model, args.drop_caches)
    resident = resident_fraction(args.model)

    t0 = time.perf_counter()
    llm = Llama(model_path=args.model, n_ctx=args.prompt_tokens + args.gen_tokens + 8,
                n_batch=max(args.prompt_tokens, 1), n_ubatch=max(args.prompt_tokens, 1),
                n_threads=args.threads, n_threads_batch=args.threads,
                use_mmap=not args.no_mmap, logits_all=False, verbose=args.verbose, seed=args.seed)
    t_load = time.perf_counter() - t0
    rss_after_load = proc_status()
    n_vocab = llm.n_vocab()
    ctx = llm._ctx.ctx

    def last_logits() -> np.ndarray:
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))

    llama_cpp.llama_perf_context_reset(ctx)
    t0 = time.perf_counter()
    llm.eval(prompt)
    rng = np.random.default_rng(args.seed)

    def sample() -> int:
        logits = last_logits().astype(np.float64)
        p = np.exp(logits - logits.max())
        return int(rng.choice(len(p), p=p / p.sum()))

    tok = sample()
    t_prefill = time.perf_counter() - t0

    generated = []
    step_times = []
    t0 = time.perf_counter()
    for _ in range(args.gen_tokens):
        ts = time.perf_counter()
        llm.eval([tok])
        generated.append(tok)
        tok = sample()
        step_times.append(time.perf_counter() - ts)
    t_decode = time.perf_counter() - t0
    perf = llama_cpp.llama_perf_context(ctx)
    rss_end = proc_status()
    del llm
    return {
        "resident_fraction_before": resident,
        "load_seconds": t_load,
        "prefill_seconds": t_prefill,
        "decode_seconds": t_decode,
        "prefill_tokens_per_second": args.prompt_tokens / t_prefill,
        "decode_tokens_per_second": args.gen_tokens / t_decode if args.gen_tokens else None,
        "decode_step_seconds_min": min(step_times) if step_times else None,
        "decode_step_seconds_max": max(step_times) if step_times else None,
        "decode_step_seconds": step_times,
        "llama_perf": {"t_p_eval_ms": perf.t_p_eval_ms, "n_p_eval": perf.n_p_eval,
                       "t_eval_ms": perf.t_eval_ms, "n_eval": perf.n_eval},
        "rss_after_load_bytes": rss_after_load.get("VmRSS"),
        "rss_end_bytes": rss_end.get("VmRSS"),
        "rss_file_end_bytes": rss_end.get("RssFile"),
        "rss_anon_end_bytes": rss_end.get("RssAnon"),
        "generated": generated,
    }


def summary(vals: list[float]) -> dict:
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-mmap", action="store_true", help="read the whole model into anonymous memory")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random prompt")
    ap.add_argument("--drop-caches", action="store_true",
                    help="also echo 1 > /proc/sys/vm/drop_caches before each run (machine-wide)")
    ap.add_argument("--verbose", action="store_true", help="let llama.cpp log")
    args = ap.parse_args()

    import llama_cpp
    from llama_cpp import Llama

    # Vocabulary size without loading the weights.
    probe = Llama(model_path=args.model, vocab_only=True, verbose=False)
    n_vocab = probe.n_vocab()
    del probe
    rng = np.random.default_rng(args.seed)
    # Skip the first ids (special tokens in our tokenizers).
    prompt = [int(t) for t in rng.integers(min(3, n_vocab - 1), n_vocab, size=args.prompt_tokens)]

    runs = []
    for i in range(args.runs):
        r = one_run(args, prompt)
        runs.append(r)
        print(f"run {i + 1}/{args.runs}: load {r['load_seconds']:.2f} s, prefill {r['prefill_tokens_per_second']:.2f} tok/s, "
              f"decode {r['decode_tokens_per_second'] or 0:.3f} tok/s, resident before {r['resident_fraction_before']:.3f}",
              file=sys.stderr)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    pre = summary([r["prefill_tokens_per_second"] for r in runs])
    dec = summary([r["decode_tokens_per_second"] for r in runs]) if args.gen_tokens else None
    load = summary([r["load_seconds"] for r in runs])
    same = all(r["generated"] == runs[0]["generated"] for r in runs)
    out = {
        "engine": "llama.cpp via llama-cpp-python",
        "llama_cpp_python_version": llama_cpp.__version__,
        "model": os.path.abspath(args.model),
        "model_bytes": os.path.getsize(args.model),
        "prompt_tokens": args.prompt_tokens,
        "gen_tokens": args.gen_tokens,
        "threads": args.threads,
        "mmap": not args.no_mmap,
        "cold": "posix_fadvise DONTNEED on the GGUF before each run" + (" + drop_caches" if args.drop_caches else ""),
        "prefill_tokens_per_second": pre["median"],
        "decode_tokens_per_second": dec["median"] if dec else None,
        "prefill": pre,
        "decode": dec,
        "load_seconds": load,
        "peak_rss_bytes": ru.ru_maxrss * 1024,
        "major_page_faults": ru.ru_majflt,
        "greedy_identical_across_runs": same,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "runs": runs,
    }
    print(json.dumps(out, indent=1))

    def f(x, p=2):
        return "-" if x is None else f"{x:.{p}f}"
    t = [
        f"| model | mmap | threads | test | tokens/s median | min | max |",
        "|---|---|---|---|---:|---:|---:|",
        f"| {os.path.basename(args.model)} ({out['model_bytes'] / 2**30:.2f} GiB) | {out['mmap']} | {args.threads} "
        f"| pp{args.prompt_tokens} | {f(pre['median'])} | {f(pre['min'])} | {f(pre['max'])} |",
    ]
    if dec:
        t.append(f"| | | | tg{args.gen_tokens} | {f(dec['median'], 3)} | {f(dec['min'], 3)} | {f(dec['max'], 3)} |")
    t.append("")
    t.append(f"runs {args.runs}, load {f(load['median'])} s median, peak RSS {out['peak_rss_bytes'] / 2**20:.0f} MiB, "
             f"major faults {ru.ru_majflt}, greedy tokens identical across runs: {same}")
    print("\n".join(t), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
