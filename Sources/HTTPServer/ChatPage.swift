/// The chat page at `GET /chat`, next to the dashboard: self-contained HTML and JavaScript that
/// streams replies through `/v1/chat/completions` (`stream_options.include_usage`, so the last
/// chunk carries `usage` and llama.cpp-style `timings`) and, after each reply, shows the experts
/// that reply's tokens were routed to (`return_experts`: the engine's per-request record, sent
/// with the finishing chunk), the most used per layer. With API keys on, open `/chat?key=<key>`.
enum ChatPage {
    static let html = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>MoEServe chat</title>
<style>
  :root { --bg:#0f1419; --panel:#171d24; --fg:#d8dee6; --dim:#7d8894; --accent:#4fb3ff; }
  * { box-sizing: border-box; }
  body { margin:0; font:14px/1.45 system-ui, sans-serif; background:var(--bg); color:var(--fg); display:flex; flex-direction:column; height:100vh; }
  header { padding:12px 20px; border-bottom:1px solid #252d36; display:flex; gap:16px; align-items:baseline; }
  header h1 { font-size:18px; margin:0; } header a { color:var(--accent); }
  #log { flex:1; overflow:auto; padding:16px 20px; display:flex; flex-direction:column; gap:12px; }
  .msg { max-width:860px; padding:10px 12px; border-radius:8px; background:var(--panel); white-space:pre-wrap; }
  .user { align-self:flex-end; background:#1f3347; }
  .meta { color:var(--dim); font-size:12px; margin-top:6px; white-space:normal; }
  .experts { font-family: ui-monospace, monospace; font-size:11px; color:var(--dim); margin-top:4px; }
  form { display:flex; gap:8px; padding:12px 20px; border-top:1px solid #252d36; }
  textarea { flex:1; resize:none; height:56px; background:var(--panel); color:var(--fg); border:1px solid #2c3640; border-radius:6px; padding:8px; font:inherit; }
  button { background:var(--accent); color:#000; border:0; border-radius:6px; padding:0 18px; font-weight:600; }
  label { color:var(--dim); font-size:12px; }
</style>
</head>
<body>
<header><h1>MoEServe chat</h1><span id="model">—</span><a href="/">dashboard</a>
  <label>max tokens <input id="max" type="number" value="64" min="1" style="width:64px"></label>
  <label>temperature <input id="temp" type="number" value="0.7" step="0.1" min="0" max="2" style="width:56px"></label></header>
<div id="log"></div>
<form id="form"><textarea id="input" placeholder="Message (Enter to send, Shift+Enter for a new line)"></textarea><button id="send">Send</button></form>
<script>
const params = new URLSearchParams(location.search);
if (params.get("key")) localStorage.setItem("moeKey", params.get("key"));
const key = localStorage.getItem("moeKey");
const headers = {"Content-Type": "application/json"};
if (key) headers["Authorization"] = "Bearer " + key;
const log = document.getElementById("log"), input = document.getElementById("input");
const conversation = [];
fetch("/v1/models", {headers}).then(r => r.json()).then(j => { document.getElementById("model").textContent = j.data[0].id; }).catch(() => {});

function bubble(cls, text) {
  const div = document.createElement("div");
  div.className = "msg " + cls;
  div.textContent = text;
  log.appendChild(div);
  log.scrollTop = log.scrollHeight;
  return div;
}

function expertsText(experts) {
  // This reply's own record: per layer, [expert, tokens routed to it], most used first.
  return experts.map((pairs, layer) => pairs.length ? "L" + layer + ": " + pairs.slice(0, 4).map(p => p[0] + "×" + p[1]).join(",") : "")
    .filter(x => x).join("  ");
}

async function send(text) {
  conversation.push({role: "user", content: text});
  bubble("user", text);
  const reply = bubble("assistant", "");
  reply.dataset.state = "streaming";
  const body = {messages: conversation, stream: true, stream_options: {include_usage: true}, return_experts: true,
                max_tokens: Number(document.getElementById("max").value), temperature: Number(document.getElementById("temp").value)};
  const response = await fetch("/v1/chat/completions", {method: "POST", headers, body: JSON.stringify(body)});
  if (!response.ok) { reply.textContent = "error " + response.status + ": " + await response.text(); reply.dataset.state = "error"; return; }
  const reader = response.body.getReader(), decoder = new TextDecoder();
  let buffer = "", replyText = "", usage = null, timings = null, finish = null, experts = null;
  for (;;) {
    const {done, value} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
      if (!event.startsWith("data: ")) continue;
      const data = event.slice(6);
      if (data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.error) { replyText += "\n[error: " + chunk.error.message + "]"; reply.textContent = replyText; continue; }
      if (chunk.usage) { usage = chunk.usage; timings = chunk.timings; }
      for (const c of chunk.choices || []) {
        if (c.delta && c.delta.content) { replyText += c.delta.content; reply.textContent = replyText; log.scrollTop = log.scrollHeight; }
        if (c.finish_reason) finish = c.finish_reason;
        if (c.experts) experts = c.experts;
      }
    }
  }
  conversation.push({role: "assistant", content: replyText});
  const meta = document.createElement("div");
  meta.className = "meta";
  if (timings) {
    const cached = usage.prompt_tokens_details ? usage.prompt_tokens_details.cached_tokens : 0;
    meta.textContent = `${usage.prompt_tokens} prompt tokens (${cached} cached) in ${timings.prompt_ms.toFixed(0)} ms (${timings.prompt_per_second.toFixed(1)}/s) · ` +
      `${usage.completion_tokens} generated in ${timings.predicted_ms.toFixed(0)} ms (${timings.predicted_per_second.toFixed(1)}/s) · finish: ${finish}`;
  }
  reply.appendChild(meta);
  if (experts) {
    const line = document.createElement("div");
    line.className = "experts";
    line.textContent = "experts of this reply (top 4 per layer, expert×tokens): " + expertsText(experts);
    reply.appendChild(line);
  }
  reply.dataset.state = "done";
}

document.getElementById("form").addEventListener("submit", e => {
  e.preventDefault();
  const text = input.value.trim();
  if (!text) return;
  input.value = "";
  send(text);
});
input.addEventListener("keydown", e => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); document.getElementById("form").requestSubmit(); } });
// For headless tests: /chat?message=... sends one message on load (&temperature=0 for a reply that
// does not depend on sampling: at 0.7 the demo model sometimes ends its reply at the first token).
if (params.get("temperature")) document.getElementById("temp").value = params.get("temperature");
if (params.get("message")) send(params.get("message"));
</script>
</body>
</html>
"""#
}
