import pg from 'pg';
import { DatabaseError } from '../../errors.js';
import { checkDatabaseName, type DatabaseHost, type Engine } from '../engine.js';
import { PostgresEngine } from './postgres-engine.js';
import { libpqSslConnectionString } from './tls.js';

/** Options of a PostgreSQL host. */
export interface PostgresHostOptions {
  /** The cell's main database. Silo databases are created on the same server with the same login. */
  readonly connectionString: string;
  /** Pool size of the main database (default 10). */
  readonly maxConnections?: number;
  /** Pool size of each silo database (default 4): a silo holds one tenant. */
  readonly siloConnections?: number;
  /** Use this engine for the main database instead of opening one (tests). */
  readonly mainEngine?: Engine;
}

/** A PostgreSQL server as a cell: silo tenants get databases of their own on it. */
export class PostgresHost implements DatabaseHost {
  readonly kind = 'postgres' as const;
  readonly #options: PostgresHostOptions;
  readonly #engines = new Map<string, Promise<Engine>>();
  #main: Engine | undefined;

  constructor(options: PostgresHostOptions) {
    // Once, here: the main pool, the admin connection and every silo URL derived below carry libpq's SSL semantics.
    this.#options = { ...options, connectionString: libpqSslConnectionString(options.connectionString) };
  }

  async main(): Promise<Engine> {
    this.#main ??=
      this.#options.mainEngine ?? new PostgresEngine({ connectionString: this.#options.connectionString, maxConnections: this.#options.maxConnections ?? 10 });
    return this.#main;
  }

  database(name: string, options: { readonly create: boolean }): Promise<Engine> {
    checkDatabaseName(name);
    let engine = this.#engines.get(name);
    if (!engine) {
      engine = this.#open(name, options.create);
      this.#engines.set(name, engine);
      engine.catch(() => this.#engines.delete(name));
    }
    return engine;
  }

  async dropDatabase(name: string): Promise<void> {
    checkDatabaseName(name);
    const engine = this.#engines.get(name);
    this.#engines.delete(name);
    await (await engine?.catch(() => undefined))?.close();
    await this.#admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  }

  async close(): Promise<void> {
    const engines = [...this.#engines.values()];
    this.#engines.clear();
    for (const e of engines) await (await e.catch(() => undefined))?.close().catch(() => {});
    await this.#main?.close();
  }

  async #open(name: string, create: boolean): Promise<Engine> {
    if (create) {
      try {
        await this.#admin(`CREATE DATABASE ${name}`);
      } catch (error) {
        // 42P04: it exists already, which is what an idempotent create wants.
        if (!(error instanceof DatabaseError && error.sqlState === '42P04')) throw error;
      }
    }
    const url = new URL(this.#options.connectionString);
    url.pathname = `/${name}`;
    return new PostgresEngine({ connectionString: url.toString(), maxConnections: this.#options.siloConnections ?? 4 });
  }

  /** CREATE and DROP DATABASE cannot run in a transaction block, so they get a connection of their own. */
  async #admin(sql: string): Promise<void> {
    const client = new pg.Client({ connectionString: this.#options.connectionString, application_name: 'bulkhead' });
    try {
      await client.connect();
      await client.query(sql);
    } catch (error) {
      throw new DatabaseError(error);
    } finally {
      await client.end().catch(() => {});
    }
  }
}
