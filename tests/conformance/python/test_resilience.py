"""Resilience and routing through the official Python SDK: Rampart's own retries replace the SDK's
(x-should-retry: false after the final failure), streams whose first event is an in-band error are
retried out of sight, breakers fail fast without SDK retries, and fallback, aliases and the `auto`
model are visible in response headers and the `model` field.

Each test module runs its own `rampart sim` and `rampart serve --config` (the shared demo keeps its
breakers off so other suites' faults do not trip them)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from conftest import RampartProcess, SimControl, text_of

CLIENT_KEY = "sk-ant-client-" + "r" * 24
UPSTREAM_KEY = "sk-ant-upstream-" + "r" * 24
SONNET = "claude-sonnet-4-6"
OPUS = "claude-opus-4-6"
HAIKU = "claude-haiku-4-5"
PROMPT = [{"role": "user", "content": "echo: resilient"}]

CONFIG = """
[upstream.retry]
max_attempts = 3
initial_backoff_ms = 20
max_backoff_ms = 200

[upstream.breaker]
enabled = {breaker}
consecutive_failures = 3
open_ms = 60000

[routing.aliases]
fast = "claude-haiku-4-5"

[routing.fallbacks]
"claude-opus-4-6" = ["claude-sonnet-4-6"]

[routing.auto]
token_count = "upstream"
sonnet_input_tokens = 2000
opus_input_tokens = 20000
"""


@dataclass
class Stack:
    sim: SimControl
    base_url: str
    procs: list[RampartProcess]

    def client(self, **kw: Any) -> anthropic.Anthropic:
        kw.setdefault("timeout", 30.0)
        return anthropic.Anthropic(base_url=self.base_url, api_key=CLIENT_KEY, **kw)

    def calls(self) -> int:
        return self.sim.counters()["routes"].get("messages", 0)

    def reset(self) -> None:
        r = self.sim.http.post("/_sim/reset")
        assert r.status_code == 200, r.text


def start_stack(name: str, *, breaker: bool = False) -> Stack:
    """Breakers are on only where a test is about them: the module's tests inject many faults."""
    config = CONFIG.replace("{breaker}", "true" if breaker else "false")
    sim = RampartProcess(["sim", "--listen", "127.0.0.1:0"], name=f"{name}-sim")
    sim_url = sim.listening_url()
    path = Path(tempfile.mkdtemp(prefix=f"rampart-{name}-")) / "rampart.toml"
    path.write_text(config)
    serve = RampartProcess(
        ["serve", "--listen", "127.0.0.1:0", "--config", str(path)],
        env={
            "RAMPART_UPSTREAM__BASE_URL": sim_url,
            "RAMPART_UPSTREAM_API_KEY": UPSTREAM_KEY,
            "RAMPART_API_KEYS": CLIENT_KEY,
        },
        name=f"{name}-serve",
    )
    return Stack(SimControl(sim_url), serve.listening_url(), [serve, sim])


@pytest.fixture(scope="module")
def stack() -> Any:
    s = start_stack("resilience")
    yield s
    for p in s.procs:
        assert p.terminate() == 0, p.stderr_tail()


@pytest.fixture(autouse=True)
def _fresh_simulator(stack: Stack) -> Any:
    stack.reset()
    yield
    stack.sim.clear_faults()


def test_after_rampart_gives_up_the_sdk_does_not_retry_on_top(stack: Stack) -> None:
    stack.sim.fault("status", count=50, status=529, retry_after=0)
    client = stack.client(max_retries=2)
    with pytest.raises(anthropic.OverloadedError) as exc:
        client.messages.create(model=SONNET, max_tokens=20, messages=PROMPT)
    assert exc.value.response.headers["x-should-retry"] == "false"
    assert exc.value.response.headers["x-rampart-attempts"] == "3"
    # Rampart's three attempts, not the SDK's three times Rampart's three.
    assert stack.calls() == 3


def test_the_sdk_alone_would_have_made_three_calls_for_the_same_fault(stack: Stack) -> None:
    stack.sim.fault("status", count=50, status=529, retry_after=0)
    direct = anthropic.Anthropic(base_url=stack.sim.url, api_key=UPSTREAM_KEY, max_retries=2, timeout=30.0)
    with pytest.raises(anthropic.OverloadedError) as exc:
        direct.messages.create(model=SONNET, max_tokens=20, messages=PROMPT)
    assert "x-should-retry" not in exc.value.response.headers
    assert stack.calls() == 3


def test_two_overloads_then_success_is_one_answer_to_the_sdk(stack: Stack) -> None:
    stack.sim.fault("status", count=2, status=529, retry_after=0)
    raw = stack.client(max_retries=0).messages.with_raw_response.create(model=SONNET, max_tokens=20, messages=PROMPT)
    assert text_of(raw.parse()) == "resilient"
    assert raw.headers["x-rampart-attempts"] == "3"
    assert stack.calls() == 3


def test_a_client_error_is_one_call_and_not_retried(stack: Stack) -> None:
    stack.sim.fault("status", status=400, message="messages: bad")
    with pytest.raises(anthropic.BadRequestError) as exc:
        stack.client(max_retries=2).messages.create(model=SONNET, max_tokens=20, messages=PROMPT)
    assert exc.value.response.headers["x-should-retry"] == "false"
    assert stack.calls() == 1


def test_a_stream_whose_first_event_is_overloaded_is_retried_out_of_sight(stack: Stack) -> None:
    stack.sim.fault("error_event", after_events=0)
    seen = []
    with stack.client(max_retries=0).messages.stream(model=SONNET, max_tokens=50, messages=PROMPT) as stream:
        for event in stream:
            seen.append(event.type)
        final = stream.get_final_message()
    assert text_of(final) == "resilient"
    assert seen[0] == "message_start" and "message_stop" in seen
    assert stack.calls() == 2


def test_a_stream_broken_after_bytes_were_sent_raises_in_the_sdk_and_is_not_retried(stack: Stack) -> None:
    stack.sim.fault("abort_stream", after_events=3)
    seen = []
    with pytest.raises(anthropic.APIStatusError) as exc:
        with stack.client(max_retries=2).messages.stream(model=SONNET, max_tokens=50, messages=PROMPT) as stream:
            for event in stream:
                seen.append(event.type)
    assert seen and seen[0] == "message_start"
    assert exc.value.body["error"] == {"type": "api_error", "message": "upstream connection lost mid-stream"}
    assert stack.calls() == 1


def test_an_overloaded_model_falls_back_and_says_so(stack: Stack) -> None:
    stack.sim.fault("status", count=5, status=529, model=OPUS)
    raw = stack.client(max_retries=0).messages.with_raw_response.create(model=OPUS, max_tokens=20, messages=PROMPT)
    message = raw.parse()
    assert message.model == SONNET
    assert raw.headers["x-rampart-served-model"] == SONNET
    assert raw.headers["x-rampart-fallback"] == f"{OPUS} -> {SONNET}; overloaded"
    assert text_of(message) == "resilient"


def test_an_alias_is_served_by_its_model(stack: Stack) -> None:
    raw = stack.client().messages.with_raw_response.create(model="fast", max_tokens=20, messages=PROMPT)
    assert raw.parse().model.startswith(HAIKU)
    assert raw.headers["x-rampart-route"] == f"fast -> {HAIKU}; alias"


def test_auto_routes_by_size_tools_and_hint_and_says_why(stack: Stack) -> None:
    client = stack.client()
    raw = client.messages.with_raw_response.create(model="auto", max_tokens=20, messages=PROMPT)
    assert raw.parse().model.startswith(HAIKU)
    assert raw.headers["x-rampart-route"].startswith(f"auto -> {HAIKU}; input_tokens ")
    tool = {"name": "lookup", "description": "Look something up", "input_schema": {"type": "object", "properties": {}}}
    raw = client.messages.with_raw_response.create(model="auto", max_tokens=20, tools=[tool], messages=PROMPT)
    assert raw.headers["x-rampart-route"] == f"auto -> {SONNET}; tools"
    big = [{"role": "user", "content": "echo: " + "word " * 20_000}]
    raw = client.messages.with_raw_response.create(model="auto", max_tokens=20, messages=big)
    assert raw.parse().model == OPUS
    assert raw.headers["x-rampart-route"].endswith(">= 20000 (count_tokens)")
    raw = client.messages.with_raw_response.create(
        model="auto", max_tokens=20, messages=PROMPT, extra_headers={"x-rampart-hint": "opus"}
    )
    assert raw.headers["x-rampart-route"] == f"auto -> {OPUS}; hint opus"
    with client.messages.stream(model="auto", max_tokens=20, messages=PROMPT) as stream:
        assert stream.response.headers["x-rampart-served-model"] == HAIKU
        assert text_of(stream.get_final_message()) == "resilient"
    with pytest.raises(anthropic.BadRequestError) as exc:
        client.messages.create(model="auto", max_tokens=20, messages=PROMPT, extra_headers={"x-rampart-hint": "gpt"})
    assert "x-rampart-hint" in exc.value.message


def test_an_open_breaker_fails_fast_and_the_sdk_does_not_retry() -> None:
    s = start_stack("breaker", breaker=True)
    try:
        s.sim.fault("reset", count=50)
        client = s.client(max_retries=2)
        with pytest.raises(anthropic.APIStatusError) as exc:
            client.messages.create(model=SONNET, max_tokens=20, messages=PROMPT)
        assert exc.value.status_code == 502
        assert s.calls() == 3, "three failures: the breaker opens"
        with pytest.raises(anthropic.OverloadedError) as exc:
            client.messages.create(model=SONNET, max_tokens=20, messages=PROMPT)
        headers = exc.value.response.headers
        assert headers["x-should-retry"] == "false"
        assert 0 < int(headers["retry-after"]) <= 60
        assert "circuit breaker" in exc.value.message
        assert s.calls() == 3, "no upstream call while the breaker is open"
        ready = httpx.get(f"{s.base_url}/readyz", timeout=10)
        assert (ready.status_code, ready.text) == (503, "every upstream target's circuit breaker is open\n")
        # The fallback model has its own breaker (same target here, so it is open too).
        with pytest.raises(anthropic.OverloadedError):
            client.messages.create(model=OPUS, max_tokens=20, messages=PROMPT)
    finally:
        for p in s.procs:
            p.terminate()


def test_the_metrics_show_attempts_breakers_and_routing(stack: Stack) -> None:
    stack.sim.fault("status", count=1, status=529, retry_after=0)
    stack.client().messages.create(model=SONNET, max_tokens=20, messages=PROMPT)
    text = httpx.get(f"{stack.base_url}/metrics", timeout=10).text
    for needle in (
        'rampart_upstream_attempts_total{target="default",outcome="overloaded"}',
        'rampart_upstream_breaker_state{target="default"} 0',
        'rampart_upstream_retries_total{reason="overloaded"}',
    ):
        assert needle in text, needle
