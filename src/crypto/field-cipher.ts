/**
 * Encryption of one classified field value with AES-256-GCM (SPEC §4, issue 4), in the versioned
 * text format of docs/encryption.md, "Field ciphertext format":
 *
 *   bh1:<keyVersion>:<base64url(iv ‖ ciphertext ‖ tag)>
 *
 * The associated data binds the tenant, collection, field, record id and key version, so a
 * ciphertext copied anywhere else fails to decrypt. Every decryption failure is the same
 * CRYPTO_DECRYPT_FAILED with one fixed message, whatever check failed.
 *
 * Keys are the caller's: this module derives none, caches none and keeps no state but a pool of
 * random bytes for IVs.
 */
import { createCipheriv, createDecipheriv, randomFillSync } from 'node:crypto';
import { BulkheadError, DecryptionFailedError, KeyInvalidError } from '../errors.js';
import {
  checkKey,
  itemBytes,
  nameLength,
  writeBytesItem,
  writeTextItem,
  writeUint32Item,
  writeUuidItem,
  type JsonValue,
  type SecretKey,
} from './encoding.js';

/** The format tag that starts every field ciphertext; it is also the first item of the associated data. */
export const FIELD_CIPHERTEXT_PREFIX = 'bh1:';
/** GCM's 96-bit IV (NIST SP 800-38D §8.2: the length for which random IVs are specified). */
export const IV_BYTES = 12;
/** The full 128-bit GCM tag; decryption accepts no shorter one. */
export const TAG_BYTES = 16;
/** Largest key version: it is a 32-bit unsigned integer in the associated data. */
export const MAX_KEY_VERSION = 0xffff_ffff;

const FORMAT_TAG = Buffer.from('bh1', 'ascii');
/** Associated data bytes besides the two names: six length prefixes, the tag, two UUIDs, the version. */
const AAD_FIXED_BYTES = itemBytes(FORMAT_TAG.length) + 2 * itemBytes(16) + itemBytes(4) + 2 * itemBytes(0);
/** The shortest body: IV, at least one byte of JSON text, tag. */
const MIN_BODY_BYTES = IV_BYTES + 1 + TAG_BYTES;
const SHAPE = /^bh1:[1-9][0-9]{0,9}:[A-Za-z0-9_-]{39,}$/;

/** Where a field value belongs: every member goes into the associated data. */
export interface FieldBinding {
  /** The tenant's id (canonical UUID). */
  readonly tenantId: string;
  /** The collection's name. */
  readonly collection: string;
  /** The field's name. */
  readonly field: string;
  /** The record's id (canonical UUID). */
  readonly recordId: string;
}

/** Options of `encryptField`; only the known-answer tests pass any. */
export interface EncryptFieldOptions {
  /**
   * TESTS ONLY: a fixed 12-byte IV, so that known-answer vectors are reproducible. Reusing an IV
   * under one key destroys GCM's confidentiality and integrity: production code never sets this.
   */
  readonly unsafeTestOnlyIv?: Uint8Array;
}

// IVs are drawn from a pool refilled 4,092 bytes (341 IVs) at a time: randomBytes(12) per call
// measured ~6.7 µs here (OpenSSL 3's fixed per-call cost), a pooled draw ~0.06 µs. Each byte is
// used once; an IV is public, so holding the next ones in memory reveals nothing.
const POOL_BYTES = IV_BYTES * 341;
const pool = Buffer.allocUnsafeSlow(POOL_BYTES);
let poolOffset = POOL_BYTES;

function freshIv(): Buffer {
  if (poolOffset === POOL_BYTES) {
    randomFillSync(pool);
    poolOffset = 0;
  }
  const iv = pool.subarray(poolOffset, poolOffset + IV_BYTES);
  poolOffset += IV_BYTES;
  return iv;
}

function checkKeyVersion(keyVersion: unknown): number {
  if (typeof keyVersion !== 'number' || !Number.isInteger(keyVersion) || keyVersion < 1 || keyVersion > MAX_KEY_VERSION) {
    throw new KeyInvalidError(`the data key version must be an integer from 1 to ${MAX_KEY_VERSION}`);
  }
  return keyVersion;
}

/**
 * The associated data: length-prefixed items "bh1", tenant id (16 bytes), collection (UTF-8),
 * field (UTF-8), record id (16 bytes), key version (4 bytes, big-endian). Validates the binding
 * first; a bad binding is the caller's bug (INTERNAL), never a decryption failure.
 */
export function fieldAssociatedData(binding: FieldBinding, keyVersion: number): Buffer {
  if (typeof binding !== 'object' || binding === null) throw new BulkheadError('INTERNAL', 'binding must be an object');
  const { tenantId, collection, field, recordId } = binding;
  const collectionLength = nameLength(collection, 'binding.collection');
  const fieldLength = nameLength(field, 'binding.field');
  const out = Buffer.allocUnsafe(AAD_FIXED_BYTES + collectionLength + fieldLength);
  let o = writeBytesItem(out, 0, FORMAT_TAG);
  o = writeUuidItem(out, o, tenantId, 'binding.tenantId');
  o = writeTextItem(out, o, collection, collectionLength);
  o = writeTextItem(out, o, field, fieldLength);
  o = writeUuidItem(out, o, recordId, 'binding.recordId');
  writeUint32Item(out, o, keyVersion);
  return out;
}

/**
 * Encrypts a field's JSON value (the UTF-8 of `JSON.stringify(value)`, so its type comes back on
 * decryption) under a data key of the given version, with a fresh random IV. Returns
 * `bh1:<keyVersion>:<base64url(iv ‖ ciphertext ‖ tag)>`, plain ASCII that fits in a JSON string.
 * Throws CRYPTO_KEY_INVALID for a key that is not 32 bytes or a version outside 1..2^32−1, INTERNAL
 * for a bad binding or a value JSON cannot carry.
 */
export function encryptField(
  key: SecretKey,
  keyVersion: number,
  binding: FieldBinding,
  value: JsonValue,
  options?: EncryptFieldOptions,
): string {
  const k = checkKey(key, 'the data key');
  const version = checkKeyVersion(keyVersion);
  const aad = fieldAssociatedData(binding, version);
  // JSON.stringify turns a top-level NaN into "null" and undefined into undefined, and throws its
  // own TypeError for a BigInt or a cycle: refuse them all alike rather than store something other
  // than what was given. Values parsed from a request are JSON already.
  let json: string | undefined;
  try {
    json = typeof value === 'number' && !Number.isFinite(value) ? undefined : JSON.stringify(value);
  } catch {
    json = undefined;
  }
  if (typeof json !== 'string') throw new BulkheadError('INTERNAL', 'the value to encrypt is not JSON');

  let iv: Buffer;
  if (options?.unsafeTestOnlyIv === undefined) {
    iv = freshIv();
  } else {
    if (!(options.unsafeTestOnlyIv instanceof Uint8Array) || options.unsafeTestOnlyIv.byteLength !== IV_BYTES) {
      throw new BulkheadError('INTERNAL', `unsafeTestOnlyIv must be ${IV_BYTES} bytes`);
    }
    iv = Buffer.from(options.unsafeTestOnlyIv);
  }
  const cipher = createCipheriv('aes-256-gcm', k, iv, { authTagLength: TAG_BYTES });
  cipher.setAAD(aad);
  const body = cipher.update(json, 'utf8');
  cipher.final(); // GCM has no padding: final() only computes the tag.
  const tag = cipher.getAuthTag();
  // 12 bytes are exactly 16 base64 characters with no padding, so encoding the IV and the rest
  // apart gives the same text as encoding iv ‖ ciphertext ‖ tag whole, with one copy fewer.
  return `${FIELD_CIPHERTEXT_PREFIX}${version}:${iv.toString('base64url')}${Buffer.concat([body, tag]).toString('base64url')}`;
}

/** The key version of a well-shaped ciphertext, or undefined: no exceptions on this path. */
function parseVersion(ciphertext: unknown): { version: number; bodyStart: number } | undefined {
  if (typeof ciphertext !== 'string' || !ciphertext.startsWith(FIELD_CIPHERTEXT_PREFIX)) return undefined;
  const colon = ciphertext.indexOf(':', FIELD_CIPHERTEXT_PREFIX.length);
  const digits = colon - FIELD_CIPHERTEXT_PREFIX.length;
  if (digits < 1 || digits > 10 || ciphertext.charCodeAt(FIELD_CIPHERTEXT_PREFIX.length) === 0x30) return undefined;
  let version = 0;
  for (let i = FIELD_CIPHERTEXT_PREFIX.length; i < colon; i++) {
    const d = ciphertext.charCodeAt(i) - 0x30;
    if (d < 0 || d > 9) return undefined;
    version = version * 10 + d;
  }
  if (version > MAX_KEY_VERSION) return undefined;
  return { version, bodyStart: colon + 1 };
}

/**
 * Decrypts a field ciphertext made by `encryptField` for the same binding, with the data key of
 * the version it names, and returns the JSON value. Every failure (a wrong key, a ciphertext moved
 * to another record, field, collection or tenant, a flipped bit, a truncated or empty value, bad
 * base64url, an unknown format, a key version other than `keyVersion`) throws the same
 * CRYPTO_DECRYPT_FAILED with the same message and no cause, so nothing tells which check failed.
 * A key or version that is itself malformed is the caller's bug: CRYPTO_KEY_INVALID, checked first.
 */
export function decryptField(key: SecretKey, keyVersion: number, binding: FieldBinding, ciphertext: string): JsonValue {
  const k = checkKey(key, 'the data key');
  const version = checkKeyVersion(keyVersion);
  const aad = fieldAssociatedData(binding, version);
  let plaintext: Buffer;
  try {
    const parsed = parseVersion(ciphertext);
    if (parsed === undefined || parsed.version !== version) throw new DecryptionFailedError();
    const text = ciphertext.slice(parsed.bodyStart);
    const bytes = Buffer.from(text, 'base64url');
    // Node's decoder skips characters outside the alphabet and ignores stray trailing bits;
    // re-encoding must give the text back, so exactly one text stands for each byte string.
    if (bytes.length < MIN_BODY_BYTES || bytes.toString('base64url') !== text) throw new DecryptionFailedError();
    const decipher = createDecipheriv('aes-256-gcm', k, bytes.subarray(0, IV_BYTES), { authTagLength: TAG_BYTES });
    decipher.setAuthTag(bytes.subarray(bytes.length - TAG_BYTES));
    decipher.setAAD(aad);
    const out = decipher.update(bytes.subarray(IV_BYTES, bytes.length - TAG_BYTES));
    decipher.final(); // verifies the tag (constant-time, in OpenSSL); nothing above is used before it passes.
    plaintext = out;
  } catch {
    throw new DecryptionFailedError();
  }
  try {
    return JSON.parse(plaintext.toString('utf8')) as JsonValue;
  } catch {
    // Authentic but not JSON: only a writer outside this module could have made it. Same answer.
    throw new DecryptionFailedError();
  }
}

/**
 * The key version a ciphertext names, so a reader can fetch that key before decrypting. Checks
 * the shape only (authenticity is decryptField's job); anything else throws CRYPTO_DECRYPT_FAILED,
 * the same error decryption throws.
 */
export function keyVersionOf(ciphertext: string): number {
  if (!isCiphertext(ciphertext)) throw new DecryptionFailedError();
  return (parseVersion(ciphertext) as { version: number }).version;
}

/**
 * True when `value` has the shape of a field ciphertext: the `bh1:` tag, a key version and at
 * least the base64url of an IV, one byte and a tag. A cheap check, not a proof: which fields are
 * encrypted is decided by the collection's definition, never by sniffing values.
 */
export function isCiphertext(value: unknown): value is string {
  return typeof value === 'string' && SHAPE.test(value) && parseVersion(value) !== undefined;
}
