/**
 * The KMS layer: the local provider (master key from the environment or a 0600 key file, KEKs
 * derived per region and version) and the PKCS#11 provider against a SoftHSM2 token made here.
 * Every failed unwrap is the one KMS_UNWRAP_FAILED error; rotation keeps old wrapped keys
 * readable until their version is destroyed, and re-wraps them onto the newest version.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createSecretKey, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
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
  describeWrappedKey,
  generateDataKey,
  type Kms,
  type KmsContext,
} from '../src/crypto/kms.js';
import { JsonFileKmsStateStore, openLocalKms, parseMasterKey } from '../src/crypto/local-kms.js';
import { DEFAULT_PKCS11_MODULE, kekLabel } from '../src/crypto/pkcs11-kms.js';
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

describe('KMS error codes', () => {
  it('are registered with a status', () => {
    for (const code of ['KMS_UNWRAP_FAILED', 'KMS_KEY_FILE_INSECURE', 'KMS_CONFIG_INVALID', 'KMS_KEK_NOT_FOUND', 'KMS_UNAVAILABLE', 'KMS_INPUT_INVALID'] as const) {
      assert.ok(ERROR_CODES[code].length > 0, code);
      assert.ok(HTTP_STATUS[code] >= 500, code);
    }
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
    assert.deepEqual(describeWrappedKey(a), { provider: 'local', region: 'eu', kekVersion: 1 });
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
    assert.equal(describeWrappedKey(v2).kekVersion, 2);
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
    for (const text of ['{', '[]', '{"format":2,"keyCheck":"AAAAAAAAAAAAAAAAAAAAAA","regions":{}}', '{"format":1,"keyCheck":"x","regions":{}}']) {
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
    assert.equal(describeWrappedKey(v2).kekVersion, 2, 'new wraps use the newest version');
    assert.deepEqual(await kms.unwrap(v1, CONTEXT), dataKey, 'an old version still unwraps');
    const rewrapped = await kms.rewrap(v1, CONTEXT);
    assert.deepEqual(describeWrappedKey(rewrapped), { provider: 'local', region: 'eu', kekVersion: 2 });
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
    assert.equal(describeWrappedKey(await second.wrap('eu', dataKey, CONTEXT)).kekVersion, 3);
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
    assert.deepEqual(describeWrappedKey(wrapped), { provider: 'pkcs11', region: 'eu', kekVersion: 1 });
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
    assert.equal(describeWrappedKey(v2).kekVersion, 2);
    assert.deepEqual(await k.unwrap(v1, CONTEXT), dataKey, 'an old version still unwraps');
    const rewrapped = await k.rewrap(v1, CONTEXT);
    assert.deepEqual(describeWrappedKey(rewrapped), { provider: 'pkcs11', region: 'eu', kekVersion: 2 });
    assert.deepEqual(await k.unwrap(rewrapped, CONTEXT), dataKey);
    await unwrapFails(k.rewrap(v1, { tenant: TENANT_B, dataKeyVersion: '1' }), 'rewrap under another context');

    await k.close();
    await rejectsCode(k.unwrap(v1, CONTEXT), 'KMS_UNAVAILABLE', /closed/);
    kms = await openKms(settings());
    const reopened = ready();
    assert.deepEqual(await reopened.kekVersions('eu'), [1, 2]);
    assert.deepEqual(await reopened.unwrap(v1, CONTEXT), dataKey);
    assert.deepEqual(await reopened.unwrap(rewrapped, CONTEXT), dataKey);
    assert.equal(describeWrappedKey(await reopened.wrap('eu', dataKey, CONTEXT)).kekVersion, 2);
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
    assert.equal(describeWrappedKey(await k.wrap('eu', dataKey, CONTEXT)).kekVersion, 4);
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
});
