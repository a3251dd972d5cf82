#!/usr/bin/env python3
"""Render conversations through published DeepSeek (V3 / R1 / V3.1), GLM-4.5 and MiniMax-M2 chat templates
with transformers' own renderer, for MoEServe's ChatTemplates interpreter to reproduce byte for byte.

The templates are the models' files (tokenizer_config.json "chat_template" or chat_template.jinja) and are
not committed here: put them in a directory as NAME.jinja, with NAME starting with deepseek, glm or minimax
(it picks the family's special tokens and thinking switch), and run

    python scripts/make_family_template_reference.py TEMPLATES_DIR OUT_DIR
    MOE_TEMPLATE_CASES=OUT_DIR swift test -c release -Xswiftc -enable-testing --filter FamilyTemplateTests

OUT_DIR gets NAME.json per template: its source, the special tokens and every expected render (or the
template's error).
"""

import json
import os
import sys

from transformers.utils.chat_template_utils import render_jinja_template

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"},
                                                    "unit": {"type": "string", "enum": ["c", "f"]}},
                   "required": ["city"]}}}

BASIC = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "First."}, {"role": "system", "content": "Second."},
     {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke.\nA short one. 中文 😀"}],
    [{"role": "user", "content": "Think first."},
     {"role": "assistant", "content": "<think>\nreasoning here\n</think>\n\nThe answer is 4."},
     {"role": "user", "content": "And 3+3?"}],
    [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>a</think>b</think>c"}],
    [{"role": "user", "content": "  spaced  "}, {"role": "assistant", "content": "  answer  "}],
]


def tool_conversation(arguments_as_string):
    args = {"city": "Paris", "unit": "c"}
    args = json.dumps(args) if arguments_as_string else args
    return [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None if arguments_as_string else "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": args}},
            {"type": "function", "function": {"name": "get_weather",
                                              "arguments": args if not arguments_as_string else json.dumps({"city": "Rome"})}}]},
        {"role": "tool", "content": "{\"temp\": 21}"},
        {"role": "tool", "content": "{\"temp\": 25}"},
        {"role": "assistant", "content": "Paris 21, Rome 25."},
    ]


# MiniMax-M2's template beyond the shared conversations: content as a list of parts (text items, bare
# strings, non-text items) for system and user, the system message's current_date / current_location, a
# model_identity override, reasoning_content kept only after the last user turn (interleaved thinking),
# tool-call arguments of every JSON type, tool results as parts, and a tool message with no call before it.
MINIMAX_EXTRA = [
    ([{"role": "system", "content": [{"type": "text", "text": "Sys "}, {"type": "text", "text": "parts"}],
       "current_date": "2025-11-03", "current_location": "Paris"},
      {"role": "user", "content": [{"type": "text", "text": "a"}, "b", {"type": "image", "url": "x"}]}], None, {}),
    ([{"role": "user", "content": "hi"}], None, {"model_identity": "You are MiniMax."}),
    ([{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1", "reasoning_content": "r1"},
      {"role": "user", "content": "q2"}, {"role": "assistant", "content": "<think>\nr2\n</think>\n\na2"}], None, {}),
    ([{"role": "user", "content": "Plan a trip."},
      {"role": "assistant", "content": "", "reasoning_content": "need weather", "tool_calls": [
          {"type": "function", "function": {"name": "get_weather", "arguments": {
              "city": "Paris", "days": 3, "ratio": 0.5, "metric": True, "none": None,
              "opts": {"list": [1, "x", {"k": "é"}]}}}}]},
      {"role": "tool", "content": [{"output": "21C"}, {"type": "text", "text": "sunny"}, "raw"]},
      {"role": "assistant", "content": "Take a hat.", "reasoning_content": "done"}], [WEATHER], {}),
    ([{"role": "tool", "content": "orphan"}], None, {}),
]


def cases_for(name):
    if name.startswith("deepseek"):
        specials = {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>"}
        out = [(m, None, {}) for m in BASIC] + [(tool_conversation(True), None, {}),
                                                 (tool_conversation(True)[:3], None, {})]
        if "3.1" in name:
            out += [(m, None, {"thinking": t}) for m in BASIC[:4] for t in (True, False)]
            out.append(([{"role": "user", "content": "go"}, {"role": "assistant", "content": "pre", "prefix": True}],
                        None, {"thinking": True}))
    elif name.startswith("glm"):
        specials = {"eos_token": "<|endoftext|>"}
        out = [(m, None, {}) for m in BASIC] + [(m, None, {"enable_thinking": t}) for m in BASIC[:4] for t in (True, False)]
        out += [(tool_conversation(False), [WEATHER], {}), (tool_conversation(False)[:3], [WEATHER], {}),
                ([{"role": "user", "content": [{"type": "text", "text": "parts"}, {"type": "text", "text": " two"}]}],
                 None, {}),
                ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "reasoning_content": "why"}],
                 None, {}),
                ([{"role": "user", "content": "already /nothink"}], None, {"enable_thinking": False})]
    elif name.startswith("minimax"):
        specials = {"bos_token": "]~!b[", "eos_token": "[e~["}
        out = [(m, None, {}) for m in BASIC] + [(tool_conversation(False), [WEATHER], {}),
                                                 (tool_conversation(False)[:3], [WEATHER], {})] + MINIMAX_EXTRA
    else:
        raise SystemExit(f"{name}: the name must start with deepseek, glm or minimax")
    return specials, out


def main() -> int:
    template_dir, out_dir = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    for fname in sorted(os.listdir(template_dir)):
        if not fname.endswith(".jinja"):
            continue
        name = fname[:-len(".jinja")]
        template = open(os.path.join(template_dir, fname), encoding="utf-8").read()
        specials, cases = cases_for(name)
        results = []
        for messages, tools, extra in cases:
            for add_gen in (False, True):
                try:
                    rendered, _ = render_jinja_template(conversations=[messages], tools=tools,
                                                        add_generation_prompt=add_gen, chat_template=template,
                                                        **specials, **extra)
                    out = {"rendered": rendered[0]}
                except Exception as e:  # raise_exception or a template error
                    out = {"error": str(e)}
                results.append({"messages": messages, "tools": tools, "add_generation_prompt": add_gen,
                                "extra": extra, **out})
        with open(os.path.join(out_dir, name + ".json"), "w", encoding="utf-8") as fh:
            json.dump({"template": template, "specials": specials, "cases": results}, fh, ensure_ascii=False, indent=1)
        print(f"{name}: {len(results)} renders, {sum('error' in r for r in results)} errors", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
