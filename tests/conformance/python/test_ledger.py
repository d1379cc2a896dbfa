"""The usage ledger of a real `rampart serve --data-dir`: every request that got a whole response
is in `usage_records` after `kill -9` under load and a restart (each exactly once, the rollups
agreeing), and SIGTERM writes everything before the process exits. Clients are the official SDK,
each request named by its own `x-request-id`.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from conftest import Demo, RampartProcess, SimControl, wait_until
from test_virtual_keys import UPSTREAM_KEY, keys_cli, rampart, serve_env, start_serve

# A stream cut by the kill ends in the HTTP client's own error, not one of the SDK's: the SDK's
# transport is httpx2 in the newer releases, httpx before.
try:
    import httpx2

    TRANSPORT_ERRORS: tuple[type[Exception], ...] = (httpx.TransportError, httpx2.TransportError)
except ImportError:  # pragma: no cover - older SDK releases
    TRANSPORT_ERRORS = (httpx.TransportError,)


def db_rows(data_dir: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(Path(data_dir) / "rampart.db", timeout=30) as db:
        return db.execute(sql, params).fetchall()


def ledger_ids(data_dir: str) -> list[str]:
    return [r[0] for r in db_rows(data_dir, "SELECT request_id FROM usage_records")]


def rollup_requests(data_dir: str) -> tuple[int, int]:
    """Requests summed over the hourly and over the daily rollups."""
    rows = dict(db_rows(data_dir, "SELECT period, SUM(requests) FROM usage_rollups GROUP BY period"))
    return rows.get("hour", 0), rows.get("day", 0)


def new_key(data_dir: str) -> str:
    return keys_cli(data_dir, "create", "--name", f"ledger-{uuid.uuid4().hex[:6]}").stdout.strip().splitlines()[-1]


class Load:
    """Threads sending requests (half streamed) through the SDK until stopped; the ids of the
    requests whose whole response arrived are in `answered`."""

    def __init__(self, url: str, key: str, threads: int = 6) -> None:
        self.url, self.key = url, key
        self.answered: list[str] = []
        self.attempted: list[str] = []
        self.failed = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)

    def run(self, n: int) -> None:
        client = anthropic.Anthropic(base_url=self.url, api_key=self.key, max_retries=0, timeout=10)
        i = 0
        while not self.stop.is_set():
            i += 1
            rid = f"ledger-{n}-{i}-{uuid.uuid4().hex[:8]}"
            with self.lock:
                self.attempted.append(rid)
            try:
                args = dict(
                    model="claude-haiku-4-5",
                    max_tokens=20,
                    messages=[{"role": "user", "content": f"echo: load {n} {i}"}],
                    extra_headers={"x-request-id": rid},
                )
                if i % 2:
                    with client.messages.stream(**args) as stream:
                        message = stream.get_final_message()
                else:
                    message = client.messages.create(**args)
                assert message.usage.output_tokens > 0
            except (
                anthropic.APIConnectionError,
                anthropic.APIStatusError,
                anthropic.APITimeoutError,
                *TRANSPORT_ERRORS,
            ):
                with self.lock:
                    self.failed += 1
                time.sleep(0.01)
                continue
            with self.lock:
                self.answered.append(rid)


@pytest.fixture
def data_dir() -> str:
    return tempfile.mkdtemp(prefix="rampart-ledger-")


def serve(data_dir: str, demo: Demo, name: str, **env: str) -> tuple[RampartProcess, str]:
    return start_serve(data_dir, serve_env(demo.sim_url, RAMPART_UPSTREAM_API_KEY=UPSTREAM_KEY, **env), name)


def test_kill_9_under_load_loses_no_answered_request(demo: Demo, data_dir: str) -> None:
    key = new_key(data_dir)
    # At the kill some records are in the database, the rest only in the spool, some of them in
    # segments already partly written to the database. Batches go to the database once a second
    # here, so the load fills the spool between them whatever the machine's speed.
    proc, url = serve(data_dir, demo, "serve-ledger-kill", RAMPART_LEDGER__FLUSH_INTERVAL_MS="1000")

    def answered_only_in_spool() -> bool:
        with load.lock:
            answered = set(load.answered)
        return bool(answered - set(ledger_ids(data_dir)))

    with Load(url, key) as load:
        wait_until(lambda: len(load.answered) >= 300, timeout=60, what="300 answered requests")
        wait_until(lambda: ledger_ids(data_dir), timeout=30, what="a first batch in the database")
        wait_until(answered_only_in_spool, timeout=30, what="answered requests not yet in the database")
        proc.proc.kill()  # SIGKILL, mid-load
        proc.proc.wait()
        with load.lock:
            answered = list(load.answered)
        time.sleep(0.3)  # requests in flight at the kill fail
    assert load.failed > 0, "the kill came while requests were in flight"
    in_db_at_kill = set(ledger_ids(data_dir))
    assert in_db_at_kill, "some answered requests were in the database"
    assert set(answered) - in_db_at_kill, "some answered requests were only in the spool"

    # The next start replays the spool; SIGTERM then drains it.
    proc2, _ = serve(data_dir, demo, "serve-ledger-restart")
    assert proc2.terminate() == 0, proc2.stderr_tail()
    ids = ledger_ids(data_dir)
    assert len(ids) == len(set(ids)), "no request is recorded twice"
    missing = set(answered) - set(ids)
    assert not missing, f"{len(missing)} of {len(answered)} answered requests are not in the ledger: {sorted(missing)[:5]}"
    assert set(ids) <= set(load.attempted), "nothing is recorded that was not sent"
    hourly, daily = rollup_requests(data_dir)
    assert hourly == daily == len(ids), "the rollups count every record once"
    spool = Path(data_dir) / "ledger-spool"
    assert not list(spool.glob("*.spool")), "drained segments are deleted"


def test_sigterm_writes_every_record_before_exiting(demo: Demo, data_dir: str) -> None:
    key = new_key(data_dir)
    # The writer would wait a minute: only the shutdown flush can have written the records.
    proc, url = serve(data_dir, demo, "serve-ledger-term", RAMPART_LEDGER__FLUSH_INTERVAL_MS="60000")
    with Load(url, key, threads=3) as load:
        wait_until(lambda: len(load.answered) >= 60, timeout=60, what="60 answered requests")
    assert ledger_ids(data_dir) == [], "nothing is written before the shutdown flush"
    # The gauges follow the spool every second: every request waits there.
    def gauge(name: str) -> float:
        text = httpx.get(f"{url}/metrics", timeout=10).text
        line = next((l for l in text.splitlines() if l.startswith(f"{name} ")), None)
        return float(line.split()[1]) if line else -1.0

    wait_until(lambda: gauge("rampart_ledger_queue_depth") == len(load.attempted), timeout=5, what="the queue depth gauge")
    assert gauge("rampart_ledger_spool_bytes") > 100 * len(load.attempted)
    # Answers that end in the same turn of a worker share a spool write: never more writes
    # than records.
    assert 0 < gauge("rampart_ledger_spool_writes_total") <= len(load.attempted)
    assert proc.terminate() == 0, proc.stderr_tail()
    ids = set(ledger_ids(data_dir))
    assert set(load.answered) <= ids
    assert len(ids) == len(load.attempted) - load.failed
    cost = db_rows(data_dir, "SELECT SUM(cost_micro_usd), MIN(cost_micro_usd) FROM usage_records")[0]
    assert cost[1] > 0, "every answered request was priced"

    # `rampart usage` reads the same rollups: as JSON, and as a table by model.
    report = json.loads(rampart(data_dir, "usage", "--json").stdout)
    assert report["group_by"] == []
    assert report["data"][0]["requests"] == len(ids)
    assert report["data"][0]["cost_micro_usd"] == cost[0]
    table = rampart(data_dir, "usage", "--group-by", "model,day").stdout.splitlines()
    assert table[1].split()[:3] == ["day", "model", "requests"], table
    assert any("claude-haiku-4-5" in line and str(len(ids)) in line.split() for line in table[2:]), table
    bad = rampart(data_dir, "usage", "--group-by", "colour", ok=False)
    assert bad.returncode != 0 and "unknown dimension" in bad.stderr


def test_usage_cli_refuses_unreportable_ranges_cleanly(data_dir: str) -> None:
    # A database to read (an empty ledger), made the way operators make one.
    rampart(data_dir, "migrate")
    for args in (
        ["--to=-9999-01-01"],  # 30 days before it is no date at all
        ["--to=0000-01-01"],  # the default start is in year -1, which RFC 3339 cannot write
        ["--from", "9999-12-31T23:00:00Z", "--to", "9999-12-31T23:30:00Z"],  # ends in year 10000
    ):
        p = rampart(data_dir, "usage", *args, ok=False)
        assert p.returncode == 1, (args, p.returncode, p.stderr[-2000:])
        assert "panicked" not in p.stderr and "between 0000-01-01" in p.stderr, (args, p.stderr[-2000:])
        assert p.stdout == "", (args, p.stdout)


def test_usage_cli_on_a_data_dir_without_a_database_is_an_error(data_dir: str) -> None:
    # A mistyped --data-dir (or the default `.rampart` in the wrong directory) must not report a
    # confident zero from a database created on the spot.
    missing = Path(data_dir) / "typo"
    p = rampart(str(missing), "usage", "--json", ok=False)
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr[-2000:])
    assert p.stdout == "" and "no database" in p.stderr and str(missing) in p.stderr, p.stderr
    assert not missing.exists(), "nothing is created"
    # With the database in place it reads it.
    rampart(data_dir, "migrate")
    assert json.loads(rampart(data_dir, "usage", "--json").stdout)["data"][0]["requests"] == 0


def test_a_refused_method_or_unknown_api_path_leaves_one_record(demo: Demo, data_dir: str) -> None:
    # Rejections are usage records too: a wrong method on a proxied route (405) and a path under
    # /v1/ that is no route (404), like a malformed body (400) or a body over the limit (413).
    key = new_key(data_dir)
    proc, url = serve(data_dir, demo, "serve-ledger-rejections", RAMPART_SERVER__MAX_BODY_BYTES="1000")
    h = {"x-api-key": key, "anthropic-version": "2023-06-01", "content-type": "application/json"}
    sent = {
        "rej-405": ("GET", "/v1/messages", None, 405),
        "rej-404": ("POST", "/v1/no-such-route", b"{}", 404),
        "rej-400": ("POST", "/v1/messages", b"{not json", 400),
        "rej-413": ("POST", "/v1/messages", b"{" + b" " * 5000 + b"}", 413),
    }
    with httpx.Client(base_url=url, timeout=10) as http:
        for rid, (method, path, body, status) in sent.items():
            r = http.request(method, path, content=body, headers={**h, "x-request-id": rid})
            assert r.status_code == status and r.json()["type"] == "error", (rid, r.status_code, r.text)
    assert proc.terminate() == 0, proc.stderr_tail()
    rows = db_rows(data_dir, "SELECT request_id, status, error_type FROM usage_records")
    for rid, (_, _, _, status) in sent.items():
        mine = [r for r in rows if r[0] == rid]
        assert len(mine) == 1 and mine[0][1] == status and mine[0][2], (rid, mine)


def test_a_cache_hit_records_the_model_that_served_it(demo: Demo, data_dir: str) -> None:
    # A hit answers with the cached message, whose `model` is the one that served it the first
    # time: the record says so too, and the usage by model has the hit beside its miss (its saving
    # beside the cost), not under the name the client asked for.
    key = new_key(data_dir)
    proc, url = serve(data_dir, demo, "serve-ledger-cache-hit", RAMPART_CACHE__RESPONSE_ENABLED="true")
    client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
    served = {}
    for rid in ("cache-miss", "cache-hit"):
        raw = client.messages.with_raw_response.create(
            model="claude-haiku-4-5",
            max_tokens=20,
            messages=[{"role": "user", "content": "echo: cached answer"}],
            extra_headers={"x-request-id": rid},
        )
        assert raw.headers["x-rampart-cache"] == rid.removeprefix("cache-"), raw.headers
        served[rid] = raw.parse().model
    assert proc.terminate() == 0, proc.stderr_tail()
    assert served["cache-hit"] == served["cache-miss"] != "claude-haiku-4-5", served
    rows = dict(
        (r[0], r[1:])
        for r in db_rows(data_dir, "SELECT request_id, model_requested, model_served, cache_hit, cost_micro_usd, saved_micro_usd FROM usage_records")
    )
    assert rows["cache-miss"][:2] == ("claude-haiku-4-5", served["cache-miss"]), rows
    assert rows["cache-hit"][:3] == ("claude-haiku-4-5", served["cache-hit"], 1), rows
    assert rows["cache-hit"][3] == 0 and rows["cache-hit"][4] == rows["cache-miss"][3] > 0, rows
    report = json.loads(rampart(data_dir, "usage", "--json", "--group-by", "model").stdout)
    assert [(r["model"], r["requests"]) for r in report["data"]] == [(served["cache-miss"], 2)], report
    assert report["data"][0]["saved_micro_usd"] == report["data"][0]["cost_micro_usd"] > 0, report


def test_an_answer_the_upstream_cuts_midway_leaves_one_record_saying_so(demo: Demo, sim: SimControl, data_dir: str) -> None:
    # After the first bytes nothing is retried: a stream ends in an `error` event, a whole answer is
    # cut off. Either way the request has one record, with the status sent (200) and the error
    # type of the failure, and a stream's record counts the output it delivered.
    key = new_key(data_dir)
    proc, url = serve(data_dir, demo, "serve-ledger-cut")
    client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
    args = dict(model="claude-haiku-4-5", max_tokens=200, messages=[{"role": "user", "content": "echo: " + "word " * 60}])
    # A cut stream is charged the text its deltas delivered, by the shared estimator (4
    # characters a token), and at least a token per delta.
    charged = {}
    for rid, kind, extra in (
        ("cut-stream-event", "error_event", {"error_type": "overloaded_error"}),
        ("cut-stream-reset", "abort_stream", {}),
    ):
        sim.fault(kind, after_events=6, **extra)
        deltas, text = 0, ""
        with pytest.raises(anthropic.APIStatusError):
            with client.messages.stream(**args, extra_headers={"x-request-id": rid}) as stream:
                for event in stream:
                    if event.type == "content_block_delta":
                        deltas += 1
                        text += event.delta.text
        assert deltas > 0, rid
        charged[rid] = max(deltas, -(-len(text) // 4))
        assert charged[rid] > deltas, "the deltas carried several tokens of text each"
    sim.fault("abort_stream")
    with pytest.raises(anthropic.APIConnectionError):
        client.messages.create(**args, extra_headers={"x-request-id": "cut-json"})
    assert proc.terminate() == 0, proc.stderr_tail()
    rows = db_rows(data_dir, "SELECT request_id, status, error_type, streamed, output_tokens, upstream_attempts FROM usage_records")
    by_id = {r[0]: r[1:] for r in rows}
    assert sorted(by_id) == sorted(r[0] for r in rows) == ["cut-json", "cut-stream-event", "cut-stream-reset"], rows
    assert by_id["cut-stream-event"] == (200, "overloaded_error", 1, charged["cut-stream-event"], 1), rows
    assert by_id["cut-stream-reset"] == (200, "api_error", 1, charged["cut-stream-reset"], 1), rows
    assert by_id["cut-json"][:3] == (200, "api_error", 0), rows
    # A whole answer is generated before it is sent: the upstream billed it all, its usage is
    # lost with its end, so it is charged an estimate (its max_tokens of output), not nothing.
    assert by_id["cut-json"][3] == 200, rows
    estimated = db_rows(data_dir, "SELECT input_tokens, cost_micro_usd, model_served FROM usage_records WHERE request_id = 'cut-json'")
    assert estimated[0][0] > 60 and estimated[0][1] > 0 and estimated[0][2] is None, estimated


def test_a_relayed_upstream_error_records_its_error_type(demo: Demo, sim: SimControl, data_dir: str) -> None:
    # The upstream's own error answer, relayed once retries are over, is recorded with the status
    # the client got and the `error.type` of the envelope it got (as a stream's `error` event and
    # Rampart's own errors are), not with none.
    key = new_key(data_dir)
    proc, url = serve(
        data_dir,
        demo,
        "serve-ledger-upstream-errors",
        RAMPART_UPSTREAM__RETRY__MAX_ATTEMPTS="1",
        RAMPART_UPSTREAM__BREAKER__ENABLED="false",
    )
    client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
    args = dict(model="claude-haiku-4-5", max_tokens=20, messages=[{"role": "user", "content": "echo: hi"}])
    cases = {
        # request id: (fault, streamed request, SDK error, status, error type)
        "up-429": ({"status": 429, "error_type": "rate_limit_error"}, False, anthropic.RateLimitError, 429, "rate_limit_error"),
        "up-529": ({"status": 529, "error_type": "overloaded_error"}, False, anthropic.InternalServerError, 529, "overloaded_error"),
        "up-400": ({"status": 400, "error_type": "invalid_request_error"}, False, anthropic.BadRequestError, 400, "invalid_request_error"),
        # The envelope's type, not the one the status implies.
        "up-500-overloaded": ({"status": 500, "error_type": "overloaded_error"}, False, anthropic.InternalServerError, 500, "overloaded_error"),
        # A stream refused before it began is answered in JSON too.
        "up-429-stream": ({"status": 429, "error_type": "rate_limit_error"}, True, anthropic.RateLimitError, 429, "rate_limit_error"),
    }
    for rid, (fault, stream, error, status, error_type) in cases.items():
        sim.fault("status", **fault)
        with pytest.raises(error) as raised:
            if stream:
                with client.messages.stream(**args, extra_headers={"x-request-id": rid}) as s:
                    s.get_final_message()
            else:
                client.messages.create(**args, extra_headers={"x-request-id": rid})
        assert raised.value.status_code == status, (rid, raised.value)
        assert raised.value.body["error"]["type"] == error_type, (rid, raised.value.body)
    ok = client.messages.create(**args, extra_headers={"x-request-id": "up-ok"})
    assert ok.usage.output_tokens > 0
    assert proc.terminate() == 0, proc.stderr_tail()
    rows = db_rows(data_dir, "SELECT request_id, status, error_type, upstream_attempts, client_aborted FROM usage_records")
    by_id = {r[0]: r[1:] for r in rows}
    assert len(rows) == len(by_id) == len(cases) + 1, rows
    for rid, (_, _, _, status, error_type) in cases.items():
        assert by_id[rid] == (status, error_type, 1, 0), (rid, rows)
    assert by_id["up-ok"] == (200, None, 1, 0), rows


def test_a_stream_rampart_cuts_at_the_end_of_the_shutdown_grace_is_not_a_client_abort(data_dir: str) -> None:
    # SIGTERM lets open streams finish for `shutdown_grace_secs`, then Rampart closes them. The
    # client sees its stream cut off (no event says why, as when an upstream's connection
    # breaks); its record says Rampart cut it (not that the client left), with the status sent
    # (200), the output delivered so far and `api_error`. A request still waiting for the
    # upstream's answer is cut too: no status was sent, its record has api_error's (500).
    slow_sim = RampartProcess(["sim", "--listen", "127.0.0.1:0", "--tokens-per-sec", "20"], name="ledger-slow-sim")
    try:
        sim_url = slow_sim.listening_url()
        key = new_key(data_dir)
        env = serve_env(sim_url, RAMPART_UPSTREAM_API_KEY=UPSTREAM_KEY, RAMPART_SERVER__SHUTDOWN_GRACE_SECS="1")
        proc, url = start_serve(data_dir, env, "serve-ledger-grace")
        client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, timeout=30)
        control = SimControl(sim_url)
        control.fault("stall_headers", delay_ms=15000, model="claude-sonnet-4-6")
        waiting: list[BaseException] = []

        def wait_for_the_answer() -> None:
            try:
                client.messages.create(
                    model="claude-sonnet-4-6",
                    max_tokens=20,
                    messages=[{"role": "user", "content": "echo: hi"}],
                    extra_headers={"x-request-id": "cut-before-answer"},
                )
            except BaseException as e:  # noqa: BLE001 - what the client saw is checked below
                waiting.append(e)

        waiter = threading.Thread(target=wait_for_the_answer, daemon=True)
        waiter.start()
        # In flight (arrived upstream, where it stalls) before the shutdown starts.
        wait_until(
            lambda: control.counters()["models"].get("claude-sonnet-4-6", 0) >= 1,
            timeout=10,
            what="the stalled request at the simulator",
        )
        long_text = " ".join(f"w{i}" for i in range(600))  # ~30 s at 20 tokens/s
        deltas = 0
        with pytest.raises(TRANSPORT_ERRORS + (anthropic.APIError,)) as raised:
            with client.messages.stream(
                model="claude-haiku-4-5",
                max_tokens=4000,
                messages=[{"role": "user", "content": f"echo: {long_text}"}],
                extra_headers={"x-request-id": "cut-by-shutdown"},
            ) as stream:
                for event in stream:
                    if event.type == "content_block_delta":
                        deltas += 1
                        if deltas == 3:
                            proc.proc.send_signal(signal.SIGTERM)
        assert deltas > 3, "the stream went on during the grace period"
        cut = raised.value
        assert proc.proc.wait(timeout=20) == 0, proc.stderr_tail()
        waiter.join(timeout=10)
        assert len(waiting) == 1 and isinstance(waiting[0], anthropic.APIConnectionError), waiting
    finally:
        slow_sim.terminate()
    rows = db_rows(
        data_dir,
        "SELECT request_id, status, client_aborted, error_type, streamed, output_tokens FROM usage_records",
    )
    by_id = {r[0]: r[1:] for r in rows}
    assert sorted(by_id) == ["cut-before-answer", "cut-by-shutdown"], rows
    status, client_aborted, error_type, streamed, output_tokens = by_id["cut-by-shutdown"]
    assert (status, client_aborted, error_type, streamed) == (200, 0, "api_error", 1), (rows, repr(cut))
    assert output_tokens >= deltas, rows
    # The upstream may still answer, and bill, a request it was given: it is charged an
    # estimate, here its max_tokens of output (20), not nothing.
    assert by_id["cut-before-answer"] == (500, 0, "api_error", 0, 20), (rows, waiting)


def test_a_budget_spent_just_before_kill_9_stays_spent_after_the_restart(demo: Demo, data_dir: str) -> None:
    # Batches go to the database once a minute here: at the kill, the spend is only in the spool.
    key = keys_cli(
        data_dir, "create", "--name", f"ledger-budget-{uuid.uuid4().hex[:6]}", "--budget-usd", "0.0001", "--budget-period", "day"
    ).stdout.strip().splitlines()[-1]
    proc, url = serve(data_dir, demo, "serve-ledger-budget", RAMPART_LEDGER__FLUSH_INTERVAL_MS="60000")
    client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
    ask = dict(model="claude-haiku-4-5", max_tokens=8, messages=[{"role": "user", "content": "echo: spend"}])
    answered = 0
    with pytest.raises(anthropic.APIStatusError) as spent:
        for _ in range(50):
            client.messages.create(**ask)
            answered += 1
    assert spent.value.status_code == 402, spent.value
    assert answered > 0
    proc.proc.kill()  # SIGKILL
    proc.proc.wait()
    assert not ledger_ids(data_dir), "the spend was only in the spool at the kill"

    proc2, url2 = serve(data_dir, demo, "serve-ledger-budget-restart")
    try:
        again = anthropic.Anthropic(base_url=url2, api_key=key, max_retries=0)
        with pytest.raises(anthropic.APIStatusError) as still:
            again.messages.create(**ask)
        assert still.value.status_code == 402, "the budget counts the spend the spool held at the kill"
        assert len(ledger_ids(data_dir)) >= answered + 1, "the spooled records were written before serving"
    finally:
        assert proc2.terminate() == 0, proc2.stderr_tail()
