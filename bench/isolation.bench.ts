/**
 * The isolation benchmark of issue 2: Bulkhead's API (JWT, tenant status, Cedar decision, RLS as
 * the application role, one pipelined round trip) against a minimal Fastify + `pg` baseline with
 * no isolation at all, on real PostgreSQL, printed side by side in one run.
 *
 *   npm run bench                              # full run (~4-5 minutes)
 *   npm run bench -- --quick                   # smoke check (~1 minute)
 *   npm run bench -- --duration 20 --connections 50
 *
 * Each tenant count gets its own throw-away database holding the whole 100k-record pool (100k
 * records over exactly 10 tenants, and 100k over exactly 1,000), dropped at the end, also on error
 * or Ctrl-C. Both servers run in child processes; the load generator (autocannon) runs here.
 * Product and baseline runs are interleaved A-B-B-A so that machine noise hits both alike.
 * All traffic goes to 127.0.0.1.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { readFileSync, realpathSync } from 'node:fs';
import { availableParallelism, loadavg } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isDeepStrictEqual, parseArgs } from 'node:util';
import autocannon, { type AutocannonRequest, type AutocannonResult } from 'autocannon';
import pg from 'pg';
import { COLLECTION, createBenchDatabase, loadDataset, recordFields, type Dataset } from './dataset.js';
import { benchAdminUrl, benchLog, fmtInt, mean, positiveInt } from './support.js';
import { DEFAULT_POOL_SIZE } from '../src/config.js';

const HELP = `Usage: npm run bench -- [options]

  --duration S       seconds of each measured run (default 10; --quick: 3)
  --warmup S         seconds of discarded load before each measured run (default 2; --quick: 1)
  --connections N    concurrent HTTP connections of the load generator (default 20)
  --rounds N         measured runs per server and operation, interleaved A-B-B-A (default 2; --quick: 1)
  --tenants LIST     tenant counts, one database each (default 10,1000)
  --records N        records in each database's pool (default 100000; --quick: 10000)
  --quick            small pool and short runs: a smoke check, not a measurement
  --access-log       let the product write its JSON access log (to /dev/null) as in production
  --read-audit all|off  audit every successful read, as the product does by default (all), or not (off)
  --pg-options=STR   PGOPTIONS for BOTH servers' connections, e.g. --pg-options="-c plan_cache_mode=force_generic_plan"
  --profile DIR      write V8 CPU profiles of both servers into DIR/<isolated|baseline>-<N>-tenants/ (node --cpu-prof;
                     the largest file is the main thread) and print how many requests each served;
                     summarize with: node --import tsx bench/profile-summary.ts FILE --requests N
  --help

Environment: BULKHEAD_BENCH_DATABASE_URL, a superuser URL of a PostgreSQL 15+ server
(default postgres://postgres@127.0.0.1:5432/postgres). Databases bhbench_* are created and dropped.`;

/** Targets of issue 2 for the isolated read path. */
const TARGET_READ_RATIO = 0.85;
const TARGET_READS_PER_SECOND = 2_000;
/** Both servers get a pool of this size (the product's default). */
const POOL_SIZE = DEFAULT_POOL_SIZE;
const PARTITIONS = 16;
/** Linux USER_HZ: /proc reports CPU time in these ticks. */
const CLOCK_TICKS = 100;

interface Options {
  readonly adminUrl: string;
  readonly duration: number;
  readonly warmup: number;
  readonly connections: number;
  readonly rounds: number;
  readonly tenantCounts: readonly number[];
  readonly records: number;
  readonly quick: boolean;
  readonly accessLog: boolean;
  /** Whether the product audits successful reads (`--read-audit`). */
  readonly readAudit: 'all' | 'off';
  readonly pgOptions: string | undefined;
  readonly profileDir: string | undefined;
}

/** `--read-audit`: `all` (every successful read leaves an audit event, the product's default) or `off`. */
function readAuditOption(value: string | undefined): 'all' | 'off' {
  if (value !== 'all' && value !== 'off') throw new Error('--read-audit must be all or off');
  return value;
}

function parseOptions(): Options {
  const { values } = parseArgs({
    options: {
      duration: { type: 'string' },
      warmup: { type: 'string' },
      connections: { type: 'string' },
      rounds: { type: 'string' },
      tenants: { type: 'string' },
      records: { type: 'string' },
      quick: { type: 'boolean', default: false },
      'access-log': { type: 'boolean', default: false },
      'read-audit': { type: 'string', default: 'all' },
      'pg-options': { type: 'string' },
      profile: { type: 'string' },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    console.log(HELP);
    process.exit(0);
  }
  const quick = values.quick === true;
  const tenantCounts = (values.tenants ?? '10,1000').split(',').map((s) => positiveInt(s.trim(), 0, 'tenants', 2));
  const records = positiveInt(values.records, quick ? 10_000 : 100_000, 'records');
  for (const n of tenantCounts) if (n > records) throw new Error('--records must be at least the largest tenant count');
  const adminUrl = benchAdminUrl();
  return {
    adminUrl,
    duration: positiveInt(values.duration, quick ? 3 : 10, 'duration'),
    warmup: positiveInt(values.warmup, quick ? 1 : 2, 'warmup', 0),
    connections: positiveInt(values.connections, 20, 'connections'),
    rounds: positiveInt(values.rounds, quick ? 1 : 2, 'rounds'),
    tenantCounts,
    records,
    quick,
    accessLog: values['access-log'] === true,
    readAudit: readAuditOption(values['read-audit']),
    pgOptions: values['pg-options'],
    profileDir: values.profile,
  };
}

/** Cleanup steps run once, last added first: on success, on error and on Ctrl-C alike. */
export class Cleanup {
  readonly #steps: (() => Promise<unknown>)[] = [];
  #running: Promise<void> | undefined;

  add(step: () => Promise<unknown>): void {
    this.#steps.push(step);
  }

  run(): Promise<void> {
    this.#running ??= (async () => {
      while (this.#steps.length > 0) {
        const step = this.#steps.pop()!;
        await step().catch((error: unknown) => console.error(`cleanup step failed: ${String(error)}`));
      }
    })();
    return this.#running;
  }
}

type ServerKind = 'isolated' | 'baseline';
type Op = 'read' | 'write';

/** A benchmark server running in a child process. */
export interface Server {
  readonly kind: ServerKind;
  readonly url: string;
  /** The `application_name` of the server's database connections, to find its backends. */
  readonly applicationName: string;
  /** CPU time (user + system, µs) the server process has used so far, and the database transactions it started. */
  usage(): Promise<{ cpuUs: number; transactions: number }>;
  stop(): Promise<void>;
}

const here = (file: string) => fileURLToPath(new URL(file, import.meta.url));

/** Forks a server script under tsx and waits for it to report its port. */
export function startServer(kind: ServerKind, env: Record<string, string>, extraExecArgv: readonly string[]): Promise<Server> {
  const script = here(kind === 'isolated' ? './product-server.ts' : './baseline-server.ts');
  const child: ChildProcess = fork(script, [], {
    execArgv: ['--import', 'tsx', ...extraExecArgv],
    env: { ...process.env, ...env },
    // stdout (the product's JSON log) goes to /dev/null; errors stay visible.
    stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      void stop();
      reject(new Error(`the ${kind} server did not start within 60 s`));
    }, 60_000);
    child.once('message', (message: unknown) => {
      clearTimeout(timer);
      const port = (message as { port?: unknown }).port;
      if (typeof port !== 'number') return reject(new Error(`the ${kind} server sent no port`));
      const usage = () =>
        new Promise<{ cpuUs: number; transactions: number }>((res, rej) => {
          const onMessage = (m: unknown) => {
            const { cpuUs, transactions } = m as { cpuUs?: unknown; transactions?: unknown };
            if (typeof cpuUs !== 'number' || typeof transactions !== 'number') return;
            child.off('message', onMessage);
            res({ cpuUs, transactions });
          };
          child.on('message', onMessage);
          if (!child.send({ type: 'cpu' })) rej(new Error(`the ${kind} server is gone`));
        });
      resolve({ kind, url: `http://127.0.0.1:${port}`, applicationName: kind === 'isolated' ? 'bulkhead' : 'bulkhead-bench-baseline', usage, stop });
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`the ${kind} server exited before listening (code ${code}, signal ${signal})`));
    });
  });
}

/** Per-tenant request headers; both servers get both headers, so requests are the same size. */
function headersOf(ds: Dataset, op: Op): Record<string, string>[] {
  return ds.tenantIds.map((id, t) => ({
    authorization: `Bearer ${ds.tokens[t]}`,
    'x-tenant-id': id,
    ...(op === 'write' ? { 'content-type': 'application/json' } : {}),
  }));
}

/** Bodies for writes, built once: the cost of building them must not land on the load generator. */
const WRITE_BODIES = Array.from({ length: 1_000 }, (_, k) => JSON.stringify({ fields: recordFields(1_000_000 + k) }));

/**
 * One autocannon run: each request picks a random record (reads) or tenant (writes) and that tenant's token.
 * `onResponse` gets every answer's status and latency in ms, finer than autocannon's whole-ms histogram.
 */
export function load(
  server: Server,
  op: Op,
  ds: Dataset,
  seconds: number,
  connections: number,
  onResponse?: (statusCode: number, ms: number) => void,
): Promise<AutocannonResult> {
  const headers = headersOf(ds, op);
  const records = ds.recordIds.length;
  const tenants = ds.tenantIds.length;
  const setupRequest =
    op === 'read'
      ? (req: AutocannonRequest): AutocannonRequest => {
          const i = Math.floor(Math.random() * records);
          return { ...req, method: 'GET', path: `/v1/collections/${COLLECTION}/records/${ds.recordIds[i]}`, headers: headers[ds.recordTenant[i]!]! };
        }
      : (req: AutocannonRequest): AutocannonRequest => {
          const t = Math.floor(Math.random() * tenants);
          const body = WRITE_BODIES[Math.floor(Math.random() * WRITE_BODIES.length)]!;
          return { ...req, method: 'POST', path: `/v1/collections/${COLLECTION}/records`, headers: headers[t]!, body };
        };
  const run = autocannon({ url: server.url, connections, duration: seconds, timeout: 10, requests: [{ setupRequest }] });
  if (onResponse) run.on('response', (_client, statusCode, _bytes, ms) => onResponse(statusCode, ms));
  return run;
}

/** One request with `fetch`, its status and JSON body. */
export async function call(server: Server, method: 'GET' | 'POST', path: string, headers: Record<string, string>, body?: string) {
  const res = await fetch(`${server.url}${path}`, { method, headers, ...(body !== undefined ? { body } : {}) });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

/**
 * Checks before measuring that both servers answer the same thing for the same record, that the
 * product does isolate (another tenant's token gets 404), and that writes succeed on both.
 */
async function sanityCheck(product: Server, baseline: Server, ds: Dataset): Promise<void> {
  const read = headersOf(ds, 'read');
  const path = `/v1/collections/${COLLECTION}/records/${ds.recordIds[0]}`;
  const owner = read[ds.recordTenant[0]!]!;
  const other = read[(ds.recordTenant[0]! + 1) % ds.tenantIds.length]!;
  const [p, b, cross] = await Promise.all([call(product, 'GET', path, owner), call(baseline, 'GET', path, owner), call(product, 'GET', path, other)]);
  if (p.status !== 200 || b.status !== 200) throw new Error(`sanity check: GET answered ${p.status} (product) and ${b.status} (baseline)`);
  if (!isDeepStrictEqual(p.body, b.body)) throw new Error('sanity check: the product and the baseline return different JSON for the same record');
  if (cross.status !== 404 || cross.body.code !== 'RECORD_NOT_FOUND') throw new Error(`sanity check: another tenant's token read the record (${cross.status})`);
  const write = headersOf(ds, 'write')[0]!;
  const body = WRITE_BODIES[0]!;
  const [pw, bw] = await Promise.all([
    call(product, 'POST', `/v1/collections/${COLLECTION}/records`, write, body),
    call(baseline, 'POST', `/v1/collections/${COLLECTION}/records`, write, body),
  ]);
  if (pw.status !== 201 || bw.status !== 201) throw new Error(`sanity check: POST answered ${pw.status} (product) and ${bw.status} (baseline)`);
  if (Object.keys(pw.body).join() !== Object.keys(bw.body).join()) throw new Error('sanity check: POST responses differ in shape');
}

/**
 * Sends each tenant's first request (one GET per tenant, 4 at a time) and returns the seconds it
 * took: the measured runs then see the steady state (token, status, decision and definition
 * caches filled), and this number is the cold-start cost of the tenants, reported on its own.
 */
export async function prime(server: Server, ds: Dataset): Promise<number> {
  const headers = headersOf(ds, 'read');
  const t0 = performance.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: 4 }, async () => {
      while (next < ds.tenantIds.length) {
        const t = next++;
        // Records are spread round-robin, so record t belongs to tenant t.
        if (ds.recordTenant[t] !== t) throw new Error('prime: record layout is not round-robin');
        const r = await call(server, 'GET', `/v1/collections/${COLLECTION}/records/${ds.recordIds[t]}`, headers[t]!);
        if (r.status !== 200) throw new Error(`prime: the ${server.kind} server answered ${r.status}`);
      }
    }),
  );
  return (performance.now() - t0) / 1000;
}

/** CPU time of PostgreSQL backends, in µs, read from /proc (clock ticks of 10 ms: fine over a 10 s run). */
function backendCpuUs(pids: readonly number[]): Map<number, number> {
  const out = new Map<number, number>();
  for (const pid of pids) {
    try {
      // Fields after the command name "(...)": state is field 3, utime field 14, stime field 15.
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      out.set(pid, ((Number(fields[11]) + Number(fields[12])) * 1e6) / CLOCK_TICKS);
    } catch {
      // The backend exited; its time is lost, which only understates the database's share.
    }
  }
  return out;
}

/** Busy CPU time of the whole machine so far, in µs (all CPUs; /proc/stat minus idle and iowait). */
function machineBusyUs(): number {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!;
  const ticks = line.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal (guest time is already counted in user).
  const busy = ticks.slice(0, 8).reduce((a, b) => a + b, 0) - ticks[3]! - ticks[4]!;
  return (busy * 1e6) / CLOCK_TICKS;
}

/** CPU used around one run: the server process, its PostgreSQL backends, the load generator (this process) and the machine. */
interface CpuSnapshot {
  readonly server: number;
  readonly transactions: number;
  readonly backends: Map<number, number>;
  readonly loadgen: number;
  readonly machine: number;
  readonly at: number;
}

/** CPU counters of the server, its PostgreSQL backends, this process and the machine, before or after a run. */
export async function snapshot(server: Server, stats: pg.Client): Promise<CpuSnapshot> {
  const r = await stats.query<{ pid: number }>(
    'SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1',
    [server.applicationName],
  );
  const { user, system } = process.cpuUsage();
  const usage = await server.usage();
  return { server: usage.cpuUs, transactions: usage.transactions, backends: backendCpuUs(r.rows.map((row) => row.pid)), loadgen: user + system, machine: machineBusyUs(), at: performance.now() };
}

interface CpuUse {
  readonly server: number;
  readonly transactions: number;
  readonly db: number;
  readonly loadgen: number;
  /** Share of the machine's CPU capacity used by anything else (other programs, PostgreSQL's background processes). */
  readonly otherShare: number;
}

/** The CPU used between two snapshots. */
export function cpuDelta(before: CpuSnapshot, after: CpuSnapshot): CpuUse {
  let db = 0;
  // A backend that closed during the run is left out (its time is lost); one that opened counts whole.
  for (const [pid, us] of after.backends) db += us - (before.backends.get(pid) ?? 0);
  const server = after.server - before.server;
  const loadgen = after.loadgen - before.loadgen;
  const capacity = (after.at - before.at) * 1000 * availableParallelism();
  const other = after.machine - before.machine - server - db - loadgen;
  return { server, transactions: after.transactions - before.transactions, db, loadgen, otherShare: Math.max(0, other) / capacity };
}

/** One measured run, per successful request where it says so. */
export interface Measurement {
  readonly tenants: number;
  readonly op: Op;
  readonly server: ServerKind;
  readonly round: number;
  readonly reqPerSec: number;
  readonly p50: number;
  readonly p99: number;
  readonly failed: number;
  /** The 1-minute load average when the run ended: other work on the machine shows here. */
  readonly load: number;
  /** CPU µs per successful request: the server process, its PostgreSQL backends, the load generator. */
  readonly cpu: { readonly server: number; readonly db: number; readonly loadgen: number };
  /** Share of the machine's CPU used by everything else during the run. */
  readonly other: number;
  /** Database transactions the server started per successful request (1 = one round trip each). */
  readonly transactions: number;
}

/** A run's autocannon result and CPU use as a `Measurement`. */
export function toMeasurement(tenants: number, op: Op, server: ServerKind, round: number, r: AutocannonResult, cpu: CpuUse): Measurement {
  const ok = Math.max(1, r['2xx']);
  return {
    tenants,
    op,
    server,
    round,
    // Only successful answers count as throughput.
    reqPerSec: r['2xx'] / r.duration,
    p50: r.latency.p50,
    p99: r.latency.p99,
    failed: r.non2xx + r.errors + r.timeouts,
    load: loadavg()[0]!,
    cpu: { server: cpu.server / ok, db: cpu.db / ok, loadgen: cpu.loadgen / ok },
    other: cpu.otherShare,
    transactions: cpu.transactions / ok,
  };
}

const fmtMs = (n: number) => (Number.isInteger(n) ? String(n) : n.toFixed(2));
const log = benchLog('bench');

/** The PostgreSQL version and the settings that matter for these numbers. */
export async function describeServer(adminUrl: string): Promise<string> {
  const c = new pg.Client({ connectionString: adminUrl });
  await c.connect();
  try {
    const v = await c.query<{ v: string; sc: string; sb: string }>(
      "SELECT current_setting('server_version') AS v, current_setting('synchronous_commit') AS sc, current_setting('shared_buffers') AS sb",
    );
    const row = v.rows[0]!;
    return `PostgreSQL ${row.v} (synchronous_commit=${row.sc}, shared_buffers=${row.sb})`;
  } finally {
    await c.end();
  }
}

async function main(options: Options, cleanup: Cleanup): Promise<void> {
  const started = performance.now();
  const header =
    `${await describeServer(options.adminUrl)}, Node ${process.version}, ${availableParallelism()} CPUs\n` +
    `autocannon: ${options.connections} connections, ${options.duration} s runs after ${options.warmup} s warm-up, ` +
    `${options.rounds} round(s) per server and operation, interleaved A-B-B-A\n` +
    `pool: ${fmtInt(options.records)} records per database, ${PARTITIONS} partitions, pg pool of ${POOL_SIZE} on both servers` +
    `${options.accessLog ? ', product access log on' : ', product access log off'}` +
    `, read auditing ${options.readAudit}` +
    `${options.pgOptions ? `, PGOPTIONS="${options.pgOptions}" on both servers` : ''}${options.quick ? '  [--quick: smoke check, not a measurement]' : ''}`;
  log(header.replace(/\n/g, ' | '));
  const results: Measurement[] = [];
  const setup: string[] = [];

  for (const tenants of options.tenantCounts) {
    const scenario = new Cleanup();
    const db = await createBenchDatabase(options.adminUrl);
    cleanup.add(() => db.drop());
    log(`${tenants} tenants: database ${db.name}`);
    const setupStart = performance.now();
    const ds = await loadDataset(db, {
      tenants,
      records: options.records,
      partitions: PARTITIONS,
      poolSize: POOL_SIZE,
      readAudit: options.readAudit,
      progress: (m) => log(`  ${m}`),
    });
    setup.push(`${fmtInt(tenants)} tenants: setup ${((performance.now() - setupStart) / 1000).toFixed(1)} s (${Object.entries(ds.timings).map(([k, v]) => `${k} ${v.toFixed(1)} s`).join(', ')})`);

    cleanup.add(() => scenario.run());
    try {
      // One directory per server and scenario: tsx's loader thread writes a profile of its own next to the main thread's.
      const profileArgs = (kind: ServerKind) =>
        options.profileDir ? ['--cpu-prof', `--cpu-prof-dir=${join(options.profileDir, `${kind}-${tenants}-tenants`)}`] : [];
      // The same connection options for both servers (node-postgres reads PGOPTIONS), or none.
      const pgEnv: Record<string, string> = options.pgOptions ? { PGOPTIONS: options.pgOptions } : {};
      const productEnv = { ...ds.serverEnv, ...pgEnv, BULKHEAD_LOG_LEVEL: options.accessLog ? 'info' : 'warn' };
      const product = await startServer('isolated', productEnv, profileArgs('isolated'));
      scenario.add(() => product.stop());
      const baselineEnv = { ...pgEnv, BENCH_DATABASE_URL: db.url, BENCH_POOL_SIZE: String(POOL_SIZE) };
      const baseline = await startServer('baseline', baselineEnv, profileArgs('baseline'));
      scenario.add(() => baseline.stop());
      const stats = new pg.Client({ connectionString: db.url, application_name: 'bulkhead-bench' });
      await stats.connect();
      scenario.add(() => stats.end());
      await sanityCheck(product, baseline, ds);
      // Requests each server answered, for per-request figures from a CPU profile (sanity check: 3 and 2).
      const served: Record<ServerKind, number> = { isolated: 3 + tenants, baseline: 2 + tenants };
      const primeProduct = await prime(product, ds);
      const primeBaseline = await prime(baseline, ds);
      const primed = `first request of each of the ${fmtInt(tenants)} tenants (4 at a time): isolated ${primeProduct.toFixed(1)} s, baseline ${primeBaseline.toFixed(1)} s`;
      setup.push(`  ${primed}`);
      log(`  ${primed}`);

      for (const op of ['read', 'write'] as const) {
        for (let round = 0; round < options.rounds; round++) {
          // A-B-B-A: the second round runs in the reverse order, so a drift hits both servers alike.
          const order = round % 2 === 0 ? [product, baseline] : [baseline, product];
          for (const server of order) {
            if (options.warmup > 0) {
              const w = await load(server, op, ds, options.warmup, options.connections);
              served[server.kind] += w['2xx'] + w.non2xx;
            }
            const before = await snapshot(server, stats);
            const r = await load(server, op, ds, options.duration, options.connections);
            const m = toMeasurement(tenants, op, server.kind, round, r, cpuDelta(before, await snapshot(server, stats)));
            served[server.kind] += r['2xx'] + r.non2xx;
            results.push(m);
            log(
              `  ${op.padEnd(5)} ${server.kind.padEnd(8)} round ${round + 1}: ${fmtInt(m.reqPerSec)} req/s, p50 ${fmtMs(m.p50)} ms, p99 ${fmtMs(m.p99)} ms` +
                `, ${m.transactions.toFixed(3)} db transactions/req, CPU µs/req server ${Math.round(m.cpu.server)} + db ${Math.round(m.cpu.db)} + loadgen ${Math.round(m.cpu.loadgen)}, other CPU ${(100 * m.other).toFixed(0)}%, load ${m.load.toFixed(1)}` + (m.failed ? `, ${m.failed} FAILED requests` : ''),
            );
          }
        }
      }
      if (options.profileDir) {
        const note = `profiled ${fmtInt(tenants)} tenants: isolated answered ${served.isolated} requests, baseline ${served.baseline}`;
        setup.push(`  ${note}`);
        log(`  ${note}`);
      }
    } finally {
      await scenario.run();
      await db.drop();
    }
  }

  report(options, header, setup, results, (performance.now() - started) / 1000);
}

function report(options: Options, header: string, setup: readonly string[], results: readonly Measurement[], seconds: number): void {
  const lines: string[] = ['', 'Bulkhead isolation benchmark', header, ...setup, ''];
  // Columns: tenants, op, server (left-aligned), then numbers (right-aligned), then the per-run rates.
  const widths = [8, 6, 9, 7, 7, 7, 6, 7, 7, 8, 6];
  const row = (cells: string[]) =>
    cells.map((c, i) => (i >= widths.length ? `  ${c}` : i < 3 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' ');
  lines.push(row(['', '', '', '', '', '', 'db tx', 'CPU µs', 'per req', '', 'other', '']));
  lines.push(row(['tenants', 'op', 'server', 'req/s', 'p50 ms', 'p99 ms', '/req', 'server', 'db', 'loadgen', 'CPU', 'req/s of each run']));
  const group = (tenants: number, op: Op, server: ServerKind) => results.filter((m) => m.tenants === tenants && m.op === op && m.server === server);
  const rate = (tenants: number, op: Op, server: ServerKind) => mean(group(tenants, op, server).map((m) => m.reqPerSec));
  let failures = 0;
  for (const tenants of options.tenantCounts) {
    for (const op of ['read', 'write'] as const) {
      for (const server of ['isolated', 'baseline'] as const) {
        const g = group(tenants, op, server);
        failures += g.reduce((a, m) => a + m.failed, 0);
        lines.push(
          row([
            fmtInt(tenants),
            op,
            server,
            fmtInt(mean(g.map((m) => m.reqPerSec))),
            fmtMs(mean(g.map((m) => m.p50))),
            fmtMs(mean(g.map((m) => m.p99))),
            mean(g.map((m) => m.transactions)).toFixed(2),
            fmtInt(mean(g.map((m) => m.cpu.server))),
            fmtInt(mean(g.map((m) => m.cpu.db))),
            fmtInt(mean(g.map((m) => m.cpu.loadgen))),
            `${(100 * Math.max(...g.map((m) => m.other))).toFixed(0)}%`,
            g.map((m) => fmtInt(m.reqPerSec)).join(' / '),
          ]),
        );
      }
    }
  }
  lines.push('', 'isolation overhead = isolated/baseline (req/s)');
  for (const tenants of options.tenantCounts) {
    const r = rate(tenants, 'read', 'isolated') / rate(tenants, 'read', 'baseline');
    const w = rate(tenants, 'write', 'isolated') / rate(tenants, 'write', 'baseline');
    lines.push(`  ${`${fmtInt(tenants)} tenants`.padEnd(15)} read ${r.toFixed(2)}   write ${w.toFixed(2)}`);
  }
  lines.push('', 'targets (issue 2, isolated read path)');
  for (const tenants of options.tenantCounts) {
    const ratio = rate(tenants, 'read', 'isolated') / rate(tenants, 'read', 'baseline');
    const reads = rate(tenants, 'read', 'isolated');
    lines.push(
      `  ${`${fmtInt(tenants)} tenants`.padEnd(15)} read ratio ${ratio.toFixed(2)} >= ${TARGET_READ_RATIO}: ${ratio >= TARGET_READ_RATIO ? 'MET' : 'NOT MET'}` +
        `   reads/s ${fmtInt(reads)} >= ${fmtInt(TARGET_READS_PER_SECOND)}: ${reads >= TARGET_READS_PER_SECOND ? 'MET' : 'NOT MET'}`,
    );
  }
  const loads = results.map((m) => m.load);
  const others = results.map((m) => m.other);
  lines.push(
    '',
    'db tx/req: database transactions the server started per successful request (each is one round trip here).',
    'CPU µs per req: the server process, its PostgreSQL backends and the load generator, per successful request.',
    `other CPU: the highest share of the machine's ${availableParallelism()} CPUs used by anything else during a run ` +
      `(other programs and PostgreSQL's background processes): ${(100 * Math.min(...others)).toFixed(0)}-${(100 * Math.max(...others)).toFixed(0)}%; ` +
      `1-min load average ${Math.min(...loads).toFixed(1)}-${Math.max(...loads).toFixed(1)}.` +
      (Math.max(...others) > 0.2 ? ' Other work was running: expect noise.' : ''),
  );
  if (failures > 0) lines.push('', `WARNING: ${failures} requests failed (non-2xx, errors or timeouts); the numbers above are not valid.`);
  if (options.quick) lines.push('', '--quick: a smoke check with a small pool and short runs; do not quote these numbers.');
  lines.push('', `total ${seconds.toFixed(0)} s`);
  console.log(lines.join('\n'));
  if (failures > 0) process.exitCode = 1;
}

// Run only as the entry point: tiers.bench.ts imports the pieces above (servers, load, CPU accounting).
if (process.argv[1] !== undefined && realpathSync(process.argv[1]) === realpathSync(fileURLToPath(import.meta.url))) {
  const options = parseOptions();
  const cleanup = new Cleanup();
  let interrupted = false;
  process.once('SIGINT', () => {
    interrupted = true;
    log('interrupted: stopping servers and dropping the bench databases');
    void cleanup.run().finally(() => process.exit(130));
  });
  try {
    await main(options, cleanup);
  } catch (error) {
    // After Ctrl-C the cleanup closes what the run was using: those errors are expected, not news.
    if (!interrupted) console.error(error);
    process.exitCode = 1;
  } finally {
    await cleanup.run();
  }
}
