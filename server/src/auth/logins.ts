import { randomBytes, randomUUID } from 'node:crypto';
import type { Queryable } from '../db/pool.ts';

/** How long an authorization code may wait for its token request. */
const CODE_LIFETIME = '5 minutes';
/** How long an unfinished sign-in (choose profile, pick a patient) stays usable. */
const PENDING_LIFETIME = '1 hour';

export type AuthMethod = 'password' | 'client' | 'basic' | 'execute';

/** One authentication: what tokens point at, and what logout and refresh-token reuse revoke. */
export interface Login {
  id: string;
  userId: string | null;
  clientId: string | null;
  membershipId: string | null;
  projectId: string | null;
  authMethod: AuthMethod;
  authTime: Date;
  scope: string;
  nonce: string | null;
  codeChallenge: string | null;
  codeChallengeMethod: string | null;
  redirectUri: string | null;
  launchId: string | null;
  patientId: string | null;
  encounterId: string | null;
  granted: boolean;
  revoked: boolean;
  refreshSecret: string | null;
  created: Date;
}

interface LoginRow {
  id: string;
  user_id: string | null;
  client_id: string | null;
  membership_id: string | null;
  project_id: string | null;
  auth_method: AuthMethod;
  auth_time: Date;
  scope: string;
  nonce: string | null;
  code_challenge: string | null;
  code_challenge_method: string | null;
  redirect_uri: string | null;
  launch_id: string | null;
  patient_id: string | null;
  encounter_id: string | null;
  granted: boolean;
  revoked: boolean;
  refresh_secret: string | null;
  created: Date;
}

function toLogin(row: LoginRow): Login {
  return {
    id: row.id,
    userId: row.user_id,
    clientId: row.client_id,
    membershipId: row.membership_id,
    projectId: row.project_id,
    authMethod: row.auth_method,
    authTime: row.auth_time,
    scope: row.scope,
    nonce: row.nonce,
    codeChallenge: row.code_challenge,
    codeChallengeMethod: row.code_challenge_method,
    redirectUri: row.redirect_uri,
    launchId: row.launch_id,
    patientId: row.patient_id,
    encounterId: row.encounter_id,
    granted: row.granted,
    revoked: row.revoked,
    refreshSecret: row.refresh_secret,
    created: row.created,
  };
}

export interface NewLogin {
  userId?: string;
  clientId?: string;
  membershipId?: string;
  projectId?: string;
  authMethod: AuthMethod;
  scope: string;
  nonce?: string;
  codeChallenge?: string;
  codeChallengeMethod?: string;
  redirectUri?: string;
  launchId?: string;
  granted?: boolean;
  remoteAddress?: string;
  userAgent?: string;
}

export function newSecret(bytes = 32): string {
  return randomBytes(bytes).toString('hex');
}

/** The `login` table. Every state change is one conditional UPDATE, so races resolve in Postgres. */
export class LoginStore {
  private readonly db: Queryable;

  constructor(db: Queryable) {
    this.db = db;
  }

  async create(login: NewLogin): Promise<Login> {
    const { rows } = await this.db.query<LoginRow>(
      `INSERT INTO login (id, user_id, client_id, membership_id, project_id, auth_method, scope, nonce,
         code_challenge, code_challenge_method, redirect_uri, launch_id, granted, remote_address, user_agent)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) RETURNING *`,
      [
        randomUUID(),
        login.userId ?? null,
        login.clientId ?? null,
        login.membershipId ?? null,
        login.projectId ?? null,
        login.authMethod,
        login.scope,
        login.nonce ?? null,
        login.codeChallenge ?? null,
        login.codeChallengeMethod ?? null,
        login.redirectUri ?? null,
        login.launchId ?? null,
        login.granted ?? false,
        login.remoteAddress ?? null,
        login.userAgent ?? null,
      ]
    );
    return toLogin(rows[0]);
  }

  async get(id: string): Promise<Login | undefined> {
    if (!/^[0-9a-f-]{36}$/i.test(id)) {
      return undefined;
    }
    const { rows } = await this.db.query<LoginRow>('SELECT * FROM login WHERE id = $1', [id]);
    return rows[0] ? toLogin(rows[0]) : undefined;
  }

  /** A sign-in still being finished (not granted, not revoked, recent): profile choice, patient pick. */
  async getPending(id: string): Promise<Login | undefined> {
    if (!/^[0-9a-f-]{36}$/i.test(id)) {
      return undefined;
    }
    const { rows } = await this.db.query<LoginRow>(
      `SELECT * FROM login WHERE id = $1 AND NOT granted AND NOT revoked AND created > now() - interval '${PENDING_LIFETIME}'`,
      [id]
    );
    return rows[0] ? toLogin(rows[0]) : undefined;
  }

  /** The login an unexpired, not yet redeemed code belongs to. */
  async getByCode(code: string): Promise<Login | undefined> {
    const { rows } = await this.db.query<LoginRow>(
      'SELECT * FROM login WHERE code = $1 AND code_expires > now() AND NOT granted AND NOT revoked',
      [code]
    );
    return rows[0] ? toLogin(rows[0]) : undefined;
  }

  /** Any login a code was ever issued for (to detect replays of redeemed codes). */
  async getByAnyCode(code: string): Promise<Login | undefined> {
    const { rows } = await this.db.query<LoginRow>('SELECT * FROM login WHERE code = $1', [code]);
    return rows[0] ? toLogin(rows[0]) : undefined;
  }

  /** Binds the membership and issues a fresh authorization code. */
  async issueCode(id: string, membershipId: string, projectId: string): Promise<string> {
    const code = newSecret(16);
    const { rowCount } = await this.db.query(
      `UPDATE login SET membership_id = $2, project_id = $3, code = $4, code_expires = now() + interval '${CODE_LIFETIME}'
       WHERE id = $1 AND NOT granted AND NOT revoked`,
      [id, membershipId, projectId, code]
    );
    if (rowCount !== 1) {
      throw new Error('Login is no longer pending');
    }
    return code;
  }

  async setScope(id: string, scope: string): Promise<void> {
    await this.db.query('UPDATE login SET scope = $2 WHERE id = $1 AND NOT granted', [id, scope]);
  }

  /** The patient picked on the login page; only once, so nobody holding the code can switch it later. */
  async choosePatient(id: string, patientId: string): Promise<boolean> {
    const { rowCount } = await this.db.query(
      'UPDATE login SET patient_id = $2 WHERE id = $1 AND patient_id IS NULL AND NOT granted AND NOT revoked',
      [id, patientId]
    );
    return rowCount === 1;
  }

  async setLaunchContext(id: string, patientId: string | null, encounterId: string | null): Promise<void> {
    await this.db.query('UPDATE login SET patient_id = $2, encounter_id = $3 WHERE id = $1 AND NOT granted', [id, patientId, encounterId]);
  }

  /**
   * Redeems the code: true for the first caller only. The refresh secret is set at the same time
   * when the login may refresh.
   */
  async grant(id: string, refreshSecret: string | null): Promise<boolean> {
    const { rowCount } = await this.db.query(
      'UPDATE login SET granted = true, refresh_secret = $2 WHERE id = $1 AND NOT granted AND NOT revoked AND code_expires > now()',
      [id, refreshSecret]
    );
    return rowCount === 1;
  }

  /** Swaps the refresh secret if `presented` is the current one; false means reuse (or revocation). */
  async rotateRefreshSecret(id: string, presented: string, next: string): Promise<boolean> {
    const { rowCount } = await this.db.query(
      'UPDATE login SET refresh_secret = $3 WHERE id = $1 AND refresh_secret = $2 AND NOT revoked',
      [id, presented, next]
    );
    return rowCount === 1;
  }

  /** Ends every other login of a user (after a password change). */
  async revokeOthers(userId: string, keep: string | undefined): Promise<void> {
    await this.db.query('UPDATE login SET revoked = true, refresh_secret = NULL WHERE user_id = $1 AND id IS DISTINCT FROM $2', [userId, keep ?? null]);
  }

  async revoke(id: string): Promise<void> {
    await this.db.query('UPDATE login SET revoked = true, refresh_secret = NULL WHERE id = $1', [id]);
  }

  /** Remembers what /oauth2/authorize checked, for the sign-in that presents this PKCE challenge. */
  async recordAuthorizeRequest(codeChallenge: string, clientId: string, redirectUri: string): Promise<void> {
    // First come keeps it: another party presenting the same challenge cannot redirect this flow.
    await this.db.query(
      `INSERT INTO authorize_request (code_challenge, client_id, redirect_uri) VALUES ($1, $2, $3)
       ON CONFLICT (code_challenge) DO NOTHING`,
      [codeChallenge, clientId, redirectUri]
    );
    // Expired rows go now and then, not on every request (index on created).
    if (Math.random() < 0.01) {
      await this.db.query("DELETE FROM authorize_request WHERE created < now() - interval '1 day'");
    }
  }

  async authorizedRedirectUri(codeChallenge: string, clientId: string): Promise<string | undefined> {
    const { rows } = await this.db.query<{ redirect_uri: string }>(
      `SELECT redirect_uri FROM authorize_request
       WHERE code_challenge = $1 AND client_id = $2 AND created > now() - interval '${PENDING_LIFETIME}'`,
      [codeChallenge, clientId]
    );
    return rows[0]?.redirect_uri;
  }

  async recentForUser(userId: string, limit = 10): Promise<Login[]> {
    const { rows } = await this.db.query<LoginRow>(
      'SELECT * FROM login WHERE user_id = $1 AND granted AND NOT revoked ORDER BY created DESC LIMIT $2',
      [userId, limit]
    );
    return rows.map(toLogin);
  }
}
