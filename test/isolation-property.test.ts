/**
 * Property-based tenant isolation over HTTP (fast-check): random tenants, and random sequences of
 * record requests (create, get, list with random filters, sorts, limits and cursors, patch,
 * delete) each sent with a random tenant's token and naming ids drawn from every tenant of the
 * run, random UUIDs and malformed ids. Invariants:
 * - no response ever carries another tenant's data (its marker string, its tenant id, or any id
 *   of a record it created);
 * - every answer is the one a per-tenant model predicts (status and code), so another tenant's
 *   record is exactly as absent as one that never existed;
 * - after the run, each tenant's records equal the model built from the successful responses
 *   (fields, version, createdAt, updatedAt).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { BACKENDS, createTenant, openTestBulkhead, request, type TestBulkhead, type TestResponse } from './support/backends.js';

const TITLES = ['alpha', 'alps', 'beta', 'bet', 'gamma'] as const;
const CODES = ['c1', 'c2', 'c3', 'c4'] as const;
const STATUSES = ['open', 'closed'] as const;
const SORTS = ['id', '-id', 'amount', '-amount', 'title', '-title', 'code', 'status', '-parent'] as const;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** The one collection every tenant of a run defines, under the same name. */
const THINGS = {
  fields: {
    title: { type: 'string', required: true },
    code: { type: 'string', unique: true },
    status: { type: 'enum', values: [...STATUSES], indexed: true, default: 'open' },
    amount: { type: 'integer', indexed: true },
    parent: { type: 'reference', collection: 'things' },
    marker: { type: 'string', required: true },
  },
};

type Fields = Record<string, unknown>;

/** What the model knows of one record: exactly what its tenant must read back. */
interface ModelRecord {
  fields: Fields;
  version: number;
  createdAt: string;
  updatedAt: string;
}

/** One tenant of a run and its model. */
interface RunTenant {
  readonly id: string;
  readonly token: string;
  /** Carried in the `marker` field of every record of this tenant, and by nothing else. */
  readonly marker: string;
  readonly live: Map<string, ModelRecord>;
  /** Every record id this tenant ever created (deleted ones too). */
  readonly created: Set<string>;
}

/** A cursor some list answer issued, with whom it was issued to and for which sort. */
interface IssuedCursor {
  readonly owner: number;
  readonly sort: string;
  readonly cursor: string;
}

/**
 * An id named by a command: one the acting tenant created, one any tenant of the run created
 * (most often another tenant's), a random UUID, or a malformed one.
 */
type IdRef = { kind: 'own' | 'any'; pick: number } | { kind: 'uuid'; value: string } | { kind: 'junk'; value: string };

type FilterSpec =
  | { kind: 'none' }
  | { kind: 'markerEq'; of: number }
  | { kind: 'markerContains'; of: number }
  | { kind: 'titlePrefix'; prefix: string }
  | { kind: 'titleNe'; title: string }
  | { kind: 'codeIn'; codes: string[] }
  | { kind: 'amountGte'; n: number }
  | { kind: 'amountIsNull'; value: boolean }
  | { kind: 'statusEq'; status: string }
  | { kind: 'parentEq'; ref: IdRef };

type Command =
  | { op: 'create'; as: number; title: string; code?: string; status?: string; amount?: number; parent?: IdRef }
  | { op: 'get'; as: number; ref: IdRef }
  | { op: 'patch'; as: number; ref: IdRef; patch: { title?: string | null; code?: string | null; status?: string | null; amount?: number | null; parent?: IdRef | null } }
  | { op: 'delete'; as: number; ref: IdRef }
  | { op: 'list'; as: number; filter: FilterSpec; sort: string; limit: number; all: boolean }
  | { op: 'replayCursor'; as: number; from: number; sort: string; pick: number; sameSort: boolean }
  | { op: 'craftCursor'; as: number; sort: string; ref: IdRef; value: unknown };

const idRefArb: fc.Arbitrary<IdRef> = fc.oneof(
  { weight: 8, arbitrary: fc.record({ kind: fc.constant('own' as const), pick: fc.nat() }) },
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('any' as const), pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('uuid' as const), value: fc.uuid() }) },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('junk' as const),
      value: fc.constantFrom('not-a-uuid', '00000000-0000-0000-0000-00000000000', "' OR '1'='1", 'FFFFFFFF-FFFF-7FFF-BFFF-FFFFFFFFFFFF'),
    }),
  },
);

const tenantPick = fc.nat({ max: 3 });

const filterArb: fc.Arbitrary<FilterSpec> = fc.oneof(
  fc.constant({ kind: 'none' as const }),
  fc.record({ kind: fc.constant('markerEq' as const), of: tenantPick }),
  fc.record({ kind: fc.constant('markerContains' as const), of: tenantPick }),
  fc.record({ kind: fc.constant('titlePrefix' as const), prefix: fc.constantFrom('al', 'be', 'gam', 'pm', 'x') }),
  fc.record({ kind: fc.constant('titleNe' as const), title: fc.constantFrom(...TITLES) }),
  fc.record({ kind: fc.constant('codeIn' as const), codes: fc.subarray([...CODES], { minLength: 1 }) }),
  fc.record({ kind: fc.constant('amountGte' as const), n: fc.integer({ min: -5, max: 40 }) }),
  fc.record({ kind: fc.constant('amountIsNull' as const), value: fc.boolean() }),
  fc.record({ kind: fc.constant('statusEq' as const), status: fc.constantFrom(...STATUSES) }),
  fc.record({ kind: fc.constant('parentEq' as const), ref: idRefArb }),
);

const commandArb: fc.Arbitrary<Command> = fc.oneof(
  {
    weight: 7,
    arbitrary: fc.record({
      op: fc.constant('create' as const),
      as: tenantPick,
      title: fc.constantFrom(...TITLES),
      code: fc.option(fc.constantFrom(...CODES), { nil: undefined, freq: 2 }),
      status: fc.option(fc.constantFrom(...STATUSES), { nil: undefined, freq: 2 }),
      amount: fc.option(fc.integer({ min: -5, max: 40 }), { nil: undefined, freq: 3 }),
      parent: fc.oneof({ weight: 3, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: idRefArb }),
    }),
  },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('get' as const), as: tenantPick, ref: idRefArb }) },
  {
    weight: 3,
    arbitrary: fc.record({
      op: fc.constant('patch' as const),
      as: tenantPick,
      ref: idRefArb,
      patch: fc.record(
        {
          title: fc.option(fc.constantFrom(...TITLES), { nil: null, freq: 8 }),
          code: fc.option(fc.constantFrom(...CODES), { nil: null }),
          status: fc.option(fc.constantFrom(...STATUSES), { nil: null }),
          amount: fc.option(fc.integer({ min: -5, max: 40 }), { nil: null }),
          parent: fc.option(idRefArb, { nil: null }),
        },
        { requiredKeys: [] },
      ),
    }),
  },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('delete' as const), as: tenantPick, ref: idRefArb }) },
  {
    weight: 4,
    arbitrary: fc.record({
      op: fc.constant('list' as const),
      as: tenantPick,
      filter: filterArb,
      sort: fc.constantFrom(...SORTS),
      limit: fc.integer({ min: 1, max: 6 }),
      all: fc.boolean(),
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      op: fc.constant('replayCursor' as const),
      as: tenantPick,
      from: tenantPick,
      sort: fc.constantFrom(...SORTS),
      pick: fc.nat(),
      sameSort: fc.boolean(),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      op: fc.constant('craftCursor' as const),
      as: tenantPick,
      sort: fc.constantFrom(...SORTS),
      ref: idRefArb,
      value: fc.oneof(fc.constant(null), fc.integer({ min: -5, max: 40 }), fc.constantFrom(...TITLES, ...CODES)),
    }),
  },
);

/** One run: its tenants, every id it created (all tenants), the cursors issued so far. */
class Run {
  readonly tenants: RunTenant[];
  readonly pool: string[] = [];
  readonly cursors: IssuedCursor[] = [];
  readonly #t: TestBulkhead;

  constructor(t: TestBulkhead, tenants: RunTenant[]) {
    this.#t = t;
    this.tenants = tenants;
  }

  /** The id `ref` names when `who` sends it. */
  resolve(who: RunTenant, ref: IdRef): string {
    if (ref.kind === 'uuid' || ref.kind === 'junk') return ref.value;
    const from = ref.kind === 'own' ? [...who.created] : this.pool;
    return from.length > 0 ? from[ref.pick % from.length]! : '01890000-0000-7000-8000-000000000000';
  }

  tenant(as: number): RunTenant {
    return this.tenants[as % this.tenants.length]!;
  }

  /** Sends a request as `who` and checks that nothing of another tenant of the run is in the answer. */
  async send(who: RunTenant, method: 'GET' | 'POST' | 'PATCH' | 'DELETE', url: string, body?: unknown): Promise<TestResponse> {
    const res = await request(this.#t.app, method, url, { token: who.token, body });
    for (const other of this.tenants) {
      if (other === who) continue;
      const secrets = [other.marker, other.id, ...other.created];
      for (const secret of secrets) {
        assert.ok(!res.text.includes(secret), `${method} ${url}: the answer to one tenant carries another's data (${secret}): ${res.text.slice(0, 300)}`);
      }
    }
    return res;
  }
}

function expectAnswer(res: TestResponse, status: number, code: string | undefined, what: string): void {
  assert.equal(res.status, status, `${what}: expected ${status} ${code ?? ''}, got ${res.status} ${res.text.slice(0, 300)}`);
  if (code !== undefined) assert.equal(res.body?.code, code, `${what}: ${res.text.slice(0, 300)}`);
}

/** Asserts an API record equals the model's record of the same id. */
function assertMatchesModel(record: { id: string; fields: Fields; version: number; createdAt: string; updatedAt: string }, model: ModelRecord | undefined, what: string): void {
  assert.ok(model, `${what}: ${record.id} is not a live record of the caller`);
  assert.deepEqual(
    { fields: record.fields, version: record.version, createdAt: record.createdAt, updatedAt: record.updatedAt },
    { fields: model.fields, version: model.version, createdAt: model.createdAt, updatedAt: model.updatedAt },
    `${what}: ${record.id} differs from the model`,
  );
}

function remember(who: RunTenant, res: TestResponse): void {
  who.live.set(res.body.id, { fields: res.body.fields, version: res.body.version, createdAt: res.body.createdAt, updatedAt: res.body.updatedAt });
}

/** The filter as the API takes it, and as the model evaluates it. */
function compileFilter(run: Run, who: RunTenant, spec: FilterSpec): { query: Record<string, unknown> | undefined; match: (f: Fields) => boolean } {
  switch (spec.kind) {
    case 'none':
      return { query: undefined, match: () => true };
    case 'markerEq': {
      const m = run.tenant(spec.of).marker;
      return { query: { marker: { eq: m } }, match: (f) => f.marker === m };
    }
    case 'markerContains': {
      const m = run.tenant(spec.of).marker.slice(0, 8);
      return { query: { marker: { contains: m } }, match: (f) => String(f.marker).includes(m) };
    }
    case 'titlePrefix':
      return { query: { title: { prefix: spec.prefix } }, match: (f) => String(f.title).startsWith(spec.prefix) };
    case 'titleNe':
      return { query: { title: { ne: spec.title } }, match: (f) => f.title !== spec.title };
    case 'codeIn':
      return { query: { code: { in: spec.codes } }, match: (f) => typeof f.code === 'string' && spec.codes.includes(f.code) };
    case 'amountGte':
      return { query: { amount: { gte: spec.n } }, match: (f) => typeof f.amount === 'number' && f.amount >= spec.n };
    case 'amountIsNull':
      return { query: { amount: { isNull: spec.value } }, match: (f) => (f.amount === undefined) === spec.value };
    case 'statusEq':
      return { query: { status: { eq: spec.status } }, match: (f) => f.status === spec.status };
    case 'parentEq': {
      const id = run.resolve(who, spec.ref);
      // A malformed id is not a valid value of a reference field: the query is refused.
      return { query: { parent: { eq: id } }, match: (f) => f.parent === id };
    }
  }
}

/**
 * The order the model expects for the sorts whose order it can compute independently of the
 * database's collation: by id, and by an integer (absent values sort as JSON null, before numbers).
 */
function expectedOrder(sort: string, records: [string, ModelRecord][]): string[] | undefined {
  const byId = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
  if (sort === 'id' || sort === '-id') {
    const ids = records.map(([id]) => id).sort(byId);
    return sort === 'id' ? ids : ids.reverse();
  }
  if (sort === 'amount' || sort === '-amount') {
    const key = (r: ModelRecord) => (typeof r.fields.amount === 'number' ? r.fields.amount : -Infinity);
    const sorted = [...records].sort(([ia, a], [ib, b]) => key(a) - key(b) || byId(ia, ib)).map(([id]) => id);
    return sort === 'amount' ? sorted : sorted.reverse();
  }
  return undefined;
}

function listUrl(query: Record<string, string>): string {
  return `/v1/collections/things/records?${new URLSearchParams(query).toString()}`;
}

async function execute(run: Run, cmd: Command): Promise<void> {
  const who = run.tenant(cmd.as);
  const what = `${cmd.op} as tenant ${run.tenants.indexOf(who)}`;
  switch (cmd.op) {
    case 'create': {
      const fields: Fields = { title: cmd.title, marker: who.marker };
      if (cmd.code !== undefined) fields.code = cmd.code;
      if (cmd.status !== undefined) fields.status = cmd.status;
      if (cmd.amount !== undefined) fields.amount = cmd.amount;
      const parent = cmd.parent === undefined ? undefined : run.resolve(who, cmd.parent);
      if (parent !== undefined) fields.parent = parent;
      const res = await run.send(who, 'POST', '/v1/collections/things/records', { fields });
      if (parent !== undefined && !UUID.test(parent)) return expectAnswer(res, 400, 'RECORD_INVALID', what);
      if (parent !== undefined && !who.live.has(parent)) return expectAnswer(res, 400, 'RECORD_REFERENCE_NOT_FOUND', what);
      if (cmd.code !== undefined && [...who.live.values()].some((r) => r.fields.code === cmd.code)) {
        return expectAnswer(res, 409, 'RECORD_UNIQUE_VIOLATION', what);
      }
      expectAnswer(res, 201, undefined, what);
      assert.deepEqual(res.body.fields, { status: 'open', ...fields }, `${what}: fields`);
      assert.equal(res.body.version, 1);
      remember(who, res);
      who.created.add(res.body.id);
      run.pool.push(res.body.id);
      return;
    }
    case 'get': {
      const id = run.resolve(who, cmd.ref);
      const res = await run.send(who, 'GET', `/v1/collections/things/records/${encodeURIComponent(id)}`);
      if (!who.live.has(id)) return expectAnswer(res, 404, 'RECORD_NOT_FOUND', what);
      expectAnswer(res, 200, undefined, what);
      assert.equal(res.body.id, id);
      return assertMatchesModel(res.body, who.live.get(id), what);
    }
    case 'delete': {
      const id = run.resolve(who, cmd.ref);
      const res = await run.send(who, 'DELETE', `/v1/collections/things/records/${encodeURIComponent(id)}`);
      if (!who.live.has(id)) return expectAnswer(res, 404, 'RECORD_NOT_FOUND', what);
      expectAnswer(res, 204, undefined, what);
      who.live.delete(id);
      return;
    }
    case 'patch': {
      const id = run.resolve(who, cmd.ref);
      const patch: Fields = {};
      for (const [k, v] of Object.entries(cmd.patch)) {
        if (v === undefined) continue;
        patch[k] = k === 'parent' && v !== null ? run.resolve(who, v as IdRef) : v;
      }
      const res = await run.send(who, 'PATCH', `/v1/collections/things/records/${encodeURIComponent(id)}`, { fields: patch });
      const current = who.live.get(id);
      if (!current) return expectAnswer(res, 404, 'RECORD_NOT_FOUND', what);
      const next: Fields = { ...current.fields };
      for (const [k, v] of Object.entries(patch)) {
        if (v === null) delete next[k];
        else next[k] = v;
      }
      if (next.title === undefined) return expectAnswer(res, 400, 'RECORD_INVALID', what);
      if (next.parent !== undefined && !UUID.test(String(next.parent))) return expectAnswer(res, 400, 'RECORD_INVALID', what);
      if (next.parent !== undefined && next.parent !== current.fields.parent && !who.live.has(String(next.parent))) {
        return expectAnswer(res, 400, 'RECORD_REFERENCE_NOT_FOUND', what);
      }
      if (
        next.code !== undefined &&
        next.code !== current.fields.code &&
        [...who.live.entries()].some(([other, r]) => other !== id && r.fields.code === next.code)
      ) {
        return expectAnswer(res, 409, 'RECORD_UNIQUE_VIOLATION', what);
      }
      expectAnswer(res, 200, undefined, what);
      assert.deepEqual(res.body.fields, next, `${what}: fields`);
      assert.equal(res.body.version, current.version + 1);
      assert.equal(res.body.createdAt, current.createdAt);
      remember(who, res);
      return;
    }
    case 'list': {
      const { query, match } = compileFilter(run, who, cmd.filter);
      const base: Record<string, string> = { sort: cmd.sort, limit: String(cmd.limit) };
      if (query) base.filter = JSON.stringify(query);
      const parentId = cmd.filter.kind === 'parentEq' ? run.resolve(who, cmd.filter.ref) : undefined;
      const expected = [...who.live.entries()].filter(([, r]) => match(r.fields));
      const seen: string[] = [];
      let cursor: string | undefined;
      for (let page = 0; page < 100; page++) {
        const res = await run.send(who, 'GET', listUrl(cursor ? { ...base, cursor } : base));
        if (parentId !== undefined && !UUID.test(parentId)) return expectAnswer(res, 400, 'QUERY_INVALID', what);
        expectAnswer(res, 200, undefined, what);
        const records = res.body.records as { id: string; fields: Fields; version: number; createdAt: string; updatedAt: string }[];
        assert.ok(records.length <= cmd.limit, `${what}: more rows than the limit`);
        for (const r of records) {
          assertMatchesModel(r, who.live.get(r.id), what);
          assert.ok(match(r.fields), `${what}: a row that does not match the filter`);
          seen.push(r.id);
        }
        const next = res.body.nextCursor as string | null;
        if (next !== null) run.cursors.push({ owner: run.tenants.indexOf(who), sort: cmd.sort, cursor: next });
        if (!cmd.all) {
          assert.equal(records.length, Math.min(cmd.limit, expected.length), `${what}: first page size`);
          return;
        }
        if (next === null) break;
        cursor = next;
      }
      assert.equal(new Set(seen).size, seen.length, `${what}: a row was listed twice across pages`);
      const order = expectedOrder(cmd.sort, expected);
      if (order) assert.deepEqual(seen, order, `${what}: rows or order across pages (sort ${cmd.sort})`);
      else assert.deepEqual(new Set(seen), new Set(expected.map(([id]) => id)), `${what}: rows across pages`);
      return;
    }
    case 'replayCursor': {
      // Tenant `from` lists one row to be issued a fresh cursor; then `who` replays that cursor,
      // or one issued to any tenant earlier in the run.
      const issuer = run.tenant(cmd.from);
      const first = await run.send(issuer, 'GET', listUrl({ sort: cmd.sort, limit: '1' }));
      expectAnswer(first, 200, undefined, `${what}: issuer lists`);
      for (const r of first.body.records) assertMatchesModel(r, issuer.live.get(r.id), `${what}: issuer lists`);
      if (first.body.nextCursor !== null) run.cursors.push({ owner: run.tenants.indexOf(issuer), sort: cmd.sort, cursor: first.body.nextCursor });
      const fresh = first.body.nextCursor === null ? undefined : run.cursors[run.cursors.length - 1];
      const issued = cmd.pick % 2 === 0 && fresh ? fresh : run.cursors.length > 0 ? run.cursors[cmd.pick % run.cursors.length]! : undefined;
      if (!issued) return;
      const sort = cmd.sameSort ? issued.sort : issued.sort === 'id' ? '-id' : 'id';
      const res = await run.send(who, 'GET', listUrl({ sort, limit: '1000', cursor: issued.cursor }));
      if (res.status === 400) return expectAnswer(res, 400, 'QUERY_CURSOR_INVALID', what);
      expectAnswer(res, 200, undefined, what);
      for (const r of res.body.records) assertMatchesModel(r, who.live.get(r.id), `${what} (cursor of tenant ${issued.owner})`);
      return;
    }
    case 'craftCursor': {
      const id = run.resolve(who, cmd.ref);
      const payload = { s: cmd.sort, i: id, ...(cmd.sort === 'id' || cmd.sort === '-id' ? {} : { v: cmd.value }) };
      const cursor = Buffer.from(JSON.stringify(payload)).toString('base64url');
      const res = await run.send(who, 'GET', listUrl({ sort: cmd.sort, limit: '1000', cursor }));
      if (!UUID.test(id)) return expectAnswer(res, 400, 'QUERY_CURSOR_INVALID', what);
      expectAnswer(res, 200, undefined, what);
      for (const r of res.body.records) assertMatchesModel(r, who.live.get(r.id), what);
      return;
    }
  }
}

/** Each tenant's stored records, read back with its own token, equal its model exactly. */
async function checkFinalState(run: Run): Promise<void> {
  for (const [index, who] of run.tenants.entries()) {
    const res = await run.send(who, 'GET', listUrl({ limit: '1000' }));
    expectAnswer(res, 200, undefined, `final list of tenant ${index}`);
    const records = res.body.records as { id: string; fields: Fields; version: number; createdAt: string; updatedAt: string }[];
    assert.deepEqual(records.map((r) => r.id).sort(), [...who.live.keys()].sort(), `tenant ${index}: stored ids differ from the model`);
    for (const r of records) assertMatchesModel(r, who.live.get(r.id), `final state of tenant ${index}`);
    for (const id of who.created) {
      if (who.live.has(id)) continue;
      const gone = await run.send(who, 'GET', `/v1/collections/things/records/${id}`);
      expectAnswer(gone, 404, 'RECORD_NOT_FOUND', `tenant ${index}: a deleted record`);
    }
  }
}

let runNumber = 0;

async function startRun(t: TestBulkhead, count: number): Promise<Run> {
  runNumber++;
  const tenants: RunTenant[] = [];
  for (let i = 0; i < count; i++) {
    // Tenants of every tier side by side: pool and bridge in every run, a silo in every fifth
    // (a silo is a database or PGlite instance of its own, too heavy for every run).
    const tier = i === 2 && runNumber % 5 === 0 ? 'silo' : i % 2 === 1 ? 'bridge' : 'pool';
    const created = await createTenant(t, `prop-${runNumber}-${i}-${randomBytes(3).toString('hex')}`, ['tenant_admin'], tier);
    const defined = await request(t.app, 'PUT', '/v1/collections/things', { token: created.token, body: THINGS });
    assert.equal(defined.status, 201, defined.text);
    // 'pm' never occurs in a title, code, status or UUID, so a marker in an answer can only come from a record.
    tenants.push({ id: created.id, token: created.token, marker: `pm${randomBytes(6).toString('hex')}`, live: new Map(), created: new Set() });
  }
  return new Run(t, tenants);
}

for (const kind of BACKENDS) {
  describe(`tenant isolation, property-based (${kind})`, () => {
    let t: TestBulkhead;
    before(async () => {
      t = await openTestBulkhead(kind);
    });
    after(async () => {
      await t?.close();
    });

    it("no response ever carries another tenant's data, and each tenant's records follow its model", async () => {
      await fc.assert(
        fc.asyncProperty(fc.integer({ min: 3, max: 4 }), fc.array(commandArb, { minLength: 10, maxLength: 40 }), async (count, commands) => {
          const run = await startRun(t, count);
          for (const cmd of commands) await execute(run, cmd);
          await checkFinalState(run);
        }),
        { numRuns: 50, includeErrorInReport: true },
      );
    });
  });
}
