/**
 * The OpenAPI 3.1 document: served at /openapi.json to any valid token, structurally sound, derived
 * from the source constants, and true to the running server: its routes are exactly Fastify's routes
 * (both ways), its schemas validate real responses, every error a route answers is one the document
 * lists for that route and status, and its `x-bulkhead-roles` are what the live policies allow.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Ajv2020, type ValidateFunction } from 'ajv/dist/2020.js';
import * as formats from 'ajv-formats';
import type { FastifyInstance } from 'fastify';
import { TENANT_ROLES, isPlatformAction, type Action, type Principal, type TenantRole } from '../src/access/principal.js';
import { ERROR_CODES, type ErrorCode } from '../src/errors.js';
import { openApiDocument } from '../src/http/openapi.js';
import { HTTP_STATUS } from '../src/http/problem.js';
import { CLASSIFICATIONS, FIELD_TYPES } from '../src/tenancy/fields.js';
import { OPERATORS, QUERY_LIMITS } from '../src/tenancy/query.js';
import { TENANT_STATUSES, TIERS } from '../src/tenancy/tenants.js';
import { BACKENDS, createTenant, mintToken, openTestBulkhead, request, type TestBulkhead, type TestResponse } from './support/backends.js';

// `any`: the document is walked generically (paths, operations, schemas of any shape).
type Doc = any;
const doc: Doc = JSON.parse(JSON.stringify(openApiDocument));
const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'] as const;
const BASE_ID = 'https://bulkhead.test/openapi.json';

/** Every operation of the document, with its path-level parameters merged in. */
function operations(): { path: string; method: string; op: Doc; parameters: Doc[] }[] {
  const out: { path: string; method: string; op: Doc; parameters: Doc[] }[] = [];
  for (const [path, item] of Object.entries<Doc>(doc.paths)) {
    for (const method of METHODS) {
      if (item[method]) out.push({ path, method, op: item[method], parameters: [...(item.parameters ?? []), ...(item[method].parameters ?? [])] });
    }
  }
  return out;
}

/** Resolves a local JSON pointer (`#/components/...`) in the document. */
function resolve(pointer: string): Doc {
  assert.ok(pointer.startsWith('#/'), `${pointer} is a local reference`);
  let node: Doc = doc;
  for (const raw of pointer.slice(2).split('/')) {
    const key = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    assert.ok(node !== null && typeof node === 'object' && Object.hasOwn(node, key), `${pointer} resolves`);
    node = node[key];
  }
  return node;
}

const deref = (node: Doc): Doc => (node && typeof node.$ref === 'string' ? resolve(node.$ref) : node);

/** Every `$ref` in a value, with where it is. */
function refs(node: Doc, at = '#', out: { at: string; ref: string }[] = []): { at: string; ref: string }[] {
  if (Array.isArray(node)) node.forEach((v, i) => refs(v, `${at}/${i}`, out));
  else if (node && typeof node === 'object') {
    for (const [k, v] of Object.entries(node)) {
      if (k === '$ref') out.push({ at, ref: String(v) });
      else refs(v, `${at}/${k}`, out);
    }
  }
  return out;
}

/** Ajv for JSON Schema 2020-12 (the OAS 3.1 dialect) holding the document's components. */
function schemaValidator(): Ajv2020 {
  // strictRequired off: `if`/`then` may require a property that the enclosing schema defines, as JSON Schema allows.
  const ajv = new Ajv2020({ strict: true, strictRequired: false, allErrors: true });
  const ns = formats as unknown as { default: ((a: Ajv2020) => void) | { default: (a: Ajv2020) => void } };
  (typeof ns.default === 'function' ? ns.default : ns.default.default)(ajv);
  // `components` is where OpenAPI keeps the schemas; to Ajv it is a container, not a keyword. The
  // response schemas live under `paths`, mirrored here as `x-paths` so that they can be compiled too.
  ajv.addVocabulary(['components']);
  ajv.addSchema({ $id: BASE_ID, components: { ...doc.components, 'x-paths': doc.paths } });
  return ajv;
}

const ajv = schemaValidator();
const compiled = new Map<string, ValidateFunction>();
function validatorAt(pointer: string): ValidateFunction {
  let fn = compiled.get(pointer);
  if (!fn) {
    fn = ajv.compile({ $ref: `${BASE_ID}${pointer}` });
    compiled.set(pointer, fn);
  }
  return fn;
}

/** Fastify's routes as `METHOD /path`, read from printRoutes' tree. */
function fastifyRoutes(app: FastifyInstance): Set<string> {
  const out = new Set<string>();
  const stack: string[] = [];
  for (const line of app.printRoutes({ commonPrefix: false }).split('\n')) {
    const m = /^((?:│ {3}| {4})*)(?:├── |└── )(\S+)(?: \(([^)]*)\))?\s*$/.exec(line);
    if (!m) continue;
    const depth = m[1]!.length / 4;
    stack.length = depth;
    const path = (depth > 0 ? stack[depth - 1]! : '') + m[2]!;
    stack[depth] = path;
    for (const method of m[3] ? m[3].split(',').map((s) => s.trim()) : []) out.add(`${method} ${path}`);
  }
  return out;
}

const toFastifyPath = (path: string): string => path.replace(/\{([^}]+)\}/g, ':$1');

/** The documented operation of a request, and its schema check. */
function checkAgainstDocument(method: string, path: string, res: TestResponse): void {
  const op = doc.paths[path]?.[method.toLowerCase()];
  assert.ok(op, `${method} ${path} is documented`);
  const documented = op.responses[String(res.status)];
  assert.ok(documented, `${method} ${path} answered ${res.status} (${res.text.slice(0, 200)}), which the document does not list`);
  const response = deref(documented);
  if (res.status === 204) {
    assert.equal(res.text, '');
    return;
  }
  const mediaType = String(res.headers['content-type']).split(';')[0]!;
  const content = response.content?.[mediaType];
  assert.ok(content, `${method} ${path} ${res.status} is documented as ${Object.keys(response.content ?? {}).join(', ')}, got ${mediaType}`);
  const escape = (s: string) => s.replace(/~/g, '~0').replace(/\//g, '~1');
  const validate = validatorAt(`#/components/x-paths/${escape(path)}/${method.toLowerCase()}/responses/${res.status}/content/${escape(mediaType)}/schema`);
  assert.ok(validate(res.body), `${method} ${path} ${res.status}: ${JSON.stringify(validate.errors)} for ${res.text.slice(0, 300)}`);
}

describe('OpenAPI document', () => {
  it('is OpenAPI 3.1 with an info object, and deeply frozen', () => {
    assert.equal(doc.openapi, '3.1.0');
    assert.equal(typeof doc.info.title, 'string');
    assert.equal(typeof doc.info.version, 'string');
    const frozen = (v: unknown): boolean =>
      typeof v !== 'object' || v === null || (Object.isFrozen(v) && Object.values(v).every(frozen));
    assert.ok(frozen(openApiDocument), 'every object of the document is frozen');
    assert.throws(() => {
      (openApiDocument as Record<string, unknown>).openapi = '3.0.0';
    }, TypeError);
  });

  it('resolves every $ref', () => {
    const all = refs(doc);
    assert.ok(all.length > 20);
    for (const { at, ref } of all) assert.doesNotThrow(() => resolve(ref), `${ref} at ${at}`);
  });

  it('declares every path parameter, unique operation ids, and known security schemes', () => {
    const ids = new Set<string>();
    for (const { path, method, op, parameters } of operations()) {
      assert.match(path, /^\//);
      assert.equal(typeof op.operationId, 'string', `${method} ${path} has an operationId`);
      assert.ok(!ids.has(op.operationId), `operationId ${op.operationId} is unique`);
      ids.add(op.operationId);
      const templated = [...path.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]).sort();
      const declared = parameters.map(deref).filter((p: Doc) => p.in === 'path');
      assert.deepEqual(declared.map((p: Doc) => p.name).sort(), templated, `${method} ${path} declares its path parameters`);
      for (const p of declared) assert.equal(p.required, true, `${method} ${path}: path parameter ${p.name} is required`);
      assert.ok(Array.isArray(op.security), `${method} ${path} states its security`);
      for (const requirement of op.security) {
        for (const name of Object.keys(requirement)) assert.ok(doc.components.securitySchemes[name], `security scheme ${name} exists`);
      }
    }
    assert.ok(ids.size >= 16);
  });

  it('states the security and the problem responses of every operation', () => {
    for (const { path, method, op } of operations()) {
      const where = `${method} ${path}`;
      assert.ok(Object.keys(op.responses).some((s) => /^2\d\d$/.test(s)), `${where} has a success response`);
      const codesByStatus = new Map<number, string[]>();
      for (const [status, raw] of Object.entries<Doc>(op.responses)) {
        const response = deref(raw);
        assert.ok(response.headers?.['x-request-id'], `${where} ${status} documents the x-request-id header`);
        if (Number(status) < 400) continue;
        const schema = response.content?.['application/problem+json']?.schema;
        assert.ok(schema, `${where} ${status} is application/problem+json`);
        assert.equal(schema.$ref, '#/components/schemas/Problem', `${where} ${status} is a Problem`);
        const codes: string[] = schema.properties.code.enum;
        for (const code of codes) {
          assert.ok(Object.hasOwn(ERROR_CODES, code), `${where} lists ${code}, a registered code`);
          assert.equal(HTTP_STATUS[code as ErrorCode], Number(status), `${where} lists ${code} under ${status}`);
        }
        codesByStatus.set(Number(status), codes);
      }
      const lists = (code: ErrorCode) => codesByStatus.get(HTTP_STATUS[code])?.includes(code) === true;
      if (path === '/healthz') {
        assert.deepEqual(op.security, [], 'GET /healthz needs no token');
        continue;
      }
      assert.ok(op.security.length > 0, `${where} needs a token`);
      for (const code of ['AUTH_REQUIRED', 'AUTH_TOKEN_INVALID', 'ACCESS_DENIED', 'STORE_UNAVAILABLE', 'INTERNAL'] as const) {
        assert.ok(lists(code), `${where} lists ${code}`);
      }
      if (op.requestBody) {
        assert.ok(op.requestBody.content['application/json'], `${where} takes application/json`);
        for (const code of ['REQUEST_INVALID_JSON', 'REQUEST_BODY_TOO_LARGE', 'REQUEST_UNSUPPORTED_MEDIA_TYPE'] as const) {
          assert.ok(lists(code), `${where} lists ${code}`);
        }
      }
    }
  });

  it('lists exactly the registered error codes in the Problem schema', () => {
    assert.deepEqual(doc.components.schemas.Problem.properties.code.enum, Object.keys(ERROR_CODES));
    assert.deepEqual(doc.components.schemas.Problem.required, ['type', 'title', 'status', 'code', 'detail']);
  });

  it('takes its enums and bounds from the source constants', () => {
    const s = doc.components.schemas;
    const p = doc.components.parameters;
    assert.deepEqual(s.FieldDefinitionInput.properties.type.enum, [...FIELD_TYPES]);
    assert.deepEqual(s.FieldDefinition.properties.type.enum, [...FIELD_TYPES]);
    assert.deepEqual(s.FieldDefinitionInput.properties.classification.enum, [...CLASSIFICATIONS]);
    assert.deepEqual(s.FieldDefinition.properties.classification.enum, [...CLASSIFICATIONS]);
    assert.deepEqual(s.CollectionDefinition.properties.encryptedClassifications.items.enum, [...CLASSIFICATIONS]);
    assert.equal(s.CollectionDefinition.properties.encryptedClassifications.uniqueItems, true);
    assert.deepEqual(s.Collection.properties.encryptedClassifications.items.enum, [...CLASSIFICATIONS]);
    for (const type of FIELD_TYPES) assert.ok(s[`FieldValue.${type}`], `the values of ${type} fields are described`);
    assert.deepEqual(s.TokenMintRequest.properties.roles.items.enum, [...TENANT_ROLES]);
    assert.deepEqual(s.Tenant.properties.tier.enum, [...TIERS]);
    assert.deepEqual(s.TenantCreate.properties.tier.enum, [...TIERS]);
    assert.deepEqual(s.Tenant.properties.status.enum, [...TENANT_STATUSES]);
    assert.deepEqual(Object.keys(s.FilterOperators.properties), [...OPERATORS]);
    assert.equal(s.FilterOperators.properties.in.maxItems, QUERY_LIMITS.maxInValues);
    assert.equal(s.Filter.maxProperties, QUERY_LIMITS.maxFilterFields);
    assert.equal(p.Limit.schema.minimum, 1);
    assert.equal(p.Limit.schema.maximum, QUERY_LIMITS.maxLimit);
    assert.equal(p.Limit.schema.default, QUERY_LIMITS.defaultLimit);
    assert.equal(p.Cursor.schema.maxLength, QUERY_LIMITS.maxCursorLength);
    const list = doc.paths['/v1/collections/{name}/records'].get;
    assert.deepEqual(
      list.parameters.map((r: Doc) => deref(r).name).filter((n: string) => n !== 'x-request-id').sort(),
      ['cursor', 'filter', 'limit', 'sort'],
    );
    for (const name of ['Filter', 'Sort', 'Limit', 'Cursor']) assert.ok(p[name].description.length > 20, `${name} is described`);
  });

  it('has schemas that are valid JSON Schema 2020-12 (the OpenAPI 3.1 dialect)', () => {
    for (const name of Object.keys(doc.components.schemas)) {
      assert.doesNotThrow(() => validatorAt(`#/components/schemas/${name.replace(/\//g, '~1')}`), name);
    }
  });

  const validator = spawnSync('python3', ['-c', 'import openapi_spec_validator'], { encoding: 'utf8' });
  const skip = validator.status === 0 ? false : 'python3 with openapi-spec-validator is not installed here';
  it('passes openapi-spec-validator (OAS 3.1 meta-schema, references, parameters)', { skip }, () => {
    const dir = mkdtempSync(join(tmpdir(), 'bulkhead-openapi-'));
    try {
      const file = join(dir, 'openapi.json');
      writeFileSync(file, JSON.stringify(openApiDocument));
      const run = spawnSync('python3', ['-m', 'openapi_spec_validator', '--schema', '3.1', file], { encoding: 'utf8' });
      assert.equal(run.status, 0, `${run.stdout}${run.stderr}`.slice(0, 2000));
      assert.match(run.stdout, /: OK\s*$/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

for (const kind of BACKENDS) {
  describe(`OpenAPI document against the server (${kind})`, () => {
    let t: TestBulkhead;
    before(async () => {
      // A short key cache: a key rotation waits for it to pass before its last pass, and the rotation below runs to its end.
      t = await openTestBulkhead(kind, { BULKHEAD_KEY_CACHE_MS: '200' });
    });
    after(async () => {
      await t?.close();
    });

    it('is served at /openapi.json to an operator or tenant token, and to no one without one', async () => {
      const tenant = await createTenant(t, `oa-serve-${kind}`, ['auditor']);
      const expected = JSON.parse(JSON.stringify(openApiDocument));
      for (const token of [t.operatorToken, tenant.token]) {
        const res = await request(t.app, 'GET', '/openapi.json', { token });
        assert.equal(res.status, 200);
        assert.match(String(res.headers['content-type']), /^application\/json/);
        assert.deepEqual(res.body, expected);
        checkAgainstDocument('GET', '/openapi.json', res);
      }
      const anonymous = await request(t.app, 'GET', '/openapi.json');
      assert.equal(anonymous.status, 401);
      assert.equal(anonymous.body.code, 'AUTH_REQUIRED');
      checkAgainstDocument('GET', '/openapi.json', anonymous);
      const garbage = await request(t.app, 'GET', '/openapi.json', { token: 'not-a-token' });
      assert.equal(garbage.body.code, 'AUTH_TOKEN_INVALID');
      checkAgainstDocument('GET', '/openapi.json', garbage);
    });

    it('documents exactly the routes Fastify serves, both ways', () => {
      const served = fastifyRoutes(t.app);
      assert.ok(served.has('GET /healthz') && served.size >= 16, `printRoutes was parsed: ${[...served].join(', ')}`);
      const documented = new Set(operations().map(({ path, method }) => `${method.toUpperCase()} ${toFastifyPath(path)}`));
      for (const route of documented) {
        const [method, url] = route.split(' ') as [string, string];
        assert.ok(t.app.hasRoute({ method: method as 'GET', url }), `${route} is documented but not served`);
        assert.ok(served.has(route), `${route} is documented but not in printRoutes`);
      }
      for (const route of served) {
        const [method, url] = route.split(' ') as [string, string];
        // Fastify answers HEAD for every GET route by itself (exposeHeadRoutes); the GET documents it.
        const counterpart = method === 'HEAD' ? `GET ${url}` : route;
        assert.ok(documented.has(counterpart), `${route} is served but not documented`);
      }
    });

    it('describes real responses, and lists every error a route answers under its status', async () => {
      const ops = t.operatorToken;
      const h = await request(t.app, 'GET', '/healthz');
      checkAgainstDocument('GET', '/healthz', h);

      const created = await request(t.app, 'POST', '/v1/tenants', { token: ops, body: { slug: `oa-live-${kind}`, name: 'Live' } });
      assert.equal(created.status, 201);
      checkAgainstDocument('POST', '/v1/tenants', created);
      const id = created.body.id as string;
      checkAgainstDocument('POST', '/v1/tenants', await request(t.app, 'POST', '/v1/tenants', { token: ops, body: { slug: `oa-live-${kind}`, name: 'Again' } }));
      checkAgainstDocument('POST', '/v1/tenants', await request(t.app, 'POST', '/v1/tenants', { token: ops, body: { slug: 'Bad Slug', name: 'x' } }));
      checkAgainstDocument('POST', '/v1/tenants', await request(t.app, 'POST', '/v1/tenants', { token: ops, body: '{"slug":' }));
      checkAgainstDocument('POST', '/v1/tenants', await request(t.app, 'POST', '/v1/tenants', { token: ops, body: 'slug=x', headers: { 'content-type': 'text/plain' } }));
      checkAgainstDocument('GET', '/v1/tenants', await request(t.app, 'GET', '/v1/tenants', { token: ops }));
      checkAgainstDocument('GET', '/v1/tenants/{id}', await request(t.app, 'GET', `/v1/tenants/${id}`, { token: ops }));
      checkAgainstDocument('GET', '/v1/tenants/{id}', await request(t.app, 'GET', '/v1/tenants/no-such-tenant', { token: ops }));
      checkAgainstDocument('PATCH', '/v1/tenants/{id}', await request(t.app, 'PATCH', `/v1/tenants/${id}`, { token: ops, body: { status: 'suspended' } }));
      checkAgainstDocument('PATCH', '/v1/tenants/{id}', await request(t.app, 'PATCH', `/v1/tenants/${id}`, { token: ops, body: { status: 'erased' } }));
      checkAgainstDocument('PATCH', '/v1/tenants/{id}', await request(t.app, 'PATCH', `/v1/tenants/${id}`, { token: ops, body: { status: 'active' } }));
      checkAgainstDocument('GET', '/v1/tenants/{id}/history', await request(t.app, 'GET', `/v1/tenants/${id}/history`, { token: ops }));
      const minted = await request(t.app, 'POST', `/v1/tenants/${id}/tokens`, { token: ops, body: { sub: 'builder-1', roles: ['tenant_admin'], ttlSeconds: 600 } });
      checkAgainstDocument('POST', '/v1/tenants/{id}/tokens', minted);
      checkAgainstDocument('POST', '/v1/tenants/{id}/tokens', await request(t.app, 'POST', `/v1/tenants/${id}/tokens`, { token: ops, body: { sub: 'x', roles: ['root'] } }));
      const token = minted.body.token as string;
      checkAgainstDocument('GET', '/v1/tenants', await request(t.app, 'GET', '/v1/tenants', { token }));

      const fields: Record<string, unknown> = {
        title: { type: 'string', required: true, unique: true, classification: 'public' },
        body: { type: 'text', maxLength: 5000 },
        count: { type: 'integer', indexed: true, default: 0 },
        amount: { type: 'number' },
        done: { type: 'boolean' },
        due: { type: 'datetime' },
        day: { type: 'date' },
        meta: { type: 'json' },
        status: { type: 'enum', values: ['open', 'closed'] },
        owner: { type: 'email', subject: true, classification: 'pii' },
        parent: { type: 'reference', collection: 'tasks' },
      };
      const definition = { description: 'Tasks', fields };
      const defineOk = validatorAt('#/components/schemas/CollectionDefinition');
      assert.ok(defineOk(definition), JSON.stringify(defineOk.errors));
      const put = await request(t.app, 'PUT', '/v1/collections/tasks', { token, body: definition });
      assert.equal(put.status, 201);
      checkAgainstDocument('PUT', '/v1/collections/{name}', put);
      checkAgainstDocument('PUT', '/v1/collections/{name}', await request(t.app, 'PUT', '/v1/collections/tasks', { token, body: definition }));
      checkAgainstDocument('PUT', '/v1/collections/{name}', await request(t.app, 'PUT', '/v1/collections/tasks', { token, body: { fields: { a: { type: 'blob' } } } }));
      checkAgainstDocument('GET', '/v1/collections', await request(t.app, 'GET', '/v1/collections', { token }));
      checkAgainstDocument('GET', '/v1/collections/{name}', await request(t.app, 'GET', '/v1/collections/tasks', { token }));
      checkAgainstDocument('GET', '/v1/collections/{name}', await request(t.app, 'GET', '/v1/collections/nothing', { token }));
      checkAgainstDocument('GET', '/v1/collections/{name}', await request(t.app, 'GET', '/v1/collections/Bad-Name', { token }));
      checkAgainstDocument('GET', '/v1/collections', await request(t.app, 'GET', '/v1/collections', { token: ops }));
      // A collection that lists its own encrypted classifications: the body is a valid definition, the answers match.
      const vault = { encryptedClassifications: ['internal', 'confidential', 'pii', 'phi', 'pci'], fields: { note: { type: 'string' } } };
      assert.ok(defineOk(vault), JSON.stringify(defineOk.errors));
      assert.ok(!defineOk({ ...vault, encryptedClassifications: ['pii', 'pii'] }), 'a duplicate is invalid by the schema too');
      assert.ok(!defineOk({ ...vault, encryptedClassifications: ['secret'] }), 'an unknown classification is invalid by the schema too');
      const vaultPut = await request(t.app, 'PUT', '/v1/collections/vault', { token, body: vault });
      assert.equal(vaultPut.status, 201, vaultPut.text);
      checkAgainstDocument('PUT', '/v1/collections/{name}', vaultPut);
      const vaultGet = await request(t.app, 'GET', '/v1/collections/vault', { token });
      assert.deepEqual(vaultGet.body.encryptedClassifications, vault.encryptedClassifications);
      checkAgainstDocument('GET', '/v1/collections/{name}', vaultGet);
      checkAgainstDocument('PUT', '/v1/collections/{name}', await request(t.app, 'PUT', '/v1/collections/vault', { token, body: { ...vault, encryptedClassifications: ['pii'] } }));

      const record = await request(t.app, 'POST', '/v1/collections/tasks/records', {
        token,
        body: { fields: { title: 'one', body: 'long', amount: 1.5, done: false, due: '2026-01-02T03:04:05+02:00', day: '2026-01-02', meta: { a: [1] }, status: 'open', owner: 'A@Example.com' } },
      });
      assert.equal(record.status, 201);
      checkAgainstDocument('POST', '/v1/collections/{name}/records', record);
      const rid = record.body.id as string;
      const write = (body: unknown) => request(t.app, 'POST', '/v1/collections/tasks/records', { token, body });
      checkAgainstDocument('POST', '/v1/collections/{name}/records', await write({ fields: { title: 'one' } }));
      checkAgainstDocument('POST', '/v1/collections/{name}/records', await write({ fields: { title: 2 } }));
      checkAgainstDocument('POST', '/v1/collections/{name}/records', await write({ fields: { title: 'x', parent: '01936f4e-7c2a-7b3d-9e4f-0a1b2c3d4e5f' } }));
      checkAgainstDocument('POST', '/v1/collections/{name}/records', await write({ fields: { title: 'x' }, extra: 1 }));
      checkAgainstDocument('POST', '/v1/collections/{name}/records', await write({ fields: { title: 'x'.repeat(t.config.bodyLimit) } }));
      checkAgainstDocument('POST', '/v1/collections/{name}/records', await request(t.app, 'POST', '/v1/collections/tasks/records', { token: ops, body: { fields: {} } }));
      const list = await request(t.app, 'GET', `/v1/collections/tasks/records?limit=1&sort=-title&filter=${encodeURIComponent('{"status":{"in":["open"]}}')}`, { token });
      assert.equal(list.status, 200);
      checkAgainstDocument('GET', '/v1/collections/{name}/records', list);
      checkAgainstDocument('GET', '/v1/collections/{name}/records', await request(t.app, 'GET', '/v1/collections/tasks/records?limit=0', { token }));
      checkAgainstDocument('GET', '/v1/collections/{name}/records', await request(t.app, 'GET', '/v1/collections/tasks/records?cursor=xyz', { token }));
      checkAgainstDocument('GET', '/v1/collections/{name}/records', await request(t.app, 'GET', '/v1/collections/tasks/records?page=2', { token }));
      checkAgainstDocument('GET', '/v1/collections/{name}/records/{id}', await request(t.app, 'GET', `/v1/collections/tasks/records/${rid}`, { token }));
      checkAgainstDocument('GET', '/v1/collections/{name}/records/{id}', await request(t.app, 'GET', '/v1/collections/tasks/records/not-a-uuid', { token }));
      checkAgainstDocument('PATCH', '/v1/collections/{name}/records/{id}', await request(t.app, 'PATCH', `/v1/collections/tasks/records/${rid}`, { token, body: { fields: { done: true, body: null } } }));
      checkAgainstDocument('PATCH', '/v1/collections/{name}/records/{id}', await request(t.app, 'PATCH', `/v1/collections/tasks/records/${rid}`, { token, body: { fields: { done: 'yes' } } }));
      checkAgainstDocument('DELETE', '/v1/collections/{name}/records/{id}', await request(t.app, 'DELETE', `/v1/collections/tasks/records/${rid}`, { token }));
      checkAgainstDocument('DELETE', '/v1/collections/{name}/records/{id}', await request(t.app, 'DELETE', `/v1/collections/tasks/records/${rid}`, { token }));
      const viewer = await mintToken(t, id, ['viewer']);
      checkAgainstDocument('DELETE', '/v1/collections/{name}/records/{id}', await request(t.app, 'DELETE', `/v1/collections/tasks/records/${rid}`, { token: viewer }));

      // Usage and partition health (operator).
      checkAgainstDocument('GET', '/v1/tenants/{id}/usage', await request(t.app, 'GET', `/v1/tenants/${id}/usage?window=5m`, { token: ops }));
      checkAgainstDocument('GET', '/v1/tenants/{id}/usage', await request(t.app, 'GET', `/v1/tenants/${id}/usage?window=2d`, { token: ops }));
      checkAgainstDocument('GET', '/v1/tenants/{id}/usage', await request(t.app, 'GET', '/v1/tenants/no-such-tenant/usage', { token: ops }));
      checkAgainstDocument('GET', '/v1/tenants/{id}/usage', await request(t.app, 'GET', `/v1/tenants/${id}/usage`, { token }));
      checkAgainstDocument('GET', '/v1/usage/top', await request(t.app, 'GET', '/v1/usage/top?window=1h&limit=5&minShare=0.2&minRows=10', { token: ops }));
      checkAgainstDocument('GET', '/v1/usage/top', await request(t.app, 'GET', '/v1/usage/top?limit=0', { token: ops }));
      checkAgainstDocument('GET', '/v1/partitions', await request(t.app, 'GET', '/v1/partitions', { token: ops }));
      checkAgainstDocument('GET', '/v1/partitions', await request(t.app, 'GET', '/v1/partitions?x=1', { token: ops }));
      checkAgainstDocument('GET', '/v1/partitions', await request(t.app, 'GET', '/v1/partitions', { token }));
    });

    it('describes real key, rotation and erasure responses, and lists their errors', async () => {
      const ops = t.operatorToken;
      const created = await request(t.app, 'POST', '/v1/tenants', { token: ops, body: { slug: `oa-keys-${kind}`, name: 'Keys' } });
      assert.equal(created.status, 201, created.text);
      const id = created.body.id as string;
      const token = await mintToken(t, id, ['tenant_admin']);
      const definition = { fields: { name: { type: 'string', classification: 'public' }, ssn: { type: 'string', unique: true, classification: 'pii' } } };
      assert.equal((await request(t.app, 'PUT', '/v1/collections/people', { token, body: definition })).status, 201);
      for (let i = 0; i < 3; i++) {
        const res = await request(t.app, 'POST', '/v1/collections/people/records', { token, body: { fields: { name: `p${i}`, ssn: `000-00-000${i}` } } });
        assert.equal(res.status, 201, res.text);
      }
      /** Sends a request (with the operator token unless told), checks it against the document and asserts its status or error code. */
      const check = async (method: 'GET' | 'POST' | 'DELETE', path: string, url: string, expected: number | ErrorCode, options: { body?: unknown; token?: string } = {}) => {
        const res = await request(t.app, method, url, { token: ops, ...options });
        checkAgainstDocument(method, path, res);
        if (typeof expected === 'number') assert.equal(res.status, expected, `${method} ${url}: ${res.text.slice(0, 300)}`);
        else assert.equal(res.body.code, expected, `${method} ${url}: ${res.text.slice(0, 300)}`);
        return res;
      };
      const KEYS = '/v1/tenants/{id}/keys';
      const ROTATE = '/v1/tenants/{id}/keys/rotate';
      const ROTATIONS = '/v1/tenants/{id}/keys/rotations';
      const ROTATION = '/v1/tenants/{id}/keys/rotations/{rotationId}';
      const ERASE = '/v1/tenants/{id}/erase';
      const ERASURES = '/v1/tenants/{id}/erasures';

      // Keys and their rotation, run to its end.
      const keys = await check('GET', KEYS, `/v1/tenants/${id}/keys`, 200);
      assert.deepEqual(keys.body.keys.map((k: Doc) => `${k.purpose}:${k.version}:${k.state}`), ['data:1:active', 'index:1:active']);
      await check('GET', KEYS, '/v1/tenants/no-such-tenant/keys', 'TENANT_NOT_FOUND');
      await check('GET', KEYS, `/v1/tenants/${id}/keys`, 'ACCESS_DENIED', { token });
      await check('POST', ROTATE, `/v1/tenants/${id}/keys/rotate`, 'REQUEST_INVALID', { body: { now: true } });
      await check('POST', ROTATE, '/v1/tenants/no-such-tenant/keys/rotate', 'TENANT_NOT_FOUND', { body: {} });
      const rotation = await check('POST', ROTATE, `/v1/tenants/${id}/keys/rotate`, 202, { body: {} });
      const rotationId = rotation.body.id as string;
      await t.bh.keyRotations.wait(rotationId);
      const done = await check('GET', ROTATION, `/v1/tenants/${id}/keys/rotations/${rotationId}`, 200);
      assert.equal(done.body.state, 'done', done.text);
      assert.deepEqual(done.body.progress.destroyed, [1]);
      await check('GET', ROTATION, `/v1/tenants/${id}/keys/rotations/not-a-uuid`, 'KEY_ROTATION_NOT_FOUND');
      await check('GET', ROTATION, '/v1/tenants/no-such-tenant/keys/rotations/01936f4e-7c2a-7b3d-9e4f-0a1b2c3d4e5f', 'TENANT_NOT_FOUND');
      const rotations = await check('GET', ROTATIONS, `/v1/tenants/${id}/keys/rotations`, 200);
      assert.deepEqual(rotations.body.rotations.map((r: Doc) => r.id), [rotationId]);
      const rotated = await check('GET', KEYS, `/v1/tenants/${id}/keys`, 200);
      assert.deepEqual(rotated.body.keys.map((k: Doc) => `${k.purpose}:${k.version}:${k.state}`), ['data:1:destroyed', 'data:2:active', 'index:1:active']);
      // Operators see a suspended tenant's key versions too; only an active tenant is rotated.
      assert.equal((await request(t.app, 'PATCH', `/v1/tenants/${id}`, { token: ops, body: { status: 'suspended' } })).status, 200);
      await check('GET', KEYS, `/v1/tenants/${id}/keys`, 200);
      await check('POST', ROTATE, `/v1/tenants/${id}/keys/rotate`, 'TENANT_BUSY', { body: {} });
      assert.equal((await request(t.app, 'PATCH', `/v1/tenants/${id}`, { token: ops, body: { status: 'active' } })).status, 200);

      // An erasure refused, scheduled, refused again, cancelled.
      await check('POST', ERASE, `/v1/tenants/${id}/erase`, 'TENANT_ERASE_INVALID', { body: { graceSeconds: -1 } });
      await check('POST', ERASE, '/v1/tenants/no-such-tenant/erase', 'TENANT_NOT_FOUND', { body: {} });
      await check('DELETE', ERASE, `/v1/tenants/${id}/erase`, 'TENANT_ERASE_NOT_SCHEDULED');
      await check('POST', ERASE, `/v1/tenants/${id}/erase`, 202, { body: { graceSeconds: 3600 } });
      await check('POST', ERASE, `/v1/tenants/${id}/erase`, 'TENANT_BUSY', { body: {} });
      await check('POST', ROTATE, `/v1/tenants/${id}/keys/rotate`, 'TENANT_BUSY', { body: {} });
      await check('GET', KEYS, `/v1/tenants/${id}/keys`, 200);
      const cancelled = await check('DELETE', ERASE, `/v1/tenants/${id}/erase`, 200);
      assert.equal(cancelled.body.state, 'cancelled');

      // An erasure run to its end, with its certificate.
      await check('POST', ERASE, `/v1/tenants/${id}/erase`, 202, { body: { graceSeconds: 0 } });
      await t.bh.erasures.runDue();
      const erasures = await check('GET', ERASURES, `/v1/tenants/${id}/erasures`, 200);
      assert.deepEqual(erasures.body.erasures.map((e: Doc) => e.state), ['done', 'cancelled']);
      assert.equal(erasures.body.erasures[0].certificate.records.people, 3);
      await check('GET', ERASURES, '/v1/tenants/no-such-tenant/erasures', 'TENANT_NOT_FOUND');
      await check('DELETE', ERASE, `/v1/tenants/${id}/erase`, 'TENANT_ERASE_TOO_LATE');
      await check('POST', ERASE, `/v1/tenants/${id}/erase`, 'TENANT_ERASE_INVALID', { body: {} });
      await check('GET', ROTATIONS, `/v1/tenants/${id}/keys/rotations`, 200);
      const history = await request(t.app, 'GET', `/v1/tenants/${id}/history`, { token: ops });
      checkAgainstDocument('GET', '/v1/tenants/{id}/history', history);
    });

    it('states the roles the live policies allow for every tenant operation, and operators only on the registry', () => {
      const tenantId = '01936f4e-7c2a-7b3d-9e4f-0a1b2c3d4e5f';
      const operator: Principal = { kind: 'operator', subject: 'op', authMethod: 'operator_token' };
      for (const { path, method, op } of operations()) {
        const action = op['x-bulkhead-action'] as Action | undefined;
        if (action === undefined) {
          assert.ok(['/healthz', '/openapi.json'].includes(path), `${method} ${path} names its action`);
          continue;
        }
        const collection = path.includes('{name}') ? 'tasks' : undefined;
        // Operator operations are the platform's actions: the tenant registry's (tenant.*: /v1/tenants*,
        // /v1/usage*, /v1/partitions) and the verification of the whole audit trail.
        if (path.startsWith('/v1/tenants')) assert.ok(action.startsWith('tenant.'), `${method} ${path} is an operator operation`);
        if (isPlatformAction(action)) {
          assert.deepEqual(op.security, [{ operatorToken: [] }]);
          assert.equal(t.bh.authorizer.authorize(operator, action, {}).allowed, true, `an operator may ${action}`);
          for (const role of TENANT_ROLES) {
            const p: Principal = { kind: 'tenant', tenantId, subject: 's', roles: [role], authMethod: 'jwt' };
            assert.equal(t.bh.authorizer.authorize(p, action, { tenantId }).allowed, false, `a ${role} may not ${action}`);
          }
          continue;
        }
        // A route that operators reach as well names the platform action they take there.
        const operatorAction = op['x-bulkhead-operator-action'] as Action | undefined;
        if (operatorAction !== undefined) {
          assert.ok(isPlatformAction(operatorAction), `${method} ${path}: operators take a platform action`);
          assert.deepEqual(op.security, [{ tenantToken: [] }, { operatorToken: [] }]);
          assert.equal(t.bh.authorizer.authorize(operator, operatorAction, {}).allowed, true, `an operator may ${operatorAction}`);
        } else {
          assert.deepEqual(op.security, [{ tenantToken: [] }]);
        }
        const roles = op['x-bulkhead-roles'] as TenantRole[];
        assert.ok(Array.isArray(roles) && roles.length > 0, `${method} ${path} lists its roles`);
        const resource = { tenantId, ...(collection ? { collection } : {}) };
        for (const role of TENANT_ROLES) {
          const p: Principal = { kind: 'tenant', tenantId, subject: 's', roles: [role], authMethod: 'jwt' };
          assert.equal(t.bh.authorizer.authorize(p, action, resource).allowed, roles.includes(role), `${role} on ${method} ${path} (${action})`);
        }
        assert.equal(t.bh.authorizer.authorize(operator, action, resource).allowed, false, `an operator may not ${action}`);
      }
    });

    it('has the tenant slug and request id patterns the server enforces', async () => {
      const slugOk = validatorAt('#/components/schemas/TenantCreate');
      const slugs = ['a', `s${kind}-9`, '0', 'A', '-a', 'a-', 'a_b', 'a b', 'z'.repeat(63), 'y'.repeat(64)];
      for (const slug of slugs) {
        const res = await request(t.app, 'POST', '/v1/tenants', { token: t.operatorToken, body: { slug: `${slug}`, name: 'n' } });
        assert.ok(res.status === 201 || res.body.code === 'TENANT_INVALID' || res.body.code === 'TENANT_SLUG_TAKEN', res.text);
        assert.equal(res.status === 201 || res.body.code === 'TENANT_SLUG_TAKEN', slugOk({ slug, name: 'n' }), `slug ${JSON.stringify(slug)}`);
      }
      const idPattern = new RegExp(doc.components.parameters.RequestId.schema.pattern);
      for (const id of ['abc-123', 'a.b_c', 'x'.repeat(64), 'x'.repeat(65), 'a b', "'; DROP", '', 'é']) {
        const res = await request(t.app, 'GET', '/healthz', { headers: { 'x-request-id': id } });
        assert.equal(res.headers['x-request-id'] === id, idPattern.test(id), `x-request-id ${JSON.stringify(id)}`);
      }
    });
  });
}
