/** Runs the `bulkhead` CLI in-process, as the CLI suites do. */
import { main } from '../../src/cli/main.js';

/** What one CLI run printed and its exit code. */
export interface Run {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs `bulkhead ...args` with `env` as its whole environment and `cwd` as its directory, capturing output. */
export async function runCli(args: readonly string[], env: Record<string, string>, cwd: string = process.cwd()): Promise<Run> {
  let stdout = '';
  let stderr = '';
  const code = await main(['node', 'bulkhead', ...args], {
    stdout: { write: (s: string) => (stdout += s) },
    stderr: { write: (s: string) => (stderr += s) },
    env,
    cwd,
  });
  return { code, stdout, stderr };
}
