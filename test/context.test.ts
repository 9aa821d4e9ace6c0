/**
 * SPEC principle 2: the tenant context is set per transaction, so a pooled connection never
 * carries one tenant's context into another's request. On PostgreSQL the Store runs on a pool of
 * ONE connection, so every batch, tenant after tenant, failing or not, shares it; PGlite is a
 * single connection by nature. After each batch, a raw query on that connection outside any Store
 * scope must see the connecting user and no tenant setting.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, beforeEach, describe, it } from 'node:test';
import { DatabaseError, NotFoundError } from '../src/errors.js';
import type { Engine, Statement } from '../src/store/engine.js';
import { Store } from '../src/store/store.js';
import { BACKENDS, createTestDatabase, type TestDatabase } from './support/backends.js';
import { rejectsSql } from './support/assertions.js';

/** What a scoped batch sees of its own context; `n` is the number of records RLS lets it see. */
const PROBE: Statement = {
  text:
    "SELECT current_setting('bulkhead.tenant_id', true) AS tenant, current_setting('bulkhead.scope', true) AS scope, " +
    'current_user::text AS usr, pg_backend_pid() AS pid, (SELECT count(*)::int FROM bulkhead.records) AS n, ' +
    '(SELECT count(*)::int FROM bulkhead.tenants) AS tenants',
};

/** What a raw query outside any scope sees: nothing may be left of the last batch. */
const RAW_PROBE: Statement = {
  text:
    "SELECT current_user::text AS usr, session_user::text AS sess, current_setting('role') AS role, " +
    "current_setting('bulkhead.tenant_id', true) AS tenant, current_setting('bulkhead.scope', true) AS scope, pg_backend_pid() AS pid",
};

const DIVIDE_BY_ZERO: Statement = { text: 'SELECT 1 / 0 AS boom' };

interface Fixture {
  readonly db: TestDatabase;
  readonly engine: Engine;
  readonly store: Store;
  /** Tenant id → how many records it has (each tenant a different count, so a count names a tenant). */
  readonly tenants: ReadonlyMap<string, number>;
  /** Backend pids seen; one connection means one pid. */
  readonly pids: Set<number>;
}

async function setUp(kind: 'pglite' | 'postgres'): Promise<Fixture> {
  const db = await createTestDatabase(kind);
  const engine = await db.engine({ maxConnections: 1 });
  const store = new Store(engine, { ownerRole: db.ownerRole, appRole: db.appRole, partitions: 4 });
  await store.migrate();
  const tenants = new Map<string, number>();
  for (const [i, count] of [1, 2, 3].entries()) {
    const id = randomUUID();
    tenants.set(id, count);
    await store.platform().batch([
      {
        text: "INSERT INTO bulkhead.tenants (id, slug, name, status, tier, region) VALUES ($1, $2, $2, 'active', 'pool', 'local')",
        values: [id, `ctx-${i}-${id.slice(0, 8)}`],
      },
    ]);
    await store.tenant(id).batch([
      { text: "INSERT INTO bulkhead.collections (tenant_id, name, version, definition) VALUES ($1, 'c', 1, '{\"fields\":{}}')", values: [id] },
      {
        text:
          'INSERT INTO bulkhead.records (tenant_id, collection, id, data, schema_version, created_by, updated_by) ' +
          "SELECT $1, 'c', gen_random_uuid(), '{}', 1, 'ctx', 'ctx' FROM generate_series(1, $2::int)",
        values: [id, count],
      },
    ]);
  }
  return { db, engine, store, tenants, pids: new Set() };
}

/** Asserts a scoped probe row shows exactly `tenant` (or the platform scope when undefined). */
function assertScoped(f: Fixture, row: Record<string, unknown>, tenant: string | undefined): void {
  assert.equal(row.usr, f.db.appRole);
  if (tenant === undefined) {
    assert.equal(row.tenant, '');
    assert.equal(row.scope, 'platform');
    assert.equal(row.n, 0, 'the platform scope sees no tenant data');
    assert.equal(row.tenants, f.tenants.size, 'the platform scope sees the registry');
  } else {
    assert.equal(row.tenant, tenant);
    assert.equal(row.scope, 'tenant');
    assert.equal(row.n, f.tenants.get(tenant), 'a tenant sees exactly its own records');
    assert.equal(row.tenants, 1, 'a tenant sees only its own registry row');
  }
  f.pids.add(Number(row.pid));
}

/** A raw query on the engine, outside any scope: the connecting user, no role, no tenant left behind. */
async function assertClean(f: Fixture): Promise<void> {
  const [raw, , records] = await f.engine.batch([
    RAW_PROBE,
    // Switching to the application role without setting a tenant: it must see no record.
    { text: "SELECT set_config('role', $1, true)", values: [f.db.appRole] },
    { text: 'SELECT count(*)::int AS n FROM bulkhead.records' },
  ]);
  const row = raw!.rows[0]!;
  assert.equal(row.usr, row.sess, 'the connection kept a role');
  assert.equal(row.role, 'none');
  assert.ok(row.tenant === null || row.tenant === '', `the connection kept tenant ${String(row.tenant)}`);
  assert.ok(row.scope === null || row.scope === '', `the connection kept scope ${String(row.scope)}`);
  assert.equal(records!.rows[0]!.n, 0);
  f.pids.add(Number(row.pid));
}

/** One step of an interleaving: a scoped batch (tenant id, or undefined for the platform), maybe failing. */
interface Step {
  readonly tenant: string | undefined;
  readonly fail: 'none' | 'after' | 'first';
}

function steps(f: Fixture, count: number, seed: number): Step[] {
  const ids = [...f.tenants.keys()];
  const out: Step[] = [];
  // A fixed pseudo-random sequence (mulberry32; no Math.random, so a failure is reproducible).
  let state = seed >>> 0;
  const next = (n: number): number => {
    state = (state + 0x6d2b79f5) >>> 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 15), z | 1);
    z ^= z + Math.imul(z ^ (z >>> 7), z | 61);
    return ((z ^ (z >>> 14)) >>> 0) % n;
  };
  for (let i = 0; i < count; i++) {
    const who = next(ids.length + 1);
    const roll = next(10);
    const fail = roll === 0 ? 'first' : roll < 3 ? 'after' : 'none';
    out.push({ tenant: who === ids.length ? undefined : ids[who], fail });
  }
  return out;
}

async function run(f: Fixture, step: Step): Promise<void> {
  const scoped = step.tenant === undefined ? f.store.platform() : f.store.tenant(step.tenant);
  if (step.fail === 'none') {
    const [probe] = await scoped.batch([PROBE]);
    assertScoped(f, probe!.rows[0]!, step.tenant);
  } else {
    const statements = step.fail === 'after' ? [PROBE, DIVIDE_BY_ZERO, PROBE] : [DIVIDE_BY_ZERO, PROBE];
    await rejectsSql(scoped.batch(statements), '22012');
  }
}

for (const kind of BACKENDS) {
  describe(`tenant context on one pooled connection (${kind})`, () => {
    let f: Fixture;

    before(async () => {
      f = await setUp(kind);
    });
    after(async () => {
      await f?.db.drop();
    });
    beforeEach(() => {
      f?.pids.clear();
    });

    it('sequential interleaved batches of three tenants and the platform, some failing, each see only their own context', async () => {
      const plan = steps(f, 300, 7);
      assert.ok(plan.some((s) => s.fail !== 'none') && plan.some((s) => s.tenant === undefined));
      await assertClean(f);
      for (const step of plan) {
        await run(f, step);
        await assertClean(f);
      }
      if (kind === 'postgres') assert.equal(f.pids.size, 1, 'every batch ran on the one pooled connection');
    });

    it('concurrent batches (Promise.all) interleaved with raw queries never see another context', async () => {
      const plan = steps(f, 400, 11);
      const work: Promise<void>[] = [];
      for (const [i, step] of plan.entries()) {
        work.push(run(f, step));
        // Raw queries queue behind scoped batches on the same connection: each must find it clean.
        if (i % 3 === 0) work.push(assertClean(f));
      }
      await Promise.all(work);
      await assertClean(f);
      if (kind === 'postgres') assert.equal(f.pids.size, 1, 'every batch ran on the one pooled connection');
    });

    it('interactive transactions keep their context across batches and leave none behind, also when they throw', async () => {
      const [a, b] = [...f.tenants.keys()] as [string, string];
      // A committed transaction: the context of its first batch holds for the second.
      const seen = await f.store.tenant(a).transaction(async (tx) => {
        const [first] = await tx.batch([PROBE]);
        const [second] = await tx.batch([PROBE]);
        return [first!.rows[0]!, second!.rows[0]!];
      });
      for (const row of seen) assertScoped(f, row, a);
      await assertClean(f);

      // Throwing in code midway, after the context was set, the way Records.update gives up on a missing record.
      await assert.rejects(
        f.store.tenant(a).transaction(async (tx) => {
          const [probe] = await tx.batch([PROBE]);
          assertScoped(f, probe!.rows[0]!, a);
          throw new NotFoundError('RECORD_NOT_FOUND', 'no such record in this collection');
        }),
        { code: 'RECORD_NOT_FOUND' },
      );
      await assertClean(f);

      // A statement that raises in the second batch.
      await rejectsSql(
        f.store.tenant(b).transaction(async (tx) => {
          await tx.batch([PROBE]);
          await tx.batch([DIVIDE_BY_ZERO]);
        }),
        '22012',
      );
      await assertClean(f);

      // A statement that raises in the first batch, next to the context statement.
      await rejectsSql(f.store.tenant(b).transaction((tx) => tx.batch([DIVIDE_BY_ZERO])), '22012');
      await assertClean(f);

      // Throwing before any batch ran.
      await assert.rejects(
        f.store.platform().transaction(async () => {
          throw new NotFoundError('TENANT_NOT_FOUND', 'before any batch');
        }),
        { code: 'TENANT_NOT_FOUND' },
      );
      await assertClean(f);

      // Failing transactions mixed with batches of other tenants queued on the same connection.
      const work: Promise<unknown>[] = [];
      for (let i = 0; i < 60; i++) {
        const tenant = [...f.tenants.keys()][i % f.tenants.size]!;
        work.push(
          assert.rejects(
            f.store.tenant(tenant).transaction(async (tx) => {
              const [probe] = await tx.batch([PROBE]);
              assertScoped(f, probe!.rows[0]!, tenant);
              if (i % 2 === 0) throw new NotFoundError('RECORD_NOT_FOUND', 'midway');
              await tx.batch([DIVIDE_BY_ZERO]);
            }),
            (error: unknown) => error instanceof NotFoundError || (error instanceof DatabaseError && error.sqlState === '22012'),
          ),
        );
        work.push(run(f, { tenant: i % 4 === 3 ? undefined : [...f.tenants.keys()][(i + 1) % f.tenants.size], fail: 'none' }));
        work.push(assertClean(f));
      }
      await Promise.all(work);
      await assertClean(f);
      if (kind === 'postgres') assert.equal(f.pids.size, 1, 'every transaction ran on the one pooled connection');

      // An error without a code (a bug in application code) midway: the PostgreSQL engine does not
      // trust such a connection and discards it; either way nothing is left for the next batch.
      await assert.rejects(
        f.store.tenant(a).transaction(async (tx) => {
          await tx.batch([PROBE]);
          throw new TypeError('a bug midway');
        }),
        /a bug midway/,
      );
      await assertClean(f);
      const [probeB] = await f.store.tenant(b).batch([PROBE]);
      assertScoped(f, probeB!.rows[0]!, b);
    });

    it('a session-level tenant setting left on the connection is overridden by every scoped batch', async () => {
      // Defence in depth: even if something set the tenant for the whole session, each Store batch
      // sets its own context for its transaction, so tenants still see only their own rows.
      const [a, b] = [...f.tenants.keys()] as [string, string];
      await f.engine.batch([{ text: "SELECT set_config('bulkhead.tenant_id', $1, false)", values: [a] }]);
      try {
        const [poisoned] = await f.engine.batch([RAW_PROBE]);
        assert.equal(poisoned!.rows[0]!.tenant, a, 'the session setting was not applied; the test would be vacuous');
        const [probeB] = await f.store.tenant(b).batch([PROBE]);
        assertScoped(f, probeB!.rows[0]!, b);
        const [platform] = await f.store.platform().batch([PROBE]);
        assertScoped(f, platform!.rows[0]!, undefined);
      } finally {
        await f.engine.batch([{ text: "SELECT set_config('bulkhead.tenant_id', '', false)" }]);
      }
      await assertClean(f);
    });
  });
}
