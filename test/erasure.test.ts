/**
 * Tenant erasure by crypto-shredding (issue 4, item 5): scheduled with a grace period, the tenant
 * offboarding at once, cancellable until the grace period ends; then the tenant's own KEK is
 * destroyed in the KMS and its data purged, with an erasure certificate. The decisive test: a dump
 * taken before the erase, which opened the tenant's classified fields before, opens none of them
 * after, with all the key material that remains (the KMS, every other tenant's keys).
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { promisify } from 'node:util';
import { createSecretKey, type KeyObject } from 'node:crypto';
import { decryptField } from '../src/crypto/field-cipher.js';
import { BulkheadError } from '../src/errors.js';
import type { Engine } from '../src/store/engine.js';
import { assertProblem } from './support/assertions.js';
import { BACKENDS, createTenant, defineCollection, openTestBulkhead, request, type TestBulkhead } from './support/backends.js';

const run = promisify(execFile);

const PATIENTS = {
  fields: {
    name: { type: 'string', required: true, classification: 'public' },
    ssn: { type: 'string', unique: true, classification: 'pii' },
    diagnosis: { type: 'text', classification: 'phi' },
  },
};
const marker = (what: string) => `${what}${randomBytes(6).toString('hex')}`;
/** A tenant-wrapped key as stored (docs/encryption.md): bht1:<provider>:<region>:<tenant>:<keyId>:<payload>. */
const TENANT_WRAP = /bht1:[a-z0-9]+:[a-z0-9-]+:([0-9a-f-]{36}):([0-9a-f]{32}):[A-Za-z0-9_-]{80}/g;

type Tenant = { id: string; slug: string; token: string };

/** What a thief holding a copy of the storage would try: every wrapped key of the tenant, unwrapped through the live KMS. */
async function openWrapped(t: TestBulkhead, dump: string, tenantId: string): Promise<{ keys: KeyObject[]; failures: number; tried: number }> {
  const keys: KeyObject[] = [];
  let failures = 0;
  let tried = 0;
  for (const m of dump.matchAll(TENANT_WRAP)) {
    if (m[1] !== tenantId) continue;
    for (const purpose of ['data', 'index']) {
      for (const version of ['1', '2', '3']) {
        tried += 1;
        try {
          keys.push(createSecretKey(await t.bh.kms.unwrap(m[0], { tenant: tenantId, purpose, version })));
        } catch (error) {
          assert.ok(error instanceof BulkheadError && error.code === 'KMS_UNWRAP_FAILED', String(error));
          failures += 1;
        }
      }
    }
  }
  return { keys, failures, tried };
}

/** Every plaintext any of `keys` opens among the tenant's ciphertexts in `rows` (id, field, bh1 value). */
function openCiphertexts(rows: Array<{ id: string; data: Record<string, string> }>, tenantId: string, keys: readonly KeyObject[]): string[] {
  const opened: string[] = [];
  for (const row of rows) {
    for (const field of ['ssn', 'diagnosis']) {
      const value = row.data[field]!;
      const version = Number(value.split(':')[1]);
      for (const key of keys) {
        try {
          opened.push(String(decryptField(key, version, { tenantId, collection: 'patients', field, recordId: row.id }, value)));
        } catch (error) {
          assert.ok(error instanceof BulkheadError && error.code === 'CRYPTO_DECRYPT_FAILED', String(error));
        }
      }
    }
  }
  return opened;
}

for (const kind of BACKENDS) {
  describe(`tenant erasure by crypto-shredding (${kind})`, () => {
    let t: TestBulkhead;
    let su: Engine;
    const erase = (tenant: string, body: unknown = {}) => request(t.app, 'POST', `/v1/tenants/${tenant}/erase`, { token: t.operatorToken, body });
    const cancel = (tenant: string) => request(t.app, 'DELETE', `/v1/tenants/${tenant}/erase`, { token: t.operatorToken });
    const status = async (tenant: string) => (await request(t.app, 'GET', `/v1/tenants/${tenant}`, { token: t.operatorToken })).body.status as string;
    const seed = async (tenant: Tenant, n: number) => {
      const written: Array<{ id: string; ssn: string; diagnosis: string; name: string }> = [];
      for (let i = 0; i < n; i++) {
        const fields = { name: marker('PUB'), ssn: marker('SSN'), diagnosis: marker('DX') };
        const res = await request(t.app, 'POST', '/v1/collections/patients/records', { token: tenant.token, body: { fields } });
        assert.equal(res.status, 201, res.text);
        written.push({ id: res.body.id, ...fields });
      }
      return written;
    };
    const rawRows = async (tenantId: string) => {
      const [r] = await su.batch([{ text: "SELECT id, data FROM bulkhead.records WHERE tenant_id = $1 AND collection = 'patients' ORDER BY id", values: [tenantId] }]);
      return r!.rows as Array<{ id: string; data: Record<string, string> }>;
    };
    const rawDump = async (tenantId: string) => {
      const rows = await su.batch(
        ['records', 'unique_values', 'tenant_keys'].map((table) => ({ text: `SELECT coalesce(string_agg(t::text, E'\\n'), '') AS s FROM bulkhead.${table} t WHERE tenant_id = $1`, values: [tenantId] })),
      );
      return rows.map((r) => r.rows[0]!.s as string).join('\n');
    };

    before(async () => {
      t = await openTestBulkhead(kind, { BULKHEAD_KEY_CACHE_MS: '1000', BULKHEAD_ROTATION_BATCH_SIZE: '10' });
      su = await t.db.engine();
    });
    after(async () => {
      await t?.close();
    });

    it('after the erase, a dump taken before it opens no classified field, with the KMS and every other tenant\'s keys', async () => {
      const a = await createTenant(t, `erase-a-${kind}`);
      const b = await createTenant(t, `erase-b-${kind}`);
      for (const x of [a, b]) await defineCollection(t, x.token, 'patients', PATIENTS);
      const written = await seed(a, 12);
      const other = await seed(b, 5);
      const rows = await rawRows(a.id);
      const otherRows = await rawRows(b.id);
      // The copies a thief could hold: the raw rows, and on PostgreSQL a pg_dump of the whole database.
      let dump = await rawDump(a.id);
      if (kind === 'postgres') dump += (await run('pg_dump', ['--dbname', t.db.url!, '--data-only', '--no-owner'], { maxBuffer: 256 * 1024 * 1024 })).stdout;
      for (const w of written) assert.ok(!dump.includes(w.ssn) && !dump.includes(w.diagnosis), 'no plaintext of a classified field is stored');

      // Control: before the erase, the dump's wrapped keys open through the KMS and the ciphertexts with them.
      const beforeErase = await openWrapped(t, dump, a.id);
      assert.ok(beforeErase.keys.length >= 2, `the dump's data and index keys open before the erase (${beforeErase.keys.length})`);
      const openedBefore = openCiphertexts(rows, a.id, beforeErase.keys);
      for (const w of written) assert.ok(openedBefore.includes(w.ssn) && openedBefore.includes(w.diagnosis), 'the attack works before the erase');

      const scheduled = await erase(a.id, { graceSeconds: 0 });
      assert.equal(scheduled.status, 202, scheduled.text);
      assert.equal(scheduled.body.state, 'scheduled');
      await t.bh.erasures.runDue();
      const [done] = (await request(t.app, 'GET', `/v1/tenants/${a.id}/erasures`, { token: t.operatorToken })).body.erasures;
      assert.equal(done.state, 'done', JSON.stringify(done));

      // The same attack after the erase: no wrapped key opens, so no ciphertext does.
      const afterErase = await openWrapped(t, dump, a.id);
      assert.equal(afterErase.keys.length, 0, 'no wrapped key of the erased tenant opens');
      assert.equal(afterErase.failures, afterErase.tried);
      assert.ok(afterErase.tried >= beforeErase.keys.length);
      // Nor do the keys that remain: every other tenant's data and index keys.
      const remaining: KeyObject[] = [await t.bh.keyring.indexKey(b.id), await t.bh.keyring.forDecrypt(b.id, 1)];
      assert.ok(openCiphertexts(otherRows, b.id, remaining).length > 0, 'the other tenant\'s keys open its own values');
      assert.deepEqual(openCiphertexts(rows, a.id, remaining), [], 'no other tenant\'s key opens the erased tenant\'s values');

      // The data is gone, the tenant erased, and the certificate says what went.
      for (const table of ['records', 'unique_values', 'index_values', 'collections', 'collection_versions', 'tenant_keys']) {
        const [r] = await su.batch([{ text: `SELECT count(*)::int AS n FROM bulkhead.${table} WHERE tenant_id = $1`, values: [a.id] }]);
        assert.equal(r!.rows[0]!.n, 0, `no ${table} row of the erased tenant is left`);
      }
      assert.equal(await status(a.id), 'erased');
      assertProblem(await request(t.app, 'GET', '/v1/collections/patients/records', { token: a.token }), 401, 'AUTH_TENANT_INACTIVE');
      const cert = done.certificate;
      assert.equal(cert.format, 'bulkhead-erasure-certificate/1');
      assert.deepEqual([cert.tenant.id, cert.tenant.slug], [a.id, a.slug]);
      assert.equal(cert.records.patients, 12);
      assert.equal(cert.rows.records, 12);
      assert.equal(cert.rows.unique_values, 12);
      assert.deepEqual(cert.dataKeys.map((k: { purpose: string; version: number }) => `${k.purpose}:${k.version}`), ['data:1', 'index:1']);
      const keyIds = new Set([...dump.matchAll(TENANT_WRAP)].filter((m) => m[1] === a.id).map((m) => m[2]));
      const destroyed = cert.tenantKeys.filter((k: { keyId: string | null }) => k.keyId !== null);
      assert.deepEqual(destroyed.map((k: { keyId: string }) => k.keyId), [...keyIds], 'the certificate names the destroyed key the data was wrapped under');
      assert.deepEqual(destroyed.map((k: { region: string; alreadyDestroyed: boolean }) => [k.region, k.alreadyDestroyed]), [[cert.tenant.region, false]]);
      assert.ok(Date.parse(cert.erasedAt) >= Date.parse(cert.purgedAt));
      for (const w of written) assert.ok(!JSON.stringify(done).includes(w.ssn) && !JSON.stringify(done).includes(w.name), 'the certificate holds no tenant data');
      // The erasure's end is in the platform's audit chain, with the destroyed key ids.
      const [events] = await su.batch([{ text: "SELECT event FROM bulkhead.audit_platform_events WHERE event -> 'operator' ->> 'jobId' = $1", values: [done.id] }]);
      const ended = events!.rows.map((r) => r.event as { action: string; principal: { authMethod: string }; operator: { reason: string } }).find((e) => e.principal.authMethod === 'system');
      assert.ok(ended, 'a system event records the erasure');
      assert.equal(ended.action, 'tenant.erase');
      assert.ok(ended.operator.reason.includes(destroyed[0].keyId), ended.operator.reason);
      // The other tenant is untouched and reads as before.
      assert.deepEqual(await rawRows(b.id), otherRows);
      const read = await request(t.app, 'GET', `/v1/collections/patients/records/${other[0]!.id}`, { token: b.token });
      assert.equal(read.body.fields.ssn, other[0]!.ssn);
      // Too late to cancel, and an erased tenant cannot be erased again.
      assertProblem(await cancel(a.id), 409, 'TENANT_ERASE_TOO_LATE');
      assertProblem(await erase(a.id), 400, 'TENANT_ERASE_INVALID');
    });

    it('offboards the tenant at once for the grace period, and a cancellation gives it back its status and data', async () => {
      const c = await createTenant(t, `erase-c-${kind}`);
      await defineCollection(t, c.token, 'patients', PATIENTS);
      const [w] = await seed(c, 1);
      const scheduled = await erase(c.slug, { graceSeconds: 3600 });
      assert.equal(scheduled.status, 202, scheduled.text);
      const due = Date.parse(scheduled.body.dueAt) - Date.parse(scheduled.body.createdAt);
      assert.ok(Math.abs(due - 3_600_000) < 5_000, `due in an hour (${due} ms)`);
      assert.equal(await status(c.id), 'offboarding');
      assertProblem(await request(t.app, 'GET', `/v1/collections/patients/records/${w!.id}`, { token: c.token }), 401, 'AUTH_TENANT_INACTIVE');
      assertProblem(await erase(c.id), 409, 'TENANT_BUSY');
      // Not due: a run leaves it alone.
      assert.ok(!(await t.bh.erasures.runDue()).includes(scheduled.body.id));
      const cancelled = await cancel(c.id);
      assert.equal(cancelled.status, 200, cancelled.text);
      assert.equal(cancelled.body.state, 'cancelled');
      assert.equal(await status(c.id), 'active');
      const read = await request(t.app, 'GET', `/v1/collections/patients/records/${w!.id}`, { token: c.token });
      assert.equal(read.body.fields.diagnosis, w!.diagnosis, 'the data and its keys are intact');
      assertProblem(await cancel(c.id), 409, 'TENANT_ERASE_NOT_SCHEDULED');
      const history = (await request(t.app, 'GET', `/v1/tenants/${c.id}/history`, { token: t.operatorToken })).body.history.map((h: { event: string; toStatus: string }) => `${h.event}:${h.toStatus}`);
      assert.deepEqual(history.slice(-2), ['erase-scheduled:offboarding', 'erase-cancelled:active']);
      // A suspended tenant can be erased, and a cancellation leaves it suspended.
      await request(t.app, 'PATCH', `/v1/tenants/${c.id}`, { token: t.operatorToken, body: { status: 'suspended' } });
      assert.equal((await erase(c.id, { graceSeconds: 60 })).status, 202);
      assert.equal((await cancel(c.id)).status, 200);
      assert.equal(await status(c.id), 'suspended');
    });

    it('refuses bad requests and busy tenants without changing anything', async () => {
      const d = await createTenant(t, `erase-d-${kind}`);
      await defineCollection(t, d.token, 'patients', PATIENTS);
      await seed(d, 3);
      for (const body of [{ graceSeconds: -1 }, { graceSeconds: 1.5 }, { graceSeconds: '60' }, { graceSeconds: 31_536_001 }, { now: true }, [1]]) {
        assertProblem(await erase(d.id, body), 400, 'TENANT_ERASE_INVALID', JSON.stringify(body));
      }
      assertProblem(await request(t.app, 'POST', `/v1/tenants/${d.id}/erase`, { token: d.token, body: {} }), 403, 'ACCESS_DENIED');
      assertProblem(await request(t.app, 'DELETE', `/v1/tenants/${d.id}/erase`, { token: d.token }), 403, 'ACCESS_DENIED');
      assertProblem(await erase('00000000-0000-7000-8000-000000000000'), 404, 'TENANT_NOT_FOUND');
      // A key rotation under way (it waits for the key cache before its last pass): erase it after.
      const rotation = await request(t.app, 'POST', `/v1/tenants/${d.id}/keys/rotate`, { token: t.operatorToken, body: {} });
      assert.equal(rotation.status, 202, rotation.text);
      assertProblem(await erase(d.id), 409, 'TENANT_BUSY');
      await t.bh.keyRotations.wait(rotation.body.id);
      assert.equal(await status(d.id), 'active');
      assert.equal((await request(t.app, 'GET', `/v1/tenants/${d.id}/erasures`, { token: t.operatorToken })).body.erasures.length, 0);
      // Once offboarding, nothing else starts on the tenant.
      assert.equal((await erase(d.id, { graceSeconds: 600 })).status, 202);
      assertProblem(await request(t.app, 'POST', `/v1/tenants/${d.id}/keys/rotate`, { token: t.operatorToken, body: {} }), 409, 'TENANT_BUSY');
      assertProblem(await request(t.app, 'POST', `/v1/tenants/${d.id}/moves`, { token: t.operatorToken, body: { tier: 'bridge' } }), 400, 'MOVE_INVALID');
    });

    it('erases a bridge tenant: its schema and its role go', async () => {
      const e = await createTenant(t, `erase-e-${kind}`, ['tenant_admin'], 'bridge');
      await defineCollection(t, e.token, 'patients', PATIENTS);
      await seed(e, 3);
      const placed = (await t.bh.placements.resolve(e.id))!;
      assert.equal(placed.tier, 'bridge');
      assert.equal((await erase(e.id, { graceSeconds: 0 })).status, 202);
      await t.bh.erasures.runDue();
      const [done] = await t.bh.erasures.list(e.id);
      assert.equal(done!.state, 'done', JSON.stringify(done));
      assert.equal(done!.certificate!.placement.tier, 'bridge');
      assert.equal(done!.certificate!.records.patients, 3);
      const role = `${t.db.appRole}_b${placed.location.slice('tenant_'.length)}`;
      const [r, roles] = await su.batch([
        { text: 'SELECT to_regnamespace($1) IS NULL AS gone', values: [placed.location] },
        { text: 'SELECT count(*)::int AS n FROM pg_roles WHERE rolname = $1', values: [role] },
      ]);
      assert.equal(r!.rows[0]!.gone, true, 'the schema was dropped');
      assert.equal(roles!.rows[0]!.n, 0, "the tenant's role was dropped");
    });
  });
}

for (const kind of BACKENDS) {
  describe(`erasure after a region move (${kind})`, () => {
    let t: TestBulkhead;
    before(async () => {
      t = await openTestBulkhead(kind, { BULKHEAD_KEY_CACHE_MS: '200' }, { cells: [{ name: 'eu-1', region: 'eu' }], controlRegion: 'us' });
    });
    after(async () => {
      await t?.close();
    });

    it("wraps the tenant's keys again in its new region after a move, and an erasure destroys its key in every region", async () => {
      const a = await createTenant(t, `erase-moved-${kind}`);
      await defineCollection(t, a.token, 'patients', PATIENTS);
      const secret = marker('SSN');
      const made = await request(t.app, 'POST', '/v1/collections/patients/records', { token: a.token, body: { fields: { name: 'x', ssn: secret } } });
      assert.equal(made.status, 201, made.text);
      const wrappedNow = async () => {
        const [keys] = await t.bh.placements.tenant(a.id).batch([{ text: 'SELECT purpose, version, wrapped FROM tenant_keys WHERE tenant_id = $1 ORDER BY 1, 2', values: [a.id] }]);
        return keys!.rows.map((r) => r.wrapped as string);
      };
      const regionsOf = (wrapped: readonly string[]) => [...new Set(wrapped.map((w) => w.split(':')[2]))].sort();
      const beforeMove = await wrappedNow();
      assert.deepEqual(regionsOf(beforeMove), ['us']);

      const moved = await request(t.app, 'POST', `/v1/tenants/${a.id}/moves`, {
        token: t.operatorToken,
        body: { tier: 'pool', region: 'eu', legalBasis: 'GDPR Art. 46(2)(c) standard contractual clauses, test' },
      });
      assert.equal(moved.status, 202, moved.text);
      await t.bh.moves.wait(moved.body.id);
      assert.equal((await t.bh.moves.get(a.id, moved.body.id)).state, 'done');
      // After the move the tenant's keys depend on the KMS of its new region only, and still open its data.
      const afterMove = await wrappedNow();
      assert.deepEqual(regionsOf(afterMove), ['eu']);
      assert.equal(afterMove.length, beforeMove.length);
      assert.ok(afterMove.every((w) => w.startsWith(`bht1:local:eu:${a.id}:`)));
      const read = await request(t.app, 'GET', `/v1/collections/patients/records/${made.body.id}`, { token: a.token });
      assert.equal(read.body.fields.ssn, secret);

      // Copies from before and after the move: keys wrapped in both regions, all of which open now.
      const dump = [...beforeMove, ...afterMove].join('\n');
      assert.equal((await openWrapped(t, dump, a.id)).keys.length, beforeMove.length * 2, 'every copy opens before the erase');

      assert.equal((await request(t.app, 'POST', `/v1/tenants/${a.id}/erase`, { token: t.operatorToken, body: { graceSeconds: 0 } })).status, 202);
      await t.bh.erasures.runDue();
      const [done] = await t.bh.erasures.list(a.id);
      assert.equal(done!.state, 'done', JSON.stringify(done));
      const destroyed = done!.certificate!.tenantKeys!.filter((k) => k.keyId !== null).map((k) => k.region).sort();
      assert.deepEqual(destroyed, ['eu', 'us']);
      assert.equal((await openWrapped(t, dump, a.id)).keys.length, 0, 'no copy opens in either region');
    });
  });
}
