import type { OperationOutcome } from '@medplum/fhirtypes';
import { describe, expect, test } from 'vitest';
import { FHIR_JSON, useTestServer } from './harness.ts';

const t = useTestServer();

/** Sends the request and checks: the expected status, an OperationOutcome body, and no change to the database. */
async function expectRejected(
  path: string,
  init: RequestInit,
  status: number
): Promise<OperationOutcome> {
  const before = await t.server.rowCounts();
  const res = await t.server.fhir(path, init);
  expect(res.status).toBe(status);
  expect(res.headers.get('content-type')).toContain('json');
  const outcome = (await res.json()) as OperationOutcome;
  expect(outcome.resourceType).toBe('OperationOutcome');
  expect(outcome.issue.length).toBeGreaterThan(0);
  expect(await t.server.rowCounts()).toEqual(before);
  return outcome;
}

describe('malformed bodies', () => {
  test('invalid JSON', async () => {
    const outcome = await expectRejected('Patient', { method: 'POST', headers: FHIR_JSON, body: '{"resourceType": "Patient",' }, 400);
    expect(outcome.issue[0].details?.text).toContain('Invalid JSON');
  });

  test('a JSON body that is not an object', async () => {
    await expectRejected('Patient', { method: 'POST', headers: FHIR_JSON, body: '[1,2,3]' }, 400);
    await expectRejected('Patient', { method: 'POST', headers: FHIR_JSON, body: '"Patient"' }, 400);
  });

  test('bytes that are not UTF-8', async () => {
    const body = Buffer.concat([Buffer.from('{"resourceType":"Patient","name":[{"family":"'), Buffer.from([0xc3, 0x28, 0xff]), Buffer.from('"}]}')]);
    const outcome = await expectRejected('Patient', { method: 'POST', headers: FHIR_JSON, body }, 400);
    expect(outcome.issue[0].details?.text).toContain('UTF-8');
  });

  test('an empty body on create', async () => {
    await expectRejected('Patient', { method: 'POST', headers: FHIR_JSON, body: '' }, 400);
  });

  test('a 20 MB body is refused with 413', async () => {
    const big = JSON.stringify({ resourceType: 'Patient', name: [{ family: 'x'.repeat(20 * 1024 * 1024) }] });
    const outcome = await expectRejected('Patient', { method: 'POST', headers: FHIR_JSON, body: big }, 413);
    expect(outcome.issue[0].code).toBe('too-long');
  });

  test('an unsupported content type is refused with 415', async () => {
    await expectRejected('Patient', { method: 'POST', headers: { 'Content-Type': 'text/plain' }, body: 'hello' }, 415);
  });
});

describe('invalid resources', () => {
  test('resourceType in the body differs from the URL', async () => {
    const outcome = await expectRejected(
      'Patient',
      { method: 'POST', headers: FHIR_JSON, body: JSON.stringify({ resourceType: 'Observation', status: 'final', code: { text: 'x' } }) },
      400
    );
    expect(outcome.issue[0].details?.text).toMatch(/Incorrect resource type/);
  });

  test('an unknown resource type', async () => {
    await expectRejected('Patientt', { method: 'POST', headers: FHIR_JSON, body: JSON.stringify({ resourceType: 'Patientt' }) }, 400);
  });

  test('unknown elements are named in expression', async () => {
    const outcome = await expectRejected(
      'Patient',
      { method: 'POST', headers: FHIR_JSON, body: JSON.stringify({ resourceType: 'Patient', nickname: 'Niko', name: [{ famly: 'X' }] }) },
      400
    );
    const expressions = outcome.issue.flatMap((i) => i.expression ?? []);
    expect(expressions).toContain('Patient.nickname');
    expect(expressions).toContain('Patient.name[0].famly');
  });

  test('wrong primitive formats and missing required elements', async () => {
    const outcome = await expectRejected(
      'Observation',
      { method: 'POST', headers: FHIR_JSON, body: JSON.stringify({ resourceType: 'Observation', status: 'final', effectiveDateTime: '2024-13-45' }) },
      400
    );
    const expressions = outcome.issue.flatMap((i) => i.expression ?? []);
    expect(expressions).toContain('Observation.code');
    expect(expressions).toContain('Observation.effective[x]');
  });

  test('empty arrays, objects and strings are not FHIR JSON', async () => {
    const outcome = await expectRejected(
      'Patient',
      { method: 'POST', headers: FHIR_JSON, body: JSON.stringify({ resourceType: 'Patient', name: [], maritalStatus: {}, gender: '' }) },
      400
    );
    const expressions = outcome.issue.flatMap((i) => i.expression ?? []);
    expect(expressions).toEqual(expect.arrayContaining(['Patient.name', 'Patient.maritalStatus', 'Patient.gender']));
  });

  test('an update whose id differs from the URL', async () => {
    await expectRejected(
      'Patient/abc',
      { method: 'PUT', headers: FHIR_JSON, body: JSON.stringify({ resourceType: 'Patient', id: 'xyz' }) },
      400
    );
  });

  test('an invalid id in an update', async () => {
    await expectRejected(
      'Patient/bad$id',
      { method: 'PUT', headers: FHIR_JSON, body: JSON.stringify({ resourceType: 'Patient', id: 'bad$id' }) },
      400
    );
  });

  test('an invalid update does not change the stored resource', async () => {
    const res = await t.server.fhir('Patient', { method: 'POST', headers: FHIR_JSON, body: JSON.stringify({ resourceType: 'Patient', gender: 'male' }) });
    const created = (await res.json()) as { id: string; meta: { versionId: string } };
    await expectRejected(
      `Patient/${created.id}`,
      { method: 'PUT', headers: FHIR_JSON, body: JSON.stringify({ resourceType: 'Patient', id: created.id, gender: 'robot' }) },
      400
    );
    const after = (await (await t.server.fhir(`Patient/${created.id}`)).json()) as { gender: string; meta: { versionId: string } };
    expect(after.gender).toBe('male');
    expect(after.meta.versionId).toBe(created.meta.versionId);
  });
});

describe('invalid requests', () => {
  test('an unknown search parameter', async () => {
    await expectRejected('Patient?not-a-param=1', { method: 'GET' }, 400);
  });

  test('an invalid date search value', async () => {
    await expectRejected('Patient?birthdate=yesterday', { method: 'GET' }, 400);
  });

  test('a negative _count', async () => {
    await expectRejected('Patient?_count=-1', { method: 'GET' }, 400);
  });

  test('a Bundle of an unknown type', async () => {
    await expectRejected('', { method: 'POST', headers: FHIR_JSON, body: JSON.stringify({ resourceType: 'Bundle', type: 'collection', entry: [] }) }, 400);
  });

  test('an unknown route answers 404 with an OperationOutcome', async () => {
    const res = await fetch(t.server.baseUrl + 'no/such/route');
    expect(res.status).toBe(404);
    expect(((await res.json()) as OperationOutcome).resourceType).toBe('OperationOutcome');
  });
});
