import { readFileSync } from 'node:fs';
import { Command, CommanderError } from 'commander';
import { BulkheadError } from '../errors.js';
import { CliError, DEFAULT_URL, oneLine, type CliIO } from './client.js';
import { collectionsCommand } from './collections.js';
import { keysCommand } from './keys.js';
import { auditCommand } from './audit.js';
import { serve } from './serve.js';
import { placementsCommand, tenantsCommand } from './tenants.js';
import { tokenCommand } from './token.js';
import { usageCommands } from './usage.js';

// Read at run time: package.json is two levels up from both src/cli/ and dist/cli/.
const VERSION = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

function processIO(): CliIO {
  return { stdout: process.stdout, stderr: process.stderr, env: process.env, cwd: process.cwd() };
}

/**
 * Builds the `bulkhead` command line. Every command but `serve` is a client of a running server
 * over HTTP: the embedded store's data directory can be opened by one process only.
 */
export function program(io: CliIO = processIO()): Command {
  const cli = new Command('bulkhead')
    .description('The data plane for multi-tenant low-code platforms')
    .version(VERSION, '-V, --version', 'print the version')
    .option('--url <url>', `server URL (env BULKHEAD_URL; default ${DEFAULT_URL})`)
    .option('--token <token>', 'bearer token (env BULKHEAD_TOKEN, then BULKHEAD_OPERATOR_TOKEN)')
    .option('--json', 'print machine-readable JSON instead of tables')
    // Set before any subcommand is added: .command() copies these settings into each one.
    .exitOverride()
    .configureOutput({ writeOut: (s) => void io.stdout.write(s), writeErr: (s) => void io.stderr.write(s) })
    .configureHelp({ showGlobalOptions: true })
    .showSuggestionAfterError(true);

  cli
    .command('serve')
    .description('serve the HTTP API (embedded store unless DATABASE_URL is set)')
    .option('--port <n>', 'port to listen on (default 8080, env PORT)')
    .option('--host <h>', 'address to bind (default 127.0.0.1, env HOST)')
    .option('--data-dir <d>', 'data directory (default ./.bulkhead, env BULKHEAD_DATA_DIR)')
    .option('--config <file>', 'YAML or JSON configuration file (env BULKHEAD_CONFIG)')
    .option('--tls-cert <file>', 'PEM certificate chain: serve HTTPS only, with HSTS (env BULKHEAD_TLS_CERT; needs --tls-key)')
    .option('--tls-key <file>', 'PEM private key of the certificate (env BULKHEAD_TLS_KEY; needs --tls-cert)')
    .action(async (opts: { port?: string; host?: string; dataDir?: string; config?: string; tlsCert?: string; tlsKey?: string }) => {
      await serve(opts, io.stdout);
    });
  const tenants = tenantsCommand(cli, io);
  tokenCommand(cli, io);
  collectionsCommand(cli, io);
  usageCommands(cli, tenants, io);
  placementsCommand(cli, io);
  keysCommand(cli, io);
  auditCommand(cli, io);
  return cli;
}

/**
 * Runs the CLI on `argv` (as `process.argv`: node, script, then arguments) and returns the exit
 * code: 0 on success, 1 when the operation failed (a problem from the server, an unreachable
 * server, an invalid schema), 2 on bad usage. Failures print one line to stderr. `io` replaces the
 * process's streams, environment and working directory (tests run the CLI in-process).
 */
export async function main(argv: readonly string[], io: Partial<CliIO> = {}): Promise<number> {
  const resolved: CliIO = { ...processIO(), ...io };
  try {
    await program(resolved).parseAsync([...argv]);
    return 0;
  } catch (error) {
    if (error instanceof CommanderError) {
      // Commander has printed its message or the help already; --help and --version end with exit code 0.
      return error.exitCode === 0 ? 0 : 2;
    }
    resolved.stderr.write(`${describe(error)}\n`);
    return error instanceof CliError ? error.exitCode : 1;
  }
}

/** One line for a failure: `error CODE: detail` when there is a stable code, `error: detail` otherwise. */
function describe(error: unknown): string {
  if (error instanceof CliError || error instanceof BulkheadError) {
    return `error${error.code ? ` ${error.code}` : ''}: ${oneLine(error.message)}`;
  }
  return `error: ${oneLine(error instanceof Error ? error.message : String(error))}`;
}
