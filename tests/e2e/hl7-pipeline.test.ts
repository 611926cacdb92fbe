/**
 * The HL7 lab pipeline end to end over real TCP: a sender → the agent (child process, spool on
 * disk) → /ws/agent → the hl7-inbound bot (its own process) → Postgres, and the ACK back.
 */
import type { MedplumClient } from '@medplum/core';
import net from 'node:net';
import type { AuditEvent, Device, DiagnosticReport, Flag, Observation, Parameters, Patient, Practitioner, ServiceRequest, Task } from '@medplum/fhirtypes';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { unique } from '../../server/test/harness.ts';
import type { TestServer } from '../../server/test/harness.ts';
import { frame, MllpSender, parseAck, sendOne, startPipeline, stopPipeline } from './hl7-harness.ts';
import type { AgentProcess, SeededPipeline } from './hl7-harness.ts';

const CY_ID = 'https://ermis.health/fhir/sid/cy-id-card';
const STATUS = 'https://ermis.health/fhir/CodeSystem/hl7-message-status';
const RESULT_SYSTEM = 'https://ermis.health/fhir/sid/lab-result/bioanalytica';

let server: TestServer;
let medplum: MedplumClient;
let seeded: SeededPipeline;
let agent: AgentProcess;

beforeAll(async () => {
  ({ server, medplum, seeded, agent } = await startPipeline());
}, 120_000);

afterAll(() => stopPipeline({ server, agent }));

/** A Bioanalytica ORU (local codes, SI units) for the patient with Cyprus ID `cyId`. */
function oru(controlId: string, cyId: string, filler: string, obx: string[], opts: { msh15?: string; msh16?: string } = {}): string {
  return [
    `MSH|^~\\&|LIS|BIOANALYTICA|ERMIS|CLINIC|20261121101500||ORU^R01^ORU_R01|${controlId}|P|2.5.1|||${opts.msh15 ?? ''}|${opts.msh16 ?? ''}|CYP|UNICODE UTF-8`,
    `PID|1||${cyId}^^^CYMOI^NNCYP||ΓΕΩΡΓΙΟΥ^ΑΝΔΡΕΑΣ||19610412|M`,
    `ORC|RE||${filler}`,
    `OBR|1||${filler}|LIPID^Λιπιδαιμικό προφίλ^L|||20261121083000|||||||||||||||20261121101000|||F`,
    ...obx,
  ].join('\r');
}

async function patientWithCyId(cyId: string, family = 'GEORGIOU', given = 'ANDREAS'): Promise<Patient> {
  return medplum.createResource<Patient>({
    resourceType: 'Patient',
    identifier: [{ system: CY_ID, value: cyId }],
    name: [{ family, given: [given] }],
    birthDate: '1961-04-12',
    gender: 'male',
  });
}

async function logEntries(controlId: string): Promise<AuditEvent[]> {
  return medplum.searchResources('AuditEvent', { 'entity-name:exact': controlId, _count: '50' }, { cache: 'no-cache' });
}

/** ISO 8859-7 (Greek): ASCII as is, Greek letters at their single-byte positions (from the decoder's own table). */
function encodeIso88597(text: string): Buffer {
  const decoder = new TextDecoder('iso-8859-7');
  const table = new Map<string, number>();
  for (let b = 0; b < 256; b++) {
    table.set(decoder.decode(Uint8Array.of(b)), b);
  }
  return Buffer.from([...text].map((ch) => table.get(ch) ?? 0x3f));
}

const statusOf = (e: AuditEvent): string | undefined => e.subtype?.find((c) => c.system === STATUS)?.code;

describe('ORU^R01 through the agent', () => {
  test('results are stored with LOINC from the lab profile, the ACK is the bot\'s AA, and the message is logged', async () => {
    const cyId = unique('cy');
    const patient = await patientWithCyId(cyId);
    const controlId = unique('MSG');
    const filler = unique('F');
    const ack = await sendOne(
      seeded.port,
      oru(controlId, cyId, filler, [
        'OBX|1|NM|CHOL^Ολική χοληστερόλη^L||5.2|mmol/L|<5.2|N|||F|||20261121083000',
        'OBX|2|NM|CREA^Κρεατινίνη^L||88|µmol/L|62-106|N|||F|||20261121083000',
        'NTE|1||Νηστεία 12 ωρών',
      ])
    );
    const parsed = parseAck(ack);
    expect(parsed.code, ack).toBe('AA');
    expect(parsed.controlId).toBe(controlId);

    const observations = await medplum.searchResources('Observation', { subject: `Patient/${patient.id}`, _count: '10' }, { cache: 'no-cache' });
    expect(observations).toHaveLength(2);
    const chol = observations.find((o) => o.code?.coding?.some((c) => c.code === '14647-2')) as Observation;
    expect(chol.valueQuantity).toMatchObject({ value: 5.2, code: 'mmol/L', system: 'http://unitsofmeasure.org' });
    expect(chol.status).toBe('final');
    expect(chol.code?.coding?.some((c) => c.code === 'CHOL')).toBe(true);
    const crea = observations.find((o) => o.code?.coding?.some((c) => c.code === '14682-9')) as Observation;
    expect(crea.valueQuantity?.code).toBe('umol/L'); // µmol/L normalised to UCUM
    expect(crea.referenceRange?.[0]).toMatchObject({ low: { value: 62 }, high: { value: 106 } });
    expect(crea.note?.[0]?.text).toContain('Νηστεία');

    const reports = await medplum.searchResources('DiagnosticReport', { subject: `Patient/${patient.id}` }, { cache: 'no-cache' });
    expect(reports).toHaveLength(1);
    expect((reports[0] as DiagnosticReport).result).toHaveLength(2);
    expect(reports[0].status).toBe('final');

    const log = await logEntries(controlId);
    expect(log.map(statusOf)).toEqual(['processed']);
    expect(log[0].entity?.some((e) => e.what?.reference === `Patient/${patient.id}`)).toBe(true);
    const raw = log[0].entity?.find((e) => e.what?.reference?.startsWith('Binary/'));
    expect(raw?.detail?.find((d) => d.type === 'ack')?.valueString).toContain(`MSA|AA|${controlId}`);
    // Searchable by status, type and patient too.
    const byPatient = await medplum.searchResources('AuditEvent', { entity: `Patient/${patient.id}`, subtype: `${STATUS}|processed` }, { cache: 'no-cache' });
    expect(byPatient.map((e) => e.id)).toContain(log[0].id);
  });

  test('a resend of the same MSH-10 writes nothing and gets the same ACK', async () => {
    const cyId = unique('cy');
    const patient = await patientWithCyId(cyId);
    const controlId = unique('MSG');
    const message = oru(controlId, cyId, unique('F'), ['OBX|1|NM|K^Κάλιο^L||4.1|mmol/L|3.5-5.1|N|||F']);
    const first = await sendOne(seeded.port, message);
    const again = await sendOne(seeded.port, message);
    expect(parseAck(first).code).toBe('AA');
    expect(again).toBe(first);
    const observations = await medplum.searchResources('Observation', { subject: `Patient/${patient.id}` }, { cache: 'no-cache' });
    expect(observations).toHaveLength(1);
    expect((await logEntries(controlId)).map(statusOf).sort()).toEqual(['duplicate', 'processed']);
  });

  test('the same results resent under a new MSH-10 change nothing (no new versions)', async () => {
    const cyId = unique('cy');
    const patient = await patientWithCyId(cyId);
    const filler = unique('F');
    const obx = ['OBX|1|NM|TRIG^Τριγλυκερίδια^L||1.2|mmol/L|<1.7|N|||F|||20261121083000'];
    expect(parseAck(await sendOne(seeded.port, oru(unique('MSG'), cyId, filler, obx))).code).toBe('AA');
    const [before] = await medplum.searchResources('Observation', { subject: `Patient/${patient.id}` }, { cache: 'no-cache' });
    const [reportBefore] = await medplum.searchResources('DiagnosticReport', { subject: `Patient/${patient.id}` }, { cache: 'no-cache' });
    expect(parseAck(await sendOne(seeded.port, oru(unique('MSG'), cyId, filler, obx))).code).toBe('AA');
    const after = await medplum.searchResources('Observation', { subject: `Patient/${patient.id}` }, { cache: 'no-cache' });
    const [reportAfter] = await medplum.searchResources('DiagnosticReport', { subject: `Patient/${patient.id}` }, { cache: 'no-cache' });
    expect(after).toHaveLength(1);
    expect(after[0].meta?.versionId).toBe(before.meta?.versionId);
    expect(reportAfter.meta?.versionId).toBe(reportBefore.meta?.versionId);
  });

  test('a correction (C) replaces the earlier result; a cancellation (X) marks it', async () => {
    const cyId = unique('cy');
    const patient = await patientWithCyId(cyId);
    const filler = unique('F');
    expect(parseAck(await sendOne(seeded.port, oru(unique('MSG'), cyId, filler, ['OBX|1|NM|GLU^Γλυκόζη^L||6.1|mmol/L|3.9-5.5|H|||F']))).code).toBe('AA');
    expect(parseAck(await sendOne(seeded.port, oru(unique('MSG'), cyId, filler, ['OBX|1|NM|GLU^Γλυκόζη^L||5.1|mmol/L|3.9-5.5|N|||C']))).code).toBe('AA');
    let observations = await medplum.searchResources('Observation', { subject: `Patient/${patient.id}` }, { cache: 'no-cache' });
    expect(observations).toHaveLength(1);
    expect(observations[0].status).toBe('corrected');
    expect(observations[0].valueQuantity?.value).toBe(5.1);
    expect(observations[0].meta?.versionId).toBeDefined();
    const history = await medplum.readHistory('Observation', observations[0].id as string);
    expect(history.entry?.length).toBe(2);

    expect(parseAck(await sendOne(seeded.port, oru(unique('MSG'), cyId, filler, ['OBX|1|NM|GLU^Γλυκόζη^L||||||||X']))).code).toBe('AA');
    observations = await medplum.searchResources('Observation', { subject: `Patient/${patient.id}` }, { cache: 'no-cache' });
    expect(observations).toHaveLength(1);
    expect(observations[0].status).toBe('cancelled');
  });

  test('reports in parts keep their earlier results; a late preliminary does not undo a final; a status-only OBX keeps the value', async () => {
    const cyId = unique('cy');
    const patient = await patientWithCyId(cyId);
    const filler = unique('F');
    const send = async (obx: string[]): Promise<void> => {
      expect(parseAck(await sendOne(seeded.port, oru(unique('MSG'), cyId, filler, obx))).code).toBe('AA');
    };
    const observationsByCode = async (): Promise<Map<string, Observation>> =>
      new Map(
        (await medplum.searchResources('Observation', { subject: `Patient/${patient.id}` }, { cache: 'no-cache' })).map((o) => [
          o.code?.coding?.find((c) => c.system !== 'http://loinc.org')?.code as string,
          o,
        ])
      );
    await send(['OBX|1|NM|CHOL^Ολική χοληστερόλη^L||5.0|mmol/L||N|||F']);
    await send(['OBX|1|NM|HDL^HDL^L||1.3|mmol/L||N|||P']);
    let [report] = await medplum.searchResources('DiagnosticReport', { subject: `Patient/${patient.id}` }, { cache: 'no-cache' });
    expect(report.result).toHaveLength(2);
    // The final HDL, then a late copy of the preliminary one.
    await send(['OBX|1|NM|HDL^HDL^L||1.4|mmol/L||N|||F']);
    await send(['OBX|1|NM|HDL^HDL^L||1.3|mmol/L||N|||P']);
    let byCode = await observationsByCode();
    expect(byCode.get('HDL')).toMatchObject({ status: 'final', valueQuantity: { value: 1.4 } });
    // "U": final, value not sent again.
    await send(['OBX|1|NM|CHOL^Ολική χοληστερόλη^L|||mmol/L||N|||U']);
    byCode = await observationsByCode();
    expect(byCode.get('CHOL')?.status).toBe('final');
    expect(byCode.get('CHOL')?.valueQuantity?.value).toBe(5.0);
    expect(byCode.get('CHOL')?.dataAbsentReason).toBeUndefined();
    [report] = await medplum.searchResources('DiagnosticReport', { subject: `Patient/${patient.id}` }, { cache: 'no-cache' });
    expect(report.result).toHaveLength(2);
  });

  test('an unmatched patient: the result is kept, a Task is raised, and the ACK says so (AA with ERR 204 W)', async () => {
    const controlId = unique('MSG');
    const filler = unique('F');
    const ack = await sendOne(seeded.port, oru(controlId, unique('nobody'), filler, ['OBX|1|NM|NA^Νάτριο^L||140|mmol/L|135-145|N|||F']));
    const parsed = parseAck(ack);
    expect(parsed.code, ack).toBe('AA');
    expect(parsed.errors).toHaveLength(1);
    expect(parsed.errors[0][3]).toMatch(/^204\^/);
    expect(parsed.errors[0][4]).toBe('W');
    const observations = await medplum.searchResources('Observation', { identifier: `${RESULT_SYSTEM}|${filler}|NA|` }, { cache: 'no-cache' });
    expect(observations).toHaveLength(1);
    expect(observations[0].subject).toBeUndefined();
    const log = await logEntries(controlId);
    expect(log.map(statusOf)).toEqual(['unmatched']);
    const taskRef = log[0].entity?.map((e) => e.what?.reference).find((r) => r?.startsWith('Task/')) as string;
    const task = await medplum.readReference<Task>({ reference: taskRef });
    expect(task.status).toBe('requested');
    expect(task.code?.coding?.[0]?.code).toBe('match-patient');
  });

  test('a critical value raises a Flag and a Task for the clinician', async () => {
    const cyId = unique('cy');
    const patient = await patientWithCyId(cyId);
    const ack = await sendOne(seeded.port, oru(unique('MSG'), cyId, unique('F'), ['OBX|1|NM|K^Κάλιο^L||7.1|mmol/L|3.5-5.1|HH|||F']));
    expect(parseAck(ack).code).toBe('AA');
    const flags = await medplum.searchResources('Flag', { subject: `Patient/${patient.id}` }, { cache: 'no-cache' });
    expect(flags).toHaveLength(1);
    expect((flags[0] as Flag).code?.text).toMatch(/Critical/);
    const tasks = await medplum.searchResources('Task', { patient: `Patient/${patient.id}` }, { cache: 'no-cache' });
    expect(tasks.map((t) => t.code?.coding?.[0]?.code)).toContain('review-critical-result');
  });

  test('critical follow-ups are made once: a resend adds none, a correction to a normal value ends the Flag', async () => {
    const cyId = unique('cy');
    const patient = await patientWithCyId(cyId);
    const filler = unique('F');
    const critical = ['OBX|1|NM|NA^Νάτριο^L||165|mmol/L|135-145|HH|||F'];
    expect(parseAck(await sendOne(seeded.port, oru(unique('MSG'), cyId, filler, critical))).code).toBe('AA');
    expect(parseAck(await sendOne(seeded.port, oru(unique('MSG'), cyId, filler, critical))).code).toBe('AA');
    const flags = await medplum.searchResources('Flag', { subject: `Patient/${patient.id}` }, { cache: 'no-cache' });
    const tasks = await medplum.searchResources('Task', { patient: `Patient/${patient.id}` }, { cache: 'no-cache' });
    expect(flags).toHaveLength(1);
    expect(tasks).toHaveLength(1);
    expect(parseAck(await sendOne(seeded.port, oru(unique('MSG'), cyId, filler, ['OBX|1|NM|NA^Νάτριο^L||141|mmol/L|135-145|N|||C']))).code).toBe('AA');
    const [flag] = await medplum.searchResources('Flag', { subject: `Patient/${patient.id}` }, { cache: 'no-cache' });
    expect(flag.status).toBe('inactive');
    expect(flag.period?.end).toBeDefined();
  });

  test('a control ID reused by the sender for a different message is refused (AE 205), not taken for a duplicate', async () => {
    const cyId = unique('cy');
    const patient = await patientWithCyId(cyId);
    const controlId = unique('MSG');
    expect(parseAck(await sendOne(seeded.port, oru(controlId, cyId, unique('F'), ['OBX|1|NM|K^Κάλιο^L||4.2|mmol/L||N|||F']))).code).toBe('AA');
    const other = await sendOne(seeded.port, oru(controlId, cyId, unique('F'), ['OBX|1|NM|K^Κάλιο^L||3.9|mmol/L||N|||F']));
    expect(parseAck(other).code, other).toBe('AE');
    expect(parseAck(other).errors[0][3]).toMatch(/^205\^/);
    expect(await medplum.searchResources('Observation', { subject: `Patient/${patient.id}` }, { cache: 'no-cache' })).toHaveLength(1);
  });

  test('a report answers its order (placer number): basedOn is set and a critical value goes to the ordering practitioner', async () => {
    const cyId = unique('cy');
    const patient = await patientWithCyId(cyId);
    const practitioner = await medplum.createResource<Practitioner>({ resourceType: 'Practitioner', name: [{ family: 'Charalambous', given: ['Maria'] }] });
    const placer = unique('ORD');
    const order = await medplum.createResource<ServiceRequest>({
      resourceType: 'ServiceRequest',
      status: 'active',
      intent: 'order',
      subject: { reference: `Patient/${patient.id}` },
      requester: { reference: `Practitioner/${practitioner.id}` },
      identifier: [{ system: 'https://ermis.health/fhir/sid/placer-order', value: placer }],
      code: { text: 'Troponin' },
    });
    const filler = unique('F');
    const message = oru(unique('MSG'), cyId, filler, ['OBX|1|NM|TNIHS^Τροπονίνη Ι υψηλής ευαισθησίας^L||180|ng/L|<34|H|||F']).replace(`ORC|RE||${filler}`, `ORC|RE|${placer}|${filler}`);
    expect(parseAck(await sendOne(seeded.port, message)).code).toBe('AA');
    const [observation] = await medplum.searchResources('Observation', { subject: `Patient/${patient.id}` }, { cache: 'no-cache' });
    expect(observation.code?.coding?.some((c) => c.code === '89579-7')).toBe(true);
    expect(observation.basedOn?.[0]?.reference).toBe(`ServiceRequest/${order.id}`);
    // 180 ng/L is above the profile's critical limit (52 ng/L) although the lab flagged only H.
    const communications = await medplum.searchResources('Communication', { recipient: `Practitioner/${practitioner.id}` }, { cache: 'no-cache' });
    expect(communications).toHaveLength(1);
    expect(communications[0].about?.[0]?.reference).toBe(`Observation/${observation.id}`);
    expect(communications[0].priority).toBe('stat');
  });

  test('ISO 8859-7 bytes (MSH-18 8859/7) are read as Greek, and the ACK goes back in the same charset', async () => {
    const cyId = unique('cy');
    const patient = await patientWithCyId(cyId);
    const controlId = unique('MSG');
    const text = oru(controlId, cyId, unique('F'), ['OBX|1|NM|UREA^Ουρία^L||5.5|mmol/L|2.5-7.1|N|||F', 'NTE|1||Δείγμα αιμολυμένο']).replace('|CYP|UNICODE UTF-8', '|CYP|8859/7');
    const encoded = encodeIso88597(text);
    expect(encoded.length).toBeLessThan(Buffer.byteLength(text, 'utf8')); // one byte per Greek letter
    const sender = await MllpSender.connect(seeded.port);
    try {
      sender.write(frame(encoded));
      const reply = await sender.nextFrame();
      expect(reply).toBeDefined();
      const decoded = new TextDecoder('iso-8859-7').decode(reply);
      expect(parseAck(decoded)).toMatchObject({ code: 'AA', controlId });
      expect(decoded).toContain('8859/7');
    } finally {
      sender.destroy();
    }
    const [observation] = await medplum.searchResources('Observation', { subject: `Patient/${patient.id}` }, { cache: 'no-cache' });
    expect(observation.note?.[0]?.text).toBe('Δείγμα αιμολυμένο');
    expect(observation.code?.coding?.find((c) => c.code === 'UREA')?.display).toBe('Ουρία');
  });

  test('an unusable message gets AE naming segment and field, and leaves no data', async () => {
    const cyId = unique('cy');
    const patient = await patientWithCyId(cyId);
    const controlId = unique('MSG');
    const ack = await sendOne(seeded.port, oru(controlId, cyId, unique('F'), ['OBX|1|NM|K^Κάλιο^L||4.0|mmol/L||N|||F', 'OBX|2|NM|NA^Νάτριο^L||high|mmol/L||N|||F']));
    const parsed = parseAck(ack);
    expect(parsed.code, ack).toBe('AE');
    expect(parsed.errors[0][2]).toBe('OBX^2^5');
    expect(parsed.errors[0][3]).toMatch(/^102\^/);
    expect(await medplum.searchResources('Observation', { subject: `Patient/${patient.id}` }, { cache: 'no-cache' })).toHaveLength(0);
    expect((await logEntries(controlId)).map(statusOf)).toEqual(['failed']);
  });

  test('an unsupported message type is rejected with AR 200; bytes that are not HL7 get an AR from the agent', async () => {
    const controlId = unique('MSG');
    const ack = await sendOne(seeded.port, `MSH|^~\\&|LIS|BIOANALYTICA|ERMIS|CLINIC|20261121101500||ORM^O01|${controlId}|P|2.5.1\rPID|1||1`);
    expect(parseAck(ack).code).toBe('AR');
    expect(parseAck(ack).errors[0][3]).toMatch(/^200\^/);
    const garbage = await sendOne(seeded.port, 'hello, this is not HL7');
    expect(parseAck(garbage).code).toBe('AR');
    // Two messages in one frame: the parser would take both as one; the agent refuses it.
    const twoId = unique('MSG');
    const two = await sendOne(seeded.port, `MSH|^~\\&|LIS|BIOANALYTICA|ERMIS|CLINIC|20261121101500||ORU^R01|${twoId}|P|2.5.1\rPID|1||1\rMSH|^~\\&|LIS|BIOANALYTICA|ERMIS|CLINIC|20261121101500||ORU^R01|${twoId}-2|P|2.5.1`);
    expect(parseAck(two)).toMatchObject({ code: 'AR', controlId: twoId });
    expect(two).toContain('More than one MSH');
    expect(await logEntries(twoId)).toHaveLength(0);
  });

  test('enhanced mode: a commit ACK (CA) once spooled, then the application ACK', async () => {
    const cyId = unique('cy');
    await patientWithCyId(cyId);
    const controlId = unique('MSG');
    const sender = await MllpSender.connect(seeded.port);
    try {
      const commit = await sender.send(oru(controlId, cyId, unique('F'), ['OBX|1|NM|K^Κάλιο^L||4.4|mmol/L||N|||F'], { msh15: 'AL', msh16: 'AL' }));
      expect(parseAck(commit)).toMatchObject({ code: 'CA', controlId });
      const application = await sender.next();
      expect(parseAck(application)).toMatchObject({ code: 'AA', controlId });
    } finally {
      sender.destroy();
    }
  });

  test('ADT: A01 creates the patient with Greek names intact, A08 updates it, A40 merges', async () => {
    const cyId = unique('cy');
    const adt = (event: string, controlId: string, pid: string, extra: string[] = []): string =>
      [`MSH|^~\\&|HIS|CLINIC|ERMIS|CLINIC|20261121101500||ADT^${event}^ADT_A01|${controlId}|P|2.5.1|||||CYP|UNICODE UTF-8`, `EVN|${event}|20261121101500`, pid, ...extra].join('\r');
    expect(parseAck(await sendOne(seeded.port, adt('A01', unique('ADT'), `PID|1||${cyId}^^^CYMOI^NNCYP||ΠΑΠΑΔΟΠΟΥΛΟΥ^ΕΛΕΝΗ||19750301|F|||Λεωφόρος Μακαρίου 10^^Λευκωσία^^1065^CY`))).code).toBe('AA');
    let found = await medplum.searchResources('Patient', { identifier: `${CY_ID}|${cyId}` }, { cache: 'no-cache' });
    expect(found).toHaveLength(1);
    expect(found[0].name?.[0]).toMatchObject({ family: 'ΠΑΠΑΔΟΠΟΥΛΟΥ', given: ['ΕΛΕΝΗ'] });
    expect(found[0].address?.[0]?.city).toBe('Λευκωσία');
    expect(parseAck(await sendOne(seeded.port, adt('A08', unique('ADT'), `PID|1||${cyId}^^^CYMOI^NNCYP||ΠΑΠΑΔΟΠΟΥΛΟΥ^ΕΛΕΝΗ||19750301|F|||^^Λεμεσός^^3036^CY||99123456`))).code).toBe('AA');
    found = await medplum.searchResources('Patient', { identifier: `${CY_ID}|${cyId}` }, { cache: 'no-cache' });
    expect(found).toHaveLength(1);
    expect(found[0].address?.[0]?.city).toBe('Λεμεσός');

    const older = unique('cy');
    expect(parseAck(await sendOne(seeded.port, adt('A04', unique('ADT'), `PID|1||${older}^^^CYMOI^NNCYP||PAPADOPOULOU^ELENI||19750301|F`))).code).toBe('AA');
    const merge = await sendOne(seeded.port, adt('A40', unique('ADT'), `PID|1||${cyId}^^^CYMOI^NNCYP||ΠΑΠΑΔΟΠΟΥΛΟΥ^ΕΛΕΝΗ||19750301|F`, [`MRG|${older}^^^CYMOI^NNCYP`]));
    expect(parseAck(merge).code, merge).toBe('AA');
    const [retired] = await medplum.searchResources('Patient', { identifier: `${CY_ID}|${older}` }, { cache: 'no-cache' });
    const [survivor] = await medplum.searchResources('Patient', { identifier: `${CY_ID}|${cyId}` }, { cache: 'no-cache' });
    expect(retired.active).toBe(false);
    expect(retired.link?.[0]).toMatchObject({ type: 'replaced-by', other: { reference: `Patient/${survivor.id}` } });
    expect(survivor.link?.[0]).toMatchObject({ type: 'replaces', other: { reference: `Patient/${retired.id}` } });
  });

  test('an unmatched message is reprocessed once the patient exists: matched, its Task closed, the first entry marked reprocessed', async () => {
    const cyId = unique('cy');
    const controlId = unique('MSG');
    const filler = unique('F');
    expect(parseAck(await sendOne(seeded.port, oru(controlId, cyId, filler, ['OBX|1|NM|HDL^HDL^L||1.4|mmol/L|>1.0|N|||F']))).code).toBe('AA');
    const [first] = await logEntries(controlId);
    expect(statusOf(first)).toBe('unmatched');
    // A processed message cannot be reprocessed (it would be a duplicate); this one can.
    const patient = await patientWithCyId(cyId);
    const ack = (await medplum.post(medplum.fhirUrl('AuditEvent', first.id as string, '$reprocess'), {})) as string;
    expect(parseAck(String(ack)).code).toBe('AA');
    const observations = await medplum.searchResources('Observation', { identifier: `${RESULT_SYSTEM}|${filler}|HDL|` }, { cache: 'no-cache' });
    expect(observations).toHaveLength(1);
    expect(observations[0].subject?.reference).toBe(`Patient/${patient.id}`);
    const entries = await logEntries(controlId);
    expect(entries.map(statusOf).sort()).toEqual(['processed', 'reprocessed']);
    const taskRef = first.entity?.map((e) => e.what?.reference).find((r) => r?.startsWith('Task/')) as string;
    expect((await medplum.readReference<Task>({ reference: taskRef }, { cache: 'no-cache' })).status).toBe('completed');
    const processed = entries.find((e) => statusOf(e) === 'processed') as AuditEvent;
    await expect(medplum.post(medplum.fhirUrl('AuditEvent', processed.id as string, '$reprocess'), {})).rejects.toThrow(/Only failed or unmatched/);
  });

  test('Agent/$push sends a message to a Device through the agent and returns its ACK; the exchange is logged', async () => {
    const received: string[] = [];
    const lis = net.createServer((socket) => {
      let buffer = Buffer.alloc(0);
      socket.on('data', (chunk: Buffer) => {
        buffer = Buffer.concat([buffer, chunk]);
        const end = buffer.indexOf(0x1c);
        if (end > 0) {
          const text = buffer.subarray(1, end).toString('utf8');
          buffer = buffer.subarray(end + 2);
          received.push(text);
          const controlId = text.split('\r')[0].split('|')[9];
          socket.write(frame(`MSH|^~\\&|LIS|LAB|ERMIS|CLINIC|20261121||ACK^O01^ACK|A1|P|2.5.1\rMSA|AA|${controlId}`));
        }
      });
    });
    await new Promise<void>((r) => lis.listen(0, '127.0.0.1', r));
    try {
      const port = (lis.address() as net.AddressInfo).port;
      const device = await medplum.createResource<Device>({ resourceType: 'Device', url: `mllp://127.0.0.1:${port}` });
      const controlId = unique('ORM');
      const message = `MSH|^~\\&|ERMIS|CLINIC|LIS|LAB|20261121101500||ORM^O01|${controlId}|P|2.5.1\rPID|1||123`;
      const answer = await medplum.pushToAgent({ reference: `Agent/${seeded.agentId}` }, `Device/${device.id}`, message, 'x-application/hl7-v2+er7', true);
      expect(String(answer)).toContain(`MSA|AA|${controlId}`);
      expect(received).toHaveLength(1);
      expect(received[0]).toContain(controlId);
      const log = await logEntries(controlId);
      expect(log.map(statusOf)).toEqual(['sent']);
      expect(log[0].type?.code).toBe('110106');
      // A destination nobody listens on: the push fails (and is logged failed), nothing hangs.
      const dead = await medplum.createResource<Device>({ resourceType: 'Device', url: 'mllp://127.0.0.1:9' });
      await expect(medplum.pushToAgent({ reference: `Agent/${seeded.agentId}` }, `Device/${dead.id}`, message, 'x-application/hl7-v2+er7', true)).rejects.toThrow();
      // One that takes the message and never answers: 408 after waitTimeout, and the message went
      // out once (a 5xx would make MedplumClient send it again).
      const silentReceived: string[] = [];
      const silent = net.createServer((socket) => socket.on('data', (d: Buffer) => silentReceived.push(d.toString('utf8'))));
      await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
      try {
        const mute = await medplum.createResource<Device>({ resourceType: 'Device', url: `mllp://127.0.0.1:${(silent.address() as net.AddressInfo).port}` });
        const silentId = unique('ORM');
        const started = Date.now();
        await expect(
          medplum.pushToAgent({ reference: `Agent/${seeded.agentId}` }, `Device/${mute.id}`, message.replace(controlId, silentId), 'x-application/hl7-v2+er7', true, { waitTimeout: 2000 })
        ).rejects.toThrow(/No answer from the agent/);
        expect(Date.now() - started).toBeLessThan(8000);
        await new Promise((r) => setTimeout(r, 500));
        expect(silentReceived.join('').split(silentId).length - 1).toBe(1);
      } finally {
        silent.close();
      }
    } finally {
      lis.close();
    }
  });

  test('Agent/$status reports the connection and the channel counters', async () => {
    await new Promise((r) => setTimeout(r, 1500)); // a heartbeat carries the counters
    const status = (await medplum.get(medplum.fhirUrl('Agent', seeded.agentId, '$status'), { cache: 'no-cache' })) as Parameters;
    expect(status.parameter?.find((p) => p.name === 'status')?.valueCode).toBe('connected');
    const stats = status.parameter?.find((p) => p.name === 'stats');
    const channel = stats?.part?.find((p) => p.name === 'channels')?.part?.find((p) => p.name === 'lab-results');
    const received = channel?.part?.find((p) => p.name === 'received')?.valueInteger ?? 0;
    expect(received).toBeGreaterThan(5);
    expect(agent.output()).not.toMatch(/ΓΕΩΡΓΙΟΥ|ΠΑΠΑΔΟΠΟΥΛΟΥ/); // no PHI in the logs
  });
});
