/**
 * HL7 v2 TS/DTM/DT/TM → FHIR date, dateTime, instant and time.
 *
 * `YYYY[MM[DD[HH[MM[SS[.S+]]]]]][+/-ZZZZ]`. The precision the lab sent is kept (a date stays a
 * date); FHIR needs seconds and an offset once there is a time, so minutes and seconds are padded
 * with zeros and a missing offset is the lab's time zone at that local time (computed with Intl,
 * which works in bots; no Node APIs).
 */

export const DEFAULT_TIMEZONE = 'Europe/Nicosia';

export type Hl7DateResult = { ok: true; value: string; hasTime: boolean } | { ok: false; reason: string };

const TS_RE = /^(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,9}))?)?)?)?)?)?(?:([+-])(\d{2})(\d{2})?)?$/;

const formatters = new Map<string, Intl.DateTimeFormat>();

function formatterFor(timeZone: string): Intl.DateTimeFormat {
  let f = formatters.get(timeZone);
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', {
      timeZone,
      hourCycle: 'h23',
      year: 'numeric',
      month: '2-digit',
      day: '2-digit',
      hour: '2-digit',
      minute: '2-digit',
      second: '2-digit',
    });
    formatters.set(timeZone, f);
  }
  return f;
}

/** Whether Intl knows this IANA time zone name. */
export function isValidTimeZone(timeZone: string): boolean {
  try {
    formatterFor(timeZone);
    return true;
  } catch {
    return false;
  }
}

/** Offset in minutes of `timeZone` from UTC at the instant `utcMillis`. */
export function zoneOffsetMinutes(timeZone: string, utcMillis: number): number {
  const parts = formatterFor(timeZone).formatToParts(new Date(utcMillis));
  const get = (type: string): number => Number(parts.find((p) => p.type === type)?.value ?? '0');
  const asUtc = Date.UTC(get('year'), get('month') - 1, get('day'), get('hour') % 24, get('minute'), get('second'));
  return Math.round((asUtc - Math.floor(utcMillis / 1000) * 1000) / 60000);
}

/** The offset that applies to a wall-clock time in `timeZone` (the earlier one in a DST overlap). */
export function offsetForLocalTime(timeZone: string, y: number, mo: number, d: number, h: number, mi: number, s: number): number {
  const wall = Date.UTC(y, mo - 1, d, h, mi, s);
  // The offsets in force a day either side bracket every candidate (zones change at most once a day).
  const candidates = [...new Set([zoneOffsetMinutes(timeZone, wall - 86400000), zoneOffsetMinutes(timeZone, wall + 86400000), zoneOffsetMinutes(timeZone, wall)])];
  const consistent = candidates.filter((off) => zoneOffsetMinutes(timeZone, wall - off * 60000) === off);
  if (consistent.length > 0) {
    return Math.max(...consistent);
  }
  // A wall time inside a spring-forward gap does not exist; read it with the offset before the change.
  return Math.min(...candidates);
}

function formatOffset(minutes: number): string {
  const sign = minutes < 0 ? '-' : '+';
  const abs = Math.abs(minutes);
  return `${sign}${pad(Math.floor(abs / 60))}:${pad(abs % 60)}`;
}

function pad(n: number): string {
  return String(n).padStart(2, '0');
}

function daysInMonth(y: number, m: number): number {
  return new Date(Date.UTC(y, m, 0)).getUTCDate();
}

/**
 * Parses an HL7 timestamp into a FHIR `dateTime` (or `date` when no time was sent).
 * `timeZone` is used when the value carries no offset.
 */
export function hl7ToFhirDateTime(raw: string, timeZone: string = DEFAULT_TIMEZONE): Hl7DateResult {
  const text = raw.trim();
  const m = TS_RE.exec(text);
  if (!m) {
    return { ok: false, reason: `'${text}' is not an HL7 timestamp (YYYY[MM[DD[HHMM[SS[.S]]]]][+/-ZZZZ])` };
  }
  const [, ys, mos, ds, hs, mis, ss, frac, sign, ohs, oms] = m;
  const y = Number(ys);
  if (y < 1800 || y > 2200) {
    return { ok: false, reason: `year ${ys} is out of range` };
  }
  if (mos !== undefined && (Number(mos) < 1 || Number(mos) > 12)) {
    return { ok: false, reason: `month ${mos} is out of range` };
  }
  if (ds !== undefined && (Number(ds) < 1 || Number(ds) > daysInMonth(y, Number(mos)))) {
    return { ok: false, reason: `day ${ds} is out of range` };
  }
  if (hs !== undefined && Number(hs) > 23) {
    return { ok: false, reason: `hour ${hs} is out of range` };
  }
  if (mis !== undefined && Number(mis) > 59) {
    return { ok: false, reason: `minute ${mis} is out of range` };
  }
  if (ss !== undefined && Number(ss) > 59) {
    return { ok: false, reason: `second ${ss} is out of range` };
  }
  if (ohs !== undefined && (Number(ohs) > 14 || Number(oms ?? '0') > 59)) {
    return { ok: false, reason: `offset ${sign}${ohs}${oms ?? ''} is out of range` };
  }
  let date = ys;
  if (mos !== undefined) {
    date += `-${mos}`;
  }
  if (ds !== undefined) {
    date += `-${ds}`;
  }
  if (hs === undefined) {
    // A date (or year/month) has no time zone in FHIR; an offset sent with it is meaningless.
    return { ok: true, value: date, hasTime: false };
  }
  const h = Number(hs);
  const mi = Number(mis ?? '0');
  const s = Number(ss ?? '0');
  let offset: number;
  if (sign !== undefined) {
    offset = (sign === '-' ? -1 : 1) * (Number(ohs) * 60 + Number(oms ?? '0'));
  } else {
    try {
      offset = offsetForLocalTime(timeZone, y, Number(mos), Number(ds), h, mi, s);
    } catch {
      return { ok: false, reason: `unknown time zone '${timeZone}'` };
    }
  }
  const fraction = frac ? `.${frac}` : '';
  return { ok: true, value: `${date}T${pad(h)}:${pad(mi)}:${pad(s)}${fraction}${formatOffset(offset)}`, hasTime: true };
}

/** A FHIR `instant` needs a full date and time: shorter timestamps are refused. */
export function hl7ToFhirInstant(raw: string, timeZone: string = DEFAULT_TIMEZONE): Hl7DateResult {
  const r = hl7ToFhirDateTime(raw, timeZone);
  if (r.ok && !r.hasTime) {
    return { ok: false, reason: `'${raw.trim()}' has no time of day; an instant needs one` };
  }
  return r;
}

const TM_RE = /^(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,9}))?)?)?(?:[+-]\d{4})?$/;

/** HL7 TM `HH[MM[SS[.S+]]][+/-ZZZZ]` → FHIR `time` (hh:mm:ss; FHIR time has no offset). */
export function hl7ToFhirTime(raw: string): Hl7DateResult {
  const text = raw.trim();
  const m = TM_RE.exec(text);
  if (!m) {
    return { ok: false, reason: `'${text}' is not an HL7 time (HH[MM[SS[.S]]])` };
  }
  const [, hs, mis, ss, frac] = m;
  if (Number(hs) > 23 || Number(mis ?? '0') > 59 || Number(ss ?? '0') > 59) {
    return { ok: false, reason: `'${text}' is out of range` };
  }
  return { ok: true, value: `${hs}:${mis ?? '00'}:${ss ?? '00'}${frac ? `.${frac}` : ''}`, hasTime: true };
}
