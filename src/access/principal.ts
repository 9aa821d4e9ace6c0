/** The tenant roles, from most to least privileged. */
export const TENANT_ROLES = ['tenant_admin', 'builder', 'member', 'viewer', 'auditor'] as const;

/** A role a tenant principal can hold. */
export type TenantRole = (typeof TENANT_ROLES)[number];

/** How a principal authenticated. */
export type AuthMethod = 'jwt' | 'operator_token';

/**
 * Who is calling. The tenant of a tenant principal comes only from its verified token,
 * never from a header, body, query parameter or path.
 */
export type Principal =
  | {
      readonly kind: 'tenant';
      readonly tenantId: string;
      readonly subject: string;
      readonly roles: readonly TenantRole[];
      readonly authMethod: 'jwt';
    }
  | {
      readonly kind: 'operator';
      readonly subject: string;
      readonly authMethod: 'operator_token';
    };

/** Every operation the central decision point rules on. */
export const ACTIONS = [
  'tenant.create',
  'tenant.read',
  'tenant.list',
  'tenant.update',
  'tenant.mintToken',
  'tenant.usage',
  'tenant.partitions',
  'tenant.move',
  'tenant.keys',
  'tenant.erase',
  'audit.verify',
  'tenant.audit',
  'collection.define',
  'collection.read',
  'collection.list',
  'record.create',
  'record.read',
  'record.list',
  'record.update',
  'record.delete',
  'audit.read',
] as const;

/** An operation. */
export type Action = (typeof ACTIONS)[number];

/**
 * Whether an action is on the platform rather than on a tenant's data: the tenant registry's
 * (`tenant.*`) and the verification of the whole audit trail. Only operators take them.
 */
export function isPlatformAction(action: string): boolean {
  return action.startsWith('tenant.') || action === 'audit.verify';
}

/**
 * What an operation acts on. `tenantId` is the tenant that owns the resource: for tenant data it
 * is the tenant whose rows the operation touches; for the platform's tenant registry it is absent.
 */
export interface Resource {
  readonly tenantId?: string;
  readonly collection?: string;
}

/** The outcome of one decision, with the ids of the policies that determined it (for the audit trail). */
export interface Decision {
  readonly allowed: boolean;
  readonly policies: readonly string[];
}
