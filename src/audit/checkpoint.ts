/**
 * Signed checkpoints of audit chain heads (issue 5, item 5): an Ed25519 signature over
 *
 *   UTF-8 of the canonical JSON (RFC 8785) of {"chain","hash","keyId","seq","time","type"}
 *
 * so that whoever holds the witness files and the public key can tell whether a chain still has,
 * at each checkpoint's seq, the hash it had when the checkpoint was signed. A database
 * administrator can rewrite a keyless hash chain consistently; they cannot sign a new checkpoint.
 *
 * The key pair lives as two PEM files in a directory of its own (mode 0700): the private key
 * (PKCS#8, mode 0600) and the public key (SPKI, for verifiers). A private key file that group or
 * others can read or write, or a public key file they can write, is refused
 * (AUDIT_KEY_FILE_INSECURE), the same rule the local KMS applies to its master key.
 *
 * Verification failures are uniform (AUDIT_CHECKPOINT_INVALID, one fixed message): an unknown key,
 * a bad signature, a malformed line or an extra member all answer the same.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, sign, verify, type KeyObject } from 'node:crypto';
import { syncDirectory, writeDurably } from '../files.js';
import { constants as fsConstants } from 'node:fs';
import { link, mkdir, open, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { canonicalJson } from '../crypto/encoding.js';
import { BulkheadError } from '../errors.js';
import { HASH_BYTES, isChainId, type ChainId } from './chain.js';

/** The `type` member of every checkpoint: names the format and keeps the signature from meaning anything else. */
export const CHECKPOINT_TYPE = 'bulkhead.audit.checkpoint/v1';

/** File names inside the signing key directory. */
export const SIGNING_KEY_FILE = 'audit-signing-key.pem';
/** The public half, for verifiers (copy it to wherever chains are verified offline). */
export const VERIFYING_KEY_FILE = 'audit-verifying-key.pem';

/** The default signing key directory inside a data directory. */
export const SIGNING_KEY_DIR_NAME = 'audit-keys';

/** The statement a checkpoint signs. */
export interface CheckpointStatement {
  readonly type: typeof CHECKPOINT_TYPE;
  /** The chain: a tenant id or `platform`. */
  readonly chain: ChainId;
  /** The seq of the chain's head when the checkpoint was taken (from 1). */
  readonly seq: number;
  /** The head's hash, 64 lower-case hex digits. */
  readonly hash: string;
  /** When it was signed: ISO-8601 UTC with milliseconds. */
  readonly time: string;
  /** Which key signed: `ed25519:` and the first 16 bytes, in hex, of SHA-256 of the raw 32-byte public key. */
  readonly keyId: string;
}

/** A statement and its signature: one line of a witness file. */
export interface SignedCheckpoint extends CheckpointStatement {
  /** The Ed25519 signature (64 bytes) in base64url without padding. */
  readonly signature: string;
}

const CHECKPOINT_KEYS = ['chain', 'hash', 'keyId', 'seq', 'signature', 'time', 'type'];
const HEX_HASH = /^[0-9a-f]{64}$/;
const TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
const KEY_ID = /^ed25519:[0-9a-f]{32}$/;
const SIGNATURE = /^[A-Za-z0-9_-]{86}$/;
const PRIVATE_MODE = 0o600;

/**
 * A checkpoint that does not verify, whatever the reason: one fixed message and no cause, so no
 * answer tells which check failed (as jose's JWSSignatureVerificationFailed).
 */
export class CheckpointInvalidError extends BulkheadError {
  /** `where` (a witness file's chain and line) goes to `details`, never into the message. */
  constructor(where?: { readonly chain: ChainId; readonly line: number }) {
    super('AUDIT_CHECKPOINT_INVALID', 'an audit checkpoint does not verify against the audit verifying key', where ? { details: { ...where } } : undefined);
  }
}

/** The key id of an Ed25519 public key (see CheckpointStatement.keyId). */
export function keyIdOf(publicKey: KeyObject): string {
  if (publicKey.type !== 'public' || publicKey.asymmetricKeyType !== 'ed25519') {
    throw new BulkheadError('AUDIT_KEY_INVALID', 'the audit verifying key must be an Ed25519 public key');
  }
  const spki = publicKey.export({ format: 'der', type: 'spki' });
  // An Ed25519 SPKI is a fixed 12-byte prefix and the 32-byte raw key (RFC 8410 §4).
  const raw = spki.subarray(spki.length - 32);
  return `ed25519:${createHash('sha256').update(raw).digest('hex').slice(0, 32)}`;
}

/** The bytes a checkpoint's signature covers: the canonical JSON of its statement (every member but `signature`). */
export function checkpointSigningInput(statement: CheckpointStatement): Buffer {
  const { type, chain, seq, hash, time, keyId } = statement;
  return Buffer.from(canonicalJson({ type, chain, seq, hash, time, keyId }), 'utf8');
}

/** The public keys a verifier accepts, by key id (several after a key rotation). */
export type CheckpointKeys = ReadonlyMap<string, KeyObject>;

/** The key set of some Ed25519 public keys. */
export function checkpointKeys(...publicKeys: KeyObject[]): CheckpointKeys {
  return new Map(publicKeys.map((k) => [keyIdOf(k), k]));
}

/** Signs checkpoints with the private key of one key pair. */
export class CheckpointSigner {
  readonly #privateKey: KeyObject;
  /** The public half, for verifying what this signer signs. */
  readonly publicKey: KeyObject;
  /** See CheckpointStatement.keyId. */
  readonly keyId: string;

  constructor(privateKey: KeyObject) {
    if (privateKey.type !== 'private' || privateKey.asymmetricKeyType !== 'ed25519') {
      throw new BulkheadError('AUDIT_KEY_INVALID', 'the audit signing key must be an Ed25519 private key');
    }
    this.#privateKey = privateKey;
    this.publicKey = createPublicKey(privateKey);
    this.keyId = keyIdOf(this.publicKey);
  }

  /** A signed checkpoint of the head `{seq, hash}` of `chain`, dated `time` (default now). */
  sign(head: { readonly chain: ChainId; readonly seq: number; readonly hash: Uint8Array; readonly time?: Date }): SignedCheckpoint {
    if (!isChainId(head.chain)) throw new BulkheadError('INTERNAL', 'a checkpoint names a tenant id or "platform"');
    if (!Number.isSafeInteger(head.seq) || head.seq < 1) throw new BulkheadError('INTERNAL', 'a checkpoint is of a chain with at least one row (seq from 1)');
    if (!(head.hash instanceof Uint8Array) || head.hash.byteLength !== HASH_BYTES) throw new BulkheadError('INTERNAL', 'a checkpoint hash is 32 bytes');
    const statement: CheckpointStatement = {
      type: CHECKPOINT_TYPE,
      chain: head.chain,
      seq: head.seq,
      hash: Buffer.from(head.hash).toString('hex'),
      time: (head.time ?? new Date()).toISOString(),
      keyId: this.keyId,
    };
    const signature = sign(null, checkpointSigningInput(statement), this.#privateKey).toString('base64url');
    return Object.freeze({ ...statement, signature });
  }
}

/**
 * The checkpoint `value` (a parsed witness line), verified against `keys`. Throws the uniform
 * CheckpointInvalidError for anything else: a missing or extra member, a malformed one, an
 * unknown key id, a bad signature.
 */
export function verifyCheckpoint(value: unknown, keys: CheckpointKeys): SignedCheckpoint {
  if (!isWellFormed(value)) throw new CheckpointInvalidError();
  const key = keys.get(value.keyId);
  let good = false;
  if (key) {
    try {
      good = verify(null, checkpointSigningInput(value), key, Buffer.from(value.signature, 'base64url'));
    } catch {
      good = false;
    }
  }
  if (!good) throw new CheckpointInvalidError();
  return Object.freeze({ type: value.type, chain: value.chain, seq: value.seq, hash: value.hash, time: value.time, keyId: value.keyId, signature: value.signature });
}

/** True when `value` has exactly a checkpoint's members, each in its form. */
function isWellFormed(value: unknown): value is SignedCheckpoint {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
  const keys = Object.keys(value).sort();
  if (keys.length !== CHECKPOINT_KEYS.length || keys.some((k, i) => k !== CHECKPOINT_KEYS[i])) return false;
  const v = value as Record<string, unknown>;
  return (
    v.type === CHECKPOINT_TYPE &&
    isChainId(v.chain) &&
    typeof v.seq === 'number' &&
    Number.isSafeInteger(v.seq) &&
    v.seq >= 1 &&
    typeof v.hash === 'string' &&
    HEX_HASH.test(v.hash) &&
    typeof v.time === 'string' &&
    TIME.test(v.time) &&
    typeof v.keyId === 'string' &&
    KEY_ID.test(v.keyId) &&
    typeof v.signature === 'string' &&
    SIGNATURE.test(v.signature)
  );
}

/** The errno name of a file-system error (`ENOENT`, `EEXIST`), or undefined. */
function errnoOf(error: unknown): string | undefined {
  const code = (error as NodeJS.ErrnoException | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/**
 * Reads a PEM file after checking, on the open file, that it is a regular file and that group and
 * others have none of the `forbidden` mode bits. Undefined when the file does not exist.
 */
async function readKeyFile(path: string, forbidden: number, what: string): Promise<string | undefined> {
  let handle;
  try {
    handle = await open(path, fsConstants.O_RDONLY);
  } catch (error) {
    if (errnoOf(error) === 'ENOENT') return undefined;
    throw new BulkheadError('AUDIT_KEY_INVALID', `the audit ${what} file ${path} cannot be read; check its owner`, { cause: error });
  }
  try {
    // fstat of the open file, not stat of the path: what is checked is what is read.
    const stat = await handle.stat();
    if (!stat.isFile()) throw new BulkheadError('AUDIT_KEY_INVALID', `the audit ${what} file ${path} is not a regular file`);
    const mode = stat.mode & 0o777;
    if (mode & forbidden) {
      throw new BulkheadError(
        'AUDIT_KEY_FILE_INSECURE',
        `the audit ${what} file ${path} can be ${forbidden & 0o044 ? 'read or written' : 'written'} by group or others (mode ${mode.toString(8).padStart(3, '0')}); run: chmod 600 ${path}`,
      );
    }
    if (stat.size > 16_384) throw new BulkheadError('AUDIT_KEY_INVALID', `the audit ${what} file ${path} is too large to be a PEM key`);
    return await handle.readFile('utf8');
  } finally {
    await handle.close();
  }
}

function parsePrivateKey(pem: string, path: string): KeyObject {
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: pem, format: 'pem' });
  } catch (error) {
    throw new BulkheadError('AUDIT_KEY_INVALID', `the audit signing key file ${path} does not hold a PEM private key`, { cause: error });
  }
  if (key.asymmetricKeyType !== 'ed25519') throw new BulkheadError('AUDIT_KEY_INVALID', `the audit signing key file ${path} holds a key that is not Ed25519`);
  return key;
}

function parsePublicKey(pem: string, path: string): KeyObject {
  let key: KeyObject;
  try {
    key = createPublicKey({ key: pem, format: 'pem' });
  } catch (error) {
    throw new BulkheadError('AUDIT_KEY_INVALID', `the audit verifying key file ${path} does not hold a PEM public key`, { cause: error });
  }
  if (key.type !== 'public' || key.asymmetricKeyType !== 'ed25519') {
    throw new BulkheadError('AUDIT_KEY_INVALID', `the audit verifying key file ${path} holds a key that is not an Ed25519 public key`);
  }
  return key;
}

/**
 * The checkpoint signer of the key pair in `dir`, made on first use: an Ed25519 key pair written
 * as PEM, mode 0600, the private key through a temporary file linked into place so that it appears
 * whole or not at all and two processes starting at once end up with the same key. The public key
 * file is written beside it (and rewritten if missing); one that does not match the private key is
 * refused (AUDIT_KEY_INVALID). Insecure modes: AUDIT_KEY_FILE_INSECURE.
 */
export async function loadOrCreateSigner(dir: string): Promise<CheckpointSigner> {
  const privatePath = join(dir, SIGNING_KEY_FILE);
  const publicPath = join(dir, VERIFYING_KEY_FILE);
  let signer: CheckpointSigner | undefined;
  for (let attempt = 0; attempt < 2 && !signer; attempt++) {
    const pem = await readKeyFile(privatePath, 0o077, 'signing key');
    if (pem !== undefined) {
      signer = new CheckpointSigner(parsePrivateKey(pem, privatePath));
      break;
    }
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 });
      const { privateKey } = generateKeyPairSync('ed25519');
      const temp = `${privatePath}.${randomBytes(6).toString('hex')}.tmp`;
      try {
        await writeDurably(temp, privateKey.export({ format: 'pem', type: 'pkcs8' }).toString());
        await link(temp, privatePath); // EEXIST when another process made the key first: read theirs
        await syncDirectory(dir);
        signer = new CheckpointSigner(privateKey);
      } catch (error) {
        if (errnoOf(error) !== 'EEXIST') throw error;
      } finally {
        await unlink(temp).catch(() => undefined);
      }
    } catch (error) {
      if (error instanceof BulkheadError) throw error;
      throw new BulkheadError('AUDIT_KEY_INVALID', `the audit signing key cannot be created in ${dir}; check that the directory is writable`, { cause: error });
    }
  }
  if (!signer) throw new BulkheadError('AUDIT_KEY_INVALID', `the audit signing key in ${dir} cannot be read or created`);

  const publicPem = await readKeyFile(publicPath, 0o022, 'verifying key');
  if (publicPem === undefined) {
    const temp = `${publicPath}.${randomBytes(6).toString('hex')}.tmp`;
    try {
      await writeDurably(temp, signer.publicKey.export({ format: 'pem', type: 'spki' }).toString());
      await rename(temp, publicPath);
      await syncDirectory(dir);
    } catch (error) {
      await unlink(temp).catch(() => undefined);
      throw new BulkheadError('AUDIT_KEY_INVALID', `the audit verifying key cannot be written in ${dir}; check that the directory is writable`, { cause: error });
    }
  } else if (keyIdOf(parsePublicKey(publicPem, publicPath)) !== signer.keyId) {
    throw new BulkheadError('AUDIT_KEY_INVALID', `the audit verifying key file ${publicPath} does not match the signing key beside it; restore the right pair`);
  }
  return signer;
}

/**
 * The Ed25519 public key in the PEM file at `path`, for verifying (a copy kept by an auditor, or
 * the one beside the signing key). A file that group or others can write is refused
 * (AUDIT_KEY_FILE_INSECURE): whoever can replace it can make forged checkpoints verify.
 */
export async function loadVerifyingKey(path: string): Promise<KeyObject> {
  const pem = await readKeyFile(path, 0o022, 'verifying key');
  if (pem === undefined) throw new BulkheadError('AUDIT_KEY_INVALID', `the audit verifying key file ${path} does not exist`);
  return parsePublicKey(pem, path);
}
