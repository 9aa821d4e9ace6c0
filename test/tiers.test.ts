/**
 * The bridge and silo isolation tiers (SPEC section 2) hold the same tenant boundary as the pool,
 * and residency is enforced on every route.
 *
 * - API (OWASP WSTG-APIT-02): tenants on every tier replay each other's record ids, collection
 *   names, unique values and reference targets with their own tokens; every attempt answers like
 *   a request on something missing, and every tenant's stored data is read back byte for byte
 *   (pool tables, bridge schema, silo database) before and after to show that nothing changed.
 * - Bridge: the tenant's database role reaches its own schema only (SQLSTATE 42501 anywhere
 *   else), RLS is still enabled and FORCED there, and a wrong tenant context reads nothing.
 * - Silo: a database of its own (PostgreSQL) or a PGlite instance of its own, with its own roles;
 *   a suspension is mirrored there and refused by the silo's own active-tenant check.
 * - Residency (SPEC section 3): a placement outside the tenant's region is refused when a tenant
 *   is created and when a request is routed, and a refused creation leaves nothing behind.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { AuthenticationError, BulkheadError, DatabaseError } from '../src/errors.js';
import { BridgeTier, hex } from '../src/placement/bridge-tier.js';
import type { Cell } from '../src/placement/cells.js';
import type { ResolvedPlacement } from '../src/placement/placements.js';
import { SiloTier } from '../src/placement/silo-tier.js';
import { TIERS, type TierName } from '../src/placement/tier.js';
import type { Engine, Statement, StatementResult } from '../src/store/engine.js';
import { DATA_TABLES, legacyBridgeRolesSql } from '../src/store/migrations.js';
import { CONTEXT_SQL } from '../src/store/store.js';
import { BACKENDS, mintToken, openTestBulkhead, request, type TestBulkhead, type TestResponse } from './support/backends.js';
import { assertProblem, rejectsSql } from './support/assertions.js';

type Method = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

/** The collection every tenant defines: a unique, an indexed and a reference field. */
const NOTES = {
  fields: {
    title: { type: 'string', required: true },
    code: { type: 'string', unique: true },
    tag: { type: 'string', indexed: true },
    ref: { type: 'reference', collection: 'notes' },
  },
};
/** A unique value every tenant stores: it must never collide across tenants. */
const SHARED_CODE = 'shared-code';
/** The record routes an attacker replays another tenant's ids on, with their bodies. */
const RECORD_METHODS: ReadonlyArray<readonly [Method, unknown]> = [
  ['GET', undefined],
  ['PATCH', { fields: { title: 'pwned' } }],
  ['DELETE', undefined],
];
const PRIVILEGES = ['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER'] as const;
/** What a bridge tenant's role may do on each table of its own schema (`dataGrantsSql`), and nothing more. */
const BRIDGE_GRANTS: Readonly<Record<(typeof DATA_TABLES)[number], readonly string[]>> = {
  tenant_keys: ['SELECT', 'INSERT', 'UPDATE'],
  collections: ['SELECT', 'INSERT', 'UPDATE'],
  collection_versions: ['SELECT', 'INSERT'],
  records: ['SELECT', 'INSERT', 'UPDATE', 'DELETE'],
  unique_values: ['SELECT', 'INSERT', 'DELETE'],
  index_values: ['SELECT', 'INSERT', 'DELETE'],
  audit_events: ['SELECT', 'INSERT'],
};
/** The order a snapshot reads each data table in. */
const ORDER: Readonly<Record<(typeof DATA_TABLES)[number], string>> = {
  tenant_keys: 'purpose, version',
  collections: 'name',
  collection_versions: 'name, version',
  records: 'collection, id',
  unique_values: 'collection, field, key',
  index_values: 'collection, field, key, record_id',
  audit_events: 'seq',
};
/**
 * The tables a snapshot compares: the data tables but the audit chain, which grows with every
 * request, refused ones included (its isolation is test/audit-storage.test.ts's).
 */
const SNAPSHOT_TABLES = DATA_TABLES.filter((table) => table !== 'audit_events');
/** The policy every tenant table carries, as the catalog prints it. */
const TENANT_POLICY = /^\(?tenant_id = \(?NULLIF\(current_setting\('bulkhead\.tenant_id'::text, true\), ''::text\)\)?::uuid\)?$/i;
const PARTITIONS = 4; // BULKHEAD_PARTITIONS of openTestBulkhead

/** One tenant of a test, with everything another tenant could try to reach. */
interface Tenant {
  readonly tier: TierName;
  readonly id: string;
  readonly slug: string;
  readonly token: string;
  /** Carried by every value this tenant stores; no answer to another tenant may contain it. */
  readonly marker: string;
  /** Records of `notes`; the first holds SHARED_CODE, the others reference the first. */
  readonly noteIds: readonly string[];
  /** A collection only this tenant defines, and its record. */
  readonly only: string;
  readonly onlyIds: readonly string[];
}

function nonce(bytes = 5): string {
  return randomBytes(bytes).toString('hex');
}

function expectStatus(res: TestResponse, status: number, what: string): void {
  assert.equal(res.status, status, `${what}: expected ${status}, got ${res.status} ${res.text}`);
}

/** Asserts a problem answer with `status`, `code` and the offending `field`. */
function assertFieldProblem(res: TestResponse, status: number, code: string, field: string, what: string): void {
  assertProblem(res, status, code, what);
  assert.equal(res.body.field, field, `${what}: field`);
}

/** Creates a tenant through the operator API with `body` (slug and name added) and returns the answer. */
function postTenant(t: TestBulkhead, body: Record<string, unknown>): Promise<TestResponse> {
  return request(t.app, 'POST', '/v1/tenants', { token: t.operatorToken, body: { slug: `tier-${nonce()}`, name: 'tier test', ...body } });
}

/** Creates a tenant on `tier` and fills it: `notes` with three records, and a collection of its own. */
async function seedTenant(t: TestBulkhead, tier: TierName, options: { region?: string; cell?: string } = {}): Promise<Tenant> {
  const marker = `${tier}mark${nonce()}`;
  const created = await postTenant(t, { tier, ...options });
  expectStatus(created, 201, `create a ${tier} tenant`);
  assert.equal(created.body.tier, tier);
  assert.equal(created.body.status, 'active');
  const { id, slug } = created.body as { id: string; slug: string };
  const token = await mintToken(t, id, ['tenant_admin']);
  expectStatus(await request(t.app, 'PUT', '/v1/collections/notes', { token, body: NOTES }), 201, `${tier}: define notes`);
  const noteIds: string[] = [];
  for (let i = 0; i < 3; i++) {
    const fields = {
      title: `${marker} note ${i}`,
      code: i === 0 ? SHARED_CODE : `${marker}-code-${i}`,
      tag: `${marker}-tag`,
      ...(i > 0 ? { ref: noteIds[0] } : {}),
    };
    const res = await request(t.app, 'POST', '/v1/collections/notes/records', { token, body: { fields } });
    // Every tenant stores SHARED_CODE: a 409 here would be a collision across tenants.
    expectStatus(res, 201, `${tier}: create note ${i}`);
    noteIds.push(res.body.id);
  }
  const only = `only_${marker}`;
  expectStatus(await request(t.app, 'PUT', `/v1/collections/${only}`, { token, body: { fields: { secret: { type: 'string', unique: true } } } }), 201, `${tier}: define ${only}`);
  const secret = await request(t.app, 'POST', `/v1/collections/${only}/records`, { token, body: { fields: { secret: `${marker} secret` } } });
  expectStatus(secret, 201, `${tier}: create a secret`);
  return { tier, id, slug, token, marker, noteIds, only, onlyIds: [secret.body.id] };
}

/** What must never appear in an answer to another tenant. */
function secretsOf(w: Tenant): string[] {
  return [w.marker, w.id, w.slug, w.only, ...w.noteIds, ...w.onlyIds];
}

/** Fails if the answer carries any of `victim`'s data (`exclude`: what the attacker itself sent). */
function assertNoLeak(res: TestResponse, victim: Tenant, what: string, exclude: readonly string[] = []): void {
  for (const secret of secretsOf(victim)) {
    if (exclude.includes(secret)) continue;
    assert.ok(!res.text.includes(secret), `${what}: the answer carries another tenant's data (${secret}): ${res.text.slice(0, 300)}`);
  }
}

/** The answer text with its request id blanked, for a byte-for-byte comparison of problem documents. */
function sansRequestId(res: TestResponse): string {
  const id = res.body?.requestId;
  assert.equal(typeof id, 'string', `a problem document carries its request id: ${res.text}`);
  return res.text.split(`"requestId":${JSON.stringify(id)}`).join('"requestId":""');
}

/** Asserts that `actual` is the very answer `reference` got on an object that never existed. */
function assertSameAnswer(actual: TestResponse, reference: TestResponse, status: number, code: string, what: string): void {
  assertProblem(reference, status, code, `${what} (reference)`);
  assertProblem(actual, status, code, what);
  assert.equal(sansRequestId(actual), sansRequestId(reference), `${what}: the answer differs from the one for a missing object`);
}

/** Ids of a list answer. */
function idsOf(res: TestResponse): string[] {
  return (res.body.records as Array<{ id: string }>).map((r) => r.id);
}

/** Lists `notes` as `caller` with query `q`; asserts a 200 and returns the ids. */
async function listNotes(t: TestBulkhead, caller: Tenant, q: Record<string, string>, others: readonly Tenant[]): Promise<string[]> {
  const qs = new URLSearchParams({ limit: '1000', ...q }).toString();
  const res = await request(t.app, 'GET', `/v1/collections/notes/records?${qs}`, { token: caller.token });
  expectStatus(res, 200, `${caller.tier} lists ${qs}`);
  for (const victim of others) assertNoLeak(res, victim, `${caller.tier} lists ${qs}`);
  return idsOf(res);
}

/** The bridge and silo tier objects, typed as what they are. */
function tiersOf(t: TestBulkhead): { bridge: BridgeTier; silo: SiloTier } {
  const { bridge, silo } = t.bh.placements.tiers;
  assert.ok(bridge instanceof BridgeTier && silo instanceof SiloTier);
  return { bridge, silo };
}

/** Where a tenant's data tables are. */
interface Storage {
  readonly placement: ResolvedPlacement;
  readonly cell: Cell;
  /**
   * An engine on the database that holds them: its cell's main database (pool, bridge) or its
   * silo. These connect with the login that created the databases, a superuser in tests, and
   * switch no role, so RLS does not apply to what they read.
   */
  readonly engine: Engine;
  /** The schema of the data tables: `bulkhead` (pool, and inside a silo) or the bridge schema. */
  readonly schema: string;
}

async function storageOf(t: TestBulkhead, tenantId: string): Promise<Storage> {
  const placement = await t.bh.placements.resolve(tenantId);
  assert.ok(placement, `tenant ${tenantId} has no directory entry`);
  const cell = t.bh.placements.cells.get(placement.cell);
  if (placement.tier === 'silo') {
    const store = await tiersOf(t).silo.store(cell, tenantId, placement.location);
    return { placement, cell, engine: store.engine, schema: 'bulkhead' };
  }
  return { placement, cell, engine: cell.store.engine, schema: placement.tier === 'bridge' ? placement.location : 'bulkhead' };
}

/**
 * Every row of a tenant's data tables where its placement keeps them, as comparable text. A bridge
 * schema or silo database holds one tenant, so it is read whole: a row another tenant planted
 * there would show as well.
 */
async function dataSnapshot(t: TestBulkhead, w: Tenant): Promise<string> {
  const s = await storageOf(t, w.id);
  const whole = s.placement.tier !== 'pool';
  const data = await s.engine.batch(
    SNAPSHOT_TABLES.map(
      (table): Statement => ({
        text: `SELECT * FROM ${s.schema}.${table} ${whole ? '' : 'WHERE tenant_id = $1'} ORDER BY tenant_id, ${ORDER[table]}`,
        values: whole ? [] : [w.id],
      }),
    ),
  );
  // At least its seeded records: the snapshot is not empty, so comparing two of them is not vacuous.
  const records = data[SNAPSHOT_TABLES.indexOf('records')]!.rows;
  assert.ok(records.length >= w.noteIds.length + w.onlyIds.length, `${w.tier}: ${records.length} records in the snapshot`);
  for (const r of data) for (const row of r.rows) assert.equal(row.tenant_id, w.id, `${w.tier}: a row of another tenant`);
  return JSON.stringify(data.map((r) => r.rows));
}

/**
 * Everything stored for a tenant: its registry row, history and directory entry (read through
 * `su`, the control database as the superuser), a silo's copy of the registry, and its data.
 */
async function snapshot(t: TestBulkhead, su: Engine, w: Tenant): Promise<string> {
  const s = await storageOf(t, w.id);
  const control = await su.batch([
    { text: 'SELECT * FROM bulkhead.tenants WHERE id = $1', values: [w.id] },
    { text: 'SELECT * FROM bulkhead.tenant_history WHERE tenant_id = $1 ORDER BY seq', values: [w.id] },
    { text: 'SELECT * FROM bulkhead.placements WHERE tenant_id = $1', values: [w.id] },
  ]);
  const mirror = s.placement.tier === 'silo' ? await s.engine.batch([{ text: 'SELECT * FROM bulkhead.tenants ORDER BY id' }]) : [];
  return JSON.stringify([...control, ...mirror].map((r) => r.rows)) + (await dataSnapshot(t, w));
}

/** Snapshots of every tenant, by id. */
async function snapshots(t: TestBulkhead, su: Engine, tenants: readonly Tenant[]): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const w of tenants) out.set(w.id, await snapshot(t, su, w));
  return out;
}

/** Counts of `tenantIds`' rows in the pool tables of the database `engine` is on. */
async function poolRows(engine: Engine, tenantIds: readonly string[]): Promise<Record<string, number>> {
  const ids = JSON.stringify(tenantIds);
  const results = await engine.batch(
    DATA_TABLES.map((table) => ({
      text: `SELECT count(*)::int AS n FROM bulkhead.${table} WHERE tenant_id IN (SELECT jsonb_array_elements_text($1::text::jsonb)::uuid)`,
      values: [ids],
    })),
  );
  return Object.fromEntries(DATA_TABLES.map((table, i) => [table, results[i]!.rows[0]!.n as number]));
}

const NO_POOL_ROWS = Object.fromEntries(DATA_TABLES.map((table) => [table, 0]));

/**
 * Every piece of storage the deployment has, as comparable text: registry and directory rows,
 * and in each cell the bridge schemas, the deployment's roles and the silos (PostgreSQL
 * databases on the server, PGlite directories beside the cell's store). A refused creation must
 * leave this exactly as it was.
 */
async function inventory(t: TestBulkhead, su: Engine): Promise<string> {
  const appRole = t.db.appRole;
  const [tenants, placements] = await su.batch([
    { text: 'SELECT id, slug FROM bulkhead.tenants ORDER BY id' },
    { text: 'SELECT tenant_id, tier, cell, location FROM bulkhead.placements ORDER BY tenant_id' },
  ]);
  const cells: unknown[] = [];
  for (const cell of t.bh.placements.cells.all()) {
    const [schemas, roles, databases] = await cell.store.engine.batch([
      { text: "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tenant\\_%' ORDER BY 1" },
      { text: "SELECT rolname FROM pg_roles WHERE rolname LIKE $1 || '\\_%' ORDER BY 1", values: [appRole] },
      { text: "SELECT datname FROM pg_database WHERE datname LIKE $1 || '\\_%' ORDER BY 1", values: [appRole] },
    ]);
    const dataDir = t.config.cells.find((c) => c.name === cell.name)?.dataDir;
    const siloDir = dataDir ? join(dirname(dataDir), `${basename(dataDir)}.silos`) : undefined;
    cells.push({
      cell: cell.name,
      schemas: schemas!.rows,
      roles: roles!.rows,
      databases: databases!.rows,
      siloDirs: siloDir && existsSync(siloDir) ? readdirSync(siloDir).sort() : [],
    });
  }
  return JSON.stringify({ tenants: tenants!.rows, placements: placements!.rows, cells });
}

/** Asserts that creating a tenant with `body` fails with `status`/`code` on `field` and leaves no storage behind. */
async function refusedCreate(t: TestBulkhead, su: Engine, body: Record<string, unknown>, status: number, code: string, field: string): Promise<void> {
  const what = `create ${JSON.stringify(body)}`;
  const before = await inventory(t, su);
  const slug = `refused-${nonce()}`;
  const res = await request(t.app, 'POST', '/v1/tenants', { token: t.operatorToken, body: { slug, name: 'refused', ...body } });
  assertFieldProblem(res, status, code, field, what);
  assertProblem(await request(t.app, 'GET', `/v1/tenants/${slug}`, { token: t.operatorToken }), 404, 'TENANT_NOT_FOUND', `${what}: no tenant`);
  assert.equal(await inventory(t, su), before, `${what}: storage was left behind`);
}

/**
 * Runs `statements` on `engine` (as the superuser) after switching to `role` with the tenant
 * context `tenant` ('' for none) and search path `schema`, exactly as the Store's context does,
 * but without its active-tenant check, so contexts the Store never builds can be tried.
 */
async function asRole(engine: Engine, role: string, tenant: string, scope: 'tenant' | 'platform', schema: string, statements: readonly Statement[]): Promise<StatementResult[]> {
  const context: Statement[] = [
    { text: CONTEXT_SQL, values: [role, tenant, scope] },
    { text: "SELECT set_config('search_path', $1, true)", values: [schema] },
  ];
  return (await engine.batch([...context, ...statements])).slice(context.length);
}

/** The statements of a probe that must all read (or change) nothing: counts, then writes. */
function emptyProbe(schema: string): Statement[] {
  return [
    ...DATA_TABLES.map((table) => ({ text: `SELECT count(*)::int AS n FROM ${schema}.${table}` })),
    { text: `UPDATE ${schema}.records SET version = version` },
    { text: `DELETE FROM ${schema}.records` },
  ];
}

function assertEmpty(results: readonly StatementResult[], what: string): void {
  for (const [i, r] of results.entries()) {
    if (i < DATA_TABLES.length) assert.equal(r.rows[0]!.n, 0, `${what}: ${DATA_TABLES[i]} is not empty`);
    else assert.equal(r.rowCount, 0, `${what}: statement ${i} changed rows`);
  }
}

/** The names a silo tenant's roles get (`<appRole>_o<hex>` owns its database's objects, `<appRole>_s<hex>` runs its requests). */
function siloRoles(t: TestBulkhead, tenantId: string): { owner: string; app: string } {
  return { owner: `${t.db.appRole}_o${hex(tenantId)}`, app: `${t.db.appRole}_s${hex(tenantId)}` };
}

/** A role's attributes and everything it owns in the database `engine` is on. */
async function roleFacts(engine: Engine, role: string): Promise<Record<string, unknown>> {
  const [r] = await engine.batch([
    {
      text:
        'SELECT r.rolsuper, r.rolbypassrls, r.rolcreaterole, r.rolcreatedb, r.rolcanlogin, ' +
        '(SELECT count(*) FROM pg_class WHERE relowner = r.oid)::int AS classes, (SELECT count(*) FROM pg_proc WHERE proowner = r.oid)::int AS procs, ' +
        '(SELECT count(*) FROM pg_namespace WHERE nspowner = r.oid)::int AS schemas, (SELECT count(*) FROM pg_type WHERE typowner = r.oid)::int AS types ' +
        'FROM pg_roles r WHERE r.rolname = $1',
      values: [role],
    },
  ]);
  assert.equal(r!.rows.length, 1, `role ${role} does not exist`);
  return r!.rows[0]!;
}

const POWERLESS = { rolsuper: false, rolbypassrls: false, rolcreaterole: false, rolcreatedb: false, rolcanlogin: false };

/** Which of PRIVILEGES `role` holds on `table` (table-wide or on any column), in the database `engine` is on. */
async function privilegesOn(engine: Engine, role: string, table: string): Promise<string[]> {
  const [r] = await engine.batch([
    {
      text:
        `SELECT ${PRIVILEGES.map((p) => `has_table_privilege($1::name, $2::text, '${p}') AS "${p}"`).join(', ')}, ` +
        `${['SELECT', 'INSERT', 'UPDATE', 'REFERENCES'].map((p) => `has_any_column_privilege($1::name, $2::text, '${p}') AS "col_${p}"`).join(', ')}`,
      values: [role, table],
    },
  ]);
  return Object.entries(r!.rows[0]!)
    .filter(([, held]) => held === true)
    .map(([p]) => p)
    .sort();
}

/** The privileges a table-wide grant of `privileges` shows as (column privileges follow table ones). */
function granted(privileges: readonly string[]): string[] {
  const columns = privileges.filter((p) => ['SELECT', 'INSERT', 'UPDATE', 'REFERENCES'].includes(p)).map((p) => `col_${p}`);
  return [...privileges, ...columns].sort();
}

for (const kind of BACKENDS) {
  describe(`bridge and silo tiers (${kind})`, () => {
    let t: TestBulkhead;
    /** The control database as the superuser (bypasses RLS). */
    let su: Engine;
    /** Two tenants per tier, all on the control cell. */
    let tenants: Tenant[];
    const on = (tier: TierName, n: 0 | 1): Tenant => tenants.filter((w) => w.tier === tier)[n]!;

    before(async () => {
      t = await openTestBulkhead(kind);
      su = await t.db.engine();
      tenants = [];
      for (const tier of TIERS) for (let n = 0; n < 2; n++) tenants.push(await seedTenant(t, tier));
    });
    after(async () => {
      await t?.close();
    });

    it('records each placement in the directory and keeps each tenant\'s data there, and bridge and silo data out of the pool tables', async () => {
      const { bridge, silo } = tiersOf(t);
      const control = t.bh.placements.control;
      for (const w of tenants) {
        const s = await storageOf(t, w.id);
        const location = { pool: 'bulkhead', bridge: bridge.locationOf(control, w.id), silo: silo.locationOf(control, w.id) }[w.tier];
        assert.deepEqual(s.placement, { tier: w.tier, cell: 'local', location, region: 'local', writesPausedUntil: null, epoch: 1 }, w.tier);
        assert.match(location, { pool: /^bulkhead$/, bridge: /^tenant_[0-9a-f]{32}$/, silo: new RegExp(`^${t.db.appRole}_s[0-9a-f]{32}$`) }[w.tier]);
        const [row] = await su.batch([{ text: 'SELECT tier, cell, location FROM bulkhead.placements WHERE tenant_id = $1', values: [w.id] }]);
        assert.deepEqual(row!.rows, [{ tier: w.tier, cell: 'local', location }]);
        const operatorView = await request(t.app, 'GET', `/v1/tenants/${w.id}`, { token: t.operatorToken });
        expectStatus(operatorView, 200, 'read the tenant');
        assert.equal(operatorView.body.tier, w.tier);
        // The tenant's rows are where its placement says.
        const [records] = await s.engine.batch([{ text: `SELECT id FROM ${s.schema}.records WHERE tenant_id = $1 ORDER BY id`, values: [w.id] }]);
        assert.deepEqual(records!.rows.map((r) => r.id), [...w.noteIds, ...w.onlyIds].sort(), `${w.tier}: records in its storage`);
      }
      const pooled = tenants.filter((w) => w.tier === 'pool');
      const elsewhere = tenants.filter((w) => w.tier !== 'pool');
      assert.deepEqual(await poolRows(su, elsewhere.map((w) => w.id)), NO_POOL_ROWS, 'bridge or silo rows in the pool tables');
      const inPool = await poolRows(su, pooled.map((w) => w.id));
      assert.equal(inPool.records, 8, 'the pool tenants\' records are in the pool tables');
    });

    it('answers every tenant\'s record ids, replayed with every other tenant\'s token, exactly like a missing record, and changes nothing (WSTG-APIT-02)', async () => {
      const before = await snapshots(t, su, tenants);
      for (const attacker of tenants) {
        // What the attacker gets for a record that never existed: the answer every replay must match.
        const reference = new Map<Method, TestResponse>();
        for (const [method, body] of RECORD_METHODS) {
          reference.set(method, await request(t.app, method, `/v1/collections/notes/records/${randomUUID()}`, { token: attacker.token, body }));
        }
        for (const victim of tenants.filter((w) => w !== attacker)) {
          const what = `${attacker.tier} → ${victim.tier}`;
          for (const id of [...victim.noteIds, ...victim.onlyIds]) {
            for (const [method, body] of RECORD_METHODS) {
              const res = await request(t.app, method, `/v1/collections/notes/records/${id}`, { token: attacker.token, body });
              assertSameAnswer(res, reference.get(method)!, 404, 'RECORD_NOT_FOUND', `${what} ${method} ${id}`);
              assertNoLeak(res, victim, `${what} ${method}`);
            }
          }
          // The victim's own collection does not exist for the attacker, whatever the route.
          const onlyRoutes: Array<[Method, string, unknown]> = [
            ['GET', `/v1/collections/${victim.only}`, undefined],
            ['GET', `/v1/collections/${victim.only}/records`, undefined],
            ['GET', `/v1/collections/${victim.only}/records/${victim.onlyIds[0]}`, undefined],
            ['PATCH', `/v1/collections/${victim.only}/records/${victim.onlyIds[0]}`, { fields: { secret: 'pwned' } }],
            ['DELETE', `/v1/collections/${victim.only}/records/${victim.onlyIds[0]}`, undefined],
            ['POST', `/v1/collections/${victim.only}/records`, { fields: { secret: 'planted' } }],
          ];
          for (const [method, url, body] of onlyRoutes) {
            const res = await request(t.app, method, url, { token: attacker.token, body });
            assertProblem(res, 404, 'COLLECTION_NOT_FOUND', `${what} ${method} ${url}`);
            assertNoLeak(res, victim, `${what} ${method} ${url}`, [victim.only, victim.onlyIds[0]!]);
          }
          // A reference to the victim's record is refused exactly like a reference to nothing.
          const referTo = (target: string) =>
            request(t.app, 'POST', '/v1/collections/notes/records', { token: attacker.token, body: { fields: { title: `${attacker.marker} ref`, ref: target } } });
          const ref = await referTo(victim.noteIds[0]!);
          assertSameAnswer(ref, await referTo(randomUUID()), 400, 'RECORD_REFERENCE_NOT_FOUND', `${what} reference`);
          assert.equal(ref.body.field, 'ref');
          assertNoLeak(ref, victim, `${what} reference`);
        }
      }
      assert.deepEqual(await snapshots(t, su, tenants), before, 'a tenant\'s stored data changed');
    });

    it('lists and filters return only the caller\'s own records, and a unique value of one tenant never collides with another\'s', async () => {
      const before = await snapshots(t, su, tenants);
      for (const caller of tenants) {
        const others = tenants.filter((w) => w !== caller);
        assert.deepEqual(new Set(await listNotes(t, caller, {}, others)), new Set(caller.noteIds), `${caller.tier}: unfiltered list`);
        assert.deepEqual(await listNotes(t, caller, { sort: '-title' }, others), [...caller.noteIds].reverse(), `${caller.tier}: sorted list`);
        // Every tenant stores SHARED_CODE; each finds its own record only.
        assert.deepEqual(await listNotes(t, caller, { filter: JSON.stringify({ code: { eq: SHARED_CODE } }) }, others), [caller.noteIds[0]]);
        const marked = await listNotes(t, caller, { filter: JSON.stringify({ title: { contains: 'mark' } }) }, others);
        assert.deepEqual(new Set(marked), new Set(caller.noteIds), `${caller.tier}: a filter every tenant's titles match`);
        for (const victim of others) {
          const aimed = [
            { title: { prefix: victim.marker } },
            { tag: { eq: `${victim.marker}-tag` } },
            { code: { eq: `${victim.marker}-code-1` } },
            { code: { in: [`${victim.marker}-code-1`, `${victim.marker}-code-2`] } },
            { ref: { eq: victim.noteIds[0] } },
          ];
          for (const filter of aimed) {
            assert.deepEqual(await listNotes(t, caller, { filter: JSON.stringify(filter) }, [victim]), [], `${caller.tier} filters on ${victim.tier}'s ${JSON.stringify(filter)}`);
          }
        }
        const collections = await request(t.app, 'GET', '/v1/collections', { token: caller.token });
        expectStatus(collections, 200, 'list collections');
        assert.deepEqual((collections.body.collections as Array<{ name: string }>).map((c) => c.name).sort(), ['notes', caller.only].sort());
        for (const victim of others) assertNoLeak(collections, victim, `${caller.tier} lists collections`);
        // The unique constraint is live in every tier: the caller's own value is taken.
        const duplicate = await request(t.app, 'POST', '/v1/collections/notes/records', { token: caller.token, body: { fields: { title: 'dup', code: SHARED_CODE } } });
        assertFieldProblem(duplicate, 409, 'RECORD_UNIQUE_VIOLATION', 'code', `${caller.tier}: its own duplicate`);
      }
      assert.deepEqual(await snapshots(t, su, tenants), before, 'a tenant\'s stored data changed');

      // Another tenant's unique value is free for each caller, and taking it changes nothing of the other's.
      for (const [i, caller] of tenants.entries()) {
        const victim = tenants[(i + 1) % tenants.length]!;
        const victimBefore = await snapshot(t, su, victim);
        const taken = await request(t.app, 'POST', '/v1/collections/notes/records', {
          token: caller.token,
          body: { fields: { title: `${caller.marker} taken`, code: `${victim.marker}-code-1` } },
        });
        expectStatus(taken, 201, `${caller.tier} stores ${victim.tier}'s unique value`);
        expectStatus(await request(t.app, 'DELETE', `/v1/collections/notes/records/${taken.body.id}`, { token: caller.token }), 204, 'delete it again');
        assert.equal(await snapshot(t, su, victim), victimBefore, `${victim.tier} changed`);
      }
    });

    it('bridge: the tenant\'s role reaches its own schema and nothing else (42501 on another bridge schema, the pool tables and partitions)', async () => {
      const { bridge } = tiersOf(t);
      const b1 = on('bridge', 0);
      const b2 = on('bridge', 1);
      const cell = t.bh.placements.control;
      const role = bridge.roleOf(cell, b1.id);
      const own = bridge.locationOf(cell, b1.id);
      const other = bridge.locationOf(cell, b2.id);
      const scope = cell.store.tenant(b1.id, { role, schema: own });

      // Its own schema works, by search path and by name: the refusals below are not a broken scope.
      const [count, named, registry] = await scope.batch([
        { text: 'SELECT count(*)::int AS n FROM records' },
        { text: `SELECT count(*)::int AS n FROM ${own}.records` },
        { text: 'SELECT id FROM bulkhead.tenant_state' },
      ]);
      assert.equal(count!.rows[0]!.n, 4);
      assert.equal(named!.rows[0]!.n, 4);
      // The registry's view, for the active-tenant check, shows its own row only.
      assert.deepEqual(registry!.rows.map((r) => r.id), [b1.id]);

      const insert = (table: string): Statement => ({
        text: `INSERT INTO ${table} (tenant_id, collection, id, data, schema_version, created_by, updated_by) VALUES ($1, 'notes', gen_random_uuid(), '{"title":"planted"}', 1, 'x', 'x')`,
        values: [b1.id],
      });
      const refused: Array<[string, Statement]> = [
        ...DATA_TABLES.map((table): [string, Statement] => [`read ${other}.${table}`, { text: `SELECT * FROM ${other}.${table}` }]),
        [`insert into ${other}.records`, insert(`${other}.records`)],
        [`update ${other}.records`, { text: `UPDATE ${other}.records SET version = version` }],
        [`delete from ${other}.records`, { text: `DELETE FROM ${other}.records` }],
        [`truncate ${other}.records`, { text: `TRUNCATE ${other}.records` }],
        [`create a table in ${other}`, { text: `CREATE TABLE ${other}.planted (x int)` }],
        ...DATA_TABLES.map((table): [string, Statement] => [`read bulkhead.${table}`, { text: `SELECT * FROM bulkhead.${table}` }]),
        ['insert into bulkhead.records', insert('bulkhead.records')],
        ['update bulkhead.records', { text: 'UPDATE bulkhead.records SET version = version' }],
        ['delete from bulkhead.records', { text: 'DELETE FROM bulkhead.records' }],
        ['update bulkhead.collections', { text: "UPDATE bulkhead.collections SET definition = '{}'" }],
        ...['records', 'unique_values', 'index_values'].flatMap((table) =>
          Array.from({ length: PARTITIONS }, (_, i): [string, Statement] => [`read partition ${table}_p${i}`, { text: `SELECT * FROM bulkhead.${table}_p${i}` }]),
        ),
        ['insert into a partition', insert('bulkhead.records_p0')],
        ...['placements', 'tenant_history', 'operator_tokens', 'settings', 'migrations', 'moves', 'tenant_usage'].map(
          (table): [string, Statement] => [`read bulkhead.${table}`, { text: `SELECT * FROM bulkhead.${table}` }],
        ),
        ['read the registry', { text: 'SELECT id FROM bulkhead.tenants' }],
        ['update its registry row', { text: "UPDATE bulkhead.tenants SET status = 'active' WHERE id = $1", values: [b1.id] }],
        ['update its registry row through the view', { text: "UPDATE bulkhead.tenant_state SET status = 'active' WHERE id = $1", values: [b1.id] }],
        ['truncate its own records', { text: 'TRUNCATE records' }],
        ['create a table in its own schema', { text: `CREATE TABLE ${own}.planted (x int)` }],
      ];
      for (const [what, statement] of refused) await rejectsSql(scope.batch([statement]), '42501', /permission denied/, `bridge role: ${what}`);
      // A search path pointed at another tenant's schema resolves nothing there: no privilege, no name.
      await rejectsSql(
        scope.batch([{ text: "SELECT set_config('search_path', $1, true)", values: [other] }, { text: 'SELECT * FROM records' }]),
        '42P01',
        /records/,
        'bridge role: search path on another schema',
      );
    });

    it('bridge: the schema\'s tables carry forced RLS, the role holds exactly its grants, is powerless and owns nothing', async () => {
      const { bridge } = tiersOf(t);
      const cell = t.bh.placements.control;
      const [b1, b2] = [on('bridge', 0), on('bridge', 1)];
      const role = bridge.roleOf(cell, b1.id);
      const own = bridge.locationOf(cell, b1.id);
      const other = bridge.locationOf(cell, b2.id);

      for (const schema of [own, other]) {
        const [tables, owner] = await su.batch([
          {
            text:
              'SELECT c.relname, c.relkind::text AS relkind, c.relrowsecurity, c.relforcerowsecurity, pg_get_userbyid(c.relowner) AS owner, ' +
              "(SELECT string_agg(pg_get_expr(p.polqual, p.polrelid), ' | ') FROM pg_policy p WHERE p.polrelid = c.oid) AS quals, " +
              "(SELECT string_agg(pg_get_expr(p.polwithcheck, p.polrelid), ' | ') FROM pg_policy p WHERE p.polrelid = c.oid) AS checks " +
              "FROM pg_class c WHERE c.relnamespace = $1::text::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f') ORDER BY c.relname",
            values: [schema],
          },
          { text: 'SELECT pg_get_userbyid(nspowner) AS owner FROM pg_namespace WHERE nspname = $1', values: [schema] },
        ]);
        assert.deepEqual(tables!.rows.map((r) => r.relname), [...DATA_TABLES].sort(), `${schema}: its tables`);
        for (const r of tables!.rows) {
          assert.equal(r.relkind, 'r', `${r.relname}: a plain table`);
          assert.equal(r.relrowsecurity, true, `${schema}.${r.relname}: RLS not enabled`);
          assert.equal(r.relforcerowsecurity, true, `${schema}.${r.relname}: RLS not forced`);
          assert.equal(r.owner, t.db.ownerRole, `${schema}.${r.relname}: owner`);
          assert.match(r.quals as string, TENANT_POLICY, `${schema}.${r.relname}: policy`);
          assert.match(r.checks as string, TENANT_POLICY, `${schema}.${r.relname}: policy check`);
        }
        assert.equal(owner!.rows[0]!.owner, t.db.ownerRole);
      }

      assert.deepEqual(await roleFacts(su, role), { ...POWERLESS, classes: 0, procs: 0, schemas: 0, types: 0 });
      // A member of no role, and inheriting nothing (migration 14): no path to another role's rights.
      const [members, inherit, reach] = await su.batch([
        { text: 'SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = $1', values: [role] },
        { text: 'SELECT rolinherit FROM pg_roles WHERE rolname = $1', values: [role] },
        {
          text:
            "SELECT pg_has_role($1::name, $2::name, 'MEMBER') AS app, pg_has_role($1::name, $3::name, 'MEMBER') AS owner, pg_has_role($1::name, $4::name, 'MEMBER') AS other, " +
            "has_schema_privilege($1::name, $5::text, 'USAGE') AS own_usage, has_schema_privilege($1::name, $5::text, 'CREATE') AS own_create, " +
            "has_schema_privilege($1::name, $6::text, 'USAGE') AS other_usage, has_schema_privilege($1::name, $6::text, 'CREATE') AS other_create, " +
            "has_schema_privilege($1::name, 'bulkhead', 'CREATE') AS pool_create",
          values: [role, t.db.appRole, t.db.ownerRole, bridge.roleOf(cell, b2.id), own, other],
        },
      ]);
      assert.deepEqual(members!.rows.map((r) => r.rolname), []);
      assert.equal(inherit!.rows[0]!.rolinherit, false);
      assert.deepEqual(reach!.rows[0], { app: false, owner: false, other: false, own_usage: true, own_create: false, other_usage: false, other_create: false, pool_create: false });

      // Exactly its grants on its own tables; nothing on another bridge schema's tables.
      for (const table of DATA_TABLES) {
        assert.deepEqual(await privilegesOn(su, role, `${own}.${table}`), granted(BRIDGE_GRANTS[table]), `${own}.${table}`);
        assert.deepEqual(await privilegesOn(su, role, `${other}.${table}`), [], `${other}.${table}`);
      }
      // Nothing on the pool's tables and partitions, the registry included.
      const [pool] = await su.batch([
        { text: "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'bulkhead'::regnamespace AND c.relkind IN ('r', 'p') ORDER BY 1" },
      ]);
      const poolTables = pool!.rows.map((r) => r.relname as string);
      assert.ok(poolTables.includes('records_p0') && poolTables.includes('placements') && poolTables.includes('tenants'), 'the pool tables are listed');
      for (const table of poolTables) assert.deepEqual(await privilegesOn(su, role, `bulkhead.${table}`), [], `bulkhead.${table}`);
      // What migration 14 grants to PUBLIC, and nothing else in the schema: the pure check
      // functions and the role-bound view (a function made later without a REVOKE would be listed).
      const [publicFunctions, publicRelations] = await su.batch([
        {
          text:
            "SELECT p.proname FROM pg_proc p WHERE p.pronamespace = 'bulkhead'::regnamespace " +
            'AND (p.proacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0)) ORDER BY 1',
        },
        { text: "SELECT c.relname, a.privilege_type FROM pg_class c, aclexplode(c.relacl) a WHERE c.relnamespace = 'bulkhead'::regnamespace AND a.grantee = 0 ORDER BY 1, 2" },
      ]);
      assert.deepEqual(
        publicFunctions!.rows.map((r) => r.proname),
        ['require_active_tenant', 'require_collection_version', 'require_reference', 'require_writable_state', 'value_key'],
      );
      assert.deepEqual(publicRelations!.rows, [{ relname: 'tenant_state', privilege_type: 'SELECT' }]);
      // The registry's view shows it its own tenant's row alone, even in the platform scope (whose
      // policy lets the whole registry through), and shows a role made outside Bulkhead nothing.
      const stateAs = async (who: string, context: Record<string, string>) => {
        const settings = Object.entries(context).map(([k, v]) => `set_config('${k}', '${v}', true)`);
        const [, rows] = await su.batch([
          { text: `SELECT set_config('role', $1, true)${settings.map((x) => `, ${x}`).join('')}`, values: [who] },
          { text: 'SELECT id FROM bulkhead.tenant_state ORDER BY id' },
        ]);
        return rows!.rows.map((r) => r.id as string);
      };
      assert.deepEqual(await stateAs(role, { 'bulkhead.scope': 'platform' }), [b1.id]);
      assert.deepEqual(await stateAs(role, { 'bulkhead.scope': 'tenant', 'bulkhead.tenant_id': b2.id }), []);
      assert.deepEqual(await stateAs(role, { 'bulkhead.scope': 'tenant', 'bulkhead.tenant_id': b1.id }), [b1.id]);
      const stranger = `${t.db.appRole}_x${Date.now().toString(36)}`;
      await su.script(`CREATE ROLE ${stranger} NOLOGIN`);
      try {
        assert.deepEqual(await stateAs(stranger, { 'bulkhead.scope': 'platform' }), []);
        await assert.rejects(
          su.batch([{ text: `SELECT set_config('role', $1, true)`, values: [stranger] }, { text: 'SELECT count(*) FROM bulkhead.tenants' }]),
          (error: unknown) => error instanceof DatabaseError && error.sqlState === '42501',
        );
      } finally {
        await su.script(`DROP ROLE ${stranger}`);
      }
    });

    it('bridge: a role made before migration 14 (inheriting from the group role) is made NOINHERIT and leaves the group when the store migrates', async () => {
      const { bridge } = tiersOf(t);
      const cell = t.bh.placements.control;
      const b = on('bridge', 1);
      const role = bridge.roleOf(cell, b.id);
      const group = `${t.db.appRole}_bridge`;
      // Not a bridge role by its name: left in the group.
      const decoy = `${t.db.appRole}_bx${Date.now().toString(36)}`;
      const facts = async (name: string) => {
        const [inherit, groups] = await su.batch([
          { text: 'SELECT rolinherit FROM pg_roles WHERE rolname = $1', values: [name] },
          { text: 'SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = $1', values: [name] },
        ]);
        return { inherit: inherit!.rows[0]!.rolinherit, groups: groups!.rows.map((r) => r.rolname) };
      };
      // As provisioning made bridge roles before migration 14.
      await su.script(`DO $g$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '${group}') THEN CREATE ROLE ${group} NOLOGIN; END IF;
END $g$;
ALTER ROLE ${role} INHERIT;
GRANT ${group} TO ${role};
CREATE ROLE ${decoy} NOLOGIN;
GRANT ${group} TO ${decoy};`);
      // A limited role cannot convert it: a warning, nothing changed, nothing failed.
      const limited = `${t.db.appRole}_l${Date.now().toString(36)}`;
      try {
        assert.deepEqual(await facts(role), { inherit: true, groups: [group] });
        await su.script(`CREATE ROLE ${limited} NOLOGIN NOCREATEROLE;\nSET LOCAL ROLE ${limited};\n${legacyBridgeRolesSql(t.db.appRole)}`);
        assert.deepEqual(await facts(role), { inherit: true, groups: [group] }, 'without CREATEROLE');

        await t.bh.store.migrate();
        assert.deepEqual(await facts(role), { inherit: false, groups: [] });
        assert.deepEqual(await facts(decoy), { inherit: true, groups: [group] });
        // The tenant still reads its own data, and its read's audit event is appended, with nothing from the group.
        const read = await request(t.app, 'GET', '/v1/collections/notes/records', { token: b.token });
        assert.equal(read.status, 200, read.text);
        assert.ok((read.body.records as unknown[]).length >= 3, read.text);
      } finally {
        await su.script(`DROP ROLE IF EXISTS ${decoy};\nDROP ROLE IF EXISTS ${limited};`);
      }
    });

    it('bridge: in its own schema, a wrong, missing or platform tenant context reads and changes nothing (RLS still on)', async () => {
      const { bridge } = tiersOf(t);
      const cell = t.bh.placements.control;
      const b1 = on('bridge', 0);
      const role = bridge.roleOf(cell, b1.id);
      const own = bridge.locationOf(cell, b1.id);
      const before = await snapshot(t, su, b1);
      // As the superuser the rows are there, so every empty answer below is RLS at work.
      const [present] = await su.batch([{ text: `SELECT count(*)::int AS n FROM ${own}.records` }]);
      assert.equal(present!.rows[0]!.n, 4);

      for (const intruder of [on('bridge', 1), on('pool', 0), on('silo', 0)]) {
        // The active-tenant check already refuses the pair: the registry's view shows this role
        // no other tenant's row (migration 14).
        await assert.rejects(cell.store.tenant(intruder.id, { role, schema: own }).batch(emptyProbe(own)), AuthenticationError, `${intruder.tier} context, checked`);
        // Without the check, row-level security alone.
        const wrong = cell.store.tenant(intruder.id, { role, schema: own, requireActive: false });
        assertEmpty(await wrong.batch(emptyProbe(own)), `${intruder.tier} context`);
        // Rows claiming to be the schema's tenant are refused by the policy's check.
        await rejectsSql(
          wrong.batch([
            {
              text: "INSERT INTO records (tenant_id, collection, id, data, schema_version, created_by, updated_by) VALUES ($1, 'notes', gen_random_uuid(), '{}', 1, 'x', 'x')",
              values: [b1.id],
            },
          ]),
          '42501',
          /row-level security/,
          `${intruder.tier} context: insert as the schema's tenant`,
        );
      }
      assertEmpty(await asRole(su, role, '', 'tenant', own, emptyProbe(own)), 'no tenant context');
      assertEmpty(await asRole(su, role, '', 'platform', own, emptyProbe(own)), 'platform context');
      assert.equal(await snapshot(t, su, b1), before, 'the bridge tenant\'s data changed');
    });

    it('silo: a database of its own with its own roles; its rows are not in the control database', async () => {
      const c = on('silo', 0);
      const s = await storageOf(t, c.id);
      const roles = siloRoles(t, c.id);
      assert.notEqual(s.engine, su, 'the silo shares the control database\'s engine');
      assert.notEqual(s.engine, s.cell.store.engine);

      // Inside the silo: the pool layout, owned by the silo's owner role, with RLS forced, holding this tenant only.
      const [schemaOwner, tables, tenantsThere, foreign, mine] = await s.engine.batch([
        { text: "SELECT pg_get_userbyid(nspowner) AS owner FROM pg_namespace WHERE nspname = 'bulkhead'" },
        {
          text:
            'SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, pg_get_userbyid(c.relowner) AS owner FROM pg_class c ' +
            "WHERE c.relnamespace = 'bulkhead'::regnamespace AND c.relkind IN ('r', 'p') AND c.relname = ANY (string_to_array($1, ',')) ORDER BY 1",
          values: [DATA_TABLES.join(',')],
        },
        { text: 'SELECT id, status, tier FROM bulkhead.tenants' },
        { text: 'SELECT count(*)::int AS n FROM bulkhead.records WHERE tenant_id <> $1', values: [c.id] },
        { text: 'SELECT count(*)::int AS n FROM bulkhead.records WHERE tenant_id = $1', values: [c.id] },
      ]);
      assert.equal(schemaOwner!.rows[0]!.owner, roles.owner);
      assert.equal(tables!.rows.length, DATA_TABLES.length);
      for (const r of tables!.rows) assert.deepEqual([r.relrowsecurity, r.relforcerowsecurity, r.owner], [true, true, roles.owner], `silo ${r.relname}`);
      assert.deepEqual(tenantsThere!.rows, [{ id: c.id, status: 'active', tier: 'silo' }]);
      assert.equal(foreign!.rows[0]!.n, 0);
      assert.equal(mine!.rows[0]!.n, 4);
      assert.deepEqual(await roleFacts(s.engine, roles.app), { ...POWERLESS, classes: 0, procs: 0, schemas: 0, types: 0 });
      const owner = await roleFacts(s.engine, roles.owner);
      assert.deepEqual([owner.rolsuper, owner.rolbypassrls, owner.rolcreaterole, owner.rolcreatedb], [false, false, false, false], 'the silo owner role');

      // In the control database: the registry row, but none of its data.
      assert.deepEqual(await poolRows(su, [c.id]), NO_POOL_ROWS);
      const [registry] = await su.batch([{ text: 'SELECT tier FROM bulkhead.tenants WHERE id = $1', values: [c.id] }]);
      assert.deepEqual(registry!.rows, [{ tier: 'silo' }]);

      if (kind === 'postgres') {
        const [database, serverRoles] = await su.batch([
          { text: 'SELECT datname FROM pg_database WHERE datname = $1', values: [s.placement.location] },
          { text: 'SELECT rolname FROM pg_roles WHERE rolname IN ($1, $2) ORDER BY 1', values: [roles.app, roles.owner] },
        ]);
        assert.deepEqual(database!.rows, [{ datname: s.placement.location }], 'the silo database exists on the server');
        assert.deepEqual(serverRoles!.rows.map((r) => r.rolname), [roles.app, roles.owner].sort());
        const [name] = await s.engine.batch([{ text: 'SELECT current_database() AS name' }]);
        assert.equal(name!.rows[0]!.name, s.placement.location);
        // Roles are server-wide here: the silo's hold nothing on the control database's pool tables, nor the control's on the silo's.
        for (const role of [roles.app, roles.owner]) assert.deepEqual(await privilegesOn(su, role, 'bulkhead.records'), [], `${role} on the pool`);
        for (const role of [t.db.appRole, t.db.ownerRole]) assert.deepEqual(await privilegesOn(s.engine, role, 'bulkhead.records'), [], `${role} in the silo`);
      } else {
        // Its own PGlite instance, in a data directory of its own beside the cell's store.
        const dataDir = t.config.cells[0]!.dataDir!;
        const siloDir = join(dirname(dataDir), `${basename(dataDir)}.silos`, s.placement.location);
        assert.ok(existsSync(join(siloDir, 'PG_VERSION')), `no PGlite data directory at ${basename(siloDir)}`);
        // Roles are per instance: the silo's exist in the silo only, the control plane's in the control database only.
        const [controlRoles] = await su.batch([{ text: 'SELECT count(*)::int AS n FROM pg_roles WHERE rolname IN ($1, $2)', values: [roles.app, roles.owner] }]);
        assert.equal(controlRoles!.rows[0]!.n, 0);
        const [siloRolesThere] = await s.engine.batch([{ text: 'SELECT count(*)::int AS n FROM pg_roles WHERE rolname IN ($1, $2)', values: [t.db.appRole, t.db.ownerRole] }]);
        assert.equal(siloRolesThere!.rows[0]!.n, 0);
      }
    });

    it('silo: a suspension is mirrored into the silo and refused by the silo\'s own check (401 AUTH_TENANT_INACTIVE); re-activation works', async () => {
      const c = await seedTenant(t, 'silo');
      const s = await storageOf(t, c.id);
      const mirrored = async (): Promise<string> => {
        const [r] = await s.engine.batch([{ text: 'SELECT status FROM bulkhead.tenants WHERE id = $1', values: [c.id] }]);
        return r!.rows[0]!.status as string;
      };
      const setControlStatus = (status: string) => su.batch([{ text: 'UPDATE bulkhead.tenants SET status = $2 WHERE id = $1', values: [c.id, status] }]);
      const routes: Array<[Method, string, unknown]> = [
        ['GET', `/v1/collections/notes/records/${c.noteIds[1]}`, undefined],
        ['GET', '/v1/collections/notes/records', undefined],
        ['POST', '/v1/collections/notes/records', { fields: { title: 'while suspended' } }],
        ['PATCH', `/v1/collections/notes/records/${c.noteIds[1]}`, { fields: { title: 'while suspended' } }],
        ['DELETE', `/v1/collections/notes/records/${c.noteIds[1]}`, undefined],
      ];
      const assertRefused = async (what: string): Promise<void> => {
        for (const [method, url, body] of routes) {
          const res = await request(t.app, method, url, { token: c.token, body });
          assertProblem(res, 401, 'AUTH_TENANT_INACTIVE', `${what}: ${method} ${url}`);
          assert.ok(!res.text.includes(c.marker), `${what}: a refusal returns no data`);
        }
      };
      const before = await dataSnapshot(t, c);
      assert.equal(await mirrored(), 'active');

      const suspended = await request(t.app, 'PATCH', `/v1/tenants/${c.id}`, { token: t.operatorToken, body: { status: 'suspended' } });
      expectStatus(suspended, 200, 'suspend');
      assert.equal(suspended.body.status, 'suspended');
      assert.equal(await mirrored(), 'suspended', 'the silo\'s copy of the registry row');
      await assertRefused('suspended');

      // Put the control registry back to active behind the API's back: only the silo's copy still says suspended.
      await setControlStatus('active');
      await t.bh.store.tenant(c.id).batch([{ text: 'SELECT 1' }]);
      // The authentication pre-check re-reads a non-active status once it is a second old.
      await new Promise((resolve) => setTimeout(resolve, 1_100));
      await assert.rejects(t.bh.placements.tenant(c.id).batch([{ text: 'SELECT 1' }]), (error: unknown) => {
        assert.ok(error instanceof AuthenticationError);
        assert.equal(error.code, 'AUTH_TENANT_INACTIVE');
        return true;
      });
      await assertRefused('refused by the silo');
      await setControlStatus('suspended');

      const resumed = await request(t.app, 'PATCH', `/v1/tenants/${c.id}`, { token: t.operatorToken, body: { status: 'active' } });
      expectStatus(resumed, 200, 'resume');
      assert.equal(await mirrored(), 'active');
      assert.equal(await dataSnapshot(t, c), before, 'the silo tenant\'s data changed while it was suspended');
      const read = await request(t.app, 'GET', `/v1/collections/notes/records/${c.noteIds[1]}`, { token: c.token });
      expectStatus(read, 200, 'read after resuming');
      assert.equal(read.body.fields.title, `${c.marker} note 1`);
      const write = await request(t.app, 'PATCH', `/v1/collections/notes/records/${c.noteIds[1]}`, { token: c.token, body: { fields: { title: `${c.marker} resumed` } } });
      expectStatus(write, 200, 'write after resuming');
      assert.equal(write.body.version, 2);
      const history = await request(t.app, 'GET', `/v1/tenants/${c.id}/history`, { token: t.operatorToken });
      assert.deepEqual(
        (history.body.history as Array<{ event: string; toStatus: string }>).map((h) => `${h.event}:${h.toStatus}`),
        ['created:active', 'status:suspended', 'status:active'],
      );
    });

    it('refuses a bad tier or cell on create with 400 TENANT_INVALID naming the field, and creates nothing', async () => {
      const cases: Array<[Record<string, unknown>, string]> = [
        [{ tier: 'gold' }, 'tier'],
        [{ tier: 'Bridge' }, 'tier'],
        [{ tier: 1 }, 'tier'],
        [{ tier: null }, 'tier'],
        [{ tier: ['silo'] }, 'tier'],
        [{ tier: 'silo', cell: 42 }, 'cell'],
        [{ tier: 'bridge', cell: true }, 'cell'],
        [{ tier: 'silo', cell: null }, 'cell'],
        [{ tier: 'bridge', cell: ['local'] }, 'cell'],
        [{ tier: 'silo', cell: { name: 'local' } }, 'cell'],
        [{ tier: 'bridge', cell: '' }, 'cell'],
        [{ tier: 'silo', cell: 'Local' }, 'cell'],
        [{ tier: 'silo', cell: '../local' }, 'cell'],
      ];
      for (const [body, field] of cases) await refusedCreate(t, su, body, 400, 'TENANT_INVALID', field);
    });
  });

  describe(`residency on the route (${kind})`, () => {
    let t: TestBulkhead;
    let su: Engine;

    before(async () => {
      // Region ap is served by no cell.
      t = await openTestBulkhead(kind, { BULKHEAD_REGIONS: 'eu,us,ap' }, { controlRegion: 'eu', cells: [{ name: 'us-1', region: 'us' }] });
      su = await t.db.engine();
    });
    after(async () => {
      await t?.close();
    });

    it('refuses a cell outside the tenant\'s region with 409 RESIDENCY_VIOLATION on every tier, leaving no tenant, placement or storage', async () => {
      for (const tier of TIERS) {
        await refusedCreate(t, su, { tier, region: 'eu', cell: 'us-1' }, 409, 'RESIDENCY_VIOLATION', 'cell');
        await refusedCreate(t, su, { tier, region: 'us', cell: 'local' }, 409, 'RESIDENCY_VIOLATION', 'cell');
        await refusedCreate(t, su, { tier, region: 'ap', cell: 'us-1' }, 409, 'RESIDENCY_VIOLATION', 'cell');
      }
    });

    it('refuses an unknown cell (400 PLACEMENT_CELL_UNKNOWN) and a region no cell serves (409 PLACEMENT_NO_CELL)', async () => {
      for (const tier of TIERS) {
        await refusedCreate(t, su, { tier, cell: 'mars-1' }, 400, 'PLACEMENT_CELL_UNKNOWN', 'cell');
        await refusedCreate(t, su, { tier, region: 'us', cell: 'us-2' }, 400, 'PLACEMENT_CELL_UNKNOWN', 'cell');
        await refusedCreate(t, su, { tier, region: 'ap' }, 409, 'PLACEMENT_NO_CELL', 'region');
      }
    });

    it('places a tenant of region us in cell us-1, on every tier, with its data there and none in the control cell', async () => {
      const us1 = t.bh.placements.cells.get('us-1');
      for (const tier of TIERS) {
        for (const options of [{ region: 'us' }, { region: 'us', cell: 'us-1' }]) {
          const w = await seedTenant(t, tier, options);
          const operatorView = await request(t.app, 'GET', `/v1/tenants/${w.id}`, { token: t.operatorToken });
          assert.equal(operatorView.body.region, 'us');
          const s = await storageOf(t, w.id);
          assert.equal(s.placement.cell, 'us-1', `${tier} ${JSON.stringify(options)}`);
          assert.equal(s.placement.tier, tier);
          assert.equal(s.placement.region, 'us');
          assert.equal(s.cell, us1);
          const [records] = await s.engine.batch([{ text: `SELECT id FROM ${s.schema}.records WHERE tenant_id = $1 ORDER BY id`, values: [w.id] }]);
          assert.deepEqual(records!.rows.map((r) => r.id), [...w.noteIds, ...w.onlyIds].sort(), `${tier}: its records are in us-1`);
          // The control cell (region eu) holds its registry row, but none of its data.
          assert.deepEqual(await poolRows(su, [w.id]), NO_POOL_ROWS, `${tier}: rows in the eu control cell`);
          if (tier === 'bridge') {
            const [schemas] = await su.batch([{ text: 'SELECT count(*)::int AS n FROM pg_namespace WHERE nspname = $1', values: [s.placement.location] }]);
            assert.equal(schemas!.rows[0]!.n, 0, 'the bridge schema is not in the control cell');
          }
        }
      }
    });

    it('refuses requests with 409 RESIDENCY_VIOLATION when an eu tenant\'s directory entry is tampered to point at us-1, and serves nothing from there', async () => {
      const us1 = t.bh.placements.cells.get('us-1');
      for (const tier of TIERS) {
        const w = await seedTenant(t, tier, { region: 'eu' });
        const placed = await storageOf(t, w.id);
        assert.equal(placed.placement.cell, 'local');
        const before = await dataSnapshot(t, w);
        const inventoryBefore = await inventory(t, su);
        const retarget = async (cell: string): Promise<void> => {
          const [r] = await su.batch([{ text: 'UPDATE bulkhead.placements SET cell = $2 WHERE tenant_id = $1', values: [w.id, cell] }]);
          assert.equal(r!.rowCount, 1);
          t.bh.placements.invalidate(w.id);
        };
        const routes: Array<[Method, string, unknown]> = [
          ['GET', `/v1/collections/notes/records/${w.noteIds[0]}`, undefined],
          ['GET', '/v1/collections/notes/records', undefined],
          ['GET', '/v1/collections', undefined],
          ['PUT', `/v1/collections/planted_${nonce()}`, { fields: { x: { type: 'string' } } }],
          ['POST', '/v1/collections/notes/records', { fields: { title: `${w.marker} in us` } }],
          ['PATCH', `/v1/collections/notes/records/${w.noteIds[0]}`, { fields: { title: `${w.marker} in us` } }],
          ['DELETE', `/v1/collections/notes/records/${w.noteIds[2]}`, undefined],
        ];

        await retarget('us-1');
        try {
          assert.equal((await t.bh.placements.resolve(w.id))?.cell, 'us-1', 'the tampered entry is what the router reads');
          for (const [method, url, body] of routes) {
            const res = await request(t.app, method, url, { token: w.token, body });
            assertFieldProblem(res, 409, 'RESIDENCY_VIOLATION', 'cell', `${tier} ${method} ${url}`);
            assert.ok(!res.text.includes(w.marker), 'a refusal returns no data');
          }
          await assert.rejects(t.bh.placements.tenant(w.id).batch([{ text: 'SELECT 1' }]), (error: unknown) => {
            assert.ok(error instanceof BulkheadError);
            assert.equal(error.code, 'RESIDENCY_VIOLATION');
            return true;
          });
          // Nothing was read from or written to us-1.
          assert.deepEqual(await poolRows(us1.store.engine, [w.id]), NO_POOL_ROWS, `${tier}: rows in us-1`);
        } finally {
          await retarget('local');
        }
        assert.equal(await inventory(t, su), inventoryBefore, `${tier}: storage changed`);
        assert.equal(await dataSnapshot(t, w), before, `${tier}: data changed`);
        const back = await request(t.app, 'GET', `/v1/collections/notes/records/${w.noteIds[0]}`, { token: w.token });
        expectStatus(back, 200, `${tier}: served again from its own region`);
        assert.equal(back.body.version, 1);
      }
    });
  });
}
