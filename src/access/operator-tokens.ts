/**
 * Operator tokens: opaque bearer secrets for the platform endpoints (`/v1/tenants*`). They are
 * high-entropy random strings, so a plain SHA-256 is enough to store them (no password hashing
 * needed), and the server keeps only the hashes.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { AuthenticationError, BulkheadError } from '../errors.js';
import type { Principal } from './principal.js';
import { TOKEN_INVALID_MESSAGE } from './tokens.js';

/** The prefix that tells an operator token from a JWT at a glance (and to secret scanners). */
export const OPERATOR_TOKEN_PREFIX = 'bho_';

/** `bho_` + 32 random bytes in unpadded base64url (43 characters). */
const OPERATOR_TOKEN = /^bho_[A-Za-z0-9_-]{43}$/;
const OPERATOR_TOKEN_HASH = /^sha256:[0-9a-f]{64}$/;
const HASH_PREFIX = 'sha256:';

/** The operator principal an operator token yields. */
export type OperatorPrincipal = Extract<Principal, { kind: 'operator' }>;

/** A new operator token: 256 random bits, so guessing one is out of reach and a fast hash suffices. */
export function generateOperatorToken(): string {
  return OPERATOR_TOKEN_PREFIX + randomBytes(32).toString('base64url');
}

/**
 * The form an operator token is stored in: `sha256:<64 hex>`. Refuses a string that is not an
 * operator token, so a mistyped `BULKHEAD_OPERATOR_TOKEN` fails at startup instead of never matching.
 */
export function hashOperatorToken(token: string): string {
  if (typeof token !== 'string' || !OPERATOR_TOKEN.test(token)) {
    throw new BulkheadError(
      'CONFIG_INVALID',
      'an operator token is "bho_" followed by 43 base64url characters; create one with generateOperatorToken()',
      { details: { field: 'operatorToken' } },
    );
  }
  return HASH_PREFIX + sha256(token).toString('hex');
}

/** Cheap test (prefix only) to route a bearer token to the operator or the tenant verifier. */
export function looksLikeOperatorToken(token: string): boolean {
  return typeof token === 'string' && token.startsWith(OPERATOR_TOKEN_PREFIX);
}

/**
 * Checks operator tokens against the stored hashes. The comparison is constant-time and visits
 * every stored hash, so timing reveals neither how much of a hash matched nor which one did.
 */
export class OperatorTokenVerifier {
  readonly #hashes: readonly { readonly digest: Buffer; readonly subject: string }[];

  /** `hashes` as made by `hashOperatorToken`; an empty list accepts no token at all. */
  constructor(hashes: readonly string[]) {
    if (!Array.isArray(hashes)) {
      throw new BulkheadError('CONFIG_INVALID', 'operator token hashes must be an array of "sha256:<64 hex>" strings', {
        details: { field: 'operatorTokenHashes' },
      });
    }
    const unique = new Set<string>();
    for (const hash of hashes as unknown[]) {
      if (typeof hash !== 'string' || !OPERATOR_TOKEN_HASH.test(hash)) {
        throw new BulkheadError(
          'CONFIG_INVALID',
          'each operator token hash must be "sha256:" followed by 64 lowercase hex digits; create it with hashOperatorToken()',
          { details: { field: 'operatorTokenHashes' } },
        );
      }
      unique.add(hash);
    }
    this.#hashes = Object.freeze(
      [...unique].map((hash) => {
        const hex = hash.slice(HASH_PREFIX.length);
        return Object.freeze({ digest: Buffer.from(hex, 'hex'), subject: `operator:${hex.slice(0, 8)}` });
      }),
    );
  }

  /**
   * Returns the operator principal of `token`, or throws `AUTH_TOKEN_INVALID` with the same fixed
   * message as a bad tenant token. A string not shaped like an operator token is refused before hashing.
   */
  verify(token: string): OperatorPrincipal {
    if (typeof token !== 'string' || !OPERATOR_TOKEN.test(token)) {
      throw new AuthenticationError('AUTH_TOKEN_INVALID', TOKEN_INVALID_MESSAGE, new Error('not an operator token'));
    }
    const digest = sha256(token);
    let subject: string | undefined;
    for (const stored of this.#hashes) {
      if (timingSafeEqual(stored.digest, digest) && subject === undefined) subject = stored.subject;
    }
    if (subject === undefined) {
      throw new AuthenticationError('AUTH_TOKEN_INVALID', TOKEN_INVALID_MESSAGE, new Error('no operator token matches'));
    }
    return Object.freeze({ kind: 'operator', subject, authMethod: 'operator_token' });
  }
}

function sha256(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest();
}
