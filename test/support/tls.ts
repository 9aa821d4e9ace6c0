/**
 * Certificates made in the test with the `openssl` command: a throw-away CA and server
 * certificates it signs, with exactly the subject alternative names a test asks for. Nothing is
 * committed; every run makes its own keys (EC P-256: quick to generate).
 */
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';

/** A CA: its certificate and key files. */
export interface TestCa {
  readonly cert: string;
  readonly key: string;
}

/** A server certificate and its key, signed by a `TestCa`. */
export interface TestServerCert {
  readonly cert: string;
  readonly key: string;
}

function openssl(args: readonly string[]): void {
  execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

/** Makes a self-signed CA named `name` in `dir`. */
export function makeCa(dir: string, name: string): TestCa {
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  openssl([
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert,
    '-days', '2', '-subj', `/CN=Bulkhead test CA ${name}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  return { cert, key };
}

/**
 * Makes a server certificate signed by `ca` for `altNames` (e.g. `['IP:127.0.0.1', 'DNS:localhost']`);
 * its common name is the first name, which verifiers ignore when the certificate has alternative names.
 */
export function makeServerCert(dir: string, name: string, ca: TestCa, altNames: readonly string[]): TestServerCert {
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  const csr = join(dir, `${name}.csr`);
  const ext = join(dir, `${name}.ext`);
  openssl(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', csr, '-subj', `/CN=${altNames[0]!.replace(/^[A-Z]+:/, '')}`]);
  writeFileSync(ext, `basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=${altNames.join(',')}\n`);
  openssl(['x509', '-req', '-in', csr, '-CA', ca.cert, '-CAkey', ca.key, '-CAcreateserial', '-out', cert, '-days', '2', '-extfile', ext]);
  return { cert, key };
}
