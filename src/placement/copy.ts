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

/** Checksums by `table/collection`: the row count and the sum (mod 2^64) of each row's MD5 prefix. */
export type Checksums = Record<string, TableChecksum>;

/**
 * Checksums of a tenant's data at one placement. The digest is a sum of per-row hashes, so it does
 * not depend on row order or physical layout; a row is hashed as its canonical `jsonb` text, so
 * every column (data, versions, timestamps, authors) is covered.
 */
export async function checksums(scope: ScopedStore, tenantId: string): Promise<Checksums> {
  const [, ...results] = await scope.batch([
    UTC,
    ...COPY_TABLES.map((t) => ({
      text:
        `SELECT ${t.collectionColumn} AS collection, count(*)::bigint AS n, ` +
        "(sum(('x' || substr(md5(to_jsonb(r)::text), 1, 15))::bit(60)::bigint::numeric) % 18446744073709551616)::text AS digest " +
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
export async function syncChanges(source: ScopedStore, target: ScopedStore, tenantId: string, batchSize: number): Promise<number> {
  let changed = 0;
  const stale: Array<{ table: TableSpec; keys: string[] }> = [];
  for (const table of COPY_TABLES) {
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

/** Row counts of a tenant's tables at one placement (the copy's progress total). */
export async function rowCounts(scope: ScopedStore, tenantId: string): Promise<number> {
  const results = await scope.batch(COPY_TABLES.map((t) => ({ text: `SELECT count(*)::bigint AS n FROM ${t.name} WHERE tenant_id = $1`, values: [tenantId] })));
  return results.reduce((sum, r) => sum + Number(r.rows[0]!.n), 0);
}
