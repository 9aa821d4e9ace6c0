/**
 * The audit trail on the request path (issue 5): every operation leaves one event in the right
 * chain — writes in their own transaction, reads and refusals through the group-commit writer
 * before the answer — with identifiers and never a field value; denied cross-tenant attempts land
 * in the attacker's chain only; and `POST /v1/audit/verify` (and `bulkhead audit verify`) finds the
 * chains intact, then names the first divergence of each kind of tampering.
 */
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { verifyChain } from '../src/audit/chain.js';
import type { Engine } from '../src/store/engine.js';
import { assertProblem } from './support/assertions.js';
import { runCli } from './support/cli.js';
import { BACKENDS, createTenant, defineCollection, mintToken, openTestBulkhead, request, type TestBulkhead } from './support/backends.js';

const NOTES = {
  fields: {
    title: { type: 'string', required: true, unique: true },
    secret: { type: 'string', classification: 'pii' },
  },
};

interface Row {
  seq: number;
  event: Record<string, any>;
}

for (const kind of BACKENDS) {
  describe(`audit trail on the request path (${kind})`, () => {
    let t: TestBulkhead;
    let su: Engine;
    let a: { id: string; slug: string; token: string };
    let b: { id: string; slug: string; token: string };

    /** A tenant's chain as stored (the superuser reads past RLS), in seq order. */
    const chain = async (tenantId: string): Promise<Row[]> => {
      const [r] = await su.batch([{ text: 'SELECT seq, event FROM bulkhead.audit_events WHERE tenant_id = $1 ORDER BY seq', values: [tenantId] }]);
      return r!.rows.map((row) => ({ seq: Number(row.seq), event: row.event as Record<string, any> }));
    };
    const platform = async (): Promise<Row[]> => {
      const [r] = await su.batch([{ text: 'SELECT seq, event FROM bulkhead.audit_platform_events ORDER BY seq' }]);
      return r!.rows.map((row) => ({ seq: Number(row.seq), event: row.event as Record<string, any> }));
    };
    const since = async (tenantId: string, n: number) => (await chain(tenantId)).slice(n).map((r) => r.event);

    before(async () => {
      t = await openTestBulkhead(kind);
      su = await t.db.engine();
      a = await createTenant(t, `audit-a-${kind}`);
      b = await createTenant(t, `audit-b-${kind}`);
      for (const x of [a, b]) await defineCollection(t, x.token, 'notes', NOTES);
    });
    after(async () => {
      await t?.close();
    });

    it('writes an event with each write, in its transaction, and one per read before the answer; never a field value', async () => {
      const n = (await chain(a.id)).length;
      const marker = `M${randomBytes(6).toString('hex')}`;
      const made = await request(t.app, 'POST', '/v1/collections/notes/records', { token: a.token, body: { fields: { title: marker, secret: `${marker}-s` } } });
      assert.equal(made.status, 201, made.text);
      const id = made.body.id as string;
      const got = await request(t.app, 'GET', `/v1/collections/notes/records/${id}`, { token: a.token });
      assert.equal(got.status, 200);
      const listed = await request(t.app, 'GET', `/v1/collections/notes/records?filter=${encodeURIComponent(JSON.stringify({ title: { eq: marker } }))}`, { token: a.token });
      assert.equal(listed.body.records.length, 1);
      assert.equal((await request(t.app, 'PATCH', `/v1/collections/notes/records/${id}`, { token: a.token, body: { fields: { secret: 'x' } } })).status, 200);
      assert.equal((await request(t.app, 'DELETE', `/v1/collections/notes/records/${id}`, { token: a.token })).status, 204);

      const events = await since(a.id, n);
      assert.deepEqual(events.map((e) => [e.action, e.outcome]), [
        ['record.create', 'success'],
        ['record.read', 'success'],
        ['record.list', 'success'],
        ['record.update', 'success'],
        ['record.delete', 'success'],
      ]);
      for (const e of events) {
        assert.equal(e.tenantId, a.id);
        assert.equal(e.collection, 'notes');
        assert.deepEqual(e.principal, { subject: 'user-1', roles: ['tenant_admin'], authMethod: 'jwt' });
        assert.equal(e.decision.effect, 'allow');
        assert.ok(e.decision.policyIds.length > 0, 'the policies that allowed it are named');
        assert.match(e.requestId, /^[A-Za-z0-9._-]+$/);
        assert.ok(e.sourceAddress === null || typeof e.sourceAddress === 'string');
      }
      for (const e of [events[0], events[1], events[3], events[4]]) assert.deepEqual(e!.recordIds, [id]);
      assert.match(events[2]!.query.fingerprint, /^sha256:[0-9a-f]{64}$/);
      assert.equal(events[2]!.query.rowCount, 1);
      const text = JSON.stringify(await chain(a.id));
      assert.ok(!text.includes(marker), 'no field value, nor the filter value, is in the trail');
      // Seqs are gapless from 1.
      assert.deepEqual((await chain(a.id)).map((r) => r.seq), Array.from({ length: n + 5 }, (_, i) => i + 1));
    });

    it('records a failed write as an error, and its change not at all', async () => {
      const title = `dup-${randomBytes(4).toString('hex')}`;
      assert.equal((await request(t.app, 'POST', '/v1/collections/notes/records', { token: a.token, body: { fields: { title } } })).status, 201);
      const n = (await chain(a.id)).length;
      assertProblem(await request(t.app, 'POST', '/v1/collections/notes/records', { token: a.token, body: { fields: { title } } }), 409, 'RECORD_UNIQUE_VIOLATION');
      const [e] = await since(a.id, n);
      assert.deepEqual([e!.action, e!.outcome, e!.errorCode, e!.recordIds], ['record.create', 'error', 'RECORD_UNIQUE_VIOLATION', undefined]);
    });

    it("puts a denied cross-tenant attempt in the attacker's chain, exactly once, and nothing in the victim's", async () => {
      const made = await request(t.app, 'POST', '/v1/collections/notes/records', { token: a.token, body: { fields: { title: `v-${randomBytes(4).toString('hex')}` } } });
      const victim = made.body.id as string;
      const na = (await chain(a.id)).length;
      const nb = (await chain(b.id)).length;
      for (const [method, body] of [['GET', undefined], ['PATCH', { fields: { title: 'pwned' } }], ['DELETE', undefined]] as const) {
        assertProblem(await request(t.app, method, `/v1/collections/notes/records/${victim}`, { token: b.token, ...(body ? { body } : {}) }), 404, 'RECORD_NOT_FOUND');
      }
      const attacker = await since(b.id, nb);
      assert.deepEqual(attacker.map((e) => [e.action, e.outcome, e.errorCode, e.tenantId]), [
        ['record.read', 'error', 'RECORD_NOT_FOUND', b.id],
        ['record.update', 'error', 'RECORD_NOT_FOUND', b.id],
        ['record.delete', 'error', 'RECORD_NOT_FOUND', b.id],
      ]);
      assert.equal((await chain(a.id)).length, na, "nothing in the victim's chain");
      // A role the policies refuse: a denial with the deny decision, in the caller's own chain.
      const viewer = await mintToken(t, b.id, ['viewer'], 'viewer-1');
      const nb2 = (await chain(b.id)).length;
      assertProblem(await request(t.app, 'POST', '/v1/collections/notes/records', { token: viewer, body: { fields: { title: 'x' } } }), 403, 'ACCESS_DENIED');
      const [denied] = await since(b.id, nb2);
      assert.deepEqual([denied!.action, denied!.outcome, denied!.errorCode, denied!.decision.effect], ['record.create', 'denied', 'ACCESS_DENIED', 'deny']);
      // Operators and unauthenticated callers go to the platform chain.
      const np = (await platform()).length;
      assertProblem(await request(t.app, 'GET', '/v1/collections/notes/records', { token: t.operatorToken }), 403, 'ACCESS_DENIED');
      assertProblem(await request(t.app, 'GET', '/v1/collections/notes/records', { token: 'not-a-token' }), 401, 'AUTH_TOKEN_INVALID');
      const tail = (await platform()).slice(np).map((r) => r.event);
      assert.deepEqual(tail.map((e) => [e.action, e.outcome, e.errorCode, e.principal?.authMethod ?? null]), [
        ['record.list', 'denied', 'ACCESS_DENIED', 'operator_token'],
        ['request.authenticate', 'denied', 'AUTH_TOKEN_INVALID', null],
      ]);
      assert.ok(!JSON.stringify(tail).includes('not-a-token'), 'no token in the trail');
    });

    it('records operator actions in the platform chain with the tenant and job they concern', async () => {
      const np = (await platform()).length;
      const c = await createTenant(t, `audit-c-${kind}`);
      const rotation = await request(t.app, 'POST', `/v1/tenants/${c.id}/keys/rotate`, { token: t.operatorToken, body: {} });
      assert.equal(rotation.status, 202, rotation.text);
      const events = (await platform()).slice(np).map((r) => r.event);
      const created = events.find((e) => e.action === 'tenant.create')!;
      assert.equal(created.operator.targetTenantId, c.id);
      const rotated = events.find((e) => e.action === 'tenant.keys')!;
      assert.deepEqual(rotated.operator, { targetTenantId: c.id, jobId: rotation.body.id });
      assert.equal(rotated.principal.authMethod, 'operator_token');
      // The job's end is a system event of its own, with the job's id.
      await t.bh.keyRotations.wait(rotation.body.id);
      const ended = (await platform()).map((r) => r.event).find((e) => e.principal?.authMethod === 'system' && e.operator?.jobId === rotation.body.id);
      assert.ok(ended, 'the rotation\'s end is recorded');
      assert.deepEqual([ended.action, ended.outcome, ended.operator.targetTenantId], ['tenant.keys', 'success', c.id]);
    });

    it('audits reads per the collection\'s read-audit level, and writes and refusals always', async () => {
      const quiet = await defineCollection(t, a.token, 'quiet', { readAudit: 'off', fields: { title: { type: 'string' } } });
      assert.equal(quiet.body.readAudit, 'off');
      await defineCollection(t, a.token, 'mixed', { readAudit: 'classified', fields: { title: { type: 'string' }, ssn: { type: 'string', classification: 'pii' } } });
      assertProblem(await request(t.app, 'PUT', '/v1/collections/bad', { token: a.token, body: { readAudit: 'some', fields: { x: { type: 'string' } } } }), 400, 'COLLECTION_INVALID');
      const q = await request(t.app, 'POST', '/v1/collections/quiet/records', { token: a.token, body: { fields: { title: 'q' } } });
      const plain = await request(t.app, 'POST', '/v1/collections/mixed/records', { token: a.token, body: { fields: { title: 'p' } } });
      const secret = await request(t.app, 'POST', '/v1/collections/mixed/records', { token: a.token, body: { fields: { title: 's', ssn: '123' } } });
      const n = (await chain(a.id)).length;
      assert.equal((await request(t.app, 'GET', `/v1/collections/quiet/records/${q.body.id}`, { token: a.token })).status, 200);
      assert.equal((await request(t.app, 'GET', '/v1/collections/quiet/records', { token: a.token })).status, 200);
      assert.equal((await request(t.app, 'GET', `/v1/collections/mixed/records/${plain.body.id}`, { token: a.token })).status, 200);
      assert.equal((await request(t.app, 'GET', `/v1/collections/mixed/records/${secret.body.id}`, { token: a.token })).status, 200);
      assert.equal((await request(t.app, 'GET', '/v1/collections/mixed/records', { token: a.token })).status, 200);
      assertProblem(await request(t.app, 'GET', '/v1/collections/quiet/records/00000000-0000-7000-8000-000000000000', { token: a.token }), 404, 'RECORD_NOT_FOUND');
      assert.equal((await request(t.app, 'PATCH', `/v1/collections/quiet/records/${q.body.id}`, { token: a.token, body: { fields: { title: 'q2' } } })).status, 200);
      const events = await since(a.id, n);
      assert.deepEqual(events.map((e) => [e.collection, e.action, e.outcome, e.recordIds?.[0] ?? e.query?.rowCount]), [
        ['mixed', 'record.read', 'success', secret.body.id],
        ['mixed', 'record.list', 'success', 2],
        ['quiet', 'record.read', 'error', '00000000-0000-7000-8000-000000000000'],
        ['quiet', 'record.update', 'success', q.body.id],
      ]);
    });

    it("lets a tenant's auditor read, filter, page and export its own trail, and nothing of another tenant's", async () => {
      const auditorA = await mintToken(t, a.id, ['auditor'], 'auditor-a');
      const auditorB = await mintToken(t, b.id, ['auditor'], 'auditor-b');
      const made = await request(t.app, 'POST', '/v1/collections/notes/records', { token: a.token, body: { fields: { title: `au-${randomBytes(4).toString('hex')}` } } });
      const recordA = made.body.id as string;
      const events = (token: string, query = '') => request(t.app, 'GET', `/v1/audit/events${query}`, { token });

      // Paged in seq order with chain data; every page follows the last.
      const first = await events(auditorA, '?limit=3');
      assert.equal(first.status, 200, first.text);
      assert.deepEqual(first.body.events.map((e: { seq: number }) => e.seq), [1, 2, 3]);
      assert.match(first.body.events[1].prevHash, /^[0-9a-f]{64}$/);
      assert.equal(first.body.events[1].prevHash, first.body.events[0].hash);
      const second = await events(auditorA, `?limit=3&cursor=${encodeURIComponent(first.body.nextCursor)}`);
      assert.equal(second.body.events[0].seq, 4);
      // Filters.
      const byRecord = await events(auditorA, `?record=${recordA}`);
      assert.deepEqual(byRecord.body.events.map((e: { action: string }) => e.action), ['record.create']);
      const denied = await events(auditorA, '?outcome=error&action=record.create');
      assert.ok(denied.body.events.length >= 1 && denied.body.events.every((e: { outcome: string; action: string }) => e.outcome === 'error' && e.action === 'record.create'));
      const byPrincipal = await events(auditorA, '?principal=auditor-a');
      assert.ok(byPrincipal.body.events.every((e: { principal: { subject: string } }) => e.principal.subject === 'auditor-a'));
      const future = await events(auditorA, `?from=${encodeURIComponent(new Date(Date.now() + 3_600_000).toISOString())}`);
      assert.deepEqual(future.body.events, []);
      for (const bad of ['?limit=0', '?limit=abc', '?outcome=maybe', '?record=nope', '?from=yesterday', '?action=DROP', '?cursor=zzz', '?color=red']) {
        const res = await events(auditorA, bad);
        assert.equal(res.status, 400, `${bad}: ${res.text}`);
      }

      // NDJSON and CSV exports, which verify offline like the database's rows.
      const nd = await request(t.app, 'GET', '/v1/audit/events', { token: auditorA, headers: { accept: 'application/x-ndjson' } });
      assert.equal(nd.status, 200);
      assert.match(String(nd.headers['content-type']), /application\/x-ndjson/);
      const lines = nd.text.trim().split('\n').map((l) => JSON.parse(l));
      const verified = await verifyChain(
        lines.map((l) => ({ seq: l.seq, prevHash: Buffer.from(l.prevHash, 'hex'), hash: Buffer.from(l.hash, 'hex'), event: l.event })),
        { chain: a.id },
      );
      assert.equal(verified.ok, true, JSON.stringify(verified));
      const csv = await request(t.app, 'GET', '/v1/audit/events?limit=5', { token: auditorA, headers: { accept: 'text/csv' } });
      assert.match(String(csv.headers['content-type']), /text\/csv/);
      assert.match(csv.text.split('\r\n')[0]!, /^seq,time,action,outcome,errorCode,principal/);
      assert.ok(csv.text.split('\r\n').length > 5);

      // Tenant B's auditor: its own chain only, through any filter or cursor; tenant= is refused.
      const own = await events(auditorB, '?limit=1000');
      assert.ok(own.body.events.length > 0);
      assert.ok(own.body.events.every((e: { tenantId: string }) => e.tenantId === b.id));
      assert.deepEqual((await events(auditorB, `?record=${recordA}`)).body.events, []);
      const viaCursor = await events(auditorB, `?cursor=${encodeURIComponent(first.body.nextCursor)}&limit=1000`);
      assert.ok(viaCursor.body.events.every((e: { tenantId: string }) => e.tenantId === b.id));
      assertProblem(await events(auditorB, `?tenant=${a.id}`), 400, 'REQUEST_INVALID');
      const exported = await request(t.app, 'GET', `/v1/audit/events?record=${recordA}`, { token: auditorB, headers: { accept: 'application/x-ndjson' } });
      assert.equal(exported.text, '');
      // Roles without audit.read are refused; operators name the tenant.
      const member = await mintToken(t, b.id, ['member'], 'member-b');
      assertProblem(await events(member), 403, 'ACCESS_DENIED');
      const op = await events(t.operatorToken, `?tenant=${a.slug}&record=${recordA}`);
      assert.deepEqual(op.body.events.map((e: { tenantId: string }) => e.tenantId), [a.id]);
      const plat = await events(t.operatorToken, '?limit=5');
      assert.ok(plat.body.events.every((e: { tenantId: string | null }) => e.tenantId === null));
    });

    it('keeps every chain gapless under concurrent reads, and verifies', async () => {
      const made = await request(t.app, 'POST', '/v1/collections/notes/records', { token: a.token, body: { fields: { title: `c-${randomBytes(4).toString('hex')}` } } });
      const n = (await chain(a.id)).length;
      const answers = await Promise.all(Array.from({ length: 40 }, () => request(t.app, 'GET', `/v1/collections/notes/records/${made.body.id}`, { token: a.token })));
      assert.ok(answers.every((r) => r.status === 200));
      const rows = await chain(a.id);
      assert.equal(rows.length, n + 40, 'one event per answered read');
      assert.deepEqual(rows.map((r) => r.seq), Array.from({ length: rows.length }, (_, i) => i + 1));
      await t.bh.audit.checkpoint();
      const verified = await request(t.app, 'POST', '/v1/audit/verify', { token: t.operatorToken, body: {} });
      assert.equal(verified.status, 200, verified.text);
      assert.equal(verified.body.ok, true, verified.text);
      const mine = verified.body.tenants.find((c: { chain: string }) => c.chain === a.id);
      assert.equal(mine.events, rows.length);
      assert.ok(mine.checkpoints >= 1);
      assert.ok(verified.body.tenants.some((c: { chain: string }) => c.chain === 'platform'));
    });

    it('names the first divergence of a tampered chain, over the API and in the CLI', async () => {
      const d = await createTenant(t, `audit-d-${kind}`);
      await defineCollection(t, d.token, 'notes', NOTES);
      for (let i = 0; i < 6; i++) await request(t.app, 'POST', '/v1/collections/notes/records', { token: d.token, body: { fields: { title: `t${i}` } } });
      await t.bh.audit.checkpoint();
      const rows = await chain(d.id);
      const verify = async () => (await request(t.app, 'POST', '/v1/audit/verify', { token: t.operatorToken, body: { tenant: d.slug } })).body;
      assert.equal((await verify()).ok, true);
      // The owner disables the append-only trigger and edits an event: verification names the row.
      const target = rows[2]!.seq;
      await su.batch([
        { text: `ALTER TABLE bulkhead.audit_events DISABLE TRIGGER USER` },
        { text: "UPDATE bulkhead.audit_events SET event = jsonb_set(event, '{outcome}', '\"error\"') WHERE tenant_id = $1 AND seq = $2", values: [d.id, target] },
        { text: `ALTER TABLE bulkhead.audit_events ENABLE TRIGGER USER` },
      ]);
      const report = await verify();
      assert.equal(report.ok, false);
      assert.deepEqual([report.firstDivergence.chain, report.firstDivergence.seq, report.firstDivergence.kind], [d.id, target, 'hash-mismatch']);

      await t.app.listen({ port: 0, host: '127.0.0.1' });
      const url = `http://127.0.0.1:${(t.app.server.address() as AddressInfo).port}`;
      const run = await runCli(['audit', 'verify', '--tenant', d.slug], { BULKHEAD_URL: url, BULKHEAD_OPERATOR_TOKEN: t.operatorToken });
      assert.equal(run.code, 1, run.stderr);
      assert.match(run.stderr, new RegExp(`^error AUDIT_CHAIN_BROKEN: audit chain ${d.id} diverges at seq ${target} \\(hash-mismatch\\)`, 'm'));
      assert.match(run.stdout, /DIVERGES/);
      const ok = await runCli(['audit', 'verify', '--tenant', a.slug], { BULKHEAD_URL: url, BULKHEAD_OPERATOR_TOKEN: t.operatorToken });
      assert.equal(ok.code, 0, ok.stderr);
      assert.match(ok.stderr, /verify \[.*\] 100% \| (\d+)\/\1 events/, 'a progress bar that ends at every event');
      assert.match(ok.stdout, new RegExp(`${a.id} +ok`));
      // Streamed over the API: progress lines, then the report.
      const streamed = await request(t.app, 'POST', '/v1/audit/verify', { token: t.operatorToken, body: { tenant: a.slug }, headers: { accept: 'application/x-ndjson' } });
      const lines = streamed.text.trim().split('\n').map((l) => JSON.parse(l));
      assert.ok(lines[0].progress, streamed.text.slice(0, 200));
      assert.equal(lines.at(-1).report.ok, true);
      assertProblem(await request(t.app, 'POST', '/v1/audit/verify', { token: t.operatorToken, body: { tenant: 'no-such-tenant' }, headers: { accept: 'application/x-ndjson' } }), 404, 'TENANT_NOT_FOUND');
      assertProblem(await request(t.app, 'POST', '/v1/audit/verify', { token: a.token, body: {} }), 403, 'ACCESS_DENIED');
    });
  });
}
