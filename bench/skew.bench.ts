/**
 * Hash-partition skew at 10,000 tenants of random size (issue 3, benchmark): how evenly
 * `PARTITION BY HASH (tenant_id)` over 16 partitions spreads the pool's records when tenant sizes
 * follow a heavy-tailed (log-normal) distribution, against the target max/mean ≤ 1.2.
 *
 *   npm run bench:skew
 *   npm run bench:skew -- --tenants 10000 --mean 150 --sigma 1.5 --seed 1
 *
 * The placement is PostgreSQL's own: a throw-away database gets Bulkhead's schema (migrations, 16
 * partitions), the tenants (UUIDv7 ids from the product's generator) and every one of their records,
 * and the rows per partition are then read back twice: with the product's exact
 * `bulkhead.partition_stats()` (what `GET /v1/partitions` serves) and with an independent
 * `count(*) ... GROUP BY tableoid` as the superuser. The two must agree.
 *
 * Skew has two sources, printed apart: where the hash puts each tenant (tenants per partition;
 * ~625 each here, so about ±4% from chance alone) and how unequal the tenants are (a few large
 * tenants in one partition). A hash cannot fix the second: that is what promoting the largest
 * tenants out of the pool is for, and the run then does it (`--promote N`): it moves the N largest
 * tenants to the bridge tier through the product's tenant moves and counts the pool again.
 *
 * Environment: BULKHEAD_BENCH_DATABASE_URL, a superuser URL of a PostgreSQL 15+ server
 * (default postgres://postgres@127.0.0.1:5432/postgres). The database bhbench_* is dropped at the
 * end, also on error or Ctrl-C.
 */
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { generateOperatorToken } from '../src/access/operator-tokens.js';
import { Bulkhead } from '../src/bulkhead.js';
import { loadConfig } from '../src/config.js';
import { uuidv7 } from '../src/ids.js';
import { skewOf } from '../src/tenancy/health.js';
import { createBenchDatabase } from './dataset.js';
import { benchAdminUrl } from './support.js';

const HELP = `Usage: npm run bench:skew -- [options]

  --tenants N      tenants (default 10000)
  --partitions N   hash partitions (default 16)
  --mean R         mean records per tenant (default 150: 1.5M records at 10,000 tenants)
  --sigma S        log-normal shape: the spread of tenant sizes (default 1.5; 0 = equal sizes)
  --max-rows N     refuse to insert more records than this (default 2000000)
  --seed N         seed of the size generator (default 1)
  --placements N   also place the same sizes under N fresh sets of tenant ids with PostgreSQL's own
                   hash (satisfies_hash_partition, no insert) for the spread of the skew (default 20)
  --promote N      then move the N largest tenants out of the pool to the bridge tier through the
                   product's tenant moves, and measure the pool again (default 20; 0 = skip)
  --help

Environment: BULKHEAD_BENCH_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres).`;

/** The target of issue 3. */
const TARGET_SKEW = 1.2;
/** Tenants per INSERT statement: bounds one statement's parameter and transaction. */
const CHUNK = 500;

interface Options {
  readonly adminUrl: string;
  readonly tenants: number;
  readonly partitions: number;
  readonly mean: number;
  readonly sigma: number;
  readonly maxRows: number;
  readonly seed: number;
  readonly placements: number;
  readonly promote: number;
}

function options(): Options {
  const { values } = parseArgs({
    options: {
      tenants: { type: 'string' },
      partitions: { type: 'string' },
      mean: { type: 'string' },
      sigma: { type: 'string' },
      'max-rows': { type: 'string' },
      seed: { type: 'string' },
      placements: { type: 'string' },
      promote: { type: 'string' },
      help: { type: 'boolean' },
    },
  });
  if (values.help) {
    console.log(HELP);
    process.exit(0);
  }
  const num = (v: string | undefined, fallback: number, name: string, min: number, max: number): number => {
    const n = v === undefined ? fallback : Number(v);
    if (!Number.isFinite(n) || n < min || n > max) throw new Error(`--${name} must be a number from ${min} to ${max}`);
    return n;
  };
  return {
    adminUrl: benchAdminUrl(),
    tenants: Math.floor(num(values.tenants, 10_000, 'tenants', 1, 1_000_000)),
    partitions: Math.floor(num(values.partitions, 16, 'partitions', 1, 1024)),
    mean: num(values.mean, 150, 'mean', 1, 1_000_000),
    sigma: num(values.sigma, 1.5, 'sigma', 0, 4),
    maxRows: Math.floor(num(values['max-rows'], 2_000_000, 'max-rows', 1, 100_000_000)),
    seed: Math.floor(num(values.seed, 1, 'seed', 0, 2 ** 32 - 1)),
    placements: Math.floor(num(values.placements, 20, 'placements', 0, 1000)),
    promote: Math.floor(num(values.promote, 20, 'promote', 0, 1000)),
  };
}

/** mulberry32: a small seeded PRNG, so a run's sizes can be reproduced. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Log-normal tenant sizes with the given mean (mu = ln(mean) - sigma²/2), at least one record each
 * (Box-Muller for the normal draws).
 */
function tenantSizes(o: Options): number[] {
  const random = prng(o.seed);
  const mu = Math.log(o.mean) - (o.sigma * o.sigma) / 2;
  const sizes: number[] = [];
  for (let i = 0; i < o.tenants; i++) {
    const z = Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
    sizes.push(Math.max(1, Math.round(Math.exp(mu + o.sigma * z))));
  }
  return sizes;
}

/**
 * The partition (remainder) PostgreSQL's hash routing gives each id, asked of PostgreSQL itself
 * through `satisfies_hash_partition`, the function behind hash partition constraints.
 */
async function remaindersOf(su: pg.Client, ids: readonly string[], partitions: number): Promise<number[]> {
  const out = new Array<number>(ids.length).fill(-1);
  for (let i = 0; i < ids.length; i += 5_000) {
    const chunk = ids.slice(i, i + 5_000);
    const r = await su.query<{ i: string; r: number }>(
      'SELECT x.i, p.r FROM jsonb_array_elements_text($1::jsonb) WITH ORDINALITY AS x(id, i), generate_series(0, $2::int - 1) AS p(r) ' +
        "WHERE satisfies_hash_partition('bulkhead.records'::regclass, $2::int, p.r, x.id::uuid)",
      [JSON.stringify(chunk), partitions],
    );
    for (const row of r.rows) out[i + Number(row.i) - 1] = row.r;
  }
  if (out.includes(-1)) throw new Error('satisfies_hash_partition placed an id nowhere');
  return out;
}

const fmt = (n: number): string => n.toLocaleString('en-US');
const seconds = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;

async function run(o: Options): Promise<void> {
  const started = performance.now();
  const sizes = tenantSizes(o);
  const total = sizes.reduce((a, b) => a + b, 0);
  if (total > o.maxRows) throw new Error(`the sizes add up to ${fmt(total)} records, above --max-rows ${fmt(o.maxRows)}; lower --mean or --sigma`);
  const sorted = [...sizes].sort((a, b) => a - b);
  console.log(`tenants ${fmt(o.tenants)}, records ${fmt(total)} (log-normal: mean ${o.mean}, sigma ${o.sigma}, seed ${o.seed})`);
  console.log(
    `tenant sizes: min ${fmt(sorted[0]!)}, median ${fmt(sorted[Math.floor(sorted.length / 2)]!)}, p99 ${fmt(sorted[Math.floor(sorted.length * 0.99)]!)}, ` +
      `max ${fmt(sorted[sorted.length - 1]!)} (${((sorted[sorted.length - 1]! / total) * 100).toFixed(2)}% of all records)`,
  );

  const db = await createBenchDatabase(o.adminUrl);
  const dataDir = db.dataDir;

  let bh: Bulkhead | undefined;
  let su: pg.Client | undefined;
  const cleanup = async () => {
    await bh?.close().catch(() => {});
    await su?.end().catch(() => {});
    // Also the bridge roles of promoted tenants and the bridge group, and the data directory.
    await db.drop();
  };
  process.once('SIGINT', () => {
    void cleanup().finally(() => process.exit(130));
  });

  try {
    const config = loadConfig({}, {
      DATABASE_URL: db.url,
      BULKHEAD_DATA_DIR: dataDir,
      BULKHEAD_PARTITIONS: String(o.partitions),
      BULKHEAD_OWNER_ROLE: db.ownerRole,
      BULKHEAD_APP_ROLE: db.appRole,
      BULKHEAD_OPERATOR_TOKEN: generateOperatorToken(),
      BULKHEAD_JWT_SECRET: randomBytes(32).toString('base64url'),
      BULKHEAD_LOG_LEVEL: 'silent',
    });
    bh = await Bulkhead.open(config);
    su = new pg.Client({ connectionString: db.url });
    await su.connect();

    // Tenants, their collection and their records, as the superuser (the registry rows are what
    // the API writes; 10,000 API calls would only add minutes). One transaction per chunk.
    const loadStart = performance.now();
    const ids = sizes.map(() => uuidv7());
    for (let i = 0; i < ids.length; i += CHUNK) {
      const chunk = ids.slice(i, i + CHUNK).map((id, j) => ({ id, slug: `t${i + j}`, n: sizes[i + j]! }));
      const json = JSON.stringify(chunk);
      await su.query('BEGIN');
      await su.query(
        "INSERT INTO bulkhead.tenants (id, slug, name, status, tier, region) SELECT x.id, x.slug, x.slug, 'active', 'pool', 'local' FROM jsonb_to_recordset($1::jsonb) AS x(id uuid, slug text)",
        [json],
      );
      await su.query(
        "INSERT INTO bulkhead.collections (tenant_id, name, version, definition) SELECT x.id, 'items', 1, '{\"fields\":{}}'::jsonb FROM jsonb_to_recordset($1::jsonb) AS x(id uuid)",
        [json],
      );
      await su.query(
        'INSERT INTO bulkhead.records (tenant_id, collection, id, data, schema_version, created_by, updated_by) ' +
          "SELECT x.id, 'items', gen_random_uuid(), jsonb_build_object('n', g), 1, 'bench', 'bench' " +
          'FROM jsonb_to_recordset($1::jsonb) AS x(id uuid, n int), generate_series(1, x.n) AS g',
        [json],
      );
      await su.query('COMMIT');
      if (process.stdout.isTTY) process.stdout.write(`\rloading: ${fmt(Math.min(i + CHUNK, ids.length))} / ${fmt(ids.length)} tenants`);
    }
    if (process.stdout.isTTY) process.stdout.write('\n');
    const loadMs = performance.now() - loadStart;
    await su.query('ANALYZE bulkhead.records');
    // The tenants were written as the superuser: give them their directory entries (pool).
    await bh.placements.backfill();

    // Where PostgreSQL put each tenant, and the independent count per partition.
    const placement = await su.query<{ part: string; tenants: number; n: number }>(
      'SELECT tableoid::regclass::text AS part, count(DISTINCT tenant_id)::int AS tenants, count(*)::int AS n FROM bulkhead.records GROUP BY 1',
    );
    const independent = new Map(placement.rows.map((r) => [r.part.replace(/^bulkhead\./, ''), r]));

    // What the product reports (GET /v1/partitions), timed: an exact count over the whole pool,
    // next to the same count as the superuser (no RLS) for the cost of counting through the policies.
    const statsStart = performance.now();
    const health = await bh.health.partitions();
    const statsMs = performance.now() - statsStart;
    const plainStart = performance.now();
    await su.query('SELECT tableoid, count(*) FROM bulkhead.records GROUP BY 1');
    const plainMs = performance.now() - plainStart;

    console.log('');
    console.log('PARTITION     TENANTS     ROWS   ROWS/MEAN     BYTES');
    for (const p of health.partitions) {
      const check = independent.get(p.name);
      if ((check?.n ?? 0) !== p.rows) throw new Error(`${p.name}: partition_stats() says ${p.rows} rows, count(*) says ${check?.n ?? 0}`);
      console.log(
        `${p.name.padEnd(12)} ${String(check?.tenants ?? 0).padStart(8)} ${fmt(p.rows).padStart(9)} ${(p.rows / health.meanRows).toFixed(3).padStart(11)} ` +
          `${(p.bytes / 1024 / 1024).toFixed(1).padStart(7)} MiB`,
      );
    }
    if (health.totalRows !== total) throw new Error(`partition_stats() counts ${health.totalRows} records, ${total} were inserted`);
    const tenantsSkew = skewOf(health.partitions.map((p) => independent.get(p.name)?.tenants ?? 0));
    const skew = health.skew ?? Number.NaN;

    console.log('');
    console.log(`records per partition: mean ${fmt(Math.round(health.meanRows))}, max ${fmt(health.maxRows)}, min ${fmt(Math.min(...health.partitions.map((p) => p.rows)))}`);
    console.log(`tenants per partition: max/mean ${tenantsSkew?.toFixed(3)} (the hash's placement alone)`);
    console.log(`partition_stats() agrees with count(*) on every partition; it took ${seconds(statsMs)} over ${fmt(total)} records (the superuser's count: ${seconds(plainMs)})`);
    console.log(`load ${seconds(loadMs)}, whole run ${seconds(performance.now() - started)}`);
    // The same placement predicted without inserting: checks the method the spread below relies on.
    const predicted = await remaindersOf(su, ids, o.partitions);
    const predictedRows = new Array<number>(o.partitions).fill(0);
    predicted.forEach((r, i) => (predictedRows[r]! += sizes[i]!));
    for (const p of health.partitions) {
      if (predictedRows[p.remainder] !== p.rows) throw new Error(`${p.name}: satisfies_hash_partition predicts ${predictedRows[p.remainder]} rows, ${p.rows} were counted`);
    }
    // What promoting the largest tenants out of the pool would leave behind (same placement).
    const bySize = sizes.map((n, i) => i).sort((x, y) => sizes[y]! - sizes[x]!);
    for (const promoted of [10, 100]) {
      if (promoted >= sizes.length) continue;
      const gone = new Set(bySize.slice(0, promoted));
      const rows = new Array<number>(o.partitions).fill(0);
      predicted.forEach((r, i) => {
        if (!gone.has(i)) rows[r]! += sizes[i]!;
      });
      const moved = bySize.slice(0, promoted).reduce((a, i) => a + sizes[i]!, 0);
      console.log(`without the ${promoted} largest tenants (${((moved / total) * 100).toFixed(1)}% of the records) promoted out of the pool: max/mean ${skewOf(rows)!.toFixed(3)}`);
    }
    // One placement is one draw: the verdict is on the median over this run and the others, with the count shown.
    const skews = [skew];
    // The same placements with the --promote largest tenants gone from the pool.
    const promotedSet = new Set(bySize.slice(0, o.promote));
    const withoutLargest = (remainders: readonly number[]): number => {
      const rows = new Array<number>(o.partitions).fill(0);
      remainders.forEach((r, i) => {
        if (!promotedSet.has(i)) rows[r]! += sizes[i]!;
      });
      return skewOf(rows)!;
    };
    const skewsPromoted = [withoutLargest(predicted)];
    for (let k = 0; k < o.placements; k++) {
      const remainders = await remaindersOf(su, sizes.map(() => uuidv7()), o.partitions);
      const rows = new Array<number>(o.partitions).fill(0);
      remainders.forEach((r, i) => (rows[r]! += sizes[i]!));
      skews.push(skewOf(rows)!);
      skewsPromoted.push(withoutLargest(remainders));
    }
    const ordered = [...skews].sort((a, b) => a - b);
    const median = ordered.length % 2 === 1 ? ordered[(ordered.length - 1) / 2]! : (ordered[ordered.length / 2 - 1]! + ordered[ordered.length / 2]!) / 2;
    const met = skews.filter((x) => x <= TARGET_SKEW).length;
    if (o.placements > 0) {
      console.log(
        `max/mean of this run and of the same sizes under ${o.placements} other sets of tenant ids ` +
          `(satisfies_hash_partition, checked against the insert above), sorted: ${ordered.map((x) => x.toFixed(3)).join(' ')}`,
      );
    }

    console.log('');
    console.log(`max/mean rows per partition: ${skew.toFixed(3)} in this run; median ${median.toFixed(3)} over ${skews.length} placements`);
    console.log(`target max/mean <= ${TARGET_SKEW}: ${median <= TARGET_SKEW ? 'met' : 'NOT met'} (met by ${met} of ${skews.length} placements)`);

    if (o.promote > 0) {
      // Promotion for real: the product's tenant moves take the largest tenants out of the pool
      // (pool -> bridge, checksums verified), then the pool is counted again.
      const promoteStart = performance.now();
      let movedRows = 0;
      for (const i of bySize.slice(0, o.promote)) {
        const move = await bh.moveTenant(ids[i]!, { tier: 'bridge' }, 'operator:bench');
        await bh.moves.wait(move.id);
        const end = await bh.moves.get(ids[i]!, move.id);
        if (end.state !== 'done') throw new Error(`the move of a promoted tenant ended ${end.state}: ${end.error}`);
        movedRows += sizes[i]!;
        if (process.stdout.isTTY) process.stdout.write(`\rpromoting: ${bySize.indexOf(i) + 1} / ${o.promote}`);
      }
      if (process.stdout.isTTY) process.stdout.write('\n');
      const after = await bh.health.partitions();
      if (after.totalRows !== total - movedRows) throw new Error(`the pool holds ${after.totalRows} records after promotion, expected ${total - movedRows}`);
      const orderedP = [...skewsPromoted].sort((a, b) => a - b);
      const medianP = orderedP.length % 2 === 1 ? orderedP[(orderedP.length - 1) / 2]! : (orderedP[orderedP.length / 2 - 1]! + orderedP[orderedP.length / 2]!) / 2;
      const metP = skewsPromoted.filter((x) => x <= TARGET_SKEW).length;
      console.log('');
      console.log(
        `promoted the ${o.promote} largest tenants (${((movedRows / total) * 100).toFixed(1)}% of the records) to the bridge tier through tenant moves ` +
          `in ${seconds(performance.now() - promoteStart)}; the pool now holds ${fmt(after.totalRows)} records`,
      );
      console.log(`max/mean rows per partition after promotion: ${after.skew!.toFixed(3)} measured (predicted ${skewsPromoted[0]!.toFixed(3)}); median ${medianP.toFixed(3)} over ${skewsPromoted.length} placements`);
      console.log(`target max/mean <= ${TARGET_SKEW} with the largest tenants promoted: ${medianP <= TARGET_SKEW ? 'met' : 'NOT met'} (met by ${metP} of ${skewsPromoted.length} placements)`);
    }
  } finally {
    await cleanup();
  }
}

await run(options());
