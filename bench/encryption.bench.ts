/**
 * The API cost of field encryption (issue 4): write and read throughput of a collection whose 5
 * fields are classified pii/phi/confidential (so encrypted by the deployment's default) against
 * the same collection with those fields public, on one deployment, real PostgreSQL, through HTTP.
 * Target: encrypted/plain >= 0.85 (printed as MET / NOT MET, never asserted).
 *
 *   npm run bench:encryption                  # full run (~3 minutes)
 *   npm run bench:encryption -- --quick       # smoke check (~40 s, do not quote)
 *
 * Reuses the isolation benchmark's machinery: a throw-away database (`createBenchDatabase`), the
 * product server in a child process (product-server.ts), autocannon here, A-B-B-A rounds, the CPU
 * accounting, and the cleanup on exit, error and Ctrl-C. The local KMS master key is generated
 * for the run and only ever passed through the environment. All traffic goes to 127.0.0.1.
 */
import { randomBytes } from 'node:crypto';
import { availableParallelism, loadavg } from 'node:os';
import { isDeepStrictEqual, parseArgs } from 'node:util';
import autocannon, { type AutocannonRequest, type AutocannonResult } from 'autocannon';
import pg from 'pg';
import { Bulkhead } from '../src/bulkhead.js';
import { DEFAULT_POOL_SIZE, loadConfig } from '../src/config.js';
import { Cleanup, call, cpuDelta, describeServer, snapshot, startServer, toMeasurement, type Measurement, type Server } from './isolation.bench.js';
import { benchAdminUrl, benchLog, createDeployment, eachLimit, fmtInt, fmtMs, mean, percentile, positiveInt, vacuumAnalyze } from './support.js';

const HELP = `Usage: npm run bench:encryption -- [options]

  --tenants N        tenants, each with both collections (default 100; --quick: 10)
  --records N        records per tenant and collection, made through the API's service (default 30; --quick: 5)
  --duration S       seconds of each measured run (default 8; --quick: 3)
  --warmup S         seconds of discarded load before each measured run (default 2; --quick: 1)
  --connections N    concurrent HTTP connections of the load generator (default 20)
  --rounds N         measured runs per collection and operation, interleaved A-B-B-A (default 2; --quick: 1)
  --max-minutes M    stop, clean up and exit 124 after M minutes (default 20)
  --quick            few tenants and short runs: a smoke check, not a measurement
  --help

Environment: BULKHEAD_BENCH_DATABASE_URL, a superuser URL of a PostgreSQL 15+ server on this machine
(default postgres://postgres@127.0.0.1:5432/postgres). A database bhbench_* and its roles are created and dropped.`;

/** Issue 4: API throughput with encrypted fields at least this share of the same API with them public. */
const TARGET_RATIO = 0.85;
const POOL_SIZE = DEFAULT_POOL_SIZE;
const PARTITIONS = 16;
const SETUP_CONCURRENCY = 8;

/** The two collections: the same six fields, five of them classified (encrypted) in `secret` and public in `plain`. */
type Coll = 'plain' | 'secret';
const COLLS: readonly Coll[] = ['plain', 'secret'];

/** The five measured fields with the classification they get in `secret`; `email` is unique, `age` indexed, in both collections. */
const MEASURED = {
  name: { type: 'string', maxLength: 200, classification: 'pii' },
  email: { type: 'email', unique: true, classification: 'pii' },
  age: { type: 'integer', indexed: true, classification: 'phi' },
  account: { type: 'string', maxLength: 100, classification: 'confidential' },
  note: { type: 'string', maxLength: 500, classification: 'confidential' },
} as const;

function definitionOf(coll: Coll): Record<string, unknown> {
  const fields: Record<string, unknown> = {};
  for (const [name, f] of Object.entries(MEASURED)) fields[name] = { ...f, classification: coll === 'secret' ? f.classification : 'public' };
  fields.status = { type: 'string', maxLength: 20, classification: 'public' };
  return { description: `encryption benchmark, ${coll}`, fields };
}

/** The fields of a record; `key` makes the unique email distinct. Same fields for both collections. */
function fieldsOf(key: string, i: number): Record<string, unknown> {
  return {
    name: `Person ${i} ${key}`,
    email: `${key}@bench.example`,
    age: 18 + (i % 80),
    account: `ACCT-${String(i).padStart(10, '0')}`,
    note: `note ${i}: ${'lorem ipsum '.repeat(3)}`,
    status: i % 2 === 0 ? 'active' : 'inactive',
  };
}

type Op = 'create' | 'get' | 'list';
const OPS: readonly Op[] = ['create', 'get', 'list'];
const OP_LABEL: Record<Op, string> = {
  create: 'POST /v1/collections/:c/records (5 fields + 1)',
  get: 'GET /v1/collections/:c/records/:id',
  list: 'GET /v1/collections/:c/records?filter={"email":{"eq":...}}',
};

interface Options {
  readonly adminUrl: string;
  readonly tenants: number;
  readonly records: number;
  readonly duration: number;
  readonly warmup: number;
  readonly connections: number;
  readonly rounds: number;
  readonly maxMinutes: number;
  readonly quick: boolean;
}

function parseOptions(): Options {
  const { values } = parseArgs({
    options: {
      tenants: { type: 'string' },
      records: { type: 'string' },
      duration: { type: 'string' },
      warmup: { type: 'string' },
      connections: { type: 'string' },
      rounds: { type: 'string' },
      'max-minutes': { type: 'string' },
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
    tenants: positiveInt(values.tenants, quick ? 10 : 100, 'tenants', 2),
    records: positiveInt(values.records, quick ? 5 : 30, 'records'),
    duration: positiveInt(values.duration, quick ? 3 : 8, 'duration'),
    warmup: positiveInt(values.warmup, quick ? 1 : 2, 'warmup', 0),
    connections: positiveInt(values.connections, 20, 'connections'),
    rounds: positiveInt(values.rounds, quick ? 1 : 2, 'rounds'),
    maxMinutes: positiveInt(values['max-minutes'], 20, 'max-minutes'),
    quick,
  };
}

const log = benchLog('encryption');


/** Who the tenants are and which records they hold: record k of tenant t has index k * tenants + t in both collections. */
interface Data {
  readonly tokens: readonly string[];
  readonly ids: Readonly<Record<Coll, string[]>>;
  readonly emails: readonly string[];
  readonly tenants: number;
}

/**
 * Migrates, creates the tenants, both collections and the records through Bulkhead's own services
 * (so every secret value is encrypted exactly as the API would store it), one token per tenant.
 */
async function populate(env: Record<string, string>, options: Options): Promise<Data> {
  const bh = await Bulkhead.open(loadConfig({}, env));
  try {
    const n = options.tenants;
    const total = n * options.records;
    const tokens: string[] = new Array(n);
    const ids: Record<Coll, string[]> = { plain: new Array(total), secret: new Array(total) };
    const emails: string[] = new Array(total);
    await eachLimit(n, SETUP_CONCURRENCY, async (t) => {
      const tenant = await bh.tenants.create({ slug: `enc-${t}`, name: `Encryption bench tenant ${t}` }, 'bench');
      for (const coll of COLLS) await bh.collections.define(tenant.id, coll, definitionOf(coll), 'bench');
      for (let k = 0; k < options.records; k++) {
        const i = k * n + t;
        emails[i] = `r${i}`;
        for (const coll of COLLS) {
          ids[coll][i] = (await bh.records.create({ tenantId: tenant.id, subject: 'bench' }, coll, fieldsOf(`r${i}`, i))).id;
        }
      }
      tokens[t] = (await bh.mintToken(tenant.id, { sub: `bench-user-${t}`, roles: ['member'], ttlSeconds: 6 * 3600 })).token;
    });
    return { tokens, ids, emails: emails.map((e) => `${e}@bench.example`), tenants: n };
  } finally {
    await bh.close();
  }
}

/** Distinct emails for created records across every run of this process (unique per tenant and collection). */
let writeCounter = 0;
const runTag = randomBytes(3).toString('hex');

/** The request of one operation against one collection for record or tenant `i`. */
function requestOf(op: Op, coll: Coll, data: Data, headers: readonly Record<string, string>[]): (req: AutocannonRequest) => AutocannonRequest {
  const records = data.ids[coll].length;
  if (op === 'create') {
    return (req) => {
      const t = Math.floor(Math.random() * data.tenants);
      const c = writeCounter++;
      const body = JSON.stringify({ fields: fieldsOf(`w${runTag}-${c}`, c) });
      return { ...req, method: 'POST', path: `/v1/collections/${coll}/records`, headers: { ...headers[t]!, 'content-type': 'application/json' }, body };
    };
  }
  return (req) => {
    const i = Math.floor(Math.random() * records);
    const t = i % data.tenants;
    const path =
      op === 'get'
        ? `/v1/collections/${coll}/records/${data.ids[coll][i]}`
        : `/v1/collections/${coll}/records?filter=${encodeURIComponent(JSON.stringify({ email: { eq: data.emails[i] } }))}`;
    return { ...req, method: 'GET', path, headers: headers[t]! };
  };
}

function run(server: Server, op: Op, coll: Coll, data: Data, seconds: number, connections: number, onResponse?: (status: number, ms: number) => void): Promise<AutocannonResult> {
  const headers = data.tokens.map((token) => ({ authorization: `Bearer ${token}` }));
  const r = autocannon({ url: server.url, connections, duration: seconds, timeout: 10, requests: [{ setupRequest: requestOf(op, coll, data, headers) }] });
  if (onResponse) r.on('response', (_client, status, _bytes, ms) => onResponse(status, ms));
  return r;
}

/**
 * Before measuring: the same record reads back with the same fields from both collections, by id
 * and by the `eq` filter (exactly one match); another tenant's token gets 404; a create succeeds
 * on both; and the database holds the secret values as ciphertext only, the plain ones as text.
 */
async function sanityCheck(server: Server, data: Data, dbUrl: string): Promise<void> {
  const auth = (t: number) => ({ authorization: `Bearer ${data.tokens[t]}` });
  const got: unknown[] = [];
  for (const coll of COLLS) {
    const own = await call(server, 'GET', `/v1/collections/${coll}/records/${data.ids[coll][0]}`, auth(0));
    if (own.status !== 200) throw new Error(`sanity check: GET ${coll} answered ${own.status}`);
    const other = await call(server, 'GET', `/v1/collections/${coll}/records/${data.ids[coll][0]}`, auth(1));
    if (other.status !== 404 || other.body.code !== 'RECORD_NOT_FOUND') throw new Error(`sanity check: another tenant's token read a ${coll} record (${other.status})`);
    const filter = encodeURIComponent(JSON.stringify({ email: { eq: data.emails[0] } }));
    const list = await call(server, 'GET', `/v1/collections/${coll}/records?filter=${filter}`, auth(0));
    const found = list.body.records as { id: string; fields: unknown }[] | undefined;
    if (list.status !== 200 || found?.length !== 1 || found[0]!.id !== data.ids[coll][0]) {
      throw new Error(`sanity check: the eq filter on ${coll}.email answered ${list.status} with ${found?.length} records`);
    }
    const created = await call(server, 'POST', `/v1/collections/${coll}/records`, { ...auth(0), 'content-type': 'application/json' }, JSON.stringify({ fields: fieldsOf(`sanity-${runTag}`, 0) }));
    if (created.status !== 201) throw new Error(`sanity check: POST ${coll} answered ${created.status}`);
    got.push(own.body.fields);
  }
  if (!isDeepStrictEqual(got[0], got[1])) throw new Error('sanity check: the two collections return different fields for the same record');
  const c = new pg.Client({ connectionString: dbUrl });
  await c.connect();
  try {
    const r = await c.query<{ collection: string; text: string }>('SELECT collection, data::text AS text FROM bulkhead.records WHERE id = ANY($1::uuid[])', [[data.ids.plain[0], data.ids.secret[0]]]);
    for (const row of r.rows) {
      const plaintext = ['name', 'email', 'account'].filter((f) => row.text.includes(String((got[0] as Record<string, unknown>)[f])));
      if (row.collection === 'secret' && plaintext.length > 0) throw new Error(`sanity check: the secret record stores ${plaintext.join(', ')} in plaintext`);
      if (row.collection === 'plain' && plaintext.length !== 3) throw new Error('sanity check: the plain record does not store its values as text');
    }
    if (r.rows.length !== 2) throw new Error('sanity check: the records were not found in bulkhead.records');
  } finally {
    await c.end();
  }
}

/** Each tenant's first request on each collection (tokens, decisions, definitions, data keys cached), 4 at a time. */
async function prime(server: Server, data: Data): Promise<number> {
  const t0 = performance.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: 4 }, async () => {
      while (next < data.tenants) {
        const t = next++;
        for (const coll of COLLS) {
          const r = await call(server, 'GET', `/v1/collections/${coll}/records/${data.ids[coll][t]}`, { authorization: `Bearer ${data.tokens[t]}` });
          if (r.status !== 200) throw new Error(`prime: ${coll} answered ${r.status}`);
        }
      }
    }),
  );
  return (performance.now() - t0) / 1000;
}

interface Run {
  readonly op: Op;
  readonly coll: Coll;
  readonly m: Measurement;
}

async function main(options: Options, cleanup: Cleanup): Promise<void> {
  const started = performance.now();
  const header =
    `${await describeServer(options.adminUrl)}, Node ${process.version}, ${availableParallelism()} CPUs\n` +
    `${fmtInt(options.tenants)} tenants, each with collections "plain" and "secret" (${fmtInt(options.records)} records each): the same 6 fields, ` +
    `5 of them (name, email unique, age indexed, account, note) public in plain and pii/phi/confidential (encrypted) in secret; local KMS\n` +
    `autocannon ${options.connections} connections, ${options.duration} s runs after ${options.warmup} s warm-up, ${options.rounds} round(s) per collection and operation, A-B-B-A; ` +
    `${PARTITIONS} partitions, pg pool of ${POOL_SIZE}` +
    (options.quick ? '  [--quick: smoke check, not a measurement]' : '');
  log(header.replace(/\n/g, ' | '));

  const { db, env } = await createDeployment(options.adminUrl, cleanup, { partitions: PARTITIONS, poolSize: POOL_SIZE });
  log(`database ${db.name}: populating through Bulkhead's services`);
  let t0 = performance.now();
  const data = await populate(env, options);
  const populateSeconds = (performance.now() - t0) / 1000;
  log(`  ${fmtInt(data.tenants)} tenants, ${fmtInt(2 * data.ids.plain.length)} records in ${populateSeconds.toFixed(1)} s`);
  log(`  VACUUM ANALYZE ${(await vacuumAnalyze(db.url)).toFixed(1)} s`);

  const server = await startServer('isolated', { ...env, BULKHEAD_LOG_LEVEL: 'warn' }, []);
  cleanup.add(() => server.stop());
  const stats = new pg.Client({ connectionString: db.url, application_name: 'bulkhead-bench' });
  await stats.connect();
  cleanup.add(() => stats.end());
  await sanityCheck(server, data, db.url);
  const primeSeconds = await prime(server, data);
  log(`  sanity check passed; first request of each tenant on both collections ${primeSeconds.toFixed(1)} s`);

  // Reads first, on the loaded collections; creates last, as they grow the tables (both alike).
  const runs: Run[] = [];
  for (const op of ['get', 'list', 'create'] as const) {
    for (let round = 0; round < options.rounds; round++) {
      const order: readonly Coll[] = round % 2 === 0 ? ['plain', 'secret'] : ['secret', 'plain'];
      for (const coll of order) {
        if (options.warmup > 0) await run(server, op, coll, data, options.warmup, options.connections);
        const latencies: number[] = [];
        const before = await snapshot(server, stats);
        const r = await run(server, op, coll, data, options.duration, options.connections, (status, ms) => {
          if (status >= 200 && status < 300) latencies.push(ms);
        });
        const m = {
          ...toMeasurement(options.tenants, op === 'create' ? 'write' : 'read', 'isolated', round, r, cpuDelta(before, await snapshot(server, stats))),
          // autocannon's histogram keeps whole milliseconds, too coarse for a ratio of 2-5 ms latencies.
          p50: percentile(latencies, 50),
          p99: percentile(latencies, 99),
        };
        runs.push({ op, coll, m });
        log(
          `  ${op.padEnd(6)} ${coll.padEnd(6)} round ${round + 1}: ${fmtInt(m.reqPerSec)} req/s, p50 ${fmtMs(m.p50)} ms, p99 ${fmtMs(m.p99)} ms, ` +
            `CPU µs/req server ${Math.round(m.cpu.server)} + db ${Math.round(m.cpu.db)} + loadgen ${Math.round(m.cpu.loadgen)}, other CPU ${(100 * m.other).toFixed(0)}%, load ${m.load.toFixed(1)}` +
            (m.failed ? `, ${m.failed} FAILED requests` : ''),
        );
      }
    }
  }
  report(options, header, populateSeconds, primeSeconds, runs, (performance.now() - started) / 1000);
}

function report(options: Options, header: string, populateSeconds: number, primeSeconds: number, runs: readonly Run[], seconds: number): void {
  const lines: string[] = ['', 'Bulkhead field encryption benchmark', header, `setup: populate ${populateSeconds.toFixed(1)} s, first request of each tenant ${primeSeconds.toFixed(1)} s`, ''];
  const rows = [['op', 'collection', 'req/s', 'p50 ms', 'p99 ms', 'CPU µs/req: server', 'db', 'loadgen', 'other CPU', 'req/s of each run']];
  const of = (op: Op, coll: Coll) => runs.filter((r) => r.op === op && r.coll === coll).map((r) => r.m);
  let failures = 0;
  for (const op of OPS) {
    for (const coll of COLLS) {
      const g = of(op, coll);
      failures += g.reduce((a, m) => a + m.failed, 0);
      rows.push([
        op,
        coll,
        fmtInt(mean(g.map((m) => m.reqPerSec))),
        fmtMs(mean(g.map((m) => m.p50))),
        fmtMs(mean(g.map((m) => m.p99))),
        fmtInt(mean(g.map((m) => m.cpu.server))),
        fmtInt(mean(g.map((m) => m.cpu.db))),
        fmtInt(mean(g.map((m) => m.cpu.loadgen))),
        `${(100 * Math.max(...g.map((m) => m.other))).toFixed(0)}%`,
        g.map((m) => fmtInt(m.reqPerSec)).join(' / '),
      ]);
    }
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  for (const r of rows) lines.push(r.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd());
  lines.push('', 'operations:', ...OPS.map((op) => `  ${op.padEnd(6)} ${OP_LABEL[op]}`));
  lines.push('', `encrypted/plain (secret over plain)            target: throughput ratio >= ${TARGET_RATIO}`);
  const avg = (op: Op, coll: Coll, pick: (m: Measurement) => number) => mean(of(op, coll).map(pick));
  for (const op of OPS) {
    const rps = avg(op, 'secret', (m) => m.reqPerSec) / avg(op, 'plain', (m) => m.reqPerSec);
    const p50 = avg(op, 'secret', (m) => m.p50) / avg(op, 'plain', (m) => m.p50);
    const p99 = avg(op, 'secret', (m) => m.p99) / avg(op, 'plain', (m) => m.p99);
    lines.push(`  ${op.padEnd(6)} throughput ${rps.toFixed(2)}  p50 ${p50.toFixed(2)}x  p99 ${p99.toFixed(2)}x   ${rps >= TARGET_RATIO ? 'MET' : 'NOT MET'}`);
  }
  const loads = runs.map((r) => r.m.load);
  lines.push(
    '',
    'p50/p99: of every successful answer of the measured runs (autocannon per-response latency). CPU µs per req: the server process, its',
    `PostgreSQL backends and the load generator, per successful request; other CPU: the highest share of the machine's ${availableParallelism()} CPUs used by`,
    `anything else during a run; 1-min load average ${Math.min(...loads).toFixed(1)}-${Math.max(...loads).toFixed(1)}.`,
  );
  if (failures > 0) lines.push('', `WARNING: ${failures} requests failed (non-2xx, errors or timeouts); the numbers above are not valid.`);
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
  log(`${why}: stopping the server and dropping the bench database`);
  void cleanup.run().finally(() => process.exit(code));
};
process.once('SIGINT', () => stop('interrupted', 130));
process.once('SIGTERM', () => stop('terminated', 143));
// Bounded by its counts, but a stuck server or lock must not hold the machine forever.
setTimeout(() => stop(`time limit of ${options.maxMinutes} minutes reached`, 124), options.maxMinutes * 60_000).unref();
try {
  await main(options, cleanup);
} catch (error) {
  if (!stopping) console.error(error);
  process.exitCode = 1;
} finally {
  await cleanup.run();
}
