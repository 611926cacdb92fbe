import { OAuthError } from '../oauth-error.ts';

/** An `application/x-www-form-urlencoded` body; a repeated parameter is an error (RFC 6749 §3.1). */
export function parseForm(body: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, value] of new URLSearchParams(body)) {
    if (key in out) {
      throw new OAuthError('invalid_request', `Parameter ${key} is repeated`);
    }
    out[key] = value;
  }
  return out;
}
