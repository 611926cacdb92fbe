/**
 * OBX-6 → Quantity unit/code/system. Labs write units as they print them (µmol/L, mEq/L, mg/dl);
 * UCUM is case-sensitive and has no µ, so the common spellings are normalised and the result is
 * checked against a table of units known to be valid UCUM (validated with ucum-lhc, lab-domain
 * §4.3). A unit we cannot vouch for keeps its text and gets no system: a wrong UCUM code is worse
 * than none.
 */
import { UCUM } from './systems.ts';

/** Valid UCUM codes seen in lab results (case exactly as UCUM wants it). */
const KNOWN_UCUM = [
  // substance and mass concentrations
  'mol/L', 'mmol/L', 'umol/L', 'nmol/L', 'pmol/L', 'fmol/L',
  'g/L', 'g/dL', 'mg/L', 'mg/dL', 'ug/L', 'ug/dL', 'ug/mL', 'ng/L', 'ng/dL', 'ng/mL', 'pg/mL', 'pg/L',
  'meq/L', 'mosm/kg', 'mmol/mol', 'mmol/kg', 'mg/g', 'mg/mmol', 'mg/(24.h)', 'g/(24.h)', 'mmol/(24.h)',
  // activities and arbitrary units
  'U/L', 'U/mL', 'kU/L', 'mU/L', 'U/g', '[IU]/L', '[IU]/mL', 'm[IU]/L', 'm[IU]/mL', 'u[IU]/mL', 'k[IU]/L', '[arb\'U]/mL',
  // counts
  '10*3/uL', '10*6/uL', '10*9/L', '10*12/L', '10*3/mm3', '/uL', '/mm3', '/L', '/[HPF]', '/[LPF]',
  // ratios, fractions, misc
  '%', '1', '{ratio}', '{INR}', '{titer}', '{index}', '{s_co_ratio}', 'fL', 'pg', 'g', 'mg', 'kg', 'L', 'mL', 'dL', 'uL',
  's', 'min', 'h', 'd', 'wk', 'mo', 'a', 'mm/h', 'mm[Hg]', 'cm[H2O]', 'mm', 'cm', 'm', 'Cel', '[degF]', 'kg/m2', 'm2',
  'mL/min', 'mL/min/{1.73_m2}', 'mL/min/1.73.m2', 'L/min', '/min', 'mPa.s', 'kPa', '[pH]', 'pH', 'osm/kg',
];

const CANONICAL = new Map<string, string>();
for (const code of KNOWN_UCUM) {
  CANONICAL.set(code.toLowerCase(), code);
}

/** Spellings labs use that are not UCUM, mapped to the UCUM code (case-insensitive keys). */
const ALIASES: Record<string, string> = {
  'meq/l': 'meq/L',
  'miu/l': 'm[IU]/L',
  'miu/ml': 'm[IU]/mL',
  'uiu/ml': 'u[IU]/mL',
  'iu/l': '[IU]/L',
  'iu/ml': '[IU]/mL',
  'kiu/l': 'k[IU]/L',
  'mcg/l': 'ug/L',
  'mcg/dl': 'ug/dL',
  'mcg/ml': 'ug/mL',
  'gm/dl': 'g/dL',
  'mm/hr': 'mm/h',
  'sec': 's',
  'secs': 's',
  'seconds': 's',
  'ratio': '{ratio}',
  'inr': '{INR}',
  'x10^9/l': '10*9/L',
  'x10e9/l': '10*9/L',
  '10^9/l': '10*9/L',
  'x10^12/l': '10*12/L',
  '10^12/l': '10*12/L',
  'x10^3/ul': '10*3/uL',
  '10^3/ul': '10*3/uL',
  'k/ul': '10*3/uL',
  'ml/min/1.73m2': 'mL/min/{1.73_m2}',
  'ml/min/1.73 m2': 'mL/min/{1.73_m2}',
  'ml/min/1,73m2': 'mL/min/{1.73_m2}',
  'mmhg': 'mm[Hg]',
};

/** The UCUM code for a unit as a lab writes it, or undefined when we cannot vouch for one. */
export function toUcum(unit: string): string | undefined {
  let u = unit.trim().replace(/\s+/g, ' ');
  if (!u) {
    return undefined;
  }
  // Micro sign (U+00B5) and Greek mu (U+03BC) → u; UCUM has only ASCII.
  u = u.replace(/[\u00B5\u03BC]/g, 'u');
  const lower = u.toLowerCase();
  const alias = ALIASES[lower] ?? ALIASES[lower.replace(/ /g, '')];
  if (alias) {
    return alias;
  }
  const exact = CANONICAL.get(lower) ?? CANONICAL.get(lower.replace(/ /g, ''));
  if (exact) {
    return exact;
  }
  // Curly-brace annotations are valid UCUM anywhere and do not change the unit: validate the rest.
  if (/^[^{}]*(\{[^{}]*\}[^{}]*)+$/.test(u)) {
    const stripped = u.replace(/\{[^{}]*\}/g, '');
    if (stripped === '' || CANONICAL.get(stripped.toLowerCase()) === stripped || (stripped.startsWith('/') && CANONICAL.has(stripped.toLowerCase()))) {
      return u;
    }
  }
  return undefined;
}

export interface UnitInfo {
  /** Printable unit, as the lab sent it (OBX-6.2, else OBX-6.1). */
  unit?: string;
  /** UCUM code, only when valid. */
  code?: string;
  system?: string;
}

/** Coding-system names of OBX-6 that mean "the identifier is (meant to be) UCUM". */
const UCUM_SYSTEM_NAMES = new Set(['', 'UCUM', 'ISO+', 'ANSI+', 'ANS+', 'L', '99UCUM']);

/**
 * OBX-6 (CWE: code^text^system^altCode^altText^altSystem) → unit info. The identifier is tried
 * first when its coding system is UCUM-like (or absent), then the text, then the alternate code.
 */
export function unitFromCwe(code: string, text: string, systemName: string, altCode = '', altSystemName = ''): UnitInfo {
  const printable = text || code || altCode;
  if (!printable) {
    return {};
  }
  const candidates: string[] = [];
  if (UCUM_SYSTEM_NAMES.has(systemName.toUpperCase())) {
    candidates.push(code);
  }
  candidates.push(text);
  if (UCUM_SYSTEM_NAMES.has(altSystemName.toUpperCase())) {
    candidates.push(altCode);
  }
  for (const c of candidates) {
    const ucum = c ? toUcum(c) : undefined;
    if (ucum) {
      return { unit: printable, code: ucum, system: UCUM };
    }
  }
  return { unit: printable };
}
