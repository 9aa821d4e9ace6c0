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
  /**
   * What rows are grouped by in checksums: the column of the collection they belong to (for key
   * rows, their purpose), or a SQL string literal (`'chain'`) for a table whose rows belong to no
   * collection, which then sums as one group.
   */
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
  /**
   * Set for a hash chain (the audit trail): append-only for every role, and each inserted row must
   * follow the row before it (SQLSTATE BHA02). Its rows are therefore inserted in key order, and
   * every sync only appends its tail, the rows after the target's last key: they are never
   * replaced nor deleted (a row that differs at the target fails the move's checksums instead).
   */
  readonly chained?: boolean;
}

const RECORD_EXISTS = 'EXISTS (SELECT 1 FROM records p WHERE p.tenant_id = r.tenant_id AND p.collection = r.collection AND p.id = r.record_id)';

/** The data tables in the order a copy fills them (parents before their children). */
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
  // Last, though it has no parent: a move's progress names tables by their index in this list,
  // and a move persisted before the table existed must resume at the table it was copying.
  {
    name: 'tenant_keys',
    key: [['purpose', 'text'], ['version', 'integer']],
    columns: ['wrapped', 'state', 'reserved', 'created_at', 'retired_at'],
    collectionColumn: 'purpose',
    updatable: true,
  },
  // The tenant's audit chain (migration 8), last for the same reason. Its rows belong to no
  // collection: its checksums are one group, `audit_events/chain`.
  {
    name: 'audit_events',
    key: [['seq', 'bigint']],
    columns: ['prev_hash', 'hash', 'event', 'time'],
    collectionColumn: "'chain'",
    updatable: false,
    chained: true,
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

/**
 * For statements that read every row of the tenant: without it the planner walks the tenant's
 * index to get rows in collection order for grouping, one random heap read per row (measured under
 * the switch's pause: 390 ms against 90 ms for 140,000 records). A bitmap or sequential scan
 * reads the heap in order and groups by hash.
 */
const WHOLE_TENANT = { text: "SELECT set_config('enable_indexscan', 'off', true)" };

/**
 * The hash of a whole row (`r`) and the sum of such hashes, in every checksum: the signed 64-bit
 * hashes are summed and the sum taken into [0, 2^64), so sums can be added and subtracted exactly.
 */
const MODULUS = '18446744073709551616';
const ROW_HASH = 'hashtextextended(r::text, 0)::numeric';
const DIGEST = (filter: string) => `(((coalesce(sum(${ROW_HASH})${filter}, 0) % ${MODULUS}) + ${MODULUS}) % ${MODULUS})::text`;

function keyList(t: TableSpec): string {
  return t.key.map(([c]) => c).join(', ');
}

/** The checksum group of a row of `t` aliased `alias`: its collection column, or the table's literal. */
function groupOf(t: TableSpec, alias: string): string {
  return t.collectionColumn.startsWith("'") ? t.collectionColumn : `${alias}.${t.collectionColumn}`;
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
 * Without `replace`, a row that would break any unique index is left alone too, not only one on
 * the key: a resumed copy can meet a key rotated since the first attempt (its new active version
 * against the old one still active at the target), which the sync then puts in order.
 */
function insert(table: TableSpec, rowsJson: string, replace: boolean): Statement {
  if (!replace || table.columns.length === 0) return { text: `${insertRows(table)} ON CONFLICT DO NOTHING`, values: [rowsJson] };
  const update = `UPDATE SET ${table.columns.map((c) => `${c} = EXCLUDED.${c}`).join(', ')}`;
  return { text: `${insertRows(table)} ON CONFLICT (tenant_id, ${keyList(table)}) DO ${update}`, values: [rowsJson] };
}

/**
 * The rows (JSON text at $1) inserted into `table`, those whose parent is there; a chain's in key
 * order, as its link trigger checks each row against the one before (which it sees once inserted
 * earlier in the same statement).
 */
function insertRows(table: TableSpec): string {
  const where = table.parent ? ` WHERE ${table.parent}` : '';
  const order = table.chained ? ` ORDER BY ${keyList(table)}` : '';
  return `INSERT INTO ${table.name} SELECT * FROM jsonb_populate_recordset(NULL::${table.name}, $1::text::jsonb) r${where}${order}`;
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
export async function checksums(scope: ScopedStore, tenantId: string, tables: readonly TableSpec[] = COPY_TABLES): Promise<Checksums> {
  const [, , ...results] = await scope.batch([
    UTC,
    WHOLE_TENANT,
    ...tables.map((t) => ({
      text:
        `SELECT ${groupOf(t, 'r')} AS collection, count(*)::bigint AS n, ` +
        `${DIGEST('')} AS digest ` +
        `FROM ${t.name} r WHERE tenant_id = $1 GROUP BY 1`,
      values: [tenantId],
    })),
  ]);
  const out: Checksums = {};
  tables.forEach((t, i) => {
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
 * no longer has (children first); a chain gets its tail appended (`syncTail`). Returns how many rows
 * it changed. Run with writes paused, it leaves the two sides identical.
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
    // A chain's rows never change: what it gained is its tail, and a row that differs is left for
    // the checksums to catch (its trigger would refuse to replace or delete it anyway).
    if (table.chained) {
      changed += await syncTail(source, target, tenantId, table, batchSize);
      continue;
    }
    const [src, dst] = await Promise.all([rowHashes(source, tenantId, table), rowHashes(target, tenantId, table)]);
    const differing = [...src.entries()].filter(([k, h]) => dst.get(k) !== h).map(([k]) => k);
    for (let i = 0; i < differing.length; i += batchSize) {
      const keys = differing.slice(i, i + batchSize);
      // In key order: rows are applied in it, so a key retired at the source is retired at the
      // target before its successor arrives as the one active key (tenant_keys_one_active).
      const [r] = await source.batch([
        {
          text: `SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY ${table.key.map(([c]) => `t.${c}`).join(', ')}), '[]')::text AS rows FROM ${table.name} t ${byKeys(table, ',')}`,
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
 * The snapshot $2, read once per statement: `age()` of its horizon (`xmax`, the first xid it does
 * not see) and the xids in progress when it was taken, as 32-bit xids like a row's `xmin`.
 */
const HORIZON =
  '(SELECT age((pg_snapshot_xmax($2::text::pg_snapshot)::text::bigint % 4294967296)::text::xid) AS a, ' +
  'ARRAY(SELECT (x::text::bigint % 4294967296)::text::xid FROM pg_snapshot_xip($2::text::pg_snapshot) x) AS xip) h';

/**
 * The condition (on row `alias`) that the row was written by a transaction the snapshot $2 does
 * not see: inserted or updated since. Its `xmin` is at or past the snapshot's horizon (a smaller
 * `age()`, both ages taken from the same point in one statement) or was in progress when the
 * snapshot was taken. A frozen row's `xmin` has the largest age: unchanged, as it is. Measured
 * here: five times cheaper per row than widening `xmin` to an xid8 for `pg_visible_in_snapshot`,
 * which matters as the switch scans the tenant under the pause.
 */
function changedSince(alias: string): string {
  return `(age(${alias}.xmin) <= h.a OR ${alias}.xmin = ANY (h.xip))`;
}

/** `(collection, <column>)` is one of the record keys in the JSON array bound at `$n`. */
function inRecordKeys(alias: string, column: 'id' | 'record_id', n: number): string {
  return `(${alias}.collection, ${alias}.${column}) IN (SELECT k ->> 0, (k ->> 1)::uuid FROM jsonb_array_elements($${n}::text::jsonb) k)`;
}

/** What changed at the source since a snapshot, read with writes paused or not, to be applied to the target. */
interface SincePlan {
  /** Records written since: whole rows (JSON text) and their keys (`[collection, id]` JSON texts). */
  readonly records: { readonly rows: string; readonly keys: readonly string[] };
  /** Records the target has and the source no longer has (deleted since). */
  readonly gone: readonly string[];
  /** Per value table: the rows to put in place (JSON text), their keys, and the records they belong to. */
  readonly values: ReadonlyArray<{ readonly table: TableSpec; readonly rows: string; readonly keys: readonly string[]; readonly records: readonly string[] }>;
  /**
   * Read in the same scans, by `table/collection`: how many rows did not change since the snapshot,
   * and the checksums of those that did (what `syncAtSwitch` adds to its base).
   */
  readonly unchanged: Readonly<Record<string, number>>;
  readonly changed: Checksums;
}

function copyTable(name: string): TableSpec {
  const table = COPY_TABLES.find((t) => t.name === name);
  if (!table) throw new Error(`no copy table ${name}`);
  return table;
}
const RECORDS = copyTable('records');
const VALUES = [copyTable('unique_values'), copyTable('index_values')];
/** The tables whose changes are found by `xmin`. */
const SINCE_TABLES = [RECORDS, ...VALUES];
/** The small tables (collection definitions, their versions, the tenant's keys): synced and summed whole. */
const WHOLE_TABLES = [copyTable('collections'), copyTable('collection_versions'), copyTable('tenant_keys')];
/** The append-only chains (the audit trail): synced by their tail, summed from a base taken before the pause. */
const CHAIN_TABLES = COPY_TABLES.filter((t) => t.chained);

/** One scan of a table's rows of the tenant, grouped by collection (see `scanSince`). */
interface SinceScan {
  readonly rows: string;
  readonly keys: readonly string[];
  readonly records: readonly string[];
  readonly unchanged: Record<string, number>;
  readonly changed: Checksums;
}

/**
 * Two passes over a table's rows of the tenant, in one batch, per collection: the number of rows;
 * then, of the rows changed since the snapshot $2 or belonging to a record listed in $3, the
 * count and digest of those changed (the row hash taken of the table's own row, as `checksums`
 * does) and all of them as JSON with their keys and records. Measured on 140,000 records: a row
 * hash asked for in the same pass as the counts made the server build every row as a value,
 * changed or not (270 ms against 80 ms); here a row is only built once it passed the filter.
 */
async function scanSince(source: ScopedStore, tenantId: string, table: TableSpec, snapshot: string, touched: string): Promise<SinceScan> {
  const recordColumn = table === RECORDS ? 'id' : 'record_id';
  const [, , totals, r] = await source.batch([
    UTC,
    WHOLE_TENANT,
    { text: `SELECT ${table.collectionColumn} AS collection, count(*)::bigint AS n FROM ${table.name} WHERE tenant_id = $1 GROUP BY 1`, values: [tenantId] },
    {
      text:
        `SELECT r.${table.collectionColumn} AS collection, count(*) FILTER (WHERE c.changed)::bigint AS changed, ` +
        `${DIGEST(' FILTER (WHERE c.changed)')} AS digest, ` +
        "coalesce(jsonb_agg(to_jsonb(r)), '[]')::text AS rows, " +
        `coalesce(jsonb_agg(jsonb_build_array(${table.key.map(([c]) => `r.${c}`).join(', ')})), '[]')::text AS keys, ` +
        `coalesce(jsonb_agg(jsonb_build_array(r.collection, r.${recordColumn})), '[]')::text AS records ` +
        `FROM ${table.name} r CROSS JOIN ${HORIZON} CROSS JOIN LATERAL (SELECT ${changedSince('r')} AS changed) c ` +
        `WHERE r.tenant_id = $1 AND (c.changed OR ${inRecordKeys('r', recordColumn, 3)}) GROUP BY 1`,
      values: [tenantId, snapshot, touched],
    },
  ]);
  const unchanged: Record<string, number> = {};
  for (const row of totals!.rows) unchanged[`${table.name}/${row.collection as string}`] = Number(row.n);
  const changed: Checksums = {};
  const rows: string[] = [];
  const keys: string[] = [];
  const records = new Set<string>();
  const list = (text: unknown) => (JSON.parse(text as string) as unknown[]).map((k) => JSON.stringify(k));
  for (const row of r!.rows) {
    const key = `${table.name}/${row.collection as string}`;
    // Writes are paused when these counts are used: every row is either unchanged or changed.
    unchanged[key] = (unchanged[key] ?? 0) - Number(row.changed);
    if (Number(row.changed) > 0) changed[key] = { rows: Number(row.changed), digest: row.digest as string };
    const json = (row.rows as string).slice(1, -1);
    if (json.length > 0) rows.push(json);
    keys.push(...list(row.keys));
    for (const k of list(row.records)) records.add(k);
  }
  return { rows: `[${rows.join(',')}]`, keys, records: [...records], unchanged, changed };
}

/**
 * Reads what changed at the source since `snapshot`, one scan per table: records written since
 * (by `xmin`); records deleted since; and the unique and index values written since or belonging
 * to a record written since. It reads the target but does not change it.
 */
async function planSince(source: ScopedStore, target: ScopedStore, tenantId: string, snapshot: string): Promise<SincePlan> {
  const records = await scanSince(source, tenantId, RECORDS, snapshot, '[]');
  const touched = `[${records.keys.join(',')}]`;
  // Records deleted since: the target holds every source record but those written since, so
  // when its other records number the source's unchanged ones, nothing was deleted; the ids of
  // both sides are only compared when they do not.
  const sourceUnchanged = Object.values(records.unchanged).reduce((a, b) => a + b, 0);
  const [targetCount, ...values] = await Promise.all([
    target.batch([{ text: `SELECT count(*)::bigint AS n FROM records t WHERE t.tenant_id = $1 AND NOT ${inRecordKeys('t', 'id', 2)}`, values: [tenantId, touched] }]),
    ...VALUES.map((table) => scanSince(source, tenantId, table, snapshot, touched)),
  ]);
  const deletions = Number(targetCount[0]!.rows[0]!.n) !== sourceUnchanged;
  const [sourceIds, targetIds] = deletions ? await Promise.all([recordKeys(source, tenantId), recordKeys(target, tenantId)]) : [new Set<string>(), new Set<string>()];
  const gone = [...targetIds].filter((k) => !sourceIds.has(k));
  return {
    records: { rows: records.rows, keys: records.keys },
    gone,
    values: values.map((v, i) => ({ table: VALUES[i]!, rows: v.rows, keys: v.keys, records: v.records })),
    unchanged: Object.assign({}, records.unchanged, ...values.map((v) => v.unchanged)),
    changed: Object.assign({}, records.changed, ...values.map((v) => v.changed)),
  };
}

/** What `applyPlan` did: rows changed, and the checksums of the rows it removed and of those it put in. */
interface Applied {
  readonly changed: number;
  readonly removed: Checksums;
  readonly added: Checksums;
}

/**
 * Applies a plan to the target in one transaction: removes the values of every record written or
 * deleted since and the values listed, then those records, then inserts the records and values
 * read from the source. Each statement returns the checksums of the rows it removed or added, so
 * the target's checksums can be adjusted without summing it again (see `syncAtSwitch`).
 */
async function applyPlan(target: ScopedStore, tenantId: string, plan: SincePlan): Promise<Applied> {
  const scope = `[${[...new Set([...plan.records.keys, ...plan.gone])].join(',')}]`;
  const sums = (cte: string, table: TableSpec) =>
    `SELECT r.${table.collectionColumn} AS collection, count(*)::bigint AS n, ${DIGEST('')} AS digest FROM ${cte} r GROUP BY 1`;
  const statements: Array<{ table: TableSpec; added: boolean; statement: Statement }> = [
    ...plan.values.map(({ table, keys }) => ({
      table,
      added: false,
      statement: {
        text:
          `WITH d AS (DELETE FROM ${table.name} x WHERE x.tenant_id = $1 AND (${inRecordKeys('x', 'record_id', 2)} OR ` +
          `(${table.key.map(([c]) => `x.${c}`).join(', ')}) IN (SELECT ${table.key.map(([, type], i) => `(k ->> ${i})::${type}`).join(', ')} FROM jsonb_array_elements($3::text::jsonb) k)) ` +
          `RETURNING x.*) ${sums('d', table)}`,
        values: [tenantId, scope, `[${keys.join(',')}]`],
      },
    })),
    {
      table: RECORDS,
      added: false,
      statement: { text: `WITH d AS (DELETE FROM records x WHERE x.tenant_id = $1 AND ${inRecordKeys('x', 'id', 2)} RETURNING x.*) ${sums('d', RECORDS)}`, values: [tenantId, scope] },
    },
    { table: RECORDS, added: true, statement: { text: `WITH i AS (${insertRows(RECORDS)} RETURNING *) ${sums('i', RECORDS)}`, values: [plan.records.rows] } },
    ...plan.values.map(({ table, rows }) => ({
      table,
      added: true,
      statement: { text: `WITH i AS (${insertRows(table)} RETURNING *) ${sums('i', table)}`, values: [rows] },
    })),
  ];
  const [, ...results] = await target.batch([UTC, ...statements.map((s) => s.statement)]);
  const removed: Checksums = {};
  const added: Checksums = {};
  let changed = 0;
  statements.forEach(({ table, added: isAdded }, i) => {
    for (const row of results[i]!.rows) {
      const side = isAdded ? added : removed;
      const key = `${table.name}/${row.collection as string}`;
      // A table's rows of one collection come from one statement per side.
      side[key] = { rows: Number(row.n), digest: row.digest as string };
      if (isAdded) changed += Number(row.n);
    }
  });
  return { changed: changed + plan.gone.length, removed, added };
}

/**
 * Brings `target` in line with `source` for what changed since `snapshot` was taken on the source,
 * after a full `syncChanges` that started from it: the few rows of the small tables in full, then what
 * `planSince` finds. Its cost follows the writes since the snapshot, not the size of the tenant.
 * Returns the rows it changed.
 */
export async function syncSince(source: ScopedStore, target: ScopedStore, tenantId: string, snapshot: string, batchSize: number): Promise<number> {
  const changed = await syncChanges(source, target, tenantId, batchSize, WHOLE_TABLES);
  const plan = await planSince(source, target, tenantId, snapshot);
  const applied = (await applyPlan(target, tenantId, plan)).changed;
  return changed + applied + (await syncTails(source, target, tenantId, batchSize));
}

/** The last key of the tenant's rows of `table` at one placement, or null when it has none. */
async function lastKey(scope: ScopedStore, tenantId: string, table: TableSpec): Promise<Cursor> {
  const [r] = await scope.batch([
    {
      text: `SELECT jsonb_build_array(${keyList(table)})::text AS k FROM ${table.name} WHERE tenant_id = $1 ORDER BY ${table.key.map(([c]) => `${c} DESC`).join(', ')} LIMIT 1`,
      values: [tenantId],
    },
  ]);
  const k = r!.rows[0]?.k as string | undefined;
  return k === undefined ? null : (JSON.parse(k) as unknown[]).map((v) => String(v));
}

/**
 * Appends to the target, in key order, the rows of a chain the source has after the target's last
 * key: all a chain can gain, since its rows never change. Its cost follows the rows appended since
 * the last sync (index range reads), not the length of the chain. Returns the rows copied.
 */
async function syncTail(source: ScopedStore, target: ScopedStore, tenantId: string, table: TableSpec, batchSize: number): Promise<number> {
  let copied = 0;
  let cursor = await lastKey(target, tenantId, table);
  for (;;) {
    const batch = await copyBatch(source, target, tenantId, table, cursor, batchSize);
    copied += batch.rows;
    if (batch.next === null) return copied;
    cursor = batch.next;
  }
}

/** `syncTail` for every chain. */
async function syncTails(source: ScopedStore, target: ScopedStore, tenantId: string, batchSize: number): Promise<number> {
  let copied = 0;
  for (const table of CHAIN_TABLES) copied += await syncTail(source, target, tenantId, table, batchSize);
  return copied;
}

/** The chains at the switch's comparison base: the target's last key in each, and both sides' checksums up to it. */
interface ChainBase {
  readonly heads: readonly Cursor[];
  readonly source: Checksums;
  readonly target: Checksums;
}

/**
 * Checksums of each chain's rows up to (`through`) or after (`after`) its head in `heads` (a null
 * head: no rows up to it, all after it). Range reads on the key: under the pause, `after` reads the
 * few rows appended since the base.
 */
async function chainSums(scope: ScopedStore, tenantId: string, heads: readonly Cursor[], side: 'through' | 'after'): Promise<Checksums> {
  const statements: Statement[] = [];
  const tables: TableSpec[] = [];
  CHAIN_TABLES.forEach((t, i) => {
    const head = heads[i] ?? null;
    if (head === null && side === 'through') return;
    const range = head === null ? '' : ` AND (${keyList(t)}) ${side === 'through' ? '<=' : '>'} (${t.key.map(([, type], j) => `$${j + 2}::${type}`).join(', ')})`;
    tables.push(t);
    statements.push({
      text: `SELECT ${groupOf(t, 'r')} AS collection, count(*)::bigint AS n, ${DIGEST('')} AS digest FROM ${t.name} r WHERE tenant_id = $1${range} GROUP BY 1`,
      values: [tenantId, ...(head ?? [])],
    });
  });
  if (statements.length === 0) return {};
  const [, ...results] = await scope.batch([UTC, ...statements]);
  const out: Checksums = {};
  tables.forEach((t, i) => {
    for (const row of results[i]!.rows) out[`${t.name}/${row.collection as string}`] = { rows: Number(row.n), digest: row.digest as string };
  });
  return out;
}

/**
 * The chains' comparison base, taken with writes going on: a chain's rows up to the target's last
 * key never change on either side (the target has them from the source, and a chain only grows),
 * so the switch only sums what lies after it.
 */
async function chainBase(source: ScopedStore, target: ScopedStore, tenantId: string): Promise<ChainBase> {
  const heads = await Promise.all(CHAIN_TABLES.map((t) => lastKey(target, tenantId, t)));
  const [sourceSums, targetSums] = await Promise.all([chainSums(source, tenantId, heads, 'through'), chainSums(target, tenantId, heads, 'through')]);
  return { heads, source: sourceSums, target: targetSums };
}

/**
 * What the switch compares, taken before writes pause: the checksums of the source's rows that
 * did not change since the snapshot, and the checksums of the whole target (which only the move
 * writes).
 */
export interface PrePause {
  readonly snapshot: string;
  readonly unchanged: Checksums;
  readonly target: Checksums;
  /** The chains' base (see `chainBase`). */
  readonly chains: ChainBase;
}

/**
 * Takes the switch's comparison base with writes still going on: a scan of each side, which the
 * switch then only adjusts for what changed since, so the pause does not scan the tenant.
 */
export async function prePause(source: ScopedStore, target: ScopedStore, tenantId: string, snapshot: string): Promise<PrePause> {
  const [unchanged, full, chains] = await Promise.all([
    unchangedSums(source, tenantId, snapshot),
    checksums(target, tenantId, SINCE_TABLES),
    chainBase(source, target, tenantId),
  ]);
  return { snapshot, unchanged, target: full, chains };
}

/** The outcome of the switch's sync: rows changed, and both sides' checksums as they are now. */
export interface SwitchSync {
  readonly changed: number;
  readonly source: Checksums;
  readonly target: Checksums;
  /** Whether the source's checksums had to be computed over the whole tenant (see `syncAtSwitch`). */
  readonly fullScan: boolean;
}

/**
 * The sync under the pause, with both sides' checksums as they are afterwards, at a cost that
 * follows the writes since the snapshot rather than the tenant's size:
 *
 * - Source: every row either did not change since the snapshot (its `xmin` is visible in it) or
 *   did. Rows unchanged now were unchanged when `pre` was taken (rows do not come back), so when
 *   their count per collection equals `pre`'s, they are the same rows and their sum is `pre`'s;
 *   the changed rows are hashed now. When a count differs (a row unchanged then was deleted or
 *   updated in between), the source is summed in full instead.
 * - Target: only the move writes it. The rows this sync may change are known before it does
 *   (records by key, values by record); their sums are taken before and after the sync and
 *   `pre.target` is adjusted by the difference.
 *
 * - Chains (the audit trail): their tails are appended (`syncTails`), and each side is summed as
 *   `pre.chains` (its rows up to the target's last key then) plus its rows after that key now.
 *
 * The small tables (collections, their versions, the tenant's keys) are synced and summed whole.
 */
export async function syncAtSwitch(source: ScopedStore, target: ScopedStore, tenantId: string, pre: PrePause, batchSize: number): Promise<SwitchSync> {
  const [small, plan, tails] = await Promise.all([
    syncChanges(source, target, tenantId, batchSize, WHOLE_TABLES),
    planSince(source, target, tenantId, pre.snapshot),
    syncTails(source, target, tenantId, batchSize),
  ]);
  const unchangedNow = plan.unchanged;
  const sameUnchanged =
    Object.keys({ ...unchangedNow, ...pre.unchanged }).every((k) => (unchangedNow[k] ?? 0) === (pre.unchanged[k]?.rows ?? 0));

  const applied = await applyPlan(target, tenantId, plan);
  const [sourceSmall, targetSmall, sourceFull, sourceTail, targetTail] = await Promise.all([
    checksums(source, tenantId, WHOLE_TABLES),
    checksums(target, tenantId, WHOLE_TABLES),
    sameUnchanged ? Promise.resolve(null) : checksums(source, tenantId, SINCE_TABLES),
    chainSums(source, tenantId, pre.chains.heads, 'after'),
    chainSums(target, tenantId, pre.chains.heads, 'after'),
  ]);
  return {
    changed: small + applied.changed + tails,
    source: { ...sourceSmall, ...(sourceFull ?? combine(pre.unchanged, plan.changed)), ...combine(pre.chains.source, sourceTail) },
    target: { ...targetSmall, ...combine(combine(pre.target, applied.added), applied.removed, true), ...combine(pre.chains.target, targetTail) },
    fullScan: !sameUnchanged,
  };
}

const DIGEST_MODULUS = BigInt(MODULUS);

/** Adds (or subtracts) checksums key by key: row counts and digests modulo 2^64. Keys left with no rows are dropped. */
function combine(a: Checksums, b: Checksums, subtract = false): Checksums {
  const out: Checksums = {};
  for (const k of new Set([...Object.keys(a), ...Object.keys(b)])) {
    const sign = subtract ? -1n : 1n;
    const rows = (a[k]?.rows ?? 0) + Number(sign) * (b[k]?.rows ?? 0);
    const digest = (((BigInt(a[k]?.digest ?? '0') + sign * BigInt(b[k]?.digest ?? '0')) % DIGEST_MODULUS) + DIGEST_MODULUS) % DIGEST_MODULUS;
    if (rows !== 0 || digest !== 0n) out[k] = { rows, digest: digest.toString() };
  }
  return out;
}

/** Checksums of the source's rows that did not change since the snapshot (by `xmin`, as `scanSince`). */
async function unchangedSums(scope: ScopedStore, tenantId: string, snapshot: string): Promise<Checksums> {
  const [, , ...results] = await scope.batch([
    UTC,
    WHOLE_TENANT,
    ...SINCE_TABLES.map((t) => ({
      text:
        `SELECT r.${t.collectionColumn} AS collection, count(*)::bigint AS n, ${DIGEST('')} AS digest ` +
        `FROM ${t.name} r CROSS JOIN ${HORIZON} WHERE r.tenant_id = $1 AND NOT ${changedSince('r')} GROUP BY 1`,
      values: [tenantId, snapshot],
    })),
  ]);
  const out: Checksums = {};
  SINCE_TABLES.forEach((t, i) => {
    for (const row of results[i]!.rows) out[`${t.name}/${row.collection as string}`] = { rows: Number(row.n), digest: row.digest as string };
  });
  return out;
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
