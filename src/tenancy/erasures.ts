/**
 * Tenant erasure by crypto-shredding (`bulkhead tenants erase`, `POST /v1/tenants/{id}/erase`;
 * docs/encryption.md, "Crypto-shredding"). Scheduling marks the tenant `offboarding` at once (no
 * token of it is accepted, no read or write reaches its data) and sets a grace period, 7 days by
 * default, like a KMS's scheduled key deletion; until it ends the erasure can be cancelled and
 * the tenant gets its earlier status back. When it ends:
 *
 *   scheduled → erasing: counted → keys destroyed → data purged → done (tenant `erased`)
 *
 * 1. the tenant's rows are counted per table and collection, and its key versions listed, for the
 *    certificate (saved before anything is destroyed);
 * 2. the tenant's own key-encryption keys are destroyed in the KMS (in every region): every data
 *    key ever wrapped under them, in the live database or in any dump or backup taken earlier, is unreadable from then on;
 * 3. the tenant's storage is purged at its placement (rows, or its schema or database);
 * 4. the tenant is marked `erased` and the erasure certificate completed: what was erased, when,
 *    by whom, the key ids destroyed and the row counts. It holds no tenant data.
 *
 * Each stage is saved as it ends and each is idempotent, so an erasure interrupted by a crash
 * resumes where it stopped (the due erasures are run again on start and periodically).
 */
import type { Kms, TenantKeyDestruction } from '../crypto/kms.js';
import type { TenantKeyring } from '../crypto/keyring.js';
import { BulkheadError, DatabaseError } from '../errors.js';
import { uuidv7 } from '../ids.js';
import type { Placements } from '../placement/placements.js';
import { DATA_TABLES } from '../store/migrations.js';
import type { Tenants, TenantView } from './tenants.js';

/** States of an erasure. */
export const ERASURE_STATES = ['scheduled', 'cancelled', 'erasing', 'done'] as const;
/** An erasure state. */
export type ErasureState = (typeof ERASURE_STATES)[number];

/** The erasure certificate: what was erased, when, with which keys; identifiers and counts only. */
export interface ErasureCertificate {
  readonly format: 'bulkhead-erasure-certificate/1';
  readonly erasureId: string;
  readonly tenant: { readonly id: string; readonly slug: string; readonly region: string };
  readonly placement: { readonly tier: string; readonly cell: string; readonly location: string };
  readonly requestedBy: string;
  readonly requestedAt: string;
  readonly graceSeconds: number;
  readonly dueAt: string;
  /** How the data was made unreadable, then removed. */
  readonly method: 'crypto-shredding: tenant key-encryption key destroyed in the KMS, then the tenant storage purged';
  /** Rows held when the erasure began, per table, and records per collection. */
  readonly rows: Readonly<Record<string, number>>;
  readonly records: Readonly<Record<string, number>>;
  /** The tenant's data and blind-index key versions, all wrapped under the destroyed key. */
  readonly dataKeys: readonly { readonly purpose: string; readonly version: number; readonly state: string }[];
  /**
   * The KMS provider and the tenant's key-encryption keys destroyed in it, one per region where the
   * KMS could hold one (a tenant moved between regions has one in each; `keyId` null: none was made).
   */
  readonly kmsProvider?: string;
  readonly tenantKeys?: readonly (TenantKeyDestruction & { readonly region: string })[];
  readonly purgedAt?: string;
  readonly erasedAt?: string;
}

/** An erasure as the API shows it. */
export interface ErasureView {
  readonly id: string;
  readonly tenantId: string;
  readonly state: ErasureState;
  /** The tenant's status before the erasure was scheduled, which a cancellation restores. */
  readonly priorStatus: string;
  readonly graceSeconds: number;
  readonly dueAt: string;
  readonly actor: string;
  readonly cancelledBy: string | null;
  readonly certificate: ErasureCertificate | null;
  readonly createdAt: string;
  readonly updatedAt: string;
  readonly finishedAt: string | null;
}

/** Options of the eraser. */
export interface ErasuresOptions {
  /** Grace period when a request names none (seconds; default 604,800: 7 days). */
  readonly defaultGraceSeconds?: number;
  /** Longest grace period a request may name (seconds). */
  readonly maxGraceSeconds?: number;
  /** Called after every saved stage of an erasure; crash tests kill the process from here. */
  readonly onStep?: (erasure: ErasureView) => void | Promise<void>;
}

/** What the eraser needs besides the router: the registry, the KMS, the keyring and who is busy with the tenant. */
export interface ErasuresDeps {
  readonly placements: Placements;
  readonly tenants: Tenants;
  readonly kms: Kms;
  readonly keyring: TenantKeyring;
  /** Whether a move or a key rotation of the tenant is under way (an erasure waits for it to end). */
  readonly busy: (tenantId: string) => Promise<string | null>;
  /** Every region of the deployment: a tenant key is destroyed in each, wherever the tenant once lived. */
  readonly regions: readonly string[];
}

/** Statuses from which a tenant can be erased. A quarantined tenant is frozen for responders: lift the quarantine first. */
const ERASABLE = new Set(['active', 'suspended']);
const SELECT_ERASURE =
  'SELECT id, tenant_id, state, prior_status, grace_seconds, due_at, actor, cancelled_by, certificate, created_at, updated_at, finished_at FROM bulkhead.erasures';

function invalid(message: string, field: string): never {
  throw new BulkheadError('TENANT_ERASE_INVALID', message, { details: { field } });
}

/**
 * Scheduled, cancellable, crash-safe tenant erasures. One per process; due erasures are run by
 * `runDue`, which the server calls on start and periodically.
 */
export class Erasures {
  readonly #deps: ErasuresDeps;
  readonly #defaultGrace: number;
  readonly #maxGrace: number;
  readonly #onStep: ErasuresOptions['onStep'];
  #running: Promise<string[]> | undefined;
  #closing = false;

  constructor(deps: ErasuresDeps, options: ErasuresOptions = {}) {
    this.#deps = deps;
    this.#defaultGrace = options.defaultGraceSeconds ?? 604_800;
    this.#maxGrace = options.maxGraceSeconds ?? 31_536_000;
    this.#onStep = options.onStep;
  }

  /**
   * Schedules the erasure of a tenant and marks it `offboarding` at once. Refused, with nothing
   * changed: a body other than `{"graceSeconds"?}`, a grace period out of range, a tenant that is
   * not active or suspended (TENANT_ERASE_INVALID), one already scheduled, or one being moved or
   * re-keyed (TENANT_BUSY).
   */
  async schedule(tenant: TenantView, input: unknown, actor: string): Promise<ErasureView> {
    if (typeof input !== 'object' || input === null || Array.isArray(input)) invalid('the body must be a JSON object', 'body');
    const { graceSeconds, ...rest } = input as Record<string, unknown>;
    if (Object.keys(rest).length > 0) invalid('unknown property in the request body; allowed: graceSeconds', 'body');
    const grace = graceSeconds ?? this.#defaultGrace;
    if (typeof grace !== 'number' || !Number.isInteger(grace) || grace < 0 || grace > this.#maxGrace) {
      invalid(`graceSeconds must be an integer from 0 to ${this.#maxGrace}`, 'graceSeconds');
    }
    if (tenant.status === 'offboarding') throw new BulkheadError('TENANT_BUSY', 'an erasure of the tenant is already scheduled; cancel it first to change it', { details: { field: 'tenant' } });
    if (!ERASABLE.has(tenant.status)) invalid(`the tenant is ${tenant.status}; only an active or suspended tenant can be erased`, 'tenant');
    const busy = await this.#deps.busy(tenant.id);
    if (busy) throw new BulkheadError('TENANT_BUSY', `the tenant has a ${busy} under way; erase it once that has ended`, { details: { field: 'tenant' } });
    const id = uuidv7();
    try {
      await this.#deps.tenants.transition(tenant, 'offboarding', 'erase-scheduled', actor, (tx) =>
        tx.batch([
          {
            text:
              "INSERT INTO bulkhead.erasures (id, tenant_id, state, prior_status, grace_seconds, due_at, actor) VALUES ($1, $2, 'scheduled', $3, $4, now() + make_interval(secs => $4::int), $5)",
            values: [id, tenant.id, tenant.status, grace, actor],
          },
        ]),
      );
    } catch (error) {
      if (error instanceof DatabaseError && error.kind === 'unique') {
        throw new BulkheadError('TENANT_BUSY', 'an erasure of the tenant is already scheduled', { details: { field: 'tenant' } });
      }
      throw error;
    }
    // Nothing of the tenant stays in this process's memory: no key is served from it again.
    this.#deps.keyring.forget(tenant.id);
    this.#deps.placements.invalidate(tenant.id);
    return this.#get(id);
  }

  /**
   * Cancels the tenant's scheduled erasure and gives it back the status it had. Refused with
   * TENANT_ERASE_NOT_SCHEDULED when none is scheduled, and TENANT_ERASE_TOO_LATE once the grace
   * period is over and the erasure has begun (keys may already be destroyed).
   */
  async cancel(tenant: TenantView, actor: string): Promise<ErasureView> {
    const [r] = await this.#control([{ text: `${SELECT_ERASURE} WHERE tenant_id = $1 AND state IN ('scheduled', 'erasing', 'done') ORDER BY id DESC LIMIT 1`, values: [tenant.id] }]);
    const row = r!.rows[0];
    if (!row) throw new BulkheadError('TENANT_ERASE_NOT_SCHEDULED', 'no erasure of the tenant is scheduled');
    const erasure = toView(row);
    if (erasure.state !== 'scheduled') throw new BulkheadError('TENANT_ERASE_TOO_LATE', 'the erasure has begun: the tenant keys are being or have been destroyed');
    // The cancellation and the status change are one transaction, and the erasure row is changed
    // only while still scheduled: an eraser that claimed it first wins, and this changes nothing.
    const tooLate = () => new BulkheadError('TENANT_ERASE_TOO_LATE', 'the erasure has begun: the tenant keys are being or have been destroyed');
    await this.#deps.tenants.transition(tenant, erasure.priorStatus as TenantView['status'], 'erase-cancelled', actor, async (tx) => {
      const [r] = await tx.batch([
        {
          text: "UPDATE bulkhead.erasures SET state = 'cancelled', cancelled_by = $2, updated_at = now(), finished_at = now() WHERE id = $1 AND state = 'scheduled'",
          values: [erasure.id, actor],
        },
      ]);
      if (r!.rowCount === 0) throw tooLate();
    });
    this.#deps.placements.invalidate(tenant.id);
    return this.#get(erasure.id);
  }

  /** The erasures of a tenant, newest first. */
  async list(tenantId: string): Promise<ErasureView[]> {
    const [r] = await this.#control([{ text: `${SELECT_ERASURE} WHERE tenant_id = $1 ORDER BY id DESC`, values: [tenantId] }]);
    return r!.rows.map(toView);
  }

  /**
   * Runs every erasure whose grace period is over, and every one a crash interrupted; returns
   * their ids. One run at a time per process; another process claiming the same erasure first
   * makes this one skip it.
   */
  runDue(): Promise<string[]> {
    if (this.#closing) return Promise.resolve([]);
    this.#running ??= this.#runDue().finally(() => (this.#running = undefined));
    return this.#running;
  }

  /** Stops starting erasures and waits for the one under way to reach a saved stage. */
  async close(): Promise<void> {
    this.#closing = true;
    await this.#running?.catch(() => {});
  }

  async #runDue(): Promise<string[]> {
    const [r] = await this.#control([
      { text: "SELECT id FROM bulkhead.erasures WHERE (state = 'scheduled' AND due_at <= now()) OR state = 'erasing' ORDER BY due_at, id" },
    ]);
    const done: string[] = [];
    for (const row of r!.rows) {
      if (this.#closing) break;
      if (await this.#erase(row.id as string)) done.push(row.id as string);
    }
    return done;
  }

  /** Runs one erasure from the stage it is at; false if it was not due (any more) here. */
  async #erase(id: string): Promise<boolean> {
    let erasure = await this.#get(id);
    if (erasure.state === 'scheduled') {
      // Claim it: only one process moves it on.
      const [claimed] = await this.#control([
        { text: "UPDATE bulkhead.erasures SET state = 'erasing', updated_at = now() WHERE id = $1 AND state = 'scheduled' AND due_at <= now() RETURNING id", values: [id] },
      ]);
      if (!claimed!.rows[0]) return false;
      erasure = await this.#step(id);
    }
    if (erasure.state !== 'erasing') return false;
    const { tenantId } = erasure;
    const tenant = await this.#deps.tenants.get(tenantId);
    const placed = await this.#deps.placements.resolve(tenantId);
    if (!placed) throw new BulkheadError('INTERNAL', 'an erasure finds no placement of its tenant');

    let cert = erasure.certificate;
    if (!cert) {
      // 1. Count what there is, before anything goes.
      const { rows, records, dataKeys } = await this.#inventory(tenantId);
      cert = {
        format: 'bulkhead-erasure-certificate/1',
        erasureId: id,
        tenant: { id: tenantId, slug: tenant.slug, region: tenant.region },
        placement: { tier: placed.tier, cell: placed.cell, location: placed.location },
        requestedBy: erasure.actor,
        requestedAt: erasure.createdAt,
        graceSeconds: erasure.graceSeconds,
        dueAt: erasure.dueAt,
        method: 'crypto-shredding: tenant key-encryption key destroyed in the KMS, then the tenant storage purged',
        rows,
        records,
        dataKeys,
      };
      erasure = await this.#saveCertificate(id, cert);
    }
    if (!cert.tenantKeys) {
      // 2. Destroy the tenant's key-encryption keys: from here on nothing they wrapped opens. Every
      // region, not only the current one: keys made before a region move are wrapped in the old one.
      const regions = [...new Set([placed.region, ...this.#deps.regions])];
      const tenantKeys = [];
      for (const region of regions) tenantKeys.push({ region, ...(await this.#deps.kms.destroyTenantKey(region, tenantId)) });
      this.#deps.keyring.forget(tenantId);
      cert = { ...cert, kmsProvider: this.#deps.kms.provider, tenantKeys };
      erasure = await this.#saveCertificate(id, cert);
    }
    if (!cert.purgedAt) {
      // 3. Purge the storage (idempotent: a second run finds nothing left).
      await this.#deps.placements.drop(tenantId, placed);
      cert = { ...cert, purgedAt: new Date().toISOString() };
      erasure = await this.#saveCertificate(id, cert);
    }
    // 4. The tenant is erased; the certificate is complete.
    cert = { ...cert, erasedAt: new Date().toISOString() };
    const current = await this.#deps.tenants.get(tenantId);
    if (current.status !== 'erased') {
      await this.#deps.tenants.transition(current, 'erased', 'erased', erasure.actor, (tx) =>
        tx.batch([
          {
            text: "UPDATE bulkhead.erasures SET state = 'done', certificate = $2::text::jsonb, updated_at = now(), finished_at = now() WHERE id = $1",
            values: [id, JSON.stringify(cert)],
          },
        ]),
      );
    } else {
      await this.#control([
        { text: "UPDATE bulkhead.erasures SET state = 'done', certificate = $2::text::jsonb, updated_at = now(), finished_at = now() WHERE id = $1", values: [id, JSON.stringify(cert)] },
      ]);
    }
    await this.#step(id);
    return true;
  }

  /** Row counts per table and records per collection, and the key versions, at the tenant's placement. */
  async #inventory(tenantId: string): Promise<Pick<ErasureCertificate, 'rows' | 'records' | 'dataKeys'>> {
    const scope = this.#deps.placements.tenant(tenantId, { requireActive: false });
    const results = await scope.batch([
      ...DATA_TABLES.map((t) => ({ text: `SELECT count(*)::bigint AS n FROM ${t} WHERE tenant_id = $1`, values: [tenantId] })),
      { text: 'SELECT collection, count(*)::bigint AS n FROM records WHERE tenant_id = $1 GROUP BY 1 ORDER BY 1', values: [tenantId] },
      { text: 'SELECT purpose, version, state FROM tenant_keys WHERE tenant_id = $1 ORDER BY purpose, version', values: [tenantId] },
    ]);
    const rows: Record<string, number> = {};
    DATA_TABLES.forEach((t, i) => (rows[t] = Number(results[i]!.rows[0]!.n)));
    const records: Record<string, number> = {};
    for (const row of results[DATA_TABLES.length]!.rows) records[row.collection as string] = Number(row.n);
    const dataKeys = results[DATA_TABLES.length + 1]!.rows.map((k) => ({ purpose: k.purpose as string, version: k.version as number, state: k.state as string }));
    return { rows, records, dataKeys };
  }

  async #saveCertificate(id: string, cert: ErasureCertificate): Promise<ErasureView> {
    await this.#control([{ text: 'UPDATE bulkhead.erasures SET certificate = $2::text::jsonb, updated_at = now() WHERE id = $1', values: [id, JSON.stringify(cert)] }]);
    return this.#step(id);
  }

  /** Reads the erasure as saved and tells the observer. */
  async #step(id: string): Promise<ErasureView> {
    const erasure = await this.#get(id);
    await this.#onStep?.(erasure);
    return erasure;
  }

  async #get(id: string): Promise<ErasureView> {
    const [r] = await this.#control([{ text: `${SELECT_ERASURE} WHERE id = $1`, values: [id] }]);
    return toView(r!.rows[0]!);
  }

  #control(statements: Parameters<ReturnType<Placements['control']['store']['platform']>['batch']>[0]) {
    return this.#deps.placements.control.store.platform().batch(statements);
  }
}

function toView(row: Record<string, unknown>): ErasureView {
  const iso = (v: unknown) => (v instanceof Date ? v.toISOString() : v === null || v === undefined ? null : String(v));
  return {
    id: row.id as string,
    tenantId: row.tenant_id as string,
    state: row.state as ErasureState,
    priorStatus: row.prior_status as string,
    graceSeconds: row.grace_seconds as number,
    dueAt: iso(row.due_at)!,
    actor: row.actor as string,
    cancelledBy: (row.cancelled_by as string | null) ?? null,
    certificate: (row.certificate as ErasureCertificate | null) ?? null,
    createdAt: iso(row.created_at)!,
    updatedAt: iso(row.updated_at)!,
    finishedAt: iso(row.finished_at),
  };
}
