import { AuthenticationError, BulkheadError, DatabaseError, WritesPausedError } from '../errors.js';
import { isPlainIdentifier, isUuid } from '../ids.js';
import { AUDIT_PLATFORM_PRUNE_SETTING, AUDIT_PURGE_SETTING } from '../audit/schema.js';
import { SESSION_SEARCH_PATH, type Engine, type EngineTransaction, type Statement, type StatementResult } from './engine.js';
import { DATA_TABLES, MIGRATIONS, TENANT_STATE_VIEW, WRITE_FENCE_SEED, checkPartitions, checkRoleName, rolesSql, type MigrationOptions } from './migrations.js';

/** Options of a store. */
export interface StoreOptions {
  readonly ownerRole: string;
  readonly appRole: string;
  readonly partitions: number;
}

/**
 * A store scoped to one tenant, or to the platform registry. Every batch it runs starts with the
 * context statement, which switches to the application role and sets the tenant for the
 * transaction only (`set_config(..., true)`), so a pooled connection never carries it further.
 */
export interface ScopedStore {
  /** One transaction, one round trip: the context statement, then `statements`. */
  batch(statements: readonly Statement[]): Promise<StatementResult[]>;
  /** An interactive transaction; the context is set in its first batch. */
  transaction<T>(fn: (tx: EngineTransaction) => Promise<T>): Promise<T>;
  /** Set on a store's own scopes: lets `Store.batchAcross` join this scope's statements with other scopes' in one transaction. */
  readonly joinable?: Joinable;
}

/**
 * A scope's part of a joint transaction (`Store.batchAcross`): the store it runs on, and its
 * statements as one of its own batches would send them (its context and check first).
 */
export interface Joinable {
  readonly store: Store;
  /** The context, the check and (outside the pool) the search path, then `statements`, named for the scope. */
  prefixed(statements: readonly Statement[]): { readonly statements: readonly Statement[]; readonly skip: number };
  /**
   * What puts the session's search path back after this part; empty for a scope that keeps the
   * pool's path. So the next part's context and check run under the path their plans were made under.
   */
  readonly leave: readonly Statement[];
}

/**
 * The context of a batch, all local to its transaction. `plan_cache_mode`: on hash-partitioned
 * tables PostgreSQL prices a generic plan far above a custom one and so re-plans every named
 * statement on every execution; measured here (bench/README.md), forcing the generic plan, which
 * still prunes partitions at run time from `tenant_id = $1` and keeps the RLS filter, raised the
 * isolated read path from 0.70 to about 0.97 of the baseline.
 */
export const CONTEXT_SQL =
  "SELECT set_config('role', $1, true), set_config('bulkhead.tenant_id', $2, true), set_config('bulkhead.scope', $3, true), " +
  "set_config('plan_cache_mode', 'force_generic_plan', true)";

/**
 * The schema the pool tier's data tables live in, first on every session's search path (the
 * engines set it when they connect). Tenant statements name data tables unqualified, so one SQL
 * text serves every tier: the context of a tenant outside the pool also sets its own schema as the
 * search path, for its transaction only.
 */
export const POOL_SCHEMA = 'bulkhead';

/** Sets the search path for the rest of the transaction: a joint batch puts the session's back with it (`Joinable.leave`). */
const SEARCH_PATH_SQL = "SELECT set_config('search_path', $1, true)";

/**
 * A context that also points the search path at the placement's schema ($4), for tenants outside
 * the pool: one statement fewer in each of their batches. The check that follows runs under that
 * path, which is safe: it names its tables and functions with their schema, operators resolve in
 * pg_catalog first, and the tenant's role may create nothing in its schema.
 */
const withSearchPath = (context: string): string => `${context}, set_config('search_path', $4, true)`;

/**
 * Runs right after the context, as the scope's role: the tenant must exist and be active, or the
 * whole batch fails (SQLSTATE BHT01). It costs no round trip of its own, and makes a suspension
 * effective at once for every process, whatever their caches say. It reads the registry row
 * through TENANT_STATE_VIEW (migration 14), which a bridge role reads without inheriting anything.
 */
const ACTIVE_SQL = `SELECT bulkhead.require_active_tenant(EXISTS (SELECT 1 FROM ${TENANT_STATE_VIEW} WHERE id = $1::uuid AND status IN ('active', 'migrating')))`;

/**
 * The context of a write batch: `CONTEXT_SQL` plus the write fence's shared advisory lock on the
 * tenant, held to the end of the transaction. A move's switch waits on the exclusive side of it
 * (`Placements.fenceWrites`, same key), so no write that passed the check below can land on a
 * source after the final sync.
 */
const WRITE_CONTEXT_SQL = `${CONTEXT_SQL}, pg_advisory_xact_lock_shared(hashtextextended($2::text, ${WRITE_FENCE_SEED}))`;

/**
 * The check of a write batch, in place of `ACTIVE_SQL`: active, not being switched over by a move,
 * and still at the placement epoch the batch was routed with (SQLSTATE BHT02 otherwise; see
 * migrations 5 and 9). A statement of its own after the context's lock, so the row it reads is at
 * least as new as the lock (a move marks the tenant before it waits on the lock). It reads the row
 * itself, so its plan is the prepared statement's, kept per role.
 */
const WRITABLE_SQL = `SELECT bulkhead.require_writable_state(t.status, t.placement_epoch, $2::int) FROM (SELECT 1) AS one LEFT JOIN ${TENANT_STATE_VIEW} t ON t.id = $1::uuid`;

/** Transaction-local settings of owner work in a tenant's context (`Store.asOwnerInTenant`). */
export interface OwnerSettings {
  /** The schema unqualified names resolve in. */
  readonly searchPath?: string;
  /** Render timestamps in UTC. */
  readonly utc?: boolean;
  /** Let the owner delete this tenant's audit rows (`AUDIT_PURGE_SETTING`): purges and retention only. */
  readonly purgeAudit?: boolean;
}

/** Options of a tenant scope. */
export interface TenantScopeOptions {
  /** The role the batch runs as (default: the application role). */
  readonly role?: string;
  /** The schema of the tenant's data tables (default: the pool's). */
  readonly schema?: string;
  /**
   * Require the tenant to be active (default true). Only platform work on a tenant that is not
   * active (reading its status, later: moves, erasure) turns it off.
   */
  readonly requireActive?: boolean;
  /**
   * Set for a scope that writes: the placement epoch the router found for the tenant. Its batches
   * are checked with `WRITABLE_SQL` instead of the active-tenant check.
   */
  readonly writeEpoch?: number;
}

/**
 * The core's handle on storage. It never names an engine; it owns the one place where the
 * tenant context is set, so no code path can run tenant statements without it.
 */
export class Store {
  readonly engine: Engine;
  readonly options: Readonly<StoreOptions>;

  constructor(engine: Engine, options: StoreOptions) {
    checkRoleName(options.ownerRole, 'the owner role');
    checkRoleName(options.appRole, 'the application role');
    if (options.ownerRole === options.appRole) throw new TypeError('the owner and application roles must differ');
    checkPartitions(options.partitions);
    this.engine = engine;
    this.options = Object.freeze({ ...options });
  }

  /**
   * A store scoped to `tenantId`. The id must come from the authenticated principal. Every batch
   * fails with AUTH_TENANT_INACTIVE unless the tenant is active (see `TenantScopeOptions`).
   */
  tenant(tenantId: string, options: TenantScopeOptions = {}): ScopedStore {
    // The tenant id is bound as a parameter, but an invalid one is a bug upstream: refuse it.
    if (!isUuid(tenantId)) throw new BulkheadError('INTERNAL', 'a tenant scope needs a validated tenant id');
    return this.#scoped(tenantId, 'tenant', options);
  }

  /** A store scoped to the platform registry (tenants, operator tokens); sees no tenant's data. */
  platform(): ScopedStore {
    return this.#scoped('', 'platform', { requireActive: false });
  }

  /** Creates the roles and applies pending migrations, as the owner role, under an advisory lock. */
  async migrate(): Promise<{ applied: number[] }> {
    const o: MigrationOptions = this.options;
    // The lock comes first: two processes creating the same roles at once collide (SQLSTATE 23505).
    await this.engine.script(`SELECT pg_advisory_xact_lock(7283460012);
${rolesSql(o)}
CREATE SCHEMA IF NOT EXISTS bulkhead AUTHORIZATION ${o.ownerRole};
SET LOCAL ROLE ${o.ownerRole};
CREATE TABLE IF NOT EXISTS bulkhead.migrations (
  version integer PRIMARY KEY,
  name text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now()
);`);
    const applied: number[] = [];
    for (const m of MIGRATIONS) {
      const done = await this.engine.transaction(async (tx) => {
        const [, , rows] = await tx.batch([
          { text: 'SELECT pg_advisory_xact_lock(7283460012)' },
          { text: `SET LOCAL ROLE ${o.ownerRole}` },
          { text: 'SELECT 1 FROM bulkhead.migrations WHERE version = $1', values: [m.version] },
        ]);
        if (rows!.rows.length > 0) return true;
        return false;
      });
      if (done) continue;
      try {
        await this.engine.script(`SELECT pg_advisory_xact_lock(7283460012);
SET LOCAL ROLE ${o.ownerRole};
DO $check$ BEGIN
  IF EXISTS (SELECT 1 FROM bulkhead.migrations WHERE version = ${m.version}) THEN
    RAISE EXCEPTION 'migration ${m.version} was applied concurrently' USING ERRCODE = 'BHM01';
  END IF;
END $check$;
${m.sql(o)}
INSERT INTO bulkhead.migrations (version, name) VALUES (${m.version}, '${m.name.replace(/'/g, "''")}');
INSERT INTO bulkhead.settings (key, value) VALUES ('partitions', '${o.partitions}') ON CONFLICT (key) DO NOTHING;`);
      } catch (error) {
        // Another process applied it between our check and our lock: it is done, not failed.
        if (error instanceof DatabaseError && error.sqlState === 'BHM01') continue;
        throw error;
      }
      applied.push(m.version);
    }
    return { applied };
  }

  /** The partition count the schema was created with (it cannot change after creation). */
  async storedPartitions(): Promise<number> {
    const [, r] = await this.engine.transaction((tx) =>
      tx.batch([
        { text: `SET LOCAL ROLE ${this.options.ownerRole}` },
        { text: "SELECT value FROM bulkhead.settings WHERE key = 'partitions'" },
      ]),
    );
    return Number(r!.rows[0]?.value ?? this.options.partitions);
  }

  /**
   * Runs `statements` in one transaction as the owner role, in one tenant's context: the owner is
   * subject to the FORCEd row-level security too, so they see and touch that tenant's rows only,
   * whatever they say. The request path never comes here; moves, erasure and retention do.
   * `settings` adds transaction-local settings: the search path, UTC timestamps, and the one
   * exception to the audit trail's immutability (`purgeAudit`, see `AUDIT_PURGE_SETTING`).
   * Returns the results of `statements`.
   */
  async asOwnerInTenant(tenantId: string, statements: readonly Statement[], settings: OwnerSettings = {}): Promise<StatementResult[]> {
    if (!isUuid(tenantId)) throw new BulkheadError('INTERNAL', 'owner work needs a validated tenant id');
    if (settings.searchPath !== undefined && !isPlainIdentifier(settings.searchPath)) {
      throw new BulkheadError('INTERNAL', 'owner work needs a plain schema name');
    }
    const configs = ["set_config('bulkhead.tenant_id', $1, true)", "set_config('bulkhead.scope', 'tenant', true)"];
    const values: unknown[] = [tenantId];
    if (settings.purgeAudit) configs.push(`set_config('${AUDIT_PURGE_SETTING}', $1, true)`);
    if (settings.searchPath !== undefined) {
      values.push(settings.searchPath);
      configs.push(`set_config('search_path', $${values.length}, true)`);
    }
    if (settings.utc) configs.push("set_config('TimeZone', 'UTC', true)");
    const results = await this.engine.batch([
      { text: `SET LOCAL ROLE ${this.options.ownerRole}` },
      { text: `SELECT ${configs.join(', ')}`, values },
      ...statements,
    ]);
    return results.slice(2);
  }

  /**
   * Deletes every row of one tenant from the data tables in `schema` (`asOwnerInTenant`). Used once
   * a move has verified the tenant's copy elsewhere, and by an erasure. The tenant's audit rows are
   * append-only for everyone else: their trigger lets the owner delete them only in a transaction
   * that names the tenant in `AUDIT_PURGE_SETTING`, set here for this transaction alone.
   */
  async purgeTenant(tenantId: string, schema: string): Promise<Record<string, number>> {
    if (!isPlainIdentifier(schema)) throw new BulkheadError('INTERNAL', 'a purge needs a plain schema name');
    const tables = [...DATA_TABLES].reverse();
    const results = await this.asOwnerInTenant(
      tenantId,
      tables.map((t) => ({ text: `DELETE FROM ${schema}.${t} WHERE tenant_id = $1`, values: [tenantId] })),
      { purgeAudit: true },
    );
    return Object.fromEntries(tables.map((t, i) => [t, results[i]!.rowCount]));
  }

  /**
   * Removes a tenant's audit events up to seq `throughSeq` (retention), as the owner role under the
   * same narrow exception as a purge (`AUDIT_PURGE_SETTING`); the caller has signed an anchor for
   * that seq first, so the rest of the chain still verifies. Returns the rows removed.
   */
  async pruneAudit(tenantId: string, schema: string, throughSeq: number): Promise<number> {
    if (!isPlainIdentifier(schema)) throw new BulkheadError('INTERNAL', 'pruning needs a plain schema name');
    if (!Number.isSafeInteger(throughSeq) || throughSeq < 1) throw new BulkheadError('INTERNAL', 'pruning needs a seq from 1');
    const [r] = await this.asOwnerInTenant(
      tenantId,
      [{ text: `DELETE FROM ${schema}.audit_events WHERE tenant_id = $1 AND seq <= $2`, values: [tenantId, throughSeq] }],
      { purgeAudit: true },
    );
    return r!.rowCount;
  }

  /**
   * Removes the platform chain's events up to seq `throughSeq` (retention), as the owner role in
   * the platform scope, under the one exception the platform table's append-only trigger makes
   * (`AUDIT_PLATFORM_PRUNE_SETTING`, migration 16); the caller has signed an anchor for that seq
   * first. Returns the rows removed.
   */
  async prunePlatformAudit(throughSeq: number): Promise<number> {
    if (!Number.isSafeInteger(throughSeq) || throughSeq < 1) throw new BulkheadError('INTERNAL', 'pruning needs a seq from 1');
    const results = await this.engine.batch([
      { text: `SET LOCAL ROLE ${this.options.ownerRole}` },
      {
        text: `SELECT set_config('bulkhead.tenant_id', '', true), set_config('bulkhead.scope', 'platform', true), set_config('${AUDIT_PLATFORM_PRUNE_SETTING}', $1, true)`,
        values: [String(throughSeq)],
      },
      { text: 'DELETE FROM bulkhead.audit_platform_events WHERE seq <= $1', values: [throughSeq] },
    ]);
    return results[2]!.rowCount;
  }

  /**
   * Runs several scopes' statements in ONE transaction and one round trip, each part after its own
   * context and check, as its own batch would run them: the tenant context is set again for each
   * part, so each part's statements still see only their own tenant. It serves the audit log's
   * group commit, which appends to many tenants' chains at once (docs/audit.md, "Writing"). Parts
   * that keep the pool's search path run first, so none inherits another part's, and a part that
   * moved the path puts it back before the next part: PostgreSQL analyzes and plans a prepared
   * statement again whenever it runs under another search path than it was planned under, so the
   * next bridge tenant's context and check would otherwise be planned again at every joint commit
   * (bench/README.md, "Joint commits across bridge schemas"). Any failure rolls the whole
   * transaction back. Returns each part's results, in the order given.
   */
  async batchAcross(parts: ReadonlyArray<{ readonly scope: Joinable; readonly statements: readonly Statement[] }>): Promise<StatementResult[][]> {
    const order = parts.map((part, index) => ({ part, index }));
    // A part that moves the search path has statements to put it back.
    const moves = (p: (typeof parts)[number]) => Number(p.scope.leave.length > 0);
    order.sort((a, b) => moves(a.part) - moves(b.part) || a.index - b.index);
    const all: Statement[] = [];
    // Each part's span of the joint batch: it starts at `start`, its own statements after `skip`.
    const spans: Array<{ index: number; start: number; skip: number; to: number }> = [];
    for (const { part, index } of order) {
      if (part.scope.store !== this) throw new BulkheadError('INTERNAL', 'a joint batch takes scopes of its own store only');
      const { statements, skip } = part.scope.prefixed(part.statements);
      spans.push({ index, start: all.length, skip, to: all.length + statements.length });
      all.push(...statements);
      if (spans.length < order.length) all.push(...part.scope.leave);
    }
    let results: StatementResult[];
    try {
      results = await this.engine.batch(all);
    } catch (error) {
      // Numbered as the failing part's own batch would be (its context and check hidden).
      const at = error instanceof DatabaseError ? error.statementIndex : undefined;
      const span = at === undefined ? undefined : spans.find((s) => at < s.to);
      throw span === undefined ? error : fromPreamble(new DatabaseError((error as DatabaseError).cause, at! - span.start), span.skip);
    }
    const out: StatementResult[][] = new Array(parts.length);
    for (const span of spans) out[span.index] = results.slice(span.start + span.skip, span.to);
    return out;
  }

  /** Releases the engine. */
  async close(): Promise<void> {
    await this.engine.close();
  }

  #scoped(tenantId: string, scope: 'tenant' | 'platform', options: TenantScopeOptions): ScopedStore {
    const role = options.role ?? this.options.appRole;
    const schema = options.schema ?? POOL_SCHEMA;
    const context = options.writeEpoch === undefined ? { name: 'bh_ctx', text: CONTEXT_SQL } : { name: 'bh_ctx_write', text: WRITE_CONTEXT_SQL };
    const preamble: Statement[] = [
      schema === POOL_SCHEMA
        ? { ...context, values: [role, tenantId, scope] }
        : { name: `${context.name}_path`, text: withSearchPath(context.text), values: [role, tenantId, scope, schema] },
    ];
    const named = statementNamer(schema);
    // The check runs under the path the context set and as the scope's role, and PostgreSQL plans a
    // statement again under another path or, under RLS, another role: per schema, like the statements.
    if (options.writeEpoch !== undefined) preamble.push(...named([{ name: 'bh_writable', text: WRITABLE_SQL, values: [tenantId, options.writeEpoch] }]));
    else if (options.requireActive ?? true) preamble.push(...named([{ name: 'bh_active', text: ACTIVE_SQL, values: [tenantId] }]));
    const skip = preamble.length;
    // Named per schema like the part's own statements: it always runs under this schema's path.
    const leave = schema === POOL_SCHEMA ? [] : named([{ name: 'bh_path_back', text: SEARCH_PATH_SQL, values: [SESSION_SEARCH_PATH] }]);
    const engine = this.engine;
    const joinable: Joinable = {
      store: this,
      leave,
      prefixed: (statements) => ({ statements: [...preamble, ...named(statements)], skip }),
    };
    return {
      joinable,
      async batch(statements) {
        try {
          return (await engine.batch([...preamble, ...named(statements)])).slice(skip);
        } catch (error) {
          throw fromPreamble(error, skip);
        }
      },
      transaction(fn) {
        return engine.transaction((tx) => {
          let first = true;
          return fn({
            async batch(statements) {
              if (!first) return tx.batch(named(statements));
              first = false;
              try {
                return (await tx.batch([...preamble, ...named(statements)])).slice(skip);
              } catch (error) {
                throw fromPreamble(error, skip);
              }
            },
          });
        });
      },
    };
  }
}

/**
 * Names prepared statements per schema outside the pool. PostgreSQL re-plans a cached statement
 * whenever the search path differs from the one it was planned under; with one name for every
 * bridge schema, each request of another tenant re-planned (measured: bridge reads at 0.47-0.64 of
 * the pool's throughput, bench/tiers.bench.ts). A name per schema keeps each schema's plan, and
 * each tenant role's: a plan under RLS is also re-planned when run as another role. The
 * suffix is the schema's last 16 characters (the random end of the tenant id): were two schemas
 * ever to share it, PostgreSQL's own re-validation would still plan for the right one, only slower.
 * The PostgreSQL engine bounds how many names a connection keeps.
 */
function statementNamer(schema: string): (statements: readonly Statement[]) => readonly Statement[] {
  // The pool's batches, the hot path, pass through untouched.
  if (schema === POOL_SCHEMA) return (statements) => statements;
  const suffix = `@${schema.slice(-16)}`;
  return (statements) => statements.map((s) => (s.name === undefined ? s : { ...s, name: `${s.name}${suffix}` }));
}

/**
 * Batch errors name the failing statement; the preamble is hidden from the numbering. A tenant
 * that is not active is an authentication failure, as if its token had been refused.
 */
function fromPreamble(error: unknown, skip: number): unknown {
  if (!(error instanceof DatabaseError)) return error;
  if (error.sqlState === 'BHT01') return new AuthenticationError('AUTH_TENANT_INACTIVE', 'the token names no active tenant', error);
  // A move is switching the tenant over, or has: the router's entry is outdated. Retrying after a
  // moment finds the new placement.
  if (error.sqlState === 'BHT02') return new WritesPausedError(1, { cause: error, stalePlacement: true });
  if (error.statementIndex !== undefined) return new DatabaseError(error.cause, error.statementIndex - skip);
  return error;
}
