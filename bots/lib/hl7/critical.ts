/**
 * Is a result critical? Either the lab says so (OBX-8 HH, LL, AA, or the "very high/low" HU, LU)
 * or the value lies outside the profile's critical interval for its LOINC. Limits are compared
 * only when the result is in the limits' UCUM unit: no silent unit conversion for an alarm.
 */
import type { Quantity } from '@medplum/fhirtypes';
import type { CriticalLimits } from './lab-profile.ts';

export interface CriticalFinding {
  reason: string;
  flag: 'HH' | 'LL' | 'AA' | 'limit';
}

const FLAG_MEANING: Record<string, { flag: CriticalFinding['flag']; text: string }> = {
  HH: { flag: 'HH', text: 'critically high' },
  HU: { flag: 'HH', text: 'very high' },
  LL: { flag: 'LL', text: 'critically low' },
  LU: { flag: 'LL', text: 'very low' },
  AA: { flag: 'AA', text: 'critically abnormal' },
};

function describe(q: Quantity): string {
  return `${q.comparator ?? ''}${q.value}${q.unit ? ` ${q.unit}` : ''}`;
}

/** Lab flags first (they know the patient's context), then our limits. */
export function criticalFinding(label: string, flags: string[], value: Quantity | undefined, limits: CriticalLimits | undefined): CriticalFinding | undefined {
  for (const f of flags) {
    const meaning = FLAG_MEANING[f.toUpperCase()];
    if (meaning) {
      return { flag: meaning.flag, reason: `${label}: flagged ${f.toUpperCase()} (${meaning.text}) by the lab${value ? `, ${describe(value)}` : ''}` };
    }
  }
  if (!value || value.value === undefined || !limits) {
    return undefined;
  }
  if (limits.unit !== undefined && value.code !== limits.unit) {
    return undefined;
  }
  const v = value.value;
  const c = value.comparator;
  // A bound like "<2" is below a low limit of 2.5 for sure; "<3" is not known to be.
  if (limits.low !== undefined && (c === undefined || c === '<' || c === '<=') && (c === '<' ? v <= limits.low : v < limits.low)) {
    return { flag: 'limit', reason: `${label} ${describe(value)} is below the critical limit ${limits.low}${limits.unit ? ` ${limits.unit}` : ''}` };
  }
  if (limits.high !== undefined && (c === undefined || c === '>' || c === '>=') && (c === '>' ? v >= limits.high : v > limits.high)) {
    return { flag: 'limit', reason: `${label} ${describe(value)} is above the critical limit ${limits.high}${limits.unit ? ` ${limits.unit}` : ''}` };
  }
  return undefined;
}
