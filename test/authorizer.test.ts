import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import { isAuthorized, validate, type EntityJson } from '@cedar-policy/cedar-wasm/nodejs';
import fc from 'fast-check';
import { Authorizer, FAIL_CLOSED_POLICY_ID } from '../src/access/authorizer.js';
import { CEDAR_SCHEMA, PLATFORM_POLICIES, ROLE_POLICIES } from '../src/access/policies.js';
import { ACTIONS, TENANT_ROLES, isPlatformAction, type Action, type Principal, type TenantRole } from '../src/access/principal.js';

const TENANT_A = '0193a0e4-0000-7000-8000-00000000000a';
const TENANT_B = '0193a0e4-0000-7000-8000-00000000000b';

const REGISTRY_ACTIONS = ACTIONS.filter((a) => isPlatformAction(a));
const DATA_ACTIONS = ACTIONS.filter((a) => !isPlatformAction(a));

/** The role matrix of the brief, written out independently of the policies it checks. */
const EXPECTED: Record<TenantRole, readonly Action[]> = {
  tenant_admin: DATA_ACTIONS,
  builder: ['collection.define', 'collection.read', 'collection.list', 'record.read', 'record.list'],
  member: ['collection.read', 'collection.list', 'record.create', 'record.read', 'record.list', 'record.update', 'record.delete'],
  viewer: ['collection.read', 'collection.list', 'record.read', 'record.list'],
  auditor: ['collection.read', 'collection.list', 'audit.read'],
};

function tenantUser(tenantId: string, roles: readonly TenantRole[]): Principal {
  return { kind: 'tenant', tenantId, subject: 'user-1', roles, authMethod: 'jwt' };
}

const OPERATOR: Principal = { kind: 'operator', subject: 'op-1', authMethod: 'operator_token' };

/** A resource of the right shape for the action: registry actions name a tenant, data actions a collection. */
function resourceFor(action: Action, tenantId: string | undefined) {
  if (isPlatformAction(action)) return tenantId === undefined ? {} : { tenantId };
  const collection = action === 'collection.list' ? undefined : 'invoices';
  return { ...(tenantId === undefined ? {} : { tenantId }), ...(collection === undefined ? {} : { collection }) };
}

describe('Cedar policies and schema', () => {
  it('validate against the schema with no error and no warning', () => {
    const answer = validate({
      schema: CEDAR_SCHEMA,
      policies: { staticPolicies: PLATFORM_POLICIES + ROLE_POLICIES },
      validationSettings: { mode: 'strict' },
    });
    assert.equal(answer.type, 'success', JSON.stringify(answer));
    if (answer.type !== 'success') return;
    assert.deepEqual(answer.validationErrors, []);
    assert.deepEqual(answer.validationWarnings, []);
  });

  it('the validation check fails on a policy naming an undeclared attribute', () => {
    const wrong = `@id("wrong") permit (principal is Bulkhead::TenantUser, action, resource) when { principal.department == "sales" };`;
    const answer = validate({ schema: CEDAR_SCHEMA, policies: { staticPolicies: ROLE_POLICIES + wrong } });
    assert.equal(answer.type, 'success', 'the policy parses; it is the validation that must fail');
    if (answer.type !== 'success') return;
    assert.ok(answer.validationErrors.length > 0, 'an undeclared attribute must be a validation error');
    assert.match(answer.validationErrors.map((e) => e.error.message).join('\n'), /department/);
  });

  it('the validation check fails on a policy naming a role that does not exist', () => {
    const typo = ROLE_POLICIES.replace('Bulkhead::Role::"member"', 'Bulkhead::Role::"memebr"');
    assert.notEqual(typo, ROLE_POLICIES);
    const answer = validate({ schema: CEDAR_SCHEMA, policies: { staticPolicies: typo } });
    assert.ok(answer.type === 'failure' || answer.validationErrors.length > 0, 'a misspelt role must not validate');
  });
});

describe('each wall alone denies a cross-tenant request', () => {
  // Evaluates policy text directly, with the entity model of policies.ts, to show what each policy
  // group does on its own.
  function decide(policies: string, principalTenant: string, resourceTenant: string) {
    const entities: EntityJson[] = [
      {
        uid: { type: 'Bulkhead::TenantUser', id: 'u' },
        attrs: { tenant: principalTenant },
        parents: TENANT_ROLES.map((id) => ({ type: 'Bulkhead::Role', id })),
      },
      { uid: { type: 'Bulkhead::Record', id: 'r' }, attrs: { tenant: resourceTenant, collection: 'invoices' }, parents: [] },
    ];
    const answer = isAuthorized({
      principal: { type: 'Bulkhead::TenantUser', id: 'u' },
      action: { type: 'Bulkhead::Action', id: 'record.read' },
      resource: { type: 'Bulkhead::Record', id: 'r' },
      context: {},
      schema: CEDAR_SCHEMA,
      validateRequest: true,
      policies: { staticPolicies: policies },
      entities,
    });
    assert.equal(answer.type, 'success', JSON.stringify(answer));
    if (answer.type !== 'success') throw new Error('unreachable');
    assert.deepEqual(answer.response.diagnostics.errors, []);
    return answer.response.decision;
  }

  const PERMIT_EVERYTHING = `@id("test.permit-everything") permit (principal, action, resource);`;

  it('the platform forbid wins over a permit that matches everything', () => {
    assert.equal(decide(PLATFORM_POLICIES + PERMIT_EVERYTHING, TENANT_A, TENANT_A), 'allow');
    assert.equal(decide(PLATFORM_POLICIES + PERMIT_EVERYTHING, TENANT_A, TENANT_B), 'deny');
  });

  it('the role policies alone, with every role held, permit nothing across tenants', () => {
    assert.equal(decide(ROLE_POLICIES, TENANT_A, TENANT_A), 'allow');
    assert.equal(decide(ROLE_POLICIES, TENANT_A, TENANT_B), 'deny');
  });
});

describe('Authorizer', () => {
  let authorizer: Authorizer;
  before(async () => {
    authorizer = await Authorizer.create();
  });

  it('reports a stable policy version', async () => {
    assert.match(authorizer.policyVersion, /^[0-9a-f]{64}$/);
    assert.equal((await Authorizer.create()).policyVersion, authorizer.policyVersion);
  });

  it('decides every role × action on its own tenant as the role matrix says', () => {
    for (const role of TENANT_ROLES) {
      for (const action of ACTIONS) {
        const decision = authorizer.authorize(tenantUser(TENANT_A, [role]), action, resourceFor(action, TENANT_A));
        const expected = EXPECTED[role].includes(action);
        assert.equal(decision.allowed, expected, `${role} ${action}`);
        if (expected) assert.deepEqual(decision.policies, [`role.${role}`], `${role} ${action}`);
      }
    }
  });

  it('grants several roles the union of their rights', () => {
    for (const action of ACTIONS) {
      const decision = authorizer.authorize(tenantUser(TENANT_A, ['auditor', 'viewer']), action, resourceFor(action, TENANT_A));
      assert.equal(decision.allowed, EXPECTED.viewer.includes(action) || EXPECTED.auditor.includes(action), action);
    }
    const both = authorizer.authorize(tenantUser(TENANT_A, ['viewer', 'auditor']), 'collection.read', { tenantId: TENANT_A, collection: 'x' });
    assert.deepEqual(both.policies, ['role.auditor', 'role.viewer']);
  });

  it('denies every role (and all roles at once) every action on another tenant, by the platform forbid', () => {
    for (const roles of [...TENANT_ROLES.map((r) => [r]), [...TENANT_ROLES]]) {
      for (const action of ACTIONS) {
        const decision = authorizer.authorize(tenantUser(TENANT_A, roles), action, resourceFor(action, TENANT_B));
        assert.equal(decision.allowed, false, `${roles.join('+')} ${action}`);
        assert.ok(decision.policies.includes('platform.forbid-cross-tenant'), `${roles.join('+')} ${action}: ${decision.policies.join(',')}`);
      }
    }
  });

  it('denies tenant data to a tenant principal when the resource names no tenant', () => {
    for (const action of DATA_ACTIONS) {
      const decision = authorizer.authorize(tenantUser(TENANT_A, [...TENANT_ROLES]), action, resourceFor(action, undefined));
      assert.deepEqual(decision, { allowed: false, policies: ['platform.forbid-cross-tenant'] }, action);
    }
  });

  it('lets an operator run the tenant registry', () => {
    for (const action of REGISTRY_ACTIONS) {
      for (const tenantId of [undefined, TENANT_A]) {
        const decision = authorizer.authorize(OPERATOR, action, resourceFor(action, tenantId));
        assert.deepEqual(decision, { allowed: true, policies: ['platform.permit-operator-registry'] }, action);
      }
    }
  });

  it('denies an operator every collection and record action, whatever the tenant', () => {
    for (const action of DATA_ACTIONS) {
      for (const tenantId of [undefined, TENANT_A, TENANT_B]) {
        const decision = authorizer.authorize(OPERATOR, action, resourceFor(action, tenantId));
        assert.deepEqual(decision, { allowed: false, policies: ['platform.forbid-operator-tenant-data'] }, action);
      }
    }
  });

  it('denies a tenant principal every tenant registry action, even on its own tenant', () => {
    for (const roles of [...TENANT_ROLES.map((r) => [r]), [...TENANT_ROLES]]) {
      for (const action of REGISTRY_ACTIONS) {
        for (const tenantId of [undefined, TENANT_A, TENANT_B]) {
          const decision = authorizer.authorize(tenantUser(TENANT_A, roles), action, resourceFor(action, tenantId));
          assert.equal(decision.allowed, false, `${roles.join('+')} ${action}`);
          assert.ok(decision.policies.includes('platform.forbid-tenant-principal-registry'), action);
        }
      }
    }
  });

  it('denies a principal with no role everything, by default', () => {
    for (const action of ACTIONS) {
      const decision = authorizer.authorize(tenantUser(TENANT_A, []), action, resourceFor(action, TENANT_A));
      assert.equal(decision.allowed, false, action);
      if (!isPlatformAction(action)) assert.deepEqual(decision.policies, [], action);
    }
  });

  it('ignores role names it does not know', () => {
    const principal = tenantUser(TENANT_A, ['superuser' as TenantRole]);
    assert.deepEqual(authorizer.authorize(principal, 'record.read', { tenantId: TENANT_A, collection: 'x' }), { allowed: false, policies: [] });
  });

  it('never reuses a cached same-tenant allow for a cross-tenant request', async () => {
    const fresh = await Authorizer.create();
    const principal = tenantUser(TENANT_A, ['member']);
    const same = fresh.authorize(principal, 'record.update', { tenantId: TENANT_A, collection: 'orders' });
    assert.equal(same.allowed, true);
    const cross = fresh.authorize(principal, 'record.update', { tenantId: TENANT_B, collection: 'orders' });
    assert.equal(cross.allowed, false);
    assert.ok(cross.policies.includes('platform.forbid-cross-tenant'));
    // The same with another principal whose tenant is the one just allowed: its key differs in tenant relation.
    assert.equal(fresh.authorize(tenantUser(TENANT_B, ['member']), 'record.update', { tenantId: TENANT_A, collection: 'orders' }).allowed, false);
    assert.equal(fresh.authorize(principal, 'record.update', { collection: 'orders' }).allowed, false);
    // A cached denial does not stick to the legitimate request either.
    assert.equal(fresh.authorize(principal, 'record.update', { tenantId: TENANT_A, collection: 'orders' }).allowed, true);
  });

  it('answers the same from the cache as when deciding afresh', async () => {
    const principal = tenantUser(TENANT_A, ['builder']);
    const resource = { tenantId: TENANT_A, collection: 'c' };
    const first = authorizer.authorize(principal, 'collection.define', resource);
    const second = authorizer.authorize(principal, 'collection.define', resource);
    const fresh = (await Authorizer.create()).authorize(principal, 'collection.define', resource);
    assert.deepEqual(second, first);
    assert.deepEqual(fresh, first);
    assert.ok(Object.isFrozen(first) && Object.isFrozen(first.policies), 'a shared cached decision must be immutable');
  });

  it('fails closed on input its types rule out, without throwing', () => {
    const member = tenantUser(TENANT_A, ['tenant_admin']);
    const denied = { allowed: false, policies: [FAIL_CLOSED_POLICY_ID] };
    assert.deepEqual(authorizer.authorize(member, 'record.purge' as Action, { tenantId: TENANT_A }), denied);
    assert.deepEqual(authorizer.authorize(tenantUser('', ['tenant_admin']), 'record.read', { tenantId: '' }), denied);
    assert.deepEqual(
      authorizer.authorize({ kind: 'root', subject: 'x' } as unknown as Principal, 'record.read', { tenantId: TENANT_A }),
      denied,
    );
    assert.deepEqual(
      authorizer.authorize(member, 'record.read', { tenantId: TENANT_A, collection: 5 } as unknown as { collection: string }),
      denied,
    );
    assert.deepEqual(
      authorizer.authorize({ ...member, roles: 'tenant_admin' } as unknown as Principal, 'record.read', { tenantId: TENANT_A }),
      denied,
    );
    assert.deepEqual(authorizer.authorize(null as unknown as Principal, 'record.read', { tenantId: TENANT_A }), denied);
  });

  it('never allows a tenant principal anything on another tenant, and otherwise follows the matrix (property)', () => {
    const tenantIds = [TENANT_A, TENANT_B, '0193a0e4-0000-7000-8000-00000000000c'];
    const principalArb = fc.oneof(
      fc.record({
        kind: fc.constant('tenant' as const),
        tenantId: fc.constantFrom(...tenantIds),
        subject: fc.constantFrom('alice', 'bob'),
        roles: fc.subarray([...TENANT_ROLES]),
        authMethod: fc.constant('jwt' as const),
      }),
      fc.constant(OPERATOR),
    );
    const resourceArb = fc.record(
      { tenantId: fc.constantFrom(...tenantIds), collection: fc.constantFrom('invoices', 'orders', '', 'a:b') },
      { requiredKeys: [] },
    );
    // One authorizer across all runs, so cached decisions from earlier requests are exercised too.
    fc.assert(
      fc.property(principalArb, fc.constantFrom(...ACTIONS), resourceArb, (principal, action, resource) => {
        const decision = authorizer.authorize(principal, action, resource);
        if (principal.kind === 'tenant' && principal.tenantId !== resource.tenantId) {
          assert.equal(decision.allowed, false);
          assert.ok(decision.policies.includes('platform.forbid-cross-tenant'));
        }
        const expected =
          principal.kind === 'operator'
            ? isPlatformAction(action)
            : principal.tenantId === resource.tenantId && principal.roles.some((r) => EXPECTED[r].includes(action));
        assert.equal(decision.allowed, expected);
      }),
      { numRuns: 2000 },
    );
  });
});
