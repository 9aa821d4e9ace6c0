/**
 * PostgreSQL over TLS with libpq's sslmode semantics.
 *
 * With the postgres backend selected, the test makes its own PostgreSQL 15 cluster with SSL on, a
 * server certificate for IP 127.0.0.1 only, signed by a CA made here, and a pg_hba.conf that admits
 * TCP clients over TLS only (`hostssl`); the cluster is dropped afterwards. Bulkhead then opens
 * on it with `sslmode=verify-full&sslrootcert=<CA>` (its silo databases too); another CA, a host
 * name the certificate does not hold, and `sslmode=disable` are refused with STORE_UNAVAILABLE,
 * the URL's password in no message. The connection-string checks need no server and always run.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { appendFileSync, chmodSync, chownSync, copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { Bulkhead } from '../src/bulkhead.js';
import { loadConfig } from '../src/config.js';
import { BulkheadError, DatabaseError } from '../src/errors.js';
import { PostgresHost } from '../src/store/postgres/postgres-host.js';
import { libpqSslConnectionString } from '../src/store/postgres/tls.js';
import { BACKENDS } from './support/backends.js';
import { makeCa, makeServerCert, type TestCa } from './support/tls.js';

/** Distinctive, to be looked for in error texts; the space makes pg re-encode the whole URL. */
const SECRET = randomBytes(6).toString('hex');
const PASSWORD = `pw ${SECRET}`;

/** Asserts CONFIG_INVALID whose message matches `message` and holds no password. */
function throwsConfig(fn: () => unknown, message: RegExp): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof BulkheadError, String(error));
    assert.equal(error.code, 'CONFIG_INVALID');
    assert.match(error.message, message);
    assert.ok(!error.message.includes('secret-pw'), 'no password in the message');
    return true;
  });
}

describe('PostgreSQL connection strings: libpq sslmode semantics (no server needed)', () => {
  let dir: string;
  let ca: TestCa;
  const base = 'postgres://app:secret-pw@db.example:5432/bulkhead';

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'bulkhead-pgtls-unit-'));
    ca = makeCa(dir, 'ca');
  });
  after(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it('without sslmode the string is left as it was (no TLS, as before)', () => {
    assert.equal(libpqSslConnectionString(base, {}), base);
    assert.equal(libpqSslConnectionString(`${base}?application_name=x`, {}), `${base}?application_name=x`);
  });

  it('verify-full, verify-ca and require are passed to pg with libpq semantics; a silo URL derived from the string keeps them', () => {
    for (const mode of ['verify-full', 'verify-ca', 'require']) {
      const out = libpqSslConnectionString(`${base}?sslmode=${mode}&sslrootcert=${ca.cert}`, {});
      const url = new URL(out);
      // As PostgresHost derives a silo database's URL.
      url.pathname = '/bulkhead_app_s0123';
      const silo = new URL(url.toString());
      assert.equal(silo.pathname, '/bulkhead_app_s0123');
      assert.equal(silo.password, 'secret-pw');
      assert.equal(silo.searchParams.get('sslmode'), mode);
      assert.equal(silo.searchParams.get('sslrootcert'), ca.cert);
      assert.equal(silo.searchParams.get('uselibpqcompat'), 'true');
    }
    assert.equal(new URL(libpqSslConnectionString(`${base}?sslmode=require`, {})).searchParams.get('sslrootcert'), null);
  });

  it('disable drops the SSL files (libpq does not read them); sslrootcert=system is verify-full against the CAs Node.js trusts', () => {
    const off = new URL(libpqSslConnectionString(`${base}?sslmode=disable&sslrootcert=${join(dir, 'missing.crt')}`, {}));
    assert.equal(off.searchParams.get('sslmode'), 'disable');
    assert.equal(off.searchParams.get('sslrootcert'), null);
    const system = new URL(libpqSslConnectionString(`${base}?sslrootcert=system`, {}));
    assert.equal(system.searchParams.get('sslmode'), 'verify-full');
    assert.equal(system.searchParams.get('sslrootcert'), null);
  });

  it('PGSSLMODE and PGSSLROOTCERT fill what the string leaves out; the string wins', () => {
    const fromEnv = new URL(libpqSslConnectionString(base, { PGSSLMODE: 'verify-full', PGSSLROOTCERT: ca.cert }));
    assert.equal(fromEnv.searchParams.get('sslmode'), 'verify-full');
    assert.equal(fromEnv.searchParams.get('sslrootcert'), ca.cert);
    const own = new URL(libpqSslConnectionString(`${base}?sslmode=disable`, { PGSSLMODE: 'verify-full', PGSSLROOTCERT: ca.cert }));
    assert.equal(own.searchParams.get('sslmode'), 'disable');
    throwsConfig(() => libpqSslConnectionString(base, { PGSSLMODE: 'prefer' }), /sslmode=prefer may fall back/);
  });

  it('what pg cannot do as libpq would is CONFIG_INVALID, naming the parameter and never the URL', () => {
    throwsConfig(() => libpqSslConnectionString(`${base}?sslmode=verify-full`, {}), /sslmode=verify-full needs sslrootcert/);
    throwsConfig(() => libpqSslConnectionString(`${base}?sslmode=verify-ca`, {}), /sslmode=verify-ca needs sslrootcert/);
    throwsConfig(() => libpqSslConnectionString(`${base}?sslmode=prefer`, {}), /sslmode=prefer may fall back to an unencrypted connection/);
    throwsConfig(() => libpqSslConnectionString(`${base}?sslmode=allow`, {}), /sslmode=allow may fall back/);
    throwsConfig(() => libpqSslConnectionString(`${base}?sslmode=no-verify`, {}), /sslmode must be disable, require, verify-ca or verify-full/);
    throwsConfig(() => libpqSslConnectionString(`${base}?sslmode=verify-ca&sslrootcert=system`, {}), /sslrootcert=system needs sslmode=verify-full/);
    throwsConfig(() => libpqSslConnectionString(`${base}?ssl=true`, {}), /parameter ssl is specific to the node-postgres driver/);
    throwsConfig(() => libpqSslConnectionString(`${base}?uselibpqcompat=true&sslmode=require`, {}), /uselibpqcompat is specific/);
    throwsConfig(() => libpqSslConnectionString(`${base}?sslmode=verify-full&sslrootcert=${ca.cert}&sslcrl=/x.crl`, {}), /parameter sslcrl is not supported/);
    throwsConfig(() => libpqSslConnectionString(`${base}?sslmode=verify-full&sslmode=disable`, {}), /sslmode more than once/);
    throwsConfig(() => libpqSslConnectionString(`${base}?sslrootcert=${ca.cert}`, {}), /names SSL files but no sslmode/);
    throwsConfig(() => libpqSslConnectionString(`${base}?sslmode=verify-full&sslrootcert=${join(dir, 'missing.crt')}`, {}), /sslrootcert .*missing\.crt cannot be read/);
    writeFileSync(join(dir, 'garbage.crt'), 'not a certificate MARKER-19ab');
    throwsConfig(() => libpqSslConnectionString(`${base}?sslmode=verify-full&sslrootcert=${join(dir, 'garbage.crt')}`, {}), /garbage\.crt does not hold a PEM certificate$/);
    throwsConfig(() => libpqSslConnectionString(`${base}?sslmode=verify-full&sslrootcert=${ca.cert}&sslcert=${ca.cert}`, {}), /sslcert and sslkey go together/);
  });

  it('PostgresHost applies the rules when a cell is opened', () => {
    throwsConfig(() => new PostgresHost({ connectionString: `${base}?sslmode=verify-full` }), /needs sslrootcert/);
  });
});

/** A loopback port nothing listens on now. */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

function run(command: string, args: readonly string[]): string {
  return execFileSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** The errors in `error`'s cause chain, outermost first. */
function causes(error: unknown): unknown[] {
  const chain: unknown[] = [];
  for (let e: unknown = error; e !== undefined && chain.length < 10; e = (e as { cause?: unknown }).cause) chain.push(e);
  return chain;
}

describe('PostgreSQL over TLS against a cluster with SSL on', { skip: !BACKENDS.includes('postgres') ? 'the postgres backend is not selected' : false }, () => {
  const cluster = `bhtls${randomBytes(4).toString('hex')}`;
  let created = false;
  let dir: string;
  let ca: TestCa;
  let otherCa: TestCa;
  let port: number;

  /**
   * A URL of the test cluster; `params` are its query string. The password (trust auth ignores it)
   * holds a raw space, which pg answers by re-encoding the whole string: the escaped space and
   * plus in the CA's path must survive that.
   */
  const url = (host: string, params: string) => `postgres://postgres:${PASSWORD}@${host}:${port}/postgres${params ? `?${params}` : ''}`;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'bulkhead-pgtls-'));
    // A space and a plus in the CA's path: both need escaping in a URL, and pg re-encodes strings with a space.
    const caDir = join(dir, 'client ca+files');
    mkdirSync(caDir);
    ca = makeCa(caDir, 'ca');
    otherCa = makeCa(caDir, 'other-ca');
    // The certificate names IP 127.0.0.1 only: connecting as "localhost" is a name mismatch.
    const server = makeServerCert(dir, 'server', ca, ['IP:127.0.0.1']);
    const uid = Number(run('id', ['-u', 'postgres']).trim());
    const gid = Number(run('id', ['-g', 'postgres']).trim());
    const serverDir = join(dir, 'server');
    mkdirSync(serverDir);
    copyFileSync(server.cert, join(serverDir, 'server.crt'));
    copyFileSync(server.key, join(serverDir, 'server.key'));
    chmodSync(dir, 0o711);
    chownSync(serverDir, uid, gid);
    chmodSync(serverDir, 0o700);
    chownSync(join(serverDir, 'server.crt'), uid, gid);
    chownSync(join(serverDir, 'server.key'), uid, gid);
    chmodSync(join(serverDir, 'server.key'), 0o600);

    port = await freePort();
    run('pg_createcluster', ['15', cluster, '-p', String(port), '--', '--auth=trust']);
    created = true;
    const etc = `/etc/postgresql/15/${cluster}`;
    // Appended: the last setting in postgresql.conf wins over Debian's defaults above it.
    appendFileSync(
      join(etc, 'postgresql.conf'),
      `\nssl = on\nssl_cert_file = '${join(serverDir, 'server.crt')}'\nssl_key_file = '${join(serverDir, 'server.key')}'\nlisten_addresses = '127.0.0.1,::1'\n`,
    );
    // TCP only over TLS: a client without it finds no pg_hba.conf entry.
    writeFileSync(join(etc, 'pg_hba.conf'), 'local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n');
    run('pg_ctlcluster', ['--skip-systemctl-redirect', '15', cluster, 'start']);
  });

  after(() => {
    if (created) run('pg_dropcluster', ['--stop', '15', cluster]);
    rmSync(dir, { recursive: true, force: true });
  });

  /** Opens the cell's main database as Bulkhead does and runs one query; returns its first row. */
  async function query(connectionString: string, sql: string): Promise<Record<string, unknown>> {
    const host = new PostgresHost({ connectionString, maxConnections: 1 });
    try {
      const [result] = await (await host.main()).batch([{ text: sql }]);
      return result!.rows[0] as Record<string, unknown>;
    } finally {
      await host.close();
    }
  }

  /** Asserts the connection is refused with STORE_UNAVAILABLE, `expected` in the cause chain, and no password anywhere. */
  async function refused(connectionString: string, expected: { code?: string; sqlState?: string }): Promise<void> {
    await assert.rejects(query(connectionString, 'SELECT 1'), (error: unknown) => {
      assert.ok(error instanceof DatabaseError, inspect(error));
      assert.equal(error.code, 'STORE_UNAVAILABLE');
      if (expected.sqlState) assert.equal(error.sqlState, expected.sqlState);
      if (expected.code) assert.ok(causes(error).some((e) => (e as { code?: unknown }).code === expected.code), inspect(error));
      const text = inspect(error, { depth: 10 });
      assert.ok(!text.includes(SECRET), 'no password in the error');
      return true;
    });
  }

  const sslState = 'SELECT s.ssl, s.version, current_database() AS db FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()';

  it('verify-full with the CA: Bulkhead opens over TLS, and a silo database it creates is reached over TLS too', async () => {
    const data = join(dir, 'data');
    const config = loadConfig({}, {
      BULKHEAD_DATA_DIR: data,
      BULKHEAD_OPERATOR_TOKEN: `bho_${randomBytes(32).toString('base64url')}`,
      BULKHEAD_JWT_SECRET: randomBytes(32).toString('base64url'),
      BULKHEAD_LOG_LEVEL: 'silent',
      BULKHEAD_PARTITIONS: '4',
      DATABASE_URL: url('127.0.0.1', `sslmode=verify-full&sslrootcert=${encodeURIComponent(ca.cert)}`),
    });
    const bh = await Bulkhead.open(config);
    try {
      const control = bh.placements.cells.control.host;
      const [main] = await (await control.main()).batch([{ text: sslState }]);
      assert.deepEqual({ ssl: main!.rows[0]!.ssl, db: main!.rows[0]!.db }, { ssl: true, db: 'postgres' });
      assert.match(String(main!.rows[0]!.version), /^TLSv1\.[23]$/);

      const tenant = await bh.tenants.create({ slug: 'tls-silo', name: 'TLS silo', tier: 'silo' }, 'test');
      const placed = (await bh.placements.resolve(tenant.id))!;
      assert.equal(placed.tier, 'silo');
      const [silo] = await (await control.database(placed.location, { create: false })).batch([{ text: sslState }]);
      assert.deepEqual({ ssl: silo!.rows[0]!.ssl, db: silo!.rows[0]!.db }, { ssl: true, db: placed.location });
    } finally {
      await bh.close();
    }
  });

  it('the host name is checked by verify-full and not by verify-ca, as in libpq', async () => {
    const params = `sslrootcert=${encodeURIComponent(ca.cert)}`;
    await refused(url('localhost', `sslmode=verify-full&${params}`), { code: 'ERR_TLS_CERT_ALTNAME_INVALID' });
    assert.equal((await query(url('localhost', `sslmode=verify-ca&${params}`), sslState)).ssl, true);
    assert.equal((await query(url('127.0.0.1', `sslmode=verify-full&${params}`), sslState)).ssl, true);
  });

  it('a CA that did not sign the server certificate is refused by verify-full, verify-ca and require with sslrootcert', async () => {
    const params = `sslrootcert=${encodeURIComponent(otherCa.cert)}`;
    for (const mode of ['verify-full', 'verify-ca', 'require']) {
      await refused(url('127.0.0.1', `sslmode=${mode}&${params}`), { code: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' });
    }
    // sslrootcert=system: the CAs Node.js trusts did not sign it either.
    await refused(url('127.0.0.1', 'sslrootcert=system'), { code: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' });
  });

  it('Bulkhead.open on a CA that did not sign the certificate fails with STORE_UNAVAILABLE, no password in it', async () => {
    const config = loadConfig({}, {
      BULKHEAD_DATA_DIR: join(dir, 'data-refused'),
      BULKHEAD_LOG_LEVEL: 'silent',
      DATABASE_URL: url('127.0.0.1', `sslmode=verify-full&sslrootcert=${encodeURIComponent(otherCa.cert)}`),
    });
    await assert.rejects(Bulkhead.open(config), (error: unknown) => {
      assert.ok(error instanceof BulkheadError);
      assert.equal(error.code, 'STORE_UNAVAILABLE');
      assert.ok(!inspect(error, { depth: 10 }).includes(SECRET), 'no password in the error');
      return true;
    });
  });

  it('require without a CA encrypts without checking the certificate (libpq: no verification)', async () => {
    assert.equal((await query(url('localhost', 'sslmode=require'), sslState)).ssl, true);
  });

  it('sslmode=disable, and no sslmode at all, are refused by a server that admits TLS only', async () => {
    await refused(url('127.0.0.1', 'sslmode=disable'), { sqlState: '28000' });
    await refused(url('127.0.0.1', ''), { sqlState: '28000' });
  });
});
