/**
 * OBX-2 (value type) + OBX-5 (value) → Observation.value[x] (v2-to-FHIR IG OBX rows, lab-domain
 * §2.3). Also the number and range parsing the rest of the mapping shares.
 *
 * Choices beyond the IG:
 * - NM with a comparator (`<0.01`) is accepted as a Quantity with comparator and a warning: labs
 *   do this, and rejecting the message makes them resend it forever. Anything else non-numeric in
 *   NM is an error (102).
 * - ST holding only a number, with or without a comparator (`<1`, `>=6.1`), becomes a Quantity.
 * - ED/RP cannot be an R4 Observation value: the attachment is returned separately (the report's
 *   presentedForm) and the Observation gets no value.
 * - A decimal comma is accepted only when the lab's profile says it writes one (1,200 is
 *   otherwise ambiguous).
 */
import type { Hl7Segment } from '@medplum/core';
import type { Attachment, CodeableConcept, Observation, Quantity, Range, Ratio } from '@medplum/fhirtypes';
import { cweToCodeableConcept } from './coding.ts';
import { hl7ToFhirDateTime, hl7ToFhirTime } from './datetime.ts';
import { rawRepetitions, rawSubcomponent, unescapeHl7 } from './segments.ts';
import type { UnitInfo } from './units.ts';

export type ObservationValue = Pick<
  Observation,
  'valueQuantity' | 'valueCodeableConcept' | 'valueString' | 'valueRange' | 'valueRatio' | 'valueTime' | 'valueDateTime' | 'valuePeriod'
>;

export interface ValueContext {
  labKey: string;
  decimalComma: boolean;
  timezone: string;
  charset?: string;
  unit: UnitInfo;
}

export type ValueMapping =
  | { ok: true; valueType: string; value?: ObservationValue; attachment?: Attachment; warnings: string[] }
  | { ok: false; code: '102' | '103'; component?: number; reason: string };

/** Value types of table 0125 we accept. */
const KNOWN_TYPES = new Set([
  'AD', 'CE', 'CF', 'CK', 'CN', 'CNE', 'CP', 'CWE', 'CX', 'DR', 'DT', 'DTM', 'ED', 'FT', 'ID', 'IS', 'MA', 'MO', 'NA', 'NM',
  'NR', 'PN', 'RP', 'SN', 'ST', 'TM', 'TN', 'TS', 'TX', 'VR', 'XAD', 'XCN', 'XON', 'XPN', 'XTN',
]);

const COMPARATORS: Record<string, Quantity['comparator']> = { '<': '<', '<=': '<=', '>': '>', '>=': '>=', '≤': '<=', '≥': '>=' };

/** A decimal as labs write it; undefined when it is not one. */
export function parseDecimal(text: string, decimalComma: boolean): number | undefined {
  let t = text.trim();
  if (decimalComma && /^[+-]?\d*,\d+$/.test(t)) {
    t = t.replace(',', '.');
  }
  if (!/^[+-]?(\d+\.?\d*|\.\d+)$/.test(t)) {
    return undefined;
  }
  const n = Number(t);
  return Number.isFinite(n) ? n : undefined;
}

const NUMBER_SRC = String.raw`[+-]?(?:\d+(?:[.,]\d+)?|[.,]\d+)`;
const COMPARATOR_NUMBER_RE = new RegExp(`^(<=|>=|<|>|≤|≥)\\s*(${NUMBER_SRC})$`);

/** `<1`, `>= 6.1`, `≤0,5` → comparator + value. */
export function parseComparatorNumber(text: string, decimalComma: boolean): { comparator: Quantity['comparator']; value: number } | undefined {
  const m = COMPARATOR_NUMBER_RE.exec(text.trim());
  if (!m) {
    return undefined;
  }
  const value = parseDecimal(m[2], decimalComma);
  return value === undefined ? undefined : { comparator: COMPARATORS[m[1]], value };
}

export function quantity(value: number, unit: UnitInfo, comparator?: Quantity['comparator']): Quantity {
  const q: Quantity = { value };
  if (comparator) {
    q.comparator = comparator;
  }
  if (unit.unit) {
    q.unit = unit.unit;
  }
  if (unit.system && unit.code) {
    q.system = unit.system;
    q.code = unit.code;
  }
  return q;
}

/**
 * Reference range text (OBX-7) → low/high: `3.5-5.1`, `3.5 - 5.1 mmol/L`, `<5.2`, `<=5.2`, `>40`,
 * `70_105`. Trailing unit text is ignored (the result's unit applies). Undefined when not parseable.
 */
export function parseRange(text: string, decimalComma: boolean): { low?: number; high?: number } | undefined {
  const t = text.trim();
  const n = NUMBER_SRC;
  const between = new RegExp(`^(${n})\\s*(?:-|–|_|to)\\s*(${n})(?:\\s*[^\\d\\s].*)?$`).exec(t);
  if (between) {
    const low = parseDecimal(between[1], decimalComma);
    const high = parseDecimal(between[2], decimalComma);
    if (low !== undefined && high !== undefined && low <= high) {
      return { low, high };
    }
    return undefined;
  }
  const bound = new RegExp(`^(<=|>=|<|>|≤|≥)\\s*(${n})(?:\\s*[^\\d\\s].*)?$`).exec(t);
  if (bound) {
    const v = parseDecimal(bound[2], decimalComma);
    if (v === undefined) {
      return undefined;
    }
    return bound[1].startsWith('<') || bound[1] === '≤' ? { high: v } : { low: v };
  }
  return undefined;
}

function base64FromBytes(bytes: Uint8Array): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
  let out = '';
  for (let i = 0; i < bytes.length; i += 3) {
    const b0 = bytes[i];
    const b1 = bytes[i + 1];
    const b2 = bytes[i + 2];
    out += alphabet[b0 >> 2];
    out += alphabet[((b0 & 3) << 4) | ((b1 ?? 0) >> 4)];
    out += b1 === undefined ? '=' : alphabet[((b1 & 15) << 2) | ((b2 ?? 0) >> 6)];
    out += b2 === undefined ? '=' : alphabet[b2 & 63];
  }
  return out;
}

const MIME_BY_SUBTYPE: Record<string, string> = {
  PDF: 'application/pdf',
  JPEG: 'image/jpeg',
  JPG: 'image/jpeg',
  PNG: 'image/png',
  GIF: 'image/gif',
  TIFF: 'image/tiff',
  RTF: 'application/rtf',
  HTML: 'text/html',
  XML: 'application/xml',
  PLAIN: 'text/plain',
  OCTET_STREAM: 'application/octet-stream',
};

/** ED.2 type of data + ED.3 subtype → MIME type. */
export function mimeType(type: string, subtype: string): string {
  const t = type.trim().toUpperCase();
  const s = subtype.trim().toUpperCase().replace(/^X-/, '');
  if (s.includes('/')) {
    return s.toLowerCase();
  }
  if (MIME_BY_SUBTYPE[s]) {
    return MIME_BY_SUBTYPE[s];
  }
  if (t === 'TEXT') {
    return 'text/plain';
  }
  if (['APPLICATION', 'IMAGE', 'AUDIO', 'VIDEO'].includes(t) && s) {
    return `${t.toLowerCase()}/${s.toLowerCase()}`;
  }
  return 'application/octet-stream';
}

type Decoded = { ok: true; data: string } | { ok: false; reason: string };

function encodedData(encoding: string, data: string): Decoded {
  const e = encoding.trim().toUpperCase();
  if (e === 'BASE64') {
    const compact = data.replace(/\s+/g, '');
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(compact) || compact.length === 0) {
      return { ok: false, reason: 'ED data is not valid Base64' };
    }
    return { ok: true, data: compact };
  }
  if (e === 'A' || e === '') {
    return { ok: true, data: base64FromBytes(new TextEncoder().encode(data)) };
  }
  if (e === 'HEX') {
    const compact = data.replace(/\s+/g, '');
    if (!/^([0-9A-Fa-f]{2})+$/.test(compact)) {
      return { ok: false, reason: 'ED data is not valid hex' };
    }
    const bytes = new Uint8Array(compact.length / 2);
    for (let i = 0; i < bytes.length; i++) {
      bytes[i] = Number.parseInt(compact.slice(i * 2, i * 2 + 2), 16);
    }
    return { ok: true, data: base64FromBytes(bytes) };
  }
  return { ok: false, reason: `ED encoding '${encoding}' is not Base64, A or Hex` };
}

function inferType(reps: string[][], decimalComma: boolean): string {
  const first = reps[0] ?? [];
  if (first.length > 1 && first.slice(1).some((c) => c !== '')) {
    return first.length >= 4 && /^(<=|>=|<|>|=|<>)?$/.test(first[0]) ? 'SN' : 'CWE';
  }
  const text = first[0] ?? '';
  if (parseDecimal(text, decimalComma) !== undefined) {
    return 'NM';
  }
  return 'ST';
}

/** Maps OBX-5 according to OBX-2. Never throws. */
export function mapObxValue(obx: Hl7Segment, ctx: ValueContext): ValueMapping {
  const declared = (obx.getField(2)?.components[0]?.[0] ?? '').trim().toUpperCase();
  const reps = rawRepetitions(obx, 5);
  const hasValue = reps.length > 0 && !(reps.length === 1 && reps[0].length === 1 && reps[0][0] === '""');
  if (declared && !KNOWN_TYPES.has(declared)) {
    return { ok: false, code: '103', reason: `OBX-2 value type '${declared}' is not in table 0125` };
  }
  if (!hasValue) {
    return { ok: true, valueType: declared, warnings: [] };
  }
  const type = declared || inferType(reps, ctx.decimalComma);
  const warnings: string[] = [];
  if (!declared) {
    warnings.push(`OBX-2 is empty; value read as ${type}`);
  }
  if (reps.length > 1 && !['ST', 'TX', 'FT'].includes(type)) {
    warnings.push(`OBX-5 repeats ${reps.length} times; only the first ${type} value is kept`);
  }
  const sep = obx.context.componentSeparator;
  const dec = (raw: string): string => unescapeHl7(raw, obx.context, ctx.charset).trim();
  const comp = (n: number): string => dec(reps[0][n - 1] ?? '');
  const wholeText = (): string => reps.map((r) => unescapeHl7(r.join(sep), obx.context, ctx.charset)).join('\n').trim();
  const done = (value: ObservationValue): ValueMapping => ({ ok: true, valueType: type, value, warnings });

  switch (type) {
    case 'NM': {
      const text = comp(1);
      const n = parseDecimal(text, ctx.decimalComma);
      if (n !== undefined) {
        return done({ valueQuantity: quantity(n, ctx.unit) });
      }
      const cmp = parseComparatorNumber(text, ctx.decimalComma);
      if (cmp) {
        warnings.push(`NM value '${text}' carries a comparator; read as a quantity with comparator`);
        return done({ valueQuantity: quantity(cmp.value, ctx.unit, cmp.comparator) });
      }
      return { ok: false, code: '102', reason: `NM value '${text}' is not a number` };
    }
    case 'SN':
      return mapSn(comp(1), comp(2), comp(3), comp(4), ctx, done);
    case 'ST': {
      const text = wholeText();
      const n = parseDecimal(text, ctx.decimalComma);
      if (n !== undefined) {
        return done({ valueQuantity: quantity(n, ctx.unit) });
      }
      const cmp = parseComparatorNumber(text, ctx.decimalComma);
      if (cmp) {
        return done({ valueQuantity: quantity(cmp.value, ctx.unit, cmp.comparator) });
      }
      return done({ valueString: text });
    }
    case 'TX':
    case 'FT':
      return done({ valueString: wholeText() });
    case 'CE':
    case 'CWE':
    case 'CNE':
    case 'CF': {
      const cc = cweToCodeableConcept(
        {
          code: comp(1),
          text: comp(2),
          system: comp(3),
          altCode: comp(4),
          altText: comp(5),
          altSystem: comp(6),
          version: comp(7),
          altVersion: comp(8),
          originalText: comp(9),
        },
        ctx.labKey
      );
      return cc ? done({ valueCodeableConcept: cc }) : { ok: true, valueType: type, warnings };
    }
    case 'IS':
    case 'ID': {
      const cc: CodeableConcept = { coding: [{ code: comp(1) }] };
      return done({ valueCodeableConcept: cc });
    }
    case 'DT':
    case 'DTM':
    case 'TS': {
      const r = hl7ToFhirDateTime(dec(rawSubcomponent(obx.context, reps[0][0] ?? '', 1)), ctx.timezone);
      return r.ok ? done({ valueDateTime: r.value }) : { ok: false, code: '102', component: 1, reason: r.reason };
    }
    case 'TM': {
      const r = hl7ToFhirTime(comp(1));
      return r.ok ? done({ valueTime: r.value }) : { ok: false, code: '102', component: 1, reason: r.reason };
    }
    case 'DR': {
      const start = rawSubcomponent(obx.context, reps[0][0] ?? '', 1).trim();
      const end = rawSubcomponent(obx.context, reps[0][1] ?? '', 1).trim();
      const period: { start?: string; end?: string } = {};
      for (const [i, raw] of [start, end].entries()) {
        if (!raw) {
          continue;
        }
        const r = hl7ToFhirDateTime(raw, ctx.timezone);
        if (!r.ok) {
          return { ok: false, code: '102', component: i + 1, reason: r.reason };
        }
        period[i === 0 ? 'start' : 'end'] = r.value;
      }
      return done({ valuePeriod: period });
    }
    case 'NR':
    case 'VR': {
      const a = comp(1);
      const b = comp(2);
      const low = a ? parseDecimal(a, ctx.decimalComma) : undefined;
      const high = b ? parseDecimal(b, ctx.decimalComma) : undefined;
      if ((a && low === undefined) || (b && high === undefined)) {
        if (type === 'NR') {
          return { ok: false, code: '102', component: a && low === undefined ? 1 : 2, reason: `NR value '${a}^${b}' is not a numeric range` };
        }
        return done({ valueString: [a, b].filter(Boolean).join('-') });
      }
      const range: Range = {};
      if (low !== undefined) {
        range.low = quantity(low, ctx.unit);
      }
      if (high !== undefined) {
        range.high = quantity(high, ctx.unit);
      }
      return done({ valueRange: range });
    }
    case 'ED': {
      const decoded = encodedData(comp(4), unescapeHl7(reps[0][4] ?? '', obx.context, ctx.charset));
      if (!decoded.ok) {
        return { ok: false, code: '102', component: decoded.reason.includes('encoding') ? 4 : 5, reason: decoded.reason };
      }
      const attachment: Attachment = { contentType: mimeType(comp(2), comp(3)), data: decoded.data };
      return { ok: true, valueType: type, attachment, warnings };
    }
    case 'RP': {
      const pointer = comp(1);
      const attachment: Attachment = { contentType: mimeType(comp(3), comp(4)) };
      if (/^(https?|ftp|urn):/i.test(pointer)) {
        attachment.url = pointer;
      } else {
        attachment.title = [comp(2), pointer].filter(Boolean).join(': ');
      }
      return { ok: true, valueType: type, attachment, warnings };
    }
    case 'MO': {
      const n = parseDecimal(comp(1), ctx.decimalComma);
      if (n === undefined) {
        return { ok: false, code: '102', component: 1, reason: `MO amount '${comp(1)}' is not a number` };
      }
      const currency = comp(2);
      return done({ valueQuantity: currency ? { value: n, unit: currency, system: 'urn:iso:std:iso:4217', code: currency } : { value: n } });
    }
    default:
      // Names, addresses, identifiers and other composite types: readable text.
      return done({ valueString: reps.map((r) => r.map(dec).filter(Boolean).join(' ')).join('\n') });
  }
}

function mapSn(
  cmpText: string,
  num1Text: string,
  sepText: string,
  num2Text: string,
  ctx: ValueContext,
  done: (v: ObservationValue) => ValueMapping
): ValueMapping {
  const num1 = num1Text ? parseDecimal(num1Text, ctx.decimalComma) : undefined;
  const num2 = num2Text ? parseDecimal(num2Text, ctx.decimalComma) : undefined;
  if (num1Text && num1 === undefined) {
    return { ok: false, code: '102', component: 2, reason: `SN number '${num1Text}' is not a number` };
  }
  if (num2Text && num2 === undefined) {
    return { ok: false, code: '102', component: 4, reason: `SN number '${num2Text}' is not a number` };
  }
  const comparator = COMPARATORS[cmpText];
  if ((sepText === ':' || sepText === '/') && num1 !== undefined && num2 !== undefined) {
    const ratio: Ratio = { numerator: quantity(num1, ctx.unit), denominator: quantity(num2, ctx.unit) };
    return done({ valueRatio: ratio });
  }
  if (sepText === '-' && num1 !== undefined && num2 !== undefined) {
    return done({ valueRange: { low: quantity(num1, ctx.unit), high: quantity(num2, ctx.unit) } });
  }
  // A lone number, optionally with a comparator FHIR knows ('=' means none). A '.' separator with
  // nothing meaningful after it is tolerated as senders pad it.
  const plainComparator = comparator !== undefined || cmpText === '=' || cmpText === '' || cmpText === '"';
  if (num1 !== undefined && (sepText === '' || sepText === '.') && plainComparator) {
    return done({ valueQuantity: quantity(num1, ctx.unit, comparator) });
  }
  // Anything else ("2+", "<>5", "1+3") is kept as the text the lab meant.
  const text = `${cmpText}${num1Text}${sepText}${num2Text}`.trim();
  return done({ valueString: text });
}
