/**
 * ACKs built by the agent itself from the raw message text, for the cases where the server is
 * not involved (commit ACKs, NAKs for unparseable or oversized messages, store-and-forward).
 * Works on text that @medplum/core cannot parse: only the MSH line is read, tolerantly.
 */

export type AckCode = 'AA' | 'AE' | 'AR' | 'CA' | 'CE' | 'CR';
export type AckType = 'AL' | 'NE' | 'ER' | 'SU';

export interface Hl7Delimiters {
  field: string;
  component: string;
  repetition: string;
  escape: string;
  subcomponent: string;
}

/** What could be read from a message's MSH line; fields hold raw (still escaped) text. */
export interface Hl7Header {
  delimiters: Hl7Delimiters;
  /** MSH-2 exactly as sent. */
  encodingCharacters: string;
  /** False when MSH-2 was unusable and `delimiters` holds the standard ones instead. */
  delimitersValid: boolean;
  sendingApplication?: string; // MSH-3
  sendingFacility?: string; // MSH-4
  receivingApplication?: string; // MSH-5
  receivingFacility?: string; // MSH-6
  messageType?: string; // MSH-9 (whole field)
  messageCode?: string; // MSH-9.1
  triggerEvent?: string; // MSH-9.2
  controlId?: string; // MSH-10
  processingId?: string; // MSH-11
  version?: string; // MSH-12
  acceptAckType?: string; // MSH-15
  applicationAckType?: string; // MSH-16
  charset?: string; // MSH-18 (whole field)
}

export interface AckError {
  /** Segment ID of the error location, e.g. 'OBX'. */
  segment?: string;
  /** Segment sequence (1-based occurrence of the segment). */
  sequence?: number;
  /** Field position. */
  field?: number;
  /** Table 0357 code, e.g. '101', '207'. */
  hl7Code: string;
  /** Table 0516; default 'E'. */
  severity?: 'E' | 'W' | 'I';
  /** Human-readable message (ERR-8; also MSA-3 when no text is given). */
  message?: string;
}

export interface BuildAckOptions {
  /** MSA-3. */
  text?: string;
  error?: AckError;
  /** MSH-10 of the ACK; generated when absent. */
  controlId?: string;
  now?: Date;
}

export const STANDARD_DELIMITERS: Readonly<Hl7Delimiters> = { field: '|', component: '^', repetition: '~', escape: '\\', subcomponent: '&' };

/** Table 0357 texts used for ERR-3.2. */
const TABLE_0357: Record<string, string> = {
  '0': 'Message accepted',
  '100': 'Segment sequence error',
  '101': 'Required field missing',
  '102': 'Data type error',
  '103': 'Table value not found',
  '104': 'Value too long',
  '198': 'Non-conformant cardinality',
  '199': 'Other HL7 error',
  '200': 'Unsupported message type',
  '201': 'Unsupported event code',
  '202': 'Unsupported processing id',
  '203': 'Unsupported version id',
  '204': 'Unknown key identifier',
  '205': 'Duplicate key identifier',
  '206': 'Application record locked',
  '207': 'Application internal error',
};

const ACK_TYPES = new Set<string>(['AL', 'NE', 'ER', 'SU']);

/**
 * Reads the MSH line of a message as far as it goes. Returns undefined only when no MSH with a
 * usable field separator is found at all. Tolerates a BOM, leading junk lines, LF or CRLF.
 */
export function recoverHeader(text: string): Hl7Header | undefined {
  const match = /(?:^|[\r\n])[\s\uFEFF]*MSH([^A-Za-z0-9\s])/.exec(text) ?? /MSH([^A-Za-z0-9\s])/.exec(text);
  if (!match) {
    return undefined;
  }
  const field = match[1];
  const start = match.index + match[0].length;
  let end = start;
  while (end < text.length && text[end] !== '\r' && text[end] !== '\n') {
    end++;
  }
  // parts[0] = MSH-2, parts[n] = MSH-(n+2).
  const parts = text.slice(start, end).split(field);
  const encodingCharacters = parts[0] ?? '';
  const delimitersValid = validEncodingCharacters(field, encodingCharacters);
  const delimiters: Hl7Delimiters = delimitersValid
    ? { field, component: encodingCharacters[0], repetition: encodingCharacters[1], escape: encodingCharacters[2], subcomponent: encodingCharacters[3] }
    : { ...STANDARD_DELIMITERS, field };
  const get = (n: number): string | undefined => {
    const value = parts[n - 2]?.trim();
    return value === undefined || value === '' ? undefined : value;
  };
  const messageType = get(9);
  const typeParts = messageType?.split(delimiters.component) ?? [];
  return {
    delimiters,
    encodingCharacters,
    delimitersValid,
    sendingApplication: get(3),
    sendingFacility: get(4),
    receivingApplication: get(5),
    receivingFacility: get(6),
    messageType,
    messageCode: typeParts[0] || undefined,
    triggerEvent: typeParts[1] || undefined,
    controlId: get(10),
    processingId: get(11),
    version: get(12),
    acceptAckType: get(15),
    applicationAckType: get(16),
    charset: get(18),
  };
}

/**
 * Builds an ACK (segments joined by CR, no trailing CR) for a message given as text. The sender
 * and receiver are swapped, MSH-11/12/18 echoed, MSA-2 names the original MSH-10. When the
 * message's MSH cannot be read at all the ACK is still built, with an empty MSA-2.
 */
export function buildAck(messageText: string, code: AckCode, opts: BuildAckOptions = {}): string {
  const header = recoverHeader(messageText);
  const d = header?.delimitersValid ? header.delimiters : STANDARD_DELIMITERS;
  // Echoed fields keep their escaping when the delimiters are the message's own; otherwise they
  // are re-escaped as plain text so they cannot inject delimiters.
  const echo = (value: string | undefined): string => (value === undefined ? '' : header?.delimitersValid ? stripControls(value) : escapeHl7(value, d));
  const encodingCharacters = header?.delimitersValid ? header.encodingCharacters : `${d.component}${d.repetition}${d.escape}${d.subcomponent}`;
  const trigger = header?.triggerEvent;
  const messageType = trigger ? ['ACK', echo(trigger), 'ACK'].join(d.component) : 'ACK';

  const msh = trimTrailing([
    'MSH',
    encodingCharacters,
    echo(header?.receivingApplication),
    echo(header?.receivingFacility),
    echo(header?.sendingApplication),
    echo(header?.sendingFacility),
    formatTimestamp(opts.now ?? new Date()),
    '',
    messageType,
    escapeHl7(opts.controlId ?? newControlId(), d),
    echo(header?.processingId) || 'P',
    echo(header?.version) || '2.5.1',
    '',
    '',
    '',
    '',
    '',
    echo(header?.charset),
  ]).join(d.field);

  const text = opts.text ?? opts.error?.message;
  const msa = trimTrailing(['MSA', code, echo(header?.controlId), text === undefined ? '' : escapeHl7(text, d)]).join(d.field);

  const segments = [msh, msa];
  if (opts.error) {
    segments.push(buildErr(opts.error, d, header?.version));
  }
  return segments.join('\r');
}

function buildErr(error: AckError, d: Hl7Delimiters, version: string | undefined): string {
  const location = trimTrailing([
    error.segment === undefined ? '' : escapeHl7(error.segment, d),
    error.sequence === undefined ? '' : String(error.sequence),
    error.field === undefined ? '' : String(error.field),
  ]);
  const codeText = TABLE_0357[error.hl7Code] ?? '';
  if (isBefore25(version)) {
    // v2.1–2.4: ERR-1 is ELD = segment^sequence^field^code(CE, as subcomponents).
    const ce = trimTrailing([escapeHl7(error.hl7Code, d), codeText, 'HL70357']).join(d.subcomponent);
    const eld = [location[0] ?? '', location[1] ?? '', location[2] ?? '', ce].join(d.component);
    return ['ERR', eld].join(d.field);
  }
  const fields = [
    'ERR',
    '',
    location.join(d.component),
    [escapeHl7(error.hl7Code, d), codeText, 'HL70357'].join(d.component),
    error.severity ?? 'E',
    '',
    '',
    '',
    error.message === undefined ? '' : escapeHl7(error.message, d),
  ];
  return trimTrailing(fields).join(d.field);
}

/**
 * Escapes HL7 delimiters in plain text (\E\ \F\ \S\ \R\ \T\). Line breaks and other control
 * characters become spaces: ST fields cannot carry them, and 0x0B / 0x1C would break MLLP framing.
 */
export function escapeHl7(text: string, d: Hl7Delimiters = STANDARD_DELIMITERS): string {
  const map = new Map<string, string>([
    [d.escape, `${d.escape}E${d.escape}`],
    [d.field, `${d.escape}F${d.escape}`],
    [d.component, `${d.escape}S${d.escape}`],
    [d.repetition, `${d.escape}R${d.escape}`],
    [d.subcomponent, `${d.escape}T${d.escape}`],
  ]);
  let out = '';
  for (const ch of text.replace(/\r\n/g, ' ')) {
    out += map.get(ch) ?? (isControl(ch) ? ' ' : ch);
  }
  return out;
}

/** MSA-1 of an ACK, upper-cased; undefined when there is no MSA or it is empty. */
export function ackCodeOf(ackText: string): string | undefined {
  const field = recoverHeader(ackText)?.delimiters.field ?? '|';
  for (const segment of ackText.split(/\r\n|\r|\n/)) {
    const s = segment.replace(/^[\s\uFEFF\x0b]+/, '');
    if (s.startsWith(`MSA${field}`)) {
      const code = s.split(field)[1]?.trim().toUpperCase();
      return code ? code : undefined;
    }
  }
  return undefined;
}

/** MSH-15 / MSH-16 of a message; undefined for empty or non-table-0155 values. */
export function ackModeOf(messageText: string): { accept: AckType | undefined; application: AckType | undefined } {
  const header = recoverHeader(messageText);
  return { accept: ackType(header?.acceptAckType), application: ackType(header?.applicationAckType) };
}

function ackType(value: string | undefined): AckType | undefined {
  const v = value?.toUpperCase();
  return v !== undefined && ACK_TYPES.has(v) ? (v as AckType) : undefined;
}

function validEncodingCharacters(field: string, enc: string): boolean {
  if (enc.length < 4) {
    return false;
  }
  const chars = [field, ...enc.slice(0, Math.min(enc.length, 5))];
  if (enc.length > 5) {
    return false;
  }
  if (new Set(chars).size !== chars.length) {
    return false;
  }
  return chars.every((c) => !/[A-Za-z0-9\s]/.test(c) && !isControl(c));
}

function isBefore25(version: string | undefined): boolean {
  const m = version ? /^2\.(\d+)/.exec(version) : null;
  return m !== null && Number(m[1]) < 5;
}

function isControl(ch: string): boolean {
  const c = ch.charCodeAt(0);
  return c < 0x20 || c === 0x7f;
}

function stripControls(value: string): string {
  // eslint-disable-next-line no-control-regex
  return value.replace(/[\x00-\x1f\x7f]/g, ' ');
}

function trimTrailing(fields: string[]): string[] {
  let n = fields.length;
  while (n > 1 && fields[n - 1] === '') {
    n--;
  }
  return fields.slice(0, n);
}

/** YYYYMMDDHHMMSS+0000 (UTC). */
function formatTimestamp(date: Date): string {
  const p = (n: number, w = 2): string => String(n).padStart(w, '0');
  return `${p(date.getUTCFullYear(), 4)}${p(date.getUTCMonth() + 1)}${p(date.getUTCDate())}${p(date.getUTCHours())}${p(date.getUTCMinutes())}${p(date.getUTCSeconds())}+0000`;
}

/** 20 hex characters: fits MSH-10's 20-character limit in v2.5.1. */
function newControlId(): string {
  const bytes = globalThis.crypto.getRandomValues(new Uint8Array(10));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}
