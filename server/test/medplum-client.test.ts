/**
 * Medplum's own client (`MedplumClient` from @medplum/core, unchanged) against the real server:
 * sign-in (password + PKCE, several memberships, client credentials), the session it loads from
 * /auth/me, transparent token renewal after expiry, the FHIR helpers the Medplum UI libraries use
 * (batch, schema loading, $expand, conditional writes, history, Binary, GraphQL), invitations,
 * sign-out, and how bad sign-in input is answered.
 */
import { ClientStorage, MedplumClient, MemoryStorage, OperationOutcomeError, parseJWTPayload } from '@medplum/core';
import type { LoginAuthenticationResponse } from '@medplum/core';
import type {
  AccessPolicy,
  Binary,
  ClientApplication,
  OperationOutcome,
  Patient,
  Practitioner,
  ProjectMembership,
  Reference,
} from '@medplum/fhirtypes';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { resolve } from 'node:path';
import { beforeAll, describe, expect, test } from 'vitest';
import { TEST_ADMIN, unique, useTestServer } from './harness.ts';

const t = useTestServer();

const PASSWORD = 'Correct-Horse-Battery-Staple-7';

/** A MedplumClient for this server with extra options (the harness's anonymous() takes none). */
function client(options: ConstructorParameters<typeof MedplumClient>[0] = {}): MedplumClient {
  return new MedplumClient({ baseUrl: t.server.baseUrl, fetch: (url: string, init: RequestInit) => fetch(url, init), ...options });
}

/** The OperationOutcomeError a promise rejects with (fails the test if it resolves or throws something else). */
async function outcomeError(promise: Promise<unknown>): Promise<OperationOutcomeError> {
  const err = await promise.then(
    (value) => {
      throw new Error(`expected a rejection, got ${JSON.stringify(value)}`);
    },
    (e: unknown) => e
  );
  expect(err).toBeInstanceOf(OperationOutcomeError);
  return err as OperationOutcomeError;
}

/** Plain HTTP below the server's base URL (not /fhir/R4), with a bearer token or none. */
function raw(path: string, init: RequestInit & { token?: string } = {}): Promise<Response> {
  const headers = new Headers(init.headers);
  if (init.token) {
    headers.set('Authorization', `Bearer ${init.token}`);
  }
  return fetch(t.server.baseUrl + path, { ...init, headers });
}

function loginIdOf(accessToken: string | undefined): string {
  return parseJWTPayload(accessToken as string).login_id as string;
}

/**
 * A MedplumClient that signs in with an S256 PKCE challenge, as it does in a browser. In Node,
 * MedplumClient's own startPkce always falls back to 'plain' (its base64 step calls window.btoa),
 * so the challenge is made here and the verifier put where processCode reads it.
 */
function s256Client(options: ConstructorParameters<typeof MedplumClient>[0] = {}): {
  medplum: MedplumClient;
  pkce: { codeChallenge: string; codeChallengeMethod: 'S256' };
} {
  const storage = new ClientStorage(new MemoryStorage());
  const verifier = randomBytes(32).toString('hex');
  storage.setString('codeVerifier', verifier);
  const codeChallenge = createHash('sha256').update(verifier).digest('base64url');
  return { medplum: client({ ...options, storage }), pkce: { codeChallenge, codeChallengeMethod: 'S256' } };
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

interface InvitedUser {
  email: string;
  password: string;
  membership: ProjectMembership;
}

/** A new Practitioner user of the first project (not admin), invited by the admin with a password. */
async function inviteUser(firstName = 'Ada'): Promise<InvitedUser> {
  const email = `${unique(firstName.toLowerCase())}@example.org`;
  const membership = (await t.medplum.invite(t.server.projectId, {
    resourceType: 'Practitioner',
    firstName,
    lastName: 'Lovelace',
    email,
    password: PASSWORD,
  })) as ProjectMembership;
  return { email, password: PASSWORD, membership };
}

/** A ClientApplication (with secret and membership) made through the admin API. */
async function createClient(body: Record<string, unknown> = {}): Promise<ClientApplication & { id: string; secret: string }> {
  return t.medplum.post(`admin/projects/${t.server.projectId}/client`, { name: unique('client'), ...body });
}

describe('password sign-in: startLogin → processCode → session', () => {
  test('the admin signs in to the first project and gets its Practitioner profile, project and membership', async () => {
    const medplum = client();
    const response = await medplum.startLogin({ email: TEST_ADMIN.email, password: TEST_ADMIN.password, projectId: t.server.projectId });
    expect(response.login).toMatch(/^[0-9a-f-]{36}$/);
    expect(response.code).toMatch(/^[0-9a-f]{32}$/);
    expect(response.memberships).toBeUndefined();

    const profile = await medplum.processCode(response.code as string);
    expect(profile.resourceType).toBe('Practitioner');
    expect(medplum.getProfile()).toEqual(profile);
    expect((profile as Practitioner).name?.[0]).toMatchObject({ given: ['Admin'], family: 'ermis' });

    expect(medplum.getProject()).toMatchObject({ resourceType: 'Project', id: t.server.projectId });
    expect(medplum.getProject()?.superAdmin).toBeFalsy();
    const membership = medplum.getProjectMembership();
    expect(membership).toMatchObject({
      resourceType: 'ProjectMembership',
      profile: { reference: `Practitioner/${profile.id}` },
      admin: true,
    });
    expect(membership?.user?.reference).toMatch(/^User\/[0-9a-f-]{36}$/);
    expect(medplum.isProjectAdmin()).toBe(true);
    expect(medplum.isSuperAdmin()).toBe(false);

    // No AccessPolicy on the membership: everything in the project, plus the admin entries.
    const policy = medplum.getAccessPolicy() as AccessPolicy;
    expect(policy.resourceType).toBe('AccessPolicy');
    const types = policy.resource?.map((r) => r.resourceType) ?? [];
    expect(types).toContain('*');
    expect(types).toEqual(expect.arrayContaining(['ProjectMembership', 'ClientApplication', 'AccessPolicy']));

    // The token is the one the client uses, and it works for FHIR.
    const token = medplum.getAccessToken() as string;
    expect(parseJWTPayload(token).profile).toBe(`Practitioner/${profile.id}`);
    const practitioner = await medplum.readResource('Practitioner', profile.id as string);
    expect(practitioner.id).toBe(profile.id);
    expect(medplum.getActiveLogin()).toMatchObject({
      accessToken: token,
      project: { reference: `Project/${t.server.projectId}` },
      profile: { reference: `Practitioner/${profile.id}` },
    });
  });

  test('GET auth/me has the SessionDetails shape: user, project, membership, profile, config with menu, accessPolicy, security', async () => {
    const medplum = await t.server.signIn(TEST_ADMIN.email, TEST_ADMIN.password, t.server.projectId);
    const me = await medplum.get('auth/me');
    expect(Object.keys(me).sort()).toEqual(['accessPolicy', 'config', 'membership', 'profile', 'project', 'security', 'user']);

    expect(me.user).toMatchObject({ resourceType: 'User', email: TEST_ADMIN.email });
    expect(me.user.id).toMatch(/^[0-9a-f-]{36}$/);
    // Only what a client needs of the User (never a password hash or anything else).
    expect(Object.keys(me.user).every((k) => ['resourceType', 'id', 'email', 'identifier'].includes(k))).toBe(true);

    expect(me.project).toMatchObject({ resourceType: 'Project', id: t.server.projectId });
    expect(typeof me.project.name).toBe('string');
    expect(Object.keys(me.project).every((k) => ['resourceType', 'id', 'name', 'description', 'strictMode', 'superAdmin'].includes(k))).toBe(true);

    expect(me.membership).toMatchObject({ resourceType: 'ProjectMembership', admin: true, user: { reference: `User/${me.user.id}` } });
    expect(Object.keys(me.membership).every((k) => ['resourceType', 'id', 'identifier', 'user', 'profile', 'admin'].includes(k))).toBe(true);
    expect(me.membership.profile.reference).toBe(`Practitioner/${me.profile.id}`);

    // The full profile resource, as stored.
    expect(me.profile.resourceType).toBe('Practitioner');
    expect(me.profile.meta?.versionId).toBeTruthy();
    expect(me.profile).toEqual(await medplum.readResource('Practitioner', me.profile.id));

    // Default configuration: Favorites for everyone, Admin for admins.
    expect(me.config.resourceType).toBe('UserConfiguration');
    const menuTitles = (me.config.menu as { title: string; link: { name: string; target: string }[] }[]).map((m) => m.title);
    expect(menuTitles).toEqual(expect.arrayContaining(['Favorites', 'Admin']));
    const favorites = me.config.menu.find((m: { title: string }) => m.title === 'Favorites');
    expect(favorites.link.map((l: { target: string }) => l.target)).toContain('/Patient');

    expect(me.accessPolicy.resourceType).toBe('AccessPolicy');
    expect(Array.isArray(me.accessPolicy.resource)).toBe(true);

    expect(me.security.mfaEnrolled).toBe(false);
    expect(Array.isArray(me.security.memberships)).toBe(true);
    const sessions = me.security.sessions as { id: string; lastUpdated: string; authMethod: string }[];
    const current = sessions.find((s) => s.id === loginIdOf(medplum.getAccessToken()));
    expect(current).toBeDefined();
    expect(current?.authMethod).toBe('password');
    expect(Number.isNaN(Date.parse(current?.lastUpdated as string))).toBe(false);
  });

  test('a non-admin user: isProjectAdmin false, no Admin menu, no admin entries in the access policy', async () => {
    const user = await inviteUser('Grace');
    const medplum = client();
    const response = await medplum.startLogin({ email: user.email, password: user.password });
    // One membership: the code comes at once, even without projectId.
    expect(response.code).toBeTruthy();
    const profile = await medplum.processCode(response.code as string);
    expect(`Practitioner/${profile.id}`).toBe(user.membership.profile?.reference);
    expect(medplum.getProjectMembership()?.id).toBe(user.membership.id);
    expect(medplum.isProjectAdmin()).toBe(false);
    expect(medplum.isSuperAdmin()).toBe(false);
    const types = medplum.getAccessPolicy()?.resource?.map((r) => r.resourceType) ?? [];
    expect(types).toContain('*');
    expect(types).not.toContain('ClientApplication');
    expect(types).not.toContain('ProjectMembership');
    const menu = medplum.getUserConfiguration()?.menu?.map((m) => m.title);
    expect(menu).toContain('Favorites');
    expect(menu).not.toContain('Admin');
    // The user's email in the token request scope 'openid' is not leaked into the access token.
    expect(parseJWTPayload(medplum.getAccessToken() as string).email).toBeUndefined();
  });
});

describe('several memberships: choose a profile with auth/profile', () => {
  let memberships: NonNullable<LoginAuthenticationResponse['memberships']>;
  let superAdminProjectId: string;

  beforeAll(async () => {
    const response = await client().startLogin({ email: TEST_ADMIN.email, password: TEST_ADMIN.password });
    memberships = response.memberships ?? [];
    superAdminProjectId = memberships.map((m) => m.project?.reference?.replace('Project/', '') as string).find((p) => p !== t.server.projectId) as string;
  });

  test('startLogin without projectId answers the memberships (Super Admin project and first project), no code', async () => {
    const response = await client().startLogin({ email: TEST_ADMIN.email, password: TEST_ADMIN.password });
    expect(response.code).toBeUndefined();
    expect(response.login).toMatch(/^[0-9a-f-]{36}$/);
    expect(response.memberships).toHaveLength(2);
    for (const m of response.memberships ?? []) {
      expect(m.id).toMatch(/^[0-9a-f-]{36}$/);
      expect(m.project?.reference).toMatch(/^Project\/[0-9a-f-]{36}$/);
      expect(m.profile?.reference).toMatch(/^Practitioner\/[0-9a-f-]{36}$/);
    }
    const projects = (response.memberships ?? []).map((m) => m.project?.reference);
    expect(projects).toContain(`Project/${t.server.projectId}`);
    expect(superAdminProjectId).toBeTruthy();
    expect(superAdminProjectId).not.toBe(t.server.projectId);
  });

  test('choosing the Super Admin membership gives a super admin session', async () => {
    const medplum = client();
    const response = await medplum.startLogin({ email: TEST_ADMIN.email, password: TEST_ADMIN.password });
    const chosen = response.memberships?.find((m) => m.project?.reference === `Project/${superAdminProjectId}`);
    expect(chosen).toBeDefined();
    const profileResponse = await medplum.post('auth/profile', { login: response.login, profile: chosen?.id });
    expect(profileResponse.login).toBe(response.login);
    expect(profileResponse.code).toMatch(/^[0-9a-f]{32}$/);
    const profile = await medplum.processCode(profileResponse.code);
    expect(`Practitioner/${profile.id}`).toBe(chosen?.profile?.reference);
    expect(medplum.isSuperAdmin()).toBe(true);
    expect(medplum.isProjectAdmin()).toBe(true);
    expect(medplum.getProject()).toMatchObject({ id: superAdminProjectId, superAdmin: true });
    expect(medplum.getProjectMembership()?.id).toBe(chosen?.id);
    expect(medplum.getAccessPolicy()).toBeDefined();

    // A super admin reads across projects: a Patient the first project's admin just created.
    const patient = await t.medplum.createResource<Patient>({ resourceType: 'Patient', name: [{ family: unique('cross') }] });
    const read = await medplum.readResource('Patient', patient.id as string);
    expect(read.id).toBe(patient.id);
  });

  test('choosing the first-project membership gives a project admin session that is not super admin', async () => {
    const medplum = client();
    const response = await medplum.startLogin({ email: TEST_ADMIN.email, password: TEST_ADMIN.password });
    const chosen = response.memberships?.find((m) => m.project?.reference === `Project/${t.server.projectId}`);
    const { code } = await medplum.post('auth/profile', { login: response.login, profile: chosen?.id });
    await medplum.processCode(code);
    expect(medplum.isSuperAdmin()).toBe(false);
    expect(medplum.isProjectAdmin()).toBe(true);
    expect(medplum.getProject()?.id).toBe(t.server.projectId);
  });

  test('auth/profile refuses a membership of another user, an unknown login, and a login already finished', async () => {
    const other = await inviteUser('Mallory');
    const medplum = client();
    const response = await medplum.startLogin({ email: TEST_ADMIN.email, password: TEST_ADMIN.password });

    const foreign = await outcomeError(medplum.post('auth/profile', { login: response.login, profile: other.membership.id }));
    expect(foreign.outcome.issue?.[0]).toMatchObject({ severity: 'error', details: { text: 'Profile not found' }, expression: ['profile'] });

    const unknownLogin = await outcomeError(medplum.post('auth/profile', { login: crypto.randomUUID(), profile: memberships[0].id }));
    expect(unknownLogin.outcome.issue?.[0].expression).toEqual(['login']);

    const missing = await outcomeError(medplum.post('auth/profile', { login: response.login }));
    expect(missing.outcome.issue?.[0]).toMatchObject({ details: { text: 'Missing profile' }, expression: ['profile'] });

    // Finish the sign-in; the same login cannot be used to choose again.
    const { code } = await medplum.post('auth/profile', { login: response.login, profile: memberships[0].id });
    await medplum.processCode(code);
    const again = await outcomeError(medplum.post('auth/profile', { login: response.login, profile: memberships[1].id }));
    expect(again.outcome.issue?.[0].expression).toEqual(['login']);
  });
});

describe('client credentials: startClientLogin', () => {
  test('a client created with the admin API signs in; its profile is the ClientApplication', async () => {
    const created = await createClient();
    expect(created.resourceType).toBe('ClientApplication');
    expect(created.secret).toMatch(/^[0-9a-f]{64}$/);

    const medplum = client();
    const profile = await medplum.startClientLogin(created.id, created.secret);
    expect(profile.resourceType).toBe('ClientApplication');
    expect(profile.id).toBe(created.id);
    expect(medplum.getProfile()?.id).toBe(created.id);
    expect(medplum.getProject()?.id).toBe(t.server.projectId);
    expect(medplum.getProjectMembership()?.profile?.reference).toBe(`ClientApplication/${created.id}`);
    expect(medplum.isProjectAdmin()).toBe(false);
    expect(medplum.isSuperAdmin()).toBe(false);
    const payload = parseJWTPayload(medplum.getAccessToken() as string);
    expect(payload.client_id).toBe(created.id);

    // /auth/me of a client: no user.
    const me = await medplum.get('auth/me');
    expect(me.user).toBeUndefined();
    expect(me.profile).toMatchObject({ resourceType: 'ClientApplication', id: created.id });
    expect(me.membership.profile.reference).toBe(`ClientApplication/${created.id}`);

    // And it can do FHIR work in its project.
    const patient = await medplum.createResource<Patient>({ resourceType: 'Patient', name: [{ family: unique('by-client') }] });
    expect(patient.meta?.author?.reference).toBe(`ClientApplication/${created.id}`);
    expect((await medplum.readResource('Patient', patient.id as string)).id).toBe(patient.id);
  });

  test('a wrong secret and an unknown client id are refused with the same error', async () => {
    const created = await createClient();
    const wrong = await outcomeError(client().startClientLogin(created.id, 'not-the-secret'));
    expect(wrong.message).toBe('Failed to fetch tokens: Invalid client credentials');
    const unknown = await outcomeError(client().startClientLogin(crypto.randomUUID(), 'not-the-secret'));
    expect(unknown.message).toBe(wrong.message);
  });
});

describe('sign-in through a client: PKCE methods', () => {
  test("MedplumClient's own PKCE in Node is 'plain': refused for a client that requires S256, accepted for a pkceOptional client", async () => {
    const strict = await createClient();
    const medplum = client({ clientId: strict.id });
    const response = await medplum.startLogin({ email: TEST_ADMIN.email, password: TEST_ADMIN.password, projectId: t.server.projectId });
    expect(response.code).toBeTruthy();
    const refused = await outcomeError(medplum.processCode(response.code as string));
    expect(refused.message).toBe('Failed to fetch tokens: code_challenge_method must be S256');
    expect(medplum.getAccessToken()).toBeUndefined();

    const lenient = await createClient({ pkceOptional: true });
    const other = client({ clientId: lenient.id });
    const lenientResponse = await other.startLogin({ email: TEST_ADMIN.email, password: TEST_ADMIN.password, projectId: t.server.projectId });
    const profile = await other.processCode(lenientResponse.code as string);
    expect(profile.resourceType).toBe('Practitioner');
    expect(parseJWTPayload(other.getAccessToken() as string).client_id).toBe(lenient.id);
  });

  test('S256 through a client: the token names the client; the code cannot be redeemed by another client or without the verifier', async () => {
    const created = await createClient();
    const { medplum, pkce } = s256Client({ clientId: created.id });
    const response = await medplum.startLogin({ email: TEST_ADMIN.email, password: TEST_ADMIN.password, projectId: t.server.projectId, ...pkce });

    // Another client, or the right client without the verifier, presents the code: refused, and the code stays usable.
    const otherClient = await createClient();
    const stolen = await outcomeError(client({ clientId: otherClient.id }).processCode(response.code as string));
    expect(stolen.message).toBe('Failed to fetch tokens: The code was issued to another client');
    const noVerifier = await outcomeError(client({ clientId: created.id }).processCode(response.code as string));
    expect(noVerifier.message).toBe('Failed to fetch tokens: Missing code_verifier');

    const profile = await medplum.processCode(response.code as string);
    expect(profile.resourceType).toBe('Practitioner');
    const payload = parseJWTPayload(medplum.getAccessToken() as string);
    expect(payload.client_id).toBe(created.id);
    // No offline_access asked: no refresh token.
    expect(medplum.getActiveLogin()?.refreshToken).toBeUndefined();
  });
});

describe('token renewal after expiry', () => {
  test('refresh_token grant: a user signed in through a 2s client with offline_access keeps working after expiry', async () => {
    const created = await createClient({ accessTokenLifetime: '2s' });
    // A browser app's MedplumClient: it knows its clientId, never its secret (PKCE instead).
    const { medplum, pkce } = s256Client({ clientId: created.id, refreshGracePeriod: 0 });
    const response = await medplum.startLogin({
      email: TEST_ADMIN.email,
      password: TEST_ADMIN.password,
      projectId: t.server.projectId,
      scope: 'openid offline_access',
      ...pkce,
    });
    expect(response.code).toBeTruthy();
    await medplum.processCode(response.code as string, { clientId: created.id });
    const firstToken = medplum.getAccessToken() as string;
    const firstRefresh = medplum.getActiveLogin()?.refreshToken;
    expect(firstRefresh).toBeTruthy();
    const payload = parseJWTPayload(firstToken);
    expect(payload.client_id).toBe(created.id);
    expect((payload.exp as number) - (payload.iat as number)).toBe(2);

    const patient = await medplum.createResource<Patient>({ resourceType: 'Patient', name: [{ family: unique('refresh') }] });
    await sleep(3000);
    // The expired token is refused by the server itself...
    expect((await raw('auth/me', { token: firstToken })).status).toBe(401);
    // ...and the client renews it without the caller noticing.
    const read = await medplum.readResource('Patient', patient.id as string);
    expect(read.id).toBe(patient.id);
    const secondToken = medplum.getAccessToken() as string;
    expect(secondToken).not.toBe(firstToken);
    expect(loginIdOf(secondToken)).toBe(loginIdOf(firstToken));
    expect(medplum.getActiveLogin()?.refreshToken).not.toBe(firstRefresh);
    expect(medplum.getProfile()?.resourceType).toBe('Practitioner');
  });

  test('refresh_token grant with the client authenticating (Basic): renewal, rotation, and reuse of the old refresh token ends the login', async () => {
    const created = await createClient({ accessTokenLifetime: '2s' });
    const { medplum, pkce } = s256Client({ clientId: created.id, refreshGracePeriod: 0 });
    medplum.setBasicAuth(created.id, created.secret);
    const response = await medplum.startLogin({
      email: TEST_ADMIN.email,
      password: TEST_ADMIN.password,
      projectId: t.server.projectId,
      scope: 'openid offline_access',
      ...pkce,
    });
    await medplum.processCode(response.code as string);
    const firstToken = medplum.getAccessToken() as string;
    const firstRefresh = medplum.getActiveLogin()?.refreshToken as string;
    expect(firstRefresh).toBeTruthy();

    await sleep(3000);
    const found = await medplum.searchResources('Practitioner', { _count: '1' });
    expect(found.length).toBe(1);
    const secondToken = medplum.getAccessToken() as string;
    expect(secondToken).not.toBe(firstToken);
    expect(medplum.getActiveLogin()?.refreshToken).not.toBe(firstRefresh);
    expect((await raw('auth/me', { token: secondToken })).status).toBe(200);

    // Someone replays the first (rotated) refresh token: refused, and the whole login is revoked.
    const replay = await raw('oauth2/token', {
      method: 'POST',
      headers: {
        'Content-Type': 'application/x-www-form-urlencoded',
        Authorization: `Basic ${Buffer.from(`${created.id}:${created.secret}`).toString('base64')}`,
      },
      body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: firstRefresh }).toString(),
    });
    expect(replay.status).toBe(400);
    expect(((await replay.json()) as { error: string }).error).toBe('invalid_grant');
    expect((await raw('auth/me', { token: secondToken })).status).toBe(401);
  });

  test('client_credentials: startClientLogin logs in again with the id and secret once the token expired', async () => {
    const created = await createClient({ accessTokenLifetime: '2s' });
    const medplum = client({ refreshGracePeriod: 0 });
    await medplum.startClientLogin(created.id, created.secret);
    const firstToken = medplum.getAccessToken() as string;
    expect(medplum.getActiveLogin()?.refreshToken).toBeUndefined();
    const patient = await medplum.createResource<Patient>({ resourceType: 'Patient', name: [{ family: unique('cc') }] });

    await sleep(3000);
    expect((await raw('auth/me', { token: firstToken })).status).toBe(401);
    const read = await medplum.readResource('Patient', patient.id as string);
    expect(read.id).toBe(patient.id);
    const secondToken = medplum.getAccessToken() as string;
    expect(secondToken).not.toBe(firstToken);
    // A new client login, not a refresh of the old one.
    expect(loginIdOf(secondToken)).not.toBe(loginIdOf(firstToken));
    expect(medplum.getProfile()).toMatchObject({ resourceType: 'ClientApplication', id: created.id });
  });
});

describe('FHIR helpers of MedplumClient', () => {
  test('executeBatch: a create, a read and invalid entries each get their own response', async () => {
    const existing = await t.medplum.createResource<Patient>({ resourceType: 'Patient', name: [{ family: unique('batch-read') }] });
    const family = unique('batch-create');
    const result = await t.medplum.executeBatch({
      resourceType: 'Bundle',
      type: 'batch',
      entry: [
        { request: { method: 'POST', url: 'Patient' }, resource: { resourceType: 'Patient', name: [{ family }] } },
        { request: { method: 'GET', url: `Patient/${existing.id}` } },
        { request: { method: 'POST', url: 'Patient' }, resource: { resourceType: 'Patient', gender: 'not-a-gender' } as unknown as Patient },
        { request: { method: 'GET', url: `Patient/${crypto.randomUUID()}` } },
      ],
    });
    expect(result.resourceType).toBe('Bundle');
    expect(result.type).toBe('batch-response');
    expect(result.entry).toHaveLength(4);
    const [created, read, invalid, missing] = result.entry ?? [];

    expect(created.response?.status).toMatch(/^201/);
    expect(created.resource).toMatchObject({ resourceType: 'Patient', name: [{ family }] });
    expect(created.response?.location).toContain(`Patient/${created.resource?.id}`);

    expect(read.response?.status).toMatch(/^200/);
    expect(read.resource?.id).toBe(existing.id);

    expect(invalid.response?.status).toMatch(/^400/);
    expect((invalid.response?.outcome as OperationOutcome).resourceType).toBe('OperationOutcome');
    expect((invalid.response?.outcome as OperationOutcome).issue?.[0].severity).toBe('error');
    expect(invalid.resource).toBeUndefined();

    expect(missing.response?.status).toMatch(/^404/);
    expect((missing.response?.outcome as OperationOutcome).resourceType).toBe('OperationOutcome');

    // The create really happened, once.
    const found = await t.medplum.searchResources('Patient', { family });
    expect(found.map((p) => p.id)).toEqual([created.resource?.id]);
  });

  test('requestSchema loads Patient through GraphQL in a fresh @medplum/core; getElementDefinition and isDataTypeLoaded then work', async () => {
    // The test process shares @medplum/core with the in-process server, which has every type
    // loaded already (requestSchema would not even ask): a separate Node process starts empty.
    const script = `
      import { MedplumClient, getElementDefinition, getSearchParameter, isDataTypeLoaded } from '@medplum/core';
      let graphqlRequests = 0;
      const medplum = new MedplumClient({
        baseUrl: process.env.ERMIS_BASE_URL,
        fetch: (url, init) => { if (String(url).includes('$graphql')) graphqlRequests++; return fetch(url, init); },
      });
      medplum.setAccessToken(process.env.ERMIS_TOKEN);
      const before = isDataTypeLoaded('Patient');
      await medplum.requestSchema('Patient');
      const name = getElementDefinition('Patient', 'name');
      const link = getElementDefinition('Patient', 'link');
      const contactName = getElementDefinition('PatientContact', 'name');
      const family = getSearchParameter('Patient', 'family');
      const birthdate = getSearchParameter('Patient', 'birthdate');
      await medplum.requestSchema('Patient');
      console.log(JSON.stringify({
        before,
        after: isDataTypeLoaded('Patient'),
        graphqlRequests,
        name: name && { path: name.path, min: name.min, max: name.max === Infinity ? '*' : name.max, type: name.type.map((t) => t.code) },
        link: link && { max: link.max === Infinity ? '*' : link.max },
        contactName: contactName && { type: contactName.type.map((t) => t.code) },
        family: family && { type: family.type, expression: family.expression },
        birthdate: birthdate && { type: birthdate.type },
      }));
    `;
    const nodeBin = resolve(process.cwd(), 'node_modules/.bin/node');
    const stdout = await new Promise<string>((resolvePromise, reject) => {
      execFile(
        nodeBin,
        ['--input-type=module', '-e', script],
        { cwd: process.cwd(), timeout: 60_000, env: { ...process.env, ERMIS_BASE_URL: t.server.baseUrl, ERMIS_TOKEN: t.server.admin.accessToken } },
        (err, out, errOut) => (err ? reject(new Error(`${err.message}\n${errOut}`)) : resolvePromise(out))
      );
    });
    const result = JSON.parse(stdout.trim().split('\n').pop() as string);
    expect(result.before).toBe(false);
    expect(result.after).toBe(true);
    // One GraphQL request; the second requestSchema is answered from what was loaded.
    expect(result.graphqlRequests).toBe(1);
    expect(result.name).toEqual({ path: 'Patient.name', min: 0, max: '*', type: ['HumanName'] });
    expect(result.link).toEqual({ max: '*' });
    expect(result.contactName).toEqual({ type: ['HumanName'] });
    expect(result.family.type).toBe('string');
    expect(result.family.expression.split(' | ')).toContain('Patient.name.family');
    expect(result.birthdate).toEqual({ type: 'date' });
  });

  test('valueSetExpand of administrative-gender with filter "fe" answers female only', async () => {
    const expansion = await t.medplum.valueSetExpand({ url: 'http://hl7.org/fhir/ValueSet/administrative-gender', filter: 'fe' });
    expect(expansion.resourceType).toBe('ValueSet');
    expect(expansion.expansion?.contains).toEqual([
      expect.objectContaining({ system: 'http://hl7.org/fhir/administrative-gender', code: 'female', display: 'Female' }),
    ]);
    const all = await t.medplum.valueSetExpand({ url: 'http://hl7.org/fhir/ValueSet/administrative-gender' });
    expect(all.expansion?.contains?.map((c) => c.code).sort()).toEqual(['female', 'male', 'other', 'unknown']);
    const unknownValueSet = await outcomeError(t.medplum.valueSetExpand({ url: 'http://example.org/ValueSet/does-not-exist' }));
    expect(unknownValueSet.outcome.issue?.[0].severity).toBe('error');
  });

  test('searchResources, searchOne and search with _count / _sort', async () => {
    const family = unique('search');
    for (const given of ['Charlie', 'Alice', 'Bob']) {
      await t.medplum.createResource<Patient>({ resourceType: 'Patient', name: [{ family, given: [given] }] });
    }
    const sorted = await t.medplum.searchResources('Patient', { family, _sort: 'given' });
    expect(sorted.map((p) => p.name?.[0].given?.[0])).toEqual(['Alice', 'Bob', 'Charlie']);
    expect(sorted.bundle.type).toBe('searchset');

    const page = await t.medplum.searchResources('Patient', { family, _count: '2', _sort: '-given' });
    expect(page.map((p) => p.name?.[0].given?.[0])).toEqual(['Charlie', 'Bob']);
    expect(page.bundle.link?.find((l) => l.relation === 'next')?.url).toBeTruthy();

    const one = await t.medplum.searchOne('Patient', { family, given: 'Bob' });
    expect(one?.name?.[0].given).toEqual(['Bob']);
    const none = await t.medplum.searchResources('Patient', { family: unique('nobody') });
    expect(none).toHaveLength(0);

    const badParam = await outcomeError(t.medplum.searchResources('Patient', { birthdate: 'not-a-date' }));
    expect(badParam.outcome.issue?.[0].severity).toBe('error');
  });

  test('createResourceIfNoneExist creates once, then answers the existing resource', async () => {
    const value = unique('ine');
    const identifier = [{ system: 'urn:ermis:test', value }];
    const first = await t.medplum.createResourceIfNoneExist<Patient>(
      { resourceType: 'Patient', identifier, name: [{ family: 'First' }] },
      `identifier=urn:ermis:test|${value}`
    );
    const second = await t.medplum.createResourceIfNoneExist<Patient>(
      { resourceType: 'Patient', identifier, name: [{ family: 'Second' }] },
      `identifier=urn:ermis:test|${value}`
    );
    expect(second.id).toBe(first.id);
    expect(second.name?.[0].family).toBe('First');
    expect(second.meta?.versionId).toBe(first.meta?.versionId);
    const all = await t.medplum.searchResources('Patient', { identifier: `urn:ermis:test|${value}` });
    expect(all).toHaveLength(1);
  });

  test('upsertResource creates, then updates the match; readHistory lists both versions, newest first', async () => {
    const value = unique('upsert');
    const query = { identifier: `urn:ermis:test|${value}` };
    const identifier = [{ system: 'urn:ermis:test', value }];
    const created = await t.medplum.upsertResource<Patient>({ resourceType: 'Patient', identifier, gender: 'male' }, query);
    expect(created.id).toBeTruthy();
    const updated = await t.medplum.upsertResource<Patient>({ resourceType: 'Patient', identifier, gender: 'female' }, query);
    expect(updated.id).toBe(created.id);
    expect(updated.gender).toBe('female');
    expect(updated.meta?.versionId).not.toBe(created.meta?.versionId);

    const history = await t.medplum.readHistory('Patient', created.id as string);
    expect(history.type).toBe('history');
    expect(history.entry?.map((e) => e.resource?.meta?.versionId)).toEqual([updated.meta?.versionId, created.meta?.versionId]);
    expect(history.entry?.map((e) => (e.resource as Patient | undefined)?.gender)).toEqual(['female', 'male']);

    // Two resources match: the upsert must not pick one.
    const twice = unique('upsert-dup');
    for (let i = 0; i < 2; i++) {
      await t.medplum.createResource<Patient>({ resourceType: 'Patient', identifier: [{ system: 'urn:ermis:test', value: twice }] });
    }
    const ambiguous = await outcomeError(
      t.medplum.upsertResource<Patient>({ resourceType: 'Patient', gender: 'other' }, { identifier: `urn:ermis:test|${twice}` })
    );
    expect(ambiguous.outcome.issue?.[0].severity).toBe('error');
    const still = await t.medplum.searchResources('Patient', { identifier: `urn:ermis:test|${twice}` });
    expect(still.map((p) => p.gender)).toEqual([undefined, undefined]);
  });

  test('createAttachment and createBinary store bytes that download returns unchanged', async () => {
    const text = `hello ermis ${unique('att')} — καλημέρα`;
    const attachment = await t.medplum.createAttachment({ data: text, contentType: 'text/plain', filename: 'hello.txt' });
    expect(attachment.contentType).toBe('text/plain');
    expect(attachment.title).toBe('hello.txt');
    expect(typeof attachment.url).toBe('string');
    expect(attachment.url?.length).toBeGreaterThan(0);
    const blob = await t.medplum.download(attachment.url as string);
    expect(await blob.text()).toBe(text);

    const bytes = new Uint8Array(256).map((_, i) => 255 - i);
    const binary = (await t.medplum.createBinary({ data: bytes, contentType: 'application/octet-stream' })) as Binary;
    expect(binary.resourceType).toBe('Binary');
    expect(binary.id).toMatch(/^[0-9a-f-]{36}$/);
    expect(binary.contentType).toBe('application/octet-stream');
    expect(binary.url).toBeTruthy();
    const downloaded = new Uint8Array(await (await t.medplum.download(`Binary/${binary.id}`)).arrayBuffer());
    expect(Array.from(downloaded)).toEqual(Array.from(bytes));
    const viaUrl = new Uint8Array(await (await t.medplum.download(binary.url as string)).arrayBuffer());
    expect(Array.from(viaUrl)).toEqual(Array.from(bytes));
  });

  test('graphql: list and single-resource queries; a malformed query is an error', async () => {
    const family = unique('gql');
    const patient = await t.medplum.createResource<Patient>({ resourceType: 'Patient', name: [{ family, given: ['Zoe'] }], birthDate: '1991-07-04' });
    const list = await t.medplum.graphql(`{ PatientList(family: "${family}") { id name { family given } } }`);
    expect(list.data.PatientList).toEqual([{ id: patient.id, name: [{ family, given: ['Zoe'] }] }]);
    const single = await t.medplum.graphql(`query Get($id: ID!) { Patient(id: $id) { id birthDate } }`, 'Get', { id: patient.id });
    expect(single.data.Patient).toEqual({ id: patient.id, birthDate: '1991-07-04' });

    const malformed = await outcomeError(t.medplum.graphql('{ PatientList(family: '));
    expect(malformed.outcome.issue?.[0]).toMatchObject({ severity: 'error', code: 'invalid' });
    expect(malformed.message).toMatch(/syntax/i);
    const unknownField = await outcomeError(t.medplum.graphql('{ NoSuchTypeList { id } }'));
    expect(unknownField.message).toContain('NoSuchTypeList');
  });
});

describe('invite and sign-out', () => {
  test('invite creates a user who can then sign in; signOut makes the server refuse the old token', async () => {
    const email = `${unique('invitee')}@example.org`;
    const membership = (await t.medplum.invite(t.server.projectId, {
      resourceType: 'Practitioner',
      firstName: 'Katherine',
      lastName: 'Johnson',
      email,
      password: PASSWORD,
    })) as ProjectMembership;
    expect(membership.resourceType).toBe('ProjectMembership');
    expect(membership.project?.reference).toBe(`Project/${t.server.projectId}`);
    expect(membership.profile?.reference).toMatch(/^Practitioner\/[0-9a-f-]{36}$/);
    expect(membership.user?.reference).toMatch(/^User\/[0-9a-f-]{36}$/);
    expect(membership.admin).toBeFalsy();

    const medplum = client();
    const response = await medplum.startLogin({ email, password: PASSWORD });
    const profile = (await medplum.processCode(response.code as string)) as Practitioner;
    expect(`Practitioner/${profile.id}`).toBe(membership.profile?.reference);
    expect(profile.name?.[0]).toMatchObject({ given: ['Katherine'], family: 'Johnson' });
    expect(medplum.getProjectMembership()?.id).toBe(membership.id);

    const token = medplum.getAccessToken() as string;
    expect((await raw('auth/me', { token })).status).toBe(200);
    await medplum.signOut();
    expect(medplum.getAccessToken()).toBeUndefined();
    expect(medplum.getProfile()).toBeUndefined();
    expect((await raw('auth/me', { token })).status).toBe(401);
    const fhir = await fetch(`${t.server.fhirUrl}Practitioner/${profile.id}`, { headers: { Authorization: `Bearer ${token}` } });
    expect(fhir.status).toBe(401);

    // Signing in again works: sign-out ended one login, not the account.
    const again = await t.server.signIn(email, PASSWORD);
    expect(again.getProfile()?.id).toBe(profile.id);
  });

  test('invite: the same user twice, a short password, a wrong resourceType, and a non-admin inviter are refused', async () => {
    const user = await inviteUser('Hedy');
    const twice = await outcomeError(
      t.medplum.invite(t.server.projectId, { resourceType: 'Practitioner', firstName: 'Hedy', lastName: 'Lamarr', email: user.email })
    );
    // an existing account is attached only by a super admin (nothing proves the email's owner otherwise)
    expect(twice.outcome.issue?.[0]).toMatchObject({
      details: { text: 'This email already has an account; a super admin must add it to the project' },
      expression: ['email'],
    });

    const short = await outcomeError(
      t.medplum.invite(t.server.projectId, {
        resourceType: 'Practitioner',
        firstName: 'Short',
        lastName: 'Password',
        email: `${unique('short')}@example.org`,
        password: 'abc',
      })
    );
    expect(short.outcome.issue?.[0].expression).toEqual(['password']);

    const wrongType = await outcomeError(
      t.medplum.invite(t.server.projectId, {
        resourceType: 'Organization' as 'Practitioner',
        firstName: 'Not',
        lastName: 'A Person',
        email: `${unique('org')}@example.org`,
      })
    );
    expect(wrongType.outcome.issue?.[0].expression).toEqual(['resourceType']);

    const nonAdmin = await t.server.signIn(user.email, user.password);
    const eveEmail = `${unique('eve')}@example.org`;
    const forbidden = await outcomeError(
      nonAdmin.invite(t.server.projectId, { resourceType: 'Practitioner', firstName: 'Eve', lastName: 'Intruder', email: eveEmail, password: PASSWORD })
    );
    expect(forbidden.outcome.issue?.[0].code).toBe('forbidden');
    // Nothing was created for any of the refused invitations.
    expect(await t.server.services.auth.directory.userByEmail(eveEmail)).toBeUndefined();
    const eve = await outcomeError(client().startLogin({ email: eveEmail, password: PASSWORD }));
    expect(eve.message).toBe('Email or password is invalid');
  });
});

describe('bad sign-in input', () => {
  let user: InvitedUser;
  beforeAll(async () => {
    user = await inviteUser('Barbara');
  });

  test('a wrong password is refused with a precise message, and no login is started', async () => {
    const medplum = client();
    const err = await outcomeError(medplum.startLogin({ email: user.email, password: 'definitely-wrong-password' }));
    expect(err.message).toBe('Email or password is invalid');
    expect(err.outcome.issue).toHaveLength(1);
    expect(err.outcome.issue?.[0]).toMatchObject({ severity: 'error', code: 'invalid', details: { text: 'Email or password is invalid' } });
    expect(medplum.getAccessToken()).toBeUndefined();
  });

  test('an unknown email gets exactly the same answer (no account enumeration)', async () => {
    const body = (email: string): string =>
      JSON.stringify({ email, password: 'definitely-wrong-password', codeChallenge: 'x'.repeat(43), codeChallengeMethod: 'plain' });
    const known = await raw('auth/login', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: body(user.email) });
    const unknown = await raw('auth/login', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: body(`${unique('nobody')}@example.org`),
    });
    expect(unknown.status).toBe(400);
    expect(known.status).toBe(unknown.status);
    expect(await unknown.json()).toEqual(await known.json());

    const err = await outcomeError(client().startLogin({ email: `${unique('nobody')}@example.org`, password: 'definitely-wrong-password' }));
    expect(err.message).toBe('Email or password is invalid');
  });

  test('a missing password is a 400 naming the field', async () => {
    const err = await outcomeError(client().startLogin({ email: user.email } as { email: string; password: string }));
    expect(err.outcome.issue?.[0]).toMatchObject({ severity: 'error', details: { text: 'Missing password' }, expression: ['password'] });
    const res = await raw('auth/login', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ email: user.email }) });
    expect(res.status).toBe(400);
    const outcome = (await res.json()) as OperationOutcome;
    expect(outcome.issue?.[0].expression).toEqual(['password']);

    const missingEmail = await outcomeError(client().startLogin({ password: PASSWORD } as { email: string; password: string }));
    expect(missingEmail.outcome.issue?.[0].expression).toEqual(['email']);
    const notJson = await raw('auth/login', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '[1,2]' });
    expect(notJson.status).toBe(400);
  });

  test('sign-in for a project the user is not a member of gives no code and no memberships', async () => {
    const adminLogin = await client().startLogin({ email: TEST_ADMIN.email, password: TEST_ADMIN.password });
    const otherProject = (adminLogin.memberships ?? [])
      .map((m) => (m.project as Reference).reference?.replace('Project/', ''))
      .find((p) => p !== t.server.projectId) as string;
    expect(otherProject).toBeTruthy();

    const medplum = client();
    const response = await medplum.startLogin({ email: user.email, password: user.password, projectId: otherProject });
    expect(response.code).toBeUndefined();
    expect(response.memberships ?? []).toHaveLength(0);

    const nowhere = await medplum.startLogin({ email: user.email, password: user.password, projectId: crypto.randomUUID() });
    expect(nowhere.code).toBeUndefined();
    expect(nowhere.memberships ?? []).toHaveLength(0);

    // Nor can the pending login be turned into a session for the other project's membership.
    const adminSuperMembership = (adminLogin.memberships ?? []).find((m) => m.project?.reference === `Project/${otherProject}`);
    const foreign = await outcomeError(medplum.post('auth/profile', { login: response.login, profile: adminSuperMembership?.id }));
    expect(foreign.outcome.issue?.[0].expression).toEqual(['profile']);
    expect(medplum.getAccessToken()).toBeUndefined();
  });

  test('processCode with a made-up or already used code fails', async () => {
    const made = await outcomeError(client().processCode('0'.repeat(32)));
    expect(made.message).toMatch(/^Failed to fetch tokens: /);

    const medplum = client();
    const response = await medplum.startLogin({ email: user.email, password: user.password });
    await medplum.processCode(response.code as string);
    const token = medplum.getAccessToken() as string;
    expect((await raw('auth/me', { token })).status).toBe(200);
    const reused = await outcomeError(client().processCode(response.code as string));
    expect(reused.message).toMatch(/^Failed to fetch tokens: /);
    // A replayed code revokes what its first redemption issued (RFC 6749 §4.1.2).
    expect((await raw('auth/me', { token })).status).toBe(401);
  });
});
