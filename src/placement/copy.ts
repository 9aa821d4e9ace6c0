import type { Statement } from '../store/engine.js';
import type { ScopedStore } from '../store/store.js';

/**
 * Copying one tenant's rows between two placements, table by table, in key order, and comparing
 * the two sides. Rows travel as one JSON text per batch (`jsonb_agg` on the source,
 * `jsonb_populate_recordset` on the target), so a batch is two statements whatever its size and
 * no row is parsed in JavaScript. Every statement runs in the tenant's own scope on both sides:
 * RLS applies to the copy as to any request.
 */

/** A data table: its primary key (after tenant_id) with types, and its other columns. */
interface TableSpec {
  readonly name: string;
  readonly key: ReadonlyArray<readonly [column: string, type: string]>;
  readonly columns: readonly string[];
  /** The column rows are grouped by in checksums (the collection they belong to). */
  readonly collectionColumn: string;
  /**
   * Whether the tenant's role may UPDATE rows (it may not for append-only tables): a changed row
   * is then replaced by delete and insert rather than by an upsert.
   */
  readonly updatable: boolean;
  /**
   * The condition (on row `r`) that the row's parent exists at the target. Writes go on during
   * the copy, so a child can be read after its parent's table was done: such a row waits for the
   * sync, which handles parents first, instead of breaking a foreign key.
   */
  readonly parent?: string;
}

const RECORD_EXISTS = 'EXISTS (SELECT 1 FROM records p WHERE p.tenant_id = r.tenant_id AND p.collection = r.collection AND p.id = r.record_id)';

/** The data tables in the order a copy fills them (parents first). */
export const COPY_TABLES: readonly TableSpec[] = [
  { name: 'collections', key: [['name', 'text']], columns: ['version', 'definition', 'created_at', 'updated_at'], collectionColumn: 'name', updatable: true },
  {
    name: 'collection_versions',
    key: [['name', 'text'], ['version', 'integer']],
    columns: ['definition', 'created_at', 'created_by'],
    collectionColumn: 'name',
    updatable: false,
    parent: 'EXISTS (SELECT 1 FROM collections p WHERE p.tenant_id = r.tenant_id AND p.name = r.name)',
  },
  {
    name: 'records',
    key: [['collection', 'text'], ['id', 'uuid']],
    columns: ['data', 'version', 'schema_version', 'created_at', 'updated_at', 'created_by', 'updated_by'],
    collectionColumn: 'collection',
    updatable: true,
    parent: 'EXISTS (SELECT 1 FROM collections p WHERE p.tenant_id = r.tenant_id AND p.name = r.collection)',
  },
  {
    name: 'unique_values',
    key: [['collection', 'text'], ['field', 'text'], ['key', 'text']],
    columns: ['record_id'],
    collectionColumn: 'collection',
    updatable: false,
    parent: RECORD_EXISTS,
  },
  {
    name: 'index_values',
    key: [['collection', 'text'], ['field', 'text'], ['key', 'text'], ['record_id', 'uuid']],
    columns: [],
    collectionColumn: 'collection',
    updatable: false,
    parent: RECORD_EXISTS,
  },
];

/** A position in a table's key order: the last key copied, as JSON text values. */
export type Cursor = readonly string[] | null;

/** One copied batch. */
export interface CopiedBatch {
  readonly rows: number;
  /** The key of the last row copied, or null when the table is done. */
  readonly next: Cursor;
}

/** Timestamps render in the session's time zone; two servers must hash the same row to the same text. */
const UTC = { text: "SELECT set_config('TimeZone', 'UTC', true)" };

function keyList(t: TableSpec): string {
  return t.key.map(([c]) => c).join(', ');
}

/** Reads the next batch of `table` after `cursor` from `source` and inserts it into `target` (idempotent). */
export async function copyBatch(source: ScopedStore, target: ScopedStore, tenantId: string, table: TableSpec, cursor: Cursor, limit: number): Promise<CopiedBatch> {
  const keys = keyList(table);
  const after = cursor ? ` AND (${keys}) > (${table.key.map(([, type], i) => `$${i + 3}::${type}`).join(', ')})` : '';
  const [r] = await source.batch([
    {
      text:
        `SELECT coalesce(jsonb_agg(to_jsonb(b) ORDER BY ${keys}), '[]')::text AS rows, count(*)::int AS n, ` +
        `(array_agg(jsonb_build_array(${keys})::text ORDER BY ${table.key.map(([c]) => `${c} DESC`).join(', ')}))[1] AS last ` +
        `FROM (SELECT * FROM ${table.name} WHERE tenant_id = $1${after} ORDER BY ${keys} LIMIT $2) b`,
      values: [tenantId, limit, ...(cursor ?? [])],
    },
  ]);
  const row = r!.rows[0]!;
  const n = row.n as number;
  if (n === 0) return { rows: 0, next: null };
  await target.batch([insert(table, row.rows as string, false)]);
  const last = JSON.parse(row.last as string) as unknown[];
  return { rows: n, next: n < limit ? null : last.map((v) => String(v)) };
}

/**
 * Inserts rows (JSON text of whole rows) into `table`. A row whose key exists is left alone by the
 * bulk copy (a resumed batch), and replaced when `replace` (the sync: updatable tables only).
 */
function insert(table: TableSpec, rowsJson: string, replace: boolean): Statement {
  const onConflict = replace && table.columns.length > 0 ? `UPDATE SET ${table.columns.map((c) => `${c} = EXCLUDED.${c}`).join(', ')}` : 'NOTHING';
  return {
    text:
      `INSERT INTO ${table.name} SELECT * FROM jsonb_populate_recordset(NULL::${table.name}, $1::text::jsonb) r` +
      (table.parent ? ` WHERE ${table.parent} ` : ' ') +
      `ON CONFLICT (tenant_id, ${keyList(table)}) DO ${onConflict}`,
    values: [rowsJson],
  };
}

/** Deletes the rows of `table` whose keys (as `jsonb_build_array(...)::text`) are listed. */
function deleteKeys(table: TableSpec, tenantId: string, keys: readonly string[]): Statement {
  return { text: `DELETE FROM ${table.name} t ${byKeys(table, 'USING')}`, values: [tenantId, `[${keys.join(',')}]`] };
}

/**
 * The join (`,` in a SELECT, `USING` in a DELETE) and `WHERE` clause matching rows of `t` to a list of keys ($2: a JSON array of key arrays,
 * as `jsonb_build_array(...)` renders them), typed column by column so each key is an index lookup.
 */
function byKeys(table: TableSpec, join: ',' | 'USING'): string {
  const match = table.key.map(([c, type], i) => `t.${c} = (k.v ->> ${i})::${type}`).join(' AND ');
  return `${join} jsonb_array_elements($2::text::jsonb) AS k(v) WHERE t.tenant_id = $1 AND ${match}`;
}

/** Row count and order-independent digest of one table's rows of one collection. */
export interface TableChecksum {
  readonly rows: number;
  readonly digest: string;
}

/** Checksums by `table/collection`: the row count and the sum (mod 2^64) of each row's 64-bit hash. */
export type Checksums = Record<string, TableChecksum>;

/**
 * Checksums of a tenant's data at one placement. The digest is a sum of per-row hashes, so it does
 * not depend on row order or physical layout; a row is hashed whole as its text (every column:
 * data, versions, timestamps, authors; both sides have the same columns in the same order, and
 * timestamps are rendered in UTC), with `hashtextextended`, the 64-bit hash PostgreSQL's hash
 * partitioning relies on, so stable across versions. It runs with writes paused: md5 over the
 * `jsonb` text cost about three times as much.
 */
export async function checksums(scope: ScopedStore, tenantId: string): Promise<Checksums> {
  const [, ...results] = await scope.batch([
    UTC,
    ...COPY_TABLES.map((t) => ({
      text:
        `SELECT ${t.collectionColumn} AS collection, count(*)::bigint AS n, ` +
        '(sum(hashtextextended(r::text, 0)::numeric) % 18446744073709551616)::text AS digest ' +
        `FROM ${t.name} r WHERE tenant_id = $1 GROUP BY 1`,
      values: [tenantId],
    })),
  ]);
  const out: Checksums = {};
  COPY_TABLES.forEach((t, i) => {
    for (const row of results[i]!.rows) out[`${t.name}/${row.collection as string}`] = { rows: Number(row.n), digest: row.digest as string };
  });
  return out;
}

/** The keys on which two checksum sets differ (empty when they agree). */
export function checksumDiff(a: Checksums, b: Checksums): string[] {
  const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
  return [...keys].filter((k) => a[k]?.rows !== b[k]?.rows || a[k]?.digest !== b[k]?.digest).sort();
}

/**
 * Brings `target` in line with `source` for rows changed since they were copied: compares a hash of
 * every row by key on both sides, upserts rows that differ or are missing, deletes rows the source
 * no longer has (children first). Returns how many rows it changed. Run with writes paused, it
 * leaves the two sides identical.
 */
export async function syncChanges(
  source: ScopedStore,
  target: ScopedStore,
  tenantId: string,
  batchSize: number,
  tables: readonly TableSpec[] = COPY_TABLES,
): Promise<number> {
  let changed = 0;
  const stale: Array<{ table: TableSpec; keys: string[] }> = [];
  for (const table of tables) {
    const [src, dst] = await Promise.all([rowHashes(source, tenantId, table), rowHashes(target, tenantId, table)]);
    const differing = [...src.entries()].filter(([k, h]) => dst.get(k) !== h).map(([k]) => k);
    for (let i = 0; i < differing.length; i += batchSize) {
      const keys = differing.slice(i, i + batchSize);
      const [r] = await source.batch([
        {
          text: `SELECT coalesce(jsonb_agg(to_jsonb(t)), '[]')::text AS rows FROM ${table.name} t ${byKeys(table, ',')}`,
          values: [tenantId, `[${keys.join(',')}]`],
        },
      ]);
      const rows = r!.rows[0]!.rows as string;
      await target.batch(table.updatable ? [insert(table, rows, true)] : [deleteKeys(table, tenantId, keys), insert(table, rows, false)]);
      changed += keys.length;
    }
    const gone = [...dst.keys()].filter((k) => !src.has(k));
    if (gone.length > 0) stale.push({ table, keys: gone });
  }
  for (const { table, keys } of stale.reverse()) {
    for (let i = 0; i < keys.length; i += batchSize) {
      const chunk = keys.slice(i, i + batchSize);
      const [r] = await target.batch([deleteKeys(table, tenantId, chunk)]);
      changed += r!.rowCount;
    }
  }
  return changed;
}

async function rowHashes(scope: ScopedStore, tenantId: string, table: TableSpec): Promise<Map<string, string>> {
  const [, r] = await scope.batch([
    UTC,
    {
      text: `SELECT jsonb_build_array(${keyList(table)})::text AS k, md5(to_jsonb(t)::text) AS h FROM ${table.name} t WHERE tenant_id = $1`,
      values: [tenantId],
    },
  ]);
  return new Map(r!.rows.map((row) => [row.k as string, row.h as string]));
}

/** The source's snapshot (`pg_current_snapshot()`), taken before a full sync: what `syncSince` starts from. */
export async function snapshotOf(scope: ScopedStore): Promise<string> {
  const [r] = await scope.batch([{ text: 'SELECT pg_current_snapshot()::text AS s' }]);
  return r!.rows[0]!.s as string;
}

/**
 * The condition (on row `t`) that the row was written by a transaction the snapshot $2 does not
 * see: inserted or updated since. `xmin` is a 32-bit xid; it is widened to the xid8 of the current
 * epoch (the one before when it is ahead of the snapshot's horizon) for `pg_visible_in_snapshot`.
 */
const CHANGED_SINCE =
  "NOT pg_visible_in_snapshot((CASE WHEN ((h.x >> 32) << 32 | t.xmin::text::bigint) > h.x THEN ((h.x >> 32) << 32 | t.xmin::text::bigint) - 4294967296 " +
  'ELSE ((h.x >> 32) << 32 | t.xmin::text::bigint) END)::text::xid8, $2::text::pg_snapshot)';
const HORIZON = '(SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS x) h';

/**
 * Brings `target` in line with `source` for what changed since `snapshot` was taken on the source,
 * after a full `syncChanges` that started from it: the few collection rows in full; records written
 * since (by `xmin`); records deleted since (their ids on both sides); and the unique and index
 * values of every record written or deleted since. Run with writes paused, its cost follows the
 * writes since the snapshot, not the size of the tenant. Returns the rows it changed.
 */
export async function syncSince(source: ScopedStore, target: ScopedStore, tenantId: string, snapshot: string, batchSize: number): Promise<number> {
  const [collections, versions, records, ...values] = COPY_TABLES as [TableSpec, TableSpec, TableSpec, ...TableSpec[]];
  let changed = await syncChanges(source, target, tenantId, batchSize, [collections, versions]);

  // Records written since: whole rows, and their keys for their values below.
  const [, written] = await source.batch([
    UTC,
    {
      text:
        `SELECT coalesce(jsonb_agg(to_jsonb(t) - 'xmin'), '[]')::text AS rows, coalesce(jsonb_agg(jsonb_build_array(t.collection, t.id)), '[]')::text AS keys ` +
        `FROM (SELECT r.*, r.xmin FROM records r WHERE r.tenant_id = $1) t, ${HORIZON} WHERE ${CHANGED_SINCE}`,
      values: [tenantId, snapshot],
    },
  ]);
  const rowsJson = written!.rows[0]!.rows as string;
  const writtenKeys = JSON.parse(written!.rows[0]!.keys as string) as Array<[string, string]>;
  if (writtenKeys.length > 0) await target.batch([insert(records, rowsJson, true)]);
  changed += writtenKeys.length;

  // Records deleted since: on the target only. Deleting them there takes their values along. The
  // target now holds every source record, so equal counts mean nothing was deleted: the ids of
  // both sides are only compared when the counts differ.
  const count = { text: 'SELECT count(*)::bigint AS n FROM records WHERE tenant_id = $1', values: [tenantId] };
  const [[sourceCount], [targetCount]] = await Promise.all([source.batch([count]), target.batch([count])]);
  const deletions = Number(targetCount!.rows[0]!.n) !== Number(sourceCount!.rows[0]!.n);
  const [sourceIds, targetIds] = deletions ? await Promise.all([recordKeys(source, tenantId), recordKeys(target, tenantId)]) : [new Set<string>(), new Set<string>()];
  const gone = [...targetIds].filter((k) => !sourceIds.has(k));
  for (let i = 0; i < gone.length; i += batchSize) {
    const [r] = await target.batch([deleteKeys(records, tenantId, gone.slice(i, i + batchSize))]);
    changed += r!.rowCount;
  }

  // The values of records written since, and any value written since: replaced as a whole.
  const touched = JSON.stringify(writtenKeys);
  for (const table of values) {
    const [, r] = await source.batch([
      UTC,
      {
        text:
          `SELECT coalesce(jsonb_agg(to_jsonb(t) - 'xmin'), '[]')::text AS rows, coalesce(jsonb_agg(jsonb_build_array(${table.key.map(([c]) => `t.${c}`).join(', ')})), '[]')::text AS keys ` +
          `FROM (SELECT v.*, v.xmin FROM ${table.name} v WHERE v.tenant_id = $1) t, ${HORIZON} ` +
          `WHERE ${CHANGED_SINCE} OR (t.collection, t.record_id) IN (SELECT k ->> 0, (k ->> 1)::uuid FROM jsonb_array_elements($3::text::jsonb) k)`,
        values: [tenantId, snapshot, touched],
      },
    ]);
    const keys = (JSON.parse(r!.rows[0]!.keys as string) as unknown[][]).map((k) => JSON.stringify(k));
    await target.batch([
      {
        text: `DELETE FROM ${table.name} t WHERE t.tenant_id = $1 AND (t.collection, t.record_id) IN (SELECT k ->> 0, (k ->> 1)::uuid FROM jsonb_array_elements($2::text::jsonb) k)`,
        values: [tenantId, touched],
      },
      ...(keys.length > 0 ? [deleteKeys(table, tenantId, keys), insert(table, r!.rows[0]!.rows as string, false)] : []),
    ]);
    changed += keys.length;
  }
  return changed;
}

async function recordKeys(scope: ScopedStore, tenantId: string): Promise<Set<string>> {
  const [r] = await scope.batch([{ text: 'SELECT jsonb_build_array(collection, id)::text AS k FROM records WHERE tenant_id = $1', values: [tenantId] }]);
  return new Set(r!.rows.map((row) => row.k as string));
}

/** Row counts of a tenant's tables at one placement (the copy's progress total). */
export async function rowCounts(scope: ScopedStore, tenantId: string): Promise<number> {
  const results = await scope.batch(COPY_TABLES.map((t) => ({ text: `SELECT count(*)::bigint AS n FROM ${t.name} WHERE tenant_id = $1`, values: [tenantId] })));
  return results.reduce((sum, r) => sum + Number(r.rows[0]!.n), 0);
}
