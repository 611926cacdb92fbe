import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { Hl7Message, Hl7Segment } from '@medplum/core';
import { describe, expect, test } from 'vitest';
import { nameKeys } from '../names.ts';
import { mapAdt } from './adt.ts';
import type { AdtResult } from './adt.ts';
import type { Hl7Issue } from './issues.ts';
import { chooseByDemographics, matchPlan } from './patient-match.ts';
import { DEFAULT_IDENTITY, authoritySystem, patientFromPid } from './pid.ts';
import type { PatientIdentityConfig } from './pid.ts';
import { DEFAULT_CY_ID_SYSTEM, DEFAULT_MRN_SYSTEM, V2_0203 } from './systems.ts';
import { seededRandom } from '../../../tests/support/prng.ts';

// Test data from LinuxForHealth/hl7v2-fhir-converter (Apache-2.0), read in place; see its SOURCE.json.
const LFH_DIR = path.resolve(import.meta.dirname, '../../../../shared/testdata/linuxforhealth-hl7v2-fhir-converter');

interface SourceEntry {
  file: string;
  message_type: string;
  test_method: string;
}
const SOURCE = JSON.parse(readFileSync(path.join(LFH_DIR, 'SOURCE.json'), 'utf8')) as { files: SourceEntry[] };

const CONFIG: PatientIdentityConfig = { ...DEFAULT_IDENTITY, mrnAuthorities: ['CLINIC'] };

const parse = (text: string): Hl7Message => Hl7Message.parse(text);
const lfh = (file: string): Hl7Message => parse(readFileSync(path.join(LFH_DIR, file), 'utf8'));

function expectOk(result: AdtResult): Extract<AdtResult, { ok: true }> {
  if (!result.ok) {
    throw new Error(`expected ok, got ${JSON.stringify(result.issues)}`);
  }
  return result;
}

function expectFail(result: AdtResult): Hl7Issue[] {
  if (result.ok) {
    throw new Error(`expected a failure, got ${JSON.stringify(result)}`);
  }
  return result.issues;
}

describe('core Hl7Message behaviour this mapper relies on', () => {
  test('MSH numbering: MSH-1 is the field separator, MSH-2 the encoding characters, MSH-9 the type', () => {
    const msg = parse('MSH|^~\\&|LIS|LAB|ERMIS|CLINIC|20260301||ADT^A08^ADT_A01|CTRL-7|P|2.5.1||||||UNICODE UTF-8\rPID|1');
    const msh = msg.getSegment('MSH') as Hl7Segment;
    expect(msh.getField(1).toString()).toBe('|');
    expect(msh.getField(2).toString()).toBe('^~\\&');
    expect(msh.getField(3).toString()).toBe('LIS');
    expect(msh.getField(9).getComponent(1)).toBe('ADT');
    expect(msh.getComponent(9, 2)).toBe('A08');
    expect(msh.getField(10).toString()).toBe('CTRL-7');
    expect(msh.getField(18).toString()).toBe('UNICODE UTF-8');
  });

  test('core does not unescape, and throws for a repetition that does not exist (so we never call it so)', () => {
    const pid = parse('MSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.5\rPID|1||1\\S\\2^^^LAB').getSegment('PID') as Hl7Segment;
    expect(pid.getComponent(3, 1)).toBe('1\\S\\2');
    expect(() => pid.getField(3).getComponent(1, undefined, 5)).toThrow();
  });
});

describe('LinuxForHealth ADT corpus (every ADT file in SOURCE.json)', () => {
  const adtFiles = SOURCE.files.filter((f) => f.message_type.startsWith('ADT'));

  // Expectations from the messages and the upstream tests' assertions: the PID patient for the
  // A01 files (upstream maps them to one Patient each), the merge pairs for A40 (upstream asserts
  // a surviving and a retired Patient), and our refusal of the events ermis does not handle.
  const woodPatient = {
    identifier: [
      { system: authoritySystem('MR'), value: '000010016', assigner: { display: 'MR' } },
      { system: authoritySystem('MR'), value: '000010017', assigner: { display: 'MR' } },
      { system: authoritySystem('MR'), value: '000010018', assigner: { display: 'MR' } },
      { value: '465 306 5961' },
      { value: '407623' },
    ],
    name: [{ family: 'Wood', given: ['Patrick'], prefix: ['MR'], suffix: ['Sr'] }],
    birthDate: '1970-01-01',
    gender: 'female',
    address: [
      { line: ['High Street'], city: 'Oxford', postalCode: 'Ox1 4DP' },
      { line: ['George St'], city: 'Oxford', postalCode: 'Ox1 5AP' },
    ],
  };

  const expectations: Record<string, (r: AdtResult) => void> = {};
  for (const f of adtFiles) {
    const event = f.message_type.split('^')[1];
    if (event === 'A01') {
      expectations[f.file] = (r) => {
        const ok = expectOk(r);
        expect(ok.event).toBe('A01');
        expect(ok.patient).toEqual({ resourceType: 'Patient', ...woodPatient });
        expect(ok.nationalId).toBeUndefined();
        expect(ok.mrn).toBeUndefined();
        expect(ok.merge).toBeUndefined();
        expect(ok.issues).toEqual([]);
      };
    } else if (event === 'A02' || event === 'A03' || event === 'A34') {
      expectations[f.file] = (r) => {
        expect(expectFail(r)).toEqual([expect.objectContaining({ segment: 'MSH', sequence: 1, field: 9, code: '201', severity: 'E' })]);
      };
    }
  }
  expectations['HL7MergeFHIRConversionTest__validateHappyPathADT_A40WithMRG.hl7'] = (r) => {
    const ok = expectOk(r);
    expect(ok.event).toBe('A40');
    expect(ok.patient.identifier).toEqual([
      { type: { coding: [{ system: V2_0203, code: 'MR' }] }, system: authoritySystem('XYZ'), value: 'MR1', assigner: { display: 'XYZ' } },
    ]);
    expect(ok.merge).toEqual({ retired: [{ system: authoritySystem('XYZ'), value: 'MR2', assigner: { display: 'XYZ' } }] });
    // PID-5 is empty in this message: accepted with a warning
    expect(ok.issues).toEqual([expect.objectContaining({ field: 5, code: '101', severity: 'W' })]);
  };
  // Two PATIENT groups in one A40 (upstream's test is disabled): refused whole, never half-applied.
  expectations['HL7MergeFHIRConversionTest__validateTwoMRGs.hl7'] = (r) => {
    expect(expectFail(r)).toContainEqual(expect.objectContaining({ segment: 'PID', sequence: 2, code: '199', severity: 'E' }));
  };

  test('the corpus is what this test expects (every ADT file has an expectation)', () => {
    const onDisk = readdirSync(LFH_DIR).filter((f) => f.endsWith('.hl7'));
    expect(adtFiles.length).toBe(22);
    for (const f of adtFiles) {
      expect(onDisk).toContain(f.file);
      expect(Object.keys(expectations)).toContain(f.file);
    }
  });

  test.each(adtFiles.map((f) => [f.file, f.test_method]))('%s', (file) => {
    expectations[file](mapAdt(lfh(file), CONFIG));
  });

  test.each(SOURCE.files.filter((f) => !f.message_type.startsWith('ADT')).map((f) => [f.file]))('%s is not ADT → 200', (file) => {
    expect(expectFail(mapAdt(lfh(file), CONFIG))).toEqual([
      expect.objectContaining({ segment: 'MSH', sequence: 1, field: 9, component: 1, code: '200', severity: 'E' }),
    ]);
  });
});

const msh = (type: string, extra = ''): string => `MSH|^~\\&|PAS|CLINIC|ERMIS|ERMIS|20260301101500||${type}|MSG-${type}|P|2.5.1||||||UNICODE UTF-8${extra}`;
const GREEK_PID =
  'PID|1||123456^^^CYMOI^NNCYP~MRN-42^^^CLINIC^MR||ΓΕΩΡΓΙΟΥ^ΑΝΔΡΕΑΣ^^^^^L~GEORGIOU^ANDREAS^^^^^A||19700517|M|||Λεωφ. Μακαρίου 12^^Λευκωσία^^1065^CY^H||+35722123456^PRN^PH';

describe('hand-written ADT with Greek names', () => {
  test.each(['A01', 'A04', 'A08', 'A28', 'A31'])('ADT^%s → the patient to create or update', (event) => {
    const r = expectOk(mapAdt(parse(`${msh(`ADT^${event}`)}\rEVN|${event}|20260301101500\r${GREEK_PID}\rPV1|1|O`), CONFIG));
    expect(r.event).toBe(event);
    expect(r.nationalId).toBe('123456');
    expect(r.mrn).toBe('MRN-42');
    expect(r.merge).toBeUndefined();
    expect(r.issues).toEqual([]);
    expect(r.patient).toEqual({
      resourceType: 'Patient',
      identifier: [
        { use: 'official', type: { coding: [{ system: V2_0203, code: 'NNCYP' }] }, system: DEFAULT_CY_ID_SYSTEM, value: '123456' },
        { use: 'usual', type: { coding: [{ system: V2_0203, code: 'MR' }] }, system: DEFAULT_MRN_SYSTEM, value: 'MRN-42' },
      ],
      name: [
        { use: 'official', family: 'ΓΕΩΡΓΙΟΥ', given: ['ΑΝΔΡΕΑΣ'] },
        { use: 'usual', family: 'GEORGIOU', given: ['ANDREAS'] },
      ],
      birthDate: '1970-05-17',
      gender: 'male',
      address: [{ use: 'home', line: ['Λεωφ. Μακαρίου 12'], city: 'Λευκωσία', postalCode: '1065', country: 'CY' }],
      telecom: [{ system: 'phone', value: '+35722123456', use: 'home' }],
    });
  });

  test('A40: PID survives, MRG-1 (all repetitions) and MRG-4 name the record to retire', () => {
    const text = `${msh('ADT^A40^ADT_A39')}\rEVN|A40|20260301101500\r${GREEK_PID}\rMRG|654321^^^CYMOI^NNCYP~OLD-7^^^CLINIC^MR~L-9^^^BIOANALYTICA^PI|||P-OLD^^^LAB2`;
    const r = expectOk(mapAdt(parse(text), CONFIG));
    expect(r.event).toBe('A40');
    expect(r.nationalId).toBe('123456');
    expect(r.merge?.retired).toEqual([
      { use: 'official', type: { coding: [{ system: V2_0203, code: 'NNCYP' }] }, system: DEFAULT_CY_ID_SYSTEM, value: '654321' },
      { use: 'usual', type: { coding: [{ system: V2_0203, code: 'MR' }] }, system: DEFAULT_MRN_SYSTEM, value: 'OLD-7' },
      { type: { coding: [{ system: V2_0203, code: 'PI' }] }, system: authoritySystem('BIOANALYTICA'), value: 'L-9', assigner: { display: 'BIOANALYTICA' } },
      { system: authoritySystem('LAB2'), value: 'P-OLD', assigner: { display: 'LAB2' } },
    ]);
  });

  test('A40 whose national ID sits in PID-2 / MRG-4 for this lab', () => {
    const config: PatientIdentityConfig = { ...CONFIG, nationalIdField: 'PID-2' };
    const text = `${msh('ADT^A40')}\rPID|1|111111|L-1^^^LAB^PI||ΠΑΠΑΔΟΠΟΥΛΟΥ^ΜΑΡΙΑ||19851103|F\rMRG|L-2^^^LAB^PI|||999999`;
    const r = expectOk(mapAdt(parse(text), config));
    expect(r.nationalId).toBe('111111');
    expect(r.merge?.retired.map((i) => [i.system, i.value])).toEqual([
      [authoritySystem('LAB'), 'L-2'],
      [DEFAULT_CY_ID_SYSTEM, '999999'],
    ]);
  });

  test('Greek names sent in ISO 8859-7 and \\X..\\ escapes in that charset', () => {
    const text = `${msh('ADT^A08').replace('UNICODE UTF-8', '8859/7')}\rPID|1||1^^^LAB^PI||\\XD7\\ΡΙΣΤΟΔΟΥΛΟΥ^ΕΛΕΝΗ||19900101|F`;
    const r = expectOk(mapAdt(parse(text), CONFIG));
    expect(r.patient.name?.[0]).toEqual({ family: 'ΧΡΙΣΤΟΔΟΥΛΟΥ', given: ['ΕΛΕΝΗ'] });
    expect(nameKeys(r.patient.name?.[0] ?? {})).toContain('CHRISTODOULOU|ELENI');
  });

  test('the trigger comes from EVN-1 when MSH-9.2 is empty; case does not matter', () => {
    expect(expectOk(mapAdt(parse(`${msh('ADT')}\rEVN|A28\r${GREEK_PID}`), CONFIG)).event).toBe('A28');
    expect(expectOk(mapAdt(parse(`${msh('adt^a04')}\r${GREEK_PID}`), CONFIG)).event).toBe('A04');
  });

  test('warnings travel with an accepted message', () => {
    const r = expectOk(mapAdt(parse(`${msh('ADT^A08')}\rPID|1||1^^^LAB^PI||ΝΙΚΟΛΑΟΥ^ΝΙΚΟΣ|||Q`), CONFIG));
    expect(r.issues).toEqual([expect.objectContaining({ segment: 'PID', field: 8, code: '103', severity: 'W' })]);
  });
});

describe('refusals', () => {
  test.each(['A02', 'A03', 'A11', 'A34', 'A39', 'Z99'])('ADT^%s → 201 at MSH-9.2', (event) => {
    expect(expectFail(mapAdt(parse(`${msh(`ADT^${event}`)}\r${GREEK_PID}`), CONFIG))).toEqual([
      { segment: 'MSH', sequence: 1, field: 9, component: 2, code: '201', severity: 'E', reason: `ADT event '${event}' is not supported` },
    ]);
  });

  test('no trigger at all → 201', () => {
    expect(expectFail(mapAdt(parse(`${msh('ADT')}\r${GREEK_PID}`), CONFIG))[0]).toMatchObject({ code: '201', reason: 'ADT trigger event missing' });
  });

  test.each(['ORU^R01', 'ACK^A01', 'ORM^O01', ''])('message type %j → 200 at MSH-9.1', (type) => {
    expect(expectFail(mapAdt(parse(`${msh(type)}\r${GREEK_PID}`), CONFIG))).toEqual([
      expect.objectContaining({ segment: 'MSH', field: 9, component: 1, code: '200', severity: 'E' }),
    ]);
  });

  test.each(['MSH', 'MSH|', 'MSH|^~\\&', 'MSH\rPID|1', 'MSHADT^A01', 'MSH|||||||||ADT^A01\rPID'])('degenerate header %j → 200, no throw', (text) => {
    expect(expectFail(mapAdt(parse(text), CONFIG))).toEqual([expect.objectContaining({ code: '200' })]);
  });

  test('no MSH → 100', () => {
    const msg = new Hl7Message([Hl7Segment.parse('PID|1||1^^^LAB^PI||X^Y')]);
    expect(expectFail(mapAdt(msg, CONFIG))).toEqual([expect.objectContaining({ segment: 'MSH', code: '100' })]);
  });

  test('no PID → 100 at PID', () => {
    expect(expectFail(mapAdt(parse(`${msh('ADT^A01')}\rEVN|A01\rPV1|1|O`), CONFIG))).toEqual([
      expect.objectContaining({ segment: 'PID', sequence: 1, code: '100', severity: 'E' }),
    ]);
  });

  test('PID-3 missing → 101 at PID-3', () => {
    expect(expectFail(mapAdt(parse(`${msh('ADT^A08')}\rPID|1||||ΓΕΩΡΓΙΟΥ^ΑΝΔΡΕΑΣ||19700517|M`), CONFIG))).toEqual([
      expect.objectContaining({ segment: 'PID', sequence: 1, field: 3, code: '101', severity: 'E' }),
    ]);
  });

  test('invalid birth date → 102 at PID-7', () => {
    expect(expectFail(mapAdt(parse(`${msh('ADT^A04')}\rPID|1||1^^^LAB^PI||X^Y||19701345|M`), CONFIG))).toEqual([
      expect.objectContaining({ segment: 'PID', field: 7, code: '102', severity: 'E' }),
    ]);
  });

  test('A40 without MRG → 100 at MRG; empty MRG-1 → 101; MRG naming the survivor → 199', () => {
    expect(expectFail(mapAdt(parse(`${msh('ADT^A40')}\r${GREEK_PID}`), CONFIG))).toEqual([
      expect.objectContaining({ segment: 'MRG', code: '100', severity: 'E' }),
    ]);
    expect(expectFail(mapAdt(parse(`${msh('ADT^A40')}\r${GREEK_PID}\rMRG|||`), CONFIG))).toEqual([
      expect.objectContaining({ segment: 'MRG', field: 1, code: '101', severity: 'E' }),
    ]);
    expect(expectFail(mapAdt(parse(`${msh('ADT^A40')}\r${GREEK_PID}\rMRG|123456^^^CYMOI^NNCYP`), CONFIG))).toEqual([
      expect.objectContaining({ segment: 'MRG', field: 1, code: '199', severity: 'E' }),
    ]);
  });
});

describe('fuzz: mutated PID/ADT messages never throw', () => {
  test('4000 seeded mutations', { timeout: 60_000 }, () => {
    const seeds = [
      ...SOURCE.files.filter((f) => f.message_type.startsWith('ADT')).map((f) => readFileSync(path.join(LFH_DIR, f.file), 'utf8')),
      ...['A01', 'A04', 'A08', 'A28', 'A31'].map((e) => `${msh(`ADT^${e}`)}\rEVN|${e}\r${GREEK_PID}`),
      `${msh('ADT^A40')}\r${GREEK_PID}\rMRG|654321^^^CYMOI^NNCYP~OLD-7^^^CLINIC^MR|||P-OLD^^^LAB2`,
    ];
    const tokens = [
      '|', '^', '~', '\\', '&', '\r', '\n', '""', '\\X', '\\XC3\\', '\\XZZ\\', '\\X\\', '\\F\\', '\\S\\', '\\E\\', '\\.br\\', '\\.sp 99999\\',
      '\\H\\', 'PID|', 'MRG|', 'EVN|', 'MSH|^~\\&|', 'ADT^A40', 'ADT^A01', 'ΓΕΩΡΓΙΟΥ', 'ΐΰς', '\u0308\u0301', '99999999', '19700230',
      '20261301123099+9999', 'NNCYP', 'MR', '&2.16.196&ISO', '&zz&UUID', 'Y', 'N', '\uFFFD', '\u0000', 'X'.repeat(500),
    ];
    const configs: PatientIdentityConfig[] = [
      CONFIG,
      { ...CONFIG, nationalIdField: 'PID-19', nationalIdTypes: [], mrnAuthorities: ['XYZ', 'MR', ''], timeZone: 'Asia/Nicosia' },
      { ...CONFIG, nationalIdField: 'PID-2' },
    ];
    const rand = seededRandom(0x5eed1e55);
    const pick = <T,>(xs: T[]): T => xs[Math.floor(rand() * xs.length)];
    const validCodes = new Set(['100', '101', '102', '103', '104', '199', '200', '201', '203', '204', '207']);
    let parsed = 0;
    let accepted = 0;
    const iterations = 4000;
    for (let n = 0; n < iterations; n++) {
      let text = pick(seeds);
      const rounds = 1 + Math.floor(rand() * 4);
      for (let k = 0; k < rounds; k++) {
        text = mutate(text, rand, pick, tokens);
      }
      let msg: Hl7Message;
      try {
        msg = Hl7Message.parse(text);
      } catch {
        // core refuses text that does not start with MSH; that is the caller's NAK, not ours
        expect(text.startsWith('MSH')).toBe(false);
        continue;
      }
      parsed++;
      for (const config of configs) {
        let result: AdtResult | undefined;
        try {
          result = mapAdt(msg, config);
          for (const [i, pid] of msg.getAllSegments('PID').entries()) {
            const { patient, issues } = patientFromPid(pid, config, { sequence: i + 1, charset: pick(['', '8859/7', 'UNICODE UTF-8', 'bogus']) });
            matchPlan(patient, config);
            chooseByDemographics(patient, [patient, { ...patient, gender: 'female' }, { resourceType: 'Patient' }]);
            (patient.name ?? []).forEach((name) => nameKeys(name));
            JSON.stringify(patient);
            for (const issue of issues) {
              expect(validCodes.has(issue.code)).toBe(true);
            }
          }
        } catch (err) {
          throw new Error(`threw on mutation ${n}: ${JSON.stringify(text)}: ${(err as Error).stack}`);
        }
        if (result.ok) {
          accepted++;
          expect(result.patient.resourceType).toBe('Patient');
          expect(['A01', 'A04', 'A08', 'A28', 'A31', 'A40']).toContain(result.event);
        } else {
          expect(result.issues.length).toBeGreaterThan(0);
          for (const issue of result.issues) {
            expect(validCodes.has(issue.code)).toBe(true);
          }
        }
      }
    }
    // the mutations must mostly keep a parseable message, or the fuzz tests nothing
    expect(parsed).toBeGreaterThan(iterations * 0.8);
    expect(accepted).toBeGreaterThan(0);
  });
});

function mutate(text: string, rand: () => number, pick: <T>(xs: T[]) => T, tokens: string[]): string {
  const pos = Math.floor(rand() * (text.length + 1));
  switch (Math.floor(rand() * 7)) {
    case 0:
      return text.slice(0, pos) + pick(tokens) + text.slice(pos);
    case 1:
      return text.slice(0, pos) + text.slice(pos + 1 + Math.floor(rand() * 20));
    case 2:
      return text.slice(0, pos) + String.fromCharCode(Math.floor(rand() * 0x3ff)) + text.slice(pos + 1);
    case 3: {
      const segs = text.split('\r');
      segs.splice(1 + Math.floor(rand() * segs.length), 0, pick(segs));
      return segs.join('\r');
    }
    case 4: {
      const segs = text.split('\r');
      if (segs.length > 1) {
        segs.splice(1 + Math.floor(rand() * (segs.length - 1)), 1);
      }
      return segs.join('\r');
    }
    case 5:
      // keep MSH intact most of the time so the segment mappers are exercised
      return text.slice(0, Math.max(pos, 12));
    default: {
      const segs = text.split('\r');
      const i = Math.floor(rand() * segs.length);
      const fields = segs[i].split('|');
      const j = Math.floor(rand() * fields.length);
      fields[j] = pick(tokens) + fields[j].split('').reverse().join('');
      segs[i] = fields.join('|');
      return segs.join('\r');
    }
  }
}

