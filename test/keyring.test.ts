/**
 * The keyring (src/crypto/keyring.ts) on every backend: per-tenant data and index keys made on
 * first use and stored only wrapped in `tenant_keys` beside the tenant's data; encryptions counted
 * in reserved blocks that survive a restart; rotation past the bound, also by two processes at
 * once; fail-closed reads of unknown, destroyed and transplanted keys; RLS on the key rows; the keys
 * carried by moves pool → bridge → silo; migration 6 on a bridge schema made before it.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createSecretKey, randomBytes, type KeyObject } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BACKENDS, createTenant, openTestBulkhead, request, type TestBulkhead } from './support/backends.js';
import { finished } from './support/moves.js';
import { rejectsSql } from './support/assertions.js';
import { TenantKeyring, type TenantKeyringOptions } from '../src/crypto/keyring.js';
import { JsonFileKmsStateStore, openLocalKms } from '../src/crypto/local-kms.js';
import type { Kms } from '../src/crypto/kms.js';
import { decryptField, encryptField } from '../src/crypto/field-cipher.js';
import { blindIndex } from '../src/crypto/blind-index.js';
import { BulkheadError, DecryptionFailedError, type ErrorCode } from '../src/errors.js';
import type { Engine } from '../src/store/engine.js';
import { BridgeTier } from '../src/placement/bridge-tier.js';

const DECRYPT_MESSAGE = new DecryptionFailedError().message;

/** A KMS that counts the wraps and unwraps it is asked for, around a real local one. */
function counting(kms: Kms): { kms: Kms; wraps: () => number; unwraps: () => number } {
  let wraps = 0;
  let unwraps = 0;
  return {
    kms: {
      provider: kms.provider,
      wrap: (region, key, context) => {
        wraps++;
        return kms.wrap(region, key, context);
      },
      wrapForTenant: (region, tenantId, key, context) => {
        wraps++;
        return kms.wrapForTenant(region, tenantId, key, context);
      },
      destroyTenantKey: (region, tenantId) => kms.destroyTenantKey(region, tenantId),
      tenantKeyInfo: (region, tenantId) => kms.tenantKeyInfo(region, tenantId),
      unwrap: (wrapped, context) => {
        unwraps++;
        return kms.unwrap(wrapped, context);
      },
      rewrap: (wrapped, context) => kms.rewrap(wrapped, context),
      rotateKek: (region) => kms.rotateKek(region),
      kekVersions: (region) => kms.kekVersions(region),
      destroyKekVersion: (region, version) => kms.destroyKekVersion(region, version),
      close: async () => {},
    },
    wraps: () => wraps,
    unwraps: () => unwraps,
  };
}

/**
 * A KMS whose wraps all wait until `n` wraps were asked for: keyrings that each make a key then
 * all found none before any of them inserts, so the race on the insert happens every time.
 */
function gated(kms: Kms, n: number): Kms {
  let arrived = 0;
  let open!: () => void;
  const gate = new Promise<void>((resolve) => {
    open = resolve;
  });
  return {
    ...counting(kms).kms,
    wrapForTenant: async (region, tenantId, key, context) => {
      if (++arrived >= n) open();
      const timeout = setTimeout(() => open(), 10_000);
      await gate;
      clearTimeout(timeout);
      assert.ok(arrived >= n, `only ${arrived} of ${n} wraps arrived: the keyrings did not race`);
      return kms.wrapForTenant(region, tenantId, key, context);
    },
  };
}

/** Asserts a BulkheadError of `code`; for CRYPTO_DECRYPT_FAILED also the one fixed message and no cause. */
async function rejectsCode(promise: Promise<unknown>, code: ErrorCode, what: string): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(error instanceof BulkheadError, `${what}: expected a BulkheadError, got ${String(error)}`);
    assert.equal(error.code, code, `${what}: code (${error.message})`);
    if (code === 'CRYPTO_DECRYPT_FAILED') {
      assert.equal(error.message, DECRYPT_MESSAGE, `${what}: message`);
      assert.equal(error.cause, undefined, `${what}: cause`);
    }
    return true;
  });
}

/** The raw bytes of a key in every spelling that could end up in a column. */
function spellings(key: KeyObject): string[] {
  const raw = key.export();
  return [raw.toString('hex'), raw.toString('base64'), raw.toString('base64url'), raw.toString('base64').replace(/=+$/, '')];
}

const binding = (tenantId: string, recordId: string) => ({ tenantId, collection: 'patients', field: 'ssn', recordId });

for (const kind of BACKENDS) {
  describe(`tenant keyring (${kind})`, () => {
    let t: TestBulkhead;
    /** The control database as the superuser (bypasses RLS). */
    let su: Engine;
    let kms: Kms;
    let kmsDir: string;
    let seq = 0;

    const regionOf = async (tenantId: string): Promise<string> => {
      const placed = await t.bh.placements.resolve(tenantId);
      if (!placed) throw new Error('no placement');
      return placed.region;
    };
    /** A keyring as one process would hold it (`options` over the test's KMS, the router and `regionOf`). */
    const keyring = (options: Partial<TenantKeyringOptions> = {}) => new TenantKeyring({ kms, scopes: t.bh.placements, regionOf, ...options });
    const tenant = (tier: 'pool' | 'bridge' | 'silo' = 'pool') => createTenant(t, `kr-${tier}-${++seq}-${kind}`, ['tenant_admin'], tier);

    /** The tenant's key rows where it lives now, read through its own scope (so through RLS). */
    async function keyRows(tenantId: string): Promise<Array<Record<string, unknown>>> {
      t.bh.placements.invalidate(tenantId);
      const [r] = await t.bh.placements.tenant(tenantId, { requireActive: false }).batch([
        {
          // Timestamps as epoch text: two databases compare equal whatever their time zones.
          text:
            'SELECT tenant_id, purpose, version, wrapped, state, reserved::text AS reserved, extract(epoch FROM created_at)::text AS created_at, ' +
            'extract(epoch FROM retired_at)::text AS retired_at FROM tenant_keys WHERE tenant_id = $1 ORDER BY purpose, version',
          values: [tenantId],
        },
      ]);
      return r!.rows;
    }
    const dataRows = async (tenantId: string) => (await keyRows(tenantId)).filter((r) => r.purpose === 'data');

    before(async () => {
      t = await openTestBulkhead(kind);
      su = await t.db.engine();
      kmsDir = mkdtempSync(join(tmpdir(), 'bulkhead-keyring-'));
      kms = await openLocalKms({ masterKey: createSecretKey(randomBytes(32)), state: new JsonFileKmsStateStore(join(kmsDir, 'kms-state.json')) });
    });
    after(async () => {
      await kms?.close();
      await t?.close();
      if (kmsDir) rmSync(kmsDir, { recursive: true, force: true });
    });

    // First: it re-runs migration 6, dropping the pool's table while no test has keys in it yet.
    it('migration 6 adds tenant_keys, with forced RLS and its grants, to a bridge schema made before it', async () => {
      const b = await tenant('bridge');
      const cell = t.bh.placements.control;
      const bridge = new BridgeTier();
      const schema = bridge.locationOf(cell, b.id);
      const role = bridge.roleOf(cell, b.id);
      // Back to the state before migration 6: no key table in the pool or in the bridge schema.
      await su.script(`DROP TABLE ${schema}.tenant_keys; DROP TABLE bulkhead.tenant_keys; DELETE FROM bulkhead.migrations WHERE version = 6;`);
      const [gone] = await su.batch([{ text: 'SELECT to_regclass($1) IS NULL AS gone', values: [`${schema}.tenant_keys`] }]);
      assert.equal(gone!.rows[0]!.gone, true);

      assert.deepEqual((await t.bh.store.migrate()).applied, [6]);
      const [table, grants, pool] = await su.batch([
        {
          text:
            'SELECT c.relrowsecurity, c.relforcerowsecurity, pg_get_userbyid(c.relowner) AS owner, ' +
            "(SELECT string_agg(pg_get_expr(p.polqual, p.polrelid), ' | ') FROM pg_policy p WHERE p.polrelid = c.oid) AS quals, " +
            "(SELECT count(*)::int FROM pg_index i WHERE i.indrelid = c.oid AND i.indisunique AND i.indpred IS NOT NULL) AS partial_unique " +
            'FROM pg_class c WHERE c.oid = $1::text::regclass',
          values: [`${schema}.tenant_keys`],
        },
        {
          text:
            "SELECT has_table_privilege($1::name, $2::text, 'SELECT') AS s, has_table_privilege($1::name, $2::text, 'INSERT') AS i, " +
            "has_table_privilege($1::name, $2::text, 'UPDATE') AS u, has_table_privilege($1::name, $2::text, 'DELETE') AS d, " +
            "has_table_privilege($1::name, $2::text, 'TRUNCATE') AS tr",
          values: [role, `${schema}.tenant_keys`],
        },
        { text: "SELECT has_table_privilege($1::name, 'bulkhead.tenant_keys', 'DELETE') AS d, has_table_privilege($1::name, 'bulkhead.tenant_keys', 'UPDATE') AS u", values: [t.db.appRole] },
      ]);
      const r = table!.rows[0]!;
      assert.deepEqual([r.relrowsecurity, r.relforcerowsecurity, r.owner, r.partial_unique], [true, true, t.db.ownerRole, 1]);
      assert.match(r.quals as string, /tenant_id = \(?NULLIF\(current_setting\('bulkhead\.tenant_id'::text, true\), ''::text\)\)?::uuid/i);
      assert.deepEqual(grants!.rows[0], { s: true, i: true, u: true, d: false, tr: false });
      assert.deepEqual(pool!.rows[0], { d: false, u: true });

      // And the keyring works there, through the bridge tenant's own role.
      const k = keyring();
      const { version, key } = await k.forEncrypt(b.id, 1);
      assert.equal(version, 1);
      assert.equal((await keyring().forDecrypt(b.id, 1)).export().equals(key.export()), true);
      const [inSchema] = await su.batch([{ text: `SELECT count(*)::int AS n FROM ${schema}.tenant_keys` }]);
      assert.equal(inSchema!.rows[0]!.n, 1);
    });

    it('makes one data key and one index key on first use, stored only wrapped under the tenant\'s own KEK in its region with a bound context', async () => {
      const a = await tenant();
      const k = keyring();
      const { version, key } = await k.forEncrypt(a.id, 1);
      const index = await k.indexKey(a.id);
      assert.equal(version, 1);
      assert.equal(key.symmetricKeySize, 32);
      assert.equal(index.symmetricKeySize, 32);
      assert.equal(key.export().equals(index.export()), false, 'the index key is its own key');

      const rows = await keyRows(a.id);
      assert.deepEqual(rows.map((r) => [r.purpose, r.version, r.state, r.retired_at]), [['data', 1, 'active', null], ['index', 1, 'active', null]]);
      const region = await regionOf(a.id);
      const text = JSON.stringify(rows);
      for (const [row, raw] of [[rows[0]!, key], [rows[1]!, index]] as const) {
        // Wrapped under the tenant's own key-encryption key (bht1), which an erasure destroys.
        assert.match(row.wrapped as string, new RegExp(`^bht1:local:${region}:${a.id}:[0-9a-f]{32}:[A-Za-z0-9_-]{80}$`));
        // The raw key is nowhere in the rows, in any spelling.
        for (const spelled of spellings(raw)) assert.ok(!text.includes(spelled), `the raw ${row.purpose as string} key is stored`);
        // What is stored is that key, wrapped with tenant, purpose and version bound in.
        const unwrapped = await kms.unwrap(row.wrapped as string, { tenant: a.id, purpose: row.purpose as string, version: '1' });
        assert.equal(Buffer.from(unwrapped).equals(raw.export()), true);
      }
      // The raw key is nowhere in the database either (the whole table, as the superuser).
      const [all] = await su.batch([{ text: 'SELECT coalesce(string_agg(t::text, \' \'), \'\') AS dump FROM bulkhead.tenant_keys t' }]);
      for (const spelled of [...spellings(key), ...spellings(index)]) assert.ok(!(all!.rows[0]!.dump as string).includes(spelled));

      // Cached: no second row, and the same keys again; another process (a new keyring) unwraps the same key.
      assert.equal((await k.forEncrypt(a.id, 1)).key, key);
      assert.equal(await k.indexKey(a.id), index);
      assert.equal((await keyRows(a.id)).length, 2);
      const recordId = '0191e5a1-1111-7111-8111-111111111111';
      const sealed = encryptField(key, version, binding(a.id, recordId), '123-45-6789');
      assert.equal(decryptField(await keyring().forDecrypt(a.id, 1), 1, binding(a.id, recordId), sealed), '123-45-6789');
      assert.equal((await keyring().indexKey(a.id)).export().equals(index.export()), true);
    });

    it('concurrent first calls make one key: in one process one load, across two processes one row', async () => {
      const a = await tenant();
      const one = counting(kms);
      const k = keyring({ kms: one.kms });
      const leases = await Promise.all(Array.from({ length: 10 }, () => k.forEncrypt(a.id, 1)));
      assert.equal(one.wraps(), 1, 'one key made');
      assert.equal(one.unwraps(), 1, 'one key unwrapped');
      for (const l of leases) assert.equal(l.key, leases[0]!.key);

      // Two processes: both find no key and both make one; one insert wins, the other reads it back.
      const b = await tenant();
      const racing = gated(kms, 4);
      const [p1, p2] = [counting(racing), counting(racing)];
      const [k1, k2] = [keyring({ kms: p1.kms }), keyring({ kms: p2.kms })];
      const both = await Promise.all([k1.forEncrypt(b.id, 1), k2.forEncrypt(b.id, 1), k1.indexKey(b.id), k2.indexKey(b.id)]);
      assert.deepEqual([p1.wraps(), p2.wraps()], [2, 2], 'each process made a data key and an index key');
      assert.equal(both[0].key.export().equals(both[1].key.export()), true, 'both processes use the one stored data key');
      assert.equal(both[2].export().equals(both[3].export()), true, 'both processes use the one stored index key');
      const rows = await keyRows(b.id);
      assert.deepEqual(rows.map((r) => [r.purpose, r.version, r.state]), [['data', 1, 'active'], ['index', 1, 'active']]);
      // Both blocks were reserved on the one key.
      assert.equal(rows[0]!.reserved, '2000');
    });

    it('reserves encryptions in blocks, one update per block, and a restarted process continues above the old count', async () => {
      const a = await tenant();
      const k = keyring({ reserveBlock: 10, maxEncryptions: 1_000 });
      await k.forEncrypt(a.id, 1);
      assert.equal((await dataRows(a.id))[0]!.reserved, '10');
      for (let i = 0; i < 9; i++) await k.forEncrypt(a.id, 1);
      assert.equal((await dataRows(a.id))[0]!.reserved, '10', 'the block serves 10 encryptions without an update');
      await k.forEncrypt(a.id, 1);
      assert.equal((await dataRows(a.id))[0]!.reserved, '20');
      // A call needing more than a block reserves whole blocks at once.
      await k.forEncrypt(a.id, 25);
      assert.equal((await dataRows(a.id))[0]!.reserved, '50');
      // A restart: the new process knows nothing of the old one's block and reserves above it.
      const restarted = keyring({ reserveBlock: 10, maxEncryptions: 1_000 });
      assert.equal((await restarted.forEncrypt(a.id, 1)).version, 1);
      assert.equal((await dataRows(a.id))[0]!.reserved, '60');
      // Concurrent callers in one process share the blocks: 30 encryptions, 3 blocks, whatever the interleaving.
      const fresh = await tenant();
      const c = keyring({ reserveBlock: 10, maxEncryptions: 1_000 });
      await Promise.all(Array.from({ length: 30 }, () => c.forEncrypt(fresh.id, 1)));
      assert.equal((await dataRows(fresh.id))[0]!.reserved, '30');
    });

    it('rotates past maxEncryptions: version 2 active, version 1 retired and still decrypting; a reservation beyond the bound is never used', async () => {
      const a = await tenant();
      const k = keyring({ reserveBlock: 10, maxEncryptions: 20 });
      const recordId = '0191e5a1-2222-7222-8222-222222222222';
      const first = await k.forEncrypt(a.id, 1);
      const sealed = encryptField(first.key, first.version, binding(a.id, recordId), { card: '4111' });
      for (let i = 1; i < 20; i++) assert.equal((await k.forEncrypt(a.id, 1)).version, 1, `encryption ${i + 1} is within the bound`);
      const second = await k.forEncrypt(a.id, 1);
      assert.equal(second.version, 2, 'the 21st encryption takes a new key');
      assert.equal(second.key.export().equals(first.key.export()), false);
      const rows = await dataRows(a.id);
      assert.deepEqual(rows.map((r) => [r.version, r.state]), [[1, 'retired'], [2, 'active']]);
      assert.notEqual(rows[0]!.retired_at, null);
      assert.equal(rows[1]!.reserved, '10');
      // Another process still reads the retired key, and encrypts with the new one.
      const other = keyring({ reserveBlock: 10, maxEncryptions: 20 });
      assert.deepEqual(decryptField(await other.forDecrypt(a.id, 1), 1, binding(a.id, recordId), sealed), { card: '4111' });
      assert.equal((await other.forEncrypt(a.id, 1)).version, 2);
      // A count larger than the bound can never be served by one key: the caller's bug.
      await rejectsCode(k.forEncrypt(a.id, 21), 'INTERNAL', 'count past the bound');
      await rejectsCode(k.forEncrypt(a.id, 0), 'INTERNAL', 'count 0');
    });

    it('two processes rotating at once end with one active key, both using it', async () => {
      const a = await tenant();
      const [k1, k2] = [keyring({ reserveBlock: 10, maxEncryptions: 20 }), keyring({ reserveBlock: 10, maxEncryptions: 20 })];
      // Each takes one block of version 1: the bound is reached, neither knows of the other.
      for (let i = 0; i < 10; i++) await Promise.all([k1.forEncrypt(a.id, 1), k2.forEncrypt(a.id, 1)]);
      assert.equal((await dataRows(a.id))[0]!.reserved, '20');
      const [l1, l2] = await Promise.all([k1.forEncrypt(a.id, 1), k2.forEncrypt(a.id, 1)]);
      assert.deepEqual([l1.version, l2.version], [2, 2]);
      assert.equal(l1.key.export().equals(l2.key.export()), true);
      const rows = await dataRows(a.id);
      assert.deepEqual(rows.map((r) => [r.version, r.state]), [[1, 'retired'], [2, 'active']]);
      assert.equal(rows[1]!.reserved, '20', 'each process reserved one block of version 2');
    });

    it('fails closed with the uniform CRYPTO_DECRYPT_FAILED for an unknown, impossible or destroyed version', async () => {
      const a = await tenant();
      const k = keyring();
      await rejectsCode(k.forDecrypt(a.id, 1), 'CRYPTO_DECRYPT_FAILED', 'a tenant with no keys');
      await k.forEncrypt(a.id, 1);
      for (const version of [2, 99, 0, -1, 1.5, 2 ** 31, 2 ** 32, Number.NaN]) {
        await rejectsCode(k.forDecrypt(a.id, version), 'CRYPTO_DECRYPT_FAILED', `version ${version}`);
      }
      // A destroyed key (crypto-shredding) is not served by a process that did not hold it.
      await su.batch([{ text: "UPDATE bulkhead.tenant_keys SET state = 'destroyed' WHERE tenant_id = $1 AND purpose = 'data' AND version = 1", values: [a.id] }]);
      await rejectsCode(keyring().forDecrypt(a.id, 1), 'CRYPTO_DECRYPT_FAILED', 'destroyed');
      // Not a tenant id: the caller's bug, before any lookup.
      await rejectsCode(k.forDecrypt('not-a-uuid', 1), 'INTERNAL', 'bad tenant id');
    });

    it('a tenant\'s key rows are invisible to, and unchangeable from, another tenant\'s scope (RLS)', async () => {
      const [a, b] = [await tenant(), await tenant()];
      const k = keyring();
      await k.forEncrypt(a.id, 1);
      await k.indexKey(a.id);
      await k.forEncrypt(b.id, 1);
      const before = await keyRows(a.id);
      const asB = t.bh.placements.tenant(b.id, { write: true });
      const [named, all, updated] = await asB.batch([
        { text: 'SELECT count(*)::int AS n FROM tenant_keys WHERE tenant_id = $1', values: [a.id] },
        { text: 'SELECT DISTINCT tenant_id FROM tenant_keys' },
        { text: "UPDATE tenant_keys SET state = 'retired', reserved = 0 WHERE tenant_id = $1", values: [a.id] },
      ]);
      assert.equal(named!.rows[0]!.n, 0);
      assert.deepEqual(all!.rows, [{ tenant_id: b.id }]);
      assert.equal(updated!.rowCount, 0);
      await rejectsSql(
        asB.batch([{ text: "INSERT INTO tenant_keys (tenant_id, purpose, version, wrapped) VALUES ($1, 'data', 7, 'bhk1:x')", values: [a.id] }]),
        '42501',
        /row-level security/,
        'insert a key row for another tenant',
      );
      // No DELETE for the application role, not even of its own rows.
      await rejectsSql(asB.batch([{ text: 'DELETE FROM tenant_keys WHERE tenant_id = $1', values: [b.id] }]), '42501', /permission denied/, 'delete own key rows');
      assert.deepEqual(await keyRows(a.id), before);
      // The keyring asked for B never returns A's key.
      assert.equal((await keyring().forDecrypt(b.id, 1)).export().equals((await keyring().forDecrypt(a.id, 1)).export()), false);
    });

    it('a wrapped key copied into another tenant\'s row or another slot does not unwrap: reads fail closed, writes refuse and change nothing', async () => {
      const [a, b] = [await tenant(), await tenant()];
      const k = keyring();
      await k.forEncrypt(a.id, 1);
      await k.indexKey(a.id);
      await k.forEncrypt(b.id, 1);
      await k.indexKey(b.id);
      const rowsA = await keyRows(a.id);
      const wrapped = (purpose: string) => rowsA.find((r) => r.purpose === purpose)!.wrapped as string;
      // B's rows now hold A's wrapped keys (an attacker with write access to the storage).
      await su.batch([
        { text: "UPDATE bulkhead.tenant_keys SET wrapped = $2 WHERE tenant_id = $1 AND purpose = 'data'", values: [b.id, wrapped('data')] },
        { text: "UPDATE bulkhead.tenant_keys SET wrapped = $2 WHERE tenant_id = $1 AND purpose = 'index'", values: [b.id, wrapped('index')] },
      ]);
      const before = await keyRows(b.id);
      const fresh = keyring();
      await rejectsCode(fresh.forDecrypt(b.id, 1), 'CRYPTO_DECRYPT_FAILED', 'A\'s data key in B\'s row');
      await rejectsCode(fresh.forEncrypt(b.id, 1), 'KMS_UNWRAP_FAILED', 'encrypt with A\'s data key in B\'s row');
      await rejectsCode(fresh.indexKey(b.id), 'KMS_UNWRAP_FAILED', 'A\'s index key in B\'s row');
      assert.deepEqual(await keyRows(b.id), before, 'nothing was written: no reservation, no new key');

      // Within one tenant: the data key in the index slot and the other way round.
      await su.batch([
        { text: "UPDATE bulkhead.tenant_keys SET wrapped = $2 WHERE tenant_id = $1 AND purpose = 'data'", values: [a.id, wrapped('index')] },
        { text: "UPDATE bulkhead.tenant_keys SET wrapped = $2 WHERE tenant_id = $1 AND purpose = 'index'", values: [a.id, wrapped('data')] },
      ]);
      await rejectsCode(keyring().forDecrypt(a.id, 1), 'CRYPTO_DECRYPT_FAILED', 'index key in the data slot');
      await rejectsCode(keyring().indexKey(a.id), 'KMS_UNWRAP_FAILED', 'data key in the index slot');
      // Relabelled to another version: the context binds the version too.
      await su.batch([
        { text: "UPDATE bulkhead.tenant_keys SET wrapped = $2 WHERE tenant_id = $1 AND purpose = 'data'", values: [a.id, wrapped('data')] },
        { text: "UPDATE bulkhead.tenant_keys SET version = 2 WHERE tenant_id = $1 AND purpose = 'data'", values: [a.id] },
      ]);
      await rejectsCode(keyring().forDecrypt(a.id, 2), 'CRYPTO_DECRYPT_FAILED', 'version relabelled');
    });

    it('moves carry the keys pool → bridge → silo: equal rows at each placement, none left behind, old ciphertexts still decrypt', async () => {
      const a = await tenant();
      const k = keyring({ reserveBlock: 5, maxEncryptions: 10 });
      const recordId = '0191e5a1-3333-7333-8333-333333333333';
      const v1 = await k.forEncrypt(a.id, 1);
      const sealed1 = encryptField(v1.key, v1.version, binding(a.id, recordId), 'first');
      for (let i = 0; i < 10; i++) await k.forEncrypt(a.id, 1);
      const v2 = await k.forEncrypt(a.id, 1);
      assert.equal(v2.version, 2);
      const sealed2 = encryptField(v2.key, v2.version, binding(a.id, recordId), 'second');
      const index = blindIndex(await k.indexKey(a.id), { collection: 'patients', field: 'ssn' }, 'x');
      let rows = await keyRows(a.id);
      assert.equal(rows.length, 3);

      // Encryptions go on while the tenant moves, one reservation (one key-row update) each: every
      // one that succeeded is counted at the target, and one may only fail as paused.
      const busy = keyring({ reserveBlock: 1 });
      let taken = 0;
      const moveTo = async (tier: 'bridge' | 'silo') => {
        const started = await request(t.app, 'POST', `/v1/tenants/${a.id}/moves`, { token: t.operatorToken, body: { tier } });
        assert.equal(started.status, 202, started.text);
        let running = true;
        const done = finished(t.bh, a.id, started.body.id).finally(() => {
          running = false;
        });
        while (running) {
          try {
            await busy.forEncrypt(a.id, 1);
            taken++;
          } catch (error) {
            assert.ok(error instanceof BulkheadError && error.code === 'TENANT_WRITES_PAUSED', `an encryption failed during the move: ${String(error)}`);
          }
          await new Promise((resolve) => setTimeout(resolve, 5));
        }
        const move = await done;
        assert.equal(move.state, 'done', move.error ?? '');
        assert.deepEqual(move.checksums!.source, move.checksums!.target);
        assert.deepEqual(Object.keys(move.checksums!.target).filter((key) => key.startsWith('tenant_keys/')).sort(), ['tenant_keys/data', 'tenant_keys/index']);
        return move;
      };

      let total = 0;
      for (const tier of ['bridge', 'silo'] as const) {
        const base = Number(rows[1]!.reserved);
        taken = 0;
        const move = await moveTo(tier);
        total += taken;
        const placed = await t.bh.placements.resolve(a.id);
        assert.equal(placed!.tier, tier);
        const moved = await keyRows(a.id);
        assert.equal(moved.length, 3);
        // Equal rows but for the count of the encryptions made meanwhile, which all reached the target.
        const withoutCount = (r: Array<Record<string, unknown>>) => r.map((row) => ({ ...row, reserved: row.purpose === 'data' && row.version === 2 ? 'n' : row.reserved }));
        assert.deepEqual(withoutCount(moved), withoutCount(rows), `${tier}: the key rows`);
        assert.equal(Number(moved[1]!.reserved), base + taken, `${tier}: every reservation that succeeded is counted at the target`);
        rows = moved;
        // Nothing left at the source: the pool's table (or the bridge schema, dropped with it).
        if (move.source.tier === 'pool') {
          const [left] = await su.batch([{ text: 'SELECT count(*)::int AS n FROM bulkhead.tenant_keys WHERE tenant_id = $1', values: [a.id] }]);
          assert.equal(left!.rows[0]!.n, 0, 'key rows left in the pool');
        } else {
          const [left] = await su.batch([{ text: 'SELECT to_regclass($1) IS NULL AS gone', values: [`${move.source.location}.tenant_keys`] }]);
          assert.equal(left!.rows[0]!.gone, true, 'the bridge schema is left');
        }
        // A process that never saw the keys reads both versions and the index key at the new placement.
        const fresh = keyring();
        assert.equal(decryptField(await fresh.forDecrypt(a.id, 1), 1, binding(a.id, recordId), sealed1), 'first');
        assert.equal(decryptField(await fresh.forDecrypt(a.id, 2), 2, binding(a.id, recordId), sealed2), 'second');
        assert.equal(blindIndex(await fresh.indexKey(a.id), { collection: 'patients', field: 'ssn' }, 'x'), index);
        // New encryptions go on with the same key version, counted at the new placement.
        assert.equal((await fresh.forEncrypt(a.id, 1)).version, 2);
        rows = await keyRows(a.id);
      }
      assert.ok(total > 0, 'encryptions ran during the moves');
    });
  });
}
