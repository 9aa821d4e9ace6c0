/**
 * Partition health and tenant sizes for operators: rows and bytes per hash partition of the pool
 * with their skew (max/mean), each tenant's usage over a window, and the tenants worth promoting to
 * a tier of their own.
 *
 * Row counts are exact. They come from two SECURITY DEFINER functions of migration 2
 * (`bulkhead.partition_stats()`, `bulkhead.tenant_sizes()`) that the application role may execute
 * in the platform scope only and that return aggregates and tenant ids, never tenant data: the
 * request path never runs as the owner, and `pg_class.reltuples` is only an estimate.
 */
import { InvalidRequestError } from '../errors.js';
import type { TenantScopes } from '../placement/placements.js';
import type { Store } from '../store/store.js';
import type { Tier } from './tenants.js';
import { parseWindow, sum, type Usage, type UsageBucket, type UsageCounts } from './usage.js';

/** One hash partition of the records table. */
export interface PartitionStat {
  readonly name: string;
  /** The partition's remainder of `PARTITION BY HASH (tenant_id)`. */
  readonly remainder: number;
  /** Exact number of records. */
  readonly rows: number;
  /** Table, TOAST and indexes, in bytes. */
  readonly bytes: number;
}

/** The partitions of the pool and how evenly the rows spread over them. */
export interface PartitionHealth {
  readonly partitions: PartitionStat[];
  readonly totalRows: number;
  readonly totalBytes: number;
  readonly meanRows: number;
  readonly maxRows: number;
  /** max/mean of the rows per partition; 1 is perfectly even; null when there is no row. */
  readonly skew: number | null;
}

/** A tenant's records and the bytes their data takes in storage (`pg_column_size`). */
export interface TenantSize {
  readonly rows: number;
  readonly bytes: number;
}

/** One tenant's usage over a window. */
export interface TenantUsageReport {
  readonly tenant: { readonly id: string; readonly slug: string };
  readonly window: string;
  /** Start of the oldest bucket of the window (ISO 8601). */
  readonly since: string;
  readonly bucketSeconds: number;
  readonly totals: UsageCounts;
  readonly size: TenantSize;
  /** The buckets that saw any request, oldest first. */
  readonly buckets: UsageBucket[];
}

/** A tenant in the top list. */
export interface TopTenant extends UsageCounts, TenantSize {
  readonly id: string;
  readonly slug: string;
  readonly tier: Tier;
  /** This tenant's share of the pool's records (0-1). */
  readonly rowsShare: number;
  /** This tenant's share of the window's requests, reads and writes together (0-1). */
  readonly usageShare: number;
}

/** Why a tenant is worth promoting. */
export type PromotionReason = 'rows-share' | 'usage-share' | 'rows';

/** A pool tenant worth promoting to the bridge or silo tier. */
export interface PromotionCandidate extends TopTenant {
  readonly reasons: PromotionReason[];
}

/** The busiest tenants of a window and the promotion candidates. */
export interface UsageTopReport {
  readonly window: string;
  readonly since: string;
  readonly totals: UsageCounts & TenantSize;
  readonly thresholds: PromotionThresholds;
  /** By requests in the window, then records, most first. */
  readonly tenants: TopTenant[];
  /** Pool tenants above a threshold, by their larger share, most first. */
  readonly candidates: PromotionCandidate[];
}

/** When a pool tenant is worth promoting. */
export interface PromotionThresholds {
  /** Share of the pool's records or of the window's requests above which a tenant is a candidate. */
  readonly share: number;
  /** Records at or above which a tenant is a candidate whatever its share. */
  readonly rows: number;
}

/** Defaults of the top list and of the promotion thresholds. */
export const HEALTH_DEFAULTS = Object.freeze({ window: '1h', limit: 10, maxLimit: 100, share: 0.1, rows: 1_000_000 });

/** max/mean of `values`: 1 when even, larger the more the largest stands out; null when all are 0 or there are none. */
export function skewOf(values: readonly number[]): number | null {
  if (values.length === 0) return null;
  let total = 0;
  let max = 0;
  for (const v of values) {
    total += v;
    if (v > max) max = v;
  }
  return total === 0 ? null : max / (total / values.length);
}

/** Operator views of partition health and tenant usage. */
export class Health {
  readonly #store: Store;
  readonly #usage: Usage;
  readonly #scopes: TenantScopes | undefined;
  readonly #thresholds: PromotionThresholds;

  /**
   * `scopes` reaches tenants outside the pool (bridge schemas, silos) for their sizes; without it
   * only pool tenants have one.
   */
  constructor(store: Store, usage: Usage, thresholds: Partial<PromotionThresholds> = {}, scopes?: TenantScopes) {
    this.#store = store;
    this.#usage = usage;
    this.#scopes = scopes;
    this.#thresholds = Object.freeze({
      share: checkShare(thresholds.share ?? HEALTH_DEFAULTS.share, 'share'),
      rows: checkRows(thresholds.rows ?? HEALTH_DEFAULTS.rows, 'rows'),
    });
  }

  /** Rows (exact) and bytes of every hash partition of the records table, and the skew. */
  async partitions(): Promise<PartitionHealth> {
    const [r] = await this.#store.platform().batch([
      { text: 'SELECT partition_name, remainder, row_count, total_bytes FROM bulkhead.partition_stats()' },
    ]);
    const partitions = r!.rows.map((row) => ({
      name: row.partition_name as string,
      remainder: Number(row.remainder),
      rows: Number(row.row_count),
      bytes: Number(row.total_bytes),
    }));
    const rows = partitions.map((p) => p.rows);
    const totalRows = rows.reduce((a, b) => a + b, 0);
    return {
      partitions,
      totalRows,
      totalBytes: partitions.reduce((a, p) => a + p.bytes, 0),
      meanRows: partitions.length === 0 ? 0 : totalRows / partitions.length,
      maxRows: Math.max(0, ...rows),
      skew: skewOf(rows),
    };
  }

  /** Records and data bytes per tenant (tenants without records are absent); one tenant with `tenantId`. */
  async tenantSizes(tenantId?: string): Promise<Map<string, TenantSize>> {
    const [r] = await this.#store.platform().batch([
      tenantId === undefined
        ? { text: 'SELECT tenant_id, row_count, data_bytes FROM bulkhead.tenant_sizes()' }
        : { text: 'SELECT tenant_id, row_count, data_bytes FROM bulkhead.tenant_sizes($1::uuid)', values: [tenantId] },
    ]);
    return new Map(r!.rows.map((row) => [row.tenant_id as string, { rows: Number(row.row_count), bytes: Number(row.data_bytes) }]));
  }

  /**
   * Records and data bytes of one tenant outside the pool, counted at its placement in its own
   * scope (RLS applies; the same numbers `tenant_sizes()` gives for the pool).
   */
  async placedSize(tenantId: string): Promise<TenantSize> {
    if (!this.#scopes) return { rows: 0, bytes: 0 };
    const [r] = await this.#scopes.tenant(tenantId, { requireActive: false }).batch([
      { text: 'SELECT count(*)::bigint AS n, coalesce(sum(pg_column_size(data)), 0)::bigint AS bytes FROM records WHERE tenant_id = $1', values: [tenantId] },
    ]);
    return { rows: Number(r!.rows[0]!.n), bytes: Number(r!.rows[0]!.bytes) };
  }

  /** One tenant's usage buckets over `window` (default 1h), with its size. Counts of this process are flushed first. */
  async tenantUsage(tenant: { readonly id: string; readonly slug: string; readonly tier?: Tier }, window: unknown = HEALTH_DEFAULTS.window): Promise<TenantUsageReport> {
    const seconds = parseWindow(window, this.#usage.retentionSeconds);
    await this.#usage.flush();
    const since = this.#usage.windowStart(seconds);
    const [{ buckets, totals }, sizes] = await Promise.all([
      this.#usage.buckets(tenant.id, since),
      tenant.tier === undefined || tenant.tier === 'pool' ? this.tenantSizes(tenant.id) : this.placedSize(tenant.id).then((s) => new Map([[tenant.id, s]])),
    ]);
    return {
      tenant: { id: tenant.id, slug: tenant.slug },
      window: window as string,
      since: new Date(since).toISOString(),
      bucketSeconds: this.#usage.bucketSeconds,
      totals,
      size: sizes.get(tenant.id) ?? { rows: 0, bytes: 0 },
      buckets,
    };
  }

  /**
   * The busiest tenants over a window and the pool tenants worth promoting. `query` holds the API's
   * string parameters: `window` (default 1h), `limit` (1-100, default 10), `minShare` (0-1, default
   * 0.1) and `minRows` (default 1,000,000).
   */
  async top(query: { window?: unknown; limit?: unknown; minShare?: unknown; minRows?: unknown } = {}): Promise<UsageTopReport> {
    const window = query.window ?? HEALTH_DEFAULTS.window;
    const seconds = parseWindow(window, this.#usage.retentionSeconds);
    const limit = query.limit === undefined ? HEALTH_DEFAULTS.limit : parseInteger(query.limit, 'limit', 1, HEALTH_DEFAULTS.maxLimit);
    const thresholds: PromotionThresholds = {
      share: query.minShare === undefined ? this.#thresholds.share : checkShare(parseDecimal(query.minShare, 'minShare'), 'minShare'),
      rows: query.minRows === undefined ? this.#thresholds.rows : parseInteger(query.minRows, 'minRows', 1, Number.MAX_SAFE_INTEGER),
    };
    await this.#usage.flush();
    const since = this.#usage.windowStart(seconds);
    const [usage, sizes, registry] = await Promise.all([
      this.#usage.totals(since),
      this.tenantSizes(),
      this.#store.platform().batch([{ text: 'SELECT id, slug, tier FROM bulkhead.tenants' }]),
    ]);
    const zero: UsageCounts = { reads: 0, writes: 0, rowsRead: 0, rowsWritten: 0 };
    const totalUsage = sum([...usage.values()]);
    const totalRows = [...sizes.values()].reduce((a, s) => a + s.rows, 0);
    const totalBytes = [...sizes.values()].reduce((a, s) => a + s.bytes, 0);
    const totalRequests = totalUsage.reads + totalUsage.writes;

    const all: TopTenant[] = [];
    for (const row of registry[0]!.rows) {
      const id = row.id as string;
      const u = usage.get(id);
      const s = sizes.get(id);
      if (u === undefined && s === undefined) continue;
      const counts = u ?? zero;
      const size = s ?? { rows: 0, bytes: 0 };
      all.push({
        id,
        slug: row.slug as string,
        tier: row.tier as Tier,
        ...counts,
        ...size,
        rowsShare: totalRows === 0 ? 0 : size.rows / totalRows,
        usageShare: totalRequests === 0 ? 0 : (counts.reads + counts.writes) / totalRequests,
      });
    }
    const byUsage = [...all].sort((a, b) => b.reads + b.writes - (a.reads + a.writes) || b.rows - a.rows || compare(a.id, b.id));
    // Tenants outside the pool are not in tenant_sizes(): count the ones shown at their placement.
    const shown = await Promise.all(
      byUsage.slice(0, limit).map(async (t) => (t.tier === 'pool' ? t : { ...t, ...(await this.placedSize(t.id)) })),
    );
    const candidates: PromotionCandidate[] = [];
    for (const t of all) {
      if (t.tier !== 'pool') continue;
      const reasons: PromotionReason[] = [];
      if (t.rowsShare > thresholds.share) reasons.push('rows-share');
      if (t.usageShare > thresholds.share) reasons.push('usage-share');
      if (t.rows >= thresholds.rows) reasons.push('rows');
      if (reasons.length > 0) candidates.push({ ...t, reasons });
    }
    candidates.sort((a, b) => Math.max(b.rowsShare, b.usageShare) - Math.max(a.rowsShare, a.usageShare) || b.rows - a.rows || compare(a.id, b.id));
    return {
      window: window as string,
      since: new Date(since).toISOString(),
      totals: { ...totalUsage, rows: totalRows, bytes: totalBytes },
      thresholds,
      tenants: shown,
      candidates: candidates.slice(0, limit),
    };
  }
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function checkShare(value: number, field: string): number {
  if (!Number.isFinite(value) || value <= 0 || value > 1) throw new InvalidRequestError(`${field} must be a number above 0 and at most 1`, { field });
  return value;
}

function checkRows(value: number, field: string): number {
  if (!Number.isSafeInteger(value) || value < 1) throw new InvalidRequestError(`${field} must be a positive integer`, { field });
  return value;
}

function parseDecimal(value: unknown, field: string): number {
  if (typeof value !== 'string' || !/^(0|[1-9][0-9]{0,5})?(\.[0-9]{1,6})?$/.test(value) || value === '' || value === '.') {
    throw new InvalidRequestError(`${field} must be a decimal number such as 0.1`, { field });
  }
  return Number(value);
}

function parseInteger(value: unknown, field: string, min: number, max: number): number {
  const n = typeof value === 'string' && /^[0-9]{1,16}$/.test(value) ? Number(value) : Number.NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) throw new InvalidRequestError(`${field} must be an integer from ${min} to ${max}`, { field });
  return n;
}
