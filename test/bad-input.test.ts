/**
 * Bad input, on every backend: malformed, oversized, mistyped, poisoned or hostile requests are
 * answered with a 4xx problem+json carrying the exact stable code (and `field` where there is one),
 * a `requestId` equal to the x-request-id header, no echo of the hostile value, and NOTHING written:
 * tenants, tenant history, collections and records are listed before and after and compared.
 * SQL metacharacters that are valid data (record values, filter values, tenant names) are stored
 * and matched verbatim instead, without touching anything else.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { SignJWT } from 'jose';
import { ERROR_CODES, type ErrorCode } from '../src/errors.js';
import { HTTP_STATUS } from '../src/http/problem.js';
import { openApiDocument } from '../src/http/openapi.js';
import { FIELD_TYPES, type FieldType } from '../src/tenancy/fields.js';
import { QUERY_LIMITS } from '../src/tenancy/query.js';
import { MAX_JSON_DEPTH } from '../src/tenancy/validation.js';
import { BACKENDS, createTenant, openTestBulkhead, request, type TestBulkhead, type TestResponse } from './support/backends.js';

type Method = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

/** The fields of the `things` collection: one of every type. */
const THING_FIELDS = {
  s: { type: 'string', required: true, unique: true, maxLength: 20 },
  t: { type: 'text', maxLength: 200 },
  i: { type: 'integer', indexed: true },
  n: { type: 'number' },
  b: { type: 'boolean' },
  dt: { type: 'datetime' },
  d: { type: 'date' },
  j: { type: 'json' },
  r: { type: 'reference', collection: 'people' },
  e: { type: 'enum', values: ['open', 'closed'] },
  em: { type: 'email', classification: 'pii' },
} as const;
/** Which field of `things` has which type. */
const FIELD_OF: Readonly<Record<FieldType, keyof typeof THING_FIELDS>> = {
  string: 's', text: 't', integer: 'i', number: 'n', boolean: 'b', datetime: 'dt', date: 'd', json: 'j', reference: 'r', enum: 'e', email: 'em',
};

/**
 * Record values of the wrong type or format, per field type. A json field has none: every JSON
 * value is a json value (and null clears the field), so json is covered by the filter cases.
 */
const WRONG_VALUES: Readonly<Record<Exclude<FieldType, 'json'>, readonly unknown[]>> = {
  string: [42, true, {}, ['x'], 'x'.repeat(21)],
  text: [1, false, { a: 1 }, 'x'.repeat(201)],
  integer: [1.5, '1', true, 2 ** 53, -(2 ** 53), 1e300],
  number: ['1', true, {}, []],
  boolean: ['true', 0, 1, 'false'],
  datetime: ['yesterday', 1_700_000_000, '2026-13-01T00:00:00Z', '2026-01-01'],
  date: ['2026-02-30', '2026-01-01T00:00:00Z', 20260101, '01/02/2026'],
  reference: ['not-a-uuid', 42, '01936F4E-7C2A-7B3D-9E4F-0A1B2C3D4E5F'],
  enum: ['pending', 1, 'OPEN', ''],
  email: ['not-an-email', 5, 'a@', '@b.c'],
};

/** A filter operator and argument each field type refuses. */
const WRONG_FILTERS: Readonly<Record<FieldType, Record<string, unknown>>> = {
  string: { eq: 42 },
  text: { lt: 'x' },
  integer: { eq: '1' },
  number: { gt: '1' },
  boolean: { lt: true },
  datetime: { gte: 'yesterday' },
  date: { lt: '2026-02-30' },
  json: { eq: 1 },
  reference: { eq: 'nope' },
  enum: { eq: 'pending' },
  email: { eq: 'not-an-email' },
};

/** Strings that mean something to SQL, to a shell or to a JSON path; none of them may mean anything here. */
const METACHARACTERS = [
  "' OR '1'='1",
  "'; DROP TABLE bulkhead.records; --",
  '"; SELECT pg_sleep(10); --',
  "') ; RESET ROLE; SET ROLE postgres; --",
  "x', set_config('bulkhead.tenant_id', '00000000-0000-0000-0000-000000000000', false)) --",
  '$1::text',
  '%_%',
  '_',
  '\\',
  '/* */ UNION SELECT * FROM bulkhead.tenants',
  "E'\\x27'",
  '$$; DELETE FROM bulkhead.records; $$',
] as const;

const NIL_UUID = '00000000-0000-0000-0000-000000000000';
const OTHER_UUID = '01936f4e-7c2a-7b3d-9e4f-0a1b2c3d4e5f';

interface Fixture {
  readonly tenantId: string;
  readonly slug: string;
  readonly token: string;
  readonly personId: string;
  readonly thingIds: readonly [string, string];
}

let serial = 0;

/** A fresh tenant with `people` and `things` (every field type) and a few records. */
async function fixture(t: TestBulkhead): Promise<Fixture> {
  const slug = `bad-${t.kind}-${++serial}`;
  const tenant = await createTenant(t, slug, ['tenant_admin']);
  const put = async (name: string, fields: unknown) => {
    const res = await request(t.app, 'PUT', `/v1/collections/${name}`, { token: tenant.token, body: { fields } });
    assert.equal(res.status, 201, res.text);
  };
  const post = async (name: string, fields: unknown): Promise<string> => {
    const res = await request(t.app, 'POST', `/v1/collections/${name}/records`, { token: tenant.token, body: { fields } });
    assert.equal(res.status, 201, res.text);
    return res.body.id as string;
  };
  await put('people', { name: { type: 'string', required: true }, email: { type: 'email', unique: true, subject: true, classification: 'pii' } });
  await put('things', THING_FIELDS);
  const personId = await post('people', { name: 'Ada', email: 'ada@example.com' });
  const thing = { t: 'text', i: 1, n: 1.5, b: true, dt: '2026-01-01T00:00:00Z', d: '2026-01-01', j: { k: [1] }, r: personId, e: 'open', em: 'x@example.com' };
  const a = await post('things', { s: 'thing-1', ...thing });
  const b = await post('things', { s: 'thing-2', ...thing });
  return { tenantId: tenant.id, slug, token: tenant.token, personId, thingIds: [a, b] };
}

/** Everything the API can show of the platform and of the fixture's tenant. */
async function snapshot(t: TestBulkhead, f: Fixture): Promise<unknown> {
  const ok = async (res: Promise<TestResponse>) => {
    const r = await res;
    assert.equal(r.status, 200, r.text);
    return r.body;
  };
  const tenants = await ok(request(t.app, 'GET', '/v1/tenants', { token: t.operatorToken }));
  const history = await ok(request(t.app, 'GET', `/v1/tenants/${f.tenantId}/history`, { token: t.operatorToken }));
  const collections = (await ok(request(t.app, 'GET', '/v1/collections', { token: f.token }))) as { collections: { name: string }[] };
  const records: Record<string, unknown> = {};
  for (const { name } of collections.collections) {
    records[name] = await ok(request(t.app, 'GET', `/v1/collections/${name}/records?limit=${QUERY_LIMITS.maxLimit}`, { token: f.token }));
  }
  return { tenants, history, collections, records };
}

/** Runs `fn` and asserts that it changed nothing the API can list. */
async function nothingWritten(t: TestBulkhead, f: Fixture, fn: () => Promise<void>): Promise<void> {
  const beforeState = await snapshot(t, f);
  await fn();
  assert.deepEqual(await snapshot(t, f), beforeState, 'nothing was written');
}

/**
 * Asserts a problem+json answer with exactly this code (and `field`, when given), whose status is
 * the code's, whose requestId is the x-request-id header, and which does not echo `secret`.
 */
function expectProblem(res: TestResponse, code: ErrorCode, options: { field?: string; secret?: string; label?: string } = {}): void {
  const label = `${options.label ?? ''} → ${res.status} ${res.text.slice(0, 300)}`;
  assert.equal(res.status, HTTP_STATUS[code], label);
  assert.ok(res.status >= 400 && res.status < 500, `a bad request is a 4xx: ${label}`);
  assert.match(String(res.headers['content-type']), /^application\/problem\+json/, label);
  assert.equal(res.body?.code, code, label);
  assert.equal(res.body.status, res.status, label);
  assert.equal(res.body.title, ERROR_CODES[code], label);
  assert.equal(res.body.type, `https://bulkhead.dev/problems/${code.toLowerCase().replace(/_/g, '-')}`, label);
  assert.equal(typeof res.body.detail, 'string', label);
  const id = res.headers['x-request-id'];
  assert.ok(typeof id === 'string' && id.length > 0, `x-request-id is set: ${label}`);
  assert.equal(res.body.requestId, id, label);
  if (options.field !== undefined) assert.equal(res.body.field, options.field, label);
  if (options.secret !== undefined && options.secret.length >= 6) {
    assert.ok(!res.text.includes(options.secret), `the answer does not echo the input: ${label}`);
  }
}

/** A request with a raw payload and exactly these headers (no content-type added). */
async function raw(t: TestBulkhead, method: Method, url: string, headers: Record<string, string>, payload?: string): Promise<TestResponse> {
  const res = await t.app.inject({ method, url, headers, ...(payload === undefined ? {} : { payload }) });
  let body: unknown;
  try {
    body = res.body.length > 0 ? JSON.parse(res.body) : undefined;
  } catch {
    body = undefined;
  }
  return { status: res.statusCode, headers: res.headers, body, text: res.body };
}

/** Every route that reads a JSON body, with a token that may call it. */
function bodyRoutes(t: TestBulkhead, f: Fixture): { method: Method; url: string; token: string }[] {
  return [
    { method: 'POST', url: '/v1/tenants', token: t.operatorToken },
    { method: 'PATCH', url: `/v1/tenants/${f.tenantId}`, token: t.operatorToken },
    { method: 'POST', url: `/v1/tenants/${f.tenantId}/tokens`, token: t.operatorToken },
    { method: 'PUT', url: '/v1/collections/things', token: f.token },
    { method: 'POST', url: '/v1/collections/things/records', token: f.token },
    { method: 'PATCH', url: `/v1/collections/things/records/${f.thingIds[0]}`, token: f.token },
  ];
}

const q = (filter: unknown): string => encodeURIComponent(typeof filter === 'string' ? filter : JSON.stringify(filter));
const b64 = (value: unknown): string => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');

for (const kind of BACKENDS) {
  describe(`bad input (${kind})`, () => {
    let t: TestBulkhead;
    before(async () => {
      t = await openTestBulkhead(kind);
    });
    after(async () => {
      await t?.close();
    });

    it('answers malformed and empty JSON bodies with REQUEST_INVALID_JSON on every body route', async () => {
      const f = await fixture(t);
      const bodies = ['{"fields":', '{fields: {}}', "{'a':1}", '{"a":1,}', '[1,]', 'NaN', '{"a":"\\x"}', '"unterminated', '{"a":1}{"b":2}', '', ' '];
      await nothingWritten(t, f, async () => {
        for (const route of bodyRoutes(t, f)) {
          for (const body of bodies) {
            const res = await request(t.app, route.method, route.url, { token: route.token, body, headers: { 'content-type': 'application/json' } });
            expectProblem(res, 'REQUEST_INVALID_JSON', { label: `${route.method} ${route.url} ${JSON.stringify(body)}` });
          }
          const none = await raw(t, route.method, route.url, { authorization: `Bearer ${route.token}`, 'content-type': 'application/json' });
          expectProblem(none, 'REQUEST_INVALID_JSON', { label: `${route.method} ${route.url} without a body` });
        }
      });
    });

    it('refuses prototype-poisoning bodies with REQUEST_INVALID_JSON and pollutes nothing', async () => {
      const f = await fixture(t);
      const bodies = [
        '{"__proto__":{"polluted":true}}',
        '{"fields":{"s":"x","__proto__":{"polluted":true}}}',
        '{"constructor":{"prototype":{"polluted":true}}}',
        '{"fields":{"s":"x","constructor":{"prototype":{"polluted":true}}}}',
        '{"fields":{"s":"x","j":{"__proto__":{"polluted":true}}}}',
        '{"fields":{"s":"x","j":[{"constructor":{"prototype":{"polluted":true}}}]}}',
        '{"slug":"poisoned","name":"x","__proto__":{"isAdmin":true}}',
        '{"\\u005f_proto__":{"polluted":true}}',
        '{"fields":{"a":{"type":"string"},"__proto__":{"type":"json"}}}',
      ];
      await nothingWritten(t, f, async () => {
        for (const route of bodyRoutes(t, f)) {
          for (const body of bodies) {
            const res = await request(t.app, route.method, route.url, { token: route.token, body });
            expectProblem(res, 'REQUEST_INVALID_JSON', { label: `${route.method} ${route.url} ${body}` });
          }
        }
      });
      assert.equal(({} as Record<string, unknown>).polluted, undefined);
      assert.equal(({} as Record<string, unknown>).isAdmin, undefined);
      assert.equal(Object.hasOwn(Object.prototype, 'polluted'), false);
    });

    it('answers bodies that are not application/json with 415 REQUEST_UNSUPPORTED_MEDIA_TYPE', async () => {
      const f = await fixture(t);
      const types = ['text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'application/xml', 'text/html', 'application/octet-stream'];
      await nothingWritten(t, f, async () => {
        for (const route of bodyRoutes(t, f)) {
          for (const type of types) {
            const res = await request(t.app, route.method, route.url, { token: route.token, body: '{"fields":{"s":"x"}}', headers: { 'content-type': type } });
            expectProblem(res, 'REQUEST_UNSUPPORTED_MEDIA_TYPE', { label: `${route.method} ${route.url} as ${type}` });
          }
          const untyped = await raw(t, route.method, route.url, { authorization: `Bearer ${route.token}` }, '{"fields":{"s":"x"}}');
          expectProblem(untyped, 'REQUEST_UNSUPPORTED_MEDIA_TYPE', { label: `${route.method} ${route.url} without a content type` });
        }
        const del = await request(t.app, 'DELETE', `/v1/collections/things/records/${f.thingIds[0]}`, { token: f.token, body: 'x', headers: { 'content-type': 'text/plain' } });
        expectProblem(del, 'REQUEST_UNSUPPORTED_MEDIA_TYPE', { label: 'DELETE with a text body' });
      });
    });

    it('answers bodies over the body limit with 413 REQUEST_BODY_TOO_LARGE', async () => {
      const f = await fixture(t);
      const body = JSON.stringify({ fields: { s: 'x'.repeat(t.config.bodyLimit) } });
      assert.ok(Buffer.byteLength(body) > t.config.bodyLimit);
      await nothingWritten(t, f, async () => {
        for (const route of bodyRoutes(t, f)) {
          const res = await request(t.app, route.method, route.url, { token: route.token, body });
          expectProblem(res, 'REQUEST_BODY_TOO_LARGE', { label: `${route.method} ${route.url}` });
        }
      });
    });

    it('refuses bodies that are not objects, lack a member or carry unknown top-level members', async () => {
      const f = await fixture(t);
      const ops = t.operatorToken;
      const recordUrl = `/v1/collections/things/records/${f.thingIds[0]}`;
      await nothingWritten(t, f, async () => {
        for (const [method, url, token] of [['POST', '/v1/collections/things/records', f.token], ['PATCH', recordUrl, f.token]] as const) {
          for (const body of ['[1]', 'null', '"x"', '1', 'true', '[]']) {
            expectProblem(await request(t.app, method, url, { token, body }), 'REQUEST_INVALID', { field: 'body', label: `${method} ${body}` });
          }
          expectProblem(await request(t.app, method, url, { token, body: {} }), 'REQUEST_INVALID', { field: 'fields' });
          expectProblem(await request(t.app, method, url, { token, body: { fields: { s: 'x' }, id: OTHER_UUID } }), 'REQUEST_INVALID', { field: 'body' });
          expectProblem(await request(t.app, method, url, { token, body: { fields: { s: 'x' }, tenantId: OTHER_UUID } }), 'REQUEST_INVALID', { field: 'body' });
          for (const fields of [[1], null, 'x', 1]) {
            expectProblem(await request(t.app, method, url, { token, body: { fields } }), 'RECORD_INVALID', { label: `${method} fields=${JSON.stringify(fields)}` });
          }
        }
        const tokens = `/v1/tenants/${f.tenantId}/tokens`;
        expectProblem(await request(t.app, 'POST', tokens, { token: ops, body: '[1]' }), 'REQUEST_INVALID', { field: 'body' });
        expectProblem(await request(t.app, 'POST', tokens, { token: ops, body: { sub: 'u', roles: ['member'], tenant: OTHER_UUID } }), 'REQUEST_INVALID', { field: 'body' });
        expectProblem(await request(t.app, 'PATCH', `/v1/tenants/${f.tenantId}`, { token: ops, body: '[1]' }), 'REQUEST_INVALID', { field: 'body' });
        expectProblem(await request(t.app, 'PATCH', `/v1/tenants/${f.tenantId}`, { token: ops, body: { status: 'suspended', name: 'x' } }), 'REQUEST_INVALID', { field: 'body' });
        expectProblem(await request(t.app, 'PATCH', `/v1/tenants/${f.tenantId}`, { token: ops, body: {} }), 'TENANT_INVALID', { field: 'status' });
        expectProblem(await request(t.app, 'POST', '/v1/tenants', { token: ops, body: '[1]' }), 'TENANT_INVALID', { field: 'body' });
        expectProblem(await request(t.app, 'POST', '/v1/tenants', { token: ops, body: { slug: 'unknown-key', name: 'x', status: 'erased' } }), 'TENANT_INVALID', { field: 'body' });
        expectProblem(await request(t.app, 'PUT', '/v1/collections/things', { token: f.token, body: '[1]' }), 'COLLECTION_INVALID');
        expectProblem(await request(t.app, 'PUT', '/v1/collections/things', { token: f.token, body: { fields: THING_FIELDS, version: 9 } }), 'COLLECTION_INVALID');
      });
    });

    it('refuses a value of the wrong type for every field type, unknown fields and missing required ones', async () => {
      const f = await fixture(t);
      assert.deepEqual(Object.keys(WRONG_VALUES).sort(), FIELD_TYPES.filter((x) => x !== 'json').sort(), 'every field type but json has wrong values');
      const create = (fields: Record<string, unknown>) => request(t.app, 'POST', '/v1/collections/things/records', { token: f.token, body: { fields } });
      const update = (fields: Record<string, unknown>) =>
        request(t.app, 'PATCH', `/v1/collections/things/records/${f.thingIds[0]}`, { token: f.token, body: { fields } });
      await nothingWritten(t, f, async () => {
        for (const [type, values] of Object.entries(WRONG_VALUES)) {
          const field = FIELD_OF[type as FieldType];
          for (const value of values) {
            const label = `${type} ${JSON.stringify(value).slice(0, 40)}`;
            expectProblem(await create({ s: 'new-thing', [field]: value }), 'RECORD_INVALID', { field, label: `POST ${label}` });
            expectProblem(await update({ [field]: value }), 'RECORD_INVALID', { field, label: `PATCH ${label}` });
          }
        }
        expectProblem(await create({ s: 'x', zz: 1 }), 'RECORD_INVALID', { field: 'zz' });
        expectProblem(await create({ s: 'x', constructor: 1 }), 'RECORD_INVALID', { field: 'constructor' });
        expectProblem(await create({ s: 'x', 'not a name': 1 }), 'RECORD_INVALID', { field: '(invalid name)' });
        expectProblem(await update({ zz: 1 }), 'RECORD_INVALID', { field: 'zz' });
        expectProblem(await create({ t: 'no s' }), 'RECORD_INVALID', { field: 's' });
        expectProblem(await update({ s: null }), 'RECORD_INVALID', { field: 's' });
        expectProblem(await create({ s: 'x', r: OTHER_UUID }), 'RECORD_REFERENCE_NOT_FOUND', { field: 'r' });
        expectProblem(await create({ s: 'x', r: f.thingIds[1] }), 'RECORD_REFERENCE_NOT_FOUND', { field: 'r', label: 'a record of another collection' });
        expectProblem(await update({ r: OTHER_UUID }), 'RECORD_REFERENCE_NOT_FOUND', { field: 'r' });
        expectProblem(await create({ s: 'thing-1' }), 'RECORD_UNIQUE_VIOLATION', { field: 's' });
        expectProblem(await update({ s: 'thing-2' }), 'RECORD_UNIQUE_VIOLATION', { field: 's' });
      });
    });

    it('answers invalid record ids with RECORD_NOT_FOUND, exactly like missing ones', async () => {
      const f = await fixture(t);
      const [id] = f.thingIds;
      const ids = [
        'abc', id.toUpperCase(), `${id}0`, id.slice(0, -1), id.replace(/-/g, ''), `{${id}}`, NIL_UUID, OTHER_UUID, f.personId,
        "1' OR '1'='1", `${id}' OR '1'='1`, '%00', `${id}%00`, '..%2F..%2Fv1%2Ftenants', '%20', '-1', '0',
      ];
      await nothingWritten(t, f, async () => {
        for (const bad of ids) {
          const url = `/v1/collections/things/records/${bad.includes('%') ? bad : encodeURIComponent(bad)}`;
          expectProblem(await request(t.app, 'GET', url, { token: f.token }), 'RECORD_NOT_FOUND', { label: `GET ${bad}` });
          expectProblem(await request(t.app, 'PATCH', url, { token: f.token, body: { fields: { t: 'changed' } } }), 'RECORD_NOT_FOUND', { label: `PATCH ${bad}` });
          expectProblem(await request(t.app, 'DELETE', url, { token: f.token }), 'RECORD_NOT_FOUND', { label: `DELETE ${bad}` });
        }
        // Longer than any id: refused by the router before any handler (Fastify's maxParamLength).
        const long = await request(t.app, 'GET', `/v1/collections/things/records/${'a'.repeat(250)}`, { token: f.token });
        expectProblem(long, 'REQUEST_INVALID');
        const badEscape = await request(t.app, 'GET', '/v1/collections/things/records/%E0%A4%A', { token: f.token });
        expectProblem(badEscape, 'REQUEST_INVALID');
      });
    });

    it('answers invalid collection names with COLLECTION_INVALID and unknown ones with COLLECTION_NOT_FOUND on every route', async () => {
      const f = await fixture(t);
      const [id] = f.thingIds;
      const routes = (name: string): [Method, string, unknown][] => [
        ['PUT', `/v1/collections/${name}`, { fields: { a: { type: 'string' } } }],
        ['GET', `/v1/collections/${name}`, undefined],
        ['POST', `/v1/collections/${name}/records`, { fields: { s: 'x' } }],
        ['GET', `/v1/collections/${name}/records`, undefined],
        ['GET', `/v1/collections/${name}/records/${id}`, undefined],
        ['PATCH', `/v1/collections/${name}/records/${id}`, { fields: { s: 'x' } }],
        ['DELETE', `/v1/collections/${name}/records/${id}`, undefined],
      ];
      const invalid = [
        'Things', '1things', 'th-ings', 'things!', 'x y', '_x', 'tâche', 'a'.repeat(64), 'x%00', 'things;', "x';DROP TABLE bulkhead.records;--",
        'bulkhead.records', 'pg_catalog.pg_roles', '.x',
      ];
      await nothingWritten(t, f, async () => {
        for (const name of invalid) {
          const segment = name.includes('%') ? name : encodeURIComponent(name);
          for (const [method, url, body] of routes(segment)) {
            const res = await request(t.app, method, url, { token: f.token, ...(body === undefined ? {} : { body }) });
            expectProblem(res, 'COLLECTION_INVALID', { label: `${method} ${url}`, secret: name });
          }
        }
        for (const [method, url, body] of routes('ghosts').filter(([m]) => m !== 'PUT')) {
          const res = await request(t.app, method, url, { token: f.token, ...(body === undefined ? {} : { body }) });
          expectProblem(res, 'COLLECTION_NOT_FOUND', { label: `${method} ${url}` });
        }
      });
    });

    it('refuses limits out of range, unknown and repeated query parameters', async () => {
      const f = await fixture(t);
      const list = (qs: string) => request(t.app, 'GET', `/v1/collections/things/records?${qs}`, { token: f.token });
      await nothingWritten(t, f, async () => {
        for (const limit of ['0', '-1', '1001', String(QUERY_LIMITS.maxLimit + 1), 'abc', '1e3', '1.5', ' 1', '+1', '0x10', '１', '10000', '99999', 'NaN', 'Infinity', "1' OR '1'='1"]) {
          expectProblem(await list(`limit=${encodeURIComponent(limit)}`), 'QUERY_INVALID', { label: `limit=${limit}` });
        }
        for (const limit of ['1', String(QUERY_LIMITS.maxLimit)]) {
          const res = await list(`limit=${limit}`);
          assert.equal(res.status, 200, `limit=${limit} is in range`);
        }
        expectProblem(await list('limit=1&limit=2'), 'REQUEST_INVALID');
        expectProblem(await list('sort=s&sort=-s'), 'REQUEST_INVALID');
        expectProblem(await list('page=2'), 'REQUEST_INVALID');
        expectProblem(await list('tenant=00000000-0000-0000-0000-000000000000'), 'REQUEST_INVALID');
        expectProblem(await list('filter[s]=x'), 'REQUEST_INVALID');
      });
    });

    it('refuses filters and sorts that are not JSON objects, name unknown fields or operators, or have wrong arguments', async () => {
      const f = await fixture(t);
      const list = (filter: unknown) => request(t.app, 'GET', `/v1/collections/things/records?filter=${q(filter)}`, { token: f.token });
      const cases: [unknown, string | undefined][] = [
        ['abc', undefined], ['{', undefined], ['[1]', undefined], ['"x"', undefined], ['1', undefined], ['null', undefined], ['true', undefined],
        [{ zz: { eq: 1 } }, 'zz'],
        [{ 'bad name': { eq: 1 } }, '(invalid name)'],
        [{ toString: { eq: 'x' } }, 'toString'],
        [{ constructor: { isNull: true } }, 'constructor'],
        [{ hasOwnProperty: { in: ['x'] } }, 'hasOwnProperty'],
        ['{"__proto__":{"eq":"x"}}', '(invalid name)'],
        [{ s: { like: 'x' } }, 's'], [{ s: { toString: 'x' } }, 's'], [{ s: { $eq: 'x' } }, 's'], [{ s: { EQ: 'x' } }, 's'],
        [{ s: {} }, 's'], [{ s: 'x' }, 's'], [{ s: null }, 's'], [{ s: [1] }, 's'],
        [{ s: { isNull: 'true' } }, 's'], [{ s: { isNull: 1 } }, 's'], [{ s: { isNull: null } }, 's'],
        [{ s: { in: Array.from({ length: QUERY_LIMITS.maxInValues + 1 }, (_, i) => `v${i}`) } }, 's'],
        [{ s: { in: [] } }, 's'], [{ s: { in: 'x' } }, 's'], [{ s: { in: [1] } }, 's'],
        [{ s: { contains: '' } }, 's'], [{ s: { contains: 'x'.repeat(1001) } }, 's'], [{ s: { prefix: 1 } }, 's'],
        [{ i: { contains: '1' } }, 'i'], [{ j: { in: [1] } }, 'j'],
        [Object.fromEntries(Array.from({ length: QUERY_LIMITS.maxFilterFields + 1 }, (_, i) => [`f${i}`, { eq: 1 }])), undefined],
        [{ s: { eq: 'x'.repeat(QUERY_LIMITS.maxFilterLength) } }, undefined],
      ];
      for (const [type, filter] of Object.entries(WRONG_FILTERS)) cases.push([{ [FIELD_OF[type as FieldType]]: filter }, FIELD_OF[type as FieldType]]);
      assert.deepEqual(Object.keys(WRONG_FILTERS).sort(), [...FIELD_TYPES].sort(), 'every field type has a refused filter');
      await nothingWritten(t, f, async () => {
        for (const [filter, field] of cases) {
          const label = `filter=${(typeof filter === 'string' ? filter : JSON.stringify(filter)).slice(0, 60)}`;
          expectProblem(await list(filter), 'QUERY_INVALID', { ...(field === undefined ? {} : { field }), label });
        }
        for (const sort of ['zz', '-zz', 'toString', 'constructor', '__proto__', '--s', '-', 's,i', 't', '-j', 's; DROP TABLE x', "s' --", 'data']) {
          const res = await request(t.app, 'GET', `/v1/collections/things/records?sort=${encodeURIComponent(sort)}`, { token: f.token });
          expectProblem(res, 'QUERY_INVALID', { label: `sort=${sort}` });
        }
      });
    });

    it('refuses cursors this server did not issue for this sort with QUERY_CURSOR_INVALID', async () => {
      const f = await fixture(t);
      const page = await request(t.app, 'GET', '/v1/collections/things/records?limit=1&sort=s', { token: f.token });
      assert.equal(page.status, 200);
      const cursor = page.body.nextCursor as string;
      assert.equal(typeof cursor, 'string');
      const next = await request(t.app, 'GET', `/v1/collections/things/records?limit=1&sort=s&cursor=${cursor}`, { token: f.token });
      assert.equal(next.status, 200, 'the cursor works with its own sort');
      assert.equal(next.body.records[0].fields.s, 'thing-2');
      const list = (qs: string) => request(t.app, 'GET', `/v1/collections/things/records?${qs}`, { token: f.token });
      const forged = [
        'abc', 'a b', '%', "' OR 1=1 --", 'x'.repeat(QUERY_LIMITS.maxCursorLength + 1), '', 'Zm9v',
        b64({ s: 'id', i: 'not-a-uuid' }), b64([]), b64('"x"'), b64({ s: 'id' }), b64({ s: 'id', i: OTHER_UUID, v: { a: 1 } }),
        b64({ s: 'id', i: OTHER_UUID.toUpperCase() }), b64({ s: 1, i: OTHER_UUID }), b64('{"s":"id","i":'),
      ];
      await nothingWritten(t, f, async () => {
        for (const c of forged) expectProblem(await list(`cursor=${encodeURIComponent(c)}`), 'QUERY_CURSOR_INVALID', { label: `cursor=${c.slice(0, 30)}` });
        expectProblem(await list(`sort=-s&cursor=${cursor}`), 'QUERY_CURSOR_INVALID', { label: 'another direction' });
        expectProblem(await list(`cursor=${cursor}`), 'QUERY_CURSOR_INVALID', { label: 'another sort' });
        expectProblem(await list(`sort=i&cursor=${cursor}`), 'QUERY_CURSOR_INVALID', { label: 'another field' });
      });
    });

    it('refuses values that cannot be stored as sent (U+0000, unpaired surrogates, 1e400, deep nesting) with a 4xx', async () => {
      const f = await fixture(t);
      const ops = t.operatorToken;
      const bad = ['a\u0000b', '\u0000', 'x\ud800', '\udc00y', '\ud800\ud800'];
      await nothingWritten(t, f, async () => {
        for (const value of bad) {
          const label = JSON.stringify(value);
          expectProblem(await request(t.app, 'POST', '/v1/collections/things/records', { token: f.token, body: { fields: { s: value } } }), 'REQUEST_INVALID', { field: 'fields.s', label });
          expectProblem(await request(t.app, 'POST', '/v1/collections/things/records', { token: f.token, body: { fields: { s: 'x', j: { deep: [value] } } } }), 'REQUEST_INVALID', { field: 'fields.j.deep', label });
          expectProblem(await request(t.app, 'POST', '/v1/collections/things/records', { token: f.token, body: { fields: { s: 'x', j: { [value]: 1 } } } }), 'REQUEST_INVALID', { label });
          expectProblem(await request(t.app, 'PATCH', `/v1/collections/things/records/${f.thingIds[0]}`, { token: f.token, body: { fields: { t: value } } }), 'REQUEST_INVALID', { field: 'fields.t', label });
          expectProblem(await request(t.app, 'POST', '/v1/tenants', { token: ops, body: { slug: 'unstorable', name: value } }), 'REQUEST_INVALID', { field: 'name', label });
          expectProblem(await request(t.app, 'PUT', '/v1/collections/things', { token: f.token, body: { description: value, fields: THING_FIELDS } }), 'REQUEST_INVALID', { field: 'description', label });
          expectProblem(await request(t.app, 'PUT', '/v1/collections/extra', { token: f.token, body: { fields: { e: { type: 'enum', values: [value] } } } }), 'REQUEST_INVALID', { label });
          expectProblem(await request(t.app, 'POST', `/v1/tenants/${f.tenantId}/tokens`, { token: ops, body: { sub: value, roles: ['member'] } }), 'REQUEST_INVALID', { field: 'sub', label });
          for (const filter of [{ s: { eq: value } }, { s: { contains: value } }, { s: { in: ['ok', value] } }, { t: { prefix: value } }]) {
            const res = await request(t.app, 'GET', `/v1/collections/things/records?filter=${q(filter)}`, { token: f.token });
            expectProblem(res, 'QUERY_INVALID', { field: Object.keys(filter)[0]!, label: `filter ${label}` });
          }
        }
        // 1e400 parses as Infinity, which JSON would store as null: refused, not silently changed.
        const huge = await request(t.app, 'POST', '/v1/collections/things/records', { token: f.token, body: '{"fields":{"s":"x","j":{"x":1e400}}}' });
        expectProblem(huge, 'REQUEST_INVALID', { field: 'fields.j.x' });
        const hugeFilter = await request(t.app, 'GET', `/v1/collections/things/records?filter=${q('{"n":{"gt":-1e400}}')}`, { token: f.token });
        expectProblem(hugeFilter, 'QUERY_INVALID', { field: 'n' });
        // Nesting past MAX_JSON_DEPTH: 5,000 levels overflowed the stack (500) before the bound.
        for (const depth of [MAX_JSON_DEPTH + 1, 5_000, 100_000]) {
          const nested = `${'['.repeat(depth)}${']'.repeat(depth)}`;
          const res = await request(t.app, 'POST', '/v1/collections/things/records', { token: f.token, body: `{"fields":{"s":"x","j":${nested}}}` });
          expectProblem(res, 'REQUEST_INVALID', { label: `depth ${depth}` });
          assert.match(res.body.field, /^fields\.j/);
        }
        for (const depth of [MAX_JSON_DEPTH + 1, 4_000]) {
          const filter = `{"s":{"in":${'['.repeat(depth)}${']'.repeat(depth)}}}`;
          assert.ok(filter.length <= QUERY_LIMITS.maxFilterLength);
          const res = await request(t.app, 'GET', `/v1/collections/things/records?filter=${q(filter)}`, { token: f.token });
          expectProblem(res, 'QUERY_INVALID', { field: 's', label: `filter depth ${depth}` });
        }
      });
      const nestedOk = JSON.parse(`${'['.repeat(MAX_JSON_DEPTH - 3)}1${']'.repeat(MAX_JSON_DEPTH - 3)}`);
      const stored = await request(t.app, 'POST', '/v1/collections/things/records', { token: f.token, body: { fields: { s: 'nested', j: nestedOk } } });
      assert.equal(stored.status, 201, `nesting within the bound is stored: ${stored.text.slice(0, 200)}`);
      assert.deepEqual(stored.body.fields.j, nestedOk);
    });

    it('stores SQL metacharacters in values verbatim and matches them only as data', async () => {
      const f = await fixture(t);
      const defined = await request(t.app, 'PUT', '/v1/collections/notes', {
        token: f.token,
        body: { fields: { body: { type: 'string', indexed: true }, tag: { type: 'string', unique: true }, memo: { type: 'text' }, meta: { type: 'json' } } },
      });
      assert.equal(defined.status, 201, defined.text);
      const thingsBefore = await request(t.app, 'GET', '/v1/collections/things/records', { token: f.token });
      const ids = new Map<string, string>();
      for (const [i, value] of METACHARACTERS.entries()) {
        const res = await request(t.app, 'POST', '/v1/collections/notes/records', {
          token: f.token,
          body: { fields: { body: value, tag: value, memo: value, meta: { [`k${i}`]: value, list: [value] } } },
        });
        assert.equal(res.status, 201, `${value}: ${res.text}`);
        assert.deepEqual(res.body.fields, { body: value, tag: value, memo: value, meta: { [`k${i}`]: value, list: [value] } });
        ids.set(value, res.body.id);
        const again = await request(t.app, 'POST', '/v1/collections/notes/records', { token: f.token, body: { fields: { tag: value } } });
        expectProblem(again, 'RECORD_UNIQUE_VIOLATION', { field: 'tag', label: value });
      }
      const page = async (filter: unknown): Promise<string[]> => {
        const res = await request(t.app, 'GET', `/v1/collections/notes/records?limit=1000&filter=${q(filter)}`, { token: f.token });
        assert.equal(res.status, 200, res.text);
        return (res.body.records as { id: string }[]).map((r) => r.id).sort();
      };
      for (const value of METACHARACTERS) {
        const got = await request(t.app, 'GET', `/v1/collections/notes/records/${ids.get(value)}`, { token: f.token });
        assert.equal(got.body.fields.body, value, 'read back verbatim');
        assert.deepEqual(await page({ body: { eq: value } }), [ids.get(value)], `eq ${value} matches exactly its record`);
        assert.deepEqual(await page({ tag: { eq: value } }), [ids.get(value)], `eq on a unique field ${value}`);
        const containing = METACHARACTERS.filter((v) => v.toLowerCase().includes(value.toLowerCase())).map((v) => ids.get(v)!).sort();
        assert.deepEqual(await page({ memo: { contains: value } }), containing, `contains ${value} matches only records holding it`);
        const prefixed = METACHARACTERS.filter((v) => v.startsWith(value)).map((v) => ids.get(v)!).sort();
        assert.deepEqual(await page({ body: { prefix: value } }), prefixed, `prefix ${value}`);
      }
      assert.deepEqual(await page({ body: { in: [...METACHARACTERS] } }), [...ids.values()].sort());
      assert.deepEqual(await page({ body: { ne: "' OR '1'='1" } }), [...ids.values()].filter((id) => id !== ids.get("' OR '1'='1")).sort());
      // Metacharacters in filter values on the fixture's own collection match nothing: they are data.
      for (const value of METACHARACTERS) {
        const res = await request(t.app, 'GET', `/v1/collections/things/records?filter=${q({ t: { eq: value } })}`, { token: f.token });
        assert.equal(res.status, 200, res.text);
        assert.deepEqual(res.body.records, []);
      }
      const thingsAfter = await request(t.app, 'GET', '/v1/collections/things/records', { token: f.token });
      assert.deepEqual(thingsAfter.body, thingsBefore.body, 'other records untouched');
      const tenant = await request(t.app, 'POST', '/v1/tenants', { token: t.operatorToken, body: { slug: `meta-${kind}`, name: METACHARACTERS[1] } });
      assert.equal(tenant.status, 201);
      assert.equal(tenant.body.name, METACHARACTERS[1]);
      const tenants = await request(t.app, 'GET', '/v1/tenants', { token: t.operatorToken });
      assert.ok((tenants.body.tenants as { id: string }[]).some((x) => x.id === f.tenantId), 'the tenants table is intact');
    });

    it('refuses SQL metacharacters in collection names, field names, sorts, slugs and tokens', async () => {
      const f = await fixture(t);
      const ops = t.operatorToken;
      await nothingWritten(t, f, async () => {
        for (const value of METACHARACTERS) {
          const label = value;
          const segment = encodeURIComponent(value);
          expectProblem(await request(t.app, 'GET', `/v1/collections/${segment}/records`, { token: f.token }), 'COLLECTION_INVALID', { secret: value, label });
          expectProblem(await request(t.app, 'PUT', `/v1/collections/${segment}`, { token: f.token, body: { fields: { a: { type: 'string' } } } }), 'COLLECTION_INVALID', { secret: value, label });
          // The name is echoed only when it is a plain identifier (as `_` is, though no valid field name).
          expectProblem(await request(t.app, 'PUT', '/v1/collections/fresh', { token: f.token, body: { fields: { [value]: { type: 'string' } } } }), 'COLLECTION_INVALID', {
            field: /^[A-Za-z0-9_]{1,63}$/.test(value) ? value : '(invalid name)', secret: value, label,
          });
          expectProblem(await request(t.app, 'PUT', '/v1/collections/fresh', { token: f.token, body: { fields: { a: { type: 'reference', collection: value } } } }), 'COLLECTION_INVALID', {
            field: 'a', secret: value, label,
          });
          expectProblem(await request(t.app, 'POST', '/v1/collections/things/records', { token: f.token, body: { fields: { s: 'x', [value]: 1 } } }), 'RECORD_INVALID', {
            field: '(invalid name)', secret: value, label,
          });
          expectProblem(await request(t.app, 'GET', `/v1/collections/things/records?filter=${q({ [value]: { eq: 'x' } })}`, { token: f.token }), 'QUERY_INVALID', {
            field: '(invalid name)', secret: value, label,
          });
          expectProblem(await request(t.app, 'GET', `/v1/collections/things/records?filter=${q({ s: { [value]: 'x' } })}`, { token: f.token }), 'QUERY_INVALID', { field: 's', secret: value, label });
          expectProblem(await request(t.app, 'GET', `/v1/collections/things/records?sort=${segment}`, { token: f.token }), 'QUERY_INVALID', { secret: value, label });
          expectProblem(await request(t.app, 'POST', '/v1/tenants', { token: ops, body: { slug: value, name: 'x' } }), 'TENANT_INVALID', { field: 'slug', secret: value, label });
          expectProblem(await request(t.app, 'POST', '/v1/tenants', { token: ops, body: { slug: 'meta-region', name: 'x', region: value } }), 'TENANT_INVALID', { field: 'region', secret: value, label });
          expectProblem(await request(t.app, 'POST', '/v1/tenants', { token: ops, body: { slug: 'meta-tier', name: 'x', tier: value } }), 'TENANT_INVALID', { field: 'tier', secret: value, label });
          for (const [method, suffix, body] of [['GET', '', undefined], ['GET', '/history', undefined], ['PATCH', '', { status: 'suspended' }], ['POST', '/tokens', { sub: 'u', roles: ['member'] }]] as const) {
            const res = await request(t.app, method, `/v1/tenants/${segment}${suffix}`, { token: ops, ...(body ? { body } : {}) });
            expectProblem(res, 'TENANT_NOT_FOUND', { secret: value, label: `${method} /v1/tenants/${value}${suffix}` });
          }
          expectProblem(await request(t.app, 'POST', `/v1/tenants/${f.tenantId}/tokens`, { token: ops, body: { sub: 'u', roles: [value] } }), 'REQUEST_INVALID', { field: 'roles', secret: value, label });
          // A bearer token is one word: with a space in it the header is malformed (AUTH_REQUIRED), else the token is refused.
          const tokenCode = /\s/.test(value) ? 'AUTH_REQUIRED' : 'AUTH_TOKEN_INVALID';
          expectProblem(await request(t.app, 'GET', '/v1/collections', { token: value }), tokenCode, { secret: value, label });
          expectProblem(await request(t.app, 'GET', '/v1/collections', { token: `${f.token}${value}` }), tokenCode, { label });
          const withId = await request(t.app, 'GET', '/v1/collections/ghosts', { token: f.token, headers: { 'x-request-id': value } });
          expectProblem(withId, 'COLLECTION_NOT_FOUND', { label });
          assert.equal(withId.headers['x-request-id'] === value, /^[A-Za-z0-9._-]{1,64}$/.test(value), 'only a plain request id is kept');
        }
      });
      const kept = await request(t.app, 'GET', '/v1/collections/ghosts', { token: f.token, headers: { 'x-request-id': 'bad-input.1_ok' } });
      expectProblem(kept, 'COLLECTION_NOT_FOUND');
      assert.equal(kept.body.requestId, 'bad-input.1_ok', 'a well-formed request id is kept and quoted in the problem');
    });

    it('refuses bad tenant definitions with TENANT_INVALID naming the member, and a taken slug with TENANT_SLUG_TAKEN', async () => {
      const f = await fixture(t);
      const cases: [Record<string, unknown>, string][] = [
        [{ slug: '', name: 'x' }, 'slug'], [{ slug: 'Acme', name: 'x' }, 'slug'], [{ slug: '-acme', name: 'x' }, 'slug'],
        [{ slug: 'acme-', name: 'x' }, 'slug'], [{ slug: 'ac_me', name: 'x' }, 'slug'], [{ slug: 'ac me', name: 'x' }, 'slug'],
        [{ slug: 'a'.repeat(64), name: 'x' }, 'slug'], [{ slug: 12, name: 'x' }, 'slug'], [{ slug: null, name: 'x' }, 'slug'],
        [{ slug: ['a'], name: 'x' }, 'slug'], [{ name: 'x' }, 'slug'],
        [{ slug: 'no-name' }, 'name'], [{ slug: 'no-name', name: '' }, 'name'], [{ slug: 'no-name', name: '   ' }, 'name'],
        [{ slug: 'no-name', name: 'x'.repeat(201) }, 'name'], [{ slug: 'no-name', name: 42 }, 'name'], [{ slug: 'no-name', name: null }, 'name'],
        [{ slug: 'tiers', name: 'x', tier: 'gold' }, 'tier'], [{ slug: 'tiers', name: 'x', tier: 'Bridge' }, 'tier'],
        [{ slug: 'tiers', name: 'x', tier: null }, 'tier'], [{ slug: 'tiers', name: 'x', tier: 1 }, 'tier'], [{ slug: 'tiers', name: 'x', tier: 'POOL' }, 'tier'],
        [{ slug: 'cells', name: 'x', cell: 7 }, 'cell'], [{ slug: 'cells', name: 'x', cell: 'Bad Cell' }, 'cell'],
        [{ slug: 'regions', name: 'x', region: 'mars' }, 'region'], [{ slug: 'regions', name: 'x', region: 5 }, 'region'],
        [{ slug: 'regions', name: 'x', region: '' }, 'region'],
        [{ slug: 'extra', name: 'x', id: OTHER_UUID }, 'body'], [{ slug: 'extra', name: 'x', status: 'active' }, 'body'],
      ];
      await nothingWritten(t, f, async () => {
        for (const [body, field] of cases) {
          const res = await request(t.app, 'POST', '/v1/tenants', { token: t.operatorToken, body });
          expectProblem(res, 'TENANT_INVALID', { field, label: JSON.stringify(body).slice(0, 80) });
        }
        const taken = await request(t.app, 'POST', '/v1/tenants', { token: t.operatorToken, body: { slug: f.slug, name: 'Another' } });
        expectProblem(taken, 'TENANT_SLUG_TAKEN', { field: 'slug' });
        for (const status of ['erased', 'quarantined', 'gone', 1, null]) {
          const res = await request(t.app, 'PATCH', `/v1/tenants/${f.tenantId}`, { token: t.operatorToken, body: { status } });
          expectProblem(res, 'TENANT_INVALID', { field: 'status', label: `status ${String(status)}` });
        }
      });
    });

    it('refuses bad token mint input with REQUEST_INVALID naming the member', async () => {
      const f = await fixture(t);
      const url = `/v1/tenants/${f.tenantId}/tokens`;
      const cases: [Record<string, unknown>, string][] = [
        [{ sub: 'u', roles: ['root'] }, 'roles'], [{ sub: 'u', roles: ['member', 'superuser'] }, 'roles'], [{ sub: 'u', roles: 'member' }, 'roles'],
        [{ sub: 'u', roles: [1] }, 'roles'], [{ sub: 'u', roles: [null] }, 'roles'], [{ sub: 'u' }, 'roles'], [{ sub: 'u', roles: ['MEMBER'] }, 'roles'],
        [{ sub: 'u', roles: ['member'], ttlSeconds: 0 }, 'ttlSeconds'], [{ sub: 'u', roles: ['member'], ttlSeconds: -1 }, 'ttlSeconds'],
        [{ sub: 'u', roles: ['member'], ttlSeconds: 2_592_001 }, 'ttlSeconds'], [{ sub: 'u', roles: ['member'], ttlSeconds: 1.5 }, 'ttlSeconds'],
        [{ sub: 'u', roles: ['member'], ttlSeconds: '60' }, 'ttlSeconds'], [{ sub: 'u', roles: ['member'], ttlSeconds: 1e12 }, 'ttlSeconds'],
        [{ sub: '', roles: ['member'] }, 'sub'], [{ sub: 'x'.repeat(257), roles: ['member'] }, 'sub'], [{ sub: 'a\nb', roles: ['member'] }, 'sub'],
        [{ sub: 42, roles: ['member'] }, 'sub'], [{ roles: ['member'] }, 'sub'],
      ];
      await nothingWritten(t, f, async () => {
        for (const [body, field] of cases) {
          const res = await request(t.app, 'POST', url, { token: t.operatorToken, body });
          expectProblem(res, 'REQUEST_INVALID', { field, label: JSON.stringify(body).slice(0, 80) });
        }
        for (const id of [NIL_UUID, 'no-such-tenant']) {
          const res = await request(t.app, 'POST', `/v1/tenants/${id}/tokens`, { token: t.operatorToken, body: { sub: 'u', roles: ['member'] } });
          expectProblem(res, 'TENANT_NOT_FOUND');
        }
      });
    });

    it('refuses bad collection definitions with COLLECTION_INVALID naming the field', async () => {
      const f = await fixture(t);
      const tooMany = Object.fromEntries(Array.from({ length: 201 }, (_, i) => [`f${i}`, { type: 'string' }]));
      const cases: [unknown, string | undefined][] = [
        [{ fields: { a: { type: 'blob' } } }, 'a'],
        [{ fields: { a: { type: 'json', unique: true } } }, 'a'],
        [{ fields: { a: { type: 'json', indexed: true } } }, 'a'],
        [{ fields: { a: { type: 'text', unique: true } } }, 'a'],
        [{ fields: { a: { type: 'enum' } } }, 'a'],
        [{ fields: { a: { type: 'enum', values: [] } } }, 'a'],
        [{ fields: { a: { type: 'enum', values: ['x', 'x'] } } }, 'a'],
        [{ fields: { a: { type: 'enum', values: ['x', 1] } } }, 'a'],
        [{ fields: { a: { type: 'string', subject: true }, b: { type: 'email', subject: true } } }, 'b'],
        [{ fields: { a: { type: 'integer', default: 'x' } } }, 'a'],
        [{ fields: { a: { type: 'boolean', default: 1 } } }, 'a'],
        [{ fields: { a: { type: 'enum', values: ['x'], default: 'y' } } }, 'a'],
        [{ fields: { a: { type: 'integer', default: null } } }, 'a'],
        [{ fields: { a: { type: 'string', unique: true, default: 'x' } } }, 'a'],
        [{ fields: { a: { type: 'reference', collection: 'ghosts' } } }, 'a'],
        [{ fields: { a: { type: 'string' }, b: { type: 'reference', collection: 'ghosts' } } }, 'b'],
        [{ fields: { a: { type: 'reference' } } }, 'a'],
        [{ fields: { a: { type: 'reference', collection: 'Things' } } }, 'a'],
        [{ fields: { a: { type: 'string', values: ['x'] } } }, 'a'],
        [{ fields: { a: { type: 'string', collection: 'people' } } }, 'a'],
        [{ fields: { a: { type: 'integer', maxLength: 5 } } }, 'a'],
        [{ fields: { a: { type: 'string', maxLength: 0 } } }, 'a'],
        [{ fields: { a: { type: 'string', maxLength: 1001 } } }, 'a'],
        [{ fields: { a: { type: 'string', secret: true } } }, 'a'],
        [{ fields: { a: 'string' } }, 'a'],
        [{ fields: { a: null } }, 'a'],
        [{ fields: { a: { type: 'string', required: 'yes' } } }, 'a'],
        [{ fields: { a: { type: 'string', classification: 'top-secret' } } }, 'a'],
        [{ fields: { a: { type: 'string', description: 'x'.repeat(1001) } } }, 'a'],
        [{ fields: { '1a': { type: 'string' } } }, '1a'],
        [{ fields: { 'a-b': { type: 'string' } } }, '(invalid name)'],
        [{ fields: {} }, undefined],
        [{}, undefined],
        [{ fields: [] }, undefined],
        [{ fields: 'a' }, undefined],
        [{ fields: tooMany }, undefined],
        [{ fields: { a: { type: 'string' } }, description: 'x'.repeat(1001) }, undefined],
      ];
      await nothingWritten(t, f, async () => {
        for (const [body, field] of cases) {
          const res = await request(t.app, 'PUT', '/v1/collections/fresh', { token: f.token, body });
          expectProblem(res, 'COLLECTION_INVALID', { ...(field === undefined ? {} : { field }), label: JSON.stringify(body).slice(0, 80) });
        }
        // Changes that the stored records would violate.
        const { s: _s, ...withoutS } = THING_FIELDS;
        const changes: [Record<string, unknown>, ErrorCode, string][] = [
          [withoutS, 'COLLECTION_INVALID', 's'],
          [{ ...THING_FIELDS, i: { type: 'string' } }, 'COLLECTION_INVALID', 'i'],
          [{ ...THING_FIELDS, extra: { type: 'string', required: true } }, 'COLLECTION_INVALID', 'extra'],
          [{ ...THING_FIELDS, e: { type: 'enum', values: ['closed'] } }, 'COLLECTION_INVALID', 'e'],
          [{ ...THING_FIELDS, t: { type: 'text', maxLength: 2 } }, 'COLLECTION_INVALID', 't'],
          [{ ...THING_FIELDS, i: { type: 'integer', unique: true } }, 'RECORD_UNIQUE_VIOLATION', 'i'],
        ];
        for (const [fields, code, field] of changes) {
          const res = await request(t.app, 'PUT', '/v1/collections/things', { token: f.token, body: { fields } });
          expectProblem(res, code, { field, label: `change of ${field}` });
        }
      });
    });

    it('answers missing or malformed credentials with AUTH_REQUIRED, bad tokens with AUTH_TOKEN_INVALID, on every route', async () => {
      const f = await fixture(t);
      const secret = new TextEncoder().encode(t.config.jwtSecret!);
      const now = Math.floor(Date.now() / 1000);
      const sign = (claims: Record<string, unknown>, key = secret) =>
        new SignJWT({ tenant: f.tenantId, roles: ['tenant_admin'], ...claims })
          .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
          .setIssuer(t.config.jwtIssuer)
          .setAudience(t.config.jwtAudience)
          .setSubject('attacker')
          .setIssuedAt(now - 7200)
          .sign(key);
      const expired = await sign({ exp: now - 3600 });
      const notYet = await sign({ exp: now + 7200, nbf: now + 3600 });
      const wrongKey = await sign({ exp: now + 3600 }, new TextEncoder().encode('k'.repeat(32)));
      const noExp = await sign({});
      const header = (h: unknown) => Buffer.from(JSON.stringify(h)).toString('base64url');
      const payload = header({ sub: 'attacker', tenant: f.tenantId, roles: ['tenant_admin'], iss: t.config.jwtIssuer, aud: t.config.jwtAudience, exp: now + 3600 });
      const algNone = `${header({ alg: 'none', typ: 'JWT' })}.${payload}.`;
      const malformedHeaders = ['Basic Zm9vOmJhcg==', 'Bearer', 'Bearer ', 'Bearer a b', 'Token abc', `${f.token}`, `Bearer  ${f.token}`, 'Digest x'];
      const invalidTokens = [
        'garbage', 'a.b.c', 'bho_short', `bho_${'A'.repeat(43)}`, `${t.operatorToken}x`, expired, notYet, wrongKey, noExp, algNone,
        `${f.token.slice(0, -2)}xx`, 'x'.repeat(9000),
      ];
      const bodies: Record<string, unknown> = {
        createTenant: { slug: 'by-anonymous', name: 'x' },
        updateTenantStatus: { status: 'suspended' },
        mintTenantToken: { sub: 'u', roles: ['tenant_admin'] },
        defineCollection: { fields: { a: { type: 'string' } } },
        createRecord: { fields: { s: 'anonymous' } },
        updateRecord: { fields: { s: 'anonymous' } },
      };
      // Every documented route but /healthz, with the fixture's ids, and a body that would succeed.
      const routes: { method: Method; url: string; body: unknown }[] = [];
      const paths = (openApiDocument as { paths: Record<string, Record<string, { operationId: string }>> }).paths;
      for (const [path, item] of Object.entries(paths)) {
        if (path === '/healthz') continue;
        for (const method of ['get', 'put', 'post', 'patch', 'delete'] as const) {
          const op = item[method];
          if (!op) continue;
          const url = path
            .replace('{name}', 'things')
            .replace('/v1/tenants/{id}', `/v1/tenants/${f.tenantId}`)
            .replace('{id}', f.thingIds[0]);
          routes.push({ method: method.toUpperCase() as Method, url, body: bodies[op.operationId] });
        }
      }
      assert.ok(routes.length >= 15);
      await nothingWritten(t, f, async () => {
        for (const { method, url, body } of routes) {
          const withBody = body === undefined ? {} : { body };
          expectProblem(await request(t.app, method, url, withBody), 'AUTH_REQUIRED', { label: `${method} ${url} without a header` });
          for (const authorization of malformedHeaders) {
            const res = await request(t.app, method, url, { ...withBody, headers: { authorization } });
            expectProblem(res, 'AUTH_REQUIRED', { label: `${method} ${url} with ${authorization.slice(0, 20)}` });
          }
          for (const token of invalidTokens) {
            const res = await request(t.app, method, url, { ...withBody, token });
            expectProblem(res, 'AUTH_TOKEN_INVALID', { label: `${method} ${url} with ${token.slice(0, 20)}` });
          }
        }
      });
    });

    it('answers the tokens of a suspended or missing tenant with AUTH_TENANT_INACTIVE', async () => {
      const f = await fixture(t);
      const other = await createTenant(t, `inactive-${kind}`, ['tenant_admin']);
      const secret = new TextEncoder().encode(t.config.jwtSecret!);
      const ghost = await new SignJWT({ tenant: OTHER_UUID, roles: ['tenant_admin'] })
        .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
        .setIssuer(t.config.jwtIssuer)
        .setAudience(t.config.jwtAudience)
        .setSubject('ghost')
        .setExpirationTime('1h')
        .sign(secret);
      const suspended = await request(t.app, 'PATCH', `/v1/tenants/${other.id}`, { token: t.operatorToken, body: { status: 'suspended' } });
      assert.equal(suspended.status, 200);
      await nothingWritten(t, f, async () => {
        for (const token of [other.token, ghost]) {
          expectProblem(await request(t.app, 'GET', '/v1/collections', { token }), 'AUTH_TENANT_INACTIVE');
          expectProblem(await request(t.app, 'PUT', '/v1/collections/things', { token, body: { fields: { a: { type: 'string' } } } }), 'AUTH_TENANT_INACTIVE');
          expectProblem(await request(t.app, 'POST', '/v1/collections/things/records', { token, body: { fields: { s: 'x' } } }), 'AUTH_TENANT_INACTIVE');
        }
      });
    });

    it('answers unknown routes and methods with ROUTE_NOT_FOUND, with or without a token', async () => {
      const f = await fixture(t);
      const unknown: [Method, string][] = [
        ['GET', '/'], ['GET', '/v2/collections'], ['GET', '/v1/Collections'], ['GET', '/v1/collections/things/records/x/y'],
        ['POST', '/healthz'], ['DELETE', '/v1/collections'], ['PUT', '/v1/tenants'], ['DELETE', `/v1/tenants/${f.tenantId}`],
        ['POST', '/openapi.json'], ['DELETE', '/v1/collections/things'], ['PUT', `/v1/collections/things/records/${f.thingIds[0]}`],
        ['GET', '/v1/collections/things/records;DROP'], ['GET', '/../etc/passwd'], ['GET', '/v1/tenants/x/tokens'],
      ];
      await nothingWritten(t, f, async () => {
        for (const [method, url] of unknown) {
          for (const token of [undefined, f.token, t.operatorToken]) {
            const res = await request(t.app, method, url, { ...(token ? { token } : {}), ...(method === 'GET' || method === 'DELETE' ? {} : { body: { fields: {} } }) });
            expectProblem(res, 'ROUTE_NOT_FOUND', { label: `${method} ${url}` });
          }
        }
      });
    });
  });
}
