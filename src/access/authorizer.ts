/**
 * The central authorization decision point (SPEC §5): every operation is put to the Cedar
 * policies of `policies.ts`, validated against their schema when the authorizer is created.
 *
 * Deny by default, fail closed (SPEC, principle 6): a request no permit matches, a malformed
 * request, an evaluation error in any policy or an engine failure is a denial, never an exception
 * that a caller could mistake for a pass.
 */
import { createHash } from 'node:crypto';
import {
  policySetTextToParts,
  policyToJson,
  preparsePolicySet,
  preparseSchema,
  statefulIsAuthorized,
  validate,
  type AuthorizationAnswer,
  type EntityJson,
  type TypeAndId,
} from '@cedar-policy/cedar-wasm/nodejs';
import { BulkheadError } from '../errors.js';
import { CEDAR_SCHEMA, PLATFORM_POLICIES, ROLE_POLICIES } from './policies.js';
import { ACTIONS, TENANT_ROLES, isPlatformAction, type Action, type Decision, type Principal, type Resource } from './principal.js';

/**
 * The policy id reported when a request was denied because it could not be decided (a malformed
 * request, a policy evaluation error, an engine failure), so the audit trail tells such a denial
 * apart from one a policy made.
 */
export const FAIL_CLOSED_POLICY_ID = 'authorizer.fail-closed';

/**
 * Decisions kept. The key space is small (kind × tenant relation × role set × action × collection),
 * so this holds every live combination of a large deployment; past it the oldest entry goes.
 */
const CACHE_LIMIT = 10_000;

/** Collection names longer than this are decided but not cached, so the cache's memory stays bounded. */
const MAX_CACHED_COLLECTION_LENGTH = 256;

// Placeholder values put to Cedar in place of the caller's ids: the request Cedar sees is built
// from the cache key alone (see `#decide`), so a cached decision and a fresh one cannot differ.
const PRINCIPAL_TENANT = 'principal-tenant';
const OTHER_TENANT = 'other-tenant';

/** How the resource's tenant relates to the principal's: the only tenant fact a decision may use. */
type TenantRelation = 'same' | 'other' | 'none';

const ACTION_INDEX: ReadonlyMap<string, number> = new Map(ACTIONS.map((action, index) => [action, index]));
const ROLE_BIT: ReadonlyMap<string, number> = new Map(TENANT_ROLES.map((role, index) => [role, 1 << index]));

const FAIL_CLOSED: Decision = Object.freeze({ allowed: false, policies: Object.freeze([FAIL_CLOSED_POLICY_ID]) });

/**
 * Decides whether a principal may perform an action on a resource. Create one per process with
 * `Authorizer.create()` and share it: creation validates and pre-parses the policies (milliseconds),
 * a fresh decision costs tens of microseconds, a cached one about a microsecond.
 */
export class Authorizer {
  readonly #policySetId: string;
  readonly #schemaName: string;
  readonly #policyVersion: string;
  readonly #cache = new Map<string, Decision>();

  private constructor(policyVersion: string) {
    this.#policyVersion = policyVersion;
    // Cedar keeps pre-parsed sets in one table per process; naming them by content hash means two
    // authorizers over the same policies share an entry and different policies never collide.
    this.#policySetId = `bulkhead-policies-${policyVersion}`;
    this.#schemaName = `bulkhead-schema-${policyVersion}`;
  }

  /**
   * Loads the policies, refuses to start unless they validate against the schema with no error
   * and no warning (a policy that can never apply is a defect too), and pre-parses them once.
   * Throws a `BulkheadError` with code `INTERNAL` when they do not.
   */
  static async create(): Promise<Authorizer> {
    const policies = policiesById([PLATFORM_POLICIES, ROLE_POLICIES]);

    const validation = validate({
      schema: CEDAR_SCHEMA,
      policies: { staticPolicies: policies },
      validationSettings: { mode: 'strict' },
    });
    if (validation.type === 'failure') {
      throw policyError(`the access policies or schema do not parse: ${messages(validation.errors)}`);
    }
    const problems = [...validation.validationErrors, ...validation.validationWarnings];
    if (problems.length > 0) {
      throw policyError(
        `the access policies do not validate against the Cedar schema: ${problems.map((p) => `${p.policyId}: ${p.error.message}`).join('; ')}`,
      );
    }

    const authorizer = new Authorizer(policyVersionOf());
    const schema = preparseSchema(authorizer.#schemaName, CEDAR_SCHEMA);
    if (schema.type === 'failure') throw policyError(`the Cedar schema does not parse: ${messages(schema.errors)}`);
    const set = preparsePolicySet(authorizer.#policySetId, { staticPolicies: policies });
    if (set.type === 'failure') throw policyError(`the access policies do not parse: ${messages(set.errors)}`);
    return authorizer;
  }

  /** SHA-256 (hex) of the schema and policy text, recorded with decisions in the audit trail. */
  get policyVersion(): string {
    return this.#policyVersion;
  }

  /**
   * Decides one request. Never throws: anything that cannot be decided is denied with
   * `FAIL_CLOSED_POLICY_ID`. `policies` holds the ids of the policies that determined the
   * decision: the satisfied permits of an allow, the satisfied forbids of a forbidden request,
   * and nothing for a request no permit matched.
   *
   * Role names a principal holds that are not `TENANT_ROLES` are ignored: no policy can name them.
   */
  authorize(principal: Principal, action: Action, resource: Resource): Decision {
    // Callers are typed, but tokens and routes are not: check at run time what the types promise.
    const actionIndex = ACTION_INDEX.get(action);
    if (actionIndex === undefined || typeof principal !== 'object' || principal === null) return FAIL_CLOSED;
    const resourceTenant: unknown = resource?.tenantId;
    const rawCollection: unknown = resource?.collection;
    if (rawCollection !== undefined && typeof rawCollection !== 'string') return FAIL_CLOSED;

    let relation: TenantRelation;
    let roleMask = 0;
    if (principal.kind === 'tenant') {
      if (typeof principal.tenantId !== 'string' || principal.tenantId === '' || !Array.isArray(principal.roles)) {
        return FAIL_CLOSED;
      }
      relation = resourceTenant === undefined ? 'none' : resourceTenant === principal.tenantId ? 'same' : 'other';
      for (const role of principal.roles) roleMask |= ROLE_BIT.get(role) ?? 0;
    } else if (principal.kind === 'operator') {
      // An operator has no tenant, so a resource's tenant is never its own.
      relation = resourceTenant === undefined ? 'none' : 'other';
    } else {
      return FAIL_CLOSED;
    }

    // The registry has no collections: dropping the name keeps such keys few.
    const collection = isPlatformAction(action) ? undefined : rawCollection;

    // Every input of `#decide` is in the key, in a fixed-shape prefix, with the free-form
    // collection name last and marked present or absent: two different requests cannot share a key.
    const key = `${principal.kind === 'tenant' ? 't' : 'o'}${relation[0]}${roleMask}:${actionIndex}:${collection === undefined ? '-' : `+${collection}`}`;
    const cached = this.#cache.get(key);
    if (cached !== undefined) return cached;

    const decision = this.#decide(principal.kind, relation, roleMask, action, collection);
    if (decision !== FAIL_CLOSED && (collection === undefined || collection.length <= MAX_CACHED_COLLECTION_LENGTH)) {
      if (this.#cache.size >= CACHE_LIMIT) {
        const oldest = this.#cache.keys().next();
        if (!oldest.done) this.#cache.delete(oldest.value);
      }
      this.#cache.set(key, decision);
    }
    return decision;
  }

  /**
   * Puts the request to Cedar. It takes exactly the fields of the cache key and builds the
   * entities from them alone (placeholder ids and tenants, the relation between the tenants kept),
   * which is what makes caching by that key sound whatever the policies say.
   */
  #decide(
    kind: 'tenant' | 'operator',
    relation: TenantRelation,
    roleMask: number,
    action: Action,
    collection: string | undefined,
  ): Decision {
    const principalUid: TypeAndId =
      kind === 'tenant' ? { type: 'Bulkhead::TenantUser', id: 'principal' } : { type: 'Bulkhead::Operator', id: 'operator' };
    const principalEntity: EntityJson = {
      uid: principalUid,
      attrs: kind === 'tenant' ? { tenant: PRINCIPAL_TENANT } : {},
      parents: TENANT_ROLES.filter((role) => (roleMask & (ROLE_BIT.get(role) ?? 0)) !== 0).map((role) => ({
        type: 'Bulkhead::Role',
        id: role,
      })),
    };

    const resourceType = isPlatformAction(action)
      ? 'Bulkhead::Platform'
      : action.startsWith('collection.')
        ? 'Bulkhead::Collection'
        : 'Bulkhead::Record';
    const resourceUid: TypeAndId = { type: resourceType, id: 'resource' };
    const resourceAttrs: Record<string, string> = {};
    if (relation !== 'none') resourceAttrs.tenant = relation === 'same' ? PRINCIPAL_TENANT : OTHER_TENANT;
    if (collection !== undefined) resourceAttrs.collection = collection;

    let answer: AuthorizationAnswer;
    try {
      answer = statefulIsAuthorized({
        principal: principalUid,
        action: { type: 'Bulkhead::Action', id: action },
        resource: resourceUid,
        context: {},
        preparsedPolicySetId: this.#policySetId,
        preparsedSchemaName: this.#schemaName,
        // Request and entities are checked against the schema, so a request outside the model
        // (say, a resource type an action does not apply to) is refused rather than judged.
        validateRequest: true,
        entities: [principalEntity, { uid: resourceUid, attrs: resourceAttrs, parents: [] }],
      });
    } catch {
      // A trap inside the engine: nothing it returned can be trusted.
      return FAIL_CLOSED;
    }
    // Cedar skips a policy whose evaluation errs; were it a forbid, the request could pass. Any
    // error therefore denies the request outright.
    if (answer.type === 'failure' || answer.response.diagnostics.errors.length > 0) return FAIL_CLOSED;

    return Object.freeze({
      allowed: answer.response.decision === 'allow',
      policies: Object.freeze([...answer.response.diagnostics.reason].sort()),
    });
  }
}

/** Splits policy texts into policies keyed by their `@id` annotation, which must be present and unique. */
function policiesById(texts: readonly string[]): Record<string, string> {
  const byId: Record<string, string> = {};
  for (const text of texts) {
    const parts = policySetTextToParts(text);
    if (parts.type === 'failure') throw policyError(`the access policies do not parse: ${messages(parts.errors)}`);
    if (parts.policy_templates.length > 0) throw policyError('the access policies must not contain templates');
    for (const policy of parts.policies) {
      const json = policyToJson(policy);
      if (json.type === 'failure') throw policyError(`an access policy does not parse: ${messages(json.errors)}`);
      const id = json.json.annotations?.id;
      if (id === undefined || id === '') throw policyError('every access policy needs an @id("...") annotation');
      if (Object.hasOwn(byId, id)) throw policyError(`two access policies have @id("${id}"); give each a unique one`);
      byId[id] = policy;
    }
  }
  return byId;
}

function policyVersionOf(): string {
  // NUL separators: the three texts cannot be re-split into a different triple with the same hash input.
  return createHash('sha256').update(`${CEDAR_SCHEMA}\0${PLATFORM_POLICIES}\0${ROLE_POLICIES}`).digest('hex');
}

function messages(errors: readonly { message: string }[]): string {
  return errors.map((e) => e.message).join('; ');
}

function policyError(message: string): BulkheadError {
  return new BulkheadError('INTERNAL', message);
}
