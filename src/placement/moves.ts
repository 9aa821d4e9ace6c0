import { BulkheadError, DatabaseError, NotFoundError } from '../errors.js';
import { isUuid, uuidv7 } from '../ids.js';
import type { ScopedStore } from '../store/store.js';
import type { Cell } from './cells.js';
import { installCapture, removeCapture, type CaptureSite } from './capture.js';
import {
  COPY_TABLES,
  SwitchState,
  catchUp,
  catchUpSince,
  checksumDiff,
  checksums,
  copiedWithRecords,
  readBatch,
  rowCounts,
  switchBase,
  switchSync,
  syncChanges,
  timed,
  writeBatch,
  type Checksums,
  type Cursor,
  type ReadBatch,
  type StepTimes,
} from './copy.js';
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
  /** Where the pause went: ms per step of the switch under it (parallel steps overlap). */
  readonly pauseSteps?: StepTimes;
  /** Records the switch copied again under the pause: those written since its comparison base. */
  readonly pauseRecords?: number;
  /**
   * Whether the source's changes are being captured (capture.ts): set once the triggers are made
   * (in `planned`), cleared once they are removed (after the switch, or on rollback). A move
   * persisted before capture existed has it unset and is brought in line by a full sync first.
   */
  readonly capture?: boolean;
  /**
   * How the switch's checksums were taken: `changes` (the comparison base taken before the pause,
   * adjusted for the records written since) or `full` (both sides summed whole under the pause,
   * when the base did not agree even after a full sync).
   */
  readonly checksumScan?: 'changes' | 'full';
  /** Set when the copy carries each batch of records with their unique and index values (`readBatch`). */
  readonly valuesWithRecords?: boolean;
  /** When the switch recorded the new placement (taken just before its transaction). */
  readonly switchedAt?: string;
  /** When the switch's transaction had committed; the source is removed a directory cache time later. */
  readonly switchCommittedAt?: string;
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

/**
 * Catch-up passes (from the change log) before the comparison base: at most this many, ending
 * early once a pass found this few records to copy again. Each pass copies what was written during
 * the one before, so they shrink quickly; the switch's pause then copies the writes of the base.
 */
const CATCH_UP_PASSES = 6;
const CATCH_UP_RECORDS = 300;
/** Passes after the comparison base end once one copied this few records: about what the pause then copies. */
const PAUSE_RECORDS = 50;
/** Comparison bases taken before giving up on one that agrees (each after a full sync) and summing both sides whole under the pause. */
const BASE_ATTEMPTS = 2;

const OPEN: readonly MoveState[] = ['planned', 'copying', 'verifying', 'switching', 'cleaning', 'failed'];
const SELECT_MOVE =
  'SELECT id, tenant_id, state, source, target, legal_basis, progress, checksums, error, actor, created_at, updated_at, finished_at FROM bulkhead.moves';

function invalid(message: string, field: string): never {
  throw new BulkheadError('MOVE_INVALID', message, { details: { field } });
}

/**
 * Online tenant moves between tiers, cells and regions: a state machine persisted in the control
 * plane, so a crash resumes the move from the state it was in. Each step is idempotent: the copy
 * inserts by key from a persisted cursor, the catch-up copies again the records the source's change
 * log names (capture.ts) and removes their entries only once they are in, the switch is one
 * transaction, and the source is removed only after the switch recorded verified checksums.
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
        // Before the copy reads anything: from here on every change of the tenant's records at
        // the source is named in its change log, so the copy may read a row at any time.
        await installCapture(await this.#site(move.source, tenantId), tenantId);
        const total = await rowCounts(await this.#scope(move.source, tenantId), tenantId);
        await this.#setState(move, 'copying', { progress: { ...emptyProgress(), total, capture: true, valuesWithRecords: true } });
        return;
      }
      case 'copying': {
        const source = await this.#scope(move.source, tenantId);
        const target = await this.#scope(move.target, tenantId);
        let { table, cursor, copied } = move.progress;
        // A move planned before values travelled with their records copies them table by table.
        const withValues = move.progress.valuesWithRecords === true;
        // The next batch is read while the one before is written and its cursor saved: the
        // source's read and the target's insert overlap. A crash loses only the read ahead.
        let ahead: Promise<ReadBatch> | null = null;
        while (table < COPY_TABLES.length) {
          if (this.#closing) return;
          const spec = COPY_TABLES[table]!;
          if (withValues && copiedWithRecords(spec)) {
            table += 1;
            cursor = null;
            continue;
          }
          const batch: ReadBatch = await (ahead ?? readBatch(source, tenantId, spec, cursor, this.#batchSize, withValues));
          ahead = batch.next === null ? null : readBatch(source, tenantId, spec, batch.next, this.#batchSize, withValues);
          // A read ahead that fails is retried by the next run of this step; its error must not go unhandled meanwhile.
          ahead?.catch(() => {});
          await writeBatch(target, tenantId, batch);
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
        // Writes went on during the copy, each named in the change log: copy those records again,
        // pass after pass, until a pass finds few. The comparison that decides is at the switch.
        const ends = await this.#ends(move);
        const { source, target, site, progress } = ends;
        let synced = ends.synced;
        for (let pass = 0; pass < CATCH_UP_PASSES && !this.#closing; pass++) {
          const done = await catchUp(site, source, target, tenantId, this.#batchSize);
          synced += done.rows;
          if (done.keys <= CATCH_UP_RECORDS) break;
        }
        await this.#setState(move, 'switching', { progress: { ...progress, synced: (progress.synced ?? 0) + synced } });
        return;
      }
      case 'switching': {
        await this.#switch(move);
        return;
      }
      case 'cleaning': {
        // Another process may still read the source until its directory entry expires: the source
        // goes once every process has seen the new placement. An entry's age counts from before
        // its read, so every entry read before the switch committed has expired a cache time after
        // the commit. Without the commit's time (a crash right after it), the commit came before
        // this step read the move: a cache time from now is later still.
        const committed = move.progress.switchCommittedAt ? Date.parse(move.progress.switchCommittedAt) : Date.now();
        const wait = committed + this.#placements.cacheTtlMs - Date.now();
        if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
        if (move.source.region !== move.target.region) await this.#onRegionChange?.(tenantId, move.source.region, move.target.region);
        // The capture goes first (recorded, as a silo's database may be gone when this resumes):
        // the purge of a pool source then logs nothing.
        move = await this.#stopCapture(move, move.source);
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
        move = await this.#stopCapture(move, move.source);
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
   * is taken before the pause (`switchBase`) and the change log names what was written since, so
   * the pause costs the records written during the base, not a pass over the tenant.
   */
  async #switch(move: MoveView): Promise<void> {
    const { tenantId } = move;
    const ends = await this.#ends(move);
    const { source, target, site, progress } = ends;
    let synced = ends.synced;
    // One more pass over what was written since the verification, then the comparison base. A
    // base that does not agree (the target differs from the source on a record the log does not
    // name, which the capture rules out) gets a full sync and another try.
    synced += (await catchUp(site, source, target, tenantId, this.#batchSize)).rows;
    let state: SwitchState | null = null;
    for (let attempt = 1; attempt <= BASE_ATTEMPTS && state === null; attempt++) {
      const base = await switchBase(site, source, target, tenantId);
      if (base.agrees) state = new SwitchState(base);
      else {
        synced += await syncChanges(source, target, tenantId, this.#batchSize);
        synced += (await catchUp(site, source, target, tenantId, this.#batchSize)).rows;
      }
    }
    // The base took a pass over the tenant, with writes going on: copy what they wrote meanwhile,
    // pass after pass, so that the pause finds only the records of the last one.
    if (state) {
      for (let pass = 0; pass < CATCH_UP_PASSES && !this.#closing; pass++) {
        const done = await catchUpSince(site, source, target, tenantId, state, this.#batchSize);
        synced += done.rows;
        if (done.keys <= PAUSE_RECORDS) break;
      }
    }
    await this.#beforePause?.(tenantId);
    const started = Date.now();
    const times: StepTimes = {};
    await timed(times, 'pause', () => this.#placements.pauseWrites(tenantId, this.#maxPauseMs));
    try {
      // Other processes may route writes with an outdated entry: the source's database refuses
      // them from here on, after the ones under way have finished.
      await timed(times, 'fence', () => this.#placements.fenceWrites(tenantId, move.source));
      // Read now, with the sync: the registry row is fenced (`migrating`) and stays so until the switch.
      const registryRow = timed(times, 'tenant row', () => this.#tenantRow(tenantId));
      registryRow.catch(() => {});
      let sourceSums: Checksums;
      let targetSums: Checksums;
      let checksumScan: MoveProgress['checksumScan'] = 'full';
      let pauseRecords: number | undefined;
      if (state) {
        const sync = await timed(times, 'sync', () => switchSync(site, source, target, tenantId, state, this.#batchSize, times));
        synced += sync.changed;
        pauseRecords = sync.keys;
        ({ source: sourceSums, target: targetSums } = sync);
        checksumScan = 'changes';
      } else {
        synced += await timed(times, 'sync', () => syncChanges(source, target, tenantId, this.#batchSize));
        [sourceSums, targetSums] = await timed(times, 'final sums', () => Promise.all([checksums(source, tenantId), checksums(target, tenantId)]));
      }
      const differ = checksumDiff(sourceSums, targetSums);
      if (differ.length > 0) {
        // Table names only: collection names are the tenant's own.
        const tables = [...new Set(differ.map((k) => k.split('/')[0]))].join(', ');
        throw new BulkheadError('MOVE_CHECKSUM_MISMATCH', `the copy differs from the source in ${differ.length} collection table(s) (${tables})`);
      }
      const row = await registryRow;
      // The registry row itself is fenced when the source reads it (a pool or bridge source in the
      // control cell): the switch makes it active again, at the next epoch.
      const status = row.status === 'migrating' ? 'active' : row.status;
      const moved: TenantRow = { ...row, status, tier: move.target.tier, region: move.target.region, epoch: (row.epoch ?? 1) + 1 };
      // The copy of the registry row at the target must say what the registry will say.
      await timed(times, 'mirror', () => this.#placements.tiers[move.target.tier].mirror(this.#placements.cells.get(move.target.cell), moved, move.target.location));
      const next: MoveProgress = {
        ...progress,
        synced: (progress.synced ?? 0) + synced,
        pauseMs: Date.now() - started,
        pauseSteps: times,
        ...(pauseRecords === undefined ? {} : { pauseRecords }),
        checksumScan,
        switchedAt: new Date().toISOString(),
      };
      await timed(times, 'record switch', () =>
        this.#placements.control.store.platform().batch([
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
            values: [move.id, JSON.stringify(next), JSON.stringify({ source: sourceSums, target: targetSums })],
          },
        ]),
      );
      this.#placements.releasePause(tenantId);
      // The pause ends here, with the switch recorded: its length and steps are completed after
      // it, outside the pause (a crash in between leaves them as recorded in the switch).
      await this.#placements.control.store.platform().batch([
        {
          text: "UPDATE bulkhead.moves SET progress = progress || $2::text::jsonb WHERE id = $1 AND state = 'cleaning'",
          values: [move.id, JSON.stringify({ pauseMs: Date.now() - started, pauseSteps: times, switchCommittedAt: new Date().toISOString() })],
        },
      ]);
      await this.#emit(move.id);
    } catch (error) {
      await this.#placements.unfenceWrites(tenantId, move.source).catch(() => {});
      await this.#placements.resumeWrites(tenantId).catch(() => {});
      throw error;
    }
  }

  /**
   * The two ends of a move that brings its target in line by the source's change log, and the
   * progress to persist next. A move persisted before capture existed (its progress has no
   * `capture`) starts capturing first: the triggers, then a full sync, which brings in line
   * everything written before them (`synced`: its rows; 0 otherwise).
   */
  async #ends(move: MoveView): Promise<{ source: ScopedStore; target: ScopedStore; site: CaptureSite; progress: MoveProgress; synced: number }> {
    const source = await this.#scope(move.source, move.tenantId);
    const target = await this.#scope(move.target, move.tenantId);
    const site = await this.#site(move.source, move.tenantId);
    if (move.progress.capture) return { source, target, site, progress: move.progress, synced: 0 };
    await installCapture(site, move.tenantId);
    const synced = await syncChanges(source, target, move.tenantId, this.#batchSize);
    const progress: MoveProgress = { ...move.progress, capture: true };
    await this.#saveProgress(move, progress);
    return { source, target, site, progress, synced };
  }

  /** Removes the source's change capture unless recorded as removed, and records it so. */
  async #stopCapture(move: MoveView, end: MoveEnd): Promise<MoveView> {
    if (move.progress.capture === false) return move;
    await removeCapture(await this.#site(end, move.tenantId), move.tenantId);
    return this.#saveProgress(move, { ...move.progress, capture: false });
  }

  /** Where a placement keeps a tenant's data and its change log: its database and schema. */
  async #site(end: MoveEnd, tenantId: string): Promise<CaptureSite> {
    const cell = this.#placements.cells.get(end.cell);
    if (end.tier === 'silo') return { store: await this.#placements.tiers.silo.store(cell, tenantId, end.location), schema: 'bulkhead' };
    return { store: cell.store, schema: end.location };
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
