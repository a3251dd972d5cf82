#!/usr/bin/env python3
"""Starts `moe-serve serve` on MODEL and checks prompt caching on /completion: the same prompt twice
(cache_n, prompt_ms, identical tokens and probabilities) and a prompt sharing a prefix against
cache_prompt=false.  python3 scripts/prompt_cache_check.py .build/release/moe-serve DemoModel"""
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
finally:
    p.terminate(); p.wait()
