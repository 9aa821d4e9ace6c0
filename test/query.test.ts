/**
 * Listing records: every filter operator on every type it applies to, several fields AND-ed,
 * equality through the unique/indexed value indexes, sorting with ties and missing values,
 * cursor pagination (complete, no duplicates or gaps, also with inserts between pages), limits,
 * and a fast-check property: for random valid filters, the result set equals an in-memory oracle
 * computed from the inserted records.
 *
 * The oracle compares strings by code unit. The test databases use the C collation, and the
 * values that are compared or sorted are chosen (lower-case letters, fixed-width e-mail local
 * parts, ISO dates) so that any common collation orders them the same way.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { BACKENDS, createTenant, defineCollection, openTestBulkhead, request, type TestBulkhead } from './support/backends.js';
import { compileList } from '../src/tenancy/query.js';
import type { CollectionDefinition } from '../src/tenancy/fields.js';

type Tenant = { id: string; slug: string; token: string };
type FieldType = 'string' | 'text' | 'integer' | 'number' | 'boolean' | 'datetime' | 'date' | 'json' | 'reference' | 'enum' | 'email';
interface Rec {
  readonly id: string;
  readonly fields: Record<string, unknown>;
}
type Filter = Record<string, Record<string, unknown>>;

const KINDS = ['alpha', 'beta', 'gamma', 'delta'];

/** The collection under test: every type, plus unique/indexed copies of plain fields. */
const THINGS = {
  fields: {
    name: { type: 'string' },
    body: { type: 'text' },
    qty: { type: 'integer', indexed: true },
    price: { type: 'number' },
    flag: { type: 'boolean' },
    at: { type: 'datetime' },
    day: { type: 'date' },
    meta: { type: 'json' },
    ref: { type: 'reference', collection: 'things' },
    kind: { type: 'enum', values: KINDS },
    mail: { type: 'email', unique: true },
    code: { type: 'string', unique: true },
    codePlain: { type: 'string' },
    tag: { type: 'string', indexed: true },
    tagPlain: { type: 'string' },
  },
} as const;
type FieldName = keyof typeof THINGS.fields;
const FIELD_NAMES = Object.keys(THINGS.fields) as FieldName[];
const typeOf = (f: string): FieldType => (THINGS.fields as Record<string, { type: FieldType }>)[f]!.type;

const RANGE: ReadonlySet<FieldType> = new Set(['string', 'integer', 'number', 'datetime', 'date', 'email', 'enum', 'reference']);
const TEXTUAL: ReadonlySet<FieldType> = new Set(['string', 'text', 'email', 'enum', 'reference']);
const SORTABLE: ReadonlySet<FieldType> = new Set(['string', 'integer', 'number', 'boolean', 'datetime', 'date', 'reference', 'enum', 'email']);

/** The operators that apply to a type. */
function operatorsOf(type: FieldType): string[] {
  const ops = ['isNull'];
  if (type !== 'json') ops.push('eq', 'ne', 'in');
  if (RANGE.has(type)) ops.push('lt', 'lte', 'gt', 'gte');
  if (TEXTUAL.has(type)) ops.push('contains', 'prefix');
  return ops;
}

// ---------------------------------------------------------------------------------------------
// The oracle.

/** Normalizes a filter argument the way the server does (e-mails lower-cased, date-times to UTC ISO). */
function normalizeArg(type: FieldType, v: unknown): unknown {
  if (type === 'email') return (v as string).toLowerCase();
  if (type === 'datetime') return new Date(v as string).toISOString();
  return v;
}

function cmp(a: unknown, b: unknown): number {
  if (typeof a === 'number' && typeof b === 'number') return a - b;
  if (typeof a === 'boolean' && typeof b === 'boolean') return Number(a) - Number(b);
  const x = String(a);
  const y = String(b);
  return x < y ? -1 : x > y ? 1 : 0;
}

function matchesOp(type: FieldType, value: unknown, op: string, arg: unknown): boolean {
  const has = value !== undefined;
  switch (op) {
    case 'isNull':
      return arg ? !has : has;
    case 'eq':
      return has && cmp(value, normalizeArg(type, arg)) === 0;
    case 'ne':
      return !has || cmp(value, normalizeArg(type, arg)) !== 0;
    case 'in':
      return has && (arg as unknown[]).some((x) => cmp(value, normalizeArg(type, x)) === 0);
    case 'lt':
      return has && cmp(value, normalizeArg(type, arg)) < 0;
    case 'lte':
      return has && cmp(value, normalizeArg(type, arg)) <= 0;
    case 'gt':
      return has && cmp(value, normalizeArg(type, arg)) > 0;
    case 'gte':
      return has && cmp(value, normalizeArg(type, arg)) >= 0;
    case 'contains':
      return has && String(value).toLowerCase().includes(String(arg).toLowerCase());
    case 'prefix':
      return has && String(value).startsWith(type === 'email' ? String(arg).toLowerCase() : String(arg));
    default:
      throw new Error(`oracle: unknown operator ${op}`);
  }
}

/** The ids the oracle says a filter selects, sorted. */
function oracle(records: readonly Rec[], filter: Filter): string[] {
  return records
    .filter((r) => Object.entries(filter).every(([f, ops]) => Object.entries(ops).every(([op, arg]) => matchesOp(typeOf(f), r.fields[f], op, arg))))
    .map((r) => r.id)
    .sort();
}

/** The oracle's order for `sort`: missing values first ascending, ties by id; descending is the exact reverse. */
function oracleSorted(records: readonly Rec[], sort: string): string[] {
  const desc = sort.startsWith('-');
  const field = desc ? sort.slice(1) : sort;
  const out = [...records].sort((a, b) => {
    if (field !== 'id') {
      const x = a.fields[field];
      const y = b.fields[field];
      if (x === undefined && y !== undefined) return -1;
      if (x !== undefined && y === undefined) return 1;
      if (x !== undefined && y !== undefined) {
        const c = cmp(x, y);
        if (c !== 0) return c;
      }
    }
    return cmp(a.id, b.id);
  });
  if (desc) out.reverse();
  return out.map((r) => r.id);
}

// ---------------------------------------------------------------------------------------------
// The data: deterministic, with ties, missing values and awkward characters.

function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 15), z | 1);
    z ^= z + Math.imul(z ^ (z >>> 7), z | 61);
    return ((z ^ (z >>> 14)) >>> 0) / 4294967296;
  };
}

const NAMES = ['a', 'ab', 'abc', 'b', 'ba', 'bab', 'c', 'cab', 'zz'];
const BODIES = ['Hello World', 'hello there', 'WORLD peace', 'Mixed Case Text', '100% sure_thing', 'back\\slash', "it's", 'Plain ASCII ok'];
const PRICES = [-1.5, 0, 0.25, 2, 2.5, 10, 100.125, 1e6];
const INSTANTS = ['2024-01-01T00:00:00+00:00', '2024-01-01T02:00:00+02:00', '2024-03-15T12:30:45.123Z', '2023-12-31T23:59:59Z', '2025-06-30T08:00:00-04:00'];
const DAYS = ['2024-01-01', '2024-02-29', '2023-12-31', '2025-07-04'];
const METAS: unknown[] = [{ a: 1 }, [1, 2], 'text', 42, true, { nested: { deep: [null] } }];
const TAGS = ['red', 'green', 'blue'];
const LETTERS = 'abcdefghijklmnopqrstuvwxyz';

/** Field values for the i-th record; `earlier` are ids a reference may point at. */
function sample(rand: () => number, i: number, earlier: readonly string[]): Record<string, unknown> {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
  const maybe = (p = 0.75) => rand() < p;
  const f: Record<string, unknown> = {};
  if (maybe()) f.name = pick(NAMES);
  if (maybe()) f.body = pick(BODIES);
  if (maybe()) f.qty = Math.floor(rand() * 26) - 5;
  if (maybe()) f.price = pick(PRICES);
  if (maybe()) f.flag = rand() < 0.5;
  if (maybe()) f.at = pick(INSTANTS);
  if (maybe()) f.day = pick(DAYS);
  if (maybe()) f.meta = pick(METAS);
  if (earlier.length > 0 && maybe()) f.ref = pick(earlier);
  if (maybe()) f.kind = pick(KINDS);
  // Unique values: fixed-width local parts, not in insertion order; mixed case on input.
  const local = LETTERS[(i * 7) % 26]! + LETTERS[Math.floor(i / 26) % 26]! + LETTERS[(i * 11 + 3) % 26]!;
  if (maybe(0.8)) f.mail = `${rand() < 0.3 ? local.toUpperCase() : local}@Example.com`;
  if (maybe(0.8)) {
    f.code = `k${local}`;
    f.codePlain = f.code;
  }
  if (maybe()) {
    f.tag = pick(TAGS);
    f.tagPlain = f.tag;
  }
  return f;
}

// ---------------------------------------------------------------------------------------------

describe('list statements are prepared by shape', () => {
  const definition = { fields: { name: { type: 'string' }, age: { type: 'integer' } } } as unknown as CollectionDefinition;
  const tenantA = '0191e5a1-0000-7000-8000-00000000000a';
  const tenantB = '0191e5a1-0000-7000-8000-00000000000b';
  const nameOf = (tenant: string, request: Parameters<typeof compileList>[3]) => compileList(tenant, 'things', definition, request).statement.name;

  it('one name for one shape, whatever the tenant and the values; another for another shape', () => {
    const a = nameOf(tenantA, { filter: JSON.stringify({ name: { eq: 'x' } }), limit: '10' });
    assert.match(a!, /^bh_list_[0-9a-f]{24}$/);
    // A bridge schema's suffix (@ and 16 characters) keeps it within PostgreSQL's 63.
    assert.ok(a!.length + 17 <= 63);
    assert.equal(nameOf(tenantB, { filter: JSON.stringify({ name: { eq: 'y' } }), limit: '50' }), a, 'values are parameters, not part of the name');
    assert.equal(nameOf(tenantA, { filter: JSON.stringify({ age: { eq: 3 } }) }), a, 'so is the field compared');
    const others = [
      nameOf(tenantA, { filter: JSON.stringify({ name: { ne: 'x' } }) }),
      nameOf(tenantA, { filter: JSON.stringify({ age: { gt: 3 } }) }),
      nameOf(tenantA, { filter: JSON.stringify({ name: { eq: 'x' } }), sort: '-name' }),
      nameOf(tenantA, {}),
    ];
    assert.equal(new Set([a, ...others]).size, 5, 'each shape its own name');
  });
});

for (const kind of BACKENDS) {
  describe(`query (${kind})`, () => {
    let t: TestBulkhead;
    let seq = 0;

    before(async () => {
      t = await openTestBulkhead(kind);
    });
    after(async () => {
      await t?.close();
    });

    const tenant = (): Promise<Tenant> => createTenant(t, `q-${kind}-${++seq}`, ['builder', 'member']);
    const define = async (a: Tenant, name: string, body: unknown): Promise<void> => {
      await defineCollection(t, a.token, name, body);
    };
    const insert = async (a: Tenant, name: string, fields: Record<string, unknown>): Promise<Rec> => {
      const res = await request(t.app, 'POST', `/v1/collections/${name}/records`, { token: a.token, body: { fields } });
      assert.equal(res.status, 201, res.text);
      return { id: res.body.id, fields: res.body.fields };
    };
    const listUrl = (name: string, q: { filter?: unknown; sort?: string; limit?: number | string; cursor?: string }): string => {
      const params: string[] = [];
      if (q.filter !== undefined) params.push(`filter=${encodeURIComponent(JSON.stringify(q.filter))}`);
      if (q.sort !== undefined) params.push(`sort=${encodeURIComponent(q.sort)}`);
      if (q.limit !== undefined) params.push(`limit=${q.limit}`);
      if (q.cursor !== undefined) params.push(`cursor=${encodeURIComponent(q.cursor)}`);
      return `/v1/collections/${name}/records${params.length ? `?${params.join('&')}` : ''}`;
    };
    const page = async (a: Tenant, name: string, q: Parameters<typeof listUrl>[1]): Promise<{ records: Rec[]; nextCursor: string | null }> => {
      const res = await request(t.app, 'GET', listUrl(name, q), { token: a.token });
      assert.equal(res.status, 200, `${listUrl(name, q)} → ${res.text}`);
      return res.body;
    };
    /** Every record a filter selects (ids sorted), following cursors. */
    const selected = async (a: Tenant, name: string, filter: Filter): Promise<string[]> => {
      const ids: string[] = [];
      let cursor: string | undefined;
      do {
        const p = await page(a, name, { filter, limit: 1000, ...(cursor ? { cursor } : {}) });
        ids.push(...p.records.map((r) => r.id));
        cursor = p.nextCursor ?? undefined;
      } while (cursor);
      return ids.sort();
    };
    /** Walks every page of a sorted list. */
    const walk = async (a: Tenant, name: string, sort: string, limit: number, filter?: Filter): Promise<string[]> => {
      const ids: string[] = [];
      let cursor: string | undefined;
      for (let pages = 0; ; pages++) {
        assert.ok(pages < 500, 'pagination does not end');
        const p = await page(a, name, { sort, limit, ...(filter ? { filter } : {}), ...(cursor ? { cursor } : {}) });
        assert.ok(p.records.length <= limit);
        ids.push(...p.records.map((r) => r.id));
        if (p.nextCursor === null) break;
        assert.equal(p.records.length, limit, 'only the last page is short');
        cursor = p.nextCursor;
      }
      return ids;
    };

    describe('on a shared, read-only data set', () => {
      let a: Tenant;
      let records: Rec[] = [];
      /** The distinct values each field holds, as stored. */
      const observed = new Map<string, unknown[]>();

      before(async () => {
        a = await tenant();
        await define(a, 'things', THINGS);
        const rand = prng(20261127);
        records = [];
        for (let i = 0; i < 40; i++) records.push(await insert(a, 'things', sample(rand, i, records.map((r) => r.id))));
        for (const f of FIELD_NAMES) {
          const seen = new Map<string, unknown>();
          for (const r of records) if (r.fields[f] !== undefined) seen.set(JSON.stringify(r.fields[f]), r.fields[f]);
          observed.set(f, [...seen.values()]);
        }
      });

      it('has the mix of values the tests rely on', () => {
        for (const f of FIELD_NAMES) {
          const present = records.filter((r) => r.fields[f] !== undefined).length;
          assert.ok(present > 0 && present < records.length, `${f}: some records hold it, some do not`);
        }
        for (const f of ['name', 'qty', 'flag', 'at', 'day', 'kind', 'tag']) {
          assert.ok(observed.get(f)!.length < records.filter((r) => r.fields[f] !== undefined).length, `${f} has ties`);
        }
        // Two inputs for one instant were normalized to one value.
        assert.ok(records.some((r) => r.fields.at === '2024-01-01T00:00:00.000Z'));
        assert.ok(!records.some((r) => String(r.fields.at).includes('+')));
        assert.ok(records.every((r) => r.fields.mail === undefined || r.fields.mail === String(r.fields.mail).toLowerCase()));
      });

      it('each operator on each type it applies to selects what the oracle selects', async () => {
        let checked = 0;
        for (const f of FIELD_NAMES) {
          const type = typeOf(f);
          const values = observed.get(f)!;
          const sortedValues = [...values].sort(cmp);
          // The smallest, a middle and the largest stored value, and one no record holds.
          const probes: unknown[] = [sortedValues[0], sortedValues[Math.floor(sortedValues.length / 2)], sortedValues[sortedValues.length - 1]];
          const absent: Record<FieldType, unknown> = {
            string: 'nothing-here',
            text: 'Nothing Here',
            integer: 999,
            number: -0.125,
            boolean: undefined,
            datetime: '2001-02-03T04:05:06.000Z',
            date: '2001-02-03',
            json: undefined,
            reference: '01936f4e-7c2a-7b3d-9e4f-0a1b2c3d4e5f',
            enum: KINDS.find((k) => !values.includes(k)),
            email: 'zzz@nowhere.example',
          };
          if (absent[type] !== undefined) probes.push(absent[type]);
          for (const op of operatorsOf(type)) {
            const args: unknown[] =
              op === 'isNull'
                ? [true, false]
                : op === 'in'
                  ? [[probes[0]], probes, [probes[probes.length - 1]]]
                  : op === 'contains'
                    ? textNeedles(values as string[], 'contains')
                    : op === 'prefix'
                      ? textNeedles(values as string[], 'prefix')
                      : probes;
            for (const arg of args) {
              const filter: Filter = { [f]: { [op]: arg } };
              assert.deepEqual(await selected(a, 'things', filter), oracle(records, filter), `${f} ${op} ${JSON.stringify(arg)}`);
              checked++;
            }
          }
        }
        assert.ok(checked > 150);
      });

      it('contains is case-insensitive, prefix is case-sensitive (e-mails are folded on both sides)', async () => {
        const withBody = (re: RegExp) => records.filter((r) => typeof r.fields.body === 'string' && re.test(r.fields.body as string)).map((r) => r.id).sort();
        assert.deepEqual(await selected(a, 'things', { body: { contains: 'wORLd' } }), withBody(/world/i));
        assert.ok(withBody(/world/i).length >= 2);
        assert.deepEqual(await selected(a, 'things', { body: { prefix: 'hello' } }), withBody(/^hello/));
        assert.deepEqual(await selected(a, 'things', { body: { prefix: 'Hello' } }), withBody(/^Hello/));
        // LIKE metacharacters are plain characters.
        assert.deepEqual(await selected(a, 'things', { body: { contains: '%' } }), withBody(/%/));
        assert.deepEqual(await selected(a, 'things', { body: { contains: '_' } }), withBody(/_/));
        assert.deepEqual(await selected(a, 'things', { body: { contains: '\\' } }), withBody(/\\/));
        const mail = observed.get('mail')![0] as string;
        const byMail = records.filter((r) => r.fields.mail === mail).map((r) => r.id);
        assert.deepEqual(await selected(a, 'things', { mail: { prefix: mail.slice(0, 2).toUpperCase() } }), oracle(records, { mail: { prefix: mail.slice(0, 2) } }));
        assert.deepEqual(await selected(a, 'things', { mail: { eq: mail.toUpperCase() } }), byMail);
      });

      it('several fields are AND-ed, and several operators on one field too', async () => {
        const filters: Filter[] = [
          { qty: { gte: 0 }, flag: { eq: true } },
          { qty: { gte: 0, lt: 10 }, name: { prefix: 'a' } },
          { tag: { in: ['red', 'blue'] }, day: { ne: '2024-01-01' }, meta: { isNull: false } },
          { price: { gt: 0 }, at: { lte: '2024-06-01T00:00:00Z' }, kind: { ne: 'beta' }, body: { contains: 'o' } },
          { code: { isNull: false }, mail: { isNull: true } },
          { ref: { isNull: false }, qty: { isNull: true } },
        ];
        for (const filter of filters) {
          const expected = oracle(records, filter);
          assert.deepEqual(await selected(a, 'things', filter), expected, JSON.stringify(filter));
        }
        // At least one of them selects something and none selects everything: the AND is exercised.
        const sizes = filters.map((f) => oracle(records, f).length);
        assert.ok(sizes.some((n) => n > 0) && sizes.every((n) => n < records.length));
      });

      it('eq on unique and indexed fields (through the value index) answers as on a plain field', async () => {
        for (const [keyed, plain] of [
          ['code', 'codePlain'],
          ['tag', 'tagPlain'],
        ] as const) {
          for (const v of [...observed.get(plain)!, 'no-such-value']) {
            const viaIndex = await selected(a, 'things', { [keyed]: { eq: v } });
            const viaScan = await selected(a, 'things', { [plain]: { eq: v } });
            assert.deepEqual(viaIndex, viaScan, `${keyed} = ${String(v)}`);
            assert.deepEqual(viaIndex, oracle(records, { [plain]: { eq: v } }));
          }
        }
        for (const v of [...observed.get('qty')!, 12345]) {
          assert.deepEqual(await selected(a, 'things', { qty: { eq: v } }), oracle(records, { qty: { eq: v } }), `qty = ${String(v)}`);
        }
        for (const v of observed.get('mail')!) {
          assert.deepEqual(await selected(a, 'things', { mail: { eq: v } }), oracle(records, { mail: { eq: v } }));
        }
      });

      it('operators that do not apply to a type are refused with QUERY_INVALID', async () => {
        const cases: [string, string, unknown][] = [
          ['flag', 'lt', true],
          ['body', 'gt', 'a'],
          ['meta', 'eq', { a: 1 }],
          ['meta', 'in', [1]],
          ['qty', 'contains', '1'],
          ['flag', 'prefix', 't'],
          ['qty', 'eq', 'one'],
          ['at', 'gt', 'yesterday'],
          ['name', 'between', ['a', 'b']],
        ];
        for (const [f, op, arg] of cases) {
          const res = await request(t.app, 'GET', listUrl('things', { filter: { [f]: { [op]: arg } } }), { token: a.token });
          assert.equal(res.status, 400, `${f} ${op}`);
          assert.equal(res.body.code, 'QUERY_INVALID');
          assert.equal(res.body.field, f);
        }
      });

      it('sorts by each sortable field, ascending and descending, with ties and missing values', async () => {
        const sortable = ['id', ...FIELD_NAMES.filter((f) => SORTABLE.has(typeOf(f)))];
        assert.equal(sortable.length, 14);
        for (const f of sortable) {
          for (const sort of [f, `-${f}`]) {
            const p = await page(a, 'things', { sort, limit: 1000 });
            assert.equal(p.nextCursor, null);
            assert.deepEqual(
              p.records.map((r) => r.id),
              oracleSorted(records, sort),
              `sort=${sort}`,
            );
          }
        }
        // No sort is id order, which is creation order (UUIDv7).
        assert.deepEqual(
          (await page(a, 'things', {})).records.map((r) => r.id),
          records.map((r) => r.id),
        );
      });

      it('text and json fields cannot be sorted', async () => {
        for (const sort of ['body', '-meta', 'nope']) {
          const res = await request(t.app, 'GET', listUrl('things', { sort }), { token: a.token });
          assert.equal(res.status, 400);
          assert.equal(res.body.code, 'QUERY_INVALID');
        }
      });

      it('walking pages with limits 1, 2 and 7 yields exactly the sorted list, for every sort', async () => {
        const sortable = ['id', ...FIELD_NAMES.filter((f) => SORTABLE.has(typeOf(f)))];
        for (const f of sortable) {
          for (const sort of [f, `-${f}`]) {
            const expected = oracleSorted(records, sort);
            // Limit 1 on a few sorts (one request per record); 2 and 7 on all of them.
            const limits = ['id', 'qty', 'flag', 'name'].includes(f) ? [1, 2, 7] : [2, 7];
            for (const limit of limits) {
              const ids = await walk(a, 'things', sort, limit);
              assert.equal(new Set(ids).size, ids.length, `sort=${sort} limit=${limit}: duplicates`);
              assert.deepEqual(ids, expected, `sort=${sort} limit=${limit}`);
            }
          }
        }
      });

      it('walking pages of a filtered, sorted list yields exactly the filtered list', async () => {
        const filter: Filter = { qty: { isNull: false }, flag: { ne: false } };
        const matching = records.filter((r) => oracle([r], filter).length === 1);
        for (const sort of ['qty', '-price', 'name']) {
          assert.deepEqual(await walk(a, 'things', sort, 3, filter), oracleSorted(matching, sort), `sort=${sort}`);
        }
      });

      it('a cursor only continues the sort it was made for', async () => {
        const p = await page(a, 'things', { sort: 'qty', limit: 2 });
        assert.ok(p.nextCursor);
        for (const sort of ['-qty', 'price', 'id', undefined]) {
          const res = await request(t.app, 'GET', listUrl('things', { ...(sort ? { sort } : {}), limit: 2, cursor: p.nextCursor! }), { token: a.token });
          assert.equal(res.status, 400, `sort=${String(sort)}`);
          assert.equal(res.body.code, 'QUERY_CURSOR_INVALID');
        }
        // The same sort with another filter or limit may continue (the cursor is a position, not a snapshot).
        const next = await page(a, 'things', { sort: 'qty', limit: 5, cursor: p.nextCursor! });
        assert.deepEqual(
          next.records.map((r) => r.id),
          oracleSorted(records, 'qty').slice(2, 7),
        );
        const garbage = await request(t.app, 'GET', listUrl('things', { cursor: 'bm90LWEtY3Vyc29y' }), { token: a.token });
        assert.equal(garbage.status, 400);
        assert.equal(garbage.body.code, 'QUERY_CURSOR_INVALID');
      });

      it('property: a random valid filter selects exactly what the oracle selects', async () => {
        const filterArb = filterArbitrary(observed);
        await fc.assert(
          fc.asyncProperty(filterArb, async (filter) => {
            assert.deepEqual(await selected(a, 'things', filter), oracle(records, filter), JSON.stringify(filter));
          }),
          { numRuns: 100, seed: 424242 },
        );
      });
    });

    it('pages stay free of duplicates when records are inserted between page fetches', async () => {
      const a = await tenant();
      await define(a, 'events', { fields: { n: { type: 'integer' }, label: { type: 'string' } } });
      const rand = prng(7);
      const originals: Rec[] = [];
      for (let i = 0; i < 25; i++) {
        originals.push(await insert(a, 'events', rand() < 0.85 ? { n: Math.floor(rand() * 10), label: `l${i}` } : { label: `l${i}` }));
      }
      for (const sort of ['n', '-n', 'id', '-id']) {
        const seen: Rec[] = [];
        let cursor: string | undefined;
        for (let pages = 0; ; pages++) {
          assert.ok(pages < 100);
          const p = await page(a, 'events', { sort, limit: 3, ...(cursor ? { cursor } : {}) });
          seen.push(...p.records);
          if (p.nextCursor === null) break;
          cursor = p.nextCursor;
          // Inserts before, at and after the current position.
          await insert(a, 'events', { n: Math.floor(rand() * 12) - 1, label: 'new' });
          await insert(a, 'events', { label: 'new, no n' });
        }
        const ids = seen.map((r) => r.id);
        assert.equal(new Set(ids).size, ids.length, `sort=${sort}: a record was returned twice`);
        for (const r of originals) assert.ok(ids.includes(r.id), `sort=${sort}: a record present throughout was skipped`);
        // What was returned is in sort order.
        assert.deepEqual(ids, oracleSorted(seen, sort));
      }
    });

    it('limits: 100 by default, at most 1000', async () => {
      const a = await tenant();
      await define(a, 'bulk', { fields: { n: { type: 'integer' } } });
      const actor = { tenantId: a.id, subject: 'loader' };
      const ids: string[] = [];
      for (let i = 0; i < 105; i++) ids.push((await t.bh.records.create(actor, 'bulk', { n: i })).id);

      const first = await page(a, 'bulk', {});
      assert.equal(first.records.length, 100);
      assert.ok(first.nextCursor);
      const rest = await page(a, 'bulk', { cursor: first.nextCursor! });
      assert.equal(rest.records.length, 5);
      assert.equal(rest.nextCursor, null);
      assert.deepEqual([...first.records, ...rest.records].map((r) => r.id), ids);

      const all = await page(a, 'bulk', { limit: 1000 });
      assert.equal(all.records.length, 105);
      assert.equal(all.nextCursor, null);
      const exact = await page(a, 'bulk', { limit: 105 });
      assert.equal(exact.records.length, 105);
      assert.equal(exact.nextCursor, null, 'no cursor when the page ends exactly at the last record');

      for (const limit of ['1001', '0', '-1', '10000', '1.5', 'ten']) {
        const res = await request(t.app, 'GET', `/v1/collections/bulk/records?limit=${limit}`, { token: a.token });
        assert.equal(res.status, 400, `limit=${limit}`);
        assert.equal(res.body.code, 'QUERY_INVALID');
      }
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Generators.

/** Needles for contains/prefix: pieces of stored values (case changed for contains) and a miss. */
function textNeedles(values: readonly string[], op: 'contains' | 'prefix'): string[] {
  const sorted = [...values].sort();
  const v = sorted[Math.floor(sorted.length / 2)] ?? 'x';
  const needles = op === 'contains' ? [v.slice(1, 3) || v, v.toUpperCase(), v.slice(-2).toLowerCase()] : [v.slice(0, 2) || v, v, v.slice(0, 1).toUpperCase()];
  needles.push('qqq-not-there');
  return needles.filter((n) => n.length > 0);
}

/** A typed random value for a field: mostly stored values, sometimes fresh ones of the right type. */
function valueArbitrary(field: string, observed: ReadonlyMap<string, unknown[]>): fc.Arbitrary<unknown> {
  const type = typeOf(field);
  const seen = observed.get(field) ?? [];
  const fresh: Record<FieldType, fc.Arbitrary<unknown>> = {
    string: fc.stringMatching(/^[a-ckz]{0,4}$/),
    text: fc.stringMatching(/^[a-zA-Z %_]{0,6}$/),
    integer: fc.integer({ min: -10, max: 30 }),
    number: fc.double({ min: -1000, max: 2e6, noNaN: true, noDefaultInfinity: true }),
    boolean: fc.boolean(),
    datetime: fc
      .date({ min: new Date('2023-06-01T00:00:00Z'), max: new Date('2025-12-31T00:00:00Z'), noInvalidDate: true })
      .chain((d) => fc.constantFrom(d.toISOString(), d.toISOString().replace('.000Z', 'Z'), offsetForm(d))),
    date: fc.date({ min: new Date('2023-06-01T00:00:00Z'), max: new Date('2025-12-31T00:00:00Z'), noInvalidDate: true }).map((d) => d.toISOString().slice(0, 10)),
    json: fc.constant(null),
    reference: fc.uuid({ version: 7 }),
    enum: fc.constantFrom(...KINDS),
    email: fc.stringMatching(/^[a-zA-Z]{3}$/).map((l) => `${l}@example.com`),
  };
  return seen.length > 0 ? fc.oneof({ arbitrary: fc.constantFrom(...seen), weight: 3 }, { arbitrary: fresh[type], weight: 1 }) : fresh[type];
}

/** The same instant written with a +02:00 offset. */
function offsetForm(d: Date): string {
  const shifted = new Date(d.getTime() + 2 * 3600_000).toISOString();
  return `${shifted.slice(0, 19)}+02:00`;
}

/** A needle for contains/prefix: a piece of a stored value, its case sometimes flipped, or random letters. */
function needleArbitrary(field: string, observed: ReadonlyMap<string, unknown[]>): fc.Arbitrary<string> {
  const seen = (observed.get(field) ?? []).map(String).filter((s) => s.length > 0);
  const random = fc.stringMatching(/^[a-zA-Z0-9%_@.-]{1,3}$/);
  if (seen.length === 0) return random;
  const piece = fc
    .tuple(fc.constantFrom(...seen), fc.nat(), fc.nat(), fc.boolean())
    .map(([s, i, n, upper]) => {
      const start = i % s.length;
      const len = 1 + (n % (s.length - start));
      const p = s.slice(start, start + len);
      return upper ? p.toUpperCase() : p;
    });
  const head = fc.tuple(fc.constantFrom(...seen), fc.nat()).map(([s, n]) => s.slice(0, 1 + (n % s.length)));
  return fc.oneof(piece, head, random);
}

/** A random valid filter over THINGS: 1-3 fields, 1-2 operators each, arguments of the field's type. */
function filterArbitrary(observed: ReadonlyMap<string, unknown[]>): fc.Arbitrary<Filter> {
  const opArb = (field: string): fc.Arbitrary<[string, unknown]> =>
    fc.constantFrom(...operatorsOf(typeOf(field))).chain((op): fc.Arbitrary<[string, unknown]> => {
      switch (op) {
        case 'isNull':
          return fc.boolean().map((b) => [op, b]);
        case 'in':
          return fc.array(valueArbitrary(field, observed), { minLength: 1, maxLength: 4 }).map((vs) => [op, vs]);
        case 'contains':
        case 'prefix':
          return needleArbitrary(field, observed).map((n) => [op, n]);
        default:
          return valueArbitrary(field, observed).map((v) => [op, v]);
      }
    });
  const fieldFilter = (field: string): fc.Arbitrary<[string, Record<string, unknown>]> =>
    fc.uniqueArray(opArb(field), { minLength: 1, maxLength: 2, selector: ([op]) => op }).map((ops) => [field, Object.fromEntries(ops)]);
  return fc
    .uniqueArray(fc.constantFrom(...FIELD_NAMES), { minLength: 1, maxLength: 3 })
    .chain((fields) => fc.tuple(...fields.map(fieldFilter)))
    .map((entries) => Object.fromEntries(entries));
}
