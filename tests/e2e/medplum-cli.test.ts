/**
 * The real `medplum` CLI (@medplum/cli 5.0.10, with its own @medplum/core 5.0.10, from the
 * tests/medplum-cli workspace) against a real server: client-credentials login, whoami, token,
 * get / post / put / delete and searches, a named profile with Basic authentication, and how
 * errors reach the command line. Each command is a child process with a temporary HOME, where the
 * CLI keeps its profiles (~/.medplum/<profile>.json).
 */
import { parseJWTPayload } from '@medplum/core';
import type { Bundle, ClientApplication, Patient } from '@medplum/fhirtypes';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startTestServer, unique } from '../../server/test/harness.ts';
import type { TestServer } from '../../server/test/harness.ts';
import { BIN, cliEnv, runMedplum } from './medplum-cli-runner.ts';
import type { CliRun } from './medplum-cli-runner.ts';



let server: TestServer;
let client: ClientApplication & { id: string; secret: string };
let home: string;

/** Runs `medplum <args>` with the temporary HOME and Node 24 first on PATH (the CLI's shebang is `env node`). */
function medplum(args: string[], options: { home?: string } = {}): Promise<CliRun> {
  const dir = options.home ?? home;
  return runMedplum(args, dir, cliEnv(dir));
}

/** The JSON a command printed (prettyPrint: the whole of stdout). */
function json<T>(run: CliRun): T {
  expect(run.stderr).toBe('');
  expect(run.exitCode).toBe(0);
  return JSON.parse(run.stdout) as T;
}

async function storedProfile(name = 'default', dir = home): Promise<Record<string, string>> {
  return JSON.parse(await readFile(join(dir, '.medplum', `${name}.json`), 'utf8')) as Record<string, string>;
}

function loginArgs(secret = client.secret): string[] {
  return ['login', '--auth-type', 'client-credentials', '--client-id', client.id, '--client-secret', secret, '--base-url', server.baseUrl];
}

beforeAll(async () => {
  server = await startTestServer();
  client = await server.medplum().post(`admin/projects/${server.projectId}/client`, { name: unique('cli') });
  home = await mkdtemp(join(tmpdir(), 'ermis-medplum-cli-'));
});

afterAll(async () => {
  await server?.stop();
  if (home) {
    await rm(home, { recursive: true, force: true });
  }
});

describe('medplum CLI 5.0.10 against ermis', () => {
  test('the CLI is the pinned 5.0.10 and runs on the Node 24 binary', async () => {
    const version = await medplum(['--version']);
    expect(version.exitCode).toBe(0);
    expect(version.stdout.trim()).toMatch(/^5\.0\.10(-|$)/);
    const node = await new Promise<string>((resolvePromise, reject) =>
      execFile('node', ['--version'], { env: { PATH: `${BIN}:${process.env.PATH ?? ''}` } }, (err, out) => (err ? reject(err) : resolvePromise(out)))
    );
    expect(node.trim()).toMatch(/^v24\./);
  });

  test('login --auth-type client-credentials stores the profile and a token the server accepts', async () => {
    const run = await medplum(loginArgs());
    expect(run.stderr).toBe('');
    expect(run.exitCode).toBe(0);

    const stored = await storedProfile();
    const options = JSON.parse(stored.options) as Record<string, string>;
    expect(options).toMatchObject({ name: 'default', authType: 'client-credentials', clientId: client.id, baseUrl: server.baseUrl });
    const activeLogin = JSON.parse(stored.activeLogin) as { accessToken: string; profile: { reference: string }; project: { reference: string } };
    expect(activeLogin.profile.reference).toBe(`ClientApplication/${client.id}`);
    expect(activeLogin.project.reference).toBe(`Project/${server.projectId}`);
    expect(parseJWTPayload(activeLogin.accessToken).client_id).toBe(client.id);

    const me = await fetch(`${server.baseUrl}auth/me`, { headers: { Authorization: `Bearer ${activeLogin.accessToken}` } });
    expect(me.status).toBe(200);
    expect(((await me.json()) as { profile: { id: string } }).profile.id).toBe(client.id);
  });

  test('whoami and token describe the signed-in client', async () => {
    const whoami = await medplum(['whoami']);
    expect(whoami.exitCode).toBe(0);
    expect(whoami.stdout).toContain(`Server:  ${server.baseUrl}`);
    expect(whoami.stdout).toContain(`(ClientApplication/${client.id})`);
    expect(whoami.stdout).toContain(`(Project/${server.projectId})`);

    const token = await medplum(['token']);
    expect(token.exitCode).toBe(0);
    const accessToken = token.stdout.trim();
    expect(parseJWTPayload(accessToken).client_id).toBe(client.id);
    const check = await fetch(`${server.fhirUrl}Patient?_count=1`, { headers: { Authorization: `Bearer ${accessToken}` } });
    expect(check.status).toBe(200);
  });

  test('get Patient/<id> prints the resource as JSON', async () => {
    const patient = await server.medplum().createResource<Patient>({
      resourceType: 'Patient',
      name: [{ family: unique('cli-get'), given: ['Eleni'] }],
      birthDate: '1984-03-09',
    });
    const read = json<Patient>(await medplum(['get', `Patient/${patient.id}`]));
    expect(read).toMatchObject({ resourceType: 'Patient', id: patient.id, birthDate: '1984-03-09', name: patient.name });
    expect(read.meta?.versionId).toBe(patient.meta?.versionId);
  });

  test('post Patient creates the resource and prints it; get with a search finds it', async () => {
    const family = unique('cli-post');
    const body = JSON.stringify({ resourceType: 'Patient', name: [{ family, given: ['Nikos'] }], gender: 'male' });
    const created = json<Patient>(await medplum(['post', 'Patient', body]));
    expect(created.resourceType).toBe('Patient');
    expect(created.id).toMatch(/^[0-9a-f-]{36}$/);
    expect(created.name).toEqual([{ family, given: ['Nikos'] }]);
    expect(created.meta?.versionId).toBeTruthy();

    // It is really stored, written by the client.
    const stored = await server.medplum().readResource('Patient', created.id as string);
    expect(stored.gender).toBe('male');
    expect(stored.meta?.author?.reference).toBe(`ClientApplication/${client.id}`);

    const bundle = json<Bundle<Patient>>(await medplum(['get', `Patient?name=${family}`]));
    expect(bundle.resourceType).toBe('Bundle');
    expect(bundle.type).toBe('searchset');
    expect(bundle.entry?.map((e) => e.resource?.id)).toEqual([created.id]);

    const none = json<Bundle>(await medplum(['get', `Patient?name=${unique('nobody')}`]));
    expect(none.entry ?? []).toHaveLength(0);
  });

  test('put updates, delete deletes; a read afterwards fails', async () => {
    const created = json<Patient>(await medplum(['post', 'Patient', JSON.stringify({ resourceType: 'Patient', name: [{ family: unique('cli-put') }] })]));
    const updated = json<Patient>(await medplum(['put', `Patient/${created.id}`, JSON.stringify({ ...created, gender: 'female' })]));
    expect(updated.id).toBe(created.id);
    expect(updated.gender).toBe('female');
    expect(updated.meta?.versionId).not.toBe(created.meta?.versionId);

    const deleted = json<{ resourceType: string; issue: { severity: string }[] }>(await medplum(['delete', `Patient/${created.id}`]));
    expect(deleted.resourceType).toBe('OperationOutcome');
    expect(deleted.issue[0].severity).toBe('information');
    const gone = await medplum(['get', `Patient/${created.id}`]);
    expect(gone.exitCode).toBe(1);
    expect(gone.stdout).toBe('');
    expect(gone.stderr.trim()).toBe('Error: Gone');
  });

  test('get of a missing resource exits non-zero with the error on stderr', async () => {
    const missing = crypto.randomUUID();
    const run = await medplum(['get', `Patient/${missing}`]);
    expect(run.exitCode).toBe(1);
    expect(run.stdout).toBe('');
    expect(run.stderr.trim()).toBe('Error: Not found');
  });

  test('post of an invalid resource exits non-zero with the validation message', async () => {
    const family = unique('cli-invalid');
    const run = await medplum(['post', 'Patient', JSON.stringify({ resourceType: 'Patient', name: [{ family }], gender: 'not-a-gender' })]);
    expect(run.exitCode).toBe(1);
    expect(run.stdout).toBe('');
    expect(run.stderr.trim()).toBe(
      'Error: Value "not-a-gender" is not in the required value set http://hl7.org/fhir/ValueSet/administrative-gender|4.0.1 (Patient.gender)'
    );
    // Nothing was stored.
    expect(await server.medplum().searchResources('Patient', { family })).toHaveLength(0);
  });

  test('a named profile with --auth-type basic sends the client credentials on every request', async () => {
    const set = await medplum([
      'profile',
      'set',
      'ermis-basic',
      '--auth-type',
      'basic',
      '--client-id',
      client.id,
      '--client-secret',
      client.secret,
      '--base-url',
      server.baseUrl,
    ]);
    expect(set.exitCode).toBe(0);
    const stored = JSON.parse((await storedProfile('ermis-basic')).options) as Record<string, string>;
    expect(stored).toMatchObject({ name: 'ermis-basic', authType: 'basic', clientId: client.id, baseUrl: server.baseUrl });

    const patient = await server.medplum().createResource<Patient>({ resourceType: 'Patient', name: [{ family: unique('cli-basic') }] });
    const read = json<Patient>(await medplum(['get', '-p', 'ermis-basic', `Patient/${patient.id}`]));
    expect(read.id).toBe(patient.id);
    // No token was fetched for a basic profile: nothing but the options is stored.
    expect(Object.keys(await storedProfile('ermis-basic'))).toEqual(['options']);

    const posted = json<Patient>(await medplum(['post', '-p', 'ermis-basic', 'Patient', JSON.stringify({ resourceType: 'Patient', active: true })]));
    expect((await server.medplum().readResource('Patient', posted.id as string)).meta?.author?.reference).toBe(`ClientApplication/${client.id}`);
  });

  test('a basic profile with a wrong secret is refused', async () => {
    await medplum(['profile', 'set', 'ermis-wrong', '--auth-type', 'basic', '--client-id', client.id, '--client-secret', 'wrong', '--base-url', server.baseUrl]);
    const run = await medplum(['get', '-p', 'ermis-wrong', 'Patient?_count=1']);
    // The server answers 401; the CLI's client then tries a client-credentials login, which fails too.
    expect(run.exitCode).toBe(1);
    expect(run.stdout.trim()).toBe('Unauthenticated: run `npx medplum login` to sign in');
    expect(run.stderr.trim()).toBe('Error: Failed to fetch tokens');
  });

  test('login with a wrong secret fails and says why; the stored token is not replaced by anything usable', async () => {
    const fresh = await mkdtemp(join(tmpdir(), 'ermis-medplum-cli-wrong-'));
    try {
      const run = await medplum(loginArgs('not-the-secret'), { home: fresh });
      expect(run.exitCode).toBe(1);
      // core 5.0.10 keeps the server's error_description only as the error's cause...
      expect(run.stderr.trim()).toBe('Error: Failed to fetch tokens');
      const stored = await storedProfile('default', fresh);
      expect(stored.activeLogin).toBeUndefined();
      // ...which --verbose prints: the server's RFC 6749 error_description.
      const verbose = await medplum([...loginArgs('not-the-secret'), '--verbose'], { home: fresh });
      expect(verbose.exitCode).toBe(1);
      expect(verbose.stderr).toContain('Invalid client credentials');
      // And a following command cannot get data either.
      const get = await medplum(['get', 'Patient?_count=1'], { home: fresh });
      expect(get.exitCode).toBe(1);
      expect(get.stdout.trim()).toBe('Unauthenticated: run `npx medplum login` to sign in');
      expect(get.stderr.trim()).toBe('Error: Failed to fetch tokens');
    } finally {
      await rm(fresh, { recursive: true, force: true });
    }
  });

  test('a named profile that does not exist is an error, not a request to the default server', async () => {
    const run = await medplum(['get', '-p', 'no-such-profile', 'Patient?_count=1']);
    expect(run.exitCode).toBe(1);
    expect(run.stderr).toContain('Profile "no-such-profile" does not exist');
    expect(existsSync(join(home, '.medplum', 'default.json'))).toBe(true);
  });
});
