import { MedplumClient } from '@medplum/core';
import type { FastifyInstance } from 'fastify';
import { createServer } from 'node:net';
import { afterAll, beforeAll, inject } from 'vitest';
import { loadConfig } from '../src/config.ts';
import { buildApp } from '../src/http/app.ts';
import { createServices } from '../src/services.ts';
import { databaseUrl, withAdmin } from './global-setup.ts';
import type { ServerServices } from '../src/services.ts';

export interface TestServer {
  baseUrl: string;
  fhirUrl: string;
  services: ServerServices;
  app: FastifyInstance;
  /** A MedplumClient pointed at this server. */
  medplum(): MedplumClient;
  /** Plain HTTP against the FHIR base (path relative to /fhir/R4/). */
  fhir(path: string, init?: RequestInit): Promise<Response>;
  /** Number of rows in the resource and history tables: "the database is unchanged" checks. */
  rowCounts(): Promise<{ resources: number; versions: number }>;
  stop(): Promise<void>;
}

/** Starts a real server (Fastify on a real port, real Postgres) for a test file. */
export async function startTestServer(env: Record<string, string> = {}): Promise<TestServer> {
  const port = await freePort();
  const config = loadConfig({ PORT: String(port), HOST: '127.0.0.1', LOG_LEVEL: 'silent', ...env });
  const services = await createServices(config, await createTestDatabase());
  const app = await buildApp(services);
  await app.listen({ port, host: '127.0.0.1' });
  const baseUrl = config.baseUrl;
  const fhirUrl = `${baseUrl}fhir/R4/`;
  return {
    baseUrl,
    fhirUrl,
    services,
    app,
    medplum: () => new MedplumClient({ baseUrl, fetch: (url: string, init: RequestInit) => fetch(url, init) }),
    fhir: (path, init) => fetch(fhirUrl + path, init),
    rowCounts: async () => {
      const { rows } = await services.pool.query<{ r: string; h: string }>(
        'SELECT (SELECT count(*) FROM resource) AS r, (SELECT count(*) FROM resource_history) AS h'
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

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

export const FHIR_JSON = { 'Content-Type': 'application/fhir+json' };

/** A value unique to this test run, for identifiers that must not collide across files sharing a database. */
export function unique(prefix = 'x'): string {
  return `${prefix}-${process.pid}-${Math.random().toString(36).slice(2, 10)}`;
}
