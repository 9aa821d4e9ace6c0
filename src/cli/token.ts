import { InvalidArgumentError, type Command } from 'commander';
import { BulkheadClient, type CliIO, type GlobalOptions } from './client.js';
import { emit } from './output.js';
import { tenantPath } from './tenants.js';

/** Parses `--roles a,b`: a comma-separated, non-empty list (the server checks the names). */
export function parseRoles(value: string): string[] {
  const roles = value.split(',').map((r) => r.trim()).filter((r) => r.length > 0);
  if (roles.length === 0) throw new InvalidArgumentError('give at least one role, such as member or builder,viewer');
  return roles;
}

/** Parses a positive whole number of seconds. */
export function parseSeconds(value: string): number {
  if (!/^[0-9]{1,9}$/.test(value) || Number(value) < 1) throw new InvalidArgumentError('give a positive whole number of seconds');
  return Number(value);
}

/** A token minted by the server for a tenant. */
export interface MintedToken {
  readonly token: string;
  readonly expiresAt: string;
}

/**
 * Mints a tenant token with the operator token. The CLI uses it for short-lived tokens of its own
 * (`collections apply --tenant`), and `token mint` for development tokens.
 */
export function mintToken(
  client: BulkheadClient,
  tenant: string,
  body: { sub: string; roles: readonly string[]; ttlSeconds?: number },
): Promise<MintedToken> {
  return client.request<MintedToken>('POST', `${tenantPath(tenant)}/tokens`, body);
}

/** `bulkhead token mint`: a tenant token for development and tests (production tokens come from the identity provider). */
export function tokenCommand(parent: Command, io: CliIO): Command {
  const token = parent.command('token').description('tenant tokens for development and tests (operator token)');
  token
    .command('mint')
    .description('mint a tenant token and print it (with --json: {token, expiresAt})')
    .requiredOption('--tenant <tenant>', 'tenant id or slug')
    .requiredOption('--sub <subject>', 'subject: the user the token stands for')
    .requiredOption('--roles <roles>', 'comma-separated roles: tenant_admin, builder, member, viewer, auditor', parseRoles)
    .option('--ttl <seconds>', 'lifetime in seconds (server default 3600)', parseSeconds)
    .action(async (opts: { tenant: string; sub: string; roles: string[]; ttl?: number }, cmd: Command) => {
      const globals = cmd.optsWithGlobals<GlobalOptions>();
      const client = BulkheadClient.from(globals, io.env);
      const minted = await mintToken(client, opts.tenant, { sub: opts.sub, roles: opts.roles, ...(opts.ttl !== undefined ? { ttlSeconds: opts.ttl } : {}) });
      // Printing the token is this command's purpose; alone on its line so that $(bulkhead token mint ...) captures it.
      emit(io.stdout, globals.json, minted, () => `${minted.token}\n`);
    });
  return token;
}
