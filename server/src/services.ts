import { randomBytes } from 'node:crypto';
import type { FhirRouter } from '@medplum/fhir-router';
import type { CapabilityStatement } from '@medplum/fhirtypes';
import type pg from 'pg';
import { bootstrap } from './auth/bootstrap.ts';
import { createAuthServices } from './auth/service.ts';
import type { AuthServices } from './auth/service.ts';
import type { ServerConfig } from './config.ts';
import { startBackgroundWork } from './jobs/background.ts';
import type { BotExecutor } from './bots/executor.ts';
import type { JobQueue } from './jobs/queue.ts';
import type { WebsocketHub } from './subscriptions/websocket.ts';
import type { AgentGateway } from './agent/gateway.ts';
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
  auth: AuthServices;
  jobs: JobQueue;
  bots: BotExecutor;
  websockets: WebsocketHub;
  agents: AgentGateway;
  /** Set only on the first start when ADMIN_PASSWORD was not given: print it once. */
  generatedAdminPassword: string | undefined;
  /** A repository acting as a session (its projects and access policy). */
  repo(context: RepositoryContext): PostgresRepository;
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
    const projects = await bootstrap(base, {
      adminEmail: config.adminEmail,
      adminPassword: config.adminPassword,
      firstProjectName: config.firstProjectName,
    });
    const redis = config.redisUrl ? connectRedis(config.redisUrl) : undefined;
    const auth = await createAuthServices(
      base,
      {
        baseUrl: config.baseUrl,
        appBaseUrl: config.appBaseUrl,
        registrationEnabled: config.registrationEnabled,
        rateLimits: {
          requestsPerMinute: config.requestsPerMinute,
          loginFailuresPerAccount: config.loginFailuresPerAccount,
          loginFailuresPerAddress: config.loginFailuresPerAddress,
        },
        auditEvents: config.auditEvents,
      },
      projects,
      redis
    );
    const background = await startBackgroundWork({ pool, config, auth, redis });
    base.onWrite = (resourceType) => {
      if (resourceType !== 'AuditEvent') {
        background.wake(); // AuditEvents add no outbox rows
      }
      // With Redis, other nodes drop their cached sessions at once instead of after their TTL.
      if (auth.sessions.resourceWritten(resourceType) && redis?.isReady) {
        redis.publish(INVALIDATE_CHANNEL, resourceType).catch(() => undefined);
      }
    };
    const invalidations = redis ? subscribeInvalidations(redis, () => auth.sessions.invalidate()) : undefined;
    return {
      ...base,
      config,
      presenter: new Presenter(overlay),
      router: createFhirRouter(),
      capabilityStatement: buildCapabilityStatement(overlay, config.baseUrl, VERSION),
      auth,
      jobs: background.jobs,
      bots: background.bots,
      websockets: background.websockets,
      agents: background.agents,
      generatedAdminPassword: projects.generatedPassword,
      redis,
      repo: (context) => new PostgresRepository(base, context),
      close: async () => {
        await invalidations?.close().catch(() => undefined);
        await background.stop();
        await auth.close();
        await redis?.close().catch(() => undefined);
        await pool.end();
      },
    };
  } catch (err) {
    await pool.end();
    throw err;
  }
}

const INVALIDATE_CHANNEL = 'ermis:sessions:invalidate';

/** A second Redis connection (subscribers cannot send other commands) listening for invalidations. */
function subscribeInvalidations(redis: RedisClient, onMessage: () => void): RedisClient {
  const subscriber = redis.duplicate();
  subscriber.on('error', () => undefined); // reconnects by itself; health shows Redis's state
  // Not awaited: a Redis that is down must not hold up the start (sessions then expire by TTL).
  subscriber
    .connect()
    .then(() => subscriber.subscribe(INVALIDATE_CHANNEL, onMessage))
    .catch(() => undefined);
  return subscriber;
}

/** Reads a server setting, creating it with `init()` the first time (several nodes may race; one value wins). */
async function setting(pool: pg.Pool, key: string, init: () => string): Promise<string> {
  await pool.query('INSERT INTO server_setting (key, value) VALUES ($1, $2) ON CONFLICT DO NOTHING', [key, init()]);
  const { rows } = await pool.query<{ value: string }>('SELECT value FROM server_setting WHERE key = $1', [key]);
  return rows[0].value;
}
