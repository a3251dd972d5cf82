#!/usr/bin/env python3
"""Load for scripts/serve_prefetch_ab.sh: CLIENTS clients for SECONDS against a moe-serve on PORT.

Each client keeps one connection and sends /completion requests one after another: a prompt from a fixed list,
50-250 tokens (ignore_eos), temperature 0.7, from a generator seeded by the client's number, so every run of the
same load asks for the same tokens. Prints one JSON object: tokens generated, seconds, tokens per second, and the
server's moe_prefetch_auto_* lines. Standard library only.
"""
import http.client
import json
import random
import sys
import threading
import time

port, seconds, clients = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
PROMPTS = ["def fibonacci(n):", "import os\nimport sys\n\nclass Config:", "def parse_args(argv):\n", "for i in range(10):"]
deadline = time.monotonic() + seconds
lock = threading.Lock()
generated = [0]


def client(number):
    rng = random.Random(number)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    while time.monotonic() < deadline:
        body = {"prompt": rng.choice(PROMPTS), "n_predict": rng.randint(50, 250), "temperature": 0.7,
                "seed": rng.randint(0, 1 << 30), "ignore_eos": True}
        conn.request("POST", "/completion", json.dumps(body), {"Content-Type": "application/json"})
        answer = json.loads(conn.getresponse().read())
        with lock:
            generated[0] += answer.get("tokens_predicted", 0)


start = time.monotonic()
threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
elapsed = time.monotonic() - start
conn = http.client.HTTPConnection("127.0.0.1", port)
conn.request("GET", "/metrics")
auto = [line for line in conn.getresponse().read().decode().split("\n") if line.startswith("moe_prefetch_auto")]
print(json.dumps({"tokens": generated[0], "seconds": round(elapsed, 1), "tokens_per_second": round(generated[0] / elapsed, 1),
                  "auto": sorted(auto)}))
