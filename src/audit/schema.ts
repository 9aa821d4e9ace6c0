/**
 * The audit tables (issue 5, items 2 and 3), as SQL that PostgreSQL 15 and PGlite (PostgreSQL 18)
 * both accept. Migration 8 (src/store/migrations.ts) makes them: the pool's and the platform's in
 * `bulkhead`, a bridge tenant's in its own schema (also `dataTablesSql`, for schemas made later),
 * a silo's in the silo database's `bulkhead`, as every silo runs the migrations.
 *
 * - `<schema>.audit_events`: every tenant's chain, stored beside the tenant's data (so it follows
 *   the tenant through tier and region moves), under the same FORCED row-level security as the data
 *   tables (`tenant_isolation`, TENANT_PREDICATE). One table, not partitioned: an append inserts a
 *   row or a few, and routing them to a hash partition and setting it up cost about a quarter of
 *   an event's PostgreSQL CPU (migration 15; bench/README.md, "One audit table").
 * - `<schema>.audit_platform_events`: the platform chain (operator actions, unauthenticated
 *   requests), visible in the platform scope only.
 *
 * Immutability is the database's, not the application's: the application role is granted INSERT
 * and SELECT only; triggers reject UPDATE and DELETE of any row and TRUNCATE of the table, for
 * every role including the owner and a superuser (SQLSTATE BHA01), with two narrow exceptions: the
 * owner role may DELETE a tenant's rows in a transaction that names that tenant in
 * `bulkhead.audit_purge` (`AUDIT_PURGE_SETTING`), which only `Store.purgeTenant` and
 * `Store.pruneAudit` set, so that a tenant's source placement can be removed after a move, an
 * erased tenant purged and old events pruned; and the platform's rows up to the seq a transaction
 * names in `bulkhead.audit_prune_platform` (`AUDIT_PLATFORM_PRUNE_SETTING`, set by
 * `Store.prunePlatformAudit` alone, for retention; migration 16). An insert
 * must extend its chain: seq 1 after 32 zero bytes, every later seq after the row before it with
 * that row's hash as prev_hash, and the event's seq, tenant and time equal to the row's columns
 * (SQLSTATE BHA02), and have the chain's shape: seq from 1, hashes of 32 bytes, the event a JSON
 * object (SQLSTATE 23514). The link trigger checks the shape, not CHECK constraints: PostgreSQL 15
 * reads a table's CHECK constraints back from their stored form at every INSERT statement, where
 * the trigger's function is compiled once per connection. What the database cannot stop (the owner
 * disabling a trigger, a superuser, a file-level edit) the hash chain and the signed checkpoints
 * reveal.
 *
 * The only values interpolated are schema, table and role names, checked here.
 */
import { TENANT_PREDICATE, checkRoleName, checkSchemaName } from '../store/migrations.js';
import { PLATFORM_CHAIN, type ChainId } from './chain.js';

/** SQLSTATE of an UPDATE, DELETE or TRUNCATE of audit rows. */
export const AUDIT_APPEND_ONLY_SQLSTATE = 'BHA01';
/** SQLSTATE of an insert that does not extend its chain (a gap, a wrong prev_hash, columns that disagree with the event). */
export const AUDIT_LINK_SQLSTATE = 'BHA02';

/** The tenant audit table's name. */
export const AUDIT_EVENTS_TABLE = 'audit_events';
/** The platform audit table's name. */
export const AUDIT_PLATFORM_TABLE = 'audit_platform_events';

/**
 * The setting that lets the owner role delete one tenant's audit rows: the tenant's id, set for
 * one transaction (`set_config(..., true)`) by `Store.purgeTenant` only. Nothing else is exempt:
 * not another tenant's rows, not UPDATE, not TRUNCATE, not the platform chain, not any other role.
 */
export const AUDIT_PURGE_SETTING = 'bulkhead.audit_purge';

/**
 * The setting that lets the owner role delete the platform chain's oldest rows: the highest seq to
 * delete, set for one transaction by `Store.prunePlatformAudit` only, after retention signed an
 * anchor at that seq. Not UPDATE, not TRUNCATE, not a row past that seq, not any other role.
 */
export const AUDIT_PLATFORM_PRUNE_SETTING = 'bulkhead.audit_prune_platform';

/**
 * A chain's rows in SQL: its table with the condition that selects them (a tenant's id bound as
 * `$1`), to go after FROM, and the values it binds. The tenant table is named unqualified: it
 * resolves in the tenant's placement schema, by the scope's search path.
 */
export function chainRowsSql(chain: ChainId): { readonly from: string; readonly values: readonly unknown[] } {
  return chain === PLATFORM_CHAIN
    ? { from: `bulkhead.${AUDIT_PLATFORM_TABLE} WHERE true`, values: [] }
    : { from: `${AUDIT_EVENTS_TABLE} WHERE tenant_id = $1`, values: [chain] };
}

/** What the audit SQL is parameterized by. */
export interface AuditSchemaOptions {
  /** The schema of the tables (the pool's is `bulkhead`; a bridge tenant's its own). */
  readonly schema: string;
  /** The role granted INSERT and SELECT, and nothing else. */
  readonly appRole: string;
}

const ZERO_HASH = `'\\x${'00'.repeat(32)}'::bytea`;
const PLATFORM_PREDICATE = "current_setting('bulkhead.scope', true) = 'platform'";

/**
 * The BEFORE INSERT check shared by both tables. `lookup` reads the chain's last row up to seq
 * `before_seq` (NEW.seq - 1) into `found_seq` and `previous`; a row other than seq - 1 (a gap)
 * counts as none.
 *
 * The lookup's plan is made once per connection, when the trigger first runs there, and kept
 * (generic plans, CONTEXT_SQL) until the table's statistics change, so it must be right at every
 * size of the table, whatever size the table had then:
 * - it is planned with sequential scans off: made while the table (then a hash partition) was a
 *   page or two, a sequential scan was the cheaper plan, and it stayed the plan as it grew to
 *   thousands of rows (migration 11). The function's own SET clause turns them off for its call
 *   only (`LINK_FUNCTION_SETTINGS`); until migration 13 the body read the setting and set it twice
 *   per row, two statements through the executor that cost about a quarter of the check;
 * - it asks for the last row up to seq - 1 in seq order (`seq <= before_seq ORDER BY seq DESC
 *   LIMIT 1`), which only the primary key serves without a sort. Asked for seq = seq - 1 alone, a
 *   table the statistics called tiny priced the `(tenant_id, time)` index the same, and its plan
 *   found the tenant's rows by the tenant and filtered every one of them by seq: an append read
 *   its whole chain until the next ANALYZE (seen with auto_explain in bench:audit-reads; migration
 *   12);
 * - it compares seq with a variable, not an expression: under a policy evaluated per row, a
 *   condition whose operator is not leakproof (bigint minus integer may raise) cannot become an
 *   index condition.
 */
function linkCheckBody(lookup: string, tenantCheck: string): string {
  return `DECLARE
  previous bytea;
  found_seq bigint;
  before_seq bigint := NEW.seq - 1;
BEGIN
  IF NEW.seq < 1 OR octet_length(NEW.prev_hash) <> 32 OR octet_length(NEW.hash) <> 32 OR jsonb_typeof(NEW.event) <> 'object' THEN
    RAISE EXCEPTION 'audit row is malformed (a seq below 1, a hash not of 32 bytes, or an event not a JSON object)' USING ERRCODE = 'check_violation';
  END IF;
  IF NEW.event->>'seq' IS DISTINCT FROM NEW.seq::text OR ${tenantCheck}
     OR (NEW.event->>'time')::timestamptz IS DISTINCT FROM NEW.time THEN
    RAISE EXCEPTION 'audit row does not match its event (seq, tenant or time)' USING ERRCODE = '${AUDIT_LINK_SQLSTATE}';
  END IF;
  IF NEW.seq = 1 THEN
    previous := ${ZERO_HASH};
  ELSE
    ${lookup}
    IF found_seq IS DISTINCT FROM before_seq THEN
      previous := NULL;
    END IF;
  END IF;
  IF previous IS DISTINCT FROM NEW.prev_hash THEN
    RAISE EXCEPTION 'audit row does not extend its chain (seq % needs the hash of seq % as prev_hash)', NEW.seq, before_seq USING ERRCODE = '${AUDIT_LINK_SQLSTATE}';
  END IF;
  RETURN NEW;
END`;
}

/**
 * The settings a link-check function runs with (its SET clause): PostgreSQL applies them when the
 * function is called and puts the session's back when it returns, also on an error.
 */
const LINK_FUNCTION_SETTINGS = 'SET enable_seqscan = off';

/** The lookup of `linkCheckBody` in `table`, after `where` (the tenant's condition, if any). */
function lookupSql(table: string, where: string): string {
  return `SELECT e.seq, e.hash INTO found_seq, previous FROM ${table} e WHERE ${where}e.seq <= before_seq ORDER BY e.seq DESC LIMIT 1;`;
}

/**
 * The link check of the tenant table of `schema` (created or replaced). It runs as the inserting
 * role, under its RLS context: the row before is the same tenant's.
 */
export function auditEventsLinkFunctionSql(schemaName: string): string {
  const s = checkSchemaName(schemaName);
  return `CREATE OR REPLACE FUNCTION ${s}.audit_events_check_link() RETURNS trigger LANGUAGE plpgsql ${LINK_FUNCTION_SETTINGS} AS $fn$
${linkCheckBody(lookupSql(`${s}.${AUDIT_EVENTS_TABLE}`, 'e.tenant_id = NEW.tenant_id AND '), "NEW.event->>'tenantId' IS DISTINCT FROM NEW.tenant_id::text")}
$fn$;
REVOKE ALL ON FUNCTION ${s}.audit_events_check_link() FROM PUBLIC;`;
}

/** The link check of the platform table of `schema` (created or replaced). */
export function auditPlatformLinkFunctionSql(schemaName: string): string {
  const s = checkSchemaName(schemaName);
  return `CREATE OR REPLACE FUNCTION ${s}.audit_platform_events_check_link() RETURNS trigger LANGUAGE plpgsql ${LINK_FUNCTION_SETTINGS} AS $fn$
${linkCheckBody(lookupSql(`${s}.${AUDIT_PLATFORM_TABLE}`, ''), "NEW.event->'tenantId' IS DISTINCT FROM 'null'::jsonb")}
$fn$;
REVOKE ALL ON FUNCTION ${s}.audit_platform_events_check_link() FROM PUBLIC;`;
}

/** The triggers that make `table` append-only (`changeFunction` on row changes) and chain-checked. */
function triggersSql(table: string, name: string, linkFunction: string, changeFunction: string, schema: string): string {
  return `CREATE TRIGGER ${name}_link BEFORE INSERT ON ${table}
  FOR EACH ROW EXECUTE FUNCTION ${linkFunction}();
CREATE TRIGGER ${name}_append_only BEFORE UPDATE OR DELETE ON ${table}
  FOR EACH ROW EXECUTE FUNCTION ${changeFunction}();
CREATE TRIGGER ${name}_no_truncate BEFORE TRUNCATE ON ${table}
  FOR EACH STATEMENT EXECUTE FUNCTION ${schema}.audit_forbid_change();`;
}

/**
 * The function the append-only triggers of `schema` call, but for row changes of the tenant table
 * (its own function, with the purge exception). Statement-level (TRUNCATE) and row-level (UPDATE,
 * DELETE) alike raise BHA01 with a message naming the operation and the table.
 */
export function auditFunctionsSql(schemaName: string): string {
  const s = checkSchemaName(schemaName);
  return `CREATE FUNCTION ${s}.audit_forbid_change() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  RAISE EXCEPTION 'audit rows are append-only: % on %.% is not allowed', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
    USING ERRCODE = '${AUDIT_APPEND_ONLY_SQLSTATE}';
END
$fn$;
REVOKE ALL ON FUNCTION ${s}.audit_forbid_change() FROM PUBLIC;`;
}

/**
 * The tenant audit table of `schema` (with its link-check and purge-check functions), its policy,
 * triggers and, when `appRole` is given, grants (`auditEventsGrantsSql`). Needs
 * `auditFunctionsSql(schema)` first. Without `appRole` (a bridge schema made by a migration, whose
 * role may be gone) the caller grants. `copyFrom` (a `schema.table` of the same columns, which the
 * caller reads without row-level security) fills the table before its policy and triggers exist:
 * rows that were checked when they were first inserted, moved as they are (migration 15).
 */
export function auditEventsTableSql(options: { readonly schema: string; readonly appRole?: string; readonly copyFrom?: string }): string {
  const s = checkSchemaName(options.schema);
  const app = options.appRole === undefined ? undefined : checkRoleName(options.appRole, 'the application role');
  const table = `${s}.${AUDIT_EVENTS_TABLE}`;
  const copy = options.copyFrom === undefined ? '' : `INSERT INTO ${table} (tenant_id, seq, prev_hash, hash, event, time)
  SELECT tenant_id, seq, prev_hash, hash, event, time FROM ${checkQualifiedName(options.copyFrom)};`;
  return `CREATE TABLE ${table} (
  tenant_id uuid NOT NULL,
  seq bigint NOT NULL,
  prev_hash bytea NOT NULL,
  hash bytea NOT NULL,
  event jsonb NOT NULL,
  time timestamptz NOT NULL,
  PRIMARY KEY (tenant_id, seq)
);
${copy}
-- The auditor API filters a tenant's trail by time.
CREATE INDEX ${AUDIT_EVENTS_TABLE}_time ON ${table} (tenant_id, time);
ALTER TABLE ${table} ENABLE ROW LEVEL SECURITY;
ALTER TABLE ${table} FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON ${table} USING (${TENANT_PREDICATE}) WITH CHECK (${TENANT_PREDICATE});
${auditEventsLinkFunctionSql(s)}
-- Row changes: refused as by audit_forbid_change, but for the purge of one tenant by the owner.
-- The owner is the table's (the role the migrations and provisioning run as), compared with
-- current_user, so neither a superuser nor a role that merely inherits the owner's rights passes;
-- and the row's tenant must be the one the transaction names, so a purge statement that reached
-- past its tenant (which RLS already prevents) would still be refused.
${ownerDeleteFunctionSql(`${s}.audit_events_forbid_change`, `OLD.tenant_id = nullif(current_setting('${AUDIT_PURGE_SETTING}', true), '')::uuid`)}
${triggersSql(table, AUDIT_EVENTS_TABLE, `${s}.audit_events_check_link`, `${s}.audit_events_forbid_change`, s)}
REVOKE ALL ON ${table} FROM PUBLIC;
${app === undefined ? '' : `GRANT USAGE ON SCHEMA ${s} TO ${app};\n${auditEventsGrantsSql(s, app)}`}
`;
}

/** `name` as `schema.table`, each part a plain identifier. */
function checkQualifiedName(name: string): string {
  const parts = name.split('.');
  if (parts.length !== 2) throw new TypeError('a table to copy from is named schema.table');
  return `${checkSchemaName(parts[0]!)}.${checkSchemaName(parts[1]!)}`;
}

/**
 * What `role` may do with the tenant audit rows of `schema`: append and read, nothing else. No
 * UPDATE, no DELETE, no TRUNCATE (the triggers refuse them anyway).
 */
export function auditEventsGrantsSql(schema: string, role: string): string {
  const s = checkSchemaName(schema);
  checkRoleName(role, 'the audit role');
  return `GRANT SELECT, INSERT ON ${s}.${AUDIT_EVENTS_TABLE} TO ${role};`;
}

/**
 * The function of the platform table's append-only trigger in `schema` (created or replaced): row
 * changes refused as by `audit_forbid_change`, but for retention's DELETE of the oldest rows by the
 * owner, up to the seq the transaction names in `AUDIT_PLATFORM_PRUNE_SETTING`. The owner is the
 * table's, compared with current_user, as for a tenant's purge.
 */
export function auditPlatformChangeFunctionSql(schemaName: string): string {
  const s = checkSchemaName(schemaName);
  return ownerDeleteFunctionSql(`${s}.audit_platform_events_forbid_change`, `OLD.seq <= nullif(current_setting('${AUDIT_PLATFORM_PRUNE_SETTING}', true), '')::bigint`);
}

/**
 * A row-change function of an audit table's append-only trigger (created or replaced): refused as
 * by `audit_forbid_change` (BHA01), but for a DELETE by the table's owner of a row for which
 * `allowed` (a condition on OLD) holds. The owner is the table's, compared with current_user, so
 * neither a superuser nor a role that merely inherits the owner's rights passes.
 */
function ownerDeleteFunctionSql(name: string, allowed: string): string {
  return `CREATE OR REPLACE FUNCTION ${name}() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  IF TG_OP = 'DELETE'
     AND current_user = (SELECT pg_get_userbyid(c.relowner) FROM pg_class c WHERE c.oid = TG_RELID)
     AND ${allowed} THEN
    RETURN OLD;
  END IF;
  RAISE EXCEPTION 'audit rows are append-only: % on %.% is not allowed', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
    USING ERRCODE = '${AUDIT_APPEND_ONLY_SQLSTATE}';
END
$fn$;
REVOKE ALL ON FUNCTION ${name}() FROM PUBLIC;`;
}

/**
 * The platform chain's table in `schema`: platform scope only, INSERT and SELECT for the
 * application role; no exception to append-only but retention's (`auditPlatformChangeFunctionSql`).
 */
export function auditPlatformTableSql(options: AuditSchemaOptions): string {
  const s = checkSchemaName(options.schema);
  const app = checkRoleName(options.appRole, 'the application role');
  const table = `${s}.${AUDIT_PLATFORM_TABLE}`;
  return `CREATE TABLE ${table} (
  seq bigint PRIMARY KEY,
  prev_hash bytea NOT NULL,
  hash bytea NOT NULL,
  event jsonb NOT NULL,
  time timestamptz NOT NULL
);
CREATE INDEX ${AUDIT_PLATFORM_TABLE}_time ON ${table} (time);
ALTER TABLE ${table} ENABLE ROW LEVEL SECURITY;
ALTER TABLE ${table} FORCE ROW LEVEL SECURITY;
CREATE POLICY platform_only ON ${table} USING (${PLATFORM_PREDICATE}) WITH CHECK (${PLATFORM_PREDICATE});
${auditPlatformLinkFunctionSql(s)}
${auditPlatformChangeFunctionSql(s)}
${triggersSql(table, AUDIT_PLATFORM_TABLE, `${s}.audit_platform_events_check_link`, `${s}.audit_platform_events_forbid_change`, s)}
REVOKE ALL ON ${table} FROM PUBLIC;
GRANT USAGE ON SCHEMA ${s} TO ${app};
GRANT SELECT, INSERT ON ${table} TO ${app};
`;
}

/**
 * Everything for one schema: the trigger function, the tenant table and the platform table. Run it
 * as the owner role (which then owns every object), in one transaction. A bridge schema needs only
 * `auditFunctionsSql` and `auditEventsTableSql`: the platform chain lives in `bulkhead`.
 */
export function auditSchemaSql(options: AuditSchemaOptions): string {
  return `${auditFunctionsSql(options.schema)}
${auditEventsTableSql(options)}
${auditPlatformTableSql(options)}`;
}
