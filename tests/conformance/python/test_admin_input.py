"""Hostile input to every admin endpoint (docs/admin-api.md, "Errors"): SQL metacharacters,
oversized strings, control characters and NUL, invalid UTF-8, wrong JSON types, unknown and
duplicate fields, deep nesting, bodies over 64 KiB, wrong content types, bad path and query
parameters, wrong methods. Every such request gets a 4xx in the JSON error envelope, and afterwards
nothing changed (users, teams, keys and upstreams as an admin lists them) and the audit chain
verifies. Values that are valid, however odd (a team called `'; DROP TABLE users; --`), are stored
and returned verbatim. Also: the security headers on admin responses, and no CORS by default.
"""

from __future__ import annotations

import itertools
import json
import socket
import urllib.parse
import uuid
from typing import Any, Callable, Iterator

import httpx
import pytest
from admin_support import (
    AdminServer,
    World,
    assert_error,
    assert_security_headers,
    build_world,
    describe,
    expect,
    snapshot,
    start_admin_server,
    strong_password,
    unique,
    unique_email,
)

SQL = ["' OR 1=1 --", "'; DROP TABLE users; --", '" OR ""="', "1; SELECT pg_sleep(5)--", "admin'--", "') OR ('a'='a", "%' OR '%'='"]
CONTROL = {
    "nul": "a\x00b",
    "soh": "a\x01b",
    "newline": "a\nb",
    "cr": "a\rb",
    "tab": "a\tb",
    "escape": "a\x1b[31mb",
    "del": "a\x7fb",
    "c1-nel": "a\u0085b",
}
KB10 = "x" * 10 * 1024
KB100 = "x" * 100 * 1024
WRONG_TYPES: dict[str, Any] = {"int": 12345, "float": 1.5, "bool": True, "list": ["x"], "object": {"a": "b"}}
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def world():
    s = start_admin_server("admin-input")
    w = build_world(s)
    w.victim = w.create_user("developer", w.team_a["id"])  # type: ignore[attr-defined]
    w.key = w.create_key(w.team_a["id"], w.victim.id)  # type: ignore[attr-defined]
    yield w
    s.stop()


@pytest.fixture
def unchanged(world: World) -> Iterator[None]:
    """Nothing an admin can list changes during the test, and the audit chain still verifies."""
    before = snapshot(world.admin)
    yield
    after = snapshot(world.admin)
    for what in before:
        assert after[what] == before[what], f"{what} changed:\nbefore {before[what]}\nafter  {after[what]}"
    v = expect(world.admin.get("/audit/verify"), 200)
    assert v["ok"] is True and v["first_break"] is None, v


# --- the endpoints and their fields --------------------------------------------------------------
# kind: what the field holds; it decides which hostile values are invalid for it (and so 400).


class Endpoint:
    def __init__(self, name: str, method: str, path: Callable[[World], str], body: Callable[[World], dict[str, Any]], fields: dict[str, str], *, auth: bool = True, statuses: set[int] | None = None) -> None:
        self.name, self.method, self.path, self.body, self.fields, self.auth = name, method, path, body, fields, auth
        # What a rejected request may get: 400 for the admin endpoints; the unauthenticated ones
        # may also answer 401 (a failed login / bad token / bad setup token) or 409 (setup done).
        self.statuses = statuses or {400}


ENDPOINTS = [
    Endpoint("login", "POST", lambda w: "/auth/login", lambda w: {"email": unique_email("nobody"), "password": strong_password()}, {"email": "email", "password": "password"}, auth=False, statuses={400, 401}),
    Endpoint("refresh", "POST", lambda w: "/auth/refresh", lambda w: {"refresh_token": "rt_" + uuid.uuid4().hex}, {"refresh_token": "token"}, auth=False, statuses={400, 401}),
    Endpoint("setup", "POST", lambda w: "/setup", lambda w: {"setup_token": uuid.uuid4().hex, "email": unique_email("s"), "password": strong_password()}, {"setup_token": "token", "email": "email", "password": "password"}, auth=False, statuses={400, 401, 409}),
    Endpoint("revoke-jti", "POST", lambda w: "/auth/revoke", lambda w: {"jti": uuid.uuid4().hex}, {"jti": "token"}),
    Endpoint("create-user", "POST", lambda w: "/users", lambda w: {"email": unique_email("n"), "password": strong_password(), "role": "developer", "team_id": w.team_a["id"]}, {"email": "email", "password": "password", "role": "role", "team_id": "uuid"}),
    Endpoint("patch-user", "PATCH", lambda w: f"/users/{w.victim.id}", lambda w: {"email": unique_email("p")}, {"email": "email", "password": "password", "role": "role", "team_id": "uuid"}),  # type: ignore[attr-defined]
    Endpoint("create-team", "POST", lambda w: "/teams", lambda w: {"name": unique("team")}, {"name": "name"}),
    Endpoint("patch-team", "PATCH", lambda w: f"/teams/{w.team_b['id']}", lambda w: {"name": unique("team")}, {"name": "name"}),
    Endpoint("create-key", "POST", lambda w: "/keys", lambda w: {"name": unique("k"), "team_id": w.team_a["id"], "user_id": w.victim.id, "allowed_models": ["claude-haiku-*"], "allowed_endpoints": ["messages"], "expires_at": "2099-01-01T00:00:00Z"}, {"name": "name", "team_id": "uuid", "user_id": "uuid", "allowed_models[]": "model", "allowed_endpoints[]": "endpoint", "expires_at": "datetime"}),  # type: ignore[attr-defined]
    Endpoint("patch-key", "PATCH", lambda w: f"/keys/{w.key['id']}", lambda w: {"name": unique("k")}, {"name": "name", "allowed_models[]": "model", "allowed_endpoints[]": "endpoint", "expires_at": "datetime"}),  # type: ignore[attr-defined]
    Endpoint("create-upstream", "POST", lambda w: "/upstreams", lambda w: {"name": unique("up"), "api_key": "sk-ant-api03-" + uuid.uuid4().hex}, {"name": "name", "api_key": "secret"}),
]
BY_NAME = {e.name: e for e in ENDPOINTS}

# Kinds for which a SQL payload is simply an invalid value (names, passwords and model patterns may
# legitimately contain quotes: see test_sql_metacharacters_in_valid_values_are_stored_verbatim).
SQL_INVALID = {"email", "role", "uuid", "endpoint", "datetime"}
# Kinds with a documented length limit far below 10 KB.
LIMITED = {"email", "password", "name", "model", "role", "uuid", "endpoint", "datetime"}


def with_value(body: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    body = dict(body)
    if field.endswith("[]"):
        body[field[:-2]] = [value]
    else:
        body[field] = value
    return body


def string_cases() -> Iterator[Any]:
    for e in ENDPOINTS:
        for field, kind in e.fields.items():
            if kind in SQL_INVALID:
                for i, sql in enumerate(SQL):
                    yield pytest.param(e.name, field, sql, id=f"{e.name}.{field}=sql{i}")
            for label, value in CONTROL.items():
                yield pytest.param(e.name, field, value, id=f"{e.name}.{field}={label}")
            if kind in LIMITED or not e.auth:
                yield pytest.param(e.name, field, KB10, id=f"{e.name}.{field}=10KB")
            if kind != "model":
                yield pytest.param(e.name, field, "", id=f"{e.name}.{field}=empty")
            for label, value in WRONG_TYPES.items():
                if field.endswith("[]") and label == "list":
                    continue
                yield pytest.param(e.name, field, value, id=f"{e.name}.{field}={label}")
            if field.endswith("[]"):
                yield pytest.param(e.name, field[:-2], "not-a-list", id=f"{e.name}.{field[:-2]}=string-not-list")


def send(world: World, e: Endpoint, *, json_body: Any = ..., content: bytes | None = None, headers: dict[str, str] | None = None, addr: str | None = None) -> httpx.Response:
    api = world.server.api(world.admin.token if e.auth else None, local_address=addr)
    kw: dict[str, Any] = {"headers": headers}
    if content is not None:
        kw["content"] = content
    else:
        kw["json"] = e.body(world) if json_body is ... else json_body
    return api.request(e.method, e.path(world), **kw)


_addr = itertools.count(1)


def next_addr() -> str:
    """A fresh loopback source address per unauthenticated request, so the login limiter (per
    address) never turns these cases into 429s."""
    n = next(_addr)
    return f"127.0.{1 + n // 250}.{1 + n % 250}"


def assert_rejected(r: httpx.Response, allowed: set[int]) -> None:
    assert r.status_code in allowed, f"expected {sorted(allowed)}: {describe(r)}"
    assert_error(r, r.status_code)


@pytest.mark.parametrize("endpoint,field,value", list(string_cases()))
def test_hostile_field_values_are_rejected(world: World, unchanged: None, endpoint: str, field: str, value: Any) -> None:
    e = BY_NAME[endpoint]
    body = with_value(e.body(world), field, value)
    r = send(world, e, json_body=body, addr=None if e.auth else next_addr())
    assert_rejected(r, e.statuses)


@pytest.mark.parametrize("endpoint", [e.name for e in ENDPOINTS])
def test_100kb_strings_are_413(world: World, unchanged: None, endpoint: str) -> None:
    e = BY_NAME[endpoint]
    field = next(iter(e.fields)).rstrip("[]")
    r = send(world, e, json_body=with_value(e.body(world), field, KB100), addr=None if e.auth else next_addr())
    assert_error(r, 413, "request_too_large")


# --- raw bodies ----------------------------------------------------------------------------------

PLACEHOLDER = "@@VALUE@@"
# Each replaces the (quoted) value of the endpoint's first field in an otherwise valid body.
RAW_VALUES: dict[str, bytes] = {
    "invalid-utf8": b'"\xff\xfe\xfd"',
    "invalid-utf8-in-email-like": b'"\xc3\x28@example.com"',
    "overlong-utf8": b'"\xc0\xaf"',
    "lone-surrogate-escape": b'"\\ud800x"',
    "nested-arrays-2000": b"[" * 2000 + b"]" * 2000,
    "nested-objects-5000": b'{"a":' * 5000 + b"1" + b"}" * 5000,
}
RAW_BODIES: dict[str, bytes] = {
    "truncated": b'{"name":',
    "not-json": b"name=x&email=y",
    "empty": b"",
    "array": b"[]",
    "string": b'"x"',
    "number": b"42",
    "null": b"null",
    "trailing-garbage": b'{"name":"x"} {"name":"y"}',
}


def raw_body(world: World, e: Endpoint, label: str) -> bytes:
    if label in RAW_BODIES:
        return RAW_BODIES[label]
    field = next(iter(e.fields)).rstrip("[]")
    text = json.dumps({**e.body(world), field: PLACEHOLDER}).encode()
    return text.replace(json.dumps(PLACEHOLDER).encode(), RAW_VALUES[label])


@pytest.mark.parametrize("label", [*RAW_VALUES, *RAW_BODIES])
@pytest.mark.parametrize("endpoint", [e.name for e in ENDPOINTS])
def test_malformed_bodies_are_400(world: World, unchanged: None, endpoint: str, label: str) -> None:
    e = BY_NAME[endpoint]
    r = send(world, e, content=raw_body(world, e, label), headers={"content-type": "application/json"}, addr=None if e.auth else next_addr())
    assert_rejected(r, {400})


def test_a_json_array_is_not_an_object(world: World) -> None:
    """Bodies are JSON objects: a top-level array must not be read positionally as the fields in
    declaration order (serde's sequence form of a struct), which would bypass unknown-field
    rejection and set fields nobody named."""
    victim = world.create_user("developer", world.team_a["id"])
    team = world.create_team()
    key = world.create_key(world.team_a["id"], victim.id)
    before = snapshot(world.admin)
    cases = [
        ("PATCH", f"/users/{victim.id}", [unique_email("pos"), "admin"], world.admin.token),
        ("PATCH", f"/teams/{team['id']}", [unique("pos"), True], world.admin.token),
        ("PATCH", f"/keys/{key['id']}", [unique("pos")], world.admin.token),
        ("POST", "/teams", [unique("pos")], world.admin.token),
        ("POST", "/auth/login", [world.server.admin_email, world.server.admin_password], None),
    ]
    accepted = []
    for method, path, body, token in cases:
        r = world.server.api(token).request(method, path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
        if r.status_code != 400:
            accepted.append(f"{json.dumps(body)} -> {describe(r)}")
        else:
            assert_error(r, 400, "invalid_request_error")
    assert not accepted, "array bodies accepted:\n" + "\n".join(accepted)
    assert snapshot(world.admin) == before


@pytest.mark.parametrize("endpoint", [e.name for e in ENDPOINTS])
def test_unknown_fields_are_400_and_nothing_is_created(world: World, unchanged: None, endpoint: str) -> None:
    e = BY_NAME[endpoint]
    for extra in ({"bogus": 1}, {"is_admin": True}, {"role": "admin"} if "role" not in e.fields else {"password_hash": "$argon2id$"}, {"id": str(uuid.uuid4())}):
        body = {**e.body(world), **extra}
        r = send(world, e, json_body=body, addr=None if e.auth else next_addr())
        assert_rejected(r, {400})


@pytest.mark.parametrize("endpoint", [e.name for e in ENDPOINTS])
def test_duplicate_fields_are_400(world: World, unchanged: None, endpoint: str) -> None:
    """Doc silent: the same field twice is ambiguous (which one wins?) and must not be guessed."""
    e = BY_NAME[endpoint]
    body = e.body(world)
    field = next(iter(body))
    raw = json.dumps(body)[:-1] + f", {json.dumps(field)}: {json.dumps(body[field])}" + "}"
    r = send(world, e, content=raw.encode(), headers={"content-type": "application/json"}, addr=None if e.auth else next_addr())
    assert_rejected(r, {400})


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml", None])
@pytest.mark.parametrize("endpoint", ["login", "create-team", "create-key", "patch-user"])
def test_wrong_content_type_is_400(world: World, unchanged: None, endpoint: str, ctype: str | None) -> None:
    e = BY_NAME[endpoint]
    api = world.server.api(world.admin.token if e.auth else None, local_address=None if e.auth else next_addr())
    req = api.http.build_request(e.method, "/admin/v1" + e.path(world), content=json.dumps(e.body(world)).encode(), headers={"authorization": f"Bearer {world.admin.token}"} if e.auth else {})
    if ctype is None:
        req.headers.pop("content-type", None)
    else:
        req.headers["content-type"] = ctype
    r = api.http.send(req)
    assert_error(r, 400, "invalid_request_error")


def test_json_with_a_charset_parameter_is_accepted(world: World) -> None:
    name = unique("charset")
    r = world.admin.post("/teams", content=json.dumps({"name": name}).encode(), headers={"content-type": "application/json; charset=utf-8"})
    assert expect(r, 201)["name"] == name


@pytest.mark.parametrize("endpoint", [e.name for e in ENDPOINTS])
def test_bodies_over_64_kib_are_413(world: World, unchanged: None, endpoint: str) -> None:
    e = BY_NAME[endpoint]
    body = json.dumps({**e.body(world), "pad": "x" * MAX_BODY}).encode()
    r = send(world, e, content=body, headers={"content-type": "application/json"}, addr=None if e.auth else next_addr())
    assert_error(r, 413, "request_too_large")


def test_chunked_bodies_over_64_kib_are_413(world: World, unchanged: None) -> None:
    """Without a content-length the limit still holds (the body is counted as it streams)."""

    def chunks() -> Iterator[bytes]:
        yield b'{"name":"'
        for _ in range(80):
            yield b"x" * 1024
        yield b'"}'

    # A client of its own: the server closes this connection after the 413 (see the test below).
    r = world.server.api(world.admin.token).post("/teams", content=chunks(), headers={"content-type": "application/json"})
    assert_error(r, 413, "request_too_large")


def test_a_413_that_leaves_the_body_unread_says_connection_close(world: World) -> None:
    """Doc silent; HTTP hygiene. When the server answers 413 before the body has arrived and then
    closes the connection, the response must say `Connection: close`: otherwise a keep-alive client
    (httpx, requests) puts the connection back in its pool and its *next* request fails with
    "server disconnected". Raw socket, so the client's own behaviour cannot hide it."""
    host, port = world.server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as c:
        head = (
            f"POST /admin/v1/teams HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {world.admin.token}\r\n"
            "content-type: application/json\r\ncontent-length: 200000\r\n\r\n"
        ).encode()
        c.sendall(head + b"x" * 70000)
        resp = b""
        while b"\r\n\r\n" not in resp:
            chunk = c.recv(65536)
            if not chunk:
                break
            resp += chunk
        status, *headers = resp.split(b"\r\n\r\n")[0].decode().split("\r\n")
        assert " 413 " in status, status
        conn = [h.split(":", 1)[1].strip().lower() for h in headers if h.lower().startswith("connection:")]
        if conn == ["close"]:
            return
        # Without the header the connection must stay usable: send the rest and a second request.
        c.sendall(b"x" * 130000 + f"GET /admin/v1/auth/me HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {world.admin.token}\r\n\r\n".encode())
        try:
            rest = c.recv(65536)
        except OSError:
            rest = b""
        assert rest.startswith(b"HTTP/1.1 200"), f"413 without `Connection: close`, then the connection was closed: {headers}"


def test_the_64_kib_limit_is_on_the_body_not_below(world: World, unchanged: None) -> None:
    """Exactly 64 KiB is not 'over 64 KiB': refused for the too-long name (400), not as too large."""
    head, tail = b'{"name":"', b'"}'
    body = head + b"x" * (MAX_BODY - len(head) - len(tail)) + tail
    assert len(body) == MAX_BODY
    api = world.server.api(world.admin.token)
    assert_error(api.post("/teams", content=body, headers={"content-type": "application/json"}), 400, "invalid_request_error")
    body = head + b"x" * (MAX_BODY + 1 - len(head) - len(tail)) + tail
    api = world.server.api(world.admin.token)
    assert_error(api.post("/teams", content=body, headers={"content-type": "application/json"}), 413, "request_too_large")


# --- numbers, booleans and lists -----------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [-1, 2592001, 10**20, 1.5, "60", True, [60], {"s": 60}], ids=["negative", "over-max", "huge", "float", "string", "bool", "list", "object"]
)
def test_bad_overlap_seconds_are_400(world: World, unchanged: None, value: Any) -> None:
    r = world.admin.post(f"/keys/{world.key['id']}/rotate", json={"overlap_seconds": value})  # type: ignore[attr-defined]
    assert_error(r, 400, "invalid_request_error")


@pytest.mark.parametrize("value", ["true", 1, 0, [], {}], ids=["string", "one", "zero", "list", "object"])
@pytest.mark.parametrize("target", ["user", "team", "key"])
def test_non_boolean_flags_are_400(world: World, unchanged: None, target: str, value: Any) -> None:
    path, field = {"user": (f"/users/{world.victim.id}", "disabled"), "team": (f"/teams/{world.team_b['id']}", "disabled"), "key": (f"/keys/{world.key['id']}", "enabled")}[target]  # type: ignore[attr-defined]
    assert_error(world.admin.patch(path, json={field: value}), 400, "invalid_request_error")


def test_list_limits_are_enforced(world: World, unchanged: None) -> None:
    base = {"name": unique("k"), "team_id": world.team_a["id"]}
    assert_error(world.admin.post("/keys", json={**base, "allowed_models": [f"claude-{i}-*" for i in range(65)]}), 400)
    assert_error(world.admin.post("/keys", json={**base, "allowed_models": ["claude-" + "x" * 194]}), 400)
    assert_error(world.admin.post("/keys", json={**base, "allowed_endpoints": ["messages", "admin"]}), 400)
    assert_error(world.admin.post("/keys", json={**base, "allowed_endpoints": ["MESSAGES"]}), 400)
    assert_error(world.admin.post("/keys", json={**base, "expires_at": "yesterday"}), 400)
    assert_error(world.admin.post("/keys", json={**base, "expires_at": 1893456000}), 400)
    assert_error(world.admin.post("/users", json={"email": unique_email("r"), "password": strong_password(), "role": "superuser"}), 400)
    assert_error(world.admin.post("/users", json={"email": unique_email("r"), "password": strong_password(), "role": "ADMIN"}), 400)
    assert_error(world.admin.post("/users", json={"email": "no-at-sign.example.com", "password": strong_password(), "role": "viewer"}), 400)
    assert_error(world.admin.post("/users", json={"email": unique_email("w"), "password": "password1234", "role": "viewer"}), 400)
    assert_error(world.admin.post("/users", json={"email": unique_email("w"), "password": "Sh0rt-pass!", "role": "viewer"}), 400)


def long_email(n: int) -> str:
    """A plausible address of exactly n bytes: a short local part, DNS labels of at most 63."""
    local = "u" + uuid.uuid4().hex[:10]
    rest = n - len(local) - 1 - len(".com")
    labels = []
    while rest > 0:
        size = min(63, rest - 1 if rest > 64 else rest)
        labels.append("d" * size)
        rest -= size + 1
    domain = ".".join(labels) + ".com"
    email = f"{local}@{domain}"
    if len(email) < n:
        email = "x" * (n - len(email)) + email
    return email


def test_boundaries_of_the_documented_limits_are_accepted(world: World) -> None:
    """The inclusive edges: a 100-character name (of 4-byte characters), 254-byte email,
    256-character password, 64 model patterns of 200 characters each."""
    t = expect(world.admin.post("/teams", json={"name": "\U0001F600" * 100}), 201)
    assert t["name"] == "\U0001F600" * 100
    assert_error(world.admin.post("/teams", json={"name": "\U0001F600" * 101}), 400)
    email = long_email(254)
    assert len(email.encode()) == 254
    pw = "Zq7-" + uuid.uuid4().hex * 8
    pw = pw[:256]
    u = expect(world.admin.post("/users", json={"email": email, "password": pw, "role": "viewer", "team_id": world.team_a["id"]}), 201)
    assert u["email"] == email
    world.server.login(email, pw)
    assert_error(world.admin.post("/users", json={"email": long_email(255), "password": strong_password(), "role": "viewer"}), 400)
    assert_error(world.admin.post("/users", json={"email": unique_email("long"), "password": pw + "x", "role": "viewer"}), 400)
    models = [f"claude-{i:02d}-" + "m" * (200 - len("claude-00-")) for i in range(64)]
    assert all(len(m) == 200 for m in models)
    k = expect(world.admin.post("/keys", json={"name": unique("k"), "team_id": world.team_a["id"], "allowed_models": models}), 201)
    assert k["allowed_models"] == models


# --- path and query parameters -------------------------------------------------------------------

BAD_IDS = {
    "sql": "' OR 1=1 --",
    "sql-drop": "1; DROP TABLE users",
    "int": "1",
    "almost-uuid": "01900000-0000-7000-8000-00000000000g",
    "nul": "\x00",
    "unicode": "\u0661\u0662\u0663",
    "10KB": "a" * 10240,
}
ID_ROUTES = [("GET", "/users/{}"), ("PATCH", "/users/{}"), ("GET", "/teams/{}"), ("PATCH", "/teams/{}"), ("GET", "/keys/{}"), ("PATCH", "/keys/{}"), ("POST", "/keys/{}/revoke"), ("POST", "/keys/{}/rotate"), ("GET", "/upstreams/{}"), ("DELETE", "/upstreams/{}")]


@pytest.mark.parametrize("label", list(BAD_IDS))
@pytest.mark.parametrize("method,route", ID_ROUTES, ids=[f"{m} {r}" for m, r in ID_ROUTES])
def test_bad_ids_in_paths_are_400(world: World, unchanged: None, method: str, route: str, label: str) -> None:
    path = route.format(urllib.parse.quote(BAD_IDS[label], safe=""))
    kw: dict[str, Any] = {"json": {"name": "x"}} if method == "PATCH" else {}
    r = world.admin.request(method, path, **kw)
    allowed = {400} if label != "10KB" else {400, 414, 431}
    assert_rejected(r, allowed)


BAD_QUERIES = [
    ("/users", {"team_id": "' OR 1=1 --"}),
    ("/users", {"team_id": "1"}),
    ("/keys", {"team_id": "'; DROP TABLE api_keys; --"}),
    ("/keys", {"user_id": "\" OR \"\"=\""}),
    ("/keys", {"user_id": "a" * 10240}),
    ("/audit", {"after_seq": "abc"}),
    ("/audit", {"after_seq": "1 OR 1=1"}),
    ("/audit", {"after_seq": "99999999999999999999999999"}),
    ("/audit", {"limit": "1001"}),
    ("/audit", {"limit": "abc"}),
    ("/audit", {"limit": "-5"}),
    ("/audit", {"limit": "1e3"}),
]


@pytest.mark.parametrize("path,params", BAD_QUERIES, ids=[f"{p}?{'&'.join(f'{k}={v[:20]}' for k, v in q.items())}" for p, q in BAD_QUERIES])
def test_bad_query_parameters_are_400(world: World, unchanged: None, path: str, params: dict[str, str]) -> None:
    assert_rejected(world.admin.get(path, params=params), {400})


def test_audit_limit_1000_is_accepted(world: World) -> None:
    body = expect(world.admin.get("/audit", params={"limit": "1000"}), 200)
    assert len(body["data"]) <= 1000
    first = expect(world.admin.get("/audit", params={"limit": "1"}), 200)
    assert len(first["data"]) == 1 and first["has_more"] is True
    nxt = expect(world.admin.get("/audit", params={"limit": "1", "after_seq": str(first["data"][0]["seq"])}), 200)
    assert nxt["data"][0]["seq"] > first["data"][0]["seq"]


# --- methods and unknown paths ------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,path",
    [("DELETE", "/users"), ("PUT", "/teams"), ("DELETE", "/keys"), ("GET", "/auth/login"), ("PATCH", "/audit"), ("POST", "/audit/verify"), ("DELETE", "/auth/me"), ("PUT", "/users/{user}"), ("GET", "/keys/{key}/revoke")],
)
def test_wrong_methods_are_405(world: World, unchanged: None, method: str, path: str) -> None:
    path = path.replace("{user}", world.victim.id).replace("{key}", world.key["id"])  # type: ignore[attr-defined]
    assert_error(world.admin.request(method, path), 405, "invalid_request_error")


def test_unknown_admin_paths_are_404_envelopes(world: World) -> None:
    for path in ("/nope", "/users/x/y/z", "/keys/revoke"):
        r = world.admin.get(path)
        assert r.status_code in (400, 404), describe(r)
        assert_error(r, r.status_code)


# --- valid but odd values -------------------------------------------------------------------------


def test_sql_metacharacters_in_valid_values_are_stored_verbatim(world: World) -> None:
    before = snapshot(world.admin)
    made_teams, made_users, made_keys = [], [], []
    for sql in SQL:
        t = expect(world.admin.post("/teams", json={"name": sql + unique("")}), 201)
        assert expect(world.admin.get(f"/teams/{t['id']}"), 200)["name"] == t["name"]
        made_teams.append(t["id"])
        k = expect(world.admin.post("/keys", json={"name": sql, "team_id": world.team_a["id"]}), 201)
        assert expect(world.admin.get(f"/keys/{k['id']}"), 200)["name"] == sql
        made_keys.append(k["id"])
        r = world.admin.post("/keys", json={"name": unique("m"), "team_id": world.team_a["id"], "allowed_models": [sql]})
        if r.status_code == 201:
            assert r.json()["allowed_models"] == [sql]
            made_keys.append(r.json()["id"])
        else:
            assert_error(r, 400)
    # A password made of SQL is just a password.
    email, pw = unique_email("sqlpw"), "'; DROP TABLE users; --"
    u = expect(world.admin.post("/users", json={"email": email, "password": pw, "role": "viewer", "team_id": world.team_a["id"]}), 201)
    made_users.append(u["id"])
    assert world.server.login(email, pw)["user"]["id"] == u["id"]
    after = snapshot(world.admin)
    assert {t["id"] for t in after["teams"]} == {t["id"] for t in before["teams"]} | set(made_teams)
    assert {x["id"] for x in after["users"]} == {x["id"] for x in before["users"]} | set(made_users)
    assert {x["id"] for x in after["keys"]} == {x["id"] for x in before["keys"]} | set(made_keys)
    old = {x["id"]: x for x in before["users"]}
    assert all(old[x["id"]] == x for x in after["users"] if x["id"] in old), "existing users changed"
    assert expect(world.admin.get("/audit/verify"), 200)["ok"] is True


def test_unicode_names_round_trip(world: World) -> None:
    for name in ("Équipe données", "团队", "\u202etxt.exe", "a\u200bb", "O'Brien & Sons <script>"):
        t = expect(world.admin.post("/teams", json={"name": name + " " + uuid.uuid4().hex[:6]}), 201)
        got = expect(world.admin.get(f"/teams/{t['id']}"), 200)
        assert got["name"] == t["name"] and got["name"].startswith(name)


def test_logout_with_a_bad_body_is_400(world: World) -> None:
    for body in (b'{"refresh_token": 5}', b'{"bogus": 1}', b"[", b'{"refresh_token":"\xff"}'):
        pair = world.server.admin_login()
        r = world.server.api(pair["access_token"]).post("/auth/logout", content=body, headers={"content-type": "application/json"})
        assert_error(r, 400, "invalid_request_error")


# --- headers ----------------------------------------------------------------------------------


def test_security_headers_on_every_kind_of_admin_response(world: World) -> None:
    api = world.admin
    responses = [
        api.get("/users"),
        api.get("/auth/me", token=None),
        api.get("/nope"),
        api.request("DELETE", "/users"),
        api.post("/teams", content=b"{", headers={"content-type": "application/json"}),
        world.server.api(api.token).post("/teams", content=b"x" * (MAX_BODY + 10), headers={"content-type": "application/json"}),
        api.post("/auth/login", token=None, json={"email": unique_email("h"), "password": strong_password()}),
        api.get("//admin/docs/"),
    ]
    statuses = [r.status_code for r in responses]
    assert statuses[:6] == [200, 401, 404, 405, 400, 413], [describe(r) for r in responses]
    assert statuses[7] == 200, describe(responses[7])
    for r in responses:
        assert_security_headers(r)
        assert "strict-transport-security" not in r.headers, f"HSTS without an https public_base_url: {describe(r)}"


def test_the_docs_page_needs_no_internet(world: World) -> None:
    r = world.admin.get("//admin/docs/")
    assert r.status_code == 200 and "text/html" in r.headers.get("content-type", ""), describe(r)
    import re

    external = re.findall(r"""(?:src|href)\s*=\s*["'](https?://[^"']+)""", r.text)
    assert not external, f"the docs page loads from the internet: {external}"
    spec = world.admin.get("//openapi.json")
    assert spec.status_code == 200, describe(spec)
    doc = spec.json()
    assert str(doc.get("openapi", "")).startswith("3.1"), doc.get("openapi")
    assert any(p.startswith("/admin/v1/") for p in doc["paths"]), list(doc["paths"])[:10]


CORS_HEADERS = ("access-control-allow-origin", "access-control-allow-credentials", "access-control-allow-methods", "access-control-allow-headers")


def test_no_cors_headers_by_default(world: World) -> None:
    origin = "https://evil.example"
    rs = [
        world.admin.get("/users", headers={"origin": origin}),
        world.admin.post("/auth/login", token=None, json={"email": unique_email("c"), "password": strong_password()}, headers={"origin": origin}),
        world.admin.request("OPTIONS", "/users", token=None, headers={"origin": origin, "access-control-request-method": "GET", "access-control-request-headers": "authorization"}),
        world.admin.request("OPTIONS", "/auth/login", token=None, headers={"origin": origin, "access-control-request-method": "POST", "access-control-request-headers": "content-type"}),
    ]
    for r in rs:
        leaked = {h: r.headers[h] for h in CORS_HEADERS if h in r.headers}
        assert not leaked, f"CORS headers for an unlisted origin: {leaked} on {describe(r)}"
        assert r.status_code < 500, describe(r)


@pytest.fixture(scope="module")
def cors_server():
    import tempfile

    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write('[admin]\ncors_origins = ["https://console.example"]\n')
    cfg.close()
    s = start_admin_server("admin-cors", extra_args=["--config", cfg.name])
    yield s
    s.stop()


def test_cors_allows_exactly_the_listed_origins(cors_server: AdminServer) -> None:
    api = cors_server.api(cors_server.admin_login()["access_token"])
    ok = api.get("/auth/me", headers={"origin": "https://console.example"})
    assert ok.status_code == 200 and ok.headers.get("access-control-allow-origin") == "https://console.example", describe(ok)
    pre = api.request("OPTIONS", "/users", token=None, headers={"origin": "https://console.example", "access-control-request-method": "POST", "access-control-request-headers": "authorization,content-type"})
    assert pre.status_code in (200, 204) and pre.headers.get("access-control-allow-origin") == "https://console.example", describe(pre)
    for origin in ("https://console.example.evil.io", "https://evil.example", "http://console.example", "null", "https://console.example:444"):
        r = api.get("/auth/me", headers={"origin": origin})
        assert "access-control-allow-origin" not in r.headers, f"{origin}: {describe(r)} {dict(r.headers)}"
