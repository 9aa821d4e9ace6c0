import { constants as fsConstants } from 'node:fs';
import { open } from 'node:fs/promises';

/** Owner read and write only: the mode of every key, state and witness file Bulkhead makes. */
export const OWNER_ONLY = 0o600;

/**
 * Writes `data` to a new file (mode 0600, exclusive create) and flushes it to disk. Callers write
 * a temporary name and then link or rename it into place, so a reader never sees half a file.
 */
export async function writeDurably(path: string, data: string | Uint8Array): Promise<void> {
  const handle = await open(path, 'wx', OWNER_ONLY);
  try {
    await handle.writeFile(data);
    // The umask can only clear bits, but an explicit chmod also covers a umask of 0.
    await handle.chmod(OWNER_ONLY);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Flushes a directory entry (a new file, a link or a rename) to disk; not every file system allows it. */
export async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, fsConstants.O_RDONLY).catch(() => undefined);
  if (!handle) return;
  try {
    await handle.sync().catch(() => undefined);
  } finally {
    await handle.close();
  }
}
