/**
 * `bulkhead audit verify [--tenant T]` and `POST /v1/audit/verify` (issue 5, item 6): every chain
 * recomputed from its rows in the database, every checkpoint of the witness checked (signature,
 * order) and compared with the row at its seq; the answer names the first divergence.
 */
import type { KeyObject } from 'node:crypto';
import type { ScopedStore } from '../store/store.js';
import { PLATFORM_CHAIN, verifyEncodedChain, type ChainHead, type ChainId, type Divergence, type EncodedRow, type VerifyResult } from './chain.js';
import { checkpointKeys } from './checkpoint.js';
import { anchorOf } from './retention.js';
import type { Witness } from './witness.js';

/**
 * Rows of the first query of a chain; each next query asks twice as many, up to MAX_PAGE. A short
 * chain (most tenants') is read in one small query, and memory stays bounded whatever a chain's
 * length: a chain holds the page being checked and the PAGES_AHEAD pages asked for. Pages of 2,000
 * verified faster than pages of 4,000 or 8,000 (less garbage surviving into the old generation),
 * and about as fast as pages of 1,000 (bench/README.md, 2026-11-28).
 */
const FIRST_PAGE = 1_000;
const MAX_PAGE = 2_000;

/**
 * Chains verified at the same time, and pages of a chain asked for ahead of the one being checked:
 * the database reads while this process checks, on at most CHAINS_AT_ONCE × PAGES_AHEAD
 * connections of the pool at once. Several chains keep the database busy between a short chain's
 * few queries too; pages ahead let a long chain be read by more than one backend.
 */
const CHAINS_AT_ONCE = 3;
const PAGES_AHEAD = 2;

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

/**
 * What the verifier reads of a row, in the form the database sends most cheaply (see EncodedRow):
 * hashes as hex, the event as its JSON text, the time column as whole milliseconds since the
 * epoch (floored, as a Date read by `pg` holds it).
 */
const COLUMNS = `seq, encode(prev_hash, 'hex') AS "prevHash", encode(hash, 'hex') AS hash, event::text AS event, floor(extract(epoch FROM time) * 1000) AS "timeMs"`;

/** One page of a chain's rows after seq `after`, in seq order. */
async function pageOf(scope: ScopedStore, chain: ChainId, after: string, size: number): Promise<EncodedRow[]> {
  const [r] =
    chain === PLATFORM_CHAIN
      ? await scope.batch([{ text: `SELECT ${COLUMNS} FROM bulkhead.audit_platform_events WHERE seq > $1 ORDER BY seq LIMIT $2`, values: [after, size] }])
      : await scope.batch([{ text: `SELECT ${COLUMNS} FROM audit_events WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3`, values: [chain, after, size] }]);
  return r!.rows as unknown as EncodedRow[];
}

/**
 * Streams a chain's rows in seq order, a page at a time, with the next pages already asked for:
 * the database reads them (on other connections) while this process checks the current one.
 * Paging is by seq (`seq > last seq of the page before`), and a chain's seqs follow each other, so
 * the pages ahead are asked for as if they do; when a full page ends elsewhere (a gap, which the
 * check then reports), the pages asked ahead of it are dropped and asked again from its last seq.
 */
async function* pagesOf(scope: ScopedStore, chain: ChainId): AsyncGenerator<readonly EncodedRow[]> {
  const ahead: Array<{ after: bigint; size: number; rows: Promise<EncodedRow[]> }> = [];
  let size = FIRST_PAGE;
  const ask = (after: bigint) => {
    const rows = pageOf(scope, chain, String(after), size);
    // Handled here too, so that a read still pending when verification stops early (a divergence)
    // cannot become an unhandled rejection; awaited below, it still throws.
    rows.catch(() => undefined);
    ahead.push({ after, size, rows });
    size = Math.min(2 * size, MAX_PAGE);
  };
  ask(0n);
  try {
    while (ahead.length > 0) {
      const page = ahead.shift()!;
      const rows = await page.rows;
      if (rows.length === page.size) {
        const last = BigInt(rows[rows.length - 1]!.seq);
        if (last !== page.after + BigInt(page.size)) {
          for (const dropped of ahead.splice(0)) await dropped.rows.catch(() => undefined);
        }
        let after = ahead.length > 0 ? ahead[ahead.length - 1]!.after + BigInt(ahead[ahead.length - 1]!.size) : last;
        while (ahead.length < PAGES_AHEAD) {
          ask(after);
          after = ahead[ahead.length - 1]!.after + BigInt(ahead[ahead.length - 1]!.size);
        }
      } else {
        // The last page: whatever was asked beyond it is not read.
        for (const dropped of ahead.splice(0)) await dropped.rows.catch(() => undefined);
      }
      yield rows;
    }
  } finally {
    // Stopped early: let the reads in flight finish before the scope is given back.
    for (const dropped of ahead.splice(0)) await dropped.rows.catch(() => undefined);
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
 * Runs `fn` on every item, `limit` at a time. An error stops the items not yet started; once every
 * started one has settled (nothing is left reading after the call returns), the error of the first
 * item in order that failed is thrown.
 */
async function eachLimit<T>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<void>): Promise<void> {
  let next = 0;
  // The error of the first item in order that failed, as running them one by one would throw.
  const failed: { index: number; error: unknown }[] = [];
  const worker = async () => {
    while (next < items.length && failed.length === 0) {
      const i = next++;
      try {
        await fn(items[i]!, i);
      } catch (error) {
        failed.push({ index: i, error });
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failed.length > 0) throw failed.reduce((a, b) => (b.index < a.index ? b : a)).error;
}

/**
 * Verifies the chains of `tenants` (each `{ id, erased }`) and, when `platform` is set, the platform
 * chain; stops at nothing (every chain is reported) and names the first divergence (the first
 * chain in this order that does not verify, whichever finished first).
 */
export async function verifyTrail(sources: VerifySources, tenants: readonly { id: string; erased: boolean }[], platform: boolean): Promise<VerifyReport> {
  const keys = checkpointKeys(...sources.keys);
  const targets: Array<{ chain: ChainId; erased: boolean }> = [...tenants.map((t) => ({ chain: t.id, erased: t.erased })), ...(platform ? [{ chain: PLATFORM_CHAIN, erased: false }] : [])];
  const scopeOf = (chain: ChainId) => (chain === PLATFORM_CHAIN ? sources.platform() : sources.tenant(chain));
  const live = targets.filter((t) => !t.erased);
  // For a progress bar: how many rows there are, counted first (one query per chain).
  let total = 0;
  let verified = 0;
  const onProgress = sources.onProgress;
  if (onProgress) {
    await eachLimit(live, CHAINS_AT_ONCE, async ({ chain }) => {
      const rows = await countRows(scopeOf(chain), chain);
      total += rows;
    });
    onProgress(0, total);
  }
  const results = new Array<VerifyResult | undefined>(targets.length);
  await eachLimit(targets, CHAINS_AT_ONCE, async ({ chain, erased }, index) => {
    if (erased) return;
    // A chain pruned by retention starts after its newest anchor whose signature verifies (a
    // forged anchor line fails the verification: the witness throws on it, uniformly).
    const newestAnchor = () => (sources.anchors ? anchorOf(sources.anchors, chain, sources.keys) : Promise.resolve(undefined));
    // The rows of all chains verified so far: this chain's count is added as it grows.
    let counted = 0;
    const progress = (n: number) => {
      verified += n - counted;
      counted = n;
    };
    const verifyFrom = (start: ChainHead | undefined) =>
      verifyEncodedChain(pagesOf(scopeOf(chain), chain), {
        chain,
        anchors: sources.witness.anchors(chain, keys),
        ...(start ? { start } : {}),
        ...(onProgress ? { onProgress: (n: number) => (progress(n), onProgress(verified, total)), progressEvery: 1_000 } : {}),
      });
    const start = await newestAnchor();
    let result = await verifyFrom(start);
    if (!result.ok) {
      // Retention may have pruned the chain between the reading of its anchor and of its first
      // rows, which then begin after a newer anchor: verified again from that one, once. A
      // divergence that is still there is the chain's.
      const newer = await newestAnchor();
      if (newer && newer.seq > (start?.seq ?? 0)) result = await verifyFrom(newer);
    }
    progress(result.rows);
    onProgress?.(verified, Math.max(total, verified));
    results[index] = result;
  });
  const chains: ChainReport[] = [];
  let firstDivergence: Divergence | undefined;
  targets.forEach(({ chain, erased }, index) => {
    const result = results[index]!;
    if (erased) {
      chains.push({ chain, ok: true, events: 0, checkpoints: 0, skipped: 'erased' });
    } else if (result.ok) {
      chains.push({ chain, ok: true, events: result.rows, checkpoints: result.checkpoints, headSeq: result.head.seq });
    } else {
      chains.push({ chain, ok: false, events: result.rows, checkpoints: result.checkpoints });
      firstDivergence ??= result.divergence;
    }
  });
  return { ok: firstDivergence === undefined, tenants: chains, ...(firstDivergence ? { firstDivergence } : {}) };
}
