/**
 * What the crash tests share (PGlite's `tests/crash-safety/` pattern: fork, SIGKILL mid-operation,
 * reopen, verify): the environment of a deployment the parent and its children open alike, and a
 * child process run to its end (or its kill).
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { generateOperatorToken } from '../../src/access/operator-tokens.js';
import type { TestDatabase } from './backends.js';

/** The configuration variables of a deployment on `db` with its data in `dataDir`; `extra` adds or overrides. */
export function crashEnv(db: TestDatabase, dataDir: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    BULKHEAD_DATA_DIR: dataDir,
    BULKHEAD_OPERATOR_TOKEN: generateOperatorToken(),
    BULKHEAD_OWNER_ROLE: db.ownerRole,
    BULKHEAD_APP_ROLE: db.appRole,
    BULKHEAD_PARTITIONS: '4',
    BULKHEAD_JWT_SECRET: randomBytes(32).toString('base64url'),
    BULKHEAD_LOG_LEVEL: 'silent',
    ...(db.url ? { DATABASE_URL: db.url } : {}),
    ...extra,
  };
}

/** Runs the TypeScript `script` as a child with `env` added; resolves with the signal that ended it (null: it exited). */
export function runChild(script: string, env: Record<string, string>): Promise<{ signal: NodeJS.Signals | null; code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', script], { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('exit', (code, signal) => resolve({ signal, code, stderr }));
  });
}
