import { PassThrough } from 'node:stream';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import type { Action, Principal } from '../access/principal.js';
import type { Bulkhead } from '../bulkhead.js';
import { AccessDeniedError, BulkheadError, InvalidRequestError, NotFoundError, WritesPausedError, type ErrorCode } from '../errors.js';
import { createAuditEvent, queryFingerprint, type AuditEvent } from '../audit/event.js';
import type { WriteAudit } from '../tenancy/records.js';
import { PLATFORM_CHAIN } from '../audit/chain.js';
import { MAX_EXPORT_EVENTS, MAX_TRAIL_LIMIT, parseTrailQuery, readTrail, toCsv, toNdjson, type TrailEvent } from '../audit/trail.js';
import { auditPrincipal, operatorFieldsOf, readAudited, type AuditContext } from './audit-context.js';
import { isUuid, uuidv7 } from '../ids.js';
import { checkCollectionName } from '../tenancy/collections.js';
import { findUnstorableValue } from '../tenancy/validation.js';
import { openApiDocument } from './openapi.js';
import { toProblem, type Problem } from './problem.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** The authenticated caller; set by the authentication hook before any handler runs. */
    principal: Principal | null;
    /** The error code of a failed request, for the access log. */
    problemCode: string | undefined;
    /** What the audit trail records of this request, set once the decision point has ruled (docs/audit.md). */
    audit: AuditContext | null;
  }
}


/** Options of the HTTP server. */
export interface ServerOptions {
  /** A pino logger (JSON lines); requests are logged with their tenant, never with bodies or query strings. */
  readonly logger: Logger;
  /** PEM certificate chain and key: the server then speaks HTTPS only (TLS 1.2 or newer) and sends HSTS. */
  readonly tls?: { readonly cert: Buffer | string; readonly key: Buffer | string };
}

/**
 * HSTS for a year, subdomains included (RFC 6797). Sent over TLS only: a browser ignores it over
 * plain HTTP (§8.1), where an attacker could strip or forge it anyway.
 */
const HSTS = 'max-age=31536000; includeSubDomains';

const PUBLIC_ROUTES = new Set(['/healthz']);
const REQUEST_ID = /^[A-Za-z0-9._-]{1,64}$/;

/**
 * Builds the Fastify server on the paths of the SPEC's HTTP contract. Every request is
 * authenticated first (before its body is read), then each handler asks the central decision
 * point, and every error leaves as RFC 9457 problem+json with a stable code.
 */
export async function buildServer(bh: Bulkhead, options: ServerOptions): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: options.logger as FastifyBaseLogger,
    // One access line per request is written by the onResponse hook, without URLs (query strings can hold tenant data).
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: bh.config.bodyLimit,
    genReqId: (req) => {
      const incoming = req.headers['x-request-id'];
      return typeof incoming === 'string' && REQUEST_ID.test(incoming) ? incoming : uuidv7();
    },
    requestIdHeader: false,
    // Router-level failures (a malformed %-escape, an over-long path segment) bypass the error handler;
    // without this they leave as Fastify's own JSON, without problem+json, a code or a request id.
    frameworkErrors: (error, req, reply) => {
      reply.header('x-request-id', req.id);
      sendProblem(req, reply, fromFastify(error));
    },
    return503OnClosing: true,
    routerOptions: { ignoreTrailingSlash: false, maxParamLength: 200 },
    // TLS 1.0 and 1.1 are deprecated (RFC 8996). Node's default floor is 1.2 already, but
    // `--tls-min-v1.0` would lower it; set here, it holds. With `https` set, Fastify listens with TLS only.
    https: options.tls ? { cert: options.tls.cert, key: options.tls.key, minVersion: 'TLSv1.2' } : null,
  });
  if (options.tls) {
    // On the raw response, ahead of Fastify's handler: hooks do not run for router failures or the
    // 503 sent while closing, and every response must carry it.
    app.server.prependListener('request', (_req, res) => res.setHeader('strict-transport-security', HSTS));
  }
  app.removeContentTypeParser('text/plain');
  app.decorateRequest('principal', null);
  app.decorateRequest('problemCode', undefined);
  app.decorateRequest('audit', null);

  /** The audit event of this request with `outcome`. */
  const eventOf = (req: FastifyRequest, ctx: AuditContext, outcome: 'success' | 'denied' | 'error', errorCode?: ErrorCode, recordId?: string): AuditEvent =>
    createAuditEvent({
      tenantId: ctx.tenantId,
      principal: req.principal ? auditPrincipal(req.principal) : null,
      action: ctx.action,
      ...(ctx.collection !== undefined ? { collection: ctx.collection } : {}),
      ...(recordId !== undefined ? { recordIds: [recordId] } : ctx.recordIds?.length ? { recordIds: ctx.recordIds } : {}),
      ...(ctx.query !== undefined && recordId === undefined && !ctx.recordIds?.length ? { query: ctx.query } : {}),
      decision: ctx.decision,
      requestId: req.id,
      sourceAddress: req.ip ?? null,
      outcome,
      ...(errorCode !== undefined ? { errorCode } : {}),
      ...(ctx.operator !== undefined && req.principal?.kind === 'operator' ? { operator: ctx.operator } : {}),
    });
  /** A write's audit: its event is appended in the write's transaction. */
  const writeAudit = (req: FastifyRequest): WriteAudit => {
    const ctx = req.audit!;
    return {
      log: bh.audit,
      event: (recordId) => eventOf(req, ctx, 'success', undefined, recordId),
    };
  };

  app.addHook('onRequest', async (req, reply) => {
    reply.header('x-request-id', req.id);
    if (req.routeOptions.url !== undefined && PUBLIC_ROUTES.has(req.routeOptions.url)) return;
    if (req.routeOptions.url === undefined) return; // unknown route: answered 404 by the not-found handler
    req.principal = await bh.authenticate(req.headers.authorization);
  });

  // Valid JSON that cannot be stored as sent (U+0000, unpaired surrogates, 1e400, deep nesting) is bad input,
  // refused before any statement.
  app.addHook('preHandler', async (req) => {
    const bad = req.body === undefined ? undefined : findUnstorableValue(req.body);
    if (bad !== undefined) throw new InvalidRequestError(bad.problem, { field: bad.path || 'body' });
  });

  // A successful operation whose event was not written with it (reads, collection and operator
  // actions) is answered only once its event is durable (the group-commit writer).
  app.addHook('preSerialization', async (req, reply, payload) => {
    const ctx = req.audit;
    if (ctx && !ctx.written && !ctx.unaudited && reply.statusCode < 400) {
      if (req.principal?.kind === 'operator') ctx.operator ??= operatorFieldsOf(req.routeOptions.url, payload);
      await bh.audit.record(eventOf(req, ctx, 'success'));
      ctx.written = true;
    }
    return payload;
  });

  app.addHook('onResponse', async (req, reply) => {
    const p = req.principal;
    req.log.info(
      {
        method: req.method,
        route: req.routeOptions.url ?? null,
        status: reply.statusCode,
        ms: Math.round(reply.elapsedTime * 100) / 100,
        principal: p ? p.kind : null,
        tenantId: p?.kind === 'tenant' ? p.tenantId : undefined,
        code: req.problemCode,
      },
      'request',
    );
  });

  app.setNotFoundHandler(async (req, reply) => {
    reply.header('x-request-id', req.id);
    return sendProblem(req, reply, new NotFoundError('ROUTE_NOT_FOUND', 'no such route; see /openapi.json'));
  });

  app.setErrorHandler(async (error, req, reply) => {
    const failure = fromFastify(error);
    await auditFailure(req, failure);
    return sendProblem(req, reply, failure);
  });

  /**
   * Records a refused or failed operation: in the principal's own chain (a tenant's denied
   * attempt on another tenant lands in the attacker's chain, never the victim's), or the platform
   * chain for operators and unauthenticated requests. A failure to record it is logged; the answer
   * is the original error either way (nothing was done).
   */
  const auditFailure = async (req: FastifyRequest, failure: unknown): Promise<void> => {
    const ctx = req.audit;
    if (ctx?.written) return;
    const code: ErrorCode = failure instanceof BulkheadError ? failure.code : 'INTERNAL';
    const denied = failure instanceof AccessDeniedError || code.startsWith('AUTH_');
    try {
      if (ctx) {
        await bh.audit.record(eventOf(req, ctx, ctx.decision.effect === 'deny' || denied ? 'denied' : 'error', code));
      } else if (req.routeOptions.url !== undefined && !PUBLIC_ROUTES.has(req.routeOptions.url)) {
        // Refused before any decision: authentication failed, or the request was malformed.
        const tenantId = req.principal?.kind === 'tenant' ? req.principal.tenantId : null;
        await bh.audit.record(
          eventOf(req, { tenantId, action: 'request.authenticate', decision: { effect: 'deny', policyIds: [] } }, 'denied', code),
        );
      }
    } catch (error) {
      req.log.error({ err: safeError(error) }, 'audit event not recorded');
    }
  };

  const principal = (req: FastifyRequest): Principal => {
    if (!req.principal) throw new BulkheadError('INTERNAL', 'a route ran without an authenticated principal');
    return req.principal;
  };
  const tenantOf = (req: FastifyRequest, action: Action, collection?: string): { tenantId: string; subject: string } => {
    const p = principal(req);
    // The resource's tenant is the principal's own: the path names no tenant, so it cannot name another.
    const tenantId = p.kind === 'tenant' ? p.tenantId : undefined;
    decide(req, p, action, { ...(tenantId ? { tenantId } : {}), ...(collection ? { collection } : {}) }, tenantId ?? null, collection);
    return { tenantId: tenantId!, subject: p.subject };
  };
  const operator = (req: FastifyRequest, action: Action, tenantId?: string): string => {
    const p = principal(req);
    decide(req, p, action, tenantId ? { tenantId } : {}, p.kind === 'tenant' ? p.tenantId : null);
    return p.subject;
  };
  /** Asks the decision point, and records its answer for the audit event before acting on it. */
  const decide = (req: FastifyRequest, p: Principal, action: Action, resource: { tenantId?: string; collection?: string }, chain: string | null, collection?: string): void => {
    const decision = bh.authorizer.authorize(p, action, resource);
    req.audit = {
      tenantId: chain,
      action,
      ...(collection !== undefined ? { collection } : {}),
      decision: { effect: decision.allowed ? 'allow' : 'deny', policyIds: [...decision.policies] },
    };
    if (!decision.allowed) throw new AccessDeniedError();
  };

  app.get('/healthz', async () => ({ status: 'ok', store: bh.store.engine.kind }));
  app.get('/openapi.json', async () => openApiDocument);

  // Tenants (operator).
  app.post('/v1/tenants', async (req, reply) => {
    const actor = operator(req, 'tenant.create');
    reply.code(201);
    return bh.tenants.create(req.body, actor);
  });
  app.get('/v1/tenants', async (req) => {
    operator(req, 'tenant.list');
    return { tenants: await bh.tenants.list() };
  });
  app.get<{ Params: { id: string } }>('/v1/tenants/:id', async (req) => {
    operator(req, 'tenant.read');
    return bh.tenants.get(req.params.id);
  });
  app.patch<{ Params: { id: string } }>('/v1/tenants/:id', async (req) => {
    const actor = operator(req, 'tenant.update');
    const body = objectBody(req.body, ['status']);
    return bh.tenants.setStatus(req.params.id, body.status, actor);
  });
  app.post<{ Params: { id: string } }>('/v1/tenants/:id/moves', async (req, reply) => {
    const actor = operator(req, 'tenant.move');
    reply.code(202);
    return bh.moveTenant(req.params.id, req.body, actor);
  });
  app.get<{ Params: { id: string } }>('/v1/tenants/:id/moves', async (req) => {
    operator(req, 'tenant.read');
    const tenant = await bh.tenants.get(req.params.id);
    return { moves: await bh.moves.list(tenant.id) };
  });
  app.get<{ Params: { id: string; moveId: string } }>('/v1/tenants/:id/moves/:moveId', async (req) => {
    operator(req, 'tenant.read');
    const tenant = await bh.tenants.get(req.params.id);
    return bh.moves.get(tenant.id, req.params.moveId);
  });
  // Keys of a tenant (operator): data-key rotation with re-encryption; key rows without key material.
  app.post<{ Params: { id: string } }>('/v1/tenants/:id/keys/rotate', async (req, reply) => {
    const actor = operator(req, 'tenant.keys');
    objectBody(req.body ?? {}, []);
    reply.code(202);
    return bh.rotateKeys(req.params.id, actor);
  });
  app.get<{ Params: { id: string } }>('/v1/tenants/:id/keys', async (req) => {
    operator(req, 'tenant.keys');
    const tenant = await bh.tenants.get(req.params.id);
    return { keys: await bh.keyring.describe(tenant.id) };
  });
  app.get<{ Params: { id: string } }>('/v1/tenants/:id/keys/rotations', async (req) => {
    operator(req, 'tenant.keys');
    const tenant = await bh.tenants.get(req.params.id);
    return { rotations: await bh.keyRotations.list(tenant.id) };
  });
  app.get<{ Params: { id: string; rotationId: string } }>('/v1/tenants/:id/keys/rotations/:rotationId', async (req) => {
    operator(req, 'tenant.keys');
    const tenant = await bh.tenants.get(req.params.id);
    return bh.keyRotations.get(tenant.id, req.params.rotationId);
  });
  // Erasure by crypto-shredding (operator): scheduled with a grace period, cancellable until it ends.
  app.post<{ Params: { id: string } }>('/v1/tenants/:id/erase', async (req, reply) => {
    const actor = operator(req, 'tenant.erase');
    reply.code(202);
    return bh.eraseTenant(req.params.id, req.body ?? {}, actor);
  });
  app.delete<{ Params: { id: string } }>('/v1/tenants/:id/erase', async (req) => {
    const actor = operator(req, 'tenant.erase');
    return bh.cancelErasure(req.params.id, actor);
  });
  app.get<{ Params: { id: string } }>('/v1/tenants/:id/erasures', async (req) => {
    operator(req, 'tenant.erase');
    const tenant = await bh.tenants.get(req.params.id);
    return { erasures: await bh.erasures.list(tenant.id) };
  });
  // The audit trail: a tenant's auditors and admins read their own tenant's chain; operators read
  // any tenant's (`tenant=`) or the platform's. JSON pages, or NDJSON and CSV exports with the
  // chain data needed to verify them offline.
  app.get<{ Querystring: Record<string, unknown> }>('/v1/audit/events', async (req, reply) => {
    const p = principal(req);
    const { tenant, ...rest } = queryParams(req.query, ['tenant', 'from', 'to', 'principal', 'action', 'collection', 'record', 'outcome', 'cursor', 'limit']);
    let chain: string;
    if (p.kind === 'operator') {
      decide(req, p, 'tenant.audit', {}, null);
      if (tenant === undefined || tenant === PLATFORM_CHAIN) {
        chain = PLATFORM_CHAIN;
      } else {
        chain = (await bh.tenants.get(tenant)).id;
        req.audit!.operator = { targetTenantId: chain };
      }
    } else {
      // The tenant is the principal's own: a tenant token names no other (SPEC, principle 2).
      if (tenant !== undefined) throw new InvalidRequestError('tenant= is for operators; a tenant token reads its own tenant\'s trail', { field: 'tenant' });
      decide(req, p, 'audit.read', { tenantId: p.tenantId }, p.tenantId);
      chain = p.tenantId;
    }
    const { filters, cursor, limit } = parseTrailQuery(rest);
    const scope = chain === PLATFORM_CHAIN ? bh.store.platform() : bh.placements.tenant(chain, { requireActive: false });
    const shape = { filters: Object.keys(filters).sort(), limit };
    const accept = String(req.headers.accept ?? '');
    const format = accept.includes('application/x-ndjson') ? 'ndjson' : accept.includes('text/csv') ? 'csv' : 'json';
    if (format === 'json') {
      const page = await readTrail(scope, chain, filters, cursor, limit);
      req.audit!.query = { fingerprint: queryFingerprint(shape), rowCount: page.events.length };
      return page;
    }
    // An export: every matching event after the cursor, up to MAX_EXPORT_EVENTS, in seq order.
    const events: TrailEvent[] = [];
    let after = cursor;
    for (;;) {
      const page = await readTrail(scope, chain, filters, after, Math.min(MAX_TRAIL_LIMIT, MAX_EXPORT_EVENTS - events.length));
      events.push(...page.events);
      if (page.nextCursor === null || events.length >= MAX_EXPORT_EVENTS) break;
      after = events[events.length - 1]!.seq;
    }
    req.audit!.query = { fingerprint: queryFingerprint({ ...shape, format }), rowCount: events.length };
    // A text body skips the serialization hook: the export's own event is recorded here, before it is sent.
    await bh.audit.record(eventOf(req, req.audit!, 'success'));
    req.audit!.written = true;
    reply.type(format === 'ndjson' ? 'application/x-ndjson' : 'text/csv; charset=utf-8');
    return format === 'ndjson' ? toNdjson(events) : toCsv(events);
  });

  // The audit trail (operator): recompute every chain, check every checkpoint against the witness.
  app.post('/v1/audit/verify', async (req, reply) => {
    operator(req, 'audit.verify');
    const body = objectBody(req.body ?? {}, ['tenant']);
    if (body.tenant !== undefined && (typeof body.tenant !== 'string' || body.tenant.length === 0 || body.tenant.length > 64)) {
      throw new InvalidRequestError('tenant must be a tenant id or slug', { field: 'tenant' });
    }
    if (!String(req.headers.accept ?? '').includes('application/x-ndjson')) return bh.verifyAudit(body.tenant as string | undefined);
    // Streamed: `{"progress": {"rows", "total"}}` lines while it runs (a progress bar for long
    // chains, and no idle connection), then `{"report": …}`, or `{"problem": …}` if it failed.
    const tenant = body.tenant === undefined ? undefined : (await bh.tenants.get(body.tenant as string)).id;
    await bh.audit.record(eventOf(req, req.audit!, 'success'));
    req.audit!.written = true;
    const stream = new PassThrough();
    let last = 0;
    void bh
      .verifyAudit(tenant, (rows, total) => {
        const now = Date.now();
        if (now - last < 200 && rows < total) return;
        last = now;
        stream.write(`${JSON.stringify({ progress: { rows, total } })}\n`);
      })
      .then((report) => stream.end(`${JSON.stringify({ report })}\n`))
      .catch((error: unknown) => stream.end(`${JSON.stringify({ problem: toProblem(error, req.id) })}\n`));
    reply.type('application/x-ndjson');
    return reply.send(stream);
  });
  app.get('/v1/placements', async (req) => {
    operator(req, 'tenant.partitions');
    return { placements: await bh.placements.list(), cells: bh.placements.cells.all().map((c) => ({ name: c.name, region: c.region, kind: c.host.kind, control: c.control })) };
  });
  app.get<{ Params: { id: string } }>('/v1/tenants/:id/history', async (req) => {
    operator(req, 'tenant.read');
    return { history: await bh.tenants.history(req.params.id) };
  });
  app.post<{ Params: { id: string } }>('/v1/tenants/:id/tokens', async (req, reply) => {
    operator(req, 'tenant.mintToken');
    const body = objectBody(req.body, ['sub', 'roles', 'ttlSeconds']);
    const tenant = await bh.tenants.get(req.params.id);
    reply.code(201);
    return bh.mintToken(tenant.id, { sub: body.sub, roles: body.roles, ttlSeconds: body.ttlSeconds });
  });

  // Usage and partition health (operator): aggregates and tenant ids, no tenant data.
  app.get<{ Params: { id: string }; Querystring: Record<string, unknown> }>('/v1/tenants/:id/usage', async (req) => {
    operator(req, 'tenant.usage');
    const q = queryParams(req.query, ['window']);
    const tenant = await bh.tenants.get(req.params.id);
    return bh.health.tenantUsage(tenant, q.window);
  });
  app.get<{ Querystring: Record<string, unknown> }>('/v1/usage/top', async (req) => {
    operator(req, 'tenant.usage');
    return bh.health.top(queryParams(req.query, ['window', 'limit', 'minShare', 'minRows']));
  });
  app.get<{ Querystring: Record<string, unknown> }>('/v1/partitions', async (req) => {
    operator(req, 'tenant.partitions');
    queryParams(req.query, []);
    return bh.health.partitions();
  });

  // Collections (tenant builders define, members and viewers read).
  app.put<{ Params: { name: string } }>('/v1/collections/:name', async (req, reply) => {
    const name = checkCollectionName(req.params.name);
    const { tenantId, subject } = tenantOf(req, 'collection.define', name);
    const result = await bh.collections.define(tenantId, name, req.body, subject);
    reply.code(result.created ? 201 : 200);
    return result.collection;
  });
  app.get('/v1/collections', async (req) => {
    const { tenantId } = tenantOf(req, 'collection.list');
    return { collections: await bh.collections.list(tenantId) };
  });
  app.get<{ Params: { name: string } }>('/v1/collections/:name', async (req) => {
    const name = checkCollectionName(req.params.name);
    const { tenantId } = tenantOf(req, 'collection.read', name);
    return bh.collections.view(await bh.collections.get(tenantId, name));
  });

  // Records.
  app.post<{ Params: { name: string } }>('/v1/collections/:name/records', async (req, reply) => {
    const name = checkCollectionName(req.params.name);
    const actor = tenantOf(req, 'record.create', name);
    const body = objectBody(req.body, ['fields'], ['fields']);
    reply.code(201);
    const created = await bh.records.create(actor, name, body.fields, writeAudit(req));
    req.audit!.written = true;
    return created;
  });
  app.get<{ Params: { name: string }; Querystring: Record<string, unknown> }>('/v1/collections/:name/records', async (req) => {
    const name = checkCollectionName(req.params.name);
    const { tenantId } = tenantOf(req, 'record.list', name);
    const page = await bh.records.list(tenantId, name, queryParams(req.query, ['filter', 'sort', 'limit', 'cursor']));
    // The query's shape (fields, operators, sort), hashed; never its values.
    req.audit!.query = { fingerprint: queryFingerprint(page.fingerprint), rowCount: page.records.length };
    if (!readAudited((await bh.collections.get(tenantId, name)).definition, page.records)) req.audit!.unaudited = true;
    return { records: page.records, nextCursor: page.nextCursor };
  });
  app.get<{ Params: { name: string; id: string } }>('/v1/collections/:name/records/:id', async (req) => {
    const name = checkCollectionName(req.params.name);
    const { tenantId } = tenantOf(req, 'record.read', name);
    if (isUuid(req.params.id)) req.audit!.recordIds = [req.params.id];
    const record = await bh.records.get(tenantId, name, req.params.id);
    if (!readAudited((await bh.collections.get(tenantId, name)).definition, [record])) req.audit!.unaudited = true;
    return record;
  });
  app.patch<{ Params: { name: string; id: string } }>('/v1/collections/:name/records/:id', async (req) => {
    const name = checkCollectionName(req.params.name);
    const actor = tenantOf(req, 'record.update', name);
    const body = objectBody(req.body, ['fields'], ['fields']);
    if (isUuid(req.params.id)) req.audit!.recordIds = [req.params.id];
    const updated = await bh.records.update(actor, name, req.params.id, body.fields, writeAudit(req));
    req.audit!.written = true;
    return updated;
  });
  app.delete<{ Params: { name: string; id: string } }>('/v1/collections/:name/records/:id', async (req, reply) => {
    const name = checkCollectionName(req.params.name);
    const { tenantId } = tenantOf(req, 'record.delete', name);
    if (isUuid(req.params.id)) req.audit!.recordIds = [req.params.id];
    await bh.records.delete(tenantId, name, req.params.id, writeAudit(req));
    req.audit!.written = true;
    reply.code(204);
    return null;
  });

  await app.ready();
  return app;
}

/** Checks that a body is a JSON object with only the `allowed` keys (and the `required` ones). */
function objectBody(body: unknown, allowed: readonly string[], required: readonly string[] = []): Record<string, unknown> {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new InvalidRequestError('the request body must be a JSON object', { field: 'body' });
  }
  for (const key of Object.keys(body)) {
    if (!allowed.includes(key)) {
      throw new InvalidRequestError(`unknown property in the request body; allowed: ${allowed.join(', ')}`, { field: 'body' });
    }
  }
  for (const key of required) {
    if (!(key in body)) throw new InvalidRequestError(`the request body needs "${key}"`, { field: key });
  }
  return body as Record<string, unknown>;
}

/** Checks that a query string has only the `allowed` parameters, each given once. */
function queryParams(query: unknown, allowed: readonly string[]): Record<string, string> {
  const q = (query ?? {}) as Record<string, unknown>;
  for (const key of Object.keys(q)) {
    if (!allowed.includes(key)) {
      throw new InvalidRequestError(allowed.length === 0 ? 'this route takes no query parameter' : `unknown query parameter; use ${allowed.join(', ')}`);
    }
    if (typeof q[key] !== 'string') throw new InvalidRequestError(`${key} may be given once`, { field: key });
  }
  return q as Record<string, string>;
}

/** Maps Fastify's own errors (body parsing, limits) to Bulkhead codes. */
function fromFastify(error: unknown): unknown {
  if (error instanceof BulkheadError) return error;
  const e = error as { code?: string; statusCode?: number; name?: string };
  switch (e.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new BulkheadError('REQUEST_BODY_TOO_LARGE', 'the request body is larger than the configured limit');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new BulkheadError('REQUEST_UNSUPPORTED_MEDIA_TYPE', 'send the body as application/json');
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return new BulkheadError('REQUEST_INVALID_JSON', 'the request body is not valid JSON');
    default:
      if (e.name === 'SyntaxError' || (e.statusCode === 400 && /prototype/i.test(String((error as Error).message)))) {
        return new BulkheadError('REQUEST_INVALID_JSON', 'the request body is not valid JSON');
      }
      if (typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) {
        return new InvalidRequestError('the request is malformed');
      }
      return error;
  }
}

function sendProblem(req: FastifyRequest, reply: FastifyReply, error: unknown): FastifyReply {
  const problem: Problem = toProblem(error, req.id);
  req.problemCode = problem.code;
  if (problem.status >= 500) req.log.error({ err: safeError(error) }, 'request failed');
  // RFC 6750 §3: a 401 names the scheme (and, for a bad token, the error) the caller must use.
  if (problem.status === 401) {
    reply.header('www-authenticate', problem.code === 'AUTH_REQUIRED' ? 'Bearer realm="bulkhead"' : 'Bearer realm="bulkhead", error="invalid_token"');
  }
  // A store that could not answer is worth retrying shortly; say when (RFC 9110 §10.2.3).
  if (problem.status === 503) reply.header('retry-after', String(error instanceof WritesPausedError ? error.retryAfterSeconds : 1));
  reply.code(problem.status).type('application/problem+json');
  return reply.send(problem);
}

/**
 * What of an error may be logged: names, codes and stacks, never the database's detail text
 * (it quotes key values) or parameters.
 */
function safeError(error: unknown): Record<string, unknown> {
  const e = error as { name?: unknown; code?: unknown; sqlState?: unknown; statementIndex?: unknown; message?: unknown; stack?: unknown };
  if (error instanceof BulkheadError) {
    return { name: error.name, code: error.code, sqlState: e.sqlState, statementIndex: e.statementIndex, message: error.message, stack: error.stack };
  }
  return { name: e.name, code: e.code, message: e.message, stack: e.stack };
}
