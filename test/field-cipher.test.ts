/**
 * Field encryption and blind index (issue 4, items 2 and 3): known-answer vectors, checked both
 * through the module and through raw node:crypto calls built only from the layouts written in
 * docs/encryption.md (so the page and the code are proven to agree); round trips of every JSON
 * type; fresh IVs; the tamper matrix, every case answered by the same CRYPTO_DECRYPT_FAILED with
 * the same message (jose's decrypt tests assert { code, message } the same way); malformed keys.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createCipheriv, createDecipheriv, createHmac, createSecretKey, generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { BulkheadError, DecryptionFailedError } from '../src/errors.js';
import {
  decryptField,
  encryptField,
  fieldAssociatedData,
  isCiphertext,
  keyVersionOf,
  type FieldBinding,
} from '../src/crypto/field-cipher.js';
import { blindIndex, blindIndexInput, type IndexScope } from '../src/crypto/blind-index.js';
import type { JsonValue } from '../src/crypto/encoding.js';

interface FieldVector {
  comment: string;
  keyHex: string;
  keyVersion: number;
  binding: FieldBinding;
  value: JsonValue;
  plaintextJson: string;
  ivHex: string;
  aadHex: string;
  ciphertext: string;
}
interface IndexVector {
  comment: string;
  keyHex: string;
  scope: IndexScope;
  value: JsonValue;
  canonicalJson: string;
  inputHex: string;
  index: string;
}

const vectorsOf = <T>(name: string): T[] =>
  (JSON.parse(readFileSync(new URL(`./vectors/${name}`, import.meta.url), 'utf8')) as { vectors: T[] }).vectors;
const FIELD_VECTORS = vectorsOf<FieldVector>('field-cipher.json');
const INDEX_VECTORS = vectorsOf<IndexVector>('blind-index.json');

const DECRYPT_FAILED = { code: 'CRYPTO_DECRYPT_FAILED', message: new DecryptionFailedError().message } as const;

// ---- An independent implementation, written from docs/encryption.md alone (no module code). ----

/** item(b) = 4-byte big-endian length ‖ b */
function item(bytes: Buffer): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(bytes.length);
  return Buffer.concat([len, bytes]);
}
const uuid16 = (id: string) => Buffer.from(id.replace(/-/g, ''), 'hex');

function docAad(b: FieldBinding, keyVersion: number): Buffer {
  const v = Buffer.alloc(4);
  v.writeUInt32BE(keyVersion);
  return Buffer.concat([
    item(Buffer.from('bh1')),
    item(uuid16(b.tenantId)),
    item(Buffer.from(b.collection, 'utf8')),
    item(Buffer.from(b.field, 'utf8')),
    item(uuid16(b.recordId)),
    item(v),
  ]);
}

function docEncrypt(key: Buffer, keyVersion: number, b: FieldBinding, plaintext: Buffer, iv: Buffer): string {
  const c = createCipheriv('aes-256-gcm', key, iv);
  c.setAAD(docAad(b, keyVersion));
  const ct = Buffer.concat([c.update(plaintext), c.final()]);
  return `bh1:${keyVersion}:${Buffer.concat([iv, ct, c.getAuthTag()]).toString('base64url')}`;
}

function docDecrypt(key: Buffer, b: FieldBinding, ciphertext: string): string {
  const [format, version, body] = ciphertext.split(':');
  assert.equal(format, 'bh1');
  const bytes = Buffer.from(body!, 'base64url');
  const d = createDecipheriv('aes-256-gcm', key, bytes.subarray(0, 12), { authTagLength: 16 });
  d.setAAD(docAad(b, Number(version)));
  d.setAuthTag(bytes.subarray(bytes.length - 16));
  return Buffer.concat([d.update(bytes.subarray(12, bytes.length - 16)), d.final()]).toString('utf8');
}

function docIndex(key: Buffer, s: IndexScope, canonical: string): string {
  const input = Buffer.concat([
    item(Buffer.from('bh1-bidx')),
    item(Buffer.from(s.collection, 'utf8')),
    item(Buffer.from(s.field, 'utf8')),
    item(Buffer.from(canonical, 'utf8')),
  ]);
  return createHmac('sha256', key).update(input).digest().subarray(0, 16).toString('base64url');
}

// ---- Fixtures: keys made here, per run. ----

const KEY = randomBytes(32);
const OTHER_KEY = randomBytes(32);
const BINDING: FieldBinding = {
  tenantId: '0191e5a0-7c2a-7b3d-9e4f-0a1b2c3d4e5f',
  collection: 'patients',
  field: 'ssn',
  recordId: '0191e5a1-1111-7111-8111-111111111111',
};

/** The body bytes of a ciphertext, changed by `edit`, written back in the same format. */
function rewriteBody(ciphertext: string, edit: (bytes: Buffer) => Buffer): string {
  const cut = ciphertext.lastIndexOf(':') + 1;
  return ciphertext.slice(0, cut) + edit(Buffer.from(ciphertext.slice(cut), 'base64url')).toString('base64url');
}
function flipBit(at: (length: number) => number, bit = 0) {
  return (bytes: Buffer) => {
    const copy = Buffer.from(bytes);
    copy[at(copy.length)]! ^= 1 << bit;
    return copy;
  };
}

describe('field cipher: known-answer vectors', () => {
  it('has vectors of every JSON type', () => {
    const types = new Set(FIELD_VECTORS.map((v) => (v.value === null ? 'null' : Array.isArray(v.value) ? 'array' : typeof v.value)));
    assert.deepEqual([...types].sort(), ['array', 'boolean', 'null', 'number', 'object', 'string']);
  });

  it('encrypts every vector to its ciphertext with the test-only IV, with the documented associated data', () => {
    for (const v of FIELD_VECTORS) {
      const key = Buffer.from(v.keyHex, 'hex');
      assert.equal(fieldAssociatedData(v.binding, v.keyVersion).toString('hex'), v.aadHex, v.comment);
      const ct = encryptField(key, v.keyVersion, v.binding, v.value, { unsafeTestOnlyIv: Buffer.from(v.ivHex, 'hex') });
      assert.equal(ct, v.ciphertext, v.comment);
    }
  });

  it('agrees with raw node:crypto calls built from the documented layout, both ways', () => {
    for (const v of FIELD_VECTORS) {
      const key = Buffer.from(v.keyHex, 'hex');
      assert.equal(JSON.stringify(v.value), v.plaintextJson, v.comment);
      assert.equal(docAad(v.binding, v.keyVersion).toString('hex'), v.aadHex, v.comment);
      const independent = docEncrypt(key, v.keyVersion, v.binding, Buffer.from(v.plaintextJson, 'utf8'), Buffer.from(v.ivHex, 'hex'));
      assert.equal(independent, v.ciphertext, v.comment);
      assert.equal(docDecrypt(key, v.binding, v.ciphertext), v.plaintextJson, v.comment);
      // And a ciphertext of the module with a random IV decrypts with the raw calls.
      assert.equal(docDecrypt(key, v.binding, encryptField(key, v.keyVersion, v.binding, v.value)), v.plaintextJson, v.comment);
    }
  });

  it('decrypts every vector to its value, of its type, and reads its key version', () => {
    for (const v of FIELD_VECTORS) {
      const key = Buffer.from(v.keyHex, 'hex');
      assert.ok(isCiphertext(v.ciphertext), v.comment);
      assert.equal(keyVersionOf(v.ciphertext), v.keyVersion, v.comment);
      assert.deepEqual(decryptField(key, v.keyVersion, v.binding, v.ciphertext), v.value, v.comment);
      assert.deepEqual(decryptField(createSecretKey(key), v.keyVersion, v.binding, v.ciphertext), v.value, v.comment);
    }
  });
});

describe('field cipher: round trips', () => {
  const values: JsonValue[] = [
    '', 'plain', 'Zoë 🐘 \u2028', 'x'.repeat(10_000), 'nul \u0000 inside', '078-05-1120', '1', 'true', 'null',
    0, 1, -1, 1.5, -1.5e-7, 1e300, 5e-324, Number.MAX_SAFE_INTEGER,
    true, false, null,
    [], [1, '1', true, null, [], {}], {}, { nested: { deep: [{ a: 1 }] }, 'key with spaces': 'v', '': 0 },
  ];

  it('gives back every JSON value with its type, with a key given as bytes or as a KeyObject', () => {
    for (const value of values) {
      const ct = encryptField(KEY, 3, BINDING, value);
      assert.ok(isCiphertext(ct));
      assert.match(ct, /^bh1:3:[A-Za-z0-9_-]+$/);
      for (const key of [KEY, createSecretKey(KEY), new Uint8Array(KEY)]) {
        const back = decryptField(key, 3, BINDING, ct);
        assert.deepEqual(back, value);
        assert.equal(typeof back, typeof value);
      }
    }
  });

  it('binds non-ASCII and long names as their UTF-8 bytes, as documented', () => {
    for (const names of [{ collection: 'pacientes', field: 'número' }, { collection: '患者', field: 'f'.repeat(100) }, { collection: 'c', field: '🐘' }]) {
      const binding = { ...BINDING, ...names };
      assert.deepEqual(fieldAssociatedData(binding, 4), docAad(binding, 4));
      const ct = encryptField(KEY, 4, binding, 'x');
      assert.equal(docDecrypt(KEY, binding, ct), '"x"');
      assert.equal(decryptField(KEY, 4, binding, ct), 'x');
      assert.throws(() => decryptField(KEY, 4, { ...binding, field: `${names.field}x` }, ct), DECRYPT_FAILED);
      assert.equal(blindIndex(OTHER_KEY, names, 'v'), docIndex(OTHER_KEY, names, '"v"'));
    }
  });

  it('keeps 1 and "1" apart through encryption', () => {
    assert.strictEqual(decryptField(KEY, 1, BINDING, encryptField(KEY, 1, BINDING, 1)), 1);
    assert.strictEqual(decryptField(KEY, 1, BINDING, encryptField(KEY, 1, BINDING, '1')), '1');
  });

  it('round-trips any JSON value (property)', () => {
    fc.assert(
      fc.property(fc.jsonValue(), (value) => {
        const expected = JSON.parse(JSON.stringify(value)) as JsonValue;
        assert.deepEqual(decryptField(KEY, 9, BINDING, encryptField(KEY, 9, BINDING, value as JsonValue)), expected);
      }),
      { numRuns: 300 },
    );
  });

  it('uses a fresh IV every time: equal values give different ciphertexts', () => {
    const a = encryptField(KEY, 1, BINDING, 'same');
    const b = encryptField(KEY, 1, BINDING, 'same');
    assert.notEqual(a, b);
    // Across several refills of the IV pool (341 IVs each), no IV repeats.
    const ivs = new Set<string>();
    for (let i = 0; i < 2_000; i++) ivs.add(encryptField(KEY, 1, BINDING, 'same').slice(6, 6 + 16));
    assert.equal(ivs.size, 2_000);
  });

  it('refuses a value JSON cannot carry, and a test IV of the wrong length, as caller bugs', () => {
    const cycle: Record<string, unknown> = {};
    cycle.self = cycle;
    for (const bad of [undefined, NaN, Infinity, -Infinity, () => 1, Symbol('s'), 10n, { n: 10n }, cycle]) {
      assert.throws(() => encryptField(KEY, 1, BINDING, bad as unknown as JsonValue), { code: 'INTERNAL' });
    }
    assert.throws(() => encryptField(KEY, 1, BINDING, 'x', { unsafeTestOnlyIv: Buffer.alloc(16) }), { code: 'INTERNAL' });
  });

  it('refuses a binding that is not canonical, as a caller bug, on both sides', () => {
    const ct = encryptField(KEY, 1, BINDING, 'x');
    const bad: FieldBinding[] = [
      { ...BINDING, tenantId: BINDING.tenantId.toUpperCase() },
      { ...BINDING, tenantId: 'not-a-uuid' },
      { ...BINDING, recordId: BINDING.recordId.replace(/-/g, '') },
      { ...BINDING, collection: '' },
      { ...BINDING, field: '' },
      { ...BINDING, field: 'a\ud800' },
      { ...BINDING, field: 'f'.repeat(256) },
      { ...BINDING, collection: 42 as unknown as string },
    ];
    for (const binding of bad) {
      assert.throws(() => encryptField(KEY, 1, binding, 'x'), { code: 'INTERNAL' });
      assert.throws(() => decryptField(KEY, 1, binding, ct), { code: 'INTERNAL' });
    }
    assert.throws(() => encryptField(KEY, 1, null as unknown as FieldBinding, 'x'), { code: 'INTERNAL' });
  });
});

describe('field cipher: tamper matrix', () => {
  const ct = encryptField(KEY, 5, BINDING, { ssn: '078-05-1120' });
  const body = ct.slice('bh1:5:'.length);

  /** [case, key, key version, binding, ciphertext]: every one must fail the same way. */
  const cases: [string, Buffer, number, FieldBinding, unknown][] = [
    ['moved to another record', KEY, 5, { ...BINDING, recordId: '0191e5a1-2222-7222-a222-222222222222' }, ct],
    ['moved to another field', KEY, 5, { ...BINDING, field: 'phone' }, ct],
    ['moved to another collection', KEY, 5, { ...BINDING, collection: 'staff' }, ct],
    ['moved to another tenant', KEY, 5, { ...BINDING, tenantId: '0191e5a0-0000-7000-8000-000000000002' }, ct],
    ['names run together differently', KEY, 5, { ...BINDING, collection: 'patientss', field: 'sn' }, ct],
    ['bit flipped in the IV', KEY, 5, BINDING, rewriteBody(ct, flipBit(() => 0))],
    ['last IV bit flipped', KEY, 5, BINDING, rewriteBody(ct, flipBit(() => 11, 7))],
    ['bit flipped in the body', KEY, 5, BINDING, rewriteBody(ct, flipBit(() => 12))],
    ['bit flipped in the tag', KEY, 5, BINDING, rewriteBody(ct, flipBit((n) => n - 1, 7))],
    ['first tag bit flipped', KEY, 5, BINDING, rewriteBody(ct, flipBit((n) => n - 16))],
    ['tag truncated by one byte', KEY, 5, BINDING, rewriteBody(ct, (b) => b.subarray(0, b.length - 1))],
    ['tag truncated to 12 bytes', KEY, 5, BINDING, rewriteBody(ct, (b) => b.subarray(0, b.length - 4))],
    ['tag dropped', KEY, 5, BINDING, rewriteBody(ct, (b) => b.subarray(0, b.length - 16))],
    ['only IV and tag', KEY, 5, BINDING, rewriteBody(ct, (b) => Buffer.concat([b.subarray(0, 12), b.subarray(b.length - 16)]))],
    ['body cut to the IV', KEY, 5, BINDING, rewriteBody(ct, (b) => b.subarray(0, 12))],
    ['a byte appended', KEY, 5, BINDING, rewriteBody(ct, (b) => Buffer.concat([b, Buffer.from([0])]))],
    ['text truncated by one character', KEY, 5, BINDING, ct.slice(0, -1)],
    ['text cut in half', KEY, 5, BINDING, ct.slice(0, Math.floor(ct.length / 2))],
    ['empty string', KEY, 5, BINDING, ''],
    ['empty body', KEY, 5, BINDING, 'bh1:5:'],
    ['no body', KEY, 5, BINDING, 'bh1:5'],
    ['prefix only', KEY, 5, BINDING, 'bh1:'],
    ['bad base64: a "+"', KEY, 5, BINDING, `bh1:5:+${body.slice(1)}`],
    ['bad base64: a "."', KEY, 5, BINDING, `bh1:5:${body.slice(0, 10)}.${body.slice(10)}`],
    ['bad base64: padding added', KEY, 5, BINDING, `${ct}==`],
    ['bad base64: standard alphabet', KEY, 5, BINDING, `bh1:5:${Buffer.from(body, 'base64url').toString('base64')}`],
    ['bad base64: whitespace', KEY, 5, BINDING, `bh1:5:${body.slice(0, 8)} ${body.slice(8)}`],
    ['bad base64: non-canonical last character', KEY, 5, BINDING, nonCanonical(ct)],
    ['unknown format version', KEY, 5, BINDING, `bh2:5:${body}`],
    ['format tag in capitals', KEY, 5, BINDING, `BH1:5:${body}`],
    ['no format tag', KEY, 5, BINDING, `5:${body}`],
    ['key version other than the key given', KEY, 6, BINDING, ct],
    ['key version relabelled to match the key given', KEY, 6, BINDING, `bh1:6:${body}`],
    ['key version with a leading zero', KEY, 5, BINDING, `bh1:05:${body}`],
    ['key version zero', KEY, 5, BINDING, `bh1:0:${body}`],
    ['key version not a number', KEY, 5, BINDING, `bh1:x:${body}`],
    ['key version beyond 32 bits', KEY, 5, BINDING, `bh1:4294967301:${body}`],
    ['wrong key', OTHER_KEY, 5, BINDING, ct],
    ['not a string: undefined', KEY, 5, BINDING, undefined],
    ['not a string: null', KEY, 5, BINDING, null],
    ['not a string: a number', KEY, 5, BINDING, 42],
    ['not a string: a Buffer', KEY, 5, BINDING, Buffer.from(ct)],
    ['authentic, but the plaintext is not JSON', KEY, 5, BINDING, docEncrypt(KEY, 5, BINDING, Buffer.from('not json'), randomBytes(12))],
  ];

  it('decrypts the untouched ciphertext (the cases below fail for their change alone)', () => {
    assert.deepEqual(decryptField(KEY, 5, BINDING, ct), { ssn: '078-05-1120' });
    assert.deepEqual(decryptField(KEY, 5, { ...BINDING }, `bh1:5:${body}`), { ssn: '078-05-1120' });
  });

  for (const [name, key, version, binding, ciphertext] of cases) {
    it(`${name} → CRYPTO_DECRYPT_FAILED, the one fixed message, no cause`, () => {
      assert.ok(key !== KEY || version !== 5 || binding !== BINDING || ciphertext !== ct, 'the case changes something');
      let caught: unknown;
      try {
        decryptField(key, version, binding, ciphertext as string);
      } catch (error) {
        caught = error;
      }
      assert.ok(caught instanceof DecryptionFailedError, `${name}: threw ${String(caught)}`);
      assert.deepEqual({ code: caught.code, message: caught.message }, DECRYPT_FAILED);
      assert.equal(caught.cause, undefined);
      assert.equal(caught.details, undefined);
      assert.ok(!caught.message.includes('078-05-1120'));
    });
  }

  it('keyVersionOf and isCiphertext refuse every malformed shape with the same error', () => {
    const malformed = ['', 'bh1:', 'bh1:5', 'bh1:5:', 'bh2:5:' + body, 'BH1:5:' + body, 'bh1:05:' + body, 'bh1:0:' + body,
      'bh1:x:' + body, 'bh1:4294967296:' + body, 'bh1:5:' + body.slice(0, 38), `bh1:5:+${body.slice(1)}`, `${ct}=`];
    for (const text of [...malformed, undefined, null, 42, {}]) {
      assert.equal(isCiphertext(text), false, String(text));
      assert.throws(() => keyVersionOf(text as string), DECRYPT_FAILED);
    }
    assert.equal(keyVersionOf(ct), 5);
    assert.equal(keyVersionOf(`bh1:4294967295:${body}`), 4294967295);
    assert.equal(isCiphertext('bh1:1:' + 'A'.repeat(39)), true, 'shape only: authenticity is for decryptField');
  });

  it('fails on any single flipped bit of the body (property)', () => {
    const bytes = Buffer.from(body, 'base64url');
    fc.assert(
      fc.property(fc.integer({ min: 0, max: bytes.length * 8 - 1 }), (bit) => {
        const tampered = rewriteBody(ct, flipBit(() => bit >> 3, bit & 7));
        assert.throws(() => decryptField(KEY, 5, BINDING, tampered), DECRYPT_FAILED);
      }),
      { numRuns: 200 },
    );
  });
});

/** The ciphertext with its last base64url character changed so that only the ignored low bits differ. */
function nonCanonical(ct: string): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
  const last = alphabet.indexOf(ct.at(-1)!);
  const unused = [0, 0, 4, 2][(ct.length - ct.lastIndexOf(':') - 1) % 4]!; // bits left over by the final character
  assert.ok(unused > 0, 'the fixture body length leaves unused bits');
  const tampered = ct.slice(0, -1) + alphabet[last ^ 1];
  assert.deepEqual(Buffer.from(tampered.slice(6), 'base64url'), Buffer.from(ct.slice(6), 'base64url'), 'same bytes, other text');
  return tampered;
}

describe('field cipher and blind index: malformed keys', () => {
  const { privateKey } = generateKeyPairSync('ed25519');
  const badKeys: unknown[] = [
    Buffer.alloc(31), Buffer.alloc(33), Buffer.alloc(0), 'k'.repeat(32), undefined, null,
    createSecretKey(Buffer.alloc(16)), privateKey, new Uint16Array(16),
  ];
  const ct = encryptField(KEY, 1, BINDING, 'x');

  it('refuses a key that is not 32 bytes with CRYPTO_KEY_INVALID, before any ciphertext check', () => {
    for (const key of badKeys) {
      assert.throws(() => encryptField(key as Buffer, 1, BINDING, 'x'), { code: 'CRYPTO_KEY_INVALID' });
      assert.throws(() => decryptField(key as Buffer, 1, BINDING, ct), { code: 'CRYPTO_KEY_INVALID' });
      assert.throws(() => decryptField(key as Buffer, 1, BINDING, 'garbage'), { code: 'CRYPTO_KEY_INVALID' });
      assert.throws(() => blindIndex(key as Buffer, { collection: 'c', field: 'f' }, 'x'), { code: 'CRYPTO_KEY_INVALID' });
    }
  });

  it('refuses a key version outside 1..2^32-1 with CRYPTO_KEY_INVALID', () => {
    for (const version of [0, -1, 1.5, 2 ** 32, NaN, Infinity, '1', undefined]) {
      assert.throws(() => encryptField(KEY, version as number, BINDING, 'x'), { code: 'CRYPTO_KEY_INVALID' });
      assert.throws(() => decryptField(KEY, version as number, BINDING, ct), { code: 'CRYPTO_KEY_INVALID' });
    }
    assert.ok(isCiphertext(encryptField(KEY, 2 ** 32 - 1, BINDING, 'x')));
  });

  it('makes its errors BulkheadErrors, so the HTTP layer renders them', () => {
    try {
      encryptField(Buffer.alloc(1), 1, BINDING, 'x');
      assert.fail('no error');
    } catch (error) {
      assert.ok(error instanceof BulkheadError);
    }
  });
});

describe('blind index', () => {
  const IKEY = randomBytes(32);
  const SCOPE: IndexScope = { collection: 'patients', field: 'email' };

  it('reproduces every vector, through the module and through raw HMAC from the documented layout', () => {
    for (const v of INDEX_VECTORS) {
      const key = Buffer.from(v.keyHex, 'hex');
      assert.equal(blindIndexInput(v.scope, v.value).toString('hex'), v.inputHex, v.comment);
      assert.equal(blindIndex(key, v.scope, v.value), v.index, v.comment);
      assert.equal(blindIndex(createSecretKey(key), v.scope, v.value), v.index, v.comment);
      assert.equal(docIndex(key, v.scope, v.canonicalJson), v.index, v.comment);
    }
    const byComment = new Map(INDEX_VECTORS.map((v) => [v.comment, v.index]));
    assert.equal(new Set(INDEX_VECTORS.map((v) => v.index)).size, INDEX_VECTORS.length - 1, 'only the reordered object repeats an index');
    assert.equal(byComment.get('an object, members in one order'), byComment.get('the same object, members in the other order: same index'));
  });

  it('is deterministic and compact: 22 base64url characters (128 bits)', () => {
    const a = blindIndex(IKEY, SCOPE, 'alice@example.com');
    assert.equal(a, blindIndex(IKEY, { ...SCOPE }, 'alice@example.com'));
    assert.match(a, /^[A-Za-z0-9_-]{22}$/);
  });

  it('is type-sensitive: values of different JSON types never share an index', () => {
    const values: JsonValue[] = [1, '1', true, 'true', null, 'null', [1], ['1'], { '1': 1 }, 0, '0', false, '', [], {}, 1.5, '1.5'];
    const indexes = values.map((v) => blindIndex(IKEY, SCOPE, v));
    assert.equal(new Set(indexes).size, values.length);
  });

  it('gives equal JSON values equal indexes: member order, -0, a number however written', () => {
    assert.equal(blindIndex(IKEY, SCOPE, { a: 1, b: { c: [1, 2], d: null } }), blindIndex(IKEY, SCOPE, { b: { d: null, c: [1, 2] }, a: 1 }));
    assert.equal(blindIndex(IKEY, SCOPE, -0), blindIndex(IKEY, SCOPE, 0));
    assert.equal(blindIndex(IKEY, SCOPE, JSON.parse('1.0') as number), blindIndex(IKEY, SCOPE, 1));
    assert.equal(blindIndex(IKEY, SCOPE, JSON.parse('1E2') as number), blindIndex(IKEY, SCOPE, 100));
    assert.notEqual(blindIndex(IKEY, SCOPE, [1, 2]), blindIndex(IKEY, SCOPE, [2, 1]), 'array order matters');
    assert.notEqual(blindIndex(IKEY, SCOPE, 'e\u0301'), blindIndex(IKEY, SCOPE, '\u00e9'), 'no Unicode normalization, as jsonb equality');
  });

  it('matches a JSON value parsed back from its text (property)', () => {
    fc.assert(
      fc.property(fc.jsonValue(), (value) => {
        const reparsed = JSON.parse(JSON.stringify(value)) as JsonValue;
        assert.equal(blindIndex(IKEY, SCOPE, value as JsonValue), blindIndex(IKEY, SCOPE, reparsed));
      }),
      { numRuns: 300 },
    );
  });

  it('differs per field, per collection, per key, also when names run together the same', () => {
    const base = blindIndex(IKEY, SCOPE, 'alice@example.com');
    assert.notEqual(blindIndex(IKEY, { collection: 'patients', field: 'phone' }, 'alice@example.com'), base);
    assert.notEqual(blindIndex(IKEY, { collection: 'staff', field: 'email' }, 'alice@example.com'), base);
    assert.notEqual(blindIndex(IKEY, { collection: 'patient', field: 'semail' }, 'alice@example.com'), base);
    assert.notEqual(blindIndex(randomBytes(32), SCOPE, 'alice@example.com'), base);
  });

  it('does not equal a data-key MAC or leak the value', () => {
    const index = blindIndex(IKEY, SCOPE, 'alice@example.com');
    assert.ok(!index.includes('alice'));
    assert.notEqual(index, createHmac('sha256', IKEY).update('"alice@example.com"').digest().subarray(0, 16).toString('base64url'));
  });

  it('refuses what JSON cannot carry and a bad scope, as caller bugs', () => {
    for (const bad of [undefined, NaN, Infinity, () => 1, new Date(0), { a: undefined }, [undefined], [, 1], 10n]) {
      assert.throws(() => blindIndex(IKEY, SCOPE, bad as unknown as JsonValue), { code: 'INTERNAL' }, String(bad));
    }
    let deep: JsonValue = 1;
    for (let i = 0; i < 65; i++) deep = [deep];
    assert.throws(() => blindIndex(IKEY, SCOPE, deep), { code: 'INTERNAL' });
    for (const scope of [{ collection: '', field: 'f' }, { collection: 'c', field: '' }, { collection: 'c' }, null]) {
      assert.throws(() => blindIndex(IKEY, scope as IndexScope, 'x'), { code: 'INTERNAL' });
    }
  });
});
