/**
 * Collections through the HTTP API: every field type and flag, idempotent re-definition,
 * versioning with a history row per version, listing, the changes refused while stored records
 * would violate them (and allowed when none would), and unique/indexed flags added later
 * (backfilled, collisions refused with nothing changed) or dropped (constraint gone).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { BACKENDS, createTenant, openTestBulkhead, request, type TestBulkhead, type TestResponse } from './support/backends.js';

type Tenant = { id: string; slug: string; token: string };

const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

/** A definition using every field type and every flag. */
const FULL = {
  description: 'Everything a builder can declare',
  fields: {
    title: { type: 'string', required: true, maxLength: 200, classification: 'public', description: 'Shown in lists' },
    code: { type: 'string', unique: true },
    body: { type: 'text', maxLength: 5000, classification: 'confidential' },
    count: { type: 'integer', indexed: true, default: 0 },
    amount: { type: 'number', classification: 'pci' },
    active: { type: 'boolean', default: true },
    dueAt: { type: 'datetime', indexed: true },
    birthday: { type: 'date', classification: 'pii' },
    meta: { type: 'json', default: { tags: [] } },
    owner: { type: 'reference', collection: 'people', indexed: true },
    parent: { type: 'reference', collection: 'everything' },
    status: { type: 'enum', values: ['open', 'closed'], default: 'open', indexed: true },
    contact: { type: 'email', unique: true, subject: true, classification: 'pii' },
    notes: { type: 'text', classification: 'phi' },
  },
};

/** FULL as stored: every optional flag resolved. */
function resolved(fields: Record<string, Record<string, unknown>>): Record<string, Record<string, unknown>> {
  const out: Record<string, Record<string, unknown>> = {};
  for (const [name, f] of Object.entries(fields)) {
    const classification = (f.classification as string | undefined) ?? 'internal';
    // The deployment's default: confidential, pii, phi and pci fields are encrypted.
    const encrypted = ['confidential', 'pii', 'phi', 'pci'].includes(classification);
    out[name] = { required: false, unique: false, indexed: false, subject: false, classification, encrypted, ...f };
  }
  return out;
}

/** The same object with keys in reverse order, at every level. */
function reversed(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(reversed);
  if (value && typeof value === 'object') {
    return Object.fromEntries(
      Object.entries(value)
        .reverse()
        .map(([k, v]) => [k, reversed(v)]),
    );
  }
  return value;
}

for (const kind of BACKENDS) {
  describe(`collections (${kind})`, () => {
    let t: TestBulkhead;
    let seq = 0;

    before(async () => {
      t = await openTestBulkhead(kind);
    });
    after(async () => {
      await t?.close();
    });

    const tenant = (): Promise<Tenant> => createTenant(t, `col-${kind}-${++seq}`, ['builder', 'member']);
    const put = (a: Tenant, name: string, body: unknown): Promise<TestResponse> =>
      request(t.app, 'PUT', `/v1/collections/${name}`, { token: a.token, body });
    const get = (a: Tenant, name: string): Promise<TestResponse> => request(t.app, 'GET', `/v1/collections/${name}`, { token: a.token });
    const post = async (a: Tenant, name: string, fields: Record<string, unknown>): Promise<TestResponse> =>
      request(t.app, 'POST', `/v1/collections/${name}/records`, { token: a.token, body: { fields } });
    const created = async (a: Tenant, name: string, fields: Record<string, unknown>): Promise<string> => {
      const res = await post(a, name, fields);
      assert.equal(res.status, 201, res.text);
      return res.body.id;
    };
    const list = async (a: Tenant, name: string, filter: unknown): Promise<string[]> => {
      const res = await request(t.app, 'GET', `/v1/collections/${name}/records?filter=${encodeURIComponent(JSON.stringify(filter))}&limit=1000`, {
        token: a.token,
      });
      assert.equal(res.status, 200, res.text);
      return res.body.records.map((r: { id: string }) => r.id).sort();
    };
    /** Versions recorded in collection_versions, read straight from storage under the tenant's scope. */
    const versions = async (a: Tenant, name: string): Promise<{ version: number; createdBy: string; definition: unknown }[]> => {
      const [r] = await t.bh.store.tenant(a.id).batch([
        {
          text: 'SELECT version, created_by, definition FROM bulkhead.collection_versions WHERE tenant_id = $1 AND name = $2 ORDER BY version',
          values: [a.id, name],
        },
      ]);
      return r!.rows.map((row) => ({ version: row.version as number, createdBy: row.created_by as string, definition: row.definition }));
    };
    const keyRows = async (a: Tenant, table: 'unique_values' | 'index_values', name: string, field: string): Promise<number> => {
      const [r] = await t.bh.store.tenant(a.id).batch([
        {
          text: `SELECT count(*)::int AS n FROM bulkhead.${table} WHERE tenant_id = $1 AND collection = $2 AND field = $3`,
          values: [a.id, name, field],
        },
      ]);
      return r!.rows[0]!.n as number;
    };
    /** Asserts a refused definition change: 400 COLLECTION_INVALID naming `field`, and the version unchanged. */
    const refused = async (a: Tenant, name: string, body: unknown, field: string, version: number): Promise<void> => {
      const res = await put(a, name, body);
      assert.equal(res.status, 400, res.text);
      assert.equal(res.body.code, 'COLLECTION_INVALID');
      assert.equal(res.body.field, field);
      assert.equal((await get(a, name)).body.version, version);
      assert.equal((await versions(a, name)).length, version);
    };

    it('defines a collection with every field type and flag: 201 with the resolved definition', async () => {
      const a = await tenant();
      assert.equal((await put(a, 'people', { fields: { name: { type: 'string' } } })).status, 201);
      const res = await put(a, 'everything', FULL);
      assert.equal(res.status, 201, res.text);
      assert.equal(res.body.name, 'everything');
      assert.equal(res.body.version, 1);
      assert.equal(res.body.description, FULL.description);
      assert.deepEqual(res.body.fields, resolved(FULL.fields));
      assert.match(res.body.createdAt, ISO);
      assert.equal(res.body.updatedAt, res.body.createdAt);

      // Defaults apply and every type round-trips through a record.
      const person = await created(a, 'people', { name: 'Ada' });
      const rec = await post(a, 'everything', {
        title: 'T',
        code: 'C-1',
        body: 'long text',
        amount: 12.5,
        dueAt: '2024-03-01T10:00:00+02:00',
        birthday: '1990-12-31',
        owner: person,
        contact: 'Ada@Example.COM',
      });
      assert.equal(rec.status, 201, rec.text);
      assert.deepEqual(rec.body.fields, {
        title: 'T',
        code: 'C-1',
        body: 'long text',
        count: 0,
        amount: 12.5,
        active: true,
        dueAt: '2024-03-01T08:00:00.000Z',
        birthday: '1990-12-31',
        meta: { tags: [] },
        owner: person,
        status: 'open',
        contact: 'ada@example.com',
      });
      // A reference to its own collection.
      const child = await post(a, 'everything', { title: 'child', parent: rec.body.id });
      assert.equal(child.status, 201, child.text);
    });

    it('refuses a reference to a collection that does not exist', async () => {
      const a = await tenant();
      const res = await put(a, 'orphans', { fields: { owner: { type: 'reference', collection: 'nobody' } } });
      assert.equal(res.status, 400);
      assert.equal(res.body.code, 'COLLECTION_INVALID');
      assert.equal((await get(a, 'orphans')).body.code, 'COLLECTION_NOT_FOUND');
    });

    it('an identical re-PUT (keys in another order) answers 200 with the same version', async () => {
      const a = await tenant();
      await put(a, 'people', { fields: { name: { type: 'string' } } });
      const first = await put(a, 'everything', FULL);
      assert.equal(first.status, 201);
      const again = await put(a, 'everything', FULL);
      assert.equal(again.status, 200);
      assert.deepEqual(again.body, first.body);
      const shuffled = reversed(FULL) as typeof FULL;
      assert.notDeepEqual(Object.keys(shuffled.fields), Object.keys(FULL.fields));
      const reordered = await put(a, 'everything', shuffled);
      assert.equal(reordered.status, 200);
      assert.equal(reordered.body.version, 1);
      assert.equal(reordered.body.updatedAt, first.body.updatedAt);
      // Spelling out a flag's default is the same definition too.
      const explicit = await put(a, 'everything', { ...FULL, fields: { ...FULL.fields, amount: { ...FULL.fields.amount, required: false, unique: false } } });
      assert.equal(explicit.status, 200);
      assert.equal(explicit.body.version, 1);
      assert.equal((await versions(a, 'everything')).length, 1);
    });

    it('a changed definition answers 200 with version + 1, and each version has a history row', async () => {
      const a = await tenant();
      const v1 = await put(a, 'tasks', { fields: { title: { type: 'string', required: true } } });
      assert.equal(v1.status, 201);
      const v2 = await put(a, 'tasks', { fields: { title: { type: 'string', required: true }, done: { type: 'boolean', default: false } } });
      assert.equal(v2.status, 200);
      assert.equal(v2.body.version, 2);
      assert.equal(v2.body.createdAt, v1.body.createdAt);
      assert.ok(v2.body.updatedAt >= v1.body.updatedAt);
      const v3 = await put(a, 'tasks', { description: 'To do', fields: { title: { type: 'string', required: true }, done: { type: 'boolean', default: false } } });
      assert.equal(v3.status, 200);
      assert.equal(v3.body.version, 3);
      const v4 = await put(a, 'tasks', { description: 'To do', fields: { title: { type: 'string', required: true, classification: 'pii' }, done: { type: 'boolean', default: false } } });
      assert.equal(v4.body.version, 4);
      assert.equal(v4.body.fields.title.classification, 'pii');

      const history = await versions(a, 'tasks');
      assert.deepEqual(
        history.map((h) => h.version),
        [1, 2, 3, 4],
      );
      assert.ok(history.every((h) => h.createdBy === 'user-1'));
      assert.deepEqual((history[0]!.definition as { fields: unknown }).fields, v1.body.fields);
      assert.deepEqual((history[3]!.definition as { fields: unknown }).fields, v4.body.fields);
      assert.equal((history[2]!.definition as { description: string }).description, 'To do');
      assert.deepEqual((await get(a, 'tasks')).body, v4.body);
    });

    it('lists the collections of the tenant, and shows one', async () => {
      const a = await tenant();
      const b = await tenant();
      assert.deepEqual((await request(t.app, 'GET', '/v1/collections', { token: a.token })).body, { collections: [] });
      const zeta = (await put(a, 'zeta', { fields: { z: { type: 'integer' } } })).body;
      const alpha = (await put(a, 'alpha', { description: 'first', fields: { a: { type: 'string' } } })).body;
      await put(a, 'alpha', { description: 'first', fields: { a: { type: 'string' }, b: { type: 'date' } } });
      await put(b, 'other', { fields: { o: { type: 'string' } } });
      const res = await request(t.app, 'GET', '/v1/collections', { token: a.token });
      assert.equal(res.status, 200);
      assert.deepEqual(
        res.body.collections.map((c: { name: string; version: number }) => [c.name, c.version]),
        [
          ['alpha', 2],
          ['zeta', 1],
        ],
      );
      assert.deepEqual(res.body.collections[1], zeta);
      assert.equal(res.body.collections[0].description, 'first');
      assert.deepEqual(Object.keys(res.body.collections[0].fields), ['a', 'b']);
      const one = await get(a, 'alpha');
      assert.equal(one.status, 200);
      assert.equal(one.body.version, 2);
      assert.equal(one.body.createdAt, alpha.createdAt);
      assert.deepEqual(one.body, res.body.collections[0]);
      const missing = await get(a, 'other');
      assert.equal(missing.status, 404);
      assert.equal(missing.body.code, 'COLLECTION_NOT_FOUND');
    });

    describe('changes stored records would violate', () => {
      it('a type change while records hold the field: refused; allowed when none does', async () => {
        const a = await tenant();
        await put(a, 'items', { fields: { name: { type: 'string' }, size: { type: 'string' } } });
        const id = await created(a, 'items', { name: 'x', size: 'large' });
        await created(a, 'items', { name: 'y' });
        await refused(a, 'items', { fields: { name: { type: 'string' }, size: { type: 'integer' } } }, 'size', 1);
        await refused(a, 'items', { fields: { name: { type: 'string' }, size: { type: 'text' } } }, 'size', 1);
        // The record is unchanged and still valid.
        assert.equal((await request(t.app, 'GET', `/v1/collections/items/records/${id}`, { token: a.token })).body.fields.size, 'large');
        // Once no record holds it, the same change is allowed.
        assert.equal((await request(t.app, 'PATCH', `/v1/collections/items/records/${id}`, { token: a.token, body: { fields: { size: null } } })).status, 200);
        const ok = await put(a, 'items', { fields: { name: { type: 'string' }, size: { type: 'integer' } } });
        assert.equal(ok.status, 200, ok.text);
        assert.equal(ok.body.version, 2);
        assert.equal((await post(a, 'items', { name: 'z', size: 3 })).status, 201);
      });

      it('removing a field while records hold it: refused; allowed when none does', async () => {
        const a = await tenant();
        await put(a, 'items', { fields: { name: { type: 'string' }, legacy: { type: 'json' } } });
        const id = await created(a, 'items', { name: 'x', legacy: { a: 1 } });
        await refused(a, 'items', { fields: { name: { type: 'string' } } }, 'legacy', 1);
        await request(t.app, 'DELETE', `/v1/collections/items/records/${id}`, { token: a.token });
        await created(a, 'items', { name: 'y' });
        const ok = await put(a, 'items', { fields: { name: { type: 'string' } } });
        assert.equal(ok.status, 200, ok.text);
        assert.equal(ok.body.version, 2);
        assert.deepEqual(Object.keys(ok.body.fields), ['name']);
      });

      it('making a field required while records lack it: refused; allowed when every record has it', async () => {
        const a = await tenant();
        await put(a, 'items', { fields: { name: { type: 'string' }, sku: { type: 'string' } } });
        await created(a, 'items', { name: 'x', sku: 'A1' });
        const lacking = await created(a, 'items', { name: 'y' });
        await refused(a, 'items', { fields: { name: { type: 'string' }, sku: { type: 'string', required: true } } }, 'sku', 1);
        // A new required field is refused too: existing records lack it.
        await refused(a, 'items', { fields: { name: { type: 'string' }, sku: { type: 'string' }, qty: { type: 'integer', required: true } } }, 'qty', 1);
        await request(t.app, 'PATCH', `/v1/collections/items/records/${lacking}`, { token: a.token, body: { fields: { sku: 'B2' } } });
        const ok = await put(a, 'items', { fields: { name: { type: 'string' }, sku: { type: 'string', required: true } } });
        assert.equal(ok.status, 200, ok.text);
        assert.equal(ok.body.version, 2);
        assert.equal((await post(a, 'items', { name: 'z' })).body.code, 'RECORD_INVALID');
      });

      it('a new required field on a collection without records is allowed', async () => {
        const a = await tenant();
        await put(a, 'items', { fields: { name: { type: 'string' } } });
        const ok = await put(a, 'items', { fields: { name: { type: 'string' }, qty: { type: 'integer', required: true } } });
        assert.equal(ok.status, 200, ok.text);
        assert.equal(ok.body.version, 2);
      });

      it('removing an enum value in use: refused; removing an unused one is allowed', async () => {
        const a = await tenant();
        await put(a, 'items', { fields: { state: { type: 'enum', values: ['new', 'used', 'broken'] } } });
        await created(a, 'items', { state: 'used' });
        await created(a, 'items', {});
        await refused(a, 'items', { fields: { state: { type: 'enum', values: ['new', 'broken'] } } }, 'state', 1);
        const ok = await put(a, 'items', { fields: { state: { type: 'enum', values: ['used', 'new'] } } });
        assert.equal(ok.status, 200, ok.text);
        assert.equal(ok.body.version, 2);
        assert.deepEqual(ok.body.fields.state.values, ['used', 'new']);
        assert.equal((await post(a, 'items', { state: 'broken' })).body.code, 'RECORD_INVALID');
        // Adding values is always allowed.
        const more = await put(a, 'items', { fields: { state: { type: 'enum', values: ['used', 'new', 'lost'] } } });
        assert.equal(more.body.version, 3);
      });

      it('shrinking maxLength below stored values: refused; down to the longest stored value is allowed', async () => {
        const a = await tenant();
        await put(a, 'items', { fields: { label: { type: 'string', maxLength: 50 }, blurb: { type: 'text' } } });
        await created(a, 'items', { label: '0123456789', blurb: 'x'.repeat(300) });
        await created(a, 'items', { label: 'abc' });
        await refused(a, 'items', { fields: { label: { type: 'string', maxLength: 9 }, blurb: { type: 'text' } } }, 'label', 1);
        await refused(a, 'items', { fields: { label: { type: 'string', maxLength: 50 }, blurb: { type: 'text', maxLength: 299 } } }, 'blurb', 1);
        const ok = await put(a, 'items', { fields: { label: { type: 'string', maxLength: 10 }, blurb: { type: 'text', maxLength: 300 } } });
        assert.equal(ok.status, 200, ok.text);
        assert.equal(ok.body.version, 2);
        assert.equal((await post(a, 'items', { label: '01234567890' })).body.code, 'RECORD_INVALID');
      });

      it('shrinking maxLength of a field no record holds is allowed', async () => {
        const a = await tenant();
        await put(a, 'items', { fields: { label: { type: 'string' }, code: { type: 'string' } } });
        await created(a, 'items', { code: 'x'.repeat(500) });
        const ok = await put(a, 'items', { fields: { label: { type: 'string', maxLength: 1 }, code: { type: 'string' } } });
        assert.equal(ok.status, 200, ok.text);
      });

      it('changing the target of a reference while records hold it: refused', async () => {
        const a = await tenant();
        await put(a, 'people', { fields: { name: { type: 'string' } } });
        await put(a, 'teams', { fields: { name: { type: 'string' } } });
        await put(a, 'items', { fields: { owner: { type: 'reference', collection: 'people' } } });
        await created(a, 'items', { owner: await created(a, 'people', { name: 'p' }) });
        await refused(a, 'items', { fields: { owner: { type: 'reference', collection: 'teams' } } }, 'owner', 1);
      });
    });

    describe('unique and indexed flags changed later', () => {
      it('making a field unique when values collide: 409 RECORD_UNIQUE_VIOLATION and nothing changed', async () => {
        const a = await tenant();
        const plain = { fields: { code: { type: 'string' }, other: { type: 'string' } } };
        const before = (await put(a, 'items', plain)).body;
        await created(a, 'items', { code: 'A' });
        await created(a, 'items', { code: 'B' });
        await created(a, 'items', { code: 'A' });
        const res = await put(a, 'items', { fields: { code: { type: 'string', unique: true }, other: { type: 'string', indexed: true } } });
        assert.equal(res.status, 409, res.text);
        assert.equal(res.body.code, 'RECORD_UNIQUE_VIOLATION');
        assert.equal(res.body.field, 'code');
        assert.deepEqual((await get(a, 'items')).body, before);
        assert.equal((await versions(a, 'items')).length, 1);
        assert.equal(await keyRows(a, 'unique_values', 'items', 'code'), 0);
        // Still not unique: a third "B" is accepted.
        assert.equal((await post(a, 'items', { code: 'B' })).status, 201);
      });

      it('making a field unique later backfills it: eq finds existing records, a duplicate then fails', async () => {
        const a = await tenant();
        await put(a, 'items', { fields: { code: { type: 'string' }, n: { type: 'integer' } } });
        const x = await created(a, 'items', { code: 'X', n: 1 });
        const y = await created(a, 'items', { code: 'Y', n: 2 });
        await created(a, 'items', { n: 3 });
        const res = await put(a, 'items', { fields: { code: { type: 'string', unique: true }, n: { type: 'integer', unique: true } } });
        assert.equal(res.status, 200, res.text);
        assert.equal(res.body.version, 2);
        assert.equal(await keyRows(a, 'unique_values', 'items', 'code'), 2);
        assert.equal(await keyRows(a, 'unique_values', 'items', 'n'), 3);
        assert.deepEqual(await list(a, 'items', { code: { eq: 'X' } }), [x]);
        assert.deepEqual(await list(a, 'items', { code: { eq: 'Y' } }), [y]);
        assert.deepEqual(await list(a, 'items', { n: { eq: 1 } }), [x]);
        const dup = await post(a, 'items', { code: 'X' });
        assert.equal(dup.status, 409);
        assert.equal(dup.body.code, 'RECORD_UNIQUE_VIOLATION');
        assert.equal(dup.body.field, 'code');
        const dupN = await post(a, 'items', { n: 2.0 });
        assert.equal(dupN.body.code, 'RECORD_UNIQUE_VIOLATION');
        assert.equal(dupN.body.field, 'n');
        assert.equal((await post(a, 'items', { code: 'Z' })).status, 201);
      });

      it('making a field indexed later backfills it: eq on it finds existing records', async () => {
        const a = await tenant();
        await put(a, 'items', { fields: { color: { type: 'string' }, at: { type: 'datetime' } } });
        const r1 = await created(a, 'items', { color: 'red', at: '2024-01-01T00:00:00Z' });
        const r2 = await created(a, 'items', { color: 'red', at: '2024-01-01T01:00:00+01:00' });
        const r3 = await created(a, 'items', { color: 'blue' });
        const res = await put(a, 'items', { fields: { color: { type: 'string', indexed: true }, at: { type: 'datetime', indexed: true } } });
        assert.equal(res.status, 200, res.text);
        assert.equal(await keyRows(a, 'index_values', 'items', 'color'), 3);
        assert.deepEqual(await list(a, 'items', { color: { eq: 'red' } }), [r1, r2].sort());
        assert.deepEqual(await list(a, 'items', { color: { eq: 'blue' } }), [r3]);
        assert.deepEqual(await list(a, 'items', { at: { eq: '2024-01-01T00:00:00.000Z' } }), [r1, r2].sort());
        // Indexed is not unique.
        const r4 = await created(a, 'items', { color: 'blue' });
        assert.deepEqual(await list(a, 'items', { color: { eq: 'blue' } }), [r3, r4].sort());
      });

      it('dropping unique removes the constraint and its values', async () => {
        const a = await tenant();
        await put(a, 'items', { fields: { code: { type: 'string', unique: true } } });
        const first = await created(a, 'items', { code: 'K' });
        assert.equal((await post(a, 'items', { code: 'K' })).body.code, 'RECORD_UNIQUE_VIOLATION');
        const res = await put(a, 'items', { fields: { code: { type: 'string' } } });
        assert.equal(res.status, 200, res.text);
        assert.equal(res.body.fields.code.unique, false);
        assert.equal(await keyRows(a, 'unique_values', 'items', 'code'), 0);
        const second = await created(a, 'items', { code: 'K' });
        assert.deepEqual(await list(a, 'items', { code: { eq: 'K' } }), [first, second].sort());
        // Unique again: now the values collide, so it is refused.
        const again = await put(a, 'items', { fields: { code: { type: 'string', unique: true } } });
        assert.equal(again.status, 409);
        assert.equal(again.body.code, 'RECORD_UNIQUE_VIOLATION');
      });

      it('switching a field from unique to indexed moves its values between the indexes', async () => {
        const a = await tenant();
        await put(a, 'items', { fields: { code: { type: 'string', unique: true } } });
        const first = await created(a, 'items', { code: 'K' });
        const res = await put(a, 'items', { fields: { code: { type: 'string', indexed: true } } });
        assert.equal(res.status, 200, res.text);
        assert.equal(await keyRows(a, 'unique_values', 'items', 'code'), 0);
        assert.equal(await keyRows(a, 'index_values', 'items', 'code'), 1);
        const second = await created(a, 'items', { code: 'K' });
        assert.deepEqual(await list(a, 'items', { code: { eq: 'K' } }), [first, second].sort());
      });
    });
  });
}
