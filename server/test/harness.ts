import { ClientStorage, MedplumClient, MemoryStorage } from '@medplum/core';
import { createHash, randomBytes } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { createServer } from 'node:net';
import { afterAll, beforeAll, inject } from 'vitest';
import { loadConfig } from '../src/config.ts';
import { buildApp } from '../src/http/app.ts';
import { createServices } from '../src/services.ts';
import { databaseUrl, withAdmin } from './global-setup.ts';
import type { ServerServices } from '../src/services.ts';

/** The first admin every test server is started with (ADMIN_EMAIL / ADMIN_PASSWORD). */
export const TEST_ADMIN = { email: 'admin@example.com', password: 'ermis-test-admin-1' };

export interface TestServer {
  baseUrl: string;
  fhirUrl: string;
  services: ServerServices;
  app: FastifyInstance;
  /** The first project, where the admin is project admin (not super admin). */
  projectId: string;
  admin: { email: string; password: string; accessToken: string };
  /** `Authorization: Bearer` of the admin, for requests made with plain fetch. */
  authorization: { Authorization: string };
  /** A MedplumClient pointed at this server, acting as the first project's admin. */
  medplum(): MedplumClient;
  /** A MedplumClient pointed at this server, not signed in. */
  anonymous(): MedplumClient;
  /** Signs in through /auth/login and /oauth2/token like an app does (PKCE), in the given project. */
  signIn(email: string, password: string, projectId?: string): Promise<MedplumClient>;
  /** Plain HTTP against the FHIR base (path relative to /fhir/R4/), as the admin unless init sets Authorization. */
  fhir(path: string, init?: RequestInit): Promise<Response>;
  /** Rows in the resource and history tables, AuditEvents (written in the background) aside: "the database is unchanged" checks. */
  rowCounts(): Promise<{ resources: number; versions: number }>;
  /** The database this server uses (to start another node on it). */
  databaseUrl: string;
  stop(): Promise<void>;
}

/** Starts a real server (Fastify on a real port, real Postgres) for a test file. */
/** `databaseUrl`: share another server's database (several nodes); by default a fresh one. */
export async function startTestServer(env: Record<string, string> = {}, databaseUrl?: string): Promise<TestServer> {
  const port = await freePort();
  const config = loadConfig({
    PORT: String(port),
    HOST: '127.0.0.1',
    LOG_LEVEL: 'silent',
    ADMIN_EMAIL: TEST_ADMIN.email,
    ADMIN_PASSWORD: TEST_ADMIN.password,
    // Suites send thousands of requests a minute as one user; the limit has its own test.
    RATE_LIMIT_REQUESTS_PER_MINUTE: '1000000',
    ...env,
  });
  const database = databaseUrl ?? (await createTestDatabase());
  const services = await createServices(config, database);
  const app = await buildApp(services);
  await app.listen({ port, host: '127.0.0.1' });
  const baseUrl = config.baseUrl;
  const fhirUrl = `${baseUrl}fhir/R4/`;
  const projectId = services.auth.firstProjectId;
  const anonymous = (): MedplumClient => new MedplumClient({ baseUrl, fetch: (url: string, init: RequestInit) => fetch(url, init) });
  const signIn = async (email: string, password: string, project?: string): Promise<MedplumClient> => {
    // S256 as in a browser: MedplumClient's own PKCE falls back to 'plain' in Node (it needs window.btoa).
    const storage = new ClientStorage(new MemoryStorage());
    const verifier = randomBytes(32).toString('base64url');
    storage.setString('codeVerifier', verifier);
    const client = new MedplumClient({ baseUrl, storage, fetch: (url: string, init: RequestInit) => fetch(url, init) });
    const response = await client.startLogin({
      email,
      password,
      projectId: project,
      codeChallenge: createHash('sha256').update(verifier).digest('base64url'),
      codeChallengeMethod: 'S256',
    });
    if (!response.code) {
      throw new Error(`sign-in of ${email} did not end with a code: ${JSON.stringify(response)}`);
    }
    await client.processCode(response.code);
    return client;
  };
  const adminPassword = services.generatedAdminPassword ?? (config.adminPassword as string);
  const adminClient = await signIn(config.adminEmail, adminPassword, projectId);
  const admin = { email: config.adminEmail, password: adminPassword, accessToken: adminClient.getAccessToken() as string };
  return {
    baseUrl,
    fhirUrl,
    services,
    app,
    projectId,
    databaseUrl: database,
    admin,
    authorization: { Authorization: `Bearer ${admin.accessToken}` },
    medplum: () => {
      const client = anonymous();
      client.setAccessToken(admin.accessToken);
      return client;
    },
    anonymous,
    signIn,
    fhir: (path, init) => {
      const headers = new Headers(init?.headers);
      if (!headers.has('Authorization')) {
        headers.set('Authorization', `Bearer ${admin.accessToken}`);
      }
      return fetch(fhirUrl + path, { ...init, headers });
    },
    rowCounts: async () => {
      const { rows } = await services.pool.query<{ r: string; h: string }>(
        `SELECT (SELECT count(*) FROM resource WHERE resource_type <> 'AuditEvent') AS r,
                (SELECT count(*) FROM resource_history WHERE resource_type <> 'AuditEvent') AS h`
      );
      return { resources: Number(rows[0].r), versions: Number(rows[0].h) };
    },
    stop: async () => {
      await app.close();
      await services.close();
    },
  };
}

let databases = 0;

/** A fresh copy of the migrated template database, for one test server. */
export async function createTestDatabase(): Promise<string> {
  const admin = inject('adminDatabaseUrl');
  const template = inject('templateDatabase');
  const name = `${template.replace(/_template$/, '')}_${process.pid}_${++databases}`;
  await withAdmin(admin, (client) => client.query(`CREATE DATABASE ${name} TEMPLATE ${template}`));
  return databaseUrl(admin, name);
}

/**
 * Starts a test server before the file's tests and stops it after them. The returned object's
 * `server` and `medplum` are set by the time the tests run.
 */
export function useTestServer(env?: Record<string, string>): { server: TestServer; medplum: MedplumClient } {
  const context = {} as { server: TestServer; medplum: MedplumClient };
  beforeAll(async () => {
    context.server = await startTestServer(env);
    context.medplum = context.server.medplum();
  });
  afterAll(async () => {
    await context.server?.stop();
  });
  return context;
}

/** Ports already handed out by this process: the kernel may offer a just-closed port again. */
const portsGiven = new Set<number>();

/** A port free on 127.0.0.1 that this process has not handed out before. */
export async function freePort(): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const server = createServer();
      server.listen(0, '127.0.0.1', () => {
        const address = server.address();
        server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
      });
    });
    if (!portsGiven.has(port)) {
      portsGiven.add(port);
      return port;
    }
  }
}

export const FHIR_JSON = { 'Content-Type': 'application/fhir+json' };

/** Waits (bounded) until `predicate` holds, checking every 25 ms; returns whether it did. */
export async function until(predicate: () => boolean, timeoutMs = 20_000): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > end) {
      return false;
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  return true;
}

/** A value unique to this test run, for identifiers that must not collide across files sharing a database. */
export function unique(prefix = 'x'): string {
  return `${prefix}-${process.pid}-${Math.random().toString(36).slice(2, 10)}`;
}
