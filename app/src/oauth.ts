/**
 * The authorize request as `/oauth2/authorize` forwards it to the login page (`/oauth?...`), and
 * where the login page sends the browser afterwards. No React here: plain functions.
 */

export type CodeChallengeMethod = 'plain' | 'S256';

export interface AuthorizeParams {
  clientId?: string;
  redirectUri?: string;
  scope?: string;
  state?: string;
  nonce?: string;
  codeChallenge?: string;
  codeChallengeMethod?: CodeChallengeMethod;
  launch?: string;
  responseType?: string;
  aud?: string;
}

export function parseAuthorizeParams(search: string): AuthorizeParams {
  const query = new URLSearchParams(search);
  const get = (name: string): string | undefined => query.get(name) || undefined;
  const method = get('code_challenge_method');
  return {
    clientId: get('client_id'),
    redirectUri: get('redirect_uri'),
    scope: get('scope'),
    state: get('state'),
    nonce: get('nonce'),
    codeChallenge: get('code_challenge'),
    codeChallengeMethod: method === 'S256' || method === 'plain' ? method : undefined,
    launch: get('launch'),
    responseType: get('response_type'),
    aud: get('aud'),
  };
}

/** True when the app asked for a patient to be chosen at login (SMART standalone launch). */
export function wantsPatientLaunch(scope: string | undefined): boolean {
  return !!scope && scope.split(/\s+/).includes('launch/patient');
}

/**
 * Schemes the page must never navigate to: they would run in (or read from) this origin. The
 * server checks redirect_uri against the client's registration, but this page can be opened with
 * any query string, so it keeps its own guard.
 */
const FORBIDDEN_SCHEMES = new Set(['javascript:', 'data:', 'vbscript:', 'blob:', 'file:', 'about:']);

/** The redirect URI with `code` and `state` added to its own query; an error for a URI that cannot be one. */
export function buildCodeRedirect(redirectUri: string, code: string, state: string | undefined): string {
  let url: URL;
  try {
    url = new URL(redirectUri);
  } catch {
    throw new Error('Invalid redirect_uri');
  }
  if (FORBIDDEN_SCHEMES.has(url.protocol)) {
    throw new Error('Invalid redirect_uri');
  }
  url.searchParams.set('code', code);
  if (state !== undefined) {
    url.searchParams.set('state', state);
  }
  return url.toString();
}

/** What is wrong with the request before the form can be shown, or undefined. */
export function authorizeRequestProblem(params: AuthorizeParams): string | undefined {
  if (!params.clientId) {
    return 'The sign-in request has no client_id.';
  }
  if (!params.redirectUri) {
    return 'The sign-in request has no redirect_uri.';
  }
  try {
    buildCodeRedirect(params.redirectUri, 'x', undefined);
  } catch {
    return 'The sign-in request has an invalid redirect_uri.';
  }
  if (params.responseType !== undefined && params.responseType !== 'code') {
    return 'Only response_type=code is supported.';
  }
  return undefined;
}
