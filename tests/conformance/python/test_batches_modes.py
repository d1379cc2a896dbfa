"""Message batches served by Rampart from its store, through the official Python SDK
(`client.messages.batches.*` unchanged): both execution modes with mixed good and bad items,
scoping between teams, crash safety of the local queue — a 1,000-item local batch through
several `kill -9` / restart cycles of the real `rampart serve` ends with every item's result,
none lost, and exactly one usage record per item — and local items kept to their key's
requests per minute.
"""

from __future__ import annotations

import hashlib
import random
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import anthropic
import pytest
from conftest import MODEL, Demo, RampartProcess, text_of, wait_until
from test_virtual_keys import UPSTREAM_KEY, rampart, serve_env, start_serve

MODE_HEADER = "x-rampart-batch-mode"


def good(custom_id: str, text: str) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "params": {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": f"echo: {text}"}]},
    }


def bad(custom_id: str) -> dict[str, Any]:
    # No max_tokens: params are checked when the item runs, so this becomes an errored result.
    return {"custom_id": custom_id, "params": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}}


def wait_ended(client: anthropic.Anthropic, batch_id: str, timeout: float = 60.0) -> Any:
    return wait_until(
        lambda: (b := client.messages.batches.retrieve(batch_id)).processing_status == "ended" and b,
        timeout=timeout,
        interval=0.2,
        what=f"batch {batch_id} to end",
    )


def item_request_id(batch_id: str, idx: int) -> str:
    """The request id of a local item's usage record (rampart_store::batches::item_usage_id)."""
    d = bytearray(hashlib.sha256(b"rampart-batch-item\0" + batch_id.encode() + b"\0" + idx.to_bytes(8, "big")).digest()[:16])
    d[6] = (d[6] & 0x0F) | 0x80
    d[8] = (d[8] & 0x3F) | 0x80
    return "req_batch_" + d.hex()


def db_rows(data_dir: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(Path(data_dir) / "rampart.db", timeout=30) as db:
        return db.execute(sql, params).fetchall()


@pytest.mark.parametrize("mode", ["local", "upstream"])
def test_sdk_batches_work_unchanged_in_both_modes_with_good_and_bad_items(demo: Demo, mode: str) -> None:
    client = anthropic.Anthropic(
        base_url=demo.base_url, api_key=demo.api_key, max_retries=0, default_headers={MODE_HEADER: mode}
    )
    requests = [good(f"good-{i}", f"{mode} item {i}") for i in range(5)] + [bad("bad-1"), bad("bad-2")]
    created = client.messages.batches.create(requests=requests)
    assert created.id.startswith("msgbatch_")
    assert created.type == "message_batch"
    assert created.processing_status == "in_progress"
    assert created.request_counts.processing == 7
    assert created.results_url is None

    ended = wait_ended(client, created.id)
    c = ended.request_counts
    assert (c.succeeded, c.errored, c.processing, c.canceled, c.expired) == (5, 2, 0, 0, 0)
    assert ended.ended_at is not None
    assert ended.results_url == f"{demo.base_url}/v1/messages/batches/{created.id}/results"

    results = {r.custom_id: r.result for r in client.messages.batches.results(created.id)}
    assert set(results) == {r["custom_id"] for r in requests}
    for i in range(5):
        assert results[f"good-{i}"].type == "succeeded"
        assert text_of(results[f"good-{i}"].message) == f"{mode} item {i}"
    for b in ("bad-1", "bad-2"):
        assert results[b].type == "errored"
        assert results[b].error.type == "error"
        assert results[b].error.error.type == "invalid_request_error"

    listed = [b.id for b in client.messages.batches.list(limit=50)]
    assert created.id in listed
    page = client.messages.batches.list(limit=1)
    assert len(page.data) == 1

    # Rampart's own rows: ended_at set in both modes, one usage record per item that ran.
    rows = db_rows(demo.data_dir, "SELECT mode, processing_status, ended_at FROM message_batches WHERE id = ?", created.id)
    assert rows and rows[0][0] == mode and rows[0][1] == "ended" and rows[0][2] is not None
    if mode == "local":
        ids = [item_request_id(created.id, i) for i in range(len(requests))]
        marks = ",".join("?" * len(ids))
        n = db_rows(demo.data_dir, f"SELECT COUNT(*) FROM usage_records WHERE request_id IN ({marks})", *ids)[0][0]
    else:
        n = db_rows(demo.data_dir, "SELECT COUNT(*) FROM usage_records WHERE request_id LIKE ?", f"{created.id}:%")[0][0]
    assert n == 7

    deleted = client.messages.batches.delete(created.id)
    assert deleted.id == created.id and deleted.type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(created.id)


def test_sdk_cancel_of_a_local_batch_ends_it_with_canceled_items(demo: Demo) -> None:
    client = anthropic.Anthropic(
        base_url=demo.base_url, api_key=demo.api_key, max_retries=0, default_headers={MODE_HEADER: "local"}
    )
    created = client.messages.batches.create(requests=[good(f"c{i}", "x") for i in range(300)])
    canceled = client.messages.batches.cancel(created.id)
    assert canceled.processing_status in ("canceling", "ended")
    assert canceled.cancel_initiated_at is not None
    ended = wait_ended(client, created.id)
    c = ended.request_counts
    assert c.canceled + c.succeeded == 300
    kinds = {r.result.type for r in client.messages.batches.results(created.id)}
    assert kinds <= {"canceled", "succeeded"}


def test_bad_requests_get_the_api_error_envelope(demo: Demo) -> None:
    client = anthropic.Anthropic(
        base_url=demo.base_url, api_key=demo.api_key, max_retries=0, default_headers={MODE_HEADER: "local"}
    )
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.batches.create(requests=[good("same", "a"), good("same", "b")])
    assert e.value.body["error"]["type"] == "invalid_request_error"
    assert "repeated" in e.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.create(requests=[])
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve("msgbatch_nope")
    created = client.messages.batches.create(requests=[good("slow", "x")])
    # Results before the end, and delete before the end, are 400 (unless it already ended).
    try:
        client.messages.batches.delete(created.id)
    except anthropic.BadRequestError as err:
        assert "still processing" in err.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.list(limit=0)


# --- a real `rampart serve` with a store: scoping, and kill -9 -----------------------------------


def team_key(data_dir: str, team: str) -> str:
    rampart(data_dir, "teams", "create", team)
    out = rampart(data_dir, "keys", "create", "--name", f"{team}-key", "--team", team).stdout
    return out.strip().splitlines()[-1]


@pytest.fixture
def slow_sim() -> Any:
    """A simulator of its own with 20 ms per call, so a kill lands while items are in flight."""
    proc = RampartProcess(["sim", "--listen", "127.0.0.1:0", "--latency-ms", "20"], name="sim-batches")
    url = proc.listening_url()
    yield url
    proc.terminate()


def serve(data_dir: str, sim_url: str, name: str) -> tuple[RampartProcess, str]:
    env = serve_env(
        sim_url,
        RAMPART_UPSTREAM_API_KEY=UPSTREAM_KEY,
        RAMPART_BATCHES__MODE="local",
        RAMPART_BATCHES__LEASE_SECS="1",
        RAMPART_BATCHES__WORKERS="16",
        RAMPART_BATCHES__CLAIM_INTERVAL_MS="20",
        RAMPART_LOG="warn",
    )
    return start_serve(data_dir, env, name)


def test_one_teams_batches_are_invisible_to_another_team(slow_sim: str) -> None:
    data_dir = tempfile.mkdtemp(prefix="rampart-batch-scope-")
    a, b = team_key(data_dir, "team-a"), team_key(data_dir, "team-b")
    proc, url = serve(data_dir, slow_sim, "serve-batch-scope")
    try:
        alice = anthropic.Anthropic(base_url=url, api_key=a, max_retries=0)
        bob = anthropic.Anthropic(base_url=url, api_key=b, max_retries=0)
        created = alice.messages.batches.create(requests=[good("x", "mine")])
        wait_ended(alice, created.id)
        for call in (
            lambda: bob.messages.batches.retrieve(created.id),
            lambda: bob.messages.batches.cancel(created.id),
            lambda: bob.messages.batches.delete(created.id),
            lambda: list(bob.messages.batches.results(created.id)),
        ):
            with pytest.raises(anthropic.NotFoundError):
                call()
        assert [x.id for x in bob.messages.batches.list()] == []
        assert [x.id for x in alice.messages.batches.list()] == [created.id]
    finally:
        assert proc.terminate() == 0


def deferred_count(url: str) -> float:
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("rampart_batch_items_total{") and 'outcome="deferred"' in line
    )


def test_a_local_batch_keeps_to_its_keys_requests_per_minute() -> None:
    """A local batch's items draw on the same requests-per-minute bucket as the key's own
    requests. Those with no room wait until it refills (one every half second at 120 a minute)
    instead of failing, and each is called upstream once."""
    from concurrent.futures import ThreadPoolExecutor

    sim = RampartProcess(["sim", "--listen", "127.0.0.1:0", "--latency-ms", "0"], name="sim-batch-rpm")
    data_dir = tempfile.mkdtemp(prefix="rampart-batch-rpm-")
    rampart(data_dir, "teams", "create", "paced")
    out = rampart(data_dir, "keys", "create", "--name", "paced-key", "--team", "paced", "--rpm", "120").stdout
    key = out.strip().splitlines()[-1]
    proc, url = serve(data_dir, sim.listening_url(), "serve-batch-rpm")
    try:
        client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
        # The key's own requests take 118 of its 120 at once.
        before_us = time.time_ns() // 1000
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(
                    lambda i: client.messages.create(
                        model=MODEL, max_tokens=5, messages=[{"role": "user", "content": f"echo: {i}"}]
                    ),
                    range(118),
                )
            )
        assert len(answers) == 118
        n = 8
        created = client.messages.batches.create(
            requests=[good(f"p{i}", f"n{i}") for i in range(n)], extra_headers={MODE_HEADER: "local"}
        )
        ended = wait_ended(client, created.id)
        c = ended.request_counts
        assert (c.succeeded, c.errored, c.expired) == (n, 0, 0)
        results = {r.custom_id: r for r in client.messages.batches.results(created.id)}
        assert text_of(results["p7"].result.message) == "n7"
        rows = db_rows(
            data_dir,
            "SELECT at, upstream_attempts, status FROM usage_records WHERE request_id LIKE 'req_batch_%' ORDER BY at",
        )
        assert len(rows) == n
        assert all(attempts == 1 and status == 200 for _, attempts, status in rows), rows
        # Item k is the key's (118 + k)-th request (0-based): it cannot start before the bucket,
        # full at the first request, has refilled (118 + k) - 119 requests, two a second.
        for k, (at_us, _, _) in enumerate(rows):
            if k < 2:
                continue
            waited = (at_us - before_us) / 1e6
            assert waited >= (k - 1) / 2 - 0.05, f"item {k} ran {waited:.3f} s after the first request"
        # A large batch of the key while its bucket is empty runs at the limit's pace, and its
        # waiting items are not claimed and put back over and over: the queue takes one bite of
        # a waiting batch per refill at most (16 items in flight here; about six refills in 3 s),
        # where it went through all 400 items again and again (2,441 deferrals in 3 s) before.
        deferred_before = deferred_count(url)
        big = client.messages.batches.create(
            requests=[good(f"b{i}", f"n{i}") for i in range(400)], extra_headers={MODE_HEADER: "local"}
        )
        time.sleep(3)
        ran = db_rows(data_dir, "SELECT COUNT(*) FROM batch_items WHERE batch_id = ? AND state = 'succeeded'", big.id)[0][0]
        deferred = deferred_count(url) - deferred_before
        client.messages.batches.cancel(big.id)
        print(f"\n400-item batch, 3 s: {ran} ran, {deferred:.0f} deferrals")
        assert 1 <= ran <= 3 * 2 + 4, ran  # two a second, with margin for a loaded machine
        assert deferred <= 16 * 10, deferred
    finally:
        assert proc.terminate() == 0
        sim.terminate()


def test_kill_9_during_a_1000_item_local_batch_loses_nothing_and_bills_each_item_once(slow_sim: str) -> None:
    data_dir = tempfile.mkdtemp(prefix="rampart-batch-kill-")
    key = team_key(data_dir, "crashers")
    n = 1000
    proc, url = serve(data_dir, slow_sim, "serve-batch-kill-0")
    client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=2)
    created = client.messages.batches.create(requests=[good(f"item-{i:04d}", f"n{i}") for i in range(n)])
    rng = random.Random(7)
    kills = 0
    for cycle in range(1, 5):
        time.sleep(rng.uniform(0.3, 0.9))
        done = db_rows(data_dir, "SELECT COUNT(*) FROM batch_items WHERE batch_id = ? AND state = 'succeeded'", created.id)[0][0]
        if done >= n:
            break
        proc.proc.kill()  # SIGKILL: no drain, leases left behind
        proc.proc.wait()
        kills += 1
        proc, url = serve(data_dir, slow_sim, f"serve-batch-kill-{cycle}")
    assert kills >= 3, f"the batch finished before three kills (only {kills})"
    client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=2)
    ended = wait_ended(client, created.id, timeout=120)
    try:
        c = ended.request_counts
        assert (c.succeeded, c.errored, c.canceled, c.expired, c.processing) == (n, 0, 0, 0, 0)
        results = list(client.messages.batches.results(created.id))
        assert len(results) == n
        assert {r.custom_id for r in results} == {f"item-{i:04d}" for i in range(n)}
        assert all(r.result.type == "succeeded" for r in results)
        by_id = {r.custom_id: r for r in results}
        assert text_of(by_id["item-0123"].result.message) == "n123"
        # Exactly one usage record per item, however often the process died.
        records = db_rows(
            data_dir,
            "SELECT COUNT(*), COUNT(DISTINCT request_id) FROM usage_records WHERE request_id LIKE 'req_batch_%'",
        )[0]
        assert records == (n, n), records
        rollup = db_rows(
            data_dir,
            "SELECT SUM(requests) FROM usage_rollups WHERE period = 'day'",
        )[0][0]
        assert rollup >= n
        flagged = db_rows(data_dir, "SELECT COUNT(*) FROM batch_items WHERE maybe_duplicate = 1")[0][0]
        ended_at = db_rows(data_dir, "SELECT ended_at FROM message_batches WHERE id = ?", created.id)[0][0]
        assert ended_at is not None
        print(f"\n{kills} kill -9 cycles; {flagged} item(s) flagged maybe_duplicate (re-run after a lapsed lease, billed once)")
    finally:
        assert proc.terminate() == 0


def serve_dead_lettering(data_dir: str, sim_url: str, name: str) -> tuple[RampartProcess, str]:
    """Local batches whose items go to the dead letters after two attempts (no upstream retries,
    no breaker), claimed every 20 ms."""
    env = serve_env(
        sim_url,
        RAMPART_UPSTREAM_API_KEY=UPSTREAM_KEY,
        RAMPART_BATCHES__MODE="local",
        RAMPART_BATCHES__MAX_ATTEMPTS="2",
        RAMPART_BATCHES__BACKOFF_BASE_MS="10",
        RAMPART_BATCHES__CLAIM_INTERVAL_MS="20",
        RAMPART_UPSTREAM__BREAKER__ENABLED="false",
        RAMPART_UPSTREAM__RETRY__MAX_ATTEMPTS="1",
    )
    return start_serve(data_dir, env, name)


def test_dead_letters_are_listed_shown_and_replayed_with_the_cli(slow_sim: str) -> None:
    import httpx

    data_dir = tempfile.mkdtemp(prefix="rampart-batch-dlq-")
    key = team_key(data_dir, "unlucky")
    proc, url = serve_dead_lettering(data_dir, slow_sim, "serve-batch-dlq")
    try:
        fault = {"kind": "status", "status": 529, "count": 1000, "model": "claude-opus-4-8"}
        assert httpx.post(f"{slow_sim}/_sim/faults", json=fault).status_code < 300
        client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
        doomed = good("doomed", "again")
        doomed["params"]["model"] = "claude-opus-4-8"
        created = client.messages.batches.create(requests=[good("fine", "ok"), doomed])
        ended = wait_ended(client, created.id)
        assert (ended.request_counts.succeeded, ended.request_counts.errored) == (1, 1)
        results = {r.custom_id: r.result for r in client.messages.batches.results(created.id)}
        assert results["doomed"].type == "errored"
        assert results["doomed"].error.error.type == "overloaded_error"

        lines = rampart(data_dir, "dlq", "list", "--batch", created.id).stdout.strip().splitlines()
        assert len(lines) == 1 and "doomed" in lines[0] and "attempts=2" in lines[0] and "status=529" in lines[0], lines
        dl_id = lines[0].split()[0]
        shown = rampart(data_dir, "dlq", "show", dl_id).stdout
        assert '"overloaded_error"' in shown and created.id in shown
        assert rampart(data_dir, "dlq", "show", str(uuid.uuid4()), ok=False).returncode != 0

        assert httpx.delete(f"{slow_sim}/_sim/faults").status_code < 300
        out = rampart(data_dir, "dlq", "replay", dl_id).stdout
        assert "queued again" in out
        wait_until(
            lambda: client.messages.batches.retrieve(created.id).request_counts.succeeded == 2,
            timeout=30,
            what="the replayed item to succeed",
        )
        results = {r.custom_id: r.result for r in client.messages.batches.results(created.id)}
        assert results["doomed"].type == "succeeded"
        again = rampart(data_dir, "dlq", "replay", dl_id, ok=False)
        assert again.returncode != 0 and "not errored" in again.stderr
        audit = db_rows(data_dir, "SELECT actor, action FROM audit_log WHERE action = 'dead_letter.replay'")
        assert len(audit) == 1 and audit[0][0].startswith("cli:")
    finally:
        assert proc.terminate() == 0


def test_a_replayed_dead_letter_waits_for_budget_room_and_has_a_record_of_its_own(slow_sim: str) -> None:
    """A replay is a new upstream call: its batch's reservation for the item was given back when
    it failed, so it reserves its own worst case in the key's budget (and waits queued while the
    budget has no room), and its usage record has an id of its own beside the failed run's."""
    import re

    import httpx

    data_dir = tempfile.mkdtemp(prefix="rampart-batch-dlq-budget-")
    rampart(data_dir, "teams", "create", "thrifty")
    out = rampart(
        data_dir, "keys", "create", "--name", "thrifty-key", "--team", "thrifty", "--budget-usd", "0.002", "--budget-period", "day"
    ).stdout
    key = out.strip().splitlines()[-1]
    key_id = re.search(r"created key ([0-9a-f-]{36}) ", out).group(1)  # type: ignore[union-attr]
    proc, url = serve_dead_lettering(data_dir, slow_sim, "serve-batch-dlq-budget")
    try:
        fault = {"kind": "status", "status": 529, "count": 2, "model": "claude-haiku-4-5"}
        assert httpx.post(f"{slow_sim}/_sim/faults", json=fault).status_code < 300
        client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
        doomed = {"custom_id": "doomed", "params": {"model": "claude-haiku-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "echo: again"}]}}
        created = client.messages.batches.create(requests=[doomed])  # type: ignore[list-item]
        ended = wait_ended(client, created.id)
        assert ended.request_counts.errored == 1
        dl_id = rampart(data_dir, "dlq", "list", "--batch", created.id).stdout.split()[0]
        # Spend the rest of the budget with requests of the key's own.
        with pytest.raises(anthropic.APIStatusError) as spent:
            for _ in range(200):
                client.messages.create(model="claude-haiku-4-5", max_tokens=16, messages=[{"role": "user", "content": "echo: spend"}])
        assert spent.value.status_code == 402

        assert "queued again" in rampart(data_dir, "dlq", "replay", dl_id).stdout
        time.sleep(2)
        state = db_rows(data_dir, "SELECT state FROM batch_items WHERE batch_id = ?", created.id)
        assert state == [("queued",)], "the replay waits for budget room instead of running"
        item_ids = lambda: db_rows(  # noqa: E731
            data_dir, "SELECT hex(id), status FROM usage_records WHERE request_id LIKE 'req_batch_%' ORDER BY at"
        )
        assert [s for _, s in item_ids()] == [529], item_ids()

        rampart(data_dir, "keys", "limits", key_id, "--budget-usd", "1", "--budget-period", "day")
        wait_until(
            lambda: client.messages.batches.retrieve(created.id).request_counts.succeeded == 1,
            timeout=30,
            what="the replayed item to run once the budget has room",
        )
        records = wait_until(lambda: len(r := item_ids()) == 2 and r, timeout=10, what="the replay's record")
        assert [s for _, s in records] == [529, 200], records
        assert records[0][0] != records[1][0], "the replay's record has an id of its own"
    finally:
        assert proc.terminate() == 0
