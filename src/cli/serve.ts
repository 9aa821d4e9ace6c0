import { pino } from 'pino';
import { Bulkhead } from '../bulkhead.js';
import { loadConfig, readTlsCredentials, type ConfigFlags } from '../config.js';
import { buildServer } from '../http/server.js';
import type { Writable } from './client.js';

/**
 * `bulkhead serve`: opens the store (embedded unless DATABASE_URL is set), applies migrations and
 * serves the HTTP API until SIGINT or SIGTERM, then drains requests and closes the store. With a
 * TLS certificate and key it serves HTTPS only; without, plain HTTP for a TLS-terminating proxy.
 */
export async function serve(flags: ConfigFlags, out: Writable = process.stdout): Promise<void> {
  const config = loadConfig(flags);
  // Before the store opens: a wrong certificate or key file fails the start at once.
  const tls = readTlsCredentials(config);
  const logger = pino({ level: config.logLevel, base: { service: 'bulkhead' } });
  const bh = await Bulkhead.open(config, {
    onOperatorTokenGenerated: (token) => {
      // Printed once, never logged: only its hash is stored.
      out.write(
        `\nGenerated an operator token (shown once; only its hash is stored):\n\n  ${token}\n\n` +
          'Use it as "Authorization: Bearer <token>" on /v1/tenants, or set BULKHEAD_OPERATOR_TOKEN to choose your own.\n\n',
      );
    },
  });
  const app = await buildServer(bh, { logger, ...(tls ? { tls } : {}) });
  const stop = async (signal: string) => {
    logger.info({ signal }, 'shutting down');
    await app.close();
    await bh.close();
  };
  process.once('SIGINT', () => void stop('SIGINT'));
  process.once('SIGTERM', () => void stop('SIGTERM'));
  const address = await app.listen({ port: config.port, host: config.host });
  // `address` is https://... when TLS is on.
  logger.info({ address, tls: tls !== undefined, store: config.databaseUrl ? 'postgres' : 'pglite', dataDir: config.databaseUrl ? undefined : config.dataDir }, 'listening');
}
