import { randomBytes, randomUUID } from 'node:crypto';
import type { Practitioner, Project, ProjectMembership, User } from '@medplum/fhirtypes';
import type pg from 'pg';
import { PostgresRepository } from '../fhir/repo/postgres-repository.ts';
import type { RepositoryServices } from '../fhir/repo/postgres-repository.ts';
import { hashPassword } from './passwords.ts';

export interface BootstrapOptions {
  adminEmail: string;
  /** Undefined: a random password is generated and reported once. */
  adminPassword: string | undefined;
  firstProjectName: string;
}

export interface BootstrapResult {
  /** The Super Admin project (server-level users live there). */
  systemProjectId: string;
  /** The first working project; the admin is its admin too. */
  firstProjectId: string;
  /** Set only on the start that created the admin without ADMIN_PASSWORD: print it once. */
  generatedPassword?: string;
}

/**
 * First start: the Super Admin project, the admin user (ADMIN_EMAIL / ADMIN_PASSWORD) with a
 * Practitioner profile and admin memberships in it and in a first project. Later starts (and
 * other nodes racing the first start) find them and change nothing.
 */
export async function bootstrap(services: RepositoryServices, options: BootstrapOptions): Promise<BootstrapResult> {
  const client = await services.pool.connect();
  try {
    await client.query('BEGIN');
    await client.query("SELECT pg_advisory_xact_lock(hashtext('ermis.bootstrap'))");
    const existing = await settings(client, ['system_project_id', 'default_project_id']);
    if (existing.system_project_id && existing.default_project_id) {
      await client.query('COMMIT');
      return { systemProjectId: existing.system_project_id, firstProjectId: existing.default_project_id };
    }
    const systemProjectId = existing.system_project_id ?? randomUUID();
    // Databases from before authentication already have a first project: keep it.
    const firstProjectId = existing.default_project_id ?? randomUUID();
    const generatedPassword = options.adminPassword ? undefined : randomBytes(12).toString('base64url');
    const system = repoIn(services, systemProjectId);
    const first = repoIn(services, firstProjectId);
    await system.upsertResource<Project>({ resourceType: 'Project', id: systemProjectId, name: 'Super Admin', superAdmin: true, strictMode: true });
    await first.upsertResource<Project>({ resourceType: 'Project', id: firstProjectId, name: options.firstProjectName, strictMode: true });
    const user = await system.createResource<User>({ resourceType: 'User', firstName: 'Admin', lastName: 'ermis', email: options.adminEmail.toLowerCase() });
    await client.query('INSERT INTO user_credential (user_id, password_hash) VALUES ($1, $2)', [
      user.id,
      await hashPassword(options.adminPassword ?? (generatedPassword as string)),
    ]);
    for (const [repo, projectId, projectName] of [
      [system, systemProjectId, 'Super Admin'],
      [first, firstProjectId, options.firstProjectName],
    ] as const) {
      const practitioner = await repo.createResource<Practitioner>({
        resourceType: 'Practitioner',
        name: [{ given: ['Admin'], family: 'ermis' }],
        telecom: [{ system: 'email', value: options.adminEmail.toLowerCase() }],
      });
      await repo.createResource<ProjectMembership>({
        resourceType: 'ProjectMembership',
        project: { reference: `Project/${projectId}`, display: projectName },
        user: { reference: `User/${user.id}`, display: options.adminEmail },
        profile: { reference: `Practitioner/${practitioner.id}`, display: 'Admin ermis' },
        admin: true,
      });
    }
    await client.query(
      `INSERT INTO server_setting (key, value) VALUES ('system_project_id', $1), ('default_project_id', $2)
       ON CONFLICT (key) DO NOTHING`,
      [systemProjectId, firstProjectId]
    );
    await client.query('COMMIT');
    return { systemProjectId, firstProjectId, generatedPassword };
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    client.release();
  }
}

function repoIn(services: RepositoryServices, projectId: string): PostgresRepository {
  return new PostgresRepository(services, { projectId, readProjects: [projectId], author: { reference: 'system' } });
}

async function settings(client: pg.PoolClient, keys: string[]): Promise<Record<string, string | undefined>> {
  const { rows } = await client.query<{ key: string; value: string }>('SELECT key, value FROM server_setting WHERE key = ANY($1)', [keys]);
  return Object.fromEntries(rows.map((r) => [r.key, r.value]));
}
