"""Rate limits and budgets with the real binary and the official SDK.

- Proof across instances: three `rampart serve` sharing one PostgreSQL database and one Redis, a
  key made with `rampart keys create --rpm …` while they run, concurrent requests at all three:
  admitted requests never exceed the limit (plus what refilled during the burst); tokens never
  exceed it by more than one request's reservation.
- The SDK's view: 429 `RateLimitError` with `retry-after` and Rampart's `anthropic-ratelimit-*`
  headers; 402 `billing_error` that the SDK does not retry.
- Budgets count their whole period: one set (or moved to the other period) on a running
  instance, and every budget after a restart or on a Redis that lost its state, starts from the
  spend in the usage ledger, on both backends.
- Redis unreachable: 503 and a failing `/readyz`, then recovery on its own; a Redis that stops
  answering (a stand-in that accepts connections and never replies, or a stopped redis-server)
  costs the requests nothing once the gateway knows: answered at once, not after the timeout.

PostgreSQL comes from RAMPART_TEST_DATABASE_URL and Redis from RAMPART_TEST_REDIS_URL (both started
by scripts/test.sh), and libfaketime from RAMPART_TEST_LIBFAKETIME (found or installed by it);
without them these tests are skipped loudly, and fail when CI is set.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from typing import Any

import anthropic
import httpx
import pytest
from admin_support import fresh_postgres_database
from conftest import RampartProcess, SimControl, rampart_bin, wait_until

UPSTREAM_KEY = "sk-ant-upstream-limits-" + "l" * 20
PEPPER = "pepper-limits-" + "p" * 32
BODY = {"model": "claude-haiku-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "echo: limited"}]}


def need(var: str) -> str:
    value = os.environ.get(var, "")
    if not value:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {var} is not: scripts/test.sh starts the service")
        pytest.skip(f"SKIPPED: {var} is unset (./scripts/test.sh sets it)")
    return value


def fresh_database() -> str:
    """A new, empty PostgreSQL database on the RAMPART_TEST_DATABASE_URL server."""
    return fresh_postgres_database(need("RAMPART_TEST_DATABASE_URL"), "rampart_limits")


def cli(*args: str, store: list[str]) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAMPART_", "ANTHROPIC_"))}
    env["RAMPART_KEY_PEPPER"] = PEPPER
    p = subprocess.run([rampart_bin(), *args, *store], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout.strip().splitlines()


def key_id(store: list[str], *flags: str) -> tuple[str, str]:
    """A new key and its id (from the `created key <id> …` line)."""
    lines = cli("keys", "create", "--name", f"k-{uuid.uuid4().hex[:8]}", *flags, store=store)
    m = re.search(r"created key ([0-9a-f-]{36}) ", "\n".join(lines))
    assert m and lines[-1].startswith("rk_live_"), lines
    return lines[-1], m.group(1)


def create_key(store: list[str], *flags: str) -> str:
    return key_id(store, *flags)[0]


def spent_in_ledger(store: list[str], kid: str) -> int:
    """What the usage ledger (in the database) says `kid` spent, in micro-dollars."""
    out = "\n".join(cli("usage", "--key", kid, "--json", store=store))
    return sum(int(row["cost_micro_usd"]) for row in json.loads(out)["data"])


def redis_env(url: str | None = None, timeout_ms: int = 5000, **extra: str) -> dict[str, str]:
    """The Redis backend on `url` (default RAMPART_TEST_REDIS_URL) under a fresh key prefix.
    The default timeout is long: a loaded CI machine must not turn slow replies into 503s."""
    return {
        "RAMPART_LIMITS__BACKEND": "redis",
        "RAMPART_REDIS_URL": url or need("RAMPART_TEST_REDIS_URL"),
        "RAMPART_LIMITS__REDIS_PREFIX": f"limits-{uuid.uuid4().hex[:8]}",
        "RAMPART_LIMITS__REDIS_TIMEOUT_MS": str(timeout_ms),
        **extra,
    }


def serve(store: list[str], sim_url: str, name: str, extra_env: dict[str, str] | None = None) -> tuple[RampartProcess, str]:
    env = {
        "RAMPART_UPSTREAM__BASE_URL": sim_url,
        "RAMPART_UPSTREAM_API_KEY": UPSTREAM_KEY,
        "RAMPART_KEY_PEPPER": PEPPER,
        "RAMPART_ADMIN__ENABLED": "false",
        **(extra_env or {}),
    }
    proc = RampartProcess(["serve", "--listen", "127.0.0.1:0", *store], env=env, name=name)
    try:
        return proc, proc.listening_url()
    except BaseException:
        proc.kill()
        raise


def post(url: str, key: str, body: dict[str, Any] = BODY) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/messages",
        json=body,
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        timeout=30,
    )


@pytest.fixture(scope="module")
def upstream() -> Any:
    proc = RampartProcess(["sim", "--listen", "127.0.0.1:0"], name="limits-sim")
    url = proc.listening_url()
    yield url
    proc.terminate()


@pytest.fixture(scope="module")
def cluster(upstream: str) -> Any:
    """Three instances on one PostgreSQL database and one Redis (a fresh key prefix)."""
    env = redis_env()
    database = fresh_database()
    store = ["--data-dir", tempfile.mkdtemp(prefix="rampart-limits-"), "--database-url", database]
    cli("migrate", store=store)
    # One database and one Redis; each instance keeps its own data dir (its ledger spool).
    procs = [
        serve(["--data-dir", tempfile.mkdtemp(prefix=f"rampart-limits-{i}-"), "--database-url", database], upstream, f"instance-{i}", env)
        for i in range(3)
    ]
    yield store, [url for _, url in procs]
    for proc, _ in procs:
        assert proc.terminate() == 0, proc.stderr_tail()


def burst(urls: list[str], key: str, per_instance: int, body: dict[str, Any] = BODY) -> tuple[list[int], float]:
    """`per_instance` concurrent requests at each instance at once; statuses and elapsed seconds."""
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(urls) * per_instance) as pool:
        futures = [pool.submit(post, url, key, body) for url in urls for _ in range(per_instance)]
        statuses = [f.result().status_code for f in futures]
    return statuses, time.monotonic() - started


def test_a_key_made_by_the_cli_works_on_every_running_instance_at_once(cluster: Any) -> None:
    store, urls = cluster
    key = create_key(store, "--rpm", "600")
    made = time.monotonic()
    for url in urls:
        wait_until(lambda u=url: post(u, key).status_code == 200, timeout=5, interval=0.02, what=f"the new key on {url}")
    # The directory polls its version every 100 ms (plus the reload; margin for a loaded machine).
    assert time.monotonic() - made < 2.0


def test_three_instances_hold_one_request_limit_exactly(cluster: Any) -> None:
    store, urls = cluster
    limit = 20
    key = create_key(store, "--rpm", str(limit))
    for url in urls:
        wait_until(lambda u=url: httpx.get(f"{u}/readyz").status_code == 200, timeout=5, what="ready")
    time.sleep(0.3)  # every instance has loaded the key (polled every 100 ms)
    statuses, elapsed = burst(urls, key, per_instance=30)
    admitted = statuses.count(200)
    refilled = int(limit * elapsed / 60)
    assert set(statuses) <= {200, 429}, statuses
    assert limit <= admitted <= limit + refilled, f"{admitted} admitted of limit {limit} (+{refilled} refilled in {elapsed:.2f}s)"


def test_a_batch_refused_by_a_redis_budget_costs_one_round_trip_and_holds_nothing(cluster: Any) -> None:
    """The fit of a batch's worst case is checked in the admission script itself: a batch that
    does not fit is refused by that one round trip, with nothing reserved that would need a
    second one to give back (and that a lost release would have left held until its lease).
    It was three: a check of the spent budget, the reservation, and its release."""
    store, urls = cluster
    key = create_key(store, "--budget-usd", "0.0001", "--budget-period", "day")
    url = urls[0]
    wait_until(lambda: post(url, key, {**BODY, "max_tokens": 1}).status_code in (200, 402), timeout=5, what="the new key")
    client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
    trips = 'rampart_limits_redis_round_trips_total{op="%s"}'
    before = {op: metric(url, trips % op) for op in ("admit", "settle")}
    with pytest.raises(anthropic.APIStatusError) as err:
        client.messages.batches.create(requests=[{"custom_id": "a", "params": {**BODY, "max_tokens": 300}}])
    assert err.value.status_code == 402
    assert "does not fit in what is left" in err.value.body["error"]["message"]
    after = {op: metric(url, trips % op) for op in ("admit", "settle")}
    assert (after["admit"] - before["admit"], after["settle"] - before["settle"]) == (1, 0), (before, after)


def test_three_instances_hold_one_token_limit_within_one_reservation(cluster: Any, upstream: str) -> None:
    store, urls = cluster
    # The gateway estimates input with the simulator's own rule: count_tokens gives it exactly.
    counted = httpx.post(
        f"{upstream}/v1/messages/count_tokens",
        json={"model": BODY["model"], "messages": BODY["messages"]},
        headers={"x-api-key": UPSTREAM_KEY, "anthropic-version": "2023-06-01"},
    ).json()["input_tokens"]
    itpm = 10 * counted
    key = create_key(store, "--itpm", str(itpm))
    time.sleep(0.3)
    statuses, elapsed = burst(urls, key, per_instance=20)
    admitted = statuses.count(200)
    refilled = itpm * elapsed / 60
    reserved = admitted * counted
    assert admitted >= 10, statuses
    assert reserved <= itpm + refilled + counted, (
        f"{reserved} input tokens admitted, limit {itpm} (+{refilled:.0f} refilled) + one reservation {counted}"
    )


def test_three_instances_share_a_concurrency_limit(cluster: Any, upstream: str) -> None:
    store, urls = cluster
    key = create_key(store, "--concurrency", "2")
    time.sleep(0.3)
    slow = {**BODY, "messages": [{"role": "user", "content": "echo: slow"}]}
    sim_http = httpx.Client(base_url=upstream, timeout=10)
    assert sim_http.post("/_sim/faults", json={"kind": "stall_headers", "count": 100, "delay_ms": 2000, "model": BODY["model"]}).status_code < 300
    try:
        statuses, _ = burst(urls, key, per_instance=3, body=slow)
    finally:
        sim_http.delete("/_sim/faults")
    assert statuses.count(200) == 2, statuses
    assert statuses.count(429) == 7, statuses


@pytest.fixture(scope="module")
def single(upstream: str) -> Any:
    """One instance on SQLite with the in-process limiter."""
    store = ["--data-dir", tempfile.mkdtemp(prefix="rampart-limits-one-")]
    proc, url = serve(store, upstream, "limits-one")
    yield store, url
    assert proc.terminate() == 0, proc.stderr_tail()


def test_the_sdk_gets_a_rate_limit_error_with_retry_after_and_rampart_headers(single: Any) -> None:
    store, url = single
    key = create_key(store, "--rpm", "1")
    time.sleep(0.3)
    client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
    ok = client.messages.with_raw_response.create(**BODY)
    assert ok.headers["anthropic-ratelimit-requests-limit"] == "1"
    assert ok.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", ok.headers["anthropic-ratelimit-requests-reset"])
    with pytest.raises(anthropic.RateLimitError) as err:
        client.messages.create(**BODY)
    e = err.value
    assert e.status_code == 429
    assert e.response.headers["retry-after"] == "60"
    assert e.response.headers["x-should-retry"] == "true"
    assert e.body["error"]["type"] == "rate_limit_error"
    assert "limit of 1 requests per minute" in e.body["error"]["message"]
    assert e.request_id


def metric(url: str, name: str, labels: str = "") -> float:
    text = httpx.get(f"{url}/metrics").text
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_the_counters_alerts_watch_are_exported_from_the_start(single: Any) -> None:
    """At 0 before their first event, so a dashboard shows 0 rather than no data."""
    _, url = single
    text = httpx.get(f"{url}/metrics").text
    for name in (
        "rampart_pricing_unknown_model_total",
        "rampart_ledger_refused_total",
        "rampart_ledger_dropped_total",
        "rampart_ledger_corrupt_lines_total",
        "rampart_usage_estimated_total",
    ):
        assert re.search(rf"^{name} \d+$", text, re.M), name


def test_a_spent_budget_is_402_and_the_sdk_does_not_retry_it(single: Any) -> None:
    store, url = single
    key = create_key(store, "--budget-usd", "0.000001", "--budget-period", "month")
    time.sleep(0.3)
    client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=2)
    client.messages.create(**BODY)  # admitted: one micro-dollar was left, its worst case reserved
    refused = '{decision="rejected_budget"}'
    before = metric(url, "rampart_limits_decisions_total", refused)
    with pytest.raises(anthropic.APIStatusError) as err:
        client.messages.create(**BODY)
    e = err.value
    assert e.status_code == 402
    assert e.body["error"]["type"] == "billing_error"
    assert "monthly budget of $0.000001 is spent; it resets at " in e.body["error"]["message"]
    assert e.response.headers["x-should-retry"] == "false"
    # One refusal, no SDK retry (max_retries=2 would have made three).
    assert metric(url, "rampart_limits_decisions_total", refused) == before + 1


class SteppedClock:
    """A wall clock for a child process (libfaketime from RAMPART_TEST_LIBFAKETIME, preloaded),
    set to a moment and stepped while the process runs, as an NTP step or a resumed VM does; the
    monotonic clock is left alone."""

    def __init__(self) -> None:
        self.lib = need("RAMPART_TEST_LIBFAKETIME")
        self.file = tempfile.NamedTemporaryFile(prefix="rampart-clock-", suffix=".rc", delete=False).name

    def set(self, iso: str) -> None:
        """The wall clock reads `iso` (UTC) now and runs on from there."""
        target = datetime.datetime.fromisoformat(iso).replace(tzinfo=datetime.timezone.utc).timestamp()
        with open(self.file, "w") as f:
            f.write(f"{round(target - time.time()):+d}\n")

    def env(self) -> dict[str, str]:
        return {
            "LD_PRELOAD": self.lib,
            "FAKETIME_TIMESTAMP_FILE": self.file,
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }


def test_a_budget_follows_a_wall_clock_stepped_after_start(upstream: str) -> None:
    """A gateway started on a clock 4 hours slow, stepped to the true time just after midnight:
    the day's budget is a new day's at once (the 402 before the step names that midnight), and
    the rate-limit resets are on the stepped clock, not hours in the past."""
    clock = SteppedClock()
    clock.set("2026-11-30T20:00:00")
    store = ["--data-dir", tempfile.mkdtemp(prefix="rampart-limits-clock-")]
    key = create_key(store, "--rpm", "1000", "--budget-usd", "0.000001", "--budget-period", "day")
    proc, url = serve(store, upstream, "limits-clock", clock.env())
    try:
        assert post(url, key).status_code == 200  # one micro-dollar left: admitted
        r = post(url, key)
        assert r.status_code == 402, r.text
        assert "resets at 2026-12-01T00:00:00Z" in r.json()["error"]["message"]
        clock.set("2026-12-01T00:00:30")
        r = post(url, key)
        assert r.status_code == 200, r.text
        # (The `Date` header is the upstream's, on the true clock here: the step is the test's.)
        reset = datetime.datetime.fromisoformat(r.headers["anthropic-ratelimit-requests-reset"].replace("Z", "+00:00"))
        assert reset >= datetime.datetime(2026, 12, 1, 0, 0, 29, tzinfo=datetime.timezone.utc), reset
    finally:
        assert proc.terminate() == 0, proc.stderr_tail()
        os.unlink(clock.file)


def test_a_body_uploaded_across_midnight_is_charged_and_recorded_on_one_day(upstream: str) -> None:
    """Headers just before midnight, the body's last bytes after it: the budget charges the day of
    admission (the body read), and the usage record, which budgets are seeded from after a
    restart, lands on that same day."""
    clock = SteppedClock()
    clock.set("2026-11-30T12:00:00")
    store = ["--data-dir", tempfile.mkdtemp(prefix="rampart-limits-midnight-")]
    key, kid = key_id(store, "--budget-usd", "1", "--budget-period", "day")
    proc, url = serve(store, upstream, "limits-midnight", clock.env())
    try:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        body = json.dumps(BODY).encode()
        head = (
            f"POST /v1/messages HTTP/1.1\r\nhost: {host}\r\nx-api-key: {key}\r\n"
            f"anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        ).encode()
        clock.set("2026-11-30T23:59:59")
        with socket.create_connection((host, int(port)), timeout=30) as s:
            s.sendall(head + body[:10])
            time.sleep(2.5)
            s.sendall(body[10:])
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]

        def days() -> list[str]:
            out = cli("usage", "--json", "--group-by", "day", "--key", kid,
                      "--from", "2026-11-30", "--to", "2026-12-02", store=store)
            return [row["day"] for row in json.loads("\n".join(out))["data"]]

        assert wait_until(days, timeout=10, what="the usage record") == ["2026-12-01"]
    finally:
        assert proc.terminate() == 0, proc.stderr_tail()
        os.unlink(clock.file)


def test_a_client_that_leaves_before_its_answer_still_pays_for_it(single: Any, upstream: str) -> None:
    """Leaving while the upstream works on the request (here the SDK's own timeout) does not make
    it free: the upstream may finish and bill it, so the key's budget is charged an estimate, a
    whole answer's max_tokens of output, and the next request finds the budget spent."""
    store, url = single
    # 400 output tokens of Sonnet 4.6 ($15/MTok) cost 6,000 micro-dollars: more than this budget.
    key, kid = key_id(store, "--budget-usd", "0.005", "--budget-period", "day")
    time.sleep(0.3)
    SimControl(upstream).fault("stall_headers", delay_ms=3000, model="claude-sonnet-4-6")
    body = {**BODY, "model": "claude-sonnet-4-6", "max_tokens": 400}
    client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, timeout=0.5)
    with pytest.raises(anthropic.APITimeoutError):
        client.messages.create(**body)
    # Settled and recorded once the gateway has seen the client go.
    spent = wait_until(lambda: spent_in_ledger(store, kid), timeout=10, interval=0.2, what="the left request's charge")
    assert 6000 <= spent < 6500, spent
    refused = post(url, key, {**BODY, "model": "claude-sonnet-4-6"})
    assert refused.status_code == 402, refused.text
    assert refused.json()["error"]["type"] == "billing_error"


def test_a_routing_alias_is_priced_as_the_model_it_names(upstream: str) -> None:
    """A request naming an alias reserves, and when its usage cannot be read is charged, at the
    prices of the model the alias names. At the unknown-model default ($30 in, $75 out per MTok
    worst case) one request in flight would hold this budget whole and refuse the next, and a
    left request would be charged 15 times a Haiku request's estimate."""
    store = ["--data-dir", tempfile.mkdtemp(prefix="rampart-limits-alias-")]
    proc, url = serve(store, upstream, "limits-alias", {"RAMPART_ROUTING__ALIASES__FAST": "claude-haiku-4-5"})
    try:
        key, kid = key_id(store, "--budget-usd", "0.02", "--budget-period", "day")
        time.sleep(0.3)
        unknown = metric(url, "rampart_pricing_unknown_model_total")
        body = {**BODY, "model": "fast", "max_tokens": 1000}
        sim = SimControl(upstream)
        # One request in flight (its answer held back) while a second one comes.
        sim.fault("stall_headers", delay_ms=2000, model="claude-haiku-4-5")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(post, url, key, body)
            time.sleep(0.5)
            second = post(url, key, body)
            assert second.status_code == 200, second.text
            assert first.result().status_code == 200
        def recorded(n: int) -> int | None:
            rows = json.loads("\n".join(cli("usage", "--key", kid, "--json", store=store)))["data"]
            done = sum(int(r["requests"]) for r in rows) == n
            return sum(int(r["cost_micro_usd"]) for r in rows) if done else None

        before = wait_until(lambda: recorded(2), timeout=10, interval=0.2, what="two records")
        # A client that leaves before its answer: charged the estimate, 1,000 output tokens of
        # Haiku 4.5 ($5/MTok) and a few input tokens.
        sim.fault("stall_headers", delay_ms=3000, model="claude-haiku-4-5")
        client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, timeout=0.5)
        with pytest.raises(anthropic.APITimeoutError):
            client.messages.create(**body)
        spent = wait_until(lambda: recorded(3), timeout=10, interval=0.2, what="the left request's record")
        assert 5000 <= spent - before < 5500, (before, spent)
        assert metric(url, "rampart_pricing_unknown_model_total") == unknown == 0
    finally:
        assert proc.terminate() == 0, proc.stderr_tail()


def test_a_batch_that_does_not_fit_in_what_is_left_says_so_not_that_the_budget_is_spent(single: Any) -> None:
    """A batch reserves its worst case whole: refused when it does not fit in what is left, with a
    402 that says how much it needs and how much is left (the budget is far from spent)."""
    store, url = single
    key = create_key(store, "--budget-usd", "0.001", "--budget-period", "day")
    time.sleep(0.3)
    client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=2)
    item = {"custom_id": "a", "params": {**BODY, "max_tokens": 300}}
    client.messages.batches.create(requests=[item])  # its worst case is held: over half the budget
    with pytest.raises(anthropic.APIStatusError) as err:
        client.messages.batches.create(requests=[item])
    e = err.value
    assert e.status_code == 402
    assert e.body["error"]["type"] == "billing_error"
    assert e.response.headers["x-should-retry"] == "false"
    message = e.body["error"]["message"]
    m = re.fullmatch(
        r"budget exceeded: this batch's worst case of \$([\d.]+) does not fit in what is left \(\$([\d.]+)\) "
        r"of this API key's daily budget of \$0\.001; it resets at (\d{4}-\d\d-\d\dT00:00:00Z)",
        message,
    )
    assert m, message
    worst, left = float(m.group(1)), float(m.group(2))
    # The first batch holds the same worst case; nothing was spent yet.
    assert worst > left and abs(worst + left - 0.001) < 1e-9, message


def test_a_batch_reserves_max_tokens_however_the_number_is_written(single: Any) -> None:
    """The API takes `4000.0`, `4e3` and `"4000"` for a max_tokens of 4000 and generates that much:
    a batch's worst case counts them all alike (one spelt as a float reserved no output at all,
    and a budget could be overspent without bound)."""
    store, url = single
    key = create_key(store, "--budget-usd", "0.05", "--budget-period", "day")
    time.sleep(0.3)
    client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
    for spelt in (4000, 4000.0, 4e3, "4000"):
        items = [
            {"custom_id": f"r{i}", "params": {"model": "claude-sonnet-4-6", "max_tokens": spelt, "messages": [{"role": "user", "content": f"hello {i}"}]}}
            for i in range(200)
        ]
        with pytest.raises(anthropic.APIStatusError) as err:
            client.messages.batches.create(requests=items)  # type: ignore[arg-type]
        assert err.value.status_code == 402, (spelt, err.value)
        assert "does not fit in what is left" in err.value.body["error"]["message"], spelt


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, port: int, workdir: str) -> None:
        self.port, self.workdir = port, workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        server = shutil.which("redis-server")
        if not server:
            need("RAMPART_TEST_REDIS_URL")  # skip or fail the same way as without Redis
            pytest.fail("redis-server is not installed (scripts/test.sh installs it)")
        self.proc = subprocess.Popen(
            [server, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no", "--dir", self.workdir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def up() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as c:
                    c.sendall(b"PING\r\n")
                    return c.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        wait_until(up, timeout=10, what="redis-server")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_an_unreachable_redis_fails_closed_with_503_and_recovers_by_itself(upstream: str) -> None:
    need("RAMPART_TEST_REDIS_URL")
    redis = RedisServer(free_port(), tempfile.mkdtemp(prefix="rampart-redis-"))
    redis.start()
    store = ["--data-dir", tempfile.mkdtemp(prefix="rampart-limits-redis-")]
    key = create_key(store, "--rpm", "1000")
    env = redis_env(f"redis://127.0.0.1:{redis.port}", timeout_ms=200)
    proc, url = serve(store, upstream, "limits-redis", env)
    try:
        assert post(url, key).status_code == 200
        assert httpx.get(f"{url}/readyz").status_code == 200
        redis.stop()
        r = post(url, key)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["type"] == "api_error"
        assert "rate-limit store" in r.json()["error"]["message"]
        assert r.headers["retry-after"] == "1"
        ready = wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 503 or None, timeout=5, what="readyz 503")
        assert ready
        assert metric(url, "rampart_limits_backend_up") == 0.0
        redis.start()
        wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, timeout=15, what="readyz back to 200")
        wait_until(lambda: post(url, key).status_code == 200, timeout=10, what="requests admitted again")
        assert metric(url, "rampart_limits_backend_up") == 1.0
    finally:
        assert proc.terminate() == 0, proc.stderr_tail()
        redis.stop()



def test_a_gauge_says_whether_redis_budgets_were_started_from_the_ledger(upstream: str) -> None:
    """`rampart_limits_budgets_seeded` is 0 while Redis budgets count from zero (here the gateway
    started before Redis, so it could not start them from the usage ledger; as when the store does
    not answer after Redis lost its state) and 1 once they were started, so an alert can tell."""
    need("RAMPART_TEST_REDIS_URL")
    redis = RedisServer(free_port(), tempfile.mkdtemp(prefix="rampart-redis-"))
    store = ["--data-dir", tempfile.mkdtemp(prefix="rampart-limits-redis-")]
    key = create_key(store, "--budget-usd", "1", "--budget-period", "day")
    env = redis_env(f"redis://127.0.0.1:{redis.port}", timeout_ms=200)
    proc, url = serve(store, upstream, "limits-redis-seeded", env)
    try:
        text = httpx.get(f"{url}/metrics").text
        assert re.search(r"^rampart_limits_budgets_seeded 0$", text, re.M), text
        redis.start()
        wait_until(lambda: metric(url, "rampart_limits_budgets_seeded") == 1.0, timeout=15, what="budgets seeded")
        wait_until(lambda: post(url, key).status_code == 200, timeout=10, what="requests admitted")
    finally:
        assert proc.terminate() == 0, proc.stderr_tail()
        redis.stop()

class Stall:
    """A stand-in for a Redis that stops answering (a frozen server, a network partition): it
    accepts connections and never replies, nor closes them."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.sock.close()
        for conn in self.held:
            conn.close()


def ready_text(url: str) -> str:
    return httpx.get(f"{url}/readyz").text.strip()


def assert_answered_at_once(client: anthropic.Anthropic, fail_closed: bool, times: int = 5) -> None:
    """`times` requests while Redis does not answer, each answered well within the 2 s timeout."""
    for _ in range(times):
        started = time.monotonic()
        if fail_closed:
            with pytest.raises(anthropic.APIStatusError) as err:
                client.messages.create(**BODY)
            e = err.value
            assert e.status_code == 503, e
            assert e.body["error"]["type"] == "api_error"
            assert "rate-limit store" in e.body["error"]["message"]
            assert e.response.headers["retry-after"] == "1"
        else:
            client.messages.create(**BODY)
        elapsed = time.monotonic() - started
        # Half the 2 s timeout: waiting on Redis would take all of it (room for a slow machine).
        assert elapsed < 1.0, f"{elapsed:.3f}s for a request while Redis is known not to answer"


@pytest.mark.parametrize("on_failure", ["closed", "open"])
def test_a_redis_that_stops_answering_is_not_waited_on_and_recovers_when_one_answers(upstream: str, on_failure: str) -> None:
    """Every request must not pay `redis_timeout_ms` while Redis is known to be down: once the
    health checks have found the stand-in silent, requests get the configured answer at once
    (503, or unlimited); when a real Redis answers on that address, limits apply again."""
    stall = Stall()
    redis = RedisServer(stall.port, tempfile.mkdtemp(prefix="rampart-redis-"))
    store = ["--data-dir", tempfile.mkdtemp(prefix="rampart-limits-stall-")]
    key = create_key(store, "--rpm", "1000")
    env = redis_env(f"redis://127.0.0.1:{stall.port}", timeout_ms=2000, RAMPART_LIMITS__ON_REDIS_FAILURE=on_failure)
    proc, url = serve(store, upstream, f"limits-stall-{on_failure}", env)
    try:
        down = "requests with limits get 503" if on_failure == "closed" else "limits are not enforced"
        wait_until(lambda: down in ready_text(url), timeout=10, what=f"/readyz saying {down!r}")
        client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
        assert_answered_at_once(client, fail_closed=on_failure == "closed")
        # A Redis that answers takes the stand-in's place: the gateway finds it by itself.
        stall.close()
        redis.start()
        wait_until(lambda: ready_text(url) == "ready", timeout=15, what="/readyz back to ready")
        ok = client.messages.with_raw_response.create(**BODY)
        assert ok.headers["anthropic-ratelimit-requests-limit"] == "1000", "limits apply again"
        assert metric(url, "rampart_limits_backend_up") == 1.0
    finally:
        assert proc.terminate() == 0, proc.stderr_tail()
        redis.stop()
        stall.close()


def test_a_redis_that_hangs_mid_traffic_costs_one_timeout_then_nothing(upstream: str) -> None:
    """A redis-server that answers, then is stopped (SIGSTOP: connections stay open, no reply):
    after the gateway notices, refusals are immediate; once it runs again, requests pass."""
    need("RAMPART_TEST_REDIS_URL")
    redis = RedisServer(free_port(), tempfile.mkdtemp(prefix="rampart-redis-"))
    redis.start()
    assert redis.proc is not None
    store = ["--data-dir", tempfile.mkdtemp(prefix="rampart-limits-hang-")]
    key = create_key(store, "--rpm", "1000")
    env = redis_env(f"redis://127.0.0.1:{redis.port}", timeout_ms=2000)
    proc, url = serve(store, upstream, "limits-hang", env)
    stopped = False
    try:
        client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
        client.messages.create(**BODY)
        redis.proc.send_signal(signal.SIGSTOP)
        stopped = True
        wait_until(lambda: "requests with limits get 503" in ready_text(url), timeout=10, what="/readyz 503")
        assert_answered_at_once(client, fail_closed=True)
        redis.proc.send_signal(signal.SIGCONT)
        stopped = False
        wait_until(lambda: ready_text(url) == "ready", timeout=15, what="/readyz back to ready")
        client.messages.create(**BODY)
    finally:
        if stopped:
            redis.proc.send_signal(signal.SIGCONT)
        assert proc.terminate() == 0, proc.stderr_tail()
        redis.stop()


@pytest.mark.parametrize("backend", ["in-process", "redis"])
def test_a_spent_budget_stays_spent_after_a_restart(upstream: str, backend: str) -> None:
    """In process the budget state dies with the process; on Redis each instance here gets a
    fresh key prefix, as after a Redis restarted without persistence. Either way the starting
    instance takes the period's spend from the usage ledger and does not hand it out again: every
    budget, daily and monthly (on Redis the start seeds them concurrently)."""
    store = ["--data-dir", tempfile.mkdtemp(prefix="rampart-limits-restart-")]
    keys = [create_key(store, "--budget-usd", "0.000001", "--budget-period", period) for period in ("day", "day", "month", "month")]
    env = redis_env if backend == "redis" else dict
    proc, url = serve(store, upstream, "limits-restart-1", env())
    try:
        for key in keys:
            assert post(url, key).status_code == 200
            assert post(url, key).status_code == 402
    finally:
        # SIGTERM drains the usage ledger into the database.
        assert proc.terminate() == 0, proc.stderr_tail()
    proc, url = serve(store, upstream, "limits-restart-2", env())
    try:
        for key in keys:
            r = post(url, key)
            assert r.status_code == 402, r.text
            assert r.json()["error"]["type"] == "billing_error"
    finally:
        assert proc.terminate() == 0, proc.stderr_tail()


def test_a_limited_key_never_sees_the_upstream_keys_rate_limit_headers(single: Any) -> None:
    """The upstream's `anthropic-ratelimit-*` describe the organisation's shared key: a limited key
    gets Rampart's own or none, on every route (models, count_tokens without a request limit)."""
    store, url = single
    rpm_key = create_key(store, "--rpm", "7")
    itpm_key = create_key(store, "--itpm", "5000")
    time.sleep(0.3)

    def ratelimit(headers: httpx.Headers) -> dict[str, str]:
        return {k: v for k, v in headers.items() if k.startswith("anthropic-ratelimit-")}

    client = anthropic.Anthropic(base_url=url, api_key=rpm_key, max_retries=0)
    models = client.models.with_raw_response.list()
    assert models.http_response.status_code == 200
    shown = ratelimit(models.headers)
    assert all(v == "7" for k, v in shown.items() if k.endswith("-limit")), shown
    assert not any(k.startswith("anthropic-ratelimit-tokens") or "input" in k or "output" in k for k in shown), shown

    client = anthropic.Anthropic(base_url=url, api_key=itpm_key, max_retries=0)
    counted = client.messages.with_raw_response.count_tokens(model=BODY["model"], messages=BODY["messages"])
    assert counted.http_response.status_code == 200
    shown = ratelimit(counted.headers)
    assert all(v == "5000" for k, v in shown.items() if k.endswith("-limit")), shown
    assert not any(k.startswith("anthropic-ratelimit-requests") or "output" in k for k in shown), shown


def test_a_stream_the_client_abandons_settles_with_the_output_it_delivered(tmp_path: Any) -> None:
    """A client that reads a long stream and hangs up before `message_delta` was still served the
    output it read (and the upstream bills it): the settlement counts at least a token per content
    delta, not the one output token of `message_start`."""
    sim = RampartProcess(["sim", "--listen", "127.0.0.1:0", "--tokens-per-sec", "300"], name="limits-paced-sim")
    try:
        store = ["--data-dir", str(tmp_path)]
        otpm = 1200
        key = create_key(store, "--otpm", str(otpm))
        proc, url = serve(store, sim.listening_url(), "limits-abandoned")
        try:
            client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
            words = " ".join(f"w{i}" for i in range(3000))
            deltas = 0
            with client.messages.stream(
                model=BODY["model"], max_tokens=4000, messages=[{"role": "user", "content": f"echo: {words}"}]
            ) as stream:
                for event in stream:
                    if event.type == "content_block_delta":
                        deltas += 1
                    if deltas == 100:
                        break
            # Until the gateway has seen the client go and settled, the reservation is still held
            # (and the next request refused): poll rather than guess how long that takes.
            r = wait_until(
                lambda: (r := post(url, key, {**BODY, "max_tokens": 1})).status_code == 200 and r,
                timeout=10,
                interval=0.1,
                what="the abandoned stream settled",
            )
            left = int(r.headers["anthropic-ratelimit-output-tokens-remaining"])
            # 100 deltas read (300 output tokens by the simulator's count) in about a second, while
            # the bucket refills 20 a second: settled with one output token, all but one or two would
            # be back; settled with a token per delta, 100 less the refill (room here for ~4 s of it).
            assert left <= otpm - 15, f"{left} of {otpm} output tokens left after {deltas} deltas were delivered"
        finally:
            assert proc.terminate() == 0, proc.stderr_tail()
    finally:
        sim.terminate()


def test_a_batch_ended_by_another_instance_gives_back_its_reservation(upstream: str) -> None:
    """Two instances on one Redis and PostgreSQL: a batch made on one and ended by the other (its
    poll, or a client's GET there) is charged what it cost, once; the worst case the creating
    instance reserved must not stay held (nor turn into spend when its lease lapses)."""
    database = fresh_database()
    store = ["--data-dir", tempfile.mkdtemp(prefix="rampart-limits-batch-"), "--database-url", database]
    cli("migrate", store=store)
    sim = RampartProcess(["sim", "--listen", "127.0.0.1:0", "--batch-processing-ms", "200"], name="limits-batch-sim")
    # Neither instance polls the upstream by itself: the second ends the batch on a client's GET.
    env = redis_env(RAMPART_BATCHES__POLL_INTERVAL_MS="600000")
    procs = []
    try:
        procs = [
            serve(["--data-dir", tempfile.mkdtemp(prefix=f"rampart-limits-batch-{i}-"), "--database-url", database], sim.listening_url(), f"batch-instance-{i}", env)
            for i in range(2)
        ]
        (_, made_on), (_, ended_on) = procs
        # $0.001 a day; one item of 300 output tokens reserves ~$0.00076 at batch rates.
        key = create_key(store, "--budget-usd", "0.001", "--budget-period", "day")
        time.sleep(0.3)
        client = anthropic.Anthropic(base_url=made_on, api_key=key, max_retries=0)
        item = {"custom_id": "a", "params": {**BODY, "max_tokens": 300}}
        first = client.messages.batches.create(requests=[item])
        # Held: the same batch does not fit beside it.
        with pytest.raises(anthropic.APIStatusError) as held:
            client.messages.batches.create(requests=[item])
        assert held.value.status_code == 402
        assert held.value.body["error"]["type"] == "billing_error"
        other = anthropic.Anthropic(base_url=ended_on, api_key=key, max_retries=0)
        wait_until(
            lambda: other.messages.batches.retrieve(first.id).processing_status == "ended",
            timeout=15,
            interval=0.2,
            what="the batch ended through the other instance",
        )
        # It cost a few micro-dollars: the same batch fits again once the reservation is back.
        deadline = time.monotonic() + 15
        while True:
            try:
                client.messages.batches.create(requests=[item])
                break
            except anthropic.APIStatusError as e:
                assert e.status_code == 402, e
                assert time.monotonic() < deadline, f"the ended batch's reservation is still held: {e.body}"
                time.sleep(0.5)
    finally:
        for proc, _ in procs:
            assert proc.terminate() == 0, proc.stderr_tail()
        sim.terminate()


def test_prompt_cache_reads_do_not_count_against_the_input_token_limit(single: Any) -> None:
    """As with Anthropic's own limits, cache reads are not deducted from input tokens per minute:
    the reservation holds the whole prompt's estimate, and settlement gives back what was read
    from the cache (cache writes and uncached input still count)."""
    store, url = single
    key = create_key(store, "--itpm", "100000")
    time.sleep(0.3)
    client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
    # ~5000 tokens, above Sonnet 4.6's 2048-token cache minimum; unique per run.
    system_text = f"[{uuid.uuid4().hex}] " + ("You are a meticulous archivist of maritime history. " * 380)
    kwargs: dict[str, Any] = dict(
        model="claude-sonnet-4-6",
        max_tokens=8,
        system=[{"type": "text", "text": system_text, "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "echo: cached"}],
    )
    seen = []
    for _ in range(3):
        r = client.messages.with_raw_response.create(**kwargs)
        seen.append((int(r.headers["anthropic-ratelimit-input-tokens-remaining"]), r.parse().usage))
    (_, first), (left_2, second), (left_3, _) = seen
    assert first.cache_creation_input_tokens > 2048
    assert second.cache_read_input_tokens == first.cache_creation_input_tokens
    # Each header is the bucket once that request's reservation (the same estimate each time) is
    # taken; the third's also has the second's settlement, which drew only its uncached input
    # (refill only adds). Counting the cache read would have drawn ~5000 more.
    assert left_3 - left_2 >= -second.input_tokens, (left_2, left_3, second)


def test_a_response_cache_hit_is_a_request_that_draws_no_tokens(single: Any) -> None:
    """A hit is answered without an upstream call: it counts against the request limits like any
    request (a key out of requests gets 429 for a cached answer too), but its reservation of
    tokens is given back whole, where the answer it replays used ~300 output tokens."""
    store, url = single
    key = create_key(store, "--rpm", "3", "--otpm", "2000")
    time.sleep(0.3)
    client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
    words = " ".join(f"w{i}" for i in range(300))
    body: dict[str, Any] = dict(
        model="claude-haiku-4-5",
        max_tokens=600,
        messages=[{"role": "user", "content": f"echo: [{uuid.uuid4().hex}] {words}"}],
    )
    use_cache = {"x-rampart-cache": "use"}
    seen = []
    for _ in range(3):
        r = client.messages.with_raw_response.create(**body, extra_headers=use_cache)
        seen.append((r.headers["x-rampart-cache"], int(r.headers["anthropic-ratelimit-output-tokens-remaining"]), r.parse()))
    (first, _, miss), (second, left_2, hit), (third, left_3, _) = seen
    assert (first, second, third) == ("miss", "hit", "hit")
    assert miss.usage.output_tokens >= 300 and hit.content[0].text == miss.content[0].text
    # Each header is the bucket once that request's reservation (600) is taken; the third's also
    # has the second's settlement. A hit drawing the ~300 output tokens it replays would show here.
    assert left_3 >= left_2, (left_2, left_3)
    # Three requests of three a minute: a fourth is refused even though its answer is cached.
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(**body, extra_headers=use_cache)


def test_a_raised_team_default_applies_to_an_exhausted_key_at_once(single: Any) -> None:
    store, url = single
    team = f"t-{uuid.uuid4().hex[:8]}"
    cli("teams", "create", team, store=store)
    cli("teams", "limits", team, "--key-rpm", "1", store=store)
    key = create_key(store, "--team", team)
    time.sleep(0.3)
    client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
    client.messages.create(**BODY)
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(**BODY)
    cli("teams", "limits", team, "--key-rpm", "60", store=store)
    # The first request the new default lets through (the directory polls every ~0.1 s): 1 of 60
    # used this minute, so 58 left after it, not what a second's refill at the new rate gives.
    ok = wait_until(lambda: (r := post(url, key)).status_code == 200 and r, timeout=10, interval=0.05, what="the raised default")
    assert ok.headers["anthropic-ratelimit-requests-limit"] == "60"
    assert int(ok.headers["anthropic-ratelimit-requests-remaining"]) >= 55, ok.headers



@pytest.mark.parametrize("backend", ["in-process", "redis"])
@pytest.mark.parametrize("before", ["no budget", "a daily budget"])
def test_a_budget_set_on_a_running_instance_counts_what_the_period_already_spent(upstream: str, backend: str, before: str) -> None:
    """A key spends without a budget (or under a daily one); a monthly budget below what it
    spent this month is then set while the server runs: the next request is refused, as after a
    restart, rather than the new budget counting from zero."""
    store = ["--data-dir", tempfile.mkdtemp(prefix="rampart-limits-seed-")]
    env = redis_env() if backend == "redis" else {}
    flags = ("--budget-usd", "1", "--budget-period", "day") if before == "a daily budget" else ()
    key, kid = key_id(store, *flags)
    proc, url = serve(store, upstream, "limits-seed", env)
    try:
        client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
        for _ in range(3):
            client.messages.create(**BODY)
        spent = wait_until(lambda: (s := spent_in_ledger(store, kid)) > 0 and s, timeout=10, what="the spend in the ledger")
        budget = f"{spent / 10 / 1e6:.6f}"
        cli("keys", "limits", kid, "--budget-usd", budget, "--budget-period", "month", store=store)
        # The directory reloads within ~0.1 s. The first request after it is refused: counted
        # from zero, the new budget would admit it (something would be left).
        time.sleep(1.5)
        with pytest.raises(anthropic.APIStatusError) as err:
            client.messages.create(**BODY)
        e = err.value
        assert e.status_code == 402, e
        assert e.body["error"]["type"] == "billing_error"
        assert f"monthly budget of ${budget} is spent" in e.body["error"]["message"], e.body
    finally:
        assert proc.terminate() == 0, proc.stderr_tail()



@pytest.mark.parametrize("backend", ["in-process", "redis"])
def test_rotating_a_key_hands_out_no_fresh_budget_or_limits(upstream: str, backend: str) -> None:
    """A rotated key's successor shares its line's limits and budget: rotating (which a key's own
    developer may do) never buys a fresh allowance, while the old key works during the overlap
    or after a restart."""
    store = ["--data-dir", tempfile.mkdtemp(prefix="rampart-limits-rotate-")]
    spent, spent_id = key_id(store, "--budget-usd", "0.000001", "--budget-period", "day")
    paced, paced_id = key_id(store, "--rpm", "2")
    env = redis_env if backend == "redis" else dict
    proc, url = serve(store, upstream, "limits-rotate-1", env())
    try:
        assert post(url, spent).status_code == 200
        assert post(url, spent).status_code == 402
        successor = cli("keys", "rotate", spent_id, "--overlap-hours", "0", store=store)[-1]
        r = wait_until(lambda: (r := post(url, successor)).status_code != 401 and r, timeout=10, what="the new key in force")
        assert r.status_code == 402, r.text
        assert "daily budget" in r.json()["error"]["message"]

        assert post(url, paced).status_code == 200
        paced_next = cli("keys", "rotate", paced_id, "--overlap-hours", "1", store=store)[-1]
        r = wait_until(lambda: (r := post(url, paced_next)).status_code != 401 and r, timeout=10, what="the new key in force")
        assert r.status_code == 200, "the second of the line's two requests a minute"
        for key in (paced, paced_next):
            r = post(url, key)
            assert r.status_code == 429, r.text
            assert r.json()["error"]["type"] == "rate_limit_error"
    finally:
        assert proc.terminate() == 0, proc.stderr_tail()
    # After a restart the successor's budget counts the first key's spend from the ledger.
    proc, url = serve(store, upstream, "limits-rotate-2", env())
    try:
        r = post(url, successor)
        assert r.status_code == 402, r.text
    finally:
        assert proc.terminate() == 0, proc.stderr_tail()
