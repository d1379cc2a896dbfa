"""Outside `rampart demo`, `rampart serve` with a store refuses an unsafe start and names the setting
to fix: a missing or weak JWT signing secret or master key, a wildcard CORS origin, or the admin
plane on a non-loopback address without TLS in front. A sound configuration starts, and the
configuration it started with is in the audit log (once per change)."""

from __future__ import annotations

import base64
import os
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import RampartProcess, rampart_bin


def keygen() -> str:
    out = subprocess.run([rampart_bin(), "keygen"], capture_output=True, text=True, timeout=30, check=True)
    key = out.stdout.strip()
    assert len(base64.b64decode(key)) == 32
    return key


def good_env(**overrides: str) -> dict[str, str]:
    env = {
        "RAMPART_UPSTREAM_API_KEY": "sk-ant-test-0123456789abcdef",
        "RAMPART_JWT_SECRET": keygen(),
        "RAMPART_MASTER_KEY": keygen(),
    }
    env.update(overrides)
    return {k: v for k, v in env.items() if v != ""}


def serve_once(env: dict[str, str], *extra: str, listen: str = "127.0.0.1:0") -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAMPART_", "ANTHROPIC_"))}
    data_dir = tempfile.mkdtemp(prefix="rampart-refuse-")
    return subprocess.run(
        [rampart_bin(), "serve", "--listen", listen, "--data-dir", data_dir, *extra],
        capture_output=True,
        text=True,
        timeout=30,
        env={**base, **env},
    )


WEAK_HEX = "00" * 32
SHORT = base64.b64encode(os.urandom(16)).decode()


@pytest.mark.parametrize(
    ("case", "env", "needle"),
    [
        ("missing JWT secret", {"RAMPART_JWT_SECRET": ""}, "RAMPART_JWT_SECRET"),
        ("weak JWT secret", {"RAMPART_JWT_SECRET": WEAK_HEX}, "RAMPART_JWT_SECRET"),
        ("short JWT secret", {"RAMPART_JWT_SECRET": SHORT}, "RAMPART_JWT_SECRET"),
        ("passphrase JWT secret", {"RAMPART_JWT_SECRET": "my super secret signing passphrase"}, "RAMPART_JWT_SECRET"),
        ("missing master key", {"RAMPART_MASTER_KEY": ""}, "RAMPART_MASTER_KEY"),
        ("weak master key", {"RAMPART_MASTER_KEY": WEAK_HEX}, "RAMPART_MASTER_KEY"),
        ("wildcard CORS", {"RAMPART_ADMIN__CORS_ORIGINS": '["*"]'}, "admin.cors_origins"),
    ],
)
def test_unsafe_settings_are_refused_naming_the_setting(case: str, env: dict[str, str], needle: str) -> None:
    full = good_env(**env)
    result = serve_once(full)
    assert result.returncode != 0, f"{case}: started anyway\n{result.stdout}\n{result.stderr}"
    assert needle in result.stderr, f"{case}: {result.stderr}"
    assert "listening on" not in result.stdout
    # The refused value itself is never echoed.
    for value in env.values():
        if len(value) > 8:
            assert value not in result.stderr + result.stdout


def test_admin_plane_on_a_public_address_needs_an_explicit_tls_opt_in() -> None:
    refused = serve_once(good_env(), listen="0.0.0.0:0")
    assert refused.returncode != 0
    assert "allow_insecure_remote" in refused.stderr and "TLS" in refused.stderr, refused.stderr
    # Explicitly allowed (a TLS proxy in front) it starts.
    env = good_env(RAMPART_ADMIN__ALLOW_INSECURE_REMOTE="true")
    proc = RampartProcess(
        ["serve", "--listen", "0.0.0.0:0", "--data-dir", tempfile.mkdtemp(prefix="rampart-remote-")],
        env=env,
        name="serve-remote",
    )
    try:
        proc.listening_url()
    finally:
        assert proc.terminate() == 0


def test_key_files_work_and_the_started_configuration_is_audited_once_per_change() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="rampart-keyfiles-"))
    (tmp / "jwt").write_text(f"new:{keygen()},old:{keygen()}\n")
    (tmp / "master").write_text(keygen() + "\n")
    data_dir = str(tmp / "data")
    env = {
        "RAMPART_UPSTREAM_API_KEY": "sk-ant-test-0123456789abcdef",
        "RAMPART_JWT_SECRET_FILE": str(tmp / "jwt"),
        "RAMPART_MASTER_KEY_FILE": str(tmp / "master"),
    }

    def start_and_stop(extra_env: dict[str, str]) -> None:
        proc = RampartProcess(["serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir], env={**env, **extra_env}, name="serve-files")
        try:
            proc.listening_url()
        finally:
            assert proc.terminate() == 0

    start_and_stop({})
    start_and_stop({})  # same configuration: no new event
    start_and_stop({"RAMPART_ADMIN__ACCESS_TOKEN_TTL_SECS": "300"})
    with sqlite3.connect(Path(data_dir) / "rampart.db") as db:
        rows = db.execute("SELECT actor, details FROM audit_log WHERE action = 'config.change' ORDER BY seq").fetchall()
    assert len(rows) == 2, rows
    assert all(actor == "system" for actor, _ in rows)
    assert '"access_token_ttl_secs":900' in rows[0][1].replace(" ", "")
    assert '"access_token_ttl_secs":300' in rows[1][1].replace(" ", "")
    assert '"jwt_key_ids":["new","old"]' in rows[0][1].replace(" ", "")
    # Key ids only, never key material.
    for secret_file in ("jwt", "master"):
        for part in (tmp / secret_file).read_text().replace("new:", "").replace("old:", "").strip().split(","):
            assert part not in rows[0][1]


def test_config_check_reports_what_serve_would_refuse_all_at_once() -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAMPART_", "ANTHROPIC_"))}
    data_dir = tempfile.mkdtemp(prefix="rampart-check-")

    def check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [rampart_bin(), "config", "check", "--data-dir", data_dir],
            capture_output=True,
            text=True,
            timeout=30,
            env={**base, **env},
        )

    bad = check({"RAMPART_ADMIN__CORS_ORIGINS": '["*"]'})
    assert bad.returncode != 0
    assert "admin.cors_origins" in bad.stderr
    bad = check({"RAMPART_SERVER__LISTEN": "0.0.0.0:8080", "RAMPART_JWT_SECRET": "00" * 32})
    assert bad.returncode != 0
    assert "3 problem(s)" in bad.stderr, bad.stderr
    assert "allow_insecure_remote" in bad.stderr and "RAMPART_JWT_SECRET" in bad.stderr and "RAMPART_MASTER_KEY" in bad.stderr
    good = check({"RAMPART_JWT_SECRET": keygen(), "RAMPART_MASTER_KEY": keygen()})
    assert good.returncode == 0, good.stderr
    assert "store and admin plane ready" in good.stdout
