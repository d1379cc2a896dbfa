"""The authorization matrix of docs/admin-api.md ("Roles and scopes"), one test per cell: every
endpoint x every role (admin, team_admin, developer, viewer, auditor, and no token at all) x the
target's position (the caller themself, the caller's own team, another team).

Callers: the bootstrap admin; a team_admin, developer and viewer of team A; an auditor (no team).
"own" targets live in team A, "other" targets in team B. The rule under test: a resource outside
the caller's scope is 404 (existence is not revealed); a resource the caller can see but may not
change, or an action the role may never take, is 403. Mutating cells act on targets made for the
cell (and, for "self" cells, on a caller made for the cell), so the order of cells never matters.

Cells whose expected status the doc leaves open accept a set (e.g. a team_admin creating a key in
another team: the team is out of scope (404) and the action is one the role may never take (403));
`test_no_existence_oracle_*` then demands that the answer not depend on whether the target exists.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Callable

import httpx
import jwt
import pytest
from admin_support import (
    KEY_FIELDS,
    TEAM_FIELDS,
    UPSTREAM_FIELDS,
    USER_FIELDS,
    Person,
    World,
    assert_error,
    build_world,
    describe,
    expect,
    start_admin_server,
    strong_password,
    unique,
    unique_email,
    wait_for,
)

ROLES = ("admin", "team_admin", "developer", "viewer", "auditor")
R = frozenset({200, 204})  # revoke / delete: the doc does not say which success status
X = frozenset({403, 404})  # out of scope and never allowed at once (see the module docs)
PW_MISSING = frozenset({400, 403})
PW_WRONG = frozenset({400, 401, 403})


@pytest.fixture(scope="module")
def world():
    # Local batches that give up after one attempt, so dead letters are quick to make.
    s = start_admin_server(
        "admin-authz",
        extra_env={
            "RAMPART_BATCHES__MODE": "local",
            "RAMPART_BATCHES__MAX_ATTEMPTS": "1",
            "RAMPART_BATCHES__CLAIM_INTERVAL_MS": "20",
            "RAMPART_UPSTREAM__BREAKER__ENABLED": "false",
            "RAMPART_UPSTREAM__RETRY__MAX_ATTEMPTS": "1",
        },
    )
    w = build_world(s)
    w.mate = w.create_user("developer", w.team_a["id"])  # type: ignore[attr-defined]
    w.stranger = w.create_user("developer", w.team_b["id"])  # type: ignore[attr-defined]
    w.upstream = expect(w.admin.post("/upstreams", json={"name": unique("up"), "api_key": "sk-ant-api03-" + "u" * 40 + "wxyz"}), 201)  # type: ignore[attr-defined]
    yield w
    s.stop()


@dataclass
class Ctx:
    """What an action did, for the success checks."""

    world: World
    caller: Person | None
    target: Any = None
    body: Any = None


Action = Callable[[World, str, str], tuple[httpx.Response, Ctx]]


def who(w: World, role: str, fresh: bool = False) -> Person | None:
    if role == "anonymous":
        return None
    if fresh:
        return w.fresh(role)
    return w.people[role]


def team_of(w: World, target: str) -> dict[str, Any]:
    return w.team_a if target == "own" else w.team_b


# --- actions ----------------------------------------------------------------------------------


def getter(path: str) -> Action:
    """GET `path` as the role's caller (no target)."""

    def act(w: World, role: str, target: str):
        c = who(w, role)
        return w.as_(c).get(path), Ctx(w, c)

    return act


me, list_users, list_teams, list_keys = getter("/auth/me"), getter("/users"), getter("/teams"), getter("/keys")
list_upstreams, audit, audit_verify = getter("/upstreams"), getter("/audit"), getter("/audit/verify")


def create_user(w: World, role: str, target: str):
    c = who(w, role)
    where, new_role = target.split(":")
    body: dict[str, Any] = {"email": unique_email("new"), "password": strong_password(), "role": new_role}
    if where != "org":
        body["team_id"] = team_of(w, where)["id"]
    return w.as_(c).post("/users", json=body), Ctx(w, c, body=body)


def user_target(w: World, c: Person | None, target: str, fresh: bool) -> Person:
    if target == "self":
        assert c is not None
        return c
    if fresh:
        return w.create_user("developer", team_of(w, target)["id"])
    return w.mate if target == "own" else w.stranger  # type: ignore[attr-defined]


def get_user(w: World, role: str, target: str):
    c = who(w, role)
    t = user_target(w, c, target, fresh=False)
    return w.as_(c).get(f"/users/{t.id}"), Ctx(w, c, target=t)


def patch_user(body_of: Callable[[World, Person, Person | None], dict[str, Any]]) -> Action:
    def act(w: World, role: str, target: str):
        c = who(w, role, fresh=target == "self")
        t = user_target(w, c, target, fresh=True)
        body = body_of(w, t, c)
        return w.as_(c).patch(f"/users/{t.id}", json=body), Ctx(w, c, target=t, body=body)

    return act


def create_team(w: World, role: str, target: str):
    c = who(w, role)
    body = {"name": unique("team")}
    return w.as_(c).post("/teams", json=body), Ctx(w, c, body=body)


def get_team(w: World, role: str, target: str):
    c = who(w, role)
    t = team_of(w, target)
    return w.as_(c).get(f"/teams/{t['id']}"), Ctx(w, c, target=t)


def patch_team(w: World, role: str, target: str):
    # A fresh team; for team roles and "own", a fresh caller who belongs to it.
    t = w.create_team()
    if role in ("team_admin", "developer", "viewer") and target == "own":
        c: Person | None = w.sign_in(w.create_user(role, t["id"]))
    else:
        c = who(w, role)
    body = {"name": unique("renamed")}
    return w.as_(c).patch(f"/teams/{t['id']}", json=body), Ctx(w, c, target=t, body=body)


def create_key(w: World, role: str, target: str):
    c = who(w, role)
    body: dict[str, Any] = {"name": unique("key"), "allowed_models": ["claude-haiku-*"], "allowed_endpoints": ["messages"]}
    if target == "self":
        assert c is not None
        body.update(team_id=w.team_a["id"], user_id=c.id)
    elif target == "own":
        body.update(team_id=w.team_a["id"], user_id=w.mate.id)  # type: ignore[attr-defined]
    else:
        body.update(team_id=w.team_b["id"], user_id=w.stranger.id)  # type: ignore[attr-defined]
    return w.as_(c).post("/keys", json=body), Ctx(w, c, body=body)


def key_target(w: World, c: Person | None, target: str) -> dict[str, Any]:
    if target == "mine":
        assert c is not None
        return w.create_key(w.team_a["id"], c.id)
    if target == "own":
        return w.create_key(w.team_a["id"], w.mate.id)  # type: ignore[attr-defined]
    return w.create_key(w.team_b["id"], w.stranger.id)  # type: ignore[attr-defined]


def key_action(method: str, suffix: str, body: dict[str, Any] | None) -> Action:
    def act(w: World, role: str, target: str):
        c = who(w, role)
        k = key_target(w, c if c else w.people["developer"], target)
        kw = {"json": body} if body is not None else {}
        return w.as_(c).request(method, f"/keys/{k['id']}{suffix}", **kw), Ctx(w, c, target=k, body=body)

    return act


POLICY = {"response_enabled": True, "ttl_secs": 600, "breakpoints_enabled": False}


def team_cache_policy(method: str, body: dict[str, Any] | None) -> Action:
    """GET or PUT /teams/{id}/cache-policy on the caller's own team (A) or another (B)."""

    def act(w: World, role: str, target: str):
        c = who(w, role)
        t = team_of(w, target)
        kw = {"json": body} if body is not None else {}
        return w.as_(c).request(method, f"/teams/{t['id']}/cache-policy", **kw), Ctx(w, c, target=t, body=body)

    return act


def check_cache_policy(r: httpx.Response, ctx: Ctx) -> None:
    """The answer is the policy; after a PUT the admin reads back what was written."""
    got = r.json()
    assert set(got) <= set(POLICY), got
    if ctx.body:
        assert got == ctx.body, got
        kind = "keys" if "key_label" in ctx.target or "prefix" in ctx.target else "teams"
        assert expect(ctx.world.admin.get(f"/{kind}/{ctx.target['id']}/cache-policy"), 200) == ctx.body


def usage_query(param: str | None) -> Action:
    """GET /usage, filtered by nothing, the target's team (`team`) or a key of the target (`key`)."""

    def act(w: World, role: str, target: str):
        c = who(w, role)
        params: dict[str, str] = {}
        if param == "team":
            params["team_id"] = team_of(w, target)["id"]
        elif param == "key":
            params["key_id"] = key_target(w, c, target)["id"]
        return w.as_(c).get("/usage", params=params), Ctx(w, c, body=params)

    return act


def create_upstream(w: World, role: str, target: str):
    c = who(w, role)
    body = {"name": unique("up"), "api_key": "sk-ant-api03-" + uuid.uuid4().hex + "wxyz"}
    return w.as_(c).post("/upstreams", json=body), Ctx(w, c, body=body)


def get_upstream(w: World, role: str, target: str):
    c = who(w, role)
    t = w.upstream  # type: ignore[attr-defined]
    return w.as_(c).get(f"/upstreams/{t['id']}"), Ctx(w, c, target=t)


def delete_upstream(w: World, role: str, target: str):
    c = who(w, role)
    t = expect(w.admin.post("/upstreams", json={"name": unique("up"), "api_key": "sk-ant-api03-" + "d" * 40}), 201)
    return w.as_(c).delete(f"/upstreams/{t['id']}"), Ctx(w, c, target=t)


def revoke_jti(w: World, role: str, target: str):
    c = who(w, role)
    victim = w.fresh("viewer")
    jti = jwt.decode(victim.token, options={"verify_signature": False})["jti"]
    return w.as_(c).post("/auth/revoke", json={"jti": jti}), Ctx(w, c, target=victim)


WEBHOOK_URL = "https://192.0.2.10/rampart-hook"  # TEST-NET-1: public by the URL policy, never answers
WEBHOOK_FIELDS = {"team_id", "url", "enabled", "secret", "created_at", "updated_at"}


def team_webhook(method: str, suffix: str = "") -> Action:
    """GET, PUT or DELETE /teams/{id}/webhook{suffix} on team A (own) or B (other); the team has
    a webhook before the call (set by the admin), so every cell stands alone."""

    def act(w: World, role: str, target: str):
        c = who(w, role)
        t = team_of(w, target)
        expect(w.admin.request("PUT", f"/teams/{t['id']}/webhook", json={"url": WEBHOOK_URL}), {200, 201})
        kw = {"json": {"url": WEBHOOK_URL, "rotate_secret": True}} if method == "PUT" else {}
        return w.as_(c).request(method, f"/teams/{t['id']}/webhook{suffix}", **kw), Ctx(w, c, target=t, body=method + suffix)

    return act


def check_webhook(r: httpx.Response, ctx: Ctx) -> None:
    if r.status_code == 204:
        assert ctx.world.admin.get(f"/teams/{ctx.target['id']}/webhook").status_code == 404
        return
    body = r.json()
    if ctx.body == "GET/deliveries":
        assert set(body) == {"data"}, body
        return
    assert set(body) <= WEBHOOK_FIELDS and body["team_id"] == ctx.target["id"], body
    # The secret only in the answer that made it (here: a rotation), never on a read.
    assert ("secret" in body) == (ctx.body == "PUT"), body


DEAD_LETTER_FIELDS = {
    "id", "batch_id", "item_index", "custom_id", "team_id", "key_id", "attempts", "last_status",
    "last_error", "created_at", "replayed_at", "replay_count",
}
DOOMED_MODEL = "claude-opus-4-8"  # the simulator answers 503 for it in this module


def dead_letter(w: World, target: str) -> dict[str, Any]:
    """A fresh dead letter in the caller's own team (A) or another (B): a one-item local batch
    whose only attempt gets a 503."""
    sim = w.server.sim_url
    if not getattr(w, "doomed", False):
        r = httpx.post(f"{sim}/_sim/faults", json={"kind": "status", "status": 503, "count": 100000, "model": DOOMED_MODEL})
        assert r.status_code < 300, r.text
        w.doomed = True  # type: ignore[attr-defined]
    key = w.create_key(team_of(w, target)["id"])["key"]
    body = {"requests": [{"custom_id": "doomed", "params": {"model": DOOMED_MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}}]}
    r = httpx.post(f"{w.server.url}/v1/messages/batches", json=body, headers={"x-api-key": key, "anthropic-version": "2023-06-01"}, timeout=30)
    assert r.status_code == 200, r.text
    batch = r.json()["id"]
    page = wait_for(lambda: expect(w.admin.get("/dead-letters", params={"batch_id": batch}), 200)["data"], timeout=30, what="a dead letter")
    return page[0]


def dead_letter_action(method: str, suffix: str) -> Action:
    """GET or POST /dead-letters/{id}{suffix} on a fresh dead letter of team A or B."""

    def act(w: World, role: str, target: str):
        c = who(w, role)
        d = dead_letter(w, target)
        return w.as_(c).request(method, f"/dead-letters/{d['id']}{suffix}"), Ctx(w, c, target=d, body=suffix)

    return act


def dead_letter_list(w: World, role: str, target: str):
    c = who(w, role)
    params = {} if target == "-" else {"team_id": team_of(w, target)["id"]}
    return w.as_(c).get("/dead-letters", params=params), Ctx(w, c, body=params)


def check_dead_letter(r: httpx.Response, ctx: Ctx) -> None:
    d = r.json()
    assert set(d) == DEAD_LETTER_FIELDS, d
    assert d["id"] == ctx.target["id"] and d["last_status"] == 503 and d["last_error"]["type"] == "error"
    if ctx.body == "/replay":
        assert d["replay_count"] == 1 and d["replayed_at"] is not None, d


def check_dead_letters(r: httpx.Response, ctx: Ctx) -> None:
    body = r.json()
    assert set(body) == {"data", "has_more", "last_id"}, body
    for d in body["data"]:
        assert set(d) == DEAD_LETTER_FIELDS, d
        if ctx.body.get("team_id"):
            assert d["team_id"] == ctx.body["team_id"], d


# --- success checks ----------------------------------------------------------------------------


def check_user_created(r: httpx.Response, ctx: Ctx) -> None:
    u = r.json()
    assert set(u) == USER_FIELDS, u
    assert u["email"] == ctx.body["email"] and u["role"] == ctx.body["role"]
    assert u["team_id"] == ctx.body.get("team_id")


def check_user_is_target(r: httpx.Response, ctx: Ctx) -> None:
    u = r.json()
    assert set(u) == USER_FIELDS and u["id"] == ctx.target.id, u


def check_user_patched(r: httpx.Response, ctx: Ctx) -> None:
    u = r.json()
    assert set(u) == USER_FIELDS and u["id"] == ctx.target.id, u
    for k, v in ctx.body.items():
        if k not in ("password", "current_password"):
            assert u[k] == v, (k, u)
    if "password" in ctx.body:
        # The new password works (the old one is checked only once, below, to spare the limiter).
        ctx.world.server.login(ctx.target.email, ctx.body["password"])


def check_list(fields: set[str]) -> Callable[[httpx.Response, Ctx], None]:
    def check(r: httpx.Response, ctx: Ctx) -> None:
        body = r.json()
        assert isinstance(body, dict) and isinstance(body.get("data"), list), body
        for item in body["data"]:
            assert set(item) == fields, item

    return check


def check_team(r: httpx.Response, ctx: Ctx) -> None:
    t = r.json()
    assert set(t) == TEAM_FIELDS, t
    if ctx.target is not None:
        assert t["id"] == ctx.target["id"]
    if ctx.body:
        assert t["name"] == ctx.body["name"]


def check_key_created(r: httpx.Response, ctx: Ctx) -> None:
    k = r.json()
    assert set(k) == KEY_FIELDS | {"key"}, k
    assert k["key"].startswith("rk_live_") and k["prefix"] == k["key"][: len(k["prefix"])]
    for f in ("team_id", "user_id", "name", "allowed_models", "allowed_endpoints"):
        assert k[f] == ctx.body[f], (f, k)


def check_key(r: httpx.Response, ctx: Ctx) -> None:
    k = r.json()
    assert set(k) == KEY_FIELDS, f"a stored key is never shown again: {k}"
    assert k["id"] == ctx.target["id"]
    if ctx.body:
        for f, v in ctx.body.items():
            assert k[f] == v, (f, k)


def check_key_revoked(r: httpx.Response, ctx: Ctx) -> None:
    got = expect(ctx.world.admin.get(f"/keys/{ctx.target['id']}"), 200)
    assert got["revoked_at"] is not None, got
    if r.status_code == 200:
        assert r.json()["id"] == ctx.target["id"] and r.json()["revoked_at"] is not None


def check_key_rotated(r: httpx.Response, ctx: Ctx) -> None:
    k = r.json()
    assert k["rotated_from"] == ctx.target["id"] and k["id"] != ctx.target["id"], k
    assert k["key"].startswith("rk_live_")
    assert k["team_id"] == ctx.target["team_id"]


def check_upstream(r: httpx.Response, ctx: Ctx) -> None:
    u = r.json()
    assert set(u) == UPSTREAM_FIELDS, u
    secret = (ctx.body or {}).get("api_key")
    if secret:
        assert secret not in r.text and u["key_hint"].endswith(secret[-4:]), u


def check_upstream_deleted(r: httpx.Response, ctx: Ctx) -> None:
    assert_error(ctx.world.admin.get(f"/upstreams/{ctx.target['id']}"), 404, "not_found_error")


def check_audit(r: httpx.Response, ctx: Ctx) -> None:
    body = r.json()
    assert isinstance(body["data"], list) and isinstance(body["has_more"], bool), body
    assert body["data"], "the audit log has events (at least the bootstrap and this suite's creations)"


def check_verify(r: httpx.Response, ctx: Ctx) -> None:
    body = r.json()
    assert body["ok"] is True and body["first_break"] is None and body["checked"] > 0, body


def check_revoked_jti(r: httpx.Response, ctx: Ctx) -> None:
    victim = ctx.world.as_(ctx.target)
    wait_for(lambda: victim.get("/auth/me").status_code == 401, timeout=1.0, what="the revoked token to be refused")


def check_usage(r: httpx.Response, ctx: Ctx) -> None:
    body = r.json()
    assert set(body) == {"from", "to", "group_by", "data"}, body
    assert body["group_by"] == [] and len(body["data"]) == 1, body
    assert {"requests", "errors", "cost_micro_usd", "cost_usd"} <= set(body["data"][0]), body


def check_me(r: httpx.Response, ctx: Ctx) -> None:
    assert ctx.caller is not None and r.json()["id"] == ctx.caller.id


# --- the matrix --------------------------------------------------------------------------------
# (endpoint, target, action, check, expected for admin, team_admin, developer, viewer, auditor)
# None: the cell does not apply (e.g. "my key" for a role that has no team).

Row = tuple[str, str, Action, Callable[[httpx.Response, Ctx], None] | None, tuple[Any, Any, Any, Any, Any]]


def pw_body(current: str | None = ..., new: str | None = None) -> Callable[[World, Person, Person | None], dict[str, Any]]:  # type: ignore[assignment]
    def body(w: World, t: Person, c: Person | None) -> dict[str, Any]:
        b: dict[str, Any] = {"password": new or strong_password()}
        if current is ...:
            b["current_password"] = t.password
        elif current is not None:
            b["current_password"] = current
        return b

    return body


MATRIX: list[Row] = [
    ("GET /auth/me", "-", me, check_me, (200, 200, 200, 200, 200)),
    ("GET /users", "-", list_users, check_list(USER_FIELDS), (200, 200, 403, 403, 403)),
    ("POST /users", "own:developer", create_user, check_user_created, (201, 201, 403, 403, 403)),
    ("POST /users", "own:viewer", create_user, check_user_created, (201, 201, 403, 403, 403)),
    ("POST /users", "own:team_admin", create_user, check_user_created, (201, 201, 403, 403, 403)),
    ("POST /users", "own:admin", create_user, check_user_created, (None, 403, 403, 403, 403)),
    ("POST /users", "own:auditor", create_user, check_user_created, (None, 403, 403, 403, 403)),
    ("POST /users", "org:admin", create_user, check_user_created, (201, 403, 403, 403, 403)),
    ("POST /users", "org:auditor", create_user, check_user_created, (201, 403, 403, 403, 403)),
    ("POST /users", "other:developer", create_user, check_user_created, (201, X, 403, 403, 403)),
    ("GET /users/{id}", "self", get_user, check_user_is_target, (200, 200, 200, 200, 200)),
    ("GET /users/{id}", "own", get_user, check_user_is_target, (200, 200, 404, 404, 404)),
    ("GET /users/{id}", "other", get_user, check_user_is_target, (200, 404, 404, 404, 404)),
    ("PATCH /users/{id} {role: viewer}", "own", patch_user(lambda w, t, c: {"role": "viewer"}), check_user_patched, (200, 200, 404, 404, 404)),
    ("PATCH /users/{id} {role: viewer}", "other", patch_user(lambda w, t, c: {"role": "viewer"}), check_user_patched, (200, 404, 404, 404, 404)),
    ("PATCH /users/{id} {role: admin}", "own", patch_user(lambda w, t, c: {"role": "admin", "team_id": None}), check_user_patched, (200, 403, 404, 404, 404)),
    ("PATCH /users/{id} {role: auditor}", "own", patch_user(lambda w, t, c: {"role": "auditor", "team_id": None}), check_user_patched, (200, 403, 404, 404, 404)),
    ("PATCH /users/{id} {team_id: B}", "own", patch_user(lambda w, t, c: {"team_id": w.team_b["id"]}), check_user_patched, (200, 403, 404, 404, 404)),
    ("PATCH /users/{id} {disabled: true}", "own", patch_user(lambda w, t, c: {"disabled": True}), check_user_patched, (200, 200, 404, 404, 404)),
    ("PATCH /users/{id} {disabled: true}", "other", patch_user(lambda w, t, c: {"disabled": True}), check_user_patched, (200, 404, 404, 404, 404)),
    ("PATCH /users/{id} {email}", "own", patch_user(lambda w, t, c: {"email": unique_email("moved")}), check_user_patched, (200, 200, 404, 404, 404)),
    ("PATCH /users/{id} {password}", "own", patch_user(pw_body(current=None)), check_user_patched, (200, 200, 404, 404, 404)),
    ("PATCH /users/{id} {password}", "other", patch_user(pw_body(current=None)), check_user_patched, (200, 404, 404, 404, 404)),
    ("PATCH /users/{id} {role: admin}", "self", patch_user(lambda w, t, c: {"role": "admin", "team_id": None}), check_user_patched, (None, 403, 403, 403, 403)),
    ("PATCH /users/{id} {role: team_admin}", "self", patch_user(lambda w, t, c: {"role": "team_admin"}), check_user_patched, (None, None, 403, 403, 403)),
    ("PATCH /users/{id} {email}", "self", patch_user(lambda w, t, c: {"email": unique_email("self")}), check_user_patched, (200, 200, 403, 403, 403)),
    ("PATCH /users/{id} {disabled: false}", "self", patch_user(lambda w, t, c: {"disabled": False}), check_user_patched, (None, None, 403, 403, 403)),
    ("PATCH /users/{id} {password, current_password}", "self", patch_user(pw_body()), check_user_patched, (200, 200, 200, 200, 200)),
    # "Changing your own password always needs current_password, admins included."
    ("PATCH /users/{id} {password} without current_password", "self", patch_user(pw_body(current=None)), check_user_patched, (PW_MISSING,) * 5),
    ("PATCH /users/{id} {password} wrong current_password", "self", patch_user(pw_body(current="Wrong-" + uuid.uuid4().hex)), check_user_patched, (PW_WRONG,) * 5),
    ("GET /teams", "-", list_teams, check_list(TEAM_FIELDS), (200, 200, 200, 200, 403)),
    ("POST /teams", "-", create_team, check_team, (201, 403, 403, 403, 403)),
    ("GET /teams/{id}", "own", get_team, check_team, (200, 200, 200, 200, 403)),
    ("GET /teams/{id}", "other", get_team, check_team, (200, 404, 404, 404, 403)),
    ("PATCH /teams/{id}", "own", patch_team, check_team, (200, 403, 403, 403, 403)),
    ("PATCH /teams/{id}", "other", patch_team, check_team, (200, 404, 404, 404, 403)),
    ("GET /keys", "-", list_keys, check_list(KEY_FIELDS), (200, 200, 200, 200, 403)),
    ("POST /keys", "self", create_key, check_key_created, (None, 201, 201, 403, 403)),
    ("POST /keys", "own", create_key, check_key_created, (201, 201, X, 403, 403)),
    ("POST /keys", "other", create_key, check_key_created, (201, X, X, 403, 403)),
    ("GET /keys/{id}", "mine", key_action("GET", "", None), check_key, (None, 200, 200, 200, None)),
    ("GET /keys/{id}", "own", key_action("GET", "", None), check_key, (200, 200, 404, 200, 403)),
    ("GET /keys/{id}", "other", key_action("GET", "", None), check_key, (200, 404, 404, 404, 403)),
    ("PATCH /keys/{id}", "mine", key_action("PATCH", "", {"name": "patched", "enabled": False}), check_key, (None, 200, 200, 403, None)),
    ("PATCH /keys/{id}", "own", key_action("PATCH", "", {"name": "patched", "enabled": False}), check_key, (200, 200, 404, 403, 403)),
    ("PATCH /keys/{id}", "other", key_action("PATCH", "", {"name": "patched", "enabled": False}), check_key, (200, 404, 404, 404, 403)),
    ("POST /keys/{id}/revoke", "mine", key_action("POST", "/revoke", None), check_key_revoked, (None, R, R, 403, None)),
    ("POST /keys/{id}/revoke", "own", key_action("POST", "/revoke", None), check_key_revoked, (R, R, 404, 403, 403)),
    ("POST /keys/{id}/revoke", "other", key_action("POST", "/revoke", None), check_key_revoked, (R, 404, 404, 404, 403)),
    ("POST /keys/{id}/rotate", "mine", key_action("POST", "/rotate", {"overlap_seconds": 60}), check_key_rotated, (None, 201, 201, 403, None)),
    ("POST /keys/{id}/rotate", "own", key_action("POST", "/rotate", {"overlap_seconds": 60}), check_key_rotated, (201, 201, 404, 403, 403)),
    ("POST /keys/{id}/rotate", "other", key_action("POST", "/rotate", {"overlap_seconds": 60}), check_key_rotated, (201, 404, 404, 404, 403)),
    ("GET /upstreams", "-", list_upstreams, check_list(UPSTREAM_FIELDS), (200, 403, 403, 403, 403)),
    ("POST /upstreams", "-", create_upstream, check_upstream, (201, 403, 403, 403, 403)),
    ("GET /upstreams/{id}", "-", get_upstream, check_upstream, (200, 403, 403, 403, 403)),
    ("DELETE /upstreams/{id}", "-", delete_upstream, check_upstream_deleted, (R, 403, 403, 403, 403)),
    ("GET /audit", "-", audit, check_audit, (200, 403, 403, 403, 200)),
    ("GET /audit/verify", "-", audit_verify, check_verify, (200, 403, 403, 403, 200)),
    ("POST /auth/revoke", "-", revoke_jti, check_revoked_jti, (204, 403, 403, 403, 403)),
    ("GET /keys/{id}/cache-policy", "mine", key_action("GET", "/cache-policy", None), check_cache_policy, (None, 200, 200, 200, None)),
    ("GET /keys/{id}/cache-policy", "own", key_action("GET", "/cache-policy", None), check_cache_policy, (200, 200, 404, 200, 403)),
    ("GET /keys/{id}/cache-policy", "other", key_action("GET", "/cache-policy", None), check_cache_policy, (200, 404, 404, 404, 403)),
    ("PUT /keys/{id}/cache-policy", "mine", key_action("PUT", "/cache-policy", POLICY), check_cache_policy, (None, 200, 403, 403, None)),
    ("PUT /keys/{id}/cache-policy", "own", key_action("PUT", "/cache-policy", POLICY), check_cache_policy, (200, 200, 404, 403, 403)),
    ("PUT /keys/{id}/cache-policy", "other", key_action("PUT", "/cache-policy", POLICY), check_cache_policy, (200, 404, 404, 404, 403)),
    ("GET /teams/{id}/cache-policy", "own", team_cache_policy("GET", None), check_cache_policy, (200, 200, 200, 200, 403)),
    ("GET /teams/{id}/cache-policy", "other", team_cache_policy("GET", None), check_cache_policy, (200, 404, 404, 404, 403)),
    ("PUT /teams/{id}/cache-policy", "own", team_cache_policy("PUT", POLICY), check_cache_policy, (200, 200, 403, 403, 403)),
    ("PUT /teams/{id}/cache-policy", "other", team_cache_policy("PUT", POLICY), check_cache_policy, (200, 404, 404, 404, 403)),
    ("GET /usage", "-", usage_query(None), check_usage, (200, 200, 200, 200, 403)),
    ("GET /usage ?team_id", "own", usage_query("team"), check_usage, (200, 200, 200, 200, 403)),
    ("GET /usage ?team_id", "other", usage_query("team"), check_usage, (200, 404, 404, 404, 403)),
    ("GET /usage ?key_id", "mine", usage_query("key"), check_usage, (None, 200, 200, 200, None)),
    ("GET /usage ?key_id", "own", usage_query("key"), check_usage, (200, 200, 404, 200, 403)),
    ("GET /usage ?key_id", "other", usage_query("key"), check_usage, (200, 404, 404, 404, 403)),
    ("GET /teams/{id}/webhook", "own", team_webhook("GET"), check_webhook, (200, 200, 403, 403, 403)),
    ("GET /teams/{id}/webhook", "other", team_webhook("GET"), check_webhook, (200, 404, 404, 404, 403)),
    ("PUT /teams/{id}/webhook", "own", team_webhook("PUT"), check_webhook, (200, 200, 403, 403, 403)),
    ("PUT /teams/{id}/webhook", "other", team_webhook("PUT"), check_webhook, (200, 404, 404, 404, 403)),
    ("DELETE /teams/{id}/webhook", "own", team_webhook("DELETE"), check_webhook, (204, 204, 403, 403, 403)),
    ("DELETE /teams/{id}/webhook", "other", team_webhook("DELETE"), check_webhook, (204, 404, 404, 404, 403)),
    ("GET /teams/{id}/webhook/deliveries", "own", team_webhook("GET", "/deliveries"), check_webhook, (200, 200, 403, 403, 403)),
    ("GET /teams/{id}/webhook/deliveries", "other", team_webhook("GET", "/deliveries"), check_webhook, (200, 404, 404, 404, 403)),
    ("GET /dead-letters", "-", dead_letter_list, check_dead_letters, (200, 200, 403, 403, 403)),
    ("GET /dead-letters ?team_id", "own", dead_letter_list, check_dead_letters, (200, 200, 403, 403, 403)),
    ("GET /dead-letters ?team_id", "other", dead_letter_list, check_dead_letters, (200, 404, 403, 403, 403)),
    ("GET /dead-letters/{id}", "own", dead_letter_action("GET", ""), check_dead_letter, (200, 200, 403, 403, 403)),
    ("GET /dead-letters/{id}", "other", dead_letter_action("GET", ""), check_dead_letter, (200, 404, 403, 403, 403)),
    ("POST /dead-letters/{id}/replay", "own", dead_letter_action("POST", "/replay"), check_dead_letter, (200, 200, 403, 403, 403)),
    ("POST /dead-letters/{id}/replay", "other", dead_letter_action("POST", "/replay"), check_dead_letter, (200, 404, 403, 403, 403)),
]


def cells() -> list[Any]:
    out = []
    anonymous_done: set[str] = set()
    for endpoint, target, action, check, expected in MATRIX:
        for role, exp in zip(ROLES, expected):
            if exp is not None:
                out.append(pytest.param(endpoint, target, action, check, role, exp, id=f"{endpoint} | {role} | {target}"))
        # Without a token every endpoint is 401 (one cell per method and path).
        route = " ".join(endpoint.split()[:2])
        if target != "self" and route not in anonymous_done:
            anonymous_done.add(route)
            out.append(pytest.param(route, target, action, None, "anonymous", 401, id=f"{route} | anonymous | {target}"))
    return out


@pytest.mark.parametrize("endpoint,target,action,check,role,expected", cells())
def test_matrix(world: World, endpoint: str, target: str, action: Action, check: Any, role: str, expected: Any) -> None:
    r, ctx = action(world, role, target)
    allowed = set(expected) if isinstance(expected, frozenset) else {expected}
    assert r.status_code in allowed, f"[{role} -> {endpoint} on {target}] expected {sorted(allowed)}: {describe(r)}"
    if r.status_code >= 400:
        assert_error(r, r.status_code)
        if target == "self" and "password" in endpoint and ctx.caller is not None:
            # A refused password change leaves the old password working.
            world.server.login(ctx.caller.email, ctx.caller.password)
    elif check is not None:
        check(r, ctx)


# --- scopes: what lists contain ----------------------------------------------------------------


def ids(r: httpx.Response) -> set[str]:
    return {x["id"] for x in expect(r, 200)["data"]}


def test_team_admin_lists_only_users_of_their_team(world: World) -> None:
    mate, stranger = world.mate, world.stranger  # type: ignore[attr-defined]
    users = expect(world.as_("team_admin").get("/users"), 200)["data"]
    assert users and all(u["team_id"] == world.team_a["id"] for u in users), users
    got = {u["id"] for u in users}
    assert mate.id in got and world.people["team_admin"].id in got and stranger.id not in got
    assert world.people["admin"].id not in got and world.people["auditor"].id not in got
    # Asking for the other team never reveals its members.
    r = world.as_("team_admin").get("/users", params={"team_id": world.team_b["id"]})
    assert r.status_code in (200, 403, 404), describe(r)
    if r.status_code == 200:
        assert stranger.id not in ids(r)
    # Admin sees everyone, and can filter.
    everyone = ids(world.admin.get("/users"))
    assert {mate.id, stranger.id, world.people["auditor"].id} <= everyone
    only_b = expect(world.admin.get("/users", params={"team_id": world.team_b["id"]}), 200)["data"]
    assert only_b and all(u["team_id"] == world.team_b["id"] for u in only_b)


def test_team_roles_list_only_their_own_team(world: World) -> None:
    for role in ("team_admin", "developer", "viewer"):
        got = ids(world.as_(role).get("/teams"))
        assert got == {world.team_a["id"]}, (role, got)
    assert {world.team_a["id"], world.team_b["id"]} <= ids(world.admin.get("/teams"))


def test_key_lists_are_scoped_per_role(world: World) -> None:
    dev = world.people["developer"]
    mine = world.create_key(world.team_a["id"], dev.id)
    mates = world.create_key(world.team_a["id"], world.mate.id)  # type: ignore[attr-defined]
    theirs = world.create_key(world.team_b["id"], world.stranger.id)  # type: ignore[attr-defined]
    for role in ("team_admin", "viewer"):
        got = expect(world.as_(role).get("/keys"), 200)["data"]
        assert all(k["team_id"] == world.team_a["id"] for k in got), (role, got)
        assert {mine["id"], mates["id"]} <= {k["id"] for k in got} and theirs["id"] not in {k["id"] for k in got}
        assert all("key" not in k for k in got)
    dev_keys = expect(world.as_("developer").get("/keys"), 200)["data"]
    assert all(k["user_id"] == dev.id for k in dev_keys), dev_keys
    assert mine["id"] in {k["id"] for k in dev_keys}
    # Filters cannot widen a scope.
    for params in ({"user_id": world.mate.id}, {"team_id": world.team_b["id"]}):  # type: ignore[attr-defined]
        r = world.as_("developer").get("/keys", params=params)
        assert r.status_code in (200, 403, 404), describe(r)
        if r.status_code == 200:
            assert not ({mates["id"], theirs["id"]} & ids(r)), (params, r.text)
    r = world.as_("team_admin").get("/keys", params={"team_id": world.team_b["id"]})
    assert r.status_code in (200, 403, 404), describe(r)
    if r.status_code == 200:
        assert theirs["id"] not in ids(r)
    everything = ids(world.admin.get("/keys"))
    assert {mine["id"], mates["id"], theirs["id"]} <= everything
    only_b = expect(world.admin.get("/keys", params={"team_id": world.team_b["id"]}), 200)["data"]
    assert theirs["id"] in {k["id"] for k in only_b} and all(k["team_id"] == world.team_b["id"] for k in only_b)


def test_keys_created_without_team_or_user_default_to_the_callers_scope(world: World) -> None:
    dev = world.people["developer"]
    k = expect(world.as_("developer").post("/keys", json={"name": unique("dflt")}), 201)
    assert k["team_id"] == world.team_a["id"] and k["user_id"] == dev.id, k
    k = expect(world.as_("team_admin").post("/keys", json={"name": unique("dflt")}), 201)
    assert k["team_id"] == world.team_a["id"], k


def test_team_admin_creates_users_only_in_their_own_team(world: World) -> None:
    body = {"email": unique_email("nt"), "password": strong_password(), "role": "developer"}
    r = world.as_("team_admin").post("/users", json=body)
    # Without team_id the new user lands in the caller's team (or the request is refused outright).
    if r.status_code == 201:
        assert r.json()["team_id"] == world.team_a["id"], r.text
    else:
        assert_error(r, {400, 403})


# --- no existence oracle ----------------------------------------------------------------------


def same_answer(a: httpx.Response, b: httpx.Response) -> None:
    assert a.status_code == b.status_code, f"existing vs missing differ:\n{describe(a)}\n{describe(b)}"
    ja, jb = a.json(), b.json()
    ja.pop("request_id", None)
    jb.pop("request_id", None)
    assert ja == jb, f"existing vs missing differ:\n{describe(a)}\n{describe(b)}"


MISSING = "01900000-0000-7000-8000-000000000000"


def test_no_existence_oracle_for_out_of_scope_users_keys_and_teams(world: World) -> None:
    theirs = world.create_key(world.team_b["id"], world.stranger.id)  # type: ignore[attr-defined]
    for role in ("team_admin", "developer", "viewer"):
        api = world.as_(role)
        same_answer(api.get(f"/users/{world.stranger.id}"), api.get(f"/users/{MISSING}"))  # type: ignore[attr-defined]
        same_answer(api.get(f"/keys/{theirs['id']}"), api.get(f"/keys/{MISSING}"))
        same_answer(api.get(f"/teams/{world.team_b['id']}"), api.get(f"/teams/{MISSING}"))
        if role != "viewer":
            same_answer(
                api.patch(f"/keys/{theirs['id']}", json={"name": "x"}), api.patch(f"/keys/{MISSING}", json={"name": "x"})
            )
            same_answer(api.post(f"/keys/{theirs['id']}/revoke"), api.post(f"/keys/{MISSING}/revoke"))
    assert expect(world.admin.get(f"/keys/{theirs['id']}"), 200)["revoked_at"] is None


def test_no_existence_oracle_when_creating_in_another_team(world: World) -> None:
    for role, path, body in (
        ("team_admin", "/keys", lambda t: {"name": unique("k"), "team_id": t}),
        ("team_admin", "/users", lambda t: {"email": unique_email("o"), "password": strong_password(), "role": "developer", "team_id": t}),
        ("developer", "/keys", lambda t: {"name": unique("k"), "team_id": t}),
    ):
        api = world.as_(role)
        same_answer(api.post(path, json=body(world.team_b["id"])), api.post(path, json=body(MISSING)))


def test_admin_gets_404_for_missing_resources(world: World) -> None:
    for path in ("/users", "/teams", "/keys", "/upstreams"):
        assert_error(world.admin.get(f"{path}/{MISSING}"), 404, "not_found_error")
    assert_error(world.admin.patch(f"/keys/{MISSING}", json={"name": "x"}), 404, "not_found_error")
    assert_error(world.admin.post(f"/keys/{MISSING}/revoke"), 404, "not_found_error")
    assert_error(world.admin.post(f"/keys/{MISSING}/rotate", json={}), 404, "not_found_error")
    assert_error(world.admin.delete(f"/upstreams/{MISSING}"), 404, "not_found_error")


def test_revoking_a_revoked_key_is_409(world: World) -> None:
    k = world.create_key(world.team_a["id"])
    expect(world.admin.post(f"/keys/{k['id']}/revoke"), R)
    assert_error(world.admin.post(f"/keys/{k['id']}/revoke"), 409, "conflict_error")


def test_duplicate_email_and_team_name_are_409(world: World) -> None:
    t = world.create_team()
    assert_error(world.admin.post("/teams", json={"name": t["name"]}), 409, "conflict_error")
    p = world.create_user("viewer", world.team_a["id"])
    body = {"email": p.email.upper(), "password": strong_password(), "role": "viewer", "team_id": world.team_a["id"]}
    assert_error(world.admin.post("/users", json=body), 409, "conflict_error")


def test_a_refused_password_change_never_changes_the_password(world: World) -> None:
    victim = world.fresh("developer")
    r = world.as_(victim).patch(f"/users/{victim.id}", json={"password": strong_password(), "current_password": "Not-The-" + uuid.uuid4().hex})
    assert r.status_code in PW_WRONG, describe(r)
    world.server.login(victim.email, victim.password)
