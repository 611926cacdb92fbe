import type { AccessPolicy, ProjectMembership, Resource } from '@medplum/fhirtypes';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startTestServer, unique, useTestServer } from './harness.ts';
import type { TestServer } from './harness.ts';

/*
 * Regression tests for the findings of the security review (commit "auth: fixes from the security
 * review"), one describe per finding, over real HTTP against a test server. Each test asserts what
 * the fix changed, so that reverting the fix makes it fail.
 */

const t = useTestServer({ REGISTRATION_ENABLED: 'true' });

const PASSWORD = 'security-regression-pw-1';
// Response bodies are checked field by field; a loose type keeps the assertions readable.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Json = any;

interface Reply {
  status: number;
  body: Json;
  text: string;
  headers: Headers;
}

// ------------------------------------------------------------------------------------------ helpers

/** `path` below /fhir/R4/ unless it starts with `/` (then below the server root). Bodies are JSON unless a string. */
async function call(
  token: string | undefined,
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
  server: TestServer = t.server
): Promise<Reply> {
  const url = path.startsWith('/') ? server.baseUrl + path.slice(1) : server.fhirUrl + path;
  const h: Record<string, string> = { ...headers };
  if (token !== undefined && h.Authorization === undefined) {
    h.Authorization = `Bearer ${token}`;
  }
  let payload: string | undefined;
  if (body !== undefined) {
    payload = typeof body === 'string' ? body : JSON.stringify(body);
    h['Content-Type'] ??= path.startsWith('/') ? 'application/json' : 'application/fhir+json';
  }
  const res = await fetch(url, { method, headers: h, body: payload, redirect: 'manual' });
  const text = await res.text();
  let parsed: Json = text;
  try {
    parsed = text ? JSON.parse(text) : undefined;
  } catch {
    // not JSON
  }
  return { status: res.status, body: parsed, text, headers: res.headers };
}

/** A form-encoded POST (the /oauth2 endpoints). */
async function form(path: string, fields: Record<string, string>, headers: Record<string, string> = {}, server: TestServer = t.server): Promise<Reply> {
  return call(undefined, 'POST', path, new URLSearchParams(fields).toString(), { 'Content-Type': 'application/x-www-form-urlencoded', ...headers }, server);
}

function basic(id: string, secret: string): Record<string, string> {
  return { Authorization: `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}` };
}

function pkce(): { verifier: string; challenge: string } {
  const verifier = randomBytes(32).toString('base64url');
  return { verifier, challenge: createHash('sha256').update(verifier).digest('base64url') };
}

function refsOf(body: Json): string[] {
  return ((body?.entry ?? []) as Json[]).filter((e) => e.resource).map((e) => `${e.resource.resourceType}/${e.resource.id}`).sort();
}

async function created(token: string, resource: Resource): Promise<Json> {
  const r = await call(token, 'POST', resource.resourceType, resource);
  expect(r.status, `create ${resource.resourceType}: ${r.text}`).toBe(201);
  return r.body;
}

/** A user who signs up and creates a project (REGISTRATION_ENABLED), signed in as that project's admin. */
async function registerProject(prefix: string): Promise<{ email: string; projectId: string; token: string; membershipId: string }> {
  const email = `${unique(prefix)}@example.com`;
  const newUser = await call(undefined, 'POST', '/auth/newuser', { firstName: 'Reg', lastName: prefix, email, password: PASSWORD });
  expect(newUser.status, newUser.text).toBe(200);
  const newProject = await call(undefined, 'POST', '/auth/newproject', { login: newUser.body.login, projectName: `${prefix} project` });
  expect(newProject.status, newProject.text).toBe(200);
  const token = (await t.server.signIn(email, PASSWORD)).getAccessToken() as string;
  const me = await call(token, 'GET', '/auth/me');
  expect(me.status).toBe(200);
  expect(me.body.membership.admin).toBe(true);
  expect(me.body.project.id).not.toBe(t.server.projectId);
  return { email, projectId: me.body.project.id, token, membershipId: me.body.membership.id };
}

/** A new user invited (with a password) into a project by its admin, and signed in there. */
async function inviteUser(
  adminToken: string,
  projectId: string,
  membership: Partial<ProjectMembership>,
  resourceType = 'Practitioner'
): Promise<{ email: string; membership: Json; token: string }> {
  const email = `${unique('member')}@example.com`;
  const r = await call(adminToken, 'POST', `/admin/projects/${projectId}/invite`, {
    resourceType,
    firstName: 'Test',
    lastName: 'Member',
    email,
    password: PASSWORD,
    membership,
  });
  expect(r.status, r.text).toBe(200);
  const token = (await t.server.signIn(email, PASSWORD, projectId)).getAccessToken() as string;
  return { email, membership: r.body, token };
}

/** A practitioner of the first project whose membership names this (new) AccessPolicy. */
async function practitionerWithPolicy(policy: Omit<AccessPolicy, 'resourceType'>, parameters?: Record<string, string>): Promise<{ token: string; policyId: string }> {
  const stored = await created(t.server.admin.accessToken, { resourceType: 'AccessPolicy', ...policy } as AccessPolicy);
  const membership: Partial<ProjectMembership> = parameters
    ? {
        access: [
          {
            policy: { reference: `AccessPolicy/${stored.id}` },
            parameter: Object.entries(parameters).map(([name, reference]) => ({ name, valueReference: { reference } })),
          },
        ],
      }
    : { accessPolicy: { reference: `AccessPolicy/${stored.id}` } };
  const { token } = await inviteUser(t.server.admin.accessToken, t.server.projectId, membership);
  return { token, policyId: stored.id };
}

/** A ClientApplication of a project, made through the admin API (it gets a membership). */
async function newClient(adminToken: string, projectId: string, redirectUris?: string[]): Promise<{ id: string; secret: string }> {
  const r = await call(adminToken, 'POST', `/admin/projects/${projectId}/client`, { name: unique('client'), redirectUris });
  expect(r.status, r.text).toBe(201);
  return { id: r.body.id, secret: r.body.secret };
}

/** /oauth2/authorize -> what the login page posts to /auth/login -> /oauth2/token: the token response. */
async function signInThroughClient(clientId: string, redirectUri: string, email: string, password: string, scope: string): Promise<Json> {
  const { verifier, challenge } = pkce();
  const authorize = new URL(t.server.baseUrl + 'oauth2/authorize');
  for (const [k, v] of Object.entries({
    response_type: 'code',
    client_id: clientId,
    redirect_uri: redirectUri,
    scope,
    state: 'st',
    code_challenge: challenge,
    code_challenge_method: 'S256',
  })) {
    authorize.searchParams.set(k, v);
  }
  const redirect = await fetch(authorize, { redirect: 'manual' });
  expect(redirect.status).toBe(302);
  const page = new URL(redirect.headers.get('location') as string);
  expect(page.pathname).toBe('/oauth');
  const login = await call(undefined, 'POST', '/auth/login', {
    email,
    password,
    clientId,
    scope: page.searchParams.get('scope'),
    codeChallenge: page.searchParams.get('code_challenge'),
    codeChallengeMethod: 'S256',
    redirectUri,
  });
  expect(login.status, login.text).toBe(200);
  expect(typeof login.body.code, login.text).toBe('string');
  const tokens = await form('/oauth2/token', { grant_type: 'authorization_code', code: login.body.code, code_verifier: verifier, client_id: clientId, redirect_uri: redirectUri });
  expect(tokens.status, tokens.text).toBe(200);
  return tokens.body;
}

/** A first-party sign-in (no client): /auth/login in a project, then /oauth2/token with the PKCE verifier. */
async function firstPartyTokens(email: string, password: string, projectId: string, scope = 'openid'): Promise<Json> {
  const { verifier, challenge } = pkce();
  const login = await call(undefined, 'POST', '/auth/login', { email, password, projectId, scope, codeChallenge: challenge, codeChallengeMethod: 'S256' });
  expect(login.status, login.text).toBe(200);
  expect(typeof login.body.code, login.text).toBe('string');
  const tokens = await form('/oauth2/token', { grant_type: 'authorization_code', code: login.body.code, code_verifier: verifier });
  expect(tokens.status, tokens.text).toBe(200);
  return tokens.body;
}

/** The harness admin signed in with its Super Admin membership (chosen from the memberships /auth/login lists). */
async function superAdminToken(): Promise<string> {
  const { verifier, challenge } = pkce();
  const login = await call(undefined, 'POST', '/auth/login', {
    email: t.server.admin.email,
    password: t.server.admin.password,
    codeChallenge: challenge,
    codeChallengeMethod: 'S256',
  });
  expect(login.status, login.text).toBe(200);
  expect(login.body.code).toBeUndefined();
  const chosen = (login.body.memberships as Json[]).find((m) => m.project?.reference !== `Project/${t.server.projectId}`);
  expect(chosen, login.text).toBeTruthy();
  const profile = await call(undefined, 'POST', '/auth/profile', { login: login.body.login, profile: chosen.id });
  expect(profile.status, profile.text).toBe(200);
  const tokens = await form('/oauth2/token', { grant_type: 'authorization_code', code: profile.body.code, code_verifier: verifier });
  expect(tokens.status, tokens.text).toBe(200);
  const me = await call(tokens.body.access_token, 'GET', '/auth/me');
  expect(me.body.project.superAdmin).toBe(true);
  return tokens.body.access_token;
}

function patientResource(family: string, extra: Record<string, unknown> = {}): Resource {
  return { resourceType: 'Patient', name: [{ family, given: ['Sec'] }], ...extra } as Resource;
}

function observation(subject: string, extra: Record<string, unknown> = {}): Resource {
  return { resourceType: 'Observation', status: 'final', code: { text: 'regression' }, subject: { reference: subject }, ...extra } as Resource;
}

// ------------------------------------------------------------------------------------------ 1

describe('1. a project admin cannot make its project super admin', () => {
  let c: Awaited<ReturnType<typeof registerProject>>;
  /** The project admin's token after its membership names the widening policy. */
  let widened: string;
  let firstProjectPatient: string;

  beforeAll(async () => {
    c = await registerProject('escalate');
    firstProjectPatient = (await created(t.server.admin.accessToken, patientResource(unique('FirstProject')))).id;
    // The admin writes a policy naming administration types and assigns it to its own membership.
    const policy = await created(c.token, {
      resourceType: 'AccessPolicy',
      name: 'widen administration',
      resource: [{ resourceType: '*' }, { resourceType: 'Project' }, { resourceType: 'User' }],
    } as AccessPolicy);
    const membership = await call(c.token, 'GET', `ProjectMembership/${c.membershipId}`);
    expect(membership.status, membership.text).toBe(200);
    const put = await call(c.token, 'PUT', `ProjectMembership/${c.membershipId}`, { ...membership.body, accessPolicy: { reference: `AccessPolicy/${policy.id}` } });
    expect(put.status, put.text).toBe(200);
    expect(put.body.accessPolicy.reference).toBe(`AccessPolicy/${policy.id}`);
    widened = (await t.server.signIn(c.email, PASSWORD)).getAccessToken() as string;
  });

  test('(a) PUT Project with superAdmin, features and link keeps them absent', async () => {
    const project = await call(widened, 'GET', `Project/${c.projectId}`);
    expect(project.status, project.text).toBe(200);
    expect(project.body.superAdmin).toBeUndefined();
    const put = await call(widened, 'PUT', `Project/${c.projectId}`, {
      ...project.body,
      superAdmin: true,
      features: ['bots'],
      link: [{ project: { reference: `Project/${t.server.projectId}` } }],
      description: 'changed by its admin',
    });
    expect(put.status, put.text).toBe(200);
    expect(put.body.description).toBe('changed by its admin');
    const stored = await call(widened, 'GET', `Project/${c.projectId}`);
    expect(stored.body.description).toBe('changed by its admin');
    expect(stored.body.superAdmin).toBeUndefined();
    expect(stored.body.features).toBeUndefined();
    expect(stored.body.link).toBeUndefined();
    // a fresh sign-in is neither super admin nor linked to the first project
    const fresh = (await t.server.signIn(c.email, PASSWORD)).getAccessToken() as string;
    expect((await call(fresh, 'GET', '/auth/me')).body.project.superAdmin).toBeFalsy();
    expect((await call(fresh, 'GET', `Patient/${firstProjectPatient}`)).status).toBe(404);
    expect((await call(fresh, 'GET', 'User')).status).toBe(403);
  });

  test('(b) a batch DELETE + PUT of the Project is refused and does not make it super admin', async () => {
    const project = await call(widened, 'GET', `Project/${c.projectId}`);
    expect(project.status).toBe(200);
    const batch = await call(widened, 'POST', '', {
      resourceType: 'Bundle',
      type: 'batch',
      entry: [
        { request: { method: 'DELETE', url: `Project/${c.projectId}` } },
        { request: { method: 'PUT', url: `Project/${c.projectId}` }, resource: { ...project.body, superAdmin: true } },
      ],
    });
    expect(batch.status, batch.text).toBe(200);
    expect(batch.body.type).toBe('batch-response');
    expect(batch.body.entry[0].response.status, JSON.stringify(batch.body.entry[0])).toMatch(/^403/);
    expect(batch.body.entry[1].resource?.superAdmin).toBeUndefined();
    // the project is still there and still not super admin
    const stored = await call(widened, 'GET', `Project/${c.projectId}`);
    expect(stored.status, stored.text).toBe(200);
    expect(stored.body.superAdmin).toBeUndefined();
    const fresh = (await t.server.signIn(c.email, PASSWORD)).getAccessToken() as string;
    const me = await call(fresh, 'GET', '/auth/me');
    expect(me.body.project.id).toBe(c.projectId);
    expect(me.body.project.superAdmin).toBeFalsy();
    expect((await call(fresh, 'GET', 'User')).status).toBe(403);
    expect((await call(widened, 'GET', 'User')).status).toBe(403);
  });

  test('(b) a plain DELETE Project is refused', async () => {
    const del = await call(widened, 'DELETE', `Project/${c.projectId}`);
    expect(del.status, del.text).toBe(403);
    expect((await call(widened, 'GET', `Project/${c.projectId}`)).status).toBe(200);
  });

  test('(b) POST Project, or PUT of a new Project id, by an admin is 403 and creates nothing', async () => {
    const before = await t.server.rowCounts();
    const post = await call(widened, 'POST', 'Project', { resourceType: 'Project', name: 'my own super project', superAdmin: true });
    expect(post.status, post.text).toBe(403);
    const id = randomUUID();
    const put = await call(widened, 'PUT', `Project/${id}`, { resourceType: 'Project', id, name: 'another one', superAdmin: true });
    expect(put.status, put.text).toBe(403);
    expect(await t.server.rowCounts()).toEqual(before);
  });
});

// ------------------------------------------------------------------------------------------ 2

describe('2. the admin API honours the SMART scopes of the token', () => {
  const REDIRECT = 'https://scoped-app.example.org/callback';
  let client: { id: string; secret: string };

  beforeAll(async () => {
    client = await newClient(t.server.admin.accessToken, t.server.projectId, [REDIRECT]);
  });

  test('an admin signed in with openid user/Observation.rs cannot invite, mint clients or bots; without resource scopes it can', async () => {
    const tokens = await signInThroughClient(client.id, REDIRECT, t.server.admin.email, t.server.admin.password, 'openid user/Observation.rs');
    expect(tokens.scope).toBe('openid user/Observation.rs');
    const token = tokens.access_token as string;
    // the token is good for what it allows
    expect((await call(token, 'GET', 'Observation?_count=1')).status).toBe(200);
    const before = await t.server.rowCounts();
    const email = `${unique('scoped-invite')}@example.com`;
    const invite = await call(token, 'POST', `/admin/projects/${t.server.projectId}/invite`, { resourceType: 'Practitioner', firstName: 'S', lastName: 'Coped', email, password: PASSWORD });
    expect(invite.status, invite.text).toBe(403);
    const mint = await call(token, 'POST', `/admin/projects/${t.server.projectId}/client`, { name: 'minted by a scoped token' });
    expect(mint.status, mint.text).toBe(403);
    const bot = await call(token, 'POST', `/admin/projects/${t.server.projectId}/bot`, { name: 'bot by a scoped token' });
    expect(bot.status, bot.text).toBe(403);
    expect(await t.server.rowCounts()).toEqual(before);
    // no account was created for the email: an unscoped admin can still invite it as new
    const admin = (await signInThroughClient(client.id, REDIRECT, t.server.admin.email, t.server.admin.password, 'openid')).access_token as string;
    const again = await call(admin, 'POST', `/admin/projects/${t.server.projectId}/invite`, { resourceType: 'Practitioner', firstName: 'S', lastName: 'Coped', email, password: PASSWORD });
    expect(again.status, again.text).toBe(200);
    expect(again.body.resourceType).toBe('ProjectMembership');
    const mintAgain = await call(admin, 'POST', `/admin/projects/${t.server.projectId}/client`, { name: 'minted unscoped' });
    expect(mintAgain.status, mintAgain.text).toBe(201);
    const botAgain = await call(admin, 'POST', `/admin/projects/${t.server.projectId}/bot`, { name: 'bot unscoped' });
    expect(botAgain.status, botAgain.text).toBe(201);
  });
});

// ------------------------------------------------------------------------------------------ 3

describe('3. a switched-off client and an inactive client membership end access', () => {
  const REDIRECT = 'https://switched-off.example.org/callback';

  test('status off: Basic 401, earlier access tokens 401, refresh invalid_grant', async () => {
    const client = await newClient(t.server.admin.accessToken, t.server.projectId, [REDIRECT]);
    expect((await call(undefined, 'GET', 'Patient?_count=1', undefined, basic(client.id, client.secret))).status).toBe(200);
    const cc = await form('/oauth2/token', { grant_type: 'client_credentials' }, basic(client.id, client.secret));
    expect(cc.status, cc.text).toBe(200);
    const ccToken = cc.body.access_token as string;
    expect((await call(ccToken, 'GET', 'Patient?_count=1')).status).toBe(200);
    const user = await signInThroughClient(client.id, REDIRECT, t.server.admin.email, t.server.admin.password, 'openid offline_access');
    expect(typeof user.refresh_token).toBe('string');
    expect((await call(user.access_token, 'GET', 'Patient?_count=1')).status).toBe(200);

    const current = await call(t.server.admin.accessToken, 'GET', `ClientApplication/${client.id}`);
    expect(current.status).toBe(200);
    const off = await call(t.server.admin.accessToken, 'PUT', `ClientApplication/${client.id}`, { ...current.body, status: 'off' });
    expect(off.status, off.text).toBe(200);
    expect(off.body.status).toBe('off');

    const viaBasic = await call(undefined, 'GET', 'Patient?_count=1', undefined, basic(client.id, client.secret));
    expect(viaBasic.status, viaBasic.text).toBe(401);
    expect((await call(ccToken, 'GET', 'Patient?_count=1')).status).toBe(401);
    expect((await call(user.access_token, 'GET', 'Patient?_count=1')).status).toBe(401);
    expect((await call(user.access_token, 'GET', '/auth/me')).status).toBe(401);
    const refresh = await form('/oauth2/token', { grant_type: 'refresh_token', refresh_token: user.refresh_token, client_id: client.id });
    expect(refresh.status, refresh.text).toBe(400);
    expect(refresh.body.error).toBe('invalid_grant');
    expect(refresh.body.access_token).toBeUndefined();
    const again = await form('/oauth2/token', { grant_type: 'client_credentials' }, basic(client.id, client.secret));
    expect(again.status).toBe(401);
    expect(again.body.error).toBe('invalid_client');
  });

  test('ProjectMembership active:false: Basic 401', async () => {
    const client = await newClient(t.server.admin.accessToken, t.server.projectId);
    expect((await call(undefined, 'GET', 'Patient?_count=1', undefined, basic(client.id, client.secret))).status).toBe(200);
    const found = await call(t.server.admin.accessToken, 'GET', `ProjectMembership?profile=ClientApplication/${client.id}`);
    expect(found.body.entry, found.text).toHaveLength(1);
    const membership = found.body.entry[0].resource;
    const put = await call(t.server.admin.accessToken, 'PUT', `ProjectMembership/${membership.id}`, { ...membership, active: false });
    expect(put.status, put.text).toBe(200);
    expect(put.body.active).toBe(false);
    const viaBasic = await call(undefined, 'GET', 'Patient?_count=1', undefined, basic(client.id, client.secret));
    expect(viaBasic.status, viaBasic.text).toBe(401);
    expect(viaBasic.headers.get('www-authenticate')).toBeTruthy();
  });
});

// ------------------------------------------------------------------------------------------ 4

describe('4. account pre-hijacking: an existing account is attached to a project only by a super admin', () => {
  let b: Awaited<ReturnType<typeof registerProject>>;
  const victim = { email: '', userRef: '' };
  const KNOWN = 'b-admin-knows-this-1';

  beforeAll(async () => {
    b = await registerProject('hijacker');
    victim.email = `${unique('victim')}@example.com`;
    const invite = await call(b.token, 'POST', `/admin/projects/${b.projectId}/invite`, { resourceType: 'Practitioner', firstName: 'Vic', lastName: 'Tim', email: victim.email, password: KNOWN });
    expect(invite.status, invite.text).toBe(200);
    victim.userRef = invite.body.user.reference;
    expect(victim.userRef).toMatch(/^User\//);
  });

  test("project A's admin cannot add the account another project's admin created; the super admin can", async () => {
    const withoutPassword = await call(t.server.admin.accessToken, 'POST', `/admin/projects/${t.server.projectId}/invite`, {
      resourceType: 'Practitioner',
      firstName: 'Vic',
      lastName: 'Tim',
      email: victim.email,
    });
    expect(withoutPassword.status, withoutPassword.text).toBe(400);
    expect(withoutPassword.text).toContain('a super admin must add it');
    // upper case and spaces name the same account
    const variant = await call(t.server.admin.accessToken, 'POST', `/admin/projects/${t.server.projectId}/invite`, {
      resourceType: 'Practitioner',
      firstName: 'Vic',
      lastName: 'Tim',
      email: `  ${victim.email.toUpperCase()} `,
    });
    expect(variant.status, variant.text).toBe(400);
    expect(variant.text).toContain('a super admin must add it');
    const memberships = await call(t.server.admin.accessToken, 'GET', `ProjectMembership?user=${victim.userRef}`);
    expect(memberships.status).toBe(200);
    expect(memberships.body.entry ?? []).toHaveLength(0);
    // whoever knows the password set in project B gets nothing in project A
    const login = await call(undefined, 'POST', '/auth/login', { email: victim.email, password: KNOWN, projectId: t.server.projectId });
    expect(login.status, login.text).toBe(200);
    expect(login.body.code).toBeUndefined();

    // the super admin may attach it, without a password
    const superToken = await superAdminToken();
    const withPassword = await call(superToken, 'POST', `/admin/projects/${t.server.projectId}/invite`, {
      resourceType: 'Practitioner',
      firstName: 'Vic',
      lastName: 'Tim',
      email: victim.email,
      password: 'super-admin-sets-one-1',
    });
    expect(withPassword.status, withPassword.text).toBe(400);
    expect(withPassword.text).toContain('without a password');
    const attached = await call(superToken, 'POST', `/admin/projects/${t.server.projectId}/invite`, {
      resourceType: 'Practitioner',
      firstName: 'Vic',
      lastName: 'Tim',
      email: victim.email,
    });
    expect(attached.status, attached.text).toBe(200);
    expect(attached.body.project.reference).toBe(`Project/${t.server.projectId}`);
    expect(attached.body.user.reference).toBe(victim.userRef);
    const membershipsAfter = await call(t.server.admin.accessToken, 'GET', `ProjectMembership?user=${victim.userRef}`);
    expect(refsOf(membershipsAfter.body)).toEqual([`ProjectMembership/${attached.body.id}`]);
    // the password was not changed by the super admin's refused attempt
    const superPassword = await call(undefined, 'POST', '/auth/login', { email: victim.email, password: 'super-admin-sets-one-1', projectId: t.server.projectId });
    expect(superPassword.status).toBe(400);
  });
});

// ------------------------------------------------------------------------------------------ 5 and 7: hidden fields

const BIRTH = '1961-07-23';
const SSN = 'SSN-8675309';

describe('5. hidden fields cannot be reached through JSON Patch; choice-type hidden fields', () => {
  let hider: string;
  let family: string;
  let patientId: string;

  beforeAll(async () => {
    ({ token: hider } = await practitionerWithPolicy({
      name: 'hides birthDate, identifier, deceased',
      resource: [{ resourceType: 'Patient', hiddenFields: ['birthDate', 'identifier', 'deceased'] }],
    }));
    family = unique('Hidden');
    patientId = (
      await created(
        t.server.admin.accessToken,
        patientResource(family, { birthDate: BIRTH, identifier: [{ system: 'urn:ssn', value: SSN }], deceasedBoolean: true, gender: 'female' })
      )
    ).id;
  });

  async function stored(): Promise<Json> {
    const r = await call(t.server.admin.accessToken, 'GET', `Patient/${patientId}`);
    expect(r.status).toBe(200);
    return r.body;
  }

  test('copy from a hidden field is refused and does not reveal the value', async () => {
    const before = await stored();
    for (const from of ['/birthDate', '/identifier/0/value', '/identifier', '/deceasedBoolean']) {
      const r = await call(hider, 'PATCH', `Patient/${patientId}`, [{ op: 'copy', from, path: '/name/0/text' }], { 'Content-Type': 'application/json-patch+json' });
      expect(r.status, `${from}: ${r.text}`).toBeGreaterThanOrEqual(400);
      expect(r.status, `${from}: ${r.text}`).toBeLessThan(500);
      expect(r.text).not.toContain(BIRTH);
      expect(r.text).not.toContain('1961');
      expect(r.text).not.toContain(SSN);
    }
    const move = await call(hider, 'PATCH', `Patient/${patientId}`, [{ op: 'move', from: '/birthDate', path: '/name/0/text' }], { 'Content-Type': 'application/json-patch+json' });
    expect(move.status).toBeGreaterThanOrEqual(400);
    expect(move.text).not.toContain(BIRTH);
    const after = await stored();
    expect(after.meta.versionId).toBe(before.meta.versionId);
    expect(after.name[0].text).toBeUndefined();
    expect(after.birthDate).toBe(BIRTH);
  });

  test('test against a hidden field answers the same for the right and a wrong value (no oracle)', async () => {
    const before = await stored();
    const attempt = async (path: string, value: unknown): Promise<Reply> =>
      call(hider, 'PATCH', `Patient/${patientId}`, [{ op: 'test', path, value }, { op: 'replace', path: '/gender', value: 'male' }], {
        'Content-Type': 'application/json-patch+json',
      });
    for (const [path, right, wrong] of [
      ['/birthDate', BIRTH, '1900-01-01'],
      ['/identifier/0/value', SSN, 'SSN-0000000'],
      ['/deceasedBoolean', true, false],
    ] as const) {
      const r = await attempt(path, right);
      const w = await attempt(path, wrong);
      expect(r.status, `${path} right value: ${r.text}`).toBe(w.status);
      expect(r.status).toBeGreaterThanOrEqual(400);
      const normalize = (reply: Reply, value: unknown): string => reply.text.split(JSON.stringify(value)).join('<v>').split(String(value)).join('<v>');
      expect(normalize(r, right)).toBe(normalize(w, wrong));
    }
    const after = await stored();
    expect(after.meta.versionId).toBe(before.meta.versionId);
    expect(after.gender).toBe('female');
  });

  test('a legitimate patch of another field succeeds and the hidden fields stay stored', async () => {
    const r = await call(hider, 'PATCH', `Patient/${patientId}`, [{ op: 'replace', path: '/gender', value: 'other' }], { 'Content-Type': 'application/json-patch+json' });
    expect(r.status, r.text).toBe(200);
    expect(r.body.gender).toBe('other');
    expect(r.body.birthDate).toBeUndefined();
    expect(r.body.identifier).toBeUndefined();
    expect(r.body.deceasedBoolean).toBeUndefined();
    const after = await stored();
    expect(after.gender).toBe('other');
    expect(after.birthDate).toBe(BIRTH);
    expect(after.identifier).toEqual([{ system: 'urn:ssn', value: SSN }]);
    expect(after.deceasedBoolean).toBe(true);
  });

  test("hiddenFields ['deceased'] hides deceasedBoolean on read, vread, history, search and GraphQL", async () => {
    const admin = await stored();
    expect(admin.deceasedBoolean).toBe(true);
    const read = await call(hider, 'GET', `Patient/${patientId}`);
    expect(read.status).toBe(200);
    expect(read.body.gender).toBeDefined();
    expect(Object.keys(read.body).filter((k) => k.startsWith('deceased'))).toEqual([]);
    const vread = await call(hider, 'GET', `Patient/${patientId}/_history/${admin.meta.versionId}`);
    expect(vread.status).toBe(200);
    expect(vread.body.deceasedBoolean).toBeUndefined();
    const history = await call(hider, 'GET', `Patient/${patientId}/_history`);
    expect(history.status).toBe(200);
    expect(history.text).not.toContain('deceased');
    const search = await call(hider, 'GET', `Patient?_id=${patientId}`);
    expect(refsOf(search.body)).toEqual([`Patient/${patientId}`]);
    expect(search.text).not.toContain('deceased');
    const graphql = await call(hider, 'POST', '$graphql', { query: `{ Patient(id: "${patientId}") { id gender deceasedBoolean } PatientList(_id: "${patientId}") { id deceasedBoolean } }` }, { 'Content-Type': 'application/json' });
    expect(graphql.status, graphql.text).toBe(200);
    expect(graphql.body.data.Patient).toMatchObject({ id: patientId, deceasedBoolean: null });
    expect(graphql.body.data.PatientList).toEqual([{ id: patientId, deceasedBoolean: null }]);
    // the admin's GraphQL shows it (the field exists)
    const adminGraphql = await call(t.server.admin.accessToken, 'POST', '$graphql', { query: `{ Patient(id: "${patientId}") { deceasedBoolean } }` }, { 'Content-Type': 'application/json' });
    expect(adminGraphql.body.data.Patient.deceasedBoolean).toBe(true);
  });

  test('a write cannot change or remove a hidden choice-type field', async () => {
    const read = await call(hider, 'GET', `Patient/${patientId}`);
    const removed = await call(hider, 'PUT', `Patient/${patientId}`, { ...read.body, gender: 'female' });
    expect(removed.status, removed.text).toBe(200);
    expect((await stored()).deceasedBoolean).toBe(true);
    const changed = await call(hider, 'PUT', `Patient/${patientId}`, { ...read.body, gender: 'male', deceasedDateTime: '2020-01-01' });
    expect(changed.status, changed.text).toBe(200);
    const after = await stored();
    expect(after.gender).toBe('male');
    expect(after.deceasedBoolean).toBe(true);
    expect(after.deceasedDateTime).toBeUndefined();
  });
});

describe('7. hidden fields are not searchable', () => {
  let hider: string;
  let family: string;
  let patientId: string;
  let observationId: string;

  beforeAll(async () => {
    ({ token: hider } = await practitionerWithPolicy({
      name: 'hides birthDate and identifier',
      resource: [{ resourceType: 'Patient', hiddenFields: ['birthDate', 'identifier', 'deceased'] }, { resourceType: 'Observation' }],
    }));
    family = unique('Unsearchable');
    patientId = (
      await created(
        t.server.admin.accessToken,
        patientResource(family, { birthDate: BIRTH, identifier: [{ system: 'urn:ssn', value: SSN }], gender: 'female', deceasedBoolean: false })
      )
    ).id;
    observationId = (await created(t.server.admin.accessToken, observation(`Patient/${patientId}`))).id;
  });

  const refused = [
    `Patient?birthdate=${BIRTH}`,
    'Patient?birthdate=ge1900-01-01',
    'Patient?birthdate:missing=false',
    'Patient?_sort=birthdate',
    'Patient?_sort=-birthdate',
    `Patient?identifier=${SSN}`,
    `Patient?identifier=urn:ssn|${SSN}`,
    'Patient?deceased=false',
    `Patient?_filter=${encodeURIComponent(`birthdate eq ${BIRTH}`)}`,
    `Patient?_filter=${encodeURIComponent(`name eq "x" or identifier eq "${SSN}"`)}`,
    `Observation?subject:Patient.birthdate=${BIRTH}`,
    `Observation?subject:Patient.identifier=${SSN}`,
  ];
  for (const query of refused) {
    test(`${decodeURIComponent(query)} -> 400`, async () => {
      const r = await call(hider, 'GET', query);
      expect(r.status, r.text).toBe(400);
      expect(r.text).not.toContain(patientId);
    });
  }

  test('visible parameters still work for the same caller (hidden ones do not)', async () => {
    expect((await call(hider, 'GET', `Patient?name=${family}&_sort=birthdate`)).status).toBe(400);
    const byName = await call(hider, 'GET', `Patient?name=${family}&gender=female`);
    expect(byName.status, byName.text).toBe(200);
    expect(refsOf(byName.body)).toEqual([`Patient/${patientId}`]);
    const sorted = await call(hider, 'GET', `Patient?name=${family}&_sort=-name,gender`);
    expect(sorted.status, sorted.text).toBe(200);
    expect(refsOf(sorted.body)).toEqual([`Patient/${patientId}`]);
    const filter = await call(hider, 'GET', `Patient?_filter=${encodeURIComponent(`family eq "${family}"`)}`);
    expect(filter.status, filter.text).toBe(200);
    expect(refsOf(filter.body)).toEqual([`Patient/${patientId}`]);
    const chain = await call(hider, 'GET', `Observation?subject:Patient.name=${family}`);
    expect(chain.status, chain.text).toBe(200);
    expect(refsOf(chain.body)).toEqual([`Observation/${observationId}`]);
  });

  test('the admin (no hidden fields) may still search them; the hider may not', async () => {
    expect((await call(hider, 'GET', `Patient?name=${family}&birthdate=${BIRTH}`)).status).toBe(400);
    const r = await call(t.server.admin.accessToken, 'GET', `Patient?name=${family}&birthdate=${BIRTH}&identifier=${SSN}&_sort=birthdate`);
    expect(r.status, r.text).toBe(200);
    expect(refsOf(r.body)).toEqual([`Patient/${patientId}`]);
  });
});

// ------------------------------------------------------------------------------------------ 6

describe('6. deleted rows cannot be revived under row criteria', () => {
  let scoped: string;
  let ownPatient: string;
  let deletedId: string;
  let firstVersion: string;

  beforeAll(async () => {
    ownPatient = (await created(t.server.admin.accessToken, patientResource(unique('Own')))).id;
    const otherPatient = (await created(t.server.admin.accessToken, patientResource(unique('Other')))).id;
    ({ token: scoped } = await practitionerWithPolicy(
      {
        name: 'observations of %patient',
        resource: [
          { resourceType: 'Patient', criteria: 'Patient?_id=%patient.id' },
          { resourceType: 'Observation', criteria: 'Observation?subject=%patient' },
        ],
      },
      { patient: `Patient/${ownPatient}` }
    ));
    const obs = await created(t.server.admin.accessToken, observation(`Patient/${otherPatient}`, { valueString: 'secret v1' }));
    deletedId = obs.id;
    firstVersion = obs.meta.versionId;
    const updated = await call(t.server.admin.accessToken, 'PUT', `Observation/${deletedId}`, { ...obs, valueString: 'secret v2' });
    expect(updated.status).toBe(200);
    expect((await call(t.server.admin.accessToken, 'DELETE', `Observation/${deletedId}`)).status).toBe(200);
    expect((await call(t.server.admin.accessToken, 'GET', `Observation/${deletedId}`)).status).toBe(410);
  });

  test("PUT of the deleted id with the practitioner's own patient is 403 and its history stays invisible; the admin can revive it", async () => {
    const put = await call(scoped, 'PUT', `Observation/${deletedId}`, observation(`Patient/${ownPatient}`, { id: deletedId, valueString: 'revived' }));
    expect(put.status, put.text).toBe(403);
    expect(put.text).not.toContain('secret');
    const history = await call(scoped, 'GET', `Observation/${deletedId}/_history`);
    expect(history.status, history.text).toBe(404);
    expect(history.text).not.toContain('secret');
    const vread = await call(scoped, 'GET', `Observation/${deletedId}/_history/${firstVersion}`);
    expect(vread.status, vread.text).toBe(404);
    const typeHistory = await call(scoped, 'GET', 'Observation/_history?_count=100');
    expect(typeHistory.status).toBe(200);
    expect(typeHistory.text).not.toContain(deletedId);
    // still deleted
    expect((await call(t.server.admin.accessToken, 'GET', `Observation/${deletedId}`)).status).toBe(410);
    // the practitioner may still create about its own patient (the refusal is about the revival)
    const own = await call(scoped, 'POST', 'Observation', observation(`Patient/${ownPatient}`));
    expect(own.status, own.text).toBe(201);

    // the admin (no criteria) can still revive it
    const revived = await call(t.server.admin.accessToken, 'PUT', `Observation/${deletedId}`, observation(`Patient/${ownPatient}`, { id: deletedId, valueString: 'revived by the admin' }));
    expect([200, 201], revived.text).toContain(revived.status);
    const read = await call(t.server.admin.accessToken, 'GET', `Observation/${deletedId}`);
    expect(read.status).toBe(200);
    expect(read.body.valueString).toBe('revived by the admin');
  });
});

// ------------------------------------------------------------------------------------------ 8

describe('8. readonly fields apply to create', () => {
  let writer: string;

  beforeAll(async () => {
    ({ token: writer } = await practitionerWithPolicy({ name: 'active is read-only', resource: [{ resourceType: 'Patient', readonlyFields: ['active'] }] }));
  });

  test('POST Patient {active:true} stores no active', async () => {
    const r = await call(writer, 'POST', 'Patient', patientResource(unique('Ro'), { active: true, gender: 'male' }));
    expect(r.status, r.text).toBe(201);
    expect(r.body.active).toBeUndefined();
    const stored = await call(t.server.admin.accessToken, 'GET', `Patient/${r.body.id}`);
    expect(stored.body.gender).toBe('male');
    expect(stored.body.active).toBeUndefined();
  });

  test('PUT of a new id (update as create) stores no active either; an update keeps the stored value', async () => {
    const id = randomUUID();
    const r = await call(writer, 'PUT', `Patient/${id}`, patientResource(unique('Ro'), { id, active: false }));
    expect(r.status, r.text).toBe(201);
    const stored = await call(t.server.admin.accessToken, 'GET', `Patient/${id}`);
    expect(stored.status).toBe(200);
    expect(stored.body.active).toBeUndefined();
    // and an update keeps the stored value
    const p = await created(t.server.admin.accessToken, patientResource(unique('Ro'), { active: false }));
    const update = await call(writer, 'PUT', `Patient/${p.id}`, { ...p, active: true, gender: 'female' });
    expect(update.status, update.text).toBe(200);
    const updated = await call(t.server.admin.accessToken, 'GET', `Patient/${p.id}`);
    expect(updated.body.gender).toBe('female');
    expect(updated.body.active).toBe(false);
  });
});

// ------------------------------------------------------------------------------------------ 9

describe('9. linked projects: data is readable, administration types are not', () => {
  let l: Awaited<ReturnType<typeof registerProject>>;
  let b: Awaited<ReturnType<typeof registerProject>>;
  let bPatient: string;
  let bClient: string;
  let bPolicy: string;
  let bBot: string;

  beforeAll(async () => {
    l = await registerProject('linker');
    b = await registerProject('linked');
    bPatient = (await created(b.token, patientResource(unique('LinkedB')))).id;
    bPolicy = (await created(b.token, { resourceType: 'AccessPolicy', name: 'B policy', resource: [{ resourceType: 'Patient' }] } as AccessPolicy)).id;
    bClient = (await newClient(b.token, b.projectId)).id;
    const bot = await call(b.token, 'POST', `/admin/projects/${b.projectId}/bot`, { name: 'B bot' });
    expect(bot.status, bot.text).toBe(201);
    bBot = bot.body.id;
    // L links B. Written in-process: over HTTP a super admin's PUT does not reach L's Project (see the next test).
    const repo = t.server.services.auth.directory.repo(l.projectId);
    const project = await repo.readResource('Project', l.projectId);
    await repo.updateResource({ ...project, link: [{ project: { reference: `Project/${b.projectId}` } }] } as Resource);
  });

  test("a super admin sets a project's link over HTTP: stored on that project, its admin reads the linked data", async () => {
    const l2 = await registerProject('linker2');
    const superToken = await superAdminToken();
    const project = await call(superToken, 'GET', `Project/${l2.projectId}`);
    expect(project.status, project.text).toBe(200);
    const put = await call(superToken, 'PUT', `Project/${l2.projectId}`, { ...project.body, link: [{ project: { reference: `Project/${b.projectId}` } }] });
    // an update of the existing Project, not the creation of another one
    expect.soft(put.status, put.text).toBe(200);
    const token = (await t.server.signIn(l2.email, PASSWORD)).getAccessToken() as string;
    const stored = await call(token, 'GET', `Project/${l2.projectId}`);
    // the super admin and the project's admin read the same Project (one resource, one version)
    expect.soft((await call(superToken, 'GET', `Project/${l2.projectId}`)).body.meta.versionId).toBe(stored.body.meta.versionId);
    expect(stored.body.link, stored.text).toEqual([{ project: { reference: `Project/${b.projectId}` } }]);
    expect((await call(token, 'GET', `Patient/${bPatient}`)).status).toBe(200);
    expect((await call(token, 'GET', `ClientApplication/${bClient}`)).status).toBe(404);
  });

  test("L's admin reads B's Patients but not B's ClientApplication, Bot, AccessPolicy or ProjectMembership", async () => {
    const token = (await t.server.signIn(l.email, PASSWORD)).getAccessToken() as string;
    // linked data is readable (the link is in effect) ...
    expect((await call(token, 'GET', `Project/${l.projectId}`)).body.link).toEqual([{ project: { reference: `Project/${b.projectId}` } }]);
    expect((await call(token, 'GET', `Patient/${bPatient}`)).status).toBe(200);
    expect(refsOf((await call(token, 'GET', `Patient?_id=${bPatient}`)).body)).toEqual([`Patient/${bPatient}`]);
    // ... administration types are not
    expect((await call(token, 'GET', `ClientApplication/${bClient}`)).status).toBe(404);
    expect((await call(token, 'GET', `AccessPolicy/${bPolicy}`)).status).toBe(404);
    expect((await call(token, 'GET', `Bot/${bBot}`)).status).toBe(404);
    expect((await call(token, 'GET', `ProjectMembership/${b.membershipId}`)).status).toBe(404);
    expect(refsOf((await call(token, 'GET', `ClientApplication?_id=${bClient}`)).body)).toEqual([]);
    const clients = await call(token, 'GET', 'ClientApplication?_count=100');
    expect(clients.status).toBe(200);
    expect(clients.text).not.toContain(bClient);
    const memberships = await call(token, 'GET', 'ProjectMembership?_count=100');
    expect(memberships.status).toBe(200);
    expect(memberships.text).not.toContain(b.membershipId);
    expect(memberships.text).not.toContain(`Project/${b.projectId}`);
    expect(((memberships.body.entry ?? []) as Json[]).length).toBeGreaterThan(0);
    expect(((memberships.body.entry ?? []) as Json[]).every((e) => e.resource.project.reference === `Project/${l.projectId}`)).toBe(true);
    const policies = await call(token, 'GET', 'AccessPolicy?_count=100');
    expect(policies.status).toBe(200);
    expect(policies.text).not.toContain(bPolicy);
    expect((await call(token, 'GET', `ClientApplication/${bClient}/_history`)).status).toBe(404);
    // B's admin sees them (they exist)
    expect((await call(b.token, 'GET', `ClientApplication/${bClient}`)).status).toBe(200);
  });
});

// ------------------------------------------------------------------------------------------ 10

describe('10. parallel login guesses are counted before the password check', () => {
  let server: TestServer;
  const email = `${unique('guessed')}@example.com`;

  beforeAll(async () => {
    server = await startTestServer({ LOGIN_FAILURES_PER_ACCOUNT: '5' });
    const r = await call(server.admin.accessToken, 'POST', `/admin/projects/${server.projectId}/invite`, {
      resourceType: 'Practitioner',
      firstName: 'G',
      lastName: 'Uessed',
      email,
      password: PASSWORD,
    }, {}, server);
    expect(r.status, r.text).toBe(200);
  });

  afterAll(async () => {
    await server?.stop();
  });

  test('30 parallel wrong passwords: at most 5 answered 400, the rest 429; then the right password is 429', async () => {
    const replies = await Promise.all(
      Array.from({ length: 30 }, (_, i) => call(undefined, 'POST', '/auth/login', { email, password: `wrong-guess-${i}-x` }, {}, server))
    );
    const statuses = replies.map((r) => r.status);
    const wrong = statuses.filter((s) => s === 400).length;
    const limited = statuses.filter((s) => s === 429).length;
    expect(wrong, statuses.join(',')).toBeLessThanOrEqual(5);
    expect(wrong, statuses.join(',')).toBeGreaterThan(0);
    expect(wrong + limited, statuses.join(',')).toBe(30);
    const right = await call(undefined, 'POST', '/auth/login', { email, password: PASSWORD, projectId: server.projectId }, {}, server);
    expect(right.status, right.text).toBe(429);
    expect(right.body?.code).toBeUndefined();
    // another account from the same address is not locked out
    const other = await call(undefined, 'POST', '/auth/login', { email: server.admin.email, password: server.admin.password, projectId: server.projectId }, {}, server);
    expect(other.status, other.text).toBe(200);
  });
});

// ------------------------------------------------------------------------------------------ 11

describe('11. the patient picker answers only sign-ins that asked for launch/patient', () => {
  let patientId: string;
  let practitioner: string;

  beforeAll(async () => {
    patientId = (await created(t.server.admin.accessToken, patientResource(unique('Picker')))).id;
    practitioner = (await inviteUser(t.server.admin.accessToken, t.server.projectId, {})).email;
  });

  async function code(scope: string): Promise<string> {
    const { challenge } = pkce();
    const r = await call(undefined, 'POST', '/auth/login', { email: practitioner, password: PASSWORD, scope, codeChallenge: challenge, codeChallengeMethod: 'S256' });
    expect(r.status, r.text).toBe(200);
    expect(typeof r.body.code).toBe('string');
    return r.body.code;
  }

  test('/auth/patients and /auth/launch-patient with a code whose scope lacks launch/patient -> 400 (with it -> 200)', async () => {
    for (const scope of ['openid', 'openid patient/*.rs', 'openid launch']) {
      const c = await code(scope);
      const list = await call(undefined, 'POST', '/auth/patients', { code: c });
      expect(list.status, `${scope}: ${list.text}`).toBe(400);
      expect(list.text).not.toContain(patientId);
      const bind = await call(undefined, 'POST', '/auth/launch-patient', { code: c, patient: patientId });
      expect(bind.status, `${scope}: ${bind.text}`).toBe(400);
    }
    // with launch/patient the picker answers
    const c = await code('openid launch/patient patient/*.rs');
    const list = await call(undefined, 'POST', '/auth/patients', { code: c });
    expect(list.status, list.text).toBe(200);
    expect(list.body.resourceType).toBe('Bundle');
  });
});

// ------------------------------------------------------------------------------------------ 12

describe('12. policy restrictions the server does not evaluate fail closed', () => {
  let p1: string;
  let p2: string;
  let o1: string;
  let o2: string;

  beforeAll(async () => {
    p1 = (await created(t.server.admin.accessToken, patientResource(unique('Comp1')))).id;
    p2 = (await created(t.server.admin.accessToken, patientResource(unique('Comp2')))).id;
    o1 = (await created(t.server.admin.accessToken, observation(`Patient/${p1}`))).id;
    o2 = (await created(t.server.admin.accessToken, observation(`Patient/${p2}`))).id;
  });

  test('an entry with compartment limits reads to that patient', async () => {
    const { token } = await practitionerWithPolicy({
      name: 'legacy compartment',
      resource: [
        { resourceType: 'Patient', compartment: { reference: `Patient/${p1}` } },
        { resourceType: 'Observation', compartment: { reference: `Patient/${p1}` } },
      ],
    });
    expect((await call(token, 'GET', `Patient/${p1}`)).status).toBe(200);
    expect((await call(token, 'GET', `Patient/${p2}`)).status).toBe(404);
    expect(refsOf((await call(token, 'GET', `Patient?_id=${p1},${p2}`)).body)).toEqual([`Patient/${p1}`]);
    const patients = await call(token, 'GET', 'Patient?_count=1000');
    expect(refsOf(patients.body)).toEqual([`Patient/${p1}`]);
    expect((await call(token, 'GET', `Observation/${o2}`)).status).toBe(404);
    expect(refsOf((await call(token, 'GET', `Observation?_id=${o1},${o2}`)).body)).toEqual([`Observation/${o1}`]);
  });

  test('an entry with writeConstraint is read-only', async () => {
    const { token } = await practitionerWithPolicy({
      name: 'write constraint',
      resource: [{ resourceType: 'Patient', writeConstraint: [{ language: 'text/fhirpath', expression: 'false' }] }],
    });
    const read = await call(token, 'GET', `Patient/${p1}`);
    expect(read.status).toBe(200);
    expect((await call(token, 'POST', 'Patient', patientResource(unique('Wc')))).status).toBe(403);
    expect((await call(token, 'PUT', `Patient/${p1}`, { ...read.body, gender: 'unknown' })).status).toBe(403);
    expect((await call(token, 'PATCH', `Patient/${p1}`, [{ op: 'add', path: '/gender', value: 'unknown' }], { 'Content-Type': 'application/json-patch+json' })).status).toBe(403);
    expect((await call(token, 'DELETE', `Patient/${p2}`)).status).toBe(403);
    const stored = await call(t.server.admin.accessToken, 'GET', `Patient/${p1}`);
    expect(stored.body.gender).toBeUndefined();
    expect((await call(t.server.admin.accessToken, 'GET', `Patient/${p2}`)).status).toBe(200);
  });

  const grantsNothing: [string, Record<string, unknown>][] = [
    ['ipAccessRule', { ipAccessRule: [{ name: 'anywhere', value: '0.0.0.0/0', action: 'allow' }] }],
    ['basedOn', { basedOn: [{ reference: 'AccessPolicy/PLACEHOLDER' }] }],
    ['compartment (policy level)', { compartment: { reference: 'Patient/PLACEHOLDER' } }],
  ];
  for (const [name, extra] of grantsNothing) {
    test(`an AccessPolicy with ${name} grants nothing`, async () => {
      const filled = JSON.parse(JSON.stringify(extra).replace('AccessPolicy/PLACEHOLDER', `AccessPolicy/${(await created(t.server.admin.accessToken, { resourceType: 'AccessPolicy', name: 'base', resource: [{ resourceType: 'Patient' }] } as AccessPolicy)).id}`).replace('Patient/PLACEHOLDER', `Patient/${p1}`));
      const { token } = await practitionerWithPolicy({ name: `with ${name}`, resource: [{ resourceType: 'Patient' }, { resourceType: 'Observation' }], ...filled });
      expect((await call(token, 'GET', `Patient/${p1}`)).status).toBe(403);
      expect((await call(token, 'GET', 'Patient')).status).toBe(403);
      expect((await call(token, 'GET', `Observation/${o1}`)).status).toBe(403);
      expect((await call(token, 'POST', 'Patient', patientResource(unique('Nothing')))).status).toBe(403);
      // the definitions stay readable: the token itself works
      expect((await call(token, 'GET', '/auth/me')).status).toBe(200);
    });
  }
});

// ------------------------------------------------------------------------------------------ 13

describe('13. small ones', () => {
  const REDIRECT = 'https://small-ones.example.org/callback';
  let client: { id: string; secret: string };

  beforeAll(async () => {
    client = await newClient(t.server.admin.accessToken, t.server.projectId, [REDIRECT]);
  });

  test('a Basic header that is not percent-decodable is 401 invalid_client, not 500', async () => {
    const malformed = { Authorization: `Basic ${Buffer.from('%E0%A4%A:x').toString('base64')}` };
    const token = await form('/oauth2/token', { grant_type: 'client_credentials' }, malformed);
    expect(token.status, token.text).toBe(401);
    expect(token.body.error).toBe('invalid_client');
    const introspect = await form('/oauth2/introspect', { token: t.server.admin.accessToken }, malformed);
    expect(introspect.status, introspect.text).toBe(401);
    expect(introspect.body.error).toBe('invalid_client');
    const revoke = await form('/oauth2/revoke', { token: t.server.admin.accessToken }, malformed);
    expect(revoke.status, revoke.text).toBe(401);
    expect((await call(t.server.admin.accessToken, 'GET', '/auth/me')).status).toBe(200);
  });

  test('/auth/login with codeChallengeMethod S512 -> 400, no code', async () => {
    const { challenge } = pkce();
    const r = await call(undefined, 'POST', '/auth/login', {
      email: t.server.admin.email,
      password: t.server.admin.password,
      projectId: t.server.projectId,
      codeChallenge: challenge,
      codeChallengeMethod: 'S512',
    });
    expect(r.status, r.text).toBe(400);
    expect(r.body.code).toBeUndefined();
    expect(r.body.login).toBeUndefined();
  });

  test('/oauth2/revoke with an id_token does not end the login; the access token does', async () => {
    const tokens = await firstPartyTokens(t.server.admin.email, t.server.admin.password, t.server.projectId, 'openid');
    expect(typeof tokens.id_token).toBe('string');
    const revokeId = await form('/oauth2/revoke', { token: tokens.id_token });
    expect(revokeId.status, revokeId.text).toBe(200);
    expect((await call(tokens.access_token, 'GET', '/auth/me')).status).toBe(200);
    const revokeAccess = await form('/oauth2/revoke', { token: tokens.access_token });
    expect(revokeAccess.status).toBe(200);
    expect((await call(tokens.access_token, 'GET', '/auth/me')).status).toBe(401);
  });

  test("/oauth2/introspect by another project's client about this project's token -> {active:false}", async () => {
    const other = await registerProject('introspector');
    const otherClient = await newClient(other.token, other.projectId);
    const foreign = await form('/oauth2/introspect', { token: t.server.admin.accessToken }, basic(otherClient.id, otherClient.secret));
    expect(foreign.status, foreign.text).toBe(200);
    expect(foreign.body).toEqual({ active: false });
    const foreignBearer = await form('/oauth2/introspect', { token: t.server.admin.accessToken }, { Authorization: `Bearer ${other.token}` });
    expect(foreignBearer.status, foreignBearer.text).toBe(200);
    expect(foreignBearer.body).toEqual({ active: false });
    // a client of the token's own project learns about it
    const own = await form('/oauth2/introspect', { token: t.server.admin.accessToken }, basic(client.id, client.secret));
    expect(own.status, own.text).toBe(200);
    expect(own.body.active).toBe(true);
  });

  test('/oauth2/authorize with a 500-character or non-URL-safe code_challenge -> error redirect invalid_request', async () => {
    const authorize = async (challenge: string): Promise<URL> => {
      const url = new URL(t.server.baseUrl + 'oauth2/authorize');
      for (const [k, v] of Object.entries({ response_type: 'code', client_id: client.id, redirect_uri: REDIRECT, scope: 'openid', state: 'st-1', code_challenge: challenge, code_challenge_method: 'S256' })) {
        url.searchParams.set(k, v);
      }
      const res = await fetch(url, { redirect: 'manual' });
      expect(res.status).toBe(302);
      return new URL(res.headers.get('location') as string);
    };
    const standardBase64 = createHash('sha256').update('a verifier with + and / in its hash 12').digest('base64');
    for (const challenge of ['a'.repeat(500), `${'a'.repeat(40)}<script>`, `${'b'.repeat(43)} `, 'c'.repeat(42), `${'d'.repeat(40)}+/=`, standardBase64]) {
      const location = await authorize(challenge);
      expect(`${location.origin}${location.pathname}`, challenge).toBe(REDIRECT);
      expect(location.searchParams.get('error'), challenge).toBe('invalid_request');
      expect(location.searchParams.get('state')).toBe('st-1');
    }
    const ok = await authorize(pkce().challenge);
    expect(ok.pathname).toBe('/oauth');
    expect(ok.searchParams.get('error')).toBeNull();
  });
});
