/**
 * The CLI's HTTP client. The CLI never opens the store itself: PGlite's data directory can be
 * opened by one process only, so while `bulkhead serve` runs, every other command goes through
 * the server's API like any other client.
 */

import { looksLikeOperatorToken } from '../access/operator-tokens.js';

/** A text sink; `process.stdout`, `process.stderr` or a test's collector. */
export interface Writable {
  write(chunk: string): unknown;
}

/** What a CLI run reads from and writes to, injectable so tests can run `main` in-process. */
export interface CliIO {
  readonly stdout: Writable;
  readonly stderr: Writable;
  readonly env: Readonly<Record<string, string | undefined>>;
  /** The working directory that relative file paths (`-f schema.yaml`) are resolved against. */
  readonly cwd: string;
}

/** The server address used when neither `--url` nor `BULKHEAD_URL` is given (the server's own default). */
export const DEFAULT_URL = 'http://127.0.0.1:8080';

/** How long one request may take before the CLI gives up, so a hung server does not hang scripts. */
const REQUEST_TIMEOUT_MS = 30_000;

/**
 * A failure the CLI reports as one line and an exit code. `code` is a stable error code (the
 * server's problem+json `code`, or one of the same registry for local checks) when there is one.
 */
export class CliError extends Error {
  readonly exitCode: 1 | 2;
  readonly code: string | undefined;

  constructor(message: string, options: { exitCode?: 1 | 2; code?: string } = {}) {
    super(message);
    this.name = 'CliError';
    this.exitCode = options.exitCode ?? 1;
    this.code = options.code;
  }
}

/** Bad usage of the command line (a missing token, an invalid URL): exit code 2, like commander's own. */
export class UsageError extends CliError {
  constructor(message: string) {
    super(message, { exitCode: 2 });
    this.name = 'UsageError';
  }
}

/** A problem+json answer of the server. */
export class ApiError extends CliError {
  declare readonly code: string;
  readonly status: number;

  constructor(status: number, code: string, detail: string) {
    super(detail, { code });
    this.name = 'ApiError';
    this.status = status;
  }
}

/** Options shared by every command that talks to a server. */
export interface GlobalOptions {
  readonly url?: string;
  readonly token?: string;
  readonly json?: boolean;
}

/** A minimal client of Bulkhead's HTTP API, on Node's global fetch. */
export class BulkheadClient {
  readonly #base: URL;
  readonly #token: string | undefined;

  constructor(base: URL, token: string | undefined) {
    this.#base = base;
    this.#token = token;
  }

  /**
   * Resolves `--url` / `BULKHEAD_URL` and `--token` / `BULKHEAD_TOKEN` / `BULKHEAD_OPERATOR_TOKEN`
   * (a flag wins over the environment, as for `serve`).
   */
  static from(options: GlobalOptions, env: CliIO['env']): BulkheadClient {
    const raw = options.url ?? (env.BULKHEAD_URL || undefined) ?? DEFAULT_URL;
    let base: URL;
    try {
      base = new URL(raw);
    } catch {
      throw new UsageError('--url must be an absolute http(s) URL, such as http://127.0.0.1:8080');
    }
    if (base.protocol !== 'http:' && base.protocol !== 'https:') {
      throw new UsageError('--url must be an absolute http(s) URL, such as http://127.0.0.1:8080');
    }
    if (base.username || base.password) {
      // Credentials in the URL would end up in error messages and shell history; the token has its own option.
      throw new UsageError('--url must not carry credentials; pass the token with --token or BULKHEAD_TOKEN');
    }
    const token = options.token ?? (env.BULKHEAD_TOKEN || undefined) ?? (env.BULKHEAD_OPERATOR_TOKEN || undefined);
    return new BulkheadClient(base, token);
  }

  /** True when the token is an operator token (which reaches the tenant registry, never tenant data). */
  get hasOperatorToken(): boolean {
    return this.#token !== undefined && looksLikeOperatorToken(this.#token);
  }

  /** The server's address as shown in messages. */
  get url(): string {
    return `${this.#base.origin}${this.#base.pathname.replace(/\/+$/, '')}`;
  }

  /** A client for the same server acting with another token (a short-lived tenant token). */
  withToken(token: string): BulkheadClient {
    return new BulkheadClient(this.#base, token);
  }

  /**
   * Sends one request and returns its JSON body. A problem+json answer becomes an `ApiError`;
   * a server that cannot be reached, a `CliError` naming its URL.
   */
  /** The URL and headers of a call to `path` (UsageError without a token). */
  prepare(path: string, body?: unknown): { url: URL; headers: Record<string, string> } {
    if (this.#token === undefined) {
      throw new UsageError('no token: pass --token or set BULKHEAD_TOKEN (or BULKHEAD_OPERATOR_TOKEN)');
    }
    // Joined by hand so that a base URL with a path (a server behind a proxy at /bulkhead) keeps it.
    const url = new URL(`${this.#base.pathname.replace(/\/+$/, '')}${path}`, this.#base);
    const headers: Record<string, string> = { authorization: `Bearer ${this.#token}`, accept: 'application/json' };
    if (body !== undefined) headers['content-type'] = 'application/json';
    return { url, headers };
  }

  async request<T>(method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE', path: string, body?: unknown): Promise<T> {
    const { url, headers } = this.prepare(path, body);
    let response: Response;
    try {
      response = await fetch(url, {
        method,
        headers,
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        redirect: 'manual', // following one would resend the token to wherever it points
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      });
    } catch (error) {
      throw new CliError(`cannot reach the Bulkhead server at ${this.url} (${reason(error)}); start it with "bulkhead serve" or point --url / BULKHEAD_URL at it`);
    }
    if (response.status >= 300 && response.status < 400) {
      await response.body?.cancel();
      throw new CliError(`the server at ${this.url} answered a redirect (${response.status}), which the CLI does not follow (it would resend the token); set --url to the address it points to`, {
        code: `HTTP_${response.status}`,
      });
    }
    const text = await response.text();
    if (!response.ok) throw problemOf(response, text, this.url);
    if (text.length === 0) return undefined as T;
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new CliError(`the server at ${this.url} answered ${response.status} with a body that is not JSON; is --url a Bulkhead server?`);
    }
  }
}

/**
 * The client's streaming call: sends one request accepting NDJSON and hands each line, parsed, to
 * `onLine` as it arrives. No overall time limit (a verification of long chains may take minutes),
 * but each line must come within the request timeout. Errors as `request`.
 */
export async function streamLines(client: BulkheadClient, method: 'POST' | 'GET', path: string, body: unknown, onLine: (line: unknown) => void): Promise<void> {
  const { url, headers } = client.prepare(path, body);
  headers.accept = 'application/x-ndjson';
  const idle = new AbortController();
  let timer = setTimeout(() => idle.abort(), REQUEST_TIMEOUT_MS);
  const touch = () => {
    clearTimeout(timer);
    timer = setTimeout(() => idle.abort(), REQUEST_TIMEOUT_MS);
  };
  try {
    let response: Response;
    try {
      response = await fetch(url, { method, headers, ...(body !== undefined ? { body: JSON.stringify(body) } : {}), redirect: 'manual', signal: idle.signal });
    } catch (error) {
      throw new CliError(`cannot reach the Bulkhead server at ${client.url} (${reason(error)}); start it with "bulkhead serve" or point --url / BULKHEAD_URL at it`);
    }
    if (!response.ok || !response.body) throw problemOf(response, await response.text(), client.url);
    const decoder = new TextDecoder();
    let buffer = '';
    try {
      for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
        touch();
        buffer += decoder.decode(chunk, { stream: true });
        let nl: number;
        while ((nl = buffer.indexOf('\n')) >= 0) {
          const line = buffer.slice(0, nl);
          buffer = buffer.slice(nl + 1);
          if (line.trim().length > 0) onLine(JSON.parse(line));
        }
      }
    } catch (error) {
      if (error instanceof CliError) throw error;
      throw new CliError(`the answer of the server at ${client.url} stopped before its end (${reason(error)})`);
    }
  } finally {
    clearTimeout(timer);
  }
}

/** Why fetch failed, in a word: the system error code when there is one. */
function reason(error: unknown): string {
  const e = error as { name?: string; code?: string; cause?: { code?: string; message?: string } };
  if (e.name === 'TimeoutError') return `no answer within ${REQUEST_TIMEOUT_MS / 1000} s`;
  if (typeof e.cause?.code === 'string') return e.cause.code;
  if (typeof e.cause?.message === 'string') return e.cause.message;
  return e.name ?? 'network error';
}

/** Turns an error answer into an `ApiError` (problem+json) or a generic one line. */
function problemOf(response: Response, text: string, url: string): CliError {
  try {
    const p = JSON.parse(text) as { code?: unknown; detail?: unknown; title?: unknown };
    if (typeof p.code === 'string') {
      const detail = typeof p.detail === 'string' ? p.detail : typeof p.title === 'string' ? p.title : response.statusText;
      return new ApiError(response.status, p.code, oneLine(detail));
    }
  } catch {
    // not JSON: fall through to the generic message
  }
  return new CliError(`the server at ${url} answered ${response.status} ${oneLine(response.statusText)}; is --url a Bulkhead server?`, {
    code: `HTTP_${response.status}`,
  });
}

/** Keeps a message on one line and free of terminal control sequences. */
export function oneLine(text: string): string {
  return text.replace(/[\u0000-\u001f\u007f-\u009f]+/g, ' ').trim();
}
