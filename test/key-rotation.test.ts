/**
 * Data-key rotation (issue 4, item 4): a new data-key version for new writes, every stored
 * ciphertext re-encrypted under it in batches while the tenant keeps working, the old version
 * destroyed at the end, every record readable with the same content, another tenant untouched.
 * Crash safety (SIGKILL mid-rotation) is in key-rotation-crash.test.ts.
 */
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Bulkhead } from '../src/bulkhead.js';
import type { Engine } from '../src/store/engine.js';
import { assertProblem } from './support/assertions.js';
import { BACKENDS, createTenant, defineCollection, openTestBulkhead, request, type TestBulkhead } from './support/backends.js';

const PATIENTS = {
  fields: {
    name: { type: 'string', required: true, classification: 'public' },
    ssn: { type: 'string', unique: true, classification: 'pii' },
    diagnosis: { type: 'text', classification: 'phi' },
    visits: { type: 'integer', classification: 'confidential' },
  },
};
const ENCRYPTED = ['ssn', 'diagnosis', 'visits'];
/** Cache time of unwrapped keys here: the rotation waits this long (plus a second) before its last pass. */
const KEY_CACHE_MS = 3000;

type Fields = Record<string, unknown>;

/** Every record of the tenant's `patients` as stored (the superuser reads past RLS): id → data. */
async function storedRows(su: Engine, tenantId: string): Promise<Map<string, Fields>> {
  const [r] = await su.batch([{ text: "SELECT id, data FROM bulkhead.records WHERE tenant_id = $1 AND collection = 'patients' ORDER BY id", values: [tenantId] }]);
  return new Map(r!.rows.map((row) => [row.id as string, row.data as Fields]));
}

/** The key versions named by the stored ciphertexts of the tenant. */
function versionsIn(rows: Map<string, Fields>): Set<number> {
  const versions = new Set<number>();
  for (const data of rows.values()) {
    for (const f of ENCRYPTED) {
      const v = data[f];
      if (v === undefined) continue;
      assert.match(String(v), /^bh1:[0-9]+:/, `field ${f} is stored as a ciphertext`);
      versions.add(Number(String(v).split(':')[1]));
    }
  }
  return versions;
}

/** Every record of the tenant in clear, through the API path (decrypting): id → fields. */
async function readAll(bh: Bulkhead, tenantId: string): Promise<Map<string, Fields>> {
  const out = new Map<string, Fields>();
  let cursor: string | undefined;
  do {
    const page = await bh.records.list(tenantId, 'patients', { limit: '100', ...(cursor ? { cursor } : {}) });
    for (const r of page.records) out.set(r.id, r.fields);
    cursor = page.nextCursor ?? undefined;
  } while (cursor);
  return out;
}

async function keyRows(su: Engine, tenantId: string) {
  const [r] = await su.batch([{ text: 'SELECT purpose, version, state, wrapped FROM bulkhead.tenant_keys WHERE tenant_id = $1 ORDER BY purpose, version', values: [tenantId] }]);
  return r!.rows as Array<{ purpose: string; version: number; state: string; wrapped: string }>;
}

for (const kind of BACKENDS) {
  describe(`data-key rotation (${kind})`, () => {
    let t: TestBulkhead;
    let su: Engine;
    let a: { id: string; slug: string; token: string };
    let b: { id: string; slug: string; token: string };
    const rotate = (tenant: string, body: unknown = {}) => request(t.app, 'POST', `/v1/tenants/${tenant}/keys/rotate`, { token: t.operatorToken, body });
    const make = (tenantId: string, i: number) =>
      t.bh.records.create({ tenantId, subject: 'seed' }, 'patients', {
        name: `p${i}`,
        ssn: `SSN-${i}-${randomBytes(4).toString('hex')}`,
        diagnosis: `dx ${i} ${randomBytes(8).toString('hex')}`,
        visits: i,
      });

    before(async () => {
      t = await openTestBulkhead(kind, { BULKHEAD_ROTATION_BATCH_SIZE: '40', BULKHEAD_KEY_CACHE_MS: String(KEY_CACHE_MS) });
      su = await t.db.engine();
      a = await createTenant(t, `rot-a-${kind}`);
      b = await createTenant(t, `rot-b-${kind}`);
      for (const x of [a, b]) await defineCollection(t, x.token, 'patients', PATIENTS);
      for (let i = 0; i < 150; i++) await make(a.id, i);
      for (let i = 0; i < 20; i++) await make(b.id, i);
    });
    after(async () => {
      await t?.close();
    });

    it('re-encrypts every record under a new version while writes go on, destroys the old one, and every record reads back the same', async () => {
      const before = await readAll(t.bh, a.id);
      const storedBefore = await storedRows(su, a.id);
      assert.deepEqual([...versionsIn(storedBefore)], [1]);
      const otherBefore = await storedRows(su, b.id);
      const otherKeys = await keyRows(su, b.id);

      const started = await rotate(a.id);
      assert.equal(started.status, 202, started.text);
      assert.equal(started.body.fromVersion, 1);
      // The tenant keeps working during the rotation: new records and changes of old ones.
      const ids = [...before.keys()];
      const changed = new Map<string, Fields>();
      for (let i = 0; i < 10; i++) {
        const id = ids[i * 7]!;
        const res = await request(t.app, 'PATCH', `/v1/collections/patients/records/${id}`, { token: a.token, body: { fields: { diagnosis: `changed ${i}` } } });
        assert.equal(res.status, 200, res.text);
        changed.set(id, res.body.fields);
        const made = await make(a.id, 1000 + i);
        changed.set(made.id, made.fields);
      }
      await t.bh.keyRotations.wait(started.body.id);
      const end = await request(t.app, 'GET', `/v1/tenants/${a.id}/keys/rotations/${started.body.id}`, { token: t.operatorToken });
      assert.equal(end.status, 200, end.text);
      assert.equal(end.body.state, 'done', end.text);
      assert.equal(end.body.toVersion, 2);
      assert.deepEqual(end.body.progress.destroyed, [1]);
      assert.equal(end.body.progress.percent, 100);
      assert.ok(end.body.progress.reencrypted >= 140 * ENCRYPTED.length, `re-encrypted ${end.body.progress.reencrypted}`);

      // Storage: every ciphertext is under the new version; the old key's row is destroyed.
      const storedAfter = await storedRows(su, a.id);
      assert.deepEqual([...versionsIn(storedAfter)], [2], 'no value is left on version 1');
      const keys = await keyRows(su, a.id);
      assert.deepEqual(
        keys.map((k) => [k.purpose, k.version, k.state]),
        [['data', 1, 'destroyed'], ['data', 2, 'active'], ['index', 1, 'active']],
      );
      assert.equal(keys[0]!.wrapped, 'destroyed', 'the destroyed key is gone from its row');
      // Every record reads back as it was, or as it was changed during the rotation.
      const afterRead = await readAll(t.bh, a.id);
      assert.equal(afterRead.size, before.size + 10);
      for (const [id, fields] of afterRead) assert.deepEqual(fields, changed.get(id) ?? before.get(id), `record ${id}`);
      // The blind index is unchanged: equality still finds records.
      const one = before.get(ids[3]!)!;
      const found = await request(t.app, 'GET', `/v1/collections/patients/records?filter=${encodeURIComponent(JSON.stringify({ ssn: { eq: one.ssn } }))}`, { token: a.token });
      assert.equal(found.body.records.length, 1, found.text);
      // The other tenant is untouched: its rows and keys are exactly as before.
      assert.deepEqual(await storedRows(su, b.id), otherBefore);
      assert.deepEqual(await keyRows(su, b.id), otherKeys);

      // A value under the destroyed version fails closed, with the uniform error.
      const victim = ids[5]!;
      const old = storedBefore.get(victim)!;
      await su.batch([
        { text: "UPDATE bulkhead.records SET data = jsonb_set(data, '{ssn}', to_jsonb($2::text)) WHERE tenant_id = $1 AND id = $3", values: [a.id, old.ssn, victim] },
      ]);
      assertProblem(await request(t.app, 'GET', `/v1/collections/patients/records/${victim}`, { token: a.token }), 500, 'CRYPTO_DECRYPT_FAILED');
      await su.batch([
        { text: "UPDATE bulkhead.records SET data = jsonb_set(data, '{ssn}', to_jsonb($2::text)) WHERE tenant_id = $1 AND id = $3", values: [a.id, storedAfter.get(victim)!.ssn, victim] },
      ]);

      // The key list shows versions, states and counts, never key material.
      const listed = await request(t.app, 'GET', `/v1/tenants/${a.id}/keys`, { token: t.operatorToken });
      assert.equal(listed.status, 200, listed.text);
      assert.deepEqual(listed.body.keys.map((k: { purpose: string; version: number; state: string }) => `${k.purpose}:${k.version}:${k.state}`), ['data:1:destroyed', 'data:2:active', 'index:1:active']);
      assert.ok(!listed.text.includes('bhk'), 'no wrapped key in the answer');
    });

    it('joins a rotation under way instead of making a second version, and refuses bad requests without changing anything', async () => {
      const first = await rotate(a.id);
      const second = await rotate(a.slug);
      assert.equal(first.status, 202, first.text);
      assert.equal(second.status, 202, second.text);
      assert.equal(second.body.id, first.body.id, 'the second request follows the first rotation');
      await t.bh.keyRotations.wait(first.body.id);
      const keys = await keyRows(su, a.id);
      assert.deepEqual(keys.filter((k) => k.purpose === 'data').map((k) => [k.version, k.state]), [[1, 'destroyed'], [2, 'destroyed'], [3, 'active']]);

      const before = await keyRows(su, b.id);
      assertProblem(await rotate(b.id, { now: true }), 400, 'REQUEST_INVALID');
      assertProblem(await rotate('00000000-0000-7000-8000-000000000000'), 404, 'TENANT_NOT_FOUND');
      assertProblem(await request(t.app, 'POST', `/v1/tenants/${b.id}/keys/rotate`, { token: b.token, body: {} }), 403, 'ACCESS_DENIED');
      assertProblem(await request(t.app, 'GET', `/v1/tenants/${b.id}/keys/rotations/${first.body.id}`, { token: t.operatorToken }), 404, 'KEY_ROTATION_NOT_FOUND');
      assertProblem(await request(t.app, 'GET', `/v1/tenants/${b.id}/keys/rotations/not-a-uuid`, { token: t.operatorToken }), 404, 'KEY_ROTATION_NOT_FOUND');
      const suspended = await request(t.app, 'PATCH', `/v1/tenants/${b.id}`, { token: t.operatorToken, body: { status: 'suspended' } });
      assert.equal(suspended.status, 200, suspended.text);
      assertProblem(await rotate(b.id), 409, 'TENANT_BUSY');
      // Operators still see a suspended tenant's key versions (no key material is read).
      const suspendedKeys = await request(t.app, 'GET', `/v1/tenants/${b.id}/keys`, { token: t.operatorToken });
      assert.equal(suspendedKeys.status, 200, suspendedKeys.text);
      assert.equal(suspendedKeys.body.keys.length, 2);
      await request(t.app, 'PATCH', `/v1/tenants/${b.id}`, { token: t.operatorToken, body: { status: 'active' } });
      assert.deepEqual(await keyRows(su, b.id), before, 'nothing changed');
      assert.equal((await request(t.app, 'GET', `/v1/tenants/${b.id}/keys/rotations`, { token: t.operatorToken })).body.rotations.length, 0);
    });

    it('has nothing to rotate for a tenant that never encrypted anything', async () => {
      const c = await createTenant(t, `rot-c-${kind}`);
      const res = await rotate(c.id);
      assert.equal(res.status, 202, res.text);
      await t.bh.keyRotations.wait(res.body.id);
      const end = await t.bh.keyRotations.get(c.id, res.body.id);
      assert.deepEqual([end.state, end.fromVersion, end.toVersion], ['done', null, null]);
      assert.deepEqual(await keyRows(su, c.id), []);
    });

    if (kind === 'postgres') {
      it('re-encrypts what another process wrote under the old key before its key cache expired', async () => {
        // A second process on the same database and KMS, which has the active key cached.
        const other = await Bulkhead.open(t.config);
        try {
          await other.records.create({ tenantId: a.id, subject: 'other' }, 'patients', { name: 'warm', ssn: `W-${randomBytes(4).toString('hex')}` });
          const from = (await t.bh.keyring.activeDataVersion(a.id))!;
          const started = await t.bh.rotateKeys(a.id, 'operator:test');
          // After the first pass, the other process still encrypts under the old version, from its
          // cache: only the settling pass, once every cache has expired, can find that write.
          while ((await t.bh.keyRotations.get(a.id, started.id)).state !== 'settling') await new Promise((r) => setTimeout(r, 20));
          const late = await other.records.create({ tenantId: a.id, subject: 'other' }, 'patients', { name: 'late', ssn: `L-${randomBytes(4).toString('hex')}`, diagnosis: 'late dx' });
          const lateStored = (await storedRows(su, a.id)).get(late.id)!;
          assert.ok(String(lateStored.ssn).startsWith(`bh1:${from}:`), 'the other process wrote under the old version');
          await t.bh.keyRotations.wait(started.id);
          const end = await t.bh.keyRotations.get(a.id, started.id);
          assert.equal(end.state, 'done', JSON.stringify(end));
          assert.deepEqual([...versionsIn(await storedRows(su, a.id))], [end.toVersion], 'the settling pass re-encrypted the late write');
          const read = await t.bh.records.get(a.id, 'patients', late.id);
          assert.deepEqual(read.fields, late.fields);
        } finally {
          await other.close();
        }
      });
    }
  });
}
