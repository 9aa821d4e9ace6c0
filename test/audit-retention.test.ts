/**
 * Audit retention (issue 5, item 9): events older than the retention period are pruned behind a
 * signed anchor, and the rest of the chain still verifies from it; rows removed past the anchor,
 * or a forged anchor, do not verify; a chain that does not verify is never pruned.
 */
import { appendFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { Engine } from '../src/store/engine.js';
import { BACKENDS, createTenant, defineCollection, openTestBulkhead, request, type TestBulkhead } from './support/backends.js';

for (const kind of BACKENDS) {
  describe(`audit retention (${kind})`, () => {
    let t: TestBulkhead;
    let su: Engine;
    const seqs = async (tenantId: string) => {
      const [r] = await su.batch([{ text: 'SELECT seq FROM bulkhead.audit_events WHERE tenant_id = $1 ORDER BY seq', values: [tenantId] }]);
      return r!.rows.map((row) => Number(row.seq));
    };
    const write = async (token: string, n: number) => {
      for (let i = 0; i < n; i++) {
        const res = await request(t.app, 'POST', '/v1/collections/notes/records', { token, body: { fields: { title: `n-${randomBytes(4).toString('hex')}` } } });
        assert.equal(res.status, 201, res.text);
      }
    };
    const verify = async (tenantId: string) => {
      const report = await t.bh.verifyAudit(tenantId);
      return report;
    };

    before(async () => {
      t = await openTestBulkhead(kind);
      su = await t.db.engine();
    });
    after(async () => {
      await t?.close();
    });

    it('prunes old events behind a signed anchor; the rest verifies from it, new events too', async () => {
      const a = await createTenant(t, `ret-a-${kind}`);
      await defineCollection(t, a.token, 'notes', { fields: { title: { type: 'string' } } });
      await write(a.token, 8);
      await t.bh.audit.checkpoint();
      const head = (await seqs(a.id)).at(-1)!;
      assert.equal((await verify(a.id)).ok, true);
      // Everything is "old" a second from now: all but the newest event goes.
      const [result] = (await t.bh.pruneAudit(new Date(Date.now() + 1000))).filter((r) => r.chain === a.id);
      assert.deepEqual(result, { chain: a.id, anchorSeq: head - 1, removed: head - 1 });
      assert.deepEqual(await seqs(a.id), [head], 'the newest event stays, so the chain goes on from it');
      const report = await verify(a.id);
      assert.equal(report.ok, true, JSON.stringify(report));
      assert.equal(report.tenants[0]!.headSeq, head);
      // Appends go on, and verify from the anchor.
      await write(a.token, 3);
      await t.bh.audit.checkpoint();
      assert.equal((await verify(a.id)).ok, true);
      // Nothing more to prune until newer events are old: a second run signs no new anchor.
      const [again] = (await t.bh.pruneAudit(new Date(0))).filter((r) => r.chain === a.id);
      assert.deepEqual(again, { chain: a.id, anchorSeq: null, removed: 0 });

      // A row removed past the anchor (with the owner's own purge exception) is found.
      const kept = await seqs(a.id);
      await t.bh.placements.pruneAudit(a.id, kept[1]!);
      const broken = await verify(a.id);
      assert.equal(broken.ok, false);
      assert.equal(broken.firstDivergence!.chain, a.id);
    });

    it('refuses a forged anchor and does not prune a chain that does not verify', async () => {
      const b = await createTenant(t, `ret-b-${kind}`);
      await defineCollection(t, b.token, 'notes', { fields: { title: { type: 'string' } } });
      await write(b.token, 5);
      await t.bh.audit.checkpoint();
      // A forged anchor line (no valid signature) in the anchors witness: verification fails closed.
      appendFileSync(join(t.config.auditWitnessDir, 'anchors', `${b.id}.ndjson`), `${JSON.stringify({ chain: b.id, seq: 3, hash: '00'.repeat(32), keyId: 'ed25519:00', signature: 'AA', time: new Date().toISOString(), type: 'bulkhead.audit.checkpoint/v1' })}\n`, { mode: 0o600 });
      await assert.rejects(verify(b.id), (e: unknown) => (e as { code?: string }).code === 'AUDIT_CHECKPOINT_INVALID');

      const c = await createTenant(t, `ret-c-${kind}`);
      await defineCollection(t, c.token, 'notes', { fields: { title: { type: 'string' } } });
      await write(c.token, 5);
      await su.batch([
        { text: 'ALTER TABLE bulkhead.audit_events DISABLE TRIGGER USER' },
        { text: "UPDATE bulkhead.audit_events SET event = jsonb_set(event, '{outcome}', '\"error\"') WHERE tenant_id = $1 AND seq = 2", values: [c.id] },
        { text: 'ALTER TABLE bulkhead.audit_events ENABLE TRIGGER USER' },
      ]);
      const before = await seqs(c.id);
      const results = await t.bh.pruneAudit(new Date(Date.now() + 1000));
      assert.deepEqual(results.find((r) => r.chain === b.id), { chain: b.id, anchorSeq: null, removed: 0, refused: 'witness-invalid' });
      assert.deepEqual(results.find((r) => r.chain === c.id), { chain: c.id, anchorSeq: null, removed: 0, refused: 'chain-diverges' });
      assert.deepEqual(await seqs(c.id), before, 'nothing was removed');
    });
  });
}
