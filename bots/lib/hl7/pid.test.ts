import { Hl7Message } from '@medplum/core';
import type { Hl7Segment } from '@medplum/core';
import { describe, expect, test } from 'vitest';
import { BIRTH_TIME_EXTENSION, DEFAULT_IDENTITY, authoritySystem, patientFromPid } from './pid.ts';
import type { PatientIdentityConfig, PatientWithBirthTime } from './pid.ts';
import { DEFAULT_CY_ID_SYSTEM, DEFAULT_MRN_SYSTEM, V2_0203 } from './systems.ts';

const MSH = 'MSH|^~\\&|LIS|LAB|ERMIS|CLINIC|20260301120000||ADT^A08|CTRL1|P|2.5.1';

function pidOf(pid: string, msh = MSH): Hl7Segment {
  const seg = Hl7Message.parse(`${msh}\r${pid}`).getSegment('PID');
  if (!seg) {
    throw new Error('no PID');
  }
  return seg;
}

const CONFIG: PatientIdentityConfig = { ...DEFAULT_IDENTITY, mrnAuthorities: ['CLINIC'] };

describe('PID-2/3/4/19 identifiers', () => {
  test('national ID by CX.5 type NNCYP, MRN under a clinic authority, others keep their authority', () => {
    const { patient, nationalId, mrn, issues } = patientFromPid(
      pidOf('PID|1||123456^^^CYMOI^NNCYP~MRN-9^^^CLINIC^MR~L-77^^^BIOANALYTICA^PI||ΓΕΩΡΓΙΟΥ^ΑΝΔΡΕΑΣ'),
      CONFIG
    );
    expect(issues).toEqual([]);
    expect(nationalId).toBe('123456');
    expect(mrn).toBe('MRN-9');
    expect(patient.identifier).toEqual([
      { use: 'official', type: { coding: [{ system: V2_0203, code: 'NNCYP' }] }, system: DEFAULT_CY_ID_SYSTEM, value: '123456' },
      { use: 'usual', type: { coding: [{ system: V2_0203, code: 'MR' }] }, system: DEFAULT_MRN_SYSTEM, value: 'MRN-9' },
      {
        type: { coding: [{ system: V2_0203, code: 'PI' }] },
        system: 'https://ermis.health/fhir/sid/hl7-authority/BIOANALYTICA',
        value: 'L-77',
        assigner: { display: 'BIOANALYTICA' },
      },
    ]);
  });

  test('NI is accepted as the national ID type too, and gets type NNCYP', () => {
    const { patient, nationalId } = patientFromPid(pidOf('PID|1||  0987654 ^^^^NI||X^Y'), CONFIG);
    expect(nationalId).toBe('0987654');
    expect(patient.identifier?.[0]).toMatchObject({ system: DEFAULT_CY_ID_SYSTEM, type: { coding: [{ code: 'NNCYP' }] } });
  });

  test('an MR number from another authority is not the clinic MRN', () => {
    const { patient, mrn } = patientFromPid(pidOf('PID|1||555^^^OTHERHOSP^MR||X^Y'), CONFIG);
    expect(mrn).toBeUndefined();
    expect(patient.identifier?.[0].system).toBe(authoritySystem('OTHERHOSP'));
  });

  test('with no mrnAuthorities configured there is never an MRN', () => {
    expect(patientFromPid(pidOf('PID|1||555^^^CLINIC^MR||X^Y'), DEFAULT_IDENTITY).mrn).toBeUndefined();
  });

  test('the MRN authority may be the universal id (CX.4.2), compared case-insensitively', () => {
    const config = { ...DEFAULT_IDENTITY, mrnAuthorities: ['2.16.196.1.2'] };
    expect(patientFromPid(pidOf('PID|1||555^^^&2.16.196.1.2&ISO^MR||X^Y'), config).mrn).toBe('555');
    expect(patientFromPid(pidOf('PID|1||555^^^clinic^mr||X^Y'), CONFIG).mrn).toBe('555');
  });

  test('national ID in PID-2, PID-4 or PID-19 per lab profile', () => {
    const pid = 'PID|1|P2-111|777^^^LAB^PI|P4-222||X^Y|||||||||||||P19-333';
    expect(patientFromPid(pidOf(pid), { ...CONFIG, nationalIdField: 'PID-2' }).nationalId).toBe('P2-111');
    expect(patientFromPid(pidOf(pid), { ...CONFIG, nationalIdField: 'PID-4' }).nationalId).toBe('P4-222');
    const r19 = patientFromPid(pidOf(pid), { ...CONFIG, nationalIdField: 'PID-19' });
    expect(r19.nationalId).toBe('P19-333');
    expect(r19.patient.identifier?.find((i) => i.system === DEFAULT_CY_ID_SYSTEM)?.value).toBe('P19-333');
    // with the default (PID-3 by type) none of them is national; PID-19 becomes an SB identifier
    const rDefault = patientFromPid(pidOf(pid), CONFIG);
    expect(rDefault.nationalId).toBeUndefined();
    expect(rDefault.patient.identifier?.map((i) => i.value)).toEqual(['777', 'P2-111', 'P4-222', 'P19-333']);
    expect(rDefault.patient.identifier?.[3]).toEqual({ type: { coding: [{ system: V2_0203, code: 'SB' }] }, value: 'P19-333' });
  });

  test('registered universal ids become urn:oid / urn:uuid systems', () => {
    const { patient } = patientFromPid(
      pidOf('PID|1||A1^^^&2.16.196.10&ISO^PI~A2^^^&1F2E3D4C-0000-4000-8000-123456789ABC&UUID^PI~A3^^^&bogus&ISO^PI||X^Y'),
      CONFIG
    );
    expect(patient.identifier?.map((i) => i.system)).toEqual([
      'urn:oid:2.16.196.10',
      'urn:uuid:1f2e3d4c-0000-4000-8000-123456789abc',
      authoritySystem('bogus'),
    ]);
  });

  test('CX.7/CX.8 become the identifier period; duplicates are dropped; empty repetitions skipped', () => {
    const { patient } = patientFromPid(pidOf('PID|1||A1^^^LAB^PI^^20200101^20301231~~A1^^^LAB^PI~""^^^LAB^PI||X^Y'), CONFIG);
    expect(patient.identifier).toHaveLength(1);
    expect(patient.identifier?.[0].period).toEqual({ start: '2020-01-01', end: '2030-12-31' });
  });

  test('an identifier without an authority has no system', () => {
    const { patient } = patientFromPid(pidOf('PID|1||1234^^^^MR||DOE^JANE'), CONFIG);
    expect(patient.identifier).toEqual([{ type: { coding: [{ system: V2_0203, code: 'MR' }] }, value: '1234' }]);
  });

  test('PID-3 missing entirely → 101 at PID-3', () => {
    for (const pid of ['PID|1||||DOE^JANE', 'PID|1', 'PID|1||~~||DOE^JANE']) {
      const { issues } = patientFromPid(pidOf(pid), CONFIG);
      expect(issues).toContainEqual(expect.objectContaining({ segment: 'PID', sequence: 1, field: 3, code: '101', severity: 'E' }));
    }
  });

  test('the sequence option locates issues in a message with several PIDs', () => {
    const { issues } = patientFromPid(pidOf('PID|1||||DOE^JANE'), CONFIG, { sequence: 3 });
    expect(issues[0]).toMatchObject({ sequence: 3, field: 3 });
  });
});

describe('PID-5 names', () => {
  test('all repetitions, Greek kept intact, XPN components and name types', () => {
    const { patient } = patientFromPid(
      pidOf('PID|1||1^^^LAB^PI||Γεωργίου^Ανδρέας^Μιχαήλ^^Δρ^^L~GEORGIOU^ANDREAS^^JR^DR^MD^A~Andy^^^^^^N~Papa^Maria^^^^^M~X^Y^^^^^ZZ'),
      CONFIG
    );
    expect(patient.name).toEqual([
      { use: 'official', family: 'Γεωργίου', given: ['Ανδρέας', 'Μιχαήλ'], prefix: ['Δρ'] },
      { use: 'usual', family: 'GEORGIOU', given: ['ANDREAS'], prefix: ['DR'], suffix: ['JR', 'MD'] },
      { use: 'nickname', family: 'Andy' },
      { use: 'maiden', family: 'Papa', given: ['Maria'] },
      { family: 'X', given: ['Y'] },
    ]);
  });

  test('FN subcomponents: only the surname is the family', () => {
    const { patient } = patientFromPid(pidOf('PID|1||1^^^LAB^PI||van den Berg&van den&Berg^Jan'), CONFIG);
    expect(patient.name?.[0].family).toBe('van den Berg');
  });

  test('empty PID-5 → a warning, no name', () => {
    const { patient, issues } = patientFromPid(pidOf('PID|1||1^^^LAB^PI||^^^^^^L'), CONFIG);
    expect(patient.name).toBeUndefined();
    expect(issues).toEqual([expect.objectContaining({ field: 5, code: '101', severity: 'W' })]);
  });

  test('Greek over UTF-8 and over ISO 8859-7 / windows-1253 give the same patient', () => {
    const text = `${MSH}\rPID|1||1^^^LAB^PI||ΧΡΙΣΤΟΔΟΥΛΟΥ^ΕΛΕΝΗ^^^^^L~Παπαδοπούλου^Ευφροσύνη||19800229|F|||Οδός Μακαρίου 12^Διαμ. 3^Λευκωσία^^1065^CY^H`;
    const utf8 = new TextDecoder('utf-8').decode(new TextEncoder().encode(text));
    const results = [utf8];
    for (const charset of ['iso-8859-7', 'windows-1253']) {
      const bytes = encodeSingleByte(text, charset);
      results.push(new TextDecoder(charset).decode(bytes));
    }
    const patients = results.map((t) => {
      const seg = Hl7Message.parse(t).getSegment('PID');
      if (!seg) {
        throw new Error('no PID');
      }
      return patientFromPid(seg, CONFIG).patient;
    });
    expect(patients[0].name?.[0]).toEqual({ use: 'official', family: 'ΧΡΙΣΤΟΔΟΥΛΟΥ', given: ['ΕΛΕΝΗ'] });
    expect(patients[0].name?.[1]).toEqual({ family: 'Παπαδοπούλου', given: ['Ευφροσύνη'] });
    expect(patients[0].address?.[0].city).toBe('Λευκωσία');
    expect(patients[1]).toEqual(patients[0]);
    expect(patients[2]).toEqual(patients[0]);
  });
});

describe('escape sequences', () => {
  test('delimiters, highlighting and line breaks', () => {
    const { patient } = patientFromPid(
      pidOf('PID|1||A\\F\\1\\S\\2^^^LAB\\T\\X^PI||O\\E\\Neil\\R\\^\\H\\Ann\\N\\||||||Street 1\\.br\\Floor 2^^City'),
      CONFIG
    );
    expect(patient.identifier?.[0].value).toBe('A|1^2');
    expect(patient.identifier?.[0].assigner?.display).toBe('LAB&X');
    expect(patient.name?.[0]).toEqual({ family: 'O\\Neil~', given: ['Ann'] });
    expect(patient.address?.[0].line).toEqual(['Street 1\nFloor 2']);
  });

  test('\\X..\\ hex bytes decode in UTF-8 by default and in the message charset when given', () => {
    const utf8 = patientFromPid(pidOf('PID|1||1^^^LAB^PI||\\XCE93CE95\\ΩΡΓΙΟΥ^A'), CONFIG);
    expect(utf8.patient.name?.[0].family).toBe('ΓΕΩΡΓΙΟΥ');
    const greek = patientFromPid(pidOf('PID|1||1^^^LAB^PI||\\XC3C5\\ΩΡΓΙΟΥ^A'), CONFIG, { charset: '8859/7' });
    expect(greek.patient.name?.[0].family).toBe('ΓΕΩΡΓΙΟΥ');
  });

  test('non-default delimiters declared in MSH are honoured', () => {
    const seg = pidOf('PID#1##77$$$LAB$PI##DOE$JANE!DOE$J', 'MSH#$!\\&#LIS#LAB#ERMIS#CLINIC#20260301##ADT$A08#C1#P#2.5.1');
    const { patient } = patientFromPid(seg, CONFIG);
    expect(patient.identifier?.[0].value).toBe('77');
    expect(patient.name).toEqual([
      { family: 'DOE', given: ['JANE'] },
      { family: 'DOE', given: ['J'] },
    ]);
  });

  test('an unterminated or unknown escape is kept literally', () => {
    const { patient } = patientFromPid(pidOf('PID|1||1^^^LAB^PI||A\\B^C\\Q9Q\\D'), CONFIG);
    expect(patient.name?.[0]).toEqual({ family: 'A\\B', given: ['C\\Q9Q\\D'] });
  });
});

describe('PID-7 birth date', () => {
  test.each([
    ['19700101', '1970-01-01'],
    ['197001', '1970-01'],
    ['1970', '1970'],
    ['20000229', '2000-02-29'],
  ])('%s → %s', (raw, date) => {
    const { patient, issues } = patientFromPid(pidOf(`PID|1||1^^^LAB^PI||X^Y||${raw}`), CONFIG);
    expect(issues).toEqual([]);
    expect(patient.birthDate).toBe(date);
    expect((patient as PatientWithBirthTime)._birthDate).toBeUndefined();
  });

  test('a time with an offset → birthDate + patient-birthTime', () => {
    const { patient } = patientFromPid(pidOf('PID|1||1^^^LAB^PI||X^Y||197001011230+0200'), CONFIG);
    expect(patient.birthDate).toBe('1970-01-01');
    expect((patient as PatientWithBirthTime)._birthDate).toEqual({
      extension: [{ url: BIRTH_TIME_EXTENSION, valueDateTime: '1970-01-01T12:30:00+02:00' }],
    });
  });

  test("a time without an offset takes the sender's zone (default Europe/Nicosia, DST-aware)", () => {
    const winter = 'PID|1||1^^^LAB^PI||X^Y||19700101123456.5';
    const summer = 'PID|1||1^^^LAB^PI||X^Y||198507151200';
    const birthTime = (pid: string, config: PatientIdentityConfig): string | undefined =>
      (patientFromPid(pidOf(pid), config).patient as PatientWithBirthTime)._birthDate?.extension[0].valueDateTime;
    expect(birthTime(winter, CONFIG)).toBe('1970-01-01T12:34:56.5+02:00');
    expect(birthTime(summer, CONFIG)).toBe('1985-07-15T12:00:00+03:00');
    expect(birthTime(winter, { ...CONFIG, timeZone: 'Asia/Tokyo' })).toBe('1970-01-01T12:34:56.5+09:00');
    // an unknown zone in the configuration falls back to the default rather than failing the message
    expect(birthTime(winter, { ...CONFIG, timeZone: 'Mars/Olympus' })).toBe('1970-01-01T12:34:56.5+02:00');
    expect(patientFromPid(pidOf(summer), CONFIG).patient.birthDate).toBe('1985-07-15');
  });

  test.each(['19701301', '19700230', '19010229', '1970-01-01', '01/01/1970', 'abc', '19700101256000', '0000', '17991231', '197001011200+2500', '19700'])(
    'invalid %s → 102 at PID-7, no birthDate',
    (raw) => {
      const { patient, issues } = patientFromPid(pidOf(`PID|1||1^^^LAB^PI||X^Y||${raw}`), CONFIG);
      expect(patient.birthDate).toBeUndefined();
      expect(issues).toEqual([expect.objectContaining({ segment: 'PID', field: 7, code: '102', severity: 'E' })]);
    }
  );

  test('HL7 null "" is no value, not an error', () => {
    const { patient, issues } = patientFromPid(pidOf('PID|1||1^^^LAB^PI||X^Y||""'), CONFIG);
    expect(patient.birthDate).toBeUndefined();
    expect(issues).toEqual([]);
  });
});

describe('PID-8 gender', () => {
  test.each([
    ['F', 'female'],
    ['M', 'male'],
    ['O', 'other'],
    ['A', 'other'],
    ['N', 'other'],
    ['U', 'unknown'],
    ['f', 'female'],
    ['female', 'female'],
    ['MALE', 'male'],
  ])('%s → %s', (raw, gender) => {
    expect(patientFromPid(pidOf(`PID|1||1^^^LAB^PI||X^Y|||${raw}`), CONFIG).patient.gender).toBe(gender);
  });

  test('unknown code → warning 103 at PID-8, no gender', () => {
    const { patient, issues } = patientFromPid(pidOf('PID|1||1^^^LAB^PI||X^Y|||Θ'), CONFIG);
    expect(patient.gender).toBeUndefined();
    expect(issues).toEqual([expect.objectContaining({ field: 8, code: '103', severity: 'W' })]);
  });
});

describe('PID-11 address', () => {
  test('XAD components, SAD subcomponents, address types', () => {
    const { patient } = patientFromPid(
      pidOf(
        'PID|1||1^^^LAB^PI||X^Y||||||Makariou 12^Flat 3^Nicosia^Nicosia District^1065^CY^H^^NIC~&Archbishop Kyprianou&5^^Limassol^^3036^CYP^M~^^Larnaca^^^^O~^^^^^^^^'
      ),
      CONFIG
    );
    expect(patient.address).toEqual([
      { use: 'home', line: ['Makariou 12', 'Flat 3'], city: 'Nicosia', district: 'NIC', state: 'Nicosia District', postalCode: '1065', country: 'CY' },
      { type: 'postal', line: ['Archbishop Kyprianou 5'], city: 'Limassol', postalCode: '3036', country: 'CYP' },
      { use: 'work', city: 'Larnaca' },
    ]);
  });
});

describe('PID-13/14 telecom', () => {
  test('phones and emails with use from XTN.2, PID-13 home and PID-14 work by default', () => {
    const { patient } = patientFromPid(
      pidOf(
        'PID|1||1^^^LAB^PI||X^Y||||||||+357 22 123456~^PRN^CP^^357^99^123456~^NET^Internet^andreas@example.cy~^^FX^^^22^999888|^WPN^PH^^^25^111222^45~24000000'
      ),
      CONFIG
    );
    expect(patient.telecom).toEqual([
      { system: 'phone', value: '+357 22 123456', use: 'home' },
      { system: 'phone', value: '+357 99 123456', use: 'mobile' },
      { system: 'email', value: 'andreas@example.cy' },
      { system: 'fax', value: '22 999888', use: 'home' },
      { system: 'phone', value: '25 111222 ext. 45', use: 'work' },
      { system: 'phone', value: '24000000', use: 'work' },
    ]);
  });

  test('empty XTN repetitions give nothing', () => {
    expect(patientFromPid(pidOf('PID|1||1^^^LAB^PI||X^Y||||||||^PRN^PH|^WPN'), CONFIG).patient.telecom).toBeUndefined();
  });
});

describe('PID-29/30 deceased', () => {
  test('death date/time', () => {
    const pid = (d: string, flag = ''): string => `PID|1||1^^^LAB^PI||X^Y${'|'.repeat(24)}${d}|${flag}`;
    expect(patientFromPid(pidOf(pid('20250301')), CONFIG).patient.deceasedDateTime).toBe('2025-03-01');
    expect(patientFromPid(pidOf(pid('202503011415+0200')), CONFIG).patient.deceasedDateTime).toBe('2025-03-01T14:15:00+02:00');
    expect(patientFromPid(pidOf(pid('202507011415')), CONFIG).patient.deceasedDateTime).toBe('2025-07-01T14:15:00+03:00');
    expect(patientFromPid(pidOf(pid('', 'Y')), CONFIG).patient.deceasedBoolean).toBe(true);
    expect(patientFromPid(pidOf(pid('', 'N')), CONFIG).patient.deceasedBoolean).toBe(false);
    // PID-29 wins over the indicator
    const both = patientFromPid(pidOf(pid('20250301', 'Y')), CONFIG).patient;
    expect(both.deceasedDateTime).toBe('2025-03-01');
    expect(both.deceasedBoolean).toBeUndefined();
  });

  test('bad death date → 102 at PID-29; bad indicator → 103 warning at PID-30', () => {
    const pid = (d: string, flag = ''): string => `PID|1||1^^^LAB^PI||X^Y${'|'.repeat(24)}${d}|${flag}`;
    const bad = patientFromPid(pidOf(pid('20251301')), CONFIG);
    expect(bad.patient.deceasedDateTime).toBeUndefined();
    expect(bad.issues).toEqual([expect.objectContaining({ field: 29, code: '102', severity: 'E' })]);
    const flag = patientFromPid(pidOf(pid('', 'X')), CONFIG);
    expect(flag.patient.deceasedBoolean).toBeUndefined();
    expect(flag.issues).toEqual([expect.objectContaining({ field: 30, code: '103', severity: 'W' })]);
  });
});

/** Encodes text in a single-byte charset by inverting the platform's decoder table. */
function encodeSingleByte(text: string, charset: string): Uint8Array {
  const decoder = new TextDecoder(charset);
  const table = new Map<string, number>();
  for (let b = 0; b < 256; b++) {
    const ch = decoder.decode(new Uint8Array([b]));
    if (ch !== '\uFFFD' && !table.has(ch)) {
      table.set(ch, b);
    }
  }
  const out: number[] = [];
  for (const ch of text) {
    const b = table.get(ch);
    if (b === undefined) {
      throw new Error(`${charset} cannot encode ${ch}`);
    }
    out.push(b);
  }
  return new Uint8Array(out);
}
