/**
 * The tamper matrix of issue 5 against a live deployment: each kind of tampering with the stored
 * chain or its witness — done as the database's superuser or owner, past the triggers, as an
 * attacker with the database would — is detected by `bulkhead audit verify` (`verifyAudit`),
 * naming the sequence where the chain stops verifying.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { canonicalEventJson, linkHash } from '../src/audit/chain.js';
import type { Engine, Statement } from '../src/store/engine.js';
import { BACKENDS, createTenant, defineCollection, openTestBulkhead, request, type TestBulkhead } from './support/backends.js';

/** A bytea parameter as text (engines take no binary parameters). */
const hex = (bytes: Uint8Array) => `\\x${Buffer.from(bytes).toString('hex')}`;

/** Events written per case, and the seq the witness's last checkpoint is at. */
const EVENTS = 8;

for (const kind of BACKENDS) {
  describe(`audit verify names each kind of tampering (${kind})`, () => {
    let t: TestBulkhead;
    let su: Engine;
    let n = 0;

    /** A tenant whose chain has exactly EVENTS events, checkpointed at the head. */
    const chainOfEight = async (): Promise<string> => {
      const x = await createTenant(t, `tamper-${kind}-${++n}`);
      await defineCollection(t, x.token, 'notes', { fields: { title: { type: 'string' } } });
      for (let i = 1; i < EVENTS; i++) {
        const res = await request(t.app, 'POST', '/v1/collections/notes/records', { token: x.token, body: { fields: { title: randomBytes(4).toString('hex') } } });
        assert.equal(res.status, 201);
      }
      await t.bh.audit.checkpoint();
      const report = await t.bh.verifyAudit(x.id);
      assert.equal(report.ok, true);
      assert.equal(report.tenants[0]!.headSeq, EVENTS);
      return x.id;
    };
    /** Runs statements past every trigger, as an attacker holding the database would. */
    const tamper = (statements: Statement[]) =>
      su.batch([{ text: 'SET LOCAL session_replication_role = replica' }, ...statements]);
    const expectDivergence = async (tenantId: string, seq: number, kinds: readonly string[]) => {
      const report = await t.bh.verifyAudit(tenantId);
      assert.equal(report.ok, false, 'the tampering is detected');
      const d = report.firstDivergence!;
      assert.equal(d.chain, tenantId);
      assert.equal(d.seq, seq, `names seq ${seq}: ${JSON.stringify(d)}`);
      assert.ok(kinds.includes(d.kind), `${d.kind} is one of ${kinds.join(', ')}`);
    };
    const rows = async (tenantId: string) => {
      const [r] = await su.batch([{ text: 'SELECT seq, prev_hash, hash, event FROM bulkhead.audit_events WHERE tenant_id = $1 ORDER BY seq', values: [tenantId] }]);
      return r!.rows as Array<{ seq: string | number; prev_hash: Buffer; hash: Buffer; event: Record<string, unknown> }>;
    };

    before(async () => {
      t = await openTestBulkhead(kind);
      su = await t.db.engine();
    });
    after(async () => {
      await t?.close();
    });

    it("an event's field changed", async () => {
      const id = await chainOfEight();
      await tamper([{ text: "UPDATE bulkhead.audit_events SET event = jsonb_set(event, '{outcome}', '\"error\"') WHERE tenant_id = $1 AND seq = 3", values: [id] }]);
      await expectDivergence(id, 3, ['hash-mismatch']);
    });

    it('a row deleted', async () => {
      const id = await chainOfEight();
      await tamper([{ text: 'DELETE FROM bulkhead.audit_events WHERE tenant_id = $1 AND seq = 4', values: [id] }]);
      await expectDivergence(id, 4, ['gap']);
    });

    it('the tail deleted', async () => {
      const id = await chainOfEight();
      await tamper([{ text: 'DELETE FROM bulkhead.audit_events WHERE tenant_id = $1 AND seq >= 6', values: [id] }]);
      await expectDivergence(id, 6, ['missing-tail']);
    });

    it('two rows swapped', async () => {
      const id = await chainOfEight();
      await tamper([
        { text: 'UPDATE bulkhead.audit_events SET seq = 100 WHERE tenant_id = $1 AND seq = 3', values: [id] },
        { text: 'UPDATE bulkhead.audit_events SET seq = 3 WHERE tenant_id = $1 AND seq = 4', values: [id] },
        { text: 'UPDATE bulkhead.audit_events SET seq = 4 WHERE tenant_id = $1 AND seq = 100', values: [id] },
      ]);
      await expectDivergence(id, 3, ['reorder', 'prev-mismatch', 'hash-mismatch']);
    });

    it('a forged row inserted', async () => {
      const id = await chainOfEight();
      const [last] = (await rows(id)).slice(-1);
      const event: Record<string, unknown> = { ...last!.event, seq: EVENTS + 1, action: 'record.delete' };
      await tamper([
        {
          text: 'INSERT INTO bulkhead.audit_events (tenant_id, seq, prev_hash, hash, event, time) VALUES ($1, $2, $3::text::bytea, $4::text::bytea, $5::text::jsonb, $6)',
          values: [id, EVENTS + 1, hex(last!.hash), hex(randomBytes(32)), JSON.stringify(event), event.time],
        },
      ]);
      await expectDivergence(id, EVENTS + 1, ['hash-mismatch', 'forged']);
    });

    it('a hash replaced', async () => {
      const id = await chainOfEight();
      await tamper([{ text: 'UPDATE bulkhead.audit_events SET hash = $2::text::bytea WHERE tenant_id = $1 AND seq = 5', values: [id, hex(randomBytes(32))] }]);
      await expectDivergence(id, 5, ['hash-mismatch']);
    });

    it("a checkpoint's signature replaced", async () => {
      const id = await chainOfEight();
      const file = t.bh.audit.witness.fileOf(id);
      const lines = readFileSync(file, 'utf8').trim().split('\n');
      const cp = JSON.parse(lines[lines.length - 1]!);
      cp.signature = randomBytes(64).toString('base64url');
      writeFileSync(file, `${[...lines.slice(0, -1), JSON.stringify(cp)].join('\n')}\n`);
      await expectDivergence(id, EVENTS, ['checkpoint-invalid']);
    });

    it('the table truncated by the owner', async () => {
      const id = await chainOfEight();
      // The owner's TRUNCATE is refused by the trigger; with the triggers off it goes through, and
      // the witness shows the chain ends before its checkpoint.
      await assert.rejects(su.batch([{ text: `SET LOCAL ROLE ${t.db.ownerRole}` }, { text: 'TRUNCATE bulkhead.audit_events' }]), (e: unknown) => (e as { sqlState?: string }).sqlState === 'BHA01');
      const [parts] = await su.batch([{ text: "SELECT inhrelid::regclass::text AS name FROM pg_inherits WHERE inhparent = 'bulkhead.audit_events'::regclass" }]);
      const tables = ['bulkhead.audit_events', ...parts!.rows.map((r) => r.name as string)];
      await su.batch([
        { text: `SET LOCAL ROLE ${t.db.ownerRole}` },
        ...tables.map((name) => ({ text: `ALTER TABLE ${name} DISABLE TRIGGER USER` })),
        { text: 'TRUNCATE bulkhead.audit_events' },
        ...tables.map((name) => ({ text: `ALTER TABLE ${name} ENABLE TRIGGER USER` })),
      ]);
      await expectDivergence(id, 1, ['missing-tail']);
    });

    it('the whole chain rewritten consistently without the signing key', async () => {
      const id = await chainOfEight();
      // Change the third event and re-hash every row from there: a valid chain, which only the
      // signed checkpoint in the witness contradicts.
      const all = await rows(id);
      let prev: Buffer = Buffer.from(all[1]!.hash);
      const statements: Statement[] = [];
      for (const row of all.slice(2)) {
        const event = Number(row.seq) === 3 ? { ...row.event, outcome: 'error', errorCode: 'RECORD_INVALID' } : row.event;
        const hash = linkHash(prev, canonicalEventJson(event));
        statements.push({
          text: 'UPDATE bulkhead.audit_events SET prev_hash = $3::text::bytea, hash = $4::text::bytea, event = $5::text::jsonb WHERE tenant_id = $1 AND seq = $2',
          values: [id, row.seq, hex(prev), hex(hash), JSON.stringify(event)],
        });
        prev = hash;
      }
      await tamper(statements);
      await expectDivergence(id, EVENTS, ['witness-mismatch']);
    });
  });
}
