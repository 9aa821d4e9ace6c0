/**
 * What the HTTP layer tells the audit trail about a request (docs/audit.md, "Writing"): the
 * context a route fills in as soon as the decision point has ruled, and the helpers that turn a
 * principal, a read's collection and an operator's answer into the event's identifiers.
 */
import type { Principal } from '../access/principal.js';
import type { AuditDecision, AuditOperatorFields, AuditPrincipal, AuditQuery } from '../audit/event.js';
import { isUuid } from '../ids.js';
import { SENSITIVE_CLASSIFICATIONS, type CollectionDefinition } from '../tenancy/fields.js';

/** What a route tells the audit trail about its operation, as soon as it knows it. */
export interface AuditContext {
  /** The chain: the principal's own tenant, or null for the platform chain (operators). */
  readonly tenantId: string | null;
  /** The decision point's action, or `request.authenticate` for a request refused before any decision. */
  readonly action: string;
  readonly collection?: string;
  readonly decision: AuditDecision;
  recordIds?: string[];
  query?: AuditQuery;
  operator?: AuditOperatorFields;
  /** Set when the event was appended in the write's own transaction. */
  written?: boolean;
  /** A successful read the collection's read-audit level leaves out (refusals and failures are recorded all the same). */
  unaudited?: boolean;
}

/**
 * Whether a successful read of `records` is audited under the collection's read-audit level:
 * `all`, none (`off`), or only when a returned record holds a value of a field classified above
 * internal (`classified`).
 */
export function readAudited(definition: CollectionDefinition, records: readonly { readonly fields: Record<string, unknown> }[]): boolean {
  const level = definition.readAudit ?? 'all';
  if (level === 'all') return true;
  if (level === 'off') return false;
  const sensitive = Object.entries(definition.fields).filter(([, f]) => SENSITIVE_CLASSIFICATIONS.includes(f.classification)).map(([name]) => name);
  return records.some((r) => sensitive.some((f) => r.fields[f] !== undefined && r.fields[f] !== null));
}

/** Jobs an operator route answers with (a move, a key rotation, an erasure): their id is the event's `jobId`. */
const JOB_ROUTES = new Set(['/v1/tenants/:id/moves', '/v1/tenants/:id/keys/rotate', '/v1/tenants/:id/erase']);

/**
 * The operator fields of a successful operator action, from what it answered: the tenant it was
 * about (a tenant view's `id`, a job's `tenantId`) and the job it started. Identifiers only.
 */
export function operatorFieldsOf(route: string | undefined, payload: unknown): AuditOperatorFields | undefined {
  if (route === undefined || !route.startsWith('/v1/tenants') || typeof payload !== 'object' || payload === null) return undefined;
  const body = payload as { id?: unknown; tenantId?: unknown; slug?: unknown };
  const target = isUuid(body.tenantId) ? body.tenantId : typeof body.slug === 'string' && isUuid(body.id) ? body.id : undefined;
  if (target === undefined) return undefined;
  return { targetTenantId: target, ...(JOB_ROUTES.has(route) && isUuid(body.id) ? { jobId: body.id } : {}) };
}

/** The principal as an audit event names it: identifiers only. */
export function auditPrincipal(p: Principal): AuditPrincipal {
  return p.kind === 'tenant' ? { subject: p.subject, roles: [...p.roles], authMethod: 'jwt' } : { subject: p.subject, roles: [], authMethod: 'operator_token' };
}
