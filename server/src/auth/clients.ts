import { timingSafeEqual } from 'node:crypto';
import { createRemoteJWKSet, decodeJwt, jwtVerify } from 'jose';
import type { ClientApplication } from '@medplum/fhirtypes';
import type { Directory } from './directory.ts';
import { OAuthError } from './oauth-error.ts';

/**
 * The `medplum` CLI's client (`npx medplum login`): a public client that redirects to its local
 * listener and may skip PKCE, as Medplum's server defines it.
 */
export const MEDPLUM_CLI_CLIENT: ClientApplication & { id: string } = {
  resourceType: 'ClientApplication',
  id: 'medplum-cli',
  name: 'Medplum CLI',
  redirectUris: ['http://localhost:9615'],
  pkceOptional: true,
};

const JWT_BEARER_ASSERTION = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const ASSERTION_ALGS = ['RS256', 'RS384', 'RS512', 'ES256', 'ES384', 'ES512'];

export interface ClientRecord {
  client: ClientApplication & { id: string };
  /** Undefined for built-in clients. */
  projectId: string | undefined;
}

export interface ClientCredentials {
  clientId: string | undefined;
  /** How the client proved who it is; `none` for public clients that only name themselves. */
  method: 'client_secret_basic' | 'client_secret_post' | 'private_key_jwt' | 'none';
  client: ClientRecord | undefined;
}

export function redirectUris(client: ClientApplication): string[] {
  return [...(client.redirectUris ?? []), ...(client.redirectUri ? [client.redirectUri] : [])];
}

export function secretMatches(client: ClientApplication, presented: string): boolean {
  return [client.secret, client.retiringSecret].some((secret) => !!secret && safeEqual(secret, presented));
}

function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/** Finds and authenticates OAuth clients (RFC 6749 §2.3, RFC 7523 private_key_jwt). */
export class Clients {
  private readonly directory: Directory;
  private readonly tokenUrl: string;
  private readonly jwks = new Map<string, ReturnType<typeof createRemoteJWKSet>>();

  constructor(directory: Directory, tokenUrl: string) {
    this.directory = directory;
    this.tokenUrl = tokenUrl;
  }

  async find(clientId: string | undefined): Promise<ClientRecord | undefined> {
    if (!clientId) {
      return undefined;
    }
    if (clientId === MEDPLUM_CLI_CLIENT.id) {
      return { client: MEDPLUM_CLI_CLIENT, projectId: undefined };
    }
    const located = await this.directory.client(clientId);
    if (!located || located.resource.status === 'off') {
      return undefined;
    }
    return { client: located.resource, projectId: located.projectId };
  }

  /**
   * Reads the client's credentials from a token-endpoint request and checks them. Presenting
   * two methods at once, or wrong credentials, is `invalid_client`.
   */
  async authenticate(form: Record<string, string>, authorization: string | undefined): Promise<ClientCredentials> {
    const methods: ClientCredentials[] = [];
    if (authorization?.startsWith('Basic ')) {
      const decoded = Buffer.from(authorization.slice(6), 'base64').toString('utf8');
      const colon = decoded.indexOf(':');
      if (colon < 0) {
        throw new OAuthError('invalid_client', 'Malformed Basic credentials', 401);
      }
      let id: string;
      let secret: string;
      try {
        id = decodeURIComponent(decoded.slice(0, colon));
        secret = decodeURIComponent(decoded.slice(colon + 1));
      } catch {
        throw new OAuthError('invalid_client', 'Malformed Basic credentials', 401);
      }
      methods.push(await this.withSecret(id, secret, 'client_secret_basic'));
    }
    if (form.client_secret !== undefined) {
      methods.push(await this.withSecret(form.client_id, form.client_secret, 'client_secret_post'));
    }
    if (form.client_assertion !== undefined || form.client_assertion_type !== undefined) {
      methods.push(await this.withAssertion(form.client_assertion_type, form.client_assertion, form.client_id));
    }
    // Medplum's clients may send Basic and body credentials together: accepted when they agree.
    if (methods.length > 1 && methods.some((m) => m.clientId !== methods[0].clientId)) {
      throw new OAuthError('invalid_client', 'The client credentials name different clients', 401);
    }
    if (methods.length >= 1) {
      const authenticated = methods[0];
      if (form.client_id && form.client_id !== authenticated.clientId) {
        throw new OAuthError('invalid_client', 'client_id does not match the client credentials', 401);
      }
      return authenticated;
    }
    return { clientId: form.client_id || undefined, method: 'none', client: await this.find(form.client_id) };
  }

  private async withSecret(clientId: string | undefined, secret: string, method: ClientCredentials['method']): Promise<ClientCredentials> {
    const record = await this.find(clientId);
    if (!record || !clientId || !secretMatches(record.client, secret)) {
      throw new OAuthError('invalid_client', 'Invalid client credentials', 401);
    }
    return { clientId, method, client: record };
  }

  private async withAssertion(type: string | undefined, assertion: string | undefined, formClientId: string | undefined): Promise<ClientCredentials> {
    if (type !== JWT_BEARER_ASSERTION || !assertion) {
      throw new OAuthError('invalid_request', `client_assertion_type must be ${JWT_BEARER_ASSERTION} with a client_assertion`);
    }
    let clientId: string | undefined;
    try {
      clientId = decodeJwt(assertion).iss;
    } catch {
      throw new OAuthError('invalid_client', 'Malformed client_assertion', 401);
    }
    const record = await this.find(clientId ?? formClientId);
    const jwksUri = record?.client.jwksUri;
    if (!record || !clientId || !jwksUri) {
      throw new OAuthError('invalid_client', 'Unknown client, or the client has no jwksUri', 401);
    }
    let keySet = this.jwks.get(jwksUri);
    if (!keySet) {
      keySet = createRemoteJWKSet(new URL(jwksUri));
      this.jwks.set(jwksUri, keySet);
    }
    let payload;
    try {
      ({ payload } = await jwtVerify(assertion, keySet, {
        audience: this.tokenUrl,
        issuer: clientId,
        subject: clientId,
        algorithms: ASSERTION_ALGS,
        requiredClaims: ['exp', 'jti'],
        maxTokenAge: '5 minutes',
      }));
    } catch {
      throw new OAuthError('invalid_client', 'Invalid client_assertion', 401);
    }
    if (!(await this.directory.recordAssertion(clientId, String(payload.jti), new Date((payload.exp as number) * 1000)))) {
      throw new OAuthError('invalid_client', 'client_assertion already used', 401);
    }
    return { clientId, method: 'private_key_jwt', client: record };
  }
}
