import type { AuditEvent, Bot, ClientApplication, Project, ProjectMembership } from '@medplum/fhirtypes';
import { describe, expect, test } from 'vitest';
import { startTestServer, unique, useTestServer } from './harness.ts';

const t = useTestServer();

/** AuditEvents are written in the background: wait for the writer to catch up. */
async function flushedAuditEvents(filter: string): Promise<AuditEvent[]> {
  await t.server.services.auth.audit.flush();
  return t.medplum.searchResources('AuditEvent', `${filter}&_count=1000`);
}

describe('first start', () => {
  test('the admin is project admin of the first project and super admin of the Super Admin project', async () => {
    const client = t.server.anonymous();
    const choice = await client.startLogin({ email: t.server.admin.email, password: t.server.admin.password });
    expect(choice.code).toBeUndefined();
    expect(choice.memberships).toHaveLength(2);
    const superMembership = choice.memberships?.find((m) => m.project?.reference !== `Project/${t.server.projectId}`) as ProjectMembership;
    const { code } = await client.post('auth/profile', { login: choice.login, profile: superMembership.id });
    await client.processCode(code);
    expect(client.isSuperAdmin()).toBe(true);
    expect(t.medplum.getProject()).toBeUndefined(); // the harness client holds a token only
    const me = await t.medplum.get('auth/me');
    expect(me.project.superAdmin).toBeUndefined();
    expect(me.membership.admin).toBe(true);
  });

  test('a restart neither duplicates the admin nor changes the first project', async () => {
    const users = await t.server.services.pool.query("SELECT count(*)::int AS n FROM resource WHERE resource_type = 'User' AND NOT deleted");
    const { bootstrap } = await import('../src/auth/bootstrap.ts');
    const again = await bootstrap(t.server.services, { adminEmail: 'other@example.com', adminPassword: 'whatever-123', firstProjectName: 'x' });
    expect(again.firstProjectId).toBe(t.server.projectId);
    expect(again.generatedPassword).toBeUndefined();
    const after = await t.server.services.pool.query("SELECT count(*)::int AS n FROM resource WHERE resource_type = 'User' AND NOT deleted");
    expect(after.rows[0].n).toBe(users.rows[0].n);
  });

  test('without ADMIN_PASSWORD a password is generated once, and it works', async () => {
    const server = await startTestServer({ ADMIN_EMAIL: 'first@example.com', ADMIN_PASSWORD: '' });
    try {
      const generated = server.services.generatedAdminPassword as string;
      expect(generated).toMatch(/^[A-Za-z0-9_-]{16}$/);
      // the harness signed in with it; the server keeps only its hash
      expect(server.admin.password).toBe(generated);
      const { rows } = await server.services.pool.query<{ password_hash: string }>('SELECT password_hash FROM user_credential');
      expect(rows.map((r) => r.password_hash).join()).not.toContain(generated);
    } finally {
      await server.stop();
    }
  });
});

describe('admin API', () => {
  test('invite creates a user, a profile and a membership; the user signs in to that project only', async () => {
    const email = `${unique('inv')}@example.com`;
    const membership = (await t.medplum.invite(t.server.projectId, {
      resourceType: 'Practitioner',
      firstName: 'Eleni',
      lastName: 'Georgiou',
      email,
      password: 'correct horse 1',
    })) as ProjectMembership;
    expect(membership.resourceType).toBe('ProjectMembership');
    expect(membership.profile?.reference).toMatch(/^Practitioner\//);
    const user = await t.server.signIn(email, 'correct horse 1');
    expect(user.getProfile()?.resourceType).toBe('Practitioner');
    expect((await user.get('auth/me')).membership.admin).toBeFalsy();
    // a second invite of the same email is refused: an existing account is attached only by a super admin
    await expect(t.medplum.invite(t.server.projectId, { resourceType: 'Practitioner', firstName: 'E', lastName: 'G', email })).rejects.toThrow(
      'a super admin must add it'
    );
  });

  test('invite refuses to set a password for an existing account, and bad profile types', async () => {
    await expect(
      t.medplum.invite(t.server.projectId, { resourceType: 'Practitioner', firstName: 'A', lastName: 'B', email: t.server.admin.email, password: 'take-over-123' })
    ).rejects.toThrow('already has an account');
    await expect(
      t.medplum.post(`admin/projects/${t.server.projectId}/invite`, { resourceType: 'Organization', firstName: 'A', lastName: 'B', email: 'x@example.com' })
    ).rejects.toThrow('resourceType must be');
    await expect(t.medplum.post(`admin/projects/${t.server.projectId}/invite`, { firstName: 'A', email: 'x@example.com' })).rejects.toThrow('Missing lastName');
  });

  test('non-admins and admins of other projects may not use the admin API', async () => {
    const email = `${unique('nonadmin')}@example.com`;
    await t.medplum.invite(t.server.projectId, { resourceType: 'Practitioner', firstName: 'N', lastName: 'A', email, password: 'not-an-admin-1' });
    const user = await t.server.signIn(email, 'not-an-admin-1');
    const res = await fetch(`${t.server.baseUrl}admin/projects/${t.server.projectId}/client`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${user.getAccessToken()}` },
      body: JSON.stringify({ name: 'sneaky' }),
    });
    expect(res.status).toBe(403);
    const other = `00000000-0000-4000-8000-${Date.now().toString().padStart(12, '0').slice(-12)}`;
    const cross = await fetch(`${t.server.baseUrl}admin/projects/${other}/client`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', ...t.server.authorization },
      body: JSON.stringify({ name: 'elsewhere' }),
    });
    expect(cross.status).toBe(403);
  });

  test('client creation gives a secret and a membership; rotation keeps the old secret as retiring', async () => {
    const client = (await t.medplum.post(`admin/projects/${t.server.projectId}/client`, { name: 'lab interface' })) as ClientApplication;
    expect(client.secret).toMatch(/^[0-9a-f]{64}$/);
    const first = t.server.anonymous();
    await first.startClientLogin(client.id as string, client.secret as string);
    expect(first.getProfile()?.id).toBe(client.id);
    const rotated = (await t.medplum.post(`fhir/R4/ClientApplication/${client.id}/$rotate-secret`, {})) as ClientApplication;
    expect(rotated.retiringSecret).toBe(client.secret);
    expect(rotated.secret).not.toBe(client.secret);
    for (const secret of [client.secret, rotated.secret]) {
      const c = t.server.anonymous();
      await c.startClientLogin(client.id as string, secret as string);
      expect(c.getProfile()?.id).toBe(client.id);
    }
    const rotatedAgain = (await t.medplum.post(`fhir/R4/ClientApplication/${client.id}/$rotate-secret`, {})) as ClientApplication;
    await expect(t.server.anonymous().startClientLogin(client.id as string, client.secret as string)).rejects.toThrow();
    expect(rotatedAgain.retiringSecret).toBe(rotated.secret);
  });

  test('bot creation: a Bot with its source Binary and a membership', async () => {
    const bot = (await t.medplum.post(`admin/projects/${t.server.projectId}/bot`, { name: 'oru-to-fhir', description: 'HL7 ORU to Observation' })) as Bot;
    expect(bot.resourceType).toBe('Bot');
    expect(bot.sourceCode?.url).toMatch(/^Binary\//);
    const memberships = await t.medplum.searchResources('ProjectMembership', { profile: `Bot/${bot.id}` });
    expect(memberships).toHaveLength(1);
    await expect(t.medplum.post(`admin/projects/${t.server.projectId}/bot`, {})).rejects.toThrow('Missing name');
  });

  test('a project admin cannot make the project super admin or link other projects', async () => {
    const project = await t.medplum.readResource('Project', t.server.projectId);
    const updated = await t.medplum.updateResource<Project>({ ...project, superAdmin: true, link: [{ project: { reference: 'Project/elsewhere' } }], description: 'changed' });
    expect(updated.description).toBe('changed');
    expect(updated.superAdmin).toBeUndefined();
    expect(updated.link).toBeUndefined();
  });
});

describe('passwords', () => {
  test('changepassword needs the old password and a good new one; the old one stops working', async () => {
    const email = `${unique('pw')}@example.com`;
    await t.medplum.invite(t.server.projectId, { resourceType: 'Practitioner', firstName: 'P', lastName: 'W', email, password: 'first-password-1' });
    const user = await t.server.signIn(email, 'first-password-1');
    await expect(user.post('auth/changepassword', { oldPassword: 'wrong-password-1', newPassword: 'second-password-2' })).rejects.toThrow('Incorrect password');
    await expect(user.post('auth/changepassword', { oldPassword: 'first-password-1', newPassword: 'short' })).rejects.toThrow('at least 8');
    await expect(user.post('auth/changepassword', { oldPassword: 'first-password-1' })).rejects.toThrow('Missing newPassword');
    const elsewhere = await t.server.signIn(email, 'first-password-1');
    await user.post('auth/changepassword', { oldPassword: 'first-password-1', newPassword: 'second-password-2' });
    // the session that changed it goes on; every other session of the account ends
    expect((await user.get('auth/me')).profile.resourceType).toBe('Practitioner');
    expect((await t.server.fhir('Patient', { headers: { Authorization: `Bearer ${elsewhere.getAccessToken()}` } })).status).toBe(401);
    await expect(t.server.signIn(email, 'first-password-1')).rejects.toThrow('Email or password is invalid');
    expect((await t.server.signIn(email, 'second-password-2')).getProfile()?.resourceType).toBe('Practitioner');
    // client sessions have no password
    const client = (await t.medplum.post(`admin/projects/${t.server.projectId}/client`, { name: 'no password' })) as ClientApplication;
    const app = t.server.anonymous();
    await app.startClientLogin(client.id as string, client.secret as string);
    await expect(app.post('auth/changepassword', { oldPassword: 'x', newPassword: 'second-password-2' })).rejects.toThrow('Only users have passwords');
  });
});

describe('registration', () => {
  test('switched off by default: /auth/newuser and /auth/newproject answer 403', async () => {
    for (const path of ['auth/newuser', 'auth/newproject']) {
      const res = await fetch(t.server.baseUrl + path, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ firstName: 'A', lastName: 'B', email: 'new@example.com', password: 'longenough1', login: 'x', projectName: 'p' }),
      });
      expect(res.status).toBe(403);
    }
  });

  test('switched on: a new user creates a project and is its admin, seeing nothing of other projects', async () => {
    const server = await startTestServer({ REGISTRATION_ENABLED: 'true' });
    try {
      const client = server.anonymous();
      const email = `${unique('reg')}@example.com`;
      await expect(client.startNewUser({ firstName: 'N', lastName: 'U', email, password: 'short', recaptchaToken: '' })).rejects.toThrow('at least 8');
      const { login } = await client.startNewUser({ firstName: 'N', lastName: 'U', email, password: 'longenough1', recaptchaToken: '' });
      const { code } = await client.startNewProject({ login, projectName: 'Clinic B' });
      await client.processCode(code as string);
      expect(client.isProjectAdmin()).toBe(true);
      expect(client.getProject()?.name).toBe('Clinic B');
      expect(await client.searchResources('Patient')).toHaveLength(0);
      await expect(client.startNewUser({ firstName: 'N', lastName: 'U', email, password: 'longenough1', recaptchaToken: '' })).rejects.toThrow(
        'already registered'
      );
    } finally {
      await server.stop();
    }
  });
});

describe('AuditEvents', () => {
  test('each FHIR access is recorded with interaction, outcome, agent and entity', async () => {
    const patient = await t.medplum.createResource({ resourceType: 'Patient', name: [{ family: unique('Audit') }] });
    await t.medplum.readResource('Patient', patient.id as string);
    await t.server.fhir('Patient/does-not-exist');
    const events = await flushedAuditEvents(`entity=Patient/${patient.id}`);
    expect(events.map((e) => e.subtype?.[0].code).sort()).toEqual(['create', 'read']);
    const read = events.find((e) => e.subtype?.[0].code === 'read') as AuditEvent;
    expect(read.action).toBe('R');
    expect(read.outcome).toBe('0');
    expect(read.agent[0].who?.reference).toMatch(/^Practitioner\//);
    const missing = await flushedAuditEvents('entity=Patient/does-not-exist');
    expect(missing.map((e) => e.outcome)).toEqual(['4']);
  });

  test('sign-ins are recorded, failures too', async () => {
    await expect(t.server.signIn(t.server.admin.email, 'wrong-password')).rejects.toThrow();
    await t.server.signIn(t.server.admin.email, t.server.admin.password, t.server.projectId);
    const events = await flushedAuditEvents('type=110114');
    expect(events.some((e) => e.outcome === '0')).toBe(true);
  });

  test('the volume is set per project: writes only, then none', async () => {
    const project = await t.medplum.readResource('Project', t.server.projectId);
    await t.medplum.updateResource<Project>({ ...project, setting: [{ name: 'auditEventVolume', valueString: 'writes' }] });
    const patient = await t.medplum.createResource({ resourceType: 'Patient', name: [{ family: unique('Vol') }] });
    await t.medplum.readResource('Patient', patient.id as string);
    expect((await flushedAuditEvents(`entity=Patient/${patient.id}`)).map((e) => e.subtype?.[0].code)).toEqual(['create']);
    const current = await t.medplum.readResource('Project', t.server.projectId);
    await t.medplum.updateResource<Project>({ ...current, setting: [{ name: 'auditEventVolume', valueString: 'none' }] });
    const quiet = await t.medplum.createResource({ resourceType: 'Patient', name: [{ family: unique('Quiet') }] });
    expect(await flushedAuditEvents(`entity=Patient/${quiet.id}`)).toHaveLength(0);
    const last = await t.medplum.readResource('Project', t.server.projectId);
    await t.medplum.updateResource<Project>({ ...last, setting: undefined });
  });
});
