import type { MedplumClient } from '@medplum/core';
import { parseSearchRequest } from '@medplum/core';
import type { Bundle, CodeSystem, DiagnosticReport, Observation, OperationOutcome, Patient, ValueSet } from '@medplum/fhirtypes';
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { FHIR_JSON, startTestServer, unique } from './harness.ts';
import type { TestServer } from './harness.ts';

let server: TestServer;
let medplum: MedplumClient;
let tag: string;
let anna: Patient;
let nikos: Patient;
let observations: Observation[];

const LOINC = 'http://loinc.org';

beforeAll(async () => {
  server = await startTestServer();
  medplum = server.medplum();
  tag = unique('search');
  const meta = { tag: [{ system: 'urn:test', code: tag }] };
  anna = await medplum.createResource<Patient>({
    resourceType: 'Patient',
    meta,
    identifier: [{ system: 'urn:cy:id', value: `A-${tag}` }],
    name: [{ family: 'Ανδρέου', given: ['Άννα'] }],
    birthDate: '1961-07-14',
    gender: 'female',
  });
  nikos = await medplum.createResource<Patient>({
    resourceType: 'Patient',
    meta,
    identifier: [{ system: 'urn:cy:id', value: `N-${tag}` }],
    name: [{ family: 'Nicolaou', given: ['Nikos'] }],
    birthDate: '1975',
    gender: 'male',
  });
  const obs = (subject: Patient, code: string, value: number, unit: string, effective: Partial<Observation>): Observation => ({
    resourceType: 'Observation',
    meta,
    status: 'final',
    code: { coding: [{ system: LOINC, code, display: code === '2160-0' ? 'Creatinine' : 'Troponin I' }] },
    subject: { reference: `Patient/${subject.id}` },
    valueQuantity: { value, unit, system: 'http://unitsofmeasure.org', code: unit },
    ...effective,
  });
  observations = [];
  for (const o of [
    obs(anna, '2160-0', 1.1, 'mg/dL', { effectiveDateTime: '2024-03-05T10:00:00Z' }),
    obs(anna, '2160-0', 97, 'umol/L', { effectiveDateTime: '2024-05-20T08:30:00Z' }),
    obs(anna, '10839-9', 0.04, 'ng/mL', { effectivePeriod: { start: '2024-06-01T00:00:00Z', end: '2024-06-03T00:00:00Z' } }),
    obs(nikos, '2160-0', 1.3, 'mg/dL', { effectiveDateTime: '2023-12-31T23:00:00Z' }),
  ]) {
    observations.push(await medplum.createResource(o));
  }
});

afterAll(async () => {
  await server.stop();
});

async function ids(type: string, query: string, scope = tag): Promise<string[]> {
  const res = await server.fhir(`${type}?_tag=urn:test|${scope}&${query}`);
  expect(res.status, await res.clone().text()).toBe(200);
  const bundle = (await res.json()) as Bundle;
  return (bundle.entry ?? []).map((e) => e.resource?.id as string);
}

describe('parameter types', () => {
  test('token: system|code, code, |code, system|, :not, :text', async () => {
    const creat = observations.filter((o) => o.code.coding?.[0].code === '2160-0').map((o) => o.id);
    expect((await ids('Observation', `code=${LOINC}|2160-0`)).sort()).toEqual(creat.sort());
    expect((await ids('Observation', 'code=2160-0')).sort()).toEqual(creat.sort());
    expect(await ids('Observation', 'code=|2160-0')).toEqual([]);
    expect(await ids('Observation', `code=${LOINC}|`)).toHaveLength(4);
    expect(await ids('Observation', 'code:not=2160-0')).toEqual([observations[2].id]);
    expect(await ids('Observation', 'code:text=tropon')).toEqual([observations[2].id]);
    expect(await ids('Patient', 'gender=female,male')).toHaveLength(2);
  });

  test('string: prefix by default, accents and case folded; :exact; :contains', async () => {
    expect(await ids('Patient', 'name=ανδρε')).toEqual([anna.id]);
    expect(await ids('Patient', 'given=ΑΝΝΑ')).toEqual([anna.id]);
    expect(await ids('Patient', 'family:exact=Ανδρέου')).toEqual([anna.id]);
    expect(await ids('Patient', 'family:exact=ανδρέου')).toEqual([]);
    expect(await ids('Patient', 'name:contains=olao')).toEqual([nikos.id]);
    expect(await ids('Patient', 'name=olao')).toEqual([]);
  });

  test('date: ranges for partial dates and every prefix', async () => {
    expect(await ids('Patient', 'birthdate=1961-07')).toEqual([anna.id]);
    // Nikos' birthDate "1975" covers the whole year: eq 1975-06 does not contain it, but ap/ge/le overlap rules apply
    expect(await ids('Patient', 'birthdate=1975-06-01')).toEqual([]);
    expect(await ids('Patient', 'birthdate=1975')).toEqual([nikos.id]);
    expect(await ids('Patient', 'birthdate=lt1970')).toEqual([anna.id]);
    expect(await ids('Patient', 'birthdate=gt1961-07-14')).toEqual([nikos.id]);
    expect((await ids('Patient', 'birthdate=ge1961-07-14')).sort()).toEqual([anna.id, nikos.id].sort());
    expect(await ids('Patient', 'birthdate=sa1961-07-14')).toEqual([nikos.id]);
    expect(await ids('Patient', 'birthdate=eb1975')).toEqual([anna.id]);
    expect(await ids('Patient', 'birthdate=ne1961-07-14')).toEqual([nikos.id]);
    // a Period is a range: June 2 is inside the troponin period; "eq 2024-06" contains all of it
    expect(await ids('Observation', 'date=2024-06')).toEqual([observations[2].id]);
    expect(await ids('Observation', 'date=ge2024-06-02&date=le2024-06-02')).toEqual([observations[2].id]);
    expect(await ids('Observation', 'date=lt2024-01-01&date=gt2023')).toEqual([]);
    expect(await ids('Observation', 'date=ge2024-05-20T08:30:00Z&code=2160-0')).toEqual([observations[1].id]);
  });

  test('quantity and number: prefixes, precision and units', async () => {
    expect(await ids('Observation', 'value-quantity=1.1')).toEqual([observations[0].id]);
    expect((await ids('Observation', 'value-quantity=gt1')).sort()).toEqual([observations[0].id, observations[1].id, observations[3].id].sort());
    expect(await ids('Observation', 'value-quantity=gt1|http://unitsofmeasure.org|umol/L')).toEqual([observations[1].id]);
    expect(await ids('Observation', 'value-quantity=lt0.05')).toEqual([observations[2].id]);
    expect(await ids('Observation', 'value-quantity=ap100')).toEqual([observations[1].id]);
  });

  test('number precision comes from the text of the value', async () => {
    const tagMeta = { tag: [{ system: 'urn:test', code: tag }] };
    const precise = await medplum.createResource<Observation>({
      resourceType: 'Observation',
      meta: tagMeta,
      status: 'final',
      code: { text: 'precision' },
      valueQuantity: { value: 5.43, unit: 'mmol/L' },
    });
    const tiny = await medplum.createResource<Observation>({
      resourceType: 'Observation',
      meta: tagMeta,
      status: 'final',
      code: { text: 'precision' },
      valueQuantity: { value: 0.3, unit: 'mmol/L' },
    });
    expect(await ids('Observation', 'code:text=precision&value-quantity=5.4')).toEqual([precise.id]);
    expect(await ids('Observation', 'code:text=precision&value-quantity=5.40')).toEqual([]);
    expect(await ids('Observation', 'code:text=precision&value-quantity=5.43')).toEqual([precise.id]);
    expect(await ids('Observation', 'code:text=precision&value-quantity=0.0000001')).toEqual([]);
    expect(await ids('Observation', 'code:text=precision&value-quantity=3e-1')).toEqual([tiny.id]);
    await medplum.deleteResource('Observation', precise.id as string);
    await medplum.deleteResource('Observation', tiny.id as string);
  });

  test('e-mail search ignores case; years before 100 are not 19xx', async () => {
    const p = await medplum.createResource<Patient>({
      resourceType: 'Patient',
      meta: { tag: [{ system: 'urn:test', code: tag }] },
      telecom: [{ system: 'email', value: 'Eleni.Pappa@Example.com' }],
      birthDate: '1950-06-01',
    });
    expect(await ids('Patient', 'email=eleni.pappa@example.com')).toEqual([p.id]);
    expect(await ids('Patient', 'email=ELENI.PAPPA@EXAMPLE.COM')).toEqual([p.id]);
    expect(await ids('Patient', 'birthdate=0050')).toEqual([]);
    expect(await ids('Patient', 'birthdate=1950')).toEqual([p.id]);
    await medplum.deleteResource('Patient', p.id as string);
  });

  test('reference: Type/id, bare id, absolute URL, :identifier', async () => {
    expect(await ids('Observation', `subject=Patient/${nikos.id}`)).toEqual([observations[3].id]);
    expect(await ids('Observation', `patient=${nikos.id}`)).toEqual([observations[3].id]);
    expect(await ids('Observation', `subject=${server.fhirUrl}Patient/${nikos.id}`)).toEqual([observations[3].id]);
    const withIdentifier = await medplum.createResource<Observation>({
      resourceType: 'Observation',
      meta: { tag: [{ system: 'urn:test', code: tag }] },
      status: 'final',
      code: { text: 'ECG' },
      subject: { identifier: { system: 'urn:cy:id', value: `X-${tag}` } },
    });
    expect(await ids('Observation', `subject:identifier=urn:cy:id|X-${tag}`)).toEqual([withIdentifier.id]);
    await medplum.deleteResource('Observation', withIdentifier.id as string);
  });

  test('_id, _lastUpdated, :missing and _filter', async () => {
    expect(await ids('Patient', `_id=${anna.id},${nikos.id}`)).toHaveLength(2);
    expect(await ids('Patient', `_lastUpdated=ge${anna.meta?.lastUpdated}`)).toHaveLength(2);
    expect(await ids('Patient', `_lastUpdated=lt${anna.meta?.lastUpdated}`)).toEqual([]);
    expect(await ids('Patient', 'address:missing=true')).toHaveLength(2);
    expect(await ids('Patient', 'address:missing=false')).toEqual([]);
    expect(await ids('Patient', 'gender:missing=false')).toHaveLength(2);
    expect(await ids('Patient', `_filter=${encodeURIComponent('gender eq female or birthdate gt 1970')}`)).toHaveLength(2);
    expect(await ids('Patient', `_filter=${encodeURIComponent('gender eq female and birthdate gt 1970')}`)).toEqual([]);
  });
});

describe('chains, _has and reference modifiers', () => {
  test('chained parameters follow references, with or without a target type', async () => {
    expect((await ids('Observation', 'subject:Patient.name=ανδρε')).sort()).toEqual(observations.slice(0, 3).map((o) => o.id).sort());
    expect(await ids('Observation', `subject.identifier=urn:cy:id|N-${tag}`)).toEqual([observations[3].id]);
    expect(await ids('Observation', 'subject:Patient.birthdate=lt1970&code=10839-9')).toEqual([observations[2].id]);
    expect(await ids('Observation', 'subject:Patient.name=nobody')).toEqual([]);
    expect((await server.fhir('Observation?subject.nonsense=1')).status).toBe(400);
  });

  test('three links: DiagnosticReport → Observation → Patient', async () => {
    const report = await medplum.createResource<DiagnosticReport>({
      resourceType: 'DiagnosticReport',
      meta: { tag: [{ system: 'urn:test', code: tag }] },
      status: 'final',
      code: { text: 'Renal panel' },
      result: [{ reference: `Observation/${observations[3].id}` }],
    });
    expect(await ids('DiagnosticReport', 'result.subject:Patient.name=nicol')).toEqual([report.id]);
    expect(await ids('DiagnosticReport', 'result.subject:Patient.name=ανδρε')).toEqual([]);
    // _has nested twice: patients with an observation that a final report lists
    expect(await ids('Patient', '_has:Observation:subject:_has:DiagnosticReport:result:status=final')).toEqual([nikos.id]);
  });

  test('_has finds resources by what refers to them', async () => {
    expect(await ids('Patient', '_has:Observation:subject:code=10839-9')).toEqual([anna.id]);
    expect((await ids('Patient', '_has:Observation:subject:code=2160-0')).sort()).toEqual([anna.id, nikos.id].sort());
    expect(await ids('Patient', '_has:Observation:subject:value-quantity=gt90')).toEqual([anna.id]);
    expect((await server.fhir('Patient?_has:Observation:nonsense:code=1')).status).toBe(400);
  });

  test('param:Type restricts a reference to one target type', async () => {
    expect(await ids('Observation', `subject:Patient=${nikos.id}`)).toEqual([observations[3].id]);
    expect(await ids('Observation', `subject:Group=${nikos.id}`)).toEqual([]);
  });

  test('chains and _has see only resources of the caller\'s projects', async () => {
    const other = randomUUID();
    const otherRepo = server.services.repo({ projectId: other, readProjects: [other], author: { reference: 'system' } });
    const hidden = await otherRepo.createResource<Patient>({ resourceType: 'Patient', name: [{ family: `Hidden${tag}` }] });
    const pointing = await medplum.createResource<Observation>({
      resourceType: 'Observation',
      meta: { tag: [{ system: 'urn:test', code: tag }] },
      status: 'final',
      code: { text: 'cross-project' },
      subject: { reference: `Patient/${hidden.id}` },
    });
    expect(await ids('Observation', `subject:Patient.name=Hidden${tag}`)).toEqual([]);
    // from the other project, this project's Observation does not make its patient match
    const found = await otherRepo.searchResources({
      resourceType: 'Patient',
      filters: [{ code: '_has:Observation:subject:code', operator: 'eq', value: 'cross-project' }],
    });
    expect(found).toEqual([]);
    const viaText = await otherRepo.searchResources(parseSearchRequest('Patient?_has:Observation:subject:status=final'));
    expect(viaText).toEqual([]);
    await medplum.deleteResource('Observation', pointing.id as string);
  });
});

describe('composites and terminology modifiers', () => {
  // these resources carry their own tag, so the counts of the other tests stay as they are
  const more = (): string => `${tag}-more`;
  const moreIds = (type: string, query: string): Promise<string[]> => ids(type, query, more());
  const bp = (systolic: number, diastolic: number): Observation => ({
    resourceType: 'Observation',
    meta: { tag: [{ system: 'urn:test', code: more() }] },
    status: 'final',
    code: { coding: [{ system: LOINC, code: '85354-9' }] },
    component: [
      { code: { coding: [{ system: LOINC, code: '8480-6' }] }, valueQuantity: { value: systolic, unit: 'mm[Hg]', system: 'http://unitsofmeasure.org', code: 'mm[Hg]' } },
      { code: { coding: [{ system: LOINC, code: '8462-4' }] }, valueQuantity: { value: diastolic, unit: 'mm[Hg]', system: 'http://unitsofmeasure.org', code: 'mm[Hg]' } },
    ],
  });

  test('composite parameters require all parts in the same repetition', async () => {
    const high = await medplum.createResource(bp(150, 95));
    const highDiastolicOnly = await medplum.createResource(bp(120, 160));
    expect(await moreIds('Observation', `component-code-value-quantity=${LOINC}|8480-6$gt140`)).toEqual([high.id]);
    expect(await moreIds('Observation', `component-code-value-quantity=${LOINC}|8462-4$gt140`)).toEqual([highDiastolicOnly.id]);
    expect((await moreIds('Observation', `component-code-value-quantity=${LOINC}|8462-4$gt90`)).sort()).toEqual([high.id, highDiastolicOnly.id].sort());
    expect((await ids('Observation', `code-value-quantity=${LOINC}|2160-0$gt1.2`)).sort()).toEqual([observations[1].id, observations[3].id].sort());
    expect(await moreIds('Observation', `combo-code-value-quantity=${LOINC}|8480-6$150`)).toEqual([high.id]);
    expect((await server.fhir(`Observation?component-code-value-quantity=${LOINC}|8480-6`)).status).toBe(400);
  });

  test(':in and :not-in test membership of a value set', async () => {
    const vs = await medplum.createResource<ValueSet>({
      resourceType: 'ValueSet',
      status: 'active',
      url: `https://ermis.example/ValueSet/cardiac-${tag}`,
      compose: { include: [{ system: LOINC, concept: [{ code: '10839-9' }, { code: '2157-6' }] }] },
    });
    expect(await ids('Observation', `code:in=${vs.url}`)).toEqual([observations[2].id]);
    expect((await ids('Observation', `code:not-in=${vs.url}&code=${LOINC}|2160-0`)).sort()).toEqual(
      [observations[0].id, observations[1].id, observations[3].id].sort()
    );
    // a code element (no system of its own) against a base value set
    expect((await ids('Patient', 'gender:in=http://hl7.org/fhir/ValueSet/administrative-gender')).length).toBeGreaterThanOrEqual(2);
    expect((await server.fhir('Observation?code:in=https://nowhere.example/vs')).status).toBe(400);
  });

  test(':below and :above follow a code system hierarchy', async () => {
    const system = `urn:test:${tag}:cs`;
    await medplum.createResource<CodeSystem>({
      resourceType: 'CodeSystem',
      status: 'active',
      content: 'complete',
      url: system,
      concept: [{ code: 'heart', concept: [{ code: 'valve', concept: [{ code: 'mitral' }] }] }, { code: 'lung' }],
    });
    const coded = async (code: string): Promise<string> =>
      (await medplum.createResource<Observation>({
        resourceType: 'Observation',
        meta: { tag: [{ system: 'urn:test', code: more() }] },
        status: 'final',
        code: { coding: [{ system, code }] },
      })).id as string;
    const [valve, mitral, lung] = [await coded('valve'), await coded('mitral'), await coded('lung')];
    expect((await moreIds('Observation', `code:below=${system}|heart`)).sort()).toEqual([valve, mitral].sort());
    expect(await moreIds('Observation', `code:below=${system}|mitral`)).toEqual([mitral]);
    expect((await moreIds('Observation', `code:above=${system}|mitral`)).sort()).toEqual([valve, mitral].sort());
    expect(await moreIds('Observation', `code:above=${system}|lung`)).toEqual([lung]);
  });

  test(':of-type matches an identifier by its type', async () => {
    const v2 = 'http://terminology.hl7.org/CodeSystem/v2-0203';
    const p = await medplum.createResource<Patient>({
      resourceType: 'Patient',
      meta: { tag: [{ system: 'urn:test', code: more() }] },
      identifier: [{ type: { coding: [{ system: v2, code: 'MR' }] }, system: 'urn:clinic:mrn', value: `MRN-${tag}` }],
    });
    expect(await moreIds('Patient', `identifier:of-type=${v2}|MR|MRN-${tag}`)).toEqual([p.id]);
    expect(await moreIds('Patient', `identifier:of-type=${v2}|SS|MRN-${tag}`)).toEqual([]);
    expect(await moreIds('Patient', `identifier=urn:clinic:mrn|MRN-${tag}`)).toEqual([p.id]);
    await medplum.deleteResource('Patient', p.id as string);
  });
});

describe('compartments, $everything, $lastn, cursors and estimates', () => {
  test('_compartment and Patient/{id}/{type} search within a patient compartment', async () => {
    expect((await ids('Observation', `_compartment=Patient/${anna.id}`)).sort()).toEqual(observations.slice(0, 3).map((o) => o.id).sort());
    expect(await ids('Patient', `_compartment=Patient/${anna.id}`)).toEqual([anna.id]);
    const res = await server.fhir(`Patient/${nikos.id}/Observation?_tag=urn:test|${tag}&code=2160-0`);
    expect(((await res.json()) as Bundle).entry?.map((e) => e.resource?.id)).toEqual([observations[3].id]);
    expect((await server.fhir(`Patient/${nikos.id}/Organization`)).status).toBe(400);
    expect((await server.fhir(`Patient/${randomUUID()}/Observation`)).status).toBe(404);
  });

  test('Patient/{id}/$everything returns the patient and its compartment, with _type and _since', async () => {
    const all = (await (await server.fhir(`Patient/${anna.id}/$everything`)).json()) as Bundle;
    const got = (all.entry ?? []).map((e) => `${e.resource?.resourceType}/${e.resource?.id}`).sort();
    expect(got).toEqual([`Patient/${anna.id}`, ...observations.slice(0, 3).map((o) => `Observation/${o.id}`)].sort());
    const onlyPatient = (await (await server.fhir(`Patient/${anna.id}/$everything?_type=Patient`)).json()) as Bundle;
    expect(onlyPatient.entry?.map((e) => e.resource?.id)).toEqual([anna.id]);
    const future = (await (await server.fhir(`Patient/${anna.id}/$everything?_since=2100-01-01`)).json()) as Bundle;
    expect(future.entry ?? []).toEqual([]);
    const paged = (await (await server.fhir(`Patient/${anna.id}/$everything?_count=2`)).json()) as Bundle;
    expect(paged.entry).toHaveLength(2);
    expect(paged.total).toBe(4);
  });

  test('Observation/$lastn keeps the newest per code', async () => {
    const res = await server.fhir(`Observation/$lastn?_tag=urn:test|${tag}&subject=Patient/${anna.id}&max=1`);
    const bundle = (await res.json()) as Bundle<Observation>;
    expect(bundle.entry?.map((e) => e.resource?.id).sort()).toEqual([observations[1].id, observations[2].id].sort());
    const two = (await (await server.fhir(`Observation/$lastn?_tag=urn:test|${tag}&subject=Patient/${anna.id}&max=2`)).json()) as Bundle;
    expect(two.entry).toHaveLength(3);
    expect((await server.fhir('Observation/$lastn?max=0')).status).toBe(400);
  });

  test('without _sort, next links carry a cursor; a walk sees every match once', async () => {
    const seen: string[] = [];
    let url: string | undefined = `${server.fhirUrl}Observation?_tag=urn:test|${tag}&_count=1`;
    let pages = 0;
    while (url && pages++ < 20) {
      const bundle = (await (await fetch(url, { headers: server.authorization })).json()) as Bundle;
      seen.push(...(bundle.entry ?? []).map((e) => e.resource?.id as string));
      url = bundle.link?.find((l) => l.relation === 'next')?.url;
      if (url) {
        expect(url).toContain('_cursor=');
      }
    }
    expect(seen.sort()).toEqual(observations.map((o) => o.id).sort());
    expect((await server.fhir('Observation?_cursor=bogus')).status).toBe(400);
  });

  test('_total=estimate is exact for small results', async () => {
    const bundle = (await (await server.fhir(`Observation?_tag=urn:test|${tag}&_total=estimate&_count=1`)).json()) as Bundle;
    expect(bundle.total).toBe(4);
  });
});

describe('unknown parameters', () => {
  test('strict by default: 400; Prefer: handling=lenient ignores them and says so', async () => {
    expect((await server.fhir(`Patient?_tag=urn:test|${tag}&foo=bar`)).status).toBe(400);
    const res = await server.fhir(`Patient?_tag=urn:test|${tag}&foo=bar&gender=male`, { headers: { Prefer: 'handling=lenient' } });
    expect(res.status).toBe(200);
    const bundle = (await res.json()) as Bundle;
    const matches = bundle.entry?.filter((e) => e.search?.mode === 'match').map((e) => e.resource?.id);
    expect(matches).toEqual([nikos.id]);
    const outcome = bundle.entry?.find((e) => e.search?.mode === 'outcome')?.resource as OperationOutcome;
    expect(outcome.issue[0].expression).toEqual(['foo']);
    expect(bundle.link?.find((l) => l.relation === 'self')?.url).not.toContain('foo');
  });
});

describe('results', () => {
  test('_sort on a date, descending, and on a string', async () => {
    expect(await ids('Observation', `subject=Patient/${anna.id}&_sort=-date`)).toEqual([observations[2].id, observations[1].id, observations[0].id]);
    expect(await ids('Patient', '_sort=family')).toEqual([nikos.id, anna.id]);
    expect(await ids('Patient', '_sort=-birthdate')).toEqual([nikos.id, anna.id]);
  });

  test('_count and _offset page with next/previous links; _total=accurate', async () => {
    const res = await server.fhir(`Observation?_tag=urn:test|${tag}&_count=3&_sort=date&_total=accurate`);
    const first = (await res.json()) as Bundle;
    expect(res.status, JSON.stringify(first)).toBe(200);
    expect(first.total).toBe(4);
    expect(first.entry).toHaveLength(3);
    const next = first.link?.find((l) => l.relation === 'next')?.url as string;
    const second = (await (await fetch(next, { headers: server.authorization })).json()) as Bundle;
    expect(second.entry).toHaveLength(1);
    expect(second.link?.find((l) => l.relation === 'next')).toBeUndefined();
    expect(second.link?.find((l) => l.relation === 'previous')).toBeDefined();
    const all = [...(first.entry ?? []), ...(second.entry ?? [])].map((e) => e.resource?.id);
    expect(new Set(all).size).toBe(4);
  });

  test('_include and _revinclude', async () => {
    const withPatient = (await (await server.fhir(`Observation?_tag=urn:test|${tag}&code=10839-9&_include=Observation:subject`)).json()) as Bundle;
    expect(withPatient.entry?.map((e) => [e.resource?.resourceType, e.search?.mode])).toEqual([
      ['Observation', 'match'],
      ['Patient', 'include'],
    ]);
    const withObs = (await (await server.fhir(`Patient?_id=${nikos.id}&_revinclude=Observation:subject`)).json()) as Bundle;
    expect(withObs.entry?.filter((e) => e.search?.mode === 'include').map((e) => e.resource?.id)).toEqual([observations[3].id]);
  });

  test('_type searches several types at once', async () => {
    const res = (await (await server.fhir(`?_type=Patient,Observation&_tag=urn:test|${tag}&_count=100`)).json()) as Bundle;
    const types = (res.entry ?? []).map((e) => e.resource?.resourceType).sort();
    expect(types.filter((t) => t === 'Patient')).toHaveLength(2);
    expect(types.filter((t) => t === 'Observation')).toHaveLength(4);
  });

  test('POST _search takes form parameters, repeated ones included', async () => {
    const res = await server.fhir('Patient/_search', {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
      body: `_tag=urn:test|${tag}&gender=male`,
    });
    const bundle = (await res.json()) as Bundle;
    expect(bundle.entry?.map((e) => e.resource?.id)).toEqual([nikos.id]);
    const ranged = await server.fhir('Patient/_search', {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
      body: `_tag=urn:test|${tag}&birthdate=ge1961-07-14&birthdate=le1961-07-14`,
    });
    expect(((await ranged.json()) as Bundle).entry?.map((e) => e.resource?.id)).toEqual([anna.id]);
  });

  test('_count=0 reports the real total; an _offset beyond the limit is a 400; unsupported parameters are a 400', async () => {
    const counted = (await (await server.fhir(`Patient?_tag=urn:test|${tag}&_count=0`)).json()) as Bundle;
    expect(counted.total).toBe(2);
    expect(counted.entry ?? []).toHaveLength(0);
    expect((await server.fhir(`Patient?_offset=99999999999999999999`)).status).toBe(400);
    expect((await server.fhir(`Patient/_history?_offset=1e21`)).status).toBe(400);
    expect((await server.fhir(`Patient?_project=${randomUUID()}`)).status).toBe(400);
    const history = (await (await server.fhir(`Patient/${anna.id}/_history?_count=0`)).json()) as Bundle;
    expect(history.total).toBe(1);
  });

  test('GraphQL reverse references use searchByReference', async () => {
    const res = await server.fhir('$graphql', {
      method: 'POST',
      headers: FHIR_JSON,
      body: JSON.stringify({ query: `{ PatientList(_id: "${anna.id}") { id ObservationList(_reference: subject, _sort: "date") { id } } }` }),
    });
    const body = (await res.json()) as { data: { PatientList: { id: string; ObservationList: { id: string }[] }[] } };
    expect(body.data.PatientList[0].ObservationList.map((o) => o.id)).toEqual(observations.slice(0, 3).map((o) => o.id));
  });
});

describe('project isolation in the repository', () => {
  test('another project sees none of these resources: read, search, history, vread, references', async () => {
    const other = randomUUID();
    const repo = server.services.repo({ projectId: other, readProjects: [other], author: { reference: 'system' } });
    await expect(repo.readResource('Patient', anna.id as string)).rejects.toThrow('Not found');
    await expect(repo.readVersion('Patient', anna.id as string, anna.meta?.versionId as string)).rejects.toThrow('Not found');
    await expect(repo.readHistory('Patient', anna.id as string)).rejects.toThrow('Not found');
    const found = await repo.searchResources({ resourceType: 'Patient', filters: [{ code: '_tag', operator: 'eq', value: `urn:test|${tag}` }] });
    expect(found).toEqual([]);
    const history = await repo.readTypeHistory('Patient');
    expect(history.entry ?? []).toEqual([]);
    await expect(
      repo.createResource<Observation>({
        resourceType: 'Observation',
        status: 'final',
        code: { text: 'x' },
        subject: { reference: `Patient?identifier=urn:cy:id|A-${tag}` },
      })
    ).rejects.toThrow('matched no resource');
    // the same id in another project is another resource: writing it neither fails nor touches this one
    const own = await repo.upsertResource({ ...anna, meta: undefined, gender: 'other' });
    expect(own.created).toBe(true);
    expect((await medplum.readResource('Patient', anna.id as string)).gender).toBe('female');
    // a context that may read this project still writes only to its own
    const reader = server.services.repo({ projectId: other, readProjects: [other, server.projectId], author: { reference: 'system' } });
    expect((await reader.readResource<Patient>('Patient', anna.id as string)).gender).toBe('other');
    await reader.updateResource({ ...anna, meta: undefined, gender: 'unknown' });
    expect((await medplum.readResource('Patient', anna.id as string)).gender).toBe('female');
  });

  test('a conditional reference needs criteria', async () => {
    const res = await server.fhir('Observation', {
      method: 'POST',
      headers: FHIR_JSON,
      body: JSON.stringify({ resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient?' } }),
    });
    expect(res.status).toBe(400);
  });
});
