import type { KeyObject } from 'node:crypto';
import { blindIndex } from '../crypto/blind-index.js';
import type { JsonValue } from '../crypto/encoding.js';
import { decryptField, encryptField, isCiphertext, keyVersionOf } from '../crypto/field-cipher.js';
import { BulkheadError, DatabaseError, DecryptionFailedError, NotFoundError, RecordInvalidError } from '../errors.js';
import { isUuid, uuidv7 } from '../ids.js';
import type { AuditEvent } from '../audit/event.js';
import type { EngineTransaction, Statement, StatementResult } from '../store/engine.js';
import type { TenantScopes } from '../placement/placements.js';
import type { Collections, CompiledCollection } from './collections.js';
import { keyTableOf } from './fields.js';
import { compileList, type ListRequest } from './query.js';

/**
 * The tenant keys the record path needs (`TenantKeyring` in production, docs/encryption.md): the
 * current data key for new ciphertexts, any version of it for reading, and the blind-index key.
 */
export interface RecordKeys {
  forEncrypt(tenantId: string, count: number): Promise<{ readonly version: number; readonly key: KeyObject }>;
  forDecrypt(tenantId: string, version: number): Promise<KeyObject>;
  indexKey(tenantId: string): Promise<KeyObject>;
  /** The data key of `version` if held in memory, without I/O; used inside transactions. */
  peekDecrypt?(tenantId: string, version: number): KeyObject | undefined;
}

/** A data key taken for `count` encryptions before a transaction (which must not wait on the key store). */
type Lease = { readonly version: number; readonly key: KeyObject };

/**
 * Thrown inside a transaction that met a ciphertext whose key it was not given: the transaction
 * rolls back, the caller loads the keys outside it and runs it again.
 */
export class KeysNeeded extends Error {
  readonly versions: readonly number[];
  constructor(versions: readonly number[]) {
    super('data keys are needed that were not loaded before the transaction');
    this.versions = versions;
  }
}

/** Attempts of a transaction that needed keys it was not given (each attempt loads what the last one met). */
const KEY_ATTEMPTS = 3;


/** Scope options of a batch that changes data: refused while a move switches the tenant over. */
const WRITE = { write: true } as const;
/** A record as the API shows it (the shape of Airtable's API). */
export interface RecordView {
  readonly id: string;
  readonly fields: Record<string, unknown>;
  readonly createdAt: string;
  readonly updatedAt: string;
  readonly version: number;
}

/** One page of a list. */
export interface RecordPage {
  readonly records: RecordView[];
  readonly nextCursor: string | null;
  /** The query's shape without values, for audit and logs. */
  readonly fingerprint: string;
}

/** Who is writing (kept with each record version). */
export interface Actor {
  readonly tenantId: string;
  readonly subject: string;
}

/**
 * The audit trail's side of a write: `event(recordId)` builds the write's audit event, which
 * `log.appendInTransaction` appends in the write's own transaction (docs/audit.md, "Writing").
 */
export interface WriteAudit {
  readonly log: { appendInTransaction(tx: EngineTransaction, tenantId: string, events: readonly AuditEvent[]): Promise<void> };
  readonly event: (recordId: string) => AuditEvent;
}

/** Where record reads and writes are counted (`Usage` in production). */
export interface UsageMeter {
  recordRead(tenantId: string, rows: number): void;
  recordWrite(tenantId: string, rows: number): void;
}

/** A statement and what its failure means. */
interface Step {
  readonly statement: Statement;
  readonly field?: string;
  readonly on?: 'reference' | 'unique' | 'version';
}

const RETURNING = 'RETURNING id, data, version, created_at, updated_at';

/**
 * Records of tenant-defined collections on the pool tier. Every statement names its tenant
 * (`tenant_id = $1` leads every predicate, for partition pruning) and runs under RLS as well.
 * A write is one transaction: the record, its unique and indexed values, and the checks of its
 * references, sent in one round trip where the engine can.
 */
export class Records {
  readonly #store: TenantScopes;
  readonly #collections: Collections;
  readonly #usage: UsageMeter;
  readonly #keys: RecordKeys | undefined;

  /**
   * `usage` counts every successful read and write, whoever calls (HTTP, CLI, library). `keys`
   * serves encrypted fields; without it, a collection with one refuses reads and writes.
   */
  constructor(store: TenantScopes, collections: Collections, usage: UsageMeter, keys?: RecordKeys) {
    this.#store = store;
    this.#collections = collections;
    this.#usage = usage;
    this.#keys = keys;
  }

  /** Creates a record; defaults applied, values validated and normalized. */
  async create(actor: Actor, collection: string, fields: unknown, audit?: WriteAudit): Promise<RecordView> {
    return this.#withCurrentDefinition(actor.tenantId, collection, 'RECORD_INVALID', async (c) => {
      const data = c.validator.normalize(fields, true);
      const id = uuidv7();
      const names = Object.keys(data);
      const stored = await this.#seal(c, id, data, names, {});
      const insert: Step = {
        statement: {
          name: 'bh_record_insert',
          text:
            'INSERT INTO records (tenant_id, collection, id, data, schema_version, created_by, updated_by) ' +
            `VALUES ($1, $2, $3, $4::text::jsonb, $5, $6, $6) ${RETURNING}`,
          values: [c.tenantId, c.name, id, JSON.stringify(stored), c.version, actor.subject],
        },
      };
      const steps: Step[] = [versionStep(c), ...referenceSteps(c, data), insert, ...keySteps(c, id, data, names, false, await this.#blinds(c, data, names))];
      const results = await this.#run(actor.tenantId, steps, audit && ((tx) => audit.log.appendInTransaction(tx, actor.tenantId, [audit.event(id)])));
      this.#usage.recordWrite(actor.tenantId, 1);
      return withPlaintext(toView(results[steps.indexOf(insert)]!.rows[0]!), c, data);
    });
  }

  /** One record, or RECORD_NOT_FOUND (also when it belongs to another tenant: no existence leak). */
  async get(tenantId: string, collection: string, id: string): Promise<RecordView> {
    const c = await this.#collections.get(tenantId, collection);
    if (!isUuid(id)) throw new NotFoundError('RECORD_NOT_FOUND', 'no such record in this collection');
    const [r] = await this.#store.tenant(tenantId).batch([
      {
        name: 'bh_record_get',
        text: 'SELECT id, data, version, created_at, updated_at FROM records WHERE tenant_id = $1 AND collection = $2 AND id = $3',
        values: [tenantId, c.name, id],
      },
    ]);
    const row = r!.rows[0];
    if (!row) throw new NotFoundError('RECORD_NOT_FOUND', 'no such record in this collection');
    const [view] = await this.#open(c, [toView(row)]);
    this.#usage.recordRead(tenantId, 1);
    return view!;
  }

  /** A page of records matching the filter, in sort order, with a cursor for the next page. */
  async list(tenantId: string, collection: string, request: ListRequest): Promise<RecordPage> {
    return this.#withCurrentDefinition(tenantId, collection, 'QUERY_INVALID', async (c) => {
      const q = compileList(tenantId, c.name, c.definition, request, await this.#compileOptions(c, request));
      const [r] = await this.#store.tenant(tenantId).batch([q.statement]);
      const rows = r!.rows;
      const more = rows.length > q.limit;
      const page = more ? rows.slice(0, q.limit) : rows;
      const records = await this.#open(c, page.map(toView));
      this.#usage.recordRead(tenantId, page.length);
      const last = page[page.length - 1];
      return {
        records,
        nextCursor: more && last ? q.cursorAfter({ id: last.id as string, data: last.data as Record<string, unknown> }) : null,
        fingerprint: q.fingerprint,
      };
    });
  }

  /** Changes some fields (a null clears one); the merged record is validated as a whole. */
  async update(actor: Actor, collection: string, id: string, patch: unknown, audit?: WriteAudit): Promise<RecordView> {
    if (!isUuid(id)) throw new NotFoundError('RECORD_NOT_FOUND', 'no such record in this collection');
    if (typeof patch !== 'object' || patch === null || Array.isArray(patch)) throw new RecordInvalidError('fields must be a JSON object');
    return this.#withCurrentDefinition(actor.tenantId, collection, 'RECORD_INVALID', async (c) => {
      // Everything the transaction needs from the key store is fetched before it starts: a lease on
      // the data key for at most the encrypted fields the patch names, the blind-index key, and
      // the data keys of the stored ciphertexts as far as they are known (more on a retry).
      const keys = await this.#keysFor(c, patch as Record<string, unknown>);
      for (let attempt = 1; ; attempt++) {
        try {
          return await this.#updateOnce(actor, c, id, patch as Record<string, unknown>, keys, audit);
        } catch (error) {
          if (!(error instanceof KeysNeeded) || attempt >= KEY_ATTEMPTS) throw error;
          for (const v of error.versions) keys.decrypt.set(v, await this.#keyring().forDecrypt(c.tenantId, v));
        }
      }
    });
  }

  /** The keys an update of `patch` may need, fetched before its transaction. */
  async #keysFor(c: CompiledCollection, patch: Record<string, unknown>): Promise<TxKeys> {
    const fields = encryptedFields(c);
    const keys: TxKeys = { decrypt: new Map(), lease: undefined, leased: 0, index: undefined };
    if (fields.length === 0) return keys;
    const fresh = fields.filter((f) => patch[f] !== undefined && patch[f] !== null);
    if (fresh.length > 0) {
      keys.lease = await this.#keyring().forEncrypt(c.tenantId, fresh.length);
      keys.leased = fresh.length;
    }
    if (fresh.some((f) => keyTableOf(c.definition.fields[f]!))) keys.index = await this.#keyring().indexKey(c.tenantId);
    return keys;
  }

  /** One attempt of an update: one transaction that reaches no key store (it throws `KeysNeeded` instead). */
  async #updateOnce(actor: Actor, c: CompiledCollection, id: string, patch: Record<string, unknown>, keys: TxKeys, audit: WriteAudit | undefined): Promise<RecordView> {
    return this.#store.tenant(actor.tenantId, WRITE).transaction(async (tx) => {
      const [, current] = await tx.batch([
        versionStep(c).statement,
        {
          name: 'bh_record_lock',
          text: 'SELECT id, data, version, created_at, updated_at FROM records WHERE tenant_id = $1 AND collection = $2 AND id = $3 FOR UPDATE',
          values: [c.tenantId, c.name, id],
        },
      ]).catch((e: unknown) => {
        throw classify(e, [versionStep(c)]);
      });
      const row = current!.rows[0];
      if (!row) throw new NotFoundError('RECORD_NOT_FOUND', 'no such record in this collection');
      const storedBefore = row.data as Record<string, unknown>;
      const before = this.#openWith(c, [toView(row)], keys.decrypt)[0]!.fields;
      const merged: Record<string, unknown> = { ...before, ...patch };
      const data = c.validator.normalize(merged, false);
      const changed = [...new Set([...Object.keys(before), ...Object.keys(data)])].filter(
        (k) => JSON.stringify(before[k]) !== JSON.stringify(data[k]),
      );
      // Unchanged encrypted fields keep their ciphertext; changed ones get a new one.
      const stored = sealWith(c, id, data, changed, storedBefore, keys.lease, keys.leased);
      const steps: Step[] = [
        ...referenceSteps(c, pick(data, changed)),
        {
          statement: {
            name: 'bh_record_update',
            text:
              'UPDATE records SET data = $4::text::jsonb, version = version + 1, schema_version = $5, updated_at = now(), updated_by = $6 ' +
              `WHERE tenant_id = $1 AND collection = $2 AND id = $3 ${RETURNING}`,
            values: [c.tenantId, c.name, id, JSON.stringify(stored), c.version, actor.subject],
          },
        },
        ...keySteps(c, id, data, changed, true, blindsWith(c, data, changed, keys.index)),
      ];
      const updateIndex = steps.findIndex((s) => s.statement.name === 'bh_record_update');
      let results: StatementResult[];
      try {
        results = await tx.batch(steps.map((s) => s.statement));
      } catch (error) {
        throw classify(error, steps);
      }
      if (audit) await audit.log.appendInTransaction(tx, actor.tenantId, [audit.event(id)]);
      this.#usage.recordWrite(actor.tenantId, 1);
      return withPlaintext(toView(results[updateIndex]!.rows[0]!), c, data);
    });
  }

  /** Deletes a record (its unique and indexed values go with it, by cascade). */
  async delete(tenantId: string, collection: string, id: string, audit?: WriteAudit): Promise<void> {
    const c = await this.#collections.get(tenantId, collection);
    if (!isUuid(id)) throw new NotFoundError('RECORD_NOT_FOUND', 'no such record in this collection');
    const remove: Statement = {
      name: 'bh_record_delete',
      text: 'DELETE FROM records WHERE tenant_id = $1 AND collection = $2 AND id = $3',
      values: [tenantId, c.name, id],
    };
    const scope = this.#store.tenant(tenantId, WRITE);
    const deleted = audit
      ? await scope.transaction(async (tx) => {
          const [r] = await tx.batch([remove]);
          // Nothing deleted is a failed request, audited as such by the caller, not a write.
          if (r!.rowCount === 0) return 0;
          await audit.log.appendInTransaction(tx, tenantId, [audit.event(id)]);
          return r!.rowCount ?? 0;
        })
      : ((await scope.batch([remove]))[0]!.rowCount ?? 0);
    if (deleted === 0) throw new NotFoundError('RECORD_NOT_FOUND', 'no such record in this collection');
    this.#usage.recordWrite(tenantId, 1);
  }

  /** The record as stored, for a new record: see `sealWith`; the data key is leased here. */
  async #seal(c: CompiledCollection, id: string, data: Record<string, unknown>, names: readonly string[], stored: Record<string, unknown>): Promise<Record<string, unknown>> {
    const count = encryptedFields(c).filter((f) => data[f] !== undefined && names.includes(f)).length;
    const lease = count > 0 ? await this.#keyring().forEncrypt(c.tenantId, count) : undefined;
    return sealWith(c, id, data, names, stored, lease, count);
  }

  /** The blind indexes of the encrypted fields among `names` that have a value table (see `keyTableOf`). */
  async #blinds(c: CompiledCollection, data: Record<string, unknown>, names: readonly string[]): Promise<ReadonlyMap<string, string>> {
    const keyed = names.some((f) => c.definition.fields[f]?.encrypted && keyTableOf(c.definition.fields[f]!) && data[f] !== undefined);
    return keyed ? blindsWith(c, data, names, await this.#keyring().indexKey(c.tenantId)) : new Map();
  }

  /** What the query compiler needs for a filter on an encrypted field: the tenant's blind index. */
  async #compileOptions(c: CompiledCollection, request: ListRequest): Promise<{ blind?: (field: string, value: unknown) => string }> {
    if (encryptedFields(c).length === 0 || !request.filter) return {};
    const indexKey = await this.#keyring().indexKey(c.tenantId);
    return { blind: (field, value) => blindIndex(indexKey, { collection: c.name, field }, value as JsonValue) };
  }

  /**
   * Decrypts the encrypted fields of records read from storage. Anything there that is not a
   * ciphertext this tenant's keys open for this record and field fails the whole read with the
   * uniform CRYPTO_DECRYPT_FAILED: nothing partial, no plaintext of any kind. The keys are looked
   * up once per version, from memory when the keyring holds them (no promise per field).
   */
  async #open(c: CompiledCollection, views: RecordView[]): Promise<RecordView[]> {
    const fields = encryptedFields(c);
    if (fields.length === 0 || views.length === 0) return views;
    const keys = new Map<number, KeyObject>();
    const ring = this.#keyring();
    for (const view of views) {
      for (const field of fields) {
        const value = view.fields[field];
        if (value === undefined) continue;
        if (!isCiphertext(value)) throw new DecryptionFailedError();
        const version = keyVersionOf(value);
        if (!keys.has(version)) keys.set(version, ring.peekDecrypt?.(c.tenantId, version) ?? (await ring.forDecrypt(c.tenantId, version)));
      }
    }
    return this.#openWith(c, views, keys);
  }

  /**
   * `#open` with the keys given, without I/O (inside a transaction): a ciphertext under a version
   * neither given nor held in memory throws `KeysNeeded`, for the caller to load it and run again.
   */
  #openWith(c: CompiledCollection, views: RecordView[], keys: Map<number, KeyObject>): RecordView[] {
    const fields = encryptedFields(c);
    if (fields.length === 0 || views.length === 0) return views;
    const missing = new Set<number>();
    const out: RecordView[] = [];
    for (const view of views) {
      const opened: Record<string, unknown> = { ...view.fields };
      for (const field of fields) {
        const value = view.fields[field];
        if (value === undefined) continue;
        if (!isCiphertext(value)) throw new DecryptionFailedError();
        const version = keyVersionOf(value);
        let key = keys.get(version);
        if (!key) {
          key = this.#keyring().peekDecrypt?.(c.tenantId, version);
          if (key) keys.set(version, key);
        }
        if (!key) {
          missing.add(version);
          continue;
        }
        opened[field] = decryptField(key, version, { tenantId: c.tenantId, collection: c.name, field, recordId: view.id }, value);
      }
      out.push({ ...view, fields: opened });
    }
    if (missing.size > 0) throw new KeysNeeded([...missing]);
    return out;
  }

  #keyring(): RecordKeys {
    if (!this.#keys) throw new BulkheadError('INTERNAL', 'this collection has encrypted fields and no key service is configured');
    return this.#keys;
  }

  /** Runs the steps in one transaction (one round trip without `then`; `then` runs in the same transaction after them). */
  async #run(tenantId: string, steps: readonly Step[], then?: (tx: EngineTransaction) => Promise<void>): Promise<StatementResult[]> {
    const statements = steps.map((s) => s.statement);
    let stepsDone = false;
    try {
      if (!then) return await this.#store.tenant(tenantId, WRITE).batch(statements);
      return await this.#store.tenant(tenantId, WRITE).transaction(async (tx) => {
        const results = await tx.batch(statements);
        stepsDone = true;
        await then(tx);
        return results;
      });
    } catch (error) {
      // Only the steps' own failures are theirs to explain; one of `then` passes as it is.
      throw stepsDone ? error : classify(error, steps);
    }
  }


  /**
   * Runs `fn` against the cached definition of the collection, and once more against the current
   * one when the cached copy may be stale: always when storage says the version changed
   * (COLLECTION_CHANGED, from a write), and on `staleCode` (the request failed validation) when
   * re-reading finds a newer version, since another process may have added a field or dropped a
   * `required`. So nothing is validated against, or refused by, an outdated definition.
   */
  async #withCurrentDefinition<T>(
    tenantId: string,
    collection: string,
    staleCode: 'RECORD_INVALID' | 'QUERY_INVALID',
    fn: (c: CompiledCollection) => Promise<T>,
  ): Promise<T> {
    const c = await this.#collections.get(tenantId, collection);
    try {
      return await fn(c);
    } catch (error) {
      if (!(error instanceof BulkheadError) || (error.code !== 'COLLECTION_CHANGED' && error.code !== staleCode)) throw error;
      const current = await this.#collections.get(tenantId, collection, true);
      if (error.code === staleCode && current.version === c.version) throw error;
      return fn(current);
    }
  }
}

/** What a transaction of the record path was given from the key store before it began. */
interface TxKeys {
  readonly decrypt: Map<number, KeyObject>;
  lease: Lease | undefined;
  /** Encryptions the lease was counted for: the transaction may make at most this many. */
  leased: number;
  index: KeyObject | undefined;
}

/**
 * The record as stored: the encrypted fields among `names` get a fresh ciphertext under `lease`
 * (counted for `leased` encryptions), bound to tenant, collection, field, record and key version;
 * other encrypted fields keep what `stored` holds; every other field is stored as it is.
 */
function sealWith(
  c: CompiledCollection,
  id: string,
  data: Record<string, unknown>,
  names: readonly string[],
  stored: Record<string, unknown>,
  lease: Lease | undefined,
  leased: number,
): Record<string, unknown> {
  const fields = encryptedFields(c);
  if (fields.length === 0) return data;
  const out: Record<string, unknown> = { ...data };
  for (const f of fields) if (data[f] !== undefined) out[f] = stored[f];
  const fresh = fields.filter((f) => data[f] !== undefined && names.includes(f));
  if (fresh.length === 0) return out;
  // Every encryption must have been counted against the key's bound before it is made.
  if (!lease || fresh.length > leased) throw new BulkheadError('INTERNAL', 'more values to encrypt than the data key was counted for');
  for (const field of fresh) {
    out[field] = encryptField(lease.key, lease.version, { tenantId: c.tenantId, collection: c.name, field, recordId: id }, data[field] as JsonValue);
  }
  return out;
}

/** The blind indexes, under `indexKey`, of the encrypted fields among `names` that have a value table. */
function blindsWith(c: CompiledCollection, data: Record<string, unknown>, names: readonly string[], indexKey: KeyObject | undefined): ReadonlyMap<string, string> {
  const fields = names.filter((f) => c.definition.fields[f]?.encrypted && keyTableOf(c.definition.fields[f]!) && data[f] !== undefined);
  if (fields.length === 0) return new Map();
  if (!indexKey) throw new BulkheadError('INTERNAL', 'a blind index is needed and the index key was not loaded');
  return new Map(fields.map((field) => [field, blindIndex(indexKey, { collection: c.name, field }, data[field] as JsonValue)]));
}

/** Takes a share lock on the collection row: a concurrent definition change waits, or this write sees it. */
function versionStep(c: CompiledCollection): Step {
  return {
    on: 'version',
    statement: {
      name: 'bh_collection_version',
      text:
        'SELECT bulkhead.require_collection_version(EXISTS (SELECT 1 FROM collections ' +
        'WHERE tenant_id = $1 AND name = $2 AND version = $3 FOR SHARE))',
      values: [c.tenantId, c.name, c.version],
    },
  };
}

function referenceSteps(c: CompiledCollection, data: Record<string, unknown>): Step[] {
  const steps: Step[] = [];
  for (const [field, def] of Object.entries(c.definition.fields)) {
    if (def.type !== 'reference' || data[field] === undefined) continue;
    steps.push({
      field,
      on: 'reference',
      statement: {
        name: 'bh_reference_check',
        text:
          'SELECT bulkhead.require_reference(EXISTS (SELECT 1 FROM records ' +
          'WHERE tenant_id = $1 AND collection = $2 AND id = $3::uuid))',
        values: [c.tenantId, def.collection, data[field]],
      },
    });
  }
  return steps;
}

/** Statements that keep unique_values and index_values in step with the record's `fields`. */
function keySteps(
  c: CompiledCollection,
  id: string,
  data: Record<string, unknown>,
  fields: readonly string[],
  replace: boolean,
  blinds: ReadonlyMap<string, string>,
): Step[] {
  const steps: Step[] = [];
  for (const field of fields) {
    const def = c.definition.fields[field];
    const table = def ? keyTableOf(def) : null;
    if (!def || !table) continue;
    const tag = def.unique ? 'unique' : 'index';
    if (replace) {
      steps.push({
        statement: {
          name: `bh_${tag}_clear`,
          text: `DELETE FROM ${table} WHERE tenant_id = $1 AND collection = $2 AND field = $3 AND record_id = $4`,
          values: [c.tenantId, c.name, field, id],
        },
      });
    }
    if (data[field] === undefined) continue;
    const blind = blinds.get(field);
    steps.push({
      field,
      ...(def.unique ? { on: 'unique' as const } : {}),
      statement:
        blind === undefined
          ? {
              name: `bh_${tag}_put`,
              text: `INSERT INTO ${table} (tenant_id, collection, field, key, record_id) VALUES ($1, $2, $3, bulkhead.value_key($4::text::jsonb), $5)`,
              values: [c.tenantId, c.name, field, JSON.stringify(data[field]), id],
            }
          : {
              // An encrypted field's key is its blind index, never its value.
              name: `bh_${tag}_put_blind`,
              text: `INSERT INTO ${table} (tenant_id, collection, field, key, record_id) VALUES ($1, $2, $3, $4, $5)`,
              values: [c.tenantId, c.name, field, blind, id],
            },
    });
  }
  return steps;
}

/** Turns a failed step into the API's error; the database's own text (which may quote values) is dropped. */
function classify(error: unknown, steps: readonly Step[]): unknown {
  if (!(error instanceof DatabaseError)) return error;
  const step = error.statementIndex === undefined ? undefined : steps[error.statementIndex];
  if (error.sqlState === 'BHC01') return new BulkheadError('COLLECTION_CHANGED', 'the collection definition changed; retry the request', { cause: error });
  if (step?.on === 'unique' && error.kind === 'unique') {
    return new BulkheadError('RECORD_UNIQUE_VIOLATION', `fields.${step.field} must be unique within the tenant; another record has this value`, {
      details: { field: step.field },
    });
  }
  if (step?.on === 'reference' && error.kind === 'foreign_key') {
    return new BulkheadError('RECORD_REFERENCE_NOT_FOUND', `fields.${step.field} names no record of the referenced collection`, {
      details: { field: step.field },
    });
  }
  return error;
}

function pick(data: Record<string, unknown>, keys: readonly string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const k of keys) if (data[k] !== undefined) out[k] = data[k];
  return out;
}

const ENCRYPTED = new WeakMap<CompiledCollection, readonly string[]>();

/** The encrypted fields of a collection version (memoized per compiled version). */
function encryptedFields(c: CompiledCollection): readonly string[] {
  let fields = ENCRYPTED.get(c);
  if (!fields) {
    fields = Object.entries(c.definition.fields).flatMap(([name, def]) => (def.encrypted ? [name] : []));
    ENCRYPTED.set(c, fields);
  }
  return fields;
}

/** A written record's view with the plaintext the caller sent in place of the ciphertexts stored. */
function withPlaintext(view: RecordView, c: CompiledCollection, data: Record<string, unknown>): RecordView {
  const fields = encryptedFields(c);
  if (fields.length === 0) return view;
  const out: Record<string, unknown> = { ...view.fields };
  for (const f of fields) if (data[f] !== undefined) out[f] = data[f];
  return { ...view, fields: out };
}

function toView(row: Record<string, unknown>): RecordView {
  return {
    id: row.id as string,
    fields: row.data as Record<string, unknown>,
    createdAt: (row.created_at as Date).toISOString(),
    updatedAt: (row.updated_at as Date).toISOString(),
    version: row.version as number,
  };
}
