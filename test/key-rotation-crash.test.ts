/**
 * Crash safety of data-key rotation (issue 4, item 4; PGlite's `tests/crash-safety/` pattern): a
 * child process rotates a tenant's data key and is killed with SIGKILL at a chosen step; the
 * parent reopens, finds the rotation in the state it was killed in, resumes it, and it finishes:
 * exactly one new key version, every record readable with its content, no value left on a
 * destroyed version, the other tenant untouched.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Bulkhead } from '../src/bulkhead.js';
import { loadConfig } from '../src/config.js';
import { crashEnv, runChild } from './support/crash.js';
import { BACKENDS, createTestDatabase, type BackendKind, type TestDatabase } from './support/backends.js';

const CHILD = join(import.meta.dirname, 'fixtures', 'rotation-child.ts');
const COLLECTION = {
  fields: {
    name: { type: 'string', required: true, classification: 'public' },
    ssn: { type: 'string', unique: true, classification: 'pii' },
    diagnosis: { type: 'text', classification: 'phi' },
  },
};

/** The tenant's records in clear, through the decrypting read path, and the key versions its stored values name. */
async function state(bh: Bulkhead, tenantId: string) {
  const clear = new Map<string, Record<string, unknown>>();
  let cursor: string | undefined;
  do {
    const page = await bh.records.list(tenantId, 'people', { limit: '100', ...(cursor ? { cursor } : {}) });
    for (const r of page.records) clear.set(r.id, r.fields);
    cursor = page.nextCursor ?? undefined;
  } while (cursor);
  const [stored, keys] = await bh.placements.tenant(tenantId).batch([
    { text: "SELECT id, data FROM records WHERE tenant_id = $1 AND collection = 'people' ORDER BY id", values: [tenantId] },
    { text: "SELECT version, state FROM tenant_keys WHERE tenant_id = $1 AND purpose = 'data' ORDER BY version", values: [tenantId] },
  ]);
  const versions = new Set<number>();
  for (const row of stored!.rows) {
    const data = row.data as Record<string, string>;
    for (const f of ['ssn', 'diagnosis']) versions.add(Number(data[f]!.split(':')[1]));
  }
  return { clear, versions: [...versions].sort(), keys: keys!.rows.map((k) => `${k.version}:${k.state}`), raw: JSON.stringify(stored!.rows) };
}

const CASES = ['rotating', 'reencrypting:0', 'reencrypting:3', 'settling:0', 'settling:2', 'destroying:0'] as const;

for (const kind of BACKENDS) {
  describe(`key rotation survives SIGKILL at every step (${kind})`, () => {
    let db: TestDatabase;
    let dataDir: string;
    let env: Record<string, string>;
    let seq = 0;

    before(async () => {
      db = await createTestDatabase(kind as BackendKind);
      dataDir = mkdtempSync(join(tmpdir(), 'bulkhead-rotation-crash-'));
      env = crashEnv(db, dataDir, {
        BULKHEAD_ROTATION_BATCH_SIZE: '40',
        // The last pass waits this long (plus a second) after the rotation: short here.
        BULKHEAD_KEY_CACHE_MS: '300',
      });
    });
    after(async () => {
      await db?.drop();
      rmSync(dataDir, { recursive: true, force: true });
    });

    for (const crashAt of CASES) {
      it(`killed in ${crashAt}, the rotation resumes and finishes with every record readable`, async () => {
        let bh = await Bulkhead.open(loadConfig({}, env));
        const make = async () => {
          const s = `rot-crash-${kind}-${++seq}`;
          const tenant = await bh.tenants.create({ slug: s, name: s }, 'operator:test');
          await bh.collections.define(tenant.id, 'people', COLLECTION, 'test');
          for (let i = 0; i < 300; i++) {
            await bh.records.create({ tenantId: tenant.id, subject: 'seed' }, 'people', { name: `n${i}`, ssn: `${s}-${i}`, diagnosis: `dx-${i}-${randomBytes(4).toString('hex')}` });
          }
          return tenant.id;
        };
        const rotating = await make();
        const bystander = await make();
        const before = await state(bh, rotating);
        const bystanderBefore = await state(bh, bystander);
        assert.deepEqual(before.versions, [1]);
        await bh.close();

        const run = await runChild(CHILD, { ...env, ROTATE_TENANT: rotating, CRASH_AT: crashAt });
        assert.equal(run.signal, 'SIGKILL', `the child was to die in ${crashAt}; it exited with ${run.code}: ${run.stderr.slice(0, 2000)}`);

        bh = await Bulkhead.open(loadConfig({}, env), { resumeRotations: false });
        try {
          const [open] = await bh.keyRotations.list(rotating);
          assert.ok(open, 'the rotation was recorded');
          assert.equal(open.state, crashAt.split(':')[0], 'the rotation is in the state it was killed in');
          assert.deepEqual(await bh.keyRotations.resume(), [open.id]);
          await bh.keyRotations.wait(open.id);
          const end = await bh.keyRotations.get(rotating, open.id);
          assert.equal(end.state, 'done', JSON.stringify(end));
          assert.deepEqual([end.fromVersion, end.toVersion], [1, 2], 'exactly one new version, across the crash');
          const after = await state(bh, rotating);
          assert.deepEqual(after.keys, ['1:destroyed', '2:active']);
          assert.deepEqual(after.versions, [2], 'no value is left on the destroyed version');
          assert.deepEqual(after.clear, before.clear, 'every record reads back the same');
          const other = await state(bh, bystander);
          assert.deepEqual(other.keys, bystanderBefore.keys);
          assert.equal(other.raw, bystanderBefore.raw, 'the other tenant is untouched');
        } finally {
          await bh.close();
        }
      });
    }
  });
}
