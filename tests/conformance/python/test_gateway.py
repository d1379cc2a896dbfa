"""Gateway-only behaviour: credentials, request ids, header and query forwarding, upstream failures,
client disconnects, health and metrics endpoints, `config check` and graceful shutdown."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import anthropic
import httpx
import pytest
from conftest import MODEL, RampartProcess, SimControl, Target, rampart_bin, start_demo, text_of, unique, wait_until

PROMPT = [{"role": "user", "content": "echo: through the gateway"}]
BODY = {"model": MODEL, "max_tokens": 50, "messages": PROMPT}
CLIENT_KEY = "sk-ant-client-" + "c" * 24
UPSTREAM_KEY = "sk-ant-upstream-" + "u" * 24


@dataclass
class Serve:
    proc: RampartProcess
    target: Target


def spawn_serve(upstream_url: str, **env: str) -> Serve:
    proc = RampartProcess(
        ["serve", "--listen", "127.0.0.1:0"],
        env={
            "RAMPART_UPSTREAM__BASE_URL": upstream_url,
            "RAMPART_UPSTREAM_API_KEY": UPSTREAM_KEY,
            "RAMPART_API_KEYS": f"{CLIENT_KEY},sk-ant-second-client-key",
            **env,
        },
        name="serve",
    )
    return Serve(proc, Target("serve", proc.listening_url(), CLIENT_KEY))


@pytest.fixture(scope="module")
def serve(demo) -> Serve:
    """A `rampart serve` with known client and upstream keys, in front of the demo's simulator."""
    s = spawn_serve(demo.sim_url)
    yield s
    assert s.proc.terminate() == 0, s.proc.stderr_tail()


def post(target: Target, path: str = "/v1/messages", *, headers: dict | None = None, body: dict | None = None, **kw) -> httpx.Response:
    with target.http() as http:
        return http.post(path, headers={**target.headers(), **(headers or {})}, json=body or BODY, **kw)


def seen_by_sim(sim: SimControl, request_id: str) -> dict:
    req = sim.find_request(lambda r: r.get("headers", {}).get("x-request-id") == request_id)
    assert req is not None, f"the simulator recorded no request with x-request-id {request_id}: {sim.requests(5)}"
    return req


def assert_envelope(r: httpx.Response, status: int, error_type: str) -> dict:
    assert r.status_code == status, f"{r.status_code}: {r.text[:500]}"
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == error_type, body
    assert body["error"]["message"]
    return body


# --- request ids ---------------------------------------------------------------------------------


def test_given_x_request_id_is_returned_and_forwarded_upstream(gateway_target: Target, sim: SimControl) -> None:
    rid = unique("rid")
    r = post(gateway_target, headers={"x-request-id": rid})
    assert r.status_code == 200, r.text
    assert r.headers.get("x-request-id") == rid
    assert seen_by_sim(sim, rid)["path"] == "/v1/messages"


def test_x_request_id_is_generated_when_absent_and_sent_upstream(gateway_target: Target, sim: SimControl) -> None:
    r = post(gateway_target)
    assert r.status_code == 200, r.text
    rid = r.headers.get("x-request-id")
    assert rid, "the gateway must return a generated x-request-id"
    seen_by_sim(sim, rid)
    assert post(gateway_target).headers.get("x-request-id") != rid


def test_upstream_request_id_header_is_kept(gateway_target: Target) -> None:
    r = post(gateway_target)
    assert r.headers.get("request-id", "").startswith("req_")
    msg = gateway_target.client().messages.create(**BODY)
    assert msg._request_id and msg._request_id.startswith("req_")


def test_error_responses_carry_the_request_id(gateway_target: Target) -> None:
    r = post(gateway_target, headers={"x-api-key": "sk-ant-wrong"})
    assert r.status_code == 401
    assert r.headers.get("x-request-id")


# --- credentials ---------------------------------------------------------------------------------


def test_client_key_is_replaced_by_the_upstream_key(serve: Serve, sim: SimControl) -> None:
    rid = unique("key")
    r = post(serve.target, headers={"x-request-id": rid})
    assert r.status_code == 200, r.text
    headers = seen_by_sim(sim, rid)["headers"]
    assert headers.get("x-api-key") == UPSTREAM_KEY
    assert CLIENT_KEY not in json.dumps(headers)
    assert "authorization" not in headers


def test_bearer_client_credential_is_replaced_by_the_upstream_key(serve: Serve, sim: SimControl) -> None:
    rid = unique("bearer")
    headers = {"authorization": f"Bearer {CLIENT_KEY}", "anthropic-version": "2023-06-01", "x-request-id": rid}
    with serve.target.http() as http:
        r = http.post("/v1/messages", headers=headers, json=BODY)
    assert r.status_code == 200, r.text
    seen = seen_by_sim(sim, rid)["headers"]
    assert seen.get("x-api-key") == UPSTREAM_KEY
    assert CLIENT_KEY not in json.dumps(seen)


def test_every_configured_client_key_is_accepted_and_others_are_not(serve: Serve) -> None:
    assert post(serve.target, headers={"x-api-key": "sk-ant-second-client-key"}).status_code == 200
    assert_envelope(post(serve.target, headers={"x-api-key": UPSTREAM_KEY}), 401, "authentication_error")
    with serve.target.http() as http:
        r = http.post("/v1/messages", headers={"anthropic-version": "2023-06-01"}, json=BODY)
    assert_envelope(r, 401, "authentication_error")


def test_the_demo_gateway_does_not_send_the_client_key_upstream(gateway_target: Target, sim: SimControl) -> None:
    rid = unique("demo-key")
    post(gateway_target, headers={"x-request-id": rid})
    seen = seen_by_sim(sim, rid)["headers"]
    assert seen.get("x-api-key"), "the gateway must authenticate upstream"
    assert gateway_target.api_key not in json.dumps(seen)


# --- forwarding ----------------------------------------------------------------------------------


def test_query_string_is_forwarded(gateway_target: Target, sim: SimControl) -> None:
    rid = unique("query")
    r = post(gateway_target, "/v1/messages?beta=true", headers={"x-request-id": rid})
    assert r.status_code == 200, r.text
    seen = seen_by_sim(sim, rid)
    assert seen["path"] == "/v1/messages"
    assert "beta=true" in (seen.get("query") or "")


def test_anthropic_headers_are_forwarded(gateway_target: Target, sim: SimControl) -> None:
    rid = unique("beta")
    beta = "prompt-caching-2024-07-31,extended-cache-ttl-2025-04-11"
    post(gateway_target, headers={"x-request-id": rid, "anthropic-beta": beta})
    seen = seen_by_sim(sim, rid)["headers"]
    assert seen.get("anthropic-beta") == beta
    assert seen.get("anthropic-version") == "2023-06-01"


def test_hop_by_hop_headers_are_not_forwarded(gateway_target: Target, sim: SimControl) -> None:
    rid = unique("hop")
    r = post(
        gateway_target,
        headers={
            "x-request-id": rid,
            "connection": "keep-alive, x-custom-hop",
            "x-custom-hop": "must-not-pass",
            "keep-alive": "timeout=5",
            "te": "trailers",
            "proxy-authorization": "Basic c2VjcmV0OnNlY3JldA==",
        },
    )
    assert r.status_code == 200, r.text
    seen = seen_by_sim(sim, rid)["headers"]
    for name in ("x-custom-hop", "keep-alive", "te", "proxy-authorization"):
        assert name not in seen, f"{name} was forwarded upstream: {seen}"
    assert "x-custom-hop" not in seen.get("connection", "")


def test_streaming_passes_through_as_sse(gateway_target: Target) -> None:
    with gateway_target.http() as http:
        with http.stream("POST", "/v1/messages", headers=gateway_target.headers(), json={**BODY, "stream": True}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            text = r.read().decode()
    assert text.index("event: message_start") < text.index("event: message_stop")


def test_count_tokens_models_and_batches_routes_are_forwarded(gateway_target: Target, sim: SimControl) -> None:
    before = sim.counters()["routes"]
    client = gateway_target.client()
    client.messages.count_tokens(model=MODEL, messages=PROMPT)
    client.models.list()
    # With a store (the demo has one) batches are Rampart's own; in the default upstream mode a
    # creation is still sent upstream (listing is answered from Rampart's store).
    client.messages.batches.create(
        requests=[{"custom_id": "fwd", "params": {"model": MODEL, "max_tokens": 5, "messages": PROMPT}}]
    )
    after = sim.counters()["routes"]
    for route in ("count_tokens", "models", "batches"):
        assert after.get(route, 0) > before.get(route, 0), (route, before, after)


# --- upstream failures -----------------------------------------------------------------------------


def test_unreachable_upstream_is_502_with_an_envelope() -> None:
    s = spawn_serve("http://127.0.0.1:1")
    try:
        r = post(s.target)
        body = assert_envelope(r, 502, "api_error")
        assert "127.0.0.1:1" not in body["error"]["message"], "internal addresses must not leak to clients"
        with pytest.raises(anthropic.InternalServerError) as exc:
            s.target.client().messages.create(**BODY)
        assert exc.value.status_code == 502
    finally:
        assert s.proc.terminate() == 0, s.proc.stderr_tail()


def test_upstream_header_timeout_is_504_timeout_error(demo, sim: SimControl) -> None:
    s = spawn_serve(demo.sim_url, RAMPART_UPSTREAM__HEADER_TIMEOUT_MS="500")
    try:
        sim.fault("stall_headers", count=10, delay_ms=5000)
        started = time.monotonic()
        r = post(s.target)
        elapsed = time.monotonic() - started
        assert_envelope(r, 504, "timeout_error")
        assert elapsed < 4.5, f"the gateway waited {elapsed:.1f}s for headers despite a 500 ms timeout"
        sim.clear_faults()
        assert post(s.target).status_code == 200
    finally:
        assert s.proc.terminate() == 0, s.proc.stderr_tail()


def _established_on_port(port: int) -> int:
    """Established TCP sockets whose local port is `port` (the server side of upstream connections)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                count += 1
    return count


def test_client_disconnect_mid_stream_cancels_the_upstream_request() -> None:
    slow_sim = RampartProcess(["sim", "--listen", "127.0.0.1:0", "--tokens-per-sec", "20"], name="slow-sim")
    sim_url = slow_sim.listening_url()
    sim_port = int(sim_url.rsplit(":", 1)[1])
    s = spawn_serve(sim_url)
    try:
        long_text = " ".join(f"w{i}" for i in range(600))  # ~30 s at 20 tokens/s
        body = {"model": MODEL, "max_tokens": 4000, "stream": True, "messages": [{"role": "user", "content": f"echo: {long_text}"}]}
        with httpx.Client(base_url=s.target.base_url, timeout=30) as http:
            with http.stream("POST", "/v1/messages", headers=s.target.headers(), json=body) as r:
                assert r.status_code == 200
                lines = r.iter_lines()
                got_delta = False
                for line in lines:
                    if line.startswith("event: content_block_delta"):
                        got_delta = True
                        break
                assert got_delta
                assert _established_on_port(sim_port) >= 1, "the upstream stream should be open while the client reads"
            # Leaving the block closes the client connection mid-stream.
        wait_until(lambda: _established_on_port(sim_port) == 0, timeout=10, what="the upstream connection to close")
    finally:
        assert s.proc.terminate() == 0, s.proc.stderr_tail()
        slow_sim.terminate()


# --- operational endpoints -------------------------------------------------------------------------


def test_livez_and_readyz_answer_200(gateway_target: Target) -> None:
    with gateway_target.http() as http:
        assert http.get("/livez").status_code == 200
        assert http.get("/readyz").status_code == 200


def test_metrics_are_prometheus_text_with_rampart_metrics(gateway_target: Target) -> None:
    post(gateway_target)
    with gateway_target.http() as http:
        r = http.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    samples = [l for l in r.text.splitlines() if l and not l.startswith("#")]
    assert any(l.startswith("rampart_") for l in samples), r.text[:2000]
    assert any(l.startswith("# TYPE rampart_") for l in r.text.splitlines())
    assert CLIENT_KEY not in r.text and gateway_target.api_key not in r.text


def connections_per_worker(target: Target) -> list[int]:
    """`rampart_http_connections{worker}` (the scrape's own connection included), in worker order."""
    with target.http() as http:
        text = http.get("/metrics").text
    open_by_worker = {}
    for line in text.splitlines():
        if line.startswith("rampart_http_connections{"):
            labels, value = line.rsplit(" ", 1)
            open_by_worker[int(labels.split('worker="')[1].split('"')[0])] = int(float(value))
    return [open_by_worker[w] for w in sorted(open_by_worker)]


def test_a_burst_of_connections_is_spread_over_the_workers(demo) -> None:
    """Connections opened at once are served by every request worker evenly, not all by the worker
    that woke first (it accepts the whole burst, then hands over what another worker should
    serve). Each connection carries a real request, and stays open until the count is read."""
    s = spawn_serve(demo.sim_url)
    try:
        workers = len(connections_per_worker(s.target))
        assert workers >= 1
        if workers < 2:
            pytest.skip("one CPU, one request worker: nothing to spread")
        host, port = s.target.base_url.removeprefix("http://").split(":")
        body = json.dumps(BODY).encode()
        request = (
            f"POST /v1/messages HTTP/1.1\r\nhost: {host}\r\nx-api-key: {CLIENT_KEY}\r\n"
            f"anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode() + body
        n = 8 * workers
        # All connected before any request: the burst waits in the listening socket together.
        socks = [socket.create_connection((host, int(port)), timeout=30) for _ in range(n)]
        try:
            for sock in socks:
                sock.sendall(request)
            for sock in socks:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = sock.recv(65536)
                    assert chunk, "connection closed before the response"
                    head += chunk
                assert head.startswith(b"HTTP/1.1 200"), head[:200]
            counts = connections_per_worker(s.target)
            # n connections and the scrape's, level up to one apart (the scrape may land either way).
            assert sum(counts) >= n, counts
            assert max(counts) - min(counts) <= 2, counts
        finally:
            for sock in socks:
                sock.close()
        # Closed connections leave the counts.
        wait_until(lambda: sum(connections_per_worker(s.target)) <= 1, timeout=10, what="connections counted down")
    finally:
        assert s.proc.terminate() == 0, s.proc.stderr_tail()


def test_config_check_reports_every_problem_and_exits_non_zero() -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(
            "[server]\n"
            'listen = "not an address"\n'
            "max_body_bytes = -5\n"
            "[upstream]\n"
            'base_url = "not a url"\n'
            "[auth]\n"
            'api_key_hashes = ["zz-not-hex"]\n'
            "[log]\n"
            'level = "loudest"\n'
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAMPART_", "ANTHROPIC_"))}
    p = subprocess.run([rampart_bin(), "config", "check", "--config", f.name], capture_output=True, text=True, timeout=30, env=env)
    out = p.stdout + p.stderr
    assert p.returncode != 0, out
    mentioned = [k for k in ("listen", "max_body_bytes", "base_url", "api_key_hashes", "level") if k in out]
    assert len(mentioned) >= 3, f"expected several problems reported at once, got:\n{out}"


def test_config_check_accepts_a_valid_config() -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write('[server]\nlisten = "127.0.0.1:0"\n[upstream]\nbase_url = "http://127.0.0.1:9"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAMPART_", "ANTHROPIC_"))}
    env.update({"RAMPART_UPSTREAM_API_KEY": UPSTREAM_KEY, "RAMPART_API_KEYS": CLIENT_KEY})
    p = subprocess.run([rampart_bin(), "config", "check", "--config", f.name], capture_output=True, text=True, timeout=30, env=env)
    assert p.returncode == 0, p.stdout + p.stderr


def test_sigterm_during_an_open_stream_lets_it_finish_and_exits_zero() -> None:
    d = start_demo(tokens_per_sec=40, name="demo-sigterm")
    try:
        words = [f"w{i}" for i in range(60)]  # ~1.5 s of streaming at 40 tokens/s
        client = anthropic.Anthropic(base_url=d.base_url, api_key=d.api_key, max_retries=0, timeout=30)
        got_first = threading.Event()
        result: dict = {}

        def consume() -> None:
            try:
                with client.messages.stream(model=MODEL, max_tokens=4000, messages=[{"role": "user", "content": "echo: " + " ".join(words)}]) as stream:
                    types = []
                    for event in stream:
                        types.append(event.type)
                        if event.type == "content_block_delta":
                            got_first.set()
                    result["types"] = types
                    result["final"] = stream.get_final_message()
            except Exception as err:  # reported by the assertions below
                result["error"] = err
            finally:
                got_first.set()

        t = threading.Thread(target=consume)
        t.start()
        assert got_first.wait(15), "no content arrived"
        d.proc.proc.send_signal(15)
        t.join(30)
        assert "error" not in result, f"the stream broke on SIGTERM: {result.get('error')!r}"
        assert result["types"][-1] == "message_stop"
        assert text_of(result["final"]) == " ".join(words)
        assert d.proc.proc.wait(20) == 0, d.proc.stderr_tail()
    finally:
        d.proc.kill()
