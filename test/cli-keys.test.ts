/**
 * `bulkhead keys rotate | list | rotations | rotation-status` and `bulkhead tenants erase |
 * erase-cancel | erasures` against a real server on a loopback port, run in-process through the
 * CLI's entry point as in test/cli-moves.test.ts.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { parseGrace } from '../src/cli/erase.js';
import { runCli, type Run } from './support/cli.js';
import { BACKENDS, createTenant, defineCollection, openTestBulkhead, request, type TestBulkhead } from './support/backends.js';

/** Asserts a failure printed exactly one line, `error CODE: ...` (or `error: ...`), and nothing on stdout. */
function assertError(run: Run, exitCode: number, code: string | null): void {
  assert.equal(run.code, exitCode, `exit code; stderr: ${run.stderr}`);
  assert.equal(run.stdout, '');
  assert.equal(run.stderr.split('\n').length, 2, `one line: ${JSON.stringify(run.stderr)}`);
  assert.match(run.stderr, code === null ? /^error: .+\n$/ : new RegExp(`^error ${code}: .+\\n$`));
}

test('--grace takes seconds or a duration, and nothing else', () => {
  assert.equal(parseGrace('0'), 0);
  assert.equal(parseGrace('90'), 90);
  assert.equal(parseGrace('90m'), 5400);
  assert.equal(parseGrace('36h'), 129_600);
  assert.equal(parseGrace('7d'), 604_800);
  for (const bad of ['', '-1', '7w', '1.5h', 'soon', '7 d']) assert.throws(() => parseGrace(bad), /--grace must be/, bad);
});

for (const kind of BACKENDS) {
  describe(`bulkhead CLI: keys and erasure (${kind})`, () => {
    let t: TestBulkhead;
    let url: string;

    before(async () => {
      t = await openTestBulkhead(kind, { BULKHEAD_KEY_CACHE_MS: '200', BULKHEAD_ROTATION_BATCH_SIZE: '10' });
      await t.app.listen({ port: 0, host: '127.0.0.1' });
      url = `http://127.0.0.1:${(t.app.server.address() as AddressInfo).port}`;
    });
    after(async () => {
      await t?.close();
    });

    const cli = (args: readonly string[]): Promise<Run> => runCli(args, { BULKHEAD_URL: url, BULKHEAD_OPERATOR_TOKEN: t.operatorToken });

    async function tenantWithSecrets(n: number) {
      const tenant = await createTenant(t, `cli-keys-${randomBytes(4).toString('hex')}`);
      await defineCollection(t, tenant.token, 'people', { fields: { ssn: { type: 'string', classification: 'pii' } } });
      for (let i = 0; i < n; i++) {
        const res = await request(t.app, 'POST', '/v1/collections/people/records', { token: tenant.token, body: { fields: { ssn: `S-${i}` } } });
        assert.equal(res.status, 201, res.text);
      }
      return tenant;
    }

    test('keys rotate waits with a progress bar, then keys list and rotations show the result', async () => {
      const tenant = await tenantWithSecrets(35);
      const run = await cli(['keys', 'rotate', '--tenant', tenant.slug]);
      assert.equal(run.code, 0, run.stderr);
      assert.match(run.stdout, /^state +done$/m);
      assert.match(run.stdout, /^to version +2$/m);
      assert.match(run.stdout, /^destroyed versions +1$/m);
      assert.match(run.stderr, /rotate \w+ \[.*\] \d+% \| \d+\/35 records/, 'a progress line on stderr, counting the records');
      const listed = await cli(['--json', 'keys', 'list', '--tenant', tenant.id]);
      assert.equal(listed.code, 0, listed.stderr);
      assert.deepEqual(
        JSON.parse(listed.stdout).keys.map((k: { purpose: string; version: number; state: string }) => `${k.purpose}:${k.version}:${k.state}`),
        ['data:1:destroyed', 'data:2:active', 'index:1:active'],
      );
      const rotations = await cli(['keys', 'rotations', '--tenant', tenant.slug]);
      assert.equal(rotations.code, 0, rotations.stderr);
      const id = /^([0-9a-f-]{36}) +done/m.exec(rotations.stdout)?.[1];
      assert.ok(id, rotations.stdout);
      const one = await cli(['--json', 'keys', 'rotation-status', '--tenant', tenant.slug, id]);
      assert.equal(JSON.parse(one.stdout).progress.reencrypted, 35);
      // The records read back in clear.
      const read = await request(t.app, 'GET', '/v1/collections/people/records?limit=100', { token: tenant.token });
      assert.deepEqual(read.body.records.map((r: { fields: { ssn: string } }) => r.fields.ssn).sort(), Array.from({ length: 35 }, (_, i) => `S-${i}`).sort());
    });

    test('keys commands fail with one line and a non-zero exit', async () => {
      assertError(await cli(['keys', 'rotate', '--tenant', 'no-such-tenant']), 1, 'TENANT_NOT_FOUND');
      assertError(await cli(['keys', 'rotation-status', '--tenant', 'no-such-tenant', 'x']), 1, 'TENANT_NOT_FOUND');
      const tenant = await tenantWithSecrets(1);
      assertError(await cli(['keys', 'rotation-status', '--tenant', tenant.slug, 'not-a-rotation']), 1, 'KEY_ROTATION_NOT_FOUND');
      const missing = await cli(['keys', 'rotate']);
      assert.equal(missing.code, 2, missing.stderr);
    });

    test('tenants erase schedules, erase-cancel cancels, and a due erasure leaves a certificate', async () => {
      const tenant = await tenantWithSecrets(4);
      const scheduled = await cli(['tenants', 'erase', tenant.slug, '--grace', '2h']);
      assert.equal(scheduled.code, 0, scheduled.stderr);
      assert.match(scheduled.stdout, /^state +scheduled$/m);
      assert.match(scheduled.stdout, /^grace +7200 s$/m);
      assert.equal((await request(t.app, 'GET', `/v1/tenants/${tenant.id}`, { token: t.operatorToken })).body.status, 'offboarding');
      assertError(await cli(['tenants', 'erase', tenant.slug]), 1, 'TENANT_BUSY');
      const cancelled = await cli(['tenants', 'erase-cancel', tenant.slug]);
      assert.equal(cancelled.code, 0, cancelled.stderr);
      assert.match(cancelled.stdout, /^state +cancelled$/m);
      assertError(await cli(['tenants', 'erase-cancel', tenant.slug]), 1, 'TENANT_ERASE_NOT_SCHEDULED');
      assertError(await cli(['tenants', 'erase', tenant.slug, '--grace', 'soon']), 2, null);

      assert.equal((await cli(['tenants', 'erase', tenant.slug, '--grace', '0'])).code, 0);
      await t.bh.erasures.runDue();
      const erasures = await cli(['--json', 'tenants', 'erasures', tenant.slug]);
      assert.equal(erasures.code, 0, erasures.stderr);
      const [done] = JSON.parse(erasures.stdout).erasures;
      assert.equal(done.state, 'done');
      assert.equal(done.certificate.records.people, 4);
      assert.match(done.certificate.tenantKeys[0].keyId, /^[0-9a-f]{32}$/);
      const table = await cli(['tenants', 'erasures', tenant.slug]);
      assert.match(table.stdout, /done/);
      assert.equal((await request(t.app, 'GET', `/v1/tenants/${tenant.id}`, { token: t.operatorToken })).body.status, 'erased');
    });
  });
}
