import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { BulkheadError } from '../../errors.js';

/**
 * libpq's SSL parameters for `pg` connection strings.
 *
 * `pg` (through pg-connection-string 2.x) reads `sslmode`, `sslrootcert`, `sslcert` and `sslkey`,
 * but by default treats `prefer`, `require` and `verify-ca` as `verify-full`, takes the CAs Node.js
 * trusts when `sslrootcert` is missing, reads `PGSSLMODE` with those same aliases, ignores
 * `PGSSLROOTCERT`, and silently drops parameters it does not know (`sslcrl`, ...). With
 * `uselibpqcompat=true` it gives `disable`, `require`, `verify-ca` and `verify-full` libpq's
 * meaning. So a connection string is rewritten here to that form, after refusing what `pg`
 * cannot do as libpq would:
 *
 * - `verify-full`: the server certificate must chain to `sslrootcert` and name the host;
 *   `verify-ca`: it must chain to `sslrootcert`; both need `sslrootcert` (libpq would look in
 *   `~/.postgresql/root.crt`, which Bulkhead does not read). `sslrootcert=system` (libpq 16) means
 *   the CAs Node.js trusts, and only with `verify-full`.
 * - `require`: encrypted, certificate unchecked, unless `sslrootcert` is given (then as `verify-ca`).
 * - `disable`: no TLS.
 * - `allow` and `prefer` fall back to an unencrypted connection, which `pg` cannot do: refused.
 * - No `sslmode` (and no `PGSSLMODE`): no TLS, as before; libpq's default would be `prefer`.
 *
 * `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT` and `PGSSLKEY` fill parameters the string leaves
 * out, as in libpq. Errors are CONFIG_INVALID and never quote the connection string (it may hold a
 * password); they name parameters and files.
 */
export function libpqSslConnectionString(connectionString: string, env: NodeJS.ProcessEnv = process.env): string {
  const hash = connectionString.indexOf('#');
  const beforeHash = hash < 0 ? connectionString : connectionString.slice(0, hash);
  const question = beforeHash.indexOf('?');
  const base = question < 0 ? beforeHash : beforeHash.slice(0, question);
  const params = new URLSearchParams(question < 0 ? '' : beforeHash.slice(question + 1));

  for (const key of params.keys()) {
    if (PG_ONLY.has(key)) invalid(`the database URL parameter ${key} is specific to the node-postgres driver; use sslmode (disable, require, verify-ca or verify-full) instead`);
    if ((key.startsWith('ssl') || key === 'requiressl') && !SUPPORTED.has(key)) {
      invalid(`the database URL parameter ${key.slice(0, 40)} is not supported; Bulkhead supports sslmode, sslrootcert, sslcert, sslkey and sslnegotiation`);
    }
    if (params.getAll(key).length > 1) invalid(`the database URL gives ${key.slice(0, 40)} more than once`);
  }
  for (const [key, variable] of ENVIRONMENT) {
    const value = env[variable];
    if (!params.has(key) && value) params.set(key, value);
  }

  const rootCert = params.get('sslrootcert') ?? undefined;
  const mode = params.get('sslmode') ?? (rootCert === 'system' ? 'verify-full' : undefined);
  if (mode === undefined) {
    if (params.has('sslrootcert') || params.has('sslcert') || params.has('sslkey')) {
      invalid('the database URL names SSL files but no sslmode; set sslmode=verify-full (or verify-ca, require, disable)');
    }
    // Nothing asked for TLS: the string is left as it was (pg then connects without TLS).
    return connectionString;
  }
  switch (mode) {
    case 'disable':
      // libpq does not read the files when TLS is off; pg would.
      for (const key of ['sslrootcert', 'sslcert', 'sslkey']) params.delete(key);
      break;
    case 'require':
    case 'verify-ca':
    case 'verify-full':
      if (rootCert === 'system') {
        if (mode !== 'verify-full') invalid(`sslrootcert=system needs sslmode=verify-full, not ${mode}: a public CA signs certificates for anyone's servers`);
        // Without a CA of its own, Node.js verifies against the CAs it trusts.
        params.delete('sslrootcert');
      } else if (rootCert !== undefined) {
        checkCertificateFile(rootCert);
      } else if (mode !== 'require') {
        invalid(`sslmode=${mode} needs sslrootcert=<file of the CA that signed the server certificate> (or sslrootcert=system with verify-full)`);
      }
      checkClientCertificate(params);
      break;
    case 'allow':
    case 'prefer':
      invalid(`sslmode=${mode} may fall back to an unencrypted connection, which the PostgreSQL driver cannot do; use sslmode=verify-full, verify-ca, require or disable`);
    default:
      invalid('sslmode must be disable, require, verify-ca or verify-full');
  }
  params.set('sslmode', mode);
  params.set('uselibpqcompat', 'true');
  return `${pgEncoded(base)}?${serialize(params)}${hash < 0 ? '' : connectionString.slice(hash)}`;
}

/** What Bulkhead passes on to pg; other `ssl*` parameters (sslcrl, sslpassword, ...) would be ignored by pg. */
const SUPPORTED = new Set(['sslmode', 'sslrootcert', 'sslcert', 'sslkey', 'sslnegotiation']);
/** pg's own parameters, whose SSL meaning differs from libpq's. */
const PG_ONLY = new Set(['ssl', 'uselibpqcompat']);
/** The environment variables libpq reads for parameters a connection string leaves out. */
const ENVIRONMENT = [
  ['sslmode', 'PGSSLMODE'],
  ['sslrootcert', 'PGSSLROOTCERT'],
  ['sslcert', 'PGSSLCERT'],
  ['sslkey', 'PGSSLKEY'],
] as const;

function checkCertificateFile(path: string): void {
  let pem: string;
  try {
    pem = readFileSync(path, 'utf8');
  } catch {
    invalid(`sslrootcert ${path} cannot be read`);
  }
  try {
    if (!pem.includes('-----BEGIN CERTIFICATE-----')) throw new TypeError('not PEM');
    new X509Certificate(pem);
  } catch {
    invalid(`sslrootcert ${path} does not hold a PEM certificate`);
  }
}

function checkClientCertificate(params: URLSearchParams): void {
  const cert = params.get('sslcert');
  const key = params.get('sslkey');
  if ((cert === null) !== (key === null)) invalid('sslcert and sslkey go together: set both for a client certificate, or neither');
  for (const [name, path] of [['sslcert', cert], ['sslkey', key]] as const) {
    if (path === null) continue;
    try {
      readFileSync(path);
    } catch {
      invalid(`${name} ${path} cannot be read`);
    }
  }
}

/**
 * pg-connection-string re-encodes a whole string holding a space or a stray `%` (say in a
 * password) with `encodeURI`, then restores only the escapes of two decimal digits: an escaped
 * `+` or `/` in the query (`%2B`, `%2F`) would come back doubled and name another file. The part
 * before the query gets that treatment here, as pg would give it, so the rewritten string never
 * matches and the query's escapes reach pg's URL parser as they are.
 */
const PG_NEEDS_ENCODING = / |%[^a-f0-9]|%[a-f0-9][^a-f0-9]/i;

function pgEncoded(text: string): string {
  return PG_NEEDS_ENCODING.test(text) ? encodeURI(text).replace(/%25(\d\d)/g, '%$1') : text;
}

/** Writes parameters back, escaped; `/` stays readable (it needs no escape in a query). */
function serialize(params: URLSearchParams): string {
  const escape = (text: string) => encodeURIComponent(text).replace(/%2F/g, '/');
  return [...params].map(([k, v]) => `${escape(k)}=${escape(v)}`).join('&');
}

function invalid(message: string): never {
  throw new BulkheadError('CONFIG_INVALID', message);
}
