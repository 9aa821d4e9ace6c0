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

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  // Hashes of the chain are public (they are exported to auditors), so a plain comparison is fine here.
  return Buffer.compare(a, b) === 0;
}

/** Pulls rows one at a time with one row of lookahead, from a sync or async iterable. */
class RowReader {
  readonly #it: AsyncIterator<StoredRow> | Iterator<StoredRow>;
  #peeked: { value: StoredRow | undefined } | undefined;

  constructor(rows: AsyncIterable<StoredRow> | Iterable<StoredRow>) {
    this.#it = Symbol.asyncIterator in rows ? rows[Symbol.asyncIterator]() : (rows as Iterable<StoredRow>)[Symbol.iterator]();
  }

  async next(): Promise<StoredRow | undefined> {
    if (this.#peeked) {
      const { value } = this.#peeked;
      this.#peeked = undefined;
      return value;
    }
    const r = await this.#it.next();
    return r.done ? undefined : r.value;
  }

  async peek(): Promise<StoredRow | undefined> {
    this.#peeked ??= { value: await this.next() };
    return this.#peeked.value;
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
  const { chain } = options;
  if (!isChainId(chain)) throw new BulkheadError('INTERNAL', 'a chain is named by a tenant id or "platform"');
  const start = options.start ?? genesisHead();
  checkHead(start);
  const tenantId = chain === PLATFORM_CHAIN ? null : chain;
  const progressEvery = options.progressEvery ?? 10_000;
  const reader = new RowReader(rows);
  const anchors = new AnchorReader(options.anchors);
  let expected = start.seq + 1;
  let prev: Uint8Array = start.hash;
  let lastGood = start.seq;
  let count = 0;

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
      if (anchor.seq === start.seq && !timingSafeEqual(anchor.hash, start.hash)) {
        return fail(start.seq, 'witness-mismatch', `the chain's start (seq ${start.seq}) has another hash than the signed checkpoint of that seq`);
      }
      anchor = await anchors.next();
    }

    for (;;) {
      if (anchor && 'where' in anchor) {
        return fail(anchor.seq ?? expected, 'checkpoint-invalid', `the witness's ${anchor.where} does not verify as a signed checkpoint of this chain`);
      }
      const row = await reader.next();
      if (row === undefined) break;
      const e = expected;

      if (typeof row !== 'object' || row === null) return fail(e, 'malformed', `the row after seq ${e - 1} is not a chain row`);
      const s = seqOf(row.seq);
      const es = eventSeqOf(row.event);
      if (s === undefined) return fail(e, 'malformed', `the row after seq ${e - 1} has no valid seq`);
      if (es === undefined) return fail(s, 'malformed', `the row at seq ${s} holds no event with a valid seq`);
      if (!(row.prevHash instanceof Uint8Array) || row.prevHash.byteLength !== HASH_BYTES || !(row.hash instanceof Uint8Array) || row.hash.byteLength !== HASH_BYTES) {
        return fail(s, 'malformed', `the row at seq ${s} has a prevHash or hash that is not ${HASH_BYTES} bytes`);
      }

      // What the row claims to be: its seq column, or when that is right, the seq inside its event.
      const claim = s !== e ? s : es;
      if (claim !== e) {
        const where = s !== e ? `the row read after seq ${e - 1} has seq ${s}` : `the row at seq ${s} holds the event of seq ${es}`;
        if (claim === e - 1) return fail(claim, 'forged', `${where}: a second row claims seq ${claim}, so a row was inserted`);
        if (claim < e) return fail(claim, 'reorder', `${where}, which belongs before seq ${e - 1}: rows are out of order`);
        const next = await reader.peek();
        if (next && (seqOf(next.seq) === e || eventSeqOf(next.event) === e)) {
          return fail(e, 'reorder', `${where} and the row after it holds seq ${e}: two rows are swapped`);
        }
        const to = claim - 1;
        return fail(e, 'gap', `${where}: ${to === e ? `seq ${e} is` : `seqs ${e} to ${to} are`} missing`);
      }

      const eventTenant = (row.event as { tenantId?: unknown }).tenantId;
      if (eventTenant !== tenantId) return fail(e, 'forged', `the event at seq ${e} names another chain than ${chain}`);
      if (!sameBytes(row.prevHash, prev)) {
        return fail(e, 'prev-mismatch', `the row at seq ${e} has a prevHash that is not the hash of ${e === 1 ? 'the genesis (32 zero bytes)' : `seq ${e - 1}`}`);
      }
      let json: string;
      try {
        json = canonicalEventJson(row.event);
      } catch {
        return fail(e, 'malformed', `the event at seq ${e} is not a JSON value`);
      }
      if (!sameBytes(linkHash(prev, json), row.hash)) {
        return fail(e, 'hash-mismatch', `the hash stored at seq ${e} is not SHA-256(prevHash ‖ canonical event): the event or its hash was changed`);
      }
      if (row.time !== undefined) {
        const column = row.time instanceof Date ? row.time.getTime() : Date.parse(row.time);
        const eventTime = (row.event as { time?: unknown }).time;
        if (typeof eventTime !== 'string' || column !== Date.parse(eventTime)) {
          return fail(e, 'column-mismatch', `the time column at seq ${e} differs from the time inside its event`);
        }
      }

      if (anchor && anchor.seq === e) {
        if (!timingSafeEqual(anchor.hash, row.hash)) {
          return fail(
            e,
            'witness-mismatch',
            `the row at seq ${e} has another hash than the signed checkpoint of seq ${e}: the chain was rewritten after seq ${lastGood}, the last point that agrees with the witness`,
          );
        }
        anchor = await anchors.next();
      }

      prev = row.hash;
      lastGood = e;
      expected = e + 1;
      count++;
      if (options.onProgress && count % progressEvery === 0) options.onProgress(count);
    }

    if (anchor) {
      if ('where' in anchor) return fail(anchor.seq ?? expected, 'checkpoint-invalid', `the witness's ${anchor.where} does not verify as a signed checkpoint of this chain`);
      return fail(
        expected,
        'missing-tail',
        `the chain ends at seq ${expected - 1} but the witness holds a signed checkpoint of seq ${anchor.seq}: seqs ${expected} to ${anchor.seq} at least are missing`,
      );
    }
    options.onProgress?.(count);
    return { ok: true, chain, head: { seq: expected - 1, hash: Buffer.from(prev) }, rows: count, checkpoints: anchors.count };
  } finally {
    await reader.close();
    await anchors.close();
  }
}
