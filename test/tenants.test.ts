/**
 * The tenant registry through the operator API: creation (UUIDv7 id, active, pool, default
 * region), listing, lookup by id and slug, lifecycle history with actors, the suspend/resume
 * transitions and the ones refused, slug uniqueness, configured regions, and the operator token
 * generated on first start (stored only as a hash, generated only once per database).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Bulkhead } from '../src/bulkhead.js';
import { loadConfig } from '../src/config.js';
import {
  BACKENDS,
  createTestDatabase,
  mintToken,
  openTestBulkhead,
  request,
  type TestBulkhead,
} from './support/backends.js';

const UUIDV7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

let slugSeq = 0;
/** A slug no other test of this run uses. */
function slug(prefix: string): string {
  return `${prefix}-${process.pid}-${++slugSeq}`;
}

/** The subject an operator token yields (the first 8 hex digits of its SHA-256), as recorded in history. */
function operatorSubject(token: string): string {
  return `operator:${createHash('sha256').update(token).digest('hex').slice(0, 8)}`;
}

for (const kind of BACKENDS) {
  describe(`tenants (${kind})`, () => {
    let t: TestBulkhead;
    let regional: TestBulkhead;

    before(async () => {
      t = await openTestBulkhead(kind);
      regional = await openTestBulkhead(kind, { BULKHEAD_REGIONS: 'eu,us' }, { controlRegion: 'eu', cells: [{ name: 'us-1', region: 'us' }] });
    });
    after(async () => {
      await t?.close();
      await regional?.close();
    });

    const op = (method: 'GET' | 'POST' | 'PATCH', url: string, body?: unknown, on: TestBulkhead = t) =>
      request(on.app, method, url, { token: on.operatorToken, ...(body === undefined ? {} : { body }) });

    it('creates an active pool tenant with a UUIDv7 id in the default region', async () => {
      const s = slug('create');
      const before = Date.now();
      const res = await op('POST', '/v1/tenants', { slug: s, name: 'Acme Corp' });
      assert.equal(res.status, 201);
      const body = res.body;
      assert.match(body.id, UUIDV7);
      // The UUIDv7 carries its creation time in the first 48 bits.
      const ms = parseInt(body.id.replace(/-/g, '').slice(0, 12), 16);
      assert.ok(ms >= before - 1000 && ms <= Date.now() + 1000, 'the id encodes the creation time');
      assert.equal(body.slug, s);
      assert.equal(body.name, 'Acme Corp');
      assert.equal(body.status, 'active');
      assert.equal(body.tier, 'pool');
      assert.equal(body.region, 'local');
      assert.match(body.createdAt, ISO);
      assert.match(body.updatedAt, ISO);
    });

    it('accepts an explicit pool tier and the configured region', async () => {
      const res = await op('POST', '/v1/tenants', { slug: slug('explicit'), name: 'X', tier: 'pool', region: 'local' });
      assert.equal(res.status, 201);
      assert.equal(res.body.tier, 'pool');
      assert.equal(res.body.region, 'local');
    });

    it('refuses unknown tiers', async () => {
      for (const tier of ['gold', 'Pool', '', 5, null]) {
        const res = await op('POST', '/v1/tenants', { slug: slug('tier'), name: 'X', tier });
        assert.equal(res.status, 400);
        assert.equal(res.body.code, 'TENANT_INVALID');
        assert.equal(res.body.field, 'tier');
      }
    });

    it('lists tenants, oldest first', async () => {
      const a = (await op('POST', '/v1/tenants', { slug: slug('list-a'), name: 'A' })).body;
      const b = (await op('POST', '/v1/tenants', { slug: slug('list-b'), name: 'B' })).body;
      const res = await op('GET', '/v1/tenants');
      assert.equal(res.status, 200);
      assert.ok(Array.isArray(res.body.tenants));
      const ids = res.body.tenants.map((x: { id: string }) => x.id);
      assert.ok(ids.includes(a.id) && ids.includes(b.id));
      assert.ok(ids.indexOf(a.id) < ids.indexOf(b.id));
      assert.deepEqual(
        res.body.tenants.find((x: { id: string }) => x.id === a.id),
        a,
      );
      assert.deepEqual([...ids].sort(), ids, 'ordered by (time-ordered) id');
    });

    it('shows one tenant by id and by slug', async () => {
      const created = (await op('POST', '/v1/tenants', { slug: slug('show'), name: 'Show Me' })).body;
      const byId = await op('GET', `/v1/tenants/${created.id}`);
      assert.equal(byId.status, 200);
      assert.deepEqual(byId.body, created);
      const bySlug = await op('GET', `/v1/tenants/${created.slug}`);
      assert.equal(bySlug.status, 200);
      assert.deepEqual(bySlug.body, created);
    });

    it('answers 404 TENANT_NOT_FOUND for an unknown id or slug', async () => {
      for (const ref of ['01936f4e-7c2a-7b3d-9e4f-0a1b2c3d4e5f', 'no-such-tenant', 'NOT_A_SLUG']) {
        const res = await op('GET', `/v1/tenants/${ref}`);
        assert.equal(res.status, 404);
        assert.equal(res.body.code, 'TENANT_NOT_FOUND');
      }
    });

    it('refuses a duplicate slug with 409 TENANT_SLUG_TAKEN and creates nothing', async () => {
      const s = slug('dup');
      assert.equal((await op('POST', '/v1/tenants', { slug: s, name: 'First' })).status, 201);
      const countBefore = (await op('GET', '/v1/tenants')).body.tenants.length;
      const res = await op('POST', '/v1/tenants', { slug: s, name: 'Second' });
      assert.equal(res.status, 409);
      assert.equal(res.body.code, 'TENANT_SLUG_TAKEN');
      assert.equal(res.body.field, 'slug');
      assert.equal((await op('GET', '/v1/tenants')).body.tenants.length, countBefore);
      assert.equal((await op('GET', `/v1/tenants/${s}`)).body.name, 'First');
    });

    it('records history: created, suspended, active again, each with its actor', async () => {
      const created = (await op('POST', '/v1/tenants', { slug: slug('hist'), name: 'H' })).body;
      const actor = operatorSubject(t.operatorToken);

      const suspended = await op('PATCH', `/v1/tenants/${created.id}`, { status: 'suspended' });
      assert.equal(suspended.status, 200);
      assert.equal(suspended.body.status, 'suspended');
      assert.equal(suspended.body.id, created.id);
      assert.ok(suspended.body.updatedAt >= created.updatedAt);
      assert.equal((await op('GET', `/v1/tenants/${created.id}`)).body.status, 'suspended');

      // Resuming by slug works as well as by id.
      const resumed = await op('PATCH', `/v1/tenants/${created.slug}`, { status: 'active' });
      assert.equal(resumed.status, 200);
      assert.equal(resumed.body.status, 'active');

      const res = await op('GET', `/v1/tenants/${created.id}/history`);
      assert.equal(res.status, 200);
      const history = res.body.history;
      assert.equal(history.length, 3);
      assert.deepEqual(
        history.map((h: Record<string, unknown>) => [h.event, h.fromStatus, h.toStatus, h.actor]),
        [
          ['created', null, 'active', actor],
          ['status', 'active', 'suspended', actor],
          ['status', 'suspended', 'active', actor],
        ],
      );
      for (const h of history) assert.match(h.at, ISO);
      assert.ok(history[0].seq < history[1].seq && history[1].seq < history[2].seq);
      assert.deepEqual((await op('GET', `/v1/tenants/${created.slug}/history`)).body, res.body);
    });

    it('a suspended tenant cannot use its tokens; resumed, it can again', async () => {
      const created = (await op('POST', '/v1/tenants', { slug: slug('susp'), name: 'S' })).body;
      const token = await mintToken(t, created.id, ['tenant_admin']);
      assert.equal((await request(t.app, 'GET', '/v1/collections', { token })).status, 200);
      await op('PATCH', `/v1/tenants/${created.id}`, { status: 'suspended' });
      const refused = await request(t.app, 'GET', '/v1/collections', { token });
      assert.equal(refused.status, 401);
      assert.equal(refused.body.code, 'AUTH_TENANT_INACTIVE');
      await op('PATCH', `/v1/tenants/${created.id}`, { status: 'active' });
      assert.equal((await request(t.app, 'GET', '/v1/collections', { token })).status, 200);
    });

    it('a suspension made by another process takes effect at once: the database re-checks every batch', async () => {
      const created = (await op('POST', '/v1/tenants', { slug: slug('other-proc'), name: 'O' })).body;
      const token = await mintToken(t, created.id, ['tenant_admin']);
      const define = await request(t.app, 'PUT', '/v1/collections/notes', { token, body: { fields: { title: { type: 'string' } } } });
      assert.equal(define.status, 201, define.text);
      const written = await request(t.app, 'POST', '/v1/collections/notes/records', { token, body: { fields: { title: 'x' } } });
      assert.equal(written.status, 201);
      // This process now holds "active" in its status cache (30 s) and the definition in its collection cache.
      const other = await Bulkhead.open(t.config, { engine: await t.db.engine() });
      try {
        await other.tenants.setStatus(created.id, 'suspended', 'test');
      } finally {
        // On PGlite the engine is shared: closing `other` would close it, so only the PostgreSQL pool is closed.
        if (kind === 'postgres') await other.close();
      }
      for (const [method, url, body] of [
        ['GET', `/v1/collections/notes/records/${written.body.id}`, undefined],
        ['GET', '/v1/collections/notes/records', undefined],
        ['POST', '/v1/collections/notes/records', { fields: { title: 'y' } }],
        ['PATCH', `/v1/collections/notes/records/${written.body.id}`, { fields: { title: 'z' } }],
        ['DELETE', `/v1/collections/notes/records/${written.body.id}`, undefined],
      ] as const) {
        const res = await request(t.app, method, url, { token, ...(body ? { body } : {}) });
        assert.equal(res.status, 401, `${method} ${url}: ${res.text}`);
        assert.equal(res.body.code, 'AUTH_TENANT_INACTIVE');
      }
      // Nothing was written while suspended.
      const stored = await t.bh.store.tenant(created.id, { requireActive: false }).batch([
        { text: 'SELECT data FROM bulkhead.records WHERE tenant_id = $1', values: [created.id] },
      ]);
      assert.deepEqual(stored[0]!.rows.map((r) => r.data), [{ title: 'x' }]);
    });

    it('a tenant scope for a tenant that does not exist is refused by the database', async () => {
      const missing = '01890a5d-ac96-774b-bcce-b302099a8057';
      await assert.rejects(t.bh.store.tenant(missing).batch([{ text: 'SELECT 1' }]), { code: 'AUTH_TENANT_INACTIVE' });
    });

    it('setting the current status again changes nothing and records nothing', async () => {
      const created = (await op('POST', '/v1/tenants', { slug: slug('same'), name: 'S' })).body;
      const res = await op('PATCH', `/v1/tenants/${created.id}`, { status: 'active' });
      assert.equal(res.status, 200);
      assert.deepEqual(res.body, created);
      assert.equal((await op('GET', `/v1/tenants/${created.id}/history`)).body.history.length, 1);
    });

    it('refuses transitions this API does not make, and unknown statuses, with TENANT_INVALID', async () => {
      const created = (await op('POST', '/v1/tenants', { slug: slug('refuse'), name: 'R' })).body;
      for (const status of ['quarantined', 'migrating', 'offboarding', 'erased', 'deleted', '', 42, null]) {
        const res = await op('PATCH', `/v1/tenants/${created.id}`, { status });
        assert.equal(res.status, 400, `status ${String(status)}`);
        assert.equal(res.body.code, 'TENANT_INVALID');
        assert.equal(res.body.field, 'status');
      }
      // From suspended, too: only back to active.
      await op('PATCH', `/v1/tenants/${created.id}`, { status: 'suspended' });
      const res = await op('PATCH', `/v1/tenants/${created.id}`, { status: 'erased' });
      assert.equal(res.status, 400);
      assert.equal(res.body.code, 'TENANT_INVALID');
      assert.equal((await op('GET', `/v1/tenants/${created.id}`)).body.status, 'suspended');
      const history = (await op('GET', `/v1/tenants/${created.id}/history`)).body.history;
      assert.deepEqual(
        history.map((h: { toStatus: string }) => h.toStatus),
        ['active', 'suspended'],
      );
    });

    it('answers 404 for a status change or history of an unknown tenant', async () => {
      const patch = await op('PATCH', '/v1/tenants/01936f4e-7c2a-7b3d-9e4f-0a1b2c3d4e5f', { status: 'suspended' });
      assert.equal(patch.status, 404);
      assert.equal(patch.body.code, 'TENANT_NOT_FOUND');
      const history = await op('GET', '/v1/tenants/no-such-tenant/history');
      assert.equal(history.status, 404);
      assert.equal(history.body.code, 'TENANT_NOT_FOUND');
    });

    it('with BULKHEAD_REGIONS=eu,us: defaults to the first region, accepts the listed ones only', async () => {
      const dflt = await op('POST', '/v1/tenants', { slug: slug('eu'), name: 'EU' }, regional);
      assert.equal(dflt.status, 201);
      assert.equal(dflt.body.region, 'eu');
      const us = await op('POST', '/v1/tenants', { slug: slug('us'), name: 'US', region: 'us' }, regional);
      assert.equal(us.status, 201);
      assert.equal(us.body.region, 'us');
      for (const region of ['local', 'ap', 'EU', '', 7]) {
        const res = await op('POST', '/v1/tenants', { slug: slug('bad-region'), name: 'X', region }, regional);
        assert.equal(res.status, 400, `region ${String(region)}`);
        assert.equal(res.body.code, 'TENANT_INVALID');
        assert.equal(res.body.field, 'region');
      }
      // The default deployment serves only its own region.
      const other = await op('POST', '/v1/tenants', { slug: slug('eu-on-local'), name: 'X', region: 'eu' });
      assert.equal(other.status, 400);
      assert.equal(other.body.code, 'TENANT_INVALID');
    });

    it('generates an operator token on first start, stores only its hash, and not again on the next start', async () => {
      const db = await createTestDatabase(kind);
      const dataDir = mkdtempSync(join(tmpdir(), 'bulkhead-first-start-'));
      try {
        const config = loadConfig(
          {},
          {
            BULKHEAD_DATA_DIR: dataDir,
            BULKHEAD_OWNER_ROLE: db.ownerRole,
            BULKHEAD_APP_ROLE: db.appRole,
            BULKHEAD_PARTITIONS: '4',
            BULKHEAD_JWT_SECRET: randomBytes(32).toString('base64url'),
            BULKHEAD_LOG_LEVEL: 'silent',
          },
        );
        assert.equal(config.operatorToken, undefined);
        const generated: string[] = [];
        const first = await Bulkhead.open(config, { engine: await db.engine(), onOperatorTokenGenerated: (tok) => generated.push(tok) });
        assert.equal(generated.length, 1);
        const token = generated[0]!;
        assert.match(token, /^bho_[A-Za-z0-9_-]{43}$/);

        const [stored] = await first.store.platform().batch([{ text: 'SELECT hash, label FROM bulkhead.operator_tokens' }]);
        assert.equal(stored!.rows.length, 1);
        const row = stored!.rows[0]!;
        assert.equal(row.hash, `sha256:${createHash('sha256').update(token).digest('hex')}`);
        assert.ok(!String(row.hash).includes(token.slice(4)), 'the token itself is not stored');
        assert.ok(!String(row.label).includes(token.slice(4)));
        const principal = await first.authenticate(`Bearer ${token}`);
        assert.equal(principal.kind, 'operator');

        // A second start on the same database (PostgreSQL: another pool) finds the stored hash.
        const second = await Bulkhead.open(config, { engine: await db.engine(), onOperatorTokenGenerated: (tok) => generated.push(tok) });
        assert.equal(generated.length, 1, 'no second token is generated');
        const [again] = await second.store.platform().batch([{ text: 'SELECT count(*)::int AS n FROM bulkhead.operator_tokens' }]);
        assert.equal(again!.rows[0]!.n, 1);
        assert.equal((await second.authenticate(`Bearer ${token}`)).kind, 'operator');
      } finally {
        // The engines belong to the test database (PGlite: one shared instance), which closes them.
        await db.drop();
        rmSync(dataDir, { recursive: true, force: true });
      }
    });

    it('does not generate a token when BULKHEAD_OPERATOR_TOKEN is set', async () => {
      // The test instance was opened with BULKHEAD_OPERATOR_TOKEN: nothing was generated or stored.
      const [stored] = await t.bh.store.platform().batch([{ text: 'SELECT count(*)::int AS n FROM bulkhead.operator_tokens' }]);
      assert.equal(stored!.rows[0]!.n, 0);
      assert.equal((await t.bh.authenticate(`Bearer ${t.operatorToken}`)).kind, 'operator');
    });
  });
}
