#!/bin/bash
# One long-running server per policy (docs/expert-cache.md, "A policy that learns"): the 12 Python prompts, 128 tokens each, sequential, then the
# expert-cache counters from /metrics and the per-request decode rates. Usage: scripts/bench_policy_server.sh POLICY [PROMPTS] [PREFETCH]
P=$1; PROMPTS=${2:-$(cd "$(dirname "$0")" && pwd)/prompts/python.jsonl}; PF=${3:-on}
B=${B:-$(cd "$(dirname "$0")/.." && pwd)/.build/release/moe-serve}; M=${M:-/work/bench/w2048}; O=${OUT:-/tmp/bench-policy-server}-$P; mkdir -p $O; rm -f $O/resp-*.json; PORT=18532
$B serve --model $M --host 127.0.0.1 --port $PORT --expert-cache ${CACHE:-64MiB} --cache-policy $P --prefetch $PF > $O/server.log 2>&1 &
PID=$!; trap 'kill $PID 2>/dev/null' EXIT
for i in $(seq 100); do curl -s localhost:$PORT/health >/dev/null && break; sleep 0.2; done
i=0
for round in ${ROUNDS:-1 2}; do
while IFS= read -r line; do
  i=$((i+1))
  python3 -c "import json,sys; print(json.dumps({'prompt': json.loads(sys.argv[1]), 'n_predict': 128, 'temperature': 0, 'cache_prompt': False, 'ignore_eos': True}))" "$line" > $O/req.json
  curl -s localhost:$PORT/completion -d @$O/req.json > $O/resp-$i.json
done < $PROMPTS
done
curl -s localhost:$PORT/metrics > $O/metrics.txt
python3 - "$O" "$P" <<'PY'
import json, glob, statistics, sys, re
o, p = sys.argv[1], sys.argv[2]
d = [json.load(open(f))["timings"]["predicted_per_second"] for f in sorted(glob.glob(o + "/resp-*.json"))]
m = open(o + "/metrics.txt").read()
def g(name):
    r = re.search(r"^" + name + r"(?:\{[^}]*\})? ([0-9.e+]+)$", m, re.M); return float(r.group(1)) if r else None
hits, misses = g("moe_expert_cache_hits_total"), g("moe_expert_cache_misses_total")
print(p, "requests", len(d), "median decode", round(statistics.median(d), 1), "hit rate", round(hits / (hits + misses), 4), "misses", int(misses),
      "read bytes", g("moe_disk_read_bytes_total"))
PY
