/**
 * The system under test: the ermis server as its own process (`node server/src/main.ts`, the way
 * `npm start` runs it), and a bench client application in the first project with an access policy,
 * whose client-credentials token every FHIR workload sends.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { MedplumClient } from '@medplum/core';
import type { AccessPolicy, ClientApplication } from '@medplum/fhirtypes';
import { signIn } from '../../seed/seed.ts';
import { CRUD_TYPES } from './crud-resources.ts';
import { startNode } from './processes.ts';
import type { BenchProcess } from './processes.ts';

export const BENCH_ADMIN = { email: 'admin@example.com', password: 'ermis-bench-admin-1' };

export interface ErmisServer {
  process: BenchProcess;
  baseUrl: string;
  fhirUrl: string;
  admin: MedplumClient;
}

export interface ErmisOptions {
  redisUrl: string | undefined;
  /** SERVER_WORKERS: server processes sharing the port (more than one needs Redis). */
  workers: number;
}

export async function startErmis(databaseUrl: string, port: number, options: ErmisOptions): Promise<ErmisServer> {
  const baseUrl = `http://127.0.0.1:${port}/`;
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    DATABASE_URL: databaseUrl,
    PORT: String(port),
    HOST: '127.0.0.1',
    BASE_URL: baseUrl,
    DATA_DIR: mkdtempSync(path.join(tmpdir(), 'ermis-bench-data-')),
    ADMIN_EMAIL: BENCH_ADMIN.email,
    ADMIN_PASSWORD: BENCH_ADMIN.password,
    LOG_LEVEL: 'warn',
    // One client sending as fast as it can would otherwise measure the per-user request limit.
    RATE_LIMIT_REQUESTS_PER_MINUTE: '100000000',
    SERVER_WORKERS: String(options.workers),
    ...(options.redisUrl ? { REDIS_URL: options.redisUrl } : {}),
  };
  const proc = startNode('ermis server', ['server/src/main.ts'], env);
  const deadline = Date.now() + 120_000;
  while (!(await fetch(`${baseUrl}healthcheck`).then((r) => r.ok, () => false))) {
    if (proc.child.exitCode !== null || Date.now() > deadline) {
      await proc.stop();
      throw new Error(`the ermis server did not become healthy:\n${proc.output().slice(-4000)}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  const admin = await signIn(baseUrl, BENCH_ADMIN.email, BENCH_ADMIN.password);
  return { process: proc, baseUrl, fhirUrl: `${baseUrl}fhir/R4/`, admin };
}

/** Every resource type the workloads write or read: the CRUD mix's and the rest of a patient bundle's. */
const BENCH_TYPES = [...CRUD_TYPES, 'DiagnosticReport', 'Condition', 'Procedure', 'Immunization'];

export interface BenchClient {
  clientId: string;
  secret: string;
}

/** A ClientApplication whose membership carries an AccessPolicy listing the bench's resource types (nothing else). */
export async function createBenchClient(server: ErmisServer): Promise<BenchClient> {
  const { admin } = server;
  const policy = await admin.createResource<AccessPolicy>({
    resourceType: 'AccessPolicy',
    name: 'bench: clinical data',
    resource: BENCH_TYPES.map((resourceType) => ({ resourceType })),
  });
  const projectId = admin.getProject()?.id as string;
  const client = (await admin.post(`admin/projects/${projectId}/client`, {
    name: 'ermis bench',
    description: 'Load generator of npm run bench',
    accessPolicy: { reference: `AccessPolicy/${policy.id}` },
  })) as ClientApplication;
  return { clientId: client.id as string, secret: client.secret as string };
}

/** A fresh access token (client credentials at /oauth2/token), as any backend service gets one. */
export async function clientToken(server: ErmisServer, client: BenchClient): Promise<string> {
  const response = await fetch(`${server.baseUrl}oauth2/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'client_credentials', client_id: client.clientId, client_secret: client.secret }),
  });
  const body = (await response.json()) as { access_token?: string };
  if (!response.ok || !body.access_token) {
    throw new Error(`client_credentials failed: ${response.status} ${JSON.stringify(body)}`);
  }
  return body.access_token;
}
