/**
 * HTTPS: `bulkhead serve --tls-cert --tls-key` runs as a child process, as an operator would start
 * it, with a CA and a server certificate made by the test. It serves HTTPS only (TLS 1.2 or newer)
 * and every response carries HSTS; a TLS 1.1 client and a plain-HTTP client get no answer; a
 * certificate without its key, or a file that cannot be read or used, is CONFIG_INVALID before the
 * store opens.
 *
 * The store plays no part in TLS, so the server uses the embedded one whatever
 * BULKHEAD_TEST_BACKENDS says.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect, createServer as createTlsServer, type ConnectionOptions, type SecureVersion } from 'node:tls';
import { fileURLToPath } from 'node:url';
import { generateOperatorToken } from '../src/access/operator-tokens.js';
import { runCli } from './support/cli.js';
import { makeCa, makeServerCert, type TestCa, type TestServerCert } from './support/tls.js';

const ENTRY = fileURLToPath(new URL('../src/cli/entry.ts', import.meta.url));
const HSTS = 'max-age=31536000; includeSubDomains';

/** An HTTPS request to the server; resolves with status, headers and the server's certificate. */
function get(
  port: number,
  path: string,
  options: { ca?: string; token?: string } = {},
): Promise<{ status: number; headers: Record<string, unknown>; body: string; fingerprint: string; protocol: string | null }> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      { host: '127.0.0.1', port, path, method: 'GET', ...(options.ca ? { ca: options.ca } : {}), headers: options.token ? { authorization: `Bearer ${options.token}` } : {}, agent: false },
      (res) => {
        const socket = res.socket as import('node:tls').TLSSocket;
        const fingerprint = socket.getPeerCertificate().fingerprint256;
        const protocol = socket.getProtocol();
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (body += chunk));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body, fingerprint, protocol }));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

/** A TLS handshake limited to `[min, max]`; resolves with the protocol agreed, or the error code. */
function handshake(port: number, ca: string, min: SecureVersion, max: SecureVersion): Promise<{ protocol: string | null } | { error: string }> {
  return new Promise((resolve) => {
    // SECLEVEL=0: OpenSSL 3 refuses TLS 1.0 and 1.1 at its default level on the client side too.
    const options: ConnectionOptions = { host: '127.0.0.1', port, ca, minVersion: min, maxVersion: max, ciphers: 'DEFAULT@SECLEVEL=0' };
    const socket = tlsConnect(options, () => {
      const protocol = socket.getProtocol();
      socket.end();
      resolve({ protocol });
    });
    socket.on('error', (e: NodeJS.ErrnoException) => resolve({ error: e.code ?? e.message }));
  });
}

describe('HTTPS: bulkhead serve --tls-cert --tls-key', () => {
  let dir: string;
  let ca: TestCa;
  let server: TestServerCert;
  let child: ChildProcess;
  let port: number;
  let listening: Record<string, unknown>;
  const operatorToken = generateOperatorToken();

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'bulkhead-tls-'));
    ca = makeCa(dir, 'ca');
    server = makeServerCert(dir, 'server', ca, ['IP:127.0.0.1', 'DNS:localhost']);
    child = spawn(
      process.execPath,
      // --tls-min-v1.0 lowers Node's default floor (TLS 1.2): the server must hold 1.2 by its own setting.
      ['--tls-min-v1.0', '--import', 'tsx', ENTRY, 'serve', '--port', '0', '--host', '127.0.0.1', '--data-dir', join(dir, 'data'), '--tls-cert', server.cert, '--tls-key', server.key],
      { env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', BULKHEAD_OPERATOR_TOKEN: operatorToken }, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    listening = await new Promise((resolve, reject) => {
      let out = '';
      let err = '';
      const timer = setTimeout(() => reject(new Error(`the server did not start in 60 s; stderr: ${err}`)), 60_000);
      child.stderr!.on('data', (chunk: Buffer) => (err += chunk.toString()));
      child.stdout!.on('data', (chunk: Buffer) => {
        out += chunk.toString();
        for (const line of out.split('\n')) {
          if (!line.startsWith('{')) continue;
          const entry = JSON.parse(line) as Record<string, unknown>;
          if (entry.msg === 'listening') {
            clearTimeout(timer);
            resolve(entry);
          }
        }
      });
      child.on('exit', (code) => reject(new Error(`the server exited with ${code}; stderr: ${err}`)));
    });
    port = Number(new URL(String(listening.address)).port);
  });

  after(async () => {
    if (child && child.exitCode === null) {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    }
    rmSync(dir, { recursive: true, force: true });
  });

  it('says https in its start line; a client trusting the CA gets answers, each with HSTS', async () => {
    assert.match(String(listening.address), /^https:\/\/127\.0\.0\.1:\d+$/);
    assert.equal(listening.tls, true);

    const health = await get(port, '/healthz', { ca: readFileSync(ca.cert, 'utf8') });
    assert.equal(health.status, 200);
    assert.equal(JSON.parse(health.body).status, 'ok');
    assert.equal(health.headers['strict-transport-security'], HSTS);
    // The certificate the server presents is the one it was given.
    assert.equal(health.fingerprint, new X509Certificate(readFileSync(server.cert)).fingerprint256);

    // Every response: an authenticated route, a refused one, an unknown route, a malformed URL.
    const caPem = readFileSync(ca.cert, 'utf8');
    const listed = await get(port, '/v1/tenants', { ca: caPem, token: operatorToken });
    assert.equal(listed.status, 200, listed.body);
    const refused = await get(port, '/v1/tenants', { ca: caPem });
    assert.equal(refused.status, 401);
    const unknown = await get(port, '/no-such-route', { ca: caPem });
    assert.equal(unknown.status, 404);
    const malformed = await get(port, '/v1/tenants/%E0%A4%A', { ca: caPem, token: operatorToken });
    assert.equal(malformed.status, 400, malformed.body);
    for (const res of [listed, refused, unknown, malformed]) assert.equal(res.headers['strict-transport-security'], HSTS, `HSTS on ${res.status}`);
  });

  it('a client that does not trust the CA is refused by its own verification', async () => {
    await assert.rejects(get(port, '/healthz'), (error: NodeJS.ErrnoException) => {
      assert.equal(error.code, 'UNABLE_TO_VERIFY_LEAF_SIGNATURE');
      return true;
    });
  });

  it('TLS 1.2 and 1.3 are accepted, TLS 1.1 is refused (the same client reaches a server that allows 1.1)', async () => {
    const caPem = readFileSync(ca.cert, 'utf8');
    assert.deepEqual(await handshake(port, caPem, 'TLSv1.2', 'TLSv1.2'), { protocol: 'TLSv1.2' });
    assert.deepEqual(await handshake(port, caPem, 'TLSv1.3', 'TLSv1.3'), { protocol: 'TLSv1.3' });
    assert.deepEqual(await handshake(port, caPem, 'TLSv1', 'TLSv1.1'), { error: 'ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION' });

    // Control: the TLS 1.1 client works against a server that allows it, so the refusal is Bulkhead's.
    const lax = createTlsServer({ cert: readFileSync(server.cert), key: readFileSync(server.key), minVersion: 'TLSv1', ciphers: 'DEFAULT@SECLEVEL=0' }, (s) => s.end());
    await new Promise<void>((resolve) => lax.listen(0, '127.0.0.1', resolve));
    try {
      const laxPort = (lax.address() as import('node:net').AddressInfo).port;
      assert.deepEqual(await handshake(laxPort, caPem, 'TLSv1', 'TLSv1.1'), { protocol: 'TLSv1.1' });
    } finally {
      await new Promise<void>((resolve) => lax.close(() => resolve()));
    }
  });

  it('a plain-HTTP request to the port gets no HTTP answer and the connection is closed', async () => {
    const received = await new Promise<{ bytes: Buffer; closed: boolean }>((resolve, reject) => {
      const chunks: Buffer[] = [];
      const socket = netConnect({ host: '127.0.0.1', port }, () => {
        socket.write('GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n');
      });
      const timer = setTimeout(() => {
        socket.destroy();
        resolve({ bytes: Buffer.concat(chunks), closed: false });
      }, 10_000);
      socket.on('data', (chunk: Buffer) => chunks.push(chunk));
      socket.on('error', (e: NodeJS.ErrnoException) => (e.code === 'ECONNRESET' ? undefined : reject(e)));
      socket.on('close', () => {
        clearTimeout(timer);
        resolve({ bytes: Buffer.concat(chunks), closed: true });
      });
    });
    assert.equal(received.closed, true, 'the server closes the connection');
    assert.ok(!received.bytes.toString('latin1').includes('HTTP/'), `no HTTP answer: ${JSON.stringify(received.bytes.toString('latin1'))}`);
    assert.ok(!received.bytes.toString('latin1').includes('"status"'), 'no body either');
  });
});

describe('HTTPS settings that cannot work are CONFIG_INVALID before the store opens', () => {
  let dir: string;
  let server: TestServerCert;
  let other: TestServerCert;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'bulkhead-tls-config-'));
    const ca = makeCa(dir, 'ca');
    server = makeServerCert(dir, 'server', ca, ['IP:127.0.0.1']);
    other = makeServerCert(dir, 'other', ca, ['IP:127.0.0.1']);
  });
  after(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  /** `bulkhead serve` in-process with `flags`; asserts exit 1, one `error CONFIG_INVALID` line and no store. */
  async function refused(flags: string[], message: RegExp): Promise<string> {
    const data = join(dir, `data-${Math.random().toString(36).slice(2)}`);
    const run = await runCli(['serve', '--port', '0', '--data-dir', data, ...flags], {}, dir);
    assert.equal(run.code, 1, run.stderr);
    assert.equal(run.stdout, '');
    assert.match(run.stderr, /^error CONFIG_INVALID: .+\n$/);
    assert.match(run.stderr, message);
    assert.equal(existsSync(data), false, 'the store was not opened');
    return run.stderr;
  }

  it('a certificate without a key, or a key without a certificate, names the missing one', async () => {
    await refused(['--tls-cert', server.cert], /no key: set --tls-key/);
    await refused(['--tls-key', server.key], /no certificate: set --tls-cert/);
  });

  it('an unreadable file is named, without contents', async () => {
    await refused(['--tls-cert', join(dir, 'missing.crt'), '--tls-key', server.key], /TLS certificate file .*missing\.crt cannot be read/);
    await refused(['--tls-cert', server.cert, '--tls-key', join(dir, 'missing.key')], /TLS key file .*missing\.key cannot be read/);
    // A directory: exists, cannot be read as a file.
    await refused(['--tls-cert', server.cert, '--tls-key', dir], /TLS key file .* cannot be read/);
  });

  it('garbage, a certificate in the key file, or the key of another certificate are refused; no file content is echoed', async () => {
    const marker = 'MARKER-7f3a9c-not-a-pem';
    const garbage = join(dir, 'garbage.pem');
    writeFileSync(garbage, `-----BEGIN CERTIFICATE-----\n${marker}\n-----END CERTIFICATE-----\n`);
    const texts = [
      await refused(['--tls-cert', garbage, '--tls-key', server.key], /garbage\.pem does not hold a PEM certificate/),
      await refused(['--tls-cert', server.cert, '--tls-key', garbage], /garbage\.pem does not hold an unencrypted PEM private key/),
      await refused(['--tls-cert', server.key, '--tls-key', server.key], /does not hold a PEM certificate/),
      await refused(['--tls-cert', server.cert, '--tls-key', server.cert], /does not hold an unencrypted PEM private key/),
      await refused(['--tls-cert', server.cert, '--tls-key', other.key], /other\.key is not the key of the certificate/),
    ];
    const keyBody = readFileSync(server.key, 'utf8').split('\n')[1]!;
    for (const text of texts) {
      assert.ok(!text.includes(marker), 'no file content in the message');
      assert.ok(!text.includes(keyBody), 'no key material in the message');
    }
  });
});
