/**
 * Safe field access and HL7 text decoding on top of `@medplum/core`'s Hl7Message.
 *
 * Core splits fields, repetitions and components but never unescapes, and its `getComponent`
 * throws for a repetition that does not exist; these helpers never throw and return raw or
 * decoded strings. Field numbers are HL7 field numbers (MSH-3 is 3: core's MSH quirk is handled
 * by `Hl7Segment.getField`).
 */
import type { Hl7Context, Hl7Segment } from '@medplum/core';

/** The raw (still escaped) text of one component of one repetition; '' when absent. */
export function rawComponent(seg: Hl7Segment, field: number, component = 1, repetition = 0): string {
  const f = seg.getField(field);
  if (!f) {
    return '';
  }
  const rep = f.components[repetition];
  return rep?.[component - 1] ?? '';
}

/** The raw repetitions of a field, each as its list of raw components (empty list when absent). */
export function rawRepetitions(seg: Hl7Segment, field: number): string[][] {
  const f = seg.getField(field);
  if (!f) {
    return [];
  }
  return f.components.filter((rep) => rep.some((c) => c !== ''));
}

/** Whether a field carries anything at all. */
export function hasField(seg: Hl7Segment, field: number): boolean {
  return rawRepetitions(seg, field).length > 0;
}

/** Subcomponent `sub` (1-based) of a raw component. */
export function rawSubcomponent(ctx: Hl7Context, raw: string, sub: number): string {
  return raw.split(ctx.subcomponentSeparator)[sub - 1] ?? '';
}

/** A decoded component: unescaped, trimmed. */
export function component(seg: Hl7Segment, field: number, comp = 1, repetition = 0, charset?: string): string {
  return unescapeHl7(rawComponent(seg, field, comp, repetition), seg.context, charset).trim();
}

/** HL7 "" is an explicit null (delete the value); for a first mapping it means "no value". */
export function isHl7Null(raw: string): boolean {
  return raw === '""';
}

/** MSH-18 (table 0211) or a profile charset → a WHATWG TextDecoder label. */
export function charsetLabel(charset: string | undefined): string {
  const c = (charset ?? '').trim().toUpperCase();
  if (!c || c === 'ASCII' || c === 'UNICODE UTF-8' || c === 'UNICODE' || c === 'UTF-8') {
    return 'utf-8';
  }
  const iso = /^8859\/(\d+)$/.exec(c);
  if (iso) {
    return `iso-8859-${iso[1]}`;
  }
  if (c === 'UNICODE UTF-16') {
    return 'utf-16le';
  }
  return c.toLowerCase();
}

function decodeHexBytes(hex: string, charset: string | undefined): string | undefined {
  if (hex.length === 0 || hex.length % 2 !== 0 || !/^[0-9A-Fa-f]+$/.test(hex)) {
    return undefined;
  }
  const bytes = new Uint8Array(hex.length / 2);
  for (let i = 0; i < bytes.length; i++) {
    bytes[i] = Number.parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  }
  try {
    return new TextDecoder(charsetLabel(charset)).decode(bytes);
  } catch {
    // An unknown charset label: bytes as Latin-1 keep the text visible rather than losing it.
    return String.fromCharCode(...bytes);
  }
}

/**
 * Resolves HL7 escape sequences. `\F\ \S\ \T\ \R\ \E\ \P\` give the delimiters back; `\Xhh..\`
 * decodes bytes in the message charset; `\.br\` and `\.sp n\` become line breaks; highlighting
 * (`\H\ \N\`), other formatting commands and charset switches are dropped. An unterminated or
 * unknown sequence is kept literally, so nothing the lab wrote is lost.
 */
export function unescapeHl7(raw: string, ctx: Hl7Context, charset?: string): string {
  const esc = ctx.escapeCharacter;
  if (!esc || !raw.includes(esc)) {
    return raw;
  }
  let out = '';
  let i = 0;
  while (i < raw.length) {
    const ch = raw[i];
    if (ch !== esc) {
      out += ch;
      i++;
      continue;
    }
    const end = raw.indexOf(esc, i + 1);
    if (end === -1) {
      out += raw.slice(i);
      break;
    }
    const seq = raw.slice(i + 1, end);
    const replacement = escapeReplacement(seq, ctx, charset);
    if (replacement === undefined) {
      // Not a sequence we know: keep the escape character and continue after it.
      out += ch;
      i++;
      continue;
    }
    out += replacement;
    i = end + 1;
  }
  return out;
}

function escapeReplacement(seq: string, ctx: Hl7Context, charset: string | undefined): string | undefined {
  switch (seq) {
    case 'F':
      return ctx.fieldSeparator;
    case 'S':
      return ctx.componentSeparator;
    case 'T':
      return ctx.subcomponentSeparator;
    case 'R':
      return ctx.repetitionSeparator;
    case 'E':
      return ctx.escapeCharacter;
    case 'P':
      return '#';
    case 'H':
    case 'N':
      return '';
    case '.br':
      return '\n';
    default:
      break;
  }
  if (seq.startsWith('X')) {
    return decodeHexBytes(seq.slice(1), charset);
  }
  const sp = /^\.sp\s*(\d*)$/.exec(seq);
  if (sp) {
    return '\n'.repeat(Math.min(Number(sp[1] || '1'), 20));
  }
  if (/^\.(fi|nf|in\s*[+-]?\d+|ti\s*[+-]?\d+|sk\s*\d*|ce)$/.test(seq)) {
    return '';
  }
  // Z (locally defined), C/M (charset switches): no meaning for us, drop them.
  if (/^[ZCM][0-9A-Za-z]*$/.test(seq)) {
    return '';
  }
  return undefined;
}

/** Text of a repeating text field (FT/TX/ST, NTE-3): repetitions are lines. */
export function textLines(seg: Hl7Segment, field: number, charset?: string): string {
  const f = seg.getField(field);
  if (!f) {
    return '';
  }
  const sep = seg.context.componentSeparator;
  return f.components
    .map((rep) => unescapeHl7(rep.join(sep), seg.context, charset))
    .join('\n')
    .replace(/\s+$/, '');
}
