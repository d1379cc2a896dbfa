"""Virtual API keys from the store: `rampart keys create` makes a key a running `rampart serve`
honours within about a second; scopes give 403 permission_error; revocation gives 401 within about
a second; the key is stored only as a peppered digest. Exercised with the official SDK."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import anthropic
import pytest
from conftest import Demo, RampartProcess, rampart_bin

UPSTREAM_KEY = "sk-ant-upstream-" + "v" * 24


def keys_cli(data_dir: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAMPART_", "ANTHROPIC_"))}
    p = subprocess.run([rampart_bin(), "keys", *args, "--data-dir", data_dir], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    return p


@pytest.fixture(scope="module")
def store_serve(demo: Demo):
    data_dir = tempfile.mkdtemp(prefix="rampart-keys-")
    proc = RampartProcess(
        ["serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir],
        env={"RAMPART_UPSTREAM__BASE_URL": demo.sim_url, "RAMPART_UPSTREAM_API_KEY": UPSTREAM_KEY},
        name="serve-store",
    )
    url = proc.listening_url()
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


def test_a_created_key_works_within_a_second_and_is_stored_only_as_a_digest(store_serve) -> None:
    url, data_dir = store_serve
    out = keys_cli(data_dir, "create", "--name", "svc-a", "--team", "payments").stdout.strip().splitlines()
    key = out[-1]
    assert key.startswith("rk_live_") and len(key) == len("rk_live_") + 43
    started = time.monotonic()
    msg = eventually(lambda: ask(url, key))
    assert time.monotonic() - started < 2.5
    assert msg.content[0].text == "hi"
    with sqlite3.connect(Path(data_dir) / "rampart.db") as db:
        rows = db.execute("SELECT prefix, key_hash FROM api_keys").fetchall()
    assert any(prefix == key[:12] for prefix, _ in rows)
    assert all(key.encode() not in bytes(h) and len(bytes(h)) == 32 for _, h in rows)
    listed = keys_cli(data_dir, "list").stdout
    assert "svc-a" in listed and key[12:] not in listed


def test_scopes_refuse_other_models_and_endpoints_with_permission_error(store_serve) -> None:
    url, data_dir = store_serve
    key = keys_cli(data_dir, "create", "--name", "haiku-only", "--model", "claude-haiku-*", "--endpoint", "messages").stdout.strip().splitlines()[-1]
    eventually(lambda: ask(url, key))
    with pytest.raises(anthropic.PermissionDeniedError) as e:
        ask(url, key, model="claude-opus-5")
    assert e.value.status_code == 403 and e.value.body["error"]["type"] == "permission_error"
    with pytest.raises(anthropic.PermissionDeniedError):
        client(url, key).models.list()
    with pytest.raises(anthropic.PermissionDeniedError):
        client(url, key).messages.count_tokens(model="claude-haiku-4-5", messages=[{"role": "user", "content": "x"}])


def test_a_revoked_key_stops_working_within_about_a_second(store_serve) -> None:
    url, data_dir = store_serve
    out = keys_cli(data_dir, "create", "--name", "to-revoke").stdout.strip().splitlines()
    key = out[-1]
    key_id = out[0].split()[2]
    eventually(lambda: ask(url, key))
    keys_cli(data_dir, "revoke", key_id)
    revoked_at = time.monotonic()

    def refused() -> None:
        try:
            ask(url, key)
        except anthropic.AuthenticationError:
            return
        raise AssertionError("still accepted")

    eventually(refused, timeout=3.0)
    assert time.monotonic() - revoked_at < 2.5


def test_unknown_and_malformed_keys_get_authentication_error(store_serve) -> None:
    url, _ = store_serve
    for bad in ("rk_live_" + "A" * 43, "not-a-key"):
        with pytest.raises(anthropic.AuthenticationError):
            ask(url, bad)
