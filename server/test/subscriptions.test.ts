import { createHmac } from 'node:crypto';
import type { AccessPolicy, AuditEvent, Patient, Subscription } from '@medplum/fhirtypes';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startTestServer, unique, useTestServer } from './harness.ts';
import { RestHookReceiver } from './rest-hook-receiver.ts';

const t = useTestServer({ OUTBOUND_ALLOWED_HOSTS: '127.0.0.1', JOB_RETRY_BASE_MS: '50' });
const receiver = new RestHookReceiver();

beforeAll(() => receiver.start());
afterAll(() => receiver.stop());

const EXT = {
  secret: 'https://www.medplum.com/fhir/StructureDefinition/subscription-secret',
  maxAttempts: 'https://medplum.com/fhir/StructureDefinition/subscription-max-attempts',
  successCodes: 'https://medplum.com/fhir/StructureDefinition/subscription-success-codes',
  interaction: 'https://medplum.com/fhir/StructureDefinition/subscription-supported-interaction',
  fhirPath: 'https://medplum.com/fhir/StructureDefinition/fhir-path-criteria-expression',
};

async function subscribe(criteria: string, extension?: Subscription['extension'], header?: string[]): Promise<Subscription> {
  return t.medplum.createResource<Subscription>({
    resourceType: 'Subscription',
    status: 'active',
    reason: 'test',
    criteria,
    channel: { type: 'rest-hook', endpoint: receiver.url, payload: 'application/fhir+json', header },
    extension,
  });
}

async function auditOf(subscriptionId: string, count: number): Promise<AuditEvent[]> {
  for (let i = 0; i < 200; i++) {
    await t.server.services.auth.audit.flush();
    const events = await t.medplum.searchResources('AuditEvent', {
      entity: `Subscription/${subscriptionId}`,
      type: 'https://medplum.com/CodeSystem/audit-event|transmit',
      _count: '100',
    });
    if (events.length >= count) {
      return events;
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  return [];
}

describe('rest-hook', () => {
  test('create, update and delete are delivered with Medplum headers and a verifiable signature', async () => {
    const family = unique('Hook');
    const sub = await subscribe(`Patient?name=${family}`, [{ url: EXT.secret, valueString: 'shared-secret' }], ['Authorization: Bearer abc']);
    const patient = await t.medplum.createResource<Patient>({ resourceType: 'Patient', name: [{ family }] });
    await t.medplum.createResource<Patient>({ resourceType: 'Patient', name: [{ family: unique('Other') }] });
    const updated = await t.medplum.updateResource<Patient>({ ...patient, gender: 'female' });
    await t.medplum.deleteResource('Patient', patient.id as string);
    const arrived = await receiver.until(() => receiver.of(sub.id as string).length >= 3);
    // on failure, say what the server recorded about each attempt
    const attempts = arrived ? [] : (await auditOf(sub.id as string, 0)).map((a) => a.outcomeDesc);
    expect(arrived, JSON.stringify({ received: receiver.of(sub.id as string).map((d) => d.headers['x-medplum-interaction']), attempts })).toBe(true);
    // several workers deliver at once: the order of arrival is not the order of the writes
    const order = ['create', 'update', 'delete'];
    const [created, changed, deleted] = [...receiver.of(sub.id as string)].sort(
      (x, y) => order.indexOf(x.headers['x-medplum-interaction'] as string) - order.indexOf(y.headers['x-medplum-interaction'] as string)
    );
    expect(receiver.of(sub.id as string)).toHaveLength(3);
    for (const d of [created, changed, deleted]) {
      expect(d.headers['content-type']).toBe('application/fhir+json');
      expect(d.headers.authorization).toBe('Bearer abc');
      expect(d.headers['x-signature']).toBe(createHmac('sha256', 'shared-secret').update(d.body).digest('hex'));
    }
    expect(created.headers['x-medplum-interaction']).toBe('create');
    expect(JSON.parse(created.body)).toMatchObject({ resourceType: 'Patient', id: patient.id });
    expect(changed.headers['x-medplum-interaction']).toBe('update');
    expect(JSON.parse(changed.body).meta.versionId).toBe(updated.meta?.versionId);
    expect(deleted.headers['x-medplum-interaction']).toBe('delete');
    expect(deleted.headers['x-medplum-deleted-resource']).toBe(`Patient/${patient.id}`);
    expect(deleted.body).toBe('{}');
    // the non-matching patient was never sent
    expect(receiver.of(sub.id as string).every((d) => d.body === '{}' || JSON.parse(d.body).id === patient.id)).toBe(true);
    const audits = await auditOf(sub.id as string, 3);
    expect(audits.map((a) => a.outcome)).toEqual(['0', '0', '0']);
  });

  test('supported-interaction and FHIRPath criteria with %previous and %current', async () => {
    const family = unique('Fp');
    const createsOnly = await subscribe(`Patient?name=${family}`, [{ url: EXT.interaction, valueCode: 'create' }]);
    const genderChanged = await subscribe(`Patient?name=${family}`, [{ url: EXT.fhirPath, valueString: '%previous.gender != %current.gender' }]);
    const patient = await t.medplum.createResource<Patient>({ resourceType: 'Patient', name: [{ family }], gender: 'male' });
    const same = await t.medplum.updateResource<Patient>({ ...patient, birthDate: '1970-01-01' });
    await t.medplum.updateResource<Patient>({ ...same, gender: 'female' });
    expect(await receiver.until(() => receiver.of(genderChanged.id as string).length >= 1 && receiver.of(createsOnly.id as string).length >= 1)).toBe(true);
    // let the queue drain before asserting nothing more came
    await t.medplum.createResource({ resourceType: 'Patient', name: [{ family: unique('Fence') }] });
    await new Promise((r) => setTimeout(r, 300));
    expect(receiver.of(createsOnly.id as string).map((d) => d.headers['x-medplum-interaction'])).toEqual(['create']);
    // the create (no %previous) and the birthDate change do not match; the gender change does
    expect(receiver.of(genderChanged.id as string).map((d) => JSON.parse(d.body).gender)).toEqual(['female']);
  });

  test('failures are retried with backoff; success codes come from the extension', async () => {
    const family = unique('Retry');
    const sub = await subscribe(`Patient?name=${family}`, [
      { url: EXT.maxAttempts, valueInteger: 5 },
      { url: EXT.successCodes, valueString: '202' },
    ]);
    receiver.responses = [500, 200, 503]; // 200 is not a success for this subscription
    receiver.fallback = 202;
    try {
      await t.medplum.createResource<Patient>({ resourceType: 'Patient', name: [{ family }] });
      expect(await receiver.until(() => receiver.of(sub.id as string).some((d) => d.status === 202))).toBe(true);
      expect(receiver.of(sub.id as string).map((d) => d.status)).toEqual([500, 200, 503, 202]);
      const audits = await auditOf(sub.id as string, 4);
      expect(audits.map((a) => a.outcome).sort()).toEqual(['0', '4', '4', '4']);
      expect(audits.map((a) => a.outcomeDesc)).toContain('Attempt 1 received status 500');
    } finally {
      receiver.fallback = 200;
      receiver.responses = [];
    }
  });

  test('a delivery that uses up its attempts lands in the dead-letter list; an admin replays it', async () => {
    const family = unique('Dead');
    const sub = await subscribe(`Patient?name=${family}`, [{ url: EXT.maxAttempts, valueInteger: 2 }]);
    receiver.fallback = 500;
    interface DeadJob {
      id: string;
      lastError: string;
      attempts: number;
      payload: { subscriptionId: string };
    }
    let deadJob: DeadJob | undefined;
    try {
      const patient = await t.medplum.createResource<Patient>({ resourceType: 'Patient', name: [{ family }] });
      expect(await receiver.until(() => receiver.of(sub.id as string).length === 2)).toBe(true);
      for (let i = 0; i < 200 && !deadJob; i++) {
        const { jobs } = await t.medplum.get(`admin/projects/${t.server.projectId}/jobs`);
        deadJob = (jobs as DeadJob[]).find((j) => j.payload.subscriptionId === sub.id);
        await new Promise((r) => setTimeout(r, 25));
      }
      expect(deadJob).toMatchObject({ attempts: 2, lastError: 'Attempt 2 received status 500' });
      receiver.fallback = 200;
      expect(await t.medplum.post(`admin/projects/${t.server.projectId}/jobs/${deadJob?.id}/replay`, {})).toMatchObject({ id: 'ok' });
      expect(await receiver.until(() => receiver.of(sub.id as string).some((d) => d.status === 200))).toBe(true);
      expect(JSON.parse(receiver.of(sub.id as string).at(-1)?.body as string).id).toBe(patient.id);
      // a job that is not dead (or of another project) cannot be replayed
      await expect(t.medplum.post(`admin/projects/${t.server.projectId}/jobs/${deadJob?.id}/replay`, {})).rejects.toThrow('Not found');
      await expect(t.medplum.post(`admin/projects/${t.server.projectId}/jobs/abc/replay`, {})).rejects.toThrow('Not found');
    } finally {
      receiver.fallback = 200;
    }
  });

  test('a switched-off subscription is not delivered', async () => {
    const family = unique('Off');
    const sub = await subscribe(`Patient?name=${family}`);
    await t.medplum.updateResource<Subscription>({ ...sub, status: 'off' });
    await t.medplum.createResource<Patient>({ resourceType: 'Patient', name: [{ family }] });
    const fence = await subscribe(`Patient?name=${family}`);
    const second = await t.medplum.createResource<Patient>({ resourceType: 'Patient', name: [{ family }] });
    // Once the fence has the second patient, an active subscription would have had it too. (The
    // fence may also get the first one: matching happens at dispatch, which can come after it was created.)
    expect(await receiver.until(() => receiver.of(fence.id as string).some((d) => d.body.includes(second.id as string)))).toBe(true);
    expect(receiver.of(sub.id as string)).toHaveLength(0);
  });

  test("a subscription sees only what its author may read", async () => {
    const family = unique('Scoped');
    const visible = await t.medplum.createResource<Patient>({ resourceType: 'Patient', name: [{ family }], gender: 'female' });
    const policy = await t.medplum.createResource<AccessPolicy>({
      resourceType: 'AccessPolicy',
      resource: [{ resourceType: 'Patient', criteria: 'Patient?gender=female' }, { resourceType: 'Subscription' }],
    });
    const email = `${unique('sub')}@example.com`;
    await t.medplum.invite(t.server.projectId, {
      resourceType: 'Practitioner',
      firstName: 'S',
      lastName: 'U',
      email,
      password: 'subscriber-pw-1',
      membership: { accessPolicy: { reference: `AccessPolicy/${policy.id}` } },
    });
    const user = await t.server.signIn(email, 'subscriber-pw-1');
    const sub = await user.createResource<Subscription>({
      resourceType: 'Subscription',
      status: 'active',
      reason: 'mine',
      criteria: `Patient?name=${family}`,
      channel: { type: 'rest-hook', endpoint: receiver.url },
    });
    await t.medplum.createResource<Patient>({ resourceType: 'Patient', name: [{ family }], gender: 'male' });
    await t.medplum.updateResource<Patient>({ ...visible, birthDate: '1980-02-02' });
    expect(await receiver.until(() => receiver.of(sub.id as string).length >= 1)).toBe(true);
    await new Promise((r) => setTimeout(r, 300));
    expect(receiver.of(sub.id as string).map((d) => JSON.parse(d.body).id)).toEqual([visible.id]);
  });
});

describe('outbound addresses', () => {
  test('without an allow-list, private and loopback endpoints are refused at once and audited', async () => {
    const server = await startTestServer({ JOB_RETRY_BASE_MS: '50' });
    try {
      const medplum = server.medplum();
      const before = receiver.deliveries.length;
      const sub = await medplum.createResource<Subscription>({
        resourceType: 'Subscription',
        status: 'active',
        reason: 'ssrf',
        criteria: 'Patient',
        channel: { type: 'rest-hook', endpoint: receiver.url },
      });
      await medplum.createResource<Patient>({ resourceType: 'Patient', name: [{ family: 'Ssrf' }] });
      let jobs: { lastError: string; attempts: number }[] = [];
      for (let i = 0; i < 200 && jobs.length === 0; i++) {
        jobs = (await medplum.get(`admin/projects/${server.projectId}/jobs`)).jobs;
        await new Promise((r) => setTimeout(r, 25));
      }
      expect(jobs[0]).toMatchObject({ attempts: 1, lastError: expect.stringContaining('Refused outbound address 127.0.0.1') });
      expect(receiver.deliveries.length).toBe(before);
      await server.services.auth.audit.flush();
      const audits = await medplum.searchResources('AuditEvent', { entity: `Subscription/${sub.id}`, type: 'https://medplum.com/CodeSystem/audit-event|transmit' });
      expect(audits.map((a) => a.outcome)).toEqual(['4']);
    } finally {
      await server.stop();
    }
  });
});
