/**
 * Summarizes V8 CPU profiles written by `npm run bench -- --profile DIR`: self time by area
 * (Bulkhead's own modules, pg, Fastify, Node internals, GC...) and the hottest functions, so a
 * slow request path can be read without opening DevTools. Given the number of requests each
 * server answered (the benchmark prints them), times are shown in µs per request; given two
 * profiles (isolated, then baseline), the areas are compared side by side.
 *
 *   node --import tsx bench/profile-summary.ts ISOLATED.cpuprofile [BASELINE.cpuprofile] [--requests N[,M]] [--top 30]
 *
 * The profiler samples wall-clock time on the main thread: time spent runnable but preempted
 * (frequent on a busy 2-core machine, e.g. right after a loopback `writev` wakes PostgreSQL)
 * counts against the function that was running, so compare the two servers rather than read
 * one in isolation.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
}

interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

interface Summary {
  readonly file: string;
  readonly totalUs: number;
  readonly busyUs: number;
  readonly areas: Map<string, number>;
  readonly functions: Map<string, number>;
}

/** The area a frame belongs to, from its script URL. */
function area(node: ProfileNode): string {
  const { url, functionName } = node.callFrame;
  if (functionName === '(idle)') return 'idle';
  if (functionName === '(garbage collector)') return 'gc';
  if (functionName === '(program)') return 'program (native, unattributed)';
  const m = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (m) return m[1]!;
  const src = /\/(src|bench)\/(.+)$/.exec(url);
  if (src) return `${src[1]}/${src[2]!.split('/')[0]}`;
  if (url.startsWith('node:') || url === '') return 'node internals';
  return url;
}

function summarize(file: string): Summary {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const selfUs = new Map<number, number>();
  for (let i = 0; i < profile.samples.length; i++) {
    const id = profile.samples[i]!;
    selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0));
  }
  let totalUs = 0;
  let idleUs = 0;
  const areas = new Map<string, number>();
  const functions = new Map<string, number>();
  for (const [id, us] of selfUs) {
    const node = byId.get(id)!;
    const a = area(node);
    totalUs += us;
    if (a === 'idle') {
      idleUs += us;
      continue;
    }
    areas.set(a, (areas.get(a) ?? 0) + us);
    const where = node.callFrame.url.replace(/^.*\/(node_modules|src|bench)\//, '$1/');
    const key = `${node.callFrame.functionName || '(anonymous)'}  ${where}:${node.callFrame.lineNumber + 1}`;
    functions.set(key, (functions.get(key) ?? 0) + us);
  }
  return { file, totalUs, busyUs: totalUs - idleUs, areas, functions };
}

const { values, positionals } = parseArgs({ allowPositionals: true, options: { top: { type: 'string' }, requests: { type: 'string' } } });
if (positionals.length < 1 || positionals.length > 2) {
  throw new Error('usage: profile-summary.ts ISOLATED.cpuprofile [BASELINE.cpuprofile] [--requests N[,M]] [--top 30]');
}
const top = Number(values.top ?? 30);
const requests = (values.requests ?? '').split(',').filter(Boolean).map(Number);
const summaries = positionals.map(summarize);
const perRequest = requests.length === summaries.length && requests.every((n) => n > 0);
/** A time as µs per request when request counts were given, else as a share of busy time. */
const show = (us: number, i: number) =>
  perRequest ? `${(us / requests[i]!).toFixed(1).padStart(7)} µs` : `${((100 * us) / summaries[i]!.busyUs).toFixed(1).padStart(6)}%`;

for (const [i, s] of summaries.entries()) {
  console.log(`${s.file}: ${(s.totalUs / 1e6).toFixed(1)} s sampled, ${(s.busyUs / 1e6).toFixed(1)} s busy` + (perRequest ? `, ${requests[i]} requests, ${(s.busyUs / requests[i]!).toFixed(1)} µs busy per request` : ''));
}
console.log(`\nself time by area (${perRequest ? 'per request' : 'share of busy time'})${summaries.length === 2 ? ': first profile, second profile, difference' : ''}:`);
const names = [...new Set(summaries.flatMap((s) => [...s.areas.keys()]))];
names.sort((a, b) => (summaries[0]!.areas.get(b) ?? 0) - (summaries[0]!.areas.get(a) ?? 0));
for (const name of names) {
  const cells = summaries.map((s, i) => show(s.areas.get(name) ?? 0, i));
  if (summaries.length === 2 && perRequest) {
    const d = (summaries[0]!.areas.get(name) ?? 0) / requests[0]! - (summaries[1]!.areas.get(name) ?? 0) / requests[1]!;
    cells.push(`${d >= 0 ? '+' : ''}${d.toFixed(1)} µs`.padStart(11));
  }
  console.log(`  ${cells.join('  ')}  ${name}`);
}
for (const [i, s] of summaries.entries()) {
  console.log(`\ntop ${top} functions by self time in ${s.file}:`);
  for (const [k, us] of [...s.functions].sort((x, y) => y[1] - x[1]).slice(0, top)) console.log(`  ${show(us, i)}  ${k}`);
}
