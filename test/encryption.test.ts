/**
 * Field encryption (SPEC section 4, issue 4): classified fields are stored only as ciphertexts under
 * the tenant's own data key, found by equality through a blind index, and anything that is not
 * this tenant's ciphertext for this record and field fails the request closed with one uniform
 * error. Storage is scanned for unique markers: raw rows on every backend, and a `pg_dump` of the
 * whole database on PostgreSQL; a public field's marker is found, so the scan itself works.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { promisify } from 'node:util';
import type { Engine } from '../src/store/engine.js';
import { assertProblem } from './support/assertions.js';
import { BACKENDS, createTenant, defineCollection, openTestBulkhead, request, type TestBulkhead } from './support/backends.js';

const run = promisify(execFile);

const PATIENTS = {
  fields: {
    name: { type: 'string', required: true, classification: 'public' },
    ssn: { type: 'string', unique: true, classification: 'pii' },
    email: { type: 'email', indexed: true, classification: 'pii' },
    diagnosis: { type: 'text', classification: 'phi' },
    visits: { type: 'integer', classification: 'confidential' },
    note: { type: 'string' },
  },
};

/** A marker no other test writes: found in storage only if written in clear. */
const marker = (what: string) => `${what}${randomBytes(6).toString('hex')}`;

for (const kind of BACKENDS) {
  describe(`field encryption (${kind})`, () => {
    let t: TestBulkhead;
    let su: Engine;
    let a: { id: string; token: string };
    let b: { id: string; token: string };
    const records = (tenant: { token: string }, query = '') => request(t.app, 'GET', `/v1/collections/patients/records${query}`, { token: tenant.token });
    const create = (tenant: { token: string }, fields: Record<string, unknown>) =>
      request(t.app, 'POST', '/v1/collections/patients/records', { token: tenant.token, body: { fields } });
    const filter = (f: unknown) => `?filter=${encodeURIComponent(JSON.stringify(f))}`;

    before(async () => {
      t = await openTestBulkhead(kind);
      su = await t.db.engine();
      a = await createTenant(t, `enc-a-${kind}`);
      b = await createTenant(t, `enc-b-${kind}`);
      await defineCollection(t, a.token, 'patients', PATIENTS);
      await defineCollection(t, b.token, 'patients', PATIENTS);
    });
    after(async () => {
      await t?.close();
    });

    it('settles which fields are encrypted in the definition, from their classification', async () => {
      const res = await request(t.app, 'GET', '/v1/collections/patients', { token: a.token });
      const encrypted = Object.entries(res.body.fields as Record<string, { encrypted: boolean }>).filter(([, f]) => f.encrypted).map(([n]) => n);
      assert.deepEqual(encrypted.sort(), ['diagnosis', 'email', 'ssn', 'visits']);
      const refused = await request(t.app, 'PUT', '/v1/collections/other', {
        token: a.token,
        body: { fields: { ssn: { type: 'string', classification: 'pii', encrypted: false } } },
      });
      assertProblem(refused, 400, 'COLLECTION_INVALID');
      assert.equal(refused.body.field, 'ssn');
    });

    it('stores no plaintext of a classified field, in the rows or in a dump, while a public marker is found', async () => {
      const written: Array<{ name: string; ssn: string; email: string; diagnosis: string }> = [];
      for (let i = 0; i < 5; i++) {
        const fields = { name: marker('PUBLIC'), ssn: marker('SSN'), email: `${marker('mail')}@example.com`, diagnosis: marker('DX'), visits: 1000 + i };
        const res = await create(a, fields);
        assert.equal(res.status, 201, res.text);
        assert.deepEqual(res.body.fields, { ...fields }, 'the writer gets its plaintext back');
        written.push(fields);
      }
      // Every row of every table of the tenant, as the database holds it (the superuser bypasses RLS).
      const tables = ['records', 'unique_values', 'index_values', 'collections', 'collection_versions', 'tenant_keys'];
      const rows = await su.batch(tables.map((table) => ({ text: `SELECT coalesce(string_agg(t::text, E'\\n'), '') AS s FROM bulkhead.${table} t WHERE tenant_id = $1`, values: [a.id] })));
      const raw = rows.map((r) => r.rows[0]!.s as string).join('\n');
      for (const w of written) {
        assert.ok(raw.includes(w.name), 'the scan finds the public marker');
        for (const secret of [w.ssn, w.email, w.diagnosis]) assert.ok(!raw.includes(secret), 'no classified marker in the rows');
      }
      if (kind === 'postgres') {
        const { stdout } = await run('pg_dump', ['--dbname', t.db.url!, '--data-only', '--no-owner'], { maxBuffer: 256 * 1024 * 1024 });
        for (const w of written) {
          assert.ok(stdout.includes(w.name), 'the dump holds the public marker');
          for (const secret of [w.ssn, w.email, w.diagnosis]) assert.ok(!stdout.includes(secret), 'no classified marker in the dump');
        }
      }
      // And the API reads them back in clear, by id and by an equality filter on an encrypted field.
      const byId = await records(a, filter({ ssn: { eq: written[2]!.ssn } }));
      assert.equal(byId.status, 200, byId.text);
      assert.equal(byId.body.records.length, 1);
      assert.equal(byId.body.records[0].fields.diagnosis, written[2]!.diagnosis);
      const one = await request(t.app, 'GET', `/v1/collections/patients/records/${byId.body.records[0].id}`, { token: a.token });
      assert.equal(one.body.fields.email, written[2]!.email);
      assert.equal(one.body.fields.visits, 1002);
    });

    it('answers eq and in on encrypted fields through the blind index, keeps them unique per tenant, and refuses other operators', async () => {
      const ssn = marker('SSN');
      const email = `${marker('eq')}@example.com`;
      const first = await create(a, { name: 'eq-1', ssn, email, visits: 7 });
      assert.equal(first.status, 201, first.text);
      await create(a, { name: 'eq-2', ssn: marker('SSN'), email, visits: 7 });
      assert.deepEqual((await records(a, filter({ ssn: { eq: ssn } }))).body.records.map((r: { id: string }) => r.id), [first.body.id]);
      assert.equal((await records(a, filter({ email: { eq: email.toUpperCase() } }))).body.records.length, 2, 'emails are compared normalized');
      assert.equal((await records(a, filter({ ssn: { in: [ssn, 'nobody'] } }))).body.records.length, 1);
      assert.equal((await records(a, filter({ visits: { eq: 7 } }))).body.records.length >= 2, true);
      assert.equal((await records(a, filter({ visits: { eq: '7' } }))).status, 400, 'values are typed');
      // Another tenant's equal value is neither found nor a conflict.
      assert.equal((await records(b, filter({ ssn: { eq: ssn } }))).body.records.length, 0);
      assert.equal((await create(b, { name: 'b', ssn })).status, 201);
      assertProblem(await create(a, { name: 'dup', ssn }), 409, 'RECORD_UNIQUE_VIOLATION');
      for (const [f, code] of [
        [{ ssn: { ne: ssn } }, 'QUERY_INVALID'],
        [{ ssn: { prefix: 'SSN' } }, 'QUERY_INVALID'],
        [{ visits: { gt: 1 } }, 'QUERY_INVALID'],
        [{ diagnosis: { contains: 'DX' } }, 'QUERY_INVALID'],
        [{ diagnosis: { eq: 'x' } }, 'QUERY_INVALID'],
      ] as const) {
        const res = await records(a, filter(f));
        assertProblem(res, 400, code, JSON.stringify(f));
        assert.match(res.body.detail, /encrypted/);
      }
      assertProblem(await records(a, '?sort=visits'), 400, 'QUERY_INVALID');
      assert.equal((await records(a, filter({ diagnosis: { isNull: true }, ssn: { eq: ssn } }))).body.records.length, 1);
    });

    it('re-encrypts a changed field, keeps the ciphertext of the others, and moves its blind index', async () => {
      const ssn = marker('SSN');
      const created = await create(a, { name: 'upd', ssn, diagnosis: 'before' });
      const id = created.body.id as string;
      const stored = async () => (await su.batch([{ text: 'SELECT data FROM bulkhead.records WHERE tenant_id = $1 AND id = $2', values: [a.id, id] }]))[0]!.rows[0]!.data as Record<string, string>;
      const was = await stored();
      const renamed = await request(t.app, 'PATCH', `/v1/collections/patients/records/${id}`, { token: a.token, body: { fields: { note: 'plain' } } });
      assert.equal(renamed.status, 200, renamed.text);
      assert.equal(renamed.body.fields.ssn, ssn);
      assert.equal((await stored()).ssn, was.ssn, 'an unchanged encrypted field keeps its ciphertext');
      const next = marker('SSN');
      const changed = await request(t.app, 'PATCH', `/v1/collections/patients/records/${id}`, { token: a.token, body: { fields: { ssn: next } } });
      assert.equal(changed.status, 200, changed.text);
      assert.notEqual((await stored()).ssn, was.ssn);
      assert.equal((await stored()).diagnosis, was.diagnosis);
      assert.equal((await records(a, filter({ ssn: { eq: ssn } }))).body.records.length, 0);
      assert.equal((await records(a, filter({ ssn: { eq: next } }))).body.records.length, 1);
    });

    it('fails closed with one uniform error on a moved, altered or unknown ciphertext, and shows no plaintext', async () => {
      const secret = marker('SSN');
      const victim = (await create(a, { name: 'victim', ssn: secret, email: `${marker('v')}@example.com` })).body.id as string;
      const target = (await create(a, { name: 'target', ssn: marker('SSN') })).body.id as string;
      const other = (await create(b, { name: 'other', ssn: marker('SSN') })).body.id as string;
      const read = async (tenantId: string, id: string) =>
        (await su.batch([{ text: 'SELECT data FROM bulkhead.records WHERE tenant_id = $1 AND id = $2', values: [tenantId, id] }]))[0]!.rows[0]!.data as Record<string, string>;
      const put = (tenantId: string, id: string, field: string, value: unknown) =>
        su.batch([{ text: 'UPDATE bulkhead.records SET data = jsonb_set(data, $3::text[], $4::text::jsonb) WHERE tenant_id = $1 AND id = $2', values: [tenantId, id, `{${field}}`, JSON.stringify(value)] }]);
      const cipher = (await read(a.id, victim)).ssn!;
      const body = cipher.slice(cipher.lastIndexOf(':') + 1);
      const flipped = `${cipher.slice(0, -body.length)}${body[0] === 'A' ? 'B' : 'A'}${body.slice(1)}`;
      const cases: Array<[string, string, string, string, unknown]> = [
        ['another record', a.id, target, 'ssn', cipher],
        ['another field', a.id, victim, 'email', cipher],
        ['another tenant', b.id, other, 'ssn', cipher],
        ['a flipped bit', a.id, victim, 'ssn', flipped],
        ['a truncated value', a.id, victim, 'ssn', cipher.slice(0, -4)],
        ['an unknown key version', a.id, victim, 'ssn', cipher.replace(/^bh1:\d+:/, 'bh1:7:')],
        ['a plaintext', a.id, victim, 'ssn', 'SSN-in-clear'],
      ];
      let message: string | undefined;
      for (const [what, tenantId, id, field, value] of cases) {
        const original = (await read(tenantId, id))[field];
        await put(tenantId, id, field, value);
        try {
          const token = tenantId === a.id ? a.token : b.token;
          for (const res of [
            await request(t.app, 'GET', `/v1/collections/patients/records/${id}`, { token }),
            await request(t.app, 'GET', '/v1/collections/patients/records?limit=200', { token }),
          ]) {
            assertProblem(res, 500, 'CRYPTO_DECRYPT_FAILED', what);
            assert.ok(!res.text.includes(secret), `${what}: no plaintext in the answer`);
            message ??= res.body.detail;
            assert.equal(res.body.detail, message, `${what}: the same message every time`);
          }
        } finally {
          await put(tenantId, id, field, original);
        }
      }
      // Put back, everything reads again.
      assert.equal((await request(t.app, 'GET', `/v1/collections/patients/records/${victim}`, { token: a.token })).body.fields.ssn, secret);
    });

    it('refuses to change whether a field is encrypted once records hold it', async () => {
      await defineCollection(t, a.token, 'notes', { fields: { body: { type: 'string', classification: 'internal' } } });
      assert.equal((await request(t.app, 'POST', '/v1/collections/notes/records', { token: a.token, body: { fields: { body: 'x' } } })).status, 201);
      const res = await request(t.app, 'PUT', '/v1/collections/notes', { token: a.token, body: { fields: { body: { type: 'string', classification: 'pii' } } } });
      assertProblem(res, 400, 'COLLECTION_INVALID');
      assert.equal(res.body.field, 'body');
      // Without records the change is made: new values are encrypted.
      await defineCollection(t, a.token, 'drafts', { fields: { body: { type: 'string', classification: 'internal' } } });
      const changed = await request(t.app, 'PUT', '/v1/collections/drafts', { token: a.token, body: { fields: { body: { type: 'string', classification: 'pii' } } } });
      assert.equal(changed.status, 200, changed.text);
      assert.equal(changed.body.fields.body.encrypted, true);
    });
  });
}

for (const kind of BACKENDS) {
  describe(`encrypted writes with no key cache (${kind})`, () => {
    let t: TestBulkhead;
    before(async () => {
      // Every key use goes to the key store: an update's transaction must not be the one to wait
      // on it (on PGlite, with one connection, that was a deadlock).
      t = await openTestBulkhead(kind, { BULKHEAD_KEY_CACHE_MS: '0' });
    });
    after(async () => {
      await t?.close();
    });

    it('creates, updates, filters and reads encrypted records with every key loaded outside the write transaction', async () => {
      const a = await createTenant(t, `enc-nocache-${kind}`);
      await defineCollection(t, a.token, 'patients', PATIENTS);
      const made = await request(t.app, 'POST', '/v1/collections/patients/records', { token: a.token, body: { fields: { name: 'n', ssn: 'S-1', diagnosis: 'first' } } });
      assert.equal(made.status, 201, made.text);
      const patched = await request(t.app, 'PATCH', `/v1/collections/patients/records/${made.body.id}`, { token: a.token, body: { fields: { diagnosis: 'second', ssn: 'S-2' } } });
      assert.equal(patched.status, 200, patched.text);
      assert.deepEqual([patched.body.fields.ssn, patched.body.fields.diagnosis], ['S-2', 'second']);
      const renamed = await request(t.app, 'PATCH', `/v1/collections/patients/records/${made.body.id}`, { token: a.token, body: { fields: { name: 'm' } } });
      assert.equal(renamed.status, 200, renamed.text);
      assert.equal(renamed.body.fields.ssn, 'S-2', 'an unchanged encrypted field is read back');
      const found = await request(t.app, 'GET', `/v1/collections/patients/records?filter=${encodeURIComponent(JSON.stringify({ ssn: { eq: 'S-2' } }))}`, { token: a.token });
      assert.deepEqual(found.body.records.map((r: { id: string }) => r.id), [made.body.id]);
    });
  });
}
