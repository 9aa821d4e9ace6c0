/**
 * Where the isolated read path spends its time, piece by piece, in one process (a profiling aid
 * for isolation.bench.ts, not a target measurement):
 *
 * 1. Node-side costs per call, warm: token verification (cache hit), tenant status (cache hit),
 *    the Cedar decision (cache hit), the collection definition (cache hit), a request id.
 * 2. The database path alone, without HTTP, with 20 concurrent callers on a pool of 10, interleaved:
 *    - `pg` prepared SELECT as the superuser (what the baseline server runs),
 *    - Bulkhead's engine pipeline with the same SELECT and no context statement,
 *    - Bulkhead's `store.tenant(id).batch` (context statement + SELECT, one round trip, RLS as the app role),
 *    - `records.get` (collection cache + the batch above).
 *
 *   node --import tsx bench/path-pieces.ts [--seconds 5] [--tenants 1000] [--records 100000]
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { Bulkhead } from '../src/bulkhead.js';
import { loadConfig } from '../src/config.js';
import { uuidv7 } from '../src/ids.js';
import { PostgresEngine } from '../src/store/postgres/postgres-engine.js';
import { COLLECTION, createBenchDatabase, loadDataset } from './dataset.js';
import { benchAdminUrl, positiveInt } from './support.js';

const { values } = parseArgs({ options: { seconds: { type: 'string' }, tenants: { type: 'string' }, records: { type: 'string' } } });
const seconds = positiveInt(values.seconds, 5, 'seconds');
const tenants = positiveInt(values.tenants, 1000, 'tenants');
const records = positiveInt(values.records, 100_000, 'records');
const adminUrl = benchAdminUrl();
const SELECT = 'SELECT id, data, version, created_at, updated_at FROM bulkhead.records WHERE tenant_id = $1 AND collection = $2 AND id = $3';

/** Mean microseconds per call of `fn` over `n` warm calls. */
async function perCall(n: number, fn: (i: number) => unknown): Promise<number> {
  for (let i = 0; i < Math.min(n, 2_000); i++) await fn(i);
  const t0 = performance.now();
  for (let i = 0; i < n; i++) await fn(i);
  return ((performance.now() - t0) * 1000) / n;
}

/** CPU time (µs) of each PostgreSQL backend connected to the database, from /proc (10 ms ticks). */
async function dbCpuUs(stats: pg.Client): Promise<Map<number, number>> {
  const r = await stats.query<{ pid: number }>('SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()');
  const out = new Map<number, number>();
  for (const { pid } of r.rows) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      out.set(pid, ((Number(fields[11]) + Number(fields[12])) * 1e6) / 100);
    } catch {
      // exited
    }
  }
  return out;
}

/** CPU used by backends between two readings; a backend that closed in between is left out, a new one counts whole. */
function dbDelta(before: Map<number, number>, after: Map<number, number>): number {
  let us = 0;
  for (const [pid, t] of after) us += t - (before.get(pid) ?? 0);
  return us;
}

/** Calls per second of `fn` with `concurrency` callers for `s` seconds, and CPU µs per call in this process and in PostgreSQL. */
async function throughput(s: number, concurrency: number, fn: () => Promise<unknown>, stats?: pg.Client): Promise<{ rate: number; node: number; db: number }> {
  const db0 = stats ? await dbCpuUs(stats) : new Map<number, number>();
  const cpu0 = process.cpuUsage();
  const until = performance.now() + s * 1000;
  let done = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < until) {
        await fn();
        done++;
      }
    }),
  );
  const cpu = process.cpuUsage(cpu0);
  const db = stats ? dbDelta(db0, await dbCpuUs(stats)) : 0;
  return { rate: done / s, node: (cpu.user + cpu.system) / done, db: db / done };
}

const db = await createBenchDatabase(adminUrl);
process.once('SIGINT', () => void db.drop().finally(() => process.exit(130)));
try {
  const ds = await loadDataset(db, { tenants, records, partitions: 16, poolSize: 10, progress: (m) => console.error(m) });
  const bh = await Bulkhead.open(loadConfig({}, { ...ds.serverEnv, BULKHEAD_LOG_LEVEL: 'silent' }));
  const raw = new PostgresEngine({ connectionString: db.url, maxConnections: 10 });
  const pool = new pg.Pool({ connectionString: db.url, max: 10 });
  try {
    const pick = () => {
      const i = Math.floor(Math.random() * ds.recordIds.length);
      return { tenantId: ds.tenantIds[ds.recordTenant[i]!]!, token: ds.tokens[ds.recordTenant[i]!]!, id: ds.recordIds[i]! };
    };
    // Warm every cache for every tenant first (tokens, status, decisions, definitions).
    for (let t = 0; t < ds.tenantIds.length; t++) {
      const p = await bh.authenticate(`Bearer ${ds.tokens[t]}`);
      bh.authorize(p, 'record.read', { tenantId: ds.tenantIds[t]!, collection: COLLECTION });
      await bh.collections.get(ds.tenantIds[t]!, COLLECTION);
    }
    const principal = await bh.authenticate(`Bearer ${ds.tokens[0]}`);
    const n = 50_000;
    const t0 = ds.tenantIds[0]!;
    console.log(`Node-side costs per call (warm, µs; ${n.toLocaleString('en-US')} calls, same tenant):`);
    console.log(`  bh.authenticate (token cache hit + status cache hit): ${(await perCall(n, () => bh.authenticate(`Bearer ${ds.tokens[0]}`))).toFixed(2)}`);
    console.log(`  bh.tenants.status (cache hit):                         ${(await perCall(n, () => bh.tenants.status(t0))).toFixed(2)}`);
    console.log(`  bh.authorize record.read (decision cache hit):        ${(await perCall(n, () => bh.authorize(principal, 'record.read', { tenantId: t0, collection: COLLECTION }))).toFixed(2)}`);
    console.log(`  bh.collections.get (definition cache hit):            ${(await perCall(n, () => bh.collections.get(t0, COLLECTION))).toFixed(2)}`);
    console.log(`  uuidv7 (request id):                                   ${(await perCall(n, () => uuidv7())).toFixed(2)}`);

    console.log(`\nDatabase path without HTTP (20 concurrent callers, pool of 10, ${seconds} s each, interleaved, then in reverse order):`);
    const variants: [string, () => Promise<unknown>][] = [
      ['pg prepared SELECT, superuser (baseline)', () => {
        const r = pick();
        return pool.query({ name: 'get', text: SELECT, values: [r.tenantId, COLLECTION, r.id] });
      }],
      ['engine pipeline, SELECT only, superuser', () => {
        const r = pick();
        return raw.batch([{ name: 'bh_get', text: SELECT, values: [r.tenantId, COLLECTION, r.id] }]);
      }],
      ['store.tenant().batch: context + SELECT, RLS', () => {
        const r = pick();
        return bh.store.tenant(r.tenantId).batch([{ name: 'bh_record_get', text: SELECT, values: [r.tenantId, COLLECTION, r.id] }]);
      }],
      ['records.get (definition cache + the batch)', () => {
        const r = pick();
        return bh.records.get(r.tenantId, COLLECTION, r.id);
      }],
      ['authenticate + authorize + records.get', async () => {
        const r = pick();
        const p = await bh.authenticate(`Bearer ${r.token}`);
        bh.authorize(p, 'record.read', { tenantId: r.tenantId, collection: COLLECTION });
        return bh.records.get(r.tenantId, COLLECTION, r.id);
      }],
    ];
    for (const [, fn] of variants) await throughput(1, 20, fn);
    const stats = new pg.Client({ connectionString: db.url });
    await stats.connect();
    const runs = new Map<string, { rate: number; node: number; db: number }[]>();
    for (const order of [variants, [...variants].reverse()]) {
      for (const [name, fn] of order) {
        runs.set(name, [...(runs.get(name) ?? []), await throughput(seconds, 20, fn, stats)]);
      }
    }
    await stats.end();
    const avg = (name: string, k: 'rate' | 'node' | 'db') => runs.get(name)!.reduce((a, r) => a + r[k], 0) / runs.get(name)!.length;
    const base = avg(variants[0]![0], 'rate');
    console.log(`  ${''.padEnd(44)} ${'calls/s'.padStart(7)}  ratio  Node µs/call  PostgreSQL µs/call`);
    for (const [name] of variants) {
      const r = runs.get(name)!;
      console.log(
        `  ${name.padEnd(44)} ${Math.round(avg(name, 'rate')).toLocaleString('en-US').padStart(7)}  ${(avg(name, 'rate') / base).toFixed(2)}  ` +
          `${avg(name, 'node').toFixed(0).padStart(12)}  ${avg(name, 'db').toFixed(0).padStart(18)}   (${r.map((x) => Math.round(x.rate)).join(' / ')} calls/s)`,
      );
    }
  } finally {
    await pool.end();
    await raw.close();
    await bh.close();
  }
} finally {
  await db.drop();
}
