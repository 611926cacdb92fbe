/**
 * HL7 v2 character sets (MSH-18, table 0211) on raw MLLP frames.
 *
 * Framing happens on bytes; this module reads MSH-18 from the ASCII-safe MSH segment, decodes the
 * message, and encodes the ACK back in the charset the message was read with.
 *
 * Decisions:
 * - Charsets are named by their WHATWG label ('utf-8', 'iso-8859-7', 'windows-1253', ...), except
 *   'iso-8859-1' / 'iso-8859-9' / 'us-ascii', which WHATWG silently maps to windows-125x: here they
 *   keep their ISO meaning (0x80–0x9F are C1 controls; ASCII is 7-bit).
 * - Empty MSH-18: UTF-8 if the bytes are valid UTF-8, else the endpoint's fallback (default
 *   'windows-1253', what Greek LIS send undeclared). The same path is taken when the declared
 *   charset is UTF-8 or ASCII but the bytes contradict it, or when MSH-18 is not a known value:
 *   rejecting a result over a mislabelled charset only causes endless resends. `source` and
 *   `mismatch` in the result say what happened, for the log.
 * - UNICODE UTF-16 / UTF-32 are refused (Hl7CharsetError): MLLP frames on bytes, and a message
 *   whose MSH-18 is readable as ASCII cannot be UTF-16/32 — it is a misconfigured sender.
 */

export class Hl7CharsetError extends Error {
  readonly msh18: string;
  constructor(message: string, msh18: string) {
    super(message);
    this.name = 'Hl7CharsetError';
    this.msh18 = msh18;
  }
}

export const DEFAULT_FALLBACK_CHARSET = 'windows-1253';

export interface DecodedHl7 {
  text: string;
  /** The charset the text was decoded with; pass it to encodeHl7 for the reply. */
  charset: string;
  /** MSH-18 as sent (first repetition, trimmed); '' when empty or absent. */
  declared: string;
  source: 'declared' | 'utf8-detected' | 'fallback';
  /** The declared charset was unknown or contradicted by the bytes. */
  mismatch: boolean;
}

export interface DecodeOptions {
  /** Charset for undeclared non-UTF-8 messages (per endpoint). Default 'windows-1253'. */
  fallback?: string;
}

const UNSUPPORTED = new Set(['UNICODEUTF16', 'UNICODEUTF32', 'UTF16', 'UTF32', 'UTF16LE', 'UTF16BE', 'UCS2']);

/** Table 0211 values (and common misspellings) → charset name. */
const TABLE_0211: Record<string, string> = {
  ASCII: 'us-ascii',
  USASCII: 'us-ascii',
  ISOIR6: 'us-ascii',
  UNICODE: 'utf-8', // as HAPI does: table 0211 'UNICODE' without a form is taken as UTF-8
  UNICODEUTF8: 'utf-8',
  UTF8: 'utf-8',
  GB180302000: 'gb18030',
  GB18030: 'gb18030',
  KSX1001: 'euc-kr',
  BIG5: 'big5',
  CP1253: 'windows-1253',
  WINDOWS1253: 'windows-1253',
  CP1252: 'windows-1252',
  WINDOWS1252: 'windows-1252',
};

/** Single-byte charsets encoded through a reverse table. */
const SINGLE_BYTE = new Set([
  'us-ascii',
  'iso-8859-1',
  'iso-8859-2',
  'iso-8859-3',
  'iso-8859-4',
  'iso-8859-5',
  'iso-8859-6',
  'iso-8859-7',
  'iso-8859-8',
  'iso-8859-9',
  'iso-8859-10',
  'iso-8859-13',
  'iso-8859-14',
  'iso-8859-15',
  'iso-8859-16',
  'windows-1250',
  'windows-1251',
  'windows-1252',
  'windows-1253',
  'windows-1254',
  'windows-1255',
  'windows-1256',
  'windows-1257',
  'windows-1258',
  'koi8-r',
  'koi8-u',
  'ibm866',
]);

/** Multi-byte charsets that keep ASCII as is: decoded by TextDecoder, encoded ASCII-only. */
const ASCII_COMPATIBLE_MULTIBYTE = new Set(['gb18030', 'gbk', 'big5', 'euc-kr', 'euc-jp', 'shift_jis']);

/**
 * Maps an MSH-18 value (or a charset label) to a supported charset name; undefined when unknown.
 * Throws Hl7CharsetError for UTF-16/UTF-32.
 */
export function charsetForMsh18(value: string): string | undefined {
  const key = value.toUpperCase().replace(/[\s_\-.]/g, '');
  if (key === '') {
    return undefined;
  }
  if (UNSUPPORTED.has(key)) {
    throw new Hl7CharsetError(`Unsupported character set ${value}: MLLP framing requires an ASCII-compatible encoding`, value);
  }
  const known = TABLE_0211[key];
  if (known) {
    return known;
  }
  // 8859/7, ISO8859/7, ISO88597, ISO-8859-7, ISO_8859-7
  const iso = /^(?:ISO)?8859\/?(\d{1,2})$/.exec(key);
  if (iso) {
    const name = `iso-8859-${Number(iso[1])}`;
    return SINGLE_BYTE.has(name) ? name : undefined;
  }
  const lower = value.trim().toLowerCase();
  if (SINGLE_BYTE.has(lower) || ASCII_COMPATIBLE_MULTIBYTE.has(lower)) {
    return lower;
  }
  return undefined;
}

/** True when encodeHl7/decodeWith know this charset name. */
export function isSupportedCharset(charset: string): boolean {
  return charset === 'utf-8' || SINGLE_BYTE.has(charset) || ASCII_COMPATIBLE_MULTIBYTE.has(charset);
}

/**
 * Reads MSH-18 (first repetition, trimmed) from raw message bytes. The MSH segment is ASCII
 * (its delimiters and header codes), so it is read byte-wise before any decoding.
 * Returns '' when the MSH has no MSH-18, undefined when there is no MSH at the start.
 */
export function readMsh18(bytes: Uint8Array): string | undefined {
  let start = 0;
  // Tolerate a UTF-8 BOM and leading whitespace before MSH.
  if (bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf) {
    start = 3;
  }
  while (start < bytes.length && (bytes[start] === 0x0d || bytes[start] === 0x0a || bytes[start] === 0x20)) {
    start++;
  }
  if (bytes[start] !== 0x4d || bytes[start + 1] !== 0x53 || bytes[start + 2] !== 0x48 || start + 3 >= bytes.length) {
    return undefined;
  }
  const fieldSep = bytes[start + 3];
  let end = start + 4;
  while (end < bytes.length && bytes[end] !== 0x0d && bytes[end] !== 0x0a) {
    end++;
  }
  const msh = Buffer.from(bytes.buffer, bytes.byteOffset + start, end - start).toString('latin1');
  const fields = msh.split(String.fromCharCode(fieldSep));
  // fields[0] = 'MSH', fields[1] = MSH-2, so fields[n] = MSH-(n+1).
  const raw = fields[17] ?? '';
  const repetition = fields[1]?.[1];
  const first = repetition ? raw.split(repetition)[0] : raw;
  return first.trim();
}

/** Decodes an MLLP frame's bytes following MSH-18, with the UTF-8 / fallback rules above. */
export function decodeHl7(bytes: Uint8Array, options: DecodeOptions = {}): DecodedHl7 {
  const fallback = normaliseFallback(options.fallback ?? DEFAULT_FALLBACK_CHARSET);
  const declared = readMsh18(bytes) ?? '';
  const declaredCharset = declared === '' ? undefined : charsetForMsh18(declared);

  if (declaredCharset && declaredCharset !== 'utf-8' && declaredCharset !== 'us-ascii') {
    return { text: decodeWith(bytes, declaredCharset), charset: declaredCharset, declared, source: 'declared', mismatch: false };
  }
  if (declaredCharset === 'us-ascii' && isAscii(bytes)) {
    return { text: decodeWith(bytes, 'us-ascii'), charset: 'us-ascii', declared, source: 'declared', mismatch: false };
  }
  const utf8 = tryUtf8(bytes);
  if (utf8 !== undefined) {
    if (declaredCharset === 'utf-8') {
      return { text: utf8, charset: 'utf-8', declared, source: 'declared', mismatch: false };
    }
    // Undeclared, unknown, or ASCII with 8-bit bytes that happen to be UTF-8.
    return { text: utf8, charset: 'utf-8', declared, source: 'utf8-detected', mismatch: declared !== '' };
  }
  return { text: decodeWith(bytes, fallback), charset: fallback, declared, source: 'fallback', mismatch: declared !== '' };
}

/** Decodes bytes with a supported charset name (see isSupportedCharset). */
export function decodeWith(bytes: Uint8Array, charset: string): string {
  if (charset === 'utf-8') {
    return new TextDecoder('utf-8').decode(bytes);
  }
  if (charset === 'iso-8859-1') {
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString('latin1');
  }
  if (charset === 'us-ascii' || charset === 'iso-8859-9') {
    const table = singleByteTable(charset).decode;
    const parts: string[] = [];
    for (let i = 0; i < bytes.length; i++) {
      parts.push(table[bytes[i]]);
    }
    return parts.join('');
  }
  if (SINGLE_BYTE.has(charset) || ASCII_COMPATIBLE_MULTIBYTE.has(charset)) {
    return new TextDecoder(charset).decode(bytes);
  }
  throw new Hl7CharsetError(`Unsupported character set ${charset}`, charset);
}

/**
 * Encodes text (e.g. an ACK) in the given charset. Characters the charset cannot represent become
 * '?'. Text is NFC-normalised first so decomposed Greek accents still map to single bytes.
 */
export function encodeHl7(text: string, charset: string): Buffer {
  if (charset === 'utf-8') {
    return Buffer.from(text, 'utf8');
  }
  const normalised = text.normalize('NFC');
  if (SINGLE_BYTE.has(charset)) {
    const table = singleByteTable(charset).encode;
    const out = Buffer.allocUnsafe(normalised.length);
    let n = 0;
    for (const ch of normalised) {
      const b = table.get(ch.codePointAt(0) ?? 0);
      out[n++] = b ?? 0x3f;
    }
    return out.subarray(0, n);
  }
  if (ASCII_COMPATIBLE_MULTIBYTE.has(charset)) {
    const out = Buffer.allocUnsafe(normalised.length);
    let n = 0;
    for (const ch of normalised) {
      const cp = ch.codePointAt(0) ?? 0;
      out[n++] = cp < 0x80 ? cp : 0x3f;
    }
    return out.subarray(0, n);
  }
  throw new Hl7CharsetError(`Unsupported character set ${charset}`, charset);
}

interface SingleByteTable {
  decode: string[];
  encode: Map<number, number>;
}

const tables = new Map<string, SingleByteTable>();

function singleByteTable(charset: string): SingleByteTable {
  let table = tables.get(charset);
  if (table) {
    return table;
  }
  const decode: string[] = [];
  // WHATWG maps these ISO names to windows-125x; keep ISO semantics for 0x80–0x9F (C1 controls).
  const iso = charset === 'iso-8859-1' || charset === 'iso-8859-9';
  const decoder = charset === 'us-ascii' ? undefined : new TextDecoder(charset === 'iso-8859-1' ? 'windows-1252' : charset === 'iso-8859-9' ? 'windows-1254' : charset);
  for (let b = 0; b < 256; b++) {
    if (b < 0x80) {
      decode.push(String.fromCharCode(b));
    } else if (!decoder) {
      decode.push('\uFFFD');
    } else if (iso && b < 0xa0) {
      decode.push(String.fromCharCode(b));
    } else {
      decode.push(decoder.decode(Uint8Array.of(b)));
    }
  }
  const encode = new Map<number, number>();
  for (let b = 0; b < 256; b++) {
    const ch = decode[b];
    if (ch !== '\uFFFD' && ch.length === 1 && !encode.has(ch.charCodeAt(0))) {
      encode.set(ch.charCodeAt(0), b);
    }
  }
  table = { decode, encode };
  tables.set(charset, table);
  return table;
}

function normaliseFallback(fallback: string): string {
  const charset = charsetForMsh18(fallback);
  if (!charset || charset === 'us-ascii' || charset === 'utf-8') {
    // A fallback must accept any byte, and UTF-8 has already been tried.
    throw new Hl7CharsetError(`Fallback charset must be a known charset other than ASCII and UTF-8, got ${fallback}`, fallback);
  }
  return charset;
}

function tryUtf8(bytes: Uint8Array): string | undefined {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    return undefined;
  }
}

function isAscii(bytes: Uint8Array): boolean {
  for (let i = 0; i < bytes.length; i++) {
    if (bytes[i] > 0x7f) {
      return false;
    }
  }
  return true;
}
