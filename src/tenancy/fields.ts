import { CollectionInvalidError } from '../errors.js';

/** Field types a tenant builder can declare. */
export const FIELD_TYPES = [
  'string', 'text', 'integer', 'number', 'boolean', 'datetime', 'date', 'json', 'reference', 'enum', 'email',
] as const;
/** A field type. */
export type FieldType = (typeof FIELD_TYPES)[number];

/** Data classifications, from least to most sensitive. */
export const CLASSIFICATIONS = ['public', 'internal', 'confidential', 'pii', 'phi', 'pci'] as const;
/** A data classification. */
export type Classification = (typeof CLASSIFICATIONS)[number];

/** A field as stored: every optional flag resolved. */
export interface FieldDefinition {
  readonly type: FieldType;
  readonly required: boolean;
  readonly unique: boolean;
  readonly indexed: boolean;
  readonly classification: Classification;
  /** True for the field that names the data subject a record is about. */
  readonly subject: boolean;
  /**
   * Stored encrypted with the tenant's data key (AES-256-GCM, docs/encryption.md), and found by
   * equality through a blind index. Resolved when the definition is made: from the field's
   * `encrypted` flag, else from its classification and the deployment's list of encrypted
   * classifications. Absent in definitions stored before encryption existed: not encrypted.
   */
  readonly encrypted?: boolean;
  readonly default?: unknown;
  /** Allowed values of an `enum` field. */
  readonly values?: readonly string[];
  /** Target collection of a `reference` field. */
  readonly collection?: string;
  /** Upper bound on the length of a `string` (default 1,000) or `text` (default 100,000) field. */
  readonly maxLength?: number;
  readonly description?: string;
}

/**
 * Which successful reads of a collection are audited (issue 5, item 8): `all` (the default), only
 * those that return a value of a field classified above internal (`classified`), or none (`off`).
 * Writes and refusals are audited whatever it says.
 */
export const READ_AUDIT_LEVELS = ['all', 'classified', 'off'] as const;
/** A read-audit level. */
export type ReadAuditLevel = (typeof READ_AUDIT_LEVELS)[number];

/** Classifications above internal: a read returning such a value is audited at the `classified` level. */
export const SENSITIVE_CLASSIFICATIONS: readonly Classification[] = Object.freeze(['confidential', 'pii', 'phi', 'pci']);

/** A collection definition as stored. */
export interface CollectionDefinition {
  readonly fields: Readonly<Record<string, FieldDefinition>>;
  readonly description?: string;
  /** Settled to `all` when a definition is parsed; absent only in definitions stored before it existed (read as `all`). */
  readonly readAudit?: ReadAuditLevel;
  /**
   * The classifications this collection encrypts, when the builder lists them: every one the
   * deployment encrypts, and possibly more (`parseCollectionDefinition` refuses fewer). Kept in
   * `CLASSIFICATIONS` order, so the same set is the same definition. Absent: the deployment's list
   * applied when the definition was made. Each field's resolved `encrypted` flag is what the record
   * path follows; this list is how it was decided.
   */
  readonly encryptedClassifications?: readonly Classification[];
}

/** Limits on definitions, so one tenant cannot make validation or indexing unbounded. */
export const LIMITS = Object.freeze({
  fieldsPerCollection: 200,
  enumValues: 500,
  descriptionLength: 1000,
  stringMaxLength: 1000,
  textMaxLength: 100_000,
});

/** Names of collections: lower-case identifiers (they appear in URLs and storage keys). */
export const COLLECTION_NAME = /^[a-z][a-z0-9_]{0,62}$/;
/** Names of fields: identifiers, so they are safe in filters, sorts and exports. */
export const FIELD_NAME = /^[A-Za-z][A-Za-z0-9_]{0,62}$/;

/** Types whose values are scalars that can be unique, indexed, sorted and filtered by comparison. */
const SCALAR_TYPES: ReadonlySet<FieldType> = new Set([
  'string', 'integer', 'number', 'boolean', 'datetime', 'date', 'reference', 'enum', 'email',
]);

/** True when values of this type can be unique or indexed. */
export function isKeyable(type: FieldType): boolean {
  return SCALAR_TYPES.has(type);
}

const DEFINITION_KEYS = new Set(['fields', 'description', 'readAudit', 'encryptedClassifications']);

const FIELD_KEYS = new Set([
  'type', 'required', 'unique', 'indexed', 'classification', 'subject', 'encrypted', 'default', 'values', 'collection', 'maxLength', 'description',
]);

/** Classifications encrypted unless the deployment says otherwise (SPEC section 4). */
export const DEFAULT_ENCRYPTED_CLASSIFICATIONS: readonly Classification[] = Object.freeze(['confidential', 'pii', 'phi', 'pci']);

/** Options of `parseCollectionDefinition`. */
export interface DefinitionOptions {
  /** The deployment's classifications, whose fields are always encrypted (default `DEFAULT_ENCRYPTED_CLASSIFICATIONS`). */
  readonly encryptedClassifications?: readonly Classification[];
  /**
   * Set where the deployment's list is not known (the CLI checking a schema file before it sends
   * it): a collection's own `encryptedClassifications` is then checked for its shape only, and the
   * server, which knows the deployment's list, checks that it leaves none of it out.
   */
  readonly deploymentUnknown?: boolean;
}

/**
 * The table a field's values are kept in for lookups: unique fields in `unique_values`, indexed
 * ones in `index_values`, and so are encrypted scalar fields (their blind index), so that equality
 * filters can find them without reading the data.
 */
export function keyTableOf(def: FieldDefinition): 'unique_values' | 'index_values' | null {
  if (!isKeyable(def.type)) return null;
  if (def.unique) return 'unique_values';
  return def.indexed || def.encrypted ? 'index_values' : null;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function fail(message: string, field?: string): never {
  throw new CollectionInvalidError(message, field === undefined ? undefined : { field });
}

function flag(raw: Record<string, unknown>, key: string, name: string): boolean {
  const v = raw[key];
  if (v === undefined) return false;
  if (typeof v !== 'boolean') fail(`fields.${name}.${key} must be a boolean`, name);
  return v;
}

/**
 * Checks a collection definition from a builder (API or schema-as-code) and resolves defaults.
 * Every message names the field at fault. `collection` is the collection's own name, so a
 * reference may point at it. A field is encrypted when its classification is in the collection's
 * own `encryptedClassifications` (when it has one) or else the deployment's list, or when the
 * builder sets `encrypted: true`; fail closed: a list that leaves out one the deployment encrypts,
 * and `encrypted: false` on a field a list covers, are refused.
 */
export function parseCollectionDefinition(input: unknown, options: DefinitionOptions = {}): CollectionDefinition {
  const deployment = options.encryptedClassifications ?? DEFAULT_ENCRYPTED_CLASSIFICATIONS;
  if (!isPlainObject(input)) fail('the collection definition must be a JSON object');
  for (const key of Object.keys(input)) {
    if (!DEFINITION_KEYS.has(key)) fail(`unknown property "${safeName(key)}" in the collection definition`);
  }
  const own = input.encryptedClassifications === undefined ? undefined : parseEncryptedClassifications(input.encryptedClassifications, deployment, options);
  const encryption: Encryption = { deployment, deploymentKnown: options.deploymentUnknown !== true, own };
  const readAudit = input.readAudit ?? 'all';
  if (typeof readAudit !== 'string' || !(READ_AUDIT_LEVELS as readonly string[]).includes(readAudit)) {
    fail(`readAudit must be one of ${READ_AUDIT_LEVELS.join(', ')}`);
  }
  const description = input.description;
  if (description !== undefined && (typeof description !== 'string' || description.length > LIMITS.descriptionLength)) {
    fail(`description must be a string of at most ${LIMITS.descriptionLength} characters`);
  }
  const rawFields = input.fields;
  if (!isPlainObject(rawFields)) fail('fields must be an object mapping field names to definitions');
  const names = Object.keys(rawFields);
  if (names.length === 0) fail('a collection needs at least one field');
  if (names.length > LIMITS.fieldsPerCollection) fail(`a collection has at most ${LIMITS.fieldsPerCollection} fields`);
  const fields: Record<string, FieldDefinition> = {};
  let subjects = 0;
  for (const name of names) {
    if (!FIELD_NAME.test(name)) fail(`field names must match ${FIELD_NAME.source}`, safeName(name));
    const field = parseField(name, rawFields[name], encryption);
    // Names the second subject field, so the builder sees which flag to drop.
    if (field.subject && ++subjects > 1) fail('at most one field may be marked as the data subject', name);
    fields[name] = field;
  }
  return Object.freeze({
    fields: Object.freeze(fields),
    ...(description === undefined ? {} : { description: description as string }),
    readAudit: readAudit as ReadAuditLevel,
    ...(own === undefined ? {} : { encryptedClassifications: own }),
  });
}

/** The lists that decide which fields are encrypted: the deployment's, and the collection's own when it has one. */
interface Encryption {
  readonly deployment: readonly Classification[];
  /** False when `deployment` is only the default, standing in for a list not known here. */
  readonly deploymentKnown: boolean;
  readonly own: readonly Classification[] | undefined;
}

/**
 * Checks a collection's own list of encrypted classifications. It may add classifications to the
 * deployment's list, never leave one out: the deployment's list is the operator's floor for every
 * tenant (SPEC section 4), so a builder cannot opt a classified field out of encryption.
 */
function parseEncryptedClassifications(raw: unknown, deployment: readonly Classification[], options: DefinitionOptions): readonly Classification[] {
  const known = CLASSIFICATIONS.join(', ');
  if (!Array.isArray(raw)) fail(`encryptedClassifications must be an array of distinct classifications among ${known}`);
  const seen = new Set<Classification>();
  for (const entry of raw as unknown[]) {
    if (typeof entry !== 'string') fail(`encryptedClassifications must hold only strings, each a classification among ${known}`);
    if (!(CLASSIFICATIONS as readonly string[]).includes(entry)) {
      fail(`encryptedClassifications: "${safeName(entry)}" is not a classification; use classifications among ${known}`);
    }
    if (seen.has(entry as Classification)) fail(`encryptedClassifications lists ${entry} more than once; list each classification once`);
    seen.add(entry as Classification);
  }
  if (options.deploymentUnknown !== true) {
    const missing = deployment.filter((c) => !seen.has(c));
    if (missing.length > 0) {
      fail(
        `encryptedClassifications leaves out ${missing.join(', ')}, which this deployment encrypts in every collection ` +
          `(BULKHEAD_ENCRYPTED_CLASSIFICATIONS: ${deployment.join(', ')}); a collection can encrypt more classifications, never fewer: ` +
          'add them to the list, or leave encryptedClassifications out to use the deployment\'s list',
      );
    }
  }
  return Object.freeze(CLASSIFICATIONS.filter((c) => seen.has(c)));
}

function parseField(name: string, raw: unknown, encryption: Encryption): FieldDefinition {
  if (!isPlainObject(raw)) fail(`fields.${name} must be an object with a type`, name);
  for (const key of Object.keys(raw)) {
    if (!FIELD_KEYS.has(key)) fail(`unknown property "${safeName(key)}" in fields.${name}`, name);
  }
  const type = raw.type;
  if (typeof type !== 'string' || !(FIELD_TYPES as readonly string[]).includes(type)) {
    fail(`fields.${name}.type must be one of ${FIELD_TYPES.join(', ')}`, name);
  }
  const t = type as FieldType;
  const classification = raw.classification ?? 'internal';
  if (typeof classification !== 'string' || !(CLASSIFICATIONS as readonly string[]).includes(classification)) {
    fail(`fields.${name}.classification must be one of ${CLASSIFICATIONS.join(', ')}`, name);
  }
  const field: {
    -readonly [K in keyof FieldDefinition]: FieldDefinition[K];
  } = {
    type: t,
    required: flag(raw, 'required', name),
    unique: flag(raw, 'unique', name),
    indexed: flag(raw, 'indexed', name),
    subject: flag(raw, 'subject', name),
    classification: classification as Classification,
  };
  const c = field.classification;
  // A collection's own list holds the deployment's (checked above), so when there is one it alone
  // decides; where the deployment's list is not known (the CLI) it is also the best knowledge there is.
  const required = encryption.own !== undefined ? encryption.own.includes(c) : encryption.deployment.includes(c);
  if (raw.encrypted !== undefined && typeof raw.encrypted !== 'boolean') fail(`fields.${name}.encrypted must be a boolean`, name);
  if (raw.encrypted === false && required) {
    // Name the list that requires it: the deployment's when it does (leaving the classification
    // out of the collection's list would not help), else the collection's own.
    const byDeployment = encryption.own === undefined || (encryption.deploymentKnown && encryption.deployment.includes(c));
    fail(
      byDeployment
        ? `fields.${name} is classified ${c}, and this deployment encrypts every ${c} field; leave encrypted out or set it to true`
        : `fields.${name} is classified ${c}, and the collection's encryptedClassifications lists ${c}, so every ${c} field is encrypted; ` +
            `leave encrypted out or set it to true, or leave ${c} out of encryptedClassifications`,
      name,
    );
  }
  field.encrypted = (raw.encrypted as boolean | undefined) ?? required;
  if ((field.unique || field.indexed) && !isKeyable(t)) fail(`fields.${name}: a ${t} field cannot be unique or indexed`, name);
  if (raw.description !== undefined) {
    if (typeof raw.description !== 'string' || raw.description.length > LIMITS.descriptionLength) {
      fail(`fields.${name}.description must be a string of at most ${LIMITS.descriptionLength} characters`, name);
    }
    field.description = raw.description;
  }
  if (t === 'enum') {
    const values = raw.values;
    if (!Array.isArray(values) || values.length === 0 || values.length > LIMITS.enumValues) {
      fail(`fields.${name}.values must list 1 to ${LIMITS.enumValues} strings`, name);
    }
    if (!values.every((v) => typeof v === 'string' && v.length > 0 && v.length <= 200) || new Set(values).size !== values.length) {
      fail(`fields.${name}.values must be distinct non-empty strings of at most 200 characters`, name);
    }
    field.values = Object.freeze([...(values as string[])]);
  } else if (raw.values !== undefined) {
    fail(`fields.${name}.values is only for enum fields`, name);
  }
  if (t === 'reference') {
    if (typeof raw.collection !== 'string' || !COLLECTION_NAME.test(raw.collection)) {
      fail(`fields.${name}.collection must name the referenced collection`, name);
    }
    field.collection = raw.collection;
  } else if (raw.collection !== undefined) {
    fail(`fields.${name}.collection is only for reference fields`, name);
  }
  if (raw.maxLength !== undefined) {
    const cap = t === 'text' ? LIMITS.textMaxLength : LIMITS.stringMaxLength;
    if (t !== 'string' && t !== 'text') fail(`fields.${name}.maxLength is only for string and text fields`, name);
    if (!Number.isInteger(raw.maxLength) || (raw.maxLength as number) < 1 || (raw.maxLength as number) > cap) {
      fail(`fields.${name}.maxLength must be an integer from 1 to ${cap}`, name);
    }
    field.maxLength = raw.maxLength as number;
  }
  if (raw.default !== undefined) {
    if (field.unique) fail(`fields.${name}: a unique field cannot have a default`, name);
    if (raw.default === null) fail(`fields.${name}.default cannot be null; leave it out instead`, name);
    field.default = raw.default;
  }
  return Object.freeze(field);
}

/** Echoes a caller-supplied key only when it is a short identifier; never reflects arbitrary input. */
function safeName(name: string): string {
  return /^[A-Za-z0-9_]{1,63}$/.test(name) ? name : '(invalid name)';
}
