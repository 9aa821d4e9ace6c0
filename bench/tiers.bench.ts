/**
 * The cost of the isolation tiers on real PostgreSQL: how long provisioning a tenant takes on the
 * pool, bridge and silo tiers, and what record reads cost at 1,000 bridge tenants against 1,000
 * pool tenants of the same size, through the real HTTP path, printed side by side in one run.
 *
 *   node --import tsx bench/tiers.bench.ts            # full run (~2 minutes)
 *   node --import tsx bench/tiers.bench.ts --quick    # smoke check (~20 s)
 *
 * Tenants are created through `Bulkhead` itself, one at a time, pool and bridge interleaved so that
 * machine noise hits both alike; silos (a database each) come after, fewer of them. Reads reuse the
 * isolation benchmark's pieces: the product server in a child process (product-server.ts), autocannon
 * here, the runs of the two tiers interleaved A-B-B-A. Every database and role the run makes (silo
 * databases and per-tenant roles included) is dropped at the end, also on an error, Ctrl-C or the
 * time limit. All traffic goes to 127.0.0.1.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { availableParallelism, loadavg } from 'node:os';
import { join } from 'node:path';
import { isDeepStrictEqual, parseArgs } from 'node:util';
import pg from 'pg';
import { generateOperatorToken } from '../src/access/operator-tokens.js';
import { Bulkhead } from '../src/bulkhead.js';
import { DEFAULT_POOL_SIZE, loadConfig } from '../src/config.js';
import type { TierName } from '../src/placement/tier.js';
import { COLLECTION, DEFINITION, createBenchDatabase, recordFields, type BenchDatabase, type Dataset } from './dataset.js';
import { Cleanup, call, cpuDelta, describeServer, load, prime, snapshot, startServer, toMeasurement, type Measurement, type Server } from './isolation.bench.js';
import { benchAdminUrl, benchLog, eachLimit, fmtInt, fmtMs, mean, percentile, positiveInt } from './support.js';

const HELP = `Usage: node --import tsx bench/tiers.bench.ts [options]

  --tenants N        pool tenants and bridge tenants, each (default 1000; --quick: 100)
  --silos N          silo tenants, a database each (default 20; --quick: 3)
  --records N        records per pool and bridge tenant (default 5; --quick: 3)
  --duration S       seconds of each measured read run (default 10; --quick: 3)
  --warmup S         seconds of discarded load before each measured run (default 2; --quick: 1)
  --connections N    concurrent HTTP connections of the load generator (default 20)
  --pool-size N      PostgreSQL connections of each server (BULKHEAD_POOL_SIZE; default: the product's, twice the CPUs, at least 4)
  --rounds N         measured runs per tier, interleaved A-B-B-A (default 2; --quick: 1)
  --max-minutes M    stop, clean up and exit 124 after M minutes (default 30)
  --profile DIR      write a V8 CPU profile of each tier's server into DIR/<tier>/ (node --cpu-prof; the whole
                     server's life, setup and warm-up included; summarize with bench/profile-summary.ts)
  --quick            fewer tenants and short runs: a smoke check, not a measurement
  --help

Environment: BULKHEAD_BENCH_DATABASE_URL, a superuser URL of a PostgreSQL 15+ server on this machine
(default postgres://postgres@127.0.0.1:5432/postgres). Databases bhbench_* and their roles are created and dropped.`;

/** Targets: 1,000 bridge tenants provisioned in under 60 s; bridge reads within 1.3x of pool reads. */
const TARGET_BRIDGE_TENANTS = 1_000;
const TARGET_BRIDGE_SECONDS = 60;
const TARGET_READ_FACTOR = 1.3;
/** As in the isolation benchmark: the product's default pool (unless --pool-size), and its partition count. */
const POOL_SIZE = DEFAULT_POOL_SIZE;
const PARTITIONS = 16;
/** Records and tokens are made this many at a time (setup only, not measured). */
const SETUP_CONCURRENCY = 8;

interface Options {
  readonly adminUrl: string;
  readonly tenants: number;
  readonly silos: number;
  readonly records: number;
  readonly duration: number;
  readonly warmup: number;
  readonly connections: number;
  readonly poolSize: number;
  readonly rounds: number;
  readonly maxMinutes: number;
  readonly quick: boolean;
  /** Where the servers' CPU profiles go (`--profile`); none when absent. */
  readonly profileDir: string | undefined;
}

function parseOptions(): Options {
  const { values } = parseArgs({
    options: {
      tenants: { type: 'string' },
      silos: { type: 'string' },
      records: { type: 'string' },
      duration: { type: 'string' },
      warmup: { type: 'string' },
      connections: { type: 'string' },
      'pool-size': { type: 'string' },
      rounds: { type: 'string' },
      'max-minutes': { type: 'string' },
      profile: { type: 'string' },
      quick: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    console.log(HELP);
    process.exit(0);
  }
  const quick = values.quick === true;
  const adminUrl = benchAdminUrl();
  return {
    adminUrl,
    // Two tenants at least: the sanity check reads one tenant's record with another's token.
    tenants: positiveInt(values.tenants, quick ? 100 : 1_000, 'tenants', 2),
    silos: positiveInt(values.silos, quick ? 3 : 20, 'silos'),
    records: positiveInt(values.records, quick ? 3 : 5, 'records'),
    duration: positiveInt(values.duration, quick ? 3 : 10, 'duration'),
    warmup: positiveInt(values.warmup, quick ? 1 : 2, 'warmup', 0),
    connections: positiveInt(values.connections, 20, 'connections'),
    poolSize: positiveInt(values['pool-size'], POOL_SIZE, 'pool-size'),
    rounds: positiveInt(values.rounds, quick ? 1 : 2, 'rounds'),
    maxMinutes: positiveInt(values['max-minutes'], 30, 'max-minutes'),
    quick,
    profileDir: values.profile,
  };
}

const log = benchLog('tiers');

/**
 * A throw-away database; its `drop` also removes what Bulkhead made around it on the server (silo
 * databases, per-tenant roles: `dropDeploymentObjects` in test/support/deployment.ts).
 */
async function createDeployment(adminUrl: string, poolSize: number, cleanup: Cleanup): Promise<{ db: BenchDatabase; env: Record<string, string> }> {
  const db = await createBenchDatabase(adminUrl);
  cleanup.add(() => dropDeployment(adminUrl, db));
  const env: Record<string, string> = {
    DATABASE_URL: db.url,
    // The audit signing key and witness, and the local KMS state: made for this run, removed with it.
    BULKHEAD_DATA_DIR: db.dataDir,
    BULKHEAD_OPERATOR_TOKEN: generateOperatorToken(),
    BULKHEAD_OWNER_ROLE: db.ownerRole,
    BULKHEAD_APP_ROLE: db.appRole,
    BULKHEAD_PARTITIONS: String(PARTITIONS),
    BULKHEAD_POOL_SIZE: String(poolSize),
    BULKHEAD_JWT_SECRET: randomBytes(32).toString('base64url'),
    BULKHEAD_LOG_LEVEL: 'silent',
  };
  return { db, env };
}

async function dropDeployment(adminUrl: string, db: BenchDatabase): Promise<void> {
  await db.drop();
  const c = new pg.Client({ connectionString: adminUrl });
  await c.connect();
  try {
    const left = await c.query<{ n: number }>(
      "SELECT (SELECT count(*) FROM pg_database WHERE datname LIKE $1 || '%') + (SELECT count(*) FROM pg_roles WHERE rolname LIKE $1 || '%') AS n",
      [db.name],
    );
    if (Number(left.rows[0]!.n) > 0) console.error(`cleanup: ${left.rows[0]!.n} databases or roles named ${db.name}* are left`);
  } finally {
    await c.end();
  }
}

/** `fn` run at most once: the cleanup may reach a step the run already took. */
function once(fn: () => Promise<void>): () => Promise<void> {
  let done: Promise<void> | undefined;
  return () => (done ??= fn());
}


/** The per-tenant times of one tier's provisioning, in ms, in creation order. */
interface Provisioning {
  readonly tier: TierName;
  readonly ms: readonly number[];
}

/** Creates one tenant through `bh` and returns how long `tenants.create` took, in ms. */
async function createTimed(bh: Bulkhead, tier: TierName, i: number, ids: string[]): Promise<number> {
  const t0 = performance.now();
  const tenant = await bh.tenants.create({ slug: `${tier}-${i}`, name: `Bench ${tier} tenant ${i}`, tier }, 'bench');
  const ms = performance.now() - t0;
  if (tenant.tier !== tier) throw new Error(`tenant ${i} was created on the ${tenant.tier} tier, not ${tier}`);
  ids[i] = tenant.id;
  return ms;
}

/**
 * Gives every tenant the bench collection, `records` records through the product's own write
 * path and a `member` token, and lays the records out round-robin (record i belongs to tenant
 * i mod tenants) as `prime` of the isolation benchmark expects.
 */
async function populate(bh: Bulkhead, tenantIds: readonly string[], records: number, env: Record<string, string>): Promise<Dataset> {
  const n = tenantIds.length;
  const tokens: string[] = new Array(n);
  const recordIds: string[] = new Array(n * records);
  const recordTenant = new Uint32Array(n * records);
  const t0 = performance.now();
  await eachLimit(n, SETUP_CONCURRENCY, async (t) => {
    const tenantId = tenantIds[t]!;
    await bh.collections.define(tenantId, COLLECTION, DEFINITION, 'bench');
    for (let k = 0; k < records; k++) {
      const i = k * n + t;
      // The same fields for the same index on both tiers, so the two read the same bytes.
      const record = await bh.records.create({ tenantId, subject: 'bench' }, COLLECTION, recordFields(i));
      recordIds[i] = record.id;
      recordTenant[i] = t;
    }
    tokens[t] = (await bh.mintToken(tenantId, { sub: `bench-user-${t}`, roles: ['member'], ttlSeconds: 6 * 3600 })).token;
  });
  return { tenantIds, tokens, recordIds, recordTenant, serverEnv: env, timings: { populate: (performance.now() - t0) / 1000 } };
}

/** Rows of the placement directory per tier, and catalog size: what the database really holds. */
async function describeDeployment(url: string): Promise<{ placements: Record<string, number>; schemas: number; relations: number; mb: number; poolRecords: number }> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    const p = await c.query<{ tier: string; n: number }>('SELECT tier, count(*)::int AS n FROM bulkhead.placements GROUP BY tier');
    const s = await c.query<{ schemas: number; relations: number; bytes: string; records: number }>(
      "SELECT (SELECT count(*)::int FROM pg_namespace WHERE nspname LIKE 'tenant\\_%') AS schemas, (SELECT count(*)::int FROM pg_class) AS relations, " +
        'pg_database_size(current_database()) AS bytes, (SELECT count(*)::int FROM bulkhead.records) AS records',
    );
    const row = s.rows[0]!;
    return { placements: Object.fromEntries(p.rows.map((r) => [r.tier, r.n])), schemas: row.schemas, relations: row.relations, mb: Number(row.bytes) / 2 ** 20, poolRecords: row.records };
  } finally {
    await c.end();
  }
}

/**
 * Before measuring: each server returns a tenant's own record with the fields it was created
 * with (the same on both tiers), and `404 RECORD_NOT_FOUND` to another tenant's token.
 */
async function sanityCheck(servers: ReadonlyMap<TierName, { server: Server; ds: Dataset }>): Promise<void> {
  const fields: unknown[] = [];
  for (const [tier, { server, ds }] of servers) {
    const headers = (t: number) => ({ authorization: `Bearer ${ds.tokens[t]}` });
    const path = `/v1/collections/${COLLECTION}/records/${ds.recordIds[0]}`;
    const own = await call(server, 'GET', path, headers(0));
    if (own.status !== 200) throw new Error(`sanity check: ${tier} GET of a tenant's own record answered ${own.status}`);
    const other = await call(server, 'GET', path, headers(1));
    if (other.status !== 404 || other.body.code !== 'RECORD_NOT_FOUND') throw new Error(`sanity check: another ${tier} tenant's token read the record (${other.status})`);
    fields.push(own.body.fields);
  }
  if (!fields.every((f) => isDeepStrictEqual(f, fields[0]))) throw new Error('sanity check: the tiers return different fields for the same record');
}

/** Private memory (RssAnon, MB) of the server's PostgreSQL backends: per-backend catalog caches grow with the relations a backend touches. */
async function backendMemoryMb(stats: pg.Client): Promise<number> {
  const r = await stats.query<{ pid: number }>("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'bulkhead'");
  const mbs: number[] = [];
  for (const { pid } of r.rows) {
    try {
      const kb = /RssAnon:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
      if (kb !== undefined) mbs.push(Number(kb) / 1024);
    } catch {
      // The backend exited meanwhile.
    }
  }
  return mbs.length > 0 ? mean(mbs) : NaN;
}

interface ReadRun {
  readonly tier: TierName;
  readonly m: Measurement;
}

async function main(options: Options, cleanup: Cleanup): Promise<void> {
  const started = performance.now();
  const n = options.tenants;
  const header =
    `${await describeServer(options.adminUrl)}, Node ${process.version}, ${availableParallelism()} CPUs\n` +
    `provisioning: ${fmtInt(n)} pool and ${fmtInt(n)} bridge tenants (interleaved), then ${options.silos} silo tenants, ` +
    `one at a time through Bulkhead.tenants.create\n` +
    `reads: ${fmtInt(n)} tenants per tier, ${options.records} records each, one database per tier, ${PARTITIONS} partitions, pg pool of ${options.poolSize}; ` +
    `autocannon ${options.connections} connections, ${options.duration} s runs after ${options.warmup} s warm-up, ${options.rounds} round(s) per tier, A-B-B-A` +
    (options.quick ? '  [--quick: smoke check, not a measurement]' : '');
  log(header.replace(/\n/g, ' | '));

  // 1. Provisioning. Pool and bridge each get a deployment of their own, so each ends up at exactly n tenants.
  const pool = await createDeployment(options.adminUrl, options.poolSize, cleanup);
  const bridge = await createDeployment(options.adminUrl, options.poolSize, cleanup);
  const silo = await createDeployment(options.adminUrl, options.poolSize, cleanup);
  const bhPool = await Bulkhead.open(loadConfig({}, pool.env));
  const closePool = once(() => bhPool.close());
  cleanup.add(closePool);
  const bhBridge = await Bulkhead.open(loadConfig({}, bridge.env));
  const closeBridge = once(() => bhBridge.close());
  cleanup.add(closeBridge);
  const ids: Record<TierName, string[]> = { pool: new Array(n), bridge: new Array(n), silo: new Array(options.silos) };
  const times: Record<TierName, number[]> = { pool: [], bridge: [], silo: [] };
  for (let i = 0; i < n; i++) {
    // Alternate which tier goes first, so neither always follows the other's DDL.
    const order = i % 2 === 0 ? (['pool', 'bridge'] as const) : (['bridge', 'pool'] as const);
    for (const tier of order) times[tier].push(await createTimed(tier === 'pool' ? bhPool : bhBridge, tier, i, ids[tier]));
    if ((i + 1) % Math.max(1, Math.floor(n / 10)) === 0) {
      log(`  ${fmtInt(i + 1)} pool + bridge tenants: pool ${fmtMs(mean(times.pool))} ms, bridge ${fmtMs(mean(times.bridge))} ms mean so far`);
    }
  }
  const bhSilo = await Bulkhead.open(loadConfig({}, silo.env));
  try {
    for (let i = 0; i < options.silos; i++) times.silo.push(await createTimed(bhSilo, 'silo', i, ids.silo));
    log(`  ${options.silos} silo tenants: ${fmtMs(mean(times.silo))} ms mean`);
    // A silo must be usable, not only present: a record goes in and comes back out of the first one.
    const siloTenant = ids.silo[0]!;
    await bhSilo.collections.define(siloTenant, COLLECTION, DEFINITION, 'bench');
    const written = await bhSilo.records.create({ tenantId: siloTenant, subject: 'bench' }, COLLECTION, recordFields(0));
    const read = await bhSilo.records.get(siloTenant, COLLECTION, written.id);
    if (!isDeepStrictEqual(read.fields, written.fields)) throw new Error('sanity check: a silo tenant did not read back its own record');
  } finally {
    await bhSilo.close();
  }
  const provisioning: Provisioning[] = (['pool', 'bridge', 'silo'] as const).map((tier) => ({ tier, ms: times[tier] }));
  const siloDatabases = await (async () => {
    const c = new pg.Client({ connectionString: options.adminUrl });
    await c.connect();
    try {
      const r = await c.query<{ n: number }>("SELECT count(*)::int AS n FROM pg_database WHERE datname LIKE $1 || '\\_s%'", [silo.db.appRole]);
      return r.rows[0]!.n;
    } finally {
      await c.end();
    }
  })();
  if (siloDatabases !== options.silos) throw new Error(`sanity check: ${siloDatabases} silo databases exist, ${options.silos} expected`);
  await dropDeployment(options.adminUrl, silo.db);

  // 2. Data for the reads, through the product's own services, then a settled (analyzed) database.
  log(`populating: collection "${COLLECTION}", ${options.records} records and a token per tenant`);
  const datasets = new Map<TierName, Dataset>();
  for (const [tier, bh, deployment] of [['pool', bhPool, pool], ['bridge', bhBridge, bridge]] as const) {
    const ds = await populate(bh, ids[tier], options.records, deployment.env);
    datasets.set(tier, ds);
    log(`  ${tier}: ${fmtInt(ds.recordIds.length)} records in ${ds.timings.populate!.toFixed(1)} s`);
  }
  // The servers below open their own pools; these must not hold connections meanwhile.
  await closePool();
  await closeBridge();
  const shape = new Map<TierName, Awaited<ReturnType<typeof describeDeployment>>>();
  for (const [tier, deployment] of [['pool', pool], ['bridge', bridge]] as const) {
    const c = new pg.Client({ connectionString: deployment.db.url });
    await c.connect();
    const t0 = performance.now();
    try {
      await c.query('VACUUM ANALYZE');
    } finally {
      await c.end();
    }
    const d = await describeDeployment(deployment.db.url);
    shape.set(tier, d);
    log(`  ${tier}: VACUUM ANALYZE ${((performance.now() - t0) / 1000).toFixed(1)} s; ${d.relations} relations, ${d.schemas} tenant schemas, ${d.mb.toFixed(0)} MB`);
    const expected = tier === 'pool' ? n * options.records : 0;
    if (d.placements[tier] !== n || d.poolRecords !== expected) {
      throw new Error(`sanity check: the ${tier} database places ${JSON.stringify(d.placements)} and holds ${d.poolRecords} pool records`);
    }
  }

  // 3. Reads through HTTP: one product server per tier, each in its own process.
  const servers = new Map<TierName, { server: Server; ds: Dataset; stats: pg.Client; primeSeconds: number }>();
  for (const [tier, deployment] of [['pool', pool], ['bridge', bridge]] as const) {
    // One directory per tier: tsx's loader thread writes a profile of its own next to the main thread's.
    const profile = options.profileDir ? ['--cpu-prof', `--cpu-prof-dir=${join(options.profileDir, tier)}`] : [];
    const server = await startServer('isolated', { ...deployment.env, BULKHEAD_LOG_LEVEL: 'warn' }, profile);
    cleanup.add(() => server.stop());
    const stats = new pg.Client({ connectionString: deployment.db.url, application_name: 'bulkhead-bench' });
    await stats.connect();
    cleanup.add(() => stats.end());
    servers.set(tier, { server, ds: datasets.get(tier)!, stats, primeSeconds: 0 });
  }
  await sanityCheck(servers);
  for (const [tier, s] of servers) {
    s.primeSeconds = await prime(s.server, s.ds);
    log(`  ${tier}: first request of each of the ${fmtInt(n)} tenants (4 at a time) ${s.primeSeconds.toFixed(1)} s`);
  }
  const runs: ReadRun[] = [];
  /** Mean private memory of each tier's backends, after its last measured run. */
  const memory = new Map<TierName, number>();
  for (let round = 0; round < options.rounds; round++) {
    const order = round % 2 === 0 ? (['pool', 'bridge'] as const) : (['bridge', 'pool'] as const);
    for (const tier of order) {
      const { server, ds, stats } = servers.get(tier)!;
      if (options.warmup > 0) await load(server, 'read', ds, options.warmup, options.connections);
      const latencies: number[] = [];
      const before = await snapshot(server, stats);
      const r = await load(server, 'read', ds, options.duration, options.connections, (status, ms) => {
        if (status >= 200 && status < 300) latencies.push(ms);
      });
      // autocannon's histogram keeps whole milliseconds, too coarse for a ratio of 1-3 ms latencies.
      const m = {
        ...toMeasurement(n, 'read', 'isolated', round, r, cpuDelta(before, await snapshot(server, stats))),
        p50: percentile(latencies, 50),
        p99: percentile(latencies, 99),
      };
      runs.push({ tier, m });
      // Right after the tier's own run: its idle connections close after a while (the pool's idle
      // timeout), and a backend opened later has not served the tenants yet.
      memory.set(tier, await backendMemoryMb(stats));
      log(
        `  read ${tier.padEnd(6)} round ${round + 1}: ${fmtInt(m.reqPerSec)} req/s, p50 ${fmtMs(m.p50)} ms, p99 ${fmtMs(m.p99)} ms, ${m.transactions.toFixed(2)} db tx/req, ` +
          `CPU µs/req server ${Math.round(m.cpu.server)} + db ${Math.round(m.cpu.db)} + loadgen ${Math.round(m.cpu.loadgen)}, other CPU ${(100 * m.other).toFixed(0)}%` +
          (m.failed ? `, ${m.failed} FAILED requests` : ''),
      );
    }
  }

  report(options, header, provisioning, shape, servers, memory, runs, (performance.now() - started) / 1000);
}

function report(
  options: Options,
  header: string,
  provisioning: readonly Provisioning[],
  shape: ReadonlyMap<TierName, { relations: number; schemas: number; mb: number }>,
  servers: ReadonlyMap<TierName, { primeSeconds: number }>,
  memory: ReadonlyMap<TierName, number>,
  runs: readonly ReadRun[],
  seconds: number,
): void {
  const lines: string[] = ['', 'Bulkhead tier benchmark', header, ''];
  const table = (rows: string[][], left: number) => {
    const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
    for (const r of rows) lines.push(r.map((c, i) => (i < left ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd());
  };

  lines.push('Provisioning: Bulkhead.tenants.create, one tenant at a time (ms per tenant)');
  const provRows = [['tier', 'tenants', 'mean', 'p50', 'p99', 'max', 'first 10%', 'last 10%', 'total s']];
  for (const { tier, ms } of provisioning) {
    const tenth = Math.max(1, Math.floor(ms.length / 10));
    provRows.push([
      tier,
      fmtInt(ms.length),
      fmtMs(mean(ms)),
      fmtMs(percentile(ms, 50)),
      fmtMs(percentile(ms, 99)),
      fmtMs(Math.max(...ms)),
      fmtMs(mean(ms.slice(0, tenth))),
      fmtMs(mean(ms.slice(-tenth))),
      (ms.reduce((a, b) => a + b, 0) / 1000).toFixed(1),
    ]);
  }
  table(provRows, 1);
  lines.push('first/last 10%: mean of the first and the last tenth created (growth with the number of tenants); silo p99 of few samples is its max.');
  const bridgeMs = provisioning.find((p) => p.tier === 'bridge')!.ms;
  const bridgeTotal = bridgeMs.reduce((a, b) => a + b, 0) / 1000;
  const atTarget = bridgeMs.length === TARGET_BRIDGE_TENANTS ? bridgeTotal : (bridgeTotal / bridgeMs.length) * TARGET_BRIDGE_TENANTS;
  const how = bridgeMs.length === TARGET_BRIDGE_TENANTS ? 'measured' : `extrapolated from ${fmtInt(bridgeMs.length)}`;
  lines.push(
    `${fmtInt(TARGET_BRIDGE_TENANTS)} bridge tenants: ${atTarget.toFixed(1)} s (${how}); target < ${TARGET_BRIDGE_SECONDS} s: ${atTarget < TARGET_BRIDGE_SECONDS ? 'MET' : 'NOT MET'}`,
  );

  lines.push('', `Record reads over HTTP: GET /v1/collections/${COLLECTION}/records/:id, a random record of a random tenant with its token`);
  const readRows = [['tier', 'tenants', 'req/s', 'p50 ms', 'p99 ms', 'db tx/req', 'CPU µs/req: server', 'db', 'loadgen', 'other CPU', 'req/s of each run']];
  const of = (tier: TierName) => runs.filter((r) => r.tier === tier).map((r) => r.m);
  let failures = 0;
  for (const tier of ['pool', 'bridge'] as const) {
    const g = of(tier);
    failures += g.reduce((a, m) => a + m.failed, 0);
    readRows.push([
      tier,
      fmtInt(options.tenants),
      fmtInt(mean(g.map((m) => m.reqPerSec))),
      fmtMs(mean(g.map((m) => m.p50))),
      fmtMs(mean(g.map((m) => m.p99))),
      mean(g.map((m) => m.transactions)).toFixed(2),
      fmtInt(mean(g.map((m) => m.cpu.server))),
      fmtInt(mean(g.map((m) => m.cpu.db))),
      fmtInt(mean(g.map((m) => m.cpu.loadgen))),
      `${(100 * Math.max(...g.map((m) => m.other))).toFixed(0)}%`,
      g.map((m) => fmtInt(m.reqPerSec)).join(' / '),
    ]);
  }
  table(readRows, 1);
  const avg = (tier: TierName, pick: (m: Measurement) => number) => mean(of(tier).map(pick));
  const rps = avg('bridge', (m) => m.reqPerSec) / avg('pool', (m) => m.reqPerSec);
  const p50 = avg('bridge', (m) => m.p50) / avg('pool', (m) => m.p50);
  const p99 = avg('bridge', (m) => m.p99) / avg('pool', (m) => m.p99);
  const verdict = (ok: boolean) => (ok ? 'MET' : 'NOT MET');
  lines.push(
    '',
    'bridge/pool',
    `  throughput  ${rps.toFixed(2)}   (within ${TARGET_READ_FACTOR}x: bridge >= pool/${TARGET_READ_FACTOR} = ${(1 / TARGET_READ_FACTOR).toFixed(2)}: ${verdict(rps >= 1 / TARGET_READ_FACTOR)})`,
    `  p50         ${p50.toFixed(2)}   (within ${TARGET_READ_FACTOR}x: <= ${TARGET_READ_FACTOR}: ${verdict(p50 <= TARGET_READ_FACTOR)})`,
    `  p99         ${p99.toFixed(2)}   (within ${TARGET_READ_FACTOR}x: <= ${TARGET_READ_FACTOR}: ${verdict(p99 <= TARGET_READ_FACTOR)})`,
    '',
    'per tier',
  );
  for (const tier of ['pool', 'bridge'] as const) {
    const s = shape.get(tier)!;
    lines.push(
      `  ${tier.padEnd(7)} first request of each tenant ${servers.get(tier)!.primeSeconds.toFixed(1)} s; database ${s.relations} relations, ` +
        `${s.schemas} tenant schemas, ${s.mb.toFixed(0)} MB; PostgreSQL backend private memory after its last run ${memory.get(tier)!.toFixed(1)} MB each`,
    );
  }
  const loads = runs.map((r) => r.m.load);
  lines.push(
    '',
    'p50/p99: of every successful answer of the measured runs, from the latency autocannon reports per response (not its whole-ms histogram).',
    `CPU µs per req: the server process, its PostgreSQL backends and the load generator, per successful request; other CPU: the highest share ` +
      `of the machine's ${availableParallelism()} CPUs used by anything else during a run; 1-min load average ${Math.min(...loads).toFixed(1)}-${Math.max(...loads).toFixed(1)}.`,
  );
  if (failures > 0) lines.push('', `WARNING: ${failures} requests failed (non-2xx, errors or timeouts); the read numbers above are not valid.`);
  if (options.quick) lines.push('', '--quick: a smoke check with few tenants and short runs; do not quote these numbers.');
  lines.push('', `total ${seconds.toFixed(0)} s`);
  console.log(lines.join('\n'));
  if (failures > 0) process.exitCode = 1;
}

const options = parseOptions();
const cleanup = new Cleanup();
let stopping = false;
const stop = (why: string, code: number) => {
  if (stopping) return;
  stopping = true;
  log(`${why}: stopping servers and dropping the bench databases`);
  void cleanup.run().finally(() => process.exit(code));
};
process.once('SIGINT', () => stop('interrupted', 130));
// The run is bounded by its counts, but a stuck server or lock must not hold the machine forever.
setTimeout(() => stop(`time limit of ${options.maxMinutes} minutes reached`, 124), options.maxMinutes * 60_000).unref();
try {
  await main(options, cleanup);
} catch (error) {
  // After Ctrl-C or the time limit the cleanup closes what the run was using: those errors are expected.
  if (!stopping) console.error(error);
  process.exitCode = 1;
} finally {
  await cleanup.run();
}
