#!/usr/bin/env python3
"""Failover through Deploy/nginx/moe-serve.conf, on loopback (run by Tests/DeployTests in CI).

Three replicas of the built `moe-serve serve` on the demo model behind Debian's nginx; clients
send mixed load (streaming and not, completions and chat, with and without X-Session-Id) for
--seconds; one replica is killed with SIGKILL while it has requests in flight and restarted.
Checks:
  - no request hangs: each ends within the client timeout;
  - every request that failed had been handed to the killed replica (nginx's access log says which
    replica served each request), and failed cleanly: a 502 or a closed connection;
  - every other request succeeded, including those nginx moved off the dead replica because
    their connection was refused;
  - traffic returns: the restarted replica answers generation requests (its /metrics counts them);
  - each replica's /metrics parses and counts the requests it served.
Prints a JSON summary; exits 1 with the failed checks named otherwise.

  python3 scripts/nginx_failover_test.py --binary .build/release/moe-serve [--seconds 60]
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from deploy_harness import Nginx, Replica, complete, free_port, metric_sum  # noqa: E402

PROMPTS = ["def fibonacci(n):", "import os\nimport sys\n\n", "class Stack:\n    def __init__(self):",
           "with open(filename, 'rb') as f:\n", "The quick brown fox", "try:\n    import json\nexcept ImportError:\n"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=120, help="client timeout: a request longer than this hung")
    parser.add_argument("--check-config", action="store_true", help="only render the config for 3 replicas and run nginx -t")
    args = parser.parse_args()
    if args.check_config:
        workdir = tempfile.mkdtemp(prefix="moe-nginx-check-")
        print(Nginx(workdir, [free_port() for _ in range(3)]).check().strip())
        shutil.rmtree(workdir, ignore_errors=True)
        return 0

    workdir = tempfile.mkdtemp(prefix="moe-failover-")
    ports = [free_port() for _ in range(3)]
    replicas = [Replica(args.binary, p, workdir, f"replica{i}", ["--memory-budget", "80MiB", "--max-queued-requests", "32"])
                for i, p in enumerate(ports)]
    nginx = Nginx(workdir, ports)
    failures = []
    results = []
    lock = threading.Lock()
    try:
        nginx.check()
        for r in replicas:
            r.start()
        for r in replicas:
            r.wait_ready()
        nginx.start()

        stop_at = time.time() + args.seconds
        counter = [0]

        def client(index):
            n = 0
            while time.time() < stop_at:
                n += 1
                with lock:
                    counter[0] += 1
                    tag = f"c{index}-{counter[0]}"
                stream = n % 2 == 0
                chat = n % 3 == 0
                prompt = PROMPTS[(index + n) % len(PROMPTS)]
                headers = {"X-Request-Tag": tag}
                if index % 2 == 1:
                    headers["X-Session-Id"] = f"session-{index}"
                if chat:
                    path, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": prompt}]}
                else:
                    path, body = "/v1/completions", {"prompt": prompt}
                body.update({"max_tokens": args.max_tokens, "temperature": 0})
                started = time.time()
                outcome, detail = complete(nginx.port, path, body, headers, stream=stream, timeout=args.timeout)
                with lock:
                    results.append({"tag": tag, "stream": stream, "path": path, "started": started,
                                    "ended": time.time(), "outcome": outcome,
                                    "detail": detail if outcome != "ok" else None})

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()

        # A third of the way in, kill replica 1 while it is busy (waiting up to 10 s for a request in flight).
        victim = replicas[1]
        time.sleep(args.seconds / 3)
        deadline = time.time() + 10
        in_flight_at_kill = 0
        while time.time() < deadline:
            try:
                in_flight_at_kill = metric_sum(victim.metrics(), "moe_http_generation_requests_in_flight")
            except RuntimeError:
                in_flight_at_kill = 0
            if in_flight_at_kill >= 1:
                break
            time.sleep(0.05)
        killed_at = time.time()
        victim.kill()
        time.sleep(3)
        victim.start()
        victim.wait_ready()
        restarted_at = time.time()

        for t in threads:
            t.join(args.seconds + args.timeout + 30)
        if any(t.is_alive() for t in threads):
            failures.append("a client thread is still waiting: a request hung")

        time.sleep(0.5)  # nginx writes the access log line when the response ends
        log = {e["tag"]: e for e in nginx.access_log() if e["tag"] != "-"}
        victim_address = f"127.0.0.1:{victim.port}"
        summary = {"requests": len(results), "ok": 0, "failed": 0, "failed_on_victim": 0, "moved_off_victim": 0,
                   "hung": 0, "in_flight_at_kill": in_flight_at_kill, "outcomes": {}}
        for r in results:
            summary["outcomes"][r["outcome"]] = summary["outcomes"].get(r["outcome"], 0) + 1
            entry = log.get(r["tag"])
            upstreams = entry["upstream"] if entry else []
            if len(upstreams) > 1 and upstreams[0] == victim_address:
                summary["moved_off_victim"] += 1
            if r["outcome"] == "ok":
                summary["ok"] += 1
                continue
            summary["failed"] += 1
            if r["outcome"] == "timeout":
                summary["hung"] += 1
                failures.append(f"request {r['tag']} hung: {r['detail']}")
                continue
            if r["outcome"] == "http_error" and r["detail"] not in (502, 504):
                failures.append(f"request {r['tag']} failed with HTTP {r['detail']} (only 502/504 are clean)")
            # A request that failed must have been handed to the victim, around the kill.
            if not upstreams or upstreams[-1] != victim_address:
                failures.append(f"request {r['tag']} failed ({r['outcome']}: {r['detail']}) but was served by {upstreams}")
            elif not (r["started"] <= killed_at + 2 and r["ended"] >= killed_at - 1):
                failures.append(f"request {r['tag']} failed on the victim outside the kill window")
            else:
                summary["failed_on_victim"] += 1

        # Traffic came back to the restarted replica, and every replica's /metrics counts what it served.
        summary["replicas"] = []
        for r in replicas:
            samples = r.metrics()
            generation = sum(metric_sum(samples, "moe_http_requests_total", route=route, status="200")
                             for route in ("/v1/completions", "/v1/chat/completions"))
            tokens = metric_sum(samples, "moe_generated_tokens_total")
            summary["replicas"].append({"port": r.port, "starts": r.starts, "generation_requests_200": generation,
                                        "generated_tokens": tokens})
            if generation < 1:
                failures.append(f"{r.name} (port {r.port}, started {r.starts}x) served no generation request"
                                + (" after its restart" if r is victim else ""))
        served_after_restart = sum(1 for e in log.values() if e["upstream"] and e["upstream"][-1] == victim_address
                                   and e["status"] == 200)
        summary["victim_requests_200_in_log"] = served_after_restart
        summary["killed_at_s"] = round(killed_at - (stop_at - args.seconds), 1)
        summary["restarted_after_s"] = round(restarted_at - killed_at, 1)
        if summary["ok"] < len(results) // 2:
            failures.append(f"only {summary['ok']} of {len(results)} requests succeeded")
        if len(results) < 10:
            failures.append(f"only {len(results)} requests in {args.seconds} s: the load did not run")
    except Exception as error:  # noqa: BLE001 - report any harness failure as a test failure
        failures.append(f"{type(error).__name__}: {error}")
        summary = {}
    finally:
        nginx.stop()
        for r in replicas:
            r.stop()

    summary["failures"] = failures
    print(json.dumps(summary, indent=1))
    if failures:
        print(f"FAILED: {len(failures)} check(s); logs in {workdir}", file=sys.stderr)
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
