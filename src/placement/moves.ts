import { BulkheadError, DatabaseError, NotFoundError } from '../errors.js';
import { isUuid, uuidv7 } from '../ids.js';
import type { ScopedStore } from '../store/store.js';
import type { Cell } from './cells.js';
import { COPY_TABLES, checksumDiff, checksums, copyBatch, prePause, rowCounts, snapshotOf, syncAtSwitch, syncChanges, syncSince, type Checksums, type Cursor, type PrePause } from './copy.js';
import type { Placements } from './placements.js';
import { PLACE_NAME, TIERS, type Placement, type TenantRow, type TierName } from './tier.js';

/** States of a move (SPEC section 2): planned → copying → verifying → switching → cleaning → done, or failed → rolled_back. */
export const MOVE_STATES = ['planned', 'copying', 'verifying', 'switching', 'cleaning', 'done', 'failed', 'rolled_back'] as const;
/** A move state. */
export type MoveState = (typeof MOVE_STATES)[number];

/** Where a move is from or to. */
export interface MoveEnd extends Placement {
  readonly region: string;
}

/** Copy progress, persisted after every batch so a resumed copy starts where it stopped. */
export interface MoveProgress {
  /** Rows copied so far (all data tables), and the rows the source held when the copy started. */
  readonly copied: number;
  readonly total: number;
  /** The table being copied (index into the copy order) and the last key copied in it. */
  readonly table: number;
  readonly cursor: Cursor;
  /** Rows brought in line after the bulk copy, and how long writes were paused (ms) at the switch. */
  readonly synced?: number;
  readonly pauseMs?: number;
  /**
   * The source's snapshot taken before the verification's full sync: the switch then only looks
   * at what was written since (without it, the switch compares everything again).
   */
  readonly snapshot?: string;
  /**
   * How the switch's checksums were taken: `changes` (the comparison base taken before the pause,
   * adjusted for the rows written since) or `full` (the source summed whole under the pause: a row
   * older than the base was changed or deleted just before the pause; or no snapshot was taken).
   */
  readonly checksumScan?: 'changes' | 'full';
  /** When the switch recorded the new placement; the source is removed a directory cache time later. */
  readonly switchedAt?: string;
}

/** A move as the API shows it. */
export interface MoveView {
  readonly id: string;
  readonly tenantId: string;
  readonly state: MoveState;
  readonly source: MoveEnd;
  readonly target: MoveEnd;
  readonly legalBasis: string | null;
  readonly progress: MoveProgress & { readonly percent: number };
  readonly checksums: { readonly source: Checksums; readonly target: Checksums } | null;
  readonly error: string | null;
  readonly actor: string;
  readonly createdAt: string;
  readonly updatedAt: string;
  readonly finishedAt: string | null;
}

/** Options of the mover. */
export interface MovesOptions {
  /** Rows per copy batch (default 2,000). */
  readonly batchSize?: number;
  /**
   * Longest write pause at the switch (default 5 s): writes under way that do not finish within it
   * fail the move, which then rolls back and leaves the tenant where it was.
   */
  readonly maxPauseMs?: number;
  /**
   * Called after every persisted step (state change or copy batch), with the move as stored. A
   * progress bar listens here; crash tests kill the process from here to stop it at a chosen step.
   */
  readonly onStep?: (move: MoveView) => void | Promise<void>;
  /**
   * Called in the switch after the comparison base is taken and before writes pause, with the
   * tenant id. Tests write from here to land a change in that window.
   */
  readonly beforePause?: (tenantId: string) => void | Promise<void>;
  /**
   * Called in `cleaning` when the move changed the tenant's region, once every process routes to
   * the new placement and before the source is removed: the keyring wraps the tenant's keys again
   * under its key in the new region (so its keys depend on that region's KMS only). Idempotent.
   */
  readonly onRegionChange?: (tenantId: string, from: string, to: string) => Promise<unknown>;
}

/** Catch-up passes before the switch: at most this many, ending early once one changes this few rows. */
const CATCH_UP_PASSES = 3;
const CATCH_UP_ROWS = 300;

const OPEN: readonly MoveState[] = ['planned', 'copying', 'verifying', 'switching', 'cleaning', 'failed'];
const SELECT_MOVE =
  'SELECT id, tenant_id, state, source, target, legal_basis, progress, checksums, error, actor, created_at, updated_at, finished_at FROM bulkhead.moves';

function invalid(message: string, field: string): never {
  throw new BulkheadError('MOVE_INVALID', message, { details: { field } });
}

/**
 * Online tenant moves between tiers, cells and regions: a state machine persisted in the control
 * plane, so a crash resumes the move from the state it was in. Each step is idempotent: the copy
 * upserts by key from a persisted cursor, the sync compares both sides row by row, the switch is
 * one transaction, and the source is removed only after the switch recorded verified checksums.
 */
export class Moves {
  readonly #placements: Placements;
  readonly #batchSize: number;
  readonly #maxPauseMs: number;
  readonly #onStep: MovesOptions['onStep'];
  readonly #beforePause: MovesOptions['beforePause'];
  readonly #onRegionChange: MovesOptions['onRegionChange'];
  readonly #running = new Map<string, Promise<void>>();
  #closing = false;

  constructor(placements: Placements, options: MovesOptions = {}) {
    this.#placements = placements;
    this.#batchSize = options.batchSize ?? 2_000;
    this.#maxPauseMs = options.maxPauseMs ?? 5_000;
    this.#onStep = options.onStep;
    this.#beforePause = options.beforePause;
    this.#onRegionChange = options.onRegionChange;
  }

  /**
   * Plans a move and starts it in the background. Refuses an unknown tier, cell or region, a
   * tenant that is not active, a tenant already moving, a target equal to the source, and a
   * region change without a legal basis; none of these changes anything.
   */
  async start(tenant: TenantRow, input: unknown, actor: string): Promise<MoveView> {
    if (typeof input !== 'object' || input === null || Array.isArray(input)) invalid('the body must be a JSON object', 'body');
    const { tier, cell, region, legalBasis, ...rest } = input as Record<string, unknown>;
    const unknown = Object.keys(rest)[0];
    if (unknown !== undefined) invalid(`unknown property "${/^[A-Za-z0-9_]{1,40}$/.test(unknown) ? unknown : '(invalid name)'}"`, 'body');
    if (typeof tier !== 'string' || !(TIERS as readonly string[]).includes(tier)) invalid(`tier must be one of ${TIERS.join(', ')}`, 'tier');
    if (cell !== undefined && (typeof cell !== 'string' || !PLACE_NAME.test(cell))) invalid('cell must be the name of a configured cell', 'cell');
    if (region !== undefined && (typeof region !== 'string' || !PLACE_NAME.test(region))) invalid('region must be a region name', 'region');
    if (legalBasis !== undefined && (typeof legalBasis !== 'string' || legalBasis.trim().length < 10 || legalBasis.length > 2000)) {
      invalid('legalBasis must be a statement of 10 to 2000 characters (e.g. "GDPR Art. 46(2)(c) standard contractual clauses, ref. ...")', 'legalBasis');
    }
    if (tenant.status !== 'active') {
      throw new BulkheadError('MOVE_INVALID', `the tenant is ${tenant.status}; only an active tenant can be moved`, { details: { field: 'tenant' } });
    }
    const current = await this.#placements.resolve(tenant.id);
    if (!current) throw new NotFoundError('TENANT_NOT_FOUND', 'no such tenant');
    const toRegion = (region as string | undefined) ?? (cell !== undefined ? this.#placements.cells.get(cell as string).region : tenant.region);
    if (!this.#placements.cells.inRegion(toRegion).length) {
      throw new BulkheadError('PLACEMENT_NO_CELL', `no storage cell serves region ${toRegion}; add one to the cells setting`, { details: { field: 'region' } });
    }
    if (toRegion !== tenant.region && legalBasis === undefined) {
      throw new BulkheadError('RESIDENCY_LEGAL_BASIS_REQUIRED', `moving the tenant's data from region ${tenant.region} to ${toRegion} needs a legalBasis`, {
        details: { field: 'legalBasis' },
      });
    }
    const toCell: Cell =
      cell !== undefined
        ? this.#placements.cells.get(cell as string)
        : toRegion === current.region
          ? this.#placements.cells.get(current.cell)
          : this.#placements.cells.inRegion(toRegion)[0]!;
    if (toCell.region !== toRegion) {
      throw new BulkheadError('RESIDENCY_VIOLATION', `cell ${toCell.name} is in region ${toCell.region}, not ${toRegion}`, { details: { field: 'cell' } });
    }
    const t = this.#placements.tiers[tier as TierName];
    const target: MoveEnd = { tier: tier as TierName, cell: toCell.name, location: t.locationOf(toCell, tenant.id), region: toRegion };
    const source: MoveEnd = { tier: current.tier, cell: current.cell, location: current.location, region: current.region };
    if (target.tier === source.tier && target.cell === source.cell && target.location === source.location) {
      invalid(`the tenant is already on the ${source.tier} tier in cell ${source.cell}`, 'tier');
    }
    const id = uuidv7();
    try {
      await this.#placements.control.store.platform().batch([
        {
          text: "INSERT INTO bulkhead.moves (id, tenant_id, state, source, target, legal_basis, progress, actor) VALUES ($1, $2, 'planned', $3::text::jsonb, $4::text::jsonb, $5, $6::text::jsonb, $7)",
          values: [id, tenant.id, JSON.stringify(source), JSON.stringify(target), legalBasis ?? null, JSON.stringify(emptyProgress()), actor],
        },
      ]);
    } catch (error) {
      if (error instanceof DatabaseError && error.kind === 'unique') {
        throw new BulkheadError('MOVE_IN_PROGRESS', 'the tenant is already being moved; follow that move or wait for it to finish', { details: { field: 'tenant' } });
      }
      throw error;
    }
    const move = await this.get(tenant.id, id);
    this.run(id);
    return move;
  }

  /** One move of a tenant. */
  async get(tenantId: string, moveId: string): Promise<MoveView> {
    if (!isUuid(moveId)) throw new NotFoundError('MOVE_NOT_FOUND', 'no such move of this tenant');
    const [r] = await this.#placements.control.store.platform().batch([{ text: `${SELECT_MOVE} WHERE id = $1 AND tenant_id = $2`, values: [moveId, tenantId] }]);
    const row = r!.rows[0];
    if (!row) throw new NotFoundError('MOVE_NOT_FOUND', 'no such move of this tenant');
    return toView(row);
  }

  /** The moves of a tenant, newest first. */
  async list(tenantId: string): Promise<MoveView[]> {
    const [r] = await this.#placements.control.store.platform().batch([{ text: `${SELECT_MOVE} WHERE tenant_id = $1 ORDER BY id DESC`, values: [tenantId] }]);
    return r!.rows.map(toView);
  }

  /** Resumes every unfinished move (after a restart); returns their ids. */
  async resume(): Promise<string[]> {
    const [r] = await this.#placements.control.store.platform().batch([
      { text: 'SELECT id FROM bulkhead.moves WHERE state = ANY ($1::text[]) ORDER BY id', values: [`{${OPEN.join(',')}}`] },
    ]);
    const ids = r!.rows.map((row) => row.id as string);
    for (const id of ids) this.run(id);
    return ids;
  }

  /** Runs a move to its end in the background (once per process); `wait` resolves when it stops. */
  run(moveId: string): void {
    if (this.#running.has(moveId) || this.#closing) return;
    const done = this.#drive(moveId).finally(() => this.#running.delete(moveId));
    // A failure is recorded in the move itself; the promise only tells when the runner stopped.
    this.#running.set(moveId, done.catch(() => {}));
  }

  /** Waits until the move's runner in this process has stopped. */
  async wait(moveId: string): Promise<void> {
    await this.#running.get(moveId);
  }

  /** Stops starting new steps and waits for the runners to reach a persisted point. */
  async close(): Promise<void> {
    this.#closing = true;
    await Promise.all([...this.#running.values()]);
  }

  async #drive(moveId: string): Promise<void> {
    let attempts = 0;
    for (;;) {
      const move = await this.#load(moveId);
      if (move.state === 'done' || move.state === 'rolled_back') return;
      if (this.#closing) return;
      try {
        await this.#step(move);
        attempts = 0;
      } catch (error) {
        if (this.#closing) return;
        // Codes and SQLSTATEs only: a message could quote data.
        const code = error instanceof BulkheadError ? error.code : 'INTERNAL';
        const sqlState = error instanceof DatabaseError && error.sqlState ? ` (SQLSTATE ${error.sqlState})` : '';
        const detail = code === 'MOVE_CHECKSUM_MISMATCH' ? ` ${(error as Error).message}` : '';
        const reason = `${move.state}: ${code}${sqlState}${detail}`;
        if (move.state === 'cleaning' || move.state === 'failed') {
          // After the switch (or while rolling back) there is no going back: record why and try
          // again a few times; a restart resumes it after that.
          await this.#placements.control.store.platform().batch([{ text: 'UPDATE bulkhead.moves SET error = $2, updated_at = now() WHERE id = $1', values: [moveId, reason] }]);
          if (++attempts >= 3) throw error;
          await new Promise((resolve) => setTimeout(resolve, 500 * attempts));
          continue;
        }
        // Before the switch nothing is lost by giving up: record why, then roll back.
        await this.#setState(move, 'failed', { error: reason });
      }
    }
  }

  async #step(move: MoveView): Promise<void> {
    const { tenantId } = move;
    switch (move.state) {
      case 'planned': {
        const row = await this.#tenantRow(tenantId);
        await this.#placements.tiers[move.target.tier].provision(this.#placements.cells.get(move.target.cell), row);
        const total = await rowCounts(await this.#scope(move.source, tenantId), tenantId);
        await this.#setState(move, 'copying', { progress: { ...emptyProgress(), total } });
        return;
      }
      case 'copying': {
        const source = await this.#scope(move.source, tenantId);
        const target = await this.#scope(move.target, tenantId);
        let { table, cursor, copied } = move.progress;
        while (table < COPY_TABLES.length) {
          if (this.#closing) return;
          const batch = await copyBatch(source, target, tenantId, COPY_TABLES[table]!, cursor, this.#batchSize);
          copied += batch.rows;
          if (batch.next === null) {
            table += 1;
            cursor = null;
          } else {
            cursor = batch.next;
          }
          move = await this.#saveProgress(move, { ...move.progress, table, cursor, copied });
        }
        await this.#setState(move, 'verifying');
        return;
      }
      case 'verifying': {
        // Writes went on during the copy: bring the target in line, then compare. The comparison
        // that decides is repeated at the switch with writes paused.
        const source = await this.#scope(move.source, tenantId);
        const target = await this.#scope(move.target, tenantId);
        let snapshot = await snapshotOf(source);
        let synced = await syncChanges(source, target, tenantId, this.#batchSize);
        // Catch-up passes over what was written meanwhile, each from a fresh snapshot, so the pass
        // under the pause finds only the writes of the last one.
        for (let pass = 0; pass < CATCH_UP_PASSES && !this.#closing; pass++) {
          const next = await snapshotOf(source);
          const changed = await syncSince(source, target, tenantId, snapshot, this.#batchSize);
          synced += changed;
          snapshot = next;
          if (changed <= CATCH_UP_ROWS) break;
        }
        await this.#setState(move, 'switching', { progress: { ...move.progress, synced: (move.progress.synced ?? 0) + synced, snapshot } });
        return;
      }
      case 'switching': {
        await this.#switch(move);
        return;
      }
      case 'cleaning': {
        // Another process may still read the source until its directory entry expires: the source
        // goes once every process has seen the new placement.
        const switched = move.progress.switchedAt ? Date.parse(move.progress.switchedAt) : 0;
        const wait = switched + this.#placements.cacheTtlMs - Date.now();
        if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
        if (move.source.region !== move.target.region) await this.#onRegionChange?.(tenantId, move.source.region, move.target.region);
        await this.#placements.drop(tenantId, move.source);
        await this.#setState(move, 'done', { finished: true });
        return;
      }
      case 'failed': {
        // The switch never happened (it is one transaction that also leaves this state), so the
        // source is intact and still the tenant's placement: remove the partial target.
        const placed = await this.#placements.resolve(tenantId);
        if (placed && placed.location === move.target.location && placed.cell === move.target.cell) {
          throw new BulkheadError('INTERNAL', 'a failed move finds the tenant on its target; it needs an operator');
        }
        await this.#placements.drop(tenantId, move.target);
        await this.#placements.unfenceWrites(tenantId, move.source);
        await this.#placements.resumeWrites(tenantId);
        await this.#setState(move, 'rolled_back', { finished: true });
        return;
      }
      default:
        return;
    }
  }

  /**
   * Pauses writes, brings the target exactly in line, compares checksums of every collection on
   * both sides, and records the new placement, the checksums and the next state in ONE control
   * transaction. A mismatch fails the move (the source stays the placement). The comparison base
   * is taken before the pause (`prePause`), so the pause costs what was written since the
   * verification's snapshot, not a scan of the tenant.
   */
  async #switch(move: MoveView): Promise<void> {
    const { tenantId } = move;
    const source = await this.#scope(move.source, tenantId);
    const target = await this.#scope(move.target, tenantId);
    let synced = 0;
    let pre: PrePause | null = null;
    if (move.progress.snapshot) {
      // One more catch-up pass from a fresh snapshot, then the comparison base at that snapshot:
      // the pause then finds only what was written in the last seconds.
      const next = await snapshotOf(source);
      synced += await syncSince(source, target, tenantId, move.progress.snapshot, this.#batchSize);
      pre = await prePause(source, target, tenantId, next);
    }
    await this.#beforePause?.(tenantId);
    const started = Date.now();
    await this.#placements.pauseWrites(tenantId, this.#maxPauseMs);
    try {
      // Other processes may route writes with an outdated entry: the source's database refuses
      // them from here on, after the ones under way have finished.
      await this.#placements.fenceWrites(tenantId, move.source);
      let sourceSums: Checksums;
      let targetSums: Checksums;
      let checksumScan: MoveProgress['checksumScan'] = 'full';
      if (pre) {
        const sync = await syncAtSwitch(source, target, tenantId, pre, this.#batchSize);
        synced += sync.changed;
        ({ source: sourceSums, target: targetSums } = sync);
        if (!sync.fullScan) checksumScan = 'changes';
      } else {
        synced += await syncChanges(source, target, tenantId, this.#batchSize);
        [sourceSums, targetSums] = await Promise.all([checksums(source, tenantId), checksums(target, tenantId)]);
      }
      const differ = checksumDiff(sourceSums, targetSums);
      if (differ.length > 0) {
        // Table names only: collection names are the tenant's own.
        const tables = [...new Set(differ.map((k) => k.split('/')[0]))].join(', ');
        throw new BulkheadError('MOVE_CHECKSUM_MISMATCH', `the copy differs from the source in ${differ.length} collection table(s) (${tables})`);
      }
      const row = await this.#tenantRow(tenantId);
      // The registry row itself is fenced when the source reads it (a pool or bridge source in the
      // control cell): the switch makes it active again, at the next epoch.
      const status = row.status === 'migrating' ? 'active' : row.status;
      const moved: TenantRow = { ...row, status, tier: move.target.tier, region: move.target.region, epoch: (row.epoch ?? 1) + 1 };
      // The copy of the registry row at the target must say what the registry will say.
      await this.#placements.tiers[move.target.tier].mirror(this.#placements.cells.get(move.target.cell), moved, move.target.location);
      const pauseMs = Date.now() - started;
      const progress: MoveProgress = { ...move.progress, synced: (move.progress.synced ?? 0) + synced, pauseMs, checksumScan, switchedAt: new Date().toISOString() };
      await this.#placements.control.store.platform().batch([
        this.#placements.recordStatement(tenantId, move.target),
        {
          text:
            "UPDATE bulkhead.tenants SET tier = $2, region = $3, status = CASE WHEN status = 'migrating' THEN 'active' ELSE status END, " +
            'placement_epoch = $4, updated_at = now() WHERE id = $1',
          values: [tenantId, move.target.tier, move.target.region, moved.epoch],
        },
        {
          text: "INSERT INTO bulkhead.tenant_history (tenant_id, event, from_status, to_status, actor) VALUES ($1, 'moved', $2, $2, $3)",
          values: [tenantId, status, move.actor],
        },
        {
          text:
            "UPDATE bulkhead.moves SET state = 'cleaning', progress = $2::text::jsonb, checksums = $3::text::jsonb, updated_at = now() " +
            "WHERE id = $1 AND state = 'switching'",
          values: [move.id, JSON.stringify(progress), JSON.stringify({ source: sourceSums, target: targetSums })],
        },
      ]);
      this.#placements.releasePause(tenantId);
      await this.#emit(move.id);
    } catch (error) {
      await this.#placements.unfenceWrites(tenantId, move.source).catch(() => {});
      await this.#placements.resumeWrites(tenantId).catch(() => {});
      throw error;
    }
  }

  async #scope(end: MoveEnd, tenantId: string): Promise<ScopedStore> {
    const cell = this.#placements.cells.get(end.cell);
    if (cell.region !== end.region) throw new BulkheadError('RESIDENCY_VIOLATION', `cell ${cell.name} is not in region ${end.region}`);
    return this.#placements.tiers[end.tier].scope(cell, tenantId, end.location, { requireActive: false });
  }

  async #tenantRow(tenantId: string): Promise<TenantRow> {
    const [r] = await this.#placements.control.store.platform().batch([
      { text: 'SELECT id, slug, name, status, tier, region, placement_epoch AS epoch FROM bulkhead.tenants WHERE id = $1', values: [tenantId] },
    ]);
    const row = r!.rows[0];
    if (!row) throw new NotFoundError('TENANT_NOT_FOUND', 'no such tenant');
    return row as unknown as TenantRow;
  }

  async #load(moveId: string): Promise<MoveView> {
    const [r] = await this.#placements.control.store.platform().batch([{ text: `${SELECT_MOVE} WHERE id = $1`, values: [moveId] }]);
    const row = r!.rows[0];
    if (!row) throw new NotFoundError('MOVE_NOT_FOUND', 'no such move');
    return toView(row);
  }

  async #saveProgress(move: MoveView, progress: MoveProgress): Promise<MoveView> {
    await this.#placements.control.store.platform().batch([
      { text: 'UPDATE bulkhead.moves SET progress = $2::text::jsonb, updated_at = now() WHERE id = $1', values: [move.id, JSON.stringify(progress)] },
    ]);
    const next = { ...move, progress: withPercent(progress) };
    await this.#onStep?.(next);
    return next;
  }

  async #setState(move: MoveView, state: MoveState, changes: { progress?: MoveProgress; error?: string; finished?: boolean } = {}): Promise<void> {
    await this.#placements.control.store.platform().batch([
      {
        text:
          'UPDATE bulkhead.moves SET state = $2, progress = coalesce($3::text::jsonb, progress), error = coalesce($4, error), ' +
          'finished_at = CASE WHEN $5 THEN now() ELSE finished_at END, updated_at = now() WHERE id = $1 AND state = $6',
        values: [move.id, state, changes.progress ? JSON.stringify(changes.progress) : null, changes.error ?? null, changes.finished ?? false, move.state],
      },
    ]);
    await this.#emit(move.id);
  }

  async #emit(moveId: string): Promise<void> {
    if (this.#onStep) await this.#onStep(await this.#load(moveId));
  }
}

function emptyProgress(): MoveProgress {
  return { copied: 0, total: 0, table: 0, cursor: null };
}

function withPercent(p: MoveProgress): MoveProgress & { percent: number } {
  const percent = p.total === 0 ? (p.table >= COPY_TABLES.length ? 100 : 0) : Math.min(100, Math.floor((p.copied / p.total) * 100));
  return { ...p, percent };
}

function toView(row: Record<string, unknown>): MoveView {
  const iso = (v: unknown) => (v instanceof Date ? v.toISOString() : v === null || v === undefined ? null : String(v));
  return {
    id: row.id as string,
    tenantId: row.tenant_id as string,
    state: row.state as MoveState,
    source: row.source as MoveEnd,
    target: row.target as MoveEnd,
    legalBasis: (row.legal_basis as string | null) ?? null,
    progress: withPercent(row.progress as MoveProgress),
    checksums: (row.checksums as MoveView['checksums']) ?? null,
    error: (row.error as string | null) ?? null,
    actor: row.actor as string,
    createdAt: iso(row.created_at)!,
    updatedAt: iso(row.updated_at)!,
    finishedAt: iso(row.finished_at),
  };
}
