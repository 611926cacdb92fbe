import { Hl7Message } from '@medplum/core';
import { describe, expect, test } from 'vitest';
import { ackCodeOf, ackModeOf, buildAck, escapeHl7, recoverHeader } from '../src/hl7/ack.ts';

const ORU =
  'MSH|^~\\&|LIS|BIOLAB^1.2.3^ISO|ERMIS|CLINIC|20240301101500+0200||ORU^R01^ORU_R01|MSG00042|P|2.5.1|||AL|NE||8859/7\r' +
  'PID|1||123^^^CY||ΓΕΩΡΓΙΟΥ^ΑΝΔΡΕΑΣ\r' +
  'OBX|1|NM|2345-7^Glucose^LN||5.4|mmol/L';

const NOW = new Date(Date.UTC(2024, 2, 1, 8, 30, 5));

describe('buildAck', () => {
  test('header swapped and echoed, MSA names the original control ID (checked with @medplum/core)', () => {
    const ack = buildAck(ORU, 'AA', { controlId: 'ACK1', now: NOW });
    expect(ack.split('\r')).toEqual(['MSH|^~\\&|ERMIS|CLINIC|LIS|BIOLAB^1.2.3^ISO|20240301083005+0000||ACK^R01^ACK|ACK1|P|2.5.1||||||8859/7', 'MSA|AA|MSG00042']);
    const parsed = Hl7Message.parse(ack);
    const msh = parsed.getSegment('MSH');
    expect(msh?.getField(3).toString()).toBe('ERMIS');
    expect(msh?.getComponent(6, 2)).toBe('1.2.3');
    expect(msh?.getComponent(9, 2)).toBe('R01');
    expect(msh?.getField(10).toString()).toBe('ACK1');
    expect(msh?.getField(18).toString()).toBe('8859/7');
    expect(parsed.getSegment('MSA')?.getField(2).toString()).toBe('MSG00042');
  });

  test('generated control IDs: 20 hex characters, different each time; default time is now', () => {
    const a = recoverHeader(buildAck(ORU, 'CA'));
    const b = recoverHeader(buildAck(ORU, 'CA'));
    expect(a?.controlId).toMatch(/^[0-9a-f]{20}$/);
    expect(a?.controlId).not.toBe(b?.controlId);
    const ts = buildAck(ORU, 'CA').split('|')[6];
    expect(ts).toMatch(/^\d{14}\+0000$/);
    expect(Math.abs(Date.UTC(+ts.slice(0, 4), +ts.slice(4, 6) - 1, +ts.slice(6, 8), +ts.slice(8, 10), +ts.slice(10, 12), +ts.slice(12, 14)) - Date.now())).toBeLessThan(5000);
  });

  test('MSA-3 text and ERR (v2.5.1 layout), escaped', () => {
    const ack = buildAck(ORU, 'AE', {
      text: 'Bad value|see ERR',
      error: { segment: 'OBX', sequence: 1, field: 5, hl7Code: '102', severity: 'E', message: 'Value "5,4" is not numeric^really' },
      controlId: 'X',
      now: NOW,
    });
    const [, msa, err] = ack.split('\r');
    expect(msa).toBe('MSA|AE|MSG00042|Bad value\\F\\see ERR');
    expect(err).toBe('ERR||OBX^1^5|102^Data type error^HL70357|E||||Value "5,4" is not numeric\\S\\really');
    const parsed = Hl7Message.parse(ack).getSegment('ERR');
    expect(parsed?.getComponent(2, 1)).toBe('OBX');
    expect(parsed?.getComponent(3, 3)).toBe('HL70357');
    expect(parsed?.getField(4).toString()).toBe('E');
  });

  test('MSA-3 defaults to the error message; severity defaults to E; partial location', () => {
    const ack = buildAck(ORU, 'AR', { error: { hl7Code: '207', message: 'Storage unavailable' }, controlId: 'X', now: NOW });
    const [, msa, err] = ack.split('\r');
    expect(msa).toBe('MSA|AR|MSG00042|Storage unavailable');
    expect(err).toBe('ERR|||207^Application internal error^HL70357|E||||Storage unavailable');
    const loc = buildAck(ORU, 'AE', { error: { segment: 'PID', hl7Code: '101' }, controlId: 'X' }).split('\r')[2];
    expect(loc).toBe('ERR||PID|101^Required field missing^HL70357|E');
  });

  test('pre-2.5 messages get ERR-1 (ELD) instead', () => {
    const v23 = ORU.replace('|2.5.1|', '|2.3|');
    const err = buildAck(v23, 'AE', { error: { segment: 'OBX', sequence: 2, field: 3, hl7Code: '103' }, controlId: 'X' }).split('\r')[2];
    expect(err).toBe('ERR|OBX^2^3^103&Table value not found&HL70357');
  });

  test('escaping: all delimiters, the escape character, and control characters (never MLLP bytes)', () => {
    expect(escapeHl7('a|b^c~d\\e&f')).toBe('a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f');
    expect(escapeHl7('line1\r\nline2\nx\x0by\x1cz')).toBe('line1 line2 x y z');
    const ack = buildAck(ORU, 'AE', { text: 'bad\x0b\x1c\rtext' });
    expect(ack).not.toMatch(/[\x0b\x1c]/);
    expect(ack.split('\r')).toHaveLength(2);
  });

  test("a message with its own delimiters gets an ACK in the same delimiters, escaped with them", () => {
    const odd = 'MSH*$~!&*LIS*LAB*ERMIS*CL*2024**ORU$R01*ID9*P*2.5.1\rPID*1';
    const ack = buildAck(odd, 'AE', { text: 'a*b$c!d', controlId: 'Z', now: NOW });
    expect(ack.split('\r')).toEqual(['MSH*$~!&*ERMIS*CL*LIS*LAB*20240301083005+0000**ACK$R01$ACK*Z*P*2.5.1', 'MSA*AE*ID9*a!F!b!S!c!E!d']);
  });

  test('messages that @medplum/core cannot read: truncated MSH, LF endings, junk before MSH, no MSH', () => {
    const truncated = 'MSH|^~\\&|LIS|LAB|||20240101||ORU^R01|CTRL7';
    expect(buildAck(truncated, 'AR', { controlId: 'N', now: NOW }).split('\r')).toEqual(['MSH|^~\\&|||LIS|LAB|20240301083005+0000||ACK^R01^ACK|N|P|2.5.1', 'MSA|AR|CTRL7']);
    const lf = 'junk line\nMSH|^~\\&|A|B|C|D|2024||ADT^A01|LF1|T|2.4\nPID|1';
    expect(recoverHeader(lf)).toMatchObject({ controlId: 'LF1', processingId: 'T', version: '2.4', triggerEvent: 'A01', sendingApplication: 'A' });
    const noMsh = 'this is not HL7 at all';
    expect(recoverHeader(noMsh)).toBeUndefined();
    const ack = buildAck(noMsh, 'AR', { error: { hl7Code: '100', message: 'No MSH' }, controlId: 'N', now: NOW });
    expect(ack.split('\r')[0]).toBe('MSH|^~\\&|||||20240301083005+0000||ACK|N|P|2.5.1');
    expect(ack.split('\r')[1]).toBe('MSA|AR||No MSH');
    expect(Hl7Message.parse(ack).getSegment('MSA')?.getField(1).toString()).toBe('AR');
  });

  test('unusable encoding characters: standard ones used, echoed fields escaped', () => {
    const bad = 'MSH|^^|LIS^X|LAB|||2024||ORU^R01|B1|P|2.5.1';
    const h = recoverHeader(bad);
    expect(h?.delimitersValid).toBe(false);
    expect(h?.controlId).toBe('B1');
    const ack = buildAck(bad, 'AR', { controlId: 'N', now: NOW });
    expect(ack.split('\r')[0]).toBe('MSH|^~\\&|||LIS\\S\\X|LAB|20240301083005+0000||ACK^R01^ACK|N|P|2.5.1');
    expect(recoverHeader('MSH|ab~\\&|x')?.delimitersValid).toBe(false);
    expect(recoverHeader('MSH|^~\\&#|x')?.delimitersValid).toBe(true);
  });

  test('recoverHeader fields', () => {
    expect(recoverHeader(ORU)).toMatchObject({
      delimiters: { field: '|', component: '^', repetition: '~', escape: '\\', subcomponent: '&' },
      sendingApplication: 'LIS',
      sendingFacility: 'BIOLAB^1.2.3^ISO',
      receivingApplication: 'ERMIS',
      receivingFacility: 'CLINIC',
      messageType: 'ORU^R01^ORU_R01',
      messageCode: 'ORU',
      triggerEvent: 'R01',
      controlId: 'MSG00042',
      processingId: 'P',
      version: '2.5.1',
      acceptAckType: 'AL',
      applicationAckType: 'NE',
      charset: '8859/7',
    });
  });
});

describe('ackCodeOf / ackModeOf', () => {
  test('MSA-1 of ACKs in various shapes', () => {
    expect(ackCodeOf(buildAck(ORU, 'CE'))).toBe('CE');
    expect(ackCodeOf('MSH|^~\\&|A\nMSA|aa|X')).toBe('AA');
    expect(ackCodeOf('MSH*^~\\&*A\rMSA*AR*X')).toBe('AR');
    expect(ackCodeOf('MSH|^~\\&|A\rMSA||X')).toBeUndefined();
    expect(ackCodeOf('MSH|^~\\&|A\rERR|x')).toBeUndefined();
    expect(ackCodeOf('')).toBeUndefined();
  });

  test('MSH-15 / MSH-16', () => {
    expect(ackModeOf(ORU)).toEqual({ accept: 'AL', application: 'NE' });
    expect(ackModeOf(ORU.replace('|AL|NE|', '|er|SU|'))).toEqual({ accept: 'ER', application: 'SU' });
    expect(ackModeOf(ORU.replace('|AL|NE|', '|||'))).toEqual({ accept: undefined, application: undefined });
    expect(ackModeOf(ORU.replace('|AL|NE|', '|XX|AL|'))).toEqual({ accept: undefined, application: 'AL' });
    expect(ackModeOf('garbage')).toEqual({ accept: undefined, application: undefined });
  });
});
