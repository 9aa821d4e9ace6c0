import { createHash } from 'node:crypto';
import { BulkheadError, QueryInvalidError } from '../errors.js';
import { isUuid } from '../ids.js';
import type { Statement } from '../store/engine.js';
import { isKeyable, keyTableOf, type CollectionDefinition, type FieldDefinition } from './fields.js';
import { fieldValidator, findUnstorableValue } from './validation.js';

/** Filter operators (SPEC: eq, ne, lt, lte, gt, gte, in, contains, prefix, isNull). */
export const OPERATORS = ['eq', 'ne', 'lt', 'lte', 'gt', 'gte', 'in', 'contains', 'prefix', 'isNull'] as const;
/** A filter operator. */
export type Operator = (typeof OPERATORS)[number];

/** Bounds on list queries, so no request can ask for unbounded work. */
export const QUERY_LIMITS = Object.freeze({
  defaultLimit: 100,
  maxLimit: 1000,
  maxFilterFields: 20,
  maxInValues: 100,
  maxFilterLength: 8192,
  maxCursorLength: 2048,
});

const RANGE_TYPES = new Set(['string', 'integer', 'number', 'datetime', 'date', 'email', 'enum', 'reference']);
const TEXT_TYPES = new Set(['string', 'text', 'email', 'enum', 'reference']);

/** A list request as it arrives (strings straight from the query string). */
export interface ListRequest {
  readonly filter?: string | undefined;
  readonly sort?: string | undefined;
  readonly limit?: string | undefined;
  readonly cursor?: string | undefined;
}

/** A compiled list query. */
export interface CompiledQuery {
  readonly statement: Statement;
  readonly limit: number;
  /** Builds the cursor that continues after `row`. */
  cursorAfter(row: { id: string; data: Record<string, unknown> }): string;
  /** A fingerprint of the query's shape (fields and operators, never values), for audit and logs. */
  readonly fingerprint: string;
}

interface Sort {
  readonly field: string | null;
  readonly descending: boolean;
}

interface CursorPayload {
  s: string;
  v?: unknown;
  i: string;
}

/** Options of `compileList`. */
export interface CompileOptions {
  /**
   * The blind index of a value of an encrypted field (HMAC with the tenant's index key), as the
   * write path stores it. Needed when the filter names an encrypted field.
   */
  readonly blind?: (field: string, value: unknown) => string;
}

/**
 * The prepared name of a list statement: its text's digest, so each shape of query (fields,
 * operators, sort, cursor) is parsed and planned once per connection, as the other hot
 * statements are. Unnamed, it was planned on every call, and under the batch's generic plan mode
 * that plan spans every hash partition of the tables it reads (no values to prune with): measured
 * in bench:audit-reads, about 3 ms of PostgreSQL CPU per list. 24 hex digits keep the name, with
 * a bridge schema's suffix, under PostgreSQL's 63 characters.
 */
function listStatementName(text: string): string {
  return `bh_list_${createHash('sha256').update(text).digest('hex').slice(0, 24)}`;
}

/**
 * Compiles a list request into one parameterized statement. Every caller value is a bound
 * parameter, field names included; the tenant and collection are always the first predicates.
 */
export function compileList(
  tenantId: string,
  collection: string,
  definition: CollectionDefinition,
  request: ListRequest,
  options: CompileOptions = {},
): CompiledQuery {
  const values: unknown[] = [tenantId, collection];
  const param = (v: unknown): string => {
    values.push(v);
    return `$${values.length}`;
  };
  const where: string[] = ['r.tenant_id = $1', 'r.collection = $2'];
  const shape: string[] = [];

  const filter = parseFilter(request.filter);
  for (const [name, ops] of Object.entries(filter)) {
    // Own properties only: "constructor", "toString" or "__proto__" must not resolve to Object.prototype members.
    const field = Object.hasOwn(definition.fields, name) ? definition.fields[name] : undefined;
    if (!field) throw new QueryInvalidError(`filter names an unknown field "${safe(name)}"`, { field: safe(name) });
    if (typeof ops !== 'object' || ops === null || Array.isArray(ops) || Object.keys(ops).length === 0) {
      throw new QueryInvalidError(`filter.${name} must be an object of operators`, { field: name });
    }
    for (const [op, arg] of Object.entries(ops as Record<string, unknown>)) {
      where.push(field.encrypted ? encryptedCondition(name, field, op, arg, param, options) : condition(name, field, op, arg, param));
      shape.push(`${name}.${op}`);
    }
  }

  const sort = parseSort(request.sort, definition);
  const limit = parseLimit(request.limit);
  const sortKey = sort.field === null ? null : `coalesce(r.data -> ${param(sort.field)}::text, 'null'::jsonb)`;
  const sortTag = sort.field === null ? (sort.descending ? '-id' : 'id') : `${sort.descending ? '-' : ''}${sort.field}`;
  if (request.cursor !== undefined) {
    const c = decodeCursor(request.cursor);
    if (c.s !== sortTag) throw new BulkheadError('QUERY_CURSOR_INVALID', 'the cursor belongs to a different sort; start again without it');
    const cmp = sort.descending ? '<' : '>';
    if (sortKey === null) where.push(`r.id ${cmp} ${param(c.i)}::uuid`);
    else where.push(`(${sortKey}, r.id) ${cmp} (${param(JSON.stringify(c.v ?? null))}::text::jsonb, ${param(c.i)}::uuid)`);
  }
  const dir = sort.descending ? 'DESC' : 'ASC';
  const order = sortKey === null ? `r.id ${dir}` : `${sortKey} ${dir}, r.id ${dir}`;
  const text =
    'SELECT r.id, r.data, r.version, r.created_at, r.updated_at FROM records r ' +
    `WHERE ${where.join(' AND ')} ORDER BY ${order} LIMIT ${param(limit + 1)}`;
  return {
    statement: { name: listStatementName(text), text, values },
    limit,
    fingerprint: `${collection}?${shape.sort().join(',')}&sort=${sortTag}`,
    cursorAfter(row) {
      const payload: CursorPayload = { s: sortTag, i: row.id };
      if (sort.field !== null) payload.v = row.data[sort.field] ?? null;
      return Buffer.from(JSON.stringify(payload)).toString('base64url');
    },
  };
}

function parseFilter(raw: string | undefined): Record<string, unknown> {
  if (raw === undefined || raw === '') return {};
  if (raw.length > QUERY_LIMITS.maxFilterLength) {
    throw new QueryInvalidError(`filter is longer than ${QUERY_LIMITS.maxFilterLength} characters`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    throw new QueryInvalidError('filter must be URL-encoded JSON, e.g. {"status":{"eq":"open"}}');
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new QueryInvalidError('filter must be a JSON object mapping fields to operators');
  }
  if (Object.keys(parsed).length > QUERY_LIMITS.maxFilterFields) {
    throw new QueryInvalidError(`filter names at most ${QUERY_LIMITS.maxFilterFields} fields`);
  }
  const bad = findUnstorableValue(parsed);
  if (bad !== undefined) throw new QueryInvalidError(`filter: ${bad.problem}`, { field: bad.path.split('.')[0] || 'filter' });
  return parsed as Record<string, unknown>;
}

/**
 * A filter on an encrypted field. Its stored value is a ciphertext that differs every time, so
 * only equality can be answered, through the blind index kept in the field's value table; every
 * other operator would need the plaintext in the database and is refused. `isNull` asks only
 * whether the field is present.
 */
function encryptedCondition(
  name: string,
  field: FieldDefinition,
  op: string,
  arg: unknown,
  param: (v: unknown) => string,
  options: CompileOptions,
): string {
  if (op === 'isNull') return condition(name, field, op, arg, param);
  const table = keyTableOf(field);
  if ((op !== 'eq' && op !== 'in') || table === null) {
    const allowed = table === null ? 'isNull' : 'eq, in and isNull';
    throw new QueryInvalidError(`filter.${name}: the field is encrypted; only ${allowed} apply to it`, { field: name });
  }
  if (!options.blind) throw new BulkheadError('INTERNAL', 'a filter on an encrypted field needs the tenant index key');
  const blind = options.blind;
  const keys =
    op === 'eq'
      ? [blind(name, checkValue(name, field, op, arg))]
      : (() => {
          if (!Array.isArray(arg) || arg.length === 0 || arg.length > QUERY_LIMITS.maxInValues) {
            throw new QueryInvalidError(`filter.${name}.in takes an array of 1 to ${QUERY_LIMITS.maxInValues} values`, { field: name });
          }
          return arg.map((v) => blind(name, checkValue(name, field, op, v)));
        })();
  return (
    `r.id IN (SELECT k.record_id FROM ${table} k WHERE k.tenant_id = $1 AND k.collection = $2 AND k.field = ${param(name)}::text ` +
    `AND k.key = ANY (${param(`{${keys.join(',')}}`)}::text[]))`
  );
}

function condition(name: string, field: FieldDefinition, op: string, arg: unknown, param: (v: unknown) => string): string {
  if (!(OPERATORS as readonly string[]).includes(op)) {
    throw new QueryInvalidError(`filter.${name}: unknown operator "${safe(op)}"; use one of ${OPERATORS.join(', ')}`, { field: name });
  }
  const value = (p: string): string => `r.data -> ${p}`;
  const f = `${param(name)}::text`;
  switch (op as Operator) {
    case 'isNull': {
      if (typeof arg !== 'boolean') throw new QueryInvalidError(`filter.${name}.isNull takes true or false`, { field: name });
      return arg ? `NOT (r.data ? ${f})` : `(r.data ? ${f})`;
    }
    case 'eq':
    case 'ne': {
      if (field.type === 'json') throw new QueryInvalidError(`filter.${name}: json fields support only isNull`, { field: name });
      const v = checkValue(name, field, op, arg);
      const p = param(JSON.stringify(v));
      if (op === 'ne') return `${value(f)} IS DISTINCT FROM ${p}::text::jsonb`;
      return `${value(f)} = ${p}::text::jsonb${keyLookup(field, f, `${p}::text::jsonb`)}`;
    }
    case 'in': {
      if (field.type === 'json') throw new QueryInvalidError(`filter.${name}: json fields support only isNull`, { field: name });
      if (!Array.isArray(arg) || arg.length === 0 || arg.length > QUERY_LIMITS.maxInValues) {
        throw new QueryInvalidError(`filter.${name}.in takes an array of 1 to ${QUERY_LIMITS.maxInValues} values`, { field: name });
      }
      const vs = arg.map((v) => checkValue(name, field, op, v));
      return `${value(f)} IN (SELECT jsonb_array_elements(${param(JSON.stringify(vs))}::text::jsonb))`;
    }
    case 'lt':
    case 'lte':
    case 'gt':
    case 'gte': {
      if (!RANGE_TYPES.has(field.type)) throw new QueryInvalidError(`filter.${name}: ${field.type} fields cannot be compared with ${op}`, { field: name });
      const v = checkValue(name, field, op, arg);
      const sql = { lt: '<', lte: '<=', gt: '>', gte: '>=' }[op as 'lt' | 'lte' | 'gt' | 'gte'];
      // jsonb compares values of one type by value (numbers numerically); a collection's field holds one type.
      return `${value(f)} ${sql} ${param(JSON.stringify(v))}::text::jsonb`;
    }
    case 'contains':
    case 'prefix': {
      if (!TEXT_TYPES.has(field.type)) throw new QueryInvalidError(`filter.${name}: ${op} applies to text fields only`, { field: name });
      if (typeof arg !== 'string' || arg.length === 0 || arg.length > 1000) {
        throw new QueryInvalidError(`filter.${name}.${op} takes a non-empty string of at most 1000 characters`, { field: name });
      }
      const needle = field.type === 'email' ? arg.toLowerCase() : arg;
      // strpos and starts_with take the argument as data, so %, _ and \ need no escaping.
      return op === 'contains'
        ? `strpos(lower(r.data ->> ${f}), lower(${param(needle)})) > 0`
        : `starts_with(r.data ->> ${f}, ${param(needle)})`;
    }
  }
}

/** For unique and indexed fields, an equality also goes through the per-tenant value index. */
function keyLookup(field: FieldDefinition, f: string, jsonValue: string): string {
  if (!isKeyable(field.type) || !(field.unique || field.indexed)) return '';
  const table = field.unique ? 'unique_values' : 'index_values';
  return ` AND r.id IN (SELECT k.record_id FROM ${table} k WHERE k.tenant_id = $1 AND k.collection = $2 AND k.field = ${f} AND k.key = bulkhead.value_key(${jsonValue}))`;
}

function checkValue(name: string, field: FieldDefinition, op: string, v: unknown): unknown {
  if (!fieldValidator(field)(v)) {
    throw new QueryInvalidError(`filter.${name}.${op} needs a value of the field's type (${field.type})`, { field: name });
  }
  if (field.type === 'email') return (v as string).toLowerCase();
  if (field.type === 'datetime') return new Date(Date.parse(v as string)).toISOString();
  return v;
}

function parseSort(raw: string | undefined, definition: CollectionDefinition): Sort {
  if (raw === undefined || raw === '' || raw === 'id') return { field: null, descending: false };
  if (raw === '-id') return { field: null, descending: true };
  const descending = raw.startsWith('-');
  const name = descending ? raw.slice(1) : raw;
  const field = Object.hasOwn(definition.fields, name) ? definition.fields[name] : undefined;
  if (!field) throw new QueryInvalidError(`sort names an unknown field "${safe(name)}"`, { field: safe(name) });
  if (!isKeyable(field.type)) throw new QueryInvalidError(`sort: ${field.type} fields cannot be sorted`, { field: name });
  if (field.encrypted) throw new QueryInvalidError('sort: the field is encrypted; its order is not known to the database', { field: name });
  return { field: name, descending };
}

function parseLimit(raw: string | undefined): number {
  if (raw === undefined || raw === '') return QUERY_LIMITS.defaultLimit;
  if (!/^[0-9]{1,4}$/.test(raw)) throw new QueryInvalidError(`limit must be an integer from 1 to ${QUERY_LIMITS.maxLimit}`);
  const n = Number(raw);
  if (n < 1 || n > QUERY_LIMITS.maxLimit) throw new QueryInvalidError(`limit must be an integer from 1 to ${QUERY_LIMITS.maxLimit}`);
  return n;
}

function decodeCursor(raw: string): CursorPayload {
  const invalid = () => new BulkheadError('QUERY_CURSOR_INVALID', 'the cursor is not one this server issued; start again without it');
  if (raw.length === 0 || raw.length > QUERY_LIMITS.maxCursorLength || !/^[A-Za-z0-9_-]+$/.test(raw)) throw invalid();
  let c: unknown;
  try {
    c = JSON.parse(Buffer.from(raw, 'base64url').toString('utf8'));
  } catch {
    throw invalid();
  }
  if (typeof c !== 'object' || c === null || Array.isArray(c)) throw invalid();
  const { s, i, v } = c as Record<string, unknown>;
  if (typeof s !== 'string' || !isUuid(i)) throw invalid();
  if (v !== undefined && v !== null && typeof v !== 'string' && typeof v !== 'number' && typeof v !== 'boolean') throw invalid();
  return { s, i, v };
}

function safe(name: string): string {
  return /^[A-Za-z][A-Za-z0-9_]{0,62}$/.test(name) ? name : '(invalid name)';
}
