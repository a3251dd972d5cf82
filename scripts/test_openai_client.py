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
import traceback
import urllib.error
import urllib.parse
import urllib.request

import openai
from prometheus_client.parser import text_string_to_metric_families

RESULTS = []


def check(name):
    def wrap(fn):
        RESULTS.append((name, fn))
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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url", nargs="?", default="http://127.0.0.1:8080")
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()
    Ctx.base = args.url.rstrip("/")
    Ctx.key = args.api_key
    Ctx.client = openai.OpenAI(base_url=Ctx.base + "/v1", api_key=args.api_key or "unused", max_retries=0, timeout=120)
    passed = failed = 0
    for name, fn in RESULTS:
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
