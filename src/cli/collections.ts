import type { Command } from 'commander';
import type { CollectionView } from '../tenancy/collections.js';
import type { CollectionDefinition, FieldDefinition } from '../tenancy/fields.js';
import { ApiError, BulkheadClient, CliError, UsageError, type CliIO, type GlobalOptions } from './client.js';
import { emit, keyValues, table } from './output.js';
import { applyOrder, diffDefinitions, isUnchanged, loadSchemaFile, referencedCollections, type DefinitionChanges } from './schema-file.js';
import { mintToken } from './token.js';

/** Lifetime of the token the CLI mints for itself: long enough for one apply, short enough not to matter if it leaks. */
const CLI_TOKEN_TTL_SECONDS = 300;
/** The subject of the CLI's own tokens, as the audit trail will show it. */
const CLI_SUBJECT = 'bulkhead-cli';

/** The outcome of applying one collection of a schema file. */
export interface ApplyResult {
  readonly name: string;
  readonly result: 'created' | 'updated' | 'unchanged';
  readonly version: number;
  readonly previousVersion: number | null;
  readonly changes: DefinitionChanges;
}

interface Options {
  readonly tenant?: string;
}

/**
 * The client to read or define a tenant's collections with. With `--tenant`, the operator token
 * mints a short-lived tenant token of `role` (an operator token itself reaches no tenant data);
 * without it, the token given must already be a tenant token (one from the identity provider).
 */
async function tenantClient(client: BulkheadClient, tenant: string | undefined, role: 'builder' | 'viewer'): Promise<BulkheadClient> {
  if (tenant === undefined) {
    if (client.hasOperatorToken) throw new UsageError('an operator token reaches no tenant data: name the tenant with --tenant, or use a tenant token');
    return client;
  }
  const minted = await mintToken(client, tenant, { sub: CLI_SUBJECT, roles: [role], ttlSeconds: CLI_TOKEN_TTL_SECONDS });
  return client.withToken(minted.token);
}

function describeChanges(c: DefinitionChanges): string {
  return [
    ...c.added.map((f) => `+${f}`),
    ...c.changed.map((f) => `~${f}`),
    ...c.removed.map((f) => `-${f}`),
    ...(c.description ? ['description'] : []),
    ...(c.readAudit ? ['readAudit'] : []),
    ...(c.encryptedClassifications ? ['encryptedClassifications'] : []),
  ].join(' ');
}

function describeField(f: FieldDefinition): string {
  const parts: string[] = [];
  if (f.type === 'reference') parts.push(`-> ${f.collection}`);
  if (f.type === 'enum') parts.push(`values ${(f.values ?? []).join('|')}`);
  if (f.maxLength !== undefined) parts.push(`maxLength ${f.maxLength}`);
  if (f.default !== undefined) parts.push(`default ${JSON.stringify(f.default)}`);
  if (f.encrypted) parts.push('encrypted');
  if (f.subject) parts.push('data subject');
  return parts.join(', ');
}

/** `bulkhead collections ...`: a tenant's collections, and schema as code. */
export function collectionsCommand(parent: Command, io: CliIO): Command {
  const collections = parent
    .command('collections')
    .description("define and inspect a tenant's collections (schema as code: see docs/cli.md)");

  collections
    .command('apply')
    .description('create or update the collections of a YAML/JSON schema file, referenced collections first')
    .requiredOption('-f, --file <path>', 'schema file (YAML or JSON) holding "collections"')
    .option('--tenant <tenant>', 'tenant id or slug; the operator token mints a 5-minute builder token for it')
    .option('--dry-run', 'show what would change without applying anything')
    .action(async (opts: Options & { file: string; dryRun?: boolean }, cmd: Command) => {
      const globals = cmd.optsWithGlobals<GlobalOptions>();
      // The file is checked before any request: an invalid schema changes nothing.
      const schema = loadSchemaFile(opts.file, io.cwd);
      const order = applyOrder(schema);
      const client = BulkheadClient.from(globals, io.env);
      const tenant = await tenantClient(client, opts.tenant, 'builder');
      const current = await tenant.request<{ collections: CollectionView[] }>('GET', '/v1/collections');
      const stored = new Map(current.collections.map((c) => [c.name, c]));
      for (const name of order) {
        const missing = referencedCollections(name, schema.collections.get(name)!.definition).find((t) => !schema.collections.has(t) && !stored.has(t));
        if (missing !== undefined) {
          throw new CliError(`${schema.path}: collection ${name}: a reference field names collection ${missing}, which is neither in the file nor defined for the tenant`, {
            code: 'COLLECTION_INVALID',
          });
        }
      }

      const results: ApplyResult[] = [];
      const print = () => {
        if (globals.json) return;
        const done = results.map((r) => ({
          ...r,
          shown: opts.dryRun && r.result !== 'unchanged' ? `would ${r.result === 'created' ? 'create' : 'update'}` : r.result,
        }));
        if (done.length > 0) {
          io.stdout.write(
            table(done, [
              { header: 'collection', value: (r) => r.name },
              { header: 'result', value: (r) => r.shown },
              { header: 'version', value: (r) => (r.previousVersion !== null && r.previousVersion !== r.version ? `${r.previousVersion} -> ${r.version}` : r.version) },
              { header: 'changes', value: (r) => describeChanges(r.changes) },
            ]),
          );
        }
        if (opts.dryRun) io.stdout.write('dry run: nothing was applied\n');
      };

      try {
        for (const name of order) {
          const local = schema.collections.get(name)!;
          const before = stored.get(name);
          const changes = diffDefinitions(before ? definitionOf(before) : undefined, local.definition);
          if (opts.dryRun) {
            const result = !before ? 'created' : isUnchanged(changes) ? 'unchanged' : 'updated';
            const version = !before ? 1 : result === 'updated' ? before.version + 1 : before.version;
            results.push({ name, result, version, previousVersion: before?.version ?? null, changes });
            continue;
          }
          let view: CollectionView;
          try {
            view = await tenant.request<CollectionView>('PUT', `/v1/collections/${name}`, local.input);
          } catch (error) {
            if (error instanceof ApiError) throw new ApiError(error.status, error.code, `collection ${name}: ${error.message}`);
            throw error;
          }
          // The server is the authority on what changed: an identical definition keeps its version.
          const result = !before ? 'created' : view.version !== before.version ? 'updated' : 'unchanged';
          results.push({ name, result, version: view.version, previousVersion: before?.version ?? null, changes: result === 'unchanged' ? noChanges : changes });
        }
      } catch (error) {
        // What was applied before the failure stays applied; show it, then the error.
        print();
        throw error;
      }
      if (!globals.json) return print();
      io.stdout.write(`${JSON.stringify({ tenant: opts.tenant ?? null, file: schema.path, dryRun: opts.dryRun === true, collections: results }, null, 2)}\n`);
    });

  collections
    .command('list')
    .description("list a tenant's collections")
    .option('--tenant <tenant>', 'tenant id or slug; the operator token mints a 5-minute viewer token for it')
    .action(async (opts: Options, cmd: Command) => {
      const globals = cmd.optsWithGlobals<GlobalOptions>();
      const tenant = await tenantClient(BulkheadClient.from(globals, io.env), opts.tenant, 'viewer');
      const result = await tenant.request<{ collections: CollectionView[] }>('GET', '/v1/collections');
      emit(io.stdout, globals.json, result, () =>
        result.collections.length === 0
          ? 'no collections\n'
          : table(result.collections, [
              { header: 'name', value: (c) => c.name },
              { header: 'version', value: (c) => c.version },
              { header: 'fields', value: (c) => Object.keys(c.fields).length },
              { header: 'updated', value: (c) => c.updatedAt },
              { header: 'description', value: (c) => c.description ?? '' },
            ]),
      );
    });

  collections
    .command('show')
    .description("show one collection's current definition")
    .argument('<name>', 'collection name')
    .option('--tenant <tenant>', 'tenant id or slug; the operator token mints a 5-minute viewer token for it')
    .action(async (name: string, opts: Options, cmd: Command) => {
      const globals = cmd.optsWithGlobals<GlobalOptions>();
      const tenant = await tenantClient(BulkheadClient.from(globals, io.env), opts.tenant, 'viewer');
      const view = await tenant.request<CollectionView>('GET', `/v1/collections/${encodeURIComponent(name)}`);
      emit(io.stdout, globals.json, view, () => {
        const head = keyValues([
          ['name', view.name],
          ['version', view.version],
          ...(view.description ? ([['description', view.description]] as const) : []),
          // Absent, the deployment's list applied; an empty list is shown as such, not as absent.
          ['encrypts', view.encryptedClassifications ? view.encryptedClassifications.join(', ') || 'none' : "the deployment's list"],
          ['updated', view.updatedAt],
        ]);
        const fields = Object.entries(view.fields).map(([field, f]) => ({ field, ...f }));
        const yes = (b: boolean) => (b ? 'yes' : '');
        return `${head}\n${table(fields, [
          { header: 'field', value: (f) => f.field },
          { header: 'type', value: (f) => f.type },
          { header: 'required', value: (f) => yes(f.required) },
          { header: 'unique', value: (f) => yes(f.unique) },
          { header: 'indexed', value: (f) => yes(f.indexed) },
          { header: 'classification', value: (f) => f.classification },
          { header: 'details', value: (f) => describeField(f) },
        ])}`;
      });
    });

  return collections;
}

const noChanges: DefinitionChanges = Object.freeze({ added: [], removed: [], changed: [], description: false, readAudit: false, encryptedClassifications: false });

function definitionOf(view: CollectionView): CollectionDefinition {
  return {
    fields: view.fields,
    ...(view.description !== undefined ? { description: view.description } : {}),
    readAudit: view.readAudit,
    ...(view.encryptedClassifications !== undefined ? { encryptedClassifications: view.encryptedClassifications } : {}),
  };
}
