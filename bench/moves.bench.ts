/**
 * Online tenant moves (issue 3, benchmark): copy throughput (rows/s) and the write pause of a
 * move of a 100,000-record tenant on real PostgreSQL, while the tenant is written and read.
 *
 *   npm run bench:moves
 *   npm run bench:moves -- --records 100000 --writers 4 --moves pool:bridge,bridge:silo,silo:pool
 *
 * A throw-away database gets Bulkhead's schema and one tenant with a collection holding a unique
 * and an indexed field (so a record is three rows: the record, its unique value and its index
 * value), bulk-loaded through the tenant's own scope. Each move then runs in-process through the
 * product's `Moves`, while `--writers` loops create records through `Records.create` and one loop
 * reads; a write refused because of the pause (TENANT_WRITES_PAUSED) is counted and the longest
 * stretch of refusals, as a writer saw it, is reported next to the pause the mover recorded.
 * As the API does (`--audit on`, the default), each write appends its audit event in its own
 * transaction and each read is answered once its event is durable (the group-commit writer), so
 * the tenant's audit chain grows during the move and is moved with it. Printed too: where the
 * pause went (the mover's `progress.pauseSteps`), the longest read seen, the 1-minute load average.
 *
 * Environment: BULKHEAD_BENCH_DATABASE_URL, a superuser URL of a PostgreSQL 15+ server (default
 * postgres://postgres@127.0.0.1:5432/postgres). Everything made is dropped at the end (also on
 * an error or Ctrl-C): the database, silo databases, the per-tenant and deployment roles.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { generateOperatorToken } from '../src/access/operator-tokens.js';
import { createAuditEvent, queryFingerprint } from '../src/audit/event.js';
import { Bulkhead } from '../src/bulkhead.js';
import { loadConfig } from '../src/config.js';
import { createBenchDatabase } from './dataset.js';
import { benchAdminUrl } from './support.js';
import { BulkheadError } from '../src/errors.js';
import type { MoveView } from '../src/placement/moves.js';
import type { TierName } from '../src/placement/tier.js';

const HELP = `Usage: npm run bench:moves -- [options]

  --records N    records of the moved tenant (default 100000)
  --writers N    concurrent writer loops during the moves (default 4)
  --batch N      records (or rows of the other tables) per copy batch (default 2000, the product's default)
  --moves LIST   moves to run in order, from:to (default pool:bridge,bridge:silo,silo:pool)
  --audit on|off audit every write and read as the API does (default on)
  --help

Environment: BULKHEAD_BENCH_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres).`;

const TARGET_ROWS_PER_S = 20_000;
const TARGET_PAUSE_MS = 1_000;

interface Options {
  readonly adminUrl: string;
  readonly records: number;
  readonly writers: number;
  readonly batch: number;
  readonly moves: ReadonlyArray<readonly [TierName, TierName]>;
  readonly audit: boolean;
}

function options(): Options {
  const { values } = parseArgs({
    options: {
      records: { type: 'string' },
      writers: { type: 'string' },
      batch: { type: 'string' },
      moves: { type: 'string' },
      audit: { type: 'string' },
      help: { type: 'boolean' },
    },
  });
  if (values.help) {
    console.log(HELP);
    process.exit(0);
  }
  const int = (v: string | undefined, fallback: number, name: string, min: number, max: number): number => {
    const n = v === undefined ? fallback : Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${name} must be an integer from ${min} to ${max}`);
    return n;
  };
  const moves = (values.moves ?? 'pool:bridge,bridge:silo,silo:pool').split(',').map((m) => {
    const [from, to] = m.split(':');
    const tiers = ['pool', 'bridge', 'silo'];
    if (!tiers.includes(from!) || !tiers.includes(to!) || from === to) throw new Error(`--moves: "${m}" is not from:to with two different tiers`);
    return [from, to] as [TierName, TierName];
  });
  if (values.audit !== undefined && values.audit !== 'on' && values.audit !== 'off') throw new Error('--audit must be on or off');
  for (let i = 1; i < moves.length; i++) {
    if (moves[i]![0] !== moves[i - 1]![1]) throw new Error('--moves: each move must start where the previous one ended');
  }
  return {
    adminUrl: benchAdminUrl(),
    records: int(values.records, 100_000, 'records', 1, 5_000_000),
    writers: int(values.writers, 4, 'writers', 0, 64),
    batch: int(values.batch, 2_000, 'batch', 10, 100_000),
    moves,
    audit: values.audit !== 'off',
  };
}

const fmt = (n: number): string => Math.round(n).toLocaleString('en-US');

/** The 1-minute load average: another process's benchmark on this machine changes every number here. */
const loadAverage = (): string => readFileSync('/proc/loadavg', 'utf8').split(' ')[0]!;

/** When each state of a move began, from the mover's step observer. */
type Timeline = Map<string, number>;

async function run(o: Options): Promise<void> {
  const db = await createBenchDatabase(o.adminUrl);
  const dataDir = db.dataDir;

  let bh: Bulkhead | undefined;
  const cleanup = async () => {
    await bh?.close().catch(() => {});
    await db.drop();
  };
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      void cleanup().finally(() => process.exit(130));
    });
  }

  const timelines = new Map<string, Timeline>();
  try {
    bh = await Bulkhead.open(
      loadConfig({}, {
        DATABASE_URL: db.url,
        BULKHEAD_DATA_DIR: dataDir,
        BULKHEAD_OWNER_ROLE: db.ownerRole,
        BULKHEAD_APP_ROLE: db.appRole,
        BULKHEAD_OPERATOR_TOKEN: generateOperatorToken(),
        BULKHEAD_JWT_SECRET: randomBytes(32).toString('base64url'),
        BULKHEAD_LOG_LEVEL: 'silent',
      }),
      {
        moves: {
          batchSize: o.batch,
          onStep: (m: MoveView) => {
            const t = timelines.get(m.id) ?? new Map<string, number>();
            if (!t.has(m.state)) t.set(m.state, performance.now());
            timelines.set(m.id, t);
            if (process.stdout.isTTY && m.state === 'copying') process.stdout.write(`\r  copying ${m.progress.percent}%   `);
          },
        },
      },
    );
    const tenant = await bh.tenants.create({ slug: 'moved', name: 'moved', tier: o.moves[0]![0] }, 'operator:bench');
    await bh.collections.define(
      tenant.id,
      'items',
      { fields: { title: { type: 'string', required: true, unique: true }, n: { type: 'integer', indexed: true }, note: { type: 'text' } } },
      'bench',
    );
    const loadStart = performance.now();
    for (let i = 0; i < o.records; i += 20_000) {
      const n = Math.min(20_000, o.records - i);
      await bh.placements.tenant(tenant.id, { write: true }).batch([
        {
          text:
            'INSERT INTO records (tenant_id, collection, id, data, schema_version, created_by, updated_by) ' +
            "SELECT $1, 'items', gen_random_uuid(), jsonb_build_object('title', 'r' || g, 'n', g % 1000, 'note', repeat('x', 20 + g % 80)), 1, 'bench', 'bench' " +
            'FROM generate_series($2::int, $3::int) g',
          values: [tenant.id, i + 1, i + n],
        },
        {
          text:
            "INSERT INTO unique_values (tenant_id, collection, field, key, record_id) SELECT tenant_id, collection, 'title', bulkhead.value_key(data -> 'title'), id " +
            "FROM records WHERE tenant_id = $1 AND collection = 'items' AND (data ->> 'n')::int >= 0 AND NOT EXISTS " +
            "(SELECT 1 FROM unique_values u WHERE u.tenant_id = $1 AND u.collection = 'items' AND u.record_id = records.id)",
          values: [tenant.id],
        },
        {
          text:
            "INSERT INTO index_values (tenant_id, collection, field, key, record_id) SELECT r.tenant_id, r.collection, 'n', bulkhead.value_key(r.data -> 'n'), r.id " +
            "FROM records r WHERE r.tenant_id = $1 AND r.collection = 'items' AND NOT EXISTS " +
            "(SELECT 1 FROM index_values x WHERE x.tenant_id = $1 AND x.collection = 'items' AND x.field = 'n' AND x.record_id = r.id)",
          values: [tenant.id],
        },
      ]);
    }
    console.log(`tenant with ${fmt(o.records)} records (${fmt(o.records * 3)} rows with their unique and index values) loaded in ${((performance.now() - loadStart) / 1000).toFixed(1)} s`);
    console.log(`moves under load: ${o.writers} writer loop(s) creating records, 1 reader loop, audit ${o.audit ? 'on' : 'off'}; load average ${loadAverage()}\n`);
    // As the API records them: a write's event in its transaction, a read's through the group commit.
    const principal = { subject: 'bench', roles: ['tenant_member'], authMethod: 'jwt' as const };
    const decision = { effect: 'allow' as const, policyIds: ['bench'] };
    let requests = 0;
    const writeAudit = o.audit
      ? () => {
          const requestId = `bench-${++requests}`;
          return {
            log: bh!.audit,
            event: (recordId: string) =>
              createAuditEvent({ tenantId: tenant.id, principal, action: 'record.create', collection: 'items', recordIds: [recordId], decision, requestId, sourceAddress: '127.0.0.1', outcome: 'success' }),
          };
        }
      : () => undefined;

    const rows: string[][] = [];
    const steps: string[] = [];
    let live = 0;
    for (const [from, to] of o.moves) {
      // Load during the move: writers and a reader, until the move ends.
      let running = true;
      let written = 0;
      let refused = 0;
      let reads = 0;
      let longestRefusalMs = 0;
      const writer = async () => {
        let refusedSince: number | undefined;
        while (running) {
          try {
            await bh!.records.create({ tenantId: tenant.id, subject: 'bench' }, 'items', { title: `live-${live++}`, n: -1 }, writeAudit());
            written += 1;
            if (refusedSince !== undefined) longestRefusalMs = Math.max(longestRefusalMs, performance.now() - refusedSince);
            refusedSince = undefined;
          } catch (error) {
            if (!(error instanceof BulkheadError && error.code === 'TENANT_WRITES_PAUSED')) throw error;
            refused += 1;
            refusedSince ??= performance.now();
            await new Promise((resolve) => setTimeout(resolve, 5));
          }
        }
      };
      let longestReadMs = 0;
      const reader = async () => {
        while (running) {
          const begun = performance.now();
          const page = await bh!.records.list(tenant.id, 'items', { limit: '20' });
          if (o.audit) {
            await bh!.audit.record(
              createAuditEvent({
                tenantId: tenant.id,
                principal,
                action: 'record.list',
                collection: 'items',
                query: { fingerprint: queryFingerprint(page.fingerprint), rowCount: page.records.length },
                decision,
                requestId: `bench-${++requests}`,
                sourceAddress: '127.0.0.1',
                outcome: 'success',
              }),
            );
          }
          longestReadMs = Math.max(longestReadMs, performance.now() - begun);
          reads += 1;
        }
      };
      const loadBefore = loadAverage();
      const started = performance.now();
      const move = await bh.moveTenant(tenant.id, { tier: to }, 'operator:bench');
      const load = Promise.all([...Array.from({ length: o.writers }, writer), reader()]);
      // A writer's unexpected error is thrown where the load is awaited, after the move, so that the
      // cleanup below still runs (unhandled meanwhile, it ended the process and left the databases).
      load.catch(() => {});
      await bh.moves.wait(move.id);
      running = false;
      await load;
      const end = await bh.moves.get(tenant.id, move.id);
      if (end.state !== 'done') throw new Error(`the move ${from} → ${to} ended ${end.state}: ${end.error}`);
      if (process.stdout.isTTY) process.stdout.write('\r                    \r');
      const t = timelines.get(move.id)!;
      const copyMs = (t.get('verifying') ?? 0) - (t.get('copying') ?? 0);
      const rate = end.progress.copied / (copyMs / 1000);
      const pause = end.progress.pauseMs ?? Number.NaN;
      const breakdown = Object.entries(end.progress.pauseSteps ?? {})
        .map(([name, ms]) => `${name} ${fmt(ms)}`)
        .join(', ');
      const records = end.progress.pauseRecords === undefined ? '' : `, ${fmt(end.progress.pauseRecords)} records copied under the pause`;
      steps.push(`${from} → ${to}: ${breakdown || '(not recorded)'} (${end.progress.checksumScan ?? '?'} checksums${records}; load ${loadBefore} → ${loadAverage()})`);
      rows.push([
        `${from} → ${to}`,
        fmt(end.progress.copied),
        `${(copyMs / 1000).toFixed(2)} s`,
        fmt(rate),
        fmt(end.progress.synced ?? 0),
        `${fmt(pause)} ms`,
        `${fmt(longestRefusalMs)} ms`,
        `${fmt(longestReadMs)} ms`,
        `${((performance.now() - started) / 1000).toFixed(1)} s`,
        `${fmt(written)} / ${fmt(refused)} / ${fmt(reads)}`,
      ]);
    }

    const header = ['move', 'rows copied', 'copy time', 'rows/s', 'synced', 'write pause', 'longest refusal seen', 'longest read', 'whole move', 'writes ok / paused / reads'];
    const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
    const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ');
    console.log(line(header));
    for (const r of rows) console.log(line(r));
    console.log('\nunder the pause, ms per step (parallel steps overlap):');
    for (const s of steps) console.log(`  ${s}`);
    const rates = rows.map((r) => Number(r[3]!.replace(/,/g, '')));
    const pauses = rows.map((r) => Number(r[5]!.replace(/[, ms]/g, '')));
    console.log('');
    console.log(`copy throughput: min ${fmt(Math.min(...rates))} rows/s; target >= ${fmt(TARGET_ROWS_PER_S)}: ${Math.min(...rates) >= TARGET_ROWS_PER_S ? 'met' : 'NOT met'}`);
    console.log(`write pause: max ${fmt(Math.max(...pauses))} ms; target < ${fmt(TARGET_PAUSE_MS)} ms: ${Math.max(...pauses) < TARGET_PAUSE_MS ? 'met' : 'NOT met'}`);
  } finally {
    await cleanup();
  }
}

await run(options());
