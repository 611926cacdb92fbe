/**
 * Which searches find the patient of an HL7 message, and how to pick among name+birth-date candidates.
 * Only the national ID (and the clinic's MRN) identify; name + birth date only proposes candidates.
 */
import type { Patient } from '@medplum/fhirtypes';
import { namesAgree } from '../names.ts';
import type { PatientIdentityConfig } from './pid.ts';

/** The searches the handler runs, in order: identifier=cyIdSystem|x, identifier=mrnSystem|x, birthdate=x. */
export interface MatchPlan {
  byNationalId?: string;
  byMrn?: string;
  byNameAndBirthDate?: { birthDate: string; family: string };
}

export function matchPlan(pidPatient: Patient, config: Pick<PatientIdentityConfig, 'cyIdSystem' | 'mrnSystem'>): MatchPlan {
  const plan: MatchPlan = {};
  const value = (system: string): string | undefined =>
    pidPatient.identifier?.find((id) => id.system === system && id.value?.trim())?.value?.trim();
  const nationalId = value(config.cyIdSystem);
  if (nationalId) {
    plan.byNationalId = nationalId;
  }
  const mrn = value(config.mrnSystem);
  if (mrn) {
    plan.byMrn = mrn;
  }
  // A year or month alone would list half the registry: demographic search needs a full date.
  const family = pidPatient.name?.find((n) => n.family?.trim())?.family?.trim();
  if (pidPatient.birthDate && /^\d{4}-\d{2}-\d{2}$/.test(pidPatient.birthDate) && family) {
    plan.byNameAndBirthDate = { birthDate: pidPatient.birthDate, family };
  }
  return plan;
}

/**
 * Among candidates (usually the birthdate search's hits): those whose names agree (Greek or Latin)
 * and that nothing contradicts (gender, birth date, a different national ID, retired records).
 * Exactly one → match; several → ambiguous; none → neither.
 */
export function chooseByDemographics(pidPatient: Patient, candidates: Patient[]): { match?: Patient; ambiguous: Patient[] } {
  const names = pidPatient.name ?? [];
  const fitting = candidates.filter(
    (c) =>
      c.active !== false &&
      !contradicts(pidPatient.gender, c.gender) &&
      !(pidPatient.birthDate && c.birthDate && pidPatient.birthDate !== c.birthDate) &&
      !differentIdentifier(pidPatient, c) &&
      namesAgree(names, c.name ?? [])
  );
  if (fitting.length === 1) {
    return { match: fitting[0], ambiguous: [] };
  }
  return { ambiguous: fitting };
}

/** Only a definite male against a definite female contradicts; unknown/other/absent never do. */
function contradicts(a: Patient['gender'], b: Patient['gender']): boolean {
  const definite = (g: Patient['gender']): boolean => g === 'male' || g === 'female';
  return definite(a) && definite(b) && a !== b;
}

/** Both carry identifiers of one system (national ID, MRN, a lab's number) and none of the values is shared. */
function differentIdentifier(a: Patient, b: Patient): boolean {
  for (const x of a.identifier ?? []) {
    if (!x.system || !x.value) {
      continue;
    }
    const same = (b.identifier ?? []).filter((y) => y.system === x.system && y.value);
    if (same.length > 0 && !same.some((y) => y.value === x.value)) {
      return true;
    }
  }
  return false;
}
