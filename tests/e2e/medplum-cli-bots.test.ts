/**
 * A bot's whole path with the real `medplum` CLI (@medplum/cli 5.0.10): the echo bot of bots/echo is
 * built by scripts/build-bots.ts, deployed with `medplum bot deploy echo` from a medplum.config.json
 * (the repository's own, with this server's bot id), executed over HTTP with JSON, text, CSV and HL7
 * v2, and run by a Subscription whose endpoint is the bot.
 *
 * Bot ids belong to a deployment, so the test writes its own medplum.config.json in a temporary
 * directory (the CLI reads it from the working directory), next to copies of the bot's source and
 * built code at the paths the repository's config names.
 */
import { Hl7Message } from '@medplum/core';
import type { Bot, ClientApplication, Communication, Patient, ProjectMembership, Subscription } from '@medplum/fhirtypes';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { buildBots } from '../../scripts/build-bots.ts';
import { startTestServer, unique } from '../../server/test/harness.ts';
import type { TestServer } from '../../server/test/harness.ts';
import { cliEnv, ROOT, runMedplum } from './medplum-cli-runner.ts';
import type { CliRun } from './medplum-cli-runner.ts';


interface BotConfig {
  name: string;
  id: string;
  source: string;
  dist: string;
}


let server: TestServer;
let dir: string;
let bot: Bot & { id: string };
let client: ClientApplication & { id: string; secret: string };
let echoConfig: BotConfig;
let builtCode: string;
let sourceCode: string;

/** `medplum <args>` in the temporary directory (also its HOME), with Node 24 first on PATH. */
function medplum(args: string[]): Promise<CliRun> {
  return runMedplum(args, dir, cliEnv(dir));
}

async function execute(body: string, contentType: string): Promise<{ status: number; type: string | null; text: string }> {
  const res = await fetch(`${server.fhirUrl}Bot/${bot.id}/$execute`, {
    method: 'POST',
    headers: { ...server.authorization, 'Content-Type': contentType },
    body,
  });
  return { status: res.status, type: res.headers.get('content-type'), text: await res.text() };
}

/** A Binary's content: `Binary/<id>` is read as the admin; a signed storage URL (what attachments carry) is fetched as is. */
async function binaryText(url: string | undefined): Promise<{ contentType: string | null | undefined; text: string }> {
  expect(url).toBeTruthy();
  if ((url as string).startsWith('Binary/')) {
    const binary = await server.medplum().readResource('Binary', (url as string).slice('Binary/'.length));
    return { contentType: binary.contentType, text: Buffer.from(binary.data ?? '', 'base64').toString('utf8') };
  }
  expect(url?.startsWith(`${server.baseUrl}storage/`)).toBe(true);
  const res = await fetch(url as string);
  expect(res.status).toBe(200);
  return { contentType: res.headers.get('content-type'), text: await res.text() };
}

beforeAll(async () => {
  server = await startTestServer({ JOB_RETRY_BASE_MS: '50' });
  const admin = server.medplum();

  const [built] = await buildBots(['echo']);
  expect(built.dist).toBe(join(ROOT, 'bots/echo/dist/index.js'));
  builtCode = await readFile(built.dist, 'utf8');
  sourceCode = await readFile(built.source, 'utf8');

  bot = await admin.post(`admin/projects/${server.projectId}/bot`, { name: unique('echo') });
  client = await admin.post(`admin/projects/${server.projectId}/client`, { name: unique('bot-deployer') });

  // The repository's medplum.config.json, with this deployment's id.
  const repoConfig = JSON.parse(await readFile(join(ROOT, 'medplum.config.json'), 'utf8')) as { bots: BotConfig[] };
  const fromRepo = repoConfig.bots.find((b) => b.name === 'echo');
  expect(fromRepo).toMatchObject({ source: 'bots/echo/src/index.ts', dist: 'bots/echo/dist/index.js' });
  echoConfig = { ...(fromRepo as BotConfig), id: bot.id };

  dir = await mkdtemp(join(tmpdir(), 'ermis-medplum-cli-bots-'));
  for (const [from, to] of [
    [built.source, echoConfig.source],
    [built.dist, echoConfig.dist],
  ]) {
    await mkdir(dirname(join(dir, to)), { recursive: true });
    await copyFile(from, join(dir, to));
  }
  await writeFile(join(dir, 'medplum.config.json'), JSON.stringify({ ...repoConfig, bots: [echoConfig] }, null, 2));

  const login = await medplum(['login', '--auth-type', 'client-credentials', '--client-id', client.id, '--client-secret', client.secret, '--base-url', server.baseUrl]);
  expect(login).toMatchObject({ exitCode: 0, stderr: '' });
});

afterAll(async () => {
  await server?.stop();
  if (dir) {
    await rm(dir, { recursive: true, force: true });
  }
});

describe('the echo bot built for deployment', () => {
  test('the build is CommonJS that requires @medplum/core only and exports handler', () => {
    expect(builtCode).toContain('module.exports');
    expect(builtCode).toMatch(/exports, \{[\s\S]*handler: \(\) => handler/);
    const required = [...builtCode.matchAll(/require\("([^"]+)"\)/g)].map((m) => m[1]);
    expect(new Set(required)).toEqual(new Set(['@medplum/core']));
    // a type-only import leaves nothing behind
    expect(builtCode).not.toContain('@medplum/fhirtypes');
  });
});

describe('medplum bot deploy echo', () => {
  test('a client without admin rights in the project cannot deploy (Bot is an administration type)', async () => {
    const run = await medplum(['bot', 'deploy', 'echo']);
    expect(run.exitCode).toBe(1);
    expect(run.stdout).toContain('Number of bots saved: 0\nNumber of bots deployed: 0\nNumber of errors: 1');
    expect(run.stderr).toContain('1 bot(s) had failures');
    expect(run.stderr).toContain(`echo [${bot.id}]`);
    // Why: the client's membership (no accessPolicy, not admin) reaches the whole project except the
    // administration types; it may store Binaries (the source upload) but not read or update the Bot.
    const basic = { Authorization: `Basic ${Buffer.from(`${client.id}:${client.secret}`).toString('base64')}` };
    const read = await fetch(`${server.fhirUrl}Bot/${bot.id}`, { headers: basic });
    expect(read.status).toBe(403);
    const binary = await fetch(`${server.fhirUrl}Binary`, { method: 'POST', headers: { ...basic, 'Content-Type': 'text/plain' }, body: 'probe' });
    expect(binary.status).toBe(201);
    const unchanged = await server.medplum().readResource('Bot', bot.id);
    expect(unchanged.meta?.versionId).toBe(bot.meta?.versionId);
    expect(unchanged.executableCode).toBeUndefined();
  });

  test('a name the config does not list deploys nothing', async () => {
    const run = await medplum(['bot', 'deploy', 'no-such-bot']);
    expect(run.stdout).toContain('Number of bots saved: 0\nNumber of bots deployed: 0\nNumber of errors: 0');
    expect(run.exitCode).toBe(0);
  });

  test('once the client is a project admin, the CLI saves the source and deploys the built code', async () => {
    const admin = server.medplum();
    const membership = await admin.searchOne('ProjectMembership', { profile: `ClientApplication/${client.id}` });
    expect(membership?.admin).toBeFalsy();
    await admin.updateResource<ProjectMembership>({ ...(membership as ProjectMembership), admin: true });

    const run = await medplum(['bot', 'deploy', 'echo']);
    expect(run.stderr).toBe('');
    expect(run.exitCode).toBe(0);
    const lines = run.stdout.trim().split('\n');
    expect(lines).toEqual([
      'Saving source code...',
      'Updating bot...',
      expect.stringMatching(/^Success! New bot version: \S+$/),
      'Deploying bot...',
      'Deploy result: All OK',
      'Number of bots saved: 1',
      'Number of bots deployed: 1',
      'Number of errors: 0',
    ]);

    const deployed = await admin.readResource('Bot', bot.id);
    // The source is the TypeScript of bots/echo, stored as a Binary by the CLI's createAttachment,
    // whose Attachment carries the Binary's signed storage URL (as on Medplum).
    expect(deployed.sourceCode).toMatchObject({ contentType: 'text/typescript', title: 'index.ts' });
    expect(deployed.sourceCode?.url).not.toBe(bot.sourceCode?.url);
    const source = await binaryText(deployed.sourceCode?.url);
    expect(source.contentType).toMatch(/^text\/typescript/);
    expect(source.text).toBe(sourceCode);
    // The executable is the esbuild output, through $deploy.
    expect(deployed.executableCode).toMatchObject({ contentType: 'application/javascript', title: 'index.js' });
    expect((await binaryText(deployed.executableCode?.url)).text).toBe(builtCode);
    // The version the CLI printed is the source update; $deploy wrote the next one.
    const printed = (lines[2].match(/: (\S+)$/) as RegExpMatchArray)[1];
    const sourceVersion = await admin.readVersion('Bot', bot.id, printed);
    expect(sourceVersion.sourceCode?.url).toBe(deployed.sourceCode?.url);
    expect(sourceVersion.executableCode).toBeUndefined();
    expect(deployed.meta?.versionId).not.toBe(printed);
  });
});

describe('$execute with each content type', () => {
  test('JSON that is not a resource is echoed as JSON', async () => {
    const input = { hello: 'ermis', values: [1, 2, 3], nested: { ok: true } };
    const res = await execute(JSON.stringify(input), 'application/json');
    expect(res.status).toBe(200);
    expect(res.type).toMatch(/^application\/json/);
    expect(JSON.parse(res.text)).toEqual(input);
  });

  test('text/plain is echoed as text', async () => {
    const res = await execute('hello from ermis\nline two', 'text/plain');
    expect(res).toMatchObject({ status: 200, text: 'hello from ermis\nline two' });
    expect(res.type).toMatch(/^text\/plain/);
  });

  test('text/csv is summarized', async () => {
    const csv = 'code,display,value\r\n2345-7,Glucose,5.4\r\n2160-0,"Creatinine, serum",88\r\n718-7,Hemoglobin\r\n';
    const res = await execute(csv, 'text/csv');
    expect(res.status).toBe(200);
    expect(res.type).toMatch(/^application\/json/);
    expect(JSON.parse(res.text)).toEqual({
      columns: ['code', 'display', 'value'],
      rowCount: 3,
      invalidRows: [3],
      numeric: { value: { count: 2, min: 5.4, max: 88, mean: 46.7 } },
    });
  });

  test('an HL7 ORU is answered with an HL7 ACK: MSA|AA with the message control id', async () => {
    const controlId = unique('ORU');
    const oru = [
      `MSH|^~\\&|LIS|LAB|ERMIS|CLINIC|20240102030405||ORU^R01^ORU_R01|${controlId}|P|2.5.1`,
      'PID|1||123^^^LAB^MR||Papadopoulos^Eleni',
      'OBR|1||ORD-7|2345-7^Glucose^LN',
      'OBX|1|NM|2345-7^Glucose^LN||5.4|mmol/L|3.9-5.5|N|||F',
    ].join('\r');
    const res = await execute(oru, 'x-application/hl7-v2+er7');
    expect(res.status).toBe(200);
    expect(res.type).toMatch(/^x-application\/hl7-v2\+er7/);
    const ack = Hl7Message.parse(res.text);
    expect(ack.getSegment('MSH')?.getComponent(9, 1)).toBe('ACK');
    expect(ack.getSegment('MSH')?.getField(5)?.toString()).toBe('LIS');
    expect(ack.getSegment('MSA')?.toString()).toMatch(new RegExp(`^MSA\\|AA\\|${controlId}(\\||$)`));
  });

  test('an HL7 message of another type is rejected with MSA|AR; text that is not HL7 is an error', async () => {
    const adt = 'MSH|^~\\&|PAS|CLINIC|ERMIS|CLINIC|20240102030405||ADT^A01|ADT-77|P|2.5.1\rPID|1||123';
    const rejected = await execute(adt, 'x-application/hl7-v2+er7');
    expect(rejected.status).toBe(200);
    expect(rejected.text).toMatch(/\rMSA\|AR\|ADT-77/);
    expect(rejected.text).toContain('Unsupported message type ADT');

    const garbage = await execute('this is not hl7', 'x-application/hl7-v2+er7');
    expect(garbage.status).toBe(400);
    expect(garbage.type).toMatch(/json/);
    expect(JSON.parse(garbage.text).issue[0].details.text).toContain('Invalid HL7 message');
  });

  test('a resource posted as JSON gets a Communication, written by the bot', async () => {
    const patient = await server.medplum().createResource<Patient>({ resourceType: 'Patient', name: [{ family: unique('Exec') }] });
    const res = await execute(JSON.stringify(patient), 'application/fhir+json');
    expect(res.status).toBe(200);
    const body = JSON.parse(res.text) as { communication: string; about: string; interaction: string };
    expect(body).toMatchObject({ about: `Patient/${patient.id}`, interaction: 'execute' });
    const communication = await server.medplum().readResource('Communication', body.communication);
    expect(communication.subject?.reference).toBe(`Patient/${patient.id}`);
    const extended = (await (await server.fhir(`Communication/${body.communication}`, { headers: { 'X-Medplum': 'extended' } })).json()) as Communication;
    expect(extended.meta?.author?.reference).toBe(`Bot/${bot.id}`);
  });
});

describe('a Subscription with the bot as endpoint', () => {
  test('creating a matching Patient runs the bot, which writes a Communication about it', async () => {
    const admin = server.medplum();
    const family = unique('SubBot');
    await admin.createResource<Subscription>({
      resourceType: 'Subscription',
      status: 'active',
      reason: 'echo bot on new patients',
      criteria: `Patient?name=${family}`,
      channel: { type: 'rest-hook', endpoint: `Bot/${bot.id}` },
    });
    const other = await admin.createResource<Patient>({ resourceType: 'Patient', name: [{ family: unique('NotMatching') }] });
    const patient = await admin.createResource<Patient>({ resourceType: 'Patient', name: [{ family }] });

    let found: Communication[] = [];
    for (let i = 0; i < 400 && found.length === 0; i++) {
      found = await admin.searchResources('Communication', { subject: `Patient/${patient.id}` }, { cache: 'no-cache' });
      if (found.length === 0) {
        await new Promise((r) => setTimeout(r, 25));
      }
    }
    expect(found).toHaveLength(1);
    expect(found[0]).toMatchObject({
      status: 'completed',
      about: [{ reference: `Patient/${patient.id}` }],
      payload: [{ contentString: `create Patient/${patient.id}` }],
    });
    // The patient outside the criteria did not run it.
    expect(await admin.searchResources('Communication', { subject: `Patient/${other.id}` }, { cache: 'no-cache' })).toHaveLength(0);
  });
});
