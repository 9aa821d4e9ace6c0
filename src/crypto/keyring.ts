/**
 * The keyring: every tenant's data keys (AES-256-GCM, for field ciphertexts) and its blind-index
 * key (HMAC-SHA-256), created on first use, stored only wrapped by the KMS under the tenant's
 * region's KEK, and unwrapped on demand into a cache with a time limit (docs/encryption.md,
 * "Data keys").
 *
 * The key rows live in the table `tenant_keys` beside the tenant's data, in whatever tier, cell
 * and region that is: a move copies them with the data (`src/placement/copy.ts`), so a tenant's
 * ciphertexts never become unreadable for want of a key left behind. They are read and written
 * through the tenant's own scope, under the same forced row-level security as the data.
 *
 * Each data key's encryptions are counted, in blocks reserved ahead in the key's row, and the key is
 * rotated (retired, version + 1 made active) before a bound far below GCM's 2^32 limit for random
 * IVs (NIST SP 800-38D section 8.3). Counting in blocks keeps the row out of the write path: one
 * update per block, and a process that dies loses the rest of its block, which over-counts.
 */
import { createSecretKey, type KeyObject } from 'node:crypto';
import { BulkheadError, DatabaseError, DecryptionFailedError } from '../errors.js';
import { isUuid } from '../ids.js';
import type { TenantScopes } from '../placement/placements.js';
import type { Statement } from '../store/engine.js';
import { describeWrappedKey, generateDataKey, type Kms, type KmsContext } from './kms.js';

/** What the record layer asks of the keyring: keys by tenant, counted for encryption. */
export interface FieldKeys {
  /** The tenant's current data key for new encryptions, counting `count` encryptions against its bound (rotating past it). */
  forEncrypt(tenantId: string, count: number): Promise<{ readonly version: number; readonly key: KeyObject }>;
  /** The data key of `version`, for decryption; fails closed with CRYPTO_DECRYPT_FAILED (the uniform DecryptionFailedError from src/errors.ts) when unknown, destroyed or unwrappable. */
  forDecrypt(tenantId: string, version: number): Promise<KeyObject>;
  /** The tenant's blind-index key (created on first use; not rotated). */
  indexKey(tenantId: string): Promise<KeyObject>;
  /** The data key of `version` if held in memory, without I/O (see `TenantKeyring.peekDecrypt`). */
  peekDecrypt?(tenantId: string, version: number): KeyObject | undefined;
}

/** Options of `TenantKeyring`. */
export interface TenantKeyringOptions {
  readonly kms: Kms;
  /** Scopes on the tenant's placement (the router: `Placements`); key rows are written through `tenant(id, { write: true })` and read through `tenant(id)`. */
  readonly scopes: TenantScopes;
  /** The tenant's region (its KEK). */
  readonly regionOf: (tenantId: string) => Promise<string>;
  /** How long an unwrapped key is kept in memory (default 300 s). */
  readonly cacheMs?: number;
  /** Encryptions after which a data key is retired and a new version made (default 2^24, far below GCM's 2^32 random-IV bound). */
  readonly maxEncryptions?: number;
  /** Encryptions reserved per database update (default 1,000): counts are reserved ahead in blocks, so a crash over-counts (safe side) and a write does not update the key row. */
  readonly reserveBlock?: number;
}

/** Default time an unwrapped key stays in memory: 5 minutes. */
export const DEFAULT_KEY_CACHE_MS = 300_000;
/** Default encryptions per data key: 2^24, 256 times below the 2^32 GCM allows with random 96-bit IVs. */
export const DEFAULT_MAX_ENCRYPTIONS = 2 ** 24;
/** Default encryptions reserved per update of a key row. */
export const DEFAULT_RESERVE_BLOCK = 1_000;
/** SP 800-38D 8.3: at most 2^32 invocations of GCM with random IVs per key; a bound must stay below it. */
const GCM_RANDOM_IV_LIMIT = 2 ** 32;
/** Key versions are `integer` in the table. */
const MAX_KEY_VERSION = 2 ** 31 - 1;
/** Tenants whose keys are held at once; past it the longest-held tenant's keys are dropped (they reload on use). */
const MAX_CACHED_TENANTS = 10_000;
/**
 * Rounds of reserve / rotate / re-read a `forEncrypt` makes before giving up: each round that does
 * not succeed saw another process reserve or rotate, so only heavy contention exhausts them.
 */
const MAX_RESERVE_ROUNDS = 8;

type Purpose = 'data' | 'index';

/** An unwrapped key and when it leaves the cache. */
interface Held {
  readonly version: number;
  readonly key: KeyObject;
  readonly expires: number;
}

/** The data key new encryptions use, with this process's reserved, unused range `[next, end)` of its count. */
interface Active {
  readonly lease: { readonly version: number; readonly key: KeyObject };
  readonly expires: number;
  next: number;
  end: number;
}

/** One tenant's cached keys and the loads under way, so that concurrent callers share one. */
interface TenantState {
  active: Active | undefined;
  index: Held | undefined;
  readonly data: Map<number, Held>;
  readonly loading: Map<string, Promise<Held>>;
  /** The tail of this tenant's reservations: they run one at a time, so one block serves many callers. */
  reserving: Promise<unknown>;
}

/** The newest key row of a purpose, the active one first. */
const LATEST_SQL =
  'SELECT version, wrapped, state FROM tenant_keys WHERE tenant_id = $1 AND purpose = $2 ' +
  "ORDER BY (state = 'active') DESC, version DESC LIMIT 1";
/** A new active key; a conflict (another process made one first, on the key or the one-active index) inserts nothing. */
const INSERT_SQL = 'INSERT INTO tenant_keys (tenant_id, purpose, version, wrapped) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING';
const VERSION_SQL = "SELECT wrapped, state FROM tenant_keys WHERE tenant_id = $1 AND purpose = 'data' AND version = $2";
/** Reserves `$3` encryptions of the data key `$2`, if it is still the active one. */
const RESERVE_SQL =
  "UPDATE tenant_keys SET reserved = reserved + $3 WHERE tenant_id = $1 AND purpose = 'data' AND version = $2 AND state = 'active' RETURNING reserved";
/**
 * Retires the active data key `$2` and makes `$2 + 1` active, in one statement: the insert happens
 * only if this statement retired `$2`. Of two processes rotating at once, the second waits on the
 * first's row lock, then finds `$2` retired and inserts nothing.
 */
const ROTATE_SQL =
  "WITH retired AS (UPDATE tenant_keys SET state = 'retired', retired_at = now() " +
  "WHERE tenant_id = $1 AND purpose = 'data' AND version = $2 AND state = 'active' RETURNING version) " +
  "INSERT INTO tenant_keys (tenant_id, purpose, version, wrapped) SELECT $1, 'data', version + 1, $3 FROM retired";

/**
 * Destroys retired data keys below a version. The row stays (its version, state and dates are the
 * record of what existed); the wrapped key is replaced by the word `destroyed`, which no unwrap
 * accepts. Only retired keys: the active key is never destroyed this way.
 */
const DESTROY_SQL =
  "UPDATE tenant_keys SET state = 'destroyed', wrapped = 'destroyed', retired_at = coalesce(retired_at, now()) " +
  "WHERE tenant_id = $1 AND purpose = 'data' AND version < $2 AND state = 'retired' RETURNING version";
const DESCRIBE_SQL = 'SELECT purpose, version, state, reserved, created_at, retired_at FROM tenant_keys WHERE tenant_id = $1 ORDER BY purpose, version';

/** One key row as operators see it: never any key material, wrapped or not. */
export interface KeyRowView {
  readonly purpose: 'data' | 'index';
  readonly version: number;
  readonly state: 'active' | 'retired' | 'destroyed';
  /** Encryptions reserved under the key (at least the encryptions made; blocks are reserved ahead). */
  readonly encryptionsReserved: number;
  readonly createdAt: string;
  readonly retiredAt: string | null;
}

/** The KMS context of a key: tenant, purpose and version, so a wrapped key copied to another slot fails to unwrap. */
function contextOf(tenantId: string, purpose: Purpose, version: number): KmsContext {
  return { tenant: tenantId, purpose, version: String(version) };
}

function checkTenant(tenantId: unknown): string {
  if (!isUuid(tenantId)) throw new BulkheadError('INTERNAL', 'the keyring needs a validated tenant id');
  return tenantId;
}

function positiveInteger(value: unknown, name: string, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > max) {
    throw new TypeError(`${name} must be an integer from 1 to ${max}`);
  }
  return value;
}

/**
 * The keyring over the key rows stored at each tenant's placement. One per process; keys are
 * cached per tenant for `cacheMs`, then dropped and unwrapped again from their row on next use
 * (so a key destroyed or retired elsewhere stops being served within that time).
 */
export class TenantKeyring implements FieldKeys {
  readonly #kms: Kms;
  readonly #scopes: TenantScopes;
  readonly #regionOf: (tenantId: string) => Promise<string>;
  readonly #cacheMs: number;
  readonly #max: number;
  readonly #block: number;
  readonly #tenants = new Map<string, TenantState>();
  /** Drops expired keys even when nobody asks for them again; unref'd, and only armed while keys are held. */
  #sweep: NodeJS.Timeout | undefined;

  /** Checks the options (a bad one is a TypeError: the caller's bug); loads nothing until a key is asked for. */
  constructor(options: TenantKeyringOptions) {
    if (typeof options?.kms?.unwrap !== 'function') throw new TypeError('the keyring needs a KMS');
    if (typeof options.scopes?.tenant !== 'function') throw new TypeError('the keyring needs tenant scopes');
    if (typeof options.regionOf !== 'function') throw new TypeError('the keyring needs regionOf');
    const cacheMs = options.cacheMs ?? DEFAULT_KEY_CACHE_MS;
    if (typeof cacheMs !== 'number' || !Number.isInteger(cacheMs) || cacheMs < 0 || cacheMs > 86_400_000) {
      throw new TypeError('cacheMs must be an integer number of milliseconds from 0 to 86400000');
    }
    this.#kms = options.kms;
    this.#scopes = options.scopes;
    this.#regionOf = options.regionOf;
    this.#cacheMs = cacheMs;
    this.#max = positiveInteger(options.maxEncryptions ?? DEFAULT_MAX_ENCRYPTIONS, 'maxEncryptions', GCM_RANDOM_IV_LIMIT - 1);
    // A block larger than the bound could never be reserved on a fresh key.
    this.#block = Math.min(this.#max, positiveInteger(options.reserveBlock ?? DEFAULT_RESERVE_BLOCK, 'reserveBlock', MAX_KEY_VERSION));
  }

  /** See `FieldKeys.forEncrypt`; a key that does not unwrap is KMS_UNWRAP_FAILED, and nothing is written. */
  async forEncrypt(tenantId: string, count: number): Promise<{ readonly version: number; readonly key: KeyObject }> {
    checkTenant(tenantId);
    if (typeof count !== 'number' || !Number.isInteger(count) || count < 1 || count > this.#max) {
      throw new BulkheadError('INTERNAL', `forEncrypt needs a count of encryptions from 1 to the key's bound (${this.#max})`);
    }
    // The write path: served from the reserved block without a database round trip, and without an
    // await between the check and the count, so concurrent callers never take the same numbers.
    const active = this.#tenants.get(tenantId)?.active;
    if (active && Date.now() < active.expires && active.end - active.next >= count) {
      active.next += count;
      return active.lease;
    }
    const state = this.#stateOf(tenantId);
    const run = state.reserving.then(() => this.#reserve(state, tenantId, count));
    state.reserving = run.catch(() => undefined);
    return run;
  }

  /** See `FieldKeys.forDecrypt`: every failure to find or unwrap the key is the uniform CRYPTO_DECRYPT_FAILED. */
  async forDecrypt(tenantId: string, version: number): Promise<KeyObject> {
    checkTenant(tenantId);
    // A version no key can have is a value that cannot be decrypted, like any other.
    if (typeof version !== 'number' || !Number.isInteger(version) || version < 1 || version > MAX_KEY_VERSION) throw new DecryptionFailedError();
    const held = this.#tenants.get(tenantId)?.data.get(version);
    if (held && Date.now() < held.expires) return held.key;
    const state = this.#stateOf(tenantId);
    const loaded = await this.#once(state, `data/${version}`, async () => {
      const [r] = await this.#scopes.tenant(tenantId).batch([{ name: 'bh_key_version', text: VERSION_SQL, values: [tenantId, version] }]);
      const row = r!.rows[0];
      if (!row || row.state === 'destroyed') throw new DecryptionFailedError();
      let key: KeyObject;
      try {
        key = await this.#unwrap(row.wrapped as string, contextOf(tenantId, 'data', version));
      } catch (error) {
        // Uniform for reads: a key that does not unwrap is a value that cannot be decrypted. An
        // unreachable KMS says nothing about the key and stays what it is.
        if (error instanceof BulkheadError && error.code === 'KMS_UNWRAP_FAILED') throw new DecryptionFailedError();
        throw error;
      }
      return this.#hold(state, { version, key, expires: Date.now() + this.#cacheMs }, 'data');
    });
    return loaded.key;
  }

  /**
   * The data key of `version` if this process holds it unexpired, without any I/O: what code inside
   * a database transaction uses, since it must not wait on another query (PGlite has one
   * connection, and a pool could run dry).
   */
  peekDecrypt(tenantId: string, version: number): KeyObject | undefined {
    const held = this.#tenants.get(tenantId)?.data.get(version);
    return held && Date.now() < held.expires ? held.key : undefined;
  }

  /** See `FieldKeys.indexKey`; a key that does not unwrap is KMS_UNWRAP_FAILED. */
  async indexKey(tenantId: string): Promise<KeyObject> {
    checkTenant(tenantId);
    const held = this.#tenants.get(tenantId)?.index;
    if (held && Date.now() < held.expires) return held.key;
    const state = this.#stateOf(tenantId);
    const loaded = await this.#once(state, 'index', async () => this.#hold(state, await this.#current(tenantId, 'index'), 'index'));
    return loaded.key;
  }

  /** The version of the tenant's active data key, or undefined when it has none yet (nothing was ever encrypted). */
  async activeDataVersion(tenantId: string): Promise<number | undefined> {
    checkTenant(tenantId);
    const [r] = await this.#scopes.tenant(tenantId).batch([{ name: 'bh_key_latest', text: LATEST_SQL, values: [tenantId, 'data'] }]);
    const row = r!.rows[0];
    return row?.state === 'active' ? (row.version as number) : undefined;
  }

  /**
   * Retires the data key `fromVersion` and makes the next version active, unless that happened
   * already (by an earlier run of the same rotation, or another process): idempotent, so a rotation
   * resumed after a crash makes no second version. Returns the active version afterwards. This
   * process's cached lease is dropped at once; other processes stop encrypting under the old key
   * when their cache expires (`cacheMs`), which is why a rotation destroys it only after that.
   */
  async rotateDataKey(tenantId: string, fromVersion: number): Promise<number> {
    checkTenant(tenantId);
    positiveInteger(fromVersion, 'fromVersion', MAX_KEY_VERSION);
    await this.#rotate(tenantId, fromVersion);
    this.forget(tenantId);
    const active = await this.activeDataVersion(tenantId);
    if (active === undefined || active <= fromVersion) throw new BulkheadError('INTERNAL', "the tenant's data key could not be rotated");
    return active;
  }

  /**
   * Destroys the tenant's retired data keys below `version`: the wrapped key is overwritten, so no
   * later unwrap can read it (a rotation calls this once no ciphertext names them). Returns the
   * versions destroyed now.
   */
  async destroyDataVersionsBelow(tenantId: string, version: number): Promise<number[]> {
    checkTenant(tenantId);
    positiveInteger(version, 'version', MAX_KEY_VERSION);
    const [r] = await this.#scopes.tenant(tenantId, { write: true }).batch([{ name: 'bh_key_destroy', text: DESTROY_SQL, values: [tenantId, version] }]);
    this.forget(tenantId);
    return r!.rows.map((row) => row.version as number).sort((a, b) => a - b);
  }

  /**
   * Wraps every live key of the tenant again under its own key-encryption key in `region`, where
   * they are wrapped anywhere else (another region's tenant key, or a region KEK of before tenant
   * keys): after a region move, the tenant's keys then depend only on the KMS of its new region.
   * Each row is replaced only if it still holds what was read (so a concurrent change wins and is
   * wrapped on the next run); idempotent. The other region's tenant key is not destroyed: a backup
   * made there before the move still needs it, and an erasure destroys it with the rest. Returns
   * how many rows were wrapped again.
   */
  async rewrapInto(tenantId: string, region: string): Promise<number> {
    checkTenant(tenantId);
    const [r] = await this.#scopes.tenant(tenantId).batch([
      { name: 'bh_key_live', text: "SELECT purpose, version, wrapped FROM tenant_keys WHERE tenant_id = $1 AND state <> 'destroyed' ORDER BY purpose, version", values: [tenantId] },
    ]);
    let count = 0;
    for (const row of r!.rows) {
      const wrapped = row.wrapped as string;
      const info = describeWrappedKey(wrapped);
      if (info.kind === 'tenant' && info.region === region) continue;
      const context = contextOf(tenantId, row.purpose as Purpose, row.version as number);
      const raw = await this.#kms.unwrap(wrapped, context);
      let again: string;
      try {
        again = await this.#kms.wrapForTenant(region, tenantId, raw, context);
      } finally {
        raw.fill(0);
      }
      const [u] = await this.#scopes.tenant(tenantId, { write: true }).batch([
        {
          name: 'bh_key_rewrap',
          text: 'UPDATE tenant_keys SET wrapped = $4 WHERE tenant_id = $1 AND purpose = $2 AND version = $3 AND wrapped = $5',
          values: [tenantId, row.purpose, row.version, again, wrapped],
        },
      ]);
      count += u!.rowCount ?? 0;
    }
    this.forget(tenantId);
    return count;
  }

  /** The tenant's key rows without any key material: purpose, version, state, encryptions reserved, dates. */
  async describe(tenantId: string): Promise<KeyRowView[]> {
    checkTenant(tenantId);
    // Operators look at the keys of any tenant, a suspended or offboarding one too: nothing secret is read.
    const [r] = await this.#scopes.tenant(tenantId, { requireActive: false }).batch([{ name: 'bh_key_describe', text: DESCRIBE_SQL, values: [tenantId] }]);
    return r!.rows.map((row) => ({
      purpose: row.purpose as Purpose,
      version: row.version as number,
      state: row.state as KeyRowView['state'],
      encryptionsReserved: Number(row.reserved),
      createdAt: (row.created_at as Date).toISOString(),
      retiredAt: row.retired_at ? (row.retired_at as Date).toISOString() : null,
    }));
  }

  /** Drops the cached keys of a tenant (after a rotation or an erasure elsewhere); the next use reads its rows again. */
  forget(tenantId: string): void {
    // Loads under way keep the detached state and store into it, not into a new one.
    this.#tenants.delete(tenantId);
  }

  /** Takes `count` encryptions of the active data key: from this process's block, else by reserving (and rotating) in the row. */
  async #reserve(state: TenantState, tenantId: string, count: number): Promise<{ readonly version: number; readonly key: KeyObject }> {
    for (let round = 0; round < MAX_RESERVE_ROUNDS; round++) {
      let active = state.active;
      if (!active || Date.now() >= active.expires) {
        const current = await this.#once(state, 'active', async () => this.#hold(state, await this.#current(tenantId, 'data'), 'data'));
        // The same version as before keeps what is left of its block: it was reserved in the row.
        const keep = active && active.lease.version === current.version;
        active = { lease: Object.freeze({ version: current.version, key: current.key }), expires: current.expires, next: keep ? active!.next : 0, end: keep ? active!.end : 0 };
        state.active = active;
      }
      if (active.end - active.next >= count) {
        active.next += count;
        return active.lease;
      }
      const n = Math.min(this.#max, Math.ceil(count / this.#block) * this.#block);
      const [r] = await this.#scopes.tenant(tenantId, { write: true }).batch([
        { name: 'bh_key_reserve', text: RESERVE_SQL, values: [tenantId, active.lease.version, n] },
      ]);
      const row = r!.rows[0];
      if (!row) {
        // Another process retired it: read the active key again.
        if (state.active === active) state.active = undefined;
        continue;
      }
      const reserved = Number(row.reserved);
      if (reserved > this.#max) {
        // The block would pass the bound: none of it is used, the key is retired.
        await this.#rotate(tenantId, active.lease.version);
        if (state.active === active) state.active = undefined;
        continue;
      }
      // n >= count: the new block serves this call at once (also with no cache, cacheMs 0).
      active.next = reserved - n + count;
      active.end = reserved;
      return active.lease;
    }
    throw new BulkheadError('STORE_UNAVAILABLE', "the tenant's data key is being reserved and rotated by other processes at the same time; retry the request");
  }

  /**
   * Makes version `version + 1` the active data key and retires `version`, unless another process
   * did so first (then this does nothing; the caller reads the active key again).
   */
  async #rotate(tenantId: string, version: number): Promise<void> {
    if (version >= MAX_KEY_VERSION) throw new BulkheadError('INTERNAL', 'the tenant has used every data key version');
    const wrapped = await this.#wrapNew(tenantId, 'data', version + 1);
    try {
      await this.#scopes.tenant(tenantId, { write: true }).batch([{ name: 'bh_key_rotate', text: ROTATE_SQL, values: [tenantId, version, wrapped] }]);
    } catch (error) {
      // Version + 1 exists already: another process's rotation won. Its key is read next.
      if (error instanceof DatabaseError && error.kind === 'unique') return;
      throw error;
    }
  }

  /**
   * The active key of a purpose, unwrapped from its row; made when there is none (version: one
   * past the newest row). The row is unwrapped even when this process just made it, so nothing is
   * ever encrypted under a key whose stored form could not be unwrapped. A failed unwrap is the
   * KMS's uniform KMS_UNWRAP_FAILED: nothing gets written with that key.
   */
  async #current(tenantId: string, purpose: Purpose): Promise<Held> {
    const latest: Statement = { name: 'bh_key_latest', text: LATEST_SQL, values: [tenantId, purpose] };
    const [found] = await this.#scopes.tenant(tenantId).batch([latest]);
    let row = found!.rows[0];
    if (row?.state !== 'active') {
      const version = row ? (row.version as number) + 1 : 1;
      if (version > MAX_KEY_VERSION) throw new BulkheadError('INTERNAL', 'the tenant has used every key version');
      const wrapped = await this.#wrapNew(tenantId, purpose, version);
      const [, made] = await this.#scopes.tenant(tenantId, { write: true }).batch([
        { name: 'bh_key_insert', text: INSERT_SQL, values: [tenantId, purpose, version, wrapped] },
        latest,
      ]);
      // Whoever won the race, the active row now is the key.
      row = made!.rows[0];
      if (row?.state !== 'active') throw new BulkheadError('INTERNAL', `the tenant's ${purpose} key could not be made`);
    }
    const version = row.version as number;
    const key = await this.#unwrap(row.wrapped as string, contextOf(tenantId, purpose, version));
    return { version, key, expires: Date.now() + this.#cacheMs };
  }

  /** A fresh key wrapped under the tenant's own KEK in its region; its bytes are wiped once wrapped (it is used only as unwrapped back from its row). */
  async #wrapNew(tenantId: string, purpose: Purpose, version: number): Promise<string> {
    const region = await this.#regionOf(tenantId);
    const raw = generateDataKey();
    try {
      // Under the tenant's own key-encryption key: destroying it in the KMS (an erasure) makes every
      // copy of these rows unreadable, old dumps included (docs/encryption.md, "Crypto-shredding").
      return await this.#kms.wrapForTenant(region, tenantId, raw, contextOf(tenantId, purpose, version));
    } finally {
      raw.fill(0);
    }
  }

  async #unwrap(wrapped: string, context: KmsContext): Promise<KeyObject> {
    const raw = await this.#kms.unwrap(wrapped, context);
    try {
      // A KeyObject keeps its own copy outside the JavaScript heap; the unwrapped bytes are wiped.
      return createSecretKey(raw);
    } finally {
      raw.fill(0);
    }
  }

  /** Runs `load` once for concurrent callers of the same tenant and slot. */
  #once(state: TenantState, slot: string, load: () => Promise<Held>): Promise<Held> {
    let pending = state.loading.get(slot);
    if (!pending) {
      pending = load().finally(() => state.loading.delete(slot));
      state.loading.set(slot, pending);
    }
    return pending;
  }

  /** Caches a key in the tenant's state (a forgotten, detached state takes it and lets it go). */
  #hold(state: TenantState, held: Held, purpose: Purpose): Held {
    if (this.#cacheMs === 0) return held;
    if (purpose === 'index') state.index = held;
    else state.data.set(held.version, held);
    this.#arm(held.expires);
    return held;
  }

  #stateOf(tenantId: string): TenantState {
    let state = this.#tenants.get(tenantId);
    if (!state) {
      if (this.#tenants.size >= MAX_CACHED_TENANTS) this.#tenants.delete(this.#tenants.keys().next().value!);
      state = { active: undefined, index: undefined, data: new Map(), loading: new Map(), reserving: Promise.resolve() };
      this.#tenants.set(tenantId, state);
    }
    return state;
  }

  #arm(at: number): void {
    if (this.#sweep) return;
    this.#sweep = setTimeout(() => this.#dropExpired(), Math.max(0, at - Date.now()) + 1);
    this.#sweep.unref();
  }

  /** Drops every expired key, and tenants left with nothing; re-arms for the next expiry, if any key is left. */
  #dropExpired(): void {
    this.#sweep = undefined;
    const now = Date.now();
    let next = Infinity;
    for (const [tenantId, state] of this.#tenants) {
      if (state.active && now >= state.active.expires) state.active = undefined;
      if (state.index && now >= state.index.expires) state.index = undefined;
      for (const [version, held] of state.data) if (now >= held.expires) state.data.delete(version);
      for (const held of [state.active, state.index, ...state.data.values()]) if (held) next = Math.min(next, held.expires);
      if (!state.active && !state.index && state.data.size === 0 && state.loading.size === 0) this.#tenants.delete(tenantId);
    }
    if (next !== Infinity) this.#arm(next);
  }
}
