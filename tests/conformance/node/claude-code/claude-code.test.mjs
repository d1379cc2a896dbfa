// Claude Code (the real CLI, installed from npm) runs a one-shot prompt through the Rampart gateway.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startDemo } from '../test/helpers.mjs';

const CLAUDE = resolve(dirname(fileURLToPath(import.meta.url)), '..', 'node_modules', '.bin', 'claude');
const TIMEOUT_MS = 120_000;

/** Run `claude` with a clean environment; resolve with { code, stdout, stderr }. */
function runClaude(args, env, cwd) {
  return new Promise((res, reject) => {
    const child = spawn(CLAUDE, args, { env, cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`claude timed out after ${TIMEOUT_MS} ms\nstdout: ${stdout}\nstderr: ${stderr}`));
    }, TIMEOUT_MS);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      res({ code, stdout, stderr });
    });
  });
}

describe('Claude Code through the gateway', () => {
  let demo;
  before(async () => {
    assert.ok(existsSync(CLAUDE), `Claude Code is not installed at ${CLAUDE} (run npm ci in tests/conformance/node)`);
    demo = await startDemo();
  });
  after(async () => {
    if (!demo) return;
    const code = await demo.proc.terminate();
    assert.equal(code, 0, `rampart demo exited with ${code} after SIGTERM\n${demo.proc.stderrTail()}`);
  });

  /** Run `claude -p` through the demo gateway; return its parsed output and what the simulator saw. */
  async function ask(prompt, extraArgs = []) {
    const home = mkdtempSync(join(tmpdir(), 'claude-home-'));
    const work = mkdtempSync(join(tmpdir(), 'claude-work-'));
    const env = {
      PATH: process.env.PATH,
      HOME: home,
      XDG_CONFIG_HOME: join(home, '.config'),
      TMPDIR: tmpdir(),
      LANG: 'C.UTF-8',
      TERM: 'dumb',
      ANTHROPIC_BASE_URL: demo.baseURL,
      ANTHROPIC_API_KEY: demo.apiKey,
      CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: '1',
      DISABLE_TELEMETRY: '1',
      DISABLE_AUTOUPDATER: '1',
      DISABLE_ERROR_REPORTING: '1',
      DISABLE_BUG_COMMAND: '1',
      CI: 'true',
    };
    const before = (await demo.sim.counters()).routes.messages ?? 0;
    const { code, stdout, stderr } = await runClaude(['-p', prompt, '--output-format', 'json', ...extraArgs], env, work);
    const messageCalls = ((await demo.sim.counters()).routes.messages ?? 0) - before;
    const seen = messageCalls > 0 ? (await demo.sim.requests(50)).slice(-messageCalls) : []; // oldest first
    const detail = `exit ${code}\nstdout: ${stdout}\nstderr: ${stderr.slice(-4000)}\nsim saw: ${JSON.stringify(
      seen.map((r) => [r.method, r.path, r.query, r.model]),
    )}`;
    let out = null;
    try {
      out = JSON.parse(stdout);
    } catch {
      // reported by the assertions
    }
    return { code, out, messageCalls, seen, detail };
  }

  function assertAnswered({ code, out, messageCalls, seen, detail }) {
    assert.equal(code, 0, detail);
    assert.ok(out, `stdout is not JSON\n${detail}`);
    assert.equal(out.is_error, false, detail);
    assert.equal(out.result.trim(), 'hello from rampart', detail);
    assert.ok(messageCalls >= 1, `no /v1/messages call reached the simulator\n${detail}`);
    const viaGateway = seen.filter((r) => r.method === 'POST' && r.path === '/v1/messages' && /(^|&)beta=true(&|$)/.test(r.query ?? ''));
    assert.ok(viaGateway.length >= 1, `no POST /v1/messages?beta=true reached the simulator\n${detail}`);
    for (const r of viaGateway) {
      assert.notEqual(r.headers['x-api-key'], demo.apiKey, 'the client key must be replaced by the upstream key');
      assert.match(r.headers['user-agent'] ?? '', /^claude-cli\//, 'the request should come from Claude Code');
    }
  }

  it('answers a print-mode prompt with the simulated reply, through the gateway to the simulator', async () => {
    assertAnswered(await ask('echo: hello from rampart', ['--model', 'claude-opus-5']));
  });

  // Claude Code 2.1.332 defaults to `claude-opus-5-5` and sends a mid-conversation `role: "system"`
  // message; both must be accepted on the first try.
  it('works with Claude Code\'s default model', async () => {
    assertAnswered(await ask('echo: hello from rampart'));
  });

  it('gets its first request accepted, with no fallback retry', async () => {
    const run = await ask('echo: hello from rampart', ['--model', 'claude-opus-5']);
    assertAnswered(run);
    assert.equal(run.messageCalls, 1, run.detail);
  });
});
