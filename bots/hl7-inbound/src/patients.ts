/**
 * Finding the patient of a message: by national ID, then by the clinic's MRN (both identify),
 * then by name + birth date (a match only when exactly one candidate agrees and nothing
 * contradicts; several candidates go to a person, as do none).
 */
import type { MedplumClient, WithId } from '@medplum/core';
import type { Patient } from '@medplum/fhirtypes';
import { chooseByDemographics, matchPlan } from '../../lib/hl7/patient-match.ts';
import type { PatientIdentityConfig } from '../../lib/hl7/pid.ts';
import { ERMIS } from '../../lib/hl7/systems.ts';

export const ERMIS_TASK_SYSTEM = `${ERMIS}/CodeSystem/task`;

export interface PatientMatch {
  patient?: WithId<Patient>;
  /** How the match was made. */
  by?: 'national-id' | 'mrn' | 'demographics';
  /** Possible patients when no certain match was found. */
  candidates: WithId<Patient>[];
  /** The patient as the message describes it. */
  fromPid: Patient;
}

export async function findPatient(medplum: MedplumClient, fromPid: Patient, identity: PatientIdentityConfig): Promise<PatientMatch> {
  const plan = matchPlan(fromPid, identity);
  // A merged-away record (A40) stands for the one that replaced it.
  const byIdentifier = async (system: string, value: string): Promise<WithId<Patient>[]> => {
    const found = await medplum.searchResources('Patient', { identifier: `${system}|${value}`, _count: '5' });
    const current = new Map<string, WithId<Patient>>();
    for (const patient of found) {
      const replacement = patient.active === false ? patient.link?.find((l) => l.type === 'replaced-by')?.other?.reference : undefined;
      if (replacement?.startsWith('Patient/')) {
        const survivor = await medplum.readReference<Patient>({ reference: replacement }).catch(() => undefined);
        if (survivor && survivor.active !== false) {
          current.set(survivor.id as string, survivor as WithId<Patient>);
        }
      } else if (patient.active !== false) {
        current.set(patient.id, patient);
      }
    }
    return [...current.values()];
  };
  if (plan.byNationalId) {
    const found = await byIdentifier(identity.cyIdSystem, plan.byNationalId);
    if (found.length === 1) {
      return { patient: found[0], by: 'national-id', candidates: [], fromPid };
    }
    if (found.length > 1) {
      return { candidates: found, fromPid };
    }
  }
  if (plan.byMrn) {
    const found = await byIdentifier(identity.mrnSystem, plan.byMrn);
    if (found.length === 1) {
      return { patient: found[0], by: 'mrn', candidates: [], fromPid };
    }
    if (found.length > 1) {
      return { candidates: found, fromPid };
    }
  }
  if (plan.byNameAndBirthDate) {
    const candidates = await medplum.searchResources('Patient', { birthdate: plan.byNameAndBirthDate.birthDate, _count: '50' });
    const chosen = chooseByDemographics(fromPid, candidates);
    if (chosen.match) {
      return { patient: chosen.match as WithId<Patient>, by: 'demographics', candidates: [], fromPid };
    }
    return { candidates: chosen.ambiguous as WithId<Patient>[], fromPid };
  }
  return { candidates: [], fromPid };
}
