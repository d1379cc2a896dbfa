"""Bootstrap without default passwords: `rampart demo` creates a demo admin with a random password
per data dir and prints it; `rampart init` creates the first admin from the environment, once."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import tempfile
from pathlib import Path

from conftest import Demo, rampart_bin


def users(data_dir: str) -> list[tuple[str, str, str]]:
    with sqlite3.connect(Path(data_dir) / "rampart.db") as db:
        return db.execute("SELECT email, role, password_hash FROM users").fetchall()


def test_demo_prints_admin_credentials_stored_only_as_an_argon2id_hash(demo: Demo) -> None:
    email = demo.proc.wait_for_line(r"^RAMPART_ADMIN_EMAIL=(\S+)$").group(1)
    password = demo.proc.wait_for_line(r"^RAMPART_ADMIN_PASSWORD=(\S+)$").group(1)
    assert len(password) >= 12
    rows = users(demo.data_dir)
    assert [(e, r) for e, r, _ in rows] == [(email, "admin")]
    phc = rows[0][2]
    assert phc.startswith("$argon2id$v=19$m=19456,t=2,p=1$"), phc
    assert password not in phc
    # The password lives only in the data dir's 0600 file, never in the database.
    stored = (Path(demo.data_dir) / "demo-admin-password").read_text().strip()
    assert stored == password
    assert oct(os.stat(Path(demo.data_dir) / "demo-admin-password").st_mode & 0o777) == "0o600"


def run_init(data_dir: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAMPART_", "ANTHROPIC_"))}
    return subprocess.run(
        [rampart_bin(), "init", "--data-dir", data_dir],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, **env},
    )


def test_init_creates_the_first_admin_once_and_refuses_weak_passwords() -> None:
    data_dir = tempfile.mkdtemp(prefix="rampart-init-")
    missing = run_init(data_dir)
    assert missing.returncode != 0 and "RAMPART_ADMIN_EMAIL" in missing.stderr
    weak = run_init(data_dir, RAMPART_ADMIN_EMAIL="ops@example.com", RAMPART_ADMIN_PASSWORD="password1234")
    assert weak.returncode != 0 and "too common" in weak.stderr, weak.stderr
    assert "password1234" not in weak.stdout + weak.stderr
    ok = run_init(data_dir, RAMPART_ADMIN_EMAIL="ops@example.com", RAMPART_ADMIN_PASSWORD="correct horse battery staple")
    assert ok.returncode == 0 and "created the first admin" in ok.stdout, ok.stdout + ok.stderr
    again = run_init(data_dir, RAMPART_ADMIN_EMAIL="other@example.com", RAMPART_ADMIN_PASSWORD="another long passphrase")
    assert again.returncode == 0 and "already initialised" in again.stdout
    assert [(e, r) for e, r, _ in users(data_dir)] == [("ops@example.com", "admin")]
