/**
 * The API cost of read auditing (issue 5): read throughput of a collection defined with
 * `"readAudit": "all"` (every successful read answered only once its audit event committed,
 * through the group-commit writer) against the same collection with `"readAudit": "off"` (successful
 * reads not audited), on one deployment, real PostgreSQL, through HTTP.
 * Target: audited/unaudited >= 0.8 (printed as MET / NOT MET, never asserted).
 *
 *   npm run bench:audit-reads                  # full run (~2 minutes)
 *   npm run bench:audit-reads -- --quick       # smoke check (~30 s, do not quote)
 *
 * Built like encryption.bench.ts and on the isolation benchmark's machinery (imported from
 * isolation.bench.ts: the server child, the CPU accounting, the cleanup): a throw-away database, the
 * product server in a child process (product-server.ts), autocannon here, A-B-B-A rounds, cleanup on
 * exit, error and Ctrl-C; the deployment, the options and the figures come from support.ts, as for
 * the encryption benchmark.
 * All traffic goes to 127.0.0.1.
 *
 * After the runs the benchmark checks what it measured: the database holds no event of a
 * successful read of the unaudited collection, at least one for every successful read of the
 * audited one, and every chain verifies (`POST /v1/audit/verify`).
 */
import { availableParallelism, loadavg } from 'node:os';
import { isDeepStrictEqual, parseArgs } from 'node:util';
import autocannon, { type AutocannonRequest, type AutocannonResult } from 'autocannon';
import pg from 'pg';
import { Bulkhead } from '../src/bulkhead.js';
import { DEFAULT_POOL_SIZE, loadConfig } from '../src/config.js';
import { Cleanup, call, cpuDelta, describeServer, snapshot, startServer, toMeasurement, type Measurement, type Server } from './isolation.bench.js';
import { benchAdminUrl, benchLog, createDeployment, eachLimit, fmtInt, fmtMs, mean, percentile, positiveInt, vacuumAnalyze } from './support.js';

const HELP = `Usage: npm run bench:audit-reads -- [options]

  --tenants N        tenants, each with both collections (default 100; --quick: 10)
  --records N        records per tenant and collection, made through the API's service (default 30; --quick: 5)
  --duration S       seconds of each measured run (default 10; --quick: 3)
  --warmup S         seconds of discarded load before each measured run (default 2; --quick: 1)
  --connections N    concurrent HTTP connections of the load generator (default 20)
  --rounds N         measured runs per collection and operation, interleaved A-B-B-A (default 2; --quick: 1)
  --max-minutes M    stop, clean up and exit 124 after M minutes (default 20)
  --profile DIR      write a V8 CPU profile of the server into DIR (node --cpu-prof; read it with bench/profile-summary.ts)
  --quick            few tenants and short runs: a smoke check, not a measurement
  --help

Environment: BULKHEAD_BENCH_DATABASE_URL, a superuser URL of a PostgreSQL 15+ server on this machine
(default postgres://postgres@127.0.0.1:5432/postgres). A database bhbench_* and its roles are created and dropped.`;

/** Issue 5: API read throughput with every read audited at least this share of the same reads unaudited. */
const TARGET_RATIO = 0.8;
const POOL_SIZE = DEFAULT_POOL_SIZE;
const PARTITIONS = 16;
const SETUP_CONCURRENCY = 8;

/** The two collections: the same fields, read auditing `all` in one and `off` in the other. */
type Coll = 'unaudited' | 'audited';
const COLLS: readonly Coll[] = ['unaudited', 'audited'];
const READ_AUDIT: Record<Coll, 'all' | 'off'> = { audited: 'all', unaudited: 'off' };

/** Classified internal or public, so nothing is encrypted: the difference is the audit alone. */
function definitionOf(coll: Coll): Record<string, unknown> {
  return {
    description: `audit reads benchmark, ${coll}`,
    readAudit: READ_AUDIT[coll],
    fields: {
      name: { type: 'string', maxLength: 200, classification: 'internal' },
      email: { type: 'email', unique: true, classification: 'internal' },
      age: { type: 'integer', indexed: true, classification: 'internal' },
      account: { type: 'string', maxLength: 100, classification: 'internal' },
      note: { type: 'string', maxLength: 500, classification: 'internal' },
      status: { type: 'string', maxLength: 20, classification: 'public' },
    },
  };
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

type Op = 'get' | 'list';
const OPS: readonly Op[] = ['get', 'list'];
const OP_LABEL: Record<Op, string> = {
  get: 'GET /v1/collections/:c/records/:id',
  list: 'GET /v1/collections/:c/records?filter={"email":{"eq":...}} (one match)',
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
  /** Where the server's CPU profile goes (`--profile`); none when absent. */
  readonly profileDir: string | undefined;
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
    tenants: positiveInt(values.tenants, quick ? 10 : 100, 'tenants', 2),
    records: positiveInt(values.records, quick ? 5 : 30, 'records'),
    duration: positiveInt(values.duration, quick ? 3 : 10, 'duration'),
    warmup: positiveInt(values.warmup, quick ? 1 : 2, 'warmup', 0),
    connections: positiveInt(values.connections, 20, 'connections'),
    rounds: positiveInt(values.rounds, quick ? 1 : 2, 'rounds'),
    maxMinutes: positiveInt(values['max-minutes'], 20, 'max-minutes'),
    profileDir: values.profile,
    quick,
  };
}

const log = benchLog('audit-reads');


/** Who the tenants are and which records they hold: record k of tenant t has index k * tenants + t in both collections. */
interface Data {
  readonly tenantIds: readonly string[];
  readonly tokens: readonly string[];
  readonly ids: Readonly<Record<Coll, string[]>>;
  readonly emails: readonly string[];
  readonly tenants: number;
}

/** Migrates, creates the tenants, both collections and the records through Bulkhead's own services, one token per tenant. */
async function populate(env: Record<string, string>, options: Options): Promise<Data> {
  const bh = await Bulkhead.open(loadConfig({}, env));
  try {
    const n = options.tenants;
    const total = n * options.records;
    const tenantIds: string[] = new Array(n);
    const tokens: string[] = new Array(n);
    const ids: Record<Coll, string[]> = { unaudited: new Array(total), audited: new Array(total) };
    const emails: string[] = new Array(total);
    await eachLimit(n, SETUP_CONCURRENCY, async (t) => {
      const tenant = await bh.tenants.create({ slug: `ar-${t}`, name: `Audit reads bench tenant ${t}` }, 'bench');
      tenantIds[t] = tenant.id;
      for (const coll of COLLS) await bh.collections.define(tenant.id, coll, definitionOf(coll), 'bench');
      for (let k = 0; k < options.records; k++) {
        const i = k * n + t;
        emails[i] = `r${i}@bench.example`;
        for (const coll of COLLS) {
          ids[coll][i] = (await bh.records.create({ tenantId: tenant.id, subject: 'bench' }, coll, fieldsOf(`r${i}`, i))).id;
        }
      }
      tokens[t] = (await bh.mintToken(tenant.id, { sub: `bench-user-${t}`, roles: ['member'], ttlSeconds: 6 * 3600 })).token;
    });
    return { tenantIds, tokens, ids, emails, tenants: n };
  } finally {
    await bh.close();
  }
}

/** The request of one operation against one collection: a random record, with its tenant's token. */
function requestOf(op: Op, coll: Coll, data: Data, headers: readonly Record<string, string>[]): (req: AutocannonRequest) => AutocannonRequest {
  const records = data.ids[coll].length;
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

/** Events of successful record reads in the database, per collection (as the superuser: RLS does not apply). */
async function readEvents(dbUrl: string): Promise<Record<Coll, number>> {
  const c = new pg.Client({ connectionString: dbUrl });
  await c.connect();
  try {
    const r = await c.query<{ collection: string; n: string }>(
      "SELECT event->>'collection' AS collection, count(*) AS n FROM bulkhead.audit_events " +
        "WHERE event->>'action' IN ('record.read', 'record.list') AND event->>'outcome' = 'success' GROUP BY 1",
    );
    const out: Record<Coll, number> = { unaudited: 0, audited: 0 };
    for (const row of r.rows) if (row.collection === 'audited' || row.collection === 'unaudited') out[row.collection] = Number(row.n);
    return out;
  } finally {
    await c.end();
  }
}

/** Every event of a tenant's chain (any action and outcome). */
async function chainLength(dbUrl: string, tenantId: string): Promise<number> {
  const c = new pg.Client({ connectionString: dbUrl });
  await c.connect();
  try {
    return Number((await c.query<{ n: string }>('SELECT count(*) AS n FROM bulkhead.audit_events WHERE tenant_id = $1', [tenantId])).rows[0]!.n);
  } finally {
    await c.end();
  }
}

/**
 * Before measuring: the same record reads back with the same fields from both collections, by id
 * and by the `eq` filter (exactly one match); another tenant's token gets 404; each successful read
 * of `audited` adds one event to the tenant's chain and one of `unaudited` none, while a failed read
 * of `unaudited` is recorded all the same. Returns the successful reads of `audited` it made.
 */
async function sanityCheck(server: Server, data: Data, dbUrl: string): Promise<number> {
  const auth = (t: number) => ({ authorization: `Bearer ${data.tokens[t]}` });
  const tenant0 = data.tenantIds[0]!;
  const got: unknown[] = [];
  let auditedReads = 0;
  for (const coll of COLLS) {
    const before = await chainLength(dbUrl, tenant0);
    const own = await call(server, 'GET', `/v1/collections/${coll}/records/${data.ids[coll][0]}`, auth(0));
    if (own.status !== 200) throw new Error(`sanity check: GET ${coll} answered ${own.status}`);
    const filter = encodeURIComponent(JSON.stringify({ email: { eq: data.emails[0] } }));
    const list = await call(server, 'GET', `/v1/collections/${coll}/records?filter=${filter}`, auth(0));
    const found = list.body.records as { id: string; fields: unknown }[] | undefined;
    if (list.status !== 200 || found?.length !== 1 || found[0]!.id !== data.ids[coll][0]) {
      throw new Error(`sanity check: the eq filter on ${coll}.email answered ${list.status} with ${found?.length} records`);
    }
    const added = (await chainLength(dbUrl, tenant0)) - before;
    const expected = coll === 'audited' ? 2 : 0;
    if (added !== expected) throw new Error(`sanity check: two successful reads of ${coll} added ${added} audit events, ${expected} expected`);
    if (coll === 'audited') auditedReads += 2;
    // Another tenant's token: 404, and the refused read lands in the other tenant's own chain, audited or not.
    const otherBefore = await chainLength(dbUrl, data.tenantIds[1]!);
    const other = await call(server, 'GET', `/v1/collections/${coll}/records/${data.ids[coll][0]}`, auth(1));
    if (other.status !== 404 || other.body.code !== 'RECORD_NOT_FOUND') throw new Error(`sanity check: another tenant's token read a ${coll} record (${other.status})`);
    if ((await chainLength(dbUrl, data.tenantIds[1]!)) - otherBefore !== 1) throw new Error(`sanity check: a failed read of ${coll} was not audited`);
    got.push(own.body.fields);
  }
  if (!isDeepStrictEqual(got[0], got[1])) throw new Error('sanity check: the two collections return different fields for the same record');
  return auditedReads;
}

/** Each tenant's first request on each collection (tokens, decisions, definitions cached), 4 at a time. */
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

/** What the database holds after the runs, against what the load generator was answered. */
interface Check {
  /** Successful reads of `audited` answered to the load generator and the checks (warm-ups included). */
  readonly answered: number;
  /** Requests that may have been served without their answer being counted: in flight when a run ended. */
  readonly inFlight: number;
  readonly events: Record<Coll, number>;
  readonly verify: { ok: boolean; chains: number; events: number; checkpoints: number; seconds: number };
}

async function main(options: Options, cleanup: Cleanup): Promise<void> {
  const started = performance.now();
  const header =
    `${await describeServer(options.adminUrl)}, Node ${process.version}, ${availableParallelism()} CPUs\n` +
    `${fmtInt(options.tenants)} tenants, each with collections "unaudited" (readAudit off) and "audited" (readAudit all), ${fmtInt(options.records)} records each: ` +
    `the same 6 fields (name, email unique, age indexed, account, note, status), none encrypted\n` +
    `autocannon ${options.connections} connections, ${options.duration} s runs after ${options.warmup} s warm-up, ${options.rounds} round(s) per collection and operation, A-B-B-A; ` +
    `${PARTITIONS} partitions, pg pool of ${POOL_SIZE}` +
    (options.quick ? '  [--quick: smoke check, not a measurement]' : '');
  log(header.replace(/\n/g, ' | '));

  const { db, env } = await createDeployment(options.adminUrl, cleanup, { partitions: PARTITIONS, poolSize: POOL_SIZE });
  log(`database ${db.name}: populating through Bulkhead's services`);
  let t0 = performance.now();
  const data = await populate(env, options);
  const populateSeconds = (performance.now() - t0) / 1000;
  log(`  ${fmtInt(data.tenants)} tenants, ${fmtInt(2 * data.ids.audited.length)} records in ${populateSeconds.toFixed(1)} s`);
  log(`  VACUUM ANALYZE ${(await vacuumAnalyze(db.url)).toFixed(1)} s`);

  const profile = options.profileDir ? ['--cpu-prof', `--cpu-prof-dir=${options.profileDir}`] : [];
  const server = await startServer('isolated', { ...env, BULKHEAD_LOG_LEVEL: 'warn' }, profile);
  cleanup.add(() => server.stop());
  const stats = new pg.Client({ connectionString: db.url, application_name: 'bulkhead-bench' });
  await stats.connect();
  cleanup.add(() => stats.end());
  let answered = await sanityCheck(server, data, db.url);
  const primeSeconds = await prime(server, data);
  answered += data.tenants;
  log(`  sanity check passed; first request of each tenant on both collections ${primeSeconds.toFixed(1)} s`);

  const runs: Run[] = [];
  let inFlight = 0;
  const served = (coll: Coll, r: AutocannonResult) => {
    if (coll === 'audited') answered += r['2xx'];
    // A request cut off when its run ended may have been served (and audited) without being counted.
    inFlight += options.connections;
  };
  for (const op of OPS) {
    for (let round = 0; round < options.rounds; round++) {
      const order: readonly Coll[] = round % 2 === 0 ? ['unaudited', 'audited'] : ['audited', 'unaudited'];
      for (const coll of order) {
        if (options.warmup > 0) served(coll, await run(server, op, coll, data, options.warmup, options.connections));
        const latencies: number[] = [];
        const before = await snapshot(server, stats);
        const r = await run(server, op, coll, data, options.duration, options.connections, (status, ms) => {
          if (status >= 200 && status < 300) latencies.push(ms);
        });
        served(coll, r);
        const m = {
          ...toMeasurement(options.tenants, 'read', 'isolated', round, r, cpuDelta(before, await snapshot(server, stats))),
          // autocannon's histogram keeps whole milliseconds, too coarse for a ratio of few-ms latencies.
          p50: percentile(latencies, 50),
          p99: percentile(latencies, 99),
        };
        runs.push({ op, coll, m });
        log(
          `  ${op.padEnd(4)} ${coll.padEnd(9)} round ${round + 1}: ${fmtInt(m.reqPerSec)} req/s, p50 ${fmtMs(m.p50)} ms, p99 ${fmtMs(m.p99)} ms, ` +
            `db tx/req ${m.transactions.toFixed(2)}, CPU µs/req server ${Math.round(m.cpu.server)} + db ${Math.round(m.cpu.db)} + loadgen ${Math.round(m.cpu.loadgen)}, ` +
            `other CPU ${(100 * m.other).toFixed(0)}%, load ${m.load.toFixed(1)}` +
            (m.failed ? `, ${m.failed} FAILED requests` : ''),
        );
      }
    }
  }

  // What was measured is what it claims: unaudited reads left no event, audited ones one each; and the trail verifies.
  const events = await readEvents(db.url);
  log('  verifying every chain (POST /v1/audit/verify)');
  t0 = performance.now();
  const verified = await call(server, 'POST', '/v1/audit/verify', { authorization: `Bearer ${env.BULKHEAD_OPERATOR_TOKEN!}`, 'content-type': 'application/json' }, '{}');
  const verifySeconds = (performance.now() - t0) / 1000;
  if (verified.status !== 200) throw new Error(`POST /v1/audit/verify answered ${verified.status}`);
  const chains = verified.body.tenants as { events: number; checkpoints: number }[];
  const check: Check = {
    answered,
    inFlight,
    events,
    verify: {
      ok: verified.body.ok === true,
      chains: chains.length,
      events: chains.reduce((a, c) => a + c.events, 0),
      checkpoints: chains.reduce((a, c) => a + c.checkpoints, 0),
      seconds: verifySeconds,
    },
  };
  report(options, header, populateSeconds, primeSeconds, runs, check, (performance.now() - started) / 1000);
}

function report(options: Options, header: string, populateSeconds: number, primeSeconds: number, runs: readonly Run[], check: Check, seconds: number): void {
  const lines: string[] = ['', 'Bulkhead read audit benchmark', header, `setup: populate ${populateSeconds.toFixed(1)} s, first request of each tenant ${primeSeconds.toFixed(1)} s`, ''];
  const rows = [['op', 'collection', 'req/s', 'p50 ms', 'p99 ms', 'db tx/req', 'CPU µs/req: server', 'db', 'loadgen', 'other CPU', 'req/s of each run']];
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
        mean(g.map((m) => m.transactions)).toFixed(2),
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
  lines.push('', 'operations:', ...OPS.map((op) => `  ${op.padEnd(4)} ${OP_LABEL[op]}`));
  lines.push('', `audited/unaudited            target: throughput ratio >= ${TARGET_RATIO}`);
  const avg = (op: Op, coll: Coll, pick: (m: Measurement) => number) => mean(of(op, coll).map(pick));
  for (const op of OPS) {
    const rps = avg(op, 'audited', (m) => m.reqPerSec) / avg(op, 'unaudited', (m) => m.reqPerSec);
    const p50 = avg(op, 'audited', (m) => m.p50) / avg(op, 'unaudited', (m) => m.p50);
    const p99 = avg(op, 'audited', (m) => m.p99) / avg(op, 'unaudited', (m) => m.p99);
    const server = avg(op, 'audited', (m) => m.cpu.server) - avg(op, 'unaudited', (m) => m.cpu.server);
    const db = avg(op, 'audited', (m) => m.cpu.db) - avg(op, 'unaudited', (m) => m.cpu.db);
    lines.push(
      `  ${op.padEnd(4)} throughput ${rps.toFixed(2)}  p50 ${p50.toFixed(2)}x  p99 ${p99.toFixed(2)}x  audit CPU per read: server ${server >= 0 ? '+' : ''}${fmtInt(server)} µs, db ${db >= 0 ? '+' : ''}${fmtInt(db)} µs   ` +
        (rps >= TARGET_RATIO ? 'MET' : 'NOT MET'),
    );
  }
  const surplus = check.events.audited - check.answered;
  const eventsOk = check.events.unaudited === 0 && surplus >= 0 && surplus <= check.inFlight;
  lines.push(
    '',
    `events of successful reads in the database: unaudited ${fmtInt(check.events.unaudited)} (0 expected), audited ${fmtInt(check.events.audited)} for ${fmtInt(check.answered)} answered ` +
      `(+${fmtInt(Math.max(0, surplus))}, at most ${fmtInt(check.inFlight)} in flight when runs ended): ${eventsOk ? 'as expected' : 'NOT AS EXPECTED'}`,
    `POST /v1/audit/verify: ${check.verify.ok ? 'every chain verifies' : 'A CHAIN DOES NOT VERIFY'}; ${fmtInt(check.verify.chains)} chains, ${fmtInt(check.verify.events)} events, ` +
      `${fmtInt(check.verify.checkpoints)} checkpoints in ${check.verify.seconds.toFixed(1)} s (${fmtInt(check.verify.events / check.verify.seconds)} events/s)`,
  );
  const loads = runs.map((r) => r.m.load);
  lines.push(
    '',
    'p50/p99: of every successful answer of the measured runs (autocannon per-response latency). db tx/req: database transactions the server',
    'started per successful request (an audited read adds its share of a group commit). CPU µs per req: the server process, its PostgreSQL',
    `backends and the load generator, per successful request; other CPU: the highest share of the machine's ${availableParallelism()} CPUs used by`,
    `anything else during a run; 1-min load average ${Math.min(...loads).toFixed(1)}-${Math.max(...loads).toFixed(1)}.`,
  );
  if (failures > 0) lines.push('', `WARNING: ${failures} requests failed (non-2xx, errors or timeouts); the numbers above are not valid.`);
  if (!eventsOk || !check.verify.ok) lines.push('', 'WARNING: the audit trail does not hold what the runs should have left; the numbers above are not valid.');
  if (options.quick) lines.push('', '--quick: a smoke check with few tenants and short runs; do not quote these numbers.');
  lines.push('', `total ${seconds.toFixed(0)} s`);
  console.log(lines.join('\n'));
  if (failures > 0 || !eventsOk || !check.verify.ok) process.exitCode = 1;
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
