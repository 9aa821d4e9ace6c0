/**
 * `bulkhead audit verify [--tenant T]` and `POST /v1/audit/verify` (issue 5, item 6): every chain
 * recomputed from its rows in the database, every checkpoint of the witness checked (signature,
 * order) and compared with the row at its seq; the answer names the first divergence.
 */
import type { KeyObject } from 'node:crypto';
import type { ScopedStore } from '../store/store.js';
import { PLATFORM_CHAIN, type ChainId, type Divergence, type StoredRow } from './chain.js';
import { checkpointKeys } from './checkpoint.js';
import { anchorOf } from './retention.js';
import type { Witness } from './witness.js';

/** Rows read per query while streaming a chain (constant memory whatever its length). */
const PAGE = 5_000;

/** One chain's result. */
export interface ChainReport {
  /** The tenant id, or `platform`. */
  readonly chain: ChainId;
  readonly ok: boolean;
  /** Rows verified, and the signed checkpoints compared. */
  readonly events: number;
  readonly checkpoints: number;
  /** The head seq (when it verified). */
  readonly headSeq?: number;
  /** Not verified because the tenant was erased (its chain went with its data; its witness file stays). */
  readonly skipped?: 'erased';
}

/** The whole verification's answer. */
export interface VerifyReport {
  readonly ok: boolean;
  /** Every chain verified: the tenants' and, without a tenant named, the platform's (`chain: "platform"`). */
  readonly tenants: readonly ChainReport[];
  /** The first chain that did not verify, and where. */
  readonly firstDivergence?: Divergence;
}

/** What the verifier reads from. */
export interface VerifySources {
  /** The tenant's scope at its placement (read; any status). */
  readonly tenant: (tenantId: string) => ScopedStore;
  readonly platform: () => ScopedStore;
  readonly witness: Witness;
  /** Where retention's signed anchors are: a pruned chain is verified from its newest one. */
  readonly anchors?: Witness;
  /** The public keys checkpoints may be signed with. */
  readonly keys: readonly KeyObject[];
  /** Called with the rows verified so far in all chains and the rows there are, for a progress bar (every 1,000 rows and at each chain's end). */
  readonly onProgress?: (rows: number, total: number) => void;
}

/** Streams a chain's rows in seq order, a page at a time. */
async function* rowsOf(scope: ScopedStore, chain: ChainId): AsyncGenerator<StoredRow> {
  let after = 0;
  for (;;) {
    const [r] =
      chain === PLATFORM_CHAIN
        ? await scope.batch([{ text: 'SELECT seq, prev_hash, hash, event, time FROM bulkhead.audit_platform_events WHERE seq > $1 ORDER BY seq LIMIT $2', values: [after, PAGE] }])
        : await scope.batch([{ text: 'SELECT seq, prev_hash, hash, event, time FROM audit_events WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3', values: [chain, after, PAGE] }]);
    for (const row of r!.rows) yield { seq: row.seq as string, prevHash: row.prev_hash as Uint8Array, hash: row.hash as Uint8Array, event: row.event, time: row.time as Date };
    if (r!.rows.length < PAGE) return;
    after = Number(r!.rows[r!.rows.length - 1]!.seq);
  }
}

async function countRows(scope: ScopedStore, chain: ChainId): Promise<number> {
  const [r] =
    chain === PLATFORM_CHAIN
      ? await scope.batch([{ text: 'SELECT count(*)::bigint AS n FROM bulkhead.audit_platform_events' }])
      : await scope.batch([{ text: 'SELECT count(*)::bigint AS n FROM audit_events WHERE tenant_id = $1', values: [chain] }]);
  return Number(r!.rows[0]!.n);
}

/**
 * Verifies the chains of `tenants` (each `{ id, erased }`) and, when `platform` is set, the platform
 * chain; stops at nothing (every chain is reported) and names the first divergence.
 */
export async function verifyTrail(sources: VerifySources, tenants: readonly { id: string; erased: boolean }[], platform: boolean): Promise<VerifyReport> {
  const keys = checkpointKeys(...sources.keys);
  const chains: ChainReport[] = [];
  let firstDivergence: Divergence | undefined;
  const targets: Array<{ chain: ChainId; erased: boolean }> = [...tenants.map((t) => ({ chain: t.id, erased: t.erased })), ...(platform ? [{ chain: PLATFORM_CHAIN, erased: false }] : [])];
  // For a progress bar: how many rows there are, counted first (one query per chain).
  let total = 0;
  let before = 0;
  if (sources.onProgress) {
    for (const { chain, erased } of targets) if (!erased) total += await countRows(chain === PLATFORM_CHAIN ? sources.platform() : sources.tenant(chain), chain);
    sources.onProgress(0, total);
  }
  for (const { chain, erased } of targets) {
    if (erased) {
      chains.push({ chain, ok: true, events: 0, checkpoints: 0, skipped: 'erased' });
      continue;
    }
    const scope = chain === PLATFORM_CHAIN ? sources.platform() : sources.tenant(chain);
    // A chain pruned by retention starts after its newest anchor whose signature verifies (a
    // forged anchor line fails the verification: the witness throws on it, uniformly).
    const start = sources.anchors && chain !== PLATFORM_CHAIN ? await anchorOf(sources.anchors, chain, sources.keys) : undefined;
    const result = await sources.witness.verify(chain, rowsOf(scope, chain), keys, {
      ...(start ? { start } : {}),
      ...(sources.onProgress ? { onProgress: (n: number) => sources.onProgress!(before + n, total), progressEvery: 1_000 } : {}),
    });
    before += result.rows;
    sources.onProgress?.(before, Math.max(total, before));
    if (result.ok) {
      chains.push({ chain, ok: true, events: result.rows, checkpoints: result.checkpoints, headSeq: result.head.seq });
    } else {
      chains.push({ chain, ok: false, events: result.rows, checkpoints: result.checkpoints });
      firstDivergence ??= result.divergence;
    }
  }
  return { ok: firstDivergence === undefined, tenants: chains, ...(firstDivergence ? { firstDivergence } : {}) };
}
