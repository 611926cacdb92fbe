-- Authentication infrastructure (docs/decisions/0007-auth-storage.md). Users, projects,
-- memberships, clients and policies are FHIR resources; these tables hold what must never be
-- served as FHIR: signing keys, password hashes and login sessions.

-- Token signing keys. The newest active key signs; every active key verifies.
CREATE TABLE signing_key (
  kid         text        PRIMARY KEY,
  alg         text        NOT NULL,
  public_jwk  jsonb       NOT NULL,
  private_jwk jsonb       NOT NULL,
  active      boolean     NOT NULL DEFAULT true,
  created     timestamptz NOT NULL DEFAULT now()
);

-- Password hashes of User resources (scrypt, self-describing string).
CREATE TABLE user_credential (
  user_id       text        PRIMARY KEY,
  password_hash text        NOT NULL,
  updated       timestamptz NOT NULL DEFAULT now()
);

-- One row per authentication (password sign-in, client credentials, ...): the session that
-- access and refresh tokens point at, so that logout and refresh-token reuse revoke it.
CREATE TABLE login (
  id                    uuid        PRIMARY KEY,
  user_id               text,
  client_id             text,
  membership_id         text,
  project_id            uuid,
  auth_method           text        NOT NULL,
  auth_time             timestamptz NOT NULL DEFAULT now(),
  scope                 text        NOT NULL,
  nonce                 text,
  code                  text        UNIQUE,
  code_expires          timestamptz,
  code_challenge        text,
  code_challenge_method text,
  redirect_uri          text,
  launch_id             text,
  patient_id            text,
  encounter_id          text,
  granted               boolean     NOT NULL DEFAULT false,
  revoked               boolean     NOT NULL DEFAULT false,
  refresh_secret        text,
  remote_address        text,
  user_agent            text,
  created               timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_user ON login (user_id, created DESC);

-- What /oauth2/authorize validated, keyed by the PKCE challenge the login page later presents,
-- so that the token request's redirect_uri is checked against the one this flow started with.
CREATE TABLE authorize_request (
  code_challenge text        PRIMARY KEY,
  client_id      text        NOT NULL,
  redirect_uri   text        NOT NULL,
  created        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX authorize_request_created ON authorize_request (created);

-- private_key_jwt client assertions seen, so that each is used once (OpenID Connect Core §9).
CREATE TABLE client_assertion (
  client_id text        NOT NULL,
  jti       text        NOT NULL,
  expires   timestamptz NOT NULL,
  PRIMARY KEY (client_id, jti)
);
