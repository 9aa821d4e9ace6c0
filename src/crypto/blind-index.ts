/**
 * Blind index of an encrypted field (SPEC §4, issue 4): a keyed HMAC-SHA-256 of the value's
 * canonical JSON, so that `eq` and `in` filters and per-tenant uniqueness work on a field whose
 * stored value is a ciphertext. Layout in docs/encryption.md, "Blind index".
 *
 * What it reveals, by design: within one tenant's field, which records hold equal values.
 */
import { createHmac } from 'node:crypto';
import { canonicalJson, checkKey, itemBytes, nameLength, writeBytesItem, writeTextItem, type JsonValue, type SecretKey } from './encoding.js';

/** Bytes of the HMAC kept: 128 bits, so that two distinct values of a field collide with probability ~n²/2^129. */
export const BLIND_INDEX_BYTES = 16;

const DOMAIN = Buffer.from('bh1-bidx', 'ascii');

/** The field a blind index is for: both names go into the MAC input. */
export interface IndexScope {
  /** The collection's name. */
  readonly collection: string;
  /** The field's name. */
  readonly field: string;
}

/**
 * The MAC input: length-prefixed items "bh1-bidx", collection (UTF-8), field (UTF-8), canonical
 * JSON of the value (UTF-8). Exported for the known-answer tests and for tools that check an index.
 */
export function blindIndexInput(scope: IndexScope, value: JsonValue): Buffer {
  const collection = scope?.collection;
  const field = scope?.field;
  const collectionLength = nameLength(collection, 'scope.collection');
  const fieldLength = nameLength(field, 'scope.field');
  const canonical = canonicalJson(value);
  const valueLength = Buffer.byteLength(canonical, 'utf8');
  const out = Buffer.allocUnsafe(itemBytes(DOMAIN.length) + itemBytes(collectionLength) + itemBytes(fieldLength) + itemBytes(valueLength));
  let o = writeBytesItem(out, 0, DOMAIN);
  o = writeTextItem(out, o, collection as string, collectionLength);
  o = writeTextItem(out, o, field as string, fieldLength);
  writeTextItem(out, o, canonical, valueLength);
  return out;
}

/**
 * The blind index of `value` in a field: base64url of the first 16 bytes of
 * HMAC-SHA-256(indexKey, input), 22 characters. Equal JSON values give equal indexes whatever
 * their object key order; values of different types never do (`1` and `"1"` differ), nor the same
 * value in another field, collection or under another tenant's index key.
 * `indexKey` is the tenant's index key, never one of its data keys. Throws CRYPTO_KEY_INVALID for
 * a key that is not 32 bytes, INTERNAL for a bad scope or a value JSON cannot carry.
 */
export function blindIndex(indexKey: SecretKey, scope: IndexScope, value: JsonValue): string {
  const key = checkKey(indexKey, 'the index key');
  const input = blindIndexInput(scope, value);
  return createHmac('sha256', key).update(input).digest().toString('base64url', 0, BLIND_INDEX_BYTES);
}
