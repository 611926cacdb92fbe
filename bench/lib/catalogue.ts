import { parse } from 'csv-parse/sync';
import { readFileSync } from 'node:fs';
import path from 'node:path';

/**
 * The codes the generator draws from: LOINC's "Top 2000+ Common Lab Results" v1.6 (US and SI
 * lists, ../shared/testdata/loinc-top2000/, ranked by how often each result is reported) plus
 * the vital signs of the FHIR R4 vital-signs profile.
 */

export const LOINC = 'http://loinc.org';
export const UCUM = 'http://unitsofmeasure.org';

export interface LabCode {
  code: string;
  display: string;
  short: string;
  cls: string;
  rank: number;
  value: ValueSpec;
}

/** How a result's value is generated. */
export type ValueSpec =
  | { kind: 'quantity'; unit: string; median: number; spread: number; decimals: number; low?: number; high?: number; normal?: boolean }
  | { kind: 'presence' }
  | { kind: 'titer' }
  | { kind: 'susceptibility' }
  | { kind: 'string'; options: readonly string[] };

export interface VitalCode {
  code: string;
  display: string;
  /** share of vital-sign sets that include it */
  frequency: number;
  value: ValueSpec;
  /** Blood pressure: the components (systolic, diastolic) carry the values. */
  components?: { code: string; display: string; value: ValueSpec }[];
}

// shared/ sits beside the repository (bench/lib → repo → its parent)
const DEFAULT_DIR = path.resolve(import.meta.dirname, '../../../shared/testdata/loinc-top2000');

// Hand-set values for the most frequent results: UCUM unit, typical (normal-distributed) value and
// reference range. Codes are the same in both lists unless the property differs (mass vs. moles).
const q = (unit: string, median: number, spread: number, decimals: number, low?: number, high?: number): ValueSpec => ({
  kind: 'quantity',
  unit,
  median,
  spread,
  decimals,
  low,
  high,
  normal: true,
});
const KNOWN: Record<string, ValueSpec> = {
  // SI list (and shared codes)
  '14682-9': q('umol/L', 85, 25, 0, 60, 110),
  '718-7': q('g/dL', 13.8, 1.6, 1, 12, 17.5),
  '2823-3': q('mmol/L', 4.3, 0.45, 1, 3.5, 5.1),
  '14749-6': q('mmol/L', 5.8, 1.6, 1, 3.9, 6.1),
  '2951-2': q('mmol/L', 139, 3, 0, 136, 145),
  '3094-0': q('mg/dL', 15, 5, 0, 7, 20),
  '2028-9': q('mmol/L', 25, 2.5, 0, 22, 29),
  '2075-0': q('mmol/L', 103, 3, 0, 98, 107),
  '789-8': q('10*6/uL', 4.7, 0.5, 2, 4.2, 5.9),
  '786-4': q('g/dL', 33.5, 1.2, 1, 32, 36),
  '785-6': q('pg', 29.5, 2, 1, 27, 33),
  '2000-8': q('mmol/L', 2.35, 0.12, 2, 2.15, 2.55),
  '15074-8': q('mmol/L', 5.9, 1.7, 1, 3.9, 7.8),
  '4544-3': q('%', 41, 4.5, 1, 36, 50),
  '6690-2': q('10*3/uL', 7.2, 2.1, 1, 4, 11),
  '1742-6': q('U/L', 25, 12, 0, 7, 56),
  '787-2': q('fL', 89, 5, 0, 80, 100),
  '777-3': q('10*3/uL', 250, 60, 0, 150, 400),
  '1920-8': q('U/L', 24, 9, 0, 10, 40),
  '1751-7': q('g/dL', 4.2, 0.4, 1, 3.5, 5),
  '14631-6': q('umol/L', 10, 5, 0, 3, 21),
  '2885-2': q('g/dL', 7.0, 0.5, 1, 6, 8.3),
  '6768-6': q('U/L', 75, 25, 0, 44, 147),
  '788-0': q('%', 13.5, 1.2, 1, 11.5, 14.5),
  '770-8': q('%', 58, 9, 1, 40, 75),
  '33914-3': q('mL/min/{1.73_m2}', 80, 22, 0, 60),
  '704-7': q('10*3/uL', 0.04, 0.02, 2, 0, 0.1),
  '20570-8': q('%', 41, 4.5, 1, 36, 50),
  '48642-3': q('mL/min/{1.73_m2}', 80, 22, 0, 60),
  '48643-1': q('mL/min/{1.73_m2}', 85, 22, 0, 60),
  '26515-7': q('10*3/uL', 250, 60, 0, 150, 400),
  '14647-2': q('mmol/L', 5.1, 1.0, 2, undefined, 5.2),
  '26464-8': q('10*3/uL', 7.2, 2.1, 1, 4, 11),
  '30428-7': q('fL', 89, 5, 0, 80, 100),
  '731-0': q('10*3/uL', 2.1, 0.7, 1, 1, 4.8),
  '14927-8': q('mmol/L', 1.5, 0.7, 2, undefined, 1.7),
  '10466-1': q('mmol/L', 11, 3, 0, 4, 16),
  '14646-4': q('mmol/L', 1.4, 0.35, 2, 1.0),
  '26485-3': q('%', 7, 2, 1, 2, 10),
  '736-9': q('%', 30, 8, 1, 20, 45),
  '706-2': q('%', 0.6, 0.3, 1, 0, 2),
  '713-8': q('%', 2.5, 1.5, 1, 0, 6),
  '5905-5': q('%', 7, 2, 1, 2, 10),
  '26478-8': q('%', 30, 8, 1, 20, 45),
  '751-8': q('10*3/uL', 4.2, 1.5, 1, 1.8, 7.7),
  '5902-2': q('s', 12.5, 1.5, 1, 11, 13.5),
  '26450-7': q('%', 2.5, 1.5, 1, 0, 6),
  '711-2': q('10*3/uL', 0.2, 0.1, 2, 0, 0.5),
  '742-7': q('10*3/uL', 0.5, 0.15, 2, 0.2, 1),
  '6301-6': q('{INR}', 1.1, 0.3, 1, 0.8, 1.2),
  '3097-3': q('{ratio}', 16, 4, 0, 10, 20),
  '14979-9': q('s', 30, 4, 1, 25, 35),
  '4548-4': q('%', 6.1, 1.0, 1, undefined, 5.7),
  '59261-8': q('mmol/mol', 43, 10, 0, undefined, 39),
  '3016-3': q('m[IU]/L', 2.0, 1.2, 2, 0.4, 4.0),
  '1988-5': q('mg/L', 4, 5, 1, undefined, 5),
  '2093-3': q('mg/dL', 195, 40, 0, undefined, 200),
  '2085-9': q('mg/dL', 52, 14, 0, 40),
  '2571-8': q('mg/dL', 140, 60, 0, undefined, 150),
  '13457-7': q('mg/dL', 115, 35, 0, undefined, 100),
  '2160-0': q('mg/dL', 1.0, 0.3, 2, 0.7, 1.3),
  '2345-7': q('mg/dL', 105, 30, 0, 70, 110),
  '17861-6': q('mg/dL', 9.4, 0.5, 1, 8.6, 10.3),
  '1975-2': q('mg/dL', 0.6, 0.3, 1, 0.1, 1.2),
  '33762-6': q('pg/mL', 300, 400, 0, undefined, 125),
  '10839-9': q('ng/mL', 0.02, 0.03, 2, undefined, 0.04),
  '8310-5': q('Cel', 36.8, 0.5, 1, 36.1, 37.2),
  '29463-7': q('kg', 76, 15, 1),
  '2708-6': q('%', 97, 2, 0, 95, 100),
  '59408-5': q('%', 97, 2, 0, 95, 100),
  '5803-2': q('[pH]', 6, 0.8, 1, 5, 8),
  '2756-5': q('[pH]', 6, 0.8, 1, 5, 8),
  '5811-5': q('{SG}', 1.015, 0.007, 3, 1.005, 1.03),
  '2965-2': q('{SG}', 1.015, 0.007, 3, 1.005, 1.03),
};

const VITAL_Q = (unit: string, median: number, spread: number, decimals: number): ValueSpec => ({
  kind: 'quantity',
  unit,
  median,
  spread,
  decimals,
  normal: true,
});

/** FHIR R4 vital-signs profile codes (https://hl7.org/fhir/R4/observation-vitalsigns.html). */
export const VITALS: VitalCode[] = [
  { code: '8867-4', display: 'Heart rate', frequency: 0.95, value: VITAL_Q('/min', 74, 11, 0) },
  {
    code: '85354-9',
    display: 'Blood pressure panel with all children optional',
    frequency: 0.95,
    value: { kind: 'string', options: [] },
    components: [
      { code: '8480-6', display: 'Systolic blood pressure', value: VITAL_Q('mm[Hg]', 128, 16, 0) },
      { code: '8462-4', display: 'Diastolic blood pressure', value: VITAL_Q('mm[Hg]', 79, 10, 0) },
    ],
  },
  { code: '9279-1', display: 'Respiratory rate', frequency: 0.7, value: VITAL_Q('/min', 16, 2, 0) },
  { code: '8310-5', display: 'Body temperature', frequency: 0.8, value: VITAL_Q('Cel', 36.8, 0.45, 1) },
  { code: '59408-5', display: 'Oxygen saturation in Arterial blood by Pulse oximetry', frequency: 0.75, value: VITAL_Q('%', 97, 1.8, 0) },
  { code: '29463-7', display: 'Body weight', frequency: 0.8, value: VITAL_Q('kg', 76, 15, 1) },
  { code: '8302-2', display: 'Body height', frequency: 0.25, value: VITAL_Q('cm', 169, 10, 0) },
  { code: '39156-5', display: 'Body mass index (BMI) [Ratio]', frequency: 0.25, value: VITAL_Q('kg/m2', 26.5, 4.5, 1) },
];

/** A value spec from the property in brackets in the long name, for the codes without a hand-set one. */
function specFromName(name: string, si: boolean): ValueSpec {
  const property = /\[([^\]]+)\]/.exec(name)?.[1]?.toLowerCase();
  const lq = (unit: string, median: number, decimals = 1): ValueSpec => ({ kind: 'quantity', unit, median, spread: 0.6, decimals });
  switch (property) {
    case 'moles/volume':
      return lq(si ? 'mmol/L' : 'umol/L', si ? 3 : 30, 2);
    case 'mass/volume':
      return lq(si ? 'mg/L' : 'mg/dL', 20);
    case 'units/volume':
      return lq('[IU]/mL', 5, 2);
    case 'enzymatic activity/volume':
      return lq('U/L', 50, 0);
    case '#/volume':
      return lq('10*3/uL', 3, 2);
    case '#/area':
      return lq('/[HPF]', 2, 0);
    case 'volume fraction':
    case 'molar fraction':
      return lq('%', 20);
    case 'molar ratio':
    case 'ratio':
    case 'mass ratio':
    case 'mass ratio ':
      return lq('{ratio}', 1.2, 2);
    case 'multiple of the median':
      return lq('{MoM}', 1, 2);
    case 'moles/time':
      return lq('mmol/(24.h)', 10);
    case 'mass/time':
      return lq('g/(24.h)', 0.15, 2);
    case 'entitic volume':
      return lq('fL', 90, 0);
    case 'entitic mass':
      return lq('pg', 29);
    case 'partial pressure':
      return lq('mm[Hg]', 40, 0);
    case 'time':
      return lq('s', 30);
    case 'volume':
      return lq('mL', 1500, 0);
    case 'titer':
      return { kind: 'titer' };
    case 'presence':
      return { kind: 'presence' };
    case 'susceptibility':
      return { kind: 'susceptibility' };
    case 'identifier':
      return { kind: 'string', options: ['No growth', 'Escherichia coli', 'Staphylococcus aureus', 'Mixed flora', 'Enterococcus faecalis'] };
    case undefined:
      break;
    default:
      return { kind: 'string', options: ['See comment', 'Normal', 'Abnormal'] };
  }
  const lower = name.toLowerCase();
  if (lower.includes('/100 ')) {
    return lq('%', 10);
  }
  if (lower.includes('color')) {
    return { kind: 'string', options: ['Yellow', 'Straw', 'Amber'] };
  }
  if (lower.includes('appearance') || lower.includes('clarity')) {
    return { kind: 'string', options: ['Clear', 'Cloudy', 'Hazy'] };
  }
  return { kind: 'string', options: ['See report', 'Within normal limits', 'Abnormal findings, see report'] };
}

export interface LabList {
  codes: LabCode[];
  /** Cumulative Zipf weights (1/rank): result frequency falls with rank as in the list. */
  cumulative: Float64Array;
}

/** One ranked list (US or SI), one entry per LOINC code. */
export function loadLabList(which: 'US' | 'SI', dir = DEFAULT_DIR): LabList {
  const text = readFileSync(path.join(dir, `LOINC_1.6_Top2000CommonLabResults${which}.csv`), 'utf8').replace(/^\uFEFF/, '');
  const seen = new Set<string>();
  const codes: LabCode[] = [];
  const records = parse(text, { from_line: 2, skip_empty_lines: true, relax_column_count: true }) as string[][];
  for (const [code, name, short, cls, rank] of records) {
    if (!/^\d+-\d$/.test(code) || seen.has(code)) {
      continue;
    }
    seen.add(code);
    const display = name.trim().replace(/\s+/g, ' ');
    codes.push({ code, display, short: short.trim(), cls, rank: Number(rank), value: KNOWN[code] ?? specFromName(display, which === 'SI') });
  }
  codes.sort((a, b) => a.rank - b.rank);
  const cumulative = new Float64Array(codes.length);
  let total = 0;
  codes.forEach((c, i) => {
    total += 1 / c.rank;
    cumulative[i] = total;
  });
  return { codes, cumulative };
}
