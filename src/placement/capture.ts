import { BulkheadError, DatabaseError } from '../errors.js';
import { isPlainIdentifier, isUuid } from '../ids.js';
import type { Statement, StatementResult } from '../store/engine.js';
import type { Store } from '../store/store.js';

/**
 * Change capture for tenant moves (migration 10): from the start of a move until its end, triggers
 * on the source's record and value tables, made for the moved tenant alone, add a row to
 * `bulkhead.move_changes` in the writing transaction, naming the record whose rows changed. The
 * move's catch-up passes and its switch then read what changed from this log instead of scanning
 * the tenant: the switch, under the write pause, handles the records written since its comparison
 * base and nothing else (docs/architecture.md, "What the switch does under the pause").
 *
 * A log row and the change it names commit together or not at all, and a row stays until the
 * record's rows it names have been copied to the target after it was visible: so any record the
 * log does not name is, at the target, as the source had it when last copied, and any change the
 * source has seen since is named. The triggers are installed before the copy reads anything, by
 * DDL that waits for the writes under way on those tables, so no change escapes them.
 */

/** Where a move's source keeps its data and its change log: its database (the store) and its schema. */
export interface CaptureSite {
  readonly store: Store;
  /** `bulkhead` (the pool, a silo) or a bridge tenant's schema. */
  readonly schema: string;
}

/** The tables whose changes are captured, and the trigger function that names the record of a changed row (migration 10). */
const CAPTURED = [
  { table: 'records', fn: 'bulkhead.capture_record_change()' },
  { table: 'unique_values', fn: 'bulkhead.capture_value_change()' },
  { table: 'index_values', fn: 'bulkhead.capture_value_change()' },
] as const;

const OPERATIONS = [
  { suffix: 'i', event: 'INSERT', row: 'NEW' },
  { suffix: 'u', event: 'UPDATE', row: 'NEW' },
  { suffix: 'd', event: 'DELETE', row: 'OLD' },
] as const;

/** Serializes capture DDL per database: triggers made on the pool's shared tables by concurrent moves. */
const CAPTURE_LOCK = 7283460014;

/**
 * How long the DDL waits for a table lock before it gives up and tries again, below PostgreSQL's
 * `deadlock_timeout` (1 s): a capture DDL that meets a write waiting in turn for it times out
 * itself, rather than the deadlock detector failing the write. Meanwhile the statements behind
 * it in the lock's queue wait too (writes while triggers are made, every statement on the table
 * while they are dropped), so the wait is kept short and tried again.
 */
const LOCK_TIMEOUT_MS = 400;
const DDL_ATTEMPTS = 10;

function checkSite(site: CaptureSite, tenantId: string): string {
  if (!isUuid(tenantId)) throw new BulkheadError('INTERNAL', 'change capture needs a validated tenant id');
  if (!isPlainIdentifier(site.schema)) throw new BulkheadError('INTERNAL', 'change capture needs a plain schema name');
  return tenantId.replace(/-/g, '');
}

/** The trigger names of one tenant (per table): `bh_capture_<tenant hex>_<i|u|d>`. */
function triggerName(hex: string, suffix: string): string {
  return `bh_capture_${hex}_${suffix}`;
}

/**
 * The tables the triggers go on, per captured table: the table itself, or on a hash-partitioned
 * one (the pool, a silo) the partition holding the tenant's rows, so that only the tenants sharing
 * it wait on the DDL's locks and pay the trigger's `WHEN` on their writes. Missing tables (a
 * bridge schema dropped already) are left out.
 */
async function capturedTables(site: CaptureSite, tenantId: string): Promise<Array<{ table: string; fn: string }>> {
  const [, r] = await site.store.engine.batch([
    { text: `SET LOCAL ROLE ${site.store.options.ownerRole}` },
    {
      text:
        "SELECT t.name, coalesce((SELECT format('%I.%I', pn.nspname, pc.relname) FROM pg_inherits i JOIN pg_class pc ON pc.oid = i.inhrelid " +
        "JOIN pg_namespace pn ON pn.oid = pc.relnamespace, regexp_match(pg_get_expr(pc.relpartbound, pc.oid), 'modulus (\\d+), remainder (\\d+)') b " +
        "WHERE i.inhparent = c.oid AND satisfies_hash_partition(c.oid, b[1]::int, b[2]::int, $2::uuid)), format('%I.%I', $1::text, c.relname)) AS target, " +
        "c.relkind::text AS kind FROM unnest($3::text[]) AS t(name) JOIN pg_class c ON c.relname = t.name JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = $1",
      values: [site.schema, tenantId, `{${CAPTURED.map((c) => c.table).join(',')}}`],
    },
  ]);
  const found = new Map(r!.rows.map((row) => [row.name as string, row]));
  const out: Array<{ table: string; fn: string }> = [];
  for (const { table, fn } of CAPTURED) {
    const row = found.get(table);
    if (!row) continue;
    // A partitioned table without the tenant's partition cannot be: refuse rather than capture nothing.
    if (row.kind === 'p' && (row.target as string) === `${site.schema}.${table}`) throw new BulkheadError('INTERNAL', `no partition of ${table} holds the tenant`);
    out.push({ table: row.target as string, fn });
  }
  return out;
}

/** Runs DDL as the owner, retrying when it waited too long for a lock (SQLSTATE 55P03). */
async function ownerDdl(site: CaptureSite, sql: (tables: Array<{ table: string; fn: string }>) => string, tenantId: string): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      const tables = await capturedTables(site, tenantId);
      await site.store.engine.script(`SELECT pg_advisory_xact_lock(${CAPTURE_LOCK});
SET LOCAL ROLE ${site.store.options.ownerRole};
SET LOCAL lock_timeout = ${LOCK_TIMEOUT_MS};
${sql(tables)}`);
      return;
    } catch (error) {
      if (!(error instanceof DatabaseError && error.sqlState === '55P03') || attempt >= DDL_ATTEMPTS) throw error;
      await new Promise((resolve) => setTimeout(resolve, 50 * attempt));
    }
  }
}

/**
 * Starts capturing the tenant's changes at `site` (idempotent: `CREATE OR REPLACE`, which waits
 * for the writes under way on the table and holds new ones meanwhile, but not reads). The
 * triggers fire for the tenant's rows only (`WHEN`).
 */
export async function installCapture(site: CaptureSite, tenantId: string): Promise<void> {
  const hex = checkSite(site, tenantId);
  await ownerDdl(
    site,
    (tables) =>
      tables
        .flatMap(({ table, fn }) =>
          OPERATIONS.map(
            (op) =>
              `CREATE OR REPLACE TRIGGER ${triggerName(hex, op.suffix)} AFTER ${op.event} ON ${table} FOR EACH ROW ` +
              `WHEN (${op.row}.tenant_id = '${tenantId}'::uuid) EXECUTE FUNCTION ${fn};`,
          ),
        )
        .join('\n'),
    tenantId,
  );
}

/**
 * Stops capturing the tenant's changes at `site` and forgets its log (idempotent): once the move
 * has switched (before the source is removed) or rolled back. Dropping a trigger locks its table
 * exclusively, reads included, for as long as it waits for the statements under way: on the pool
 * that is one partition's tenants, for at most `LOCK_TIMEOUT_MS` per attempt.
 */
export async function removeCapture(site: CaptureSite, tenantId: string): Promise<void> {
  const hex = checkSite(site, tenantId);
  await ownerDdl(
    site,
    (tables) =>
      [
        ...tables.flatMap(({ table }) => OPERATIONS.map((op) => `DROP TRIGGER IF EXISTS ${triggerName(hex, op.suffix)} ON ${table};`)),
        `DELETE FROM bulkhead.move_changes WHERE tenant_id = '${tenantId}'::uuid;`,
      ].join('\n'),
    tenantId,
  );
}

/**
 * Runs statements at `site` as its owner, in the tenant's context (the owner is subject to the
 * FORCEd row-level security too, so these see the tenant's rows only), with the site's schema as
 * the search path and timestamps rendered in UTC. Only the owner may read the change log, so the
 * statements that join it run here; everything else a move reads and writes goes through the
 * tenant's own scope.
 */
export async function ownerBatch(site: CaptureSite, tenantId: string, statements: readonly Statement[]): Promise<StatementResult[]> {
  checkSite(site, tenantId);
  return site.store.asOwnerInTenant(tenantId, statements, { searchPath: site.schema, utc: true });
}

/** Log entries, in id order: each names a record (`[collection, id]` as JSON text, as `jsonb_build_array` renders it). */
export interface LoggedChange {
  readonly id: string;
  readonly key: string;
}

/** The tenant's log entries after `afterId` (all when null), at most `limit`, in id order. */
export async function readChanges(site: CaptureSite, tenantId: string, afterId: string | null, limit: number): Promise<LoggedChange[]> {
  const [r] = await ownerBatch(site, tenantId, [
    {
      text:
        'SELECT id::text AS id, jsonb_build_array(collection, record_id)::text AS k FROM bulkhead.move_changes ' +
        'WHERE tenant_id = $1 AND id > $2::bigint ORDER BY id LIMIT $3',
      values: [tenantId, afterId ?? '0', limit],
    },
  ]);
  return r!.rows.map((row) => ({ id: row.id as string, key: row.k as string }));
}

/** The records the tenant's whole log names, each once. */
export async function loggedKeys(site: CaptureSite, tenantId: string): Promise<string[]> {
  const [r] = await ownerBatch(site, tenantId, [
    { text: 'SELECT DISTINCT jsonb_build_array(collection, record_id)::text AS k FROM bulkhead.move_changes WHERE tenant_id = $1', values: [tenantId] },
  ]);
  return r!.rows.map((row) => row.k as string);
}

/**
 * Removes log entries by id, once the records they name have been copied after the entries were
 * read: a change made since has an entry of its own, which stays.
 */
export async function consumeChanges(site: CaptureSite, tenantId: string, ids: readonly string[]): Promise<void> {
  if (ids.length === 0) return;
  await ownerBatch(site, tenantId, [
    {
      text: 'DELETE FROM bulkhead.move_changes WHERE tenant_id = $1 AND id IN (SELECT value::bigint FROM jsonb_array_elements_text($2::text::jsonb))',
      values: [tenantId, JSON.stringify(ids)],
    },
  ]);
}
