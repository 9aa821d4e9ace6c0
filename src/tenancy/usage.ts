/**
 * Per-tenant usage, like Citus' `citus_stat_tenants`: reads (record get and list), writes (create,
 * update, delete), rows read and rows written, counted in time buckets (one minute by default)
 * kept for a retention period (24 hours by default).
 *
 * The request path pays one Map lookup and four additions: counts accumulate in memory and are
 * flushed in one batch (every 10 s, on demand and on close) as additive UPSERTs into
 * `bulkhead.tenant_usage`, so several server processes can flush into the same rows. A failed
 * flush keeps its counts for the next one. The table is written in the platform scope; see
 * migration 2 for why it is a platform table and not a tenant table.
 */
import { InvalidRequestError } from '../errors.js';
import type { Statement } from '../store/engine.js';
import type { Store } from '../store/store.js';

/** Counts over some period. */
export interface UsageCounts {
  readonly reads: number;
  readonly writes: number;
  readonly rowsRead: number;
  readonly rowsWritten: number;
}

/** The counts of one time bucket. */
export interface UsageBucket extends UsageCounts {
  /** Start of the bucket (ISO 8601, UTC). */
  readonly start: string;
}

/** Options of the usage meter. */
export interface UsageOptions {
  /** Length of a bucket; 60 to 3600 seconds and a divisor of an hour. */
  readonly bucketSeconds?: number;
  /** How long buckets are kept; a multiple of the bucket length, at most 31 days. */
  readonly retentionSeconds?: number;
  /** Period of the background flush; 0 disables it (tests flush by hand). */
  readonly flushIntervalMs?: number;
  /** The clock, in milliseconds since the epoch (tests inject one). */
  readonly now?: () => number;
  /**
   * Most (tenant, bucket) entries held in memory. Only reached while the store refuses flushes for
   * a long time; further new entries are then dropped (and counted in `dropped`), never the process.
   */
  readonly maxPendingEntries?: number;
  /** Called with the error of a failed background flush (the counts are kept and retried). */
  readonly onFlushError?: (error: unknown) => void;
}

/** The defaults of `UsageOptions`. */
export const USAGE_DEFAULTS = Object.freeze({
  bucketSeconds: 60,
  retentionSeconds: 24 * 3600,
  flushIntervalMs: 10_000,
  maxPendingEntries: 200_000,
});

/** The window syntax of the API: minutes or hours, e.g. `5m`, `1h`, `24h`. */
export const USAGE_WINDOW_PATTERN = '^[1-9][0-9]{0,3}[mh]$';
const WINDOW = new RegExp(USAGE_WINDOW_PATTERN);

/** Rows per UPSERT statement: bounds the size of one JSON parameter. */
const FLUSH_CHUNK = 5_000;

interface Counter {
  reads: number;
  writes: number;
  rowsRead: number;
  rowsWritten: number;
}

const UPSERT =
  'INSERT INTO bulkhead.tenant_usage AS u (tenant_id, window_start, reads, writes, rows_read, rows_written) ' +
  'SELECT x.t, x.w, x.r, x.wr, x.rr, x.rw FROM jsonb_to_recordset($1::text::jsonb) AS x(t uuid, w timestamptz, r bigint, wr bigint, rr bigint, rw bigint) ' +
  // A tenant that no longer exists (never the case today: counts come from authenticated tenants)
  // must not fail the whole flush on the foreign key and so block every other tenant's counts.
  'WHERE EXISTS (SELECT 1 FROM bulkhead.tenants t WHERE t.id = x.t) ' +
  'ON CONFLICT (tenant_id, window_start) DO UPDATE SET reads = u.reads + excluded.reads, writes = u.writes + excluded.writes, ' +
  'rows_read = u.rows_read + excluded.rows_read, rows_written = u.rows_written + excluded.rows_written';

/**
 * Parses a window (`5m`, `1h`, `24h`) into seconds: at least one minute, at most `maxSeconds`
 * (the retention). Throws REQUEST_INVALID naming the `window` parameter otherwise.
 */
export function parseWindow(value: unknown, maxSeconds: number = USAGE_DEFAULTS.retentionSeconds): number {
  if (typeof value !== 'string' || !WINDOW.test(value)) {
    throw new InvalidRequestError('window must be a number of minutes or hours, such as 5m, 1h or 24h', { field: 'window' });
  }
  const seconds = Number(value.slice(0, -1)) * (value.endsWith('h') ? 3600 : 60);
  if (seconds > maxSeconds) {
    throw new InvalidRequestError(`window must be at most ${maxSeconds / 3600} h, the usage retention`, { field: 'window' });
  }
  return seconds;
}

/** The usage meter: counts on the request path, flushes in batches, reads back windows. */
export class Usage {
  readonly #store: Store;
  readonly #now: () => number;
  readonly #bucketMs: number;
  readonly #retentionMs: number;
  readonly #maxEntries: number;
  readonly #onFlushError: (error: unknown) => void;
  readonly #timer: NodeJS.Timeout | undefined;
  /** bucket start (ms) → tenant id → counts. */
  #pending = new Map<number, Map<string, Counter>>();
  #entries = 0;
  // The bucket of the last count and its map: the hot path skips the outer lookup within a bucket.
  #currentBucket = Number.NaN;
  #current: Map<string, Counter> | undefined;
  #chain: Promise<void> = Promise.resolve();
  #lastPrunedBucket = Number.NaN;
  #dropped = 0;
  #closed = false;

  constructor(store: Store, options: UsageOptions = {}) {
    const bucketSeconds = options.bucketSeconds ?? USAGE_DEFAULTS.bucketSeconds;
    if (!Number.isInteger(bucketSeconds) || bucketSeconds < 60 || bucketSeconds > 3600 || 3600 % bucketSeconds !== 0) {
      throw new TypeError('the usage bucket must be 60 to 3600 seconds and divide an hour');
    }
    const retentionSeconds = options.retentionSeconds ?? USAGE_DEFAULTS.retentionSeconds;
    if (!Number.isInteger(retentionSeconds) || retentionSeconds < bucketSeconds || retentionSeconds > 31 * 86400 || retentionSeconds % bucketSeconds !== 0) {
      throw new TypeError('the usage retention must be a multiple of the bucket, at most 31 days');
    }
    const flushIntervalMs = options.flushIntervalMs ?? USAGE_DEFAULTS.flushIntervalMs;
    if (!Number.isInteger(flushIntervalMs) || flushIntervalMs < 0) throw new TypeError('the usage flush interval must be a non-negative integer');
    this.#store = store;
    this.#now = options.now ?? Date.now;
    this.#bucketMs = bucketSeconds * 1000;
    this.#retentionMs = retentionSeconds * 1000;
    this.#maxEntries = options.maxPendingEntries ?? USAGE_DEFAULTS.maxPendingEntries;
    this.#onFlushError = options.onFlushError ?? (() => {});
    if (flushIntervalMs > 0) {
      this.#timer = setInterval(() => {
        this.flush().catch((error: unknown) => this.#onFlushError(error));
      }, flushIntervalMs);
      // The meter never keeps a process alive; close() flushes what is left.
      this.#timer.unref();
    }
  }

  /** Length of a bucket, in seconds. */
  get bucketSeconds(): number {
    return this.#bucketMs / 1000;
  }

  /** How long buckets are kept, in seconds. */
  get retentionSeconds(): number {
    return this.#retentionMs / 1000;
  }

  /** New (tenant, bucket) entries dropped because the in-memory bound was reached. */
  get dropped(): number {
    return this.#dropped;
  }

  /** Counts one read (a record get or list) that returned `rows` records. */
  recordRead(tenantId: string, rows: number): void {
    const c = this.#counter(tenantId);
    if (c === undefined) return;
    c.reads += 1;
    c.rowsRead += rows;
  }

  /** Counts one write (a record create, update or delete) that wrote `rows` records. */
  recordWrite(tenantId: string, rows: number): void {
    const c = this.#counter(tenantId);
    if (c === undefined) return;
    c.writes += 1;
    c.rowsWritten += rows;
  }

  /**
   * Writes the counts gathered so far in one batch (and purges buckets past the retention, once
   * per bucket). Flushes run one after another; a failed one keeps its counts and rejects.
   */
  flush(): Promise<void> {
    const run = this.#chain.then(() => this.#flushOnce());
    this.#chain = run.catch(() => {});
    return run;
  }

  /** Stops the background flush and flushes what is left; later counts are ignored. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#timer) clearInterval(this.#timer);
    await this.flush();
  }

  /** The start (ms) of the oldest bucket of a window of `windowSeconds` that ends with the current bucket. */
  windowStart(windowSeconds: number): number {
    const buckets = Math.max(1, Math.ceil((windowSeconds * 1000) / this.#bucketMs));
    return this.#bucketOf(this.#now()) - (buckets - 1) * this.#bucketMs;
  }

  /** One tenant's stored buckets since `sinceMs`, oldest first, and their totals. */
  async buckets(tenantId: string, sinceMs: number): Promise<{ buckets: UsageBucket[]; totals: UsageCounts }> {
    const [r] = await this.#store.platform().batch([
      {
        text:
          'SELECT window_start, reads, writes, rows_read, rows_written FROM bulkhead.tenant_usage ' +
          'WHERE tenant_id = $1 AND window_start >= $2 ORDER BY window_start',
        values: [tenantId, new Date(sinceMs).toISOString()],
      },
    ]);
    const buckets = r!.rows.map((row) => ({ start: (row.window_start as Date).toISOString(), ...countsOf(row) }));
    return { buckets, totals: sum(buckets) };
  }

  /** Every tenant's totals since `sinceMs` (tenants without usage are absent). */
  async totals(sinceMs: number): Promise<Map<string, UsageCounts>> {
    const [r] = await this.#store.platform().batch([
      {
        text:
          'SELECT tenant_id, sum(reads) AS reads, sum(writes) AS writes, sum(rows_read) AS rows_read, sum(rows_written) AS rows_written ' +
          'FROM bulkhead.tenant_usage WHERE window_start >= $1 GROUP BY tenant_id',
        values: [new Date(sinceMs).toISOString()],
      },
    ]);
    return new Map(r!.rows.map((row) => [row.tenant_id as string, countsOf(row)]));
  }

  #bucketOf(ms: number): number {
    return ms - (ms % this.#bucketMs);
  }

  #counter(tenantId: string): Counter | undefined {
    if (this.#closed) return undefined;
    const bucket = this.#bucketOf(this.#now());
    let tenants = this.#current;
    if (bucket !== this.#currentBucket || tenants === undefined) {
      tenants = this.#pending.get(bucket);
      if (tenants === undefined) {
        tenants = new Map();
        this.#pending.set(bucket, tenants);
      }
      this.#currentBucket = bucket;
      this.#current = tenants;
    }
    let c = tenants.get(tenantId);
    if (c === undefined) {
      if (this.#entries >= this.#maxEntries) {
        this.#dropped += 1;
        return undefined;
      }
      c = { reads: 0, writes: 0, rowsRead: 0, rowsWritten: 0 };
      tenants.set(tenantId, c);
      this.#entries += 1;
    }
    return c;
  }

  async #flushOnce(): Promise<void> {
    const pending = this.#pending;
    this.#pending = new Map();
    this.#entries = 0;
    this.#current = undefined;
    this.#currentBucket = Number.NaN;

    const rows: { t: string; w: string; r: number; wr: number; rr: number; rw: number }[] = [];
    for (const [bucket, tenants] of pending) {
      const w = new Date(bucket).toISOString();
      for (const [t, c] of tenants) rows.push({ t, w, r: c.reads, wr: c.writes, rr: c.rowsRead, rw: c.rowsWritten });
    }
    const statements: Statement[] = [];
    for (let i = 0; i < rows.length; i += FLUSH_CHUNK) {
      statements.push({ text: UPSERT, values: [JSON.stringify(rows.slice(i, i + FLUSH_CHUNK))] });
    }
    const bucket = this.#bucketOf(this.#now());
    const prune = bucket !== this.#lastPrunedBucket;
    if (prune) {
      statements.push({
        text: 'DELETE FROM bulkhead.tenant_usage WHERE window_start < $1',
        values: [new Date(bucket - this.#retentionMs + this.#bucketMs).toISOString()],
      });
    }
    if (statements.length === 0) return;
    try {
      await this.#store.platform().batch(statements);
      if (prune) this.#lastPrunedBucket = bucket;
    } catch (error) {
      this.#restore(pending);
      throw error;
    }
  }

  /** Adds the counts of a failed flush back to what accumulated meanwhile. */
  #restore(failed: Map<number, Map<string, Counter>>): void {
    for (const [bucket, tenants] of failed) {
      let into = this.#pending.get(bucket);
      if (into === undefined) {
        into = new Map();
        this.#pending.set(bucket, into);
      }
      for (const [tenantId, c] of tenants) {
        const existing = into.get(tenantId);
        if (existing !== undefined) {
          existing.reads += c.reads;
          existing.writes += c.writes;
          existing.rowsRead += c.rowsRead;
          existing.rowsWritten += c.rowsWritten;
        } else if (this.#entries < this.#maxEntries) {
          into.set(tenantId, c);
          this.#entries += 1;
        } else {
          this.#dropped += 1;
        }
      }
    }
    this.#current = undefined;
    this.#currentBucket = Number.NaN;
  }
}

/** Sums counts. */
export function sum(items: readonly UsageCounts[]): UsageCounts {
  const total = { reads: 0, writes: 0, rowsRead: 0, rowsWritten: 0 };
  for (const c of items) {
    total.reads += c.reads;
    total.writes += c.writes;
    total.rowsRead += c.rowsRead;
    total.rowsWritten += c.rowsWritten;
  }
  return total;
}

// bigint and numeric arrive as strings from `pg` and as bigint or string from PGlite.
function countsOf(row: Record<string, unknown>): UsageCounts {
  return {
    reads: Number(row.reads ?? 0),
    writes: Number(row.writes ?? 0),
    rowsRead: Number(row.rows_read ?? 0),
    rowsWritten: Number(row.rows_written ?? 0),
  };
}
