/**
 * The audit trail's core (issue 5): events that refuse every key outside their schema, the hash
 * chain (known answers rebuilt here from the layout docs/audit.md gives, RFC 8785 vectors), the
 * tamper matrix on a 1,000-event chain with signed checkpoints in a witness (each tampering found,
 * with the seq where it starts), the signing key files, and the audit tables against a real
 * database (PGlite, and PostgreSQL when BULKHEAD_TEST_DATABASE_URL is set): the application role
 * may only insert and select, and UPDATE, DELETE and TRUNCATE fail for the owner and a superuser too.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, mkdtemp, readFile, rm, stat, writeFile, appendFile } from 'node:fs/promises';
import { createHash, createPrivateKey, generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto';
import { tmpdir } from 'node:os';
import fc from 'fast-check';
import { join } from 'node:path';
import { canonicalJson } from '../src/crypto/encoding.js';
import { BulkheadError, DatabaseError } from '../src/errors.js';
import { uuidv7 } from '../src/ids.js';
import { createAuditEvent, queryFingerprint, type AuditEvent, type AuditEventInput } from '../src/audit/event.js';
import {
  AuditChainBrokenError,
  ChainLinker,
  canonicalEventJson,
  PLATFORM_CHAIN,
  genesisHead,
  linkEvent,
  requireIntact,
  verifyChain,
  type Anchor,
  type DivergenceKind,
  type StoredRow,
  type VerifyResult,
} from '../src/audit/chain.js';
import {
  CheckpointInvalidError,
  CheckpointSigner,
  SIGNING_KEY_FILE,
  VERIFYING_KEY_FILE,
  checkpointKeys,
  checkpointSigningInput,
  keyIdOf,
  loadOrCreateSigner,
  loadVerifyingKey,
  verifyCheckpoint,
  type SignedCheckpoint,
} from '../src/audit/checkpoint.js';
import { Witness, defaultWitnessDir } from '../src/audit/witness.js';
import {
  AUDIT_APPEND_ONLY_SQLSTATE,
  AUDIT_LINK_SQLSTATE,
  auditEventsTableSql,
  auditFunctionsSql,
  auditSchemaSql,
} from '../src/audit/schema.js';
import { rolesSql } from '../src/store/migrations.js';
import { CONTEXT_SQL } from '../src/store/store.js';
import type { Engine, Statement } from '../src/store/engine.js';
import { BACKENDS, createTestDatabase, type TestDatabase } from './support/backends.js';

const VECTORS = JSON.parse(await readFile(new URL('./vectors/audit-chain.json', import.meta.url), 'utf8'));
const TENANT = '0191e5a0-7c2a-7b3d-9e4f-0a1b2c3d4e5f';
const OTHER_TENANT = '0191e5a0-7c2a-7b3d-9e4f-ffffffffffff';

/** A valid event input for `tenantId`, varied by `i`; `over` replaces members. */
function input(i: number, tenantId: string | null = TENANT, over: Partial<AuditEventInput> = {}): AuditEventInput {
  return {
    time: new Date(Date.UTC(2026, 10, 27, 10, 0, 0) + i * 7).toISOString(),
    tenantId,
    principal: { subject: `user-${i % 17}`, roles: ['member'], authMethod: 'jwt' },
    action: i % 3 === 0 ? 'record.list' : 'record.read',
    collection: 'patients',
    ...(i % 3 === 0 ? { query: { fingerprint: queryFingerprint({ filter: { status: 'eq' }, i: i % 5 }), rowCount: i % 50 } } : { recordIds: [uuidv7()] }),
    decision: { effect: 'allow', policyIds: ['role.member'] },
    requestId: `req-${i}`,
    sourceAddress: '198.51.100.23',
    outcome: 'success',
    ...over,
  };
}

/** Asserts that `fn` throws a BulkheadError with `code` (and a message matching `message`). */
function throwsCode(fn: () => unknown, code: string, message?: RegExp): BulkheadError {
  let caught: unknown;
  try {
    fn();
  } catch (error) {
    caught = error;
  }
  assert.ok(caught instanceof BulkheadError, `expected a BulkheadError ${code}, got ${String(caught)}`);
  assert.equal(caught.code, code, caught.message);
  if (message) assert.match(caught.message, message);
  return caught;
}

async function rejectsCode(promise: Promise<unknown>, code: string, message?: RegExp): Promise<BulkheadError> {
  let caught: unknown;
  try {
    await promise;
  } catch (error) {
    caught = error;
  }
  assert.ok(caught instanceof BulkheadError, `expected a BulkheadError ${code}, got ${String(caught)}`);
  assert.equal(caught.code, code, caught.message);
  if (message) assert.match(caught.message, message);
  return caught;
}

/** A stored row as a database returns it: plain JSON event (parsed from text), bigint seq as text. */
interface Row {
  seq: number | string;
  prevHash: Buffer;
  hash: Buffer;
  event: Record<string, unknown>;
  time?: Date | string;
}

/** A chain of `n` events for `chain`, as rows read back from storage (events through JSON). */
function buildChain(n: number, tenantId: string | null = TENANT): Row[] {
  const linker = new ChainLinker(tenantId ?? PLATFORM_CHAIN);
  const rows: Row[] = [];
  for (let i = 1; i <= n; i++) {
    const r = linker.append(createAuditEvent(input(i, tenantId)));
    rows.push({ seq: r.seq, prevHash: r.prevHash, hash: r.hash, event: JSON.parse(r.json) });
  }
  return rows;
}

/** A deep copy of rows, so each tampering starts from the intact chain. */
function copy(rows: readonly Row[]): Row[] {
  return rows.map((r) => ({ ...r, prevHash: Buffer.from(r.prevHash), hash: Buffer.from(r.hash), event: structuredClone(r.event) }));
}

/** Rows recomputed from `from` on (seq, prevHash, hash), as someone without the signing key can. */
function relink(rows: Row[], from: number): void {
  for (let i = from - 1; i < rows.length; i++) {
    const prev = i === 0 ? Buffer.alloc(32) : rows[i - 1]!.hash;
    const seq = i + 1;
    rows[i]!.seq = seq;
    rows[i]!.event = { ...rows[i]!.event, seq };
    rows[i]!.prevHash = Buffer.from(prev);
    rows[i]!.hash = createHash('sha256').update(prev).update(canonicalJson(rows[i]!.event), 'utf8').digest();
  }
}

async function* stream<T>(items: Iterable<T>): AsyncGenerator<T> {
  for (const item of items) yield item;
}

function assertDivergence(result: VerifyResult, kind: DivergenceKind, seq: number): void {
  assert.equal(result.ok, false, `expected ${kind} at seq ${seq}, the chain verified`);
  if (result.ok) return;
  assert.deepEqual({ kind: result.divergence.kind, seq: result.divergence.seq }, { kind, seq }, result.divergence.message);
  assert.ok(result.divergence.message.length > 20);
}

describe('audit event', () => {
  it('keeps exactly the schema keys, frozen, from a complete event', () => {
    const e = createAuditEvent(VECTORS.links[0].input);
    assert.deepEqual(JSON.parse(JSON.stringify(e)), VECTORS.links[0].input);
    assert.ok(Object.isFrozen(e) && Object.isFrozen(e.principal) && Object.isFrozen(e.principal!.roles) && Object.isFrozen(e.decision));
    const operator = createAuditEvent({
      ...input(1, null),
      principal: { subject: 'ops', roles: [], authMethod: 'operator_token' },
      action: 'tenant.move',
      recordIds: undefined,
      collection: undefined,
      query: undefined,
      operator: {
        targetTenantId: TENANT,
        jobId: '0191e5a1-2222-7222-8222-222222222222',
        from: { tier: 'pool', region: 'eu-west', cell: 'c1' },
        to: { tier: 'silo', region: 'eu-west' },
        legalBasis: 'GDPR Art. 46(2)(c) standard contractual clauses',
      },
    });
    assert.equal(operator.operator?.to?.tier, 'silo');
    assert.equal('recordIds' in operator, false, 'an undefined optional member is left out, not stored as undefined');
  });

  it('defaults the time to now and takes a Date', () => {
    const before = Date.now();
    const { time, ...rest } = input(1);
    const e = createAuditEvent(rest);
    assert.ok(Date.parse(e.time) >= before && Date.parse(e.time) <= Date.now());
    assert.equal(createAuditEvent({ ...rest, time: new Date(Date.UTC(2026, 0, 2)) }).time, '2026-01-02T00:00:00.000Z');
    void time;
  });

  it('refuses a key outside the schema at any depth, naming the key and never its value', () => {
    const secret = 'hunter2-078-05-1120';
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ ...input(1), password: secret }, 'password'],
      [{ ...input(1), fields: { ssn: secret } }, 'fields'],
      [{ ...input(1), seq: 7 }, 'seq'],
      [{ ...input(1), principal: { subject: 'u', roles: [], authMethod: 'jwt', token: secret } }, 'principal.token'],
      [{ ...input(1), decision: { effect: 'allow', policyIds: [], reason: secret } }, 'decision.reason'],
      [{ ...input(3), query: { fingerprint: queryFingerprint({}), rowCount: 1, values: [secret] } }, 'query.values'],
      [{ ...input(1), principal: { subject: 'ops', roles: [], authMethod: 'system' }, operator: { reason: 'ticket 1', apiKey: secret } }, 'operator.apiKey'],
      [{ ...input(1), principal: { subject: 'ops', roles: [], authMethod: 'system' }, operator: { to: { tier: 'pool', region: 'eu', db: secret } } }, 'operator.to.db'],
    ];
    for (const [value, field] of cases) {
      const error = throwsCode(() => createAuditEvent(value as unknown as AuditEventInput), 'AUDIT_EVENT_INVALID', /not in the audit event schema/);
      assert.equal(error.details?.field, field);
      assert.ok(error.message.includes(field.split('.').pop()!), error.message);
      assert.ok(!error.message.includes(secret) && !JSON.stringify(error.details).includes(secret));
    }
    const odd = throwsCode(() => createAuditEvent({ ...input(1), [`${secret} x`]: 1 } as unknown as AuditEventInput), 'AUDIT_EVENT_INVALID');
    assert.ok(!odd.message.includes(secret) && odd.message.includes('(invalid name)'), 'a key that is no plain name is not echoed');
  });

  it('refuses malformed members and broken cross-field rules with the member named', () => {
    const cases: Array<[Partial<AuditEventInput> | Record<string, unknown>, string]> = [
      [{ time: '2026-11-27T10:00:00Z' }, 'time'],
      [{ time: '2026-02-30T10:00:00.000Z' }, 'time'],
      [{ time: new Date(Number.NaN) }, 'time'],
      [{ tenantId: 'not-a-uuid' }, 'tenantId'],
      [{ tenantId: TENANT.toUpperCase() }, 'tenantId'],
      [{ principal: { subject: '', roles: [], authMethod: 'jwt' } }, 'principal.subject'],
      [{ principal: { subject: 'a\u0000b', roles: [], authMethod: 'jwt' } }, 'principal.subject'],
      [{ principal: { subject: 'a\ud800b', roles: [], authMethod: 'jwt' } }, 'principal.subject'],
      [{ principal: { subject: 'u', roles: ['Admin'], authMethod: 'jwt' } }, 'principal.roles[0]'],
      [{ principal: { subject: 'u', roles: ['member', 'member'], authMethod: 'jwt' } }, 'principal.roles'],
      [{ principal: { subject: 'u', roles: [], authMethod: 'password' } }, 'principal.authMethod'],
      [{ action: 'Drop table' }, 'action'],
      [{ collection: 'Patients' }, 'collection'],
      [{ recordIds: [] }, 'recordIds'],
      [{ recordIds: Array.from({ length: 1001 }, () => uuidv7()) }, 'recordIds'],
      [{ decision: { effect: 'maybe', policyIds: [] } }, 'decision.effect'],
      [{ requestId: 'x'.repeat(65) }, 'requestId'],
      [{ sourceAddress: 'localhost' }, 'sourceAddress'],
      [{ sourceAddress: '999.1.1.1' }, 'sourceAddress'],
      [{ outcome: 'success', errorCode: 'ACCESS_DENIED' }, 'errorCode'],
      [{ outcome: 'error' }, 'errorCode'],
      [{ outcome: 'error', errorCode: 'NO_SUCH_CODE' }, 'errorCode'],
      [{ decision: { effect: 'deny', policyIds: [] }, outcome: 'success' }, 'outcome'],
      [{ query: { fingerprint: queryFingerprint({}), rowCount: 1 } }, 'query'],
      [{ query: { fingerprint: 'md5:00', rowCount: 1 }, recordIds: undefined }, 'query.fingerprint'],
      [{ query: { fingerprint: queryFingerprint({}), rowCount: -1 }, recordIds: undefined }, 'query.rowCount'],
      [{ operator: { reason: 'tenant asked' } }, 'operator'],
    ];
    for (const [over, field] of cases) {
      const error = throwsCode(() => createAuditEvent({ ...input(1), ...over } as AuditEventInput), 'AUDIT_EVENT_INVALID');
      assert.equal(error.details?.field, field, `${JSON.stringify(over).slice(0, 80)}: ${error.message}`);
    }
    const { requestId, ...missing } = input(1);
    void requestId;
    assert.equal(throwsCode(() => createAuditEvent(missing as AuditEventInput), 'AUDIT_EVENT_INVALID', /lacks the required key requestId/).details?.field, 'requestId');
  });

  it('copies the input: later changes to the caller objects do not reach the event', () => {
    const roles = ['member'];
    const e = createAuditEvent({ ...input(1), principal: { subject: 'u', roles, authMethod: 'jwt' } });
    roles.push('tenant_admin');
    assert.deepEqual(e.principal!.roles, ['member']);
    assert.throws(() => ((e as unknown as { action: string }).action = 'record.delete'), TypeError);
  });

  it('links only events made by createAuditEvent', () => {
    const forged = { ...createAuditEvent(input(1)) } as AuditEvent; // a copy, not the validated object
    throwsCode(() => linkEvent(genesisHead(), forged), 'AUDIT_EVENT_INVALID');
    throwsCode(() => new ChainLinker(TENANT).append(createAuditEvent(input(1, OTHER_TENANT))), 'AUDIT_EVENT_INVALID', /tenantId/);
    throwsCode(() => new ChainLinker(PLATFORM_CHAIN).append(createAuditEvent(input(1))), 'AUDIT_EVENT_INVALID');
  });
});

describe('canonical JSON (RFC 8785)', () => {
  it('formats numbers as RFC 8785 Appendix B does', () => {
    const vectors: Array<[string, string]> = [
      ['0000000000000000', '0'],
      ['8000000000000000', '0'],
      ['0000000000000001', '5e-324'],
      ['8000000000000001', '-5e-324'],
      ['7fefffffffffffff', '1.7976931348623157e+308'],
      ['ffefffffffffffff', '-1.7976931348623157e+308'],
      ['4340000000000000', '9007199254740992'],
      ['c340000000000000', '-9007199254740992'],
      ['4430000000000000', '295147905179352830000'],
      ['44b52d02c7e14af5', '9.999999999999997e+22'],
      ['44b52d02c7e14af6', '1e+23'],
      ['44b52d02c7e14af7', '1.0000000000000001e+23'],
      ['444b1ae4d6e2ef4e', '999999999999999700000'],
      ['444b1ae4d6e2ef4f', '999999999999999900000'],
      ['444b1ae4d6e2ef50', '1e+21'],
      ['3eb0c6f7a0b5ed8c', '9.999999999999997e-7'],
      ['3eb0c6f7a0b5ed8d', '0.000001'],
      ['41b3de4355555553', '333333333.3333332'],
      ['41b3de4355555554', '333333333.33333325'],
      ['41b3de4355555555', '333333333.3333333'],
      ['41b3de4355555556', '333333333.3333334'],
      ['41b3de4355555557', '333333333.33333343'],
      ['becbf647612f3696', '-0.0000033333333333333333'],
      ['43143ff3c1cb0959', '1424953923781206.2'],
    ];
    for (const [bits, text] of vectors) {
      const n = Buffer.from(bits, 'hex').readDoubleBE(0);
      assert.equal(canonicalJson(n), text, bits);
      assert.equal(canonicalEventJson({ n }), `{"n":${text}}`, bits);
    }
    for (const bad of [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]) throwsCode(() => canonicalJson(bad), 'INTERNAL');
  });

  it('sorts members by UTF-16 code units (RFC 8785 §3.2.3) and escapes strings as §3.2.2.2 says', () => {
    const sorted = canonicalJson(
      JSON.parse('{"\\u20ac":"Euro Sign","\\r":"Carriage Return","\\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\\ud83d\\ude00":"Emoji: Grinning Face","\\u0080":"Control","\\u00f6":"Latin Small Letter O With Diaeresis"}'),
    );
    // Member names read from the text itself (Object.keys would list the integer-like "1" first whatever the text says).
    const names = [...sorted.matchAll(/(?:^\{|,)("(?:[^"\\]|\\.)*"):/g)].map((m) => [...(JSON.parse(m[1]!) as string)].map((c) => c.codePointAt(0)!.toString(16)).join('+'));
    assert.deepEqual(names, ['d', '31', '80', 'f6', '20ac', '1f600', 'fb33']);
    assert.ok(sorted.startsWith('{"\\r":"Carriage Return","1":"One","\u0080":"Control","ö":'), sorted);
    assert.equal(canonicalEventJson(JSON.parse(sorted)), sorted, 'the fast route keeps "1" in its place too');
  });

  it('gives the RFC 8785 §3.2.2 example its canonical text and §3.2.4 UTF-8 bytes', () => {
    const source =
      '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],\n "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",\n "literals": [null, true, false]}';
    const text = canonicalJson(JSON.parse(source));
    assert.equal(canonicalEventJson(JSON.parse(source)), text);
    assert.equal(text, '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}');
    const hex = [
      '7b 22 6c 69 74 65 72 61 6c 73 22 3a 5b 6e 75 6c 6c 2c 74 72',
      '75 65 2c 66 61 6c 73 65 5d 2c 22 6e 75 6d 62 65 72 73 22 3a',
      '5b 33 33 33 33 33 33 33 33 33 2e 33 33 33 33 33 33 33 2c 31',
      '65 2b 33 30 2c 34 2e 35 2c 30 2e 30 30 32 2c 31 65 2d 32 37',
      '5d 2c 22 73 74 72 69 6e 67 22 3a 22 e2 82 ac 24 5c 75 30 30',
      '30 66 5c 6e 41 27 42 5c 22 5c 5c 5c 5c 5c 22 2f 22 7d',
    ]
      .join(' ')
      .replace(/ /g, '');
    assert.equal(Buffer.from(text, 'utf8').toString('hex'), hex);
  });

  it('the chain\'s fast route gives the same text as canonicalJson for any JSON value', () => {
    const key = fc.oneof(fc.string(), fc.constantFrom('__proto__', '0', '1', '10', '01', '-1', '4294967295', 'a', 'é', '\u{1F600}'));
    const value = fc.letrec((tie) => ({
      json: fc.oneof(
        { depthSize: 'small' },
        fc.string(),
        fc.double({ noNaN: true, noDefaultInfinity: true }),
        fc.integer(),
        fc.boolean(),
        fc.constant(null),
        fc.array(tie('json')),
        fc.dictionary(key, tie('json')),
      ),
    })).json;
    fc.assert(
      fc.property(value, (v) => {
        // Through JSON.parse, as events come back from storage (own `__proto__` members included).
        const parsed = JSON.parse(JSON.stringify(v)) as unknown;
        assert.equal(canonicalEventJson(parsed), canonicalJson(parsed));
      }),
      { numRuns: 2000 },
    );
    assert.equal(canonicalEventJson(JSON.parse('{"b":1,"__proto__":{"x":1},"a":2}')), '{"__proto__":{"x":1},"a":2,"b":1}');
    assert.equal(canonicalEventJson(JSON.parse('{"b":1,"10":2,"9":3}')), '{"10":2,"9":3,"b":1}');
    throwsCode(() => canonicalEventJson({ a: undefined }), 'INTERNAL');
    throwsCode(() => canonicalEventJson({ a: Number.NaN }), 'INTERNAL');
    throwsCode(() => canonicalEventJson(new Date()), 'INTERNAL');
  });

  it('keeps types apart and ignores member order', () => {
    assert.notEqual(canonicalJson({ a: 1 }), canonicalJson({ a: '1' }));
    assert.equal(canonicalJson({ b: [1, { d: true, c: null }], a: -0 }), '{"a":0,"b":[1,{"c":null,"d":true}]}');
  });
});

describe('audit chain', () => {
  it('computes the known answers: SHA-256(prevHash ‖ canonical JSON of the event with its seq)', () => {
    let head = genesisHead();
    for (const v of VECTORS.links) {
      const row = linkEvent(head, createAuditEvent(v.input));
      assert.equal(row.json, v.canonical);
      assert.equal(row.prevHash.toString('hex'), v.prevHash);
      // Rebuilt here from the documented layout, with node:crypto alone.
      const byHand = createHash('sha256').update(Buffer.from(v.prevHash, 'hex')).update(Buffer.from(v.canonical, 'utf8')).digest('hex');
      assert.equal(byHand, v.hash);
      assert.equal(row.hash.toString('hex'), v.hash);
      assert.equal(row.event.seq, row.seq);
      head = row;
    }
    assert.equal(head.seq, 2);
  });

  it('verifies an intact chain, from an array or a stream, and reports progress', async () => {
    const rows = buildChain(1000);
    const progress: number[] = [];
    const result = await verifyChain(stream(rows), { chain: TENANT, onProgress: (n) => progress.push(n), progressEvery: 250 });
    assert.ok(result.ok);
    assert.equal(result.rows, 1000);
    assert.equal(result.head.seq, 1000);
    assert.ok(Buffer.from(result.head.hash).equals(rows[999]!.hash));
    assert.deepEqual(progress, [250, 500, 750, 1000, 1000]);
    assert.ok((await verifyChain(rows.map((r) => ({ ...r, seq: String(r.seq) })), { chain: TENANT })).ok, 'a bigint column read as text');
    assert.ok((await verifyChain(buildChain(20, null), { chain: PLATFORM_CHAIN })).ok);
    const empty = await verifyChain([], { chain: TENANT });
    assert.ok(empty.ok && empty.head.seq === 0);
  });

  it('stops reading at the first divergence (a stream, not a list)', async () => {
    const rows = copy(buildChain(1000));
    rows[99]!.event.action = 'record.delete';
    let pulled = 0;
    async function* counting() {
      for (const r of rows) {
        pulled++;
        yield r;
      }
    }
    assertDivergence(await verifyChain(counting(), { chain: TENANT }), 'hash-mismatch', 100);
    assert.equal(pulled, 100);
  });

  it('verifies a pruned chain from its anchor', async () => {
    const rows = buildChain(300);
    const kept = rows.slice(200);
    const start = { seq: 200, hash: rows[199]!.hash };
    assert.ok((await verifyChain(kept, { chain: TENANT, start })).ok);
    assertDivergence(await verifyChain(kept, { chain: TENANT }), 'gap', 1);
    assertDivergence(await verifyChain(kept, { chain: TENANT, start: { seq: 200, hash: randomBytes(32) } }), 'prev-mismatch', 201);
  });

  it('requireIntact throws AUDIT_CHAIN_BROKEN with the divergence', async () => {
    const rows = copy(buildChain(10));
    rows.splice(4, 1);
    const result = await verifyChain(rows, { chain: TENANT });
    const error = throwsCode(() => requireIntact(result), 'AUDIT_CHAIN_BROKEN', /seq 5 \(gap\)/);
    assert.ok(error instanceof AuditChainBrokenError && error.divergence.seq === 5);
    assert.equal(requireIntact(await verifyChain(buildChain(3), { chain: TENANT })).seq, 3);
  });
});

describe('tamper matrix (1,000 events, a checkpoint every 100, witness on disk)', () => {
  const N = 1000;
  let rows: Row[];
  let dir: string;
  let witness: Witness;
  let signer: CheckpointSigner;
  let keys: ReturnType<typeof checkpointKeys>;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'bulkhead-audit-'));
    signer = await loadOrCreateSigner(join(dir, 'keys'));
    keys = checkpointKeys(signer.publicKey);
    rows = buildChain(N);
    witness = new Witness(defaultWitnessDir(dir));
    for (let seq = 100; seq <= N; seq += 100) {
      await witness.append(signer.sign({ chain: TENANT, seq, hash: rows[seq - 1]!.hash }));
    }
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** Verifies rows against the chain rule only, and against the witness. */
  async function both(tampered: Row[]): Promise<{ alone: VerifyResult; witnessed: VerifyResult }> {
    return {
      alone: await verifyChain(stream(tampered), { chain: TENANT }),
      witnessed: await witness.verify(TENANT, stream(tampered), keys),
    };
  }

  it('the intact chain verifies against every checkpoint', async () => {
    const { alone, witnessed } = await both(copy(rows));
    assert.ok(alone.ok && witnessed.ok);
    assert.equal(witnessed.checkpoints, 10);
    assert.equal(witnessed.head.seq, N);
  });

  it('an updated field of one event: hash-mismatch at its seq', async () => {
    const t = copy(rows);
    t[122]!.event.outcome = 'error';
    const { alone, witnessed } = await both(t);
    assertDivergence(alone, 'hash-mismatch', 123);
    assertDivergence(witnessed, 'hash-mismatch', 123);
    const u = copy(rows);
    (u[122]!.event.principal as { subject: string }).subject = 'someone-else';
    assertDivergence((await both(u)).alone, 'hash-mismatch', 123);
    // A member added that an assignment would not copy: it is hashed all the same.
    const v = copy(rows);
    v[122]!.event = JSON.parse(JSON.stringify(v[122]!.event).replace(/^\{/, '{"__proto__":{"fields":{"ssn":"x"}},'));
    assert.ok(Object.hasOwn(v[122]!.event, '__proto__'));
    assertDivergence((await both(v)).alone, 'hash-mismatch', 123);
    const w = copy(rows);
    w[122]!.event = { ...w[122]!.event, 7: 'x' };
    assertDivergence((await both(w)).alone, 'hash-mismatch', 123);
  });

  it('a deleted row: gap at its seq', async () => {
    const t = copy(rows);
    t.splice(399, 1);
    assertDivergence((await both(t)).witnessed, 'gap', 400);
    const three = copy(rows);
    three.splice(399, 3);
    const { alone } = await both(three);
    assertDivergence(alone, 'gap', 400);
    assert.match((alone as { divergence: { message: string } }).divergence.message, /seqs 400 to 402 are missing/);
  });

  it('a deleted row, the later rows renumbered: gap at its seq', async () => {
    const t = copy(rows);
    t.splice(399, 1);
    for (let i = 399; i < t.length; i++) t[i]!.seq = i + 1; // seq column renumbered, events kept
    assertDivergence((await both(t)).alone, 'gap', 400);
  });

  it('the tail deleted: missing-tail at its first seq (found by the witness; the chain alone cannot tell)', async () => {
    const t = copy(rows).slice(0, 995);
    const { alone, witnessed } = await both(t);
    assert.ok(alone.ok && alone.head.seq === 995, 'a shorter chain is still a chain: only the checkpoint of seq 1000 shows rows are gone');
    assertDivergence(witnessed, 'missing-tail', 996);
  });

  it('two rows swapped: reorder at the first', async () => {
    const t = copy(rows);
    [t[699], t[700]] = [t[700]!, t[699]!];
    assertDivergence((await both(t)).alone, 'reorder', 700);
    // In a table, the same swap is done on the seq column: the row at 700 holds the event of 701.
    const u = copy(rows);
    u[699]!.seq = 701;
    u[700]!.seq = 700;
    [u[699], u[700]] = [u[700]!, u[699]!];
    const { alone, witnessed } = await both(u);
    assertDivergence(alone, 'reorder', 700);
    assertDivergence(witnessed, 'reorder', 700);
  });

  it('a forged row inserted: forged at its seq, even when it is linked correctly', async () => {
    // Linked to row 500 as an attacker without the key can: the next genuine row claims 501 again.
    const t = copy(rows);
    const fake = linkEvent({ seq: 500, hash: t[499]!.hash }, createAuditEvent(input(9999)));
    t.splice(500, 0, { seq: 501, prevHash: fake.prevHash, hash: fake.hash, event: JSON.parse(fake.json) });
    assertDivergence((await both(t)).alone, 'forged', 501);
    // In a table: the later rows' seq columns shifted up to make room.
    const u = copy(rows);
    u.splice(500, 0, { seq: 501, prevHash: fake.prevHash, hash: fake.hash, event: JSON.parse(fake.json) });
    for (let i = 501; i < u.length; i++) u[i]!.seq = i + 1;
    assertDivergence((await both(u)).witnessed, 'forged', 501);
    // A forged row whose hashes are made up: its prevHash does not follow.
    const v = copy(rows);
    v[600] = { ...v[600]!, prevHash: randomBytes(32), hash: randomBytes(32), event: { ...v[600]!.event, action: 'record.delete' } };
    assertDivergence((await both(v)).alone, 'prev-mismatch', 601);
  });

  it('a row of another chain: forged', async () => {
    const other = buildChain(5, OTHER_TENANT);
    const t = copy(rows).slice(0, 2);
    t.push(other[2]!);
    assertDivergence(await verifyChain(t, { chain: TENANT }), 'forged', 3);
  });

  it('a replaced hash: hash-mismatch at its seq', async () => {
    const t = copy(rows);
    t[299]!.hash = randomBytes(32);
    assertDivergence((await both(t)).alone, 'hash-mismatch', 300);
    const u = copy(rows);
    u[299]!.prevHash = randomBytes(32);
    assertDivergence((await both(u)).alone, 'prev-mismatch', 300);
  });

  it('truncation: missing-tail at seq 1', async () => {
    const { alone, witnessed } = await both([]);
    assert.ok(alone.ok, 'an empty table alone proves nothing');
    assertDivergence(witnessed, 'missing-tail', 1);
  });

  it('the whole chain rewritten consistently without the key: caught by the witness at the next checkpoint', async () => {
    const t = copy(rows);
    t[549]!.event = { ...t[549]!.event, outcome: 'denied', errorCode: 'ACCESS_DENIED' };
    relink(t, 550);
    const { alone, witnessed } = await both(t);
    assert.ok(alone.ok, 'a consistent rewrite verifies as a chain');
    assertDivergence(witnessed, 'witness-mismatch', 600);
    assert.equal((witnessed as { divergence: { lastGoodSeq: number } }).divergence.lastGoodSeq, 599);
    assert.match((witnessed as { divergence: { message: string } }).divergence.message, /rewritten/);
    // Rewritten from seq 1 on, every checkpoint disagrees: the first one is named.
    const all = copy(rows);
    all[0]!.event = { ...all[0]!.event, requestId: 'req-x' };
    relink(all, 1);
    assertDivergence((await both(all)).witnessed, 'witness-mismatch', 100);
  });

  it('a time column that disagrees with its event: column-mismatch', async () => {
    const t = copy(rows).slice(0, 10).map((r) => ({ ...r, time: new Date(r.event.time as string) }));
    assert.ok((await verifyChain(t, { chain: TENANT })).ok);
    t[6]!.time = new Date(Date.parse(t[6]!.event.time as string) + 1000);
    assertDivergence(await verifyChain(t, { chain: TENANT }), 'column-mismatch', 7);
  });

  it('malformed rows: malformed', async () => {
    const t = copy(rows).slice(0, 10);
    t[3]!.hash = t[3]!.hash.subarray(0, 31);
    assertDivergence(await verifyChain(t, { chain: TENANT }), 'malformed', 4);
    const u = copy(rows).slice(0, 10);
    u[3]!.event = { ...u[3]!.event, seq: '4' };
    assertDivergence(await verifyChain(u, { chain: TENANT }), 'malformed', 4);
  });

  describe('the witness tampered', () => {
    /** A witness directory holding `lines` as the chain's file. */
    async function witnessWith(lines: string[]): Promise<Witness> {
      const w = new Witness(await mkdtemp(join(dir, 'w-')));
      await writeFile(w.fileOf(TENANT), lines.map((l) => `${l}\n`).join(''), { mode: 0o600 });
      return w;
    }
    async function lines(): Promise<string[]> {
      return (await readFile(witness.fileOf(TENANT), 'utf8')).trimEnd().split('\n');
    }

    it('a replaced signature: checkpoint-invalid at that checkpoint', async () => {
      const l = await lines();
      const cp = JSON.parse(l[5]!) as SignedCheckpoint;
      // A genuine signature of the same key, taken from another checkpoint.
      l[5] = JSON.stringify({ ...cp, signature: JSON.parse(l[4]!).signature });
      const result = await (await witnessWith(l)).verify(TENANT, stream(rows), keys);
      assertDivergence(result, 'checkpoint-invalid', 600);
      assert.match((result as { divergence: { message: string } }).divergence.message, /line 6 of /);
    });

    it('a checkpoint re-signed with another key, or changed, or with a member added: checkpoint-invalid', async () => {
      const { privateKey } = generateKeyPairSync('ed25519');
      const rogue = new CheckpointSigner(privateKey);
      for (const replace of [
        (cp: SignedCheckpoint) => JSON.stringify(rogue.sign({ chain: TENANT, seq: cp.seq, hash: Buffer.from(cp.hash, 'hex') })),
        (cp: SignedCheckpoint) => JSON.stringify({ ...cp, hash: randomBytes(32).toString('hex') }),
        (cp: SignedCheckpoint) => JSON.stringify({ ...cp, note: 'x' }),
        (cp: SignedCheckpoint) => JSON.stringify({ ...cp, chain: OTHER_TENANT }),
      ]) {
        const l = await lines();
        l[2] = replace(JSON.parse(l[2]!));
        assertDivergence(await (await witnessWith(l)).verify(TENANT, stream(rows), keys), 'checkpoint-invalid', 300);
      }
    });

    it('a line that is not JSON, a line of another chain, lines out of order: checkpoint-invalid', async () => {
      const l = await lines();
      const garbage = [...l];
      garbage[3] = '{"seq": 400, "this is not';
      // Its seq cannot be read: the divergence is named at the first seq after the last good checkpoint, and by its line.
      const unreadable = await (await witnessWith(garbage)).verify(TENANT, stream(rows), keys);
      assertDivergence(unreadable, 'checkpoint-invalid', 301);
      assert.match((unreadable as { divergence: { message: string } }).divergence.message, /line 4 of /);
      const foreign = [...l];
      foreign[1] = JSON.stringify(signer.sign({ chain: OTHER_TENANT, seq: 200, hash: rows[199]!.hash }));
      assertDivergence(await (await witnessWith(foreign)).verify(TENANT, stream(rows), keys), 'checkpoint-invalid', 200);
      const swapped = [...l];
      [swapped[6], swapped[7]] = [swapped[7]!, swapped[6]!];
      assertDivergence(await (await witnessWith(swapped)).verify(TENANT, stream(rows), keys), 'checkpoint-invalid', 700);
    });

    it('a checkpoint removed or the same head checkpointed twice still verifies; a torn last line is ignored', async () => {
      const l = await lines();
      const fewer = l.filter((_, i) => i !== 4);
      assert.ok((await (await witnessWith(fewer)).verify(TENANT, stream(rows), keys)).ok);
      const twice = [...l.slice(0, 3), l[2]!, ...l.slice(3)];
      const result = await (await witnessWith(twice)).verify(TENANT, stream(rows), keys);
      assert.ok(result.ok && result.checkpoints === 11);
      const w = await witnessWith(l);
      await appendFile(w.fileOf(TENANT), l[9]!.slice(0, 40));
      assert.ok((await w.verify(TENANT, stream(rows), keys)).ok, 'an append cut short was never acknowledged');
    });
  });
});

describe('checkpoints and signing keys', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'bulkhead-audit-keys-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('matches the known-answer vector (RFC 8032 TEST 1 key)', () => {
    const v = VECTORS.checkpoint;
    const key = createPrivateKey({ key: Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), Buffer.from(v.secretKeySeed, 'hex')]), format: 'der', type: 'pkcs8' });
    const signer = new CheckpointSigner(key);
    assert.equal(signer.publicKey.export({ format: 'der', type: 'spki' }).subarray(12).toString('hex'), v.publicKey);
    assert.equal(signer.keyId, v.keyId);
    const cp = signer.sign({ chain: TENANT, seq: 2, hash: Buffer.from(VECTORS.links[1].hash, 'hex'), time: new Date('2026-11-27T10:20:00.000Z') });
    assert.equal(checkpointSigningInput(cp).toString('utf8'), v.signingInput);
    assert.equal(cp.signature, v.signature, 'Ed25519 signatures are deterministic');
    assert.deepEqual(verifyCheckpoint(JSON.parse(JSON.stringify(cp)), checkpointKeys(signer.publicKey)), cp);
  });

  it('refuses every altered checkpoint with one uniform error', () => {
    const { privateKey } = generateKeyPairSync('ed25519');
    const signer = new CheckpointSigner(privateKey);
    const keys = checkpointKeys(signer.publicKey);
    const cp = signer.sign({ chain: PLATFORM_CHAIN, seq: 42, hash: randomBytes(32) });
    const messages = new Set<string>();
    const altered: unknown[] = [
      { ...cp, seq: 43 },
      { ...cp, hash: randomBytes(32).toString('hex') },
      { ...cp, time: '2030-01-01T00:00:00.000Z' },
      { ...cp, chain: TENANT },
      { ...cp, keyId: 'ed25519:00000000000000000000000000000000' },
      { ...cp, signature: cp.signature.replace(/^./, (c) => (c === 'A' ? 'B' : 'A')) },
      { ...cp, signature: cp.signature.slice(1) },
      { ...cp, type: 'bulkhead.audit.checkpoint/v2' },
      { ...cp, extra: 1 },
      (({ time, ...rest }) => (void time, rest))(cp),
      { ...cp, seq: '42' },
      null,
      'x',
    ];
    for (const value of altered) {
      const error = throwsCode(() => verifyCheckpoint(value, keys), 'AUDIT_CHECKPOINT_INVALID');
      assert.ok(error instanceof CheckpointInvalidError && error.cause === undefined);
      messages.add(error.message);
    }
    assert.equal(messages.size, 1, 'one fixed message, whatever failed');
    throwsCode(() => verifyCheckpoint(cp, checkpointKeys(generateKeyPairSync('ed25519').publicKey)), 'AUDIT_CHECKPOINT_INVALID');
  });

  it('creates the key pair once, mode 0600 in a 0700 directory, and loads the same key again (also when two start at once)', async () => {
    const keyDir = join(dir, 'a');
    const [a, b] = await Promise.all([loadOrCreateSigner(keyDir), loadOrCreateSigner(keyDir)]);
    assert.equal(a.keyId, b.keyId);
    assert.equal((await stat(keyDir)).mode & 0o777, 0o700);
    assert.equal((await stat(join(keyDir, SIGNING_KEY_FILE))).mode & 0o777, 0o600);
    assert.equal((await stat(join(keyDir, VERIFYING_KEY_FILE))).mode & 0o777, 0o600);
    assert.equal((await loadOrCreateSigner(keyDir)).keyId, a.keyId);
    const pub = await loadVerifyingKey(join(keyDir, VERIFYING_KEY_FILE));
    assert.equal(keyIdOf(pub), a.keyId);
    assert.match(await readFile(join(keyDir, SIGNING_KEY_FILE), 'utf8'), /^-----BEGIN PRIVATE KEY-----/);
    // The public file is rewritten when missing.
    await rm(join(keyDir, VERIFYING_KEY_FILE));
    assert.equal((await loadOrCreateSigner(keyDir)).keyId, a.keyId);
    assert.equal(keyIdOf(await loadVerifyingKey(join(keyDir, VERIFYING_KEY_FILE))), a.keyId);
  });

  it('refuses a key file open to group or others: AUDIT_KEY_FILE_INSECURE', async () => {
    const keyDir = join(dir, 'b');
    await loadOrCreateSigner(keyDir);
    const privatePath = join(keyDir, SIGNING_KEY_FILE);
    for (const mode of [0o644, 0o640, 0o604, 0o620]) {
      await chmod(privatePath, mode);
      await rejectsCode(loadOrCreateSigner(keyDir), 'AUDIT_KEY_FILE_INSECURE', /chmod 600/);
    }
    await chmod(privatePath, 0o600);
    const publicPath = join(keyDir, VERIFYING_KEY_FILE);
    await chmod(publicPath, 0o664);
    await rejectsCode(loadOrCreateSigner(keyDir), 'AUDIT_KEY_FILE_INSECURE');
    await rejectsCode(loadVerifyingKey(publicPath), 'AUDIT_KEY_FILE_INSECURE');
    await chmod(publicPath, 0o644);
    assert.ok(await loadVerifyingKey(publicPath), 'a public key others can read is fine');
    await loadOrCreateSigner(keyDir);
  });

  it('refuses a key that is not Ed25519, or a verifying key of another pair: AUDIT_KEY_INVALID', async () => {
    const keyDir = join(dir, 'c');
    await loadOrCreateSigner(keyDir);
    const other = generateKeyPairSync('ed25519').publicKey.export({ format: 'pem', type: 'spki' }).toString();
    await writeFile(join(keyDir, VERIFYING_KEY_FILE), other, { mode: 0o600 });
    await rejectsCode(loadOrCreateSigner(keyDir), 'AUDIT_KEY_INVALID', /does not match/);
    const rsa = generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();
    const rsaDir = join(dir, 'd');
    await loadOrCreateSigner(rsaDir);
    await writeFile(join(rsaDir, SIGNING_KEY_FILE), rsa, { mode: 0o600 });
    await rejectsCode(loadOrCreateSigner(rsaDir), 'AUDIT_KEY_INVALID', /not Ed25519/);
    await writeFile(join(rsaDir, SIGNING_KEY_FILE), 'not a key', { mode: 0o600 });
    await rejectsCode(loadOrCreateSigner(rsaDir), 'AUDIT_KEY_INVALID');
    throwsCode(() => new CheckpointSigner(generateKeyPairSync('ed25519').publicKey as KeyObject), 'AUDIT_KEY_INVALID');
  });

  it('the witness appends whole lines, mode 0600, concurrently, and reads them back', async () => {
    const signer = await loadOrCreateSigner(join(dir, 'e'));
    const keys = checkpointKeys(signer.publicKey);
    const w = new Witness(join(dir, 'witness'));
    const hashes = Array.from({ length: 40 }, () => randomBytes(32));
    await Promise.all(hashes.map((hash, i) => w.append(signer.sign({ chain: PLATFORM_CHAIN, seq: i + 1, hash }))));
    await w.append(signer.sign({ chain: TENANT, seq: 1, hash: hashes[0]! }));
    assert.equal((await stat(w.fileOf(PLATFORM_CHAIN))).mode & 0o777, 0o600);
    assert.deepEqual(await w.chains(), [TENANT, PLATFORM_CHAIN].sort());
    const read: SignedCheckpoint[] = [];
    for await (const { checkpoint } of w.checkpoints(PLATFORM_CHAIN, keys)) read.push(checkpoint);
    assert.equal(read.length, 40);
    assert.deepEqual(read.map((c) => c.seq).sort((a, b) => a - b), Array.from({ length: 40 }, (_, i) => i + 1));
    for (const line of (await readFile(w.fileOf(PLATFORM_CHAIN), 'utf8')).trimEnd().split('\n')) {
      assert.equal(line, canonicalJson(JSON.parse(line)), 'each line is the canonical JSON of one checkpoint');
    }
    assert.equal((await w.last(TENANT, keys))?.seq, 1);
    assert.equal(await w.last(OTHER_TENANT, keys), undefined, 'no file, no checkpoints');
    // A bad line stops the reading with the uniform error, its line in details.
    await appendFile(w.fileOf(TENANT), '{"not":"a checkpoint"}\n');
    const error = await rejectsCode(w.last(TENANT, keys), 'AUDIT_CHECKPOINT_INVALID');
    assert.deepEqual(error.details, { chain: TENANT, line: 2 });
    // After a torn last line, the next append starts a line of its own.
    await appendFile(w.fileOf(TENANT), '{"torn');
    await w.append(signer.sign({ chain: TENANT, seq: 2, hash: hashes[1]! }));
    assert.match(await readFile(w.fileOf(TENANT), 'utf8'), /\n\{"torn\n\{"chain"/);
  });

  it('refuses a witness file name that is not a chain, and reports an unwritable witness: AUDIT_WITNESS_UNAVAILABLE', async () => {
    const w = new Witness(join(dir, 'witness2'));
    throwsCode(() => w.fileOf('../../etc/passwd'), 'INTERNAL');
    const file = join(dir, 'plain-file');
    await writeFile(file, 'x');
    const signer = await loadOrCreateSigner(join(dir, 'f'));
    await rejectsCode(new Witness(join(file, 'witness')).append(signer.sign({ chain: TENANT, seq: 1, hash: randomBytes(32) })), 'AUDIT_WITNESS_UNAVAILABLE');
  });
});

// The audit tables on a real database: what the application role may do, and what nobody may.
for (const kind of BACKENDS) {
  describe(`audit tables (${kind})`, () => {
    let db: TestDatabase;
    let engine: Engine;
    let owner: string;
    let app: string;
    const tenantA = uuidv7();
    const tenantB = uuidv7();

    const asApp = (tenantId: string, ...statements: Statement[]) =>
      engine.batch([{ text: CONTEXT_SQL, values: [app, tenantId, 'tenant'] }, ...statements]);
    const asAppPlatform = (...statements: Statement[]) => engine.batch([{ text: CONTEXT_SQL, values: [app, '', 'platform'] }, ...statements]);
    const asOwner = (tenantId: string, ...statements: Statement[]) =>
      engine.batch([
        { text: `SET LOCAL ROLE ${owner}` },
        { text: "SELECT set_config('bulkhead.tenant_id', $1, true), set_config('bulkhead.scope', 'tenant', true)", values: [tenantId] },
        ...statements,
      ]);

    // Hashes go in as hex text: the PGlite engine binds scalars only (no Uint8Array parameters).
    const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString('hex');
    const insert = (table: string, tenantId: string | null, row: { seq: number; prevHash: Uint8Array; hash: Uint8Array; json: string; time: string }): Statement =>
      tenantId === null
        ? {
            text: `INSERT INTO ${table} (seq, prev_hash, hash, event, time) VALUES ($1, decode($2, 'hex'), decode($3, 'hex'), $4::jsonb, $5::timestamptz)`,
            values: [row.seq, hex(row.prevHash), hex(row.hash), row.json, row.time],
          }
        : {
            text: `INSERT INTO ${table} (tenant_id, seq, prev_hash, hash, event, time) VALUES ($1, $2, decode($3, 'hex'), decode($4, 'hex'), $5::jsonb, $6::timestamptz)`,
            values: [tenantId, row.seq, hex(row.prevHash), hex(row.hash), row.json, row.time],
          };

    async function readRows(tenantId: string, table = 'bulkhead.audit_events'): Promise<StoredRow[]> {
      const [, r] = await asApp(tenantId, { text: `SELECT seq, prev_hash, hash, event, time FROM ${table} WHERE tenant_id = $1 ORDER BY seq`, values: [tenantId] });
      return r!.rows.map((x) => ({ seq: x.seq as string, prevHash: x.prev_hash as Uint8Array, hash: x.hash as Uint8Array, event: x.event, time: x.time as Date }));
    }

    async function sqlState(promise: Promise<unknown>): Promise<string | undefined> {
      try {
        await promise;
      } catch (error) {
        assert.ok(error instanceof DatabaseError, String(error));
        return error.sqlState;
      }
      return undefined;
    }

    const chains = new Map<string, ChainLinker>();
    /** Appends `n` events to `tenantId`'s chain in `table` as the application role. */
    async function append(tenantId: string, n: number, table = 'bulkhead.audit_events'): Promise<void> {
      const key = `${table}/${tenantId}`;
      const linker = chains.get(key) ?? new ChainLinker(tenantId);
      chains.set(key, linker);
      const statements: Statement[] = [];
      for (let i = 0; i < n; i++) statements.push(insert(table, tenantId, linker.append(createAuditEvent(input(i, tenantId)))));
      await asApp(tenantId, ...statements);
    }

    before(async () => {
      db = await createTestDatabase(kind);
      engine = await db.engine();
      owner = db.ownerRole;
      app = db.appRole;
      await engine.script(`${rolesSql({ ownerRole: owner, appRole: app, partitions: 4 })}
CREATE SCHEMA bulkhead AUTHORIZATION ${owner};
CREATE SCHEMA audit_bridge AUTHORIZATION ${owner};
SET LOCAL ROLE ${owner};
${auditSchemaSql({ schema: 'bulkhead', appRole: app })}
${auditFunctionsSql('audit_bridge')}
${auditEventsTableSql({ schema: 'audit_bridge', appRole: app })}`);
      await append(tenantA, 5);
      await append(tenantB, 3);
      await append(tenantA, 4, 'audit_bridge.audit_events');
    });
    after(async () => {
      await db.drop();
    });

    it('the application role inserts and selects; what it reads back verifies (jsonb keeps the hash)', async () => {
      const rows = await readRows(tenantA);
      assert.equal(rows.length, 5);
      assert.ok(rows[0]!.prevHash instanceof Uint8Array);
      const result = await verifyChain(rows, { chain: tenantA });
      assert.ok(result.ok, JSON.stringify(result));
      assert.equal(result.head.seq, 5);
      assert.ok((await verifyChain(await readRows(tenantA, 'audit_bridge.audit_events'), { chain: tenantA })).ok);
      await append(tenantA, 2);
      assert.ok((await verifyChain(await readRows(tenantA), { chain: tenantA })).ok);
    });

    it("row-level security: a tenant sees and writes only its own chain", async () => {
      const [, seen] = await asApp(tenantB, { text: 'SELECT count(*)::int AS n FROM bulkhead.audit_events' });
      assert.equal(seen!.rows[0]!.n, 3);
      const [, none] = await asApp(tenantB, { text: 'SELECT count(*)::int AS n FROM bulkhead.audit_events WHERE tenant_id = $1', values: [tenantA] });
      assert.equal(none!.rows[0]!.n, 0);
      const row = linkEvent(genesisHead(), createAuditEvent(input(1, tenantA)));
      assert.equal(await sqlState(asApp(tenantB, insert('bulkhead.audit_events', tenantA, row))), '42501', 'WITH CHECK refuses another tenant');
    });

    it('the application role holds exactly INSERT and SELECT on the audit tables', async () => {
      const [r] = await engine.batch([
        {
          text: `SELECT table_schema || '.' || table_name AS t, string_agg(privilege_type, ',' ORDER BY privilege_type) AS p
                 FROM information_schema.role_table_grants WHERE grantee = $1 GROUP BY 1 ORDER BY 1`,
          values: [app],
        },
      ]);
      assert.deepEqual(r!.rows, [
        { t: 'audit_bridge.audit_events', p: 'INSERT,SELECT' },
        { t: 'bulkhead.audit_events', p: 'INSERT,SELECT' },
        { t: 'bulkhead.audit_platform_events', p: 'INSERT,SELECT' },
      ]);
      const [forced] = await engine.batch([
        { text: "SELECT c.relname, c.relforcerowsecurity AS f FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname IN ('bulkhead', 'audit_bridge') AND c.relkind IN ('r', 'p') ORDER BY 1" },
      ]);
      assert.deepEqual(forced!.rows, [
        { relname: 'audit_events', f: true },
        { relname: 'audit_events', f: true },
        { relname: 'audit_platform_events', f: true },
      ], 'RLS is FORCED on every audit table, and the tables are not partitioned');
    });

    it('the platform chain: the platform scope only', async () => {
      const linker = new ChainLinker(PLATFORM_CHAIN);
      const rows = [1, 2, 3].map((i) => linker.append(createAuditEvent({ ...input(i, null), principal: { subject: 'ops', roles: [], authMethod: 'operator_token' } })));
      await asAppPlatform(...rows.map((r) => insert('bulkhead.audit_platform_events', null, r)));
      const [, read] = await asAppPlatform({ text: 'SELECT seq, prev_hash, hash, event, time FROM bulkhead.audit_platform_events ORDER BY seq' });
      const stored = read!.rows.map((x) => ({ seq: x.seq as string, prevHash: x.prev_hash as Uint8Array, hash: x.hash as Uint8Array, event: x.event, time: x.time as Date }));
      assert.ok((await verifyChain(stored, { chain: PLATFORM_CHAIN })).ok);
      const [, hidden] = await asApp(tenantA, { text: 'SELECT count(*)::int AS n FROM bulkhead.audit_platform_events' });
      assert.equal(hidden!.rows[0]!.n, 0, 'a tenant scope sees no platform event');
      // Seq 1 again, so that the link check passes and the policy is what refuses it.
      const again = linkEvent(genesisHead(), createAuditEvent({ ...input(4, null), principal: { subject: 'ops', roles: [], authMethod: 'operator_token' } }));
      assert.equal(await sqlState(asApp(tenantA, insert('bulkhead.audit_platform_events', null, again))), '42501');
      const tenantEvent = linkEvent({ seq: 3, hash: rows[2]!.hash }, createAuditEvent(input(4, tenantA)));
      assert.equal(await sqlState(asAppPlatform(insert('bulkhead.audit_platform_events', null, tenantEvent))), AUDIT_LINK_SQLSTATE, 'a tenant event in the platform chain');
    });

    it('the application role cannot UPDATE, DELETE or TRUNCATE (no privilege)', async () => {
      assert.equal(await sqlState(asApp(tenantA, { text: "UPDATE bulkhead.audit_events SET event = '{}'::jsonb WHERE tenant_id = $1", values: [tenantA] })), '42501');
      assert.equal(await sqlState(asApp(tenantA, { text: 'DELETE FROM bulkhead.audit_events WHERE tenant_id = $1', values: [tenantA] })), '42501');
      assert.equal(await sqlState(asApp(tenantA, { text: 'TRUNCATE bulkhead.audit_events' })), '42501');
      assert.equal(await sqlState(asAppPlatform({ text: 'DELETE FROM bulkhead.audit_platform_events' })), '42501');
    });

    it('the owner cannot UPDATE, DELETE or TRUNCATE either: the triggers refuse (BHA01)', async () => {
      const cases: string[] = [
        "UPDATE bulkhead.audit_events SET event = event || '{\"outcome\":\"error\"}'::jsonb WHERE tenant_id = $1 AND seq = 2",
        'DELETE FROM bulkhead.audit_events WHERE tenant_id = $1 AND seq = 5',
        'TRUNCATE bulkhead.audit_events',
        'UPDATE audit_bridge.audit_events SET seq = seq + 100 WHERE tenant_id = $1',
        'DELETE FROM audit_bridge.audit_events WHERE tenant_id = $1',
        'TRUNCATE audit_bridge.audit_events',
      ];
      for (const text of cases) {
        const statement = text.includes('$1') ? { text, values: [tenantA] } : { text };
        assert.equal(await sqlState(asOwner(tenantA, statement)), AUDIT_APPEND_ONLY_SQLSTATE, text);
      }
    });

    it('a superuser is refused by the same triggers, with a stable message', async () => {
      for (const text of ['UPDATE bulkhead.audit_events SET time = now()', 'DELETE FROM bulkhead.audit_events', 'TRUNCATE bulkhead.audit_events', 'DELETE FROM bulkhead.audit_platform_events', 'TRUNCATE bulkhead.audit_platform_events']) {
        let caught: unknown;
        try {
          await engine.batch([{ text }]);
        } catch (error) {
          caught = error;
        }
        assert.ok(caught instanceof DatabaseError, text);
        assert.equal(caught.sqlState, AUDIT_APPEND_ONLY_SQLSTATE, text);
        assert.match(String((caught.cause as Error).message), /^audit rows are append-only: (UPDATE|DELETE|TRUNCATE) on bulkhead\.audit_(events|platform_events) is not allowed$/);
      }
      const [, counts] = await asApp(tenantA, { text: 'SELECT count(*)::int AS n FROM bulkhead.audit_events' });
      assert.equal(counts!.rows[0]!.n, 7, 'nothing was changed');
    });

    it('an insert must extend its chain (BHA02): no gap, no wrong prevHash, no seq 1 after anything but zeros, columns equal to the event', async () => {
      const head = (await verifyChain(await readRows(tenantA), { chain: tenantA })) as { head: { seq: number; hash: Uint8Array } };
      const next = (over: Partial<AuditEventInput> = {}) => linkEvent(head.head, createAuditEvent(input(50, tenantA, over)));
      const gap = linkEvent({ seq: head.head.seq + 1, hash: randomBytes(32) }, createAuditEvent(input(51, tenantA)));
      assert.equal(await sqlState(asApp(tenantA, insert('bulkhead.audit_events', tenantA, gap))), AUDIT_LINK_SQLSTATE, 'a gap');
      assert.equal(await sqlState(asApp(tenantA, insert('bulkhead.audit_events', tenantA, { ...next(), prevHash: randomBytes(32) }))), AUDIT_LINK_SQLSTATE, 'a wrong prevHash');
      const newTenant = uuidv7();
      const first = linkEvent({ seq: 0, hash: randomBytes(32) }, createAuditEvent(input(1, newTenant)));
      assert.equal(await sqlState(asApp(newTenant, insert('bulkhead.audit_events', newTenant, first))), AUDIT_LINK_SQLSTATE, 'seq 1 after a non-zero hash');
      const row = next();
      assert.equal(await sqlState(asApp(tenantA, insert('bulkhead.audit_events', tenantA, { ...row, time: '2020-01-01T00:00:00.000Z' }))), AUDIT_LINK_SQLSTATE, 'a time column unlike the event');
      const otherTenantsEvent = linkEvent(head.head, createAuditEvent(input(52, tenantB)));
      assert.equal(await sqlState(asApp(tenantA, insert('bulkhead.audit_events', tenantA, otherTenantsEvent))), AUDIT_LINK_SQLSTATE, 'an event of another tenant');
      const replay = linkEvent({ seq: head.head.seq - 1, hash: (await readRows(tenantA))[head.head.seq - 2]!.hash }, createAuditEvent(input(53, tenantA)));
      assert.equal(await sqlState(asApp(tenantA, insert('bulkhead.audit_events', tenantA, replay))), '23505', 'a seq taken twice');
      await asApp(tenantA, insert('bulkhead.audit_events', tenantA, row));
      const after = await verifyChain(await readRows(tenantA), { chain: tenantA });
      assert.ok(after.ok && after.head.seq === head.head.seq + 1);
    });

    it("an insert must have the chain's shape (23514): seq from 1, hashes of 32 bytes, the event an object; on every audit table", async () => {
      const head = (await verifyChain(await readRows(tenantA), { chain: tenantA })) as { head: { seq: number; hash: Uint8Array } };
      const row = linkEvent(head.head, createAuditEvent(input(60, tenantA)));
      const bad: Array<[string, typeof row]> = [
        ['a hash of 31 bytes', { ...row, hash: row.hash.subarray(0, 31) }],
        ['a hash of 33 bytes', { ...row, hash: Buffer.concat([row.hash, Buffer.alloc(1)]) }],
        ['a prev_hash of 31 bytes', { ...row, prevHash: row.prevHash.subarray(0, 31) }],
        ['an event that is an array', { ...row, json: '[1]' }],
        ['a seq of 0', { ...row, seq: 0 }],
      ];
      for (const [what, r] of bad) assert.equal(await sqlState(asApp(tenantA, insert('bulkhead.audit_events', tenantA, r))), '23514', what);
      assert.equal(await sqlState(asApp(tenantA, insert('audit_bridge.audit_events', tenantA, { ...row, hash: row.hash.subarray(0, 31) }))), '23514', 'a bridge table');
      const [, platformHead] = await asAppPlatform({ text: 'SELECT seq, hash FROM bulkhead.audit_platform_events ORDER BY seq DESC LIMIT 1' });
      const platformRow = linkEvent(
        { seq: Number(platformHead!.rows[0]!.seq), hash: platformHead!.rows[0]!.hash as Uint8Array },
        createAuditEvent({ ...input(62, null), principal: { subject: 'ops', roles: [], authMethod: 'operator_token' } }),
      );
      assert.equal(await sqlState(asAppPlatform(insert('bulkhead.audit_platform_events', null, { ...platformRow, hash: platformRow.hash.subarray(0, 31) }))), '23514', 'the platform table');
      // None of them is a CHECK constraint, which PostgreSQL would read back at every INSERT statement (migration 15).
      const [checks] = await engine.batch([
        { text: "SELECT count(*)::int AS n FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid WHERE c.contype = 'c' AND t.relname IN ('audit_events', 'audit_platform_events')" },
      ]);
      assert.equal(checks!.rows[0]!.n, 0);
      const after = await verifyChain(await readRows(tenantA), { chain: tenantA });
      assert.ok(after.ok && after.head.seq === head.head.seq, 'nothing was written');
    });

    it('what the triggers cannot stop (the owner disabling one) the chain reveals', async () => {
      await engine.script(`SET LOCAL ROLE ${owner};
ALTER TABLE audit_bridge.audit_events DISABLE TRIGGER audit_events_append_only;
SELECT set_config('bulkhead.tenant_id', '${tenantA}', true);
UPDATE audit_bridge.audit_events SET event = jsonb_set(event, '{outcome}', '"error"') || '{"errorCode":"INTERNAL"}'::jsonb WHERE seq = 3;
ALTER TABLE audit_bridge.audit_events ENABLE TRIGGER audit_events_append_only;`);
      assertDivergence(await verifyChain(await readRows(tenantA, 'audit_bridge.audit_events'), { chain: tenantA }), 'hash-mismatch', 3);
    });
  });
}

describe('the checkpoint anchors', () => {
  it('refuses anchors out of order or malformed', async () => {
    const rows = buildChain(30);
    const a = (seq: number): Anchor => ({ seq, hash: rows[seq - 1]!.hash });
    assert.ok((await verifyChain(rows, { chain: TENANT, anchors: [a(10), a(20), a(30)] })).ok);
    assertDivergence(await verifyChain(rows, { chain: TENANT, anchors: [a(20), a(10)] }), 'checkpoint-invalid', 10);
    assertDivergence(await verifyChain(rows, { chain: TENANT, anchors: [a(10), { seq: 20, hash: randomBytes(32) }] }), 'witness-mismatch', 20);
    assertDivergence(await verifyChain(rows, { chain: TENANT, anchors: [{ seq: 10, hash: Buffer.alloc(31) }] }), 'checkpoint-invalid', 1);
    assertDivergence(await verifyChain(rows, { chain: TENANT, anchors: [a(10), { seq: 10, hash: randomBytes(32) }] }), 'checkpoint-invalid', 10);
  });
});
