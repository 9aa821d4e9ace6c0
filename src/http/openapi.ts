/**
 * The OpenAPI 3.1 document served at `/openapi.json`.
 *
 * Every enum and bound is taken from the constant the code enforces (field types, classifications,
 * roles, tiers, statuses, operators, query limits, error codes and their statuses), so the document
 * cannot drift from the server; `test/openapi.test.ts` checks it against the live routes, the
 * authorizer and real responses.
 */
import { TENANT_ROLES, type Action, type TenantRole } from '../access/principal.js';
import { MAX_MINT_TTL_SECONDS, MAX_SUBJECT_LENGTH } from '../access/tokens.js';
import { MAX_ERASE_GRACE_SECONDS } from '../config.js';
import { DEFAULT_KEY_CACHE_MS } from '../crypto/keyring.js';
import { ERROR_CODES, type ErrorCode } from '../errors.js';
import { CLASSIFICATIONS, COLLECTION_NAME, FIELD_NAME, FIELD_TYPES, LIMITS, type FieldType } from '../tenancy/fields.js';
import { OPERATORS, QUERY_LIMITS, type Operator } from '../tenancy/query.js';
import { HEALTH_DEFAULTS } from '../tenancy/health.js';
import { COPY_TABLES } from '../placement/copy.js';
import { PLACE_NAME } from '../placement/tier.js';
import { MOVE_STATES } from '../placement/moves.js';
import { ERASURE_STATES } from '../tenancy/erasures.js';
import { ROTATION_STATES } from '../tenancy/key-rotations.js';
import { TENANT_STATUSES, TIERS } from '../tenancy/tenants.js';
import { USAGE_DEFAULTS, USAGE_WINDOW_PATTERN } from '../tenancy/usage.js';
import { MAX_JSON_DEPTH } from '../tenancy/validation.js';
import { HTTP_STATUS } from './problem.js';

/** A JSON value as the document holds it. */
type Json = string | number | boolean | null | readonly Json[] | { readonly [key: string]: Json };
type JsonObject = { [key: string]: Json };

const ref = (kind: 'schemas' | 'parameters' | 'headers', name: string): JsonObject => ({ $ref: `#/components/${kind}/${name}` });
const schema = (name: string): JsonObject => ref('schemas', name);

/** The pattern of tenant slugs, as `src/tenancy/tenants.ts` checks them. */
const SLUG_PATTERN = '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$';
/** The pattern an incoming `x-request-id` must match to be kept, as `src/http/server.ts` checks it. */
const REQUEST_ID_PATTERN = '^[A-Za-z0-9._-]{1,64}$';
const UUID_PATTERN = '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$';
/** The pattern of cell and region names (`PLACE_NAME`, which config, tenants and moves check). */
const PLACE_NAME_PATTERN = PLACE_NAME.source;
/** A placement's location: the pool schema, a bridge schema or a silo database (the directory's CHECK). */
const LOCATION_PATTERN = '^[a-z_][a-z0-9_]{0,62}$';
/** Bounds of a move's legal basis, as `src/placement/moves.ts` and migration 3 check it. */
const LEGAL_BASIS = { min: 10, max: 2000 } as const;
/** Key versions run from 1 to 2^31 − 1 (`src/crypto/keyring.ts`; a ciphertext names its version). */
const MAX_KEY_VERSION = 2 ** 31 - 1;
/** The cache time in words, for the descriptions of rotation. */
const KEY_CACHE_NOTE = `\`BULKHEAD_KEY_CACHE_MS\`, ${DEFAULT_KEY_CACHE_MS / 1000} s by default`;
const NEEDLE_MAX = 1000;

/** What a value of each field type looks like in a record (the JSON Schema `src/tenancy/validation.ts` compiles). */
const FIELD_VALUES: Readonly<Record<FieldType, JsonObject>> = {
  string: { type: 'string', maxLength: LIMITS.stringMaxLength, description: `At most \`maxLength\` characters (default ${LIMITS.stringMaxLength}).` },
  text: { type: 'string', maxLength: LIMITS.textMaxLength, description: `At most \`maxLength\` characters (default ${LIMITS.textMaxLength}); cannot be unique, indexed or sorted.` },
  integer: { type: 'integer', minimum: Number.MIN_SAFE_INTEGER, maximum: Number.MAX_SAFE_INTEGER },
  number: { type: 'number' },
  boolean: { type: 'boolean' },
  datetime: { type: 'string', format: 'date-time', maxLength: 64, description: 'RFC 3339; stored and returned in UTC (`Z`), so values sort by time.' },
  date: { type: 'string', format: 'date' },
  json: { description: 'Any JSON value; filterable with `isNull` only, cannot be unique, indexed or sorted.' },
  reference: { type: 'string', pattern: UUID_PATTERN, description: 'The id of a record of the collection the field names, in the same tenant.' },
  enum: { type: 'string', description: 'One of the field\'s `values`.' },
  email: { type: 'string', format: 'email', maxLength: 254, description: 'Stored lower-cased.' },
};

/** The argument each filter operator takes. */
const OPERATOR_ARGUMENTS: Readonly<Record<Operator, JsonObject>> = {
  eq: { description: 'Equal to a value of the field\'s type.' },
  ne: { description: 'Not equal to (records without the field match too).' },
  lt: { description: 'Less than; not for boolean, text and json fields.' },
  lte: { description: 'Less than or equal to; not for boolean, text and json fields.' },
  gt: { description: 'Greater than; not for boolean, text and json fields.' },
  gte: { description: 'Greater than or equal to; not for boolean, text and json fields.' },
  in: { type: 'array', minItems: 1, maxItems: QUERY_LIMITS.maxInValues, description: `One of 1 to ${QUERY_LIMITS.maxInValues} values of the field's type.` },
  contains: { type: 'string', minLength: 1, maxLength: NEEDLE_MAX, description: 'Case-insensitive substring (string, text, email, enum and reference fields); `%` and `_` are plain characters.' },
  prefix: { type: 'string', minLength: 1, maxLength: NEEDLE_MAX, description: 'Starts with (string, text, email, enum and reference fields); case-sensitive.' },
  isNull: { type: 'boolean', description: '`true`: the record has no value for the field; `false`: it has one.' },
};

/** Codes any authenticated route can answer with, whatever it does. */
const AUTHENTICATED: readonly ErrorCode[] = ['AUTH_REQUIRED', 'AUTH_TOKEN_INVALID', 'AUTH_TENANT_INACTIVE', 'ACCESS_DENIED', 'STORE_UNAVAILABLE', 'INTERNAL'];
/** Codes of reading a JSON body. */
const BODY: readonly ErrorCode[] = ['REQUEST_INVALID', 'REQUEST_INVALID_JSON', 'REQUEST_BODY_TOO_LARGE', 'REQUEST_UNSUPPORTED_MEDIA_TYPE'];
/** Codes of a route that names a collection in its path. */
const COLLECTION_PATH: readonly ErrorCode[] = ['COLLECTION_INVALID', 'COLLECTION_NOT_FOUND'];
/** Codes of a record write. */
const RECORD_WRITE: readonly ErrorCode[] = ['RECORD_INVALID', 'RECORD_UNIQUE_VIOLATION', 'RECORD_REFERENCE_NOT_FOUND', 'COLLECTION_CHANGED'];
/** Codes of every route the router sends to a tenant's placement: residency is checked on each. */
const ROUTED: readonly ErrorCode[] = ['RESIDENCY_VIOLATION'];
/** Codes of a route that changes a tenant's data: refused while a move switches the tenant over. */
const DATA_WRITE: readonly ErrorCode[] = [...ROUTED, 'TENANT_WRITES_PAUSED'];
/** Codes of choosing a placement (a tenant's creation, a move's target). */
const PLACING: readonly ErrorCode[] = ['PLACEMENT_CELL_UNKNOWN', 'PLACEMENT_NO_CELL', 'RESIDENCY_VIOLATION'];
/** What a data write route says about moves. */
const PAUSE_NOTE =
  'While a move switches the tenant to its new placement, writes are refused with 503 `TENANT_WRITES_PAUSED` and a ' +
  '`Retry-After` header (whole seconds until the pause ends); reads go on.';

/**
 * The error responses of an operation: one per HTTP status, whose `code` enum lists exactly the
 * codes the operation can answer with at that status (statuses from `HTTP_STATUS`, never restated).
 */
function problems(...groups: (readonly ErrorCode[])[]): JsonObject {
  const byStatus = new Map<number, ErrorCode[]>();
  for (const code of new Set(groups.flat())) {
    const status = HTTP_STATUS[code];
    byStatus.set(status, [...(byStatus.get(status) ?? []), code]);
  }
  const out: JsonObject = {};
  for (const status of [...byStatus.keys()].sort((a, b) => a - b)) {
    const codes = byStatus.get(status)!.sort();
    out[String(status)] = {
      description: codes.map((c) => `\`${c}\`: ${ERROR_CODES[c]}.`).join(' '),
      // The server names a delay on every 503 (src/http/server.ts): a paused tenant's, else 1 s.
      headers: { 'x-request-id': ref('headers', 'RequestId'), ...(status === 503 ? { 'retry-after': ref('headers', 'RetryAfter') } : {}) },
      content: { 'application/problem+json': { schema: { ...schema('Problem'), type: 'object', properties: { code: { enum: codes } } } } },
    };
  }
  return out;
}

/** A successful JSON response. */
function ok(description: string, body: JsonObject): JsonObject {
  return { description, headers: { 'x-request-id': ref('headers', 'RequestId') }, content: { 'application/json': { schema: body } } };
}

function jsonBody(body: JsonObject): JsonObject {
  return { required: true, content: { 'application/json': { schema: body } } };
}

const OPERATOR_ONLY = [{ operatorToken: [] }];
const TENANT_ONLY = [{ tenantToken: [] }];

/** An operation on the tenant registry: the operator token only. */
function operatorOperation(action: Action, op: JsonObject): JsonObject {
  return {
    tags: ['tenants'],
    security: OPERATOR_ONLY,
    'x-bulkhead-action': action,
    ...op,
    parameters: [ref('parameters', 'RequestId'), ...((op.parameters as Json[] | undefined) ?? [])],
  };
}

/**
 * An operation on a tenant's data: a tenant token whose roles the central decision point allows
 * (`x-bulkhead-roles`, checked against the live policies by the OpenAPI test).
 */
function tenantOperation(action: Action, tag: string, roles: readonly TenantRole[], op: JsonObject): JsonObject {
  return {
    tags: [tag],
    security: TENANT_ONLY,
    'x-bulkhead-action': action,
    'x-bulkhead-roles': [...roles],
    ...op,
    description: `${op.description ? `${String(op.description)} ` : ''}Roles: ${roles.join(', ')}.`,
    parameters: [ref('parameters', 'RequestId'), ...((op.parameters as Json[] | undefined) ?? [])],
  };
}

const READERS: readonly TenantRole[] = ['tenant_admin', 'builder', 'member', 'viewer', 'auditor'];
const RECORD_READERS: readonly TenantRole[] = ['tenant_admin', 'builder', 'member', 'viewer'];
const RECORD_WRITERS: readonly TenantRole[] = ['tenant_admin', 'member'];
const BUILDERS: readonly TenantRole[] = ['tenant_admin', 'builder'];

const timestamps: JsonObject = {
  createdAt: { type: 'string', format: 'date-time' },
  updatedAt: { type: 'string', format: 'date-time' },
};

const schemas: JsonObject = {
  Problem: {
    type: 'object',
    description:
      'An RFC 9457 problem document. `code` is stable and documented in docs/errors.md; `detail` says what to do ' +
      'and never carries tenant data; `requestId` equals the `x-request-id` response header and finds the request in the server log.',
    required: ['type', 'title', 'status', 'code', 'detail'],
    properties: {
      type: { type: 'string', format: 'uri', description: 'A stable URI per code.' },
      title: { type: 'string', description: 'The fixed title of the code.' },
      status: { type: 'integer', minimum: 400, maximum: 599 },
      code: { type: 'string', enum: Object.keys(ERROR_CODES) },
      detail: { type: 'string' },
      field: { type: 'string', description: 'The field or parameter at fault, when there is one (a name, never a value).' },
      requestId: { type: 'string' },
    },
  },
  Health: {
    type: 'object',
    required: ['status', 'store'],
    properties: { status: { const: 'ok' }, store: { type: 'string', enum: ['pglite', 'postgres'] } },
  },
  Tenant: {
    type: 'object',
    required: ['id', 'slug', 'name', 'tier', 'region', 'status', 'createdAt', 'updatedAt'],
    properties: {
      id: { type: 'string', format: 'uuid', description: 'A UUIDv7.' },
      slug: { type: 'string', pattern: SLUG_PATTERN },
      name: { type: 'string' },
      tier: { type: 'string', enum: [...TIERS] },
      region: { type: 'string' },
      status: { type: 'string', enum: [...TENANT_STATUSES] },
      ...timestamps,
    },
  },
  TenantCreate: {
    type: 'object',
    additionalProperties: false,
    required: ['slug', 'name'],
    properties: {
      slug: { type: 'string', pattern: SLUG_PATTERN, maxLength: 63, description: 'Unique across the platform.' },
      name: { type: 'string', minLength: 1, maxLength: 200 },
      tier: {
        type: 'string',
        enum: [...TIERS],
        default: 'pool',
        description:
          '`pool`: the shared, hash-partitioned tables of a cell; `bridge`: a schema and a database role of the tenant\'s own; ' +
          '`silo`: a database of the tenant\'s own (a data directory of its own on the embedded store).',
      },
      region: { type: 'string', pattern: PLACE_NAME_PATTERN, description: 'One of the regions the deployment serves (`BULKHEAD_REGIONS`, or those of the cells); the first by default. Another is `TENANT_INVALID`.' },
      cell: {
        type: 'string',
        pattern: PLACE_NAME_PATTERN,
        description:
          'The storage cell to place the tenant in (`BULKHEAD_CELLS`); by default the cell of the region holding the fewest tenants. ' +
          'An unknown cell is `PLACEMENT_CELL_UNKNOWN`, a cell of another region `RESIDENCY_VIOLATION`.',
      },
    },
  },
  TenantStatusChange: {
    type: 'object',
    additionalProperties: false,
    required: ['status'],
    properties: {
      status: { type: 'string', enum: [...TENANT_STATUSES], description: 'This version changes `active` to `suspended` and back; other changes are refused with `TENANT_INVALID`.' },
    },
  },
  TenantList: { type: 'object', required: ['tenants'], properties: { tenants: { type: 'array', items: schema('Tenant') } } },
  TenantHistoryEntry: {
    type: 'object',
    required: ['seq', 'at', 'event', 'fromStatus', 'toStatus', 'actor'],
    properties: {
      seq: { type: 'integer', minimum: 1 },
      at: { type: 'string', format: 'date-time' },
      event: {
        type: 'string',
        examples: ['created', 'status', 'moved', 'erase-scheduled', 'erase-cancelled', 'erased'],
        description: '`moved`: a move switched the tenant to a new placement (the status is unchanged); `erase-scheduled`, `erase-cancelled`, `erased`: the steps of an erasure.',
      },
      fromStatus: { enum: [...TENANT_STATUSES, null] },
      toStatus: { type: 'string', enum: [...TENANT_STATUSES] },
      actor: { type: 'string' },
    },
  },
  TenantHistory: { type: 'object', required: ['history'], properties: { history: { type: 'array', items: schema('TenantHistoryEntry') } } },
  TokenMintRequest: {
    type: 'object',
    additionalProperties: false,
    required: ['sub', 'roles'],
    properties: {
      sub: { type: 'string', minLength: 1, maxLength: MAX_SUBJECT_LENGTH, description: 'The subject; no control characters.' },
      roles: { type: 'array', items: { type: 'string', enum: [...TENANT_ROLES] } },
      ttlSeconds: { type: 'integer', minimum: 1, maximum: MAX_MINT_TTL_SECONDS, default: 3600 },
    },
  },
  TokenMinted: {
    type: 'object',
    required: ['token', 'expiresAt'],
    properties: { token: { type: 'string', description: 'An HS256 tenant JWT.' }, expiresAt: { type: 'string', format: 'date-time' } },
  },
  UsageCounts: {
    type: 'object',
    required: ['reads', 'writes', 'rowsRead', 'rowsWritten'],
    properties: {
      reads: { type: 'integer', minimum: 0, description: 'Record reads (get and list) that succeeded.' },
      writes: { type: 'integer', minimum: 0, description: 'Record writes (create, update, delete) that succeeded.' },
      rowsRead: { type: 'integer', minimum: 0, description: 'Records returned by those reads.' },
      rowsWritten: { type: 'integer', minimum: 0, description: 'Records written by those writes.' },
    },
  },
  UsageBucket: {
    type: 'object',
    required: ['start', 'reads', 'writes', 'rowsRead', 'rowsWritten'],
    allOf: [schema('UsageCounts')],
    properties: { start: { type: 'string', format: 'date-time', description: 'Start of the bucket.' } },
  },
  TenantSize: {
    type: 'object',
    required: ['rows', 'bytes'],
    properties: {
      rows: { type: 'integer', minimum: 0, description: 'Records (exact count).' },
      bytes: { type: 'integer', minimum: 0, description: 'Stored size of the records\' data (sum of `pg_column_size`).' },
    },
  },
  TenantUsage: {
    type: 'object',
    required: ['tenant', 'window', 'since', 'bucketSeconds', 'totals', 'size', 'buckets'],
    properties: {
      tenant: { type: 'object', required: ['id', 'slug'], properties: { id: { type: 'string', format: 'uuid' }, slug: { type: 'string', pattern: SLUG_PATTERN } } },
      window: { type: 'string', pattern: USAGE_WINDOW_PATTERN },
      since: { type: 'string', format: 'date-time', description: 'Start of the oldest bucket of the window.' },
      bucketSeconds: { type: 'integer', minimum: 60 },
      totals: schema('UsageCounts'),
      size: schema('TenantSize'),
      buckets: { type: 'array', items: schema('UsageBucket'), description: 'The buckets of the window that saw any request, oldest first.' },
    },
  },
  TopTenant: {
    type: 'object',
    required: ['id', 'slug', 'tier', 'reads', 'writes', 'rowsRead', 'rowsWritten', 'rows', 'bytes', 'rowsShare', 'usageShare'],
    allOf: [schema('UsageCounts'), schema('TenantSize')],
    properties: {
      id: { type: 'string', format: 'uuid' },
      slug: { type: 'string', pattern: SLUG_PATTERN },
      tier: { type: 'string', enum: [...TIERS] },
      rowsShare: { type: 'number', minimum: 0, maximum: 1, description: 'Share of the pool\'s records.' },
      usageShare: { type: 'number', minimum: 0, maximum: 1, description: 'Share of the window\'s reads and writes.' },
    },
  },
  PromotionCandidate: {
    type: 'object',
    required: ['reasons'],
    allOf: [schema('TopTenant')],
    properties: {
      reasons: {
        type: 'array',
        minItems: 1,
        items: { type: 'string', enum: ['rows-share', 'usage-share', 'rows'] },
        description: '`rows-share` / `usage-share`: the share is above `thresholds.share`; `rows`: at least `thresholds.rows` records.',
      },
    },
  },
  UsageTop: {
    type: 'object',
    required: ['window', 'since', 'totals', 'thresholds', 'tenants', 'candidates'],
    properties: {
      window: { type: 'string', pattern: USAGE_WINDOW_PATTERN },
      since: { type: 'string', format: 'date-time' },
      totals: { allOf: [schema('UsageCounts'), schema('TenantSize')] },
      thresholds: {
        type: 'object',
        required: ['share', 'rows'],
        properties: { share: { type: 'number', exclusiveMinimum: 0, maximum: 1 }, rows: { type: 'integer', minimum: 1 } },
      },
      tenants: { type: 'array', items: schema('TopTenant'), description: 'By reads and writes in the window, then records, most first.' },
      candidates: {
        type: 'array',
        items: schema('PromotionCandidate'),
        description: 'Pool tenants worth promoting to a tier of their own, by their larger share, most first.',
      },
    },
  },
  PartitionHealth: {
    type: 'object',
    required: ['partitions', 'totalRows', 'totalBytes', 'meanRows', 'maxRows', 'skew'],
    properties: {
      partitions: {
        type: 'array',
        items: {
          type: 'object',
          required: ['name', 'remainder', 'rows', 'bytes'],
          properties: {
            name: { type: 'string' },
            remainder: { type: 'integer', minimum: 0, description: 'The partition\'s remainder of `PARTITION BY HASH (tenant_id)`.' },
            rows: { type: 'integer', minimum: 0, description: 'Records (exact count).' },
            bytes: { type: 'integer', minimum: 0, description: 'Table, TOAST and indexes.' },
          },
        },
      },
      totalRows: { type: 'integer', minimum: 0 },
      totalBytes: { type: 'integer', minimum: 0 },
      meanRows: { type: 'number', minimum: 0 },
      maxRows: { type: 'integer', minimum: 0 },
      skew: { anyOf: [{ type: 'number', minimum: 1 }, { type: 'null' }], description: 'max/mean of the rows per partition; `null` when the pool holds no record.' },
    },
  },
  MoveRequest: {
    type: 'object',
    additionalProperties: false,
    required: ['tier'],
    properties: {
      tier: { type: 'string', enum: [...TIERS], description: 'The tier to move to; the same tier in the same cell is `MOVE_INVALID`.' },
      cell: {
        type: 'string',
        pattern: PLACE_NAME_PATTERN,
        description: 'The target cell; by default the tenant\'s current cell, or the first cell of the target region. Unknown: `PLACEMENT_CELL_UNKNOWN`; in another region than the target\'s: `RESIDENCY_VIOLATION`.',
      },
      region: {
        type: 'string',
        pattern: PLACE_NAME_PATTERN,
        description: 'The target region; by default the tenant\'s region, or that of `cell`. A region no cell serves is `PLACEMENT_NO_CELL`; another region than the tenant\'s needs `legalBasis`.',
      },
      legalBasis: {
        type: 'string',
        minLength: LEGAL_BASIS.min,
        maxLength: LEGAL_BASIS.max,
        description:
          `Why the tenant's data may leave its region, e.g. "GDPR Art. 46(2)(c) standard contractual clauses, ref. DPA-2026-14" ` +
          `(${LEGAL_BASIS.min} to ${LEGAL_BASIS.max} characters, surrounding spaces not counted); recorded with the move. ` +
          'Required for a region change (`RESIDENCY_LEGAL_BASIS_REQUIRED`).',
      },
    },
  },
  MoveEnd: {
    type: 'object',
    required: ['tier', 'cell', 'location', 'region'],
    properties: {
      tier: { type: 'string', enum: [...TIERS] },
      cell: { type: 'string', pattern: PLACE_NAME_PATTERN },
      location: { type: 'string', pattern: LOCATION_PATTERN, description: 'The pool schema `bulkhead`, the tenant\'s bridge schema `tenant_<32 hex>`, or its silo database.' },
      region: { type: 'string', pattern: PLACE_NAME_PATTERN },
    },
  },
  MoveProgress: {
    type: 'object',
    required: ['copied', 'total', 'table', 'cursor', 'percent'],
    properties: {
      copied: { type: 'integer', minimum: 0, description: 'Rows copied so far, all data tables together (a resumed batch counts again).' },
      total: { type: 'integer', minimum: 0, description: 'Rows the source held when the copy started.' },
      table: {
        type: 'integer',
        minimum: 0,
        maximum: COPY_TABLES.length,
        description: `The table being copied, in copy order (parents first): ${COPY_TABLES.map((t, i) => `${i} \`${t.name}\``).join(', ')}; ${COPY_TABLES.length} when the copy is done.`,
      },
      cursor: {
        anyOf: [{ type: 'array', items: { type: 'string' } }, { type: 'null' }],
        description: 'The key of the last row copied in `table` (persisted after every batch, so a resumed copy starts there); null at the start of a table.',
      },
      percent: { type: 'integer', minimum: 0, maximum: 100 },
      synced: { type: 'integer', minimum: 0, description: 'Rows brought in line after the bulk copy (changed by writes made during it).' },
      pauseMs: { type: 'integer', minimum: 0, description: 'How long the tenant\'s writes were paused at the switch, in ms.' },
      switchedAt: { type: 'string', format: 'date-time', description: 'When the switch recorded the new placement (taken just before its transaction).' },
      switchCommittedAt: {
        type: 'string',
        format: 'date-time',
        description: 'When the switch had committed; the source is removed a placement cache time (`BULKHEAD_PLACEMENT_CACHE_MS`) later.',
      },
    },
  },
  TableChecksum: {
    type: 'object',
    required: ['rows', 'digest'],
    properties: {
      rows: { type: 'integer', minimum: 0 },
      digest: { type: 'string', pattern: '^[0-9]+$', description: 'Sum, modulo 2^64, of the 64-bit hash (PostgreSQL hashtextextended) of each row\'s whole text (every column, timestamps in UTC), in decimal: independent of row order and layout.' },
    },
  },
  Checksums: {
    type: 'object',
    description: 'By `<table>/<collection>` (for `tenant_keys`: `tenant_keys/<purpose>`): every data table of every collection.',
    propertyNames: { pattern: `^(${COPY_TABLES.map((t) => t.name).join('|')})/` },
    additionalProperties: schema('TableChecksum'),
  },
  Move: {
    type: 'object',
    required: ['id', 'tenantId', 'state', 'source', 'target', 'legalBasis', 'progress', 'checksums', 'error', 'actor', 'createdAt', 'updatedAt', 'finishedAt'],
    properties: {
      id: { type: 'string', format: 'uuid', description: 'A UUIDv7.' },
      tenantId: { type: 'string', format: 'uuid' },
      state: {
        type: 'string',
        enum: [...MOVE_STATES],
        description:
          '`planned` → `copying` → `verifying` → `switching` → `cleaning` → `done`; a failure before the switch goes to `failed` → `rolled_back` ' +
          '(the tenant stays on its source). Persisted: a restarted server resumes an unfinished move from its state.',
      },
      source: schema('MoveEnd'),
      target: schema('MoveEnd'),
      legalBasis: { type: ['string', 'null'] },
      progress: schema('MoveProgress'),
      checksums: {
        anyOf: [
          { type: 'object', required: ['source', 'target'], properties: { source: schema('Checksums'), target: schema('Checksums') } },
          { type: 'null' },
        ],
        description: 'Compared at the switch with writes paused and recorded with it; null until then.',
      },
      error: {
        type: ['string', 'null'],
        description: 'Why a move failed: the state it failed in and a stable code (e.g. `switching: MOVE_CHECKSUM_MISMATCH`), with a SQLSTATE for a database error; never data.',
      },
      actor: { type: 'string' },
      ...timestamps,
      finishedAt: { type: ['string', 'null'], format: 'date-time', description: 'When the move reached `done` or `rolled_back`.' },
    },
  },
  MoveList: { type: 'object', required: ['moves'], properties: { moves: { type: 'array', items: schema('Move'), description: 'Newest first.' } } },
  KeyRow: {
    type: 'object',
    description: 'One key version of the tenant as its row holds it, without key material: neither the key nor its wrapped form leaves the server.',
    required: ['purpose', 'version', 'state', 'encryptionsReserved', 'createdAt', 'retiredAt'],
    properties: {
      purpose: {
        type: 'string',
        enum: ['data', 'index'],
        description: '`data`: an AES-256-GCM key of the classified fields (versioned, rotated); `index`: the HMAC key of the blind indexes (never rotated: a new one would mean recomputing every index).',
      },
      version: { type: 'integer', minimum: 1, maximum: MAX_KEY_VERSION, description: 'A field ciphertext names the version of its data key.' },
      state: {
        type: 'string',
        enum: ['active', 'retired', 'destroyed'],
        description: '`active`: encrypts new values (one per purpose); `retired`: only decrypts; `destroyed`: its wrapped key is overwritten, nothing under it opens again.',
      },
      encryptionsReserved: {
        type: 'integer',
        minimum: 0,
        description: 'Encryptions reserved under the key: at least those made, since processes reserve blocks ahead and a process that stops loses the rest of its block.',
      },
      createdAt: { type: 'string', format: 'date-time' },
      retiredAt: { type: ['string', 'null'], format: 'date-time' },
    },
  },
  KeyList: {
    type: 'object',
    required: ['keys'],
    properties: { keys: { type: 'array', items: schema('KeyRow'), description: 'By purpose, then version. Empty until the tenant\'s first encrypted value: keys are made on first use.' } },
  },
  KeyRotationRequest: {
    type: 'object',
    additionalProperties: false,
    properties: {},
    description: 'A rotation takes no options: send `{}` or no body. A property is `REQUEST_INVALID`.',
  },
  KeyRotationProgress: {
    type: 'object',
    required: ['done', 'total', 'reencrypted', 'pass', 'collection', 'cursor', 'percent'],
    properties: {
      done: { type: 'integer', minimum: 0, description: 'Records looked at in the current pass.' },
      total: { type: 'integer', minimum: 0, description: 'Records of the collections with encrypted fields when the pass began.' },
      reencrypted: { type: 'integer', minimum: 0, description: 'Values encrypted again so far, both passes together.' },
      pass: {
        type: 'integer',
        enum: [1, 2],
        description: '1: the re-encryption; 2: the pass after every process\'s key cache has expired, which re-encrypts what was written under the old version meanwhile.',
      },
      collection: { type: ['string', 'null'], pattern: COLLECTION_NAME.source, description: 'The collection being re-encrypted (in name order); null before the pass reaches the first.' },
      cursor: {
        type: ['string', 'null'],
        format: 'uuid',
        description: 'The last record id done in `collection`, persisted after every batch so that a resumed rotation starts after it; null at the start of a collection.',
      },
      percent: { type: 'integer', minimum: 0, maximum: 100, description: 'The first pass is 0–90, the second 90–99; `done` is 100.' },
      destroyed: { type: 'array', items: { type: 'integer', minimum: 1, maximum: MAX_KEY_VERSION }, description: 'The data-key versions destroyed at the end.' },
    },
  },
  KeyRotation: {
    type: 'object',
    required: ['id', 'tenantId', 'state', 'fromVersion', 'toVersion', 'progress', 'error', 'actor', 'createdAt', 'updatedAt', 'rotatedAt', 'finishedAt'],
    properties: {
      id: { type: 'string', format: 'uuid', description: 'A UUIDv7.' },
      tenantId: { type: 'string', format: 'uuid' },
      state: {
        type: 'string',
        enum: [...ROTATION_STATES],
        description:
          '`rotating` → `reencrypting` → `settling` → `destroying` → `done`, or `failed`. `settling` waits out the key cache time ' +
          `(${KEY_CACHE_NOTE}) after the new version was made, since until then another process may still encrypt under the old one; ` +
          'only after a second pass are the old versions destroyed. Persisted: a restarted server resumes an unfinished rotation from its state. ' +
          'A failed rotation loses nothing: old versions are destroyed last, so every record stays readable.',
      },
      fromVersion: { type: ['integer', 'null'], minimum: 1, maximum: MAX_KEY_VERSION, description: 'The data-key version retired; null when the tenant had no data key (nothing to rotate: the rotation is `done` at once).' },
      toVersion: { type: ['integer', 'null'], minimum: 1, maximum: MAX_KEY_VERSION, description: 'The version new writes use and every record is brought to; null until it is made.' },
      progress: schema('KeyRotationProgress'),
      error: {
        type: ['string', 'null'],
        description: 'Why a rotation failed: the state it failed in and a stable code (e.g. `reencrypting: CRYPTO_DECRYPT_FAILED`), with a SQLSTATE for a database error; never data.',
      },
      actor: { type: 'string' },
      ...timestamps,
      rotatedAt: { type: ['string', 'null'], format: 'date-time', description: 'When the new version was made active; the settling pass waits until the key cache time after it.' },
      finishedAt: { type: ['string', 'null'], format: 'date-time', description: 'When the rotation reached `done` or `failed`.' },
    },
  },
  KeyRotationList: {
    type: 'object',
    required: ['rotations'],
    properties: { rotations: { type: 'array', items: schema('KeyRotation'), description: 'Newest first.' } },
  },
  ErasureRequest: {
    type: 'object',
    additionalProperties: false,
    properties: {
      graceSeconds: {
        type: 'integer',
        minimum: 0,
        maximum: MAX_ERASE_GRACE_SECONDS,
        description:
          'How long the erasure can still be cancelled before the tenant\'s keys are destroyed; by default the server\'s ' +
          '(`BULKHEAD_ERASE_GRACE_SECONDS`, 7 days unless set). 0 erases at once, in the background. Out of range, or another property: `TENANT_ERASE_INVALID`.',
      },
    },
  },
  ErasureCertificate: {
    type: 'object',
    description:
      'What was erased, when, by whom and with which keys: identifiers and counts only, never tenant data. Saved as each stage ends ' +
      '(counts first, before anything is destroyed), so a certificate of an erasure under way lacks the later members.',
    required: ['format', 'erasureId', 'tenant', 'placement', 'requestedBy', 'requestedAt', 'graceSeconds', 'dueAt', 'method', 'rows', 'records', 'dataKeys'],
    properties: {
      format: { const: 'bulkhead-erasure-certificate/1' },
      erasureId: { type: 'string', format: 'uuid' },
      tenant: {
        type: 'object',
        required: ['id', 'slug', 'region'],
        properties: { id: { type: 'string', format: 'uuid' }, slug: { type: 'string', pattern: SLUG_PATTERN }, region: { type: 'string', pattern: PLACE_NAME_PATTERN } },
      },
      placement: {
        type: 'object',
        required: ['tier', 'cell', 'location'],
        properties: { tier: { type: 'string', enum: [...TIERS] }, cell: { type: 'string', pattern: PLACE_NAME_PATTERN }, location: { type: 'string', pattern: LOCATION_PATTERN } },
      },
      requestedBy: { type: 'string' },
      requestedAt: { type: 'string', format: 'date-time' },
      graceSeconds: { type: 'integer', minimum: 0, maximum: MAX_ERASE_GRACE_SECONDS },
      dueAt: { type: 'string', format: 'date-time' },
      method: { const: 'crypto-shredding: tenant key-encryption key destroyed in the KMS, then the tenant storage purged' },
      rows: {
        type: 'object',
        description: 'Rows the tenant held when the erasure began, by data table.',
        additionalProperties: { type: 'integer', minimum: 0 },
      },
      records: {
        type: 'object',
        description: 'Records by collection, when the erasure began.',
        propertyNames: { pattern: COLLECTION_NAME.source },
        additionalProperties: { type: 'integer', minimum: 0 },
      },
      dataKeys: {
        type: 'array',
        description: 'The tenant\'s data and blind-index key versions, all wrapped under the tenant keys destroyed.',
        items: {
          type: 'object',
          required: ['purpose', 'version', 'state'],
          properties: { purpose: { type: 'string', enum: ['data', 'index'] }, version: { type: 'integer', minimum: 1, maximum: MAX_KEY_VERSION }, state: { type: 'string', enum: ['active', 'retired', 'destroyed'] } },
        },
      },
      kmsProvider: { type: 'string', examples: ['local', 'pkcs11'], description: 'The KMS the tenant keys were destroyed in.' },
      tenantKeys: {
        type: 'array',
        description:
          'The tenant\'s key-encryption keys destroyed in the KMS, one per region of the deployment (a tenant moved between regions has keys wrapped in each): ' +
          'from then on no copy of a data key wrapped under them unwraps, in the live database or in any dump or backup.',
        items: {
          type: 'object',
          required: ['region', 'keyId', 'destroyedAt', 'alreadyDestroyed'],
          properties: {
            region: { type: 'string', pattern: PLACE_NAME_PATTERN },
            keyId: { type: ['string', 'null'], description: 'The KMS id of the key destroyed; null when the tenant never had a key in the region (the refusal is recorded all the same).' },
            destroyedAt: { type: 'string', format: 'date-time' },
            alreadyDestroyed: { type: 'boolean', description: 'True when an earlier run of the same erasure had destroyed it (a resumed erasure).' },
          },
        },
      },
      purgedAt: { type: 'string', format: 'date-time', description: 'When the tenant\'s storage was purged at its placement.' },
      erasedAt: { type: 'string', format: 'date-time', description: 'When the tenant was marked `erased`: the certificate is complete.' },
    },
  },
  Erasure: {
    type: 'object',
    required: ['id', 'tenantId', 'state', 'priorStatus', 'graceSeconds', 'dueAt', 'actor', 'cancelledBy', 'certificate', 'createdAt', 'updatedAt', 'finishedAt'],
    properties: {
      id: { type: 'string', format: 'uuid', description: 'A UUIDv7.' },
      tenantId: { type: 'string', format: 'uuid' },
      state: {
        type: 'string',
        enum: [...ERASURE_STATES],
        description:
          '`scheduled` (the tenant is `offboarding`: no token of it is accepted) → `erasing` → `done` (the tenant is `erased`), or `cancelled`. ' +
          '`erasing` counts what the tenant holds, destroys its key-encryption keys in the KMS, purges its storage and completes the certificate, ' +
          'each stage saved as it ends: an erasure interrupted by a crash resumes where it stopped.',
      },
      priorStatus: { type: 'string', enum: ['active', 'suspended'], description: 'The tenant\'s status before the erasure was scheduled; a cancellation gives it back.' },
      graceSeconds: { type: 'integer', minimum: 0, maximum: MAX_ERASE_GRACE_SECONDS },
      dueAt: { type: 'string', format: 'date-time', description: 'The end of the grace period: the erasure can be cancelled until it begins, at this time or soon after.' },
      actor: { type: 'string', description: 'Who scheduled it.' },
      cancelledBy: { type: ['string', 'null'] },
      certificate: { anyOf: [schema('ErasureCertificate'), { type: 'null' }], description: 'Null until the erasure begins.' },
      ...timestamps,
      finishedAt: { type: ['string', 'null'], format: 'date-time', description: 'When the erasure reached `done` or `cancelled`.' },
    },
  },
  AuditEvent: {
    type: 'object',
    description: 'A stored audit event (docs/audit.md, "The event") with its chain data. Never a field value or a secret.',
    required: ['seq', 'prevHash', 'hash', 'time', 'tenantId', 'principal', 'action', 'decision', 'requestId', 'sourceAddress', 'outcome'],
    properties: {
      seq: { type: 'integer', minimum: 1 },
      prevHash: { type: 'string', pattern: '^[0-9a-f]{64}$' },
      hash: { type: 'string', pattern: '^[0-9a-f]{64}$' },
      time: { type: 'string', format: 'date-time' },
      tenantId: { type: ['string', 'null'] },
      principal: { type: ['object', 'null'] },
      action: { type: 'string' },
      collection: { type: 'string' },
      recordIds: { type: 'array', items: { type: 'string', format: 'uuid' } },
      query: { type: 'object', properties: { fingerprint: { type: 'string' }, rowCount: { type: 'integer' } } },
      decision: { type: 'object', properties: { effect: { type: 'string', enum: ['allow', 'deny'] }, policyIds: { type: 'array', items: { type: 'string' } } } },
      requestId: { type: 'string' },
      sourceAddress: { type: ['string', 'null'] },
      outcome: { type: 'string', enum: ['success', 'denied', 'error'] },
      errorCode: { type: 'string' },
      operator: { type: 'object' },
    },
  },
  AuditEventPage: {
    type: 'object',
    required: ['events', 'nextCursor'],
    properties: {
      events: { type: 'array', items: schema('AuditEvent'), description: 'In seq order.' },
      nextCursor: { type: ['string', 'null'], description: 'Pass as `cursor` for the next page; null on the last page.' },
    },
  },
  AuditVerifyRequest: {
    type: 'object',
    additionalProperties: false,
    properties: { tenant: { type: 'string', minLength: 1, maxLength: 64, description: 'Verify only this tenant\'s chain (id or slug). Absent: every tenant\'s and the platform\'s.' } },
  },
  AuditChainReport: {
    type: 'object',
    required: ['chain', 'ok', 'events', 'checkpoints'],
    properties: {
      chain: { type: 'string', description: 'A tenant id, or `platform`.' },
      ok: { type: 'boolean' },
      events: { type: 'integer', minimum: 0, description: 'Rows verified.' },
      checkpoints: { type: 'integer', minimum: 0, description: 'Signed checkpoints of the witness compared with the rows.' },
      headSeq: { type: 'integer', minimum: 0, description: 'The head\'s seq, when the chain verified.' },
      skipped: { type: 'string', enum: ['erased'], description: 'Not verified: the tenant was erased and its chain went with its data.' },
    },
  },
  AuditDivergence: {
    type: 'object',
    required: ['chain', 'seq', 'kind', 'message', 'lastGoodSeq'],
    properties: {
      chain: { type: 'string' },
      seq: { type: 'integer', description: 'The first seq that does not verify.' },
      kind: { type: 'string', enum: ['gap', 'reorder', 'forged', 'prev-mismatch', 'hash-mismatch', 'column-mismatch', 'malformed', 'missing-tail', 'witness-mismatch', 'checkpoint-invalid'] },
      message: { type: 'string', description: 'What differs: identifiers and numbers only, never event content.' },
      lastGoodSeq: { type: 'integer', minimum: 0 },
    },
  },
  AuditVerifyReport: {
    type: 'object',
    required: ['ok', 'tenants'],
    properties: {
      ok: { type: 'boolean', description: 'Every chain verified.' },
      tenants: { type: 'array', items: schema('AuditChainReport'), description: 'Every chain verified, the platform chain last.' },
      firstDivergence: schema('AuditDivergence'),
    },
  },
  ErasureList: { type: 'object', required: ['erasures'], properties: { erasures: { type: 'array', items: schema('Erasure'), description: 'Newest first.' } } },
  Placement: {
    type: 'object',
    required: ['tenantId', 'tier', 'cell', 'location', 'region', 'writesPausedUntil', 'epoch'],
    properties: {
      tenantId: { type: 'string', format: 'uuid' },
      tier: { type: 'string', enum: [...TIERS] },
      cell: { type: 'string', pattern: PLACE_NAME_PATTERN },
      location: { type: 'string', pattern: LOCATION_PATTERN, description: '`bulkhead` for the pool, the tenant\'s schema for the bridge tier, its database for a silo.' },
      region: { type: 'string', pattern: PLACE_NAME_PATTERN, description: 'The tenant\'s region (from the registry).' },
      writesPausedUntil: {
        type: ['integer', 'null'],
        description: 'While a move switches the tenant: the end of the write pause, in milliseconds since the epoch; null otherwise.',
      },
      epoch: {
        type: 'integer',
        minimum: 1,
        description: 'The placement epoch: 1 at creation, one more after each move. Write batches carry the epoch they were routed with, and the database refuses those of an older one.',
      },
    },
  },
  Cell: {
    type: 'object',
    required: ['name', 'region', 'kind', 'control'],
    properties: {
      name: { type: 'string', pattern: PLACE_NAME_PATTERN },
      region: { type: 'string', pattern: PLACE_NAME_PATTERN },
      kind: { type: 'string', enum: ['pglite', 'postgres'] },
      control: { type: 'boolean', description: 'The first cell: it also holds the tenant registry, the placement directory and the moves.' },
    },
  },
  PlacementDirectory: {
    type: 'object',
    required: ['placements', 'cells'],
    properties: {
      placements: { type: 'array', items: schema('Placement'), description: 'Every tenant\'s placement, by tenant id.' },
      cells: { type: 'array', items: schema('Cell'), description: 'The configured cells, in configuration order.' },
    },
  },
  ...Object.fromEntries(FIELD_TYPES.map((t) => [`FieldValue.${t}`, { title: `Values of ${t} fields`, ...FIELD_VALUES[t] }])),
  FieldDefinitionInput: {
    type: 'object',
    description: `A field as a builder declares it. The value each type takes: ${FIELD_TYPES.map((t) => `\`${t}\` (#/components/schemas/FieldValue.${t})`).join(', ')}.`,
    additionalProperties: false,
    required: ['type'],
    properties: {
      type: { type: 'string', enum: [...FIELD_TYPES] },
      required: { type: 'boolean', default: false },
      unique: { type: 'boolean', default: false, description: 'Unique within the tenant; not for text and json fields; a unique field has no default.' },
      indexed: { type: 'boolean', default: false, description: 'Not for text and json fields.' },
      classification: { type: 'string', enum: [...CLASSIFICATIONS], default: 'internal' },
      subject: { type: 'boolean', default: false, description: 'Marks the field naming the data subject a record is about; at most one per collection.' },
      encrypted: {
        type: 'boolean',
        description:
          'Store the field encrypted with the tenant\'s data key. Default: true for the classifications the collection encrypts (its encryptedClassifications, else the deployment\'s: confidential, pii, phi, pci unless configured), which cannot be set to false; false otherwise. Cannot change while records hold the field.',
      },
      default: { not: { type: 'null' }, description: 'A value of the field\'s type, applied on create.' },
      values: {
        type: 'array',
        minItems: 1,
        maxItems: LIMITS.enumValues,
        uniqueItems: true,
        items: { type: 'string', minLength: 1, maxLength: 200 },
        description: 'The allowed values of an enum field (enum fields only).',
      },
      collection: { type: 'string', pattern: COLLECTION_NAME.source, description: 'The collection a reference field points at (reference fields only); it must exist.' },
      maxLength: { type: 'integer', minimum: 1, maximum: LIMITS.textMaxLength, description: `string fields: at most ${LIMITS.stringMaxLength}; text fields: at most ${LIMITS.textMaxLength}.` },
      description: { type: 'string', maxLength: LIMITS.descriptionLength },
    },
    allOf: [
      { if: { properties: { type: { const: 'enum' } } }, then: { required: ['values'] } },
      { if: { properties: { type: { const: 'reference' } } }, then: { required: ['collection'] } },
    ],
  },
  FieldDefinition: {
    type: 'object',
    description: 'A field as stored: every flag resolved.',
    required: ['type', 'required', 'unique', 'indexed', 'classification', 'subject'],
    properties: {
      type: { type: 'string', enum: [...FIELD_TYPES] },
      required: { type: 'boolean' },
      unique: { type: 'boolean' },
      indexed: { type: 'boolean' },
      classification: { type: 'string', enum: [...CLASSIFICATIONS] },
      subject: { type: 'boolean' },
      encrypted: { type: 'boolean', description: 'Stored encrypted; absent in definitions made before field encryption existed (not encrypted).' },
      default: {},
      values: { type: 'array', items: { type: 'string' } },
      collection: { type: 'string', pattern: COLLECTION_NAME.source },
      maxLength: { type: 'integer' },
      description: { type: 'string' },
    },
  },
  CollectionDefinition: {
    type: 'object',
    description: 'The body of `PUT /v1/collections/{name}`: the whole definition (a change is a new version).',
    additionalProperties: false,
    required: ['fields'],
    properties: {
      fields: {
        type: 'object',
        minProperties: 1,
        maxProperties: LIMITS.fieldsPerCollection,
        propertyNames: { pattern: FIELD_NAME.source },
        additionalProperties: schema('FieldDefinitionInput'),
      },
      description: { type: 'string', maxLength: LIMITS.descriptionLength },
      readAudit: {
        type: 'string',
        enum: ['all', 'classified', 'off'],
        default: 'all',
        description: 'Which successful reads of the collection are audited: all, only those returning a value of a field classified above internal, or none. Writes and refusals are always audited.',
      },
      encryptedClassifications: {
        type: 'array',
        uniqueItems: true,
        maxItems: CLASSIFICATIONS.length,
        items: { type: 'string', enum: [...CLASSIFICATIONS] },
        description:
          'The classifications whose fields this collection encrypts. Absent: the deployment\'s list (BULKHEAD_ENCRYPTED_CLASSIFICATIONS). ' +
          'It must hold every classification the deployment encrypts (a collection can encrypt more, never fewer), so the empty list is accepted only where the deployment encrypts none; ' +
          'otherwise COLLECTION_INVALID. Stored in CLASSIFICATIONS order. Whether a field holding records is encrypted cannot change, so a list that would flip such a field is refused.',
      },
    },
  },
  Collection: {
    type: 'object',
    required: ['name', 'version', 'fields', 'readAudit', 'createdAt', 'updatedAt'],
    properties: {
      name: { type: 'string', pattern: COLLECTION_NAME.source },
      version: { type: 'integer', minimum: 1, description: 'Incremented by every change of the definition.' },
      fields: { type: 'object', propertyNames: { pattern: FIELD_NAME.source }, additionalProperties: schema('FieldDefinition') },
      description: { type: 'string' },
      readAudit: { type: 'string', enum: ['all', 'classified', 'off'], description: 'Which successful reads are audited (see CollectionDefinition.readAudit).' },
      encryptedClassifications: {
        type: 'array',
        uniqueItems: true,
        items: { type: 'string', enum: [...CLASSIFICATIONS] },
        description: 'The classifications the collection encrypts, when its definition lists them; absent, the deployment\'s list applied (see CollectionDefinition.encryptedClassifications). Each field\'s `encrypted` is what was settled.',
      },
      ...timestamps,
    },
  },
  CollectionList: { type: 'object', required: ['collections'], properties: { collections: { type: 'array', items: schema('Collection') } } },
  RecordFields: {
    type: 'object',
    description: 'Field name → value, validated against the collection\'s current definition (see FieldValue.*). Unknown fields are refused; in a PATCH, `null` clears a field.',
    propertyNames: { pattern: FIELD_NAME.source },
  },
  RecordWrite: {
    type: 'object',
    additionalProperties: false,
    required: ['fields'],
    properties: { fields: schema('RecordFields') },
  },
  Record: {
    type: 'object',
    required: ['id', 'fields', 'createdAt', 'updatedAt', 'version'],
    properties: {
      id: { type: 'string', format: 'uuid' },
      fields: schema('RecordFields'),
      ...timestamps,
      version: { type: 'integer', minimum: 1, description: 'Incremented by every update.' },
    },
  },
  RecordPage: {
    type: 'object',
    required: ['records', 'nextCursor'],
    properties: {
      records: { type: 'array', items: schema('Record') },
      nextCursor: { type: ['string', 'null'], description: 'Pass as `cursor` for the next page; null on the last page.' },
    },
  },
  FilterOperators: {
    type: 'object',
    minProperties: 1,
    additionalProperties: false,
    properties: OPERATOR_ARGUMENTS as JsonObject,
  },
  Filter: {
    type: 'object',
    description: `Field name → operators; several fields and operators are AND-ed. At most ${QUERY_LIMITS.maxFilterFields} fields and ${QUERY_LIMITS.maxFilterLength} characters.`,
    maxProperties: QUERY_LIMITS.maxFilterFields,
    propertyNames: { pattern: FIELD_NAME.source },
    additionalProperties: schema('FilterOperators'),
  },
};

const parameters: JsonObject = {
  RequestId: {
    name: 'x-request-id',
    in: 'header',
    required: false,
    description: 'A request id to use instead of a generated one (kept only when it matches the pattern); echoed in the `x-request-id` response header.',
    schema: { type: 'string', pattern: REQUEST_ID_PATTERN },
  },
  TenantId: {
    name: 'id',
    in: 'path',
    required: true,
    description: 'The tenant\'s id or slug.',
    schema: { type: 'string', anyOf: [{ format: 'uuid' }, { pattern: SLUG_PATTERN }] },
  },
  MoveId: {
    name: 'moveId',
    in: 'path',
    required: true,
    description: 'A move id of this tenant; anything else (another tenant\'s move, a value that is not a UUID) is `MOVE_NOT_FOUND`.',
    schema: { type: 'string', format: 'uuid' },
  },
  RotationId: {
    name: 'rotationId',
    in: 'path',
    required: true,
    description: 'A key rotation id of this tenant; anything else (another tenant\'s rotation, a value that is not a UUID) is `KEY_ROTATION_NOT_FOUND`.',
    schema: { type: 'string', format: 'uuid' },
  },
  CollectionName: {
    name: 'name',
    in: 'path',
    required: true,
    description: 'A collection name; a name that does not match the pattern is refused with `COLLECTION_INVALID`.',
    schema: { type: 'string', pattern: COLLECTION_NAME.source },
  },
  RecordId: {
    name: 'id',
    in: 'path',
    required: true,
    description: 'A record id; anything that is not a canonical UUID is `RECORD_NOT_FOUND`, like an id of another tenant.',
    schema: { type: 'string', format: 'uuid' },
  },
  Filter: {
    name: 'filter',
    in: 'query',
    required: false,
    description:
      `URL-encoded JSON, e.g. {"status":{"eq":"open"},"amount":{"gte":10}}, on declared fields only. Operators: ${OPERATORS.join(', ')}. ` +
      `At most ${QUERY_LIMITS.maxFilterFields} fields, ${QUERY_LIMITS.maxInValues} values in \`in\` and ${QUERY_LIMITS.maxFilterLength} characters.`,
    content: { 'application/json': { schema: schema('Filter') } },
  },
  Sort: {
    name: 'sort',
    in: 'query',
    required: false,
    description: 'A field name, descending with a leading `-`; `id` (the default) sorts by creation. text and json fields cannot be sorted.',
    schema: { type: 'string', pattern: `^-?${FIELD_NAME.source.slice(1)}`, default: 'id' },
  },
  Limit: {
    name: 'limit',
    in: 'query',
    required: false,
    description: `Records per page, from 1 to ${QUERY_LIMITS.maxLimit} (decimal digits only).`,
    schema: { type: 'integer', minimum: 1, maximum: QUERY_LIMITS.maxLimit, default: QUERY_LIMITS.defaultLimit },
  },
  Cursor: {
    name: 'cursor',
    in: 'query',
    required: false,
    description: 'The `nextCursor` of the previous page, with the same `sort`; opaque.',
    schema: { type: 'string', pattern: '^[A-Za-z0-9_-]+$', maxLength: QUERY_LIMITS.maxCursorLength },
  },
};

const windowParameter = (fallback: string): JsonObject => ({
  name: 'window',
  in: 'query',
  required: false,
  description: `Minutes or hours, e.g. 5m, 1h, 24h; at most the usage retention (${USAGE_DEFAULTS.retentionSeconds / 3600} h by default). Buckets are ${USAGE_DEFAULTS.bucketSeconds} s by default.`,
  schema: { type: 'string', pattern: USAGE_WINDOW_PATTERN, default: fallback },
});

const paths: JsonObject = {
  '/healthz': {
    get: {
      operationId: 'getHealth',
      tags: ['health'],
      summary: 'Liveness, and which store serves',
      security: [],
      responses: { 200: ok('The server is up.', schema('Health')), ...problems(['INTERNAL']) },
    },
  },
  '/openapi.json': {
    get: {
      operationId: 'getOpenApi',
      tags: ['health'],
      summary: 'This document',
      security: [...TENANT_ONLY, ...OPERATOR_ONLY],
      parameters: [ref('parameters', 'RequestId')],
      responses: { 200: ok('The OpenAPI 3.1 document.', { type: 'object' }), ...problems(AUTHENTICATED) },
    },
  },
  '/v1/tenants': {
    post: operatorOperation('tenant.create', {
      operationId: 'createTenant',
      summary: 'Create a tenant',
      description:
        'Creates an active tenant on its tier (pool by default), pinned to a region, in the named cell or the cell of the region ' +
        'holding the fewest tenants. Its storage is provisioned before it is registered; a failed creation leaves neither.',
      requestBody: jsonBody(schema('TenantCreate')),
      responses: { 201: ok('The tenant.', schema('Tenant')), ...problems(AUTHENTICATED, BODY, PLACING, ['TENANT_INVALID', 'TENANT_SLUG_TAKEN']) },
    }),
    get: operatorOperation('tenant.list', {
      operationId: 'listTenants',
      summary: 'List tenants',
      responses: { 200: ok('Every tenant, oldest first.', schema('TenantList')), ...problems(AUTHENTICATED) },
    }),
  },
  '/v1/tenants/{id}': {
    parameters: [ref('parameters', 'TenantId')],
    get: operatorOperation('tenant.read', {
      operationId: 'getTenant',
      summary: 'Read a tenant',
      responses: { 200: ok('The tenant.', schema('Tenant')), ...problems(AUTHENTICATED, ['TENANT_NOT_FOUND']) },
    }),
    patch: operatorOperation('tenant.update', {
      operationId: 'updateTenantStatus',
      summary: 'Suspend or reactivate a tenant',
      description: 'A suspended tenant\'s tokens are refused with `AUTH_TENANT_INACTIVE`.',
      requestBody: jsonBody(schema('TenantStatusChange')),
      responses: { 200: ok('The tenant.', schema('Tenant')), ...problems(AUTHENTICATED, BODY, ['TENANT_INVALID', 'TENANT_NOT_FOUND']) },
    }),
  },
  '/v1/tenants/{id}/history': {
    parameters: [ref('parameters', 'TenantId')],
    get: operatorOperation('tenant.read', {
      operationId: 'getTenantHistory',
      summary: 'A tenant\'s lifecycle history',
      responses: { 200: ok('The history, oldest first.', schema('TenantHistory')), ...problems(AUTHENTICATED, ['TENANT_NOT_FOUND']) },
    }),
  },
  '/v1/tenants/{id}/moves': {
    parameters: [ref('parameters', 'TenantId')],
    post: operatorOperation('tenant.move', {
      tags: ['placement'],
      operationId: 'moveTenant',
      summary: 'Move a tenant to another tier, cell or region, online',
      description:
        'Plans the move and runs it in the background: the tenant is copied in batches while it keeps serving, the copy is brought in ' +
        'line with the writes made meanwhile, and at the switch writes are paused, the last changes synced, row counts and digests of ' +
        'every collection compared on both sides, and the new placement recorded in one transaction; the source is removed after. ' +
        'Follow it with `GET /v1/tenants/{id}/moves/{moveId}`. Only an active tenant moves, one move at a time. ' +
        'The body is checked here; none of the refusals changes anything.',
      requestBody: jsonBody(schema('MoveRequest')),
      responses: {
        202: ok('The move, as planned (or already copying).', schema('Move')),
        ...problems(AUTHENTICATED, BODY, PLACING, ['TENANT_NOT_FOUND', 'MOVE_INVALID', 'MOVE_IN_PROGRESS', 'RESIDENCY_LEGAL_BASIS_REQUIRED']),
      },
    }),
    get: operatorOperation('tenant.read', {
      tags: ['placement'],
      operationId: 'listTenantMoves',
      summary: 'A tenant\'s moves',
      responses: { 200: ok('Every move of the tenant, newest first.', schema('MoveList')), ...problems(AUTHENTICATED, ['TENANT_NOT_FOUND']) },
    }),
  },
  '/v1/tenants/{id}/moves/{moveId}': {
    parameters: [ref('parameters', 'TenantId'), ref('parameters', 'MoveId')],
    get: operatorOperation('tenant.read', {
      tags: ['placement'],
      operationId: 'getTenantMove',
      summary: 'One move: its state, progress and checksums',
      responses: { 200: ok('The move.', schema('Move')), ...problems(AUTHENTICATED, ['TENANT_NOT_FOUND', 'MOVE_NOT_FOUND']) },
    }),
  },
  '/v1/tenants/{id}/keys': {
    parameters: [ref('parameters', 'TenantId')],
    get: operatorOperation('tenant.keys', {
      tags: ['keys'],
      operationId: 'listTenantKeys',
      summary: 'A tenant\'s key versions, without key material',
      description:
        'Purpose, version, state and encryptions reserved of each data and blind-index key, of a tenant in any status (nothing secret is read); ' +
        'an erased tenant has none left.',
      responses: { 200: ok('The key versions.', schema('KeyList')), ...problems(AUTHENTICATED, ROUTED, ['TENANT_NOT_FOUND']) },
    }),
  },
  '/v1/tenants/{id}/keys/rotate': {
    parameters: [ref('parameters', 'TenantId')],
    post: operatorOperation('tenant.keys', {
      tags: ['keys'],
      operationId: 'rotateTenantKeys',
      summary: 'Rotate a tenant\'s data key, re-encrypting its records',
      description:
        'Makes a new data-key version for new writes and runs the rest in the background: every encrypted value of the tenant is ' +
        're-encrypted under it in resumable batches (record versions and dates unchanged), a second pass follows once the key cache time ' +
        `(${KEY_CACHE_NOTE}) is over, so that no process still encrypts under an old version, and only then are the old versions destroyed: ` +
        'a key that leaked reads nothing written since. Follow it with `GET /v1/tenants/{id}/keys/rotations/{rotationId}`. ' +
        'Only an active tenant is rotated (`TENANT_BUSY` otherwise); while a rotation is under way, a second request returns it and makes no second version.',
      requestBody: { ...jsonBody(schema('KeyRotationRequest')), required: false },
      responses: {
        202: ok('The rotation, as started (or the one already under way).', schema('KeyRotation')),
        ...problems(AUTHENTICATED, BODY, ROUTED, ['TENANT_NOT_FOUND', 'TENANT_BUSY']),
      },
    }),
  },
  '/v1/tenants/{id}/keys/rotations': {
    parameters: [ref('parameters', 'TenantId')],
    get: operatorOperation('tenant.keys', {
      tags: ['keys'],
      operationId: 'listTenantKeyRotations',
      summary: 'A tenant\'s key rotations',
      responses: { 200: ok('Every rotation of the tenant, newest first.', schema('KeyRotationList')), ...problems(AUTHENTICATED, ['TENANT_NOT_FOUND']) },
    }),
  },
  '/v1/tenants/{id}/keys/rotations/{rotationId}': {
    parameters: [ref('parameters', 'TenantId'), ref('parameters', 'RotationId')],
    get: operatorOperation('tenant.keys', {
      tags: ['keys'],
      operationId: 'getTenantKeyRotation',
      summary: 'One key rotation: its state, progress and the versions destroyed',
      responses: { 200: ok('The rotation.', schema('KeyRotation')), ...problems(AUTHENTICATED, ['TENANT_NOT_FOUND', 'KEY_ROTATION_NOT_FOUND']) },
    }),
  },
  '/v1/tenants/{id}/erase': {
    parameters: [ref('parameters', 'TenantId')],
    post: operatorOperation('tenant.erase', {
      tags: ['keys'],
      operationId: 'eraseTenant',
      summary: 'Schedule a tenant\'s erasure by crypto-shredding',
      description:
        'Marks the tenant `offboarding` at once (its tokens are refused, no read or write reaches its data) and schedules the erasure after ' +
        'a grace period (`graceSeconds`; by default `BULKHEAD_ERASE_GRACE_SECONDS`, 7 days), like a KMS\'s scheduled key deletion, during which `DELETE /v1/tenants/{id}/erase` cancels it. When it ends, the ' +
        'tenant\'s own key-encryption keys are destroyed in the KMS, so every data key wrapped under them is unreadable in the live database ' +
        'and in every dump or backup (and with it every encrypted field; fields that were not encrypted go with the purge only), then its storage is purged, ' +
        'and it is marked `erased` with an erasure certificate (`GET /v1/tenants/{id}/erasures`). The server looks for due erasures every minute. ' +
        'Only an active or suspended tenant is erased (`TENANT_ERASE_INVALID`), not one already scheduled or with a move or a key rotation ' +
        'under way (`TENANT_BUSY`); `TENANT_INVALID` when its status changed meanwhile. None of the refusals changes anything.',
      requestBody: { ...jsonBody(schema('ErasureRequest')), required: false },
      responses: {
        202: ok('The erasure, scheduled.', schema('Erasure')),
        ...problems(AUTHENTICATED, BODY, ['TENANT_NOT_FOUND', 'TENANT_ERASE_INVALID', 'TENANT_BUSY', 'TENANT_INVALID']),
      },
    }),
    delete: operatorOperation('tenant.erase', {
      tags: ['keys'],
      operationId: 'cancelTenantErasure',
      summary: 'Cancel a tenant\'s scheduled erasure',
      description:
        'Until the grace period is over and the erasure has begun, the tenant gets back the status it had (`priorStatus`), with its data and keys intact. ' +
        'Once begun it is `TENANT_ERASE_TOO_LATE`: keys may already be destroyed. `TENANT_INVALID` when the tenant\'s status changed meanwhile.',
      responses: {
        200: ok('The erasure, cancelled.', schema('Erasure')),
        ...problems(AUTHENTICATED, ['TENANT_NOT_FOUND', 'TENANT_ERASE_NOT_SCHEDULED', 'TENANT_ERASE_TOO_LATE', 'TENANT_INVALID', 'REQUEST_INVALID_JSON', 'REQUEST_BODY_TOO_LARGE', 'REQUEST_UNSUPPORTED_MEDIA_TYPE']),
      },
    }),
  },
  '/v1/tenants/{id}/erasures': {
    parameters: [ref('parameters', 'TenantId')],
    get: operatorOperation('tenant.erase', {
      tags: ['keys'],
      operationId: 'listTenantErasures',
      summary: 'A tenant\'s erasures, with their certificates',
      responses: { 200: ok('Every erasure of the tenant, newest first.', schema('ErasureList')), ...problems(AUTHENTICATED, ['TENANT_NOT_FOUND']) },
    }),
  },
  '/v1/tenants/{id}/tokens': {
    parameters: [ref('parameters', 'TenantId')],
    post: operatorOperation('tenant.mintToken', {
      operationId: 'mintTenantToken',
      summary: 'Mint a tenant token (development and tests)',
      description: 'Production tenant tokens come from the platform\'s identity provider. `CONFIG_INVALID` when the server verifies tokens against a JWKS URL and has no secret to sign with.',
      requestBody: jsonBody(schema('TokenMintRequest')),
      responses: { 201: ok('The token.', schema('TokenMinted')), ...problems(AUTHENTICATED, BODY, ['TENANT_NOT_FOUND', 'CONFIG_INVALID']) },
    }),
  },
  '/v1/tenants/{id}/usage': {
    parameters: [ref('parameters', 'TenantId')],
    get: operatorOperation('tenant.usage', {
      tags: ['usage'],
      operationId: 'getTenantUsage',
      summary: 'A tenant\'s usage over a window',
      description: 'Reads, writes, rows read and written per bucket (like Citus\' `citus_stat_tenants`), and the tenant\'s records and bytes. Other query parameters are refused with `REQUEST_INVALID`.',
      parameters: [windowParameter(HEALTH_DEFAULTS.window)],
      responses: { 200: ok('The usage.', schema('TenantUsage')), ...problems(AUTHENTICATED, ['REQUEST_INVALID', 'TENANT_NOT_FOUND']) },
    }),
  },
  '/v1/usage/top': {
    get: operatorOperation('tenant.usage', {
      tags: ['usage'],
      operationId: 'getUsageTop',
      summary: 'The busiest tenants, and the tenants worth promoting',
      description:
        'Candidates are pool tenants whose share of the pool\'s records or of the window\'s requests is above `minShare`, ' +
        'or that hold at least `minRows` records. Other query parameters are refused with `REQUEST_INVALID`.',
      parameters: [
        windowParameter(HEALTH_DEFAULTS.window),
        { name: 'limit', in: 'query', required: false, description: 'Tenants and candidates listed, each.', schema: { type: 'integer', minimum: 1, maximum: HEALTH_DEFAULTS.maxLimit, default: HEALTH_DEFAULTS.limit } },
        { name: 'minShare', in: 'query', required: false, description: 'A decimal share, e.g. 0.1.', schema: { type: 'number', exclusiveMinimum: 0, maximum: 1, default: HEALTH_DEFAULTS.share } },
        { name: 'minRows', in: 'query', required: false, schema: { type: 'integer', minimum: 1, default: HEALTH_DEFAULTS.rows } },
      ],
      responses: { 200: ok('The top tenants and the candidates.', schema('UsageTop')), ...problems(AUTHENTICATED, ['REQUEST_INVALID']) },
    }),
  },
  '/v1/partitions': {
    get: operatorOperation('tenant.partitions', {
      tags: ['usage'],
      operationId: 'getPartitions',
      summary: 'Rows and bytes per hash partition, and the skew',
      description: 'Exact row counts (a full count of the records table). Query parameters are refused with `REQUEST_INVALID`.',
      responses: { 200: ok('The partitions of the records table.', schema('PartitionHealth')), ...problems(AUTHENTICATED, ['REQUEST_INVALID']) },
    }),
  },
  '/v1/audit/events': {
    get: {
      ...tenantOperation('audit.read', 'audit', ['tenant_admin', 'auditor'], {
        operationId: 'listAuditEvents',
        summary: 'Read, filter, page and export an audit chain',
        description:
          'A tenant\'s auditors and admins read their own tenant\'s chain; an operator token (action `tenant.audit`) reads any tenant\'s with `tenant=`, or the platform chain. ' +
          'Filters are AND-ed. `Accept: application/x-ndjson` exports every matching event after the cursor (up to 100,000) as `{"seq","prevHash","hash","event"}` lines, ' +
          'the row format of the offline verifier; `Accept: text/csv` the same as CSV (RFC 4180) with the whole event as JSON in the last column. Reading the trail is itself audited.',
      parameters: [
        { name: 'tenant', in: 'query', schema: { type: 'string', maxLength: 64 }, description: 'Operators only: the tenant (id or slug) whose chain to read; absent, or `platform`: the platform chain. Refused for tenant tokens, which read their own tenant\'s.' },
        { name: 'from', in: 'query', schema: { type: 'string', format: 'date-time' }, description: 'Events at or after this time.' },
        { name: 'to', in: 'query', schema: { type: 'string', format: 'date-time' }, description: 'Events before this time.' },
        { name: 'principal', in: 'query', schema: { type: 'string', minLength: 1, maxLength: 256 }, description: 'The acting subject.' },
        { name: 'action', in: 'query', schema: { type: 'string', pattern: '^[a-z][a-zA-Z0-9]*(\\.[a-z][a-zA-Z0-9]*){1,3}$' } },
        { name: 'collection', in: 'query', schema: { type: 'string', pattern: COLLECTION_NAME.source } },
        { name: 'record', in: 'query', schema: { type: 'string', format: 'uuid' }, description: 'Events naming this record.' },
        { name: 'outcome', in: 'query', schema: { type: 'string', enum: ['success', 'denied', 'error'] } },
        { name: 'cursor', in: 'query', schema: { type: 'string' } },
        { name: 'limit', in: 'query', schema: { type: 'integer', minimum: 1, maximum: 1000, default: 100 } },
      ],
        responses: {
          200: {
            description: 'A page of events (or the export).',
            headers: { 'x-request-id': ref('headers', 'RequestId') },
            content: {
              'application/json': { schema: schema('AuditEventPage') },
              'application/x-ndjson': { schema: { type: 'string' } },
              'text/csv': { schema: { type: 'string' } },
            },
          },
          ...problems(AUTHENTICATED, ['REQUEST_INVALID', 'QUERY_CURSOR_INVALID', 'TENANT_NOT_FOUND']),
        },
      }),
      security: [{ tenantToken: [] }, { operatorToken: [] }],
      'x-bulkhead-operator-action': 'tenant.audit',
    },
  },
  '/v1/audit/verify': {
    post: operatorOperation('audit.verify', {
      tags: ['audit'],
      operationId: 'verifyAudit',
      summary: 'Verify the audit trail',
      description:
        'Recomputes every chain (or one tenant\'s) from its rows, checks every checkpoint of the witness (signature, order) and that the ' +
        'row at each checkpoint\'s seq has the signed hash, and names the first divergence. Answers 200 either way: `ok` says whether it verified.',
      requestBody: { ...jsonBody(schema('AuditVerifyRequest')), required: false },
      responses: {
        200: {
          description:
            'The report. With `Accept: application/x-ndjson` the answer is streamed: `{"progress": {"rows", "total"}}` lines while it runs, ' +
            'then `{"report": …}` (or `{"problem": …}` if it failed after the answer began).',
          headers: { 'x-request-id': ref('headers', 'RequestId') },
          content: { 'application/json': { schema: schema('AuditVerifyReport') }, 'application/x-ndjson': { schema: { type: 'string' } } },
        },
        ...problems(AUTHENTICATED, BODY, ['TENANT_NOT_FOUND']),
      },
    }),
  },
  '/v1/placements': {
    get: operatorOperation('tenant.partitions', {
      tags: ['placement'],
      operationId: 'getPlacements',
      summary: 'The placement directory and the storage cells',
      description: 'Where every tenant\'s data lives (tier, cell, location) and the cells of the deployment; tenant ids only, no tenant data.',
      responses: { 200: ok('The directory and the cells.', schema('PlacementDirectory')), ...problems(AUTHENTICATED) },
    }),
  },
  '/v1/collections': {
    get: tenantOperation('collection.list', 'collections', READERS, {
      operationId: 'listCollections',
      summary: 'List the tenant\'s collections',
      responses: { 200: ok('Every collection, by name.', schema('CollectionList')), ...problems(AUTHENTICATED, ROUTED) },
    }),
  },
  '/v1/collections/{name}': {
    parameters: [ref('parameters', 'CollectionName')],
    put: tenantOperation('collection.define', 'collections', BUILDERS, {
      operationId: 'defineCollection',
      summary: 'Create or change a collection',
      description:
        'An identical definition changes nothing (200, same version). A change that stored records would violate ' +
        `(a removed or retyped field, a new required field, a new unique field with duplicates) is refused. ${PAUSE_NOTE}`,
      requestBody: jsonBody(schema('CollectionDefinition')),
      responses: {
        200: ok('The collection, unchanged or at its new version.', schema('Collection')),
        201: ok('The new collection, version 1.', schema('Collection')),
        ...problems(AUTHENTICATED, BODY, DATA_WRITE, ['COLLECTION_INVALID', 'RECORD_UNIQUE_VIOLATION']),
      },
    }),
    get: tenantOperation('collection.read', 'collections', READERS, {
      operationId: 'getCollection',
      summary: 'Read a collection',
      responses: { 200: ok('The collection at its current version.', schema('Collection')), ...problems(AUTHENTICATED, ROUTED, COLLECTION_PATH) },
    }),
  },
  '/v1/collections/{name}/records': {
    parameters: [ref('parameters', 'CollectionName')],
    post: tenantOperation('record.create', 'records', RECORD_WRITERS, {
      operationId: 'createRecord',
      summary: 'Create a record',
      description: PAUSE_NOTE,
      requestBody: jsonBody(schema('RecordWrite')),
      responses: { 201: ok('The record, with defaults applied.', schema('Record')), ...problems(AUTHENTICATED, BODY, DATA_WRITE, COLLECTION_PATH, RECORD_WRITE) },
    }),
    get: tenantOperation('record.list', 'records', RECORD_READERS, {
      operationId: 'listRecords',
      summary: 'List and query records',
      description: 'Other query parameters, and a parameter given twice, are refused with `REQUEST_INVALID`.',
      parameters: [ref('parameters', 'Filter'), ref('parameters', 'Sort'), ref('parameters', 'Limit'), ref('parameters', 'Cursor')],
      responses: {
        200: ok('A page of records.', schema('RecordPage')),
        ...problems(AUTHENTICATED, ROUTED, COLLECTION_PATH, ['REQUEST_INVALID', 'QUERY_INVALID', 'QUERY_CURSOR_INVALID']),
      },
    }),
  },
  '/v1/collections/{name}/records/{id}': {
    parameters: [ref('parameters', 'CollectionName'), ref('parameters', 'RecordId')],
    get: tenantOperation('record.read', 'records', RECORD_READERS, {
      operationId: 'getRecord',
      summary: 'Read a record',
      description: 'Another tenant\'s record is `RECORD_NOT_FOUND`, exactly like one that does not exist.',
      responses: { 200: ok('The record.', schema('Record')), ...problems(AUTHENTICATED, ROUTED, COLLECTION_PATH, ['RECORD_NOT_FOUND']) },
    }),
    patch: tenantOperation('record.update', 'records', RECORD_WRITERS, {
      operationId: 'updateRecord',
      summary: 'Change some fields of a record',
      description: `The merged record is validated as a whole; \`null\` clears a field. ${PAUSE_NOTE}`,
      requestBody: jsonBody(schema('RecordWrite')),
      responses: { 200: ok('The record.', schema('Record')), ...problems(AUTHENTICATED, BODY, DATA_WRITE, COLLECTION_PATH, RECORD_WRITE, ['RECORD_NOT_FOUND']) },
    }),
    delete: tenantOperation('record.delete', 'records', RECORD_WRITERS, {
      operationId: 'deleteRecord',
      summary: 'Delete a record',
      description: PAUSE_NOTE,
      responses: {
        204: { description: 'Deleted.', headers: { 'x-request-id': ref('headers', 'RequestId') } },
        ...problems(AUTHENTICATED, DATA_WRITE, COLLECTION_PATH, ['RECORD_NOT_FOUND', 'REQUEST_INVALID_JSON', 'REQUEST_BODY_TOO_LARGE', 'REQUEST_UNSUPPORTED_MEDIA_TYPE']),
      },
    }),
  },
};

const document: JsonObject = {
  openapi: '3.1.0',
  jsonSchemaDialect: 'https://spec.openapis.org/oas/3.1/dialect/base',
  info: {
    title: 'Bulkhead',
    version: '0.1.0',
    summary: 'The data plane for multi-tenant low-code platforms.',
    description:
      'Tenants, tenant-defined collections and records behind two independent isolation walls. Every call but ' +
      '`GET /healthz` needs `Authorization: Bearer <token>`: the operator token for `/v1/tenants*`, `/v1/usage*`, `/v1/partitions` and `/v1/placements`, a tenant token for ' +
      'collections and records. Errors are RFC 9457 `application/problem+json` with a stable `code` (docs/errors.md); ' +
      'an unknown path or method is `ROUTE_NOT_FOUND` (404). Request bodies are `application/json` ' +
      '(anything else is `REQUEST_UNSUPPORTED_MEDIA_TYPE`) no larger than the configured body limit (1 MiB by default), ' +
      `nested at most ${MAX_JSON_DEPTH} levels, ` +
      'without U+0000, unpaired surrogates or numbers beyond ±1.8e308 (`REQUEST_INVALID`). A URL the ' +
      'router cannot read (a malformed %-escape, a path segment over 200 characters) is `REQUEST_INVALID` on any route. ' +
      'Every tenant is served from its placement (a tier in a storage cell of its region); a placement outside the tenant\'s region ' +
      'is refused with `RESIDENCY_VIOLATION` on every route that reaches tenant data.',
    license: { name: 'Apache-2.0', identifier: 'Apache-2.0' },
  },
  tags: [
    { name: 'health', description: 'Liveness and this document.' },
    { name: 'tenants', description: 'The platform\'s tenant registry (operator token).' },
    { name: 'usage', description: 'Per-tenant usage, partition health and promotion candidates (operator token).' },
    { name: 'placement', description: 'The placement directory, the storage cells and online tenant moves (operator token).' },
    { name: 'audit', description: 'The tamper-evident audit trail: verification of its hash chains against the signed checkpoints (operator token).' },
    { name: 'keys', description: 'A tenant\'s data keys, their rotation with re-encryption, and erasure by crypto-shredding (operator token).' },
    { name: 'collections', description: 'Tenant-defined collections: the low-code data model.' },
    { name: 'records', description: 'Records of a collection, in the shape of Airtable\'s API.' },
  ],
  paths,
  components: {
    schemas,
    parameters,
    headers: {
      RequestId: { description: 'The request id: the caller\'s `x-request-id` when acceptable, else a generated UUIDv7.', schema: { type: 'string' } },
      RetryAfter: {
        description: 'Whole seconds to wait before retrying (RFC 9110 §10.2.3): until a paused tenant takes writes again (`TENANT_WRITES_PAUSED`), else 1.',
        schema: { type: 'integer', minimum: 1 },
      },
    },
    securitySchemes: {
      tenantToken: {
        type: 'http',
        scheme: 'bearer',
        bearerFormat: 'JWT',
        description:
          'A tenant JWT (HS256 with the server\'s secret, or RS256/EdDSA/ES256 from the identity provider\'s JWKS) with claims ' +
          `\`sub\`, \`tenant\` (the tenant id) and \`roles\` (${TENANT_ROLES.join(', ')}). The tenant of every call comes from this token only.`,
      },
      operatorToken: {
        type: 'http',
        scheme: 'bearer',
        bearerFormat: 'bho_<43 base64url characters>',
        description: 'An opaque operator token for the tenant registry, usage, placements, moves, keys and erasures (`BULKHEAD_OPERATOR_TOKEN`, or the one generated on first start). It reaches no tenant\'s collections or records.',
      },
    },
  },
};

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value)) deepFreeze(child);
  }
  return value;
}

/** The OpenAPI 3.1 document served at `/openapi.json`, frozen. */
export const openApiDocument: Readonly<Record<string, unknown>> = deepFreeze(document);
