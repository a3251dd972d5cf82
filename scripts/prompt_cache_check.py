#!/usr/bin/env python3
"""Starts `moe-serve serve` on MODEL and checks prompt caching on /completion: the same prompt twice
(cache_n, prompt_ms, identical tokens and probabilities) and a prompt sharing a prefix against
cache_prompt=false; then a 2-turn chat with a long first turn, ROUNDS times: turn 2's time to first
token (the server's timings.prompt_ms) with the cache against cache_prompt=false, and whether the
two replies are bit-identical (tokens and logprobs).
python3 scripts/prompt_cache_check.py .build/release/moe-serve DemoModel [ROUNDS] [STORY_LINES]
(STORY_LINES, default 24: repetitions of the 3-line function in turn 1; fewer for a model with a short context)"""
import json, subprocess, sys, time, urllib.request, re
binary, model = sys.argv[1], sys.argv[2]
p = subprocess.Popen([binary, "serve", "--model", model, "--port", "0", "--memory-budget", "96MiB"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
port = None
for line in p.stdout:
    m = re.search(r"127\.0\.0\.1:(\d+)", line)
    if m: port = int(m.group(1)); break
def post(path, body):
    for _ in range(100):
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
            return json.loads(urllib.request.urlopen(req, timeout=120).read())
        except urllib.error.URLError as e:
            if getattr(e, "code", None) not in (None, 503): raise
            time.sleep(0.2)
try:
    words = "the quick brown fox jumps over the lazy dog while the cache keeps every key and value row " * 8
    base = {"n_predict": 8, "temperature": 0.8, "seed": 3, "n_probs": 2}
    a = post("/completion", dict(base, prompt=words))
    b = post("/completion", dict(base, prompt=words))
    print("prompt tokens", a["tokens_evaluated"], "| first: prompt_n", a["timings"]["prompt_n"], "prompt_ms %.1f" % a["timings"]["prompt_ms"],
          "| again: cache_n", b["timings"]["cache_n"], "prompt_n", b["timings"]["prompt_n"], "prompt_ms %.2f" % b["timings"]["prompt_ms"],
          "| same tokens+probs:", a["tokens"] == b["tokens"] and a["completion_probabilities"] == b["completion_probabilities"])
    longer = words + "and then some more words follow here"
    c = post("/completion", dict(base, prompt=longer))
    d = post("/completion", dict(base, prompt=longer, cache_prompt=False))
    print("shared prefix: cache_n", c["timings"]["cache_n"], "of", c["tokens_evaluated"], "prompt_ms %.1f" % c["timings"]["prompt_ms"],
          "| uncached prompt_ms %.1f" % d["timings"]["prompt_ms"],
          "| bit-identical tokens+probs:", c["tokens"] == d["tokens"] and c["completion_probabilities"] == d["completion_probabilities"])
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    story_lines = int(sys.argv[4]) if len(sys.argv) > 4 else 24
    cached_ms, cold_ms, reused, totals, identical = [], [], [], [], True
    for r in range(rounds):
        # A first turn of ~600 tokens, unique per round so that rounds do not hit each other.
        story = f"Round {r}, take {time.time()}: " + "def read(path):\n    with open(path) as f:\n        return f.read()\n" * story_lines
        turn1 = [{"role": "user", "content": story}]
        chat = {"max_tokens": 24, "temperature": 0.8, "seed": 3, "logprobs": True, "top_logprobs": 2}
        first = post("/v1/chat/completions", dict(chat, messages=turn1))
        turn2 = turn1 + [first["choices"][0]["message"], {"role": "user", "content": "Now explain what it does."}]
        turn2[1] = {"role": "assistant", "content": turn2[1]["content"]}
        cached = post("/v1/chat/completions", dict(chat, messages=turn2))
        cold = post("/v1/chat/completions", dict(chat, messages=turn2, cache_prompt=False))
        cached_ms.append(cached["timings"]["prompt_ms"]); cold_ms.append(cold["timings"]["prompt_ms"])
        reused.append(cached["usage"]["prompt_tokens_details"]["cached_tokens"]); totals.append(cached["usage"]["prompt_tokens"])
        identical = identical and cached["choices"][0]["logprobs"] == cold["choices"][0]["logprobs"]
    median = lambda v: sorted(v)[len(v) // 2]
    print("2-turn chat, %d rounds: turn 2 of %d prompt tokens, %d reused (turn 1: %d tokens + its reply)"
          % (rounds, median(totals), median(reused), first["usage"]["prompt_tokens"]),
          "| time to first token: cached %.1f ms, uncached %.1f ms (median), %.1fx"
          % (median(cached_ms), median(cold_ms), median(cold_ms) / max(median(cached_ms), 1e-9)),
          "| bit-identical tokens+logprobs in every round:", identical)
finally:
    p.terminate(); p.wait()
