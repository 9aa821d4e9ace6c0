import type { ScopedStore } from '../store/store.js';
import type { Cell } from './cells.js';

/** Isolation tiers (SPEC section 2). */
export const TIERS = ['pool', 'bridge', 'silo'] as const;
/** An isolation tier. */
export type TierName = (typeof TIERS)[number];

/** A cell or region name: lower-case letters, digits and inner hyphens, at most 32 (as the schema checks). */
export const PLACE_NAME = /^[a-z0-9][a-z0-9-]{0,31}$/;

/** Where one tenant's data lives: the placement directory's entry. */
export interface Placement {
  readonly tier: TierName;
  readonly cell: string;
  /** The schema (pool: `bulkhead`, bridge: the tenant's schema) or silo database. */
  readonly location: string;
}

/** The registry row a tier copies into a database outside the control plane (silos, other cells). */
export interface TenantRow {
  readonly id: string;
  readonly slug: string;
  readonly name: string;
  readonly status: string;
  readonly tier: TierName;
  readonly region: string;
  /** The placement epoch (see migration 5); a copy made without one keeps the epoch it has. */
  readonly epoch?: number;
}

/** Options of a scope a tier hands out. */
export interface TierScopeOptions {
  readonly requireActive?: boolean;
  /** For a scope that writes: the placement epoch the router found (see `TenantScopeOptions`). */
  readonly writeEpoch?: number;
}

/**
 * One isolation tier: how a tenant's storage is made, reached and removed. Every tier holds the
 * same tables (one physical layout) and runs the same SQL; they differ in where the tables are
 * and which role may touch them, the way PGlite's filesystems differ behind one interface.
 */
export interface Tier {
  readonly name: TierName;
  /** The location a tenant gets in `cell` (deterministic, so a crashed provisioning can be resumed). */
  locationOf(cell: Cell, tenantId: string): string;
  /** Creates the tenant's storage at its location in `cell`; idempotent. */
  provision(cell: Cell, tenant: TenantRow): Promise<void>;
  /** Copies the tenant's registry row (its status) to the database at `location` when that is not the control plane. */
  mirror(cell: Cell, tenant: TenantRow, location: string): Promise<void>;
  /** The tenant's scoped store at `location`: its role, its search path, its tenant context. */
  scope(cell: Cell, tenantId: string, location: string, options: TierScopeOptions): Promise<ScopedStore>;
  /** Removes the tenant's storage at `location` and any role made for it; idempotent. */
  drop(cell: Cell, tenantId: string, location: string): Promise<void>;
}
