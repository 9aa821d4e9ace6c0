/**
 * The KMS layer: the local provider (master key from the environment or a 0600 key file, KEKs
 * derived per region and version) and the PKCS#11 provider against a SoftHSM2 token made here.
 * Every failed unwrap is the one KMS_UNWRAP_FAILED error; rotation keeps old wrapped keys
 * readable until their version is destroyed, and re-wraps them onto the newest version.
 * Tenant keys (crypto-shredding) run one shared suite against both providers: once a tenant key
 * is destroyed, no key wrapped under it before unwraps again, here or after a restart.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createDecipheriv, createHmac, createSecretKey, hkdfSync, randomBytes, randomUUID } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import pkcs11js from 'pkcs11js';
import type * as Pkcs11Types from 'pkcs11js';
import { BulkheadError, ERROR_CODES, type ErrorCode } from '../src/errors.js';
import { HTTP_STATUS } from '../src/http/problem.js';
import {
  DATA_KEY_BYTES,
  KmsUnwrapError,
  MAX_WRAPPED_KEY_CHARS,
  describeWrappedKey,
  generateDataKey,
  type Kms,
  type KmsContext,
  type KmsProvider,
} from '../src/crypto/kms.js';
import { JsonFileKmsStateStore, openLocalKms, parseMasterKey, type KmsState, type KmsStateStore } from '../src/crypto/local-kms.js';
import { DEFAULT_PKCS11_MODULE, kekLabel, tenantKeyDestroyedLabel, tenantKeyLabel } from '../src/crypto/pkcs11-kms.js';
import { openKms, parseKmsSettings, type Pkcs11KmsSettings } from '../src/crypto/kms-config.js';

const UNWRAP_MESSAGE = new KmsUnwrapError().message;
const TENANT_A = '0192f7c8-3b1a-7cde-8f00-00000000000a';
const TENANT_B = '0192f7c8-3b1a-7cde-8f00-00000000000b';
const CONTEXT: KmsContext = { tenant: TENANT_A, dataKeyVersion: '1' };

/** Asserts that `promise` rejects with a BulkheadError of `code` (and a message matching `message`). */
async function rejectsCode(promise: Promise<unknown>, code: ErrorCode, message?: RegExp, what = ''): Promise<BulkheadError> {
  let caught: BulkheadError | undefined;
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(error instanceof BulkheadError, `${what}: expected a BulkheadError, got ${String(error)}`);
    assert.equal(error.code, code, `${what}: ${error.message}`);
    if (message) assert.match(error.message, message, what);
    caught = error;
    return true;
  });
  return caught!;
}

/** Asserts the uniform unwrap failure: the code, the one fixed message, no cause, no details. */
async function unwrapFails(promise: Promise<unknown>, what: string): Promise<void> {
  const error = await rejectsCode(promise, 'KMS_UNWRAP_FAILED', undefined, what);
  assert.equal(error.message, UNWRAP_MESSAGE, `${what}: the message is fixed`);
  assert.equal(error.cause, undefined, `${what}: no cause`);
  assert.equal(error.details, undefined, `${what}: no details`);
}

/** The wrapped key with the payload byte at `index` XORed with `mask`. */
function flipPayloadBit(wrapped: string, index: number, mask = 1): string {
  const at = wrapped.lastIndexOf(':') + 1;
  const bytes = Buffer.from(wrapped.slice(at), 'base64url');
  bytes[index]! ^= mask;
  return wrapped.slice(0, at) + bytes.toString('base64url');
}

/** The wrapped key with header field `i` (0 format, 1 provider, 2 region, 3 version) replaced. */
function withField(wrapped: string, i: number, value: string): string {
  const parts = wrapped.split(':');
  parts[i] = value;
  return parts.join(':');
}

/** A CK_ULONG attribute value (8 bytes on 64-bit Linux, little-endian). */
function ulong(value: Buffer): number {
  return value.length === 8 ? Number(value.readBigUInt64LE(0)) : value.readUIntLE(0, value.length);
}

const WRAPPED_FORMAT = /^bhk1:(local|pkcs11):[a-z0-9-]+:[1-9][0-9]*:[A-Za-z0-9_-]{80}$/;
const TENANT_WRAPPED_FORMAT = /^bht1:(local|pkcs11):[a-z0-9-]+:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}:[0-9a-f]{32}:[A-Za-z0-9_-]{80}$/;
const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

/** The KEK version a region wrap names (a tenant wrap fails the test). */
function kekVersionOf(wrapped: string): number {
  const info = describeWrappedKey(wrapped);
  assert.equal(info.kind, 'region', 'a region wrap');
  return info.kind === 'region' ? info.kekVersion : 0;
}

/** The tenant key id a tenant wrap names (a region wrap fails the test). */
function keyIdOf(wrapped: string): string {
  const info = describeWrappedKey(wrapped);
  assert.equal(info.kind, 'tenant', 'a tenant wrap');
  return info.kind === 'tenant' ? info.keyId : '';
}

/** The context of data-key version `version` of `tenant`, as the keyring makes them. */
function contextOf(tenant: string, version = '1'): KmsContext {
  return { tenant, dataKeyVersion: version };
}

/**
 * The tenant-key tests, one suite for each provider. `place()` gives a test its own KMS (a state
 * directory, or the one test token), and its `open()` opens a provider there, as a restarted or a
 * second process would. Tenants are fresh random ids, so tests sharing a token never meet.
 */
function tenantKeyTests(provider: KmsProvider, place: () => { open(): Promise<Kms> }): void {
  const otherProvider = provider === 'local' ? 'pkcs11' : 'local';

  it('tenant keys: a key made on first use wraps and unwraps, in the bht1 format', async () => {
    const kms = await place().open();
    const tenant = randomUUID();
    assert.deepEqual(await kms.tenantKeyInfo('eu', tenant), { state: 'absent' });
    const dataKey = generateDataKey();
    const a = await kms.wrapForTenant('eu', tenant, dataKey, contextOf(tenant));
    const b = await kms.wrapForTenant('eu', tenant, dataKey, contextOf(tenant));
    assert.match(a, TENANT_WRAPPED_FORMAT);
    assert.ok(a.startsWith(`bht1:${provider}:eu:${tenant}:`), a);
    assert.ok(a.length <= MAX_WRAPPED_KEY_CHARS && MAX_WRAPPED_KEY_CHARS === 512, 'fits the database column');
    assert.notEqual(a, b, 'a fresh IV per wrap');
    const info = await kms.tenantKeyInfo('eu', tenant);
    assert.equal(info.state, 'active');
    assert.match(info.keyId ?? '', /^[0-9a-f]{32}$/);
    assert.deepEqual(describeWrappedKey(a), { kind: 'tenant', provider, region: 'eu', tenantId: tenant, keyId: info.keyId });
    assert.equal(keyIdOf(b), info.keyId, 'one key per tenant and region');
    assert.deepEqual(await kms.unwrap(a, contextOf(tenant)), dataKey);
    assert.deepEqual(await kms.unwrap(b, { dataKeyVersion: '1', tenant }), dataKey, 'entries in any order');
    // Each region has the tenant's own key there.
    const us = await kms.wrapForTenant('us', tenant, dataKey, contextOf(tenant));
    assert.notEqual(keyIdOf(us), info.keyId);
    assert.deepEqual(await kms.unwrap(us, contextOf(tenant)), dataKey);
    // rewrap keeps the tenant key, with a fresh IV.
    const again = await kms.rewrap(a, contextOf(tenant));
    assert.notEqual(again, a);
    assert.deepEqual(describeWrappedKey(again), describeWrappedKey(a));
    assert.deepEqual(await kms.unwrap(again, contextOf(tenant)), dataKey);
    // A context without a tenant entry is the caller's choice: the tenant is bound by the header.
    const plain = await kms.wrapForTenant('eu', tenant, dataKey, { purpose: 'fields' });
    assert.deepEqual(await kms.unwrap(plain, { purpose: 'fields' }), dataKey);
  });

  it("tenant keys: a wrap is bound to its tenant, its key and its context; another tenant's id fails", async () => {
    const kms = await place().open();
    const a = randomUUID();
    const b = randomUUID();
    const dataKey = generateDataKey();
    const wrapped = await kms.wrapForTenant('eu', a, dataKey, contextOf(a));
    const forB = await kms.wrapForTenant('eu', b, dataKey, contextOf(b));
    for (const context of [contextOf(b), contextOf(a, '2'), { tenant: a }, { ...contextOf(a), purpose: 'index' }, {}]) {
      await unwrapFails(kms.unwrap(wrapped, context), `context ${JSON.stringify(context)}`);
    }
    await unwrapFails(kms.unwrap(withField(wrapped, 3, b), contextOf(a)), "the header names tenant b");
    await unwrapFails(kms.unwrap(withField(wrapped, 3, b), contextOf(b)), 'the header and the context name tenant b');
    await unwrapFails(kms.unwrap(withField(wrapped, 4, keyIdOf(forB)), contextOf(a)), "tenant b's key id");
    await unwrapFails(kms.unwrap(withField(withField(wrapped, 3, b), 4, keyIdOf(forB)), contextOf(b)), "tenant b's whole header on a's payload");
    await unwrapFails(kms.unwrap(withField(wrapped, 4, '0'.repeat(32)), contextOf(a)), 'an unknown key id');
    await unwrapFails(kms.unwrap(withField(wrapped, 3, a.toUpperCase()), contextOf(a)), 'the tenant id in upper case');
    await unwrapFails(kms.unwrap(withField(wrapped, 2, 'us'), contextOf(a)), 'region edited');
    await unwrapFails(kms.unwrap(withField(wrapped, 1, otherProvider), contextOf(a)), 'provider edited');
    await unwrapFails(kms.unwrap(withField(wrapped, 0, 'bhk1'), contextOf(a)), 'format tag edited');
    await unwrapFails(kms.unwrap(`bhk1:${provider}:eu:1:${wrapped.split(':')[5]}`, contextOf(a)), 'the payload under a region header');
    for (const i of [0, 11, 12, 43, 44, 59]) await unwrapFails(kms.unwrap(flipPayloadBit(wrapped, i), contextOf(a)), `bit flipped in byte ${i}`);
    await unwrapFails(kms.unwrap(wrapped.slice(0, -1), contextOf(a)), 'truncated');
    await unwrapFails(kms.unwrap(`${wrapped}AAAA`, contextOf(a)), 'extended');
    await unwrapFails(kms.unwrap(`${wrapped}:${'A'.repeat(MAX_WRAPPED_KEY_CHARS)}`, contextOf(a)), 'longer than the column');
    assert.deepEqual(await kms.unwrap(forB, contextOf(b)), dataKey, "b's own wrap unwraps");
    // Wrapping under a's key a data key whose context says it is b's is a caller's bug.
    await rejectsCode(kms.wrapForTenant('eu', a, dataKey, contextOf(b)), 'KMS_INPUT_INVALID', /another tenant/);
  });

  it('tenant keys: the key survives a reopen of the provider', async () => {
    const { open } = place();
    const first = await open();
    const tenant = randomUUID();
    const dataKey = generateDataKey();
    const wrapped = await first.wrapForTenant('eu', tenant, dataKey, contextOf(tenant));
    const { keyId } = await first.tenantKeyInfo('eu', tenant);
    await first.close();
    await rejectsCode(first.wrapForTenant('eu', tenant, dataKey, contextOf(tenant)), 'KMS_UNAVAILABLE', /closed/);
    await rejectsCode(first.unwrap(wrapped, contextOf(tenant)), 'KMS_UNAVAILABLE', /closed/);
    const second = await open();
    assert.deepEqual(await second.unwrap(wrapped, contextOf(tenant)), dataKey);
    assert.deepEqual(await second.tenantKeyInfo('eu', tenant), { state: 'active', keyId });
    assert.equal(keyIdOf(await second.wrapForTenant('eu', tenant, dataKey, contextOf(tenant))), keyId, 'no new key after a restart');
  });

  it('tenant keys: once destroyed, keys wrapped before no longer unwrap, here, elsewhere and after a reopen; others are untouched', async () => {
    const { open } = place();
    const kms = await open();
    const second = await open(); // another process on the same KMS, which has used the key
    const gone = randomUUID();
    const kept = randomUUID();
    const dataKey = generateDataKey();
    // Copies taken before the erase, as in a database dump.
    const dump = await kms.wrapForTenant('eu', gone, dataKey, contextOf(gone));
    const dump2 = await kms.wrapForTenant('eu', gone, generateDataKey(), contextOf(gone, '2'));
    const keptWrapped = await kms.wrapForTenant('eu', kept, dataKey, contextOf(kept));
    const regionWrapped = await kms.wrap('eu', dataKey, contextOf(gone));
    assert.deepEqual(await second.unwrap(dump, contextOf(gone)), dataKey, 'the second instance holds the key too');
    const { keyId } = await kms.tenantKeyInfo('eu', gone);
    assert.ok(keyId);

    const before = Date.now();
    const destruction = await kms.destroyTenantKey('eu', gone);
    assert.deepEqual(destruction, { keyId, destroyedAt: destruction.destroyedAt, alreadyDestroyed: false });
    assert.match(destruction.destroyedAt, ISO_TIME);
    assert.ok(Math.abs(Date.parse(destruction.destroyedAt) - before) < 60_000, 'destroyedAt is now');
    await unwrapFails(kms.unwrap(dump, contextOf(gone)), 'a copy taken before the destroy');
    await unwrapFails(kms.unwrap(dump2, contextOf(gone, '2')), 'another copy taken before the destroy');
    await unwrapFails(kms.rewrap(dump, contextOf(gone)), 'rewrap after the destroy');
    await rejectsCode(kms.wrapForTenant('eu', gone, generateDataKey(), contextOf(gone)), 'KMS_TENANT_KEY_DESTROYED');
    assert.deepEqual(await kms.tenantKeyInfo('eu', gone), { state: 'destroyed', keyId });
    assert.deepEqual(await kms.unwrap(keptWrapped, contextOf(kept)), dataKey, 'other tenants keep their keys');
    assert.deepEqual(await kms.unwrap(regionWrapped, contextOf(gone)), dataKey, 'region wraps are not under the tenant key');
    assert.deepEqual(await kms.destroyTenantKey('eu', gone), { ...destruction, alreadyDestroyed: true }, 'idempotent');

    // The second instance: on a token, its handle died with the object; the local provider's copy
    // in memory goes at its next reading of the state (docs/encryption.md, the local provider's limits).
    if (provider === 'local') assert.deepEqual(await second.tenantKeyInfo('eu', gone), { state: 'destroyed', keyId });
    await unwrapFails(second.unwrap(dump, contextOf(gone)), 'the second instance');
    await rejectsCode(second.wrapForTenant('eu', gone, generateDataKey(), contextOf(gone)), 'KMS_TENANT_KEY_DESTROYED', undefined, 'the second instance');
    assert.deepEqual(await second.unwrap(keptWrapped, contextOf(kept)), dataKey);

    await kms.close();
    await second.close();
    const reopened = await open();
    await unwrapFails(reopened.unwrap(dump, contextOf(gone)), 'after a reopen');
    await rejectsCode(reopened.wrapForTenant('eu', gone, generateDataKey(), contextOf(gone)), 'KMS_TENANT_KEY_DESTROYED', undefined, 'after a reopen');
    assert.deepEqual(await reopened.tenantKeyInfo('eu', gone), { state: 'destroyed', keyId });
    assert.deepEqual(await reopened.destroyTenantKey('eu', gone), { ...destruction, alreadyDestroyed: true });
    assert.deepEqual(await reopened.unwrap(keptWrapped, contextOf(kept)), dataKey);
  });

  it('tenant keys: destroying a tenant that never had a key still refuses its later wraps', async () => {
    const { open } = place();
    const kms = await open();
    const tenant = randomUUID();
    const destruction = await kms.destroyTenantKey('eu', tenant);
    assert.deepEqual(destruction, { keyId: null, destroyedAt: destruction.destroyedAt, alreadyDestroyed: false });
    assert.match(destruction.destroyedAt, ISO_TIME);
    assert.deepEqual(await kms.tenantKeyInfo('eu', tenant), { state: 'destroyed' });
    await rejectsCode(kms.wrapForTenant('eu', tenant, generateDataKey(), contextOf(tenant)), 'KMS_TENANT_KEY_DESTROYED');
    // Destruction is per region: the erasure destroys the tenant's key in each region it has one.
    const us = await kms.wrapForTenant('us', tenant, generateDataKey(), contextOf(tenant));
    assert.equal(describeWrappedKey(us).region, 'us');
    await kms.close();
    const reopened = await open();
    await rejectsCode(reopened.wrapForTenant('eu', tenant, generateDataKey(), contextOf(tenant)), 'KMS_TENANT_KEY_DESTROYED', undefined, 'after a reopen');
    assert.deepEqual(await reopened.destroyTenantKey('eu', tenant), { ...destruction, alreadyDestroyed: true });
  });

  it('tenant keys: a bad tenant id, region, data key or context is KMS_INPUT_INVALID and makes nothing', async () => {
    const kms = await place().open();
    const tenant = randomUUID();
    const bad = ['', 'not-a-uuid', TENANT_A.toUpperCase(), `{${tenant}}`, tenant.replace(/-/g, ''), ` ${tenant}`, `${tenant}\n`, `${tenant}-eu`, 42, null, undefined];
    for (const id of bad as string[]) {
      const what = `tenant id ${JSON.stringify(id)}`;
      await rejectsCode(kms.wrapForTenant('eu', id, generateDataKey(), { purpose: 'x' }), 'KMS_INPUT_INVALID', /tenant id/, what);
      await rejectsCode(kms.destroyTenantKey('eu', id), 'KMS_INPUT_INVALID', /tenant id/, what);
      await rejectsCode(kms.tenantKeyInfo('eu', id), 'KMS_INPUT_INVALID', /tenant id/, what);
    }
    for (const region of ['', 'EU', 'eu/x', 'e'.repeat(33)]) {
      await rejectsCode(kms.wrapForTenant(region, tenant, generateDataKey(), contextOf(tenant)), 'KMS_INPUT_INVALID', /region/, `region ${region}`);
      await rejectsCode(kms.destroyTenantKey(region, tenant), 'KMS_INPUT_INVALID', /region/, `region ${region}`);
      await rejectsCode(kms.tenantKeyInfo(region, tenant), 'KMS_INPUT_INVALID', /region/, `region ${region}`);
    }
    await rejectsCode(kms.wrapForTenant('eu', tenant, new Uint8Array(31), contextOf(tenant)), 'KMS_INPUT_INVALID', /32 bytes/);
    await rejectsCode(kms.wrapForTenant('eu', tenant, generateDataKey(), {}), 'KMS_INPUT_INVALID', /context/);
    await rejectsCode(kms.wrapForTenant('eu', tenant, generateDataKey(), { tenant: 1 } as unknown as KmsContext), 'KMS_INPUT_INVALID', /context/);
    assert.deepEqual(await kms.tenantKeyInfo('eu', tenant), { state: 'absent' }, 'no key was made');
  });

  it('tenant keys: concurrent first wraps of one tenant make one key, and every wrap unwraps', async () => {
    const { open } = place();
    const kms = await open();
    const tenant = randomUUID();
    const keys = Array.from({ length: 8 }, () => generateDataKey());
    const wrapped = await Promise.all(keys.map((key, i) => kms.wrapForTenant('eu', tenant, key, contextOf(tenant, String(i + 1)))));
    const ids = new Set(wrapped.map(keyIdOf));
    assert.equal(ids.size, 1, 'one key id');
    for (const [i, w] of wrapped.entries()) assert.deepEqual(await kms.unwrap(w, contextOf(tenant, String(i + 1))), keys[i]);
    await kms.close();
    const reopened = await open();
    assert.deepEqual(await reopened.tenantKeyInfo('eu', tenant), { state: 'active', keyId: [...ids][0] }, 'the key kept is the key used');
    for (const [i, w] of wrapped.entries()) assert.deepEqual(await reopened.unwrap(w, contextOf(tenant, String(i + 1))), keys[i], 'after a reopen');
  });

  it('tenant keys: a destroy racing wraps leaves no wrap that unwraps afterwards', async () => {
    const kms = await place().open();
    const tenant = randomUUID();
    const wrap = () => kms.wrapForTenant('eu', tenant, generateDataKey(), contextOf(tenant));
    const settled = await Promise.allSettled([wrap(), wrap(), kms.destroyTenantKey('eu', tenant), wrap(), wrap()]);
    for (const [i, result] of settled.entries()) {
      if (i === 2) {
        assert.equal(result.status, 'fulfilled');
        continue;
      }
      if (result.status === 'fulfilled') {
        await unwrapFails(kms.unwrap(result.value as string, contextOf(tenant)), `wrap ${i}, made before the destroy`);
      } else {
        assert.ok(result.reason instanceof BulkheadError && result.reason.code === 'KMS_TENANT_KEY_DESTROYED', `wrap ${i}: ${String(result.reason)}`);
      }
    }
    assert.equal((await kms.tenantKeyInfo('eu', tenant)).state, 'destroyed');
  });
}

describe('KMS error codes', () => {
  it('are registered with a status', () => {
    for (const code of ['KMS_UNWRAP_FAILED', 'KMS_KEY_FILE_INSECURE', 'KMS_CONFIG_INVALID', 'KMS_KEK_NOT_FOUND', 'KMS_UNAVAILABLE', 'KMS_INPUT_INVALID'] as const) {
      assert.ok(ERROR_CODES[code].length > 0, code);
      assert.ok(HTTP_STATUS[code] >= 500, code);
    }
    // A destroyed tenant key is the state of an erased tenant, not a server fault.
    assert.ok(ERROR_CODES.KMS_TENANT_KEY_DESTROYED.length > 0);
    assert.ok(HTTP_STATUS.KMS_TENANT_KEY_DESTROYED >= 400 && HTTP_STATUS.KMS_TENANT_KEY_DESTROYED < 500);
  });
});

describe('local KMS', () => {
  let dir: string;
  let seq = 0;
  const open: Kms[] = [];

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'bulkhead-kms-'));
  });
  after(async () => {
    for (const kms of open) await kms.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** A fresh directory for one test. */
  function freshDir(): string {
    const d = join(dir, `case-${++seq}`);
    mkdirSync(d, { mode: 0o700 });
    return d;
  }

  /** Opens the local provider on `d` with the key file `d/master.key` (or `masterKey`). */
  async function openLocal(d: string, masterKey?: ReturnType<typeof createSecretKey>): Promise<Kms> {
    const kms = await openLocalKms({
      ...(masterKey ? { masterKey } : { keyFile: join(d, 'master.key') }),
      state: new JsonFileKmsStateStore(join(d, 'kms-state.json')),
    });
    open.push(kms);
    return kms;
  }

  it('wraps and unwraps a data key, with a fresh IV each time, in the documented format', async () => {
    const kms = await openLocal(freshDir());
    assert.equal(kms.provider, 'local');
    const dataKey = generateDataKey();
    assert.equal(dataKey.length, DATA_KEY_BYTES);
    assert.notDeepEqual(generateDataKey(), dataKey);
    const a = await kms.wrap('eu', dataKey, CONTEXT);
    const b = await kms.wrap('eu', dataKey, CONTEXT);
    assert.match(a, WRAPPED_FORMAT);
    assert.ok(a.startsWith('bhk1:local:eu:1:'), a);
    assert.notEqual(a, b, 'a fresh IV per wrap');
    assert.ok(!a.includes(Buffer.from(dataKey).toString('base64url').slice(0, 20)), 'the data key is not in the wrapped key');
    assert.deepEqual(describeWrappedKey(a), { kind: 'region', provider: 'local', region: 'eu', kekVersion: 1 });
    assert.deepEqual(await kms.unwrap(a, CONTEXT), dataKey);
    assert.deepEqual(await kms.unwrap(b, CONTEXT), dataKey);
    // The context is a set of entries: their order does not matter.
    assert.deepEqual(await kms.unwrap(a, { dataKeyVersion: '1', tenant: TENANT_A }), dataKey);
    assert.deepEqual(await kms.kekVersions('eu'), [1]);
    assert.deepEqual(await kms.kekVersions('us'), []);
  });

  it('unwraps a known-answer vector built from the documented format with node:crypto', async () => {
    const master = createSecretKey(Buffer.from('000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f', 'hex'));
    const kms = await openLocal(freshDir(), master);
    assert.deepEqual(await kms.kekVersions('eu'), []);
    await kms.rotateKek('eu'); // version 1 of eu exists from now on
    // HKDF-SHA-256(master, salt "bulkhead/kms/local/kek-salt/v1", info "bulkhead/kms/local/kek/v1\0eu\01"), then
    // AES-256-GCM with IV a0..ab and AAD ["bhk1","local","eu",1,[["dataKeyVersion","1"],["tenant",...]]].
    const vector = 'bhk1:local:eu:1:oKGio6SlpqeoqaqrQs0AFVB7Eg0p4v_2c4Duu8CRYYAbEsXXYUXDmS_tUmmj47MdWx83b1JSMGmldwzI';
    const context = { tenant: '0192f7c8-3b1a-7cde-8f00-000000000001', dataKeyVersion: '1' };
    const key = await kms.unwrap(vector, context);
    assert.equal(Buffer.from(key).toString('hex'), 'f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff00112233445566778899aabbccddeeff');
    await unwrapFails(kms.unwrap(vector, { ...context, dataKeyVersion: '2' }), 'vector, other context');
  });

  it('refuses a wrapped key under another context: other tenant, other data-key version, an entry more or less', async () => {
    const kms = await openLocal(freshDir());
    const wrapped = await kms.wrap('eu', generateDataKey(), CONTEXT);
    const others: KmsContext[] = [
      { tenant: TENANT_B, dataKeyVersion: '1' },
      { tenant: TENANT_A, dataKeyVersion: '2' },
      { tenant: TENANT_A },
      { tenant: TENANT_A, dataKeyVersion: '1', purpose: 'index' },
      { Tenant: TENANT_A, dataKeyVersion: '1' },
      { tenant: `${TENANT_A} `, dataKeyVersion: '1' },
      {},
    ];
    for (const context of others) await unwrapFails(kms.unwrap(wrapped, context), `context ${JSON.stringify(context)}`);
    await unwrapFails(kms.unwrap(wrapped, null as unknown as KmsContext), 'null context');
    await unwrapFails(kms.unwrap(wrapped, { tenant: 1 } as unknown as KmsContext), 'a number in the context');
  });

  it('refuses a wrapped key moved to another region or provider, or with its header edited', async () => {
    const kms = await openLocal(freshDir());
    const dataKey = generateDataKey();
    const wrapped = await kms.wrap('eu', dataKey, CONTEXT);
    await kms.wrap('us', generateDataKey(), CONTEXT); // us has a version 1 too
    await unwrapFails(kms.unwrap(withField(wrapped, 2, 'us'), CONTEXT), 'region edited to us');
    await unwrapFails(kms.unwrap(withField(wrapped, 2, 'eu2'), CONTEXT), 'region edited to an unknown one');
    await unwrapFails(kms.unwrap(withField(wrapped, 1, 'pkcs11'), CONTEXT), 'provider edited');
    await unwrapFails(kms.unwrap(withField(wrapped, 0, 'bhk2'), CONTEXT), 'format edited');
    await unwrapFails(kms.unwrap(withField(wrapped, 3, '01'), CONTEXT), 'version with a leading zero');
    // The same key wrapped for us does not unwrap as eu, and the other way round.
    const forUs = await kms.wrap('us', dataKey, CONTEXT);
    await unwrapFails(kms.unwrap(withField(forUs, 2, 'eu'), CONTEXT), 'us key presented as eu');
  });

  it('refuses a flipped bit anywhere in the payload', async () => {
    const kms = await openLocal(freshDir());
    const wrapped = await kms.wrap('eu', generateDataKey(), CONTEXT);
    for (let i = 0; i < 60; i++) {
      await unwrapFails(kms.unwrap(flipPayloadBit(wrapped, i, 1 << i % 8), CONTEXT), `bit flipped in byte ${i}`);
    }
  });

  it('refuses truncated, extended and malformed wrapped keys', async () => {
    const kms = await openLocal(freshDir());
    const wrapped = await kms.wrap('eu', generateDataKey(), CONTEXT);
    for (let length = 0; length < wrapped.length; length += 3) {
      await unwrapFails(kms.unwrap(wrapped.slice(0, length), CONTEXT), `truncated to ${length}`);
    }
    await unwrapFails(kms.unwrap(wrapped.slice(0, -1), CONTEXT), 'last character cut');
    await unwrapFails(kms.unwrap(`${wrapped}A`, CONTEXT), 'a character added');
    await unwrapFails(kms.unwrap(`${wrapped}AAAA`, CONTEXT), 'four characters (three bytes) added');
    await unwrapFails(kms.unwrap(` ${wrapped}`, CONTEXT), 'leading space');
    await unwrapFails(kms.unwrap(withField(wrapped, 4, `=${wrapped.slice(-79)}`), CONTEXT), 'a padding character in the payload');
    for (const junk of [undefined, null, 42, Buffer.from(wrapped), {}, 'x'.repeat(10_000)]) {
      await unwrapFails(kms.unwrap(junk as unknown as string, CONTEXT), `junk ${typeof junk}`);
    }
  });

  it('refuses an unknown KEK version, and unwraps a version rotated in by another process sharing the state', async () => {
    const d = freshDir();
    const kms = await openLocal(d);
    const dataKey = generateDataKey();
    const wrapped = await kms.wrap('eu', dataKey, CONTEXT);
    await unwrapFails(kms.unwrap(withField(wrapped, 3, '2'), CONTEXT), 'version 2 before it exists');
    await unwrapFails(kms.unwrap(withField(wrapped, 3, '9999999999'), CONTEXT), 'version beyond the limit');
    // A second process on the same key file and state rotates and wraps under version 2.
    const other = await openLocal(d);
    assert.equal(await other.rotateKek('eu'), 2);
    const v2 = await other.wrap('eu', dataKey, CONTEXT);
    assert.equal(kekVersionOf(v2), 2);
    assert.deepEqual(await kms.unwrap(v2, CONTEXT), dataKey, 'the first process reads the new version from the state');
  });

  it('creates the key file with mode 0600 and 32 bytes, and reads the same key again', async () => {
    const d = freshDir();
    const keyFile = join(d, 'sub', 'master.key');
    const state = new JsonFileKmsStateStore(join(d, 'sub', 'kms-state.json'));
    const first = await openLocalKms({ keyFile, state });
    const stat = statSync(keyFile);
    assert.equal(stat.mode & 0o777, 0o600);
    assert.equal(stat.size, 32);
    assert.equal(statSync(join(d, 'sub', 'kms-state.json')).mode & 0o777, 0o600, 'the state file is 0600 too');
    assert.ok(!readFileSync(join(d, 'sub', 'kms-state.json'), 'utf8').includes(readFileSync(keyFile).toString('base64')), 'the state holds no key');
    const dataKey = generateDataKey();
    const wrapped = await first.wrap('eu', dataKey, CONTEXT);
    await first.close();
    await rejectsCode(first.unwrap(wrapped, CONTEXT), 'KMS_UNAVAILABLE', /closed/);
    const second = await openLocalKms({ keyFile, state });
    open.push(second);
    assert.deepEqual(await second.unwrap(wrapped, CONTEXT), dataKey);
  });

  it('makes one key file when two processes start at once', async () => {
    const d = freshDir();
    const keyFile = join(d, 'master.key');
    const [a, b] = await Promise.all([
      openLocalKms({ keyFile, state: new JsonFileKmsStateStore(join(d, 'a.json')) }),
      openLocalKms({ keyFile, state: new JsonFileKmsStateStore(join(d, 'b.json')) }),
    ]);
    open.push(a, b);
    const dataKey = generateDataKey();
    await b.rotateKek('eu');
    assert.deepEqual(await b.unwrap(await a.wrap('eu', dataKey, CONTEXT), CONTEXT), dataKey, 'both hold the same master key');
  });

  it('refuses a key file that group or others can read or write, saying to chmod 600 it', async () => {
    for (const mode of [0o640, 0o604, 0o620, 0o602, 0o644, 0o660]) {
      const d = freshDir();
      const keyFile = join(d, 'master.key');
      writeFileSync(keyFile, randomBytes(32), { mode: 0o600 });
      chmodSync(keyFile, mode);
      const error = await rejectsCode(
        openLocalKms({ keyFile, state: new JsonFileKmsStateStore(join(d, 'kms-state.json')) }),
        'KMS_KEY_FILE_INSECURE',
        /chmod 600/,
        `mode ${mode.toString(8)}`,
      );
      assert.ok(error.message.includes(keyFile), 'names the file');
      assert.ok(!existsSync(join(d, 'kms-state.json')), 'nothing was written');
    }
  });

  it('refuses a state file that others can read or write', async () => {
    const d = freshDir();
    await (await openLocal(d)).close();
    chmodSync(join(d, 'kms-state.json'), 0o666);
    await rejectsCode(openLocal(d), 'KMS_KEY_FILE_INSECURE', /chmod 600/);
  });

  it('refuses a key file of the wrong size, and a directory in its place', async () => {
    for (const size of [0, 16, 31, 33, 44, 64]) {
      const d = freshDir();
      const keyFile = join(d, 'master.key');
      writeFileSync(keyFile, randomBytes(size), { mode: 0o600 });
      await rejectsCode(openLocalKms({ keyFile, state: new JsonFileKmsStateStore(join(d, 's.json')) }), 'KMS_CONFIG_INVALID', /not 32/, `size ${size}`);
    }
    const d = freshDir();
    mkdirSync(join(d, 'master.key'), { mode: 0o700 });
    await rejectsCode(openLocalKms({ keyFile: join(d, 'master.key'), state: new JsonFileKmsStateStore(join(d, 's.json')) }), 'KMS_CONFIG_INVALID');
  });

  it('refuses a master key other than the one the state was made with', async () => {
    const d = freshDir();
    await openLocal(d, createSecretKey(randomBytes(32)));
    await rejectsCode(openLocal(d, createSecretKey(randomBytes(32))), 'KMS_CONFIG_INVALID', /not the one/);
  });

  it('refuses a malformed state file', async () => {
    for (const text of ['{', '[]', '{"format":3,"keyCheck":"AAAAAAAAAAAAAAAAAAAAAA","regions":{},"tenantKeys":{}}', '{"format":1,"keyCheck":"x","regions":{}}']) {
      const d = freshDir();
      writeFileSync(join(d, 'kms-state.json'), text, { mode: 0o600 });
      await rejectsCode(openLocal(d), 'KMS_CONFIG_INVALID', undefined, text);
    }
    const d = freshDir();
    const kms = await openLocal(d);
    await kms.wrap('eu', generateDataKey(), CONTEXT);
    const state = JSON.parse(readFileSync(join(d, 'kms-state.json'), 'utf8'));
    state.regions.eu.destroyed = [1]; // a destroyed version not older than the newest
    writeFileSync(join(d, 'kms-state.json'), JSON.stringify(state), { mode: 0o600 });
    await rejectsCode(openLocal(d), 'KMS_CONFIG_INVALID');
  });

  it('rotates: new wraps use the newest KEK, old ones unwrap until destroyed, rewrap moves them to the newest', async () => {
    const kms = await openLocal(freshDir());
    const dataKey = generateDataKey();
    const v1 = await kms.wrap('eu', dataKey, CONTEXT);
    const other = await kms.wrap('us', generateDataKey(), CONTEXT);
    assert.equal(await kms.rotateKek('eu'), 2);
    assert.deepEqual(await kms.kekVersions('eu'), [1, 2]);
    assert.deepEqual(await kms.kekVersions('us'), [1], 'other regions keep their versions');
    const v2 = await kms.wrap('eu', dataKey, CONTEXT);
    assert.equal(kekVersionOf(v2), 2, 'new wraps use the newest version');
    assert.deepEqual(await kms.unwrap(v1, CONTEXT), dataKey, 'an old version still unwraps');
    const rewrapped = await kms.rewrap(v1, CONTEXT);
    assert.deepEqual(describeWrappedKey(rewrapped), { kind: 'region', provider: 'local', region: 'eu', kekVersion: 2 });
    assert.deepEqual(await kms.unwrap(rewrapped, CONTEXT), dataKey);
    await unwrapFails(kms.unwrap(rewrapped, { tenant: TENANT_B, dataKeyVersion: '1' }), 'rewrapped key, other tenant');
    await unwrapFails(kms.rewrap(v1, { tenant: TENANT_B, dataKeyVersion: '1' }), 'rewrap under another context');
    await unwrapFails(kms.rewrap(flipPayloadBit(v1, 20), CONTEXT), 'rewrap of a tampered key');

    // Version 1 retired: keys still on it no longer unwrap; the newest cannot be destroyed.
    await rejectsCode(kms.destroyKekVersion('eu', 2), 'KMS_INPUT_INVALID', /rotate/);
    await kms.destroyKekVersion('eu', 1);
    assert.deepEqual(await kms.kekVersions('eu'), [2]);
    await unwrapFails(kms.unwrap(v1, CONTEXT), 'destroyed version');
    await rejectsCode(kms.destroyKekVersion('eu', 1), 'KMS_KEK_NOT_FOUND');
    await rejectsCode(kms.destroyKekVersion('eu', 7), 'KMS_KEK_NOT_FOUND');
    assert.deepEqual(await kms.unwrap(v2, CONTEXT), dataKey);
    assert.ok((await kms.unwrap(other, CONTEXT)).length === 32);
  });

  it('gives concurrent rotations distinct versions', async () => {
    const kms = await openLocal(freshDir());
    const versions = await Promise.all([kms.rotateKek('eu'), kms.rotateKek('eu'), kms.rotateKek('eu')]);
    assert.deepEqual([...versions].sort(), [1, 2, 3]);
    assert.deepEqual(await kms.kekVersions('eu'), [1, 2, 3]);
  });

  it('keeps the KEK versions across a restart', async () => {
    const d = freshDir();
    const first = await openLocal(d);
    const dataKey = generateDataKey();
    const v1 = await first.wrap('eu', dataKey, CONTEXT);
    await first.rotateKek('eu');
    await first.rotateKek('eu');
    const v3 = await first.wrap('eu', dataKey, CONTEXT);
    await first.destroyKekVersion('eu', 2);
    await first.close();

    const second = await openLocal(d);
    assert.deepEqual(await second.kekVersions('eu'), [1, 3]);
    assert.deepEqual(await second.unwrap(v1, CONTEXT), dataKey);
    assert.deepEqual(await second.unwrap(v3, CONTEXT), dataKey);
    assert.equal(kekVersionOf(await second.wrap('eu', dataKey, CONTEXT)), 3);
    assert.equal(await second.rotateKek('eu'), 4);
  });

  it('checks what is handed to wrap: a 32-byte key, a region name, a context of string entries', async () => {
    const kms = await openLocal(freshDir());
    await rejectsCode(kms.wrap('eu', new Uint8Array(31), CONTEXT), 'KMS_INPUT_INVALID', /32 bytes/);
    await rejectsCode(kms.wrap('eu', new Uint8Array(33), CONTEXT), 'KMS_INPUT_INVALID');
    await rejectsCode(kms.wrap('eu', 'k'.repeat(32) as unknown as Uint8Array, CONTEXT), 'KMS_INPUT_INVALID');
    for (const region of ['', 'EU', 'eu_west', '-eu', 'e'.repeat(33), 'eu:1']) {
      await rejectsCode(kms.wrap(region, generateDataKey(), CONTEXT), 'KMS_INPUT_INVALID', /region/, `region ${region}`);
    }
    for (const context of [{}, { tenant: 1 }, { 'bad key': 'x' }, { tenant: 'x'.repeat(257) }, Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`k${i}`, 'v'])), new Map()]) {
      await rejectsCode(kms.wrap('eu', generateDataKey(), context as unknown as KmsContext), 'KMS_INPUT_INVALID', /context/);
    }
    await rejectsCode(kms.rotateKek('Eu'), 'KMS_INPUT_INVALID');
    await rejectsCode(kms.destroyKekVersion('eu', 0), 'KMS_INPUT_INVALID');
    assert.deepEqual(await kms.kekVersions('eu'), [], 'nothing was made');
  });

  it('parses a master key from hex or base64 and refuses anything else without echoing it', async () => {
    const raw = randomBytes(32);
    const d = freshDir();
    const fromHex = await openLocal(d, parseMasterKey(raw.toString('hex')));
    const fromBase64 = await openLocal(d, parseMasterKey(raw.toString('base64')));
    const fromBase64Url = await openLocal(d, parseMasterKey(`${raw.toString('base64url')}\n`));
    const dataKey = generateDataKey();
    const wrapped = await fromHex.wrap('eu', dataKey, CONTEXT);
    assert.deepEqual(await fromBase64.unwrap(wrapped, CONTEXT), dataKey);
    assert.deepEqual(await fromBase64Url.unwrap(wrapped, CONTEXT), dataKey);

    const bad = [
      randomBytes(31).toString('hex'),
      randomBytes(33).toString('hex'),
      randomBytes(31).toString('base64'),
      randomBytes(33).toString('base64'),
      randomBytes(16).toString('base64'),
      'correct horse battery staple correct horse battery',
      `${raw.toString('hex').slice(0, 63)}g`,
      Buffer.alloc(32).toString('hex'),
      // 43 base64 characters whose two spare bits are not zero: another spelling of some key.
      `${raw.toString('base64').slice(0, 42)}B=`,
    ];
    for (const text of bad) {
      assert.throws(
        () => parseKmsSettings({}, { BULKHEAD_MASTER_KEY: text }, { dataDir: d }),
        (error: unknown) => {
          assert.ok(error instanceof BulkheadError);
          assert.equal(error.code, 'KMS_CONFIG_INVALID');
          assert.match(error.message, /BULKHEAD_MASTER_KEY/);
          assert.ok(!error.message.includes(text.trim().slice(0, 16)), 'the value is not echoed');
          return true;
        },
        `master key ${text.length} characters`,
      );
    }
  });

  tenantKeyTests('local', () => {
    const d = freshDir();
    return { open: () => openLocal(d) };
  });

  // `any` on purpose: the tests read and edit the state file at any depth, its shape being what the provider checks.
  type StateJson = Record<string, any>;

  /** The state file of `d`, parsed. */
  function stateOf(d: string): StateJson {
    return JSON.parse(readFileSync(join(d, 'kms-state.json'), 'utf8')) as StateJson;
  }

  /** Writes `state` as the state file of `d`. */
  function writeState(d: string, state: unknown): void {
    writeFileSync(join(d, 'kms-state.json'), JSON.stringify(state), { mode: 0o600 });
  }

  /**
   * Opens a tenant key of the state as docs/encryption.md says, with node:crypto alone: AES-256-GCM
   * under the region KEK (HKDF of the master key) with the entry's place as associated data.
   */
  function openSealedTenantKey(master: Buffer, region: string, tenantId: string, entry: { keyId: string; kekVersion: number; sealed: string }): Buffer {
    const kek = Buffer.from(hkdfSync('sha256', master, 'bulkhead/kms/local/kek-salt/v1', `bulkhead/kms/local/kek/v1\u0000${region}\u0000${entry.kekVersion}`, 32));
    const bytes = Buffer.from(entry.sealed, 'base64url');
    const decipher = createDecipheriv('aes-256-gcm', kek, bytes.subarray(0, 12), { authTagLength: 16 });
    decipher.setAAD(Buffer.from(JSON.stringify(['bulkhead/kms/local/tenant-key/v1', region, tenantId, entry.keyId, entry.kekVersion]), 'utf8'));
    decipher.setAuthTag(bytes.subarray(44));
    return Buffer.concat([decipher.update(bytes.subarray(12, 44)), decipher.final()]);
  }

  it('tenant keys: random, sealed under the region KEK in the state, never in clear, and gone from it once destroyed', async () => {
    const d = freshDir();
    const master = randomBytes(32);
    const kms = await openLocal(d, createSecretKey(master));
    const gone = randomUUID();
    const kept = randomUUID();
    const dataKey = generateDataKey();
    const dump = await kms.wrapForTenant('eu', gone, dataKey, contextOf(gone));
    await kms.wrapForTenant('eu', kept, generateDataKey(), contextOf(kept));
    const path = join(d, 'kms-state.json');
    const beforeText = readFileSync(path, 'utf8');
    const before = JSON.parse(beforeText);
    assert.equal(before.format, 2);
    const entry = before.tenantKeys.eu[gone];
    assert.deepEqual(Object.keys(entry).sort(), ['kekVersion', 'keyId', 'sealed', 'state']);
    assert.equal(entry.state, 'active');
    assert.equal(entry.keyId, keyIdOf(dump));
    const tenantKey = openSealedTenantKey(master, 'eu', gone, entry);
    assert.notDeepEqual(tenantKey, openSealedTenantKey(master, 'eu', kept, before.tenantKeys.eu[kept]), 'a key of its own per tenant');
    const forms = (key: Buffer): string[] => [key.toString('hex'), key.toString('hex').toUpperCase(), key.toString('base64'), key.toString('base64url'), key.toString('base64url').slice(0, 16)];
    for (const form of forms(tenantKey)) assert.ok(!beforeText.includes(form), 'the state holds no tenant key in clear');

    const destruction = await kms.destroyTenantKey('eu', gone);
    const afterText = readFileSync(path, 'utf8');
    const after = JSON.parse(afterText);
    assert.deepEqual(after.tenantKeys.eu[gone], { state: 'destroyed', keyId: entry.keyId, destroyedAt: destruction.destroyedAt });
    assert.ok(!afterText.includes(entry.sealed), 'the sealed key is gone from the state');
    for (const form of forms(tenantKey)) assert.ok(!afterText.includes(form), 'no form of the key either');
    assert.deepEqual(after.tenantKeys.eu[kept], before.tenantKeys.eu[kept], "other tenants' entries are untouched");
    assert.equal(statSync(path).mode & 0o777, 0o600);
    assert.deepEqual(readdirSync(d).filter((name) => name.endsWith('.tmp')), [], 'no temporary copy of the old state is left');

    // The documented limit of this provider: a copy of the state taken before the erase, with the
    // master key, still opens the key. Physical destruction needs pkcs11.
    const copy = freshDir();
    writeFileSync(join(copy, 'kms-state.json'), beforeText, { mode: 0o600 });
    const fromCopy = await openLocal(copy, createSecretKey(master));
    assert.deepEqual(await fromCopy.unwrap(dump, contextOf(gone)), dataKey);
  });

  it('tenant keys: unwraps the known-answer vector built from the documented formats with node:crypto, and wraps in that format', async () => {
    const d = freshDir();
    const master = Buffer.from('000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f', 'hex');
    const tenant = '0192f7c8-3b1a-7cde-8f00-000000000001';
    const keyId = '00112233445566778899aabbccddeeff';
    // The tenant key c0..df sealed with IV b0..bb under the KEK of eu version 1, AAD
    // ["bulkhead/kms/local/tenant-key/v1","eu",tenant,keyId,1]; the data key f0f1…eeff wrapped
    // under it with IV a0..ab and the context {tenant, dataKeyVersion: "1"}.
    const sealed = 'sLGys7S1tre4ubq70iO8FeSabglFgBjH2MJDZDfqgmjxqJ-8V2ZgY2YNwvnXfkRvgUSymERI6g4QqgXr';
    const vector = `bht1:local:eu:${tenant}:${keyId}:oKGio6SlpqeoqaqrJsbnkmem-ppJwnzoSsyl46AED-TII6kSvz4JfkALlRfJOv378IGwVPPTbk__nPhO`;
    const keyCheck = createHmac('sha256', master).update('bulkhead/kms/local/key-check/v1').digest().subarray(0, 16).toString('base64url');
    writeState(d, {
      format: 2,
      keyCheck,
      regions: { eu: { current: 1, destroyed: [] } },
      tenantKeys: { eu: { [tenant]: { state: 'active', keyId, kekVersion: 1, sealed } } },
    });
    const tenantKey = openSealedTenantKey(master, 'eu', tenant, { keyId, kekVersion: 1, sealed });
    assert.equal(tenantKey.toString('hex'), 'c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf');
    const kms = await openLocal(d, createSecretKey(master));
    assert.equal(Buffer.from(await kms.unwrap(vector, contextOf(tenant))).toString('hex'), 'f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff00112233445566778899aabbccddeeff');
    await unwrapFails(kms.unwrap(vector, contextOf(tenant, '2')), 'vector, other context');
    assert.deepEqual(await kms.tenantKeyInfo('eu', tenant), { state: 'active', keyId });

    // And the other way: a wrap by the provider opens with node:crypto and the documented AAD.
    const dataKey = generateDataKey();
    const wrapped = await kms.wrapForTenant('eu', tenant, dataKey, { purpose: 'fields', tenant });
    const payload = Buffer.from(wrapped.split(':')[5]!, 'base64url');
    const decipher = createDecipheriv('aes-256-gcm', tenantKey, payload.subarray(0, 12), { authTagLength: 16 });
    decipher.setAAD(Buffer.from(JSON.stringify(['bht1', 'local', 'eu', tenant, keyId, [['purpose', 'fields'], ['tenant', tenant]]]), 'utf8'));
    decipher.setAuthTag(payload.subarray(44));
    assert.deepEqual(Buffer.concat([decipher.update(payload.subarray(12, 44)), decipher.final()]), Buffer.from(dataKey));
  });

  it('tenant keys: rotating the region KEK re-seals them, so the old KEK version can be destroyed', async () => {
    const d = freshDir();
    const kms = await openLocal(d);
    const tenant = randomUUID();
    const dataKey = generateDataKey();
    const wrapped = await kms.wrapForTenant('eu', tenant, dataKey, contextOf(tenant));
    const elsewhere = await kms.wrapForTenant('us', tenant, dataKey, contextOf(tenant));
    const v1 = stateOf(d).tenantKeys.eu[tenant];
    assert.equal(v1.kekVersion, 1);
    assert.equal(await kms.rotateKek('eu'), 2);
    const v2 = stateOf(d).tenantKeys.eu[tenant];
    assert.deepEqual([v2.kekVersion, v2.keyId], [2, v1.keyId], 'the same key, sealed under version 2');
    assert.notEqual(v2.sealed, v1.sealed);
    assert.equal(stateOf(d).tenantKeys.us[tenant].kekVersion, 1, "other regions' tenant keys stay");
    await kms.destroyKekVersion('eu', 1);
    assert.deepEqual(await kms.unwrap(wrapped, contextOf(tenant)), dataKey);
    await kms.close();
    const reopened = await openLocal(d);
    assert.deepEqual(await reopened.unwrap(wrapped, contextOf(tenant)), dataKey, 'a new process opens the key under version 2');
    assert.deepEqual(await reopened.unwrap(elsewhere, contextOf(tenant)), dataKey);
    const newcomer = randomUUID();
    await reopened.wrapForTenant('eu', newcomer, dataKey, contextOf(newcomer));
    assert.equal(stateOf(d).tenantKeys.eu[newcomer].kekVersion, 2, 'new tenant keys are sealed under the newest version');
    await reopened.close();

    // A state where a tenant key is still on an old version (written before rotations re-sealed):
    // destroying that version moves it to the newest first.
    const state = stateOf(d);
    state.regions.us.current = 2;
    writeState(d, state);
    const third = await openLocal(d);
    await third.destroyKekVersion('us', 1);
    assert.equal(stateOf(d).tenantKeys.us[tenant].kekVersion, 2);
    await third.close();
    assert.deepEqual(await (await openLocal(d)).unwrap(elsewhere, contextOf(tenant)), dataKey);
  });

  it('tenant keys: reads a format-1 state and refuses malformed tenant entries', async () => {
    const d = freshDir();
    const master = createSecretKey(randomBytes(32));
    const first = await openLocal(d, master);
    const dataKey = generateDataKey();
    const regionWrapped = await first.wrap('eu', dataKey, CONTEXT);
    await first.close();
    const old = stateOf(d);
    delete old.tenantKeys;
    old.format = 1;
    writeState(d, old); // as the release before tenant keys wrote it
    const second = await openLocal(d, master);
    assert.deepEqual(await second.unwrap(regionWrapped, CONTEXT), dataKey);
    const tenant = randomUUID();
    const gone = randomUUID();
    await second.wrapForTenant('eu', tenant, dataKey, contextOf(tenant));
    await second.destroyTenantKey('eu', gone);
    await second.close();
    const good = stateOf(d);
    assert.equal(good.format, 2, 'written in the new format from the first change');
    assert.ok(await openLocal(d, master));

    const edits: [string, (s: StateJson) => void][] = [
      ['format 1 with tenant keys', (s) => (s.format = 1)],
      ['format 2 without tenant keys', (s) => delete s.tenantKeys],
      ['format 3', (s) => (s.format = 3)],
      ['tenantKeys an array', (s) => (s.tenantKeys = [])],
      ['a region not a region name', (s) => (s.tenantKeys.EU = s.tenantKeys.eu)],
      ['a tenant id not canonical', (s) => (s.tenantKeys.eu[tenant.toUpperCase()] = s.tenantKeys.eu[tenant])],
      ['an unknown state', (s) => (s.tenantKeys.eu[tenant].state = 'retired')],
      ['a member more', (s) => (s.tenantKeys.eu[tenant].key = 'AAAA')],
      ['a member less', (s) => delete s.tenantKeys.eu[tenant].keyId],
      ['a key id not 32 hex digits', (s) => (s.tenantKeys.eu[tenant].keyId = 'ABCDEF')],
      ['a KEK version beyond the newest', (s) => (s.tenantKeys.eu[tenant].kekVersion = 2)],
      ['a KEK version 0', (s) => (s.tenantKeys.eu[tenant].kekVersion = 0)],
      ['a KEK version destroyed', (s) => { s.regions.eu = { current: 2, destroyed: [1] }; }],
      ['a key in a region without KEK', (s) => (s.tenantKeys.us = { [tenant]: s.tenantKeys.eu[tenant] })],
      ['a sealed key too short', (s) => (s.tenantKeys.eu[tenant].sealed = s.tenantKeys.eu[tenant].sealed.slice(1))],
      ['a sealed key with padding', (s) => (s.tenantKeys.eu[tenant].sealed = `${s.tenantKeys.eu[tenant].sealed.slice(1)}=`)],
      ['a destroyed entry keeping its sealed key', (s) => (s.tenantKeys.eu[gone].sealed = s.tenantKeys.eu[tenant].sealed)],
      ['a destroyed entry with no time', (s) => delete s.tenantKeys.eu[gone].destroyedAt],
      ['a destroyed entry with a bad time', (s) => (s.tenantKeys.eu[gone].destroyedAt = 'yesterday')],
      ['a destroyed entry with a bad key id', (s) => (s.tenantKeys.eu[gone].keyId = 42)],
    ];
    for (const [what, edit] of edits) {
      const state = structuredClone(good);
      edit(state);
      writeState(d, state);
      await rejectsCode(openLocal(d, master), 'KMS_CONFIG_INVALID', /restore/, what);
    }
  });

  it("tenant keys: a sealed key moved into another tenant's entry does not open", async () => {
    const d = freshDir();
    const kms = await openLocal(d);
    const a = randomUUID();
    const b = randomUUID();
    const dataKey = generateDataKey();
    const forA = await kms.wrapForTenant('eu', a, dataKey, contextOf(a));
    const forB = await kms.wrapForTenant('eu', b, dataKey, contextOf(b));
    await kms.close();
    const state = stateOf(d);
    const entryA = state.tenantKeys.eu[a];
    state.tenantKeys.eu[a] = { ...state.tenantKeys.eu[b], keyId: entryA.keyId }; // b's key in a's place
    writeState(d, state);
    const reopened = await openLocal(d);
    await unwrapFails(reopened.unwrap(forA, contextOf(a)), "a's wrap with b's sealed key in a's entry");
    await rejectsCode(reopened.wrapForTenant('eu', a, dataKey, contextOf(a)), 'KMS_CONFIG_INVALID', /restore/);
    assert.deepEqual(await reopened.unwrap(forB, contextOf(b)), dataKey, "b's own entry still opens");
  });

  it('tenant keys: wraps and unwraps under a known tenant key read no state file, nor do refusals after a destroy', async () => {
    const d = freshDir();
    const inner = new JsonFileKmsStateStore(join(d, 'kms-state.json'));
    const counts = { loads: 0, saves: 0 };
    const store: KmsStateStore = {
      load: () => {
        counts.loads++;
        return inner.load();
      },
      save: (state: KmsState) => {
        counts.saves++;
        return inner.save(state);
      },
    };
    const kms = await openLocalKms({ masterKey: createSecretKey(randomBytes(32)), state: store });
    open.push(kms);
    const tenant = randomUUID();
    const first = await kms.wrapForTenant('eu', tenant, generateDataKey(), contextOf(tenant));
    const after = { ...counts };
    for (let i = 0; i < 20; i++) {
      const dataKey = generateDataKey();
      assert.deepEqual(await kms.unwrap(await kms.wrapForTenant('eu', tenant, dataKey, contextOf(tenant)), contextOf(tenant)), dataKey);
    }
    await kms.unwrap(first, contextOf(tenant));
    assert.deepEqual(counts, after, 'no state read or written for a known key');
    await kms.destroyTenantKey('eu', tenant);
    const destroyed = { ...counts };
    for (let i = 0; i < 5; i++) {
      await unwrapFails(kms.unwrap(first, contextOf(tenant)), 'after the destroy');
      await rejectsCode(kms.wrapForTenant('eu', tenant, generateDataKey(), contextOf(tenant)), 'KMS_TENANT_KEY_DESTROYED');
    }
    assert.deepEqual(counts, destroyed, 'a destroyed key is refused from memory');
  });
});

describe('KMS settings', () => {
  const dataDir = join(tmpdir(), 'bulkhead-kms-settings');
  const hexKey = randomBytes(32).toString('hex');

  /** Asserts KMS_CONFIG_INVALID naming `setting`. */
  function refused(section: unknown, env: Record<string, string>, setting: RegExp): void {
    assert.throws(
      () => parseKmsSettings(section, env, { dataDir }),
      (error: unknown) => {
        assert.ok(error instanceof BulkheadError);
        assert.equal(error.code, 'KMS_CONFIG_INVALID');
        assert.match(error.message, setting);
        for (const secret of Object.values(env)) if (secret.length >= 8) assert.ok(!error.message.includes(secret), 'no value echoed');
        return true;
      },
    );
  }

  it('defaults to the local provider with <dataDir>/master.key and the state beside it, frozen', () => {
    const s = parseKmsSettings(undefined, {}, { dataDir });
    assert.deepEqual(s, { provider: 'local', masterKey: undefined, keyFile: join(dataDir, 'master.key'), stateFile: join(dataDir, 'kms-state.json') });
    assert.ok(Object.isFrozen(s));
    const t = parseKmsSettings({ keyFile: '/srv/keys/bh.key' }, { BULKHEAD_MASTER_KEY: '' }, { dataDir });
    assert.equal(t.provider === 'local' && t.keyFile, '/srv/keys/bh.key');
    assert.equal(t.provider === 'local' && t.stateFile, '/srv/keys/kms-state.json');
    assert.equal(t.provider === 'local' && t.masterKey, undefined, 'an empty variable counts as unset');
  });

  it('lets the environment win over the file', () => {
    const s = parseKmsSettings({ provider: 'pkcs11', keyFile: '/from/file' }, { BULKHEAD_KMS_PROVIDER: 'local', BULKHEAD_KMS_KEY_FILE: '/from/env/master.key' }, { dataDir });
    assert.equal(s.provider, 'local');
    assert.equal(s.provider === 'local' && s.keyFile, '/from/env/master.key');
    const p = parseKmsSettings(
      { provider: 'pkcs11', pkcs11Token: 'file-token', pkcs11Module: '/file/module.so' },
      { BULKHEAD_PKCS11_TOKEN: 'env-token', BULKHEAD_PKCS11_PIN: '123456' },
      { dataDir },
    ) as Pkcs11KmsSettings;
    assert.equal(p.provider, 'pkcs11');
    assert.equal(p.token, 'env-token');
    assert.equal(p.module, '/file/module.so');
    assert.equal(p.pin.reveal(), '123456');
    const q = parseKmsSettings({}, { BULKHEAD_KMS_PROVIDER: 'pkcs11', BULKHEAD_PKCS11_TOKEN: 't', BULKHEAD_PKCS11_PIN: '1234' }, { dataDir }) as Pkcs11KmsSettings;
    assert.equal(q.module, DEFAULT_PKCS11_MODULE);
  });

  it('never shows a secret in JSON or inspect', () => {
    const pin = 'pin-9f8e7d6c5b4a';
    const p = parseKmsSettings({}, { BULKHEAD_KMS_PROVIDER: 'pkcs11', BULKHEAD_PKCS11_TOKEN: 't', BULKHEAD_PKCS11_PIN: pin }, { dataDir });
    assert.ok(!JSON.stringify(p).includes(pin));
    assert.ok(!inspect(p, { depth: 5 }).includes(pin));
    assert.ok(!`${(p as Pkcs11KmsSettings).pin}`.includes(pin));
    const l = parseKmsSettings({}, { BULKHEAD_MASTER_KEY: hexKey }, { dataDir });
    assert.ok(l.provider === 'local' && l.masterKey !== undefined);
    for (const text of [JSON.stringify(l), inspect(l, { depth: 5 })]) {
      assert.ok(!text.includes(hexKey) && !text.includes(Buffer.from(hexKey, 'hex').toString('base64')), text);
    }
  });

  it('refuses bad settings, naming the setting', () => {
    refused({}, { BULKHEAD_KMS_PROVIDER: 'vault' }, /BULKHEAD_KMS_PROVIDER/);
    refused({ provider: 'aws' }, {}, /BULKHEAD_KMS_PROVIDER/);
    refused('local', {}, /kms section/);
    refused({ masterKey: hexKey }, {}, /BULKHEAD_MASTER_KEY/);
    refused({ pkcs11Pin: '12345678' }, {}, /BULKHEAD_PKCS11_PIN/);
    refused({ keyfile: 'x' }, {}, /unknown key/);
    refused({}, { BULKHEAD_KMS_PROVIDER: 'pkcs11', BULKHEAD_PKCS11_PIN: '12345678' }, /BULKHEAD_PKCS11_TOKEN/);
    refused({}, { BULKHEAD_KMS_PROVIDER: 'pkcs11', BULKHEAD_PKCS11_TOKEN: 't' }, /BULKHEAD_PKCS11_PIN/);
    refused({}, { BULKHEAD_KMS_PROVIDER: 'pkcs11', BULKHEAD_PKCS11_TOKEN: 'x'.repeat(33), BULKHEAD_PKCS11_PIN: '12345678' }, /BULKHEAD_PKCS11_TOKEN/);
    refused({}, { BULKHEAD_KMS_PROVIDER: 'pkcs11', BULKHEAD_PKCS11_TOKEN: 't', BULKHEAD_PKCS11_PIN: '12345678', BULKHEAD_MASTER_KEY: hexKey }, /BULKHEAD_MASTER_KEY/);
    refused({}, { BULKHEAD_PKCS11_TOKEN: 't', BULKHEAD_PKCS11_PIN: '12345678' }, /BULKHEAD_KMS_PROVIDER=pkcs11/);
    refused({ stateFile: join(dataDir, 'master.key') }, {}, /stateFile/);
  });

  it('opens the local provider from settings', async () => {
    const d = mkdtempSync(join(tmpdir(), 'bulkhead-kms-open-'));
    try {
      const kms = await openKms(parseKmsSettings({}, {}, { dataDir: join(d, 'data') }));
      const dataKey = generateDataKey();
      assert.deepEqual(await kms.unwrap(await kms.wrap('local', dataKey, CONTEXT), CONTEXT), dataKey);
      await kms.close();
      assert.equal(statSync(join(d, 'data', 'master.key')).mode & 0o777, 0o600);
      const withEnvKey = await openKms(parseKmsSettings({}, { BULKHEAD_MASTER_KEY: hexKey }, { dataDir: join(d, 'env') }));
      assert.ok(!existsSync(join(d, 'env', 'master.key')), 'no key file with BULKHEAD_MASTER_KEY');
      assert.ok(existsSync(join(d, 'env', 'kms-state.json')));
      await withEnvKey.close();
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });
});

describe('PKCS#11 KMS on SoftHSM2', () => {
  const TOKEN = 'bulkhead-test';
  const PIN = randomBytes(6).toString('hex');
  let dir: string;
  let setupError: Error | undefined;
  let savedConf: string | undefined;
  let kms: Kms | undefined;

  /** The settings of the test token. */
  function settings(pin = PIN): Pkcs11KmsSettings {
    return parseKmsSettings({}, { BULKHEAD_KMS_PROVIDER: 'pkcs11', BULKHEAD_PKCS11_TOKEN: TOKEN, BULKHEAD_PKCS11_PIN: pin }, { dataDir: dir }) as Pkcs11KmsSettings;
  }

  /** Fails the test when SoftHSM2 could not be set up (CI installs it; it is never skipped). */
  function ready(): Kms {
    if (setupError) throw setupError;
    assert.ok(kms, 'the provider is open');
    return kms;
  }

  /**
   * Runs `fn` in a session of the test's own on the token, next to the provider's, as an operator
   * tool would (the module is already initialised by the provider, so it is not finalised here).
   */
  function onToken<T>(fn: (p: typeof pkcs11js, lib: Pkcs11Types.PKCS11, session: Buffer) => T): T {
    const p = pkcs11js;
    const lib = new p.PKCS11();
    lib.load(DEFAULT_PKCS11_MODULE);
    let owns = true;
    try {
      lib.C_Initialize();
    } catch (error) {
      if ((error as { code?: number }).code !== p.CKR_CRYPTOKI_ALREADY_INITIALIZED) throw error;
      owns = false;
    }
    try {
      const slot = lib.C_GetSlotList(true).find((s) => lib.C_GetTokenInfo(s).label.trimEnd() === TOKEN);
      assert.ok(slot, 'the test token is there');
      const session = lib.C_OpenSession(slot, p.CKF_SERIAL_SESSION | p.CKF_RW_SESSION);
      try {
        try {
          lib.C_Login(session, p.CKU_USER, PIN);
        } catch (error) {
          if ((error as { code?: number }).code !== p.CKR_USER_ALREADY_LOGGED_IN) throw error;
        }
        return fn(p, lib, session);
      } finally {
        lib.C_CloseSession(session);
      }
    } finally {
      if (owns) lib.C_Finalize();
      lib.close();
    }
  }

  /** Handles of the token objects labelled `label`. */
  function objects(p: typeof pkcs11js, lib: Pkcs11Types.PKCS11, session: Buffer, label: string): Buffer[] {
    lib.C_FindObjectsInit(session, [{ type: p.CKA_LABEL, value: label }]);
    try {
      return lib.C_FindObjects(session, 10);
    } finally {
      lib.C_FindObjectsFinal(session);
    }
  }

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'bulkhead-softhsm-'));
    savedConf = process.env.SOFTHSM2_CONF;
    try {
      let util = true;
      try {
        execFileSync('softhsm2-util', ['--version'], { stdio: 'pipe' });
      } catch {
        util = false;
      }
      if (!util || !existsSync(DEFAULT_PKCS11_MODULE)) {
        throw new Error(`SoftHSM2 is not installed (softhsm2-util and ${DEFAULT_PKCS11_MODULE}); install it with: apt-get install -y softhsm2 (.ci/run does)`);
      }
      mkdirSync(join(dir, 'tokens'), { mode: 0o700 });
      const conf = join(dir, 'softhsm2.conf');
      writeFileSync(conf, `directories.tokendir = ${join(dir, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`);
      // SoftHSM2 reads its configuration when the module is initialised, so this comes first.
      process.env.SOFTHSM2_CONF = conf;
      execFileSync('softhsm2-util', ['--init-token', '--free', '--label', TOKEN, '--pin', PIN, '--so-pin', randomBytes(6).toString('hex')], { stdio: 'pipe' });
    } catch (error) {
      setupError = error as Error;
    }
  });

  after(async () => {
    await kms?.close();
    if (savedConf === undefined) delete process.env.SOFTHSM2_CONF;
    else process.env.SOFTHSM2_CONF = savedConf;
    rmSync(dir, { recursive: true, force: true });
  });

  it('has SoftHSM2 installed and a token made for the test', () => {
    if (setupError) assert.fail(`SoftHSM2 setup failed: ${setupError.message}`);
  });

  it('refuses a wrong PIN with KMS_CONFIG_INVALID and an unknown token with KMS_UNAVAILABLE', async () => {
    if (setupError) throw setupError;
    await rejectsCode(openKms(settings('wrong-pin-0')), 'KMS_CONFIG_INVALID', /BULKHEAD_PKCS11_PIN/);
    await rejectsCode(openKms({ ...settings(), token: 'no-such-token' }), 'KMS_UNAVAILABLE', /BULKHEAD_PKCS11_TOKEN/);
    await rejectsCode(openKms({ ...settings(), module: join(dir, 'missing.so') }), 'KMS_UNAVAILABLE', /BULKHEAD_PKCS11_MODULE/);
  });

  it('wraps and unwraps on the token; other contexts, flipped bits and local keys are refused', async () => {
    if (setupError) throw setupError;
    kms = await openKms(settings());
    const k = ready();
    assert.equal(k.provider, 'pkcs11');
    assert.deepEqual(await k.kekVersions('eu'), []);
    const dataKey = generateDataKey();
    const wrapped = await k.wrap('eu', dataKey, CONTEXT);
    assert.match(wrapped, WRAPPED_FORMAT);
    assert.deepEqual(describeWrappedKey(wrapped), { kind: 'region', provider: 'pkcs11', region: 'eu', kekVersion: 1 });
    assert.notEqual(await k.wrap('eu', dataKey, CONTEXT), wrapped, 'a fresh IV per wrap');
    assert.deepEqual(await k.unwrap(wrapped, CONTEXT), dataKey);
    assert.deepEqual(await k.kekVersions('eu'), [1]);
    await unwrapFails(k.unwrap(wrapped, { tenant: TENANT_B, dataKeyVersion: '1' }), 'other tenant');
    await unwrapFails(k.unwrap(wrapped, { tenant: TENANT_A, dataKeyVersion: '2' }), 'other data-key version');
    for (const i of [0, 11, 12, 43, 44, 59]) await unwrapFails(k.unwrap(flipPayloadBit(wrapped, i), CONTEXT), `bit flipped in byte ${i}`);
    await unwrapFails(k.unwrap(wrapped.slice(0, -2), CONTEXT), 'truncated');
    await unwrapFails(k.unwrap(withField(wrapped, 1, 'local'), CONTEXT), 'provider edited');
    await unwrapFails(k.unwrap(withField(wrapped, 3, '5'), CONTEXT), 'unknown version');
    await k.wrap('us', generateDataKey(), CONTEXT);
    await unwrapFails(k.unwrap(withField(wrapped, 2, 'us'), CONTEXT), 'region edited');
    // A key wrapped by the local provider is not the token's.
    const localDir = mkdtempSync(join(tmpdir(), 'bulkhead-kms-local-'));
    try {
      const local = await openLocalKms({ keyFile: join(localDir, 'master.key'), state: new JsonFileKmsStateStore(join(localDir, 's.json')) });
      await unwrapFails(k.unwrap(await local.wrap('eu', dataKey, CONTEXT), CONTEXT), 'a local wrapped key');
      await local.close();
    } finally {
      rmSync(localDir, { recursive: true, force: true });
    }
  });

  it('keeps the KEK on the token: sensitive, not extractable, its value unreadable', () => {
    ready();
    onToken((p, lib, session) => {
      const handles = objects(p, lib, session, kekLabel('eu', 1));
      assert.equal(handles.length, 1, 'one object per KEK version');
      const attrs = lib.C_GetAttributeValue(session, handles[0]!, [
        { type: p.CKA_TOKEN },
        { type: p.CKA_SENSITIVE },
        { type: p.CKA_EXTRACTABLE },
        { type: p.CKA_ALWAYS_SENSITIVE },
        { type: p.CKA_NEVER_EXTRACTABLE },
        { type: p.CKA_KEY_TYPE },
        { type: p.CKA_VALUE_LEN },
        { type: p.CKA_WRAP },
      ]);
      const [token, sensitive, extractable, alwaysSensitive, neverExtractable, keyType, valueLen, wrap] = attrs.map((a) => a.value);
      assert.equal(token!.readUInt8(0), 1, 'CKA_TOKEN');
      assert.equal(sensitive!.readUInt8(0), 1, 'CKA_SENSITIVE');
      assert.equal(extractable!.readUInt8(0), 0, 'CKA_EXTRACTABLE');
      assert.equal(alwaysSensitive!.readUInt8(0), 1, 'CKA_ALWAYS_SENSITIVE');
      assert.equal(neverExtractable!.readUInt8(0), 1, 'CKA_NEVER_EXTRACTABLE');
      assert.equal(ulong(keyType!), p.CKK_AES, 'CKA_KEY_TYPE');
      assert.equal(ulong(valueLen!), 32, 'CKA_VALUE_LEN');
      assert.equal(wrap!.readUInt8(0), 0, 'CKA_WRAP');
      assert.throws(() => lib.C_GetAttributeValue(session, handles[0]!, [{ type: p.CKA_VALUE }]), /CKR_ATTRIBUTE_SENSITIVE/);
    });
  });

  it('rotates on the token and rewraps onto the newest version; versions survive a reopen', async () => {
    const k = ready();
    const dataKey = generateDataKey();
    const v1 = await k.wrap('eu', dataKey, CONTEXT);
    assert.equal(await k.rotateKek('eu'), 2);
    assert.deepEqual(await k.kekVersions('eu'), [1, 2]);
    const v2 = await k.wrap('eu', dataKey, CONTEXT);
    assert.equal(kekVersionOf(v2), 2);
    assert.deepEqual(await k.unwrap(v1, CONTEXT), dataKey, 'an old version still unwraps');
    const rewrapped = await k.rewrap(v1, CONTEXT);
    assert.deepEqual(describeWrappedKey(rewrapped), { kind: 'region', provider: 'pkcs11', region: 'eu', kekVersion: 2 });
    assert.deepEqual(await k.unwrap(rewrapped, CONTEXT), dataKey);
    await unwrapFails(k.rewrap(v1, { tenant: TENANT_B, dataKeyVersion: '1' }), 'rewrap under another context');

    await k.close();
    await rejectsCode(k.unwrap(v1, CONTEXT), 'KMS_UNAVAILABLE', /closed/);
    kms = await openKms(settings());
    const reopened = ready();
    assert.deepEqual(await reopened.kekVersions('eu'), [1, 2]);
    assert.deepEqual(await reopened.unwrap(v1, CONTEXT), dataKey);
    assert.deepEqual(await reopened.unwrap(rewrapped, CONTEXT), dataKey);
    assert.equal(kekVersionOf(await reopened.wrap('eu', dataKey, CONTEXT)), 2);
  });

  it('refuses to unwrap once the KEK object is deleted from the token, and to wrap without the newest KEK', async () => {
    const k = ready();
    const dataKey = generateDataKey();
    const v2 = await k.wrap('eu', dataKey, CONTEXT);
    assert.equal(await k.rotateKek('eu'), 3);
    const v3 = await k.wrap('eu', dataKey, CONTEXT);
    assert.deepEqual(await k.unwrap(v2, CONTEXT), dataKey);

    // An operator deletes version 2 on the token, outside Bulkhead.
    onToken((p, lib, session) => {
      const handles = objects(p, lib, session, kekLabel('eu', 2));
      assert.equal(handles.length, 1);
      lib.C_DestroyObject(session, handles[0]!);
      assert.equal(objects(p, lib, session, kekLabel('eu', 2)).length, 0);
    });
    await unwrapFails(k.unwrap(v2, CONTEXT), 'KEK version 2 deleted from the token');
    assert.deepEqual(await k.kekVersions('eu'), [1, 3]);
    assert.deepEqual(await k.unwrap(v3, CONTEXT), dataKey, 'other versions are untouched');

    // The newest version deleted: wrapping is refused rather than done under an older one.
    onToken((p, lib, session) => {
      for (const handle of objects(p, lib, session, kekLabel('eu', 3))) lib.C_DestroyObject(session, handle);
    });
    await rejectsCode(k.wrap('eu', dataKey, CONTEXT), 'KMS_KEK_NOT_FOUND', /rotate/);
    await unwrapFails(k.unwrap(v3, CONTEXT), 'KEK version 3 deleted from the token');
    assert.equal(await k.rotateKek('eu'), 4, 'a rotation makes a new version and does not reuse a deleted number');
    assert.equal(kekVersionOf(await k.wrap('eu', dataKey, CONTEXT)), 4);
  });

  it('destroys an old KEK version through the API, and never the newest', async () => {
    const k = ready();
    const dataKey = generateDataKey();
    const v1 = await k.wrap('us', dataKey, CONTEXT);
    assert.equal(await k.rotateKek('us'), 2);
    await rejectsCode(k.destroyKekVersion('us', 2), 'KMS_INPUT_INVALID', /rotate/);
    const moved = await k.rewrap(v1, CONTEXT);
    await k.destroyKekVersion('us', 1);
    assert.deepEqual(await k.kekVersions('us'), [2]);
    await unwrapFails(k.unwrap(v1, CONTEXT), 'destroyed version');
    assert.deepEqual(await k.unwrap(moved, CONTEXT), dataKey);
    await rejectsCode(k.destroyKekVersion('us', 1), 'KMS_KEK_NOT_FOUND');
    onToken((p, lib, session) => assert.equal(objects(p, lib, session, kekLabel('us', 1)).length, 0, 'the object is gone'));
  });

  const instances: Kms[] = [];
  after(async () => {
    for (const k of instances) await k.close();
  });

  tenantKeyTests('pkcs11', () => ({
    open: async () => {
      if (setupError) throw setupError;
      const k = await openKms(settings());
      instances.push(k);
      return k;
    },
  }));

  /** Reads boolean and ulong attributes of a token object. */
  function flags(p: typeof pkcs11js, lib: Pkcs11Types.PKCS11, session: Buffer, handle: Buffer, types: number[]): number[] {
    return lib.C_GetAttributeValue(session, handle, types.map((type) => ({ type }))).map((a) => ulong(a.value as Buffer));
  }

  it('keeps tenant keys on the token: sensitive, not extractable, not copyable; destroyed, the object goes and a marker stays', async () => {
    const k = ready();
    const tenant = randomUUID();
    const dataKey = generateDataKey();
    const wrapped = await k.wrapForTenant('eu', tenant, dataKey, contextOf(tenant));
    const keyId = keyIdOf(wrapped);
    onToken((p, lib, session) => {
      const handles = objects(p, lib, session, tenantKeyLabel('eu', tenant));
      assert.equal(handles.length, 1, 'one object per tenant key');
      assert.equal(tenantKeyLabel('eu', tenant), `bulkhead-tenant-${tenant}-eu`);
      const [cls, keyType, valueLen, token, priv, sensitive, extractable, alwaysSensitive, neverExtractable, copyable, wrap, modifiable] = flags(p, lib, session, handles[0]!, [
        p.CKA_CLASS, p.CKA_KEY_TYPE, p.CKA_VALUE_LEN, p.CKA_TOKEN, p.CKA_PRIVATE, p.CKA_SENSITIVE, p.CKA_EXTRACTABLE,
        p.CKA_ALWAYS_SENSITIVE, p.CKA_NEVER_EXTRACTABLE, p.CKA_COPYABLE, p.CKA_WRAP, p.CKA_MODIFIABLE,
      ]);
      assert.deepEqual(
        { cls, keyType, valueLen, token, priv, sensitive, extractable, alwaysSensitive, neverExtractable, copyable, wrap, modifiable },
        { cls: p.CKO_SECRET_KEY, keyType: p.CKK_AES, valueLen: 32, token: 1, priv: 1, sensitive: 1, extractable: 0, alwaysSensitive: 1, neverExtractable: 1, copyable: 0, wrap: 0, modifiable: 0 },
      );
      const [id] = lib.C_GetAttributeValue(session, handles[0]!, [{ type: p.CKA_ID }]);
      assert.equal((id!.value as Buffer).toString('hex'), keyId, 'CKA_ID is the key id');
      assert.throws(() => lib.C_GetAttributeValue(session, handles[0]!, [{ type: p.CKA_VALUE }]), /CKR_ATTRIBUTE_SENSITIVE/);
      assert.throws(() => lib.C_CopyObject(session, handles[0]!, [{ type: p.CKA_LABEL, value: 'a-copy' }]), 'no copy can outlive it');
      assert.equal(objects(p, lib, session, tenantKeyDestroyedLabel('eu', tenant)).length, 0);
    });

    const destruction = await k.destroyTenantKey('eu', tenant);
    onToken((p, lib, session) => {
      assert.equal(objects(p, lib, session, tenantKeyLabel('eu', tenant)).length, 0, 'the key object is gone');
      const markers = objects(p, lib, session, tenantKeyDestroyedLabel('eu', tenant));
      assert.equal(markers.length, 1, 'one destruction marker');
      const [cls, value] = lib.C_GetAttributeValue(session, markers[0]!, [{ type: p.CKA_CLASS }, { type: p.CKA_VALUE }]);
      assert.equal(ulong(cls!.value as Buffer), p.CKO_DATA);
      assert.deepEqual(JSON.parse((value!.value as Buffer).toString('utf8')), { keyId, destroyedAt: destruction.destroyedAt });
    });

    // A tenant wrap of one provider is not the other's.
    const localDir = mkdtempSync(join(tmpdir(), 'bulkhead-kms-local-'));
    try {
      const local = await openLocalKms({ keyFile: join(localDir, 'master.key'), state: new JsonFileKmsStateStore(join(localDir, 's.json')) });
      const other = randomUUID();
      await unwrapFails(k.unwrap(await local.wrapForTenant('eu', other, dataKey, contextOf(other)), contextOf(other)), 'a local tenant wrap on the token');
      await unwrapFails(local.unwrap(await k.wrapForTenant('eu', other, dataKey, contextOf(other)), contextOf(other)), 'a token tenant wrap in local');
      await local.close();
    } finally {
      rmSync(localDir, { recursive: true, force: true });
    }
  });

  it('completes a destroy that stopped after its marker; a key deleted outside Bulkhead is absent, not destroyed', async () => {
    const k = ready();
    const tenant = randomUUID();
    const dataKey = generateDataKey();
    const wrapped = await k.wrapForTenant('eu', tenant, dataKey, contextOf(tenant));
    const keyId = keyIdOf(wrapped);
    // The destroying process died between its two steps: the marker is there, the key still is.
    const destroyedAt = '2024-05-01T12:00:00.000Z';
    onToken((p, lib, session) => {
      lib.C_CreateObject(session, [
        { type: p.CKA_CLASS, value: p.CKO_DATA },
        { type: p.CKA_TOKEN, value: true },
        { type: p.CKA_PRIVATE, value: true },
        { type: p.CKA_LABEL, value: tenantKeyDestroyedLabel('eu', tenant) },
        { type: p.CKA_VALUE, value: Buffer.from(JSON.stringify({ keyId, destroyedAt })) },
      ]);
    });
    const fresh = await openKms(settings());
    instances.push(fresh);
    await rejectsCode(fresh.wrapForTenant('eu', tenant, dataKey, contextOf(tenant)), 'KMS_TENANT_KEY_DESTROYED');
    await unwrapFails(fresh.unwrap(wrapped, contextOf(tenant)), 'a marker and no destroy yet');
    assert.deepEqual(await fresh.tenantKeyInfo('eu', tenant), { state: 'destroyed', keyId });
    assert.deepEqual(await fresh.destroyTenantKey('eu', tenant), { keyId, destroyedAt, alreadyDestroyed: true });
    onToken((p, lib, session) => assert.equal(objects(p, lib, session, tenantKeyLabel('eu', tenant)).length, 0, 'the retry destroyed the key'));
    await unwrapFails(k.unwrap(wrapped, contextOf(tenant)), 'the first instance, whose handle died with the object');

    // An operator deletes a tenant key on the token, without a marker: its wraps fail, and the
    // tenant is not erased, so its next wrap makes a new key.
    const other = randomUUID();
    const lost = await k.wrapForTenant('eu', other, dataKey, contextOf(other));
    onToken((p, lib, session) => {
      for (const handle of objects(p, lib, session, tenantKeyLabel('eu', other))) lib.C_DestroyObject(session, handle);
    });
    await unwrapFails(k.unwrap(lost, contextOf(other)), 'its key deleted on the token');
    assert.deepEqual(await k.tenantKeyInfo('eu', other), { state: 'absent' });
    const renewed = await k.wrapForTenant('eu', other, dataKey, contextOf(other));
    assert.notEqual(keyIdOf(renewed), keyIdOf(lost));
    assert.deepEqual(await k.unwrap(renewed, contextOf(other)), dataKey);
  });
});
