/**
 * The search mix of Health Samurai's k6 `search.js`: string (plain and `:contains`), date (every
 * prefix) and token searches with `_count=20`, values drawn at random from the lists of its
 * `searchConfig.js` (each list starts with a value that matches nothing). One iteration sends each
 * parameter once, in order, as the k6 script does.
 */
import { CITIES, GIVEN_NAMES, ORGANIZATION_NAMES } from './synthea-bundles.ts';
import type { Rng } from './rng.ts';

interface ParamSpec {
  resourceType: string;
  name: string;
  modifiers?: string[];
  prefixes?: string[];
  values: string[];
}

const DATE_PREFIXES = ['', 'eq', 'lt', 'gt', 'ge', 'le', 'sa', 'eb'];

export const SEARCH_PARAMS: ParamSpec[] = [
  { resourceType: 'Patient', name: 'name', modifiers: ['', ':contains'], values: ['NON-EXISTS', ...GIVEN_NAMES.slice(0, 18), 'Reyes', 'Santiago'] },
  { resourceType: 'Patient', name: 'address', modifiers: ['', ':contains'], values: ['NON-EXISTS', ...CITIES.slice(0, 19)] },
  { resourceType: 'Organization', name: 'name', modifiers: ['', ':contains'], values: ['NON-EXISTS', ...ORGANIZATION_NAMES] },
  {
    resourceType: 'Patient',
    name: 'birthdate',
    prefixes: DATE_PREFIXES,
    values: ['2070-01-01', '1991-05-12', '2003-09-14', '1916-12-23', '1964-04-23', '1913-12-30', '1978-05-25', '2011-01-12', '1932-09-05', '2007-09-10', '1968-12-27', '2004-07-19', '2018-01-08', '2022-05-05', '2000-01-18', '2013-10-07', '1980-06-12', '2019-10-23', '1954-03-21', '1961-09-27', '1942-07-18'],
  },
  {
    resourceType: 'Observation',
    name: 'date',
    prefixes: DATE_PREFIXES,
    values: ['2070-01-01T00:00:00', '2017-01-29T05:36:48', '2024-05-30T06:16:35', '2016-08-21T14:53:50', '2021-01-26T16:56:53', '2022-07-28T10:41:20', '2021-07-29T06:16:35', '2017-10-30T18:53:59', '2015-09-05T00:05:56', '2017-07-09T06:36:13', '2014-12-07T14:53:50', '2015-04-23T06:57:55', '2023-07-06T04:32:31', '2016-09-18T14:53:50', '2021-12-30T18:23:17', '2019-03-17T05:36:48', '2015-09-23T09:33:23', '2018-06-02T19:17:08', '2023-09-11T03:55:48', '2024-06-07T02:18:51', '2018-04-12T07:33:57'],
  },
  {
    resourceType: 'Encounter',
    name: 'date',
    prefixes: DATE_PREFIXES,
    values: ['2070-01-01', '1988-11-29', '2017-12-16', '2019-08-14', '1999-06-26', '1962-05-07', '1986-09-06', '2015-07-09', '2015-09-05', '2016-12-29', '1958-08-07', '1990-10-02', '2017-11-28', '2024-01-22', '2019-01-05', '2019-08-04', '1998-12-05', '1990-07-20', '2021-02-16', '2022-06-24', '2017-02-22'],
  },
  {
    resourceType: 'Observation',
    name: 'category',
    values: ['missing-data|for-null-searches', 'laboratory', 'http://terminology.hl7.org/CodeSystem/observation-category|laboratory', 'vital-signs', 'survey', 'social-history', 'procedure', 'laboratory,vital-signs', 'laboratory,vital-signs,survey'],
  },
  {
    resourceType: 'Observation',
    name: 'code',
    values: ['non-existent-loinc-9999999', '8302-2', '29463-7', '8480-6', '8462-4', '8867-4', '39156-5', '72514-3', '718-7', 'http://loinc.org|8302-2', 'http://loinc.org|29463-7', '8302-2,29463-7', '8480-6,8462-4,8867-4'],
  },
  {
    resourceType: 'Encounter',
    name: 'status',
    values: ['missing-status', 'finished', 'in-progress', 'planned', 'arrived', 'cancelled', 'finished,in-progress', 'finished,in-progress,planned'],
  },
  {
    resourceType: 'Encounter',
    name: 'class',
    values: ['missing|class-code', 'AMB', 'EMER', 'IMP', 'HH', 'OBSENC', 'WELLNESS', 'http://terminology.hl7.org/CodeSystem/v3-ActCode|AMB', 'http://terminology.hl7.org/CodeSystem/v3-ActCode|EMER', 'AMB,EMER', 'AMB,EMER,IMP'],
  },
];

/** Escapes the FHIR search separators inside one value (`,` `$` `|` and the backslash), as search.js does for string values. */
function escapeValue(value: string): string {
  return value.replace(/([\\,$|])/g, '\\$1');
}

/** One request of the mix: its label (for per-parameter statistics) and its path below the FHIR base. */
export function searchRequest(spec: ParamSpec, rng: Rng): { op: string; path: string } {
  const modifier = spec.modifiers ? rng.pick(spec.modifiers) : '';
  const prefix = spec.prefixes ? rng.pick(spec.prefixes) : '';
  const raw = rng.pick(spec.values);
  // String values are escaped; token lists keep their commas and system bars (they are OR lists and system|code).
  const value = spec.modifiers ? escapeValue(raw) : raw;
  return { op: `${spec.resourceType}?${spec.name}`, path: `${spec.resourceType}?${spec.name}${modifier}=${prefix}${encodeURIComponent(value)}&_count=20` };
}
