#!/usr/bin/env python3
"""Property-based contract test of the admin API with schemathesis.

Starts `rampart sim` (upstream) and `rampart serve` on a fresh data dir (first admin from
`rampart init`, fresh operator keys, port 0) with the Python suite's own launcher
(tests/conformance/python/admin_support.py), logs in as the admin, and runs `schemathesis run`
against the server's own `GET /openapi.json` with the admin's bearer token and these checks:
not_a_server_error, status_code_conformance, content_type_conformance,
response_schema_conformance. A `$ref` in the document that resolves nowhere fails the run too.
Exits with schemathesis' exit code (0 = no failures), after making sure `rampart serve` stopped
cleanly on SIGTERM.

    tests/schemathesis/run.py                      # what scripts/test.sh runs
    ST_MAX_EXAMPLES=400 ST_SEED=random tests/schemathesis/run.py   # a longer, new look
    tests/schemathesis/run.py -- --include-path-regex users        # extra schemathesis arguments

Environment: RAMPART_BIN (binary under test, default target/debug/rampart), ST_MAX_EXAMPLES
(default 50), ST_SEED (default fixed, so CI runs are reproducible; "random" for a new one),
ST_PHASES (default examples,coverage,fuzzing), ST_REPORT_DIR (keep a JUnit report there).

`POST /admin/v1/auth/logout` is excluded: it would revoke the very token the run uses, turning
every later case into a 401 that tests nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "conformance" / "python"))

from admin_support import expect, start_admin_server, strong_password, unique, unique_email  # noqa: E402

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
EXCLUDED = ["/admin/v1/auth/logout"]


def log(msg: str) -> None:
    print(f"[schemathesis/run.py] {msg}", flush=True)


def config_toml(ids: dict[str, str]) -> str:
    """schemathesis.toml: the ids to use per resource family, and the warnings that fail the run.

    `unresolvable_reference` fails it: a `$ref` that points nowhere is a broken contract (client
    generators stop there) and hides those responses from response_schema_conformance."""
    lines = ["[warnings]", 'fail-on = ["unresolvable_reference"]', ""]
    for family, ident in ids.items():
        lines += ["[[operations]]", f"include-path-regex = '^/admin/v1/{family}/[{{]id[}}]'", f'parameters = {{ "path.id" = "{ident}" }}', ""]
    return "\n".join(lines)


def main() -> int:
    extra = sys.argv[1:]
    if extra and extra[0] == "--":
        extra = extra[1:]
    st = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    if not st:
        raise SystemExit("schemathesis is not installed (pip install -r tests/conformance/python/requirements.txt)")

    server = start_admin_server("schemathesis", old_jwt_key=False)
    rc = 1
    try:
        token = server.admin_login()["access_token"]
        api = server.api(token)
        # Throwaway resources for the `{id}` operations (random UUIDs would only ever get 404),
        # never the admin the run is logged in as.
        team = expect(api.post("/teams", json={"name": unique("schemathesis")}), 201)
        user = expect(api.post("/users", json={"email": unique_email("target"), "password": strong_password(), "role": "developer", "team_id": team["id"]}), 201)
        key = expect(api.post("/keys", json={"name": "schemathesis", "team_id": team["id"], "user_id": user["id"]}), 201)
        upstream = expect(api.post("/upstreams", json={"name": unique("schemathesis"), "api_key": "sk-ant-api03-" + uuid.uuid4().hex}), 201)
        config = Path(tempfile.mkdtemp(prefix="rampart-schemathesis-")) / "schemathesis.toml"
        config.write_text(config_toml({"users": user["id"], "teams": team["id"], "keys": key["id"], "upstreams": upstream["id"]}))

        seed = os.environ.get("ST_SEED", "20261126")
        cmd = [
            st, "--config-file", str(config), "run", f"{server.url}/openapi.json",
            "--url", server.url,
            "--checks", CHECKS,
            "--header", f"Authorization: Bearer {token}",
            "--max-examples", os.environ.get("ST_MAX_EXAMPLES", "50"),
            "--phases", os.environ.get("ST_PHASES", "examples,coverage,fuzzing"),
            "--request-timeout", "20",
            "--generation-database", "none",
            "--no-color",
            "--workers", "2",
        ]
        for path in EXCLUDED:
            cmd += ["--exclude-path", path]
        if seed != "random":
            cmd += ["--seed", seed]
        if report := os.environ.get("ST_REPORT_DIR"):
            cmd += ["--report", "junit", "--report-dir", report]
        cmd += extra
        log("running: " + " ".join("Authorization: Bearer <token>" if c.startswith("Authorization:") else c for c in cmd))
        started = time.monotonic()
        rc = subprocess.run(cmd).returncode
        log(f"schemathesis exited {rc} after {time.monotonic() - started:.0f}s")
    finally:
        server.stop()
    return rc


if __name__ == "__main__":
    sys.exit(main())
