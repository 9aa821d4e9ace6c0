/**
 * Crash safety of the audit trail (issue 5): a server under heavy concurrent reads and writes is
 * killed with SIGKILL; after a restart every chain verifies, seqs are gapless, and every request
 * that got a success answer has its event (an answer is sent only once its event is durable).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Bulkhead } from '../src/bulkhead.js';
import { loadConfig } from '../src/config.js';
import { crashEnv } from './support/crash.js';
import { BACKENDS, createTestDatabase, type BackendKind, type TestDatabase } from './support/backends.js';

const SERVER = join(import.meta.dirname, 'fixtures', 'audit-server.ts');

/** Starts the server child; resolves with it and its base URL once it listens. */
function startServer(env: Record<string, string>): Promise<{ child: ChildProcess; url: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', SERVER], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /PORT (\d+)/.exec(out);
      if (m) resolve({ child, url: `http://127.0.0.1:${m[1]}` });
    });
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('exit', (code) => reject(new Error(`the server exited (${code}) before listening: ${err.slice(0, 2000)}`)));
  });
}

async function call(url: string, method: string, path: string, token: string, body?: unknown, requestId?: string) {
  const res = await fetch(`${url}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}), ...(requestId ? { 'x-request-id': requestId } : {}) },
    ...(body ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : undefined };
}

for (const kind of BACKENDS) {
  describe(`audit trail survives SIGKILL under concurrent appends (${kind})`, () => {
    let db: TestDatabase;
    let dataDir: string;
    let env: Record<string, string>;

    before(async () => {
      db = await createTestDatabase(kind as BackendKind);
      dataDir = mkdtempSync(join(tmpdir(), 'bulkhead-audit-crash-'));
      env = crashEnv(db, dataDir, {
        // Checkpoints often, so the witness holds heads from the middle of the load.
        BULKHEAD_AUDIT_CHECKPOINT_EVENTS: '50',
        BULKHEAD_AUDIT_CHECKPOINT_MS: '200',
      });
    });
    after(async () => {
      await db?.drop();
      rmSync(dataDir, { recursive: true, force: true });
    });

    it('every answered request has its event after the restart, and every chain verifies gapless', async () => {
      const { child, url } = await startServer(env);
      const op = env.BULKHEAD_OPERATOR_TOKEN!;
      const answered = new Map<string, string>(); // request id → tenant id
      const tenants: Array<{ id: string; token: string; record: string }> = [];
      try {
        for (let i = 0; i < 2; i++) {
          const created = await call(url, 'POST', '/v1/tenants', op, { slug: `crash-${kind}-${i}`, name: `t${i}` });
          assert.equal(created.status, 201, JSON.stringify(created.body));
          const minted = await call(url, 'POST', `/v1/tenants/${created.body.id}/tokens`, op, { sub: 'u', roles: ['tenant_admin'] });
          const token = minted.body.token as string;
          await call(url, 'PUT', '/v1/collections/notes', token, { fields: { title: { type: 'string', required: true } } });
          const rec = await call(url, 'POST', '/v1/collections/notes/records', token, { fields: { title: 'first' } });
          tenants.push({ id: created.body.id, token, record: rec.body.id });
        }
        // Heavy concurrent load: 16 loops of reads and writes; the server is killed in the middle of it.
        let stop = false;
        let n = 0;
        const loop = async (w: number) => {
          while (!stop) {
            const t = tenants[w % tenants.length]!;
            const id = `crash-${w}-${n++}`;
            const write = n % 3 === 0;
            try {
              const res = write
                ? await call(url, 'POST', '/v1/collections/notes/records', t.token, { fields: { title: `n${n}` } }, id)
                : await call(url, 'GET', `/v1/collections/notes/records/${t.record}`, t.token, undefined, id);
              if (res.status === 200 || res.status === 201) answered.set(id, t.id);
            } catch {
              return; // the connection died with the server
            }
          }
        };
        const loops = Array.from({ length: 16 }, (_, w) => loop(w));
        await new Promise((r) => setTimeout(r, 1500));
        child.kill('SIGKILL');
        stop = true;
        await Promise.all(loops);
      } finally {
        child.kill('SIGKILL');
      }
      assert.ok(answered.size > 20, `load ran before the kill (${answered.size} answers)`);

      const bh = await Bulkhead.open(loadConfig({}, env));
      try {
        const report = await bh.verifyAudit();
        assert.equal(report.ok, true, JSON.stringify(report.firstDivergence));
        for (const t of tenants) {
          const [r] = await bh.placements.tenant(t.id, { requireActive: false }).batch([
            { text: 'SELECT seq, event FROM audit_events WHERE tenant_id = $1 ORDER BY seq', values: [t.id] },
          ]);
          const rows = r!.rows;
          assert.deepEqual(rows.map((row) => Number(row.seq)), Array.from({ length: rows.length }, (_, i) => i + 1), 'gapless');
          const ids = new Set(rows.map((row) => (row.event as { requestId: string }).requestId));
          for (const [id, tenant] of answered) if (tenant === t.id) assert.ok(ids.has(id), `the answered request ${id} has its event`);
        }
      } finally {
        await bh.close();
      }
    });
  });
}
