/**
 * The `pkcs11` KMS provider: the KEKs are AES-256 secret-key objects on a PKCS#11 token (a
 * hardware security module; SoftHSM2 in tests), generated on the token, sensitive and not
 * extractable, so they never leave it. Wrapping and unwrapping are CKM_AES_GCM encryption and
 * decryption performed by the token, with a 96-bit IV from Node and the associated data of
 * `wrapAad` (provider, region, KEK version and the caller's context).
 *
 * The token is the only record of which KEK versions exist: version n of region r is the object
 * labelled `bulkhead-kek-<r>-v<n>`. Destroying a version destroys the object, after which keys
 * wrapped under it can never be unwrapped again, by anyone.
 *
 * A tenant's own key in region r is an AES-256 object labelled `bulkhead-tenant-<uuid>-<r>` (its
 * key id in CKA_ID), generated on the token like a KEK and not copyable either. Destroying it
 * first stores a data object `bulkhead-tenant-destroyed-<uuid>-<r>` recording the destruction,
 * then destroys every key object of that label: from the marker on, wraps are refused, and a crash
 * between the two steps leaves a refusal, never a tenant who could get a fresh key.
 *
 * Calls into the module are synchronous on purpose: a PKCS#11 session runs one operation at a time
 * (an encrypt is C_EncryptInit then C_Encrypt), and doing both in one turn of the event loop keeps
 * operations of concurrent requests from interleaving on the shared session without a lock. On a
 * local token one call takes microseconds.
 */
import { randomBytes } from 'node:crypto';
import type * as Pkcs11Js from 'pkcs11js';
import { BulkheadError } from '../errors.js';
import {
  DATA_KEY_BYTES,
  KmsUnwrapError,
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
  type TenantKeyDestruction,
  type TenantKeyInfo,
  type WrappedKeyInfo,
} from './kms.js';

/** Where Debian's softhsm2 package installs its PKCS#11 module. */
export const DEFAULT_PKCS11_MODULE = '/usr/lib/softhsm/libsofthsm2.so';

/** Options of `openPkcs11Kms`. */
export interface Pkcs11KmsOptions {
  /** Path of the PKCS#11 module (shared library); default `DEFAULT_PKCS11_MODULE`. */
  readonly module?: string;
  /** Label of the token that holds the KEKs. */
  readonly token: string;
  /** The token's user PIN. */
  readonly pin: string;
}

/** The label of the token object holding version `version` of `region`'s KEK. */
export function kekLabel(region: string, version: number): string {
  return `bulkhead-kek-${checkRegion(region)}-v${checkKekVersion(version)}`;
}

/**
 * The label of the token object holding the tenant's own key in `region`. The tenant id comes
 * first: it is a UUID, so no region name can make this label equal a destruction marker's.
 */
export function tenantKeyLabel(region: string, tenantId: string): string {
  return `bulkhead-tenant-${checkTenantId(tenantId)}-${checkRegion(region)}`;
}

/** The label of the data object recording that the tenant's key in `region` was destroyed. */
export function tenantKeyDestroyedLabel(region: string, tenantId: string): string {
  return `bulkhead-tenant-destroyed-${checkTenantId(tenantId)}-${checkRegion(region)}`;
}

type Pkcs11Namespace = typeof Pkcs11Js;
type Handle = Buffer;

/** A tenant key object on the token: its id (CKA_ID, in hex) and its handle in this process. */
interface TenantKeyObject {
  readonly keyId: string;
  readonly handle: Handle;
}

/** What the token says about a tenant's key: destroyed (with its record), or its key objects. */
type TenantKeyLookup =
  | { readonly state: 'destroyed'; readonly marker: Handle }
  | { readonly state: 'keys'; readonly keys: readonly TenantKeyObject[] };

/** A loaded module and how many open providers use it: C_Finalize runs when the last one closes. */
interface LoadedModule {
  readonly p: Pkcs11Namespace;
  readonly lib: Pkcs11Js.PKCS11;
  /** False when something else in this process had initialised the module already. */
  readonly ownsInit: boolean;
  refs: number;
}

/** A process may initialise a PKCS#11 module only once, so providers on one module share it. */
const LOADED = new Map<string, LoadedModule>();

async function acquireModule(path: string): Promise<LoadedModule> {
  const loaded = LOADED.get(path);
  if (loaded) {
    loaded.refs++;
    return loaded;
  }
  let p: Pkcs11Namespace;
  try {
    // Loaded on demand: pkcs11js is a native addon, and the local provider must not need it.
    const imported = (await import('pkcs11js')) as Pkcs11Namespace & { default?: Pkcs11Namespace };
    p = imported.default ?? imported;
  } catch (error) {
    throw new BulkheadError('KMS_UNAVAILABLE', 'the pkcs11js package cannot be loaded; reinstall the dependencies (npm ci)', { cause: error });
  }
  const again = LOADED.get(path); // another open may have loaded it during the import
  if (again) {
    again.refs++;
    return again;
  }
  const lib = new p.PKCS11();
  try {
    lib.load(path);
  } catch (error) {
    throw new BulkheadError(
      'KMS_UNAVAILABLE',
      `the PKCS#11 module ${path} cannot be loaded; install it (apt-get install softhsm2 for SoftHSM2) or set BULKHEAD_PKCS11_MODULE`,
      { cause: error },
    );
  }
  let ownsInit = true;
  try {
    lib.C_Initialize();
  } catch (error) {
    if (ckr(error) !== p.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
      lib.close();
      throw new BulkheadError('KMS_UNAVAILABLE', `the PKCS#11 module ${path} failed to initialise`, { cause: error });
    }
    ownsInit = false;
  }
  const entry: LoadedModule = { p, lib, ownsInit, refs: 1 };
  LOADED.set(path, entry);
  return entry;
}

function releaseModule(path: string, entry: LoadedModule): void {
  entry.refs--;
  if (entry.refs > 0) return;
  LOADED.delete(path);
  try {
    if (entry.ownsInit) entry.lib.C_Finalize();
  } finally {
    entry.lib.close();
  }
}

/** The CKR_* return value of a PKCS#11 error, or undefined for any other error. */
function ckr(error: unknown): number | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return error instanceof Error && error.name === 'Pkcs11Error' && typeof code === 'number' ? code : undefined;
}

/**
 * Opens the provider: loads the module, finds the token by label, opens one read-write session
 * and logs in. The session is kept and reused; `close()` closes it and finalises the module.
 */
export async function openPkcs11Kms(options: Pkcs11KmsOptions): Promise<Kms> {
  const modulePath = options.module ?? DEFAULT_PKCS11_MODULE;
  const entry = await acquireModule(modulePath);
  try {
    const { lib } = entry;
    let slots: Handle[];
    try {
      slots = lib.C_GetSlotList(true).filter((slot) => lib.C_GetTokenInfo(slot).label.trimEnd() === options.token);
    } catch (error) {
      throw new BulkheadError('KMS_UNAVAILABLE', 'the PKCS#11 module cannot list its tokens', { cause: error });
    }
    if (slots.length === 0) {
      throw new BulkheadError('KMS_UNAVAILABLE', `no PKCS#11 token is labelled ${options.token}; check BULKHEAD_PKCS11_TOKEN and that the token is initialised`);
    }
    if (slots.length > 1) throw new BulkheadError('KMS_CONFIG_INVALID', `more than one PKCS#11 token is labelled ${options.token}; give each a distinct label`);
    const kms = new Pkcs11Kms(modulePath, entry, slots[0]!, options.pin);
    kms.connect();
    return kms;
  } catch (error) {
    releaseModule(modulePath, entry);
    throw error;
  }
}

/** The pkcs11 provider; made by `openPkcs11Kms`. */
class Pkcs11Kms implements Kms {
  readonly provider = 'pkcs11' as const;
  readonly #modulePath: string;
  readonly #entry: LoadedModule;
  readonly #slot: Handle;
  readonly #pin: string;
  #session: Handle | undefined;
  #closed = false;
  /**
   * The newest version of each region seen by this process. If the token no longer holds it, wraps
   * are refused rather than silently made under an older version.
   */
  readonly #newest = new Map<string, number>();
  /**
   * Handles of tenant keys found or made by this process, by `region/tenant`, so that wraps and
   * unwraps under a known tenant key do not search the token. Dropped on destroy, when the token
   * reports the handle invalid, when the session is reopened, and on close.
   */
  readonly #tenantKeys = new Map<string, TenantKeyObject>();
  /** Tenants whose key this process saw destroyed: destruction is final, refused without a search. */
  readonly #destroyedTenants = new Set<string>();

  constructor(modulePath: string, entry: LoadedModule, slot: Handle, pin: string) {
    this.#modulePath = modulePath;
    this.#entry = entry;
    this.#slot = slot;
    this.#pin = pin;
  }

  /** Opens the session and logs in, so that a wrong PIN is reported at start. */
  connect(): void {
    this.#openSession();
  }

  async wrap(region: string, dataKey: Uint8Array, context: KmsContext): Promise<string> {
    checkRegion(region);
    checkDataKey(dataKey);
    checkContext(context);
    this.#checkOpen();
    return this.#call((session) => {
      const { p, lib } = this.#entry;
      let versions = this.#versions(session, region);
      if (versions.size === 0 && !this.#newest.has(region)) {
        this.#generate(session, region, 1);
        versions = this.#versions(session, region);
      }
      const current = Math.max(0, ...versions.keys());
      const newest = this.#newest.get(region);
      if (current === 0 || (newest !== undefined && newest > current)) {
        throw new BulkheadError(
          'KMS_KEK_NOT_FOUND',
          `the newest KEK of region ${region} is missing on the PKCS#11 token; rotate the KEK (a new version) before wrapping`,
        );
      }
      const handles = versions.get(current)!;
      if (handles.length !== 1) {
        throw new BulkheadError('KMS_KEK_NOT_FOUND', `the PKCS#11 token holds ${handles.length} objects labelled ${kekLabel(region, current)}; remove the duplicates`);
      }
      this.#newest.set(region, current);
      return this.#encrypt(session, handles[0]!, { kind: 'region', provider: 'pkcs11', region, kekVersion: current }, dataKey, context);
    });
  }

  async unwrap(wrapped: string, context: KmsContext): Promise<Uint8Array> {
    this.#checkOpen();
    try {
      const parsed = parseWrappedKey(wrapped);
      const aad = wrapAad(parsed, context);
      if (parsed.provider !== 'pkcs11' || aad === undefined) throw new KmsUnwrapError();
      return this.#call((session) => {
        const { p, lib } = this.#entry;
        const decrypt = (handle: Handle): Uint8Array => {
          lib.C_DecryptInit(session, { mechanism: p.CKM_AES_GCM, parameter: this.#gcm(parsed.iv, aad) }, handle);
          const key = lib.C_Decrypt(session, parsed.sealed, Buffer.alloc(parsed.sealed.length + 16));
          if (key.length !== DATA_KEY_BYTES) throw new KmsUnwrapError();
          const out = new Uint8Array(key);
          key.fill(0);
          return out;
        };
        if (parsed.kind === 'region') {
          const handles = this.#find(session, kekLabel(parsed.region, parsed.kekVersion));
          if (handles.length !== 1) throw new KmsUnwrapError();
          return decrypt(handles[0]!);
        }
        const slot = `${parsed.region}/${parsed.tenantId}`;
        if (this.#destroyedTenants.has(slot)) throw new KmsUnwrapError();
        const known = this.#tenantKeys.get(slot);
        if (known !== undefined && known.keyId === parsed.keyId) {
          try {
            return decrypt(known.handle);
          } catch (error) {
            // Destroyed by another process since it was found: look again, which sees the marker.
            if (!this.#handleInvalid(error)) throw error;
            this.#tenantKeys.delete(slot);
          }
        }
        const found = this.#lookupTenantKey(session, parsed.region, parsed.tenantId);
        if (found.state === 'destroyed') throw new KmsUnwrapError();
        const match = found.keys.find((k) => k.keyId === parsed.keyId);
        if (match === undefined) throw new KmsUnwrapError();
        if (match === found.keys[0]) this.#tenantKeys.set(slot, match); // the key wraps use
        return decrypt(match.handle);
      });
    } catch (error) {
      // An unreachable token says nothing about the wrapped key; every other failure is uniform.
      if (error instanceof BulkheadError && error.code === 'KMS_UNAVAILABLE') throw error;
      throw new KmsUnwrapError();
    }
  }

  rewrap(wrapped: string, context: KmsContext): Promise<string> {
    return rewrapByUnwrapping(this, wrapped, context);
  }

  async rotateKek(region: string): Promise<number> {
    checkRegion(region);
    this.#checkOpen();
    return this.#call((session) => {
      const versions = this.#versions(session, region);
      const next = checkKekVersion(Math.max(0, this.#newest.get(region) ?? 0, ...versions.keys()) + 1);
      this.#generate(session, region, next);
      this.#newest.set(region, next);
      return next;
    });
  }

  async kekVersions(region: string): Promise<readonly number[]> {
    checkRegion(region);
    this.#checkOpen();
    return this.#call((session) => Object.freeze([...this.#versions(session, region).keys()].sort((a, b) => a - b)));
  }

  async destroyKekVersion(region: string, version: number): Promise<void> {
    checkRegion(region);
    checkKekVersion(version);
    this.#checkOpen();
    this.#call((session) => {
      const versions = this.#versions(session, region);
      const handles = versions.get(version);
      if (handles === undefined) throw new BulkheadError('KMS_KEK_NOT_FOUND', `region ${region} has no KEK version ${version} on the PKCS#11 token`);
      const current = Math.max(0, this.#newest.get(region) ?? 0, ...versions.keys());
      if (version >= current) {
        throw new BulkheadError('KMS_INPUT_INVALID', `KEK version ${version} is the newest of region ${region}; rotate the KEK and re-wrap the data keys first`);
      }
      for (const handle of handles) this.#entry.lib.C_DestroyObject(session, handle);
    });
  }

  async wrapForTenant(region: string, tenantId: string, dataKey: Uint8Array, context: KmsContext): Promise<string> {
    checkRegion(region);
    checkTenantId(tenantId);
    checkDataKey(dataKey);
    checkTenantContext(tenantId, context);
    this.#checkOpen();
    const slot = `${region}/${tenantId}`;
    if (this.#destroyedTenants.has(slot)) throw new TenantKeyDestroyedError();
    // One synchronous call: two first wraps of a tenant cannot both find no key and make one each.
    return this.#call((session) => {
      let key = this.#tenantKeys.get(slot);
      if (key !== undefined && !this.#isTenantKey(session, key, region, tenantId)) {
        this.#tenantKeys.delete(slot);
        key = undefined;
      }
      if (key === undefined) {
        const found = this.#lookupTenantKey(session, region, tenantId);
        if (found.state === 'destroyed') throw new TenantKeyDestroyedError();
        key = found.keys[0] ?? this.#generateTenantKey(session, region, tenantId);
        this.#tenantKeys.set(slot, key);
      }
      return this.#encrypt(session, key.handle, { kind: 'tenant', provider: 'pkcs11', region, tenantId, keyId: key.keyId }, dataKey, context);
    });
  }

  async destroyTenantKey(region: string, tenantId: string): Promise<TenantKeyDestruction> {
    checkRegion(region);
    checkTenantId(tenantId);
    this.#checkOpen();
    const slot = `${region}/${tenantId}`;
    return this.#call((session) => {
      const { p, lib } = this.#entry;
      const markers = this.#findData(session, tenantKeyDestroyedLabel(region, tenantId));
      const keys = this.#tenantKeyObjects(session, region, tenantId);
      let record: { keyId: string | null; destroyedAt: string } | undefined;
      if (markers.length === 0) {
        // The marker first: from here on wraps are refused even if the process dies before the keys go.
        record = { keyId: keys[0]?.keyId ?? null, destroyedAt: new Date().toISOString() };
        lib.C_CreateObject(session, [
          { type: p.CKA_CLASS, value: p.CKO_DATA },
          { type: p.CKA_TOKEN, value: true },
          { type: p.CKA_PRIVATE, value: true },
          { type: p.CKA_MODIFIABLE, value: false },
          { type: p.CKA_LABEL, value: tenantKeyDestroyedLabel(region, tenantId) },
          { type: p.CKA_APPLICATION, value: 'bulkhead' },
          { type: p.CKA_VALUE, value: Buffer.from(JSON.stringify(record), 'utf8') },
        ]);
      }
      // Also after an earlier destroy: it may have stopped between the marker and the keys, or
      // another process may have made a key since; every object of the label goes.
      for (const key of keys) lib.C_DestroyObject(session, key.handle);
      this.#tenantKeys.delete(slot);
      this.#destroyedTenants.add(slot);
      record ??= this.#readMarker(session, markers[0]!);
      return Object.freeze({ keyId: record.keyId, destroyedAt: record.destroyedAt, alreadyDestroyed: markers.length > 0 });
    });
  }

  async tenantKeyInfo(region: string, tenantId: string): Promise<TenantKeyInfo> {
    checkRegion(region);
    checkTenantId(tenantId);
    this.#checkOpen();
    return this.#call((session) => {
      const found = this.#lookupTenantKey(session, region, tenantId);
      if (found.state === 'destroyed') {
        const { keyId } = this.#readMarker(session, found.marker);
        return Object.freeze(keyId === null ? { state: 'destroyed' as const } : { state: 'destroyed' as const, keyId });
      }
      const key = found.keys[0];
      return Object.freeze(key === undefined ? { state: 'absent' as const } : { state: 'active' as const, keyId: key.keyId });
    });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#tenantKeys.clear();
    this.#destroyedTenants.clear();
    // No C_Logout: the login is shared by every session of this process on the token.
    this.#closeSession();
    releaseModule(this.#modulePath, this.#entry);
  }

  #checkOpen(): void {
    if (this.#closed) throw new BulkheadError('KMS_UNAVAILABLE', 'the KMS is closed');
  }

  #gcm(iv: Buffer, aad: Buffer): Pkcs11Js.GcmParams {
    return { type: this.#entry.p.CK_PARAMS_GCM, iv, ivBits: WRAP_IV_BYTES * 8, aad, tagBits: WRAP_TAG_BYTES * 8 };
  }

  /** Wraps `dataKey` on the token under `handle`, with a fresh IV, into the format of `info`. */
  #encrypt(session: Handle, handle: Handle, info: WrappedKeyInfo, dataKey: Uint8Array, context: KmsContext): string {
    const { p, lib } = this.#entry;
    const iv = randomBytes(WRAP_IV_BYTES);
    lib.C_EncryptInit(session, { mechanism: p.CKM_AES_GCM, parameter: this.#gcm(iv, wrapAad(info, context)!) }, handle);
    const sealed = lib.C_Encrypt(session, Buffer.from(dataKey), Buffer.alloc(DATA_KEY_BYTES + WRAP_TAG_BYTES + 16));
    return formatWrappedKey(info, iv, sealed);
  }

  #handleInvalid(error: unknown): boolean {
    const code = ckr(error);
    return code === this.#entry.p.CKR_OBJECT_HANDLE_INVALID || code === this.#entry.p.CKR_KEY_HANDLE_INVALID;
  }

  /**
   * Whether a remembered handle still names the tenant's key: one attribute read, cheaper than a
   * search, and done before each wrap because a wrap under a wrong key would lose the data key.
   * (SoftHSM2 invalidates the handle of an object another process destroyed; a token that reuses
   * handle numbers would show another label or id here.)
   */
  #isTenantKey(session: Handle, key: TenantKeyObject, region: string, tenantId: string): boolean {
    const { p, lib } = this.#entry;
    try {
      const [label, id] = lib.C_GetAttributeValue(session, key.handle, [{ type: p.CKA_LABEL }, { type: p.CKA_ID }]);
      return label?.value.toString('utf8') === tenantKeyLabel(region, tenantId) && id?.value.toString('hex') === key.keyId;
    } catch (error) {
      if (this.#handleInvalid(error)) return false;
      throw error;
    }
  }

  /** The tenant's key objects on the token, lowest key id first (normally one). */
  #tenantKeyObjects(session: Handle, region: string, tenantId: string): TenantKeyObject[] {
    const { p, lib } = this.#entry;
    const keys: TenantKeyObject[] = [];
    for (const handle of this.#find(session, tenantKeyLabel(region, tenantId))) {
      const [id] = lib.C_GetAttributeValue(session, handle, [{ type: p.CKA_ID }]);
      const keyId = id?.value.toString('hex') ?? '';
      if (isTenantKeyId(keyId)) keys.push({ keyId, handle });
    }
    // Two processes making a tenant's first key at once can leave two objects: both unwrap (the
    // wrapped key names its key id), wraps use the lowest id, and destruction removes both.
    return keys.sort((a, b) => (a.keyId < b.keyId ? -1 : a.keyId > b.keyId ? 1 : 0));
  }

  /** Searches the token for the tenant's destruction marker, then its key objects. */
  #lookupTenantKey(session: Handle, region: string, tenantId: string): TenantKeyLookup {
    const slot = `${region}/${tenantId}`;
    const [marker] = this.#findData(session, tenantKeyDestroyedLabel(region, tenantId));
    if (marker !== undefined) {
      this.#tenantKeys.delete(slot);
      this.#destroyedTenants.add(slot);
      return { state: 'destroyed', marker };
    }
    return { state: 'keys', keys: this.#tenantKeyObjects(session, region, tenantId) };
  }

  /** The destruction record a marker holds; a malformed one is KMS_CONFIG_INVALID. */
  #readMarker(session: Handle, marker: Handle): { keyId: string | null; destroyedAt: string } {
    const { p, lib } = this.#entry;
    const [value] = lib.C_GetAttributeValue(session, marker, [{ type: p.CKA_VALUE }]);
    let record: unknown;
    try {
      record = JSON.parse(value?.value.toString('utf8') ?? '');
    } catch {
      record = undefined;
    }
    const { keyId, destroyedAt } = (typeof record === 'object' && record !== null ? record : {}) as Record<string, unknown>;
    if ((keyId !== null && !isTenantKeyId(keyId)) || typeof destroyedAt !== 'string' || Number.isNaN(Date.parse(destroyedAt))) {
      throw new BulkheadError('KMS_CONFIG_INVALID', 'a tenant key destruction record on the PKCS#11 token is malformed; it was not written by Bulkhead');
    }
    return { keyId, destroyedAt };
  }

  /** Generates a tenant key on the token: a KEK's attributes, a random key id, and no copies. */
  #generateTenantKey(session: Handle, region: string, tenantId: string): TenantKeyObject {
    const { p, lib } = this.#entry;
    const keyId = newTenantKeyId();
    const handle = lib.C_GenerateKey(session, { mechanism: p.CKM_AES_KEY_GEN }, [
      ...this.#keyTemplate(tenantKeyLabel(region, tenantId), Buffer.from(keyId, 'hex')),
      // A copy (C_CopyObject) could take another label and outlive the destruction of this one.
      { type: p.CKA_COPYABLE, value: false },
    ]);
    return { keyId, handle };
  }

  /** Handles of the token's data objects labelled `label`. */
  #findData(session: Handle, label: string): Handle[] {
    const { p, lib } = this.#entry;
    lib.C_FindObjectsInit(session, [
      { type: p.CKA_CLASS, value: p.CKO_DATA },
      { type: p.CKA_TOKEN, value: true },
      { type: p.CKA_LABEL, value: label },
    ]);
    try {
      return lib.C_FindObjects(session, 16);
    } finally {
      lib.C_FindObjectsFinal(session);
    }
  }

  /**
   * Runs `fn` with the session. When the token reports the session gone (a token re-inserted, an
   * HSM restarted), the session is reopened and `fn` tried once more; if that fails as well the
   * error is KMS_UNAVAILABLE. Other errors pass through for the caller to sort.
   */
  #call<T>(fn: (session: Handle) => T): T {
    for (let attempt = 0; ; attempt++) {
      const session = this.#session ?? this.#openSession();
      try {
        return fn(session);
      } catch (error) {
        const code = ckr(error);
        if (code === undefined || !this.#sessionLost(code)) throw error;
        this.#closeSession();
        // A token that came back may number its objects anew: find the tenant keys again.
        this.#tenantKeys.clear();
        if (attempt >= 1) throw new BulkheadError('KMS_UNAVAILABLE', 'the PKCS#11 token is not reachable; check the HSM', { cause: error });
      }
    }
  }

  #sessionLost(code: number): boolean {
    const { p } = this.#entry;
    return [
      p.CKR_SESSION_HANDLE_INVALID,
      p.CKR_SESSION_CLOSED,
      p.CKR_USER_NOT_LOGGED_IN,
      p.CKR_DEVICE_REMOVED,
      p.CKR_DEVICE_ERROR,
      p.CKR_TOKEN_NOT_PRESENT,
      p.CKR_CRYPTOKI_NOT_INITIALIZED,
      // An operation left active by an interrupted call: a fresh session starts clean.
      p.CKR_OPERATION_ACTIVE,
    ].includes(code);
  }

  #openSession(): Handle {
    const { p, lib } = this.#entry;
    let session: Handle;
    try {
      session = lib.C_OpenSession(this.#slot, p.CKF_SERIAL_SESSION | p.CKF_RW_SESSION);
    } catch (error) {
      throw new BulkheadError('KMS_UNAVAILABLE', 'a session with the PKCS#11 token cannot be opened; check the HSM', { cause: error });
    }
    try {
      lib.C_Login(session, p.CKU_USER, this.#pin);
    } catch (error) {
      const code = ckr(error);
      if (code !== p.CKR_USER_ALREADY_LOGGED_IN) {
        try {
          lib.C_CloseSession(session);
        } catch {
          // The login failure is what the operator needs to see.
        }
        if (code === p.CKR_PIN_INCORRECT || code === p.CKR_PIN_INVALID || code === p.CKR_PIN_LEN_RANGE) {
          throw new BulkheadError('KMS_CONFIG_INVALID', 'the PKCS#11 token refused the user PIN; check BULKHEAD_PKCS11_PIN');
        }
        throw new BulkheadError('KMS_UNAVAILABLE', 'logging in to the PKCS#11 token failed (a locked or expired PIN?); check the HSM', { cause: error });
      }
    }
    this.#session = session;
    return session;
  }

  #closeSession(): void {
    const session = this.#session;
    this.#session = undefined;
    if (session === undefined) return;
    try {
      this.#entry.lib.C_CloseSession(session);
    } catch {
      // Already gone with the token; nothing to release.
    }
  }

  /** Handles of the token's AES secret keys matching `template`. */
  #findAll(session: Handle, extra: Pkcs11Js.Template): Handle[] {
    const { p, lib } = this.#entry;
    lib.C_FindObjectsInit(session, [
      { type: p.CKA_CLASS, value: p.CKO_SECRET_KEY },
      { type: p.CKA_KEY_TYPE, value: p.CKK_AES },
      { type: p.CKA_TOKEN, value: true },
      ...extra,
    ]);
    try {
      const found: Handle[] = [];
      for (;;) {
        const batch = lib.C_FindObjects(session, 64);
        if (batch.length === 0) return found;
        found.push(...batch);
      }
    } finally {
      lib.C_FindObjectsFinal(session);
    }
  }

  #find(session: Handle, label: string): Handle[] {
    return this.#findAll(session, [{ type: this.#entry.p.CKA_LABEL, value: label }]);
  }

  /** The KEK versions of `region` on the token, each with its object handles (normally one). */
  #versions(session: Handle, region: string): Map<number, Handle[]> {
    const { p, lib } = this.#entry;
    // Region names are [a-z0-9-], so the region needs no escaping; the version part is anchored at the end.
    const pattern = new RegExp(`^bulkhead-kek-${region}-v([1-9][0-9]{0,9})$`);
    const versions = new Map<number, Handle[]>();
    for (const handle of this.#findAll(session, [])) {
      const [label] = lib.C_GetAttributeValue(session, handle, [{ type: p.CKA_LABEL }]);
      const m = pattern.exec(label?.value.toString('utf8') ?? '');
      if (!m) continue;
      const version = Number(m[1]);
      versions.set(version, [...(versions.get(version) ?? []), handle]);
    }
    return versions;
  }

  /** Generates a KEK on the token: it can encrypt and decrypt, and nothing else, and never be read out. */
  #generate(session: Handle, region: string, version: number): void {
    const { p, lib } = this.#entry;
    const label = kekLabel(region, version);
    if (this.#find(session, label).length > 0) {
      throw new BulkheadError('KMS_KEK_NOT_FOUND', `the PKCS#11 token already holds an object labelled ${label}; remove it or rotate again`);
    }
    lib.C_GenerateKey(session, { mechanism: p.CKM_AES_KEY_GEN }, this.#keyTemplate(label, Buffer.from(label, 'utf8')));
  }

  /** The template of a key made on the token: it can encrypt and decrypt, and nothing else, and never be read out. */
  #keyTemplate(label: string, id: Buffer): Pkcs11Js.Template {
    const { p } = this.#entry;
    return [
      { type: p.CKA_CLASS, value: p.CKO_SECRET_KEY },
      { type: p.CKA_KEY_TYPE, value: p.CKK_AES },
      { type: p.CKA_VALUE_LEN, value: DATA_KEY_BYTES },
      { type: p.CKA_LABEL, value: label },
      { type: p.CKA_ID, value: id },
      { type: p.CKA_TOKEN, value: true },
      { type: p.CKA_PRIVATE, value: true },
      { type: p.CKA_SENSITIVE, value: true },
      { type: p.CKA_EXTRACTABLE, value: false },
      // A label that cannot be changed: an object cannot be relabelled into another KEK's place.
      { type: p.CKA_MODIFIABLE, value: false },
      { type: p.CKA_ENCRYPT, value: true },
      { type: p.CKA_DECRYPT, value: true },
      { type: p.CKA_WRAP, value: false },
      { type: p.CKA_UNWRAP, value: false },
      { type: p.CKA_SIGN, value: false },
      { type: p.CKA_VERIFY, value: false },
      { type: p.CKA_DERIVE, value: false },
    ];
  }
}
