import { Hl7Message } from '@medplum/core';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, test } from 'vitest';
import { emptyLabProfile, type LabProfile } from './lab-profile.ts';
import { mapOru, ORIGINAL_VALUE_EXTENSION, type Hl7Issue, type OruMapping } from './oru.ts';
import { fillerOrderSystem, labCodeSystem, labResultSystem, LOINC, PLACER_ORDER_SYSTEM, specimenSystem, UCUM, V3_INTERPRETATION } from './systems.ts';
import { parseHl7, seededProfile, TESTDATA } from './test-support.ts';
import { seededRandom } from '../../../tests/support/prng.ts';

const BIOANALYTICA = [
  'MSH|^~\\&|BIOLIS|BIOANALYTICA|ERMIS|CARDIO-NIC|20250312093000||ORU^R01^ORU_R01|BIO-000123|P|2.5.1|||NE|NE|CYP|8859/7|el',
  'PID|1||X123456^^^CYMOI^NNCYP||ΓΕΩΡΓΙΟΥ^ΑΝΔΡΕΑΣ||19620514|M',
  'ORC|RE|ERM-ORD-1|BIO-2025-0001',
  'OBR|1|ERM-ORD-1|BIO-2025-0001|BIOCHEM^Βιοχημικές εξετάσεις|||20250312081500|||||||||||||||20250312092900||CH|F',
  'NTE|1|L|Δείγμα ελαφρώς αιμολυμένο',
  'OBX|1|NM|CREA^Κρεατινίνη||88|µmol/L|62-106|N|||F|||20250312081500',
  'OBX|2|NM|K^Κάλιο||6.8|mmol/L|3.5-5.1|HH|||F',
  'NTE|1|L|Επανάληψη: επιβεβαιώθηκε',
  'OBX|3|NM|NA^\\XCDDC\\τριο||139|mmol/L|136-145|N|||F',
  'OBX|4|NM|TNIHS^Τροπονίνη Ι υψηλής ευαισθησίας||12.5|ng/L|<15.6||||F',
  'OBX|5|NM|GLU^Γλυκόζη||1.9|mmol/L|3.9-6.1|L|||F',
  'OBX|6|NM|XYZ^Άγνωστη εξέταση||1|U/L||||F',
  'SPM|1|^BIO-S-1||119364003^Serum specimen^SCT|||||||||||||20250312081500|20250312083000',
].join('\r');

const YIANNOUKAS = [
  'MSH|^~\\&|YLIS|YIANNOUKAS|ERMIS|CARDIO-LIM|20250312101500||ORU^R01^ORU_R01|Y-778|P|2.5.1|||AL|NE|CYP|UNICODE UTF-8',
  'PID|1||Y-99812^^^YIANNOUKAS^MR||GEORGIOU^ANDREAS||19620514|M|||||||||||X123456',
  'OBR|1|ERM-ORD-2|Y-2025-555|LIPID^Lipid profile^L|||20250312073000|||||||||||||||20250312101000|||F',
  'OBX|1|NM|2093-3^Cholesterol [Mass/volume] in Serum or Plasma^LN||212|mg/dL|<200|H|||F',
  'OBX|2|NM|2345-7^Glucose [Mass/volume] in Serum or Plasma^LN||512|mg/dL|70-99|H|||F',
  'OBX|3|SN|89579-7^Troponin I.cardiac [Mass/volume] in Serum or Plasma by High sensitivity method^LN||>^50000|ng/L||HH|||F',
].join('\r');

const PDF_BASE64 = 'JVBERi0xLjQKJcOkw7zDtsOfCjIgMCBvYmoKPDwvTGVuZ3RoIDM+PgpzdHJlYW0KZW5kc3RyZWFtCmVuZG9iago=';
const NIPD = [
  'MSH|^~\\&|NIPDLIS|NIPDGENETICS|ERMIS|CARDIO-NIC|20250401120000||ORU^R01^ORU_R01|N-1|P|2.5.1||||||CYP|UNICODE UTF-8',
  'PID|1||X654321^^^CYMOI^NNCYP||ΠΑΠΑΔΟΠΟΥΛΟΥ^ΜΑΡΙΑ||19900101|F',
  'OBR|1||NIPD-77|VERACITY^Veracity NIPT^L|||20250320090000|||||||||||||||20250401115500|||F',
  'OBX|1|FT|RESULT^Αποτέλεσμα^L||Low risk for trisomy 21, 18 and 13.\\.br\\Fetal fraction: 9.8 %||||||F',
  'OBX|2|TX|COMMENT^Σχόλιο^L||Χαμηλός κίνδυνος.~Συνιστάται γενετική συμβουλευτική.||||||F',
  `OBX|3|ED|PDF^Αναφορά PDF^L||NIPDLIS^APPLICATION^PDF^Base64^${PDF_BASE64}||||||F`,
].join('\r');

function mapped(text: string, profile: LabProfile): OruMapping {
  const r = mapOru(parseHl7(text), profile);
  if (!r.ok) {
    throw new Error(`rejected: ${JSON.stringify(r.issues)}`);
  }
  return r.mapping;
}

function errors(text: string, profile: LabProfile = emptyLabProfile('t')): Hl7Issue[] {
  const r = mapOru(parseHl7(text), profile);
  return r.ok ? [] : r.issues.filter((i) => i.severity === 'E');
}

const HEAD = 'MSH|^~\\&|LIS|LAB|ERMIS|CLINIC|20250101120000||ORU^R01|C1|P|2.5.1\rPID|1||X1';
const msg = (...rows: string[]): string => [HEAD, ...rows].join('\r');

describe('Bioanalytica (local codes, Greek, SI, ConceptMap by unit, critical limits)', () => {
  const m = mapped(BIOANALYTICA, seededProfile('bioanalytica'));
  const report = m.reports[0];
  const byCode = (code: string) => report.results.find((r) => r.observation.code.coding?.[0].code === code);

  test('message and report identifiers, status, category, effective, issued', () => {
    expect(m.messageType).toBe('ORU^R01');
    expect(m.controlId).toBe('BIO-000123');
    expect(report.pidSegmentIndex).toBe(1);
    expect(report.filler).toBe('BIO-2025-0001');
    expect(report.placer).toBe('ERM-ORD-1');
    expect(report.report.identifier).toEqual([
      { type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v2-0203', code: 'FILL', display: 'Filler Identifier' }] }, system: fillerOrderSystem('bioanalytica'), value: 'BIO-2025-0001' },
      { type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v2-0203', code: 'PLAC', display: 'Placer Identifier' }] }, system: PLACER_ORDER_SYSTEM, value: 'ERM-ORD-1' },
    ]);
    expect(report.report.status).toBe('final');
    expect(report.report.category?.map((c) => c.coding?.[0].code)).toEqual(['LAB', 'CH']);
    expect(report.report.code).toEqual({ coding: [{ system: labCodeSystem('bioanalytica'), code: 'BIOCHEM', display: 'Βιοχημικές εξετάσεις' }] });
    expect(report.report.effectiveDateTime).toBe('2025-03-12T08:15:00+02:00');
    expect(report.report.issued).toBe('2025-03-12T09:29:00+02:00');
    expect(report.report).not.toHaveProperty('subject');
    expect(report.report).not.toHaveProperty('id');
  });

  test('creatinine in µmol/L: Greek display kept, LOINC 14682-9 added by unit, UCUM umol/L, key', () => {
    const crea = byCode('CREA');
    expect(crea?.key).toBe('BIO-2025-0001|CREA|');
    expect(crea?.observation.identifier).toEqual([{ system: labResultSystem('bioanalytica'), value: 'BIO-2025-0001|CREA|' }]);
    expect(crea?.observation.code.coding).toEqual([
      { system: labCodeSystem('bioanalytica'), code: 'CREA', display: 'Κρεατινίνη' },
      { system: LOINC, code: '14682-9', display: 'Creatinine [Moles/volume] in Serum or Plasma' },
    ]);
    expect(crea?.observation.valueQuantity).toEqual({ value: 88, unit: 'µmol/L', system: UCUM, code: 'umol/L' });
    expect(crea?.observation.referenceRange).toEqual([
      { text: '62-106', low: { value: 62, unit: 'µmol/L', system: UCUM, code: 'umol/L' }, high: { value: 106, unit: 'µmol/L', system: UCUM, code: 'umol/L' } },
    ]);
    expect(crea?.observation.effectiveDateTime).toBe('2025-03-12T08:15:00+02:00');
    expect(crea?.observation.issued).toBe('2025-03-12T09:29:00+02:00');
    expect(crea?.observation.interpretation).toEqual([{ coding: [{ system: V3_INTERPRETATION, code: 'N', display: 'Normal' }] }]);
    expect(crea?.critical).toBeUndefined();
  });

  test('potassium 6.8 flagged HH: critical from the lab flag, note from the NTE after it', () => {
    const k = byCode('K');
    expect(k?.critical).toEqual({ flag: 'HH', reason: expect.stringContaining('HH') });
    expect(k?.observation.note).toEqual([{ text: 'Επανάληψη: επιβεβαιώθηκε' }]);
    expect(k?.observation.effectiveDateTime).toBe('2025-03-12T08:15:00+02:00'); // OBR-7 fallback
  });

  test('\\X..\\ escape decoded as ISO 8859-7 (the profile charset)', () => {
    expect(byCode('NA')?.observation.code.coding?.[0].display).toBe('Νάτριο');
  });

  test('glucose 1.9 mmol/L: below the critical limit 2.5 though only flagged L', () => {
    expect(byCode('GLU')?.critical).toEqual({ flag: 'limit', reason: expect.stringContaining('below the critical limit 2.5') });
  });

  test('troponin under the critical limit: range "<15.6" parsed as high', () => {
    const t = byCode('TNIHS');
    expect(t?.critical).toBeUndefined();
    expect(t?.observation.referenceRange?.[0].high?.value).toBe(15.6);
    expect(t?.observation.code.coding?.[1].code).toBe('89579-7');
  });

  test('an unmapped local code keeps its coding and warns (103)', () => {
    expect(byCode('XYZ')?.observation.code.coding).toHaveLength(1);
    expect(m.warnings).toContainEqual(expect.objectContaining({ segment: 'OBX', sequence: 6, field: 3, code: '103', severity: 'W' }));
  });

  test('NTE after OBR → orderNotes; SPM → Specimen', () => {
    expect(report.orderNotes).toEqual(['Δείγμα ελαφρώς αιμολυμένο']);
    expect(report.specimens).toEqual([
      {
        key: 'BIO-S-1',
        specimen: {
          resourceType: 'Specimen',
          identifier: [{ system: specimenSystem('bioanalytica'), value: 'BIO-S-1' }],
          type: { coding: [{ system: 'http://snomed.info/sct', code: '119364003', display: 'Serum specimen' }] },
          collection: { collectedDateTime: '2025-03-12T08:15:00+02:00' },
          receivedTime: '2025-03-12T08:30:00+02:00',
        },
      },
    ]);
  });
});

describe('Yiannoukas (LOINC in OBX-3, conventional units)', () => {
  const m = mapped(YIANNOUKAS, seededProfile('yiannoukas'));
  const [chol, glu, tni] = m.reports[0].results;

  test('LOINC as sent, no extra coding, no warning about mappings', () => {
    expect(chol.observation.code.coding).toEqual([{ system: LOINC, code: '2093-3', display: 'Cholesterol [Mass/volume] in Serum or Plasma' }]);
    expect(chol.observation.referenceRange?.[0]).toMatchObject({ text: '<200', high: { value: 200, code: 'mg/dL' } });
    expect(m.warnings.filter((w) => w.code === '103')).toEqual([]);
  });

  test('glucose 512 mg/dL crosses the 450 mg/dL limit; hs-TnI >50000 flagged HH', () => {
    expect(glu.critical?.flag).toBe('limit');
    expect(glu.critical?.reason).toContain('above the critical limit 450');
    expect(tni.observation.valueQuantity).toEqual({ value: 50000, comparator: '>', unit: 'ng/L', system: UCUM, code: 'ng/L' });
    expect(tni.critical?.flag).toBe('HH');
    expect(chol.critical).toBeUndefined();
  });

  test('only a placer-less filler: both identifiers present', () => {
    expect(m.reports[0].report.identifier?.map((i) => i.value)).toEqual(['Y-2025-555', 'ERM-ORD-2']);
  });
});

describe('NIPD Genetics (narrative and PDF)', () => {
  const m = mapped(NIPD, seededProfile('nipd-genetics'));
  const r = m.reports[0];

  test('FT with \\.br\\ and TX repetitions become multi-line strings', () => {
    expect(r.results[0].observation.valueString).toBe('Low risk for trisomy 21, 18 and 13.\nFetal fraction: 9.8 %');
    expect(r.results[1].observation.valueString).toBe('Χαμηλός κίνδυνος.\nΣυνιστάται γενετική συμβουλευτική.');
  });

  test('ED PDF → the report presentedForm; the Observation points to it and has no value', () => {
    expect(r.report.presentedForm).toEqual([{ contentType: 'application/pdf', data: PDF_BASE64, title: 'Αναφορά PDF' }]);
    const pdfObs = r.results[2].observation;
    expect(pdfObs.note?.[0].text).toContain('presentedForm[0]');
    expect(Object.keys(pdfObs).filter((k) => k.startsWith('value'))).toEqual([]);
    expect(pdfObs.dataAbsentReason).toBeUndefined();
  });
});

describe('unit conversion (opt-in per ConceptMap target)', () => {
  const profile = seededProfile('bioanalytica');
  profile.codeMap.set('CREA', [
    { loinc: '2160-0', display: 'Creatinine [Mass/volume] in Serum or Plasma', whenUnit: 'umol/L', convert: { unit: 'mg/dL', factor: 1 / 88.4 } },
    { loinc: '2160-0', whenUnit: 'mg/dL' },
  ]);
  profile.critical.set('2160-0', { loinc: '2160-0', unit: 'mg/dL', high: 10 });

  test('88 µmol/L stored as 0.995 mg/dL with LOINC 2160-0; the value as sent kept in an extension; range converted, text as sent', () => {
    const obs = mapped(msg('OBR|1||F1|P^Panel', 'OBX|1|NM|CREA^Κρεατινίνη||88|µmol/L|62-106|N|||F'), profile).reports[0].results[0].observation;
    expect(obs.valueQuantity).toEqual({ value: 0.995, unit: 'mg/dL', system: UCUM, code: 'mg/dL' });
    expect(obs.extension).toEqual([{ url: ORIGINAL_VALUE_EXTENSION, valueQuantity: { value: 88, unit: 'µmol/L', system: UCUM, code: 'umol/L' } }]);
    expect(obs.code.coding?.[1]).toEqual({ system: LOINC, code: '2160-0', display: 'Creatinine [Mass/volume] in Serum or Plasma' });
    expect(obs.referenceRange?.[0]).toEqual({
      text: '62-106',
      low: { value: 0.701, unit: 'mg/dL', system: UCUM, code: 'mg/dL' },
      high: { value: 1.199, unit: 'mg/dL', system: UCUM, code: 'mg/dL' },
    });
  });

  test('critical limits apply to the converted value (950 µmol/L = 10.7 mg/dL > 10)', () => {
    const r = mapped(msg('OBR|1||F1|P^Panel', 'OBX|1|NM|CREA^Κρεατινίνη||950|µmol/L||||F'), profile).reports[0].results[0];
    expect(r.critical?.flag).toBe('limit');
  });

  test('a result already in the target unit is stored as sent', () => {
    const obs = mapped(msg('OBR|1||F1|P^Panel', 'OBX|1|NM|CREA^Κρεατινίνη||1.1|mg/dL||||F'), profile).reports[0].results[0].observation;
    expect(obs.valueQuantity).toEqual({ value: 1.1, unit: 'mg/dL', system: UCUM, code: 'mg/dL' });
    expect(obs.extension).toBeUndefined();
  });

  test('without a matching target unit no LOINC is guessed', () => {
    const obs = mapped(msg('OBR|1||F1|P^Panel', 'OBX|1|NM|CREA^Κρεατινίνη||0.088|mmol/L||||F'), profile).reports[0].results[0].observation;
    expect(obs.code.coding).toHaveLength(1);
  });
});

describe('critical limits', () => {
  const profile = seededProfile('bioanalytica');
  const k = (value: string, unit = 'mmol/L', flag = '') => mapped(msg('OBR|1||F1|P^Panel', `OBX|1|NM|K^Κάλιο||${value}|${unit}||${flag}|||F`), profile).reports[0].results[0].critical;

  test.each([
    ['2.7', 'limit'],
    ['2.8', undefined],
    ['6.2', undefined],
    ['6.3', 'limit'],
    ['4.0', undefined],
  ])('potassium %s mmol/L → %s', (v, flag) => {
    expect(k(v)?.flag).toBe(flag);
  });

  test('meq/L is a different UCUM code: no silent comparison; LL/HU/AA flags count', () => {
    expect(k('7.0', 'mEq/L')).toBeUndefined();
    expect(k('4.0', 'mmol/L', 'LL')?.flag).toBe('LL');
    expect(k('4.0', 'mmol/L', 'HU')?.flag).toBe('HH');
    expect(k('4.0', 'mmol/L', 'AA')?.flag).toBe('AA');
  });

  test('comparators: "<2" is surely below 2.8, "<3" is not known to be', () => {
    expect(mapped(msg('OBR|1||F1|P^Panel', 'OBX|1|SN|K^Κάλιο||<^2|mmol/L||||F'), profile).reports[0].results[0].critical?.flag).toBe('limit');
    expect(mapped(msg('OBR|1||F1|P^Panel', 'OBX|1|SN|K^Κάλιο||<^3|mmol/L||||F'), profile).reports[0].results[0].critical).toBeUndefined();
  });

  test('INR above 5 ({INR}), hs-TnI above 52 ng/L, sodium below 120', () => {
    const one = (row: string) => mapped(msg('OBR|1||F1|P^Panel', row), profile).reports[0].results[0].critical?.flag;
    expect(one('OBX|1|NM|INR^INR||5.6|{INR}||||F')).toBe('limit');
    expect(one('OBX|1|NM|INR^INR||4.9|{INR}||||F')).toBeUndefined();
    expect(one('OBX|1|NM|TNIHS^Τροπονίνη||120|ng/L||||F')).toBe('limit');
    expect(one('OBX|1|NM|NA^Νάτριο||118|mmol/L||||F')).toBe('limit');
  });
});

describe('structure', () => {
  const P = emptyLabProfile('t');

  test('two patients, two orders each: grouped by position, pidSegmentIndex points at msg.segments', () => {
    const text = [
      HEAD,
      'OBR|1||A1|P^Panel',
      'OBX|1|NM|X^x||1||||||F',
      'OBR|2||A2|P^Panel',
      'OBX|1|NM|X^x||2||||||F',
      'PID|2||X2',
      'PV1|1|O',
      'ORC|RE|PL3|A3',
      'OBR|1|||P^Panel',
      'OBX|1|NM|X^x||3||||||F',
    ].join('\r');
    const m = mapped(text, P);
    expect(m.reports.map((r) => [r.pidSegmentIndex, r.filler, r.results.map((x) => x.observation.valueQuantity?.value)])).toEqual([
      [1, 'A1', [1]],
      [1, 'A2', [2]],
      [6, 'A3', [3]],
    ]);
    expect(parseHl7(text).segments[6].name).toBe('PID');
  });

  test('ORC-2/3 are preferred over OBR-2/3', () => {
    const m = mapped(msg('ORC|RE|ORC-P|ORC-F', 'OBR|1|OBR-P|OBR-F|P^Panel'), P);
    expect([m.reports[0].placer, m.reports[0].filler]).toEqual(['ORC-P', 'ORC-F']);
  });

  test('placer only: filler is PLAC:<placer>, only the PLAC identifier', () => {
    const m = mapped(msg('OBR|1|PL9||P^Panel', 'OBX|1|NM|X^x||1||||||F'), P);
    expect(m.reports[0].filler).toBe('PLAC:PL9');
    expect(m.reports[0].report.identifier?.map((i) => i.type?.coding?.[0].code)).toEqual(['PLAC']);
    expect(m.reports[0].results[0].key).toBe('PLAC:PL9|X|');
  });

  test('OBX-4 sub-IDs separate keys; an exact repeat gets #2 and a warning', () => {
    const m = mapped(msg('OBR|1||F1|P^Panel', 'OBX|1|NM|X^x|1|1||||||F', 'OBX|2|NM|X^x|2|2||||||F', 'OBX|3|NM|X^x|2|3||||||F'), P);
    expect(m.reports[0].results.map((r) => r.key)).toEqual(['F1|X|1', 'F1|X|2', 'F1|X|2#2']);
    expect(m.reports[0].results[2].observation.identifier?.[0].value).toBe('F1|X|2#2');
    expect(m.warnings).toContainEqual(expect.objectContaining({ segment: 'OBX', sequence: 3, code: '199', severity: 'W' }));
  });

  test('OBX after SPM belongs to that specimen; NTE after SPM is a specimen note', () => {
    const m = mapped(msg('OBR|1||F1|P^Panel', 'OBX|1|NM|X^x||1||||||F', 'SPM|1|S1||BLD', 'NTE|1||haemolysed', 'OBX|2|NM|Y^y||2||||||F'), P);
    expect(m.reports[0].results.map((r) => r.specimenIndex)).toEqual([undefined, 0]);
    expect(m.reports[0].specimens[0].specimen.note).toEqual([{ text: 'haemolysed' }]);
    expect(m.reports[0].specimens[0].key).toBe('S1');
  });

  test('patient NTEs, Z-segments, PV1, TQ1 are ignored; an unknown segment warns', () => {
    const m = mapped(msg('NTE|1||patient note', 'ZXY|private', 'OBR|1||F1|P^Panel', 'TQ1|1', 'OBX|1|NM|X^x||1||||||F', 'QQQ|?'), P);
    expect(m.reports[0].orderNotes).toEqual([]);
    expect(m.warnings).toEqual([expect.objectContaining({ segment: 'QQQ', code: '100', severity: 'W' })]);
  });

  test('OBX-11 statuses', () => {
    const status = (s: string) => {
      const m = mapped(msg('OBR|1||F1|P^Panel', `OBX|1|NM|X^x||1||||||${s}`), P);
      const o = m.reports[0].results[0]?.observation;
      return [o?.status, o?.dataAbsentReason?.coding?.[0].code];
    };
    expect(status('F')).toEqual(['final', undefined]);
    expect(status('P')).toEqual(['preliminary', undefined]);
    expect(status('C')).toEqual(['corrected', undefined]);
    expect(status('A')).toEqual(['amended', undefined]);
    expect(status('B')).toEqual(['amended', undefined]);
    expect(status('D')).toEqual(['entered-in-error', undefined]);
    expect(status('W')).toEqual(['entered-in-error', undefined]);
    expect(status('I')).toEqual(['registered', undefined]);
    expect(status('R')).toEqual(['preliminary', undefined]);
    expect(status('S')).toEqual(['preliminary', undefined]);
    expect(status('V')).toEqual(['final', undefined]);
    expect(status('U')).toEqual(['final', undefined]);
    expect(status('')).toEqual(['unknown', undefined]);
    const absent = (s: string) => mapped(msg('OBR|1||F1|P^Panel', `OBX|1|NM|X^x||||||||${s}`), P).reports[0].results[0].observation;
    expect([absent('X').status, absent('X').dataAbsentReason?.coding?.[0].code]).toEqual(['cancelled', 'cannot-be-obtained']);
    expect(absent('N').dataAbsentReason?.coding?.[0].code).toBe('not-asked');
    expect(absent('F').dataAbsentReason?.coding?.[0].code).toBe('unknown');
    expect(mapped(msg('OBR|1||F1|P^Panel', 'OBX|1|NM|X^x||1||||||O'), P).reports[0].results).toEqual([]);
    expect(mapped(msg('OBR|1||F1|P^Panel', 'OBX|1|NM|X^x||1||||||Q'), P).warnings).toContainEqual(expect.objectContaining({ field: 11, code: '103' }));
  });

  test('report status from OBR-25, or derived from the results', () => {
    const st = (obr25: string, ...obx11: string[]) =>
      mapped(msg(`OBR|1||F1|P^Panel|||||||||||||||||||||${obr25}`, ...obx11.map((s, i) => `OBX|${i + 1}|NM|X${i}^x||1||||||${s}`)), P).reports[0].report.status;
    expect(st('P', 'F')).toBe('preliminary');
    expect(st('C', 'F')).toBe('corrected');
    expect(st('X')).toBe('cancelled');
    expect(st('I')).toBe('registered');
    expect(st('', 'F', 'F')).toBe('final');
    expect(st('', 'F', 'P')).toBe('partial');
    expect(st('', 'P', 'P')).toBe('preliminary');
    expect(st('', 'F', 'C')).toBe('corrected');
    expect(st('', 'X', 'X')).toBe('cancelled');
    expect(st('', 'I')).toBe('registered');
    expect(st('')).toBe('unknown');
    expect(st('Z', 'F')).toBe('final');
  });

  test('OBR-8 makes an effective period; OBR-24 other than LAB is added', () => {
    const r = mapped(msg('OBR|1||F1|P^Panel|||202501011000|202501011100||||||||||||||||HM|F'), emptyLabProfile('t', { timezone: 'UTC' })).reports[0].report;
    expect(r.effectivePeriod).toEqual({ start: '2025-01-01T10:00:00+00:00', end: '2025-01-01T11:00:00+00:00' });
    expect(r.category?.map((c) => c.coding?.[0].code)).toEqual(['LAB', 'HM']);
  });

  test('interpretation: identity map to v3, AC/HM/QCF dropped, a local flag kept without system', () => {
    const obs = mapped(msg('OBR|1||F1|P^Panel', 'OBX|1|NM|X^x||1|||H~AC~QCF~*^Εκτός ορίων|||F'), P).reports[0].results[0].observation;
    expect(obs.interpretation).toEqual([
      { coding: [{ system: V3_INTERPRETATION, code: 'H', display: 'High' }] },
      { coding: [{ code: '*', display: 'Εκτός ορίων' }] },
    ]);
  });

  test('OBR-22 without a time of day is dropped with a warning; OBX-14 wins over OBR-7', () => {
    const m = mapped(msg('OBR|1||F1|P^Panel|||20250101080000|||||||||||||||20250101|||F', 'OBX|1|NM|X^x||1||||||F|||20250101090000'), P);
    expect(m.reports[0].report.issued).toBeUndefined();
    expect(m.warnings).toContainEqual(expect.objectContaining({ segment: 'OBR', field: 22, code: '102', severity: 'W' }));
    expect(m.reports[0].results[0].observation.effectiveDateTime).toBe('2025-01-01T09:00:00+02:00');
  });

  test('\\X..\\ escapes follow MSH-18 when declared, else the profile charset', () => {
    const profile = seededProfile('bioanalytica'); // 8859/7
    const row = 'OBX|1|ST|X^x||\\XCE9ACEACCEBBCEB9CEBF\\||||||F';
    const utf8 = 'MSH|^~\\&|LIS|LAB|||20250101||ORU^R01|1|P|2.5.1|||||CYP|UNICODE UTF-8\rPID|1\rOBR|1||F1|P^Panel\r' + row;
    expect(mapped(utf8, profile).reports[0].results[0].observation.valueString).toBe('Κάλιο');
    const undeclared = 'MSH|^~\\&|LIS|LAB|||20250101||ORU^R01|1|P|2.5.1\rPID|1\rOBR|1||F1|P^Panel\rOBX|1|ST|X^x||\\XCADCEBE9EF\\||||||F';
    expect(mapped(undeclared, profile).reports[0].results[0].observation.valueString).toBe('Κάλιο');
  });

  test('custom delimiters (MSH-1/2) are honoured throughout', () => {
    const text = 'MSH!@%$*!LIS!LAB!!!20250101!!ORU@R01!C1!P!2.5.1\rPID!1\rOBR!1!!F1!P@Panel\rOBX!1!ST!X@x!!a$F$b!!!!!!F';
    expect(mapped(text, P).reports[0].results[0].observation.valueString).toBe('a!b');
  });
});

describe('errors: one per code, located', () => {
  test('100: OBX before OBR, SPM before OBR, OBR before PID, no OBR, a second MSH, no MSH first', () => {
    expect(errors(msg('OBX|1|NM|X^x||1||||||F', 'OBR|1||F1|P^Panel'))).toContainEqual(expect.objectContaining({ segment: 'OBX', sequence: 1, code: '100' }));
    expect(errors(msg('SPM|1|S1', 'OBR|1||F1|P^Panel'))).toContainEqual(expect.objectContaining({ segment: 'SPM', sequence: 1, code: '100' }));
    expect(errors('MSH|^~\\&|A|B|||20250101||ORU^R01|1|P|2.5.1\rOBR|1||F1|P^Panel')).toEqual([expect.objectContaining({ segment: 'OBR', sequence: 1, code: '100' })]);
    expect(errors(msg())).toEqual([expect.objectContaining({ segment: 'OBR', code: '100' })]);
    expect(errors(msg('OBR|1||F1|P^Panel', 'MSH|^~\\&|A|B'))).toContainEqual(expect.objectContaining({ segment: 'MSH', sequence: 2, code: '100' }));
    const noMsh = new Hl7Message(['PID|1', 'OBR|1||F1|P^Panel']);
    const r = mapOru(noMsh, emptyLabProfile('t'));
    expect(r).toEqual({ ok: false, issues: [expect.objectContaining({ segment: 'MSH', code: '100' })] });
  });

  test('101: OBX-3, OBR-3 with no placer, OBR-4, MSH-10', () => {
    expect(errors(msg('OBR|1||F1|P^Panel', 'OBX|1|NM|^text only||1||||||F'))).toEqual([expect.objectContaining({ segment: 'OBX', sequence: 1, field: 3, component: 1, code: '101' })]);
    expect(errors(msg('OBR|1|||P^Panel'))).toEqual([expect.objectContaining({ segment: 'OBR', sequence: 1, field: 3, code: '101' })]);
    expect(errors(msg('OBR|1||F1|P^Panel', 'OBR|2||F2'))).toEqual([expect.objectContaining({ segment: 'OBR', sequence: 2, field: 4, code: '101' })]);
    expect(errors('MSH|^~\\&|A|B|||20250101||ORU^R01||P|2.5.1\rPID|1\rOBR|1||F1|P^Panel')).toEqual([expect.objectContaining({ segment: 'MSH', field: 10, code: '101' })]);
  });

  test('102: NM not numeric (OBX-5), bad timestamps (OBR-7, OBX-14, SPM-17.2), bad DT value', () => {
    expect(errors(msg('OBR|1||F1|P^Panel', 'OBX|1|NM|X^x||1|mmol/L', 'OBX|2|NM|Y^y||high||||||F'))).toEqual([
      expect.objectContaining({ segment: 'OBX', sequence: 2, field: 5, code: '102' }),
    ]);
    expect(errors(msg('OBR|1||F1|P^Panel|||2025-01-01'))).toEqual([expect.objectContaining({ segment: 'OBR', field: 7, code: '102' })]);
    expect(errors(msg('OBR|1||F1|P^Panel', 'OBX|1|NM|X^x||1||||||F|||yesterday'))).toEqual([expect.objectContaining({ segment: 'OBX', field: 14, code: '102' })]);
    expect(errors(msg('OBR|1||F1|P^Panel', 'SPM|1|S1||BLD|||||||||||||20250101^soon'))).toEqual([expect.objectContaining({ segment: 'SPM', field: 17, component: 2, code: '102' })]);
    expect(errors(msg('OBR|1||F1|P^Panel', 'OBX|1|DT|X^x||32/01/2025||||||F'))).toEqual([expect.objectContaining({ segment: 'OBX', field: 5, component: 1, code: '102' })]);
  });

  test('103: unknown OBX-2 value type, located at OBX-2', () => {
    expect(errors(msg('OBR|1||F1|P^Panel', 'OBX|1|QQ|X^x||1||||||F'))).toEqual([expect.objectContaining({ segment: 'OBX', field: 2, code: '103' })]);
  });

  test('200/201/203: message type, event, version', () => {
    expect(errors('MSH|^~\\&|A|B|||20250101||ADT^A01|1|P|2.5.1\rPID|1')).toEqual([expect.objectContaining({ segment: 'MSH', field: 9, component: 1, code: '200' })]);
    expect(errors('MSH|^~\\&|A|B|||20250101||ORU^R30|1|P|2.5.1\rPID|1')).toEqual([expect.objectContaining({ segment: 'MSH', field: 9, component: 2, code: '201' })]);
    expect(errors('MSH|^~\\&|A|B|||20250101||ORU^R01|1|P|3.0\rPID|1\rOBR|1||F1|P^Panel')).toEqual([expect.objectContaining({ segment: 'MSH', field: 12, code: '203' })]);
  });

  test('207: an internal failure comes back as an issue, never as a throw', () => {
    const broken = emptyLabProfile('t');
    broken.codeMap = new Proxy(new Map(), {
      get() {
        throw new Error('boom');
      },
    });
    const r = mapOru(parseHl7(msg('OBR|1||F1|P^Panel', 'OBX|1|NM|X^x||1||||||F')), broken);
    expect(r).toEqual({ ok: false, issues: [expect.objectContaining({ code: '207', severity: 'E', reason: expect.stringContaining('boom') })] });
  });

  test('all errors of a message are reported, not only the first', () => {
    const e = errors(msg('OBR|1||F1|P^Panel', 'OBX|1|NM|X^x||a||||||F', 'OBX|2|NM|||1||||||F', 'OBR|2|||P^Panel'));
    expect(e.map((i) => `${i.segment}${i.sequence}-${i.field}:${i.code}`)).toEqual(['OBX1-5:102', 'OBX2-3:101', 'OBR2-3:101']);
  });
});

describe('fuzz: mutated messages get a mapping or issues, never a throw', () => {

  const catchall = path.join(TESTDATA, 'cdc-prime-reportstream/mappinginventory/catchall');
  const corpus = readdirSync(catchall, { recursive: true })
    .map(String)
    .filter((f) => f.endsWith('.hl7'))
    .map((f) => readFileSync(path.join(catchall, f), 'utf8').replace(/\r\n|\n/g, '\r'));
  const bases = [BIOANALYTICA, YIANNOUKAS, NIPD, ...corpus];
  const ALPHABET = '|^~\\&#"\r\n0123456789.-+<>:/ ΑαΩωµXFST';

  function mutate(text: string, rnd: () => number): string {
    const pick = <T,>(xs: T[]): T => xs[Math.floor(rnd() * xs.length)];
    const segs = text.split('\r');
    if (segs.length < 2) {
      return `${text}\r${pick(pick(bases).split('\r').slice(1))}`;
    }
    switch (Math.floor(rnd() * 8)) {
      case 0:
        return text.slice(0, Math.floor(rnd() * text.length));
      case 1: {
        const i = Math.floor(rnd() * segs.length);
        segs.splice(i, 0, segs[i]);
        return segs.join('\r');
      }
      case 2:
        segs.splice(1 + Math.floor(rnd() * (segs.length - 1)), 1);
        return segs.join('\r');
      case 3: {
        const i = 1 + Math.floor(rnd() * (segs.length - 1));
        const j = 1 + Math.floor(rnd() * (segs.length - 1));
        [segs[i], segs[j]] = [segs[j], segs[i]];
        return segs.join('\r');
      }
      case 4: {
        // Random bytes into a random field.
        const i = Math.floor(rnd() * segs.length);
        const fields = segs[i].split('|');
        const f = 1 + Math.floor(rnd() * Math.max(fields.length - 1, 1));
        let junk = '';
        for (let n = Math.floor(rnd() * 12); n > 0; n--) {
          junk += rnd() < 0.7 ? pick([...ALPHABET]) : String.fromCharCode(Math.floor(rnd() * 0x3000));
        }
        fields[f] = rnd() < 0.5 ? junk : `${fields[f] ?? ''}${junk}`;
        segs[i] = fields.join('|');
        return segs.join('\r');
      }
      case 5: {
        // Flip one character anywhere (including the delimiters in MSH-1/2).
        const p = Math.floor(rnd() * text.length);
        return text.slice(0, p) + pick([...ALPHABET]) + text.slice(p + 1);
      }
      case 6: {
        const i = 1 + Math.floor(rnd() * (segs.length - 1));
        segs[i] = `${segs[i].split('|').slice(0, 1 + Math.floor(rnd() * 20)).join('|')}${'|'.repeat(Math.floor(rnd() * 40))}`;
        return segs.join('\r');
      }
      default: {
        const donor = pick(bases).split('\r');
        segs.splice(1 + Math.floor(rnd() * segs.length), 0, pick(donor.slice(1)));
        return segs.join('\r');
      }
    }
  }

  test('4000 seeded mutations', () => {
    const rnd = seededRandom(0x5eed);
    const profiles = [seededProfile('bioanalytica'), seededProfile('yiannoukas'), emptyLabProfile('fuzz', { decimalComma: true })];
    let ok = 0;
    let rejected = 0;
    for (let i = 0; i < 4000; i++) {
      let text = bases[i % bases.length];
      for (let n = 1 + Math.floor(rnd() * 3); n > 0; n--) {
        text = mutate(text, rnd);
      }
      if (!text.startsWith('MSH')) {
        text = `MSH|^~\\&|F|F|||20250101||ORU^R01|1|P|2.5.1\r${text}`;
      }
      const result = mapOru(Hl7Message.parse(text), profiles[i % profiles.length]);
      if (result.ok) {
        ok++;
        expect(Array.isArray(result.mapping.reports)).toBe(true);
        for (const r of result.mapping.reports) {
          expect(r.report.resourceType).toBe('DiagnosticReport');
          expect(r.filler).not.toBe('');
          expect(JSON.parse(JSON.stringify(r.report))).toEqual(r.report);
        }
      } else {
        rejected++;
        expect(result.issues.length).toBeGreaterThan(0);
        // 207 means our own code threw: the safety net must never be needed.
        expect(result.issues.filter((x) => x.code === '207'), `mutation ${i}: ${JSON.stringify(text)}`).toEqual([]);
        for (const issue of result.issues) {
          expect(issue.segment).toMatch(/^.{3}$/s);
          expect(issue.sequence).toBeGreaterThanOrEqual(1);
          expect(['E', 'W']).toContain(issue.severity);
        }
      }
    }
    // Both outcomes occur, so the mutations are neither all harmless nor all fatal.
    expect(ok).toBeGreaterThan(200);
    expect(rejected).toBeGreaterThan(200);
  }, 60_000);
});
