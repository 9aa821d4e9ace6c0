/**
 * Data-key rotation of a tenant (`bulkhead keys rotate`, `POST /v1/tenants/{id}/keys/rotate`;
 * docs/encryption.md, "Rotation"): a new data-key version for new writes, every stored ciphertext
 * re-encrypted under it in resumable batches, and the old versions destroyed once nothing names
 * them. A job persisted in the control plane, resumed from its state after a crash:
 *
 *   rotating → reencrypting → settling → destroying → done   (or failed)
 *
 * - rotating: the active version `from` is retired and `from + 1` made active (idempotent: the
 *   statement only retires `from` if it is still active).
 * - reencrypting: every record of every collection with encrypted fields, in id order from a saved
 *   cursor, has its ciphertexts under versions below the new one decrypted and encrypted again, one
 *   transaction per batch, the record's version and dates untouched (its content did not change).
 * - settling: other processes may still encrypt under the old key until their key cache expires
 *   (`keyCacheMs` after the rotation); once that time is over, a second pass re-encrypts what they
 *   wrote meanwhile. After it, no process holds the old key for encryption.
 * - destroying: the retired versions below the new one are destroyed (their wrapped keys
 *   overwritten), so no record is left on a destroyed version, and a key that leaked cannot read
 *   anything written since.
 *
 * A batch that finds its records locked by a move's switch (writes paused) waits and retries; a
 * crash between a batch's commit and the saved cursor repeats the batch, which finds its records
 * already on the new version and leaves them alone.
 */
import type { KeyObject } from 'node:crypto';
import { decryptField, encryptField, isCiphertext, keyVersionOf } from '../crypto/field-cipher.js';
import type { JsonValue } from '../crypto/encoding.js';
import type { TenantKeyring } from '../crypto/keyring.js';
import { BulkheadError, DatabaseError, DecryptionFailedError, NotFoundError, WritesPausedError } from '../errors.js';
import { isUuid, uuidv7 } from '../ids.js';
import type { Placements } from '../placement/placements.js';
import type { Collections, CompiledCollection } from './collections.js';

/** States of a rotation. */
export const ROTATION_STATES = ['rotating', 'reencrypting', 'settling', 'destroying', 'done', 'failed'] as const;
/** A rotation state. */
export type RotationState = (typeof ROTATION_STATES)[number];

/** Progress of the re-encryption, persisted after every batch. */
export interface RotationProgress {
  /** Records looked at in the current pass, and the records of encrypted collections when the rotation began. */
  readonly done: number;
  readonly total: number;
  /** Ciphertexts encrypted again so far (both passes). */
  readonly reencrypted: number;
  /** 1: the re-encryption; 2: the pass after other processes' key caches expired. */
  readonly pass: 1 | 2;
  /** The collection being re-encrypted (by name, in name order) and the last record id done in it. */
  readonly collection: string | null;
  readonly cursor: string | null;
  /** The versions destroyed at the end. */
  readonly destroyed?: readonly number[];
}

/** A rotation as the API shows it. */
export interface RotationView {
  readonly id: string;
  readonly tenantId: string;
  readonly state: RotationState;
  /** The version retired (null: the tenant had no data key, nothing to rotate). */
  readonly fromVersion: number | null;
  /** The version new writes use, and every record is brought to. */
  readonly toVersion: number | null;
  readonly progress: RotationProgress & { readonly percent: number };
  readonly error: string | null;
  readonly actor: string;
  readonly createdAt: string;
  readonly updatedAt: string;
  readonly rotatedAt: string | null;
  readonly finishedAt: string | null;
}

/** Options of the rotator. */
export interface KeyRotationsOptions {
  /** Records per re-encryption batch (default 500). */
  readonly batchSize?: number;
  /** How long any process may keep encrypting under a retired key: the keyring's cache time (default 300,000 ms). */
  readonly keyCacheMs?: number;
  /**
   * Called after every persisted step (state change or batch) with the rotation as stored: a
   * progress bar listens here; crash tests kill the process from here.
   */
  readonly onStep?: (rotation: RotationView) => void | Promise<void>;
}

/** Extra wait past the key cache time before the settling pass: writes that took the old key just before it expired have committed by then. */
const SETTLE_MARGIN_MS = 1_000;
/** How long a batch waits before retrying when a move's switch has paused the tenant's writes. */
const PAUSED_RETRY_MS = 250;
const OPEN: readonly RotationState[] = ['rotating', 'reencrypting', 'settling', 'destroying'];
const SELECT_ROTATION =
  'SELECT id, tenant_id, state, from_version, to_version, progress, error, actor, created_at, updated_at, rotated_at, finished_at FROM bulkhead.key_rotations';
/** The smallest UUID: the cursor before the first record. */
const FIRST = '00000000-0000-0000-0000-000000000000';

/**
 * Data-key rotations with resumable re-encryption. One per process; a rotation runs in the
 * background of the process that started it (or resumed it after a restart).
 */
export class KeyRotations {
  readonly #placements: Placements;
  readonly #collections: Collections;
  readonly #keyring: TenantKeyring;
  readonly #batchSize: number;
  readonly #keyCacheMs: number;
  readonly #onStep: KeyRotationsOptions['onStep'];
  readonly #running = new Map<string, Promise<void>>();
  #closing = false;

  constructor(placements: Placements, collections: Collections, keyring: TenantKeyring, options: KeyRotationsOptions = {}) {
    this.#placements = placements;
    this.#collections = collections;
    this.#keyring = keyring;
    this.#batchSize = options.batchSize ?? 500;
    this.#keyCacheMs = options.keyCacheMs ?? 300_000;
    this.#onStep = options.onStep;
  }

  /**
   * Starts a rotation of the tenant's data key and runs it in the background; when one is already
   * under way, returns that one instead (a second request makes no second version). Refused with
   * TENANT_BUSY unless the tenant is active.
   */
  async start(tenant: { readonly id: string; readonly status: string }, actor: string): Promise<RotationView> {
    if (tenant.status !== 'active') {
      throw new BulkheadError('TENANT_BUSY', `the tenant is ${tenant.status}; keys are rotated only for an active tenant`, { details: { field: 'tenant' } });
    }
    const open = await this.#open(tenant.id);
    if (open) {
      this.run(open.id);
      return open;
    }
    const from = (await this.#keyring.activeDataVersion(tenant.id)) ?? null;
    const id = uuidv7();
    try {
      await this.#control([
        {
          text: 'INSERT INTO bulkhead.key_rotations (id, tenant_id, state, from_version, progress, actor) VALUES ($1, $2, $3, $4, $5::text::jsonb, $6)',
          values: [id, tenant.id, 'rotating', from, JSON.stringify(emptyProgress()), actor],
        },
      ]);
    } catch (error) {
      // Another request started one at the same moment: follow that one.
      if (error instanceof DatabaseError && error.kind === 'unique') {
        const other = await this.#open(tenant.id);
        if (other) return other;
      }
      throw error;
    }
    const rotation = await this.get(tenant.id, id);
    this.run(id);
    return rotation;
  }

  /** One rotation of a tenant; another tenant's, or an id that is not a UUID, is KEY_ROTATION_NOT_FOUND. */
  async get(tenantId: string, rotationId: string): Promise<RotationView> {
    if (!isUuid(rotationId)) throw new NotFoundError('KEY_ROTATION_NOT_FOUND', 'no such key rotation of this tenant');
    const [r] = await this.#control([{ text: `${SELECT_ROTATION} WHERE id = $1 AND tenant_id = $2`, values: [rotationId, tenantId] }]);
    const row = r!.rows[0];
    if (!row) throw new NotFoundError('KEY_ROTATION_NOT_FOUND', 'no such key rotation of this tenant');
    return toView(row);
  }

  /** The rotations of a tenant, newest first. */
  async list(tenantId: string): Promise<RotationView[]> {
    const [r] = await this.#control([{ text: `${SELECT_ROTATION} WHERE tenant_id = $1 ORDER BY id DESC`, values: [tenantId] }]);
    return r!.rows.map(toView);
  }

  /** The tenant's unfinished rotation, if any. */
  async #open(tenantId: string): Promise<RotationView | undefined> {
    const [r] = await this.#control([
      { text: `${SELECT_ROTATION} WHERE tenant_id = $1 AND state = ANY ($2::text[])`, values: [tenantId, `{${OPEN.join(',')}}`] },
    ]);
    const row = r!.rows[0];
    return row ? toView(row) : undefined;
  }

  /** Whether the tenant has an unfinished rotation (an erasure waits for it). */
  async busy(tenantId: string): Promise<boolean> {
    return (await this.#open(tenantId)) !== undefined;
  }

  /** Resumes every unfinished rotation (after a restart); returns their ids. */
  async resume(): Promise<string[]> {
    const [r] = await this.#control([{ text: 'SELECT id FROM bulkhead.key_rotations WHERE state = ANY ($1::text[]) ORDER BY id', values: [`{${OPEN.join(',')}}`] }]);
    const ids = r!.rows.map((row) => row.id as string);
    for (const id of ids) this.run(id);
    return ids;
  }

  /** Runs a rotation to its end in the background (once per process); `wait` resolves when it stops. */
  run(rotationId: string): void {
    if (this.#running.has(rotationId) || this.#closing) return;
    const done = this.#drive(rotationId).finally(() => this.#running.delete(rotationId));
    // A failure is recorded in the rotation itself; the promise only tells when the runner stopped.
    this.#running.set(rotationId, done.catch(() => {}));
  }

  /** Waits until the rotation's runner in this process has stopped. */
  async wait(rotationId: string): Promise<void> {
    await this.#running.get(rotationId);
  }

  /** Stops starting new batches and waits for the runners to reach a persisted point. */
  async close(): Promise<void> {
    this.#closing = true;
    await Promise.all([...this.#running.values()]);
  }

  async #drive(rotationId: string): Promise<void> {
    for (;;) {
      const rotation = await this.#load(rotationId);
      if (rotation.state === 'done' || rotation.state === 'failed' || this.#closing) return;
      try {
        await this.#step(rotation);
      } catch (error) {
        if (this.#closing) return;
        if (error instanceof WritesPausedError) {
          // A move is switching the tenant over: its writes resume in a moment.
          await sleep(PAUSED_RETRY_MS);
          continue;
        }
        // Codes and SQLSTATEs only: a message could quote data. Nothing is lost by stopping here:
        // every record is on a version that is still kept (old versions are destroyed last).
        const code = error instanceof BulkheadError ? error.code : 'INTERNAL';
        const sqlState = error instanceof DatabaseError && error.sqlState ? ` (SQLSTATE ${error.sqlState})` : '';
        await this.#save(rotation, { state: 'failed', error: `${rotation.state}: ${code}${sqlState}`, finished: true });
        return;
      }
    }
  }

  async #step(rotation: RotationView): Promise<void> {
    const { tenantId } = rotation;
    switch (rotation.state) {
      case 'rotating': {
        if (rotation.fromVersion === null) {
          // Nothing was ever encrypted for this tenant: the first write makes version 1.
          await this.#save(rotation, { state: 'done', finished: true });
          return;
        }
        const to = await this.#keyring.rotateDataKey(tenantId, rotation.fromVersion);
        const total = await this.#countRecords(tenantId);
        await this.#save(rotation, { state: 'reencrypting', toVersion: to, rotated: true, progress: { ...emptyProgress(), total } });
        return;
      }
      case 'reencrypting':
      case 'settling': {
        if (rotation.state === 'settling') {
          // Wait until no process can still encrypt under the old key, then look at everything again.
          const until = Date.parse(rotation.rotatedAt!) + this.#keyCacheMs + SETTLE_MARGIN_MS;
          while (Date.now() < until) {
            if (this.#closing) return;
            await sleep(Math.min(500, until - Date.now()));
          }
        }
        await this.#pass(rotation);
        if (this.#closing) return;
        const now = await this.#load(rotation.id);
        if (rotation.state === 'reencrypting') {
          await this.#save(now, { state: 'settling', progress: { ...now.progress, pass: 2, done: 0, collection: null, cursor: null, total: await this.#countRecords(tenantId) } });
        } else {
          await this.#save(now, { state: 'destroying' });
        }
        return;
      }
      case 'destroying': {
        const destroyed = await this.#keyring.destroyDataVersionsBelow(tenantId, rotation.toVersion!);
        const earlier = rotation.progress.destroyed ?? [];
        await this.#save(rotation, { state: 'done', finished: true, progress: { ...rotation.progress, destroyed: [...new Set([...earlier, ...destroyed])].sort((a, b) => a - b) } });
        return;
      }
      default:
        return;
    }
  }

  /** One pass over every encrypted collection of the tenant, from the saved collection and cursor. */
  async #pass(rotation: RotationView): Promise<void> {
    const { tenantId } = rotation;
    const to = rotation.toVersion!;
    let { done, reencrypted, collection, cursor } = rotation.progress;
    for (const c of await this.#encryptedCollections(tenantId)) {
      if (collection !== null && c.name < collection) continue;
      if (c.name !== collection) cursor = null;
      collection = c.name;
      for (;;) {
        if (this.#closing) return;
        const batch = await this.#batch(c, cursor ?? FIRST, to);
        done += batch.seen;
        reencrypted += batch.reencrypted;
        if (batch.last !== null) cursor = batch.last;
        rotation = await this.#save(rotation, { progress: { ...rotation.progress, done, reencrypted, collection, cursor } });
        if (batch.seen < this.#batchSize) break;
      }
    }
  }

  /**
   * Re-encrypts, in one transaction, the ciphertexts under versions below `to` of the next batch
   * of records after `after`. The rows are locked, so a concurrent update waits for the batch or
   * the batch for it, and neither overwrites the other. The keys are fetched before the
   * transaction from a first, unlocked read of the same rows (a transaction must not wait on the
   * key store: PGlite has one connection); if the locked read needs more than that (a record
   * changed in between), the transaction rolls back and the batch runs again.
   */
  async #batch(c: CompiledCollection, after: string, to: number): Promise<{ seen: number; reencrypted: number; last: string | null }> {
    const fields = Object.entries(c.definition.fields).flatMap(([name, def]) => (def.encrypted ? [name] : []));
    const select = (lock: boolean) => ({
      name: lock ? 'bh_rekey_lock' : 'bh_rekey_peek',
      text: `SELECT id, data FROM records WHERE tenant_id = $1 AND collection = $2 AND id > $3 ORDER BY id LIMIT $4${lock ? ' FOR UPDATE' : ''}`,
      values: [c.tenantId, c.name, after, this.#batchSize],
    });
    for (let attempt = 1; ; attempt++) {
      const [peek] = await this.#placements.tenant(c.tenantId).batch([select(false)]);
      const need = staleIn(peek!.rows, fields, to);
      const decrypt = new Map<number, KeyObject>();
      for (const v of need.versions) decrypt.set(v, await this.#keyring.forDecrypt(c.tenantId, v));
      // Counted against the new key's bound before any encryption (a smaller need later over-counts: the safe side).
      const lease = need.count > 0 ? await this.#keyring.forEncrypt(c.tenantId, need.count) : undefined;
      try {
        return await this.#placements.tenant(c.tenantId, { write: true }).transaction(async (tx) => {
          const [r] = await tx.batch([select(true)]);
          const rows = r!.rows;
          const now = staleIn(rows, fields, to);
          if (now.count > need.count || [...now.versions].some((v) => !decrypt.has(v))) throw new Retry();
          const updates: Array<{ id: string; data: Record<string, unknown> }> = [];
          for (const row of rows) {
            const id = row.id as string;
            const data = row.data as Record<string, unknown>;
            const stale = fields.filter((f) => isStale(data[f], to));
            if (stale.length === 0) continue;
            const out: Record<string, unknown> = { ...data };
            for (const field of stale) {
              const value = data[field];
              // Anything that is not a ciphertext of this tenant's keys fails the rotation closed (CRYPTO_DECRYPT_FAILED).
              if (!isCiphertext(value)) throw new DecryptionFailedError();
              const old = keyVersionOf(value);
              const binding = { tenantId: c.tenantId, collection: c.name, field, recordId: id };
              out[field] = encryptField(lease!.key, lease!.version, binding, decryptField(decrypt.get(old)!, old, binding, value));
            }
            updates.push({ id, data: out });
          }
          if (updates.length > 0) {
            await tx.batch([
              {
                name: 'bh_rekey_update',
                text:
                  'UPDATE records AS r SET data = v.data FROM jsonb_to_recordset($3::text::jsonb) AS v (id uuid, data jsonb) ' +
                  'WHERE r.tenant_id = $1 AND r.collection = $2 AND r.id = v.id',
                values: [c.tenantId, c.name, JSON.stringify(updates)],
              },
            ]);
          }
          return { seen: rows.length, reencrypted: now.count, last: rows.length ? (rows[rows.length - 1]!.id as string) : null };
        });
      } catch (error) {
        if (!(error instanceof Retry) || attempt >= MAX_BATCH_ATTEMPTS) throw error;
      }
    }
  }

  /** The tenant's collections with at least one encrypted field, by name. */
  async #encryptedCollections(tenantId: string): Promise<CompiledCollection[]> {
    const out: CompiledCollection[] = [];
    for (const view of await this.#collections.list(tenantId)) {
      const c = await this.#collections.get(tenantId, view.name, true);
      if (Object.values(c.definition.fields).some((def) => def.encrypted)) out.push(c);
    }
    return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  async #countRecords(tenantId: string): Promise<number> {
    const names = (await this.#encryptedCollections(tenantId)).map((c) => c.name);
    if (names.length === 0) return 0;
    const [r] = await this.#placements.tenant(tenantId).batch([
      { text: 'SELECT count(*)::bigint AS n FROM records WHERE tenant_id = $1 AND collection = ANY ($2::text[])', values: [tenantId, `{${names.join(',')}}`] },
    ]);
    return Number(r!.rows[0]!.n);
  }

  async #load(id: string): Promise<RotationView> {
    const [r] = await this.#control([{ text: `${SELECT_ROTATION} WHERE id = $1`, values: [id] }]);
    const row = r!.rows[0];
    if (!row) throw new NotFoundError('KEY_ROTATION_NOT_FOUND', 'no such key rotation');
    return toView(row);
  }

  /** Persists a step, then tells the observer; returns the rotation as stored. */
  async #save(
    rotation: RotationView,
    change: { state?: RotationState; toVersion?: number; rotated?: boolean; finished?: boolean; error?: string; progress?: RotationProgress },
  ): Promise<RotationView> {
    const [r] = await this.#control([
      {
        text:
          'UPDATE bulkhead.key_rotations SET state = $2, to_version = coalesce($3, to_version), progress = $4::text::jsonb, error = coalesce($5, error), ' +
          'rotated_at = CASE WHEN $6 THEN coalesce(rotated_at, now()) ELSE rotated_at END, ' +
          'finished_at = CASE WHEN $7 THEN now() ELSE finished_at END, updated_at = now() ' +
          `WHERE id = $1 RETURNING ${SELECT_ROTATION.slice('SELECT '.length, SELECT_ROTATION.indexOf(' FROM '))}`,
        values: [
          rotation.id,
          change.state ?? rotation.state,
          change.toVersion ?? null,
          JSON.stringify(stripPercent(change.progress ?? rotation.progress)),
          change.error ?? null,
          change.rotated === true,
          change.finished === true,
        ],
      },
    ]);
    const saved = toView(r!.rows[0]!);
    await this.#onStep?.(saved);
    return saved;
  }

  #control(statements: Parameters<ReturnType<Placements['control']['store']['platform']>['batch']>[0]) {
    return this.#placements.control.store.platform().batch(statements);
  }
}

/** A batch whose locked rows need keys its unlocked read did not show: rolled back and run again. */
class Retry extends Error {}

/** Runs of one batch before giving up (each one lost a race with a write to the same records). */
const MAX_BATCH_ATTEMPTS = 5;

/** Whether a stored value of an encrypted field must be encrypted again: under a version below `to`, or not a ciphertext at all (which fails closed). */
function isStale(value: unknown, to: number): boolean {
  return value !== undefined && (!isCiphertext(value) || keyVersionOf(value) < to);
}

/** The stale values among `rows`: how many, and under which key versions. */
function staleIn(rows: readonly Record<string, unknown>[], fields: readonly string[], to: number): { count: number; versions: Set<number> } {
  let count = 0;
  const versions = new Set<number>();
  for (const row of rows) {
    const data = row.data as Record<string, unknown>;
    for (const f of fields) {
      const v = data[f];
      if (!isStale(v, to)) continue;
      count += 1;
      if (isCiphertext(v)) versions.add(keyVersionOf(v));
    }
  }
  return { count, versions };
}

function emptyProgress(): RotationProgress {
  return { done: 0, total: 0, reencrypted: 0, pass: 1, collection: null, cursor: null };
}

function stripPercent(progress: RotationProgress & { percent?: number }): RotationProgress {
  const { percent: _percent, ...rest } = progress;
  return rest;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function toView(row: Record<string, unknown>): RotationView {
  const iso = (v: unknown) => (v instanceof Date ? v.toISOString() : v === null || v === undefined ? null : String(v));
  const progress = row.progress as RotationProgress;
  const state = row.state as RotationState;
  // Two passes: the first is 0–90 %, the settling pass the rest; done is 100.
  const share = progress.total > 0 ? Math.min(1, progress.done / progress.total) : 1;
  const percent = state === 'done' ? 100 : state === 'rotating' ? 0 : Math.floor(progress.pass === 1 ? share * 90 : 90 + share * 9);
  return {
    id: row.id as string,
    tenantId: row.tenant_id as string,
    state,
    fromVersion: (row.from_version as number | null) ?? null,
    toVersion: (row.to_version as number | null) ?? null,
    progress: { ...progress, percent },
    error: (row.error as string | null) ?? null,
    actor: row.actor as string,
    createdAt: iso(row.created_at)!,
    updatedAt: iso(row.updated_at)!,
    rotatedAt: iso(row.rotated_at),
    finishedAt: iso(row.finished_at),
  };
}
