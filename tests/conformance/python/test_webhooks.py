"""Webhooks on batch end, end to end: a team's webhook set through the admin API (secret shown
once, URL policy enforced), a `rampart serve` whose dispatcher finds an ended batch and POSTs the
signed event to a local receiver (verified with the README's snippet), a failing receiver retried
with backoff and every attempt recorded, and the CLI (`rampart teams webhook …`).

One test sends a real batch through the gateway (local mode) and waits for its webhook; the
others write ended batches straight into `message_batches` (the table of migration 0007), as the
batch queue does when a batch ends, to test the dispatcher on its own contract.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from admin_support import AdminServer, World, build_world, expect, start_admin_server, store_args
from conftest import rampart_bin, wait_until


# --- the README's verification snippet, verbatim ---------------------------------------------
def verify_rampart_webhook(secret: str, headers: dict[str, str], body: bytes, tolerance: int = 300) -> bool:
    timestamp = headers["rampart-webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > tolerance:
        return False  # too old (or from the future): a replay
    expected = "v1=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, sig) for sig in headers["rampart-webhook-signature"].split())
# -----------------------------------------------------------------------------------------------


class Receiver:
    """An HTTP receiver on 127.0.0.1:0 that records every POST and answers from a script of
    statuses (the last one repeats)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.calls: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                receiver.calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.statuses[min(len(receiver.calls), len(receiver.statuses)) - 1]
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/rampart"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


WEBHOOK_ENV = {
    "RAMPART_WEBHOOKS__ALLOW_HTTP_LOOPBACK": "true",
    "RAMPART_WEBHOOKS__POLL_INTERVAL_MS": "100",
    "RAMPART_WEBHOOKS__INITIAL_BACKOFF_MS": "300",
    "RAMPART_WEBHOOKS__MAX_BACKOFF_MS": "600",
    "RAMPART_WEBHOOKS__MAX_ATTEMPTS": "4",
    "RAMPART_WEBHOOKS__TIMEOUT_MS": "3000",
    # Batches run in Rampart's own queue, so one ends within a second of its items.
    "RAMPART_BATCHES__MODE": "local",
    "RAMPART_BATCHES__CLAIM_INTERVAL_MS": "20",
}


@pytest.fixture(scope="module")
def world() -> Any:
    s = start_admin_server("webhooks", extra_env=WEBHOOK_ENV)
    w = build_world(s)
    yield w
    s.stop()


def end_batch(server: AdminServer, team_id: str, counts: tuple[int, int, int, int] = (2, 1, 0, 0)) -> str:
    """Write an ended batch of `team_id` into message_batches, as the batch queue does."""
    batch_id = "msgbatch_01" + uuid.uuid4().hex[:22]
    now = int(time.time() * 1_000_000)
    db = sqlite3.connect(Path(server.data_dir) / "rampart.db", timeout=30)
    with db:
        db.execute(
            "INSERT INTO message_batches (id, owner, team_id, mode, processing_status, request_count, "
            "succeeded_count, errored_count, canceled_count, expired_count, created_at, expires_at, ended_at, "
            "results_until) VALUES (?, ?, ?, 'local', 'ended', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (batch_id, f"team:{team_id}", uuid.UUID(team_id).bytes, sum(counts), *counts,
             now - 60_000_000, now + 86_400_000_000, now, now + 29 * 86_400_000_000),
        )
    db.close()
    return batch_id


def deliveries(w: World, team_id: str, batch_id: str) -> list[dict[str, Any]]:
    body = expect(w.admin.get(f"/teams/{team_id}/webhook/deliveries", params={"batch_id": batch_id}), 200)
    return sorted(body["data"], key=lambda d: d["attempt"])


def test_an_ended_batch_is_delivered_signed_to_the_teams_webhook(world: World) -> None:
    receiver = Receiver([200])
    try:
        team = world.team_a["id"]
        made = expect(world.admin.request("PUT", f"/teams/{team}/webhook", json={"url": receiver.url}), 201)
        secret = made["secret"]
        assert secret.startswith("whsec_") and len(secret) > 40
        shown = expect(world.admin.get(f"/teams/{team}/webhook"), 200)
        assert shown["url"] == receiver.url and shown["enabled"] is True and "secret" not in shown

        batch_id = end_batch(world.server, team)
        wait_until(lambda: receiver.calls, timeout=20, what="the webhook delivery")
        headers, body = receiver.calls[0]
        assert verify_rampart_webhook(secret, headers, body)
        assert not verify_rampart_webhook(secret, headers, body + b" ")
        assert not verify_rampart_webhook("whsec_wrong", headers, body)
        assert headers["rampart-webhook-id"] == f"evt_{batch_id}"
        assert headers["rampart-webhook-attempt"] == "1"
        assert headers["content-type"] == "application/json"
        event = json.loads(body)
        assert event["type"] == "message_batch.ended"
        b = event["batch"]
        assert b["id"] == batch_id and b["type"] == "message_batch" and b["processing_status"] == "ended"
        assert b["request_counts"] == {"processing": 0, "succeeded": 2, "errored": 1, "canceled": 0, "expired": 0}
        assert b["results_url"] == f"{world.server.url}/v1/messages/batches/{batch_id}/results"
        assert b["ended_at"] and b["created_at"] and b["expires_at"]

        rows = wait_until(lambda: (d := deliveries(world, team, batch_id)) and d[0]["finished_at"] and d, timeout=10, what="the recorded attempt")
        assert len(rows) == 1
        assert rows[0]["delivered"] is True and rows[0]["status_code"] == 200 and rows[0]["next_attempt_at"] is None
        time.sleep(1)
        assert len(receiver.calls) == 1, "a delivered batch is not sent again"
    finally:
        receiver.close()


def test_a_batch_sent_through_the_gateway_announces_its_end(world: World) -> None:
    receiver = Receiver([200])
    try:
        team = world.create_team()["id"]
        secret = expect(world.admin.request("PUT", f"/teams/{team}/webhook", json={"url": receiver.url}), 201)["secret"]
        key = world.create_key(team)["key"]
        items = [
            {"custom_id": f"item-{i}", "params": {"model": "claude-sonnet-4-6", "max_tokens": 20, "messages": [{"role": "user", "content": f"echo: n{i}"}]}}
            for i in range(2)
        ]
        r = httpx.post(f"{world.server.url}/v1/messages/batches", json={"requests": items},
                       headers={"x-api-key": key, "anthropic-version": "2023-06-01"}, timeout=30)
        assert r.status_code == 200, r.text
        batch_id = r.json()["id"]
        wait_until(lambda: receiver.calls, timeout=30, what="the webhook of a gateway batch")
        headers, body = receiver.calls[0]
        assert verify_rampart_webhook(secret, headers, body)
        event = json.loads(body)
        assert event["batch"]["id"] == batch_id
        assert event["batch"]["request_counts"]["succeeded"] == 2
        # The batch object is the one the API serves for this batch.
        served = httpx.get(f"{world.server.url}/v1/messages/batches/{batch_id}",
                           headers={"x-api-key": key, "anthropic-version": "2023-06-01"}, timeout=30).json()
        for field in ("id", "type", "processing_status", "request_counts", "results_url", "created_at", "expires_at", "ended_at", "cancel_initiated_at", "archived_at"):
            assert event["batch"][field] == served[field], (field, event["batch"][field], served[field])
    finally:
        receiver.close()


def test_a_failing_receiver_is_retried_with_backoff_and_every_attempt_recorded(world: World) -> None:
    receiver = Receiver([500, 503, 200])
    try:
        team = world.team_b["id"]
        expect(world.admin.request("PUT", f"/teams/{team}/webhook", json={"url": receiver.url}), 201)
        batch_id = end_batch(world.server, team, (1, 0, 0, 0))
        rows = wait_until(
            lambda: (d := deliveries(world, team, batch_id)) and len(d) == 3 and d[2]["finished_at"] and d,
            timeout=30, what="three attempts",
        )
        assert [r["status_code"] for r in rows] == [500, 503, 200]
        assert [r["delivered"] for r in rows] == [False, False, True]
        assert [r["attempt"] for r in rows] == [1, 2, 3]
        assert rows[0]["next_attempt_at"] and rows[1]["next_attempt_at"] and rows[2]["next_attempt_at"] is None
        assert [h["rampart-webhook-attempt"] for h, _ in receiver.calls] == ["1", "2", "3"]
        # The same event id on every attempt (receivers deduplicate on it).
        assert {h["rampart-webhook-id"] for h, _ in receiver.calls} == {f"evt_{batch_id}"}
        gaps = [
            (time.mktime(time.strptime(rows[i + 1]["attempted_at"][:19], "%Y-%m-%dT%H:%M:%S")) - time.mktime(time.strptime(rows[i]["attempted_at"][:19], "%Y-%m-%dT%H:%M:%S")))
            for i in range(2)
        ]
        assert all(g >= 0 for g in gaps)
    finally:
        receiver.close()


def test_a_receiver_that_never_answers_2xx_is_given_up_after_max_attempts(world: World) -> None:
    receiver = Receiver([500])
    try:
        team = world.create_team()["id"]
        expect(world.admin.request("PUT", f"/teams/{team}/webhook", json={"url": receiver.url}), 201)
        batch_id = end_batch(world.server, team)
        rows = wait_until(
            lambda: (d := deliveries(world, team, batch_id)) and len(d) == 4 and d[3]["finished_at"] and d,
            timeout=30, what="four attempts",
        )
        assert all(r["status_code"] == 500 and not r["delivered"] for r in rows)
        assert rows[3]["next_attempt_at"] is None, "the last attempt schedules nothing"
        time.sleep(1.5)
        assert len(receiver.calls) == 4
    finally:
        receiver.close()


def test_unreachable_receiver_errors_are_recorded(world: World) -> None:
    team = world.create_team()["id"]
    expect(world.admin.request("PUT", f"/teams/{team}/webhook", json={"url": "http://127.0.0.1:9/hook"}), 201)
    batch_id = end_batch(world.server, team)
    rows = wait_until(lambda: (d := deliveries(world, team, batch_id)) and d[0]["finished_at"] and d, timeout=20, what="an attempt")
    assert rows[0]["status_code"] is None and rows[0]["error"], rows[0]
    assert rows[0]["next_attempt_at"] is not None


def test_url_policy_refuses_plain_http_and_private_targets_clearly(world: World) -> None:
    team = world.team_a["id"]
    for url, why in [
        ("http://hooks.example.com/x", "must be https"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://10.0.0.7/hook", "private"),
        ("https://user:pw@hooks.example.com/", "credentials"),
        ("not a url", "not a valid absolute URL"),
    ]:
        r = world.admin.request("PUT", f"/teams/{team}/webhook", json={"url": url})
        assert r.status_code == 400, (url, r.text)
        assert why in r.json()["error"]["message"], (url, r.text)


def test_who_may_manage_a_teams_webhook(world: World) -> None:
    team = world.team_a["id"]
    other = world.team_b["id"]
    receiver_url = "http://127.0.0.1:9/elsewhere"
    ta = world.as_("team_admin")
    expect(ta.request("PUT", f"/teams/{team}/webhook", json={"url": receiver_url}), 200)
    expect(ta.get(f"/teams/{team}/webhook"), 200)
    expect(ta.get(f"/teams/{team}/webhook/deliveries"), 200)
    assert ta.get(f"/teams/{other}/webhook").status_code == 404
    assert ta.request("PUT", f"/teams/{other}/webhook", json={"url": receiver_url}).status_code == 404
    for role in ("developer", "viewer"):
        assert world.as_(role).get(f"/teams/{team}/webhook").status_code == 403
        assert world.as_(role).request("PUT", f"/teams/{team}/webhook", json={"url": receiver_url}).status_code == 403
    assert world.as_(None).get(f"/teams/{team}/webhook").status_code == 401
    rotated = expect(world.admin.request("PUT", f"/teams/{team}/webhook", json={"url": receiver_url, "rotate_secret": True}), 200)
    assert rotated["secret"].startswith("whsec_")
    assert "secret" not in expect(world.admin.request("PUT", f"/teams/{team}/webhook", json={"url": receiver_url, "enabled": False}), 200)
    fresh = world.create_team()["id"]
    assert world.admin.get(f"/teams/{fresh}/webhook").status_code == 404
    assert world.admin.delete(f"/teams/{fresh}/webhook").status_code == 404


def test_cli_sets_shows_and_removes_a_webhook_and_lists_deliveries(world: World) -> None:
    team = world.create_team()
    env = {"RAMPART_MASTER_KEY": world.server.master_spec, "PATH": "/usr/bin:/bin"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([rampart_bin(), "teams", "webhook", *args, *store_args(world.server.data_dir)],
                              capture_output=True, text=True, timeout=60, env=env)

    bad = cli("set", team["name"], "--url", "http://hooks.example.com/")
    assert bad.returncode == 1 and "must be https" in bad.stderr
    receiver = Receiver([200])
    try:
        made = cli("set", team["name"], "--url", receiver.url, "--allow-http-loopback")
        assert made.returncode == 0, made.stderr
        secret = made.stdout.split("signing secret (shown once): ")[1].strip()
        assert secret.startswith("whsec_")
        shown = cli("show", team["name"])
        assert receiver.url in shown.stdout and secret not in shown.stdout
        batch_id = end_batch(world.server, team["id"])
        wait_until(lambda: receiver.calls, timeout=20, what="the delivery")
        assert verify_rampart_webhook(secret, *receiver.calls[0])
        listed = wait_until(lambda: (r := cli("deliveries", team["name"])) and batch_id in r.stdout and "true" in r.stdout and r, timeout=10, what="the delivery in the CLI")
        assert listed.returncode == 0
        removed = cli("remove", team["name"])
        assert removed.returncode == 0 and "removed" in removed.stdout
        assert cli("show", team["name"]).returncode != 0
    finally:
        receiver.close()
