/**
 * The product under test, in its own process so it never shares an event loop with the load
 * generator: `Bulkhead.open` + `buildServer` exactly as `bulkhead serve` wires them, configured
 * from the environment the benchmark passes (DATABASE_URL, roles, secret, partitions, pool size).
 *
 * Started by isolation.bench.ts with `fork`; speaks the protocol of child-server.ts.
 */
import { pino } from 'pino';
import { Bulkhead } from '../src/bulkhead.js';
import { loadConfig } from '../src/config.js';
import { buildServer } from '../src/http/server.js';
import { serveChild } from './child-server.js';

const config = loadConfig({ host: '127.0.0.1', port: 0 }, process.env);
// As `bulkhead serve` does; stdout is /dev/null when the benchmark starts this process.
const logger = pino({ level: config.logLevel, base: { service: 'bulkhead' } });
const bh = await Bulkhead.open(config);
// Instrumentation only: count the database transactions the product starts (each `batch` is one
// transaction in one round trip, each `transaction` one transaction), to report them per request.
const engine = bh.store.engine;
let transactions = 0;
const batch = engine.batch.bind(engine);
const transaction = engine.transaction.bind(engine);
engine.batch = (statements) => {
  transactions++;
  return batch(statements);
};
engine.transaction = (fn) => {
  transactions++;
  return transaction(fn);
};
const app = await buildServer(bh, { logger });
await serveChild(app, () => bh.close(), () => transactions);
