/**
 * The audit hash chain (SPEC §6, issue 5): every chain (one per tenant, one for the platform) is
 * a gapless sequence of events from seq 1, each row holding
 *
 *   hash = SHA-256( prevHash (32 bytes) ‖ UTF-8 of the canonical JSON of the event with its `seq` )
 *
 * where prevHash is the previous row's hash, 32 zero bytes for seq 1. Canonical JSON is RFC 8785
 * (JCS) as `canonicalJson` in src/crypto/encoding.ts implements it (members sorted by UTF-16 code
 * units, no whitespace, numbers and strings as ECMAScript's JSON.stringify writes them, which is
 * what RFC 8785 §3.2.2 prescribes), reused rather than a package: it is already the codebase's
 * one canonical form, and it is RFC 8785 for every I-JSON value (the event schema admits only safe
 * integers and storable strings). `canonicalEventJson` is a faster route to the same text.
 * test/audit-chain.test.ts checks both on the RFC's vectors.
 *
 * The chain is keyless: it shows that rows were changed, removed or reordered, not who appended
 * them. Rewriting a whole chain consistently is caught by the signed checkpoints (checkpoint.ts,
 * witness.ts), which `verifyChain` compares with the rows as its `anchors`.
 */
import * as nodeCrypto from 'node:crypto';
import { createHash, timingSafeEqual } from 'node:crypto';
import { canonicalJson } from '../crypto/encoding.js';
import { BulkheadError } from '../errors.js';
import { isUuid } from '../ids.js';
import { isAuditEvent, type AuditEvent } from './event.js';

/** Bytes in a chain hash (SHA-256). */
export const HASH_BYTES = 32;

/** The name of the platform chain; a tenant's chain is named by the tenant's id. */
export const PLATFORM_CHAIN = 'platform';

/** A chain's name: a tenant id (canonical UUID) or `platform`. */
export type ChainId = string;

/** True for a tenant id or `platform`. */
export function isChainId(value: unknown): value is ChainId {
  return value === PLATFORM_CHAIN || isUuid(value);
}

/** The last row of a chain: its seq and hash (seq 0 and 32 zero bytes for an empty chain). */
export interface ChainHead {
  readonly seq: number;
  readonly hash: Uint8Array;
}

/** The head of an empty chain: seq 0, the genesis previous hash of 32 zero bytes. */
export function genesisHead(): ChainHead {
  return { seq: 0, hash: Buffer.alloc(HASH_BYTES) };
}

/** An event as the chain stores and hashes it: the validated event plus its `seq`. */
export type ChainedEvent = AuditEvent & { readonly seq: number };

/** A row as a chain writer inserts it. */
export interface LinkedRow {
  readonly seq: number;
  readonly prevHash: Buffer;
  readonly hash: Buffer;
  readonly event: ChainedEvent;
  /** The canonical JSON that was hashed: store it as the event (`$n::jsonb`) rather than serializing again. */
  readonly json: string;
  /** The event's time, for the row's `time` column. */
  readonly time: string;
}

/** A stored row, as read back for verification (from the database, an export, or memory). */
export interface StoredRow {
  /** A number, a bigint, or the decimal text `pg` returns for a bigint column. */
  readonly seq: number | bigint | string;
  readonly prevHash: Uint8Array;
  readonly hash: Uint8Array;
  /** The event as stored (parsed JSON, `seq` included). */
  readonly event: unknown;
  /** The row's `time` column, when read: it must equal the event's time. */
  readonly time?: Date | string;
}

/** A signed checkpoint, reduced to what the rows are compared with: the hash of the row at `seq`. */
export interface Anchor {
  readonly seq: number;
  readonly hash: Uint8Array;
}

/** A checkpoint that did not verify (signature, format or order); `seq` is its claimed seq when readable. */
export interface AnchorFailure {
  readonly seq: number | null;
  /** Where it is (`line 12 of the witness`), never why it failed: checkpoint failures are uniform. */
  readonly where: string;
}

/** What `verifyChain` compares the rows with, in increasing seq order. */
export type AnchorSource = AsyncIterable<Anchor | AnchorFailure> | Iterable<Anchor | AnchorFailure>;

/**
 * How a chain diverges:
 * - `gap`: a seq is missing (a row was deleted);
 * - `reorder`: rows are out of order (two rows swapped, in the stream or in their seq column);
 * - `forged`: a row that cannot belong: a second row for a seq already verified (an inserted row),
 *   or an event that names another chain;
 * - `prev-mismatch`: a row's prevHash is not the previous row's hash;
 * - `hash-mismatch`: a row's hash is not the hash of its prevHash and event (the event or the hash was changed);
 * - `column-mismatch`: the row's `time` column disagrees with its event;
 * - `malformed`: a row that is not a chain row (a hash not 32 bytes, an event that is not an object);
 * - `missing-tail`: the chain ends before a signed checkpoint (rows deleted from the end, truncation);
 * - `witness-mismatch`: the row at a checkpoint's seq has another hash than the signed one (the chain
 *   was rewritten consistently after that checkpoint was taken);
 * - `checkpoint-invalid`: a checkpoint of the witness does not verify.
 */
export type DivergenceKind =
  | 'gap'
  | 'reorder'
  | 'forged'
  | 'prev-mismatch'
  | 'hash-mismatch'
  | 'column-mismatch'
  | 'malformed'
  | 'missing-tail'
  | 'witness-mismatch'
  | 'checkpoint-invalid';

/** The first place a chain stops verifying. */
export interface Divergence {
  readonly chain: ChainId;
  /** The first seq that does not verify (for `witness-mismatch`, the checkpoint's seq). */
  readonly seq: number;
  readonly kind: DivergenceKind;
  /** What differs, for a human; identifiers and numbers only, never event content. */
  readonly message: string;
  /** The last seq up to which rows verified and agreed with every checkpoint seen. */
  readonly lastGoodSeq: number;
}

/** What `verifyChain` found. */
export type VerifyResult =
  | { readonly ok: true; readonly chain: ChainId; readonly head: ChainHead; readonly rows: number; readonly checkpoints: number }
  | { readonly ok: false; readonly chain: ChainId; readonly divergence: Divergence; readonly rows: number; readonly checkpoints: number };

/** Options of `verifyChain`. */
export interface VerifyOptions {
  /** The chain the rows belong to: every event must name it (`tenantId`, or null for `platform`). */
  readonly chain: ChainId;
  /** Where the rows start: the genesis head by default, or a retention anchor (the head before the first kept row). */
  readonly start?: ChainHead;
  /** Signed checkpoints (already reduced by witness.ts), in increasing seq order. */
  readonly anchors?: AnchorSource;
  /** Called every `progressEvery` rows with the number verified so far (for a progress bar). */
  readonly onProgress?: (rows: number) => void;
  /** Default 10,000. */
  readonly progressEvery?: number;
}

/** A chain that does not verify, where a caller needs an error (AUDIT_CHAIN_BROKEN) rather than a result. */
export class AuditChainBrokenError extends BulkheadError {
  readonly divergence: Divergence;

  constructor(divergence: Divergence) {
    super('AUDIT_CHAIN_BROKEN', `audit chain ${divergence.chain} does not verify at seq ${divergence.seq} (${divergence.kind}): ${divergence.message}`, {
      details: { chain: divergence.chain, seq: divergence.seq, kind: divergence.kind },
    });
    this.divergence = divergence;
  }
}

/** Throws AUDIT_CHAIN_BROKEN unless the result is ok; returns the head otherwise. */
export function requireIntact(result: VerifyResult): ChainHead {
  if (!result.ok) throw new AuditChainBrokenError(result.divergence);
  return result.head;
}

/** A member name JSON.stringify would not write in insertion order (an array index), or `__proto__`, which an assignment would not copy. */
const UNORDERED_NAME = /^(?:0|[1-9][0-9]*|__proto__)$/;
/** Nesting limit, as canonicalJson's. */
const MAX_DEPTH = 64;

/**
 * A copy of `value` with every object's members inserted in sorted order, or undefined when a
 * name cannot keep that order (see UNORDERED_NAME) or the value is not plain JSON.
 */
function sortedCopy(value: unknown, depth: number): unknown {
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return value;
    case 'number':
      return Number.isFinite(value) ? value : undefined;
    case 'object': {
      if (value === null) return null;
      if (depth >= MAX_DEPTH) return undefined;
      if (Array.isArray(value)) {
        const out = new Array<unknown>(value.length);
        for (let i = 0; i < value.length; i++) {
          const item = sortedCopy(value[i], depth + 1);
          if (item === undefined) return undefined;
          out[i] = item;
        }
        return out;
      }
      const proto = Object.getPrototypeOf(value);
      if (proto !== Object.prototype && proto !== null) return undefined;
      const keys = Object.keys(value);
      keys.sort();
      const out: Record<string, unknown> = {};
      for (let i = 0; i < keys.length; i++) {
        const key = keys[i]!;
        if (UNORDERED_NAME.test(key)) return undefined;
        const item = sortedCopy((value as Record<string, unknown>)[key], depth + 1);
        if (item === undefined) return undefined;
        out[key] = item;
      }
      return out;
    }
    default:
      return undefined;
  }
}

/**
 * The canonical JSON (RFC 8785) of an event with its seq: the text whose UTF-8 bytes are hashed.
 * Equal to `canonicalJson` (src/crypto/encoding.ts) for every value, and about 1.5 times as fast
 * (measured in bench/audit.bench.ts' conditions): a copy with members inserted in sorted order is
 * written by the native JSON.stringify, whose number and string forms are the ones RFC 8785 §3.2.2
 * prescribes, and which writes members in insertion order except array-index names. A value with
 * such a name, with `__proto__`, or that is not JSON goes to canonicalJson itself (which throws
 * INTERNAL for what JSON cannot carry). test/audit-chain.test.ts checks both on the RFC's vectors
 * and on random values.
 */
export function canonicalEventJson(event: unknown): string {
  const sorted = sortedCopy(event, 0);
  return sorted === undefined ? canonicalJson(event) : JSON.stringify(sorted);
}

/** SHA-256(prevHash ‖ UTF-8 bytes of `json`): the hash of one link. */
export function linkHash(prevHash: Uint8Array, json: string): Buffer {
  return createHash('sha256').update(prevHash).update(json, 'utf8').digest();
}

function checkHead(head: ChainHead): void {
  if (!Number.isSafeInteger(head.seq) || head.seq < 0 || !(head.hash instanceof Uint8Array) || head.hash.byteLength !== HASH_BYTES) {
    throw new BulkheadError('INTERNAL', 'a chain head must be a seq from 0 and a 32-byte hash');
  }
}

/**
 * The row that follows `head` for `event`: seq head.seq + 1, prevHash head.hash, the event with
 * its seq, and its hash. Only events made by `createAuditEvent` are linked (AUDIT_EVENT_INVALID
 * otherwise), so nothing unvalidated is ever hashed into a chain.
 */
export function linkEvent(head: ChainHead, event: AuditEvent): LinkedRow {
  checkHead(head);
  if (!isAuditEvent(event)) throw new BulkheadError('AUDIT_EVENT_INVALID', 'audit event: only events made by createAuditEvent can be linked into a chain');
  const seq = head.seq + 1;
  const chained = Object.freeze({ ...event, seq }) as ChainedEvent;
  const json = canonicalEventJson(chained);
  const prevHash = Buffer.from(head.hash);
  return Object.freeze({ seq, prevHash, hash: linkHash(prevHash, json), event: chained, json, time: event.time });
}

/**
 * Links events into one chain in memory, from a head read from storage. The writer that persists
 * rows owns the head: it must read it and insert in one transaction (or retry on a seq conflict).
 */
export class ChainLinker {
  readonly chain: ChainId;
  #head: ChainHead;

  constructor(chain: ChainId, head: ChainHead = genesisHead()) {
    if (!isChainId(chain)) throw new BulkheadError('INTERNAL', 'a chain is named by a tenant id or "platform"');
    checkHead(head);
    this.chain = chain;
    this.#head = { seq: head.seq, hash: Buffer.from(head.hash) };
  }

  /** The last row linked (or the head given). */
  get head(): ChainHead {
    return { seq: this.#head.seq, hash: Buffer.from(this.#head.hash) };
  }

  /** Links the next event; refuses an event of another chain (AUDIT_EVENT_INVALID). */
  append(event: AuditEvent): LinkedRow {
    if (isAuditEvent(event) && event.tenantId !== (this.chain === PLATFORM_CHAIN ? null : this.chain)) {
      throw new BulkheadError('AUDIT_EVENT_INVALID', 'audit event: its tenantId does not name the chain it is appended to', { details: { field: 'tenantId' } });
    }
    const row = linkEvent(this.#head, event);
    this.#head = { seq: row.seq, hash: row.hash };
    return row;
  }
}

/** A seq as a number, or undefined when it is not an integer from 1 to 2^53 - 1. */
function seqOf(value: unknown): number | undefined {
  let n: number;
  if (typeof value === 'number') n = value;
  else if (typeof value === 'bigint') n = Number(value);
  else if (typeof value === 'string' && /^[1-9][0-9]{0,15}$/.test(value)) n = Number(value);
  else return undefined;
  return Number.isSafeInteger(n) && n >= 1 ? n : undefined;
}

/** The `seq` an event claims, or undefined. */
function eventSeqOf(event: unknown): number | undefined {
  if (typeof event !== 'object' || event === null || Array.isArray(event)) return undefined;
  // Inside the event the seq is a JSON number, never text: anything else is not a chain event.
  const seq = (event as { seq?: unknown }).seq;
  return typeof seq === 'number' ? seqOf(seq) : undefined;
}

/** Hex digits of a chain hash. */
const HASH_HEX = HASH_BYTES * 2;

/** Lowercase hex of 32 bytes, or undefined when `value` is not 32 bytes. */
function hexOf(value: unknown): string | undefined {
  if (!(value instanceof Uint8Array) || value.byteLength !== HASH_BYTES) return undefined;
  return (Buffer.isBuffer(value) ? value : Buffer.from(value.buffer, value.byteOffset, value.byteLength)).toString('hex');
}

/**
 * A row as the database can send it most cheaply, for `verifyEncodedChain`: the hashes as hex
 * (`encode(hash, 'hex')`) rather than bytea decoded into Buffers, the event as its JSON text
 * (`event::text`) rather than parsed, the time column as a number rather than a Date.
 */
export interface EncodedRow {
  /** A number, a bigint, or the decimal text `pg` returns for a bigint column. */
  readonly seq: number | bigint | string;
  /** Lowercase hex of the 32-byte previous hash (as `encode(prev_hash, 'hex')` writes it). */
  readonly prevHash: string;
  /** Lowercase hex of the 32-byte hash. */
  readonly hash: string;
  /** The event as JSON text (any JSON layout: it is canonicalized here); a parsed value is accepted too. */
  readonly event: unknown;
  /**
   * The row's `time` column in milliseconds since the epoch, floored to a whole millisecond (as a
   * Date read by `pg` holds it), as a number or its decimal text; absent when not read.
   */
  readonly timeMs?: number | string | null;
}

/** One row reduced to what the checks compare; filled in place, so reading a row allocates nothing of its own. */
interface RowFacts {
  /** False when the row is not an object at all. */
  isRow: boolean;
  /** The row's seq column, when valid. */
  seq: number | undefined;
  /** The seq inside its event, when the event is an object with a valid numeric seq. */
  eventSeq: number | undefined;
  /** The event names the chain being verified (its tenantId, or null for the platform). */
  tenantOk: boolean;
  /** Lowercase hex of the row's prevHash and hash; undefined when not 32 bytes. */
  prevHex: string | undefined;
  hashHex: string | undefined;
  /** Bytes of the event's canonical JSON in the hasher's buffer (after the 32-byte prefix); -1 when the event is not JSON. */
  canonicalBytes: number;
  /** The time column in ms (NaN when unreadable), undefined when the row has none. */
  column: number | undefined;
  /** The event's time in ms (NaN when absent or not a time); read only when `column` is set. */
  eventTime: number;
}

function emptyFacts(): RowFacts {
  return { isRow: false, seq: undefined, eventSeq: undefined, tenantOk: false, prevHex: undefined, hashHex: undefined, canonicalBytes: -1, column: undefined, eventTime: NaN };
}

/**
 * SHA-256(prevHash ‖ canonical event) over one reused buffer: the event's canonical JSON is
 * written (UTF-8) after 32 bytes kept for the previous hash, and the whole is hashed in one call
 * (`crypto.hash` where Node has it, 20.12 on; a Hash object otherwise), the answer compared as
 * hex with the hex the database sends: 0.9 µs of CPU a link against 2.1 µs for a new Hash with two
 * updates and a digest compared as Buffers (measured on the benchmark's events, 2026-11-28).
 */
class LinkHasher {
  /** The prefix, the canonical bytes, and as much again as spare room for reordering members (TextCanonicalizer). */
  buffer: Buffer = Buffer.alloc(16_384);

  /** Makes room for `bytes` bytes of canonical JSON (and their spare room). */
  reserve(bytes: number): Buffer {
    const needed = 2 * (HASH_BYTES + bytes);
    if (this.buffer.length < needed) {
      let size = this.buffer.length;
      while (size < needed) size *= 2;
      this.buffer = Buffer.alloc(size);
    }
    return this.buffer;
  }

  /** Writes `json` after the prefix; returns its byte length. */
  writeJson(json: string): number {
    return this.reserve(3 * json.length).write(json, HASH_BYTES, 'utf8');
  }

  /** Lowercase hex of SHA-256(the 32 bytes of `prevHex` ‖ the `bytes` bytes after the prefix). */
  hashHex(prevHex: string, bytes: number): string {
    this.buffer.write(prevHex, 0, HASH_BYTES, 'hex');
    const data = this.buffer.subarray(0, HASH_BYTES + bytes);
    return ONE_SHOT ? nodeCrypto.hash('sha256', data, 'hex') : createHash('sha256').update(data).digest('hex');
  }
}

/** `crypto.hash` (Node 20.12 on; the package admits 20.10). */
const ONE_SHOT = typeof nodeCrypto.hash === 'function';

/** Top-level members of an event the checks read, as TextCanonicalizer finds them. */
const MEMBER_OTHER = 0;
const MEMBER_SEQ = 1;
const MEMBER_TENANT_ID = 2;
const MEMBER_TIME = 3;

/** What a top-level member's value was, for the checks. */
const KIND_ABSENT = 0;
const KIND_STRING = 1;
const KIND_NUMBER = 2;
const KIND_NULL = 3;
const KIND_OTHER = 4;

/** `{`, `}`, `[`, `]`, `,`, `:`, `"`, `\`, `-`, `0`, `9`. */
const OPEN_OBJECT = 0x7b;
const CLOSE_OBJECT = 0x7d;
const OPEN_ARRAY = 0x5b;
const CLOSE_ARRAY = 0x5d;
const COMMA = 0x2c;
const COLON = 0x3a;
const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const MINUS = 0x2d;
const DIGIT_0 = 0x30;
const DIGIT_9 = 0x39;
/** Deepest nesting the text route takes; deeper events go through JSON.parse (the schema has three levels). */
const TEXT_MAX_DEPTH = 32;
/** Longest event text the text route takes (an event is about 500 bytes); longer ones go through JSON.parse. */
const TEXT_MAX_LENGTH = 1 << 20;
/** Digits of the longest integer written as is: up to 15, every one is a safe integer that JSON.stringify writes back unchanged. */
const TEXT_MAX_DIGITS = 15;

/**
 * The canonical JSON of an event read as JSON text (`event::text`), written UTF-8 straight into
 * the hasher's buffer: what `canonicalEventJson(JSON.parse(text))` returns, without building the
 * parsed objects, their sorted copies and the string: about 2.3 µs of CPU per event of the
 * benchmark against 4.5 µs for JSON.parse and canonicalEventJson (2026-11-28), and no garbage
 * but the text itself. Whitespace is dropped and each object's members are put in the order of
 * their names' UTF-16 code units, as RFC 8785 §3.2.3 and canonicalEventJson do; every token is
 * copied as it is.
 *
 * It takes only text it can copy exactly, and answers -1 for anything else, which then goes
 * through JSON.parse and canonicalEventJson: a number that is not an integer of at most 15 digits
 * (`1.0`, `1e3`, `-0` are written otherwise by JSON.stringify), a string escape JSON.stringify
 * would not write the same way (it writes `\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t` and `\u00xx`
 * for the other control characters, as PostgreSQL's jsonb output does), an escaped or array-index
 * member name or `__proto__` (canonicalEventJson's own exceptions), a duplicate name, a lone
 * surrogate, deep nesting, or text that is not JSON. test/audit-verify-text.test.ts compares the
 * two on events as both backends' jsonb writes them and on random values in random layouts.
 *
 * It also keeps the top-level `seq`, `tenantId` and `time` for the checks.
 */
class TextCanonicalizer {
  #src = '';
  #pos = 0;
  #out: Buffer = Buffer.alloc(0);
  #at = 0;
  /** Members of the objects being read: name start and end in the text, bytes start and end in the output (4 per member). */
  #members = new Int32Array(256);
  #memberTop = 0;
  /** The integer value of the last number read (at most 15 digits, so exact). */
  #number = 0;
  /** Whether the last string read held an escape. */
  #escaped = false;

  /** The top-level `seq` (KIND_NUMBER: `seqNumber`), `tenantId` and `time` (their text spans), as KIND_*. */
  seqKind: number = KIND_ABSENT;
  seqNumber = 0;
  tenantKind: number = KIND_ABSENT;
  tenantStart = 0;
  tenantEnd = 0;
  tenantEscaped = false;
  timeKind: number = KIND_ABSENT;
  timeStart = 0;
  timeEnd = 0;
  timeEscaped = false;

  /**
   * Writes the canonical JSON of the object in `text` into `hasher`'s buffer after the prefix and
   * returns its byte length, or -1 when the text is not one this route takes (see the class).
   */
  canonicalize(text: string, hasher: LinkHasher): number {
    if (text.length > TEXT_MAX_LENGTH) return -1;
    this.#src = text;
    // Canonical JSON is never longer than the text, and a UTF-16 unit is at most 3 UTF-8 bytes.
    this.#out = hasher.reserve(3 * text.length);
    this.#at = HASH_BYTES;
    this.#memberTop = 0;
    this.seqKind = this.tenantKind = this.timeKind = KIND_ABSENT;
    this.#pos = skipSpace(text, 0);
    if (text.charCodeAt(this.#pos) !== OPEN_OBJECT || !this.#object(0)) return -1;
    return skipSpace(text, this.#pos) === text.length ? this.#at - HASH_BYTES : -1;
  }

  /** Reads the value at the position (spaces skipped), writing its canonical form; false when it is not one this route takes. */
  #value(depth: number): boolean {
    const c = this.#src.charCodeAt(this.#pos);
    if (c === QUOTE) return this.#string();
    if (c === OPEN_OBJECT) return this.#object(depth);
    if (c === OPEN_ARRAY) return this.#array(depth);
    if (c === MINUS || (c >= DIGIT_0 && c <= DIGIT_9)) return this.#integer();
    if (c === 0x74) return this.#literal('true');
    if (c === 0x66) return this.#literal('false');
    if (c === 0x6e) return this.#literal('null');
    return false;
  }

  #literal(word: string): boolean {
    if (!this.#src.startsWith(word, this.#pos)) return false;
    const out = this.#out;
    let at = this.#at;
    for (let i = 0; i < word.length; i++) out[at++] = word.charCodeAt(i);
    this.#at = at;
    this.#pos += word.length;
    return true;
  }

  /** An integer of at most 15 digits, not `-0`: JSON.stringify(Number(token)) is the token itself. */
  #integer(): boolean {
    const src = this.#src;
    const out = this.#out;
    let pos = this.#pos;
    let at = this.#at;
    const negative = src.charCodeAt(pos) === MINUS;
    if (negative) {
      out[at++] = MINUS;
      pos++;
    }
    const first = pos;
    let n = 0;
    let c = src.charCodeAt(pos);
    while (c >= DIGIT_0 && c <= DIGIT_9) {
      n = n * 10 + (c - DIGIT_0);
      out[at++] = c;
      c = src.charCodeAt(++pos);
    }
    const digits = pos - first;
    if (digits === 0 || digits > TEXT_MAX_DIGITS) return false;
    // A leading zero (`01`, JSON refuses it; `-0`, written `0`) and fractions or exponents go to JSON.parse.
    if (src.charCodeAt(first) === DIGIT_0 && (digits > 1 || negative)) return false;
    if (c === 0x2e || c === 0x65 || c === 0x45) return false;
    this.#number = negative ? -n : n;
    this.#pos = pos;
    this.#at = at;
    return true;
  }

  /**
   * A string, copied as it is (UTF-8 encoded): every character but `"`, `\` and the controls is
   * written literally by JSON.stringify, a surrogate only in a pair. Escapes are taken where
   * JSON.stringify writes the same one (see the class).
   */
  #string(): boolean {
    const src = this.#src;
    const out = this.#out;
    let pos = this.#pos + 1;
    let at = this.#at;
    let escaped = false;
    out[at++] = QUOTE;
    for (;;) {
      // Past the end charCodeAt is NaN, which no test below takes but the last.
      const c = src.charCodeAt(pos);
      if (c === QUOTE) break;
      if (c >= 0x20 && c < 0x80 && c !== BACKSLASH) {
        out[at++] = c;
        pos++;
        continue;
      }
      if (c === BACKSLASH) {
        const e = src.charCodeAt(pos + 1);
        escaped = true;
        if (e === QUOTE || e === BACKSLASH || e === 0x62 || e === 0x66 || e === 0x6e || e === 0x72 || e === 0x74) {
          out[at++] = BACKSLASH;
          out[at++] = e;
          pos += 2;
          continue;
        }
        // `\u00xx`, lowercase, for a control character without a short escape.
        if (e !== 0x75 || src.charCodeAt(pos + 2) !== DIGIT_0 || src.charCodeAt(pos + 3) !== DIGIT_0) return false;
        const h = src.charCodeAt(pos + 4);
        const l = src.charCodeAt(pos + 5);
        const low = l >= DIGIT_0 && l <= DIGIT_9 ? l - DIGIT_0 : l >= 0x61 && l <= 0x66 ? l - 0x57 : -1;
        if ((h !== DIGIT_0 && h !== 0x31) || low < 0) return false;
        const code = (h - DIGIT_0) * 16 + low;
        if (code === 0x08 || code === 0x09 || code === 0x0a || code === 0x0c || code === 0x0d) return false;
        for (let i = 0; i < 6; i++) out[at++] = src.charCodeAt(pos + i);
        pos += 6;
        continue;
      }
      if (!(c >= 0x80)) return false; // a control character, or the end of the text
      if (c < 0x800) {
        out[at++] = 0xc0 | (c >> 6);
        out[at++] = 0x80 | (c & 0x3f);
      } else if (c < 0xd800 || c > 0xdfff) {
        out[at++] = 0xe0 | (c >> 12);
        out[at++] = 0x80 | ((c >> 6) & 0x3f);
        out[at++] = 0x80 | (c & 0x3f);
      } else {
        // A surrogate pair is one code point of 4 bytes; a lone surrogate JSON.stringify escapes.
        const d = src.charCodeAt(pos + 1);
        if (c > 0xdbff || !(d >= 0xdc00 && d <= 0xdfff)) return false;
        const cp = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
        out[at++] = 0xf0 | (cp >> 18);
        out[at++] = 0x80 | ((cp >> 12) & 0x3f);
        out[at++] = 0x80 | ((cp >> 6) & 0x3f);
        out[at++] = 0x80 | (cp & 0x3f);
        pos++;
      }
      pos++;
    }
    out[at++] = QUOTE;
    this.#pos = pos + 1;
    this.#at = at;
    this.#escaped = escaped;
    return true;
  }

  #array(depth: number): boolean {
    if (depth >= TEXT_MAX_DEPTH) return false;
    const src = this.#src;
    const out = this.#out;
    out[this.#at++] = OPEN_ARRAY;
    this.#pos = skipSpace(src, this.#pos + 1);
    if (src.charCodeAt(this.#pos) === CLOSE_ARRAY) {
      this.#pos++;
      out[this.#at++] = CLOSE_ARRAY;
      return true;
    }
    for (;;) {
      if (!this.#value(depth + 1)) return false;
      const pos = skipSpace(src, this.#pos);
      const c = src.charCodeAt(pos);
      out[this.#at++] = c;
      if (c === CLOSE_ARRAY) {
        this.#pos = pos + 1;
        return true;
      }
      if (c !== COMMA) return false;
      this.#pos = skipSpace(src, pos + 1);
    }
  }

  #object(depth: number): boolean {
    if (depth >= TEXT_MAX_DEPTH) return false;
    const src = this.#src;
    const out = this.#out;
    out[this.#at++] = OPEN_OBJECT;
    let pos = skipSpace(src, this.#pos + 1);
    if (src.charCodeAt(pos) === CLOSE_OBJECT) {
      this.#pos = pos + 1;
      out[this.#at++] = CLOSE_OBJECT;
      return true;
    }
    const base = this.#memberTop;
    let moved = false;
    for (;;) {
      if (src.charCodeAt(pos) !== QUOTE) return false;
      const nameStart = pos + 1;
      const memberStart = this.#at;
      this.#pos = pos;
      if (!this.#string() || this.#escaped) return false;
      const nameEnd = this.#pos - 1;
      const first = src.charCodeAt(nameStart);
      // Array-index names and `__proto__`: canonicalEventJson's own exceptions (see UNORDERED_NAME).
      if (((first >= DIGIT_0 && first <= DIGIT_9) || first === 0x5f) && UNORDERED_NAME.test(src.slice(nameStart, nameEnd))) return false;
      pos = skipSpace(src, this.#pos);
      if (src.charCodeAt(pos) !== COLON) return false;
      out[this.#at++] = COLON;
      const valueStart = skipSpace(src, pos + 1);
      this.#pos = valueStart;
      if (!this.#value(depth + 1)) return false;
      if (depth === 0) this.#topLevel(nameStart, nameEnd, valueStart);
      // Insertion in name order (an event's objects have a dozen members at most).
      const top = this.#memberTop;
      if (top + 4 > this.#members.length) {
        const grown = new Int32Array(this.#members.length * 2);
        grown.set(this.#members);
        this.#members = grown;
      }
      const m = this.#members;
      let i = top;
      while (i > base) {
        const d = compareSpans(src, m[i - 4]!, m[i - 3]!, nameStart, nameEnd);
        if (d === 0) return false; // a duplicate: JSON.parse keeps the last value; leave it to JSON.parse
        if (d < 0) break;
        m[i] = m[i - 4]!;
        m[i + 1] = m[i - 3]!;
        m[i + 2] = m[i - 2]!;
        m[i + 3] = m[i - 1]!;
        i -= 4;
        moved = true;
      }
      m[i] = nameStart;
      m[i + 1] = nameEnd;
      m[i + 2] = memberStart;
      m[i + 3] = this.#at;
      this.#memberTop = top + 4;
      pos = skipSpace(src, this.#pos);
      const c = src.charCodeAt(pos);
      if (c === CLOSE_OBJECT) break;
      if (c !== COMMA) return false;
      out[this.#at++] = COMMA;
      pos = skipSpace(src, pos + 1);
    }
    this.#pos = pos + 1;
    if (moved) this.#reorder(base);
    this.#memberTop = base;
    out[this.#at++] = CLOSE_OBJECT;
    return true;
  }

  /**
   * Rewrites the members of the object just read (written in text order, `,` between them) in
   * name order: the members are copied to the spare half of the buffer and back one by one.
   */
  #reorder(base: number): void {
    const out = this.#out;
    const m = this.#members;
    const top = this.#memberTop;
    let bodyStart = m[base + 2]!;
    for (let i = base + 4; i < top; i += 4) if (m[i + 2]! < bodyStart) bodyStart = m[i + 2]!;
    // The spare half starts past anything the output can reach (canonicalize reserved it).
    const spare = (out.length >> 1) - bodyStart;
    out.copyWithin(bodyStart + spare, bodyStart, this.#at);
    let at = bodyStart;
    for (let i = base; i < top; i += 4) {
      if (i > base) out[at++] = COMMA;
      const from = m[i + 2]!;
      const to = m[i + 3]!;
      out.copyWithin(at, from + spare, to + spare);
      at += to - from;
    }
  }

  /** Keeps the value of a top-level `seq`, `tenantId` or `time` just read at `valueStart`. */
  #topLevel(nameStart: number, nameEnd: number, valueStart: number): void {
    const src = this.#src;
    let member = MEMBER_OTHER;
    const length = nameEnd - nameStart;
    if (length === 3 && src.startsWith('seq', nameStart)) member = MEMBER_SEQ;
    else if (length === 4 && src.startsWith('time', nameStart)) member = MEMBER_TIME;
    else if (length === 8 && src.startsWith('tenantId', nameStart)) member = MEMBER_TENANT_ID;
    else return;
    const c = src.charCodeAt(valueStart);
    const kind = c === QUOTE ? KIND_STRING : c === MINUS || (c >= DIGIT_0 && c <= DIGIT_9) ? KIND_NUMBER : c === 0x6e ? KIND_NULL : KIND_OTHER;
    if (member === MEMBER_SEQ) {
      this.seqKind = kind;
      this.seqNumber = this.#number;
    } else if (member === MEMBER_TENANT_ID) {
      this.tenantKind = kind;
      this.tenantStart = valueStart + 1;
      this.tenantEnd = this.#pos - 1;
      this.tenantEscaped = kind === KIND_STRING && this.#escaped;
    } else {
      this.timeKind = kind;
      this.timeStart = valueStart + 1;
      this.timeEnd = this.#pos - 1;
      this.timeEscaped = kind === KIND_STRING && this.#escaped;
    }
  }
}

/** The first position from `pos` that is not JSON whitespace (past the end: the end). */
function skipSpace(src: string, pos: number): number {
  let c = src.charCodeAt(pos);
  while (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) c = src.charCodeAt(++pos);
  return pos;
}

/** Compares the text spans a and b (member names) by UTF-16 code units. */
function compareSpans(src: string, aStart: number, aEnd: number, bStart: number, bEnd: number): number {
  const n = Math.min(aEnd - aStart, bEnd - bStart);
  for (let i = 0; i < n; i++) {
    const d = src.charCodeAt(aStart + i) - src.charCodeAt(bStart + i);
    if (d !== 0) return d;
  }
  return aEnd - aStart - (bEnd - bStart);
}

/**
 * The canonical JSON of the event in `text` by the route `verifyEncodedChain` takes for database
 * rows (TextCanonicalizer), or undefined when that route leaves the text to JSON.parse and
 * canonicalEventJson. Where it answers, it equals `canonicalEventJson(JSON.parse(text))`
 * (test/audit-verify-text.test.ts checks it on random values and layouts).
 */
export function canonicalEventText(text: string): string | undefined {
  textRoute ??= { hasher: new LinkHasher(), canonicalizer: new TextCanonicalizer() };
  const bytes = textRoute.canonicalizer.canonicalize(text, textRoute.hasher);
  return bytes < 0 ? undefined : textRoute.hasher.buffer.toString('utf8', HASH_BYTES, HASH_BYTES + bytes);
}

/** canonicalEventText's buffer and reader, made at its first call (nothing awaits between their uses). */
let textRoute: { readonly hasher: LinkHasher; readonly canonicalizer: TextCanonicalizer } | undefined;

/** Reads rows of one form into RowFacts. */
interface RowDecoder<R> {
  decode(row: R, facts: RowFacts): void;
}

/** The facts of a parsed event (a StoredRow's, or an EncodedRow's that the text route did not take). */
function parsedEventFacts(event: unknown, facts: RowFacts, tenantId: string | null, hasher: LinkHasher): void {
  facts.eventSeq = eventSeqOf(event);
  facts.tenantOk = facts.eventSeq !== undefined && (event as { tenantId?: unknown }).tenantId === tenantId;
  let json: string | undefined;
  try {
    json = canonicalEventJson(event);
  } catch {
    json = undefined;
  }
  facts.canonicalBytes = json === undefined ? -1 : hasher.writeJson(json);
  if (facts.column !== undefined) {
    const time = facts.eventSeq === undefined ? undefined : (event as { time?: unknown }).time;
    facts.eventTime = typeof time === 'string' ? Date.parse(time) : NaN;
  }
}

/** StoredRow: hashes as bytes, the event parsed. */
class StoredRowDecoder implements RowDecoder<StoredRow> {
  readonly #tenantId: string | null;
  readonly #hasher: LinkHasher;

  constructor(tenantId: string | null, hasher: LinkHasher) {
    this.#tenantId = tenantId;
    this.#hasher = hasher;
  }

  decode(row: StoredRow, facts: RowFacts): void {
    facts.isRow = typeof row === 'object' && row !== null;
    if (!facts.isRow) return;
    facts.seq = seqOf(row.seq);
    facts.prevHex = hexOf(row.prevHash);
    facts.hashHex = hexOf(row.hash);
    facts.column = row.time === undefined ? undefined : row.time instanceof Date ? row.time.getTime() : Date.parse(row.time);
    parsedEventFacts(row.event, facts, this.#tenantId, this.#hasher);
  }
}

/** EncodedRow: hashes as hex, the event as text, through TextCanonicalizer. */
class EncodedRowDecoder implements RowDecoder<EncodedRow> {
  readonly #tenantId: string | null;
  readonly #hasher: LinkHasher;
  readonly #text = new TextCanonicalizer();

  constructor(tenantId: string | null, hasher: LinkHasher) {
    this.#tenantId = tenantId;
    this.#hasher = hasher;
  }

  decode(row: EncodedRow, facts: RowFacts): void {
    facts.isRow = typeof row === 'object' && row !== null;
    if (!facts.isRow) return;
    facts.seq = seqOf(row.seq);
    facts.prevHex = typeof row.prevHash === 'string' && row.prevHash.length === HASH_HEX ? row.prevHash : undefined;
    facts.hashHex = typeof row.hash === 'string' && row.hash.length === HASH_HEX ? row.hash : undefined;
    const t = row.timeMs;
    facts.column = t === undefined ? undefined : t === null || t === '' ? NaN : Number(t);
    const event = row.event;
    if (typeof event !== 'string') return parsedEventFacts(event, facts, this.#tenantId, this.#hasher);
    const bytes = this.#text.canonicalize(event, this.#hasher);
    if (bytes < 0) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(event);
      } catch {
        parsed = undefined;
      }
      return parsedEventFacts(parsed, facts, this.#tenantId, this.#hasher);
    }
    const x = this.#text;
    facts.canonicalBytes = bytes;
    facts.eventSeq = x.seqKind === KIND_NUMBER ? seqOf(x.seqNumber) : undefined;
    const tenantId = this.#tenantId;
    // An escaped string holds a quote, a backslash or a control character: never a tenant id.
    facts.tenantOk =
      tenantId === null
        ? x.tenantKind === KIND_NULL
        : x.tenantKind === KIND_STRING && !x.tenantEscaped && x.tenantEnd - x.tenantStart === tenantId.length && event.startsWith(tenantId, x.tenantStart);
    if (facts.column !== undefined) {
      if (x.timeKind !== KIND_STRING) facts.eventTime = NaN;
      else {
        const text = event.slice(x.timeStart, x.timeEnd);
        facts.eventTime = Date.parse(x.timeEscaped ? (JSON.parse(`"${text}"`) as string) : text);
      }
    }
  }
}

/** Where the checks read rows from: pages of at least one row, in seq order. */
interface RowSource<R> {
  /** The next page, or undefined at the end. */
  next(): Promise<readonly R[] | undefined>;
  close(): Promise<void>;
}

/** StoredRows from an iterable, one page per row: a stream is read no further than the row that diverges. */
class SingleRows implements RowSource<StoredRow> {
  readonly #it: AsyncIterator<StoredRow> | Iterator<StoredRow>;

  constructor(rows: AsyncIterable<StoredRow> | Iterable<StoredRow>) {
    this.#it = Symbol.asyncIterator in rows ? rows[Symbol.asyncIterator]() : (rows as Iterable<StoredRow>)[Symbol.iterator]();
  }

  async next(): Promise<readonly StoredRow[] | undefined> {
    const r = await this.#it.next();
    return r.done ? undefined : [r.value];
  }

  async close(): Promise<void> {
    await this.#it.return?.();
  }
}

/** Pages from an async iterable of pages. */
class PagedRows<R> implements RowSource<R> {
  readonly #it: AsyncIterator<readonly R[]> | Iterator<readonly R[]>;

  constructor(pages: AsyncIterable<readonly R[]> | Iterable<readonly R[]>) {
    this.#it = Symbol.asyncIterator in pages ? pages[Symbol.asyncIterator]() : (pages as Iterable<readonly R[]>)[Symbol.iterator]();
  }

  async next(): Promise<readonly R[] | undefined> {
    for (;;) {
      const r = await this.#it.next();
      if (r.done) return undefined;
      if (r.value.length > 0) return r.value;
    }
  }

  async close(): Promise<void> {
    await this.#it.return?.();
  }
}

/** Pulls anchors in order, skipping those at or before the start, and checks that seqs increase. */
class AnchorReader {
  readonly #it: AsyncIterator<Anchor | AnchorFailure> | Iterator<Anchor | AnchorFailure> | undefined;
  #last = 0;
  #lastHash: Uint8Array | undefined;
  count = 0;

  constructor(source: AnchorSource | undefined) {
    this.#it = source === undefined ? undefined : Symbol.asyncIterator in source ? source[Symbol.asyncIterator]() : (source as Iterable<Anchor | AnchorFailure>)[Symbol.iterator]();
  }

  /** The next anchor, a failure, or undefined at the end. */
  async next(): Promise<Anchor | AnchorFailure | undefined> {
    if (!this.#it) return undefined;
    for (;;) {
      const r = await this.#it.next();
      if (r.done) return undefined;
      const a = r.value;
      if ('where' in a) return a;
      if (!Number.isSafeInteger(a.seq) || a.seq < 1 || !(a.hash instanceof Uint8Array) || a.hash.byteLength !== HASH_BYTES) {
        return { seq: null, where: `checkpoint ${this.count + 1}` };
      }
      // The same head checkpointed twice (a restart, an idle chain) is harmless; any other step back
      // means the witness was edited.
      if (a.seq === this.#last && this.#lastHash && timingSafeEqual(a.hash, this.#lastHash)) {
        this.count++;
        continue;
      }
      if (a.seq <= this.#last) return { seq: a.seq, where: `checkpoint ${this.count + 1} (its seq does not follow the previous checkpoint's)` };
      this.#last = a.seq;
      this.#lastHash = a.hash;
      this.count++;
      return a;
    }
  }

  async close(): Promise<void> {
    await this.#it?.return?.();
  }
}

/**
 * Verifies a chain's rows, streamed in seq order (constant memory: one row of lookahead and the
 * next checkpoint), against the chain rule and against the signed checkpoints in `anchors`.
 * Returns the head, or the first divergence with the seq it starts at.
 */
export async function verifyChain(rows: AsyncIterable<StoredRow> | Iterable<StoredRow>, options: VerifyOptions): Promise<VerifyResult> {
  const tenantId = checkOptions(options);
  const hasher = new LinkHasher();
  return verifyRows(new SingleRows(rows), new StoredRowDecoder(tenantId, hasher), hasher, options);
}

/**
 * `verifyChain` for rows in the form the database sends most cheaply (EncodedRow), in pages: the
 * same checks in the same order, with the same answers. Each page is checked without waiting
 * between its rows, so a reader that fetches the next page while this one is checked keeps both
 * the database and this process busy (src/audit/verify.ts).
 */
export async function verifyEncodedChain(pages: AsyncIterable<readonly EncodedRow[]> | Iterable<readonly EncodedRow[]>, options: VerifyOptions): Promise<VerifyResult> {
  const tenantId = checkOptions(options);
  const hasher = new LinkHasher();
  return verifyRows(new PagedRows(pages), new EncodedRowDecoder(tenantId, hasher), hasher, options);
}

/** Checks the chain and start of `options`; returns the tenantId the events must name (null for the platform). */
function checkOptions(options: VerifyOptions): string | null {
  if (!isChainId(options.chain)) throw new BulkheadError('INTERNAL', 'a chain is named by a tenant id or "platform"');
  if (options.start) checkHead(options.start);
  return options.chain === PLATFORM_CHAIN ? null : options.chain;
}

/** The checks, over rows of any form its decoder reads. */
async function verifyRows<R>(source: RowSource<R>, decoder: RowDecoder<R>, hasher: LinkHasher, options: VerifyOptions): Promise<VerifyResult> {
  const { chain } = options;
  const start = options.start ?? genesisHead();
  const progressEvery = options.progressEvery ?? 10_000;
  const onProgress = options.onProgress;
  const anchors = new AnchorReader(options.anchors);
  const startHex = Buffer.from(start.hash).toString('hex');
  let expected = start.seq + 1;
  let prev = startHex;
  let lastGood = start.seq;
  let count = 0;
  const facts = emptyFacts();

  const fail = (seq: number, kind: DivergenceKind, message: string): VerifyResult => ({
    ok: false,
    chain,
    divergence: Object.freeze({ chain, seq, kind, message, lastGoodSeq: lastGood }),
    rows: count,
    checkpoints: anchors.count,
  });

  try {
    // The first anchor after the start; one at the start itself must agree with it.
    let anchor = await anchors.next();
    while (anchor && !('where' in anchor) && anchor.seq <= start.seq) {
      if (anchor.seq === start.seq && Buffer.from(anchor.hash).toString('hex') !== startHex) {
        return fail(start.seq, 'witness-mismatch', `the chain's start (seq ${start.seq}) has another hash than the signed checkpoint of that seq`);
      }
      anchor = await anchors.next();
    }
    // The next checkpoint's seq and hash, or 0 when the witness holds no more (a failure is reported before the next row).
    let anchorSeq = 0;
    let anchorHex = '';
    const take = (a: Anchor | AnchorFailure | undefined) => {
      anchor = a;
      anchorSeq = a && !('where' in a) ? a.seq : 0;
      anchorHex = a && !('where' in a) ? Buffer.from(a.hash).toString('hex') : '';
    };
    take(anchor);

    let page = await source.next();
    let i = 0;
    for (;;) {
      if (anchor && 'where' in anchor) {
        return fail(anchor.seq ?? expected, 'checkpoint-invalid', `the witness's ${anchor.where} does not verify as a signed checkpoint of this chain`);
      }
      if (page === undefined) break;
      if (i === page.length) {
        page = await source.next();
        i = 0;
        continue;
      }
      decoder.decode(page[i++]!, facts);
      const e = expected;

      if (!facts.isRow) return fail(e, 'malformed', `the row after seq ${e - 1} is not a chain row`);
      const s = facts.seq;
      const es = facts.eventSeq;
      if (s === undefined) return fail(e, 'malformed', `the row after seq ${e - 1} has no valid seq`);
      if (es === undefined) return fail(s, 'malformed', `the row at seq ${s} holds no event with a valid seq`);
      if (facts.prevHex === undefined || facts.hashHex === undefined) {
        return fail(s, 'malformed', `the row at seq ${s} has a prevHash or hash that is not ${HASH_BYTES} bytes`);
      }

      // What the row claims to be: its seq column, or when that is right, the seq inside its event.
      const claim = s !== e ? s : es;
      if (claim !== e) {
        const where = s !== e ? `the row read after seq ${e - 1} has seq ${s}` : `the row at seq ${s} holds the event of seq ${es}`;
        if (claim === e - 1) return fail(claim, 'forged', `${where}: a second row claims seq ${claim}, so a row was inserted`);
        if (claim < e) return fail(claim, 'reorder', `${where}, which belongs before seq ${e - 1}: rows are out of order`);
        // One row of lookahead, across a page if need be.
        if (i === page.length) {
          page = await source.next();
          i = 0;
        }
        if (page !== undefined) {
          const next = emptyFacts();
          decoder.decode(page[i]!, next);
          if (next.isRow && (next.seq === e || next.eventSeq === e)) {
            return fail(e, 'reorder', `${where} and the row after it holds seq ${e}: two rows are swapped`);
          }
        }
        const to = claim - 1;
        return fail(e, 'gap', `${where}: ${to === e ? `seq ${e} is` : `seqs ${e} to ${to} are`} missing`);
      }

      if (!facts.tenantOk) return fail(e, 'forged', `the event at seq ${e} names another chain than ${chain}`);
      if (facts.prevHex !== prev) {
        return fail(e, 'prev-mismatch', `the row at seq ${e} has a prevHash that is not the hash of ${e === 1 ? 'the genesis (32 zero bytes)' : `seq ${e - 1}`}`);
      }
      if (facts.canonicalBytes < 0) return fail(e, 'malformed', `the event at seq ${e} is not a JSON value`);
      if (hasher.hashHex(prev, facts.canonicalBytes) !== facts.hashHex) {
        return fail(e, 'hash-mismatch', `the hash stored at seq ${e} is not SHA-256(prevHash ‖ canonical event): the event or its hash was changed`);
      }
      if (facts.column !== undefined && facts.column !== facts.eventTime) {
        return fail(e, 'column-mismatch', `the time column at seq ${e} differs from the time inside its event`);
      }

      if (anchorSeq === e) {
        if (anchorHex !== facts.hashHex) {
          return fail(
            e,
            'witness-mismatch',
            `the row at seq ${e} has another hash than the signed checkpoint of seq ${e}: the chain was rewritten after seq ${lastGood}, the last point that agrees with the witness`,
          );
        }
        take(await anchors.next());
      }

      prev = facts.hashHex;
      lastGood = e;
      expected = e + 1;
      count++;
      if (onProgress && count % progressEvery === 0) onProgress(count);
    }

    if (anchor) {
      if ('where' in anchor) return fail(anchor.seq ?? expected, 'checkpoint-invalid', `the witness's ${anchor.where} does not verify as a signed checkpoint of this chain`);
      return fail(
        expected,
        'missing-tail',
        `the chain ends at seq ${expected - 1} but the witness holds a signed checkpoint of seq ${anchor.seq}: seqs ${expected} to ${anchor.seq} at least are missing`,
      );
    }
    onProgress?.(count);
    return { ok: true, chain, head: { seq: expected - 1, hash: Buffer.from(prev, 'hex') }, rows: count, checkpoints: anchors.count };
  } finally {
    await source.close();
    await anchors.close();
  }
}
