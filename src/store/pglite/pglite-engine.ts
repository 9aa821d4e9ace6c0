import { mkdirSync } from 'node:fs';
import { PGlite, type Transaction } from '@electric-sql/pglite';
import { DatabaseError, sqlStateOf } from '../../errors.js';
import { SESSION_SEARCH_PATH, type Engine, type EngineTransaction, type Statement, type StatementResult } from '../engine.js';

/** Options of the embedded engine. */
export interface PgliteEngineOptions {
  /** A data directory, or `memory://` for a throw-away in-memory database (tests). */
  readonly dataDir: string;
}

/**
 * Embedded PostgreSQL (PGlite: PostgreSQL in WASM, one connection, in-process). Every batch runs
 * inside `PGlite.transaction`, which holds PGlite's transaction lock, so no other batch can
 * interleave with it on the single connection.
 */
export class PgliteEngine implements Engine {
  readonly kind = 'pglite' as const;
  readonly #db: PGlite;

  private constructor(db: PGlite) {
    this.#db = db;
  }

  /** Opens (creating if needed) the data directory. */
  static async open(options: PgliteEngineOptions): Promise<PgliteEngine> {
    if (!options.dataDir.startsWith('memory://')) mkdirSync(options.dataDir, { recursive: true });
    const db = await PGlite.create(options.dataDir);
    // As on PostgreSQL (see PostgresEngineOptions.searchPath): the pool schema unless a batch says otherwise.
    await db.exec(`SET search_path TO ${SESSION_SEARCH_PATH}`);
    return new PgliteEngine(db);
  }

  async batch(statements: readonly Statement[]): Promise<StatementResult[]> {
    return this.transaction((tx) => tx.batch(statements));
  }

  async transaction<T>(fn: (tx: EngineTransaction) => Promise<T>): Promise<T> {
    try {
      return await this.#db.transaction(async (ptx) => fn({ batch: (statements) => runAll(ptx, statements) }));
    } catch (error) {
      throw error instanceof DatabaseError || sqlStateOf(error) === undefined ? error : new DatabaseError(error);
    }
  }

  async script(sql: string): Promise<void> {
    try {
      await this.#db.transaction(async (tx) => {
        await tx.exec(sql);
      });
    } catch (error) {
      throw new DatabaseError(error);
    }
  }

  async close(): Promise<void> {
    await this.#db.close();
  }
}

async function runAll(tx: Transaction, statements: readonly Statement[]): Promise<StatementResult[]> {
  // Checked before anything runs: PGlite would bind an object as String(value) ("[object Object]").
  for (const [index, s] of statements.entries()) {
    for (const v of s.values ?? []) {
      if (!isScalar(v)) throw new DatabaseError(new TypeError('a statement parameter has an unsupported type'), index);
    }
  }
  const results: StatementResult[] = [];
  for (const [index, s] of statements.entries()) {
    try {
      const r = await tx.query<Record<string, unknown>>(s.text, (s.values ?? []) as unknown[]);
      results.push({ rows: r.rows, rowCount: r.affectedRows ?? r.rows.length });
    } catch (error) {
      throw new DatabaseError(error, index);
    }
  }
  return results;
}

/** The parameter types the core binds (the same set as the PostgreSQL pipeline's `toWire`). */
function isScalar(value: unknown): boolean {
  switch (typeof value) {
    case 'undefined':
    case 'string':
    case 'bigint':
    case 'boolean':
      return true;
    case 'number':
      return Number.isFinite(value);
    default:
      return value === null || value instanceof Date;
  }
}
