/**
 * Fuzzing the agent's MLLP framing and the HL7 handling behind it (agent, gateway, hl7-inbound bot)
 * with mutated real messages (../shared/testdata): truncated, segments dropped, doubled or swapped,
 * random bytes in fields, other or broken delimiters, huge fields, frames over the size limit,
 * bytes that are not UTF-8, header fields broken; sent whole or split at random points across
 * writes, after stray bytes, an empty frame or a frame cut short by the next start block.
 *
 * What must hold for every frame that is a message: exactly one reply (in enhanced mode a CA and,
 * when asked for, one application ACK), each an ACK whose MSA-1 is AA, AE, AR or CA and whose MSA-2
 * is the message's MSH-10 whenever that is plainly readable; no hang (every reply comes within a
 * bound, and afterwards nothing is left stuck in the agent's spool or forwarder); the agent process
 * stays up, the server stays healthy, and a good message still gets AA.
 *
 * The cases come from a seeded PRNG (FUZZ_SEED to replay one run); a failure names seed and case.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import type { MedplumClient } from '@medplum/core';
import type { Parameters, ParametersParameter } from '@medplum/fhirtypes';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { TestServer } from '../../server/test/harness.ts';
import { CR, frame, FS, MllpSender, parseAck, sendOne, startPipeline, stopPipeline, TESTDATA, VT, waitConnected } from './hl7-harness.ts';
import type { AgentProcess, SeededPipeline } from './hl7-harness.ts';
import { seededRandom } from '../support/prng.ts';

const SEED = Number(process.env.FUZZ_SEED ?? 20261122);
const CASES = Number(process.env.FUZZ_CASES ?? 240);
const CONNECTIONS = 6;
const MAX_FRAME = 256 * 1024;
/** Longest wait for one reply: the bot's own timeout is 30 s; the agent answers by ackTimeoutMs. */
const REPLY_MS = 45_000;
/** No case starts after this; the rest are reported as not run. */
const BUDGET_MS = 130_000;
const ACK_CODES = new Set(['AA', 'AE', 'AR', 'CA']);
const ACK_MODES = new Set(['AL', 'NE', 'ER', 'SU']);

let server: TestServer;
let medplum: MedplumClient;
let seeded: SeededPipeline;
let agent: AgentProcess;

beforeAll(async () => {
  ({ server, medplum, seeded, agent } = await startPipeline(`maxFrameBytes=${MAX_FRAME}&ackTimeoutMs=20000`));
}, 120_000);

afterAll(() => stopPipeline({ server, agent }));


const random = seededRandom(SEED);
const int = (min: number, max: number): number => min + Math.floor(random() * (max - min + 1));
const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)];
const chance = (p: number): boolean => random() < p;

/** Every .hl7 file of the shared test data, as bytes. */
function testdataMessages(): Buffer[] {
  const found: Buffer[] = [];
  const walk = (dir: string): void => {
    for (const name of readdirSync(dir).sort()) {
      const full = path.join(dir, name);
      if (statSync(full).isDirectory()) {
        walk(full);
      } else if (name.endsWith('.hl7')) {
        found.push(readFileSync(full));
      }
    }
  };
  walk(TESTDATA);
  return found;
}

/** A Bioanalytica ORU as the seeded lab profile knows it (the bot stores it: AA). */
const ORU = Buffer.from(
  [
    'MSH|^~\\&|LIS|BIOANALYTICA|ERMIS|CLINIC|20261121101500||ORU^R01^ORU_R01|X|P|2.5.1|||||CYP|UNICODE UTF-8',
    'PID|1||FUZZ-1^^^CYMOI^NNCYP||ΓΕΩΡΓΙΟΥ^ΑΝΔΡΕΑΣ||19610412|M',
    'ORC|RE||FZ-F1',
    'OBR|1||FZ-F1|LIPID^Λιπιδαιμικό προφίλ^L|||20261121083000|||||||||||||||20261121101000|||F',
    'OBX|1|NM|CHOL^Ολική χοληστερόλη^L||5.2|mmol/L|<5.2|N|||F',
    'NTE|1||Νηστεία 12 ωρών',
  ].join('\r'),
  'utf8'
);

/**
 * What the test reads from a frame on its own (no agent code): MSH-10, MSH-15 and MSH-16 of the
 * first line that starts with MSH (after blanks or a BOM; else of the first "MSH" followed by a
 * delimiter), as a tolerant receiver reads them. The control ID counts only when it is plain.
 */
function header(bytes: Buffer): { controlId?: string; accept?: string; application?: string } {
  const text = bytes.toString('utf8');
  const found = /(?:^|[\r\n])[\s\uFEFF]*MSH([^A-Za-z0-9\s])/.exec(text) ?? /MSH([^A-Za-z0-9\s])/.exec(text);
  if (!found) {
    return {};
  }
  const sep = found[1];
  const line = text.slice(found.index + found[0].length).split(/[\r\n]/)[0];
  // fields[n - 2] is MSH-n (fields[0] is MSH-2).
  const fields = line.split(sep);
  const controlId = fields[8]?.trim();
  const mode = (value: string | undefined): string | undefined => {
    const v = value?.trim().toUpperCase();
    return v && ACK_MODES.has(v) ? v : undefined;
  };
  return {
    controlId: controlId !== undefined && /^[A-Za-z0-9._-]{1,64}$/.test(controlId) ? controlId : undefined,
    accept: mode(fields[13]),
    application: mode(fields[14]),
  };
}

/** Sets MSH-n of a message that starts with MSH (fields added when missing). */
function setMsh(bytes: Buffer, n: number, value: string): Buffer {
  const text = bytes.toString('latin1');
  if (!text.startsWith('MSH')) {
    return bytes;
  }
  const sep = text[3];
  const end = text.search(/[\r\n]|$/);
  const fields = text.slice(0, end).split(sep);
  while (fields.length <= n - 1) {
    fields.push('');
  }
  fields[n - 1] = value;
  return Buffer.concat([Buffer.from(fields.join(sep), 'latin1'), bytes.subarray(Buffer.byteLength(text.slice(0, end), 'latin1'))]);
}

/** Random bytes that cannot end or start an MLLP frame (those are the framing mutations' job). */
function randomBytes(n: number): Buffer {
  const out = Buffer.alloc(n);
  for (let i = 0; i < n; i++) {
    let b = int(0, 255);
    while (b === VT || b === FS) {
      b = int(0, 255);
    }
    out[i] = b;
  }
  return out;
}

const segmentsOf = (bytes: Buffer): Buffer[] => {
  const parts: Buffer[] = [];
  let start = 0;
  for (let i = 0; i < bytes.length; i++) {
    if (bytes[i] === CR || bytes[i] === 0x0a) {
      parts.push(bytes.subarray(start, i));
      start = i + 1;
    }
  }
  parts.push(bytes.subarray(start));
  return parts.filter((p) => p.length > 0);
};
const joinSegments = (parts: Buffer[]): Buffer => Buffer.concat(parts.flatMap((p, i) => (i === 0 ? [p] : [Buffer.from([CR]), p])));

/** The message mutations; each returns the new bytes and a name for the report. */
const MUTATIONS: Record<string, (m: Buffer) => Buffer> = {
  none: (m) => m,
  truncate: (m) => m.subarray(0, int(1, Math.max(1, m.length - 1))),
  dropSegment: (m) => {
    const s = segmentsOf(m);
    s.splice(int(0, s.length - 1), 1);
    return joinSegments(s);
  },
  duplicateSegment: (m) => {
    const s = segmentsOf(m);
    const i = int(0, s.length - 1);
    s.splice(i, 0, s[i]);
    return joinSegments(s);
  },
  swapSegments: (m) => {
    const s = segmentsOf(m);
    const [i, j] = [int(0, s.length - 1), int(0, s.length - 1)];
    [s[i], s[j]] = [s[j], s[i]];
    return joinSegments(s);
  },
  randomBytesInField: (m) => {
    const s = segmentsOf(m);
    const i = s.length > 1 ? int(1, s.length - 1) : 0;
    const seg = s[i];
    const bars = [...seg.keys()].filter((k) => seg[k] === 0x7c);
    const at = bars.length ? pick(bars) + 1 : seg.length;
    s[i] = Buffer.concat([seg.subarray(0, at), randomBytes(int(1, 24)), seg.subarray(at)]);
    return joinSegments(s);
  },
  flipBytes: (m) => {
    const out = Buffer.from(m);
    for (let k = int(1, 8); k > 0; k--) {
      out[int(0, out.length - 1)] = randomBytes(1)[0];
    }
    return out;
  },
  otherDelimiters: (m) => {
    // A consistent change of all five delimiters (legal HL7): | ^ ~ \ & become others.
    const pool = ['#', '@', '!', '$', '%', '*', '|', '^', '~', '\\', '&', '+'];
    const chosen: string[] = [];
    while (chosen.length < 5) {
      const c = pick(pool);
      if (!chosen.includes(c)) {
        chosen.push(c);
      }
    }
    const map = new Map(['|', '^', '~', '\\', '&'].map((c, i) => [c.charCodeAt(0), chosen[i].charCodeAt(0)]));
    return Buffer.from(m.map((b) => map.get(b) ?? b));
  },
  brokenDelimiters: (m) => {
    const out = Buffer.from(m);
    const bars = [...out.keys()].filter((k) => out[k] === 0x7c);
    for (let k = int(1, 6); k > 0 && bars.length; k--) {
      out[pick(bars)] = pick(['^', '~', '&', '\\', '#']).charCodeAt(0);
    }
    return out;
  },
  hugeField: (m) => {
    const s = segmentsOf(m);
    s.push(Buffer.from(`NTE|1||${'Α'.repeat(int(5_000, 60_000))}`, 'utf8'));
    return joinSegments(s);
  },
  tooLarge: (m) => Buffer.concat([m, Buffer.from(`\rNTE|1||${'x'.repeat(MAX_FRAME + int(1, 50_000))}`, 'latin1')]),
  notUtf8: (m) => {
    // Greek in windows-1253 under an MSH-18 that says UTF-8 or nothing, or invalid UTF-8 sequences.
    const bad = pick([Buffer.from([0xc1, 0xcd, 0xc4, 0xd1, 0xc5, 0xc1, 0xd3]), Buffer.from([0xff, 0xfe, 0xc3, 0x28]), Buffer.from([0xe2, 0x82])]);
    const s = segmentsOf(m);
    const i = s.length > 1 ? int(1, s.length - 1) : 0;
    s[i] = Buffer.concat([s[i], Buffer.from('|'), bad]);
    return joinSegments(s);
  },
  controlChars: (m) => {
    // A C0 control character (not CR, LF, VT or FS) inside a header field: not allowed in a FHIR string.
    const n = pick([3, 4, 9, 10, 12]);
    const text = m.toString('latin1');
    const sep = text.startsWith('MSH') ? text[3] : '|';
    const value = text.split(/[\r\n]/)[0].split(sep)[n - 1] ?? '';
    const at = int(0, value.length);
    return setMsh(m, n, value.slice(0, at) + String.fromCharCode(pick([0x01, 0x06, 0x08, 0x1a, 0x7f])) + value.slice(at));
  },
  utf16Declared: (m) => setMsh(m, 18, 'UNICODE UTF-16'),
  noMessageType: (m) => setMsh(m, 9, ''),
  noControlId: (m) => setMsh(m, 10, ''),
  badVersion: (m) => setMsh(m, 12, pick(['3.0', 'x', '2'])),
  oddControlId: (m) => setMsh(m, 10, pick(['A'.repeat(300), 'ID\\F\\WITH\\S\\ESC', ' spaced id ', 'ΑΒΓ'])),
  badEncodingCharacters: (m) => setMsh(m, 2, pick(['', '^', '^^^^', 'ab1&', '^~\\&^~'])),
  lowercaseMsh: (m) => Buffer.concat([Buffer.from('msh'), m.subarray(3)]),
  junkBeforeMsh: (m) => Buffer.concat([Buffer.from(pick(['\ufeff', 'garbage line\r', '   ', '\r\n'])), m]),
  lineFeeds: (m) => Buffer.from(m.toString('latin1').replace(/\r/g, pick(['\n', '\r\n'])), 'latin1'),
  notHl7: () => randomBytes(int(1, 400)),
};

interface Case {
  index: number;
  description: string;
  /** The bytes to write, in chunks (with short pauses between them). */
  chunks: Buffer[];
  /** The frames the agent will see, in order, each with what its replies must say. */
  frames: { bytes: Buffer; controlId?: string; appAckAfterCa: boolean; tooLarge: boolean }[];
}

function buildCases(): Case[] {
  const bases = [...testdataMessages(), ORU, ORU, ORU];
  const names = Object.keys(MUTATIONS);
  const cases: Case[] = [];
  for (let index = 0; index < CASES; index++) {
    let message = pick(bases);
    const described: string[] = [];
    message = setMsh(message, 10, `FZ${SEED}x${index}`);
    if (chance(0.2)) {
      // Enhanced acknowledgement asked for by the message.
      const [accept, application] = pick([
        ['AL', 'AL'],
        ['AL', 'NE'],
        ['NE', 'AL'],
        ['NE', 'NE'],
      ]);
      message = setMsh(setMsh(message, 15, accept), 16, application);
      described.push(`enhanced ${accept}|${application}`);
    }
    const mutationCount = chance(0.15) ? 0 : int(1, 2);
    for (let k = 0; k < mutationCount; k++) {
      // Some cases fixed whatever the seed: plain messages, and a control character in the header.
      const name = k === 0 && index % 10 === 0 ? 'none' : k === 0 && index === 1 ? 'controlChars' : pick(names);
      message = MUTATIONS[name](message);
      described.push(name);
    }
    if (message.length === 0) {
      message = Buffer.from('x');
    }
    const frames: Case['frames'] = [];
    const chunks: Buffer[] = [];
    const transport = pick(['whole', 'whole', 'split', 'stray', 'emptyFrame', 'cutShort']);
    described.push(transport);
    if (transport === 'stray') {
      chunks.push(Buffer.concat([randomBytes(int(1, 40)), Buffer.from([FS, CR])]));
    } else if (transport === 'emptyFrame') {
      chunks.push(Buffer.from([VT, FS, CR]));
    } else if (transport === 'cutShort') {
      // A frame that never ends: the next start block cuts it short (the agent NAKs it with AR).
      const other = setMsh(pick(bases), 10, `FZ${SEED}x${index}cut`);
      const partial = other.subarray(0, int(0, other.length - 1));
      chunks.push(Buffer.concat([Buffer.from([VT]), partial]));
      frames.push({ bytes: partial, controlId: header(partial).controlId, appAckAfterCa: false, tooLarge: false });
    }
    const whole = frame(message);
    if (transport === 'split') {
      let at = 0;
      for (let parts = int(2, 6); parts > 1 && at < whole.length - 1; parts--) {
        const next = int(at + 1, whole.length - 1);
        chunks.push(whole.subarray(at, next));
        at = next;
      }
      chunks.push(whole.subarray(at));
    } else {
      chunks.push(whole);
    }
    const h = header(message);
    const tooLarge = message.length > MAX_FRAME;
    // Enhanced mode (MSH-15 or MSH-16 a table 0155 value): a CA when MSH-15 is AL/SU (or empty),
    // then the application ACK when MSH-16 is AL (or empty: the endpoint's default AL), or always
    // when no CA went out.
    const application = h.application ?? 'AL';
    frames.push({ bytes: message, controlId: h.controlId, appAckAfterCa: application === 'AL', tooLarge });
    cases.push({ index, description: described.join(' + '), chunks, frames });
  }
  return cases;
}

/** MSA-1 and MSA-2 of a reply, read with the reply's own field separator. */
function readAck(reply: Buffer): { ok: boolean; code?: string; controlId?: string } {
  const text = reply.toString('latin1');
  const sep = text[3];
  if (!text.startsWith('MSH') || sep === undefined) {
    return { ok: false };
  }
  const msa = text.split(/\r/).find((s) => s.startsWith(`MSA${sep}`));
  if (!msa) {
    return { ok: false };
  }
  const fields = msa.split(sep);
  return { ok: true, code: fields[1], controlId: fields[2] ?? '' };
}

const pause = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Waits (bounded) until `predicate` holds; returns whether it did. */
async function until(predicate: () => Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > end) {
      return false;
    }
    await pause(500);
  }
  return true;
}

/** A number from the agent's last heartbeat, e.g. ['spoolDepth']. */
async function agentStat(names: string[]): Promise<number | undefined> {
  const status = (await medplum.get(medplum.fhirUrl('Agent', seeded.agentId, '$status'), { cache: 'no-cache' })) as Parameters;
  let node: ParametersParameter | undefined = status.parameter?.find((p) => p.name === 'stats');
  for (const name of names) {
    node = node?.part?.find((p) => p.name === name);
  }
  return node?.valueInteger;
}

/** Sends one case on `sender` and checks its replies; returns what went wrong (empty: nothing). */
const tally = new Map<string, number>();
const slowest: { ms: number; what: string }[] = [];

async function runCase(sender: MllpSender, c: Case): Promise<string[]> {
  const problems: string[] = [];
  const t0 = Date.now();
  for (const chunk of c.chunks) {
    sender.write(chunk);
    if (c.chunks.length > 1) {
      await pause(int(0, 15));
    }
  }
  for (const f of c.frames) {
    const first = await sender.nextFrame(REPLY_MS);
    if (!first) {
      problems.push(`no reply within ${REPLY_MS} ms${sender.closed ? ' (connection closed)' : ''}`);
      return problems;
    }
    const replies = [first];
    const ack = readAck(first);
    if (ack.code === 'CA' && f.appAckAfterCa) {
      const second = await sender.nextFrame(REPLY_MS);
      if (!second) {
        problems.push(`CA but no application ACK within ${REPLY_MS} ms`);
        return problems;
      }
      replies.push(second);
    }
    for (const [i, reply] of replies.entries()) {
      const r = readAck(reply);
      tally.set(r.code ?? '?', (tally.get(r.code ?? '?') ?? 0) + 1);
      const where = `reply ${i + 1} (${reply.toString('latin1').slice(0, 300).replace(/\r/g, '⏎')})`;
      if (!r.ok || !ACK_CODES.has(r.code ?? '')) {
        problems.push(`${where}: not an ACK with MSA-1 AA/AE/AR/CA`);
      }
      if (i === 1 && r.code === 'CA') {
        problems.push(`${where}: a second CA`);
      }
      if (f.controlId !== undefined && r.controlId !== f.controlId) {
        problems.push(`${where}: MSA-2 ${JSON.stringify(r.controlId)}, MSH-10 was ${f.controlId}`);
      }
      if (f.tooLarge && r.code !== 'AR') {
        problems.push(`${where}: a frame over the limit must get AR`);
      }
    }
  }
  slowest.push({ ms: Date.now() - t0, what: `case ${c.index} [${c.description}]` });
  return problems;
}

describe('fuzzing the MLLP framing and the HL7 handling', () => {
  test(`${CASES} mutated messages (seed ${SEED}): one well-formed ACK each, no crash, no hang`, async () => {
    const cases = buildCases();
    const senders = await Promise.all(Array.from({ length: CONNECTIONS }, () => MllpSender.connect(seeded.port)));
    const failures: string[] = [];
    const started = Date.now();
    let notRun = 0;
    await Promise.all(
      senders.map(async (sender, k) => {
        for (const c of cases.filter((x) => x.index % CONNECTIONS === k)) {
          if (Date.now() - started > BUDGET_MS) {
            notRun++;
            continue;
          }
          const problems = await runCase(sender, c);
          if (problems.length) {
            failures.push(`case ${c.index} [${c.description}]: ${problems.join('; ')}`);
            if (sender.closed) {
              return;
            }
          }
        }
      })
    );
    // Nothing more may come: every reply was accounted for.
    await pause(1500);
    const extra = await Promise.all(senders.map((s) => s.nextFrame(1)));
    senders.forEach((s) => s.destroy());
    const retries = agent.output().split('\n').filter((l) => l.includes('will retry'));
    expect(failures, `seed ${SEED}\n${retries.slice(-5).join('\n')}`).toEqual([]);
    expect(notRun, `seed ${SEED}: cases not run within ${BUDGET_MS} ms\n${retries.slice(-5).join('\n')}`).toBe(0);
    expect(extra.filter(Boolean).map((b) => b?.toString('latin1').slice(0, 200))).toEqual([]);
    slowest.sort((a, b) => b.ms - a.ms);
    console.log(`fuzz: ${CASES} cases in ${Date.now() - started} ms; replies by MSA-1 ${JSON.stringify(Object.fromEntries(tally))}; slowest ${JSON.stringify(slowest.slice(0, 3))}`);

    // Still standing: the agent process, the server, and a good message gets its AA.
    expect(agent.child.exitCode, agent.output().slice(-3000)).toBeNull();
    expect(agent.child.signalCode).toBeNull();
    expect((await fetch(`${server.baseUrl}healthcheck`)).status).toBe(200);
    await waitConnected(medplum, seeded.agentId, 5_000);
    const good = parseAck(await sendOne(seeded.port, setMsh(ORU, 10, `FZ${SEED}good`), 30_000));
    expect(good).toMatchObject({ code: 'AA', controlId: `FZ${SEED}good` });
    // No hang further in: nothing is left in the agent's spool or forwarder (a message the server
    // keeps refusing with a 5xx would be retried for ever, and hold up the messages ordered after it).
    const drained = await until(async () => (await agentStat(['spoolDepth'])) === 0 && (await agentStat(['channels', 'lab-results', 'queued'])) === 0, 30_000);
    expect(drained, `the agent still holds messages; its last retries:\n${agent.output().split('\n').filter((l) => l.includes('will retry')).slice(-3).join('\n')}`).toBe(true);
    expect(agent.output()).not.toMatch(/"level":"error"/);
  }, 170_000);
});
