/** Assertions shared by the suites. */
import assert from 'node:assert/strict';
import { DatabaseError } from '../../src/errors.js';
import type { TestResponse } from './backends.js';

/**
 * Asserts that `promise` fails with a DatabaseError of SQLSTATE `sqlState` and, when `message` is
 * given, a server message matching it.
 */
export async function rejectsSql(promise: Promise<unknown>, sqlState: string, message?: RegExp, what = ''): Promise<void> {
  await assert.rejects(
    promise,
    (error: unknown) => {
      assert.ok(error instanceof DatabaseError, `${what}: expected a DatabaseError, got ${String(error)}`);
      assert.equal(error.sqlState, sqlState, `${what}: SQLSTATE`);
      if (message) assert.match(String((error.cause as Error).message), message, `${what}: message`);
      return true;
    },
    what || undefined,
  );
}

/** Asserts a problem+json answer with `status` and `code`. */
export function assertProblem(res: TestResponse, status: number, code: string, what = ''): void {
  assert.equal(res.status, status, `${what}: expected ${status} ${code}, got ${res.status} ${res.text}`);
  assert.match(String(res.headers['content-type']), /^application\/problem\+json/, what);
  assert.equal(res.body?.code, code, `${what}: ${res.text}`);
  assert.equal(res.body?.status, status, what);
}
