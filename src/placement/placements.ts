import { BulkheadError, WritesPausedError } from '../errors.js';
import { isUuid } from '../ids.js';
import type { Statement, StatementResult } from '../store/engine.js';
import { WRITE_FENCE_SEED } from '../store/migrations.js';
import type { Joinable, ScopedStore, Store, TenantScopeOptions } from '../store/store.js';
import { BridgeTier } from './bridge-tier.js';
import type { Cell, Cells } from './cells.js';
import { PoolTier } from './pool-tier.js';
import { SiloTier } from './silo-tier.js';
import type { Placement, TenantRow, Tier, TierName } from './tier.js';

/** A tenant scope the router hands out: `write` marks a batch that changes data (paused during a move's switch). */
export interface RoutedScopeOptions {
  readonly requireActive?: boolean;
  readonly write?: boolean;
}

/** Anything that hands out tenant scopes: the router, or a single store (tests, tools). */
export interface TenantScopes {
  tenant(tenantId: string, options?: RoutedScopeOptions): ScopedStore;
}

/** A directory entry with what routing needs besides the placement. */
export interface ResolvedPlacement extends Placement {
  readonly region: string;
  readonly writesPausedUntil: number | null;
  /** The placement epoch (see migration 5): write batches are checked against it. */
  readonly epoch: number;
}

interface CacheEntry {
  readonly value: ResolvedPlacement | null;
  readonly at: number;
  readonly scopes: Map<string, ScopedStore>;
}

/** Options of the router. */
export interface PlacementsOptions {
  /** How long a directory entry is trusted (default 5 s); a move in this process invalidates at once. */
  readonly cacheTtlMs?: number;
}

/**
 * The placement directory and the router. Every tenant operation is sent to the tenant's
 * placement (tier, cell, location), and refused when that placement's cell is outside the
 * tenant's region: residency is checked on every route, not only when a tenant is placed.
 */
export class Placements implements TenantScopes {
  readonly cells: Cells;
  readonly tiers: Readonly<Record<TierName, Tier> & { silo: SiloTier }>;
  readonly #ttl: number;
  readonly #cache = new Map<string, CacheEntry>();
  /** Writes under way per tenant, so a pause can wait for them to finish. */
  readonly #inflight = new Map<string, number>();
  /**
   * Pauses this process set itself, with the time they were expected to end (for Retry-After):
   * effective at once, before the directory says so, and until lifted.
   */
  readonly #paused = new Map<string, number>();

  constructor(cells: Cells, options: PlacementsOptions = {}) {
    this.cells = cells;
    this.tiers = Object.freeze({ pool: new PoolTier(), bridge: new BridgeTier(), silo: new SiloTier() });
    this.#ttl = options.cacheTtlMs ?? 5_000;
  }

  /** The control plane's store (registry, directory, moves). */
  get control(): Cell {
    return this.cells.control;
  }

  /**
   * Chooses a cell for a new tenant (the named one, or the least-filled cell of its region),
   * refuses a cell outside the region, and provisions the tier's storage there.
   */
  async provision(tenant: TenantRow, cellName?: string): Promise<Placement> {
    const cell = cellName === undefined ? await this.#leastFilled(tenant.region) : this.cells.get(cellName);
    checkResidency(cell, tenant.region);
    const tier = this.tiers[tenant.tier];
    const placement: Placement = { tier: tenant.tier, cell: cell.name, location: tier.locationOf(cell, tenant.id) };
    await tier.provision(cell, tenant);
    return placement;
  }

  /** The statement that records a placement (run in the same transaction as the registry change). */
  recordStatement(tenantId: string, p: Placement): Statement {
    return {
      text:
        'INSERT INTO bulkhead.placements (tenant_id, tier, cell, location) VALUES ($1, $2, $3, $4) ' +
        'ON CONFLICT (tenant_id) DO UPDATE SET tier = EXCLUDED.tier, cell = EXCLUDED.cell, location = EXCLUDED.location, ' +
        'writes_paused_until = NULL, updated_at = now()',
      values: [tenantId, p.tier, p.cell, p.location],
    };
  }

  /** Copies a changed registry row (a status change) to the tenant's placement, when that is outside the control plane. */
  async mirror(tenant: TenantRow): Promise<void> {
    const p = await this.resolve(tenant.id);
    if (p) await this.tiers[p.tier].mirror(this.cells.get(p.cell), tenant, p.location);
  }

  /** Removes a placement's storage (a creation that failed after provisioning, or a move's source). */
  async drop(tenantId: string, p: Placement): Promise<void> {
    await this.tiers[p.tier].drop(this.cells.get(p.cell), tenantId, p.location);
  }

  /** Removes a tenant's audit events up to `throughSeq` at its placement (audit retention; see `Store.pruneAudit`). */
  async pruneAudit(tenantId: string, throughSeq: number): Promise<number> {
    const p = await this.resolve(tenantId);
    if (!p) throw new BulkheadError('TENANT_NOT_FOUND', 'no such tenant');
    const cell = this.cells.get(p.cell);
    if (p.tier === 'silo') return (await this.tiers.silo.store(cell, tenantId, p.location)).pruneAudit(tenantId, 'bulkhead', throughSeq);
    return cell.store.pruneAudit(tenantId, p.tier === 'bridge' ? p.location : 'bulkhead', throughSeq);
  }

  /** Records every tenant created before the directory existed as pool tenants of the control cell. */
  async backfill(): Promise<number> {
    const [r] = await this.control.store.platform().batch([
      {
        text:
          "INSERT INTO bulkhead.placements (tenant_id, tier, cell, location) SELECT id, 'pool', $1, 'bulkhead' FROM bulkhead.tenants t " +
          'WHERE NOT EXISTS (SELECT 1 FROM bulkhead.placements p WHERE p.tenant_id = t.id)',
        values: [this.control.name],
      },
    ]);
    return r!.rowCount;
  }

  /** The directory entry of a tenant (cached), or null when it has none. */
  async resolve(tenantId: string): Promise<ResolvedPlacement | null> {
    const hit = this.#cache.get(tenantId);
    if (hit && Date.now() - hit.at < this.#ttl) return hit.value;
    return (await this.#load(tenantId)).value;
  }

  /** Forgets a cached entry (after a move or a pause changed it). */
  invalidate(tenantId: string): void {
    this.#cache.delete(tenantId);
  }

  /** The whole directory, for operators. */
  async list(): Promise<Array<ResolvedPlacement & { tenantId: string }>> {
    const [r] = await this.control.store.platform().batch([
      {
        text:
          'SELECT p.tenant_id, p.tier, p.cell, p.location, p.writes_paused_until, t.region, t.placement_epoch FROM bulkhead.placements p ' +
          'JOIN bulkhead.tenants t ON t.id = p.tenant_id ORDER BY p.tenant_id',
      },
    ]);
    return r!.rows.map((row) => ({ tenantId: row.tenant_id as string, ...toResolved(row) }));
  }

  /**
   * The tenant's scoped store at its placement. Resolution is deferred to the first batch (the
   * directory lookup is cached), so this stays synchronous like `Store.tenant`.
   */
  tenant(tenantId: string, options: RoutedScopeOptions = {}): ScopedStore {
    if (!isUuid(tenantId)) throw new BulkheadError('INTERNAL', 'a tenant scope needs a validated tenant id');
    const scope = () => this.#scope(tenantId, options);
    if (!options.write) {
      return {
        batch: async (statements) => (await scope()).batch(statements),
        transaction: async (fn) => (await scope()).transaction(fn),
      };
    }
    return {
      batch: (statements) => this.#tracked(tenantId, async () => (await scope()).batch(statements)),
      transaction: (fn) => this.#tracked(tenantId, async () => (await scope()).transaction(fn)),
    };
  }

  /**
   * Writes of several tenants at once, as each tenant's own write batch would make them (its
   * placement, its context, its write check, paused during a move's switch), but with the tenants
   * of one database in ONE transaction (`Store.batchAcross`) and the databases in parallel. A
   * tenant that cannot be routed or is paused fails alone; a database's transaction that fails
   * fails every tenant in it, and writes nothing. Returns, per part, its results or its error.
   */
  async writeAcross(parts: ReadonlyArray<{ readonly tenantId: string; readonly statements: readonly Statement[] }>): Promise<Array<StatementResult[] | Error>> {
    const out: Array<StatementResult[] | Error> = new Array(parts.length);
    const groups = new Map<Store, Array<{ index: number; scope: Joinable }>>();
    await Promise.all(
      parts.map(async (part, index) => {
        try {
          const paused = this.#pausedError(part.tenantId);
          if (paused) throw paused;
          const scope = (await this.#scope(part.tenantId, { write: true })).joinable;
          if (!scope) throw new BulkheadError('INTERNAL', 'a write scope that cannot join a joint batch');
          const group = groups.get(scope.store) ?? [];
          group.push({ index, scope });
          groups.set(scope.store, group);
        } catch (error) {
          out[index] = error as Error;
        }
      }),
    );
    await Promise.all(
      [...groups].map(async ([store, group]) => {
        // A pause set in this process since routing holds for these writes too.
        const ready = group.filter(({ index }) => {
          const paused = this.#pausedError(parts[index]!.tenantId);
          if (paused) out[index] = paused;
          return !paused;
        });
        if (ready.length === 0) return;
        for (const { index } of ready) this.#enter(parts[index]!.tenantId);
        try {
          const results = await store.batchAcross(ready.map(({ index, scope }) => ({ scope, statements: parts[index]!.statements })));
          ready.forEach(({ index }, i) => (out[index] = results[i]!));
        } catch (error) {
          if (error instanceof WritesPausedError && error.stalePlacement) for (const { index } of ready) this.invalidate(parts[index]!.tenantId);
          for (const { index } of ready) out[index] = error as Error;
        } finally {
          for (const { index } of ready) this.#leave(parts[index]!.tenantId);
        }
      }),
    );
    return out;
  }

  /** How long a directory entry is trusted by any process (the cache time). */
  get cacheTtlMs(): number {
    return this.#ttl;
  }

  /**
   * Stops every process's writes to the tenant at `end` (a move's source), in its database:
   * marks the registry row the placement's checks read `migrating`, then waits, on the lock each
   * write batch holds (migration 5), for the writes that got past the check before. After it no
   * write can land there, whatever the caches of other processes say.
   */
  async fenceWrites(tenantId: string, end: Placement): Promise<void> {
    const store = await this.#registryOf(tenantId, end);
    await store.platform().batch([
      { text: "UPDATE bulkhead.tenants SET status = 'migrating', updated_at = now() WHERE id = $1 AND status = 'active'", values: [tenantId] },
    ]);
    await store.platform().batch([{ text: `SELECT pg_advisory_xact_lock(hashtextextended($1::text, ${WRITE_FENCE_SEED}))`, values: [tenantId] }]);
  }

  /** Lifts `fenceWrites` (a move that did not switch). */
  async unfenceWrites(tenantId: string, end: Placement): Promise<void> {
    const store = await this.#registryOf(tenantId, end);
    await store.platform().batch([
      { text: "UPDATE bulkhead.tenants SET status = 'active', updated_at = now() WHERE id = $1 AND status = 'migrating'", values: [tenantId] },
    ]);
  }

  /** The store whose registry row a placement's checks read: a silo's own database, else the cell's main one. */
  async #registryOf(tenantId: string, end: Placement): Promise<Store> {
    const cell = this.cells.get(end.cell);
    return end.tier === 'silo' ? this.tiers.silo.store(cell, tenantId, end.location) : cell.store;
  }

  /**
   * Pauses the tenant's writes and waits until the writes already under way have finished, so
   * that nothing changes the source while a move switches; reads go on. In this process the pause
   * holds until `releasePause` or `resumeWrites`; `maxMs` bounds the wait for writes under way and
   * the pause the directory shows other processes (they see it within their cache time).
   */
  async pauseWrites(tenantId: string, maxMs: number): Promise<void> {
    const until = Date.now() + maxMs;
    this.#paused.set(tenantId, until);
    await this.control.store.platform().batch([
      {
        text: "UPDATE bulkhead.placements SET writes_paused_until = now() + make_interval(secs => $2::double precision / 1000) WHERE tenant_id = $1",
        values: [tenantId, maxMs],
      },
    ]);
    while ((this.#inflight.get(tenantId) ?? 0) > 0) {
      if (Date.now() > until) throw new WritesPausedError(1);
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
  }

  /** Lifts a pause (the switch clears the directory's pause itself; a rollback calls this). */
  async resumeWrites(tenantId: string): Promise<void> {
    this.#paused.delete(tenantId);
    await this.control.store.platform().batch([
      { text: 'UPDATE bulkhead.placements SET writes_paused_until = NULL WHERE tenant_id = $1', values: [tenantId] },
    ]);
    this.invalidate(tenantId);
  }

  /** Forgets this process's own pause once the switch has recorded the new placement. */
  releasePause(tenantId: string): void {
    this.#paused.delete(tenantId);
    this.invalidate(tenantId);
  }

  async #tracked<T>(tenantId: string, run: () => Promise<T>): Promise<T> {
    // This process's own pause holds until the mover lifts it, however long the switch takes: a
    // write let through while the switch compares the two sides could be lost with the source.
    const paused = this.#pausedError(tenantId);
    if (paused) throw paused;
    this.#enter(tenantId);
    try {
      return await run();
    } catch (error) {
      // The database refused the write for an outdated entry (another process moved the tenant):
      // the retry the caller is told to make reads the directory again.
      if (error instanceof WritesPausedError && error.stalePlacement) this.invalidate(tenantId);
      throw error;
    } finally {
      this.#leave(tenantId);
    }
  }

  /** The refusal of a write while this process's own pause of the tenant holds (Retry-After: the time left). */
  #pausedError(tenantId: string): WritesPausedError | undefined {
    const until = this.#paused.get(tenantId);
    return until === undefined ? undefined : new WritesPausedError(Math.max(1, (until - Date.now()) / 1000));
  }

  #enter(tenantId: string): void {
    this.#inflight.set(tenantId, (this.#inflight.get(tenantId) ?? 0) + 1);
  }

  #leave(tenantId: string): void {
    const n = (this.#inflight.get(tenantId) ?? 1) - 1;
    if (n > 0) this.#inflight.set(tenantId, n);
    else this.#inflight.delete(tenantId);
  }

  async #scope(tenantId: string, options: RoutedScopeOptions): Promise<ScopedStore> {
    let entry = this.#cache.get(tenantId);
    if (!entry || Date.now() - entry.at >= this.#ttl) entry = await this.#load(tenantId);
    const p = entry.value;
    // No directory entry: an unknown tenant. The pool scope's active-tenant check refuses it.
    if (!p) return this.control.store.tenant(tenantId, scopeOptions(options));
    if (options.write && p.writesPausedUntil !== null) {
      const wait = p.writesPausedUntil - Date.now();
      if (wait > 0) throw new WritesPausedError(wait / 1000);
    }
    const key = options.write ? 'write' : options.requireActive === false ? 'inactive-ok' : 'active';
    let scoped = entry.scopes.get(key);
    if (!scoped) {
      const cell = this.#cellOf(p.cell);
      checkResidency(cell, p.region);
      scoped = await this.tiers[p.tier].scope(cell, tenantId, p.location, { ...scopeOptions(options), ...(options.write ? { writeEpoch: p.epoch } : {}) });
      entry.scopes.set(key, scoped);
    }
    return scoped;
  }

  /** A directory entry naming a cell the configuration no longer lists is the operator's error, not the caller's. */
  #cellOf(name: string): Cell {
    try {
      return this.cells.get(name);
    } catch {
      throw new BulkheadError('CONFIG_INVALID', `the placement directory names cell ${name}, which the cells setting does not list`);
    }
  }

  async #load(tenantId: string): Promise<CacheEntry> {
    // The entry's age counts from before the read, not from its answer: a read that began before a
    // move's switch committed may answer with the old placement after it, and must expire no later
    // than a cache time after the switch, when the move removes the source (moves.ts, `cleaning`).
    const started = Date.now();
    const [r] = await this.control.store.platform().batch([
      {
        name: 'bh_placement',
        text:
          'SELECT p.tier, p.cell, p.location, p.writes_paused_until, t.region, t.placement_epoch FROM bulkhead.placements p ' +
          'JOIN bulkhead.tenants t ON t.id = p.tenant_id WHERE p.tenant_id = $1',
        values: [tenantId],
      },
    ]);
    const row = r!.rows[0];
    const entry: CacheEntry = { value: row ? toResolved(row) : null, at: started, scopes: new Map() };
    if (this.#cache.size > 100_000) this.#cache.clear();
    this.#cache.set(tenantId, entry);
    return entry;
  }

  async #leastFilled(region: string): Promise<Cell> {
    const cells = this.cells.inRegion(region);
    if (cells.length === 0) {
      throw new BulkheadError('PLACEMENT_NO_CELL', `no storage cell serves region ${region}; add one to the cells setting`, { details: { field: 'region' } });
    }
    if (cells.length === 1) return cells[0]!;
    const [r] = await this.control.store.platform().batch([{ text: 'SELECT cell, count(*)::int AS n FROM bulkhead.placements GROUP BY cell' }]);
    const count = new Map(r!.rows.map((row) => [row.cell as string, row.n as number]));
    return cells.reduce((best, c) => ((count.get(c.name) ?? 0) < (count.get(best.name) ?? 0) ? c : best));
  }
}

/** Refuses a cell outside the tenant's region (SPEC section 3): data never lands or is read there. */
export function checkResidency(cell: Cell, region: string): void {
  if (cell.region !== region) {
    throw new BulkheadError('RESIDENCY_VIOLATION', `cell ${cell.name} is in region ${cell.region}, the tenant's data must stay in region ${region}`, {
      details: { field: 'cell' },
    });
  }
}

function scopeOptions(options: RoutedScopeOptions): TenantScopeOptions {
  return options.requireActive === undefined ? {} : { requireActive: options.requireActive };
}

function toResolved(row: Record<string, unknown>): ResolvedPlacement {
  const paused = row.writes_paused_until as Date | null;
  return {
    tier: row.tier as TierName,
    cell: row.cell as string,
    location: row.location as string,
    region: row.region as string,
    writesPausedUntil: paused ? paused.getTime() : null,
    epoch: row.placement_epoch as number,
  };
}
