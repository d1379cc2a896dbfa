"""Messages API through the official Python SDK: create, streaming, count_tokens, tools, thinking,
stop sequences, max_tokens and prompt caching. Every test runs against the simulator and the gateway."""

from __future__ import annotations

import json

import anthropic
import httpx
from conftest import MODEL, Target, text_of, unique


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer"},
        },
        "required": ["city", "days"],
    },
}


# --- create -------------------------------------------------------------------------------------


def test_create_returns_the_echoed_text_with_full_usage_and_a_request_id(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(model=MODEL, max_tokens=100, messages=user("echo: hello from rampart"))
    assert msg.type == "message"
    assert msg.role == "assistant"
    assert msg.id.startswith("msg_")
    assert msg.model.startswith(MODEL)  # an alias may resolve to its dated id
    assert text_of(msg) == "hello from rampart"
    assert msg.stop_reason == "end_turn"
    assert msg.stop_sequence is None
    assert msg.usage.input_tokens > 0
    assert msg.usage.output_tokens > 0
    assert isinstance(msg.usage.cache_creation_input_tokens, int)
    assert isinstance(msg.usage.cache_read_input_tokens, int)
    assert msg._request_id and msg._request_id.startswith("req_")


def test_create_is_deterministic_for_the_same_input(client: anthropic.Anthropic) -> None:
    prompt = user("Tell me something about lighthouses.")
    first = client.messages.create(model=MODEL, max_tokens=200, messages=prompt)
    second = client.messages.create(model=MODEL, max_tokens=200, messages=prompt)
    assert text_of(first), "a plain prompt must produce some text"
    assert text_of(first) == text_of(second)
    assert first.usage.output_tokens == second.usage.output_tokens
    assert first.id != second.id


def test_create_accepts_system_prompt_and_multi_turn_history(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(
        model=MODEL,
        max_tokens=100,
        system=[{"type": "text", "text": "You are terse."}],
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
            {"role": "user", "content": [{"type": "text", "text": "echo: second turn"}]},
        ],
    )
    assert text_of(msg) == "second turn"


# --- streaming ----------------------------------------------------------------------------------


def test_stream_helper_yields_text_and_a_final_message_with_usage(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model=MODEL, max_tokens=200, messages=user("echo: one two three four five")) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
        request_id = stream.request_id
    assert len(pieces) >= 1
    assert "".join(pieces) == "one two three four five"
    assert text_of(final) == "one two three four five"
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens > 0
    assert final.usage.output_tokens > 0
    assert request_id and request_id.startswith("req_")


def test_raw_sdk_stream_has_the_documented_event_order(client: anthropic.Anthropic) -> None:
    events = list(client.messages.create(model=MODEL, max_tokens=200, messages=user("echo: streaming order"), stream=True))
    types = [e.type for e in events]
    assert types[0] == "message_start", types
    assert types[-1] == "message_stop", types
    assert types[-2] == "message_delta", types
    start = events[0]
    assert start.message.content == []
    assert start.message.stop_reason is None
    assert start.message.usage.input_tokens > 0
    assert types[1] == "content_block_start", types
    assert events[1].index == 0 and events[1].content_block.type == "text"
    deltas = [e for e in events if e.type == "content_block_delta"]
    assert deltas and all(d.delta.type == "text_delta" and d.index == 0 for d in deltas)
    assert "".join(d.delta.text for d in deltas) == "streaming order"
    assert types.index("content_block_stop") > types.index("content_block_delta")
    delta = events[-2]
    assert delta.delta.stop_reason == "end_turn"
    assert delta.usage.output_tokens > 0


def _raw_sse(target: Target, body: dict) -> tuple[httpx.Response, list[tuple[str, dict]]]:
    with target.http() as http:
        r = http.post("/v1/messages", headers=target.headers(), json={**body, "stream": True})
        events: list[tuple[str, dict]] = []
        name = None
        for line in r.iter_lines():
            if line.startswith("event:"):
                name = line[len("event:") :].strip()
            elif line.startswith("data:"):
                events.append((name or "", json.loads(line[len("data:") :])))
                name = None
        return r, events


def test_raw_sse_has_ping_matching_event_names_and_full_block_lifecycle(target: Target) -> None:
    r, events = _raw_sse(target, {"model": MODEL, "max_tokens": 100, "messages": user("echo: raw sse check")})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert all(name == data["type"] for name, data in events), events
    types = [name for name, _ in events if name != "ping"]
    assert "ping" in [name for name, _ in events], "the stream should carry at least one ping event"
    assert types[0] == "message_start"
    assert types[1] == "content_block_start"
    assert types[-2:] == ["message_delta", "message_stop"]
    # Every block opens, receives deltas, then closes, in index order.
    open_blocks: set[int] = set()
    closed: list[int] = []
    for name, data in events:
        if name == "content_block_start":
            assert data["index"] not in open_blocks
            open_blocks.add(data["index"])
        elif name == "content_block_delta":
            assert data["index"] in open_blocks
        elif name == "content_block_stop":
            open_blocks.remove(data["index"])
            closed.append(data["index"])
    assert not open_blocks
    assert closed == list(range(len(closed)))
    assert r.headers.get("request-id", "").startswith("req_")


# --- count_tokens -------------------------------------------------------------------------------


def test_count_tokens_equals_input_tokens_of_the_same_uncached_request(client: anthropic.Anthropic) -> None:
    kwargs = dict(
        model=MODEL,
        system="You are a counting assistant.",
        messages=user("How many tokens are in this sentence, roughly speaking, friend?"),
        tools=[WEATHER_TOOL],
    )
    counted = client.messages.count_tokens(**kwargs)
    msg = client.messages.create(max_tokens=50, **kwargs)
    assert counted.input_tokens > 0
    assert counted.input_tokens == msg.usage.input_tokens


def test_count_tokens_grows_with_the_prompt(client: anthropic.Anthropic) -> None:
    short = client.messages.count_tokens(model=MODEL, messages=user("hi"))
    long = client.messages.count_tokens(model=MODEL, messages=user("hi " * 400))
    assert long.input_tokens > short.input_tokens > 0


# --- tools --------------------------------------------------------------------------------------


def test_tool_choice_any_returns_a_tool_use_block_with_the_required_fields(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(
        model=MODEL,
        max_tokens=200,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "any"},
        messages=user("What is it like outside in Paris?"),
    )
    assert msg.stop_reason == "tool_use"
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert len(uses) >= 1
    use = uses[0]
    assert use.id.startswith("toolu_")
    assert use.name == "get_weather"
    assert isinstance(use.input, dict)
    assert isinstance(use.input.get("city"), str)
    assert isinstance(use.input.get("days"), int)


def test_tool_choice_tool_forces_the_named_tool(client: anthropic.Anthropic) -> None:
    other = {"name": "lookup_stock", "input_schema": {"type": "object", "properties": {"ticker": {"type": "string"}}, "required": ["ticker"]}}
    msg = client.messages.create(
        model=MODEL,
        max_tokens=200,
        tools=[WEATHER_TOOL, other],
        tool_choice={"type": "tool", "name": "lookup_stock"},
        messages=user("anything"),
    )
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert [u.name for u in uses] == ["lookup_stock"]
    assert isinstance(uses[0].input["ticker"], str)


def test_tool_choice_auto_calls_a_tool_only_when_its_name_is_mentioned(client: anthropic.Anthropic) -> None:
    plain = client.messages.create(
        model=MODEL, max_tokens=200, tools=[WEATHER_TOOL], tool_choice={"type": "auto"}, messages=user("Say hello.")
    )
    assert plain.stop_reason == "end_turn"
    assert all(b.type != "tool_use" for b in plain.content)
    called = client.messages.create(
        model=MODEL,
        max_tokens=200,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "auto"},
        messages=user("Please use get_weather for Oslo."),
    )
    assert called.stop_reason == "tool_use"
    assert any(b.type == "tool_use" and b.name == "get_weather" for b in called.content)


def test_tool_result_round_trip_is_accepted(client: anthropic.Anthropic) -> None:
    first = client.messages.create(
        model=MODEL, max_tokens=200, tools=[WEATHER_TOOL], tool_choice={"type": "any"}, messages=user("weather?")
    )
    use = next(b for b in first.content if b.type == "tool_use")
    second = client.messages.create(
        model=MODEL,
        max_tokens=200,
        tools=[WEATHER_TOOL],
        messages=[
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21C"}]},
        ],
    )
    assert second.stop_reason in ("end_turn", "tool_use")
    assert second.usage.output_tokens > 0


def test_streamed_tool_use_input_json_deltas_accumulate_to_the_final_input(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model=MODEL,
        max_tokens=200,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "any"},
        messages=user("What is it like outside in Rome?"),
    ) as stream:
        partial_json = ""
        starts = []
        for event in stream:
            if event.type == "content_block_start" and event.content_block.type == "tool_use":
                starts.append(event.content_block)
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                partial_json += event.delta.partial_json
        final = stream.get_final_message()
    assert starts and starts[0].input == {}
    use = next(b for b in final.content if b.type == "tool_use")
    assert final.stop_reason == "tool_use"
    assert json.loads(partial_json) == use.input
    assert isinstance(use.input.get("city"), str)
    assert isinstance(use.input.get("days"), int)


# --- thinking -----------------------------------------------------------------------------------


def test_thinking_puts_a_signed_thinking_block_before_the_text(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(
        model=MODEL,
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=user("echo: thought through"),
    )
    assert [b.type for b in msg.content][:1] == ["thinking"]
    assert msg.content[0].thinking
    assert msg.content[0].signature
    assert msg.content[-1].type == "text"
    assert text_of(msg) == "thought through"


def test_streamed_thinking_sends_thinking_deltas_then_a_signature_delta(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model=MODEL,
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=user("echo: streamed thought"),
    ) as stream:
        seq = []
        for event in stream:
            if event.type == "content_block_delta" and event.index == 0:
                seq.append(event.delta.type)
            if event.type == "content_block_stop" and event.index == 0:
                seq.append("stop")
        final = stream.get_final_message()
    assert "thinking_delta" in seq
    assert seq[-2:] == ["signature_delta", "stop"], seq
    assert final.content[0].type == "thinking" and final.content[0].signature
    assert text_of(final) == "streamed thought"


# --- stop sequences and max_tokens --------------------------------------------------------------


def test_stop_sequence_cuts_the_text_and_is_reported(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(
        model=MODEL, max_tokens=200, stop_sequences=["HALT"], messages=user("echo: alpha beta HALT gamma delta")
    )
    assert msg.stop_reason == "stop_sequence"
    assert msg.stop_sequence == "HALT"
    assert "HALT" not in text_of(msg)
    assert "gamma" not in text_of(msg)
    assert text_of(msg).strip() == "alpha beta"


def test_stop_sequence_is_honoured_while_streaming(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model=MODEL, max_tokens=200, stop_sequences=["HALT"], messages=user("echo: alpha beta HALT gamma delta")
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "stop_sequence"
    assert final.stop_sequence == "HALT"
    assert text_of(final).strip() == "alpha beta"


def test_max_tokens_truncates_the_reply_and_reports_max_tokens(client: anthropic.Anthropic) -> None:
    long_text = " ".join(f"word{i}" for i in range(200))
    msg = client.messages.create(model=MODEL, max_tokens=5, messages=user(f"echo: {long_text}"))
    assert msg.stop_reason == "max_tokens"
    assert 0 < msg.usage.output_tokens <= 5
    assert long_text.startswith(text_of(msg))
    assert len(text_of(msg)) < len(long_text)


# --- prompt caching -----------------------------------------------------------------------------


def test_prompt_cache_is_written_then_read_for_an_identical_long_system_prompt(client: anthropic.Anthropic) -> None:
    # ~5000 tokens at ~4 chars/token: above the 2048-token minimum for Sonnet 4.6. Unique per run.
    marker = unique("cache")
    system_text = f"[{marker}] " + ("You are a meticulous archivist of maritime history. " * 380)
    kwargs = dict(
        model=MODEL,
        max_tokens=50,
        system=[{"type": "text", "text": system_text, "cache_control": {"type": "ephemeral"}}],
        messages=user("echo: cached"),
    )
    first = client.messages.create(**kwargs)
    second = client.messages.create(**kwargs)
    assert first.usage.cache_creation_input_tokens > 2048
    assert first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens > 0
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert second.usage.cache_creation_input_tokens == 0
    # input_tokens only counts what follows the last breakpoint, so it is the same small number both times.
    assert second.usage.input_tokens == first.usage.input_tokens < 100


def test_prompt_below_the_cache_minimum_is_not_cached_and_not_an_error(client: anthropic.Anthropic) -> None:
    kwargs = dict(
        model=MODEL,
        max_tokens=50,
        system=[{"type": "text", "text": f"{unique('short')} be brief", "cache_control": {"type": "ephemeral"}}],
        messages=user("echo: tiny"),
    )
    client.messages.create(**kwargs)
    second = client.messages.create(**kwargs)
    assert second.usage.cache_creation_input_tokens == 0
    assert second.usage.cache_read_input_tokens == 0
    assert text_of(second) == "tiny"
