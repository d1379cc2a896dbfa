// The official TypeScript SDK against the simulator and the gateway of one `rampart demo`.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';
import { MODEL, TARGETS, startDemo, targetOf, clientFor, rawHeaders, textOf, waitUntil, unique } from './helpers.mjs';

const user = (text) => [{ role: 'user', content: text }];
const WEATHER_TOOL = {
  name: 'get_weather',
  description: 'Current weather for a city',
  input_schema: {
    type: 'object',
    properties: { city: { type: 'string' }, days: { type: 'integer' } },
    required: ['city', 'days'],
  },
};
const MANY = 10; // enough faults that a gateway retrying before the first byte still surfaces the error

let demo;
before(async () => {
  demo = await startDemo();
});
after(async () => {
  if (!demo) return;
  const code = await demo.proc.terminate();
  assert.equal(code, 0, `rampart demo exited with ${code} after SIGTERM\n${demo.proc.stderrTail()}`);
});
afterEach(async () => {
  if (demo) await demo.sim.clearFaults();
});

async function expectError(promise, cls) {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof cls, `expected ${cls.name}, got ${err?.constructor?.name}: ${err?.message}`);
    return err;
  }
  assert.fail(`expected ${cls.name}, but the call succeeded`);
}

for (const name of TARGETS) {
  describe(`through the ${name}`, () => {
    let target;
    let client;
    before(() => {
      target = targetOf(demo, name);
      client = clientFor(target);
    });

    describe('messages', () => {
      it('creates a message with the echoed text, usage and a request id', async () => {
        const msg = await client.messages.create({ model: MODEL, max_tokens: 100, messages: user('echo: hello from node') });
        assert.equal(msg.type, 'message');
        assert.equal(msg.role, 'assistant');
        assert.match(msg.id, /^msg_/);
        assert.equal(textOf(msg), 'hello from node');
        assert.equal(msg.stop_reason, 'end_turn');
        assert.ok(msg.usage.input_tokens > 0);
        assert.ok(msg.usage.output_tokens > 0);
        assert.equal(typeof msg.usage.cache_creation_input_tokens, 'number');
        assert.equal(typeof msg.usage.cache_read_input_tokens, 'number');
        assert.match(msg._request_id, /^req_/);
      });

      it('streams text events and a final message through messages.stream()', async () => {
        const stream = client.messages.stream({ model: MODEL, max_tokens: 100, messages: user('echo: alpha beta gamma delta') });
        const pieces = [];
        stream.on('text', (delta) => pieces.push(delta));
        const final = await stream.finalMessage();
        assert.ok(pieces.length >= 1);
        assert.equal(pieces.join(''), 'alpha beta gamma delta');
        assert.equal(textOf(final), 'alpha beta gamma delta');
        assert.equal(final.stop_reason, 'end_turn');
        assert.ok(final.usage.output_tokens > 0);
        assert.ok(final.usage.input_tokens > 0);
      });

      it('yields raw stream events in the documented order with stream: true', async () => {
        const stream = await client.messages.create({ model: MODEL, max_tokens: 100, messages: user('echo: raw order'), stream: true });
        const events = [];
        for await (const event of stream) events.push(event);
        const types = events.map((e) => e.type);
        assert.equal(types[0], 'message_start');
        assert.equal(types[1], 'content_block_start');
        assert.deepEqual(types.slice(-3), ['content_block_stop', 'message_delta', 'message_stop']);
        assert.deepEqual(events[0].message.content, []);
        assert.equal(events[0].message.stop_reason, null);
        const deltas = events.filter((e) => e.type === 'content_block_delta');
        assert.ok(deltas.length >= 1);
        assert.equal(deltas.map((d) => d.delta.text).join(''), 'raw order');
        assert.equal(events.at(-2).delta.stop_reason, 'end_turn');
      });

      it('sends ping events and SSE event names that match the data type', async () => {
        const r = await fetch(`${target.baseURL}/v1/messages`, {
          method: 'POST',
          headers: rawHeaders(target),
          body: JSON.stringify({ model: MODEL, max_tokens: 50, stream: true, messages: user('echo: ping check') }),
        });
        assert.equal(r.status, 200);
        assert.match(r.headers.get('content-type'), /^text\/event-stream/);
        const text = await r.text();
        const names = [...text.matchAll(/^event: *(\S+)$/gm)].map((m) => m[1]);
        const types = [...text.matchAll(/^data: *(.*)$/gm)].map((m) => JSON.parse(m[1]).type);
        assert.deepEqual(names, types);
        assert.ok(names.includes('ping'));
        assert.equal(names[0], 'message_start');
        assert.equal(names.at(-1), 'message_stop');
      });

      it('counts the same input tokens that an uncached create reports', async () => {
        const params = { model: MODEL, system: 'Count carefully.', messages: user('How many tokens is this?'), tools: [WEATHER_TOOL] };
        const counted = await client.messages.countTokens(params);
        const msg = await client.messages.create({ ...params, max_tokens: 20 });
        assert.ok(counted.input_tokens > 0);
        assert.equal(counted.input_tokens, msg.usage.input_tokens);
      });

      it('returns a tool_use block with the required fields for tool_choice any', async () => {
        const msg = await client.messages.create({
          model: MODEL,
          max_tokens: 200,
          tools: [WEATHER_TOOL],
          tool_choice: { type: 'any' },
          messages: user('What is it like in Lisbon?'),
        });
        assert.equal(msg.stop_reason, 'tool_use');
        const use = msg.content.find((b) => b.type === 'tool_use');
        assert.ok(use, JSON.stringify(msg.content));
        assert.match(use.id, /^toolu_/);
        assert.equal(use.name, 'get_weather');
        assert.equal(typeof use.input.city, 'string');
        assert.ok(Number.isInteger(use.input.days));
      });

      it('accumulates streamed input_json_delta fragments into the tool input', async () => {
        const stream = client.messages.stream({
          model: MODEL,
          max_tokens: 200,
          tools: [WEATHER_TOOL],
          tool_choice: { type: 'any' },
          messages: user('What is it like in Lisbon?'),
        });
        let partial = '';
        stream.on('streamEvent', (e) => {
          if (e.type === 'content_block_delta' && e.delta.type === 'input_json_delta') partial += e.delta.partial_json;
        });
        const final = await stream.finalMessage();
        const use = final.content.find((b) => b.type === 'tool_use');
        assert.ok(use);
        assert.deepEqual(JSON.parse(partial), use.input);
        assert.equal(typeof use.input.city, 'string');
      });

      it('puts a signed thinking block before the text when thinking is enabled', async () => {
        const msg = await client.messages.create({
          model: MODEL,
          max_tokens: 2048,
          thinking: { type: 'enabled', budget_tokens: 1024 },
          messages: user('echo: thought'),
        });
        assert.equal(msg.content[0].type, 'thinking');
        assert.ok(msg.content[0].thinking.length > 0);
        assert.ok(msg.content[0].signature.length > 0);
        assert.equal(msg.content.at(-1).type, 'text');
        assert.equal(textOf(msg), 'thought');
      });

      it('stops at a stop sequence and at max_tokens', async () => {
        const stopped = await client.messages.create({
          model: MODEL,
          max_tokens: 100,
          stop_sequences: ['HALT'],
          messages: user('echo: one two HALT three'),
        });
        assert.equal(stopped.stop_reason, 'stop_sequence');
        assert.equal(stopped.stop_sequence, 'HALT');
        assert.equal(textOf(stopped).trim(), 'one two');
        const long = Array.from({ length: 100 }, (_, i) => `w${i}`).join(' ');
        const cut = await client.messages.create({ model: MODEL, max_tokens: 4, messages: user(`echo: ${long}`) });
        assert.equal(cut.stop_reason, 'max_tokens');
        assert.ok(cut.usage.output_tokens <= 4);
        assert.ok(long.startsWith(textOf(cut)));
      });
    });

    describe('models', () => {
      it('lists models and retrieves one', async () => {
        const page = await client.models.list();
        assert.ok(page.data.length >= 1);
        for (const m of page.data) {
          assert.equal(m.type, 'model');
          assert.match(m.id, /^claude-/);
        }
        const ids = [];
        for await (const m of client.models.list({ limit: 1000 })) ids.push(m.id);
        assert.ok(ids.some((id) => id.startsWith(MODEL)), ids.join(','));
        const info = await client.models.retrieve(MODEL);
        assert.ok(info.id.startsWith(MODEL), info.id);
      });

      it('raises NotFoundError for an unknown model', async () => {
        const err = await expectError(client.models.retrieve('claude-does-not-exist-1'), Anthropic.NotFoundError);
        assert.equal(err.status, 404);
        assert.equal(err.type, 'not_found_error');
      });
    });

    describe('batches', () => {
      const good = (id, text) => ({ custom_id: id, params: { model: MODEL, max_tokens: 50, messages: user(`echo: ${text}`) } });
      const waitEnded = (id) =>
        waitUntil(
          async () => {
            const b = await client.messages.batches.retrieve(id);
            return b.processing_status === 'ended' && b;
          },
          { timeoutMs: 30_000, intervalMs: 250, what: `batch ${id} to end` },
        );

      it('runs a batch end to end: create, poll, results, list, delete', async () => {
        const created = await client.messages.batches.create({
          requests: [good('good', 'node batch'), { custom_id: 'bad', params: { model: MODEL, messages: user('hi') } }],
        });
        assert.match(created.id, /^msgbatch_/);
        assert.equal(created.processing_status, 'in_progress');
        const ended = await waitEnded(created.id);
        assert.equal(ended.request_counts.succeeded, 1);
        assert.equal(ended.request_counts.errored, 1);
        const results = {};
        for await (const line of await client.messages.batches.results(created.id)) results[line.custom_id] = line.result;
        assert.deepEqual(Object.keys(results).sort(), ['bad', 'good']);
        assert.equal(results.good.type, 'succeeded');
        assert.equal(textOf(results.good.message), 'node batch');
        assert.equal(results.bad.type, 'errored');
        assert.equal(results.bad.error.error.type, 'invalid_request_error');
        const listed = [];
        for await (const b of client.messages.batches.list({ limit: 100 })) listed.push(b.id);
        assert.ok(listed.includes(created.id));
        const deleted = await client.messages.batches.delete(created.id);
        assert.equal(deleted.type, 'message_batch_deleted');
        await expectError(client.messages.batches.retrieve(created.id), Anthropic.NotFoundError);
      });

      // The SDK downloads results from results_url exactly as given, so it must not point past the gateway.
      it('returns a results_url that points back at the server the client talks to', async () => {
        const created = await client.messages.batches.create({ requests: [good('u', 'where')] });
        const ended = await waitEnded(created.id);
        assert.equal(ended.results_url, `${target.baseURL}/v1/messages/batches/${created.id}/results`);
      });

      it('cancels a batch that is still processing', async () => {
        const created = await client.messages.batches.create({ requests: [good(unique('c'), 'x'), good(unique('c'), 'y')] });
        const canceling = await client.messages.batches.cancel(created.id);
        assert.ok(['canceling', 'ended'].includes(canceling.processing_status));
        const ended = await waitEnded(created.id);
        assert.ok(ended.request_counts.canceled >= 1);
        assert.equal(ended.request_counts.canceled + ended.request_counts.succeeded, 2);
      });
    });

    describe('errors', () => {
      it('raises BadRequestError when max_tokens is missing', async () => {
        const err = await expectError(client.post('/v1/messages', { body: { model: MODEL, messages: user('hi') } }), Anthropic.BadRequestError);
        assert.equal(err.type, 'invalid_request_error');
      });

      it('raises AuthenticationError without a valid key', async () => {
        if (name === 'gateway') {
          const bad = clientFor({ ...target, apiKey: 'sk-ant-wrong-key' });
          const err = await expectError(bad.messages.create({ model: MODEL, max_tokens: 5, messages: user('hi') }), Anthropic.AuthenticationError);
          assert.equal(err.type, 'authentication_error');
        }
        const r = await fetch(`${target.baseURL}/v1/messages`, {
          method: 'POST',
          headers: { 'anthropic-version': '2023-06-01', 'content-type': 'application/json' },
          body: JSON.stringify({ model: MODEL, max_tokens: 5, messages: user('hi') }),
        });
        assert.equal(r.status, 401);
        assert.equal((await r.json()).error.type, 'authentication_error');
      });

      it('raises NotFoundError for an unknown route', async () => {
        const err = await expectError(client.get('/v1/definitely-not-a-route'), Anthropic.NotFoundError);
        assert.equal(err.type, 'not_found_error');
      });

      it('raises RateLimitError for an injected 429 with retry-after', async () => {
        await demo.sim.fault('status', MANY, { status: 429, error_type: 'rate_limit_error', retry_after: 3 });
        const err = await expectError(client.messages.create({ model: MODEL, max_tokens: 5, messages: user('hi') }), Anthropic.RateLimitError);
        assert.equal(err.status, 429);
        assert.equal(err.headers.get('retry-after'), '3');
      });

      it('raises InternalServerError for an injected 500', async () => {
        await demo.sim.fault('status', MANY, { status: 500, error_type: 'api_error' });
        const err = await expectError(client.messages.create({ model: MODEL, max_tokens: 5, messages: user('hi') }), Anthropic.InternalServerError);
        assert.equal(err.status, 500);
        assert.equal(err.type, 'api_error');
      });

      it('raises an APIError with status 529 for an injected overload', async () => {
        await demo.sim.fault('status', MANY, { status: 529, error_type: 'overloaded_error', message: 'Overloaded' });
        const err = await expectError(client.messages.create({ model: MODEL, max_tokens: 5, messages: user('hi') }), Anthropic.APIError);
        assert.equal(err.status, 529);
        assert.equal(err.type, 'overloaded_error');
        assert.ok(err instanceof Anthropic.OverloadedError);
      });

      it('raises APIConnectionError on a reset (a 502 through the gateway)', async () => {
        await demo.sim.fault('reset', MANY);
        const call = client.messages.create({ model: MODEL, max_tokens: 5, messages: user('hi') });
        if (name === 'sim') {
          await expectError(call, Anthropic.APIConnectionError);
        } else {
          const err = await expectError(call, Anthropic.APIError);
          assert.equal(err.status, 502);
          assert.equal(err.type, 'api_error');
        }
      });

      it('raises an overloaded APIError while iterating a stream that carries an error event', async () => {
        await demo.sim.fault('error_event', MANY, { after_events: 3, error_type: 'overloaded_error', message: 'Overloaded' });
        const stream = await client.messages.create({ model: MODEL, max_tokens: 100, messages: user('echo: doomed'), stream: true });
        const seen = [];
        let caught;
        try {
          for await (const event of stream) seen.push(event.type);
        } catch (err) {
          caught = err;
        }
        assert.ok(caught instanceof Anthropic.APIError, `expected APIError, got ${caught}`);
        assert.equal(caught.type, 'overloaded_error');
        assert.equal(seen[0], 'message_start');
        assert.ok(!seen.includes('message_stop'));
      });

      it('rejects finalMessage() when the stream is aborted mid-way', async () => {
        await demo.sim.fault('abort_stream', MANY, { after_events: 3 });
        const stream = client.messages.stream({ model: MODEL, max_tokens: 100, messages: user('echo: cut short') });
        await assert.rejects(stream.finalMessage());
      });
    });
  });
}
