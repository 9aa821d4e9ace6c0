import type { ScopedStore } from '../store/store.js';
import { dataGrantsSql, dataIndexesSql, dataTablesSql, dataTriggersSql } from '../store/migrations.js';
import { mirrorTenantRow, type Cell } from './cells.js';
import type { Tier, TenantRow, TierScopeOptions } from './tier.js';

/** Serializes bridge DDL per database: concurrent role and schema creation collide in the catalogs. */
const PROVISION_LOCK = 7283460013;

/**
 * Bridge tier: a schema per tenant with the pool's tables (unpartitioned), RLS still forced, and
 * a database role per tenant that holds privileges on that schema only. A statement that lost its
 * tenant context, or named another schema, still cannot reach another tenant: its role has no
 * privilege there. The role is NOINHERIT and a member of no role: what it needs outside its schema
 * (the registry check's view, the shared check functions, and USAGE on their schema) is granted
 * to PUBLIC by migration 14, harmlessly. PostgreSQL 15 computes an inheriting role's memberships
 * again at every switch to it, in a search that grows with the roles a connection has served
 * (bench/README.md, "Bridge roles without a group"); a NOINHERIT role skips it.
 *
 * Roles made before migration 14 inherited from the group role `<appRole>_bridge`; every open
 * makes them as the roles made since (`legacyBridgeRolesSql`, run as the connecting user, whose
 * CREATEROLE made them). Without that privilege they keep the group, and work as before, without
 * the gain.
 */
export class BridgeTier implements Tier {
  readonly name = 'bridge' as const;

  locationOf(_cell: Cell, tenantId: string): string {
    return `tenant_${hex(tenantId)}`;
  }

  /**
   * The tenant's role: the application role's name, `_b`, the tenant id's hex digits (≤ 63 bytes).
   * Migration 14's `bulkhead.tenant_state` view matches this name in SQL.
   */
  roleOf(cell: Cell, tenantId: string): string {
    return `${cell.store.options.appRole}_b${hex(tenantId)}`;
  }

  async provision(cell: Cell, tenant: TenantRow): Promise<void> {
    const schema = this.locationOf(cell, tenant.id);
    const role = this.roleOf(cell, tenant.id);
    const { ownerRole } = cell.store.options;
    const [exists] = await cell.store.engine.batch([{ text: 'SELECT to_regclass($1) IS NOT NULL AS present', values: [`${schema}.index_values`] }]);
    // The script is one transaction: either every object exists or none does.
    if (exists!.rows[0]!.present !== true) {
      await cell.store.engine.script(`SELECT pg_advisory_xact_lock(${PROVISION_LOCK});
DO $role$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '${role}') THEN
    CREATE ROLE ${role} NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT;
  END IF;
  IF NOT pg_has_role(current_user, '${role}', 'MEMBER') THEN
    EXECUTE format('GRANT ${role} TO %I', current_user);
  END IF;
END
$role$;
CREATE SCHEMA ${schema} AUTHORIZATION ${ownerRole};
SET LOCAL ROLE ${ownerRole};
${dataTablesSql(schema)}
${dataTriggersSql(schema)}
${dataIndexesSql(schema)}
REVOKE ALL ON ALL TABLES IN SCHEMA ${schema} FROM PUBLIC;
${dataGrantsSql(schema, role)}`);
    }
    await this.mirror(cell, tenant);
  }

  async mirror(cell: Cell, tenant: TenantRow): Promise<void> {
    if (!cell.control) await mirrorTenantRow(cell.store, tenant);
  }

  async scope(cell: Cell, tenantId: string, location: string, options: TierScopeOptions): Promise<ScopedStore> {
    return cell.store.tenant(tenantId, { ...options, role: this.roleOf(cell, tenantId), schema: location });
  }

  async drop(cell: Cell, tenantId: string, location: string): Promise<void> {
    const role = this.roleOf(cell, tenantId);
    const { ownerRole } = cell.store.options;
    await cell.store.engine.script(`SELECT pg_advisory_xact_lock(${PROVISION_LOCK});
SET LOCAL ROLE ${ownerRole};
DROP SCHEMA IF EXISTS ${location} CASCADE;
RESET ROLE;
DROP ROLE IF EXISTS ${role};`);
  }
}

/** The 32 hex digits of a (validated) tenant id: the only tenant-derived text in bridge and silo names. */
export function hex(tenantId: string): string {
  const h = tenantId.replace(/-/g, '');
  if (!/^[0-9a-f]{32}$/.test(h)) throw new TypeError('a placement needs a validated tenant id');
  return h;
}
