import { X509Certificate, createPrivateKey, type KeyObject } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { chmodSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { BulkheadError } from './errors.js';
import { PLACE_NAME } from './placement/tier.js';
import { parseKmsSettings, type KmsSettings } from './crypto/kms-config.js';
import { CLASSIFICATIONS, DEFAULT_ENCRYPTED_CLASSIFICATIONS, type Classification } from './tenancy/fields.js';

/** Bulkhead's configuration, resolved and frozen. A flag wins over the environment, the environment over the file. */
export interface Config {
  readonly port: number;
  readonly host: string;
  /** Data directory: the embedded store (when no `databaseUrl`) and the generated JWT secret. */
  readonly dataDir: string;
  /** PostgreSQL 15+ URL; unset means the embedded store in `dataDir`. */
  readonly databaseUrl: string | undefined;
  /** `BULKHEAD_OPERATOR_TOKEN`: an operator token accepted in addition to those stored (hashed). */
  readonly operatorToken: string | undefined;
  /** HS256 secret for tenant tokens (`BULKHEAD_JWT_SECRET`, or generated and kept in the data directory). */
  readonly jwtSecret: string | undefined;
  /** JWKS URL of the platform's identity provider; when set, tenant tokens are verified against it. */
  readonly jwksUrl: string | undefined;
  readonly jwtIssuer: string;
  readonly jwtAudience: string;
  /** Modulus of the hash partitioning of tenant tables; fixed when the schema is created. */
  readonly partitions: number;
  /** Regions this deployment serves; the first is the default for new tenants. */
  readonly regions: readonly string[];
  /**
   * Storage cells; the first holds the control plane (tenant registry, placement directory, moves).
   * Without a `cells` setting: one cell named `local` in the first region, on `databaseUrl` or in
   * `<dataDir>/store`.
   */
  readonly cells: readonly CellConfig[];
  readonly ownerRole: string;
  readonly appRole: string;
  /** Largest request body, in bytes. */
  readonly bodyLimit: number;
  /** Connections in the PostgreSQL pool. */
  readonly poolSize: number;
  /** Rows per batch when a tenant move copies its data (`BULKHEAD_MOVE_BATCH_SIZE`). */
  readonly moveBatchSize: number;
  /**
   * How long a process trusts a tenant's placement directory entry, in ms (`BULKHEAD_PLACEMENT_CACHE_MS`,
   * default 5,000). A move removes its source this long after the switch, when every process has
   * seen the new placement.
   */
  readonly placementCacheMs: number;
  /**
   * How long a process keeps a tenant's unwrapped data keys, in ms (`BULKHEAD_KEY_CACHE_MS`, default
   * 300,000). A rotation destroys the old data key only this long after it retired it, once no
   * process can still encrypt under it.
   */
  readonly keyCacheMs: number;
  /** Records per batch when a key rotation re-encrypts a tenant's data (`BULKHEAD_ROTATION_BATCH_SIZE`, default 500). */
  readonly rotationBatchSize: number;
  /**
   * Default grace period of `tenants erase`, in seconds (`BULKHEAD_ERASE_GRACE_SECONDS`, default
   * 604,800: 7 days, like a KMS's scheduled key deletion). A request may name its own.
   */
  readonly eraseGraceSeconds: number;
  /** Events of one audit chain after which its head is checkpointed to the witness (`BULKHEAD_AUDIT_CHECKPOINT_EVENTS`, default 1,000). */
  readonly auditCheckpointEvents: number;
  /** Longest wait of a chain's new events for a checkpoint, in ms (`BULKHEAD_AUDIT_CHECKPOINT_MS`, default 60,000). */
  readonly auditCheckpointMs: number;
  /** The witness directory of signed checkpoints (`BULKHEAD_AUDIT_WITNESS_DIR`, default `<dataDir>/audit-witness`); keep it where database administrators cannot write. */
  readonly auditWitnessDir: string;
  /** Days audit events are kept (`BULKHEAD_AUDIT_RETENTION_DAYS`, default 365, PCI DSS 10.5.1); older ones are pruned behind a signed anchor. */
  readonly auditRetentionDays: number;
  /** The key-encryption keys' provider (`BULKHEAD_KMS_PROVIDER`, `kms` in the file; see docs/encryption.md). */
  readonly kms: KmsSettings;
  /**
   * Classifications whose fields are encrypted (`BULKHEAD_ENCRYPTED_CLASSIFICATIONS`, comma-separated,
   * or `none`; default confidential, pii, phi, pci). Settled per field when a collection is defined.
   */
  readonly encryptedClassifications: readonly Classification[];
  readonly logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
  /**
   * PEM certificate (chain) file to serve HTTPS with (`--tls-cert`, `BULKHEAD_TLS_CERT`); set
   * together with `tlsKey` or not at all. Unset: plain HTTP, for TLS terminated by a proxy.
   */
  readonly tlsCert: string | undefined;
  /** PEM private key file of `tlsCert` (`--tls-key`, `BULKHEAD_TLS_KEY`). */
  readonly tlsKey: string | undefined;
}

/**
 * One storage cell: a PostgreSQL server (`databaseUrl`) or an embedded data directory (`dataDir`),
 * tagged with the region whose data it may hold. Silo tenants of a cell get their own database on
 * the cell's server, or their own directory under its data directory.
 */
export interface CellConfig {
  readonly name: string;
  readonly region: string;
  readonly databaseUrl?: string;
  readonly dataDir?: string;
}

/** Flags from the command line (`bulkhead serve --port ...`). */
export interface ConfigFlags {
  readonly port?: string | number;
  readonly host?: string;
  readonly dataDir?: string;
  readonly config?: string;
  readonly tlsCert?: string;
  readonly tlsKey?: string;
}

/**
 * The default number of PostgreSQL connections per database: twice the CPUs, at least 4 and at
 * most 32. Each connection keeps its own plans and catalog caches for every schema it serves, so
 * connections beyond what the CPUs can keep busy only make each bridge schema's first-use costs
 * more frequent (PostgreSQL plans a statement per connection): at 1,000 bridge tenants on 2 CPUs,
 * 4 connections read 2.3 times as fast as 10, and the pool tier lost nothing (bench/README.md,
 * "Fewer connections"). A database on other hardware than Bulkhead sets `BULKHEAD_POOL_SIZE`.
 */
export const DEFAULT_POOL_SIZE = Math.min(32, Math.max(4, 2 * availableParallelism()));

const DEFAULTS = {
  port: 8080,
  host: '127.0.0.1',
  dataDir: './.bulkhead',
  jwtIssuer: 'bulkhead',
  jwtAudience: 'bulkhead',
  partitions: 16,
  regions: ['local'],
  ownerRole: 'bulkhead_owner',
  appRole: 'bulkhead_app',
  bodyLimit: 1024 * 1024,
  poolSize: DEFAULT_POOL_SIZE,
  moveBatchSize: 2000,
  placementCacheMs: 5000,
  keyCacheMs: 300_000,
  rotationBatchSize: 500,
  eraseGraceSeconds: 604_800,
  auditCheckpointEvents: 1000,
  auditCheckpointMs: 60_000,
  auditRetentionDays: 365,
  logLevel: 'info',
} as const;

/** Longest grace period of an erasure: one year, in seconds. */
export const MAX_ERASE_GRACE_SECONDS = 31_536_000;

/** Keys a config file may hold (camelCase, as in `Config`). */
const FILE_KEYS = new Set([
  'port', 'host', 'dataDir', 'databaseUrl', 'jwksUrl', 'jwtIssuer', 'jwtAudience', 'partitions', 'regions',
  'ownerRole', 'appRole', 'bodyLimit', 'poolSize', 'logLevel', 'cells', 'moveBatchSize', 'placementCacheMs', 'keyCacheMs', 'rotationBatchSize', 'eraseGraceSeconds', 'auditCheckpointEvents', 'auditCheckpointMs', 'auditWitnessDir', 'auditRetentionDays', 'tlsCert', 'tlsKey', 'kms', 'encryptedClassifications',
]);


/** Parses `cells` (a list from the file, or JSON from BULKHEAD_CELLS) into checked cell settings. */
function parseCells(raw: unknown, regions: readonly string[]): CellConfig[] {
  let list = raw;
  if (typeof raw === 'string') {
    try {
      list = JSON.parse(raw);
    } catch {
      invalid('BULKHEAD_CELLS must be a JSON list such as [{"name":"eu-1","region":"eu","databaseUrl":"postgres://..."}]');
    }
  }
  if (!Array.isArray(list) || list.length === 0) invalid('cells must be a non-empty list of {name, region, databaseUrl | dataDir}');
  const names = new Set<string>();
  return list.map((item: unknown, i) => {
    if (typeof item !== 'object' || item === null || Array.isArray(item)) invalid(`cells[${i}] must be a mapping of name, region and databaseUrl or dataDir`);
    const c = item as Record<string, unknown>;
    for (const key of Object.keys(c)) {
      if (!['name', 'region', 'databaseUrl', 'dataDir'].includes(key)) invalid(`cells[${i}] has an unknown key "${key.slice(0, 40)}"`);
    }
    if (typeof c.name !== 'string' || !PLACE_NAME.test(c.name)) invalid(`cells[${i}].name must be a lower-case name such as eu-1`);
    if (names.has(c.name)) invalid(`cells[${i}].name "${c.name}" is used twice`);
    names.add(c.name);
    if (typeof c.region !== 'string' || !regions.includes(c.region)) invalid(`cells[${i}].region must be one of the regions (${regions.join(', ')})`);
    if ((c.databaseUrl === undefined) === (c.dataDir === undefined)) invalid(`cells[${i}] needs exactly one of databaseUrl and dataDir`);
    if (c.databaseUrl !== undefined && (typeof c.databaseUrl !== 'string' || !/^postgres(ql)?:\/\//.test(c.databaseUrl))) {
      invalid(`cells[${i}].databaseUrl must be a postgres:// URL`);
    }
    if (c.dataDir !== undefined && (typeof c.dataDir !== 'string' || c.dataDir.length === 0)) invalid(`cells[${i}].dataDir must be a directory`);
    return Object.freeze({
      name: c.name,
      region: c.region,
      ...(c.databaseUrl !== undefined ? { databaseUrl: c.databaseUrl as string } : { dataDir: resolve(c.dataDir as string) }),
    });
  });
}

function invalid(message: string): never {
  throw new BulkheadError('CONFIG_INVALID', message);
}

function int(value: unknown, name: string, min: number, max: number): number {
  const n = typeof value === 'string' && /^[0-9]+$/.test(value) ? Number(value) : value;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < min || n > max) invalid(`${name} must be an integer from ${min} to ${max}`);
  return n;
}

function str(value: unknown, name: string): string {
  if (typeof value !== 'string' || value.length === 0) invalid(`${name} must be a non-empty string`);
  return value;
}

/**
 * A deployment role name: at most 28 characters, so the per-tenant roles derived from it (the
 * name, a tier letter and the 32 hex digits of a tenant id) stay within PostgreSQL's 63 bytes.
 */
function role(value: unknown, name: string): string {
  const text = str(value, name);
  if (!/^[a-z_][a-z0-9_]{0,27}$/.test(text)) invalid(`${name} must be a lower-case identifier of at most 28 characters`);
  return text;
}

function readFile(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    invalid(`the config file ${path} cannot be read; check BULKHEAD_CONFIG or --config`);
  }
  let parsed: unknown;
  try {
    parsed = parseYaml(text);
  } catch {
    invalid(`the config file ${path} is not valid YAML or JSON`);
  }
  if (parsed === null || parsed === undefined) return {};
  if (typeof parsed !== 'object' || Array.isArray(parsed)) invalid(`the config file ${path} must hold a mapping`);
  for (const key of Object.keys(parsed)) {
    if (!FILE_KEYS.has(key)) invalid(`the config file ${path} has an unknown key "${key.slice(0, 40)}"`);
  }
  return parsed as Record<string, unknown>;
}

/**
 * Resolves the configuration from flags, the environment and an optional YAML/JSON file.
 * Secrets (operator token, JWT secret) come only from the environment or the data directory,
 * never from a file that may be committed.
 */
export function loadConfig(flags: ConfigFlags = {}, env: NodeJS.ProcessEnv = process.env): Config {
  const filePath = flags.config ?? env.BULKHEAD_CONFIG;
  const file = filePath ? readFile(filePath) : {};
  const pick = <T>(flag: T | undefined, envValue: string | undefined, fileValue: unknown, fallback: unknown): unknown =>
    flag ?? (envValue !== undefined && envValue !== '' ? envValue : undefined) ?? fileValue ?? fallback;

  const cellsRaw = pick(undefined, env.BULKHEAD_CELLS, file.cells, undefined);
  // Without a regions setting, the regions are those the cells name, in order of first appearance.
  const cellList = Array.isArray(cellsRaw) ? cellsRaw : typeof cellsRaw === 'string' ? safeJson(cellsRaw) : undefined;
  const cellRegions = Array.isArray(cellList)
    ? [...new Set(cellList.map((c) => (c as { region?: unknown } | null)?.region).filter((r): r is string => typeof r === 'string'))]
    : [];
  const regionsRaw = pick(undefined, env.BULKHEAD_REGIONS, file.regions, cellRegions.length > 0 ? cellRegions : DEFAULTS.regions);
  const regions = typeof regionsRaw === 'string' ? regionsRaw.split(',').map((r) => r.trim()) : Array.isArray(regionsRaw) ? [...regionsRaw] : regionsRaw;
  if (!Array.isArray(regions) || regions.length === 0 || !regions.every((r) => typeof r === 'string' && PLACE_NAME.test(r))) {
    invalid('regions must be a list of lower-case region names, e.g. BULKHEAD_REGIONS=eu,us');
  }
  const databaseUrl = pick(undefined, env.DATABASE_URL, file.databaseUrl, undefined);
  if (databaseUrl !== undefined && !/^postgres(ql)?:\/\//.test(String(databaseUrl))) {
    invalid('DATABASE_URL must be a postgres:// URL of a PostgreSQL 15+ server; leave it unset for the embedded store');
  }
  const jwtSecret = env.BULKHEAD_JWT_SECRET || undefined;
  if (jwtSecret !== undefined && Buffer.byteLength(jwtSecret) < 32) invalid('BULKHEAD_JWT_SECRET must be at least 32 bytes long');
  const logLevel = String(pick(undefined, env.BULKHEAD_LOG_LEVEL, file.logLevel, DEFAULTS.logLevel));
  if (!['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].includes(logLevel)) invalid('the log level must be one of fatal, error, warn, info, debug, trace, silent');
  const dataDir = resolve(str(pick(flags.dataDir, env.BULKHEAD_DATA_DIR, file.dataDir, DEFAULTS.dataDir), 'the data directory'));
  const tlsCert = optionalPath(pick(flags.tlsCert, env.BULKHEAD_TLS_CERT, file.tlsCert, undefined), 'the TLS certificate (--tls-cert, BULKHEAD_TLS_CERT)');
  const tlsKey = optionalPath(pick(flags.tlsKey, env.BULKHEAD_TLS_KEY, file.tlsKey, undefined), 'the TLS key (--tls-key, BULKHEAD_TLS_KEY)');
  // One without the other would leave the server either without HTTPS the operator asked for, or failing later.
  if (tlsCert !== undefined && tlsKey === undefined) invalid('a TLS certificate is set but no key: set --tls-key (BULKHEAD_TLS_KEY, tlsKey) too, or neither');
  if (tlsKey !== undefined && tlsCert === undefined) invalid('a TLS key is set but no certificate: set --tls-cert (BULKHEAD_TLS_CERT, tlsCert) too, or neither');
  const cells =
    cellsRaw === undefined
      ? [Object.freeze({ name: 'local', region: (regions as string[])[0]!, ...(databaseUrl !== undefined ? { databaseUrl: String(databaseUrl) } : { dataDir: join(dataDir, 'store') }) })]
      : parseCells(cellsRaw, regions as string[]);
  const config: Config = {
    port: int(pick(flags.port, env.PORT, file.port, DEFAULTS.port), 'the port', 0, 65535),
    host: str(pick(flags.host, env.HOST, file.host, DEFAULTS.host), 'the host'),
    dataDir,
    databaseUrl: databaseUrl === undefined ? undefined : String(databaseUrl),
    operatorToken: env.BULKHEAD_OPERATOR_TOKEN || undefined,
    jwtSecret,
    jwksUrl: (pick(undefined, env.BULKHEAD_JWKS_URL, file.jwksUrl, undefined) as string | undefined) || undefined,
    jwtIssuer: str(pick(undefined, env.BULKHEAD_JWT_ISSUER, file.jwtIssuer, DEFAULTS.jwtIssuer), 'the JWT issuer'),
    jwtAudience: str(pick(undefined, env.BULKHEAD_JWT_AUDIENCE, file.jwtAudience, DEFAULTS.jwtAudience), 'the JWT audience'),
    partitions: int(pick(undefined, env.BULKHEAD_PARTITIONS, file.partitions, DEFAULTS.partitions), 'the partition count', 1, 1024),
    regions: Object.freeze([...(regions as string[])]),
    cells: Object.freeze(cells),
    ownerRole: role(pick(undefined, env.BULKHEAD_OWNER_ROLE, file.ownerRole, DEFAULTS.ownerRole), 'the owner role'),
    appRole: role(pick(undefined, env.BULKHEAD_APP_ROLE, file.appRole, DEFAULTS.appRole), 'the application role'),
    bodyLimit: int(pick(undefined, env.BULKHEAD_BODY_LIMIT, file.bodyLimit, DEFAULTS.bodyLimit), 'the body limit', 1024, 64 * 1024 * 1024),
    poolSize: int(pick(undefined, env.BULKHEAD_POOL_SIZE, file.poolSize, DEFAULTS.poolSize), 'the pool size', 1, 1000),
    moveBatchSize: int(pick(undefined, env.BULKHEAD_MOVE_BATCH_SIZE, file.moveBatchSize, DEFAULTS.moveBatchSize), 'the move batch size', 10, 100_000),
    placementCacheMs: int(pick(undefined, env.BULKHEAD_PLACEMENT_CACHE_MS, file.placementCacheMs, DEFAULTS.placementCacheMs), 'the placement cache time', 0, 600_000),
    keyCacheMs: int(pick(undefined, env.BULKHEAD_KEY_CACHE_MS, file.keyCacheMs, DEFAULTS.keyCacheMs), 'the key cache time', 0, 86_400_000),
    rotationBatchSize: int(pick(undefined, env.BULKHEAD_ROTATION_BATCH_SIZE, file.rotationBatchSize, DEFAULTS.rotationBatchSize), 'the rotation batch size', 1, 10_000),
    eraseGraceSeconds: int(pick(undefined, env.BULKHEAD_ERASE_GRACE_SECONDS, file.eraseGraceSeconds, DEFAULTS.eraseGraceSeconds), 'the erase grace period', 0, MAX_ERASE_GRACE_SECONDS),
    auditCheckpointEvents: int(pick(undefined, env.BULKHEAD_AUDIT_CHECKPOINT_EVENTS, file.auditCheckpointEvents, DEFAULTS.auditCheckpointEvents), 'the audit checkpoint interval in events', 1, 10_000_000),
    auditCheckpointMs: int(pick(undefined, env.BULKHEAD_AUDIT_CHECKPOINT_MS, file.auditCheckpointMs, DEFAULTS.auditCheckpointMs), 'the audit checkpoint interval in ms', 100, 86_400_000),
    auditWitnessDir: resolve(str(pick(undefined, env.BULKHEAD_AUDIT_WITNESS_DIR, file.auditWitnessDir, join(dataDir, 'audit-witness')), 'the audit witness directory')),
    auditRetentionDays: int(pick(undefined, env.BULKHEAD_AUDIT_RETENTION_DAYS, file.auditRetentionDays, DEFAULTS.auditRetentionDays), 'the audit retention in days', 1, 36_500),
    logLevel: logLevel as Config['logLevel'],
    tlsCert,
    tlsKey,
    kms: parseKmsSettings(file.kms, env, { dataDir }),
    encryptedClassifications: classifications(pick(undefined, env.BULKHEAD_ENCRYPTED_CLASSIFICATIONS, file.encryptedClassifications, DEFAULT_ENCRYPTED_CLASSIFICATIONS)),
  };
  return Object.freeze(config);
}

function classifications(value: unknown): readonly Classification[] {
  const list = value === 'none' ? [] : typeof value === 'string' ? value.split(',').map((c) => c.trim()) : value;
  if (!Array.isArray(list) || !list.every((c) => (CLASSIFICATIONS as readonly unknown[]).includes(c))) {
    invalid(`BULKHEAD_ENCRYPTED_CLASSIFICATIONS (encryptedClassifications) must list classifications among ${CLASSIFICATIONS.join(', ')}, or be none`);
  }
  return Object.freeze([...new Set(list as Classification[])]);
}

function optionalPath(value: unknown, name: string): string | undefined {
  return value === undefined ? undefined : resolve(str(value, name));
}

/** The certificate and key `bulkhead serve` hands to the HTTPS server, read and checked. */
export interface TlsCredentials {
  /** The PEM certificate chain, leaf first. */
  readonly cert: Buffer;
  /** The PEM private key of the leaf certificate. */
  readonly key: Buffer;
}

/**
 * Reads `tlsCert` and `tlsKey` (undefined when neither is set) and checks them before the server
 * starts, so a wrong file fails `bulkhead serve` at once with a message naming the setting, rather
 * than every handshake later. Messages name the file, never its contents.
 */
export function readTlsCredentials(config: Config): TlsCredentials | undefined {
  if (config.tlsCert === undefined || config.tlsKey === undefined) return undefined;
  const cert = readTlsFile(config.tlsCert, 'the TLS certificate file (--tls-cert, BULKHEAD_TLS_CERT)');
  const key = readTlsFile(config.tlsKey, 'the TLS key file (--tls-key, BULKHEAD_TLS_KEY)');
  let leaf: X509Certificate;
  try {
    // The TLS stack takes PEM only; X509Certificate would also accept DER.
    if (!cert.includes('-----BEGIN CERTIFICATE-----')) throw new TypeError('not PEM');
    leaf = new X509Certificate(cert);
  } catch {
    invalid(`the TLS certificate file ${config.tlsCert} does not hold a PEM certificate`);
  }
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(key);
  } catch {
    invalid(`the TLS key file ${config.tlsKey} does not hold an unencrypted PEM private key`);
  }
  if (!leaf.checkPrivateKey(privateKey)) invalid(`the TLS key file ${config.tlsKey} is not the key of the certificate in ${config.tlsCert}`);
  return Object.freeze({ cert, key });
}

function readTlsFile(path: string, name: string): Buffer {
  try {
    return readFileSync(path);
  } catch {
    invalid(`${name} ${path} cannot be read`);
  }
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/**
 * The HS256 secret for tenant tokens: `BULKHEAD_JWT_SECRET`, or a random one generated on first
 * start and kept in `<dataDir>/jwt-secret` with mode 0600. A key file others can read is refused.
 */
export function resolveJwtSecret(config: Config, generate: () => Uint8Array): Uint8Array {
  if (config.jwtSecret) return new TextEncoder().encode(config.jwtSecret);
  const file = join(config.dataDir, 'jwt-secret');
  if (existsSync(file)) {
    const mode = statSync(file).mode & 0o777;
    if (mode & 0o077) invalid(`${file} is readable by others (mode ${mode.toString(8)}); run chmod 600 on it`);
    const text = readFileSync(file, 'utf8').trim();
    const bytes = Buffer.from(text, 'base64url');
    if (bytes.length < 32) invalid(`${file} does not hold a secret of at least 32 bytes; delete it to generate a new one`);
    return new Uint8Array(bytes);
  }
  mkdirSync(config.dataDir, { recursive: true });
  const secret = generate();
  writeFileSync(file, `${Buffer.from(secret).toString('base64url')}\n`, { mode: 0o600, flag: 'wx' });
  chmodSync(file, 0o600);
  return secret;
}
