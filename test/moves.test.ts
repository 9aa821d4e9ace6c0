/**
 * Online tenant moves (SPEC section 2): every pair of tiers on every backend, under concurrent
 * reads and writes; the other tenants counted before and after, as Citus'
 * `multi_tenant_isolation.sql` does; the refusals (bad input, a tenant already moving or not
 * active, a region change without a legal basis) each changing nothing.
 */
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { BACKENDS, createTenant, defineCollection, openTestBulkhead, request, type TestBulkhead, type TestResponse } from './support/backends.js';
import { assertProblem } from './support/assertions.js';
import { SEED_COLLECTION, dataChecksums, finished, seedRecords, tenantChecksums } from './support/moves.js';
import { Moves, type MoveView } from '../src/placement/moves.js';
import { BulkheadError } from '../src/errors.js';
import type { TenantRow } from '../src/placement/tier.js';
import { Placements } from '../src/placement/placements.js';
import type { Statement } from '../src/store/engine.js';

const TIERS = ['pool', 'bridge', 'silo'] as const;

/**
 * The change capture a move keeps of a tenant at a source in the control cell's database
 * (src/placement/capture.ts): its triggers there (three per captured table) and its log's rows.
 */
async function captureOf(t: TestBulkhead, tenantId: string): Promise<{ triggers: number; logged: number }> {
  const [, triggers, logged] = await t.bh.store.engine.batch([
    { text: `SET LOCAL ROLE ${t.db.ownerRole}` },
    { text: 'SELECT count(*)::int AS n FROM pg_trigger WHERE tgname LIKE $1 AND tgparentid = 0', values: [`bh_capture_${tenantId.replace(/-/g, '')}_%`] },
    { text: 'SELECT count(*)::int AS n FROM bulkhead.move_changes WHERE tenant_id = $1', values: [tenantId] },
  ]);
  return { triggers: triggers!.rows[0]!.n as number, logged: logged!.rows[0]!.n as number };
}

for (const kind of BACKENDS) {
  describe(`tenant moves (${kind})`, () => {
    let t: TestBulkhead;
    let bystanders: Array<{ id: string; token: string }>;
    let seq = 0;
    const slug = (p: string) => `${p}-${++seq}-${kind}`;
    const op = (method: 'GET' | 'POST' | 'PATCH', url: string, body?: unknown) =>
      request(t.app, method, url, { token: t.operatorToken, ...(body === undefined ? {} : { body }) });

    /** A tenant of `tier` with the seed collection and `count` records. */
    async function seeded(tier: string, count: number): Promise<{ id: string; token: string }> {
      const s = slug(`mv-${tier}`);
      const created = await op('POST', '/v1/tenants', { slug: s, name: s, tier });
      assert.equal(created.status, 201, created.text);
      const token = (await request(t.app, 'POST', `/v1/tenants/${created.body.id}/tokens`, { token: t.operatorToken, body: { sub: 'u', roles: ['tenant_admin'] } })).body.token;
      await defineCollection(t, token, 'items', SEED_COLLECTION);
      await seedRecords(t.bh, created.body.id, count, `${s}-`);
      return { id: created.body.id, token };
    }

    before(async () => {
      t = await openTestBulkhead(kind);
      // Other tenants on every tier, which no move may touch.
      bystanders = [];
      for (const tier of TIERS) bystanders.push(await seeded(tier, 120));
    });
    after(async () => {
      await t?.close();
    });

    it("a placement entry's age counts from before its read, so an entry read before a switch expires a cache time after it", async () => {
      // The move removes its source a cache time after the switch committed; an entry whose read
      // began before the commit but answered after it must not outlive that.
      const tenant = await seeded('pool', 1);
      const ttl = 400;
      const placements = new Placements(t.bh.placements.cells, { cacheTtlMs: ttl });
      const engine = t.bh.placements.control.store.engine;
      const batch = engine.batch.bind(engine);
      let reads = 0;
      engine.batch = async (statements: readonly Statement[], ...rest: unknown[]) => {
        if (statements.some((st) => st.name === 'bh_placement')) {
          reads++;
          // A slow answer: it arrives later than the read began.
          await new Promise((resolve) => setTimeout(resolve, 500));
        }
        return (batch as (s: readonly Statement[], ...r: unknown[]) => ReturnType<typeof batch>)(statements, ...rest);
      };
      try {
        const began = Date.now();
        assert.equal((await placements.resolve(tenant.id))?.tier, 'pool');
        assert.equal(reads, 1);
        // Past a cache time from the read's start, though not from its answer: read again.
        await new Promise((resolve) => setTimeout(resolve, Math.max(0, began + ttl + 200 - Date.now())));
        await placements.resolve(tenant.id);
        assert.equal(reads, 2, 'the entry expired a cache time after its read began');
      } finally {
        engine.batch = batch;
      }
    });

    for (const from of TIERS) {
      for (const to of TIERS) {
        if (from === to) continue;
        it(`moves a tenant from ${from} to ${to} while it is read and written, losing and duplicating nothing`, async () => {
          const tenant = await seeded(from, 1500);
          const others = await Promise.all(bystanders.map((b) => tenantChecksums(t.bh, b.id)));
          const before = await tenantChecksums(t.bh, tenant.id);

          const move = await op('POST', `/v1/tenants/${tenant.id}/moves`, { tier: to });
          assert.equal(move.status, 202, move.text);
          assert.ok(['planned', 'copying'].includes(move.body.state));
          assert.deepEqual(move.body.source.tier, from);
          assert.deepEqual(move.body.target.tier, to);

          // Writes and reads while the move runs: every write that succeeded must be there after;
          // a write may only fail as paused (503 with Retry-After); a read never fails.
          // Creates, updates (a unique and a plain field) and deletes, so the sync meets every kind
          // of change; `written` is what must be there afterwards.
          const written = new Map<string, { title: string; note: string }>();
          let reads = 0;
          let running = true;
          const watcher = finished(t.bh, tenant.id, move.body.id).finally(() => {
            running = false;
          });
          const paused = (res: TestResponse) => {
            if (res.status !== 503) return false;
            assertProblem(res, 503, 'TENANT_WRITES_PAUSED');
            assert.ok(Number(res.headers['retry-after']) >= 1);
            return true;
          };
          let i = 0;
          while (running || i < 6) {
            const title = `live-${i++}`;
            const w = await request(t.app, 'POST', '/v1/collections/items/records', { token: tenant.token, body: { fields: { title, n: -i, note: 'new' } } });
            if (w.status === 201) written.set(w.body.id, { title, note: 'new' });
            else assert.ok(paused(w), w.text);
            const [oldest] = written.keys();
            if (oldest !== undefined && i % 3 === 0) {
              const changed = { title: `${written.get(oldest)!.title}-e${i}`, note: `edited-${i}` };
              const u = await request(t.app, 'PATCH', `/v1/collections/items/records/${oldest}`, { token: tenant.token, body: { fields: changed } });
              if (u.status === 200) written.set(oldest, changed);
              else assert.ok(paused(u), u.text);
            }
            if (oldest !== undefined && i % 5 === 0) {
              const d = await request(t.app, 'DELETE', `/v1/collections/items/records/${oldest}`, { token: tenant.token });
              if (d.status === 204) written.delete(oldest);
              else assert.ok(paused(d), d.text);
            }
            const r = await request(t.app, 'GET', '/v1/collections/items/records?limit=5', { token: tenant.token });
            assert.equal(r.status, 200, r.text);
            reads += 1;
          }
          const done = await watcher;
          assert.equal(done.state, 'done', JSON.stringify(done));
          assert.ok(reads > 0 && written.size > 0);
          // How long the pause lasts is measured by bench/moves.bench.ts; here: it was recorded, and lifted.
          assert.equal(typeof done.progress.pauseMs, 'number');
          const lifted = await request(t.app, 'POST', '/v1/collections/items/records', { token: tenant.token, body: { fields: { title: 'after-move', n: 1 } } });
          assert.equal(lifted.status, 201, lifted.text);
          assert.equal(done.progress.copied >= done.progress.total, true);

          // The checksums recorded at the switch agree, and the tenant's data now is its data
          // before the move plus exactly the writes that succeeded.
          assert.deepEqual(done.checksums!.source, done.checksums!.target);
          const placed = await t.bh.placements.resolve(tenant.id);
          assert.equal(placed!.tier, to);
          assert.equal((await op('GET', `/v1/tenants/${tenant.id}`)).body.tier, to);
          // Every live record is there as last written (paged: there may be more than a page).
          const live = new Map<string, { title: string; note: string }>();
          let cursor: string | null = null;
          do {
            const page = await request(t.app, 'GET', `/v1/collections/items/records?limit=200&filter=${encodeURIComponent(JSON.stringify({ n: { lt: 0 } }))}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`, { token: tenant.token });
            assert.equal(page.status, 200, page.text);
            for (const r of page.body.records as Array<{ id: string; fields: { title: string; note: string } }>) live.set(r.id, { title: r.fields.title, note: r.fields.note });
            cursor = page.body.nextCursor;
          } while (cursor);
          assert.deepEqual(new Map([...live].sort()), new Map([...written].sort()));
          const after = await tenantChecksums(t.bh, tenant.id);
          assert.equal(after['records/items']!.rows, before['records/items']!.rows + written.size + 1);
          assert.equal(after['unique_values/items']!.rows, before['unique_values/items']!.rows + written.size + 1);
          // A unique value copied over is still enforced at the new placement.
          const kept = [...written.values()][0]!.title;
          const dup = await request(t.app, 'POST', '/v1/collections/items/records', { token: tenant.token, body: { fields: { title: kept, n: 1 } } });
          assertProblem(dup, 409, 'RECORD_UNIQUE_VIOLATION');

          // Nothing of any other tenant changed.
          assert.deepEqual(await Promise.all(bystanders.map((b) => tenantChecksums(t.bh, b.id))), others);
          // The history names the move.
          const history = await op('GET', `/v1/tenants/${tenant.id}/history`);
          assert.ok(history.body.history.some((h: { event: string }) => h.event === 'moved'));
        });
      }
    }

    // The switch takes its comparison base before the pause and adjusts it for the records the
    // change log names since; these check that what it records is the data as it is. An old
    // record changed between the base and the pause is named in the log like a new one: neither
    // case sums the source whole under the pause (the switch did for the second, before the log).
    for (const [name, lateWrite, scan] of [
      ['writes after the snapshot are new records, edits and deletes of records written since', 'recent', 'changes'],
      ['an old record is edited and another deleted between the comparison base and the pause', 'old', 'changes'],
    ] as const) {
      it(`records the switch's checksums of the data as it is when ${name}`, async () => {
        const tenant = await seeded('pool', 400);
        const row = (await op('GET', `/v1/tenants/${tenant.id}`)).body as TenantRow;
        const write = (method: 'GET' | 'POST' | 'PATCH' | 'DELETE', url: string, body?: unknown) =>
          request(t.app, method, url, { token: tenant.token, ...(body === undefined ? {} : { body }) });
        const page = await write('GET', '/v1/collections/items/records?limit=3&sort=n');
        const old = (page.body.records as Array<{ id: string }>).map((r) => r.id);
        assert.equal(old.length, 3);
        let created: string[] = [];
        let capturing: { triggers: number; logged: number } | undefined;
        const mover = new Moves(t.bh.placements, {
          batchSize: 100,
          onStep: async (m: MoveView) => {
            // After the verification's catch-up: a record created, then edited; another created, then deleted.
            if (m.state !== 'switching' || created.length > 0) return;
            capturing = await captureOf(t, tenant.id);
            for (const title of ['late-a', 'late-b']) created.push((await write('POST', '/v1/collections/items/records', { fields: { title, n: 1 } })).body.id);
            assert.equal((await write('PATCH', `/v1/collections/items/records/${created[0]}`, { fields: { note: 'late' } })).status, 200);
            assert.equal((await write('DELETE', `/v1/collections/items/records/${created[1]}`)).status, 204);
            created = created.slice(0, 1);
          },
          beforePause: async () => {
            if (lateWrite === 'recent') {
              created.push((await write('POST', '/v1/collections/items/records', { fields: { title: 'late-c', n: 2 } })).body.id);
            } else {
              assert.equal((await write('PATCH', `/v1/collections/items/records/${old[0]}`, { fields: { title: 'renamed-old', n: -1 } })).status, 200);
              assert.equal((await write('DELETE', `/v1/collections/items/records/${old[1]}`)).status, 204);
            }
          },
        });
        try {
          const started = await mover.start(row, { tier: 'bridge' }, 'test');
          await mover.wait(started.id);
          const done = await mover.get(tenant.id, started.id);
          assert.equal(done.state, 'done', JSON.stringify(done));
          assert.equal(done.progress.checksumScan, scan);
          assert.deepEqual(done.checksums!.source, done.checksums!.target);
          // Nothing was written after the switch: what it recorded is the new placement's data, summed whole now.
          assert.deepEqual(done.checksums!.target, await tenantChecksums(t.bh, tenant.id));
          const expected = lateWrite === 'recent' ? 400 + 2 : 400 + 1 - 1;
          assert.equal(done.checksums!.target['records/items']!.rows, expected);
          const renamed = await write('GET', `/v1/collections/items/records?filter=${encodeURIComponent(JSON.stringify({ title: { eq: 'renamed-old' } }))}`);
          assert.equal(renamed.body.records.length, lateWrite === 'old' ? 1 : 0);
          // Under the pause the switch copied the records written since its last pass (those of
          // \`beforePause\`), not the tenant: one created; or one edited and one deleted.
          assert.equal(done.progress.pauseRecords, lateWrite === 'recent' ? 1 : 2);
          // The source's changes were captured during the move (a trigger per operation on each
          // of the three record tables), and nothing of the capture is left after it.
          assert.equal(capturing?.triggers, 9);
          assert.deepEqual(await captureOf(t, tenant.id), { triggers: 0, logged: 0 });
        } finally {
          await mover.close();
        }
      });
    }

    it('fences the source against writes routed with an outdated placement, and waits for those under way', async () => {
      const tenant = await seeded('pool', 200);
      const row = (await op('GET', `/v1/tenants/${tenant.id}`)).body as TenantRow;
      const source = (await t.bh.placements.resolve(tenant.id))!;
      // What another process holds while its directory entry is not yet expired: a write scope on
      // the source, routed with the epoch before the move.
      const stale = await t.bh.placements.tiers.pool.scope(t.bh.placements.cells.get(source.cell), tenant.id, source.location, { writeEpoch: source.epoch });
      // A record with its unique and index values, as the write path stores one.
      const insert = (title: string) => {
        const id = randomUUID();
        return [
          {
            text:
              'INSERT INTO records (tenant_id, collection, id, data, schema_version, created_by, updated_by) ' +
              "VALUES ($1, 'items', $2, jsonb_build_object('title', $3::text, 'n', 7), 1, 'other-process', 'other-process')",
            values: [tenant.id, id, title],
          },
          { text: "INSERT INTO unique_values (tenant_id, collection, field, key, record_id) VALUES ($1, 'items', 'title', bulkhead.value_key(to_jsonb($3::text)), $2)", values: [tenant.id, id, title] },
          { text: "INSERT INTO index_values (tenant_id, collection, field, key, record_id) VALUES ($1, 'items', 'n', bulkhead.value_key('7'::jsonb), $2)", values: [tenant.id, id] },
        ];
      };
      let inFlight: Promise<unknown> | undefined;
      const mover = new Moves(t.bh.placements, {
        batchSize: 100,
        beforePause: async () => {
          // A write of the other process that passed its check just before the pause, and commits
          // while the switch runs: the switch must wait for it and carry it over.
          let passed!: () => void;
          const checked = new Promise<void>((resolve) => (passed = resolve));
          inFlight = stale.transaction(async (tx) => {
            await tx.batch(insert('in-flight'));
            passed();
            await new Promise((resolve) => setTimeout(resolve, 300));
          });
          await checked;
        },
      });
      try {
        const started = await mover.start(row, { tier: 'bridge' }, 'test');
        await mover.wait(started.id);
        await inFlight;
        const done = await mover.get(tenant.id, started.id);
        assert.equal(done.state, 'done', JSON.stringify(done));
        assert.deepEqual(done.checksums!.source, done.checksums!.target);
        assert.deepEqual(await tenantChecksums(t.bh, tenant.id), done.checksums!.target, 'the new placement holds what the switch verified');
        const found = await request(t.app, 'GET', `/v1/collections/items/records?filter=${encodeURIComponent(JSON.stringify({ title: { eq: 'in-flight' } }))}`, { token: tenant.token });
        assert.equal(found.status, 200, found.text);
        assert.equal(found.body.records.length, 1, 'the write under way at the switch is at the new placement');
        // After the switch, the outdated route is refused by the database itself, with the code
        // that tells the caller to retry; nothing is written.
        await assert.rejects(stale.batch(insert('too-late')), (e: unknown) => e instanceof BulkheadError && e.code === 'TENANT_WRITES_PAUSED');
        // Nothing of the data changed; the trail holds one more event: the read just above.
        const after = await tenantChecksums(t.bh, tenant.id);
        assert.deepEqual(dataChecksums(after), dataChecksums(done.checksums!.target));
        assert.equal(after['audit_events/chain']!.rows, done.checksums!.target['audit_events/chain']!.rows + 1);
        // The tenant is active again, one epoch on, and writes through the router succeed.
        assert.equal((await op('GET', `/v1/tenants/${tenant.id}`)).body.status, 'active');
        assert.equal((await t.bh.placements.resolve(tenant.id))!.epoch, source.epoch + 1);
        const w = await request(t.app, 'POST', '/v1/collections/items/records', { token: tenant.token, body: { fields: { title: 'after', n: 1 } } });
        assert.equal(w.status, 201, w.text);
      } finally {
        await mover.close();
      }
    });

    it('removes the source only after the switch: no row of the tenant is left where it was', async () => {
      const tenant = await seeded('bridge', 50);
      const source = (await t.bh.placements.resolve(tenant.id))!;
      const move = await op('POST', `/v1/tenants/${tenant.id}/moves`, { tier: 'pool' });
      const done = await finished(t.bh, tenant.id, move.body.id);
      assert.equal(done.state, 'done');
      const [r] = await t.bh.store.engine.batch([{ text: 'SELECT to_regnamespace($1) IS NULL AS gone', values: [source.location] }]);
      assert.equal(r!.rows[0]!.gone, true, 'the bridge schema is dropped');
      // And moved back: the pool rows are purged when it leaves the pool again.
      const back = await op('POST', `/v1/tenants/${tenant.id}/moves`, { tier: 'bridge' });
      assert.equal((await finished(t.bh, tenant.id, back.body.id)).state, 'done');
      const [left] = await t.bh.store.engine.batch([
        { text: `SET LOCAL ROLE ${t.db.ownerRole}` },
        { text: "SELECT set_config('bulkhead.tenant_id', $1, true)", values: [tenant.id] },
        { text: 'SELECT count(*)::int AS n FROM bulkhead.records WHERE tenant_id = $1', values: [tenant.id] },
      ]).then((rs) => [rs[2]]);
      assert.equal(left!.rows[0]!.n, 0);
    });

    it('reports the size of a tenant outside the pool, counted at its placement', async () => {
      for (const tier of ['bridge', 'silo'] as const) {
        const tenant = await seeded(tier, 40);
        const usage = await op('GET', `/v1/tenants/${tenant.id}/usage`);
        assert.equal(usage.status, 200, usage.text);
        assert.equal(usage.body.size.rows, 40, tier);
        assert.ok(usage.body.size.bytes > 0, tier);
      }
    });

    it('refuses bad input with a clear error and changes nothing', async () => {
      const tenant = await seeded('pool', 10);
      const before = await tenantChecksums(t.bh, tenant.id);
      const cases: Array<[unknown, number, string, string]> = [
        [{ tier: 'gold' }, 400, 'MOVE_INVALID', 'tier'],
        [{}, 400, 'MOVE_INVALID', 'tier'],
        [{ tier: 'bridge', cell: 'nowhere' }, 400, 'PLACEMENT_CELL_UNKNOWN', 'cell'],
        [{ tier: 'bridge', cell: 'Bad Cell' }, 400, 'MOVE_INVALID', 'cell'],
        [{ tier: 'bridge', region: 'mars' }, 409, 'PLACEMENT_NO_CELL', 'region'],
        [{ tier: 'bridge', legalBasis: 'short' }, 400, 'MOVE_INVALID', 'legalBasis'],
        [{ tier: 'bridge', extra: 1 }, 400, 'MOVE_INVALID', 'body'],
        [{ tier: 'pool' }, 400, 'MOVE_INVALID', 'tier'],
        [[{ tier: 'bridge' }], 400, 'MOVE_INVALID', 'body'],
      ];
      for (const [body, status, code, field] of cases) {
        const res = await op('POST', `/v1/tenants/${tenant.id}/moves`, body);
        assertProblem(res, status, code);
        assert.equal(res.body.field, field, JSON.stringify(body));
      }
      assert.deepEqual((await op('GET', `/v1/tenants/${tenant.id}/moves`)).body.moves, []);
      assertProblem(await op('POST', '/v1/tenants/no-such-tenant/moves', { tier: 'bridge' }), 404, 'TENANT_NOT_FOUND');
      assertProblem(await op('GET', `/v1/tenants/${tenant.id}/moves/not-a-uuid`), 404, 'MOVE_NOT_FOUND');
      assertProblem(await op('GET', `/v1/tenants/${tenant.id}/moves/${tenant.id}`), 404, 'MOVE_NOT_FOUND');
      assert.deepEqual(await tenantChecksums(t.bh, tenant.id), before);
      assert.equal((await t.bh.placements.resolve(tenant.id))!.tier, 'pool');
    });

    it('refuses to move a tenant already moving, or one that is not active', async () => {
      const tenant = await seeded('pool', 10);
      // An unfinished move (as a crashed process leaves one, before any restart resumes it).
      await t.bh.store.platform().batch([
        {
          text:
            "INSERT INTO bulkhead.moves (id, tenant_id, state, source, target, progress, actor) VALUES (gen_random_uuid(), $1, 'copying', '{}', '{}', '{}', 'test')",
          values: [tenant.id],
        },
      ]);
      assertProblem(await op('POST', `/v1/tenants/${tenant.id}/moves`, { tier: 'bridge' }), 409, 'MOVE_IN_PROGRESS');
      assert.equal((await t.bh.placements.resolve(tenant.id))!.tier, 'pool');
      await t.bh.store.platform().batch([{ text: "UPDATE bulkhead.moves SET state = 'rolled_back' WHERE tenant_id = $1", values: [tenant.id] }]);

      for (const status of ['suspended', 'quarantined', 'offboarding']) {
        await t.bh.store.platform().batch([{ text: 'UPDATE bulkhead.tenants SET status = $2 WHERE id = $1', values: [tenant.id, status] }]);
        const res = await op('POST', `/v1/tenants/${tenant.id}/moves`, { tier: 'bridge' });
        assertProblem(res, 400, 'MOVE_INVALID');
        assert.match(res.body.detail, new RegExp(status));
      }
      await t.bh.store.platform().batch([{ text: "UPDATE bulkhead.tenants SET status = 'active' WHERE id = $1", values: [tenant.id] }]);
      assert.equal((await op('GET', `/v1/tenants/${tenant.id}/moves`)).body.moves.length, 1);
      assert.equal((await t.bh.placements.resolve(tenant.id))!.tier, 'pool');
    });

    it('keeps the tenant on its source when the copy fails, and rolls the target back', async () => {
      const tenant = await seeded('pool', 30);
      const before = await tenantChecksums(t.bh, tenant.id);
      // A target that cannot take the rows: a bridge schema squatted by a table of the wrong shape.
      const bridge = t.bh.placements.tiers.bridge;
      const cell = t.bh.placements.cells.control;
      const schema = bridge.locationOf(cell, tenant.id);
      await t.bh.store.engine.script(`CREATE SCHEMA ${schema} AUTHORIZATION ${t.db.ownerRole}; SET LOCAL ROLE ${t.db.ownerRole}; CREATE TABLE ${schema}.index_values (x int);`);
      const move = await op('POST', `/v1/tenants/${tenant.id}/moves`, { tier: 'bridge' });
      const done = await finished(t.bh, tenant.id, move.body.id);
      assert.equal(done.state, 'rolled_back');
      assert.match(done.error!, /^(planned|copying): /);
      assert.equal((await t.bh.placements.resolve(tenant.id))!.tier, 'pool');
      assert.deepEqual(await tenantChecksums(t.bh, tenant.id), before);
      assert.deepEqual(await captureOf(t, tenant.id), { triggers: 0, logged: 0 }, 'the rollback removed the change capture');
      const w = await request(t.app, 'POST', '/v1/collections/items/records', { token: tenant.token, body: { fields: { title: 'after-rollback', n: 1 } } });
      assert.equal(w.status, 201, 'writes are not left paused');
      assert.deepEqual(await captureOf(t, tenant.id), { triggers: 0, logged: 0 }, 'a write after the rollback is not logged');
    });
  });

  describe(`moves across regions (${kind})`, () => {
    let t: TestBulkhead;
    before(async () => {
      t = await openTestBulkhead(kind, { BULKHEAD_REGIONS: 'eu,us' }, { controlRegion: 'eu', cells: [{ name: 'us-1', region: 'us' }, { name: 'eu-2', region: 'eu' }] });
    });
    after(async () => {
      await t?.close();
    });
    const op = (method: 'GET' | 'POST', url: string, body?: unknown) =>
      request(t.app, method, url, { token: t.operatorToken, ...(body === undefined ? {} : { body }) });

    it('moves between cells of a region without a legal basis, and refuses a region change without one', async () => {
      const a = await createTenant(t, `eu-${kind}-a`);
      await defineCollection(t, a.token, 'items', SEED_COLLECTION);
      await seedRecords(t.bh, a.id, 200, 'a-');
      const before = await tenantChecksums(t.bh, a.id);

      for (const body of [{ tier: 'pool', region: 'us' }, { tier: 'pool', cell: 'us-1' }, { tier: 'silo', cell: 'us-1' }]) {
        const res = await op('POST', `/v1/tenants/${a.id}/moves`, body);
        assertProblem(res, 400, 'RESIDENCY_LEGAL_BASIS_REQUIRED');
        assert.equal(res.body.field, 'legalBasis');
      }
      assertProblem(await op('POST', `/v1/tenants/${a.id}/moves`, { tier: 'pool', region: 'eu', cell: 'us-1' }), 409, 'RESIDENCY_VIOLATION');
      assert.deepEqual((await op('GET', `/v1/tenants/${a.id}/moves`)).body.moves, []);

      const within = await op('POST', `/v1/tenants/${a.id}/moves`, { tier: 'bridge', cell: 'eu-2' });
      assert.equal(within.status, 202, within.text);
      const done = await finished(t.bh, a.id, within.body.id);
      assert.equal(done.state, 'done', JSON.stringify(done));
      assert.deepEqual(await t.bh.placements.resolve(a.id), { tier: 'bridge', cell: 'eu-2', location: done.target.location, region: 'eu', writesPausedUntil: null, epoch: 2 });
      assert.deepEqual(await tenantChecksums(t.bh, a.id), before);
      const read = await request(t.app, 'GET', '/v1/collections/items/records?limit=1', { token: a.token });
      assert.equal(read.status, 200);
    });

    it('moves a tenant to another region with a legal basis, and records it', async () => {
      const b = await createTenant(t, `eu-${kind}-b`);
      await defineCollection(t, b.token, 'items', SEED_COLLECTION);
      await seedRecords(t.bh, b.id, 200, 'b-');
      const before = await tenantChecksums(t.bh, b.id);
      const legalBasis = 'GDPR Art. 46(2)(c): standard contractual clauses, contract ref. TEST-1';
      const res = await op('POST', `/v1/tenants/${b.id}/moves`, { tier: 'silo', region: 'us', legalBasis });
      assert.equal(res.status, 202, res.text);
      const done = await finished(t.bh, b.id, res.body.id);
      assert.equal(done.state, 'done', JSON.stringify(done));
      assert.equal(done.legalBasis, legalBasis);
      assert.equal(done.source.region, 'eu');
      assert.equal(done.target.region, 'us');
      assert.equal(done.target.cell, 'us-1');
      const tenant = (await op('GET', `/v1/tenants/${b.id}`)).body;
      assert.equal(tenant.region, 'us');
      assert.equal(tenant.tier, 'silo');
      assert.deepEqual(await tenantChecksums(t.bh, b.id), before);
      const read = await request(t.app, 'GET', '/v1/collections/items/records?limit=1', { token: b.token });
      assert.equal(read.status, 200);
      // The directory lists it in us-1; the API lists the cells with their regions.
      const dir = (await op('GET', '/v1/placements')).body;
      assert.equal(dir.placements.find((p: { tenantId: string }) => p.tenantId === b.id).cell, 'us-1');
      assert.deepEqual(dir.cells.map((c: { name: string; region: string }) => `${c.name}:${c.region}`), ['local:eu', 'us-1:us', 'eu-2:eu']);
    });
  });
}
