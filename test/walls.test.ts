/**
 * SPEC principle 1: the tenant boundary has two independent walls, and each one alone stops a
 * cross-tenant read or write.
 *
 * - RLS alone: statements run exactly as the Store runs them (application role, tenant B's context
 *   set with `set_config(..., true)`) but with the application layer's `tenant_id = $1` predicate
 *   left out or pointed at tenant A. The database must show and change nothing of A.
 * - The application layer alone: RLS is switched off in the test database (and shown to be off),
 *   then tenant B's token replays A's ids and values through the HTTP API (OWASP WSTG-APIT-02).
 * - Principle 4: partition and identity keys are immutable in the database itself.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import type { Engine, Statement, StatementResult } from '../src/store/engine.js';
import { CONTEXT_SQL } from '../src/store/store.js';
import { BACKENDS, createTenant, openTestBulkhead, request, tenantSnapshot, type TestBulkhead } from './support/backends.js';
import { rejectsSql } from './support/assertions.js';

/** Tables that hold tenant data, the registry or the control plane's state; every one must carry forced RLS. */
const TENANT_TABLES = [
  'audit_events', 'audit_platform_events', 'collection_versions', 'collections', 'erasures', 'index_values', 'key_rotations', 'maintenance_runs', 'moves',
  'operator_tokens', 'placements', 'records', 'tenant_history', 'tenant_keys', 'tenant_usage', 'tenants', 'unique_values',
] as const;
/**
 * Tables without RLS: they must grant the application role nothing at all. `move_changes` (the
 * change log of tenant moves, ids only) is written by the owner's capture triggers and read by the
 * mover as the owner, never by the application role.
 */
const INTERNAL_TABLES = ['migrations', 'move_changes', 'settings'] as const;
/** Tables only the platform scope reaches (history, placement directory, moves, key rotations, erasures, maintenance runs). */
const PLATFORM_ONLY = ['erasures', 'key_rotations', 'maintenance_runs', 'moves', 'placements', 'tenant_history'] as const;
/** Hash-partitioned by tenant (the audit chain is one table since migration 15). */
const PARTITIONED = ['index_values', 'records', 'unique_values'] as const;
const PARTITIONS = 4; // BULKHEAD_PARTITIONS of openTestBulkhead
const PRIVILEGES = ['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER'] as const;

type Context = { tenant: string; scope: 'tenant' | 'platform' } | 'role-only';

/**
 * Runs `statements` on `su` (a connection as the superuser, which bypasses RLS) after switching to
 * the application role for the transaction; `context` sets the tenant the way the Store does, or
 * (`'role-only'`) sets no tenant at all.
 */
async function asApp(t: TestBulkhead, su: Engine, context: Context, statements: readonly Statement[]): Promise<StatementResult[]> {
  const prefix: Statement =
    context === 'role-only'
      ? { text: "SELECT set_config('role', $1, true)", values: [t.db.appRole] }
      : { text: CONTEXT_SQL, values: [t.db.appRole, context.tenant, context.scope] };
  return (await su.batch([prefix, ...statements])).slice(1);
}

const RLS_DENIED = /row-level security/;
const PRIVILEGE_DENIED = /permission denied/;

/** Everything stored for one tenant, history included. */
const snapshot = (su: Engine, tenantId: string): Promise<string> => tenantSnapshot(su, tenantId, { history: true });

/** Two tenants with the same collections and marked values, A with one collection more. */
interface Pair {
  readonly a: { id: string; token: string };
  readonly b: { id: string; token: string };
  readonly aIds: string[];
  readonly bIds: string[];
  /** A string found in every value of A and in none of B. */
  readonly aMark: string;
  readonly bMark: string;
}

const NOTES = {
  fields: {
    title: { type: 'string', required: true },
    code: { type: 'string', unique: true },
    tag: { type: 'string', indexed: true },
    ref: { type: 'reference', collection: 'notes' },
  },
};

async function seedPair(t: TestBulkhead): Promise<Pair> {
  const tag = randomBytes(4).toString('hex');
  const a = await createTenant(t, `wall-a-${tag}`);
  const b = await createTenant(t, `wall-b-${tag}`);
  const aMark = `amark${tag}`;
  const bMark = `bmark${tag}`;
  const ids: Record<string, string[]> = { a: [], b: [] };
  for (const [key, tenant, mark, count] of [['a', a, aMark, 3], ['b', b, bMark, 2]] as const) {
    const put = await request(t.app, 'PUT', '/v1/collections/notes', { token: tenant.token, body: NOTES });
    assert.equal(put.status, 201, put.text);
    for (let i = 0; i < count; i++) {
      const created = await request(t.app, 'POST', '/v1/collections/notes/records', {
        token: tenant.token,
        body: { fields: { title: `${mark}-title-${i}`, code: `${mark}-code-${i}`, tag: `${mark}-tag` } },
      });
      assert.equal(created.status, 201, created.text);
      ids[key]!.push(created.body.id);
    }
  }
  const only = await request(t.app, 'PUT', '/v1/collections/a_only', { token: a.token, body: { fields: { title: { type: 'string' } } } });
  assert.equal(only.status, 201, only.text);
  const inOnly = await request(t.app, 'POST', '/v1/collections/a_only/records', { token: a.token, body: { fields: { title: `${aMark}-only` } } });
  assert.equal(inOnly.status, 201, inOnly.text);
  ids.a!.push(inOnly.body.id);
  return { a, b, aIds: ids.a!, bIds: ids.b!, aMark, bMark };
}

for (const kind of BACKENDS) {
  describe(`each isolation wall alone (${kind})`, () => {
    let t: TestBulkhead;
    /** A connection as the superuser that created the test database (bypasses RLS). */
    let su: Engine;

    before(async () => {
      t = await openTestBulkhead(kind);
      su = await t.db.engine();
    });
    after(async () => {
      await t?.close();
    });

    it('the application role is neither superuser nor BYPASSRLS, is a member of no role, and owns nothing', async () => {
      const [roles, members, ownedByApp, ownedByOwner, schema] = await su.batch([
        { text: 'SELECT rolname, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname IN ($1, $2) ORDER BY rolname', values: [t.db.appRole, t.db.ownerRole] },
        { text: 'SELECT count(*)::int AS n FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = $1', values: [t.db.appRole] },
        {
          text:
            "SELECT (SELECT count(*) FROM pg_class WHERE relowner = r.oid)::int AS classes, (SELECT count(*) FROM pg_proc WHERE proowner = r.oid)::int AS procs, " +
            '(SELECT count(*) FROM pg_namespace WHERE nspowner = r.oid)::int AS schemas, (SELECT count(*) FROM pg_type WHERE typowner = r.oid)::int AS types ' +
            'FROM pg_roles r WHERE r.rolname = $1',
          values: [t.db.appRole],
        },
        {
          text:
            "SELECT (SELECT count(*) FROM pg_class c WHERE c.relnamespace = 'bulkhead'::regnamespace AND c.relkind IN ('r', 'p') AND c.relowner <> r.oid)::int AS foreign_tables, " +
            "(SELECT count(*) FROM pg_class c WHERE c.relnamespace = 'bulkhead'::regnamespace AND c.relkind IN ('r', 'p'))::int AS tables, " +
            "(SELECT count(*) FROM pg_proc p WHERE p.pronamespace = 'bulkhead'::regnamespace AND p.proowner <> r.oid)::int AS foreign_procs, " +
            "(SELECT count(*) FROM pg_proc p WHERE p.pronamespace = 'bulkhead'::regnamespace)::int AS procs " +
            'FROM pg_roles r WHERE r.rolname = $1',
          values: [t.db.ownerRole],
        },
        { text: "SELECT pg_get_userbyid(nspowner) AS owner FROM pg_namespace WHERE nspname = 'bulkhead'" },
      ]);
      assert.equal(roles!.rows.length, 2);
      for (const role of roles!.rows) {
        assert.equal(role.rolsuper, false, `${role.rolname} is a superuser`);
        assert.equal(role.rolbypassrls, false, `${role.rolname} bypasses RLS`);
        assert.equal(role.rolcreaterole, false);
        assert.equal(role.rolcreatedb, false);
      }
      // Membership would let SET ROLE reach another role's rights; the application role has none.
      assert.equal(members!.rows[0]!.n, 0);
      assert.deepEqual(ownedByApp!.rows[0], { classes: 0, procs: 0, schemas: 0, types: 0 });
      // The owner role owns every table and function of the schema (so the check above is not vacuous).
      const owner = ownedByOwner!.rows[0]!;
      assert.equal(owner.foreign_tables, 0);
      assert.equal(owner.foreign_procs, 0);
      assert.equal(owner.tables, TENANT_TABLES.length + INTERNAL_TABLES.length + PARTITIONED.length * PARTITIONS);
      assert.ok((owner.procs as number) >= 6);
      assert.equal(schema!.rows[0]!.owner, t.db.ownerRole);
    });

    it('RLS is enabled and forced on every tenant table and partition; partitions and internal tables grant the application role nothing', async () => {
      const [tables] = await su.batch([
        {
          text:
            'SELECT c.oid::int AS oid, c.relname, c.relkind::text AS relkind, c.relrowsecurity, c.relforcerowsecurity, c.relispartition, ' +
            "(SELECT inhparent::regclass::text FROM pg_inherits WHERE inhrelid = c.oid) AS parent, " +
            "EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped) AS has_tenant, " +
            "(SELECT string_agg(pg_get_expr(p.polqual, p.polrelid), ' | ') FROM pg_policy p WHERE p.polrelid = c.oid) AS quals " +
            "FROM pg_class c WHERE c.relnamespace = 'bulkhead'::regnamespace AND c.relkind IN ('r', 'p') ORDER BY c.relname",
        },
      ]);
      const rows = tables!.rows;
      const parents = rows.filter((r) => !r.relispartition).map((r) => r.relname as string);
      assert.deepEqual(parents.sort(), [...TENANT_TABLES, ...INTERNAL_TABLES].sort());
      const partitions = rows.filter((r) => r.relispartition);
      const expectedPartitions = PARTITIONED.flatMap((p) => Array.from({ length: PARTITIONS }, (_, i) => `${p}_p${i}`)).sort();
      assert.deepEqual(partitions.map((r) => r.relname as string).sort(), expectedPartitions);

      for (const r of rows) {
        if ((INTERNAL_TABLES as readonly string[]).includes(r.relname as string)) continue;
        assert.equal(r.relrowsecurity, true, `${r.relname}: RLS not enabled`);
        assert.equal(r.relforcerowsecurity, true, `${r.relname}: RLS not forced`);
        assert.ok(r.quals, `${r.relname}: no policy`);
        if ((PLATFORM_ONLY as readonly string[]).includes(r.relname as string)) {
          assert.equal(r.quals, "(current_setting('bulkhead.scope'::text, true) = 'platform'::text)", `${r.relname}: platform policy`);
        } else if (r.has_tenant) {
          // NOTES.md: without nullif a reset setting ('') raises instead of matching nothing.
          assert.match(r.quals as string, /tenant_id = \(?NULLIF\(current_setting\('bulkhead\.tenant_id'::text, true\), ''::text\)\)?::uuid/i, `${r.relname}: policy`);
        }
      }
      for (const p of partitions) assert.match(p.parent as string, /^(bulkhead\.)?(records|unique_values|index_values|audit_events)$/);

      // Not one privilege, table-wide or on any column, on a partition or an internal table.
      const unreachable = rows.filter((r) => r.relispartition || (INTERNAL_TABLES as readonly string[]).includes(r.relname as string));
      const checks: Statement[] = unreachable.map((r) => ({
        text:
          `SELECT ${PRIVILEGES.map((p) => `has_table_privilege($1, $2::int::oid, '${p}') AS "${p}"`).join(', ')}, ` +
          `${['SELECT', 'INSERT', 'UPDATE', 'REFERENCES'].map((p) => `has_any_column_privilege($1, $2::int::oid, '${p}') AS "col_${p}"`).join(', ')}`,
        values: [t.db.appRole, r.oid],
      }));
      const results = await su.batch(checks);
      for (const [i, r] of results.entries()) {
        for (const [privilege, held] of Object.entries(r.rows[0]!)) {
          assert.equal(held, false, `${unreachable[i]!.relname}: the application role holds ${privilege}`);
        }
      }
      // The parents are reachable (the application needs them), so the check above is not vacuous.
      const [parent] = await su.batch([{ text: "SELECT has_table_privilege($1, 'bulkhead.records', 'SELECT') AS ok", values: [t.db.appRole] }]);
      assert.equal(parent!.rows[0]!.ok, true);
    });

    it('RLS alone: in tenant B\'s context, queries without the tenant predicate or naming A read nothing of A', async () => {
      const p = await seedPair(t);
      const B: Context = { tenant: p.b.id, scope: 'tenant' };
      const [counts] = await su.batch([
        {
          text:
            'SELECT (SELECT count(*) FROM bulkhead.records WHERE tenant_id = $1)::int AS a_records, (SELECT count(*) FROM bulkhead.records WHERE tenant_id = $2)::int AS b_records, ' +
            '(SELECT count(*) FROM bulkhead.unique_values WHERE tenant_id = $2)::int AS b_unique, (SELECT count(*) FROM bulkhead.index_values WHERE tenant_id = $2)::int AS b_index',
          values: [p.a.id, p.b.id],
        },
      ]);
      const expected = counts!.rows[0]!;
      assert.equal(expected.a_records, 4);
      assert.equal(expected.b_records, 2);

      // Unfiltered: only B's rows come back, as many as B has.
      const unfiltered = await asApp(t, su, B, [
        { text: 'SELECT * FROM bulkhead.records' },
        { text: 'SELECT * FROM bulkhead.unique_values' },
        { text: 'SELECT * FROM bulkhead.index_values' },
        { text: 'SELECT * FROM bulkhead.collections' },
        { text: 'SELECT * FROM bulkhead.collection_versions' },
        { text: 'SELECT * FROM bulkhead.tenants' },
        { text: 'SELECT * FROM bulkhead.tenant_history' },
        { text: 'SELECT * FROM bulkhead.operator_tokens' },
        { text: 'SELECT * FROM bulkhead.records FOR UPDATE' },
      ]);
      const [records, unique, index, collections, versions, tenants, history, operators, locked] = unfiltered;
      assert.equal(records!.rows.length, expected.b_records);
      assert.equal(unique!.rows.length, expected.b_unique);
      assert.equal(index!.rows.length, expected.b_index);
      assert.ok((expected.b_unique as number) > 0 && (expected.b_index as number) > 0);
      assert.deepEqual(collections!.rows.map((r) => r.name), ['notes']);
      assert.equal(versions!.rows.length, 1);
      assert.deepEqual(tenants!.rows.map((r) => r.id), [p.b.id]);
      assert.equal(history!.rows.length, 0, 'a tenant scope sees no lifecycle history');
      assert.equal(operators!.rows.length, 0, 'a tenant scope sees no operator token');
      assert.equal(locked!.rows.length, expected.b_records);
      for (const r of [records, unique, index, collections, versions, locked]) {
        for (const row of r!.rows) assert.equal(row.tenant_id, p.b.id);
      }
      assert.ok(!JSON.stringify(unfiltered.map((r) => r.rows)).includes(p.aMark));

      // Naming A outright, by tenant, by id or by value.
      const aimed = await asApp(t, su, B, [
        { text: 'SELECT * FROM bulkhead.records WHERE tenant_id = $1', values: [p.a.id] },
        { text: 'SELECT * FROM bulkhead.records WHERE id IN (SELECT jsonb_array_elements_text($1::text::jsonb)::uuid)', values: [JSON.stringify(p.aIds)] },
        { text: "SELECT * FROM bulkhead.records WHERE data ->> 'title' LIKE $1", values: [`${p.aMark}%`] },
        { text: 'SELECT * FROM bulkhead.records WHERE tenant_id IN ($1, $2) AND tenant_id <> $2', values: [p.a.id, p.b.id] },
        { text: "SELECT * FROM bulkhead.records WHERE collection = 'a_only'" },
        { text: 'SELECT count(*)::int AS n FROM bulkhead.records WHERE tenant_id = $1', values: [p.a.id] },
        { text: 'SELECT * FROM bulkhead.unique_values WHERE tenant_id = $1', values: [p.a.id] },
        { text: 'SELECT * FROM bulkhead.index_values WHERE tenant_id = $1', values: [p.a.id] },
        { text: 'SELECT * FROM bulkhead.collections WHERE tenant_id = $1', values: [p.a.id] },
        { text: 'SELECT * FROM bulkhead.collection_versions WHERE tenant_id = $1', values: [p.a.id] },
        { text: 'SELECT * FROM bulkhead.tenants WHERE id = $1', values: [p.a.id] },
        { text: 'SELECT * FROM bulkhead.tenant_history WHERE tenant_id = $1', values: [p.a.id] },
        { text: 'SELECT * FROM bulkhead.records WHERE tenant_id = $1 FOR UPDATE', values: [p.a.id] },
      ]);
      for (const [i, r] of aimed.entries()) {
        if (r.rows[0] && 'n' in r.rows[0]) assert.equal(r.rows[0].n, 0, `statement ${i}`);
        else assert.equal(r.rows.length, 0, `statement ${i} saw ${r.rows.length} rows`);
      }
    });

    it('RLS alone: writes aimed at tenant A from B\'s context change nothing (0 rows) or are refused (42501)', async () => {
      const p = await seedPair(t);
      const B: Context = { tenant: p.b.id, scope: 'tenant' };
      const before = await snapshot(su, p.a.id);
      const A = p.a.id;
      const aRecord = p.aIds[0]!;
      const zero: Array<[string, Statement]> = [
        ['update records by tenant', { text: `UPDATE bulkhead.records SET data = '{"title":"pwned"}' WHERE tenant_id = $1`, values: [A] }],
        ['update records by id', { text: `UPDATE bulkhead.records SET data = '{"title":"pwned"}' WHERE id = $1`, values: [aRecord] }],
        ['update records by value', { text: `UPDATE bulkhead.records SET version = 99 WHERE data ->> 'title' LIKE $1`, values: [`${p.aMark}%`] }],
        ['delete records by tenant', { text: 'DELETE FROM bulkhead.records WHERE tenant_id = $1', values: [A] }],
        ['delete records by id', { text: 'DELETE FROM bulkhead.records WHERE id IN (SELECT jsonb_array_elements_text($1::text::jsonb)::uuid)', values: [JSON.stringify(p.aIds)] }],
        ['delete unique values', { text: 'DELETE FROM bulkhead.unique_values WHERE tenant_id = $1', values: [A] }],
        ['delete index values', { text: 'DELETE FROM bulkhead.index_values WHERE tenant_id = $1', values: [A] }],
        ['update collections', { text: `UPDATE bulkhead.collections SET definition = '{"fields":{}}', version = version + 1 WHERE tenant_id = $1`, values: [A] }],
        ['update tenant A', { text: "UPDATE bulkhead.tenants SET name = 'pwned', status = 'suspended' WHERE id = $1", values: [A] }],
      ];
      for (const [what, statement] of zero) {
        const [r] = await asApp(t, su, B, [statement]);
        assert.equal(r!.rowCount, 0, what);
      }

      const refused: Array<[string, Statement, RegExp]> = [
        ['insert a record for A', {
          text: "INSERT INTO bulkhead.records (tenant_id, collection, id, data, schema_version, created_by, updated_by) VALUES ($1, 'notes', gen_random_uuid(), '{\"title\":\"planted\"}', 1, 'x', 'x')",
          values: [A],
        }, RLS_DENIED],
        ['insert a unique value for A', {
          text: "INSERT INTO bulkhead.unique_values (tenant_id, collection, field, key, record_id) VALUES ($1, 'notes', 'code', 's:planted', $2)",
          values: [A, aRecord],
        }, RLS_DENIED],
        ['insert an index value for A', {
          text: "INSERT INTO bulkhead.index_values (tenant_id, collection, field, key, record_id) VALUES ($1, 'notes', 'tag', 's:planted', $2)",
          values: [A, aRecord],
        }, RLS_DENIED],
        ['insert a collection for A', { text: "INSERT INTO bulkhead.collections (tenant_id, name, version, definition) VALUES ($1, 'planted', 1, '{\"fields\":{}}')", values: [A] }, RLS_DENIED],
        ['insert a collection version for A', {
          text: "INSERT INTO bulkhead.collection_versions (tenant_id, name, version, definition, created_by) VALUES ($1, 'notes', 99, '{\"fields\":{}}', 'x')",
          values: [A],
        }, RLS_DENIED],
        ['insert a tenant', { text: "INSERT INTO bulkhead.tenants (id, slug, name, status, tier, region) VALUES (gen_random_uuid(), 'planted', 'p', 'active', 'pool', 'local')" }, RLS_DENIED],
        ['insert history for A', { text: "INSERT INTO bulkhead.tenant_history (tenant_id, event, to_status, actor) VALUES ($1, 'planted', 'active', 'x')", values: [A] }, RLS_DENIED],
        ['plant an operator token', { text: "INSERT INTO bulkhead.operator_tokens (hash, label) VALUES ('sha256:' || repeat('0', 64), 'planted')" }, RLS_DENIED],
        // A tenant scope sees its own registry row but may not write it (WITH CHECK is platform-only).
        ['reactivate its own tenant row', { text: "UPDATE bulkhead.tenants SET status = 'active' WHERE id = $1", values: [p.b.id] }, RLS_DENIED],
        ['move a record of B into A', { text: 'INSERT INTO bulkhead.records SELECT $1::uuid, collection, gen_random_uuid(), data, version, schema_version, created_at, updated_at, created_by, updated_by FROM bulkhead.records', values: [A] }, RLS_DENIED],
        ['delete collections', { text: 'DELETE FROM bulkhead.collections WHERE tenant_id = $1', values: [A] }, PRIVILEGE_DENIED],
        ['update collection versions', { text: "UPDATE bulkhead.collection_versions SET created_by = 'x' WHERE tenant_id = $1", values: [A] }, PRIVILEGE_DENIED],
        ['delete collection versions', { text: 'DELETE FROM bulkhead.collection_versions WHERE tenant_id = $1', values: [A] }, PRIVILEGE_DENIED],
        ['update unique values', { text: "UPDATE bulkhead.unique_values SET key = 's:x' WHERE tenant_id = $1", values: [A] }, PRIVILEGE_DENIED],
        ['update index values', { text: "UPDATE bulkhead.index_values SET key = 's:x' WHERE tenant_id = $1", values: [A] }, PRIVILEGE_DENIED],
        ['delete tenants', { text: 'DELETE FROM bulkhead.tenants WHERE id = $1', values: [A] }, PRIVILEGE_DENIED],
        ['update history', { text: "UPDATE bulkhead.tenant_history SET actor = 'x' WHERE tenant_id = $1", values: [A] }, PRIVILEGE_DENIED],
        ['truncate records', { text: 'TRUNCATE bulkhead.records' }, PRIVILEGE_DENIED],
        ['truncate unique values', { text: 'TRUNCATE bulkhead.unique_values' }, PRIVILEGE_DENIED],
      ];
      for (const [what, statement, message] of refused) {
        await rejectsSql(asApp(t, su, B, [statement]), '42501', message, what);
      }

      // Even an unqualified DELETE reaches B's own rows only.
      const [deleted] = await asApp(t, su, B, [{ text: 'DELETE FROM bulkhead.records' }]);
      assert.equal(deleted!.rowCount, p.bIds.length);
      assert.equal(await snapshot(su, p.a.id), before, "tenant A's data changed");
    });

    it('RLS alone: a missing, empty, platform or malformed tenant context matches no tenant row (fail closed)', async () => {
      const p = await seedPair(t);
      const before = await snapshot(su, p.a.id);
      const probe: Statement[] = [
        { text: 'SELECT count(*)::int AS n FROM bulkhead.records' },
        { text: 'SELECT count(*)::int AS n FROM bulkhead.records WHERE tenant_id = $1', values: [p.a.id] },
        { text: 'SELECT count(*)::int AS n FROM bulkhead.unique_values' },
        { text: 'SELECT count(*)::int AS n FROM bulkhead.index_values' },
        { text: 'SELECT count(*)::int AS n FROM bulkhead.collections' },
        { text: 'SELECT count(*)::int AS n FROM bulkhead.collection_versions' },
        { text: `UPDATE bulkhead.records SET data = '{}' WHERE tenant_id = $1`, values: [p.a.id] },
        { text: 'DELETE FROM bulkhead.records WHERE tenant_id = $1', values: [p.a.id] },
      ];
      const expectNothing = (results: StatementResult[], what: string): void => {
        for (const [i, r] of results.entries()) {
          if (i < 6) assert.equal(r.rows[0]!.n, 0, `${what}: statement ${i}`);
          else assert.equal(r.rowCount, 0, `${what}: statement ${i}`);
        }
      };
      const insertForA: Statement = {
        text: "INSERT INTO bulkhead.records (tenant_id, collection, id, data, schema_version, created_by, updated_by) VALUES ($1, 'notes', gen_random_uuid(), '{}', 1, 'x', 'x')",
        values: [p.a.id],
      };

      // No tenant setting at all in this transaction (the role alone).
      expectNothing(await asApp(t, su, 'role-only', probe), 'role only');
      await rejectsSql(asApp(t, su, 'role-only', [insertForA]), '42501', RLS_DENIED, 'insert with no context');
      // The setting reset to '' (what current_setting returns once the setting existed): nullif makes it match nothing.
      expectNothing(await asApp(t, su, { tenant: '', scope: 'tenant' }, probe), 'empty tenant');
      await rejectsSql(asApp(t, su, { tenant: '', scope: 'tenant' }, [insertForA]), '42501', RLS_DENIED, 'insert with an empty tenant');
      // The platform scope reads the registry, never tenant data.
      expectNothing(await asApp(t, su, { tenant: '', scope: 'platform' }, probe), 'platform');
      await rejectsSql(asApp(t, su, { tenant: '', scope: 'platform' }, [insertForA]), '42501', RLS_DENIED, 'insert from the platform scope');
      // A tenant setting that is not a UUID raises rather than matching anything.
      await rejectsSql(asApp(t, su, { tenant: 'not-a-uuid', scope: 'tenant' }, [probe[0]!]), '22P02', /uuid/, 'a malformed tenant');

      if (kind === 'postgres') {
        // A connection on which the setting never existed: current_setting(..., true) is NULL, not ''.
        const fresh = await t.db.engine({ maxConnections: 1 });
        const [setting, ...results] = await asApp(t, fresh, 'role-only', [
          { text: "SELECT current_setting('bulkhead.tenant_id', true) AS v" },
          ...probe,
        ]);
        assert.equal(setting!.rows[0]!.v, null);
        expectNothing(results, 'fresh connection');
        await fresh.close();
      }
      assert.equal(await snapshot(su, p.a.id), before);
    });

    it('partition and identity keys are immutable, for the application role and for the superuser alike', async () => {
      const p = await seedPair(t);
      const A: Context = { tenant: p.a.id, scope: 'tenant' };
      const beforeA = await snapshot(su, p.a.id);
      const beforeB = await snapshot(su, p.b.id);
      const id = p.aIds[0]!;
      const keyChanges: Array<[string, Statement]> = [
        ['record tenant_id', { text: 'UPDATE bulkhead.records SET tenant_id = $2 WHERE tenant_id = $1 AND id = $3', values: [p.a.id, p.b.id, id] }],
        ['record collection', { text: "UPDATE bulkhead.records SET collection = 'a_only' WHERE tenant_id = $1 AND id = $2", values: [p.a.id, id] }],
        ['record collection (unknown)', { text: "UPDATE bulkhead.records SET collection = 'x' WHERE tenant_id = $1 AND id = $2", values: [p.a.id, id] }],
        ['record id', { text: 'UPDATE bulkhead.records SET id = gen_random_uuid() WHERE tenant_id = $1 AND id = $2', values: [p.a.id, id] }],
        ['every record id', { text: 'UPDATE bulkhead.records SET id = gen_random_uuid() WHERE tenant_id = $1', values: [p.a.id] }],
        ['collection tenant_id', { text: "UPDATE bulkhead.collections SET tenant_id = $2 WHERE tenant_id = $1 AND name = 'a_only'", values: [p.a.id, p.b.id] }],
        ['collection name', { text: "UPDATE bulkhead.collections SET name = 'renamed' WHERE tenant_id = $1 AND name = 'a_only'", values: [p.a.id] }],
      ];
      for (const [what, statement] of keyChanges) {
        await rejectsSql(asApp(t, su, A, [statement]), '23514', /immutable/, `application role: ${what}`);
        // The trigger holds without RLS in the way: the superuser is refused too.
        await rejectsSql(su.batch([statement]), '23514', /immutable/, `superuser: ${what}`);
      }
      const tenantId: Statement = { text: 'UPDATE bulkhead.tenants SET id = gen_random_uuid() WHERE id = $1', values: [p.a.id] };
      await rejectsSql(asApp(t, su, { tenant: '', scope: 'platform' }, [tenantId]), '23514', /immutable/, 'platform scope: tenant id');
      await rejectsSql(su.batch([tenantId]), '23514', /immutable/, 'superuser: tenant id');
      // Changing a non-key column of the same rows works, so the refusals above are about the keys.
      const [ok] = await asApp(t, su, A, [{ text: 'UPDATE bulkhead.records SET version = version WHERE tenant_id = $1 AND id = $2', values: [p.a.id, id] }]);
      assert.equal(ok!.rowCount, 1);
      assert.equal(await snapshot(su, p.a.id), beforeA);
      assert.equal(await snapshot(su, p.b.id), beforeB);
    });

    // Last in this suite: it switches RLS off for the whole test database, and restores it.
    it('the application layer alone: with RLS disabled, tenant B\'s token still reaches nothing of A', async () => {
      const p = await seedPair(t);
      const before = await snapshot(su, p.a.id);
      const [rls] = await su.batch([
        { text: "SELECT c.oid::regclass::text AS name FROM pg_class c WHERE c.relnamespace = 'bulkhead'::regnamespace AND c.relrowsecurity ORDER BY 1" },
      ]);
      const tables = rls!.rows.map((r) => r.name as string);
      assert.equal(tables.length, TENANT_TABLES.length + PARTITIONED.length * PARTITIONS);
      const leakProbe: Statement = { text: 'SELECT count(*)::int AS n FROM bulkhead.records WHERE tenant_id = $1', values: [p.a.id] };
      await su.script(tables.map((name) => `ALTER TABLE ${name} NO FORCE ROW LEVEL SECURITY; ALTER TABLE ${name} DISABLE ROW LEVEL SECURITY;`).join('\n'));
      try {
        // The database wall is really down: the application role in B's context now reads A's rows.
        const [leak] = await asApp(t, su, { tenant: p.b.id, scope: 'tenant' }, [leakProbe]);
        assert.equal(leak!.rows[0]!.n, 4, 'RLS is still on; this test would pass vacuously');

        const B = p.b.token;
        const noA = (text: string, what: string): void => {
          assert.ok(!text.includes(p.aMark), `${what}: A's values in the response`);
          for (const id of p.aIds) assert.ok(!text.includes(id), `${what}: an id of A in the response`);
        };
        for (const id of p.aIds) {
          for (const collection of ['notes', 'a_only']) {
            const url = `/v1/collections/${collection}/records/${id}`;
            const code = collection === 'notes' ? 'RECORD_NOT_FOUND' : 'COLLECTION_NOT_FOUND';
            const got = await request(t.app, 'GET', url, { token: B });
            assert.equal(got.status, 404, `GET ${url}`);
            assert.equal(got.body.code, code);
            const patched = await request(t.app, 'PATCH', url, { token: B, body: { fields: { title: 'pwned' } } });
            assert.equal(patched.status, 404, `PATCH ${url}`);
            assert.equal(patched.body.code, code);
            const deleted = await request(t.app, 'DELETE', url, { token: B });
            assert.equal(deleted.status, 404, `DELETE ${url}`);
            assert.equal(deleted.body.code, code);
            for (const r of [got, patched, deleted]) noA(r.text, url);
          }
        }

        // Lists with filters, sorts and cursors aimed at A's values return B's rows only.
        const aCursor = Buffer.from(JSON.stringify({ s: 'id', i: '00000000-0000-7000-8000-000000000000' })).toString('base64url');
        const aTitleCursor = Buffer.from(JSON.stringify({ s: 'title', v: `${p.aMark}-title-0`, i: p.aIds[0] })).toString('base64url');
        const lists: Array<[Record<string, string>, number]> = [
          [{}, 2],
          [{ filter: JSON.stringify({ title: { eq: `${p.aMark}-title-0` } }) }, 0],
          [{ filter: JSON.stringify({ code: { eq: `${p.aMark}-code-0` } }) }, 0],
          [{ filter: JSON.stringify({ tag: { eq: `${p.aMark}-tag` } }) }, 0],
          [{ filter: JSON.stringify({ title: { prefix: p.aMark } }) }, 0],
          [{ filter: JSON.stringify({ title: { contains: 'mark' } }) }, 2],
          [{ filter: JSON.stringify({ title: { in: [`${p.aMark}-title-0`, `${p.aMark}-title-1`] } }) }, 0],
          [{ filter: JSON.stringify({ title: { ne: 'nothing' } }) }, 2],
          [{ filter: JSON.stringify({ ref: { isNull: true } }) }, 2],
          [{ sort: '-title', limit: '1000' }, 2],
          [{ cursor: aCursor }, 2],
          [{ sort: 'title', cursor: aTitleCursor }, 2],
        ];
        for (const [query, count] of lists) {
          const qs = new URLSearchParams(query).toString();
          const listed = await request(t.app, 'GET', `/v1/collections/notes/records${qs ? `?${qs}` : ''}`, { token: B });
          assert.equal(listed.status, 200, `${qs}: ${listed.text}`);
          assert.equal(listed.body.records.length, count, qs);
          for (const r of listed.body.records) assert.ok(p.bIds.includes(r.id), qs);
          noA(listed.text, qs);
        }
        const aOnly = await request(t.app, 'GET', '/v1/collections/a_only/records', { token: B });
        assert.equal(aOnly.status, 404);
        assert.equal(aOnly.body.code, 'COLLECTION_NOT_FOUND');
        const aDefinition = await request(t.app, 'GET', '/v1/collections/a_only', { token: B });
        assert.equal(aDefinition.status, 404);
        assert.equal(aDefinition.body.code, 'COLLECTION_NOT_FOUND');
        const plant = await request(t.app, 'POST', '/v1/collections/a_only/records', { token: B, body: { fields: { title: 'planted' } } });
        assert.equal(plant.status, 404);
        assert.equal(plant.body.code, 'COLLECTION_NOT_FOUND');
        const collections = await request(t.app, 'GET', '/v1/collections', { token: B });
        assert.equal(collections.status, 200);
        assert.deepEqual(collections.body.collections.map((c: { name: string }) => c.name), ['notes']);
        // A reference to A's record is refused exactly like a reference to nothing.
        const ref = await request(t.app, 'POST', '/v1/collections/notes/records', { token: B, body: { fields: { title: 'x', ref: p.aIds[0] } } });
        assert.equal(ref.status, 400, ref.text);
        assert.equal(ref.body.code, 'RECORD_REFERENCE_NOT_FOUND');
        // B's definition of a collection named like A's creates B's own and leaves A's alone.
        const redefine = await request(t.app, 'PUT', '/v1/collections/a_only', { token: B, body: { fields: { other: { type: 'integer' } } } });
        assert.equal(redefine.status, 201, redefine.text);
        assert.equal(redefine.body.version, 1);

        // Still down at the end, so every request above ran without the database wall.
        const [still] = await asApp(t, su, { tenant: p.b.id, scope: 'tenant' }, [leakProbe]);
        assert.equal(still!.rows[0]!.n, 4);
      } finally {
        await su.script(tables.map((name) => `ALTER TABLE ${name} ENABLE ROW LEVEL SECURITY; ALTER TABLE ${name} FORCE ROW LEVEL SECURITY;`).join('\n'));
      }
      const [restored] = await asApp(t, su, { tenant: p.b.id, scope: 'tenant' }, [leakProbe]);
      assert.equal(restored!.rows[0]!.n, 0);
      assert.equal(await snapshot(su, p.a.id), before, "tenant A's data changed");
      // A still reads its records, unchanged.
      for (const id of p.aIds.slice(0, 3)) {
        const own = await request(t.app, 'GET', `/v1/collections/notes/records/${id}`, { token: p.a.token });
        assert.equal(own.status, 200);
        assert.ok((own.body.fields.title as string).startsWith(p.aMark));
      }
    });
  });
}
