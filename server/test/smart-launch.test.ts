import { createHash, randomBytes } from 'node:crypto';
import type { ClientApplication, Encounter, Patient, SmartAppLaunch } from '@medplum/fhirtypes';
import { beforeAll, describe, expect, test } from 'vitest';
import { unique, useTestServer } from './harness.ts';

/*
 * SMART App Launch without a browser: the requests the login page would make (its UI is tested in
 * tests/e2e/smart-standalone.test.ts with Chromium).
 */

const t = useTestServer();
const REDIRECT = 'https://app.example.org/callback';
let client: ClientApplication;
let patient: Patient;
let other: Patient;
let encounter: Encounter;
const practitioner = { email: '', password: 'ehr-launch-pw-1' };

function pkce(): { verifier: string; challenge: string } {
  const verifier = randomBytes(32).toString('base64url');
  return { verifier, challenge: createHash('sha256').update(verifier).digest('base64url') };
}

async function post(path: string, body: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(t.server.baseUrl + path, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

async function token(form: Record<string, string>): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(t.server.baseUrl + 'oauth2/token', {
    method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams(form),
  });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

/** authorize → what the login page posts → the code. */
async function signInThroughClient(scope: string, extra: Record<string, string> = {}): Promise<{ code: string; verifier: string }> {
  const { verifier, challenge } = pkce();
  const authorize = new URL(t.server.baseUrl + 'oauth2/authorize');
  const params = { response_type: 'code', client_id: client.id as string, redirect_uri: REDIRECT, scope, state: 's1', code_challenge: challenge, code_challenge_method: 'S256', aud: t.server.fhirUrl, ...extra };
  for (const [k, v] of Object.entries(params)) {
    authorize.searchParams.set(k, v);
  }
  const redirect = await fetch(authorize, { redirect: 'manual' });
  expect(redirect.status).toBe(302);
  const page = new URL(redirect.headers.get('location') as string);
  expect(page.pathname).toBe('/oauth');
  const login = await post('auth/login', {
    email: practitioner.email,
    password: practitioner.password,
    clientId: client.id,
    scope: page.searchParams.get('scope'),
    codeChallenge: page.searchParams.get('code_challenge'),
    codeChallengeMethod: 'S256',
    launch: page.searchParams.get('launch') ?? undefined,
  });
  expect(login.status).toBe(200);
  return { code: login.json.code as string, verifier };
}

beforeAll(async () => {
  client = await t.medplum.post(`admin/projects/${t.server.projectId}/client`, { name: 'smart app', redirectUris: [REDIRECT] });
  patient = await t.medplum.createResource<Patient>({ resourceType: 'Patient', name: [{ family: unique('Launch') }] });
  other = await t.medplum.createResource<Patient>({ resourceType: 'Patient', name: [{ family: unique('Other') }] });
  encounter = await t.medplum.createResource<Encounter>({ resourceType: 'Encounter', status: 'in-progress', class: { code: 'AMB' }, subject: { reference: `Patient/${patient.id}` } });
  await t.medplum.createResource({ resourceType: 'Observation', status: 'final', code: { text: 'bp' }, subject: { reference: `Patient/${patient.id}` } });
  await t.medplum.createResource({ resourceType: 'Observation', status: 'final', code: { text: 'bp' }, subject: { reference: `Patient/${other.id}` } });
  practitioner.email = `${unique('ehr')}@example.com`;
  await t.medplum.invite(t.server.projectId, { resourceType: 'Practitioner', firstName: 'Andreas', lastName: 'K', email: practitioner.email, password: practitioner.password });
});

describe('EHR launch', () => {
  test('the launch context of a SmartAppLaunch reaches the token response and confines patient/ scopes', async () => {
    const launch = await t.medplum.createResource<SmartAppLaunch>({
      resourceType: 'SmartAppLaunch',
      patient: { reference: `Patient/${patient.id}` },
      encounter: { reference: `Encounter/${encounter.id}` },
    });
    const { code, verifier } = await signInThroughClient('launch openid fhirUser patient/*.rs', { launch: launch.id as string });
    const { status, json } = await token({ grant_type: 'authorization_code', code, code_verifier: verifier, client_id: client.id as string, redirect_uri: REDIRECT });
    expect(status).toBe(200);
    expect(json).toMatchObject({ patient: patient.id, encounter: encounter.id, need_patient_banner: true, scope: 'launch openid fhirUser patient/*.rs' });
    expect(json.fhirUser).toMatch(/fhir\/R4\/Practitioner\//);
    const auth = { Authorization: `Bearer ${json.access_token}` };
    const observations = (await (await t.server.fhir('Observation', { headers: auth })).json()) as { entry?: { resource: { subject: { reference: string } } }[] };
    expect(observations.entry?.map((e) => e.resource.subject.reference)).toEqual([`Patient/${patient.id}`]);
    expect((await t.server.fhir(`Patient/${other.id}`, { headers: auth })).status).toBe(404);
    expect((await t.server.fhir(`Patient/${patient.id}`, { headers: auth })).status).toBe(200);
    // read-only scopes: no writes, not even in the compartment
    const write = await t.server.fhir('Observation', {
      method: 'POST',
      headers: { ...auth, 'Content-Type': 'application/fhir+json' },
      body: JSON.stringify({ resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: `Patient/${patient.id}` } }),
    });
    expect(write.status).toBe(403);
  });

  test('an unknown launch id is refused at sign-in', async () => {
    const { challenge } = pkce();
    const login = await post('auth/login', {
      email: practitioner.email,
      password: practitioner.password,
      clientId: client.id,
      scope: 'launch openid patient/*.rs',
      codeChallenge: challenge,
      codeChallengeMethod: 'S256',
      launch: 'no-such-launch',
    });
    expect(login.status).toBe(400);
    expect(JSON.stringify(login.json)).toContain('Unknown launch');
  });
});

describe('standalone launch with a patient picker', () => {
  test('the picker lists what the user may see; the chosen patient is bound once and confines the token', async () => {
    const { code, verifier } = await signInThroughClient('launch/patient openid patient/*.rs');
    const list = await post('auth/patients', { code, name: patient.name?.[0].family });
    expect(list.status).toBe(200);
    expect((list.json.entry as { resource: Patient }[]).map((e) => e.resource.id)).toEqual([patient.id]);
    expect((await post('auth/launch-patient', { code, patient: 'no-such-patient' })).status).toBe(404);
    expect((await post('auth/launch-patient', { code, patient: patient.id })).json).toEqual({ ok: true });
    // whoever holds the code cannot switch the patient afterwards
    expect((await post('auth/launch-patient', { code, patient: other.id })).status).toBe(400);
    const { json } = await token({ grant_type: 'authorization_code', code, code_verifier: verifier, client_id: client.id as string, redirect_uri: REDIRECT });
    expect(json.patient).toBe(patient.id);
    const auth = { Authorization: `Bearer ${json.access_token}` };
    expect((await t.server.fhir(`Patient/${other.id}`, { headers: auth })).status).toBe(404);
    // the code is spent: the picker no longer answers to it
    expect((await post('auth/patients', { code })).status).toBe(400);
  });

  test('patient/ scopes without a chosen patient grant nothing', async () => {
    const { code, verifier } = await signInThroughClient('launch/patient openid patient/*.rs');
    const { json } = await token({ grant_type: 'authorization_code', code, code_verifier: verifier, client_id: client.id as string, redirect_uri: REDIRECT });
    expect(json.patient).toBeUndefined();
    const res = await t.server.fhir('Observation', { headers: { Authorization: `Bearer ${json.access_token}` } });
    expect(res.status).toBe(403);
  });
});

describe('clients and projects', () => {
  test("a project's client signs users in to that project only", async () => {
    const { challenge } = pkce();
    const systemProject = t.server.services.auth.directory.systemProjectId;
    const base = { email: t.server.admin.email, password: t.server.admin.password, clientId: client.id, codeChallenge: challenge, codeChallengeMethod: 'S256' };
    const other = await post('auth/login', { ...base, projectId: systemProject });
    expect(other.status).toBe(400);
    expect(JSON.stringify(other.json)).toContain('another project');
    // without projectId the admin's two memberships narrow to the client's project: a code at once
    const own = await post('auth/login', base);
    expect(own.json.code).toMatch(/^[0-9a-f]{32}$/);
    // the profile chooser cannot pick a membership of another project either
    const pending = await post('auth/login', { email: t.server.admin.email, password: t.server.admin.password, codeChallenge: challenge, codeChallengeMethod: 'S256' });
    const superMembership = (pending.json.memberships as { id: string; project: { reference: string } }[]).find((m) => m.project.reference === `Project/${systemProject}`);
    expect(superMembership).toBeDefined();
    const viaClient = await post('auth/login', { ...base });
    const chosen = await post('auth/profile', { login: viaClient.json.login, profile: superMembership?.id });
    expect(chosen.status).toBe(400);
  });
});
