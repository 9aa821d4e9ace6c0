/**
 * Byte encodings shared by the field cipher and the blind index: the length-prefixed items that
 * make associated data and MAC inputs unambiguous, UUIDs as their 16 bytes, the canonical JSON
 * text of a value, and the checks on keys and names that both run before touching any bytes.
 * docs/encryption.md gives every layout; test/field-cipher.test.ts rebuilds them from that page.
 */
import { KeyObject } from 'node:crypto';
import { BulkheadError, KeyInvalidError } from '../errors.js';

/** A JSON value, as `JSON.parse` returns it. */
export type JsonValue = string | number | boolean | null | readonly JsonValue[] | { readonly [key: string]: JsonValue };

/**
 * A 256-bit secret key: its 32 bytes, or a secret `KeyObject` made from them once. Both cost the
 * same per call (bench/crypto.bench.ts); a `KeyObject` is the better form to hold, as its bytes live
 * outside the JavaScript heap. Never make one per call: `createSecretKey` alone costs ~3.7 µs.
 */
export type SecretKey = KeyObject | Uint8Array;

/** Bytes in a key: AES-256 for data keys, and the same for HMAC-SHA-256 index keys (RFC 2104 §3: at least the output length). */
export const KEY_BYTES = 32;

/** Largest name (collection or field) in UTF-8 bytes; Bulkhead's own names are at most 63. */
const MAX_NAME_BYTES = 255;
/** Nesting limit of a canonicalized value; the API already refuses more than 64 levels. */
const MAX_DEPTH = 64;
const LONE_SURROGATE = /\p{Cs}/u;

/**
 * Throws CRYPTO_KEY_INVALID unless `key` is 32 bytes or a 32-byte secret `KeyObject`. The message
 * names which key (`what`), never its bytes.
 */
export function checkKey(key: unknown, what: string): SecretKey {
  if (key instanceof KeyObject) {
    if (key.type === 'secret' && key.symmetricKeySize === KEY_BYTES) return key;
  } else if (key instanceof Uint8Array && key.byteLength === KEY_BYTES) {
    return key;
  }
  throw new KeyInvalidError(`${what} must be ${KEY_BYTES} bytes (a Uint8Array or a secret KeyObject)`);
}

/**
 * The UTF-8 length of a collection or field name, checked: a caller bug (INTERNAL) unless it is
 * a non-empty string of well-formed Unicode (a lone surrogate would become U+FFFD in UTF-8, so two
 * names could share bytes) of at most 255 bytes.
 */
export function nameLength(name: unknown, what: string): number {
  if (typeof name !== 'string' || name.length === 0 || LONE_SURROGATE.test(name)) {
    throw new BulkheadError('INTERNAL', `${what} must be a non-empty string of well-formed Unicode`);
  }
  const length = Buffer.byteLength(name, 'utf8');
  if (length > MAX_NAME_BYTES) throw new BulkheadError('INTERNAL', `${what} must be at most ${MAX_NAME_BYTES} bytes in UTF-8`);
  return length;
}

// Associated data and MAC inputs are a list of items, each a 4-byte big-endian length and then its
// bytes: with every item prefixed, no two different lists give the same bytes (`("ab", "c")` and
// `("a", "bc")` cannot collide). The writers below fill one buffer sized in advance: building the
// items as separate buffers and joining them (UUIDs through a regex, replaceAll and a hex decode)
// measured 1.7 µs per associated data, a third of a whole encryption; this way 0.55 µs.

/** Bytes an item of `n` bytes takes. */
export const itemBytes = (n: number): number => 4 + n;

/** Writes `bytes` as an item at `offset`; returns the offset after it. */
export function writeBytesItem(out: Buffer, offset: number, bytes: Uint8Array): number {
  out.writeUInt32BE(bytes.length, offset);
  out.set(bytes, offset + 4);
  return offset + 4 + bytes.length;
}

/** Writes a string as a UTF-8 item of `length` bytes (from nameLength or Buffer.byteLength); returns the offset after it. */
export function writeTextItem(out: Buffer, offset: number, text: string, length: number): number {
  out.writeUInt32BE(length, offset);
  if (length === text.length && length <= 64) {
    // As many UTF-8 bytes as UTF-16 units means pure ASCII; a short ASCII name is copied faster by
    // hand than through Buffer#write (~10 ns against ~70 ns, measured), and names are short.
    for (let i = 0; i < length; i++) out[offset + 4 + i] = text.charCodeAt(i);
  } else {
    out.write(text, offset + 4, length, 'utf8');
  }
  return offset + 4 + length;
}

/** Writes a 32-bit unsigned integer, big-endian, as a 4-byte item; returns the offset after it. */
export function writeUint32Item(out: Buffer, offset: number, value: number): number {
  out.writeUInt32BE(4, offset);
  out.writeUInt32BE(value, offset + 4);
  return offset + 8;
}

const HEX = new Int8Array(128).fill(-1);
for (let i = 0; i < 16; i++) HEX['0123456789abcdef'.charCodeAt(i)] = i;

/**
 * Writes the 16 bytes of a canonical (lower-case, hyphenated) UUID, in RFC 9562 order, as an item;
 * returns the offset after it. Anything else (capitals, no hyphens, braces) is a caller bug:
 * INTERNAL, naming `what`. Ids are only ever accepted in canonical form (src/ids.ts, isUuid).
 */
export function writeUuidItem(out: Buffer, offset: number, id: unknown, what: string): number {
  if (typeof id === 'string' && id.length === 36) {
    out.writeUInt32BE(16, offset);
    let o = offset + 4;
    let ok = true;
    for (let i = 0; i < 36; i++) {
      const c = id.charCodeAt(i);
      if (i === 8 || i === 13 || i === 18 || i === 23) {
        ok &&= c === 0x2d;
        continue;
      }
      const hi = c < 128 ? HEX[c]! : -1;
      const d = id.charCodeAt(++i);
      const lo = d < 128 ? HEX[d]! : -1;
      ok &&= hi >= 0 && lo >= 0;
      out[o++] = (hi << 4) | lo;
    }
    if (ok) return o;
  }
  throw new BulkheadError('INTERNAL', `${what} must be a canonical UUID`);
}

/**
 * The canonical JSON text of a value (RFC 8785, JCS): object members sorted by their names'
 * UTF-16 code units, no whitespace, numbers and strings as ECMAScript's JSON.stringify writes them
 * (which is what JCS specifies). Equal JSON values give equal text whatever the key order, `-0`
 * gives `0`, and the text keeps the type: `1`, `"1"` and `true` differ.
 * Throws INTERNAL for anything JSON cannot carry (undefined, a function, NaN, a class instance).
 */
export function canonicalJson(value: unknown, depth = 0): string {
  switch (typeof value) {
    case 'string':
      return JSON.stringify(value);
    case 'boolean':
      return value ? 'true' : 'false';
    case 'number':
      if (!Number.isFinite(value)) break;
      return JSON.stringify(value);
    case 'object': {
      if (value === null) return 'null';
      if (depth >= MAX_DEPTH) throw new BulkheadError('INTERNAL', `a value to index is nested deeper than ${MAX_DEPTH} levels`);
      if (Array.isArray(value)) {
        // An index loop, not map(): map skips the holes of a sparse array, which JSON cannot carry.
        const items: string[] = [];
        for (let i = 0; i < value.length; i++) items.push(canonicalJson(value[i], depth + 1));
        return `[${items.join(',')}]`;
      }
      const proto = Object.getPrototypeOf(value);
      if (proto !== Object.prototype && proto !== null) break;
      const record = value as Record<string, unknown>;
      const members = Object.keys(record)
        .sort()
        .map((k) => `${JSON.stringify(k)}:${canonicalJson(record[k], depth + 1)}`);
      return `{${members.join(',')}}`;
    }
    default:
      break;
  }
  throw new BulkheadError('INTERNAL', 'the value is not JSON (undefined, a function, a non-finite number or a class instance)');
}
