#!/usr/bin/env python3
"""What the caching levers really save: a workload replayed through Rampart against the simulator
with each lever off and on, reporting upstream calls (the simulator's counters), tokens by tier and
cost (Rampart's ledger, through GET /admin/v1/usage), in one run.

    python3 bench/cache_savings.py                 # default workload, markdown table on stdout
    python3 bench/cache_savings.py --chats 12 --turns 6 --repeats 40 --bulk 40

Workload (the same for every configuration, generated from a fixed seed):
- multi-turn chats: each with a long system prompt (~6k tokens) and tools, several user turns,
  each turn sending the whole conversation so far (what chat UIs and agents do);
- repeated questions: a handful of FAQ prompts asked again and again by the same team;
- bulk jobs: distinct one-off prompts (no lever can help; the control group).

Configurations: off; response cache; prompt-cache breakpoints; both. Each gets a fresh gateway and
data directory, and the simulator's counters and prompt cache are reset in between.

Needs: the release binary (cargo build --release), the venv from scripts/test.sh (anthropic, httpx).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anthropic
import httpx

ROOT = Path(__file__).resolve().parents[1]
BIN = os.environ.get("RAMPART_BIN", str(ROOT / "target" / "release" / "rampart"))
MODEL = "claude-sonnet-4-6"
ADMIN_EMAIL = "bench@example.com"
ADMIN_PASSWORD = "quartz-lantern-harbor-417"

CONFIGS = {
    "off": {},
    "response cache": {"RAMPART_CACHE__RESPONSE_ENABLED": "true"},
    "prompt-cache breakpoints": {"RAMPART_CACHE__BREAKPOINTS_ENABLED": "true"},
    "both": {"RAMPART_CACHE__RESPONSE_ENABLED": "true", "RAMPART_CACHE__BREAKPOINTS_ENABLED": "true"},
}


def start(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAMPART_", "ANTHROPIC_"))}
    proc = subprocess.Popen([BIN, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**base, **env})
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    for line in proc.stdout:
        m = re.search(r"listening on (http://\S+)", line)
        if m:
            return proc, m.group(1)
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise SystemExit(f"{args[0]} did not start")


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def words(rng: random.Random, n: int) -> str:
    vocab = "ledger settlement invoice clearing netting exposure collateral margin custody payment".split()
    return " ".join(rng.choice(vocab) for _ in range(n))


def workload(seed: int, chats: int, turns: int, repeats: int, bulk: int) -> list[dict]:
    """The requests, in order, as keyword arguments for messages.create."""
    rng = random.Random(seed)
    system = "You are the payments operations assistant. Policies follow.\n" + words(rng, 4500)
    tools = [
        {"name": f"tool_{i}", "description": words(rng, 120), "input_schema": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}}
        for i in range(4)
    ]
    out: list[dict] = []
    for c in range(chats):
        history: list[dict] = []
        for t in range(turns):
            history.append({"role": "user", "content": f"chat {c} turn {t}: {words(rng, 60)}"})
            out.append({"kind": "chat", "chat": c, "params": {"model": MODEL, "max_tokens": 200, "system": system, "tools": tools, "messages": list(history)}})
            # The assistant's answer is appended by the runner (it comes from the response).
    faqs = [f"FAQ {i}: {words(rng, 80)}" for i in range(5)]
    for r in range(repeats):
        out.append({"kind": "repeat", "params": {"model": MODEL, "max_tokens": 200, "messages": [{"role": "user", "content": faqs[r % len(faqs)]}]}})
    for b in range(bulk):
        out.append({"kind": "bulk", "params": {"model": MODEL, "max_tokens": 200, "messages": [{"role": "user", "content": f"job {b}: {words(rng, 100)}"}]}})
    return out


def run_config(name: str, extra_env: dict[str, str], sim_url: str, requests: list[dict]) -> dict:
    data_dir = tempfile.mkdtemp(prefix="rampart-savings-")
    keygen = lambda: subprocess.run([BIN, "keygen"], capture_output=True, text=True, check=True).stdout.strip()  # noqa: E731
    env = {
        "RAMPART_UPSTREAM__BASE_URL": sim_url,
        "RAMPART_UPSTREAM_API_KEY": "sk-ant-bench-0123456789abcdef",
        "RAMPART_JWT_SECRET": keygen(),
        "RAMPART_MASTER_KEY": keygen(),
        "RAMPART_ADMIN_EMAIL": ADMIN_EMAIL,
        "RAMPART_ADMIN_PASSWORD": ADMIN_PASSWORD,
        **extra_env,
    }
    key = subprocess.run([BIN, "keys", "create", "--name", "bench", "--team", "payments", "--create-team", "--data-dir", data_dir],
                         capture_output=True, text=True, check=True, env={**os.environ, **env}).stdout.strip().splitlines()[-1]
    httpx.post(f"{sim_url}/_sim/reset", timeout=10).raise_for_status()
    proc, url = start(["serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir], env)
    try:
        client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
        answers: dict[int, list[dict]] = {}
        for req in requests:
            params = json.loads(json.dumps(req["params"]))
            if req["kind"] == "chat":
                # Rebuild the conversation with this run's own earlier answers.
                prior = answers.setdefault(req["chat"], [])
                msgs = []
                for i, m in enumerate(params["messages"]):
                    msgs.append(m)
                    if i < len(prior):
                        msgs.append(prior[i])
                params["messages"] = msgs
            resp = client.messages.create(**params)
            if req["kind"] == "chat":
                answers[req["chat"]].append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in resp.content]})
        time.sleep(1.5)  # let the ledger drain its batch
        counters = httpx.get(f"{sim_url}/_sim/counters", timeout=10).json()
        admin = httpx.Client(base_url=url, timeout=30)
        token = admin.post("/admin/v1/auth/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}).json()["access_token"]
        usage = admin.get("/admin/v1/usage", params={"group_by": "team"}, headers={"authorization": f"Bearer {token}"})
        usage.raise_for_status()
        return {"name": name, "requests": len(requests), "upstream_calls": counters.get("routes", {}).get("messages", counters.get("total")), "usage": usage.json()}
    finally:
        stop(proc)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chats", type=int, default=8)
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--bulk", type=int, default=30)
    ap.add_argument("--seed", type=int, default=20261126)
    ap.add_argument("--json", action="store_true", help="print raw results as JSON")
    a = ap.parse_args()
    requests = workload(a.seed, a.chats, a.turns, a.repeats, a.bulk)
    sim, sim_url = start(["sim", "--listen", "127.0.0.1:0"], {})
    try:
        results = [run_config(name, env, sim_url, requests) for name, env in CONFIGS.items()]
    finally:
        stop(sim)
    if a.json:
        print(json.dumps(results, indent=2))
        return
    print(render(results))


def totals(usage: dict) -> dict:
    rows = usage.get("data", [])
    keys = ["requests", "input_tokens", "output_tokens", "cache_write_5m_tokens", "cache_write_1h_tokens", "cache_read_tokens", "cost_micro_usd", "saved_micro_usd"]
    return {k: sum(int(r.get(k, 0) or 0) for r in rows) for k in keys}


def render(results: list[dict]) -> str:
    base = totals(results[0]["usage"])
    lines = [
        f"Workload: {results[0]['requests']} requests (multi-turn chats with a long system prompt and tools, repeated questions, bulk jobs), simulator as upstream.",
        "",
        "| levers | upstream calls | input | cache write 5m | cache write 1h | cache read | output | cost (USD) | vs off | saved per ledger (USD) | cost + saved vs off |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        t = totals(r["usage"])
        ratio = t["cost_micro_usd"] / base["cost_micro_usd"] if base["cost_micro_usd"] else 0
        # The ledger's own account of the savings: cost + saved should come back to about the
        # cost with the levers off (not exactly: cached answers differ in length, and chats
        # continue from their own answers).
        whole = (t["cost_micro_usd"] + t["saved_micro_usd"]) / base["cost_micro_usd"] if base["cost_micro_usd"] else 0
        lines.append(
            f"| {r['name']} | {r['upstream_calls']} | {t['input_tokens']:,} | {t['cache_write_5m_tokens']:,} | {t['cache_write_1h_tokens']:,} | "
            f"{t['cache_read_tokens']:,} | {t['output_tokens']:,} | {t['cost_micro_usd'] / 1e6:.4f} | {ratio:.2f} | "
            f"{t['saved_micro_usd'] / 1e6:.4f} | {whole:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
