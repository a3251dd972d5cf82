#!/usr/bin/env python3
"""Tool calls end to end with the real `openai` client against a served model whose chat template
writes calls in one family's format (DeepSeek-V3, GLM-4.5 or gpt-oss harmony).

    python3 scripts/tool_calls_check.py http://127.0.0.1:PORT deepseek-v3|glm-4.5|harmony

Random-weight models never call a tool by themselves, so every call here is forced
(`tool_choice` a named function, or `required`): the server constrains the reply to the family's
call layout with arguments valid for the function's schema, then parses it back. Checks the
parsed `tool_calls` (non-streaming and as streaming deltas), the rendering of the call and its
result back into the next turn in the family's layout, and `tool_choice: "none"`. Prints one line
per check and exits non-zero on any failure.
"""
import json
import sys
import urllib.request

import openai

# Bounded schemas only: a random model fills every free choice, so nothing may grow without end.
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                           "parameters": {"type": "object", "required": ["city", "unit"], "additionalProperties": False,
                                                          "properties": {"city": {"type": "string", "maxLength": 12},
                                                                         "unit": {"enum": ["celsius", "fahrenheit"]}}}}},
         {"type": "function", "function": {"name": "get_time", "description": "Time in a zone",
                                           "parameters": {"type": "object", "required": ["zone"], "additionalProperties": False,
                                                          "properties": {"zone": {"enum": ["utc", "local"]}}}}}]
# How each family's template writes a past call (what the model was trained to write).
LAYOUT = {"deepseek-v3": "<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n",
          "glm-4.5": "<tool_call>get_weather\n<arg_key>city</arg_key>",
          "harmony": "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"}
MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]


def valid(name, arguments):
    args = json.loads(arguments)
    if name == "get_weather":
        return set(args) == {"city", "unit"} and isinstance(args["city"], str) and len(args["city"]) <= 12 \
            and args["unit"] in ("celsius", "fahrenheit")
    return name == "get_time" and args == {"zone": args.get("zone")} and args["zone"] in ("utc", "local")


def main():
    base, family = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=300)
    model = client.models.list().data[0].id
    failures = 0

    def check(name, fn):
        nonlocal failures
        try:
            fn()
            print(f"ok   {name}")
        except Exception as error:  # noqa: BLE001 - every failure is reported, then counted
            failures += 1
            print(f"FAIL {name}: {error!r}")

    calls = {}

    def named():
        r = client.chat.completions.create(model=model, messages=MESSAGES, temperature=0, tools=TOOLS,
                                           tool_choice={"type": "function", "function": {"name": "get_weather"}})
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls", r
        assert choice.message.content in (None, ""), r
        call = choice.message.tool_calls[0]
        assert len(choice.message.tool_calls) == 1 and call.type == "function" and call.id.startswith("call_"), r
        assert call.function.name == "get_weather" and valid(call.function.name, call.function.arguments), call
        calls["named"] = call
        print(f"     {family}: get_weather({call.function.arguments}), {r.usage.completion_tokens} tokens")

    def required():
        r = client.chat.completions.create(model=model, messages=MESSAGES, temperature=0, tools=TOOLS, tool_choice="required")
        call = r.choices[0].message.tool_calls[0]
        assert r.choices[0].finish_reason == "tool_calls", r
        assert call.function.name in ("get_weather", "get_time") and valid(call.function.name, call.function.arguments), call
        calls["required"] = call

    def streamed():
        stream = client.chat.completions.create(model=model, messages=MESSAGES, temperature=0, tools=TOOLS,
                                                tool_choice="required", stream=True, stream_options={"include_usage": True})
        deltas, finish, content = [], None, ""
        for chunk in stream:
            for choice in chunk.choices:
                deltas += choice.delta.tool_calls or []
                content += choice.delta.content or ""
                finish = choice.finish_reason or finish
        assert finish == "tool_calls" and content == "", (finish, content)
        assert deltas and deltas[0].id and deltas[0].function.name, deltas
        arguments = "".join(d.function.arguments or "" for d in deltas)
        assert valid(deltas[0].function.name, arguments), deltas
        # Greedy: the stream writes the call the non-streaming request wrote.
        assert (deltas[0].function.name, json.loads(arguments)) == \
            (calls["required"].function.name, json.loads(calls["required"].function.arguments)), (deltas, calls["required"])

    def history():
        call = calls["named"]
        follow = MESSAGES + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                             {"role": "tool", "tool_call_id": call.id, "name": "get_weather", "content": '{"temp": 21}'}]
        request = urllib.request.Request(base + "/apply-template", data=json.dumps({"messages": follow, "tools": TOOLS}).encode(),
                                         headers={"Content-Type": "application/json"})
        prompt = json.loads(urllib.request.urlopen(request, timeout=60).read())["prompt"]
        assert LAYOUT[family] in prompt, prompt
        r = client.chat.completions.create(model=model, messages=follow, max_tokens=4, temperature=0, tools=TOOLS, tool_choice="none")
        assert r.choices[0].message.tool_calls is None and r.usage.prompt_tokens > 0, r

    check(f"{family}: a named tool_choice comes back as one parsed tool call valid for the schema", named)
    check(f"{family}: tool_choice required calls one of the tools", required)
    check(f"{family}: the same call as streaming tool_calls deltas", streamed)
    if "named" in calls:
        check(f"{family}: the call and its result render back in the family's layout; tool_choice none", history)
    print(f"{family}: {failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
