/**
 * The `bulkhead` CLI against a real server: the test server listens on a loopback port and the CLI
 * runs in-process through `main(argv, io)` with its own streams and environment, exactly as a
 * user's shell would drive it over HTTP. One test runs the entry point as a child process to
 * prove the process exit codes.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runCli, type Run } from './support/cli.js';
import { BACKENDS, mintToken, openTestBulkhead, request, type TestBulkhead } from './support/backends.js';

const ENTRY = fileURLToPath(new URL('../src/cli/entry.ts', import.meta.url));
const UUID = /[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}/;
const JWT = /eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+/;

/** A loopback port nothing listens on: bound, then released. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Asserts a failure printed exactly one line, `error CODE: ...`, and nothing on stdout. */
function assertError(run: Run, exitCode: number, code: string | null): void {
  assert.equal(run.code, exitCode, `exit code; stderr: ${run.stderr}`);
  assert.equal(run.stdout, '');
  assert.equal(run.stderr.split('\n').length, 2, `one line: ${JSON.stringify(run.stderr)}`);
  assert.match(run.stderr, code === null ? /^error: .+\n$/ : new RegExp(`^error ${code}: .+\\n$`));
}

/** The start column of `word` in `line`, to check that tables are aligned. */
function column(line: string, word: string): number {
  const at = line.indexOf(word);
  assert.ok(at >= 0, `${word} in ${line}`);
  return at;
}

for (const kind of BACKENDS) {
  describe(`bulkhead CLI (${kind})`, () => {
    let t: TestBulkhead;
    let url: string;
    let dir: string;
    /** Everything printed by commands whose purpose is not to print a token. */
    const tokenFree: string[] = [];

    before(async () => {
      t = await openTestBulkhead(kind);
      await t.app.listen({ port: 0, host: '127.0.0.1' });
      url = `http://127.0.0.1:${(t.app.server.address() as AddressInfo).port}`;
      dir = mkdtempSync(join(tmpdir(), 'bulkhead-cli-'));
    });
    after(async () => {
      await t.close();
      rmSync(dir, { recursive: true, force: true });
    });

    /** Runs `bulkhead ...args`; by default the server and operator token come from the environment. */
    async function cli(args: readonly string[], env?: Record<string, string>, printsToken = false): Promise<Run> {
      const run = await runCli(args, env ?? { BULKHEAD_URL: url, BULKHEAD_OPERATOR_TOKEN: t.operatorToken }, dir);
      if (!printsToken) tokenFree.push(run.stdout, run.stderr);
      return run;
    }

    const slug = (prefix: string) => `${prefix}-${randomBytes(4).toString('hex')}`;

    async function newTenant(prefix: string): Promise<{ id: string; slug: string }> {
      const s = slug(prefix);
      const run = await cli(['tenants', 'create', '--slug', s, '--name', `Tenant ${s}`, '--json']);
      assert.equal(run.code, 0, run.stderr);
      return { id: JSON.parse(run.stdout).id, slug: s };
    }

    function schemaFile(name: string, content: unknown): string {
      writeFileSync(join(dir, name), typeof content === 'string' ? content : JSON.stringify(content));
      return name;
    }

    /** The tenant's collections, read straight from the API with a viewer token. */
    async function storedCollections(tenantId: string): Promise<Map<string, { version: number; fields: Record<string, unknown> }>> {
      const token = await mintToken(t, tenantId, ['viewer']);
      const res = await request(t.app, 'GET', '/v1/collections', { token });
      assert.equal(res.status, 200);
      return new Map(res.body.collections.map((c: { name: string; version: number; fields: Record<string, unknown> }) => [c.name, c]));
    }

    test('--help lists every command; no command prints help and exits 2', async () => {
      const help = await cli(['--help']);
      assert.equal(help.code, 0);
      for (const command of ['serve', 'tenants', 'token', 'collections']) assert.match(help.stdout, new RegExp(`^  ${command}\\b`, 'm'));
      for (const option of ['--url', '--token', '--json']) assert.ok(help.stdout.includes(option), option);

      const tenantsHelp = await cli(['tenants', '--help']);
      assert.equal(tenantsHelp.code, 0);
      for (const command of ['create', 'list', 'show', 'suspend', 'resume', 'history']) assert.match(tenantsHelp.stdout, new RegExp(`^  ${command}\\b`, 'm'));
      const collectionsHelp = await cli(['collections', '--help']);
      for (const command of ['apply', 'list', 'show']) assert.match(collectionsHelp.stdout, new RegExp(`^  ${command}\\b`, 'm'));
      assert.match((await cli(['token', '--help'])).stdout, /^ {2}mint\b/m);

      const bare = await cli([]);
      assert.equal(bare.code, 2);
      assert.equal(bare.stdout, '');
      assert.match(bare.stderr, /Usage: bulkhead/);
    });

    test('tenants create: human and --json output; the tenant exists on the server', async () => {
      const s = slug('create');
      const human = await cli(['tenants', 'create', '--slug', s, '--name', 'Acme Corp', '--tier', 'pool', '--region', 'local']);
      assert.equal(human.code, 0, human.stderr);
      assert.equal(human.stderr, '');
      assert.match(human.stdout, new RegExp(`^id +${UUID.source}$`, 'm'));
      assert.match(human.stdout, new RegExp(`^slug +${s}$`, 'm'));
      assert.match(human.stdout, /^name +Acme Corp$/m);
      assert.match(human.stdout, /^status +active$/m);
      assert.match(human.stdout, /^tier +pool$/m);
      // Values start in one column.
      const lines = human.stdout.trimEnd().split('\n');
      assert.equal(new Set(lines.map((l) => l.search(/(?<= {2})\S/))).size, 1);

      const s2 = slug('create');
      const json = await cli(['tenants', 'create', '--slug', s2, '--name', 'Beta', '--json']);
      assert.equal(json.code, 0, json.stderr);
      const tenant = JSON.parse(json.stdout);
      assert.match(tenant.id, UUID);
      assert.deepEqual({ slug: tenant.slug, name: tenant.name, status: tenant.status, tier: tenant.tier, region: tenant.region }, {
        slug: s2, name: 'Beta', status: 'active', tier: 'pool', region: 'local',
      });
      const stored = await request(t.app, 'GET', `/v1/tenants/${tenant.id}`, { token: t.operatorToken });
      assert.equal(stored.body.slug, s2);

      assertError(await cli(['tenants', 'create', '--slug', s2, '--name', 'Again']), 1, 'TENANT_SLUG_TAKEN');
      assertError(await cli(['tenants', 'create', '--slug', slug('bad'), '--name', 'X', '--tier', 'gold']), 1, 'TENANT_INVALID');
      assertError(await cli(['tenants', 'create', '--slug', slug('bad')]), 2, null); // --name missing
    });

    test('tenants list: an aligned table, and --json', async () => {
      const a = await newTenant('list');
      const human = await cli(['tenants', 'list']);
      assert.equal(human.code, 0, human.stderr);
      const [header, ...rows] = human.stdout.trimEnd().split('\n');
      assert.match(header!, /^ID +SLUG +NAME +STATUS +TIER +REGION +CREATED$/);
      const row = rows.find((r) => r.includes(a.slug));
      assert.ok(row, 'the new tenant is listed');
      assert.equal(column(row, a.slug), column(header!, 'SLUG'));
      assert.equal(column(row, 'active'), column(header!, 'STATUS'));
      assert.ok(row.startsWith(a.id));

      const json = await cli(['tenants', 'list', '--json']);
      assert.equal(json.code, 0);
      const listed = JSON.parse(json.stdout).tenants.find((x: { id: string }) => x.id === a.id);
      assert.equal(listed.slug, a.slug);
    });

    test('tenants show by slug and by id, human and --json; an unknown tenant is TENANT_NOT_FOUND', async () => {
      const a = await newTenant('show');
      const bySlug = await cli(['tenants', 'show', a.slug]);
      assert.equal(bySlug.code, 0, bySlug.stderr);
      assert.match(bySlug.stdout, new RegExp(`^id +${a.id}$`, 'm'));
      const byId = await cli(['tenants', 'show', a.id, '--json']);
      assert.equal(byId.code, 0);
      assert.equal(JSON.parse(byId.stdout).slug, a.slug);

      assertError(await cli(['tenants', 'show', 'no-such-tenant']), 1, 'TENANT_NOT_FOUND');
      assertError(await cli(['tenants', 'show', '../../v1/tenants']), 1, 'TENANT_NOT_FOUND');
      assertError(await cli(['tenants', 'show']), 2, null); // missing argument
    });

    test('tenants suspend, resume and history', async () => {
      const a = await newTenant('life');
      const token = await mintToken(t, a.id, ['member']);

      const suspended = await cli(['tenants', 'suspend', a.slug]);
      assert.equal(suspended.code, 0, suspended.stderr);
      assert.equal(suspended.stdout, `tenant ${a.slug} (${a.id}) is suspended\n`);
      assert.equal((await request(t.app, 'GET', '/v1/collections', { token })).body.code, 'AUTH_TENANT_INACTIVE');

      const resumed = await cli(['tenants', 'resume', a.id, '--json']);
      assert.equal(resumed.code, 0, resumed.stderr);
      assert.equal(JSON.parse(resumed.stdout).status, 'active');
      assert.equal((await request(t.app, 'GET', '/v1/collections', { token })).status, 200);

      const history = await cli(['tenants', 'history', a.slug]);
      assert.equal(history.code, 0, history.stderr);
      const [header, ...rows] = history.stdout.trimEnd().split('\n');
      assert.match(header!, /^SEQ +AT +EVENT +FROM +TO +ACTOR$/);
      assert.equal(rows.length, 3);
      assert.match(rows[0]!, /created +- +active /);
      assert.match(rows[1]!, /status +active +suspended /);
      assert.match(rows[2]!, /status +suspended +active /);

      const json = await cli(['tenants', 'history', a.id, '--json']);
      assert.deepEqual(
        JSON.parse(json.stdout).history.map((h: { event: string; fromStatus: string | null; toStatus: string }) => [h.event, h.fromStatus, h.toStatus]),
        [['created', null, 'active'], ['status', 'active', 'suspended'], ['status', 'suspended', 'active']],
      );
      assertError(await cli(['tenants', 'history', 'no-such-tenant']), 1, 'TENANT_NOT_FOUND');
    });

    test('token mint prints a working token; --json adds expiresAt; bad input fails cleanly', async () => {
      const a = await newTenant('mint');
      const human = await cli(['token', 'mint', '--tenant', a.slug, '--sub', 'alice', '--roles', 'member, viewer'], undefined, true);
      assert.equal(human.code, 0, human.stderr);
      assert.match(human.stdout, new RegExp(`^${JWT.source}\\n$`));
      const res = await request(t.app, 'GET', '/v1/collections', { token: human.stdout.trim() });
      assert.equal(res.status, 200);

      const before = Date.now();
      const json = await cli(['token', 'mint', '--tenant', a.id, '--sub', 'bob', '--roles', 'builder', '--ttl', '120', '--json'], undefined, true);
      assert.equal(json.code, 0, json.stderr);
      const minted = JSON.parse(json.stdout);
      assert.match(minted.token, JWT);
      const expires = Date.parse(minted.expiresAt);
      assert.ok(expires > before + 100_000 && expires <= Date.now() + 121_000, minted.expiresAt);

      assertError(await cli(['token', 'mint', '--tenant', a.id, '--sub', 'x', '--roles', 'superuser']), 1, 'REQUEST_INVALID');
      assertError(await cli(['token', 'mint', '--tenant', 'no-such-tenant', '--sub', 'x', '--roles', 'member']), 1, 'TENANT_NOT_FOUND');
      assertError(await cli(['token', 'mint', '--tenant', a.id, '--sub', 'x', '--roles', 'member', '--ttl', 'soon']), 2, null);
      assertError(await cli(['token', 'mint', '--tenant', a.id, '--sub', 'x', '--roles', ' , ']), 2, null);
      assertError(await cli(['token', 'mint', '--tenant', a.id, '--roles', 'member']), 2, null);
    });

    test('collections apply: referenced collections first, then unchanged on re-apply, then a new version', async () => {
      const a = await newTenant('apply');
      // File order puts tasks before the projects it references; tasks also references itself.
      const file = schemaFile(
        'schema.yaml',
        [
          'collections:',
          '  tasks:',
          '    description: Work items',
          '    fields:',
          '      title: { type: string, required: true }',
          '      project: { type: reference, collection: projects, indexed: true }',
          '      parent: { type: reference, collection: tasks }',
          '      status: { type: enum, values: [open, done], default: open }',
          '  projects:',
          '    fields:',
          '      name: { type: string, required: true, unique: true }',
          '      owner: { type: email, classification: pii, subject: true }',
          '',
        ].join('\n'),
      );
      const created = await cli(['collections', 'apply', '-f', file, '--tenant', a.slug]);
      assert.equal(created.code, 0, created.stderr);
      assert.equal(created.stderr, '');
      const [header, ...rows] = created.stdout.trimEnd().split('\n');
      assert.match(header!, /^COLLECTION +RESULT +VERSION +CHANGES$/);
      assert.deepEqual(rows.map((r) => r.split(/ +/).slice(0, 3)), [['projects', 'created', '1'], ['tasks', 'created', '1']]);
      let stored = await storedCollections(a.id);
      assert.equal(stored.get('projects')?.version, 1);
      assert.equal(stored.get('tasks')?.version, 1);

      const again = await cli(['collections', 'apply', '-f', file, '--tenant', a.id, '--json']);
      assert.equal(again.code, 0, again.stderr);
      const unchanged = JSON.parse(again.stdout);
      assert.equal(unchanged.dryRun, false);
      assert.deepEqual(unchanged.collections.map((c: { name: string; result: string; version: number }) => [c.name, c.result, c.version]), [
        ['projects', 'unchanged', 1],
        ['tasks', 'unchanged', 1],
      ]);

      // A changed definition: a new field and a changed one.
      const changedFile = schemaFile(
        'schema-v2.json',
        {
          collections: {
            tasks: {
              description: 'Work items',
              fields: {
                title: { type: 'string', required: true, maxLength: 200 },
                project: { type: 'reference', collection: 'projects', indexed: true },
                parent: { type: 'reference', collection: 'tasks' },
                status: { type: 'enum', values: ['open', 'done'], default: 'open' },
                priority: { type: 'integer' },
              },
            },
            projects: { fields: { name: { type: 'string', required: true, unique: true }, owner: { type: 'email', classification: 'pii', subject: true } } },
          },
        },
      );
      const dry = await cli(['collections', 'apply', '-f', changedFile, '--tenant', a.slug, '--dry-run']);
      assert.equal(dry.code, 0, dry.stderr);
      assert.match(dry.stdout, /^projects +unchanged +1\s*$/m);
      assert.match(dry.stdout, /^tasks +would update +1 -> 2 +\+priority ~title$/m);
      assert.match(dry.stdout, /^dry run: nothing was applied$/m);
      assert.equal((await storedCollections(a.id)).get('tasks')?.version, 1, 'a dry run applies nothing');

      const dryJson = await cli(['collections', 'apply', '-f', changedFile, '--tenant', a.slug, '--dry-run', '--json']);
      const plan = JSON.parse(dryJson.stdout);
      assert.equal(plan.dryRun, true);
      assert.deepEqual(plan.collections[1], {
        name: 'tasks', result: 'updated', version: 2, previousVersion: 1, changes: { added: ['priority'], removed: [], changed: ['title'], description: false, readAudit: false, encryptedClassifications: false },
      });

      const updated = await cli(['collections', 'apply', '-f', changedFile, '--tenant', a.slug]);
      assert.equal(updated.code, 0, updated.stderr);
      assert.match(updated.stdout, /^projects +unchanged +1\s*$/m);
      assert.match(updated.stdout, /^tasks +updated +1 -> 2 +\+priority ~title$/m);
      stored = await storedCollections(a.id);
      assert.equal(stored.get('tasks')?.version, 2);
      assert.ok('priority' in stored.get('tasks')!.fields);
      assert.equal(stored.get('projects')?.version, 1);
    });

    test('collections apply --json on a new tenant reports every collection created', async () => {
      const a = await newTenant('applyjson');
      const file = schemaFile('one.json', { collections: { notes: { fields: { body: { type: 'text' } } } } });
      const run = await cli(['collections', 'apply', '-f', file, '--tenant', a.slug, '--json']);
      assert.equal(run.code, 0, run.stderr);
      assert.deepEqual(JSON.parse(run.stdout), {
        tenant: a.slug,
        file,
        dryRun: false,
        collections: [{ name: 'notes', result: 'created', version: 1, previousVersion: null, changes: { added: ['body'], removed: [], changed: [], description: false, readAudit: false, encryptedClassifications: false } }],
      });
    });

    test('collections apply refuses a reference cycle and applies nothing', async () => {
      const a = await newTenant('cycle');
      const file = schemaFile('cycle.yaml', {
        collections: {
          alpha: { fields: { b: { type: 'reference', collection: 'beta' } } },
          beta: { fields: { g: { type: 'reference', collection: 'gamma' } } },
          gamma: { fields: { a: { type: 'reference', collection: 'alpha' } } },
          solo: { fields: { name: { type: 'string' } } },
        },
      });
      const run = await cli(['collections', 'apply', '-f', file, '--tenant', a.slug]);
      assertError(run, 1, 'COLLECTION_INVALID');
      assert.match(run.stderr, /cycle \(alpha -> beta -> gamma -> alpha\)/);
      assert.equal((await storedCollections(a.id)).size, 0);
    });

    test('collections apply: invalid files fail with one line before anything is sent', async () => {
      const a = await newTenant('invalid');
      assertError(await cli(['collections', 'apply', '-f', 'missing.yaml', '--tenant', a.slug]), 2, null);
      assertError(await cli(['collections', 'apply', '--tenant', a.slug]), 2, null); // -f missing

      const broken = schemaFile('broken.yaml', 'collections:\n  tasks: { fields: [\n');
      const syntax = await cli(['collections', 'apply', '-f', broken, '--tenant', a.slug]);
      assertError(syntax, 1, 'COLLECTION_INVALID');
      assert.match(syntax.stderr, /broken\.yaml: not valid YAML or JSON/);

      const dup = schemaFile('dup.yaml', 'collections:\n  a: { fields: { x: { type: string } } }\n  a: { fields: { y: { type: string } } }\n');
      assertError(await cli(['collections', 'apply', '-f', dup, '--tenant', a.slug]), 1, 'COLLECTION_INVALID');

      const noCollections = schemaFile('empty.yaml', 'tables: {}\n');
      assert.match((await cli(['collections', 'apply', '-f', noCollections, '--tenant', a.slug])).stderr, /must hold a "collections" mapping/);

      const badType = schemaFile('badtype.yaml', { collections: { tasks: { fields: { title: { type: 'varchar' } } } } });
      const typed = await cli(['collections', 'apply', '-f', badType, '--tenant', a.slug]);
      assertError(typed, 1, 'COLLECTION_INVALID');
      assert.match(typed.stderr, /collection tasks: fields\.title\.type must be one of/);

      const badName = schemaFile('badname.yaml', { collections: { 'Bad-Name': { fields: { x: { type: 'string' } } } } });
      assertError(await cli(['collections', 'apply', '-f', badName, '--tenant', a.slug]), 1, 'COLLECTION_INVALID');

      const dangling = schemaFile('dangling.yaml', {
        collections: { ok: { fields: { x: { type: 'string' } } }, tasks: { fields: { p: { type: 'reference', collection: 'projects' } } } },
      });
      const missingRef = await cli(['collections', 'apply', '-f', dangling, '--tenant', a.slug]);
      assertError(missingRef, 1, 'COLLECTION_INVALID');
      assert.match(missingRef.stderr, /names collection projects, which is neither in the file nor defined for the tenant/);

      assert.equal((await storedCollections(a.id)).size, 0, 'nothing was applied');
    });

    test('collections apply: a change the server refuses stops the apply; what came before stays applied and is shown', async () => {
      const a = await newTenant('refused');
      const v1 = schemaFile('v1.json', { collections: { items: { fields: { name: { type: 'string' }, sku: { type: 'string' } } } } });
      assert.equal((await cli(['collections', 'apply', '-f', v1, '--tenant', a.slug])).code, 0);
      const member = await mintToken(t, a.id, ['member']);
      const rec = await request(t.app, 'POST', '/v1/collections/items/records', { token: member, body: { fields: { name: 'widget' } } });
      assert.equal(rec.status, 201);
      // sku cannot become required while a record lacks it.
      const v2 = schemaFile('v2.json', {
        collections: {
          labels: { fields: { text: { type: 'string' } } },
          items: { fields: { name: { type: 'string' }, sku: { type: 'string', required: true } } },
        },
      });
      const run = await cli(['collections', 'apply', '-f', v2, '--tenant', a.slug]);
      assert.equal(run.code, 1);
      assert.match(run.stdout, /^labels +created +1/m);
      assert.doesNotMatch(run.stdout, /^items/m);
      assert.match(run.stderr, /^error COLLECTION_INVALID: collection items: fields\.sku: .+\n$/);
      const stored = await storedCollections(a.id);
      assert.equal(stored.get('labels')?.version, 1);
      assert.equal(stored.get('items')?.version, 1);
    });

    test('collections: a collection list of encrypted classifications is applied, shown, diffed, and checked', async () => {
      const a = await newTenant('enccls');
      const v1 = schemaFile('enc-v1.yaml', [
        'collections:',
        '  cases:',
        '    encryptedClassifications: [pii, internal, phi, pci, confidential]',
        '    fields:',
        '      note: { type: string }',
        '      label: { type: string, classification: public }',
        '',
      ].join('\n'));
      const created = await cli(['collections', 'apply', '-f', v1, '--tenant', a.slug]);
      assert.equal(created.code, 0, created.stderr);
      assert.match(created.stdout, /^cases +created +1 +\+note \+label$/m);
      const show = await cli(['collections', 'show', 'cases', '--tenant', a.slug]);
      assert.equal(show.code, 0, show.stderr);
      assert.match(show.stdout, /^encrypts +internal, confidential, pii, phi, pci$/m);
      assert.match(show.stdout, /^note +string +internal +encrypted$/m);
      assert.match(show.stdout, /^label +string +public$/m);
      const showJson = await cli(['collections', 'show', 'cases', '--tenant', a.slug, '--json']);
      assert.deepEqual(JSON.parse(showJson.stdout).encryptedClassifications, ['internal', 'confidential', 'pii', 'phi', 'pci']);
      // The same list in another order is no change.
      const again = await cli(['collections', 'apply', '-f', v1, '--tenant', a.slug, '--dry-run', '--json']);
      assert.deepEqual(JSON.parse(again.stdout).collections[0].result, 'unchanged');

      // Adding public (no record holds label) is a change of the list alone, and the field it flips.
      const v2 = schemaFile('enc-v2.json', {
        collections: { cases: { encryptedClassifications: ['internal', 'public', 'confidential', 'pii', 'phi', 'pci'], fields: { note: { type: 'string' }, label: { type: 'string', classification: 'public' } } } },
      });
      const dry = await cli(['collections', 'apply', '-f', v2, '--tenant', a.slug, '--dry-run', '--json']);
      assert.deepEqual(JSON.parse(dry.stdout).collections[0].changes, {
        added: [], removed: [], changed: ['label'], description: false, readAudit: false, encryptedClassifications: true,
      });
      const updated = await cli(['collections', 'apply', '-f', v2, '--tenant', a.slug]);
      assert.equal(updated.code, 0, updated.stderr);
      assert.match(updated.stdout, /^cases +updated +1 -> 2 +~label encryptedClassifications$/m);
      // Leaving the list out goes back to the deployment's: a change, shown as such.
      const v3 = schemaFile('enc-v3.json', { collections: { cases: { fields: { note: { type: 'string' }, label: { type: 'string', classification: 'public' } } } } });
      const back = await cli(['collections', 'apply', '-f', v3, '--tenant', a.slug, '--dry-run']);
      assert.match(back.stdout, /^cases +would update +2 -> 3 +~note ~label encryptedClassifications$/m);

      // A malformed list fails locally, before anything is sent.
      const dup = schemaFile('enc-dup.json', { collections: { other: { encryptedClassifications: ['pii', 'pii'], fields: { x: { type: 'string' } } } } });
      const local = await cli(['collections', 'apply', '-f', dup, '--tenant', a.slug]);
      assertError(local, 1, 'COLLECTION_INVALID');
      assert.match(local.stderr, /enc-dup\.json: collection other: encryptedClassifications lists pii more than once/);
      // A list leaving out what the deployment encrypts is the server's to refuse: it knows the deployment's list.
      const fewer = schemaFile('enc-fewer.json', { collections: { other: { encryptedClassifications: ['internal', 'pii'], fields: { x: { type: 'string' } } } } });
      const refused = await cli(['collections', 'apply', '-f', fewer, '--tenant', a.slug]);
      assertError(refused, 1, 'COLLECTION_INVALID');
      assert.match(refused.stderr, /collection other: encryptedClassifications leaves out confidential, phi, pci/);
      const stored = await storedCollections(a.id);
      assert.equal(stored.has('other'), false);
      assert.equal(stored.get('cases')?.version, 2);
    });

    test('collections apply to an unknown tenant is TENANT_NOT_FOUND', async () => {
      const file = schemaFile('unknown.json', { collections: { notes: { fields: { body: { type: 'text' } } } } });
      assertError(await cli(['collections', 'apply', '-f', file, '--tenant', 'no-such-tenant']), 1, 'TENANT_NOT_FOUND');
      assertError(await cli(['collections', 'apply', '-f', file, '--tenant', '0190aaaa-0000-7000-8000-000000000000']), 1, 'TENANT_NOT_FOUND');
    });

    test('collections list and show: human and --json, with --tenant or a tenant token', async () => {
      const a = await newTenant('colls');
      const empty = await cli(['collections', 'list', '--tenant', a.slug]);
      assert.equal(empty.stdout, 'no collections\n');
      const file = schemaFile('list.json', {
        collections: {
          customers: { description: 'People we bill', fields: { email: { type: 'email', unique: true, classification: 'pii', subject: true } } },
          orders: { fields: { customer: { type: 'reference', collection: 'customers', required: true }, total: { type: 'number', indexed: true } } },
        },
      });
      assert.equal((await cli(['collections', 'apply', '-f', file, '--tenant', a.slug])).code, 0);

      const human = await cli(['collections', 'list', '--tenant', a.slug]);
      assert.equal(human.code, 0, human.stderr);
      const [header, ...rows] = human.stdout.trimEnd().split('\n');
      assert.match(header!, /^NAME +VERSION +FIELDS +UPDATED +DESCRIPTION$/);
      assert.match(rows[0]!, /^customers +1 +1 +\S+ +People we bill$/);
      assert.match(rows[1]!, /^orders +1 +2 +\S+$/);
      assert.equal(column(rows[1]!, '2 '), column(header!, 'FIELDS'));

      const json = await cli(['collections', 'list', '--tenant', a.id, '--json']);
      assert.deepEqual(JSON.parse(json.stdout).collections.map((c: { name: string }) => c.name), ['customers', 'orders']);

      const show = await cli(['collections', 'show', 'orders', '--tenant', a.slug]);
      assert.equal(show.code, 0, show.stderr);
      assert.match(show.stdout, /^name +orders$/m);
      assert.match(show.stdout, /^encrypts +the deployment's list$/m);
      assert.match(show.stdout, /^FIELD +TYPE +REQUIRED +UNIQUE +INDEXED +CLASSIFICATION +DETAILS$/m);
      assert.match(show.stdout, /^customer +reference +yes +internal +-> customers$/m);
      assert.match(show.stdout, /^total +number +yes +internal$/m);
      const showJson = await cli(['collections', 'show', 'customers', '--tenant', a.slug, '--json']);
      assert.equal(JSON.parse(showJson.stdout).fields.email.classification, 'pii');
      assertError(await cli(['collections', 'show', 'nothing', '--tenant', a.slug]), 1, 'COLLECTION_NOT_FOUND');

      // Without --tenant the token must be a tenant token; an operator token alone is a usage error.
      const viewer = await mintToken(t, a.id, ['viewer']);
      const withTenantToken = await cli(['collections', 'list', '--json'], { BULKHEAD_URL: url, BULKHEAD_TOKEN: viewer });
      assert.equal(withTenantToken.code, 0, withTenantToken.stderr);
      assert.equal(JSON.parse(withTenantToken.stdout).collections.length, 2);
      const operatorOnly = await cli(['collections', 'list']);
      assertError(operatorOnly, 2, null);
      assert.match(operatorOnly.stderr, /name the tenant with --tenant/);
      assertError(await cli(['collections', 'apply', '-f', file]), 2, null);
      // A viewer token cannot define collections.
      assertError(await cli(['collections', 'apply', '-f', file], { BULKHEAD_URL: url, BULKHEAD_TOKEN: viewer }), 1, 'ACCESS_DENIED');
    });

    test('global options: flags win over the environment; BULKHEAD_TOKEN wins over BULKHEAD_OPERATOR_TOKEN', async () => {
      const flags = await cli(['tenants', 'list', '--json', '--url', url, '--token', t.operatorToken], {});
      assert.equal(flags.code, 0, flags.stderr);
      const port = await closedPort();
      const flagWins = await cli(['tenants', 'list', '--url', url], { BULKHEAD_URL: `http://127.0.0.1:${port}`, BULKHEAD_TOKEN: t.operatorToken });
      assert.equal(flagWins.code, 0, flagWins.stderr);
      assertError(await cli(['tenants', 'list'], { BULKHEAD_URL: url, BULKHEAD_TOKEN: 'bho_wrong', BULKHEAD_OPERATOR_TOKEN: t.operatorToken }), 1, 'AUTH_TOKEN_INVALID');
      // A base URL with a trailing slash still reaches /v1/...
      assert.equal((await cli(['tenants', 'list', '--url', `${url}/`])).code, 0);
    });

    test('errors: bad usage exits 2, an unreachable server exits 1 naming its URL, a bad token is the server code', async () => {
      const unknownOption = await cli(['tenants', 'list', '--bogus']);
      assertError(unknownOption, 2, null);
      assert.match(unknownOption.stderr, /unknown option '--bogus'/);
      assertError(await cli(['tenants', 'frobnicate']), 2, null);
      assertError(await cli(['tenants', 'list'], { BULKHEAD_URL: url }), 2, null); // no token at all
      assertError(await cli(['tenants', 'list', '--url', 'not a url']), 2, null);

      const port = await closedPort();
      const unreachable = await cli(['tenants', 'list', '--url', `http://127.0.0.1:${port}`]);
      assertError(unreachable, 1, null);
      assert.ok(unreachable.stderr.includes(`http://127.0.0.1:${port}`), unreachable.stderr);

      assertError(await cli(['tenants', 'list', '--token', 'not-a-token']), 1, 'AUTH_TOKEN_INVALID');
      // A tenant token reaches no registry endpoint.
      const a = await newTenant('errs');
      assertError(await cli(['tenants', 'list'], { BULKHEAD_URL: url, BULKHEAD_TOKEN: await mintToken(t, a.id, ['tenant_admin']) }), 1, 'ACCESS_DENIED');
    });

    test('an answer that is not Bulkhead problem+json is one line, exit 1; redirects are not followed', async () => {
      const seen: string[] = [];
      const other = createHttpServer((req, res) => {
        seen.push(req.url ?? '');
        if (req.url === '/v1/tenants') {
          res.writeHead(502, { 'content-type': 'text/html' }).end('<html>bad gateway</html>');
        } else if (req.url === '/v1/tenants/html') {
          res.writeHead(200, { 'content-type': 'text/html' }).end('<html>\n</html>');
        } else {
          res.writeHead(302, { location: '/collect' }).end();
        }
      });
      await new Promise<void>((resolve) => other.listen(0, '127.0.0.1', resolve));
      const otherUrl = `http://127.0.0.1:${(other.address() as AddressInfo).port}`;
      try {
        const gateway = await cli(['tenants', 'list', '--url', otherUrl]);
        assertError(gateway, 1, 'HTTP_502');
        assert.ok(gateway.stderr.includes(otherUrl));
        const html = await cli(['tenants', 'show', 'html', '--url', otherUrl]);
        assertError(html, 1, null);
        assert.match(html.stderr, /not JSON/);
        assertError(await cli(['tenants', 'show', 'redirect', '--url', otherUrl]), 1, 'HTTP_302');
        assert.deepEqual(seen, ['/v1/tenants', '/v1/tenants/html', '/v1/tenants/redirect'], 'the redirect was not followed with the token');
      } finally {
        await new Promise<void>((resolve) => other.close(() => resolve()));
      }
    });

    test('the entry point as a child process: exit codes 0, 1 and 2', async () => {
      const env = { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '' };
      const run = (args: string[]) =>
        new Promise<Run>((resolve) => {
          // Asynchronous: the server answering the child runs in this process's event loop.
          execFile(process.execPath, ['--import', 'tsx', ENTRY, ...args], { env, timeout: 30_000 }, (error, stdout, stderr) => {
            const code = error ? (typeof error.code === 'number' ? error.code : -1) : 0;
            resolve({ code, stdout: String(stdout), stderr: String(stderr) });
          });
        });
      const [ok, notFound, usage] = await Promise.all([
        run(['tenants', 'list', '--json', '--url', url, '--token', t.operatorToken]),
        run(['tenants', 'show', 'no-such-tenant', '--url', url, '--token', t.operatorToken]),
        run(['tenants', 'list', '--bogus']),
      ]);
      tokenFree.push(ok.stdout, ok.stderr, notFound.stdout, notFound.stderr);
      assert.equal(ok.code, 0, ok.stderr);
      assert.ok(Array.isArray(JSON.parse(ok.stdout).tenants));
      assertError(notFound, 1, 'TENANT_NOT_FOUND');
      assertError(usage, 2, null);
    });

    test('no command but token mint prints a token', () => {
      assert.ok(tokenFree.length > 50, 'the other tests ran first');
      for (const text of tokenFree) {
        assert.ok(!text.includes(t.operatorToken), 'the operator token is never printed');
        assert.doesNotMatch(text, JWT, 'no tenant token is printed');
      }
    });
  });
}
