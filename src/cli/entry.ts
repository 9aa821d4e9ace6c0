/**
 * Runs the CLI from source (`node --import tsx src/cli/entry.ts ...`); the published entry point,
 * `bin/bulkhead.js`, does the same with the compiled `dist/cli/main.js`.
 */
import { main } from './main.js';

process.exitCode = await main(process.argv);
