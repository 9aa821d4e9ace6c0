import { BulkheadError, ERROR_CODES, type ErrorCode } from '../errors.js';

/** The HTTP status of every error code. The core never decides a status; this table does. */
export const HTTP_STATUS: Readonly<Record<ErrorCode, number>> = Object.freeze({
  REQUEST_INVALID: 400,
  REQUEST_INVALID_JSON: 400,
  REQUEST_BODY_TOO_LARGE: 413,
  REQUEST_UNSUPPORTED_MEDIA_TYPE: 415,
  ROUTE_NOT_FOUND: 404,
  AUTH_REQUIRED: 401,
  AUTH_TOKEN_INVALID: 401,
  AUTH_TENANT_INACTIVE: 401,
  ACCESS_DENIED: 403,
  TENANT_NOT_FOUND: 404,
  TENANT_INVALID: 400,
  TENANT_SLUG_TAKEN: 409,
  COLLECTION_NOT_FOUND: 404,
  COLLECTION_INVALID: 400,
  COLLECTION_CHANGED: 409,
  RECORD_NOT_FOUND: 404,
  RECORD_INVALID: 400,
  RECORD_UNIQUE_VIOLATION: 409,
  RECORD_REFERENCE_NOT_FOUND: 400,
  QUERY_INVALID: 400,
  QUERY_CURSOR_INVALID: 400,
  PLACEMENT_CELL_UNKNOWN: 400,
  PLACEMENT_NO_CELL: 409,
  RESIDENCY_VIOLATION: 409,
  RESIDENCY_LEGAL_BASIS_REQUIRED: 400,
  TENANT_WRITES_PAUSED: 503,
  MOVE_INVALID: 400,
  MOVE_IN_PROGRESS: 409,
  MOVE_NOT_FOUND: 404,
  MOVE_CHECKSUM_MISMATCH: 500,
  CRYPTO_DECRYPT_FAILED: 500,
  CRYPTO_KEY_INVALID: 500,
  KMS_UNWRAP_FAILED: 500,
  KMS_KEY_FILE_INSECURE: 500,
  KMS_CONFIG_INVALID: 500,
  KMS_KEK_NOT_FOUND: 500,
  KMS_TENANT_KEY_DESTROYED: 409,
  KEY_ROTATION_NOT_FOUND: 404,
  TENANT_ERASE_INVALID: 400,
  TENANT_ERASE_NOT_SCHEDULED: 409,
  TENANT_ERASE_TOO_LATE: 409,
  TENANT_BUSY: 409,
  KMS_UNAVAILABLE: 503,
  KMS_INPUT_INVALID: 500,
  AUDIT_EVENT_INVALID: 500,
  AUDIT_CHAIN_BROKEN: 500,
  AUDIT_CHECKPOINT_INVALID: 500,
  AUDIT_KEY_FILE_INSECURE: 500,
  AUDIT_KEY_INVALID: 500,
  AUDIT_WITNESS_UNAVAILABLE: 503,
  STORE_UNAVAILABLE: 503,
  CONFIG_INVALID: 500,
  INTERNAL: 500,
});

/** An RFC 9457 problem document with Bulkhead's stable `code`. */
export interface Problem {
  readonly type: string;
  readonly title: string;
  readonly status: number;
  readonly code: ErrorCode;
  readonly detail: string;
  readonly instance?: string;
  readonly field?: string;
  readonly requestId?: string;
}

/** Where each code is documented; `type` is a stable URI per code. */
export const PROBLEM_TYPE_BASE = 'https://bulkhead.dev/problems/';

/**
 * Renders an error as problem+json. Unknown errors become INTERNAL with a fixed detail: their
 * messages can carry SQL or tenant data and are logged, never returned.
 */
export function toProblem(error: unknown, requestId?: string): Problem {
  const known = error instanceof BulkheadError;
  const code: ErrorCode = known ? error.code : 'INTERNAL';
  const status = HTTP_STATUS[code];
  // Database failures are BulkheadErrors too, but their message names only the SQLSTATE; keep it out anyway.
  const detail =
    !known || code === 'INTERNAL'
      ? 'an internal error occurred; the request id identifies it in the server log'
      : code === 'STORE_UNAVAILABLE'
        ? 'the store could not complete the request; retry later'
        : error.message;
  const field = known && typeof error.details?.field === 'string' ? (error.details.field as string) : undefined;
  return {
    type: `${PROBLEM_TYPE_BASE}${code.toLowerCase().replace(/_/g, '-')}`,
    title: ERROR_CODES[code],
    status,
    code,
    detail,
    ...(field ? { field } : {}),
    ...(requestId ? { requestId } : {}),
  };
}
