import type { Patient } from '@medplum/fhirtypes';
import { describe, expect, test } from 'vitest';
import { chooseByDemographics, matchPlan } from './patient-match.ts';
import { DEFAULT_IDENTITY } from './pid.ts';
import { DEFAULT_CY_ID_SYSTEM, DEFAULT_MRN_SYSTEM } from './systems.ts';

const greekPid: Patient = {
  resourceType: 'Patient',
  identifier: [{ system: 'https://ermis.health/fhir/sid/hl7-authority/LAB', value: 'L-1' }],
  name: [{ family: 'ΓΕΩΡΓΙΟΥ', given: ['ΑΝΔΡΕΑΣ'] }],
  birthDate: '1970-05-17',
  gender: 'male',
};

const registry = (id: string, family: string, given: string, extra: Partial<Patient> = {}): Patient => ({
  resourceType: 'Patient',
  id,
  name: [{ family, given: [given] }],
  birthDate: '1970-05-17',
  gender: 'male',
  ...extra,
});

describe('matchPlan', () => {
  test('national ID, MRN and name + birth date, each only when present', () => {
    const pid: Patient = {
      ...greekPid,
      identifier: [
        { system: DEFAULT_MRN_SYSTEM, value: 'MRN-9' },
        { system: DEFAULT_CY_ID_SYSTEM, value: ' 123456 ' },
      ],
    };
    expect(matchPlan(pid, DEFAULT_IDENTITY)).toEqual({
      byNationalId: '123456',
      byMrn: 'MRN-9',
      byNameAndBirthDate: { birthDate: '1970-05-17', family: 'ΓΕΩΡΓΙΟΥ' },
    });
  });

  test('systems come from the configuration', () => {
    const pid: Patient = { resourceType: 'Patient', identifier: [{ system: 'urn:x:national', value: '9' }, { system: DEFAULT_CY_ID_SYSTEM, value: '1' }] };
    expect(matchPlan(pid, { cyIdSystem: 'urn:x:national', mrnSystem: 'urn:x:mrn' })).toEqual({ byNationalId: '9' });
  });

  test('no demographic search without a full birth date or a family name', () => {
    expect(matchPlan({ ...greekPid, birthDate: '1970' }, DEFAULT_IDENTITY)).toEqual({});
    expect(matchPlan({ ...greekPid, birthDate: undefined }, DEFAULT_IDENTITY)).toEqual({});
    expect(matchPlan({ ...greekPid, name: [{ given: ['ΑΝΔΡΕΑΣ'] }] }, DEFAULT_IDENTITY)).toEqual({});
    expect(matchPlan({ resourceType: 'Patient' }, DEFAULT_IDENTITY)).toEqual({});
  });

  test('blank identifier values are ignored', () => {
    expect(matchPlan({ resourceType: 'Patient', identifier: [{ system: DEFAULT_CY_ID_SYSTEM, value: '  ' }] }, DEFAULT_IDENTITY)).toEqual({});
  });
});

describe('chooseByDemographics', () => {
  test('Greek PID name matches the single Latin registry record', () => {
    const georgiou = registry('p1', 'GEORGIOU', 'ANDREAS');
    const other = registry('p2', 'PAPADOPOULOS', 'NIKOS');
    expect(chooseByDemographics(greekPid, [other, georgiou])).toEqual({ match: georgiou, ambiguous: [] });
  });

  test('Latin PID name matches a Greek registry record', () => {
    const latinPid: Patient = { ...greekPid, name: [{ family: 'Hristodoulou', given: ['Haralambos'] }] };
    const greek = registry('p1', 'Χριστοδούλου', 'Χαράλαμπος');
    expect(chooseByDemographics(latinPid, [greek]).match).toBe(greek);
  });

  test('a contradicting gender excludes; unknown, other or absent gender does not', () => {
    expect(chooseByDemographics(greekPid, [registry('p1', 'GEORGIOU', 'ANDREAS', { gender: 'female' })])).toEqual({ ambiguous: [] });
    for (const gender of ['unknown', 'other', undefined] as const) {
      const c = registry('p1', 'GEORGIOU', 'ANDREAS', { gender });
      expect(chooseByDemographics(greekPid, [c]).match).toBe(c);
    }
    const pidNoGender: Patient = { ...greekPid, gender: undefined };
    const female = registry('p1', 'GEORGIOU', 'ANDREAS', { gender: 'female' });
    expect(chooseByDemographics(pidNoGender, [female]).match).toBe(female);
  });

  test('two agreeing candidates → ambiguous, no match', () => {
    const a = registry('p1', 'GEORGIOU', 'ANDREAS');
    const b = registry('p2', 'Γεωργίου', 'Ανδρέας');
    const result = chooseByDemographics(greekPid, [a, b, registry('p3', 'GEORGIOU', 'MARIA')]);
    expect(result.match).toBeUndefined();
    expect(result.ambiguous).toEqual([a, b]);
  });

  test('no agreeing candidate → neither', () => {
    expect(chooseByDemographics(greekPid, [registry('p1', 'GEORGIADIS', 'ANDREAS')])).toEqual({ ambiguous: [] });
    expect(chooseByDemographics(greekPid, [])).toEqual({ ambiguous: [] });
  });

  test('a different birth date, a different national ID or a retired record excludes', () => {
    expect(chooseByDemographics(greekPid, [registry('p1', 'GEORGIOU', 'ANDREAS', { birthDate: '1970-05-18' })]).match).toBeUndefined();
    const pidWithId: Patient = { ...greekPid, identifier: [{ system: DEFAULT_CY_ID_SYSTEM, value: '111' }] };
    const otherId = registry('p1', 'GEORGIOU', 'ANDREAS', { identifier: [{ system: DEFAULT_CY_ID_SYSTEM, value: '222' }] });
    expect(chooseByDemographics(pidWithId, [otherId]).match).toBeUndefined();
    const sameId = registry('p2', 'GEORGIOU', 'ANDREAS', { identifier: [{ system: DEFAULT_CY_ID_SYSTEM, value: '111' }] });
    expect(chooseByDemographics(pidWithId, [otherId, sameId]).match).toBe(sameId);
    expect(chooseByDemographics(greekPid, [registry('p1', 'GEORGIOU', 'ANDREAS', { active: false })]).match).toBeUndefined();
  });

  test('a PID without names matches nobody', () => {
    expect(chooseByDemographics({ ...greekPid, name: undefined }, [registry('p1', 'GEORGIOU', 'ANDREAS')])).toEqual({ ambiguous: [] });
  });
});
