/**
 * Audit retention (issue 5, item 9): events older than the retention period are pruned behind a
 * signed anchor, and the rest of the chain still verifies from it; rows removed past the anchor,
 * or a forged anchor, do not verify; a chain that does not verify is never pruned. The platform
 * chain too (migration 16): only the owner deletes its rows, and none past the seq named.
 */
import { appendFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { CheckpointKeys } from '../src/audit/checkpoint.js';
import { AUDIT_APPEND_ONLY_SQLSTATE, AUDIT_PLATFORM_PRUNE_SETTING } from '../src/audit/schema.js';
import { verifyTrail, type VerifySources } from '../src/audit/verify.js';
import type { Witness } from '../src/audit/witness.js';
import { Moves, type MoveView } from '../src/placement/moves.js';
import type { TenantRow } from '../src/placement/tier.js';
import type { Engine, Statement } from '../src/store/engine.js';
import { rejectsSql } from './support/assertions.js';
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
    /** The newest `audit.prune` event of the platform chain about `tenantId`. */
    const pruneEvent = async (tenantId: string) => {
      const [r] = await su.batch([
        {
          text: "SELECT event FROM bulkhead.audit_platform_events WHERE event->>'action' = 'audit.prune' AND event->'operator'->>'targetTenantId' = $1 ORDER BY seq DESC LIMIT 1",
          values: [tenantId],
        },
      ]);
      return r!.rows[0]?.event as Record<string, any> | undefined;
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
      // The removal is itself audited, in the platform chain, as a system action.
      const event = await pruneEvent(a.id);
      assert.ok(event, 'an audit.prune event names the chain');
      assert.deepEqual([event.outcome, event.principal.authMethod, event.tenantId, event.errorCode], ['success', 'system', null, undefined]);
      assert.equal(event.operator.reason, `retention removed ${head - 1} events of the chain through seq ${head - 1}, behind an anchor signed at that seq`);
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

      // A verification that read the chain's anchor just before a retention run pruned past it
      // (its rows then begin after a newer anchor) reads the newer anchor and verifies from it.
      const real = t.bh.audit.anchors;
      let reads = 0;
      const staleOnce = { last: (chain: string, keys: CheckpointKeys) => (reads++ === 0 ? Promise.resolve(undefined) : real.last(chain, keys)) } as unknown as Witness;
      const stale = { last: () => Promise.resolve(undefined) } as unknown as Witness;
      const sources = (anchors: Witness): VerifySources => ({
        tenant: (id) => t.bh.placements.tenant(id, { requireActive: false }),
        platform: () => t.bh.store.platform(),
        witness: t.bh.audit.witness,
        anchors,
        keys: [t.bh.audit.verifyingKey],
      });
      const raced = await verifyTrail(sources(staleOnce), [{ id: a.id, erased: false }], false);
      assert.equal(raced.ok, true, JSON.stringify(raced.firstDivergence));
      assert.equal(reads, 2, 'the anchor was read again');
      const missing = await verifyTrail(sources(stale), [{ id: a.id, erased: false }], false);
      assert.equal(missing.ok, false, 'without the anchor the pruned rows are a divergence');

      // A row removed past the anchor (with the owner's own purge exception) is found.
      const kept = await seqs(a.id);
      await t.bh.placements.pruneAudit(a.id, kept[1]!);
      const broken = await verify(a.id);
      assert.equal(broken.ok, false);
      assert.equal(broken.firstDivergence!.chain, a.id);
    });

    it('leaves a tenant being moved for the next run: rows pruned under the copy would fail the move', async () => {
      const m = await createTenant(t, `ret-mv-${kind}`);
      await defineCollection(t, m.token, 'notes', { fields: { title: { type: 'string' } } });
      await write(m.token, 6);
      let release!: () => void;
      const held = new Promise<void>((resolve) => (release = resolve));
      let reached!: () => void;
      const copying = new Promise<void>((resolve) => (reached = resolve));
      const mover = new Moves(t.bh.placements, {
        onStep: async (step: MoveView) => {
          if (step.state !== 'copying') return;
          reached();
          await held;
        },
      });
      const row = (await request(t.app, 'GET', `/v1/tenants/${m.id}`, { token: t.operatorToken })).body as TenantRow;
      const started = await mover.start(row, { tier: 'bridge' }, 'test');
      await copying;
      const before = await seqs(m.id);
      const [skipped] = (await t.bh.pruneAudit(new Date(Date.now() + 1000))).filter((r) => r.chain === m.id);
      assert.deepEqual(skipped, { chain: m.id, anchorSeq: null, removed: 0, skipped: 'moving' });
      assert.deepEqual(await seqs(m.id), before, 'nothing was removed under the move');
      assert.equal(await pruneEvent(m.id), undefined, 'a skip is no finding');
      release();
      await mover.wait(started.id);
      assert.equal((await mover.get(m.id, started.id)).state, 'done');
      // Moved, it is pruned at its new placement by the next run, and verifies.
      const [pruned] = (await t.bh.pruneAudit(new Date(Date.now() + 1000))).filter((r) => r.chain === m.id);
      assert.ok(pruned!.anchorSeq !== null && pruned!.removed > 0, JSON.stringify(pruned));
      assert.equal((await verify(m.id)).ok, true);
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
      // Each refusal is a finding, recorded with its stable code.
      for (const [tenant, code, why] of [[b, 'AUDIT_CHECKPOINT_INVALID', 'witness-invalid'], [c, 'AUDIT_CHAIN_BROKEN', 'chain-diverges']] as const) {
        const event = await pruneEvent(tenant.id);
        assert.ok(event, `an audit.prune event names ${why}`);
        assert.deepEqual([event.outcome, event.errorCode, event.operator.reason], ['error', code, `retention left the chain as it was: ${why}`]);
      }
    });
  });

  // A deployment of its own: the one above holds a forged anchor, which fails every verification of the whole trail.
  describe(`audit retention of the platform chain (${kind})`, () => {
    let t: TestBulkhead;
    let su: Engine;

    before(async () => {
      t = await openTestBulkhead(kind);
      su = await t.db.engine();
    });
    after(async () => {
      await t?.close();
    });

    const platformSeqs = async () => {
      const [r] = await su.batch([{ text: 'SELECT seq FROM bulkhead.audit_platform_events ORDER BY seq' }]);
      return r!.rows.map((row) => Number(row.seq));
    };
    /** `statement` in the platform scope as `role` (the superuser when undefined), the prune setting naming `through` (unset when undefined). */
    const asPlatform = (role: string | undefined, through: number | undefined, statement: Statement) =>
      su.batch([
        ...(role === undefined ? [] : [{ text: `SET LOCAL ROLE ${role}` }]),
        {
          text: `SELECT set_config('bulkhead.scope', 'platform', true), set_config('${AUDIT_PLATFORM_PRUNE_SETTING}', $1, true)`,
          values: [through === undefined ? '' : String(through)],
        },
        statement,
      ]);
    const APPEND_ONLY = /^audit rows are append-only: (UPDATE|DELETE|TRUNCATE) on bulkhead\.audit_platform_events is not allowed$/;
    const appendOnlyFunction = async () => {
      const [r] = await su.batch([
        {
          text:
            'SELECT p.proname::text AS f FROM pg_trigger g JOIN pg_proc p ON p.oid = g.tgfoid ' +
            "WHERE g.tgrelid = 'bulkhead.audit_platform_events'::regclass AND g.tgname = 'audit_platform_events_append_only'",
        },
      ]);
      return r!.rows[0]?.f;
    };

    it('retention runs once per interval for the deployment, whichever server looks first, restarts or not', async () => {
      // The server looks at start, in the background: once its claim is in, the claim is tested afresh.
      const claims = async () => {
        const [r] = await su.batch([{ text: "SELECT count(*)::int AS n FROM bulkhead.maintenance_runs WHERE name = 'audit-retention'" }]);
        return r!.rows[0]!.n as number;
      };
      for (let i = 0; i < 100 && (await claims()) === 0; i++) await new Promise((resolve) => setTimeout(resolve, 50));
      assert.equal(await claims(), 1, 'the server claimed the first run when it started');
      await su.batch([{ text: "DELETE FROM bulkhead.maintenance_runs WHERE name = 'audit-retention'" }]);
      const [first, second] = await Promise.all([t.bh.pruneAuditIfDue(), t.bh.pruneAuditIfDue()]);
      assert.equal([first, second].filter((r) => r !== null).length, 1, 'of two looks at once, one runs it');
      assert.ok(Array.isArray(first ?? second) && (first ?? second)!.some((r) => r.chain === 'platform'), 'the run covers the platform chain');
      assert.equal(await t.bh.pruneAuditIfDue(), null, 'not due again right after');
      // Six hours and a minute later (the clock of the last run moved back), due again, once.
      await su.batch([{ text: "UPDATE bulkhead.maintenance_runs SET started_at = now() - interval '6 hours 1 minute' WHERE name = 'audit-retention'" }]);
      assert.notEqual(await t.bh.pruneAuditIfDue(), null);
      assert.equal(await t.bh.pruneAuditIfDue(), null);
      // A shorter interval asked for: due by it.
      await su.batch([{ text: "UPDATE bulkhead.maintenance_runs SET started_at = now() - interval '2 seconds' WHERE name = 'audit-retention'" }]);
      assert.notEqual(await t.bh.pruneAuditIfDue(1000), null);
    });

    it('migration 16 gives the platform table its one exception, on a layout made before it, and again changes nothing', async () => {
      await createTenant(t, `ret-m-${kind}`); // platform events to refuse to delete
      // The platform table as migration 8 made it before: every row change refused by the shared function.
      await su.script(`SET LOCAL ROLE ${t.db.ownerRole};
DROP TRIGGER audit_platform_events_append_only ON bulkhead.audit_platform_events;
CREATE TRIGGER audit_platform_events_append_only BEFORE UPDATE OR DELETE ON bulkhead.audit_platform_events
  FOR EACH ROW EXECUTE FUNCTION bulkhead.audit_forbid_change();
DROP FUNCTION bulkhead.audit_platform_events_forbid_change();
RESET ROLE;
DELETE FROM bulkhead.migrations WHERE version = 16;`);
      const first = (await platformSeqs())[0]!;
      assert.ok(first >= 1, 'the platform chain has events');
      await rejectsSql(asPlatform(t.db.ownerRole, first, { text: 'DELETE FROM bulkhead.audit_platform_events WHERE seq = $1', values: [first] }), AUDIT_APPEND_ONLY_SQLSTATE, APPEND_ONLY, 'before migration 16, the owner');
      assert.equal(await appendOnlyFunction(), 'audit_forbid_change');
      assert.deepEqual((await t.bh.store.migrate()).applied, [16]);
      assert.equal(await appendOnlyFunction(), 'audit_platform_events_forbid_change');
      await su.script('DELETE FROM bulkhead.migrations WHERE version = 16');
      assert.deepEqual((await t.bh.store.migrate()).applied, [16]);
      assert.equal(await appendOnlyFunction(), 'audit_platform_events_forbid_change');
      assert.equal((await t.bh.verifyAudit()).ok, true, 'nothing was removed');
    });

    it('prunes the platform chain behind a signed anchor; only the owner deletes its rows, and none past the seq named', async () => {
      // An operator action: new platform events, so there is something newer than any earlier anchor.
      await createTenant(t, `ret-p-${kind}`);
      await t.bh.audit.checkpoint();
      const before = await platformSeqs();
      const head = before.at(-1)!;
      const [result] = (await t.bh.pruneAudit(new Date(Date.now() + 1000))).filter((r) => r.chain === 'platform');
      assert.deepEqual(result, { chain: 'platform', anchorSeq: head - 1, removed: before.length - 1 });
      // The newest event stays, and after it the run's own record of what it removed.
      const [recorded] = await su.batch([{ text: "SELECT seq, event FROM bulkhead.audit_platform_events WHERE seq > $1 AND event->>'action' = 'audit.prune'", values: [head] }]);
      assert.equal(recorded!.rows.length, 1, 'one audit.prune event, for the platform chain');
      const event = recorded!.rows[0]!.event as Record<string, any>;
      assert.equal(event.operator.targetTenantId, undefined);
      assert.equal(event.operator.reason, `retention removed ${before.length - 1} events of the platform chain through seq ${head - 1}, behind an anchor signed at that seq`);
      const recordedSeq = Number(recorded!.rows[0]!.seq);
      assert.deepEqual(await platformSeqs(), [head, recordedSeq], 'the newest event stays, so the chain goes on from it');
      const report = await t.bh.verifyAudit();
      assert.equal(report.ok, true, JSON.stringify(report.firstDivergence));
      assert.equal(report.tenants.find((c) => c.chain === 'platform')!.headSeq, recordedSeq);
      // Appends go on, and verify from the anchor.
      await createTenant(t, `ret-q-${kind}`);
      await t.bh.audit.checkpoint();
      assert.equal((await t.bh.verifyAudit()).ok, true);
      const kept = await platformSeqs();
      assert.ok(kept.length > 1 && kept[0] === head);

      // The exception is the owner's, for DELETE, up to the seq named, and nothing else.
      const row = { text: 'DELETE FROM bulkhead.audit_platform_events WHERE seq = $1', values: [head] };
      await rejectsSql(asPlatform(t.db.ownerRole, head - 1, row), AUDIT_APPEND_ONLY_SQLSTATE, APPEND_ONLY, 'the owner, past the seq named');
      await rejectsSql(asPlatform(t.db.ownerRole, undefined, row), AUDIT_APPEND_ONLY_SQLSTATE, APPEND_ONLY, 'the owner, no seq named');
      await rejectsSql(asPlatform(t.db.ownerRole, head, { text: 'UPDATE bulkhead.audit_platform_events SET time = now() WHERE seq = $1', values: [head] }), AUDIT_APPEND_ONLY_SQLSTATE, APPEND_ONLY, 'the owner updates');
      await rejectsSql(asPlatform(t.db.ownerRole, head, { text: 'TRUNCATE bulkhead.audit_platform_events' }), AUDIT_APPEND_ONLY_SQLSTATE, APPEND_ONLY, 'the owner truncates');
      await rejectsSql(asPlatform(undefined, head, row), AUDIT_APPEND_ONLY_SQLSTATE, APPEND_ONLY, 'a superuser');
      await rejectsSql(asPlatform(t.db.appRole, head, row), '42501', /permission denied/, 'the application role');
      assert.deepEqual(await platformSeqs(), kept, 'nothing was removed');

      // A row removed past the anchor (with the owner's exception) is found by verification.
      assert.equal(await t.bh.store.prunePlatformAudit(kept[1]!), 2);
      const broken = await t.bh.verifyAudit();
      assert.equal(broken.ok, false);
      assert.equal(broken.firstDivergence!.chain, 'platform');
      // Retention does not prune a chain that does not verify.
      const [refused] = (await t.bh.pruneAudit(new Date(Date.now() + 1000))).filter((r) => r.chain === 'platform');
      assert.deepEqual(refused, { chain: 'platform', anchorSeq: null, removed: 0, refused: 'chain-diverges' });
    });
  });
}
