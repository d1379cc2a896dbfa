"""`rampart serve` with the admin plane refuses to start on unsafe settings, naming the setting to
fix and never echoing a secret (docs/admin-api.md, "Required secrets"): missing or weak JWT or
master keys, a master key that is not 32 bytes, `*` in admin.cors_origins, a non-loopback listen
address without admin.allow_insecure_remote. The `*_FILE` forms work like the variables."""

from __future__ import annotations

import base64
import os
import subprocess
import tempfile

import pytest
from admin_support import base_env, expect, keygen, run_init, strong_password, unique_email
from conftest import RampartProcess, rampart_bin


@pytest.fixture(scope="module")
def sim_url():
    sim = RampartProcess(["sim", "--listen", "127.0.0.1:0"], name="startup-sim")
    yield sim.listening_url()
    sim.terminate()


@pytest.fixture(scope="module")
def data_dir() -> str:
    d = tempfile.mkdtemp(prefix="rampart-startup-")
    run_init(d, unique_email("root"), strong_password())
    return d


def serve(data_dir: str, env: dict[str, str], *args: str, listen: str = "127.0.0.1:0") -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAMPART_", "ANTHROPIC_"))}
    try:
        return subprocess.run(
            [rampart_bin(), "serve", "--listen", listen, "--data-dir", data_dir, *args],
            env={**base, **env}, capture_output=True, text=True, timeout=20,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"rampart serve started (still running after 20 s) with env {sorted(env)}; stdout: {e.stdout!r}")


def refused(p: subprocess.CompletedProcess[str], setting: str, *secrets: str) -> None:
    out = p.stdout + p.stderr
    assert p.returncode != 0, f"started: {out[-2000:]}"
    assert "listening on" not in p.stdout, p.stdout
    assert setting in out, f"the message does not name {setting}: {out[-2000:]}"
    for s in secrets:
        if s:
            assert s not in out, "the refusal echoes the secret"


def env_for(sim_url: str, **overrides: str | None) -> dict[str, str]:
    env = base_env(sim_url, keygen(), keygen())
    for k, v in overrides.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def test_a_missing_jwt_secret_is_refused(sim_url: str, data_dir: str) -> None:
    refused(serve(data_dir, env_for(sim_url, RAMPART_JWT_SECRET=None)), "RAMPART_JWT_SECRET")


def test_a_missing_master_key_is_refused(sim_url: str, data_dir: str) -> None:
    refused(serve(data_dir, env_for(sim_url, RAMPART_MASTER_KEY=None)), "RAMPART_MASTER_KEY")


@pytest.mark.parametrize(
    "weak",
    ["0" * 64, "correct horse battery staple correct horse battery", base64.b64encode(b"\x07" * 48).decode(), base64.b64encode(os.urandom(16)).decode()],
    ids=["zeros-hex", "passphrase", "repeated-bytes", "16-bytes"],
)
def test_a_weak_jwt_secret_is_refused_without_echoing_it(sim_url: str, data_dir: str, weak: str) -> None:
    refused(serve(data_dir, env_for(sim_url, RAMPART_JWT_SECRET=weak)), "RAMPART_JWT_SECRET", weak)


def test_a_master_key_that_is_not_32_bytes_is_refused(sim_url: str, data_dir: str) -> None:
    long_key = base64.b64encode(os.urandom(48)).decode()
    refused(serve(data_dir, env_for(sim_url, RAMPART_MASTER_KEY=long_key)), "RAMPART_MASTER_KEY", long_key)


def test_a_wildcard_cors_origin_is_refused(sim_url: str, data_dir: str) -> None:
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write('[admin]\ncors_origins = ["*"]\n')
    cfg.close()
    refused(serve(data_dir, env_for(sim_url), "--config", cfg.name), "cors_origins")


def test_a_non_loopback_address_without_allow_insecure_remote_is_refused(sim_url: str, data_dir: str) -> None:
    refused(serve(data_dir, env_for(sim_url), listen="0.0.0.0:0"), "allow_insecure_remote")


def test_the_file_forms_of_the_secrets_work(sim_url: str, data_dir: str) -> None:
    d = tempfile.mkdtemp(prefix="rampart-secret-files-")
    email, password = unique_email("files"), strong_password()
    run_init(d, email, password)
    paths = {}
    for name in ("jwt", "master"):
        path = os.path.join(d, f"{name}.key")
        with open(path, "w") as f:
            f.write(keygen() + "\n")
        os.chmod(path, 0o600)
        paths[name] = path
    env = env_for(sim_url, RAMPART_JWT_SECRET=None, RAMPART_MASTER_KEY=None)
    env.update(RAMPART_JWT_SECRET_FILE=paths["jwt"], RAMPART_MASTER_KEY_FILE=paths["master"])
    proc = RampartProcess(["serve", "--listen", "127.0.0.1:0", "--data-dir", d], env=env, name="serve-files")
    try:
        url = proc.listening_url()
        import httpx

        r = httpx.post(f"{url}/admin/v1/auth/login", json={"email": email, "password": password}, timeout=10)
        expect(r, 200)
    finally:
        assert proc.terminate() == 0, proc.stderr_tail()
    # Both forms at once is ambiguous: refused.
    both = env_for(sim_url)
    both["RAMPART_JWT_SECRET_FILE"] = paths["jwt"]
    refused(serve(d, both), "RAMPART_JWT_SECRET")
