"""Virtual API keys from the store: `rampart keys create` makes a key a running `rampart serve`
honours within about a second; scopes give 403 permission_error (for a batch, every item's model is
checked); revocation gives 401 within about a second; rotation keeps the old key for the overlap;
the key is stored only as a peppered digest; use is recorded in `last_used_at` (batched, and at
shutdown); refused uses leave `key.denied` audit rows without the key. Exercised with the official SDK.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import anthropic
import pytest
from conftest import Demo, RampartProcess, rampart_bin

UPSTREAM_KEY = "sk-ant-upstream-" + "v" * 24


def keygen() -> str:
    """A fresh key spec entry (`rampart keygen`): for RAMPART_JWT_SECRET and RAMPART_MASTER_KEY."""
    p = subprocess.run([rampart_bin(), "keygen"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def rampart(data_dir: str, *args: str, env: dict[str, str] | None = None, stdin: str | None = None, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a store CLI command on `data_dir` with a clean environment plus `env`."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("RAMPART_", "ANTHROPIC_"))}
    full.update(env or {})
    p = subprocess.run(
        [rampart_bin(), *args, "--data-dir", data_dir], input=stdin, capture_output=True, text=True, timeout=60, env=full
    )
    if ok:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


def keys_cli(data_dir: str, *args: str) -> subprocess.CompletedProcess[str]:
    return rampart(data_dir, "keys", *args)


def serve_env(sim_url: str, **extra: str) -> dict[str, str]:
    """What `rampart serve --data-dir` needs: the upstream, and the JWT and master keys the admin
    plane requires with a store."""
    return {"RAMPART_UPSTREAM__BASE_URL": sim_url, "RAMPART_JWT_SECRET": keygen(), "RAMPART_MASTER_KEY": keygen(), **extra}


def start_serve(data_dir: str, env: dict[str, str], name: str) -> tuple[RampartProcess, str]:
    proc = RampartProcess(["serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir], env=env, name=name)
    return proc, proc.listening_url()


def db_rows(data_dir: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(Path(data_dir) / "rampart.db") as db:
        return db.execute(sql, params).fetchall()


@pytest.fixture(scope="module")
def store_serve(demo: Demo):
    data_dir = tempfile.mkdtemp(prefix="rampart-keys-")
    env = serve_env(demo.sim_url, RAMPART_UPSTREAM_API_KEY=UPSTREAM_KEY, RAMPART_AUTH__LAST_USED_FLUSH_SECS="1")
    proc, url = start_serve(data_dir, env, "serve-store")
    yield url, data_dir
    assert proc.terminate() == 0, proc.stderr_tail()


def client(url: str, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)


def ask(url: str, key: str, model: str = "claude-haiku-4-5") -> anthropic.types.Message:
    return client(url, key).messages.create(model=model, max_tokens=20, messages=[{"role": "user", "content": "echo: hi"}])


def eventually(fn, timeout: float = 3.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def refused(url: str, key: str) -> None:
    """Passes when `key` gets 401 (for `eventually`)."""
    try:
        ask(url, key)
    except anthropic.AuthenticationError:
        return
    raise AssertionError("still accepted")


def new_key(data_dir: str, *args: str) -> tuple[str, str]:
    """`rampart keys create --name …`: (key, id)."""
    out = keys_cli(data_dir, "create", *args).stdout.strip().splitlines()
    return out[-1], out[0].split()[2]


def test_a_created_key_works_within_a_second_and_is_stored_only_as_a_digest(store_serve) -> None:
    url, data_dir = store_serve
    key, _ = new_key(data_dir, "--name", "svc-a", "--team", "payments", "--create-team")
    assert key.startswith("rk_live_") and len(key) == len("rk_live_") + 43
    started = time.monotonic()
    msg = eventually(lambda: ask(url, key))
    assert time.monotonic() - started < 2.5
    assert msg.content[0].text == "hi"
    rows = db_rows(data_dir, "SELECT prefix, key_hash FROM api_keys")
    assert any(prefix == key[:12] for prefix, _ in rows)
    assert all(key.encode() not in bytes(h) and len(bytes(h)) == 32 for _, h in rows)
    listed = keys_cli(data_dir, "list").stdout
    assert "svc-a" in listed and key[12:] not in listed


def test_scopes_refuse_other_models_and_endpoints_with_permission_error(store_serve) -> None:
    url, data_dir = store_serve
    key, _ = new_key(data_dir, "--name", "haiku-only", "--model", "claude-haiku-*", "--endpoint", "messages")
    eventually(lambda: ask(url, key))
    with pytest.raises(anthropic.PermissionDeniedError) as e:
        ask(url, key, model="claude-opus-5")
    assert e.value.status_code == 403 and e.value.body["error"]["type"] == "permission_error"
    with pytest.raises(anthropic.PermissionDeniedError):
        client(url, key).models.list()
    with pytest.raises(anthropic.PermissionDeniedError):
        client(url, key).messages.count_tokens(model="claude-haiku-4-5", messages=[{"role": "user", "content": "x"}])


def batch_item(custom_id: str, model: str) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "params": {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "secret prompt text"}]},
    }


def test_a_scoped_keys_batch_with_an_out_of_scope_model_is_refused_naming_the_item(store_serve) -> None:
    url, data_dir = store_serve
    key, _ = new_key(data_dir, "--name", "haiku-batches", "--model", "claude-haiku-*", "--endpoint", "batches")
    batches = client(url, key).messages.batches
    ok = eventually(lambda: batches.create(requests=[batch_item("a", "claude-haiku-4-5")]))
    assert ok.type == "message_batch"
    with pytest.raises(anthropic.PermissionDeniedError) as e:
        batches.create(requests=[batch_item("fine", "claude-haiku-4-5"), batch_item("greedy-7", "claude-opus-4-1"), batch_item("z", "claude-opus-5")])
    assert e.value.status_code == 403 and e.value.body["error"]["type"] == "permission_error"
    message = e.value.body["error"]["message"]
    assert "greedy-7" in message and "claude-opus-4-1" in message, message
    assert "secret prompt" not in message and "claude-opus-5" not in message


def test_a_revoked_key_stops_working_within_about_a_second(store_serve) -> None:
    url, data_dir = store_serve
    key, key_id = new_key(data_dir, "--name", "to-revoke")
    eventually(lambda: ask(url, key))
    keys_cli(data_dir, "revoke", key_id)
    revoked_at = time.monotonic()
    eventually(lambda: refused(url, key), timeout=3.0)
    assert time.monotonic() - revoked_at < 2.5


def test_rotation_prints_the_new_key_last_and_keeps_the_old_one_for_the_overlap(store_serve) -> None:
    url, data_dir = store_serve
    old, old_id = new_key(data_dir, "--name", "to-rotate", "--model", "claude-haiku-*")
    eventually(lambda: ask(url, old))
    out = keys_cli(data_dir, "rotate", old_id).stdout.strip().splitlines()
    new = out[-1]
    assert new.startswith("rk_live_") and new != old and old not in "\n".join(out)
    eventually(lambda: ask(url, new))
    ask(url, old)  # 24 hours of overlap by default
    with pytest.raises(anthropic.PermissionDeniedError):
        ask(url, new, model="claude-opus-5")  # the scopes came along
    newest = keys_cli(data_dir, "rotate", new_id(data_dir, new), "--overlap-hours", "0").stdout.strip().splitlines()[-1]
    eventually(lambda: refused(url, new))
    ask(url, newest)
    actors = db_rows(data_dir, "SELECT actor FROM audit_log WHERE action = 'key.rotate'")
    assert len(actors) == 2 and all(a.startswith("cli:") for (a,) in actors)


def new_id(data_dir: str, key: str) -> str:
    """The id `rampart keys list` shows for `key`."""
    for line in keys_cli(data_dir, "list").stdout.splitlines():
        if line.split()[1].rstrip("…") == key[:12]:
            return line.split()[0]
    raise AssertionError(f"{key[:12]} not listed")


def test_use_is_recorded_in_last_used_at_without_a_write_per_request(store_serve) -> None:
    url, data_dir = store_serve
    key, _ = new_key(data_dir, "--name", "used")
    before = time.time()
    eventually(lambda: ask(url, key))
    for _ in range(5):
        ask(url, key)

    def recorded() -> int:
        (used,) = db_rows(data_dir, "SELECT last_used_at FROM api_keys WHERE prefix = ?", key[:12])[0]
        assert used is not None
        return used

    used = eventually(recorded, timeout=5.0)  # flushed every second in this fixture
    assert before - 1 <= used / 1e6 <= time.time() + 1


def test_refused_uses_leave_audit_rows_with_the_prefix_never_the_key(store_serve) -> None:
    url, data_dir = store_serve
    key, key_id = new_key(data_dir, "--name", "audited", "--model", "claude-haiku-*")
    eventually(lambda: ask(url, key))
    with pytest.raises(anthropic.PermissionDeniedError):
        ask(url, key, model="claude-opus-5")
    keys_cli(data_dir, "revoke", key_id)
    eventually(lambda: refused(url, key))
    with pytest.raises(anthropic.AuthenticationError):
        ask(url, "sk-ant-api03-definitely-not-a-rampart-key")

    def rows() -> list[tuple[Any, ...]]:
        found = db_rows(
            data_dir,
            "SELECT actor, target, outcome, client_addr, request_id, details FROM audit_log WHERE action = 'key.denied'",
        )
        mine = [r for r in found if r[0] == key[:12]]
        assert {json.loads(r[5])["reason"] for r in mine} >= {"model_not_allowed", "revoked"}
        assert any(r[0] == "unknown" for r in found)
        return found

    found = eventually(rows, timeout=5.0)
    model_row = next(r for r in found if r[0] == key[:12] and json.loads(r[5])["reason"] == "model_not_allowed")
    assert json.loads(model_row[5]) == {"status": 403, "reason": "model_not_allowed", "model": "claude-opus-5", "key_id": key_id}
    assert model_row[1] == "/v1/messages" and model_row[2] == "denied"
    assert model_row[3] == "127.0.0.1" and model_row[4]
    dump = "\n".join(map(str, db_rows(data_dir, "SELECT * FROM audit_log")))
    assert key[12:] not in dump and "definitely-not" not in dump and "echo: hi" not in dump


def test_unknown_and_malformed_keys_get_authentication_error(store_serve) -> None:
    url, _ = store_serve
    for bad in ("rk_live_" + "A" * 43, "not-a-key"):
        with pytest.raises(anthropic.AuthenticationError):
            ask(url, bad)


def test_the_last_uses_are_written_at_shutdown(demo: Demo) -> None:
    data_dir = tempfile.mkdtemp(prefix="rampart-keys-flush-")
    key, _ = new_key(data_dir, "--name", "flushed-at-exit")
    env = serve_env(demo.sim_url, RAMPART_UPSTREAM_API_KEY=UPSTREAM_KEY, RAMPART_AUTH__LAST_USED_FLUSH_SECS="3600")
    proc, url = start_serve(data_dir, env, "serve-flush")
    try:
        ask(url, key)
        assert db_rows(data_dir, "SELECT last_used_at FROM api_keys")[0][0] is None, "not written per request"
    finally:
        assert proc.terminate() == 0, proc.stderr_tail()
    assert db_rows(data_dir, "SELECT last_used_at FROM api_keys")[0][0] is not None
