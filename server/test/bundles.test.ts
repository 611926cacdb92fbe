import type { Bundle, BundleEntry, Observation, OperationOutcome, Patient, Resource } from '@medplum/fhirtypes';
import { Client } from 'fhir-kit-client';
import type { FhirResource } from 'fhir-kit-client';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { FHIR_JSON, startTestServer, unique } from './harness.ts';
import type { TestServer } from './harness.ts';

const TESTDATA = path.resolve(import.meta.dirname, '../../../shared/testdata');
const SYNTHEA_DIR = path.join(TESTDATA, 'synthea-r4-bundles');
const FHIR_WORKS_DIR = path.join(TESTDATA, 'fhir-works-on-aws-fixtures/integration-tests');

let server: TestServer;
let client: Client;

beforeAll(async () => {
  server = await startTestServer();
  // fhir-kit-client: an independent FHIR client, so the server is not only tested through Medplum's own.
  client = new Client({ baseUrl: server.fhirUrl.replace(/\/$/, ''), bearerToken: server.admin.accessToken });
});

afterAll(async () => {
  await server.stop();
});

function loadBundle(file: string): Bundle {
  return JSON.parse(readFileSync(file, 'utf8')) as Bundle;
}

/** Replaces every urn:uuid placeholder in the resource by the reference the server assigned. */
function resolvePlaceholders<T>(value: T, assigned: Map<string, string>): T {
  const text = JSON.stringify(value).replace(/urn:uuid:[0-9a-f-]{36}/g, (urn) => assigned.get(urn) ?? urn);
  return JSON.parse(text) as T;
}

function withoutIdAndMeta(resource: Resource): Record<string, unknown> {
  const { id: _id, meta: _meta, ...rest } = resource as Resource & { meta?: unknown };
  return rest;
}

const syntheaFiles = readdirSync(SYNTHEA_DIR).filter((f) => f.endsWith('.json') && f !== 'SOURCE.json');

describe('Synthea transaction bundles', () => {
  test('the shared test data holds the five bundles', () => {
    expect(syntheaFiles).toHaveLength(5);
  });

  test.each(syntheaFiles)('%s loads as one transaction and every resource reads back equal', async (file) => {
    const input = loadBundle(path.join(SYNTHEA_DIR, file));
    const before = await server.rowCounts();
    const response = (await client.transaction({ body: input as unknown as FhirResource })) as unknown as Bundle;
    expect(response.type).toBe('transaction-response');
    expect(response.entry).toHaveLength(input.entry?.length as number);

    const assigned = new Map<string, string>();
    response.entry?.forEach((entry, i) => {
      expect(entry.response?.status).toMatch(/^201/);
      const location = entry.response?.location as string;
      expect(location).toMatch(/^[A-Z][A-Za-z]+\/[0-9a-f-]{36}/);
      assigned.set(input.entry?.[i].fullUrl as string, location.split('/_history')[0]);
    });

    for (const [i, entry] of (input.entry as BundleEntry[]).entries()) {
      const [type, id] = (assigned.get(entry.fullUrl as string) as string).split('/');
      const stored = (await client.read({ resourceType: type, id })) as unknown as Resource;
      expect(stored.resourceType).toBe(entry.resource?.resourceType);
      expect(withoutIdAndMeta(stored), `entry ${i} (${type})`).toEqual(
        withoutIdAndMeta(resolvePlaceholders(entry.resource as Resource, assigned))
      );
    }
    const after = await server.rowCounts();
    expect(after.resources - before.resources).toBe(input.entry?.length);
  });

  test('references between entries point at the created resources', async () => {
    const input = loadBundle(path.join(SYNTHEA_DIR, syntheaFiles[0]));
    const response = (await client.transaction({ body: input as unknown as FhirResource })) as unknown as Bundle;
    const patientLocation = response.entry?.find((e) => e.response?.location?.startsWith('Patient/'))?.response?.location as string;
    const patientId = patientLocation.split('/')[1];
    const observations = (await client.search({
      resourceType: 'Observation',
      searchParams: { subject: `Patient/${patientId}`, _count: '1000' },
    })) as unknown as Bundle<Observation>;
    const expected = input.entry?.filter((e) => e.resource?.resourceType === 'Observation').length;
    expect(observations.entry?.length).toBe(expected);
  });

  test('a transaction with one invalid entry writes nothing and names the problem', async () => {
    const input = loadBundle(path.join(SYNTHEA_DIR, syntheaFiles[1]));
    const last = input.entry?.[input.entry.length - 1].resource as Resource & Record<string, unknown>;
    last.notAnElement = true;
    const before = await server.rowCounts();
    const res = await server.fhir('', { method: 'POST', headers: FHIR_JSON, body: JSON.stringify(input) });
    expect(res.status).toBe(400);
    const outcome = (await res.json()) as OperationOutcome;
    expect(outcome.resourceType).toBe('OperationOutcome');
    expect(JSON.stringify(outcome)).toContain('notAnElement');
    expect(await server.rowCounts()).toEqual(before);
  });

  test('a transaction whose later entry fails on the database side rolls back the earlier entries', async () => {
    const id = unique('dup');
    const patient: Patient = { resourceType: 'Patient', id, name: [{ family: 'Rollback' }] };
    await server.fhir(`Patient/${id}`, { method: 'PUT', headers: FHIR_JSON, body: JSON.stringify(patient) });
    const before = await server.rowCounts();
    const bundle: Bundle = {
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [
        { fullUrl: 'urn:uuid:7f4a1c2e-0000-4000-8000-000000000001', resource: { resourceType: 'Patient', name: [{ family: 'A' }] }, request: { method: 'POST', url: 'Patient' } },
        { resource: { ...patient, gender: 'male' }, request: { method: 'PUT', url: `Patient/${id}`, ifMatch: 'W/"not-the-version"' } },
      ],
    };
    const res = await server.fhir('', { method: 'POST', headers: FHIR_JSON, body: JSON.stringify(bundle) });
    expect(res.status).toBe(412);
    expect(await server.rowCounts()).toEqual(before);
  });
});

describe('batch and transaction fixtures (FHIR Works on AWS)', () => {
  test.each(['createPatientPractitionerEncounterBundle.json', 'createGroupMembersBundle.json'])(
    '%s commits and resolves its urn:uuid references',
    async (file) => {
      const input = loadBundle(path.join(FHIR_WORKS_DIR, file));
      const response = (await client.transaction({ body: input as unknown as FhirResource })) as unknown as Bundle;
      expect(response.entry?.every((e) => e.response?.status?.startsWith('201'))).toBe(true);
      for (const entry of response.entry ?? []) {
        const [type, id] = (entry.response?.location as string).split('/');
        const stored = (await client.read({ resourceType: type, id })) as unknown as Resource;
        expect(JSON.stringify(stored)).not.toContain('urn:uuid:');
      }
    }
  );

  test('a batch reports each entry on its own: one failure does not stop the others', async () => {
    const input = loadBundle(path.join(FHIR_WORKS_DIR, 'createPatientPractitionerEncounterBundle.json'));
    input.type = 'batch';
    // entries of a batch cannot refer to each other; keep the independent ones and add a bad one
    const entries = (input.entry as BundleEntry[]).filter((e) => e.resource?.resourceType !== 'Encounter');
    entries.push({ resource: { resourceType: 'Patient', birthDate: 'not-a-date' } as Patient, request: { method: 'POST', url: 'Patient' } });
    input.entry = entries;
    const response = (await client.batch({ body: input as unknown as FhirResource })) as unknown as Bundle;
    expect(response.type).toBe('batch-response');
    const statuses = response.entry?.map((e) => e.response?.status?.slice(0, 3));
    expect(statuses).toEqual(['201', '201', '400']);
    expect((response.entry?.[2].response?.outcome as OperationOutcome).issue[0].expression).toEqual(['Patient.birthDate']);
  });
});
