import { Operator } from '@medplum/core';
import type { WithId } from '@medplum/core';
import type { ClientApplication, Project, ProjectMembership, Reference, Resource, User } from '@medplum/fhirtypes';
import type { Queryable } from '../db/pool.ts';
import { PostgresRepository } from '../fhir/repo/postgres-repository.ts';
import type { RepositoryContext, RepositoryServices } from '../fhir/repo/postgres-repository.ts';

/** Where a resource lives: auth reads across projects (users, memberships, clients) by id. */
export interface Located<T> {
  resource: WithId<T>;
  projectId: string;
}

/**
 * The server's own view of identities: users, memberships, projects and clients, read across
 * projects without any access policy. Only auth code uses it, never a request's repository.
 */
export class Directory {
  private readonly services: RepositoryServices;
  /** The Super Admin project, where server-level users live. */
  readonly systemProjectId: string;

  constructor(services: RepositoryServices, systemProjectId: string) {
    this.services = services;
    this.systemProjectId = systemProjectId;
  }

  private get db(): Queryable {
    return this.services.pool;
  }

  /** An unrestricted repository writing into the given project (reads see every project). */
  repo(projectId: string = this.systemProjectId, author: Reference = { reference: 'system' }): PostgresRepository {
    return new PostgresRepository(this.services, {
      projectId,
      readProjects: [projectId],
      allProjects: true,
      author,
    });
  }

  /** A repository acting as a session (its projects and access policy). */
  repoFor(context: RepositoryContext): PostgresRepository {
    return new PostgresRepository(this.services, context);
  }

  /** One resource by type and id in a given project, or (without project) in whichever project holds it. */
  async find<T extends Resource>(resourceType: T['resourceType'], id: string, projectId?: string): Promise<Located<T> | undefined> {
    if (!/^[A-Za-z0-9\-.]{1,64}$/.test(id)) {
      return undefined;
    }
    // Ids are unique per project. For a global lookup (a client id, a user id) the oldest resource
    // wins, so that a project cannot take over or block another's client by reusing its id.
    const { rows } = await this.db.query<{ content: string; project_id: string }>(
      `SELECT content, project_id FROM resource WHERE resource_type = $1 AND id = $2 AND NOT deleted
       ${projectId ? 'AND project_id = $3' : ''} ORDER BY rid LIMIT 1`,
      projectId ? [resourceType, id, projectId] : [resourceType, id]
    );
    if (rows.length === 0) {
      return undefined;
    }
    return { resource: JSON.parse(rows[0].content) as WithId<T>, projectId: rows[0].project_id };
  }

  async project(id: string): Promise<WithId<Project> | undefined> {
    return (await this.find<Project>('Project', id, id))?.resource;
  }

  async userByEmail(email: string): Promise<WithId<User> | undefined> {
    const users = await this.repo().searchResources<User>({
      resourceType: 'User',
      filters: [{ code: 'email', operator: Operator.EQUALS, value: email.trim().toLowerCase() }],
      count: 2,
    });
    return users.find((u) => u.email?.toLowerCase() === email.trim().toLowerCase());
  }

  /**
   * The user's memberships. Only those stored in the project they name count: a project admin can
   * write a ProjectMembership naming any project, but it lives in the admin's own project.
   */
  async membershipsOfUser(userId: string): Promise<WithId<ProjectMembership>[]> {
    const found = await this.repo().searchResources<ProjectMembership>({
      resourceType: 'ProjectMembership',
      filters: [{ code: 'user', operator: Operator.EQUALS, value: `User/${userId}` }],
      count: 1000,
    });
    return found.filter((m) => m.meta?.project && m.project?.reference === `Project/${m.meta.project}`);
  }

  /** The membership that gives a client application (or bot) its place and policy in its project. */
  async membershipOfProfile(profile: string, projectId: string): Promise<WithId<ProjectMembership> | undefined> {
    const found = await this.repo(projectId).searchResources<ProjectMembership>({
      resourceType: 'ProjectMembership',
      filters: [{ code: 'profile', operator: Operator.EQUALS, value: profile }],
      count: 1000,
    });
    return found.find((m) => m.meta?.project === projectId && m.project?.reference === `Project/${projectId}`);
  }

  async client(id: string): Promise<Located<ClientApplication> | undefined> {
    return this.find<ClientApplication>('ClientApplication', id);
  }

  /** Records a client assertion's jti; false when it was seen before (a replay). */
  async recordAssertion(clientId: string, jti: string, expires: Date): Promise<boolean> {
    await this.db.query('DELETE FROM client_assertion WHERE expires < now()');
    const { rowCount } = await this.db.query(
      'INSERT INTO client_assertion (client_id, jti, expires) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING',
      [clientId, jti, expires]
    );
    return rowCount === 1;
  }

  async passwordHash(userId: string): Promise<string | undefined> {
    const { rows } = await this.db.query<{ password_hash: string }>('SELECT password_hash FROM user_credential WHERE user_id = $1', [userId]);
    return rows[0]?.password_hash;
  }

  async setPasswordHash(userId: string, hash: string): Promise<void> {
    await this.db.query(
      `INSERT INTO user_credential (user_id, password_hash) VALUES ($1, $2)
       ON CONFLICT (user_id) DO UPDATE SET password_hash = $2, updated = now()`,
      [userId, hash]
    );
  }
}
