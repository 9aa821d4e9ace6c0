import type { ErrorObject, ValidateFunction } from 'ajv';
import { compile } from './ajv.js';
import { CollectionInvalidError, RecordInvalidError } from '../errors.js';
import { LIMITS, type CollectionDefinition, type FieldDefinition } from './fields.js';


const UUID_PATTERN = '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$';

/** U+0000, or a UTF-16 surrogate without its pair: valid in JSON, but neither `text` nor `jsonb` can store it. */
const UNSTORABLE = /\u0000|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/**
 * How deeply request JSON may nest. Validation and serialization recurse, and a 1 MiB body of
 * brackets (5,000 levels, measured) overflowed the stack: an INTERNAL error for bad input.
 */
export const MAX_JSON_DEPTH = 64;

/** A value of a request that cannot be stored as it is, and where it is. */
export interface UnstorableValue {
  /** Where it is (`fields.title`): identifier-like keys only, at most three levels; '' for the value itself. */
  readonly path: string;
  /** What is wrong, without the value. */
  readonly problem: string;
}

/**
 * The first string or key PostgreSQL cannot store, number JSON cannot carry (1e400 parses as
 * Infinity and would be stored as null), or nesting deeper than `MAX_JSON_DEPTH` in a parsed
 * JSON value; undefined when there is none. Checked before any statement is sent, so such input
 * is a 400 rather than a store error (a 503 "retry later"), a crash, or a silent change.
 * Iterative, so a deeply nested value cannot overflow the stack here.
 */
export function findUnstorableValue(value: unknown): UnstorableValue | undefined {
  const stack: { value: unknown; path: string; depth: number }[] = [{ value, path: '', depth: 0 }];
  while (stack.length > 0) {
    const { value: v, path, depth } = stack.pop()!;
    if (typeof v === 'string') {
      if (UNSTORABLE.test(v)) return { path, problem: 'strings cannot contain U+0000 or an unpaired UTF-16 surrogate' };
    } else if (typeof v === 'number') {
      if (!Number.isFinite(v)) return { path, problem: 'numbers must be finite (within ±1.7976931348623157e308)' };
    } else if (typeof v === 'object' && v !== null) {
      if (depth >= MAX_JSON_DEPTH) return { path, problem: `JSON may nest at most ${MAX_JSON_DEPTH} levels deep` };
      for (const [key, child] of Object.entries(v)) {
        // Only identifier-like keys are echoed back: others could carry anything.
        const step = /^[A-Za-z0-9_]{1,63}$/.test(key) ? key : '(invalid name)';
        const childPath = depth >= 3 ? path : path === '' ? step : `${path}.${step}`;
        if (UNSTORABLE.test(key)) return { path: childPath, problem: 'keys cannot contain U+0000 or an unpaired UTF-16 surrogate' };
        stack.push({ value: child, path: childPath, depth: depth + 1 });
      }
    }
  }
  return undefined;
}

const fieldValidators = new WeakMap<FieldDefinition, ValidateFunction>();

/** A validator of one field's values, compiled once per field definition. */
export function fieldValidator(field: FieldDefinition): ValidateFunction {
  let fn = fieldValidators.get(field);
  if (!fn) {
    fn = compile(fieldSchema(field));
    fieldValidators.set(field, fn);
  }
  return fn;
}

/** The JSON Schema of one field's values. */
export function fieldSchema(field: FieldDefinition): Record<string, unknown> {
  switch (field.type) {
    case 'string':
      return { type: 'string', maxLength: field.maxLength ?? LIMITS.stringMaxLength };
    case 'text':
      return { type: 'string', maxLength: field.maxLength ?? LIMITS.textMaxLength };
    case 'integer':
      return { type: 'integer', minimum: Number.MIN_SAFE_INTEGER, maximum: Number.MAX_SAFE_INTEGER };
    case 'number':
      return { type: 'number' };
    case 'boolean':
      return { type: 'boolean' };
    case 'datetime':
      return { type: 'string', format: 'date-time', maxLength: 64 };
    case 'date':
      return { type: 'string', format: 'date' };
    case 'json':
      return {};
    case 'reference':
      return { type: 'string', pattern: UUID_PATTERN };
    case 'enum':
      return { type: 'string', enum: [...(field.values ?? [])] };
    case 'email':
      return { type: 'string', format: 'email', maxLength: 254 };
  }
}

/** A compiled collection version: validates and normalizes the `fields` of a record. */
export class RecordValidator {
  readonly #definition: CollectionDefinition;
  readonly #validate: ValidateFunction;

  constructor(definition: CollectionDefinition) {
    this.#definition = definition;
    const properties: Record<string, unknown> = {};
    const required: string[] = [];
    for (const [name, field] of Object.entries(definition.fields)) {
      properties[name] = fieldSchema(field);
      if (field.required) required.push(name);
    }
    // Compiled once per collection version (the caller caches validators by version).
    this.#validate = compile({ type: 'object', properties, required, additionalProperties: false });
    for (const [name, field] of Object.entries(definition.fields)) {
      if (field.default !== undefined && !fieldValidator(field)(field.default)) {
        throw new CollectionInvalidError(`fields.${name}.default does not match the field's type`, { field: name });
      }
    }
  }

  /**
   * Returns the normalized record: nulls dropped (a null clears a field), defaults applied when
   * `applyDefaults`, e-mails lower-cased, date-times converted to UTC ISO 8601 so they sort.
   */
  normalize(input: unknown, applyDefaults: boolean): Record<string, unknown> {
    if (typeof input !== 'object' || input === null || Array.isArray(input)) {
      throw new RecordInvalidError('fields must be a JSON object');
    }
    const out: Record<string, unknown> = {};
    for (const [name, value] of Object.entries(input)) {
      if (value !== null) out[name] = value;
    }
    if (applyDefaults) {
      for (const [name, field] of Object.entries(this.#definition.fields)) {
        if (out[name] === undefined && field.default !== undefined) out[name] = structuredClone(field.default);
      }
    }
    if (!this.#validate(out)) throw describe(this.#validate.errors?.[0]);
    for (const [name, field] of Object.entries(this.#definition.fields)) {
      const v = out[name];
      if (v === undefined) continue;
      if (field.type === 'email') out[name] = (v as string).toLowerCase();
      else if (field.type === 'datetime') {
        const ms = Date.parse(v as string);
        if (Number.isNaN(ms)) throw new RecordInvalidError(`fields.${name} must be a date-time`, { field: name });
        out[name] = new Date(ms).toISOString();
      }
    }
    return out;
  }
}

function describe(error: ErrorObject | undefined): RecordInvalidError {
  if (!error) return new RecordInvalidError('the record does not match its collection');
  if (error.keyword === 'additionalProperties') {
    const name = String((error.params as { additionalProperty?: unknown }).additionalProperty ?? '');
    const shown = /^[A-Za-z][A-Za-z0-9_]{0,62}$/.test(name) ? name : '(invalid name)';
    return new RecordInvalidError(`unknown field "${shown}"`, { field: shown });
  }
  if (error.keyword === 'required') {
    const name = String((error.params as { missingProperty?: unknown }).missingProperty ?? '');
    return new RecordInvalidError(`fields.${name} is required`, { field: name });
  }
  const name = error.instancePath.split('/')[1] ?? '';
  // Ajv's messages name the constraint ("must be string", "must match format \"email\""), never the value.
  return new RecordInvalidError(`fields.${name} ${error.message ?? 'is invalid'}`, { field: name });
}
