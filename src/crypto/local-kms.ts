/**
 * The `local` KMS provider: one 32-byte master key, from `BULKHEAD_MASTER_KEY` or from a key file
 * made on first start, and per-region KEK versions derived from it with HKDF-SHA-256. Wraps are
 * AES-256-GCM with a fresh 96-bit IV and associated data binding provider, region, KEK version and
 * the caller's context (`wrapAad` in kms.ts).
 *
 * Derivation, rather than random KEKs stored somewhere, means the master key alone recovers every
 * KEK: the small state file only records which versions exist and which were destroyed. The flip
 * side: destroying a version here is a refusal recorded in the state, not an erasure of key
 * material (the master key could derive it again). Where KEK destruction must be physical, use the
 * `pkcs11` provider.
 *
 * Tenant keys are the exception: each is 32 random bytes, since a key derivable from the master key
 * could never be destroyed. The state file keeps it sealed under the region's newest KEK, and
 * destroying it removes it from the state. A copy of the state file taken before, with the master
 * key, still holds it; that is the limit of this provider (docs/encryption.md).
 */
import {
  createCipheriv,
  createDecipheriv,
  createHmac,
  createSecretKey,
  hkdfSync,
  randomBytes,
  timingSafeEqual,
  type KeyObject,
} from 'node:crypto';
import { syncDirectory, writeDurably } from '../files.js';
import { constants as fsConstants } from 'node:fs';
import { link, mkdir, open, rename, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';
import { BulkheadError } from '../errors.js';
import { isUuid } from '../ids.js';
import {
  DATA_KEY_BYTES,
  KmsUnwrapError,
  MAX_KEK_VERSION,
  SerialQueue,
  TenantKeyDestroyedError,
  WRAP_IV_BYTES,
  WRAP_TAG_BYTES,
  checkContext,
  checkDataKey,
  checkKekVersion,
  checkRegion,
  checkTenantContext,
  checkTenantId,
  formatWrappedKey,
  isTenantKeyId,
  newTenantKeyId,
  parseWrappedKey,
  rewrapByUnwrapping,
  wrapAad,
  type Kms,
  type KmsContext,
  type ParsedWrappedKey,
  type RegionWrappedKeyInfo,
  type TenantKeyDestruction,
  type TenantKeyInfo,
  type TenantWrappedKeyInfo,
} from './kms.js';

/** The KEK versions of one region: 1 to `current`, less those destroyed. */
export interface KmsRegionState {
  readonly current: number;
  readonly destroyed: readonly number[];
}

/**
 * A tenant key in the local state. Active: its id, and the key sealed under version `kekVersion`
 * of the region's KEK (base64url of IV ‖ encrypted key ‖ tag, 80 characters). Destroyed: its id
 * (null when the tenant never had a key) and when, with no key material left.
 */
export type KmsTenantKeyState =
  | { readonly state: 'active'; readonly keyId: string; readonly kekVersion: number; readonly sealed: string }
  | { readonly state: 'destroyed'; readonly keyId: string | null; readonly destroyedAt: string };

/** What the local provider persists between starts (format 2; format 1 had no `tenantKeys`). */
export interface KmsState {
  readonly format: 2;
  /**
   * A check value of the master key (16 bytes of an HMAC under it, base64url): a restart with
   * another master key is refused at once instead of failing every unwrap later.
   */
  readonly keyCheck: string;
  readonly regions: Readonly<Record<string, KmsRegionState>>;
  /** Tenant keys by region, then tenant id. */
  readonly tenantKeys: Readonly<Record<string, Readonly<Record<string, KmsTenantKeyState>>>>;
}

/** Where the local provider keeps its state; `JsonFileKmsStateStore` is the default. */
export interface KmsStateStore {
  /** The saved state, or undefined before the first save. */
  load(): Promise<unknown>;
  /** Replaces the saved state; when it resolves the state is durable. */
  save(state: KmsState): Promise<void>;
}

/** Options of `openLocalKms`: a master key or a key file, and a state store. */
export interface LocalKmsOptions {
  /** The master key (parsed from `BULKHEAD_MASTER_KEY` by `parseMasterKey`); wins over `keyFile`. */
  readonly masterKey?: KeyObject;
  /** A file of exactly 32 raw bytes, mode 0600; created on first start when missing. */
  readonly keyFile?: string;
  readonly state: KmsStateStore;
}

const OWNER_ONLY = 0o600;
const KEK_SALT = Buffer.from('bulkhead/kms/local/kek-salt/v1', 'utf8');
const KEY_CHECK_LABEL = 'bulkhead/kms/local/key-check/v1';

/**
 * Parses a master key given as text: 64 hex digits, or 32 bytes in base64 or base64url (padding
 * optional). The message names the setting and never echoes the value.
 */
export function parseMasterKey(text: string, setting = 'BULKHEAD_MASTER_KEY'): KeyObject {
  const value = text.trim();
  let bytes: Buffer | undefined;
  if (/^[0-9a-fA-F]{64}$/.test(value)) {
    bytes = Buffer.from(value, 'hex');
  } else if (/^[A-Za-z0-9+/]{43}=?$/.test(value) || /^[A-Za-z0-9_-]{43}=?$/.test(value)) {
    bytes = Buffer.from(value, value.includes('+') || value.includes('/') ? 'base64' : 'base64url');
    // 43 characters carry 258 bits; the 2 spare bits must be zero, or two spellings would name one key.
    if (bytes.toString('base64url') !== value.replace(/=$/, '').replace(/\+/g, '-').replace(/\//g, '_')) bytes = undefined;
  }
  if (bytes === undefined || bytes.length !== DATA_KEY_BYTES) {
    throw new BulkheadError(
      'KMS_CONFIG_INVALID',
      `${setting} must be 32 bytes written as 64 hex digits or 44 base64 characters; make one with: openssl rand -base64 32`,
    );
  }
  if (bytes.every((b) => b === 0)) {
    throw new BulkheadError('KMS_CONFIG_INVALID', `${setting} is all zero bytes, a placeholder; make a real key with: openssl rand -base64 32`);
  }
  return createSecretKey(bytes);
}

/**
 * Reads the master key from `path`, or makes it when the file does not exist: 32 random bytes,
 * mode 0600, written to a temporary file and linked into place, so the key file appears complete
 * or not at all and two processes starting at once end up with the same key. A file that group or
 * others may read or write is refused (KMS_KEY_FILE_INSECURE), as is a file of another size.
 */
export async function loadOrCreateKeyFile(path: string): Promise<KeyObject> {
  for (let attempt = 0; attempt < 2; attempt++) {
    const existing = await readKeyFile(path);
    if (existing) return existing;
    await mkdir(dirname(path), { recursive: true, mode: 0o700 });
    const temp = `${path}.${randomBytes(6).toString('hex')}.tmp`;
    const key = randomBytes(DATA_KEY_BYTES);
    try {
      await writeDurably(temp, key);
      try {
        await link(temp, path); // fails with EEXIST when another process made the file first
        await syncDirectory(dirname(path));
        return createSecretKey(key);
      } catch (error) {
        if (errnoOf(error) !== 'EEXIST') throw error;
      }
    } catch (error) {
      if (error instanceof BulkheadError) throw error;
      throw new BulkheadError('KMS_CONFIG_INVALID', `the KMS key file ${path} cannot be created; check that its directory is writable`, { cause: error });
    } finally {
      key.fill(0);
      await unlink(temp).catch(() => undefined);
    }
  }
  throw new BulkheadError('KMS_CONFIG_INVALID', `the KMS key file ${path} cannot be read or created`);
}

/** The errno name of a file-system error (`ENOENT`, `EEXIST`), or undefined. */
function errnoOf(error: unknown): string | undefined {
  const code = (error as NodeJS.ErrnoException | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** The key in an existing key file, or undefined when there is no file. */
async function readKeyFile(path: string): Promise<KeyObject | undefined> {
  let handle;
  try {
    handle = await open(path, fsConstants.O_RDONLY);
  } catch (error) {
    if (errnoOf(error) === 'ENOENT') return undefined;
    throw new BulkheadError('KMS_CONFIG_INVALID', `the KMS key file ${path} cannot be read; check its owner and BULKHEAD_KMS_KEY_FILE`, { cause: error });
  }
  try {
    // fstat of the open file, not stat of the path: what is checked is what is read.
    const stat = await handle.stat();
    if (!stat.isFile()) throw new BulkheadError('KMS_CONFIG_INVALID', `the KMS key file ${path} is not a regular file`);
    const mode = stat.mode & 0o777;
    if (mode & 0o077) {
      throw new BulkheadError(
        'KMS_KEY_FILE_INSECURE',
        `the KMS key file ${path} can be read or written by group or others (mode ${mode.toString(8).padStart(3, '0')}); run: chmod 600 ${path}`,
      );
    }
    if (stat.size !== DATA_KEY_BYTES) {
      throw new BulkheadError(
        'KMS_CONFIG_INVALID',
        `the KMS key file ${path} holds ${stat.size} bytes, not ${DATA_KEY_BYTES}: it is not a Bulkhead master key; restore the right file`,
      );
    }
    const bytes = Buffer.alloc(DATA_KEY_BYTES);
    const { bytesRead } = await handle.read(bytes, 0, DATA_KEY_BYTES, 0);
    if (bytesRead !== DATA_KEY_BYTES) throw new BulkheadError('KMS_CONFIG_INVALID', `the KMS key file ${path} changed while it was read`);
    const key = createSecretKey(bytes);
    bytes.fill(0);
    return key;
  } finally {
    await handle.close();
  }
}

/**
 * The local provider's state in a JSON file (mode 0600), replaced atomically on each save:
 * written to a temporary file, flushed, renamed over the old one. It decides which KEK versions
 * unwrap and holds the tenant keys (sealed under region KEKs, never in clear), so a file others
 * may read or write is refused like the key file.
 */
export class JsonFileKmsStateStore implements KmsStateStore {
  /** The file's path. */
  readonly path: string;

  constructor(path: string) {
    this.path = path;
  }

  /** The parsed file, or undefined when it does not exist yet. */
  async load(): Promise<unknown> {
    let handle;
    try {
      handle = await open(this.path, fsConstants.O_RDONLY);
    } catch (error) {
      if (errnoOf(error) === 'ENOENT') return undefined;
      throw new BulkheadError('KMS_UNAVAILABLE', `the KMS state file ${this.path} cannot be read`, { cause: error });
    }
    let text: string;
    try {
      const mode = (await handle.stat()).mode & 0o777;
      if (mode & 0o077) {
        throw new BulkheadError(
          'KMS_KEY_FILE_INSECURE',
          `the KMS state file ${this.path} can be read or written by group or others (mode ${mode.toString(8).padStart(3, '0')}); run: chmod 600 ${this.path}`,
        );
      }
      text = await handle.readFile('utf8');
    } finally {
      await handle.close();
    }
    try {
      return JSON.parse(text) as unknown;
    } catch {
      throw new BulkheadError('KMS_CONFIG_INVALID', `the KMS state file ${this.path} is not valid JSON; restore it from a backup`);
    }
  }

  /** Writes the state durably and atomically. */
  async save(state: KmsState): Promise<void> {
    const dir = dirname(this.path);
    const temp = `${this.path}.${randomBytes(6).toString('hex')}.tmp`;
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 });
      await writeDurably(temp, Buffer.from(`${JSON.stringify(state, null, 2)}\n`, 'utf8'));
      await rename(temp, this.path);
      await syncDirectory(dir);
    } catch (error) {
      await unlink(temp).catch(() => undefined);
      throw new BulkheadError('KMS_UNAVAILABLE', `the KMS state file ${this.path} cannot be written; check that its directory is writable`, { cause: error });
    }
  }
}

/** Mutable per-region state inside the provider. */
interface RegionVersions {
  current: number;
  destroyed: Set<number>;
}

/** A tenant key held in memory, unwrapped: its id and its 32 bytes (wiped when dropped). */
interface OpenTenantKey {
  readonly keyId: string;
  readonly key: Buffer;
}

const REGION_NAME = /^[a-z0-9][a-z0-9-]{0,31}$/;
const SEALED_TENANT_KEY = /^[A-Za-z0-9_-]{80}$/;
const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
const TENANT_KEY_AAD = 'bulkhead/kms/local/tenant-key/v1';

/** True when `value` is a plain object (not null, not an array). */
function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** True when `object` has exactly the members `names`, no more and no fewer. */
function hasExactly(object: Record<string, unknown>, names: readonly string[]): boolean {
  const keys = Object.keys(object);
  return keys.length === names.length && names.every((name) => Object.hasOwn(object, name));
}

/**
 * Checks what a state store returned; anything unexpected is KMS_CONFIG_INVALID. Format 1 (before
 * tenant keys) is read as format 2 with no tenant keys, and written as format 2 at the next save.
 */
function checkState(raw: unknown): KmsState {
  const bad = (): never => {
    throw new BulkheadError('KMS_CONFIG_INVALID', 'the KMS state is malformed; restore the KMS state file from a backup');
  };
  if (!isRecord(raw)) return bad();
  const s = raw;
  if ((s.format !== 1 && s.format !== 2) || typeof s.keyCheck !== 'string' || !/^[A-Za-z0-9_-]{22}$/.test(s.keyCheck)) return bad();
  if (!isRecord(s.regions)) return bad();
  const regions: Record<string, KmsRegionState> = {};
  for (const [region, value] of Object.entries(s.regions)) {
    if (!REGION_NAME.test(region) || !isRecord(value)) return bad();
    const { current, destroyed } = value as { current?: unknown; destroyed?: unknown };
    if (typeof current !== 'number' || !Number.isInteger(current) || current < 1 || current > MAX_KEK_VERSION) return bad();
    if (!Array.isArray(destroyed)) return bad();
    const seen = new Set<number>();
    for (const v of destroyed) {
      if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v >= current || seen.has(v)) return bad();
      seen.add(v);
    }
    regions[region] = { current, destroyed: [...seen].sort((a, b) => a - b) };
  }
  if (s.format === 1 ? s.tenantKeys !== undefined : !isRecord(s.tenantKeys)) return bad();
  const tenantKeys: Record<string, Record<string, KmsTenantKeyState>> = {};
  for (const [region, tenants] of Object.entries(isRecord(s.tenantKeys) ? s.tenantKeys : {})) {
    if (!REGION_NAME.test(region) || !isRecord(tenants)) return bad();
    const checked: Record<string, KmsTenantKeyState> = {};
    for (const [tenantId, entry] of Object.entries(tenants)) {
      if (!isUuid(tenantId) || !isRecord(entry)) return bad();
      if (entry.state === 'active') {
        const { keyId, kekVersion, sealed } = entry;
        // The KEK version sealing an active key must be one that can still unwrap, or the key is lost.
        const versions = regions[region];
        if (!hasExactly(entry, ['state', 'keyId', 'kekVersion', 'sealed']) || !isTenantKeyId(keyId)) return bad();
        if (typeof kekVersion !== 'number' || !Number.isInteger(kekVersion) || kekVersion < 1) return bad();
        if (versions === undefined || kekVersion > versions.current || versions.destroyed.includes(kekVersion)) return bad();
        if (typeof sealed !== 'string' || !SEALED_TENANT_KEY.test(sealed)) return bad();
        checked[tenantId] = { state: 'active', keyId, kekVersion, sealed };
      } else if (entry.state === 'destroyed') {
        const { keyId, destroyedAt } = entry;
        if (!hasExactly(entry, ['state', 'keyId', 'destroyedAt']) || (keyId !== null && !isTenantKeyId(keyId))) return bad();
        if (typeof destroyedAt !== 'string' || !ISO_TIME.test(destroyedAt) || Number.isNaN(Date.parse(destroyedAt))) return bad();
        checked[tenantId] = { state: 'destroyed', keyId, destroyedAt };
      } else {
        return bad();
      }
    }
    tenantKeys[region] = checked;
  }
  return { format: 2, keyCheck: s.keyCheck, regions, tenantKeys };
}

function keyCheckOf(master: KeyObject): string {
  return createHmac('sha256', master).update(KEY_CHECK_LABEL).digest().subarray(0, 16).toString('base64url');
}

/**
 * Opens the local provider: reads or makes the master key, loads the state (making it on first
 * start) and refuses a master key that is not the one the state was made with.
 */
export async function openLocalKms(options: LocalKmsOptions): Promise<Kms> {
  let master: KeyObject;
  if (options.masterKey !== undefined) {
    if (options.masterKey.type !== 'secret' || options.masterKey.symmetricKeySize !== DATA_KEY_BYTES) {
      throw new BulkheadError('KMS_CONFIG_INVALID', 'the master key must be a 32-byte secret key');
    }
    master = options.masterKey;
  } else if (options.keyFile !== undefined) {
    master = await loadOrCreateKeyFile(options.keyFile);
  } else {
    throw new BulkheadError('KMS_CONFIG_INVALID', 'the local KMS needs BULKHEAD_MASTER_KEY or a key file (BULKHEAD_KMS_KEY_FILE)');
  }
  const kms = new LocalKms(master, options.state);
  await kms.start();
  return kms;
}

/** The key of a tenant key in the provider's maps: region names hold no `/`. */
function slotOf(region: string, tenantId: string): string {
  return `${region}/${tenantId}`;
}

/** AES-256-GCM with a fresh 96-bit IV: the IV and the ciphertext followed by its 16-byte tag. */
function gcmSeal(key: Buffer, aad: Buffer, plaintext: Uint8Array): { iv: Buffer; sealed: Buffer } {
  const iv = randomBytes(WRAP_IV_BYTES);
  const cipher = createCipheriv('aes-256-gcm', key, iv, { authTagLength: WRAP_TAG_BYTES });
  cipher.setAAD(aad);
  return { iv, sealed: Buffer.concat([cipher.update(plaintext), cipher.final(), cipher.getAuthTag()]) };
}

/** Opens what `gcmSeal` made, a 32-byte key; any failure is the uniform unwrap error. */
function gcmOpen(key: Buffer, aad: Buffer, iv: Buffer, sealed: Buffer): Buffer {
  try {
    const decipher = createDecipheriv('aes-256-gcm', key, iv, { authTagLength: WRAP_TAG_BYTES });
    decipher.setAAD(aad);
    decipher.setAuthTag(sealed.subarray(DATA_KEY_BYTES));
    const out = Buffer.concat([decipher.update(sealed.subarray(0, DATA_KEY_BYTES)), decipher.final()]);
    if (out.length !== DATA_KEY_BYTES) throw new KmsUnwrapError();
    return out;
  } catch {
    throw new KmsUnwrapError();
  }
}

/** Unwraps a data key with an open key into a fresh array, wiping the intermediate buffer. */
function openDataKey(key: Buffer, aad: Buffer, parsed: ParsedWrappedKey): Uint8Array {
  const raw = gcmOpen(key, aad, parsed.iv, parsed.sealed);
  const out = new Uint8Array(raw);
  raw.fill(0);
  return out;
}

/**
 * The associated data sealing a tenant key in the state: the JSON array
 * `["bulkhead/kms/local/tenant-key/v1", region, tenantId, keyId, kekVersion]`. It binds the entry
 * to its place, so a sealed key copied to another tenant's entry, or relabelled, does not open.
 */
function tenantKeyAad(region: string, tenantId: string, keyId: string, kekVersion: number): Buffer {
  return Buffer.from(JSON.stringify([TENANT_KEY_AAD, region, tenantId, keyId, kekVersion]), 'utf8');
}

/** The local provider; made by `openLocalKms`. */
class LocalKms implements Kms {
  readonly provider = 'local' as const;
  #master: KeyObject | undefined;
  readonly #keyCheck: string;
  readonly #store: KmsStateStore;
  #regions = new Map<string, RegionVersions>();
  /** Tenant key entries as last loaded or saved, by `slotOf(region, tenant)`. */
  #tenants = new Map<string, KmsTenantKeyState>();
  /** Derived KEKs by `region:version`; wiped on close. */
  readonly #keks = new Map<string, Buffer>();
  /**
   * Tenant keys opened by this process, by slot, so that wraps and unwraps under a known tenant
   * key read no file. Wiped on destroy, on close, and when a reload shows the key gone.
   */
  readonly #tenantKeys = new Map<string, OpenTenantKey>();
  readonly #queue = new SerialQueue();

  constructor(master: KeyObject, store: KmsStateStore) {
    this.#master = master;
    this.#keyCheck = keyCheckOf(master);
    this.#store = store;
  }

  /** Loads the state, or saves a new one on first start. */
  async start(): Promise<void> {
    const state = await this.#load();
    if (state === undefined) await this.#save({ regions: new Map() });
  }

  async wrap(region: string, dataKey: Uint8Array, context: KmsContext): Promise<string> {
    checkRegion(region);
    checkDataKey(dataKey);
    checkContext(context);
    return this.#queue.run(async () => {
      this.#checkOpen();
      const version = await this.#currentVersion(region);
      const info: RegionWrappedKeyInfo = { kind: 'region', provider: 'local', region, kekVersion: version };
      const { iv, sealed } = gcmSeal(this.#kek(region, version), wrapAad(info, context)!, dataKey);
      return formatWrappedKey(info, iv, sealed);
    });
  }

  async unwrap(wrapped: string, context: KmsContext): Promise<Uint8Array> {
    this.#checkOpen();
    try {
      const parsed = parseWrappedKey(wrapped);
      const aad = wrapAad(parsed, context);
      if (parsed.provider !== 'local' || aad === undefined) throw new KmsUnwrapError();
      if (parsed.kind === 'tenant') return await this.#unwrapTenant(parsed, aad);
      if (!this.#usable(parsed.region, parsed.kekVersion)) {
        // Another process sharing this state may have rotated since it was read.
        await this.#queue.run(() => this.#load());
        if (!this.#usable(parsed.region, parsed.kekVersion)) throw new KmsUnwrapError();
      }
      return openDataKey(this.#kek(parsed.region, parsed.kekVersion), aad, parsed);
    } catch (error) {
      if (error instanceof BulkheadError && error.code === 'KMS_UNAVAILABLE') throw error;
      throw new KmsUnwrapError();
    }
  }

  rewrap(wrapped: string, context: KmsContext): Promise<string> {
    return rewrapByUnwrapping(this, wrapped, context);
  }

  async rotateKek(region: string): Promise<number> {
    checkRegion(region);
    return this.#queue.run(async () => {
      this.#checkOpen();
      await this.#load();
      const before = this.#regions.get(region);
      const next = (before?.current ?? 0) + 1;
      checkKekVersion(next);
      // The region's tenant keys move to the new version in the same save, so the old version
      // holds nothing that the state still needs and can be destroyed once the data keys moved.
      await this.#save({
        regions: withRegion(this.#regions, region, { current: next, destroyed: new Set(before?.destroyed ?? []) }),
        tenants: this.#resealed(region, next, () => true),
      });
      return next;
    });
  }

  async kekVersions(region: string): Promise<readonly number[]> {
    checkRegion(region);
    return this.#queue.run(async () => {
      this.#checkOpen();
      await this.#load();
      const versions = this.#regions.get(region);
      if (versions === undefined) return Object.freeze([]);
      const list: number[] = [];
      for (let v = 1; v <= versions.current; v++) if (!versions.destroyed.has(v)) list.push(v);
      return Object.freeze(list);
    });
  }

  async destroyKekVersion(region: string, version: number): Promise<void> {
    checkRegion(region);
    checkKekVersion(version);
    return this.#queue.run(async () => {
      this.#checkOpen();
      await this.#load();
      const versions = this.#regions.get(region);
      if (versions === undefined || version > versions.current || versions.destroyed.has(version)) {
        throw new BulkheadError('KMS_KEK_NOT_FOUND', `region ${region} has no KEK version ${version} to destroy`);
      }
      if (version === versions.current) {
        throw new BulkheadError('KMS_INPUT_INVALID', `KEK version ${version} is the newest of region ${region}; rotate the KEK and re-wrap the data keys first`);
      }
      await this.#save({
        regions: withRegion(this.#regions, region, { current: versions.current, destroyed: new Set([...versions.destroyed, version]) }),
        // rotateKek already moved every tenant key; this covers a state written by an older Bulkhead.
        tenants: this.#resealed(region, versions.current, (entry) => entry.kekVersion === version),
      });
      const cached = this.#keks.get(`${region}:${version}`);
      cached?.fill(0);
      this.#keks.delete(`${region}:${version}`);
    });
  }

  async wrapForTenant(region: string, tenantId: string, dataKey: Uint8Array, context: KmsContext): Promise<string> {
    checkRegion(region);
    checkTenantId(tenantId);
    checkDataKey(dataKey);
    checkTenantContext(tenantId, context);
    this.#checkOpen();
    const slot = slotOf(region, tenantId);
    const seal = (open: OpenTenantKey): string => {
      const info: TenantWrappedKeyInfo = { kind: 'tenant', provider: 'local', region, tenantId, keyId: open.keyId };
      const { iv, sealed } = gcmSeal(open.key, wrapAad(info, context)!, dataKey);
      return formatWrappedKey(info, iv, sealed);
    };
    // Known key: sealed in this turn of the event loop, so a destroy cannot wipe it in between.
    const known = this.#tenantKeys.get(slot);
    if (known !== undefined) return seal(known);
    if (this.#tenants.get(slot)?.state === 'destroyed') throw new TenantKeyDestroyedError();
    // In the queue, so that two first wraps of one tenant make one key.
    return this.#queue.run(async () => {
      this.#checkOpen();
      return seal(await this.#openTenantKey(region, tenantId, true));
    });
  }

  async destroyTenantKey(region: string, tenantId: string): Promise<TenantKeyDestruction> {
    checkRegion(region);
    checkTenantId(tenantId);
    return this.#queue.run(async () => {
      this.#checkOpen();
      await this.#load();
      const slot = slotOf(region, tenantId);
      const entry = this.#tenants.get(slot);
      let result: TenantKeyDestruction;
      if (entry?.state === 'destroyed') {
        result = { keyId: entry.keyId, destroyedAt: entry.destroyedAt, alreadyDestroyed: true };
      } else {
        // One save drops the sealed key and records the refusal: there is no state in between
        // where the key is gone but a new one could be made for the tenant.
        const destroyed: KmsTenantKeyState = { state: 'destroyed', keyId: entry?.keyId ?? null, destroyedAt: new Date().toISOString() };
        await this.#save({ tenants: new Map(this.#tenants).set(slot, destroyed) });
        result = { keyId: destroyed.keyId, destroyedAt: destroyed.destroyedAt, alreadyDestroyed: false };
      }
      this.#forgetTenantKey(slot);
      return Object.freeze(result);
    });
  }

  async tenantKeyInfo(region: string, tenantId: string): Promise<TenantKeyInfo> {
    checkRegion(region);
    checkTenantId(tenantId);
    return this.#queue.run(async () => {
      this.#checkOpen();
      await this.#load();
      const entry = this.#tenants.get(slotOf(region, tenantId));
      if (entry === undefined) return Object.freeze({ state: 'absent' as const });
      return Object.freeze(entry.keyId === null ? { state: entry.state } : { state: entry.state, keyId: entry.keyId });
    });
  }

  async close(): Promise<void> {
    await this.#queue.run(() => {
      for (const kek of this.#keks.values()) kek.fill(0);
      this.#keks.clear();
      for (const slot of [...this.#tenantKeys.keys()]) this.#forgetTenantKey(slot);
      this.#master = undefined;
    });
  }

  #checkOpen(): void {
    if (this.#master === undefined) throw new BulkheadError('KMS_UNAVAILABLE', 'the KMS is closed');
  }

  #usable(region: string, version: number): boolean {
    const versions = this.#regions.get(region);
    return versions !== undefined && version <= versions.current && !versions.destroyed.has(version);
  }

  /** The newest KEK version of `region`, making version 1 on its first use. Runs in the queue. */
  async #currentVersion(region: string): Promise<number> {
    let versions = this.#regions.get(region);
    if (versions === undefined) {
      await this.#load();
      versions = this.#regions.get(region);
      if (versions === undefined) {
        await this.#save({ regions: withRegion(this.#regions, region, { current: 1, destroyed: new Set() }) });
        versions = this.#regions.get(region)!;
      }
    }
    return versions.current;
  }

  /** The KEK of a region and version: HKDF-SHA-256 of the master key, `info` binding both. */
  #kek(region: string, version: number): Buffer {
    const id = `${region}:${version}`;
    let kek = this.#keks.get(id);
    if (kek === undefined) {
      if (this.#master === undefined) throw new BulkheadError('KMS_UNAVAILABLE', 'the KMS is closed');
      const info = Buffer.from(`bulkhead/kms/local/kek/v1\u0000${region}\u0000${version}`, 'utf8');
      kek = Buffer.from(hkdfSync('sha256', this.#master, KEK_SALT, info, DATA_KEY_BYTES));
      this.#keks.set(id, kek);
    }
    return kek;
  }

  /** Unwraps a tenant wrap: from the open key when this process holds it, else from the state. */
  async #unwrapTenant(parsed: ParsedWrappedKey & TenantWrappedKeyInfo, aad: Buffer): Promise<Uint8Array> {
    const slot = slotOf(parsed.region, parsed.tenantId);
    const known = this.#tenantKeys.get(slot);
    if (known !== undefined && known.keyId === parsed.keyId) return openDataKey(known.key, aad, parsed);
    // Destruction is final: no need to read the state again to refuse.
    if (this.#tenants.get(slot)?.state === 'destroyed') throw new KmsUnwrapError();
    return this.#queue.run(async () => {
      this.#checkOpen();
      const open = await this.#openTenantKey(parsed.region, parsed.tenantId, false);
      if (open.keyId !== parsed.keyId) throw new KmsUnwrapError();
      return openDataKey(open.key, aad, parsed);
    });
  }

  /**
   * The open key of a tenant, read from a fresh load of the state (another process sharing it may
   * have made or destroyed the key) and kept in memory. With `create`, a tenant without a key gets
   * one: 32 random bytes, sealed under the region's newest KEK and saved before first use. A
   * destroyed key is KMS_TENANT_KEY_DESTROYED with `create`, else the uniform unwrap error, as is
   * a missing one. Runs in the queue.
   */
  async #openTenantKey(region: string, tenantId: string, create: boolean): Promise<OpenTenantKey> {
    const slot = slotOf(region, tenantId);
    await this.#load();
    const known = this.#tenantKeys.get(slot);
    if (known !== undefined) return known;
    const entry = this.#tenants.get(slot);
    if (entry?.state === 'destroyed') throw create ? new TenantKeyDestroyedError() : new KmsUnwrapError();
    if (entry === undefined && !create) throw new KmsUnwrapError();
    let open: OpenTenantKey;
    if (entry !== undefined) {
      open = { keyId: entry.keyId, key: this.#unsealTenantKey(region, tenantId, entry) };
    } else {
      const version = await this.#currentVersion(region);
      open = { keyId: newTenantKeyId(), key: randomBytes(DATA_KEY_BYTES) };
      const sealed = this.#sealTenantKey(region, tenantId, open, version);
      await this.#save({ tenants: new Map(this.#tenants).set(slot, sealed) });
    }
    this.#tenantKeys.set(slot, open);
    return open;
  }

  /** A tenant key sealed under version `version` of its region's KEK, as stored in the state. */
  #sealTenantKey(region: string, tenantId: string, open: OpenTenantKey, version: number): KmsTenantKeyState {
    const { iv, sealed } = gcmSeal(this.#kek(region, version), tenantKeyAad(region, tenantId, open.keyId, version), open.key);
    return { state: 'active', keyId: open.keyId, kekVersion: version, sealed: Buffer.concat([iv, sealed]).toString('base64url') };
  }

  /** Opens a stored tenant key; one that does not open means a damaged state (KMS_CONFIG_INVALID). */
  #unsealTenantKey(region: string, tenantId: string, entry: KmsTenantKeyState & { state: 'active' }): Buffer {
    if (!this.#usable(region, entry.kekVersion)) throw new BulkheadError('KMS_CONFIG_INVALID', 'the KMS state holds a tenant key under a destroyed KEK version; restore the KMS state file from a backup');
    const bytes = Buffer.from(entry.sealed, 'base64url');
    try {
      return gcmOpen(this.#kek(region, entry.kekVersion), tenantKeyAad(region, tenantId, entry.keyId, entry.kekVersion), bytes.subarray(0, WRAP_IV_BYTES), bytes.subarray(WRAP_IV_BYTES));
    } catch {
      throw new BulkheadError('KMS_CONFIG_INVALID', 'a tenant key in the KMS state does not decrypt; restore the KMS state file from a backup');
    }
  }

  /** A copy of the tenant entries with the active keys of `region` that `which` picks sealed again under `version`. */
  #resealed(region: string, version: number, which: (entry: KmsTenantKeyState & { state: 'active' }) => boolean): Map<string, KmsTenantKeyState> {
    const copy = new Map(this.#tenants);
    const prefix = `${region}/`;
    for (const [slot, entry] of this.#tenants) {
      if (!slot.startsWith(prefix) || entry.state !== 'active' || entry.kekVersion === version || !which(entry)) continue;
      const tenantId = slot.slice(prefix.length);
      const key = this.#unsealTenantKey(region, tenantId, entry);
      try {
        copy.set(slot, this.#sealTenantKey(region, tenantId, { keyId: entry.keyId, key }, version));
      } finally {
        key.fill(0);
      }
    }
    return copy;
  }

  /** Drops and wipes the open key of a slot. */
  #forgetTenantKey(slot: string): void {
    const open = this.#tenantKeys.get(slot);
    if (open === undefined) return;
    this.#tenantKeys.delete(slot);
    open.key.fill(0);
  }

  /** Reads the stored state into memory; undefined when nothing was stored yet. */
  async #load(): Promise<KmsState | undefined> {
    const raw = await this.#store.load();
    if (raw === undefined) return undefined;
    const state = checkState(raw);
    if (!timingSafeEqual(Buffer.from(state.keyCheck), Buffer.from(this.#keyCheck))) {
      throw new BulkheadError(
        'KMS_CONFIG_INVALID',
        'the master key is not the one the KMS state was made with; restore the original BULKHEAD_MASTER_KEY or key file',
      );
    }
    const regions = new Map<string, RegionVersions>();
    for (const [region, r] of Object.entries(state.regions)) regions.set(region, { current: r.current, destroyed: new Set(r.destroyed) });
    const tenants = new Map<string, KmsTenantKeyState>();
    for (const [region, entries] of Object.entries(state.tenantKeys)) {
      for (const [tenantId, entry] of Object.entries(entries)) tenants.set(slotOf(region, tenantId), entry);
    }
    this.#regions = regions;
    this.#adoptTenants(tenants);
    return state;
  }

  /** Saves the state with `regions` and `tenants` (the current ones where not given), adopting them once saved. */
  async #save(change: { regions?: Map<string, RegionVersions>; tenants?: Map<string, KmsTenantKeyState> }): Promise<void> {
    const regions = change.regions ?? this.#regions;
    const tenants = change.tenants ?? this.#tenants;
    const tenantKeys: Record<string, Record<string, KmsTenantKeyState>> = {};
    for (const [slot, entry] of [...tenants].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
      const at = slot.indexOf('/');
      (tenantKeys[slot.slice(0, at)] ??= {})[slot.slice(at + 1)] = entry;
    }
    const state: KmsState = {
      format: 2,
      keyCheck: this.#keyCheck,
      regions: Object.fromEntries(
        [...regions].map(([region, r]) => [region, { current: r.current, destroyed: [...r.destroyed].sort((a, b) => a - b) }]),
      ),
      tenantKeys,
    };
    await this.#store.save(state);
    this.#regions = regions;
    this.#adoptTenants(tenants);
  }

  /** Takes `tenants` as the entries, dropping open keys that are no longer active under the same id. */
  #adoptTenants(tenants: Map<string, KmsTenantKeyState>): void {
    this.#tenants = tenants;
    for (const [slot, open] of [...this.#tenantKeys]) {
      const entry = tenants.get(slot);
      if (entry?.state !== 'active' || entry.keyId !== open.keyId) this.#forgetTenantKey(slot);
    }
  }
}

/** A copy of `regions` with one region replaced. */
function withRegion(regions: Map<string, RegionVersions>, region: string, versions: RegionVersions): Map<string, RegionVersions> {
  const copy = new Map(regions);
  copy.set(region, versions);
  return copy;
}
