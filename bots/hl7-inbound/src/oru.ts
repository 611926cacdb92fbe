/**
 * ORU^R01 → one transaction: per report the DiagnosticReport, its Observations and Specimens
 * (each upserted by its business identifier, so that a corrected result replaces the earlier
 * one, a cancelled one marks it, and a resend with a new control ID changes nothing), the
 * ServiceRequest it answers (found by placer/filler number), the patient (matched, or a Task for
 * a person when no match is certain), a Flag plus a Communication or Task for each critical
 * value, and the message log entry.
 */
import { getReferenceString } from '@medplum/core';
import type { Hl7Message, MedplumClient, WithId } from '@medplum/core';
import type {
  BundleEntry,
  Communication,
  ConceptMap,
  DiagnosticReport,
  Flag,
  Identifier,
  Observation,
  ObservationDefinition,
  Organization,
  Patient,
  Reference,
  ServiceRequest,
  Task,
} from '@medplum/fhirtypes';
import type { Hl7Issue } from '../../lib/hl7/issues.ts';
import { emptyLabProfile, HL7_SENDER_SYSTEM, labProfileFromResources, labProfileKeyFromMessage, observationDefinitionSystem } from '../../lib/hl7/lab-profile.ts';
import type { LabProfile } from '../../lib/hl7/lab-profile.ts';
import { mapOru } from '../../lib/hl7/oru.ts';
import type { MappedReport } from '../../lib/hl7/oru.ts';
import { patientFromPid } from '../../lib/hl7/pid.ts';
import type { PatientIdentityConfig } from '../../lib/hl7/pid.ts';
import { fillerOrderSystem, labResultSystem, PLACER_ORDER_SYSTEM, specimenSystem } from '../../lib/hl7/systems.ts';
import { ERMIS_TASK_SYSTEM, findPatient } from './patients.ts';
import type { PatientMatch } from './patients.ts';

export interface OruPlan {
  ok: true;
  entries: BundleEntry[];
  /** The resources made, for the log (urn:uuid fullUrls or conditional targets). */
  made: { reference: string; role?: string }[];
  patient?: string;
  unmatched: boolean;
  warnings: Hl7Issue[];
  lab?: Reference<Organization>;
}

/**
 * Lab profiles read in the last minute, by sending application and facility. The bot's process is
 * kept warm between messages (decision 0012), so a busy interface reads its lab's Organization,
 * ConceptMap and ObservationDefinitions once a minute instead of three requests per message; a
 * profile edited meanwhile applies within that minute.
 */
const PROFILE_TTL_MS = 60_000;
const profiles = new Map<string, { profile: LabProfile; expires: number }>();

/** The lab's profile, found by the sending facility (MSH-4); an unknown lab gets an empty one keyed by it. */
export async function loadLabProfile(medplum: MedplumClient, msg: Hl7Message): Promise<LabProfile> {
  const key = JSON.stringify(labProfileKeyFromMessage(msg));
  const cached = profiles.get(key);
  if (cached && cached.expires > Date.now()) {
    return cached.profile;
  }
  const profile = await readLabProfile(medplum, msg);
  if (profiles.size > 100) {
    profiles.clear();
  }
  profiles.set(key, { profile, expires: Date.now() + PROFILE_TTL_MS });
  return profile;
}

async function readLabProfile(medplum: MedplumClient, msg: Hl7Message): Promise<LabProfile> {
  const { application, facility } = labProfileKeyFromMessage(msg);
  const orgs = facility ? await medplum.searchResources('Organization', { identifier: `${HL7_SENDER_SYSTEM}|${facility}`, _count: '2' }) : [];
  const org = orgs.length === 1 ? orgs[0] : undefined;
  if (!org) {
    return emptyLabProfile(unknownLabKey(facility || application));
  }
  // The Organization alone gives the key and the ConceptMap's URL; then the mappings are read.
  const settings = labProfileFromResources(org, [], []);
  const [maps, definitions] = await Promise.all([
    settings.conceptMapUrl ? medplum.searchResources('ConceptMap', { url: settings.conceptMapUrl, _count: '5' }) : Promise.resolve([] as WithId<ConceptMap>[]),
    medplum.searchResources('ObservationDefinition', { _tag: `${observationDefinitionSystem(settings.key)}|`, _count: '1000' }) as Promise<WithId<ObservationDefinition>[]>,
  ]);
  return labProfileFromResources(org, maps, definitions);
}

export async function planOru(
  medplum: MedplumClient,
  msg: Hl7Message,
  profile: LabProfile,
  identity: PatientIdentityConfig,
  reprocess = false
): Promise<OruPlan | { ok: false; issues: Hl7Issue[] }> {
  const mapped = mapOru(msg, profile);
  if (!mapped.ok) {
    return { ok: false, issues: mapped.issues };
  }
  const { mapping } = mapped;
  const entries: BundleEntry[] = [];
  const made: { reference: string; role?: string }[] = [];
  const warnings = [...mapping.warnings];
  let unmatched = false;
  let firstPatient: string | undefined;
  const patients = new Map<number, PatientMatch>();
  const charset = msg.getSegment('MSH')?.getField(18)?.toString();

  // Several OBRs under one accession number would land on one DiagnosticReport: key those by filler + OBR-4.
  const fillerCount = new Map<string, number>();
  for (const report of mapping.reports) {
    fillerCount.set(report.filler, (fillerCount.get(report.filler) ?? 0) + 1);
  }
  const followUps: FollowUp[] = [];
  for (const report of mapping.reports) {
    const reportKey =
      (fillerCount.get(report.filler) ?? 0) > 1 ? `${report.filler}|${report.report.code?.coding?.[0]?.code ?? report.report.code?.text ?? ''}` : report.filler;
    let match = patients.get(report.pidSegmentIndex);
    if (!match) {
      const pid = report.pidSegmentIndex >= 0 ? msg.segments[report.pidSegmentIndex] : undefined;
      if (!pid) {
        return { ok: false, issues: [{ segment: 'PID', sequence: 1, code: '100', severity: 'E', reason: 'No PID segment before the order' }] };
      }
      const sequence = msg.segments.slice(0, report.pidSegmentIndex + 1).filter((s) => s.name === 'PID').length;
      const fromPid = patientFromPid(pid, identity, { sequence, charset });
      // A result without patient identifiers is still a result: kept unmatched, for a person to link.
      const issues = fromPid.issues.map((i): Hl7Issue => (i.segment === 'PID' && i.field === 3 && i.code === '101' ? { ...i, severity: 'W' } : i));
      const errors = issues.filter((i) => i.severity === 'E');
      if (errors.length) {
        return { ok: false, issues: errors };
      }
      warnings.push(...issues);
      match = await findPatient(medplum, fromPid.patient, identity);
      patients.set(report.pidSegmentIndex, match);
      if (!match.patient) {
        warnings.push({
          segment: 'PID',
          sequence,
          field: 3,
          code: '204',
          severity: 'W',
          reason: match.candidates.length ? `Patient not matched (${match.candidates.length} possible); kept for review` : 'Patient not found; result kept for review',
        });
      }
    }
    const reportId = await stableId('DiagnosticReport', fillerOrderSystem(profile.key), reportKey);
    let subject: Reference<Patient> | undefined = match.patient ? { reference: getReferenceString(match.patient) } : undefined;
    if (!subject) {
      // A later message for a report already filed under a patient (a correction after a merge, say)
      // must not take it out of that patient's chart.
      subject = (await medplum.searchOne('DiagnosticReport', { _id: reportId }))?.subject as Reference<Patient> | undefined;
    }
    firstPatient ??= subject?.reference;
    const order = await findOrder(medplum, report, profile);
    const plan = await reportEntries(medplum, report, reportKey, profile, subject, order);
    entries.push(...plan.entries);
    made.push(...plan.made);
    if (match.patient && reprocess) {
      entries.push(...(await closeMatchTasks(medplum, plan.reportUrn, subject as Reference<Patient>)));
    }
    if (!subject) {
      unmatched = true;
      followUps.push({ kind: 'create', entry: await unmatchedTask(match, plan.reportUrn, reportKey, report, profile) });
    }
    for (const result of plan.results) {
      followUps.push(...(await criticalFollowUps(result, subject, order, profile)));
    }
  }
  for (const entry of await pendingFollowUps(medplum, followUps)) {
    entries.push(entry);
    made.push({ reference: entry.request?.url as string });
  }
  return { ok: true, entries, made, patient: firstPatient, unmatched, warnings, lab: profile.organization };
}

interface ResultPlan {
  key: string;
  observationUrn: string;
  observation: Observation;
  /** Why the result is critical; undefined when it is not (or no longer, or cancelled). */
  critical?: string;
}

interface ReportPlan {
  entries: BundleEntry[];
  made: { reference: string; role?: string }[];
  reportUrn: string;
  results: ResultPlan[];
}

/** Follow-ups (Tasks, Flags, Communications) live at ids derived from what they are about. */
interface FollowUp {
  /** create: only if not there yet (a person may have worked on it); inactivate: a Flag that no longer applies. */
  kind: 'create' | 'inactivate';
  entry: BundleEntry;
}

async function reportEntries(
  medplum: MedplumClient,
  report: MappedReport,
  reportKey: string,
  profile: LabProfile,
  subject: Reference<Patient> | undefined,
  order: WithId<ServiceRequest> | undefined
): Promise<ReportPlan> {
  const entries: BundleEntry[] = [];
  const made: { reference: string; role?: string }[] = [];
  const results: ResultPlan[] = [];
  const performer = profile.organization ? [profile.organization] : undefined;
  const specimenUrns: string[] = [];
  for (const { key, specimen } of report.specimens) {
    const entry = await upsert({ ...specimen, subject }, 'Specimen', { system: specimenSystem(profile.key), value: key });
    entries.push(entry);
    made.push({ reference: entry.request?.url as string });
    specimenUrns.push(entry.request?.url as string);
  }
  const resultRefs: Reference<Observation>[] = [];
  const ids = await Promise.all(report.results.map((r) => stableId('Observation', labResultSystem(profile.key), r.key)));
  const reportUrn = `DiagnosticReport/${await stableId('DiagnosticReport', fillerOrderSystem(profile.key), reportKey)}`;
  const stored = await storedVersions(medplum, ids, reportUrn);
  for (const [index, result] of report.results.entries()) {
    const urn = `Observation/${ids[index]}`;
    const before = stored.observations.get(ids[index]);
    if (before && FINAL_STATUSES.has(before.status) && result.observation.status === 'preliminary') {
      // A preliminary result arriving after the final one (a late resend): the final one stays.
      resultRefs.push({ reference: urn });
      continue;
    }
    const observation: Observation = {
      ...statusOnlyUpdate(result.observation, before),
      subject,
      basedOn: order ? [{ reference: getReferenceString(order) }] : undefined,
      performer: result.observation.performer ?? performer,
    };
    if (result.specimenIndex !== undefined && specimenUrns[result.specimenIndex]) {
      observation.specimen = { reference: specimenUrns[result.specimenIndex] };
    } else if (specimenUrns.length === 1) {
      observation.specimen = { reference: specimenUrns[0] };
    }
    entries.push(await upsert(observation, 'Observation', { system: labResultSystem(profile.key), value: result.key }));
    made.push({ reference: urn });
    resultRefs.push({ reference: urn });
    // A cancelled or withdrawn result raises no alarm (and ends one it raised before).
    const withdrawn = observation.status === 'cancelled' || observation.status === 'entered-in-error';
    results.push({ key: result.key, observationUrn: urn, observation, critical: withdrawn ? undefined : result.critical?.reason });
  }
  // A report sent in parts (some OBX now, others later) keeps the results it already has.
  const earlierResults = (stored.report?.result ?? []).filter((r) => !resultRefs.some((n) => n.reference === r.reference));
  const allResults = [...earlierResults, ...resultRefs];
  const diagnosticReport: DiagnosticReport = {
    ...report.report,
    subject,
    basedOn: order ? [{ reference: getReferenceString(order) }] : report.report.basedOn,
    performer: report.report.performer ?? performer,
    result: allResults.length ? allResults : undefined,
    specimen: specimenUrns.length ? specimenUrns.map((reference) => ({ reference })) : undefined,
    conclusion: [report.report.conclusion, ...report.orderNotes].filter(Boolean).join('\n') || undefined,
  };
  entries.push(await upsert(diagnosticReport, 'DiagnosticReport', { system: fillerOrderSystem(profile.key), value: reportKey }));
  made.push({ reference: reportUrn });
  return { entries, made, reportUrn, results };
}

const FINAL_STATUSES = new Set(['final', 'amended', 'corrected']);

/** What is stored under the ids this message will write (one search per type). */
async function storedVersions(medplum: MedplumClient, observationIds: string[], reportRef: string): Promise<{ observations: Map<string, Observation>; report?: DiagnosticReport }> {
  const [observations, reports] = await Promise.all([
    observationIds.length
      ? medplum.searchResources('Observation', { _id: observationIds.join(','), _count: String(observationIds.length) }, { cache: 'no-cache' })
      : Promise.resolve([] as WithId<Observation>[]),
    medplum.searchResources('DiagnosticReport', { _id: reportRef.slice('DiagnosticReport/'.length) }, { cache: 'no-cache' }),
  ]);
  return { observations: new Map(observations.map((o) => [o.id, o])), report: reports[0] };
}

/**
 * A result that carries only a status (OBX-11 U "final, value not resent", D/W withdrawn, with an
 * empty OBX-5) changes the status of the stored result, not its value.
 */
function statusOnlyUpdate(incoming: Observation, before: Observation | undefined): Observation {
  const hasValue = Object.keys(incoming).some((k) => k.startsWith('value'));
  const beforeValue = before ? Object.entries(before).filter(([k]) => k.startsWith('value')) : [];
  if (hasValue || !before || beforeValue.length === 0 || incoming.status === 'cancelled') {
    return incoming;
  }
  const { dataAbsentReason: _absent, ...rest } = incoming;
  return { ...rest, ...Object.fromEntries(beforeValue), referenceRange: incoming.referenceRange ?? before.referenceRange };
}

/**
 * An update-as-create at an id derived from the business identifier: the first message creates the
 * resource, later ones (a correction, a cancellation, a resend with a new control ID) replace it.
 * Not a conditional update: those make Medplum's router demand serializable transactions of at most
 * 8 entries, and an id that follows from the key is as safe against two copies racing.
 */
async function upsert<T extends { resourceType: string; identifier?: Identifier[] }>(resource: T, type: string, key: Identifier): Promise<BundleEntry> {
  const identifier = [...(resource.identifier ?? []).filter((i) => !(i.system === key.system && i.value === key.value)), key];
  const id = await stableId(type, key.system as string, key.value as string);
  return {
    resource: { ...resource, id, identifier } as unknown as BundleEntry['resource'],
    request: { method: 'PUT', url: `${type}/${id}` },
  };
}

/** A UUID-shaped id from SHA-256 of the type and business identifier (the same key gives the same id). */
export async function stableId(type: string, system: string, value: string): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(`${type}|${system}|${value}`)));
  digest[6] = (digest[6] & 0x0f) | 0x80; // version 8: a custom, name-based UUID
  digest[8] = (digest[8] & 0x3f) | 0x80;
  const hex = [...digest.subarray(0, 16)].map((b) => b.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
}

/** The order a report answers: by placer order number, or by the lab's filler number when the order carries it. */
async function findOrder(medplum: MedplumClient, report: MappedReport, profile: LabProfile): Promise<WithId<ServiceRequest> | undefined> {
  const identifiers = [
    report.placer ? `${PLACER_ORDER_SYSTEM}|${report.placer}` : undefined,
    report.filler.startsWith('PLAC:') ? undefined : `${fillerOrderSystem(profile.key)}|${report.filler}`,
  ].filter((x): x is string => !!x);
  if (!identifiers.length) {
    return undefined;
  }
  const found = await medplum.searchResources('ServiceRequest', { identifier: identifiers.join(','), _count: '2' });
  return found.length === 1 ? found[0] : undefined;
}

async function unmatchedTask(match: PatientMatch, reportRef: string, reportKey: string, report: MappedReport, profile: LabProfile): Promise<BundleEntry<Task>> {
  const id = await stableId('Task', 'match-patient', `${profile.key}|${reportKey}`);
  const pidPatient: Patient = { ...match.fromPid, id: 'pid' };
  return {
    resource: {
      resourceType: 'Task',
      id,
      status: 'requested',
      intent: 'order',
      priority: 'urgent',
      code: { coding: [{ system: ERMIS_TASK_SYSTEM, code: 'match-patient', display: 'Match the patient of a lab result' }] },
      description: `Lab result ${report.filler} from ${profile.name ?? profile.key}: the patient could not be matched${
        match.candidates.length ? ` (${match.candidates.length} possible matches)` : ''
      }. Link the report to the right patient.`,
      focus: { reference: reportRef },
      contained: [pidPatient],
      input: [
        { type: { text: 'patient as sent' }, valueReference: { reference: '#pid' } },
        ...match.candidates.map((c) => ({ type: { text: 'candidate' }, valueReference: { reference: getReferenceString(c) } })),
      ],
      authoredOn: new Date().toISOString(),
    },
    request: { method: 'PUT', url: `Task/${id}` },
  };
}

/** The open match-patient Tasks of an earlier, unmatched handling of this report: done now. */
async function closeMatchTasks(medplum: MedplumClient, reportRef: string, subject: Reference<Patient>): Promise<BundleEntry[]> {
  const tasks = await medplum.searchResources('Task', { focus: reportRef, code: `${ERMIS_TASK_SYSTEM}|match-patient`, status: 'requested' });
  return tasks.map((task) => ({
    resource: { ...task, status: 'completed', for: subject, lastModified: new Date().toISOString() } as Task,
    request: { method: 'PUT', url: getReferenceString(task), ifMatch: `W/"${task.meta?.versionId}"` },
  }));
}

/**
 * The follow-ups still to write: new ones that are not there yet (one search per type by id), and
 * inactivations of Flags that are there and active.
 */
async function pendingFollowUps(medplum: MedplumClient, followUps: FollowUp[]): Promise<BundleEntry[]> {
  const byType = new Map<string, FollowUp[]>();
  for (const f of followUps) {
    const type = (f.entry.resource as { resourceType: string }).resourceType;
    byType.set(type, [...(byType.get(type) ?? []), f]);
  }
  const out: BundleEntry[] = [];
  for (const [type, list] of byType) {
    const ids = list.map((f) => (f.entry.resource as { id: string }).id);
    const existing = new Map(
      (await medplum.searchResources(type as 'Flag', { _id: ids.join(','), _count: String(ids.length) }, { cache: 'no-cache' })).map((r) => [r.id, r])
    );
    for (const f of list) {
      const id = (f.entry.resource as { id: string }).id;
      const stored = existing.get(id) as Flag | undefined;
      if (f.kind === 'create' && !stored) {
        out.push(f.entry);
      } else if (f.kind === 'inactivate' && stored && stored.status === 'active') {
        out.push({
          resource: { ...stored, status: 'inactive', period: { ...stored.period, end: new Date().toISOString() } },
          request: { method: 'PUT', url: `Flag/${id}`, ifMatch: `W/"${stored.meta?.versionId}"` },
        });
      }
    }
  }
  return out;
}

/**
 * For a critical result: a Flag on the patient and a Communication to the ordering practitioner (or
 * a Task when no order names one), created once. For a result that is not (or no longer) critical:
 * its Flag, if one was raised, made inactive.
 */
async function criticalFollowUps(
  result: ResultPlan,
  subject: Reference<Patient> | undefined,
  order: WithId<ServiceRequest> | undefined,
  profile: LabProfile
): Promise<FollowUp[]> {
  const flagId = await stableId('Flag', labResultSystem(profile.key), result.key);
  if (!result.critical) {
    // Only its id matters: the stored Flag is read and written back inactive (pendingFollowUps).
    return [{ kind: 'inactivate', entry: { resource: { resourceType: 'Flag', id: flagId, status: 'inactive', code: {}, subject: {} }, request: { method: 'PUT', url: `Flag/${flagId}` } } }];
  }
  const code = result.observation.code?.text ?? result.observation.code?.coding?.[0]?.display ?? result.observation.code?.coding?.[0]?.code ?? 'result';
  const text = `Critical lab value: ${code} — ${result.critical}`;
  const followUps: FollowUp[] = [];
  if (subject) {
    const flag: Flag = {
      resourceType: 'Flag',
      id: flagId,
      status: 'active',
      category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/flag-category', code: 'clinical', display: 'Clinical' }] }],
      code: { text },
      subject,
      period: { start: new Date().toISOString() },
      author: profile.organization,
      extension: [{ url: `${ERMIS_TASK_SYSTEM}/critical-result`, valueReference: { reference: result.observationUrn } }],
    };
    followUps.push({ kind: 'create', entry: { resource: flag, request: { method: 'PUT', url: `Flag/${flagId}` } } });
  }
  const requester = order?.requester;
  if (requester) {
    const id = await stableId('Communication', labResultSystem(profile.key), result.key);
    const communication: Communication = {
      resourceType: 'Communication',
      id,
      status: 'completed',
      priority: 'stat',
      category: [{ text: 'critical-result' }],
      subject,
      about: [{ reference: result.observationUrn }],
      recipient: [requester],
      sender: profile.organization,
      sent: new Date().toISOString(),
      payload: [{ contentString: text }],
    };
    followUps.push({ kind: 'create', entry: { resource: communication, request: { method: 'PUT', url: `Communication/${id}` } } });
  } else {
    const id = await stableId('Task', `review-critical-result|${labResultSystem(profile.key)}`, result.key);
    const task: Task = {
      resourceType: 'Task',
      id,
      status: 'requested',
      intent: 'order',
      priority: 'stat',
      code: { coding: [{ system: ERMIS_TASK_SYSTEM, code: 'review-critical-result', display: 'Review a critical lab result' }] },
      description: `${text}. No ordering practitioner is known: tell the patient's clinician.`,
      focus: { reference: result.observationUrn },
      for: subject,
      authoredOn: new Date().toISOString(),
    };
    followUps.push({ kind: 'create', entry: { resource: task, request: { method: 'PUT', url: `Task/${id}` } } });
  }
  return followUps;
}


/** The profile key of a sender with no lab profile: its sending facility (or application), as a slug. */
export function unknownLabKey(sender: string): string {
  return sender.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '') || 'unknown';
}
