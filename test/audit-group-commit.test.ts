/**
 * The audit log's joint group commit (issue 5, item 4; docs/audit.md, "Writing"): the waiting
 * events of many tenants' chains are appended in one transaction per database, each tenant's part
 * after its own context and write check.
 *
 * - Events of pool, bridge and silo tenants recorded at once all land, each in its own chain,
 *   gapless, in fewer transactions than chains, and every chain verifies.
 * - A part cannot write into another tenant's chain: its context is its own (the database refuses).
 * - A tenant whose writes a move's switch has paused holds back only its own events.
 * - Another process appending meanwhile (a stale cached head) costs a retry, never an event.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { AuditLog } from '../src/audit/log.js';
import { ChainLinker } from '../src/audit/chain.js';
import { createAuditEvent, type AuditEvent } from '../src/audit/event.js';
import { DatabaseError } from '../src/errors.js';
import { SESSION_SEARCH_PATH, type Engine, type Statement } from '../src/store/engine.js';
import { uuidv7 } from '../src/ids.js';
import { BACKENDS, createTenant, openTestBulkhead, type TestBulkhead } from './support/backends.js';

/** A read event of `tenantId` (what a GET leaves), `i` making its request id distinct. */
function readEvent(tenantId: string, i: number): AuditEvent {
  return createAuditEvent({
    tenantId,
    principal: { subject: `user-${i % 7}`, roles: ['member'], authMethod: 'jwt' },
    action: 'record.read',
    collection: 'notes',
    recordIds: [uuidv7()],
    decision: { effect: 'allow', policyIds: ['role.member'] },
    requestId: `req-${i}`,
    sourceAddress: '198.51.100.23',
    outcome: 'success',
  });
}

for (const kind of BACKENDS) {
  describe(`audit log: joint group commit across tenants (${kind})`, () => {
    let t: TestBulkhead;
    let su: Engine;
    const tenants: Array<{ id: string; tier: string }> = [];
    /** Where each tenant's audit rows are, for the superuser's reads. */
    let tableOf: (tenantId: string) => Promise<{ engine: Engine; table: string }>;
    /** Joint writes and their parts, counted around the router's `writeAcross`. */
    const joint = { calls: 0, parts: 0 };

    /** A tenant's chain as stored, in seq order (read past RLS). */
    const chain = async (tenantId: string) => {
      const { engine, table } = await tableOf(tenantId);
      const [r] = await engine.batch([{ text: `SELECT seq, event FROM ${table} WHERE tenant_id = $1 ORDER BY seq`, values: [tenantId] }]);
      return r!.rows.map((row) => ({ seq: Number(row.seq), event: row.event as Record<string, unknown> }));
    };

    before(async () => {
      t = await openTestBulkhead(kind);
      su = await t.db.engine();
      const tiers = ['pool', 'pool', 'pool', 'pool', 'pool', 'pool', 'bridge', 'bridge', 'silo'] as const;
      for (const [i, tier] of tiers.entries()) {
        const made = await createTenant(t, `gc-${kind}-${i}`, ['tenant_admin'], tier);
        tenants.push({ id: made.id, tier });
      }
      tableOf = async (tenantId) => {
        const p = await t.bh.placements.resolve(tenantId);
        if (p!.tier === 'silo') {
          const store = await t.bh.placements.tiers.silo.store(t.bh.placements.cells.get(p!.cell), tenantId, p!.location);
          return { engine: store.engine, table: 'bulkhead.audit_events' };
        }
        return { engine: su, table: `${p!.location}.audit_events` };
      };
      const router = t.bh.placements;
      const original = router.writeAcross.bind(router);
      router.writeAcross = async (parts) => {
        joint.calls++;
        joint.parts += parts.length;
        return original(parts);
      };
    });
    after(async () => {
      await t?.close();
    });

    it('appends the events of every tier at once, each in its own chain, in fewer transactions than chains', async () => {
      const before = new Map<string, number>();
      for (const { id } of tenants) before.set(id, (await chain(id)).length);
      // A first event per chain: its head is read (its own commit); later ones link to the remembered head.
      await Promise.all(tenants.map(({ id }, i) => t.bh.audit.record(readEvent(id, i))));
      joint.calls = 0;
      joint.parts = 0;
      const perTenant = 6;
      const events = tenants.flatMap(({ id }, i) => Array.from({ length: perTenant }, (_, j) => ({ id, event: readEvent(id, 100 + i * perTenant + j) })));
      await Promise.all(events.map(({ id, event }) => t.bh.audit.record(event).then(() => id)));

      assert.ok(joint.calls > 0, 'the events went through the joint commit');
      assert.ok(joint.parts / joint.calls > 1, `a joint commit carried several chains (${joint.parts} parts in ${joint.calls} calls)`);
      assert.ok(joint.calls < tenants.length * perTenant, 'fewer joint commits than events');
      for (const { id } of tenants) {
        const rows = await chain(id);
        assert.equal(rows.length, before.get(id)! + 1 + perTenant, `every event of ${id} is in its chain`);
        assert.deepEqual(rows.map((r) => r.seq), rows.map((_, i) => i + 1), 'gapless');
        for (const r of rows) assert.equal(r.event.tenantId, id, 'no other tenant’s event in the chain');
      }
      const report = await t.bh.verifyAudit();
      assert.equal(report.ok, true, JSON.stringify(report.firstDivergence));
    });

    it('refuses a joint part that writes into another tenant’s chain, and writes nothing for any part', async () => {
      const [a, b] = tenants.filter((x) => x.tier === 'pool');
      const store = t.bh.placements.cells.control.store;
      const head = async (id: string) => (await chain(id)).at(-1)!;
      const headA = await head(a!.id);
      const headB = await head(b!.id);
      const rowOf = (tenantId: string, h: { seq: number }, hash: Buffer, i: number) => {
        const linker = new ChainLinker(tenantId, { seq: h.seq, hash });
        return linker.append(readEvent(tenantId, i));
      };
      const hashOf = async (id: string, seq: number) => {
        const { engine, table } = await tableOf(id);
        const [r] = await engine.batch([{ text: `SELECT hash FROM ${table} WHERE tenant_id = $1 AND seq = $2`, values: [id, seq] }]);
        return Buffer.from(r!.rows[0]!.hash as Uint8Array);
      };
      const insert = (tenantId: string, row: ReturnType<typeof rowOf>): Statement => ({
        text:
          'INSERT INTO audit_events (tenant_id, seq, prev_hash, hash, event, time) ' +
          'SELECT $1, $2, $3::text::bytea, $4::text::bytea, $5::text::jsonb, $6::timestamptz',
        values: [tenantId, row.seq, `\\x${row.prevHash.toString('hex')}`, `\\x${row.hash.toString('hex')}`, row.json, row.time],
      });
      const rowA = rowOf(a!.id, headA, await hashOf(a!.id, headA.seq), 900);
      const rowB = rowOf(b!.id, headB, await hashOf(b!.id, headB.seq), 901);
      const scopeA = store.tenant(a!.id).joinable!;
      const scopeB = store.tenant(b!.id).joinable!;
      // B's part carries a row of A's chain (seq 1, so the link check needs no earlier row): under
      // B's context the database refuses it (RLS, SQLSTATE 42501), and A's own part goes with it.
      const forged = new ChainLinker(a!.id).append(readEvent(a!.id, 904));
      await assert.rejects(
        store.batchAcross([
          { scope: scopeA, statements: [insert(a!.id, rowA)] },
          { scope: scopeB, statements: [insert(a!.id, forged)] },
        ]),
        (error: unknown) => error instanceof DatabaseError && error.sqlState === '42501',
      );
      assert.equal((await head(a!.id)).seq, headA.seq, 'A’s own part was rolled back with the rest');
      assert.equal((await head(b!.id)).seq, headB.seq);
      // The same parts, each with its own tenant's row, both land.
      const [ra, rb] = await store.batchAcross([
        { scope: scopeA, statements: [insert(a!.id, rowA)] },
        { scope: scopeB, statements: [insert(b!.id, rowB)] },
      ]);
      assert.equal(ra![0]!.rowCount, 1);
      assert.equal(rb![0]!.rowCount, 1);
      assert.equal((await head(a!.id)).seq, headA.seq + 1);
      assert.equal((await head(b!.id)).seq, headB.seq + 1);
      // The log remembers heads it wrote itself; these rows were not: its next commit reads again.
      await Promise.all([t.bh.audit.record(readEvent(a!.id, 902)), t.bh.audit.record(readEvent(b!.id, 903))]);
      assert.equal((await head(a!.id)).seq, headA.seq + 2);
    });

    it('starts every part of a joint batch under the session’s search path, whatever the part before it set', async () => {
      // PostgreSQL plans a prepared statement again whenever it runs under another search path than
      // it was planned under: a bridge part that left its schema's path behind made the next part's
      // context and check be planned again at every joint commit.
      const [a, b] = tenants.filter((x) => x.tier === 'bridge');
      const [p] = tenants.filter((x) => x.tier === 'pool');
      const store = t.bh.placements.cells.control.store;
      const scope = async (id: string) => {
        const placed = (await t.bh.placements.resolve(id))!;
        const cell = t.bh.placements.cells.get(placed.cell);
        return (await t.bh.placements.tiers[placed.tier].scope(cell, id, placed.location, {})).joinable!;
      };
      const path: Statement = { text: "SELECT replace(current_setting('search_path'), ' ', '') AS path" };
      const sent: Statement[][] = [];
      const batch = store.engine.batch.bind(store.engine);
      store.engine.batch = (statements) => (sent.push([...statements]), batch(statements));
      let results;
      try {
        results = await store.batchAcross([
          { scope: await scope(a!.id), statements: [path] },
          { scope: await scope(p!.id), statements: [path] },
          { scope: await scope(b!.id), statements: [path] },
        ]);
      } finally {
        store.engine.batch = batch;
      }
      // Each part's own statements run under its own tier's path.
      const placed = async (id: string) => (await t.bh.placements.resolve(id))!.location;
      assert.deepEqual(
        results.map((r) => r[0]!.rows[0]!.path),
        [await placed(a!.id), SESSION_SEARCH_PATH, await placed(b!.id)],
      );
      // Where each part's context starts, the path in force is the session's: asked of the
      // database by running the joint batch up to that point, then asking.
      // The joint batch is the one carrying the three probes (the log may write meanwhile).
      const joint = sent.find((statements) => statements.filter((s) => s.text === path.text).length === 3);
      assert.ok(joint, 'the joint batch was sent as one batch');
      const starts = joint!.flatMap((s, i) => (/^bh_ctx(_write)?(_path)?$/.test(s.name ?? '') ? [i] : []));
      assert.equal(starts.length, 3, 'three parts, each after its own context');
      for (const start of starts) {
        const upTo = await store.engine.batch([...joint!.slice(0, start), path]);
        assert.equal(upTo.at(-1)!.rows[0]!.path, SESSION_SEARCH_PATH, `the path where the part at statement ${start} starts`);
      }
    });

    it('holds back only the paused tenant’s events while a switch pauses its writes', async () => {
      const [paused, ...others] = tenants.filter((x) => x.tier === 'pool');
      const router = t.bh.placements;
      const lengths = new Map<string, number>();
      for (const { id } of [paused!, ...others]) lengths.set(id, (await chain(id)).length);
      await router.pauseWrites(paused!.id, 10_000);
      let settled = false;
      const held = t.bh.audit.record(readEvent(paused!.id, 1000)).then(() => (settled = true));
      try {
        await Promise.all(others.map(({ id }, i) => t.bh.audit.record(readEvent(id, 1001 + i))));
        for (const { id } of others) assert.equal((await chain(id)).length, lengths.get(id)! + 1);
        assert.equal(settled, false, 'the paused tenant’s event waits for the switch');
        assert.equal((await chain(paused!.id)).length, lengths.get(paused!.id)!);
      } finally {
        await router.resumeWrites(paused!.id);
      }
      await held;
      assert.equal((await chain(paused!.id)).length, lengths.get(paused!.id)! + 1);
    });

    it('loses no event when another process appended to a chain since this one last did', async () => {
      const ids = tenants.map((x) => x.id);
      const lengths = new Map<string, number>();
      for (const id of ids) lengths.set(id, (await chain(id)).length);
      // Another process: its own log (its own remembered heads) on the same databases.
      const other = new AuditLog({
        scopes: {
          tenant: (id) => t.bh.placements.tenant(id, { write: true }),
          platform: () => t.bh.placements.cells.control.store.platform(),
          across: (parts) => t.bh.placements.writeAcross(parts),
        },
        signer: t.bh.audit.signer,
        witness: t.bh.audit.witness,
        anchors: t.bh.audit.anchors,
      });
      try {
        await Promise.all(ids.slice(0, 4).map((id, i) => other.record(readEvent(id, 2000 + i))));
      } finally {
        await other.close();
      }
      // This process still remembers the old heads of those four: its joint commit fails there and retries.
      await Promise.all(ids.map((id, i) => t.bh.audit.record(readEvent(id, 3000 + i))));
      for (const [i, id] of ids.entries()) {
        const rows = await chain(id);
        assert.equal(rows.length, lengths.get(id)! + (i < 4 ? 2 : 1), `both processes’ events are in ${id}’s chain`);
        assert.deepEqual(rows.map((r) => r.seq), rows.map((_, k) => k + 1), 'gapless');
      }
      const report = await t.bh.verifyAudit();
      assert.equal(report.ok, true, JSON.stringify(report.firstDivergence));
    });
  });
}
