/**
 * The audit event: what one operation leaves in the audit trail (SPEC §6, issue 5). An event
 * carries identifiers only (who, what, when, the decision, the outcome), never a field value and
 * never a secret. The constructor refuses every key outside the schema, at any depth, so a record's
 * fields, a token or a filter value cannot slip into the trail by accident: a server bug becomes a
 * refused event (AUDIT_EVENT_INVALID, and the operation fails closed), not a leak into a trail that
 * can never be edited again.
 *
 * docs/audit.md documents every field; AUDIT_EVENT_SCHEMA is the same contract as JSON Schema.
 */
import { createHash } from 'node:crypto';
import { isIP } from 'node:net';
import type { ErrorObject } from 'ajv';
import { canonicalJson } from '../crypto/encoding.js';
import { BulkheadError, ERROR_CODES, type ErrorCode } from '../errors.js';
import { compile } from '../tenancy/ajv.js';

/** How the principal authenticated: a tenant JWT, an operator token, or Bulkhead itself (a background job). */
export type AuditAuthMethod = 'jwt' | 'operator_token' | 'system';

/** The accepted authentication methods, in schema order. */
export const AUDIT_AUTH_METHODS: readonly AuditAuthMethod[] = Object.freeze(['jwt', 'operator_token', 'system']);

/** Who acted. */
export interface AuditPrincipal {
  /** The token's `sub` (or the operator token's label, or the job's name): an identifier, 1 to 256 characters. */
  readonly subject: string;
  /** The roles the principal held for this operation (tenant roles; empty for operators and jobs). At most 16. */
  readonly roles: readonly string[];
  /** How it authenticated. */
  readonly authMethod: AuditAuthMethod;
}

/** A list or query read: which query (its shape, hashed) and how many rows it returned. */
export interface AuditQuery {
  /** `sha256:` and 64 hex digits, from `queryFingerprint`: the hash of the query's shape, never of its values. */
  readonly fingerprint: string;
  /** Rows returned (reads) or touched (bulk writes). */
  readonly rowCount: number;
}

/** The central decision point's answer and the Cedar policies that made it. */
export interface AuditDecision {
  readonly effect: 'allow' | 'deny';
  /** The `@id` of every policy that determined the decision (empty: denied by default, no policy matched). At most 64. */
  readonly policyIds: readonly string[];
}

/** How the operation ended: done, refused (authentication or authorization), or failed. */
export type AuditOutcome = 'success' | 'denied' | 'error';

/** Where a tenant is placed, for operator events about placements (create, move). */
export interface AuditPlacement {
  readonly tier: 'pool' | 'bridge' | 'silo';
  readonly region: string;
  readonly cell?: string;
}

/** What only operator and system actions carry (tenant create, move, key rotation, erase). */
export interface AuditOperatorFields {
  /** The tenant the action is about, when the event is in the platform chain. */
  readonly targetTenantId?: string;
  /** The job the action started or belongs to (a move's id, an erasure's id). */
  readonly jobId?: string;
  /** Placement before a move. */
  readonly from?: AuditPlacement;
  /** Placement after a move, or of a new tenant. */
  readonly to?: AuditPlacement;
  /** The key version a rotation produced or an erasure destroyed. */
  readonly keyVersion?: number;
  /** The legal basis stated for a region change (10 to 2,000 characters, as moves take it). */
  readonly legalBasis?: string;
  /** The operator's stated reason or ticket reference (1 to 500 characters). */
  readonly reason?: string;
}

/** What `createAuditEvent` takes: the event, with `time` optional (default: now). */
export interface AuditEventInput {
  /** When the operation was decided: ISO-8601 UTC with milliseconds (`2026-11-27T10:15:30.123Z`), or a Date. */
  readonly time?: string | Date;
  /** The tenant whose chain holds the event (a canonical UUID), or null for the platform chain. */
  readonly tenantId: string | null;
  /** Who acted; null when the request could not be authenticated (such events go to the platform chain). */
  readonly principal: AuditPrincipal | null;
  /** The operation, as the decision point names it (`record.read`, `tenant.move`, `tenant.keys.rotate`). */
  readonly action: string;
  /** The collection acted on, when there is one. */
  readonly collection?: string;
  /** The records acted on (1 to 1,000 canonical UUIDs); a list read gives `query` instead. */
  readonly recordIds?: readonly string[];
  /** A list or query read: its fingerprint and row count; never together with `recordIds`. */
  readonly query?: AuditQuery;
  /** The decision and the policies that made it. */
  readonly decision: AuditDecision;
  /** The request id (`x-request-id`): `^[A-Za-z0-9._-]{1,64}$`. */
  readonly requestId: string;
  /** The client's IP address as the server saw it; null for background jobs. */
  readonly sourceAddress: string | null;
  /** How the operation ended. */
  readonly outcome: AuditOutcome;
  /** The stable error code of a `denied` or `error` outcome (required for those, absent on `success`). */
  readonly errorCode?: ErrorCode;
  /** Operator and system actions only. */
  readonly operator?: AuditOperatorFields;
}

declare const VALIDATED: unique symbol;

/**
 * A validated audit event: made only by `createAuditEvent`, deeply frozen, `time` a string. The
 * brand exists in the type alone, so only validated events type-check where the chain takes one.
 */
export type AuditEvent = Omit<AuditEventInput, 'time'> & { readonly time: string; readonly [VALIDATED]: true };

/** The keys an event may carry, at the top level (`seq` is added by the chain, see chain.ts). */
export const AUDIT_EVENT_KEYS = Object.freeze([
  'time',
  'tenantId',
  'principal',
  'action',
  'collection',
  'recordIds',
  'query',
  'decision',
  'requestId',
  'sourceAddress',
  'outcome',
  'errorCode',
  'operator',
] as const);

/** Most record ids one event names: the largest page a list returns. */
export const MAX_RECORD_IDS = 1000;

const UUID = '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$';
const IDENTIFIER = '^[a-z][a-z0-9_]{0,62}$';
const REGION = '^[a-z0-9][a-z0-9-]{0,31}$';
// Free text must survive jsonb: PostgreSQL stores neither U+0000 nor an unpaired surrogate, and an
// event the database refuses would be a request that cannot be audited.
const STORABLE_TEXT = '^[^\\u0000\\p{Cs}]*$';
const TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

const placementSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['tier', 'region'],
  properties: {
    tier: { type: 'string', enum: ['pool', 'bridge', 'silo'] },
    region: { type: 'string', pattern: REGION },
    cell: { type: 'string', pattern: REGION },
  },
} as const;

/**
 * The audit event as JSON Schema (draft 2020-12 subset that Ajv runs strictly): every object
 * closed with `additionalProperties: false`. The cross-field rules (an error code exactly when the
 * outcome is not `success`, a deny decision only with a `denied` outcome, `recordIds` or `query`
 * but not both, operator fields only for operator and system principals, a real calendar time, an
 * IP address) are checked after it by `createAuditEvent`.
 */
export const AUDIT_EVENT_SCHEMA = Object.freeze({
  type: 'object',
  additionalProperties: false,
  required: ['time', 'tenantId', 'principal', 'action', 'decision', 'requestId', 'sourceAddress', 'outcome'],
  properties: {
    time: { type: 'string', pattern: TIME.source },
    tenantId: { type: 'string', nullable: true, pattern: UUID },
    principal: {
      type: 'object',
      nullable: true,
      additionalProperties: false,
      required: ['subject', 'roles', 'authMethod'],
      properties: {
        subject: { type: 'string', minLength: 1, maxLength: 256, pattern: STORABLE_TEXT },
        roles: { type: 'array', maxItems: 16, uniqueItems: true, items: { type: 'string', pattern: IDENTIFIER } },
        authMethod: { type: 'string', enum: [...AUDIT_AUTH_METHODS] },
      },
    },
    action: { type: 'string', maxLength: 64, pattern: '^[a-z][a-zA-Z0-9]*(\\.[a-z][a-zA-Z0-9]*){1,3}$' },
    collection: { type: 'string', pattern: IDENTIFIER },
    recordIds: { type: 'array', minItems: 1, maxItems: MAX_RECORD_IDS, uniqueItems: true, items: { type: 'string', pattern: UUID } },
    query: {
      type: 'object',
      additionalProperties: false,
      required: ['fingerprint', 'rowCount'],
      properties: {
        fingerprint: { type: 'string', pattern: '^sha256:[0-9a-f]{64}$' },
        rowCount: { type: 'integer', minimum: 0, maximum: Number.MAX_SAFE_INTEGER },
      },
    },
    decision: {
      type: 'object',
      additionalProperties: false,
      required: ['effect', 'policyIds'],
      properties: {
        effect: { type: 'string', enum: ['allow', 'deny'] },
        policyIds: { type: 'array', maxItems: 64, items: { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$' } },
      },
    },
    requestId: { type: 'string', pattern: '^[A-Za-z0-9._-]{1,64}$' },
    sourceAddress: { type: 'string', nullable: true, maxLength: 45 },
    outcome: { type: 'string', enum: ['success', 'denied', 'error'] },
    errorCode: { type: 'string', enum: Object.keys(ERROR_CODES) },
    operator: {
      type: 'object',
      additionalProperties: false,
      properties: {
        targetTenantId: { type: 'string', pattern: UUID },
        jobId: { type: 'string', pattern: UUID },
        from: placementSchema,
        to: placementSchema,
        keyVersion: { type: 'integer', minimum: 1, maximum: 4294967295 },
        legalBasis: { type: 'string', minLength: 10, maxLength: 2000, pattern: STORABLE_TEXT },
        reason: { type: 'string', minLength: 1, maxLength: 500, pattern: STORABLE_TEXT },
      },
    },
  },
});

const validateSchema = compile(AUDIT_EVENT_SCHEMA as unknown as Record<string, unknown>);

/** Events made by `createAuditEvent`: the chain links nothing else (chain.ts checks). */
const made = new WeakSet<object>();

/** True when `value` is an event `createAuditEvent` made (and so validated and froze). */
export function isAuditEvent(value: unknown): value is AuditEvent {
  return typeof value === 'object' && value !== null && made.has(value);
}

function refuse(message: string, field: string): never {
  throw new BulkheadError('AUDIT_EVENT_INVALID', `audit event: ${message}`, { details: { field } });
}

/** A key as it may appear in a message: a plain name, or `(invalid name)` for anything else. */
function shownKey(key: unknown): string {
  return typeof key === 'string' && /^[A-Za-z_$][A-Za-z0-9_$]{0,63}$/.test(key) ? key : '(invalid name)';
}

/** `/principal/roles/0` → `principal.roles[0]`. */
function pathOf(instancePath: string): string {
  let out = '';
  for (const part of instancePath.split('/').slice(1)) out += /^\d+$/.test(part) ? `[${part}]` : out ? `.${shownKey(part)}` : shownKey(part);
  return out;
}

/** One message per Ajv error, naming the key at fault and never quoting its value. */
function describe(error: ErrorObject): never {
  const at = pathOf(error.instancePath);
  const where = at || 'the event';
  switch (error.keyword) {
    case 'additionalProperties': {
      const key = shownKey((error.params as { additionalProperty?: unknown }).additionalProperty);
      return refuse(`${where} has a key that is not in the audit event schema: ${key}`, at ? `${at}.${key}` : key);
    }
    case 'required': {
      const key = shownKey((error.params as { missingProperty?: unknown }).missingProperty);
      return refuse(`${where} lacks the required key ${key}`, at ? `${at}.${key}` : key);
    }
    case 'pattern':
      // The pattern itself would only confuse: say what the field must be.
      return refuse(`${where} is not in the form the audit event schema requires (see docs/audit.md)`, at);
    default:
      return refuse(`${where} ${error.message ?? 'is invalid'}`, at);
  }
}

function copyPlacement(p: AuditPlacement): AuditPlacement {
  return Object.freeze({ tier: p.tier, region: p.region, ...(p.cell !== undefined ? { cell: p.cell } : {}) });
}

/**
 * Validates `input` and returns a new, deeply frozen event holding only the schema's keys.
 * Throws AUDIT_EVENT_INVALID naming the key at fault (never its value): an unknown key anywhere,
 * a missing or malformed field, or a broken cross-field rule (see AUDIT_EVENT_SCHEMA).
 */
export function createAuditEvent(input: AuditEventInput): AuditEvent {
  if (typeof input !== 'object' || input === null || Array.isArray(input)) refuse('an event must be an object', '');
  const time = input.time === undefined ? new Date().toISOString() : input.time instanceof Date ? timeOf(input.time) : input.time;
  const candidate = { ...input, time };
  if (!validateSchema(candidate)) describe(validateSchema.errors![0]!);
  if (new Date(time).toISOString() !== time) refuse('time is not a calendar time', 'time');
  if (input.sourceAddress !== null && isIP(input.sourceAddress) === 0) refuse('sourceAddress must be an IPv4 or IPv6 address, or null', 'sourceAddress');
  if (input.outcome === 'success') {
    if (input.errorCode !== undefined) refuse('errorCode must be absent when the outcome is success', 'errorCode');
  } else if (input.errorCode === undefined) {
    refuse(`errorCode is required when the outcome is ${input.outcome}`, 'errorCode');
  }
  if (input.decision.effect === 'deny' && input.outcome !== 'denied') refuse('a deny decision must have the outcome denied', 'outcome');
  if (input.recordIds !== undefined && input.query !== undefined) refuse('recordIds and query exclude each other', 'query');
  if (input.operator !== undefined && input.principal?.authMethod !== 'operator_token' && input.principal?.authMethod !== 'system') {
    refuse('operator fields are only for operator and system principals', 'operator');
  }

  // A copy of exactly the schema's keys: what was validated is what is kept, and later changes to
  // the caller's objects cannot change what the chain hashes.
  const p = input.principal;
  const o = input.operator;
  const event = {
    time,
    tenantId: input.tenantId,
    principal: p === null ? null : Object.freeze({ subject: p.subject, roles: Object.freeze([...p.roles]), authMethod: p.authMethod }),
    action: input.action,
    ...(input.collection !== undefined ? { collection: input.collection } : {}),
    ...(input.recordIds !== undefined ? { recordIds: Object.freeze([...input.recordIds]) } : {}),
    ...(input.query !== undefined ? { query: Object.freeze({ fingerprint: input.query.fingerprint, rowCount: input.query.rowCount }) } : {}),
    decision: Object.freeze({ effect: input.decision.effect, policyIds: Object.freeze([...input.decision.policyIds]) }),
    requestId: input.requestId,
    sourceAddress: input.sourceAddress,
    outcome: input.outcome,
    ...(input.errorCode !== undefined ? { errorCode: input.errorCode } : {}),
    ...(o !== undefined
      ? {
          operator: Object.freeze({
            ...(o.targetTenantId !== undefined ? { targetTenantId: o.targetTenantId } : {}),
            ...(o.jobId !== undefined ? { jobId: o.jobId } : {}),
            ...(o.from !== undefined ? { from: copyPlacement(o.from) } : {}),
            ...(o.to !== undefined ? { to: copyPlacement(o.to) } : {}),
            ...(o.keyVersion !== undefined ? { keyVersion: o.keyVersion } : {}),
            ...(o.legalBasis !== undefined ? { legalBasis: o.legalBasis } : {}),
            ...(o.reason !== undefined ? { reason: o.reason } : {}),
          }),
        }
      : {}),
  };
  Object.freeze(event);
  made.add(event);
  return event as unknown as AuditEvent;
}

function timeOf(date: Date): string {
  if (Number.isNaN(date.getTime())) refuse('time is not a valid date', 'time');
  return date.toISOString();
}

/**
 * The fingerprint of a list query: `sha256:` and the hex SHA-256 of the canonical JSON (RFC 8785)
 * of its shape. Pass the shape only (field names, operators, sort, limit), never the filter's
 * values: a hash of a low-entropy value (a birth date, a status) is reversed by trying them all.
 */
export function queryFingerprint(shape: unknown): string {
  return `sha256:${createHash('sha256').update(canonicalJson(shape), 'utf8').digest('hex')}`;
}
