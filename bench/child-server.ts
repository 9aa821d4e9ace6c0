/**
 * The protocol a benchmark server child speaks with isolation.bench.ts, shared by the product and
 * the baseline so the two are driven identically: it listens on 127.0.0.1 (a free port), reports
 * `{ port }` over IPC, answers `{ type: 'cpu' }` with its CPU time and database transactions so far,
 * and exits cleanly on SIGTERM, SIGINT or a lost parent (so `--cpu-prof` can write its profile).
 */
import type { FastifyInstance } from 'fastify';

/** Serves `app` under the benchmark's protocol; `close` releases what the server holds (pools). */
export async function serveChild(app: FastifyInstance, close: () => Promise<void>, transactions: () => number): Promise<void> {
  await app.listen({ host: '127.0.0.1', port: 0 });
  const address = app.server.address();
  if (address === null || typeof address === 'string') throw new Error('the server has no TCP address');

  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    await app.close().catch(() => {});
    await close().catch(() => {});
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop());
  process.on('SIGINT', () => void stop());
  process.on('disconnect', () => void stop());
  // The benchmark asks for this process's CPU time around each run, to report CPU per request.
  process.on('message', (message: unknown) => {
    if ((message as { type?: unknown }).type !== 'cpu') return;
    const { user, system } = process.cpuUsage();
    process.send?.({ cpuUs: user + system, transactions: transactions() });
  });
  process.send?.({ port: address.port });
}
