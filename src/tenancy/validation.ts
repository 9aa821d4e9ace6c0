import type { ErrorObject, ValidateFunction } from 'ajv';
import { compile } from './ajv.js';
import { CollectionInvalidError, RecordInvalidError } from '../errors.js';
import { LIMITS, type CollectionDefinition, type FieldDefinition } from './fields.js';


const UUID_PATTERN = '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$';

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
