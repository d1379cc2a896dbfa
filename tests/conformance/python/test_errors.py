"""Error classes and injected faults through the official Python SDK, against the simulator and the
gateway (through the gateway, the fault is injected in the simulator behind it)."""

from __future__ import annotations

import anthropic
import httpx
import httpx2
import pytest
from conftest import MODEL, SimControl, Target, text_of

PROMPT = [{"role": "user", "content": "echo: fault check"}]
# Enough faults that a gateway retrying before the first byte still surfaces the error; the autouse
# fixture clears what is left after each test.
MANY = 10


def assert_envelope(r: httpx.Response, status: int, error_type: str) -> dict:
    assert r.status_code == status, f"{r.status_code}: {r.text[:500]}"
    body = r.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == error_type
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body


# --- client errors --------------------------------------------------------------------------------


def test_missing_max_tokens_raises_bad_request(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as exc:
        client.post("/v1/messages", body={"model": MODEL, "messages": PROMPT}, cast_to=object)
    assert exc.value.status_code == 400
    assert exc.value.type == "invalid_request_error"
    assert exc.value.request_id


def test_wrong_key_raises_authentication_error_through_the_gateway(gateway_target: Target) -> None:
    client = anthropic.Anthropic(base_url=gateway_target.base_url, api_key="sk-ant-wrong-key", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as exc:
        client.messages.create(model=MODEL, max_tokens=10, messages=PROMPT)
    assert exc.value.status_code == 401
    assert exc.value.type == "authentication_error"


def test_bearer_token_is_accepted_as_a_client_credential_by_the_gateway(gateway_target: Target) -> None:
    client = anthropic.Anthropic(base_url=gateway_target.base_url, auth_token=gateway_target.api_key, max_retries=0)
    msg = client.messages.create(model=MODEL, max_tokens=50, messages=PROMPT)
    assert text_of(msg) == "fault check"


def test_missing_key_is_rejected_with_401_and_an_envelope(target: Target) -> None:
    with target.http() as http:
        r = http.post(
            "/v1/messages",
            headers={"anthropic-version": "2023-06-01", "content-type": "application/json"},
            json={"model": MODEL, "max_tokens": 10, "messages": PROMPT},
        )
    assert_envelope(r, 401, "authentication_error")


def test_missing_anthropic_version_is_400_invalid_request_error(target: Target) -> None:
    with target.http() as http:
        r = http.post(
            "/v1/messages",
            headers={"x-api-key": target.api_key, "content-type": "application/json"},
            json={"model": MODEL, "max_tokens": 10, "messages": PROMPT},
        )
    body = assert_envelope(r, 400, "invalid_request_error")
    assert body["error"]["message"] == "anthropic-version: header is required"


def test_unknown_route_is_404_not_found_error(target: Target) -> None:
    with target.http() as http:
        r = http.get("/v1/definitely-not-a-route", headers=target.headers())
    assert_envelope(r, 404, "not_found_error")


def test_unknown_route_raises_not_found_in_the_sdk(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError):
        client.get("/v1/definitely-not-a-route", cast_to=object)


def test_malformed_json_is_400_invalid_request_error(target: Target) -> None:
    with target.http() as http:
        r = http.post("/v1/messages", headers=target.headers(), content=b'{"model": "x", "max_tokens": ')
    assert_envelope(r, 400, "invalid_request_error")


def test_invalid_utf8_body_is_400_invalid_request_error(target: Target) -> None:
    body = b'{"model": "' + MODEL.encode() + b'", "max_tokens": 10, "messages": [{"role": "user", "content": "\xff\xfe bad"}]}'
    with target.http() as http:
        r = http.post("/v1/messages", headers=target.headers(), content=body)
    assert_envelope(r, 400, "invalid_request_error")


def test_body_over_32_mib_is_413_request_too_large_at_the_gateway(gateway_target: Target) -> None:
    padding = "a" * (32 * 1024 * 1024 + 1024)
    body = ('{"model": "' + MODEL + '", "max_tokens": 10, "messages": [{"role": "user", "content": "' + padding + '"}]}').encode()
    with gateway_target.http(timeout=60) as http:
        try:
            r = http.post("/v1/messages", headers=gateway_target.headers(), content=body)
        except httpx.WriteError as err:  # a server may close the connection after answering early
            pytest.fail(f"the gateway closed the connection without a 413 response: {err!r}")
    assert_envelope(r, 413, "request_too_large")


# --- injected faults: HTTP status ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_type", "error_class"),
    [
        (529, "overloaded_error", anthropic.OverloadedError),
        (429, "rate_limit_error", anthropic.RateLimitError),
        (500, "api_error", anthropic.InternalServerError),
    ],
    ids=["529-overloaded", "429-rate-limit", "500-api-error"],
)
def test_injected_status_raises_the_matching_sdk_error_class(
    client: anthropic.Anthropic, sim: SimControl, status: int, error_type: str, error_class: type
) -> None:
    sim.fault("status", count=MANY, status=status, error_type=error_type, message=f"injected {status}", retry_after=7)
    with pytest.raises(error_class) as exc:
        client.messages.create(model=MODEL, max_tokens=10, messages=PROMPT)
    assert exc.value.status_code == status
    assert exc.value.type == error_type
    assert exc.value.api_message == f"injected {status}"
    if status == 429:
        assert exc.value.response.headers.get("retry-after") == "7"


def test_status_fault_defaults_to_529_overloaded(client: anthropic.Anthropic, sim: SimControl) -> None:
    sim.fault("status", count=MANY)
    with pytest.raises(anthropic.OverloadedError) as exc:
        client.messages.create(model=MODEL, max_tokens=10, messages=PROMPT)
    assert exc.value.type == "overloaded_error"


def test_status_fault_on_count_tokens_only_affects_count_tokens(client: anthropic.Anthropic, sim: SimControl) -> None:
    sim.fault("status", count=MANY, status=500, error_type="api_error", path="count_tokens")
    with pytest.raises(anthropic.InternalServerError):
        client.messages.count_tokens(model=MODEL, messages=PROMPT)
    assert text_of(client.messages.create(model=MODEL, max_tokens=50, messages=PROMPT)) == "fault check"


def test_fault_count_is_consumed_then_requests_succeed_again(target: Target, sim: SimControl) -> None:
    client = target.client()
    sim.fault("status", count=1, status=500, error_type="api_error")
    raw = target.client(max_retries=3)
    # A single fault is absorbed by one retry, whether the SDK or the gateway performs it.
    assert text_of(raw.messages.create(model=MODEL, max_tokens=50, messages=PROMPT)) == "fault check"
    assert text_of(client.messages.create(model=MODEL, max_tokens=50, messages=PROMPT)) == "fault check"


def test_sdk_retries_a_529_and_then_succeeds(target: Target, sim: SimControl) -> None:
    before = sim.counters()["routes"].get("messages", 0)
    sim.fault("status", count=1, status=529)
    client = target.client(max_retries=2)
    assert text_of(client.messages.create(model=MODEL, max_tokens=50, messages=PROMPT)) == "fault check"
    assert sim.counters()["routes"]["messages"] - before == 2


# --- injected faults: connection level -------------------------------------------------------------


def test_connection_reset_raises_api_connection_error_or_a_502_through_the_gateway(
    target: Target, client: anthropic.Anthropic, sim: SimControl
) -> None:
    sim.fault("reset", count=MANY)
    if target.name == "sim":
        with pytest.raises(anthropic.APIConnectionError):
            client.messages.create(model=MODEL, max_tokens=10, messages=PROMPT)
    else:
        # The gateway cannot pass a reset through: it answers 502 in Anthropic's envelope.
        with pytest.raises(anthropic.APIStatusError) as exc:
            client.messages.create(model=MODEL, max_tokens=10, messages=PROMPT)
        assert exc.value.status_code == 502
        assert exc.value.type == "api_error"


def test_mid_stream_error_event_raises_an_overloaded_api_error_while_iterating(
    client: anthropic.Anthropic, sim: SimControl
) -> None:
    sim.fault("error_event", count=MANY, after_events=3, error_type="overloaded_error", message="Overloaded")
    seen = []
    with pytest.raises(anthropic.APIStatusError) as exc:
        with client.messages.stream(model=MODEL, max_tokens=100, messages=PROMPT) as stream:
            for event in stream:
                seen.append(event.type)
    assert seen and seen[0] == "message_start"
    assert "message_stop" not in seen
    assert exc.value.type == "overloaded_error"
    assert exc.value.body["error"]["type"] == "overloaded_error"
    assert exc.value.api_message == "Overloaded"


def test_aborted_stream_raises_while_iterating(client: anthropic.Anthropic, sim: SimControl) -> None:
    sim.fault("abort_stream", count=MANY, after_events=3)
    seen = []
    with pytest.raises((anthropic.APIError, httpx2.HTTPError)):
        with client.messages.stream(model=MODEL, max_tokens=100, messages=PROMPT) as stream:
            for event in stream:
                seen.append(event.type)
    assert seen and seen[0] == "message_start"
    assert "message_stop" not in seen


def test_fault_scoped_to_another_model_does_not_affect_this_one(client: anthropic.Anthropic, sim: SimControl) -> None:
    sim.fault("status", count=MANY, status=500, model="claude-haiku-4-5")
    assert text_of(client.messages.create(model=MODEL, max_tokens=50, messages=PROMPT)) == "fault check"
