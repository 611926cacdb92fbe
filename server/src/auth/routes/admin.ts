import { allOk, badRequest, forbidden, notFound, OperationOutcomeError } from '@medplum/core';
import type { WithId } from '@medplum/core';
import type { AccessPolicy, Binary, Bot, ClientApplication, Project, ProjectMembership, Reference, User } from '@medplum/fhirtypes';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { authenticate } from '../authenticate.ts';
import { newSecret } from '../logins.ts';
import { hashPassword, passwordProblem } from '../passwords.ts';
import type { AuthServices } from '../service.ts';
import { useJsonBodies } from '../../http/json-body.ts';
import type { AuthSession } from '../sessions.ts';
import type { JobQueue } from '../../jobs/queue.ts';
import type { PostgresRepository } from '../../fhir/repo/postgres-repository.ts';

type Body = Record<string, unknown>;
const PROFILE_TYPES = new Set(['Practitioner', 'Patient', 'RelatedPerson']);

const DEFAULT_BOT_SOURCE = `import { BotEvent, MedplumClient } from '@medplum/core';

export async function handler(medplum: MedplumClient, event: BotEvent): Promise<any> {
  return event.input;
}
`;

/** Project administration as Medplum's admin API: invite, bots, clients, secret rotation. */
export async function adminRoutes(app: FastifyInstance, auth: AuthServices, jobs: JobQueue): Promise<void> {
  useJsonBodies(app);
  const asAdmin = async (
    request: FastifyRequest<{ Params: { projectId: string } }>,
    reply: FastifyReply,
    creates: 'ProjectMembership' | 'ClientApplication' | 'Bot' | undefined
  ): Promise<AuthSession & { target: Reference<Project> }> => {
    const session = await authenticate(request, reply, auth);
    if (!(session.superAdmin || (session.admin && session.project.id === request.params.projectId))) {
      throw new OperationOutcomeError(forbidden);
    }
    // The token's SMART scopes count too: an app an admin signed in to with patient/Observation.rs
    // must not be able to invite users or mint clients.
    if (creates && session.context.access && !session.context.access.allows(creates, 'create')) {
      throw new OperationOutcomeError(forbidden);
    }
    const project = await auth.directory.project(request.params.projectId);
    if (!project) {
      throw new OperationOutcomeError(badRequest('Project not found'));
    }
    return { ...session, target: { reference: `Project/${project.id}`, display: project.name } };
  };

  app.post<{ Params: { projectId: string } }>('/admin/projects/:projectId/invite', async (request, reply) => {
    const session = await asAdmin(request, reply, 'ProjectMembership');
    const { projectId } = request.params;
    const body = objectBody(request);
    const resourceType = str(body, 'resourceType') ?? 'Practitioner';
    if (!PROFILE_TYPES.has(resourceType)) {
      throw new OperationOutcomeError(badRequest('resourceType must be Practitioner, Patient or RelatedPerson', 'resourceType'));
    }
    const firstName = str(body, 'firstName', true) as string;
    const lastName = str(body, 'lastName', true) as string;
    const email = (str(body, 'email', true) as string).trim().toLowerCase();
    const password = str(body, 'password');
    if (password !== undefined && passwordProblem(password)) {
      throw new OperationOutcomeError(badRequest(passwordProblem(password) as string, 'password'));
    }
    let user = await auth.directory.userByEmail(email);
    // An existing account may have been created (with a password) by another project's admin or by
    // anyone through sign-up: attaching it here would hand this project's access to whoever holds
    // that password. Without email verification only a super admin may vouch for it.
    if (user && !session.superAdmin) {
      throw new OperationOutcomeError(badRequest('This email already has an account; a super admin must add it to the project', 'email'));
    }
    if (user && password !== undefined) {
      throw new OperationOutcomeError(badRequest('This email already has an account; invite it without a password', 'password'));
    }
    if (!user) {
      user = await auth.directory.repo(undefined, session.profile).createResource<User>({ resourceType: 'User', firstName, lastName, email });
      if (password !== undefined) {
        await auth.directory.setPasswordHash(user.id, await hashPassword(password));
      }
    }
    const existing = (await auth.directory.membershipsOfUser(user.id)).find((m) => m.project?.reference === `Project/${projectId}`);
    if (existing) {
      throw new OperationOutcomeError(badRequest('User is already a member of this project', 'email'));
    }
    const repo = auth.directory.repo(projectId, session.profile);
    const profile = await repo.createResource({
      resourceType: resourceType as 'Practitioner',
      name: [{ given: [firstName], family: lastName }],
      telecom: [{ system: 'email', value: email }],
    });
    const membershipFields = (body.membership ?? {}) as Partial<ProjectMembership>;
    return repo.createResource<ProjectMembership>({
      resourceType: 'ProjectMembership',
      project: session.target,
      user: { reference: `User/${user.id}`, display: email },
      profile: { reference: `${resourceType}/${profile.id}`, display: `${firstName} ${lastName}` },
      admin: membershipFields.admin ?? body.admin === true,
      accessPolicy: membershipFields.accessPolicy ?? (body.accessPolicy as Reference<AccessPolicy> | undefined),
      access: membershipFields.access,
    });
  });

  app.post<{ Params: { projectId: string } }>('/admin/projects/:projectId/bot', async (request, reply) => {
    const session = await asAdmin(request, reply, 'Bot');
    const { projectId } = request.params;
    const body = objectBody(request);
    const name = str(body, 'name', true) as string;
    const repo = auth.directory.repo(projectId, session.profile);
    const source = await repo.createResource<Binary>({
      resourceType: 'Binary',
      contentType: 'application/typescript',
      data: Buffer.from(DEFAULT_BOT_SOURCE).toString('base64'),
    });
    const bot = await repo.createResource<Bot>({
      resourceType: 'Bot',
      name,
      description: str(body, 'description'),
      runtimeVersion: (str(body, 'runtimeVersion') as Bot['runtimeVersion']) ?? 'vmcontext',
      sourceCode: { contentType: 'application/typescript', title: 'index.ts', url: `Binary/${source.id}` },
    });
    await membershipFor(repo, session.target, `Bot/${bot.id}`, name, body.accessPolicy as Reference<AccessPolicy> | undefined);
    return reply.status(201).send(await repo.readResource<Bot>('Bot', bot.id));
  });

  app.post<{ Params: { projectId: string } }>('/admin/projects/:projectId/client', async (request, reply) => {
    const session = await asAdmin(request, reply, 'ClientApplication');
    const { projectId } = request.params;
    const body = objectBody(request);
    const name = str(body, 'name', true) as string;
    const redirectUris = [...((body.redirectUris as string[] | undefined) ?? []), ...(str(body, 'redirectUri') ? [str(body, 'redirectUri') as string] : [])];
    if (!redirectUris.every((u) => typeof u === 'string' && URL.canParse(u))) {
      throw new OperationOutcomeError(badRequest('redirectUris must be absolute URLs', 'redirectUris'));
    }
    const repo = auth.directory.repo(projectId, session.profile);
    const client = await repo.createResource<ClientApplication>({
      resourceType: 'ClientApplication',
      name,
      description: str(body, 'description'),
      secret: newSecret(32),
      redirectUris: redirectUris.length ? redirectUris : undefined,
      jwksUri: str(body, 'jwksUri'),
      pkceOptional: body.pkceOptional === true ? true : undefined,
      accessTokenLifetime: str(body, 'accessTokenLifetime'),
    });
    await membershipFor(repo, session.target, `ClientApplication/${client.id}`, name, body.accessPolicy as Reference<AccessPolicy> | undefined);
    return reply.status(201).send(client);
  });

  // The dead-letter list: jobs (subscription deliveries, bot runs) that used up their attempts.
  app.get<{ Params: { projectId: string } }>('/admin/projects/:projectId/jobs', async (request, reply) => {
    await asAdmin(request, reply, undefined);
    const dead = await jobs.dead(request.params.projectId);
    return {
      jobs: dead.map((j) => ({
        id: j.id,
        kind: j.kind,
        status: j.status,
        attempts: j.attempts,
        maxAttempts: j.maxAttempts,
        lastError: j.lastError,
        created: j.created.toISOString(),
        updated: j.updated.toISOString(),
        payload: j.payload,
      })),
    };
  });

  app.post<{ Params: { projectId: string; id: string } }>('/admin/projects/:projectId/jobs/:id/replay', async (request, reply) => {
    await asAdmin(request, reply, undefined);
    if (!(await jobs.replay(request.params.projectId, request.params.id))) {
      throw new OperationOutcomeError(notFound);
    }
    return allOk;
  });

  // The current secret becomes the retiring one (still accepted) and a new one is issued.
  app.post<{ Params: { id: string } }>('/fhir/R4/ClientApplication/:id/$rotate-secret', async (request, reply) => {
    const session = await authenticate(request, reply, auth);
    if (!session.admin && !session.superAdmin) {
      throw new OperationOutcomeError(forbidden);
    }
    const repo = auth.directory.repoFor(session.context);
    const client = await repo.readResource<ClientApplication>('ClientApplication', request.params.id);
    return repo.updateResource<ClientApplication>({ ...client, retiringSecret: client.secret, secret: newSecret(32) });
  });
}

async function membershipFor(
  repo: PostgresRepository,
  project: Reference<Project>,
  profile: string,
  display: string,
  accessPolicy: Reference<AccessPolicy> | undefined
): Promise<WithId<ProjectMembership>> {
  return repo.createResource<ProjectMembership>({
    resourceType: 'ProjectMembership',
    project,
    user: { reference: profile, display },
    profile: { reference: profile, display },
    accessPolicy,
  });
}

function objectBody(request: FastifyRequest): Body {
  const body = request.body;
  if (!body || typeof body !== 'object' || Array.isArray(body)) {
    throw new OperationOutcomeError(badRequest('Expected a JSON object'));
  }
  return body as Body;
}

function str(body: Body, key: string, required = false): string | undefined {
  const value = body[key];
  if (value === undefined || value === null || value === '') {
    if (required) {
      throw new OperationOutcomeError(badRequest(`Missing ${key}`, key));
    }
    return undefined;
  }
  if (typeof value !== 'string') {
    throw new OperationOutcomeError(badRequest(`${key} must be a string`, key));
  }
  return value;
}
