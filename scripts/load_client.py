#!/usr/bin/env python3
"""Load for scripts/load_test.sh: CONNECTIONS clients for SECONDS against a moe-serve on loopback.

Each client keeps one keep-alive connection and loops over a seeded mix: streaming and
non-streaming chat and completions, and client disconnects (closing mid-stream, or right after
sending a request). It prints one JSON object: requests by status, latency percentiles of the
completed requests, 5xx answers other than 503 with Retry-After, and disconnects made.
Standard library only.
"""
import http.client
import json
import random
import sys
import threading
import time

port, seconds, connections = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
seed = int(sys.argv[4]) if len(sys.argv) > 4 else 6
deadline = time.monotonic() + seconds
lock = threading.Lock()
statuses, latencies, bad_5xx, errors = {}, [], [], []
counts = {"disconnect_mid_stream": 0, "disconnect_after_send": 0, "streams": 0, "non_streaming": 0}

PROMPTS = ["def fibonacci(n):", "import os\nimport sys\n\nclass Config:", "def parse_args(argv):\n",
           "for i in range(10):", "# A function that sorts a list\n"]


def request_body(rng, stream):
    if rng.random() < 0.5:
        return "/v1/chat/completions", {"messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
                                        "max_tokens": rng.randint(4, 24), "temperature": 0.7, "stream": stream}
    return "/v1/completions", {"prompt": rng.choice(PROMPTS), "max_tokens": rng.randint(4, 24),
                               "temperature": 0.7, "stream": stream}


def note(status, headers, started):
    with lock:
        statuses[status] = statuses.get(status, 0) + 1
        if status >= 500 and not (status == 503 and headers.get("Retry-After")):
            bad_5xx.append(status)
        if status == 200:
            latencies.append(time.monotonic() - started)


def client(index):
    rng = random.Random(seed * 1000 + index)
    conn = None
    while time.monotonic() < deadline:
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        stream = rng.random() < 0.5
        path, body = request_body(rng, stream)
        disconnect = rng.random()
        started = time.monotonic()
        try:
            conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
            if disconnect < 0.05:
                # Gone right after sending: the server must cancel the request.
                conn.close(); conn = None
                with lock: counts["disconnect_after_send"] += 1
                continue
            response = conn.getresponse()
            if stream and response.status == 200:
                with lock: counts["streams"] += 1
                lines = 0
                cut = disconnect < 0.15
                while True:
                    line = response.readline()
                    if not line:
                        break
                    lines += 1
                    if cut and lines >= 3:
                        break
                if cut:
                    conn.close(); conn = None
                    with lock: counts["disconnect_mid_stream"] += 1
                    continue
                note(response.status, response.headers, started)
            else:
                response.read()
                with lock: counts["non_streaming"] += 1
                note(response.status, response.headers, started)
            if response.getheader("Connection", "").lower() == "close":
                conn.close(); conn = None
            elif response.status == 503:
                time.sleep(float(response.getheader("Retry-After", "1")))
        except Exception as error:  # a reset or timeout is a finding, not a crash of the driver
            with lock: errors.append(repr(error)[:120])
            try:
                conn.close()
            except Exception:
                pass
            conn = None


threads = [threading.Thread(target=client, args=(i,)) for i in range(connections)]
for t in threads:
    t.start()
for t in threads:
    t.join()
latencies.sort()


def percentile(p):
    return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 1) if latencies else None


print(json.dumps({
    "seconds": seconds, "connections": connections, "completed": len(latencies),
    "statuses": {str(k): v for k, v in sorted(statuses.items())},
    "latency_ms": {"p50": percentile(0.50), "p99": percentile(0.99), "max": percentile(1.0)},
    "bad_5xx": len(bad_5xx), "client_errors": len(errors), "first_errors": errors[:5], **counts,
}))
