import { existsSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { ServerConfig } from '../../server/src/config.ts';
import type { ServerServices } from '../../server/src/services.ts';
import type { FastifyInstance } from 'fastify';

/**
 * Loads the server code the bench measures. By default that is this checkout's `server/src`;
 * `ERMIS_SERVER_SRC` may point at another copy (e.g. a `git archive` of a commit), so that a long
 * run measures one fixed version while the working tree keeps changing.
 */
export function serverSrcDir(): string {
  const dir = path.resolve(process.env.ERMIS_SERVER_SRC ?? path.join(import.meta.dirname, '..', '..', 'server', 'src'));
  if (!existsSync(path.join(dir, 'services.ts'))) {
    throw new Error(`No server sources at ${dir} (set ERMIS_SERVER_SRC to a server/src directory)`);
  }
  return dir;
}

async function load<T>(file: string): Promise<T> {
  return (await import(pathToFileURL(path.join(serverSrcDir(), file)).href)) as T;
}

export async function startServices(databaseUrl: string, env: Record<string, string> = {}): Promise<ServerServices> {
  const { loadConfig } = await load<{ loadConfig: (env: NodeJS.ProcessEnv) => ServerConfig }>('config.ts');
  const { createServices } = await load<{ createServices: (c: ServerConfig, url: string) => Promise<ServerServices> }>('services.ts');
  return createServices(loadConfig({ LOG_LEVEL: 'silent', ...env }), databaseUrl);
}

export async function buildHttpApp(services: ServerServices): Promise<FastifyInstance> {
  const { buildApp } = await load<{ buildApp: (s: ServerServices) => Promise<FastifyInstance> }>(path.join('http', 'app.ts'));
  return buildApp(services);
}
