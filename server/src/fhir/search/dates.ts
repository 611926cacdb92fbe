/**
 * FHIR dates as ranges. A date or dateTime stands for the whole interval its precision covers:
 * `2024` is all of 2024, `2024-03-05T10:00:00Z` is one second. Search compares ranges
 * (https://hl7.org/fhir/R4/search.html#date), so both stored values and search values become [low, high].
 */
export interface DateRange {
  low: Date;
  high: Date;
}

const DATE_RE =
  /^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$/;

/** Parses a FHIR date, dateTime or instant (or a search value with minute precision) into its range. */
export function parseDateRange(value: string): DateRange | undefined {
  const m = DATE_RE.exec(value);
  if (!m) {
    return undefined;
  }
  const [, y, mo, d, h, mi, s, frac, tz] = m;
  const year = Number(y);
  const offsetMs = tz && tz !== 'Z' ? tzOffsetMs(tz) : 0;
  if ((h !== undefined && (Number(h) > 23 || Number(mi) > 59)) || (s !== undefined && Number(s) > 59)) {
    return undefined;
  }
  if (mo === undefined) {
    return utcRange(utc(year, 0, 1), utc(year + 1, 0, 1));
  }
  const month = Number(mo) - 1;
  if (month < 0 || month > 11) {
    return undefined;
  }
  if (d === undefined) {
    return utcRange(utc(year, month, 1), utc(year, month + 1, 1));
  }
  const day = Number(d);
  if (day < 1 || day > new Date(utc(year, month + 1, 0)).getUTCDate()) {
    return undefined;
  }
  if (h === undefined) {
    return utcRange(utc(year, month, day), utc(year, month, day + 1));
  }
  const base = utc(year, month, day, Number(h), Number(mi)) - offsetMs;
  if (s === undefined) {
    return utcRange(base, base + 60_000);
  }
  const withSeconds = base + Number(s) * 1000;
  if (frac === undefined) {
    return utcRange(withSeconds, withSeconds + 1000);
  }
  // Millisecond resolution is what Postgres timestamps and JS dates keep; finer digits collapse to the millisecond.
  const digits = Math.min(frac.length, 3);
  const start = withSeconds + Number(frac.slice(0, 3).padEnd(3, '0'));
  return utcRange(start, start + 10 ** (3 - digits));
}

/** [start, endExclusive) in epoch ms → closed range ending one millisecond before endExclusive. */
function utcRange(start: number, endExclusive: number): DateRange {
  return { low: new Date(start), high: new Date(endExclusive - 1) };
}

/** Date.UTC, except that years 0-99 stay years 0-99 (Date.UTC maps them to 1900-1999). */
function utc(year: number, month: number, day: number, hours = 0, minutes = 0): number {
  const d = new Date(Date.UTC(2000, 0, 1, hours, minutes));
  d.setUTCFullYear(year, month, day); // month and day overflow roll over, as in Date.UTC
  return d.getTime();
}

function tzOffsetMs(tz: string): number {
  const sign = tz.startsWith('-') ? -1 : 1;
  const [hh, mm] = tz.slice(1).split(':').map(Number);
  return sign * (hh * 60 + mm) * 60_000;
}
