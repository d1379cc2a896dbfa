"""Shared helpers for the admin API suites (`test_admin_*.py`), black-box against the real binary.

`start_admin_server()` starts a `rampart sim` as the upstream, creates the first admin with
`rampart init`, then runs `rampart serve --data-dir D` with fresh operator keys (JWT signing keys
whose material the tests know, so they can forge tokens, and a master key). `Api` is a thin httpx
wrapper for `/admin/v1`; `World` creates the teams, users and keys the suites act on, through the
admin API itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

import httpx
import pytest
from conftest import RampartProcess, rampart_bin
from conftest import wait_until as wait_for  # noqa: F401  (re-exported for the suites)

PREFIX = "/admin/v1"
UPSTREAM_KEY = "sk-ant-upstream-admin-" + "q" * 20
ROLES = ("admin", "team_admin", "developer", "viewer", "auditor")
USER_FIELDS = {"id", "email", "role", "team_id", "disabled", "created_at", "updated_at"}
TEAM_FIELDS = {"id", "name", "disabled", "created_at"}
KEY_FIELDS = {
    "id", "team_id", "user_id", "name", "prefix", "allowed_models", "allowed_endpoints", "expires_at",
    "enabled", "created_at", "last_used_at", "rotated_from", "revoked_at",
}
UPSTREAM_FIELDS = {"id", "name", "key_hint", "key_id", "created_at", "updated_at"}
SECURITY_HEADERS = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def unique_email(prefix: str = "u") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}@example.com"


def strong_password() -> str:
    """A fresh password the policy accepts (long, random, contains no identity)."""
    return f"Pw-{uuid.uuid4().hex}-Zx"


def keygen() -> str:
    """A fresh key spec entry from `rampart keygen` (32 random bytes, base64)."""
    p = subprocess.run([rampart_bin(), "keygen"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def key_material(text: str) -> bytes:
    """The bytes of a key spec `material`, decoded as `rampart` does (hex first, then base64)."""
    if len(text) >= 64 and len(text) % 2 == 0 and re.fullmatch(r"[0-9A-Fa-f]+", text):
        return bytes.fromhex(text)
    padded = text + "=" * (-len(text) % 4)
    try:
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        pass
    try:
        return base64.urlsafe_b64decode(padded)
    except (binascii.Error, ValueError):
        pass
    raise ValueError("not hex or base64")


def fingerprint_kid(material: bytes) -> str:
    return "k-" + hashlib.sha256(material).hexdigest()[:8]


@dataclass
class SigningKey:
    kid: str
    secret: bytes


@dataclass
class AdminServer:
    name: str
    url: str
    data_dir: str
    proc: RampartProcess
    sim: RampartProcess | None
    sim_url: str
    admin_email: str
    admin_password: str
    jwt_keys: list[SigningKey]
    jwt_spec: str
    master_spec: str

    @property
    def current_key(self) -> SigningKey:
        return self.jwt_keys[0]

    def api(self, token: str | None = None, *, local_address: str | None = None) -> Api:
        return Api(self.url, token, local_address=local_address)

    def login(self, email: str, password: str, *, local_address: str | None = None) -> dict[str, Any]:
        r = self.api(local_address=local_address).post("/auth/login", json={"email": email, "password": password})
        assert r.status_code == 200, f"login {email} -> {r.status_code} {r.text}"
        return r.json()

    def admin_login(self) -> dict[str, Any]:
        return self.login(self.admin_email, self.admin_password)

    def stop(self) -> None:
        code = self.proc.terminate()
        if self.sim is not None:
            self.sim.terminate()
        assert code == 0, f"{self.name}: rampart serve exited with {code}.\nstderr tail:\n{self.proc.stderr_tail()}"


def base_env(sim_url: str, jwt_spec: str, master_spec: str) -> dict[str, str]:
    return {
        "RAMPART_UPSTREAM__BASE_URL": sim_url,
        "RAMPART_UPSTREAM_API_KEY": UPSTREAM_KEY,
        "RAMPART_JWT_SECRET": jwt_spec,
        "RAMPART_MASTER_KEY": master_spec,
    }


#: `sqlite` (default) or `postgres`: which engine the admin servers of this run use. With
#: `postgres`, every server gets a fresh database on the server of RAMPART_TEST_DATABASE_URL
#: (scripts/test.sh runs the admin suites a second time this way).
ENGINE = os.environ.get("RAMPART_ADMIN_TEST_ENGINE", "sqlite")


def store_args(data_dir: str) -> list[str]:
    """`--data-dir` (SQLite there), plus a fresh PostgreSQL database when ENGINE is postgres."""
    if ENGINE != "postgres":
        return ["--data-dir", data_dir]
    server = os.environ.get("RAMPART_TEST_DATABASE_URL")
    if not server:
        pytest.fail("RAMPART_ADMIN_TEST_ENGINE=postgres needs RAMPART_TEST_DATABASE_URL (scripts/test.sh sets both)")
    return ["--data-dir", data_dir, "--database-url", fresh_postgres_database(server, "rampart_admin")]


def fresh_postgres_database(server: str, prefix: str) -> str:
    """A new, empty database on the PostgreSQL `server` (a URL); its URL."""
    parts = urllib.parse.urlsplit(server)
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    search = os.pathsep.join(p for p in (os.environ.get("RAMPART_TEST_PG_BIN", ""), os.environ.get("PATH", "")) if p)
    createdb = shutil.which("createdb", path=search)
    if not createdb:
        pytest.fail("createdb not found (set RAMPART_TEST_PG_BIN to PostgreSQL's bin directory)")
    subprocess.run(
        [createdb, "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432), "-U", parts.username or "postgres", name],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


def run_init(store: str | list[str], email: str, password: str) -> None:
    """`rampart init` on a data dir (SQLite) or on `store_args(...)`."""
    if isinstance(store, str):
        store = ["--data-dir", store]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAMPART_", "ANTHROPIC_"))}
    env.update({"RAMPART_ADMIN_EMAIL": email, "RAMPART_ADMIN_PASSWORD": password})
    p = subprocess.run([rampart_bin(), "init", *store], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stdout + p.stderr


def start_admin_server(
    name: str,
    *,
    with_admin: bool = True,
    extra_env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    old_jwt_key: bool = True,
) -> AdminServer:
    """A sim + `rampart serve` pair with the admin plane on. The JWT secret is a key spec of a bare
    current key (kid = fingerprint) and, unless `old_jwt_key=False`, a verify-only `old:` key."""
    sim = RampartProcess(["sim", "--listen", "127.0.0.1:0"], name=f"{name}-sim")
    sim_url = sim.listening_url()
    data_dir = tempfile.mkdtemp(prefix=f"rampart-{name}-")
    store = store_args(data_dir)
    email = unique_email("root")
    password = strong_password()
    if with_admin:
        run_init(store, email, password)
    current = keygen()
    keys = [SigningKey(fingerprint_kid(key_material(current)), key_material(current))]
    spec = current
    if old_jwt_key:
        old = keygen()
        keys.append(SigningKey("old", key_material(old)))
        spec = f"{current},old:{old}"
    master = keygen()
    env = base_env(sim_url, spec, master)
    env.update(extra_env or {})
    proc = RampartProcess(
        ["serve", "--listen", "127.0.0.1:0", *store, *(extra_args or [])], env=env, name=name
    )
    try:
        url = proc.listening_url()
    except BaseException:
        proc.kill()
        sim.kill()
        raise
    return AdminServer(
        name=name, url=url, data_dir=data_dir, proc=proc, sim=sim, sim_url=sim_url, admin_email=email,
        admin_password=password, jwt_keys=keys, jwt_spec=spec, master_spec=master,
    )


class Api:
    """`/admin/v1` over httpx; paths are relative to it unless they start with `//` (absolute)."""

    def __init__(self, base_url: str, token: str | None = None, *, local_address: str | None = None) -> None:
        self.base_url = base_url
        self.token = token
        # The server closes idle keep-alive connections after 30 s (its header-read timeout): drop
        # them well before that, so no request races a closing connection.
        limits = httpx.Limits(keepalive_expiry=5)
        transport = httpx.HTTPTransport(local_address=local_address, limits=limits) if local_address else None
        self.http = httpx.Client(base_url=base_url, timeout=30, transport=transport, limits=limits)

    def with_token(self, token: str | None) -> Api:
        other = Api.__new__(Api)
        other.base_url, other.token, other.http = self.base_url, token, self.http
        return other

    def request(self, method: str, path: str, *, token: Any = ..., headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
        url = path[1:] if path.startswith("//") else PREFIX + path
        hdrs = dict(headers or {})
        tok = self.token if token is ... else token
        if tok is not None and "authorization" not in {k.lower() for k in hdrs}:
            hdrs["authorization"] = f"Bearer {tok}"
        return self.http.request(method, url, headers=hdrs, **kw)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("POST", path, **kw)

    def patch(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("DELETE", path, **kw)


def describe(r: httpx.Response) -> str:
    return f"{r.request.method} {r.request.url} -> {r.status_code} {r.headers.get('content-type')} {r.text[:500]!r}"


def expect(r: httpx.Response, status: int | set[int]) -> Any:
    """Assert the status and return the JSON body (None for 204)."""
    ok = r.status_code in status if isinstance(status, (set, frozenset)) else r.status_code == status
    assert ok, f"expected {status}: {describe(r)}"
    if r.status_code == 204 or not r.content:
        return None
    return r.json()


def assert_error(r: httpx.Response, status: int | set[int], etype: str | None = None) -> dict[str, Any]:
    """The admin error envelope: `{"type":"error","error":{"type","message"},"request_id"}`."""
    ok = r.status_code in status if isinstance(status, (set, frozenset)) else r.status_code == status
    assert ok, f"expected {status}: {describe(r)}"
    ctype = r.headers.get("content-type", "")
    assert ctype.startswith("application/json"), f"error is not JSON: {describe(r)}"
    body = r.json()
    assert isinstance(body, dict) and body.get("type") == "error", f"not an error envelope: {describe(r)}"
    err = body.get("error")
    assert isinstance(err, dict) and isinstance(err.get("type"), str) and isinstance(err.get("message"), str), describe(r)
    assert isinstance(body.get("request_id"), str) and body["request_id"], f"no request_id: {describe(r)}"
    expected_type = etype or STATUS_TYPES.get(r.status_code)
    if expected_type is not None:
        assert err["type"] == expected_type, f"expected error type {expected_type}: {describe(r)}"
    return body


STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
}


def assert_security_headers(r: httpx.Response) -> None:
    csp = r.headers.get("content-security-policy")
    assert csp, f"no Content-Security-Policy: {describe(r)} {dict(r.headers)}"
    for name, value in SECURITY_HEADERS.items():
        got = r.headers.get(name)
        assert got is not None and got.lower() == value.lower(), f"{name}: {got!r} (want {value!r}) on {describe(r)}"


def snapshot(api: Api) -> dict[str, Any]:
    """Everything an admin can list, for before/after comparisons."""
    out: dict[str, Any] = {}
    for what in ("users", "teams", "keys", "upstreams"):
        body = expect(api.get(f"/{what}"), 200)
        out[what] = sorted(body["data"], key=lambda x: x["id"])
    return out


# --- the world: teams, users and keys made through the API -------------------------------------


@dataclass
class Person:
    role: str
    id: str
    email: str
    password: str
    team_id: str | None
    token: str = ""
    refresh_token: str = ""

    @property
    def user(self) -> dict[str, Any]:
        return {"id": self.id, "email": self.email, "role": self.role, "team_id": self.team_id}


@dataclass
class World:
    server: AdminServer
    admin: Api
    team_a: dict[str, Any]
    team_b: dict[str, Any]
    people: dict[str, Person] = field(default_factory=dict)

    # --- creation as admin ---

    def create_team(self, name: str | None = None) -> dict[str, Any]:
        return expect(self.admin.post("/teams", json={"name": name or unique("team")}), 201)

    def create_user(self, role: str, team_id: str | None, *, email: str | None = None, password: str | None = None) -> Person:
        email = email or unique_email(role.replace("_", ""))
        password = password or strong_password()
        body: dict[str, Any] = {"email": email, "password": password, "role": role}
        if team_id is not None:
            body["team_id"] = team_id
        u = expect(self.admin.post("/users", json=body), 201)
        return Person(role=role, id=u["id"], email=email, password=password, team_id=team_id)

    def create_key(self, team_id: str, user_id: str | None = None, **kw: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"name": kw.pop("name", unique("key")), "team_id": team_id, **kw}
        if user_id is not None:
            body["user_id"] = user_id
        return expect(self.admin.post("/keys", json=body), 201)

    def sign_in(self, person: Person) -> Person:
        pair = self.server.login(person.email, person.password)
        person.token, person.refresh_token = pair["access_token"], pair["refresh_token"]
        return person

    def fresh(self, role: str, team_id: str | None = ...) -> Person:  # type: ignore[assignment]
        """A new, signed-in user with `role` (team A for team roles, no team for admin/auditor)."""
        if team_id is ...:
            team_id = self.team_a["id"] if role in ("team_admin", "developer", "viewer") else None
        return self.sign_in(self.create_user(role, team_id))

    def as_(self, who: Person | str | None) -> Api:
        if who is None:
            return self.admin.with_token(None)
        person = self.people[who] if isinstance(who, str) else who
        return self.admin.with_token(person.token)


def build_world(server: AdminServer) -> World:
    """Team A and B; one signed-in caller per role (team roles in A, admin and auditor teamless)."""
    pair = server.admin_login()
    admin_api = server.api(pair["access_token"])
    team_a = expect(admin_api.post("/teams", json={"name": unique("team-a")}), 201)
    team_b = expect(admin_api.post("/teams", json={"name": unique("team-b")}), 201)
    w = World(server=server, admin=admin_api, team_a=team_a, team_b=team_b)
    w.people["admin"] = Person(
        role="admin", id=pair["user"]["id"], email=server.admin_email, password=server.admin_password,
        team_id=None, token=pair["access_token"], refresh_token=pair["refresh_token"],
    )
    for role in ("team_admin", "developer", "viewer", "auditor"):
        w.people[role] = w.fresh(role)
    return w


def module_server(name: str, **kw: Any) -> Any:
    """A module-scoped fixture: a server started with `start_admin_server(name, **kw)`."""

    @pytest.fixture(scope="module")
    def fixture() -> Iterator[AdminServer]:
        s = start_admin_server(name, **kw)
        yield s
        s.stop()

    return fixture


def module_world(name: str, **kw: Any) -> Any:
    """A module-scoped fixture: a World on a server of its own."""

    @pytest.fixture(scope="module")
    def fixture() -> Iterator[World]:
        s = start_admin_server(name, **kw)
        yield build_world(s)
        s.stop()

    return fixture
