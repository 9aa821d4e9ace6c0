import { BulkheadError, DatabaseError, NotFoundError } from '../errors.js';
import type { Statement, StatementResult } from '../store/engine.js';
import type { TenantScopes } from '../placement/placements.js';
import { COLLECTION_NAME, keyTableOf, parseCollectionDefinition, type Classification, type CollectionDefinition, type FieldDefinition, type ReadAuditLevel } from './fields.js';
import { RecordValidator } from './validation.js';

/** A collection version, compiled: what the record path needs. */
export interface CompiledCollection {
  readonly tenantId: string;
  readonly name: string;
  readonly version: number;
  readonly definition: CollectionDefinition;
  readonly validator: RecordValidator;
  readonly createdAt: Date;
  readonly updatedAt: Date;
}

/** A collection as the API shows it. */
export interface CollectionView {
  readonly name: string;
  readonly version: number;
  readonly fields: CollectionDefinition['fields'];
  readonly description?: string;
  /** Which successful reads are audited: `all`, `classified` or `off` (docs/audit.md, "Read auditing"). */
  readonly readAudit: ReadAuditLevel;
  /**
   * The classifications the collection encrypts, when its definition lists them (absent: the
   * deployment's list, as it was when the version was made). Each field's `encrypted` says what
   * was settled for it.
   */
  readonly encryptedClassifications?: readonly Classification[];
  readonly createdAt: string;
  readonly updatedAt: string;
}

/** Options of the definition cache. */
export interface CollectionsOptions {
  /** How long a definition read from storage is trusted before it is read again (other processes may change it). */
  readonly cacheTtlMs?: number;
  /** At most this many compiled definitions are kept. */
  readonly cacheSize?: number;
  /** Classifications whose fields are always encrypted (see `parseCollectionDefinition`). */
  readonly encryptedClassifications?: readonly Classification[];
}

interface CacheEntry {
  readonly value: CompiledCollection;
  readonly loadedAt: number;
}

/** Checks a collection name from a path or a schema file. */
export function checkCollectionName(name: string): string {
  if (!COLLECTION_NAME.test(name)) {
    throw new BulkheadError('COLLECTION_INVALID', `collection names must match ${COLLECTION_NAME.source}`);
  }
  return name;
}

/**
 * Tenant-defined collections: definitions are data (versioned rows), never DDL, following the
 * metadata-driven design of Salesforce's universal data dictionary.
 */
export class Collections {
  readonly #store: TenantScopes;
  readonly #ttl: number;
  readonly #size: number;
  readonly #cache = new Map<string, CacheEntry>();
  readonly #refreshing = new Set<string>();
  readonly #encrypted: readonly Classification[] | undefined;

  constructor(store: TenantScopes, options: CollectionsOptions = {}) {
    this.#store = store;
    this.#encrypted = options.encryptedClassifications;
    this.#ttl = options.cacheTtlMs ?? 30_000;
    this.#size = options.cacheSize ?? 10_000;
  }

  /**
   * Creates or changes a collection. An identical definition changes nothing (`created: false`,
   * same version). A change that existing records would violate is refused.
   */
  async define(tenantId: string, name: string, input: unknown, actor: string): Promise<{ collection: CollectionView; created: boolean; changed: boolean }> {
    checkCollectionName(name);
    const definition = parseCollectionDefinition(input, this.#encrypted ? { encryptedClassifications: this.#encrypted } : {});
    const validator = new RecordValidator(definition);
    const targets = [...new Set(Object.values(definition.fields).flatMap((f) => (f.collection && f.collection !== name ? [f.collection] : [])))];

    const result = await this.#store.tenant(tenantId, { write: true }).transaction(async (tx) => {
      const [current, found] = await tx.batch([
        {
          name: 'bh_collection_lock',
          text: 'SELECT version, definition, created_at, updated_at FROM collections WHERE tenant_id = $1 AND name = $2 FOR UPDATE',
          values: [tenantId, name],
        },
        {
          text: 'SELECT name FROM collections WHERE tenant_id = $1 AND name IN (SELECT jsonb_array_elements_text($2::text::jsonb))',
          values: [tenantId, JSON.stringify(targets)],
        },
      ]);
      const known = new Set(found!.rows.map((r) => r.name as string));
      const missing = targets.filter((t) => !known.has(t));
      if (missing.length > 0) {
        const field = Object.keys(definition.fields).find((f) => definition.fields[f]!.collection === missing[0]);
        throw new BulkheadError('COLLECTION_INVALID', `a reference field names a collection that does not exist: ${missing.join(', ')}`, {
          details: { field },
        });
      }
      const row = current!.rows[0];
      const previous = row ? (row.definition as CollectionDefinition) : undefined;
      if (previous && canonical(previous) === canonical(definition)) {
        return { version: row!.version as number, createdAt: row!.created_at as Date, updatedAt: row!.updated_at as Date, created: false, changed: false };
      }
      const version = previous ? (row!.version as number) + 1 : 1;
      if (previous) await this.#checkCompatible(tx.batch, tenantId, name, previous, definition);
      const json = JSON.stringify(definition);
      const statements: Statement[] = [
        previous
          ? {
              text: 'UPDATE collections SET version = $3, definition = $4::text::jsonb, updated_at = now() WHERE tenant_id = $1 AND name = $2 RETURNING created_at, updated_at',
              values: [tenantId, name, version, json],
            }
          : {
              text: 'INSERT INTO collections (tenant_id, name, version, definition) VALUES ($1, $2, $3, $4::text::jsonb) RETURNING created_at, updated_at',
              values: [tenantId, name, version, json],
            },
        {
          text: 'INSERT INTO collection_versions (tenant_id, name, version, definition, created_by) VALUES ($1, $2, $3, $4::text::jsonb, $5)',
          values: [tenantId, name, version, json, actor],
        },
      ];
      const keyChanges = previous ? keyStatements(tenantId, name, previous, definition) : [];
      statements.push(...keyChanges.map((k) => k.statement));
      let results: StatementResult[];
      try {
        results = await tx.batch(statements);
      } catch (error) {
        if (error instanceof DatabaseError && error.kind === 'unique' && error.statementIndex !== undefined) {
          const change = keyChanges[error.statementIndex - 2];
          if (change) {
            throw new BulkheadError('RECORD_UNIQUE_VIOLATION', `existing records share values of fields.${change.field}; it cannot become unique`, {
              details: { field: change.field },
            });
          }
        }
        throw error;
      }
      const r = results[0]!.rows[0]!;
      return { version, createdAt: r.created_at as Date, updatedAt: r.updated_at as Date, created: !previous, changed: true };
    });
    const compiled: CompiledCollection = {
      tenantId,
      name,
      version: result.version,
      definition,
      validator,
      createdAt: result.createdAt,
      updatedAt: result.updatedAt,
    };
    this.#remember(compiled);
    return { collection: view(compiled), created: result.created, changed: result.changed };
  }

  /** The current version of a collection, compiled; `fresh` bypasses the cache. */
  async get(tenantId: string, name: string, fresh = false): Promise<CompiledCollection> {
    checkCollectionName(name);
    const key = `${tenantId}/${name}`;
    const hit = this.#cache.get(key);
    if (hit && !fresh) {
      const age = Date.now() - hit.loadedAt;
      if (age < this.#ttl) return hit.value;
      // Past the TTL a definition is still served while it is re-read in the background (up to 12
      // TTLs, then the reader waits): writes re-check the version in the database anyway, and a
      // list that names a field this copy lacks re-reads it (see Records.list).
      if (age < this.#ttl * 12) {
        if (!this.#refreshing.has(key)) {
          this.#refreshing.add(key);
          this.get(tenantId, name, true)
            .catch(() => {})
            .finally(() => this.#refreshing.delete(key));
        }
        return hit.value;
      }
    }
    const [r] = await this.#store.tenant(tenantId).batch([
      {
        name: 'bh_collection_get',
        text: 'SELECT version, definition, created_at, updated_at FROM collections WHERE tenant_id = $1 AND name = $2',
        values: [tenantId, name],
      },
    ]);
    const row = r!.rows[0];
    if (!row) {
      this.#cache.delete(key);
      throw new NotFoundError('COLLECTION_NOT_FOUND', 'no such collection in this tenant');
    }
    if (hit && hit.value.version === row.version) {
      this.#cache.delete(key);
      this.#cache.set(key, { value: hit.value, loadedAt: Date.now() });
      return hit.value;
    }
    const definition = Object.freeze(row.definition as CollectionDefinition);
    const compiled: CompiledCollection = {
      tenantId,
      name,
      version: row.version as number,
      definition,
      validator: new RecordValidator(definition),
      createdAt: row.created_at as Date,
      updatedAt: row.updated_at as Date,
    };
    this.#remember(compiled);
    return compiled;
  }

  /** Every collection of the tenant, by name. */
  async list(tenantId: string): Promise<CollectionView[]> {
    const [r] = await this.#store.tenant(tenantId).batch([
      {
        name: 'bh_collection_list',
        text: 'SELECT name, version, definition, created_at, updated_at FROM collections WHERE tenant_id = $1 ORDER BY name',
        values: [tenantId],
      },
    ]);
    return r!.rows.map((row) =>
      view({
        name: row.name as string,
        version: row.version as number,
        definition: row.definition as CollectionDefinition,
        createdAt: row.created_at as Date,
        updatedAt: row.updated_at as Date,
      }),
    );
  }

  /** The API view of a compiled collection. */
  view(c: CompiledCollection): CollectionView {
    return view(c);
  }

  #remember(c: CompiledCollection): void {
    const key = `${c.tenantId}/${c.name}`;
    this.#cache.delete(key);
    this.#cache.set(key, { value: c, loadedAt: Date.now() });
    if (this.#cache.size > this.#size) this.#cache.delete(this.#cache.keys().next().value!);
  }

  /** Refuses changes that records already stored would violate. */
  async #checkCompatible(
    batch: (s: readonly Statement[]) => Promise<StatementResult[]>,
    tenantId: string,
    name: string,
    before: CollectionDefinition,
    after: CollectionDefinition,
  ): Promise<void> {
    const checks: { field: string; reason: string; statement: Statement }[] = [];
    const base = 'SELECT EXISTS (SELECT 1 FROM records WHERE tenant_id = $1 AND collection = $2 AND ';
    for (const [field, old] of Object.entries(before.fields)) {
      const next = after.fields[field];
      if (!next || next.type !== old.type) {
        checks.push({
          field,
          reason: next ? `its type cannot change from ${old.type} to ${next.type} while records hold it` : 'it cannot be removed while records hold it',
          statement: { text: `${base}data ? $3::text) AS hit`, values: [tenantId, name, field] },
        });
      } else if (next.type === 'enum') {
        const removed = (old.values ?? []).filter((v) => !(next.values ?? []).includes(v));
        if (removed.length > 0) {
          checks.push({
            field,
            reason: 'records use enum values the new definition removes',
            statement: { text: `${base}data ->> $3::text IN (SELECT jsonb_array_elements_text($4::text::jsonb))) AS hit`, values: [tenantId, name, field, JSON.stringify(removed)] },
          });
        }
      } else if ((next.type === 'string' || next.type === 'text') && (next.maxLength ?? Infinity) < (old.maxLength ?? Infinity)) {
        checks.push({
          field,
          reason: 'records hold values longer than the new maxLength',
          statement: { text: `${base}length(data ->> $3::text) > $4) AS hit`, values: [tenantId, name, field, next.maxLength] },
        });
      } else if (Boolean(next.encrypted) !== Boolean(old.encrypted) || (next.encrypted && keyTableOf(next) !== keyTableOf(old))) {
        // Existing values would have to be re-encrypted (or decrypted, or re-indexed from their
        // plaintext); a field's encryption is settled once records hold it.
        checks.push({
          field,
          reason: encryptionChangeReason(before, after, old, next),
          statement: { text: `${base}data ? $3::text) AS hit`, values: [tenantId, name, field] },
        });
      } else if (next.type === 'reference' && next.collection !== old.collection) {
        checks.push({
          field,
          reason: 'the target collection of a reference cannot change while records hold it',
          statement: { text: `${base}data ? $3::text) AS hit`, values: [tenantId, name, field] },
        });
      }
    }
    for (const [field, next] of Object.entries(after.fields)) {
      if (next.required && !before.fields[field]?.required) {
        checks.push({
          field,
          reason: 'some records lack it, so it cannot become required',
          statement: { text: `${base}NOT (data ? $3::text)) AS hit`, values: [tenantId, name, field] },
        });
      }
    }
    if (checks.length === 0) return;
    const results = await batch(checks.map((c) => c.statement));
    const failed = checks.find((_, i) => results[i]!.rows[0]!.hit === true);
    if (failed) {
      throw new BulkheadError('COLLECTION_INVALID', `fields.${failed.field}: ${failed.reason}`, { details: { field: failed.field } });
    }
  }
}

/**
 * Why a field's encryption cannot change, naming the collection's `encryptedClassifications` when
 * a change of that list is what flips it, since the builder may not have touched the field itself.
 */
function encryptionChangeReason(before: CollectionDefinition, after: CollectionDefinition, old: FieldDefinition, next: FieldDefinition): string {
  const general = 'whether it is encrypted, and for an encrypted field whether it is unique, cannot change while records hold it';
  const c = next.classification;
  const listed = (d: CollectionDefinition) => d.encryptedClassifications?.includes(c) === true;
  if (Boolean(next.encrypted) === Boolean(old.encrypted) || old.classification !== c || listed(before) === listed(after)) return general;
  return next.encrypted
    ? `encryptedClassifications now lists ${c}, which would encrypt this ${c} field, but ${general} (its stored values are in clear); ` +
        `leave ${c} out of encryptedClassifications, or keep these values in a new field`
    : `encryptedClassifications no longer lists ${c}, which would stop encrypting this ${c} field, but ${general}; ` +
        `keep ${c} in encryptedClassifications, or set encrypted: true on the field`;
}

function keyStatements(
  tenantId: string,
  name: string,
  before: CollectionDefinition,
  after: CollectionDefinition,
): { field: string; statement: Statement }[] {
  const out: { field: string; statement: Statement }[] = [];
  for (const table of ['unique_values', 'index_values'] as const) {
    const has = (f: FieldDefinition | undefined) => f !== undefined && keyTableOf(f) === table;
    for (const field of new Set([...Object.keys(before.fields), ...Object.keys(after.fields)])) {
      const was = has(before.fields[field]);
      const is = has(after.fields[field]);
      if (was && !is) {
        out.push({
          field,
          statement: { text: `DELETE FROM ${table} WHERE tenant_id = $1 AND collection = $2 AND field = $3`, values: [tenantId, name, field] },
        });
      } else if (!was && is) {
        out.push({
          field,
          statement: {
            text:
              `INSERT INTO ${table} (tenant_id, collection, field, key, record_id) ` +
              'SELECT tenant_id, collection, $3, bulkhead.value_key(data -> $3::text), id FROM records ' +
              'WHERE tenant_id = $1 AND collection = $2 AND data ? $3::text',
            values: [tenantId, name, field],
          },
        });
      }
    }
  }
  return out;
}

function view(c: Pick<CompiledCollection, 'name' | 'version' | 'definition' | 'createdAt' | 'updatedAt'>): CollectionView {
  return {
    name: c.name,
    version: c.version,
    fields: c.definition.fields,
    ...(c.definition.description ? { description: c.definition.description } : {}),
    readAudit: c.definition.readAudit ?? 'all',
    ...(c.definition.encryptedClassifications ? { encryptedClassifications: c.definition.encryptedClassifications } : {}),
    createdAt: c.createdAt.toISOString(),
    updatedAt: c.updatedAt.toISOString(),
  };
}

/** JSON with sorted keys, to compare definitions regardless of key order. */
function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value && typeof value === 'object') {
    return `{${Object.keys(value)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical((value as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(value);
}
