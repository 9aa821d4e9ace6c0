/**
 * Versioned schema migrations. Every migration runs in one transaction under an advisory lock,
 * as the owner role, so the owner owns every object and the application role owns nothing.
 *
 * The only values interpolated into this SQL are role names and the partition count, both
 * validated by `checkRoleName` / `checkPartitions` before they get here.
 */
// The audit SQL (migration 8) imports this module's checks and predicate back; neither module uses
// the other's bindings while loading, so the cycle is harmless.
import {
  auditEventsGrantsSql,
  auditEventsLinkFunctionSql,
  auditEventsTableSql,
  auditFunctionsSql,
  auditPlatformChangeFunctionSql,
  auditPlatformLinkFunctionSql,
  auditSchemaSql,
  AUDIT_EVENTS_TABLE,
  AUDIT_PLATFORM_PRUNE_SETTING,
  AUDIT_PLATFORM_TABLE,
} from '../audit/schema.js';
import { PLAIN_IDENTIFIER, isPlainIdentifier } from '../ids.js';

/** What the migrations are parameterized by. */
export interface MigrationOptions {
  /** Owns every table; never used by the request path. */
  readonly ownerRole: string;
  /** NOSUPERUSER, NOBYPASSRLS, owns nothing; every tenant-data statement runs as it. */
  readonly appRole: string;
  /** Modulus of `PARTITION BY HASH (tenant_id)`. */
  readonly partitions: number;
}

/** One migration. */
export interface Migration {
  readonly version: number;
  readonly name: string;
  readonly sql: (o: MigrationOptions) => string;
}

/** Refuses a schema name that is not a plain lower-case identifier (schema names end up in DDL). */
export function checkSchemaName(schema: string): string {
  if (!isPlainIdentifier(schema)) throw new TypeError('a schema name must be a plain lower-case identifier');
  return schema;
}

/** Refuses anything but a plain lower-case identifier (role names end up in DDL). */
export function checkRoleName(name: string, what: string): string {
  if (!isPlainIdentifier(name)) throw new TypeError(`${what} must match ${PLAIN_IDENTIFIER.source}`);
  return name;
}

/** Refuses a partition count outside 1..1024. */
export function checkPartitions(n: number): number {
  if (!Number.isInteger(n) || n < 1 || n > 1024) throw new TypeError('the partition count must be an integer from 1 to 1024');
  return n;
}

/** The policy expression every tenant table carries (NOTES.md: without nullif a reset setting raises). */
export const TENANT_PREDICATE = "tenant_id = nullif(current_setting('bulkhead.tenant_id', true), '')::uuid";

/**
 * SQL that creates the two roles (idempotently) and lets the connecting user switch to them.
 * Roles are cluster-wide, so this runs outside the versioned migrations.
 */
export function rolesSql(o: MigrationOptions): string {
  const owner = checkRoleName(o.ownerRole, 'the owner role');
  const app = checkRoleName(o.appRole, 'the application role');
  return `
DO $roles$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '${owner}') THEN
    CREATE ROLE ${owner} NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '${app}') THEN
    CREATE ROLE ${app} NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT;
  END IF;
  IF NOT pg_has_role(current_user, '${owner}', 'MEMBER') THEN
    EXECUTE format('GRANT ${owner} TO %I', current_user);
  END IF;
  IF NOT pg_has_role(current_user, '${app}', 'MEMBER') THEN
    EXECUTE format('GRANT ${app} TO %I', current_user);
  END IF;
END
$roles$;
${legacyBridgeRolesSql(app)}`;
}

/**
 * Bridge tenants' roles made before migration 14 inherit from the group role `<app>_bridge`, and
 * PostgreSQL 15 computes an inheriting role's memberships again at every switch to it
 * (bench/README.md, "Bridge roles without a group"). Since migration 14 nothing they need comes
 * from the group (it is granted to PUBLIC), so they are made as the roles made since: NOINHERIT,
 * member of no role. Altering roles needs the CREATEROLE the connecting user provisioned them
 * with, so it runs here, as that user, and not in a migration (which runs as the owner). Without
 * that privilege the roles stay as they were, which still works: a warning says so. The name is
 * `BridgeTier.roleOf`'s (src/placement/bridge-tier.ts); a role of another name is left alone.
 */
export function legacyBridgeRolesSql(app: string): string {
  return `DO $bridge_roles$
DECLARE
  r text;
BEGIN
  FOR r IN
    SELECT m.rolname::text FROM pg_auth_members a
      JOIN pg_roles g ON g.oid = a.roleid JOIN pg_roles m ON m.oid = a.member
    WHERE g.rolname = '${app}_bridge' AND m.rolname ~ '^${app}_b[0-9a-f]{32}$'
    ORDER BY 1
  LOOP
    BEGIN
      EXECUTE format('REVOKE %I FROM %I', '${app}_bridge', r);
      EXECUTE format('ALTER ROLE %I NOINHERIT', r);
    EXCEPTION WHEN insufficient_privilege THEN
      RAISE WARNING 'bridge role % keeps its group role: the connecting user may not alter it (CREATEROLE)', r;
    END;
  END LOOP;
END
$bridge_roles$;`;
}

function partitioned(table: string, partitions: number): string {
  const parts: string[] = [];
  for (let i = 0; i < partitions; i++) {
    const p = `bulkhead.${table}_p${i}`;
    parts.push(`CREATE TABLE ${p} PARTITION OF bulkhead.${table} FOR VALUES WITH (MODULUS ${partitions}, REMAINDER ${i});
ALTER TABLE ${p} ENABLE ROW LEVEL SECURITY;
ALTER TABLE ${p} FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON ${p} USING (${TENANT_PREDICATE}) WITH CHECK (${TENANT_PREDICATE});
REVOKE ALL ON ${p} FROM PUBLIC;`);
  }
  return parts.join('\n');
}

function tenantTable(table: string): string {
  return `ALTER TABLE ${table} ENABLE ROW LEVEL SECURITY;
ALTER TABLE ${table} FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON ${table} USING (${TENANT_PREDICATE}) WITH CHECK (${TENANT_PREDICATE});`;
}

/**
 * The tables that hold a tenant's data, parents first (a purge deletes them in reverse).
 * `tenant_keys` leads: it references only the registry, and a purge removes it last.
 * `audit_events`, the tenant's audit chain (migration 8), references nothing: a purge removes it
 * first, under the one exception its append-only trigger makes (`AUDIT_PURGE_SETTING`).
 */
export const DATA_TABLES = ['tenant_keys', 'collections', 'collection_versions', 'records', 'unique_values', 'index_values', 'audit_events'] as const;

/**
 * The tenant-data tables in `schema`: one physical layout for every tier. The pool (schema
 * `bulkhead`) hash-partitions the large tables by tenant; a bridge schema holds one tenant and is
 * not partitioned (`partitions` undefined). RLS is enabled and FORCED everywhere either way.
 * This is the current layout, for schemas made now (bridge provisioning): the tenant's key rows
 * and its audit chain (with the chain's trigger functions, made in the schema itself) included. The
 * pool's own tables are made by the migrations, each table by the migration that introduced it.
 */
export function dataTablesSql(schema: string, partitions?: number): string {
  return `${firstDataTablesSql(schema, partitions)}
${tenantKeysTableSql(schema)}
${auditFunctionsSql(schema)}
${auditEventsTableSql({ schema })}`;
}

/**
 * The per-tenant data keys (docs/encryption.md, "Data keys"): stored beside the tenant's data, so
 * that a move carries them wherever the data goes, and only wrapped (the KMS's `bhk1` text, whose
 * wrap context binds tenant, purpose and version). Not partitioned: a few rows per tenant. At most
 * one active key per tenant and purpose, enforced here, so two processes rotating at once cannot
 * both win.
 */
export function tenantKeysTableSql(schema: string): string {
  checkSchemaName(schema);
  return `CREATE TABLE ${schema}.tenant_keys (
  tenant_id uuid NOT NULL REFERENCES bulkhead.tenants (id),
  purpose text NOT NULL CHECK (purpose IN ('data', 'index')),
  version integer NOT NULL CHECK (version >= 1),
  wrapped text NOT NULL CHECK (length(wrapped) BETWEEN 1 AND 512),
  state text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'retired', 'destroyed')),
  -- Encryptions reserved under the key so far, in blocks: at least the encryptions made.
  reserved bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0),
  created_at timestamptz NOT NULL DEFAULT now(),
  retired_at timestamptz,
  PRIMARY KEY (tenant_id, purpose, version)
);
CREATE UNIQUE INDEX tenant_keys_one_active ON ${schema}.tenant_keys (tenant_id, purpose) WHERE state = 'active';
${tenantTable(`${schema}.tenant_keys`)}`;
}

/** The tenant-data tables of the first release, as migration 1 made them (it must never change). */
function firstDataTablesSql(schema: string, partitions?: number): string {
  checkSchemaName(schema);
  const s = schema;
  const byTenant = partitions === undefined ? '' : ' PARTITION BY HASH (tenant_id)';
  const parts = (table: string) => (partitions === undefined ? '' : partitioned(table, partitions));
  return `CREATE TABLE ${s}.collections (
  tenant_id uuid NOT NULL REFERENCES bulkhead.tenants (id),
  name text NOT NULL CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
  version integer NOT NULL CHECK (version >= 1),
  definition jsonb NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, name)
);
${tenantTable(`${s}.collections`)}

CREATE TABLE ${s}.collection_versions (
  tenant_id uuid NOT NULL,
  name text NOT NULL,
  version integer NOT NULL,
  definition jsonb NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  created_by text NOT NULL,
  PRIMARY KEY (tenant_id, name, version),
  FOREIGN KEY (tenant_id, name) REFERENCES ${s}.collections (tenant_id, name)
);
${tenantTable(`${s}.collection_versions`)}

CREATE TABLE ${s}.records (
  tenant_id uuid NOT NULL,
  collection text NOT NULL,
  id uuid NOT NULL,
  data jsonb NOT NULL,
  version integer NOT NULL DEFAULT 1,
  schema_version integer NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  created_by text NOT NULL,
  updated_by text NOT NULL,
  PRIMARY KEY (tenant_id, collection, id),
  FOREIGN KEY (tenant_id, collection) REFERENCES ${s}.collections (tenant_id, name)
)${byTenant};
${tenantTable(`${s}.records`)}
${parts('records')}

-- Values of unique fields: uniqueness is per tenant because the key leads with tenant_id,
-- so one tenant's value can never collide with, or reveal, another's.
CREATE TABLE ${s}.unique_values (
  tenant_id uuid NOT NULL,
  collection text NOT NULL,
  field text NOT NULL,
  key text NOT NULL,
  record_id uuid NOT NULL,
  PRIMARY KEY (tenant_id, collection, field, key),
  FOREIGN KEY (tenant_id, collection, record_id) REFERENCES ${s}.records (tenant_id, collection, id) ON DELETE CASCADE
)${byTenant};
${tenantTable(`${s}.unique_values`)}
${parts('unique_values')}

-- Values of indexed fields (the metadata-driven pivot index of Salesforce's design).
CREATE TABLE ${s}.index_values (
  tenant_id uuid NOT NULL,
  collection text NOT NULL,
  field text NOT NULL,
  key text NOT NULL,
  record_id uuid NOT NULL,
  PRIMARY KEY (tenant_id, collection, field, key, record_id),
  FOREIGN KEY (tenant_id, collection, record_id) REFERENCES ${s}.records (tenant_id, collection, id) ON DELETE CASCADE
)${byTenant};
${tenantTable(`${s}.index_values`)}
${parts('index_values')}
`;
}

/**
 * Indexes that lead with the record a unique or indexed value belongs to. Deleting a record
 * cascades to its values, and without these each cascade scanned the tenant's whole partition of
 * values (their keys end with the record): purging a 100,000-record tenant after a move ran past
 * the statement timeout.
 */
export function dataIndexesSql(schema: string): string {
  checkSchemaName(schema);
  return `CREATE INDEX IF NOT EXISTS unique_values_record ON ${schema}.unique_values (tenant_id, collection, record_id);
CREATE INDEX IF NOT EXISTS index_values_record ON ${schema}.index_values (tenant_id, collection, record_id);`;
}

/** The triggers that keep partition and identity keys immutable (SPEC principle 4) on `schema`'s tables. */
export function dataTriggersSql(schema: string): string {
  checkSchemaName(schema);
  return `CREATE TRIGGER records_keys_immutable BEFORE UPDATE ON ${schema}.records
  FOR EACH ROW EXECUTE FUNCTION bulkhead.forbid_record_key_change();
CREATE TRIGGER collections_keys_immutable BEFORE UPDATE ON ${schema}.collections
  FOR EACH ROW EXECUTE FUNCTION bulkhead.forbid_collection_key_change();`;
}

/**
 * The privileges `role` needs on the data tables of `schema`, and on the shared functions and its
 * own registry row (the active-tenant check) in `bulkhead`. Nothing else: no partition, no other
 * schema, no platform table.
 */
export function dataGrantsSql(schema: string, role: string): string {
  return `${firstDataGrantsSql(schema, role)}
${tenantKeysGrantsSql(schema, role)}
${auditEventsGrantsSql(schema, role)}`;
}

/**
 * What `role` may do with the key rows of `schema`: read them, add versions, and update them
 * (reservation counts, retiring, re-wrapping under a new KEK). No DELETE: a key row is never
 * removed by a request; a purge after a move runs as the owner.
 */
export function tenantKeysGrantsSql(schema: string, role: string): string {
  checkSchemaName(schema);
  checkRoleName(role, 'the data role');
  return `GRANT SELECT, INSERT, UPDATE ON ${schema}.tenant_keys TO ${role};`;
}

/** The grants of migration 1 (which must never change). */
function firstDataGrantsSql(schema: string, role: string): string {
  checkSchemaName(schema);
  checkRoleName(role, 'the data role');
  return `GRANT USAGE ON SCHEMA ${schema} TO ${role};
GRANT SELECT, INSERT, UPDATE ON ${schema}.collections TO ${role};
GRANT SELECT, INSERT ON ${schema}.collection_versions TO ${role};
GRANT SELECT, INSERT, UPDATE, DELETE ON ${schema}.records TO ${role};
GRANT SELECT, INSERT, DELETE ON ${schema}.unique_values TO ${role};
GRANT SELECT, INSERT, DELETE ON ${schema}.index_values TO ${role};`;
}

/** The migrations, in order. Never edit a released one: add a new version. */
export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'control plane and pool tier',
    sql: (o) => `
CREATE TABLE bulkhead.settings (
  key text PRIMARY KEY,
  value text NOT NULL
);

CREATE TABLE bulkhead.tenants (
  id uuid PRIMARY KEY,
  slug text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
  name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  status text NOT NULL CHECK (status IN ('active', 'suspended', 'quarantined', 'migrating', 'offboarding', 'erased')),
  tier text NOT NULL CHECK (tier IN ('pool', 'bridge', 'silo')),
  region text NOT NULL CHECK (region ~ '^[a-z0-9][a-z0-9-]{0,31}$'),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE bulkhead.tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE bulkhead.tenants FORCE ROW LEVEL SECURITY;
-- The platform scope sees the registry; a tenant scope sees only its own row.
CREATE POLICY tenant_registry ON bulkhead.tenants
  USING (current_setting('bulkhead.scope', true) = 'platform' OR id = nullif(current_setting('bulkhead.tenant_id', true), '')::uuid)
  WITH CHECK (current_setting('bulkhead.scope', true) = 'platform');

CREATE TABLE bulkhead.tenant_history (
  tenant_id uuid NOT NULL REFERENCES bulkhead.tenants (id),
  seq bigint GENERATED ALWAYS AS IDENTITY,
  at timestamptz NOT NULL DEFAULT now(),
  event text NOT NULL,
  from_status text,
  to_status text NOT NULL,
  actor text NOT NULL,
  PRIMARY KEY (tenant_id, seq)
);
ALTER TABLE bulkhead.tenant_history ENABLE ROW LEVEL SECURITY;
ALTER TABLE bulkhead.tenant_history FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_history_platform ON bulkhead.tenant_history
  USING (current_setting('bulkhead.scope', true) = 'platform')
  WITH CHECK (current_setting('bulkhead.scope', true) = 'platform');

CREATE TABLE bulkhead.operator_tokens (
  hash text PRIMARY KEY CHECK (hash ~ '^sha256:[0-9a-f]{64}$'),
  label text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE bulkhead.operator_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE bulkhead.operator_tokens FORCE ROW LEVEL SECURITY;
CREATE POLICY operator_tokens_platform ON bulkhead.operator_tokens
  USING (current_setting('bulkhead.scope', true) = 'platform')
  WITH CHECK (current_setting('bulkhead.scope', true) = 'platform');

${firstDataTablesSql('bulkhead', o.partitions)}
-- Partition and identity keys never change after insert (SPEC principle 4).
CREATE FUNCTION bulkhead.forbid_record_key_change() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  IF NEW.tenant_id IS DISTINCT FROM OLD.tenant_id OR NEW.collection IS DISTINCT FROM OLD.collection OR NEW.id IS DISTINCT FROM OLD.id THEN
    RAISE EXCEPTION 'tenant_id, collection and id of a record are immutable' USING ERRCODE = 'check_violation';
  END IF;
  RETURN NEW;
END
$fn$;
CREATE FUNCTION bulkhead.forbid_collection_key_change() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  IF NEW.tenant_id IS DISTINCT FROM OLD.tenant_id OR NEW.name IS DISTINCT FROM OLD.name THEN
    RAISE EXCEPTION 'tenant_id and name of a collection are immutable' USING ERRCODE = 'check_violation';
  END IF;
  RETURN NEW;
END
$fn$;
${dataTriggersSql('bulkhead')}
CREATE FUNCTION bulkhead.forbid_tenant_id_change() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  IF NEW.id IS DISTINCT FROM OLD.id THEN
    RAISE EXCEPTION 'tenant id is immutable' USING ERRCODE = 'check_violation';
  END IF;
  RETURN NEW;
END
$fn$;
CREATE TRIGGER tenants_id_immutable BEFORE UPDATE ON bulkhead.tenants
  FOR EACH ROW EXECUTE FUNCTION bulkhead.forbid_tenant_id_change();

-- The key under which a scalar value is indexed: computed in SQL only, so writes, backfills and
-- filters always agree. Long strings are hashed to stay under the B-tree entry limit.
CREATE FUNCTION bulkhead.value_key(v jsonb) RETURNS text LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
  SELECT CASE jsonb_typeof(v)
    WHEN 'string' THEN CASE WHEN length(v #>> '{}') > 200
      THEN 'h:' || encode(sha256(convert_to(v #>> '{}', 'UTF8')), 'hex')
      ELSE 's:' || (v #>> '{}') END
    WHEN 'number' THEN 'n:' || trim_scale((v #>> '{}')::numeric)::text
    WHEN 'boolean' THEN 'b:' || (v #>> '{}')
    ELSE NULL END
$fn$;

-- Raises when a reference names no record of the current tenant (RLS decides what is visible).
CREATE FUNCTION bulkhead.require_reference(present boolean) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
  IF NOT coalesce($1, false) THEN
    RAISE EXCEPTION 'reference not found' USING ERRCODE = 'foreign_key_violation';
  END IF;
END
$fn$;

-- Raises unless the tenant of the transaction is active: every tenant batch starts with this
-- check, so a suspended tenant is refused by the database itself, with no cache in between.
CREATE FUNCTION bulkhead.require_active_tenant(active boolean) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
  IF NOT coalesce($1, false) THEN
    RAISE EXCEPTION 'tenant is not active' USING ERRCODE = 'BHT01';
  END IF;
END
$fn$;

-- Raises when a write was validated against a collection version that is no longer current.
CREATE FUNCTION bulkhead.require_collection_version(current boolean) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
  IF NOT coalesce($1, false) THEN
    RAISE EXCEPTION 'collection version changed' USING ERRCODE = 'BHC01';
  END IF;
END
$fn$;

REVOKE ALL ON ALL TABLES IN SCHEMA bulkhead FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA bulkhead FROM PUBLIC;
GRANT USAGE ON SCHEMA bulkhead TO ${o.appRole};
GRANT EXECUTE ON FUNCTION bulkhead.value_key(jsonb), bulkhead.require_reference(boolean), bulkhead.require_collection_version(boolean), bulkhead.require_active_tenant(boolean) TO ${o.appRole};
GRANT SELECT, INSERT, UPDATE ON bulkhead.tenants TO ${o.appRole};
GRANT SELECT, INSERT ON bulkhead.tenant_history TO ${o.appRole};
GRANT SELECT, INSERT ON bulkhead.operator_tokens TO ${o.appRole};
${firstDataGrantsSql('bulkhead', o.appRole)}
`,
  },
  {
    version: 2,
    name: 'partition health and per-tenant usage',
    sql: (o) => `
-- Per-tenant usage in time buckets (like Citus' citus_stat_tenants). A platform table, not a
-- tenant table: it holds counters, never tenant data, and it is written by one background flush
-- that carries every tenant's counts at once. Under the tenant policy that flush would need one
-- transaction per tenant (the context is per transaction), so with thousands of active tenants a
-- 10 s flush would become thousands of transactions. Only the platform scope writes it; a tenant
-- scope may read its own rows (as with bulkhead.tenants) and nothing else. Not hash-partitioned:
-- rows expire by time (window_start), which hash partitions on tenant_id would not help with.
CREATE TABLE bulkhead.tenant_usage (
  tenant_id uuid NOT NULL REFERENCES bulkhead.tenants (id),
  window_start timestamptz NOT NULL,
  reads bigint NOT NULL DEFAULT 0 CHECK (reads >= 0),
  writes bigint NOT NULL DEFAULT 0 CHECK (writes >= 0),
  rows_read bigint NOT NULL DEFAULT 0 CHECK (rows_read >= 0),
  rows_written bigint NOT NULL DEFAULT 0 CHECK (rows_written >= 0),
  PRIMARY KEY (tenant_id, window_start)
);
-- The top-tenants query and the retention purge select by time across tenants.
CREATE INDEX tenant_usage_window ON bulkhead.tenant_usage (window_start);
ALTER TABLE bulkhead.tenant_usage ENABLE ROW LEVEL SECURITY;
ALTER TABLE bulkhead.tenant_usage FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_usage_read ON bulkhead.tenant_usage FOR SELECT
  USING (current_setting('bulkhead.scope', true) = 'platform' OR ${TENANT_PREDICATE});
CREATE POLICY tenant_usage_insert ON bulkhead.tenant_usage FOR INSERT
  WITH CHECK (current_setting('bulkhead.scope', true) = 'platform');
CREATE POLICY tenant_usage_update ON bulkhead.tenant_usage FOR UPDATE
  USING (current_setting('bulkhead.scope', true) = 'platform')
  WITH CHECK (current_setting('bulkhead.scope', true) = 'platform');
CREATE POLICY tenant_usage_delete ON bulkhead.tenant_usage FOR DELETE
  USING (current_setting('bulkhead.scope', true) = 'platform');

-- The statistics functions below run as the owner (SECURITY DEFINER) and must count every
-- tenant's records, but RLS is FORCED, so the owner sees no row without a policy of its own. This
-- one admits the owner role only, only in the platform scope, only for SELECT, and only through
-- the parent table. The application role is no member of the owner role, so it gains nothing;
-- and the owner could switch RLS off on its own tables anyway, so the owner gains nothing either.
CREATE POLICY owner_platform_statistics ON bulkhead.records FOR SELECT TO ${o.ownerRole}
  USING (current_setting('bulkhead.scope', true) = 'platform');

-- Rows and bytes of each hash partition of records: exact counts, aggregates only. Callable by the
-- application role in the platform scope only; a tenant scope is refused.
CREATE FUNCTION bulkhead.partition_stats()
RETURNS TABLE (partition_name text, remainder integer, row_count bigint, total_bytes bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, bulkhead AS $fn$
#variable_conflict use_column
BEGIN
  IF current_setting('bulkhead.scope', true) IS DISTINCT FROM 'platform' THEN
    RAISE EXCEPTION 'partition statistics need the platform scope' USING ERRCODE = 'insufficient_privilege';
  END IF;
  -- MATERIALIZED: one scan of the pool. Left to the planner, the count was re-run for every
  -- partition in a nested loop (16 full scans, measured 12.7 s against 0.6 s on 1.5M records).
  RETURN QUERY
    WITH n AS MATERIALIZED (SELECT r.tableoid AS part, count(*) AS cnt FROM bulkhead.records r GROUP BY r.tableoid)
    SELECT c.relname::text,
           substring(pg_get_expr(c.relpartbound, c.oid) FROM 'remainder ([0-9]+)')::integer,
           coalesce(n.cnt, 0)::bigint,
           pg_total_relation_size(c.oid)::bigint
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    LEFT JOIN n ON n.part = c.oid
    WHERE i.inhparent = 'bulkhead.records'::regclass
    ORDER BY 2;
END
$fn$;

-- Records and stored bytes (sum of pg_column_size(data)) per tenant: ids and numbers only, never
-- data. only_tenant narrows the answer to one tenant (the tenant_id = predicate keeps partition pruning).
CREATE FUNCTION bulkhead.tenant_sizes(only_tenant uuid DEFAULT NULL)
RETURNS TABLE (tenant_id uuid, row_count bigint, data_bytes bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, bulkhead AS $fn$
#variable_conflict use_column
BEGIN
  IF current_setting('bulkhead.scope', true) IS DISTINCT FROM 'platform' THEN
    RAISE EXCEPTION 'tenant sizes need the platform scope' USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF only_tenant IS NULL THEN
    RETURN QUERY
      SELECT r.tenant_id, count(*)::bigint, coalesce(sum(pg_column_size(r.data)), 0)::bigint
      FROM bulkhead.records r GROUP BY r.tenant_id;
  ELSE
    RETURN QUERY
      SELECT r.tenant_id, count(*)::bigint, coalesce(sum(pg_column_size(r.data)), 0)::bigint
      FROM bulkhead.records r WHERE r.tenant_id = only_tenant GROUP BY r.tenant_id;
  END IF;
END
$fn$;

REVOKE ALL ON bulkhead.tenant_usage FROM PUBLIC;
REVOKE ALL ON FUNCTION bulkhead.partition_stats(), bulkhead.tenant_sizes(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bulkhead.partition_stats(), bulkhead.tenant_sizes(uuid) TO ${o.appRole};
GRANT SELECT, INSERT, UPDATE, DELETE ON bulkhead.tenant_usage TO ${o.appRole};
`,
  },
  {
    version: 3,
    name: 'placement directory and tenant moves',
    sql: (o) => `
-- Where each tenant lives: the placement directory of the control plane. A tenant without a row
-- (created before this migration) is backfilled on start as pool tier in the control cell.
CREATE TABLE bulkhead.placements (
  tenant_id uuid PRIMARY KEY REFERENCES bulkhead.tenants (id),
  tier text NOT NULL CHECK (tier IN ('pool', 'bridge', 'silo')),
  cell text NOT NULL CHECK (cell ~ '^[a-z0-9][a-z0-9-]{0,31}$'),
  location text NOT NULL CHECK (location ~ '^[a-z_][a-z0-9_]{0,62}$'),
  -- Set while a move switches the tenant over: writes are refused (503 + Retry-After) until then.
  writes_paused_until timestamptz,
  updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE bulkhead.placements ENABLE ROW LEVEL SECURITY;
ALTER TABLE bulkhead.placements FORCE ROW LEVEL SECURITY;
CREATE POLICY placements_platform ON bulkhead.placements
  USING (current_setting('bulkhead.scope', true) = 'platform')
  WITH CHECK (current_setting('bulkhead.scope', true) = 'platform');

-- Tenant moves: a persisted state machine, resumed from its state after a crash.
CREATE TABLE bulkhead.moves (
  id uuid PRIMARY KEY,
  tenant_id uuid NOT NULL REFERENCES bulkhead.tenants (id),
  state text NOT NULL CHECK (state IN ('planned', 'copying', 'verifying', 'switching', 'cleaning', 'done', 'failed', 'rolled_back')),
  source jsonb NOT NULL,
  target jsonb NOT NULL,
  legal_basis text CHECK (legal_basis IS NULL OR length(legal_basis) BETWEEN 10 AND 2000),
  progress jsonb NOT NULL DEFAULT '{}',
  checksums jsonb,
  error text,
  actor text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  finished_at timestamptz
);
-- At most one unfinished move per tenant, enforced by the database.
CREATE UNIQUE INDEX moves_one_open ON bulkhead.moves (tenant_id) WHERE state NOT IN ('done', 'rolled_back');
ALTER TABLE bulkhead.moves ENABLE ROW LEVEL SECURITY;
ALTER TABLE bulkhead.moves FORCE ROW LEVEL SECURITY;
CREATE POLICY moves_platform ON bulkhead.moves
  USING (current_setting('bulkhead.scope', true) = 'platform')
  WITH CHECK (current_setting('bulkhead.scope', true) = 'platform');

REVOKE ALL ON bulkhead.placements, bulkhead.moves FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE ON bulkhead.placements TO ${o.appRole};
GRANT SELECT, INSERT, UPDATE ON bulkhead.moves TO ${o.appRole};
`,
  },
  {
    version: 4,
    name: 'value indexes by record',
    sql: () => dataIndexesSql('bulkhead'),
  },
  {
    version: 5,
    name: 'write fencing for tenant moves',
    sql: (o) => `
-- Bumped by each move's switch. A write batch names the epoch of the placement it was routed to,
-- so a process that routed with an outdated directory entry cannot write to a move's source.
ALTER TABLE bulkhead.tenants ADD COLUMN placement_epoch integer NOT NULL DEFAULT 1 CHECK (placement_epoch > 0);

-- Runs first in every write batch, as the application role. The shared advisory lock is held to
-- the end of the transaction: a move's switch takes it exclusively after marking the tenant
-- 'migrating', and so waits for every write that got past this check; writes that come later see
-- 'migrating' (or, after the switch, a newer epoch) and are refused with BHT02.
CREATE FUNCTION bulkhead.require_writable_tenant(tenant uuid, epoch integer) RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE
  current_status text;
  current_epoch integer;
BEGIN
  PERFORM pg_advisory_xact_lock_shared(hashtextextended(tenant::text, ${WRITE_FENCE_SEED}));
  SELECT status, placement_epoch INTO current_status, current_epoch FROM bulkhead.tenants WHERE id = tenant;
  IF current_status IS NULL OR current_status NOT IN ('active', 'migrating') THEN
    RAISE EXCEPTION 'tenant is not active' USING ERRCODE = 'BHT01';
  END IF;
  IF current_status = 'migrating' OR current_epoch <> epoch THEN
    RAISE EXCEPTION 'tenant is being moved' USING ERRCODE = 'BHT02';
  END IF;
END
$fn$;
REVOKE ALL ON FUNCTION bulkhead.require_writable_tenant(uuid, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bulkhead.require_writable_tenant(uuid, integer) TO ${o.appRole};
`,
  },
  {
    version: 6,
    name: 'per-tenant data keys',
    sql: (o) => {
      const owner = checkRoleName(o.ownerRole, 'the owner role');
      const app = checkRoleName(o.appRole, 'the application role');
      return `
${tenantKeysTableSql('bulkhead')}
REVOKE ALL ON bulkhead.tenant_keys FROM PUBLIC;
${tenantKeysGrantsSql('bulkhead', app)}

-- Bridge schemas made before this migration get the table as well, granted to their tenant's role
-- (<appRole>_b<hex>, bridge-tier.ts): a bridge tenant's keys live in its schema beside its data, so
-- that later moves carry them. Only this deployment's bridge schemas are touched: owned by its
-- owner role, named tenant_<32 hex digits>, holding the data tables. The DDL is the same text as
-- for a new schema, with the schema's name put in for a placeholder.
DO $bridges$
DECLARE
  s text;
  r text;
BEGIN
  FOR s IN
    SELECT n.nspname::text FROM pg_namespace n
    WHERE ${bridgeSchemaCondition(owner)}
      AND to_regclass(n.nspname || '.records') IS NOT NULL AND to_regclass(n.nspname || '.tenant_keys') IS NULL
    ORDER BY 1
  LOOP
    EXECUTE replace($ddl$${tenantKeysTableSql(SCHEMA_PLACEHOLDER)}$ddl$, '${SCHEMA_PLACEHOLDER}', s);
    EXECUTE format('REVOKE ALL ON %I.tenant_keys FROM PUBLIC', s);
    r := '${app}_b' || substr(s, 8);
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
      EXECUTE replace(replace($grant$${tenantKeysGrantsSql(SCHEMA_PLACEHOLDER, ROLE_PLACEHOLDER)}$grant$, '${SCHEMA_PLACEHOLDER}', s), '${ROLE_PLACEHOLDER}', r);
    END IF;
  END LOOP;
END
$bridges$;
`;
    },
  },
  {
    version: 7,
    name: 'key rotations and tenant erasures',
    sql: (o) => `
-- Data-key rotations: a persisted job per tenant (new key version, re-encryption in batches from a
-- saved cursor, the old versions destroyed at the end), resumed from its state after a crash.
CREATE TABLE bulkhead.key_rotations (
  id uuid PRIMARY KEY,
  tenant_id uuid NOT NULL REFERENCES bulkhead.tenants (id),
  state text NOT NULL CHECK (state IN ('rotating', 'reencrypting', 'settling', 'destroying', 'done', 'failed')),
  from_version integer CHECK (from_version >= 0),
  to_version integer CHECK (to_version >= 1),
  progress jsonb NOT NULL DEFAULT '{}',
  error text,
  actor text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  rotated_at timestamptz,
  finished_at timestamptz
);
CREATE UNIQUE INDEX key_rotations_one_open ON bulkhead.key_rotations (tenant_id) WHERE state NOT IN ('done', 'failed');

-- Tenant erasures (crypto-shredding): scheduled with a grace period, cancellable until it ends,
-- then the tenant's keys are destroyed and its data purged; the certificate says what went.
CREATE TABLE bulkhead.erasures (
  id uuid PRIMARY KEY,
  tenant_id uuid NOT NULL REFERENCES bulkhead.tenants (id),
  state text NOT NULL CHECK (state IN ('scheduled', 'cancelled', 'erasing', 'done')),
  prior_status text NOT NULL,
  grace_seconds integer NOT NULL CHECK (grace_seconds >= 0),
  due_at timestamptz NOT NULL,
  actor text NOT NULL,
  cancelled_by text,
  certificate jsonb,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  finished_at timestamptz
);
CREATE UNIQUE INDEX erasures_one_open ON bulkhead.erasures (tenant_id) WHERE state IN ('scheduled', 'erasing');

ALTER TABLE bulkhead.key_rotations ENABLE ROW LEVEL SECURITY;
ALTER TABLE bulkhead.key_rotations FORCE ROW LEVEL SECURITY;
CREATE POLICY key_rotations_platform ON bulkhead.key_rotations
  USING (current_setting('bulkhead.scope', true) = 'platform')
  WITH CHECK (current_setting('bulkhead.scope', true) = 'platform');
ALTER TABLE bulkhead.erasures ENABLE ROW LEVEL SECURITY;
ALTER TABLE bulkhead.erasures FORCE ROW LEVEL SECURITY;
CREATE POLICY erasures_platform ON bulkhead.erasures
  USING (current_setting('bulkhead.scope', true) = 'platform')
  WITH CHECK (current_setting('bulkhead.scope', true) = 'platform');
REVOKE ALL ON bulkhead.key_rotations, bulkhead.erasures FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE ON bulkhead.key_rotations, bulkhead.erasures TO ${o.appRole};
`,
  },
  {
    version: 8,
    name: 'audit trail tables',
    sql: (o) => {
      const owner = checkRoleName(o.ownerRole, 'the owner role');
      const app = checkRoleName(o.appRole, 'the application role');
      return `
-- The audit trail (docs/audit.md): every tenant's chain beside the pool's data (hash-partitioned
-- by tenant like its records until migration 15), and the platform's chain. INSERT and SELECT for
-- the application role.
${auditSchemaSql({ schema: 'bulkhead', appRole: app })}

-- Bridge schemas made before this migration get their tenant's chain table too (unpartitioned),
-- granted INSERT and SELECT to their tenant's role: a tenant's chain lives beside its data, so
-- that moves carry it. The same schemas and the same technique as migration 6.
DO $bridges$
DECLARE
  s text;
  r text;
BEGIN
  FOR s IN
    SELECT n.nspname::text FROM pg_namespace n
    WHERE ${bridgeSchemaCondition(owner)}
      AND to_regclass(n.nspname || '.records') IS NOT NULL AND to_regclass(n.nspname || '.audit_events') IS NULL
    ORDER BY 1
  LOOP
    EXECUTE replace($ddl$${auditFunctionsSql(SCHEMA_PLACEHOLDER)}
${auditEventsTableSql({ schema: SCHEMA_PLACEHOLDER })}$ddl$, '${SCHEMA_PLACEHOLDER}', s);
    r := '${app}_b' || substr(s, 8);
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
      EXECUTE replace(replace($grant$${auditEventsGrantsSql(SCHEMA_PLACEHOLDER, ROLE_PLACEHOLDER)}$grant$, '${SCHEMA_PLACEHOLDER}', s), '${ROLE_PLACEHOLDER}', r);
    END IF;
  END LOOP;
END
$bridges$;
`;
    },
  },
  {
    version: 9,
    name: 'write check without a plan per role',
    sql: (o) => {
      const app = checkRoleName(o.appRole, 'the application role');
      return `
-- The write check of migration 5 read the tenant's row inside a plpgsql function, whose plan
-- PostgreSQL makes again whenever another role calls it (a plan under RLS belongs to its role):
-- on every write of a bridge tenant, each with its own role (measured: about 55 µs of backend
-- CPU per call). Now the batch's context statement takes the fence's shared lock, and the check
-- that follows (a statement of its own, so its snapshot is taken after the lock, as the
-- function's was) reads the row in the prepared statement itself, cached per role like the
-- active-tenant check, and passes it to this function, which reads no table.
CREATE FUNCTION bulkhead.require_writable_state(current_status text, current_epoch integer, epoch integer) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
  IF current_status IS NULL OR current_status NOT IN ('active', 'migrating') THEN
    RAISE EXCEPTION 'tenant is not active' USING ERRCODE = 'BHT01';
  END IF;
  IF current_status = 'migrating' OR current_epoch <> epoch THEN
    RAISE EXCEPTION 'tenant is being moved' USING ERRCODE = 'BHT02';
  END IF;
END
$fn$;
REVOKE ALL ON FUNCTION bulkhead.require_writable_state(text, integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bulkhead.require_writable_state(text, integer, integer) TO ${app};
-- The bridge tenants' group role (bridge-tier.ts), when this database has bridge tenants already.
DO $group$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '${app}_bridge') THEN
    GRANT EXECUTE ON FUNCTION bulkhead.require_writable_state(text, integer, integer) TO ${app}_bridge;
  END IF;
END
$group$;
`;
    },
  },
  {
    version: 10,
    name: 'change capture for tenant moves',
    sql: () => `
-- Which of a tenant's records changed while a move copies it (src/placement/capture.ts): while a
-- tenant is moved, triggers on its source tables (made by the move, for that tenant alone) add a
-- row here in the writing transaction, so the switch finds what changed since its comparison base
-- without reading the whole tenant under the write pause. A row names a record: the record's own
-- changes and those of its unique and index values alike. Only the owner reads it; the trigger
-- functions write it as the owner (SECURITY DEFINER), whatever role writes the data.
CREATE TABLE bulkhead.move_changes (
  tenant_id uuid NOT NULL,
  id bigint GENERATED ALWAYS AS IDENTITY,
  collection text NOT NULL,
  record_id uuid NOT NULL,
  PRIMARY KEY (tenant_id, id)
);
REVOKE ALL ON bulkhead.move_changes FROM PUBLIC;

${captureFunctionSql('capture_record_change', 'id')}

${captureFunctionSql('capture_value_change', 'record_id')}
REVOKE ALL ON FUNCTION bulkhead.capture_record_change(), bulkhead.capture_value_change() FROM PUBLIC;
`,
  },
  {
    version: 11,
    name: 'audit link check planned by its key',
    sql: (o) => `
-- The audit tables' link check looks up the row before the one inserted. Its plan is made once
-- per connection and kept; made while a partition was a page or two it was a sequential scan,
-- which stayed the plan as the partition grew, so every append read its whole partition. The
-- check now plans that lookup with sequential scans off (src/audit/schema.ts, linkCheckBody).
${linkChecksSql(o)}`,
  },
  {
    version: 12,
    name: 'audit link check by its whole key',
    sql: (o) => `
-- The link check's lookup asked for seq = NEW.seq - 1. Planned while the table was tiny (the plan
-- is kept per connection), the (tenant_id, time) index cost the same as the primary key, and the
-- kept plan found the tenant's rows by the tenant alone and filtered every one by seq: an append
-- read its whole chain. The check now asks for the last row up to seq - 1 in seq order, which only
-- the primary key serves without a sort (src/audit/schema.ts, linkCheckBody).
${linkChecksSql(o)}`,
  },
  {
    version: 13,
    name: 'audit link check with sequential scans off by its own setting',
    sql: (o) => `
-- The link check turned sequential scans off around its lookup with two set_config statements
-- and a read of the setting, on every row: each a statement through the executor, about a quarter
-- of the check's cost. The function now carries the setting in its SET clause, which PostgreSQL
-- applies for the call alone (src/audit/schema.ts, LINK_FUNCTION_SETTINGS).
${linkChecksSql(o)}`,
  },
  {
    version: 14,
    name: 'the registry checks read a role-bound view; bridge roles need no group',
    sql: (o) => {
      const app = checkRoleName(o.appRole, 'the application role');
      return `
-- Every tenant batch starts with a check of the tenant's registry row (src/store/store.ts). A
-- bridge tenant's role read it through a group role it inherited from, and PostgreSQL 15 computes
-- an inheriting role's memberships again at every switch to it, searching a list with one entry
-- per role the backend has served: at 1,000 bridge tenants that was a fifth of the bridge tier's
-- database CPU (bench/README.md, "Bridge roles without a group"). Bridge roles made from now on
-- inherit nothing (NOINHERIT, no membership), and what they need outside their schema is granted
-- to PUBLIC, harmlessly:
-- - USAGE on this schema: every table in it is revoked from PUBLIC, and every function that reads
--   or writes anything is the owner's or granted to the application role only;
-- - EXECUTE on the pure check functions, which raise or return a key and read nothing;
-- - SELECT on ${TENANT_STATE_VIEW}: the registry row of the tenant in the caller's own context
--   (the tenants table's policy, applied as the view's owner, FORCEd), and only to the
--   application role or that tenant's own bridge role; a security barrier keeps a caller's own
--   conditions from seeing a row before it.
-- The bridge role's name is BridgeTier.roleOf's (src/placement/bridge-tier.ts); test/tiers.test.ts
-- reads the view as such a role.
CREATE VIEW ${TENANT_STATE_VIEW} WITH (security_barrier) AS
  SELECT t.id, t.status, t.placement_epoch FROM bulkhead.tenants t
  WHERE current_user = '${app}' OR current_user = '${app}_b' || replace(t.id::text, '-', '');
REVOKE ALL ON ${TENANT_STATE_VIEW} FROM PUBLIC;
GRANT SELECT ON ${TENANT_STATE_VIEW} TO PUBLIC;
GRANT USAGE ON SCHEMA bulkhead TO PUBLIC;
GRANT EXECUTE ON FUNCTION ${SHARED_CHECK_FUNCTIONS} TO PUBLIC;`;
    },
  },
  {
    version: 15,
    name: 'one audit table per schema, its shape checked by the link trigger',
    sql: (o) => {
      const owner = checkRoleName(o.ownerRole, 'the owner role');
      const app = checkRoleName(o.appRole, 'the application role');
      return `
-- An append inserts a row or a few at a time, and PostgreSQL 15 pays at every INSERT statement for
-- what the table's layout asks (bench/README.md, "One audit table"): routing the rows to a hash
-- partition, opening and setting up that partition, and reading each CHECK constraint back from its
-- stored form. The pool's chain table, hash-partitioned since migration 8, becomes one table: its
-- rows are copied as they are (each was checked when first inserted) into a new table, whose policy,
-- triggers and grants come after the copy, and the partitioned table is dropped. Then the CHECK
-- constraints of every audit table go; the link trigger, which runs for each row anyway, checks the
-- same shape (src/audit/schema.ts, linkCheckBody). Deployments made after this change made the
-- table this way already; this migration then only replaces the link checks.
DO $flat$
BEGIN
  IF (SELECT c.relkind FROM pg_class c WHERE c.oid = to_regclass('bulkhead.${AUDIT_EVENTS_TABLE}')) = 'p' THEN
    ALTER TABLE bulkhead.${AUDIT_EVENTS_TABLE} RENAME TO ${AUDIT_EVENTS_TABLE}_partitioned;
    ALTER INDEX bulkhead.${AUDIT_EVENTS_TABLE}_pkey RENAME TO ${AUDIT_EVENTS_TABLE}_partitioned_pkey;
    ALTER INDEX bulkhead.${AUDIT_EVENTS_TABLE}_time RENAME TO ${AUDIT_EVENTS_TABLE}_partitioned_time;
    -- The owner reads every tenant's rows to copy them: the table goes right after.
    ALTER TABLE bulkhead.${AUDIT_EVENTS_TABLE}_partitioned DISABLE ROW LEVEL SECURITY;
    EXECUTE $ddl$${auditEventsTableSql({ schema: 'bulkhead', appRole: app, copyFrom: `bulkhead.${AUDIT_EVENTS_TABLE}_partitioned` })}$ddl$;
    DROP TABLE bulkhead.${AUDIT_EVENTS_TABLE}_partitioned;
  END IF;
END
$flat$;

DO $checks$
DECLARE
  r record;
BEGIN
  FOR r IN
    SELECT c.conrelid::regclass::text AS rel, c.conname::text AS name
    FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
    WHERE c.contype = 'c' AND t.relname IN ('${AUDIT_EVENTS_TABLE}', '${AUDIT_PLATFORM_TABLE}')
      AND (n.nspname = 'bulkhead' OR (${bridgeSchemaCondition(owner)}))
    ORDER BY 1, 2
  LOOP
    EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', r.rel, r.name);
  END LOOP;
END
$checks$;
${linkChecksSql(o)}`;
    },
  },
  {
    version: 16,
    name: 'retention of the platform chain',
    sql: (o) => {
      checkRoleName(o.ownerRole, 'the owner role');
      return `
-- Audit retention prunes the platform chain as it prunes a tenant's (src/audit/retention.ts): it
-- signs an anchor at the last event to remove, then the owner deletes the rows up to that seq. The
-- platform table's append-only trigger, which refused every row change, now lets the owner delete
-- rows up to the seq its transaction names in ${AUDIT_PLATFORM_PRUNE_SETTING} (src/audit/schema.ts,
-- auditPlatformChangeFunctionSql), and nothing else. Deployments made after this change have this
-- trigger already; it is made again the same.
${auditPlatformChangeFunctionSql('bulkhead')}
DROP TRIGGER ${AUDIT_PLATFORM_TABLE}_append_only ON bulkhead.${AUDIT_PLATFORM_TABLE};
CREATE TRIGGER ${AUDIT_PLATFORM_TABLE}_append_only BEFORE UPDATE OR DELETE ON bulkhead.${AUDIT_PLATFORM_TABLE}
  FOR EACH ROW EXECUTE FUNCTION bulkhead.audit_platform_events_forbid_change();`;
    },
  },
  {
    version: 17,
    name: 'deployment-wide maintenance runs',
    sql: (o) => {
      const app = checkRoleName(o.appRole, 'the application role');
      return `
-- When a deployment-wide maintenance task (audit retention) last started. Every server looks often
-- and the one that claims the run does it (src/bulkhead.ts, pruneAuditIfDue): a deployment whose
-- servers restart more often than the interval still runs it, and once per interval, not once per
-- server. The platform scope only, like the rest of the control plane.
CREATE TABLE bulkhead.maintenance_runs (
  name text PRIMARY KEY,
  started_at timestamptz NOT NULL
);
ALTER TABLE bulkhead.maintenance_runs ENABLE ROW LEVEL SECURITY;
ALTER TABLE bulkhead.maintenance_runs FORCE ROW LEVEL SECURITY;
CREATE POLICY maintenance_runs_platform ON bulkhead.maintenance_runs
  USING (current_setting('bulkhead.scope', true) = 'platform')
  WITH CHECK (current_setting('bulkhead.scope', true) = 'platform');
REVOKE ALL ON bulkhead.maintenance_runs FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE ON bulkhead.maintenance_runs TO ${app};`;
    },
  },
];

/**
 * The registry row of the tenant in the caller's context, for the checks every tenant batch
 * starts with (migration 14): visible to the application role and to that tenant's bridge role.
 */
export const TENANT_STATE_VIEW = 'bulkhead.tenant_state';

/** The pure functions tenant statements call, executable by every role since migration 14. */
const SHARED_CHECK_FUNCTIONS =
  'bulkhead.value_key(jsonb), bulkhead.require_reference(boolean), bulkhead.require_collection_version(boolean), ' +
  'bulkhead.require_active_tenant(boolean), bulkhead.require_writable_state(text, integer, integer)';

/**
 * A change-capture trigger function of migration 10 (src/placement/capture.ts): it names the
 * record of the changed row in `bulkhead.move_changes`, as the owner. The record tables and the
 * value tables differ only in the column that holds the record's id (`idColumn`).
 */
function captureFunctionSql(name: string, idColumn: 'id' | 'record_id'): string {
  const key = (row: 'NEW' | 'OLD') => `${row}.tenant_id, ${row}.collection, ${row}.${idColumn}`;
  const log = (row: 'NEW' | 'OLD') => `INSERT INTO bulkhead.move_changes (tenant_id, collection, record_id) VALUES (${key(row)});`;
  return `CREATE FUNCTION bulkhead.${name}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
  IF TG_OP = 'DELETE' THEN
    ${log('OLD')}
    RETURN NULL;
  END IF;
  ${log('NEW')}
  -- Keys never change (principle 4, enforced by their own triggers); were one to, both are named.
  IF TG_OP = 'UPDATE' AND (${key('NEW')}) IS DISTINCT FROM (${key('OLD')}) THEN
    ${log('OLD')}
  END IF;
  RETURN NULL;
END
$fn$;`;
}

/**
 * The audit link checks as they are now (src/audit/schema.ts), replaced in the pool's schema (the
 * tenant and platform tables) and in every bridge schema of the deployment, found as migration 8
 * found them. Migrations that change the check run it.
 */
function linkChecksSql(o: MigrationOptions): string {
  const owner = checkRoleName(o.ownerRole, 'the owner role');
  return `${auditEventsLinkFunctionSql('bulkhead')}
${auditPlatformLinkFunctionSql('bulkhead')}

-- Every bridge schema's chain table has the same check: this deployment's bridge schemas, found
-- as migration 8 found them.
DO $bridges$
DECLARE
  s text;
BEGIN
  FOR s IN
    SELECT n.nspname::text FROM pg_namespace n
    WHERE ${bridgeSchemaCondition(owner)}
      AND to_regclass(n.nspname || '.audit_events') IS NOT NULL
    ORDER BY 1
  LOOP
    EXECUTE replace($ddl$${auditEventsLinkFunctionSql(SCHEMA_PLACEHOLDER)}$ddl$, '${SCHEMA_PLACEHOLDER}', s);
  END LOOP;
END
$bridges$;
`;
}

/**
 * The condition on `n` (a `pg_namespace` row) that makes it one of this deployment's bridge schemas:
 * named as `BridgeTier.locationOf` names them, and owned by the owner role. Migrations that change
 * every bridge schema find them with it.
 */
function bridgeSchemaCondition(owner: string): string {
  return `n.nspname ~ '^tenant_[0-9a-f]{32}$' AND n.nspowner = '${owner}'::regrole`;
}

/** Stand-ins for a schema and a role name in DDL that a migration fills in per schema (valid names themselves, never used as such). */
const SCHEMA_PLACEHOLDER = 'bh_schema_placeholder';
const ROLE_PLACEHOLDER = 'bh_role_placeholder';

/** The seed of the advisory lock key that fences a tenant's writes (see migration 5). */
export const WRITE_FENCE_SEED = 7283460013;
