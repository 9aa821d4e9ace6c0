/**
 * What every benchmark needs besides its own measurement: checked command-line integers, the
 * PostgreSQL server it may use (on this machine only: a benchmark measures one host), bounded
 * concurrency for setting up, and the figures it prints (means, nearest-rank percentiles, numbers
 * formatted alike in every table), and a throw-away deployment to measure.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { generateOperatorToken } from '../src/access/operator-tokens.js';
import { createBenchDatabase, type BenchDatabase } from './dataset.js';
import type { Cleanup } from './isolation.bench.js';

/** The default server of every benchmark: the local PostgreSQL with trust authentication. */
const DEFAULT_ADMIN_URL = 'postgres://postgres@127.0.0.1:5432/postgres';
const LOCAL_HOSTS = new Set(['127.0.0.1', 'localhost', '::1', '[::1]']);

/** `value` (a command-line option) as an integer of at least `min`; `fallback` when absent; a clear error otherwise. */
export function positiveInt(value: string | undefined, fallback: number, name: string, min = 1): number {
  if (value === undefined) return fallback;
  if (!/^[0-9]+$/.test(value) || Number(value) < min) throw new Error(`--${name} must be an integer of at least ${min}`);
  return Number(value);
}

/**
 * The superuser URL of the PostgreSQL server the benchmark creates its throw-away databases on:
 * BULKHEAD_BENCH_DATABASE_URL, or the local server. Refused when it names another host: the load
 * goes to 127.0.0.1 only, and the CPU accounting reads this machine's processes.
 */
export function benchAdminUrl(): string {
  const url = process.env.BULKHEAD_BENCH_DATABASE_URL || DEFAULT_ADMIN_URL;
  if (!LOCAL_HOSTS.has(new URL(url).hostname)) {
    throw new Error('BULKHEAD_BENCH_DATABASE_URL must name a server on this machine (127.0.0.1): the benchmark measures one host');
  }
  return url;
}

/** A logger to stderr that prefixes each line with the benchmark's name and the UTC time. */
export function benchLog(name: string): (message: string) => void {
  return (message) => console.error(`[${name} ${new Date().toISOString().slice(11, 19)}] ${message}`);
}

/** An integer with thousands separators. */
export const fmtInt = (n: number): string => Math.round(n).toLocaleString('en-US');

/** Milliseconds with three significant digits at most (0.00 to 999). */
export const fmtMs = (n: number): string => (n >= 100 ? n.toFixed(0) : n >= 10 ? n.toFixed(1) : n.toFixed(2));

/** The arithmetic mean (NaN for no values). */
export const mean = (xs: readonly number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;

/** Nearest-rank percentile (NaN for no values). */
export function percentile(xs: readonly number[], p: number): number {
  if (xs.length === 0) return NaN;
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

/** Runs `fn` over 0..count-1 with at most `limit` in flight. */
export async function eachLimit(count: number, limit: number, fn: (index: number) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < count) await fn(next++);
  };
  await Promise.all(Array.from({ length: Math.min(limit, count) }, worker));
}

/** A throw-away deployment for a benchmark: its database and the environment its loader and server share. */
export interface BenchDeployment {
  readonly db: BenchDatabase;
  readonly env: Record<string, string>;
}

/**
 * Creates a throw-away database and data directory (removed by `cleanup`) and the environment of a
 * deployment on them with the local KMS: the master key is 32 random bytes made here and passed
 * through the environment only; the operator token and JWT secret are made here too.
 */
export async function createDeployment(adminUrl: string, cleanup: Cleanup, settings: { readonly partitions: number; readonly poolSize: number }): Promise<BenchDeployment> {
  const db = await createBenchDatabase(adminUrl);
  cleanup.add(() => db.drop());
  const env: Record<string, string> = {
    DATABASE_URL: db.url,
    // One directory for the loader and the server (the database's): the audit signing key and witness, the local KMS state.
    BULKHEAD_DATA_DIR: db.dataDir,
    BULKHEAD_OPERATOR_TOKEN: generateOperatorToken(),
    BULKHEAD_OWNER_ROLE: db.ownerRole,
    BULKHEAD_APP_ROLE: db.appRole,
    BULKHEAD_PARTITIONS: String(settings.partitions),
    BULKHEAD_POOL_SIZE: String(settings.poolSize),
    BULKHEAD_JWT_SECRET: randomBytes(32).toString('base64url'),
    // Made for this run, passed only through the environment, gone with it.
    BULKHEAD_KMS_PROVIDER: 'local',
    BULKHEAD_MASTER_KEY: randomBytes(32).toString('base64'),
    BULKHEAD_LOG_LEVEL: 'silent',
  };
  return { db, env };
}

/** `VACUUM ANALYZE` of the database at `url` (fresh statistics before measuring); returns the seconds it took. */
export async function vacuumAnalyze(url: string): Promise<number> {
  const t0 = performance.now();
  const admin = new pg.Client({ connectionString: url });
  await admin.connect();
  try {
    await admin.query('VACUUM ANALYZE');
  } finally {
    await admin.end();
  }
  return (performance.now() - t0) / 1000;
}
