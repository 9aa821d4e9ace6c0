import type { Command } from 'commander';
import type { VerifyReport } from '../audit/verify.js';
import { BulkheadClient, CliError, type CliIO, type GlobalOptions } from './client.js';
import { emit, table } from './output.js';

/** `bulkhead audit ...`: the audit trail (operator token). */
export function auditCommand(parent: Command, io: CliIO): void {
  const audit = parent.command('audit').description('the tamper-evident audit trail: verify its chains against the signed checkpoints (operator token)');

  audit
    .command('verify')
    .description('recompute every chain (or one tenant\'s), check every checkpoint signature and that the database agrees with the witness; exits 1 on any divergence, naming the first')
    .option('--tenant <tenant>', 'verify only this tenant\'s chain (id or slug); default: every tenant and the platform chain')
    .action(async (opts: { tenant?: string }, cmd: Command) => {
      const options = cmd.optsWithGlobals<GlobalOptions>();
      const api = BulkheadClient.from(options, io.env);
      const report = await api.request<VerifyReport>('POST', '/v1/audit/verify', opts.tenant === undefined ? {} : { tenant: opts.tenant });
      emit(io.stdout, options.json, report, () =>
        table(report.tenants, [
          { header: 'chain', value: (c) => c.chain },
          { header: 'result', value: (c) => (c.skipped ? `skipped (${c.skipped})` : c.ok ? 'ok' : 'DIVERGES') },
          { header: 'events', value: (c) => c.events },
          { header: 'checkpoints', value: (c) => c.checkpoints },
          { header: 'head seq', value: (c) => c.headSeq ?? null },
        ]),
      );
      if (!report.ok) {
        const d = report.firstDivergence!;
        throw new CliError(`audit chain ${d.chain} diverges at seq ${d.seq} (${d.kind}): ${d.message}; last good seq ${d.lastGoodSeq}`, { code: 'AUDIT_CHAIN_BROKEN' });
      }
    });
}
