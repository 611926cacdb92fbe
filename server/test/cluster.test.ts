/**
 * SERVER_WORKERS: the server as several processes sharing one port (node:cluster). They serve
 * together, a worker that dies is replaced while the others keep serving, a write on one is read
 * on another, and SIGTERM stops them all. Without Redis the primary refuses to start them.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import http from 'node:http';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, expect, test } from 'vitest';
import { signIn } from '../../seed/seed.ts';
import { createTestDatabase, freePort, TEST_ADMIN, until } from './harness.ts';
import { alive, childPids } from '../../tests/support/processes.ts';

const ROOT = path.resolve(import.meta.dirname, '../..');
const REDIS = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';
const children: ChildProcess[] = [];

afterAll(() => {
  for (const child of children) {
    if (child.exitCode === null) {
      child.kill('SIGKILL');
    }
  }
});

async function start(env: Record<string, string>): Promise<{ child: ChildProcess; output: () => string }> {
  const base: NodeJS.ProcessEnv = { ...process.env, DATA_DIR: await mkdtemp(path.join(tmpdir(), 'ermis-cluster-')), LOG_LEVEL: 'warn', ADMIN_EMAIL: TEST_ADMIN.email, ADMIN_PASSWORD: TEST_ADMIN.password };
  delete base.BASE_URL; // vitest's
  delete base.REDIS_URL;
  const child = spawn(process.execPath, ['server/src/main.ts'], { cwd: ROOT, env: { ...base, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let output = '';
  child.stdout?.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (output += d.toString()));
  return { child, output: () => output };
}

test('two server workers share the port, survive the loss of one, and stop together', async () => {
  const port = await freePort();
  const { child, output } = await start({ SERVER_WORKERS: '2', PORT: String(port), DATABASE_URL: await createTestDatabase(), REDIS_URL: REDIS });
  const base = `http://127.0.0.1:${port}/`;
  expect(await until(() => childPids(child.pid as number).length === 2, 60_000), output()).toBe(true);
  // A new connection each time (fetch keeps them alive, and one may lead to the worker just killed).
  const healthy = (): Promise<boolean> =>
    new Promise((resolve) => {
      const request = http.get(`${base}healthcheck`, { agent: false, timeout: 5000 }, (response) => {
        response.resume();
        resolve(response.statusCode === 200);
      });
      request.on('error', () => resolve(false));
      request.on('timeout', () => request.destroy());
    });
  for (let i = 0; i < 600 && !(await healthy()); i++) {
    await new Promise((r) => setTimeout(r, 100));
  }
  expect(await healthy(), output()).toBe(true);
  const workers = childPids(child.pid as number);

  // A token from one worker works on the other; a write is read back through both.
  const medplum = await signIn(base, TEST_ADMIN.email, TEST_ADMIN.password);
  const auth = { Authorization: `Bearer ${medplum.getAccessToken()}`, 'content-type': 'application/fhir+json' };
  const created = (await (await fetch(`${base}fhir/R4/Patient`, { method: 'POST', headers: auth, body: JSON.stringify({ resourceType: 'Patient', name: [{ family: 'Cluster' }] }) })).json()) as { id: string };
  // Fresh connections are spread over the workers: every one of them finds the patient.
  const reads = await Promise.all(
    Array.from(
      { length: 20 },
      () =>
        new Promise<number>((resolve) => {
          const request = http.get(`${base}fhir/R4/Patient/${created.id}`, { agent: false, headers: auth }, (response) => {
            response.resume();
            resolve(response.statusCode ?? 0);
          });
          request.on('error', () => resolve(0));
        })
    )
  );
  expect(reads).toEqual(reads.map(() => 200));

  // One worker killed: once the primary has noticed (a connection accepted just before may be
  // lost, as with any crashed process), the other serves every request, and a replacement starts.
  process.kill(workers[0], 'SIGKILL');
  expect(await until(() => /server worker \d+ exited \(SIGKILL\); starting another/.test(output()), 30_000), output()).toBe(true);
  const answers = [];
  for (let i = 0; i < 10; i++) {
    answers.push(await healthy());
  }
  expect(answers).toEqual(answers.map(() => true));
  expect(await until(() => {
    const now = childPids(child.pid as number);
    return now.length === 2 && !now.includes(workers[0]);
  }, 60_000), output()).toBe(true);

  // SIGTERM to the primary: every worker ends, then the primary.
  const remaining = childPids(child.pid as number);
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  expect(await exited).toBe(0);
  expect(remaining.filter(alive)).toEqual([]);
}, 120_000);

test('SERVER_WORKERS > 1 without REDIS_URL is refused with the reason', async () => {
  const { child, output } = await start({ SERVER_WORKERS: '2', PORT: String(await freePort()), DATABASE_URL: await createTestDatabase() });
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  expect(code).toBe(1);
  expect(output()).toContain('SERVER_WORKERS > 1 needs REDIS_URL');
}, 60_000);
