/**
 * The agent gateway across two server nodes on one database: the agent's websocket is held by
 * node A; Agent/$status and Agent/$push asked of node B reach it (agent_connection, and the
 * agent_relay table with Postgres NOTIFY).
 */
import net from 'node:net';
import type { Device, Parameters } from '@medplum/fhirtypes';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { startTestServer, unique } from '../../server/test/harness.ts';
import type { TestServer } from '../../server/test/harness.ts';
import { frame, parseAck, seedPipeline, sendOne, startAgent, stopAgent, waitConnected } from './hl7-harness.ts';
import type { AgentProcess, SeededPipeline } from './hl7-harness.ts';

let a: TestServer;
let b: TestServer;
let seeded: SeededPipeline;
let agent: AgentProcess;
let lis: net.Server;
const received: string[] = [];

beforeAll(async () => {
  a = await startTestServer();
  b = await startTestServer({}, a.databaseUrl);
  seeded = await seedPipeline(a.medplum());
  agent = await startAgent(a.baseUrl, seeded);
  await waitConnected(a.medplum(), seeded.agentId);
  lis = net.createServer((socket) => {
    socket.on('data', (chunk: Buffer) => {
      const text = chunk.subarray(1, chunk.indexOf(0x1c)).toString('utf8');
      received.push(text);
      socket.write(frame(`MSH|^~\\&|LIS|LAB|ERMIS|CLINIC|20261121||ACK^O01^ACK|A1|P|2.5.1\rMSA|AA|${text.split('\r')[0].split('|')[9]}`));
    });
  });
  await new Promise<void>((r) => lis.listen(0, '127.0.0.1', r));
}, 120_000);

afterAll(async () => {
  lis?.close();
  if (agent) {
    await stopAgent(agent);
  }
  await b?.stop();
  await a?.stop();
});

test('the other node reports the agent connected and pushes through it', async () => {
  const status = (await b.medplum().get(b.medplum().fhirUrl('Agent', seeded.agentId, '$status'), { cache: 'no-cache' })) as Parameters;
  expect(status.parameter?.find((p) => p.name === 'status')?.valueCode).toBe('connected');

  const device = await b.medplum().createResource<Device>({ resourceType: 'Device', url: `mllp://127.0.0.1:${(lis.address() as net.AddressInfo).port}` });
  const controlId = unique('ORM');
  const answer = await b
    .medplum()
    .pushToAgent({ reference: `Agent/${seeded.agentId}` }, `Device/${device.id}`, `MSH|^~\\&|ERMIS|CLINIC|LIS|LAB|20261121||ORM^O01|${controlId}|P|2.5.1\rPID|1||1`, 'x-application/hl7-v2+er7', true);
  expect(String(answer)).toContain(`MSA|AA|${controlId}`);
  expect(received.some((m) => m.includes(controlId))).toBe(true);
  // Inbound still works through node A meanwhile.
  expect(parseAck(await sendOne(seeded.port, `MSH|^~\\&|LIS|NODES|ERMIS|CLINIC|20261121||ORM^O01|${unique('X')}|P|2.5.1\rPID|1||1`)).code).toBe('AR');
});

test('once the agent is gone, the other node says disconnected and a push fails fast', async () => {
  await stopAgent(agent);
  const deadline = Date.now() + 40_000;
  let state: string | undefined;
  while (Date.now() < deadline) {
    const status = (await b.medplum().get(b.medplum().fhirUrl('Agent', seeded.agentId, '$status'), { cache: 'no-cache' })) as Parameters;
    state = status.parameter?.find((p) => p.name === 'status')?.valueCode;
    if (state === 'disconnected') {
      break;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  expect(state).toBe('disconnected');
  const device = await b.medplum().createResource<Device>({ resourceType: 'Device', url: 'mllp://127.0.0.1:9' });
  await expect(
    b.medplum().pushToAgent({ reference: `Agent/${seeded.agentId}` }, `Device/${device.id}`, 'MSH|^~\\&|A|B|C|D|20261121||ORM^O01|Z1|P|2.5.1', 'x-application/hl7-v2+er7', true)
  ).rejects.toThrow(/not connected/);
});
