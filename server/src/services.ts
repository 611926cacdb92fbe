import { randomBytes, randomUUID } from 'node:crypto';
import type { FhirRouter } from '@medplum/fhir-router';
import type { CapabilityStatement, Project } from '@medplum/fhirtypes';
import type pg from 'pg';
import type { ServerConfig } from './config.ts';
import { migrate } from './db/migrate.ts';
import { connectRedis } from './db/redis.ts';
import type { RedisClient } from './db/redis.ts';
import { createPool } from './db/pool.ts';
import { AttachmentUrls } from './fhir/attachments.ts';
import { buildCapabilityStatement } from './fhir/capability.ts';
import { loadDefinitions } from './fhir/definitions.ts';
import { Presenter } from './fhir/presentation.ts';
import { DefinitionsOverlay } from './fhir/repo/definitions-overlay.ts';
import { PostgresRepository } from './fhir/repo/postgres-repository.ts';
import type { RepositoryContext, RepositoryServices } from './fhir/repo/postgres-repository.ts';
import { createFhirRouter } from './fhir/router.ts';
import { ParamRegistry } from './fhir/search/param-registry.ts';
import { RequiredBindings } from './fhir/terminology.ts';

export const VERSION = '0.1.0';

/** Everything a running server shares across requests. */
export interface ServerServices extends RepositoryServices {
  config: ServerConfig;
  presenter: Presenter;
  router: FhirRouter;
  capabilityStatement: CapabilityStatement;
  /** Present when REDIS_URL is configured. */
  redis: RedisClient | undefined;
  /** The project requests act in until authentication (issue #4) assigns one per login. */
  defaultContext: RepositoryContext;
  repo(context?: RepositoryContext): PostgresRepository;
  close(): Promise<void>;
}

export async function createServices(config: ServerConfig, databaseUrl: string): Promise<ServerServices> {
  const definitions = loadDefinitions();
  const pool = createPool(databaseUrl, config.databasePoolSize);
  try {
    await migrate(pool);
    const registry = new ParamRegistry(pool);
    const overlay = new DefinitionsOverlay(definitions);
    const resourceTypes = overlay
      .search({ resourceType: 'StructureDefinition' })
      .filter((sd) => (sd as { kind?: string }).kind === 'resource')
      .map((sd) => (sd as { type: string }).type);
    await registry.init(new Set(resourceTypes));
    const attachments = new AttachmentUrls(config.baseUrl, Buffer.from(await setting(pool, 'attachment_key', () => randomBytes(32).toString('base64')), 'base64'));
    const bindings = new RequiredBindings(overlay);
    const base: RepositoryServices = { pool, registry, overlay, attachments, bindings, baseUrl: config.baseUrl };
    const defaultContext = await defaultProjectContext(base);
    const redis = config.redisUrl ? connectRedis(config.redisUrl) : undefined;
    return {
      ...base,
      config,
      presenter: new Presenter(overlay),
      router: createFhirRouter(),
      capabilityStatement: buildCapabilityStatement(overlay, config.baseUrl, VERSION),
      defaultContext,
      redis,
      repo: (context = defaultContext) => new PostgresRepository(base, context),
      close: async () => {
        await redis?.close().catch(() => undefined);
        await pool.end();
      },
    };
  } catch (err) {
    await pool.end();
    throw err;
  }
}

/** Reads a server setting, creating it with `init()` the first time (several nodes may race; one value wins). */
async function setting(pool: pg.Pool, key: string, init: () => string): Promise<string> {
  await pool.query('INSERT INTO server_setting (key, value) VALUES ($1, $2) ON CONFLICT DO NOTHING', [key, init()]);
  const { rows } = await pool.query<{ value: string }>('SELECT value FROM server_setting WHERE key = $1', [key]);
  return rows[0].value;
}

/** The first Project, created on first start. */
async function defaultProjectContext(services: RepositoryServices): Promise<RepositoryContext> {
  const projectId = await setting(services.pool, 'default_project_id', () => randomUUID());
  const context: RepositoryContext = {
    projectId,
    readProjects: [projectId],
    author: { reference: 'system' },
  };
  const repo = new PostgresRepository(services, context);
  await repo.conditionalCreate<Project>(
    { resourceType: 'Project', id: projectId, name: 'Default' },
    { resourceType: 'Project', filters: [{ code: '_id', operator: 'eq', value: projectId }] },
    { assignedId: true }
  );
  return context;
}
