import { Operator } from '@medplum/core';
import type { WithId } from '@medplum/core';
import type { ClientApplication, Project, ProjectMembership, Resource, User } from '@medplum/fhirtypes';
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
  repo(projectId: string = this.systemProjectId): PostgresRepository {
    return new PostgresRepository(this.services, {
      projectId,
      readProjects: [projectId],
      allProjects: true,
      author: { reference: 'system' },
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
    const { rows } = await this.db.query<{ content: string; project_id: string }>(
      `SELECT content, project_id FROM resource WHERE resource_type = $1 AND id = $2 AND NOT deleted
       ${projectId ? 'AND project_id = $3' : ''} LIMIT 2`,
      projectId ? [resourceType, id, projectId] : [resourceType, id]
    );
    // The same id in two projects is ambiguous for a global lookup (clients, users): refuse it.
    if (rows.length !== 1) {
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

  async membershipsOfUser(userId: string): Promise<WithId<ProjectMembership>[]> {
    return this.repo().searchResources<ProjectMembership>({
      resourceType: 'ProjectMembership',
      filters: [{ code: 'user', operator: Operator.EQUALS, value: `User/${userId}` }],
      count: 1000,
    });
  }

  /** The membership that gives a client application (or bot) its place and policy in its project. */
  async membershipOfProfile(profile: string, projectId: string): Promise<WithId<ProjectMembership> | undefined> {
    const found = await this.repo(projectId).searchResources<ProjectMembership>({
      resourceType: 'ProjectMembership',
      filters: [{ code: 'profile', operator: Operator.EQUALS, value: profile }],
      count: 1000,
    });
    return found.find((m) => (this.projectOf(m) ?? projectId) === projectId);
  }

  async client(id: string): Promise<Located<ClientApplication> | undefined> {
    return this.find<ClientApplication>('ClientApplication', id);
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

  private projectOf(resource: Resource): string | undefined {
    return resource.meta?.project;
  }
}
