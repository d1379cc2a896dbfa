"""Upstream (Anthropic) keys kept in the store, encrypted under RAMPART_MASTER_KEY: a gateway whose
only upstream key is a stored credential serves the official SDK; the database holds no plaintext;
a replaced credential applies without a restart; `rampart rotate-master-key` re-encrypts under a new
master key so a restarted gateway with only the new key still serves; a gateway that has no way to
an upstream key refuses to start with a message that says what to set.

A dedicated simulator accepts only the upstream key under test, so a success proves which key was sent.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anthropic
import pytest
from conftest import RampartProcess
from test_virtual_keys import ask, db_rows, eventually, keygen, new_key, rampart, start_serve

UPSTREAM_KEY = "sk-ant-api03-stored-" + "q" * 30 + "-wxyz"
WRONG_KEY = "sk-ant-api03-wrong-" + "z" * 30 + "-0000"


@pytest.fixture(scope="module")
def strict_sim() -> Iterator[str]:
    proc = RampartProcess(["sim", "--listen", "127.0.0.1:0", "--api-key", UPSTREAM_KEY], name="sim-strict")
    yield proc.listening_url()
    assert proc.terminate() == 0, proc.stderr_tail()


def add_upstream(data_dir: str, master: str, name: str, key: str) -> str:
    """`rampart upstreams add` with the key on stdin; returns its id."""
    out = rampart(data_dir, "upstreams", "add", "--name", name, env={"RAMPART_MASTER_KEY": master}, stdin=key + "\n").stdout
    assert key not in out and key[-4:] in out, out
    return out.split()[3]


def env_for(sim_url: str, master: str, **extra: str) -> dict[str, str]:
    """`rampart serve` with a store and no upstream key in the environment."""
    return {"RAMPART_UPSTREAM__BASE_URL": sim_url, "RAMPART_JWT_SECRET": keygen(), "RAMPART_MASTER_KEY": master, **extra}


def start_failure(data_dir: str, env: dict[str, str]) -> str:
    """Start `rampart serve`, expect it to exit non-zero before listening; its stderr."""
    proc = RampartProcess(["serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir], env=env, name="serve-refused")
    try:
        code = proc.proc.wait(timeout=30)
    finally:
        proc.kill()
    assert code != 0 and not any("listening on" in line for line in proc.lines), proc.lines
    return Path(proc.stderr_file.name).read_text(errors="replace")


@dataclass
class Stored:
    """A data dir with one stored upstream credential and one client key."""

    data_dir: str
    master: str
    cred_id: str
    client_key: str


def stored(prefix: str, upstream_name: str, upstream_key: str) -> Stored:
    data_dir = tempfile.mkdtemp(prefix=prefix)
    master = keygen()
    cred_id = add_upstream(data_dir, master, upstream_name, upstream_key)
    client_key, _ = new_key(data_dir, "--name", "svc")
    return Stored(data_dir, master, cred_id, client_key)


def files_of(data_dir: str) -> bytes:
    """Every byte under the data dir (the database, its WAL, the pepper)."""
    return b"".join(p.read_bytes() for p in Path(data_dir).rglob("*") if p.is_file())


def test_a_gateway_whose_upstream_key_is_only_a_stored_credential_serves(strict_sim: str) -> None:
    s = stored("rampart-upstreams-", "primary", UPSTREAM_KEY)
    data_dir, master, cred_id, client_key = s.data_dir, s.master, s.cred_id, s.client_key
    proc, url = start_serve(data_dir, env_for(strict_sim, master), "serve-stored")
    try:
        msg = ask(url, client_key)
        assert msg.content[0].text == "hi"
        listed = rampart(data_dir, "upstreams", "list", env={"RAMPART_MASTER_KEY": master}).stdout
        assert cred_id in listed and "primary" in listed and "sk-ant-…wxyz" in listed and UPSTREAM_KEY not in listed
    finally:
        assert proc.terminate() == 0, proc.stderr_tail()
    (name, ciphertext, nonce, key_id) = db_rows(data_dir, "SELECT name, ciphertext, nonce, key_id FROM upstream_credentials")[0]
    assert name == "primary" and len(bytes(nonce)) == 12 and key_id.startswith("k-")
    assert len(bytes(ciphertext)) == len(UPSTREAM_KEY) + 16, "AES-GCM: the key's length plus the tag"
    everything = files_of(data_dir)
    assert UPSTREAM_KEY.encode() not in everything and UPSTREAM_KEY[12:40].encode() not in everything
    assert master.encode() not in everything
    stderr = Path(proc.stderr_file.name).read_text(errors="replace")
    assert UPSTREAM_KEY not in stderr and UPSTREAM_KEY[12:40] not in stderr
    actions = [a for (a,) in db_rows(data_dir, "SELECT action FROM audit_log WHERE action LIKE 'upstream.%'")]
    assert actions == ["upstream.create"]


def test_a_replaced_credential_applies_without_a_restart(strict_sim: str) -> None:
    s = stored("rampart-upstreams-swap-", "stale", WRONG_KEY)
    data_dir, master, wrong_id, client_key = s.data_dir, s.master, s.cred_id, s.client_key
    proc, url = start_serve(data_dir, env_for(strict_sim, master), "serve-swap")
    try:
        with pytest.raises(anthropic.AuthenticationError):
            ask(url, client_key)  # the simulator refuses the stale upstream key
        add_upstream(data_dir, master, "fresh", UPSTREAM_KEY)
        rampart(data_dir, "upstreams", "remove", wrong_id)
        changed = time.monotonic()
        assert eventually(lambda: ask(url, client_key)).content[0].text == "hi"
        assert time.monotonic() - changed < 2.5
    finally:
        assert proc.terminate() == 0, proc.stderr_tail()


def test_rotating_the_master_key_keeps_a_restarted_gateway_serving(strict_sim: str) -> None:
    s = stored("rampart-upstreams-rotate-", "primary", UPSTREAM_KEY)
    data_dir, old, new, client_key = s.data_dir, s.master, keygen(), s.client_key
    proc, url = start_serve(data_dir, env_for(strict_sim, old), "serve-old-master")
    ask(url, client_key)
    assert proc.terminate() == 0, proc.stderr_tail()
    (before,) = db_rows(data_dir, "SELECT ciphertext FROM upstream_credentials")[0]

    both = {"RAMPART_MASTER_KEY": f"{new},{old}"}
    out = rampart(data_dir, "rotate-master-key", env=both).stdout
    assert "re-encrypted 1 upstream credential(s)" in out, out
    again = rampart(data_dir, "rotate-master-key", env=both).stdout
    assert "re-encrypted 0 upstream credential(s)" in again and "1 already were" in again, again
    (after, key_id) = db_rows(data_dir, "SELECT ciphertext, key_id FROM upstream_credentials")[0]
    assert bytes(after) != bytes(before) and UPSTREAM_KEY.encode() not in files_of(data_dir)
    rotations = db_rows(data_dir, "SELECT actor, details FROM audit_log WHERE action = 'master_key.rotate'")
    assert len(rotations) == 2 and all(actor.startswith("cli:") for actor, _ in rotations)
    assert new not in str(rotations) and old not in str(rotations)

    proc, url = start_serve(data_dir, env_for(strict_sim, new), "serve-new-master")
    try:
        assert ask(url, client_key).content[0].text == "hi"
    finally:
        assert proc.terminate() == 0, proc.stderr_tail()
    stderr = start_failure(data_dir, env_for(strict_sim, old))
    assert "cannot be decrypted" in stderr and key_id in stderr, stderr


def test_without_any_way_to_an_upstream_key_serve_refuses_to_start(strict_sim: str) -> None:
    data_dir = tempfile.mkdtemp(prefix="rampart-upstreams-none-")
    stderr = start_failure(data_dir, env_for(strict_sim, keygen()))
    assert "no upstream credential is stored" in stderr and "rampart upstreams add" in stderr, stderr
    stderr = start_failure(data_dir, env_for(strict_sim, keygen(), RAMPART_UPSTREAM__CREDENTIAL="missing"))
    assert "`missing`" in stderr, stderr
    no_master = {k: v for k, v in env_for(strict_sim, "").items() if k != "RAMPART_MASTER_KEY"}
    stderr = start_failure(data_dir, {**no_master, "RAMPART_ADMIN__ENABLED": "false"})
    assert "RAMPART_MASTER_KEY" in stderr and "RAMPART_UPSTREAM_API_KEY" in stderr, stderr
