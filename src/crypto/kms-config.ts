/**
 * KMS settings: parsed from the `kms` section of the config file and from the environment (the
 * environment wins), checked, frozen; and `openKms`, which opens the provider they name.
 *
 * Secrets (the master key, the PKCS#11 PIN) are read from the environment only, never from a
 * config file that may be committed, and are held so that logging the settings cannot print them.
 */
import { type KeyObject } from 'node:crypto';
import { dirname, join, resolve } from 'node:path';
import { inspect } from 'node:util';
import { BulkheadError } from '../errors.js';
import type { Kms, KmsProvider } from './kms.js';
import { JsonFileKmsStateStore, openLocalKms, parseMasterKey } from './local-kms.js';
import { DEFAULT_PKCS11_MODULE, openPkcs11Kms } from './pkcs11-kms.js';

/** A secret setting. JSON, `String()` and `util.inspect` show `[redacted]`; `reveal()` gives the value. */
export class SecretString {
  readonly #value: string;

  constructor(value: string) {
    this.#value = value;
  }

  /** The secret itself, for the one call that needs it. */
  reveal(): string {
    return this.#value;
  }

  /** Keeps the secret out of JSON logs. */
  toJSON(): string {
    return '[redacted]';
  }

  /** Keeps the secret out of string concatenation. */
  toString(): string {
    return '[redacted]';
  }

  /** Keeps the secret out of console.log and pino's inspect fallback. */
  [inspect.custom](): string {
    return 'SecretString [redacted]';
  }
}

/** Settings of the `local` provider. */
export interface LocalKmsSettings {
  readonly provider: 'local';
  /** From `BULKHEAD_MASTER_KEY`; when undefined, the key file is read (or made on first start). */
  readonly masterKey: KeyObject | undefined;
  /** `BULKHEAD_KMS_KEY_FILE`, default `<dataDir>/master.key`; unused when `masterKey` is set. */
  readonly keyFile: string;
  /** The JSON file of KEK versions: `stateFile` in the file, default `kms-state.json` beside the key file. */
  readonly stateFile: string;
}

/** Settings of the `pkcs11` provider. */
export interface Pkcs11KmsSettings {
  readonly provider: 'pkcs11';
  /** `BULKHEAD_PKCS11_MODULE`, default Debian's SoftHSM2 module. */
  readonly module: string;
  /** `BULKHEAD_PKCS11_TOKEN`: the token's label. */
  readonly token: string;
  /** `BULKHEAD_PKCS11_PIN`: the token's user PIN. */
  readonly pin: SecretString;
}

/** The KMS settings, one shape per provider. */
export type KmsSettings = LocalKmsSettings | Pkcs11KmsSettings;

/** Keys the `kms` section of a config file may hold. Secrets are not among them. */
const FILE_KEYS = new Set(['provider', 'keyFile', 'stateFile', 'pkcs11Module', 'pkcs11Token']);
const SECRET_FILE_KEYS: Readonly<Record<string, string>> = { masterKey: 'BULKHEAD_MASTER_KEY', pin: 'BULKHEAD_PKCS11_PIN', pkcs11Pin: 'BULKHEAD_PKCS11_PIN' };

function invalid(message: string): never {
  throw new BulkheadError('KMS_CONFIG_INVALID', message);
}

/** An environment value, where set but empty counts as unset (as in src/config.ts). */
function envValue(env: Readonly<Record<string, string | undefined>>, name: string): string | undefined {
  const value = env[name];
  return value === undefined || value === '' ? undefined : value;
}

function text(value: unknown, name: string, max: number): string {
  if (typeof value !== 'string' || value.length === 0 || Buffer.byteLength(value) > max || value.includes('\u0000')) {
    invalid(`${name} must be a non-empty string of at most ${max} bytes`);
  }
  return value;
}

/**
 * Parses the KMS settings from the config file's `kms` section (`provider`, `keyFile`,
 * `stateFile`, `pkcs11Module`, `pkcs11Token`) and the environment (`BULKHEAD_KMS_PROVIDER`,
 * `BULKHEAD_MASTER_KEY`, `BULKHEAD_KMS_KEY_FILE`, `BULKHEAD_PKCS11_MODULE`, `BULKHEAD_PKCS11_TOKEN`,
 * `BULKHEAD_PKCS11_PIN`). A bad value is KMS_CONFIG_INVALID with a message naming the setting and
 * never quoting a secret.
 */
export function parseKmsSettings(
  section: unknown,
  env: Readonly<Record<string, string | undefined>>,
  options: { readonly dataDir: string },
): KmsSettings {
  if (section !== undefined && section !== null && (typeof section !== 'object' || Array.isArray(section))) {
    invalid('the kms section of the config file must be a mapping');
  }
  const file = (section ?? {}) as Record<string, unknown>;
  for (const key of Object.keys(file)) {
    const secretEnv = SECRET_FILE_KEYS[key];
    if (secretEnv) invalid(`kms.${key} is a secret and is not read from the config file; set ${secretEnv} in the environment`);
    if (!FILE_KEYS.has(key)) invalid(`the kms section of the config file has an unknown key "${key.slice(0, 40)}"`);
  }

  const provider = envValue(env, 'BULKHEAD_KMS_PROVIDER') ?? file.provider ?? 'local';
  if (provider !== 'local' && provider !== 'pkcs11') invalid('BULKHEAD_KMS_PROVIDER (kms.provider) must be local or pkcs11');
  const masterKeyText = envValue(env, 'BULKHEAD_MASTER_KEY');
  const token = envValue(env, 'BULKHEAD_PKCS11_TOKEN') ?? file.pkcs11Token;
  const pin = envValue(env, 'BULKHEAD_PKCS11_PIN');

  if (provider === 'local') {
    // Settings of the token without the provider would leave keys under a local master key while the operator believes they are in the HSM.
    if (token !== undefined || pin !== undefined) {
      invalid('BULKHEAD_PKCS11_TOKEN or BULKHEAD_PKCS11_PIN is set but the KMS provider is local; set BULKHEAD_KMS_PROVIDER=pkcs11, or unset them');
    }
    const keyFile = resolve(text(envValue(env, 'BULKHEAD_KMS_KEY_FILE') ?? file.keyFile ?? join(options.dataDir, 'master.key'), 'BULKHEAD_KMS_KEY_FILE (kms.keyFile)', 4096));
    const stateFile = resolve(text(file.stateFile ?? join(dirname(keyFile), 'kms-state.json'), 'kms.stateFile', 4096));
    if (stateFile === keyFile) invalid('kms.stateFile must not be the key file');
    const settings: LocalKmsSettings = {
      provider,
      masterKey: masterKeyText === undefined ? undefined : parseMasterKey(masterKeyText, 'BULKHEAD_MASTER_KEY'),
      keyFile,
      stateFile,
    };
    return Object.freeze(settings);
  }

  // A master key that the pkcs11 provider would ignore is a secret left lying around, or a mistake.
  if (masterKeyText !== undefined) invalid('BULKHEAD_MASTER_KEY is set but the KMS provider is pkcs11, which keeps its keys on the token; unset it');
  if (token === undefined) invalid('BULKHEAD_PKCS11_TOKEN (kms.pkcs11Token) is required when the KMS provider is pkcs11: the label of the token');
  if (pin === undefined) invalid('BULKHEAD_PKCS11_PIN is required when the KMS provider is pkcs11: the user PIN of the token');
  const settings: Pkcs11KmsSettings = {
    provider,
    module: text(envValue(env, 'BULKHEAD_PKCS11_MODULE') ?? file.pkcs11Module ?? DEFAULT_PKCS11_MODULE, 'BULKHEAD_PKCS11_MODULE (kms.pkcs11Module)', 4096),
    // A PKCS#11 token label is a 32-byte field.
    token: text(token, 'BULKHEAD_PKCS11_TOKEN (kms.pkcs11Token)', 32),
    pin: new SecretString(text(pin, 'BULKHEAD_PKCS11_PIN', 255)),
  };
  return Object.freeze(settings);
}

/** Opens the KMS the settings name. */
export async function openKms(settings: KmsSettings): Promise<Kms> {
  const provider: KmsProvider = settings.provider;
  switch (settings.provider) {
    case 'local':
      return openLocalKms({
        ...(settings.masterKey !== undefined ? { masterKey: settings.masterKey } : { keyFile: settings.keyFile }),
        state: new JsonFileKmsStateStore(settings.stateFile),
      });
    case 'pkcs11':
      return openPkcs11Kms({ module: settings.module, token: settings.token, pin: settings.pin.reveal() });
    default:
      throw new BulkheadError('KMS_CONFIG_INVALID', `unknown KMS provider ${String(provider)}`);
  }
}
