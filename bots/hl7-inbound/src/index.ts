/**
 * The HL7 inbound bot: the target of the agent's HL7 channels. It takes ORU^R01 lab results and
 * ADT patient events, writes everything of one message in one transaction together with the
 * message's log entry, and answers with the ACK:
 *
 * - AA: stored (for an unmatched patient with an ERR of severity W, code 204, and a Task);
 * - AE + ERR: the message is unusable as sent (segment, field and reason named); nothing stored;
 * - AR + ERR: unsupported message type/event (200/201), or the server failed (207: send again).
 *
 * A message already processed (same sender MSH-3/MSH-4 and control ID MSH-10) is answered with
 * the ACK it got then, and nothing is written but a log entry saying it was a duplicate.
 *
 * Reprocessing (the header x-ermis-reprocess, set by AuditEvent/$reprocess): the message is handled
 * again even though it was logged before, and a patient found now closes the earlier match Task.
 *
 * Settings (Project secrets, all optional): CY_ID_SYSTEM, MRN_SYSTEM, MRN_AUTHORITIES (comma list).
 * Imports only @medplum/core: it runs unchanged on a hosted Medplum.
 */
import { ContentType, Hl7Message, normalizeErrorString, OperationOutcomeError } from '@medplum/core';
import type { BotEvent, MedplumClient } from '@medplum/core';
import type { Bot, Bundle, BundleEntry, ProjectSetting, Reference } from '@medplum/fhirtypes';
import type { Hl7Issue } from '../../lib/hl7/issues.ts';
import { labProfileKeyFromMessage } from '../../lib/hl7/lab-profile.ts';
import { DEFAULT_IDENTITY } from '../../lib/hl7/pid.ts';
import type { PatientIdentityConfig } from '../../lib/hl7/pid.ts';
import { buildAck } from './ack.ts';
import type { AckCode } from './ack.ts';
import { planAdt } from './adt.ts';
import { contentHash, logEntries, previousHandling, writeLog } from './message-log.ts';
import type { LogContext, LoggedStatus } from './message-log.ts';
import { loadLabProfile, planOru } from './oru.ts';

const ADT_EVENTS = new Set(['A01', 'A04', 'A08', 'A28', 'A31', 'A40']);

export async function handler(medplum: MedplumClient, event: BotEvent): Promise<Hl7Message> {
  if (event.contentType !== ContentType.HL7_V2) {
    throw new Error(`Expected an HL7 v2 message (${ContentType.HL7_V2}), got ${event.contentType}`);
  }
  const text = event.input instanceof Hl7Message ? event.input.toString() : String(event.input);
  let msg: Hl7Message;
  try {
    msg = event.input instanceof Hl7Message ? event.input : Hl7Message.parse(text);
  } catch (err) {
    // Without a readable MSH there is nobody to address an ACK to; the agent answers such frames itself.
    throw new Error(`Not a parseable HL7 v2 message: ${normalizeErrorString(err)}`);
  }
  const msh = msg.getSegment('MSH');
  const messageCode = msh?.getComponent(9, 1) ?? '';
  const trigger = msh?.getComponent(9, 2) ?? '';
  const { application, facility } = labProfileKeyFromMessage(msg);
  const context: LogContext = {
    messageType: [messageCode, trigger].filter(Boolean).join('^') || 'unknown',
    controlId: msh?.getField(10)?.toString() ?? '',
    sender: `${application}|${facility}`,
    bot: event.bot as Reference<Bot>,
    agent: header(event, 'x-ermis-agent'),
    channel: header(event, 'x-ermis-channel'),
    remote: header(event, 'x-forwarded-for'),
  };
  if (!context.controlId) {
    return buildAck(msg, 'AR', 'MSH-10 (message control ID) is missing', [issue('MSH', 10, '101', 'MSH-10 is required')]);
  }

  // A reprocessing (AuditEvent/$reprocess of a failed or unmatched message) is not a duplicate.
  const reprocess = header(event, 'x-ermis-reprocess');
  const previous = reprocess ? undefined : await previousHandling(medplum, context);
  context.hash = await contentHash(text);
  if (previous && previous.hash && previous.hash !== context.hash) {
    // The same sender reused a control ID for other content (a counter reset): not a duplicate, not taken.
    return reject(medplum, msg, text, context, 'AE', [
      issue('MSH', 10, '205', `Control ID ${context.controlId} was already used by this sender for a different message`),
    ]);
  }
  if (previous) {
    await writeLog(medplum, { context, status: 'duplicate', ack: previous.ack, raw: previous.raw }, text).catch(() => undefined);
    return Hl7Message.parse(previous.ack);
  }

  const identity = identityConfig(event.secrets);
  if (messageCode === 'ORU' && trigger === 'R01') {
    const profile = await loadLabProfile(medplum, msg);
    context.lab = profile.organization;
    if (profile.nationalId) {
      identity.nationalIdField = profile.nationalId.field;
      if (profile.nationalId.field === 'PID-3') {
        identity.nationalIdTypes = [profile.nationalId.typeCode];
      }
    }
    const plan = await planOru(medplum, msg, profile, identity, reprocess !== undefined);
    if (!plan.ok) {
      return reject(medplum, msg, text, context, 'AE', plan.issues);
    }
    const note = plan.unmatched ? 'Accepted; patient not matched, kept for review' : 'Accepted';
    return commit(medplum, msg, text, context, plan.entries, plan.made, plan.patient, plan.unmatched ? 'unmatched' : 'processed', note, plan.warnings);
  }
  if (messageCode === 'ADT' && ADT_EVENTS.has(trigger)) {
    const plan = await planAdt(medplum, msg, identity);
    if (!plan.ok) {
      return reject(medplum, msg, text, context, 'AE', plan.issues);
    }
    return commit(medplum, msg, text, context, plan.entries, plan.made, plan.patient, 'processed', 'Accepted', plan.warnings);
  }
  const unsupported =
    messageCode === 'ADT' || messageCode === 'ORU'
      ? issue('MSH', 9, '201', `Event ${trigger || '(none)'} of ${messageCode} is not supported`, 2)
      : issue('MSH', 9, '200', `Message type ${messageCode || '(none)'} is not supported`, 1);
  return reject(medplum, msg, text, context, 'AR', [unsupported]);
}

/**
 * Writes the message's data and its log entry in one transaction: AA (with warnings); AE when the
 * server refuses the data as invalid; a retryable error when the server could not store it.
 */
async function commit(
  medplum: MedplumClient,
  msg: Hl7Message,
  text: string,
  context: LogContext,
  entries: BundleEntry[],
  made: { reference: string; role?: string }[],
  patient: string | undefined,
  status: LoggedStatus,
  note: string,
  warnings: Hl7Issue[]
): Promise<Hl7Message> {
  const ack = buildAck(msg, 'AA', note, warnings.filter((w) => w.severity === 'W'));
  const rawUrn = `urn:uuid:${crypto.randomUUID()}`;
  const bundle: Bundle = {
    resourceType: 'Bundle',
    type: 'transaction',
    entry: [...entries, ...logEntries({ context, status, ack: ack.toString(), patient, made }, text, rawUrn, `urn:uuid:${crypto.randomUUID()}`)],
  };
  try {
    await medplum.executeBatch(bundle);
  } catch (err) {
    // A conflict (another copy of this message committed first) is a duplicate, not an error.
    const again = await previousHandling(medplum, context).catch(() => undefined);
    if (again) {
      return Hl7Message.parse(again.ack);
    }
    // Content the server refuses (invalid data) needs a fixed message: AE, logged as failed.
    const code = err instanceof OperationOutcomeError ? err.outcome.issue?.[0]?.code : undefined;
    const invalid = code === 'invalid' || code === 'structure' || code === 'required' || code === 'value' || code === 'processing';
    if (invalid) {
      return reject(medplum, msg, text, context, 'AE', [
        { segment: 'MSH', sequence: 1, code: '207', severity: 'E', reason: `The results could not be stored: ${normalizeErrorString(err).slice(0, 300)}` },
      ]);
    }
    // Anything else (a timeout, the database away) may pass later: the agent keeps the message and
    // sends it again. Answering AR here would let it count as handled while nothing was kept.
    throw new Error(`${RETRY_MARKER} The results could not be stored: ${normalizeErrorString(err).slice(0, 300)}`);
  }
  return ack;
}

/** Tells the agent gateway that the failure is the server's, not the message's: try again later. */
const RETRY_MARKER = '[ermis:retry]';

/** An AE/AR ACK naming every problem; the message is logged as failed (reprocessable) and nothing else is written. */
async function reject(medplum: MedplumClient, msg: Hl7Message, text: string, context: LogContext, code: AckCode, issues: Hl7Issue[]): Promise<Hl7Message> {
  const errors = issues.length ? issues : [issue('MSH', 9, '207', 'The message could not be processed')];
  const ack = buildAck(msg, code, errors[0].reason, errors);
  try {
    await writeLog(medplum, { context, status: 'failed', ack: ack.toString(), error: errors.map((e) => e.reason).join('; ') }, text);
  } catch (err) {
    // Not even logged: the message must not count as handled.
    throw new Error(`${RETRY_MARKER} The message could not be logged: ${normalizeErrorString(err).slice(0, 300)}`);
  }
  return ack;
}

function issue(segment: string, field: number, code: Hl7Issue['code'], reason: string, component?: number): Hl7Issue {
  return { segment, sequence: 1, field, component, code, severity: 'E', reason };
}

function identityConfig(secrets: Record<string, ProjectSetting> | undefined): PatientIdentityConfig {
  const value = (name: string): string | undefined => secrets?.[name]?.valueString?.trim() || undefined;
  return {
    ...DEFAULT_IDENTITY,
    cyIdSystem: value('CY_ID_SYSTEM') ?? DEFAULT_IDENTITY.cyIdSystem,
    mrnSystem: value('MRN_SYSTEM') ?? DEFAULT_IDENTITY.mrnSystem,
    mrnAuthorities: value('MRN_AUTHORITIES')?.split(',').map((s) => s.trim()).filter(Boolean) ?? DEFAULT_IDENTITY.mrnAuthorities,
    nationalIdTypes: [...DEFAULT_IDENTITY.nationalIdTypes],
  };
}

function header(event: BotEvent, name: string): string | undefined {
  const value = event.headers?.[name];
  return Array.isArray(value) ? value[0] : value;
}
