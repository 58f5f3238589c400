"""Drives a kvtier-prompt StreamWriter server with the official OpenAI and
Anthropic Python SDKs (run by prompt/tests/sdk.rs).

    python sdk_check.py BASE_URL [MODEL]

Prints one JSON object per line: {"case", "text", "usage"} where usage is
{prompt_tokens, cached_tokens, completion_tokens} as the SDK reassembled it.
"""

import json
import sys

import anthropic
import openai

base = sys.argv[1]
# The model to ask for (the router serves its own; the prompt test serves "tiny").
MODEL = sys.argv[2] if len(sys.argv) > 2 else "tiny"
oa = openai.OpenAI(base_url=base + "/v1", api_key="test", max_retries=0)
an = anthropic.Anthropic(base_url=base, api_key="test", max_retries=0)
HINTS = {"nvext": {"agent_hints": {"priority": 2, "latency_sensitivity": 0.5, "osl": 64}}}


def emit(case, text, usage):
    print(json.dumps({"case": case, "text": text, "usage": usage}), flush=True)


# --- chat completions, streamed
text, usage = "", None
stream = oa.chat.completions.create(
    model=MODEL,
    messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    stream=True,
    stream_options={"include_usage": True},
    extra_body=HINTS,
)
for chunk in stream:
    for choice in chunk.choices:
        text += choice.delta.content or ""
    if chunk.usage is not None:
        u = chunk.usage
        usage = {
            "prompt_tokens": u.prompt_tokens,
            "cached_tokens": u.prompt_tokens_details.cached_tokens,
            "completion_tokens": u.completion_tokens,
        }
emit("chat_stream", text, usage)

# --- chat completions, streamed through the helper that accumulates the message
with oa.chat.completions.stream(
    model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_body=HINTS
) as s:
    final = s.get_final_completion()
emit("chat_stream_helper", final.choices[0].message.content, {
    "prompt_tokens": final.usage.prompt_tokens,
    "cached_tokens": final.usage.prompt_tokens_details.cached_tokens,
    "completion_tokens": final.usage.completion_tokens,
} if final.usage else None)

# --- chat completions, not streamed
r = oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
emit("chat_full", r.choices[0].message.content, {
    "prompt_tokens": r.usage.prompt_tokens,
    "cached_tokens": r.usage.prompt_tokens_details.cached_tokens,
    "completion_tokens": r.usage.completion_tokens,
})


def responses_usage(u):
    return {
        "prompt_tokens": u.input_tokens,
        "cached_tokens": u.input_tokens_details.cached_tokens,
        "completion_tokens": u.output_tokens,
    }


# --- Responses, streamed (raw events)
text, usage, types = "", None, []
for event in oa.responses.create(model=MODEL, instructions="be brief", input="hi", stream=True, extra_body=HINTS):
    types.append(event.type)
    if event.type == "response.output_text.delta":
        text += event.delta
    elif event.type == "response.completed":
        usage = responses_usage(event.response.usage)
        assert event.response.output_text == text, (event.response.output_text, text)
emit("responses_stream", text, usage)

# --- Responses, streamed through the helper (state accumulation)
with oa.responses.stream(model=MODEL, input=[{"role": "user", "content": "hi"}]) as s:
    final = s.get_final_response()
emit("responses_stream_helper", final.output_text, responses_usage(final.usage))

# --- Responses, not streamed
r = oa.responses.create(model=MODEL, input="hi")
emit("responses_full", r.output_text, responses_usage(r.usage))


def anthropic_usage(u):
    cached = u.cache_read_input_tokens or 0
    return {
        "prompt_tokens": u.input_tokens + (u.cache_creation_input_tokens or 0) + cached,
        "cached_tokens": cached,
        "completion_tokens": u.output_tokens,
    }


# --- Anthropic, streamed (helper accumulates the message)
with an.messages.stream(
    model=MODEL,
    max_tokens=64,
    system=[{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
    messages=[{"role": "user", "content": "hi"}],
    extra_body=HINTS,
) as s:
    streamed = "".join(s.text_stream)
    final = s.get_final_message()
assert final.content[0].text == streamed, (final.content[0].text, streamed)
assert final.stop_reason == "end_turn", final.stop_reason
emit("messages_stream", streamed, anthropic_usage(final.usage))

# --- Anthropic, raw streamed events
text, usage = "", None
for event in an.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "hi"}], stream=True):
    if event.type == "message_start":
        usage = anthropic_usage(event.message.usage)
    elif event.type == "content_block_delta":
        text += event.delta.text
    elif event.type == "message_delta":
        usage["completion_tokens"] = event.usage.output_tokens
emit("messages_stream_raw", text, usage)

# --- Anthropic, not streamed
r = an.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "hi"}])
emit("messages_full", r.content[0].text, anthropic_usage(r.usage))

# --- errors reach the SDK as its own exception types
try:
    an.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": 5}])
    emit("messages_error", "no error", None)
except anthropic.BadRequestError as e:
    emit("messages_error", e.body["error"]["type"] + ": " + e.body["error"]["message"], None)
try:
    oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": 5}])
    emit("chat_error", "no error", None)
except openai.BadRequestError as e:
    emit("chat_error", e.body["type"] + " " + str(e.body["param"]) + ": " + e.body["message"], None)
