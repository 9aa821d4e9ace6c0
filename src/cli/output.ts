import type { Writable } from './client.js';

/** A column of a table: its header and how to read a cell from a row. */
export interface Column<T> {
  readonly header: string;
  readonly value: (row: T) => string | number | null | undefined;
}

/**
 * Replaces control characters with `?`: names and slugs come from other people, and a newline or
 * an escape sequence in one must not break the table or drive the operator's terminal.
 */
export function printable(value: string | number | null | undefined): string {
  if (value === null || value === undefined) return '-';
  return String(value).replace(/[\u0000-\u001f\u007f-\u009f]/g, '?');
}

/** Formats rows as an aligned table: upper-case headers, two spaces between columns, no trailing blanks. */
export function table<T>(rows: readonly T[], columns: readonly Column<T>[]): string {
  const cells = [columns.map((c) => c.header.toUpperCase()), ...rows.map((row) => columns.map((c) => printable(c.value(row))))];
  const widths = columns.map((_, i) => Math.max(...cells.map((line) => line[i]!.length)));
  return cells.map((line) => line.map((cell, i) => (i === line.length - 1 ? cell : cell.padEnd(widths[i]!))).join('  ').trimEnd()).join('\n') + '\n';
}

/** Formats an object's fields as aligned `key  value` lines, in the given order. */
export function keyValues(entries: readonly (readonly [string, string | number | null | undefined])[]): string {
  const width = Math.max(...entries.map(([key]) => key.length));
  return entries.map(([key, value]) => `${key.padEnd(width)}  ${printable(value)}`.trimEnd()).join('\n') + '\n';
}

/** Writes a command's result: machine JSON with `--json`, the human form otherwise. */
export function emit(out: Writable, json: boolean | undefined, data: unknown, human: () => string): void {
  out.write(json ? `${JSON.stringify(data, null, 2)}\n` : human());
}
