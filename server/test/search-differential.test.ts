/**
 * Differential search tests: a few hundred FHIR searches run against the server (over HTTP, real
 * Postgres) and against the same data loaded into `MemoryRepository` from `@medplum/fhir-router`
 * (core's in-memory matcher) as the reference. Where the reference is known to be wrong, a small
 * oracle implementing the R4 rule answers instead — see search-oracle.ts, which says for every kind
 * of filter why the reference cannot be trusted there.
 *
 * - The data set (search-corpus.ts) is generated from a fixed seed; only the server-assigned ids and
 *   meta.lastUpdated differ between runs, and every expectation is computed from what the server stored.
 * - Queries name resources by local key: `@{pat-3}` becomes the server id of the corpus's Patient 3,
 *   `@{base}` the FHIR base URL, `@{lu:key}` / `@{lus:key}` its meta.lastUpdated (ms / s precision),
 *   `@{upper:key}` its id in upper case.
 * - Each query is scoped to this run's tag and asks for `_count=1000&_total=accurate`; the matches are
 *   compared as sets, in order when `_sort` is given (ties: any order within equal sort keys), the
 *   `_include`/`_revinclude` entries as sets, and `total` with the number of matches.
 * - `PENDING_FEATURES`: searches the server does not implement yet; they run as `test.fails` and must
 *   move into the corpus once they pass. `KNOWN_SERVER_BUGS`: queries of implemented features where
 *   the server answers differently from R4; also `test.fails`, each with the rule it breaks.
 */
import type {
  Bundle,
  BundleEntry,
  Condition,
  DiagnosticReport,
  Encounter,
  Observation,
  Patient,
  Resource,
  RiskAssessment,
} from '@medplum/fhirtypes';
import type { SearchRequest, SortRule, WithId } from '@medplum/core';
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { FHIR_JSON, startTestServer } from './harness.ts';
import type { TestServer } from './harness.ts';
import {
  CY_ID,
  DIAGNOSES_CS,
  LOINC,
  MRN,
  Rand,
  RENAL_VS,
  SNOMED,
  UCUM,
  generateCorpus,
  mapReferences,
} from './search-corpus.ts';
import type { Corpus } from './search-corpus.ts';
import { compareSortKeys, expectedResult, parseQuery, SearchWorld, sortKeys } from './search-oracle.ts';
import type { Expected, FilterVerdict } from './search-oracle.ts';

const SEED = 20240611;
/** Unique to this run, on every resource, so that queries see only this data set. */
const TAG = `differential-${process.pid}-${Date.now().toString(36)}`;
const corpus = generateCorpus(SEED, TAG);

// ------------------------------------------------------------------------------------------------
// Query specs

type Kind =
  | 'string'
  | 'token'
  | 'reference'
  | 'reference :Type'
  | 'date'
  | 'number'
  | 'quantity'
  | 'uri'
  | '_id'
  | '_lastUpdated'
  | ':missing'
  | '_sort'
  | 'paging'
  | 'chain'
  | '_has'
  | '_include/_revinclude'
  | 'composite'
  | 'terminology modifiers'
  | 'compartment'
  | 'handling'
  | '_list';

interface QuerySpec {
  kind: Kind;
  /** `Type?a=b&…` (or `Patient/@{key}/Type?…` for a compartment), values unencoded. */
  q: string;
  headers?: Record<string, string>;
  /** Parameters the server is expected to ignore (Prefer: handling=lenient). */
  ignored?: string[];
  /** An expected error status instead of results. */
  status?: number;
}

const PREFIXES = ['eq', 'ne', 'lt', 'gt', 'le', 'ge', 'sa', 'eb'];

function buildCorpusQueries(c: Corpus): QuerySpec[] {
  const r = new Rand(SEED + 1);
  const specs: QuerySpec[] = [];
  const seen = new Set<string>();
  const add = (kind: Kind, ...qs: string[]): void => {
    for (const q of qs) {
      if (!seen.has(q)) {
        seen.add(q);
        specs.push({ kind, q });
      }
    }
  };
  const res = <T extends Resource>(key: string): T => c.byKey.get(key) as T;
  const patients = c.keys.Patient.map((k) => [k, res<Patient>(k)] as const);
  const observations = c.keys.Observation.map((k) => [k, res<Observation>(k)] as const);
  const stripAccents = (s: string): string => s.normalize('NFD').replace(/\p{M}/gu, '');

  // ---- string (R4 #string)
  const families = [...new Set(patients.flatMap(([, p]) => (p.name ?? []).map((n) => n.family)).filter((f): f is string => !!f))];
  for (const family of families) {
    const prefix = family.slice(0, 3 + r.int(0, 2));
    add('string', `Patient?family=${prefix}`, `Patient?family=${stripAccents(prefix).toUpperCase()}`);
    if (r.chance(0.5)) {
      add('string', `Patient?family:exact=${family}`, `Patient?family:contains=${family.slice(2, 5)}`);
    }
  }
  const givens = [...new Set(patients.flatMap(([, p]) => (p.name ?? []).flatMap((n) => n.given ?? [])))];
  for (const given of givens.slice(0, 10)) {
    add('string', `Patient?given=${stripAccents(given.slice(0, 3)).toLowerCase()}`, `Patient?given:exact=${given}`);
  }
  add(
    'string',
    'Patient?family=smith',
    'Patient?family:exact=Smith',
    'Patient?family:exact=smith',
    'Patient?family=SMITH,γεωργ',
    'Patient?given=άννα&family=ανδρ',
    'Patient?name=andreou',
    'Patient?name=ανδρεου',
    'Patient?name=ο αγνωστος',
    'Patient?name:contains=ασθεν',
    'Patient?family=muller',
    'Patient?family=MÜLLER',
    'Patient?family=dvorak',
    'Patient?family=astrom',
    'Patient?given=zoe',
    'Patient?given=ZOË',
    'Patient?family:exact=Παπαδόπουλος',
    'Patient?family:exact=ΠΑΠΑΔΌΠΟΥΛΟΣ',
    'Patient?family:contains=ΣΤΑΥ',
    'Patient?family=κωνσταντινου',
    // Final sigma: "ΠΑΠΑΣ" lower-cases to "παπας" (ς at the end of a word) but is a prefix of
    // "Παπασταύρου"; case-insensitive matching must treat ς and σ as the same letter.
    'Patient?family=ΠΑΠΑΣ',
    'Patient?family=παπαδοπουλοσ',
    'Patient?address=λευκ',
    'Patient?address-city=ZUR',
    'Patient?address-city:exact=Zürich',
    'Patient?address-city:exact=zurich',
    'Patient?address-postalcode=30',
    'Patient?address-country=CH',
    'Patient?address:contains=ερμο',
    'Patient?address=οδος ανεξ',
    'Patient?address=lim,πάφ',
    'Practitioner?name=δρ',
    'Practitioner?name=dr.',
    'Practitioner?family=χριστ',
    'Practitioner?family=CAPEK',
    'Practitioner?family=papa',
    'Practitioner?address-city=λεμ',
    'Organization?name=γενικ',
    'Organization?name=nicosia',
    'Organization?name:contains=κλινικ',
    'Organization?name:exact=Limassol Clinic',
    'Organization?address-city=λαρν',
    'Observation?value-string=καλο',
    'Observation?value-string:exact=Benign lesion',
    'Observation?value-string:contains=neoplasm',
    'Observation?value-string=ΚΑΚΟΗΘΕΙΑ',
    'Condition?onset-info=child',
    'Condition?onset-info=CHILDHOOD,after',
    'Condition?abatement-string=μετα',
    'Condition?abatement-string:exact=after treatment'
  );

  // ---- token (R4 #token)
  add(
    'token',
    `Observation?code=${LOINC}|2160-0`,
    'Observation?code=2160-0',
    'Observation?code=|legacy-123',
    'Observation?code=|2160-0',
    `Observation?code=${LOINC}|`,
    `Observation?code=${SNOMED}|33747003`,
    'Observation?code=2160-0,718-7',
    `Observation?code=${LOINC}|2160-0,${SNOMED}|33747003`,
    `Observation?code:not=${LOINC}|85354-9`,
    'Observation?code:not=2160-0,718-7,8867-4',
    'Observation?code:text=creat',
    'Observation?code:text=αιμοσφ',
    'Observation?code:text=γενικη',
    'Observation?code:text=HEART',
    'Observation?code:text=body',
    'Observation?code=CBC-GR',
    'Observation?code=cbc-gr',
    'Observation?combo-code=8480-6',
    `Observation?component-code=${LOINC}|8462-4`,
    'Observation?category=vital-signs',
    'Observation?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory',
    'Observation?category=social-history,vital-signs',
    'Observation?status=final,amended',
    'Observation?status:not=final',
    'Observation?status=FINAL',
    `Observation?value-concept=${SNOMED}|8517006`,
    'Observation?combo-value-concept=449868002',
    'Observation?data-absent-reason=error',
    'Observation?component-data-absent-reason=not-performed',
    'Observation?combo-data-absent-reason=not-performed',
    'Observation?identifier=http://lab.example.org/accession|ACC-17',
    `Patient?identifier=${CY_ID}|CY700137`,
    'Patient?identifier=CY700137',
    'Patient?identifier=|LEGACY-2',
    'Patient?identifier=LEGACY-2',
    `Patient?identifier=${MRN}|`,
    'Patient?identifier=MRN-00003A',
    'Patient?identifier=mrn-00003a',
    `Patient?identifier=${CY_ID}|cy999001`,
    `Patient?identifier=${CY_ID}|CY999001`,
    'Patient?identifier:text=medical',
    'Patient?identifier:text=διαβ',
    `Patient?identifier:not=${CY_ID}|`,
    'Patient?gender=female',
    'Patient?gender=female,other',
    'Patient?gender:not=male',
    'Patient?gender=FEMALE',
    'Patient?email=asthenis.0@example.com',
    'Patient?email=PATIENT.6@GMAIL.COM',
    'Patient?email=Patient.6@GMAIL.com',
    'Patient?telecom=email|asthenis.1@mail.example.org',
    'Patient?phone=+357 22 100031',
    'Patient?active=true',
    'Patient?active=false',
    'Patient?active:not=true',
    'Patient?address-use=home',
    'Encounter?class=IMP',
    'Encounter?class=http://terminology.hl7.org/CodeSystem/v3-ActCode|EMER',
    'Encounter?class=imp',
    'Encounter?status=finished',
    'Encounter?status:not=finished,cancelled',
    `Encounter?reason-code=${SNOMED}|44054006`,
    'Encounter?identifier=V-5003',
    'Condition?clinical-status=active',
    'Condition?clinical-status=active,recurrence,relapse',
    'Condition?clinical-status:not=resolved',
    'Condition?verification-status=http://terminology.hl7.org/CodeSystem/condition-ver-status|confirmed',
    'Condition?severity=24484000',
    'Condition?category=problem-list-item',
    `Condition?code=${DIAGNOSES_CS}|dm2`,
    `Condition?code=${DIAGNOSES_CS}|`,
    'Condition?code:text=diabetes',
    'Condition?code:text=essential',
    'Condition?code:text=ESSENTIAL HYP',
    `Condition?code=${SNOMED}|44054006`,
    'Organization?type=prov',
    'Organization?active=true',
    'Organization?active:not=false',
    'Organization?identifier=ORG-101',
    'Practitioner?qualification-code=MD',
    'Practitioner?email=doc3.iatros@hospital.example.org',
    'Practitioner?email=DOC4.MEDIC@HOSPITAL.EXAMPLE.ORG',
    'Practitioner?active=false',
    'Practitioner?identifier=urn:cy:medical-council|MC-2007',
    'DiagnosticReport?status=final',
    'DiagnosticReport?category=LAB',
    'DiagnosticReport?conclusion=17621005',
    `DiagnosticReport?code=${LOINC}|58410-2`,
    'DiagnosticReport?code:text=cbc',
    'RiskAssessment?risk=high',
    'RiskAssessment?risk=http://terminology.hl7.org/CodeSystem/risk-probability|low'
  );

  // ---- reference (R4 #reference)
  const withMostObs = mostReferenced(observations.map(([, o]) => o.subject?.reference));
  const firstCodeOf = (patient: string): string | undefined =>
    observations.find(([, o]) => o.subject?.reference === `@${patient}`)?.[1].code.coding?.[0].code;
  const withEncounters = mostReferenced(c.keys.Encounter.map((k) => res<Encounter>(k).subject?.reference));
  const resultObs = c.keys.DiagnosticReport.flatMap((k) => (res<DiagnosticReport>(k).result ?? []).map((x) => x.reference?.slice(1)));
  const condSubject = mostReferenced(c.keys.Condition.map((k) => res<Condition>(k).subject?.reference));
  const condEncounter = c.keys.Condition.map((k) => res<Condition>(k).encounter?.reference?.slice(1)).find(Boolean);
  add(
    'reference',
    `Observation?subject=Patient/@{${withMostObs}}`,
    `Observation?patient=@{${withMostObs}}`,
    `Observation?subject=Patient/@{${withMostObs}},Patient/@{pat-2}`,
    `Observation?subject=@{base}Patient/@{${withMostObs}}`,
    `Observation?subject=Patient/@{${withMostObs}}&code=${LOINC}|${firstCodeOf(withMostObs)}`,
    'Observation?performer=Practitioner/@{prac-2}',
    'Observation?performer=Organization/@{org-1}',
    'Observation?encounter=Encounter/@{enc-18}',
    `Observation?subject:identifier=${CY_ID}|CY-EXT-23`,
    'Observation?subject:identifier=CY-EXT-73',
    'Observation?derived-from=Observation/@{obs-0}',
    'Observation?subject=Patient/does-not-exist',
    'Patient?organization=@{org-1}',
    'Patient?organization=Organization/@{org-3}',
    'Patient?general-practitioner=Practitioner/@{prac-0}',
    'Patient?general-practitioner=Organization/@{org-1}',
    `Encounter?subject=Patient/@{${withEncounters}}`,
    'Encounter?practitioner=@{prac-1}',
    'Encounter?participant=Practitioner/@{prac-1}',
    'Encounter?service-provider=@{org-2}',
    `DiagnosticReport?result=@{${resultObs[0]}}`,
    `DiagnosticReport?result=Observation/@{${resultObs[1]}},Observation/@{${resultObs[5]}}`,
    'DiagnosticReport?performer=Organization/@{org-4}',
    `DiagnosticReport?subject=Patient/@{${withMostObs}}`,
    `Condition?subject=Patient/@{${condSubject}}`,
    `Condition?encounter=@{${condEncounter}}`,
    'Condition?asserter=Practitioner/@{prac-3}',
    'Organization?partof=@{org-0}',
    'Organization?partof=Organization/@{org-1}',
    `RiskAssessment?subject=Patient/@{${mostReferenced(c.keys.RiskAssessment.map((k) => res<RiskAssessment>(k).subject?.reference))}}`
  );
  add(
    'reference :Type',
    `Observation?subject:Patient=@{${withMostObs}}`,
    'Observation?performer:Practitioner=@{prac-2}',
    `Observation?subject:Group=@{${withMostObs}}`,
    'Patient?general-practitioner:Organization=@{org-1}'
  );

  // ---- date (R4 #date, #prefix)
  for (const value of ['1961', '1961-07', '1961-07-14', '1975-06', '1975-06-15', '1950-06-30']) {
    for (const prefix of PREFIXES) {
      add('date', `Patient?birthdate=${prefix}${value}`);
    }
  }
  add(
    'date',
    'Patient?birthdate=1961,1975',
    'Patient?birthdate=ge1960&birthdate=lt1970',
    'Patient?birthdate=2014',
    'Patient?birthdate=ge2000-01-01T00:00:00Z',
    'Patient?birthdate=lt1961-07-14T12:00:00+03:00'
  );
  const secondsObs = observations.find(([, o]) => o.effectiveDateTime?.endsWith('+03:00'))?.[1].effectiveDateTime as string;
  const zObs = observations.find(([, o]) => o.effectiveDateTime?.length === 20)?.[1].effectiveDateTime as string;
  const instantObs = observations.find(([, o]) => o.effectiveInstant)?.[1].effectiveInstant as string;
  const dayObs = observations.filter(([, o]) => o.effectiveDateTime?.length === 10)[3][1].effectiveDateTime as string;
  for (const value of [secondsObs, zObs, dayObs, '2023-01', '2021']) {
    for (const prefix of PREFIXES) {
      add('date', `Observation?date=${prefix}${value}`);
    }
  }
  add(
    'date',
    `Observation?date=${new Date(Date.parse(secondsObs)).toISOString().replace('.000Z', 'Z')}`,
    `Observation?date=${instantObs.slice(0, 19)}Z`,
    `Observation?date=${instantObs}`,
    `Observation?date=${instantObs.slice(0, 22)}Z`,
    'Observation?date=ge2022-04-08&date=le2022-04-09',
    'Observation?date=lt2020',
    'Observation?date=eb2020-01-16',
    'Observation?date=sa2025-06',
    'Observation?date=2022,2024'
  );
  for (const value of ['2022', '2021-06', '2023-03-15']) {
    for (const prefix of PREFIXES) {
      add('date', `Encounter?date=${prefix}${value}`);
    }
  }
  add(
    'date',
    'Encounter?date=ge2021-06-01&date=le2021-06-30',
    'Encounter?date=gt2025-06',
    'Condition?onset-date=2010',
    'Condition?onset-date=lt2000',
    'Condition?onset-date=ge2015-03',
    'Condition?onset-date=eb2010-01-01',
    'Condition?onset-date=sa2020',
    'Condition?onset-date=ne2010',
    'Condition?recorded-date=gt2024-06-30T12:00:00+02:00',
    'Condition?recorded-date=le2019',
    'DiagnosticReport?issued=ge2023-01-01T00:00:00Z',
    `DiagnosticReport?issued=${res<DiagnosticReport>('dr-0').issued}`,
    `DiagnosticReport?issued=${(res<DiagnosticReport>('dr-3').issued as string).slice(0, 19)}Z`,
    `DiagnosticReport?issued=lt${(res<DiagnosticReport>('dr-3').issued as string).slice(0, 19)}Z`,
    'DiagnosticReport?date=2022',
    'RiskAssessment?date=ge2023',
    'RiskAssessment?date=lt2021-06-30'
  );

  // ---- _lastUpdated (values known only once the server has stored the data)
  add(
    '_lastUpdated',
    'Patient?_lastUpdated=ge@{lu:pat-0}',
    'Patient?_lastUpdated=gt@{lu:pat-0}',
    'Patient?_lastUpdated=lt@{lu:enc-0}',
    'Observation?_lastUpdated=@{lu:obs-5}',
    'Observation?_lastUpdated=@{lus:obs-5}',
    'Observation?_lastUpdated=le@{lu:obs-100}',
    'DiagnosticReport?_lastUpdated=sa@{lu:obs-0}',
    'Encounter?_lastUpdated=eb@{lu:obs-0}',
    'Encounter?_lastUpdated=ne@{lu:enc-0}',
    'Condition?_lastUpdated=ge2000-01-01'
  );

  // ---- number (R4 #number)
  for (const value of ['0.15', '0.150', '0.1', '1', '1.0', '1e-1', '0.149', '0.5']) {
    add('number', `RiskAssessment?probability=${value}`);
  }
  add(
    'number',
    'RiskAssessment?probability=gt0.5',
    'RiskAssessment?probability=ge0.5',
    'RiskAssessment?probability=lt0.1',
    'RiskAssessment?probability=le0.1',
    'RiskAssessment?probability=ne0.75',
    'RiskAssessment?probability=sa0.5',
    'RiskAssessment?probability=eb0.1',
    'RiskAssessment?probability=ap0.8',
    'RiskAssessment?probability=gt1e-1',
    'RiskAssessment?probability=0.3,0.9'
  );

  // ---- quantity (R4 #quantity)
  add(
    'quantity',
    'Observation?value-quantity=1.8',
    `Observation?value-quantity=1.8|${UCUM}|mg/dL`,
    'Observation?value-quantity=gt100',
    `Observation?value-quantity=gt100|${UCUM}|mg/dL`,
    'Observation?value-quantity=lt1',
    'Observation?value-quantity=le1.02',
    'Observation?value-quantity=ge37.5||Cel',
    'Observation?value-quantity=ge37.5||°C',
    'Observation?value-quantity=37.6||Cel',
    'Observation?value-quantity=37.60',
    'Observation?value-quantity=1e2',
    'Observation?value-quantity=100||mg',
    'Observation?value-quantity=100',
    'Observation?value-quantity=ne100',
    'Observation?value-quantity=sa150',
    'Observation?value-quantity=eb0.7',
    'Observation?value-quantity=ap100',
    'Observation?value-quantity=85.167',
    'Observation?value-quantity=85.17',
    'Observation?value-quantity=85.2',
    'Observation?value-quantity=85.1670',
    'Observation?value-quantity=79.95',
    'Observation?value-quantity=80',
    `Observation?value-quantity=gt1.5&code=${LOINC}|2160-0`,
    'Observation?component-value-quantity=gt140',
    `Observation?component-value-quantity=gt140|${UCUM}|mm[Hg]`,
    'Observation?component-value-quantity=gt140||mmHg',
    'Observation?component-value-quantity=lt60',
    'Observation?combo-value-quantity=gt150',
    'Observation?combo-value-quantity=lt0.7',
    'Encounter?length=gt120',
    'Encounter?length=le30||min',
    `Encounter?length=203|${UCUM}|min`,
    'Encounter?length=ge1e3',
    'Condition?onset-age=ge65',
    `Condition?onset-age=lt30|${UCUM}|a`
  );

  // ---- uri (R4 #uri)
  add(
    'uri',
    'Patient?_source=http://lab.example.org/lis/a',
    'Observation?_source=http://lab.example.org/lis',
    'Observation?_source=http://lab.example.org/lis/a,urn:oid:1.2.196.7',
    'Observation?_source:below=http://lab.example.org/',
    'Observation?_source:below=http://lab.example',
    'Observation?_source:above=http://lab.example.org/lis/b/sub/path',
    'Encounter?_source=urn:oid:1.2.196.7'
  );

  // ---- _id
  add(
    '_id',
    'Patient?_id=@{pat-3}',
    'Patient?_id=@{pat-3},@{pat-5},@{pat-62}',
    'Patient?_id=@{pat-3}&gender=male',
    'Patient?_id:not=@{pat-3}',
    'Patient?_id=@{upper:pat-3}',
    'Observation?_id=@{obs-10},@{pat-3}'
  );

  // ---- :missing (R4 #missing)
  add(
    ':missing',
    'Patient?birthdate:missing=true',
    'Patient?birthdate:missing=false',
    'Patient?gender:missing=true',
    'Patient?email:missing=true',
    'Patient?address-city:missing=true',
    'Patient?family:missing=true',
    'Patient?general-practitioner:missing=true',
    'Observation?value-quantity:missing=true',
    'Observation?value-quantity:missing=false',
    'Observation?date:missing=true',
    'Observation?encounter:missing=true',
    'Observation?subject:missing=true',
    'Observation?patient:missing=true',
    'Observation?performer:missing=false',
    'Observation?component-code:missing=false',
    'Condition?onset-date:missing=true',
    'Condition?abatement-string:missing=false',
    'RiskAssessment?probability:missing=true',
    'Organization?partof:missing=true',
    'Condition?_source:missing=true'
  );

  // ---- _sort (R4 #_sort)
  add(
    '_sort',
    'Patient?_sort=birthdate',
    'Patient?_sort=-birthdate',
    'Patient?_sort=family',
    'Patient?_sort=-family',
    'Patient?_sort=given',
    'Patient?_sort=gender,-birthdate',
    'Patient?_sort=_id',
    'Patient?_sort=-_lastUpdated,_id',
    `Observation?code=${LOINC}|2160-0&_sort=-date`,
    'Observation?category=vital-signs&_sort=date',
    `Observation?code=${LOINC}|8310-5&_sort=value-quantity`,
    `Observation?code=${LOINC}|29463-7&_sort=-value-quantity`,
    'Observation?_sort=status,-date',
    'Observation?_sort=code,date',
    'Observation?category=laboratory&_sort=subject,date',
    'Encounter?_sort=date',
    'Encounter?_sort=-date',
    'Condition?_sort=recorded-date',
    'Condition?_sort=onset-date',
    'RiskAssessment?_sort=-probability',
    'DiagnosticReport?_sort=-issued'
  );

  // ---- paging walks: follow `next` until there is none
  add(
    'paging',
    'Patient?_sort=family&_count=7',
    'Patient?_sort=-birthdate,_id&_count=8',
    'Observation?category=vital-signs&_sort=-date&_count=10',
    'Observation?_sort=_id&_count=25',
    'Patient?_count=9',
    'Encounter?_sort=date&_count=11&_offset=5',
    `Observation?code=${LOINC}|2160-0,${LOINC}|2345-7&_sort=value-quantity&_count=6`,
    'Condition?_sort=-recorded-date&_count=4'
  );

  // ---- chains (R4 #chaining)
  const someCy = patients.map(([, p]) => p.identifier?.find((i) => i.system === CY_ID)?.value).find(Boolean);
  // a patient with a CY identifier who has an encounter that some observation points to
  const encounterPatientCy = observations
    .map(([, o]) => o.encounter?.reference && res<Encounter>(o.encounter.reference.slice(1)).subject?.reference)
    .map((p) => p && res<Patient>(p.slice(1)).identifier?.find((i) => i.system === CY_ID)?.value)
    .find(Boolean);
  add(
    'chain',
    'Observation?subject:Patient.name=ανδρ',
    'Observation?subject:Patient.birthdate=lt1950',
    'Observation?patient.gender=female',
    `Observation?subject:Patient.identifier=${CY_ID}|${someCy}`,
    'Observation?encounter:Encounter.class=IMP',
    `Observation?encounter.subject.identifier=${CY_ID}|${encounterPatientCy}`,
    'Observation?subject:Patient.organization.name=limassol',
    'Observation?subject:Patient.organization.partof.name=δίκτυο',
    'DiagnosticReport?result.subject:Patient.family=κωνσταντ',
    `DiagnosticReport?result.code=${LOINC}|2160-0`,
    'DiagnosticReport?result.value-quantity=gt1.5',
    'Encounter?practitioner.name=δρ',
    'Condition?encounter.service-provider.name=limassol',
    'Patient?general-practitioner:Practitioner.family=χριστ',
    'Patient?organization.name:contains=κλινικ',
    'Observation?subject:Patient.name:exact=Άννα',
    `Observation?performer:Practitioner.gender=female&code=${LOINC}|8310-5`,
    // no type: every target type that has the next parameter (R4 #chaining)
    'Patient?general-practitioner.name=limassol',
    'Patient?general-practitioner.name=δρ',
    'Observation?subject.name=ανδρ',
    'Observation?subject:Patient._id=@{pat-47}',
    'Observation?subject:Patient.birthdate:missing=true'
  );

  // ---- _has (R4 #has)
  add(
    '_has',
    `Patient?_has:Observation:subject:code=${LOINC}|85354-9`,
    'Patient?_has:Observation:patient:code=2160-0',
    `Patient?_has:Condition:subject:code=${DIAGNOSES_CS}|dm2`,
    'Patient?_has:Observation:subject:value-quantity=gt150',
    'Encounter?_has:Observation:encounter:category=vital-signs',
    'Practitioner?_has:Encounter:practitioner:class=EMER',
    'Organization?_has:Patient:organization:gender=female',
    'Observation?_has:DiagnosticReport:result:status=final',
    'Patient?_has:Observation:subject:_has:DiagnosticReport:result:conclusion=263654008',
    'Patient?_has:Condition:subject:clinical-status=active&gender=female',
    `Patient?_has:Observation:subject:code=2160-0&_has:Condition:subject:code=${DIAGNOSES_CS}|htn-essential`,
    'Patient?_has:Observation:subject:_id=@{obs-5}',
    'Patient?_has:Observation:subject:code:text=creat'
  );

  // ---- _include / _revinclude (R4 #include, #revinclude)
  add(
    '_include/_revinclude',
    `Observation?code=${LOINC}|718-7&_include=Observation:subject`,
    `Observation?code=${LOINC}|8310-5&_include=Observation:performer:Practitioner`,
    'Observation?category=social-history&_include=Observation:encounter&_include=Observation:subject',
    'DiagnosticReport?status=final&_include=DiagnosticReport:result',
    'DiagnosticReport?_include=DiagnosticReport:result&_include:iterate=Observation:subject',
    'Patient?gender=other&_revinclude=Observation:subject',
    'Patient?family=smith&_revinclude=Condition:subject&_revinclude=Encounter:subject',
    'Organization?_revinclude=Patient:organization',
    'Encounter?class=EMER&_include=Encounter:subject&_revinclude=Observation:encounter',
    'Organization?name=καρδ&_include=Organization:partof&_include:iterate=Organization:partof',
    'Encounter?_id=@{enc-18}&_revinclude=Observation:encounter&_revinclude:iterate=DiagnosticReport:result'
  );

  // ---- terminology-aware token modifiers (R4 #token :in, :not-in, :below, :above, :of-type)
  add(
    'terminology modifiers',
    `Observation?code:in=${RENAL_VS}`,
    `Observation?code:not-in=${RENAL_VS}`,
    `Condition?code:below=${DIAGNOSES_CS}|cardio`,
    `Condition?code:below=${DIAGNOSES_CS}|dm`,
    `Condition?code:above=${DIAGNOSES_CS}|htn-essential`,
    'Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|MRN-00003A'
  );

  // ---- composites (R4 #composite: both parts hold for the same element, e.g. the same component)
  add(
    'composite',
    `Observation?code-value-quantity=${LOINC}|2160-0$gt1.2`,
    `Observation?component-code-value-quantity=${LOINC}|8480-6$gt140`,
    `Observation?component-code-value-quantity=${LOINC}|8462-4$gt120`,
    `Observation?combo-code-value-quantity=${LOINC}|8462-4$lt60`,
    `Observation?code-value-concept=${LOINC}|72166-2$${SNOMED}|8517006`
  );

  // ---- compartments: Medplum's _compartment parameter and R4's compartment search URL
  add(
    'compartment',
    'Observation?_compartment=Patient/@{pat-47}',
    'Patient/@{pat-47}/Observation?category=vital-signs',
    'Patient/@{pat-19}/Condition'
  );
  return specs;
}

/** The local key (`pat-3`) referred to most often in a list of `@key` references. */
function mostReferenced(refs: (string | undefined)[]): string {
  const counts = new Map<string, number>();
  for (const ref of refs) {
    if (ref?.startsWith('@')) {
      counts.set(ref.slice(1), (counts.get(ref.slice(1)) ?? 0) + 1);
    }
  }
  return [...counts.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))[0][0];
}

/**
 * Searches the server does not implement yet. Each must fail today (test.fails); when one passes, the
 * feature has landed and the query belongs in the corpus above.
 */
const PENDING_FEATURES: QuerySpec[] = [
  // R4 #list: `_list` (resources referenced by a List)
  { kind: '_list', q: 'Patient?_list=@{list-0}' },
  { kind: '_list', q: 'Patient?_list=@{list-0}&gender=female' },
];

/**
 * Queries of implemented features where the server's answer differs from R4 (checked against the
 * oracle, with the rule). They run as test.fails so that CI stays green; each must move back into
 * the corpus once the server is fixed.
 */
const KNOWN_SERVER_BUGS: { q: string; rule: string }[] = [];

/** `Prefer: handling` (R4 http.html#prefer and search.html#errors). */
const HANDLING_SPECS: QuerySpec[] = [
  { kind: 'handling', q: 'Patient?family=smith&not-a-param=1', headers: { Prefer: 'handling=lenient' }, ignored: ['not-a-param'] },
  { kind: 'handling', q: 'Observation?code=2160-0&_foo=bar', headers: { Prefer: 'handling=lenient' }, ignored: ['_foo'] },
  { kind: 'handling', q: 'Patient?not-a-param=1', headers: { Prefer: 'handling=strict' }, status: 400 },
  { kind: 'handling', q: 'Patient?family:foo=smith', headers: { Prefer: 'handling=strict' }, status: 400 },
];

const CORPUS_QUERIES = buildCorpusQueries(corpus);

// ------------------------------------------------------------------------------------------------
// Loading the data set

let server: TestServer;
let world: SearchWorld;
/** Local key → server id, and back. */
const idOf = new Map<string, string>();
const keyOf = new Map<string, string>();
const stored = new Map<string, WithId<Resource>>();

beforeAll(async () => {
  server = await startTestServer();
  for (const [b, batch] of corpus.batches.entries()) {
    if (b > 0) {
      await new Promise((resolve) => setTimeout(resolve, 25)); // batches get distinct lastUpdated
    }
    const uuids = new Map(batch.map((e) => [e.key, randomUUID()]));
    const bundle: Bundle = {
      resourceType: 'Bundle',
      type: 'transaction',
      entry: batch.map((e) => ({
        fullUrl: `urn:uuid:${uuids.get(e.key)}`,
        request: { method: 'POST', url: e.resource.resourceType },
        resource: mapReferences(e.resource, (key) => {
          const id = idOf.get(key);
          if (id) {
            return `${corpus.byKey.get(key)?.resourceType}/${id}`;
          }
          const uuid = uuids.get(key);
          if (!uuid) {
            throw new Error(`reference to ${key}, which is not loaded before batch ${b}`);
          }
          return `urn:uuid:${uuid}`;
        }),
      })),
    };
    const res = await server.fhir('', { method: 'POST', headers: FHIR_JSON, body: JSON.stringify(bundle) });
    const body = (await res.json()) as Bundle;
    if (res.status !== 200) {
      throw new Error(`loading batch ${b} failed: ${res.status} ${JSON.stringify(body).slice(0, 2000)}`);
    }
    for (const [i, entry] of (body.entry ?? []).entries()) {
      const id = entry.resource?.id ?? /^[A-Za-z]+\/([^/]+)/.exec(entry.response?.location ?? '')?.[1];
      if (!id) {
        throw new Error(`no id for ${batch[i].key}: ${JSON.stringify(entry.response)}`);
      }
      idOf.set(batch[i].key, id);
      keyOf.set(id, batch[i].key);
    }
  }
  // Read everything back exactly as stored (ids, references, meta.lastUpdated) for the reference.
  for (const [type, keys] of Object.entries(corpus.keys)) {
    const res = await server.fhir(`${type}?_tag=${encodeURIComponent(`urn:test|${TAG}`)}&_count=1000`);
    const bundle = (await res.json()) as Bundle;
    const found = (bundle.entry ?? []).map((e) => e.resource as WithId<Resource>);
    if (found.length !== keys.length) {
      throw new Error(`${type}: stored ${found.length} of ${keys.length}`);
    }
    for (const resource of found) {
      stored.set(keyOf.get(resource.id) as string, resource);
    }
  }
  world = await SearchWorld.load([...stored.values()], server.fhirUrl);
  // A fresh database has no planner statistics until autovacuum gets to it; production tables have them.
  await server.services.pool.query('ANALYZE');
});

afterAll(async () => {
  printReport();
  await server?.stop();
});

// ------------------------------------------------------------------------------------------------
// Running one query

/** Replaces the `@{…}` placeholders with this run's ids and timestamps. */
function resolvePlaceholders(q: string): string {
  return q.replace(/@\{([^}]+)\}/g, (_, token: string) => {
    if (token === 'base') {
      return server.fhirUrl;
    }
    const [fn, key] = token.includes(':') ? token.split(':') : ['id', token];
    const resource = stored.get(key);
    if (!resource) {
      throw new Error(`unknown key ${key} in ${q}`);
    }
    switch (fn) {
      case 'id':
        return resource.id;
      case 'upper':
        return resource.id.toUpperCase();
      case 'lu':
        return resource.meta?.lastUpdated as string;
      case 'lus':
        return (resource.meta?.lastUpdated as string).slice(0, 19) + 'Z';
      default:
        throw new Error(`unknown placeholder ${token}`);
    }
  });
}

/** Percent-encodes each name and value of `a=b&c=d` (raw values may hold `+`, spaces, Greek). */
function encodeQuery(raw: string): string {
  return raw
    .split('&')
    .filter(Boolean)
    .map((pair) => {
      const eq = pair.indexOf('=');
      return `${encodeURIComponent(pair.slice(0, eq))}=${encodeURIComponent(pair.slice(eq + 1))}`;
    })
    .join('&');
}

interface Outcome {
  kind: Kind;
  q: string;
  ok: boolean;
  problems: string[];
  expected: string[];
  actual: string[];
  referenceWrong: FilterVerdict[];
  unexplained: FilterVerdict[];
  list: 'corpus' | 'pending' | 'known-bug';
}
const outcomes: Outcome[] = [];

const label = (r: Resource): string => keyOf.get(r.id as string) ?? `${r.resourceType}/${r.id}`;

/** The server's request path and query, and the search request the expectation is computed from. */
function prepare(spec: QuerySpec): { path: string; query: string; type: string; expectedQuery: string } {
  const resolved = resolvePlaceholders(spec.q);
  const [path, raw = ''] = resolved.split(/\?(.*)/s);
  const scope = `_tag=urn:test|${TAG}`;
  const extras = /(^|&)_count=/.test(raw) ? '&_total=accurate' : '&_count=1000&_total=accurate';
  const query = encodeQuery(`${raw}&${scope}`) + extras;
  const segments = path.split('/');
  const type = segments[segments.length - 1];
  let expectedRaw = `${raw}&${scope}`;
  if (segments.length === 3) {
    // Patient/{id}/Type: the compartment of that patient
    expectedRaw += `&_compartment=${segments[0]}/${segments[1]}`;
  }
  for (const name of spec.ignored ?? []) {
    expectedRaw = expectedRaw.replace(new RegExp(`(^|&)${name}=[^&]*`), '');
  }
  return { path, query, type, expectedQuery: encodeQuery(expectedRaw) };
}

async function fetchBundle(url: string, headers?: Record<string, string>): Promise<{ status: number; bundle: Bundle; text: string }> {
  const res = await fetch(url, { headers: { ...server.authorization, ...headers } });
  const text = await res.text();
  let bundle = {} as Bundle;
  try {
    bundle = JSON.parse(text) as Bundle;
  } catch {
    // not JSON: reported through the status
  }
  return { status: res.status, bundle, text };
}

async function runQuery(spec: QuerySpec, list: Outcome['list']): Promise<Outcome> {
  const { path, query, type, expectedQuery } = prepare(spec);
  const problems: string[] = [];
  const outcome: Outcome = { kind: spec.kind, q: spec.q, ok: false, problems, expected: [], actual: [], referenceWrong: [], unexplained: [], list };
  outcomes.push(outcome);

  if (spec.status) {
    const { status } = await fetchBundle(`${server.fhirUrl}${path}?${query}`, spec.headers);
    if (status !== spec.status) {
      problems.push(`status ${status}, expected ${spec.status}`);
    }
    outcome.ok = problems.length === 0;
    return outcome;
  }

  let request: SearchRequest;
  let expected: Expected;
  try {
    request = parseQuery(type, expectedQuery);
    expected = await expectedResult(world, request);
  } catch (err) {
    // A defect of this test, not of the server (see 'every expected answer can be computed' below)
    throw new Error(`cannot compute the expected answer of ${spec.q}: ${(err as Error).stack}`);
  }
  outcome.referenceWrong = expected.referenceWrong;
  outcome.unexplained = expected.unexplained;
  outcome.expected = expected.matches.map(label);

  if (spec.kind === 'paging') {
    await walkPages(`${server.fhirUrl}${path}?${query}`, expected, request, outcome, spec.headers);
  } else {
    const { status, bundle, text } = await fetchBundle(`${server.fhirUrl}${path}?${query}`, spec.headers);
    if (status !== 200) {
      problems.push(`status ${status}: ${text.slice(0, 400)}`);
    } else {
      const entries = bundle.entry ?? [];
      const matches = entries.filter((e) => (e.search?.mode ?? 'match') === 'match').map((e) => e.resource as WithId<Resource>);
      outcome.actual = matches.map(label);
      await compareMatches(expected, matches, request.sortRules ?? [], problems);
      compareIncluded(expected, entries, problems);
      if (bundle.total !== expected.matches.length) {
        problems.push(`total ${bundle.total}, expected ${expected.matches.length}`);
      }
    }
  }
  outcome.ok = problems.length === 0;
  return outcome;
}

async function compareMatches(expected: Expected, actual: WithId<Resource>[], rules: SortRule[], problems: string[]): Promise<void> {
  const want = new Set(expected.matches.map(label));
  const got = actual.map(label);
  const missing = [...want].filter((k) => !got.includes(k));
  const extra = got.filter((k) => !want.has(k));
  if (new Set(got).size !== got.length) {
    problems.push(`duplicates in the result: ${got.filter((k, i) => got.indexOf(k) !== i).join(', ')}`);
  }
  if (missing.length) {
    problems.push(`missing (expected, not returned): ${missing.join(', ')}`);
  }
  if (extra.length) {
    problems.push(`extra (returned, not expected): ${extra.join(', ')}`);
  }
  if (rules.length) {
    await checkOrder(actual, rules, problems);
  }
}

/**
 * Every neighbouring pair must be in order by the sort keys (ties may come in any order). Text is
 * compared in the database's collation, which is the server's choice (R4 defines none): the keys
 * are ranked by Postgres itself.
 */
async function checkOrder(actual: WithId<Resource>[], rules: SortRule[], problems: string[]): Promise<void> {
  const keys = actual.map((r) => sortKeys(world, r, rules));
  const texts = [...new Set(keys.flat().filter((k): k is string => typeof k === 'string'))];
  const { rows } = await server.services.pool.query<{ k: string }>('SELECT k FROM unnest($1::text[]) AS k ORDER BY k', [texts]);
  const rank = new Map(rows.map((row, i) => [row.k, i]));
  const byRank = (x: string, y: string): number => (rank.get(x) as number) - (rank.get(y) as number);
  for (let i = 1; i < actual.length; i++) {
    if (compareSortKeys(keys[i - 1], keys[i], rules, byRank) > 0) {
      problems.push(
        `out of order at ${i}: ${label(actual[i - 1])} ${JSON.stringify(keys[i - 1])} before ${label(actual[i])} ${JSON.stringify(keys[i])}`
      );
      return;
    }
  }
}

function compareIncluded(expected: Expected, entries: BundleEntry[], problems: string[]): void {
  const want = new Set(expected.included.map(label));
  const got = entries.filter((e) => e.search?.mode === 'include').map((e) => label(e.resource as Resource));
  const missing = [...want].filter((k) => !got.includes(k));
  const extra = got.filter((k) => !want.has(k));
  if (missing.length) {
    problems.push(`included missing: ${missing.join(', ')}`);
  }
  if (extra.length) {
    problems.push(`included extra: ${extra.join(', ')}`);
  }
}

/** Follows `next` links from the first page; the pages together must be the expected result, in order. */
async function walkPages(
  first: string,
  expected: Expected,
  request: SearchRequest,
  outcome: Outcome,
  headers?: Record<string, string>
): Promise<void> {
  const { problems } = outcome;
  const count = request.count ?? 0;
  const offset = request.offset ?? 0;
  const rules = request.sortRules ?? [];
  const seen: WithId<Resource>[] = [];
  let url: string | undefined = first;
  let pages = 0;
  let total: number | undefined;
  while (url && pages < 100) {
    const { status, bundle, text } = await fetchBundle(url, headers);
    if (status !== 200) {
      problems.push(`page ${pages}: status ${status}: ${text.slice(0, 300)}`);
      return;
    }
    const matches = (bundle.entry ?? []).filter((e) => (e.search?.mode ?? 'match') === 'match').map((e) => e.resource as WithId<Resource>);
    url = bundle.link?.find((l) => l.relation === 'next')?.url;
    if (url && matches.length !== count) {
      problems.push(`page ${pages} has ${matches.length} entries but is not the last (count ${count})`);
    }
    total ??= bundle.total;
    seen.push(...matches);
    pages++;
  }
  outcome.actual = seen.map(label);
  if (offset) {
    // Which resources the offset skips depends on the order (ties are the server's choice): check
    // the count, that nothing unexpected appears, and the order of what does.
    if (seen.length !== Math.max(0, expected.matches.length - offset)) {
      problems.push(`pages hold ${seen.length} resources, expected ${expected.matches.length - offset} after _offset=${offset}`);
    }
    const want = new Set(expected.matches.map(label));
    const extra = seen.map(label).filter((k) => !want.has(k));
    if (extra.length) {
      problems.push(`extra: ${extra.join(', ')}`);
    }
    if (new Set(seen.map(label)).size !== seen.length) {
      problems.push('duplicates across pages');
    }
    await checkOrder(seen, rules, problems);
  } else {
    await compareMatches(expected, seen, rules, problems);
  }
  if (total !== expected.matches.length) {
    problems.push(`total ${total}, expected ${expected.matches.length}`);
  }
}

function describeOutcome(o: Outcome): string {
  return [
    `${o.q}`,
    ...o.problems.map((p) => `  ${p}`),
    `  expected (${o.expected.length}): ${o.expected.slice(0, 40).join(', ')}${o.expected.length > 40 ? ', …' : ''}`,
    `  actual   (${o.actual.length}): ${o.actual.slice(0, 40).join(', ')}${o.actual.length > 40 ? ', …' : ''}`,
  ].join('\n');
}

async function check(spec: QuerySpec, list: Outcome['list']): Promise<void> {
  const outcome = await runQuery(spec, list);
  expect(outcome.problems, describeOutcome(outcome)).toEqual([]);
}

// ------------------------------------------------------------------------------------------------
// The tests

const knownBugs = new Map(KNOWN_SERVER_BUGS.map((b) => [b.q, b.rule]));
const byKind = new Map<Kind, QuerySpec[]>();
for (const spec of [...CORPUS_QUERIES, ...HANDLING_SPECS]) {
  byKind.set(spec.kind, [...(byKind.get(spec.kind) ?? []), spec]);
}

describe('search matches the reference (or the R4 oracle where the reference is wrong)', () => {
  for (const [kind, specs] of byKind) {
    describe(kind, () => {
      for (const spec of specs.filter((s) => !knownBugs.has(s.q))) {
        test(spec.q, () => check(spec, 'corpus'));
      }
    });
  }
});

describe('known server bugs (expected to fail until fixed; then move them back)', () => {
  for (const { q, rule } of KNOWN_SERVER_BUGS) {
    const spec = CORPUS_QUERIES.find((s) => s.q === q) ?? HANDLING_SPECS.find((s) => s.q === q);
    test.fails(`${q} — ${rule}`, () => check(spec as QuerySpec, 'known-bug'));
  }
  test('every known bug names a query of the corpus', () => {
    const all = new Set([...CORPUS_QUERIES, ...HANDLING_SPECS].map((s) => s.q));
    expect(KNOWN_SERVER_BUGS.map((b) => b.q).filter((q) => !all.has(q))).toEqual([]);
  });
});

describe('pending features (expected to fail until implemented; then move them into the corpus)', () => {
  for (const spec of PENDING_FEATURES) {
    test.fails(`${spec.kind}: ${spec.q}`, () => check(spec, 'pending'));
  }
});

describe('the expected-failure lists', () => {
  // test.fails passes on any error, so check that the expectations of these queries can be computed:
  // then they fail because of the server's answer, not because of this test.
  test('every expected answer can be computed', async () => {
    const specs = [...PENDING_FEATURES, ...KNOWN_SERVER_BUGS.map((b) => [...CORPUS_QUERIES, ...HANDLING_SPECS].find((s) => s.q === b.q) as QuerySpec)];
    for (const spec of specs.filter((s) => !s.status)) {
      const { type, expectedQuery } = prepare(spec);
      await expect(expectedResult(world, parseQuery(type, expectedQuery)), spec.q).resolves.toBeDefined();
    }
  });
});

describe('the oracle itself', () => {
  test('agrees with the reference wherever the reference is trusted', () => {
    const unexplained = outcomes.flatMap((o) => o.unexplained.map((u) => `${o.q}: ${u.filter} only reference: [${u.onlyReference.map((id) => keyOf.get(id) ?? id).join(', ')}] only oracle: [${u.onlyOracle.map((id) => keyOf.get(id) ?? id).join(', ')}]`));
    expect(unexplained).toEqual([]);
  });
});

// ------------------------------------------------------------------------------------------------
// Report

function printReport(): void {
  const lines: string[] = ['', '=== search differential report ==='];
  const kinds = new Map<string, { n: number; pass: number; fail: number }>();
  for (const o of outcomes) {
    const k = kinds.get(`${o.kind}${o.list === 'corpus' ? '' : ` (${o.list})`}`) ?? { n: 0, pass: 0, fail: 0 };
    k.n++;
    if (o.ok) {
      k.pass++;
    } else {
      k.fail++;
    }
    kinds.set(`${o.kind}${o.list === 'corpus' ? '' : ` (${o.list})`}`, k);
  }
  lines.push('queries per kind (pass/fail against the expected answer):');
  for (const [kind, k] of kinds) {
    lines.push(`  ${kind.padEnd(40)} ${String(k.n).padStart(4)}  ${k.pass} pass, ${k.fail} fail`);
  }
  lines.push(`  ${'total'.padEnd(40)} ${String(outcomes.length).padStart(4)}`);
  const empty = outcomes.filter((o) => !o.expected.length && !o.actual.length && o.ok).length;
  lines.push(`  (${empty} of them expect and get no match at all)`);
  const failures = outcomes.filter((o) => !o.ok);
  if (failures.length) {
    lines.push('', 'mismatches:');
    for (const o of failures) {
      lines.push(`[${o.list}] ${describeOutcome(o)}`);
    }
  }
  const wrong = new Map<string, string[]>();
  for (const o of outcomes) {
    for (const v of o.referenceWrong) {
      wrong.set(v.why, [...(wrong.get(v.why) ?? []), `${o.q} (${v.filter}: reference only [${v.onlyReference.map((id) => keyOf.get(id) ?? id).join(', ')}], oracle only [${v.onlyOracle.map((id) => keyOf.get(id) ?? id).join(', ')}])`]);
    }
  }
  lines.push('', 'where the reference was wrong on this data (the oracle answered):');
  for (const [why, qs] of wrong) {
    lines.push(`  ${qs.length} queries — ${why}`);
    for (const q of qs.slice(0, 3)) {
      lines.push(`      e.g. ${q}`);
    }
  }
  console.log(lines.join('\n'));
}
