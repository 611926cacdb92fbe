import type { Bundle, Observation, Patient, Resource } from '@medplum/fhirtypes';
import type { FhirRequest, HttpMethod } from '@medplum/fhir-router';
import { randomUUID } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, test } from 'vitest';
import { handleFhirRequest } from '../src/fhir/router.ts';
import type { PostgresRepository } from '../src/fhir/repo/postgres-repository.ts';
import { useTestServer } from './harness.ts';

/*
 * Two projects in one database. Project A holds a Synthea patient's record; project B holds nothing
 * of it. Every search feature is run as A (it must find something, so the query is meaningful) and
 * as B (it must find nothing). Until authentication (#4) assigns projects per login, requests are
 * sent through the same router and repository the HTTP layer uses, with a repository per project.
 */

const SYNTHEA = path.resolve(import.meta.dirname, '../../../shared/testdata/synthea-r4-bundles');
const t = useTestServer();
let a: PostgresRepository;
let b: PostgresRepository;
let patient: Patient;
let observation: Observation;

function repoFor(projectId: string): PostgresRepository {
  return t.server.services.repo({ projectId, readProjects: [projectId], author: { reference: 'system' } });
}

async function request(repo: PostgresRepository, method: HttpMethod, url: string, body?: unknown): Promise<Resource | undefined> {
  const req: FhirRequest = { method, url, pathname: '', params: {}, query: {}, body, headers: {}, config: { transactions: true } };
  const [outcome, resource] = await handleFhirRequest(t.server.services.router, repo, req);
  if (outcome.issue?.[0]?.severity === 'error') {
    throw new Error(`${method} ${url}: ${JSON.stringify(outcome)}`);
  }
  return resource;
}

async function matches(repo: PostgresRepository, url: string): Promise<string[]> {
  const bundle = (await request(repo, 'GET', url)) as Bundle;
  return (bundle.entry ?? []).filter((e) => e.resource?.resourceType !== 'OperationOutcome').map((e) => `${e.resource?.resourceType}/${e.resource?.id}`);
}

beforeAll(async () => {
  a = repoFor(randomUUID());
  b = repoFor(randomUUID());
  const file = readdirSync(SYNTHEA).find((f) => f.endsWith('.json') && f !== 'SOURCE.json') as string;
  const bundle = JSON.parse(readFileSync(path.join(SYNTHEA, file), 'utf8')) as Bundle;
  const response = (await request(a, 'POST', '/', bundle)) as Bundle;
  const locations = (response.entry ?? []).map((e) => e.response?.location as string);
  patient = await a.readReference({ reference: locations.find((l) => l.startsWith('Patient/'))?.split('/_history')[0] });
  observation = await a.readReference({ reference: locations.find((l) => l.startsWith('Observation/'))?.split('/_history')[0] });
  // B has a patient of its own with the same name, so "nothing found" is not just an empty project
  await b.createResource<Patient>({ resourceType: 'Patient', name: patient.name, birthDate: patient.birthDate });
});

describe('nothing of another project is visible through any search feature', () => {
  const queries = (): string[] => {
    const family = patient.name?.[0]?.family as string;
    const code = observation.code.coding?.[0];
    return [
      `/Observation?subject=Patient/${patient.id}`,
      `/Observation?patient=${patient.id}`,
      `/Observation?code=${code?.system}|${code?.code}&subject=Patient/${patient.id}`,
      `/Observation?subject:Patient.name=${encodeURIComponent(family)}`,
      `/Observation?subject:Patient.birthdate=${patient.birthDate}`,
      `/Encounter?subject.name=${encodeURIComponent(family)}`,
      `/Patient?_has:Observation:subject:code=${code?.code}`,
      `/Patient?_has:Encounter:subject:_has:Observation:encounter:status=final`,
      `/Patient?_id=${patient.id}&_revinclude=Observation:subject`,
      `/Observation?_id=${observation.id}&_include=Observation:subject`,
      `/Observation?_compartment=Patient/${patient.id}`,
      `/?_type=Observation,Condition&_compartment=Patient/${patient.id}`,
      `/Observation?date=ge1900&subject=Patient/${patient.id}&_sort=-date&_total=accurate`,
      `/Observation?combo-code=${code?.code}&subject=Patient/${patient.id}`,
      `/Observation?_filter=${encodeURIComponent(`subject eq Patient/${patient.id}`)}`,
      `/Patient/${patient.id}/Observation`,
      `/Patient/${patient.id}/$everything`,
      `/Observation/$lastn?subject=Patient/${patient.id}`,
      `/Observation/${observation.id}/_history`,
      `/Observation/_history`,
    ];
  };

  test('as the owning project, each query finds the record; as the other project, nothing', async () => {
    for (const url of queries()) {
      const own = await matches(a, url).catch((err: Error) => err.message);
      expect(Array.isArray(own) && own.length > 0, `${url} as A: ${JSON.stringify(own)}`).toBe(true);
      // B either finds nothing, or is told the patient does not exist (404) — never A's data
      const other = await matches(b, url).catch((err: Error) => err.message);
      if (Array.isArray(other)) {
        expect(other.filter((ref) => !ref.startsWith('Patient/') || ref === `Patient/${patient.id}`), `${url} as B`).toEqual([]);
      } else {
        expect(other, url).toContain('not-found');
      }
    }
  });

  test('reads, vreads and GraphQL of another project are not found', async () => {
    await expect(b.readResource('Patient', patient.id as string)).rejects.toThrow('Not found');
    await expect(b.readVersion('Observation', observation.id as string, observation.meta?.versionId as string)).rejects.toThrow('Not found');
    const graphql = (await request(b, 'POST', '/$graphql', {
      query: `{ Patient(id: "${patient.id}") { id } ObservationList(subject: "Patient/${patient.id}") { id } }`,
    })) as unknown as { data?: { Patient?: unknown; ObservationList?: unknown[] } };
    expect(graphql.data?.ObservationList ?? []).toEqual([]);
    expect(graphql.data?.Patient ?? null).toBeNull();
    const own = (await request(a, 'POST', '/$graphql', {
      query: `{ ObservationList(subject: "Patient/${patient.id}", _count: 1) { id } }`,
    })) as unknown as { data: { ObservationList: unknown[] } };
    expect(own.data.ObservationList).toHaveLength(1);
  });
});
