import { Command, CommanderError } from 'commander';
import { BulkheadError } from '../errors.js';
import { serve } from './serve.js';

/** Builds the `bulkhead` command line. */
export function program(): Command {
  const cli = new Command('bulkhead').description('The data plane for multi-tenant low-code platforms').exitOverride();
  cli
    .command('serve')
    .description('serve the HTTP API (embedded store unless DATABASE_URL is set)')
    .option('--port <n>', 'port to listen on (default 8080, env PORT)')
    .option('--host <h>', 'address to bind (default 127.0.0.1, env HOST)')
    .option('--data-dir <d>', 'data directory (default ./.bulkhead, env BULKHEAD_DATA_DIR)')
    .option('--config <file>', 'YAML or JSON configuration file (env BULKHEAD_CONFIG)')
    .action(async (opts: { port?: string; host?: string; dataDir?: string; config?: string }) => {
      await serve(opts);
    });
  return cli;
}

/** Runs the CLI; returns the exit code. Errors print one line and exit non-zero. */
export async function main(argv: readonly string[]): Promise<number> {
  try {
    await program().parseAsync([...argv]);
    return 0;
  } catch (error) {
    if (error instanceof CommanderError) return error.exitCode === 0 ? 0 : 2;
    const message = error instanceof BulkheadError ? `${error.code}: ${error.message}` : `error: ${(error as Error).message}`;
    process.stderr.write(`${message}\n`);
    return 1;
  }
}
