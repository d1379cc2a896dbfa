"""`rampart ask` (built on rampart-client) against `rampart demo`: the answer on stdout, printed as it
arrives with --stream; on failure the typed error on stderr and exit 1, never the key."""

from __future__ import annotations

import os
import select
import subprocess
import time
from typing import Any

from conftest import Demo, SimControl, rampart_bin


def env_for(demo: Demo, key: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "RAMPART_"))}
    env["ANTHROPIC_BASE_URL"] = demo.base_url
    env["ANTHROPIC_API_KEY"] = demo.api_key if key is None else key
    env.update(extra)
    return env


def ask(demo: Demo, *args: str, key: str | None = None, stdin: str | None = None, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [rampart_bin(), "ask", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=env_for(demo, key, **extra),
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result.stdout


def failed(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, f"{result.args}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result.stderr


def test_the_answer_goes_to_stdout(demo: Demo) -> None:
    result = ask(demo, "echo: hello from rampart ask")
    assert ok(result) == "hello from rampart ask\n"
    assert result.stderr == ""


def test_streaming_prints_the_same_answer(demo: Demo) -> None:
    plain = ok(ask(demo, "tell me about harbours"))
    streamed = ok(ask(demo, "--stream", "tell me about harbours"))
    assert len(plain.split()) >= 20
    assert streamed == plain


def test_model_system_max_tokens_and_stdin(demo: Demo) -> None:
    assert ok(ask(demo, "-m", "claude-haiku-4-5", "echo: small model")) == "small model\n"
    # The reply depends on the system prompt (the simulator hashes it with the messages).
    bare = ok(ask(demo, "tell me about rivers"))
    poetic = ok(ask(demo, "--system", "Answer as a poet.", "tell me about rivers"))
    assert poetic != bare
    assert ok(ask(demo, "--system", "Answer as a poet.", "tell me about rivers")) == poetic
    cut = ask(demo, "--max-tokens", "3", "tell me a long story")
    assert len(ok(cut).split()) <= 3
    assert "max-tokens" in cut.stderr
    assert ok(ask(demo, "-", stdin="echo: piped in\n")) == "piped in\n"


def test_streamed_text_is_printed_before_the_stream_ends(demo: Demo, sim: SimControl) -> None:
    # The stream pauses for 4 s after its first few events: the text before the pause must be on
    # stdout while the command is still running.
    sim.fault("stall_stream", after_events=6, delay_ms=4000)
    proc = subprocess.Popen(
        [rampart_bin(), "ask", "--stream", "tell me about lighthouses"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env_for(demo),
    )
    assert proc.stdout is not None
    early = b""
    deadline = time.monotonic() + 3
    while not early.strip() and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            early += chunk
    still_running = proc.poll() is None
    rest, err = proc.communicate(timeout=30)
    assert early.strip(), f"nothing printed before the pause; stderr: {err!r}"
    assert still_running, "the command had already finished: the text was not streamed"
    assert proc.returncode == 0, err
    assert (early + rest).decode() == ok(ask(demo, "tell me about lighthouses"))


def test_failures_exit_1_with_the_typed_error_and_never_the_key(demo: Demo) -> None:
    wrong = "rk_demo_not-the-right-key"
    err = failed(ask(demo, "hi", key=wrong))
    assert err.startswith("rampart ask: authentication_error (401): ")
    assert "[request-id " in err
    err = failed(ask(demo, "--api-key", wrong, "hi"))
    assert "authentication_error (401)" in err and wrong not in err
    assert "not_found_error (404)" in failed(ask(demo, "-m", "claude-none-0", "hi"))
    assert "no API key" in failed(ask(demo, "hi", key=""))
    free = ask(demo, "--base-url", "http://127.0.0.1:9", "--max-retries", "0", "hi")
    assert "connection error" in failed(free)
    assert "must be a positive number" in failed(ask(demo, "--timeout-secs", "0", "hi"))


def test_overload_is_retried_before_the_answer(demo: Demo, sim: SimControl) -> None:
    sim.fault("status", count=2, status=529, retry_after=0)
    assert ok(ask(demo, "echo: third time")) == "third time\n"


def test_an_error_inside_the_stream_ends_with_its_type(demo: Demo, sim: SimControl) -> None:
    sim.fault("error_event", after_events=5)
    result = ask(demo, "--stream", "tell me about mountains")
    err = failed(result)
    assert "overloaded_error (in stream): Overloaded" in err, err
    assert result.stdout.endswith("\n")


def test_a_timeout_is_reported_as_one(demo: Demo, sim: SimControl) -> None:
    sim.fault("stall_headers", count=1, delay_ms=3000)
    result: Any = ask(demo, "--timeout-secs", "0.5", "--max-retries", "0", "echo: late")
    assert "timed out after 0.5 s" in failed(result)
