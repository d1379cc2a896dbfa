"""`rampart users|teams|audit` for operators with shell access: the same checks as the admin API,
passwords from stdin (never argv), every change audited, and `rampart audit verify` naming the
first edited, deleted or reordered row; `rampart audit export` writes JSON lines."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import tempfile
from pathlib import Path

from conftest import rampart_bin

PASSWORD = "quiet-harbour-lantern-42"


def cli(data_dir: str, *args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAMPART_", "ANTHROPIC_"))}
    base["USER"] = "ops-oncall"
    return subprocess.run(
        [rampart_bin(), *args, "--data-dir", data_dir],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, **env},
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result.stdout


def db(data_dir: str) -> sqlite3.Connection:
    return sqlite3.connect(Path(data_dir) / "rampart.db")


def populated() -> str:
    d = tempfile.mkdtemp(prefix="rampart-cli-")
    ok(cli(d, "teams", "create", "payments"))
    ok(cli(d, "teams", "create", "research"))
    ok(cli(d, "users", "create", "--email", "Dev@Payments.Example", "--role", "developer", "--team", "payments", stdin=PASSWORD + "\n"))
    ok(cli(d, "users", "create", "--email", "audit@example.com", "--role", "auditor", stdin=PASSWORD + "\n"))
    return d


def test_users_and_teams_are_managed_with_the_api_rules_and_audited() -> None:
    d = populated()
    listing = ok(cli(d, "users", "list"))
    assert "dev@payments.example" in listing and "developer" in listing and "team=payments" in listing
    assert "auditor" in listing
    assert ok(cli(d, "users", "list", "--team", "research")).strip() == ""
    ok(cli(d, "users", "set-role", "dev@payments.example", "team-admin"))
    ok(cli(d, "users", "disable", "dev@payments.example"))
    ok(cli(d, "teams", "rename", "research", "r-and-d"))
    ok(cli(d, "teams", "disable", "r-and-d"))
    teams = ok(cli(d, "teams", "list"))
    assert "r-and-d" in teams and "disabled" in teams
    with db(d) as conn:
        role, disabled, phc = conn.execute(
            "SELECT role, disabled, password_hash FROM users WHERE email = 'dev@payments.example'"
        ).fetchone()
        assert (role, disabled) == ("team_admin", 1)
        assert phc.startswith("$argon2id$") and PASSWORD not in phc
        actions = [r[0] for r in conn.execute("SELECT action FROM audit_log ORDER BY seq")]
        actors = {r[0] for r in conn.execute("SELECT actor FROM audit_log")}
        details = " ".join(r[0] for r in conn.execute("SELECT details FROM audit_log"))
    assert actions == [
        "team.create",
        "team.create",
        "user.create",
        "user.create",
        "user.update",
        "user.disable",
        "team.rename",
        "team.disable",
    ]
    assert actors == {"cli:ops-oncall"}
    assert PASSWORD not in details


def test_bad_input_is_refused_with_a_reason_and_changes_nothing() -> None:
    d = populated()
    with db(d) as conn:
        before = conn.execute("SELECT count(*) FROM users").fetchone()[0], conn.execute("SELECT count(*) FROM audit_log").fetchone()[0]
    cases = [
        (("users", "create", "--email", "not-an-email", "--role", "viewer", "--team", "payments"), PASSWORD, "email"),
        (("users", "create", "--email", "x@example.com", "--role", "viewer", "--team", "payments"), "password", "password"),
        (("users", "create", "--email", "x@example.com", "--role", "viewer", "--team", "payments"), "short", "at least 12"),
        (("users", "create", "--email", "x@example.com", "--role", "viewer"), PASSWORD, "--team"),
        (("users", "create", "--email", "x@example.com", "--role", "viewer", "--team", "nope"), PASSWORD, "no team"),
        (("users", "create", "--email", "dev@payments.example", "--role", "viewer", "--team", "payments"), PASSWORD, "already in use"),
        (("users", "create", "--email", "x@example.com", "--role", "viewer", "--team", "payments"), "", "no password"),
        (("teams", "create", "payments"), None, "exists"),
        (("teams", "create", "bad\u0007name"), None, "control"),
        (("teams", "create", "' OR 1=1; DROP TABLE teams; --" + "x" * 100), None, "longer than"),
        (("users", "disable", "ghost@example.com"), None, "no such user"),
    ]
    for args, stdin, needle in cases:
        r = cli(d, *args, stdin=stdin)
        assert r.returncode != 0, f"{args} succeeded: {r.stdout}"
        assert needle in r.stderr, f"{args}: {r.stderr}"
        if stdin and len(stdin) > 4 and stdin != "password":
            assert stdin not in r.stderr + r.stdout
    with db(d) as conn:
        after = conn.execute("SELECT count(*) FROM users").fetchone()[0], conn.execute("SELECT count(*) FROM audit_log").fetchone()[0]
        assert conn.execute("SELECT count(*) FROM teams").fetchone()[0] == 2
    assert after == before


def test_audit_verify_names_the_first_edited_deleted_or_reordered_row() -> None:
    d = populated()
    good = ok(cli(d, "audit", "verify"))
    assert good.startswith("audit chain OK: 4 events; head 4:")
    head = good.split("head ")[1].strip()
    assert cli(d, "audit", "verify", "--expect-head", head).returncode == 0

    edited = populated()
    with db(edited) as conn:
        conn.execute("UPDATE audit_log SET actor = 'cli:mallory' WHERE seq = 2")
    r = cli(edited, "audit", "verify")
    assert r.returncode == 1 and "seq 2" in r.stderr and "edited" in r.stderr, r.stderr

    deleted = populated()
    with db(deleted) as conn:
        conn.execute("DELETE FROM audit_log WHERE seq = 3")
    r = cli(deleted, "audit", "verify")
    assert r.returncode == 1 and "seq 4" in r.stderr and "deleted" in r.stderr, r.stderr

    reordered = populated()
    with db(reordered) as conn:
        # Swap the contents of rows 2 and 3 (keeping their seq numbers).
        cols = "at, actor, action, target, outcome, client_addr, request_id, details, prev_hash, hash"
        r2 = conn.execute(f"SELECT {cols} FROM audit_log WHERE seq = 2").fetchone()
        r3 = conn.execute(f"SELECT {cols} FROM audit_log WHERE seq = 3").fetchone()
        sets = ", ".join(f"{c.strip()} = ?" for c in cols.split(","))
        conn.execute(f"UPDATE audit_log SET {sets} WHERE seq = 2", r3)
        conn.execute(f"UPDATE audit_log SET {sets} WHERE seq = 3", r2)
    r = cli(reordered, "audit", "verify")
    assert r.returncode == 1 and "seq 2" in r.stderr, r.stderr

    truncated = populated()
    head = ok(cli(truncated, "audit", "verify")).split("head ")[1].strip()
    with db(truncated) as conn:
        conn.execute("DELETE FROM audit_log WHERE seq = 4")
    assert cli(truncated, "audit", "verify").returncode == 0  # the chain itself still links
    r = cli(truncated, "audit", "verify", "--expect-head", head)
    assert r.returncode == 1 and "deleted from the end" in r.stderr, r.stderr


def test_audit_export_writes_json_lines_for_a_siem() -> None:
    d = populated()
    out = Path(tempfile.mkdtemp()) / "audit.jsonl"
    r = cli(d, "audit", "export", "-o", str(out))
    assert r.returncode == 0 and "wrote 4 events" in r.stderr
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    assert events[0]["prev_hash"] == "0" * 64
    for prev, cur in zip(events, events[1:]):
        assert cur["prev_hash"] == prev["hash"]
    assert {"seq", "at", "actor", "action", "target", "outcome", "client_addr", "request_id", "details", "prev_hash", "hash"} <= set(events[0])
    tail = ok(cli(d, "audit", "export", "--after-seq", "3"))
    assert [json.loads(line)["seq"] for line in tail.splitlines()] == [4]


def test_commands_on_a_data_dir_without_a_database_refuse_and_create_nothing() -> None:
    # A mistyped --data-dir (or the default `.rampart` in the wrong working directory) must not be
    # answered from a store made on the spot: `audit verify` would call an empty chain intact, a
    # list would say there is nothing. Only the commands that create start a store.
    missing = Path(tempfile.mkdtemp(prefix="rampart-cli-")) / "typo"
    for args in (
        ("audit", "verify"),
        ("audit", "export"),
        ("keys", "list"),
        ("keys", "revoke", "01936f3e-0000-7000-8000-000000000000"),
        ("keys", "rotate", "01936f3e-0000-7000-8000-000000000000"),
        ("users", "list"),
        ("users", "disable", "ghost@example.com"),
        ("teams", "list"),
        ("upstreams", "list"),
        ("dlq", "list"),
        ("usage",),
    ):
        r = cli(str(missing), *args)
        assert r.returncode == 1, f"{args}: {r.returncode}\n{r.stdout}\n{r.stderr}"
        assert r.stdout == "" and "no database at" in r.stderr and str(missing) in r.stderr, f"{args}: {r.stderr}"
        assert "panicked" not in r.stderr
        assert not missing.exists(), f"{args} created {missing}"
    # A command that creates starts the store, and the others then read it.
    ok(cli(str(missing), "teams", "create", "payments"))
    assert "payments" in ok(cli(str(missing), "teams", "list"))
    assert "audit chain OK: 1 events" in ok(cli(str(missing), "audit", "verify"))
