import { getDataType, isDataTypeLoaded } from '@medplum/core';
import type { Bundle, CapabilityStatement, OperationOutcome, Patient, SearchParameter, StructureDefinition, ValueSet } from '@medplum/fhirtypes';
import { describe, expect, test } from 'vitest';
import { FHIR_JSON, useTestServer } from './harness.ts';

const t = useTestServer();

describe('CapabilityStatement', () => {
  test('GET /metadata describes what the server supports', async () => {
    const res = await t.server.fhir('metadata');
    expect(res.status).toBe(200);
    const cs = (await res.json()) as CapabilityStatement;
    expect(cs.fhirVersion).toBe('4.0.1');
    const rest = cs.rest?.[0];
    expect(rest?.interaction?.map((i) => i.code)).toEqual(expect.arrayContaining(['transaction', 'batch', 'history-system']));
    const patient = rest?.resource?.find((r) => r.type === 'Patient');
    expect(patient?.interaction?.map((i) => i.code)).toEqual(
      expect.arrayContaining(['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'create', 'search-type'])
    );
    expect(patient?.searchParam?.find((p) => p.name === 'birthdate')?.type).toBe('date');
    expect(patient?.conditionalCreate).toBe(true);
    // Medplum's own resource types are there too, and abstract types are not
    expect(rest?.resource?.some((r) => r.type === 'Project')).toBe(true);
    expect(rest?.resource?.some((r) => r.type === ('DomainResource' as string))).toBe(false);
  });
});

describe('base definitions are readable and searchable in every project', () => {
  test('StructureDefinition by id, by name, by url and with _filter', async () => {
    const byId = await t.medplum.readResource('StructureDefinition', 'Observation');
    expect(byId.type).toBe('Observation');
    const byName = await t.medplum.searchResources('StructureDefinition', { name: 'Patient' });
    expect(byName.map((sd) => sd.url)).toContain('http://hl7.org/fhir/StructureDefinition/Patient');
    const byUrl = await t.medplum.searchOne('StructureDefinition', { url: 'http://hl7.org/fhir/StructureDefinition/Encounter' });
    expect(byUrl?.name).toBe('Encounter');
    const filtered = await t.medplum.searchResources('StructureDefinition', { _filter: 'name eq Practitioner' });
    expect(filtered.map((sd) => sd.name)).toEqual(['Practitioner']);
  });

  test('SearchParameter by base, with totals and paging', async () => {
    const page1 = (await (await t.server.fhir('SearchParameter?base=Patient&_count=10&_total=accurate')).json()) as Bundle<SearchParameter>;
    expect(page1.total).toBeGreaterThan(20);
    expect(page1.entry).toHaveLength(10);
    expect(page1.entry?.every((e) => e.resource?.base.includes('Patient') || e.resource?.base.includes('Resource' as never))).toBe(true);
    const next = page1.link?.find((l) => l.relation === 'next')?.url as string;
    const page2 = (await (await fetch(next, { headers: t.server.authorization })).json()) as Bundle<SearchParameter>;
    expect(page2.entry).toHaveLength(10);
    const ids1 = new Set(page1.entry?.map((e) => e.resource?.id));
    expect(page2.entry?.some((e) => ids1.has(e.resource?.id))).toBe(false);
  });

  test('MedplumClient.requestSchema loads a resource type through GraphQL', async () => {
    expect(isDataTypeLoaded('ServiceRequest')).toBe(true); // the server process loaded the definitions
    await t.medplum.requestSchema('ServiceRequest');
    expect(getDataType('ServiceRequest').elements.status).toBeDefined();
    const res = await t.server.fhir('$graphql', {
      method: 'POST',
      headers: FHIR_JSON,
      body: JSON.stringify({
        query: '{ StructureDefinitionList(_filter: "name eq Condition") { name, type } SearchParameterList(base: "Condition", _count: 100) { code, type } }',
      }),
    });
    const body = (await res.json()) as { data: { StructureDefinitionList: { name: string }[]; SearchParameterList: { code: string }[] } };
    expect(body.data.StructureDefinitionList).toEqual([{ name: 'Condition', type: 'Condition' }]);
    expect(body.data.SearchParameterList.map((p) => p.code)).toContain('clinical-status');
  });

  test('definitions cannot be overwritten', async () => {
    const sd = await t.medplum.readResource('StructureDefinition', 'Patient');
    const res = await t.server.fhir('StructureDefinition/Patient', { method: 'PUT', headers: FHIR_JSON, body: JSON.stringify(sd) });
    expect(res.status).toBe(400);
  });
});

describe('ValueSet/$expand', () => {
  test('expands a base value set, with filter and count', async () => {
    const all = await t.medplum.valueSetExpand({ url: 'http://hl7.org/fhir/ValueSet/administrative-gender' });
    expect(all.expansion?.contains?.map((c) => c.code).sort()).toEqual(['female', 'male', 'other', 'unknown']);
    const filtered = await t.medplum.valueSetExpand({ url: 'http://hl7.org/fhir/ValueSet/administrative-gender', filter: 'fem' });
    expect(filtered.expansion?.contains?.map((c) => c.code)).toEqual(['female']);
    const counted = await t.medplum.valueSetExpand({ url: 'http://hl7.org/fhir/ValueSet/observation-status', count: 2 });
    expect(counted.expansion?.contains).toHaveLength(2);
    expect(counted.expansion?.total).toBeGreaterThan(2);
  });

  test('expands a value set stored by the project', async () => {
    const vs = await t.medplum.createResource<ValueSet>({
      resourceType: 'ValueSet',
      status: 'active',
      url: 'https://ermis.example/ValueSet/cardiac-tests',
      compose: { include: [{ system: 'http://loinc.org', concept: [{ code: '2157-6', display: 'Creatine kinase' }, { code: '10839-9', display: 'Troponin I' }] }] },
    });
    const expanded = await t.medplum.valueSetExpand({ url: vs.url as string, filter: 'trop' });
    expect(expanded.expansion?.contains).toEqual([{ system: 'http://loinc.org', code: '10839-9', display: 'Troponin I' }]);
  });

  test('an unknown url is 404; a missing url is 400', async () => {
    expect((await t.server.fhir('ValueSet/$expand?url=https://nowhere.example/vs')).status).toBe(404);
    expect((await t.server.fhir('ValueSet/$expand')).status).toBe(400);
  });
});

describe('$validate and profiles', () => {
  test('$validate answers OK for a valid resource, and issues with expressions for an invalid one, storing nothing', async () => {
    const before = await t.server.rowCounts();
    const ok = await t.server.fhir('Patient/$validate', { method: 'POST', headers: FHIR_JSON, body: JSON.stringify({ resourceType: 'Patient', gender: 'female' }) });
    expect(ok.status).toBe(200);
    const bad = await t.server.fhir('Patient/$validate', { method: 'POST', headers: FHIR_JSON, body: JSON.stringify({ resourceType: 'Patient', gender: 'robot', birthDate: '1-1-1' }) });
    expect(bad.status).toBe(400);
    const outcome = (await bad.json()) as OperationOutcome;
    expect(outcome.issue.flatMap((i) => i.expression)).toEqual(expect.arrayContaining(['Patient.gender', 'Patient.birthDate']));
    expect(await t.server.rowCounts()).toEqual(before);
  });

  test('a resource claiming a stored profile is validated against it', async () => {
    const base = await t.medplum.readResource('StructureDefinition', 'Patient');
    const profileUrl = 'https://ermis.example/StructureDefinition/cy-patient';
    const profile: StructureDefinition = {
      ...base,
      id: undefined,
      meta: undefined,
      url: profileUrl,
      name: 'CyprusPatient',
      derivation: 'constraint',
      baseDefinition: 'http://hl7.org/fhir/StructureDefinition/Patient',
      snapshot: {
        element: (base.snapshot?.element ?? []).map((el) => (el.path === 'Patient.birthDate' ? { ...el, min: 1 } : el)),
      },
    };
    delete profile.differential;
    await t.medplum.createResource(profile);
    const rejected = await t.server.fhir('Patient', {
      method: 'POST',
      headers: FHIR_JSON,
      body: JSON.stringify({ resourceType: 'Patient', meta: { profile: [profileUrl] }, gender: 'male' }),
    });
    expect(rejected.status).toBe(400);
    expect(((await rejected.json()) as OperationOutcome).issue.some((i) => i.expression?.includes('Patient.birthDate'))).toBe(true);
    const accepted = await t.medplum.createResource<Patient>({ resourceType: 'Patient', meta: { profile: [profileUrl] }, birthDate: '1975-05-05' });
    expect(accepted.meta?.profile).toEqual([profileUrl]);
  });
});
