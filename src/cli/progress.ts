import cliProgress from 'cli-progress';
import type { Writable } from './client.js';
import { printable } from './output.js';

/** A progress bar of a long operation, written to the CLI's stderr. */
export interface ProgressBar {
  /** Sets the bar to `percent` (0-100) and the format's other fields to `fields`. */
  update(percent: number, fields: Readonly<Record<string, string | number>>): void;
  /** Draws the last state and releases the terminal line; safe to call twice. */
  stop(): void;
}

/** How often a stream that is not a terminal gets a line: often enough to show life in a CI log, rarely enough to keep it short. */
const NOT_TTY_EVERY_MS = 2_000;

/**
 * Starts a progress bar on `stream` with `format`, whose `{bar}` and `{percentage}` cli-progress
 * fills and whose other `{names}` come from `update`'s fields. On a terminal the bar is one line
 * redrawn in place and erased at the end; anywhere else (a pipe, a file, a test's collector) it
 * is a plain line every two seconds and one at the end, so logs stay readable.
 */
export function progressBar(stream: Writable, format: string, fields: Readonly<Record<string, string | number>>, percent = 0): ProgressBar {
  const bar = new cliProgress.SingleBar({
    // cli-progress writes with write() and reads isTTY and columns; readline's cursor moves it
    // uses on a terminal are writes too, so the CLI's minimal Writable is enough.
    stream: stream as unknown as NodeJS.WritableStream,
    format,
    noTTYOutput: true,
    notTTYSchedule: NOT_TTY_EVERY_MS,
    // The defaults hide the cursor and turn line wrapping off, which an interrupted command
    // (Ctrl-C while waiting) would leave that way; truncating the line to the width needs neither.
    hideCursor: false,
    linewrap: true,
    clearOnComplete: true,
    barsize: 30,
  });
  bar.start(100, clamp(percent), safe(fields));
  let stopped = false;
  return {
    update(next, nextFields) {
      if (!stopped) bar.update(clamp(next), safe(nextFields));
    },
    stop() {
      if (stopped) return;
      stopped = true;
      bar.stop();
    },
  };
}

function clamp(percent: number): number {
  return Number.isFinite(percent) ? Math.min(100, Math.max(0, percent)) : 0;
}

/** Field values come from the server: no control character may reach the terminal. */
function safe(fields: Readonly<Record<string, string | number>>): Record<string, string> {
  return Object.fromEntries(Object.entries(fields).map(([key, value]) => [key, printable(value)]));
}
