import { describe, expect, test } from 'vitest';
import { authorizeRequestProblem, buildCodeRedirect, parseAuthorizeParams, wantsPatientLaunch } from './oauth.ts';

describe('the login page and the authorize request', () => {
  test('reads the forwarded authorize query', () => {
    const params = parseAuthorizeParams(
      '?response_type=code&client_id=c1&redirect_uri=https%3A%2F%2Fapp.example%2Fcb&scope=launch%2Fpatient%20openid' +
        '&state=s%2B1&nonce=n1&code_challenge=abc&code_challenge_method=S256&launch=L&aud=https%3A%2F%2Ffhir.example%2Ffhir%2FR4'
    );
    expect(params).toEqual({
      clientId: 'c1',
      redirectUri: 'https://app.example/cb',
      scope: 'launch/patient openid',
      state: 's+1',
      nonce: 'n1',
      codeChallenge: 'abc',
      codeChallengeMethod: 'S256',
      launch: 'L',
      responseType: 'code',
      aud: 'https://fhir.example/fhir/R4',
    });
    expect(parseAuthorizeParams('?code_challenge_method=md5').codeChallengeMethod).toBeUndefined();
  });

  test('asks for a patient only for launch/patient', () => {
    expect(wantsPatientLaunch('openid launch/patient patient/*.rs')).toBe(true);
    expect(wantsPatientLaunch('openid patient/*.rs launch')).toBe(false);
    expect(wantsPatientLaunch('launch/patients')).toBe(false);
    expect(wantsPatientLaunch(undefined)).toBe(false);
  });

  test('adds code and state to the redirect URI, keeping its own query', () => {
    expect(buildCodeRedirect('https://app.example/cb?tenant=a&b=1', 'C/1', 'x y')).toBe('https://app.example/cb?tenant=a&b=1&code=C%2F1&state=x+y');
    expect(buildCodeRedirect('http://127.0.0.1:9/app.html', 'c', undefined)).toBe('http://127.0.0.1:9/app.html?code=c');
    expect(buildCodeRedirect('com.example.app:/callback', 'c', 's')).toBe('com.example.app:/callback?code=c&state=s');
  });

  test('never navigates to a script or local URL', () => {
    for (const uri of ['javascript:alert(1)', 'JavaScript:alert(1)', 'data:text/html,x', 'blob:https://a/b', 'file:///etc/passwd', 'not a url']) {
      expect(() => buildCodeRedirect(uri, 'c', 's'), uri).toThrow('Invalid redirect_uri');
      expect(authorizeRequestProblem({ clientId: 'c', redirectUri: uri })).toMatch(/invalid redirect_uri/);
    }
  });

  test('names what is missing', () => {
    expect(authorizeRequestProblem({ redirectUri: 'https://a/cb' })).toMatch(/client_id/);
    expect(authorizeRequestProblem({ clientId: 'c' })).toMatch(/redirect_uri/);
    expect(authorizeRequestProblem({ clientId: 'c', redirectUri: 'https://a/cb', responseType: 'token' })).toMatch(/response_type=code/);
    expect(authorizeRequestProblem({ clientId: 'c', redirectUri: 'https://a/cb', responseType: 'code' })).toBeUndefined();
  });
});
