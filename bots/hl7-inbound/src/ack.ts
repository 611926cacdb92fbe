/**
 * The ACK the inbound bot answers with (HL7 v2.5.1): MSH addressed back to the sender, MSA with
 * the code and the original control ID (MSA-3 a short text, which many senders show), and one
 * ERR segment per problem (ERR-2 location, ERR-3 table 0357 code, ERR-4 severity, ERR-8 text).
 */
import { Hl7Message } from '@medplum/core';
import type { Hl7Issue } from '../../lib/hl7/issues.ts';

export type AckCode = 'AA' | 'AE' | 'AR';

const ERROR_TEXT: Record<string, string> = {
  '0': 'Message accepted',
  '100': 'Segment sequence error',
  '101': 'Required field missing',
  '102': 'Data type error',
  '103': 'Table value not found',
  '104': 'Value too long',
  '199': 'Other error',
  '200': 'Unsupported message type',
  '201': 'Unsupported event code',
  '202': 'Unsupported processing id',
  '203': 'Unsupported version id',
  '204': 'Unknown key identifier',
  '205': 'Duplicate key identifier',
  '206': 'Application record locked',
  '207': 'Application internal error',
};

export function buildAck(message: Hl7Message, code: AckCode, text: string, issues: Hl7Issue[] = [], now = new Date()): Hl7Message {
  const ctx = message.context;
  const fs = ctx.fieldSeparator;
  const cs = ctx.componentSeparator;
  const escape = (s: string): string =>
    s
      .replaceAll(ctx.escapeCharacter, `${ctx.escapeCharacter}E${ctx.escapeCharacter}`)
      .replaceAll(fs, `${ctx.escapeCharacter}F${ctx.escapeCharacter}`)
      .replaceAll(cs, `${ctx.escapeCharacter}S${ctx.escapeCharacter}`)
      .replaceAll(ctx.repetitionSeparator, `${ctx.escapeCharacter}R${ctx.escapeCharacter}`)
      .replaceAll(ctx.subcomponentSeparator, `${ctx.escapeCharacter}T${ctx.escapeCharacter}`)
      .replace(/[\u0000-\u001F\u007F]+/g, ' ');
  const msh = message.getSegment('MSH');
  // Raw MSH fields (already escaped as the sender sent them); core numbers MSH-1 as field 1.
  // Control characters (never valid in HL7 text) are not echoed: the ACK is also stored in the log.
  const field = (n: number): string => (msh?.getField(n)?.toString() ?? '').replace(/[\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F]/g, ' ');
  const trigger = field(9).split(cs)[1] ?? '';
  const stamp = timestamp(now);
  const controlId = `ACK${now.getTime().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`.slice(0, 20);
  const mshFields = ['MSH', ctx.getMsh2(), field(5), field(6), field(3), field(4), stamp, '', `ACK${cs}${trigger}${cs}ACK`, controlId, field(11) || 'P', field(12) || '2.5.1', '', '', '', '', '', field(18)];
  while (mshFields.length > 12 && mshFields[mshFields.length - 1] === '') {
    mshFields.pop();
  }
  const lines = [mshFields.join(fs), ['MSA', code, field(10), escape(text)].join(fs)];
  for (const issue of issues) {
    const location = [issue.segment, String(issue.sequence), issue.field ? String(issue.field) : '', '', issue.component ? String(issue.component) : ''].join(cs).replace(new RegExp(`\\${cs}+$`), '');
    lines.push(['ERR', '', location, [issue.code, ERROR_TEXT[issue.code] ?? 'Error', 'HL70357'].join(cs), issue.severity, '', '', '', escape(issue.reason)].join(fs));
  }
  return Hl7Message.parse(lines.join('\r'));
}

function timestamp(d: Date): string {
  const p = (n: number, w = 2): string => String(n).padStart(w, '0');
  return `${d.getUTCFullYear()}${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}${p(d.getUTCHours())}${p(d.getUTCMinutes())}${p(d.getUTCSeconds())}+0000`;
}
