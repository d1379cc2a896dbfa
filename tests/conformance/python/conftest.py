"""Fixtures for the Python conformance suite.

One `rampart demo` process (simulator + gateway) is started per test session on port 0 and stopped
with SIGTERM at the end; its exit code must be 0. API-surface tests take the `target` fixture and run
twice: against the simulator directly (`sim`) and through the gateway (`gateway`), with the official
`anthropic` SDK. Gateway-only tests spawn their own `rampart serve` / `rampart sim` processes.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import anthropic
import httpx
import pytest

ROOT = Path(__file__).resolve().parents[3]
MODEL = os.environ.get("RAMPART_TEST_MODEL", "claude-sonnet-4-6")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0


def rampart_bin() -> str:
    path = os.environ.get("RAMPART_BIN") or str(ROOT / "target" / "debug" / "rampart")
    if not os.access(path, os.X_OK):
        pytest.fail(f"rampart binary not found at {path}; run `cargo build --bins` or set RAMPART_BIN")
    return path


def wait_until(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll `predicate` until it returns a truthy value; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


class RampartProcess:
    """A `rampart` child process whose stdout lines are collected by a reader thread."""

    def __init__(self, args: list[str], *, env: dict[str, str] | None = None, name: str = "rampart") -> None:
        self.name = name
        self.args = [rampart_bin(), *args]
        self.stderr_file = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".stderr", delete=False)
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "RAMPART_"))}
        full_env.setdefault("RUST_BACKTRACE", "1")
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.stderr_file,
            env=full_env,
            text=True,
            bufsize=1,
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def stderr_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(Path(self.stderr_file.name).read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_for_line(self, pattern: str, *, timeout: float = START_TIMEOUT_S) -> re.Match[str]:
        """Wait for a stdout line matching `pattern` (regex, searched) and return the match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    m = rx.search(line)
                    if m:
                        return m
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    break
                self._cond.wait(min(remaining, 0.2))
        pytest.fail(
            f"{self.name}: no stdout line matching {pattern!r} within {timeout}s "
            f"(exit={self.proc.poll()}).\nargs: {self.args}\nstdout: {self.lines}\nstderr tail:\n{self.stderr_tail()}"
        )

    def listening_url(self) -> str:
        return self.wait_for_line(r"listening on (http://\S+)").group(1).rstrip("/")

    def terminate(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, wait, and return the exit code (SIGKILL and fail if it does not exit in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"{self.name} did not exit within {timeout}s of SIGTERM.\nstderr tail:\n{self.stderr_tail()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class SimControl:
    """The simulator's `/_sim/*` control plane (no key needed)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=10)

    def fault(self, kind: str, count: int = 1, **params: Any) -> None:
        body = {"kind": kind, "count": count, **params}
        r = self.http.post("/_sim/faults", json=body)
        assert r.status_code < 300, f"POST /_sim/faults {body} -> {r.status_code} {r.text}"

    def clear_faults(self) -> None:
        r = self.http.delete("/_sim/faults")
        assert r.status_code < 300, f"DELETE /_sim/faults -> {r.status_code} {r.text}"

    def counters(self) -> dict[str, Any]:
        r = self.http.get("/_sim/counters")
        assert r.status_code == 200, r.text
        return r.json()

    def requests(self, limit: int = 20) -> list[dict[str, Any]]:
        r = self.http.get("/_sim/requests", params={"limit": limit})
        assert r.status_code == 200, r.text
        body = r.json()
        # Accept a bare list or {"data"|"requests": [...]}.
        if isinstance(body, dict):
            body = body.get("requests", body.get("data", body))
        assert isinstance(body, list), f"/_sim/requests returned {body!r}"
        return body

    def find_request(self, predicate: Callable[[dict[str, Any]], bool], limit: int = 100) -> dict[str, Any] | None:
        """The recorded request matching `predicate` (make it specific, e.g. a unique x-request-id)."""
        return next((req for req in self.requests(limit) if predicate(req)), None)


@dataclass
class Demo:
    proc: RampartProcess
    base_url: str
    api_key: str
    sim_url: str
    data_dir: str
    stdout: list[str] = field(default_factory=list)


@dataclass
class Target:
    name: str
    base_url: str
    api_key: str

    def client(self, **kw: Any) -> anthropic.Anthropic:
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 30.0)
        return anthropic.Anthropic(base_url=self.base_url, api_key=self.api_key, **kw)

    def http(self, **kw: Any) -> httpx.Client:
        kw.setdefault("timeout", 30.0)
        return httpx.Client(base_url=self.base_url, **kw)

    def headers(self, **extra: str) -> dict[str, str]:
        return {"x-api-key": self.api_key, "anthropic-version": "2023-06-01", "content-type": "application/json", **extra}


# The shared demo serves every suite, and many of them inject faults: with circuit breakers on,
# the failures of one test would open the breaker for the next. Breakers get their own processes
# in test_resilience.py; here they are off, and a long retry-after is not waited out (a test
# asking for retry_after=7 gets the 429 at once, with its header). Retries stay as they ship.
SHARED_DEMO_CONFIG = """
[upstream.breaker]
enabled = false
[upstream.retry]
max_retry_after_ms = 2000
"""


def start_demo(tokens_per_sec: float = 0, extra_args: list[str] | None = None, name: str = "demo") -> Demo:
    data_dir = tempfile.mkdtemp(prefix="rampart-demo-")
    extra_args = list(extra_args or [])
    if "--config" not in extra_args:
        config = Path(data_dir) / "demo-config.toml"
        config.write_text(SHARED_DEMO_CONFIG)
        extra_args += ["--config", str(config)]
    args = ["demo", "--listen", "127.0.0.1:0", "--data-dir", data_dir, "--sim-tokens-per-sec", str(tokens_per_sec), *extra_args]
    proc = RampartProcess(args, name=name)
    base = proc.wait_for_line(r"^\s*(?:export\s+)?ANTHROPIC_BASE_URL=(\S+)").group(1).strip("'\"")
    key = proc.wait_for_line(r"^\s*(?:export\s+)?ANTHROPIC_API_KEY=(\S+)").group(1).strip("'\"")
    sim = proc.wait_for_line(r"^\s*(?:export\s+)?RAMPART_SIM_URL=(\S+)").group(1).strip("'\"")
    return Demo(proc=proc, base_url=base.rstrip("/"), api_key=key, sim_url=sim.rstrip("/"), data_dir=data_dir)


@pytest.fixture(scope="session", autouse=True)
def run_temp_dir() -> Any:
    """Every temporary file and directory of this run (data directories, the processes' logs)
    goes into one directory that is removed at the end: a run leaves nothing behind in the
    system's temporary directory."""
    root = tempfile.mkdtemp(prefix="rampart-tests-")
    tempfile.tempdir = root
    yield root
    tempfile.tempdir = None
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def demo() -> Any:
    d = start_demo()
    yield d
    code = d.proc.terminate()
    assert code == 0, f"rampart demo exited with {code} after SIGTERM.\nstderr tail:\n{d.proc.stderr_tail()}"


@pytest.fixture(scope="session")
def sim(demo: Demo) -> SimControl:
    return SimControl(demo.sim_url)


@pytest.fixture(autouse=True)
def _clear_sim_faults(request: pytest.FixtureRequest) -> Any:
    """Faults are global simulator state: make sure none outlives the test that injected it."""
    yield
    if "sim" in request.fixturenames:
        request.getfixturevalue("sim").clear_faults()


@pytest.fixture(scope="session")
def sim_target(demo: Demo) -> Target:
    return Target("sim", demo.sim_url, "sk-ant-sim-any-key")


@pytest.fixture(scope="session")
def gateway_target(demo: Demo) -> Target:
    return Target("gateway", demo.base_url, demo.api_key)


@pytest.fixture(params=["sim", "gateway"])
def target(request: pytest.FixtureRequest, sim: SimControl) -> Target:
    return request.getfixturevalue(f"{request.param}_target")


@pytest.fixture
def client(target: Target) -> anthropic.Anthropic:
    return target.client()


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def text_of(message: Any) -> str:
    return "".join(b.text for b in message.content if b.type == "text")
