import type { Hl7Segment } from '@medplum/core';
import { describe, expect, test } from 'vitest';
import { labCodeSystem, LOINC, UCUM } from './systems.ts';
import { parseHl7 } from './test-support.ts';
import { unitFromCwe } from './units.ts';
import { mapObxValue, mimeType, parseComparatorNumber, parseDecimal, parseRange, type ValueContext, type ValueMapping } from './values.ts';

function obx(row: string): Hl7Segment {
  const seg = parseHl7(`MSH|^~\\&|A|B|||20250101||ORU^R01|1|P|2.5.1\n${row}`).getSegment('OBX');
  if (!seg) {
    throw new Error('no OBX');
  }
  return seg;
}

const MMOL = unitFromCwe('mmol/L', '', 'UCUM');
const ctx = (over: Partial<ValueContext> = {}): ValueContext => ({ labKey: 'lab', decimalComma: false, timezone: 'Europe/Nicosia', unit: MMOL, ...over });
const map = (type: string, value: string, over?: Partial<ValueContext>): ValueMapping => mapObxValue(obx(`OBX|1|${type}|X^Test||${value}|mmol/L`), ctx(over));
const value = (type: string, v: string, over?: Partial<ValueContext>): unknown => {
  const r = map(type, v, over);
  if (!r.ok) {
    throw new Error(r.reason);
  }
  return r.value;
};

describe('numbers', () => {
  test('parseDecimal: strict by default, a decimal comma only when the lab writes one', () => {
    expect(parseDecimal('5.4', false)).toBe(5.4);
    expect(parseDecimal(' -0.5 ', false)).toBe(-0.5);
    expect(parseDecimal('.5', false)).toBe(0.5);
    expect(parseDecimal('1,2', false)).toBeUndefined();
    expect(parseDecimal('1,2', true)).toBe(1.2);
    expect(parseDecimal('1,200.5', true)).toBeUndefined();
    expect(parseDecimal('1e3', false)).toBeUndefined();
    expect(parseDecimal('5 mmol', false)).toBeUndefined();
  });

  test('parseComparatorNumber', () => {
    expect(parseComparatorNumber('<1', false)).toEqual({ comparator: '<', value: 1 });
    expect(parseComparatorNumber('>= 6.1', false)).toEqual({ comparator: '>=', value: 6.1 });
    expect(parseComparatorNumber('≤0,5', true)).toEqual({ comparator: '<=', value: 0.5 });
    expect(parseComparatorNumber('=5', false)).toBeUndefined();
    expect(parseComparatorNumber('<<5', false)).toBeUndefined();
  });

  test('parseRange', () => {
    expect(parseRange('3.5-5.1', false)).toEqual({ low: 3.5, high: 5.1 });
    expect(parseRange('3.5 - 5.1 mmol/L', false)).toEqual({ low: 3.5, high: 5.1 });
    expect(parseRange('<5.2', false)).toEqual({ high: 5.2 });
    expect(parseRange('<=5.2', false)).toEqual({ high: 5.2 });
    expect(parseRange('>40', false)).toEqual({ low: 40 });
    expect(parseRange('3,5-5,1', true)).toEqual({ low: 3.5, high: 5.1 });
    expect(parseRange('-5--1', false)).toEqual({ low: -5, high: -1 });
    expect(parseRange('5.1-3.5', false)).toBeUndefined();
    expect(parseRange('Negative', false)).toBeUndefined();
    expect(parseRange('Αρνητικό', false)).toBeUndefined();
  });
});

describe('mapObxValue by OBX-2', () => {
  test('NM → Quantity with the OBX-6 unit', () => {
    expect(value('NM', '4.2')).toEqual({ valueQuantity: { value: 4.2, unit: 'mmol/L', system: UCUM, code: 'mmol/L' } });
  });

  test('NM not numeric → 102', () => {
    expect(map('NM', 'positive')).toMatchObject({ ok: false, code: '102' });
    expect(map('NM', '1,2')).toMatchObject({ ok: false, code: '102' });
    expect(value('NM', '1,2', { decimalComma: true })).toMatchObject({ valueQuantity: { value: 1.2 } });
  });

  test('NM with a comparator is tolerated with a warning', () => {
    const r = map('NM', '<0.01');
    expect(r).toMatchObject({ ok: true, value: { valueQuantity: { value: 0.01, comparator: '<' } } });
    expect(r.ok && r.warnings[0]).toContain('comparator');
  });

  test('SN: quantity with comparator, ratio, range, otherwise text', () => {
    expect(value('SN', '>^25')).toMatchObject({ valueQuantity: { value: 25, comparator: '>' } });
    expect(value('SN', '=^440')).toEqual({ valueQuantity: { value: 440, unit: 'mmol/L', system: UCUM, code: 'mmol/L' } });
    expect(value('SN', '^1^:^128')).toMatchObject({ valueRatio: { numerator: { value: 1 }, denominator: { value: 128 } } });
    expect(value('SN', '^1^/^128')).toMatchObject({ valueRatio: { numerator: { value: 1 }, denominator: { value: 128 } } });
    expect(value('SN', '^2^-^8')).toMatchObject({ valueRange: { low: { value: 2 }, high: { value: 8 } } });
    expect(value('SN', '^2^+')).toEqual({ valueString: '2+' });
    expect(value('SN', '<>^5')).toEqual({ valueString: '<>5' });
    expect(map('SN', '<^abc')).toMatchObject({ ok: false, code: '102', component: 2 });
    expect(map('SN', '^1^:^x')).toMatchObject({ ok: false, code: '102', component: 4 });
  });

  test('ST: a number or comparator-number becomes a Quantity; text stays text (Greek too)', () => {
    expect(value('ST', '<1')).toMatchObject({ valueQuantity: { value: 1, comparator: '<', code: 'mmol/L' } });
    expect(value('ST', '>=6.1')).toMatchObject({ valueQuantity: { value: 6.1, comparator: '>=' } });
    expect(value('ST', '5.4')).toMatchObject({ valueQuantity: { value: 5.4 } });
    expect(value('ST', 'Θετικό')).toEqual({ valueString: 'Θετικό' });
    expect(value('ST', 'see comment \\T\\ note')).toEqual({ valueString: 'see comment & note' });
  });

  test('TX and FT: text with escapes and line breaks; repetitions are lines', () => {
    expect(value('FT', 'Line 1\\.br\\Line 2')).toEqual({ valueString: 'Line 1\nLine 2' });
    expect(value('TX', 'first~second')).toEqual({ valueString: 'first\nsecond' });
    expect(value('TX', '12.5')).toEqual({ valueString: '12.5' });
  });

  test('CE/CWE/CNE → CodeableConcept; LN, SCT and HL7 tables become URIs, local codes the lab system', () => {
    expect(value('CWE', '260385009^Negative^SCT')).toEqual({ valueCodeableConcept: { coding: [{ system: 'http://snomed.info/sct', code: '260385009', display: 'Negative' }] } });
    expect(value('CE', 'POS^Positive^HL70078')).toEqual({ valueCodeableConcept: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v2-0078', code: 'POS', display: 'Positive' }] } });
    expect(value('CNE', 'LA6576-8^Positive^LN')).toEqual({ valueCodeableConcept: { coding: [{ system: LOINC, code: 'LA6576-8', display: 'Positive' }] } });
    expect(value('CWE', 'NEG^Αρνητικό')).toEqual({ valueCodeableConcept: { coding: [{ system: labCodeSystem('lab'), code: 'NEG', display: 'Αρνητικό' }] } });
    expect(value('CWE', '^^^^^^^^Free text only')).toEqual({ valueCodeableConcept: { text: 'Free text only' } });
  });

  test('IS/ID → a coding with the code only', () => {
    expect(value('IS', 'Value')).toEqual({ valueCodeableConcept: { coding: [{ code: 'Value' }] } });
  });

  test('DT/DTM/TS → dateTime (TS.1), TM → time, DR → Period; bad ones are 102', () => {
    expect(value('DT', '20250301')).toEqual({ valueDateTime: '2025-03-01' });
    expect(value('DTM', '20250301101500+0200')).toEqual({ valueDateTime: '2025-03-01T10:15:00+02:00' });
    expect(value('TS', '20250701101500^S')).toEqual({ valueDateTime: '2025-07-01T10:15:00+03:00' });
    expect(value('TM', '1015')).toEqual({ valueTime: '10:15:00' });
    expect(value('DR', '20250301^20250302')).toEqual({ valuePeriod: { start: '2025-03-01', end: '2025-03-02' } });
    expect(map('DT', '2025-03-01')).toMatchObject({ ok: false, code: '102', component: 1 });
    expect(map('TM', '2575')).toMatchObject({ ok: false, code: '102' });
    expect(map('DR', '20250301^tomorrow')).toMatchObject({ ok: false, code: '102', component: 2 });
  });

  test('NR → Range; VR numeric → Range, otherwise text', () => {
    expect(value('NR', '1^10')).toMatchObject({ valueRange: { low: { value: 1 }, high: { value: 10 } } });
    expect(map('NR', 'a^10')).toMatchObject({ ok: false, code: '102', component: 1 });
    expect(value('VR', 'First^Second')).toEqual({ valueString: 'First-Second' });
  });

  test('ED → attachment (Base64, A, Hex); no Observation value', () => {
    const pdf = map('ED', 'LIS^APPLICATION^PDF^Base64^JVBERi0xLjQK');
    expect(pdf).toEqual({ ok: true, valueType: 'ED', attachment: { contentType: 'application/pdf', data: 'JVBERi0xLjQK' }, warnings: [] });
    expect(map('ED', '^TEXT^PLAIN^A^Γεια')).toMatchObject({ ok: true, attachment: { contentType: 'text/plain', data: 'zpPOtc65zrE=' } });
    expect(map('ED', '^APPLICATION^PDF^Hex^25504446')).toMatchObject({ ok: true, attachment: { data: 'JVBERg==' } });
    expect(map('ED', '^APPLICATION^PDF^Base64^not base64!')).toMatchObject({ ok: false, code: '102', component: 5 });
    expect(map('ED', '^APPLICATION^PDF^UUENCODE^abc')).toMatchObject({ ok: false, code: '102', component: 4 });
  });

  test('RP → attachment with url', () => {
    expect(map('RP', 'https://lab.example/r/1.pdf^LIS^APPLICATION^PDF')).toMatchObject({ ok: true, attachment: { url: 'https://lab.example/r/1.pdf', contentType: 'application/pdf' } });
  });

  test('empty OBX-2 infers the type from the value', () => {
    expect(map('', '5.4')).toMatchObject({ ok: true, valueType: 'NM', value: { valueQuantity: { value: 5.4 } } });
    expect(map('', 'POS^Positive^HL70078')).toMatchObject({ ok: true, valueType: 'CWE' });
    expect(map('', 'free text')).toMatchObject({ ok: true, valueType: 'ST', value: { valueString: 'free text' } });
    expect(map('', 'free text').ok && (map('', 'free text') as { warnings: string[] }).warnings[0]).toContain('OBX-2 is empty');
  });

  test('unknown OBX-2 → 103; empty or "" value → no value', () => {
    expect(map('XYZ', '1')).toMatchObject({ ok: false, code: '103' });
    expect(map('NM', '')).toEqual({ ok: true, valueType: 'NM', warnings: [] });
    expect(map('NM', '""')).toEqual({ ok: true, valueType: 'NM', warnings: [] });
  });

  test('a repeated coded value keeps the first, with a warning', () => {
    const r = map('CWE', 'A^a^L~B^b^L');
    expect(r).toMatchObject({ ok: true, value: { valueCodeableConcept: { coding: [{ code: 'A' }] } } });
    expect(r.ok && r.warnings[0]).toContain('repeats');
  });

  test('mimeType', () => {
    expect(mimeType('APPLICATION', 'PDF')).toBe('application/pdf');
    expect(mimeType('BINARY', 'JPEG')).toBe('image/jpeg');
    expect(mimeType('TEXT', '')).toBe('text/plain');
    expect(mimeType('', '')).toBe('application/octet-stream');
  });
});
