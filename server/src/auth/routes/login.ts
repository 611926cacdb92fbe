import { randomUUID } from 'node:crypto';
import { allOk, badRequest, forbidden, Operator, OperationOutcomeError } from '@medplum/core';
import type { WithId } from '@medplum/core';
import type {
  Patient,
  Practitioner,
  Project,
  ProjectMembership,
  Reference,
  SmartAppLaunch,
  User,
  UserConfiguration,
} from '@medplum/fhirtypes';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { authenticate, remoteAddress } from '../authenticate.ts';
import { redirectUris } from '../clients.ts';
import type { Login } from '../logins.ts';
import { hashPassword, passwordProblem, verifyPassword } from '../passwords.ts';
import { unknownScopes } from '../scopes.ts';
import type { AuthServices } from '../service.ts';
import { useJsonBodies } from '../../http/json-body.ts';

type Body = Record<string, unknown>;

/** Medplum's sign-in API under /auth, as `MedplumClient` and `@medplum/react`'s SignInForm use it. */
export async function loginRoutes(app: FastifyInstance, auth: AuthServices): Promise<void> {
  useJsonBodies(app);
  app.post('/auth/method', async () => ({}));

  app.post('/auth/login', async (request) => {
    const body = jsonBody(request);
    const email = requireString(body, 'email').trim().toLowerCase();
    const password = requireString(body, 'password');
    const scope = optionalString(body, 'scope') ?? 'openid';
    const unknown = unknownScopes(scope);
    if (unknown.length > 0) {
      throw new OperationOutcomeError(badRequest(`Unknown scope: ${unknown.join(' ')}`, 'scope'));
    }
    const clientId = optionalString(body, 'clientId');
    const client = clientId ? await auth.clients.find(clientId) : undefined;
    if (clientId && !client) {
      throw new OperationOutcomeError(badRequest('Unknown clientId', 'clientId'));
    }
    const codeChallenge = optionalString(body, 'codeChallenge');
    // The login page sends the browser to redirectUri with the code: it must be the URI
    // /oauth2/authorize validated for this flow (or, without one, a URI the client registered).
    const redirectUri = optionalString(body, 'redirectUri');
    const authorizedRedirect = codeChallenge && clientId ? await auth.logins.authorizedRedirectUri(codeChallenge, clientId) : undefined;
    if (client && redirectUri !== undefined) {
      const allowed = authorizedRedirect ? [authorizedRedirect] : redirectUris(client.client);
      if (!allowed.includes(redirectUri)) {
        // No expression: SignInForm shows only issues without one on its password step.
        throw new OperationOutcomeError(badRequest('redirect_uri does not match the authorization request'));
      }
    }
    const method = optionalString(body, 'codeChallengeMethod');
    if (method !== undefined && method !== 'S256' && method !== 'plain') {
      throw new OperationOutcomeError(badRequest('codeChallengeMethod must be S256 or plain', 'codeChallengeMethod'));
    }
    const address = remoteAddress(request);
    await auth.rateLimits.beginLogin(`account:${email}`, `address:${address}`);
    const user = await auth.directory.userByEmail(email);
    const credential = user ? await auth.directory.passwordHash(user.id) : undefined;
    if (!user || !(await verifyPassword(password, credential))) {
      auth.audit.login(undefined, user ? `User/${user.id}` : email, false, 'Invalid email or password', address);
      throw new OperationOutcomeError(badRequest('Email or password is invalid'));
    }
    await auth.rateLimits.succeededLogin(`account:${email}`, `address:${address}`);
    const login = await auth.logins.create({
      userId: user.id,
      clientId,
      authMethod: 'password',
      scope,
      nonce: optionalString(body, 'nonce'),
      codeChallenge,
      codeChallengeMethod: method ?? (codeChallenge ? 'plain' : undefined),
      redirectUri: authorizedRedirect,
      launchId: optionalString(body, 'launch'),
      remoteAddress: address,
      userAgent: request.headers['user-agent'],
    });
    let memberships = (await auth.directory.membershipsOfUser(user.id)).filter((m) => m.active !== false);
    // A project's client signs users in to that project only.
    const requestedProject = optionalString(body, 'projectId');
    if (client?.projectId && requestedProject && requestedProject !== client.projectId) {
      throw new OperationOutcomeError(badRequest('This client belongs to another project', 'projectId'));
    }
    const projectId = client?.projectId ?? requestedProject;
    if (projectId) {
      memberships = memberships.filter((m) => m.project?.reference === `Project/${projectId}`);
    }
    const resourceType = optionalString(body, 'resourceType');
    if (resourceType) {
      memberships = memberships.filter((m) => m.profile?.reference?.startsWith(`${resourceType}/`));
    }
    auth.audit.login(
      memberships.length === 1 ? await auth.directory.project(projectOf(memberships[0])) : undefined,
      `User/${user.id}`,
      true,
      'Signed in',
      address
    );
    return respondWithMemberships(auth, login, memberships);
  });

  app.get<{ Params: { login: string } }>('/auth/login/:login', async (request) => {
    const login = await pendingLogin(auth, request.params.login);
    const memberships = (await auth.directory.membershipsOfUser(login.userId as string)).filter((m) => m.active !== false);
    if (login.membershipId) {
      const chosen = memberships.find((m) => m.id === login.membershipId);
      if (chosen) {
        return respondWithMemberships(auth, login, [chosen]);
      }
    }
    return respondWithMemberships(auth, login, memberships);
  });

  app.post('/auth/profile', async (request) => {
    const body = jsonBody(request);
    const login = await pendingLogin(auth, requireString(body, 'login'));
    const membershipId = requireString(body, 'profile');
    const membership = (await auth.directory.membershipsOfUser(login.userId as string)).find(
      (m) => m.id === membershipId && m.active !== false
    );
    if (!membership) {
      throw new OperationOutcomeError(badRequest('Profile not found', 'profile'));
    }
    return { login: login.id, code: await bindMembership(auth, login, membership) };
  });

  app.post('/auth/scope', async (request) => {
    const body = jsonBody(request);
    const login = await pendingLogin(auth, requireString(body, 'login'));
    const scope = requireString(body, 'scope');
    const requested = new Set(login.scope.split(/\s+/));
    if (!scope.split(/\s+/).every((s) => requested.has(s))) {
      throw new OperationOutcomeError(badRequest('The scope may only narrow what was requested', 'scope'));
    }
    await auth.logins.setScope(login.id, scope);
    if (!login.membershipId || !login.projectId) {
      throw new OperationOutcomeError(badRequest('Choose a profile first', 'login'));
    }
    const membership = await auth.directory.find<ProjectMembership>('ProjectMembership', login.membershipId, login.projectId);
    if (!membership) {
      throw new OperationOutcomeError(badRequest('Profile not found', 'login'));
    }
    return { login: login.id, code: await bindMembership(auth, { ...login, scope }, membership.resource) };
  });

  app.get('/auth/me', async (request, reply) => {
    const session = await authenticate(request, reply, auth);
    const [type, id] = (session.profile.reference ?? '').split('/');
    const profile = (await auth.directory.find(type as 'Practitioner', id, session.project.id))?.resource;
    const user = session.login?.userId ? (await auth.directory.find<User>('User', session.login.userId))?.resource : undefined;
    const m = session.membership;
    const logins = session.login?.userId ? await auth.logins.recentForUser(session.login.userId) : [];
    return {
      ...(user ? { user: { resourceType: 'User', id: user.id, email: user.email, identifier: user.identifier } } : {}),
      project: {
        resourceType: 'Project',
        id: session.project.id,
        name: session.project.name,
        description: session.project.description,
        strictMode: session.project.strictMode,
        superAdmin: session.project.superAdmin,
      },
      membership: { resourceType: 'ProjectMembership', id: m.id, identifier: m.identifier, user: m.user, profile: m.profile, admin: m.admin },
      profile,
      config: await userConfiguration(auth, session.project.id, m),
      accessPolicy: session.accessPolicy ?? { resourceType: 'AccessPolicy', resource: [{ resourceType: '*' }] },
      security: {
        mfaEnrolled: false,
        sessions: logins.map((l) => ({ id: l.id, lastUpdated: l.created.toISOString(), authMethod: l.authMethod, remoteAddress: undefined })),
        memberships: [],
      },
    };
  });

  app.post('/auth/newuser', async (request) => {
    const body = jsonBody(request);
    if (!auth.config.registrationEnabled) {
      throw new OperationOutcomeError({ ...forbidden, issue: [{ severity: 'error', code: 'forbidden', details: { text: 'Registration is disabled on this server' } }] });
    }
    const email = requireString(body, 'email').trim().toLowerCase();
    if (!/^[^@\s]+@[^@\s]+$/.test(email)) {
      throw new OperationOutcomeError(badRequest('Invalid email', 'email'));
    }
    // Sign-up hashes a password for anyone who asks: it counts against the same limits as sign-in.
    await auth.rateLimits.beginLogin(`account:${email}`, `address:${remoteAddress(request)}`);
    const password = requireString(body, 'password');
    const problem = passwordProblem(password);
    if (problem) {
      throw new OperationOutcomeError(badRequest(problem, 'password'));
    }
    const firstName = requireString(body, 'firstName');
    const lastName = requireString(body, 'lastName');
    if (await auth.directory.userByEmail(email)) {
      throw new OperationOutcomeError(badRequest('Email already registered', 'email'));
    }
    const user = await auth.directory.repo().createResource<User>({ resourceType: 'User', firstName, lastName, email });
    await auth.directory.setPasswordHash(user.id, await hashPassword(password));
    const codeChallenge = optionalString(body, 'codeChallenge');
    const login = await auth.logins.create({
      userId: user.id,
      clientId: optionalString(body, 'clientId'),
      authMethod: 'password',
      scope: optionalString(body, 'scope') ?? 'openid',
      codeChallenge,
      codeChallengeMethod: optionalString(body, 'codeChallengeMethod'),
      remoteAddress: remoteAddress(request),
      userAgent: request.headers['user-agent'],
    });
    return { login: login.id };
  });

  app.post('/auth/newproject', async (request) => {
    const body = jsonBody(request);
    if (!auth.config.registrationEnabled) {
      throw new OperationOutcomeError({ ...forbidden, issue: [{ severity: 'error', code: 'forbidden', details: { text: 'Creating projects is disabled on this server' } }] });
    }
    const login = await pendingLogin(auth, requireString(body, 'login'));
    const projectName = requireString(body, 'projectName').trim();
    if (!projectName) {
      throw new OperationOutcomeError(badRequest('Project name is required', 'projectName'));
    }
    const user = (await auth.directory.find<User>('User', login.userId as string))?.resource;
    if (!user) {
      throw new OperationOutcomeError(badRequest('User not found', 'login'));
    }
    const membership = await createProject(auth, projectName, user);
    return { login: login.id, code: await bindMembership(auth, login, membership) };
  });

  app.post('/auth/changepassword', async (request, reply) => {
    const session = await authenticate(request, reply, auth);
    const body = jsonBody(request);
    const userId = session.login?.userId;
    if (!userId) {
      throw new OperationOutcomeError(badRequest('Only users have passwords'));
    }
    const oldPassword = requireString(body, 'oldPassword');
    const newPassword = requireString(body, 'newPassword');
    if (!(await verifyPassword(oldPassword, await auth.directory.passwordHash(userId)))) {
      throw new OperationOutcomeError(badRequest('Incorrect password', 'oldPassword'));
    }
    const problem = passwordProblem(newPassword);
    if (problem) {
      throw new OperationOutcomeError(badRequest(problem, 'newPassword'));
    }
    await auth.directory.setPasswordHash(userId, await hashPassword(newPassword));
    // Whoever else holds a session (perhaps why the password changes) loses it.
    await auth.logins.revokeOthers(userId, session.login?.id);
    return allOk;
  });

  // Standalone SMART launch with launch/patient: the login page lists the patients this sign-in
  // may see and binds the chosen one before the client redeems the code.
  app.post('/auth/patients', async (request) => {
    const body = jsonBody(request);
    const login = await loginByCode(auth, requireString(body, 'code'));
    const session = await userSession(auth, login);
    const name = optionalString(body, 'name');
    return auth.directory.repoFor(session.context).search<Patient>({
      resourceType: 'Patient',
      filters: name ? [{ code: 'name', operator: Operator.CONTAINS, value: name }] : [],
      count: 20,
      sortRules: [{ code: 'name' }],
    });
  });

  app.post('/auth/launch-patient', async (request) => {
    const body = jsonBody(request);
    const login = await loginByCode(auth, requireString(body, 'code'));
    const patientId = requireString(body, 'patient');
    const session = await userSession(auth, login);
    // Only a patient this user may read can become the launch context.
    await auth.directory.repoFor(session.context).readResource<Patient>('Patient', patientId);
    if (!(await auth.logins.choosePatient(login.id, patientId))) {
      throw new OperationOutcomeError(badRequest('A patient has already been chosen for this sign-in', 'patient'));
    }
    return { ok: true };
  });
}

/** The user's own access (policy, no SMART scopes): what the patient picker may list and bind. */
function userSession(auth: AuthServices, login: Login): ReturnType<AuthServices['sessions']['fromLogin']> {
  return auth.sessions.fromLogin({ ...login, scope: 'openid' }, 'openid');
}

function jsonBody(request: FastifyRequest): Body {
  const body = request.body;
  if (!body || typeof body !== 'object' || Array.isArray(body)) {
    throw new OperationOutcomeError(badRequest('Expected a JSON object'));
  }
  return body as Body;
}

function requireString(body: Body, key: string): string {
  const value = body[key];
  if (typeof value !== 'string' || value === '') {
    throw new OperationOutcomeError(badRequest(`Missing ${key}`, key));
  }
  return value;
}

function optionalString(body: Body, key: string): string | undefined {
  const value = body[key];
  if (value === undefined || value === null || value === '') {
    return undefined;
  }
  if (typeof value !== 'string') {
    throw new OperationOutcomeError(badRequest(`${key} must be a string`, key));
  }
  return value;
}

function projectOf(membership: ProjectMembership): string {
  return membership.project?.reference?.replace('Project/', '') ?? '';
}

async function pendingLogin(auth: AuthServices, id: string): Promise<Login> {
  const login = await auth.logins.getPending(id);
  if (!login?.userId) {
    throw new OperationOutcomeError(badRequest('Login not found, or already finished', 'login'));
  }
  return login;
}

/** The sign-in a patient-picker call belongs to: only for a pending code whose scope asked for a launch patient. */
async function loginByCode(auth: AuthServices, code: string): Promise<Login> {
  const login = await auth.logins.getByCode(code);
  if (!login) {
    throw new OperationOutcomeError(badRequest('Invalid or expired code', 'code'));
  }
  if (!login.scope.split(/\s+/).includes('launch/patient')) {
    throw new OperationOutcomeError(badRequest('This sign-in did not ask for a launch patient', 'code'));
  }
  return login;
}

/** One membership: a code at once; several: the list to choose from (`/auth/profile`). */
async function respondWithMemberships(auth: AuthServices, login: Login, memberships: WithId<ProjectMembership>[]): Promise<unknown> {
  if (memberships.length === 1) {
    return { login: login.id, code: await bindMembership(auth, login, memberships[0]) };
  }
  if (memberships.length === 0) {
    return { login: login.id };
  }
  // Named as the profile chooser shows them (memberships written by hand may lack the name).
  const projects = await Promise.all(memberships.map((m) => auth.directory.project(projectOf(m))));
  return {
    login: login.id,
    memberships: memberships.map((m, i) => ({
      id: m.id,
      project: { reference: m.project?.reference, display: projects[i]?.name ?? m.project?.display },
      profile: m.profile,
      identifier: m.identifier,
    })),
  };
}

/** Binds the membership (and an EHR launch's context from its project) and issues a code. */
async function bindMembership(auth: AuthServices, login: Login, membership: WithId<ProjectMembership>): Promise<string> {
  const projectId = projectOf(membership);
  const client = login.clientId ? await auth.clients.find(login.clientId) : undefined;
  if (client?.projectId && client.projectId !== projectId) {
    throw new OperationOutcomeError(badRequest('This client belongs to another project', 'profile'));
  }
  if (login.launchId) {
    const launch = (await auth.directory.find<SmartAppLaunch>('SmartAppLaunch', login.launchId, projectId))?.resource;
    if (!launch) {
      throw new OperationOutcomeError(badRequest('Unknown launch', 'launch'));
    }
    const patientId = idOf(launch.patient);
    const encounterId = idOf(launch.encounter);
    if (!launch.patient?.reference?.startsWith('Patient/') && launch.patient) {
      throw new OperationOutcomeError(badRequest('The launch patient must be a Patient reference', 'launch'));
    }
    for (const id of [patientId, encounterId]) {
      if (id !== null && !/^[A-Za-z0-9\-.]{1,64}$/.test(id)) {
        throw new OperationOutcomeError(badRequest('Invalid launch context', 'launch'));
      }
    }
    await auth.logins.setLaunchContext(login.id, patientId, encounterId);
  }
  return auth.logins.issueCode(login.id, membership.id, projectId);
}

function idOf(ref: Reference | undefined): string | null {
  return ref?.reference?.split('/')[1] ?? null;
}

/** A new project with the user as its admin (a Practitioner profile in it). */
export async function createProject(auth: AuthServices, name: string, user: WithId<User>): Promise<WithId<ProjectMembership>> {
  // The Project resource lives in the project it describes.
  const projectId = randomUUID();
  const repo = auth.directory.repo(projectId);
  const project = await repo.createResource<Project>({ resourceType: 'Project', id: projectId, name, strictMode: true }, { assignedId: true });
  const practitioner = await repo.createResource<Practitioner>({
    resourceType: 'Practitioner',
    name: [{ given: [user.firstName ?? ''], family: user.lastName }],
    telecom: user.email ? [{ system: 'email', value: user.email }] : undefined,
  });
  return repo.createResource<ProjectMembership>({
    resourceType: 'ProjectMembership',
    project: { reference: `Project/${project.id}`, display: name },
    user: { reference: `User/${user.id}`, display: user.email },
    profile: { reference: `Practitioner/${practitioner.id}`, display: [user.firstName, user.lastName].filter(Boolean).join(' ') },
    admin: true,
  });
}

/** The membership's UserConfiguration, or the default menu (admin links for admins). */
async function userConfiguration(auth: AuthServices, projectId: string, membership: ProjectMembership): Promise<UserConfiguration> {
  const id = membership.userConfiguration?.reference?.split('/')[1];
  const own = id ? (await auth.directory.find<UserConfiguration>('UserConfiguration', id, projectId))?.resource : undefined;
  if (own) {
    return own;
  }
  const link = (name: string, target: string): { name: string; target: string } => ({ name, target });
  const menu: UserConfiguration['menu'] = [
    {
      title: 'Favorites',
      link: [link('Patients', '/Patient'), link('Practitioners', '/Practitioner'), link('Observations', '/Observation'), link('Diagnostic reports', '/DiagnosticReport')],
    },
  ];
  if (membership.admin) {
    menu.push({ title: 'Admin', link: [link('Project', '/admin/project'), link('Access policies', '/AccessPolicy'), link('Clients', '/ClientApplication'), link('Bots', '/Bot')] });
  }
  return { resourceType: 'UserConfiguration', menu };
}
