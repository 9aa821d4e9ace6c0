import type { Command } from 'commander';
import type { TenantHistoryEntry, TenantView } from '../tenancy/tenants.js';
import { BulkheadClient, type CliIO, type GlobalOptions } from './client.js';
import { emit, keyValues, printable, table } from './output.js';

/** The path of one tenant; the server accepts an id or a slug. */
export function tenantPath(idOrSlug: string): string {
  return `/v1/tenants/${encodeURIComponent(idOrSlug)}`;
}

function describeTenant(t: TenantView): string {
  return keyValues([
    ['id', t.id],
    ['slug', t.slug],
    ['name', t.name],
    ['status', t.status],
    ['tier', t.tier],
    ['region', t.region],
    ['created', t.createdAt],
    ['updated', t.updatedAt],
  ]);
}

/** `bulkhead tenants ...`: the tenant registry, with the operator token. */
export function tenantsCommand(parent: Command, io: CliIO): Command {
  // Created with parent.command() so that it inherits the program's output and exit settings.
  const tenants = parent.command('tenants').description('create, list, inspect, suspend and resume tenants (operator token)');
  const client = (cmd: Command) => BulkheadClient.from(cmd.optsWithGlobals<GlobalOptions>(), io.env);
  const json = (cmd: Command) => cmd.optsWithGlobals<GlobalOptions>().json;

  tenants
    .command('create')
    .description('create an active tenant')
    .requiredOption('--slug <slug>', 'lower-case letters, digits and inner hyphens; unique')
    .requiredOption('--name <name>', 'display name')
    .option('--tier <tier>', 'isolation tier (this version serves pool)')
    .option('--region <region>', "region to pin the tenant to (default: the server's first region)")
    .action(async (opts: { slug: string; name: string; tier?: string; region?: string }, cmd: Command) => {
      const body = { slug: opts.slug, name: opts.name, ...(opts.tier ? { tier: opts.tier } : {}), ...(opts.region ? { region: opts.region } : {}) };
      const tenant = await client(cmd).request<TenantView>('POST', '/v1/tenants', body);
      emit(io.stdout, json(cmd), tenant, () => describeTenant(tenant));
    });

  tenants
    .command('list')
    .description('list every tenant, oldest first')
    .action(async (_opts: object, cmd: Command) => {
      const result = await client(cmd).request<{ tenants: TenantView[] }>('GET', '/v1/tenants');
      emit(io.stdout, json(cmd), result, () =>
        result.tenants.length === 0
          ? 'no tenants\n'
          : table(result.tenants, [
              { header: 'id', value: (t) => t.id },
              { header: 'slug', value: (t) => t.slug },
              { header: 'name', value: (t) => t.name },
              { header: 'status', value: (t) => t.status },
              { header: 'tier', value: (t) => t.tier },
              { header: 'region', value: (t) => t.region },
              { header: 'created', value: (t) => t.createdAt },
            ]),
      );
    });

  tenants
    .command('show')
    .description('show one tenant')
    .argument('<tenant>', 'tenant id or slug')
    .action(async (tenant: string, _opts: object, cmd: Command) => {
      const view = await client(cmd).request<TenantView>('GET', tenantPath(tenant));
      emit(io.stdout, json(cmd), view, () => describeTenant(view));
    });

  for (const [name, status, description] of [
    ['suspend', 'suspended', "suspend a tenant: its tokens are refused until it is resumed; its data is kept"],
    ['resume', 'active', 'make a suspended tenant active again'],
  ] as const) {
    tenants
      .command(name)
      .description(description)
      .argument('<tenant>', 'tenant id or slug')
      .action(async (tenant: string, _opts: object, cmd: Command) => {
        const view = await client(cmd).request<TenantView>('PATCH', tenantPath(tenant), { status });
        emit(io.stdout, json(cmd), view, () => `tenant ${printable(view.slug)} (${view.id}) is ${view.status}\n`);
      });
  }

  tenants
    .command('history')
    .description("show a tenant's lifecycle history")
    .argument('<tenant>', 'tenant id or slug')
    .action(async (tenant: string, _opts: object, cmd: Command) => {
      const result = await client(cmd).request<{ history: TenantHistoryEntry[] }>('GET', `${tenantPath(tenant)}/history`);
      emit(io.stdout, json(cmd), result, () =>
        table(result.history, [
          { header: 'seq', value: (h) => h.seq },
          { header: 'at', value: (h) => h.at },
          { header: 'event', value: (h) => h.event },
          { header: 'from', value: (h) => h.fromStatus },
          { header: 'to', value: (h) => h.toStatus },
          { header: 'actor', value: (h) => h.actor },
        ]),
      );
    });

  return tenants;
}
