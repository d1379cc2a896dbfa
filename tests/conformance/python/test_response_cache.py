"""The caching levers, with the official SDK: the response cache answers a repeated request without
an upstream call (as JSON, or as a replayed SSE stream the SDK's stream helpers accept), keeps teams
apart, stores only complete successful answers, obeys `x-rampart-cache: use|bypass|refresh`, and
records a hit in the ledger with no upstream cost; the breakpoint policy adds `cache_control` so the
upstream's prompt cache is read on the next turn."""

from __future__ import annotations

import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import anthropic
import httpx
import pytest
from conftest import RampartProcess
from test_limits import need
from test_virtual_keys import UPSTREAM_KEY, keys_cli, rampart, serve_env, start_serve

MODEL = "claude-sonnet-4-6"


class Env:
    def __init__(self, sim_url: str, url: str, data_dir: str, keys: dict[str, str]) -> None:
        self.sim_url, self.url, self.data_dir, self.keys = sim_url, url, data_dir, keys

    def client(self, team: str = "a", **headers: str) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.url, api_key=self.keys[team], max_retries=0, default_headers=headers or None)

    def raw(self, team: str, body: dict[str, Any], **headers: str) -> httpx.Response:
        h = {"x-api-key": self.keys[team], "anthropic-version": "2023-06-01", "content-type": "application/json", **headers}
        return httpx.post(f"{self.url}/v1/messages", json=body, headers=h, timeout=30)

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        for line in text.splitlines():
            if line.startswith(name) and (not want or f"{{{want}}}" in line):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def upstream_calls(self) -> int:
        counters = httpx.get(f"{self.sim_url}/_sim/counters", timeout=10).json()
        return int(counters.get("routes", {}).get("messages", 0))


def start_env(name: str, **config: str) -> tuple[Env, list[RampartProcess]]:
    sim = RampartProcess(["sim", "--listen", "127.0.0.1:0"], name=f"{name}-sim")
    sim_url = sim.listening_url()
    data_dir = tempfile.mkdtemp(prefix=f"rampart-{name}-")
    keys = {team: keys_cli(data_dir, "create", "--name", f"k-{team}", "--team", f"team-{team}", "--create-team").stdout.strip().splitlines()[-1] for team in ("a", "b")}
    proc, url = start_serve(data_dir, serve_env(sim_url, RAMPART_UPSTREAM_API_KEY=UPSTREAM_KEY, **config), name)
    return Env(sim_url, url, data_dir, keys), [proc, sim]


@pytest.fixture(scope="module", params=["memory", "redis"])
def cached(request: pytest.FixtureRequest) -> Iterator[Env]:
    """A gateway with the response cache on, once per store: in-process, then Redis (shared by
    every instance; RAMPART_TEST_REDIS_URL, started by scripts/test.sh)."""
    store: dict[str, str] = {}
    if request.param == "redis":
        store = {"RAMPART_CACHE__BACKEND": "redis", "RAMPART_CACHE__REDIS_URL": need("RAMPART_TEST_REDIS_URL")}
    env, procs = start_env(f"cache-on-{request.param}", RAMPART_CACHE__RESPONSE_ENABLED="true", **store)
    yield env
    for p in procs:
        assert p.terminate() == 0


def question(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 200, "messages": [{"role": "user", "content": text}], **extra}


def test_a_repeated_request_is_answered_from_the_cache_without_an_upstream_call(cached: Env) -> None:
    body = question("What does a clearing house do? (json)")
    before = cached.upstream_calls()
    first = cached.raw("a", body)
    assert first.status_code == 200 and first.headers["x-rampart-cache"] == "miss"
    time.sleep(0.2)  # the store happens off the response path
    second = cached.raw("a", body)
    assert second.status_code == 200 and second.headers["x-rampart-cache"] == "hit", second.headers
    assert cached.upstream_calls() - before == 1
    a, b = first.json(), second.json()
    assert a["content"] == b["content"] and a["usage"] == b["usage"] and a["stop_reason"] == b["stop_reason"]
    assert a["id"] != b["id"]
    # The official SDK reads a hit like any answer.
    msg = cached.client("a").messages.create(**body)
    assert msg.content[0].text == a["content"][0]["text"]
    assert cached.upstream_calls() - before == 1
    # What the hits saved is counted by lever.
    assert cached.metric("rampart_cache_saved_micro_usd_total", lever="response") > 0
    assert cached.metric("rampart_cache_events_total", event="hit") >= 2


def test_a_hit_replays_as_a_stream_the_sdk_stream_helpers_accept(cached: Env) -> None:
    body = question("Explain netting in two sentences. (stream)")
    client = cached.client("a")
    before = cached.upstream_calls()
    with client.messages.stream(**body) as s:
        live_text = "".join(s.text_stream)
        live = s.get_final_message()
    time.sleep(0.2)
    with client.messages.stream(**body) as s:
        replayed_text = "".join(s.text_stream)
        replayed = s.get_final_message()
        assert s.response.headers["x-rampart-cache"] == "hit"
    assert cached.upstream_calls() - before == 1
    assert replayed_text == live_text and replayed.content == live.content and replayed.usage == live.usage
    # Streams and plain requests share entries.
    plain = cached.raw("a", body)
    assert plain.headers["x-rampart-cache"] == "hit" and plain.json()["content"][0]["text"] == live_text


def test_another_team_never_reads_a_teams_entry(cached: Env) -> None:
    body = question("Team A's private question about collateral.")
    assert cached.raw("a", body).headers["x-rampart-cache"] == "miss"
    time.sleep(0.2)
    assert cached.raw("a", body).headers["x-rampart-cache"] == "hit"
    other = cached.raw("b", body)
    assert other.status_code == 200 and other.headers["x-rampart-cache"] == "miss"


def test_only_complete_successful_answers_are_stored(cached: Env) -> None:
    truncated = question("Write a long essay on custody.", max_tokens=3)
    before = cached.upstream_calls()
    r1 = cached.raw("a", truncated)
    assert r1.json()["stop_reason"] == "max_tokens"
    time.sleep(0.2)
    r2 = cached.raw("a", truncated)
    assert r2.headers["x-rampart-cache"] == "miss"
    assert cached.upstream_calls() - before == 2
    # Errors are never stored either.
    bad = cached.raw("a", {"model": MODEL, "max_tokens": 10, "messages": []})
    assert bad.status_code == 400
    assert cached.raw("a", {"model": MODEL, "max_tokens": 10, "messages": []}).status_code == 400


def test_the_request_header_bypasses_refreshes_or_is_refused(cached: Env) -> None:
    body = question("Define margin call. (header)")
    cached.raw("a", body)
    time.sleep(0.2)
    before = cached.upstream_calls()
    bypass = cached.raw("a", body, **{"x-rampart-cache": "bypass"})
    assert bypass.headers["x-rampart-cache"] == "bypass"
    refresh = cached.raw("a", body, **{"x-rampart-cache": "refresh"})
    assert refresh.headers["x-rampart-cache"] == "bypass"
    assert cached.upstream_calls() - before == 2
    time.sleep(0.2)
    assert cached.raw("a", body).headers["x-rampart-cache"] == "hit"
    wrong = cached.raw("a", body, **{"x-rampart-cache": "sometimes"})
    assert wrong.status_code == 400 and wrong.json()["error"]["type"] == "invalid_request_error"


def test_a_hit_is_one_ledger_record_with_no_upstream_cost(cached: Env) -> None:
    body = question("What is settlement risk? (ledger)")
    first = cached.raw("a", body)
    time.sleep(0.2)
    hit = cached.raw("a", body)
    assert hit.headers["x-rampart-cache"] == "hit"
    rid = hit.headers["x-request-id"]
    assert first.headers["x-request-id"] != rid
    query = "SELECT cache_hit, cost_micro_usd, upstream_attempts, status, input_tokens, output_tokens, saved_micro_usd FROM usage_records WHERE request_id = ?"
    rows = ledger_rows(cached, query, rid)
    (miss,) = ledger_rows(cached, query, first.headers["x-request-id"])
    # The miss paid for the answer; the hit cost nothing upstream and saved exactly that.
    assert miss[:2] == (0, miss[1]) and miss[1] > 0 and miss[6] == 0, miss
    assert rows == [(1, 0, 0, 200, 0, 0, miss[1])], rows


def ledger_rows(env: Env, query: str, *args: Any) -> list[Any]:
    """The rows `query` finds in the ledger, waiting up to 10 s for the writer to store them."""
    deadline = time.monotonic() + 10
    rows: list[Any] = []
    while time.monotonic() < deadline and not rows:
        with sqlite3.connect(Path(env.data_dir) / "rampart.db") as db:
            rows = db.execute(query, args).fetchall()
        if not rows:
            time.sleep(0.2)
    return rows


def test_policy_off_means_bypass_unless_the_request_asks() -> None:
    env, procs = start_env("cache-off")
    try:
        body = question("Opt in per request.")
        assert env.raw("a", body).headers["x-rampart-cache"] == "bypass"
        env.raw("a", body, **{"x-rampart-cache": "use"})
        time.sleep(0.2)
        assert env.raw("a", body, **{"x-rampart-cache": "use"}).headers["x-rampart-cache"] == "hit"
        assert env.raw("a", body).headers["x-rampart-cache"] == "bypass"
    finally:
        for p in procs:
            assert p.terminate() == 0


def test_breakpoints_make_the_next_turn_read_the_upstream_prompt_cache() -> None:
    env, procs = start_env("breakpoints", RAMPART_CACHE__BREAKPOINTS_ENABLED="true")
    try:
        system = "You are the payments operations assistant. " + "Policy clause about settlement. " * 600
        client = env.client("a")
        turn1 = client.messages.create(model=MODEL, max_tokens=100, system=system, messages=[{"role": "user", "content": "First question?"}])
        assert turn1.usage.cache_creation_input_tokens and turn1.usage.cache_creation_input_tokens > 0, turn1.usage
        # (The simulator, like the API, only writes a cache entry at a `cache_control` mark: the
        # client sent none, so the write proves Rampart added one.)
        turn2 = client.messages.create(
            model=MODEL,
            max_tokens=100,
            system=system,
            messages=[
                {"role": "user", "content": "First question?"},
                {"role": "assistant", "content": turn1.content[0].text},
                {"role": "user", "content": "Second question?"},
            ],
        )
        assert turn2.usage.cache_read_input_tokens and turn2.usage.cache_read_input_tokens > 0, turn2.usage
        time.sleep(0.3)  # usage is accounted after the response
        assert env.metric("rampart_cache_breakpoints_added_total") >= 2
        assert env.metric("rampart_cache_saved_micro_usd_total", lever="breakpoints") > 0
        # The ledger keeps the saving per request: the write costs extra, the read saves.
        writes = ledger_rows(env, "SELECT saved_micro_usd FROM usage_records WHERE cache_read_tokens = 0 AND cache_write_5m_tokens + cache_write_1h_tokens > 0")
        reads = ledger_rows(env, "SELECT saved_micro_usd FROM usage_records WHERE cache_read_tokens > 0")
        assert len(writes) == 1 and writes[0][0] < 0, writes
        assert len(reads) == 1 and reads[0][0] > 0, reads
        # A short prompt is not rewritten at all.
        short = client.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
        assert short.usage.cache_creation_input_tokens in (0, None)
    finally:
        for p in procs:
            assert p.terminate() == 0


def test_a_stored_policy_switches_caching_for_a_team_or_a_key_while_serving() -> None:
    """`rampart teams cache-policy` (CLI, on the store) turns the response cache on for one team
    while the server runs; a key's own policy beats its team's; an empty policy inherits again."""
    env, procs = start_env("cache-policy")
    try:
        body = question("Policies from the store.")
        assert env.raw("a", body).headers["x-rampart-cache"] == "bypass"
        out = rampart(env.data_dir, "teams", "cache-policy", "team-a", "--response", "on", "--ttl", "600")
        assert out.stdout.strip().endswith("team team-a: response cache on, ttl 600s, breakpoints inherit"), out.stdout
        deadline = time.monotonic() + 5
        while env.raw("a", body).headers["x-rampart-cache"] != "miss":
            assert time.monotonic() < deadline, "the server never applied the team's policy"
            time.sleep(0.05)
        time.sleep(0.2)
        assert env.raw("a", body).headers["x-rampart-cache"] == "hit"
        # Team b is untouched.
        assert env.raw("b", body).headers["x-rampart-cache"] == "bypass"
        # The key's own policy turns it off again for that key only.
        key_id = next(line.split()[0] for line in keys_cli(env.data_dir, "list").stdout.splitlines() if "k-a" in line)
        out = rampart(env.data_dir, "keys", "cache-policy", key_id, "--response", "off")
        assert "response cache off" in out.stdout, out.stdout
        deadline = time.monotonic() + 5
        while env.raw("a", body).headers["x-rampart-cache"] != "bypass":
            assert time.monotonic() < deadline, "the server never applied the key's policy"
            time.sleep(0.05)
        # Bad values are refused with a clear message and change nothing.
        bad = rampart(env.data_dir, "teams", "cache-policy", "team-a", "--ttl", "0", ok=False)
        assert bad.returncode != 0 and "--ttl" in bad.stderr, bad.stderr
        shown = rampart(env.data_dir, "teams", "cache-policy", "team-a")
        assert "response cache on, ttl 600s" in shown.stdout, shown.stdout
        rampart(env.data_dir, "keys", "cache-policy", key_id, "--clear")
        rampart(env.data_dir, "teams", "cache-policy", "team-a", "--clear")
        assert "response cache inherit, ttl inherit, breakpoints inherit" in rampart(env.data_dir, "teams", "cache-policy", "team-a").stdout
    finally:
        for p in procs:
            assert p.terminate() == 0
