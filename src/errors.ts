/**
 * Every failure Bulkhead reports has a stable, namespaced `code`. The HTTP layer decides
 * the status (see `src/http/problem.ts`); `docs/errors.md` documents every code, and
 * `test/errors.test.ts` checks that the three agree both ways.
 *
 * Messages say what to do and never carry tenant data, field values or SQL parameters.
 */

/** The registry of error codes: code → a short title shown in problem+json. */
export const ERROR_CODES = {
  REQUEST_INVALID: 'The request is invalid',
  REQUEST_INVALID_JSON: 'The request body is not valid JSON',
  REQUEST_BODY_TOO_LARGE: 'The request body is too large',
  REQUEST_UNSUPPORTED_MEDIA_TYPE: 'The request body must be application/json',
  ROUTE_NOT_FOUND: 'No such route',
  AUTH_REQUIRED: 'Authentication is required',
  AUTH_TOKEN_INVALID: 'The token is not valid',
  AUTH_TENANT_INACTIVE: 'The token names no active tenant',
  ACCESS_DENIED: 'The operation is not allowed',
  TENANT_NOT_FOUND: 'No such tenant',
  TENANT_INVALID: 'The tenant definition is invalid',
  TENANT_SLUG_TAKEN: 'The tenant slug is already taken',
  COLLECTION_NOT_FOUND: 'No such collection',
  COLLECTION_INVALID: 'The collection definition is invalid',
  COLLECTION_CHANGED: 'The collection definition changed during the request',
  RECORD_NOT_FOUND: 'No such record',
  RECORD_INVALID: 'The record does not match its collection',
  RECORD_UNIQUE_VIOLATION: 'A unique field already has this value in the tenant',
  RECORD_REFERENCE_NOT_FOUND: 'A reference field names no record of the tenant',
  QUERY_INVALID: 'The query is invalid',
  QUERY_CURSOR_INVALID: 'The cursor is invalid',
  PLACEMENT_CELL_UNKNOWN: 'No such storage cell',
  PLACEMENT_NO_CELL: 'No storage cell serves the region',
  RESIDENCY_VIOLATION: 'The placement is outside the tenant region',
  RESIDENCY_LEGAL_BASIS_REQUIRED: 'A region change needs a legal basis',
  TENANT_WRITES_PAUSED: 'Writes to the tenant are paused for a moment',
  MOVE_INVALID: 'The move request is invalid',
  MOVE_IN_PROGRESS: 'The tenant is already being moved',
  MOVE_NOT_FOUND: 'No such move',
  MOVE_CHECKSUM_MISMATCH: 'The copied data does not match the source',
  CRYPTO_DECRYPT_FAILED: 'An encrypted value could not be decrypted',
  CRYPTO_KEY_INVALID: 'A key given to a cryptographic operation is invalid',
  KMS_UNWRAP_FAILED: 'A wrapped data key could not be unwrapped',
  KMS_KEY_FILE_INSECURE: 'The KMS key file is open to other users',
  KMS_CONFIG_INVALID: 'The KMS configuration is invalid',
  KMS_KEK_NOT_FOUND: 'The key-encryption key is missing',
  KMS_UNAVAILABLE: 'The KMS is unavailable',
  KMS_INPUT_INVALID: 'A KMS operation was called with invalid input',
  KMS_TENANT_KEY_DESTROYED: 'The tenant key-encryption key was destroyed',
  KEY_ROTATION_NOT_FOUND: 'No such key rotation',
  TENANT_ERASE_INVALID: 'The erasure request is invalid',
  TENANT_ERASE_NOT_SCHEDULED: 'No erasure of the tenant is scheduled',
  TENANT_ERASE_TOO_LATE: 'The erasure has already begun',
  TENANT_BUSY: 'Another operation on the tenant is in progress',
  AUDIT_EVENT_INVALID: 'The audit event is invalid',
  AUDIT_CHAIN_BROKEN: 'The audit chain does not verify',
  AUDIT_CHECKPOINT_INVALID: 'An audit checkpoint is invalid',
  AUDIT_KEY_FILE_INSECURE: 'The audit signing key file is open to other users',
  AUDIT_KEY_INVALID: 'The audit signing key is unusable',
  AUDIT_WITNESS_UNAVAILABLE: 'The audit witness cannot be written',
  STORE_UNAVAILABLE: 'The store is unavailable',
  CONFIG_INVALID: 'The configuration is invalid',
  INTERNAL: 'Internal error',
} as const;

/** A stable error code. */
export type ErrorCode = keyof typeof ERROR_CODES;

/** Base of every Bulkhead error: a stable `code` and a message safe to show to the caller. */
export class BulkheadError extends Error {
  readonly code: ErrorCode;
  /** Structured, non-sensitive details (field names, limits), never values. */
  readonly details: Readonly<Record<string, unknown>> | undefined;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; details?: Record<string, unknown> }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'BulkheadError';
    this.code = code;
    this.details = options?.details ? Object.freeze({ ...options.details }) : undefined;
  }
}

/** Writes to a tenant are paused while a move switches it over; retry after `retryAfterSeconds`. */
export class WritesPausedError extends BulkheadError {
  readonly retryAfterSeconds: number;
  /** Set when the database refused the write because the router's placement entry is outdated. */
  readonly stalePlacement: boolean;

  constructor(retryAfterSeconds: number, options: { cause?: unknown; stalePlacement?: boolean } = {}) {
    super('TENANT_WRITES_PAUSED', 'the tenant is being moved and takes no writes for a moment; retry after the Retry-After delay', options.cause === undefined ? undefined : { cause: options.cause });
    this.retryAfterSeconds = Math.max(1, Math.ceil(retryAfterSeconds));
    this.stalePlacement = options.stalePlacement ?? false;
  }
}

/**
 * A field ciphertext that cannot be decrypted, whatever the reason: a wrong or missing key, a
 * value moved from another record, field, collection or tenant, tampering, truncation, an unknown
 * format or key version. One fixed message and no cause, so that no answer tells which check
 * failed (jose's JWEDecryptionFailed). The request fails closed.
 */
export class DecryptionFailedError extends BulkheadError {
  constructor() {
    super('CRYPTO_DECRYPT_FAILED', 'a stored encrypted value could not be decrypted; nothing was returned; report the request id to the operator');
  }
}

/** A key handed to a cryptographic operation that is malformed (wrong length or type, or a bad version): a server bug. */
export class KeyInvalidError extends BulkheadError {
  constructor(message: string) {
    super('CRYPTO_KEY_INVALID', message);
  }
}

/** Bad input: names the offending field or parameter, never echoes its value. */
export class InvalidRequestError extends BulkheadError {
  constructor(message: string, details?: Record<string, unknown>) {
    super('REQUEST_INVALID', message, details ? { details } : undefined);
  }
}

/** The caller is not authenticated (no token, a bad token, or a token for no active tenant). */
export class AuthenticationError extends BulkheadError {
  constructor(code: 'AUTH_REQUIRED' | 'AUTH_TOKEN_INVALID' | 'AUTH_TENANT_INACTIVE', message: string, cause?: unknown) {
    super(code, message, cause === undefined ? undefined : { cause });
  }
}

/** The central decision point refused the operation. */
export class AccessDeniedError extends BulkheadError {
  constructor(message = 'the principal is not allowed to perform this operation') {
    super('ACCESS_DENIED', message);
  }
}

/** A thing that does not exist, or that the caller may not know exists (same answer either way). */
export class NotFoundError extends BulkheadError {
  constructor(code: 'TENANT_NOT_FOUND' | 'COLLECTION_NOT_FOUND' | 'RECORD_NOT_FOUND' | 'ROUTE_NOT_FOUND' | 'MOVE_NOT_FOUND' | 'KEY_ROTATION_NOT_FOUND', message: string) {
    super(code, message);
  }
}

/** A record that does not validate against its collection definition. */
export class RecordInvalidError extends BulkheadError {
  constructor(message: string, details?: Record<string, unknown>) {
    super('RECORD_INVALID', message, details ? { details } : undefined);
  }
}

/** A collection definition that is not acceptable. */
export class CollectionInvalidError extends BulkheadError {
  constructor(message: string, details?: Record<string, unknown>) {
    super('COLLECTION_INVALID', message, details ? { details } : undefined);
  }
}

/** A list query (filter, sort, limit) that cannot be compiled. */
export class QueryInvalidError extends BulkheadError {
  constructor(message: string, details?: Record<string, unknown>) {
    super('QUERY_INVALID', message, details ? { details } : undefined);
  }
}

/** The SQLSTATE classes the core distinguishes; everything else is `other`. */
export type DatabaseErrorKind = 'unique' | 'not_null' | 'foreign_key' | 'check' | 'insufficient_privilege' | 'other';

/**
 * A database error, sorted by SQLSTATE and wrapped with `cause`. Its message never includes
 * the server's detail text, which can quote row values.
 */
export class DatabaseError extends BulkheadError {
  readonly kind: DatabaseErrorKind;
  readonly sqlState: string | undefined;
  /** Index of the statement in a batch that failed, when known. */
  readonly statementIndex: number | undefined;

  constructor(cause: unknown, statementIndex?: number) {
    const sqlState = typeof (cause as { code?: unknown })?.code === 'string' ? (cause as { code: string }).code : undefined;
    super('STORE_UNAVAILABLE', `database error${sqlState ? ` (SQLSTATE ${sqlState})` : ''}`, { cause });
    this.name = 'DatabaseError';
    this.sqlState = sqlState;
    this.kind = kindOf(sqlState);
    this.statementIndex = statementIndex;
  }
}

/**
 * The SQLSTATE of an error raised by a PostgreSQL server (five digits or capitals in `code`);
 * undefined for anything else, such as a socket error (`ECONNRESET`) or a JavaScript error.
 */
export function sqlStateOf(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null | undefined)?.code;
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) ? code : undefined;
}

function kindOf(sqlState: string | undefined): DatabaseErrorKind {
  switch (sqlState) {
    case '23505': return 'unique';
    case '23502': return 'not_null';
    case '23503': return 'foreign_key';
    case '23514': return 'check';
    case '42501': return 'insufficient_privilege';
    default: return 'other';
  }
}
