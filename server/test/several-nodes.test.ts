import type { AccessPolicy, Bundle, Patient, Subscription } from '@medplum/fhirtypes';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startTestServer, unique, until } from './harness.ts';
import type { TestServer } from './harness.ts';
import { RestHookReceiver } from './rest-hook-receiver.ts';

/* Two server nodes on one database (and one Redis), as in docker-compose. */

const REDIS = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';
const env = { OUTBOUND_ALLOWED_HOSTS: '127.0.0.1', JOB_RETRY_BASE_MS: '50', REDIS_URL: REDIS };
let a: TestServer;
let b: TestServer;
const receiver = new RestHookReceiver();

beforeAll(async () => {
  await receiver.start();
  a = await startTestServer(env);
  b = await startTestServer(env, a.databaseUrl);
});

afterAll(async () => {
  await b?.stop();
  await a?.stop();
  await receiver.stop();
});

describe('two nodes', () => {
  test('they share the queue: writes on both, each delivery made exactly once', async () => {
    const family = unique('Nodes');
    const sub = await a.medplum().createResource<Subscription>({
      resourceType: 'Subscription',
      status: 'active',
      reason: 'nodes',
      criteria: `Patient?name=${family}`,
      channel: { type: 'rest-hook', endpoint: receiver.url },
    });
    const ids: string[] = [];
    await Promise.all(
      Array.from({ length: 40 }, async (_, i) => {
        const node = i % 2 === 0 ? a : b;
        ids.push((await node.medplum().createResource<Patient>({ resourceType: 'Patient', name: [{ family }] })).id as string);
      })
    );
    expect(await receiver.until(() => receiver.of(sub.id as string).length >= 40)).toBe(true);
    // both nodes are idle once outbox and queue are empty: nothing more can come
    for (let i = 0; i < 400; i++) {
      const { rows } = await a.services.pool.query<{ n: string }>('SELECT (SELECT count(*) FROM outbox) + (SELECT count(*) FROM job) AS n');
      if (rows[0].n === '0') {
        break;
      }
      await new Promise((r) => setTimeout(r, 25));
    }
    const delivered = receiver.of(sub.id as string).map((d) => JSON.parse(d.body).id as string);
    expect(delivered.sort()).toEqual(ids.sort());
  });

  test('a policy changed on one node applies at once on the other (Redis invalidates cached sessions)', async () => {
    const policy = await a.medplum().createResource<AccessPolicy>({ resourceType: 'AccessPolicy', resource: [{ resourceType: 'Patient' }] });
    const email = `${unique('node')}@example.com`;
    await a.medplum().invite(a.projectId, {
      resourceType: 'Practitioner',
      firstName: 'N',
      lastName: 'B',
      email,
      password: 'two-nodes-pw-1',
      membership: { accessPolicy: { reference: `AccessPolicy/${policy.id}` } },
    });
    const user = await b.signIn(email, 'two-nodes-pw-1');
    const headers = { Authorization: `Bearer ${user.getAccessToken()}` };
    expect((await b.fhir('Patient?_count=1', { headers })).status).toBe(200);
    expect((await b.fhir('Observation?_count=1', { headers })).status).toBe(403); // B caches this session
    await a.medplum().updateResource<AccessPolicy>({ ...policy, resource: [{ resourceType: 'Observation' }] });
    let status = 0;
    for (let i = 0; i < 40 && status !== 200; i++) {
      status = (await b.fhir('Observation?_count=1', { headers })).status;
      if (status !== 200) {
        await new Promise((r) => setTimeout(r, 25));
      }
    }
    // well within the 5 s the cache would otherwise keep it
    expect(status).toBe(200);
    expect((await b.fhir('Patient?_count=1', { headers })).status).toBe(403);
  });

  test('a websocket subscription held by one node gets what is written on the other (announced over Redis)', async () => {
    const family = unique('WsNodes');
    const onB = await b.signIn(b.admin.email, b.admin.password, b.projectId);
    const emitter = onB.subscribeToCriteria(`Patient?name=${family}`);
    const received: string[] = [];
    let connected = false;
    emitter.addEventListener('connect', () => (connected = true));
    emitter.addEventListener('message', (e) => received.push(((e.payload as Bundle).entry?.[1]?.resource as Patient).id as string));
    try {
      expect(await until(() => connected)).toBe(true);
      const patient = await a.medplum().createResource<Patient>({ resourceType: 'Patient', name: [{ family }] });
      // well before the hub's 10 s fallback pass
      expect(await until(() => received.includes(patient.id as string), 5000)).toBe(true);
    } finally {
      onB.unsubscribeFromCriteria(`Patient?name=${family}`);
      onB.getSubscriptionManager().closeWebSocket();
    }
  });
});
