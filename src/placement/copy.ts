import type { Statement, StatementResult } from '../store/engine.js';
import type { ScopedStore } from '../store/store.js';
import { consumeChanges, loggedKeys, ownerBatch, readChanges, type CaptureSite, type LoggedChange } from './capture.js';

/**
 * Copying one tenant's rows between two placements and comparing the two sides. The copy goes
 * table by table in key order (a batch of records with their unique and index values); rows
 * travel as one JSON text per table and batch (`json_agg` on the source, `jsonb_populate_recordset`
 * on the target), so a batch is one statement on each side whatever its size and no row is parsed
 * in JavaScript. What is written meanwhile is named by the source's change log (capture.ts) and
 * copied again by record; the switch compares checksums taken from a base and what was copied
 * since (`switchSync`). Every statement on the data runs in the tenant's own scope on both sides,
 * so RLS applies to the copy as to any request; only the change log, and the base that joins it,
 * are read as the source's owner, still in the tenant's context.
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

/**
 * Where the time under a move's pause went, in ms per step (steps run in parallel overlap). Kept
 * in the move's progress, so a slow switch can be explained after the fact.
 */
export type StepTimes = Record<string, number>;

/** Runs `fn`, adding its duration to `times[name]` when `times` is given. */
export async function timed<T>(times: StepTimes | undefined, name: string, fn: () => Promise<T>): Promise<T> {
  if (!times) return fn();
  const start = performance.now();
  try {
    return await fn();
  } finally {
    times[name] = Math.round((times[name] ?? 0) + performance.now() - start);
  }
}

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

/** A batch read for the copy: its rows per table as JSON text, how many in all, and the key of its last row (null: the table is done). */
export interface ReadBatch {
  readonly parts: ReadonlyArray<{ readonly table: TableSpec; readonly json: string; readonly rows: number }>;
  readonly rows: number;
  readonly next: Cursor;
}

/**
 * For the copy's reads of the next rows after a cursor: a walk of the key's index in order, which
 * stops after the batch. On a source whose statistics lag behind a bulk load (a tenant loaded and
 * moved at once), the planner instead read every row after the cursor and sorted them: 23 ms
 * against 2 ms for 2,000 of 20,000 records, and growing with the rows left. (`jit` off: the costs
 * of disabled plans would otherwise pass its threshold, and compiling cost ~100 ms a statement.)
 */
const KEY_ORDER = {
  text:
    "SELECT set_config('enable_sort', 'off', true), set_config('enable_bitmapscan', 'off', true), " +
    "set_config('enable_seqscan', 'off', true), set_config('jit', 'off', true)",
};

/** Whether the copy carries `table`'s rows with their records (`readBatch` with `withValues`): the unique and index values. */
export function copiedWithRecords(table: TableSpec): boolean {
  return VALUES.includes(table);
}

/**
 * Reads the next batch of `table` after `cursor` from `source`, in key order. As `json`, not
 * `jsonb`: the target parses it once either way, and building `jsonb` on the source cost about
 * twice as much (5,000 records: 63-77 ms against 136-243 ms, measured under load).
 *
 * With `withValues`, a batch of records comes with the unique and index values of exactly those
 * records, read in the same statement (one snapshot) as a range of the values' index by record,
 * which orders them as the records' key does. The target then gets each record's values in the
 * transaction that inserts the record, so that no value can arrive before its record and the
 * inserts need not look each one up (measured: the lookup was a third of a value's insert); the
 * value tables are not copied on their own.
 */
export async function readBatch(source: ScopedStore, tenantId: string, table: TableSpec, cursor: Cursor, limit: number, withValues = false): Promise<ReadBatch> {
  const keys = keyList(table);
  const params = table.key.map(([, type], i) => `$${i + 3}::${type}`).join(', ');
  const after = cursor ? ` AND (${keys}) > (${params})` : '';
  const values = withValues && table === RECORDS ? VALUES : [];
  const parts = values.map(
    (v, i) =>
      `CROSS JOIN LATERAL (SELECT count(*)::int AS n, coalesce(json_agg(v), '[]')::text AS rows FROM ${v.name} v, e WHERE v.tenant_id = $1` +
      `${cursor ? ` AND (v.collection, v.record_id) > (${params})` : ''} AND (v.collection, v.record_id) <= (e.collection, e.id)) v${i}`,
  );
  const [, r] = await source.batch([
    KEY_ORDER,
    {
      text:
        `WITH b AS MATERIALIZED (SELECT * FROM ${table.name} WHERE tenant_id = $1${after} ORDER BY ${keys} LIMIT $2), ` +
        `e AS (SELECT ${keys} FROM b ORDER BY ${table.key.map(([c]) => `${c} DESC`).join(', ')} LIMIT 1) ` +
        `SELECT t.n, t.rows, (SELECT jsonb_build_array(${keys})::text FROM e) AS last${values.map((_, i) => `, v${i}.n AS n${i}, v${i}.rows AS rows${i}`).join('')} ` +
        `FROM (SELECT count(*)::int AS n, coalesce(json_agg(b ORDER BY ${keys}), '[]')::text AS rows FROM b) t ${parts.join(' ')}`,
      values: [tenantId, limit, ...(cursor ?? [])],
    },
  ]);
  const row = r!.rows[0]!;
  const n = row.n as number;
  if (n === 0) return { parts: [], rows: 0, next: null };
  const out = [{ table, json: row.rows as string, rows: n }, ...values.map((v, i) => ({ table: v, json: row[`rows${i}`] as string, rows: row[`n${i}`] as number }))];
  const last = JSON.parse(row.last as string) as unknown[];
  return { parts: out, rows: out.reduce((sum, p) => sum + p.rows, 0), next: n < limit ? null : last.map((v) => String(v)) };
}

/**
 * Inserts a batch read by `readBatch` into `target`, in one transaction; a row already there is
 * left alone (a resumed batch). Values read with their records need only their collection to be
 * there (their record is inserted first, or was there), checked once per statement.
 */
export async function writeBatch(target: ScopedStore, tenantId: string, batch: ReadBatch): Promise<void> {
  const withRecords = batch.parts.some((p) => p.table === RECORDS);
  const statements = batch.parts
    .filter((p) => p.rows > 0)
    .map((p) =>
      withRecords && copiedWithRecords(p.table)
        ? {
            text:
              `INSERT INTO ${p.table.name} SELECT * FROM jsonb_populate_recordset(NULL::${p.table.name}, $1::text::jsonb) r ` +
              'WHERE r.collection IN (SELECT name FROM collections WHERE tenant_id = $2) ON CONFLICT DO NOTHING',
            values: [p.json, tenantId],
          }
        : insert(p.table, p.json, false),
    );
  if (statements.length > 0) await target.batch(statements);
}

/** Reads the next batch of `table` after `cursor` from `source` and inserts it into `target` (idempotent). */
export async function copyBatch(source: ScopedStore, target: ScopedStore, tenantId: string, table: TableSpec, cursor: Cursor, limit: number): Promise<CopiedBatch> {
  const batch = await readBatch(source, tenantId, table, cursor, limit);
  await writeBatch(target, tenantId, batch);
  return { rows: batch.rows, next: batch.next };
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

function copyTable(name: string): TableSpec {
  const table = COPY_TABLES.find((t) => t.name === name);
  if (!table) throw new Error(`no copy table ${name}`);
  return table;
}
const RECORDS = copyTable('records');
const VALUES = [copyTable('unique_values'), copyTable('index_values')];
/** The tables whose changes the move's change log names, by record (capture.ts): a record and its values. */
const KEYED_TABLES = [RECORDS, ...VALUES];
/** The small tables (collection definitions, their versions, the tenant's keys): synced and summed whole. */
const WHOLE_TABLES = [copyTable('collections'), copyTable('collection_versions'), copyTable('tenant_keys')];
/** The append-only chains (the audit trail): synced by their tail, summed from a base taken before the pause. */
const CHAIN_TABLES = COPY_TABLES.filter((t) => t.chained);

/** The column of a keyed table that names the record a row belongs to. */
function recordColumn(t: TableSpec): 'id' | 'record_id' {
  return t === RECORDS ? 'id' : 'record_id';
}

/** Record keys (`[collection, id]` JSON texts, as `jsonb_build_array` renders them) as one JSON array. */
function keysJson(keys: readonly string[]): string {
  return `[${keys.join(',')}]`;
}

/**
 * The record keys at $2 (a JSON array of `[collection, id]`) as typed columns `kk.c`, `kk.id`. They
 * are materialized so that the statements below compare the table's columns with plain values: a
 * comparison with `(k ->> 1)::uuid` is not leakproof, and under row-level security PostgreSQL then
 * applies it only after the policy, as a filter over the tenant's rows instead of an index lookup.
 */
const KEYS_CTE = 'kk AS MATERIALIZED (SELECT k ->> 0 AS c, (k ->> 1)::uuid AS id FROM jsonb_array_elements($2::text::jsonb) k)';

/**
 * The rows of table `t` of each record in `kk`, looked up one record at a time through the table's
 * index by record (the records' primary key, the values' `*_record` indexes): the subquery is kept
 * apart (`OFFSET 0`) so that the planner cannot make it a join over the tenant's rows, which it did
 * at a target filled moments before (its statistics still those of an empty table: it hashed or
 * looped over the tenant's 20,000 rows for 400 keys, 2.2 s against 3 ms).
 */
function ofKeys(t: TableSpec, select: string): string {
  return `kk CROSS JOIN LATERAL (SELECT ${select} FROM ${t.name} y WHERE y.tenant_id = $1 AND y.collection = kk.c AND y.${recordColumn(t)} = kk.id OFFSET 0) r`;
}

/** Per record: the checksums of its rows (its own and its values'), by `table/collection`. */
type KeySums = Map<string, Checksums>;

/** The rows of the records named by a list of keys (with their values), per table, and their checksums in all and per record. */
export interface KeyedRows {
  readonly tables: ReadonlyArray<{ readonly table: TableSpec; readonly json: string; readonly rows: number }>;
  readonly sums: Checksums;
  readonly byKey: KeySums;
}

/** Adds one group's count and digest to `into` (mutated); digests are in [0, 2^64), and so is their sum modulo 2^64. */
function addSum(into: Record<string, TableChecksum>, key: string, rows: number, digest: string): void {
  const was = into[key];
  into[key] = was ? { rows: was.rows + rows, digest: ((BigInt(was.digest) + BigInt(digest)) % DIGEST_MODULUS).toString() } : { rows, digest };
}

/**
 * Gathers results grouped per record (`k`, `collection`, `n`, `digest`, and `rows` when asked) into
 * checksums in all and per record, and one JSON array of rows per table.
 */
function gather(tables: readonly TableSpec[], results: readonly StatementResult[]): KeyedRows {
  const sums: Record<string, TableChecksum> = {};
  const byKey: KeySums = new Map();
  const out = tables.map((table, i) => {
    const parts: string[] = [];
    let rows = 0;
    for (const row of results[i]!.rows) {
      const n = Number(row.n);
      const group = `${table.name}/${row.collection as string}`;
      rows += n;
      addSum(sums, group, n, row.digest as string);
      const k = row.k as string;
      const mine = (byKey.get(k) ?? {}) as Record<string, TableChecksum>;
      addSum(mine, group, n, row.digest as string);
      byKey.set(k, mine);
      const json = typeof row.rows === 'string' ? row.rows.slice(1, -1) : '';
      if (json.length > 0) parts.push(json);
    }
    return { table, json: `[${parts.join(',')}]`, rows };
  });
  return { tables: out, sums, byKey };
}

/** The grouping of a keyed statement's rows `r` of `t` per record, with their count and digest. */
function perRecord(t: TableSpec): { select: string; group: string } {
  const rc = recordColumn(t);
  return {
    select: `jsonb_build_array(r.collection, r.${rc})::text AS k, r.collection, count(*)::bigint AS n, ${DIGEST('')} AS digest`,
    group: `GROUP BY r.collection, r.${rc}`,
  };
}

/**
 * Reads the rows of the records named by `keys` (each named once) and of their unique and index
 * values at one placement, with their checksums (each row hashed as `checksums` hashes it); with
 * `withRows` false, the checksums alone. One index lookup per record and table: its cost follows
 * the keys, not the tenant.
 */
async function readKeyed(scope: ScopedStore, tenantId: string, keys: readonly string[], withRows = true): Promise<KeyedRows> {
  if (keys.length === 0) return { tables: KEYED_TABLES.map((table) => ({ table, json: '[]', rows: 0 })), sums: {}, byKey: new Map() };
  const [, ...results] = await scope.batch([
    UTC,
    ...KEYED_TABLES.map((t) => {
      const { select, group } = perRecord(t);
      return {
        text: `WITH ${KEYS_CTE} SELECT ${select}${withRows ? ', json_agg(r)::text AS rows' : ''} FROM ${ofKeys(t, '*')} ${group}`,
        values: [tenantId, keysJson(keys)],
      };
    }),
  ]);
  return gather(KEYED_TABLES, results);
}

/** What `applyKeyed` did at the target. */
interface AppliedKeys {
  /** The checksums of the rows it replaced or removed, per record. */
  readonly removed: KeySums;
  /** The checksums of the rows it put in, in all, and how many per table. */
  readonly added: Checksums;
  readonly inserted: ReadonlyMap<TableSpec, number>;
  /** Whether every row read was put in. */
  readonly complete: boolean;
  readonly changed: number;
}

/**
 * Makes the records named by `keys` at the target what `read` found at the source, in one
 * transaction, and returns the checksums of the rows it replaced (per record) and put in. Values
 * are deleted (by the row ids their index lookups find) and inserted; records are updated in
 * place (an upsert), and deleted only when the source no longer has them: deleting a record
 * costs a cascade check per value table. A row that meets a unique value still held at the
 * target by a record not in `keys`, or whose parent is not there, is left out (`complete` false):
 * that record changed at the source after the log was read, and is named in it again.
 */
async function applyKeyed(target: ScopedStore, tenantId: string, keys: readonly string[], read: KeyedRows): Promise<AppliedKeys> {
  if (keys.length === 0) return { removed: new Map(), added: {}, inserted: new Map(), complete: true, changed: 0 };
  const sums = (cte: string) => `SELECT r.collection, count(*)::bigint AS n, ${DIGEST('')} AS digest FROM ${cte} r GROUP BY 1`;
  const stillRecords = new Set<string>();
  // A record's key is in `byKey` when any of its rows was read; it exists when its record row was.
  const recordRows = read.tables.find((t) => t.table === RECORDS)!;
  if (recordRows.rows > 0) for (const [k, s] of read.byKey) if (Object.keys(s).some((g) => g.startsWith(`${RECORDS.name}/`))) stillRecords.add(k);
  const gone = keys.filter((k) => !stillRecords.has(k));
  const removing = (t: TableSpec) => {
    const { select, group } = perRecord(t);
    return {
      text:
        `WITH ${KEYS_CTE}, d AS (DELETE FROM ${t.name} x WHERE x.tenant_id = $1 AND x.ctid = ANY (ARRAY(SELECT r.ctid FROM ${ofKeys(t, 'y.ctid')})) RETURNING x.*) ` +
        `SELECT ${select} FROM d r ${group}`,
      values: [tenantId, keysJson(keys)],
    };
  };
  const { select, group } = perRecord(RECORDS);
  const statements: Statement[] = [
    ...VALUES.map(removing),
    // The records as they are before this transaction changes them: what the upsert replaces and the delete removes.
    { text: `WITH ${KEYS_CTE} SELECT ${select} FROM ${ofKeys(RECORDS, '*')} ${group}`, values: [tenantId, keysJson(keys)] },
    {
      text: `WITH ${KEYS_CTE} DELETE FROM records x WHERE x.tenant_id = $1 AND x.ctid = ANY (ARRAY(SELECT r.ctid FROM ${ofKeys(RECORDS, 'y.ctid')}))`,
      values: [tenantId, keysJson(gone)],
    },
    { text: `WITH i AS (${insert(RECORDS, recordRows.json, true).text} RETURNING *) ${sums('i')}`, values: [recordRows.json] },
    ...VALUES.map((t) => ({ text: `WITH i AS (${insertRows(t)} ON CONFLICT DO NOTHING RETURNING *) ${sums('i')}`, values: [read.tables.find((x) => x.table === t)!.json] })),
  ];
  const [, ...results] = await target.batch([UTC, ...statements]);
  const removedParts = [results[0]!, results[1]!, results[2]!];
  const removed = gather([...VALUES, RECORDS], removedParts).byKey;
  const addedTables = [RECORDS, ...VALUES];
  const addedResults = [results[4]!, results[5]!, results[6]!];
  const added: Record<string, TableChecksum> = {};
  const inserted = new Map<TableSpec, number>();
  addedTables.forEach((t, i) => {
    let n = 0;
    for (const row of addedResults[i]!.rows) {
      n += Number(row.n);
      addSum(added, `${t.name}/${row.collection as string}`, Number(row.n), row.digest as string);
    }
    inserted.set(t, n);
  });
  const complete = read.tables.every(({ table, rows }) => (inserted.get(table) ?? 0) === rows);
  const removedRows = removedParts.reduce((sum, r) => sum + r.rows.reduce((s, row) => s + Number(row.n), 0), 0);
  return { removed, added, inserted, complete, changed: Math.max(removedRows, [...inserted.values()].reduce((a, b) => a + b, 0)) };
}

/** Log entries read per round trip by a pass. */
const LOG_PAGE = 20_000;

/**
 * What the switch has done since its comparison base (in memory: a switch resumed after a crash
 * takes a new base). Per record copied since: its rows at the target when first replaced (the
 * source's at the base, for a record the log did not name then) and its rows at the source as last
 * read; the records whose last copy was not put in whole; and everything removed from and put in
 * the target. See `switchSync` for how these make both sides' checksums.
 */
export class SwitchState {
  readonly base: SwitchBase;
  readonly #logged: ReadonlySet<string>;
  readonly #firstReplaced = new Set<string>();
  readonly #lastRead = new Map<string, Checksums>();
  readonly #dirty = new Set<string>();
  /** Running totals, kept as chunks are noted so that the pause only adds them up. */
  #before: Checksums = {};
  #now: Checksums = {};
  #removed: Checksums = {};
  #added: Checksums = {};

  constructor(base: SwitchBase) {
    this.base = base;
    this.#logged = new Set(base.logged);
  }

  /** Records to copy again whatever the log says: their last copy was not put in whole. */
  get dirty(): readonly string[] {
    return [...this.#dirty];
  }

  /** Notes one applied chunk: what was read at the source, and what the target had and got. */
  note(keys: readonly string[], read: KeyedRows, applied: AppliedKeys): void {
    for (const k of keys) {
      const removed = applied.removed.get(k) ?? {};
      if (!this.#logged.has(k) && !this.#firstReplaced.has(k)) {
        this.#firstReplaced.add(k);
        this.#before = combine(this.#before, removed);
      }
      const now = read.byKey.get(k) ?? {};
      this.#now = combine(combine(this.#now, this.#lastRead.get(k) ?? {}, true), now);
      this.#lastRead.set(k, now);
      this.#removed = combine(this.#removed, removed);
      if (applied.complete) this.#dirty.delete(k);
      else this.#dirty.add(k);
    }
    this.#added = combine(this.#added, applied.added);
  }

  /**
   * Both sides' checksums of the keyed tables now, once every record written since the base has
   * been copied with writes paused. Source: the base's rows of the records the log did not name,
   * minus what those of them copied since held at the base (their rows at the target when first
   * replaced: the base showed that the two sides then agreed on them), plus every copied record's
   * rows as last read at the source. Target: its base, minus all it had replaced, plus all it got.
   */
  sums(): { source: Checksums; target: Checksums } {
    return {
      source: combine(combine(this.base.source, this.#before, true), this.#now),
      target: combine(combine(this.base.target, this.#removed, true), this.#added),
    };
  }
}

/** What a pass did: the records it copied again, and the rows it changed at the target. */
export interface Pass {
  readonly keys: number;
  readonly rows: number;
}

/**
 * One pass over the change log, with writes going on or paused: every record the log names (and,
 * after the base, any left incomplete before) copied again in chunks of `batchSize` records, each
 * chunk read at the source and put in at the target; its log entries removed once its rows are in
 * whole (`consume`; under the pause nothing needs removing). Noted in `state` after the base. Its
 * cost follows the writes since the last pass, not the tenant's size.
 */
async function logPass(
  site: CaptureSite,
  source: ScopedStore,
  target: ScopedStore,
  tenantId: string,
  batchSize: number,
  state: SwitchState | null,
  consume: boolean,
): Promise<Pass> {
  let rows = 0;
  let keys = 0;
  let after: string | null = null;
  const extra = state?.dirty ?? [];
  for (let page = 0; ; page++) {
    const entries: LoggedChange[] = await readChanges(site, tenantId, after, LOG_PAGE);
    const byKey = new Map<string, string[]>();
    if (page === 0) for (const k of extra) byKey.set(k, []);
    for (const e of entries) {
      const ids = byKey.get(e.key);
      if (ids) ids.push(e.id);
      else byKey.set(e.key, [e.id]);
    }
    const all = [...byKey.keys()];
    for (let i = 0; i < all.length; i += batchSize) {
      const chunk = all.slice(i, i + batchSize);
      const read = await readKeyed(source, tenantId, chunk);
      const applied = await applyKeyed(target, tenantId, chunk, read);
      state?.note(chunk, read, applied);
      rows += applied.changed;
      keys += chunk.length;
      if (consume && applied.complete) await consumeChanges(site, tenantId, chunk.flatMap((k) => byKey.get(k)!));
    }
    if (entries.length < LOG_PAGE) break;
    after = entries[entries.length - 1]!.id;
  }
  return { keys, rows };
}

/**
 * One catch-up pass, with writes going on, before the comparison base: the small tables synced
 * whole, every record the change log names copied again, the chains' tails appended.
 */
export async function catchUp(site: CaptureSite, source: ScopedStore, target: ScopedStore, tenantId: string, batchSize: number): Promise<Pass> {
  const small = await syncChanges(source, target, tenantId, batchSize, WHOLE_TABLES);
  const pass = await logPass(site, source, target, tenantId, batchSize, null, true);
  const tails = await syncTails(source, target, tenantId, batchSize);
  return { keys: pass.keys, rows: small + pass.rows + tails };
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
 * The switch's comparison base, taken with writes going on. At the source, in ONE statement (one
 * snapshot S): the records its change log names then (`logged`, L), and the checksums of the rows
 * of every other record (`source`). At the target, which only the move writes: its whole checksums
 * (`target`) and those of the logged records' rows (`targetLogged`). A record the log does not name
 * at S is at the target as the source had it at S (capture.ts), so the two sides agree on those
 * rows (`agrees`); any change after S is named by the log. Plus the chains' base (`chainBase`).
 */
export interface SwitchBase {
  readonly logged: readonly string[];
  readonly source: Checksums;
  readonly target: Checksums;
  readonly targetLogged: Checksums;
  readonly chains: ChainBase;
  readonly agrees: boolean;
}

/** Takes the switch's comparison base (`SwitchBase`): a pass over the tenant on each side, before the pause. */
export async function switchBase(site: CaptureSite, source: ScopedStore, target: ScopedStore, tenantId: string): Promise<SwitchBase> {
  const [base, whole, chains] = await Promise.all([sourceBase(site, tenantId), checksums(target, tenantId, KEYED_TABLES), chainBase(source, target, tenantId)]);
  const targetLogged = (await readKeyed(target, tenantId, base.logged, false)).sums;
  const agrees = checksumDiff(base.sums, combine(whole, targetLogged, true)).length === 0;
  return { logged: base.logged, source: base.sums, target: whole, targetLogged, chains, agrees };
}

/**
 * The source's side of the base, in one statement as the source's owner (the only role that reads
 * the change log), in the tenant's context: the records the log names, and the checksums of the
 * rows of the other records, by table and collection.
 */
async function sourceBase(site: CaptureSite, tenantId: string): Promise<{ sums: Checksums; logged: string[] }> {
  const branch = (t: TableSpec) =>
    `(SELECT '${t.name}' AS t, r.collection, count(*)::bigint AS n, ${DIGEST('')} AS digest, NULL::text AS keys FROM ${t.name} r ` +
    `WHERE r.tenant_id = $1 AND NOT EXISTS (SELECT 1 FROM l WHERE l.collection = r.collection AND l.record_id = r.${recordColumn(t)}) GROUP BY r.collection)`;
  const [, r] = await ownerBatch(site, tenantId, [
    WHOLE_TENANT,
    {
      text:
        'WITH l AS MATERIALIZED (SELECT DISTINCT collection, record_id FROM bulkhead.move_changes WHERE tenant_id = $1) ' +
        `${KEYED_TABLES.map(branch).join(' UNION ALL ')} UNION ALL ` +
        "(SELECT 'log', NULL, count(*), NULL, coalesce(jsonb_agg(jsonb_build_array(collection, record_id)::text), '[]')::text FROM l)",
      values: [tenantId],
    },
  ]);
  const sums: Checksums = {};
  let logged: string[] = [];
  for (const row of r!.rows) {
    if (row.t === 'log') logged = JSON.parse(row.keys as string) as string[];
    else sums[`${row.t as string}/${row.collection as string}`] = { rows: Number(row.n), digest: row.digest as string };
  }
  return { sums, logged };
}

/**
 * The small tables (collection definitions, their versions, the tenant's keys), compared whole
 * (one round trip per side) and synced only when they differ; returns both sides' checksums after.
 */
async function syncSmall(source: ScopedStore, target: ScopedStore, tenantId: string, batchSize: number): Promise<{ changed: number; source: Checksums; target: Checksums }> {
  const [s, t] = await Promise.all([checksums(source, tenantId, WHOLE_TABLES), checksums(target, tenantId, WHOLE_TABLES)]);
  if (checksumDiff(s, t).length === 0) return { changed: 0, source: s, target: t };
  const changed = await syncChanges(source, target, tenantId, batchSize, WHOLE_TABLES);
  const [s2, t2] = await Promise.all([checksums(source, tenantId, WHOLE_TABLES), checksums(target, tenantId, WHOLE_TABLES)]);
  return { changed, source: s2, target: t2 };
}

/**
 * A pass after the comparison base, with writes going on: the small tables, then every record the
 * change log names copied again and noted in `state`, and the chains' tails (summed from their
 * base at the pause, whatever was appended since), so that the pause finds only what was written
 * during the last such pass.
 */
export async function catchUpSince(site: CaptureSite, source: ScopedStore, target: ScopedStore, tenantId: string, state: SwitchState, batchSize: number): Promise<Pass> {
  const small = await syncChanges(source, target, tenantId, batchSize, WHOLE_TABLES);
  const pass = await logPass(site, source, target, tenantId, batchSize, state, true);
  const tails = await syncTails(source, target, tenantId, batchSize);
  return { keys: pass.keys, rows: small + pass.rows + tails };
}

/** The outcome of the switch's sync: rows changed, records copied under the pause, and both sides' checksums as they are now. */
export interface SwitchSync {
  readonly changed: number;
  readonly keys: number;
  readonly source: Checksums;
  readonly target: Checksums;
}

/**
 * The sync under the pause, with both sides' checksums as they are afterwards. Writes are paused
 * and fenced, so the log now names every record changed since the last pass: those (and any left
 * incomplete) are copied, the rest of what changed since the base was copied by the passes before
 * the pause, and `state` makes the keyed tables' checksums from the base and what was copied
 * (`SwitchState.sums`). Nothing here reads the tenant whole: the work follows the records written
 * since the last pass. The small tables are compared whole and synced if they differ (first: a
 * record needs its collection at the target); the chains get their tails and are summed from their
 * base, meanwhile.
 */
export async function switchSync(
  site: CaptureSite,
  source: ScopedStore,
  target: ScopedStore,
  tenantId: string,
  state: SwitchState,
  batchSize: number,
  times?: StepTimes,
): Promise<SwitchSync> {
  const chains = state.base.chains;
  const [records, tails] = await Promise.all([
    (async () => {
      const small = await timed(times, 'small tables', () => syncSmall(source, target, tenantId, batchSize));
      const pass = await timed(times, 'copy records', () => logPass(site, source, target, tenantId, batchSize, state, false));
      return { small, pass };
    })(),
    timed(times, 'audit tail', async () => {
      const copied = await syncTails(source, target, tenantId, batchSize);
      const [s, t] = await Promise.all([chainSums(source, tenantId, chains.heads, 'after'), chainSums(target, tenantId, chains.heads, 'after')]);
      return { copied, source: s, target: t };
    }),
  ]);
  const keyed = state.sums();
  return {
    changed: records.small.changed + records.pass.rows + tails.copied,
    keys: records.pass.keys,
    source: { ...records.small.source, ...keyed.source, ...combine(chains.source, tails.source) },
    target: { ...records.small.target, ...keyed.target, ...combine(chains.target, tails.target) },
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

/** Row counts of a tenant's tables at one placement (the copy's progress total). */
export async function rowCounts(scope: ScopedStore, tenantId: string): Promise<number> {
  const results = await scope.batch(COPY_TABLES.map((t) => ({ text: `SELECT count(*)::bigint AS n FROM ${t.name} WHERE tenant_id = $1`, values: [tenantId] })));
  return results.reduce((sum, r) => sum + Number(r.rows[0]!.n), 0);
}
