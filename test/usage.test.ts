/**
 * Partition health and per-tenant usage (issue 3, item 5): usage counts are exact and per tenant,
 * held in memory until a flush, bucketed by time; partition statistics agree with an independent
 * count as the superuser; promotion candidates follow the thresholds; only operators read any of
 * it; and the SECURITY DEFINER functions behind it return aggregates only and are not PUBLIC.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { DatabaseError } from '../src/errors.js';
import type { Engine, Statement } from '../src/store/engine.js';
import { Store } from '../src/store/store.js';
import { HEALTH_DEFAULTS, skewOf } from '../src/tenancy/health.js';
import { Usage, parseWindow } from '../src/tenancy/usage.js';
import { BACKENDS, createTenant, mintToken, openTestBulkhead, request, type TestBulkhead } from './support/backends.js';
import { CONTEXT_SQL } from '../src/store/store.js';

const NOTES = { fields: { title: { type: 'string', required: true } } };
const MINUTE = 60_000;

describe('usage helpers', () => {
  it('skewOf is max/mean, 1 when even, null without rows', () => {
    assert.equal(skewOf([10, 10, 10, 10]), 1);
    assert.equal(skewOf([40, 0, 0, 0]), 4);
    assert.equal(skewOf([1, 2, 3, 6]), 2); // mean 3, max 6
    assert.equal(skewOf([5, 15]), 1.5);
    assert.equal(skewOf([]), null);
    assert.equal(skewOf([0, 0, 0]), null);
  });

  it('parseWindow takes minutes and hours up to the retention, and names the parameter otherwise', () => {
    assert.equal(parseWindow('5m'), 300);
    assert.equal(parseWindow('1h'), 3600);
    assert.equal(parseWindow('24h'), 86_400);
    assert.equal(parseWindow('1440m'), 86_400);
    for (const bad of ['25h', '1441m', '0m', '1d', '1H', ' 1h', '1.5h', '', '10000m', 5, undefined]) {
      assert.throws(() => parseWindow(bad), (e: unknown) => (e as { code?: string; details?: { field?: string } }).code === 'REQUEST_INVALID' &&
        (e as { details: { field: string } }).details.field === 'window', String(bad));
    }
    assert.equal(parseWindow('2h', 7200), 7200);
    assert.throws(() => parseWindow('3h', 7200), /at most 2 h/);
  });
});

for (const kind of BACKENDS) {
  describe(`usage and partition health (${kind})`, () => {
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

    const tag = () => randomBytes(4).toString('hex');
    const ops = () => t.operatorToken;

    /** A tenant with the `notes` collection and a tenant_admin token. */
    async function tenantWithNotes(prefix: string): Promise<{ id: string; slug: string; token: string }> {
      const tenant = await createTenant(t, `${prefix}-${tag()}`);
      const put = await request(t.app, 'PUT', '/v1/collections/notes', { token: tenant.token, body: NOTES });
      assert.equal(put.status, 201, put.text);
      return tenant;
    }

    /** Adds `n` records to a tenant's `notes` straight through the superuser (fast, and independent of the API). */
    async function addRows(tenantId: string, n: number, mark = 'row'): Promise<void> {
      await su.batch([
        {
          text:
            'INSERT INTO bulkhead.records (tenant_id, collection, id, data, schema_version, created_by, updated_by) ' +
            "SELECT $1, 'notes', gen_random_uuid(), jsonb_build_object('title', $3::text || i), 1, 'seed', 'seed' FROM generate_series(1, $2::int) AS i",
          values: [tenantId, n, mark],
        },
      ]);
    }

    /** A tenant's usage totals as stored, read as the superuser. */
    async function stored(tenantId: string): Promise<{ reads: number; writes: number; rowsRead: number; rowsWritten: number }> {
      const [r] = await su.batch([
        {
          text:
            'SELECT coalesce(sum(reads), 0)::int AS reads, coalesce(sum(writes), 0)::int AS writes, coalesce(sum(rows_read), 0)::int AS rows_read, ' +
            'coalesce(sum(rows_written), 0)::int AS rows_written FROM bulkhead.tenant_usage WHERE tenant_id = $1',
          values: [tenantId],
        },
      ]);
      const row = r!.rows[0]!;
      return { reads: row.reads as number, writes: row.writes as number, rowsRead: row.rows_read as number, rowsWritten: row.rows_written as number };
    }

    it('counts are exact after a known sequence of requests and a flush, and another tenant\'s usage is unaffected', async () => {
      const a = await tenantWithNotes('use-a');
      const b = await tenantWithNotes('use-b');
      const notes = '/v1/collections/notes/records';

      // B first: one write, one read.
      const bRecord = await request(t.app, 'POST', notes, { token: b.token, body: { fields: { title: 'b' } } });
      assert.equal(bRecord.status, 201);
      assert.equal((await request(t.app, 'GET', `${notes}/${bRecord.body.id}`, { token: b.token })).status, 200);
      await t.bh.usage.flush();
      const bBefore = await stored(b.id);
      assert.deepEqual(bBefore, { reads: 1, writes: 1, rowsRead: 1, rowsWritten: 1 });

      // A: 3 creates, 2 gets, a list of 2 and a list of 3, 1 update, 1 delete.
      const ids: string[] = [];
      for (let i = 0; i < 3; i++) {
        const created = await request(t.app, 'POST', notes, { token: a.token, body: { fields: { title: `a${i}` } } });
        assert.equal(created.status, 201);
        ids.push(created.body.id);
      }
      for (const id of ids.slice(0, 2)) assert.equal((await request(t.app, 'GET', `${notes}/${id}`, { token: a.token })).status, 200);
      const page = await request(t.app, 'GET', `${notes}?limit=2`, { token: a.token });
      assert.equal(page.body.records.length, 2);
      const all = await request(t.app, 'GET', notes, { token: a.token });
      assert.equal(all.body.records.length, 3);
      assert.equal((await request(t.app, 'PATCH', `${notes}/${ids[0]}`, { token: a.token, body: { fields: { title: 'changed' } } })).status, 200);
      assert.equal((await request(t.app, 'DELETE', `${notes}/${ids[1]}`, { token: a.token })).status, 204);
      // Failed operations are not counted: a missing record, an invalid write, a denied request.
      assert.equal((await request(t.app, 'GET', `${notes}/${ids[1]}`, { token: a.token })).body.code, 'RECORD_NOT_FOUND');
      assert.equal((await request(t.app, 'POST', notes, { token: a.token, body: { fields: { title: 5 } } })).body.code, 'RECORD_INVALID');
      const viewer = await mintToken(t, a.id, ['viewer']);
      assert.equal((await request(t.app, 'DELETE', `${notes}/${ids[2]}`, { token: viewer })).body.code, 'ACCESS_DENIED');
      // B's token replaying A's ids: RECORD_NOT_FOUND, counted for nobody.
      assert.equal((await request(t.app, 'GET', `${notes}/${ids[2]}`, { token: b.token })).body.code, 'RECORD_NOT_FOUND');

      // (That nothing is written before a flush is shown with a meter without a timer, below.)
      await t.bh.usage.flush();
      const expected = { reads: 4, writes: 5, rowsRead: 2 + 2 + 3, rowsWritten: 5 };
      assert.deepEqual(await stored(a.id), expected);
      assert.deepEqual(await stored(b.id), bBefore);

      // The API reports the same, by bucket and in total, with A's size.
      const usage = await request(t.app, 'GET', `/v1/tenants/${a.slug}/usage?window=5m`, { token: ops() });
      assert.equal(usage.status, 200, usage.text);
      assert.deepEqual(usage.body.tenant, { id: a.id, slug: a.slug });
      assert.equal(usage.body.window, '5m');
      assert.equal(usage.body.bucketSeconds, 60);
      assert.deepEqual(usage.body.totals, expected);
      assert.deepEqual(usage.body.size.rows, 2);
      assert.ok(usage.body.size.bytes > 0);
      assert.ok(usage.body.buckets.length >= 1 && usage.body.buckets.length <= 2, 'the requests fall in one or two minutes');
      for (const bucket of usage.body.buckets) assert.equal(new Date(bucket.start).getTime() % MINUTE, 0);
      const sumOf = (k: string) => usage.body.buckets.reduce((s: number, x: Record<string, number>) => s + x[k]!, 0);
      assert.deepEqual({ reads: sumOf('reads'), writes: sumOf('writes'), rowsRead: sumOf('rowsRead'), rowsWritten: sumOf('rowsWritten') }, expected);
      const byId = await request(t.app, 'GET', `/v1/tenants/${b.id}/usage`, { token: ops() });
      assert.equal(byId.body.window, '1h');
      assert.deepEqual(byId.body.totals, bBefore);

      // A tenant's own scope reads its own usage rows and no other tenant's (the table's read policy).
      const [own] = await su.batch([
        { text: CONTEXT_SQL, values: [t.db.appRole, b.id, 'tenant'] },
        { text: 'SELECT DISTINCT tenant_id FROM bulkhead.tenant_usage' },
      ]).then((r) => r.slice(1));
      assert.deepEqual(own!.rows.map((r) => r.tenant_id), [b.id]);
    });

    it('only an operator reads usage and partition health: tenant tokens get 403, no token 401', async () => {
      const a = await tenantWithNotes('use-deny');
      const routes = [`/v1/tenants/${a.id}/usage`, `/v1/tenants/${a.slug}/usage?window=5m`, '/v1/usage/top', '/v1/usage/top?window=24h', '/v1/partitions'];
      for (const roles of [['tenant_admin'], ['auditor'], ['tenant_admin', 'builder', 'member', 'viewer', 'auditor']]) {
        const token = await mintToken(t, a.id, roles);
        for (const url of routes) {
          const res = await request(t.app, 'GET', url, { token });
          assert.equal(res.status, 403, `${roles.join(',')} GET ${url}`);
          assert.equal(res.body.code, 'ACCESS_DENIED');
          assert.equal(res.headers['content-type'], 'application/problem+json; charset=utf-8');
        }
      }
      for (const url of routes) {
        const anonymous = await request(t.app, 'GET', url);
        assert.equal(anonymous.status, 401);
        assert.equal(anonymous.body.code, 'AUTH_REQUIRED');
        assert.equal((await request(t.app, 'GET', url, { token: ops() })).status, 200, url);
      }
    });

    it('refuses bad parameters with REQUEST_INVALID naming the parameter, and an unknown tenant with TENANT_NOT_FOUND', async () => {
      const a = await tenantWithNotes('use-bad');
      const cases: Array<[string, string | undefined]> = [
        [`/v1/tenants/${a.id}/usage?window=2d`, 'window'],
        [`/v1/tenants/${a.id}/usage?window=25h`, 'window'],
        [`/v1/tenants/${a.id}/usage?window=0m`, 'window'],
        [`/v1/tenants/${a.id}/usage?window=1h&window=2h`, 'window'],
        [`/v1/tenants/${a.id}/usage?limit=3`, undefined],
        ['/v1/usage/top?limit=0', 'limit'],
        ['/v1/usage/top?limit=101', 'limit'],
        ['/v1/usage/top?limit=1e1', 'limit'],
        ['/v1/usage/top?minShare=0', 'minShare'],
        ['/v1/usage/top?minShare=1.5', 'minShare'],
        ['/v1/usage/top?minShare=abc', 'minShare'],
        ['/v1/usage/top?minRows=0', 'minRows'],
        ['/v1/usage/top?minRows=-4', 'minRows'],
        ['/v1/usage/top?window=1y', 'window'],
        ['/v1/usage/top?tenant=x', undefined],
        ['/v1/partitions?window=1h', undefined],
      ];
      for (const [url, field] of cases) {
        const res = await request(t.app, 'GET', url, { token: ops() });
        assert.equal(res.status, 400, url);
        assert.equal(res.body.code, 'REQUEST_INVALID', url);
        assert.equal(res.body.field, field, url);
      }
      for (const url of ['/v1/tenants/no-such-tenant/usage', '/v1/tenants/01936f4e-7c2a-7b3d-9e4f-0a1b2c3d4e5f/usage']) {
        const res = await request(t.app, 'GET', url, { token: ops() });
        assert.equal(res.status, 404);
        assert.equal(res.body.code, 'TENANT_NOT_FOUND');
      }
      const ok = await request(t.app, 'GET', '/v1/usage/top?window=1440m&limit=100&minShare=1&minRows=1', { token: ops() });
      assert.equal(ok.status, 200, ok.text);
      assert.deepEqual(ok.body.thresholds, { share: 1, rows: 1 });
    });

    it('buckets roll over with the clock, flushes add up, nothing is written before a flush, and old buckets are purged', async () => {
      const c = await tenantWithNotes('use-clock');
      // An hour ago, on a bucket boundary: far from the buckets other tests write, inside the retention.
      const t0 = Math.floor(Date.now() / MINUTE) * MINUTE - 60 * MINUTE;
      let clock = t0 + 5_000;
      const meter = new Usage(t.bh.store, { now: () => clock, flushIntervalMs: 0 });
      meter.recordRead(c.id, 1);
      meter.recordRead(c.id, 4);
      clock = t0 + MINUTE - 1;
      meter.recordWrite(c.id, 1);
      clock = t0 + MINUTE; // the next bucket starts here
      for (let i = 0; i < 3; i++) meter.recordRead(c.id, 1);
      assert.deepEqual(await stored(c.id), { reads: 0, writes: 0, rowsRead: 0, rowsWritten: 0 }, 'nothing before the flush');
      await meter.flush();
      clock = t0 + 2 * MINUTE + 5_000;
      meter.recordWrite(c.id, 1);
      clock = t0 + 30_000; // a late count for the first bucket: added to what is stored
      meter.recordRead(c.id, 2);
      clock = t0 + 2 * MINUTE + 5_000;
      await meter.flush();

      const iso = (ms: number) => new Date(ms).toISOString();
      const { buckets, totals } = await meter.buckets(c.id, meter.windowStart(180));
      assert.equal(meter.windowStart(180), t0);
      assert.deepEqual(buckets, [
        { start: iso(t0), reads: 3, writes: 1, rowsRead: 7, rowsWritten: 1 },
        { start: iso(t0 + MINUTE), reads: 3, writes: 0, rowsRead: 3, rowsWritten: 0 },
        { start: iso(t0 + 2 * MINUTE), reads: 0, writes: 1, rowsRead: 0, rowsWritten: 1 },
      ]);
      assert.deepEqual(totals, { reads: 6, writes: 2, rowsRead: 10, rowsWritten: 2 });
      // Narrower windows end with the current bucket.
      assert.deepEqual((await meter.buckets(c.id, meter.windowStart(60))).buckets.map((b) => b.start), [iso(t0 + 2 * MINUTE)]);
      assert.deepEqual((await meter.buckets(c.id, meter.windowStart(120))).totals, { reads: 3, writes: 1, rowsRead: 3, rowsWritten: 1 });
      assert.deepEqual((await meter.totals(meter.windowStart(120))).get(c.id), { reads: 3, writes: 1, rowsRead: 3, rowsWritten: 1 });

      // A meter with 10 minutes of retention, 12 minutes later, purges the buckets older than its retention.
      clock = t0 + 12 * MINUTE;
      const short = new Usage(t.bh.store, { now: () => clock, flushIntervalMs: 0, retentionSeconds: 600 });
      short.recordRead(c.id, 1);
      await short.close();
      const [left] = await su.batch([
        { text: 'SELECT window_start FROM bulkhead.tenant_usage WHERE tenant_id = $1 ORDER BY window_start', values: [c.id] },
      ]);
      assert.deepEqual(left!.rows.map((r) => (r.window_start as Date).toISOString()), [iso(t0 + 12 * MINUTE)]);
      // After close, counts are ignored.
      short.recordWrite(c.id, 1);
      await short.flush();
      assert.deepEqual(await stored(c.id), { reads: 1, writes: 0, rowsRead: 1, rowsWritten: 0 });
      await meter.close();
    });

    it('a failed flush keeps its counts and the next one writes them exactly once', async () => {
      const d = await tenantWithNotes('use-fail');
      let failNext = true;
      const real = t.bh.store.engine;
      const flaky: Engine = {
        kind: real.kind,
        async batch(statements: readonly Statement[]) {
          if (failNext) {
            failNext = false;
            throw new DatabaseError(Object.assign(new Error('connection lost'), { code: '08006' }));
          }
          return real.batch(statements);
        },
        transaction: (fn) => real.transaction(fn),
        script: (sql) => real.script(sql),
        close: async () => {},
      };
      const meter = new Usage(new Store(flaky, t.bh.store.options), { flushIntervalMs: 0 });
      meter.recordWrite(d.id, 3);
      meter.recordRead(d.id, 2);
      await assert.rejects(meter.flush(), (e: unknown) => e instanceof DatabaseError && e.sqlState === '08006');
      meter.recordRead(d.id, 1); // counted while the store was away
      await meter.flush();
      await meter.flush(); // nothing left: no double count
      assert.deepEqual(await stored(d.id), { reads: 2, writes: 1, rowsRead: 3, rowsWritten: 3 });
      await meter.close();
    });

    it('partition statistics match an independent count(*) per partition as the superuser, and the skew is max/mean', async () => {
      // A known spread: tenants of 1, 5, 20 and 60 records on top of whatever other tests left.
      for (const n of [1, 5, 20, 60]) {
        const tenant = await tenantWithNotes(`part-${n}`);
        await addRows(tenant.id, n);
      }
      const res = await request(t.app, 'GET', '/v1/partitions', { token: ops() });
      assert.equal(res.status, 200, res.text);
      const [parts, sizes] = await su.batch([
        {
          text:
            "SELECT c.relname AS name, c.oid::int AS oid FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'bulkhead.records'::regclass ORDER BY c.relname",
        },
        { text: 'SELECT tableoid::regclass::text AS name, count(*)::int AS n FROM bulkhead.records GROUP BY 1' },
      ]);
      const counts = new Map(sizes!.rows.map((r) => [String(r.name).replace(/^bulkhead\./, ''), r.n as number]));
      const bytes = await su.batch(parts!.rows.map((p) => ({ text: 'SELECT pg_total_relation_size($1::int::oid)::bigint AS b', values: [p.oid] })));
      const expected = parts!.rows.map((p, i) => ({ name: p.name as string, rows: counts.get(p.name as string) ?? 0, bytes: Number(bytes[i]!.rows[0]!.b) }));
      assert.equal(expected.length, 4); // BULKHEAD_PARTITIONS of openTestBulkhead
      const got = [...res.body.partitions].sort((x, y) => (x.name < y.name ? -1 : 1));
      assert.deepEqual(got.map((p: { name: string; rows: number; bytes: number }) => ({ name: p.name, rows: p.rows, bytes: p.bytes })), expected);
      // Ordered by remainder, each partition named for its remainder.
      assert.deepEqual(res.body.partitions.map((p: { remainder: number }) => p.remainder), [0, 1, 2, 3]);
      for (const p of res.body.partitions) assert.equal(p.name, `records_p${p.remainder}`);

      const rows = expected.map((e) => e.rows);
      const total = rows.reduce((x, y) => x + y, 0);
      assert.ok(total >= 86);
      assert.equal(res.body.totalRows, total);
      assert.equal(res.body.maxRows, Math.max(...rows));
      assert.equal(res.body.meanRows, total / 4);
      assert.ok(Math.abs(res.body.skew - Math.max(...rows) / (total / 4)) < 1e-12, `skew ${res.body.skew}`);
      assert.equal(res.body.totalBytes, expected.reduce((x, e) => x + e.bytes, 0));
    });

    it('promotion candidates are the pool tenants above the thresholds, largest share first', async () => {
      const big = await tenantWithNotes('promo-big');
      const small = await tenantWithNotes('promo-small');
      await addRows(big.id, 400);
      await addRows(small.id, 1);
      const [sizes] = await su.batch([{ text: 'SELECT tenant_id, count(*)::int AS n FROM bulkhead.records GROUP BY tenant_id' }]);
      const rowsOf = new Map(sizes!.rows.map((r) => [r.tenant_id as string, r.n as number]));
      const total = [...rowsOf.values()].reduce((x, y) => x + y, 0);
      const bigShare = 400 / total;
      const others = [...rowsOf].filter(([id]) => id !== big.id).map(([, n]) => n / total);
      // A threshold between the big tenant's share and the next one; usage shares kept out by the same bar.
      const share = Number(((bigShare + Math.max(...others)) / 2).toFixed(6));
      assert.ok(share < bigShare && others.every((s) => s < share), 'the big tenant stands out');

      const top = await request(t.app, 'GET', `/v1/usage/top?limit=100&minShare=${share}&minRows=1000000`, { token: ops() });
      assert.equal(top.status, 200, top.text);
      assert.deepEqual(top.body.thresholds, { share, rows: 1_000_000 });
      assert.equal(top.body.totals.rows, total);
      // Every tenant with records is listed with its exact count and share.
      for (const [id, n] of rowsOf) {
        const entry = top.body.tenants.find((x: { id: string }) => x.id === id);
        assert.ok(entry, `tenant ${id} is listed`);
        assert.equal(entry.rows, n);
        assert.ok(Math.abs(entry.rowsShare - n / total) < 1e-12);
      }
      const usageTotal = top.body.totals.reads + top.body.totals.writes;
      const expected = top.body.tenants
        .filter((x: { rowsShare: number; usageShare: number; tier: string }) => x.tier === 'pool' && (x.rowsShare > share || x.usageShare > share))
        .map((x: { id: string }) => x.id)
        .sort();
      assert.deepEqual(top.body.candidates.map((x: { id: string }) => x.id).sort(), expected);
      const bigCandidate = top.body.candidates.find((x: { id: string }) => x.id === big.id);
      assert.ok(bigCandidate, 'the big tenant is a candidate');
      assert.ok(bigCandidate.reasons.includes('rows-share'));
      assert.ok(!bigCandidate.reasons.includes('rows'));
      assert.equal(top.body.candidates.find((x: { id: string }) => x.id === small.id), undefined, 'the small tenant is not');
      for (const x of top.body.tenants) {
        assert.ok(usageTotal === 0 || Math.abs(x.usageShare - (x.reads + x.writes) / usageTotal) < 1e-12);
      }
      const keys = top.body.candidates.map((x: { rowsShare: number; usageShare: number }) => Math.max(x.rowsShare, x.usageShare));
      assert.deepEqual(keys, [...keys].sort((x: number, y: number) => y - x), 'largest share first');

      // The row threshold: at 400 records the big tenant qualifies by size alone, at 401 it does not.
      const byRows = await request(t.app, 'GET', '/v1/usage/top?limit=100&minShare=1&minRows=400', { token: ops() });
      assert.deepEqual(byRows.body.candidates.filter((x: { reasons: string[] }) => x.reasons.includes('rows')).map((x: { id: string }) => x.id), [big.id]);
      const above = await request(t.app, 'GET', '/v1/usage/top?limit=100&minShare=1&minRows=401', { token: ops() });
      assert.equal(above.body.candidates.some((x: { id: string }) => x.id === big.id), false);
      // The default thresholds apply when none is given.
      const defaults = await request(t.app, 'GET', '/v1/usage/top', { token: ops() });
      assert.deepEqual(defaults.body.thresholds, { share: HEALTH_DEFAULTS.share, rows: HEALTH_DEFAULTS.rows });
      assert.ok(defaults.body.tenants.length <= HEALTH_DEFAULTS.limit);
      // limit bounds both lists.
      const one = await request(t.app, 'GET', '/v1/usage/top?limit=1&minShare=0.000001', { token: ops() });
      assert.equal(one.body.tenants.length, 1);
      assert.equal(one.body.candidates.length, 1);
    });

    it('the SECURITY DEFINER functions return aggregates only, run in the platform scope only, and are not executable by PUBLIC', async () => {
      const mark = `secret${tag()}`;
      const e = await tenantWithNotes('use-definer');
      await addRows(e.id, 3, mark);
      const fns = ['bulkhead.partition_stats()', 'bulkhead.tenant_sizes(uuid)'];
      const probe = `bht_probe_${tag()}`;
      await su.batch([{ text: `CREATE ROLE ${probe} NOLOGIN` }]);
      try {
        for (const fn of fns) {
          const [meta] = await su.batch([
            {
              text:
                "SELECT p.prosecdef, p.proconfig::text[] AS config, pg_get_userbyid(p.proowner) AS owner, p.proacl IS NULL AS default_acl, " +
                '(SELECT count(*)::int FROM aclexplode(p.proacl) a WHERE a.grantee = 0) AS public_grants, ' +
                "has_function_privilege($2, p.oid, 'EXECUTE') AS app, has_function_privilege($3, p.oid, 'EXECUTE') AS stranger, " +
                "pg_get_function_result(p.oid) AS result FROM pg_proc p WHERE p.oid = $1::regprocedure",
              values: [fn, t.db.appRole, probe],
            },
          ]);
          const m = meta!.rows[0]!;
          assert.equal(m.prosecdef, true, fn);
          assert.deepEqual(m.config, ['search_path=pg_catalog, bulkhead'], fn);
          assert.equal(m.owner, t.db.ownerRole, fn);
          assert.equal(m.default_acl, false, `${fn}: a NULL ACL means PUBLIC may execute`);
          assert.equal(m.public_grants, 0, `${fn}: granted to PUBLIC`);
          assert.equal(m.app, true, `${fn}: the application role may execute`);
          assert.equal(m.stranger, false, `${fn}: a role with no grant may execute`);
          // The result columns: names and numbers, no data column.
          assert.match(
            String(m.result),
            fn.startsWith('bulkhead.partition_stats')
              ? /^TABLE\(partition_name text, remainder integer, row_count bigint, total_bytes bigint\)$/
              : /^TABLE\(tenant_id uuid, row_count bigint, data_bytes bigint\)$/,
          );
        }

        // As the application role: in the platform scope the functions answer with numbers only ...
        const asApp = async (tenant: string, scope: string, statements: Statement[]) =>
          (await su.batch([
            { text: CONTEXT_SQL, values: [t.db.appRole, tenant, scope] },
            ...statements,
          ])).slice(1);
        const [stats, sizes, one, direct] = await asApp('', 'platform', [
          { text: 'SELECT * FROM bulkhead.partition_stats()' },
          { text: 'SELECT * FROM bulkhead.tenant_sizes()' },
          { text: 'SELECT * FROM bulkhead.tenant_sizes($1)', values: [e.id] },
          { text: 'SELECT count(*)::int AS n FROM bulkhead.records' },
        ]);
        const text = JSON.stringify([stats!.rows, sizes!.rows, one!.rows], (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v));
        assert.ok(!text.includes(mark), 'a stored value in a function result');
        assert.deepEqual(one!.rows.map((r) => ({ tenant: r.tenant_id, rows: Number(r.row_count) })), [{ tenant: e.id, rows: 3 }]);
        assert.ok(Number(one!.rows[0]!.data_bytes) > 0);
        // ... while the platform scope itself still reads no tenant row (the owner's policy is the owner's only).
        assert.equal(direct!.rows[0]!.n, 0);

        // In a tenant scope, or with no scope, they refuse.
        for (const [tenant, scope] of [[e.id, 'tenant'], ['', ''], ['', 'tenant']] as const) {
          for (const call of ['SELECT * FROM bulkhead.partition_stats()', 'SELECT * FROM bulkhead.tenant_sizes()', `SELECT * FROM bulkhead.tenant_sizes('${e.id}')`]) {
            await assert.rejects(asApp(tenant, scope, [{ text: call }]), (err: unknown) => err instanceof DatabaseError && err.sqlState === '42501', `${call} in scope "${scope}"`);
          }
        }
        // A role with no grant cannot call them at all.
        await assert.rejects(
          su.batch([{ text: "SELECT set_config('role', $1, true), set_config('bulkhead.scope', 'platform', true)", values: [probe] }, { text: 'SELECT * FROM bulkhead.partition_stats()' }]),
          (err: unknown) => err instanceof DatabaseError && err.sqlState === '42501',
        );
      } finally {
        await su.batch([{ text: `DROP ROLE ${probe}` }]);
      }
    });
  });
}
