import type { ConceptMap, ObservationDefinition, Organization, Resource } from '@medplum/fhirtypes';
import { describe, expect, test } from 'vitest';
import {
  CONVERSION_FACTOR_EXTENSION,
  HL7_SENDER_SYSTEM,
  LAB_KEY_SYSTEM,
  labProfileFromResources,
  labProfileKeyFromMessage,
  lookupLocalCode,
  observationDefinitionSystem,
  parseNationalIdLocation,
} from './lab-profile.ts';
import { LAB_PROFILE_EXTENSION, LOINC, labCodeSystem } from './systems.ts';
import { parseHl7, seededProfile, seedResources } from './test-support.ts';

/** LOINC codes lab-domain §4.1 verified; the seeds may use no others. */
const VERIFIED_LOINC = new Set([
  '2160-0', '14682-9', '10839-9', '49563-0', '89579-7', '42757-5', '6598-7', '67151-1', '2093-3', '14647-2', '2085-9', '14646-4',
  '13457-7', '39469-2', '18262-6', '69419-0', '2089-1', '22748-8', '96258-9', '43396-1', '70204-3', '2571-8', '14927-8', '10835-7',
  '43583-4', '6301-6', '34714-6', '5902-2', '14979-9', '2823-3', '2951-2', '4548-4', '59261-8', '17856-6', '2345-7', '14749-6',
  '1558-6', '14771-0', '2339-0', '15074-8', '33762-6', '33763-4', '30934-4', '42637-9', '13969-1', '32673-6', '2157-6', '718-7',
  '59260-0', '98979-8', '62238-1', '33914-3', '3091-6', '22664-7', '3094-0', '3084-1', '14933-6', '19123-9', '2601-3', '17861-6',
  '2000-8', '1988-5', '30522-7', '3016-3', '48065-7', '48066-5', '10535-3', '14698-5', '1742-6', '1920-8', '2324-2', '777-3', '6690-2',
]);

describe('seed/labs', () => {
  for (const lab of ['bioanalytica', 'yiannoukas', 'nipd-genetics']) {
    test(`${lab}: idempotent-seedable, fictional, verified LOINC only`, () => {
      const resources = seedResources(lab);
      const org = resources.find((r): r is Organization => r.resourceType === 'Organization');
      expect(org?.identifier).toContainEqual({ system: LAB_KEY_SYSTEM, value: lab });
      expect(org?.identifier?.some((i) => i.system === HL7_SENDER_SYSTEM && i.value)).toBe(true);
      expect(org?.text?.div).toMatch(/[Ff]ictional/);
      for (const r of resources) {
        // Every resource has a stable business key the seeder can create conditionally on.
        const keyed = r.resourceType === 'ConceptMap' ? Boolean(r.url) : (r as { identifier?: unknown[] }).identifier?.length;
        expect(keyed, `${r.resourceType} has a url/identifier`).toBeTruthy();
      }
      const loincs = JSON.stringify(resources).match(/"code":\s*"\d{1,6}-\d"/g) ?? [];
      expect(loincs.length > 0).toBe(lab !== 'nipd-genetics');
      for (const c of loincs) {
        expect(VERIFIED_LOINC.has(c.replace(/"code":\s*"|"/g, '')), c).toBe(true);
      }
      const keys = resources.map((r: Resource) => (r.resourceType === 'ConceptMap' ? r.url : JSON.stringify((r as { identifier?: unknown }).identifier)));
      expect(new Set(keys).size).toBe(keys.length);
    });
  }

  test('bioanalytica: settings, unit-dependent map, critical limits', () => {
    const p = seededProfile('bioanalytica');
    expect(p.key).toBe('bioanalytica');
    expect(p.charset).toBe('8859/7');
    expect(p.nationalId).toEqual({ field: 'PID-3', typeCode: 'NNCYP' });
    expect(p.timezone).toBe('Europe/Nicosia');
    expect(lookupLocalCode(p, 'CREA', 'umol/L')?.loinc).toBe('14682-9');
    expect(lookupLocalCode(p, 'CREA', 'mg/dL')?.loinc).toBe('2160-0');
    expect(lookupLocalCode(p, 'CREA', 'mmol/L')).toBeUndefined();
    expect(lookupLocalCode(p, 'K', 'mmol/L')?.loinc).toBe('2823-3');
    expect(lookupLocalCode(p, 'NTPROBNP', 'pmol/L')?.loinc).toBe('33763-4');
    expect(lookupLocalCode(p, 'NOPE', 'mmol/L')).toBeUndefined();
    expect(p.critical.get('2823-3')).toEqual({ loinc: '2823-3', unit: 'mmol/L', low: 2.8, high: 6.2 });
    expect(p.critical.get('89579-7')).toEqual({ loinc: '89579-7', unit: 'ng/L', low: undefined, high: 52 });
    expect(p.critical.get('6301-6')?.high).toBe(5);
  });

  test('yiannoukas and nipd-genetics: no code map, national ID in PID-19 / PID-3', () => {
    const y = seededProfile('yiannoukas');
    expect(y.nationalId).toEqual({ field: 'PID-19' });
    expect(y.codeMap.size).toBe(0);
    expect(y.critical.get('2345-7')).toMatchObject({ unit: 'mg/dL', low: 45, high: 450 });
    const n = seededProfile('nipd-genetics');
    expect(n.key).toBe('nipd-genetics');
    expect(n.critical.size).toBe(0);
  });
});

describe('labProfileFromResources', () => {
  const org: Organization = {
    resourceType: 'Organization',
    id: 'org-1',
    name: 'Test Lab',
    identifier: [{ system: LAB_KEY_SYSTEM, value: 'test' }],
    extension: [
      {
        url: LAB_PROFILE_EXTENSION,
        extension: [
          { url: 'timezone', valueString: 'Not/AZone' },
          { url: 'national-id', valueString: 'somewhere' },
          { url: 'decimal-comma', valueBoolean: true },
        ],
      },
    ],
  };
  const map: ConceptMap = {
    resourceType: 'ConceptMap',
    status: 'active',
    url: 'urn:test:map',
    group: [
      {
        source: labCodeSystem('test'),
        target: LOINC,
        element: [
          {
            code: 'CREA',
            target: [
              {
                code: '2160-0',
                equivalence: 'equivalent',
                dependsOn: [{ property: 'unit', value: 'µmol/L' }],
                product: [{ property: 'unit', value: 'mg/dL' }],
                extension: [{ url: CONVERSION_FACTOR_EXTENSION, valueDecimal: 0.01131 }],
              },
              { code: '14682-9', equivalence: 'unmatched' },
            ],
          },
          { code: 'EMPTY', target: [] },
        ],
      },
      { source: labCodeSystem('other-lab'), target: LOINC, element: [{ code: 'K', target: [{ code: '2823-3', equivalence: 'equivalent' }] }] },
    ],
  };
  const def: ObservationDefinition = {
    resourceType: 'ObservationDefinition',
    identifier: [{ system: observationDefinitionSystem('test'), value: '2823-3' }],
    code: { coding: [{ system: LOINC, code: '2823-3' }] },
    quantitativeDetails: { unit: { coding: [{ code: 'mEq/L' }] } },
    qualifiedInterval: [
      { category: 'reference', range: { low: { value: 3.5 }, high: { value: 5.1 } } },
      { category: 'critical', range: { low: { value: 2.8 }, high: { value: 6.2 } } },
    ],
  };
  const noCritical: ObservationDefinition = { resourceType: 'ObservationDefinition', code: { coding: [{ system: LOINC, code: '2951-2' }] } };

  test('bad settings fall back to defaults instead of failing', () => {
    const p = labProfileFromResources(org, [map], [def, noCritical]);
    expect(p.timezone).toBe('Europe/Nicosia');
    expect(p.nationalId).toBeUndefined();
    expect(p.decimalComma).toBe(true);
    expect(p.organization).toEqual({ reference: 'Organization/org-1', display: 'Test Lab' });
  });

  test('dependsOn and product units are normalised to UCUM; unmatched targets and other labs are ignored', () => {
    const p = labProfileFromResources(org, [map], []);
    expect(p.codeMap.get('CREA')).toEqual([{ loinc: '2160-0', whenUnit: 'umol/L', convert: { unit: 'mg/dL', factor: 0.01131 } }]);
    expect(p.codeMap.has('EMPTY')).toBe(false);
    expect(p.codeMap.has('K')).toBe(false);
  });

  test('critical interval from ObservationDefinition, unit normalised; reference intervals ignored', () => {
    const p = labProfileFromResources(org, [], [def, noCritical]);
    expect(p.critical.get('2823-3')).toEqual({ loinc: '2823-3', unit: 'meq/L', low: 2.8, high: 6.2 });
    expect(p.critical.has('2951-2')).toBe(false);
  });

  test('a profile naming its ConceptMap uses only that one', () => {
    const named: Organization = { ...org, extension: [{ url: LAB_PROFILE_EXTENSION, extension: [{ url: 'concept-map', valueCanonical: 'urn:other' }] }] };
    expect(labProfileFromResources(named, [map], []).codeMap.size).toBe(0);
  });

  test('parseNationalIdLocation', () => {
    expect(parseNationalIdLocation('PID-3:NNCYP')).toEqual({ field: 'PID-3', typeCode: 'NNCYP' });
    expect(parseNationalIdLocation('pid-19')).toEqual({ field: 'PID-19' });
    expect(parseNationalIdLocation('PID-3')).toBeUndefined();
    expect(parseNationalIdLocation(undefined)).toBeUndefined();
  });
});

describe('labProfileKeyFromMessage', () => {
  test('MSH-3.1 and MSH-4.1', () => {
    const msg = parseHl7('MSH|^~\\&|BIOLIS^1.2.3^ISO|BIOANALYTICA^9.9^ISO|ERMIS|CLINIC|20250101||ORU^R01|1|P|2.5.1');
    expect(labProfileKeyFromMessage(msg)).toEqual({ application: 'BIOLIS', facility: 'BIOANALYTICA' });
  });

  test('empty MSH-3/4', () => {
    expect(labProfileKeyFromMessage(parseHl7('MSH|^~\\&|||||20250101||ORU^R01|1|P|2.5.1'))).toEqual({ application: '', facility: '' });
  });
});
