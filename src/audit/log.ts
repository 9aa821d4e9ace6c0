/**
 * The audit log: how events reach their chains (issue 5, items 4 and 5; docs/audit.md, "Writing").
 *
 * - A write's event is appended in the write's own transaction (`appendInTransaction`): the write
 *   and its event commit together or not at all.
 * - Every other event (reads, denials, failed writes, operator actions) goes through the
 *   group-commit writer (`record`): concurrent events of one chain are appended in one transaction,
 *   and each caller's promise resolves only once that transaction has committed, so a request is
 *   answered after its event is durable and never before.
 * - Appends to one chain are serialized by a transaction-scoped advisory lock on the chain, taken
 *   before its head is read, so two processes never link to the same head; the database's link
 *   trigger (BHA02) refuses a row that does not extend its chain all the same.
 * - Signed checkpoints: every `checkpointEvery` events of a chain, and every `checkpointMs` for any
 *   chain that moved, the chain's head is read under the same lock, signed (Ed25519) and appended
 *   to the witness, outside the database.
 *
 * Tenant chains live in `audit_events` at the tenant's placement (so they follow it through moves),
 * written through the tenant's own scope (RLS, and the move fence: an append during a move's switch
 * waits for it). The platform chain lives in the control plane's `audit_platform_events`.
 */
import type { KeyObject } from 'node:crypto';
import { BulkheadError, DatabaseError, WritesPausedError } from '../errors.js';
import type { EngineTransaction, Statement, StatementResult } from '../store/engine.js';
import type { ScopedStore } from '../store/store.js';
import { ChainLinker, PLATFORM_CHAIN, type ChainHead, type ChainId, type LinkedRow } from './chain.js';
import type { CheckpointSigner } from './checkpoint.js';
import type { AuditEvent } from './event.js';
import { AUDIT_LINK_SQLSTATE } from './schema.js';
import type { Witness } from './witness.js';

/** Where the log finds a chain's storage: the tenant's write scope, or the platform scope of the control plane. */
export interface AuditScopes {
  /** The tenant's scope at its placement, for writes (fenced during a move's switch). */
  tenant(tenantId: string): ScopedStore;
  /** The control plane's platform scope. */
  platform(): ScopedStore;
  /**
   * Writes several tenants' statements, each in its write scope, with the tenants of one database
   * in one transaction (`Placements.writeAcross`); per part its results or its error. Without it
   * every chain commits on its own.
   */
  across?(parts: ReadonlyArray<{ readonly tenantId: string; readonly statements: readonly Statement[] }>): Promise<Array<StatementResult[] | Error>>;
}

/** Options of the audit log. */
export interface AuditLogOptions {
  readonly scopes: AuditScopes;
  readonly signer: CheckpointSigner;
  readonly witness: Witness;
  /** Where retention's signed anchors are written (a directory of its own). */
  readonly anchors: Witness;
  /** Events of one chain after which its head is checkpointed (default 1,000). */
  readonly checkpointEvery?: number;
  /** Longest time a chain's new events wait for a checkpoint, in ms (default 60,000). */
  readonly checkpointMs?: number;
  /** Most events appended in one group commit (default 500). */
  readonly maxBatch?: number;
}

/** The seed of the advisory lock that serializes appends to a chain (one key per chain). */
export const AUDIT_CHAIN_LOCK_SEED = 5150371;
/** Default events between checkpoints of a chain. */
export const DEFAULT_CHECKPOINT_EVERY = 1_000;
/** Default longest wait of a chain's new events for a checkpoint. */
export const DEFAULT_CHECKPOINT_MS = 60_000;
/** How long an append waits before retrying when a move's switch has paused the tenant's writes. */
const PAUSED_RETRY_MS = 100;
/** Chains whose head is remembered at once. */
const MAX_CACHED_HEADS = 100_000;
/** Attempts of a group commit before its callers get the error (a pause lasts well under a second). */
const MAX_ATTEMPTS = 50;

interface Pending {
  readonly event: AuditEvent;
  readonly resolve: () => void;
  readonly reject: (error: unknown) => void;
}

/** The statement that locks a chain until the end of the transaction (one key per chain). */
function lockStatement(chain: ChainId): Statement {
  return { name: 'bh_audit_lock', text: 'SELECT pg_advisory_xact_lock(hashtextextended($1, $2))', values: [chain, AUDIT_CHAIN_LOCK_SEED] };
}

/** The statements that lock a chain for this transaction and read its head (named: they run on every append). */
function headStatements(chain: ChainId): Statement[] {
  return [
    lockStatement(chain),
    chain === PLATFORM_CHAIN
      ? { name: 'bh_audit_head_platform', text: 'SELECT seq, hash FROM bulkhead.audit_platform_events ORDER BY seq DESC LIMIT 1' }
      : { name: 'bh_audit_head', text: 'SELECT seq, hash FROM audit_events WHERE tenant_id = $1 ORDER BY seq DESC LIMIT 1', values: [chain] },
  ];
}

function headOf(row: Record<string, unknown> | undefined): ChainHead | undefined {
  if (!row) return undefined;
  return { seq: Number(row.seq), hash: row.hash as Uint8Array };
}

/**
 * The insert of linked rows, as one statement that first takes the chain's lock (a no-op when the
 * transaction holds it already): the row source joins the one-row lock subquery, so no row reaches
 * the insert, nor its link check, before the lock is held. One statement instead of two on the
 * hot path (fewer prepared statements per bridge schema too). Rows go as JSON: engines take no
 * arrays as parameters.
 */
function insertStatement(chain: ChainId, rows: readonly LinkedRow[]): Statement {
  const payload = JSON.stringify(
    rows.map((r) => ({ seq: r.seq, prev_hash: `\\x${r.prevHash.toString('hex')}`, hash: `\\x${r.hash.toString('hex')}`, event: r.event, time: r.time })),
  );
  const source =
    'FROM (SELECT pg_advisory_xact_lock(hashtextextended($1::text, $2))) AS locked, ' +
    'jsonb_to_recordset($3::text::jsonb) AS r (seq bigint, prev_hash text, hash text, event jsonb, time timestamptz) ORDER BY r.seq';
  if (chain === PLATFORM_CHAIN) {
    return {
      name: 'bh_audit_append_platform',
      text: `INSERT INTO bulkhead.audit_platform_events (seq, prev_hash, hash, event, time) SELECT r.seq, r.prev_hash::bytea, r.hash::bytea, r.event, r.time ${source}`,
      values: [chain, AUDIT_CHAIN_LOCK_SEED, payload],
    };
  }
  return {
    name: 'bh_audit_append',
    text: `INSERT INTO audit_events (tenant_id, seq, prev_hash, hash, event, time) SELECT $4::uuid, r.seq, r.prev_hash::bytea, r.hash::bytea, r.event, r.time ${source}`,
    values: [chain, AUDIT_CHAIN_LOCK_SEED, payload, chain],
  };
}

/** In `tx`: locks the chain, reads its head, and inserts `events` linked after it; returns the rows. */
async function linkAfterHead(tx: EngineTransaction, chain: ChainId, events: readonly AuditEvent[]): Promise<LinkedRow[]> {
  const [, head] = await tx.batch(headStatements(chain));
  const linker = new ChainLinker(chain, headOf(head!.rows[0]));
  const rows = events.map((e) => linker.append(e));
  await tx.batch([insertStatement(chain, rows)]);
  return rows;
}

/**
 * The audit log of one process. Tenant chains are named by tenant id, the platform chain by
 * `platform`; an event's `tenantId` says which (null: platform).
 */
export class AuditLog {
  readonly #scopes: AuditScopes;
  /** Signs checkpoints and retention anchors. */
  readonly signer: CheckpointSigner;
  /** The witness checkpoints are written to. */
  readonly witness: Witness;
  /** The witness of retention's anchors. */
  readonly anchors: Witness;
  readonly #every: number;
  readonly #maxBatch: number;
  readonly #queues = new Map<ChainId, Pending[]>();
  /** Chains with a commit under way: their next events wait for it (a chain's appends are sequential in a process). */
  readonly #busy = new Set<ChainId>();
  /** Whether a joint commit (many chains, one transaction per database) is under way; there is one at a time. */
  #jointBusy = false;
  #drainScheduled = false;
  /** Events appended per chain by this process since its last checkpoint. */
  readonly #since = new Map<ChainId, number>();
  /**
   * The head each chain had after this process's last append to it. A group commit links to it
   * without reading it first, in one round trip: if another process appended meanwhile, the
   * database's link trigger (BHA02) or the primary key refuses the insert, and the commit reads
   * the head and tries again. Bounded: cleared past MAX_CACHED_HEADS chains.
   */
  readonly #heads = new Map<ChainId, ChainHead>();
  readonly #timer: NodeJS.Timeout;
  #checkpointing: Promise<number> | undefined;
  #closed = false;

  constructor(options: AuditLogOptions) {
    this.#scopes = options.scopes;
    this.signer = options.signer;
    this.anchors = options.anchors;
    this.witness = options.witness;
    this.#every = options.checkpointEvery ?? DEFAULT_CHECKPOINT_EVERY;
    this.#maxBatch = options.maxBatch ?? 500;
    const ms = options.checkpointMs ?? DEFAULT_CHECKPOINT_MS;
    this.#timer = setInterval(() => void this.checkpoint().catch(() => {}), ms);
    this.#timer.unref();
  }

  /** The public key checkpoints are verified with. */
  get verifyingKey(): KeyObject {
    return this.signer.publicKey;
  }

  /**
   * Appends a tenant's events inside the caller's transaction on the tenant's placement (a write
   * and its events commit together). Call it after the write's own statements succeeded.
   */
  async appendInTransaction(tx: EngineTransaction, tenantId: string, events: readonly AuditEvent[]): Promise<void> {
    if (events.length === 0) return;
    const rows = await linkAfterHead(tx, tenantId, events);
    // The caller's transaction may still roll back: remember no head from it (the next group
    // commit reads the head), rather than one that might never have been committed.
    this.#heads.delete(tenantId);
    this.#appended(tenantId, rows.length);
  }

  /**
   * Appends an event through the group-commit writer; resolves once it is committed, rejects if it
   * could not be (the caller's operation then fails: nothing is done unaudited).
   */
  record(event: AuditEvent): Promise<void> {
    if (this.#closed) return Promise.reject(new BulkheadError('STORE_UNAVAILABLE', 'the server is shutting down'));
    const chain = event.tenantId ?? PLATFORM_CHAIN;
    return new Promise<void>((resolve, reject) => {
      let queue = this.#queues.get(chain);
      if (!queue) {
        queue = [];
        this.#queues.set(chain, queue);
      }
      queue.push({ event, resolve, reject });
      this.#scheduleDrain();
    });
  }

  /**
   * Signs the head of every chain this process appended to since its last checkpoint and appends
   * it to the witness; returns how many were written. Safe to call from several processes: the
   * head is read under the chain's lock, so the witness gets increasing seqs.
   */
  checkpoint(): Promise<number> {
    this.#checkpointing ??= this.#checkpointAll().finally(() => (this.#checkpointing = undefined));
    return this.#checkpointing;
  }

  /** Stops the timer, waits for pending appends, and checkpoints what moved. */
  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#timer);
    while (this.#busy.size > 0 || this.#jointBusy || this.#queues.size > 0) await new Promise((resolve) => setTimeout(resolve, 5));
    await this.checkpoint().catch(() => {});
  }

  /** Drains the queues once the requests of this tick have joined them. */
  #scheduleDrain(): void {
    if (this.#drainScheduled) return;
    this.#drainScheduled = true;
    setImmediate(() => {
      this.#drainScheduled = false;
      this.#drain();
    });
  }

  /**
   * Starts the commits the queues call for. A tenant chain whose head this process knows joins
   * the joint commit: every such chain with events waiting, of every tenant of a database, in one
   * transaction and one round trip (`AuditScopes.across`), so that reads spread over many tenants
   * share commits as the reads of one tenant do. A chain whose head must be read first, the
   * platform chain, and a chain the joint commit could not take go through their own commit.
   */
  #drain(): void {
    const joint: ChainId[] = [];
    for (const [chain, queue] of this.#queues) {
      if (this.#busy.has(chain)) continue;
      if (queue.length === 0) {
        this.#queues.delete(chain);
        continue;
      }
      if (this.#scopes.across && chain !== PLATFORM_CHAIN && this.#heads.has(chain)) joint.push(chain);
      else void this.#flushChain(chain);
    }
    if (joint.length > 0 && !this.#jointBusy) void this.#flushJoint(joint);
  }

  /** The next batch of a chain's queue (at most `maxBatch` events). */
  #take(chain: ChainId, max: number): Pending[] {
    const queue = this.#queues.get(chain)!;
    const batch = queue.splice(0, max);
    if (queue.length === 0) this.#queues.delete(chain);
    return batch;
  }

  /** One batch of one chain in its own transaction. */
  async #flushChain(chain: ChainId): Promise<void> {
    this.#busy.add(chain);
    const batch = this.#take(chain, this.#maxBatch);
    try {
      await this.#commit(chain, batch.map((p) => p.event));
      for (const p of batch) p.resolve();
    } catch (error) {
      for (const p of batch) p.reject(error);
    } finally {
      this.#busy.delete(chain);
      this.#drain();
    }
  }

  /**
   * Appends the waiting events of `chains` (heads known) in one transaction per database, at most
   * `maxBatch` events in all. Each chain is locked, as in its own commit, in the same order in
   * every process (by chain id), so two joint commits cannot deadlock. A chain whose part failed
   * (the whole transaction of its database then wrote nothing) goes through its own commit, which
   * reads its head again when another process appended, and waits out a move's switch.
   */
  async #flushJoint(chains: ChainId[]): Promise<void> {
    this.#jointBusy = true;
    chains.sort();
    const taken: Array<{ chain: ChainId; batch: Pending[]; rows: LinkedRow[] }> = [];
    let budget = this.#maxBatch;
    for (const chain of chains) {
      if (budget <= 0) break;
      const batch = this.#take(chain, budget);
      budget -= batch.length;
      this.#busy.add(chain);
      const linker = new ChainLinker(chain, this.#heads.get(chain));
      taken.push({ chain, batch, rows: batch.map((p) => linker.append(p.event)) });
    }
    try {
      let outcomes: Array<StatementResult[] | Error>;
      try {
        outcomes = await this.#scopes.across!(
          taken.map(({ chain, rows }) => ({ tenantId: chain, statements: [insertStatement(chain, rows)] })),
        );
      } catch (error) {
        outcomes = taken.map(() => error as Error);
      }
      await Promise.all(
        taken.map(async ({ chain, batch, rows }, i) => {
          try {
            if (outcomes[i] instanceof Error) {
              await this.#commit(chain, batch.map((p) => p.event));
            } else {
              this.#remember(chain, rows[rows.length - 1]!);
              this.#appended(chain, rows.length);
            }
            for (const p of batch) p.resolve();
          } catch (error) {
            // Its next events start from the head in the database.
            this.#heads.delete(chain);
            for (const p of batch) p.reject(error);
          } finally {
            this.#busy.delete(chain);
          }
        }),
      );
    } finally {
      this.#jointBusy = false;
      this.#drain();
    }
  }

  async #commit(chain: ChainId, events: readonly AuditEvent[]): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      const scope = chain === PLATFORM_CHAIN ? this.#scopes.platform() : this.#scopes.tenant(chain);
      const known = this.#heads.get(chain);
      try {
        let rows: LinkedRow[];
        if (known) {
          // One round trip, one statement: lock, and insert linked to the head this process last wrote.
          const linker = new ChainLinker(chain, known);
          rows = events.map((e) => linker.append(e));
          await scope.batch([insertStatement(chain, rows)]);
        } else {
          rows = await scope.transaction((tx) => linkAfterHead(tx, chain, events));
        }
        this.#remember(chain, rows[rows.length - 1]!);
        this.#appended(chain, events.length);
        return;
      } catch (error) {
        if (known && error instanceof DatabaseError && (error.sqlState === AUDIT_LINK_SQLSTATE || error.kind === 'unique')) {
          // Another process appended since: read the head and link again (nothing was written).
          this.#heads.delete(chain);
          continue;
        }
        // A move's switch pauses the tenant's writes for a moment; the events wait for it.
        if (!(error instanceof WritesPausedError) || attempt >= MAX_ATTEMPTS) throw error;
        await new Promise((resolve) => setTimeout(resolve, PAUSED_RETRY_MS));
      }
    }
  }

  #remember(chain: ChainId, last: LinkedRow): void {
    if (this.#heads.size >= MAX_CACHED_HEADS && !this.#heads.has(chain)) this.#heads.clear();
    this.#heads.set(chain, { seq: last.seq, hash: last.hash });
  }

  #appended(chain: ChainId, n: number): void {
    const count = (this.#since.get(chain) ?? 0) + n;
    this.#since.set(chain, count);
    if (count >= this.#every) void this.checkpoint().catch(() => {});
  }

  async #checkpointAll(): Promise<number> {
    let written = 0;
    for (const chain of [...this.#since.keys()]) {
      this.#since.delete(chain);
      try {
        const scope = chain === PLATFORM_CHAIN ? this.#scopes.platform() : this.#scopes.tenant(chain);
        // The lock is held while the checkpoint is written: another process's checkpoint of the
        // same chain waits, and so reads a head at least as new.
        const done = await scope.transaction(async (tx) => {
          const [, head] = await tx.batch(headStatements(chain));
          const h = headOf(head!.rows[0]);
          if (!h) return false;
          await this.witness.append(this.signer.sign({ chain, seq: h.seq, hash: h.hash }));
          return true;
        });
        if (done) written++;
      } catch (error) {
        // Checkpointed at the next opportunity; the events themselves are safe in the database.
        this.#since.set(chain, (this.#since.get(chain) ?? 0) + 1);
        if (!(error instanceof WritesPausedError)) throw error;
      }
    }
    return written;
  }
}
