/**
 * The baseline the isolation overhead is measured against: the least a Fastify + `pg` server can
 * do to serve the same requests. It connects as a superuser (so RLS does not apply), takes the
 * tenant from the `x-tenant-id` header on trust, checks no token and no policy, validates nothing,
 * and runs ONE prepared statement per request on a pool of the same size as the product's.
 * It must never grow features: it is the floor, not a competitor.
 *
 * Environment: BENCH_DATABASE_URL (required), BENCH_POOL_SIZE (default 10).
 * Started by isolation.bench.ts with `fork`; speaks the protocol of child-server.ts.
 */
import Fastify from 'fastify';
import pg from 'pg';
import { uuidv7 } from '../src/ids.js';
import { serveChild } from './child-server.js';

const url = process.env.BENCH_DATABASE_URL;
if (!url) throw new Error('BENCH_DATABASE_URL is not set');
const pool = new pg.Pool({ connectionString: url, max: Number(process.env.BENCH_POOL_SIZE ?? 10), application_name: 'bulkhead-bench-baseline' });
pool.on('error', () => {});

const SELECT = 'SELECT id, data, version, created_at, updated_at FROM bulkhead.records WHERE tenant_id = $1 AND collection = $2 AND id = $3';
const INSERT =
  'INSERT INTO bulkhead.records (tenant_id, collection, id, data, schema_version, created_by, updated_by) ' +
  "VALUES ($1, $2, $3, $4::text::jsonb, 1, 'baseline', 'baseline') RETURNING id, data, version, created_at, updated_at";

interface Row {
  id: string;
  data: Record<string, unknown>;
  version: number;
  created_at: Date;
  updated_at: Date;
}

/** The product's record shape (SPEC: `{id, fields, createdAt, updatedAt, version}`). */
function view(row: Row) {
  return { id: row.id, fields: row.data, createdAt: row.created_at.toISOString(), updatedAt: row.updated_at.toISOString(), version: row.version };
}

const app = Fastify({ logger: false });
/** Database transactions started (one statement each), reported with the CPU time. */
let transactions = 0;

app.get<{ Params: { name: string; id: string } }>('/v1/collections/:name/records/:id', async (req, reply) => {
  transactions++;
  const r = await pool.query<Row>({ name: 'baseline_get', text: SELECT, values: [req.headers['x-tenant-id'], req.params.name, req.params.id] });
  const row = r.rows[0];
  if (!row) return reply.code(404).send({ code: 'RECORD_NOT_FOUND' });
  return view(row);
});

app.post<{ Params: { name: string }; Body: { fields: unknown } }>('/v1/collections/:name/records', async (req, reply) => {
  transactions++;
  const r = await pool.query<Row>({
    name: 'baseline_insert',
    text: INSERT,
    values: [req.headers['x-tenant-id'], req.params.name, uuidv7(), JSON.stringify(req.body.fields)],
  });
  reply.code(201);
  return view(r.rows[0]!);
});

await serveChild(app, () => pool.end(), () => transactions);
