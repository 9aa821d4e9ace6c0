import { Authorizer } from './access/authorizer.js';
import { OperatorTokenVerifier, generateOperatorToken, hashOperatorToken, looksLikeOperatorToken } from './access/operator-tokens.js';
import type { Action, Principal, Resource, Decision, TenantRole } from './access/principal.js';
import { TokenVerifier, generateJwtSecret, mintTenantToken } from './access/tokens.js';
import { MAX_ERASE_GRACE_SECONDS, resolveJwtSecret, type Config } from './config.js';
import { AccessDeniedError, AuthenticationError, BulkheadError, ERROR_CODES, type ErrorCode } from './errors.js';
import { uuidv7 } from './ids.js';
import { Cells } from './placement/cells.js';
import { Moves, type MovesOptions } from './placement/moves.js';
import { Placements } from './placement/placements.js';
import type { Engine } from './store/engine.js';
import type { Store } from './store/store.js';
import { Collections } from './tenancy/collections.js';
import { Health } from './tenancy/health.js';
import { Records } from './tenancy/records.js';
import { Tenants } from './tenancy/tenants.js';
import { Usage } from './tenancy/usage.js';
import { openKms } from './crypto/kms-config.js';
import type { Kms } from './crypto/kms.js';
import { TenantKeyring } from './crypto/keyring.js';
import { KeyRotations, type KeyRotationsOptions } from './tenancy/key-rotations.js';
import { Erasures, type ErasuresOptions } from './tenancy/erasures.js';
import { PLATFORM_CHAIN } from './audit/chain.js';
import { AuditLog, type AuditLogOptions } from './audit/log.js';
import { createAuditEvent, type AuditOperatorFields } from './audit/event.js';
import type { MoveView } from './placement/moves.js';
import type { RotationView } from './tenancy/key-rotations.js';
import type { ErasureView } from './tenancy/erasures.js';
import { verifyTrail, type VerifyReport, type VerifySources } from './audit/verify.js';
import { pruneChain, type PruneResult, type RetentionDeps } from './audit/retention.js';
import { loadOrCreateSigner, SIGNING_KEY_DIR_NAME } from './audit/checkpoint.js';
import { Witness } from './audit/witness.js';
import { join } from 'node:path';

/** What `Bulkhead.open` may be given besides the configuration (tests inject an engine). */
export interface OpenOptions {
  /** Use this engine for the control cell's main database instead of the one the configuration names. */
  readonly engine?: Engine;
  /** Options of the tenant mover (batch size, a step observer for progress or crash tests). */
  readonly moves?: MovesOptions;
  /** Called once with an operator token generated on first start (nothing configured, none stored). */
  readonly onOperatorTokenGenerated?: (token: string) => void;
  /**
   * Resume unfinished moves on open (default true). Crash tests turn it off to read the state a
   * move was left in before it goes on (`moves.resume()`).
   */
  readonly resumeMoves?: boolean;
  /** Options of the key rotator (a step observer for progress or crash tests). */
  readonly rotations?: Pick<KeyRotationsOptions, 'onStep'>;
  /** Resume unfinished key rotations on open (default true); crash tests turn it off, as for moves. */
  readonly resumeRotations?: boolean;
  /** Options of the eraser (a step observer for crash tests). */
  readonly erasures?: Pick<ErasuresOptions, 'onStep'>;
  /**
   * Run due erasures on open and then every `ERASURE_CHECK_MS` (default true). Tests turn it off
   * to run them with `erasures.runDue()` at a chosen moment.
   */
  readonly runErasures?: boolean;
  /** Checkpoint cadence of the audit log (tests checkpoint often). */
  readonly audit?: Pick<AuditLogOptions, 'checkpointEvery' | 'checkpointMs' | 'maxBatch'>;
}

/** How often a server looks for erasures whose grace period is over. */
export const ERASURE_CHECK_MS = 60_000;
/** How often a deployment applies audit retention (every 6 hours, by whichever server claims the run). */
export const RETENTION_INTERVAL_MS = 6 * 3_600_000;
/** How often a server looks whether the deployment's audit retention is due. */
export const RETENTION_CHECK_MS = 10 * 60_000;

/**
 * One Bulkhead instance: the store, the registry, the low-code data model and the two
 * access checks (authentication, then one central authorization decision per operation).
 */
export class Bulkhead {
  readonly config: Config;
  /** The control cell's store: tenant registry, placement directory, moves, usage. */
  readonly store: Store;
  /** The storage cells and the router that sends each tenant's operations to its placement. */
  readonly placements: Placements;
  readonly tenants: Tenants;
  /** Online tenant moves between tiers, cells and regions. */
  readonly moves: Moves;
  readonly collections: Collections;
  readonly records: Records;
  /** Per-tenant usage counters (reads, writes, rows), flushed in batches. */
  readonly usage: Usage;
  /** Partition health, tenant sizes and promotion candidates (operator views). */
  readonly health: Health;
  readonly authorizer: Authorizer;
  readonly #tokens: TokenVerifier;
  readonly #jwtSecret: Uint8Array | undefined;
  #operators: OperatorTokenVerifier;
  #operatorsLoadedAt = 0;

  /** The key-encryption keys (per region) that wrap every tenant's data keys. */
  readonly kms: Kms;
  /** Every tenant's data and blind-index keys, unwrapped on demand and cached for a bounded time. */
  readonly keyring: TenantKeyring;
  /** Data-key rotations with resumable re-encryption. */
  readonly keyRotations: KeyRotations;
  /** Scheduled, cancellable tenant erasures by crypto-shredding. */
  readonly erasures: Erasures;
  /** The audit trail: per-tenant and platform hash chains, signed checkpoints to the witness. */
  readonly audit: AuditLog;
  #erasureTimer: NodeJS.Timeout | undefined;
  #retentionTimer: NodeJS.Timeout | undefined;

  private constructor(
    config: Config,
    placements: Placements,
    moves: Moves,
    authorizer: Authorizer,
    tokens: TokenVerifier,
    jwtSecret: Uint8Array | undefined,
    operators: OperatorTokenVerifier,
    kms: Kms,
    rotations: Pick<KeyRotationsOptions, 'onStep'> = {},
    erasures: Pick<ErasuresOptions, 'onStep'> = {},
    audit?: AuditLog,
  ) {
    this.config = config;
    this.placements = placements;
    this.moves = moves;
    const store = placements.control.store;
    this.store = store;
    this.authorizer = authorizer;
    this.#tokens = tokens;
    this.#jwtSecret = jwtSecret;
    this.#operators = operators;
    this.#operatorsLoadedAt = Date.now();
    this.tenants = new Tenants(store, placements, { regions: config.regions });
    this.collections = new Collections(placements, { encryptedClassifications: config.encryptedClassifications });
    this.usage = new Usage(store);
    this.kms = kms;
    this.keyring = new TenantKeyring({
      kms,
      scopes: placements,
      regionOf: async (tenantId) => {
        const placed = await placements.resolve(tenantId);
        if (!placed) throw new BulkheadError('TENANT_NOT_FOUND', 'no such tenant');
        return placed.region;
      },
      cacheMs: config.keyCacheMs,
    });
    this.keyRotations = new KeyRotations(placements, this.collections, this.keyring, {
      batchSize: config.rotationBatchSize,
      keyCacheMs: config.keyCacheMs,
      ...rotations,
    });
    if (!audit) throw new BulkheadError('INTERNAL', 'Bulkhead needs its audit log');
    this.audit = audit;
    this.erasures = new Erasures(
      { placements, tenants: this.tenants, kms, keyring: this.keyring, busy: (tenantId) => this.#busyWith(tenantId), regions: [...new Set([...config.regions, ...placements.cells.all().map((c) => c.region)])] },
      { defaultGraceSeconds: config.eraseGraceSeconds, maxGraceSeconds: MAX_ERASE_GRACE_SECONDS, ...erasures },
    );
    this.records = new Records(placements, this.collections, this.usage, this.keyring);
    this.health = new Health(store, this.usage, {}, placements);
  }

  /** Opens the store the configuration names, applies migrations and loads the access policies. */
  static async open(config: Config, options: OpenOptions = {}): Promise<Bulkhead> {
    const cells = await Cells.open(config, options.engine ? { controlEngine: options.engine } : {});
    const placements = new Placements(cells, { cacheTtlMs: config.placementCacheMs });
    const store = cells.control.store;
    let kms: Kms | undefined;
    let audit: AuditLog | undefined;
    try {
      kms = await openKms(config.kms);
      await placements.backfill();
      const authorizer = await Authorizer.create();
      // With a JWKS URL the identity provider signs tenant tokens; a secret is still kept for minting in development.
      const jwtSecret = config.jwksUrl && !config.jwtSecret ? undefined : resolveJwtSecret(config, generateJwtSecret);
      const tokens = new TokenVerifier({
        ...(config.jwksUrl ? { jwksUrl: config.jwksUrl } : { secret: jwtSecret! }),
        issuer: config.jwtIssuer,
        audience: config.jwtAudience,
      });
      // Checkpoints are signed with a key kept in the data directory and written to the witness
      // directory; both belong outside the database (docs/audit.md, "The witness").
      const signer = await loadOrCreateSigner(join(config.dataDir, SIGNING_KEY_DIR_NAME));
      audit = new AuditLog({
        scopes: {
          tenant: (tenantId) => placements.tenant(tenantId, { write: true }),
          platform: () => store.platform(),
          across: (parts) => placements.writeAcross(parts),
        },
        signer,
        witness: new Witness(config.auditWitnessDir),
        anchors: new Witness(join(config.auditWitnessDir, 'anchors')),
        checkpointEvery: config.auditCheckpointEvents,
        checkpointMs: config.auditCheckpointMs,
        ...options.audit,
      });
      const hashes = await loadOperatorHashes(store);
      if (config.operatorToken === undefined && hashes.length === 0) {
        const token = generateOperatorToken();
        const hash = hashOperatorToken(token);
        await store.platform().batch([
          { text: 'INSERT INTO bulkhead.operator_tokens (hash, label) VALUES ($1, $2)', values: [hash, 'generated on first start'] },
        ]);
        hashes.push(hash);
        options.onOperatorTokenGenerated?.(token);
      }
      if (config.operatorToken !== undefined) hashes.push(hashOperatorToken(config.operatorToken));
      // A region move wraps the tenant's keys again in the new region (the keyring exists once `bh` does).
      let keyring: TenantKeyring | undefined;
      const onRegionChange = async (tenantId: string, _from: string, to: string) => keyring!.rewrapInto(tenantId, to);
      // Background jobs record how they end in the platform chain (system events), besides the
      // observers a caller gives (progress, crash tests).
      const log = audit;
      const moveStep = options.moves?.onStep;
      const rotationStep = options.rotations?.onStep;
      const erasureStep = options.erasures?.onStep;
      const bh = new Bulkhead(
        config,
        placements,
        new Moves(placements, {
          batchSize: config.moveBatchSize,
          onRegionChange,
          ...options.moves,
          onStep: async (move) => {
            if (move.state === 'done' || move.state === 'rolled_back') await recordJobEnd(log, jobEndOfMove(move));
            await moveStep?.(move);
          },
        }),
        authorizer,
        tokens,
        jwtSecret,
        new OperatorTokenVerifier(hashes),
        kms,
        {
          onStep: async (rotation) => {
            if (rotation.state === 'done' || rotation.state === 'failed') await recordJobEnd(log, jobEndOfRotation(rotation));
            await rotationStep?.(rotation);
          },
        },
        {
          onStep: async (erasure) => {
            if (erasure.state === 'done') await recordJobEnd(log, jobEndOfErasure(erasure));
            await erasureStep?.(erasure);
          },
        },
        audit,
      );
      keyring = bh.keyring;
      // A move or rotation interrupted by a crash or a restart goes on from the state it was in.
      if (options.resumeMoves ?? true) await bh.moves.resume();
      if (options.resumeRotations ?? true) await bh.keyRotations.resume();
      // Erasures whose grace period ended while no server ran, or that a crash interrupted, go on.
      if (options.runErasures ?? true) bh.#startErasures();
      return bh;
    } catch (error) {
      await audit?.close().catch(() => {});
      await kms?.close().catch(() => {});
      await cells.close().catch(() => {});
      throw error;
    }
  }

  /**
   * Authenticates a bearer token: an operator token, or a tenant JWT whose tenant exists and is
   * active. Every failure is a 401-class `AuthenticationError`.
   */
  async authenticate(authorization: string | undefined): Promise<Principal> {
    if (!authorization) throw new AuthenticationError('AUTH_REQUIRED', 'send Authorization: Bearer <token>');
    const match = /^Bearer ([^\s]+)$/i.exec(authorization);
    if (!match) throw new AuthenticationError('AUTH_REQUIRED', 'send Authorization: Bearer <token>');
    const token = match[1]!;
    if (looksLikeOperatorToken(token)) return this.#verifyOperator(token);
    const principal = await this.#tokens.verify(token);
    const status = await this.tenants.status(principal.tenantId);
    // A tenant being switched over by a move is served: its reads go on, its writes get 503.
    if (status !== 'active' && status !== 'migrating') throw new AuthenticationError('AUTH_TENANT_INACTIVE', 'the token names no active tenant');
    return principal;
  }

  /** The central decision point: returns the decision when allowed, throws ACCESS_DENIED otherwise. */
  authorize(principal: Principal, action: Action, resource: Resource): Decision {
    const decision = this.authorizer.authorize(principal, action, resource);
    if (!decision.allowed) throw new AccessDeniedError();
    return decision;
  }

  /** Mints a tenant token with the HS256 secret (development and tests; production tokens come from the IdP). */
  async mintToken(tenantId: string, input: { sub: unknown; roles: unknown; ttlSeconds?: unknown }): Promise<{ token: string; expiresAt: string }> {
    if (!this.#jwtSecret) {
      throw new BulkheadError('CONFIG_INVALID', 'minting needs BULKHEAD_JWT_SECRET; tenant tokens come from the identity provider here');
    }
    return mintTenantToken({
      secret: this.#jwtSecret,
      issuer: this.config.jwtIssuer,
      audience: this.config.jwtAudience,
      tenantId,
      subject: input.sub as string,
      roles: input.roles as TenantRole[],
      ttlSeconds: (input.ttlSeconds ?? 3600) as number,
    });
  }

  /** Plans and starts a move of a tenant (by id or slug); the move runs in the background. */
  async moveTenant(idOrSlug: string, input: unknown, actor: string) {
    const tenant = await this.tenants.get(idOrSlug);
    return this.moves.start(tenant, input, actor);
  }

  /** Starts (or joins the unfinished) rotation of a tenant's data key (by id or slug); it runs in the background. */
  async rotateKeys(idOrSlug: string, actor: string) {
    const tenant = await this.tenants.get(idOrSlug);
    return this.keyRotations.start(tenant, actor);
  }

  /**
   * Schedules the erasure of a tenant (by id or slug) after its grace period, and marks it
   * offboarding at once; with no grace period it runs now, in the background.
   */
  async eraseTenant(idOrSlug: string, input: unknown, actor: string) {
    const tenant = await this.tenants.get(idOrSlug);
    const erasure = await this.erasures.schedule(tenant, input, actor);
    if (erasure.graceSeconds === 0) void this.erasures.runDue().catch(() => {});
    return erasure;
  }

  /**
   * Verifies the audit trail: the chain of one tenant (by id or slug), or every tenant's and the
   * platform's; erased tenants are reported as skipped (their chain went with their data).
   */
  async verifyAudit(idOrSlug?: string, onProgress?: (rows: number, total: number) => void): Promise<VerifyReport> {
    const tenants = idOrSlug === undefined ? await this.tenants.list() : [await this.tenants.get(idOrSlug)];
    return verifyTrail(
      { ...this.#auditSources(), ...(onProgress ? { onProgress } : {}) },
      tenants.map((t) => ({ id: t.id, erased: t.status === 'erased' })),
      idOrSlug === undefined,
    );
  }

  /** Where the chains, their checkpoints and their anchors are read from, and the key they verify with. */
  #auditSources(): VerifySources {
    return {
      tenant: (tenantId) => this.placements.tenant(tenantId, { requireActive: false }),
      platform: () => this.store.platform(),
      witness: this.audit.witness,
      anchors: this.audit.anchors,
      keys: [this.audit.verifyingKey],
    };
  }

  /**
   * Applies audit retention: the events of every tenant's chain and of the platform chain from
   * before `before` (default: the retention period ago) are removed behind a signed anchor; erased
   * tenants are left (their chain went with their data), and a tenant being moved until its move
   * has ended. A chain that fails is reported and the others go on.
   */
  async pruneAudit(before: Date = new Date(Date.now() - this.config.auditRetentionDays * 86_400_000)): Promise<PruneResult[]> {
    const sources = this.#auditSources();
    const platform = (chain: string) => chain === PLATFORM_CHAIN;
    const deps: RetentionDeps = {
      scope: (chain) => (platform(chain) ? sources.platform() : sources.tenant(chain)),
      signer: this.audit.signer,
      anchors: this.audit.anchors,
      keys: sources.keys,
      // The chains are those of the tenants listed below, none erased: no need to look each one up again.
      verify: (chain) => verifyTrail(sources, platform(chain) ? [] : [{ id: chain, erased: false }], platform(chain)),
      remove: (chain, throughSeq) => (platform(chain) ? this.store.prunePlatformAudit(throughSeq) : this.placements.pruneAudit(chain, throughSeq)),
      moving: async (chain) => !platform(chain) && (await this.#moving(chain)),
    };
    const tenants = (await this.tenants.list()).filter((t) => t.status !== 'erased');
    const results: PruneResult[] = [];
    for (const chain of [...tenants.map((t) => t.id), PLATFORM_CHAIN]) {
      results.push(await pruneChain(deps, chain, before).catch((): PruneResult => ({ chain, anchorSeq: null, removed: 0, refused: 'error' })));
    }
    // What the run removed, and each chain it refused to touch (a divergence found on the way), in
    // the platform chain: removing audit events is itself audited. Recorded at once, they share
    // the log's group commits instead of one commit each.
    const run = uuidv7();
    const findings = results.filter((r) => r.anchorSeq !== null || r.refused !== undefined);
    await Promise.all(findings.map((r) => recordJobEnd(this.audit, jobEndOfPrune(run, r))));
    return results;
  }

  /**
   * Applies audit retention (`pruneAudit`) when the deployment's last run started `intervalMs` ago
   * or more, or never ran; returns its results, or null when it was not due. The run is claimed in
   * the control plane (`bulkhead.maintenance_runs`, migration 17) in one statement, so of servers
   * that look at once, one runs it.
   */
  async pruneAuditIfDue(intervalMs: number = RETENTION_INTERVAL_MS): Promise<PruneResult[] | null> {
    const [claimed] = await this.store.platform().batch([
      {
        text:
          "INSERT INTO bulkhead.maintenance_runs (name, started_at) VALUES ('audit-retention', now()) " +
          'ON CONFLICT (name) DO UPDATE SET started_at = now() ' +
          'WHERE bulkhead.maintenance_runs.started_at <= now() - make_interval(secs => $1::double precision / 1000) RETURNING started_at',
        values: [intervalMs],
      },
    ]);
    return claimed!.rows.length === 0 ? null : this.pruneAudit();
  }

  /** Cancels the scheduled erasure of a tenant (by id or slug); it gets its earlier status back. */
  async cancelErasure(idOrSlug: string, actor: string) {
    const tenant = await this.tenants.get(idOrSlug);
    return this.erasures.cancel(tenant, actor);
  }

  /** Stops the movers, rotators and erasers at a persisted step, flushes the usage counters and closes the cells. */
  async close(): Promise<void> {
    if (this.#erasureTimer) clearInterval(this.#erasureTimer);
    if (this.#retentionTimer) clearInterval(this.#retentionTimer);
    await this.erasures.close();
    await this.moves.close();
    await this.keyRotations.close();
    await this.audit.close().catch(() => {});
    // A store that cannot take the last counts must not keep the process from closing.
    await this.usage.close().catch(() => {});
    await this.placements.cells.close();
    await this.kms.close();
  }

  /** Whether a move of the tenant has not ended (neither done nor rolled back). */
  async #moving(tenantId: string): Promise<boolean> {
    return (await this.moves.list(tenantId)).some((m) => m.state !== 'done' && m.state !== 'rolled_back');
  }

  /** What keeps a tenant from being erased now: a move or a key rotation under way. */
  async #busyWith(tenantId: string): Promise<string | null> {
    if (await this.#moving(tenantId)) return 'move';
    if (await this.keyRotations.busy(tenantId)) return 'key rotation';
    return null;
  }

  /** Runs due erasures now and every ERASURE_CHECK_MS; a failure is retried at the next check (the erasure says how far it got). */
  #startErasures(): void {
    void this.erasures.runDue().catch(() => {});
    this.#erasureTimer = setInterval(() => void this.erasures.runDue().catch(() => {}), ERASURE_CHECK_MS);
    this.#erasureTimer.unref();
    // Audit retention: a few times a day is plenty for a period counted in days. Looked for at
    // start too, so servers that restart more often than the interval do not put it off.
    void this.pruneAuditIfDue().catch(() => {});
    this.#retentionTimer = setInterval(() => void this.pruneAuditIfDue().catch(() => {}), RETENTION_CHECK_MS);
    this.#retentionTimer.unref();
  }

  async #verifyOperator(token: string): Promise<Principal> {
    try {
      return this.#operators.verify(token);
    } catch (error) {
      // Another process may have stored a new operator token: reload at most once a second.
      if (Date.now() - this.#operatorsLoadedAt < 1000) throw error;
      const hashes = await loadOperatorHashes(this.store);
      if (this.config.operatorToken !== undefined) hashes.push(hashOperatorToken(this.config.operatorToken));
      this.#operators = new OperatorTokenVerifier(hashes);
      this.#operatorsLoadedAt = Date.now();
      return this.#operators.verify(token);
    }
  }
}

/** How a background job ended, for its system event in the platform chain. */
interface JobEnd {
  readonly action: string;
  /** The tenant the job concerned; absent for a job on the platform itself. */
  readonly tenantId?: string;
  readonly jobId: string;
  readonly ok: boolean;
  readonly errorCode?: ErrorCode;
  readonly operator?: Omit<AuditOperatorFields, 'targetTenantId' | 'jobId'>;
}

function jobEndOfMove(move: MoveView): JobEnd {
  const end = (e: MoveView['source']) => ({ tier: e.tier, region: e.region, cell: e.cell });
  return {
    action: 'tenant.move',
    tenantId: move.tenantId,
    jobId: move.id,
    ok: move.state === 'done',
    ...(move.state === 'done' ? {} : { errorCode: codeIn(move.error) }),
    operator: { from: end(move.source), to: end(move.target), ...(move.legalBasis ? { legalBasis: move.legalBasis } : {}), reason: `move ${move.state}` },
  };
}

/** Why retention left a chain as it was, as the error code of its event. */
const PRUNE_REFUSALS: Record<NonNullable<PruneResult['refused']>, ErrorCode> = {
  'chain-diverges': 'AUDIT_CHAIN_BROKEN',
  'witness-invalid': 'AUDIT_CHECKPOINT_INVALID',
  error: 'INTERNAL',
};

function jobEndOfPrune(run: string, r: PruneResult): JobEnd {
  const chain = r.chain === PLATFORM_CHAIN ? 'the platform chain' : 'the chain';
  return {
    action: 'audit.prune',
    ...(r.chain === PLATFORM_CHAIN ? {} : { tenantId: r.chain }),
    jobId: run,
    ok: r.refused === undefined,
    ...(r.refused === undefined ? {} : { errorCode: PRUNE_REFUSALS[r.refused] }),
    operator: {
      reason:
        r.refused === undefined
          ? `retention removed ${r.removed} events of ${chain} through seq ${r.anchorSeq}, behind an anchor signed at that seq`
          : `retention left ${chain} as it was: ${r.refused}`,
    },
  };
}

/** The error code a job recorded in its `error` (`state: CODE ...`), or INTERNAL. */
function codeIn(error: string | null): ErrorCode {
  const code = /: ([A-Z][A-Z0-9_]+)/.exec(error ?? '')?.[1];
  return code !== undefined && code in ERROR_CODES ? (code as ErrorCode) : 'INTERNAL';
}

function jobEndOfRotation(r: RotationView): JobEnd {
  return {
    action: 'tenant.keys',
    tenantId: r.tenantId,
    jobId: r.id,
    ok: r.state === 'done',
    ...(r.state === 'done' ? {} : { errorCode: codeIn(r.error) }),
    operator: { ...(r.toVersion ? { keyVersion: r.toVersion } : {}), reason: `key rotation ${r.state}; versions destroyed: ${(r.progress.destroyed ?? []).join(', ') || 'none'}` },
  };
}

function jobEndOfErasure(e: ErasureView): JobEnd {
  const c = e.certificate;
  const records = c ? Object.values(c.records).reduce((a, b) => a + b, 0) : 0;
  const keys = (c?.tenantKeys ?? []).filter((k) => k.keyId !== null).map((k) => `${k.region}:${k.keyId}`);
  return {
    action: 'tenant.erase',
    tenantId: e.tenantId,
    jobId: e.id,
    ok: true,
    operator: { reason: `erased: ${records} records purged; tenant keys destroyed: ${keys.join(' ') || 'none'}`.slice(0, 500) },
  };
}

/**
 * Records a background job's end as a system event in the platform chain. A failure to record is
 * not the job's failure (its own state is saved); it is retried by nothing, so it is rare enough
 * to accept: the job's row in the control plane keeps the facts.
 */
async function recordJobEnd(log: AuditLog, job: JobEnd): Promise<void> {
  await log
    .record(
      createAuditEvent({
        tenantId: null,
        principal: { subject: 'bulkhead', roles: [], authMethod: 'system' },
        action: job.action,
        decision: { effect: 'allow', policyIds: [] },
        requestId: job.jobId,
        sourceAddress: null,
        outcome: job.ok ? 'success' : 'error',
        ...(job.ok ? {} : { errorCode: job.errorCode ?? 'INTERNAL' }),
        operator: { ...(job.tenantId === undefined ? {} : { targetTenantId: job.tenantId }), jobId: job.jobId, ...job.operator },
      }),
    )
    .catch(() => {});
}

async function loadOperatorHashes(store: Store): Promise<string[]> {
  const [r] = await store.platform().batch([{ text: 'SELECT hash FROM bulkhead.operator_tokens ORDER BY created_at' }]);
  return r!.rows.map((row) => row.hash as string);
}
