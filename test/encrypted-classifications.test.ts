/**
 * A collection's own `encryptedClassifications` (issue 4, item 2: "configurable per collection"):
 * it adds classifications to the deployment's list and never leaves one out (fail closed), it
 * decides which fields are encrypted (a listed `internal` field is stored only as a ciphertext, as
 * a raw scan for unique markers shows, and is still found by equality through its blind index), it
 * is stored in the versioned definition and shown by the API, and a change of it that would flip a
 * field holding records is refused like any other change of a field's encryption.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { promisify } from 'node:util';
import type { Engine } from '../src/store/engine.js';
import { assertProblem } from './support/assertions.js';
import { BACKENDS, createTenant, openTestBulkhead, request, type TestBulkhead, type TestResponse } from './support/backends.js';

const run = promisify(execFile);

/** The default deployment's list, in the order definitions store it. */
const DEPLOYMENT = ['confidential', 'pii', 'phi', 'pci'];
/** The same with internal added, in another order than the stored one. */
const WITH_INTERNAL = ['pci', 'internal', 'pii', 'phi', 'confidential'];

/** A marker no other test writes: found in storage only if written in clear. */
const marker = (what: string) => `${what}${randomBytes(6).toString('hex')}`;

for (const kind of BACKENDS) {
  describe(`per-collection encrypted classifications (${kind})`, () => {
    let t: TestBulkhead;
    let su: Engine;
    let a: { id: string; token: string };
    let seq = 0;

    before(async () => {
      t = await openTestBulkhead(kind);
      su = await t.db.engine();
      a = await createTenant(t, `encls-${kind}`, ['builder', 'member']);
    });
    after(async () => {
      await t?.close();
    });

    const put = (name: string, body: unknown): Promise<TestResponse> => request(t.app, 'PUT', `/v1/collections/${name}`, { token: a.token, body });
    const get = (name: string): Promise<TestResponse> => request(t.app, 'GET', `/v1/collections/${name}`, { token: a.token });
    const create = (name: string, fields: Record<string, unknown>): Promise<TestResponse> =>
      request(t.app, 'POST', `/v1/collections/${name}/records`, { token: a.token, body: { fields } });
    const list = (name: string, filter: unknown): Promise<TestResponse> =>
      request(t.app, 'GET', `/v1/collections/${name}/records?filter=${encodeURIComponent(JSON.stringify(filter))}`, { token: a.token });
    /** Rows of the catalog for a collection, as the database holds them. */
    const catalog = async (name: string) => {
      const [current, versions] = await su.batch([
        { text: 'SELECT version, definition FROM bulkhead.collections WHERE tenant_id = $1 AND name = $2', values: [a.id, name] },
        { text: 'SELECT version, definition FROM bulkhead.collection_versions WHERE tenant_id = $1 AND name = $2 ORDER BY version', values: [a.id, name] },
      ]);
      return { current: current!.rows[0] as { version: number; definition: Record<string, unknown> } | undefined, versions: versions!.rows };
    };
    const fresh = () => `c${kind.slice(0, 2)}${++seq}`;

    it('a collection that lists internal encrypts its internal fields: no plaintext in storage, read in clear, found by eq', async () => {
      const res = await put('cases', {
        encryptedClassifications: WITH_INTERNAL,
        fields: {
          label: { type: 'string', classification: 'public' },
          note: { type: 'string' },
          code: { type: 'string', classification: 'internal', unique: true },
          ssn: { type: 'string', classification: 'pii' },
        },
      });
      assert.equal(res.status, 201, res.text);
      assert.deepEqual(res.body.encryptedClassifications, ['internal', ...DEPLOYMENT], 'stored in CLASSIFICATIONS order');
      assert.deepEqual(
        Object.fromEntries(Object.entries(res.body.fields as Record<string, { encrypted: boolean }>).map(([n, f]) => [n, f.encrypted])),
        { label: false, note: true, code: true, ssn: true },
      );
      // The catalog records it in the current definition and in the version's history row.
      const stored = await catalog('cases');
      assert.deepEqual(stored.current!.definition.encryptedClassifications, ['internal', ...DEPLOYMENT]);
      assert.deepEqual(stored.versions.map((v) => (v.definition as Record<string, unknown>).encryptedClassifications), [['internal', ...DEPLOYMENT]]);
      const shown = await get('cases');
      assert.equal(shown.status, 200);
      assert.deepEqual(shown.body.encryptedClassifications, ['internal', ...DEPLOYMENT]);
      assert.equal(shown.body.fields.note.encrypted, true);

      const written: Array<{ label: string; note: string; code: string }> = [];
      for (let i = 0; i < 4; i++) {
        const fields = { label: marker('PUBLIC'), note: marker('NOTE'), code: marker('CODE') };
        const made = await create('cases', fields);
        assert.equal(made.status, 201, made.text);
        assert.deepEqual(made.body.fields, fields);
        written.push(fields);
      }
      const tables = ['records', 'unique_values', 'index_values'];
      const rows = await su.batch(tables.map((table) => ({ text: `SELECT coalesce(string_agg(t::text, E'\\n'), '') AS s FROM bulkhead.${table} t WHERE tenant_id = $1`, values: [a.id] })));
      const raw = rows.map((r) => r.rows[0]!.s as string).join('\n');
      for (const w of written) {
        assert.ok(raw.includes(w.label), 'the scan finds the public marker');
        assert.ok(!raw.includes(w.note), 'no internal marker in the rows');
        assert.ok(!raw.includes(w.code), 'no internal unique marker in the rows');
      }
      if (kind === 'postgres') {
        const { stdout } = await run('pg_dump', ['--dbname', t.db.url!, '--data-only', '--no-owner'], { maxBuffer: 256 * 1024 * 1024 });
        for (const w of written) {
          assert.ok(stdout.includes(w.label), 'the dump holds the public marker');
          assert.ok(!stdout.includes(w.note) && !stdout.includes(w.code), 'no internal marker in the dump');
        }
      }
      // Read back in clear, found through the blind index, unique per tenant, and no other operator.
      const found = await list('cases', { note: { eq: written[1]!.note } });
      assert.equal(found.status, 200, found.text);
      assert.deepEqual(found.body.records.map((r: { fields: unknown }) => r.fields), [written[1]]);
      const one = await request(t.app, 'GET', `/v1/collections/cases/records/${found.body.records[0].id}`, { token: a.token });
      assert.equal(one.body.fields.note, written[1]!.note);
      assert.equal((await list('cases', { code: { in: [written[2]!.code, 'nobody'] } })).body.records.length, 1);
      assertProblem(await create('cases', { code: written[0]!.code }), 409, 'RECORD_UNIQUE_VIOLATION');
      const prefix = await list('cases', { note: { prefix: 'NOTE' } });
      assertProblem(prefix, 400, 'QUERY_INVALID');
      assert.match(prefix.body.detail, /encrypted/);
      assert.equal((await list('cases', { label: { prefix: 'PUBLIC' } })).body.records.length, 4, 'a public field is filtered in clear');
    });

    it('refuses a list that leaves out what the deployment encrypts, an unknown, a duplicate or a non-string entry, and a non-array: nothing stored', async () => {
      const fields = { body: { type: 'string' } };
      const cases: Array<[string, unknown, RegExp]> = [
        ['leaves out', ['confidential', 'pii'], /encryptedClassifications leaves out phi, pci, which this deployment encrypts .*never fewer: add them .*or leave encryptedClassifications out/],
        ['the empty list', [], /encryptedClassifications leaves out confidential, pii, phi, pci/],
        ['unknown', [...DEPLOYMENT, 'secret'], /encryptedClassifications: "secret" is not a classification/],
        ['another case', [...DEPLOYMENT, 'PII'], /encryptedClassifications: "PII" is not a classification/],
        ['duplicate', [...DEPLOYMENT, 'pii'], /encryptedClassifications lists pii more than once/],
        ['non-string', [...DEPLOYMENT, 3], /encryptedClassifications must hold only strings/],
        ['null entry', [...DEPLOYMENT, null], /encryptedClassifications must hold only strings/],
        ['a string', 'confidential,pii,phi,pci', /encryptedClassifications must be an array/],
        ['an object', { pii: true }, /encryptedClassifications must be an array/],
        ['null', null, /encryptedClassifications must be an array/],
      ];
      for (const [what, value, message] of cases) {
        const name = fresh();
        const res = await put(name, { encryptedClassifications: value, fields });
        assertProblem(res, 400, 'COLLECTION_INVALID', what);
        assert.match(res.body.detail, message, what);
        assert.equal(res.body.field, undefined, `${what}: no field is at fault`);
        assertProblem(await get(name), 404, 'COLLECTION_NOT_FOUND', what);
        const stored = await catalog(name);
        assert.equal(stored.current, undefined, `${what}: no definition stored`);
        assert.equal(stored.versions.length, 0, `${what}: no version stored`);
      }
      // The same on an existing collection: its definition is left as it was.
      const name = fresh();
      assert.equal((await put(name, { fields })).status, 201);
      const refused = await put(name, { encryptedClassifications: ['internal', 'pii'], fields });
      assertProblem(refused, 400, 'COLLECTION_INVALID');
      assert.match(refused.body.detail, /leaves out confidential, phi, pci/);
      const kept = await get(name);
      assert.equal(kept.body.version, 1);
      assert.equal('encryptedClassifications' in kept.body, false);
      assert.equal((await catalog(name)).versions.length, 1);
    });

    it('refuses encrypted: false on a field the collection list covers, naming the list', async () => {
      const name = fresh();
      const res = await put(name, { encryptedClassifications: WITH_INTERNAL, fields: { body: { type: 'string', encrypted: false } } });
      assertProblem(res, 400, 'COLLECTION_INVALID');
      assert.equal(res.body.field, 'body');
      assert.match(res.body.detail, /the collection's encryptedClassifications lists internal/);
      assert.equal((await catalog(name)).current, undefined);
      // A classification the deployment encrypts is still the deployment's reason.
      const pii = await put(name, { encryptedClassifications: WITH_INTERNAL, fields: { ssn: { type: 'string', classification: 'pii', encrypted: false } } });
      assertProblem(pii, 400, 'COLLECTION_INVALID');
      assert.match(pii.body.detail, /this deployment encrypts every pii field/);
      // A classification neither list covers may still be encrypted or not at will.
      const free = await put(name, { encryptedClassifications: WITH_INTERNAL, fields: { a: { type: 'string', classification: 'public', encrypted: false }, b: { type: 'string', classification: 'public', encrypted: true } } });
      assert.equal(free.status, 201, free.text);
      assert.deepEqual([free.body.fields.a.encrypted, free.body.fields.b.encrypted], [false, true]);
    });

    it('the same list in another order is the same definition; absent and the deployment list written out are not', async () => {
      const name = fresh();
      const fields = { body: { type: 'string' } };
      assert.equal((await put(name, { encryptedClassifications: WITH_INTERNAL, fields })).status, 201);
      const same = await put(name, { encryptedClassifications: [...WITH_INTERNAL].reverse(), fields });
      assert.equal(same.status, 200, same.text);
      assert.equal(same.body.version, 1);
      // Absent (no records yet): the deployment's list applies again, body is no longer encrypted.
      const absent = await put(name, { fields });
      assert.equal(absent.status, 200, absent.text);
      assert.equal(absent.body.version, 2);
      assert.equal('encryptedClassifications' in absent.body, false);
      assert.equal(absent.body.fields.body.encrypted, false);
      // Writing the deployment's list out is allowed and recorded, though no field changes.
      const explicit = await put(name, { encryptedClassifications: DEPLOYMENT, fields });
      assert.equal(explicit.status, 200, explicit.text);
      assert.equal(explicit.body.version, 3);
      assert.deepEqual(explicit.body.encryptedClassifications, DEPLOYMENT);
      const listed = await request(t.app, 'GET', '/v1/collections', { token: a.token });
      assert.deepEqual(listed.body.collections.find((c: { name: string }) => c.name === name).encryptedClassifications, DEPLOYMENT);
    });

    it('a list change that would flip a field holding records is refused; one that flips none is accepted', async () => {
      const notes = fresh();
      const fields = { body: { type: 'string' }, title: { type: 'string', classification: 'public' } };
      assert.equal((await put(notes, { fields })).status, 201);
      // Records hold body (internal); none holds title (public).
      const made = await create(notes, { body: 'held in clear' });
      assert.equal(made.status, 201, made.text);
      const refused = await put(notes, { encryptedClassifications: WITH_INTERNAL, fields });
      assertProblem(refused, 400, 'COLLECTION_INVALID');
      assert.equal(refused.body.field, 'body');
      assert.match(
        refused.body.detail,
        /^fields\.body: encryptedClassifications now lists internal, which would encrypt this internal field, but whether it is encrypted.* cannot change while records hold it.*leave internal out of encryptedClassifications/,
      );
      const kept = await get(notes);
      assert.equal(kept.body.version, 1);
      assert.equal(kept.body.fields.body.encrypted, false);
      assert.equal((await catalog(notes)).versions.length, 1, 'no version recorded');
      // Adding public flips title, which no record holds: accepted.
      const noData = await put(notes, { encryptedClassifications: [...DEPLOYMENT, 'public'], fields });
      assert.equal(noData.status, 200, noData.text);
      assert.equal(noData.body.version, 2);
      assert.deepEqual([noData.body.fields.title.encrypted, noData.body.fields.body.encrypted], [true, false]);
      assert.equal((await request(t.app, 'GET', `/v1/collections/${notes}/records/${made.body.id}`, { token: a.token })).body.fields.body, 'held in clear');
      // Now a record holds title: taking public out would stop encrypting it, refused.
      assert.equal((await create(notes, { title: marker('TITLE') })).status, 201);
      const back = await put(notes, { encryptedClassifications: DEPLOYMENT, fields });
      assertProblem(back, 400, 'COLLECTION_INVALID');
      assert.equal(back.body.field, 'title');
      assert.match(back.body.detail, /encryptedClassifications no longer lists public/);

      // A field already encrypted by its own flag is not flipped by the list: accepted with records.
      const memos = fresh();
      assert.equal((await put(memos, { fields: { body: { type: 'string', encrypted: true } } })).status, 201);
      const memo = await create(memos, { body: 'secret memo' });
      assert.equal(memo.status, 201, memo.text);
      const covered = await put(memos, { encryptedClassifications: WITH_INTERNAL, fields: { body: { type: 'string' } } });
      assert.equal(covered.status, 200, covered.text);
      assert.equal(covered.body.version, 2);
      assert.equal(covered.body.fields.body.encrypted, true);
      assert.equal((await request(t.app, 'GET', `/v1/collections/${memos}/records/${memo.body.id}`, { token: a.token })).body.fields.body, 'secret memo');
      // Taking internal out again would stop encrypting it while a record holds it: refused.
      const dropped = await put(memos, { encryptedClassifications: DEPLOYMENT, fields: { body: { type: 'string' } } });
      assertProblem(dropped, 400, 'COLLECTION_INVALID');
      assert.match(dropped.body.detail, /encryptedClassifications no longer lists internal.*keep internal in encryptedClassifications, or set encrypted: true/);

      // Without records the change is made, and new values are then encrypted.
      const drafts = fresh();
      assert.equal((await put(drafts, { fields: { body: { type: 'string' } } })).status, 201);
      const changed = await put(drafts, { encryptedClassifications: WITH_INTERNAL, fields: { body: { type: 'string' } } });
      assert.equal(changed.status, 200, changed.text);
      assert.equal(changed.body.fields.body.encrypted, true);
      const secret = marker('DRAFT');
      const draft = await create(drafts, { body: secret });
      assert.equal(draft.status, 201, draft.text);
      const [row] = await su.batch([{ text: 'SELECT data::text AS d FROM bulkhead.records WHERE tenant_id = $1 AND id = $2', values: [a.id, draft.body.id] }]);
      assert.ok(!(row!.rows[0]!.d as string).includes(secret), 'the new value is stored encrypted');
    });
  });

  describe(`per-collection encrypted classifications, deployment encrypting nothing (${kind})`, () => {
    let t: TestBulkhead;
    let a: { id: string; token: string };
    before(async () => {
      t = await openTestBulkhead(kind, { BULKHEAD_ENCRYPTED_CLASSIFICATIONS: 'none' });
      a = await createTenant(t, `encls-none-${kind}`, ['builder']);
    });
    after(async () => {
      await t?.close();
    });

    it('accepts the empty list, and a collection list alone decides which fields are encrypted', async () => {
      const put = (name: string, body: unknown) => request(t.app, 'PUT', `/v1/collections/${name}`, { token: a.token, body });
      const fields = { ssn: { type: 'string', classification: 'pii' }, body: { type: 'string' } };
      const empty = await put('empty', { encryptedClassifications: [], fields });
      assert.equal(empty.status, 201, empty.text);
      assert.deepEqual(empty.body.encryptedClassifications, [], 'the empty list is shown, not dropped');
      assert.deepEqual([empty.body.fields.ssn.encrypted, empty.body.fields.body.encrypted], [false, false]);
      const pii = await put('pii', { encryptedClassifications: ['pii'], fields });
      assert.equal(pii.status, 201, pii.text);
      assert.deepEqual([pii.body.fields.ssn.encrypted, pii.body.fields.body.encrypted], [true, false]);
      const optOut = await put('optout', { encryptedClassifications: ['pii'], fields: { ssn: { type: 'string', classification: 'pii', encrypted: false } } });
      assertProblem(optOut, 400, 'COLLECTION_INVALID');
      assert.match(optOut.body.detail, /the collection's encryptedClassifications lists pii/);
    });
  });
}
