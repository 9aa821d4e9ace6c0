/**
 * `bulkhead partitions`, `bulkhead tenants usage` and `bulkhead usage top` against a real server on
 * a loopback port, run in-process through `main(argv, io)` as in test/cli.test.ts.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { runCli, type Run } from './support/cli.js';
import { formatBytes } from '../src/cli/usage.js';
import { BACKENDS, createTenant, openTestBulkhead, request, type TestBulkhead } from './support/backends.js';

test('formatBytes', () => {
  assert.equal(formatBytes(0), '0 B');
  assert.equal(formatBytes(1023), '1023 B');
  assert.equal(formatBytes(1024), '1.0 KiB');
  assert.equal(formatBytes(1536 * 1024), '1.5 MiB');
  assert.equal(formatBytes(3 * 1024 ** 3), '3.0 GiB');
});

for (const kind of BACKENDS) {
  describe(`bulkhead CLI: usage and partitions (${kind})`, () => {
    let t: TestBulkhead;
    let url: string;

    before(async () => {
      t = await openTestBulkhead(kind);
      await t.app.listen({ port: 0, host: '127.0.0.1' });
      url = `http://127.0.0.1:${(t.app.server.address() as AddressInfo).port}`;
    });
    after(async () => {
      await t?.close();
    });

    const cli = (args: readonly string[], env?: Record<string, string>): Promise<Run> =>
      runCli(args, env ?? { BULKHEAD_URL: url, BULKHEAD_OPERATOR_TOKEN: t.operatorToken });

    function assertError(run: Run, exitCode: number, code: string): void {
      assert.equal(run.code, exitCode, run.stderr);
      assert.equal(run.stdout, '');
      assert.match(run.stderr, new RegExp(`^error ${code}: [^\\n]+\\n$`));
    }

    /** A tenant with `n` records created and read through the API. */
    async function busyTenant(n: number): Promise<{ id: string; slug: string; token: string }> {
      const tenant = await createTenant(t, `cli-use-${randomBytes(4).toString('hex')}`);
      assert.equal((await request(t.app, 'PUT', '/v1/collections/notes', { token: tenant.token, body: { fields: { title: { type: 'string' } } } })).status, 201);
      for (let i = 0; i < n; i++) {
        assert.equal((await request(t.app, 'POST', '/v1/collections/notes/records', { token: tenant.token, body: { fields: { title: `n${i}` } } })).status, 201);
      }
      assert.equal((await request(t.app, 'GET', '/v1/collections/notes/records', { token: tenant.token })).status, 200);
      return tenant;
    }

    test('--help lists the new commands', async () => {
      const help = await cli(['--help']);
      for (const command of ['partitions', 'usage']) assert.match(help.stdout, new RegExp(`^  ${command}\\b`, 'm'));
      assert.match((await cli(['tenants', '--help'])).stdout, /^ {2}usage\b/m);
      assert.match((await cli(['usage', '--help'])).stdout, /^ {2}top\b/m);
    });

    test('partitions: a table with a skew line, and --json equal to the API', async () => {
      await busyTenant(3);
      const human = await cli(['partitions']);
      assert.equal(human.code, 0, human.stderr);
      assert.equal(human.stderr, '');
      const lines = human.stdout.split('\n');
      assert.match(lines[0]!, /^PARTITION +REMAINDER +ROWS +SHARE +BYTES$/);
      for (let i = 0; i < 4; i++) assert.match(lines[i + 1]!, new RegExp(`^records_p${i} +${i} +\\d+ +(\\d+\\.\\d%|-) +\\d+(\\.\\d)? (B|KiB|MiB)$`));
      assert.match(human.stdout, /^total +\d+ rows, .+ in 4 partitions$/m);
      assert.match(human.stdout, /^skew +\d+\.\d{3} \(max \d+ \/ mean \d+\.\d rows\)$/m);

      const json = await cli(['partitions', '--json']);
      assert.equal(json.code, 0);
      const api = await request(t.app, 'GET', '/v1/partitions', { token: t.operatorToken });
      assert.deepEqual(JSON.parse(json.stdout), api.body);
      assert.ok(api.body.totalRows >= 3);
    });

    test('tenants usage: totals and buckets, human and --json; bad window and unknown tenant fail with their codes', async () => {
      const tenant = await busyTenant(2);
      const json = await cli(['tenants', 'usage', tenant.slug, '--window', '5m', '--json']);
      assert.equal(json.code, 0, json.stderr);
      const report = JSON.parse(json.stdout);
      assert.equal(report.tenant.id, tenant.id);
      assert.equal(report.window, '5m');
      assert.deepEqual(report.totals, { reads: 1, writes: 2, rowsRead: 2, rowsWritten: 2 });
      assert.equal(report.size.rows, 2);

      const human = await cli(['tenants', 'usage', tenant.id]);
      assert.equal(human.code, 0, human.stderr);
      assert.match(human.stdout, new RegExp(`^tenant +${tenant.slug} \\(${tenant.id}\\)$`, 'm'));
      assert.match(human.stdout, /^window +1h since \S+ \(60 s buckets\)$/m);
      assert.match(human.stdout, /^reads +1 \(2 rows\)$/m);
      assert.match(human.stdout, /^writes +2 \(2 rows\)$/m);
      assert.match(human.stdout, /^size +2 records, \d+ B$/m);
      assert.match(human.stdout, /^BUCKET +READS +WRITES +ROWS READ +ROWS WRITTEN$/m);

      const idle = await createTenant(t, `cli-idle-${randomBytes(4).toString('hex')}`);
      assert.match((await cli(['tenants', 'usage', idle.slug])).stdout, /^no requests in the window$/m);

      assertError(await cli(['tenants', 'usage', tenant.slug, '--window', '2d']), 1, 'REQUEST_INVALID');
      assertError(await cli(['tenants', 'usage', 'no-such-tenant']), 1, 'TENANT_NOT_FOUND');
      assertError(await cli(['tenants', 'usage', tenant.slug], { BULKHEAD_URL: url, BULKHEAD_TOKEN: tenant.token }), 1, 'ACCESS_DENIED');
      const missing = await cli(['tenants', 'usage']);
      assert.equal(missing.code, 2);
    });

    test('usage top: tenants and promotion candidates, human and --json', async () => {
      const big = await busyTenant(6);
      const json = await cli(['usage', 'top', '--window', '1h', '--limit', '100', '--min-share', '0.000001', '--min-rows', '6', '--json']);
      assert.equal(json.code, 0, json.stderr);
      const report = JSON.parse(json.stdout);
      assert.deepEqual(report.thresholds, { share: 0.000001, rows: 6 });
      const entry = report.candidates.find((c: { id: string }) => c.id === big.id);
      assert.ok(entry, 'the busy tenant is a candidate');
      assert.ok(entry.reasons.includes('rows'));
      assert.ok(report.tenants.some((x: { id: string }) => x.id === big.id));

      const human = await cli(['usage', 'top', '--min-share', '0.000001']);
      assert.equal(human.code, 0, human.stderr);
      assert.match(human.stdout, /^window +1h since \S+$/m);
      assert.match(human.stdout, /^SLUG +TIER +READS +WRITES +ROWS READ +ROWS WRITTEN +RECORDS +BYTES +USAGE +POOL$/m);
      assert.match(human.stdout, /^promotion candidates \(share above 0\.0% or at least 1000000 records\):$/m);
      assert.match(human.stdout, new RegExp(`^${big.slug} +${big.id} +6 +\\d+\\.\\d% +\\d+\\.\\d% +[a-z,-]+$`, 'm'));
      const none = await cli(['usage', 'top', '--min-share', '1', '--min-rows', '999999999']);
      assert.match(none.stdout, /^no promotion candidates \(share above 100\.0% or at least 999999999 records\)$/m);

      assertError(await cli(['usage', 'top', '--limit', '0']), 1, 'REQUEST_INVALID');
      assertError(await cli(['usage', 'top', '--min-share', 'lots']), 1, 'REQUEST_INVALID');
    });
  });
}
