/**
 * Bulkhead's access policies and their Cedar schema, as code.
 *
 * They live in a TypeScript module rather than in `.cedar` files because the build copies
 * nothing into `dist/`: a string constant ships with the compiled code and cannot go missing
 * at run time, which would leave the decision point without policies.
 *
 * Every policy carries an `@id` annotation. Cedar names policies parsed from text `policy0`,
 * `policy1`, … by position, which would change whenever a policy is added; the authorizer keys
 * the policy set by these annotations instead, so the ids recorded in the audit trail are stable
 * and say what decided.
 *
 * The entity model (see `CEDAR_SCHEMA`):
 * - principals: `Bulkhead::TenantUser` (attribute `tenant`; member of one `Bulkhead::Role` entity
 *   per role it holds) and `Bulkhead::Operator`;
 * - resources: `Bulkhead::Platform` (the tenant registry; `tenant` names the tenant an operation
 *   manages, absent for create and list), `Bulkhead::Collection` and `Bulkhead::Record` (tenant data;
 *   `tenant` is the owning tenant, `collection` the collection name, absent for a list of collections);
 * - actions: `Bulkhead::Action::"<action>"` for every action of `ACTIONS`, grouped under
 *   `"tenant-registry"` (tenant.*) and `"tenant-data"` (collection.*, record.*).
 *
 * Policies must decide on attributes and role membership only, never on entity ids: the authorizer
 * builds the entities from the fields of its cache key (see `authorizer.ts`), not from the caller's ids.
 */

/**
 * The Cedar schema, in Cedar's human-readable schema format. Roles are an enumerated entity type so
 * that the validator rejects a policy naming a role that does not exist (a typo would otherwise be a
 * permit that silently never matches).
 */
export const CEDAR_SCHEMA = `
namespace Bulkhead {
  // The tenant roles of principal.ts, from most to least privileged.
  entity Role enum ["tenant_admin", "builder", "member", "viewer", "auditor"];

  // A principal authenticated by a tenant token. Its tenant comes only from the verified token.
  entity TenantUser in [Role] = { tenant: String };

  // A principal authenticated by an operator token: not a tenant principal.
  entity Operator;

  // The platform's tenant registry.
  entity Platform = { tenant?: String };

  // Tenant data. \`tenant\` is optional so that a request naming no tenant can be put to the
  // policies, which then deny it, rather than be turned away before any policy decides.
  entity Collection = { tenant?: String, collection?: String };
  entity Record = { tenant?: String, collection?: String };

  action "tenant-registry";
  action "tenant-data";

  action "tenant.create", "tenant.read", "tenant.list", "tenant.update", "tenant.mintToken" in ["tenant-registry"]
    appliesTo { principal: [TenantUser, Operator], resource: [Platform] };

  // Operator views across tenants (usage, partition health: aggregates, no tenant data), tenant
  // moves, key rotation, erasure, and verification of the audit trail.
  action "tenant.usage", "tenant.partitions", "tenant.move", "tenant.keys", "tenant.erase", "tenant.audit", "audit.verify" in ["tenant-registry"]
    appliesTo { principal: [TenantUser, Operator], resource: [Platform] };

  action "collection.define", "collection.read", "collection.list" in ["tenant-data"]
    appliesTo { principal: [TenantUser, Operator], resource: [Collection] };

  action "record.create", "record.read", "record.list", "record.update", "record.delete" in ["tenant-data"]
    appliesTo { principal: [TenantUser, Operator], resource: [Record] };

  // A tenant's own audit trail (its auditors and admins; operators read any with tenant.audit).
  action "audit.read" in ["tenant-data"]
    appliesTo { principal: [TenantUser, Operator], resource: [Record] };
}
`;

/**
 * The platform policies: the tenant boundary and the split between operators and tenant principals.
 * They are forbids (but one permit), and in Cedar a satisfied forbid wins over every permit, so no
 * role policy or tenant-authored rule, present or future, can open what they close.
 */
export const PLATFORM_POLICIES = `
// The tenant is the security boundary (SPEC, principle 1): a tenant principal acts only on its own
// tenant's resources. Unconditional: a resource that names no tenant is denied as well.
@id("platform.forbid-cross-tenant")
forbid (principal is Bulkhead::TenantUser, action, resource)
unless { resource has tenant && resource.tenant == principal.tenant };

// A tenant token reaches no tenant-registry operation, not even on its own tenant.
@id("platform.forbid-tenant-principal-registry")
forbid (principal is Bulkhead::TenantUser, action in Bulkhead::Action::"tenant-registry", resource);

// An operator token is not a tenant principal: it reads and writes no tenant's collections or records.
@id("platform.forbid-operator-tenant-data")
forbid (principal is Bulkhead::Operator, action in Bulkhead::Action::"tenant-data", resource);

// Operators run the tenant registry: create, read, list and suspend tenants, mint development tokens,
// and read usage and partition health.
@id("platform.permit-operator-registry")
permit (principal is Bulkhead::Operator, action in Bulkhead::Action::"tenant-registry", resource is Bulkhead::Platform);
`;

/**
 * The tenant role policies. Each permit also requires the resource to belong to the principal's
 * tenant, although the platform forbid already ensures it: the two are independent, so removing or
 * breaking either one alone still leaves cross-tenant requests denied.
 */
export const ROLE_POLICIES = `
// A tenant admin does everything on its tenant's collections and records.
@id("role.tenant_admin")
permit (
  principal in Bulkhead::Role::"tenant_admin",
  action in Bulkhead::Action::"tenant-data",
  resource
)
when { resource has tenant && resource.tenant == principal.tenant };

// A builder defines collections (the low-code part) and reads the records they hold.
@id("role.builder")
permit (
  principal in Bulkhead::Role::"builder",
  action in [
    Bulkhead::Action::"collection.define",
    Bulkhead::Action::"collection.read",
    Bulkhead::Action::"collection.list",
    Bulkhead::Action::"record.read",
    Bulkhead::Action::"record.list"
  ],
  resource
)
when { resource has tenant && resource.tenant == principal.tenant };

// A member works with records and reads the collection definitions it needs to do so.
@id("role.member")
permit (
  principal in Bulkhead::Role::"member",
  action in [
    Bulkhead::Action::"collection.read",
    Bulkhead::Action::"collection.list",
    Bulkhead::Action::"record.create",
    Bulkhead::Action::"record.read",
    Bulkhead::Action::"record.list",
    Bulkhead::Action::"record.update",
    Bulkhead::Action::"record.delete"
  ],
  resource
)
when { resource has tenant && resource.tenant == principal.tenant };

// A viewer reads records and collection definitions.
@id("role.viewer")
permit (
  principal in Bulkhead::Role::"viewer",
  action in [
    Bulkhead::Action::"collection.read",
    Bulkhead::Action::"collection.list",
    Bulkhead::Action::"record.read",
    Bulkhead::Action::"record.list"
  ],
  resource
)
when { resource has tenant && resource.tenant == principal.tenant };

// An auditor sees which collections exist, not what they hold, and reads its tenant's audit trail.
@id("role.auditor")
permit (
  principal in Bulkhead::Role::"auditor",
  action in [Bulkhead::Action::"collection.read", Bulkhead::Action::"collection.list", Bulkhead::Action::"audit.read"],
  resource
)
when { resource has tenant && resource.tenant == principal.tenant };
`;
