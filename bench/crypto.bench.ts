/**
 * Per-field cost of field encryption and the blind index (issue 4, benchmark): µs per field for
 * encrypt, decrypt, blind index, and encrypt + index, for a short (20 B) and a longer (200 B)
 * string, against the target ≤ 5 µs per field for encrypt + HMAC.
 *
 *   npm run bench:crypto
 *   npm run bench:crypto -- --iterations 200000 --rounds 5
 *
 * Beside the module's calls it times the same work as bare node:crypto calls with every input
 * prepared in advance (the floor the module cannot go below), and the module with the key given
 * as bytes instead of a KeyObject. Variants run interleaved, round after round, and the median
 * and the best round are printed: the machine is shared, so a single round can be far off.
 * CPU only, single thread; no database.
 */
import { createCipheriv, createHmac, createSecretKey, randomBytes, type KeyObject } from 'node:crypto';
import { cpus, loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { blindIndex } from '../src/crypto/blind-index.js';
import { decryptField, encryptField, fieldAssociatedData, type FieldBinding } from '../src/crypto/field-cipher.js';

const HELP = `Usage: npm run bench:crypto -- [options]

  --iterations N   calls per variant and round (default 200000)
  --warmup N       calls per variant before the first round (default 20000)
  --rounds N       rounds; the median and the best are printed (default 5)
`;

const { values: args } = parseArgs({
  options: {
    iterations: { type: 'string', default: '200000' },
    warmup: { type: 'string', default: '20000' },
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
const ITERATIONS = positive('iterations', args.iterations);
const WARMUP = positive('warmup', args.warmup);
const ROUNDS = positive('rounds', args.rounds);
const TARGET_US = 5;

const dataKeyBytes = randomBytes(32);
const dataKey: KeyObject = createSecretKey(dataKeyBytes);
const indexKeyBytes = randomBytes(32);
const indexKey: KeyObject = createSecretKey(indexKeyBytes);
const binding: FieldBinding = {
  tenantId: '0191e5a0-7c2a-7b3d-9e4f-0a1b2c3d4e5f',
  collection: 'patients',
  field: 'email',
  recordId: '0191e5a1-1111-7111-8111-111111111111',
};
const scope = { collection: binding.collection, field: binding.field };

/** A string of `bytes` bytes of JSON-safe ASCII (its JSON text is 2 bytes longer: the quotes). */
const text = (bytes: number) => 'abcdefghijklmnopqrstuvwxyz0123456789'.repeat(Math.ceil(bytes / 36)).slice(0, bytes);

type Variant = { name: string; run: () => unknown };

function variantsFor(value: string): Variant[] {
  const ciphertext = encryptField(dataKey, 1, binding, value);
  const aad = fieldAssociatedData(binding, 1);
  const plaintext = Buffer.from(JSON.stringify(value), 'utf8');
  const iv = randomBytes(12);
  return [
    { name: 'encrypt', run: () => encryptField(dataKey, 1, binding, value) },
    { name: 'decrypt', run: () => decryptField(dataKey, 1, binding, ciphertext) },
    { name: 'blind index', run: () => blindIndex(indexKey, scope, value) },
    { name: 'encrypt + index', run: () => [encryptField(dataKey, 1, binding, value), blindIndex(indexKey, scope, value)] },
    {
      name: 'encrypt + index, keys as bytes',
      run: () => [encryptField(dataKeyBytes, 1, binding, value), blindIndex(indexKeyBytes, scope, value)],
    },
    {
      name: 'floor: bare AES-GCM + HMAC calls',
      run: () => {
        const c = createCipheriv('aes-256-gcm', dataKey, iv);
        c.setAAD(aad);
        c.update(plaintext);
        c.final();
        c.getAuthTag();
        return createHmac('sha256', indexKey).update(plaintext).digest();
      },
    },
  ];
}

/** µs per call: wall clock, and CPU time of the process (user + system), which a busy machine inflates less. */
function timeOnce(run: () => unknown, n: number): { wall: number; cpu: number } {
  let sink = 0;
  const cpu0 = process.cpuUsage();
  const start = process.hrtime.bigint();
  for (let i = 0; i < n; i++) if (run() !== undefined) sink++;
  const ns = Number(process.hrtime.bigint() - start);
  const cpu = process.cpuUsage(cpu0);
  if (sink !== n) throw new Error('a variant returned nothing');
  return { wall: ns / n / 1000, cpu: (cpu.user + cpu.system) / n };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

const sizes = [
  { label: 'short (20 B)', value: text(20) },
  { label: 'long (200 B)', value: text(200) },
];
console.log(
  `crypto bench: Node ${process.version}, ${cpus().length} CPUs (${cpus()[0]?.model ?? '?'}), ` +
    `load average ${loadavg().map((l) => l.toFixed(2)).join(' ')}; ${ITERATIONS} calls × ${ROUNDS} rounds, ${WARMUP} warm-up`,
);
let verdictUs = 0;
for (const { label, value } of sizes) {
  const variants = variantsFor(value);
  for (const v of variants) timeOnce(v.run, WARMUP);
  const samples = variants.map(() => ({ wall: [] as number[], cpu: [] as number[] }));
  for (let r = 0; r < ROUNDS; r++) {
    variants.forEach((v, i) => {
      const t = timeOnce(v.run, ITERATIONS);
      samples[i]!.wall.push(t.wall);
      samples[i]!.cpu.push(t.cpu);
    });
  }
  console.log(`\n${label.padEnd(46)} µs per field: wall median, wall best, CPU median`);
  variants.forEach((v, i) => {
    const wall = median(samples[i]!.wall);
    const best = Math.min(...samples[i]!.wall);
    const cpu = median(samples[i]!.cpu);
    if (v.name === 'encrypt + index') verdictUs = Math.max(verdictUs, wall);
    console.log(`  ${v.name.padEnd(44)} ${wall.toFixed(2).padStart(6)} ${best.toFixed(2).padStart(6)} ${cpu.toFixed(2).padStart(6)}`);
  });
}
console.log(
  `\ntarget: encrypt + index ≤ ${TARGET_US} µs per field: ${verdictUs <= TARGET_US ? 'MET' : 'NOT MET'} ` +
    `(worst median ${verdictUs.toFixed(2)} µs; load average now ${loadavg()[0]!.toFixed(2)})`,
);
