import { setTimeout as sleep } from 'node:timers/promises';
import { Option, type Command } from 'commander';
import type { MoveEnd, MoveView } from '../placement/moves.js';
import type { ResolvedPlacement } from '../placement/placements.js';
import { TIERS } from '../placement/tier.js';
import type { TenantHistoryEntry, TenantView } from '../tenancy/tenants.js';
import { BulkheadClient, CliError, type CliIO, type GlobalOptions } from './client.js';
import { eraseCommands } from './erase.js';
import { emit, keyValues, printable, table } from './output.js';
import { progressBar } from './progress.js';

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
    .option('--tier <tier>', `isolation tier: ${TIERS.join(', ')} (default pool)`)
    .option('--region <region>', "region to pin the tenant to (default: the server's first region)")
    .option('--cell <cell>', 'storage cell to place the tenant in, one of its region (default: the least-filled cell of the region)')
    .action(async (opts: { slug: string; name: string; tier?: string; region?: string; cell?: string }, cmd: Command) => {
      const body = {
        slug: opts.slug,
        name: opts.name,
        ...(opts.tier ? { tier: opts.tier } : {}),
        ...(opts.region ? { region: opts.region } : {}),
        ...(opts.cell ? { cell: opts.cell } : {}),
      };
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

  moveCommands(tenants, io);
  eraseCommands(tenants, io);
  return tenants;
}

/** States after which a move changes no more (a failed move still rolls back). */
const FINISHED: ReadonlySet<string> = new Set(['done', 'rolled_back']);

/** How often `tenants move` asks for the move's progress while it waits. */
const POLL_MS = 200;

function end(e: MoveEnd): string {
  return `${e.tier} in cell ${e.cell} (region ${e.region}): ${e.location}`;
}

function checksumSummary(m: MoveView): string | null {
  if (!m.checksums) return null;
  const { source, target } = m.checksums;
  const keys = [...new Set([...Object.keys(source), ...Object.keys(target)])];
  const differ = keys.filter((k) => source[k]?.rows !== target[k]?.rows || source[k]?.digest !== target[k]?.digest).length;
  return `${keys.length} compared, ${differ === 0 ? 'source = target' : `${differ} differ`}`;
}

function describeMove(m: MoveView): string {
  const p = m.progress;
  return keyValues([
    ['move', m.id],
    ['tenant', m.tenantId],
    ['state', m.state],
    ['from', end(m.source)],
    ['to', end(m.target)],
    ['legal basis', m.legalBasis],
    ['copied', `${p.copied} of ${p.total} rows (${p.percent}%)`],
    ['synced', p.synced === undefined ? null : `${p.synced} rows changed during the copy`],
    ['checksums', checksumSummary(m)],
    ['write pause', p.pauseMs === undefined ? null : `${p.pauseMs} ms`],
    ['error', m.error],
    ['actor', m.actor],
    ['created', m.createdAt],
    ['finished', m.finishedAt],
  ]);
}

function movesTable(moves: readonly MoveView[]): string {
  if (moves.length === 0) return 'no moves\n';
  return table(moves, [
    { header: 'id', value: (m) => m.id },
    { header: 'state', value: (m) => m.state },
    { header: 'from', value: (m) => `${m.source.tier}/${m.source.cell}` },
    { header: 'to', value: (m) => `${m.target.tier}/${m.target.cell}` },
    { header: 'progress', value: (m) => `${m.progress.percent}%` },
    { header: 'created', value: (m) => m.createdAt },
    { header: 'finished', value: (m) => m.finishedAt },
    { header: 'error', value: (m) => m.error },
  ]);
}

function movePath(tenant: string, moveId: string): string {
  return `${tenantPath(tenant)}/moves/${encodeURIComponent(moveId)}`;
}

/** `tenants move`, `tenants moves` and `tenants move-status`: online moves between tiers, cells and regions. */
function moveCommands(tenants: Command, io: CliIO): void {
  const client = (cmd: Command) => BulkheadClient.from(cmd.optsWithGlobals<GlobalOptions>(), io.env);
  const json = (cmd: Command) => cmd.optsWithGlobals<GlobalOptions>().json;

  tenants
    .command('move')
    .description('move a tenant to another tier, cell or region, online; waits for the end with a progress bar unless --no-wait')
    // Checked here so that a typo sends nothing; the server checks again and decides the rest.
    .addOption(new Option('--tier <tier>', 'target isolation tier').choices(TIERS).makeOptionMandatory())
    .option('--cell <cell>', 'target storage cell (default: the current cell, or the first cell of the target region)')
    .option('--region <region>', "target region (default: the tenant's region, or the target cell's)")
    .option('--legal-basis <text>', 'why the data may leave its region (10 to 2000 characters); required for a region change, recorded and audited')
    .option('--no-wait', 'print the planned move and return at once; follow it with "tenants move-status"')
    .argument('<tenant>', 'tenant id or slug')
    .action(async (tenant: string, opts: { tier: string; cell?: string; region?: string; legalBasis?: string; wait: boolean }, cmd: Command) => {
      const api = client(cmd);
      const body = {
        tier: opts.tier,
        ...(opts.cell !== undefined ? { cell: opts.cell } : {}),
        ...(opts.region !== undefined ? { region: opts.region } : {}),
        ...(opts.legalBasis !== undefined ? { legalBasis: opts.legalBasis } : {}),
      };
      let move = await api.request<MoveView>('POST', `${tenantPath(tenant)}/moves`, body);
      if (opts.wait) move = await follow(api, move, io);
      emit(io.stdout, json(cmd), move, () => describeMove(move));
      if (move.state === 'rolled_back') {
        throw new CliError(
          `move ${move.id} was rolled back (${move.error ?? 'no reason recorded'}); the tenant stays on ${move.source.tier} in cell ${move.source.cell}`,
        );
      }
    });

  tenants
    .command('moves')
    .description("list a tenant's moves, newest first")
    .argument('<tenant>', 'tenant id or slug')
    .action(async (tenant: string, _opts: object, cmd: Command) => {
      const result = await client(cmd).request<{ moves: MoveView[] }>('GET', `${tenantPath(tenant)}/moves`);
      emit(io.stdout, json(cmd), result, () => movesTable(result.moves));
    });

  tenants
    .command('move-status')
    .description('show one move of a tenant: state, progress, checksums')
    .argument('<tenant>', 'tenant id or slug')
    .argument('<move>', 'move id')
    .action(async (tenant: string, moveId: string, _opts: object, cmd: Command) => {
      const move = await client(cmd).request<MoveView>('GET', movePath(tenant, moveId));
      emit(io.stdout, json(cmd), move, () => describeMove(move));
    });
}

/**
 * Polls the move until it is done or rolled back, with a progress bar on stderr. The move runs
 * on the server: if the CLI stops waiting (Ctrl-C, a lost connection), the move goes on.
 */
async function follow(api: BulkheadClient, started: MoveView, io: CliIO): Promise<MoveView> {
  const fields = (m: MoveView) => ({ state: m.state, copied: m.progress.copied, rows: m.progress.total });
  const bar = progressBar(io.stderr, 'move {state} [{bar}] {percentage}% | {copied}/{rows} rows', fields(started), started.progress.percent);
  let move = started;
  try {
    while (!FINISHED.has(move.state)) {
      await sleep(POLL_MS);
      try {
        move = await api.request<MoveView>('GET', movePath(move.tenantId, move.id));
      } catch (error) {
        if (!(error instanceof CliError)) throw error;
        throw new CliError(`${error.message}; move ${move.id} goes on on the server: follow it with "bulkhead tenants move-status ${move.tenantId} ${move.id}"`, {
          exitCode: error.exitCode,
          ...(error.code ? { code: error.code } : {}),
        });
      }
      bar.update(move.progress.percent, fields(move));
    }
  } finally {
    bar.stop();
  }
  return move;
}

/** A storage cell as `GET /v1/placements` lists it. */
interface CellView {
  readonly name: string;
  readonly region: string;
  readonly kind: string;
  readonly control: boolean;
}

/** `bulkhead placements`: the storage cells and where each tenant's data lives (operator token). */
export function placementsCommand(parent: Command, io: CliIO): void {
  parent
    .command('placements')
    .description('the storage cells and the placement directory: tier, cell and location of every tenant (operator token)')
    .action(async (_opts: object, cmd: Command) => {
      const options = cmd.optsWithGlobals<GlobalOptions>();
      const api = BulkheadClient.from(options, io.env);
      const result = await api.request<{ placements: Array<ResolvedPlacement & { tenantId: string }>; cells: CellView[] }>('GET', '/v1/placements');
      // The directory names tenants by id; operators know them by slug.
      const slugs = new Map<string, string>();
      if (!options.json) for (const t of (await api.request<{ tenants: TenantView[] }>('GET', '/v1/tenants')).tenants) slugs.set(t.id, t.slug);
      emit(io.stdout, options.json, result, () => {
        const cells = table(result.cells, [
          { header: 'cell', value: (c) => c.name },
          { header: 'region', value: (c) => c.region },
          { header: 'kind', value: (c) => c.kind },
          { header: 'control', value: (c) => (c.control ? 'yes' : 'no') },
          { header: 'tenants', value: (c) => result.placements.filter((p) => p.cell === c.name).length },
        ]);
        const directory =
          result.placements.length === 0
            ? 'no tenants placed\n'
            : table(result.placements, [
                { header: 'tenant', value: (p) => p.tenantId },
                { header: 'slug', value: (p) => slugs.get(p.tenantId) },
                { header: 'tier', value: (p) => p.tier },
                { header: 'cell', value: (p) => p.cell },
                { header: 'region', value: (p) => p.region },
                { header: 'location', value: (p) => p.location },
                { header: 'writes paused until', value: (p) => (p.writesPausedUntil === null ? null : new Date(p.writesPausedUntil).toISOString()) },
              ]);
        return `${cells}\n${directory}`;
      });
    });
}
