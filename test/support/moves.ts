/**
 * Helpers shared by the move tests: seeding a tenant with many records at once, its checksums at
 * its current placement, and waiting for a move to end.
 */
import type { Bulkhead } from '../../src/bulkhead.js';
import { checksums, type Checksums } from '../../src/placement/copy.js';
import type { MoveView } from '../../src/placement/moves.js';

/** The collection every move test seeds (a unique and an indexed field, so all five tables hold rows). */
export const SEED_COLLECTION = {
  fields: {
    title: { type: 'string', required: true, unique: true },
    n: { type: 'integer', indexed: true },
    note: { type: 'text' },
  },
};

/**
 * Adds `count` records to the tenant's `items` collection in one statement per table, through the
 * tenant's own scope (RLS applies), with the unique and index rows the write path would add.
 */
export async function seedRecords(bh: Bulkhead, tenantId: string, count: number, prefix: string): Promise<void> {
  const scope = bh.placements.tenant(tenantId, { write: true });
  await scope.batch([
    {
      text:
        "INSERT INTO records (tenant_id, collection, id, data, schema_version, created_by, updated_by) " +
        "SELECT $1, 'items', gen_random_uuid(), jsonb_build_object('title', $2 || g, 'n', g, 'note', repeat('x', g % 50)), 1, 'seed', 'seed' " +
        'FROM generate_series(1, $3::int) g',
      values: [tenantId, prefix, count],
    },
    {
      text:
        "INSERT INTO unique_values (tenant_id, collection, field, key, record_id) SELECT tenant_id, collection, 'title', bulkhead.value_key(data -> 'title'), id " +
        "FROM records WHERE tenant_id = $1 AND collection = 'items' AND data ->> 'title' LIKE $2 || '%'",
      values: [tenantId, prefix],
    },
    {
      text:
        "INSERT INTO index_values (tenant_id, collection, field, key, record_id) SELECT tenant_id, collection, 'n', bulkhead.value_key(data -> 'n'), id " +
        "FROM records WHERE tenant_id = $1 AND collection = 'items' AND data ->> 'title' LIKE $2 || '%'",
      values: [tenantId, prefix],
    },
  ]);
}

/** The tenant's checksums at the placement the router sends it to now. */
export async function tenantChecksums(bh: Bulkhead, tenantId: string): Promise<Checksums> {
  bh.placements.invalidate(tenantId);
  return checksums(bh.placements.tenant(tenantId, { requireActive: false }), tenantId);
}

/**
 * The checksums of the tenant's data without its audit chain: audited requests append to the chain
 * by design, so "the data did not change" compares these.
 */
export function dataChecksums(c: Checksums): Checksums {
  return Object.fromEntries(Object.entries(c).filter(([k]) => !k.startsWith('audit_events/')));
}

/** Waits for a move's runner in this process, then returns the move as stored. */
export async function finished(bh: Bulkhead, tenantId: string, moveId: string): Promise<MoveView> {
  await bh.moves.wait(moveId);
  return bh.moves.get(tenantId, moveId);
}
