import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createHmac, randomUUID } from 'node:crypto';
import fc from 'fast-check';
import { SignJWT, exportJWK, exportSPKI, generateKeyPair } from 'jose';
import type { CryptoKey, JWTPayload } from 'jose';
import { AuthenticationError, BulkheadError } from '../src/errors.js';
import {
  MAX_TOKEN_LENGTH,
  TOKEN_INVALID_MESSAGE,
  TokenVerifier,
  generateJwtSecret,
  mintTenantToken,
} from '../src/access/tokens.js';
import {
  OperatorTokenVerifier,
  generateOperatorToken,
  hashOperatorToken,
  looksLikeOperatorToken,
} from '../src/access/operator-tokens.js';

const ISSUER = 'https://idp.example.test';
const AUDIENCE = 'bulkhead';
const TENANT = '01936f4e-7c2a-7b3d-9e4f-0a1b2c3d4e5f';
const T0 = 1_800_000_000_000; // a fixed clock, in ms
const T0_S = T0 / 1000;

/** Asserts that `promise` rejects with AUTH_TOKEN_INVALID and the one fixed message. */
async function rejectsInvalid(promise: Promise<unknown>): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(error instanceof AuthenticationError, `expected AuthenticationError, got ${String(error)}`);
    assert.equal(error.code, 'AUTH_TOKEN_INVALID');
    assert.equal(error.message, TOKEN_INVALID_MESSAGE);
    return true;
  });
}

function throwsInvalid(fn: () => unknown): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof AuthenticationError);
    assert.equal(error.code, 'AUTH_TOKEN_INVALID');
    assert.equal(error.message, TOKEN_INVALID_MESSAGE);
    return true;
  });
}

function throwsCode(fn: () => unknown, code: string): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof BulkheadError);
    assert.equal(error.code, code);
    return true;
  });
}

const b64url = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url');

function validClaims(overrides: Record<string, unknown> = {}): JWTPayload {
  return {
    iss: ISSUER,
    aud: AUDIENCE,
    sub: 'user-42',
    tenant: TENANT,
    roles: ['member', 'viewer'],
    iat: T0_S,
    exp: T0_S + 600,
    ...overrides,
  };
}

/** Signs `claims` as given (keys whose value is undefined are dropped), so every claim can be omitted. */
async function sign(
  claims: JWTPayload,
  key: Uint8Array | CryptoKey,
  header: { alg: string; kid?: string } = { alg: 'HS256' },
): Promise<string> {
  const clean = Object.fromEntries(Object.entries(claims).filter(([, value]) => value !== undefined));
  return new SignJWT(clean).setProtectedHeader({ typ: 'JWT', ...header }).sign(key);
}

/** Signs by hand, so headers jose refuses to produce (unknown `crit`) can be tested. */
function hmacSign(header: Record<string, unknown>, claims: unknown, key: Uint8Array): string {
  const input = `${b64url(header)}.${b64url(claims)}`;
  return `${input}.${createHmac('sha256', key).update(input).digest('base64url')}`;
}

function clock(start = T0): { now: () => number; set: (ms: number) => void } {
  let current = start;
  return { now: () => current, set: (ms) => { current = ms; } };
}

describe('TokenVerifier (HS256)', () => {
  const secret = generateJwtSecret();
  const time = clock();
  const verifier = new TokenVerifier({ secret, issuer: ISSUER, audience: AUDIENCE, now: time.now });

  it('returns the tenant principal of a valid token, roles deduplicated, and serves it again from the cache', async () => {
    const token = await sign(validClaims({ roles: ['viewer', 'member', 'viewer'] }), secret);
    const principal = await verifier.verify(token);
    assert.deepEqual(principal, {
      kind: 'tenant',
      tenantId: TENANT,
      subject: 'user-42',
      roles: ['member', 'viewer'],
      authMethod: 'jwt',
    });
    assert.ok(Object.isFrozen(principal));
    assert.ok(Object.isFrozen(principal.roles));
    assert.equal(await verifier.verify(token), principal, 'a cache hit returns the same principal');
  });

  it('accepts aud as an array containing the audience, and an empty roles array', async () => {
    const token = await sign(validClaims({ aud: ['other', AUDIENCE], roles: [] }), secret);
    const principal = await verifier.verify(token);
    assert.deepEqual(principal.roles, []);
  });

  it('rejects alg "none", with and without a signature segment', async () => {
    const payload = b64url(validClaims());
    await rejectsInvalid(verifier.verify(`${b64url({ alg: 'none', typ: 'JWT' })}.${payload}.`));
    await rejectsInvalid(verifier.verify(`${b64url({ alg: 'none', typ: 'JWT' })}.${payload}.c2ln`));
    await rejectsInvalid(verifier.verify(`${b64url({ alg: 'None' })}.${payload}.`));
  });

  it('rejects a token signed with another key', async () => {
    await rejectsInvalid(verifier.verify(await sign(validClaims(), generateJwtSecret())));
  });

  it('rejects a token signed with HS512 or RS256 when HS256 is configured', async () => {
    await rejectsInvalid(verifier.verify(await sign(validClaims(), secret, { alg: 'HS512' })));
    await rejectsInvalid(verifier.verify(await sign(validClaims(), secret, { alg: 'HS384' })));
    const { privateKey } = await generateKeyPair('RS256');
    await rejectsInvalid(verifier.verify(await sign(validClaims(), privateKey, { alg: 'RS256' })));
  });

  it('rejects an expired token and a token not yet valid', async () => {
    await rejectsInvalid(verifier.verify(await sign(validClaims({ exp: T0_S - 1 }), secret)));
    await rejectsInvalid(verifier.verify(await sign(validClaims({ exp: T0_S }), secret)));
    await rejectsInvalid(verifier.verify(await sign(validClaims({ nbf: T0_S + 60 }), secret)));
  });

  it('rejects a wrong or missing issuer and audience', async () => {
    await rejectsInvalid(verifier.verify(await sign(validClaims({ iss: 'https://evil.example.test' }), secret)));
    await rejectsInvalid(verifier.verify(await sign(validClaims({ iss: undefined }), secret)));
    await rejectsInvalid(verifier.verify(await sign(validClaims({ aud: 'another-service' }), secret)));
    await rejectsInvalid(verifier.verify(await sign(validClaims({ aud: ['a', 'b'] }), secret)));
    await rejectsInvalid(verifier.verify(await sign(validClaims({ aud: undefined }), secret)));
  });

  it('rejects a token without exp, or with a non-numeric exp, nbf or iat', async () => {
    await rejectsInvalid(verifier.verify(await sign(validClaims({ exp: undefined }), secret)));
    await rejectsInvalid(verifier.verify(await sign(validClaims({ exp: String(T0_S + 600) }), secret)));
    await rejectsInvalid(verifier.verify(await sign(validClaims({ nbf: 'yesterday' }), secret)));
    await rejectsInvalid(verifier.verify(await sign(validClaims({ iat: 'now' }), secret)));
  });

  it('rejects a missing or malformed tenant claim', async () => {
    const bad: unknown[] = [
      undefined,
      '',
      'not-a-uuid',
      TENANT.toUpperCase(),
      `{${TENANT}}`,
      TENANT.replaceAll('-', ''),
      ` ${TENANT}`,
      `${TENANT}\n`,
      '00000000-0000-0000-0000-000000000000',
      'ffffffff-ffff-ffff-ffff-ffffffffffff',
      '01936f4e-7c2a-7b3d-4e4f-0a1b2c3d4e5f', // variant bits 0xxx
      '01936f4e-7c2a-0b3d-9e4f-0a1b2c3d4e5f', // version 0
      42,
      [TENANT],
      { id: TENANT },
      null,
    ];
    for (const tenant of bad) {
      await rejectsInvalid(verifier.verify(await sign(validClaims({ tenant }), secret)));
    }
  });

  it('rejects unknown roles (fail closed) and roles that are not an array of strings', async () => {
    const bad: unknown[] = [
      undefined,
      ['member', 'superuser'],
      ['Member'],
      ['tenant_admin '],
      'viewer',
      'member,viewer',
      { 0: 'member' },
      [['member']],
      [1],
      [null],
      null,
    ];
    for (const roles of bad) {
      await rejectsInvalid(verifier.verify(await sign(validClaims({ roles }), secret)));
    }
  });

  it('rejects a missing, empty, oversized or non-string subject', async () => {
    for (const sub of [undefined, '', 'x'.repeat(257), 42, ['user'], 'user\nforged log line', 'user\u0085']) {
      await rejectsInvalid(verifier.verify(await sign(validClaims({ sub }), secret)));
    }
    const longest = await verifier.verify(await sign(validClaims({ sub: 'x'.repeat(256) }), secret));
    assert.equal(longest.subject.length, 256);
  });

  it('rejects a token longer than 8 KiB even when its signature is valid', async () => {
    const padded = await sign(validClaims({ pad: 'p'.repeat(MAX_TOKEN_LENGTH) }), secret);
    assert.ok(padded.length > MAX_TOKEN_LENGTH);
    await rejectsInvalid(verifier.verify(padded));
    const fits = await sign(validClaims({ pad: 'p'.repeat(5000) }), secret);
    assert.ok(fits.length <= MAX_TOKEN_LENGTH);
    await verifier.verify(fits);
  });

  it('rejects garbage strings and non-strings', async () => {
    const garbage = ['', ' ', 'Bearer x', 'abc', 'a.b', 'a.b.c', '...', 'a..c', '.b.c', 'eyJ.eyJ.sig', '\u0000', '😀.😀.😀'];
    for (const token of garbage) await rejectsInvalid(verifier.verify(token));
    const valid = await sign(validClaims(), secret);
    await rejectsInvalid(verifier.verify(`${valid}.extra`));
    await rejectsInvalid(verifier.verify(` ${valid}`));
    for (const value of [undefined, null, 42, {}, [valid]]) {
      await rejectsInvalid(verifier.verify(value as unknown as string));
    }
  });

  it('rejects a token with a tampered payload or header', async () => {
    const valid = await sign(validClaims(), secret);
    const [header, , signature] = valid.split('.');
    const forged = `${header}.${b64url(validClaims({ tenant: randomUUID() }))}.${signature}`;
    await rejectsInvalid(verifier.verify(forged));
    const forgedRoles = `${header}.${b64url(validClaims({ roles: ['tenant_admin'] }))}.${signature}`;
    await rejectsInvalid(verifier.verify(forgedRoles));
  });

  it('rejects a token with an unknown critical header', async () => {
    assert.equal((await verifier.verify(hmacSign({ alg: 'HS256', typ: 'JWT' }, validClaims({ sub: 'hand' }), secret))).subject, 'hand');
    const token = hmacSign({ alg: 'HS256', crit: ['x-unknown'], 'x-unknown': true }, validClaims(), secret);
    await rejectsInvalid(verifier.verify(token));
  });

  it('puts the reason in cause without the claims set', async () => {
    const token = await sign(validClaims({ iss: 'https://evil.example.test' }), secret);
    const error = await verifier.verify(token).then(
      () => assert.fail('expected a rejection'),
      (e: unknown) => e,
    );
    assert.ok(error instanceof AuthenticationError);
    assert.ok(error.cause instanceof Error);
    assert.equal((error.cause as Error & { code?: string }).code, 'ERR_JWT_CLAIM_VALIDATION_FAILED');
    assert.equal('payload' in error.cause, false);
    assert.equal(error.cause.cause, undefined);
  });
});

describe('TokenVerifier cache', () => {
  const secret = generateJwtSecret();

  it('never serves an entry at or after exp, and the tolerance does not extend a cached entry', async () => {
    const time = clock();
    const verifier = new TokenVerifier({ secret, issuer: ISSUER, audience: AUDIENCE, now: time.now });
    const token = await sign(validClaims({ exp: T0_S + 2 }), secret);
    const first = await verifier.verify(token);
    time.set(T0 + 1999);
    assert.equal(await verifier.verify(token), first);
    time.set(T0 + 2000);
    await rejectsInvalid(verifier.verify(token));
    time.set(T0 + 60_000);
    await rejectsInvalid(verifier.verify(token));
  });

  it('with a clock tolerance, a token past exp is re-verified (not served from the cache) until the tolerance runs out', async () => {
    const time = clock();
    const verifier = new TokenVerifier({
      secret,
      issuer: ISSUER,
      audience: AUDIENCE,
      clockToleranceSeconds: 5,
      now: time.now,
    });
    const token = await sign(validClaims({ exp: T0_S + 2 }), secret);
    const cached = await verifier.verify(token);
    assert.equal(await verifier.verify(token), cached);
    time.set(T0 + 3000); // past exp, within the tolerance: jose accepts, the cache must not answer
    const reverified = await verifier.verify(token);
    assert.notEqual(reverified, cached);
    assert.deepEqual(reverified, cached);
    assert.notEqual(await verifier.verify(token), reverified, 'a token valid only thanks to the tolerance is never served from the cache');
    time.set(T0 + 7000); // exp + tolerance
    await rejectsInvalid(verifier.verify(token));
  });

  it('never serves an entry before nbf, even if the clock goes backwards', async () => {
    const time = clock();
    const verifier = new TokenVerifier({ secret, issuer: ISSUER, audience: AUDIENCE, now: time.now });
    const token = await sign(validClaims({ nbf: T0_S - 10 }), secret);
    const principal = await verifier.verify(token);
    assert.equal(await verifier.verify(token), principal);
    time.set(T0 - 60_000);
    await rejectsInvalid(verifier.verify(token));
  });

  it('never serves from the cache a token that is valid only thanks to the nbf tolerance', async () => {
    const time = clock();
    const verifier = new TokenVerifier({
      secret,
      issuer: ISSUER,
      audience: AUDIENCE,
      clockToleranceSeconds: 30,
      now: time.now,
    });
    const token = await sign(validClaims({ nbf: T0_S + 10 }), secret);
    const a = await verifier.verify(token);
    const b = await verifier.verify(token);
    assert.notEqual(a, b);
  });

  it('is bounded and evicts the oldest entry first', async () => {
    const time = clock();
    const verifier = new TokenVerifier({ secret, issuer: ISSUER, audience: AUDIENCE, cacheSize: 2, now: time.now });
    const [a, b, c] = await Promise.all(['a', 'b', 'c'].map((sub) => sign(validClaims({ sub }), secret)));
    const pa = await verifier.verify(a!);
    const pb = await verifier.verify(b!);
    assert.equal(await verifier.verify(a!), pa);
    const pc = await verifier.verify(c!); // evicts a, the oldest inserted
    assert.equal(await verifier.verify(b!), pb);
    assert.equal(await verifier.verify(c!), pc);
    assert.notEqual(await verifier.verify(a!), pa);
  });

  it('cacheSize 0 disables the cache', async () => {
    const verifier = new TokenVerifier({ secret, issuer: ISSUER, audience: AUDIENCE, cacheSize: 0, now: clock().now });
    const token = await sign(validClaims(), secret);
    assert.notEqual(await verifier.verify(token), await verifier.verify(token));
  });

  it('does not cache failures: a token rejected once is rejected every time, a valid one still verifies', async () => {
    const time = clock();
    const verifier = new TokenVerifier({ secret, issuer: ISSUER, audience: AUDIENCE, now: time.now });
    const early = await sign(validClaims({ nbf: T0_S + 100 }), secret);
    await rejectsInvalid(verifier.verify(early));
    time.set(T0 + 100_000);
    const principal = await verifier.verify(early);
    assert.equal(principal.tenantId, TENANT);
    assert.equal(await verifier.verify(early), principal);
  });

  it('a token signed with another key never reaches a cached principal of the same claims', async () => {
    const verifier = new TokenVerifier({ secret, issuer: ISSUER, audience: AUDIENCE, now: clock().now });
    const claims = validClaims();
    await verifier.verify(await sign(claims, secret));
    await rejectsInvalid(verifier.verify(await sign(claims, generateJwtSecret())));
  });
});

describe('TokenVerifier options', () => {
  const secret = generateJwtSecret();
  const base = { issuer: ISSUER, audience: AUDIENCE };

  it('needs exactly one of secret and jwksUrl', () => {
    throwsCode(() => new TokenVerifier({ ...base }), 'CONFIG_INVALID');
    throwsCode(() => new TokenVerifier({ ...base, secret, jwksUrl: 'https://idp.example.test/jwks' }), 'CONFIG_INVALID');
  });

  it('refuses a short or non-binary secret', () => {
    throwsCode(() => new TokenVerifier({ ...base, secret: new Uint8Array(31) }), 'CONFIG_INVALID');
    throwsCode(() => new TokenVerifier({ ...base, secret: 'a-string-secret-that-is-long-enough!!' as unknown as Uint8Array }), 'CONFIG_INVALID');
  });

  it('refuses a malformed or plain-HTTP non-loopback jwksUrl', () => {
    throwsCode(() => new TokenVerifier({ ...base, jwksUrl: 'not a url' }), 'CONFIG_INVALID');
    throwsCode(() => new TokenVerifier({ ...base, jwksUrl: 'http://idp.example.test/jwks' }), 'CONFIG_INVALID');
    throwsCode(() => new TokenVerifier({ ...base, jwksUrl: 'file:///etc/jwks.json' }), 'CONFIG_INVALID');
    new TokenVerifier({ ...base, jwksUrl: 'https://idp.example.test/jwks' });
    new TokenVerifier({ ...base, jwksUrl: 'http://127.0.0.1:9/jwks' });
    new TokenVerifier({ ...base, jwksUrl: 'http://localhost:9/jwks' });
  });

  it('refuses an empty issuer or audience, a bad tolerance or cache size', () => {
    throwsCode(() => new TokenVerifier({ secret, issuer: '', audience: AUDIENCE }), 'CONFIG_INVALID');
    throwsCode(() => new TokenVerifier({ secret, issuer: ISSUER, audience: '' }), 'CONFIG_INVALID');
    for (const clockToleranceSeconds of [-1, 1.5, 301, Number.NaN]) {
      throwsCode(() => new TokenVerifier({ ...base, secret, clockToleranceSeconds }), 'CONFIG_INVALID');
    }
    for (const cacheSize of [-1, 2.5, 1_000_001, Number.POSITIVE_INFINITY]) {
      throwsCode(() => new TokenVerifier({ ...base, secret, cacheSize }), 'CONFIG_INVALID');
    }
  });

  it('copies the secret, so changing the caller\'s array later changes nothing', async () => {
    const mine = generateJwtSecret();
    const verifier = new TokenVerifier({ ...base, secret: mine, now: clock().now });
    const token = await sign(validClaims(), mine);
    mine.fill(0);
    assert.equal((await verifier.verify(token)).tenantId, TENANT);
  });
});

describe('TokenVerifier (JWKS)', () => {
  let server: ReturnType<typeof createServer>;
  let jwksUrl: string;
  let requests = 0;
  let rsa: CryptoKey;
  let ed: CryptoKey;
  let ec: CryptoKey;
  let rsaPublicPem: string;
  /** Keys published without `alg` (as many identity providers do): only the allow-list stops other algorithms. */
  const unlisted = new Map<string, CryptoKey>();
  let rsaNoAlg: CryptoKey;
  let verifier: TokenVerifier;
  const time = clock();

  before(async () => {
    const rsaPair = await generateKeyPair('RS256');
    const edPair = await generateKeyPair('EdDSA', { crv: 'Ed25519' });
    const ecPair = await generateKeyPair('ES256');
    rsa = rsaPair.privateKey;
    ed = edPair.privateKey;
    ec = ecPair.privateKey;
    rsaPublicPem = await exportSPKI(rsaPair.publicKey);
    const noAlgPair = await generateKeyPair('RS256');
    rsaNoAlg = noAlgPair.privateKey;
    const keys = [
      { ...(await exportJWK(rsaPair.publicKey)), kid: 'rsa-1', alg: 'RS256', use: 'sig' },
      { ...(await exportJWK(edPair.publicKey)), kid: 'ed-1', alg: 'EdDSA', use: 'sig' },
      { ...(await exportJWK(ecPair.publicKey)), kid: 'ec-1', alg: 'ES256', use: 'sig' },
      { ...(await exportJWK(noAlgPair.publicKey)), kid: 'rsa-noalg', use: 'sig' },
    ];
    for (const alg of ['PS256', 'RS512', 'ES384'] as const) {
      const pair = await generateKeyPair(alg);
      unlisted.set(alg, pair.privateKey);
      keys.push({ ...(await exportJWK(pair.publicKey)), kid: `${alg}-noalg`, use: 'sig' });
    }
    const jwks = { keys };
    server = createServer((_req, res) => {
      requests += 1;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(jwks));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    jwksUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/.well-known/jwks.json`;
    verifier = new TokenVerifier({ jwksUrl, issuer: ISSUER, audience: AUDIENCE, now: time.now });
  });

  after(async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve, reject) => server.close((error) => (error ? reject(error) : resolve())));
  });

  it('verifies RS256, EdDSA and ES256 tokens from keys in the set', async () => {
    const viaRsa = await verifier.verify(await sign(validClaims({ sub: 'rsa' }), rsa, { alg: 'RS256', kid: 'rsa-1' }));
    assert.deepEqual(viaRsa, { kind: 'tenant', tenantId: TENANT, subject: 'rsa', roles: ['member', 'viewer'], authMethod: 'jwt' });
    const viaEd = await verifier.verify(await sign(validClaims({ sub: 'ed' }), ed, { alg: 'EdDSA', kid: 'ed-1' }));
    assert.equal(viaEd.subject, 'ed');
    const viaEc = await verifier.verify(await sign(validClaims({ sub: 'ec' }), ec, { alg: 'ES256', kid: 'ec-1' }));
    assert.equal(viaEc.subject, 'ec');
    assert.ok(requests >= 1);
  });

  it('rejects a token signed with a key that is not in the set', async () => {
    const stranger = (await generateKeyPair('RS256')).privateKey;
    await rejectsInvalid(verifier.verify(await sign(validClaims(), stranger, { alg: 'RS256', kid: 'rsa-1' })));
    await rejectsInvalid(verifier.verify(await sign(validClaims(), stranger, { alg: 'RS256', kid: 'rsa-unknown' })));
    const strangerEd = (await generateKeyPair('EdDSA', { crv: 'Ed25519' })).privateKey;
    await rejectsInvalid(verifier.verify(await sign(validClaims(), strangerEd, { alg: 'EdDSA', kid: 'ed-1' })));
  });

  it('rejects HS256 (algorithm confusion with the public key as the HMAC secret) and algorithms off the list', async () => {
    const confused = await sign(validClaims(), new TextEncoder().encode(rsaPublicPem), { alg: 'HS256', kid: 'rsa-1' });
    await rejectsInvalid(verifier.verify(confused));
    await rejectsInvalid(verifier.verify(await sign(validClaims(), generateJwtSecret(), { alg: 'HS256' })));
    assert.equal((await verifier.verify(await sign(validClaims({ sub: 'no-alg' }), rsaNoAlg, { alg: 'RS256', kid: 'rsa-noalg' }))).subject, 'no-alg');
    for (const [alg, key] of unlisted) {
      await rejectsInvalid(verifier.verify(await sign(validClaims(), key, { alg, kid: `${alg}-noalg` })));
    }
  });

  it('applies the same claim checks to JWKS tokens', async () => {
    const header = { alg: 'EdDSA', kid: 'ed-1' };
    await rejectsInvalid(verifier.verify(await sign(validClaims({ roles: ['root'] }), ed, header)));
    await rejectsInvalid(verifier.verify(await sign(validClaims({ tenant: 'acme' }), ed, header)));
    await rejectsInvalid(verifier.verify(await sign(validClaims({ exp: undefined }), ed, header)));
    await rejectsInvalid(verifier.verify(await sign(validClaims({ iss: 'https://other.test' }), ed, header)));
  });

  it('fails closed with AUTH_TOKEN_INVALID when the JWKS cannot be fetched', async () => {
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const unreachable = new TokenVerifier({ jwksUrl: `http://127.0.0.1:${port}/jwks`, issuer: ISSUER, audience: AUDIENCE, now: time.now });
    await rejectsInvalid(unreachable.verify(await sign(validClaims(), rsa, { alg: 'RS256', kid: 'rsa-1' })));
  });
});

describe('mintTenantToken', () => {
  const secret = generateJwtSecret();
  const base = { secret, issuer: ISSUER, audience: AUDIENCE, tenantId: TENANT, subject: 'builder-1', ttlSeconds: 3600 };

  it('mints an HS256 token that the verifier accepts, with iat, exp and a random jti', async () => {
    const before = Date.now();
    const { token, expiresAt } = await mintTenantToken({ ...base, roles: ['builder', 'member', 'builder'] });
    const verifier = new TokenVerifier({ secret, issuer: ISSUER, audience: AUDIENCE });
    const principal = await verifier.verify(token);
    assert.deepEqual(principal, { kind: 'tenant', tenantId: TENANT, subject: 'builder-1', roles: ['builder', 'member'], authMethod: 'jwt' });

    const [header, payload] = token.split('.') as [string, string, string];
    assert.deepEqual(JSON.parse(Buffer.from(header, 'base64url').toString()), { alg: 'HS256', typ: 'JWT' });
    const claims = JSON.parse(Buffer.from(payload, 'base64url').toString()) as Record<string, unknown>;
    assert.equal(typeof claims['jti'], 'string');
    assert.equal(claims['exp'], (claims['iat'] as number) + 3600);
    assert.equal(expiresAt, new Date((claims['exp'] as number) * 1000).toISOString());
    assert.ok(Date.parse(expiresAt) >= Math.floor(before / 1000) * 1000 + 3600_000);

    const again = await mintTenantToken({ ...base, roles: ['builder'] });
    const againClaims = JSON.parse(Buffer.from(again.token.split('.')[1]!, 'base64url').toString()) as Record<string, unknown>;
    assert.notEqual(againClaims['jti'], claims['jti']);
  });

  it('validates ttlSeconds, roles, subject and tenant', async () => {
    for (const ttlSeconds of [0, -1, 1.5, 86_400 * 30 + 1, Number.NaN, '60' as unknown as number]) {
      await assert.rejects(mintTenantToken({ ...base, roles: ['viewer'], ttlSeconds }), { code: 'REQUEST_INVALID' });
    }
    await mintTenantToken({ ...base, roles: ['viewer'], ttlSeconds: 1 });
    await mintTenantToken({ ...base, roles: ['viewer'], ttlSeconds: 86_400 * 30 });
    await assert.rejects(mintTenantToken({ ...base, roles: ['root' as 'viewer'] }), { code: 'REQUEST_INVALID' });
    await assert.rejects(mintTenantToken({ ...base, roles: 'viewer' as unknown as ['viewer'] }), { code: 'REQUEST_INVALID' });
    await assert.rejects(mintTenantToken({ ...base, roles: ['viewer'], subject: '' }), { code: 'REQUEST_INVALID' });
    await assert.rejects(mintTenantToken({ ...base, roles: ['viewer'], tenantId: TENANT.toUpperCase() }), { code: 'REQUEST_INVALID' });
    await assert.rejects(mintTenantToken({ ...base, roles: ['viewer'], secret: new Uint8Array(8) }), { code: 'CONFIG_INVALID' });
    await assert.rejects(mintTenantToken({ ...base, roles: ['viewer'], issuer: '' }), { code: 'CONFIG_INVALID' });
  });

  it('generateJwtSecret returns 32 fresh random bytes', () => {
    const a = generateJwtSecret();
    const b = generateJwtSecret();
    assert.ok(a instanceof Uint8Array);
    assert.equal(a.byteLength, 32);
    assert.notDeepEqual(a, b);
  });
});

describe('operator tokens', () => {
  it('generate → hash → verify', () => {
    const token = generateOperatorToken();
    assert.match(token, /^bho_[A-Za-z0-9_-]{43}$/);
    assert.equal(Buffer.from(token.slice(4), 'base64url').byteLength, 32);
    const hash = hashOperatorToken(token);
    assert.match(hash, /^sha256:[0-9a-f]{64}$/);
    assert.equal(hashOperatorToken(token), hash);
    const verifier = new OperatorTokenVerifier([hashOperatorToken(generateOperatorToken()), hash]);
    const principal = verifier.verify(token);
    assert.deepEqual(principal, { kind: 'operator', subject: `operator:${hash.slice(7, 15)}`, authMethod: 'operator_token' });
    assert.ok(Object.isFrozen(principal));
  });

  it('rejects a wrong token, and every token when no hash is configured', () => {
    const token = generateOperatorToken();
    const verifier = new OperatorTokenVerifier([hashOperatorToken(token)]);
    throwsInvalid(() => verifier.verify(generateOperatorToken()));
    const flipped = token.slice(0, 10) + (token[10] === 'A' ? 'B' : 'A') + token.slice(11);
    throwsInvalid(() => verifier.verify(flipped));
    throwsInvalid(() => new OperatorTokenVerifier([]).verify(token));
  });

  it('rejects malformed tokens before hashing', () => {
    const token = generateOperatorToken();
    const verifier = new OperatorTokenVerifier([hashOperatorToken(token)]);
    const malformed = [
      '',
      'bho_',
      token.slice(0, -1),
      `${token}A`,
      token.replace('bho_', 'BHO_'),
      token.replace('bho_', 'bhx_'),
      token.slice(4),
      `${token.slice(0, 20)}+${token.slice(21)}`,
      `${token.slice(0, 20)}=${token.slice(21)}`,
      ` ${token}`,
      `${token}\n`,
      hashOperatorToken(token),
    ];
    for (const candidate of malformed) throwsInvalid(() => verifier.verify(candidate));
    for (const value of [undefined, null, 42]) throwsInvalid(() => verifier.verify(value as unknown as string));
  });

  it('hashOperatorToken and the verifier refuse malformed input at configuration time', () => {
    throwsCode(() => hashOperatorToken('secret-operator'), 'CONFIG_INVALID');
    throwsCode(() => new OperatorTokenVerifier(['sha256:abc']), 'CONFIG_INVALID');
    throwsCode(() => new OperatorTokenVerifier([`sha256:${'A'.repeat(64)}`]), 'CONFIG_INVALID');
    throwsCode(() => new OperatorTokenVerifier([generateOperatorToken()]), 'CONFIG_INVALID');
    throwsCode(() => new OperatorTokenVerifier('sha256:x' as unknown as string[]), 'CONFIG_INVALID');
  });

  it('looksLikeOperatorToken tells the kinds apart by prefix', async () => {
    assert.equal(looksLikeOperatorToken(generateOperatorToken()), true);
    assert.equal(looksLikeOperatorToken('bho_anything'), true);
    const jwt = await mintTenantToken({
      secret: generateJwtSecret(),
      issuer: ISSUER,
      audience: AUDIENCE,
      tenantId: TENANT,
      subject: 's',
      roles: ['viewer'],
      ttlSeconds: 60,
    });
    assert.equal(looksLikeOperatorToken(jwt.token), false);
    assert.equal(looksLikeOperatorToken(''), false);
    assert.equal(looksLikeOperatorToken('BHO_x'), false);
  });

  it('an operator token is never a tenant token and a tenant token never an operator token', async () => {
    const secret = generateJwtSecret();
    const tenantVerifier = new TokenVerifier({ secret, issuer: ISSUER, audience: AUDIENCE });
    await rejectsInvalid(tenantVerifier.verify(generateOperatorToken()));
    const { token } = await mintTenantToken({ secret, issuer: ISSUER, audience: AUDIENCE, tenantId: TENANT, subject: 's', roles: ['viewer'], ttlSeconds: 60 });
    throwsInvalid(() => new OperatorTokenVerifier([hashOperatorToken(generateOperatorToken())]).verify(token));
  });
});

describe('properties', () => {
  const secret = generateJwtSecret();
  const base64urlChar = fc.constantFrom(...'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'.split(''));
  const segment = fc.string({ unit: base64urlChar, maxLength: 200 });
  const jwtShaped = fc.tuple(segment, segment, segment).map(([h, p, s]) => `${h}.${p}.${s}`);
  const headerShaped = fc
    .record({ alg: fc.constantFrom('HS256', 'none', 'HS512', 'RS256', 'EdDSA'), typ: fc.constantFrom('JWT', undefined) })
    .chain((header) =>
      fc.tuple(fc.jsonValue(), segment).map(([payload, sig]) => `${b64url(header)}.${b64url(payload)}.${sig}`),
    );
  const anyString = fc.oneof(
    fc.string(),
    fc.string({ unit: 'binary', maxLength: 300 }),
    jwtShaped,
    headerShaped,
    fc.string({ minLength: MAX_TOKEN_LENGTH - 2, maxLength: MAX_TOKEN_LENGTH + 2 }),
  );

  it('random strings never verify as tenant tokens and only ever fail with AUTH_TOKEN_INVALID', async () => {
    const verifier = new TokenVerifier({ secret, issuer: ISSUER, audience: AUDIENCE, now: clock().now });
    await fc.assert(
      fc.asyncProperty(anyString, async (token) => {
        await rejectsInvalid(verifier.verify(token));
      }),
      { numRuns: 500 },
    );
  });

  it('changing any character of the signed part of a valid token makes it invalid', async () => {
    const verifier = new TokenVerifier({ secret, issuer: ISSUER, audience: AUDIENCE, now: clock().now });
    const token = await sign(validClaims(), secret);
    await verifier.verify(token); // cached: a forgery must not hit the cache either
    const signedLength = token.lastIndexOf('.');
    await fc.assert(
      fc.asyncProperty(fc.nat({ max: signedLength - 1 }), base64urlChar, async (index, char) => {
        fc.pre(token[index] !== char && token[index] !== '.');
        await rejectsInvalid(verifier.verify(token.slice(0, index) + char + token.slice(index + 1)));
      }),
      { numRuns: 300 },
    );
  });

  it('random strings never verify as operator tokens and only ever fail with AUTH_TOKEN_INVALID', () => {
    const verifier = new OperatorTokenVerifier([hashOperatorToken(generateOperatorToken())]);
    fc.assert(
      fc.property(fc.oneof(anyString, segment.map((s) => `bho_${s}`)), (token) => {
        throwsInvalid(() => verifier.verify(token));
      }),
      { numRuns: 1000 },
    );
  });
});
