import { describe, expect, test } from 'vitest';
import { hl7ToFhirDateTime, hl7ToFhirInstant, hl7ToFhirTime, isValidTimeZone, zoneOffsetMinutes } from './datetime.ts';

const dt = (raw: string, tz?: string): string | undefined => {
  const r = hl7ToFhirDateTime(raw, tz);
  return r.ok ? r.value : undefined;
};

describe('hl7ToFhirDateTime', () => {
  test('precision is kept: year, month, date stay dates', () => {
    expect(dt('2023')).toBe('2023');
    expect(dt('202305')).toBe('2023-05');
    expect(dt('20230501')).toBe('2023-05-01');
  });

  test('an explicit offset is kept as sent', () => {
    expect(dt('20230501102531-0400')).toBe('2023-05-01T10:25:31-04:00');
    expect(dt('20230501102531+0000')).toBe('2023-05-01T10:25:31+00:00');
    expect(dt('20230501102531.1234+0530')).toBe('2023-05-01T10:25:31.1234+05:30');
  });

  test('hours and minutes get zero seconds (FHIR needs them)', () => {
    expect(dt('2023050110', 'UTC')).toBe('2023-05-01T10:00:00+00:00');
    expect(dt('202305011025', 'UTC')).toBe('2023-05-01T10:25:00+00:00');
  });

  test('no offset: the profile time zone at that date (Nicosia is +02:00 in winter, +03:00 in summer)', () => {
    expect(dt('20250115120000')).toBe('2025-01-15T12:00:00+02:00');
    expect(dt('20250715120000')).toBe('2025-07-15T12:00:00+03:00');
    expect(dt('20250715120000', 'Asia/Singapore')).toBe('2025-07-15T12:00:00+08:00');
  });

  test('around the DST changes in Nicosia', () => {
    // 30 March 2025: 03:00 local jumps to 04:00. 02:30 is still winter time.
    expect(dt('20250330023000')).toBe('2025-03-30T02:30:00+02:00');
    expect(dt('20250330043000')).toBe('2025-03-30T04:30:00+03:00');
    // 26 October 2025: 03:00-04:00 happens twice; the first (summer) reading is taken.
    expect(dt('20251026033000')).toBe('2025-10-26T03:30:00+03:00');
    expect(dt('20251026043000')).toBe('2025-10-26T04:30:00+02:00');
  });

  test.each([
    ['', 'empty'],
    ['2023-05-01', 'ISO, not HL7'],
    ['20230231', 'no 31 February'],
    ['20231301', 'month 13'],
    ['2023050125', 'hour 25'],
    ['202305011060', 'minute 60'],
    ['20230501102531+2500', 'offset 25 h'],
    ['test', 'text'],
    ['17000101', 'year out of range'],
    ['20230501 1025', 'space inside'],
  ])('%s is refused (%s)', (raw) => {
    const r = hl7ToFhirDateTime(raw);
    expect(r.ok).toBe(false);
    expect(r.ok ? '' : r.reason).not.toBe('');
  });

  test('an unknown time zone is an error, not a crash', () => {
    expect(isValidTimeZone('Mars/Olympus')).toBe(false);
    expect(hl7ToFhirDateTime('20250101120000', 'Mars/Olympus').ok).toBe(false);
  });

  test('zoneOffsetMinutes', () => {
    expect(zoneOffsetMinutes('Europe/Nicosia', Date.UTC(2025, 0, 1))).toBe(120);
    expect(zoneOffsetMinutes('UTC', Date.UTC(2025, 6, 1))).toBe(0);
  });
});

describe('instants and times', () => {
  test('an instant needs a time of day', () => {
    expect(hl7ToFhirInstant('2023', 'UTC').ok).toBe(false);
    expect(hl7ToFhirInstant('20230501', 'UTC').ok).toBe(false);
    expect(hl7ToFhirInstant('202305011025', 'UTC')).toEqual({ ok: true, value: '2023-05-01T10:25:00+00:00', hasTime: true });
  });

  test('TM → FHIR time', () => {
    expect(hl7ToFhirTime('2231')).toEqual({ ok: true, value: '22:31:00', hasTime: true });
    expect(hl7ToFhirTime('223100.0000')).toEqual({ ok: true, value: '22:31:00.0000', hasTime: true });
    expect(hl7ToFhirTime('223100+0200')).toEqual({ ok: true, value: '22:31:00', hasTime: true });
    expect(hl7ToFhirTime('2561').ok).toBe(false);
    expect(hl7ToFhirTime('noon').ok).toBe(false);
  });
});
