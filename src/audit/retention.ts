/**
 * Audit retention (issue 5, item 9; docs/audit.md, "Retention"): a chain's events older than
 * the retention period (`BULKHEAD_AUDIT_RETENTION_DAYS`, 365 by default, as PCI DSS 10.5.1 asks)
 * are removed, and the chain stays verifiable from a signed **anchor**: a checkpoint of the last
 * removed event's seq and hash, signed like every checkpoint and appended to the witness's
 * `anchors` directory before anything is removed. Verification then starts from the newest anchor
 * whose signature verifies; rows removed past it, or an anchor forged without the key, show as a
 * divergence.
 *
 * A chain is pruned only when it verifies first (pruning never launders a tampered chain), and
 * never down to its head: the newest event always stays, so the next append still links to a row.
 * The platform chain is pruned the same way (migration 16 lets the owner delete its oldest rows).
 */
import type { ChainHead, ChainId } from './chain.js';
import { checkpointKeys, type CheckpointSigner } from './checkpoint.js';
import { chainRowsSql } from './schema.js';
import type { VerifyReport } from './verify.js';
import type { Witness } from './witness.js';
import type { ScopedStore } from '../store/store.js';
import type { KeyObject } from 'node:crypto';

/** Default retention of audit events, in days (PCI DSS 10.5.1: at least 12 months). */
export const DEFAULT_AUDIT_RETENTION_DAYS = 365;

/** What pruning one chain did. */
export interface PruneResult {
  readonly chain: string;
  /** The seq of the anchor signed now (the last event removed), or null when nothing was old enough. */
  readonly anchorSeq: number | null;
  readonly removed: number;
  /**
   * Not pruned, and left as it is for the cause to be examined: the chain does not verify, its
   * witness holds a checkpoint or anchor that does not verify, or another error (the run goes on
   * with the other chains).
   */
  readonly refused?: 'chain-diverges' | 'witness-invalid' | 'error';
  /** Not pruned this time, for a reason that passes: the tenant is being moved (its next run prunes it). */
  readonly skipped?: 'moving';
}

/** What pruning needs. */
export interface RetentionDeps {
  /** Where a chain's rows are read: the tenant's scope at its placement, or the control plane's platform scope. */
  readonly scope: (chain: ChainId) => ScopedStore;
  readonly signer: CheckpointSigner;
  /** The anchors' witness (a directory of its own beside the checkpoints'). */
  readonly anchors: Witness;
  readonly keys: readonly KeyObject[];
  /** Verifies one chain (from its newest anchor). */
  readonly verify: (chain: ChainId) => Promise<VerifyReport>;
  /** Removes a chain's events up to a seq, where the chain lives. */
  readonly remove: (chain: ChainId, throughSeq: number) => Promise<number>;
  /**
   * Whether the chain's tenant is being moved: a move copies the chain and compares it at the
   * switch, so rows pruned at the source under it would fail the move.
   */
  readonly moving?: (chain: ChainId) => Promise<boolean>;
}

/** The newest anchor of `chain` whose signature verifies, as the head the remaining rows start after. */
export async function anchorOf(anchors: Witness, chain: string, keys: readonly KeyObject[]): Promise<ChainHead | undefined> {
  const last = await anchors.last(chain, checkpointKeys(...keys));
  return last ? { seq: last.seq, hash: Buffer.from(last.hash, 'hex') } : undefined;
}

/** Prunes one chain (a tenant's, or the platform's) of the events before `before`. */
export async function pruneChain(deps: RetentionDeps, chain: ChainId, before: Date): Promise<PruneResult> {
  const scope = deps.scope(chain);
  const { from, values } = chainRowsSql(chain);
  const next = values.length + 1;
  const [r] = await scope.batch([
    { text: `SELECT max(seq) AS head, max(seq) FILTER (WHERE time < $${next}) AS old FROM ${from}`, values: [...values, before.toISOString()] },
  ]);
  const head = Number(r!.rows[0]!.head ?? 0);
  const old = Number(r!.rows[0]!.old ?? 0);
  const cut = Math.min(old, head - 1);
  let anchor: ChainHead | undefined;
  let report: VerifyReport;
  try {
    anchor = await anchorOf(deps.anchors, chain, deps.keys);
    if (cut < 1 || (anchor && cut <= anchor.seq)) return { chain, anchorSeq: null, removed: 0 };
    report = await deps.verify(chain);
  } catch (error) {
    if ((error as { code?: unknown }).code === 'AUDIT_CHECKPOINT_INVALID') return { chain, anchorSeq: null, removed: 0, refused: 'witness-invalid' };
    throw error;
  }
  if (!report.ok) return { chain, anchorSeq: null, removed: 0, refused: 'chain-diverges' };
  // Asked last, right before the anchor and the removal, to leave a move that starts meanwhile the shortest window.
  if (await deps.moving?.(chain)) return { chain, anchorSeq: null, removed: 0, skipped: 'moving' };
  const [h] = await scope.batch([{ text: `SELECT hash FROM ${from} AND seq = $${next}`, values: [...values, cut] }]);
  const hash = h!.rows[0]!.hash as Uint8Array;
  // The anchor is durable before a row goes: a crash in between leaves rows that verify from it.
  await deps.anchors.append(deps.signer.sign({ chain, seq: cut, hash }));
  const removed = await deps.remove(chain, cut);
  return { chain, anchorSeq: cut, removed };
}
