import { Ajv, type ValidateFunction } from 'ajv';
import * as formats from 'ajv-formats';

type AddFormats = (ajv: Ajv, names: string[]) => Ajv;
// ajv-formats is CommonJS with `exports.default`; under NodeNext the plugin is the namespace's `default.default`.
const ns = formats as unknown as { default: AddFormats | { default: AddFormats } };
const addFormats: AddFormats = typeof ns.default === 'function' ? ns.default : ns.default.default;

/** One Ajv instance for record and filter validation: strict schemas, no coercion, formats checked. */
export const ajv = new Ajv({ allErrors: false, strict: true, coerceTypes: false, useDefaults: false, validateFormats: true });
addFormats(ajv, ['email', 'date', 'date-time']);

/**
 * Compiles a schema without leaving it in Ajv's cache, which is keyed by schema object and never
 * evicts: callers keep the function (one per collection version) and the schema can be collected.
 */
export function compile<T = unknown>(schema: Record<string, unknown>): ValidateFunction<T> {
  const fn = ajv.compile<T>(schema);
  ajv.removeSchema(schema);
  return fn;
}
