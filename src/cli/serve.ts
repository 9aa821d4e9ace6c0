import { pino } from 'pino';
import { Bulkhead } from '../bulkhead.js';
import { loadConfig, type ConfigFlags } from '../config.js';
import { buildServer } from '../http/server.js';
import type { Writable } from './client.js';

/**
 * `bulkhead serve`: opens the store (embedded unless DATABASE_URL is set), applies migrations and
 * serves the HTTP API until SIGINT or SIGTERM, then drains requests and closes the store.
 */
export async function serve(flags: ConfigFlags, out: Writable = process.stdout): Promise<void> {
  const config = loadConfig(flags);
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
  const app = await buildServer(bh, { logger });
  const stop = async (signal: string) => {
    logger.info({ signal }, 'shutting down');
    await app.close();
    await bh.close();
  };
  process.once('SIGINT', () => void stop('SIGINT'));
  process.once('SIGTERM', () => void stop('SIGTERM'));
  const address = await app.listen({ port: config.port, host: config.host });
  logger.info({ address, store: config.databaseUrl ? 'postgres' : 'pglite', dataDir: config.databaseUrl ? undefined : config.dataDir }, 'listening');
}
