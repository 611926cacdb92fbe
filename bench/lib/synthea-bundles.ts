/**
 * Transaction Bundles shaped like Synthea's patient bundles (one patient with their encounters, and
 * per encounter vital signs, a blood-pressure panel, lab results, a DiagnosticReport, sometimes a
 * Condition, Procedure, MedicationRequest or Immunization, then a Claim and an
 * ExplanationOfBenefit), every entry a POST with a fresh `urn:uuid` fullUrl that later entries
 * reference. Organizations and Practitioners are shared: created once before the import, as
 * Synthea's separate hospital and practitioner bundles are.
 *
 * Names, cities, codes and date ranges include the values Health Samurai's `searchConfig.js` asks
 * for, so that the search mix finds data (and, for its "NON-EXISTS" values, finds none).
 */
import { randomUUID } from 'node:crypto';
import type { Bundle, BundleEntry, Organization, Practitioner, Resource } from '@medplum/fhirtypes';
import { Rng } from './rng.ts';

export const GIVEN_NAMES = ['Emilia', 'Carolynn', 'Stefan', 'Linh', 'Harold', 'Pilar', 'Ron', 'Garfield', 'Margaretta', 'Giovanna', 'Dione', 'Arron', 'Lanny', 'Harvey', 'Beatriz', 'Donovan', 'Kyong', 'Curtis', 'Eleni', 'Andreas', 'Maria', 'Nikos'];
export const FAMILY_NAMES = ['Reyes', 'Santiago', 'Georgiou', 'Ioannou', 'Smith', 'Nguyen', 'Kowalski', 'Papadopoulos', 'Hughes', 'Ortiz', 'Lind', 'Moreau'];
export const CITIES = ['Raynham', 'Springfield', 'Lowell', 'Southwick', 'Mashpee', 'Holbrook', 'Falmouth', 'Revere', 'Sturbridge', 'Blackstone', 'Westport', 'Walpole', 'Northampton', 'Fall River', 'Waltham', 'Acushnet Center', 'Newton', 'Winchester', 'Maynard', 'Nicosia', 'Limassol'];
export const ORGANIZATION_NAMES = [
  'ORLEANS MEDICAL CENTER, P.C.',
  'STEWARD HOLY FAMILY HOSPITAL INC',
  'THE NORTHEAST HEALTH GROUP, INC',
  'PLYMOUTH BAY INTERNAL MEDICINE',
  'ART OF CARE INC',
  'RIVERBEND OF SOUTH NATICK',
  'HDH CORPORATION',
  'ELARA CARING',
  'OVERLOOK MASONIC HEALTH CENTER',
  'TUFTS MEDICAL CENTER',
  'GREATER LOWELL FAMILY PRACTICE PC',
  'NORTH READING INTERNAL MEDICINE PC',
];

const LOINC = 'http://loinc.org';
const UCUM = 'http://unitsofmeasure.org';
const CATEGORY = 'http://terminology.hl7.org/CodeSystem/observation-category';
const ENCOUNTER_CLASSES = ['AMB', 'AMB', 'AMB', 'WELLNESS', 'EMER', 'IMP', 'HH', 'OBSENC'];
const ENCOUNTER_STATUSES = ['finished', 'finished', 'finished', 'finished', 'in-progress', 'planned', 'arrived', 'cancelled'];

interface Measure {
  code: string;
  display: string;
  unit: string;
  mean: number;
  sd: number;
  category: 'vital-signs' | 'laboratory' | 'survey';
}

const VITALS: Measure[] = [
  { code: '8302-2', display: 'Body Height', unit: 'cm', mean: 168, sd: 12, category: 'vital-signs' },
  { code: '29463-7', display: 'Body Weight', unit: 'kg', mean: 78, sd: 16, category: 'vital-signs' },
  { code: '39156-5', display: 'Body mass index (BMI) [Ratio]', unit: 'kg/m2', mean: 27, sd: 5, category: 'vital-signs' },
  { code: '8867-4', display: 'Heart rate', unit: '/min', mean: 76, sd: 14, category: 'vital-signs' },
  { code: '9279-1', display: 'Respiratory rate', unit: '/min', mean: 15, sd: 2, category: 'vital-signs' },
  { code: '72514-3', display: 'Pain severity - 0-10 verbal numeric rating [Score] - Reported', unit: '{score}', mean: 2, sd: 2, category: 'survey' },
];

const LABS: Measure[] = [
  { code: '718-7', display: 'Hemoglobin [Mass/volume] in Blood', unit: 'g/dL', mean: 14, sd: 1.6, category: 'laboratory' },
  { code: '2339-0', display: 'Glucose [Mass/volume] in Blood', unit: 'mg/dL', mean: 100, sd: 25, category: 'laboratory' },
  { code: '2947-0', display: 'Sodium [Moles/volume] in Blood', unit: 'mmol/L', mean: 140, sd: 3, category: 'laboratory' },
  { code: '2093-3', display: 'Cholesterol [Mass/volume] in Serum or Plasma', unit: 'mg/dL', mean: 190, sd: 35, category: 'laboratory' },
];

const CONDITIONS = [
  ['38341003', 'Hypertension'],
  ['44054006', 'Diabetes mellitus type 2'],
  ['49436004', 'Atrial fibrillation'],
  ['53741008', 'Coronary arteriosclerosis'],
  ['195662009', 'Acute viral pharyngitis'],
];

export interface SharedReferences {
  organizations: string[];
  practitioners: string[];
}

/** The shared Organizations and Practitioners (created before the import). */
export function sharedResources(): { organizations: Organization[]; practitioners: Practitioner[] } {
  const rng = new Rng(7);
  return {
    organizations: ORGANIZATION_NAMES.map((name, i) => ({ resourceType: 'Organization', active: true, name, identifier: [{ system: 'urn:ermis:bench:org', value: `ORG${i}` }] })),
    practitioners: Array.from({ length: 20 }, (_, i) => ({
      resourceType: 'Practitioner',
      active: true,
      identifier: [{ system: 'http://hl7.org/fhir/sid/us-npi', value: String(9_999_900_000 + i) }],
      name: [{ family: rng.pick(FAMILY_NAMES), given: [rng.pick(GIVEN_NAMES)], prefix: ['Dr.'] }],
      gender: rng.chance(0.5) ? 'female' : 'male',
    })),
  };
}

function isoDay(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

const DAY = 86_400_000;

/**
 * One patient's transaction Bundle. `encounters` sets the size (each encounter adds about 15
 * resources). The same `seed` gives the same clinical content; the ids are always fresh.
 */
export function patientBundle(seed: number, encounters: number, shared: SharedReferences): Bundle {
  const rng = new Rng(seed);
  const entries: BundleEntry[] = [];
  const add = (resource: Resource): string => {
    const fullUrl = `urn:uuid:${randomUUID()}`;
    entries.push({ fullUrl, resource, request: { method: 'POST', url: resource.resourceType } });
    return fullUrl;
  };
  const birth = Date.UTC(1910, 0, 1) + rng.int(0, 114 * 365) * DAY;
  const female = rng.chance(0.5);
  const patient = add({
    resourceType: 'Patient',
    identifier: [
      { system: 'https://github.com/synthetichealth/synthea', value: randomUUID() },
      { type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v2-0203', code: 'MR' }] }, system: 'http://hospital.smarthealthit.org', value: randomUUID() },
    ],
    name: [{ use: 'official', family: rng.pick(FAMILY_NAMES), given: [rng.pick(GIVEN_NAMES)], prefix: [female ? 'Mrs.' : 'Mr.'] }],
    telecom: [{ system: 'phone', value: `555-${rng.int(100, 999)}-${rng.int(1000, 9999)}`, use: 'home' }],
    gender: female ? 'female' : 'male',
    birthDate: isoDay(birth),
    address: [{ line: [`${rng.int(1, 999)} Main Street`], city: rng.pick(CITIES), state: 'Massachusetts', postalCode: `0${rng.int(1000, 2799)}`, country: 'US' }],
    maritalStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-MaritalStatus', code: rng.chance(0.5) ? 'M' : 'S' }] },
  });
  const firstVisit = Math.max(birth, Date.UTC(1958, 0, 1));
  const span = Date.UTC(2025, 11, 31) - firstVisit;
  for (let e = 0; e < encounters; e++) {
    const start = firstVisit + Math.floor(rng.next() * span);
    const when = new Date(start).toISOString().replace(/\.\d{3}Z$/, 'Z');
    const end = new Date(start + 30 * 60_000).toISOString().replace(/\.\d{3}Z$/, 'Z');
    const organization = rng.pick(shared.organizations);
    const practitioner = rng.pick(shared.practitioners);
    const classCode = rng.pick(ENCOUNTER_CLASSES);
    const encounter = add({
      resourceType: 'Encounter',
      status: rng.pick(ENCOUNTER_STATUSES) as 'finished',
      class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: classCode },
      type: [{ coding: [{ system: 'http://snomed.info/sct', code: '185349003', display: 'Encounter for check up' }] }],
      subject: { reference: patient },
      participant: [{ individual: { reference: practitioner } }],
      period: { start: when, end },
      serviceProvider: { reference: organization },
    });
    const observation = (m: Measure): string =>
      add({
        resourceType: 'Observation',
        status: 'final',
        category: [{ coding: [{ system: CATEGORY, code: m.category }] }],
        code: { coding: [{ system: LOINC, code: m.code, display: m.display }], text: m.display },
        subject: { reference: patient },
        encounter: { reference: encounter },
        effectiveDateTime: when,
        issued: when.replace('Z', '.000Z'),
        performer: [{ reference: practitioner }],
        valueQuantity: { value: Math.round(Math.max(0, rng.normal(m.mean, m.sd)) * 10) / 10, unit: m.unit, system: UCUM, code: m.unit },
      });
    VITALS.forEach(observation);
    add({
      resourceType: 'Observation',
      status: 'final',
      category: [{ coding: [{ system: CATEGORY, code: 'vital-signs' }] }],
      code: { coding: [{ system: LOINC, code: '85354-9', display: 'Blood pressure panel with all children optional' }] },
      subject: { reference: patient },
      encounter: { reference: encounter },
      effectiveDateTime: when,
      component: [
        { code: { coding: [{ system: LOINC, code: '8480-6', display: 'Systolic Blood Pressure' }] }, valueQuantity: { value: Math.round(rng.normal(128, 18)), unit: 'mm[Hg]', system: UCUM, code: 'mm[Hg]' } },
        { code: { coding: [{ system: LOINC, code: '8462-4', display: 'Diastolic Blood Pressure' }] }, valueQuantity: { value: Math.round(rng.normal(80, 10)), unit: 'mm[Hg]', system: UCUM, code: 'mm[Hg]' } },
      ],
    });
    const labs = LABS.filter(() => rng.chance(0.6)).map(observation);
    add({
      resourceType: 'DiagnosticReport',
      status: 'final',
      category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v2-0074', code: 'LAB' }] }],
      code: { coding: [{ system: LOINC, code: '51990-0', display: 'Basic metabolic panel - Blood' }] },
      subject: { reference: patient },
      encounter: { reference: encounter },
      effectiveDateTime: when,
      issued: when.replace('Z', '.000Z'),
      ...(labs.length ? { result: labs.map((reference) => ({ reference })) } : {}),
    });
    if (rng.chance(0.4)) {
      const [code, display] = rng.pick(CONDITIONS);
      add({
        resourceType: 'Condition',
        clinicalStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code: 'active' }] },
        verificationStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-ver-status', code: 'confirmed' }] },
        code: { coding: [{ system: 'http://snomed.info/sct', code, display }], text: display },
        subject: { reference: patient },
        encounter: { reference: encounter },
        onsetDateTime: when,
        recordedDate: when,
      });
    }
    if (rng.chance(0.3)) {
      add({
        resourceType: 'Procedure',
        status: 'completed',
        code: { coding: [{ system: 'http://snomed.info/sct', code: '430193006', display: 'Medication Reconciliation (procedure)' }] },
        subject: { reference: patient },
        encounter: { reference: encounter },
        performedPeriod: { start: when, end },
      });
    }
    let prescription: string | undefined;
    if (rng.chance(0.4)) {
      prescription = add({
        resourceType: 'MedicationRequest',
        status: rng.chance(0.7) ? 'active' : 'stopped',
        intent: 'order',
        medicationCodeableConcept: { coding: [{ system: 'http://www.nlm.nih.gov/research/umls/rxnorm', code: '314076', display: 'lisinopril 10 MG Oral Tablet' }] },
        subject: { reference: patient },
        encounter: { reference: encounter },
        authoredOn: when,
        requester: { reference: practitioner },
      });
    }
    if (rng.chance(0.25)) {
      add({
        resourceType: 'Immunization',
        status: 'completed',
        vaccineCode: { coding: [{ system: 'http://hl7.org/fhir/sid/cvx', code: '140', display: 'Influenza, seasonal, injectable, preservative free' }] },
        patient: { reference: patient },
        encounter: { reference: encounter },
        occurrenceDateTime: when,
        primarySource: true,
      });
    }
    const claim = add({
      resourceType: 'Claim',
      status: 'active',
      type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/claim-type', code: 'institutional' }] },
      use: 'claim',
      patient: { reference: patient },
      billablePeriod: { start: when, end },
      created: end,
      provider: { reference: organization },
      priority: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/processpriority', code: 'normal' }] },
      ...(prescription ? { prescription: { reference: prescription } } : {}),
      insurance: [{ sequence: 1, focal: true, coverage: { display: 'Cigna Health' } }],
      item: [{ sequence: 1, productOrService: { coding: [{ system: 'http://snomed.info/sct', code: '185349003', display: 'Encounter for check up' }] }, encounter: [{ reference: encounter }] }],
      total: { value: Math.round(rng.normal(400, 100) * 100) / 100, currency: 'USD' },
    });
    add({
      resourceType: 'ExplanationOfBenefit',
      status: 'active',
      type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/claim-type', code: 'institutional' }] },
      use: 'claim',
      patient: { reference: patient },
      billablePeriod: { start: when, end },
      created: end,
      insurer: { display: 'Cigna Health' },
      provider: { reference: practitioner },
      claim: { reference: claim },
      outcome: 'complete',
      careTeam: [{ sequence: 1, provider: { reference: practitioner } }],
      insurance: [{ focal: true, coverage: { display: 'Cigna Health' } }],
      item: [{ sequence: 1, productOrService: { coding: [{ system: 'http://snomed.info/sct', code: '185349003' }] }, encounter: [{ reference: encounter }] }],
    });
  }
  return { resourceType: 'Bundle', type: 'transaction', entry: entries };
}
