import type { Command } from 'commander';
import type { VerifyReport } from '../audit/verify.js';
import { BulkheadClient, CliError, oneLine, streamLines, type CliIO, type GlobalOptions } from './client.js';
import { progressBar } from './progress.js';
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
      // Streamed, with a progress bar on stderr: long chains take a while.
      let report: VerifyReport | undefined;
      // `total` is cli-progress's own field (100): the event count goes in `events`.
      const bar = progressBar(io.stderr, 'verify [{bar}] {percentage}% | {rows}/{events} events', { rows: 0, events: 0 });
      try {
        await streamLines(api, 'POST', '/v1/audit/verify', opts.tenant === undefined ? {} : { tenant: opts.tenant }, (line) => {
          const l = line as { progress?: { rows: number; total: number }; report?: VerifyReport; problem?: { code: string; detail: string } };
          if (l.progress) bar.update(l.progress.total > 0 ? Math.floor((100 * l.progress.rows) / l.progress.total) : 100, { rows: l.progress.rows, events: l.progress.total });
          if (l.report) report = l.report;
          if (l.problem) throw new CliError(oneLine(l.problem.detail), { code: l.problem.code });
        });
      } finally {
        bar.stop();
      }
      if (!report) throw new CliError('the server ended the verification without a report');
      const done = report;
      emit(io.stdout, options.json, done, () =>
        table(done.tenants, [
          { header: 'chain', value: (c) => c.chain },
          { header: 'result', value: (c) => (c.skipped ? `skipped (${c.skipped})` : c.ok ? 'ok' : 'DIVERGES') },
          { header: 'events', value: (c) => c.events },
          { header: 'checkpoints', value: (c) => c.checkpoints },
          { header: 'head seq', value: (c) => c.headSeq ?? null },
        ]),
      );
      if (!done.ok) {
        const d = done.firstDivergence!;
        throw new CliError(`audit chain ${d.chain} diverges at seq ${d.seq} (${d.kind}): ${d.message}; last good seq ${d.lastGoodSeq}`, { code: 'AUDIT_CHAIN_BROKEN' });
      }
    });
}
