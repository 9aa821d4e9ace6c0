import { randomFillSync } from 'node:crypto';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/**
 * A plain lower-case SQL identifier (schema, role, database names): safe to write into SQL
 * unquoted, and at most 63 bytes, PostgreSQL's limit.
 */
export const PLAIN_IDENTIFIER = /^[a-z_][a-z0-9_]{0,62}$/;

/** True for a plain lower-case SQL identifier (`PLAIN_IDENTIFIER`). */
export function isPlainIdentifier(value: unknown): value is string {
  return typeof value === 'string' && PLAIN_IDENTIFIER.test(value);
}

/** True for a canonical (lower-case, hyphenated) UUID. Only such strings are accepted as ids. */
export function isUuid(value: unknown): value is string {
  return typeof value === 'string' && value.length === 36 && UUID.test(value);
}

let lastMs = 0;
let counter = 0;

// Random bytes come from a pool refilled 4 KiB at a time, as Node's own randomUUID does: each
// randomBytes() call costs ~6-10 µs here (a fixed per-call cost in OpenSSL 3), a pooled draw
// well under 1 µs, and a uuidv7 is made for every request id. Each byte is used once.
const POOL_BYTES = 4096;
const pool = Buffer.alloc(POOL_BYTES);
let poolOffset = POOL_BYTES;

function random16(): Buffer {
  if (poolOffset + 16 > POOL_BYTES) {
    randomFillSync(pool);
    poolOffset = 0;
  }
  const bytes = Buffer.allocUnsafe(16);
  pool.copy(bytes, 0, poolOffset, poolOffset + 16);
  poolOffset += 16;
  return bytes;
}

/**
 * A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then randomness. Ids sort by creation time,
 * which keeps B-tree inserts at the right edge and makes id order a stable default sort.
 * Within one millisecond a 12-bit counter in `rand_a` keeps ids from one process monotonic.
 */
export function uuidv7(now: number = Date.now()): string {
  if (now <= lastMs) {
    counter++;
    if (counter > 0xfff) {
      lastMs++;
      counter = 0;
    }
    now = lastMs;
  } else {
    lastMs = now;
    counter = 0;
  }
  const bytes = random16();
  bytes.writeUIntBE(now, 0, 6);
  bytes[6] = 0x70 | (counter >> 8);
  bytes[7] = counter & 0xff;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  const hex = bytes.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
