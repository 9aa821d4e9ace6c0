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
import {
  DATA_KEY_BYTES,
  KmsUnwrapError,
  SerialQueue,
  WRAP_IV_BYTES,
  WRAP_TAG_BYTES,
  checkContext,
  checkDataKey,
  checkKekVersion,
  checkRegion,
  formatWrappedKey,
  parseWrappedKey,
  wrapAad,
  type Kms,
  type KmsContext,
  type WrappedKeyInfo,
} from './kms.js';

/** The KEK versions of one region: 1 to `current`, less those destroyed. */
export interface KmsRegionState {
  readonly current: number;
  readonly destroyed: readonly number[];
}

/** What the local provider persists between starts. */
export interface KmsState {
  readonly format: 1;
  /**
   * A check value of the master key (16 bytes of an HMAC under it, base64url): a restart with
   * another master key is refused at once instead of failing every unwrap later.
   */
  readonly keyCheck: string;
  readonly regions: Readonly<Record<string, KmsRegionState>>;
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
 * written to a temporary file, flushed, renamed over the old one. It holds no key material, but
 * it decides which KEK versions unwrap, so a file others may write is refused like the key file.
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

/** Checks what a state store returned; anything unexpected is KMS_CONFIG_INVALID. */
function checkState(raw: unknown): KmsState {
  const bad = (): never => {
    throw new BulkheadError('KMS_CONFIG_INVALID', 'the KMS state is malformed; restore the KMS state file from a backup');
  };
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return bad();
  const s = raw as Record<string, unknown>;
  if (s.format !== 1 || typeof s.keyCheck !== 'string' || !/^[A-Za-z0-9_-]{22}$/.test(s.keyCheck)) return bad();
  if (typeof s.regions !== 'object' || s.regions === null || Array.isArray(s.regions)) return bad();
  const regions: Record<string, KmsRegionState> = {};
  for (const [region, value] of Object.entries(s.regions as Record<string, unknown>)) {
    if (!/^[a-z0-9][a-z0-9-]{0,31}$/.test(region) || typeof value !== 'object' || value === null) return bad();
    const { current, destroyed } = value as { current?: unknown; destroyed?: unknown };
    if (typeof current !== 'number' || !Number.isInteger(current) || current < 1 || current > 2 ** 31 - 1) return bad();
    if (!Array.isArray(destroyed)) return bad();
    const seen = new Set<number>();
    for (const v of destroyed) {
      if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v >= current || seen.has(v)) return bad();
      seen.add(v);
    }
    regions[region] = { current, destroyed: [...seen].sort((a, b) => a - b) };
  }
  return { format: 1, keyCheck: s.keyCheck, regions };
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

/** The local provider; made by `openLocalKms`. */
class LocalKms implements Kms {
  readonly provider = 'local' as const;
  #master: KeyObject | undefined;
  readonly #keyCheck: string;
  readonly #store: KmsStateStore;
  #regions = new Map<string, RegionVersions>();
  /** Derived KEKs by `region:version`; wiped on close. */
  readonly #keks = new Map<string, Buffer>();
  readonly #queue = new SerialQueue();

  constructor(master: KeyObject, store: KmsStateStore) {
    this.#master = master;
    this.#keyCheck = keyCheckOf(master);
    this.#store = store;
  }

  /** Loads the state, or saves a new one on first start. */
  async start(): Promise<void> {
    const state = await this.#load();
    if (state === undefined) await this.#save(new Map());
  }

  async wrap(region: string, dataKey: Uint8Array, context: KmsContext): Promise<string> {
    checkRegion(region);
    checkDataKey(dataKey);
    checkContext(context);
    return this.#queue.run(async () => {
      this.#checkOpen();
      let versions = this.#regions.get(region);
      if (versions === undefined) {
        await this.#load();
        versions = this.#regions.get(region);
        if (versions === undefined) {
          await this.#save(withRegion(this.#regions, region, { current: 1, destroyed: new Set() }));
          versions = this.#regions.get(region)!;
        }
      }
      return this.#seal({ provider: 'local', region, kekVersion: versions.current }, dataKey, context);
    });
  }

  async unwrap(wrapped: string, context: KmsContext): Promise<Uint8Array> {
    this.#checkOpen();
    try {
      const parsed = parseWrappedKey(wrapped);
      const aad = wrapAad(parsed, context);
      if (parsed.provider !== 'local' || aad === undefined) throw new KmsUnwrapError();
      if (!this.#usable(parsed.region, parsed.kekVersion)) {
        // Another process sharing this state may have rotated since it was read.
        await this.#queue.run(() => this.#load());
        if (!this.#usable(parsed.region, parsed.kekVersion)) throw new KmsUnwrapError();
      }
      const kek = this.#kek(parsed.region, parsed.kekVersion);
      const decipher = createDecipheriv('aes-256-gcm', kek, parsed.iv, { authTagLength: WRAP_TAG_BYTES });
      decipher.setAAD(aad);
      decipher.setAuthTag(parsed.sealed.subarray(DATA_KEY_BYTES));
      const key = Buffer.concat([decipher.update(parsed.sealed.subarray(0, DATA_KEY_BYTES)), decipher.final()]);
      if (key.length !== DATA_KEY_BYTES) throw new KmsUnwrapError();
      const out = new Uint8Array(key);
      key.fill(0);
      return out;
    } catch (error) {
      if (error instanceof BulkheadError && error.code === 'KMS_UNAVAILABLE') throw error;
      throw new KmsUnwrapError();
    }
  }

  async rewrap(wrapped: string, context: KmsContext): Promise<string> {
    const dataKey = await this.unwrap(wrapped, context);
    try {
      return await this.wrap(parseWrappedKey(wrapped).region, dataKey, context);
    } finally {
      dataKey.fill(0);
    }
  }

  async rotateKek(region: string): Promise<number> {
    checkRegion(region);
    return this.#queue.run(async () => {
      this.#checkOpen();
      await this.#load();
      const before = this.#regions.get(region);
      const next = (before?.current ?? 0) + 1;
      checkKekVersion(next);
      await this.#save(withRegion(this.#regions, region, { current: next, destroyed: new Set(before?.destroyed ?? []) }));
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
      await this.#save(withRegion(this.#regions, region, { current: versions.current, destroyed: new Set([...versions.destroyed, version]) }));
      const cached = this.#keks.get(`${region}:${version}`);
      cached?.fill(0);
      this.#keks.delete(`${region}:${version}`);
    });
  }

  async close(): Promise<void> {
    await this.#queue.run(() => {
      for (const kek of this.#keks.values()) kek.fill(0);
      this.#keks.clear();
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

  #seal(info: WrappedKeyInfo, dataKey: Uint8Array, context: KmsContext): string {
    const iv = randomBytes(WRAP_IV_BYTES);
    const cipher = createCipheriv('aes-256-gcm', this.#kek(info.region, info.kekVersion), iv, { authTagLength: WRAP_TAG_BYTES });
    cipher.setAAD(wrapAad(info, context)!);
    const sealed = Buffer.concat([cipher.update(dataKey), cipher.final(), cipher.getAuthTag()]);
    return formatWrappedKey(info, iv, sealed);
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
    this.#regions = regions;
    return state;
  }

  /** Saves `regions` and adopts them only once the save succeeded. */
  async #save(regions: Map<string, RegionVersions>): Promise<void> {
    const state: KmsState = {
      format: 1,
      keyCheck: this.#keyCheck,
      regions: Object.fromEntries(
        [...regions].map(([region, r]) => [region, { current: r.current, destroyed: [...r.destroyed].sort((a, b) => a - b) }]),
      ),
    };
    await this.#store.save(state);
    this.#regions = regions;
  }
}

/** A copy of `regions` with one region replaced. */
function withRegion(regions: Map<string, RegionVersions>, region: string, versions: RegionVersions): Map<string, RegionVersions> {
  const copy = new Map(regions);
  copy.set(region, versions);
  return copy;
}
