import type { Command } from 'commander';
import type { PartitionHealth, TenantUsageReport, UsageTopReport } from '../tenancy/health.js';
import { BulkheadClient, type CliIO, type GlobalOptions } from './client.js';
import { emit, keyValues, printable, table } from './output.js';
import { tenantPath } from './tenants.js';

/** Bytes as B, KiB, MiB, GiB or TiB with one decimal. */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${bytes} B` : `${value.toFixed(1)} ${units[unit]}`;
}

const percent = (share: number): string => `${(share * 100).toFixed(1)}%`;

function query(params: Record<string, string | undefined>): string {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) if (value !== undefined) q.set(key, value);
  const text = q.toString();
  return text === '' ? '' : `?${text}`;
}

/**
 * `bulkhead partitions`, `bulkhead usage top` and `bulkhead tenants usage <tenant>`: partition
 * health and per-tenant usage (operator token). `tenants` is the command `tenantsCommand` returned.
 */
export function usageCommands(parent: Command, tenants: Command, io: CliIO): void {
  const client = (cmd: Command) => BulkheadClient.from(cmd.optsWithGlobals<GlobalOptions>(), io.env);
  const json = (cmd: Command) => cmd.optsWithGlobals<GlobalOptions>().json;

  parent
    .command('partitions')
    .description('rows and bytes per hash partition of the pool, and the skew (max/mean rows) (operator token)')
    .action(async (_opts: object, cmd: Command) => {
      const health = await client(cmd).request<PartitionHealth>('GET', '/v1/partitions');
      emit(io.stdout, json(cmd), health, () => {
        const rows = table(health.partitions, [
          { header: 'partition', value: (p) => p.name },
          { header: 'remainder', value: (p) => p.remainder },
          { header: 'rows', value: (p) => p.rows },
          { header: 'share', value: (p) => (health.totalRows === 0 ? '-' : percent(p.rows / health.totalRows)) },
          { header: 'bytes', value: (p) => formatBytes(p.bytes) },
        ]);
        const skew = health.skew === null ? 'none (no records)' : `${health.skew.toFixed(3)} (max ${health.maxRows} / mean ${health.meanRows.toFixed(1)} rows)`;
        return `${rows}\n${keyValues([
          ['total', `${health.totalRows} rows, ${formatBytes(health.totalBytes)} in ${health.partitions.length} partitions`],
          ['skew', skew],
        ])}`;
      });
    });

  tenants
    .command('usage')
    .description("a tenant's reads, writes and rows over a window, per bucket")
    .argument('<tenant>', 'tenant id or slug')
    .option('--window <w>', 'minutes or hours, e.g. 5m, 1h, 24h (default 1h)')
    .action(async (tenant: string, opts: { window?: string }, cmd: Command) => {
      const report = await client(cmd).request<TenantUsageReport>('GET', `${tenantPath(tenant)}/usage${query({ window: opts.window })}`);
      emit(io.stdout, json(cmd), report, () => {
        const head = keyValues([
          ['tenant', `${report.tenant.slug} (${report.tenant.id})`],
          ['window', `${report.window} since ${report.since} (${report.bucketSeconds} s buckets)`],
          ['reads', `${report.totals.reads} (${report.totals.rowsRead} rows)`],
          ['writes', `${report.totals.writes} (${report.totals.rowsWritten} rows)`],
          ['size', `${report.size.rows} records, ${formatBytes(report.size.bytes)}`],
        ]);
        if (report.buckets.length === 0) return `${head}\nno requests in the window\n`;
        return `${head}\n${table(report.buckets, [
          { header: 'bucket', value: (b) => b.start },
          { header: 'reads', value: (b) => b.reads },
          { header: 'writes', value: (b) => b.writes },
          { header: 'rows read', value: (b) => b.rowsRead },
          { header: 'rows written', value: (b) => b.rowsWritten },
        ])}`;
      });
    });

  const usage = parent.command('usage').description('per-tenant usage across the platform (operator token)');
  usage
    .command('top')
    .description('the busiest tenants over a window, and the pool tenants worth promoting')
    .option('--window <w>', 'minutes or hours, e.g. 5m, 1h, 24h (default 1h)')
    .option('--limit <n>', 'tenants and candidates listed, each (1-100, default 10)')
    .option('--min-share <s>', "a share of the pool's records or of the requests above which a tenant is a candidate (default 0.1)")
    .option('--min-rows <n>', 'records at or above which a tenant is a candidate (default 1000000)')
    .action(async (opts: { window?: string; limit?: string; minShare?: string; minRows?: string }, cmd: Command) => {
      const path = `/v1/usage/top${query({ window: opts.window, limit: opts.limit, minShare: opts.minShare, minRows: opts.minRows })}`;
      const report = await client(cmd).request<UsageTopReport>('GET', path);
      emit(io.stdout, json(cmd), report, () => {
        const head = keyValues([
          ['window', `${report.window} since ${report.since}`],
          ['requests', `${report.totals.reads} reads, ${report.totals.writes} writes`],
          ['pool', `${report.totals.rows} records, ${formatBytes(report.totals.bytes)}`],
        ]);
        const tenantsTable =
          report.tenants.length === 0
            ? 'no tenant has records or requests\n'
            : table(report.tenants, [
                { header: 'slug', value: (t) => t.slug },
                { header: 'tier', value: (t) => t.tier },
                { header: 'reads', value: (t) => t.reads },
                { header: 'writes', value: (t) => t.writes },
                { header: 'rows read', value: (t) => t.rowsRead },
                { header: 'rows written', value: (t) => t.rowsWritten },
                { header: 'records', value: (t) => t.rows },
                { header: 'bytes', value: (t) => formatBytes(t.bytes) },
                { header: 'usage', value: (t) => percent(t.usageShare) },
                { header: 'pool', value: (t) => percent(t.rowsShare) },
              ]);
        const rule = `share above ${percent(report.thresholds.share)} or at least ${report.thresholds.rows} records`;
        const candidates =
          report.candidates.length === 0
            ? `no promotion candidates (${rule})\n`
            : `promotion candidates (${rule}):\n${table(report.candidates, [
                { header: 'slug', value: (t) => t.slug },
                { header: 'id', value: (t) => t.id },
                { header: 'records', value: (t) => t.rows },
                { header: 'pool', value: (t) => percent(t.rowsShare) },
                { header: 'usage', value: (t) => percent(t.usageShare) },
                { header: 'reasons', value: (t) => printable(t.reasons.join(',')) },
              ])}`;
        return `${head}\n${tenantsTable}\n${candidates}`;
      });
    });
}
