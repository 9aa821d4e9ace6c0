import { POOL_SCHEMA, type ScopedStore } from '../store/store.js';
import { mirrorTenantRow, type Cell } from './cells.js';
import type { Tier, TenantRow, TierScopeOptions } from './tier.js';

/** Pool tier: the shared, hash-partitioned tables of a cell's main database, under RLS. */
export class PoolTier implements Tier {
  readonly name = 'pool' as const;

  locationOf(): string {
    return POOL_SCHEMA;
  }

  async provision(cell: Cell, tenant: TenantRow): Promise<void> {
    await this.mirror(cell, tenant);
  }

  async mirror(cell: Cell, tenant: TenantRow): Promise<void> {
    if (!cell.control) await mirrorTenantRow(cell.store, tenant);
  }

  async scope(cell: Cell, tenantId: string, _location: string, options: TierScopeOptions): Promise<ScopedStore> {
    return cell.store.tenant(tenantId, options);
  }

  async drop(cell: Cell, tenantId: string): Promise<void> {
    await cell.store.purgeTenant(tenantId, POOL_SCHEMA);
  }
}
