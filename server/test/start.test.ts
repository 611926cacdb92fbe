import { spawn } from 'node:child_process';
import { MedplumClient } from '@medplum/core';
import type { ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, expect, test } from 'vitest';
import { freePort } from './harness.ts';

const ROOT = path.resolve(import.meta.dirname, '../..');
let child: ChildProcess | undefined;
let dataDir: string | undefined;

afterAll(async () => {
  if (child && child.exitCode === null) {
    const exited = new Promise((resolve) => child?.once('exit', resolve));
    child.kill('SIGTERM');
    await exited;
  }
  if (dataDir) {
    await rm(dataDir, { recursive: true, force: true });
  }
});

test('with no DATABASE_URL the server starts embedded Postgres and serves /metadata within a minute', async () => {
  dataDir = await mkdtemp(path.join(tmpdir(), 'ermis-start-'));
  const port = await freePort();
  const pgPort = await freePort();
  const env: NodeJS.ProcessEnv = { ...process.env, PORT: String(port), DATA_DIR: dataDir, EMBEDDED_POSTGRES_PORT: String(pgPort), LOG_LEVEL: 'warn' };
  delete env.DATABASE_URL;
  delete env.BASE_URL; // vitest sets BASE_URL=/ for its own use
  const started = Date.now();
  child = spawn(process.execPath, ['server/src/main.ts'], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout?.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (output += d.toString()));

  let status = 0;
  while (Date.now() - started < 60_000 && child.exitCode === null) {
    status = await fetch(`http://127.0.0.1:${port}/fhir/R4/metadata`).then((r) => r.status, () => 0);
    if (status === 200) {
      break;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  expect(status, output).toBe(200);
  // stdout arrives through a pipe; give the start-up lines a moment to come through
  for (let i = 0; i < 50 && !output.includes('listening'); i++) {
    await new Promise((r) => setTimeout(r, 100));
  }
  expect(output).toContain('starting embedded PostgreSQL');
  expect(output, output).toContain(`http://localhost:${port}/`);
  // the data stays under DATA_DIR
  const health = (await (await fetch(`http://127.0.0.1:${port}/healthcheck`)).json()) as { postgres: boolean };
  expect(health.postgres).toBe(true);
  // the first start prints the generated admin password once; it signs in
  const printed = /First start: admin sign-in (\S+) \/ (\S+)/.exec(output);
  expect(printed, output).not.toBeNull();
  const medplum = new MedplumClient({ baseUrl: `http://127.0.0.1:${port}/` });
  const login = await medplum.startLogin({ email: printed?.[1] as string, password: printed?.[2] as string });
  expect(login.memberships ?? login.code).toBeDefined();

  // SIGTERM runs the whole shutdown (server, jobs, then the embedded database) and exits 0; the
  // embedded-postgres package's own exit hook used to end the process first, with 143.
  const exited = new Promise<number | null>((resolve) => child?.once('exit', resolve));
  child.kill('SIGTERM');
  expect(await exited, output).toBe(0);
  expect(output).toContain('SIGTERM: shutting down');
}, 90_000);
