/**
 * The error-code registry, its HTTP statuses, its documentation and its uses agree both ways
 * (the practice of Fastify's lib/errors.js): a code added, removed or remapped in one place and
 * not the others fails here. And problem+json never leaks what an unexpected error says.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join, relative } from 'node:path';
import { BulkheadError, DatabaseError, ERROR_CODES, type ErrorCode } from '../src/errors.js';
import { HTTP_STATUS, PROBLEM_TYPE_BASE, toProblem } from '../src/http/problem.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CODES = Object.keys(ERROR_CODES) as ErrorCode[];
/** The statuses the SPEC's HTTP contract uses for errors, plus 415 (a body that is not JSON) and 500. */
const CONTRACT_STATUSES = new Set([400, 401, 403, 404, 409, 413, 415, 429, 500, 503]);

interface DocumentedCode {
  readonly code: string;
  readonly status: number;
  readonly title: string;
  readonly when: string;
  readonly action: string;
}

/** The rows of the table in docs/errors.md whose first cell is a `CODE`. */
function documentedCodes(): DocumentedCode[] {
  const text = readFileSync(join(ROOT, 'docs/errors.md'), 'utf8');
  const rows: DocumentedCode[] = [];
  for (const line of text.split('\n')) {
    const m = /^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|\s*(\d{3})\s*\|([^|]*)\|([^|]*)\|([^|]*)\|\s*$/.exec(line);
    if (m) rows.push({ code: m[1]!, status: Number(m[2]), title: m[3]!.trim(), when: m[4]!.trim(), action: m[5]!.trim() });
  }
  return rows;
}

/** Every .ts file under src/. */
function sourceFiles(): string[] {
  return (readdirSync(join(ROOT, 'src'), { recursive: true }) as string[])
    .filter((f) => f.endsWith('.ts'))
    .map((f) => join(ROOT, 'src', f));
}

/**
 * Error-code literals as the source uses them: the first argument of `new <X>Error(...)` or
 * `super(...)`, a comparison with or assignment to `code`, and the literal unions of constructor
 * parameters (`code: 'AUTH_REQUIRED' | 'AUTH_TOKEN_INVALID'`).
 */
function codesUsedInSource(): Map<string, string[]> {
  const found = new Map<string, string[]>();
  const add = (code: string, file: string, index: number, text: string) => {
    const line = text.slice(0, index).split('\n').length;
    const where = `${relative(ROOT, file)}:${line}`;
    found.set(code, [...(found.get(code) ?? []), where]);
  };
  const patterns = [
    /new\s+[A-Z]\w*Error\(\s*(['"`])([A-Z][A-Z0-9_]*)\1/g,
    /super\(\s*(['"`])([A-Z][A-Z0-9_]*)\1/g,
    /\bcode\s*(?:===|!==|==|!=)\s*(['"`])([A-Z][A-Z0-9_]*)\1/g,
  ];
  const union = /\bcode\??\s*:\s*((?:['"][A-Z][A-Z0-9_]*['"]\s*\|?\s*)+)/g;
  for (const file of sourceFiles()) {
    const text = readFileSync(file, 'utf8');
    for (const re of patterns) {
      for (const m of text.matchAll(re)) add(m[2]!, file, m.index!, text);
    }
    for (const m of text.matchAll(union)) {
      for (const lit of m[1]!.matchAll(/['"]([A-Z][A-Z0-9_]*)['"]/g)) add(lit[1]!, file, m.index!, text);
    }
  }
  return found;
}

/** Codes of other libraries the source compares against (Fastify's FST_*, Node's and jose's ERR_*). */
const FOREIGN = /^(FST_|ERR_)/;

describe('error-code registry', () => {
  it('gives every code a title, an HTTP status of the contract, and every status a code', () => {
    assert.ok(CODES.length > 0);
    for (const code of CODES) {
      assert.match(code, /^[A-Z]+(_[A-Z]+)+$|^INTERNAL$/, `${code} is namespaced AREA_WHAT`);
      assert.equal(typeof ERROR_CODES[code], 'string');
      assert.ok(ERROR_CODES[code].length > 0, `${code} has a title`);
      const status = HTTP_STATUS[code];
      assert.equal(typeof status, 'number', `${code} has an HTTP status`);
      assert.ok(CONTRACT_STATUSES.has(status), `${code} maps to ${status}, not a status of the contract`);
    }
    assert.deepEqual(Object.keys(HTTP_STATUS).sort(), [...CODES].sort(), 'HTTP_STATUS has exactly the registered codes');
  });

  it('documents every code in docs/errors.md with its status and title, and documents no other code', () => {
    const rows = documentedCodes();
    assert.ok(rows.length > 0, 'docs/errors.md has a table of codes');
    const seen = new Set<string>();
    for (const row of rows) {
      assert.ok(!seen.has(row.code), `${row.code} is documented once`);
      seen.add(row.code);
      assert.ok(Object.hasOwn(ERROR_CODES, row.code), `docs/errors.md documents ${row.code}, which is not in ERROR_CODES`);
      const code = row.code as ErrorCode;
      assert.equal(row.status, HTTP_STATUS[code], `docs/errors.md gives ${code} status ${row.status}, HTTP_STATUS says ${HTTP_STATUS[code]}`);
      assert.equal(row.title, ERROR_CODES[code], `docs/errors.md gives ${code} another title`);
      assert.ok(row.when.length > 20, `docs/errors.md says when ${code} happens`);
      assert.ok(row.action.length > 10, `docs/errors.md says what to do about ${code}`);
    }
    for (const code of CODES) assert.ok(seen.has(code), `${code} is not documented in docs/errors.md`);
  });

  it('documents every member of the problem document', () => {
    const text = readFileSync(join(ROOT, 'docs/errors.md'), 'utf8');
    for (const member of ['type', 'title', 'status', 'code', 'detail', 'field', 'requestId']) {
      assert.match(text, new RegExp(`^\\| \`${member}\` \\|`, 'm'), `docs/errors.md documents the ${member} member`);
    }
    assert.ok(text.includes(PROBLEM_TYPE_BASE), 'docs/errors.md gives the base of the type URIs');
  });

  it('uses only registered codes in src/, and registers no code that src/ never raises', () => {
    const used = codesUsedInSource();
    const unknown = [...used].filter(([code]) => !FOREIGN.test(code) && !Object.hasOwn(ERROR_CODES, code));
    assert.deepEqual(
      unknown.map(([code, where]) => `${code} at ${where.join(', ')}`),
      [],
      'every code literal in src/ is in ERROR_CODES',
    );
    const raised = new Set([...used.keys()].filter((c) => !FOREIGN.test(c)));
    const neverRaised = CODES.filter((code) => !raised.has(code));
    assert.deepEqual(neverRaised, [], 'every registered code is raised somewhere in src/');
  });

  it('gives every code a distinct type URI, its title and its status in problem+json', () => {
    const types = new Set<string>();
    for (const code of CODES) {
      const p = toProblem(new BulkheadError(code, 'what to do'), 'req-1');
      assert.equal(p.code, code);
      assert.equal(p.status, HTTP_STATUS[code]);
      assert.equal(p.title, ERROR_CODES[code]);
      assert.equal(p.type, `${PROBLEM_TYPE_BASE}${code.toLowerCase().replace(/_/g, '-')}`);
      assert.equal(p.requestId, 'req-1');
      types.add(p.type);
    }
    assert.equal(types.size, CODES.length);
  });
});

describe('toProblem', () => {
  const SECRET = "SELECT * FROM bulkhead.records WHERE data->>'ssn' = '078-05-1120'";
  const INTERNAL_DETAIL = toProblem(new Error('x')).detail;

  it('renders an unknown error as INTERNAL with a fixed detail, never its message', () => {
    const thrown: unknown[] = [
      new Error(SECRET),
      new TypeError(SECRET),
      Object.assign(new Error(SECRET), { code: 'RECORD_INVALID', details: { field: 'ssn' } }),
      { code: 'RECORD_INVALID', message: SECRET, details: { field: 'ssn' } }, // looks like a BulkheadError, is not one
      SECRET,
      null,
      undefined,
    ];
    for (const error of thrown) {
      const p = toProblem(error, 'req-2');
      assert.equal(p.code, 'INTERNAL');
      assert.equal(p.status, 500);
      assert.equal(p.title, ERROR_CODES.INTERNAL);
      assert.equal(p.detail, INTERNAL_DETAIL);
      assert.equal(p.field, undefined);
      assert.equal(p.requestId, 'req-2');
      assert.ok(!JSON.stringify(p).includes('078-05-1120'), 'the message does not leak');
    }
    assert.match(INTERNAL_DETAIL, /request id/);
  });

  it('keeps the message of an INTERNAL BulkheadError out as well', () => {
    const p = toProblem(new BulkheadError('INTERNAL', SECRET, { details: { field: 'ssn' } }));
    assert.equal(p.code, 'INTERNAL');
    assert.equal(p.detail, INTERNAL_DETAIL);
    assert.ok(!JSON.stringify(p).includes('078-05-1120'));
  });

  it('gives STORE_UNAVAILABLE a fixed detail, without the SQLSTATE or the server text', () => {
    const pgError = Object.assign(new Error('duplicate key value violates unique constraint "unique_values_pkey"'), {
      code: '23505',
      detail: 'Key (key)=(078-05-1120) already exists.',
    });
    const a = toProblem(new DatabaseError(pgError, 2), 'req-3');
    const b = toProblem(new DatabaseError(new Error('connect ECONNREFUSED 127.0.0.1:5432')));
    for (const p of [a, b]) {
      assert.equal(p.code, 'STORE_UNAVAILABLE');
      assert.equal(p.status, 503);
      assert.equal(p.field, undefined);
      assert.ok(!/23505|078-05-1120|ECONNREFUSED|SQLSTATE|unique_values/.test(JSON.stringify(p)), JSON.stringify(p));
    }
    assert.equal(a.detail, b.detail, 'the detail is fixed');
  });

  it('shows the message of a known error and only a string field, and a request id only when there is one', () => {
    const p = toProblem(new BulkheadError('RECORD_INVALID', 'fields.amount must be number', { details: { field: 'amount' } }));
    assert.equal(p.detail, 'fields.amount must be number');
    assert.equal(p.field, 'amount');
    assert.equal('requestId' in p, false);
    const q = toProblem(new BulkheadError('QUERY_INVALID', 'limit is out of range', { details: { field: 42, limit: 1000 } }), 'r');
    assert.equal('field' in q, false);
    assert.equal(q.requestId, 'r');
  });
});
