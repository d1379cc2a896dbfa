"""Keys made through the admin API, used with the official `anthropic` SDK: model and endpoint
scopes (403 permission_error), and changes that take effect on the serving instance at once
(docs/admin-api.md: "a created or changed key works (or stops working) on the serving instance at
once"): creation, revocation, disabling, narrowing, expiry, and rotation with its overlap."""

from __future__ import annotations

import datetime as dt
import time

import anthropic
import pytest
from admin_support import World, assert_error, expect, module_world, unique


world = module_world("admin-sdk")


def sdk(world: World, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=world.server.url, api_key=key, max_retries=0, timeout=30)


def ask(world: World, key: str, model: str = "claude-haiku-4-5") -> anthropic.types.Message:
    return sdk(world, key).messages.create(model=model, max_tokens=20, messages=[{"role": "user", "content": "echo: hi"}])


def new_key(world: World, **kw) -> dict:
    body = {"name": unique("sdk"), "team_id": world.team_a["id"], **kw}
    k = expect(world.admin.post("/keys", json=body), 201)
    assert k["key"].startswith("rk_live_"), k
    return k


def test_a_haiku_only_key_works_for_haiku_and_is_refused_for_sonnet(world: World) -> None:
    k = new_key(world, allowed_models=["claude-haiku-*"])
    # At once: no waiting for a reload.
    msg = ask(world, k["key"])
    assert msg.content[0].text == "hi" and msg.model.startswith("claude-haiku")
    with pytest.raises(anthropic.PermissionDeniedError) as e:
        ask(world, k["key"], model="claude-sonnet-4-6")
    assert e.value.status_code == 403 and e.value.body["error"]["type"] == "permission_error"
    # Streaming obeys the same scope.
    with sdk(world, k["key"]).messages.stream(model="claude-haiku-4-5", max_tokens=20, messages=[{"role": "user", "content": "echo: yo"}]) as stream:
        assert stream.get_final_text() == "yo"
    with pytest.raises(anthropic.PermissionDeniedError):
        with sdk(world, k["key"]).messages.stream(model="claude-opus-4-1", max_tokens=20, messages=[{"role": "user", "content": "x"}]) as stream:
            stream.get_final_text()


def test_endpoint_scopes_are_enforced(world: World) -> None:
    k = new_key(world, allowed_endpoints=["messages"])
    ask(world, k["key"])
    with pytest.raises(anthropic.PermissionDeniedError):
        sdk(world, k["key"]).models.list()
    with pytest.raises(anthropic.PermissionDeniedError):
        sdk(world, k["key"]).messages.count_tokens(model="claude-haiku-4-5", messages=[{"role": "user", "content": "x"}])
    both = new_key(world, allowed_endpoints=["messages", "models"])
    assert len(sdk(world, both["key"]).models.list().data) > 0


def test_the_key_is_shown_once_and_stored_only_by_prefix(world: World) -> None:
    k = new_key(world)
    assert k["prefix"] and k["key"].startswith(k["prefix"])
    got = expect(world.admin.get(f"/keys/{k['id']}"), 200)
    assert "key" not in got and k["key"] not in str(got)
    listed = expect(world.admin.get("/keys"), 200)
    assert k["key"] not in str(listed)


def test_a_revoked_key_is_refused_at_once(world: World) -> None:
    k = new_key(world, allowed_models=["claude-haiku-*"])
    ask(world, k["key"])
    r = world.admin.post(f"/keys/{k['id']}/revoke")
    assert r.status_code in (200, 204), r.text
    # Immediately: the serving instance drops it from its cache at once.
    with pytest.raises(anthropic.AuthenticationError) as e:
        ask(world, k["key"])
    assert e.value.status_code == 401 and e.value.body["error"]["type"] == "authentication_error"
    got = expect(world.admin.get(f"/keys/{k['id']}"), 200)
    assert got["revoked_at"] is not None
    # A revoked key never comes back, not even by enabling it.
    r = world.admin.patch(f"/keys/{k['id']}", json={"enabled": True})
    assert r.status_code in (200, 409), r.text
    with pytest.raises(anthropic.AuthenticationError):
        ask(world, k["key"])


def test_disabling_and_reenabling_a_key_takes_effect_at_once(world: World) -> None:
    k = new_key(world)
    ask(world, k["key"])
    assert expect(world.admin.patch(f"/keys/{k['id']}", json={"enabled": False}), 200)["enabled"] is False
    with pytest.raises(anthropic.AuthenticationError):
        ask(world, k["key"])
    assert expect(world.admin.patch(f"/keys/{k['id']}", json={"enabled": True}), 200)["enabled"] is True
    ask(world, k["key"])


def test_narrowing_the_scope_takes_effect_at_once(world: World) -> None:
    k = new_key(world)
    ask(world, k["key"], model="claude-sonnet-4-6")
    expect(world.admin.patch(f"/keys/{k['id']}", json={"allowed_models": ["claude-haiku-*"]}), 200)
    with pytest.raises(anthropic.PermissionDeniedError):
        ask(world, k["key"], model="claude-sonnet-4-6")
    ask(world, k["key"], model="claude-haiku-4-5")


def test_an_expired_key_is_refused(world: World) -> None:
    soon = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=2)).isoformat().replace("+00:00", "Z")
    k = new_key(world, expires_at=soon)
    ask(world, k["key"])
    time.sleep(2.5)
    with pytest.raises(anthropic.AuthenticationError):
        ask(world, k["key"])
    # Shortening the expiry of a live key takes effect at once as well.
    k2 = new_key(world)
    ask(world, k2["key"])
    soon = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=2)).isoformat().replace("+00:00", "Z")
    expect(world.admin.patch(f"/keys/{k2['id']}", json={"expires_at": soon}), 200)
    ask(world, k2["key"])
    time.sleep(2.5)
    with pytest.raises(anthropic.AuthenticationError):
        ask(world, k2["key"])
    # An expiry in the past is refused outright (nothing to expire).
    past = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    assert_error(world.admin.post("/keys", json={"name": unique("past"), "team_id": world.team_a["id"], "expires_at": past}), 400)


def test_rotation_keeps_the_old_key_for_the_overlap_and_the_new_one_works_at_once(world: World) -> None:
    old = new_key(world, allowed_models=["claude-haiku-*"], allowed_endpoints=["messages"])
    ask(world, old["key"])
    before = time.time()
    new = expect(world.admin.post(f"/keys/{old['id']}/rotate", json={"overlap_seconds": 120}), 201)
    assert new["key"] != old["key"] and new["id"] != old["id"] and new["rotated_from"] == old["id"]
    assert new["allowed_models"] == ["claude-haiku-*"] and new["allowed_endpoints"] == ["messages"]
    assert new["team_id"] == old["team_id"] and new["user_id"] == old["user_id"]
    ask(world, new["key"])
    ask(world, old["key"])
    # The new key inherits the scope.
    with pytest.raises(anthropic.PermissionDeniedError):
        ask(world, new["key"], model="claude-sonnet-4-6")
    # The old key's expiry is the end of the overlap.
    old_now = expect(world.admin.get(f"/keys/{old['id']}"), 200)
    end = dt.datetime.fromisoformat(old_now["expires_at"].replace("Z", "+00:00")).timestamp()
    assert before + 110 <= end <= time.time() + 130, old_now


def test_rotation_without_overlap_retires_the_old_key_at_once(world: World) -> None:
    old = new_key(world)
    ask(world, old["key"])
    new = expect(world.admin.post(f"/keys/{old['id']}/rotate", json={"overlap_seconds": 0}), 201)
    ask(world, new["key"])
    with pytest.raises(anthropic.AuthenticationError):
        ask(world, old["key"])


def test_rotation_uses_the_default_overlap_of_a_day(world: World) -> None:
    old = new_key(world)
    before = time.time()
    new = expect(world.admin.post(f"/keys/{old['id']}/rotate", json={}), 201)
    ask(world, new["key"])
    ask(world, old["key"])
    end = dt.datetime.fromisoformat(expect(world.admin.get(f"/keys/{old['id']}"), 200)["expires_at"].replace("Z", "+00:00")).timestamp()
    assert before + 86400 - 10 <= end <= time.time() + 86400 + 10


def test_a_key_of_a_disabled_team_is_refused(world: World) -> None:
    """Doc: "A disabled team's keys and users should be refused" (store model); the admin API can
    disable a team with PATCH /teams/{id}."""
    team = world.create_team()
    k = world.create_key(team["id"])
    ask(world, k["key"])
    expect(world.admin.patch(f"/teams/{team['id']}", json={"disabled": True}), 200)
    with pytest.raises(anthropic.AuthenticationError):
        ask(world, k["key"])


def test_a_developer_key_is_usable_and_theirs(world: World) -> None:
    dev = world.people["developer"]
    k = expect(world.as_(dev).post("/keys", json={"name": unique("mine"), "allowed_models": ["claude-haiku-*"]}), 201)
    assert k["user_id"] == dev.id and k["team_id"] == world.team_a["id"]
    ask(world, k["key"])
    # Their own revocation works at once as well.
    r = world.as_(dev).post(f"/keys/{k['id']}/revoke")
    assert r.status_code in (200, 204), r.text
    with pytest.raises(anthropic.AuthenticationError):
        ask(world, k["key"])
    assert_error(world.as_(dev).post(f"/keys/{k['id']}/revoke"), 409, "conflict_error")
