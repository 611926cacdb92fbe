/**
 * A deterministic clinical data set for differential search tests (search-differential.test.ts).
 *
 * Everything here is generated from a seeded PRNG (mulberry32), so the same seed always gives the
 * same resources. Resources refer to each other by local keys (`@pat-3`); the loader turns those into
 * `urn:uuid:` references inside a transaction Bundle and into `Type/id` once the server has assigned
 * the id. Nothing here talks to a server.
 */
import type {
  CodeSystem,
  CodeSystemConcept,
  CodeableConcept,
  Coding,
  Condition,
  DiagnosticReport,
  Encounter,
  HumanName,
  Identifier,
  List,
  Observation,
  ObservationComponent,
  Organization,
  Patient,
  Practitioner,
  Reference,
  Resource,
  RiskAssessment,
  ValueSet,
} from '@medplum/fhirtypes';

// ------------------------------------------------------------------------------------------------
// PRNG

/** mulberry32: a tiny, well-distributed 32-bit PRNG. Never Math.random: the corpus must be reproducible. */
export class Rand {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0;
  }
  /** A float in [0, 1). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** An integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)];
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  /** A decimal in [lo, hi] with `decimals` digits after the point, as a JS number. */
  decimal(lo: number, hi: number, decimals: number): number {
    const scale = 10 ** decimals;
    return Math.round((lo + this.next() * (hi - lo)) * scale) / scale;
  }
}

// ------------------------------------------------------------------------------------------------
// Code systems and vocabularies

export const LOINC = 'http://loinc.org';
export const SNOMED = 'http://snomed.info/sct';
export const UCUM = 'http://unitsofmeasure.org';
export const OBS_CATEGORY = 'http://terminology.hl7.org/CodeSystem/observation-category';
export const ACT_CODE = 'http://terminology.hl7.org/CodeSystem/v3-ActCode';
export const CY_ID = 'urn:oid:2.16.196.1.1';
export const MRN = 'http://hospital.example.org/mrn';
export const MEDICAL_COUNCIL = 'urn:cy:medical-council';
export const ORG_ID = 'urn:cy:gesy:provider';
export const LOCAL_CODES = 'http://clinic.example.org/codes';
/** A code system of our own with a hierarchy, for `:below` / `:above`. */
export const DIAGNOSES_CS = 'http://ermis.example.org/fhir/CodeSystem/diagnoses';
/** A value set of our own, for `:in` / `:not-in`. */
export const RENAL_VS = 'http://ermis.example.org/fhir/ValueSet/renal-and-glucose';
export const SOURCES = [
  'http://lab.example.org/lis/a',
  'http://lab.example.org/lis/b',
  'http://clinic.example.com/emr',
  'urn:oid:1.2.196.7',
] as const;

const GREEK_FAMILIES = [
  'Παπαδόπουλος',
  'Γεωργίου',
  'Ανδρέου',
  'Παπασταύρου',
  'Χριστοδούλου',
  'Κωνσταντίνου',
  'Νικολάου',
  'Ιωάννου',
  'Χαραλάμπους',
  'Δημητρίου',
];
const LATIN_FAMILIES = [
  'Müller',
  'Núñez',
  'Sørensen',
  'Dvořák',
  'François',
  'García',
  'Lefèvre',
  'Čapek',
  'Åström',
  'Smith',
  'Smithson',
  'Georgiou',
  'Papadopoulos',
];
const GREEK_GIVEN = ['Άννα', 'Γιώργος', 'Ελένη', 'Κώστας', 'Μαρία', 'Νίκος', 'Σοφία', 'Χρυσάνθη', 'Ανδρέας'];
const LATIN_GIVEN = ['Zoë', 'José', 'Renée', 'André', 'Chloé', 'Jürgen', 'Anna', 'John', 'Maria', 'Łukasz'];
const CITIES = [
  { city: 'Λευκωσία', postalCode: '1010', country: 'CY' },
  { city: 'Λεμεσός', postalCode: '3025', country: 'CY' },
  { city: 'Limassol', postalCode: '3036', country: 'CY' },
  { city: 'Λάρνακα', postalCode: '6020', country: 'CY' },
  { city: 'Πάφος', postalCode: '8010', country: 'CY' },
  { city: 'Zürich', postalCode: '8001', country: 'CH' },
  { city: 'München', postalCode: '80331', country: 'DE' },
  { city: 'Αθήνα', postalCode: '10431', country: 'GR' },
];
const STREETS = ['Οδός Ερμού', 'Λεωφόρος Μακαρίου', 'Bahnhofstraße', 'Rue de la Paix', 'Οδός Ανεξαρτησίας'];
const TIMEZONES = ['Z', 'Z', '+02:00', '+03:00', '-05:00'];

/** Observation kinds: LOINC code, display, category, and how the value is made. */
interface ObsKind {
  code: string;
  display: string;
  category: string;
  unit?: { unit: string; code: string; lo: number; hi: number; decimals: number[] }[];
}
const OBS_KINDS: ObsKind[] = [
  {
    code: '2160-0',
    display: 'Creatinine [Mass/volume] in Serum or Plasma',
    category: 'laboratory',
    unit: [
      { unit: 'mg/dL', code: 'mg/dL', lo: 0.5, hi: 1.9, decimals: [1, 2] },
      { unit: 'µmol/L', code: 'umol/L', lo: 45, hi: 170, decimals: [0] },
    ],
  },
  {
    code: '718-7',
    display: 'Hemoglobin [Mass/volume] in Blood',
    category: 'laboratory',
    unit: [{ unit: 'g/dL', code: 'g/dL', lo: 9.5, hi: 17.5, decimals: [1] }],
  },
  {
    code: '2345-7',
    display: 'Glucose [Mass/volume] in Serum or Plasma',
    category: 'laboratory',
    unit: [
      { unit: 'mg/dL', code: 'mg/dL', lo: 65, hi: 260, decimals: [0] },
      { unit: 'mmol/L', code: 'mmol/L', lo: 3.6, hi: 14.4, decimals: [1, 2] },
    ],
  },
  {
    code: '8867-4',
    display: 'Heart rate',
    category: 'vital-signs',
    unit: [{ unit: 'beats/minute', code: '/min', lo: 48, hi: 135, decimals: [0] }],
  },
  {
    code: '8310-5',
    display: 'Body temperature',
    category: 'vital-signs',
    unit: [{ unit: '°C', code: 'Cel', lo: 35.8, hi: 40.1, decimals: [1, 2] }],
  },
  {
    code: '29463-7',
    display: 'Body weight',
    category: 'vital-signs',
    unit: [{ unit: 'kg', code: 'kg', lo: 42, hi: 125, decimals: [0, 1, 3] }],
  },
  { code: '85354-9', display: 'Blood pressure panel with all children optional', category: 'vital-signs' },
  { code: '72166-2', display: 'Tobacco smoking status', category: 'social-history' },
  { code: '11529-5', display: 'Surgical pathology study', category: 'laboratory' },
];
const SMOKING = [
  { code: '449868002', display: 'Current every day smoker' },
  { code: '8517006', display: 'Ex-smoker' },
  { code: '266919005', display: 'Never smoker' },
];
const PATHOLOGY_TEXTS = ['Καλοήθης αλλοίωση', 'Benign lesion', 'Malignant neoplasm suspected', 'Κακοήθεια δεν ανιχνεύθηκε'];

/** The hierarchy of our diagnoses code system: code → [display, children]. */
const DIAGNOSES: [string, string, string[]][] = [
  ['cardio', 'Cardiovascular disease', ['htn', 'ihd']],
  ['htn', 'Hypertension', ['htn-essential', 'htn-secondary']],
  ['htn-essential', 'Essential hypertension', []],
  ['htn-secondary', 'Secondary hypertension', []],
  ['ihd', 'Ischaemic heart disease', []],
  ['metabolic', 'Metabolic disease', ['dm', 'obesity']],
  ['dm', 'Diabetes mellitus', ['dm1', 'dm2']],
  ['dm1', 'Diabetes mellitus type 1', []],
  ['dm2', 'Diabetes mellitus type 2', []],
  ['obesity', 'Obesity', []],
];
const DIAGNOSIS_SNOMED: Record<string, string> = {
  'htn-essential': '59621000',
  'htn-secondary': '31992008',
  ihd: '414545008',
  dm1: '46635009',
  dm2: '44054006',
  obesity: '414916001',
};
const LEAF_DIAGNOSES = Object.keys(DIAGNOSIS_SNOMED);

// ------------------------------------------------------------------------------------------------
// The corpus

/** A resource as generated: `key` is its local key; references inside use `@key`. */
export interface CorpusEntry {
  key: string;
  resource: Resource;
}

export interface Corpus {
  /** In load order: batches whose references point only to earlier batches or into themselves. */
  batches: CorpusEntry[][];
  /** Local keys by resource type, in generation order. */
  keys: Record<string, string[]>;
  /** The generated resources by local key (references still `@key`). */
  byKey: Map<string, Resource>;
}

export function ref<T extends Resource = Resource>(key: string, display?: string): Reference<T> {
  return display ? { reference: `@${key}`, display } : { reference: `@${key}` };
}

/**
 * Generates the corpus. `tag` goes into every resource's meta.tag (system urn:test) so searches can
 * be scoped to this run.
 */
export function generateCorpus(seed: number, tag: string): Corpus {
  const r = new Rand(seed);
  const keys: Record<string, string[]> = {};
  const byKey = new Map<string, Resource>();
  const batches: CorpusEntry[][] = [[], [], [], [], []];
  const meta = (): Resource['meta'] => {
    const m: Resource['meta'] = { tag: [{ system: 'urn:test', code: tag }] };
    if (r.chance(0.7)) {
      m.source = r.pick(SOURCES);
    }
    return m;
  };
  const add = (batch: number, prefix: string, resource: Resource): string => {
    const list = (keys[resource.resourceType] ??= []);
    const key = `${prefix}-${list.length}`;
    list.push(key);
    byKey.set(key, resource);
    batches[batch].push({ key, resource });
    return key;
  };

  // ---- batch 0: organizations, practitioners, terminology
  const orgSpecs: [string, string | undefined, string, number | undefined, string][] = [
    ['Δίκτυο Υγείας Γεσύ', 'Gesy Network', 'govt', undefined, 'Λευκωσία'],
    ['Γενικό Νοσοκομείο Λευκωσίας', 'Nicosia General Hospital', 'prov', 0, 'Λευκωσία'],
    ['Καρδιολογική Κλινική', 'Cardiology Department', 'dept', 1, 'Λευκωσία'],
    ['Limassol Clinic', 'Κλινική Λεμεσού', 'prov', 0, 'Limassol'],
    ['Βιοχημικό Εργαστήριο Λάρνακας', undefined, 'prov', 0, 'Λάρνακα'],
    ['Paphos Medical Centre', undefined, 'prov', undefined, 'Πάφος'],
  ];
  for (const [i, [name, alias, type, partOf, city]] of orgSpecs.entries()) {
    const org: Organization = {
      resourceType: 'Organization',
      meta: meta(),
      identifier: [{ system: ORG_ID, value: `ORG-${100 + i}` }],
      name,
      type: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/organization-type', code: type }] }],
      address: [{ city, country: 'CY' }],
    };
    if (alias) {
      org.alias = [alias];
    }
    if (partOf !== undefined) {
      org.partOf = ref(`org-${partOf}`);
    }
    if (i !== 5) {
      org.active = i !== 4;
    }
    add(0, 'org', org);
  }

  for (let i = 0; i < 12; i++) {
    const greek = r.chance(0.5);
    const family = greek ? r.pick(GREEK_FAMILIES) : r.pick(LATIN_FAMILIES);
    const given = greek ? r.pick(GREEK_GIVEN) : r.pick(LATIN_GIVEN);
    const prac: Practitioner = {
      resourceType: 'Practitioner',
      meta: meta(),
      identifier: [{ system: MEDICAL_COUNCIL, value: `MC-${2000 + i * 7}` }],
      name: [{ family, given: [given], prefix: [greek ? 'Δρ.' : 'Dr.'] }],
      gender: r.pick(['male', 'female'] as const),
      telecom: [{ system: 'email', value: `Doc${i}.${greek ? 'Iatros' : 'Medic'}@Hospital.Example.ORG` }],
      address: [{ city: r.pick(CITIES).city }],
      qualification: [
        { code: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v2-0360', code: r.pick(['MD', 'RN', 'PharmD']) }] } },
      ],
    };
    if (i % 4 !== 3) {
      prac.active = i % 5 !== 0;
    }
    add(0, 'prac', prac);
  }

  const concept = (code: string): CodeSystemConcept => {
    const [, display, children] = DIAGNOSES.find((d) => d[0] === code) as [string, string, string[]];
    return children.length ? { code, display, concept: children.map(concept) } : { code, display };
  };
  add(0, 'cs', {
    resourceType: 'CodeSystem',
    meta: meta(),
    url: DIAGNOSES_CS,
    name: 'ErmisTestDiagnoses',
    status: 'active',
    content: 'complete',
    hierarchyMeaning: 'is-a',
    concept: ['cardio', 'metabolic'].map(concept),
  } satisfies CodeSystem);
  add(0, 'vs', {
    resourceType: 'ValueSet',
    meta: meta(),
    url: RENAL_VS,
    name: 'ErmisTestRenalAndGlucose',
    status: 'active',
    compose: {
      include: [{ system: LOINC, concept: [{ code: '2160-0' }, { code: '2345-7' }] }],
    },
  } satisfies ValueSet);

  // ---- batch 1: patients
  for (let i = 0; i < 60; i++) {
    const greek = r.chance(0.55);
    const family = greek ? r.pick(GREEK_FAMILIES) : r.pick(LATIN_FAMILIES);
    const given = [greek ? r.pick(GREEK_GIVEN) : r.pick(LATIN_GIVEN)];
    if (r.chance(0.25)) {
      given.push(greek ? r.pick(GREEK_GIVEN) : r.pick(LATIN_GIVEN));
    }
    const names: HumanName[] = [{ use: 'official', family, given }];
    if (r.chance(0.15)) {
      // a maiden name or a transliteration
      names.push({ use: r.pick(['maiden', 'usual'] as const), family: r.pick(LATIN_FAMILIES), given: [given[0]] });
    }
    if (i === 7) {
      // no family at all, only text
      names.splice(0, names.length, { text: 'Ο Άγνωστος Ασθενής' });
    }
    const identifier: Identifier[] = [];
    if (i % 9 !== 4) {
      identifier.push({ system: CY_ID, value: `CY${String(700000 + i * 137)}` });
    }
    if (r.chance(0.6)) {
      identifier.push({
        system: MRN,
        value: `MRN-${String(i).padStart(5, '0')}${i % 3 === 0 ? 'A' : ''}`,
        type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v2-0203', code: 'MR' }], text: 'Medical record number' },
      });
    }
    if (i % 11 === 2) {
      // an identifier without a system (for `identifier=|value`)
      identifier.push({ value: `LEGACY-${i}` });
    }
    if (i % 13 === 5) {
      identifier.push({ system: 'urn:passport:GR', value: `AE${1000 + i}`, type: { text: 'Διαβατήριο' } });
    }
    const patient: Patient = {
      resourceType: 'Patient',
      meta: meta(),
      name: names,
    };
    if (identifier.length) {
      patient.identifier = identifier;
    }
    const g = r.next();
    if (g < 0.45) {
      patient.gender = 'female';
    } else if (g < 0.88) {
      patient.gender = 'male';
    } else if (g < 0.94) {
      patient.gender = 'other';
    } else if (g < 0.97) {
      patient.gender = 'unknown';
    }
    const b = r.next();
    const year = r.int(1932, 2014);
    const month = String(r.int(1, 12)).padStart(2, '0');
    const day = String(r.int(1, 28)).padStart(2, '0');
    if (b < 0.15) {
      patient.birthDate = String(year);
    } else if (b < 0.3) {
      patient.birthDate = `${year}-${month}`;
    } else if (b < 0.92) {
      patient.birthDate = `${year}-${month}-${day}`;
    }
    if (r.chance(0.85)) {
      const local = `${greek ? 'Asthenis' : 'Patient'}.${i}`;
      patient.telecom = [{ system: 'email', value: `${local}@${r.pick(['Example.COM', 'mail.example.org', 'GMAIL.com'])}` }];
      if (r.chance(0.5)) {
        patient.telecom.push({ system: 'phone', value: `+357 22 ${String(100000 + i * 31)}`, use: 'home' });
      }
    }
    if (r.chance(0.8)) {
      const place = r.pick(CITIES);
      patient.address = [{ use: 'home', line: [`${r.pick(STREETS)} ${r.int(1, 120)}`], ...place }];
    }
    if (r.chance(0.8)) {
      patient.managingOrganization = ref(`org-${r.pick([1, 3, 4, 5])}`);
    }
    if (r.chance(0.7)) {
      patient.generalPractitioner = [r.chance(0.8) ? ref(`prac-${r.int(0, 11)}`) : ref(`org-${r.pick([1, 3])}`)];
    }
    if (r.chance(0.8)) {
      patient.active = r.chance(0.85);
    }
    if (i === 7) {
      delete patient.gender; // the unknown patient: no gender either
    }
    add(1, 'pat', patient);
  }
  // A few fixed patients for edge cases of string search (the prefix trap Smith/Smithson is random).
  add(1, 'pat', {
    resourceType: 'Patient',
    meta: meta(),
    name: [{ family: 'Παπασταύρου', given: ['Σταύρος'] }],
    birthDate: '1975-06',
    gender: 'male',
  } satisfies Patient);
  add(1, 'pat', {
    resourceType: 'Patient',
    meta: meta(),
    name: [{ family: 'Ανδρέου', given: ['Άννα'] }],
    birthDate: '1961-07-14',
    gender: 'female',
    identifier: [{ system: CY_ID, value: 'cy999001' }],
  } satisfies Patient);
  add(1, 'pat', {
    resourceType: 'Patient',
    meta: meta(),
    name: [{ family: 'ANDREOU', given: ['ANNA'] }],
    birthDate: '1961',
    gender: 'female',
    identifier: [{ system: CY_ID, value: 'CY999001' }],
  } satisfies Patient);

  const patients = keys.Patient;

  // ---- batch 2: encounters
  const encountersOf = new Map<string, string[]>();
  for (let i = 0; i < 60; i++) {
    const patient = r.pick(patients);
    const cls = r.pick([
      { code: 'AMB', display: 'ambulatory' },
      { code: 'AMB', display: 'ambulatory' },
      { code: 'IMP', display: 'inpatient encounter' },
      { code: 'EMER', display: 'emergency' },
    ]);
    const start = randomInstant(r, 2019, 2025);
    const enc: Encounter = {
      resourceType: 'Encounter',
      meta: meta(),
      identifier: [{ system: 'http://hospital.example.org/visit', value: `V-${5000 + i}` }],
      status: r.pick(['finished', 'finished', 'finished', 'in-progress', 'planned', 'cancelled'] as const),
      class: { system: ACT_CODE, ...cls },
      subject: ref(patient),
      period: { start: start.text },
    };
    if (r.chance(0.85)) {
      const minutes = cls.code === 'IMP' ? r.int(600, 12000) : r.int(10, 240);
      enc.period = { start: start.text, end: formatInstant(new Date(start.ms + minutes * 60_000), start.tz) };
      if (r.chance(0.8)) {
        enc.length = { value: minutes, unit: 'min', system: UCUM, code: 'min' };
      }
    }
    if (i % 10 === 9) {
      // day precision on both ends
      const d = start.text.slice(0, 10);
      enc.period = { start: d, end: d };
      delete enc.length;
    }
    if (r.chance(0.85)) {
      enc.participant = [{ individual: ref(`prac-${r.int(0, 11)}`) }];
    }
    if (r.chance(0.8)) {
      enc.serviceProvider = ref(`org-${r.pick([1, 2, 3, 4, 5])}`);
    }
    if (r.chance(0.6)) {
      const dx = r.pick(LEAF_DIAGNOSES);
      enc.reasonCode = [{ coding: [{ system: SNOMED, code: DIAGNOSIS_SNOMED[dx] }] }];
    }
    const key = add(2, 'enc', enc);
    encountersOf.set(patient, [...(encountersOf.get(patient) ?? []), key]);
  }

  // ---- batch 3: observations, conditions, risk assessments
  const labsOf = new Map<string, string[]>();
  for (let i = 0; i < 200; i++) {
    const patient = r.pick(patients);
    const kind = i < 9 ? OBS_KINDS[i] : r.pick(OBS_KINDS);
    const code: CodeableConcept = { coding: [{ system: LOINC, code: kind.code, display: kind.display }] };
    if (kind.code === '2345-7' && r.chance(0.4)) {
      code.coding?.push({ system: SNOMED, code: '33747003', display: 'Glucose measurement, blood' });
    }
    if (kind.code === '718-7' && r.chance(0.5)) {
      code.text = 'Αιμοσφαιρίνη';
    }
    const obs: Observation = {
      resourceType: 'Observation',
      meta: meta(),
      status: r.pick(['final', 'final', 'final', 'final', 'amended', 'preliminary', 'cancelled', 'entered-in-error'] as const),
      category: [{ coding: [{ system: OBS_CATEGORY, code: kind.category }] }],
      code,
    };
    if (i % 40 === 17) {
      obs.identifier = [{ system: 'http://lab.example.org/accession', value: `ACC-${i}` }];
    }
    // subject: mostly a literal reference, a few logical (identifier only), a few none
    if (i % 50 === 23) {
      obs.subject = { type: 'Patient', identifier: { system: CY_ID, value: `CY-EXT-${i}` } };
    } else if (i % 50 !== 41) {
      obs.subject = ref(patient);
    }
    const pr = r.next();
    if (pr < 0.6) {
      obs.performer = [ref(`prac-${r.int(0, 11)}`)];
    } else if (pr < 0.8) {
      obs.performer = [ref(`org-${r.pick([1, 2, 4])}`)];
    }
    const encounters = encountersOf.get(patient);
    if (obs.subject?.reference && encounters && r.chance(0.75)) {
      obs.encounter = ref(r.pick(encounters));
    }
    // effective[x]
    const e = r.next();
    if (e < 0.55) {
      obs.effectiveDateTime = randomInstant(r, 2019, 2025).text;
    } else if (e < 0.7) {
      obs.effectiveDateTime = randomInstant(r, 2019, 2025).text.slice(0, 10);
    } else if (e < 0.75) {
      obs.effectiveDateTime = randomInstant(r, 2019, 2025).text.slice(0, 7);
    } else if (e < 0.77) {
      obs.effectiveDateTime = randomInstant(r, 2019, 2025).text.slice(0, 4);
    } else if (e < 0.9) {
      const start = randomInstant(r, 2019, 2025);
      obs.effectivePeriod = { start: start.text };
      if (r.chance(0.7)) {
        obs.effectivePeriod.end = formatInstant(new Date(start.ms + r.int(1, 96 * 60) * 60_000), start.tz);
      }
    } else if (e < 0.92) {
      obs.effectiveInstant = new Date(randomInstant(r, 2019, 2025).ms + r.int(0, 999)).toISOString();
    }
    // value[x]
    if (kind.unit) {
      if (r.chance(0.93)) {
        const u = r.pick(kind.unit);
        obs.valueQuantity = { value: r.decimal(u.lo, u.hi, r.pick(u.decimals)), unit: u.unit, system: UCUM, code: u.code };
      } else {
        obs.dataAbsentReason = { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/data-absent-reason', code: 'error' }] };
      }
    } else if (kind.code === '85354-9') {
      const component = (c: string, display: string, lo: number, hi: number): ObservationComponent => ({
        code: { coding: [{ system: LOINC, code: c, display }] },
        valueQuantity: { value: r.int(lo, hi), unit: 'mmHg', system: UCUM, code: 'mm[Hg]' },
      });
      obs.component = [component('8480-6', 'Systolic blood pressure', 92, 185), component('8462-4', 'Diastolic blood pressure', 52, 112)];
      if (r.chance(0.1)) {
        delete obs.component[1].valueQuantity;
        obs.component[1].dataAbsentReason = {
          coding: [{ system: 'http://terminology.hl7.org/CodeSystem/data-absent-reason', code: 'not-performed' }],
        };
      }
    } else if (kind.code === '72166-2') {
      const s = r.pick(SMOKING);
      obs.valueCodeableConcept = { coding: [{ system: SNOMED, ...s }], text: s.display };
    } else {
      obs.valueString = r.pick(PATHOLOGY_TEXTS);
    }
    const key = add(3, 'obs', obs);
    if (kind.category === 'laboratory' && obs.subject?.reference) {
      labsOf.set(patient, [...(labsOf.get(patient) ?? []), key]);
    }
  }
  // Observations with unusual codes: local code system with Greek text, and a coding without a system.
  add(3, 'obs', {
    resourceType: 'Observation',
    meta: meta(),
    status: 'final',
    code: { coding: [{ system: LOCAL_CODES, code: 'CBC-GR', display: 'Γενική αίματος' }], text: 'Γενική εξέταση αίματος' },
    subject: ref(patients[1]),
    effectiveDateTime: '2024-02-29',
    valueString: 'Φυσιολογική',
  } satisfies Observation);
  add(3, 'obs', {
    resourceType: 'Observation',
    meta: meta(),
    status: 'final',
    code: { coding: [{ code: 'legacy-123', display: 'Legacy test' }] },
    subject: ref(patients[2]),
    effectiveDateTime: '2021-12-31T23:30:00-02:00',
    valueQuantity: { value: 100, unit: 'mg' },
  } satisfies Observation);
  add(3, 'obs', {
    resourceType: 'Observation',
    meta: meta(),
    status: 'final',
    code: { coding: [{ system: LOINC, code: '2160-0', display: 'Creatinine [Mass/volume] in Serum or Plasma' }] },
    subject: ref(patients[2]),
    derivedFrom: [ref('obs-0'), ref('obs-1')],
    effectivePeriod: { end: '2020-01-15T12:00:00Z' },
    valueQuantity: { value: 1.1, unit: 'mg/dL', system: UCUM, code: 'mg/dL' },
  } satisfies Observation);

  for (let i = 0; i < 40; i++) {
    const patient = r.pick(patients);
    const dx = r.pick(LEAF_DIAGNOSES);
    const display = (DIAGNOSES.find((d) => d[0] === dx) as [string, string, string[]])[1];
    const codings: Coding[] = [{ system: DIAGNOSES_CS, code: dx, display }];
    if (r.chance(0.8)) {
      codings.push({ system: SNOMED, code: DIAGNOSIS_SNOMED[dx], display });
    }
    const clinical = r.pick(['active', 'active', 'recurrence', 'relapse', 'inactive', 'remission', 'resolved']);
    const cond: Condition = {
      resourceType: 'Condition',
      meta: meta(),
      clinicalStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code: clinical }] },
      verificationStatus: {
        coding: [
          {
            system: 'http://terminology.hl7.org/CodeSystem/condition-ver-status',
            code: r.pick(['confirmed', 'confirmed', 'provisional', 'differential']),
          },
        ],
      },
      category: [
        {
          coding: [
            {
              system: 'http://terminology.hl7.org/CodeSystem/condition-category',
              code: r.pick(['problem-list-item', 'encounter-diagnosis']),
            },
          ],
        },
      ],
      code: { coding: codings, text: display },
      subject: ref(patient),
    };
    if (r.chance(0.6)) {
      cond.severity = { coding: [{ system: SNOMED, ...r.pick([{ code: '24484000' }, { code: '6736007' }, { code: '255604002' }]) }] };
    }
    const o = r.next();
    if (o < 0.45) {
      const t = randomInstant(r, 1995, 2024);
      cond.onsetDateTime = r.pick([t.text, t.text.slice(0, 10), t.text.slice(0, 7), t.text.slice(0, 4)]);
    } else if (o < 0.6) {
      const t = randomInstant(r, 2005, 2023);
      cond.onsetPeriod = { start: t.text.slice(0, 10), end: formatInstant(new Date(t.ms + r.int(10, 400) * 86_400_000), 'Z').slice(0, 10) };
    } else if (o < 0.8) {
      cond.onsetAge = { value: r.int(18, 80), unit: 'a', system: UCUM, code: 'a' };
    } else if (o < 0.9) {
      cond.onsetString = r.pick(['Στην παιδική ηλικία', 'After pregnancy', 'childhood']);
    }
    if (['inactive', 'remission', 'resolved'].includes(clinical) && r.chance(0.6)) {
      cond.abatementString = r.pick(['Μετά τη θεραπεία', 'after treatment', 'spontaneously']);
    }
    if (r.chance(0.8)) {
      cond.recordedDate = randomInstant(r, 2018, 2025).text;
    }
    const encounters = encountersOf.get(patient);
    if (encounters && r.chance(0.6)) {
      cond.encounter = ref(r.pick(encounters));
    }
    if (r.chance(0.3)) {
      cond.asserter = ref(`prac-${r.int(0, 11)}`);
    }
    add(3, 'cond', cond);
  }

  const probabilities = [0.02, 0.1, 0.125, 0.15, 0.3, 0.45, 0.5, 0.75, 0.9, 1, 0.05, 0.149];
  for (let i = 0; i < 15; i++) {
    const patient = r.pick(patients);
    const ra: RiskAssessment = {
      resourceType: 'RiskAssessment',
      meta: meta(),
      status: 'final',
      subject: ref(patient),
      occurrenceDateTime: randomInstant(r, 2020, 2025).text,
      prediction: [
        {
          outcome: { text: r.pick(['Stroke within 10 years', 'Εμφραγμα μυοκαρδίου']) },
          probabilityDecimal: probabilities[i % probabilities.length],
          qualitativeRisk: {
            coding: [{ system: 'http://terminology.hl7.org/CodeSystem/risk-probability', code: r.pick(['low', 'moderate', 'high']) }],
          },
        },
      ],
    };
    if (i % 4 === 0) {
      ra.prediction?.push({ outcome: { text: 'Death' }, probabilityDecimal: probabilities[(i + 5) % probabilities.length] });
    }
    if (i % 7 === 3) {
      // a prediction without a probability: the resource has no value for `probability`
      ra.prediction = [{ outcome: { text: 'Unknown' } }];
    }
    if (r.chance(0.6)) {
      ra.performer = ref(`prac-${r.int(0, 11)}`);
    }
    add(3, 'ra', ra);
  }

  // ---- batch 4: diagnostic reports with result references
  const panels = [
    { code: '58410-2', display: 'CBC panel - Blood by Automated count' },
    { code: '51990-0', display: 'Basic metabolic panel - Blood' },
    { code: '24331-1', display: 'Lipid panel with direct LDL - Serum or Plasma' },
  ];
  const withLabs = patients.filter((p) => (labsOf.get(p)?.length ?? 0) > 0);
  for (let i = 0; i < 25; i++) {
    const patient = withLabs[i % withLabs.length];
    const labs = labsOf.get(patient) as string[];
    const panel = r.pick(panels);
    const when = randomInstant(r, 2019, 2025);
    const dr: DiagnosticReport = {
      resourceType: 'DiagnosticReport',
      meta: meta(),
      status: r.pick(['final', 'final', 'preliminary', 'amended'] as const),
      category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v2-0074', code: r.pick(['LAB', 'HM', 'CH']) }] }],
      code: { coding: [{ system: LOINC, ...panel }] },
      subject: ref(patient),
      effectiveDateTime: when.text,
      issued: new Date(when.ms + r.int(1, 72) * 3_600_000 + r.int(0, 999)).toISOString(),
      result: labs.slice(0, r.int(1, Math.min(4, labs.length))).map((k) => ref(k)),
    };
    const encounters = encountersOf.get(patient);
    if (encounters && r.chance(0.5)) {
      dr.encounter = ref(r.pick(encounters));
    }
    if (r.chance(0.7)) {
      dr.performer = [r.chance(0.7) ? ref(`org-${r.pick([2, 4])}`) : ref(`prac-${r.int(0, 11)}`)];
    }
    if (r.chance(0.7)) {
      const normal = r.chance(0.6);
      dr.conclusionCode = [{ coding: [{ system: SNOMED, code: normal ? '17621005' : '263654008', display: normal ? 'Normal' : 'Abnormal' }] }];
      dr.conclusion = normal ? 'Φυσιολογικά ευρήματα' : 'Abnormal findings';
    }
    add(4, 'dr', dr);
  }

  // A List of patients (for `_list`), fixed members so that the PRNG sequence above is untouched.
  add(4, 'list', {
    resourceType: 'List',
    meta: meta(),
    status: 'current',
    mode: 'working',
    title: 'Ασθενείς υπό παρακολούθηση',
    entry: [1, 3, 5, 8, 13, 21, 34, 55].map((i) => ({ item: ref(patients[i]) })),
  } satisfies List);

  return { batches, keys, byKey };
}

/** A dateTime with seconds and a time zone, between Jan 1 of `fromYear` and Dec 31 of `toYear`. */
function randomInstant(r: Rand, fromYear: number, toYear: number): { text: string; ms: number; tz: string } {
  const lo = Date.UTC(fromYear, 0, 1);
  const hi = Date.UTC(toYear, 11, 31, 23, 59, 59);
  const ms = Math.floor((lo + r.next() * (hi - lo)) / 1000) * 1000;
  const tz = r.pick(TIMEZONES);
  return { text: formatInstant(new Date(ms), tz), ms, tz };
}

/** Formats an instant as a FHIR dateTime in the given zone (`Z` or `±hh:mm`), second precision. */
export function formatInstant(date: Date, tz: string): string {
  if (tz === 'Z') {
    return date.toISOString().replace(/\.\d{3}Z$/, 'Z');
  }
  const sign = tz.startsWith('-') ? -1 : 1;
  const [hh, mm] = tz.slice(1).split(':').map(Number);
  const local = new Date(date.getTime() + sign * (hh * 60 + mm) * 60_000);
  return local.toISOString().replace(/\.\d{3}Z$/, tz);
}

/** Replaces every `@key` reference in a resource (deeply) by what `resolve` answers for the key. */
export function mapReferences<T>(value: T, resolve: (key: string) => string): T {
  if (Array.isArray(value)) {
    return value.map((v) => mapReferences(v, resolve)) as T;
  }
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) {
      out[k] = k === 'reference' && typeof v === 'string' && v.startsWith('@') ? resolve(v.slice(1)) : mapReferences(v, resolve);
    }
    return out as T;
  }
  return value;
}

