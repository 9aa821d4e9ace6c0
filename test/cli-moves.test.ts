/**
 * `bulkhead tenants move | moves | move-status` and `bulkhead placements` against a real server
 * on a loopback port, run in-process through `main(argv, io)` as in test/cli.test.ts. The
 * deployment has two regions (a control cell in `us`, a cell `eu-1` in `eu`) so that region moves
 * and their legal basis can be exercised. A fake server drives the rolled-back path, which a
 * healthy server does not take on demand.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { progressBar } from '../src/cli/progress.js';
import { runCli, type Run } from './support/cli.js';
import { BACKENDS, createTenant, openTestBulkhead, request, type TestBulkhead } from './support/backends.js';

const UUID = '[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}';

/** Asserts a failure printed exactly one line, `error CODE: ...` (or `error: ...`), and nothing on stdout. */
function assertError(run: Run, exitCode: number, code: string | null): void {
  assert.equal(run.code, exitCode, `exit code; stderr: ${run.stderr}`);
  assert.equal(run.stdout, '');
  assert.equal(run.stderr.split('\n').length, 2, `one line: ${JSON.stringify(run.stderr)}`);
  assert.match(run.stderr, code === null ? /^error: .+\n$/ : new RegExp(`^error ${code}: .+\\n$`));
}

/** The value of `key` in `key  value` output. */
function field(stdout: string, key: string): string {
  const line = stdout.split('\n').find((l) => l.startsWith(`${key}  `));
  assert.ok(line !== undefined, `${key} in ${stdout}`);
  return line.slice(key.length).trim();
}

for (const kind of BACKENDS) {
  describe(`bulkhead CLI: moves and placements (${kind})`, () => {
    let t: TestBulkhead;
    let url: string;

    before(async () => {
      t = await openTestBulkhead(kind, {}, { cells: [{ name: 'eu-1', region: 'eu' }], controlRegion: 'us' });
      await t.app.listen({ port: 0, host: '127.0.0.1' });
      url = `http://127.0.0.1:${(t.app.server.address() as AddressInfo).port}`;
    });
    after(async () => {
      await t?.close();
    });

    const cli = (args: readonly string[]): Promise<Run> => runCli(args, { BULKHEAD_URL: url, BULKHEAD_OPERATOR_TOKEN: t.operatorToken });

    /** A tenant with `n` records in `notes`, written through the API. */
    async function tenantWithRecords(prefix: string, n: number): Promise<{ id: string; slug: string; token: string; ids: string[] }> {
      const tenant = await createTenant(t, `${prefix}-${randomBytes(4).toString('hex')}`);
      const defined = await request(t.app, 'PUT', '/v1/collections/notes', {
        token: tenant.token,
        body: { fields: { title: { type: 'string', required: true, unique: true }, n: { type: 'integer', indexed: true } } },
      });
      assert.equal(defined.status, 201, defined.text);
      const ids: string[] = [];
      for (let i = 0; i < n; i++) {
        const res = await request(t.app, 'POST', '/v1/collections/notes/records', { token: tenant.token, body: { fields: { title: `note ${i}`, n: i } } });
        assert.equal(res.status, 201, res.text);
        ids.push(res.body.id);
      }
      return { ...tenant, ids: ids.sort() };
    }

    /** Every record of `notes` the tenant's token reads now, as sorted `id=title` strings. */
    async function readNotes(token: string): Promise<string[]> {
      const out: string[] = [];
      let cursor: string | null = null;
      do {
        const res = await request(t.app, 'GET', `/v1/collections/notes/records?limit=100${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`, { token });
        assert.equal(res.status, 200, res.text);
        for (const r of res.body.records) out.push(`${r.id}=${r.fields.title}`);
        cursor = res.body.nextCursor;
      } while (cursor !== null);
      return out.sort();
    }

    async function tenantView(id: string): Promise<{ tier: string; region: string; status: string }> {
      const res = await request(t.app, 'GET', `/v1/tenants/${id}`, { token: t.operatorToken });
      assert.equal(res.status, 200, res.text);
      return res.body;
    }

    async function movesOf(id: string): Promise<Array<{ id: string; state: string }>> {
      const res = await request(t.app, 'GET', `/v1/tenants/${id}/moves`, { token: t.operatorToken });
      assert.equal(res.status, 200, res.text);
      return res.body.moves;
    }

    test('--help lists the move commands and placements; tenants create names every tier and --cell', async () => {
      assert.match((await cli(['--help'])).stdout, /^ {2}placements\b/m);
      const tenantsHelp = (await cli(['tenants', '--help'])).stdout;
      for (const command of ['move', 'moves', 'move-status']) assert.match(tenantsHelp, new RegExp(`^  ${command}\\b`, 'm'));
      const createHelp = (await cli(['tenants', 'create', '--help'])).stdout;
      assert.match(createHelp, /--tier <tier> +isolation tier: pool, bridge, silo/);
      assert.match(createHelp, /--cell <cell>/);
      const moveHelp = (await cli(['tenants', 'move', '--help'])).stdout;
      for (const option of ['--tier', '--cell', '--region', '--legal-basis', '--no-wait']) assert.ok(moveHelp.includes(option), option);
    });

    test('move pool -> bridge: progress on stderr, the final move on stdout, exit 0; every record still readable', async () => {
      const tenant = await tenantWithRecords('cli-mv', 25);
      const before = await readNotes(tenant.token);
      assert.equal(before.length, 25);

      const run = await cli(['tenants', 'move', tenant.slug, '--tier', 'bridge']);
      assert.equal(run.code, 0, run.stderr);
      // Not a terminal: plain lines, the last one the finished move.
      const lines = run.stderr.trimEnd().split('\n');
      assert.match(lines.at(-1)!, /^move done \[=+\] 100% \| \d+\/\d+ rows$/);
      assert.ok(!run.stderr.includes('\x1b'), 'no terminal control sequences off a terminal');
      assert.match(field(run.stdout, 'move'), new RegExp(`^${UUID}$`));
      assert.equal(field(run.stdout, 'tenant'), tenant.id);
      assert.equal(field(run.stdout, 'state'), 'done');
      assert.equal(field(run.stdout, 'from'), 'pool in cell local (region us): bulkhead');
      assert.match(field(run.stdout, 'to'), /^bridge in cell local \(region us\): tenant_[0-9a-f]{32}$/);
      const copied = field(run.stdout, 'copied').match(/^(\d+) of (\d+) rows \(100%\)$/);
      assert.ok(copied, run.stdout);
      assert.equal(copied[1], copied[2]);
      assert.ok(Number(copied[1]) >= 25, 'at least the records were copied');
      assert.match(field(run.stdout, 'checksums'), /^\d+ compared, source = target$/);
      assert.match(field(run.stdout, 'write pause'), /^\d+ ms$/);
      assert.equal(field(run.stdout, 'error'), '-');

      assert.equal((await tenantView(tenant.id)).tier, 'bridge');
      assert.deepEqual(await readNotes(tenant.token), before);
      assert.deepEqual(before.map((r) => r.split('=')[0]).sort(), tenant.ids);
    });

    test('--json prints the finished move; moves and move-status show it, human and --json', async () => {
      const tenant = await tenantWithRecords('cli-mvj', 5);
      const run = await cli(['tenants', 'move', tenant.id, '--tier', 'silo', '--json']);
      assert.equal(run.code, 0, run.stderr);
      const move = JSON.parse(run.stdout);
      assert.equal(move.state, 'done');
      assert.equal(move.tenantId, tenant.id);
      assert.deepEqual([move.source.tier, move.target.tier], ['pool', 'silo']);
      assert.equal(move.progress.percent, 100);
      assert.equal(move.error, null);
      assert.ok(move.checksums && Object.keys(move.checksums.target).length > 0);
      assert.deepEqual(move.checksums.source, move.checksums.target);
      assert.equal(typeof move.progress.pauseMs, 'number');
      assert.equal((await readNotes(tenant.token)).length, 5);

      const status = await cli(['tenants', 'move-status', tenant.slug, move.id, '--json']);
      assert.equal(status.code, 0, status.stderr);
      assert.deepEqual(JSON.parse(status.stdout), move);
      const statusHuman = await cli(['tenants', 'move-status', tenant.slug, move.id]);
      assert.equal(statusHuman.stderr, '');
      assert.equal(field(statusHuman.stdout, 'state'), 'done');
      assert.equal(field(statusHuman.stdout, 'move'), move.id);

      const list = await cli(['tenants', 'moves', tenant.slug]);
      assert.equal(list.code, 0, list.stderr);
      const lines = list.stdout.trimEnd().split('\n');
      assert.match(lines[0]!, /^ID +STATE +FROM +TO +PROGRESS +CREATED +FINISHED +ERROR$/);
      assert.equal(lines.length, 2);
      assert.match(lines[1]!, new RegExp(`^${move.id} +done +pool/local +silo/local +100% +\\S+ +\\S+ +-$`));
      const listJson = await cli(['tenants', 'moves', tenant.slug, '--json']);
      assert.deepEqual(JSON.parse(listJson.stdout), { moves: [move] });

      assertError(await cli(['tenants', 'move-status', tenant.slug, '00000000-0000-7000-8000-000000000000']), 1, 'MOVE_NOT_FOUND');
      assertError(await cli(['tenants', 'moves', 'no-such-tenant']), 1, 'TENANT_NOT_FOUND');
      const fresh = await createTenant(t, `cli-mvn-${randomBytes(4).toString('hex')}`);
      assert.equal((await cli(['tenants', 'moves', fresh.slug])).stdout, 'no moves\n');
    });

    test('an unknown or missing tier fails locally with one line, and nothing is sent', async () => {
      const tenant = await createTenant(t, `cli-mvt-${randomBytes(4).toString('hex')}`);
      const unknown = await cli(['tenants', 'move', tenant.slug, '--tier', 'gold']);
      assertError(unknown, 2, null);
      assert.match(unknown.stderr, /'gold' is invalid\. Allowed choices are pool, bridge, silo/);
      assertError(await cli(['tenants', 'move', tenant.slug]), 2, null);
      assert.deepEqual(await movesOf(tenant.id), []);
      assert.equal((await tenantView(tenant.id)).tier, 'pool');
    });

    test('a tenant already moving: the second move fails with MOVE_IN_PROGRESS; a suspended tenant with MOVE_INVALID', async () => {
      // A silo is a new database (a data directory embedded): its provisioning alone outlasts the second request.
      const tenant = await tenantWithRecords('cli-mvc', 150);
      const first = await cli(['tenants', 'move', tenant.slug, '--tier', 'silo', '--no-wait', '--json']);
      assert.equal(first.code, 0, first.stderr);
      assert.equal(first.stderr, '', 'no progress bar with --no-wait');
      const planned = JSON.parse(first.stdout);
      assert.equal(planned.state, 'planned');

      const second = await cli(['tenants', 'move', tenant.slug, '--tier', 'bridge']);
      assertError(second, 1, 'MOVE_IN_PROGRESS');

      // Follow the first to its end through the CLI, as an operator would.
      let state = planned.state as string;
      for (let i = 0; i < 600 && state !== 'done' && state !== 'rolled_back'; i++) {
        await new Promise((resolve) => setTimeout(resolve, 100));
        const status = await cli(['tenants', 'move-status', tenant.slug, planned.id]);
        assert.equal(status.code, 0, status.stderr);
        state = field(status.stdout, 'state');
      }
      assert.equal(state, 'done');
      assert.deepEqual((await movesOf(tenant.id)).map((m) => m.state), ['done']);
      assert.equal((await tenantView(tenant.id)).tier, 'silo');
      assert.equal((await readNotes(tenant.token)).length, 150);

      const suspended = await createTenant(t, `cli-mvs-${randomBytes(4).toString('hex')}`);
      assert.equal((await cli(['tenants', 'suspend', suspended.slug])).code, 0);
      const refused = await cli(['tenants', 'move', suspended.slug, '--tier', 'bridge']);
      assertError(refused, 1, 'MOVE_INVALID');
      assert.match(refused.stderr, /suspended/);
      assert.deepEqual(await movesOf(suspended.id), []);
    });

    test('a region change needs --legal-basis (RESIDENCY_LEGAL_BASIS_REQUIRED); with one, the tenant moves to the other cell', async () => {
      const tenant = await tenantWithRecords('cli-mvr', 3);
      assert.equal((await tenantView(tenant.id)).region, 'us');
      assertError(await cli(['tenants', 'move', tenant.slug, '--tier', 'pool', '--region', 'eu']), 1, 'RESIDENCY_LEGAL_BASIS_REQUIRED');
      assertError(await cli(['tenants', 'move', tenant.slug, '--tier', 'pool', '--cell', 'eu-1']), 1, 'RESIDENCY_LEGAL_BASIS_REQUIRED');
      assert.deepEqual(await movesOf(tenant.id), []);
      assert.equal((await tenantView(tenant.id)).region, 'us');

      const basis = 'GDPR Art. 46(2)(c) standard contractual clauses, ref. CLI-TEST-1';
      const run = await cli(['tenants', 'move', tenant.slug, '--tier', 'bridge', '--region', 'eu', '--legal-basis', basis]);
      assert.equal(run.code, 0, run.stderr);
      assert.equal(field(run.stdout, 'state'), 'done');
      assert.equal(field(run.stdout, 'legal basis'), basis);
      assert.match(field(run.stdout, 'to'), /^bridge in cell eu-1 \(region eu\): tenant_[0-9a-f]{32}$/);
      assert.deepEqual(await tenantView(tenant.id).then((v) => [v.tier, v.region]), ['bridge', 'eu']);
      assert.equal((await readNotes(tenant.token)).length, 3);
    });

    test('placements: the cells and the directory as tables, and --json as the API answers', async () => {
      const pooled = await createTenant(t, `cli-pl-${randomBytes(4).toString('hex')}`);
      const created = await cli(['tenants', 'create', '--slug', `cli-plb-${randomBytes(4).toString('hex')}`, '--name', 'Bridged', '--tier', 'bridge', '--region', 'eu', '--cell', 'eu-1', '--json']);
      assert.equal(created.code, 0, created.stderr);
      const bridged = JSON.parse(created.stdout);
      assert.deepEqual([bridged.tier, bridged.region], ['bridge', 'eu']);

      const run = await cli(['placements']);
      assert.equal(run.code, 0, run.stderr);
      assert.equal(run.stderr, '');
      const [cells, directory] = run.stdout.split('\n\n');
      const cellLines = cells!.split('\n');
      assert.match(cellLines[0]!, /^CELL +REGION +KIND +CONTROL +TENANTS$/);
      assert.match(cellLines[1]!, new RegExp(`^local +us +${kind} +yes +\\d+$`));
      assert.match(cellLines[2]!, new RegExp(`^eu-1 +eu +${kind} +no +\\d+$`));
      const dirLines = directory!.trimEnd().split('\n');
      assert.match(dirLines[0]!, /^TENANT +SLUG +TIER +CELL +REGION +LOCATION +WRITES PAUSED UNTIL$/);
      assert.match(run.stdout, new RegExp(`^${pooled.id} +${pooled.slug} +pool +local +us +bulkhead +-$`, 'm'));
      assert.match(run.stdout, new RegExp(`^${bridged.id} +${bridged.slug} +bridge +eu-1 +eu +tenant_[0-9a-f]{32} +-$`, 'm'));

      const json = await cli(['placements', '--json']);
      assert.equal(json.code, 0, json.stderr);
      const api = await request(t.app, 'GET', '/v1/placements', { token: t.operatorToken });
      assert.deepEqual(JSON.parse(json.stdout), api.body);
      const entry = api.body.placements.find((p: { tenantId: string }) => p.tenantId === bridged.id);
      assert.deepEqual([entry.tier, entry.cell, entry.region], ['bridge', 'eu-1', 'eu']);

      // The directory spans tenants: a tenant's token does not reach it.
      assertError(await runCli(['placements'], { BULKHEAD_URL: url, BULKHEAD_TOKEN: pooled.token }), 1, 'ACCESS_DENIED');
    });
  });
}

describe('bulkhead tenants move against a server whose move rolls back', () => {
  let server: Server;
  let url: string;
  let gets = 0;
  const TENANT = '01a21d19-e10c-7000-b9d1-1b7df7506a20';
  const MOVE = '01a21d19-e10c-7001-b9d1-1b7df7506a21';
  const view = (state: string, copied: number, error: string | null) => ({
    id: MOVE,
    tenantId: TENANT,
    state,
    source: { tier: 'pool', cell: 'local', location: 'bulkhead', region: 'local' },
    target: { tier: 'bridge', cell: 'local', location: `tenant_${'0'.repeat(32)}`, region: 'local' },
    legalBasis: null,
    progress: { copied, total: 10, table: 0, cursor: null, percent: copied * 10 },
    checksums: null,
    error,
    actor: 'operator:test',
    createdAt: '2026-11-27T13:02:45.005Z',
    updatedAt: '2026-11-27T13:02:45.005Z',
    finishedAt: state === 'rolled_back' ? '2026-11-27T13:02:46.005Z' : null,
  });

  before(async () => {
    server = createServer((req, res) => {
      res.setHeader('content-type', 'application/json');
      if (req.method === 'POST' && req.url === '/v1/tenants/acme/moves') {
        res.statusCode = 202;
        res.end(JSON.stringify(view('planned', 0, null)));
      } else if (req.method === 'GET' && req.url === `/v1/tenants/${TENANT}/moves/${MOVE}`) {
        gets += 1;
        const body = gets === 1 ? view('copying', 5, null) : gets === 2 ? view('failed', 5, 'copying: MOVE_CHECKSUM_MISMATCH') : view('rolled_back', 5, 'copying: MOVE_CHECKSUM_MISMATCH');
        res.end(JSON.stringify(body));
      } else {
        res.statusCode = 404;
        res.setHeader('content-type', 'application/problem+json');
        res.end(JSON.stringify({ code: 'ROUTE_NOT_FOUND', detail: 'no route' }));
      }
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  test('waits through failed to rolled_back, prints the move and exits 1 with the move error on one line', async () => {
    const run = await runCli(['tenants', 'move', 'acme', '--tier', 'bridge'], { BULKHEAD_URL: url, BULKHEAD_OPERATOR_TOKEN: 'test' });
    assert.equal(run.code, 1);
    assert.equal(gets, 3, 'polled until a state that does not change any more');
    assert.equal(field(run.stdout, 'state'), 'rolled_back');
    assert.equal(field(run.stdout, 'error'), 'copying: MOVE_CHECKSUM_MISMATCH');
    const lines = run.stderr.trimEnd().split('\n');
    assert.equal(lines.at(-1), `error: move ${MOVE} was rolled back (copying: MOVE_CHECKSUM_MISMATCH); the tenant stays on pool in cell local`);
    assert.match(lines.at(-2)!, /^move rolled_back \[=+-+\] 50% \| 5\/10 rows$/);
  });
});

describe('progressBar', () => {
  test('on a terminal: one line redrawn in place, erased at the end, no newline; server text made printable', async () => {
    let out = '';
    const stream = { isTTY: true, columns: 80, write: (s: string) => ((out += s), true) };
    const bar = progressBar(stream, 'move {state} [{bar}] {percentage}%', { state: 'copying' }, 10);
    bar.update(60, { state: 'verify\x1b[2Jing' });
    await new Promise((resolve) => setTimeout(resolve, 250));
    bar.stop();
    bar.stop();
    assert.ok(!out.includes('\n'), JSON.stringify(out));
    assert.ok(out.includes('move copying ['), JSON.stringify(out));
    assert.ok(out.includes('move verify?[2Jing ['), JSON.stringify(out));
    assert.ok(!out.includes('\x1b[2J'), 'no control sequence from a field');
    assert.ok(out.endsWith('\x1b[2K'), `the line is cleared at the end: ${JSON.stringify(out.slice(-20))}`);
  });

  test('off a terminal: plain lines, the last state at the end', () => {
    let out = '';
    const bar = progressBar({ write: (s: string) => (out += s) }, 'move {state} {percentage}%', { state: 'planned' });
    bar.update(100, { state: 'done' });
    bar.stop();
    assert.equal(out, 'move planned 0%\nmove done 100%\n');
  });
});
