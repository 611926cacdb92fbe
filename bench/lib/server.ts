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
  // The bench is one user sending as fast as it can: the per-user request limit would measure itself.
  return createServices(loadConfig({ LOG_LEVEL: 'silent', RATE_LIMIT_REQUESTS_PER_MINUTE: '100000000', ...env }), databaseUrl);
}

/** The first project's id, where the bench's data lives. */
export function benchProjectId(services: ServerServices): string {
  return services.auth.firstProjectId;
}

/**
 * `Authorization` for the bench's HTTP requests: a real access token of the admin's membership in
 * the first project, minted in-process (the bench does not know the admin's password), verified by
 * the server on every request like any other token.
 */
export async function adminAuthorization(services: ServerServices): Promise<string> {
  const { auth } = services;
  const user = await auth.directory.userByEmail(services.config.adminEmail);
  const membership = user && (await auth.directory.membershipsOfUser(user.id)).find((m) => m.project?.reference === `Project/${auth.firstProjectId}`);
  if (!user || !membership) {
    throw new Error(`No admin membership for ${services.config.adminEmail} in the first project`);
  }
  const login = await auth.logins.create({ userId: user.id, membershipId: membership.id, projectId: auth.firstProjectId, authMethod: 'password', scope: 'openid', granted: true });
  const session = await auth.sessions.fromLogin(login);
  const tokens = await auth.tokens.issue({ login, profile: session.profile, project: { reference: `Project/${auth.firstProjectId}` }, scope: 'openid' }, null);
  return `Bearer ${tokens.access_token}`;
}

/** An unrestricted repository writing into the first project (the bench's own data loading). */
export function benchRepo(services: ServerServices): ReturnType<ServerServices['auth']['directory']['repo']> {
  return services.auth.directory.repo(services.auth.firstProjectId);
}

export async function buildHttpApp(services: ServerServices): Promise<FastifyInstance> {
  const { buildApp } = await load<{ buildApp: (s: ServerServices) => Promise<FastifyInstance> }>(path.join('http', 'app.ts'));
  return buildApp(services);
}
