import pg from 'pg';
import { DatabaseError, sqlStateOf } from '../../errors.js';
import { SESSION_SEARCH_PATH, type Engine, type EngineTransaction, type Statement, type StatementResult } from '../engine.js';
import { Pipeline, preparedOn, type PipelineConnection } from './pipeline.js';

/** Options of the PostgreSQL engine. */
export interface PostgresEngineOptions {
  /** A PostgreSQL 15+ connection string. */
  readonly connectionString: string;
  /** Pool size (default 10). */
  readonly maxConnections?: number;
  /** Statement timeout in milliseconds applied to every connection (default 30 s). */
  readonly statementTimeoutMs?: number;
  /**
   * The search path sessions start with (default SESSION_SEARCH_PATH: the schema the migrations
   * create first).
   * Named statements are parsed once per connection outside any batch, so the unqualified table
   * names of tenant statements must resolve there; each batch then sets its tier's own path.
   */
  readonly searchPath?: string;
}

/**
 * PostgreSQL through `pg`. A batch goes to the server as ONE pipeline (Parse/Bind/Execute for
 * every statement, then a single Sync), so an isolated transaction costs one round trip: measured
 * here, round trips and not RLS are what make isolation expensive (see NOTES.md). Statements
 * between one Sync and the next run in one implicit transaction, so the batch is atomic.
 */
export class PostgresEngine implements Engine {
  readonly kind = 'postgres' as const;
  readonly #pool: pg.Pool;

  constructor(options: PostgresEngineOptions) {
    this.#pool = new pg.Pool({
      connectionString: options.connectionString,
      max: options.maxConnections ?? 10,
      statement_timeout: options.statementTimeoutMs ?? 30_000,
      application_name: 'bulkhead',
      options: `-c search_path=${checkSearchPath(options.searchPath ?? SESSION_SEARCH_PATH)}`,
    });
    // An idle client losing its server must not crash the process; the pool replaces it.
    this.#pool.on('error', () => {});
  }

  async batch(statements: readonly Statement[]): Promise<StatementResult[]> {
    const client = await this.#connect();
    try {
      const results = await runPipeline(client, statements);
      client.release();
      return results;
    } catch (error) {
      client.release(isConnectionLost(error));
      throw wrap(error);
    }
  }

  async transaction<T>(fn: (tx: EngineTransaction) => Promise<T>): Promise<T> {
    const client = await this.#connect();
    let begun = false;
    const tx: EngineTransaction = {
      batch: async (statements) => {
        const prefix: Statement[] = begun ? [] : [{ text: 'BEGIN', name: 'bh_begin' }];
        begun = true;
        try {
          const results = await runPipeline(client, [...prefix, ...statements]);
          return results.slice(prefix.length);
        } catch (error) {
          throw wrap(error, -prefix.length);
        }
      },
    };
    try {
      const value = await fn(tx);
      if (begun) await runPipeline(client, [{ text: 'COMMIT', name: 'bh_commit' }]);
      client.release();
      return value;
    } catch (error) {
      // Whatever failed (a statement, or the caller's own code between batches), try to roll
      // back; only a connection that cannot even do that is discarded.
      let broken = false;
      if (begun) {
        try {
          await client.query('ROLLBACK');
        } catch {
          broken = true;
        }
      }
      client.release(broken);
      throw error instanceof DatabaseError ? error : wrapIfDatabase(error);
    }
  }

  async script(sql: string): Promise<void> {
    const client = await this.#connect();
    try {
      await client.query(`BEGIN;\n${sql}\n;COMMIT;`);
      client.release();
    } catch (error) {
      await client.query('ROLLBACK').catch(() => {});
      client.release(isConnectionLost(error));
      throw wrap(error);
    }
  }

  async close(): Promise<void> {
    await this.#pool.end();
  }

  async #connect(): Promise<pg.PoolClient> {
    try {
      return await this.#pool.connect();
    } catch (error) {
      throw wrap(error);
    }
  }
}

function checkSearchPath(path: string): string {
  if (!/^[a-z_][a-z0-9_]{0,62}(,[a-z_][a-z0-9_]{0,62})*$/.test(path)) throw new TypeError('the search path must list plain lower-case schema names');
  return path;
}

async function runPipeline(client: pg.PoolClient, statements: readonly Statement[]): Promise<StatementResult[]> {
  // `connection` is pg's protocol connection; the Submittable API (used by pg-cursor) hands it
  // to `submit`, but we need it before submitting to know which names are already prepared.
  const connection = (client as unknown as { connection: PipelineConnection }).connection;
  const names = new Set<string>();
  let fresh = 0;
  for (const s of statements) {
    if (s.name === undefined || names.has(s.name)) continue;
    names.add(s.name);
    if (!preparedOn(connection, s.name)) fresh++;
  }
  if (fresh > 0) await makeRoom(client, connection, fresh, names);
  // New names are parsed in the same round trip as their first use (see Pipeline).
  const pipeline = new Pipeline(statements, 'execute');
  try {
    const results = await submit(client, pipeline);
    namesOf(connection).push(...pipeline.fresh);
    return results;
  } catch (error) {
    if (pipeline.fresh.size > 0 && !isConnectionLost(error)) {
      const closing = [...pipeline.fresh].map((name) => ({ name, text: '' }));
      await submit(client, new Pipeline(closing, 'closing')).catch(() => {});
    }
    throw error;
  }
}

/**
 * Most named statements one connection keeps. Bridge tenants get a name per schema (see
 * `statementNamer` in store.ts), so the count grows with the tenants a connection serves; past
 * this bound the oldest tenth is deallocated, and a tenant whose names went is planned again.
 */
const MAX_PREPARED = 10_000;
const prepared = new WeakMap<PipelineConnection, string[]>();

function namesOf(connection: PipelineConnection): string[] {
  let names = prepared.get(connection);
  if (!names) {
    names = [];
    prepared.set(connection, names);
  }
  return names;
}

/**
 * Deallocates the oldest tenth of the names (at least `needed`) when `needed` more would pass
 * MAX_PREPARED; never a name in `keep`, which the pipeline about to run binds to.
 */
async function makeRoom(client: pg.PoolClient, connection: PipelineConnection, needed: number, keep: ReadonlySet<string>): Promise<void> {
  const names = namesOf(connection);
  if (names.length + needed <= MAX_PREPARED) return;
  const count = Math.max(needed, Math.ceil(MAX_PREPARED / 10));
  const evicted: string[] = [];
  const kept: string[] = [];
  for (const n of names) (evicted.length < count && !keep.has(n) ? evicted : kept).push(n);
  names.splice(0, names.length, ...kept);
  // Our own names: plain identifiers and '@', quoted as identifiers.
  await client.query(evicted.map((n) => `DEALLOCATE "${n.replace(/"/g, '""')}";`).join('\n'));
  for (const n of evicted) delete connection.parsedStatements[n];
}

function submit(client: pg.PoolClient, pipeline: Pipeline): Promise<StatementResult[]> {
  // pg's types describe `query()` for configs, not Submittables; the runtime accepts any object with `submit`.
  (client as unknown as { query(q: Pipeline): unknown }).query(pipeline);
  return pipeline.done;
}

function wrap(error: unknown, indexOffset = 0): DatabaseError {
  if (error instanceof DatabaseError) return error;
  const index = (error as { statementIndex?: number }).statementIndex;
  return new DatabaseError(error, index === undefined ? undefined : index + indexOffset);
}

function wrapIfDatabase(error: unknown): unknown {
  return sqlStateOf(error) === undefined ? error : wrap(error);
}

function isConnectionLost(error: unknown): boolean {
  // A parameter that cannot be serialized is refused before anything is written.
  if (error instanceof TypeError) return false;
  const code = sqlStateOf(error);
  // Class 08 is connection exceptions, 57P0x the server shutting down; no SQLSTATE at all means
  // the socket failed (ECONNRESET, "Connection terminated"), so the connection is not reused.
  return code === undefined || code.startsWith('08') || code.startsWith('57P');
}
