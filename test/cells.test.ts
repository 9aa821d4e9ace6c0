/**
 * A tenant moved between two real PostgreSQL servers: the control cell on the test server and a
 * second cell on another cluster (`.ci/run` creates and starts it with pg_createcluster and sets
 * BULKHEAD_TEST_SECOND_SERVER_URL). The tenant goes to the other server's pool, to a silo database
 * there, and back to a bridge schema at home, with identical checksums at every stop and its
 * neighbours on both servers untouched.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { BACKENDS, createTenant, defineCollection, openTestBulkhead, request, type TestBulkhead } from './support/backends.js';
import { SEED_COLLECTION, dataChecksums, finished, seedRecords, tenantChecksums } from './support/moves.js';

const SECOND = process.env.BULKHEAD_TEST_SECOND_SERVER_URL || undefined;

describe('moves between two PostgreSQL servers', { skip: !BACKENDS.includes('postgres') ? 'the postgres backend is not selected' : !SECOND ? 'BULKHEAD_TEST_SECOND_SERVER_URL is not set (.ci/run sets it)' : false }, () => {
  let t: TestBulkhead;
  before(async () => {
    t = await openTestBulkhead('postgres', { BULKHEAD_REGIONS: 'eu' }, { controlRegion: 'eu', cells: [{ name: 'eu-2', region: 'eu', serverUrl: SECOND! }] });
  });
  after(async () => {
    await t?.close();
  });

  /** Whether a database of this name exists on the second server. */
  async function onSecond(database: string): Promise<boolean> {
    const c = new pg.Client({ connectionString: SECOND });
    await c.connect();
    try {
      return (await c.query('SELECT 1 FROM pg_database WHERE datname = $1', [database])).rowCount === 1;
    } finally {
      await c.end();
    }
  }

  it('moves a tenant to the other server and back with identical data', async () => {
    const mover = await createTenant(t, 'two-servers');
    await defineCollection(t, mover.token, 'items', SEED_COLLECTION);
    await seedRecords(t.bh, mover.id, 3000, 'm-');
    const home = await createTenant(t, 'stays-home');
    await defineCollection(t, home.token, 'items', SEED_COLLECTION);
    await seedRecords(t.bh, home.id, 100, 'h-');
    const away = (await request(t.app, 'POST', '/v1/tenants', { token: t.operatorToken, body: { slug: 'lives-away', name: 'x', cell: 'eu-2' } })).body;
    const awayToken = (await request(t.app, 'POST', `/v1/tenants/${away.id}/tokens`, { token: t.operatorToken, body: { sub: 'u', roles: ['tenant_admin'] } })).body.token;
    await defineCollection(t, awayToken, 'items', SEED_COLLECTION);
    await seedRecords(t.bh, away.id, 100, 'a-');

    const before = await tenantChecksums(t.bh, mover.id);
    const neighbours = async () => [await tenantChecksums(t.bh, home.id), await tenantChecksums(t.bh, away.id)];
    const neighboursBefore = await neighbours();

    for (const target of [{ tier: 'pool', cell: 'eu-2' }, { tier: 'silo', cell: 'eu-2' }, { tier: 'bridge', cell: 'local' }]) {
      const res = await request(t.app, 'POST', `/v1/tenants/${mover.id}/moves`, { token: t.operatorToken, body: target });
      assert.equal(res.status, 202, res.text);
      const done = await finished(t.bh, mover.id, res.body.id);
      assert.equal(done.state, 'done', JSON.stringify(done));
      assert.deepEqual(done.checksums!.source, done.checksums!.target);
      const placed = (await t.bh.placements.resolve(mover.id))!;
      assert.deepEqual({ tier: placed.tier, cell: placed.cell }, target);
      // The data is as before; the audit chain grew only by the reads made between the moves.
      assert.deepEqual(dataChecksums(await tenantChecksums(t.bh, mover.id)), dataChecksums(before), `data after the move to ${JSON.stringify(target)}`);
      const read = await request(t.app, 'GET', '/v1/collections/items/records?limit=3', { token: mover.token });
      assert.equal(read.status, 200);
      assert.equal(read.body.records.length, 3);
      if (target.tier === 'silo') assert.equal(await onSecond(placed.location), true, 'the silo database is on the second server');
      if (done.source.tier === 'silo') assert.equal(await onSecond(done.source.location), false, 'the silo database was dropped after the move');
    }
    assert.deepEqual(await neighbours(), neighboursBefore, 'the other tenants, their audit chains included, are untouched');
  });
});
