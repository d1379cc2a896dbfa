// Message batches served by Rampart from its store, through the official TypeScript SDK: both
// execution modes (the x-rampart-batch-mode header), mixed good and bad items, the SDK's batch
// calls unchanged (create, retrieve, list, results, cancel, delete).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';
import { MODEL, startDemo, targetOf, clientFor, textOf, waitUntil } from './helpers.mjs';

const user = (text) => [{ role: 'user', content: text }];
const good = (id, text) => ({ custom_id: id, params: { model: MODEL, max_tokens: 50, messages: user(`echo: ${text}`) } });
const bad = (id) => ({ custom_id: id, params: { model: MODEL, messages: user('no max_tokens') } });

let demo;
before(async () => {
  demo = await startDemo({ name: 'demo-batch-modes' });
});
after(async () => {
  if (!demo) return;
  const code = await demo.proc.terminate();
  assert.equal(code, 0, `rampart demo exited with ${code} after SIGTERM\n${demo.proc.stderrTail()}`);
});

for (const mode of ['local', 'upstream']) {
  describe(`batches in ${mode} mode`, () => {
    const client = () => clientFor(targetOf(demo, 'gateway'), { defaultHeaders: { 'x-rampart-batch-mode': mode } });
    const waitEnded = (c, id) =>
      waitUntil(
        async () => {
          const b = await c.messages.batches.retrieve(id);
          return b.processing_status === 'ended' && b;
        },
        { timeoutMs: 30_000, intervalMs: 200, what: `batch ${id} to end` },
      );

    it('runs good and bad items: counts, results by custom_id, list, delete', async () => {
      const c = client();
      const requests = [good('g1', `${mode} one`), good('g2', `${mode} two`), good('g3', `${mode} three`), bad('b1'), bad('b2')];
      const created = await c.messages.batches.create({ requests });
      assert.match(created.id, /^msgbatch_/);
      assert.equal(created.type, 'message_batch');
      assert.equal(created.processing_status, 'in_progress');
      assert.equal(created.request_counts.processing, 5);
      const ended = await waitEnded(c, created.id);
      assert.deepEqual(
        [ended.request_counts.succeeded, ended.request_counts.errored, ended.request_counts.processing],
        [3, 2, 0],
      );
      assert.equal(ended.results_url, `${demo.baseURL}/v1/messages/batches/${created.id}/results`);
      const results = {};
      for await (const line of await c.messages.batches.results(created.id)) results[line.custom_id] = line.result;
      assert.deepEqual(Object.keys(results).sort(), ['b1', 'b2', 'g1', 'g2', 'g3']);
      assert.equal(textOf(results.g2.message), `${mode} two`);
      assert.equal(results.b1.type, 'errored');
      assert.equal(results.b1.error.type, 'error');
      assert.equal(results.b1.error.error.type, 'invalid_request_error');
      const listed = [];
      for await (const b of c.messages.batches.list({ limit: 2 })) listed.push(b.id);
      assert.ok(listed.includes(created.id));
      const deleted = await c.messages.batches.delete(created.id);
      assert.deepEqual(deleted, { id: created.id, type: 'message_batch_deleted' });
      await assert.rejects(c.messages.batches.retrieve(created.id), Anthropic.NotFoundError);
    });

    it('cancels a batch; the unstarted items end canceled', async () => {
      const c = client();
      const created = await c.messages.batches.create({ requests: Array.from({ length: 50 }, (_, i) => good(`c${i}`, 'x')) });
      const canceling = await c.messages.batches.cancel(created.id);
      assert.ok(['canceling', 'ended'].includes(canceling.processing_status));
      const ended = await waitEnded(c, created.id);
      assert.equal(ended.request_counts.canceled + ended.request_counts.succeeded, 50);
    });

    it('refuses a duplicate custom_id with the API error envelope', async () => {
      const c = client();
      const err = await c.messages.batches.create({ requests: [good('same', 'a'), good('same', 'b')] }).catch((e) => e);
      assert.ok(err instanceof Anthropic.BadRequestError, String(err));
      assert.equal(err.error.error.type, 'invalid_request_error');
    });
  });
}
