import type { FastifyInstance } from 'fastify';
import type { AuthServices } from '../service.ts';

/** Discovery documents: OpenID Connect, OAuth metadata (RFC 8414), JWKS, SMART configuration. */
export async function wellKnownRoutes(app: FastifyInstance, auth: AuthServices): Promise<void> {
  const base = auth.config.baseUrl;
  const endpoints = {
    issuer: base,
    authorization_endpoint: `${base}oauth2/authorize`,
    token_endpoint: `${base}oauth2/token`,
    userinfo_endpoint: `${base}oauth2/userinfo`,
    jwks_uri: `${base}.well-known/jwks.json`,
    introspection_endpoint: `${base}oauth2/introspect`,
    revocation_endpoint: `${base}oauth2/revoke`,
    end_session_endpoint: `${base}oauth2/logout`,
  };
  const grantTypes = ['authorization_code', 'client_credentials', 'refresh_token'];
  const authMethods = ['client_secret_basic', 'client_secret_post', 'private_key_jwt'];

  const openid = {
    ...endpoints,
    response_types_supported: ['code'],
    grant_types_supported: grantTypes,
    subject_types_supported: ['public'],
    id_token_signing_alg_values_supported: ['ES256'],
    scopes_supported: ['openid', 'profile', 'email', 'phone', 'fhirUser', 'offline_access'],
    token_endpoint_auth_methods_supported: authMethods,
    token_endpoint_auth_signing_alg_values_supported: ['RS256', 'RS384', 'ES256', 'ES384'],
    code_challenge_methods_supported: ['S256'],
    claims_supported: ['sub', 'iss', 'aud', 'exp', 'iat', 'auth_time', 'nonce', 'fhirUser', 'email', 'name', 'given_name', 'family_name'],
  };
  const smart = {
    ...endpoints,
    grant_types_supported: grantTypes,
    token_endpoint_auth_methods_supported: authMethods,
    token_endpoint_auth_signing_alg_values_supported: ['RS256', 'RS384', 'ES256', 'ES384'],
    scopes_supported: [
      'openid',
      'fhirUser',
      'launch',
      'launch/patient',
      'offline_access',
      'online_access',
      'patient/*.rs',
      'user/*.cruds',
      'system/*.cruds',
      'patient/*.read',
      'user/*.read',
      'user/*.write',
    ],
    response_types_supported: ['code'],
    code_challenge_methods_supported: ['S256'],
    capabilities: [
      'launch-ehr',
      'launch-standalone',
      'client-public',
      'client-confidential-symmetric',
      'client-confidential-asymmetric',
      'context-ehr-patient',
      'context-ehr-encounter',
      'context-standalone-patient',
      'context-banner',
      'context-style',
      'sso-openid-connect',
      'permission-offline',
      'permission-online',
      'permission-patient',
      'permission-user',
      'permission-v1',
      'permission-v2',
      'authorize-post',
    ],
  };
  const styles = { color_background: '#edeae3', color_error: '#9e2d2d', color_highlight: '#69b5ce', color_modal_backdrop: '', color_success: '#498e49', color_text: '#303030', dim_border_radius: '6px', dim_font_size: '13px', dim_spacing_size: '20px', font_family_body: 'Georgia, Times, serif', font_family_heading: "'HelveticaNeue-Light', Helvetica, Arial, sans-serif" };

  app.get('/.well-known/openid-configuration', async () => openid);
  app.get('/.well-known/oauth-authorization-server', async () => openid);
  app.get('/.well-known/jwks.json', async () => auth.keys.jwks());
  app.get('/.well-known/smart-configuration', async () => smart);
  app.get('/fhir/R4/.well-known/smart-configuration', async () => smart);
  app.get('/fhir/R4/.well-known/smart-styles.json', async () => styles);
}
