/**
 * Throughput of the audit trail (issue 5, benchmark), in two parts:
 *
 * 1. The chain's core, single thread, no database (target: ≥ 100,000 events/s verified): events
 *    made (validated), linked (canonical JSON + SHA-256), and verified. Verification reads rows the
 *    way they come back from storage (events parsed from JSON, seq as the text `pg` gives for a
 *    bigint, hashes as Buffers), streamed through an async iterator, with a signed checkpoint every
 *    1,000 events compared on the way; then the same chain as `bh.verifyAudit()` reads it from
 *    PostgreSQL (event as jsonb's text, hashes as hex, time column in ms, pages of 4,000 rows). Each
 *    round times every step over the same events; the median and the best round are printed, as the
 *    machine is shared and a single round can be far off.
 *
 * 2. Appends on real PostgreSQL (target: ≥ 5,000 events/s committed): a throw-away database, one
 *    `Bulkhead` opened in this process as `bulkhead serve` opens it, tenants made through its own
 *    services, then N concurrent callers of `bh.audit.record(createAuditEvent(...))` (the
 *    group-commit writer every read and failure goes through) for a fixed time: first spread over
 *    all tenants at random, then all on one tenant (one chain: its appends are serialized by the
 *    chain's lock, so only batching can carry the load). An event counts once its promise resolved,
 *    i.e. once its transaction committed. Afterwards every chain is verified (`bh.verifyAudit()`,
 *    rows from PostgreSQL and every checkpoint of the witness; target ≥ 100,000 events/s) and its
 *    length compared with what was acknowledged. The verification runs twice (the first is the rate
 *    reported; the second shows what was JIT warm-up), each with the CPU of this process and of its
 *    PostgreSQL backends, and the load average.
 *
 *   npm run bench:audit                         # both parts (~2.5 minutes)
 *   npm run bench:audit -- --quick              # smoke check (~30 s, do not quote)
 *   npm run bench:audit -- --core-only          # part 1 only, no database
 *   npm run bench:audit -- --writers 16,64,256 --duration 15
 *
 * Targets are printed as MET / NOT MET, never asserted. The database and its roles are dropped at
 * the end, also on an error, Ctrl-C, SIGTERM or after --max-minutes. All traffic goes to 127.0.0.1.
 */
import { generateKeyPairSync } from 'node:crypto';
import { availableParallelism, cpus, loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { ChainLinker, verifyChain, verifyEncodedChain, type Anchor, type EncodedRow, type LinkedRow, type StoredRow } from '../src/audit/chain.js';
import { CheckpointSigner, checkpointKeys, verifyCheckpoint } from '../src/audit/checkpoint.js';
import { createAuditEvent, queryFingerprint, type AuditEvent, type AuditEventInput } from '../src/audit/event.js';
import { Bulkhead } from '../src/bulkhead.js';
import { DEFAULT_POOL_SIZE, loadConfig } from '../src/config.js';
import { uuidv7 } from '../src/ids.js';
import { Cleanup, cpuDelta, describeServer, snapshot, type Server } from './isolation.bench.js';
import { benchAdminUrl, benchLog, createDeployment, fmtInt, fmtMs, mean, percentile, positiveInt } from './support.js';

const HELP = `Usage: npm run bench:audit -- [options]

The chain's core (no database):
  --events N         events per round (default 100000; --quick: 20000)
  --rounds N         rounds; the median and the best are printed (default 5; --quick: 3)

Appends on PostgreSQL (the group-commit writer, bh.audit.record):
  --tenants N        tenants the spread runs pick from at random (default 100; --quick: 20)
  --writers LIST     concurrent callers of each run (default 64,256)
  --duration S       seconds of each measured run (default 10; --quick: 3)
  --warmup S         seconds of discarded appends before each measured run (default 1)
  --append-rounds N  measured runs of each configuration (default 2; --quick: 1)
  --max-minutes M    stop, clean up and exit 124 after M minutes (default 15)

  --core-only        the chain's core only (no database)
  --append-only      the PostgreSQL part only
  --quick            fewer events, tenants and shorter runs: a smoke check, not a measurement
  --help

Environment: BULKHEAD_BENCH_DATABASE_URL, a superuser URL of a PostgreSQL 15+ server on this machine
(default postgres://postgres@127.0.0.1:5432/postgres). A database bhbench_* and its roles are created and dropped.`;

/** Issue 5: verification of at least this many events per second. */
const TARGET_VERIFY = 100_000;
/** Issue 5: appends (committed, acknowledged) of at least this many events per second with many concurrent writers. */
const TARGET_APPEND = 5_000;
const CHECKPOINT_EVERY = 1000;
/** The product's defaults, so the numbers are those of a default deployment. */
const POOL_SIZE = DEFAULT_POOL_SIZE;
const PARTITIONS = 16;
const SETUP_CONCURRENCY = 8;

interface Options {
  readonly events: number;
  readonly rounds: number;
  readonly tenants: number;
  readonly writers: readonly number[];
  readonly duration: number;
  readonly warmup: number;
  readonly appendRounds: number;
  readonly maxMinutes: number;
  readonly core: boolean;
  readonly append: boolean;
  readonly quick: boolean;
  readonly adminUrl: string;
}

function parseOptions(): Options {
  const { values } = parseArgs({
    options: {
      events: { type: 'string' },
      rounds: { type: 'string' },
      tenants: { type: 'string' },
      writers: { type: 'string' },
      duration: { type: 'string' },
      warmup: { type: 'string' },
      'append-rounds': { type: 'string' },
      'max-minutes': { type: 'string' },
      'core-only': { type: 'boolean', default: false },
      'append-only': { type: 'boolean', default: false },
      quick: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    console.log(HELP);
    process.exit(0);
  }
  if (values['core-only'] && values['append-only']) throw new Error('--core-only and --append-only exclude each other');
  const quick = values.quick === true;
  // The core alone needs no database: no server is checked.
  const adminUrl = values['core-only'] ? '' : benchAdminUrl();
  return {
    events: positiveInt(values.events, quick ? 20_000 : 100_000, 'events'),
    rounds: positiveInt(values.rounds, quick ? 3 : 5, 'rounds'),
    tenants: positiveInt(values.tenants, quick ? 20 : 100, 'tenants'),
    writers: (values.writers ?? '64,256').split(',').map((s) => positiveInt(s.trim(), 0, 'writers')),
    duration: positiveInt(values.duration, quick ? 3 : 10, 'duration'),
    warmup: positiveInt(values.warmup, 1, 'warmup', 0),
    appendRounds: positiveInt(values['append-rounds'], quick ? 1 : 2, 'append-rounds'),
    maxMinutes: positiveInt(values['max-minutes'], 15, 'max-minutes'),
    core: !values['append-only'],
    append: !values['core-only'],
    quick,
    adminUrl,
  };
}

const log = benchLog('audit');
const median = (xs: readonly number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const best = (xs: readonly number[]) => Math.max(...xs);
const perSecond = (count: number, ms: number) => Math.round((count / ms) * 1000);

/** JSON text as PostgreSQL's jsonb writes it: members by name length then bytes, `": "` and `", "`. */
function jsonbText(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(jsonbText).join(', ')}]`;
  if (value !== null && typeof value === 'object') {
    const names = Object.keys(value).sort((a, b) => Buffer.byteLength(a) - Buffer.byteLength(b) || Buffer.compare(Buffer.from(a), Buffer.from(b)));
    return `{${names.map((k) => `${JSON.stringify(k)}: ${jsonbText((value as Record<string, unknown>)[k])}`).join(', ')}}`;
  }
  return JSON.stringify(value);
}

const fingerprint = queryFingerprint({ filter: { status: ['eq'] }, sort: '-createdAt', limit: 50 });

/** A realistic mix: 2/3 single-record reads and writes, 1/3 list reads with a query fingerprint. */
function eventInput(tenantId: string, i: number, time?: string): AuditEventInput {
  return {
    ...(time !== undefined ? { time } : {}),
    tenantId,
    principal: { subject: `user-${i % 997}`, roles: ['member'], authMethod: 'jwt' },
    action: i % 3 === 0 ? 'record.list' : i % 3 === 1 ? 'record.read' : 'record.update',
    collection: 'patients',
    ...(i % 3 === 0 ? { query: { fingerprint, rowCount: i % 50 } } : { recordIds: [uuidv7()] }),
    decision: { effect: 'allow', policyIds: ['role.member'] },
    requestId: `0193${i.toString(16).padStart(12, '0')}`,
    sourceAddress: '198.51.100.23',
    outcome: 'success',
  };
}

// ---------------------------------------------------------------------------------------------
// Part 1: the chain's core, no database.

async function coreBench(options: Options): Promise<string[]> {
  const { events: EVENTS, rounds: ROUNDS } = options;
  const tenantId = uuidv7();
  const inputs = Array.from({ length: EVENTS }, (_, i) => eventInput(tenantId, i, new Date(1_764_000_000_000 + i).toISOString()));
  const { privateKey } = generateKeyPairSync('ed25519');
  const signer = new CheckpointSigner(privateKey);
  const keys = checkpointKeys(signer.publicKey);

  const results = { create: [] as number[], link: [] as number[], verify: [] as number[], verifyWitnessed: [] as number[], verifyEncoded: [] as number[] };
  for (let round = 0; round < ROUNDS; round++) {
    let t = performance.now();
    const events: AuditEvent[] = inputs.map((x) => createAuditEvent(x));
    results.create.push(perSecond(EVENTS, performance.now() - t));

    const linker = new ChainLinker(tenantId);
    t = performance.now();
    const linked: LinkedRow[] = new Array(EVENTS);
    for (let i = 0; i < EVENTS; i++) linked[i] = linker.append(events[i]!);
    results.link.push(perSecond(EVENTS, performance.now() - t));

    // As storage returns them: a fresh object per row, the event parsed from its stored JSON.
    const stored: StoredRow[] = linked.map((r) => ({ seq: String(r.seq), prevHash: Buffer.from(r.prevHash), hash: Buffer.from(r.hash), event: JSON.parse(r.json) }));
    // Checkpoints as the witness yields them: each line's signature verified when it is reached.
    const lines = stored
      .filter((_, i) => (i + 1) % CHECKPOINT_EVERY === 0)
      .map((r) => JSON.stringify(signer.sign({ chain: tenantId, seq: Number(r.seq), hash: r.hash })));
    async function* rows() {
      for (const r of stored) yield r;
    }
    async function* anchors(): AsyncGenerator<Anchor> {
      for (const line of lines) {
        const cp = verifyCheckpoint(JSON.parse(line), keys);
        yield { seq: cp.seq, hash: Buffer.from(cp.hash, 'hex') };
      }
    }

    t = performance.now();
    const plain = await verifyChain(rows(), { chain: tenantId });
    results.verify.push(perSecond(EVENTS, performance.now() - t));
    if (!plain.ok) throw new Error(`the benchmark chain does not verify: ${plain.divergence.message}`);

    t = performance.now();
    const witnessed = await verifyChain(rows(), { chain: tenantId, anchors: anchors() });
    results.verifyWitnessed.push(perSecond(EVENTS, performance.now() - t));
    if (!witnessed.ok || witnessed.checkpoints !== lines.length) throw new Error('the benchmark chain does not verify against its checkpoints');

    // As `bh.verifyAudit()` reads them from PostgreSQL: hashes as hex, the event as jsonb's text
    // (its own member order and spacing), the time column in ms, in pages of 4,000 rows.
    const encoded: EncodedRow[] = linked.map((r) => ({
      seq: String(r.seq),
      prevHash: r.prevHash.toString('hex'),
      hash: r.hash.toString('hex'),
      // Through a Buffer, so the text is one flat string as pg's reader makes it.
      event: Buffer.from(jsonbText(JSON.parse(r.json))).toString('utf8'),
      timeMs: String(Date.parse(r.time)),
    }));
    async function* pages() {
      for (let i = 0; i < encoded.length; i += 4000) yield encoded.slice(i, i + 4000);
    }
    t = performance.now();
    const fromText = await verifyEncodedChain(pages(), { chain: tenantId, anchors: anchors() });
    results.verifyEncoded.push(perSecond(EVENTS, performance.now() - t));
    if (!fromText.ok || fromText.checkpoints !== lines.length) throw new Error('the benchmark chain does not verify from its database form');
  }

  const fmt = (n: number) => n.toLocaleString('en-US').padStart(10);
  const verdict = median(results.verifyWitnessed) >= TARGET_VERIFY ? 'MET' : 'NOT MET';
  return [
    `Part 1, the chain's core: ${EVENTS.toLocaleString('en-US')} events per round, ${ROUNDS} rounds, single thread, no database`,
    'step                                        median events/s     best events/s',
    `create (validate + copy + freeze)         ${fmt(median(results.create))}        ${fmt(best(results.create))}`,
    `link (canonical JSON + SHA-256)           ${fmt(median(results.link))}        ${fmt(best(results.link))}`,
    `verify (streamed rows)                    ${fmt(median(results.verify))}        ${fmt(best(results.verify))}`,
    `verify + checkpoint every ${CHECKPOINT_EVERY}            ${fmt(median(results.verifyWitnessed))}        ${fmt(best(results.verifyWitnessed))}`,
    `verify database rows + checkpoints         ${fmt(median(results.verifyEncoded))}        ${fmt(best(results.verifyEncoded))}`,
    `target: verify >= ${TARGET_VERIFY.toLocaleString('en-US')} events/s (median, with checkpoints): ${verdict}`,
    'database rows: as bh.verifyAudit() reads them (event as jsonb text, hashes as hex, time in ms, pages of 4,000), see Part 2',
  ];
}

// ---------------------------------------------------------------------------------------------
// Part 2: appends on PostgreSQL through the group-commit writer.

/** Which chains the callers of a run append to. */
type Spread = 'spread' | 'one';

/** One measured run of the append benchmark. */
interface AppendRun {
  readonly spread: Spread;
  readonly writers: number;
  readonly round: number;
  readonly eventsPerSecond: number;
  readonly p50: number;
  readonly p99: number;
  readonly failed: number;
  /** Events per committed transaction (the group commit's batch), from the transactions counted. */
  readonly perCommit: number;
  /** CPU µs per event: this process (Bulkhead and the callers), its PostgreSQL backends. */
  readonly cpu: { readonly process: number; readonly db: number };
  readonly other: number;
  readonly load: number;
}

/**
 * Appends from `writers` concurrent callers for `seconds`, each caller awaiting its event before
 * sending the next (as a request does), and counts what was acknowledged per chain in `acked`.
 * Returns the acknowledged events, their latencies (ms) and the failures.
 */
async function appendFor(
  bh: Bulkhead,
  tenantIds: readonly string[],
  writers: number,
  seconds: number,
  acked: Map<string, number>,
  counter: { next: number },
): Promise<{ ok: number; latencies: number[]; failed: number; ms: number }> {
  const latencies: number[] = [];
  let ok = 0;
  let failed = 0;
  const started = performance.now();
  const deadline = started + seconds * 1000;
  const caller = async () => {
    while (performance.now() < deadline) {
      const tenantId = tenantIds.length === 1 ? tenantIds[0]! : tenantIds[Math.floor(Math.random() * tenantIds.length)]!;
      const t0 = performance.now();
      try {
        // Made here, as a request makes its event: its validation is part of the cost.
        await bh.audit.record(createAuditEvent(eventInput(tenantId, counter.next++)));
        latencies.push(performance.now() - t0);
        acked.set(tenantId, (acked.get(tenantId) ?? 0) + 1);
        ok++;
      } catch (error) {
        if (failed++ === 0) log(`  an append failed: ${String(error)}`);
      }
    }
  };
  await Promise.all(Array.from({ length: writers }, caller));
  // Until the last caller's event committed: the rate is of what was acknowledged in that time.
  return { ok, latencies, failed, ms: performance.now() - started };
}

async function appendBench(options: Options, cleanup: Cleanup): Promise<string[]> {
  const { db, env } = await createDeployment(options.adminUrl, cleanup, { partitions: PARTITIONS, poolSize: POOL_SIZE });

  log(`database ${db.name}: migrating, ${fmtInt(options.tenants)} tenants`);
  let t0 = performance.now();
  const bh = await Bulkhead.open(loadConfig({}, env));
  cleanup.add(() => bh.close());
  // Instrumentation only (as product-server.ts does): count the transactions the process starts,
  // to report how many events each commit carried.
  const engine = bh.store.engine;
  let transactions = 0;
  const batch = engine.batch.bind(engine);
  const transaction = engine.transaction.bind(engine);
  engine.batch = (statements) => {
    transactions++;
    return batch(statements);
  };
  engine.transaction = (fn) => {
    transactions++;
    return transaction(fn);
  };

  const tenantIds: string[] = new Array(options.tenants);
  let next = 0;
  await Promise.all(
    Array.from({ length: SETUP_CONCURRENCY }, async () => {
      while (next < options.tenants) {
        const t = next++;
        tenantIds[t] = (await bh.tenants.create({ slug: `audit-${t}`, name: `Audit bench tenant ${t}` }, 'bench')).id;
      }
    }),
  );
  const setupSeconds = (performance.now() - t0) / 1000;
  // What the chains held before the runs (whatever making the tenants recorded).
  const before = new Map((await bh.verifyAudit()).tenants.map((c) => [c.chain, c.events]));
  log(`  setup ${setupSeconds.toFixed(1)} s`);

  const stats = new pg.Client({ connectionString: db.url, application_name: 'bulkhead-bench' });
  await stats.connect();
  cleanup.add(() => stats.end());
  // This process is both the product and the load: its CPU is reported as one ("process").
  const self: Server = {
    kind: 'isolated',
    url: '',
    applicationName: 'bulkhead',
    usage: async () => ({ cpuUs: 0, transactions }),
    stop: async () => {},
  };

  const acked = new Map<string, number>();
  const counter = { next: 0 };
  const runs: AppendRun[] = [];
  const configs: { spread: Spread; writers: number }[] = [
    ...options.writers.map((writers) => ({ spread: 'spread' as const, writers })),
    ...options.writers.map((writers) => ({ spread: 'one' as const, writers })),
  ];
  for (let round = 0; round < options.appendRounds; round++) {
    // Later rounds in reverse order, so a drift of the machine hits every configuration alike.
    for (const { spread, writers } of round % 2 === 0 ? configs : [...configs].reverse()) {
      const chains = spread === 'spread' ? tenantIds : [tenantIds[0]!];
      if (options.warmup > 0) await appendFor(bh, chains, writers, options.warmup, acked, counter);
      const s0 = await snapshot(self, stats);
      const r = await appendFor(bh, chains, writers, options.duration, acked, counter);
      const cpu = cpuDelta(s0, await snapshot(self, stats));
      const ok = Math.max(1, r.ok);
      const run: AppendRun = {
        spread,
        writers,
        round,
        eventsPerSecond: (r.ok / r.ms) * 1000,
        p50: percentile(r.latencies, 50),
        p99: percentile(r.latencies, 99),
        failed: r.failed,
        perCommit: cpu.transactions > 0 ? r.ok / cpu.transactions : NaN,
        cpu: { process: cpu.loadgen / ok, db: cpu.db / ok },
        other: cpu.otherShare,
        load: loadavg()[0]!,
      };
      runs.push(run);
      log(
        `  ${spread === 'spread' ? `${fmtInt(options.tenants)} chains` : '1 chain'}, ${writers} writers, round ${round + 1}: ${fmtInt(run.eventsPerSecond)} events/s, ` +
          `p50 ${fmtMs(run.p50)} ms, p99 ${fmtMs(run.p99)} ms, ${run.perCommit.toFixed(1)} events/commit, CPU µs/event process ${Math.round(run.cpu.process)} + db ${Math.round(run.cpu.db)}, ` +
          `other CPU ${(100 * run.other).toFixed(0)}%, load ${run.load.toFixed(1)}` +
          (run.failed ? `, ${run.failed} FAILED` : ''),
      );
    }
  }

  // Every chain recomputed from PostgreSQL and checked against every checkpoint of the witness,
  // after a checkpoint of every chain that moved, so the witness covers every acknowledged event.
  log('  verifying every chain');
  await bh.audit.checkpoint();
  // Twice: the first is the rate reported, the second shows how much of it was JIT warm-up. CPU of
  // this process and of its PostgreSQL backends, and the load, for each: other work on the 2 CPUs
  // shows in them.
  const verifyRuns: Array<{ seconds: number; process: number; db: number; other: number; load: number }> = [];
  let report!: Awaited<ReturnType<Bulkhead['verifyAudit']>>;
  for (let run = 0; run < 2; run++) {
    const s0 = await snapshot(self, stats);
    t0 = performance.now();
    report = await bh.verifyAudit();
    const seconds = (performance.now() - t0) / 1000;
    const cpu = cpuDelta(s0, await snapshot(self, stats));
    verifyRuns.push({ seconds, process: cpu.loadgen, db: cpu.db, other: cpu.otherShare, load: loadavg()[0]! });
    if (!report.ok) break;
  }
  const verifySeconds = verifyRuns[0]!.seconds;
  let mismatched = 0;
  for (const c of report.tenants) {
    if (c.chain === 'platform') continue;
    const expected = (before.get(c.chain) ?? 0) + (acked.get(c.chain) ?? 0);
    if (c.events !== expected) {
      if (mismatched++ < 5) log(`  chain ${c.chain}: ${c.events} events, ${expected} expected`);
    }
  }
  const tenantChains = report.tenants.filter((c) => c.chain !== 'platform');
  const verifiedEvents = report.tenants.reduce((a, c) => a + c.events, 0);
  const checkpoints = report.tenants.reduce((a, c) => a + c.checkpoints, 0);
  const ackedTotal = [...acked.values()].reduce((a, b) => a + b, 0);

  const lines: string[] = [
    `Part 2, appends on PostgreSQL: ${await describeServer(options.adminUrl)}; Bulkhead in this process, pg pool of ${POOL_SIZE}, ${PARTITIONS} partitions, ` +
      `checkpoint every ${fmtInt(bh.config.auditCheckpointEvents)} events per chain; callers await bh.audit.record(createAuditEvent(...)) in a loop; ` +
      `${options.duration} s runs after ${options.warmup} s warm-up, ${options.appendRounds} round(s), setup ${setupSeconds.toFixed(1)} s`,
  ];
  const rows = [['chains', 'writers', 'events/s', 'p50 ms', 'p99 ms', 'events/commit', 'commits/s', 'CPU µs/event: process', 'db', 'other CPU', 'events/s of each run']];
  let failures = 0;
  for (const { spread, writers } of configs) {
    const g = runs.filter((r) => r.spread === spread && r.writers === writers);
    failures += g.reduce((a, r) => a + r.failed, 0);
    rows.push([
      spread === 'spread' ? `${fmtInt(options.tenants)} (random)` : '1',
      String(writers),
      fmtInt(mean(g.map((r) => r.eventsPerSecond))),
      fmtMs(mean(g.map((r) => r.p50))),
      fmtMs(mean(g.map((r) => r.p99))),
      mean(g.map((r) => r.perCommit)).toFixed(1),
      fmtInt(mean(g.map((r) => r.eventsPerSecond / r.perCommit))),
      fmtInt(mean(g.map((r) => r.cpu.process))),
      fmtInt(mean(g.map((r) => r.cpu.db))),
      `${(100 * Math.max(...g.map((r) => r.other))).toFixed(0)}%`,
      g.map((r) => fmtInt(r.eventsPerSecond)).join(' / '),
    ]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  for (const r of rows) lines.push(r.map((c, i) => (i < 1 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd());
  lines.push('', `target: appends >= ${fmtInt(TARGET_APPEND)} events/s with many concurrent writers (mean of the runs)`);
  for (const { spread, writers } of configs) {
    const rate = mean(runs.filter((r) => r.spread === spread && r.writers === writers).map((r) => r.eventsPerSecond));
    lines.push(`  ${(spread === 'spread' ? `${fmtInt(options.tenants)} chains` : '1 chain').padEnd(11)} ${String(writers).padStart(4)} writers  ${fmtInt(rate).padStart(7)} events/s  ${rate >= TARGET_APPEND ? 'MET' : 'NOT MET'}`);
  }
  const verifyRate = (seconds: number) => verifiedEvents / seconds;
  lines.push(
    '',
    `verification (bh.verifyAudit: rows from PostgreSQL, every checkpoint of the witness): ${report.ok ? 'every chain verifies' : 'A CHAIN DOES NOT VERIFY'}; ` +
      `${fmtInt(tenantChains.length)} tenant chains + platform, ${fmtInt(verifiedEvents)} events, ${fmtInt(checkpoints)} checkpoints in ${verifySeconds.toFixed(1)} s ` +
      `(${fmtInt(verifyRate(verifySeconds))} events/s); ${fmtInt(ackedTotal)} events acknowledged, ` +
      (mismatched === 0 ? 'every chain holds exactly what was acknowledged' : `${mismatched} CHAINS DIFFER from what was acknowledged`),
    `  ${verifyRate(verifySeconds) >= TARGET_VERIFY ? 'MET' : 'NOT MET'} (target: verify >= ${fmtInt(TARGET_VERIFY)} events/s); each run: ` +
      verifyRuns
        .map(
          (r, i) =>
            `${i === 0 ? 'first' : 'again'} ${fmtInt(verifyRate(r.seconds))} events/s, CPU µs/event process ${(r.process / verifiedEvents).toFixed(1)} + db ${(r.db / verifiedEvents).toFixed(1)}, ` +
            `other CPU ${(100 * r.other).toFixed(0)}%, load ${r.load.toFixed(1)}`,
        )
        .join('; '),
    '',
    'events/s: events whose record() promise resolved (their transaction committed), per second of the run, until the last caller was answered.',
    'p50/p99: time from record() to its resolution. events/commit: acknowledged events per transaction the process started (checkpoints',
    'included); commits/s: those transactions per second (events/s over events/commit).',
    `CPU µs per event: this process (Bulkhead, its audit log, and the callers making events) and its PostgreSQL backends; other CPU: the highest`,
    `share of the machine's ${availableParallelism()} CPUs used by anything else during a run; 1-min load average ` +
      `${Math.min(...runs.map((r) => r.load)).toFixed(1)}-${Math.max(...runs.map((r) => r.load)).toFixed(1)}.`,
  );
  if (!report.ok) {
    lines.push(`first divergence: ${JSON.stringify(report.firstDivergence)}`);
    process.exitCode = 1;
  }
  if (mismatched > 0 || failures > 0) {
    lines.push(`WARNING: ${failures} appends failed, ${mismatched} chains differ from what was acknowledged; the numbers above are not valid.`);
    process.exitCode = 1;
  }
  return lines;
}

async function main(options: Options, cleanup: Cleanup): Promise<void> {
  const started = performance.now();
  const lines = ['', 'Bulkhead audit trail benchmark', `${cpus().length} CPUs, Node ${process.version}, load ${loadavg()[0]!.toFixed(2)} at start` + (options.quick ? '  [--quick: smoke check, not a measurement]' : '')];
  if (options.core) {
    log(`the chain's core: ${fmtInt(options.events)} events x ${options.rounds} rounds`);
    lines.push('', ...(await coreBench(options)));
  }
  if (options.append) lines.push('', ...(await appendBench(options, cleanup)));
  if (options.quick) lines.push('', '--quick: a smoke check; do not quote these numbers.');
  lines.push('', `total ${((performance.now() - started) / 1000).toFixed(0)} s`);
  console.log(lines.join('\n'));
}

const options = parseOptions();
const cleanup = new Cleanup();
let stopping = false;
const stop = (why: string, code: number) => {
  if (stopping) return;
  stopping = true;
  log(`${why}: closing Bulkhead and dropping the bench database`);
  void cleanup.run().finally(() => process.exit(code));
};
process.once('SIGINT', () => stop('interrupted', 130));
process.once('SIGTERM', () => stop('terminated', 143));
// Bounded by its durations, but a stuck lock or connection must not hold the machine forever.
setTimeout(() => stop(`time limit of ${options.maxMinutes} minutes reached`, 124), options.maxMinutes * 60_000).unref();
try {
  await main(options, cleanup);
} catch (error) {
  if (!stopping) console.error(error);
  process.exitCode = 1;
} finally {
  await cleanup.run();
}
