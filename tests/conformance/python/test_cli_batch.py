"""`rampart batch submit|status|list|cancel|results` (built on rampart-client) against `rampart demo`:
a JSONL file is checked line by line before anything is sent (every bad line named, nothing
submitted), `--wait` reports progress and the final counts, results are copied to a file, and
failures print the typed error and exit 1, never the key."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import anthropic
from conftest import MODEL, Demo, rampart_bin, unique

from test_cli_ask import env_for, failed, ok


def batch(demo: Demo, *args: str, key: str | None = None, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [rampart_bin(), "batch", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env_for(demo, key),
    )


def line(custom_id: str, text: str, **params: object) -> str:
    body = {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": f"echo: {text}"}], **params}
    return json.dumps({"custom_id": custom_id, "params": body})


def write(tmp_path: Path, lines: list[str]) -> str:
    path = tmp_path / f"{unique('requests')}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def newest_batch_id(demo: Demo) -> str | None:
    client = anthropic.Anthropic(base_url=demo.base_url, api_key=demo.api_key, max_retries=0)
    page = client.messages.batches.list(limit=1)
    return page.data[0].id if page.data else None


def test_submit_wait_then_results_to_a_file(demo: Demo, tmp_path: Path) -> None:
    requests = write(tmp_path, [line("first", "one"), "", line("second", "two"), line("third", "three")])
    result = batch(demo, "submit", requests, "--wait", "--max-poll-secs", "1")
    out = ok(result).splitlines()
    batch_id = out[0]
    assert re.fullmatch(r"msgbatch_\w+", batch_id), out
    assert out[-1] == f"{batch_id} ended: 3 request(s): succeeded 3, errored 0, canceled 0, expired 0"
    # Not a terminal: plain progress lines with the counts by state, a rate and an ETA.
    progress = [ln for ln in result.stderr.splitlines() if ln.startswith(f"{batch_id}: ")]
    assert progress, result.stderr
    assert re.search(r"0/3 done · in_progress · processing 3 · succeeded 0 · errored 0 · canceled 0 · expired 0 · [\d.]+/s · ETA", progress[0]), progress
    assert re.search(r"3/3 done · ended · processing 0 · succeeded 3 .* · done$", progress[-1]), progress
    assert "\x1b[" not in result.stderr, "no terminal escapes when stderr is not a terminal"

    target = tmp_path / "results.jsonl"
    err = ok_err(batch(demo, "results", batch_id, "-o", str(target)))
    assert f"wrote 3 result(s) to {target}" in err
    lines = [json.loads(ln) for ln in target.read_text().splitlines()]
    by_id = {r["custom_id"]: r["result"] for r in lines}
    assert set(by_id) == {"first", "second", "third"}
    assert all(r["type"] == "succeeded" for r in by_id.values())
    assert by_id["second"]["message"]["content"][0]["text"] == "two"
    assert not (tmp_path / "results.jsonl.partial").exists()
    # To standard output as well, the same lines.
    assert sorted(ok(batch(demo, "results", batch_id)).splitlines()) == sorted(target.read_text().splitlines())


def ok_err(result: subprocess.CompletedProcess[str]) -> str:
    ok(result)
    return result.stderr


def test_malformed_lines_are_all_reported_and_nothing_is_submitted(demo: Demo, tmp_path: Path) -> None:
    requests = write(
        tmp_path,
        [
            line("good-1", "fine"),
            '{"custom_id": "broken", "params": {',
            line("good-1", "again"),
            line("bad id!", "x"),
            json.dumps({"custom_id": "no-max", "params": {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}}),
            line("streams", "x", stream=True),
            line("robot", "x", messages=[{"role": "robot", "content": "x"}]),
            json.dumps({"custom_id": "text-params", "params": "hello"}),
            line("good-2", "fine"),
        ],
    )
    before = newest_batch_id(demo)
    err = failed(batch(demo, "submit", requests, "--wait"))
    assert f"{requests}: 7 invalid line(s); nothing was submitted" in err
    reported = {int(m.group(1)): m.group(2) for m in re.finditer(rf"^  {re.escape(requests)}:(\d+): (.*)$", err, re.M)}
    assert sorted(reported) == [2, 3, 4, 5, 6, 7, 8], err
    assert reported[2].startswith("not valid JSON")
    assert 'custom_id "good-1" is already used on line 1' in reported[3]
    assert "^[a-zA-Z0-9_-]{1,64}$" in reported[4]
    assert "missing field `max_tokens`" in reported[5]
    assert "params.stream: batch requests cannot stream" in reported[6]
    assert "params.messages[0].role" in reported[7]
    assert "params: must be an object" in reported[8]
    assert newest_batch_id(demo) == before, "a file with bad lines must submit nothing"
    # The file is checked before the key: a bad file is reported even without one.
    assert "nothing was submitted" in failed(batch(demo, "submit", requests, key=""))
    empty = write(tmp_path, ["", "  "])
    err = failed(batch(demo, "submit", empty))
    assert "no requests" in err
    assert f"{empty}: nothing was submitted" in err and "invalid line" not in err, err


def test_submit_status_list_and_cancel(demo: Demo, tmp_path: Path) -> None:
    requests = write(tmp_path, [line(f"item-{i}", f"n{i}") for i in range(4)])
    batch_id = ok(batch(demo, "submit", requests)).strip()
    assert re.fullmatch(r"msgbatch_\w+", batch_id)

    shown = ok(batch(demo, "status", batch_id))
    assert re.search(rf"^id\s+{batch_id}$", shown, re.M), shown
    assert re.search(r"^status\s+(in_progress|ended)$", shown, re.M), shown
    assert re.search(r"^requests\s+4 \(", shown, re.M), shown
    as_json = json.loads(ok(batch(demo, "status", batch_id, "--json")))
    assert as_json["id"] == batch_id and as_json["type"] == "message_batch"

    listed = ok(batch(demo, "list", "--limit", "5"))
    assert listed.splitlines()[0].split()[:3] == ["ID", "STATUS", "CREATED"]
    assert any(ln.startswith(batch_id) for ln in listed.splitlines()[1:]), listed
    page = json.loads(ok(batch(demo, "list", "--json", "--limit", "5")))
    assert batch_id in [b["id"] for b in page["data"]]

    canceled = ok(batch(demo, "cancel", batch_id))
    assert re.search(r"^status\s+(canceling|ended)$", canceled, re.M), canceled
    assert not re.search(r"^cancel_initiated_at\s+-$", canceled, re.M), canceled
    ended = ok(batch(demo, "submit", write(tmp_path, [line("z", "z")]), "--wait"))  # the queue still works
    assert "succeeded 1" in ended
    final = json.loads(ok(batch(demo, "status", batch_id, "--json")))
    if final["processing_status"] == "ended":
        assert final["request_counts"]["canceled"] >= 1


def test_errors_are_printed_clearly_and_never_the_key(demo: Demo, tmp_path: Path) -> None:
    wrong = "rk_demo_not-the-right-key"
    for args in (["status", "msgbatch_01abc"], ["list"], ["cancel", "msgbatch_01abc"], ["results", "msgbatch_01abc"]):
        err = failed(batch(demo, *args, key=wrong))
        assert err.startswith(f"rampart batch {args[0]}: authentication_error (401): "), err
        assert wrong not in err
    err = failed(batch(demo, "submit", write(tmp_path, [line("a", "a")]), key=wrong))
    assert err.startswith("rampart batch submit: authentication_error (401)"), err

    unknown = "msgbatch_01doesnotexist"
    for verb in ("status", "cancel", "results"):
        err = failed(batch(demo, verb, unknown))
        assert err.startswith(f"rampart batch {verb}: not_found_error (404): "), err
        assert "[request-id " in err
    target = tmp_path / "never.jsonl"
    failed(batch(demo, "results", unknown, "-o", str(target)))
    assert not target.exists() and not Path(str(target) + ".partial").exists()

    assert "no API key" in failed(batch(demo, "list", key=""))
    assert "connection error" in failed(batch(demo, "list", "--base-url", "http://127.0.0.1:9", "--max-retries", "0"))
    missing = failed(batch(demo, "submit", str(tmp_path / "absent.jsonl")))
    assert "cannot read" in missing and "absent.jsonl" in missing
    assert os.path.exists(rampart_bin())


def test_wait_draws_a_progress_bar_on_a_terminal(demo: Demo, tmp_path: Path) -> None:
    import pty
    import select

    requests = write(tmp_path, [line(f"tty-{i}", f"t{i}") for i in range(3)])
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [rampart_bin(), "batch", "submit", requests, "--wait", "--max-poll-secs", "1"],
        stdout=subprocess.PIPE, stderr=slave, env=env_for(demo),
    )
    os.close(slave)
    drawn = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    os.close(master)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, drawn.decode(errors="replace")
    assert out.decode().splitlines()[-1].endswith("ended: 3 request(s): succeeded 3, errored 0, canceled 0, expired 0")
    text = drawn.decode(errors="replace")
    # The bar redraws in place (carriage returns / escape sequences), with counts, rate and ETA.
    assert "\r" in text or "\x1b[" in text, text
    assert "processing 3" in text and "succeeded 3" in text and "/s" in text, text
    assert "3/3" in text, text
    assert not re.search(r"msgbatch_\w+: \d+/3 done", text), "no plain progress lines on a terminal"
