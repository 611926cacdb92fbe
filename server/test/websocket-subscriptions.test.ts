import type { Bundle, Patient, Resource } from '@medplum/fhirtypes';
import { describe, expect, test } from 'vitest';
import { unique, until, useTestServer } from './harness.ts';

const t = useTestServer();

function focusOf(bundle: Bundle): string | undefined {
  const entry = bundle.entry?.[1];
  return entry?.resource ? `${entry.resource.resourceType}/${(entry.resource as Resource).id}` : entry?.request?.url;
}


describe('websocket subscriptions with MedplumClient', () => {
  test('creates and updates arrive as event-notification bundles', async () => {
    const medplum = await t.server.signIn(t.server.admin.email, t.server.admin.password, t.server.projectId);
    const family = unique('Ws');
    const emitter = medplum.subscribeToCriteria(`Patient?name=${family}`);
    const messages: Bundle[] = [];
    let connected = false;
    emitter.addEventListener('connect', () => (connected = true));
    emitter.addEventListener('message', (e) => messages.push(e.payload as Bundle));
    try {
      expect(await until(() => connected)).toBe(true);
      const patient = await medplum.createResource<Patient>({ resourceType: 'Patient', name: [{ family }] });
      await medplum.createResource<Patient>({ resourceType: 'Patient', name: [{ family: unique('NotMine') }] });
      const updated = await medplum.updateResource<Patient>({ ...patient, gender: 'other' });
      expect(await until(() => messages.length >= 2)).toBe(true);
      expect(messages.map(focusOf)).toEqual([`Patient/${patient.id}`, `Patient/${patient.id}`]);
      const [created, changed] = messages;
      expect(created.entry?.[0].resource).toMatchObject({ resourceType: 'SubscriptionStatus', type: 'event-notification' });
      expect((changed.entry?.[1].resource as Patient).meta?.versionId).toBe(updated.meta?.versionId);
      const numbers = messages.map((m) => Number((m.entry?.[0].resource as { notificationEvent: { eventNumber: string }[] }).notificationEvent[0].eventNumber));
      expect(numbers[1]).toBeGreaterThan(numbers[0]);
    } finally {
      medplum.unsubscribeFromCriteria(`Patient?name=${family}`);
      medplum.getSubscriptionManager().closeWebSocket();
    }
  });

  test('a short disconnect loses nothing: what was written meanwhile arrives after the reconnect', async () => {
    const medplum = await t.server.signIn(t.server.admin.email, t.server.admin.password, t.server.projectId);
    const family = unique('Drop');
    const emitter = medplum.subscribeToCriteria(`Patient?name=${family}`);
    const received = new Set<string>();
    const arrivals: string[] = [];
    let connects = 0;
    emitter.addEventListener('connect', () => connects++);
    emitter.addEventListener('message', (e) => {
      received.add(focusOf(e.payload as Bundle) as string);
      arrivals.push(focusOf(e.payload as Bundle) as string);
    });
    try {
      expect(await until(() => connects === 1)).toBe(true);
      const before = await medplum.createResource<Patient>({ resourceType: 'Patient', name: [{ family }] });
      expect(await until(() => received.has(`Patient/${before.id}`))).toBe(true);
      // the network drops: the server's end of every socket goes away
      const hub = t.server.services.websockets as unknown as { bindings: Map<string, Set<{ socket: { terminate(): void } }>> };
      for (const set of hub.bindings.values()) {
        for (const binding of set) {
          binding.socket.terminate();
        }
      }
      const during: string[] = [];
      for (let i = 0; i < 5; i++) {
        during.push(`Patient/${(await medplum.createResource<Patient>({ resourceType: 'Patient', name: [{ family }] })).id}`);
      }
      expect(await until(() => connects >= 2)).toBe(true);
      const after = await medplum.createResource<Patient>({ resourceType: 'Patient', name: [{ family }] });
      expect(await until(() => [...during, `Patient/${after.id}`].every((f) => received.has(f)))).toBe(true);
      // replayed once, not also through the new subscription
      await new Promise((r) => setTimeout(r, 300));
      expect(arrivals.filter((f) => f !== `Patient/${before.id}`).sort()).toEqual([...during, `Patient/${after.id}`].sort());
    } finally {
      medplum.unsubscribeFromCriteria(`Patient?name=${family}`);
      medplum.getSubscriptionManager().closeWebSocket();
    }
  });

  test('binding needs a valid token; ping answers pong', async () => {
    const ws = new WebSocket(`${t.server.baseUrl.replace('http', 'ws')}ws/subscriptions-r4`);
    const messages: string[] = [];
    ws.addEventListener('message', (e) => messages.push(String(e.data)));
    await new Promise((resolve) => ws.addEventListener('open', resolve));
    ws.send(JSON.stringify({ type: 'ping' }));
    ws.send(JSON.stringify({ type: 'bind-with-token', payload: { token: 'not-a-token' } }));
    expect(await until(() => messages.length >= 2)).toBe(true);
    expect(JSON.parse(messages[0])).toEqual({ type: 'pong' });
    expect(JSON.parse(messages[1])).toMatchObject({ type: 'error', payload: { message: 'Invalid binding token' } });
    ws.close();
    // a binding token is only issued for websocket subscriptions the caller can read
    const hook = await t.medplum.createResource({ resourceType: 'Subscription', status: 'active', reason: 'x', criteria: 'Patient', channel: { type: 'rest-hook', endpoint: 'https://example.org/hook' } });
    await expect(t.medplum.get(`fhir/R4/Subscription/${hook.id}/$get-ws-binding-token`)).rejects.toThrow('not a websocket subscription');
  });

  test('a websocket Subscription whose socket closed and was not taken over is deleted after a while', async () => {
    const medplum = await t.server.signIn(t.server.admin.email, t.server.admin.password, t.server.projectId);
    const family = unique('Gone');
    const emitter = medplum.subscribeToCriteria(`Patient?name=${family}`);
    let connected = false;
    emitter.addEventListener('connect', () => (connected = true));
    expect(await until(() => connected)).toBe(true);
    const [subscription] = await t.medplum.searchResources('Subscription', { criteria: `Patient?name=${family}` });
    medplum.unsubscribeFromCriteria(`Patient?name=${family}`);
    medplum.getSubscriptionManager().closeWebSocket();
    const hub = t.server.services.websockets;
    let closed = false;
    for (let i = 0; i < 200 && !closed; i++) {
      const { rows } = await t.server.services.pool.query('SELECT 1 FROM ws_binding WHERE subscription_id = $1 AND closed_at IS NOT NULL', [subscription.id]);
      closed = rows.length === 1;
      await new Promise((r) => setTimeout(r, 25));
    }
    expect(closed).toBe(true);
    // not yet: it could still be taken over
    expect(await hub.expireAbandoned()).toBe(0);
    await t.server.services.pool.query("UPDATE ws_binding SET closed_at = now() - interval '6 minutes' WHERE subscription_id = $1", [subscription.id]);
    expect(await hub.expireAbandoned()).toBe(1);
    await expect(t.medplum.readResource('Subscription', subscription.id as string)).rejects.toThrow('Gone');
  });
});
