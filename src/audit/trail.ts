/**
 * Reading a chain back (issue 5, item 7): `GET /v1/audit/events` and its NDJSON and CSV exports.
 * Filters by time, principal, action, collection, record and outcome; pages in seq order with an
 * opaque cursor; every event comes with its chain data (seq, prevHash, hash), so an export can be
 * verified offline (docs/audit.md, "Offline, without Bulkhead").
 *
 * The chain is the caller's own tenant's (its auditors and admins) or the one an operator names:
 * which tenant is read is decided before this module, from the principal, and every statement
 * names it and runs under the tenant's row-level security as well. A cursor holds a seq only, so a
 * cursor of another chain reads nothing of it.
 */
import { BulkheadError } from '../errors.js';
import { isUuid } from '../ids.js';
import type { ScopedStore } from '../store/store.js';
import { PLATFORM_CHAIN, type ChainId } from './chain.js';

/** Filters of a trail query (all optional, AND-ed). */
export interface TrailFilters {
  readonly from?: string;
  readonly to?: string;
  readonly principal?: string;
  readonly action?: string;
  readonly collection?: string;
  readonly record?: string;
  readonly outcome?: 'success' | 'denied' | 'error';
}

/** One event as the auditor API shows it: the stored event with its chain data. */
export interface TrailEvent {
  readonly seq: number;
  readonly prevHash: string;
  readonly hash: string;
  readonly [member: string]: unknown;
}

/** A page of events. */
export interface TrailPage {
  readonly events: TrailEvent[];
  readonly nextCursor: string | null;
}

/** Default and largest page. */
export const DEFAULT_TRAIL_LIMIT = 100;
export const MAX_TRAIL_LIMIT = 1000;
/** Most events one export returns (page with `cursor` past it). */
export const MAX_EXPORT_EVENTS = 100_000;

const ACTION = /^[a-z][a-zA-Z0-9]*(\.[a-z][a-zA-Z0-9]*){1,3}$/;
const COLLECTION = /^[a-z][a-z0-9_]{0,62}$/;
const CURSOR = /^c1\.([1-9][0-9]{0,15})$/;

function invalid(message: string, field: string): never {
  throw new BulkheadError('REQUEST_INVALID', message, { details: { field } });
}

function time(value: unknown, field: string): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || value.length > 40 || Number.isNaN(Date.parse(value))) invalid(`${field} must be an ISO-8601 time`, field);
  return new Date(Date.parse(value)).toISOString();
}

/** Checks the query parameters of a trail query; every bad one is REQUEST_INVALID naming it. */
export function parseTrailQuery(query: Record<string, unknown>): { filters: TrailFilters; cursor: number; limit: number } {
  const str = (name: string, max: number) => {
    const v = query[name];
    if (v === undefined) return undefined;
    if (typeof v !== 'string' || v.length === 0 || v.length > max) invalid(`${name} must be a string of 1 to ${max} characters`, name);
    return v;
  };
  const action = str('action', 64);
  if (action !== undefined && !ACTION.test(action)) invalid('action must be an operation name such as record.read', 'action');
  const collection = str('collection', 63);
  if (collection !== undefined && !COLLECTION.test(collection)) invalid('collection must be a collection name', 'collection');
  const record = str('record', 36);
  if (record !== undefined && !isUuid(record)) invalid('record must be a record id (a UUID)', 'record');
  const outcome = str('outcome', 7);
  if (outcome !== undefined && !['success', 'denied', 'error'].includes(outcome)) invalid('outcome must be success, denied or error', 'outcome');
  const limitText = str('limit', 4);
  const limit = limitText === undefined ? DEFAULT_TRAIL_LIMIT : /^[1-9][0-9]*$/.test(limitText) ? Number(limitText) : NaN;
  if (!(limit >= 1 && limit <= MAX_TRAIL_LIMIT)) invalid(`limit must be an integer from 1 to ${MAX_TRAIL_LIMIT}`, 'limit');
  const cursorText = str('cursor', 40);
  let cursor = 0;
  if (cursorText !== undefined) {
    const m = CURSOR.exec(cursorText);
    if (!m) throw new BulkheadError('QUERY_CURSOR_INVALID', 'the cursor is not one this API gave out', { details: { field: 'cursor' } });
    cursor = Number(m[1]);
  }
  const filters: TrailFilters = {
    ...(time(query.from, 'from') !== undefined ? { from: time(query.from, 'from')! } : {}),
    ...(time(query.to, 'to') !== undefined ? { to: time(query.to, 'to')! } : {}),
    ...(str('principal', 256) !== undefined ? { principal: str('principal', 256)! } : {}),
    ...(action !== undefined ? { action } : {}),
    ...(collection !== undefined ? { collection } : {}),
    ...(record !== undefined ? { record } : {}),
    ...(outcome !== undefined ? { outcome: outcome as TrailFilters['outcome'] } : {}),
  };
  return { filters, cursor, limit };
}

/** A page of `chain` after seq `after`, matching `filters`, at most `limit` events. */
export async function readTrail(scope: ScopedStore, chain: ChainId, filters: TrailFilters, after: number, limit: number): Promise<TrailPage> {
  const values: unknown[] = [];
  const p = (v: unknown) => {
    values.push(v);
    return `$${values.length}`;
  };
  const where: string[] = [];
  const table = chain === PLATFORM_CHAIN ? 'bulkhead.audit_platform_events' : 'audit_events';
  // The tenant is named explicitly as well as enforced by RLS (SPEC, principle 3).
  if (chain !== PLATFORM_CHAIN) where.push(`tenant_id = ${p(chain)}`);
  where.push(`seq > ${p(after)}`);
  if (filters.from) where.push(`time >= ${p(filters.from)}::timestamptz`);
  if (filters.to) where.push(`time < ${p(filters.to)}::timestamptz`);
  if (filters.principal) where.push(`event -> 'principal' ->> 'subject' = ${p(filters.principal)}`);
  if (filters.action) where.push(`event ->> 'action' = ${p(filters.action)}`);
  if (filters.collection) where.push(`event ->> 'collection' = ${p(filters.collection)}`);
  if (filters.record) where.push(`event -> 'recordIds' @> jsonb_build_array(${p(filters.record)}::text)`);
  if (filters.outcome) where.push(`event ->> 'outcome' = ${p(filters.outcome)}`);
  const [r] = await scope.batch([
    { text: `SELECT seq, prev_hash, hash, event FROM ${table} WHERE ${where.join(' AND ')} ORDER BY seq LIMIT ${p(limit + 1)}`, values },
  ]);
  const rows = r!.rows;
  const page = rows.slice(0, limit);
  const events = page.map((row) => ({
    seq: Number(row.seq),
    prevHash: Buffer.from(row.prev_hash as Uint8Array).toString('hex'),
    hash: Buffer.from(row.hash as Uint8Array).toString('hex'),
    ...(row.event as Record<string, unknown>),
  }));
  const last = page[page.length - 1];
  return { events, nextCursor: rows.length > limit && last ? `c1.${Number(last.seq)}` : null };
}

/**
 * The NDJSON export: one line per event, `{"seq","prevHash","hash","event"}`, the row format the
 * offline verifier of docs/audit.md reads (the event with its `seq`, as hashed).
 */
export function toNdjson(events: readonly TrailEvent[]): string {
  return events
    .map(({ seq, prevHash, hash, ...event }) => `${JSON.stringify({ seq, prevHash, hash, event: { ...event, seq } })}\n`)
    .join('');
}

const CSV_COLUMNS = ['seq', 'time', 'action', 'outcome', 'errorCode', 'principal', 'authMethod', 'collection', 'recordIds', 'requestId', 'sourceAddress', 'prevHash', 'hash', 'event'] as const;

/**
 * The CSV export (RFC 4180): a column per common member, and the whole event as JSON in the last
 * column, so it verifies like the NDJSON. A cell that a spreadsheet would run as a formula
 * (starting with `=`, `+`, `-`, `@`, tab or carriage return) is prefixed with `'` (OWASP CSV
 * injection), except in the `event` column, which must stay the exact JSON.
 */
export function toCsv(events: readonly TrailEvent[]): string {
  const cell = (v: unknown, raw = false): string => {
    let s = v === undefined || v === null ? '' : typeof v === 'string' ? v : JSON.stringify(v);
    if (!raw && /^[=+\-@\t\r]/.test(s)) s = `'${s}`;
    return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  const lines = [CSV_COLUMNS.join(',')];
  for (const e of events) {
    const { seq, prevHash, hash, ...event } = e;
    const principal = event.principal as { subject?: string; authMethod?: string } | null;
    lines.push(
      [
        cell(seq),
        cell(event.time),
        cell(event.action),
        cell(event.outcome),
        cell(event.errorCode),
        cell(principal?.subject),
        cell(principal?.authMethod),
        cell(event.collection),
        cell(Array.isArray(event.recordIds) ? (event.recordIds as string[]).join(' ') : undefined),
        cell(event.requestId),
        cell(event.sourceAddress),
        cell(prevHash),
        cell(hash),
        cell(JSON.stringify({ ...event, seq }), true),
      ].join(','),
    );
  }
  return `${lines.join('\r\n')}\r\n`;
}
