/**
 * The server as a real child process (`node server/src/main.ts`) for tests that kill it: SIGKILL
 * runs no shutdown code at all, which an in-process server cannot show. A restarted process on the
 * same database (and, when asked, the same port) is a fresh node that must pick up where the dead
 * one left off.
 */
import { ClientStorage, MedplumClient, MemoryStorage } from '@medplum/core';
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { resolve } from 'node:path';
import type pg from 'pg';
import { afterAll, expect } from 'vitest';
import { freePort, TEST_ADMIN } from '../../server/test/harness.ts';

const ROOT = resolve(import.meta.dirname, '../..');

/** A server running as a child process. */
export interface ServerProcess {
  child: ChildProcess;
  baseUrl: string;
  port: number;
  output(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const processes: ServerProcess[] = [];

/** SIGKILLs every server process still running (also done after each test file). */
export async function killServers(): Promise<void> {
  for (const proc of processes) {
    if (proc.child.exitCode === null && proc.child.signalCode === null) {
      proc.child.kill('SIGKILL');
      await proc.exited;
    }
  }
}

// Whatever a test left running dies with its file.
afterAll(killServers);

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Waits (bounded) until `predicate` holds; returns whether it did. */
export async function until(predicate: () => boolean | Promise<boolean>, timeoutMs: number, stepMs = 50): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > end) {
      return false;
    }
    await sleep(stepMs);
  }
  return true;
}

/**
 * Starts `node server/src/main.ts` against `databaseUrl` on `port` (a fresh one by default: pass
 * the dead node's port to restart it where its clients look for it); resolves once /healthcheck
 * answers 200.
 */
export async function startServer(databaseUrl: string, extraEnv: Record<string, string>, port?: number): Promise<ServerProcess> {
  const listenPort = port ?? (await freePort());
  const baseUrl = `http://127.0.0.1:${listenPort}/`;
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    PORT: String(listenPort),
    HOST: '127.0.0.1',
    // vitest sets BASE_URL=/ for its own use; the server must get its real one
    BASE_URL: baseUrl,
    DATABASE_URL: databaseUrl,
    LOG_LEVEL: 'warn',
    ADMIN_EMAIL: TEST_ADMIN.email,
    ADMIN_PASSWORD: TEST_ADMIN.password,
    OUTBOUND_ALLOWED_HOSTS: '127.0.0.1',
    JOB_RETRY_BASE_MS: '50',
    RATE_LIMIT_REQUESTS_PER_MINUTE: '1000000',
    ...extraEnv,
  };
  const child = spawn(process.execPath, ['server/src/main.ts'], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout?.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (output += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((done) =>
    child.once('exit', (code, signal) => done({ code, signal }))
  );
  const proc: ServerProcess = { child, baseUrl, port: listenPort, output: () => output, exited };
  processes.push(proc);
  const ready = await until(
    async () => child.exitCode !== null || (await fetch(`${baseUrl}healthcheck`).then((r) => r.status === 200, () => false)),
    60_000,
    100
  );
  if (!ready || child.exitCode !== null) {
    throw new Error(`server did not start (exit ${child.exitCode}):\n${output}`);
  }
  return proc;
}

/** SIGKILL: the process gets no chance to finish anything. */
export async function kill(proc: ServerProcess): Promise<void> {
  expect(proc.child.exitCode, proc.output()).toBeNull();
  proc.child.kill('SIGKILL');
  const { signal } = await proc.exited;
  expect(signal).toBe('SIGKILL');
}

/** SIGTERM, the ordinary shutdown, for processes the test is done with. */
export async function stop(proc: ServerProcess): Promise<void> {
  if (proc.child.exitCode === null && proc.child.signalCode === null) {
    proc.child.kill('SIGTERM');
    await proc.exited;
  }
}

/** The project the server created at its first start. */
export async function firstProjectId(db: pg.Pool): Promise<string> {
  const { rows } = await db.query<{ value: string }>(`SELECT value FROM server_setting WHERE key = 'default_project_id'`);
  expect(rows).toHaveLength(1);
  return rows[0].value;
}

/** The admin signs in like an app does: /auth/login with an S256 challenge, then /oauth2/token. */
export async function signIn(proc: ServerProcess, projectId: string): Promise<MedplumClient> {
  const storage = new ClientStorage(new MemoryStorage());
  const verifier = randomBytes(32).toString('base64url');
  storage.setString('codeVerifier', verifier);
  const client = new MedplumClient({ baseUrl: proc.baseUrl, storage, fetch: (url: string, init: RequestInit) => fetch(url, init) });
  const response = await client.startLogin({
    email: TEST_ADMIN.email,
    password: TEST_ADMIN.password,
    projectId,
    codeChallenge: createHash('sha256').update(verifier).digest('base64url'),
    codeChallengeMethod: 'S256',
  });
  expect(response.code, JSON.stringify(response)).toBeTruthy();
  await client.processCode(response.code as string);
  return client;
}
