import { BulkheadError, DatabaseError, NotFoundError } from '../errors.js';
import { isUuid, uuidv7 } from '../ids.js';
import type { Placements } from '../placement/placements.js';
import { PLACE_NAME, TIERS, type TierName } from '../placement/tier.js';
import type { Store } from '../store/store.js';
import type { EngineTransaction } from '../store/engine.js';

/** Lifecycle states of a tenant (SPEC section 1). */
export const TENANT_STATUSES = ['active', 'suspended', 'quarantined', 'migrating', 'offboarding', 'erased'] as const;
/** A lifecycle state. */
export type TenantStatus = (typeof TENANT_STATUSES)[number];
export { TIERS };
/** An isolation tier. */
export type Tier = TierName;

/** A tenant as the API shows it. */
export interface TenantView {
  readonly id: string;
  readonly slug: string;
  readonly name: string;
  readonly tier: Tier;
  readonly region: string;
  readonly status: TenantStatus;
  readonly createdAt: string;
  readonly updatedAt: string;
}

/** One entry of a tenant's lifecycle history. */
export interface TenantHistoryEntry {
  readonly seq: number;
  readonly at: string;
  readonly event: string;
  readonly fromStatus: TenantStatus | null;
  readonly toStatus: TenantStatus;
  readonly actor: string;
}

/** Options of the tenant registry. */
export interface TenantsOptions {
  /** Regions this deployment serves; the first is the default. */
  readonly regions: readonly string[];
  /** How long an `active` status is trusted by the authentication pre-check (the database re-checks every batch). */
  readonly statusTtlMs?: number;
}

const SLUG = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
/** Status changes an operator may make through this version's API. */
const MANUAL_TRANSITIONS: Readonly<Record<string, readonly TenantStatus[]>> = {
  active: ['suspended'],
  suspended: ['active'],
};

function invalid(message: string, field: string): never {
  throw new BulkheadError('TENANT_INVALID', message, { details: { field } });
}

/** The platform's tenant registry, with lifecycle history. */
export class Tenants {
  readonly #store: Store;
  readonly #regions: readonly string[];
  readonly #ttl: number;
  readonly #status = new Map<string, { status: TenantStatus | null; at: number }>();
  readonly #refreshing = new Set<string>();

  readonly #placements: Placements;

  constructor(store: Store, placements: Placements, options: TenantsOptions) {
    if (options.regions.length === 0) throw new TypeError('at least one region is needed');
    this.#store = store;
    this.#placements = placements;
    this.#regions = Object.freeze([...options.regions]);
    this.#ttl = options.statusTtlMs ?? 30_000;
  }

  /**
   * Creates an active tenant on its tier (default pool) in its region (default the first), in the
   * named cell or the least-filled cell of the region. The storage is provisioned first and the
   * registry row and placement are recorded together after, so a tenant never exists without its
   * storage; a failed registration removes what was provisioned.
   */
  async create(input: unknown, actor: string): Promise<TenantView> {
    if (typeof input !== 'object' || input === null || Array.isArray(input)) invalid('the body must be a JSON object', 'body');
    const { slug, name, tier = 'pool', region = this.#regions[0], cell, ...rest } = input as Record<string, unknown>;
    const unknown = Object.keys(rest)[0];
    if (unknown !== undefined) invalid(`unknown property "${/^[A-Za-z0-9_]{1,40}$/.test(unknown) ? unknown : '(invalid name)'}"`, 'body');
    if (typeof slug !== 'string' || !SLUG.test(slug)) invalid('slug must be 1-63 lower-case letters, digits and inner hyphens', 'slug');
    if (typeof name !== 'string' || name.trim().length === 0 || name.length > 200) invalid('name must be a non-empty string of at most 200 characters', 'name');
    if (typeof tier !== 'string' || !(TIERS as readonly string[]).includes(tier)) invalid(`tier must be one of ${TIERS.join(', ')}`, 'tier');
    if (typeof region !== 'string' || !this.#regions.includes(region)) invalid(`region must be one of ${this.#regions.join(', ')}`, 'region');
    if (cell !== undefined && (typeof cell !== 'string' || !PLACE_NAME.test(cell))) invalid('cell must be the name of a configured cell', 'cell');
    const id = uuidv7();
    const row = { id, slug, name, status: 'active', tier: tier as TierName, region };
    const placement = await this.#placements.provision(row, cell as string | undefined);
    try {
      const [r] = await this.#store.platform().batch([
        {
          text:
            "INSERT INTO bulkhead.tenants (id, slug, name, status, tier, region) VALUES ($1, $2, $3, 'active', $4, $5) " +
            'RETURNING id, slug, name, status, tier, region, created_at, updated_at',
          values: [id, slug, name, tier, region],
        },
        {
          text: "INSERT INTO bulkhead.tenant_history (tenant_id, event, from_status, to_status, actor) VALUES ($1, 'created', NULL, 'active', $2)",
          values: [id, actor],
        },
        this.#placements.recordStatement(id, placement),
      ]);
      this.#status.set(id, { status: 'active', at: Date.now() });
      return toView(r!.rows[0]!);
    } catch (error) {
      await this.#placements.drop(id, placement).catch(() => {});
      if (error instanceof DatabaseError && error.kind === 'unique' && error.statementIndex === 0) {
        throw new BulkheadError('TENANT_SLUG_TAKEN', 'a tenant with this slug exists; choose another slug', { details: { field: 'slug' } });
      }
      throw error;
    }
  }

  /** One tenant by id or slug. */
  async get(idOrSlug: string): Promise<TenantView> {
    const byId = isUuid(idOrSlug);
    if (!byId && !SLUG.test(idOrSlug)) throw new NotFoundError('TENANT_NOT_FOUND', 'no such tenant');
    const [r] = await this.#store.platform().batch([
      {
        text: `SELECT id, slug, name, status, tier, region, created_at, updated_at FROM bulkhead.tenants WHERE ${byId ? 'id = $1::uuid' : 'slug = $1'}`,
        values: [idOrSlug],
      },
    ]);
    const row = r!.rows[0];
    if (!row) throw new NotFoundError('TENANT_NOT_FOUND', 'no such tenant');
    return toView(row);
  }

  /** Every tenant, oldest first. */
  async list(): Promise<TenantView[]> {
    const [r] = await this.#store.platform().batch([
      { text: 'SELECT id, slug, name, status, tier, region, created_at, updated_at FROM bulkhead.tenants ORDER BY id' },
    ]);
    return r!.rows.map(toView);
  }

  /** The lifecycle history of a tenant. */
  async history(id: string): Promise<TenantHistoryEntry[]> {
    const tenant = await this.get(id);
    const [r] = await this.#store.platform().batch([
      { text: 'SELECT seq, at, event, from_status, to_status, actor FROM bulkhead.tenant_history WHERE tenant_id = $1 ORDER BY seq', values: [tenant.id] },
    ]);
    return r!.rows.map((row) => ({
      seq: Number(row.seq),
      at: (row.at as Date).toISOString(),
      event: row.event as string,
      fromStatus: (row.from_status as TenantStatus | null) ?? null,
      toStatus: row.to_status as TenantStatus,
      actor: row.actor as string,
    }));
  }

  /** Moves a tenant between active and suspended (the other states belong to later workflows). */
  async setStatus(idOrSlug: string, status: unknown, actor: string): Promise<TenantView> {
    if (typeof status !== 'string' || !(TENANT_STATUSES as readonly string[]).includes(status)) {
      invalid(`status must be one of ${TENANT_STATUSES.join(', ')}`, 'status');
    }
    const tenant = await this.get(idOrSlug);
    if (tenant.status === status) {
      // Nothing changes, but a copy of the row that a failed status change left stale is repaired.
      await this.#placements.mirror(tenant);
      return tenant;
    }
    if (!MANUAL_TRANSITIONS[tenant.status]?.includes(status as TenantStatus)) {
      invalid(`the tenant is ${tenant.status}; it cannot be made ${status} here`, 'status');
    }
    return this.transition(tenant, status as TenantStatus, 'status', actor);
  }

  /**
   * Changes a tenant's status from the one in `tenant` to `to`, with a history entry of `event`, in
   * one transaction with `within` (the workflow's own statements, such as an erasure's row; it may
   * throw to roll everything back). Refused with TENANT_INVALID when the status changed meanwhile:
   * nothing is written then. The copy at the tenant's placement is brought in line afterwards.
   */
  async transition(
    tenant: TenantView,
    to: TenantStatus,
    event: string,
    actor: string,
    within: (tx: EngineTransaction) => Promise<unknown> = async () => {},
  ): Promise<TenantView> {
    const [r] = await this.#store.platform().transaction(async (tx) => {
      const results = await tx.batch([
        {
          text:
            'UPDATE bulkhead.tenants SET status = $2, updated_at = now() WHERE id = $1 AND status = $3 ' +
            'RETURNING id, slug, name, status, tier, region, created_at, updated_at',
          values: [tenant.id, to, tenant.status],
        },
      ]);
      if (!results[0]!.rows[0]) throw new BulkheadError('TENANT_INVALID', 'the tenant changed concurrently; retry', { details: { field: 'status' } });
      await tx.batch([
        {
          text: 'INSERT INTO bulkhead.tenant_history (tenant_id, event, from_status, to_status, actor) VALUES ($1, $2, $3, $4, $5)',
          values: [tenant.id, event, tenant.status, to, actor],
        },
      ]);
      await within(tx);
      return results;
    });
    this.#status.set(tenant.id, { status: to, at: Date.now() });
    const view = toView(r!.rows[0]!);
    // A placement outside the control plane checks the tenant's status against its own copy.
    await this.#placements.mirror(view);
    return view;
  }

  /**
   * The status of a tenant, for the authentication pre-check. The database re-checks that the
   * tenant is active in every tenant batch (`Store.tenant`), so this cache only spares inactive
   * tenants' requests work: an `active` entry is served for up to `statusTtlMs` and refreshed in
   * the background after that, while any other status is re-read once it is a second old, so a
   * tenant resumed by another process is not refused for long. `null` when there is no such tenant.
   */
  async status(id: string): Promise<TenantStatus | null> {
    const hit = this.#status.get(id);
    const age = hit ? Date.now() - hit.at : Infinity;
    if (hit && hit.status === 'active' && age < this.#ttl) {
      if (age > this.#ttl / 2 && !this.#refreshing.has(id)) {
        this.#refreshing.add(id);
        this.#readStatus(id)
          .catch(() => {})
          .finally(() => this.#refreshing.delete(id));
      }
      return hit.status;
    }
    if (hit && hit.status !== 'active' && age < 1_000) return hit.status;
    return this.#readStatus(id);
  }

  async #readStatus(id: string): Promise<TenantStatus | null> {
    const [r] = await this.#store.tenant(id, { requireActive: false }).batch([
      { name: 'bh_tenant_status', text: 'SELECT status FROM bulkhead.tenants WHERE id = $1', values: [id] },
    ]);
    const status = (r!.rows[0]?.status as TenantStatus | undefined) ?? null;
    if (this.#status.size > 100_000) this.#status.clear();
    this.#status.set(id, { status, at: Date.now() });
    return status;
  }
}

function toView(row: Record<string, unknown>): TenantView {
  return {
    id: row.id as string,
    slug: row.slug as string,
    name: row.name as string,
    tier: row.tier as Tier,
    region: row.region as string,
    status: row.status as TenantStatus,
    createdAt: (row.created_at as Date).toISOString(),
    updatedAt: (row.updated_at as Date).toISOString(),
  };
}
