import { createHash, createPublicKey, randomBytes, randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Bundle, ClientApplication, Observation, Patient, ProjectMembership } from '@medplum/fhirtypes';
import { createLocalJWKSet, decodeJwt, decodeProtectedHeader, exportJWK, generateKeyPair, jwtVerify, SignJWT } from 'jose';
import type { CryptoKey, JWK, JWTPayload } from 'jose';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { FHIR_JSON, startTestServer, unique, useTestServer } from './harness.ts';
import type { TestServer } from './harness.ts';

/*
 * OAuth 2.0 / OpenID Connect / SMART App Launch over real HTTP: discovery, the authorization
 * endpoint, the code flow without a browser, every grant and client authentication method, and
 * the attacks a token endpoint and a resource server must refuse.
 */

const t = useTestServer();

// ---------------------------------------------------------------------------------------------
// HTTP helpers

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Json = Record<string, any>;

interface Reply {
  status: number;
  headers: Headers;
  body: Json;
  text: string;
}

async function call(url: string, init: RequestInit = {}): Promise<Reply> {
  const res = await fetch(url, { redirect: 'manual', ...init });
  const text = await res.text();
  let body: Json = {};
  if (text) {
    try {
      body = JSON.parse(text) as Json;
    } catch {
      body = {};
    }
  }
  return { status: res.status, headers: res.headers, body, text };
}

const FORM = { 'Content-Type': 'application/x-www-form-urlencoded' };

function basic(id: string, secret: string): { Authorization: string } {
  return { Authorization: `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}` };
}

function bearer(token: string): { Authorization: string } {
  return { Authorization: `Bearer ${token}` };
}

/** POST a form to an /oauth2 endpoint. */
function postForm(s: TestServer, path: string, params: Record<string, string>, headers: Record<string, string> = {}): Promise<Reply> {
  return call(`${s.baseUrl}${path}`, { method: 'POST', headers: { ...FORM, ...headers }, body: new URLSearchParams(params).toString() });
}

function token(s: TestServer, params: Record<string, string>, headers: Record<string, string> = {}): Promise<Reply> {
  return postForm(s, 'oauth2/token', params, headers);
}

function postJson(s: TestServer, path: string, body: unknown, headers: Record<string, string> = {}): Promise<Reply> {
  return call(`${s.baseUrl}${path}`, { method: 'POST', headers: { 'Content-Type': 'application/json', ...headers }, body: JSON.stringify(body) });
}

function fhirAs(s: TestServer, accessToken: string, path: string, init: RequestInit = {}): Promise<Reply> {
  return call(`${s.fhirUrl}${path}`, { ...init, headers: { ...FHIR_JSON, ...bearer(accessToken), ...(init.headers as Record<string, string> | undefined) } });
}

function expectOAuthError(reply: Reply, status: number, error: string): void {
  expect({ status: reply.status, error: reply.body.error }).toEqual({ status, error });
  expect(typeof reply.body.error_description).toBe('string');
  expect(reply.body.access_token).toBeUndefined();
}

function expectUnauthorized(reply: Reply): void {
  expect(reply.status).toBe(401);
  expect(reply.body.resourceType).toBe('OperationOutcome');
  expect(reply.headers.get('www-authenticate')).toMatch(/^Bearer/);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// ---------------------------------------------------------------------------------------------
// PKCE, fixtures, flows

function pkce(): { verifier: string; challenge: string } {
  const verifier = randomBytes(32).toString('base64url');
  return { verifier, challenge: createHash('sha256').update(verifier).digest('base64url') };
}

interface TestUser {
  email: string;
  password: string;
  firstName: string;
  lastName: string;
  membership: ProjectMembership;
  profileRef: string;
}

async function inviteUser(s: TestServer, resourceType: 'Practitioner' | 'Patient' = 'Practitioner', firstName = 'Ada', lastName = 'Lovelace'): Promise<TestUser> {
  const email = `${unique('user')}@example.com`.toLowerCase();
  const password = `pw-${randomBytes(12).toString('hex')}`;
  const res = await postJson(s, `admin/projects/${s.projectId}/invite`, { resourceType, firstName, lastName, email, password }, s.authorization);
  expect(res.status, res.text).toBeLessThan(300);
  const membership = res.body as ProjectMembership;
  return { email, password, firstName, lastName, membership, profileRef: membership.profile?.reference as string };
}

type Client = ClientApplication & { id: string; secret: string };

async function createClient(s: TestServer, body: Json = {}): Promise<Client> {
  const res = await postJson(s, `admin/projects/${s.projectId}/client`, { name: unique('client'), ...body }, s.authorization);
  expect(res.status, res.text).toBe(201);
  expect(res.body.secret).toMatch(/^\S{16,}$/);
  return res.body as Client;
}

async function clientToken(s: TestServer, client: Client, scope?: string): Promise<Json> {
  const res = await token(s, { grant_type: 'client_credentials', ...(scope ? { scope } : {}) }, basic(client.id, client.secret));
  expect(res.status, res.text).toBe(200);
  return res.body;
}

function authorizeUrl(s: TestServer, params: Record<string, string>): string {
  return `${s.baseUrl}oauth2/authorize?${new URLSearchParams(params)}`;
}

interface CodeFlow {
  code: string;
  verifier: string;
  challenge: string;
  redirectUri: string;
  login: string;
}

/**
 * What the login page does after /oauth2/authorize: /auth/login with the client and the PKCE
 * challenge of the authorization request. Without `redirectUri` the authorize step is skipped.
 */
async function codeFor(
  s: TestServer,
  user: { email: string; password: string },
  options: { client?: Client; scope?: string; nonce?: string; redirectUri?: string; authorize?: boolean; challenge?: { verifier: string; challenge: string }; method?: string } = {}
): Promise<CodeFlow> {
  const p = options.challenge ?? pkce();
  const redirectUri = options.redirectUri ?? options.client?.redirectUris?.[0] ?? '';
  if (options.client && options.authorize !== false) {
    const res = await call(
      authorizeUrl(s, {
        response_type: 'code',
        client_id: options.client.id,
        redirect_uri: redirectUri,
        scope: options.scope ?? 'openid',
        state: 'st',
        code_challenge: p.challenge,
        code_challenge_method: 'S256',
        ...(options.nonce ? { nonce: options.nonce } : {}),
      })
    );
    expect(res.status, res.text).toBe(302);
    expect(res.headers.get('location')).toMatch(new RegExp(`^${escapeRe(`${s.services.config.appBaseUrl}oauth?`)}`));
  }
  const res = await postJson(s, 'auth/login', {
    email: user.email,
    password: user.password,
    scope: options.scope ?? 'openid',
    ...(options.client ? { clientId: options.client.id } : {}),
    ...(options.nonce ? { nonce: options.nonce } : {}),
    ...(options.method === 'none' ? {} : { codeChallenge: p.challenge, codeChallengeMethod: options.method ?? 'S256' }),
  });
  expect(res.status, res.text).toBe(200);
  expect(res.body.code, res.text).toMatch(/^[0-9a-f]{32}$/);
  return { code: res.body.code, verifier: p.verifier, challenge: p.challenge, redirectUri, login: res.body.login };
}

/** The token request of a code flow (public client with PKCE, or a first-party sign-in). */
function redeem(s: TestServer, flow: CodeFlow, client?: Client, extra: Record<string, string> = {}, headers: Record<string, string> = {}): Promise<Reply> {
  return token(
    s,
    {
      grant_type: 'authorization_code',
      code: flow.code,
      code_verifier: flow.verifier,
      ...(client ? { client_id: client.id, redirect_uri: flow.redirectUri } : {}),
      ...extra,
    },
    headers
  );
}

async function signInTokens(s: TestServer, user: { email: string; password: string }, scope: string, client?: Client, nonce?: string): Promise<Json> {
  const flow = await codeFor(s, user, { client, scope, nonce });
  const res = await redeem(s, flow, client);
  expect(res.status, res.text).toBe(200);
  return res.body;
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

async function serverJwks(s: TestServer): Promise<{ keys: JWK[] }> {
  const res = await call(`${s.baseUrl}.well-known/jwks.json`);
  expect(res.status).toBe(200);
  return res.body as { keys: JWK[] };
}

/** Splits a compact JWS. */
function parts(jwt: string): { header: Json; payload: Json; signature: string } {
  const [h, p, sig] = jwt.split('.');
  return {
    header: JSON.parse(Buffer.from(h, 'base64url').toString('utf8')) as Json,
    payload: JSON.parse(Buffer.from(p, 'base64url').toString('utf8')) as Json,
    signature: sig,
  };
}

function b64json(value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

async function createPatient(s: TestServer, family = unique('fam')): Promise<Patient & { id: string }> {
  const res = await s.fhir('Patient', { method: 'POST', headers: FHIR_JSON, body: JSON.stringify({ resourceType: 'Patient', name: [{ family, given: ['Test'] }] }) });
  expect(res.status).toBe(201);
  return (await res.json()) as Patient & { id: string };
}

async function createObservation(s: TestServer, patientId: string, code: string, system = 'http://loinc.org'): Promise<Observation & { id: string }> {
  const res = await s.fhir('Observation', {
    method: 'POST',
    headers: FHIR_JSON,
    body: JSON.stringify({ resourceType: 'Observation', status: 'final', code: { coding: [{ system, code }] }, subject: { reference: `Patient/${patientId}` } }),
  });
  expect(res.status).toBe(201);
  return (await res.json()) as Observation & { id: string };
}

function ids(bundle: Json): string[] {
  return ((bundle as Bundle).entry ?? []).filter((e) => e.search?.mode !== 'outcome' && e.resource?.resourceType !== 'OperationOutcome').map((e) => `${e.resource?.resourceType}/${e.resource?.id}`);
}

// ---------------------------------------------------------------------------------------------
// Shared fixtures of the main server

const REDIRECT = 'https://app.example.org/callback';
const REDIRECT_2 = 'https://app.example.org/other-callback';

let user: TestUser;
let clientA: Client;
let clientB: Client;

beforeAll(async () => {
  user = await inviteUser(t.server);
  clientA = await createClient(t.server, { redirectUris: [REDIRECT, REDIRECT_2] });
  clientB = await createClient(t.server, { redirectUris: ['https://b.example.org/cb'] });
});

// ---------------------------------------------------------------------------------------------

describe('discovery', () => {
  test('/.well-known/openid-configuration names this server and its endpoints', async () => {
    const res = await call(`${t.server.baseUrl}.well-known/openid-configuration`);
    expect(res.status).toBe(200);
    const base = t.server.baseUrl;
    expect(res.body).toMatchObject({
      issuer: base,
      authorization_endpoint: `${base}oauth2/authorize`,
      token_endpoint: `${base}oauth2/token`,
      userinfo_endpoint: `${base}oauth2/userinfo`,
      jwks_uri: `${base}.well-known/jwks.json`,
      introspection_endpoint: `${base}oauth2/introspect`,
      code_challenge_methods_supported: ['S256'],
    });
    expect(res.body.response_types_supported).toContain('code');
    expect(res.body.id_token_signing_alg_values_supported).toContain('ES256');
    expect(res.body.subject_types_supported).toContain('public');
    expect(res.body.grant_types_supported).toEqual(expect.arrayContaining(['authorization_code', 'client_credentials', 'refresh_token']));
    expect(res.body.token_endpoint_auth_methods_supported).toEqual(expect.arrayContaining(['client_secret_basic', 'client_secret_post', 'private_key_jwt']));
    expect(res.body.scopes_supported).toEqual(expect.arrayContaining(['openid', 'profile', 'email', 'offline_access']));
  });

  test('/.well-known/jwks.json publishes the ES256 public key and nothing private', async () => {
    const jwks = await serverJwks(t.server);
    expect(jwks.keys.length).toBeGreaterThanOrEqual(1);
    for (const key of jwks.keys) {
      expect(key).toMatchObject({ kty: 'EC', crv: 'P-256', alg: 'ES256', use: 'sig' });
      expect(key.kid).toMatch(/\S+/);
      expect(key.x).toMatch(/^[A-Za-z0-9_-]{43}$/);
      expect(key.y).toMatch(/^[A-Za-z0-9_-]{43}$/);
      for (const secret of ['d', 'p', 'q', 'dp', 'dq', 'qi', 'k']) {
        expect(key).not.toHaveProperty(secret);
      }
    }
    // The admin's token is signed by a published key.
    const header = decodeProtectedHeader(t.server.admin.accessToken);
    expect(header.alg).toBe('ES256');
    expect(jwks.keys.map((k) => k.kid)).toContain(header.kid);
    await expect(jwtVerify(t.server.admin.accessToken, createLocalJWKSet(jwks), { issuer: t.server.baseUrl })).resolves.toBeTruthy();
  });

  test.each(['.well-known/smart-configuration', 'fhir/R4/.well-known/smart-configuration'])('/%s has the SMART App Launch 2 fields', async (path) => {
    const res = await call(`${t.server.baseUrl}${path}`);
    expect(res.status).toBe(200);
    const base = t.server.baseUrl;
    expect(res.body).toMatchObject({
      issuer: base,
      jwks_uri: `${base}.well-known/jwks.json`,
      authorization_endpoint: `${base}oauth2/authorize`,
      token_endpoint: `${base}oauth2/token`,
      code_challenge_methods_supported: ['S256'],
    });
    expect(res.body.grant_types_supported).toEqual(expect.arrayContaining(['authorization_code', 'client_credentials']));
    expect(res.body.response_types_supported).toContain('code');
    expect(res.body.token_endpoint_auth_methods_supported).toEqual(expect.arrayContaining(['private_key_jwt', 'client_secret_basic']));
    expect(res.body.capabilities).toEqual(
      expect.arrayContaining(['launch-standalone', 'permission-v2', 'permission-v1', 'client-confidential-asymmetric', 'client-public', 'sso-openid-connect', 'context-standalone-patient'])
    );
    expect(res.body.scopes_supported).toEqual(expect.arrayContaining(['openid', 'fhirUser', 'launch/patient', 'offline_access']));
  });

  test('both SMART configuration documents are the same and need no token', async () => {
    const a = await call(`${t.server.baseUrl}.well-known/smart-configuration`);
    const b = await call(`${t.server.fhirUrl}.well-known/smart-configuration`);
    expect(a.body).toEqual(b.body);
  });
});

// ---------------------------------------------------------------------------------------------

describe('/oauth2/authorize', () => {
  const valid = (over: Record<string, string> = {}): Record<string, string> => ({
    response_type: 'code',
    client_id: clientA.id,
    redirect_uri: REDIRECT,
    scope: 'openid profile launch/patient patient/*.rs',
    state: 'state-123',
    nonce: 'nonce-456',
    code_challenge: pkce().challenge,
    code_challenge_method: 'S256',
    aud: t.server.fhirUrl.replace(/\/$/, ''),
    ...over,
  });

  function location(res: Reply): URL {
    expect(res.status, res.text).toBe(302);
    return new URL(res.headers.get('location') as string);
  }

  function expectErrorRedirect(res: Reply, error: string, state = 'state-123'): void {
    const url = location(res);
    expect(`${url.origin}${url.pathname}`).toBe(REDIRECT);
    expect(url.searchParams.get('error')).toBe(error);
    expect(url.searchParams.get('error_description')).toBeTruthy();
    expect(url.searchParams.get('state')).toBe(state);
    expect(url.searchParams.get('code')).toBeNull();
  }

  test('a valid request redirects to the login page with the parameters', async () => {
    const params = valid();
    const res = await call(authorizeUrl(t.server, params));
    const url = location(res);
    expect(url.toString().startsWith(`${t.server.services.config.appBaseUrl}oauth?`)).toBe(true);
    for (const key of ['response_type', 'client_id', 'redirect_uri', 'scope', 'state', 'nonce', 'code_challenge', 'code_challenge_method', 'aud']) {
      expect(url.searchParams.get(key), key).toBe(params[key]);
    }
  });

  test('aud with a trailing slash is the same FHIR base', async () => {
    const url = location(await call(authorizeUrl(t.server, valid({ aud: t.server.fhirUrl }))));
    expect(url.pathname).toBe('/oauth');
    expect(url.searchParams.get('error')).toBeNull();
  });

  test('unknown client: 400 OperationOutcome, no redirect', async () => {
    const res = await call(authorizeUrl(t.server, valid({ client_id: randomUUID() })));
    expect(res.status).toBe(400);
    expect(res.headers.get('location')).toBeNull();
    expect(res.body.resourceType).toBe('OperationOutcome');
  });

  test('missing client_id: 400, no redirect', async () => {
    const params = valid();
    delete params.client_id;
    const res = await call(authorizeUrl(t.server, params));
    expect(res.status).toBe(400);
    expect(res.headers.get('location')).toBeNull();
  });

  test.each([
    ['an unregistered redirect_uri', 'https://evil.example.org/callback'],
    ['a registered redirect_uri with an extra path', `${REDIRECT}/x`],
    ['a registered redirect_uri with a query', `${REDIRECT}?next=https://evil.example.org`],
    ['a prefix of a registered redirect_uri', 'https://app.example.org/'],
  ])('%s: 400 OperationOutcome, no redirect', async (_name, redirectUri) => {
    const res = await call(authorizeUrl(t.server, valid({ redirect_uri: redirectUri })));
    expect(res.status).toBe(400);
    expect(res.headers.get('location')).toBeNull();
    expect(res.body.resourceType).toBe('OperationOutcome');
  });

  test('redirect_uri may be omitted only when the client has exactly one', async () => {
    const params = valid({ client_id: clientB.id });
    delete params.redirect_uri;
    const one = location(await call(authorizeUrl(t.server, params)));
    expect(one.searchParams.get('redirect_uri')).toBe('https://b.example.org/cb');

    const two = valid();
    delete two.redirect_uri;
    const res = await call(authorizeUrl(t.server, two));
    expect(res.status).toBe(400);
    expect(res.headers.get('location')).toBeNull();
  });

  test.each(['token', 'id_token', 'code token', ''])('response_type=%j: redirect with unsupported_response_type and the state', async (responseType) => {
    expectErrorRedirect(await call(authorizeUrl(t.server, valid({ response_type: responseType }))), 'unsupported_response_type');
  });

  test('missing code_challenge for a client that requires PKCE: invalid_request', async () => {
    const params = valid();
    delete params.code_challenge;
    delete params.code_challenge_method;
    expectErrorRedirect(await call(authorizeUrl(t.server, params)), 'invalid_request');
  });

  test('code_challenge_method=plain: invalid_request', async () => {
    expectErrorRedirect(await call(authorizeUrl(t.server, valid({ code_challenge_method: 'plain' }))), 'invalid_request');
  });

  test('a code_challenge without a method (plain by default): invalid_request', async () => {
    const params = valid();
    delete params.code_challenge_method;
    expectErrorRedirect(await call(authorizeUrl(t.server, params)), 'invalid_request');
  });

  test('a pkceOptional client may omit the challenge', async () => {
    const optional = await createClient(t.server, { redirectUris: [REDIRECT], pkceOptional: true });
    const params = valid({ client_id: optional.id });
    delete params.code_challenge;
    delete params.code_challenge_method;
    const url = location(await call(authorizeUrl(t.server, params)));
    expect(url.pathname).toBe('/oauth');
    expect(url.searchParams.get('error')).toBeNull();
  });

  test.each(['https://evil.example.org/fhir/R4', 'http://localhost:1/fhir/R4', `${'x'}`])('wrong aud %j: invalid_request', async (aud) => {
    expectErrorRedirect(await call(authorizeUrl(t.server, valid({ aud }))), 'invalid_request');
  });

  test.each(['openid nonsense', 'patient/Observation.xyz', 'admin', 'user/Observation.'])('unknown scope %j: invalid_scope', async (scope) => {
    expectErrorRedirect(await call(authorizeUrl(t.server, valid({ scope }))), 'invalid_scope');
  });

  test('an error redirect without state has no state', async () => {
    const params = valid({ response_type: 'token' });
    delete params.state;
    const url = location(await call(authorizeUrl(t.server, params)));
    expect(url.searchParams.get('error')).toBe('unsupported_response_type');
    expect(url.searchParams.has('state')).toBe(false);
  });

  test('the POST form variant works like GET', async () => {
    const params = valid();
    const res = await postForm(t.server, 'oauth2/authorize', params);
    const url = location(res);
    expect(url.toString().startsWith(`${t.server.services.config.appBaseUrl}oauth?`)).toBe(true);
    expect(url.searchParams.get('client_id')).toBe(clientA.id);
    expect(url.searchParams.get('state')).toBe('state-123');
    expect(url.searchParams.get('code_challenge')).toBe(params.code_challenge);

    const bad = await postForm(t.server, 'oauth2/authorize', valid({ response_type: 'token' }));
    expectErrorRedirect(bad, 'unsupported_response_type');
  });

  test('a repeated parameter is refused', async () => {
    const query = `${new URLSearchParams(valid())}&redirect_uri=${encodeURIComponent('https://evil.example.org/cb')}`;
    const res = await call(`${t.server.baseUrl}oauth2/authorize?${query}`);
    expect(res.status).toBe(400);
    expect(res.headers.get('location')).toBeNull();
  });
});

// ---------------------------------------------------------------------------------------------

describe('authorization_code flow without a browser', () => {
  test('authorize, /auth/login with the client and S256 challenge, token: tokens, id_token, context', async () => {
    const nonce = `n-${randomUUID()}`;
    const flow = await codeFor(t.server, user, { client: clientA, scope: 'openid profile email', nonce });
    const res = await redeem(t.server, flow, clientA);
    expect(res.status, res.text).toBe(200);
    expect(res.headers.get('cache-control')).toContain('no-store');
    const body = res.body;
    expect(body).toMatchObject({
      token_type: 'Bearer',
      scope: 'openid profile email',
      project: { reference: `Project/${t.server.projectId}` },
      profile: { reference: user.profileRef },
    });
    expect(body.expires_in).toBe(3600);
    expect(typeof body.access_token).toBe('string');
    expect(body.refresh_token).toBeUndefined();

    const jwks = createLocalJWKSet(await serverJwks(t.server));
    const { payload: id } = await jwtVerify(body.id_token as string, jwks, { issuer: t.server.baseUrl, audience: clientA.id });
    expect(id.nonce).toBe(nonce);
    expect(id.fhirUser).toBe(`${t.server.fhirUrl}${user.profileRef}`);
    expect(typeof id.sub).toBe('string');
    expect(typeof id.auth_time).toBe('number');
    expect(id.email).toBe(user.email);

    const { payload: access } = await jwtVerify(body.access_token as string, jwks, { issuer: t.server.baseUrl });
    expect(access.client_id).toBe(clientA.id);
    expect(typeof access.login_id).toBe('string');
    expect(access.scope).toBe('openid profile email');

    const patients = await fhirAs(t.server, body.access_token, 'Patient?_count=1');
    expect(patients.status).toBe(200);
    expect(patients.body.resourceType).toBe('Bundle');
  });

  test('the login page gets the same sign-in with GET /auth/login/:id', async () => {
    const flow = await codeFor(t.server, user, { client: clientA });
    const res = await call(`${t.server.baseUrl}auth/login/${flow.login}`);
    expect(res.status).toBe(200);
    expect(res.body.login).toBe(flow.login);
  });

  test('a refresh token only with offline_access', async () => {
    const without = await signInTokens(t.server, user, 'openid', clientA);
    expect(without.refresh_token).toBeUndefined();
    const withOffline = await signInTokens(t.server, user, 'openid offline_access', clientA);
    expect(typeof withOffline.refresh_token).toBe('string');
    const refreshed = await token(t.server, { grant_type: 'refresh_token', refresh_token: withOffline.refresh_token, client_id: clientA.id }, basic(clientA.id, clientA.secret));
    expect(refreshed.status, refreshed.text).toBe(200);
    expect(refreshed.body.scope).toBe('openid offline_access');
    expect(typeof refreshed.body.access_token).toBe('string');
    expect(refreshed.body.refresh_token).not.toBe(withOffline.refresh_token);
    expect((await fhirAs(t.server, refreshed.body.access_token, 'Patient?_count=1')).status).toBe(200);
  });

  test('without openid there is no id_token', async () => {
    const body = await signInTokens(t.server, user, 'user/Patient.rs', clientA);
    expect(body.id_token).toBeUndefined();
    expect(body.scope).toBe('user/Patient.rs');
  });

  test('a first-party sign-in (no client) redeems its code without client_id', async () => {
    const body = await signInTokens(t.server, user, 'openid');
    expect(body.profile.reference).toBe(user.profileRef);
    const { payload } = await jwtVerify(body.id_token as string, createLocalJWKSet(await serverJwks(t.server)), { issuer: t.server.baseUrl });
    expect(payload.fhirUser).toBe(`${t.server.fhirUrl}${user.profileRef}`);
  });

  test('/auth/login with a wrong password gives no code', async () => {
    const res = await postJson(t.server, 'auth/login', { email: user.email, password: 'wrong-password-1', clientId: clientA.id, codeChallenge: pkce().challenge, codeChallengeMethod: 'S256' });
    expect(res.status).toBe(400);
    expect(res.body.code).toBeUndefined();
    expect(res.body.resourceType).toBe('OperationOutcome');
  });

  test('/auth/login with an unknown clientId or scope is refused', async () => {
    const unknownClient = await postJson(t.server, 'auth/login', { email: user.email, password: user.password, clientId: randomUUID() });
    expect(unknownClient.status).toBe(400);
    expect(unknownClient.body.code).toBeUndefined();
    const unknownScope = await postJson(t.server, 'auth/login', { email: user.email, password: user.password, scope: 'openid superpowers' });
    expect(unknownScope.status).toBe(400);
    expect(unknownScope.body.code).toBeUndefined();
  });
});

// ---------------------------------------------------------------------------------------------

describe('attacks on the authorization code', () => {
  test('PKCE: no code_verifier → invalid_grant', async () => {
    const flow = await codeFor(t.server, user, { client: clientA });
    const res = await token(t.server, { grant_type: 'authorization_code', code: flow.code, client_id: clientA.id, redirect_uri: flow.redirectUri });
    expectOAuthError(res, 400, 'invalid_grant');
  });

  test('PKCE: a wrong code_verifier → invalid_grant', async () => {
    const flow = await codeFor(t.server, user, { client: clientA });
    expectOAuthError(await redeem(t.server, { ...flow, verifier: pkce().verifier }, clientA), 400, 'invalid_grant');
    // The challenge itself is not a verifier either.
    expectOAuthError(await redeem(t.server, { ...flow, verifier: flow.challenge }, clientA), 400, 'invalid_grant');
  });

  test('PKCE: a wrong verifier is refused even with the client secret', async () => {
    const flow = await codeFor(t.server, user, { client: clientA });
    expectOAuthError(await redeem(t.server, { ...flow, verifier: pkce().verifier }, clientA, {}, basic(clientA.id, clientA.secret)), 400, 'invalid_grant');
  });

  test('PKCE: a plain challenge for a client code is refused at the token endpoint', async () => {
    const verifier = pkce().verifier;
    const flow = await codeFor(t.server, user, { client: clientA, authorize: false, challenge: { verifier, challenge: verifier }, method: 'plain' });
    expectOAuthError(await redeem(t.server, flow, clientA), 400, 'invalid_grant');
    expectOAuthError(await redeem(t.server, flow, clientA, {}, basic(clientA.id, clientA.secret)), 400, 'invalid_grant');
  });

  test('PKCE: a client code without any challenge is refused', async () => {
    const flow = await codeFor(t.server, user, { client: clientA, authorize: false, method: 'none' });
    // Without client authentication a confidential client's code cannot be redeemed at all ...
    expectOAuthError(await redeem(t.server, flow, clientA), 401, 'invalid_client');
    // ... and with it, the missing PKCE challenge is still an error.
    expectOAuthError(await redeem(t.server, flow, clientA, {}, basic(clientA.id, clientA.secret)), 400, 'invalid_grant');
  });

  test('code replay: the second redemption fails and revokes what the first one issued', async () => {
    const flow = await codeFor(t.server, user, { client: clientA, scope: 'openid offline_access' });
    const first = await redeem(t.server, flow, clientA);
    expect(first.status, first.text).toBe(200);
    const access = first.body.access_token as string;
    expect((await fhirAs(t.server, access, 'Patient?_count=1')).status).toBe(200);

    const second = await redeem(t.server, flow, clientA);
    expectOAuthError(second, 400, 'invalid_grant');

    expectUnauthorized(await fhirAs(t.server, access, 'Patient?_count=1'));
    const introspection = await postForm(t.server, 'oauth2/introspect', { token: access }, t.server.authorization);
    expect(introspection.status).toBe(200);
    expect(introspection.body).toEqual({ active: false });
    const refresh = await token(t.server, { grant_type: 'refresh_token', refresh_token: first.body.refresh_token }, basic(clientA.id, clientA.secret));
    expectOAuthError(refresh, 400, 'invalid_grant');
  });

  test('redirect_uri at the token endpoint different from the authorize one → invalid_grant', async () => {
    const flow = await codeFor(t.server, user, { client: clientA, redirectUri: REDIRECT });
    // REDIRECT_2 is registered for the client, but it is not the one the code was sent to.
    expectOAuthError(await redeem(t.server, { ...flow, redirectUri: REDIRECT_2 }, clientA), 400, 'invalid_grant');
    expectOAuthError(await redeem(t.server, { ...flow, redirectUri: 'https://evil.example.org/callback' }, clientA), 400, 'invalid_grant');
    // Omitted although the authorization request had one.
    expectOAuthError(await token(t.server, { grant_type: 'authorization_code', code: flow.code, code_verifier: flow.verifier, client_id: clientA.id }), 400, 'invalid_grant');
    // The code is still good for the right redirect_uri.
    const ok = await redeem(t.server, flow, clientA);
    expect(ok.status, ok.text).toBe(200);
  });

  test('a code issued to client A, redeemed by client B → invalid_grant', async () => {
    const flow = await codeFor(t.server, user, { client: clientA });
    expectOAuthError(await redeem(t.server, flow, clientB), 400, 'invalid_grant');
    expectOAuthError(await redeem(t.server, { ...flow, redirectUri: 'https://b.example.org/cb' }, clientB, {}, basic(clientB.id, clientB.secret)), 400, 'invalid_grant');
    expectOAuthError(
      await token(t.server, { grant_type: 'authorization_code', code: flow.code, code_verifier: flow.verifier, redirect_uri: flow.redirectUri }, basic(clientB.id, clientB.secret)),
      400,
      'invalid_grant'
    );
  });

  test('a client code redeemed without naming the client → refused', async () => {
    const flow = await codeFor(t.server, user, { client: clientA });
    const res = await token(t.server, { grant_type: 'authorization_code', code: flow.code, code_verifier: flow.verifier, redirect_uri: flow.redirectUri });
    expectOAuthError(res, 400, 'invalid_grant');
  });

  test('a first-party code redeemed by a client → invalid_grant', async () => {
    const flow = await codeFor(t.server, user, {});
    expectOAuthError(await redeem(t.server, flow, undefined, { client_id: clientA.id }), 400, 'invalid_grant');
  });

  test.each([
    ['a garbage code (what an expired code looks like to the server)', 'not-a-code', 'invalid_grant'],
    ['an unknown code of the right shape', randomBytes(16).toString('hex'), 'invalid_grant'],
    ['an empty code', '', 'invalid_request'],
  ])('%s → %s', async (_name, code, error) => {
    expectOAuthError(await token(t.server, { grant_type: 'authorization_code', code, code_verifier: pkce().verifier }), 400, error);
    expectOAuthError(await token(t.server, { grant_type: 'authorization_code', code, code_verifier: pkce().verifier, client_id: clientA.id, redirect_uri: REDIRECT }), 400, error);
  });
});

// ---------------------------------------------------------------------------------------------

describe('attacks on bearer tokens', () => {
  let victimToken: string;

  beforeAll(async () => {
    const tokens = await signInTokens(t.server, user, 'openid user/Patient.rs', clientA);
    victimToken = tokens.access_token as string;
    expect((await fhirAs(t.server, victimToken, 'Patient?_count=1')).status).toBe(200);
  });

  test('no token, a malformed token, an unknown scheme → 401 with WWW-Authenticate', async () => {
    expectUnauthorized(await call(`${t.server.fhirUrl}Patient`));
    expectUnauthorized(await fhirAs(t.server, 'not.a.jwt', 'Patient'));
    expectUnauthorized(await fhirAs(t.server, '', 'Patient'));
    expectUnauthorized(await call(`${t.server.fhirUrl}Patient`, { headers: { Authorization: `Token ${victimToken}` } }));
  });

  test('expired access token (client accessTokenLifetime 1s) → 401', async () => {
    const shortLived = await createClient(t.server, { accessTokenLifetime: '1s' });
    const body = await clientToken(t.server, shortLived);
    expect(body.expires_in).toBe(1);
    const claims = decodeJwt(body.access_token as string);
    expect((claims.exp as number) - (claims.iat as number)).toBe(1);
    await sleep(2100);
    expectUnauthorized(await fhirAs(t.server, body.access_token, 'Patient?_count=1'));
    // Its signature is fine: expiry alone is why it is refused.
    const jwks = createLocalJWKSet(await serverJwks(t.server));
    await expect(jwtVerify(body.access_token as string, jwks, { currentDate: new Date((claims.iat as number) * 1000) })).resolves.toBeTruthy();
    const introspection = await postForm(t.server, 'oauth2/introspect', { token: body.access_token }, t.server.authorization);
    expect(introspection.body).toEqual({ active: false });
  });

  test('tampered payload with the original signature → 401', async () => {
    const { header, payload, signature } = parts(victimToken);
    const widened = `${b64json(header)}.${b64json({ ...payload, scope: 'openid user/*.cruds' })}.${signature}`;
    expectUnauthorized(await fhirAs(t.server, widened, 'Patient?_count=1'));
    const later = `${b64json(header)}.${b64json({ ...payload, exp: (payload.exp as number) + 86400 })}.${signature}`;
    expectUnauthorized(await fhirAs(t.server, later, 'Patient?_count=1'));
    const otherLogin = `${b64json(header)}.${b64json({ ...payload, login_id: randomUUID() })}.${signature}`;
    expectUnauthorized(await fhirAs(t.server, otherLogin, 'Patient?_count=1'));
  });

  test('signed with another ES256 key under the server kid → 401', async () => {
    const { header, payload } = parts(victimToken);
    const { privateKey } = await generateKeyPair('ES256');
    const forged = await new SignJWT({ ...payload, scope: 'openid user/*.cruds' }).setProtectedHeader({ alg: 'ES256', kid: header.kid, typ: 'JWT' }).sign(privateKey);
    expectUnauthorized(await fhirAs(t.server, forged, 'Patient?_count=1'));
  });

  test('signed with another key that is embedded in the header (jwk injection) → 401', async () => {
    const { payload } = parts(victimToken);
    const { privateKey, publicKey } = await generateKeyPair('ES256');
    const forged = await new SignJWT(payload).setProtectedHeader({ alg: 'ES256', jwk: await exportJWK(publicKey), typ: 'JWT' }).sign(privateKey);
    expectUnauthorized(await fhirAs(t.server, forged, 'Patient?_count=1'));
  });

  test('alg none, unsigned → 401', async () => {
    const { header, payload } = parts(victimToken);
    for (const alg of ['none', 'None', 'NONE']) {
      const unsigned = `${b64json({ alg, typ: 'JWT' })}.${b64json(payload)}.`;
      expectUnauthorized(await fhirAs(t.server, unsigned, 'Patient?_count=1'));
      const withKid = `${b64json({ alg, kid: header.kid, typ: 'JWT' })}.${b64json(payload)}.`;
      expectUnauthorized(await fhirAs(t.server, withKid, 'Patient?_count=1'));
    }
  });

  test('HS256 signed with the public key (as JWK JSON, PEM, raw coordinates) or any secret → 401', async () => {
    const { header, payload } = parts(victimToken);
    const jwks = await serverJwks(t.server);
    const jwk = jwks.keys.find((k) => k.kid === header.kid) as JWK;
    const pem = createPublicKey({ key: jwk as import('node:crypto').JsonWebKey, format: 'jwk' }).export({ type: 'spki', format: 'pem' }) as string;
    const der = createPublicKey({ key: jwk as import('node:crypto').JsonWebKey, format: 'jwk' }).export({ type: 'spki', format: 'der' });
    const secrets: Uint8Array[] = [
      new TextEncoder().encode(JSON.stringify(jwk)),
      new TextEncoder().encode(pem),
      new Uint8Array(der),
      Buffer.concat([Buffer.from(jwk.x as string, 'base64url'), Buffer.from(jwk.y as string, 'base64url')]),
      new TextEncoder().encode('secret'),
    ];
    for (const secret of secrets) {
      const forged = await new SignJWT(payload).setProtectedHeader({ alg: 'HS256', kid: header.kid, typ: 'JWT' }).sign(secret);
      expectUnauthorized(await fhirAs(t.server, forged, 'Patient?_count=1'));
    }
  });

  test('id_token and refresh_token used as bearer access tokens → 401', async () => {
    const tokens = await signInTokens(t.server, user, 'openid offline_access', clientA);
    expect((await fhirAs(t.server, tokens.access_token, 'Patient?_count=1')).status).toBe(200);
    expectUnauthorized(await fhirAs(t.server, tokens.id_token, 'Patient?_count=1'));
    expectUnauthorized(await fhirAs(t.server, tokens.refresh_token, 'Patient?_count=1'));
    const me = await call(`${t.server.baseUrl}auth/me`, { headers: bearer(tokens.id_token) });
    expect(me.status).toBe(401);
  });

  test('an access token or id_token used as a refresh token → invalid_grant', async () => {
    const tokens = await signInTokens(t.server, user, 'openid offline_access', clientA);
    for (const wrong of [tokens.access_token, tokens.id_token, 'garbage']) {
      expectOAuthError(await token(t.server, { grant_type: 'refresh_token', refresh_token: wrong }, basic(clientA.id, clientA.secret)), 400, 'invalid_grant');
    }
  });
});

// ---------------------------------------------------------------------------------------------

describe('refresh tokens', () => {
  test('a refresh may not widen the scope (invalid_scope), and the login stays valid', async () => {
    const tokens = await signInTokens(t.server, user, 'openid offline_access user/Patient.rs');
    for (const wider of ['openid offline_access user/Patient.rs user/Observation.rs', 'openid offline_access user/Patient.cruds', 'user/*.cruds', 'openid offline_access user/Patient.rs profile']) {
      const res = await token(t.server, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token, scope: wider });
      expectOAuthError(res, 400, 'invalid_scope');
    }
    expect((await fhirAs(t.server, tokens.access_token, 'Patient?_count=1')).status).toBe(200);
    const refreshed = await token(t.server, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token });
    expect(refreshed.status, refreshed.text).toBe(200);
    expect(refreshed.body.scope).toBe('openid offline_access user/Patient.rs');
    const created = await fhirAs(t.server, refreshed.body.access_token, 'Patient', { method: 'POST', body: JSON.stringify({ resourceType: 'Patient' }) });
    expect(created.status).toBe(403);
  });

  test('a narrower refresh keeps the resource restrictions of the grant', async () => {
    const tokens = await signInTokens(t.server, user, 'openid offline_access user/Patient.rs');
    const narrower = await token(t.server, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token, scope: 'openid offline_access' });
    expect(narrower.status, narrower.text).toBe(200);
    expect(narrower.body.scope).toBe('openid offline_access');
    // Dropping the resource scopes must not turn a Patient-read-only grant into the user's full access.
    const observation = await fhirAs(t.server, narrower.body.access_token, 'Observation?_count=1');
    expect(observation.status).toBe(403);
    const created = await fhirAs(t.server, narrower.body.access_token, 'Patient', { method: 'POST', body: JSON.stringify({ resourceType: 'Patient' }) });
    expect(created.status).toBe(403);
  });

  test('reuse of a rotated refresh token → invalid_grant and the whole login is revoked', async () => {
    const tokens = await signInTokens(t.server, user, 'openid offline_access');
    const first = await token(t.server, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token });
    expect(first.status, first.text).toBe(200);
    expect((await fhirAs(t.server, first.body.access_token, 'Patient?_count=1')).status).toBe(200);

    const reuse = await token(t.server, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token });
    expectOAuthError(reuse, 400, 'invalid_grant');

    expectUnauthorized(await fhirAs(t.server, first.body.access_token, 'Patient?_count=1'));
    expectUnauthorized(await fhirAs(t.server, tokens.access_token, 'Patient?_count=1'));
    expectOAuthError(await token(t.server, { grant_type: 'refresh_token', refresh_token: first.body.refresh_token }), 400, 'invalid_grant');
  });

  test('a login bound by PKCE refreshes with the client id alone (as a browser app does); another client may not use the token', async () => {
    const tokens = await signInTokens(t.server, user, 'openid offline_access', clientA);
    expectOAuthError(await token(t.server, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token }, basic(clientB.id, clientB.secret)), 400, 'invalid_grant');
    expectOAuthError(await token(t.server, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token, client_id: clientB.id }), 400, 'invalid_grant');
    const ok = await token(t.server, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token, client_id: clientA.id });
    expect(ok.status, ok.text).toBe(200);
    const again = await token(t.server, { grant_type: 'refresh_token', refresh_token: ok.body.refresh_token }, basic(clientA.id, clientA.secret));
    expect(again.status, again.text).toBe(200);
  });

  test('a confidential client whose login had no PKCE must authenticate to refresh', async () => {
    const lenient = await createClient(t.server, { redirectUris: [REDIRECT], pkceOptional: true });
    const flow = await codeFor(t.server, user, { client: lenient, authorize: false, method: 'none', scope: 'openid offline_access' });
    const tokens = await redeem(t.server, flow, lenient, {}, basic(lenient.id, lenient.secret));
    expect(tokens.status, tokens.text).toBe(200);
    expectOAuthError(await token(t.server, { grant_type: 'refresh_token', refresh_token: tokens.body.refresh_token, client_id: lenient.id }), 401, 'invalid_client');
    const ok = await token(t.server, { grant_type: 'refresh_token', refresh_token: tokens.body.refresh_token }, basic(lenient.id, lenient.secret));
    expect(ok.status, ok.text).toBe(200);
  });

  test('a tampered refresh token → invalid_grant', async () => {
    const tokens = await signInTokens(t.server, user, 'openid offline_access');
    const { header, payload, signature } = parts(tokens.refresh_token as string);
    const tampered = `${b64json(header)}.${b64json({ ...payload, refresh_secret: 'x' })}.${signature}`;
    expectOAuthError(await token(t.server, { grant_type: 'refresh_token', refresh_token: tampered }), 400, 'invalid_grant');
    const ok = await token(t.server, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token });
    expect(ok.status).toBe(200);
  });
});

// ---------------------------------------------------------------------------------------------

describe('client authentication at the token endpoint', () => {
  let client: Client;
  beforeAll(async () => {
    client = await createClient(t.server);
  });

  test('client_secret_basic → token for the client', async () => {
    const res = await token(t.server, { grant_type: 'client_credentials' }, basic(client.id, client.secret));
    expect(res.status, res.text).toBe(200);
    expect(res.body).toMatchObject({ token_type: 'Bearer', expires_in: 3600, scope: 'openid', profile: { reference: `ClientApplication/${client.id}` }, project: { reference: `Project/${t.server.projectId}` } });
    expect(res.body.refresh_token).toBeUndefined();
    expect(decodeJwt(res.body.access_token as string).client_id).toBe(client.id);
    expect((await fhirAs(t.server, res.body.access_token, 'Patient?_count=1')).status).toBe(200);
  });

  test('client_secret_post → token', async () => {
    const res = await token(t.server, { grant_type: 'client_credentials', client_id: client.id, client_secret: client.secret });
    expect(res.status, res.text).toBe(200);
    expect(res.body.profile.reference).toBe(`ClientApplication/${client.id}`);
  });

  test('Basic and body credentials together (as the Medplum CLI sends them): accepted when they agree', async () => {
    const res = await token(t.server, { grant_type: 'client_credentials', client_id: client.id, client_secret: client.secret }, basic(client.id, client.secret));
    expect(res.status, res.text).toBe(200);
    const idOnly = await token(t.server, { grant_type: 'client_credentials', client_id: client.id }, basic(client.id, client.secret));
    expect(idOnly.status, idOnly.text).toBe(200);
  });

  test('Basic and body credentials that disagree → 401 invalid_client', async () => {
    const other = await createClient(t.server);
    expectOAuthError(await token(t.server, { grant_type: 'client_credentials', client_id: other.id, client_secret: other.secret }, basic(client.id, client.secret)), 401, 'invalid_client');
    expectOAuthError(await token(t.server, { grant_type: 'client_credentials', client_id: client.id, client_secret: 'wrong' }, basic(client.id, client.secret)), 401, 'invalid_client');
    expectOAuthError(await token(t.server, { grant_type: 'client_credentials', client_id: client.id, client_secret: client.secret }, basic(client.id, 'wrong')), 401, 'invalid_client');
    expectOAuthError(await token(t.server, { grant_type: 'client_credentials', client_id: other.id }, basic(client.id, client.secret)), 401, 'invalid_client');
  });

  test('client_credentials with a wrong secret → 401 invalid_client with WWW-Authenticate', async () => {
    const basicWrong = await token(t.server, { grant_type: 'client_credentials' }, basic(client.id, `${client.secret}x`));
    expectOAuthError(basicWrong, 401, 'invalid_client');
    expect(basicWrong.headers.get('www-authenticate')).toMatch(/^Basic/);
    expectOAuthError(await token(t.server, { grant_type: 'client_credentials', client_id: client.id, client_secret: '' }), 401, 'invalid_client');
    expectOAuthError(await token(t.server, { grant_type: 'client_credentials', client_id: client.id, client_secret: client.secret.slice(0, -1) }), 401, 'invalid_client');
    expectOAuthError(await token(t.server, { grant_type: 'client_credentials' }, basic(randomUUID(), client.secret)), 401, 'invalid_client');
    expectOAuthError(await token(t.server, { grant_type: 'client_credentials' }, { Authorization: 'Basic !!!notbase64' }), 401, 'invalid_client');
  });

  test('client_credentials without any authentication → 401 invalid_client', async () => {
    expectOAuthError(await token(t.server, { grant_type: 'client_credentials', client_id: client.id }), 401, 'invalid_client');
    expectOAuthError(await token(t.server, { grant_type: 'client_credentials' }), 401, 'invalid_client');
  });

  test('another client\'s secret does not authenticate this client', async () => {
    const other = await createClient(t.server);
    expectOAuthError(await token(t.server, { grant_type: 'client_credentials' }, basic(client.id, other.secret)), 401, 'invalid_client');
  });

  test('client_credentials with an unknown scope → invalid_scope', async () => {
    expectOAuthError(await token(t.server, { grant_type: 'client_credentials', scope: 'system/Patient.rs bogus' }, basic(client.id, client.secret)), 400, 'invalid_scope');
  });

  test('$rotate-secret: the retiring secret still works and the new one works', async () => {
    const rotating = await createClient(t.server);
    const old = rotating.secret;
    const res = await call(`${t.server.fhirUrl}ClientApplication/${rotating.id}/$rotate-secret`, { method: 'POST', headers: { ...FHIR_JSON, ...t.server.authorization }, body: '{}' });
    expect(res.status, res.text).toBe(200);
    const rotated = res.body as ClientApplication;
    expect(rotated.retiringSecret).toBe(old);
    expect(rotated.secret).toMatch(/^\S{16,}$/);
    expect(rotated.secret).not.toBe(old);
    expect((await token(t.server, { grant_type: 'client_credentials' }, basic(rotating.id, old))).status).toBe(200);
    expect((await token(t.server, { grant_type: 'client_credentials' }, basic(rotating.id, rotated.secret as string))).status).toBe(200);
    expect((await token(t.server, { grant_type: 'client_credentials', client_id: rotating.id, client_secret: rotated.secret as string })).status).toBe(200);
    expectOAuthError(await token(t.server, { grant_type: 'client_credentials' }, basic(rotating.id, 'not-the-secret')), 401, 'invalid_client');
  });

  test('$rotate-secret by a non-admin → 403, secret unchanged', async () => {
    const rotating = await createClient(t.server);
    const tokens = await signInTokens(t.server, user, 'openid');
    const res = await call(`${t.server.fhirUrl}ClientApplication/${rotating.id}/$rotate-secret`, { method: 'POST', headers: { ...FHIR_JSON, ...bearer(tokens.access_token) }, body: '{}' });
    expect(res.status).toBe(403);
    expect((await token(t.server, { grant_type: 'client_credentials' }, basic(rotating.id, rotating.secret))).status).toBe(200);
  });

  test('a JSON body → 400 invalid_request', async () => {
    const res = await call(`${t.server.baseUrl}oauth2/token`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ grant_type: 'client_credentials', client_id: client.id, client_secret: client.secret }),
    });
    expectOAuthError(res, 400, 'invalid_request');
  });

  test('a repeated form parameter → 400 invalid_request', async () => {
    for (const body of [
      `grant_type=client_credentials&grant_type=client_credentials&client_id=${client.id}&client_secret=${client.secret}`,
      `grant_type=client_credentials&client_id=${client.id}&client_secret=${client.secret}&client_secret=${client.secret}`,
      `grant_type=client_credentials&client_id=${client.id}&client_secret=${client.secret}&scope=openid&scope=system/*.cruds`,
    ]) {
      const res = await call(`${t.server.baseUrl}oauth2/token`, { method: 'POST', headers: FORM, body });
      expectOAuthError(res, 400, 'invalid_request');
    }
  });

  test('an unsupported grant_type → unsupported_grant_type; none → invalid_request', async () => {
    for (const grant of ['password', 'implicit', 'urn:ietf:params:oauth:grant-type:jwt-bearer', 'urn:ietf:params:oauth:grant-type:device_code']) {
      expectOAuthError(await token(t.server, { grant_type: grant }, basic(client.id, client.secret)), 400, 'unsupported_grant_type');
    }
    expectOAuthError(await token(t.server, {}, basic(client.id, client.secret)), 400, 'invalid_request');
  });
});

// ---------------------------------------------------------------------------------------------

describe('private_key_jwt (client-confidential-asymmetric)', () => {
  let jwksServer: Server;
  let jwksUrl: string;
  let privateKey: CryptoKey;
  const kid = `kid-${randomUUID()}`;
  let client: Client;
  let tokenUrl: string;

  beforeAll(async () => {
    const pair = await generateKeyPair('ES384', { extractable: true });
    privateKey = pair.privateKey;
    const publicJwk = { ...(await exportJWK(pair.publicKey)), kid, alg: 'ES384', use: 'sig' };
    jwksServer = createServer((_req, res) => {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ keys: [publicJwk] }));
    });
    await new Promise<void>((resolve) => jwksServer.listen(0, '127.0.0.1', resolve));
    jwksUrl = `http://127.0.0.1:${(jwksServer.address() as AddressInfo).port}/jwks.json`;
    client = await createClient(t.server, { jwksUri: jwksUrl });
    tokenUrl = `${t.server.baseUrl}oauth2/token`;
  });

  afterAll(async () => {
    await new Promise<void>((resolve) => (jwksServer ? jwksServer.close(() => resolve()) : resolve()));
  });

  function assertion(claims: JWTPayload = {}, key: CryptoKey = privateKey, header: Json = {}): Promise<string> {
    const now = Math.floor(Date.now() / 1000);
    return new SignJWT({ iss: client.id, sub: client.id, aud: tokenUrl, jti: randomUUID(), iat: now, exp: now + 120, ...claims })
      .setProtectedHeader({ alg: 'ES384', kid, typ: 'JWT', ...header })
      .sign(key);
  }

  function withAssertion(jwt: string, extra: Record<string, string> = {}): Promise<Reply> {
    return token(t.server, {
      grant_type: 'client_credentials',
      client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
      client_assertion: jwt,
      ...extra,
    });
  }

  test('a good assertion → access token for the client', async () => {
    const res = await withAssertion(await assertion(), { scope: 'system/Patient.rs' });
    expect(res.status, res.text).toBe(200);
    expect(res.body.scope).toBe('system/Patient.rs');
    expect(res.body.profile.reference).toBe(`ClientApplication/${client.id}`);
    expect((await fhirAs(t.server, res.body.access_token, 'Patient?_count=1')).status).toBe(200);
  });

  test('a good assertion with a matching client_id → token', async () => {
    const res = await withAssertion(await assertion(), { client_id: client.id });
    expect(res.status, res.text).toBe(200);
  });

  test('wrong aud → 401 invalid_client', async () => {
    for (const aud of [t.server.baseUrl, `${t.server.baseUrl}oauth2/authorize`, 'https://evil.example.org/token']) {
      expectOAuthError(await withAssertion(await assertion({ aud })), 401, 'invalid_client');
    }
  });

  test('expired → 401 invalid_client', async () => {
    const now = Math.floor(Date.now() / 1000);
    expectOAuthError(await withAssertion(await assertion({ iat: now - 900, exp: now - 600 })), 401, 'invalid_client');
  });

  test('signed by another key (same kid, or another kid) → 401 invalid_client', async () => {
    const other = (await generateKeyPair('ES384')).privateKey;
    expectOAuthError(await withAssertion(await assertion({}, other)), 401, 'invalid_client');
    expectOAuthError(await withAssertion(await assertion({}, other, { kid: 'unknown-kid' })), 401, 'invalid_client');
  });

  test('iss/sub naming another client, or a client without a jwksUri → 401 invalid_client', async () => {
    expectOAuthError(await withAssertion(await assertion({ sub: clientB.id })), 401, 'invalid_client');
    expectOAuthError(await withAssertion(await assertion({ iss: clientB.id, sub: clientB.id })), 401, 'invalid_client');
    expectOAuthError(await withAssertion(await assertion(), { client_id: clientB.id }), 401, 'invalid_client');
  });

  test('an unsigned assertion or a wrong assertion type is refused', async () => {
    const { header, payload } = parts(await assertion());
    const unsigned = `${b64json({ ...header, alg: 'none' })}.${b64json(payload)}.`;
    expectOAuthError(await withAssertion(unsigned), 401, 'invalid_client');
    const res = await token(t.server, { grant_type: 'client_credentials', client_assertion_type: 'urn:example:other', client_assertion: await assertion() });
    expect(res.status).toBeGreaterThanOrEqual(400);
    expect(res.body.access_token).toBeUndefined();
  });

  test('a replayed assertion (same jti) is refused', async () => {
    const jwt = await assertion();
    expect((await withAssertion(jwt)).status).toBe(200);
    expectOAuthError(await withAssertion(jwt), 401, 'invalid_client');
  });
});

// ---------------------------------------------------------------------------------------------

describe('/oauth2/introspect, /oauth2/revoke, /oauth2/logout, /oauth2/userinfo', () => {
  test('introspection requires the caller to authenticate', async () => {
    const tokens = await signInTokens(t.server, user, 'openid', clientA);
    const res = await postForm(t.server, 'oauth2/introspect', { token: tokens.access_token });
    expect(res.status).toBe(401);
    expect(res.body.active).toBeUndefined();
    const wrongSecret = await postForm(t.server, 'oauth2/introspect', { token: tokens.access_token }, basic(clientA.id, 'wrong'));
    expect(wrongSecret.status).toBe(401);
    expect(wrongSecret.body.active).toBeUndefined();
    const badBearer = await postForm(t.server, 'oauth2/introspect', { token: tokens.access_token }, bearer('not-a-token'));
    expect(badBearer.status).toBe(401);
    expect(badBearer.body.active).toBeUndefined();
  });

  test('an active token: active true with scope, client_id, exp; then revoked: active false', async () => {
    const tokens = await signInTokens(t.server, user, 'openid user/Patient.rs', clientA);
    const claims = decodeJwt(tokens.access_token as string);
    const res = await postForm(t.server, 'oauth2/introspect', { token: tokens.access_token }, t.server.authorization);
    expect(res.status, res.text).toBe(200);
    expect(res.headers.get('cache-control')).toContain('no-store');
    expect(res.body).toMatchObject({ active: true, scope: 'openid user/Patient.rs', client_id: clientA.id, exp: claims.exp, sub: claims.sub, iss: t.server.baseUrl });
    expect(res.body.exp).toBeGreaterThan(Date.now() / 1000);

    // A client may introspect with its own credentials.
    const asClient = await postForm(t.server, 'oauth2/introspect', { token: tokens.access_token }, basic(clientB.id, clientB.secret));
    expect(asClient.status).toBe(200);
    expect(asClient.body.active).toBe(true);

    const revoked = await postForm(t.server, 'oauth2/revoke', { token: tokens.access_token, client_id: clientA.id });
    expect(revoked.status, revoked.text).toBe(200);
    const after = await postForm(t.server, 'oauth2/introspect', { token: tokens.access_token }, t.server.authorization);
    expect(after.status).toBe(200);
    expect(after.body).toEqual({ active: false });
  });

  test('introspection of garbage, an id_token or a refresh token: active false', async () => {
    const tokens = await signInTokens(t.server, user, 'openid offline_access', clientA);
    for (const value of ['garbage', tokens.id_token, tokens.refresh_token]) {
      const res = await postForm(t.server, 'oauth2/introspect', { token: value }, t.server.authorization);
      expect(res.status).toBe(200);
      expect(res.body).toEqual({ active: false });
    }
  });

  test('introspection without a token → invalid_request', async () => {
    expectOAuthError(await postForm(t.server, 'oauth2/introspect', {}, t.server.authorization), 400, 'invalid_request');
  });

  test('/oauth2/revoke: the token and its refresh token stop working; unknown tokens are not an error', async () => {
    const tokens = await signInTokens(t.server, user, 'openid offline_access');
    expect((await fhirAs(t.server, tokens.access_token, 'Patient?_count=1')).status).toBe(200);
    const res = await postForm(t.server, 'oauth2/revoke', { token: tokens.access_token });
    expect(res.status, res.text).toBe(200);
    expectUnauthorized(await fhirAs(t.server, tokens.access_token, 'Patient?_count=1'));
    expectOAuthError(await token(t.server, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token }), 400, 'invalid_grant');

    const unknown = await postForm(t.server, 'oauth2/revoke', { token: 'garbage' });
    expect(unknown.status).toBe(200);
    const missing = await postForm(t.server, 'oauth2/revoke', {});
    expectOAuthError(missing, 400, 'invalid_request');
  });

  test('/oauth2/revoke with a refresh token ends the login', async () => {
    const tokens = await signInTokens(t.server, user, 'openid offline_access');
    expect((await postForm(t.server, 'oauth2/revoke', { token: tokens.refresh_token, token_type_hint: 'refresh_token' })).status).toBe(200);
    expectOAuthError(await token(t.server, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token }), 400, 'invalid_grant');
    expectUnauthorized(await fhirAs(t.server, tokens.access_token, 'Patient?_count=1'));
  });

  test('/oauth2/logout (POST {} with bearer) → allOk, then the token is refused', async () => {
    const tokens = await signInTokens(t.server, user, 'openid offline_access');
    const res = await call(`${t.server.baseUrl}oauth2/logout`, { method: 'POST', headers: { 'Content-Type': 'application/json', ...bearer(tokens.access_token) }, body: '{}' });
    expect(res.status, res.text).toBe(200);
    expect(res.body.resourceType).toBe('OperationOutcome');
    expect(res.body.issue?.[0]).toMatchObject({ severity: 'information', code: 'informational' });
    expectUnauthorized(await fhirAs(t.server, tokens.access_token, 'Patient?_count=1'));
    expectOAuthError(await token(t.server, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token }), 400, 'invalid_grant');
    // Without a token there is nothing to log out.
    const anonymous = await call(`${t.server.baseUrl}oauth2/logout`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' });
    expect(anonymous.status).toBe(401);
  });

  test('logout ends only that login: another login of the same user keeps working', async () => {
    const one = await signInTokens(t.server, user, 'openid');
    const two = await signInTokens(t.server, user, 'openid');
    const res = await call(`${t.server.baseUrl}oauth2/logout`, { method: 'POST', headers: { 'Content-Type': 'application/json', ...bearer(one.access_token) }, body: '{}' });
    expect(res.status).toBe(200);
    expectUnauthorized(await fhirAs(t.server, one.access_token, 'Patient?_count=1'));
    expect((await fhirAs(t.server, two.access_token, 'Patient?_count=1')).status).toBe(200);
  });

  test('/oauth2/userinfo with openid profile email → sub, name, email', async () => {
    const person = await inviteUser(t.server, 'Practitioner', 'Grace', 'Hopper');
    const tokens = await signInTokens(t.server, person, 'openid profile email', clientA);
    const res = await call(`${t.server.baseUrl}oauth2/userinfo`, { headers: bearer(tokens.access_token) });
    expect(res.status, res.text).toBe(200);
    const idToken = decodeJwt(tokens.id_token as string);
    expect(res.body.sub).toBe(idToken.sub);
    expect(res.body).toMatchObject({ name: 'Grace Hopper', given_name: 'Grace', family_name: 'Hopper', email: person.email });
    const post = await call(`${t.server.baseUrl}oauth2/userinfo`, { method: 'POST', headers: bearer(tokens.access_token) });
    expect(post.status).toBe(200);
    expect(post.body.email).toBe(person.email);
  });

  test('/oauth2/userinfo without the email scope has no email; without profile no name', async () => {
    const person = await inviteUser(t.server, 'Practitioner', 'Alan', 'Turing');
    const profileOnly = await signInTokens(t.server, person, 'openid profile', clientA);
    const res = await call(`${t.server.baseUrl}oauth2/userinfo`, { headers: bearer(profileOnly.access_token) });
    expect(res.status).toBe(200);
    expect(res.body.name).toBe('Alan Turing');
    expect(res.body).not.toHaveProperty('email');
    expect(res.text).not.toContain(person.email);

    const openidOnly = await signInTokens(t.server, person, 'openid', clientA);
    const bare = await call(`${t.server.baseUrl}oauth2/userinfo`, { headers: bearer(openidOnly.access_token) });
    expect(bare.status).toBe(200);
    expect(typeof bare.body.sub).toBe('string');
    expect(bare.body).not.toHaveProperty('email');
    expect(bare.body).not.toHaveProperty('name');
  });

  test('/oauth2/userinfo without a token → 401', async () => {
    expect((await call(`${t.server.baseUrl}oauth2/userinfo`)).status).toBe(401);
    expect((await call(`${t.server.baseUrl}oauth2/userinfo`, { headers: bearer('garbage') })).status).toBe(401);
  });
});

// ---------------------------------------------------------------------------------------------

describe('SMART scopes on the token', () => {
  let patient1: Patient & { id: string };
  let patient2: Patient & { id: string };
  let obsMatch: Observation & { id: string };
  let obsOther: Observation & { id: string };
  let obsPatient2: Observation & { id: string };
  let client: Client;

  beforeAll(async () => {
    patient1 = await createPatient(t.server);
    patient2 = await createPatient(t.server);
    obsMatch = await createObservation(t.server, patient1.id, '1234-5');
    obsOther = await createObservation(t.server, patient1.id, '9999-9');
    obsPatient2 = await createObservation(t.server, patient2.id, '1234-5');
    client = await createClient(t.server, { redirectUris: [REDIRECT] });
  });

  test('system/Patient.rs: read and search Patients; no create; no Observations', async () => {
    const { access_token: at, scope } = await clientToken(t.server, client, 'system/Patient.rs');
    expect(scope).toBe('system/Patient.rs');
    expect((await fhirAs(t.server, at, `Patient/${patient1.id}`)).body.id).toBe(patient1.id);
    const search = await fhirAs(t.server, at, `Patient?_id=${patient1.id},${patient2.id}`);
    expect(search.status).toBe(200);
    expect(ids(search.body).sort()).toEqual([`Patient/${patient1.id}`, `Patient/${patient2.id}`].sort());
    const created = await fhirAs(t.server, at, 'Patient', { method: 'POST', body: JSON.stringify({ resourceType: 'Patient' }) });
    expect(created.status).toBe(403);
    expect(created.body.resourceType).toBe('OperationOutcome');
    const update = await fhirAs(t.server, at, `Patient/${patient1.id}`, { method: 'PUT', body: JSON.stringify({ ...patient1, gender: 'other' }) });
    expect(update.status).toBe(403);
    const del = await fhirAs(t.server, at, `Patient/${patient1.id}`, { method: 'DELETE' });
    expect(del.status).toBe(403);
    expect((await fhirAs(t.server, at, `Observation/${obsMatch.id}`)).status).toBe(403);
    expect((await fhirAs(t.server, at, 'Observation')).status).toBe(403);
    // Still there and unchanged.
    expect((await fhirAs(t.server, t.server.admin.accessToken, `Patient/${patient1.id}`)).body.gender).toBeUndefined();
  });

  test('system/Patient.r without s: read but no search', async () => {
    const { access_token: at } = await clientToken(t.server, client, 'system/Patient.r');
    expect((await fhirAs(t.server, at, `Patient/${patient1.id}`)).status).toBe(200);
    expect((await fhirAs(t.server, at, 'Patient')).status).toBe(403);
  });

  test('v1 system/Patient.read: read and search; no create', async () => {
    const { access_token: at } = await clientToken(t.server, client, 'system/Patient.read');
    expect((await fhirAs(t.server, at, `Patient/${patient2.id}`)).status).toBe(200);
    expect((await fhirAs(t.server, at, `Patient?_id=${patient2.id}`)).body.entry?.length).toBe(1);
    expect((await fhirAs(t.server, at, 'Patient', { method: 'POST', body: JSON.stringify({ resourceType: 'Patient' }) })).status).toBe(403);
    expect((await fhirAs(t.server, at, `Observation/${obsMatch.id}`)).status).toBe(403);
  });

  test('v1 system/Patient.write without read: create but no read', async () => {
    const { access_token: at } = await clientToken(t.server, client, 'system/Patient.write');
    expect((await fhirAs(t.server, at, 'Patient', { method: 'POST', body: JSON.stringify({ resourceType: 'Patient' }) })).status).toBe(201);
    expect((await fhirAs(t.server, at, `Patient/${patient1.id}`)).status).toBe(403);
  });

  test('v2 query scope system/Observation.rs?code=http://loinc.org|1234-5 sees only matching Observations', async () => {
    const { access_token: at } = await clientToken(t.server, client, 'system/Observation.rs?code=http://loinc.org|1234-5');
    const search = await fhirAs(t.server, at, 'Observation?_count=100');
    expect(search.status).toBe(200);
    const found = ids(search.body);
    expect(found).toContain(`Observation/${obsMatch.id}`);
    expect(found).toContain(`Observation/${obsPatient2.id}`);
    expect(found).not.toContain(`Observation/${obsOther.id}`);
    for (const entry of (search.body as Bundle<Observation>).entry ?? []) {
      expect(entry.resource?.code?.coding?.[0]).toMatchObject({ system: 'http://loinc.org', code: '1234-5' });
    }
    expect((await fhirAs(t.server, at, `Observation/${obsMatch.id}`)).status).toBe(200);
    expect((await fhirAs(t.server, at, `Observation/${obsOther.id}`)).status).toBe(404);
    const explicit = await fhirAs(t.server, at, 'Observation?code=http://loinc.org|9999-9');
    expect(explicit.status).toBe(200);
    expect(ids(explicit.body)).toEqual([]);
    expect((await fhirAs(t.server, at, `Patient/${patient1.id}`)).status).toBe(403);
  });

  test('patient/*.rs via authorization_code with a chosen launch patient: only that compartment', async () => {
    const scope = 'openid launch/patient patient/*.rs';
    const flow = await codeFor(t.server, user, { client, scope });

    const list = await postJson(t.server, 'auth/patients', { code: flow.code, name: patient1.name?.[0]?.family });
    expect(list.status, list.text).toBe(200);
    expect(ids(list.body)).toEqual([`Patient/${patient1.id}`]);
    const all = await postJson(t.server, 'auth/patients', { code: flow.code });
    expect(all.status).toBe(200);
    expect(all.body.resourceType).toBe('Bundle');
    expect(ids(all.body).length).toBeGreaterThan(0);

    const badCode = await postJson(t.server, 'auth/launch-patient', { code: 'nope', patient: patient1.id });
    expect(badCode.status).toBe(400);
    const unknownPatient = await postJson(t.server, 'auth/launch-patient', { code: flow.code, patient: randomUUID() });
    expect(unknownPatient.status).toBe(404);
    const chosen = await postJson(t.server, 'auth/launch-patient', { code: flow.code, patient: patient1.id });
    expect(chosen.status, chosen.text).toBe(200);

    const res = await redeem(t.server, flow, client);
    expect(res.status, res.text).toBe(200);
    expect(res.body.patient).toBe(patient1.id);
    expect(res.body.scope).toBe(scope);
    const at = res.body.access_token as string;

    const patients = await fhirAs(t.server, at, 'Patient?_count=100');
    expect(patients.status).toBe(200);
    expect(ids(patients.body)).toEqual([`Patient/${patient1.id}`]);
    expect((await fhirAs(t.server, at, `Patient/${patient1.id}`)).status).toBe(200);
    expect((await fhirAs(t.server, at, `Patient/${patient2.id}`)).status).toBe(404);

    const observations = await fhirAs(t.server, at, 'Observation?_count=100');
    expect(observations.status).toBe(200);
    expect(ids(observations.body).sort()).toEqual([`Observation/${obsMatch.id}`, `Observation/${obsOther.id}`].sort());
    expect((await fhirAs(t.server, at, `Observation/${obsPatient2.id}`)).status).toBe(404);
    expect((await fhirAs(t.server, at, `Observation?subject=Patient/${patient2.id}`)).body.entry ?? []).toEqual([]);

    const create = await fhirAs(t.server, at, 'Observation', {
      method: 'POST',
      body: JSON.stringify({ resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: `Patient/${patient1.id}` } }),
    });
    expect(create.status).toBe(403);

    const introspection = await postForm(t.server, 'oauth2/introspect', { token: at }, t.server.authorization);
    expect(introspection.body).toMatchObject({ active: true, patient: patient1.id });

    // The code is redeemed: the launch patient can no longer be changed.
    const late = await postJson(t.server, 'auth/launch-patient', { code: flow.code, patient: patient2.id });
    expect(late.status).toBe(400);
  });

  test('patient/*.rs without a launch patient sees nothing', async () => {
    const flow = await codeFor(t.server, user, { client, scope: 'openid patient/*.rs' });
    const res = await redeem(t.server, flow, client);
    expect(res.status, res.text).toBe(200);
    expect(res.body.patient).toBeUndefined();
    const patients = await fhirAs(t.server, res.body.access_token, 'Patient?_count=100');
    expect(patients.status === 403 || (patients.status === 200 && ids(patients.body).length === 0)).toBe(true);
    const read = await fhirAs(t.server, res.body.access_token, `Patient/${patient1.id}`);
    expect([403, 404]).toContain(read.status);
  });
});

// ---------------------------------------------------------------------------------------------

describe('brute force on /auth/login (LOGIN_FAILURES_PER_ACCOUNT=3)', () => {
  let s: TestServer;
  let victim: TestUser;
  let bystander: TestUser;

  beforeAll(async () => {
    s = await startTestServer({ LOGIN_FAILURES_PER_ACCOUNT: '3' });
    victim = await inviteUser(s);
    bystander = await inviteUser(s);
  });

  afterAll(async () => {
    await s?.stop();
  });

  test('after 3 failures the right password gets 429 with ratelimit and Retry-After; others are unaffected', async () => {
    for (let i = 0; i < 3; i++) {
      const res = await postJson(s, 'auth/login', { email: victim.email, password: `wrong-password-${i}` });
      expect(res.status, `attempt ${i + 1}`).toBe(400);
      expect(res.body.code).toBeUndefined();
    }
    const blocked = await postJson(s, 'auth/login', { email: victim.email, password: victim.password });
    expect(blocked.status).toBe(429);
    expect(blocked.body.resourceType).toBe('OperationOutcome');
    expect(blocked.body.code).toBeUndefined();
    expect(blocked.body.login).toBeUndefined();
    const header = blocked.headers.get('ratelimit') as string;
    expect(header).toMatch(/^"login";r=0;t=\d+$/);
    expect(Number(/t=(\d+)/.exec(header)?.[1])).toBeGreaterThan(0);
    expect(Number(blocked.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);

    // The same account in other letter case is the same account.
    const upper = await postJson(s, 'auth/login', { email: victim.email.toUpperCase(), password: victim.password });
    expect(upper.status).toBe(429);

    const other = await postJson(s, 'auth/login', { email: bystander.email, password: bystander.password });
    expect(other.status, other.text).toBe(200);
    expect(other.body.code).toMatch(/^[0-9a-f]{32}$/);
  });

  test('a success before the limit clears the failures of the account', async () => {
    const person = await inviteUser(s);
    for (let i = 0; i < 2; i++) {
      expect((await postJson(s, 'auth/login', { email: person.email, password: 'wrong-password' })).status).toBe(400);
    }
    expect((await postJson(s, 'auth/login', { email: person.email, password: person.password })).status).toBe(200);
    for (let i = 0; i < 2; i++) {
      expect((await postJson(s, 'auth/login', { email: person.email, password: 'wrong-password' })).status).toBe(400);
    }
    expect((await postJson(s, 'auth/login', { email: person.email, password: person.password })).status).toBe(200);
  });
});

// ---------------------------------------------------------------------------------------------

describe('rate limit per user (RATE_LIMIT_REQUESTS_PER_MINUTE=5)', () => {
  let s: TestServer;
  let first: TestUser;
  let second: TestUser;

  beforeAll(async () => {
    s = await startTestServer({ RATE_LIMIT_REQUESTS_PER_MINUTE: '5' });
    // The admin's own budget: /auth/me at sign-in plus these two invitations.
    first = await inviteUser(s);
    second = await inviteUser(s);
  });

  afterAll(async () => {
    await s?.stop();
  });

  test('the 6th request in a minute is 429 with ratelimit and Retry-After; another user still gets through', async () => {
    const a = (await signInTokens(s, first, 'openid')).access_token as string;
    const b = (await signInTokens(s, second, 'openid')).access_token as string;
    for (let i = 0; i < 5; i++) {
      const res = await fhirAs(s, a, 'Patient?_count=1');
      expect(res.status, `request ${i + 1}`).toBe(200);
      expect(res.headers.get('ratelimit')).toMatch(new RegExp(`^"requests";r=${4 - i};t=\\d+$`));
    }
    const limited = await fhirAs(s, a, 'Patient?_count=1');
    expect(limited.status).toBe(429);
    expect(limited.body.resourceType).toBe('OperationOutcome');
    expect(limited.body.issue?.[0]?.severity).toBe('error');
    const header = limited.headers.get('ratelimit') as string;
    expect(header).toMatch(/^"requests";r=0;t=\d+$/);
    expect(Number(/t=(\d+)/.exec(header)?.[1])).toBeGreaterThan(0);
    expect(Number(limited.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);

    // A new login of the same user does not reset the user's budget.
    const again = (await signInTokens(s, first, 'openid')).access_token as string;
    expect((await fhirAs(s, again, 'Patient?_count=1')).status).toBe(429);

    const other = await fhirAs(s, b, 'Patient?_count=1');
    expect(other.status).toBe(200);
    expect(other.headers.get('ratelimit')).toMatch(/^"requests";r=4;t=\d+$/);
  });

  test('a token of another server (other signing key) is refused here', async () => {
    const foreign = await signInTokens(t.server, user, 'openid');
    expectUnauthorized(await fhirAs(s, foreign.access_token, 'Patient?_count=1'));
  });
});
