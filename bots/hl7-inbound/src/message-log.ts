/**
 * The message log entry of an inbound message (docs/decisions/0011-hl7-message-log.md): an
 * AuditEvent with the raw text in a Binary. Searchable by message type and status (`subtype`),
 * control ID (`entity-name`), sender (`agent-name`, and `agent` when the lab is known), patient
 * (`entity` / `patient`), and the resources made (`entity`). The ACK sent is kept on the raw
 * message's entity (`detail` "ack").
 */
import type { MedplumClient } from '@medplum/core';
import type { AuditEvent, AuditEventAgent, AuditEventEntity, Bot, Bundle, BundleEntry, Organization, Reference } from '@medplum/fhirtypes';
import { MESSAGE_STATUS_SYSTEM, MESSAGE_TYPE_SYSTEM } from '../../lib/hl7/systems.ts';

export type LoggedStatus = 'processed' | 'failed' | 'unmatched' | 'duplicate';

const DCM = 'http://dicom.nema.org/resources/ontology/DCM';
const ENTITY_TYPE = 'http://terminology.hl7.org/CodeSystem/audit-entity-type';
const OBJECT_ROLE = 'http://terminology.hl7.org/CodeSystem/object-role';
export const HL7_CONTENT_TYPE = 'x-application/hl7-v2+er7';

export interface LogContext {
  messageType: string;
  controlId: string;
  /** `MSH-3|MSH-4` — control IDs are unique per sender only. */
  sender: string;
  lab?: Reference<Organization>;
  bot: Reference<Bot>;
  /** The agent and channel the message came through (headers the gateway sets), when known. */
  agent?: string;
  channel?: string;
  remote?: string;
  /** contentHash() of the message: tells a resend from a different message under a reused control ID. */
  hash?: string;
}

export interface LogEntryInput {
  context: LogContext;
  status: LoggedStatus;
  ack: string;
  /** Reference (or urn:uuid in a transaction) of the Binary with the raw message. */
  raw: string;
  patient?: string;
  /** References (or urn:uuids) of the resources made or changed. */
  made?: { reference: string; role?: string }[];
  error?: string;
}

/**
 * FHIR strings may not hold control characters (a sender's MSH can: a fuzzed or broken LIS): they
 * become spaces in the log, or the entry could never be stored and the message would come back
 * forever.
 */
export function clean(text: string): string {
  return text.replace(/[\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F]/g, ' ').toWellFormed();
}

/** A code has no whitespace: anything unexpected in a message type becomes `_`. */
function codeOf(text: string): string {
  return text.replace(/[^\w^.-]/g, '_') || 'unknown';
}

export function logEntry(input: LogEntryInput, now = new Date()): AuditEvent {
  const context: LogContext = { ...input.context, sender: clean(input.context.sender), controlId: clean(input.context.controlId), messageType: codeOf(input.context.messageType) };
  const sender: AuditEventAgent = { name: context.sender, requestor: true, who: context.lab ?? { display: context.sender } };
  if (context.remote) {
    sender.network = { address: context.remote, type: '2' };
  }
  const entity: AuditEventEntity[] = [
    {
      what: { reference: input.raw },
      type: { system: ENTITY_TYPE, code: '2', display: 'System Object' },
      role: { system: OBJECT_ROLE, code: '20', display: 'Job' },
      name: context.controlId,
      description: 'HL7 v2 message',
      detail: [{ type: 'ack', valueString: clean(input.ack) }, ...(context.hash ? [{ type: 'sha256', valueString: context.hash }] : [])],
    },
  ];
  if (input.patient) {
    entity.push({ what: { reference: input.patient }, type: { system: ENTITY_TYPE, code: '1', display: 'Person' }, role: { system: OBJECT_ROLE, code: '1', display: 'Patient' } });
  }
  for (const made of input.made ?? []) {
    entity.push({ what: { reference: made.reference }, role: { system: OBJECT_ROLE, code: made.role ?? '4', display: 'Domain Resource' } });
  }
  return {
    resourceType: 'AuditEvent',
    type: { system: DCM, code: '110107', display: 'Import' },
    subtype: [
      { system: MESSAGE_TYPE_SYSTEM, code: context.messageType },
      { system: MESSAGE_STATUS_SYSTEM, code: input.status },
    ],
    action: 'C',
    recorded: now.toISOString(),
    outcome: input.status === 'failed' ? '8' : '0',
    outcomeDesc: input.error === undefined ? undefined : clean(input.error).slice(0, 1000),
    agent: [sender, { who: context.bot, requestor: false }],
    source: { observer: context.agent ? { reference: context.agent } : { display: 'ermis hl7-inbound bot' }, site: context.channel },
    entity,
  };
}

/** Transaction entries that store the raw message and its log entry (the raw Binary under `rawUrn`). */
export function logEntries(input: Omit<LogEntryInput, 'raw'>, rawText: string, rawUrn: string, logUrn: string): BundleEntry[] {
  return [
    {
      fullUrl: rawUrn,
      resource: { resourceType: 'Binary', contentType: HL7_CONTENT_TYPE, data: base64(rawText) },
      request: { method: 'POST', url: 'Binary' },
    },
    { fullUrl: logUrn, resource: logEntry({ ...input, raw: rawUrn }), request: { method: 'POST', url: 'AuditEvent' } },
  ];
}

/** Writes a log entry outside any transaction (failed and duplicate messages). */
export async function writeLog(medplum: MedplumClient, input: Omit<LogEntryInput, 'raw'> & { raw?: string }, rawText: string): Promise<void> {
  const bundle: Bundle = {
    resourceType: 'Bundle',
    type: 'transaction',
    entry: input.raw
      ? [{ resource: logEntry({ ...input, raw: input.raw }), request: { method: 'POST', url: 'AuditEvent' } }]
      : logEntries(input, rawText, 'urn:uuid:' + crypto.randomUUID(), 'urn:uuid:' + crypto.randomUUID()),
  };
  await medplum.executeBatch(bundle);
}

/**
 * The earlier handling of the same message (same sender and control ID) that counts: processed or
 * unmatched (its data is stored). Failed attempts do not count — the message may be sent again.
 */
export async function previousHandling(medplum: MedplumClient, context: LogContext): Promise<{ ack: string; raw?: string; hash?: string } | undefined> {
  const found = await medplum.searchResources('AuditEvent', {
    'entity-name:exact': escapeSearchValue(clean(context.controlId)),
    'agent-name:exact': escapeSearchValue(clean(context.sender)),
    subtype: `${MESSAGE_STATUS_SYSTEM}|processed,${MESSAGE_STATUS_SYSTEM}|unmatched`,
    _count: '1',
    _sort: '-date',
  });
  const entry = found[0];
  const rawEntity = entry?.entity?.find((e) => e.what?.reference?.startsWith('Binary/'));
  const ack = rawEntity?.detail?.find((d) => d.type === 'ack')?.valueString;
  const hash = rawEntity?.detail?.find((d) => d.type === 'sha256')?.valueString;
  return entry && ack ? { ack, raw: rawEntity?.what?.reference, hash } : undefined;
}

/**
 * SHA-256 of the message without its MSH segment (a sender's resend may carry a new MSH-7), as hex.
 */
export async function contentHash(text: string): Promise<string> {
  const body = text.split(/\r\n|\r|\n/).slice(1).join('\r');
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(body)));
  return [...digest].map((b) => b.toString(16).padStart(2, '0')).join('');
}

/** FHIR search escaping: a comma would split the value into alternatives (senders do have commas in their names). */
export function escapeSearchValue(value: string): string {
  return value.replace(/[\\,$]/g, (c) => `\\${c}`);
}

function base64(text: string): string {
  const bytes = new TextEncoder().encode(text);
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}
