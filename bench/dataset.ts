/**
 * The benchmark's data: a throw-away PostgreSQL database with its own owner/app roles, tenants
 * and a collection created through Bulkhead's own services, and records bulk-loaded with SQL.
 *
 * Tenants, collections and tokens go through the product (so they are exactly what the API would
 * have made); only the 100k records are inserted directly, as the connecting superuser, because
 * 100k API calls would take minutes. Every record is normalized by the collection's own validator
 * first, so the rows are the ones the API would have stored.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { generateOperatorToken } from '../src/access/operator-tokens.js';
import { Bulkhead } from '../src/bulkhead.js';
import { loadConfig } from '../src/config.js';
import { uuidv7 } from '../src/ids.js';
import { dropDeploymentObjects } from '../test/support/deployment.js';
import { eachLimit } from './support.js';

/** The collection every bench tenant has. No unique or indexed field: writes then measure the record path itself. */
export const COLLECTION = 'items';

/**
 * The collection definition, as a builder would PUT it. Nothing in it is classified above
 * internal, so nothing is encrypted: `loadDataset` writes the records with SQL, in clear, and these
 * benchmarks measure isolation and tiers (encryption.bench.ts measures encryption).
 */
export const DEFINITION = {
  description: 'benchmark items',
  fields: {
    title: { type: 'string', required: true, maxLength: 200 },
    amount: { type: 'number' },
    done: { type: 'boolean', default: false },
    status: { type: 'enum', values: ['open', 'pending', 'closed'] },
    due: { type: 'date' },
    note: { type: 'text', classification: 'internal' },
  },
} as const;

/** A throw-away database and the roles Bulkhead will create in it. */
export interface BenchDatabase {
  /** Connection string of the database, as the admin (superuser) user of the admin URL. */
  readonly url: string;
  readonly name: string;
  readonly ownerRole: string;
  readonly appRole: string;
  /**
   * A data directory of its own for the deployment (`BULKHEAD_DATA_DIR`: audit signing key and
   * witness, local KMS state), made empty here and removed by `drop`.
   */
  readonly dataDir: string;
  /**
   * Drops the database (terminating connections), the silo databases and per-tenant roles the
   * deployment made, both roles, and the data directory; safe to call more than once.
   */
  drop(): Promise<void>;
}

function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}

/** Creates an empty database `bhbench_<random>`; roles `bhbench_<random>_{owner,app}` are made by Bulkhead's migration. */
export async function createBenchDatabase(adminUrl: string): Promise<BenchDatabase> {
  const suffix = randomBytes(5).toString('hex');
  const name = `bhbench_${suffix}`;
  const ownerRole = `${name}_owner`;
  const appRole = `${name}_app`;
  const client = new pg.Client({ connectionString: adminUrl });
  await client.connect();
  try {
    await client.query(`CREATE DATABASE ${name}`);
  } finally {
    await client.end();
  }
  const dataDir = mkdtempSync(join(tmpdir(), `${name}-`));
  let dropped: Promise<void> | undefined;
  return {
    url: withDatabase(adminUrl, name),
    name,
    ownerRole,
    appRole,
    dataDir,
    drop() {
      dropped ??= (async () => {
        try {
          const c = new pg.Client({ connectionString: adminUrl });
          await c.connect();
          try {
            await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
          } finally {
            await c.end();
          }
          // Silo databases and per-tenant roles (bridge and silo tenants), then the two roles.
          await dropDeploymentObjects(adminUrl, appRole, ownerRole);
        } finally {
          rmSync(dataDir, { recursive: true, force: true });
        }
      })();
      return dropped;
    },
  };
}

/** What the load generator needs: who the tenants are, their tokens, and which record belongs to whom. */
export interface Dataset {
  readonly tenantIds: readonly string[];
  /** One `member` token per tenant, same index as `tenantIds`. */
  readonly tokens: readonly string[];
  /** Every record id; `recordTenant[i]` is the index of the tenant owning `recordIds[i]`. */
  readonly recordIds: readonly string[];
  readonly recordTenant: Uint32Array;
  /** The environment the product server is started with (same secret, roles and partitions as the loader used). */
  readonly serverEnv: Readonly<Record<string, string>>;
  /** Seconds each setup step took. */
  readonly timings: Readonly<Record<string, number>>;
}

/** Options of `loadDataset`. */
export interface DatasetOptions {
  readonly tenants: number;
  readonly records: number;
  readonly partitions: number;
  readonly poolSize: number;
  /** The collection's read auditing (`all`, the product's default, unless given). */
  readonly readAudit?: 'all' | 'off';
  /** Called with a short progress message. */
  readonly progress?: (message: string) => void;
}


const STATUSES = ['open', 'pending', 'closed'] as const;

/** The fields of the i-th bench record (deterministic, so runs are comparable). */
export function recordFields(i: number): Record<string, unknown> {
  const day = String(1 + (i % 28)).padStart(2, '0');
  return {
    title: `item ${i} of the benchmark pool`,
    amount: (i % 10_000) / 100,
    status: STATUSES[i % 3],
    due: `2026-0${1 + (i % 9)}-${day}`,
    ...(i % 4 === 0 ? { note: `note for item ${i}: ${'lorem ipsum '.repeat(4)}` } : {}),
  };
}

/**
 * Migrates the database, creates `tenants` tenants with the bench collection and a token each
 * (through Bulkhead's services), then loads `records` records spread evenly over the tenants.
 */
export async function loadDataset(db: BenchDatabase, options: DatasetOptions): Promise<Dataset> {
  const progress = options.progress ?? (() => {});
  const timings: Record<string, number> = {};
  const serverEnv: Record<string, string> = {
    DATABASE_URL: db.url,
    // The audit signing key and witness go here; the store is PostgreSQL and the JWT secret comes from the environment.
    BULKHEAD_DATA_DIR: db.dataDir,
    BULKHEAD_OPERATOR_TOKEN: generateOperatorToken(),
    BULKHEAD_OWNER_ROLE: db.ownerRole,
    BULKHEAD_APP_ROLE: db.appRole,
    BULKHEAD_PARTITIONS: String(options.partitions),
    BULKHEAD_POOL_SIZE: String(options.poolSize),
    BULKHEAD_JWT_SECRET: randomBytes(32).toString('base64url'),
    BULKHEAD_LOG_LEVEL: 'silent',
  };
  const config = loadConfig({}, serverEnv);
  let t0 = performance.now();
  const bh = await Bulkhead.open(config);
  const tenantIds: string[] = [];
  const tokens: string[] = [];
  try {
    timings.migrate = (performance.now() - t0) / 1000;

    t0 = performance.now();
    await eachLimit(options.tenants, 8, async (i) => {
      const tenant = await bh.tenants.create({ slug: `bench-${i}`, name: `Bench tenant ${i}` }, 'bench');
      await bh.collections.define(tenant.id, COLLECTION, { ...DEFINITION, readAudit: options.readAudit ?? 'all' }, 'bench');
      tenantIds[i] = tenant.id;
      tokens[i] = (await bh.mintToken(tenant.id, { sub: `bench-user-${i}`, roles: ['member'], ttlSeconds: 6 * 3600 })).token;
    });
    timings.tenants = (performance.now() - t0) / 1000;
    progress(`${options.tenants} tenants with collection "${COLLECTION}" in ${timings.tenants.toFixed(1)} s`);

    t0 = performance.now();
    // One validator serves every tenant: the definition is the same, and normalizing is what the API does to a body.
    const validator = (await bh.collections.get(tenantIds[0]!, COLLECTION)).validator;
    const recordIds: string[] = new Array(options.records);
    const recordTenant = new Uint32Array(options.records);
    const admin = new pg.Client({ connectionString: db.url });
    await admin.connect();
    try {
      const chunk = 5_000;
      for (let start = 0; start < options.records; start += chunk) {
        const end = Math.min(start + chunk, options.records);
        const tenantCol: string[] = [];
        const idCol: string[] = [];
        const dataCol: string[] = [];
        for (let i = start; i < end; i++) {
          const t = i % options.tenants;
          const id = uuidv7();
          recordIds[i] = id;
          recordTenant[i] = t;
          tenantCol.push(tenantIds[t]!);
          idCol.push(id);
          dataCol.push(JSON.stringify(validator.normalize(recordFields(i), true)));
        }
        // As the superuser: RLS does not apply, the foreign key to the collection still does.
        await admin.query(
          'INSERT INTO bulkhead.records (tenant_id, collection, id, data, schema_version, created_by, updated_by) ' +
            "SELECT t, $4, i, d::jsonb, 1, 'bench', 'bench' FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS u(t, i, d)",
          [tenantCol, idCol, dataCol, COLLECTION],
        );
      }
      timings.records = (performance.now() - t0) / 1000;
      progress(`${options.records.toLocaleString('en-US')} records in ${timings.records.toFixed(1)} s`);
      t0 = performance.now();
      // A loaded, analyzed table, as autovacuum would leave it, so plans are those of a settled database.
      await admin.query('VACUUM ANALYZE bulkhead.records');
      await admin.query('ANALYZE bulkhead.tenants, bulkhead.collections');
      timings.analyze = (performance.now() - t0) / 1000;
    } finally {
      await admin.end();
    }
    return { tenantIds, tokens, recordIds, recordTenant, serverEnv, timings };
  } finally {
    await bh.close().catch(() => {});
  }
}
