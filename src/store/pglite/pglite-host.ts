import { rmSync } from 'node:fs';
import { dirname, join, basename } from 'node:path';
import { checkDatabaseName, type DatabaseHost, type Engine } from '../engine.js';
import { PgliteEngine } from './pglite-engine.js';

/** Options of an embedded host. */
export interface PgliteHostOptions {
  /** The main database's data directory, or `memory://` (tests: silos are in memory too). */
  readonly dataDir: string;
  /** Use this engine for the main database instead of opening one (tests). */
  readonly mainEngine?: Engine;
}

/**
 * An embedded data directory as a cell: each silo tenant gets a PGlite data directory of its own,
 * in `<dataDir>.silos/<name>` beside the main one (PGlite owns its directory's contents).
 */
export class PgliteHost implements DatabaseHost {
  readonly kind = 'pglite' as const;
  readonly #options: PgliteHostOptions;
  readonly #engines = new Map<string, Promise<Engine>>();
  #main: Promise<Engine> | undefined;

  constructor(options: PgliteHostOptions) {
    this.#options = options;
  }

  main(): Promise<Engine> {
    this.#main ??= this.#options.mainEngine ? Promise.resolve(this.#options.mainEngine) : PgliteEngine.open({ dataDir: this.#options.dataDir });
    return this.#main;
  }

  database(name: string, _options: { readonly create: boolean }): Promise<Engine> {
    checkDatabaseName(name);
    let engine = this.#engines.get(name);
    if (!engine) {
      // PGlite creates a missing directory; opening an existing one is the idempotent case.
      engine = PgliteEngine.open({ dataDir: this.#siloDir(name) });
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
    if (!this.#inMemory) rmSync(this.#siloDir(name), { recursive: true, force: true });
  }

  async close(): Promise<void> {
    const engines = [...this.#engines.values()];
    this.#engines.clear();
    for (const e of engines) await (await e.catch(() => undefined))?.close().catch(() => {});
    if (this.#main) await (await this.#main).close();
  }

  get #inMemory(): boolean {
    return this.#options.dataDir.startsWith('memory://');
  }

  #siloDir(name: string): string {
    if (this.#inMemory) return 'memory://';
    return join(dirname(this.#options.dataDir), `${basename(this.#options.dataDir)}.silos`, name);
  }
}
