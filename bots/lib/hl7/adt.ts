/**
 * ADT → the Patient to create or update (A01/A04/A08/A28/A31), or a merge (A40: PID survives,
 * MRG names the record to retire). Anything else is refused with a table-0357 code.
 */
import type { Hl7Message } from '@medplum/core';
import type { Identifier, Patient } from '@medplum/fhirtypes';
import type { Hl7Issue } from './issues.ts';
import { identifiersFromCxField, patientFromPid } from './pid.ts';
import type { PatientIdentityConfig } from './pid.ts';
import { component } from './segments.ts';

export type AdtEvent = 'A01' | 'A04' | 'A08' | 'A28' | 'A31' | 'A40';

const SUPPORTED: readonly string[] = ['A01', 'A04', 'A08', 'A28', 'A31', 'A40'];

export type AdtResult =
  | {
      ok: true;
      event: AdtEvent;
      patient: Patient;
      nationalId?: string;
      mrn?: string;
      merge?: { retired: Identifier[] };
      /** Warnings (severity W) found while mapping; the message is still accepted. */
      issues: Hl7Issue[];
    }
  | { ok: false; issues: Hl7Issue[] };

export function mapAdt(msg: Hl7Message, config: PatientIdentityConfig): AdtResult {
  const msh = msg.getSegment('MSH');
  if (!msh) {
    return fail({ segment: 'MSH', sequence: 1, code: '100', severity: 'E', reason: 'MSH segment missing' });
  }
  const charset = component(msh, 18);
  const type = component(msh, 9, 1).toUpperCase();
  if (type !== 'ADT') {
    return fail({ segment: 'MSH', sequence: 1, field: 9, component: 1, code: '200', severity: 'E', reason: `message type '${type}' is not ADT` });
  }
  // MSH-9.2 is the trigger; v2.2-era senders put it only in EVN-1.
  const evn = msg.getSegment('EVN');
  const event = (component(msh, 9, 2) || (evn ? component(evn, 1) : '')).toUpperCase();
  if (!SUPPORTED.includes(event)) {
    return fail({
      segment: 'MSH',
      sequence: 1,
      field: 9,
      component: 2,
      code: '201',
      severity: 'E',
      reason: event ? `ADT event '${event}' is not supported` : 'ADT trigger event missing',
    });
  }

  const pids = msg.getAllSegments('PID');
  if (pids.length === 0) {
    return fail({ segment: 'PID', sequence: 1, code: '100', severity: 'E', reason: 'PID segment missing' });
  }
  const mapped = patientFromPid(pids[0], config, { sequence: 1, charset });
  const issues = [...mapped.issues];

  let merge: { retired: Identifier[] } | undefined;
  if (event === 'A40') {
    const mrgs = msg.getAllSegments('MRG');
    if (mrgs.length === 0) {
      issues.push({ segment: 'MRG', sequence: 1, code: '100', severity: 'E', reason: 'A40 needs an MRG segment' });
    } else if (pids.length > 1 || mrgs.length > 1) {
      // Refused rather than half-applied: the sender can split the merges into one message each.
      const segment = pids.length > 1 ? 'PID' : 'MRG';
      issues.push({ segment, sequence: 2, code: '199', severity: 'E', reason: 'only one merge (PID + MRG) per A40 message is supported' });
    } else {
      const retired = dedupe([
        ...identifiersFromCxField(mrgs[0], 1, config, 'PID-3', charset),
        ...identifiersFromCxField(mrgs[0], 4, config, 'PID-2', charset),
      ]);
      const surviving = new Set((mapped.patient.identifier ?? []).filter((id) => id.system).map(key));
      if (retired.length === 0) {
        issues.push({ segment: 'MRG', sequence: 1, field: 1, code: '101', severity: 'E', reason: 'MRG-1 (prior patient identifier) is required' });
      } else if (retired.some((id) => id.system && surviving.has(key(id)))) {
        issues.push({ segment: 'MRG', sequence: 1, field: 1, code: '199', severity: 'E', reason: 'MRG-1 names the surviving patient itself' });
      } else {
        merge = { retired };
      }
    }
  }

  if (issues.some((i) => i.severity === 'E')) {
    return { ok: false, issues };
  }
  return {
    ok: true,
    event: event as AdtEvent,
    patient: mapped.patient,
    ...(mapped.nationalId ? { nationalId: mapped.nationalId } : {}),
    ...(mapped.mrn ? { mrn: mapped.mrn } : {}),
    ...(merge ? { merge } : {}),
    issues,
  };
}

function fail(issue: Hl7Issue): AdtResult {
  return { ok: false, issues: [issue] };
}

const key = (id: Identifier): string => `${id.system ?? ''}|${id.value ?? ''}`;

function dedupe(ids: Identifier[]): Identifier[] {
  const seen = new Set<string>();
  return ids.filter((id) => {
    const k = `${key(id)}|${id.type?.coding?.[0]?.code ?? ''}`;
    if (seen.has(k)) {
      return false;
    }
    seen.add(k);
    return true;
  });
}
