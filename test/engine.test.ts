/**
 * The storage engines behind the core (PGlite and PostgreSQL via `pg`): a batch is one atomic
 * transaction, its errors name the failing statement and carry no server text, prepared
 * statements survive errors, parameters that cannot be bound are refused before anything runs,
 * interactive transactions commit and roll back, and migrations apply exactly once.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { DatabaseError } from '../src/errors.js';
import type { Engine } from '../src/store/engine.js';
import { MIGRATIONS } from '../src/store/migrations.js';
import { Store } from '../src/store/store.js';
import { BACKENDS, createTestDatabase, type TestDatabase } from './support/backends.js';

/** A value the server quotes in its detail text ("Key (v)=(...) already exists"); it must never reach our message. */
const SECRET = 'secret-value-7f3a9c';

for (const kind of BACKENDS) {
  describe(`engine (${kind})`, () => {
    let db: TestDatabase;
    let engine: Engine;
    let tableSeq = 0;

    /** A fresh table per test, so tests do not see each other's rows. */
    async function table(): Promise<string> {
      const name = `t_${++tableSeq}`;
      await engine.script(`CREATE TABLE ${name} (id integer PRIMARY KEY, v text UNIQUE)`);
      return name;
    }

    async function count(name: string): Promise<number> {
      const [r] = await engine.batch([{ text: `SELECT count(*)::int AS n FROM ${name}` }]);
      return r!.rows[0]!.n as number;
    }

    before(async () => {
      db = await createTestDatabase(kind);
      engine = await db.engine();
    });
    after(async () => {
      await db.drop();
    });

    it('runs a batch in order and returns one result per statement', async () => {
      const t = await table();
      const results = await engine.batch([
        { text: `INSERT INTO ${t} (id, v) VALUES ($1, $2)`, values: [1, 'a'] },
        { text: `INSERT INTO ${t} (id, v) VALUES ($1, $2), ($3, $4)`, values: [2, 'b', 3, 'c'] },
        { text: `SELECT id, v FROM ${t} ORDER BY id` },
      ]);
      assert.equal(results.length, 3);
      assert.equal(results[0]!.rowCount, 1);
      assert.equal(results[1]!.rowCount, 2);
      assert.deepEqual(results[2]!.rows, [
        { id: 1, v: 'a' },
        { id: 2, v: 'b' },
        { id: 3, v: 'c' },
      ]);
    });

    it('rolls the whole batch back when its third statement fails, and names that statement', async () => {
      const t = await table();
      await assert.rejects(
        engine.batch([
          { text: `INSERT INTO ${t} (id, v) VALUES ($1, $2)`, values: [1, 'one'] },
          { text: `INSERT INTO ${t} (id, v) VALUES ($1, $2)`, values: [2, SECRET] },
          { text: `INSERT INTO ${t} (id, v) VALUES ($1, $2)`, values: [3, SECRET] },
          { text: `INSERT INTO ${t} (id, v) VALUES ($1, $2)`, values: [4, 'four'] },
        ]),
        (error: unknown) => {
          assert.ok(error instanceof DatabaseError, `expected DatabaseError, got ${String(error)}`);
          assert.equal(error.statementIndex, 2);
          assert.equal(error.sqlState, '23505');
          assert.equal(error.kind, 'unique');
          assert.equal(error.code, 'STORE_UNAVAILABLE');
          // Only the SQLSTATE: the server's detail ("Key (v)=(secret...) already exists") stays in `cause`.
          assert.equal(error.message, 'database error (SQLSTATE 23505)');
          assert.ok(!error.message.includes(SECRET));
          assert.ok(!String(error).includes(SECRET));
          return true;
        },
      );
      assert.equal(await count(t), 0, 'statements 1 and 2 must not be committed');
    });

    it('names the failing statement for other SQLSTATE classes too', async () => {
      const t = await table();
      await assert.rejects(
        engine.batch([
          { text: `INSERT INTO ${t} (id, v) VALUES ($1, $2)`, values: [1, 'x'] },
          { text: `INSERT INTO ${t} (id, v) VALUES ($1, $2)`, values: [null, 'y'] },
        ]),
        (error: unknown) => {
          assert.ok(error instanceof DatabaseError);
          assert.equal(error.statementIndex, 1);
          assert.equal(error.kind, 'not_null');
          assert.equal(error.message, 'database error (SQLSTATE 23502)');
          return true;
        },
      );
      await assert.rejects(engine.batch([{ text: 'SELECT 1/0' }]), (error: unknown) => {
        assert.ok(error instanceof DatabaseError);
        assert.equal(error.statementIndex, 0);
        assert.equal(error.sqlState, '22012');
        assert.equal(error.kind, 'other');
        return true;
      });
      assert.equal(await count(t), 0);
    });

    it('runs named statements repeatedly, and again after errors on the same connection', async () => {
      // One connection on PostgreSQL, so every batch below reuses the connection the name was prepared on.
      const one = kind === 'postgres' ? await db.engine({ maxConnections: 1 }) : engine;
      const t = await table();
      const insert = (id: number, v: string) => ({ name: `ins_${t}`, text: `INSERT INTO ${t} (id, v) VALUES ($1, $2) RETURNING id`, values: [id, v] });
      const select = (id: number) => ({ name: `sel_${t}`, text: `SELECT v FROM ${t} WHERE id = $1`, values: [id] });

      for (let i = 1; i <= 5; i++) {
        const [r] = await one.batch([insert(i, `v${i}`)]);
        assert.deepEqual(r!.rows, [{ id: i }]);
      }
      // The named statement itself fails (duplicate key), inside a batch, after another named statement.
      await assert.rejects(one.batch([select(1), insert(1, 'dup')]), (error: unknown) => {
        assert.ok(error instanceof DatabaseError);
        assert.equal(error.statementIndex, 1);
        assert.equal(error.kind, 'unique');
        return true;
      });
      // An unnamed statement fails before a named one is reached.
      await assert.rejects(one.batch([{ text: 'SELECT no_such_column' }, select(1)]), (error: unknown) => {
        assert.ok(error instanceof DatabaseError);
        assert.equal(error.statementIndex, 0);
        assert.equal(error.sqlState, '42703');
        return true;
      });
      // A statement whose text fails to parse under a name: the name is not recorded as prepared.
      const broken = { name: `bad_${t}`, text: `SELEC v FROM ${t}` };
      await assert.rejects(one.batch([broken]), (error: unknown) => error instanceof DatabaseError && error.sqlState === '42601');
      await assert.rejects(one.batch([broken]), (error: unknown) => error instanceof DatabaseError && error.sqlState === '42601');
      // A name first parsed in a batch that then fails: the parse may have reached the server,
      // so the connection closes the name, and the next batch parses it again (a second Parse of
      // a name that exists would fail with 42P05).
      const fresh = { name: `fresh_${t}`, text: `SELECT v FROM ${t} WHERE id = $1`, values: [1] };
      await assert.rejects(one.batch([fresh, { text: 'SELECT no_such_column' }]), (error: unknown) => error instanceof DatabaseError && error.sqlState === '42703');
      const [again] = await one.batch([fresh, fresh]);
      assert.deepEqual(again!.rows, [{ v: 'v1' }]);
      // Both names still work afterwards.
      const [ins, sel] = await one.batch([insert(6, 'v6'), select(6)]);
      assert.deepEqual(ins!.rows, [{ id: 6 }]);
      assert.deepEqual(sel!.rows, [{ v: 'v6' }]);
      for (let i = 1; i <= 6; i++) {
        const [r] = await one.batch([select(i)]);
        assert.deepEqual(r!.rows, [{ v: `v${i}` }]);
      }
      // Named statements inside an interactive transaction, after an error in an earlier transaction.
      const got = await one.transaction(async (tx) => {
        const [a] = await tx.batch([select(2)]);
        const [b] = await tx.batch([select(3)]);
        return [a!.rows[0]!.v, b!.rows[0]!.v];
      });
      assert.deepEqual(got, ['v2', 'v3']);
      assert.equal(await count(t), 6);
    });

    for (const [label, bad] of [
      ['an object', { a: 1 }],
      ['an array', [1, 2]],
      ['a function', () => 1],
      ['a symbol', Symbol('s')],
      ['NaN', Number.NaN],
    ] as const) {
      it(`refuses ${label} as a parameter with nothing executed`, async () => {
        const t = await table();
        const one = kind === 'postgres' ? await db.engine({ maxConnections: 1 }) : engine;
        await assert.rejects(
          one.batch([
            { text: `INSERT INTO ${t} (id, v) VALUES ($1, $2)`, values: [1, 'first'] },
            { text: `INSERT INTO ${t} (id, v) VALUES ($1, $2)`, values: [2, 'second'] },
            { text: `INSERT INTO ${t} (id, v) VALUES ($1, $2)`, values: [3, bad] },
          ]),
          (error: unknown) => {
            assert.ok(error instanceof DatabaseError, `expected DatabaseError, got ${String(error)}`);
            assert.equal(error.statementIndex, 2);
            assert.equal(error.message, 'database error');
            return true;
          },
        );
        // Neither the pipeline's earlier statements nor anything else was committed, and the
        // (single) connection still serves the next batch.
        assert.equal(await count(t), 0);
        const [r] = await one.batch([{ text: `SELECT count(*)::int AS n FROM ${t}` }]);
        assert.equal(r!.rows[0]!.n, 0);
        await assert.rejects(
          one.transaction(async (tx) => {
            await tx.batch([{ text: `INSERT INTO ${t} (id, v) VALUES ($1, $2)`, values: [1, 'first'] }]);
            await tx.batch([{ text: `INSERT INTO ${t} (id, v) VALUES ($1, $2)`, values: [2, bad] }]);
          }),
          (error: unknown) => error instanceof DatabaseError,
        );
        assert.equal(await count(t), 0);
      });
    }

    it('keeps at most 10,000 named statements per connection, and runs an evicted one again', async () => {
      const one = kind === 'postgres' ? await db.engine({ maxConnections: 1 }) : engine;
      const total = 10_150;
      for (let i = 0; i < total; i += 50) {
        const batch = Array.from({ length: 50 }, (_, j) => ({ name: `bh_evict_${i + j}`, text: `SELECT $1::int + ${i + j} AS n`, values: [1] }));
        const results = await one.batch(batch);
        results.forEach((r, j) => assert.equal(r.rows[0]!.n, 1 + i + j));
      }
      if (kind === 'postgres') {
        const [held] = await one.batch([{ text: "SELECT count(*)::int AS n FROM pg_prepared_statements WHERE name LIKE 'bh\\_evict\\_%'" }]);
        assert.ok((held!.rows[0]!.n as number) <= 10_000, `the connection holds ${String(held!.rows[0]!.n)} statements`);
        assert.ok((held!.rows[0]!.n as number) >= 9_000, 'statements are kept, not re-prepared every time');
      }
      // The first ones were evicted; they are prepared again and give the right answer.
      const [again] = await one.batch([{ name: 'bh_evict_0', text: 'SELECT $1::int + 0 AS n', values: [41] }]);
      assert.equal(again!.rows[0]!.n, 41);
    });

    it('binds every scalar type it accepts', async () => {
      const [r] = await engine.batch([
        {
          text: 'SELECT $1::text AS s, $2::int AS i, $3::float8 AS f, $4::bigint::text AS b, $5::boolean AS t, $6::timestamptz AS d, $7::text AS n',
          values: ['x', 7, 1.5, 9007199254740993n, true, new Date('2024-05-06T07:08:09.010Z'), null],
        },
      ]);
      const row = r!.rows[0]!;
      assert.equal(row.s, 'x');
      assert.equal(row.i, 7);
      assert.equal(row.f, 1.5);
      assert.equal(row.b, '9007199254740993');
      assert.equal(row.t, true);
      assert.equal((row.d as Date).toISOString(), '2024-05-06T07:08:09.010Z');
      assert.equal(row.n, null);
    });

    it('commits an interactive transaction when its function resolves', async () => {
      const t = await table();
      const value = await engine.transaction(async (tx) => {
        await tx.batch([{ text: `INSERT INTO ${t} (id, v) VALUES ($1, $2)`, values: [1, 'a'] }]);
        // The second batch sees the first batch's uncommitted row: same connection, same transaction.
        const [, r] = await tx.batch([
          { text: `INSERT INTO ${t} (id, v) VALUES ($1, $2)`, values: [2, 'b'] },
          { text: `SELECT count(*)::int AS n FROM ${t}` },
        ]);
        return r!.rows[0]!.n;
      });
      assert.equal(value, 2);
      assert.equal(await count(t), 2);
    });

    it('rolls an interactive transaction back when its function throws', async () => {
      const t = await table();
      const boom = new Error('application failure');
      await assert.rejects(
        engine.transaction(async (tx) => {
          await tx.batch([{ text: `INSERT INTO ${t} (id, v) VALUES ($1, $2)`, values: [1, 'a'] }]);
          await tx.batch([{ text: `INSERT INTO ${t} (id, v) VALUES ($1, $2)`, values: [2, 'b'] }]);
          throw boom;
        }),
        (error: unknown) => error === boom,
      );
      assert.equal(await count(t), 0);
    });

    it('rolls an interactive transaction back when one of its batches fails', async () => {
      const t = await table();
      await assert.rejects(
        engine.transaction(async (tx) => {
          await tx.batch([{ text: `INSERT INTO ${t} (id, v) VALUES ($1, $2)`, values: [1, 'a'] }]);
          await tx.batch([
            { text: `INSERT INTO ${t} (id, v) VALUES ($1, $2)`, values: [2, 'b'] },
            { text: `INSERT INTO ${t} (id, v) VALUES ($1, $2)`, values: [3, 'a'] },
          ]);
        }),
        (error: unknown) => {
          assert.ok(error instanceof DatabaseError);
          assert.equal(error.statementIndex, 1);
          assert.equal(error.kind, 'unique');
          return true;
        },
      );
      assert.equal(await count(t), 0);
      // The engine is usable afterwards (the connection went back to the pool clean).
      await engine.transaction(async (tx) => {
        await tx.batch([{ text: `INSERT INTO ${t} (id, v) VALUES ($1, $2)`, values: [1, 'a'] }]);
      });
      assert.equal(await count(t), 1);
    });

    it('runs a script in one transaction: a failing script leaves nothing', async () => {
      const t = await table();
      await assert.rejects(
        engine.script(`INSERT INTO ${t} (id, v) VALUES (1, 'a'); INSERT INTO ${t} (id, v) VALUES (2, 'b'); SELECT 1/0;`),
        (error: unknown) => error instanceof DatabaseError && error.sqlState === '22012',
      );
      assert.equal(await count(t), 0);
    });

    it('applies migrations once: migrating twice applies nothing the second time', async () => {
      const store = new Store(engine, { ownerRole: db.ownerRole, appRole: db.appRole, partitions: 4 });
      const first = await store.migrate();
      assert.deepEqual(first.applied, MIGRATIONS.map((m) => m.version));
      const second = await store.migrate();
      assert.deepEqual(second.applied, []);
      const [r] = await engine.batch([{ text: 'SELECT version FROM bulkhead.migrations ORDER BY version' }]);
      assert.deepEqual(r!.rows.map((row) => row.version), MIGRATIONS.map((m) => m.version));
      assert.equal(await store.storedPartitions(), 4);
    });

    it('two concurrent migrations of a fresh database both succeed and apply each migration once', async () => {
      const fresh = await createTestDatabase(kind);
      try {
        const options = { ownerRole: fresh.ownerRole, appRole: fresh.appRole, partitions: 4 };
        // PostgreSQL: two pools, so the two migrations really race on two connections.
        const a = new Store(await fresh.engine(), options);
        const b = new Store(await fresh.engine(), options);
        const [ra, rb] = await Promise.all([a.migrate(), b.migrate()]);
        assert.deepEqual([...ra.applied, ...rb.applied].sort((x, y) => x - y), MIGRATIONS.map((m) => m.version));
        const [r] = await a.engine.batch([{ text: 'SELECT version FROM bulkhead.migrations ORDER BY version' }]);
        assert.deepEqual(r!.rows.map((row) => row.version), MIGRATIONS.map((m) => m.version));
        assert.deepEqual((await b.migrate()).applied, []);
      } finally {
        await fresh.drop();
      }
    });
  });
}
