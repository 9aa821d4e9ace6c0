/**
 * The key-management interface: data keys are wrapped (encrypted) under a key-encryption key
 * (KEK) of a region, and only the wrapped form is ever stored. Each region has its own KEK,
 * versioned: wrapping uses the newest version, unwrapping accepts every version that has not been
 * destroyed, and rotating a KEK re-wraps data keys only (the data they protect is not touched).
 *
 * A tenant may also have a key-encryption key of its own in a region (a "tenant key"), made on
 * its first `wrapForTenant`. It exists only in the KMS, so destroying it (`destroyTenantKey`)
 * makes every data key ever wrapped under it unreadable, including copies in old database dumps:
 * crypto-shredding, as with a per-tenant AWS KMS key scheduled for deletion.
 *
 * Providers (`local-kms.ts`, `pkcs11-kms.ts`) implement `Kms`; this file holds what they share:
 * the wrapped-key formats, the associated data bound into every wrap, and the uniform unwrap error.
 */
import { randomBytes } from 'node:crypto';
import { BulkheadError } from '../errors.js';
import { isUuid } from '../ids.js';

/** The providers Bulkhead ships. */
export type KmsProvider = 'local' | 'pkcs11';

/** Length of a data key (AES-256) and of every KEK, in bytes. */
export const DATA_KEY_BYTES = 32;
/** Length of the AES-GCM IV of a wrap: 96 bits, the size GCM is specified for (NIST SP 800-38D 8.2). */
export const WRAP_IV_BYTES = 12;
/** Length of the AES-GCM tag of a wrap: the full 128 bits. */
export const WRAP_TAG_BYTES = 16;

/**
 * Associated data bound into a wrap, such as `{ tenant: '<uuid>', dataKeyVersion: '3' }`.
 * Unwrapping needs exactly the same entries (order does not matter), so a wrapped key copied to
 * another tenant, or to another version slot of the same tenant, fails to unwrap. At least one
 * entry; at most 16; names are identifiers of up to 64 characters, values strings of up to 256.
 */
export type KmsContext = Readonly<Record<string, string>>;

/** What a key wrapped under a region's KEK (`bhk1`) says about itself; none of it is secret. */
export interface RegionWrappedKeyInfo {
  readonly kind: 'region';
  readonly provider: KmsProvider;
  readonly region: string;
  readonly kekVersion: number;
}

/** What a key wrapped under a tenant's own key (`bht1`) says about itself; none of it is secret. */
export interface TenantWrappedKeyInfo {
  readonly kind: 'tenant';
  readonly provider: KmsProvider;
  readonly region: string;
  readonly tenantId: string;
  /** The id of the tenant key that wrapped it (`TenantKeyInfo.keyId`). */
  readonly keyId: string;
}

/**
 * What a wrapped key says about itself, told apart by `kind`. A tenant wrap has no KEK version:
 * a rotation sweep over region KEK versions must skip it (rotating the region KEK does not touch it).
 */
export type WrappedKeyInfo = RegionWrappedKeyInfo | TenantWrappedKeyInfo;

/** The state of a tenant's key in a region, and its non-secret id. */
export interface TenantKeyInfo {
  /** `absent` before the first `wrapForTenant`; `destroyed` for good after `destroyTenantKey`. */
  readonly state: 'absent' | 'active' | 'destroyed';
  /** The key's id; absent when no key was ever made (also for a tenant destroyed before it had one). */
  readonly keyId?: string;
}

/** What `destroyTenantKey` reports, for the erasure certificate; nothing in it is secret. */
export interface TenantKeyDestruction {
  /** The id of the key destroyed, or null when the tenant never had a key in the region. */
  readonly keyId: string | null;
  /** When the key was destroyed (ISO 8601, UTC); on a repeated call, the time of the first. */
  readonly destroyedAt: string;
  /** True when the tenant key had already been destroyed before this call. */
  readonly alreadyDestroyed: boolean;
}

/**
 * A key-management service holding one versioned KEK per region. Methods are async because a
 * provider may sit behind a device or a network; every failure is a BulkheadError with a `KMS_*`
 * code, and every failure to unwrap is the one `KMS_UNWRAP_FAILED` error whatever its reason.
 */
export interface Kms {
  /** Which provider this is; it is also recorded in every wrapped key. */
  readonly provider: KmsProvider;
  /**
   * Wraps a 32-byte data key under the newest KEK of `region` (making version 1 on a region's first
   * use) and returns the wrapped key (format in `formatWrappedKey`).
   */
  wrap(region: string, dataKey: Uint8Array, context: KmsContext): Promise<string>;
  /**
   * Unwraps a key made by `wrap` or `wrapForTenant` with the same `context`; any failure, a
   * destroyed tenant key included, is `KMS_UNWRAP_FAILED`.
   */
  unwrap(wrapped: string, context: KmsContext): Promise<Uint8Array>;
  /**
   * Unwraps under the key's own KEK version and wraps again under its region's newest version, with
   * a fresh IV. Run it over every wrapped data key after `rotateKek`, then destroy the old version.
   * A tenant wrap is wrapped again under the same tenant key, with a fresh IV.
   */
  rewrap(wrapped: string, context: KmsContext): Promise<string>;
  /** Makes a new KEK version for `region` and returns its number; new wraps use it from now on. */
  rotateKek(region: string): Promise<number>;
  /** The KEK versions of `region` that can still unwrap, ascending; the last is the one wraps use. Empty before first use. */
  kekVersions(region: string): Promise<readonly number[]>;
  /**
   * Destroys an old KEK version: keys still wrapped under it can no longer be unwrapped. The
   * newest version cannot be destroyed (rotate first), so wrapping always has a key.
   */
  destroyKekVersion(region: string, version: number): Promise<void>;
  /**
   * Wraps a 32-byte data key under the tenant's own key-encryption key in `region`, making that
   * key on first use. Refused with KMS_TENANT_KEY_DESTROYED once the tenant key was destroyed.
   * `tenantId` is a canonical lower-case UUID; it is bound into the wrap besides `context`, and a
   * `tenant` entry of `context`, when there is one, must be the same id.
   */
  wrapForTenant(region: string, tenantId: string, dataKey: Uint8Array, context: KmsContext): Promise<string>;
  /**
   * Destroys the tenant's key-encryption key in `region`: every key ever wrapped under it can no
   * longer be unwrapped, by this process or any other, including copies taken earlier. Idempotent
   * (a second call, or a tenant that never had a key, still records the tenant as destroyed so
   * later wraps are refused). Returns a non-secret description for the erasure certificate.
   */
  destroyTenantKey(region: string, tenantId: string): Promise<TenantKeyDestruction>;
  /** The state and non-secret id of the tenant's key in `region`, read from the KMS itself. */
  tenantKeyInfo(region: string, tenantId: string): Promise<TenantKeyInfo>;
  /** Forgets key material held in memory and releases the provider (sessions, library). */
  close(): Promise<void>;
}

/**
 * The one error of every failed unwrap: a malformed or truncated wrapped key, another provider or
 * region, an unknown or destroyed KEK version, a different context, a flipped bit. Its message is
 * fixed and it carries no cause, so neither a caller nor a log learns which check failed.
 */
export class KmsUnwrapError extends BulkheadError {
  constructor() {
    super('KMS_UNWRAP_FAILED', 'the wrapped data key cannot be unwrapped');
    this.name = 'KmsUnwrapError';
  }
}

/** The refusal of `wrapForTenant` once the tenant's key was destroyed (its tenant was erased). */
export class TenantKeyDestroyedError extends BulkheadError {
  constructor() {
    super(
      'KMS_TENANT_KEY_DESTROYED',
      "the tenant's key-encryption key was destroyed when the tenant was erased; no data key can be wrapped for it any more",
    );
    this.name = 'TenantKeyDestroyedError';
  }
}

/** 32 random bytes from the operating system's CSPRNG: a new AES-256 data key. */
export function generateDataKey(): Uint8Array {
  return new Uint8Array(randomBytes(DATA_KEY_BYTES));
}

/** A tenant key id: 32 lower-case hex digits (128 random bits), unique across keys and tenants. */
const TENANT_KEY_ID = /^[0-9a-f]{32}$/;

/** A new random tenant key id. */
export function newTenantKeyId(): string {
  return randomBytes(16).toString('hex');
}

/** True for a well-formed tenant key id. */
export function isTenantKeyId(value: unknown): value is string {
  return typeof value === 'string' && TENANT_KEY_ID.test(value);
}

/** Region names as the placement layer spells them (lower-case, digits, `-`, at most 32). */
const REGION = /^[a-z0-9][a-z0-9-]{0,31}$/;
const CONTEXT_KEY = /^[A-Za-z][A-Za-z0-9_.-]{0,63}$/;
const MAX_CONTEXT_ENTRIES = 16;
const MAX_CONTEXT_VALUE = 256;
/** Largest KEK version: fits PKCS#11 labels and any integer column. */
export const MAX_KEK_VERSION = 2 ** 31 - 1;

/** Checks a region argument; a bad one is a bug of the caller, reported as KMS_INPUT_INVALID. */
export function checkRegion(region: unknown): string {
  if (typeof region !== 'string' || !REGION.test(region)) {
    throw new BulkheadError('KMS_INPUT_INVALID', 'the region must be a lower-case region name such as eu or us-east');
  }
  return region;
}

/** Checks a KEK version argument (an integer from 1 to 2^31-1). */
export function checkKekVersion(version: unknown): number {
  if (typeof version !== 'number' || !Number.isInteger(version) || version < 1 || version > MAX_KEK_VERSION) {
    throw new BulkheadError('KMS_INPUT_INVALID', 'the KEK version must be an integer from 1 to 2147483647');
  }
  return version;
}

/** Checks a tenant id argument: a canonical lower-case UUID, as tenant ids are everywhere. */
export function checkTenantId(tenantId: unknown): string {
  if (!isUuid(tenantId)) {
    throw new BulkheadError('KMS_INPUT_INVALID', 'the tenant id must be a canonical lower-case UUID');
  }
  return tenantId;
}

/**
 * Checks the context given to `wrapForTenant`: a valid context whose `tenant` entry, if it has one,
 * names the same tenant. Wrapping tenant A's data key under tenant B's key would shred it with B.
 */
export function checkTenantContext(tenantId: string, context: unknown): KmsContext {
  const checked = checkContext(context);
  if (Object.hasOwn(checked, 'tenant') && checked.tenant !== tenantId) {
    throw new BulkheadError('KMS_INPUT_INVALID', 'the tenant entry of the KMS context names another tenant than the tenant key');
  }
  return checked;
}

/** Checks the data key to wrap: exactly 32 bytes. */
export function checkDataKey(dataKey: unknown): Uint8Array {
  if (!(dataKey instanceof Uint8Array) || dataKey.length !== DATA_KEY_BYTES) {
    throw new BulkheadError('KMS_INPUT_INVALID', `the data key must be ${DATA_KEY_BYTES} bytes (use generateDataKey())`);
  }
  return dataKey;
}

/**
 * The context as a canonical list of `[name, value]` pairs sorted by name, or undefined when it is
 * not a valid context. Sorting makes `{a, b}` and `{b, a}` the same associated data.
 */
function canonicalContext(context: unknown): [string, string][] | undefined {
  if (typeof context !== 'object' || context === null || Array.isArray(context)) return undefined;
  const proto = Object.getPrototypeOf(context);
  if (proto !== Object.prototype && proto !== null) return undefined;
  const entries = Object.entries(context as Record<string, unknown>);
  if (entries.length === 0 || entries.length > MAX_CONTEXT_ENTRIES) return undefined;
  const pairs: [string, string][] = [];
  for (const [name, value] of entries) {
    if (!CONTEXT_KEY.test(name) || typeof value !== 'string' || value.length > MAX_CONTEXT_VALUE) return undefined;
    pairs.push([name, value]);
  }
  return pairs.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

/** Checks a context given to `wrap` (where a bad one is the caller's bug, not a failed unwrap). */
export function checkContext(context: unknown): KmsContext {
  if (canonicalContext(context) === undefined) {
    throw new BulkheadError(
      'KMS_INPUT_INVALID',
      `the KMS context must be a plain object of 1 to ${MAX_CONTEXT_ENTRIES} string entries (names like tenant or dataKeyVersion, values of at most ${MAX_CONTEXT_VALUE} characters)`,
    );
  }
  return context as KmsContext;
}

/**
 * The associated data of a wrap, the UTF-8 of a JSON array with the context sorted by name:
 * `["bhk1", provider, region, kekVersion, [[name, value], ...]]` for a region wrap, and
 * `["bht1", provider, region, tenantId, keyId, [[name, value], ...]]` for a tenant wrap.
 * Binding every header field as well as the context means that editing any field of a wrapped
 * key's header makes the GCM tag fail, even where the key alone would not differ.
 * Returns undefined for an invalid context (the caller turns that into its own error).
 */
export function wrapAad(info: WrappedKeyInfo, context: unknown): Buffer | undefined {
  const pairs = canonicalContext(context);
  if (pairs === undefined) return undefined;
  const header =
    info.kind === 'region'
      ? [FORMAT, info.provider, info.region, info.kekVersion]
      : [TENANT_FORMAT, info.provider, info.region, info.tenantId, info.keyId];
  return Buffer.from(JSON.stringify([...header, pairs]), 'utf8');
}

const FORMAT = 'bhk1';
const TENANT_FORMAT = 'bht1';
/** The longest wrapped key accepted: the width of the database column that stores them. */
export const MAX_WRAPPED_KEY_CHARS = 512;
/** IV, encrypted key and tag: 60 bytes, exactly 80 base64url characters. */
const PAYLOAD_BYTES = WRAP_IV_BYTES + DATA_KEY_BYTES + WRAP_TAG_BYTES;
const WRAPPED = /^bhk1:(local|pkcs11):([a-z0-9][a-z0-9-]{0,31}):([1-9][0-9]{0,9}):([A-Za-z0-9_-]{80})$/;
const TENANT_WRAPPED =
  /^bht1:(local|pkcs11):([a-z0-9][a-z0-9-]{0,31}):([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}):([0-9a-f]{32}):([A-Za-z0-9_-]{80})$/;

/**
 * Formats a wrapped key: one ASCII line of `:`-separated fields, in one of two versioned formats.
 *
 *     bhk1:<provider>:<region>:<kekVersion>:<payload>            under a region KEK
 *     bhk1:local:eu:2:Jx4…(80 characters)
 *     bht1:<provider>:<region>:<tenantId>:<keyId>:<payload>      under a tenant key
 *     bht1:pkcs11:eu:0192f7c8-…:5f0c…(32 hex digits):Jx4…(80 characters)
 *
 * - `provider`: `local` or `pkcs11`, the provider that holds the KEK;
 * - `region`: the region whose KEK (or whose tenant key) wrapped the key;
 * - `kekVersion`: the KEK version, a decimal integer without leading zeros, 1 to 2^31-1;
 * - `tenantId`: the tenant, a canonical lower-case UUID; `keyId`: its key's id, 32 hex digits;
 * - `payload`: base64url without padding of IV (12 bytes) ‖ encrypted data key (32 bytes) ‖
 *   GCM tag (16 bytes): always 80 characters.
 *
 * The cipher is AES-256-GCM under the KEK with the associated data of `wrapAad`. It is text so it
 * fits any column (at most 195 characters, under `MAX_WRAPPED_KEY_CHARS`), and self-describing so
 * a rotation sweep can find keys on an old version, and an erasure the keys of a tenant key,
 * (`describeWrappedKey`) without unwrapping them.
 */
export function formatWrappedKey(info: WrappedKeyInfo, iv: Uint8Array, sealed: Uint8Array): string {
  if (iv.length !== WRAP_IV_BYTES || sealed.length !== DATA_KEY_BYTES + WRAP_TAG_BYTES) {
    throw new BulkheadError('KMS_INPUT_INVALID', 'a wrap produced a payload of the wrong length');
  }
  const payload = Buffer.concat([iv, sealed]).toString('base64url');
  return info.kind === 'region'
    ? `${FORMAT}:${info.provider}:${info.region}:${info.kekVersion}:${payload}`
    : `${TENANT_FORMAT}:${info.provider}:${info.region}:${info.tenantId}:${info.keyId}:${payload}`;
}

/** A wrapped key taken apart: its header and its IV and sealed key (encrypted key ‖ tag). */
export type ParsedWrappedKey = WrappedKeyInfo & {
  readonly iv: Buffer;
  /** The encrypted data key followed by the 16-byte GCM tag. */
  readonly sealed: Buffer;
};

/** Splits an 80-character payload into IV and sealed key. */
function payloadOf(text: string): { iv: Buffer; sealed: Buffer } {
  const bytes = Buffer.from(text, 'base64url');
  if (bytes.length !== PAYLOAD_BYTES) throw new KmsUnwrapError();
  return { iv: bytes.subarray(0, WRAP_IV_BYTES), sealed: bytes.subarray(WRAP_IV_BYTES) };
}

/** Parses a wrapped key of either format; anything malformed is the uniform `KMS_UNWRAP_FAILED`. */
export function parseWrappedKey(wrapped: unknown): ParsedWrappedKey {
  if (typeof wrapped !== 'string' || wrapped.length > MAX_WRAPPED_KEY_CHARS) throw new KmsUnwrapError();
  const m = WRAPPED.exec(wrapped);
  if (m) {
    const kekVersion = Number(m[3]);
    if (kekVersion > MAX_KEK_VERSION) throw new KmsUnwrapError();
    return { kind: 'region', provider: m[1] as KmsProvider, region: m[2]!, kekVersion, ...payloadOf(m[4]!) };
  }
  const t = TENANT_WRAPPED.exec(wrapped);
  if (t) {
    return { kind: 'tenant', provider: t[1] as KmsProvider, region: t[2]!, tenantId: t[3]!, keyId: t[4]!, ...payloadOf(t[5]!) };
  }
  throw new KmsUnwrapError();
}

/**
 * `Kms.rewrap` as an unwrap and a wrap through the provider's own methods: under the region's
 * newest KEK, or again under the same tenant key, with a fresh IV either way. The data key is
 * wiped from memory when done, also on a failure.
 */
export async function rewrapByUnwrapping(kms: Kms, wrapped: string, context: KmsContext): Promise<string> {
  const dataKey = await kms.unwrap(wrapped, context);
  try {
    const parsed = parseWrappedKey(wrapped);
    return parsed.kind === 'tenant'
      ? await kms.wrapForTenant(parsed.region, parsed.tenantId, dataKey, context)
      : await kms.wrap(parsed.region, dataKey, context);
  } finally {
    dataKey.fill(0);
  }
}

/**
 * What a wrapped key names, without unwrapping it: `kind` `region` with its provider, region and
 * KEK version (what a rotation sweep needs to pick the keys still on an old version), or `tenant`
 * with its provider, region, tenant and tenant key id. Malformed → `KMS_UNWRAP_FAILED`.
 */
export function describeWrappedKey(wrapped: string): WrappedKeyInfo {
  const parsed = parseWrappedKey(wrapped);
  const { provider, region } = parsed;
  return Object.freeze(
    parsed.kind === 'region'
      ? { kind: 'region' as const, provider, region, kekVersion: parsed.kekVersion }
      : { kind: 'tenant' as const, provider, region, tenantId: parsed.tenantId, keyId: parsed.keyId },
  );
}

/**
 * Runs async operations one at a time, in call order: KEK versions are read, changed and
 * persisted as one step, so two rotations at once cannot both take the same number.
 */
export class SerialQueue {
  #tail: Promise<unknown> = Promise.resolve();

  /** Runs `fn` after every operation queued before it has settled. */
  run<T>(fn: () => Promise<T> | T): Promise<T> {
    const next = this.#tail.then(() => fn());
    this.#tail = next.catch(() => undefined);
    return next;
  }
}
