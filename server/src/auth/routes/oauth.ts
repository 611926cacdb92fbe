import { createHash } from 'node:crypto';
import { allOk, OperationOutcomeError } from '@medplum/core';
import type { ClientApplication, Patient, Practitioner, User } from '@medplum/fhirtypes';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { authenticate } from '../authenticate.ts';
import { redirectUris } from '../clients.ts';
import type { ClientCredentials } from '../clients.ts';
import { newSecret } from '../logins.ts';
import type { Login } from '../logins.ts';
import { OAuthError } from '../oauth-error.ts';
import { isSubsetOf, splitScope, unknownScopes } from '../scopes.ts';
import type { AuthServices } from '../service.ts';
import { wantsRefreshToken } from '../tokens.ts';
import type { TokenResponse } from '../tokens.ts';
import { parseForm } from './form.ts';
import { useJsonBodies } from '../../http/json-body.ts';

const VERIFIER_RE = /^[A-Za-z0-9\-._~]{43,128}$/;

/** OAuth 2.0 / OpenID Connect endpoints under /oauth2 (RFC 6749, 7009, 7636, 7662; SMART App Launch 2). */
export async function oauthRoutes(app: FastifyInstance, auth: AuthServices): Promise<void> {
  // JSON too: MedplumClient.signOut() posts `{}` as application/fhir+json to /oauth2/logout.
  useJsonBodies(app);
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_req, body, done) => {
    try {
      done(null, parseForm(body as string));
    } catch (err) {
      done(err as Error, undefined);
    }
  });

  app.setErrorHandler((err, _request, reply) => {
    if (err instanceof OAuthError) {
      if (err.status === 401) {
        reply.header('WWW-Authenticate', 'Basic realm="ermis"');
      }
      return reply.status(err.status).header('Cache-Control', 'no-store').send(err.toJSON());
    }
    throw err;
  });

  const authorize = async (request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> => {
    const params = request.method === 'POST' ? ((request.body ?? {}) as Record<string, string>) : flatQuery(request.query);
    return reply.redirect(await validateAuthorizeRequest(auth, params), 302);
  };
  app.get('/oauth2/authorize', authorize);
  app.post('/oauth2/authorize', authorize);

  app.post('/oauth2/token', async (request, reply) => {
    if (!request.headers['content-type']?.startsWith('application/x-www-form-urlencoded')) {
      throw new OAuthError('invalid_request', 'The token request must be application/x-www-form-urlencoded');
    }
    const form = (request.body ?? {}) as Record<string, string>;
    const creds = await auth.clients.authenticate(form, request.headers.authorization);
    let response: TokenResponse;
    switch (form.grant_type) {
      case 'authorization_code':
        response = await authorizationCodeGrant(auth, form, creds);
        break;
      case 'client_credentials':
        response = await clientCredentialsGrant(auth, form, creds);
        break;
      case 'refresh_token':
        response = await refreshTokenGrant(auth, form, creds);
        break;
      case undefined:
        throw new OAuthError('invalid_request', 'Missing grant_type');
      default:
        throw new OAuthError('unsupported_grant_type', `Unsupported grant_type: ${form.grant_type}`);
    }
    return reply.header('Cache-Control', 'no-store').header('Pragma', 'no-cache').send(response);
  });

  const userinfo = async (request: FastifyRequest, reply: FastifyReply): Promise<unknown> => {
    const session = await authenticate(request, reply, auth);
    const scopes = splitScope(session.scope);
    const profile = (await auth.directory.find<Practitioner | Patient>(
      session.profile.reference?.split('/')[0] as 'Practitioner',
      session.profile.reference?.split('/')[1] ?? '',
      session.project.id
    ))?.resource;
    const user = session.login?.userId ? (await auth.directory.find<User>('User', session.login.userId))?.resource : undefined;
    const info: Record<string, unknown> = { sub: session.login?.userId ?? session.clientId, fhirUser: `${auth.config.baseUrl}fhir/R4/${session.profile.reference}` };
    if (scopes.includes('profile')) {
      const name = (profile as Practitioner | undefined)?.name?.[0];
      info.profile = session.profile.reference;
      info.name = [name?.given?.join(' '), name?.family].filter(Boolean).join(' ') || undefined;
      info.given_name = name?.given?.[0];
      info.family_name = name?.family;
    }
    if (scopes.includes('email') && user?.email) {
      info.email = user.email;
      info.email_verified = user.emailVerified ?? false;
    }
    if (scopes.includes('phone')) {
      info.phone_number = (profile as Practitioner | undefined)?.telecom?.find((t) => t.system === 'phone')?.value;
    }
    return info;
  };
  app.get('/oauth2/userinfo', userinfo);
  app.post('/oauth2/userinfo', userinfo);

  app.post('/oauth2/introspect', async (request, reply) => {
    const form = (request.body ?? {}) as Record<string, string>;
    // RFC 7662 §2.1: the caller must itself be authorized (client credentials or a bearer token).
    const creds = await auth.clients.authenticate(form, request.headers.authorization?.startsWith('Basic ') ? request.headers.authorization : undefined);
    // The caller learns about tokens of its own project only.
    const callerProject = creds.method === 'none' ? (await authenticate(request, reply, auth)).project.id : creds.client?.projectId;
    reply.header('Cache-Control', 'no-store');
    if (!form.token) {
      throw new OAuthError('invalid_request', 'Missing token');
    }
    try {
      const claims = await auth.keys.verify(form.token);
      const login = typeof claims.login_id === 'string' ? await auth.logins.get(claims.login_id) : undefined;
      if (claims.token_use !== 'access' || !login || login.revoked) {
        return { active: false };
      }
      const session = await auth.sessions.fromLogin(login, String(claims.scope ?? login.scope));
      if (session.project.id !== callerProject) {
        return { active: false };
      }
      return {
        active: true,
        scope: claims.scope,
        client_id: claims.client_id,
        sub: claims.sub,
        iss: claims.iss,
        exp: claims.exp,
        iat: claims.iat,
        token_type: 'Bearer',
        ...(session.patientId ? { patient: session.patientId } : {}),
        fhirUser: `${auth.config.baseUrl}fhir/R4/${session.profile.reference}`,
      };
    } catch {
      return { active: false };
    }
  });

  app.post('/oauth2/revoke', async (request, reply) => {
    const form = (request.body ?? {}) as Record<string, string>;
    await auth.clients.authenticate(form, request.headers.authorization);
    if (!form.token) {
      throw new OAuthError('invalid_request', 'Missing token');
    }
    // RFC 7009 §2.2: an invalid or unknown token is not an error. Only access and refresh tokens
    // revoke (an id token is handed to third parties).
    const claims = await auth.keys.verify(form.token).catch(() => undefined);
    if (claims && typeof claims.login_id === 'string' && (claims.token_use === 'access' || claims.token_use === 'refresh')) {
      await auth.logins.revoke(claims.login_id);
    }
    return reply.header('Cache-Control', 'no-store').send({});
  });

  const logout = async (request: FastifyRequest, reply: FastifyReply): Promise<unknown> => {
    const session = await authenticate(request, reply, auth);
    if (session.login) {
      await auth.logins.revoke(session.login.id);
    }
    return allOk;
  };
  app.get('/oauth2/logout', logout);
  app.post('/oauth2/logout', logout);
}

function flatQuery(query: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries((query ?? {}) as Record<string, string | string[]>)) {
    if (Array.isArray(value)) {
      throw new OAuthError('invalid_request', `Parameter ${key} is repeated`);
    }
    out[key] = value;
  }
  return out;
}

/**
 * Checks an authorization request and answers where to send the browser: the login page, or
 * back to the client with an error. Errors about the client or its redirect_uri are never
 * redirected (RFC 6749 §4.1.2.1): they are answered here.
 */
async function validateAuthorizeRequest(auth: AuthServices, p: Record<string, string>): Promise<string> {
  const record = await auth.clients.find(p.client_id);
  if (!record) {
    throw new OperationOutcomeError(badRequestOutcome('Unknown client_id'));
  }
  const { client } = record;
  const registered = redirectUris(client);
  const redirectUri = p.redirect_uri ?? (registered.length === 1 ? registered[0] : undefined);
  if (!redirectUri || !registered.includes(redirectUri)) {
    throw new OperationOutcomeError(badRequestOutcome('redirect_uri does not match the client registration'));
  }
  const fail = (error: string, description: string): string => {
    const url = new URL(redirectUri);
    url.searchParams.set('error', error);
    url.searchParams.set('error_description', description);
    if (p.state !== undefined) {
      url.searchParams.set('state', p.state);
    }
    return url.toString();
  };
  if (p.response_type !== 'code') {
    return fail('unsupported_response_type', 'Only response_type=code is supported');
  }
  const scope = p.scope || client.defaultScope?.join(' ') || 'openid';
  const unknown = unknownScopes(scope);
  if (unknown.length > 0) {
    return fail('invalid_scope', `Unknown scope: ${unknown.join(' ')}`);
  }
  const fhirBase = `${auth.config.baseUrl}fhir/R4`;
  if (p.aud !== undefined && p.aud.replace(/\/+$/, '') !== fhirBase) {
    return fail('invalid_request', `aud must be ${fhirBase}`);
  }
  const method = p.code_challenge_method ?? (p.code_challenge ? 'plain' : undefined);
  if (!client.pkceOptional) {
    if (!p.code_challenge) {
      return fail('invalid_request', 'code_challenge is required (PKCE)');
    }
    if (method !== 'S256') {
      return fail('invalid_request', 'code_challenge_method must be S256');
    }
  } else if (method && method !== 'S256' && method !== 'plain') {
    return fail('invalid_request', 'Unsupported code_challenge_method');
  }
  if (p.code_challenge) {
    if (!/^[A-Za-z0-9\-._~]{43,128}$/.test(p.code_challenge)) {
      return fail('invalid_request', 'Malformed code_challenge');
    }
    await auth.logins.recordAuthorizeRequest(p.code_challenge, client.id, redirectUri);
  }
  const forward = new URLSearchParams();
  for (const key of ['client_id', 'scope', 'state', 'nonce', 'code_challenge', 'code_challenge_method', 'launch', 'response_type', 'aud', 'prompt', 'login_hint']) {
    const value = key === 'scope' ? scope : key === 'code_challenge_method' ? method : p[key];
    if (value !== undefined) {
      forward.set(key, value);
    }
  }
  forward.set('redirect_uri', redirectUri);
  return `${auth.config.appBaseUrl}oauth?${forward}`;
}

function badRequestOutcome(text: string): import('@medplum/fhirtypes').OperationOutcome {
  return { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'invalid', details: { text } }] };
}

function verifyPkce(login: Login, verifier: string | undefined, client: ClientApplication | undefined): void {
  if (!login.codeChallenge) {
    if (!client?.pkceOptional) {
      throw new OAuthError('invalid_grant', 'This sign-in has no PKCE challenge, and the client requires PKCE');
    }
    return;
  }
  if (!verifier) {
    // A PKCE-optional client (the medplum CLI) may redeem without one even when the login page
    // added a challenge of its own, as with Medplum's server.
    // A challenge the client itself sent to /oauth2/authorize (a redirect_uri was recorded with it)
    // must be answered, pkceOptional or not.
    if (client?.pkceOptional && login.redirectUri === null) {
      return;
    }
    throw new OAuthError('invalid_grant', 'Missing code_verifier');
  }
  if (!VERIFIER_RE.test(verifier)) {
    throw new OAuthError('invalid_grant', 'Malformed code_verifier');
  }
  const method = login.codeChallengeMethod ?? 'plain';
  // A code for an OAuth client travels through a browser redirect: S256 only. A first-party sign-in
  // (no client: /auth/login answers the code in its JSON body) may use plain, as MedplumClient does
  // where it has no WebCrypto.
  if (method === 'plain' && login.clientId && !client?.pkceOptional) {
    throw new OAuthError('invalid_grant', 'code_challenge_method must be S256');
  }
  const computed = method === 'S256' ? createHash('sha256').update(verifier).digest('base64url') : verifier;
  if (computed !== login.codeChallenge) {
    throw new OAuthError('invalid_grant', 'code_verifier does not match the code_challenge');
  }
}

async function authorizationCodeGrant(auth: AuthServices, form: Record<string, string>, creds: ClientCredentials): Promise<TokenResponse> {
  if (!form.code) {
    throw new OAuthError('invalid_request', 'Missing code');
  }
  const login = await auth.logins.getByCode(form.code);
  if (!login) {
    // A code presented twice: revoke what the first redemption issued (RFC 6749 §4.1.2).
    const used = await auth.logins.getByAnyCode(form.code);
    if (used?.granted) {
      await auth.logins.revoke(used.id);
    }
    throw new OAuthError('invalid_grant', 'Invalid, expired or already used authorization code');
  }
  const clientId = creds.clientId ?? form.client_id;
  if (login.clientId && clientId !== login.clientId) {
    throw new OAuthError('invalid_grant', 'The code was issued to another client');
  }
  if (!login.clientId && clientId) {
    throw new OAuthError('invalid_grant', 'The code was not issued to a client');
  }
  const record = creds.client ?? (await auth.clients.find(login.clientId ?? undefined));
  const confidential = !!(record?.client.secret || record?.client.jwksUri);
  if (confidential && creds.method === 'none' && !login.codeChallenge) {
    throw new OAuthError('invalid_client', 'Client authentication is required', 401);
  }
  if (login.redirectUri !== null && form.redirect_uri !== login.redirectUri) {
    throw new OAuthError('invalid_grant', 'redirect_uri does not match the authorization request');
  }
  if (login.redirectUri === null && form.redirect_uri !== undefined && record && redirectUris(record.client).length > 0 && !redirectUris(record.client).includes(form.redirect_uri)) {
    throw new OAuthError('invalid_grant', 'redirect_uri is not registered for this client');
  }
  verifyPkce(login, form.code_verifier, record?.client);
  const refreshSecret = wantsRefreshToken(login.scope) ? newSecret() : null;
  if (!(await auth.logins.grant(login.id, refreshSecret))) {
    await auth.logins.revoke(login.id);
    throw new OAuthError('invalid_grant', 'Authorization code already used');
  }
  return issueFor(auth, { ...login, granted: true }, login.scope, refreshSecret, record?.client);
}

async function clientCredentialsGrant(auth: AuthServices, form: Record<string, string>, creds: ClientCredentials): Promise<TokenResponse> {
  if (creds.method === 'none' || !creds.client) {
    throw new OAuthError('invalid_client', 'Client authentication is required', 401);
  }
  const { client, projectId } = creds.client;
  if (!projectId) {
    throw new OAuthError('unauthorized_client', 'This client may not use client_credentials');
  }
  const membership = await auth.directory.membershipOfProfile(`ClientApplication/${client.id}`, projectId);
  if (!membership || membership.active === false) {
    throw new OAuthError('unauthorized_client', 'The client has no membership in its project');
  }
  const scope = form.scope || 'openid';
  const unknown = unknownScopes(scope);
  if (unknown.length > 0) {
    throw new OAuthError('invalid_scope', `Unknown scope: ${unknown.join(' ')}`);
  }
  const login = await auth.logins.create({
    clientId: client.id,
    membershipId: membership.id,
    projectId,
    authMethod: 'client',
    scope,
    granted: true,
  });
  return issueFor(auth, login, scope, null, client);
}

async function refreshTokenGrant(auth: AuthServices, form: Record<string, string>, creds: ClientCredentials): Promise<TokenResponse> {
  if (!form.refresh_token) {
    throw new OAuthError('invalid_request', 'Missing refresh_token');
  }
  const claims = await auth.keys.verify(form.refresh_token).catch(() => undefined);
  if (!claims || claims.token_use !== 'refresh' || typeof claims.login_id !== 'string' || typeof claims.refresh_secret !== 'string') {
    throw new OAuthError('invalid_grant', 'Invalid refresh token');
  }
  const login = await auth.logins.get(claims.login_id);
  if (!login || login.revoked || !login.granted) {
    throw new OAuthError('invalid_grant', 'The login of this refresh token is revoked');
  }
  const clientId = creds.clientId ?? form.client_id;
  if (login.clientId && clientId && clientId !== login.clientId) {
    throw new OAuthError('invalid_grant', 'The refresh token was issued to another client');
  }
  const record = creds.client ?? (await auth.clients.find(login.clientId ?? undefined));
  // A login whose code was bound by PKCE was started by the client acting as a public one (a
  // browser app holding only its client id): it refreshes the same way, as with Medplum. The
  // refresh token itself is rotated and single-use either way.
  if ((record?.client.secret || record?.client.jwksUri) && creds.method === 'none' && !login.codeChallenge) {
    throw new OAuthError('invalid_client', 'Client authentication is required', 401);
  }
  const scope = form.scope ?? login.scope;
  if (!isSubsetOf(scope, login.scope)) {
    throw new OAuthError('invalid_scope', 'A refresh may not widen the scope of the original grant');
  }
  const next = newSecret();
  if (!(await auth.logins.rotateRefreshSecret(login.id, claims.refresh_secret, next))) {
    // An old refresh token came back: someone holds a copy. End the whole login.
    await auth.logins.revoke(login.id);
    throw new OAuthError('invalid_grant', 'Refresh token already used; the login has been revoked');
  }
  return issueFor(auth, login, scope, next, record?.client);
}

async function issueFor(auth: AuthServices, login: Login, scope: string, refreshSecret: string | null, client: ClientApplication | undefined): Promise<TokenResponse> {
  let session;
  try {
    session = await auth.sessions.fromLogin(login, scope);
  } catch {
    throw new OAuthError('invalid_grant', 'The membership of this login is no longer active');
  }
  const user = login.userId ? (await auth.directory.find<User>('User', login.userId))?.resource : undefined;
  return auth.tokens.issue(
    { login, profile: session.profile, project: { reference: `Project/${session.project.id}`, display: session.project.name }, scope, email: user?.email, client },
    refreshSecret
  );
}
