/**
 * Configuration: a flag wins over the environment, the environment over the file (YAML or
 * JSON); defaults are the SPEC's; every invalid value is refused with CONFIG_INVALID and a message
 * that names it; the generated JWT secret is kept in a 0600 file and a readable or short one is refused.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { loadConfig, readTlsCredentials, resolveJwtSecret, type Config } from '../src/config.js';
import { BulkheadError } from '../src/errors.js';

/** Asserts CONFIG_INVALID with a message matching `message`. */
function throwsConfig(fn: () => unknown, message: RegExp): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof BulkheadError, `expected BulkheadError, got ${String(error)}`);
    assert.equal(error.code, 'CONFIG_INVALID');
    assert.match(error.message, message);
    return true;
  });
}

describe('config', () => {
  let dir: string;
  let yamlFile: string;
  let jsonFile: string;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'bulkhead-config-'));
    yamlFile = join(dir, 'bulkhead.yaml');
    writeFileSync(
      yamlFile,
      ['port: 7001', 'host: 10.0.0.1', 'dataDir: ./from-yaml', 'partitions: 8', 'regions: [eu, us]', 'logLevel: warn', 'poolSize: 3', ''].join('\n'),
    );
    jsonFile = join(dir, 'bulkhead.json');
    writeFileSync(jsonFile, JSON.stringify({ port: 7002, host: 'json.local', partitions: 32, databaseUrl: 'postgresql://db.example/app', jwtIssuer: 'https://idp.example' }));
  });
  after(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  describe('loadConfig', () => {
    it('defaults: port 8080, host 127.0.0.1, data dir ./.bulkhead resolved, 16 partitions, the embedded store, twice the CPUs in connections', () => {
      const c = loadConfig({}, {});
      assert.equal(c.poolSize, Math.min(32, Math.max(4, 2 * availableParallelism())));
      assert.equal(c.port, 8080);
      assert.equal(c.host, '127.0.0.1');
      assert.equal(c.dataDir, resolve('./.bulkhead'));
      assert.ok(c.dataDir.startsWith('/'));
      assert.equal(c.partitions, 16);
      assert.equal(c.databaseUrl, undefined);
      assert.equal(c.operatorToken, undefined);
      assert.equal(c.jwtSecret, undefined);
      assert.deepEqual(c.regions, ['local']);
      assert.equal(c.bodyLimit, 1024 * 1024);
      assert.ok(Object.isFrozen(c));
      assert.ok(Object.isFrozen(c.regions));
    });

    it('reads a YAML file named by BULKHEAD_CONFIG', () => {
      const c = loadConfig({}, { BULKHEAD_CONFIG: yamlFile });
      assert.equal(c.port, 7001);
      assert.equal(c.host, '10.0.0.1');
      assert.equal(c.dataDir, resolve('./from-yaml'));
      assert.equal(c.partitions, 8);
      assert.deepEqual(c.regions, ['eu', 'us']);
      assert.equal(c.logLevel, 'warn');
      assert.equal(c.poolSize, 3);
    });

    it('reads a JSON file named by --config', () => {
      const c = loadConfig({ config: jsonFile }, {});
      assert.equal(c.port, 7002);
      assert.equal(c.host, 'json.local');
      assert.equal(c.partitions, 32);
      assert.equal(c.databaseUrl, 'postgresql://db.example/app');
      assert.equal(c.jwtIssuer, 'https://idp.example');
    });

    it('--config wins over BULKHEAD_CONFIG', () => {
      const c = loadConfig({ config: jsonFile }, { BULKHEAD_CONFIG: yamlFile });
      assert.equal(c.port, 7002);
    });

    it('the environment wins over the file', () => {
      const c = loadConfig(
        {},
        {
          BULKHEAD_CONFIG: yamlFile,
          PORT: '7100',
          HOST: '0.0.0.0',
          BULKHEAD_DATA_DIR: '/srv/bulkhead',
          BULKHEAD_PARTITIONS: '4',
          BULKHEAD_REGIONS: 'ap',
          DATABASE_URL: 'postgres://env.example/db',
        },
      );
      assert.equal(c.port, 7100);
      assert.equal(c.host, '0.0.0.0');
      assert.equal(c.dataDir, '/srv/bulkhead');
      assert.equal(c.partitions, 4);
      assert.deepEqual(c.regions, ['ap']);
      assert.equal(c.databaseUrl, 'postgres://env.example/db');
      // What the environment leaves unset still comes from the file.
      assert.equal(c.logLevel, 'warn');
    });

    it('an empty environment variable does not hide the file value', () => {
      const c = loadConfig({}, { BULKHEAD_CONFIG: yamlFile, PORT: '' });
      assert.equal(c.port, 7001);
    });

    it('a flag wins over the environment and the file', () => {
      const c = loadConfig(
        { port: '7200', host: 'flag.local', dataDir: '/flag/dir', config: yamlFile },
        { PORT: '7100', HOST: '0.0.0.0', BULKHEAD_DATA_DIR: '/env/dir' },
      );
      assert.equal(c.port, 7200);
      assert.equal(c.host, 'flag.local');
      assert.equal(c.dataDir, '/flag/dir');
      assert.equal(loadConfig({ port: 7300 }, { PORT: '7100' }).port, 7300);
    });

    it('secrets come from the environment', () => {
      const secret = randomBytes(32).toString('base64url');
      const c = loadConfig({}, { BULKHEAD_JWT_SECRET: secret, BULKHEAD_OPERATOR_TOKEN: 'bho_x' });
      assert.equal(c.jwtSecret, secret);
      assert.equal(c.operatorToken, 'bho_x');
    });

    for (const [label, env, message] of [
      ['a port that is not a number', { PORT: 'http' }, /port must be an integer from 0 to 65535/],
      ['a port above 65535', { PORT: '65536' }, /port must be an integer from 0 to 65535/],
      ['a negative port', { PORT: '-1' }, /port must be an integer/],
      ['a fractional port', { PORT: '80.5' }, /port must be an integer/],
      ['zero partitions', { BULKHEAD_PARTITIONS: '0' }, /partition count must be an integer from 1 to 1024/],
      ['too many partitions', { BULKHEAD_PARTITIONS: '1025' }, /partition count must be an integer from 1 to 1024/],
      ['partitions that are not a number', { BULKHEAD_PARTITIONS: 'many' }, /partition count/],
      ['a DATABASE_URL of another scheme', { DATABASE_URL: 'mysql://db.example/app' }, /DATABASE_URL must be a postgres:\/\/ URL/],
      ['a DATABASE_URL that is not a URL', { DATABASE_URL: 'db.example' }, /DATABASE_URL must be a postgres:\/\/ URL/],
      ['a short BULKHEAD_JWT_SECRET', { BULKHEAD_JWT_SECRET: 'x'.repeat(31) }, /BULKHEAD_JWT_SECRET must be at least 32 bytes/],
      ['upper-case regions', { BULKHEAD_REGIONS: 'EU,us' }, /regions must be a list of lower-case region names/],
      ['an empty region', { BULKHEAD_REGIONS: 'eu,,us' }, /regions must be a list/],
      ['a region with spaces inside', { BULKHEAD_REGIONS: 'eu west' }, /regions must be a list/],
      ['an unknown log level', { BULKHEAD_LOG_LEVEL: 'loud' }, /log level must be one of/],
      ['a tiny body limit', { BULKHEAD_BODY_LIMIT: '10' }, /body limit must be an integer/],
      ['an empty pool', { BULKHEAD_POOL_SIZE: '0' }, /pool size must be an integer/],
    ] as const) {
      it(`refuses ${label} with CONFIG_INVALID`, () => {
        throwsConfig(() => loadConfig({}, env), message);
      });
    }

    it('refuses a bad port flag, even when the environment is valid', () => {
      throwsConfig(() => loadConfig({ port: 'abc' }, { PORT: '8081' }), /port must be an integer/);
      throwsConfig(() => loadConfig({ port: 70000 }, {}), /port must be an integer/);
    });

    it('refuses invalid values in a file', () => {
      const bad = join(dir, 'bad-values.yaml');
      writeFileSync(bad, 'port: "x"\n');
      throwsConfig(() => loadConfig({ config: bad }, {}), /port must be an integer/);
      writeFileSync(bad, 'partitions: 0\n');
      throwsConfig(() => loadConfig({ config: bad }, {}), /partition count/);
      writeFileSync(bad, 'regions: eu\n');
      // A string in a file is a comma list, like the environment variable.
      assert.deepEqual(loadConfig({ config: bad }, {}).regions, ['eu']);
      writeFileSync(bad, 'regions: []\n');
      throwsConfig(() => loadConfig({ config: bad }, {}), /regions must be a list/);
      writeFileSync(bad, 'databaseUrl: "sqlite:///tmp/x"\n');
      throwsConfig(() => loadConfig({ config: bad }, {}), /DATABASE_URL must be a postgres/);
    });

    it('refuses an unknown key in the file, naming it', () => {
      const f = join(dir, 'unknown-key.yaml');
      writeFileSync(f, 'port: 8080\nprot: 9090\n');
      throwsConfig(() => loadConfig({ config: f }, {}), /unknown key "prot"/);
    });

    it('refuses secrets in the file (they belong in the environment)', () => {
      const f = join(dir, 'secrets.json');
      writeFileSync(f, JSON.stringify({ jwtSecret: 'x'.repeat(40) }));
      throwsConfig(() => loadConfig({ config: f }, {}), /unknown key "jwtSecret"/);
      writeFileSync(f, JSON.stringify({ operatorToken: 'bho_x' }));
      throwsConfig(() => loadConfig({ config: f }, {}), /unknown key "operatorToken"/);
    });

    it('refuses an unreadable file, naming it and how it was chosen', () => {
      const missing = join(dir, 'does-not-exist.yaml');
      throwsConfig(() => loadConfig({ config: missing }, {}), /cannot be read; check BULKHEAD_CONFIG or --config/);
      throwsConfig(() => loadConfig({}, { BULKHEAD_CONFIG: missing }), /does-not-exist\.yaml cannot be read/);
      // A directory cannot be read as a file either.
      throwsConfig(() => loadConfig({ config: dir }, {}), /cannot be read/);
    });

    it('refuses a file that is not YAML/JSON or not a mapping', () => {
      const f = join(dir, 'broken.yaml');
      writeFileSync(f, 'port: [8080\n');
      throwsConfig(() => loadConfig({ config: f }, {}), /is not valid YAML or JSON/);
      writeFileSync(f, '- port\n- host\n');
      throwsConfig(() => loadConfig({ config: f }, {}), /must hold a mapping/);
    });

    it('an empty file means no settings', () => {
      const f = join(dir, 'empty.yaml');
      writeFileSync(f, '');
      assert.equal(loadConfig({ config: f }, {}).port, 8080);
    });
  });

  describe('resolveJwtSecret', () => {
    const configIn = (dataDir: string, env: Record<string, string> = {}): Config => loadConfig({ dataDir }, env);

    it('uses BULKHEAD_JWT_SECRET when set, and writes no file', () => {
      const d = mkdtempSync(join(dir, 'jwt-env-'));
      const secret = randomBytes(32).toString('base64url');
      let calls = 0;
      const got = resolveJwtSecret(configIn(d, { BULKHEAD_JWT_SECRET: secret }), () => {
        calls++;
        return randomBytes(32);
      });
      assert.deepEqual(Buffer.from(got), Buffer.from(secret));
      assert.equal(calls, 0);
      assert.throws(() => statSync(join(d, 'jwt-secret')), { code: 'ENOENT' });
    });

    it('generates a secret once into a 0600 file, then reuses it', () => {
      const d = join(dir, 'jwt-gen', 'nested');
      let calls = 0;
      const generate = () => {
        calls++;
        return new Uint8Array(randomBytes(32));
      };
      const first = resolveJwtSecret(configIn(d), generate);
      assert.equal(calls, 1);
      assert.equal(first.length, 32);
      const file = join(d, 'jwt-secret');
      assert.equal(statSync(file).mode & 0o777, 0o600);
      assert.deepEqual(Buffer.from(readFileSync(file, 'utf8').trim(), 'base64url'), Buffer.from(first));
      const second = resolveJwtSecret(configIn(d), generate);
      assert.equal(calls, 1, 'the kept secret is reused, not generated again');
      assert.deepEqual(Buffer.from(second), Buffer.from(first));
    });

    it('refuses a secret file others can read (mode 0644)', () => {
      const d = mkdtempSync(join(dir, 'jwt-mode-'));
      resolveJwtSecret(configIn(d), () => new Uint8Array(randomBytes(32)));
      chmodSync(join(d, 'jwt-secret'), 0o644);
      throwsConfig(
        () => resolveJwtSecret(configIn(d), () => new Uint8Array(randomBytes(32))),
        /jwt-secret is readable by others \(mode 644\); run chmod 600 on it/,
      );
      chmodSync(join(d, 'jwt-secret'), 0o640);
      throwsConfig(() => resolveJwtSecret(configIn(d), () => new Uint8Array(randomBytes(32))), /readable by others/);
    });

    it('refuses a secret file holding less than 32 bytes', () => {
      const d = mkdtempSync(join(dir, 'jwt-short-'));
      mkdirSync(d, { recursive: true });
      writeFileSync(join(d, 'jwt-secret'), `${randomBytes(16).toString('base64url')}\n`, { mode: 0o600 });
      let calls = 0;
      throwsConfig(
        () =>
          resolveJwtSecret(configIn(d), () => {
            calls++;
            return new Uint8Array(randomBytes(32));
          }),
        /does not hold a secret of at least 32 bytes/,
      );
      assert.equal(calls, 0, 'a bad file is refused, not silently replaced');
    });
  });

  describe('TLS settings', () => {
    it('unset by default; flag over environment over file, paths resolved', () => {
      const c = loadConfig({}, {});
      assert.equal(c.tlsCert, undefined);
      assert.equal(c.tlsKey, undefined);
      const f = join(dir, 'tls.yaml');
      writeFileSync(f, 'tlsCert: file.crt\ntlsKey: file.key\n');
      const fromFile = loadConfig({ config: f }, {});
      assert.deepEqual([fromFile.tlsCert, fromFile.tlsKey], [resolve('file.crt'), resolve('file.key')]);
      const fromEnv = loadConfig({ config: f }, { BULKHEAD_TLS_CERT: '/etc/env.crt', BULKHEAD_TLS_KEY: '/etc/env.key' });
      assert.deepEqual([fromEnv.tlsCert, fromEnv.tlsKey], ['/etc/env.crt', '/etc/env.key']);
      const fromFlags = loadConfig({ config: f, tlsCert: '/etc/flag.crt', tlsKey: '/etc/flag.key' }, { BULKHEAD_TLS_CERT: '/etc/env.crt', BULKHEAD_TLS_KEY: '/etc/env.key' });
      assert.deepEqual([fromFlags.tlsCert, fromFlags.tlsKey], ['/etc/flag.crt', '/etc/flag.key']);
      assert.equal(readTlsCredentials(c), undefined, 'no files, no HTTPS');
    });

    it('a certificate without a key, or a key without a certificate, wherever set, names the missing one', () => {
      throwsConfig(() => loadConfig({}, { BULKHEAD_TLS_CERT: '/etc/x.crt' }), /no key: set --tls-key \(BULKHEAD_TLS_KEY, tlsKey\)/);
      throwsConfig(() => loadConfig({}, { BULKHEAD_TLS_KEY: '/etc/x.key' }), /no certificate: set --tls-cert \(BULKHEAD_TLS_CERT, tlsCert\)/);
      const f = join(dir, 'tls-half.json');
      writeFileSync(f, JSON.stringify({ tlsKey: 'x.key' }));
      throwsConfig(() => loadConfig({ config: f }, {}), /no certificate/);
      // Split across sources is fine: the pair is what counts.
      assert.equal(loadConfig({ config: f, tlsCert: '/etc/flag.crt' }, {}).tlsKey, resolve('x.key'));
      writeFileSync(f, JSON.stringify({ tlsCert: '', tlsKey: 'x.key' }));
      throwsConfig(() => loadConfig({ config: f }, {}), /the TLS certificate \(--tls-cert, BULKHEAD_TLS_CERT\) must be a non-empty string/);
    });

    it('readTlsCredentials: an unreadable file is CONFIG_INVALID naming the file', () => {
      const c = loadConfig({ tlsCert: join(dir, 'none.crt'), tlsKey: join(dir, 'none.key') }, {});
      throwsConfig(() => readTlsCredentials(c), /the TLS certificate file \(--tls-cert, BULKHEAD_TLS_CERT\) .*none\.crt cannot be read/);
    });
  });
});
