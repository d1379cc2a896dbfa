"""Forged and tampered admin access tokens (docs/admin-api.md: "Only HS256 with a known `kid` is
accepted", `iss`/`aud`/`exp`/`nbf`/`iat`/`sub`/`jti` required and checked, revoked `jti` refused).

The fixture knows the server's JWT key material (it set `RAMPART_JWT_SECRET`: a bare current key,
whose kid is `k-` + 8 hex of its SHA-256, and a verify-only `old:` key), so the positive controls
forge *valid* tokens and get 200; every attack below is one change away from such a token and must
get 401 `authentication_error`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import jwt
import pytest
from admin_support import AdminServer, World, assert_error, build_world, describe, expect, module_server
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa


server = module_server("admin-jwt")


@pytest.fixture(scope="module")
def world(server: AdminServer) -> World:
    return build_world(server)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(obj: Any) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def claims_for(user_id: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "rampart",
        "aud": "rampart-admin",
        "sub": user_id,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": b64(uuid.uuid4().bytes),
        "role": "admin",
    }
    for k, v in overrides.items():
        if v is DROP:
            claims.pop(k, None)
        else:
            claims[k] = v
    return claims


DROP = object()


def hmac_token(header: dict[str, Any], claims: dict[str, Any], secret: bytes, digest: str = "sha256") -> str:
    """A JWS signed by hand (PyJWT would refuse some of the odd headers the attacks need)."""
    signing_input = f"{b64json(header)}.{b64json(claims)}".encode()
    return f"{signing_input.decode()}.{b64(hmac.new(secret, signing_input, getattr(hashlib, digest)).digest())}"


def forge(server: AdminServer, claims: dict[str, Any], *, key: bytes | None = None, kid: Any = ...) -> str:
    """An HS256 token over `claims`, by default with the server's current key and kid."""
    hdr: dict[str, Any] = {"alg": "HS256", "typ": "JWT", "kid": server.current_key.kid if kid is ... else kid}
    if kid is None:
        hdr.pop("kid")
    return hmac_token(hdr, claims, key if key is not None else server.current_key.secret)


def status_of(server: AdminServer, token: str) -> Any:
    return server.api(token).get("/auth/me")


def assert_refused(server: AdminServer, token: str) -> None:
    r = status_of(server, token)
    assert_error(r, 401, "authentication_error")
    # Refused on a mutating admin-only endpoint too, not just on /auth/me.
    assert_error(server.api(token).post("/teams", json={"name": f"forged-{uuid.uuid4().hex[:8]}"}), 401, "authentication_error")


# --- positive controls ------------------------------------------------------------------------


def test_a_token_forged_with_the_right_key_is_accepted(world: World) -> None:
    s = world.server
    admin = world.people["admin"]
    r = status_of(s, forge(s, claims_for(admin.id)))
    assert expect(r, 200)["id"] == admin.id
    # A mutating call with it works as well.
    expect(s.api(forge(s, claims_for(admin.id))).get("/users"), 200)


def test_a_token_signed_with_the_verify_only_rotated_key_is_accepted(world: World) -> None:
    s = world.server
    old = s.jwt_keys[1]
    assert old.kid == "old"
    r = status_of(s, forge(s, claims_for(world.people["admin"].id), key=old.secret, kid="old"))
    assert expect(r, 200)["id"] == world.people["admin"].id
    # ... but the server signs with the current key only.
    assert jwt.get_unverified_header(s.admin_login()["access_token"])["kid"] == s.current_key.kid


def test_the_role_claim_is_not_trusted_the_user_row_is(world: World) -> None:
    """Even a correctly signed token claiming `role: admin` for a viewer gets the viewer's rights."""
    s = world.server
    viewer = world.people["viewer"]
    token = forge(s, claims_for(viewer.id, role="admin", team=None))
    assert expect(status_of(s, token), 200)["role"] == "viewer"
    assert_error(s.api(token).get("/users"), 403, "permission_error")
    assert_error(s.api(token).post("/teams", json={"name": "escalated"}), 403, "permission_error")


# --- algorithm attacks ------------------------------------------------------------------------


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: str = "") -> str:
    return f"{b64json(header)}.{b64json(claims)}.{signature}"


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_is_refused(world: World, alg: str) -> None:
    s = world.server
    claims = claims_for(world.people["admin"].id)
    assert_refused(s, unsigned({"alg": alg, "typ": "JWT", "kid": s.current_key.kid}, claims))
    # With a signature segment left from a real token.
    real_sig = forge(s, claims).split(".")[2]
    assert_refused(s, unsigned({"alg": alg, "typ": "JWT", "kid": s.current_key.kid}, claims, real_sig))


def test_a_token_with_the_signature_stripped_is_refused(world: World) -> None:
    s = world.server
    head, body, _sig = forge(s, claims_for(world.people["admin"].id)).split(".")
    assert_refused(s, f"{head}.{body}.")
    assert_refused(s, f"{head}.{body}")


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_rs256_with_an_attacker_rsa_key_is_refused(world: World) -> None:
    s = world.server
    key = rsa_key()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    claims = claims_for(world.people["admin"].id)
    assert_refused(s, jwt.encode(claims, pem, algorithm="RS256", headers={"kid": s.current_key.kid}))
    # With the public key embedded in the header (jwk), as some libraries trust.
    pub = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    assert_refused(s, jwt.encode(claims, pem, algorithm="RS256", headers={"kid": s.current_key.kid, "jwk": pub}))


def test_es256_with_an_attacker_key_is_refused(world: World) -> None:
    s = world.server
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    assert_refused(s, jwt.encode(claims_for(world.people["admin"].id), pem, algorithm="ES256", headers={"kid": s.current_key.kid}))


def test_hs256_signed_with_a_public_key_pem_as_the_secret_is_refused(world: World) -> None:
    """The classic RS/HS confusion: the attacker HMACs with a public key as the secret."""
    s = world.server
    pub_pem = rsa_key().public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    claims = claims_for(world.people["admin"].id)
    assert_refused(s, hmac_token({"alg": "HS256", "typ": "JWT", "kid": s.current_key.kid}, claims, pub_pem))
    # And the reverse confusion: header says RS256, signature is an HMAC with the real secret.
    assert_refused(s, hmac_token({"alg": "RS256", "typ": "JWT", "kid": s.current_key.kid}, claims, s.current_key.secret))


@pytest.mark.parametrize("alg,digest", [("HS384", "sha384"), ("HS512", "sha512")])
def test_other_hmac_algorithms_with_the_right_secret_are_refused(world: World, alg: str, digest: str) -> None:
    s = world.server
    claims = claims_for(world.people["admin"].id)
    assert_refused(s, hmac_token({"alg": alg, "typ": "JWT", "kid": s.current_key.kid}, claims, s.current_key.secret, digest))


# --- kid ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kid",
    ["unknown-kid", "", "k-00000000", "../../../../dev/null", "' OR 1=1 --", "old\x00", 7, None],
    ids=["unknown", "empty", "other-fingerprint", "path-traversal", "sql", "nul", "number", "missing"],
)
def test_a_wrong_unknown_or_missing_kid_is_refused(world: World, kid: Any) -> None:
    s = world.server
    assert_refused(s, forge(s, claims_for(world.people["admin"].id), kid=kid))


def test_the_right_key_under_the_other_kid_is_refused(world: World) -> None:
    """The kid selects the key: the current key's signature under kid `old` does not verify."""
    s = world.server
    claims = claims_for(world.people["admin"].id)
    assert_refused(s, forge(s, claims, kid="old"))
    assert_refused(s, forge(s, claims, key=s.jwt_keys[1].secret, kid=s.current_key.kid))


def test_a_token_signed_with_another_random_secret_is_refused(world: World) -> None:
    s = world.server
    assert_refused(s, forge(s, claims_for(world.people["admin"].id), key=uuid.uuid4().bytes * 2))


# --- tampering --------------------------------------------------------------------------------


def tamper(token: str, **changes: Any) -> str:
    head, body, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims.update(changes)
    return f"{head}.{b64json(claims)}.{sig}"


def test_a_real_token_with_a_changed_payload_and_the_old_signature_is_refused(world: World) -> None:
    s = world.server
    viewer = world.people["viewer"]
    token = viewer.token
    expect(status_of(s, token), 200)
    assert_refused(s, tamper(token, role="admin"))
    assert_refused(s, tamper(token, sub=world.people["admin"].id))
    assert_refused(s, tamper(token, exp=int(time.time()) + 10 * 365 * 86400))
    # Flipping one signature character breaks it as well.
    head, body, sig = token.split(".")
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    assert_refused(s, f"{head}.{body}.{flipped}")


# --- claims -----------------------------------------------------------------------------------


def test_an_expired_token_is_refused(world: World) -> None:
    s = world.server
    now = int(time.time())
    assert_refused(s, forge(s, claims_for(world.people["admin"].id, iat=now - 1200, nbf=now - 1200, exp=now - 60)))


def test_a_token_not_yet_valid_is_refused(world: World) -> None:
    s = world.server
    now = int(time.time())
    assert_refused(s, forge(s, claims_for(world.people["admin"].id, nbf=now + 300, iat=now, exp=now + 900)))


@pytest.mark.parametrize("aud", ["rampart", "rampart-admin-x", "", ["other"]])
def test_a_wrong_audience_is_refused(world: World, aud: Any) -> None:
    s = world.server
    assert_refused(s, forge(s, claims_for(world.people["admin"].id, aud=aud)))


@pytest.mark.parametrize("iss", ["rampart-admin", "evil", "", "Rampart"])
def test_a_wrong_issuer_is_refused(world: World, iss: str) -> None:
    s = world.server
    assert_refused(s, forge(s, claims_for(world.people["admin"].id, iss=iss)))


@pytest.mark.parametrize("claim", ["jti", "exp", "sub", "iat", "nbf", "iss", "aud"])
def test_a_token_missing_a_required_claim_is_refused(world: World, claim: str) -> None:
    s = world.server
    assert_refused(s, forge(s, claims_for(world.people["admin"].id, **{claim: DROP})))


@pytest.mark.parametrize(
    "sub", ["00000000-0000-7000-8000-000000000000", "not-a-uuid", "", "' OR 1=1 --"], ids=["unknown-user", "not-uuid", "empty", "sql"]
)
def test_a_validly_signed_token_for_no_such_user_is_refused(world: World, sub: str) -> None:
    s = world.server
    assert_refused(s, forge(s, claims_for(sub)))


def test_a_validly_signed_token_for_a_disabled_user_is_refused(world: World) -> None:
    s = world.server
    person = world.create_user("developer", world.team_a["id"])
    expect(status_of(s, forge(s, claims_for(person.id))), 200)
    expect(world.admin.patch(f"/users/{person.id}", json={"disabled": True}), 200)
    assert_refused(s, forge(s, claims_for(person.id)))


# --- revocation ---------------------------------------------------------------------------------


def test_a_correctly_signed_token_with_a_logged_out_jti_is_refused(world: World) -> None:
    s = world.server
    pair = s.admin_login()
    token = pair["access_token"]
    claims = jwt.decode(token, options={"verify_signature": False})
    r = s.api(token).post("/auth/logout")
    assert r.status_code == 204, describe(r)
    time.sleep(1.0)
    assert_refused(s, token)
    # Re-signing the same claims (same jti) with the right key does not bring it back.
    assert_refused(s, forge(s, dict(claims)))
    # ... nor with a later expiry.
    assert_refused(s, forge(s, {**claims, "exp": int(time.time()) + 600}))
    # A fresh jti with the same subject is fine (the control).
    expect(status_of(s, forge(s, claims_for(claims["sub"]))), 200)


def test_a_jti_revoked_by_an_admin_is_refused_even_when_forged_anew(world: World) -> None:
    s = world.server
    jti = b64(uuid.uuid4().bytes)
    token = forge(s, claims_for(world.people["admin"].id, jti=jti))
    expect(status_of(s, token), 200)
    r = world.admin.post("/auth/revoke", json={"jti": jti})
    assert r.status_code == 204, describe(r)
    time.sleep(1.0)
    assert_refused(s, token)
    assert_refused(s, forge(s, claims_for(world.people["admin"].id, jti=jti)))


def test_refresh_tokens_are_not_access_tokens_and_are_single_use(world: World) -> None:
    s = world.server
    pair = s.admin_login()
    api = s.api()
    # A refresh token presented as a bearer token, and an access token presented as a refresh token.
    assert_refused(s, pair["refresh_token"])
    assert_error(api.post("/auth/refresh", json={"refresh_token": pair["access_token"]}), 401, "authentication_error")
    rotated = expect(api.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]}), 200)
    # Reuse of the spent refresh token: 401, and the rotated one dies with the family.
    assert_error(api.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]}), 401, "authentication_error")
    assert_error(api.post("/auth/refresh", json={"refresh_token": rotated["refresh_token"]}), 401, "authentication_error")


# --- malformed credentials --------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer a.b",
        "Bearer a.b.c.d",
        "Bearer ....",
        "Bearer eyJhbGciOiJIUzI1NiJ9.e30.",
        "Bearer " + "A" * 8000,
        "Token {token}",
        "Basic {token}",
        "{token}",
        "Bearer {token} extra",
    ],
    ids=["empty", "two-parts", "four-parts", "dots", "empty-claims", "huge", "token-scheme", "basic-scheme", "no-scheme", "trailing"],
)
def test_malformed_authorization_headers_are_401(world: World, header: str) -> None:
    s = world.server
    value = header.replace("{token}", world.people["admin"].token)
    r = s.api().get("/auth/me", headers={"authorization": value})
    assert_error(r, 401, "authentication_error")


def test_an_admin_token_in_x_api_key_is_not_accepted(world: World) -> None:
    r = world.server.api().get("/auth/me", headers={"x-api-key": world.people["admin"].token})
    assert_error(r, 401, "authentication_error")
