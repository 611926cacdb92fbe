import { OperationOutcomeError, unauthorized } from '@medplum/core';
import type { WithId } from '@medplum/core';
import type { AccessPolicy, ClientApplication, Project, ProjectMembership, Reference } from '@medplum/fhirtypes';
import { AccessRules } from '../fhir/repo/access-rules.ts';
import type { RepositoryContext } from '../fhir/repo/postgres-repository.ts';
import type { Directory } from './directory.ts';
import type { SigningKeys } from './keys.ts';
import type { Login, LoginStore } from './logins.ts';
import { buildAccessPolicy, PROTECTED_TYPES } from './policy.ts';
import { applyScopes } from './scopes.ts';

/** Who is asking: the login (if any), its membership and project, and the effective access policy. */
export interface AuthSession {
  /** Undefined for per-request client Basic authentication, which has no login session. */
  login: Login | undefined;
  project: WithId<Project>;
  membership: WithId<ProjectMembership>;
  profile: Reference;
  clientId: string | undefined;
  scope: string;
  /** The launch patient (SMART context, or the signed-in Patient). */
  patientId: string | undefined;
  /** The effective policy after parameters and scopes; undefined for super admins (unrestricted). */
  accessPolicy: AccessPolicy | undefined;
  context: RepositoryContext;
  superAdmin: boolean;
  admin: boolean;
}

/** Types whose changes alter sessions: cached sessions are dropped when one is written on this node. */
const SESSION_TYPES = new Set(['Project', 'ProjectMembership', 'AccessPolicy', 'ClientApplication', 'User']);
/** How long another node's change to those types may take to reach this node's cached sessions. */
const CACHE_TTL_MS = 5000;
const CACHE_MAX = 10_000;

type CachedSession = Omit<AuthSession, 'login'>;

/**
 * Builds sessions from logins and verifies bearer tokens. The login row is read on every request
 * (logout and revocation act at once everywhere); what a membership grants is cached briefly.
 */
export class Sessions {
  private readonly directory: Directory;
  private readonly logins: LoginStore;
  private readonly keys: SigningKeys;
  private cache = new Map<string, { session: CachedSession; expires: number }>();

  constructor(directory: Directory, logins: LoginStore, keys: SigningKeys) {
    this.directory = directory;
    this.logins = logins;
    this.keys = keys;
  }

  /** The session of an access token; 401 for anything but a valid, unrevoked access token. */
  async fromAccessToken(token: string): Promise<AuthSession> {
    let claims;
    try {
      claims = await this.keys.verify(token);
    } catch {
      throw new OperationOutcomeError(unauthorized);
    }
    if (claims.token_use !== 'access' || typeof claims.login_id !== 'string') {
      throw new OperationOutcomeError(unauthorized);
    }
    const login = await this.logins.get(claims.login_id);
    if (!login || login.revoked || !login.granted) {
      throw new OperationOutcomeError(unauthorized);
    }
    return this.fromLogin(login, typeof claims.scope === 'string' ? claims.scope : login.scope);
  }

  /** The session a login grants, with `scope` (the login's, or narrower after a refresh). */
  async fromLogin(login: Login, scope = login.scope): Promise<AuthSession> {
    if (!login.membershipId || !login.projectId) {
      throw new OperationOutcomeError(unauthorized);
    }
    const key = [login.membershipId, login.projectId, login.clientId, login.patientId, login.scope, scope].join('\0');
    const cached = this.cache.get(key);
    if (cached && cached.expires > Date.now()) {
      return { ...cached.session, login };
    }
    const membership = (await this.directory.find<ProjectMembership>('ProjectMembership', login.membershipId, login.projectId))?.resource;
    if (!membership || membership.active === false) {
      throw new OperationOutcomeError(unauthorized);
    }
    // A client switched off or deleted ends the sessions it opened (the built-in CLI client has no row).
    if (login.clientId && login.clientId !== 'medplum-cli') {
      const client = await this.directory.client(login.clientId);
      if (!client || client.resource.status === 'off') {
        throw new OperationOutcomeError(unauthorized);
      }
    }
    const session = await this.fromMembership(membership, login.projectId, { login, scope, clientId: login.clientId ?? undefined });
    if (this.cache.size >= CACHE_MAX) {
      this.cache.clear();
    }
    const { login: _login, ...rest } = session;
    this.cache.set(key, { session: rest, expires: Date.now() + CACHE_TTL_MS });
    return session;
  }

  /** Called for every resource written on this node; true when cached sessions were dropped. */
  resourceWritten(resourceType: string): boolean {
    if (SESSION_TYPES.has(resourceType)) {
      this.cache.clear();
      return true;
    }
    return false;
  }

  /** Another node changed a membership, policy, project or client. */
  invalidate(): void {
    this.cache.clear();
  }

  /** A session for a membership; used for logins and for client Basic authentication. */
  async fromMembership(
    membership: WithId<ProjectMembership>,
    projectId: string,
    options: { login?: Login; scope: string; clientId?: string }
  ): Promise<AuthSession> {
    const project = await this.directory.project(projectId);
    if (!project || !membership.profile?.reference) {
      throw new OperationOutcomeError(unauthorized);
    }
    const superAdmin = project.superAdmin === true && membership.admin === true;
    const profile = membership.profile;
    const patientId = options.login?.patientId ?? (profile.reference?.startsWith('Patient/') ? profile.reference.slice(8) : undefined);
    let accessPolicy: AccessPolicy | undefined;
    if (!superAdmin) {
      const policies = new Map<string, AccessPolicy>();
      const refs = [membership.accessPolicy, ...(membership.access ?? []).map((a) => a.policy)];
      for (const ref of refs) {
        const id = ref?.reference?.startsWith('AccessPolicy/') ? ref.reference.slice(13) : undefined;
        const found = id ? await this.directory.find<AccessPolicy>('AccessPolicy', id, projectId) : undefined;
        if (id && found) {
          policies.set(id, found.resource);
        }
      }
      accessPolicy = applyScopes(buildAccessPolicy({ membership, projectId, policies }), options.scope, patientId, options.login?.scope);
    }
    const context: RepositoryContext = {
      projectId,
      readProjects: [projectId, ...linkedProjects(project)],
      allProjects: superAdmin,
      writeAllProjects: superAdmin,
      author: profile,
      access: accessPolicy ? new AccessRules(accessPolicy, PROTECTED_TYPES) : undefined,
    };
    return {
      login: options.login,
      project,
      membership,
      profile,
      clientId: options.clientId,
      scope: options.scope,
      patientId,
      accessPolicy,
      context,
      superAdmin,
      admin: membership.admin === true,
    };
  }

  /** `Authorization: Basic id:secret` of a client application, on any API call. */
  async fromClientSecret(clientId: string, secret: string, verify: (client: ClientApplication, secret: string) => boolean): Promise<AuthSession> {
    const located = await this.directory.client(clientId);
    if (!located || located.resource.status === 'off' || !verify(located.resource, secret)) {
      throw new OperationOutcomeError(unauthorized);
    }
    const membership = await this.directory.membershipOfProfile(`ClientApplication/${clientId}`, located.projectId);
    if (!membership || membership.active === false) {
      throw new OperationOutcomeError(unauthorized);
    }
    return this.fromMembership(membership, located.projectId, { scope: 'openid', clientId });
  }
}

function linkedProjects(project: Project): string[] {
  return (project.link ?? [])
    .map((l) => l.project?.reference)
    .filter((r): r is string => !!r?.startsWith('Project/'))
    .map((r) => r.slice(8));
}
