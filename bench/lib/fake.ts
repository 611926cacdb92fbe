import type { Encounter, Observation, Organization, Patient, Quantity } from '@medplum/fhirtypes';
import { LOINC, UCUM, VITALS, loadLabList } from './catalogue.ts';
import type { LabCode, LabList, ValueSpec } from './catalogue.ts';
import { Rng, seedOf, stableUuid } from './rng.ts';

/**
 * Deterministic synthetic clinical data: patient n of a run always has the same demographics,
 * visits, encounters and results, and the same ids, so a run can be resumed or repeated.
 */

export const MRN_SYSTEM = 'https://ermis.example/sid/mrn';
export const CY_ID_SYSTEM = 'https://ermis.example/sid/cy-id';
export const RESULT_ID_SYSTEM = 'https://ermis.example/sid/lab-result';
const CATEGORY_SYSTEM = 'http://terminology.hl7.org/CodeSystem/observation-category';
const INTERPRETATION_SYSTEM = 'http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation';
const SNOMED = 'http://snomed.info/sct';

/** Results are spread over the five years before this instant. */
export const PERIOD_END = Date.parse('2026-11-01T00:00:00Z');
export const PERIOD_START = PERIOD_END - 5 * 365.25 * 24 * 3600 * 1000;

const FAMILY = [
  'Georgiou', 'Ioannou', 'Charalambous', 'Constantinou', 'Nicolaou', 'Christodoulou', 'Andreou', 'Demetriou',
  'Michael', 'Panayiotou', 'Kyriakou', 'Antoniou', 'Savva', 'Loizou', 'Pavlou', 'Stylianou', 'Neophytou',
  'Theodorou', 'Hadjigeorgiou', 'Kyprianou', 'Efstathiou', 'Vasiliou', 'Petrou', 'Achilleos', 'Solomou',
  'Evangelou', 'Zachariou', 'Iacovou', 'Louca', 'Sergiou', 'Prodromou', 'Socratous', 'Philippou', 'Yiannakou',
  'Christofi', 'Mavrou', 'Hadjipetrou', 'Kleanthous', 'Athanasiou', 'Onoufriou', 'Polydorou', 'Komodromou',
  'Tryfonos', 'Pitsillides', 'Kallis', 'Economides', 'Xenophontos', 'Sofokleous', 'Papadopoulos', 'Hadjikyriakou',
  'Koumi', 'Markou', 'Aristidou', 'Chrysostomou', 'Gregoriou', 'Ioannides', 'Kyriacou', 'Lambrou', 'Makris',
  'Nikolaidis', 'Odysseos', 'Panteli', 'Rousou', 'Stavrou', 'Tsiakkas', 'Vrahimis', 'Zenonos', 'Agathocleous',
  'Hadjimichael', 'Kountouris', 'Smith', 'Ivanova', 'Petrov', 'Müller', 'Kowalski', 'Nguyen', 'Haddad', 'O\u2019Brien',
  'Papadakis', 'Karamanlis', 'Sánchez', 'Björk', 'Chatzi', 'Ellinas', 'Frangou', 'Georgiades', 'Hambi',
];
const GIVEN_FEMALE = [
  'Maria', 'Eleni', 'Andri', 'Georgia', 'Christina', 'Anna', 'Panayiota', 'Despina', 'Androulla', 'Ioanna',
  'Katerina', 'Sofia', 'Stella', 'Niki', 'Marina', 'Elena', 'Kyriaki', 'Chrystalla', 'Antigoni', 'Myria',
  'Natalia', 'Irene', 'Theodora', 'Melina', 'Loukia', 'Evangelia', 'Rafaella', 'Stavroula', 'Paraskevi', 'Zoe',
];
const GIVEN_MALE = [
  'Andreas', 'Georgios', 'Christos', 'Nikos', 'Costas', 'Michalis', 'Panayiotis', 'Ioannis', 'Demetris', 'Marios',
  'Savvas', 'Stelios', 'Charalambos', 'Kyriakos', 'Antonis', 'Petros', 'Loizos', 'Stavros', 'Pavlos', 'Sotiris',
  'Theodoros', 'Neophytos', 'Alexandros', 'Yiannis', 'Evagoras', 'Achilleas', 'Constantinos', 'Elias', 'Onisiforos', 'Zenon',
];
const CITIES = [
  { city: 'Nicosia', postal: 1000 },
  { city: 'Limassol', postal: 3000 },
  { city: 'Larnaca', postal: 6000 },
  { city: 'Paphos', postal: 8000 },
  { city: 'Paralimni', postal: 5280 },
  { city: 'Strovolos', postal: 2000 },
];
const STREETS = ['Makariou', 'Griva Digeni', 'Archbishop Kyprianou', 'Evagorou', 'Stasinou', 'Ledras', 'Agiou Andreou', 'Kennedy', 'Themistokli Dervi', 'Spyrou Kyprianou'];

/** Organizations every run shares: labs that perform results and clinics that host encounters. */
export const LABS = [
  { key: 'lab-nicosia', name: 'Nicosia Central Laboratory', list: 'SI' as const },
  { key: 'lab-limassol', name: 'Limassol Diagnostic Lab', list: 'SI' as const },
  { key: 'lab-us', name: 'Larnaca Reference Lab (US units)', list: 'US' as const },
];
export const CLINICS = ['Nicosia Cardiology Clinic', 'Limassol Family Practice', 'Larnaca Internal Medicine', 'Paphos Health Centre', 'Famagusta District Clinic'];

export function organizationId(key: string): string {
  return stableUuid('ermis-bench', 'org', key);
}

export function organizations(): Organization[] {
  const labs = LABS.map(
    (l): Organization => ({
      resourceType: 'Organization',
      id: organizationId(l.key),
      active: true,
      type: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/organization-type', code: 'prov', display: 'Healthcare Provider' }] }],
      name: l.name,
    })
  );
  const clinics = CLINICS.map(
    (name): Organization => ({
      resourceType: 'Organization',
      id: organizationId(name),
      active: true,
      type: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/organization-type', code: 'prov', display: 'Healthcare Provider' }] }],
      name,
    })
  );
  return [...labs, ...clinics];
}

export function patientId(n: number): string {
  return stableUuid('ermis-bench', 'patient', n);
}

export function mrnOf(n: number): string {
  return 'E' + String(n + 1).padStart(7, '0');
}

/** A national-id-like number, unique per patient (an affine permutation of n). */
export function cyIdOf(n: number): string {
  return String((n * 7_919 + 1_000_003) % 10_000_000).padStart(7, '0');
}

export interface PatientRecord {
  patient: Patient;
  encounters: Encounter[];
  observations: Observation[];
}

let labLists: { US: LabList; SI: LabList } | undefined;
function lists(): { US: LabList; SI: LabList } {
  labLists ??= { US: loadLabList('US'), SI: loadLabList('SI') };
  return labLists;
}

const familyWeights = zipf(FAMILY.length, 0.8);

function zipf(n: number, s: number): Float64Array {
  const c = new Float64Array(n);
  let total = 0;
  for (let i = 0; i < n; i++) {
    total += 1 / Math.pow(i + 1, s);
    c[i] = total;
  }
  return c;
}

/** Everything that belongs to patient n: the patient, some encounters and exactly `observationCount` results. */
export function patientRecord(n: number, observationCount: number): PatientRecord {
  const rng = new Rng(seedOf('ermis-bench', 'patient', n));
  const id = patientId(n);
  const female = rng.chance(0.52);
  const given = female ? GIVEN_FEMALE : GIVEN_MALE;
  const family = FAMILY[rng.weighted(familyWeights)];
  const birth = new Date(Date.UTC(rng.int(1932, 2018), rng.int(0, 11), rng.int(1, 28)));
  const place = rng.pick(CITIES);
  const givenNames = [rng.pick(given)];
  if (rng.chance(0.15)) {
    givenNames.push(rng.pick(given));
  }
  const patient: Patient = {
    resourceType: 'Patient',
    id,
    identifier: [
      {
        use: 'usual',
        type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v2-0203', code: 'MR' }] },
        system: MRN_SYSTEM,
        value: mrnOf(n),
      },
      {
        use: 'official',
        type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v2-0203', code: 'NI' }] },
        system: CY_ID_SYSTEM,
        value: cyIdOf(n),
      },
    ],
    active: true,
    name: [{ use: 'official', family, given: givenNames }],
    telecom: [{ system: 'phone', value: `+357 9${rng.int(0, 9)}${String(rng.int(0, 999_999)).padStart(6, '0')}`, use: 'mobile' }],
    gender: female ? 'female' : 'male',
    birthDate: birth.toISOString().slice(0, 10),
    address: [
      {
        use: 'home',
        line: [`${rng.int(1, 180)} ${rng.pick(STREETS)} Street`],
        city: place.city,
        postalCode: String(place.postal + rng.int(0, 99)),
        country: 'CY',
      },
    ],
  };
  if (rng.chance(0.4)) {
    patient.telecom?.push({ system: 'email', value: `${givenNames[0].toLowerCase()}.${n}@example.com` });
  }

  const lab = LABS[rng.chance(0.3) ? 2 : rng.int(0, 1)];
  const list = lists()[lab.list];
  const labRef = { reference: `Organization/${organizationId(lab.key)}`, display: lab.name };
  const clinic = rng.pick(CLINICS);
  const clinicRef = { reference: `Organization/${organizationId(clinic)}`, display: clinic };
  const subject = { reference: `Patient/${id}`, display: `${givenNames[0]} ${family}` };

  // Visits, each with vital signs, labs or both, until the patient has `observationCount` results.
  // Times are set at the end, once the number of visits is known: that many days drawn uniformly
  // over the five years, so results are spread evenly over the whole period.
  const timed: { visit: number; apply: (day: number) => void }[] = [];
  const encounters: Encounter[] = [];
  const observations: Observation[] = [];
  let visit = 0;
  while (observations.length < observationCount) {
    // Working hours, Cyprus time (+02:00 is used throughout for simplicity): minutes after 00:00 UTC.
    const start = (rng.int(5, 15) * 60 + rng.int(0, 59)) * 60_000;
    const visitIndex = visit;
    visit++;
    let encounterRef: { reference: string } | undefined;
    if (rng.chance(0.35)) {
      const encounterId = stableUuid('ermis-bench', 'encounter', n, visit);
      const length = rng.int(10, 40) * 60_000;
      const encounter: Encounter = {
        resourceType: 'Encounter',
        id: encounterId,
        status: 'finished',
        class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB', display: 'ambulatory' },
        type: [
          rng.chance(0.6)
            ? { coding: [{ system: SNOMED, code: '185349003', display: 'Encounter for check up' }] }
            : { coding: [{ system: SNOMED, code: '185347001', display: 'Encounter for problem' }] },
        ],
        subject,
        period: { start: '', end: '' },
        serviceProvider: clinicRef,
      };
      encounters.push(encounter);
      timed.push({ visit: visitIndex, apply: (day) => (encounter.period = { start: fhirTime(day + start), end: fhirTime(day + start + length) }) });
      encounterRef = { reference: `Encounter/${encounterId}` };
    }
    const withVitals = encounterRef !== undefined || rng.chance(0.45);
    const withLabs = !withVitals || rng.chance(0.7);
    if (withVitals) {
      for (const vital of VITALS) {
        if (observations.length >= observationCount || !rng.chance(vital.frequency)) {
          continue;
        }
        const obs = baseObservation(rng, n, observations.length, 'vital-signs', 'Vital Signs', subject);
        const taken = start + rng.int(0, 10) * 60_000;
        timed.push({ visit: visitIndex, apply: (day) => (obs.effectiveDateTime = fhirTime(day + taken)) });
        obs.code = { coding: [{ system: LOINC, code: vital.code, display: vital.display }], text: vital.display };
        if (encounterRef) {
          obs.encounter = encounterRef;
        }
        if (vital.components) {
          obs.component = vital.components.map((c) => ({
            code: { coding: [{ system: LOINC, code: c.code, display: c.display }] },
            valueQuantity: quantity(rng, c.value),
          }));
        } else if (obs.status !== 'cancelled') {
          obs.valueQuantity = quantity(rng, vital.value);
        }
        observations.push(obs);
      }
    }
    if (withLabs) {
      // Lab results: a handful of distinct codes drawn by frequency rank (creatinine, haemoglobin,
      // potassium... common, the long tail rare), collected at the visit, reported hours later.
      const k = rng.int(3, 18);
      const drawn = new Set<number>();
      for (let i = 0; i < k * 3 && drawn.size < k; i++) {
        drawn.add(rng.weighted(list.cumulative));
      }
      const collected = start + rng.int(0, 30) * 60_000;
      const accession = `${lab.key.slice(4, 7).toUpperCase()}${String(n).padStart(5, '0')}${String(visit).padStart(3, '0')}`;
      for (const index of drawn) {
        if (observations.length >= observationCount) {
          break;
        }
        const code = list.codes[index];
        const obs = baseObservation(rng, n, observations.length, 'laboratory', 'Laboratory', subject);
        const reported = collected + rng.int(2, 30) * 3_600_000;
        obs.identifier = [{ system: RESULT_ID_SYSTEM, value: `${accession}-${code.code}` }];
        obs.code = { coding: [{ system: LOINC, code: code.code, display: code.display }], text: code.short || code.display };
        obs.issued = '';
        timed.push({
          visit: visitIndex,
          apply: (day) => {
            obs.effectiveDateTime = fhirTime(day + collected);
            obs.issued = new Date(day + reported).toISOString();
          },
        });
        obs.performer = [labRef];
        if (encounterRef) {
          obs.encounter = encounterRef;
        }
        if (obs.status !== 'cancelled') {
          labValue(rng, obs, code);
        }
        observations.push(obs);
      }
    }
  }
  const firstDay = Math.ceil(PERIOD_START / DAY) * DAY;
  const days = Math.floor((PERIOD_END - firstDay) / DAY);
  // Each visit on its own uniformly drawn day (not sorted: the last visit is cut short to reach
  // exactly observationCount results, and sorting would put that short visit always at the end).
  const visitDays = Array.from({ length: visit }, () => firstDay + Math.floor(rng.next() * days) * DAY);
  for (const t of timed) {
    t.apply(visitDays[t.visit]);
  }
  return { patient, encounters, observations };
}

const DAY = 86_400_000;

function baseObservation(
  rng: Rng,
  n: number,
  index: number,
  category: string,
  categoryDisplay: string,
  subject: { reference: string; display: string }
): Observation {
  const r = rng.next();
  const status: Observation['status'] =
    r < 0.93 ? 'final' : r < 0.95 ? 'amended' : r < 0.96 ? 'corrected' : r < 0.99 ? 'preliminary' : r < 0.995 ? 'cancelled' : 'entered-in-error';
  const obs: Observation = {
    resourceType: 'Observation',
    id: stableUuid('ermis-bench', 'observation', n, index),
    status,
    category: [{ coding: [{ system: CATEGORY_SYSTEM, code: category, display: categoryDisplay }] }],
    code: { text: '' },
    subject,
    effectiveDateTime: '', // set once the visit's day is known
  };
  if (status === 'cancelled') {
    obs.dataAbsentReason = {
      coding: [{ system: 'http://terminology.hl7.org/CodeSystem/data-absent-reason', code: 'not-performed', display: 'Not Performed' }],
    };
  }
  return obs;
}

function labValue(rng: Rng, obs: Observation, code: LabCode): void {
  const spec = code.value;
  switch (spec.kind) {
    case 'quantity': {
      obs.valueQuantity = quantity(rng, spec);
      const value = obs.valueQuantity.value as number;
      if (spec.low !== undefined || spec.high !== undefined) {
        obs.referenceRange = [
          {
            low: spec.low !== undefined ? { value: spec.low, unit: spec.unit, system: UCUM, code: spec.unit } : undefined,
            high: spec.high !== undefined ? { value: spec.high, unit: spec.unit, system: UCUM, code: spec.unit } : undefined,
          },
        ];
        const flag = spec.low !== undefined && value < spec.low ? 'L' : spec.high !== undefined && value > spec.high ? 'H' : 'N';
        obs.interpretation = [
          { coding: [{ system: INTERPRETATION_SYSTEM, code: flag, display: flag === 'L' ? 'Low' : flag === 'H' ? 'High' : 'Normal' }] },
        ];
      }
      break;
    }
    case 'presence': {
      const positive = rng.chance(0.12);
      obs.valueCodeableConcept = {
        coding: [{ system: SNOMED, code: positive ? '10828004' : '260385009', display: positive ? 'Positive' : 'Negative' }],
      };
      break;
    }
    case 'titer':
      obs.valueString = `1:${rng.pick([10, 20, 40, 80, 160, 320, 640])}`;
      break;
    case 'susceptibility': {
      const c = rng.pick(['S', 'S', 'S', 'I', 'R']);
      obs.valueCodeableConcept = {
        coding: [{ system: INTERPRETATION_SYSTEM, code: c, display: c === 'S' ? 'Susceptible' : c === 'I' ? 'Intermediate' : 'Resistant' }],
      };
      break;
    }
    case 'string':
      obs.valueString = rng.pick(spec.options);
      break;
  }
}

function quantity(rng: Rng, spec: ValueSpec): Quantity {
  if (spec.kind !== 'quantity') {
    throw new Error('not a quantity spec');
  }
  let value = spec.normal ? rng.normal(spec.median, spec.spread) : spec.median * Math.exp(rng.normal(0, spec.spread));
  value = Math.max(value, Math.pow(10, -spec.decimals));
  const factor = Math.pow(10, spec.decimals);
  return { value: Math.round(value * factor) / factor, unit: spec.unit, system: UCUM, code: spec.unit };
}

function fhirTime(ms: number): string {
  // effective times in Cyprus local time with an explicit offset, minute precision
  return new Date(ms + 2 * 3600_000).toISOString().slice(0, 16) + ':00+02:00';
}
