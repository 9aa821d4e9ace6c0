/**
 * Throughput of the audit chain's core (issue 5, benchmark: ≥ 100,000 events/s verified): events
 * made (validated), linked (canonical JSON + SHA-256), and verified, as events per second, single
 * thread, no database. Verification reads rows the way they come back from storage (events parsed
 * from JSON, seq as the text `pg` gives for a bigint, hashes as Buffers), streamed through an async
 * iterator, with a signed checkpoint every 1,000 events compared on the way.
 *
 *   npm run bench:audit
 *   npm run bench:audit -- --events 200000 --rounds 5
 *
 * Each round times every step over the same events; the median and the best round are printed,
 * as the machine is shared and a single round can be far off.
 */
import { generateKeyPairSync } from 'node:crypto';
import { cpus, loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { ChainLinker, verifyChain, type Anchor, type LinkedRow, type StoredRow } from '../src/audit/chain.js';
import { CheckpointSigner, checkpointKeys, verifyCheckpoint } from '../src/audit/checkpoint.js';
import { createAuditEvent, queryFingerprint, type AuditEvent, type AuditEventInput } from '../src/audit/event.js';
import { uuidv7 } from '../src/ids.js';

const HELP = `Usage: npm run bench:audit -- [options]

  --events N     events per round (default 100000)
  --rounds N     rounds; the median and the best are printed (default 5)
`;

const { values: args } = parseArgs({
  options: {
    events: { type: 'string', default: '100000' },
    rounds: { type: 'string', default: '5' },
    help: { type: 'boolean', default: false },
  },
});
if (args.help) {
  process.stdout.write(HELP);
  process.exit(0);
}
const positive = (name: string, text: string): number => {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer`);
  return n;
};
const EVENTS = positive('events', args.events);
const ROUNDS = positive('rounds', args.rounds);
const CHECKPOINT_EVERY = 1000;
const TARGET_VERIFY = 100_000;

const tenantId = uuidv7();
const fingerprint = queryFingerprint({ filter: { status: ['eq'] }, sort: '-createdAt', limit: 50 });

/** A realistic mix: 2/3 single-record reads and writes, 1/3 list reads with a query fingerprint. */
function input(i: number): AuditEventInput {
  return {
    time: new Date(1_764_000_000_000 + i).toISOString(),
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

const inputs = Array.from({ length: EVENTS }, (_, i) => input(i));
const { privateKey } = generateKeyPairSync('ed25519');
const signer = new CheckpointSigner(privateKey);
const keys = checkpointKeys(signer.publicKey);

function perSecond(count: number, ms: number): number {
  return Math.round((count / ms) * 1000);
}

const results = { create: [] as number[], link: [] as number[], verify: [] as number[], verifyWitnessed: [] as number[] };
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
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const best = (xs: number[]) => Math.max(...xs);
const fmt = (n: number) => n.toLocaleString('en-US').padStart(10);

console.log(`audit chain: ${EVENTS.toLocaleString('en-US')} events per round, ${ROUNDS} rounds; ${cpus().length} CPUs, load ${loadavg()[0]!.toFixed(2)}; Node ${process.version}`);
console.log('step                                        median events/s     best events/s');
console.log(`create (validate + copy + freeze)         ${fmt(median(results.create))}        ${fmt(best(results.create))}`);
console.log(`link (canonical JSON + SHA-256)           ${fmt(median(results.link))}        ${fmt(best(results.link))}`);
console.log(`verify (streamed rows)                    ${fmt(median(results.verify))}        ${fmt(best(results.verify))}`);
console.log(`verify + checkpoint every ${CHECKPOINT_EVERY}            ${fmt(median(results.verifyWitnessed))}        ${fmt(best(results.verifyWitnessed))}`);
const verdict = median(results.verifyWitnessed) >= TARGET_VERIFY ? 'meets' : 'MISSES';
console.log(`target: verify >= ${TARGET_VERIFY.toLocaleString('en-US')} events/s: ${verdict} it (median, with checkpoints)`);
