import { ContentType, Hl7Message } from '@medplum/core';
import type { BotEvent } from '@medplum/core';
import { MockClient } from '@medplum/mock';
import type { Communication, Observation, Patient } from '@medplum/fhirtypes';
import { beforeEach, describe, expect, test } from 'vitest';
import { handler, parseCsv, summarizeCsv } from './index.ts';
import type { CommunicationResult, CsvSummary } from './index.ts';

let medplum: MockClient;
/** MockClient comes with sample Communications; the tests count the ones the bot adds. */
let before: number;

beforeEach(async () => {
  medplum = new MockClient();
  before = (await allCommunications()).length;
});

function event(contentType: string, input: unknown, headers?: Record<string, string>): BotEvent {
  return { bot: { reference: 'Bot/echo-test' }, contentType, input, secrets: {}, headers };
}

async function allCommunications(): Promise<Communication[]> {
  return medplum.searchResources('Communication', { _count: '1000' });
}

/** The Communications written since the test began. */
async function added(): Promise<number> {
  return (await allCommunications()).length - before;
}

const ORU = [
  'MSH|^~\\&|LIS|LAB|ERMIS|CLINIC|20240102030405||ORU^R01^ORU_R01|MSG-00042|P|2.5.1',
  'PID|1||123^^^LAB^MR||Papadopoulos^Eleni',
  'OBR|1||ORD-7|2345-7^Glucose^LN',
  'OBX|1|NM|2345-7^Glucose^LN||5.4|mmol/L|3.9-5.5|N|||F',
].join('\r');

describe('HL7 v2', () => {
  test('an ORU is acknowledged: ACK addressed back to the sender, MSA|AA with its control id', async () => {
    const ack = await handler(medplum, event(ContentType.HL7_V2, Hl7Message.parse(ORU)));
    expect(ack).toBeInstanceOf(Hl7Message);
    const message = ack as Hl7Message;
    const msh = message.getSegment('MSH');
    expect(msh?.getComponent(9, 1)).toBe('ACK');
    // sender and receiver swapped
    expect(msh?.getField(3)?.toString()).toBe('ERMIS');
    expect(msh?.getField(5)?.toString()).toBe('LIS');
    expect(message.getSegment('MSA')?.toString()).toMatch(/^MSA\|AA\|MSG-00042(\||$)/);
    expect(message.getSegment('ERR')).toBeUndefined();
    expect(await added()).toBe(0);
  });

  test('an HL7 message given as text (not parsed by the runtime) is parsed and acknowledged', async () => {
    const ack = (await handler(medplum, event(ContentType.HL7_V2, ORU))) as Hl7Message;
    expect(ack.getSegment('MSA')?.getField(1)?.toString()).toBe('AA');
    expect(ack.getSegment('MSA')?.getField(2)?.toString()).toBe('MSG-00042');
  });

  test('another message type is rejected with MSA|AR and an ERR segment naming the type', async () => {
    const adt = 'MSH|^~\\&|PAS|CLINIC|ERMIS|CLINIC|20240102030405||ADT^A01|ADT-9|P|2.5.1\rPID|1||123';
    const ack = (await handler(medplum, event(ContentType.HL7_V2, Hl7Message.parse(adt)))) as Hl7Message;
    expect(ack).toBeInstanceOf(Hl7Message);
    expect(ack.getSegment('MSA')?.toString()).toMatch(/^MSA\|AR\|ADT-9(\||$)/);
    expect(ack.getSegment('ERR')?.toString()).toContain('Unsupported message type ADT');
  });

  test('text that is not HL7 fails', async () => {
    await expect(handler(medplum, event(ContentType.HL7_V2, 'hello'))).rejects.toThrow('Invalid HL7 message');
  });
});

describe('CSV', () => {
  test('header, rows and numeric columns are summarized', async () => {
    const csv = 'code,display,value,unit\n2345-7,Glucose,5.4,mmol/L\n2160-0,Creatinine,88,umol/L\n718-7,Hemoglobin,13.5,g/dL\n';
    const summary = (await handler(medplum, event('text/csv', csv))) as CsvSummary;
    expect(summary).toEqual({
      columns: ['code', 'display', 'value', 'unit'],
      rowCount: 3,
      invalidRows: [],
      numeric: { value: { count: 3, min: 5.4, max: 88, mean: expect.closeTo(35.633, 3) } },
    });
    expect(await added()).toBe(0);
  });

  test('quoted fields keep their commas, quotes and line breaks; CRLF and blank lines are handled', () => {
    expect(parseCsv('a,b\r\n"x, y","say ""hi"""\r\n\r\n"two\nlines",3')).toEqual([
      ['a', 'b'],
      ['x, y', 'say "hi"'],
      ['two\nlines', '3'],
    ]);
    expect(parseCsv('a,,c')).toEqual([['a', '', 'c']]);
    expect(parseCsv('')).toEqual([]);
  });

  test('rows with the wrong number of fields are reported, not counted in the numbers', () => {
    const summary = summarizeCsv('\uFEFFname,score\nann,10\nbob\ncy,20,extra\ndee,30\n');
    expect(summary.columns).toEqual(['name', 'score']);
    expect(summary.rowCount).toBe(4);
    expect(summary.invalidRows).toEqual([2, 3]);
    expect(summary.numeric).toEqual({ score: { count: 2, min: 10, max: 30, mean: 20 } });
  });

  test('a column with any non-number is not numeric; empty input has no columns', () => {
    expect(summarizeCsv('id,v\n1,5\n2,n/a\n3,\n').numeric).toEqual({ id: { count: 3, min: 1, max: 3, mean: 2 } });
    expect(summarizeCsv('')).toEqual({ columns: [], rowCount: 0, invalidRows: [], numeric: {} });
  });

  test('an unterminated quote fails', async () => {
    await expect(handler(medplum, event('text/csv', 'a,b\n"open,1\n'))).rejects.toThrow('inside a quoted field');
  });
});

describe('FHIR resources (subscription triggers)', () => {
  test('a Patient: a Communication with the patient as subject and about; its id is returned', async () => {
    const patient = await medplum.createResource<Patient>({ resourceType: 'Patient', name: [{ family: 'Georgiou' }] });
    const result = (await handler(
      medplum,
      event(ContentType.FHIR_JSON, patient, { 'X-Medplum-Subscription': 'sub-1', 'X-Medplum-Interaction': 'create' })
    )) as CommunicationResult;
    expect(result).toEqual({ communication: expect.any(String), about: `Patient/${patient.id}`, interaction: 'create' });
    const communication = await medplum.readResource('Communication', result.communication);
    expect(communication).toMatchObject({
      status: 'completed',
      subject: { reference: `Patient/${patient.id}` },
      about: [{ reference: `Patient/${patient.id}` }],
      payload: [{ contentString: `create Patient/${patient.id}` }],
    });
    expect(Date.parse(communication.sent as string)).not.toBeNaN();
  });

  test('another resource type: about it, without a subject; interaction from lower-case headers, else "execute"', async () => {
    const observation = await medplum.createResource<Observation>({ resourceType: 'Observation', status: 'final', code: { text: 'Glucose' } });
    const updated = (await handler(medplum, event(ContentType.FHIR_JSON, observation, { 'x-medplum-interaction': 'update' }))) as CommunicationResult;
    expect(updated.interaction).toBe('update');
    const communication = await medplum.readResource('Communication', updated.communication);
    expect(communication.subject).toBeUndefined();
    expect(communication.about).toEqual([{ reference: `Observation/${observation.id}` }]);

    // a resource posted to $execute as JSON
    const executed = (await handler(medplum, event(ContentType.JSON, observation))) as CommunicationResult;
    expect(executed).toMatchObject({ about: `Observation/${observation.id}`, interaction: 'execute' });
    expect(await added()).toBe(2);
  });

  test('a deleted resource is noted as a delete', async () => {
    const patient = await medplum.createResource<Patient>({ resourceType: 'Patient', name: [{ family: 'Gone' }] });
    const result = (await handler(medplum, event(ContentType.FHIR_JSON, { deletedResource: patient }))) as CommunicationResult;
    expect(result).toMatchObject({ about: `Patient/${patient.id}`, interaction: 'delete' });
    const communication = await medplum.readResource('Communication', result.communication);
    expect(communication.payload?.[0].contentString).toBe(`delete Patient/${patient.id}`);
  });
});

describe('anything else is echoed', () => {
  test('JSON that is not a resource comes back unchanged and nothing is written', async () => {
    const input = { hello: 'world', n: [1, 2, 3], nested: { resourceType: 'Patient' } };
    expect(await handler(medplum, event(ContentType.JSON, input))).toBe(input);
    // resourceType without an id is not a stored resource: echoed too
    const unsaved = { resourceType: 'Patient', name: [{ family: 'Unsaved' }] };
    expect(await handler(medplum, event(ContentType.JSON, unsaved))).toBe(unsaved);
    expect(await handler(medplum, event(ContentType.JSON, { deletedResource: 'nope' }))).toEqual({ deletedResource: 'nope' });
    expect(await handler(medplum, event(ContentType.JSON, null))).toBeNull();
    expect(await added()).toBe(0);
  });

  test('plain text comes back as it was', async () => {
    expect(await handler(medplum, event(ContentType.TEXT, 'hello bots\nsecond line'))).toBe('hello bots\nsecond line');
    expect(await handler(medplum, event(ContentType.TEXT, ''))).toBe('');
  });
});
