/**
 * The backends every shared suite runs against: embedded PGlite always, real PostgreSQL when
 * BULKHEAD_TEST_DATABASE_URL names a server (a superuser or a CREATEDB+CREATEROLE login of it).
 * BULKHEAD_TEST_BACKENDS=pglite|postgres|pglite,postgres narrows the set.
 *
 * Each PostgreSQL test gets a throw-away database and its own owner/app roles, dropped afterwards,
 * so parallel runs never share state.
 */
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mkdtempSync, rmSync } from 'node:fs';
import { pino } from 'pino';
import type { FastifyInstance } from 'fastify';
import { Bulkhead } from '../../src/bulkhead.js';
import { loadConfig, type Config } from '../../src/config.js';
import { buildServer } from '../../src/http/server.js';
import type { Engine, Statement } from '../../src/store/engine.js';
import { PgliteEngine } from '../../src/store/pglite/pglite-engine.js';
import { PostgresEngine } from '../../src/store/postgres/postgres-engine.js';
import { generateOperatorToken } from '../../src/access/operator-tokens.js';
import { adminQuery, dropDeploymentObjects } from './deployment.js';

export { dropDeploymentObjects };

export type BackendKind = 'pglite' | 'postgres';

/** The PostgreSQL server tests may create databases on, if any. */
export const TEST_DATABASE_URL = process.env.BULKHEAD_TEST_DATABASE_URL || undefined;

/** The backends this run covers. */
export const BACKENDS: readonly BackendKind[] = (() => {
  const wanted = (process.env.BULKHEAD_TEST_BACKENDS ?? (TEST_DATABASE_URL ? 'pglite,postgres' : 'pglite'))
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const w of wanted) {
    if (w !== 'pglite' && w !== 'postgres') throw new Error(`BULKHEAD_TEST_BACKENDS: unknown backend ${w}`);
    if (w === 'postgres' && !TEST_DATABASE_URL) throw new Error('BULKHEAD_TEST_BACKENDS names postgres but BULKHEAD_TEST_DATABASE_URL is not set');
  }
  return wanted as BackendKind[];
})();

/** A throw-away database: an engine factory on it and the roles to use, plus cleanup. */
export interface TestDatabase {
  readonly kind: BackendKind;
  readonly ownerRole: string;
  readonly appRole: string;
  /** A connection string of the throw-away database (postgres only). */
  readonly url: string | undefined;
  /** Opens an engine on the database (postgres: a new pool each call; pglite: the one in-memory instance). */
  engine(options?: { maxConnections?: number }): Promise<Engine>;
  drop(): Promise<void>;
}

function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}

/** Creates a throw-away database on the backend. */
export async function createTestDatabase(kind: BackendKind): Promise<TestDatabase> {
  const suffix = randomBytes(5).toString('hex');
  const ownerRole = `bht_${suffix}_owner`;
  const appRole = `bht_${suffix}_app`;
  if (kind === 'pglite') {
    let engine: PgliteEngine | undefined;
    return {
      kind,
      ownerRole,
      appRole,
      url: undefined,
      async engine() {
        engine ??= await PgliteEngine.open({ dataDir: 'memory://' });
        return engine;
      },
      async drop() {
        await engine?.close().catch(() => {});
      },
    };
  }
  const admin = TEST_DATABASE_URL!;
  const database = `bht_${suffix}`;
  await adminQuery(admin, `CREATE DATABASE ${database}`);
  const url = withDatabase(admin, database);
  const engines: PostgresEngine[] = [];
  return {
    kind,
    ownerRole,
    appRole,
    url,
    async engine(options) {
      const e = new PostgresEngine({ connectionString: url, ...(options?.maxConnections ? { maxConnections: options.maxConnections } : {}) });
      engines.push(e);
      return e;
    },
    async drop() {
      for (const e of engines) await e.close().catch(() => {});
      await adminQuery(admin, `DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
      // Silo tenants' databases and the per-tenant roles of bridge and silo tenants carry the app role's name.
      await dropDeploymentObjects(admin, appRole, ownerRole);
    },
  };
}

/** A running Bulkhead on a throw-away database, with an operator token and an in-process HTTP server. */
export interface TestBulkhead {
  readonly kind: BackendKind;
  readonly bh: Bulkhead;
  readonly app: FastifyInstance;
  readonly db: TestDatabase;
  readonly operatorToken: string;
  readonly config: Config;
  close(): Promise<void>;
}

/** A storage cell a test asks for besides the control cell (which is the test database itself). */
export interface TestCell {
  readonly name: string;
  readonly region: string;
  /** PostgreSQL URL of another server (default: a throw-away database on the test server). */
  readonly serverUrl?: string;
}

/** A throw-away database for an extra cell: on `serverUrl` (default the test server), or an embedded directory. */
async function createCellDatabase(kind: BackendKind, serverUrl?: string): Promise<{ setting: Record<string, string>; drop(): Promise<void> }> {
  if (kind === 'pglite') {
    const dir = mkdtempSync(join(tmpdir(), 'bulkhead-cell-'));
    return { setting: { dataDir: join(dir, 'store') }, drop: async () => rmSync(dir, { recursive: true, force: true }) };
  }
  const admin = serverUrl ?? TEST_DATABASE_URL!;
  const database = `bhc_${randomBytes(5).toString('hex')}`;
  await adminQuery(admin, `CREATE DATABASE ${database}`);
  return {
    setting: { databaseUrl: withDatabase(admin, database) },
    drop: () => adminQuery(admin, `DROP DATABASE IF EXISTS ${database} WITH (FORCE)`),
  };
}

/**
 * Opens Bulkhead on a fresh database of `kind`; `env` overrides configuration variables. `cells`
 * adds storage cells after the control cell (named `local` in the first region unless `env` says).
 */
export async function openTestBulkhead(
  kind: BackendKind,
  env: Record<string, string> = {},
  options: { readonly cells?: readonly TestCell[]; readonly controlRegion?: string } = {},
): Promise<TestBulkhead> {
  const db = await createTestDatabase(kind);
  const dataDir = mkdtempSync(join(tmpdir(), 'bulkhead-test-'));
  const extra: Array<{ cell: TestCell; setting: Record<string, string>; drop(): Promise<void> }> = [];
  for (const cell of options.cells ?? []) extra.push({ cell, ...(await createCellDatabase(kind, cell.serverUrl)) });
  if (extra.length > 0) {
    const control = { name: 'local', region: options.controlRegion ?? 'local', ...(db.url ? { databaseUrl: db.url } : { dataDir: join(dataDir, 'store') }) };
    env = { BULKHEAD_CELLS: JSON.stringify([control, ...extra.map((e) => ({ name: e.cell.name, region: e.cell.region, ...e.setting }))]), ...env };
  }
  const operatorToken = generateOperatorToken();
  const config = loadConfig(
    {},
    {
      BULKHEAD_DATA_DIR: dataDir,
      BULKHEAD_OPERATOR_TOKEN: operatorToken,
      BULKHEAD_OWNER_ROLE: db.ownerRole,
      BULKHEAD_APP_ROLE: db.appRole,
      BULKHEAD_PARTITIONS: '4',
      BULKHEAD_JWT_SECRET: randomBytes(32).toString('base64url'),
      BULKHEAD_LOG_LEVEL: 'silent',
      // Small copy batches, so every table of a moved tenant takes several (the cursor is exercised).
      BULKHEAD_MOVE_BATCH_SIZE: '250',
      // A short directory cache time: a move removes its source this long after the switch.
      BULKHEAD_PLACEMENT_CACHE_MS: '200',
      // Silo tenants get databases on the same server (postgres) or directories beside the store.
      ...(db.url ? { DATABASE_URL: db.url } : {}),
      ...env,
    },
  );
  const bh = await Bulkhead.open(config, { engine: await db.engine() });
  const app = await buildServer(bh, { logger: pino({ level: 'silent' }) });
  return {
    kind,
    bh,
    app,
    db,
    operatorToken,
    config,
    async close() {
      await app.close();
      await bh.close().catch(() => {});
      // Extra cells first: the roles dropped with the test database may hold privileges in them.
      for (const e of extra) {
        await e.drop().catch(() => {});
        if (e.cell.serverUrl) await dropDeploymentObjects(e.cell.serverUrl, db.appRole, db.ownerRole).catch(() => {});
      }
      await db.drop();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** A response as tests see it. */
export interface TestResponse {
  readonly status: number;
  readonly headers: Record<string, unknown>;
  // `any`: a JSON body of any shape, which each test asserts on field by field.
  readonly body: any;
  readonly text: string;
}

/** Sends one request through Fastify's injector (no socket). `body` objects are sent as JSON. */
export async function request(
  app: FastifyInstance,
  method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE',
  url: string,
  options: { token?: string; body?: unknown; headers?: Record<string, string> } = {},
): Promise<TestResponse> {
  const headers: Record<string, string> = { ...(options.headers ?? {}) };
  if (options.token) headers.authorization = `Bearer ${options.token}`;
  let payload: string | undefined;
  if (options.body !== undefined) {
    payload = typeof options.body === 'string' ? options.body : JSON.stringify(options.body);
    headers['content-type'] ??= 'application/json';
  }
  const res = await app.inject({ method, url, headers, ...(payload !== undefined ? { payload } : {}) });
  let body: unknown = undefined;
  if (res.body.length > 0) {
    try {
      body = JSON.parse(res.body);
    } catch {
      body = undefined;
    }
  }
  return { status: res.statusCode, headers: res.headers, body, text: res.body };
}

/** Creates a tenant (on the pool tier unless `tier` says) through the API and mints a token with `roles` for it. */
export async function createTenant(
  t: TestBulkhead,
  slug: string,
  roles: readonly string[] = ['tenant_admin'],
  tier: 'pool' | 'bridge' | 'silo' = 'pool',
): Promise<{ id: string; slug: string; token: string }> {
  const created = await request(t.app, 'POST', '/v1/tenants', { token: t.operatorToken, body: { slug, name: slug, tier } });
  if (created.status !== 201) throw new Error(`tenant create failed: ${created.status} ${created.text}`);
  const token = await mintToken(t, created.body.id, roles);
  return { id: created.body.id, slug, token };
}

/** Defines (or changes) a collection through the API; fails unless it answers 201 or 200. */
export async function defineCollection(t: TestBulkhead, token: string, name: string, body: unknown): Promise<TestResponse> {
  const res = await request(t.app, 'PUT', `/v1/collections/${name}`, { token, body });
  if (res.status !== 201 && res.status !== 200) throw new Error(`collection define failed: ${res.status} ${res.text}`);
  return res;
}

/** Mints a tenant token through the operator API. */
export async function mintToken(t: TestBulkhead, tenantId: string, roles: readonly string[], sub = 'user-1'): Promise<string> {
  const minted = await request(t.app, 'POST', `/v1/tenants/${tenantId}/tokens`, { token: t.operatorToken, body: { sub, roles } });
  if (minted.status !== 201) throw new Error(`token mint failed: ${minted.status} ${minted.text}`);
  return minted.body.token as string;
}

/**
 * Everything stored for one tenant, read through `su` (an engine connected as the superuser, so
 * RLS does not apply), as comparable text: tests take it before and after an attack.
 */
export async function tenantSnapshot(su: Engine, tenantId: string, options: { history?: boolean } = {}): Promise<string> {
  const by = (table: string, order: string): Statement => ({
    text: `SELECT * FROM bulkhead.${table} WHERE tenant_id = $1 ORDER BY ${order}`,
    values: [tenantId],
  });
  const results = await su.batch([
    { text: 'SELECT * FROM bulkhead.tenants WHERE id = $1', values: [tenantId] },
    by('collections', 'name'),
    by('collection_versions', 'name, version'),
    by('records', 'collection, id'),
    by('unique_values', 'collection, field, key'),
    by('index_values', 'collection, field, key, record_id'),
    ...(options.history ? [by('tenant_history', 'seq')] : []),
  ]);
  return JSON.stringify(results.map((r) => r.rows));
}
