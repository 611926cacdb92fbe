/**
 * The nine linked resources of the CRUD mix, in the shape of Health Samurai's k6 `crud.js` (its
 * seed files are not reproduced: these are our own small resources with the same references).
 * Created in this order, each later one pointing at earlier ones; read, updated with a small
 * change, then deleted in reverse order.
 */
import type { Resource } from '@medplum/fhirtypes';

export const CRUD_TYPES = [
  'Patient',
  'Location',
  'Organization',
  'Practitioner',
  'Encounter',
  'Observation',
  'MedicationRequest',
  'Claim',
  'ExplanationOfBenefit',
] as const;

export type CrudType = (typeof CRUD_TYPES)[number];

const LOINC = 'http://loinc.org';

/** The resource of `type` for one iteration, referencing the ones created before it. */
export function crudResource(type: CrudType, ref: (t: CrudType) => string, n: number): Resource {
  const now = new Date().toISOString();
  switch (type) {
    case 'Patient':
      return {
        resourceType: 'Patient',
        identifier: [{ system: 'urn:ermis:bench:mrn', value: `B${n}` }],
        name: [{ family: 'Georgiou', given: ['Eleni'] }],
        gender: 'female',
        birthDate: '1971-04-12',
        address: [{ line: ['Makariou 12'], city: 'Nicosia', postalCode: '1065', country: 'CY' }],
        telecom: [{ system: 'phone', value: '+357 22 000000' }],
      };
    case 'Location':
      return { resourceType: 'Location', status: 'active', name: 'Cardiology outpatients', address: { city: 'Limassol', country: 'CY' } };
    case 'Organization':
      return { resourceType: 'Organization', active: true, name: 'Bench Cardiology Clinic', identifier: [{ system: 'urn:ermis:bench:org', value: `O${n}` }] };
    case 'Practitioner':
      return { resourceType: 'Practitioner', active: true, name: [{ family: 'Christodoulou', given: ['Andreas'], prefix: ['Dr'] }], gender: 'male' };
    case 'Encounter':
      return {
        resourceType: 'Encounter',
        status: 'finished',
        class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' },
        subject: { reference: ref('Patient') },
        participant: [{ individual: { reference: ref('Practitioner') } }],
        location: [{ location: { reference: ref('Location') } }],
        serviceProvider: { reference: ref('Organization') },
        period: { start: '2026-11-02T09:00:00Z', end: '2026-11-02T09:30:00Z' },
      };
    case 'Observation':
      return {
        resourceType: 'Observation',
        status: 'final',
        category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'vital-signs' }] }],
        code: { coding: [{ system: LOINC, code: '8867-4', display: 'Heart rate' }] },
        subject: { reference: ref('Patient') },
        encounter: { reference: ref('Encounter') },
        effectiveDateTime: '2026-11-02T09:10:00Z',
        valueQuantity: { value: 72, unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' },
      };
    case 'MedicationRequest':
      return {
        resourceType: 'MedicationRequest',
        status: 'active',
        intent: 'order',
        medicationCodeableConcept: { coding: [{ system: 'http://www.nlm.nih.gov/research/umls/rxnorm', code: '197361', display: 'Amlodipine 5 MG Oral Tablet' }] },
        subject: { reference: ref('Patient') },
        encounter: { reference: ref('Encounter') },
        requester: { reference: ref('Practitioner') },
        authoredOn: '2026-11-02',
      };
    case 'Claim':
      return {
        resourceType: 'Claim',
        status: 'active',
        type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/claim-type', code: 'pharmacy' }] },
        use: 'claim',
        patient: { reference: ref('Patient') },
        created: now,
        provider: { reference: ref('Organization') },
        priority: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/processpriority', code: 'normal' }] },
        prescription: { reference: ref('MedicationRequest') },
        insurance: [{ sequence: 1, focal: true, coverage: { display: 'Gesy' } }],
        item: [{ sequence: 1, productOrService: { text: 'Amlodipine 5 MG' }, encounter: [{ reference: ref('Encounter') }] }],
        total: { value: 4.2, currency: 'EUR' },
      };
    case 'ExplanationOfBenefit':
      return {
        resourceType: 'ExplanationOfBenefit',
        contained: [
          {
            resourceType: 'ServiceRequest',
            id: 'referral',
            status: 'completed',
            intent: 'order',
            subject: { reference: ref('Patient') },
            requester: { reference: ref('Practitioner') },
            performer: [{ reference: ref('Patient') }],
          },
          { resourceType: 'Coverage', id: 'coverage', status: 'active', beneficiary: { reference: ref('Patient') }, payor: [{ display: 'Gesy' }] },
        ],
        status: 'active',
        type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/claim-type', code: 'pharmacy' }] },
        use: 'claim',
        patient: { reference: ref('Patient') },
        created: now,
        insurer: { display: 'Gesy' },
        provider: { reference: ref('Practitioner') },
        referral: { reference: '#referral' },
        claim: { reference: ref('Claim') },
        outcome: 'complete',
        careTeam: [{ sequence: 1, provider: { reference: ref('Practitioner') } }],
        insurance: [{ focal: true, coverage: { reference: '#coverage' } }],
        item: [{ sequence: 1, productOrService: { text: 'Amlodipine 5 MG' }, encounter: [{ reference: ref('Encounter') }] }],
      };
  }
}

/** The small change each update makes (as crud.js does: a status, a name, a date or the gender). */
export function changed(resource: Resource): Resource {
  const r = { ...resource } as Resource & Record<string, unknown>;
  switch (r.resourceType) {
    case 'Encounter':
      r.status = r.status === 'planned' ? 'in-progress' : 'planned';
      break;
    case 'Location':
    case 'Organization':
      r.name = `${String(r.name).replace(/-\d+$/, '')}-${Date.now()}`;
      break;
    case 'MedicationRequest':
      r.status = r.status === 'on-hold' ? 'draft' : 'on-hold';
      break;
    case 'Observation':
      r.issued = new Date().toISOString();
      break;
    case 'Patient':
    case 'Practitioner':
      r.gender = r.gender === 'unknown' ? 'other' : 'unknown';
      break;
    default:
      r.created = new Date().toISOString();
  }
  return r;
}
