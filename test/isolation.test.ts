/**
 * Tenant isolation at the HTTP boundary (OWASP WSTG-APIT-02, "Testing for Broken Object Level
 * Authorization"): two tenants define the same collections, and every route that touches tenant
 * data is replayed with tenant A's ids (record ids, collection names, cursors, unique values,
 * reference targets, tenant ids smuggled in headers, query strings and bodies) under tenant B's
 * token. Each attempt must answer exactly as if A's object did not exist, return nothing of A and
 * change nothing of A. Operator tokens, suspended tenants and each tenant role are checked on the
 * same routes.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import {
  BACKENDS,
  createTenant,
  mintToken,
  openTestBulkhead,
  request,
  type TestBulkhead,
  type TestResponse,
} from './support/backends.js';
import { assertProblem } from './support/assertions.js';

type Method = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

/** One tenant of a test, with everything an attacker from the other tenant could try to reach. */
interface World {
  readonly id: string;
  readonly slug: string;
  readonly token: string;
  /** A lower-case string carried by every value this tenant stores; never seen by another tenant. */
  readonly marker: string;
  readonly ownerIds: readonly string[];
  readonly itemIds: readonly string[];
  /** Each item as created, by id. */
  readonly items: ReadonlyMap<string, Record<string, unknown>>;
  /** A collection only this tenant defines. */
  readonly onlyCollection: string;
  readonly onlyIds: readonly string[];
}

const STATUSES = ['open', 'closed', 'archived'] as const;

function ownersDefinition(marker: string): Record<string, unknown> {
  return {
    description: `owners of ${marker}`,
    fields: {
      name: { type: 'string', required: true },
      marker: { type: 'string', indexed: true },
    },
  };
}

/** The shared collection: a unique, an indexed, an enum, a reference and a few other types. */
function itemsDefinition(marker: string): Record<string, unknown> {
  return {
    description: `items of ${marker}`,
    fields: {
      title: { type: 'string', required: true },
      code: { type: 'string', unique: true },
      tag: { type: 'string', indexed: true },
      status: { type: 'enum', values: [...STATUSES], indexed: true, default: 'open' },
      amount: { type: 'integer', indexed: true },
      owner: { type: 'reference', collection: 'owners' },
      marker: { type: 'string' },
      contact: { type: 'email', unique: true },
      note: { type: 'text' },
      due: { type: 'date' },
    },
  };
}

function onlyDefinition(marker: string): Record<string, unknown> {
  return { description: `private to ${marker}`, fields: { secret: { type: 'string', unique: true } } };
}

function hex(bytes = 5): string {
  return randomBytes(bytes).toString('hex');
}

function expectStatus(res: TestResponse, status: number, what: string): void {
  assert.equal(res.status, status, `${what}: expected ${status}, got ${res.status} ${res.text}`);
}

/**
 * Creates a tenant with two owners, three items referencing them, and a record in a collection
 * of its own. Every string it stores contains its marker, so a leak shows up in any response text.
 */
async function seedTenant(t: TestBulkhead, label: string, onlyCollection: string, tier: Tier): Promise<World> {
  const marker = `${label}mark${hex()}`;
  const tenant = await createTenant(t, `${label}-${hex()}`, ['tenant_admin'], tier);
  const token = tenant.token;
  expectStatus(await request(t.app, 'PUT', '/v1/collections/owners', { token, body: ownersDefinition(marker) }), 201, 'define owners');
  expectStatus(await request(t.app, 'PUT', '/v1/collections/items', { token, body: itemsDefinition(marker) }), 201, 'define items');
  expectStatus(await request(t.app, 'PUT', `/v1/collections/${onlyCollection}`, { token, body: onlyDefinition(marker) }), 201, 'define only');
  const ownerIds: string[] = [];
  for (let i = 1; i <= 2; i++) {
    const res = await request(t.app, 'POST', '/v1/collections/owners/records', {
      token,
      body: { fields: { name: `${marker} owner ${i}`, marker } },
    });
    expectStatus(res, 201, 'create owner');
    ownerIds.push(res.body.id);
  }
  const items = new Map<string, Record<string, unknown>>();
  for (let i = 1; i <= 3; i++) {
    const fields = {
      title: `${marker} item ${i}`,
      code: `${marker}-code-${i}`,
      tag: `${marker}-tag`,
      status: STATUSES[i - 1],
      amount: i * 10,
      owner: ownerIds[i % 2],
      marker,
      contact: `${marker}-${i}@example.com`,
      note: `a note of ${marker}`,
      due: `2030-0${i}-1${i}`,
    };
    const res = await request(t.app, 'POST', '/v1/collections/items/records', { token, body: { fields } });
    expectStatus(res, 201, 'create item');
    assert.deepEqual(res.body.fields, fields);
    items.set(res.body.id, fields);
  }
  const only = await request(t.app, 'POST', `/v1/collections/${onlyCollection}/records`, {
    token,
    body: { fields: { secret: `${marker} secret` } },
  });
  expectStatus(only, 201, 'create only');
  return {
    id: tenant.id,
    slug: tenant.slug,
    token,
    marker,
    ownerIds,
    itemIds: [...items.keys()],
    items,
    onlyCollection,
    onlyIds: [only.body.id],
  };
}

/** Two fresh tenants on the given tiers: A, the victim, and B, the attacker. A has a collection B never defined. */
async function seedPair(t: TestBulkhead, tiers: TierPair): Promise<{ a: World; b: World }> {
  const a = await seedTenant(t, 'a', `aonly_${hex()}`, tiers[0]);
  const b = await seedTenant(t, 'b', `bonly_${hex()}`, tiers[1]);
  return { a, b };
}

type Tier = 'pool' | 'bridge' | 'silo';
type TierPair = readonly [victim: Tier, attacker: Tier];

/**
 * The tiers of victim and attacker the whole suite runs with: each tier against itself, and each
 * tier as victim of another (a pool token against a silo tenant's ids and back, and so on).
 */
const TIER_PAIRS: readonly TierPair[] = [
  ['pool', 'pool'],
  ['bridge', 'bridge'],
  ['silo', 'silo'],
  ['silo', 'pool'],
  ['pool', 'bridge'],
  ['bridge', 'silo'],
];

/** Every record id of a tenant, in every collection. */
function allIds(w: World): string[] {
  return [...w.ownerIds, ...w.itemIds, ...w.onlyIds];
}

/** What must never appear in a response to another tenant: the marker, every record id, the tenant id and slug. */
function secretsOf(w: World): string[] {
  return [w.marker, w.id, w.slug, w.onlyCollection, ...allIds(w)];
}

/** Fails if the response carries any of A's data. */
function assertNoLeak(res: TestResponse, victim: World, what: string, exclude: readonly string[] = []): void {
  for (const secret of secretsOf(victim)) {
    if (exclude.includes(secret)) continue;
    assert.ok(!res.text.includes(secret), `${what}: the response carries another tenant's data (${secret}): ${res.text.slice(0, 300)}`);
    for (const [name, value] of Object.entries(res.headers)) {
      if (name === 'x-request-id') continue;
      assert.ok(!String(value).includes(secret), `${what}: header ${name} carries another tenant's data`);
    }
  }
}

/** The response text with its request id blanked, for byte-for-byte comparison of problem documents. */
function sansRequestId(res: TestResponse): string {
  const id = res.body?.requestId;
  assert.equal(typeof id, 'string', `a problem document carries its request id: ${res.text}`);
  assert.equal(res.headers['x-request-id'], id);
  const text = res.text.split(`"requestId":${JSON.stringify(id)}`).join('"requestId":""');
  assert.notEqual(text, res.text);
  return text;
}

/** Asserts that `actual` is the very answer `reference` got (a request on something that never existed). */
function assertSameAnswer(actual: TestResponse, reference: TestResponse, status: number, code: string, what: string): void {
  assertProblem(reference, status, code, `${what} (reference)`);
  assertProblem(actual, status, code, what);
  assert.equal(actual.headers['content-type'], reference.headers['content-type'], what);
  assert.equal(sansRequestId(actual), sansRequestId(reference), `${what}: the answer differs from the one for a missing object`);
}

/**
 * Everything of a tenant as its own token sees it: collections (with versions and timestamps)
 * and every record of every collection, listed and read one by one (with version and updatedAt).
 */
async function snapshot(t: TestBulkhead, w: World): Promise<unknown> {
  const collections = await request(t.app, 'GET', '/v1/collections', { token: w.token });
  expectStatus(collections, 200, 'snapshot collections');
  const out: Record<string, unknown> = { collections: collections.body };
  for (const c of collections.body.collections as { name: string }[]) {
    const def = await request(t.app, 'GET', `/v1/collections/${c.name}`, { token: w.token });
    expectStatus(def, 200, 'snapshot collection');
    const list = await request(t.app, 'GET', `/v1/collections/${c.name}/records?limit=1000`, { token: w.token });
    expectStatus(list, 200, 'snapshot list');
    const one: unknown[] = [];
    for (const r of list.body.records as { id: string }[]) {
      const got = await request(t.app, 'GET', `/v1/collections/${c.name}/records/${r.id}`, { token: w.token });
      expectStatus(got, 200, 'snapshot get');
      one.push(got.body);
    }
    out[c.name] = { definition: def.body, list: list.body, records: one };
  }
  return out;
}

/** Runs `attack` and asserts that A's data is exactly as before. */
async function unchanged(t: TestBulkhead, victim: World, attack: () => Promise<void>): Promise<void> {
  const before = await snapshot(t, victim);
  await attack();
  assert.deepEqual(await snapshot(t, victim), before, "the other tenant's data changed");
}

/** Ids of the records of a list answer. */
function idsOf(res: TestResponse): string[] {
  return (res.body.records as { id: string }[]).map((r) => r.id);
}

/** Lists with query `q` and returns the answer, asserting it holds only the caller's own rows. */
async function listOwn(t: TestBulkhead, caller: World, victim: World, collection: string, q: Record<string, string>): Promise<TestResponse> {
  const qs = new URLSearchParams(q).toString();
  const res = await request(t.app, 'GET', `/v1/collections/${collection}/records${qs ? `?${qs}` : ''}`, { token: caller.token });
  assertNoLeak(res, victim, `list ${qs}`);
  if (res.status === 200) {
    const own = new Set(allIds(caller));
    for (const id of idsOf(res)) assert.ok(own.has(id), `list ${qs}: a row that is not the caller's: ${id}`);
  }
  return res;
}

function cursorOf(payload: Record<string, unknown>): string {
  return Buffer.from(JSON.stringify(payload)).toString('base64url');
}

/** Every route that touches tenant data, on collection `items` and a record id. */
function dataRoutes(recordId: string, marker: string): { method: Method; url: string; body?: unknown }[] {
  return [
    { method: 'PUT', url: '/v1/collections/items', body: itemsDefinition(marker) },
    { method: 'GET', url: '/v1/collections' },
    { method: 'GET', url: '/v1/collections/items' },
    { method: 'POST', url: '/v1/collections/items/records', body: { fields: { title: `${marker} new` } } },
    { method: 'GET', url: '/v1/collections/items/records' },
    { method: 'GET', url: `/v1/collections/items/records/${recordId}` },
    { method: 'PATCH', url: `/v1/collections/items/records/${recordId}`, body: { fields: { title: `${marker} changed` } } },
    { method: 'DELETE', url: `/v1/collections/items/records/${recordId}` },
  ];
}

for (const kind of BACKENDS) for (const tiers of TIER_PAIRS) {
  describe(`tenant isolation over HTTP (${kind}, victim ${tiers[0]}, attacker ${tiers[1]})`, () => {
    let t: TestBulkhead;
    before(async () => {
      t = await openTestBulkhead(kind);
    });
    after(async () => {
      await t?.close();
    });

    it("answers B's GET, PATCH and DELETE of each of A's record ids exactly like a never-existing id", async () => {
      const { a, b } = await seedPair(t, tiers);
      await unchanged(t, a, async () => {
        const collections = [
          { name: 'items', ids: a.itemIds },
          { name: 'owners', ids: a.ownerIds },
        ];
        for (const { name, ids } of collections) {
          // A's ids under the collection they live in, and under the other shared collection.
          for (const target of [name, name === 'items' ? 'owners' : 'items']) {
            for (const id of [...ids, ...a.onlyIds]) {
              const patchBody = target === 'items' ? { fields: { title: `${b.marker} hijack` } } : { fields: { name: `${b.marker} hijack` } };
              for (const [method, body] of [['GET', undefined], ['PATCH', patchBody], ['DELETE', undefined]] as const) {
                const what = `B ${method} ${target}/${id}`;
                const reference = await request(t.app, method, `/v1/collections/${target}/records/${randomUUID()}`, { token: b.token, body });
                const res = await request(t.app, method, `/v1/collections/${target}/records/${id}`, { token: b.token, body });
                assertSameAnswer(res, reference, 404, 'RECORD_NOT_FOUND', what);
                assertNoLeak(res, a, what);
              }
            }
          }
        }
        // Upper-case spelling of A's id: not a canonical id, so not found either, and no lookup by a looser match.
        const upper = a.itemIds[0]!.toUpperCase();
        const reference = await request(t.app, 'GET', `/v1/collections/items/records/${randomUUID().toUpperCase()}`, { token: b.token });
        const res = await request(t.app, 'GET', `/v1/collections/items/records/${upper}`, { token: b.token });
        assertSameAnswer(res, reference, 404, 'RECORD_NOT_FOUND', 'B GET upper-case id');
      });
      // Positive control: the same requests with A's token do reach A's records.
      for (const id of a.itemIds) {
        const own = await request(t.app, 'GET', `/v1/collections/items/records/${id}`, { token: a.token });
        expectStatus(own, 200, 'A reads its own record');
        assert.deepEqual(own.body.fields, a.items.get(id));
      }
    });

    it('answers B on a collection only A defined exactly like a never-existing collection', async () => {
      const { a, b } = await seedPair(t, tiers);
      await unchanged(t, a, async () => {
        const missing = `never_${hex()}`;
        const aRecord = a.onlyIds[0]!;
        const cases: { method: Method; path: (name: string) => string; body?: unknown }[] = [
          { method: 'GET', path: (n) => `/v1/collections/${n}` },
          { method: 'GET', path: (n) => `/v1/collections/${n}/records` },
          { method: 'GET', path: (n) => `/v1/collections/${n}/records?filter=${encodeURIComponent(JSON.stringify({ secret: { prefix: a.marker } }))}` },
          { method: 'POST', path: (n) => `/v1/collections/${n}/records`, body: { fields: { secret: `${b.marker} x` } } },
          { method: 'GET', path: (n) => `/v1/collections/${n}/records/${n === missing ? randomUUID() : aRecord}` },
          { method: 'PATCH', path: (n) => `/v1/collections/${n}/records/${n === missing ? randomUUID() : aRecord}`, body: { fields: { secret: 'x' } } },
          { method: 'DELETE', path: (n) => `/v1/collections/${n}/records/${n === missing ? randomUUID() : aRecord}` },
        ];
        for (const c of cases) {
          const reference = await request(t.app, c.method, c.path(missing), { token: b.token, body: c.body });
          const res = await request(t.app, c.method, c.path(a.onlyCollection), { token: b.token, body: c.body });
          assertSameAnswer(res, reference, 404, 'COLLECTION_NOT_FOUND', `B ${c.method} ${c.path('<A only>')}`);
          assertNoLeak(res, a, `B ${c.method} on A's collection`, []);
        }
        // A reference field of B naming A's collection: refused as if the collection did not exist.
        const refTo = (target: string) => ({ fields: { link: { type: 'reference', collection: target } } });
        const refMissing = await request(t.app, 'PUT', `/v1/collections/links_${hex()}`, { token: b.token, body: refTo(missing) });
        const refA = await request(t.app, 'PUT', `/v1/collections/links_${hex()}`, { token: b.token, body: refTo(a.onlyCollection) });
        assertProblem(refMissing, 400, 'COLLECTION_INVALID', 'B references a missing collection');
        assertProblem(refA, 400, 'COLLECTION_INVALID', "B references A's collection");
        assert.equal(sansRequestId(refA).split(a.onlyCollection).join('<name>'), sansRequestId(refMissing).split(missing).join('<name>'));
        const list = await request(t.app, 'GET', '/v1/collections', { token: b.token });
        expectStatus(list, 200, 'B lists collections');
        assert.deepEqual(
          (list.body.collections as { name: string }[]).map((c) => c.name),
          [b.onlyCollection, 'items', 'owners'].sort(),
        );
        assertNoLeak(list, a, 'B lists collections');
        for (const name of ['items', 'owners']) {
          const def = await request(t.app, 'GET', `/v1/collections/${name}`, { token: b.token });
          expectStatus(def, 200, `B reads ${name}`);
          assert.equal(def.body.version, 1);
          assert.ok(def.body.description.includes(b.marker), 'B sees its own definition');
          assertNoLeak(def, a, `B reads ${name}`);
        }
      });

      // B defines a collection of A's name: it gets its own, version 1; A's is untouched.
      const aBefore = await request(t.app, 'GET', `/v1/collections/${a.onlyCollection}`, { token: a.token });
      const mine = { description: `B's ${b.marker}`, fields: { other: { type: 'integer' } } };
      const created = await request(t.app, 'PUT', `/v1/collections/${a.onlyCollection}`, { token: b.token, body: mine });
      expectStatus(created, 201, "B defines A's collection name");
      assert.equal(created.body.version, 1);
      assert.deepEqual(Object.keys(created.body.fields), ['other']);
      assertNoLeak(created, a, "B's PUT of A's collection name", [a.onlyCollection]);
      const emptyList = await request(t.app, 'GET', `/v1/collections/${a.onlyCollection}/records`, { token: b.token });
      expectStatus(emptyList, 200, 'B lists its new collection');
      assert.deepEqual(emptyList.body, { records: [], nextCursor: null });
      const stillA = await request(t.app, 'GET', `/v1/collections/${a.onlyCollection}/records/${a.onlyIds[0]}`, { token: b.token });
      assertProblem(stillA, 404, 'RECORD_NOT_FOUND', "B reads A's record in its own same-named collection");
      assertNoLeak(stillA, a, "B reads A's record id in its own collection", [a.onlyCollection]);
      const aAfter = await request(t.app, 'GET', `/v1/collections/${a.onlyCollection}`, { token: a.token });
      assert.deepEqual(aAfter.body, aBefore.body, "A's definition and version are unchanged");
      const aRecord = await request(t.app, 'GET', `/v1/collections/${a.onlyCollection}/records/${a.onlyIds[0]}`, { token: a.token });
      expectStatus(aRecord, 200, 'A still reads its record');

      // B redefines a shared name: B's version moves, A's stays.
      const aItems = await request(t.app, 'GET', '/v1/collections/items', { token: a.token });
      const changed = itemsDefinition(b.marker) as { fields: Record<string, unknown> };
      const redefined = await request(t.app, 'PUT', '/v1/collections/items', {
        token: b.token,
        body: { ...changed, fields: { ...changed.fields, extra: { type: 'boolean' } } },
      });
      expectStatus(redefined, 200, 'B redefines items');
      assert.equal(redefined.body.version, 2);
      assertNoLeak(redefined, a, 'B redefines items');
      assert.deepEqual((await request(t.app, 'GET', '/v1/collections/items', { token: a.token })).body, aItems.body);
    });

    it("never lets B's filters and sorts reach A's rows", async () => {
      const { a, b } = await seedPair(t, tiers);
      const [a1, a2] = a.itemIds.map((id) => a.items.get(id)!);
      type Item = Record<string, unknown>;
      const none = (): boolean => false;
      const every = (): boolean => true;
      // Each filter with the B rows it must match: the ones built from A's values match none.
      const filters: [Record<string, unknown>, (f: Item) => boolean][] = [
        [{ title: { eq: a1!.title } }, none],
        [{ title: { in: [a1!.title, a2!.title] } }, none],
        [{ title: { prefix: a.marker } }, none],
        [{ title: { contains: a.marker } }, none],
        [{ title: { contains: a.marker.toUpperCase() } }, none],
        [{ title: { gte: a.marker } }, every],
        [{ title: { lte: a1!.title, gte: a1!.title } }, none],
        [{ title: { ne: `${b.marker} item 1` } }, (f) => f.title !== `${b.marker} item 1`],
        [{ code: { eq: a1!.code } }, none],
        [{ code: { in: [a1!.code, a2!.code] } }, none],
        [{ code: { prefix: `${a.marker}-code` } }, none],
        [{ tag: { eq: a1!.tag } }, none],
        [{ tag: { contains: 'tag' } }, every],
        [{ status: { eq: 'open' } }, (f) => f.status === 'open'],
        [{ status: { in: [...STATUSES] } }, every],
        [{ amount: { gte: 10 } }, every],
        [{ amount: { lt: 1_000_000 } }, every],
        [{ amount: { eq: 10 } }, (f) => f.amount === 10],
        [{ amount: { ne: -1 } }, every],
        [{ owner: { eq: a.ownerIds[0] } }, none],
        [{ owner: { in: a.ownerIds } }, none],
        [{ owner: { prefix: a.ownerIds[0]!.slice(0, 35) } }, none],
        [{ owner: { gt: '00000000-0000-0000-0000-000000000000' } }, every],
        [{ marker: { eq: a.marker } }, none],
        [{ marker: { isNull: false } }, every],
        [{ marker: { isNull: true } }, none],
        [{ contact: { eq: `${a.marker}-1@example.com` } }, none],
        [{ contact: { contains: '@example.com' } }, every],
        [{ note: { contains: a.marker } }, none],
        [{ due: { gte: '2000-01-01' } }, every],
        [{ due: { eq: a1!.due } }, (f) => f.due === a1!.due],
        [{ title: { prefix: a.marker }, amount: { gte: 0 } }, none],
      ];
      await unchanged(t, a, async () => {
        for (const [filter, match] of filters) {
          const res = await listOwn(t, b, a, 'items', { filter: JSON.stringify(filter), limit: '1000' });
          expectStatus(res, 200, `filter ${JSON.stringify(filter)}`);
          const expected = b.itemIds.filter((id) => match(b.items.get(id)!));
          assert.deepEqual(new Set(idsOf(res)), new Set(expected), `filter ${JSON.stringify(filter)}`);
        }
        // Every sort, both directions, with no filter and with limit 1000: B's rows, all of them, only them.
        const sorts = ['id', '-id', ...['title', 'code', 'tag', 'status', 'amount', 'owner', 'marker', 'contact', 'due'].flatMap((f) => [f, `-${f}`])];
        for (const sort of sorts) {
          const res = await listOwn(t, b, a, 'items', { sort, limit: '1000' });
          expectStatus(res, 200, `sort ${sort}`);
          assert.deepEqual(new Set(idsOf(res)), new Set(b.itemIds), `sort ${sort}`);
          assert.equal(res.body.nextCursor, null);
        }
        for (const collection of ['owners', b.onlyCollection]) {
          const res = await listOwn(t, b, a, collection, { limit: '1000' });
          expectStatus(res, 200, `list ${collection}`);
          assert.deepEqual(new Set(idsOf(res)), new Set(collection === 'owners' ? b.ownerIds : b.onlyIds));
        }
      });
    });

    it("never lets a cursor from A's listing, or one crafted from A's ids, yield A's rows to B", async () => {
      const { a, b } = await seedPair(t, tiers);
      await unchanged(t, a, async () => {
        const sorts = ['id', '-id', 'title', '-title', 'code', 'amount', '-amount', 'owner', 'status', 'due'];
        for (const sort of sorts) {
          const first = await request(t.app, 'GET', `/v1/collections/items/records?sort=${sort}&limit=1`, { token: a.token });
          expectStatus(first, 200, `A lists by ${sort}`);
          const cursor = first.body.nextCursor as string;
          assert.equal(typeof cursor, 'string', 'A has more than one page');
          const replays: Record<string, string>[] = [
            { sort, limit: '1000', cursor },
            { sort, limit: '1', cursor },
            { sort: sort === 'id' ? '-id' : 'id', cursor },
          ];
          for (const q of replays) {
            const res = await listOwn(t, b, a, 'items', q);
            if (res.status !== 200) assertProblem(res, 400, 'QUERY_CURSOR_INVALID', `A's cursor for ${sort} replayed by B`);
          }
          // B follows A's cursor to the end: every page holds B's rows only.
          let next: string | null = cursor;
          for (let page = 0; next !== null && page < 10; page++) {
            const res = await listOwn(t, b, a, 'items', { sort, limit: '1', cursor: next });
            if (res.status !== 200) {
              assertProblem(res, 400, 'QUERY_CURSOR_INVALID', 'B pages with A cursor');
              break;
            }
            next = res.body.nextCursor;
          }
        }
        // Hand-made cursors naming A's ids and values, and the lowest possible position.
        const a1 = a.items.get(a.itemIds[0]!)!;
        const crafted = [
          { s: 'id', i: a.itemIds[0] },
          { s: '-id', i: a.itemIds[2] },
          { s: 'id', i: '00000000-0000-0000-0000-000000000000' },
          { s: '-id', i: 'ffffffff-ffff-ffff-ffff-ffffffffffff' },
          { s: 'title', v: a1.title, i: a.itemIds[0] },
          { s: 'code', v: a1.code, i: a.itemIds[0] },
          { s: 'amount', v: -1, i: a.itemIds[0] },
          { s: 'owner', v: a.ownerIds[0], i: a.ownerIds[0] },
          { s: 'title', v: null, i: '00000000-0000-0000-0000-000000000000' },
        ];
        for (const payload of crafted) {
          const res = await listOwn(t, b, a, 'items', { sort: payload.s, limit: '1000', cursor: cursorOf(payload) });
          expectStatus(res, 200, `crafted cursor ${JSON.stringify(payload)}`);
        }
        // Starting from the very first position, B pages through exactly its own rows.
        const everything = await listOwn(t, b, a, 'items', { sort: 'id', limit: '1000', cursor: cursorOf(crafted[2]!) });
        assert.deepEqual(new Set(idsOf(everything)), new Set(b.itemIds));
        // Cursors that are not JSON, or name a non-id, are refused without detail.
        for (const bad of [cursorOf({ s: 'id', i: `${a.itemIds[0]}' OR 1=1 --` }), cursorOf({ s: 'id', i: a.id.toUpperCase() }), 'not*base64']) {
          const res = await listOwn(t, b, a, 'items', { cursor: bad });
          assertProblem(res, 400, 'QUERY_CURSOR_INVALID', 'malformed cursor');
        }
      });
    });

    it("keeps unique values per tenant: B may reuse A's, and B's own duplicate reveals nothing of A", async () => {
      const { a, b } = await seedPair(t, tiers);
      const a1 = a.items.get(a.itemIds[0]!)!;
      await unchanged(t, a, async () => {
        // B takes A's unique values (code and e-mail) for a record of its own.
        const reuse = await request(t.app, 'POST', '/v1/collections/items/records', {
          token: b.token,
          body: { fields: { title: `${b.marker} reuse`, code: a1.code, contact: a1.contact } },
        });
        expectStatus(reuse, 201, "B reuses A's unique values");
        assert.equal(reuse.body.fields.code, a1.code);
        assertNoLeak(reuse, a, 'B reuses', [a.marker]);
        // B's own duplicate of the value it shares with A, and a duplicate of a value only B has.
        const bOnly = b.items.get(b.itemIds[0]!)!;
        const dupShared = await request(t.app, 'POST', '/v1/collections/items/records', {
          token: b.token,
          body: { fields: { title: `${b.marker} dup`, code: a1.code } },
        });
        const dupOwn = await request(t.app, 'POST', '/v1/collections/items/records', {
          token: b.token,
          body: { fields: { title: `${b.marker} dup`, code: bOnly.code } },
        });
        assertSameAnswer(dupShared, dupOwn, 409, 'RECORD_UNIQUE_VIOLATION', "B's duplicate of a value A also holds");
        assert.equal(dupShared.body.field, 'code');
        assertNoLeak(dupShared, a, "B's duplicate", []);
        for (const secret of [a1.code as string, reuse.body.id as string]) {
          assert.ok(!dupShared.text.includes(secret), 'a unique violation names neither the value nor the holder');
        }
        // The same through PATCH: B moves another of its records onto A's e-mail, which B itself now holds.
        const patchShared = await request(t.app, 'PATCH', `/v1/collections/items/records/${b.itemIds[1]}`, {
          token: b.token,
          body: { fields: { contact: a1.contact } },
        });
        const patchOwn = await request(t.app, 'PATCH', `/v1/collections/items/records/${b.itemIds[1]}`, {
          token: b.token,
          body: { fields: { contact: bOnly.contact } },
        });
        assertSameAnswer(patchShared, patchOwn, 409, 'RECORD_UNIQUE_VIOLATION', "B's PATCH onto a shared unique value");
        assertNoLeak(patchShared, a, 'B patch duplicate');
        // A value only A holds is free for B through PATCH too.
        const a2 = a.items.get(a.itemIds[1]!)!;
        const patched = await request(t.app, 'PATCH', `/v1/collections/items/records/${b.itemIds[2]}`, {
          token: b.token,
          body: { fields: { code: a2.code } },
        });
        expectStatus(patched, 200, "B patches onto A's unique value");
        assert.equal(patched.body.version, 2);
        // B makes a field unique whose values are distinct within B but each also held by A: allowed.
        const def = itemsDefinition(b.marker) as { fields: Record<string, Record<string, unknown>> };
        const dueUnique = await request(t.app, 'PUT', '/v1/collections/items', {
          token: b.token,
          body: { ...def, fields: { ...def.fields, due: { type: 'date', unique: true } } },
        });
        expectStatus(dueUnique, 200, "B makes due unique although A holds the same dates");
        assert.equal(dueUnique.body.version, 2);
        const dueDup = await request(t.app, 'POST', '/v1/collections/items/records', {
          token: b.token,
          body: { fields: { title: `${b.marker} due`, due: b.items.get(b.itemIds[0]!)!.due } },
        });
        assertProblem(dueDup, 409, 'RECORD_UNIQUE_VIOLATION', "B's duplicate date");
        assertNoLeak(dueDup, a, "B's duplicate date");
        // B filtering on the shared unique value finds only its own record (which holds the value too).
        const found = await request(t.app, 'GET', `/v1/collections/items/records?filter=${encodeURIComponent(JSON.stringify({ code: { eq: a1.code } }))}`, {
          token: b.token,
        });
        assert.deepEqual(idsOf(found), [reuse.body.id]);
        assertNoLeak(found, a, "B's lookup of the shared value", [a.marker]);
      });
      // A still finds its own record under that value, and not B's.
      const aFound = await request(t.app, 'GET', `/v1/collections/items/records?filter=${encodeURIComponent(JSON.stringify({ code: { eq: a1.code } }))}`, {
        token: a.token,
      });
      assert.deepEqual(idsOf(aFound), [a.itemIds[0]]);
      assertNoLeak(aFound, b, "A's lookup of the shared value");
    });

    it("refuses a reference from B's record to A's record like a reference to nothing", async () => {
      const { a, b } = await seedPair(t, tiers);
      await unchanged(t, a, async () => {
        for (const target of [...a.ownerIds, a.itemIds[0]!, a.onlyIds[0]!]) {
          const reference = await request(t.app, 'POST', '/v1/collections/items/records', {
            token: b.token,
            body: { fields: { title: `${b.marker} ref`, owner: randomUUID() } },
          });
          const res = await request(t.app, 'POST', '/v1/collections/items/records', {
            token: b.token,
            body: { fields: { title: `${b.marker} ref`, owner: target } },
          });
          assertSameAnswer(res, reference, 400, 'RECORD_REFERENCE_NOT_FOUND', "B's reference to A's record");
          assert.equal(res.body.field, 'owner');
          assertNoLeak(res, a, 'B reference');
          const patchRef = await request(t.app, 'PATCH', `/v1/collections/items/records/${b.itemIds[0]}`, {
            token: b.token,
            body: { fields: { owner: randomUUID() } },
          });
          const patch = await request(t.app, 'PATCH', `/v1/collections/items/records/${b.itemIds[0]}`, {
            token: b.token,
            body: { fields: { owner: target } },
          });
          assertSameAnswer(patch, patchRef, 400, 'RECORD_REFERENCE_NOT_FOUND', "B's PATCH to a reference to A's record");
        }
        // Nothing was written: B's record keeps its own owner and version.
        const mine = await request(t.app, 'GET', `/v1/collections/items/records/${b.itemIds[0]}`, { token: b.token });
        assert.equal(mine.body.version, 1);
        assert.equal(mine.body.fields.owner, b.items.get(b.itemIds[0]!)!.owner);
        assert.ok(b.ownerIds.includes(mine.body.fields.owner));
        const count = await request(t.app, 'GET', '/v1/collections/items/records?limit=1000', { token: b.token });
        assert.equal(count.body.records.length, b.itemIds.length);
      });
      // Positive control: B can reference its own owner.
      const ok = await request(t.app, 'POST', '/v1/collections/items/records', {
        token: b.token,
        body: { fields: { title: `${b.marker} ref`, owner: b.ownerIds[1] } },
      });
      expectStatus(ok, 201, 'B references its own owner');
    });

    it('takes the tenant only from the token: headers, query parameters and body fields naming A reach nothing of A', async () => {
      const { a, b } = await seedPair(t, tiers);
      const smuggleHeaders = {
        'x-tenant-id': a.id,
        'x-bulkhead-tenant': a.id,
        'x-tenant': a.slug,
        tenant: a.id,
        'x-forwarded-tenant': a.id,
      };
      await unchanged(t, a, async () => {
        const aId = a.itemIds[0]!;
        const qs = [`tenant=${a.id}`, `tenant_id=${a.id}`, `tenantId=${a.id}`];
        // Reads of A's record with every smuggling channel: still not found, like a missing id.
        for (const q of ['', ...qs]) {
          const suffix = q ? `?${q}` : '';
          for (const [method, body] of [['GET', undefined], ['PATCH', { fields: { title: 'x' } }], ['DELETE', undefined]] as const) {
            const reference = await request(t.app, method, `/v1/collections/items/records/${randomUUID()}${suffix}`, {
              token: b.token,
              headers: smuggleHeaders,
              body,
            });
            const res = await request(t.app, method, `/v1/collections/items/records/${aId}${suffix}`, {
              token: b.token,
              headers: smuggleHeaders,
              body,
            });
            assertSameAnswer(res, reference, 404, 'RECORD_NOT_FOUND', `B ${method} with ${q || 'headers'}`);
            assertNoLeak(res, a, `B ${method} smuggled`, [a.id, a.slug]);
          }
          // Collection reads: B's own, or nothing.
          const only = await request(t.app, 'GET', `/v1/collections/${a.onlyCollection}${suffix}`, { token: b.token, headers: smuggleHeaders });
          assertProblem(only, 404, 'COLLECTION_NOT_FOUND', 'B reads A-only collection, smuggled');
          const cols = await request(t.app, 'GET', `/v1/collections${suffix}`, { token: b.token, headers: smuggleHeaders });
          expectStatus(cols, 200, 'B lists collections, smuggled');
          assertNoLeak(cols, a, 'B lists collections smuggled');
          assert.deepEqual(
            (cols.body.collections as { name: string }[]).map((c) => c.name),
            [b.onlyCollection, 'items', 'owners'].sort(),
          );
        }
        // A list refuses unknown query parameters outright.
        for (const q of qs) {
          const res = await request(t.app, 'GET', `/v1/collections/items/records?${q}`, { token: b.token, headers: smuggleHeaders });
          assertProblem(res, 400, 'REQUEST_INVALID', `list with ${q}`);
          assertNoLeak(res, a, 'list smuggled query', [a.id]);
        }
        const listed = await listOwn(t, b, a, 'items', { limit: '1000' });
        assert.deepEqual(new Set(idsOf(listed)), new Set(b.itemIds));

        // Bodies: top-level tenant keys are unknown properties; inside `fields`, unknown fields.
        for (const key of ['tenant_id', 'tenantId', 'tenant']) {
          const post = await request(t.app, 'POST', '/v1/collections/items/records', {
            token: b.token,
            headers: smuggleHeaders,
            body: { fields: { title: `${b.marker} smuggled` }, [key]: a.id },
          });
          assertProblem(post, 400, 'REQUEST_INVALID', `POST with top-level ${key}`);
          const postInner = await request(t.app, 'POST', '/v1/collections/items/records', {
            token: b.token,
            body: { fields: { title: `${b.marker} smuggled`, [key]: a.id } },
          });
          assertProblem(postInner, 400, 'RECORD_INVALID', `POST with fields.${key}`);
          const patch = await request(t.app, 'PATCH', `/v1/collections/items/records/${b.itemIds[0]}`, {
            token: b.token,
            body: { fields: { title: `${b.marker} smuggled` }, [key]: a.id },
          });
          assertProblem(patch, 400, 'REQUEST_INVALID', `PATCH with top-level ${key}`);
          const patchInner = await request(t.app, 'PATCH', `/v1/collections/items/records/${b.itemIds[0]}`, {
            token: b.token,
            body: { fields: { [key]: a.id } },
          });
          assertProblem(patchInner, 400, 'RECORD_INVALID', `PATCH with fields.${key}`);
          const put = await request(t.app, 'PUT', `/v1/collections/${a.onlyCollection}`, {
            token: b.token,
            body: { ...onlyDefinition(b.marker), [key]: a.id },
          });
          assertProblem(put, 400, 'COLLECTION_INVALID', `PUT collection with ${key}`);
          for (const res of [post, postInner, patch, patchInner, put]) assertNoLeak(res, a, `smuggled ${key}`, [a.onlyCollection]);
        }
        // None of those wrote anything for B either.
        const bRecord = await request(t.app, 'GET', `/v1/collections/items/records/${b.itemIds[0]}`, { token: b.token });
        assert.equal(bRecord.body.version, 1);
        const bOnly = await request(t.app, 'GET', `/v1/collections/${a.onlyCollection}`, { token: b.token });
        assertProblem(bOnly, 404, 'COLLECTION_NOT_FOUND', 'no collection was created for B');

        // A write that succeeds despite the smuggled header lands in B, not A.
        const created = await request(t.app, 'POST', `/v1/collections/items/records?tenant=${a.id}`, {
          token: b.token,
          headers: smuggleHeaders,
          body: { fields: { title: `${b.marker} landed` } },
        });
        expectStatus(created, 201, 'B creates with smuggled header');
        assertNoLeak(created, a, 'B create smuggled', [a.id]);
        const inB = await request(t.app, 'GET', `/v1/collections/items/records/${created.body.id}`, { token: b.token });
        expectStatus(inB, 200, 'the record is in B');
        const inA = await request(t.app, 'GET', `/v1/collections/items/records/${created.body.id}`, { token: a.token });
        assertProblem(inA, 404, 'RECORD_NOT_FOUND', 'the record is not in A');
        const defined = await request(t.app, 'PUT', `/v1/collections/smuggled_${hex()}`, {
          token: b.token,
          headers: smuggleHeaders,
          body: onlyDefinition(b.marker),
        });
        expectStatus(defined, 201, 'B defines with smuggled header');
        const aCollections = await request(t.app, 'GET', `/v1/collections/${defined.body.name}`, { token: a.token });
        assertProblem(aCollections, 404, 'COLLECTION_NOT_FOUND', "B's collection is not A's");
      });
    });

    it("refuses the operator token on every tenant-data route, and every tenant token on every /v1/tenants route", async () => {
      const { a, b } = await seedPair(t, tiers);
      await unchanged(t, a, async () => {
        const headerSets: Record<string, string>[] = [{}, { 'x-tenant-id': a.id }];
        for (const headers of headerSets) {
          for (const route of dataRoutes(a.itemIds[0]!, a.marker)) {
            const res = await request(t.app, route.method, route.url, { token: t.operatorToken, body: route.body, headers });
            assertProblem(res, 403, 'ACCESS_DENIED', `operator ${route.method} ${route.url}`);
            assertNoLeak(res, a, `operator ${route.method} ${route.url}`);
          }
        }
        const tenantRoutes = (id: string): { method: Method; url: string; body?: unknown }[] => [
          { method: 'POST', url: '/v1/tenants', body: { slug: `x-${hex()}`, name: 'x' } },
          { method: 'GET', url: '/v1/tenants' },
          { method: 'GET', url: `/v1/tenants/${id}` },
          { method: 'PATCH', url: `/v1/tenants/${id}`, body: { status: 'suspended' } },
          { method: 'GET', url: `/v1/tenants/${id}/history` },
          { method: 'POST', url: `/v1/tenants/${id}/tokens`, body: { sub: 'x', roles: ['tenant_admin'] } },
        ];
        for (const roles of [['tenant_admin'], ['builder', 'member', 'viewer', 'auditor']]) {
          const token = await mintToken(t, b.id, roles, 'b-user');
          for (const id of [a.id, b.id, a.slug]) {
            for (const route of tenantRoutes(id)) {
              const res = await request(t.app, route.method, route.url, { token, body: route.body });
              assertProblem(res, 403, 'ACCESS_DENIED', `tenant ${roles.join('+')} ${route.method} ${route.url}`);
              assertNoLeak(res, a, `tenant ${route.method} ${route.url}`);
            }
          }
        }
      });
      // No tenant appeared or changed state through those attempts.
      const tenants = await request(t.app, 'GET', '/v1/tenants', { token: t.operatorToken });
      for (const w of [a, b]) {
        assert.equal((tenants.body.tenants as { id: string; status: string }[]).find((x) => x.id === w.id)?.status, 'active');
      }
      const history = await request(t.app, 'GET', `/v1/tenants/${a.id}/history`, { token: t.operatorToken });
      assert.deepEqual((history.body.history as { event: string }[]).map((h) => h.event), ['created']);
    });

    it("turns A's token away everywhere while A is suspended, and lets it back in after resuming", async () => {
      const { a, b } = await seedPair(t, tiers);
      const before = await snapshot(t, a);
      const suspended = await request(t.app, 'PATCH', `/v1/tenants/${a.id}`, { token: t.operatorToken, body: { status: 'suspended' } });
      expectStatus(suspended, 200, 'suspend A');
      assert.equal(suspended.body.status, 'suspended');
      const member = await request(t.app, 'POST', `/v1/tenants/${a.id}/tokens`, { token: t.operatorToken, body: { sub: 'late', roles: ['member'] } });
      expectStatus(member, 201, 'a token minted while suspended');
      for (const token of [a.token, member.body.token as string]) {
        for (const route of dataRoutes(a.itemIds[0]!, a.marker)) {
          const res = await request(t.app, route.method, route.url, { token, body: route.body });
          assertProblem(res, 401, 'AUTH_TENANT_INACTIVE', `suspended A ${route.method} ${route.url}`);
          assert.ok(!res.text.includes(a.marker) && !res.text.includes(a.itemIds[0]!), 'a refused request returns no data');
        }
      }
      // B is not affected by A's suspension.
      const bList = await listOwn(t, b, a, 'items', {});
      assert.deepEqual(new Set(idsOf(bList)), new Set(b.itemIds));

      const resumed = await request(t.app, 'PATCH', `/v1/tenants/${a.id}`, { token: t.operatorToken, body: { status: 'active' } });
      expectStatus(resumed, 200, 'resume A');
      assert.deepEqual(await snapshot(t, a), before, 'nothing of A changed while it was suspended');
      const back = await request(t.app, 'GET', `/v1/collections/items/records/${a.itemIds[0]}`, { token: a.token });
      expectStatus(back, 200, 'A reads after resuming');
      const write = await request(t.app, 'PATCH', `/v1/collections/items/records/${a.itemIds[0]}`, {
        token: member.body.token,
        body: { fields: { amount: 11 } },
      });
      expectStatus(write, 200, 'A writes after resuming');
      assert.equal(write.body.version, 2);
      const history = await request(t.app, 'GET', `/v1/tenants/${a.id}/history`, { token: t.operatorToken });
      assert.deepEqual(
        (history.body.history as { event: string; toStatus: string }[]).map((h) => `${h.event}:${h.toStatus}`),
        ['created:active', 'status:suspended', 'status:active'],
      );
    });

    it('enforces the tenant roles on every route', async () => {
      const { a } = await seedPair(t, tiers);
      const token = async (role: string) => mintToken(t, a.id, [role], `${role}-user`);
      const viewer = await token('viewer');
      const builder = await token('builder');
      const auditor = await token('auditor');
      const member = await token('member');
      const id = a.itemIds[0]!;
      const denied = async (tok: string, method: Method, url: string, body: unknown, what: string) => {
        const res = await request(t.app, method, url, { token: tok, body });
        assertProblem(res, 403, 'ACCESS_DENIED', what);
        assert.ok(!res.text.includes(a.marker), `${what}: a denial returns no data`);
      };
      const allowed = async (tok: string, method: Method, url: string, body: unknown, status: number, what: string) => {
        const res = await request(t.app, method, url, { token: tok, body });
        expectStatus(res, status, what);
        return res;
      };
      const newItem = { fields: { title: `${a.marker} by role` } };
      const put = (marker: string) => ({ description: `roles ${marker}`, fields: { x: { type: 'string' } } });

      await unchanged(t, a, async () => {
        // viewer: reads, never writes or defines.
        await denied(viewer, 'POST', '/v1/collections/items/records', newItem, 'viewer POST');
        await denied(viewer, 'PATCH', `/v1/collections/items/records/${id}`, { fields: { amount: 1 } }, 'viewer PATCH');
        await denied(viewer, 'DELETE', `/v1/collections/items/records/${id}`, undefined, 'viewer DELETE');
        await denied(viewer, 'PUT', '/v1/collections/items', itemsDefinition(a.marker), 'viewer PUT existing');
        await denied(viewer, 'PUT', `/v1/collections/viewer_${hex()}`, put('v'), 'viewer PUT new');
        await allowed(viewer, 'GET', `/v1/collections/items/records/${id}`, undefined, 200, 'viewer GET');
        await allowed(viewer, 'GET', '/v1/collections/items/records', undefined, 200, 'viewer list');
        await allowed(viewer, 'GET', '/v1/collections/items', undefined, 200, 'viewer reads definition');
        // builder: defines collections and reads records, never writes records.
        await denied(builder, 'POST', '/v1/collections/items/records', newItem, 'builder POST');
        await denied(builder, 'PATCH', `/v1/collections/items/records/${id}`, { fields: { amount: 1 } }, 'builder PATCH');
        await denied(builder, 'DELETE', `/v1/collections/items/records/${id}`, undefined, 'builder DELETE');
        await allowed(builder, 'GET', `/v1/collections/items/records/${id}`, undefined, 200, 'builder GET');
        // auditor: sees which collections exist, never what they hold.
        await denied(auditor, 'GET', `/v1/collections/items/records/${id}`, undefined, 'auditor GET record');
        await denied(auditor, 'GET', '/v1/collections/items/records', undefined, 'auditor list');
        await denied(auditor, 'POST', '/v1/collections/items/records', newItem, 'auditor POST');
        await denied(auditor, 'PATCH', `/v1/collections/items/records/${id}`, { fields: { amount: 1 } }, 'auditor PATCH');
        await denied(auditor, 'DELETE', `/v1/collections/items/records/${id}`, undefined, 'auditor DELETE');
        await denied(auditor, 'PUT', `/v1/collections/auditor_${hex()}`, put('a'), 'auditor PUT');
        await allowed(auditor, 'GET', '/v1/collections', undefined, 200, 'auditor lists collections');
        // member: records, never definitions.
        await denied(member, 'PUT', '/v1/collections/items', itemsDefinition(a.marker), 'member PUT existing');
        await denied(member, 'PUT', `/v1/collections/member_${hex()}`, put('m'), 'member PUT new');
      });
      // The writes each role may make (after the snapshot, since they change A).
      const defined = await allowed(builder, 'PUT', `/v1/collections/builder_${hex()}`, put('b'), 201, 'builder PUT');
      assert.equal(defined.body.version, 1);
      const created = await allowed(member, 'POST', '/v1/collections/items/records', newItem, 201, 'member POST');
      await allowed(member, 'PATCH', `/v1/collections/items/records/${created.body.id}`, { fields: { amount: 5 } }, 200, 'member PATCH');
      await allowed(member, 'DELETE', `/v1/collections/items/records/${created.body.id}`, undefined, 204, 'member DELETE');
    });
  });
}
