import { setTimeout as sleep } from 'node:timers/promises';
import type { Command } from 'commander';
import type { KeyRowView } from '../crypto/keyring.js';
import type { RotationView } from '../tenancy/key-rotations.js';
import { BulkheadClient, CliError, type CliIO, type GlobalOptions } from './client.js';
import { emit, keyValues, table } from './output.js';
import { progressBar } from './progress.js';
import { tenantPath } from './tenants.js';

/** How often `keys rotate` asks for the rotation's progress while it waits. */
const POLL_MS = 500;
const FINISHED = new Set(['done', 'failed']);

function describeRotation(r: RotationView): string {
  return keyValues([
    ['rotation', r.id],
    ['tenant', r.tenantId],
    ['state', r.state],
    ['from version', r.fromVersion],
    ['to version', r.toVersion],
    ['progress', `${r.progress.percent}% (pass ${r.progress.pass}: ${r.progress.done}/${r.progress.total} records)`],
    ['re-encrypted', `${r.progress.reencrypted} values`],
    ['destroyed versions', r.progress.destroyed?.length ? r.progress.destroyed.join(', ') : null],
    ['error', r.error],
    ['actor', r.actor],
    ['created', r.createdAt],
    ['finished', r.finishedAt],
  ]);
}

function rotationPath(tenant: string, id: string): string {
  return `${tenantPath(tenant)}/keys/rotations/${encodeURIComponent(id)}`;
}

/** `bulkhead keys ...`: a tenant's data keys and their rotation (operator token). */
export function keysCommand(parent: Command, io: CliIO): void {
  const keys = parent.command('keys').description("a tenant's data keys: list them, rotate them with re-encryption (operator token)");
  const client = (cmd: Command) => BulkheadClient.from(cmd.optsWithGlobals<GlobalOptions>(), io.env);
  const json = (cmd: Command) => cmd.optsWithGlobals<GlobalOptions>().json;

  keys
    .command('rotate')
    .description('make a new data-key version for new writes and re-encrypt every record under it, then destroy the old versions; waits with a progress bar unless --no-wait')
    .requiredOption('--tenant <tenant>', 'tenant id or slug')
    .option('--no-wait', 'print the rotation and return at once; follow it with "keys rotation-status"')
    .action(async (opts: { tenant: string; wait: boolean }, cmd: Command) => {
      const api = client(cmd);
      let rotation = await api.request<RotationView>('POST', `${tenantPath(opts.tenant)}/keys/rotate`, {});
      if (opts.wait) rotation = await follow(api, rotation, io);
      emit(io.stdout, json(cmd), rotation, () => describeRotation(rotation));
      if (rotation.state === 'failed') {
        throw new CliError(`rotation ${rotation.id} failed (${rotation.error ?? 'no reason recorded'}); every record stays readable on the versions it had`);
      }
    });

  keys
    .command('list')
    .description("the tenant's key versions: purpose, state, encryptions reserved (never any key material)")
    .requiredOption('--tenant <tenant>', 'tenant id or slug')
    .action(async (opts: { tenant: string }, cmd: Command) => {
      const result = await client(cmd).request<{ keys: KeyRowView[] }>('GET', `${tenantPath(opts.tenant)}/keys`);
      emit(io.stdout, json(cmd), result, () =>
        result.keys.length === 0
          ? 'no keys yet (made on the first encrypted write)\n'
          : table(result.keys, [
              { header: 'purpose', value: (k) => k.purpose },
              { header: 'version', value: (k) => k.version },
              { header: 'state', value: (k) => k.state },
              { header: 'encryptions reserved', value: (k) => k.encryptionsReserved },
              { header: 'created', value: (k) => k.createdAt },
              { header: 'retired', value: (k) => k.retiredAt },
            ]),
      );
    });

  keys
    .command('rotations')
    .description("list a tenant's key rotations, newest first")
    .requiredOption('--tenant <tenant>', 'tenant id or slug')
    .action(async (opts: { tenant: string }, cmd: Command) => {
      const result = await client(cmd).request<{ rotations: RotationView[] }>('GET', `${tenantPath(opts.tenant)}/keys/rotations`);
      emit(io.stdout, json(cmd), result, () =>
        result.rotations.length === 0
          ? 'no rotations\n'
          : table(result.rotations, [
              { header: 'rotation', value: (r) => r.id },
              { header: 'state', value: (r) => r.state },
              { header: 'from', value: (r) => r.fromVersion },
              { header: 'to', value: (r) => r.toVersion },
              { header: 'progress', value: (r) => `${r.progress.percent}%` },
              { header: 'created', value: (r) => r.createdAt },
              { header: 'error', value: (r) => r.error },
            ]),
      );
    });

  keys
    .command('rotation-status')
    .description('show one key rotation: state, progress, versions destroyed')
    .requiredOption('--tenant <tenant>', 'tenant id or slug')
    .argument('<rotation>', 'rotation id')
    .action(async (id: string, opts: { tenant: string }, cmd: Command) => {
      const rotation = await client(cmd).request<RotationView>('GET', rotationPath(opts.tenant, id));
      emit(io.stdout, json(cmd), rotation, () => describeRotation(rotation));
    });
}

/**
 * Polls the rotation until it is done or failed, with a progress bar on stderr. The rotation runs
 * on the server: if the CLI stops waiting, the rotation goes on.
 */
async function follow(api: BulkheadClient, started: RotationView, io: CliIO): Promise<RotationView> {
  // `total` is a name cli-progress fills itself (with 100): the record count goes in `records`.
  const fields = (r: RotationView) => ({ state: r.state, done: r.progress.done, records: r.progress.total });
  const bar = progressBar(io.stderr, 'rotate {state} [{bar}] {percentage}% | {done}/{records} records', fields(started), started.progress.percent);
  let rotation = started;
  try {
    while (!FINISHED.has(rotation.state)) {
      await sleep(POLL_MS);
      try {
        rotation = await api.request<RotationView>('GET', rotationPath(rotation.tenantId, rotation.id));
      } catch (error) {
        if (!(error instanceof CliError)) throw error;
        throw new CliError(
          `${error.message}; rotation ${rotation.id} goes on on the server: follow it with "bulkhead keys rotation-status --tenant ${rotation.tenantId} ${rotation.id}"`,
          { exitCode: error.exitCode, ...(error.code ? { code: error.code } : {}) },
        );
      }
      bar.update(rotation.progress.percent, fields(rotation));
    }
  } finally {
    bar.stop();
  }
  return rotation;
}
