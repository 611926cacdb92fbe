import { loadConfig } from './config.ts';
import { startEmbeddedPostgres } from './db/embedded.ts';
import type { EmbeddedDatabase } from './db/embedded.ts';
import { buildApp } from './http/app.ts';
import { createServices } from './services.ts';

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
  const services = await createServices(config, databaseUrl);
  const app = await buildApp(services);
  await app.listen({ port: config.port, host: config.host });
  warmUpGraphql(config.port);
  console.log(`ermis server listening: ${config.baseUrl} (FHIR base ${config.baseUrl}fhir/R4/, health ${config.baseUrl}healthcheck)`);

  const shutdown = async (signal: string): Promise<void> => {
    console.log(`${signal}: shutting down`);
    await app.close();
    await services.close();
    await embedded?.stop();
    process.exit(0);
  };
  process.once('SIGINT', () => void shutdown('SIGINT'));
  process.once('SIGTERM', () => void shutdown('SIGTERM'));
}

/** fhir-router builds its GraphQL schema on first use (seconds); do it now rather than in a user's request. */
function warmUpGraphql(port: number): void {
  fetch(`http://127.0.0.1:${port}/fhir/R4/$graphql`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ query: '{ PatientList(_count: 1) { id } }' }),
  }).catch(() => undefined);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
