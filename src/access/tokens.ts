/**
 * Tenant tokens: JWTs issued by the platform's identity provider (or minted by Bulkhead for
 * development) that carry the subject, the tenant and its roles. The tenant of a request comes
 * only from here (SPEC principle 2), so every check fails closed and every failure looks the same.
 */
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { SignJWT, createRemoteJWKSet, errors as joseErrors, jwtVerify } from 'jose';
import type { JWTPayload, JWTVerifyOptions, JWSAlgorithm } from 'jose';
import { AuthenticationError, BulkheadError, InvalidRequestError } from '../errors.js';
import { TENANT_ROLES } from './principal.js';
import type { Principal, TenantRole } from './principal.js';

/**
 * The one message of every rejected token, whatever check failed, so a caller cannot probe
 * which part of a forged token was right (as jose's `JWEDecryptionFailed`). The reason goes to `cause`.
 */
export const TOKEN_INVALID_MESSAGE = 'the token is not valid; obtain a new token and retry';

/** Longest token accepted, checked before any parsing so an oversized header costs nothing. */
export const MAX_TOKEN_LENGTH = 8 * 1024;

/** Longest `sub` accepted; the subject is copied into every audit event. */
export const MAX_SUBJECT_LENGTH = 256;

/** Longest lifetime of a minted token (30 days). */
export const MAX_MINT_TTL_SECONDS = 86_400 * 30;

/** Default number of verified tokens kept in the cache. */
export const DEFAULT_TOKEN_CACHE_SIZE = 10_000;

/** Largest clock tolerance accepted: skew beyond minutes is a broken clock, not skew. */
const MAX_CLOCK_TOLERANCE_SECONDS = 300;
const MAX_CACHE_SIZE = 1_000_000;
/** RFC 7518 §3.2: an HS256 key MUST be at least as long as the hash output (256 bits). */
const MIN_SECRET_BYTES = 32;
const HMAC_ALGORITHMS: JWSAlgorithm[] = ['HS256'];
const JWKS_ALGORITHMS: JWSAlgorithm[] = ['RS256', 'EdDSA', 'ES256'];

/** A JWS compact serialization with a non-empty signature; anything else is rejected before hashing. */
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;
/** A canonical lowercase RFC 9562 UUID (versions 1–8, variant 10xx); excludes the nil and max UUIDs. */
const CANONICAL_UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[1-8][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
/** C0 controls, DEL and C1 controls: a subject carrying them could forge lines in logs. */
const CONTROL_CHARACTERS = /[\u0000-\u001f\u007f-\u009f]/;
const KNOWN_ROLES: ReadonlySet<string> = new Set(TENANT_ROLES);

/** The tenant principal a verified token yields. */
export type TenantPrincipal = Extract<Principal, { kind: 'tenant' }>;

/** How a `TokenVerifier` checks tokens. Exactly one of `secret` and `jwksUrl`. */
export interface TokenVerifierOptions {
  /** Shared HS256 secret, at least 32 bytes. Copied at construction. */
  secret?: Uint8Array;
  /** JWKS URL of the identity provider (RS256, EdDSA, ES256). HTTPS, or HTTP on a loopback host only. */
  jwksUrl?: string;
  /** Required `iss`. */
  issuer: string;
  /** Required `aud` (one of its values when it is an array). */
  audience: string;
  /** Skew allowed on `exp` and `nbf`, in seconds, 0–300. Default 0. */
  clockToleranceSeconds?: number;
  /** Verified tokens kept in memory; 0 disables the cache. Default 10,000. */
  cacheSize?: number;
  /** Milliseconds since the epoch; injected by tests so no test has to sleep. Default `Date.now`. */
  now?: () => number;
}

interface CacheEntry {
  readonly principal: TenantPrincipal;
  readonly expMs: number;
  readonly nbfMs: number;
}

type KeySource = Uint8Array | ReturnType<typeof createRemoteJWKSet>;

/**
 * Verifies tenant JWTs and turns them into principals. Measured here, `jwtVerify` HS256 costs
 * ~80–100 µs, most of a request's ~125 µs budget at 8,000 req/s, so verified tokens are cached by
 * their SHA-256 (a hit measured ~3 µs, hashing and `await` included); a cached entry is never
 * served at or after its `exp` nor before its `nbf`, and failures are never cached.
 */
export class TokenVerifier {
  readonly #options: Readonly<Required<Pick<TokenVerifierOptions, 'issuer' | 'audience' | 'clockToleranceSeconds' | 'cacheSize'>>>;
  readonly #key: KeySource;
  readonly #verifyOptions: Readonly<JWTVerifyOptions>;
  readonly #now: () => number;
  readonly #cache = new Map<string, CacheEntry>();

  constructor(options: TokenVerifierOptions) {
    if (typeof options !== 'object' || options === null) {
      throw configError('TokenVerifier options must be an object with issuer, audience and one of secret or jwksUrl', 'options');
    }
    const { secret, jwksUrl, issuer, audience } = options;
    if ((secret === undefined) === (jwksUrl === undefined)) {
      throw configError('TokenVerifier needs exactly one of secret (HS256) or jwksUrl (RS256, EdDSA, ES256)', 'secret');
    }
    checkNonEmptyString(issuer, 'issuer');
    checkNonEmptyString(audience, 'audience');
    const clockToleranceSeconds = options.clockToleranceSeconds ?? 0;
    if (!Number.isInteger(clockToleranceSeconds) || clockToleranceSeconds < 0 || clockToleranceSeconds > MAX_CLOCK_TOLERANCE_SECONDS) {
      throw configError(`clockToleranceSeconds must be an integer between 0 and ${MAX_CLOCK_TOLERANCE_SECONDS}`, 'clockToleranceSeconds');
    }
    const cacheSize = options.cacheSize ?? DEFAULT_TOKEN_CACHE_SIZE;
    if (!Number.isInteger(cacheSize) || cacheSize < 0 || cacheSize > MAX_CACHE_SIZE) {
      throw configError(`cacheSize must be an integer between 0 and ${MAX_CACHE_SIZE}`, 'cacheSize');
    }
    if (options.now !== undefined && typeof options.now !== 'function') {
      throw configError('now must be a function returning milliseconds since the epoch', 'now');
    }

    if (secret !== undefined) {
      this.#key = copySecret(secret, 'secret');
    } else {
      this.#key = createRemoteJWKSet(parseJwksUrl(jwksUrl));
    }
    this.#options = Object.freeze({ issuer, audience, clockToleranceSeconds, cacheSize });
    this.#verifyOptions = Object.freeze({
      algorithms: secret !== undefined ? HMAC_ALGORITHMS : JWKS_ALGORITHMS,
      issuer,
      audience,
      clockTolerance: clockToleranceSeconds,
      requiredClaims: ['exp'],
    });
    this.#now = options.now ?? Date.now;
  }

  /**
   * Verifies a bearer token and returns its tenant principal (frozen). Every failure, from a
   * malformed string to an unknown role or an unreachable JWKS, throws `AUTH_TOKEN_INVALID`
   * with `TOKEN_INVALID_MESSAGE`; the reason is in `cause`, for logs only.
   */
  async verify(token: string): Promise<TenantPrincipal> {
    if (typeof token !== 'string' || token.length > MAX_TOKEN_LENGTH || !COMPACT_JWS.test(token)) {
      throw invalid(new Error('not a JWS compact serialization of at most 8 KiB'));
    }
    const cacheKey = this.#options.cacheSize > 0 ? createHash('sha256').update(token).digest('base64') : undefined;
    if (cacheKey !== undefined) {
      const hit = this.#cache.get(cacheKey);
      if (hit !== undefined) {
        const now = this.#now();
        // The tolerance never extends a cached entry: past its exp it is dropped and the token
        // goes through full verification again, exactly as if it had never been cached.
        if (now < hit.expMs && now >= hit.nbfMs) return hit.principal;
        this.#cache.delete(cacheKey);
      }
    }

    const now = this.#now();
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, this.#key, { ...this.#verifyOptions, currentDate: new Date(now) }));
    } catch (error) {
      throw invalid(sanitize(error));
    }
    const principal = principalFrom(payload);

    if (cacheKey !== undefined) {
      // jose has checked that exp is a number; nbf, when present, too.
      const expMs = (payload.exp as number) * 1000;
      const nbfMs = typeof payload.nbf === 'number' ? payload.nbf * 1000 : Number.NEGATIVE_INFINITY;
      // Only tokens valid without the tolerance are cached, so the cache never accepts more than jose.
      if (now < expMs && now >= nbfMs) {
        if (!this.#cache.has(cacheKey) && this.#cache.size >= this.#options.cacheSize) {
          const oldest = this.#cache.keys().next();
          if (oldest.done !== true) this.#cache.delete(oldest.value);
        }
        this.#cache.set(cacheKey, { principal, expMs, nbfMs });
      }
    }
    return principal;
  }
}

/** Options of `mintTenantToken`. */
export interface MintTenantTokenOptions {
  secret: Uint8Array;
  issuer: string;
  audience: string;
  tenantId: string;
  subject: string;
  roles: readonly TenantRole[];
  ttlSeconds: number;
}

/**
 * Mints an HS256 tenant token for development and tests (`POST /v1/tenants/{id}/tokens`);
 * production tokens come from the platform's identity provider. Its input is checked with the
 * same rules as `TokenVerifier`, so a minted token always verifies under the same secret.
 * A random `jti` lets two tokens minted in the same second be told apart in the audit trail.
 */
export async function mintTenantToken(opts: MintTenantTokenOptions): Promise<{ token: string; expiresAt: string }> {
  if (typeof opts !== 'object' || opts === null) {
    throw configError('mintTenantToken options must be an object', 'options');
  }
  const secret = copySecret(opts.secret, 'secret');
  checkNonEmptyString(opts.issuer, 'issuer');
  checkNonEmptyString(opts.audience, 'audience');
  if (!isCanonicalUuid(opts.tenantId)) {
    throw new InvalidRequestError('tenantId must be a lowercase canonical UUID', { field: 'tenantId' });
  }
  if (!isValidSubject(opts.subject)) {
    throw new InvalidRequestError(
      `sub must be a non-empty string of at most ${MAX_SUBJECT_LENGTH} characters without control characters`,
      { field: 'sub' },
    );
  }
  const roles = normalizeRoles(opts.roles);
  if (roles === undefined) {
    throw new InvalidRequestError(`roles must be an array of tenant roles (${TENANT_ROLES.join(', ')})`, { field: 'roles' });
  }
  const { ttlSeconds } = opts;
  if (!Number.isInteger(ttlSeconds) || ttlSeconds < 1 || ttlSeconds > MAX_MINT_TTL_SECONDS) {
    throw new InvalidRequestError(`ttlSeconds must be an integer between 1 and ${MAX_MINT_TTL_SECONDS} (30 days)`, {
      field: 'ttlSeconds',
    });
  }

  const iat = Math.floor(Date.now() / 1000);
  const exp = iat + ttlSeconds;
  const token = await new SignJWT({ tenant: opts.tenantId, roles: [...roles] })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setIssuer(opts.issuer)
    .setAudience(opts.audience)
    .setSubject(opts.subject)
    .setIssuedAt(iat)
    .setExpirationTime(exp)
    .setJti(randomUUID())
    .sign(secret);
  return { token, expiresAt: new Date(exp * 1000).toISOString() };
}

/** A fresh HS256 secret: 32 random bytes, the minimum RFC 7518 §3.2 allows for HS256. */
export function generateJwtSecret(): Uint8Array {
  return new Uint8Array(randomBytes(MIN_SECRET_BYTES));
}

function principalFrom(payload: JWTPayload): TenantPrincipal {
  const { sub } = payload;
  if (!isValidSubject(sub)) throw invalid(new Error('the "sub" claim is missing or malformed'));
  const tenant = payload['tenant'];
  if (!isCanonicalUuid(tenant)) throw invalid(new Error('the "tenant" claim is not a lowercase canonical UUID'));
  const roles = normalizeRoles(payload['roles']);
  if (roles === undefined) throw invalid(new Error('the "roles" claim is not an array of known tenant roles'));
  return Object.freeze({ kind: 'tenant', tenantId: tenant, subject: sub, roles, authMethod: 'jwt' });
}

function isCanonicalUuid(value: unknown): value is string {
  return typeof value === 'string' && CANONICAL_UUID.test(value);
}

function isValidSubject(value: unknown): value is string {
  return typeof value === 'string' && value.length > 0 && value.length <= MAX_SUBJECT_LENGTH && !CONTROL_CHARACTERS.test(value);
}

/**
 * The known roles of `value` without duplicates, in `TENANT_ROLES` order (so equal role sets are
 * equal arrays, which keeps decision caches keyed on roles small); `undefined` when `value` is not
 * an array or holds anything but a known role: an unknown role fails closed, it is not ignored.
 */
function normalizeRoles(value: unknown): readonly TenantRole[] | undefined {
  if (!Array.isArray(value)) return undefined;
  const seen = new Set<string>();
  for (const role of value as unknown[]) {
    if (typeof role !== 'string' || !KNOWN_ROLES.has(role)) return undefined;
    seen.add(role);
  }
  return Object.freeze(TENANT_ROLES.filter((role) => seen.has(role)));
}

function checkNonEmptyString(value: unknown, field: string): asserts value is string {
  if (typeof value !== 'string' || value.length === 0) throw configError(`${field} must be a non-empty string`, field);
}

function copySecret(secret: unknown, field: string): Uint8Array {
  if (!(secret instanceof Uint8Array) || secret.byteLength < MIN_SECRET_BYTES) {
    throw configError(
      `${field} must be a Uint8Array of at least ${MIN_SECRET_BYTES} bytes; create one with generateJwtSecret()`,
      field,
    );
  }
  return new Uint8Array(secret);
}

/** A plain-HTTP JWKS could be swapped by anyone on the path, and its keys decide every tenant. */
function parseJwksUrl(value: unknown): URL {
  let url: URL;
  try {
    if (typeof value !== 'string') throw new TypeError('not a string');
    url = new URL(value);
  } catch {
    throw configError('jwksUrl must be an absolute https:// URL', 'jwksUrl');
  }
  const loopback = url.hostname === 'localhost' || url.hostname === '[::1]' || /^127(?:\.\d{1,3}){3}$/.test(url.hostname);
  if (url.protocol !== 'https:' && !(url.protocol === 'http:' && loopback)) {
    throw configError('jwksUrl must use https:// (http:// is accepted only for a loopback host)', 'jwksUrl');
  }
  return url;
}

function configError(message: string, field: string): BulkheadError {
  return new BulkheadError('CONFIG_INVALID', message, { details: { field } });
}

function invalid(cause: Error): AuthenticationError {
  return new AuthenticationError('AUTH_TOKEN_INVALID', TOKEN_INVALID_MESSAGE, cause);
}

/**
 * jose's claim errors carry the whole claims set (`payload`) and parse errors chain the offending
 * input, so the cause keeps only name, code and message (jose's name claims, never their values).
 */
function sanitize(error: unknown): Error {
  if (error instanceof joseErrors.JOSEError) {
    return Object.assign(new Error(error.message), { name: error.name, code: error.code });
  }
  if (error instanceof Error) {
    return Object.assign(new Error(error.message), { name: error.name });
  }
  return new Error('token verification failed');
}
