import { badRequest, getReferenceString, OperationOutcomeError } from '@medplum/core';
import type { WithId } from '@medplum/core';
import type { Agent, AuditEvent, AuditEventEntity, Binary, Bot, Reference } from '@medplum/fhirtypes';
import type { AuthServices } from '../auth/service.ts';

/*
 * The HL7 message log is FHIR (docs/decisions/0011-hl7-message-log.md): one AuditEvent per message
 * with the raw text in a Binary. The inbound bot writes the entries of the messages it handles
 * (in the same transaction as their data); the server writes those it must itself: inbound
 * messages whose bot failed (so they can be reprocessed) and outbound messages (Agent/$push).
 * Both sides use the same codes, listed here.
 */
const ERMIS = 'https://ermis.health/fhir';
export const MESSAGE_TYPE_SYSTEM = `${ERMIS}/CodeSystem/hl7-message-type`;
export const MESSAGE_STATUS_SYSTEM = `${ERMIS}/CodeSystem/hl7-message-status`;
const DCM = 'http://dicom.nema.org/resources/ontology/DCM';
const ENTITY_TYPE = 'http://terminology.hl7.org/CodeSystem/audit-entity-type';
const OBJECT_ROLE = 'http://terminology.hl7.org/CodeSystem/object-role';
const HL7_CONTENT_TYPE = 'x-application/hl7-v2+er7';

export type MessageStatus = 'received' | 'processed' | 'failed' | 'unmatched' | 'duplicate' | 'reprocessed' | 'sent';

/** What the log needs to know of a message without parsing it fully (MSH is plain text). */
export interface MessageHeader {
  type: string;
  controlId: string;
  sender: string;
}

/** FHIR strings may not hold control characters; a broken sender's MSH can. */
function clean(text: string): string {
  return text.replace(/[\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F]/g, ' ').toWellFormed();
}

export function readHeader(text: string): MessageHeader {
  const msh = text.split(/\r\n|\r|\n/)[0] ?? '';
  const fs = msh.charAt(3) || '|';
  const fields = msh.split(fs);
  const cs = fields[1]?.charAt(0) || '^';
  // fields[0] is "MSH", so MSH-n is fields[n - 1].
  const type = (fields[8] ?? '').split(cs).slice(0, 2).filter(Boolean).join('^');
  const app = (fields[2] ?? '').split(cs)[0] ?? '';
  const facility = (fields[3] ?? '').split(cs)[0] ?? '';
  return { type: type.replace(/[^\w^.-]/g, '_') || 'unknown', controlId: clean(fields[9] ?? ''), sender: clean(`${app}|${facility}`) };
}

export class MessageLog {
  private readonly auth: AuthServices;

  constructor(auth: AuthServices) {
    this.auth = auth;
  }

  /** An inbound message whose bot did not answer (it threw, timed out, crashed): kept so it can be reprocessed. */
  async recordFailedInbound(entry: {
    projectId: string;
    agent: WithId<Agent>;
    bot: WithId<Bot>;
    channel: string | undefined;
    remote: string | undefined;
    contentType: string;
    body: string;
    error: string;
  }): Promise<WithId<AuditEvent>> {
    const repo = this.auth.directory.repo(entry.projectId);
    const raw = await repo.createBinary(entry.contentType, Buffer.from(entry.body, 'utf8'));
    const header = readHeader(entry.body);
    return repo.createResource<AuditEvent>({
      resourceType: 'AuditEvent',
      type: { system: DCM, code: '110107', display: 'Import' },
      subtype: [
        { system: MESSAGE_TYPE_SYSTEM, code: header.type },
        { system: MESSAGE_STATUS_SYSTEM, code: 'failed' },
      ],
      action: 'C',
      recorded: new Date().toISOString(),
      outcome: '8',
      outcomeDesc: clean(entry.error).slice(0, 1000),
      agent: [
        { name: header.sender, requestor: true, who: { display: header.sender }, network: entry.remote ? { address: entry.remote, type: '2' } : undefined },
        { who: { reference: getReferenceString(entry.bot), display: entry.bot.name }, requestor: false },
      ],
      source: { observer: { reference: getReferenceString(entry.agent), display: entry.agent.name }, site: entry.channel },
      entity: [rawEntity(raw, header.controlId)],
    });
  }

  /** An outbound message sent by Agent/$push, with the answer the destination gave (or why none came). */
  async recordOutbound(entry: {
    projectId: string;
    agent: WithId<Agent>;
    destination: string;
    requester: Reference;
    contentType: string;
    body: string;
    response: string | undefined;
    error: string | undefined;
  }): Promise<WithId<AuditEvent>> {
    const repo = this.auth.directory.repo(entry.projectId);
    const raw = await repo.createBinary(entry.contentType, Buffer.from(entry.body, 'utf8'));
    const header = readHeader(entry.body);
    const entity = rawEntity(raw, header.controlId);
    if (entry.response) {
      entity.detail = [{ type: 'ack', valueString: clean(entry.response) }];
    }
    return repo.createResource<AuditEvent>({
      resourceType: 'AuditEvent',
      type: { system: DCM, code: '110106', display: 'Export' },
      subtype: [
        { system: MESSAGE_TYPE_SYSTEM, code: header.type },
        { system: MESSAGE_STATUS_SYSTEM, code: entry.error ? 'failed' : 'sent' },
      ],
      action: 'C',
      recorded: new Date().toISOString(),
      outcome: entry.error ? '8' : '0',
      outcomeDesc: entry.error?.slice(0, 1000),
      agent: [
        { who: { reference: entry.requester.reference, display: entry.requester.display }, requestor: true },
        { name: entry.destination, requestor: false, who: { display: entry.destination } },
      ],
      source: { observer: { reference: getReferenceString(entry.agent), display: entry.agent.name } },
      entity: [entity],
    });
  }

  /**
   * The raw message and the bot of a logged inbound message, for reprocessing. Only messages whose
   * handling failed may be reprocessed (a processed one would be a duplicate).
   */
  async forReprocessing(projectId: string, auditEvent: WithId<AuditEvent>): Promise<{ body: string; contentType: string; botId: string }> {
    const status = auditEvent.subtype?.find((c) => c.system === MESSAGE_STATUS_SYSTEM)?.code;
    if (!status) {
      throw new OperationOutcomeError(badRequest('Not an HL7 message log entry'));
    }
    if (status !== 'failed' && status !== 'unmatched') {
      throw new OperationOutcomeError(badRequest(`Only failed or unmatched messages can be reprocessed (this one is ${status})`));
    }
    const rawRef = auditEvent.entity?.find((e) => e.what?.reference?.startsWith('Binary/'))?.what?.reference;
    const botRef = auditEvent.agent?.find((a) => a.who?.reference?.startsWith('Bot/'))?.who?.reference;
    if (!rawRef || !botRef) {
      throw new OperationOutcomeError(badRequest('The log entry names no raw message or no bot'));
    }
    // Only entries the bot itself (or the server) wrote: anyone else's would make the bot run forged text.
    const author = auditEvent.meta?.author?.reference;
    if (author && author !== botRef && !author.startsWith('system')) {
      throw new OperationOutcomeError(badRequest('Only log entries written by the bot or the server can be reprocessed'));
    }
    const repo = this.auth.directory.repo(projectId);
    const binary = await repo.readResource<Binary>('Binary', rawRef.slice('Binary/'.length));
    const body = (await repo.readBinaryData(binary)).toString('utf8');
    return { body, contentType: binary.contentType ?? HL7_CONTENT_TYPE, botId: botRef.slice('Bot/'.length) };
  }

  /** Marks a log entry as handled again (the new run wrote its own entry). */
  async markReprocessed(projectId: string, auditEvent: WithId<AuditEvent>, ack: string): Promise<void> {
    const repo = this.auth.directory.repo(projectId);
    await repo.updateResource<AuditEvent>({
      ...auditEvent,
      subtype: (auditEvent.subtype ?? []).map((c) => (c.system === MESSAGE_STATUS_SYSTEM ? { ...c, code: 'reprocessed' } : c)),
      entity: (auditEvent.entity ?? []).map((e) =>
        e.what?.reference?.startsWith('Binary/') ? { ...e, detail: [...(e.detail ?? []).filter((d) => d.type !== 'reprocess-ack'), { type: 'reprocess-ack', valueString: ack }] } : e
      ),
    });
  }
}

function rawEntity(raw: WithId<Binary>, controlId: string): AuditEventEntity {
  return {
    what: { reference: getReferenceString(raw) },
    type: { system: ENTITY_TYPE, code: '2', display: 'System Object' },
    role: { system: OBJECT_ROLE, code: '20', display: 'Job' },
    name: controlId,
    description: 'HL7 v2 message',
  };
}
