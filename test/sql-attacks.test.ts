/**
 * SQL-level attacks in the spirit of PostgreSQL's src/test/regress/sql/rowsecurity.sql:
 * a leaky function that tries to see rows before the policy filters them, unique and reference
 * violations that could reveal another tenant's values, writes straight into a partition, and
 * SQL or context changes smuggled through every string the API accepts.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { uuidv7 } from '../src/ids.js';
import type { Engine, Statement, StatementResult } from '../src/store/engine.js';
import { CONTEXT_SQL } from '../src/store/store.js';
import { BACKENDS, createTenant, mintToken, openTestBulkhead, request, tenantSnapshot, type TestBulkhead, type TestResponse } from './support/backends.js';
import { assertProblem, rejectsSql } from './support/assertions.js';


/** Text a problem document must never carry: SQL, the server's key detail, storage names. */
const DATABASE_TEXT = /Key \(|duplicate key|violates|constraint|unique_values|index_values|bulkhead\.(?!dev\/)|SQLSTATE|INSERT|SELECT|relation/i;

const NOTES = {
  fields: {
    title: { type: 'string' },
    code: { type: 'string', unique: true },
    tag: { type: 'string', indexed: true },
  },
};

interface Tenant {
  readonly id: string;
  readonly slug: string;
  readonly token: string;
}

interface Pair {
  readonly a: Tenant;
  readonly b: Tenant;
  readonly aIds: string[];
  readonly bIds: string[];
  readonly aMark: string;
  readonly bMark: string;
}

/** Two tenants with a `notes` collection each; every value of A carries `aMark`, every value of B `bMark`. */
async function seedPair(t: TestBulkhead, prefix: string): Promise<Pair> {
  const tag = randomBytes(4).toString('hex');
  const a = await createTenant(t, `${prefix}-a-${tag}`);
  const b = await createTenant(t, `${prefix}-b-${tag}`);
  const aMark = `amark${tag}`;
  const bMark = `bmark${tag}`;
  const ids = { a: [] as string[], b: [] as string[] };
  for (const [key, tenant, mark] of [['a', a, aMark], ['b', b, bMark]] as const) {
    const put = await request(t.app, 'PUT', '/v1/collections/notes', { token: tenant.token, body: NOTES });
    assert.equal(put.status, 201, put.text);
    for (let i = 0; i < 2; i++) {
      const created = await request(t.app, 'POST', '/v1/collections/notes/records', {
        token: tenant.token,
        body: { fields: { title: `${mark}-title-${i}`, code: `${mark}-code-${i}`, tag: `${mark}-tag` } },
      });
      assert.equal(created.status, 201, created.text);
      ids[key].push(created.body.id);
    }
  }
  return { a, b, aIds: ids.a, bIds: ids.b, aMark, bMark };
}

const snapshot = (su: Engine, tenantId: string): Promise<string> => tenantSnapshot(su, tenantId);

/** A problem document without what differs per request. */
function comparable(body: Record<string, unknown>): Record<string, unknown> {
  const { requestId: _requestId, instance: _instance, ...rest } = body;
  return rest;
}

for (const kind of BACKENDS) {
  describe(`SQL-level attacks (${kind})`, () => {
    let t: TestBulkhead;
    /** The superuser connection that created the test database (bypasses RLS). */
    let su: Engine;

    before(async () => {
      t = await openTestBulkhead(kind);
      su = await t.db.engine();
      // rowsecurity.sql's leaky function: cheap enough that the planner would like to run it first.
      // Besides the notice, it logs what it saw in a table, so the leak is observable on PGlite too,
      // whose engine gives no access to notices.
      await su.script(`
CREATE TABLE public.f_leak_log (seen text NOT NULL);
GRANT INSERT ON public.f_leak_log TO ${t.db.appRole};
CREATE FUNCTION public.f_leak(text) RETURNS boolean LANGUAGE plpgsql COST 0.0000001 AS $fn$
BEGIN
  RAISE NOTICE 'f_leak => %', $1;
  INSERT INTO public.f_leak_log (seen) VALUES ($1);
  RETURN true;
END
$fn$;
GRANT EXECUTE ON FUNCTION public.f_leak(text) TO ${t.db.appRole};`);
    });
    after(async () => {
      await t?.close();
    });

    it('a leaky function (f_leak) in a query never sees another tenant\'s rows', async () => {
      const p = await seedPair(t, 'leak');
      const secrets = [p.aMark, p.a.id, p.a.slug, ...p.aIds];
      const queries: Array<{ text: string; values?: unknown[]; seesB: boolean }> = [
        { text: 'SELECT * FROM bulkhead.records WHERE public.f_leak(data::text)', seesB: true },
        { text: 'SELECT * FROM bulkhead.records WHERE tenant_id = $1 AND public.f_leak(data::text)', values: [p.b.id], seesB: true },
        { text: 'SELECT * FROM bulkhead.records WHERE public.f_leak(data::text) AND tenant_id = $1', values: [p.a.id], seesB: false },
        { text: 'SELECT * FROM bulkhead.records WHERE public.f_leak(tenant_id::text || id::text || data::text) OR tenant_id = $1', values: [p.a.id], seesB: true },
        { text: 'SELECT * FROM (SELECT * FROM bulkhead.records OFFSET 0) s WHERE public.f_leak(s.data::text)', seesB: true },
        { text: 'SELECT public.f_leak(data::text) FROM bulkhead.records', seesB: true },
        { text: 'SELECT r.id FROM bulkhead.records r JOIN bulkhead.unique_values u ON u.record_id = r.id WHERE public.f_leak(u.key || r.data::text)', seesB: true },
        { text: 'SELECT * FROM bulkhead.unique_values WHERE public.f_leak(key || record_id::text)', seesB: true },
        { text: 'SELECT * FROM bulkhead.index_values WHERE public.f_leak(key || record_id::text)', seesB: true },
        { text: 'SELECT * FROM bulkhead.collections WHERE public.f_leak(tenant_id::text || name || definition::text)', seesB: true },
        { text: 'SELECT * FROM bulkhead.collection_versions WHERE public.f_leak(tenant_id::text || definition::text)', seesB: true },
        { text: 'SELECT * FROM bulkhead.tenants WHERE public.f_leak(id::text || slug || name)', seesB: true },
        { text: 'UPDATE bulkhead.records SET version = version WHERE public.f_leak(tenant_id::text || data::text)', seesB: true },
        { text: 'DELETE FROM bulkhead.records WHERE NOT public.f_leak(tenant_id::text || data::text)', seesB: true },
      ];
      const readLog = async (): Promise<string[]> => {
        const [, log] = await su.batch([{ text: 'SELECT 1' }, { text: 'SELECT seen FROM public.f_leak_log' }]);
        await su.batch([{ text: 'TRUNCATE public.f_leak_log' }]);
        return log!.rows.map((r) => r.seen as string);
      };
      await readLog();

      // The channel works: run by the superuser (no RLS), f_leak sees A's rows.
      await su.batch([{ text: 'SELECT * FROM bulkhead.records WHERE public.f_leak(data::text)' }]);
      const open = await readLog();
      assert.ok(open.some((s) => s.includes(p.aMark)), 'f_leak saw nothing of A even without RLS; the test would be vacuous');

      // Through the Store, in B's context (the request path's own transaction setup).
      for (const q of queries) {
        await t.bh.store.tenant(p.b.id).batch([{ text: q.text, values: q.values ?? [] }]);
        const seen = await readLog();
        for (const s of seen) for (const secret of secrets) assert.ok(!s.includes(secret), `${q.text}: f_leak saw ${secret}`);
        if (q.seesB) assert.ok(seen.length > 0, `${q.text}: f_leak never ran`);
      }
      const [count] = await su.batch([{ text: 'SELECT count(*)::int AS n FROM bulkhead.records WHERE tenant_id = $1', values: [p.a.id] }]);
      assert.equal(count!.rows[0]!.n, 2);

      if (kind === 'postgres') {
        // The notices themselves, as rowsecurity.sql reads them, on a connection of our own.
        const client = new pg.Client({ connectionString: t.db.url });
        const notices: string[] = [];
        client.on('notice', (n) => notices.push(String(n.message)));
        await client.connect();
        try {
          await client.query('SELECT * FROM bulkhead.records WHERE public.f_leak(data::text)');
          assert.ok(notices.some((n) => n.startsWith('f_leak => ') && n.includes(p.aMark)), 'no notice as superuser; the test would be vacuous');
          notices.length = 0;
          for (const q of queries) {
            await client.query('BEGIN');
            await client.query(CONTEXT_SQL, [t.db.appRole, p.b.id, 'tenant']);
            await client.query(q.text, q.values ?? []);
            await client.query('ROLLBACK');
          }
          assert.ok(notices.length > 0 && notices.every((n) => n.startsWith('f_leak => ')));
          for (const n of notices) for (const secret of secrets) assert.ok(!n.includes(secret), `a notice showed ${secret}`);
          assert.ok(notices.some((n) => n.includes(p.bMark)));
        } finally {
          await client.end();
        }
        await readLog();
      }
    });

    it('uniqueness is per tenant, and a unique violation reveals nothing of another tenant', async () => {
      const p = await seedPair(t, 'uniq');
      const definition = { fields: { code: { type: 'string', unique: true }, email: { type: 'email', unique: true }, label: { type: 'string' } } };
      for (const tenant of [p.a, p.b]) {
        const put = await request(t.app, 'PUT', '/v1/collections/accounts', { token: tenant.token, body: definition });
        assert.equal(put.status, 201, put.text);
      }
      const shared = `SHARED-${p.aMark}`;
      const email = `shared.${p.aMark}@example.com`;
      const post = (tenant: Tenant, fields: Record<string, unknown>) =>
        request(t.app, 'POST', '/v1/collections/accounts/records', { token: tenant.token, body: { fields } });

      const a1 = await post(p.a, { code: shared, email, label: 'a' });
      assert.equal(a1.status, 201, a1.text);
      // B stores the very same values: uniqueness is within the tenant, so A's value neither collides nor shows.
      const b1 = await post(p.b, { code: shared, email, label: 'b' });
      assert.equal(b1.status, 201, b1.text);
      const b2 = await post(p.b, { code: `other-${p.bMark}`, label: 'b2' });
      assert.equal(b2.status, 201, b2.text);

      const violations: Array<[string, TestResponse, string]> = [
        ['B duplicates its code', await post(p.b, { code: shared, label: 'dup' }), 'code'],
        ['B duplicates its email (other case)', await post(p.b, { code: `x-${p.bMark}`, email: email.toUpperCase() }), 'email'],
        ['B patches a record to its taken code', await request(t.app, 'PATCH', `/v1/collections/accounts/records/${b2.body.id}`, { token: p.b.token, body: { fields: { code: shared } } }), 'code'],
        ['A duplicates its own code', await post(p.a, { code: shared }), 'code'],
      ];
      for (const [what, res, field] of violations) {
        assertProblem(res, 409, 'RECORD_UNIQUE_VIOLATION', what);
        assert.equal(res.body.field, field, what);
        for (const secret of [shared, shared.toLowerCase(), email, email.toUpperCase(), p.a.id, ...p.aIds, a1.body.id, b1.body.id]) {
          assert.ok(!res.text.includes(secret), `${what}: the problem shows ${secret}`);
        }
        assert.doesNotMatch(res.text, DATABASE_TEXT, what);
      }
      // A violation on a value only B has reads exactly like one on a value both have: nothing to infer.
      const onlyB = await post(p.b, { code: `other-${p.bMark}` });
      assertProblem(onlyB, 409, 'RECORD_UNIQUE_VIOLATION', 'B-only value');
      assert.deepEqual(comparable(onlyB.body), comparable(violations[0]![1].body));

      // Nothing of the failed writes was stored.
      const [counts] = await su.batch([
        {
          text:
            "SELECT tenant_id::text AS tenant, count(*)::int AS n FROM bulkhead.records WHERE collection = 'accounts' AND data ->> 'code' = $1 GROUP BY tenant_id",
          values: [shared],
        },
      ]);
      assert.deepEqual(
        Object.fromEntries(counts!.rows.map((r) => [r.tenant, r.n])),
        { [p.a.id]: 1, [p.b.id]: 1 },
      );
      const [bCount] = await su.batch([{ text: "SELECT count(*)::int AS n FROM bulkhead.records WHERE tenant_id = $1 AND collection = 'accounts'", values: [p.b.id] }]);
      assert.equal(bCount!.rows[0]!.n, 2);
    });

    it('a reference to another tenant\'s record is refused exactly like a reference to nothing', async () => {
      const p = await seedPair(t, 'fkey');
      const items = { fields: { note: { type: 'reference', collection: 'notes' } } };
      for (const tenant of [p.a, p.b]) {
        const put = await request(t.app, 'PUT', '/v1/collections/items', { token: tenant.token, body: items });
        assert.equal(put.status, 201, put.text);
      }
      const toA = await request(t.app, 'POST', '/v1/collections/items/records', { token: p.b.token, body: { fields: { note: p.aIds[0] } } });
      const toNothing = await request(t.app, 'POST', '/v1/collections/items/records', { token: p.b.token, body: { fields: { note: uuidv7() } } });
      for (const [what, res] of [['to A', toA], ['to nothing', toNothing]] as const) {
        assertProblem(res, 400, 'RECORD_REFERENCE_NOT_FOUND', what);
        assert.doesNotMatch(res.text, DATABASE_TEXT, what);
        for (const id of p.aIds) assert.ok(!res.text.includes(id), what);
      }
      assert.deepEqual(comparable(toA.body), comparable(toNothing.body));
      const own = await request(t.app, 'POST', '/v1/collections/items/records', { token: p.b.token, body: { fields: { note: p.bIds[0] } } });
      assert.equal(own.status, 201, own.text);
      const patched = await request(t.app, 'PATCH', `/v1/collections/items/records/${own.body.id}`, { token: p.b.token, body: { fields: { note: p.aIds[1] } } });
      assertProblem(patched, 400, 'RECORD_REFERENCE_NOT_FOUND', 'patch to A');
      assert.deepEqual(comparable(patched.body), comparable(toNothing.body));
    });

    it('the application role can neither read nor write any partition directly', async () => {
      const p = await seedPair(t, 'part');
      const [parts] = await su.batch([
        {
          text:
            "SELECT c.oid::regclass::text AS name, i.inhparent::regclass::text AS parent FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid " +
            "WHERE i.inhparent IN ('bulkhead.records'::regclass, 'bulkhead.unique_values'::regclass, 'bulkhead.index_values'::regclass) ORDER BY 1",
        },
      ]);
      const partitions = parts!.rows as Array<{ name: string; parent: string }>;
      assert.equal(partitions.length, 12);
      const B = p.b.id;
      const record = p.bIds[0]!;
      const scoped = (s: Statement): Promise<StatementResult[]> => t.bh.store.tenant(B).batch([s]);
      for (const { name, parent } of partitions) {
        const insert: Statement =
          /^(bulkhead\.)?records$/.test(parent)
            ? {
                text: `INSERT INTO ${name} (tenant_id, collection, id, data, schema_version, created_by, updated_by) VALUES ($1, 'notes', $2, '{}', 1, 'x', 'x')`,
                values: [B, uuidv7()],
              }
            : { text: `INSERT INTO ${name} (tenant_id, collection, field, key, record_id) VALUES ($1, 'notes', 'tag', 's:planted', $2)`, values: [B, record] };
        const attempts: Array<[string, Statement]> = [
          ['select', { text: `SELECT * FROM ${name}` }],
          ['select own rows', { text: `SELECT count(*) FROM ${name} WHERE tenant_id = $1`, values: [B] }],
          ['insert own row', insert],
          ['update', { text: `UPDATE ${name} SET tenant_id = tenant_id WHERE tenant_id = $1`, values: [B] }],
          ['delete', { text: `DELETE FROM ${name} WHERE tenant_id = $1`, values: [B] }],
          ['truncate', { text: `TRUNCATE ${name}` }],
          ['lock', { text: `SELECT * FROM ${name} FOR UPDATE` }],
        ];
        for (const [what, statement] of attempts) {
          await rejectsSql(scoped(statement), '42501', /permission denied/, `${name}: ${what}`);
        }
      }
      // The same row through the parent is accepted (RLS checks it), so the refusals are about the partitions.
      const viaParent = await scoped({
        text: "INSERT INTO bulkhead.records (tenant_id, collection, id, data, schema_version, created_by, updated_by) VALUES ($1, 'notes', $2, '{}', 1, 'x', 'x')",
        values: [B, uuidv7()],
      });
      assert.equal(viaParent[0]!.rowCount, 1);
    });

    it('SQL and context changes smuggled through every string input are stored verbatim or refused, and the context stays intact', async () => {
      const p = await seedPair(t, 'smug');
      const beforeA = await snapshot(su, p.a.id);
      const payloads = [
        "'; RESET ROLE; --",
        `'); SELECT set_config('bulkhead.tenant_id', '${p.a.id}', false); --`,
        `"); SELECT set_config('role', 'postgres', false); --`,
        'SET ROLE postgres',
        "'; SET ROLE postgres; SELECT '",
        'RESET ALL; DISCARD ALL; SET SESSION AUTHORIZATION postgres',
        '$1',
        '$2::text) OR (true',
        '\\',
        "\\'; --",
        '%',
        '_',
        '%_%',
        "''",
        '`',
        "x' OR '1'='1",
        '1; DROP TABLE bulkhead.records; --',
        '*/ OR 1=1 /*',
        '${tenant_id}',
        ':tenant_id ?',
        "E'\\x27'",
        'Ünïcödé 中文 𝕏 🎉 \u202e RTL',
        'control \u0001\u001f\u007f chars',
        '../../etc/passwd',
        'a/b?c=d&e#f',
      ];
      assert.equal(new Set(payloads).size, payloads.length);
      const B = p.b.token;
      const smuggle = {
        description: payloads.join(' | '),
        fields: {
          title: { type: 'string', indexed: true },
          body: { type: 'text' },
          code: { type: 'string', unique: true },
          kind: { type: 'enum', values: payloads },
          ...Object.fromEntries(payloads.map((v, i) => [`d${i}`, { type: 'string', default: v, description: v }])),
        },
      };
      const put = await request(t.app, 'PUT', '/v1/collections/smuggle', { token: B, body: smuggle });
      assert.equal(put.status, 201, put.text);
      const definition = await request(t.app, 'GET', '/v1/collections/smuggle', { token: B });
      assert.equal(definition.status, 200);
      assert.deepEqual(definition.body.fields.kind.values, payloads);
      for (const [i, v] of payloads.entries()) {
        assert.equal(definition.body.fields[`d${i}`].default, v);
        assert.equal(definition.body.fields[`d${i}`].description, v);
      }

      const rawProbe: Statement = {
        text:
          "SELECT current_user::text AS usr, session_user::text AS sess, current_setting('role') AS role, " +
          "current_setting('bulkhead.tenant_id', true) AS tenant, current_setting('bulkhead.scope', true) AS scope",
      };
      const scopedProbe: Statement = { text: "SELECT current_user::text AS usr, current_setting('bulkhead.tenant_id', true) AS tenant, current_setting('bulkhead.scope', true) AS scope" };
      const intact = async (what: string): Promise<void> => {
        // B still sees exactly B's notes, and nothing of A.
        const listed = await request(t.app, 'GET', '/v1/collections/notes/records', { token: B });
        assert.equal(listed.status, 200, what);
        assert.deepEqual(listed.body.records.map((r: { id: string }) => r.id).sort(), [...p.bIds].sort(), what);
        assert.ok(!listed.text.includes(p.aMark), what);
        // A fresh scoped transaction runs as the application role in its own context.
        const [scoped] = await t.bh.store.tenant(p.b.id).batch([scopedProbe]);
        assert.deepEqual(scoped!.rows[0], { usr: t.db.appRole, tenant: p.b.id, scope: 'tenant' }, what);
        // Outside a transaction, every pooled connection is back to the connecting user with no setting.
        const raws = await Promise.all(Array.from({ length: kind === 'postgres' ? 4 : 1 }, () => t.bh.store.engine.batch([rawProbe])));
        for (const [raw] of raws) {
          const row = raw!.rows[0]!;
          assert.equal(row.usr, row.sess, `${what}: a connection kept a role`);
          assert.equal(row.role, 'none', what);
          assert.ok(row.tenant === null || row.tenant === '', `${what}: a connection kept tenant ${String(row.tenant)}`);
          assert.ok(row.scope === null || row.scope === '', `${what}: a connection kept scope ${String(row.scope)}`);
        }
      };
      const list = (query: Record<string, string>, token = B, collection = 'smuggle') =>
        request(t.app, 'GET', `/v1/collections/${collection}/records?${new URLSearchParams(query).toString()}`, { token });
      const cursor = (payload: unknown): string => Buffer.from(JSON.stringify(payload)).toString('base64url');

      for (const [i, v] of payloads.entries()) {
        const what = `payload ${i} ${JSON.stringify(v)}`;
        const enc = encodeURIComponent(v);

        // Record values: stored and read back verbatim.
        const fields = { title: v, body: `${v}\n${v}`, code: `${i}:${v}`, kind: v };
        const created = await request(t.app, 'POST', '/v1/collections/smuggle/records', { token: B, body: { fields } });
        assert.equal(created.status, 201, `${what}: ${created.text}`);
        const id = created.body.id as string;
        const got = await request(t.app, 'GET', `/v1/collections/smuggle/records/${id}`, { token: B });
        assert.equal(got.status, 200, what);
        for (const [k, value] of Object.entries(fields)) assert.equal(got.body.fields[k], value, `${what}: ${k}`);
        for (const [j, d] of payloads.entries()) assert.equal(got.body.fields[`d${j}`], d, `${what}: default d${j}`);
        const patched = await request(t.app, 'PATCH', `/v1/collections/smuggle/records/${id}`, { token: B, body: { fields: { body: v } } });
        assert.equal(patched.status, 200, what);
        assert.equal(patched.body.fields.body, v, what);

        // Filter values: data, never SQL.
        for (const [filter, expectHit] of [
          [{ title: { eq: v } }, 'only'],
          [{ code: { eq: `${i}:${v}` } }, 'only'],
          [{ kind: { eq: v } }, 'only'],
          [{ title: { in: [v] } }, 'only'],
          [{ title: { prefix: v } }, 'some'],
          [{ body: { contains: v } }, 'some'],
          [{ title: { ne: v } }, 'none'],
        ] as const) {
          const res = await list({ filter: JSON.stringify(filter) });
          assert.equal(res.status, 200, `${what} ${JSON.stringify(filter)}: ${res.text}`);
          const ids = res.body.records.map((r: { id: string }) => r.id);
          if (expectHit === 'only') assert.deepEqual(ids, [id], `${what} ${JSON.stringify(filter)}`);
          else if (expectHit === 'some') assert.ok(ids.includes(id), `${what} ${JSON.stringify(filter)}`);
          else assert.ok(!ids.includes(id), `${what} ${JSON.stringify(filter)}`);
          assert.ok(!res.text.includes(p.aMark), what);
        }
        for (const filter of [{ title: { contains: v } }, { title: { prefix: v } }, { tag: { eq: v } }]) {
          const res = await list({ filter: JSON.stringify(filter) }, B, 'notes');
          assert.equal(res.status, 200, what);
          assert.deepEqual(res.body.records, [], `${what}: ${JSON.stringify(filter)} on notes`);
        }

        // Names, operators, sorts, limits and cursors: refused with a stable code.
        assertProblem(await list({ filter: JSON.stringify({ [v]: { eq: 'x' } }) }), 400, 'QUERY_INVALID', `${what}: filter field`);
        assertProblem(await list({ filter: JSON.stringify({ title: { [v]: 'x' } }) }), 400, 'QUERY_INVALID', `${what}: filter operator`);
        assertProblem(await list({ filter: v }), 400, 'QUERY_INVALID', `${what}: filter`);
        assertProblem(await list({ sort: v }), 400, 'QUERY_INVALID', `${what}: sort`);
        assertProblem(await list({ sort: `-${v}` }), 400, 'QUERY_INVALID', `${what}: -sort`);
        assertProblem(await list({ limit: v }), 400, 'QUERY_INVALID', `${what}: limit`);
        assertProblem(await list({ cursor: v }), 400, 'QUERY_CURSOR_INVALID', `${what}: cursor`);
        assertProblem(await list({ cursor: cursor({ s: v, i: id }) }), 400, 'QUERY_CURSOR_INVALID', `${what}: cursor sort`);
        assertProblem(await list({ cursor: cursor({ s: 'id', i: v }) }), 400, 'QUERY_CURSOR_INVALID', `${what}: cursor id`);
        assertProblem(await list({ [v]: 'x' }), 400, 'REQUEST_INVALID', `${what}: query parameter`);
        // A well-formed cursor carrying the payload as its sort value, and pointing at A's record: B's rows only.
        const crafted = await list({ sort: 'title', cursor: cursor({ s: 'title', v, i: p.aIds[0] }) });
        assert.equal(crafted.status, 200, `${what}: ${crafted.text}`);
        assert.ok(!crafted.text.includes(p.aMark), what);

        // Path segments.
        assertProblem(await request(t.app, 'PUT', `/v1/collections/${enc}`, { token: B, body: { fields: { x: { type: 'string' } } } }), 400, 'COLLECTION_INVALID', `${what}: collection name`);
        assertProblem(await request(t.app, 'GET', `/v1/collections/${enc}/records`, { token: B }), 400, 'COLLECTION_INVALID', `${what}: collection path`);
        for (const method of ['GET', 'PATCH', 'DELETE'] as const) {
          const res = await request(t.app, method, `/v1/collections/smuggle/records/${enc}`, { token: B, ...(method === 'PATCH' ? { body: { fields: { title: 'x' } } } : {}) });
          assertProblem(res, 404, 'RECORD_NOT_FOUND', `${what}: ${method} record id`);
        }
        assertProblem(await request(t.app, 'GET', `/v1/tenants/${enc}`, { token: t.operatorToken }), 404, 'TENANT_NOT_FOUND', `${what}: tenant id`);

        // Definitions: names and types are identifiers, refused; descriptions and defaults are data (checked above).
        assertProblem(await request(t.app, 'PUT', '/v1/collections/smuggle_bad', { token: B, body: { fields: { [v]: { type: 'string' } } } }), 400, 'COLLECTION_INVALID', `${what}: field name`);
        assertProblem(await request(t.app, 'PUT', '/v1/collections/smuggle_bad', { token: B, body: { fields: { x: { type: v } } } }), 400, 'COLLECTION_INVALID', `${what}: field type`);
        assertProblem(await request(t.app, 'PUT', '/v1/collections/smuggle_bad', { token: B, body: { fields: { x: { type: 'reference', collection: v } } } }), 400, 'COLLECTION_INVALID', `${what}: reference target`);

        // Tenants: the slug and region are identifiers, the name is data; the status is an enumeration.
        const slug = `smug-${i}-${randomBytes(3).toString('hex')}`;
        assertProblem(await request(t.app, 'POST', '/v1/tenants', { token: t.operatorToken, body: { slug: v, name: 'x' } }), 400, 'TENANT_INVALID', `${what}: slug`);
        assertProblem(await request(t.app, 'POST', '/v1/tenants', { token: t.operatorToken, body: { slug, name: 'x', region: v } }), 400, 'TENANT_INVALID', `${what}: region`);
        const named = await request(t.app, 'POST', '/v1/tenants', { token: t.operatorToken, body: { slug, name: v } });
        assert.equal(named.status, 201, `${what}: ${named.text}`);
        const shown = await request(t.app, 'GET', `/v1/tenants/${named.body.id}`, { token: t.operatorToken });
        assert.equal(shown.body.name, v, what);
        assertProblem(await request(t.app, 'PATCH', `/v1/tenants/${named.body.id}`, { token: t.operatorToken, body: { status: v } }), 400, 'TENANT_INVALID', `${what}: status`);

        // Token claims: the subject is data (kept with the record), roles are an enumeration.
        assertProblem(await request(t.app, 'POST', `/v1/tenants/${p.b.id}/tokens`, { token: t.operatorToken, body: { sub: 'x', roles: [v] } }), 400, 'REQUEST_INVALID', `${what}: role`);
        if (/[\u0000-\u001f\u007f-\u009f]/.test(v)) {
          // Control characters could forge log lines: refused as a subject.
          assertProblem(await request(t.app, 'POST', `/v1/tenants/${p.b.id}/tokens`, { token: t.operatorToken, body: { sub: v, roles: ['member'] } }), 400, 'REQUEST_INVALID', `${what}: sub`);
        } else {
          const subToken = await mintToken(t, p.b.id, ['member'], v);
          const bySub = await request(t.app, 'POST', '/v1/collections/smuggle/records', { token: subToken, body: { fields: { title: `by-sub-${i}` } } });
          assert.equal(bySub.status, 201, `${what}: ${bySub.text}`);
          const [stored] = await su.batch([{ text: 'SELECT created_by, tenant_id::text AS tenant FROM bulkhead.records WHERE id = $1', values: [bySub.body.id] }]);
          assert.deepEqual(stored!.rows[0], { created_by: v, tenant: p.b.id }, what);
        }

        // Headers (only those HTTP can carry: visible ASCII).
        if (/^[\x20-\x7e]+$/.test(v)) {
          const auth = await request(t.app, 'GET', '/v1/collections', { headers: { authorization: `Bearer ${v}` } });
          assertProblem(auth, 401, /\s/.test(v) ? 'AUTH_REQUIRED' : 'AUTH_TOKEN_INVALID', `${what}: bearer token`);
          const withId = await request(t.app, 'GET', '/v1/collections', { token: B, headers: { 'x-request-id': v } });
          assert.equal(withId.status, 200, what);
          // A request id is echoed only when it is a plain token; anything else is replaced.
          assert.equal(withId.headers['x-request-id'] === v, /^[A-Za-z0-9._-]{1,64}$/.test(v), what);
        }

        await intact(what);
      }
      assert.equal(await snapshot(su, p.a.id), beforeA, "tenant A's data changed");
    });
  });
}
