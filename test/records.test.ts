/**
 * Records through the HTTP API: the Airtable-shaped CRUD round trip, UUIDv7 ids, defaults,
 * normalization (e-mail, date-time), PATCH semantics (nulls clear, the merged record is
 * validated, the version increments), unique values (per tenant, collection and field; freed by
 * PATCH and DELETE), references (same tenant, target collection), writes racing a definition
 * change made by another Bulkhead instance, and concurrent PATCHes of one record.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Bulkhead } from '../src/bulkhead.js';
import { BACKENDS, createTenant, defineCollection, openTestBulkhead, request, type TestBulkhead, type TestResponse } from './support/backends.js';

type Tenant = { id: string; slug: string; token: string };
type RecordBody = { id: string; fields: Record<string, unknown>; createdAt: string; updatedAt: string; version: number };

const UUIDV7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

const TASKS = {
  fields: {
    title: { type: 'string', required: true },
    done: { type: 'boolean', default: false },
    priority: { type: 'integer', default: 3 },
    tags: { type: 'json', default: { list: [] } },
    state: { type: 'enum', values: ['open', 'closed'], default: 'open' },
    owner: { type: 'email' },
    due: { type: 'datetime' },
    day: { type: 'date' },
    score: { type: 'number' },
    note: { type: 'text' },
  },
};

for (const kind of BACKENDS) {
  describe(`records (${kind})`, () => {
    let t: TestBulkhead;
    let seq = 0;

    before(async () => {
      t = await openTestBulkhead(kind);
    });
    after(async () => {
      await t?.close();
    });

    const tenant = (): Promise<Tenant> => createTenant(t, `rec-${kind}-${++seq}`, ['builder', 'member']);
    const put = async (a: Tenant, name: string, body: unknown): Promise<void> => {
      await defineCollection(t, a.token, name, body);
    };
    const post = (a: Tenant, name: string, fields: unknown): Promise<TestResponse> =>
      request(t.app, 'POST', `/v1/collections/${name}/records`, { token: a.token, body: { fields } });
    const created = async (a: Tenant, name: string, fields: Record<string, unknown>): Promise<RecordBody> => {
      const res = await post(a, name, fields);
      assert.equal(res.status, 201, res.text);
      return res.body;
    };
    const getRec = (a: Tenant, name: string, id: string): Promise<TestResponse> =>
      request(t.app, 'GET', `/v1/collections/${name}/records/${id}`, { token: a.token });
    const patch = (a: Tenant, name: string, id: string, fields: unknown): Promise<TestResponse> =>
      request(t.app, 'PATCH', `/v1/collections/${name}/records/${id}`, { token: a.token, body: { fields } });
    const del = (a: Tenant, name: string, id: string): Promise<TestResponse> =>
      request(t.app, 'DELETE', `/v1/collections/${name}/records/${id}`, { token: a.token });
    const count = async (a: Tenant, name: string): Promise<number> => {
      const res = await request(t.app, 'GET', `/v1/collections/${name}/records?limit=1000`, { token: a.token });
      assert.equal(res.status, 200, res.text);
      return res.body.records.length;
    };
    const expectError = (res: TestResponse, status: number, code: string, field?: string): void => {
      assert.equal(res.status, status, res.text);
      assert.equal(res.body.code, code);
      assert.match(String(res.headers['content-type']), /^application\/problem\+json/);
      if (field !== undefined) assert.equal(res.body.field, field);
    };

    it('round-trips a record: create, read, update, delete, in the Airtable shape', async () => {
      const a = await tenant();
      await put(a, 'tasks', TASKS);
      const res = await post(a, 'tasks', { title: 'Write tests', score: 1.5, note: 'first' });
      assert.equal(res.status, 201);
      const rec = res.body;
      assert.deepEqual(Object.keys(rec).sort(), ['createdAt', 'fields', 'id', 'updatedAt', 'version']);
      assert.match(rec.id, UUIDV7);
      assert.match(rec.createdAt, ISO);
      assert.equal(rec.updatedAt, rec.createdAt);
      assert.equal(rec.version, 1);
      assert.deepEqual(rec.fields, { title: 'Write tests', done: false, priority: 3, tags: { list: [] }, state: 'open', score: 1.5, note: 'first' });

      const read = await getRec(a, 'tasks', rec.id);
      assert.equal(read.status, 200);
      assert.deepEqual(read.body, rec);

      const updated = await patch(a, 'tasks', rec.id, { done: true, note: 'second' });
      assert.equal(updated.status, 200);
      assert.equal(updated.body.id, rec.id);
      assert.equal(updated.body.version, 2);
      assert.equal(updated.body.createdAt, rec.createdAt);
      assert.ok(updated.body.updatedAt >= rec.updatedAt);
      assert.deepEqual(updated.body.fields, { ...rec.fields, done: true, note: 'second' });
      assert.deepEqual((await getRec(a, 'tasks', rec.id)).body, updated.body);

      const gone = await del(a, 'tasks', rec.id);
      assert.equal(gone.status, 204);
      assert.equal(gone.text, '');
      expectError(await getRec(a, 'tasks', rec.id), 404, 'RECORD_NOT_FOUND');
      expectError(await del(a, 'tasks', rec.id), 404, 'RECORD_NOT_FOUND');
      expectError(await patch(a, 'tasks', rec.id, { done: false }), 404, 'RECORD_NOT_FOUND');
      assert.equal(await count(a, 'tasks'), 0);
    });

    it('gives every record a UUIDv7 id, increasing in creation order', async () => {
      const a = await tenant();
      await put(a, 'tasks', TASKS);
      const ids: string[] = [];
      for (let i = 0; i < 20; i++) ids.push((await created(a, 'tasks', { title: `t${i}` })).id);
      for (const id of ids) assert.match(id, UUIDV7);
      assert.equal(new Set(ids).size, ids.length);
      assert.deepEqual([...ids].sort(), ids);
    });

    it('applies defaults on create only where a value is missing', async () => {
      const a = await tenant();
      await put(a, 'tasks', TASKS);
      const given = await created(a, 'tasks', { title: 'x', done: true, priority: 0, tags: { list: ['a'] }, state: 'closed' });
      assert.deepEqual(given.fields, { title: 'x', done: true, priority: 0, tags: { list: ['a'] }, state: 'closed' });
      const defaulted = await created(a, 'tasks', { title: 'y' });
      assert.deepEqual(defaulted.fields, { title: 'y', done: false, priority: 3, tags: { list: [] }, state: 'open' });
      // Defaults are copies: changing one record's json default does not change the next record's.
      await patch(a, 'tasks', defaulted.id, { tags: { list: ['changed'] } });
      assert.deepEqual((await created(a, 'tasks', { title: 'z' })).fields.tags, { list: [] });
    });

    it('PATCH: a null clears a field, absent fields are kept, defaults are not re-applied', async () => {
      const a = await tenant();
      await put(a, 'tasks', TASKS);
      const rec = await created(a, 'tasks', { title: 'x', note: 'keep me', score: 2, owner: 'a@b.co' });
      const cleared = await patch(a, 'tasks', rec.id, { score: null, priority: null, note: undefined });
      assert.equal(cleared.status, 200, cleared.text);
      assert.deepEqual(cleared.body.fields, { title: 'x', done: false, tags: { list: [] }, state: 'open', note: 'keep me', owner: 'a@b.co' });
      assert.equal(cleared.body.version, 2);
      // An empty patch still writes a new version.
      const empty = await patch(a, 'tasks', rec.id, {});
      assert.equal(empty.status, 200);
      assert.equal(empty.body.version, 3);
      assert.deepEqual(empty.body.fields, cleared.body.fields);
    });

    it('PATCH validates the merged record: a required field cannot be cleared, types are checked', async () => {
      const a = await tenant();
      await put(a, 'tasks', TASKS);
      const rec = await created(a, 'tasks', { title: 'x' });
      expectError(await patch(a, 'tasks', rec.id, { title: null }), 400, 'RECORD_INVALID', 'title');
      expectError(await patch(a, 'tasks', rec.id, { priority: 'high' }), 400, 'RECORD_INVALID', 'priority');
      expectError(await patch(a, 'tasks', rec.id, { state: 'archived' }), 400, 'RECORD_INVALID', 'state');
      expectError(await patch(a, 'tasks', rec.id, { nope: 1 }), 400, 'RECORD_INVALID', 'nope');
      expectError(await patch(a, 'tasks', rec.id, { owner: 'not-an-email' }), 400, 'RECORD_INVALID', 'owner');
      expectError(await patch(a, 'tasks', rec.id, { due: '2024-13-45T99:00:00Z' }), 400, 'RECORD_INVALID', 'due');
      const after = await getRec(a, 'tasks', rec.id);
      assert.deepEqual(after.body, rec, 'refused patches change nothing, not even the version');
    });

    it('create validates: required fields, types, unknown fields', async () => {
      const a = await tenant();
      await put(a, 'tasks', TASKS);
      expectError(await post(a, 'tasks', {}), 400, 'RECORD_INVALID', 'title');
      expectError(await post(a, 'tasks', { title: null }), 400, 'RECORD_INVALID', 'title');
      expectError(await post(a, 'tasks', { title: 5 }), 400, 'RECORD_INVALID', 'title');
      expectError(await post(a, 'tasks', { title: 'x', priority: 1.5 }), 400, 'RECORD_INVALID', 'priority');
      expectError(await post(a, 'tasks', { title: 'x', day: '2024-02-30' }), 400, 'RECORD_INVALID', 'day');
      expectError(await post(a, 'tasks', { title: 'x', extra: 1 }), 400, 'RECORD_INVALID', 'extra');
      assert.equal(await count(a, 'tasks'), 0);
    });

    it('increments the version on every update', async () => {
      const a = await tenant();
      await put(a, 'tasks', TASKS);
      const rec = await created(a, 'tasks', { title: 'x' });
      for (let v = 2; v <= 6; v++) {
        const res = await patch(a, 'tasks', rec.id, { priority: v });
        assert.equal(res.body.version, v);
      }
      assert.equal((await getRec(a, 'tasks', rec.id)).body.version, 6);
    });

    it('lower-cases e-mails and normalizes date-times to UTC ISO 8601', async () => {
      const a = await tenant();
      await put(a, 'tasks', TASKS);
      const rec = await created(a, 'tasks', { title: 'x', owner: 'Grace.Hopper@Navy.MIL', due: '2024-06-01T12:30:00+02:00', day: '2024-06-01' });
      assert.equal(rec.fields.owner, 'grace.hopper@navy.mil');
      assert.equal(rec.fields.due, '2024-06-01T10:30:00.000Z');
      assert.equal(rec.fields.day, '2024-06-01');
      const p = await patch(a, 'tasks', rec.id, { owner: 'ADA@EXAMPLE.ORG', due: '2024-12-31T23:59:59.5-05:00' });
      assert.equal(p.body.fields.owner, 'ada@example.org');
      assert.equal(p.body.fields.due, '2025-01-01T04:59:59.500Z');
      const z = await created(a, 'tasks', { title: 'y', due: '2024-01-02T03:04:05Z' });
      assert.equal(z.fields.due, '2024-01-02T03:04:05.000Z');
    });

    describe('unique fields', () => {
      const PEOPLE = {
        fields: {
          email: { type: 'email', unique: true },
          badge: { type: 'string', unique: true },
          alias: { type: 'string', unique: true },
          n: { type: 'integer', unique: true },
          name: { type: 'string' },
        },
      };

      it('a duplicate answers 409 RECORD_UNIQUE_VIOLATION naming the field, and writes nothing', async () => {
        const a = await tenant();
        await put(a, 'people', PEOPLE);
        await created(a, 'people', { email: 'ann@example.com', badge: 'B1', n: 1 });
        // E-mails are compared after lower-casing.
        expectError(await post(a, 'people', { email: 'ANN@example.com' }), 409, 'RECORD_UNIQUE_VIOLATION', 'email');
        expectError(await post(a, 'people', { badge: 'B1' }), 409, 'RECORD_UNIQUE_VIOLATION', 'badge');
        // 1 and 1.0 are the same JSON number.
        expectError(await post(a, 'people', { n: 1.0 }), 409, 'RECORD_UNIQUE_VIOLATION', 'n');
        // The detail names the field, never the value.
        const res = await post(a, 'people', { badge: 'B1' });
        assert.ok(!res.text.includes('B1'));
        assert.equal(await count(a, 'people'), 1);
        // Strings are case-sensitive; only e-mails are folded.
        assert.equal((await post(a, 'people', { badge: 'b1' })).status, 201);
      });

      it('is per field, per collection and per tenant', async () => {
        const a = await tenant();
        const b = await tenant();
        await put(a, 'people', PEOPLE);
        await put(a, 'robots', { fields: { badge: { type: 'string', unique: true } } });
        await put(b, 'people', PEOPLE);
        await created(a, 'people', { badge: 'same', alias: 'same' });
        await created(a, 'robots', { badge: 'same' });
        await created(b, 'people', { badge: 'same', alias: 'same' });
        expectError(await post(a, 'people', { alias: 'same' }), 409, 'RECORD_UNIQUE_VIOLATION', 'alias');
        expectError(await post(a, 'robots', { badge: 'same' }), 409, 'RECORD_UNIQUE_VIOLATION', 'badge');
        expectError(await post(b, 'people', { badge: 'same' }), 409, 'RECORD_UNIQUE_VIOLATION', 'badge');
      });

      it('a PATCH that changes a unique value frees the old one and claims the new one', async () => {
        const a = await tenant();
        await put(a, 'people', PEOPLE);
        const p1 = await created(a, 'people', { badge: 'X', name: 'one' });
        const p2 = await created(a, 'people', { badge: 'Z', name: 'two' });
        // Patching other fields, or setting the same value, keeps the value claimed by the same record.
        assert.equal((await patch(a, 'people', p1.id, { name: 'uno' })).status, 200);
        assert.equal((await patch(a, 'people', p1.id, { badge: 'X' })).status, 200);
        expectError(await patch(a, 'people', p2.id, { badge: 'X' }), 409, 'RECORD_UNIQUE_VIOLATION', 'badge');
        assert.equal((await getRec(a, 'people', p2.id)).body.fields.badge, 'Z');

        assert.equal((await patch(a, 'people', p1.id, { badge: 'Y' })).status, 200);
        assert.equal((await post(a, 'people', { badge: 'X' })).status, 201, 'the old value is free');
        expectError(await post(a, 'people', { badge: 'Y' }), 409, 'RECORD_UNIQUE_VIOLATION', 'badge');
        // Clearing a unique value frees it as well.
        assert.equal((await patch(a, 'people', p1.id, { badge: null })).status, 200);
        assert.equal((await post(a, 'people', { badge: 'Y' })).status, 201);
      });

      it('DELETE frees the unique values of the record (cascade)', async () => {
        const a = await tenant();
        await put(a, 'people', PEOPLE);
        const p = await created(a, 'people', { email: 'bo@example.com', badge: 'K', n: 7 });
        const held = async (): Promise<number> => {
          const [r] = await t.bh.store.tenant(a.id).batch([
            { text: 'SELECT count(*)::int AS n FROM bulkhead.unique_values WHERE tenant_id = $1 AND record_id = $2', values: [a.id, p.id] },
          ]);
          return r!.rows[0]!.n as number;
        };
        assert.equal(await held(), 3);
        assert.equal((await del(a, 'people', p.id)).status, 204);
        assert.equal(await held(), 0);
        expectError(await del(a, 'people', p.id), 404, 'RECORD_NOT_FOUND');
        assert.equal((await post(a, 'people', { email: 'bo@example.com', badge: 'K', n: 7 })).status, 201);
      });
    });

    describe('references', () => {
      it('must name an existing record of the target collection in the same tenant', async () => {
        const a = await tenant();
        const b = await tenant();
        for (const x of [a, b]) {
          await put(x, 'people', { fields: { name: { type: 'string' } } });
          await put(x, 'teams', { fields: { name: { type: 'string' } } });
          await put(x, 'tasks', { fields: { title: { type: 'string' }, owner: { type: 'reference', collection: 'people' } } });
        }
        const ann = await created(a, 'people', { name: 'Ann' });
        const team = await created(a, 'teams', { name: 'T' });
        const bob = await created(b, 'people', { name: 'Bob' });

        const ok = await created(a, 'tasks', { title: 'x', owner: ann.id });
        assert.equal(ok.fields.owner, ann.id);
        // No such record; a record of another collection; a record of the target collection in another tenant.
        for (const owner of ['01936f4e-7c2a-7b3d-9e4f-0a1b2c3d4e5f', team.id, bob.id]) {
          expectError(await post(a, 'tasks', { title: 'y', owner }), 400, 'RECORD_REFERENCE_NOT_FOUND', 'owner');
          expectError(await patch(a, 'tasks', ok.id, { owner }), 400, 'RECORD_REFERENCE_NOT_FOUND', 'owner');
        }
        // Not a UUID at all: a validation error.
        expectError(await post(a, 'tasks', { title: 'y', owner: 'ann' }), 400, 'RECORD_INVALID', 'owner');
        assert.equal(await count(a, 'tasks'), 1);
        assert.equal((await getRec(a, 'tasks', ok.id)).body.fields.owner, ann.id);
        // Tenant b's own record is fine for tenant b.
        assert.equal((await post(b, 'tasks', { title: 'z', owner: bob.id })).status, 201);

        // A deleted target cannot be referenced by new writes; patching other fields still works.
        const cid = await created(a, 'people', { name: 'Cid' });
        assert.equal((await del(a, 'people', cid.id)).status, 204);
        expectError(await post(a, 'tasks', { title: 'w', owner: cid.id }), 400, 'RECORD_REFERENCE_NOT_FOUND', 'owner');
        const other = await patch(a, 'tasks', ok.id, { title: 'renamed' });
        assert.equal(other.status, 200, other.text);
      });
    });

    describe('a definition changed by another instance on the same database', () => {
      it('writes are validated against the new version (COLLECTION_CHANGED retry)', async () => {
        const a = await tenant();
        const v1 = { fields: { title: { type: 'string', required: true }, note: { type: 'string', maxLength: 100 } } };
        await put(a, 'items', v1);
        // This instance now caches version 1.
        const first = await created(a, 'items', { title: 'first', note: 'ok' });

        const other = await Bulkhead.open(t.config, { engine: await t.db.engine() });
        try {
          const schemaVersion = async (id: string): Promise<number> => {
            const [r] = await t.bh.store.tenant(a.id).batch([
              { text: 'SELECT schema_version FROM bulkhead.records WHERE tenant_id = $1 AND collection = $2 AND id = $3', values: [a.id, 'items', id] },
            ]);
            return r!.rows[0]!.schema_version as number;
          };

          // Stricter: note shrinks to 5 characters. A write valid for version 1 only is refused.
          const v2 = await other.collections.define(a.id, 'items', { fields: { title: { type: 'string', required: true }, note: { type: 'string', maxLength: 5 } } }, 'elsewhere');
          assert.equal(v2.collection.version, 2);
          expectError(await post(a, 'items', { title: 'x', note: 'longer than five' }), 400, 'RECORD_INVALID', 'note');
          assert.equal(await count(a, 'items'), 1);
          const fits = await created(a, 'items', { title: 'y', note: 'hi' });
          assert.equal(await schemaVersion(fits.id), 2);

          // PATCH: the same, through the version check inside its transaction.
          await other.collections.define(a.id, 'items', { fields: { title: { type: 'string', required: true }, note: { type: 'string', maxLength: 3 } } }, 'elsewhere');
          expectError(await patch(a, 'items', first.id, { note: 'four' }), 400, 'RECORD_INVALID', 'note');
          assert.equal((await getRec(a, 'items', first.id)).body.version, 1);
          const patched = await patch(a, 'items', first.id, { note: 'abc' });
          assert.equal(patched.status, 200, patched.text);
          assert.equal(await schemaVersion(first.id), 3);

          // Looser: a new field and title no longer required. A write valid only for the new version succeeds.
          await other.collections.define(a.id, 'items', { fields: { title: { type: 'string' }, note: { type: 'string', maxLength: 3 }, extra: { type: 'integer' } } }, 'elsewhere');
          const loose = await post(a, 'items', { extra: 42 });
          assert.equal(loose.status, 201, loose.text);
          assert.deepEqual(loose.body.fields, { extra: 42 });
          assert.equal(await schemaVersion(loose.body.id), 4);
          const loosePatch = await patch(a, 'items', fits.id, { title: null, extra: 1 });
          assert.equal(loosePatch.status, 200, loosePatch.text);
          assert.deepEqual(loosePatch.body.fields, { note: 'hi', extra: 1 });
        } finally {
          // PostgreSQL: the other instance has its own pool. PGlite: it shares the test's engine, which the test closes.
          if (kind === 'postgres') await other.close();
        }
      });
    });

    it('concurrent PATCHes of one record all succeed, one after another', async () => {
      const a = await tenant();
      await put(a, 'counters', { fields: { n: { type: 'integer' }, label: { type: 'string' } } });
      const rec = await created(a, 'counters', { n: 0 });
      const results = await Promise.all(
        Array.from({ length: 10 }, (_, i) => patch(a, 'counters', rec.id, { n: i + 1, label: `writer-${i + 1}` })),
      );
      for (const r of results) assert.equal(r.status, 200, r.text);
      // Serialized by the row lock: each saw the previous version, so versions 2..11 were each handed out once.
      assert.deepEqual(
        results.map((r) => r.body.version).sort((x: number, y: number) => x - y),
        [2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
      );
      const final = await getRec(a, 'counters', rec.id);
      assert.equal(final.body.version, 11);
      const last = results.find((r) => r.body.version === 11)!;
      assert.deepEqual(final.body.fields, last.body.fields);
      assert.equal(final.body.fields.label, `writer-${final.body.fields.n}`);
    });
  });
}
