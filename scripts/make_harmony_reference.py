#!/usr/bin/env python3
"""Render conversations through gpt-oss's published chat template (harmony format) with transformers'
own renderer, for MoEServe's ChatTemplates interpreter to reproduce byte for byte.

The template is the model's file (`chat_template.jinja` of openai/gpt-oss-20b or -120b) and is not
committed here; pass its path. The output holds the template source and every expected render:

    python scripts/make_harmony_reference.py /path/to/gpt-oss-20b/chat_template.jinja /tmp/harmony.json
    MOE_HARMONY_CASES=/tmp/harmony.json swift test -c release -Xswiftc -enable-testing --filter HarmonyTemplateTests

The template calls strftime_now("%Y-%m-%d"): render and test on the same day (UTC).
"""

import json
import sys

from transformers.utils.chat_template_utils import render_jinja_template

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Unit", "default": "celsius"},
        "days": {"type": "integer", "description": "Forecast days", "default": 1},
        "tags": {"type": "array", "items": {"type": "string"}, "description": "Tags", "nullable": True},
        "where": {"type": "object", "description": "Place",
                  "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}}, "required": ["lat"]},
        "mode": {"oneOf": [{"type": "string"}, {"type": "integer"}], "description": "Mode"},
        "pairs": {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}}},
                  "description": "Pairs"},
        "flag": {"type": ["boolean", "null"], "description": "A flag"},
    }, "required": ["city"]}}}
NO_PARAMS = {"type": "function", "function": {"name": "now", "description": "The time.", "parameters": {}}}

CASES = [
    ([{"role": "user", "content": "Hi"}], None, {}),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], None, {"reasoning_effort": "high"}),
    ([{"role": "developer", "content": "Answer in French."}, {"role": "user", "content": "Hello"},
      {"role": "assistant", "content": "Bonjour", "thinking": "They want French."},
      {"role": "user", "content": "Encore?"}], None, {"reasoning_effort": "low"}),
    ([{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4", "thinking": "Add them."}], None, {}),
    ([{"role": "user", "content": "Weather in Paris?"},
      {"role": "assistant", "thinking": "Call the tool.",
       "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
      {"role": "tool", "content": "{\"temp\": 21}"},
      {"role": "assistant", "content": "21 degrees ünd sunny."}], [WEATHER, NO_PARAMS], {}),
    ([{"role": "user", "content": "Search it"}], None,
     {"builtin_tools": ["browser", "python"], "model_identity": "You are a test model."}),
    ([{"role": "system", "content": "Sys"}, {"role": "user", "content": "x"}], [NO_PARAMS], {"builtin_tools": ["python"]}),
    # raise_exception cases
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "<|channel|>final<|message|>b"}], None, {}),
    ([{"role": "tool", "content": "orphan"}], None, {}),
]


def main() -> int:
    template_path, out_path = sys.argv[1], sys.argv[2]
    template = open(template_path, encoding="utf-8").read()
    results = []
    for messages, tools, extra in CASES:
        for add_gen in (False, True):
            try:
                rendered, _ = render_jinja_template(conversations=[messages], tools=tools, add_generation_prompt=add_gen,
                                                    chat_template=template, **extra)
                out = {"rendered": rendered[0]}
            except Exception as e:  # raise_exception in the template
                out = {"error": str(e)}
            results.append({"messages": messages, "tools": tools, "add_generation_prompt": add_gen, "extra": extra, **out})
    with open(out_path, "w", encoding="utf-8") as fh:
        json.dump({"template": template, "cases": results}, fh, ensure_ascii=False, indent=1)
    print(f"{len(results)} renders ({sum('error' in r for r in results)} raise) -> {out_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
