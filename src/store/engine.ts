/**
 * The small interface between the core and a storage engine (PGlite or PostgreSQL via `pg`),
 * the way Kysely separates its core from a dialect's driver. Core modules never import an
 * engine library; they receive an `Engine`.
 */
import { isPlainIdentifier } from '../ids.js';

/**
 * The search path every session of an engine starts with: the pool's schema, where the migrations
 * create the data tables first. Named statements are parsed outside any batch, so the unqualified
 * table names of tenant statements must resolve there; a batch of a tenant outside the pool sets
 * its own schema's path for its transaction only.
 */
export const SESSION_SEARCH_PATH = 'bulkhead,public';

/** One SQL statement with bound parameters. `name` asks the engine to keep it prepared. */
export interface Statement {
  readonly text: string;
  readonly values?: readonly unknown[];
  /** A stable name for a statement whose text never changes; lets the engine prepare it once per connection. */
  readonly name?: string;
}

/** The rows one statement returned (column names as keys) and how many rows it touched. */
export interface StatementResult<R = Record<string, unknown>> {
  readonly rows: R[];
  readonly rowCount: number;
}

/** An interactive transaction: several batches on one connection, committed together. */
export interface EngineTransaction {
  /** Runs the statements in order, in one round trip where the engine can. */
  batch(statements: readonly Statement[]): Promise<StatementResult[]>;
}

/** A storage engine. Every method fails with `DatabaseError` (SQLSTATE kept in `cause`). */
export interface Engine {
  /** `pglite` (embedded) or `postgres`. */
  readonly kind: 'pglite' | 'postgres';
  /**
   * Runs the statements in order in ONE transaction, in one round trip where the engine can.
   * Any failure rolls the whole batch back; the error's `statementIndex` names the failing one.
   */
  batch(statements: readonly Statement[]): Promise<StatementResult[]>;
  /** Runs `fn` in one transaction on one connection; commits when it resolves, rolls back when it throws. */
  transaction<T>(fn: (tx: EngineTransaction) => Promise<T>): Promise<T>;
  /** Runs a multi-statement script without parameters (migrations and provisioning) in one transaction. */
  script(sql: string): Promise<void>;
  /** Releases connections. */
  close(): Promise<void>;
}

/**
 * Where a storage cell's databases live: its main database (pool and bridge tenants) and the
 * silo databases beside it (a database on the same PostgreSQL server, or a PGlite directory).
 */
export interface DatabaseHost {
  readonly kind: 'pglite' | 'postgres';
  /** The engine on the cell's main database. */
  main(): Promise<Engine>;
  /** An engine on database `name` beside the main one; `create` makes it first when absent (idempotent). */
  database(name: string, options: { readonly create: boolean }): Promise<Engine>;
  /** Closes and removes database `name`; nothing happens when it does not exist. */
  dropDatabase(name: string): Promise<void>;
  /** Closes every engine this host opened. */
  close(): Promise<void>;
}

/** Refuses a database name that is not a plain lower-case identifier (it ends up in DDL or a path). */
export function checkDatabaseName(name: string): string {
  if (!isPlainIdentifier(name)) throw new TypeError('a database name must be a plain lower-case identifier');
  return name;
}
