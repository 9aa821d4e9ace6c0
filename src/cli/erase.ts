import type { Command } from 'commander';
import type { ErasureCertificate, ErasureView } from '../tenancy/erasures.js';
import { BulkheadClient, UsageError, type CliIO, type GlobalOptions } from './client.js';
import { emit, keyValues, table } from './output.js';
import { tenantPath } from './tenants.js';

const UNIT_SECONDS: Readonly<Record<string, number>> = { s: 1, m: 60, h: 3600, d: 86_400 };

/** A grace period as the CLI takes it: seconds, or a number with s, m, h or d (`7d`, `36h`, `0`). */
export function parseGrace(text: string): number {
  const m = /^([0-9]{1,9})([smhd]?)$/.exec(text.trim());
  if (!m) throw new UsageError(`--grace must be a number of seconds or a duration such as 90m, 36h or 7d (got "${text.slice(0, 40)}")`);
  return Number(m[1]) * UNIT_SECONDS[m[2] || 's']!;
}

/** The tenant keys an erasure destroyed that existed (a region where none was made has a null id). */
function made(c: ErasureCertificate) {
  return (c.tenantKeys ?? []).filter((k) => k.keyId !== null);
}

function describeErasure(e: ErasureView): string {
  const c = e.certificate;
  return keyValues([
    ['erasure', e.id],
    ['tenant', e.tenantId],
    ['state', e.state],
    ['grace', `${e.graceSeconds} s`],
    ['due', e.dueAt],
    ['requested by', e.actor],
    ['cancelled by', e.cancelledBy],
    ['records', c ? Object.entries(c.records).map(([name, n]) => `${name}: ${n}`).join(', ') || '0' : null],
    ['tenant keys destroyed', c?.tenantKeys ? made(c).map((k) => `${k.keyId} (${k.region}) at ${k.destroyedAt}`).join(', ') || '(none was made)' : null],
    ['erased', c?.erasedAt ?? null],
  ]);
}

/** `tenants erase`, `tenants erase-cancel` and `tenants erasures`: crypto-shredding of a tenant (operator token). */
export function eraseCommands(tenants: Command, io: CliIO): void {
  const client = (cmd: Command) => BulkheadClient.from(cmd.optsWithGlobals<GlobalOptions>(), io.env);
  const json = (cmd: Command) => cmd.optsWithGlobals<GlobalOptions>().json;

  tenants
    .command('erase')
    .description(
      "schedule the erasure of a tenant: it is offboarding (no access) at once; after the grace period its keys are destroyed in the KMS and its data purged, and a certificate says what went",
    )
    .argument('<tenant>', 'tenant id or slug')
    .option('--grace <duration>', "grace period before the keys are destroyed: seconds or 90m, 36h, 7d (default: the server's, 7 days)")
    .action(async (tenant: string, opts: { grace?: string }, cmd: Command) => {
      const body = opts.grace === undefined ? {} : { graceSeconds: parseGrace(opts.grace) };
      const erasure = await client(cmd).request<ErasureView>('POST', `${tenantPath(tenant)}/erase`, body);
      emit(io.stdout, json(cmd), erasure, () => `${describeErasure(erasure)}cancel before ${erasure.dueAt} with "bulkhead tenants erase-cancel ${erasure.tenantId}"\n`);
    });

  tenants
    .command('erase-cancel')
    .description('cancel the scheduled erasure of a tenant before its grace period ends; the tenant gets its earlier status back')
    .argument('<tenant>', 'tenant id or slug')
    .action(async (tenant: string, _opts: object, cmd: Command) => {
      const erasure = await client(cmd).request<ErasureView>('DELETE', `${tenantPath(tenant)}/erase`);
      emit(io.stdout, json(cmd), erasure, () => describeErasure(erasure));
    });

  tenants
    .command('erasures')
    .description("a tenant's erasures, newest first, with the erasure certificate of a finished one (--json prints it whole)")
    .argument('<tenant>', 'tenant id or slug')
    .action(async (tenant: string, _opts: object, cmd: Command) => {
      const result = await client(cmd).request<{ erasures: ErasureView[] }>('GET', `${tenantPath(tenant)}/erasures`);
      emit(io.stdout, json(cmd), result, () =>
        result.erasures.length === 0
          ? 'no erasures\n'
          : table(result.erasures, [
              { header: 'erasure', value: (e) => e.id },
              { header: 'state', value: (e) => e.state },
              { header: 'due', value: (e) => e.dueAt },
              { header: 'requested by', value: (e) => e.actor },
              { header: 'records', value: (e) => (e.certificate ? Object.values(e.certificate.records).reduce((a, b) => a + b, 0) : null) },
              { header: 'tenant keys destroyed', value: (e) => (e.certificate?.tenantKeys ? made(e.certificate).map((k) => k.keyId).join(' ') : null) },
              { header: 'erased', value: (e) => e.certificate?.erasedAt ?? null },
            ]),
      );
    });
}
