/**
 * Replays every HL7 v2 message of ../shared/testdata (CDC ReportStream's v2-to-FHIR pairs, the
 * LinuxForHealth converter's messages, the ReportStream batch files split into messages) through
 * the agent over real TCP, one by one, and checks for each:
 * - the ACK answers that message (MSA-2 = its MSH-10) with the code its content calls for: AA for
 *   a mappable ORU or a supported ADT event, AE with the mapping's first ERR for an unusable one,
 *   AR 201 for unsupported events; a repeated control ID from the same sender gets the first ACK;
 * - what the bot stored is what the mapping library makes of the message: one Observation per
 *   mapped result, with the same code, value, status and interpretation (the mapping itself is
 *   checked against the expected FHIR of each pair in bots/lib/hl7/oru-corpus.test.ts).
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { Hl7Message } from '@medplum/core';
import type { MedplumClient } from '@medplum/core';
import type { AuditEvent, Observation } from '@medplum/fhirtypes';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { emptyLabProfile, labProfileKeyFromMessage } from '../../bots/lib/hl7/lab-profile.ts';
import { mapOru } from '../../bots/lib/hl7/oru.ts';
import { DEFAULT_IDENTITY, patientFromPid } from '../../bots/lib/hl7/pid.ts';
import { escapeSearchValue } from '../../bots/hl7-inbound/src/message-log.ts';
import { unknownLabKey } from '../../bots/hl7-inbound/src/oru.ts';
import type { TestServer } from '../../server/test/harness.ts';
import { MllpSender, parseAck, startPipeline, stopPipeline, TESTDATA } from './hl7-harness.ts';
import type { AgentProcess, SeededPipeline } from './hl7-harness.ts';

const STATUS = 'https://ermis.health/fhir/CodeSystem/hl7-message-status';
const SUPPORTED_ADT = new Set(['A01', 'A04', 'A08', 'A28', 'A31', 'A40']);

let server: TestServer;
let medplum: MedplumClient;
let seeded: SeededPipeline;
let agent: AgentProcess;

beforeAll(async () => {
  ({ server, medplum, seeded, agent } = await startPipeline());
}, 120_000);

afterAll(() => stopPipeline({ server, agent }));

function hl7Files(dir: string): string[] {
  return readdirSync(dir)
    .flatMap((name) => {
      const full = path.join(dir, name);
      return statSync(full).isDirectory() ? hl7Files(full) : name.endsWith('.hl7') ? [full] : [];
    })
    .sort();
}

/** The messages of a file: one, or several in a batch (FHS/BHS … BTS/FTS envelopes dropped). */
function messagesOf(file: string): string[] {
  const segments = readFileSync(file, 'utf8').split(/\r\n|\r|\n/).filter((s) => s.trim() !== '');
  const messages: string[][] = [];
  for (const segment of segments) {
    if (/^(FHS|BHS|BTS|FTS)\|/.test(segment)) {
      continue;
    }
    if (segment.startsWith('MSH') || messages.length === 0) {
      messages.push([]);
    }
    messages[messages.length - 1].push(segment);
  }
  return messages.map((m) => m.join('\r'));
}

const corpus = hl7Files(TESTDATA).flatMap((file) => messagesOf(file).map((text, i) => ({ name: `${path.relative(TESTDATA, file)}#${i + 1}`, text })));

test('the corpus is what this test expects to replay', () => {
  expect(corpus.length).toBeGreaterThanOrEqual(89);
});

test('every message of the corpus gets the right ACK, and what is stored is what the mapping makes', async () => {
  const sender = await MllpSender.connect(seeded.port);
  const firstAck = new Map<string, { ack: string; body: string }>();
  const outcomes: Record<string, number> = {};
  try {
    for (const { name, text } of corpus) {
      const msg = Hl7Message.parse(text);
      const msh = msg.getSegment('MSH');
      const controlId = msh?.getField(10)?.toString() ?? '';
      const code = msh?.getComponent(9, 1) ?? '';
      const trigger = msh?.getComponent(9, 2) ?? '';
      const { application, facility } = labProfileKeyFromMessage(msg);
      const key = `${application}|${facility}|${controlId}`;

      const ack = await exchange(sender, msh?.getField(15)?.toString() ?? '', msh?.getField(16)?.toString() ?? '', text, controlId, `${application}|${facility}`);
      const parsed = parseAck(ack);
      expect(parsed.controlId, `${name}: ${ack}`).toBe(controlId);
      outcomes[parsed.code ?? '?'] = (outcomes[parsed.code ?? '?'] ?? 0) + 1;
      if (!controlId) {
        // Without MSH-10 nothing can be deduplicated or answered for sure: the agent rejects it.
        expect(parsed.code, `${name}: ${ack}`).toBe('AR');
        expect(ack, name).toContain('MSH-10');
        continue;
      }
      const earlier = firstAck.get(key);
      // Same sender and control ID after one was taken in: the same message again gets the first
      // ACK. After a failure nothing was taken in, so the next one is handled afresh.
      if (earlier && parseAck(earlier.ack).code === 'AA') {
        if (earlier.body === bodyOf(text)) {
          expect(ack, `${name}: a repeated message gets the first ACK`).toBe(earlier.ack);
        } else {
          // The corpus reuses control IDs for different content: refused, never taken as a duplicate.
          expect(parsed.code, `${name}: ${ack}`).toBe('AE');
          expect(parsed.errors[0]?.[3], name).toMatch(/^205\^/);
        }
        continue;
      }
      firstAck.set(key, { ack: ack as string, body: bodyOf(text) });

      if (code === 'ORU' && trigger === 'R01') {
        const mapped = mapOru(msg, emptyLabProfile(unknownLabKey(facility || application)));
        if (!mapped.ok) {
          expect(parsed.code, `${name}: ${ack}`).toBe('AE');
          expect(parsed.errors[0]?.[3]?.split('^')[0], `${name}: ${ack}`).toBe(mapped.issues[0].code);
          continue;
        }
        // A malformed PID (a bad birth date, say) is an AE too; a missing PID-3 only leaves the patient unmatched.
        const pidErrors = msg.getAllSegments('PID').flatMap((pid, i) => patientFromPid(pid, DEFAULT_IDENTITY, { sequence: i + 1 }).issues.filter((x) => x.severity === 'E' && !(x.field === 3 && x.code === '101')));
        if (pidErrors.length) {
          expect(parsed.code, `${name}: ${ack}`).toBe('AE');
          expect(parsed.errors[0]?.[2], `${name}: ${ack}`).toMatch(/^PID\^/);
          continue;
        }
        expect(parsed.code, `${name}: ${ack}`).toBe('AA');
        const [entry] = await medplum.searchResources(
          'AuditEvent',
          { 'entity-name:exact': escapeSearchValue(controlId), 'agent-name:exact': escapeSearchValue(`${application}|${facility}`), subtype: `${STATUS}|processed,${STATUS}|unmatched`, _count: '1' },
          { cache: 'no-cache' }
        );
        expect(entry, name).toBeDefined();
        const stored = await storedObservations(entry);
        const expected = mapped.mapping.reports.flatMap((r) => r.results.map((x) => x.observation));
        expect(stored.length, name).toBe(expected.length);
        for (const observation of expected) {
          const twin = stored.find((s) => JSON.stringify(s.code) === JSON.stringify(observation.code) && s.identifier?.[0]?.value === observation.identifier?.[0]?.value);
          expect(twin, `${name}: ${JSON.stringify(observation.code)}`).toBeDefined();
          expect(clinical(twin as Observation), name).toEqual(clinical(observation));
        }
      } else if (code === 'ADT') {
        expect(parsed.code ?? '', `${name}: ${ack}`).toMatch(SUPPORTED_ADT.has(trigger) ? /^A[AE]$/ : /^AR$/);
        if (!SUPPORTED_ADT.has(trigger)) {
          expect(parsed.errors[0]?.[3] ?? '', `${name}: ${ack}`).toMatch(/^201\^/);
        }
      } else {
        expect(parsed.code, `${name}: ${ack}`).toBe('AR');
      }
    }
  } finally {
    sender.destroy();
  }
  // Many CDC files are fragments (no OBR-3, no OBR-4) and are refused on purpose, and many reuse
  // one control ID for different content (AE 205); still, a mapping that rejected everything must
  // not pass quietly. (27 AA, 62 AE, 19 AR at the time of writing.)
  expect(outcomes.AA ?? 0, JSON.stringify(outcomes)).toBeGreaterThanOrEqual(20);
}, 300_000);

/**
 * Sends a message and returns its application ACK. In enhanced mode (MSH-15/16 valued) the commit
 * ACK comes first; the application ACK follows when MSH-16 asks for it, else it is read from the
 * message log once the bot has handled the message.
 */
async function exchange(sender: MllpSender, msh15: string, msh16: string, text: string, controlId: string, senderKey: string): Promise<string | undefined> {
  if ((!msh15 && !msh16) || !controlId) {
    return sender.send(text);
  }
  // An application ACK may follow after this function returns: a connection of its own.
  const own = await MllpSender.connect(seeded.port);
  try {
    return await enhancedExchange(own, msh15, msh16, text, controlId, senderKey);
  } finally {
    own.destroy();
  }
}

async function enhancedExchange(sender: MllpSender, msh15: string, msh16: string, text: string, controlId: string, senderKey: string): Promise<string | undefined> {
  const first = await sender.send(text);
  const accept = msh15 || 'AL';
  const application = msh16 || 'AL';
  if (accept === 'AL' || accept === 'SU') {
    expect(parseAck(first).code, first).toBe('CA');
  } else if (application === 'NE') {
    return first; // NE|NE: the one answer ermis still sends is the application ACK
  }
  if (application === 'AL') {
    return accept === 'AL' || accept === 'SU' ? sender.next() : first;
  }
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    const [entry] = await medplum.searchResources(
      'AuditEvent',
      { 'entity-name:exact': escapeSearchValue(controlId), 'agent-name:exact': escapeSearchValue(senderKey), _sort: '-date', _count: '1' },
      { cache: 'no-cache' }
    );
    const logged = entry?.entity?.find((e) => e.what?.reference?.startsWith('Binary/'))?.detail?.find((d) => d.type === 'ack')?.valueString;
    if (logged) {
      return logged;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return undefined;
}

/** A message without its MSH (what a resend keeps; MSH-7 may change). */
function bodyOf(text: string): string {
  return text.split('\r').slice(1).join('\r');
}

async function storedObservations(entry: AuditEvent): Promise<Observation[]> {
  const refs = (entry.entity ?? []).map((e) => e.what?.reference).filter((r): r is string => !!r?.startsWith('Observation/'));
  return Promise.all(refs.map((reference) => medplum.readReference<Observation>({ reference })));
}

/** The fields a clinician relies on (lab-domain: code, value, unit, comparator, range, interpretation, status, time). */
function clinical(o: Observation): unknown {
  const { valueQuantity, valueString, valueCodeableConcept, valueRange, valueRatio, valueDateTime, valueTime, valueInteger } = o;
  return {
    status: o.status,
    value: valueQuantity ?? valueString ?? valueCodeableConcept ?? valueRange ?? valueRatio ?? valueDateTime ?? valueTime ?? valueInteger,
    interpretation: o.interpretation,
    referenceRange: o.referenceRange,
    effective: o.effectiveDateTime ?? o.effectivePeriod,
    dataAbsentReason: o.dataAbsentReason,
  };
}
