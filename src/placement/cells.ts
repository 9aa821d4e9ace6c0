import type { CellConfig, Config } from '../config.js';
import { BulkheadError } from '../errors.js';
import type { DatabaseHost, Engine } from '../store/engine.js';
import { PgliteHost } from '../store/pglite/pglite-host.js';
import { PostgresHost } from '../store/postgres/postgres-host.js';
import { Store } from '../store/store.js';
import type { TenantRow } from './tier.js';

/** A storage cell, opened: its host (main and silo databases) and the store on its main database. */
export class Cell {
  readonly name: string;
  readonly region: string;
  readonly host: DatabaseHost;
  /** The store on the cell's main database (pool and bridge tenants), migrated. */
  readonly store: Store;
  /** The first cell also holds the control plane: registry, placement directory, moves. */
  readonly control: boolean;

  constructor(config: CellConfig, host: DatabaseHost, store: Store, control: boolean) {
    this.name = config.name;
    this.region = config.region;
    this.host = host;
    this.store = store;
    this.control = control;
  }
}

/**
 * Keeps a copy of a tenant's registry row in a database outside the control plane (a silo, or
 * another cell's main database): the data tables reference it, and every tenant batch checks
 * there that the tenant is active, so a status change must reach it too.
 */
export async function mirrorTenantRow(store: Store, tenant: TenantRow): Promise<void> {
  await store.platform().batch([
    {
      text:
        'INSERT INTO bulkhead.tenants (id, slug, name, status, tier, region, placement_epoch) VALUES ($1, $2, $3, $4, $5, $6, coalesce($7::int, 1)) ' +
        'ON CONFLICT (id) DO UPDATE SET slug = EXCLUDED.slug, name = EXCLUDED.name, status = EXCLUDED.status, tier = EXCLUDED.tier, ' +
        'region = EXCLUDED.region, placement_epoch = coalesce($7::int, bulkhead.tenants.placement_epoch), updated_at = now()',
      values: [tenant.id, tenant.slug, tenant.name, tenant.status, tenant.tier, tenant.region, tenant.epoch ?? null],
    },
  ]);
}

/** The storage cells of a deployment, opened and migrated. */
export class Cells {
  readonly #cells: ReadonlyMap<string, Cell>;
  readonly control: Cell;

  private constructor(cells: Cell[]) {
    this.#cells = new Map(cells.map((c) => [c.name, c]));
    this.control = cells[0]!;
  }

  /** Opens every configured cell and applies migrations to its main database. */
  static async open(config: Config, options: { readonly controlEngine?: Engine } = {}): Promise<Cells> {
    const opened: Cell[] = [];
    try {
      for (const [i, c] of config.cells.entries()) {
        const mainEngine = i === 0 ? options.controlEngine : undefined;
        const host: DatabaseHost = c.databaseUrl
          ? new PostgresHost({ connectionString: c.databaseUrl, maxConnections: config.poolSize, ...(mainEngine ? { mainEngine } : {}) })
          : new PgliteHost({ dataDir: c.dataDir!, ...(mainEngine ? { mainEngine } : {}) });
        const store = new Store(await host.main(), { ownerRole: config.ownerRole, appRole: config.appRole, partitions: config.partitions });
        opened.push(new Cell(c, host, store, i === 0));
        await store.migrate();
      }
      return new Cells(opened);
    } catch (error) {
      for (const cell of opened) await cell.host.close().catch(() => {});
      throw error;
    }
  }

  /** A cell by name. */
  get(name: string): Cell {
    const cell = this.#cells.get(name);
    if (!cell) throw new BulkheadError('PLACEMENT_CELL_UNKNOWN', `no cell is named ${name.slice(0, 40)}; see the cells setting`, { details: { field: 'cell' } });
    return cell;
  }

  /** The cells of a region, in configuration order. */
  inRegion(region: string): Cell[] {
    return [...this.#cells.values()].filter((c) => c.region === region);
  }

  /** Every cell. */
  all(): Cell[] {
    return [...this.#cells.values()];
  }

  /** Closes every cell's databases. */
  async close(): Promise<void> {
    for (const cell of this.#cells.values()) await cell.host.close().catch(() => {});
  }
}
