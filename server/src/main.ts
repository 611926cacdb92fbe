import cluster from 'node:cluster';
import { runPrimary } from './cluster.ts';
import { loadConfig } from './config.ts';
import { startEmbeddedPostgres } from './db/embedded.ts';
import type { EmbeddedDatabase } from './db/embedded.ts';
import { buildApp } from './http/app.ts';
import { createServices } from './services.ts';
import type { ServerServices } from './services.ts';

/** Starts the FHIR server: embedded Postgres when DATABASE_URL is unset, migrations, HTTP. */
async function main(): Promise<void> {
  const config = loadConfig();
  let embedded: EmbeddedDatabase | undefined;
  let databaseUrl = config.databaseUrl;
  if (!databaseUrl) {
    const port = Number(process.env.EMBEDDED_POSTGRES_PORT ?? 5488);
    console.log(`DATABASE_URL is not set: starting embedded PostgreSQL on 127.0.0.1:${port}, data in ${config.dataDir}/postgres`);
    embedded = await startEmbeddedPostgres(config.dataDir, port);
    databaseUrl = embedded.url;
  }
  if (config.workers > 1 && cluster.isPrimary) {
    if (!config.redisUrl) {
      throw new Error('SERVER_WORKERS > 1 needs REDIS_URL: the server processes share session invalidations and websocket notifications through Redis');
    }
    console.log(`starting ${config.workers} server workers on port ${config.port}`);
    await runPrimary({ workers: config.workers, env: { DATABASE_URL: databaseUrl }, onStopped: async () => embedded?.stop() });
    return;
  }
  const services = await createServices(config, databaseUrl);
  const app = await buildApp(services);
  await app.listen({ port: config.port, host: config.host });
  warmUpGraphql(services);
  console.log(`ermis server listening: ${config.baseUrl} (FHIR base ${config.baseUrl}fhir/R4/, health ${config.baseUrl}healthcheck)`);
  if (services.generatedAdminPassword) {
    console.log(`First start: admin sign-in ${config.adminEmail} / ${services.generatedAdminPassword} (shown once; set ADMIN_PASSWORD to choose it)`);
  } else {
    console.log(`Admin sign-in: ${config.adminEmail} (password from ADMIN_PASSWORD, or the one printed at first start)`);
  }

  const shutdown = async (signal: string): Promise<void> => {
    console.log(`${signal}: shutting down`);
    await app.close();
    await services.close();
    await embedded?.stop();
    process.exit(0);
  };
  process.once('SIGINT', () => void shutdown('SIGINT'));
  process.once('SIGTERM', () => void shutdown('SIGTERM'));
  if (cluster.isWorker) {
    // The primary went away (killed): a worker must not live on without it.
    process.once('disconnect', () => void shutdown('disconnect'));
  }
}

/** fhir-router builds its GraphQL schema on first use (seconds); do it now rather than in a user's request. */
function warmUpGraphql(services: ServerServices): void {
  services.router
    .handleRequest(
      { method: 'POST', url: '/$graphql', pathname: '', params: {}, query: {}, body: { query: '{ PatientList(_count: 1) { id } }' } },
      services.auth.directory.repo(services.auth.firstProjectId)
    )
    .catch(() => undefined);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
