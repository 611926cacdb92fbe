/**
 * The job queue wakes workers only when there is work: an idle server sends no job notifications
 * (each claim used to notify every worker, which claimed again: a storm of empty claims that kept
 * an idle server and its database busy), and a job becoming runnable still wakes them at once.
 */
import type { Patient, Subscription } from '@medplum/fhirtypes';
import pg from 'pg';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { useTestServer } from './harness.ts';
import { RestHookReceiver } from './rest-hook-receiver.ts';

const t = useTestServer({ OUTBOUND_ALLOWED_HOSTS: '127.0.0.1' });
const receiver = new RestHookReceiver();
let listener: pg.Client;
let notifications = 0;

beforeAll(async () => {
  await receiver.start();
  listener = new pg.Client({ connectionString: t.server.databaseUrl });
  await listener.connect();
  listener.on('notification', (n) => {
    if (n.channel === 'ermis_jobs') {
      notifications++;
    }
  });
  await listener.query('LISTEN ermis_jobs');
});

afterAll(async () => {
  await listener?.end();
  await receiver.stop();
});

test('an idle server sends no job notifications; a new job wakes the workers and is delivered', async () => {
  // idle: the workers poll, claim nothing, and nothing notifies
  notifications = 0;
  await new Promise((r) => setTimeout(r, 2000));
  expect(notifications).toBe(0);

  // a rest-hook subscription turns the next write into a job
  await t.medplum.createResource<Subscription>({
    resourceType: 'Subscription',
    status: 'active',
    reason: 'wake-up test',
    criteria: 'Patient',
    channel: { type: 'rest-hook', endpoint: receiver.url, payload: 'application/fhir+json' },
  });
  notifications = 0;
  const patient = await t.medplum.createResource<Patient>({ resourceType: 'Patient', name: [{ family: 'Wake' }] });
  for (let i = 0; i < 200 && !receiver.deliveries.some((r) => r.body.includes(patient.id as string)); i++) {
    await new Promise((r) => setTimeout(r, 25));
  }
  expect(receiver.deliveries.some((r) => r.body.includes(patient.id as string))).toBe(true);
  expect(notifications).toBeGreaterThanOrEqual(1);

  // delivered: quiet again
  await new Promise((r) => setTimeout(r, 500));
  notifications = 0;
  await new Promise((r) => setTimeout(r, 2000));
  expect(notifications).toBe(0);
});
