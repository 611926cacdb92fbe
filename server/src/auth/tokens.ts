import { randomUUID } from 'node:crypto';
import type { ClientApplication, Reference } from '@medplum/fhirtypes';
import type { SigningKeys } from './keys.ts';
import type { Login } from './logins.ts';
import { splitScope } from './scopes.ts';

const DEFAULT_ACCESS_LIFETIME = 3600;
const DEFAULT_REFRESH_LIFETIME = 14 * 24 * 3600;
const ID_TOKEN_LIFETIME = 3600;

/** What /oauth2/token answers (RFC 6749 §5.1, SMART App Launch context, Medplum's extras). */
export interface TokenResponse {
  token_type: 'Bearer';
  expires_in: number;
  scope: string;
  access_token: string;
  id_token?: string;
  refresh_token?: string;
  project: Reference;
  profile: Reference;
  fhirUser: string;
  patient?: string;
  encounter?: string;
  need_patient_banner?: boolean;
  smart_style_url?: string;
}

export interface TokenSubject {
  login: Login;
  profile: Reference;
  /** The project, named in the response as Medplum's clients show it (`medplum whoami`). */
  project: Reference;
  /** The scope this token carries: the login's, or narrower on refresh. */
  scope: string;
  email?: string;
  client?: ClientApplication;
}

/** `1h`, `30m`, `45s`, `2w`, `7d` or plain seconds (ClientApplication.accessTokenLifetime). */
export function parseLifetime(value: string | undefined, fallback: number): number {
  const m = value ? /^(\d+)\s*([smhdw]?)$/.exec(value.trim()) : null;
  if (!m) {
    return fallback;
  }
  const unit = { '': 1, s: 1, m: 60, h: 3600, d: 86400, w: 604800 }[m[2] as '' | 's' | 'm' | 'h' | 'd' | 'w'];
  return Number(m[1]) * unit;
}

/** Whether a login may refresh: it asked for offline or online access. */
export function wantsRefreshToken(scope: string): boolean {
  return splitScope(scope).some((s) => s === 'offline_access' || s === 'online_access' || s === 'offline');
}

/** Signs the access, id and refresh tokens of a login. */
export class TokenIssuer {
  private readonly keys: SigningKeys;
  private readonly fhirBaseUrl: string;

  constructor(keys: SigningKeys, fhirBaseUrl: string) {
    this.keys = keys;
    this.fhirBaseUrl = fhirBaseUrl;
  }

  async issue(subject: TokenSubject, refreshSecret: string | null): Promise<TokenResponse> {
    const { login, profile, scope } = subject;
    const clientId = login.clientId ?? undefined;
    const sub = login.userId ?? clientId ?? profile.reference;
    const accessLifetime = parseLifetime(subject.client?.accessTokenLifetime, DEFAULT_ACCESS_LIFETIME);
    const common = { login_id: login.id, client_id: clientId, ...(clientId ? { aud: clientId } : {}) };
    const accessToken = await this.keys.sign(
      {
        ...common,
        token_use: 'access',
        jti: randomUUID(),
        sub,
        username: login.userId ?? undefined,
        scope,
        profile: profile.reference,
        ...(subject.email && splitScope(scope).includes('email') ? { email: subject.email } : {}),
      },
      accessLifetime
    );
    const scopes = splitScope(scope);
    const response: TokenResponse = {
      token_type: 'Bearer',
      expires_in: accessLifetime,
      scope,
      access_token: accessToken,
      project: subject.project,
      profile,
      fhirUser: this.fhirBaseUrl + profile.reference,
    };
    if (scopes.includes('openid')) {
      response.id_token = await this.keys.sign(
        {
          ...common,
          token_use: 'id',
          sub,
          aud: clientId ?? sub,
          ...(clientId ? { azp: clientId } : {}),
          auth_time: Math.floor(login.authTime.getTime() / 1000),
          ...(login.nonce ? { nonce: login.nonce } : {}),
          fhirUser: this.fhirBaseUrl + profile.reference,
          ...(subject.email && scopes.includes('email') ? { email: subject.email } : {}),
        },
        ID_TOKEN_LIFETIME
      );
    }
    if (refreshSecret) {
      response.refresh_token = await this.keys.sign(
        { ...common, token_use: 'refresh', refresh_secret: refreshSecret },
        parseLifetime(subject.client?.refreshTokenLifetime, DEFAULT_REFRESH_LIFETIME)
      );
    }
    if (login.patientId) {
      response.patient = login.patientId;
      response.need_patient_banner = !profile.reference?.startsWith('Patient/');
    }
    if (login.encounterId) {
      response.encounter = login.encounterId;
    }
    return response;
  }
}
