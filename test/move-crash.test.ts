/**
 * Crash safety of tenant moves (PGlite's `tests/crash-safety/` pattern): a child process runs a
 * move and is killed with SIGKILL in each state of it; the parent reopens the store, the move
 * resumes from the state it was in, and finishes with identical checksums, no lost and no
 * duplicated row, the other tenant untouched, and the source removed (or, after a failure, the
 * target rolled back and the tenant left on its source).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Bulkhead } from '../src/bulkhead.js';
import { loadConfig } from '../src/config.js';
import { crashEnv, runChild } from './support/crash.js';
import { BACKENDS, createTestDatabase, type BackendKind, type TestDatabase } from './support/backends.js';
import { SEED_COLLECTION, seedRecords, tenantChecksums } from './support/moves.js';

const CHILD = join(import.meta.dirname, 'fixtures', 'move-child.ts');

interface Case {
  readonly crashAt: string;
  readonly from: 'pool' | 'bridge' | 'silo';
  readonly to: 'pool' | 'bridge' | 'silo';
  readonly sabotage?: boolean;
}

const CASES: readonly Case[] = [
  { crashAt: 'planned', from: 'pool', to: 'bridge' },
  { crashAt: 'copying', from: 'pool', to: 'bridge' },
  { crashAt: 'copying:3', from: 'pool', to: 'silo' },
  { crashAt: 'copying:5', from: 'bridge', to: 'pool' },
  { crashAt: 'verifying', from: 'pool', to: 'bridge' },
  { crashAt: 'switching', from: 'silo', to: 'bridge' },
  { crashAt: 'cleaning', from: 'pool', to: 'bridge' },
  { crashAt: 'failed', from: 'pool', to: 'bridge', sabotage: true },
];

for (const kind of BACKENDS) {
  describe(`tenant moves survive SIGKILL in every state (${kind})`, () => {
    let db: TestDatabase;
    let dataDir: string;
    let env: Record<string, string>;
    let seq = 0;

    before(async () => {
      db = await createTestDatabase(kind as BackendKind);
      dataDir = mkdtempSync(join(tmpdir(), 'bulkhead-crash-'));
      env = crashEnv(db, dataDir, {
        BULKHEAD_MOVE_BATCH_SIZE: '200',
        // The source goes this long after the switch (the directory cache time); short here.
        BULKHEAD_PLACEMENT_CACHE_MS: '200',
      });
    });
    after(async () => {
      await db?.drop();
      rmSync(dataDir, { recursive: true, force: true });
    });

    const open = () => Bulkhead.open(loadConfig({}, env));

    for (const c of CASES) {
      it(`killed in ${c.crashAt} (${c.from} → ${c.to}), the move ${c.sabotage ? 'rolls back' : 'resumes and completes'} with identical data`, async () => {
        // Set up: the tenant to move and a bystander, with data in every table.
        let bh = await open();
        const make = async (tier: string) => {
          const s = `crash-${kind}-${++seq}`;
          const tenant = await bh.tenants.create({ slug: s, name: s, tier }, 'operator:test');
          await bh.collections.define(tenant.id, 'items', SEED_COLLECTION, 'test');
          await seedRecords(bh, tenant.id, 1500, `${s}-`);
          return tenant.id;
        };
        const moving = await make(c.from);
        const bystander = await make('pool');
        const before = await tenantChecksums(bh, moving);
        const bystanderBefore = await tenantChecksums(bh, bystander);
        const source = (await bh.placements.resolve(moving))!;
        await bh.close();

        // The child starts the move and dies in the chosen state.
        const run = await runChild(CHILD, {
          ...env,
          MOVE_TENANT: moving,
          MOVE_BODY: JSON.stringify({ tier: c.to }),
          CRASH_AT: c.crashAt,
          ...(c.sabotage ? { SABOTAGE_TARGET: '1' } : {}),
        });
        assert.equal(run.signal, 'SIGKILL', `the child was to die in ${c.crashAt}; it exited with ${run.code}: ${run.stderr.slice(0, 2000)}`);

        // Restart: the move is in the state it was killed in, and resumes and runs to its end.
        // (Read before resuming: a rollback can finish before a query after the open.)
        bh = await Bulkhead.open(loadConfig({}, env), { resumeMoves: false });
        try {
          const [open1] = await bh.moves.list(moving);
          assert.ok(open1, 'the move was recorded');
          assert.equal(open1.state, c.crashAt.split(':')[0], 'the move is in the state it was killed in');
          assert.deepEqual(await bh.moves.resume(), [open1.id]);
          await bh.moves.wait(open1.id);
          const end = await bh.moves.get(moving, open1.id);
          const placed = (await bh.placements.resolve(moving))!;
          if (c.sabotage) {
            assert.equal(end.state, 'rolled_back', JSON.stringify(end));
            assert.deepEqual({ tier: placed.tier, location: placed.location }, { tier: source.tier, location: source.location });
          } else {
            assert.equal(end.state, 'done', JSON.stringify(end));
            assert.equal(placed.tier, c.to);
            // Nothing was written during the move: the copy read every row exactly once, across
            // the crash too (the cursor is saved with the count, after each batch).
            assert.equal(end.progress.copied, end.progress.total, 'rows copied');
            assert.deepEqual(end.checksums!.source, end.checksums!.target);
          }
          // Identical data: same per-collection row counts and digests as before the move, so no
          // row was lost, duplicated or changed, and the bystander is untouched.
          assert.deepEqual(await tenantChecksums(bh, moving), before);
          assert.deepEqual(await tenantChecksums(bh, bystander), bystanderBefore);
          // Where the tenant is not, nothing of it is left.
          const gone = c.sabotage ? end.target : end.source;
          const tier = bh.placements.tiers[gone.tier];
          if (gone.tier !== 'pool') {
            const leftover = gone.tier === 'bridge'
              ? await bh.placements.cells.get(gone.cell).store.engine.batch([{ text: 'SELECT to_regnamespace($1) IS NOT NULL AS present', values: [gone.location] }])
              : kind === 'postgres'
                ? await bh.store.engine.batch([{ text: 'SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS present', values: [gone.location] }])
                : [{ rows: [{ present: false }], rowCount: 1 }];
            assert.equal(leftover[0]!.rows[0]!.present, false, `${gone.tier} storage at ${gone.location} was removed`);
          } else {
            const [, , r] = await bh.store.engine.batch([
              { text: `SET LOCAL ROLE ${db.ownerRole}` },
              { text: "SELECT set_config('bulkhead.tenant_id', $1, true)", values: [moving] },
              { text: 'SELECT count(*)::int AS n FROM bulkhead.records WHERE tenant_id = $1', values: [moving] },
            ]);
            assert.equal(r!.rows[0]!.n, 0, 'no pool row of the tenant is left');
          }
          assert.ok(tier);
          // Nor the change capture the move kept at its source (src/placement/capture.ts): no
          // trigger or log row of the tenant in the control cell's database, whatever the source.
          const hex = moving.replace(/-/g, '');
          const [, triggers, logged] = await bh.store.engine.batch([
            { text: `SET LOCAL ROLE ${db.ownerRole}` },
            { text: 'SELECT count(*)::int AS n FROM pg_trigger WHERE tgname LIKE $1', values: [`bh_capture_${hex}_%`] },
            { text: 'SELECT count(*)::int AS n FROM bulkhead.move_changes WHERE tenant_id = $1', values: [moving] },
          ]);
          assert.deepEqual([triggers!.rows[0]!.n, logged!.rows[0]!.n], [0, 0], 'the change capture is removed');
        } finally {
          await bh.close();
        }
      });
    }
  });
}
