import pg from 'pg';
import type { Statement, StatementResult } from '../engine.js';

/**
 * The subset of pg's protocol connection a pipeline writes to (the way Kysely declares the
 * subset of `pg` it uses). Messages are documented in PostgreSQL's "Extended Query" protocol flow.
 */
export interface PipelineConnection {
  parse(message: { text: string; name?: string; types?: number[] }): void;
  bind(message: { statement?: string; portal?: string; values: unknown[]; valueMapper?: (value: unknown) => unknown }): void;
  describe(message: { type: 'P' | 'S'; name?: string }): void;
  close(message: { type: 'S' | 'P'; name?: string }): void;
  execute(message: { portal?: string; rows?: number }): void;
  sync(): void;
  /** pg's own record of the named statements parsed on this connection, shared with pg's Query. */
  parsedStatements: Record<string, string>;
  stream: { cork?: () => void; uncork?: () => void };
}

interface Field {
  name: string;
  dataTypeID: number;
}

type Parser = (value: string) => unknown;

/** True when `name` is already prepared on this connection. */
export function preparedOn(connection: PipelineConnection, name: string): boolean {
  return connection.parsedStatements[name] !== undefined;
}

/**
 * A pg Submittable (the interface pg-cursor uses) that sends every statement's
 * Parse/Bind/Describe/Execute and then ONE Sync. The server runs everything up to the Sync in
 * one implicit transaction and stops at the first error, so the batch is atomic.
 *
 * A named statement not yet prepared on the connection is parsed under its name in the same
 * round trip, at its first use in the pipeline, and bound by name from then on; the names are
 * recorded once the whole pipeline succeeded. After a failure nobody knows which of those parses
 * the server got to: `closing` sends a Close for each (not an error for a name that does not
 * exist), so the connection's record stays true.
 */
export class Pipeline {
  readonly done: Promise<StatementResult[]>;
  readonly #statements: readonly Statement[];
  readonly #mode: 'closing' | 'execute';
  readonly #results: StatementResult[] = [];
  #fields: Field[] | null = null;
  #parsers: Parser[] = [];
  #rows: Record<string, unknown>[] = [];
  #connection: PipelineConnection | null = null;
  #settled = false;
  #resolve!: (results: StatementResult[]) => void;
  #reject!: (error: unknown) => void;

  /** Names parsed by this pipeline (execute mode), or to close (closing mode). */
  readonly #fresh = new Set<string>();

  constructor(statements: readonly Statement[], mode: 'closing' | 'execute') {
    this.#statements = statements;
    this.#mode = mode;
    this.done = new Promise((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
  }

  /** Called by pg when the connection is ready for this pipeline. */
  submit(connection: PipelineConnection): Error | null {
    this.#connection = connection;
    let wire: (string | null)[][];
    try {
      // Serialize every value before writing anything: a value that fails half-way must not
      // leave earlier statements sent and committed by the Sync.
      wire = this.#statements.map((s, index) =>
        (s.values ?? []).map((v) => {
          try {
            return toWire(v);
          } catch (error) {
            throw Object.assign(error instanceof Error ? error : new Error(String(error)), { statementIndex: index });
          }
        }),
      );
    } catch (error) {
      return error instanceof Error ? error : new Error(String(error));
    }
    connection.stream.cork?.();
    try {
      if (this.#mode === 'closing') {
        for (const s of this.#statements) connection.close({ type: 'S', name: s.name! });
      } else {
        this.#statements.forEach((s, i) => {
          if (s.name !== undefined && !preparedOn(connection, s.name) && !this.#fresh.has(s.name)) {
            connection.parse({ text: s.text, name: s.name });
            this.#fresh.add(s.name);
          }
          const named = s.name !== undefined;
          if (!named) connection.parse({ text: s.text, name: '' });
          connection.bind({ statement: named ? s.name! : '', portal: '', values: wire[i]! });
          connection.describe({ type: 'P', name: '' });
          connection.execute({ portal: '', rows: 0 });
        });
      }
      connection.sync();
    } finally {
      connection.stream.uncork?.();
    }
    return null;
  }

  handleRowDescription(message: { fields: Field[] }): void {
    this.#fields = message.fields;
    this.#parsers = message.fields.map((f) => pg.types.getTypeParser(f.dataTypeID, 'text') as Parser);
    this.#rows = [];
  }

  handleDataRow(message: { fields: (string | null)[] }): void {
    const fields = this.#fields;
    if (!fields) return;
    const row: Record<string, unknown> = {};
    for (let i = 0; i < fields.length; i++) {
      const raw = message.fields[i];
      row[fields[i]!.name] = raw === null || raw === undefined ? null : this.#parsers[i]!(raw);
    }
    this.#rows.push(row);
  }

  handleCommandComplete(message: { text: string }): void {
    const count = /(\d+)$/.exec(message.text);
    this.#results.push({ rows: this.#rows, rowCount: count ? Number(count[1]) : this.#rows.length });
    this.#fields = null;
    this.#rows = [];
  }

  handleEmptyQuery(): void {
    this.#results.push({ rows: [], rowCount: 0 });
  }

  handleError(error: unknown): void {
    const withIndex = error instanceof Error ? error : new Error(String(error));
    // A serialization failure in `submit` already names its statement; a server error is the next one.
    (withIndex as Error & { statementIndex?: number }).statementIndex ??= this.#results.length;
    this.#fail(withIndex);
  }

  /** The names this pipeline parsed (to record on success, to close after a failure). */
  get fresh(): ReadonlySet<string> {
    return this.#fresh;
  }

  handleReadyForQuery(): void {
    if (this.#settled) return;
    if (this.#mode === 'execute' && this.#connection) {
      for (const s of this.#statements) if (s.name && this.#fresh.has(s.name)) this.#connection.parsedStatements[s.name] = s.text;
    }
    this.#settled = true;
    this.#resolve(this.#results);
  }

  handlePortalSuspended(): void {
    this.#fail(new Error('unexpected portal suspension in a pipeline'));
  }

  handleCopyInResponse(): void {
    this.#fail(new Error('COPY is not supported in a pipeline'));
  }

  handleCopyData(): void {}

  #fail(error: unknown): void {
    if (this.#settled) return;
    this.#settled = true;
    this.#reject(error);
  }
}

/**
 * Serializes a parameter to PostgreSQL's text format. Only scalar types are accepted: the core
 * passes JSON as a string cast with `::jsonb`, so an array or object here is a bug, refused.
 */
function toWire(value: unknown): string | null {
  if (value === null || value === undefined) return null;
  switch (typeof value) {
    case 'string':
      return value;
    case 'number':
      if (!Number.isFinite(value)) throw new TypeError('a statement parameter is not a finite number');
      return String(value);
    case 'bigint':
      return value.toString();
    case 'boolean':
      return value ? 'true' : 'false';
    default:
      if (value instanceof Date) return value.toISOString();
      throw new TypeError('a statement parameter has an unsupported type');
  }
}
