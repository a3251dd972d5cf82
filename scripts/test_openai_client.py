#!/usr/bin/env python3
"""Exercises a running moe-serve with the real `openai` client, raw HTTP and prometheus_client.

    pip install openai prometheus_client
    python3 scripts/test_openai_client.py http://127.0.0.1:8080 [--api-key KEY]

Checks completions, chat, streaming (SSE shapes as the openai client parses them), the llama.cpp
route, errors and their status codes, concurrent greedy requests, and /metrics. Prints one line
per check and a closing 'N passed, N failed'; exits non-zero on any failure.
"""
import argparse
import concurrent.futures
import http.client
import json
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

import openai
from prometheus_client.parser import text_string_to_metric_families

RESULTS = []


def check(name, needs_model=False):
    """Registers a check; `needs_model` ones need a real model behind the server (a tokenizer,
    a vocabulary to constrain, a chat template) and are skipped with --scripted."""
    def wrap(fn):
        RESULTS.append((name, fn, needs_model))
        return fn
    return wrap


class Ctx:
    base = ""
    key = None
    client = None
    model = None
    n_ctx = None


def raw(method, path, body=None, headers=None):
    """Returns (status, headers, body bytes) without raising on HTTP errors."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    h = {"Content-Type": "application/json"}
    if Ctx.key:
        h["Authorization"] = f"Bearer {Ctx.key}"
    h.update(headers or {})
    req = urllib.request.Request(Ctx.base + path, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def error_of(body):
    err = json.loads(body)["error"]
    assert set(err) >= {"message", "type", "code"}, err
    return err


@check("GET /v1/models lists the model")
def models():
    listed = Ctx.client.models.list()
    assert len(listed.data) >= 1
    Ctx.model = listed.data[0].id
    status, _, body = raw("GET", "/v1/models")
    Ctx.n_ctx = json.loads(body)["data"][0].get("meta", {}).get("n_ctx")


@check("GET /health is 200")
def health():
    status, _, body = raw("GET", "/health", headers={"Authorization": ""})
    assert status == 200, (status, body)


@check("completions: text, finish_reason, usage")
def completion():
    r = Ctx.client.completions.create(model=Ctx.model, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert isinstance(r.choices[0].text, str)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens >= 1
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


@check("chat: assistant message and usage")
def chat():
    r = Ctx.client.chat.completions.create(model=Ctx.model, messages=[{"role": "user", "content": "Say hello."}],
                                           max_tokens=8, temperature=0)
    assert r.choices[0].message.role == "assistant"
    assert isinstance(r.choices[0].message.content, str)
    assert r.usage.completion_tokens >= 1


@check("chat stream: role first, finish_reason last, usage chunk, same text as non-streaming")
def chat_stream():
    messages = [{"role": "user", "content": "Count to five."}]
    stream = Ctx.client.chat.completions.create(model=Ctx.model, messages=messages, max_tokens=12, temperature=0,
                                                stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant", chunks[0]
    content_chunks = [c for c in chunks if c.choices]
    finishes = [c.choices[0].finish_reason for c in content_chunks]
    assert finishes[-1] in ("stop", "length") and all(f is None for f in finishes[:-1]), finishes
    assert chunks[-1].choices == [] and chunks[-1].usage is not None, chunks[-1]
    text = "".join(c.choices[0].delta.content or "" for c in content_chunks)
    whole = Ctx.client.chat.completions.create(model=Ctx.model, messages=messages, max_tokens=12, temperature=0)
    assert text == whole.choices[0].message.content, (text, whole.choices[0].message.content)


@check("completions stream: text chunks then [DONE]")
def completion_stream():
    chunks = list(Ctx.client.completions.create(model=Ctx.model, prompt="Once upon a time", max_tokens=6,
                                                temperature=0, stream=True))
    assert chunks and chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


@check("llama.cpp /completion: stream ends with stop=true and timings")
def llama_completion():
    status, headers, body = raw("POST", "/completion", {"prompt": "Hello", "n_predict": 4, "temperature": 0, "stream": True})
    assert status == 200 and headers.get("Content-Type", "").startswith("text/event-stream"), (status, headers)
    events = [json.loads(line[6:]) for line in body.decode().split("\n\n") if line.startswith("data: ")]
    assert events[-1]["stop"] is True and "timings" in events[-1], events[-1]
    assert all(e["stop"] is False for e in events[:-1])
    status, _, body = raw("POST", "/completion", {"prompt": "Hello", "n_predict": 4, "temperature": 0})
    j = json.loads(body)
    assert status == 200 and j["stop"] is True and "predicted_per_second" in j["timings"], j


@check("tokenize / detokenize round trip")
def tokenize():
    status, _, body = raw("POST", "/tokenize", {"content": "hello world"})
    assert status == 200, body
    ids = json.loads(body)["tokens"]
    status, _, body = raw("POST", "/detokenize", {"tokens": ids})
    assert status == 200 and json.loads(body)["content"].endswith("hello world"), body


@check("errors: malformed JSON is 400")
def malformed():
    status, _, body = raw("POST", "/v1/completions", b"{not json")
    assert status == 400 and error_of(body)["code"] == 400, (status, body)


@check("errors: wrongly typed field is openai.BadRequestError naming the field")
def wrong_type():
    try:
        Ctx.client.completions.create(model=Ctx.model, prompt="x", max_tokens=4, extra_body={"temperature": "hot"})
    except openai.BadRequestError as e:
        assert "temperature" in str(e), str(e)
    else:
        raise AssertionError("no error")


@check("errors: prompt longer than the context is 400 with both numbers")
def too_long():
    if not Ctx.n_ctx:
        return
    try:
        Ctx.client.completions.create(model=Ctx.model, prompt=[1] * (Ctx.n_ctx + 10), max_tokens=4)
    except openai.BadRequestError as e:
        assert str(Ctx.n_ctx) in str(e) and str(Ctx.n_ctx + 10) in str(e), str(e)
    else:
        raise AssertionError("no error")


@check("errors: 404 unknown route, 405 wrong method")
def not_found():
    status, _, body = raw("GET", "/v1/nothing")
    assert status == 404 and error_of(body)["code"] == 404
    status, headers, body = raw("GET", "/v1/chat/completions")
    assert status == 405 and error_of(body)["code"] == 405


@check("errors: 413 for a body over the limit")
def too_large():
    # Announce a huge body and send none: the server must refuse from the headers alone.
    url = urllib.parse.urlsplit(Ctx.base)
    conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=30)
    conn.putrequest("POST", "/v1/completions")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(1 << 40))
    if Ctx.key:
        conn.putheader("Authorization", f"Bearer {Ctx.key}")
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and error_of(response.read())["code"] == 413, response.status


@check("four concurrent greedy requests return what one alone returns")
def concurrent_requests():
    def one():
        r = Ctx.client.completions.create(model=Ctx.model, prompt="The quick brown fox", max_tokens=10, temperature=0)
        return r.choices[0].text
    alone = one()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: one(), range(4)))
    assert all(r == alone for r in results), (alone, results)


@check("/metrics parses with prometheus_client and counts requests")
def metrics():
    status, headers, body = raw("GET", "/metrics")
    assert status == 200, status
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    # prometheus_client strips the _total suffix from counter family names.
    assert "moe_http_requests" in families, sorted(families)
    samples = families["moe_http_requests"].samples
    assert any(s.labels.get("route") == "/v1/completions" and s.labels.get("status") == "200" and s.value >= 1 for s in samples)
    for name in ("moe_prompt_tokens", "moe_generated_tokens", "moe_resident_memory_bytes"):
        assert name in families, name


PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "ok"],
          "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"},
                         "ok": {"type": "boolean"}}}


def valid_person(doc):
    return (isinstance(doc, dict) and set(doc) == {"name", "age", "ok"} and isinstance(doc["name"], str)
            and len(doc["name"]) <= 12 and isinstance(doc["age"], int) and not isinstance(doc["age"], bool)
            and isinstance(doc["ok"], bool))


@check("unknown fields are 400 naming the field (never silently ignored)")
def unknown_fields():
    for path, body in [("/v1/completions", {"prompt": "x", "max_tokens": 2, "mirostat": 2}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "frobnicate": True}),
                       ("/completion", {"prompt": "x", "n_predict": 2, "typical_p": 0.5})]:
        key = [k for k in body if k not in ("prompt", "max_tokens", "messages", "n_predict")][0]
        status, _, raw_body = raw("POST", path, body)
        assert status == 400 and f"'{key}'" in error_of(raw_body)["message"], (path, status, raw_body)
    try:
        Ctx.client.chat.completions.create(model=Ctx.model, messages=[{"role": "user", "content": "x"}], max_tokens=2,
                                           extra_body={"mirostat_tau": 5})
    except openai.BadRequestError as e:
        assert "mirostat_tau" in str(e), str(e)
    else:
        raise AssertionError("no error")


@check("response_format json_schema (strict): the reply parses and validates, also streamed", needs_model=True)
def structured_output():
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": PERSON}}
    for seed in (1, 2, 3):
        r = Ctx.client.chat.completions.create(model=Ctx.model, messages=[{"role": "user", "content": "A person, as JSON."}],
                                               max_tokens=120, temperature=0.8, seed=seed, response_format=fmt)
        doc = json.loads(r.choices[0].message.content)
        assert valid_person(doc), doc
        assert r.choices[0].finish_reason == "stop", r.choices[0].finish_reason
    chunks = list(Ctx.client.chat.completions.create(model=Ctx.model, messages=[{"role": "user", "content": "JSON please"}],
                                                     max_tokens=120, temperature=0, response_format=fmt, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert valid_person(json.loads(text)), text


@check("response_format json_object, llama.cpp json_schema and GBNF grammar", needs_model=True)
def other_constraints():
    r = Ctx.client.chat.completions.create(model=Ctx.model, messages=[{"role": "user", "content": "JSON"}], max_tokens=200,
                                           temperature=0, response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict), r.choices[0].message.content
    else:
        assert r.choices[0].message.content.startswith("{"), r.choices[0].message.content
    status, _, body = raw("POST", "/completion", {"prompt": "Person:", "n_predict": 120, "temperature": 0, "json_schema": PERSON})
    assert status == 200 and valid_person(json.loads(json.loads(body)["content"])), body
    status, _, body = raw("POST", "/completion", {"prompt": "Answer:", "n_predict": 30, "seed": 5,
                                                  "grammar": 'root ::= ("yes" | "no") ", because " [a-z]{1,10} "."'})
    content = json.loads(body)["content"]
    import re
    assert status == 200 and re.fullmatch(r"(yes|no), because [a-z]{1,10}\.", content), content
    status, _, body = raw("POST", "/completion", {"prompt": "x", "grammar": "root ::= undefined-rule"})
    assert status == 400 and "grammar" in error_of(body)["message"], body
    status, _, body = raw("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                                           "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "a+"}}}})
    assert status == 400 and "pattern" in error_of(body)["message"], body


WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather for a city",
                                             "parameters": {"type": "object", "required": ["city", "unit"], "additionalProperties": False,
                                                            "properties": {"city": {"type": "string", "maxLength": 20},
                                                                           "unit": {"enum": ["celsius", "fahrenheit"]}}}}},
           {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]


@check("tools: a forced call comes back as tool_calls valid for the schema, also as streaming deltas", needs_model=True)
def tool_calls():
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = Ctx.client.chat.completions.create(model=Ctx.model, messages=messages, max_tokens=80, temperature=0, tools=WEATHER,
                                           tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls", r
    assert call.function.name == "get_weather" and call.type == "function" and call.id.startswith("call_"), call
    args = json.loads(call.function.arguments)
    assert set(args) == {"city", "unit"} and args["unit"] in ("celsius", "fahrenheit"), args
    r = Ctx.client.chat.completions.create(model=Ctx.model, messages=messages, max_tokens=80, temperature=0, tools=WEATHER,
                                           tool_choice="required")
    assert r.choices[0].message.tool_calls[0].function.name in ("get_weather", "get_time"), r
    stream = Ctx.client.chat.completions.create(model=Ctx.model, messages=messages, max_tokens=80, temperature=0, tools=WEATHER,
                                                tool_choice="required", stream=True)
    deltas = [tc for c in stream if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas and deltas[0].function.name in ("get_weather", "get_time"), deltas
    json.loads("".join(d.function.arguments or "" for d in deltas))
    # The call and its result go back into the conversation (rendered through the template).
    follow = messages + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                         {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'}]
    r = Ctx.client.chat.completions.create(model=Ctx.model, messages=follow, max_tokens=8, temperature=0, tools=WEATHER,
                                           tool_choice="none")
    assert r.choices[0].message.tool_calls is None, r
    status, _, body = raw("POST", "/v1/chat/completions", {"messages": messages, "tools": WEATHER,
                                                           "tool_choice": {"type": "function", "function": {"name": "nope"}}})
    assert status == 400 and "nope" in error_of(body)["message"], body


@check("n > 1, echo and logit_bias", needs_model=True)
def n_echo_bias():
    r = Ctx.client.completions.create(model=Ctx.model, prompt="def add(a, b):", max_tokens=6, temperature=1.0, seed=11, n=3)
    assert sorted(c.index for c in r.choices) == [0, 1, 2], r
    assert r.usage.completion_tokens >= 3, r.usage
    r2 = Ctx.client.completions.create(model=Ctx.model, prompt="def add(a, b):", max_tokens=6, temperature=1.0, seed=11, n=3)
    assert [c.text for c in r.choices] == [c.text for c in r2.choices], "seeded n>1 is reproducible"
    chunks = list(Ctx.client.chat.completions.create(model=Ctx.model, messages=[{"role": "user", "content": "hi"}],
                                                     max_tokens=4, temperature=0, n=2, stream=True))
    assert {c.choices[0].index for c in chunks if c.choices} == {0, 1}
    r = Ctx.client.completions.create(model=Ctx.model, prompt="import os", max_tokens=4, temperature=0, echo=True)
    assert r.choices[0].text.startswith("import os"), r.choices[0].text
    status, _, body = raw("POST", "/completion", {"prompt": "import", "n_predict": 1, "temperature": 0})
    banned = json.loads(body)["tokens"][0]
    greedy = Ctx.client.completions.create(model=Ctx.model, prompt="import", max_tokens=1, temperature=0)
    biased = Ctx.client.completions.create(model=Ctx.model, prompt="import", max_tokens=1, temperature=0,
                                           logit_bias={str(banned): -100})
    assert biased.choices[0].text != greedy.choices[0].text, (biased.choices[0].text, greedy.choices[0].text)
    status, _, body = raw("POST", "/completion", {"prompt": "import", "n_predict": 1, "temperature": 0,
                                                  "logit_bias": [[banned, False]]})
    assert json.loads(body)["tokens"][0] != banned, body
    status, _, body = raw("POST", "/v1/completions", {"prompt": "x", "suffix": "y", "max_tokens": 2})
    assert status in (200, 400), body
    if status == 400:
        assert "fill-in-the-middle" in error_of(body)["message"], body


def metric(name):
    _, _, body = raw("GET", "/metrics")
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return 0.0


def token_logprobs(choice):
    return [(t.token, t.logprob, [a.logprob for a in t.top_logprobs]) for t in choice.logprobs.content]


@check("prompt caching: a repeated request reuses its whole prompt (cached_tokens, cache_n), bit-identical tokens and logprobs", needs_model=True)
def prompt_cache():
    messages = [{"role": "user", "content": f"Tell me about caches, take {time.time()}."}]
    args = dict(model=Ctx.model, messages=messages, max_tokens=12, temperature=1.0, seed=5, logprobs=True, top_logprobs=2)
    first = Ctx.client.chat.completions.create(**args)
    second = Ctx.client.chat.completions.create(**args)
    assert second.usage.prompt_tokens_details.cached_tokens == second.usage.prompt_tokens, second.usage
    assert token_logprobs(second.choices[0]) == token_logprobs(first.choices[0]), "cached run differs"
    uncached = Ctx.client.chat.completions.create(**args, extra_body={"cache_prompt": False})
    assert uncached.usage.prompt_tokens_details.cached_tokens == 0, uncached.usage
    assert token_logprobs(uncached.choices[0]) == token_logprobs(first.choices[0]), "uncached run differs"
    # llama.cpp's /completion: timings.cache_n and prompt_n; a prompt sharing a prefix reuses it.
    prompt = f"The history of the {int(time.time() * 1000)} caches began"
    body = {"prompt": prompt, "n_predict": 8, "temperature": 0}
    _, _, a = raw("POST", "/completion", body)
    _, _, b = raw("POST", "/completion", body)
    a, b = json.loads(a), json.loads(b)
    assert b["timings"]["cache_n"] == b["tokens_evaluated"] and b["timings"]["prompt_n"] == 0, b["timings"]
    assert a["tokens"] == b["tokens"], (a["tokens"], b["tokens"])
    longer = dict(body, prompt=prompt + " when the first computers")
    _, _, c = raw("POST", "/completion", longer)
    _, _, d = raw("POST", "/completion", dict(longer, cache_prompt=False))
    c, d = json.loads(c), json.loads(d)
    # A partial hit: the shared prefix is reused (the demo model's prefill is exact across
    # chunkings), and the tokens equal an uncached run's.
    assert 0 < c["timings"]["cache_n"] < c["tokens_evaluated"], c["timings"]
    assert c["timings"]["prompt_n"] == c["tokens_evaluated"] - c["timings"]["cache_n"], c["timings"]
    assert d["timings"]["cache_n"] == 0 and c["tokens"] == d["tokens"], (c["tokens"], d["tokens"])
    status, _, body = raw("POST", "/completion", {"prompt": "x", "cache_prompt": "yes"})
    assert status == 400 and "cache_prompt" in error_of(body)["message"], body


@check("prompt caching: a growing chat reuses the last turn (prompt and reply) and is bit-identical to an uncached run", needs_model=True)
def prompt_cache_growing_chat():
    story = f"Take {time.time()}: " + "a cache keeps the keys and values of every earlier token so that " * 6
    turn1 = [{"role": "user", "content": story}]
    args = dict(model=Ctx.model, max_tokens=12, temperature=1.0, seed=9, logprobs=True, top_logprobs=2)
    first = Ctx.client.chat.completions.create(messages=turn1, **args)
    reply = first.choices[0].message.content
    turn2 = turn1 + [{"role": "assistant", "content": reply}, {"role": "user", "content": "And then what happens next?"}]
    cached = Ctx.client.chat.completions.create(messages=turn2, **args)
    cold = Ctx.client.chat.completions.create(messages=turn2, **args, extra_body={"cache_prompt": False})
    # Turn 1's prompt is reused (its last token may merge with the reply's first when turn 2 is
    # tokenized), and the reply as far as it tokenizes as it was generated.
    assert cached.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens - 1, (first.usage, cached.usage)
    assert cached.usage.prompt_tokens_details.cached_tokens < cached.usage.prompt_tokens, cached.usage
    assert cold.usage.prompt_tokens_details.cached_tokens == 0, cold.usage
    assert token_logprobs(cached.choices[0]) == token_logprobs(cold.choices[0]), "cached turn 2 differs from the uncached run"


@check("n > 1 shares one prefill: the other choices start from the first's KV", needs_model=True)
def n_shares_prefill():
    before = metric("moe_prompt_cached_tokens_total")
    prompt = f"def cached_{int(time.time() * 1000)}(a, b):"
    r = Ctx.client.completions.create(model=Ctx.model, prompt=prompt, max_tokens=6, temperature=1.0, seed=3, n=3,
                                      extra_body={"cache_prompt": False})
    assert len(r.choices) == 3, r
    # Per choice: the first ran the prompt, the other two took it from the first's prefill.
    assert metric("moe_prompt_cached_tokens_total") - before == 2 * r.usage.prompt_tokens, (before, r.usage)
    one = Ctx.client.completions.create(model=Ctx.model, prompt=prompt, max_tokens=6, temperature=1.0, seed=3,
                                        extra_body={"cache_prompt": False})
    assert one.choices[0].text == r.choices[0].text, (one.choices[0].text, r.choices[0].text)


@check("return_experts: the experts the reply's tokens were routed to, per layer", needs_model=True)
def return_experts():
    r = Ctx.client.chat.completions.create(model=Ctx.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=8,
                                           temperature=0, extra_body={"return_experts": True, "ignore_eos": True})
    experts = r.choices[0].model_extra["experts"]
    assert len(experts) >= 1 and all(isinstance(layer, list) for layer in experts), experts
    decoded = r.usage.completion_tokens - 1  # the last sampled token is never run
    totals = {sum(count for _, count in layer) for layer in experts if layer}
    assert len(totals) == 1 and totals.pop() % decoded == 0, (experts, r.usage)
    stream = Ctx.client.chat.completions.create(model=Ctx.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=8,
                                                temperature=0, stream=True, extra_body={"return_experts": True, "ignore_eos": True})
    last = [c for c in stream if c.choices and c.choices[0].finish_reason][-1]
    assert last.choices[0].model_extra["experts"] == experts, "streamed record differs"


@check("llama-server routes: /props, /slots, /apply-template, /infill; /v1/models context and quantization", needs_model=True)
def llama_routes():
    status, _, body = raw("GET", "/props")
    props = json.loads(body)
    assert status == 200 and props["default_generation_settings"]["n_ctx"] == Ctx.n_ctx and "chat_template" in props, props
    assert props["build_info"] and props["total_slots"] >= 1, props
    status, _, body = raw("GET", "/slots")
    assert status == 200 and isinstance(json.loads(body), list), body
    status, _, body = raw("POST", "/apply-template", {"messages": [{"role": "user", "content": "Hello"}]})
    assert status == 200 and "Hello" in json.loads(body)["prompt"], body
    status, _, body = raw("POST", "/infill", {"input_prefix": "def f(", "input_suffix": "):", "n_predict": 4})
    assert status in (200, 400), body
    status, _, body = raw("GET", "/v1/models")
    model = json.loads(body)["data"][0]
    assert model["context_length"] == Ctx.n_ctx and model["quantization"], model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url", nargs="?", default="http://127.0.0.1:8080")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--scripted", action="store_true",
                        help="the server replays a fixed script (no model): skip the checks that need one")
    args = parser.parse_args()
    Ctx.base = args.url.rstrip("/")
    Ctx.key = args.api_key
    Ctx.client = openai.OpenAI(base_url=Ctx.base + "/v1", api_key=args.api_key or "unused", max_retries=0, timeout=120)
    passed = failed = 0
    for name, fn, needs_model in RESULTS:
        if needs_model and args.scripted:
            print(f"skip {name} (needs a model)")
            continue
        try:
            fn()
            passed += 1
            print(f"ok   {name}")
        except Exception:
            failed += 1
            print(f"FAIL {name}")
            traceback.print_exc()
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
