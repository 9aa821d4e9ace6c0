/**
 * The witness: signed checkpoints kept outside the database (issue 5, item 5), by default in
 * `<dataDir>/audit-witness`, one append-only file per chain, `<chain>.ndjson`, one checkpoint per
 * line (the canonical JSON of a SignedCheckpoint). Each append opens the file with O_APPEND, writes
 * the whole line in one call and fsyncs before returning, so a checkpoint that was acknowledged
 * survives a crash, and writers never overwrite each other.
 *
 * Reading streams the file (constant memory) and checks every line's signature; `verify` compares
 * a chain's rows with them (see verifyChain). Someone who rewrote the database consistently still
 * disagrees with the witness at the first checkpoint after the change; someone who truncated it
 * ends before the last checkpoint.
 */
import { syncDirectory } from '../files.js';
import { constants as fsConstants, createReadStream } from 'node:fs';
import { mkdir, open, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { canonicalJson } from '../crypto/encoding.js';
import { BulkheadError } from '../errors.js';
import {
  isChainId,
  verifyChain,
  type Anchor,
  type AnchorFailure,
  type ChainId,
  type StoredRow,
  type VerifyOptions,
  type VerifyResult,
} from './chain.js';
import { CheckpointInvalidError, verifyCheckpoint, type CheckpointKeys, type SignedCheckpoint } from './checkpoint.js';

/** The default witness directory inside a data directory. */
export const WITNESS_DIR_NAME = 'audit-witness';

/** The witness directory of a data directory: `<dataDir>/audit-witness`. */
export function defaultWitnessDir(dataDir: string): string {
  return join(dataDir, WITNESS_DIR_NAME);
}

/** Longest witness line read; a checkpoint is about 330 bytes, anything far longer is not one. */
const MAX_LINE_BYTES = 4096;
const NEWLINE = 0x0a;
/** What an overlong line reads as: not JSON, so it verifies as no checkpoint. */
const OVERLONG = '(line too long)';

/** One line of a witness file: its number (from 1) and its text. */
export interface WitnessLine {
  readonly line: number;
  readonly text: string;
}

/** A chain's checkpoint line that verified, with its line number. */
export interface WitnessEntry {
  readonly line: number;
  readonly checkpoint: SignedCheckpoint;
}

/** The witness in one directory. Holds no file open between calls. */
export class Witness {
  readonly dir: string;

  constructor(dir: string) {
    if (typeof dir !== 'string' || dir.length === 0) throw new BulkheadError('INTERNAL', 'a witness needs a directory');
    this.dir = dir;
  }

  /** The file of `chain`. */
  fileOf(chain: ChainId): string {
    // The chain name becomes a file name: only a UUID or `platform`, so no path can be smuggled in.
    if (!isChainId(chain)) throw new BulkheadError('INTERNAL', 'a witness file is named by a tenant id or "platform"');
    return join(this.dir, `${chain}.ndjson`);
  }

  /**
   * Appends `checkpoint` as one line to its chain's file and fsyncs the file (and the directory
   * when the file is new) before returning. AUDIT_WITNESS_UNAVAILABLE when it cannot be written.
   */
  async append(checkpoint: SignedCheckpoint): Promise<void> {
    const path = this.fileOf(checkpoint.chain);
    const line = Buffer.from(`${canonicalJson(checkpoint)}\n`, 'utf8');
    let handle;
    try {
      await mkdir(this.dir, { recursive: true, mode: 0o700 });
      handle = await open(path, fsConstants.O_WRONLY | fsConstants.O_APPEND | fsConstants.O_CREAT, 0o600);
      const { size } = await handle.stat();
      let bytes = line;
      if (size > 0) {
        // A crash during an earlier append can leave a last line without its newline; end it, so
        // that this checkpoint starts a line of its own (the fragment then reads as a bad line).
        const last = Buffer.alloc(1);
        const reader = await open(path, fsConstants.O_RDONLY);
        try {
          await reader.read(last, 0, 1, size - 1);
        } finally {
          await reader.close();
        }
        if (last[0] !== NEWLINE) bytes = Buffer.concat([Buffer.from('\n'), line]);
      }
      // One write of the whole line: with O_APPEND the kernel places it at the end atomically.
      let written = 0;
      while (written < bytes.length) {
        const { bytesWritten } = await handle.write(bytes, written, bytes.length - written);
        written += bytesWritten;
      }
      await handle.sync();
      if (size === 0) await syncDirectory(this.dir);
    } catch (error) {
      throw new BulkheadError('AUDIT_WITNESS_UNAVAILABLE', `the audit witness file of chain ${checkpoint.chain} cannot be written; check the witness directory (disk space, permissions)`, {
        cause: error,
      });
    } finally {
      await handle?.close().catch(() => undefined);
    }
  }

  /** The chains that have a witness file. */
  async chains(): Promise<ChainId[]> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (error) {
      if (errnoOf(error) === 'ENOENT') return [];
      throw new BulkheadError('AUDIT_WITNESS_UNAVAILABLE', 'the audit witness directory cannot be read', { cause: error });
    }
    return names
      .filter((n) => n.endsWith('.ndjson'))
      .map((n) => n.slice(0, -'.ndjson'.length))
      .filter(isChainId)
      .sort();
  }

  /**
   * The lines of `chain`'s file, streamed. Blank lines are skipped; a last line without its newline
   * (an append cut short by a crash, never acknowledged) is not returned. No file: no lines.
   */
  async *lines(chain: ChainId): AsyncGenerator<WitnessLine> {
    const path = this.fileOf(chain);
    const stream = createReadStream(path);
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    let number = 0;
    // Only up to MAX_LINE_BYTES of a line is kept: a longer one is reported, never buffered whole.
    const take = (piece: Buffer) => {
      if (pendingBytes + piece.length <= MAX_LINE_BYTES) pending.push(piece);
      pendingBytes += piece.length;
    };
    try {
      for await (const chunk of stream as AsyncIterable<Buffer>) {
        let from = 0;
        for (let i = chunk.indexOf(NEWLINE); i !== -1; i = chunk.indexOf(NEWLINE, from)) {
          take(chunk.subarray(from, i));
          from = i + 1;
          number++;
          const text = pendingBytes > MAX_LINE_BYTES ? OVERLONG : Buffer.concat(pending).toString('utf8');
          pending = [];
          pendingBytes = 0;
          if (text.trim().length > 0) yield { line: number, text };
        }
        if (from < chunk.length) take(chunk.subarray(from));
      }
    } catch (error) {
      if (errnoOf(error) === 'ENOENT') return;
      throw new BulkheadError('AUDIT_WITNESS_UNAVAILABLE', `the audit witness file of chain ${chain} cannot be read`, { cause: error });
    } finally {
      stream.destroy();
    }
  }

  /**
   * The checkpoints of `chain` as anchors for verifyChain, each line verified on the way: a line
   * that is not a checkpoint of this chain signed by one of `keys` becomes an AnchorFailure naming
   * the line (and its claimed seq when it has one), never the reason.
   */
  async *anchors(chain: ChainId, keys: CheckpointKeys): AsyncGenerator<Anchor | AnchorFailure> {
    for await (const { line, text } of this.lines(chain)) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = undefined;
      }
      const claimed = (parsed as { seq?: unknown } | undefined)?.seq;
      const seq = typeof claimed === 'number' && Number.isSafeInteger(claimed) && claimed >= 1 ? claimed : null;
      const where = `line ${line} of ${chain}.ndjson`;
      let checkpoint: SignedCheckpoint;
      try {
        checkpoint = verifyCheckpoint(parsed, keys);
      } catch (error) {
        if (!(error instanceof CheckpointInvalidError)) throw error;
        yield { seq, where };
        continue;
      }
      // A valid line copied from another chain's file is no checkpoint of this one.
      if (checkpoint.chain !== chain) {
        yield { seq, where };
        continue;
      }
      yield { seq: checkpoint.seq, hash: Buffer.from(checkpoint.hash, 'hex') };
    }
  }

  /**
   * Every checkpoint of `chain`, verified, in file order. Throws the uniform AUDIT_CHECKPOINT_INVALID
   * at the first line that does not verify (its line number in `details`).
   */
  async *checkpoints(chain: ChainId, keys: CheckpointKeys): AsyncGenerator<WitnessEntry> {
    for await (const { line, text } of this.lines(chain)) {
      let checkpoint: SignedCheckpoint;
      try {
        checkpoint = verifyCheckpoint(JSON.parse(text), keys);
        if (checkpoint.chain !== chain) throw new CheckpointInvalidError();
      } catch {
        throw new CheckpointInvalidError({ chain, line });
      }
      yield { line, checkpoint };
    }
  }

  /** The last checkpoint of `chain` that verifies in file order, or undefined (throws as `checkpoints` does). */
  async last(chain: ChainId, keys: CheckpointKeys): Promise<SignedCheckpoint | undefined> {
    let last: SignedCheckpoint | undefined;
    for await (const { checkpoint } of this.checkpoints(chain, keys)) last = checkpoint;
    return last;
  }

  /**
   * Verifies `chain`'s rows (streamed in seq order) against the chain rule and against this
   * witness: every checkpoint's signature, and at every checkpoint's seq the row's hash; a chain
   * that ends before the last checkpoint is `missing-tail`.
   */
  verify(chain: ChainId, rows: AsyncIterable<StoredRow> | Iterable<StoredRow>, keys: CheckpointKeys, options: Omit<VerifyOptions, 'chain' | 'anchors'> = {}): Promise<VerifyResult> {
    return verifyChain(rows, { ...options, chain, anchors: this.anchors(chain, keys) });
  }
}

/** The errno name of a file-system error (`ENOENT`), or undefined. */
function errnoOf(error: unknown): string | undefined {
  const code = (error as NodeJS.ErrnoException | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

