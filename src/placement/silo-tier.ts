import { Store, type ScopedStore } from '../store/store.js';
import { hex } from './bridge-tier.js';
import { mirrorTenantRow, type Cell } from './cells.js';
import type { Tier, TenantRow, TierScopeOptions } from './tier.js';

/**
 * Silo tier: a database per tenant, with its own owner and application roles (PostgreSQL: a
 * database on the cell's server; embedded: a PGlite data directory of its own). Inside it the
 * tenant lives in the pool layout (one partition), so the same SQL serves it.
 */
export class SiloTier implements Tier {
  readonly name = 'silo' as const;
  readonly #stores = new Map<string, Promise<Store>>();

  locationOf(cell: Cell, tenantId: string): string {
    return `${cell.store.options.appRole}_s${hex(tenantId)}`;
  }

  async provision(cell: Cell, tenant: TenantRow): Promise<void> {
    const location = this.locationOf(cell, tenant.id);
    await this.#store(cell, location, tenant.id, true);
    await this.mirror(cell, tenant, location);
  }

  async mirror(cell: Cell, tenant: TenantRow, location: string): Promise<void> {
    await mirrorTenantRow(await this.#store(cell, location, tenant.id, false), tenant);
  }

  async scope(cell: Cell, tenantId: string, location: string, options: TierScopeOptions): Promise<ScopedStore> {
    return (await this.#store(cell, location, tenantId, false)).tenant(tenantId, options);
  }

  /** The store of a silo (migrated once per process), for moves and statistics. */
  store(cell: Cell, tenantId: string, location: string): Promise<Store> {
    return this.#store(cell, location, tenantId, false);
  }

  async drop(cell: Cell, tenantId: string, location: string): Promise<void> {
    this.#stores.delete(`${cell.name}/${location}`);
    await cell.host.dropDatabase(location);
    if (cell.host.kind === 'postgres') {
      // Roles are server-wide; the silo's own two go with its database.
      const { ownerRole, appRole } = rolesOf(cell, tenantId);
      await cell.store.engine.script(`DROP ROLE IF EXISTS ${appRole};\nDROP ROLE IF EXISTS ${ownerRole};`);
    }
  }

  #store(cell: Cell, location: string, tenantId: string, create: boolean): Promise<Store> {
    const key = `${cell.name}/${location}`;
    let store = this.#stores.get(key);
    if (!store) {
      store = (async () => {
        const engine = await cell.host.database(location, { create });
        const s = new Store(engine, { ...rolesOf(cell, tenantId), partitions: 1 });
        await s.migrate();
        return s;
      })();
      this.#stores.set(key, store);
      store.catch(() => this.#stores.delete(key));
    }
    return store;
  }
}

function rolesOf(cell: Cell, tenantId: string): { ownerRole: string; appRole: string } {
  const { appRole } = cell.store.options;
  return { ownerRole: `${appRole}_o${hex(tenantId)}`, appRole: `${appRole}_s${hex(tenantId)}` };
}
