/**
 * Schema as code: a YAML or JSON file that holds a tenant's collections, checked locally (with the
 * server's own definition parser) before anything is sent, and ordered so that every referenced
 * collection is defined before the collections that reference it.
 *
 *     collections:
 *       projects:
 *         fields:
 *           name: { type: string, required: true, unique: true }
 *       tasks:
 *         fields:
 *           project: { type: reference, collection: projects }
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { BulkheadError } from '../errors.js';
import { COLLECTION_NAME, parseCollectionDefinition, type CollectionDefinition } from '../tenancy/fields.js';
import { CliError, UsageError } from './client.js';

/** Largest schema file read, so a wrong `-f` (a log, a dump) fails fast instead of filling memory. */
const MAX_FILE_BYTES = 5 * 1024 * 1024;

/** One collection of a schema file: the definition as written (sent to the server) and as resolved (compared). */
export interface SchemaCollection {
  readonly name: string;
  readonly input: unknown;
  readonly definition: CollectionDefinition;
}

/** A parsed schema file: its collections in file order. */
export interface SchemaFile {
  readonly path: string;
  readonly collections: ReadonlyMap<string, SchemaCollection>;
}

function invalid(message: string): never {
  throw new CliError(message, { code: 'COLLECTION_INVALID' });
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Reads and checks a schema file. A file that cannot be read is a usage error (exit 2); one whose
 * content is not a valid schema is a COLLECTION_INVALID error naming the file and the collection.
 */
export function loadSchemaFile(path: string, cwd: string): SchemaFile {
  let text: string;
  try {
    const buffer = readFileSync(resolve(cwd, path));
    if (buffer.length > MAX_FILE_BYTES) throw new UsageError(`${path} is larger than ${MAX_FILE_BYTES / 1024 / 1024} MiB; is it a schema file?`);
    text = buffer.toString('utf8');
  } catch (error) {
    if (error instanceof CliError) throw error;
    throw new UsageError(`cannot read ${path} (${(error as { code?: string }).code ?? 'read error'}); -f names the YAML or JSON schema file`);
  }
  let doc: unknown;
  try {
    // JSON is YAML 1.2, so one parser reads both. Duplicate keys are an error, not a silent overwrite.
    doc = parseYaml(text, { uniqueKeys: true, maxAliasCount: 100 });
  } catch (error) {
    const first = String((error as Error).message).split('\n')[0] ?? 'syntax error';
    invalid(`${path}: not valid YAML or JSON: ${first}`);
  }
  if (!isPlainObject(doc) || !isPlainObject(doc.collections)) {
    invalid(`${path}: the file must hold a "collections" mapping of collection names to definitions`);
  }
  const extra = Object.keys(doc).find((k) => k !== 'collections');
  if (extra !== undefined) invalid(`${path}: unknown top-level key "${safe(extra)}"; the file holds only "collections"`);
  const collections = new Map<string, SchemaCollection>();
  for (const [name, input] of Object.entries(doc.collections)) {
    if (!COLLECTION_NAME.test(name)) invalid(`${path}: collection "${safe(name)}": names must match ${COLLECTION_NAME.source}`);
    try {
      // The deployment's encrypted classifications are the server's to know: a collection's own
      // list is checked here for its shape, and against the deployment's list by the server.
      collections.set(name, { name, input, definition: parseCollectionDefinition(input, { deploymentUnknown: true }) });
    } catch (error) {
      if (error instanceof BulkheadError) invalid(`${path}: collection ${name}: ${error.message}`);
      throw error;
    }
  }
  if (collections.size === 0) invalid(`${path}: "collections" is empty; define at least one collection`);
  return { path, collections };
}

/** The collections a definition references, other than itself (a self-reference needs no order). */
export function referencedCollections(name: string, definition: CollectionDefinition): string[] {
  const targets = Object.values(definition.fields).flatMap((f) => (f.type === 'reference' && f.collection && f.collection !== name ? [f.collection] : []));
  return [...new Set(targets)];
}

/**
 * The order to define the file's collections in: every collection after those of the file it
 * references, otherwise file order. A cycle cannot be applied (the server requires a referenced
 * collection to exist), so it is an error naming the cycle.
 */
export function applyOrder(schema: SchemaFile): string[] {
  const order: string[] = [];
  const state = new Map<string, 'visiting' | 'done'>();
  const visit = (name: string, path: readonly string[]): void => {
    const s = state.get(name);
    if (s === 'done') return;
    if (s === 'visiting') {
      const cycle = [...path.slice(path.indexOf(name)), name].join(' -> ');
      invalid(
        `${schema.path}: collections reference each other in a cycle (${cycle}); a referenced collection must exist first, ` +
          'so leave one reference out, apply, then add it and apply again',
      );
    }
    state.set(name, 'visiting');
    const c = schema.collections.get(name)!;
    for (const target of referencedCollections(name, c.definition)) {
      if (schema.collections.has(target)) visit(target, [...path, name]);
    }
    state.set(name, 'done');
    order.push(name);
  };
  for (const name of schema.collections.keys()) visit(name, []);
  return order;
}

/** What changes between the stored definition and the file's. */
export interface DefinitionChanges {
  readonly added: readonly string[];
  readonly removed: readonly string[];
  readonly changed: readonly string[];
  readonly description: boolean;
  /** The read-audit level changes (an absent level is `all`). */
  readonly readAudit: boolean;
  /** The collection's own list of encrypted classifications changes, or is set or dropped (absent is the deployment's list). */
  readonly encryptedClassifications: boolean;
}

/** Compares two definitions field by field, regardless of key order. */
export function diffDefinitions(before: CollectionDefinition | undefined, after: CollectionDefinition): DefinitionChanges {
  const old = before?.fields ?? {};
  const added = Object.keys(after.fields).filter((f) => !(f in old));
  const removed = before ? Object.keys(old).filter((f) => !(f in after.fields)) : [];
  const changed = Object.keys(after.fields).filter((f) => f in old && canonical(old[f]) !== canonical(after.fields[f]));
  const description = before !== undefined && (before.description ?? '') !== (after.description ?? '');
  const readAudit = before !== undefined && (before.readAudit ?? 'all') !== (after.readAudit ?? 'all');
  // Both sides keep the list in CLASSIFICATIONS order (the parser sorts it), so order is no change.
  const encryptedClassifications = before !== undefined && canonical(before.encryptedClassifications ?? null) !== canonical(after.encryptedClassifications ?? null);
  return { added, removed, changed, description, readAudit, encryptedClassifications };
}

/** True when a diff changes nothing. */
export function isUnchanged(changes: DefinitionChanges): boolean {
  return (
    changes.added.length === 0 &&
    changes.removed.length === 0 &&
    changes.changed.length === 0 &&
    !changes.description &&
    !changes.readAudit &&
    !changes.encryptedClassifications
  );
}

/** JSON with sorted keys and no undefined members, to compare definitions read from different places. */
function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value && typeof value === 'object') {
    return `{${Object.entries(value)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([k, v]) => `${JSON.stringify(k)}:${canonical(v)}`)
      .join(',')}}`;
  }
  return JSON.stringify(value);
}

/** Echoes a name from the file only when it is a short identifier. */
function safe(name: string): string {
  return /^[A-Za-z0-9_-]{1,63}$/.test(name) ? name : '(invalid name)';
}
