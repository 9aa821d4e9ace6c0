/**
 * Where the audit trail is stored (migration 8, docs/audit.md "Tables"), on every backend:
 *
 * - the pool's `audit_events` (one table since migration 15) and the platform's `audit_platform_events` exist
 *   after open, with FORCED row-level security; the application role may INSERT and SELECT only;
 *   UPDATE, DELETE and TRUNCATE fail for it (no privilege) and for the owner (BHA01);
 * - the purge escape is narrow: only the owner role, only DELETE, only the tenant the transaction
 *   names in `bulkhead.audit_purge`, never the platform chain; `purgeTenant` uses it;
 * - a bridge tenant made now, a bridge schema made before migration 8, and a silo database each hold
 *   an `audit_events` their tenant's own role can append to and read;
 * - one tenant's rows are invisible to another tenant's scope;
 * - a move pool → bridge → silo → pool carries a chain of 300 rows (and the rows appended while it
 *   runs) unchanged, ends `done` with equal checksums, and leaves no audit row at its source; another
 *   tenant's chain is untouched;
 * - rows appended at each step of a move (mid-copy, before the verification, after its snapshot, just
 *   before the pause) all reach the target in seq order, and the checksums the switch records are
 *   those of the chain summed whole afterwards;
 * - with a second PostgreSQL server (BULKHEAD_TEST_SECOND_SERVER_URL), the same across servers.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { BACKENDS, createTenant, openTestBulkhead, request, type TestBulkhead } from './support/backends.js';
import { finished, tenantChecksums } from './support/moves.js';
import { rejectsSql } from './support/assertions.js';
import { ChainLinker, genesisHead, verifyChain, type ChainHead, type LinkedRow, type StoredRow } from '../src/audit/chain.js';
import { createAuditEvent, type AuditEventInput } from '../src/audit/event.js';
import { AUDIT_APPEND_ONLY_SQLSTATE, AUDIT_LINK_SQLSTATE, AUDIT_PURGE_SETTING, auditEventsLinkFunctionSql } from '../src/audit/schema.js';
import { BridgeTier } from '../src/placement/bridge-tier.js';
import { SiloTier } from '../src/placement/silo-tier.js';
import { Moves, type MoveView } from '../src/placement/moves.js';
import { COPY_TABLES } from '../src/placement/copy.js';
import type { TenantRow } from '../src/placement/tier.js';
import { BulkheadError, DatabaseError } from '../src/errors.js';
import type { Engine, EngineTransaction, Statement } from '../src/store/engine.js';
import type { ScopedStore } from '../src/store/store.js';

const APPEND_ONLY = /^audit rows are append-only: (UPDATE|DELETE|TRUNCATE) on [a-z0-9_]+\.audit_(events|platform_events) is not allowed$/;
const TENANT_POLICY = /tenant_id = \(?NULLIF\(current_setting\('bulkhead\.tenant_id'::text, true\), ''::text\)\)?::uuid/i;
const PARTITIONS = 4; // BULKHEAD_PARTITIONS of openTestBulkhead

/** An event of the test's own making: identifiers only, as the trail stores them. */
function input(i: number, tenantId: string | null): AuditEventInput {
  return {
    time: new Date(Date.UTC(2026, 10, 27, 10, 0, 0) + i * 7).toISOString(),
    tenantId,
    principal: tenantId === null ? { subject: 'ops', roles: [], authMethod: 'operator_token' } : { subject: `user-${i % 7}`, roles: ['member'], authMethod: 'jwt' },
    action: 'record.read',
    collection: 'patients',
    recordIds: ['0191e5a1-1111-7111-8111-111111111111'],
    decision: { effect: 'allow', policyIds: ['role.member'] },
    requestId: `req-${i}`,
    sourceAddress: '198.51.100.23',
    outcome: 'success',
  };
}

const hexOf = (bytes: Uint8Array) => Buffer.from(bytes).toString('hex');

/**
 * Inserts linked rows into the tenant's `audit_events` (unqualified: the scope's search path
 * finds its placement's table) in ONE statement, in seq order: the link trigger checks each row
 * against the one inserted before it in the same statement.
 */
function insertRows(tenantId: string, rows: readonly LinkedRow[]): Statement {
  const json = JSON.stringify(rows.map((r) => ({ seq: r.seq, prev: hexOf(r.prevHash), hash: hexOf(r.hash), event: r.json, time: r.time })));
  return {
    text:
      'INSERT INTO audit_events (tenant_id, seq, prev_hash, hash, event, time) ' +
      "SELECT $1, (x ->> 'seq')::bigint, decode(x ->> 'prev', 'hex'), decode(x ->> 'hash', 'hex'), (x ->> 'event')::jsonb, (x ->> 'time')::timestamptz " +
      'FROM jsonb_array_elements($2::text::jsonb) WITH ORDINALITY AS a(x, n) ORDER BY n',
    values: [tenantId, json],
  };
}

/** The head of the tenant's chain where `tx` reads it (genesis when it has no row). */
async function headIn(tx: Pick<EngineTransaction, 'batch'>, tenantId: string, table = 'audit_events'): Promise<ChainHead> {
  const where = table.endsWith('audit_platform_events') ? '' : 'WHERE tenant_id = $1';
  const [r] = await tx.batch([{ text: `SELECT e.seq::text AS seq, encode(e.hash, 'hex') AS hash FROM ${table} e ${where} ORDER BY e.seq DESC LIMIT 1`, values: where ? [tenantId] : [] }]);
  const row = r!.rows[0];
  return row ? { seq: Number(row.seq), hash: Buffer.from(row.hash as string, 'hex') } : genesisHead();
}

/**
 * Appends `n` events to the tenant's chain through `scope`, reading the head and inserting in one
 * transaction. The server's own audit log may append to the same chain meanwhile: a head taken by
 * it first fails the insert on the key (23505) or the link (BHA02), and the append is retried from
 * the new head. Returns the rows added.
 */
async function appendThrough(scope: ScopedStore, tenantId: string, n: number): Promise<LinkedRow[]> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await scope.transaction(async (tx) => {
        const linker = new ChainLinker(tenantId, await headIn(tx, tenantId));
        const rows = Array.from({ length: n }, () => linker.append(createAuditEvent(input(linker.head.seq + 1, tenantId))));
        await tx.batch([insertRows(tenantId, rows)]);
        return rows;
      });
    } catch (error) {
      const raced = error instanceof DatabaseError && (error.sqlState === '23505' || error.sqlState === AUDIT_LINK_SQLSTATE);
      if (!raced || attempt >= 10) throw error;
    }
  }
}

/** A chain row as compared between placements: every column but the tenant, as text. */
interface ComparableRow {
  readonly seq: string;
  readonly prev_hash: string;
  readonly hash: string;
  readonly event: string;
  readonly time: string;
}

const ROWS_SQL =
  "SELECT seq::text AS seq, encode(prev_hash, 'hex') AS prev_hash, encode(hash, 'hex') AS hash, event::text AS event, " +
  // Epoch text: two databases compare equal whatever their time zones.
  'extract(epoch FROM time)::text AS time FROM audit_events e WHERE tenant_id = $1 ORDER BY e.seq';

/** The tenant's chain where the router sends it now, read through its own scope (so under RLS). */
async function chainRows(t: TestBulkhead, tenantId: string): Promise<ComparableRow[]> {
  t.bh.placements.invalidate(tenantId);
  const [r] = await t.bh.placements.tenant(tenantId, { requireActive: false }).batch([{ text: ROWS_SQL, values: [tenantId] }]);
  return r!.rows as unknown as ComparableRow[];
}

/** Verifies the rows as a chain (hashes recomputed from the stored events). */
async function assertChain(rows: readonly ComparableRow[], tenantId: string, what: string): Promise<void> {
  const stored: StoredRow[] = rows.map((r) => ({ seq: r.seq, prevHash: Buffer.from(r.prev_hash, 'hex'), hash: Buffer.from(r.hash, 'hex'), event: JSON.parse(r.event) }));
  const result = await verifyChain(stored, { chain: tenantId });
  assert.ok(result.ok, `${what}: ${JSON.stringify(result)}`);
}

for (const kind of BACKENDS) {
  describe(`audit storage (${kind})`, () => {
    let t: TestBulkhead;
    let su: Engine;
    let seq = 0;
    const tenant = (tier: 'pool' | 'bridge' | 'silo' = 'pool') => createTenant(t, `as-${tier}-${++seq}-${kind}`, ['tenant_admin'], tier);
    const tiers = () => {
      const { bridge, silo } = t.bh.placements.tiers;
      assert.ok(bridge instanceof BridgeTier && silo instanceof SiloTier);
      return { bridge, silo };
    };

    /** Statements run on the control database as the owner role, in a tenant context, with `purge` (if given) as the purge setting. */
    const asOwner = (tenantId: string, purge: string | null, ...statements: Statement[]) =>
      su.batch([
        { text: `SET LOCAL ROLE ${t.db.ownerRole}` },
        {
          text: `SELECT set_config('bulkhead.tenant_id', $1, true), set_config('bulkhead.scope', 'tenant', true), set_config('${AUDIT_PURGE_SETTING}', $2, true)`,
          values: [tenantId, purge ?? ''],
        },
        ...statements,
      ]);

    /** Table facts: kind, RLS enabled and forced, owner, the policy's expression. */
    async function tableFacts(engine: Engine, table: string): Promise<Record<string, unknown>> {
      const [r] = await engine.batch([
        {
          text:
            'SELECT c.relkind::text AS relkind, c.relrowsecurity AS rls, c.relforcerowsecurity AS forced, pg_get_userbyid(c.relowner) AS owner, ' +
            "(SELECT string_agg(pg_get_expr(p.polqual, p.polrelid), ' | ') FROM pg_policy p WHERE p.polrelid = c.oid) AS quals " +
            'FROM pg_class c WHERE c.oid = to_regclass($1)',
          values: [table],
        },
      ]);
      assert.equal(r!.rows.length, 1, `${table} exists`);
      return r!.rows[0]!;
    }

    /** What `role` may do on `table`. */
    async function privileges(engine: Engine, role: string, table: string): Promise<string[]> {
      const [r] = await engine.batch([
        {
          text: "SELECT p FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) p WHERE has_table_privilege($1::name, $2::text, p) ORDER BY 1",
          values: [role, table],
        },
      ]);
      return r!.rows.map((x) => x.p as string);
    }

    before(async () => {
      t = await openTestBulkhead(kind);
      su = await t.db.engine();
    });
    after(async () => {
      await t?.close();
    });

    // First: it re-runs migration 8, dropping the pool's audit tables while no test has rows in them.
    it('migration 8 adds audit_events, with forced RLS, its triggers and INSERT/SELECT for the tenant role, to a bridge schema made before it', async () => {
      const b = await tenant('bridge');
      const cell = t.bh.placements.control;
      const schema = tiers().bridge.locationOf(cell, b.id);
      const role = tiers().bridge.roleOf(cell, b.id);
      // Back to the state before migration 8: no audit table, nor its functions, in the pool or the bridge schema.
      await su.script(`DROP TABLE ${schema}.audit_events;
DROP FUNCTION ${schema}.audit_events_check_link(), ${schema}.audit_events_forbid_change(), ${schema}.audit_forbid_change();
DROP TABLE bulkhead.audit_events, bulkhead.audit_platform_events;
DROP FUNCTION bulkhead.audit_events_check_link(), bulkhead.audit_events_forbid_change(), bulkhead.audit_platform_events_check_link(), bulkhead.audit_forbid_change();
DELETE FROM bulkhead.migrations WHERE version = 8;`);
      const [gone] = await su.batch([{ text: 'SELECT to_regclass($1) IS NULL AS gone', values: [`${schema}.audit_events`] }]);
      assert.equal(gone!.rows[0]!.gone, true);

      assert.deepEqual((await t.bh.store.migrate()).applied, [8]);
      const facts = await tableFacts(su, `${schema}.audit_events`);
      assert.deepEqual([facts.relkind, facts.rls, facts.forced, facts.owner], ['r', true, true, t.db.ownerRole]);
      assert.match(facts.quals as string, TENANT_POLICY);
      assert.deepEqual(await privileges(su, role, `${schema}.audit_events`), ['INSERT', 'SELECT']);
      assert.deepEqual(await privileges(su, t.db.appRole, `${schema}.audit_events`), [], 'the pool\'s application role has nothing there');
      assert.deepEqual(await privileges(su, t.db.appRole, 'bulkhead.audit_events'), ['INSERT', 'SELECT'], 'the pool\'s table is back');

      // And it works through the bridge tenant's own role: appended, read back, linked.
      const scope = t.bh.placements.tenant(b.id, { write: true });
      const added = await appendThrough(scope, b.id, 5);
      const rows = await chainRows(t, b.id);
      assert.ok(rows.length >= 5);
      await assertChain(rows, b.id, 'bridge chain');
      for (const r of added) assert.equal(rows[r.seq - 1]?.hash, hexOf(r.hash), `seq ${r.seq}`);
      const [inSchema] = await su.batch([{ text: `SELECT count(*)::int AS n FROM ${schema}.audit_events` }]);
      assert.equal(inSchema!.rows[0]!.n, rows.length, 'the rows are in the tenant\'s schema');
      // Its triggers are there: a gap is refused, and so is a change.
      const gap = new ChainLinker(b.id, { seq: 9, hash: Buffer.alloc(32, 1) }).append(createAuditEvent(input(10, b.id)));
      await rejectsSql(scope.batch([insertRows(b.id, [gap])]), AUDIT_LINK_SQLSTATE, undefined, 'a gap');
      await rejectsSql(scope.batch([{ text: 'DELETE FROM audit_events WHERE tenant_id = $1', values: [b.id] }]), '42501', /permission denied/, 'the tenant role deletes');
      await rejectsSql(asOwner(b.id, null, { text: `DELETE FROM ${schema}.audit_events WHERE tenant_id = $1`, values: [b.id] }), AUDIT_APPEND_ONLY_SQLSTATE, APPEND_ONLY, 'the owner deletes');
    });

    it('after open: the pool and platform tables exist with forced RLS; the application role may INSERT and SELECT only', async () => {
      const pool = await tableFacts(su, 'bulkhead.audit_events');
      // One table, not partitioned like the pool's records (migration 15).
      assert.deepEqual([pool.relkind, pool.rls, pool.forced, pool.owner], ['r', true, true, t.db.ownerRole]);
      assert.match(pool.quals as string, TENANT_POLICY);
      const platform = await tableFacts(su, 'bulkhead.audit_platform_events');
      assert.deepEqual([platform.relkind, platform.rls, platform.forced, platform.owner], ['r', true, true, t.db.ownerRole]);
      assert.match(platform.quals as string, /current_setting\('bulkhead\.scope'::text, true\) = 'platform'::text/);
      for (const table of ['bulkhead.audit_events', 'bulkhead.audit_platform_events']) {
        assert.deepEqual(await privileges(su, t.db.appRole, table), ['INSERT', 'SELECT'], `${table}: the application role`);
      }
      // A bridge tenant's role has nothing on the pool's audit tables.
      const b = await tenant('bridge');
      const role = tiers().bridge.roleOf(t.bh.placements.control, b.id);
      for (const table of ['bulkhead.audit_events', 'bulkhead.audit_platform_events']) assert.deepEqual(await privileges(su, role, table), [], `${table}: a bridge role`);
    });

    it("the link check finds the row before by its whole key, even when its plan was made while the table was a page (migrations 11-13)", async () => {
      // A bridge tenant's table holds its chain alone, and the schema's link-check function is new
      // to every connection, so its lookup is planned in the transaction below, on a table the
      // statistics call tiny: a sequential scan was that plan, and it stayed as the table grew.
      const b = await tenant('bridge');
      const a = await tenant('pool');
      const schema = tiers().bridge.locationOf(t.bh.placements.control, b.id);
      // As before migrations 11 and 12: the lookup planned with sequential scans on (11; since 13
      // the function's SET clause turns them off), and asking for seq - 1 alone, which a tiny
      // table's statistics price the same through the (tenant_id, time) index (12). Migrations 12
      // and 13 replace the check in the pool's schema and every bridge schema.
      const unguarded = (s: string) =>
        auditEventsLinkFunctionSql(s)
          .replace('SET enable_seqscan = off', 'SET enable_seqscan = on')
          .replace('e.seq <= before_seq ORDER BY e.seq DESC LIMIT 1', 'e.seq = before_seq');
      assert.equal(unguarded('bulkhead').match(/enable_seqscan = on|e\.seq = before_seq/g)?.length, 2, 'both guards undone');
      await su.script(`SET LOCAL ROLE ${t.db.ownerRole};\n${unguarded(schema)}\n${unguarded('bulkhead')}\nRESET ROLE;\nDELETE FROM bulkhead.migrations WHERE version IN (12, 13);`);
      assert.deepEqual((await t.bh.store.migrate()).applied, [12, 13]);
      await su.script(`ANALYZE ${schema}.audit_events`);
      for (const [w, table] of [[b, `${schema}.audit_events`], [a, 'bulkhead.audit_events']] as const) {
        const scans: Statement = {
          text: 'SELECT seq_scan::int AS seq, idx_scan::int AS idx, idx_tup_fetch::int AS fetched FROM pg_stat_xact_all_tables WHERE relid = to_regclass($1)',
          values: [table],
        };
        const n = 200;
        const { before, after, seqscan } = await t.bh.placements.tenant(w.id, { write: true }).transaction(async (tx) => {
          const linker = new ChainLinker(w.id, await headIn(tx, w.id));
          const rows = Array.from({ length: n }, () => linker.append(createAuditEvent(input(linker.head.seq + 1, w.id))));
          const [before] = await tx.batch([scans]);
          const [, after, setting] = await tx.batch([insertRows(w.id, rows), scans, { text: "SELECT current_setting('enable_seqscan') AS v" }]);
          return { before: before!.rows[0]!, after: after!.rows[0]!, seqscan: setting!.rows[0]!.v };
        });
        const counts = JSON.stringify({ table, before, after });
        assert.equal(Number(after.seq) - Number(before.seq), 0, `no lookup scanned the table: ${counts}`);
        assert.ok(Number(after.idx) - Number(before.idx) >= n - 1, `every row after the first found its predecessor by an index: ${counts}`);
        // By the whole key, each lookup fetches one row; by the tenant alone it fetched the chain (about n²/2 in all).
        assert.ok(Number(after.fetched) - Number(before.fetched) <= n, `each lookup fetched one row: ${counts}`);
        assert.equal(seqscan, 'on', 'the check puts the setting back');
        await assertChain(await chainRows(t, w.id), w.id, `${table} chain`);
      }
    });

    it('migration 15 makes the pool\'s partitioned chain table one table, every row as it was, and drops the CHECK constraints of every audit table', async () => {
      const a = await tenant('pool');
      const other = await tenant('pool');
      const b = await tenant('bridge');
      const schema = tiers().bridge.locationOf(t.bh.placements.control, b.id);
      for (const w of [a, other, b]) await appendThrough(t.bh.placements.tenant(w.id, { write: true }), w.id, 12);
      const before = new Map<string, ComparableRow[]>();
      for (const w of [a, other, b]) before.set(w.id, await chainRows(t, w.id));
      // The layout migrations 8-14 left: the pool's table hash-partitioned, with the CHECK
      // constraints every audit table had. Made here by hand, as those migrations made it.
      const owner = t.db.ownerRole;
      const checks = (table: string) =>
        `ALTER TABLE ${table} ADD CHECK (seq >= 1), ADD CHECK (octet_length(prev_hash) = 32), ADD CHECK (octet_length(hash) = 32), ADD CHECK (jsonb_typeof(event) = 'object');`;
      await su.script(`SET LOCAL ROLE ${owner};
ALTER TABLE bulkhead.audit_events RENAME TO audit_events_flat;
ALTER INDEX bulkhead.audit_events_pkey RENAME TO audit_events_flat_pkey;
ALTER INDEX bulkhead.audit_events_time RENAME TO audit_events_flat_time;
ALTER TABLE bulkhead.audit_events_flat DISABLE ROW LEVEL SECURITY;
CREATE TABLE bulkhead.audit_events (
  tenant_id uuid NOT NULL,
  seq bigint NOT NULL CHECK (seq >= 1),
  prev_hash bytea NOT NULL CHECK (octet_length(prev_hash) = 32),
  hash bytea NOT NULL CHECK (octet_length(hash) = 32),
  event jsonb NOT NULL CHECK (jsonb_typeof(event) = 'object'),
  time timestamptz NOT NULL,
  PRIMARY KEY (tenant_id, seq)
) PARTITION BY HASH (tenant_id);
CREATE INDEX audit_events_time ON bulkhead.audit_events (tenant_id, time);
${Array.from({ length: PARTITIONS }, (_, i) => `CREATE TABLE bulkhead.audit_events_p${i} PARTITION OF bulkhead.audit_events FOR VALUES WITH (MODULUS ${PARTITIONS}, REMAINDER ${i});`).join('\n')}
INSERT INTO bulkhead.audit_events SELECT * FROM bulkhead.audit_events_flat;
DROP TABLE bulkhead.audit_events_flat;
ALTER TABLE bulkhead.audit_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE bulkhead.audit_events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON bulkhead.audit_events USING (tenant_id = nullif(current_setting('bulkhead.tenant_id', true), '')::uuid) WITH CHECK (tenant_id = nullif(current_setting('bulkhead.tenant_id', true), '')::uuid);
CREATE TRIGGER audit_events_link BEFORE INSERT ON bulkhead.audit_events FOR EACH ROW EXECUTE FUNCTION bulkhead.audit_events_check_link();
GRANT SELECT, INSERT ON bulkhead.audit_events TO ${t.db.appRole};
${checks(`${schema}.audit_events`)}
${checks('bulkhead.audit_platform_events')}
RESET ROLE;
DELETE FROM bulkhead.migrations WHERE version = 15;`);
      assert.equal((await tableFacts(su, 'bulkhead.audit_events')).relkind, 'p', 'the layout before migration 15');

      assert.deepEqual((await t.bh.store.migrate()).applied, [15]);
      const pool = await tableFacts(su, 'bulkhead.audit_events');
      assert.deepEqual([pool.relkind, pool.rls, pool.forced, pool.owner], ['r', true, true, owner]);
      assert.match(pool.quals as string, TENANT_POLICY);
      assert.deepEqual(await privileges(su, t.db.appRole, 'bulkhead.audit_events'), ['INSERT', 'SELECT']);
      const [left] = await su.batch([
        {
          text:
            "SELECT (SELECT count(*)::int FROM pg_class WHERE relname ~ '^audit_events_(p[0-9]+|partitioned)') AS tables, " +
            "(SELECT count(*)::int FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid WHERE c.contype = 'c' AND r.relname IN ('audit_events', 'audit_platform_events')) AS checks, " +
            "(SELECT string_agg(tgname, ',' ORDER BY tgname) FROM pg_trigger WHERE tgrelid = 'bulkhead.audit_events'::regclass) AS triggers",
        },
      ]);
      assert.deepEqual(left!.rows[0], { tables: 0, checks: 0, triggers: 'audit_events_append_only,audit_events_link,audit_events_no_truncate' });
      // Every row as it was, and the chains go on.
      for (const w of [a, other, b]) {
        assert.deepEqual(await chainRows(t, w.id), before.get(w.id), 'the rows after migration 15');
        await appendThrough(t.bh.placements.tenant(w.id, { write: true }), w.id, 3);
        await assertChain(await chainRows(t, w.id), w.id, 'appended after migration 15');
      }
      // The new table's guards hold: no change by the owner, no row for another tenant, no bad shape.
      await rejectsSql(asOwner(a.id, null, { text: 'DELETE FROM bulkhead.audit_events WHERE tenant_id = $1', values: [a.id] }), AUDIT_APPEND_ONLY_SQLSTATE, APPEND_ONLY, 'the owner deletes');
      await rejectsSql(asOwner(a.id, a.id, { text: 'TRUNCATE bulkhead.audit_events' }), AUDIT_APPEND_ONLY_SQLSTATE, APPEND_ONLY, 'the owner truncates');
      const claim = new ChainLinker(other.id, genesisHead()).append(createAuditEvent(input(1, other.id)));
      await rejectsSql(t.bh.placements.tenant(a.id, { write: true }).batch([insertRows(other.id, [claim])]), '42501', /row-level security/, 'a row of another tenant');
      // Applied again (a fresh deployment has the table this way already), it changes nothing.
      await su.script('DELETE FROM bulkhead.migrations WHERE version = 15');
      assert.deepEqual((await t.bh.store.migrate()).applied, [15]);
      for (const w of [a, other, b]) await assertChain(await chainRows(t, w.id), w.id, 'migration 15 applied twice');
    });

    it('nobody may change a row: the application role has no privilege, the owner and a superuser meet BHA01; the purge escape is narrow', async () => {
      const a = await tenant();
      const other = await tenant();
      const scope = t.bh.placements.tenant(a.id, { write: true });
      await appendThrough(scope, a.id, 6);
      await appendThrough(t.bh.placements.tenant(other.id, { write: true }), other.id, 3);

      // The application role, in its own tenant's scope: no UPDATE, DELETE or TRUNCATE privilege.
      for (const text of ["UPDATE audit_events SET event = '{}'::jsonb WHERE tenant_id = $1", 'DELETE FROM audit_events WHERE tenant_id = $1', 'TRUNCATE audit_events']) {
        await rejectsSql(scope.batch([text.includes('$1') ? { text, values: [a.id] } : { text }]), '42501', /permission denied/, `app role: ${text}`);
      }

      // The owner outside a purge, and inside a purge of another tenant: BHA01 for every change.
      const changes = (table: string): Statement[] => [
        { text: `UPDATE ${table} SET event = event WHERE tenant_id = $1`, values: [a.id] },
        { text: `DELETE FROM ${table} WHERE tenant_id = $1 AND seq = 6`, values: [a.id] },
        { text: `TRUNCATE ${table}` },
      ];
      for (const purge of [null, other.id]) {
        for (const statement of changes('bulkhead.audit_events')) {
          await rejectsSql(asOwner(a.id, purge, statement), AUDIT_APPEND_ONLY_SQLSTATE, APPEND_ONLY, `owner, purge ${String(purge)}: ${statement.text}`);
        }
      }
      // Inside its own tenant's purge, the owner still may not UPDATE nor TRUNCATE.
      await rejectsSql(asOwner(a.id, a.id, changes('bulkhead.audit_events')[0]!), AUDIT_APPEND_ONLY_SQLSTATE, APPEND_ONLY, 'owner in a purge: UPDATE');
      await rejectsSql(asOwner(a.id, a.id, changes('bulkhead.audit_events')[2]!), AUDIT_APPEND_ONLY_SQLSTATE, APPEND_ONLY, 'owner in a purge: TRUNCATE');
      // A superuser (the test's connection) is not the owner: the purge setting does not help it.
      await rejectsSql(
        su.batch([
          { text: `SELECT set_config('${AUDIT_PURGE_SETTING}', $1, true), set_config('bulkhead.tenant_id', $1, true)`, values: [a.id] },
          { text: 'DELETE FROM bulkhead.audit_events WHERE tenant_id = $1', values: [a.id] },
        ]),
        AUDIT_APPEND_ONLY_SQLSTATE,
        APPEND_ONLY,
        'a superuser in a purge',
      );
      // The platform chain has no escape at all.
      const platformHead = await su.transaction((tx) => headIn(tx, '', 'bulkhead.audit_platform_events'));
      const linker = new ChainLinker('platform', platformHead);
      const platformRow = linker.append(createAuditEvent(input(platformHead.seq + 1, null)));
      await t.bh.store.platform().batch([
        {
          text: "INSERT INTO bulkhead.audit_platform_events (seq, prev_hash, hash, event, time) VALUES ($1, decode($2, 'hex'), decode($3, 'hex'), $4::jsonb, $5::timestamptz)",
          values: [platformRow.seq, hexOf(platformRow.prevHash), hexOf(platformRow.hash), platformRow.json, platformRow.time],
        },
      ]);
      await rejectsSql(
        su.batch([
          { text: `SET LOCAL ROLE ${t.db.ownerRole}` },
          { text: `SELECT set_config('bulkhead.scope', 'platform', true), set_config('${AUDIT_PURGE_SETTING}', $1, true)`, values: [a.id] },
          { text: 'DELETE FROM bulkhead.audit_platform_events WHERE seq = $1', values: [platformRow.seq] },
        ]),
        AUDIT_APPEND_ONLY_SQLSTATE,
        APPEND_ONLY,
        'owner: the platform chain',
      );
      await rejectsSql(t.bh.store.platform().batch([{ text: 'DELETE FROM bulkhead.audit_platform_events' }]), '42501', /permission denied/, 'app role: the platform chain');
      const kept = await chainRows(t, a.id);
      assert.ok(kept.length >= 6);
      await assertChain(kept, a.id, 'nothing was changed');
      const otherRows = await chainRows(t, other.id);

      // purgeTenant removes the tenant's rows, and only its rows.
      const purged = await t.bh.store.purgeTenant(a.id, 'bulkhead');
      assert.equal(purged.audit_events, kept.length);
      const [left] = await su.batch([{ text: 'SELECT tenant_id::text AS id, count(*)::int AS n FROM bulkhead.audit_events WHERE tenant_id IN ($1, $2) GROUP BY 1', values: [a.id, other.id] }]);
      assert.deepEqual(left!.rows, [{ id: other.id, n: otherRows.length }]);
      assert.deepEqual(await chainRows(t, other.id), otherRows);
      const [count] = await su.batch([{ text: 'SELECT count(*)::int AS n FROM bulkhead.audit_platform_events WHERE seq = $1', values: [platformRow.seq] }]);
      assert.equal(count!.rows[0]!.n, 1, 'the platform row is still there');
    });

    it("owner work in a tenant's context (Store.asOwnerInTenant) sees that tenant only, and deletes audit rows only when it asks for the purge", async () => {
      const a = await tenant();
      const other = await tenant();
      await appendThrough(t.bh.placements.tenant(a.id, { write: true }), a.id, 3);
      await appendThrough(t.bh.placements.tenant(other.id, { write: true }), other.id, 2);
      const store = t.bh.store;
      const [theirs, mine, path, zone] = await store.asOwnerInTenant(
        a.id,
        [
          { text: 'SELECT count(*)::int AS n FROM audit_events WHERE tenant_id = $1', values: [other.id] },
          { text: 'SELECT count(*)::int AS n FROM audit_events' },
          { text: "SELECT current_setting('search_path') AS v" },
          { text: "SELECT current_setting('TimeZone') AS v" },
        ],
        { searchPath: 'bulkhead', utc: true },
      );
      assert.equal(theirs!.rows[0]!.n, 0, "another tenant's rows, by id");
      assert.ok((mine!.rows[0]!.n as number) >= 3, 'its own rows, unqualified through the search path');
      assert.equal(path!.rows[0]!.v, 'bulkhead');
      assert.equal(zone!.rows[0]!.v, 'UTC');
      // Without `purgeAudit` the owner meets the append-only trigger like everyone else.
      await rejectsSql(
        store.asOwnerInTenant(a.id, [{ text: 'DELETE FROM bulkhead.audit_events WHERE tenant_id = $1', values: [a.id] }]),
        AUDIT_APPEND_ONLY_SQLSTATE,
        APPEND_ONLY,
        'owner work without the purge',
      );
      // With it, the DELETE reaches this tenant's rows only, even when it names none.
      const otherRows = await chainRows(t, other.id);
      const [deleted] = await store.asOwnerInTenant(a.id, [{ text: 'DELETE FROM bulkhead.audit_events WHERE seq >= 1' }], { purgeAudit: true });
      assert.ok(deleted!.rowCount >= 3);
      assert.deepEqual(await chainRows(t, a.id), []);
      assert.deepEqual(await chainRows(t, other.id), otherRows);
      // Bad input is refused before anything runs.
      for (const [tenantId, settings] of [
        ['not-a-uuid', {}],
        [a.id, { searchPath: 'bulkhead; DROP TABLE x' }],
        [a.id, { searchPath: 'Bulkhead' }],
      ] as const) {
        await assert.rejects(store.asOwnerInTenant(tenantId, [{ text: 'SELECT 1' }], settings), (e: unknown) => e instanceof BulkheadError && e.code === 'INTERNAL');
      }
    });

    it("a tenant's rows are invisible to another tenant's scope, on every tier, and another tenant's rows cannot be written", async () => {
      const tenants = [await tenant('pool'), await tenant('pool'), await tenant('bridge'), await tenant('silo')];
      for (const w of tenants) await appendThrough(t.bh.placements.tenant(w.id, { write: true }), w.id, 4);
      for (const w of tenants) {
        const scope = t.bh.placements.tenant(w.id);
        const [foreign, mine] = await scope.batch([
          { text: 'SELECT count(*)::int AS n FROM audit_events WHERE tenant_id <> $1', values: [w.id] },
          { text: 'SELECT count(*)::int AS n FROM audit_events WHERE tenant_id = $1', values: [w.id] },
        ]);
        assert.equal(foreign!.rows[0]!.n, 0, 'a scope sees its own chain only');
        assert.ok((mine!.rows[0]!.n as number) >= 4);
        for (const intruder of tenants) {
          if (intruder.id === w.id) continue;
          const [theirs] = await scope.batch([{ text: 'SELECT count(*)::int AS n FROM audit_events WHERE tenant_id = $1', values: [intruder.id] }]);
          assert.equal(theirs!.rows[0]!.n, 0, "another tenant's rows by id");
        }
      }
      // A pool tenant writing a row that claims another pool tenant: refused by the policy's check.
      const [p1, p2] = tenants;
      const claim = new ChainLinker(p2!.id, genesisHead()).append(createAuditEvent(input(1, p2!.id)));
      await rejectsSql(t.bh.placements.tenant(p1!.id, { write: true }).batch([insertRows(p2!.id, [claim])]), '42501', /row-level security/, 'a row of another tenant');
    });

    it("a bridge tenant made now and a silo tenant each get a working audit_events for their own role", async () => {
      const cell = t.bh.placements.control;
      const b = await tenant('bridge');
      const schema = tiers().bridge.locationOf(cell, b.id);
      const role = tiers().bridge.roleOf(cell, b.id);
      const facts = await tableFacts(su, `${schema}.audit_events`);
      assert.deepEqual([facts.relkind, facts.rls, facts.forced, facts.owner], ['r', true, true, t.db.ownerRole]);
      assert.match(facts.quals as string, TENANT_POLICY);
      assert.deepEqual(await privileges(su, role, `${schema}.audit_events`), ['INSERT', 'SELECT']);
      await appendThrough(t.bh.placements.tenant(b.id, { write: true }), b.id, 3);
      await assertChain(await chainRows(t, b.id), b.id, 'bridge made now');
      await rejectsSql(asOwner(b.id, null, { text: `UPDATE ${schema}.audit_events SET time = time` }), AUDIT_APPEND_ONLY_SQLSTATE, APPEND_ONLY, 'bridge: owner update');
      await rejectsSql(asOwner(b.id, b.id, { text: `TRUNCATE ${schema}.audit_events` }), AUDIT_APPEND_ONLY_SQLSTATE, APPEND_ONLY, 'bridge: owner truncate');

      // A silo runs the migrations when opened: the pool layout in its own database, for its own roles.
      const s = await tenant('silo');
      const placement = await t.bh.placements.resolve(s.id);
      const store = await tiers().silo.store(cell, s.id, placement!.location);
      const siloApp = `${t.db.appRole}_s${s.id.replace(/-/g, '')}`;
      const siloOwner = `${t.db.appRole}_o${s.id.replace(/-/g, '')}`;
      const siloFacts = await tableFacts(store.engine, 'bulkhead.audit_events');
      assert.deepEqual([siloFacts.relkind, siloFacts.rls, siloFacts.forced, siloFacts.owner], ['r', true, true, siloOwner]);
      assert.deepEqual(await privileges(store.engine, siloApp, 'bulkhead.audit_events'), ['INSERT', 'SELECT']);
      await appendThrough(t.bh.placements.tenant(s.id, { write: true }), s.id, 3);
      const rows = await chainRows(t, s.id);
      assert.ok(rows.length >= 3);
      await assertChain(rows, s.id, 'silo');
      const [there] = await store.engine.batch([{ text: 'SELECT count(*)::int AS n FROM bulkhead.audit_events' }]);
      assert.equal(there!.rows[0]!.n, rows.length, "the rows are in the silo's database");
      const [control] = await su.batch([{ text: 'SELECT count(*)::int AS n FROM bulkhead.audit_events WHERE tenant_id = $1', values: [s.id] }]);
      assert.equal(control!.rows[0]!.n, 0, 'and not in the control database');
    });

    it('moves pool → bridge → silo → pool carry the chain unchanged (and the rows appended meanwhile), and leave none at the source', async () => {
      const a = await tenant();
      const bystander = await tenant();
      const initial = await appendThrough(t.bh.placements.tenant(a.id, { write: true }), a.id, 300);
      assert.equal(initial.length, 300);
      await appendThrough(t.bh.placements.tenant(bystander.id, { write: true }), bystander.id, 40);
      const [bystanderBefore] = await su.batch([{ text: ROWS_SQL.replace('FROM audit_events', 'FROM bulkhead.audit_events'), values: [bystander.id] }]);
      let rows = await chainRows(t, a.id);
      assert.ok(rows.length >= 300);
      await assertChain(rows, a.id, 'before the moves');

      for (const tier of ['bridge', 'silo', 'pool'] as const) {
        const started = await request(t.app, 'POST', `/v1/tenants/${a.id}/moves`, { token: t.operatorToken, body: { tier } });
        assert.equal(started.status, 202, started.text);
        // Events appended while the move runs (each a batch of 5 in one transaction): every batch
        // that succeeded must be at the target; one may only fail as paused.
        const appended: LinkedRow[] = [];
        let running = true;
        const done = finished(t.bh, a.id, started.body.id).finally(() => {
          running = false;
        });
        while (running) {
          try {
            appended.push(...(await appendThrough(t.bh.placements.tenant(a.id, { write: true }), a.id, 5)));
          } catch (error) {
            assert.ok(error instanceof BulkheadError && error.code === 'TENANT_WRITES_PAUSED', `an append failed during the move: ${String(error)}`);
          }
          await new Promise((resolve) => setTimeout(resolve, 5));
        }
        const move: MoveView = await done;
        assert.equal(move.state, 'done', move.error ?? '');
        assert.equal(move.target.tier, tier);
        assert.deepEqual(move.checksums!.source, move.checksums!.target);
        // Compared at the switch: at least the rows from before the move (appends go on after it, at the target).
        assert.ok((move.checksums!.target['audit_events/chain']?.rows ?? 0) >= rows.length, `${tier}: the chain is in the checksums`);
        assert.ok(appended.length > 0, `${tier}: events were appended during the move`);

        // The same rows at the target: those before the move, then those appended during it.
        const moved = await chainRows(t, a.id);
        assert.deepEqual(moved.slice(0, rows.length), rows, `${tier}: the rows before the move`);
        const bySeq = new Map(moved.map((r) => [Number(r.seq), r]));
        for (const r of appended) assert.equal(bySeq.get(r.seq)?.hash, hexOf(r.hash), `${tier}: appended seq ${r.seq}`);
        await assertChain(moved, a.id, `after the move to ${tier}`);

        // Nothing left at the source: the pool's rows purged (the escape), a bridge schema or silo database dropped.
        if (move.source.tier === 'pool') {
          const [left] = await su.batch([{ text: 'SELECT count(*)::int AS n FROM bulkhead.audit_events WHERE tenant_id = $1', values: [a.id] }]);
          assert.equal(left!.rows[0]!.n, 0, 'audit rows left in the pool');
        } else if (move.source.tier === 'bridge') {
          const [left] = await su.batch([{ text: 'SELECT to_regclass($1) IS NULL AS gone', values: [`${move.source.location}.audit_events`] }]);
          assert.equal(left!.rows[0]!.gone, true, 'the bridge schema is left');
        } else if (kind === 'postgres') {
          const [left] = await su.batch([{ text: 'SELECT count(*)::int AS n FROM pg_database WHERE datname = $1', values: [move.source.location] }]);
          assert.equal(left!.rows[0]!.n, 0, 'the silo database is left');
        } else {
          const dataDir = t.config.cells.find((c) => c.name === move.source.cell)?.dataDir;
          if (dataDir && !dataDir.startsWith('memory://')) assert.equal(existsSync(join(dirname(dataDir), `${basename(dataDir)}.silos`, move.source.location)), false, 'the silo directory is left');
        }
        // The chain goes on at its new placement.
        const next = await appendThrough(t.bh.placements.tenant(a.id, { write: true }), a.id, 2);
        assert.ok(next[0]!.seq > moved.length);
        rows = await chainRows(t, a.id);
      }

      // Another tenant's chain, in the pool all along, was not touched.
      const [bystanderAfter] = await su.batch([{ text: ROWS_SQL.replace('FROM audit_events', 'FROM bulkhead.audit_events'), values: [bystander.id] }]);
      assert.equal(bystanderBefore!.rows.length, 40);
      assert.deepEqual(bystanderAfter!.rows, bystanderBefore!.rows);
    });

    it("appends at every step of a move reach the target: during the copy, before the verification, after its snapshot, just before the pause", async () => {
      const a = await tenant();
      await appendThrough(t.bh.placements.tenant(a.id, { write: true }), a.id, 300);
      const chainIndex = COPY_TABLES.findIndex((table) => table.name === 'audit_events');
      assert.equal(chainIndex, COPY_TABLES.length - 1, 'the chain is copied last');
      const appended: LinkedRow[] = [];
      const append = async (n: number) => appended.push(...(await appendThrough(t.bh.placements.tenant(a.id, { write: true }), a.id, n)));
      const seen = new Set<string>();
      const mover = new Moves(t.bh.placements, {
        batchSize: 100,
        onStep: async (m: MoveView) => {
          // Once per kind of step: mid-copy of the chain (after the cursor: the copy carries them),
          // at the start of the verification (its full sync), after its snapshot (the switch's catch-up).
          const step = m.state === 'copying' ? (m.progress.table === chainIndex && m.progress.cursor !== null ? 'copying-chain' : '') : m.state;
          if (!['copying-chain', 'verifying', 'switching'].includes(step) || seen.has(step)) return;
          seen.add(step);
          // More than a batch before the verification: its full sync appends them in batches, in key order.
          await append(step === 'verifying' ? 150 : 7);
        },
        // Between the comparison base and the pause: the switch's own tail sync and sums.
        beforePause: async () => {
          await append(3);
        },
      });
      try {
        for (const tier of ['bridge', 'silo'] as const) {
          seen.clear();
          const before = await chainRows(t, a.id);
          const from = appended.length;
          const row = (await request(t.app, 'GET', `/v1/tenants/${a.id}`, { token: t.operatorToken })).body as TenantRow;
          const started = await mover.start(row, { tier }, 'test');
          await mover.wait(started.id);
          const done = await mover.get(a.id, started.id);
          assert.equal(done.state, 'done', JSON.stringify(done));
          assert.deepEqual([...seen].sort(), ['copying-chain', 'switching', 'verifying'], `${tier}: every step appended`);
          assert.equal(appended.length - from, 7 + 150 + 7 + 3);
          assert.equal(done.progress.checksumScan, 'changes', `${tier}: the switch summed the chain from its base`);
          assert.deepEqual(done.checksums!.source, done.checksums!.target);
          // Nothing was written after the switch: what it recorded is the new placement's chain, summed whole now.
          assert.deepEqual(done.checksums!.target, await tenantChecksums(t.bh, a.id));
          const moved = await chainRows(t, a.id);
          assert.equal(done.checksums!.target['audit_events/chain']!.rows, moved.length);
          assert.deepEqual(moved.slice(0, before.length), before, `${tier}: the rows before the move`);
          assert.equal(moved.length, before.length + appended.length - from, `${tier}: every append, once`);
          for (const r of appended) assert.equal(moved[r.seq - 1]?.hash, hexOf(r.hash), `${tier}: seq ${r.seq}`);
          await assertChain(moved, a.id, `after the move to ${tier}`);
        }
      } finally {
        await mover.close();
      }
    });
  });
}

// Across two PostgreSQL servers (`.ci/run` starts the second and sets BULKHEAD_TEST_SECOND_SERVER_URL):
// the checksums hash each row's text on both servers, which must agree for bytea, jsonb and timestamps.
const SECOND = process.env.BULKHEAD_TEST_SECOND_SERVER_URL || undefined;

describe('audit chains moved between two PostgreSQL servers', { skip: !BACKENDS.includes('postgres') ? 'the postgres backend is not selected' : !SECOND ? 'BULKHEAD_TEST_SECOND_SERVER_URL is not set' : false }, () => {
  let t: TestBulkhead;
  before(async () => {
    t = await openTestBulkhead('postgres', { BULKHEAD_REGIONS: 'eu' }, { controlRegion: 'eu', cells: [{ name: 'eu-2', region: 'eu', serverUrl: SECOND! }] });
  });
  after(async () => {
    await t?.close();
  });

  it('carries a chain to the other server (pool, then silo) and back (bridge) unchanged', async () => {
    const a = await createTenant(t, 'audit-two-servers');
    await appendThrough(t.bh.placements.tenant(a.id, { write: true }), a.id, 300);
    let rows = await chainRows(t, a.id);
    for (const target of [{ tier: 'pool', cell: 'eu-2' }, { tier: 'silo', cell: 'eu-2' }, { tier: 'bridge', cell: 'local' }]) {
      const res = await request(t.app, 'POST', `/v1/tenants/${a.id}/moves`, { token: t.operatorToken, body: target });
      assert.equal(res.status, 202, res.text);
      const done = await finished(t.bh, a.id, res.body.id);
      assert.equal(done.state, 'done', JSON.stringify(done));
      assert.deepEqual(done.checksums!.source, done.checksums!.target);
      assert.ok((done.checksums!.target['audit_events/chain']?.rows ?? 0) >= 300);
      const moved = await chainRows(t, a.id);
      assert.deepEqual(moved.slice(0, rows.length), rows, `the chain after the move to ${JSON.stringify(target)}`);
      await assertChain(moved, a.id, JSON.stringify(target));
      await appendThrough(t.bh.placements.tenant(a.id, { write: true }), a.id, 2);
      rows = await chainRows(t, a.id);
    }
  });
});
