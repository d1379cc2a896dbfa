// Shared helpers for the node conformance suites: start `rampart demo` on port 0, read the lines it
// prints, talk to the simulator's /_sim control plane, and build SDK clients for both targets.
import { spawn } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { randomUUID } from 'node:crypto';
import Anthropic from '@anthropic-ai/sdk';

const HERE = dirname(fileURLToPath(import.meta.url));
export const ROOT = resolve(HERE, '..', '..', '..', '..');
export const MODEL = process.env.RAMPART_TEST_MODEL || 'claude-sonnet-4-6';
export const TARGETS = ['sim', 'gateway'];

export function rampartBin() {
  return process.env.RAMPART_BIN || join(ROOT, 'target', 'debug', 'rampart');
}

export function unique(prefix = 't') {
  return `${prefix}-${randomUUID().slice(0, 12)}`;
}

export function textOf(message) {
  return message.content.filter((b) => b.type === 'text').map((b) => b.text).join('');
}

/** Poll `fn` until it returns a truthy value; throw at the deadline. */
export async function waitUntil(fn, { timeoutMs = 10_000, intervalMs = 50, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    last = await fn();
    if (last) return last;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last value: ${JSON.stringify(last)}`);
}

function cleanEnv(extra = {}) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('ANTHROPIC_') && !k.startsWith('RAMPART_')) env[k] = v;
  }
  return { ...env, ...extra };
}

/** A `rampart` child process; stdout lines are collected, stderr goes to a temp file. */
export class RampartProcess {
  constructor(args, { env = {}, name = 'rampart' } = {}) {
    this.name = name;
    this.args = args;
    this.stderrPath = join(mkdtempSync(join(tmpdir(), `${name}-`)), 'stderr.log');
    const errFd = openSync(this.stderrPath, 'w');
    this.child = spawn(rampartBin(), args, { env: cleanEnv(env), stdio: ['ignore', 'pipe', errFd] });
    this.lines = [];
    this.waiters = [];
    this.exited = new Promise((res) => this.child.on('exit', (code, signal) => res({ code, signal })));
    createInterface({ input: this.child.stdout }).on('line', (line) => {
      this.lines.push(line);
      for (const w of this.waiters) w();
    });
    this.child.on('exit', () => {
      for (const w of this.waiters) w();
    });
  }

  stderrTail(n = 40) {
    try {
      return readFileSync(this.stderrPath, 'utf8').split('\n').slice(-n).join('\n');
    } catch {
      return '';
    }
  }

  /** Resolve with the regex match of the first stdout line matching `re`. */
  waitForLine(re, timeoutMs = 30_000) {
    return new Promise((resolveLine, reject) => {
      const check = () => {
        for (const line of this.lines) {
          const m = line.match(re);
          if (m) {
            cleanup();
            resolveLine(m);
            return;
          }
        }
        if (this.child.exitCode !== null || this.child.signalCode !== null) {
          cleanup();
          reject(new Error(`${this.name} exited before printing ${re}; stdout: ${JSON.stringify(this.lines)}\n${this.stderrTail()}`));
        }
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`${this.name}: no line matching ${re} in ${timeoutMs} ms; stdout: ${JSON.stringify(this.lines)}\n${this.stderrTail()}`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        this.waiters = this.waiters.filter((w) => w !== check);
      };
      this.waiters.push(check);
      check();
    });
  }

  async listeningUrl() {
    return (await this.waitForLine(/listening on (http:\/\/\S+)/))[1].replace(/\/$/, '');
  }

  /** SIGTERM and return the exit code (SIGKILL and throw after `timeoutMs`). */
  async terminate(timeoutMs = 20_000) {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGTERM');
    const timeout = new Promise((res) => setTimeout(() => res(null), timeoutMs));
    const result = await Promise.race([this.exited, timeout]);
    if (result === null) {
      this.child.kill('SIGKILL');
      throw new Error(`${this.name} did not exit within ${timeoutMs} ms of SIGTERM\n${this.stderrTail()}`);
    }
    return result.code;
  }
}

// The suite's faults follow one another on one demo: with circuit breakers on, one test's failures
// would open the breaker for the next (breakers are proven in the Python and Rust suites with
// processes of their own). A long retry-after is not waited out; retries stay as they ship.
const SUITE_DEMO_CONFIG = '[upstream.breaker]\nenabled = false\n[upstream.retry]\nmax_retry_after_ms = 2000\n';

/** Start `rampart demo` and return its URLs and key. */
export async function startDemo({ tokensPerSec = 0, name = 'demo' } = {}) {
  const dataDir = mkdtempSync(join(tmpdir(), 'rampart-demo-'));
  const config = join(dataDir, 'demo-config.toml');
  writeFileSync(config, SUITE_DEMO_CONFIG);
  const proc = new RampartProcess(
    ['demo', '--listen', '127.0.0.1:0', '--data-dir', dataDir, '--sim-tokens-per-sec', String(tokensPerSec), '--config', config],
    { name },
  );
  const value = async (name) => (await proc.waitForLine(new RegExp(`^\\s*(?:export\\s+)?${name}=(\\S+)`)))[1].replace(/^['"]|['"]$/g, '');
  const baseURL = (await value('ANTHROPIC_BASE_URL')).replace(/\/$/, '');
  const apiKey = await value('ANTHROPIC_API_KEY');
  const simURL = (await value('RAMPART_SIM_URL')).replace(/\/$/, '');
  return { proc, baseURL, apiKey, simURL, dataDir, sim: new SimControl(simURL) };
}

/** Connection details for a target of a running demo. */
export function targetOf(demo, name) {
  return name === 'sim'
    ? { name, baseURL: demo.simURL, apiKey: 'sk-ant-sim-any-key' }
    : { name, baseURL: demo.baseURL, apiKey: demo.apiKey };
}

export function clientFor(target, opts = {}) {
  return new Anthropic({ baseURL: target.baseURL, apiKey: target.apiKey, maxRetries: 0, timeout: 30_000, ...opts });
}

export function rawHeaders(target, extra = {}) {
  return { 'x-api-key': target.apiKey, 'anthropic-version': '2023-06-01', 'content-type': 'application/json', ...extra };
}

/** The simulator's /_sim control plane (no key needed). */
export class SimControl {
  constructor(url) {
    this.url = url;
  }

  async #call(method, path, body) {
    const r = await fetch(this.url + path, {
      method,
      headers: body ? { 'content-type': 'application/json' } : {},
      body: body ? JSON.stringify(body) : undefined,
    });
    const text = await r.text();
    if (r.status >= 300) throw new Error(`${method} ${path} -> ${r.status} ${text}`);
    return text ? JSON.parse(text) : null;
  }

  fault(kind, count = 1, params = {}) {
    return this.#call('POST', '/_sim/faults', { kind, count, ...params });
  }

  clearFaults() {
    return this.#call('DELETE', '/_sim/faults');
  }

  counters() {
    return this.#call('GET', '/_sim/counters');
  }

  async requests(limit = 50) {
    let body = await this.#call('GET', `/_sim/requests?limit=${limit}`);
    if (!Array.isArray(body)) body = body.requests ?? body.data;
    return body;
  }
}
