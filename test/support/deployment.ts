/**
 * Dropping what a Bulkhead deployment made on a PostgreSQL server, for tests and benchmarks: the
 * silo databases and per-tenant roles it creates all carry its application role's name
 * (`<appRole>_s<hex>`, `_b<hex>`, `_o<hex>`, `_bridge`), so they are found by that prefix.
 */
import pg from 'pg';

/** Runs one statement on its own connection (CREATE and DROP DATABASE cannot run in a transaction). */
export async function adminQuery(serverUrl: string, sql: string): Promise<void> {
  const c = new pg.Client({ connectionString: serverUrl });
  await c.connect();
  try {
    await c.query(sql);
  } finally {
    await c.end();
  }
}

/**
 * Drops the silo databases, the per-tenant roles, the bridge group role and the deployment's own
 * two roles. Drop the deployment's main database first: bridge roles hold privileges in it.
 */
export async function dropDeploymentObjects(serverUrl: string, appRole: string, ownerRole: string): Promise<void> {
  const c = new pg.Client({ connectionString: serverUrl });
  await c.connect();
  try {
    const silos = await c.query("SELECT datname FROM pg_database WHERE datname LIKE $1 || '\\_%'", [appRole]);
    for (const row of silos.rows) await c.query(`DROP DATABASE IF EXISTS ${row.datname} WITH (FORCE)`);
    const roles = await c.query("SELECT rolname FROM pg_roles WHERE rolname LIKE $1 || '\\_%' ORDER BY rolname LIKE '%\\_bridge'", [appRole]);
    for (const row of roles.rows) await c.query(`DROP ROLE IF EXISTS ${row.rolname}`);
    for (const role of [appRole, ownerRole]) await c.query(`DROP ROLE IF EXISTS ${role}`);
  } finally {
    await c.end();
  }
}
