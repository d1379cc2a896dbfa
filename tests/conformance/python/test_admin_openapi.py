"""The machine-readable contract, `GET /openapi.json` (docs/admin-api.md: "The machine-readable
contract is the OpenAPI 3.1 document"): it describes exactly the documented operations, every
`$ref` in it resolves, the resource schemas have the documented fields and no secret ones, and
only login, refresh and setup are open without a token. (tests/schemathesis/run.py then checks
the server against it.)"""

from __future__ import annotations

from typing import Any, Iterator

import pytest
from admin_support import KEY_FIELDS, TEAM_FIELDS, UPSTREAM_FIELDS, USER_FIELDS, expect, start_admin_server

DOCUMENTED = {
    ("POST", "/admin/v1/auth/login"), ("POST", "/admin/v1/auth/refresh"), ("POST", "/admin/v1/auth/logout"),
    ("GET", "/admin/v1/auth/me"), ("POST", "/admin/v1/auth/revoke"), ("POST", "/admin/v1/setup"),
    ("GET", "/admin/v1/users"), ("POST", "/admin/v1/users"), ("GET", "/admin/v1/users/{id}"), ("PATCH", "/admin/v1/users/{id}"),
    ("GET", "/admin/v1/teams"), ("POST", "/admin/v1/teams"), ("GET", "/admin/v1/teams/{id}"), ("PATCH", "/admin/v1/teams/{id}"),
    ("GET", "/admin/v1/keys"), ("POST", "/admin/v1/keys"), ("GET", "/admin/v1/keys/{id}"), ("PATCH", "/admin/v1/keys/{id}"),
    ("POST", "/admin/v1/keys/{id}/revoke"), ("POST", "/admin/v1/keys/{id}/rotate"),
    ("GET", "/admin/v1/upstreams"), ("POST", "/admin/v1/upstreams"), ("GET", "/admin/v1/upstreams/{id}"), ("DELETE", "/admin/v1/upstreams/{id}"),
    ("GET", "/admin/v1/audit"), ("GET", "/admin/v1/audit/verify"),
    # Issue 4: limits and budgets per key and team, usage from the ledger.
    ("GET", "/admin/v1/keys/{id}/limits"), ("PUT", "/admin/v1/keys/{id}/limits"),
    ("GET", "/admin/v1/teams/{id}/limits"), ("PUT", "/admin/v1/teams/{id}/limits"),
    ("GET", "/admin/v1/usage"),
    # Issue 6: caching policies per key and team.
    ("GET", "/admin/v1/keys/{id}/cache-policy"), ("PUT", "/admin/v1/keys/{id}/cache-policy"),
    ("GET", "/admin/v1/teams/{id}/cache-policy"), ("PUT", "/admin/v1/teams/{id}/cache-policy"),
    # Issue 7: a team's webhook on batch end and its deliveries.
    ("GET", "/admin/v1/teams/{id}/webhook"), ("PUT", "/admin/v1/teams/{id}/webhook"), ("DELETE", "/admin/v1/teams/{id}/webhook"),
    ("GET", "/admin/v1/teams/{id}/webhook/deliveries"),
    # Issue 7: dead letters of the local batch queue.
    ("GET", "/admin/v1/dead-letters"), ("GET", "/admin/v1/dead-letters/{id}"), ("POST", "/admin/v1/dead-letters/{id}/replay"),
}
OPEN = {("POST", "/admin/v1/auth/login"), ("POST", "/admin/v1/auth/refresh"), ("POST", "/admin/v1/setup")}
METHODS = {"get", "post", "put", "patch", "delete", "head", "options", "trace"}


@pytest.fixture(scope="module")
def spec() -> Iterator[dict[str, Any]]:
    s = start_admin_server("admin-openapi", old_jwt_key=False)
    r = s.api().get("//openapi.json")
    doc = expect(r, 200)
    assert r.headers.get("content-type", "").startswith("application/json")
    yield doc
    s.stop()


def operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m.upper(), p): op for p, item in doc["paths"].items() for m, op in item.items() if m in METHODS}


def refs(node: Any, where: str = "#") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                yield where, v
            else:
                yield from refs(v, f"{where}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from refs(v, f"{where}/{i}")


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def test_it_is_openapi_3_1_with_exactly_the_documented_operations(spec: dict[str, Any]) -> None:
    assert str(spec["openapi"]).startswith("3.1"), spec["openapi"]
    got = set(operations(spec))
    assert got == DOCUMENTED, f"missing: {sorted(DOCUMENTED - got)}; undocumented: {sorted(got - DOCUMENTED)}"


def test_every_ref_resolves(spec: dict[str, Any]) -> None:
    dangling: dict[str, int] = {}
    for _where, ref in refs(spec):
        if resolve(spec, ref) is None:
            dangling[ref] = dangling.get(ref, 0) + 1
    assert not dangling, f"$refs that point nowhere (uses): {dangling}; components.schemas has {sorted(spec.get('components', {}).get('schemas', {}))}"


def test_only_login_refresh_and_setup_are_open(spec: dict[str, Any]) -> None:
    schemes = spec.get("components", {}).get("securitySchemes", {})
    bearer = [n for n, s in schemes.items() if s.get("type") == "http" and s.get("scheme", "").lower() == "bearer"]
    assert bearer, schemes
    default = spec.get("security")
    for key, op in operations(spec).items():
        security = op.get("security", default)
        is_open = not security or any(not req for req in security)
        assert is_open == (key in OPEN), f"{key}: security {security!r}"


def test_documented_success_and_error_statuses(spec: dict[str, Any]) -> None:
    success = {
        ("POST", "/admin/v1/users"): "201", ("POST", "/admin/v1/teams"): "201", ("POST", "/admin/v1/keys"): "201",
        ("POST", "/admin/v1/keys/{id}/rotate"): "201", ("POST", "/admin/v1/upstreams"): "201", ("POST", "/admin/v1/setup"): "201",
        ("POST", "/admin/v1/auth/logout"): "204", ("POST", "/admin/v1/auth/revoke"): "204",
        ("DELETE", "/admin/v1/teams/{id}/webhook"): "204",
    }
    for key, op in operations(spec).items():
        codes = set(op["responses"])
        assert success.get(key, "200") in codes or (key == ("DELETE", "/admin/v1/upstreams/{id}") and codes & {"200", "204"}), (key, codes)
        if key not in OPEN:
            assert "401" in codes, (key, codes)
        if key[0] in ("POST", "PATCH") and op.get("requestBody"):
            assert {"400", "413"} <= codes, (key, codes)
    assert "429" in operations(spec)[("POST", "/admin/v1/auth/login")]["responses"]


def properties(spec: dict[str, Any], name: str) -> set[str]:
    schema = spec["components"]["schemas"][name]
    props = set(schema.get("properties", {}))
    for part in schema.get("allOf", []):
        target = resolve(spec, part["$ref"]) if "$ref" in part else part
        props |= set((target or {}).get("properties", {}))
    return props


def test_resource_schemas_have_the_documented_fields_and_nothing_secret(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    by_fields = {frozenset(properties(spec, n)): n for n in schemas}
    for fields in (USER_FIELDS, TEAM_FIELDS, KEY_FIELDS, UPSTREAM_FIELDS):
        assert frozenset(fields) in by_fields, f"no schema with exactly {sorted(fields)}"
    created = [n for n in schemas if properties(spec, n) == KEY_FIELDS | {"key"}]
    assert created, "no schema for a created key (ApiKey + key)"
    for name in schemas:
        leaked = properties(spec, name) & {"password_hash", "key_hash", "api_key_ciphertext", "ciphertext", "hash_secret"}
        assert not leaked, (name, leaked)
