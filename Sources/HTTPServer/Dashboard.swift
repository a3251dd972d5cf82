/// The page served at `GET /`: self-contained HTML, CSS and JavaScript (no external assets, so
/// it works offline and leaks nothing), polling `/v1/stats` once a second. With API keys on,
/// open it as `/?key=<key>`; the key is kept in this browser's localStorage only.
enum Dashboard {
    static let html = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>MoEServe</title>
<style>
  :root { --bg:#0f1419; --panel:#171d24; --fg:#d8dee6; --dim:#7d8894; --accent:#4fb3ff; --green:#5ad18a; }
  * { box-sizing: border-box; }
  body { margin:0; font:14px/1.4 system-ui, sans-serif; background:var(--bg); color:var(--fg); }
  header { padding:14px 20px; display:flex; gap:16px; align-items:baseline; border-bottom:1px solid #252d36; }
  header h1 { font-size:18px; margin:0; }
  #status { color:var(--dim); }
  main { padding:16px 20px; display:grid; gap:16px; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); }
  .panel { background:var(--panel); border-radius:8px; padding:12px 14px; }
  .panel h2 { font-size:13px; font-weight:600; color:var(--dim); margin:0 0 8px; text-transform:uppercase; letter-spacing:.04em; }
  .big { font-size:28px; font-variant-numeric: tabular-nums; }
  .row { display:flex; gap:24px; flex-wrap:wrap; }
  .row div span { display:block; color:var(--dim); font-size:12px; }
  canvas { width:100%; height:140px; display:block; }
  #heat { height:auto; image-rendering: pixelated; }
  .wide { grid-column: 1 / -1; }
  .legend { color:var(--dim); font-size:12px; margin-top:6px; }
</style>
</head>
<body>
<header><h1>MoEServe</h1><span id="model">—</span><span id="status">connecting…</span></header>
<main>
  <section class="panel">
    <h2>Throughput</h2>
    <div class="row">
      <div><span>decode tokens/s</span><b class="big" id="tps">0</b></div>
      <div><span>prompt tokens/s</span><b class="big" id="pps">0</b></div>
    </div>
    <canvas id="tpsChart" width="600" height="140"></canvas>
  </section>
  <section class="panel">
    <h2>Expert cache</h2>
    <div class="row">
      <div><span>hit rate</span><b class="big" id="hit">0%</b></div>
      <div><span>cache used / budget</span><b id="cache">0 / 0</b></div>
      <div><span>resident memory</span><b id="rss">0</b></div>
      <div><span>running / queued</span><b id="seqs">0 / 0</b></div>
    </div>
    <canvas id="hitChart" width="600" height="140"></canvas>
  </section>
  <section class="panel wide">
    <h2>Experts: usage by layer (rows) × expert (columns)</h2>
    <canvas id="heat" width="10" height="10"></canvas>
    <div class="legend">Brightness: how often the router picked the expert recently. A green bar under a cell: resident in the cache now.</div>
  </section>
</main>
<script>
"use strict";
const params = new URLSearchParams(location.search);
if (params.get("key")) localStorage.setItem("moe-key", params.get("key"));
const key = localStorage.getItem("moe-key");
const history = { tps: [], hit: [] };
const N = 120;

function fmtBytes(n) {
  const u = ["B","KiB","MiB","GiB","TiB"]; let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + " " + u[i];
}

function line(canvas, values, max, color, unit) {
  // Match the drawing buffer to the displayed size so text and lines are not stretched.
  if (canvas.clientWidth && canvas.width !== canvas.clientWidth) canvas.width = canvas.clientWidth;
  const c = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
  c.clearRect(0, 0, w, h);
  c.strokeStyle = "#252d36"; c.lineWidth = 1;
  for (let i = 1; i < 4; i++) { c.beginPath(); c.moveTo(0, h * i / 4); c.lineTo(w, h * i / 4); c.stroke(); }
  c.fillStyle = "#7d8894"; c.font = "11px system-ui"; c.fillText(max.toFixed(max < 10 ? 2 : 0) + unit, 4, 12);
  if (values.length < 2) return;
  c.strokeStyle = color; c.lineWidth = 2; c.beginPath();
  values.forEach((v, i) => {
    const x = w * (i + N - values.length) / (N - 1), y = h - 4 - (h - 8) * Math.min(v / max, 1);
    i ? c.lineTo(x, y) : c.moveTo(x, y);
  });
  c.stroke();
}

function heatmap(canvas, usage, resident) {
  const layers = usage.length, experts = layers ? Math.max(...usage.map(r => r.length)) : 0;
  if (!layers || !experts) { canvas.width = 10; canvas.height = 10; return; }
  const cell = Math.max(4, Math.min(24, Math.floor((canvas.parentElement.clientWidth - 30) / experts)));
  canvas.width = experts * cell; canvas.height = layers * cell;
  canvas.style.width = canvas.width + "px"; canvas.style.height = canvas.height + "px";
  const c = canvas.getContext("2d");
  const max = Math.max(1e-9, ...usage.flat());
  for (let l = 0; l < layers; l++) for (let e = 0; e < usage[l].length; e++) {
    const v = Math.sqrt(usage[l][e] / max);
    c.fillStyle = `rgb(${Math.round(20 + 60 * v)}, ${Math.round(30 + 150 * v)}, ${Math.round(45 + 210 * v)})`;
    c.fillRect(e * cell, l * cell, cell - 1, cell - 1);
    if (resident[l] && resident[l][e]) {
      c.fillStyle = "#5ad18a";
      c.fillRect(e * cell, l * cell + cell - 4, cell - 1, 3);
    }
  }
}

async function poll() {
  try {
    const r = await fetch("/v1/stats", { headers: key ? { Authorization: "Bearer " + key } : {} });
    if (r.status === 401) { document.getElementById("status").textContent = "needs an API key: open /?key=<key>"; return; }
    const s = await r.json();
    document.getElementById("status").textContent = s.ready ? "ready" : "loading model…";
    document.getElementById("model").textContent = s.model || "—";
    document.getElementById("tps").textContent = s.decode_tokens_per_second.toFixed(1);
    document.getElementById("pps").textContent = s.prompt_tokens_per_second.toFixed(1);
    document.getElementById("hit").textContent = (100 * s.cache_hit_rate).toFixed(1) + "%";
    document.getElementById("cache").textContent = fmtBytes(s.cache_bytes_used) + " / " + fmtBytes(s.cache_bytes_budget);
    document.getElementById("rss").textContent = fmtBytes(s.resident_bytes);
    document.getElementById("seqs").textContent = s.running_sequences + " / " + s.queued_requests;
    history.tps.push(s.decode_tokens_per_second); history.hit.push(s.cache_hit_rate);
    for (const k in history) if (history[k].length > N) history[k].shift();
    line(document.getElementById("tpsChart"), history.tps, Math.max(1, ...history.tps) * 1.1, "#4fb3ff", " tok/s");
    line(document.getElementById("hitChart"), history.hit, 1, "#5ad18a", "");
    heatmap(document.getElementById("heat"), s.expert_usage, s.expert_resident);
  } catch (e) {
    document.getElementById("status").textContent = "server unreachable";
  }
}
poll();
setInterval(poll, 1000);
</script>
</body>
</html>
"""#
}
