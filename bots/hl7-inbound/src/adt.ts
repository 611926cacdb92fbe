/**
 * ADT → Patient. A01/A04/A08/A28/A31: the patient found by an identifier the message carries
 * (national ID, MRN, then any other) is updated with what PID says — identifiers are added, not
 * dropped; names, birth date, gender, address and telecom replaced when sent — or created. A40:
 * the surviving patient (PID) and the retired one (MRG) are linked: replaced-by / replaces, and
 * the retired one made inactive. One transaction, with version checks on what was read.
 */
import { getReferenceString } from '@medplum/core';
import type { Hl7Message, MedplumClient, WithId } from '@medplum/core';
import type { BundleEntry, Identifier, Patient, PatientLink } from '@medplum/fhirtypes';
import { mapAdt } from '../../lib/hl7/adt.ts';
import type { Hl7Issue } from '../../lib/hl7/issues.ts';
import type { PatientIdentityConfig } from '../../lib/hl7/pid.ts';

export interface AdtPlan {
  ok: true;
  entries: BundleEntry[];
  made: { reference: string }[];
  patient: string;
  warnings: Hl7Issue[];
}

export async function planAdt(medplum: MedplumClient, msg: Hl7Message, identity: PatientIdentityConfig): Promise<AdtPlan | { ok: false; issues: Hl7Issue[] }> {
  const mapped = mapAdt(msg, identity);
  if (!mapped.ok) {
    return mapped;
  }
  if (!(mapped.patient.identifier ?? []).some((i) => i.system && i.value)) {
    // Without an assigning authority an identifier names nobody for sure: every A08 would create another Patient.
    return { ok: false, issues: [{ segment: 'PID', sequence: 1, field: 3, code: '101', severity: 'E', reason: 'No patient identifier with an assigning authority (CX.4) or a national ID type' }] };
  }
  // For a merge the record to retire is found first: both records often carry the same national ID
  // (that is why they are merged), and the survivor is the other one.
  let retired: WithId<Patient> | undefined;
  if (mapped.merge) {
    const found = await findByIdentifiers(medplum, mapped.merge.retired, identity);
    if (found === 'ambiguous' || !found) {
      return {
        ok: false,
        issues: [{ segment: 'MRG', sequence: 1, field: 1, code: '204', severity: 'E', reason: found ? 'MRG-1 matches more than one patient' : 'The patient to merge (MRG-1) is not known' }],
      };
    }
    retired = found;
  }
  const existing = await findByIdentifiers(medplum, mapped.patient.identifier ?? [], identity, retired?.id);
  if (existing === 'ambiguous') {
    return { ok: false, issues: [{ segment: 'PID', sequence: 1, field: 3, code: '205', severity: 'E', reason: 'The identifiers match more than one patient' }] };
  }
  const entries: BundleEntry[] = [];
  const survivorUrn = `urn:uuid:${crypto.randomUUID()}`;
  const survivor: Patient = existing ? updated(existing, mapped.patient) : { ...mapped.patient, active: true };
  let survivorRef = existing ? getReferenceString(existing) : survivorUrn;

  if (retired) {
    survivor.link = withLink(survivor.link, { other: { reference: getReferenceString(retired) }, type: 'replaces' });
    const retiredUpdate: Patient = { ...retired, active: false, link: withLink(retired.link, { other: { reference: survivorRef }, type: 'replaced-by' }) };
    entries.push({
      resource: retiredUpdate,
      request: { method: 'PUT', url: getReferenceString(retired), ifMatch: `W/"${retired.meta?.versionId}"` },
    });
  }
  if (existing) {
    entries.unshift({ fullUrl: survivorUrn, resource: survivor, request: { method: 'PUT', url: getReferenceString(existing), ifMatch: `W/"${existing.meta?.versionId}"` } });
    survivorRef = getReferenceString(existing);
  } else {
    const key = keyIdentifier(survivor.identifier ?? [], identity);
    entries.unshift({
      fullUrl: survivorUrn,
      resource: survivor,
      request: { method: 'POST', url: 'Patient', ifNoneExist: key ? `identifier=${encodeURIComponent(`${key.system}|${key.value}`)}` : undefined },
    });
  }
  return { ok: true, entries, made: [{ reference: survivorRef }], patient: survivorRef, warnings: mapped.issues };
}

/** The identifier that names a patient best: national ID, then MRN, then the first with a system. */
function keyIdentifier(ids: Identifier[], identity: PatientIdentityConfig): Identifier | undefined {
  return ids.find((i) => i.system === identity.cyIdSystem && i.value) ?? ids.find((i) => i.system === identity.mrnSystem && i.value) ?? ids.find((i) => i.system && i.value);
}

/** The active patient with one of these identifiers (retired records and `except` left out). */
async function findByIdentifiers(
  medplum: MedplumClient,
  ids: Identifier[],
  identity: PatientIdentityConfig,
  except?: string
): Promise<WithId<Patient> | 'ambiguous' | undefined> {
  const ordered = [
    ...ids.filter((i) => i.system === identity.cyIdSystem),
    ...ids.filter((i) => i.system === identity.mrnSystem),
    ...ids.filter((i) => i.system !== identity.cyIdSystem && i.system !== identity.mrnSystem),
  ].filter((i) => i.system && i.value);
  for (const id of ordered) {
    const found = (await medplum.searchResources('Patient', { identifier: `${id.system}|${id.value}`, _count: '5' })).filter((p) => p.active !== false && p.id !== except);
    if (found.length > 1) {
      return 'ambiguous';
    }
    if (found.length === 1) {
      return found[0];
    }
  }
  return undefined;
}

function updated(existing: WithId<Patient>, incoming: Patient): Patient {
  const ids = [...(existing.identifier ?? [])];
  for (const id of incoming.identifier ?? []) {
    if (!ids.some((e) => e.system === id.system && e.value === id.value)) {
      ids.push(id);
    }
  }
  return {
    ...existing,
    identifier: ids,
    name: incoming.name?.length ? incoming.name : existing.name,
    birthDate: incoming.birthDate ?? existing.birthDate,
    gender: incoming.gender ?? existing.gender,
    address: incoming.address?.length ? incoming.address : existing.address,
    telecom: incoming.telecom?.length ? incoming.telecom : existing.telecom,
    // deceased[x] is a choice: the incoming one as a whole, or the existing one.
    ...(incoming.deceasedBoolean !== undefined || incoming.deceasedDateTime !== undefined
      ? { deceasedBoolean: incoming.deceasedBoolean, deceasedDateTime: incoming.deceasedDateTime }
      : { deceasedBoolean: existing.deceasedBoolean, deceasedDateTime: existing.deceasedDateTime }),
    active: existing.active ?? true,
  };
}

function withLink(links: PatientLink[] | undefined, link: PatientLink): PatientLink[] {
  return [...(links ?? []).filter((l) => l.other?.reference !== link.other?.reference), link];
}
