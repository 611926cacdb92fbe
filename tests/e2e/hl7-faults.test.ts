/**
 * Fault tests of the HL7 pipeline over real TCP, with both the server and the agent as child
 * processes that are killed with SIGKILL (no shutdown code runs): a sender streams ORU messages,
 * something dies or the connection breaks mid-frame, the sender resends what it must, and at the
 * end the database is counted. For every message: exactly one AuditEvent with status `processed`
 * (duplicates only as `duplicate`), exactly one Observation per result identifier, nothing missing.
 *
 * The agent's server URL is fixed, so a killed server is restarted on the same port and database.
 */
import type { MedplumClient } from '@medplum/core';
import type { AuditEvent, Parameters, ParametersParameter, Patient } from '@medplum/fhirtypes';
import net from 'node:net';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { createTestDatabase, unique } from '../../server/test/harness.ts';
import { frame, MllpSender, parseAck, seedPipeline, startAgent, stopAgent, waitConnected } from './hl7-harness.ts';
import type { AgentProcess, SeededPipeline } from './hl7-harness.ts';
import { firstProjectId, kill, signIn, sleep, startServer, until } from './server-process.ts';
import type { ServerProcess } from './server-process.ts';

const CY_ID = 'https://ermis.health/fhir/sid/cy-id-card';
const STATUS = 'https://ermis.health/fhir/CodeSystem/hl7-message-status';
const RESULT_SYSTEM = 'https://ermis.health/fhir/sid/lab-result/bioanalytica';
const QUEUED_TEXT = 'Accepted; queued for processing';
// How long a sender waits for the bot's ACK before the offline policy answers. Long where the test
// compares the bot's ACKs (a busy 2-core machine may take seconds per message); short where the
// server is killed mid-stream, so that the message in flight is answered soon.
const PATIENT_CHANNEL = 'ackTimeoutMs=20000';
const HASTY_CHANNEL = 'ackTimeoutMs=2000';
const SERVER_ENV = { JOB_WORKERS: '1' };

let databaseUrl: string;
let db: pg.Pool;
let server: ServerProcess;
let medplum: MedplumClient;
let seeded: SeededPipeline;
let agent: AgentProcess;
const agents: AgentProcess[] = [];
let channelOptions: string;
/** Every sender connection: a test that fails leaves none open (nor a loop sending on one) for the next. */
const readers: AckReader[] = [];

afterEach(() => {
  readers.splice(0).forEach((r) => r.close());
});

beforeAll(async () => {
  databaseUrl = await createTestDatabase();
  db = new pg.Pool({ connectionString: databaseUrl, max: 2 });
  server = await startServer(databaseUrl, SERVER_ENV);
  medplum = await signIn(server, await firstProjectId(db));
  seeded = await seedPipeline(medplum, PATIENT_CHANNEL);
  channelOptions = PATIENT_CHANNEL;
  agent = await launchAgent();
  await waitConnected(medplum, seeded.agentId);
}, 120_000);

afterAll(async () => {
  for (const a of agents) {
    await stopAgent(a, 'SIGKILL');
  }
  await db?.end();
});

async function launchAgent(dataDir?: string): Promise<AgentProcess> {
  const started = await startAgent(server.baseUrl, seeded, dataDir);
  agents.push(started);
  return started;
}

/** Changes the channel's endpoint options (same port) and has the running agent reload it. */
async function useChannel(options: string): Promise<void> {
  if (options === channelOptions) {
    return;
  }
  const listening = count(agent.output(), '"msg":"channel listening"');
  const endpoint = await medplum.readResource('Endpoint', seeded.endpointId);
  await medplum.updateResource({ ...endpoint, address: `mllp://0.0.0.0:${seeded.port}?${options}` });
  await medplum.post(medplum.fhirUrl('Agent', seeded.agentId, '$reload-config'), {});
  expect(await until(() => count(agent.output(), '"msg":"channel listening"') > listening, 20_000), agent.output()).toBe(true);
  expect(agent.output()).toContain(`"offline":"${options.includes('offline=reject') ? 'reject' : 'acknowledge'}"`);
  channelOptions = options;
}

/** A message of the test: a Bioanalytica ORU with one result, keyed by its filler number. */
interface Sent {
  controlId: string;
  filler: string;
  text: string;
}

function oru(cyId: string, opts: { enhanced?: boolean } = {}): Sent {
  const controlId = unique('M');
  const filler = unique('F');
  const ackModes = opts.enhanced ? 'AL|AL' : '|';
  const text = [
    `MSH|^~\\&|LIS|BIOANALYTICA|ERMIS|CLINIC|20261121101500||ORU^R01^ORU_R01|${controlId}|P|2.5.1|||${ackModes}|CYP|UNICODE UTF-8`,
    `PID|1||${cyId}^^^CYMOI^NNCYP||ΓΕΩΡΓΙΟΥ^ΑΝΔΡΕΑΣ||19610412|M`,
    `ORC|RE||${filler}`,
    `OBR|1||${filler}|LIPID^Λιπιδαιμικό προφίλ^L|||20261121083000|||||||||||||||20261121101000|||F`,
    'OBX|1|NM|K^Κάλιο^L||4.1|mmol/L|3.5-5.1|N|||F',
  ].join('\r');
  return { controlId, filler, text };
}

async function newPatient(): Promise<{ cyId: string; patientId: string }> {
  const cyId = unique('cy');
  const patient = await medplum.createResource<Patient>({
    resourceType: 'Patient',
    identifier: [{ system: CY_ID, value: cyId }],
    name: [{ family: 'GEORGIOU', given: ['ANDREAS'] }],
    birthDate: '1961-04-12',
    gender: 'male',
  });
  return { cyId, patientId: patient.id as string };
}

/**
 * One sender connection whose replies are read as they arrive and filed by MSA-2: in enhanced mode
 * a message gets a CA and later its application ACK, interleaved with the next messages' CAs.
 */
class AckReader {
  readonly sender: MllpSender;
  readonly replies = new Map<string, string[]>();
  readonly all: string[] = [];

  private constructor(sender: MllpSender) {
    this.sender = sender;
    void this.read();
  }

  static async open(port: number): Promise<AckReader> {
    const reader = new AckReader(await MllpSender.connect(port));
    readers.push(reader);
    return reader;
  }

  private async read(): Promise<void> {
    for (;;) {
      const reply = await this.sender.next(250);
      if (reply === undefined) {
        if (this.sender.closed) {
          return;
        }
        continue;
      }
      this.all.push(reply);
      const id = parseAck(reply).controlId ?? '';
      this.replies.set(id, [...(this.replies.get(id) ?? []), reply]);
    }
  }

  send(message: Sent): void {
    this.sender.write(frame(message.text));
  }

  /** The reply to `controlId` with MSA-1 `code`; undefined after the timeout or once the connection closed. */
  async reply(controlId: string, code: string, timeoutMs = 45_000): Promise<string | undefined> {
    const find = (): string | undefined => this.replies.get(controlId)?.find((r) => parseAck(r).code === code);
    await until(() => find() !== undefined || this.sender.closed, timeoutMs, 10);
    return find();
  }

  close(): void {
    this.sender.destroy();
  }
}

async function logEntries(controlId: string): Promise<AuditEvent[]> {
  return medplum.searchResources('AuditEvent', { 'entity-name:exact': controlId, _count: '50' }, { cache: 'no-cache' });
}

const statusOf = (e: AuditEvent): string | undefined => e.subtype?.find((c) => c.system === STATUS)?.code;

async function processedOfPatient(patientId: string): Promise<AuditEvent[]> {
  return medplum.searchResources('AuditEvent', { entity: `Patient/${patientId}`, subtype: `${STATUS}|processed`, _count: '1000' }, { cache: 'no-cache' });
}

/** Runs `fn` over `items`, `limit` at a time. */
async function eachLimited<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  const queue = [...items];
  await Promise.all(
    Array.from({ length: limit }, async () => {
      for (let item = queue.shift(); item !== undefined; item = queue.shift()) {
        await fn(item);
      }
    })
  );
}

/**
 * Waits until every message is logged as processed (the agent's spool drains in the background),
 * then counts: per control ID exactly one `processed` entry and no `failed` one; per result
 * identifier exactly one Observation; for the patient nothing beyond these. Returns each message's
 * log statuses.
 */
async function expectEachProcessedOnce(patientId: string, messages: Sent[], timeoutMs = 60_000): Promise<Map<string, string[]>> {
  const all = await until(async () => (await processedOfPatient(patientId)).length >= messages.length, timeoutMs, 500);
  // A late second copy (one still in flight somewhere) would show up now.
  await sleep(1500);
  const statuses = new Map<string, string[]>();
  const observationCounts = new Map<string, number>();
  await eachLimited(messages, 6, async (m) => {
    statuses.set(m.controlId, (await logEntries(m.controlId)).map((e) => statusOf(e) ?? '?'));
    const observations = await medplum.searchResources('Observation', { identifier: `${RESULT_SYSTEM}|${m.filler}|K|` }, { cache: 'no-cache' });
    observationCounts.set(m.filler, observations.length);
  });
  const notOnce = messages.filter((m) => statuses.get(m.controlId)?.filter((s) => s === 'processed').length !== 1);
  expect(
    notOnce.map((m) => `${m.controlId}: ${JSON.stringify(statuses.get(m.controlId))}`),
    `processed entries (waited for all: ${all})\n${agent.output().slice(-3000)}`
  ).toEqual([]);
  expect(messages.filter((m) => statuses.get(m.controlId)?.includes('failed')).map((m) => m.controlId)).toEqual([]);
  expect(messages.filter((m) => observationCounts.get(m.filler) !== 1).map((m) => `${m.filler}: ${observationCounts.get(m.filler)}`)).toEqual([]);
  // Nothing else was stored for the patient: one Observation, one report, one processed entry per message.
  const observations = await medplum.searchResources('Observation', { subject: `Patient/${patientId}`, _count: '1000' }, { cache: 'no-cache' });
  expect(observations.map((o) => o.identifier?.find((i) => i.system === RESULT_SYSTEM)?.value).sort()).toEqual(messages.map((m) => `${m.filler}|K|`).sort());
  const reports = await medplum.searchResources('DiagnosticReport', { subject: `Patient/${patientId}`, _count: '1000' }, { cache: 'no-cache' });
  expect(reports).toHaveLength(messages.length);
  expect(await processedOfPatient(patientId)).toHaveLength(messages.length);
  return statuses;
}

/** A number from the agent's last heartbeat, e.g. ['spoolDepth'] or ['channels', 'lab-results', 'received']. */
async function agentStat(names: string[]): Promise<number | undefined> {
  const status = (await medplum.get(medplum.fhirUrl('Agent', seeded.agentId, '$status'), { cache: 'no-cache' })) as Parameters;
  let node: ParametersParameter | undefined = status.parameter?.find((p) => p.name === 'stats');
  for (const name of names) {
    node = node?.part?.find((p) => p.name === name);
  }
  return node?.valueInteger;
}

/** The agent's spool is empty and its forwarder idle (as its heartbeats report). */
async function agentDrained(timeoutMs = 30_000): Promise<boolean> {
  return until(async () => (await agentStat(['spoolDepth'])) === 0 && (await agentStat(['channels', 'lab-results', 'queued'])) === 0, timeoutMs, 500);
}

const count = (text: string, what: string): number => text.split(what).length - 1;

describe('HL7 pipeline faults', () => {
  test('the server is killed (SIGKILL) mid-stream and restarted on its port: every message ACKed AA, spooled, processed exactly once', async () => {
    await useChannel(HASTY_CHANNEL);
    const { cyId, patientId } = await newPatient();
    const SENDERS = 2;
    const MAX = 60;
    // While the server is away at most this many go out, however long the restart takes (under load
    // it took 40 s), so that the stream still has messages to send after the reconnect.
    const MAX_WHILE_DOWN = 16;
    let sentWhileDown = 0;
    const sent: Sent[] = [];
    const acks = new Map<string, string>();
    const senders = await Promise.all(Array.from({ length: SENDERS }, () => AckReader.open(seeded.port)));
    let serverDown = false;
    let stopSending = false;
    const missing: string[] = [];
    // Each sender sends one message, waits for its ACK, pauses, and goes on (as a LIS does); slower
    // while the server is away, so that the stream lasts until the restarted server is back.
    const streaming = Promise.all(
      senders.map(async (reader) => {
        while (!stopSending && sent.length < MAX) {
          if (serverDown && sentWhileDown >= MAX_WHILE_DOWN) {
            await sleep(200);
            continue;
          }
          if (serverDown) {
            sentWhileDown++;
          }
          const message = oru(cyId);
          sent.push(message);
          reader.send(message);
          const ack = await reader.reply(message.controlId, 'AA');
          if (ack === undefined) {
            missing.push(message.controlId);
            return;
          }
          acks.set(message.controlId, ack);
          await sleep(serverDown ? 1000 : 200);
        }
      })
    );
    const disconnectsBefore = count(agent.output(), '"msg":"disconnected from the server"');
    const connectsBefore = count(agent.output(), '"msg":"connected to the server"');
    // Mid-stream: some messages are processed, more are on their way.
    expect(await until(async () => acks.size >= 8 && (await processedOfPatient(patientId)).length >= 3, 60_000, 200)).toBe(true);
    serverDown = true;
    await kill(server);
    const ackedAtKill = acks.size;
    // The restart takes a few seconds; the senders keep streaming meanwhile.
    server = await startServer(databaseUrl, SERVER_ENV, server.port);
    expect(await until(() => count(agent.output(), '"msg":"connected to the server"') > connectsBefore, 40_000), agent.output()).toBe(true);
    // Some more through the reconnected agent, then the senders stop.
    serverDown = false;
    const afterReconnect = acks.size;
    const sentAtReconnect = sent.length;
    expect(await until(() => acks.size >= Math.min(MAX, afterReconnect + SENDERS) || missing.length > 0, 30_000)).toBe(true);
    stopSending = true;
    await streaming;
    senders.forEach((r) => r.close());

    expect(missing, agent.output().slice(-3000)).toEqual([]);
    expect(count(agent.output(), '"msg":"disconnected from the server"')).toBe(disconnectsBefore + 1);
    // Every message got its AA with its own control ID.
    expect(sent.map((m) => parseAck(acks.get(m.controlId)).code)).toEqual(sent.map(() => 'AA'));
    expect(sent.every((m) => parseAck(acks.get(m.controlId)).controlId === m.controlId)).toBe(true);
    // While the server was away the agent answered on its own.
    const queued = sent.filter((m) => parseAck(acks.get(m.controlId)).text === QUEUED_TEXT);
    expect(queued.length, `${ackedAtKill} acked at the kill, ${sent.length} sent`).toBeGreaterThan(3);
    expect(sent.length, 'the stream went on after the reconnect').toBeGreaterThan(sentAtReconnect);

    await expectEachProcessedOnce(patientId, sent);
    expect(await agentDrained()).toBe(true);
    expect(agent.child.exitCode).toBeNull();
  }, 150_000);

  test('the agent is killed (SIGKILL) mid-stream and restarted on its spool: what was ACKed is processed; the sender resends the rest, then everything; each processed exactly once', async () => {
    await useChannel(PATIENT_CHANNEL);
    const { cyId, patientId } = await newPatient();
    // An original-mode sender (its AA is the bot's: processed before the ACK) and an enhanced-mode
    // one (CA once spooled: it runs ahead of processing, so the spool holds a backlog at the kill).
    const plain = Array.from({ length: 10 }, () => oru(cyId));
    const enhanced = Array.from({ length: 18 }, () => oru(cyId, { enhanced: true }));
    const everything = [...plain, ...enhanced];
    const before = new Map<string, string>();
    const [a, b] = await Promise.all([AckReader.open(seeded.port), AckReader.open(seeded.port)]);
    const plainDone = (async (): Promise<void> => {
      for (const m of plain) {
        a.send(m);
        const ack = await a.reply(m.controlId, 'AA');
        if (!ack) {
          return;
        }
        before.set(m.controlId, ack);
      }
    })();
    const enhancedDone = (async (): Promise<void> => {
      for (const m of enhanced) {
        b.send(m);
        const ack = await b.reply(m.controlId, 'CA');
        if (!ack) {
          return;
        }
        before.set(m.controlId, ack);
        await sleep(150);
      }
    })();
    const acked = (list: Sent[]): Sent[] => list.filter((m) => before.has(m.controlId));
    expect(await until(() => acked(enhanced).length >= 4 && acked(plain).length >= 1, 60_000)).toBe(true);
    // Freeze the server: a message CA'd from now on cannot be processed before the kill, so the
    // spool holds a backlog however fast the bot is (warm bot processes keep up with this sender).
    server.child.kill('SIGSTOP');
    const ackedBeforeFreeze = new Set(before.keys());
    try {
      expect(await until(() => acked(enhanced).length >= 12, 60_000)).toBe(true);
      await stopAgent(agent, 'SIGKILL');
    } finally {
      server.child.kill('SIGCONT');
    }
    await Promise.all([plainDone, enhancedDone]);
    expect(a.sender.closed && b.sender.closed).toBe(true);
    const unacked = everything.filter((m) => !before.has(m.controlId));
    expect(unacked.length).toBeGreaterThan(0);
    // Application ACKs that made it out before the kill (compared with the bot's below).
    const appAcks = new Map<string, string>();
    for (const m of everything) {
      const aa = [...a.replies.get(m.controlId) ?? [], ...b.replies.get(m.controlId) ?? []].find((r) => parseAck(r).code === 'AA');
      if (aa) {
        appAcks.set(m.controlId, aa);
      }
    }
    // Messages CA'd while the server was frozen were not processed at the kill: only the spool on disk had them.
    const spooledOnly = acked(enhanced).filter((m) => !ackedBeforeFreeze.has(m.controlId));
    expect(spooledOnly.length).toBeGreaterThanOrEqual(2);

    const dataDir = agent.dataDir;
    agent = await launchAgent(dataDir);
    expect(agent.output()).toMatch(/"msg":"resuming spooled messages","count":\d+/);
    // The sender reconnects at once and resends what got no ACK (some of it is in the spool too).
    const c = await AckReader.open(seeded.port);
    for (const m of unacked) {
      c.send(m);
      const isEnhanced = enhanced.includes(m);
      if (isEnhanced) {
        expect(parseAck(await c.reply(m.controlId, 'CA')).controlId).toBe(m.controlId);
      }
      const ack = await c.reply(m.controlId, 'AA');
      expect(parseAck(ack).controlId, c.all.join('\n')).toBe(m.controlId);
      appAcks.set(m.controlId, ack as string);
    }
    // The ACKed ones were never resent: every one of them is processed all the same, once.
    await expectEachProcessedOnce(patientId, everything);
    c.close();

    // The ACK each message got from the bot, as its log entry keeps it; every bot ACK the sender
    // saw is that one (the others were the agent's own, while it was not yet connected).
    const stored = new Map<string, string>();
    await eachLimited(everything, 6, async (m) => {
      const [entry] = (await logEntries(m.controlId)).filter((e) => statusOf(e) === 'processed');
      stored.set(m.controlId, entry.entity?.find((e) => e.what?.reference?.startsWith('Binary/'))?.detail?.find((d) => d.type === 'ack')?.valueString ?? '');
    });
    const seenBotAcks = everything.filter((m) => appAcks.has(m.controlId) && parseAck(appAcks.get(m.controlId)).text !== QUEUED_TEXT);
    expect(seenBotAcks.length).toBeGreaterThan(0);
    expect(seenBotAcks.filter((m) => appAcks.get(m.controlId) !== stored.get(m.controlId)).map((m) => m.controlId)).toEqual([]);

    // Everything again, on three connections at once: duplicates, answered with the bot's ACK of then.
    const resenders = await Promise.all([0, 1, 2].map(() => AckReader.open(seeded.port)));
    const mismatches: string[] = [];
    await Promise.all(
      resenders.map(async (r, i) => {
        for (const m of everything.filter((_, j) => j % resenders.length === i)) {
          r.send(m);
          if (enhanced.includes(m) && parseAck(await r.reply(m.controlId, 'CA')).controlId !== m.controlId) {
            mismatches.push(`${m.controlId}: no CA`);
          }
          const ack = await r.reply(m.controlId, 'AA');
          if (ack !== stored.get(m.controlId)) {
            mismatches.push(`${m.controlId}: ${ack} instead of ${stored.get(m.controlId)}`);
          }
        }
      })
    );
    resenders.forEach((r) => r.close());
    expect(mismatches).toEqual([]);
    const statuses = await expectEachProcessedOnce(patientId, everything);
    expect(everything.filter((m) => !statuses.get(m.controlId)?.includes('duplicate')).map((m) => m.controlId)).toEqual([]);
    expect(agent.child.exitCode).toBeNull();
  }, 150_000);

  test('copies of a message sent on three connections at once (a resend while the first is in flight): processed once, each copy gets the same ACK', async () => {
    await useChannel(PATIENT_CHANNEL);
    const { cyId, patientId } = await newPatient();
    const messages = Array.from({ length: 3 }, () => oru(cyId));
    const copies = await Promise.all([0, 1, 2].map(() => AckReader.open(seeded.port)));
    for (const m of messages) {
      copies.forEach((r) => r.send(m));
    }
    for (const m of messages) {
      const acks = await Promise.all(copies.map((r) => r.reply(m.controlId, 'AA')));
      expect(parseAck(acks[0])).toMatchObject({ code: 'AA', controlId: m.controlId, text: 'Accepted' });
      expect(acks.slice(1)).toEqual([acks[0], acks[0]]);
    }
    copies.forEach((r) => r.close());
    const statuses = await expectEachProcessedOnce(patientId, messages);
    expect(messages.map((m) => statuses.get(m.controlId)?.sort())).toEqual(messages.map(() => ['duplicate', 'duplicate', 'processed']));
  }, 60_000);

  test('a connection dropped mid-frame leaves nothing behind; the whole message resent on a new connection is processed once', async () => {
    await useChannel(PATIENT_CHANNEL);
    const { cyId, patientId } = await newPatient();
    const cut = [oru(cyId), oru(cyId), oru(cyId)];
    await sleep(1200); // a heartbeat with the counters as they are now
    const received = await agentStat(['channels', 'lab-results', 'received']);
    const framingErrors = await agentStat(['channels', 'lab-results', 'framingErrors']);
    const bytes = cut.map((m) => frame(m.text));
    // Half a frame, then the connection is reset; the whole message but the final CR, then reset;
    // half a frame, then the sender half-closes and the agent must close the connection.
    const partial = [bytes[0].subarray(0, Math.floor(bytes[0].length / 2)), bytes[1].subarray(0, bytes[1].length - 1), bytes[2].subarray(0, 40)];
    for (const [i, chunk] of partial.entries()) {
      const socket = net.connect({ host: '127.0.0.1', port: seeded.port });
      await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
      const replies: Buffer[] = [];
      socket.on('data', (d: Buffer) => replies.push(d));
      const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
      await new Promise<void>((resolve) => socket.write(chunk, () => resolve()));
      await sleep(200);
      if (i < 2) {
        socket.destroy();
      } else {
        socket.end();
      }
      await closed;
      expect(Buffer.concat(replies).length, 'no reply to a broken frame').toBe(0);
    }
    await sleep(2500); // heartbeats with the new counters; anything forwarded would be processed by now
    expect(await agentStat(['channels', 'lab-results', 'received'])).toBe(received);
    expect(await agentStat(['channels', 'lab-results', 'framingErrors'])).toBe((framingErrors ?? 0) + 3);
    for (const m of cut) {
      expect(await logEntries(m.controlId)).toHaveLength(0);
    }
    expect(await medplum.searchResources('Observation', { subject: `Patient/${patientId}` }, { cache: 'no-cache' })).toHaveLength(0);

    for (const m of cut) {
      const reader = await AckReader.open(seeded.port);
      reader.send(m);
      expect(parseAck(await reader.reply(m.controlId, 'AA'))).toMatchObject({ code: 'AA', controlId: m.controlId, text: 'Accepted' });
      reader.close();
    }
    await expectEachProcessedOnce(patientId, cut);
  }, 60_000);

  test('offline=reject: the agent never answers AA itself; with the server down the sender gets AE 207, nothing stays in the spool, and after the restart nothing is processed until it is resent', async () => {
    const { cyId, patientId } = await newPatient();
    // No bot answers within 1 ms: AE 207 when the time is up. The message was already with the
    // server, so it is processed all the same (and a resend would be a duplicate).
    await useChannel('offline=reject&ackTimeoutMs=1');
    const inFlight = oru(cyId);
    const reader = await AckReader.open(seeded.port);
    reader.send(inFlight);
    const timedOut = parseAck(await reader.reply(inFlight.controlId, 'AE'));
    expect(timedOut.errors[0]?.[3], JSON.stringify(reader.all)).toMatch(/^207\^/);
    expect(await until(async () => (await logEntries(inFlight.controlId)).some((e) => statusOf(e) === 'processed'), 30_000, 250)).toBe(true);
    expect(reader.all.filter((r) => parseAck(r).code === 'AA')).toEqual([]);

    // (The reload restarts the channel: its connections are closed.)
    // Time enough for the bot (whose first runs after a restart are slow on a busy machine).
    await useChannel('offline=reject&ackTimeoutMs=15000');
    expect(await until(() => reader.sender.closed, 10_000)).toBe(true);
    const online = oru(cyId);
    const sender = await AckReader.open(seeded.port);
    await untilAccepted(sender, online);

    const disconnects = count(agent.output(), '"msg":"disconnected from the server"');
    const connects = count(agent.output(), '"msg":"connected to the server"');
    await kill(server);
    expect(await until(() => count(agent.output(), '"msg":"disconnected from the server"') > disconnects, 10_000)).toBe(true);
    const rejected = Array.from({ length: 5 }, () => oru(cyId));
    for (const m of rejected) {
      sender.send(m);
      const ack = parseAck(await sender.reply(m.controlId, 'AE', 10_000));
      expect(ack.controlId).toBe(m.controlId);
      expect(ack.errors[0]?.[3]).toMatch(/^207\^/);
    }
    sender.close();

    // Back on its port: the agent reconnects, and has nothing of the rejected messages to forward.
    server = await startServer(databaseUrl, SERVER_ENV, server.port);
    expect(await until(() => count(agent.output(), '"msg":"connected to the server"') > connects, 40_000), agent.output()).toBe(true);
    // Nor does a restart of the agent on the same spool find any.
    await stopAgent(agent, 'SIGKILL');
    agent = await launchAgent(agent.dataDir);
    expect(agent.output()).not.toContain('resuming spooled messages');
    expect(await until(() => agent.output().includes('"msg":"connected to the server"'), 20_000), agent.output()).toBe(true);
    await sleep(2000);
    for (const m of rejected) {
      expect(await logEntries(m.controlId), m.controlId).toHaveLength(0);
    }

    // The sender resends what was rejected (and the one that timed out) until each is accepted.
    const again = await AckReader.open(seeded.port);
    for (const m of [...rejected, inFlight]) {
      await untilAccepted(again, m);
    }
    again.close();
    const statuses = await expectEachProcessedOnce(patientId, [inFlight, online, ...rejected]);
    expect(statuses.get(inFlight.controlId)).toContain('duplicate');
  }, 120_000);
});

/**
 * Sends `m` as a sender under offline=reject does: again after each AE 207, until the bot's AA
 * comes. No other answer is allowed (least of all an AA the agent gave on its own).
 */
async function untilAccepted(reader: AckReader, m: Sent): Promise<void> {
  for (let attempt = 0; attempt < 10; attempt++) {
    const seen = reader.replies.get(m.controlId)?.length ?? 0;
    reader.send(m);
    expect(await until(() => (reader.replies.get(m.controlId)?.length ?? 0) > seen, 45_000, 10), `${m.controlId}: no reply`).toBe(true);
    const ack = parseAck(reader.replies.get(m.controlId)?.[seen]);
    if (ack.code === 'AA') {
      expect(ack).toMatchObject({ controlId: m.controlId, text: 'Accepted' });
      return;
    }
    expect(ack.code).toBe('AE');
    expect(ack.errors[0]?.[3]).toMatch(/^207\^/);
    await sleep(1000);
  }
  throw new Error(`${m.controlId} was not accepted after 10 attempts`);
}
