/**
 * `npx medplum login` (the real @medplum/cli 5.0.10, interactive authorization-code flow) against
 * ermis, through ermis's login page in headless Chromium. The CLI runs in its own process with a
 * temporary HOME (it keeps its profiles in ~/.medplum/<profile>.json): it listens on
 * http://localhost:9615, then runs `xdg-open '<authorize URL>'`. A fake `xdg-open`, first on the
 * CLI's PATH, writes that URL to a file; the test opens it in Chromium and signs in; the login
 * page sends the browser to http://localhost:9615/?code=…, where the CLI redeems the code
 * (client_id=medplum-cli, no PKCE) and exits. `medplum whoami` and `medplum get` then run with the
 * stored token. Port 9615 is fixed by the CLI: only this file uses it, and its tests run one
 * after the other.
 */
import { parseJWTPayload } from '@medplum/core';
import type { Bundle, Patient, ProjectMembership } from '@medplum/fhirtypes';
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startTestServer, unique } from '../../server/test/harness.ts';
import type { TestServer } from '../../server/test/harness.ts';
import { cliEnv, MEDPLUM, runMedplum } from './medplum-cli-runner.ts';
import type { CliRun } from './medplum-cli-runner.ts';
import { ensureAppBuilt } from './app-build.ts';
import { launchChromium, recordTraffic } from './smart-app.ts';
import type { TrafficLog } from './smart-app.ts';

/** Where the CLI listens and what it sends as redirect_uri (fixed in the CLI). */
const CLI_REDIRECT_URI = 'http://localhost:9615';
const CLI_ORIGIN = new URL(CLI_REDIRECT_URI).origin;


/** A `medplum login` that is running in the background. */
interface CliLogin {
  child: ChildProcess;
  output(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** A temporary HOME with its own fake xdg-open, which records the URL it is asked to open. */
interface CliHome {
  dir: string;
  binDir: string;
  openedUrlFile: string;
}

let server: TestServer;
let browser: Browser;
const homes: CliHome[] = [];
const children: ChildProcess[] = [];

const practitioner = {
  email: `cli.login.${process.pid}@example.org`,
  password: 'Cli-Login-Horse-Battery-91',
  firstName: 'Eleni',
  lastName: 'Kostaki',
};
let practitionerId: string;
let patient: Patient & { id: string };
let patientFamily: string;

async function newHome(): Promise<CliHome> {
  const dir = await mkdtemp(join(tmpdir(), 'ermis-medplum-cli-login-'));
  const binDir = join(dir, 'fake-bin');
  const openedUrlFile = join(dir, 'xdg-open-url.txt');
  await mkdir(binDir);
  const script = join(binDir, 'xdg-open');
  // Written to a temporary name first, so the test never reads half a URL.
  await writeFile(script, `#!/bin/sh\nprintf '%s' "$1" > '${openedUrlFile}.tmp' && mv '${openedUrlFile}.tmp' '${openedUrlFile}'\n`);
  await chmod(script, 0o755);
  const home = { dir, binDir, openedUrlFile };
  homes.push(home);
  return home;
}

/** The CLI's environment: nothing of the test's (vitest's BASE_URL=/ among it) but PATH, with the fake xdg-open and Node 24 first. */
function homeEnv(home: CliHome): NodeJS.ProcessEnv {
  return cliEnv(home.dir, home.binDir);
}

function startLogin(home: CliHome): CliLogin {
  const child = spawn(MEDPLUM, ['login', '--base-url', server.baseUrl], { cwd: home.dir, env: homeEnv(home), stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let output = '';
  child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolvePromise) =>
    child.on('exit', (code, signal) => resolvePromise({ code, signal }))
  );
  return { child, output: () => output, exited };
}

/** Waits for the CLI to exit, or fails after `ms` with what it printed. */
async function waitForExit(cli: CliLogin, ms = 30_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`medplum login did not exit within ${ms} ms; output:\n${cli.output()}`)), ms);
  });
  try {
    return await Promise.race([cli.exited, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Waits for the fake xdg-open to have been run, and returns the URL it was given. */
async function openedUrl(home: CliHome, cli: CliLogin, ms = 30_000): Promise<URL> {
  const deadline = Date.now() + ms;
  for (;;) {
    const found = await stat(home.openedUrlFile).catch(() => undefined);
    if (found) {
      return new URL(await readFile(home.openedUrlFile, 'utf8'));
    }
    if (cli.child.exitCode !== null || cli.child.signalCode !== null) {
      throw new Error(`medplum login exited (${cli.child.exitCode ?? cli.child.signalCode}) before opening a browser:\n${cli.output()}`);
    }
    if (Date.now() > deadline) {
      throw new Error(`medplum login did not run xdg-open within ${ms} ms; output:\n${cli.output()}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Runs another `medplum` command with the same HOME and waits for it. */
function medplum(home: CliHome, args: string[]): Promise<CliRun> {
  return runMedplum(args, home.dir, homeEnv(home), (child) => children.push(child));
}

async function storedProfile(home: CliHome, name = 'default'): Promise<Record<string, string>> {
  return JSON.parse(await readFile(join(home.dir, '.medplum', `${name}.json`), 'utf8')) as Record<string, string>;
}

interface ActiveLogin {
  accessToken: string;
  refreshToken?: string;
  profile: { reference: string; display?: string };
  project: { reference: string; display?: string };
}

function tokenRequest(form: Record<string, string>): Promise<Response> {
  return fetch(`${server.baseUrl}oauth2/token`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams(form).toString(),
  });
}

/** Signs in on ermis's /oauth page (SignInForm: email, Continue, password, Sign in). */
async function signInOnLoginPage(page: Page, email: string, password: string): Promise<void> {
  const ermisOrigin = new URL(server.baseUrl).origin;
  await page.waitForURL((url) => url.origin === ermisOrigin && url.pathname === '/oauth', { timeout: 20_000 });
  await page.getByLabel('Email').fill(email);
  await page.getByRole('button', { name: 'Continue' }).click();
  await page.getByLabel(/^Password/).fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
}

async function withPageContext<T>(page: Page, log: TrafficLog, run: () => Promise<T>, cli?: CliLogin): Promise<T> {
  try {
    return await run();
  } catch (err) {
    const text = await page
      .locator('body')
      .innerText({ timeout: 2_000 })
      .catch(() => '(no page)');
    await log.settled();
    throw new Error(
      `${(err as Error).message}\n--- page ${page.url()}:\n${text}\n--- traffic:\n${log.describe()}\n--- CLI output:\n${cli?.output() ?? ''}`,
      { cause: err }
    );
  }
}

function expectAuthorizeUrl(url: URL): void {
  // MedplumClient's authorize URL below --base-url, with the CLI's parameters, and no PKCE.
  expect(`${url.origin}${url.pathname}`).toBe(`${server.baseUrl}oauth2/authorize`);
  expect(url.searchParams.get('client_id')).toBe('medplum-cli');
  expect(url.searchParams.get('redirect_uri')).toBe(CLI_REDIRECT_URI);
  expect(url.searchParams.get('scope')).toBe('openid');
  expect(url.searchParams.get('response_type')).toBe('code');
  expect(url.searchParams.get('prompt')).toBe('login');
  expect(url.searchParams.has('code_challenge')).toBe(false);
}

// The app is built before the server starts: the server serves app/dist only if it exists then.
beforeAll(async () => {
  ensureAppBuilt();
  server = await startTestServer();
  const admin = server.medplum();
  const membership = (await admin.invite(server.projectId, {
    resourceType: 'Practitioner',
    firstName: practitioner.firstName,
    lastName: practitioner.lastName,
    email: practitioner.email,
    password: practitioner.password,
    sendEmail: false,
  })) as ProjectMembership;
  expect(membership.profile?.reference).toMatch(/^Practitioner\//);
  practitionerId = (membership.profile?.reference as string).split('/')[1];
  patientFamily = unique('CliLogin');
  patient = (await admin.createResource<Patient>({
    resourceType: 'Patient',
    name: [{ given: ['Sofia'], family: patientFamily }],
    birthDate: '1991-06-21',
  })) as Patient & { id: string };
  browser = await launchChromium();
}, 180_000);

afterAll(async () => {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
    }
  }
  await browser?.close();
  await server?.stop();
  for (const home of homes) {
    await rm(home.dir, { recursive: true, force: true });
  }
});

describe('medplum login (authorization code, CLI 5.0.10) through the login page in Chromium', () => {
  let firstHome: CliHome;
  let firstCode: string;
  let firstToken: string;

  test('a practitioner with one membership signs in; the CLI stores a token that whoami and get use', { timeout: 120_000 }, async () => {
    firstHome = await newHome();
    const cli = startLogin(firstHome);
    const authorizeUrl = await openedUrl(firstHome, cli);
    expectAuthorizeUrl(authorizeUrl);
    // Until the browser comes back the CLI waits on its listener.
    expect(cli.child.exitCode).toBeNull();

    const page = await browser.newPage();
    const log = recordTraffic(page, new URL(server.baseUrl).origin);
    const landing = await withPageContext(
      page,
      log,
      async () => {
        await page.goto(authorizeUrl.toString());
        await signInOnLoginPage(page, practitioner.email, practitioner.password);
        await page.waitForURL((url) => url.origin === CLI_ORIGIN, { timeout: 30_000 });
        return new URL(page.url());
      },
      cli
    );

    // The login page sent the browser to the CLI's listener with a code and no error.
    expect(landing.pathname).toBe('/');
    expect(landing.searchParams.get('error'), landing.toString()).toBeNull();
    firstCode = landing.searchParams.get('code') as string;
    expect(firstCode).toBeTruthy();
    // The login page got the CLI's parameters from /oauth2/authorize.
    const loginPage = log.navigations.map((u) => new URL(u)).find((u) => u.pathname === '/oauth' && u.origin === new URL(server.baseUrl).origin);
    expect(loginPage?.searchParams.get('client_id')).toBe('medplum-cli');
    expect(loginPage?.searchParams.get('redirect_uri')).toBe(CLI_REDIRECT_URI);

    // The CLI redeemed the code, answered the browser and exited.
    const exit = await waitForExit(cli);
    expect(exit, cli.output()).toEqual({ code: 0, signal: null });
    const answer = await page.locator('body').innerText({ timeout: 5_000 });
    expect(answer.trim(), cli.output()).toBe(`Signed in as ${practitioner.firstName} ${practitioner.lastName}. You may close this window.`);
    await page.close();

    // ~/.medplum/default.json: the base URL and the practitioner's login in the first project.
    const stored = await storedProfile(firstHome);
    expect(JSON.parse(stored.options)).toMatchObject({ name: 'default', baseUrl: server.baseUrl });
    expect(stored.activeLogin, JSON.stringify(stored)).toBeDefined();
    const activeLogin = JSON.parse(stored.activeLogin) as ActiveLogin;
    expect(activeLogin.profile.reference).toBe(`Practitioner/${practitionerId}`);
    expect(activeLogin.project.reference).toBe(`Project/${server.projectId}`);
    firstToken = activeLogin.accessToken;
    const claims = parseJWTPayload(firstToken);
    expect(claims.client_id).toBe('medplum-cli');
    expect(claims.profile).toBe(`Practitioner/${practitionerId}`);
    expect(String(claims.scope).split(' ')).toContain('openid');
    // scope=openid only: no refresh token.
    expect(activeLogin.refreshToken).toBeUndefined();

    const me = await fetch(`${server.baseUrl}auth/me`, { headers: { Authorization: `Bearer ${firstToken}` } });
    expect(me.status).toBe(200);
    const meBody = (await me.json()) as { profile: { id: string }; project: { id: string }; user: { email: string } };
    expect(meBody.profile.id).toBe(practitionerId);
    expect(meBody.project.id).toBe(server.projectId);
    expect(meBody.user.email).toBe(practitioner.email);

    const whoami = await medplum(firstHome, ['whoami']);
    expect(whoami.stderr).toBe('');
    expect(whoami.exitCode).toBe(0);
    const lines = whoami.stdout.trim().split('\n');
    expect(lines[0]).toBe(`Server:  ${server.baseUrl}`);
    expect(lines[1]).toMatch(new RegExp(`^Profile: .*\\(Practitioner/${practitionerId}\\)$`));
    expect(lines[2]).toMatch(new RegExp(`^Project: .*\\(Project/${server.projectId}\\)$`));
    // whoami prints the display of the token response's profile and project references (Medplum's
    // server answers membership.profile and membership.project, whose display is the project's name).
    const project = await server.medplum().readResource('Project', server.projectId);
    expect.soft(lines[1], 'profile display in whoami').toBe(`Profile: ${practitioner.firstName} ${practitioner.lastName} (Practitioner/${practitionerId})`);
    expect.soft(lines[2], 'project display in whoami').toBe(`Project: ${project.name} (Project/${server.projectId})`);

    const search = await medplum(firstHome, ['get', `Patient?name=${patientFamily}`]);
    expect(search.stderr).toBe('');
    expect(search.exitCode, search.stdout).toBe(0);
    const bundle = JSON.parse(search.stdout) as Bundle<Patient>;
    expect(bundle.resourceType).toBe('Bundle');
    expect(bundle.type).toBe('searchset');
    expect(bundle.entry?.map((e) => e.resource?.id)).toEqual([patient.id]);

    const read = await medplum(firstHome, ['get', `Patient/${patient.id}`]);
    expect(read.stderr).toBe('');
    expect(read.exitCode, read.stdout).toBe(0);
    expect(JSON.parse(read.stdout)).toMatchObject({ resourceType: 'Patient', id: patient.id, birthDate: '1991-06-21' });
  });

  test('the redeemed code replayed at /oauth2/token with client_id=medplum-cli is refused, and the CLI login is revoked', { timeout: 60_000 }, async () => {
    expect(firstCode, 'the first test must have run').toBeTruthy();
    const replay = await tokenRequest({ grant_type: 'authorization_code', code: firstCode, client_id: 'medplum-cli', redirect_uri: CLI_REDIRECT_URI });
    expect(replay.status).toBe(400);
    const body = (await replay.json()) as { error: string; access_token?: string };
    expect(body.error).toBe('invalid_grant');
    expect(body.access_token).toBeUndefined();

    // RFC 6749 §4.1.2: the tokens issued for the code are revoked.
    const check = await fetch(`${server.fhirUrl}Patient?_count=1`, { headers: { Authorization: `Bearer ${firstToken}` } });
    expect(check.status).toBe(401);
    const get = await medplum(firstHome, ['get', `Patient/${patient.id}`]);
    expect(get.exitCode).not.toBe(0);
    expect(get.stdout).toContain('Unauthenticated: run `npx medplum login` to sign in');
    expect(get.stderr).toContain('Unauthorized');
    expect(get.stdout).not.toContain(patient.id);
  });

  test('the CLI listener refuses a tampered code and stores no login; the genuine code still redeems once', { timeout: 60_000 }, async () => {
    // A genuine code for the CLI, from the API the login page uses.
    const signIn = await fetch(`${server.baseUrl}auth/login`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({
        email: practitioner.email,
        password: practitioner.password,
        clientId: 'medplum-cli',
        scope: 'openid',
        redirectUri: CLI_REDIRECT_URI,
      }),
    });
    expect(signIn.status).toBe(200);
    const { code } = (await signIn.json()) as { code?: string };
    expect(code).toBeTruthy();
    const genuine = code as string;
    const last = genuine.at(-1) as string;
    const tampered = genuine.slice(0, -1) + (last === 'A' ? 'B' : 'A');

    const home = await newHome();
    const cli = startLogin(home);
    expectAuthorizeUrl(await openedUrl(home, cli));

    const answer = await fetch(`${CLI_REDIRECT_URI}/?code=${encodeURIComponent(tampered)}`);
    const text = await answer.text();
    expect(answer.status, text).toBe(400);
    expect(text).toMatch(/^Error: /);
    // The CLI exits after any code, good or bad; what matters is that nothing was stored.
    await waitForExit(cli);
    const stored = await storedProfile(home);
    expect(stored.activeLogin, JSON.stringify(stored)).toBeUndefined();
    const whoami = await medplum(home, ['whoami']);
    expect(whoami.exitCode).toBe(0);
    expect(whoami.stdout.trim()).toBe('Not logged in');

    // The server refused the tampered code itself (not the CLI), and the genuine one is still good, once.
    const direct = await tokenRequest({ grant_type: 'authorization_code', code: tampered, client_id: 'medplum-cli', redirect_uri: CLI_REDIRECT_URI });
    expect(direct.status).toBe(400);
    expect(((await direct.json()) as { error: string }).error).toBe('invalid_grant');
    const redeemed = await tokenRequest({ grant_type: 'authorization_code', code: genuine, client_id: 'medplum-cli', redirect_uri: CLI_REDIRECT_URI });
    const redeemedBody = (await redeemed.json()) as { access_token?: string; profile?: { reference: string }; error?: string };
    expect(redeemed.status, JSON.stringify(redeemedBody)).toBe(200);
    expect(redeemedBody.profile?.reference).toBe(`Practitioner/${practitionerId}`);
    const again = await tokenRequest({ grant_type: 'authorization_code', code: genuine, client_id: 'medplum-cli', redirect_uri: CLI_REDIRECT_URI });
    expect(again.status).toBe(400);
    expect(((await again.json()) as { error: string }).error).toBe('invalid_grant');
  });

  test('a code of the CLI flow is refused for another client_id or another redirect_uri', { timeout: 60_000 }, async () => {
    const codeFor = async (): Promise<string> => {
      const res = await fetch(`${server.baseUrl}auth/login`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ email: practitioner.email, password: practitioner.password, clientId: 'medplum-cli', scope: 'openid', redirectUri: CLI_REDIRECT_URI }),
      });
      expect(res.status).toBe(200);
      return ((await res.json()) as { code: string }).code;
    };
    const otherClient = await tokenRequest({ grant_type: 'authorization_code', code: await codeFor(), client_id: randomUUID(), redirect_uri: CLI_REDIRECT_URI });
    expect(otherClient.status).toBe(400);
    expect(((await otherClient.json()) as { error: string }).error).toBe('invalid_grant');
    const noClient = await tokenRequest({ grant_type: 'authorization_code', code: await codeFor(), redirect_uri: CLI_REDIRECT_URI });
    expect([400, 401]).toContain(noClient.status);
    const noClientBody = (await noClient.json()) as { error?: string; access_token?: string };
    expect(['invalid_request', 'invalid_client', 'invalid_grant']).toContain(noClientBody.error);
    expect(noClientBody.access_token).toBeUndefined();
    const otherRedirect = await tokenRequest({ grant_type: 'authorization_code', code: await codeFor(), client_id: 'medplum-cli', redirect_uri: 'http://localhost:9616' });
    expect(otherRedirect.status).toBe(400);
    expect(((await otherRedirect.json()) as { error: string }).error).toBe('invalid_grant');
  });

  test('the admin, with two memberships, picks the first project on the profile chooser; whoami names it', { timeout: 120_000 }, async () => {
    const project = await server.medplum().readResource('Project', server.projectId);
    const home = await newHome();
    const cli = startLogin(home);
    const authorizeUrl = await openedUrl(home, cli);
    expectAuthorizeUrl(authorizeUrl);

    const page = await browser.newPage();
    const log = recordTraffic(page, new URL(server.baseUrl).origin);
    // The memberships /auth/login offers, in the order the chooser lists them.
    let offered: { id: string; project?: { reference?: string; display?: string } }[] = [];
    page.on('response', (response) => {
      if (new URL(response.url()).pathname === '/auth/login' && response.request().method() === 'POST') {
        void response
          .json()
          .then((body: { memberships?: typeof offered }) => (offered = body.memberships ?? offered))
          .catch(() => undefined);
      }
    });
    await withPageContext(
      page,
      log,
      async () => {
        await page.goto(authorizeUrl.toString());
        await signInOnLoginPage(page, server.admin.email, server.admin.password);
        const options = page.getByRole('option');
        await expect.poll(() => options.count(), { timeout: 20_000 }).toBe(2);
        await expect.poll(() => offered.length, { timeout: 5_000 }).toBe(2);
        const index = offered.findIndex((m) => m.project?.reference === `Project/${server.projectId}`);
        expect(index, JSON.stringify(offered)).toBeGreaterThanOrEqual(0);
        // The chooser titles each option with the membership's project display: the user must be
        // able to tell the first project from the Super Admin project.
        const titles = await options.allInnerTexts();
        expect.soft(titles[index], `chooser options: ${JSON.stringify(titles)}; memberships: ${JSON.stringify(offered)}`).toMatch(new RegExp(`^${project.name}\\n`));
        expect.soft(offered[index].project?.display, 'ProjectMembership.project.display offered by /auth/login').toBe(project.name);
        await options.nth(index).click();
        await page.waitForURL((url) => url.origin === CLI_ORIGIN, { timeout: 30_000 });
      },
      cli
    );
    const exit = await waitForExit(cli);
    expect(exit, cli.output()).toEqual({ code: 0, signal: null });
    expect((await page.locator('body').innerText({ timeout: 5_000 })).trim()).toMatch(/^Signed in as .+\. You may close this window\.$/);
    await page.close();

    const activeLogin = JSON.parse((await storedProfile(home)).activeLogin) as ActiveLogin;
    expect(activeLogin.project.reference).toBe(`Project/${server.projectId}`);
    const me = (await (
      await fetch(`${server.baseUrl}auth/me`, { headers: { Authorization: `Bearer ${activeLogin.accessToken}` } })
    ).json()) as { project: { id: string; superAdmin?: boolean }; membership: { admin?: boolean }; profile: { resourceType: string; id: string } };
    expect(me.project.id).toBe(server.projectId);
    expect(me.project.superAdmin).not.toBe(true);
    expect(activeLogin.profile.reference).toBe(`${me.profile.resourceType}/${me.profile.id}`);

    const whoami = await medplum(home, ['whoami']);
    expect(whoami.exitCode).toBe(0);
    expect(whoami.stdout).toContain(`(Project/${server.projectId})`);
    expect(whoami.stdout).toContain(`(${activeLogin.profile.reference})`);

    const read = await medplum(home, ['get', `Patient/${patient.id}`]);
    expect(read.stderr).toBe('');
    expect(read.exitCode, read.stdout).toBe(0);
    expect((JSON.parse(read.stdout) as Patient).id).toBe(patient.id);
  });
});
