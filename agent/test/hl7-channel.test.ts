import { describe, expect, test } from 'vitest';
import { forwardableText, streamKey } from '../src/hl7-channel.ts';

const oru = (orc: string, obr: string): string =>
  [`MSH|^~\\&|LIS|LAB|ERMIS|CLINIC|20261121||ORU^R01|M1|P|2.5.1`, 'PID|1||123^^^A^MR', orc, obr, 'OBX|1|NM|K||4|mmol/L'].filter(Boolean).join('\r');

describe('streamKey: what must reach the bot in order', () => {
  test('an ORU is ordered with the other messages of its sender about the same order (ORC-3, else OBR-3, else placer)', () => {
    expect(streamKey(oru('ORC|RE|P1|F1', 'OBR|1|P1|F1|LIPID'))).toBe('LIS|LAB|order|F1');
    expect(streamKey(oru('', 'OBR|1|P1|F9^LAB|LIPID'))).toBe('LIS|LAB|order|F9');
    expect(streamKey(oru('ORC|RE|P7', 'OBR|1|P7||LIPID'))).toBe('LIS|LAB|order|P7');
    // Same order from another sender: another stream.
    expect(streamKey(oru('ORC|RE||F1', 'OBR|1||F1|X').replace('|LAB|', '|OTHER|'))).toBe('LIS|OTHER|order|F1');
  });

  test('an ADT is ordered by patient; without order or patient there is no key (the connection decides)', () => {
    expect(streamKey('MSH|^~\\&|HIS|H|||20261121||ADT^A08|1|P|2.5.1\rPID|1||555^^^H^MR~777^^^X^NNCYP')).toBe('HIS|H|patient|555');
    expect(streamKey('MSH|^~\\&|HIS|H|||20261121||ADT^A08|1|P|2.5.1\rEVN|A08')).toBeUndefined();
    expect(streamKey('not hl7')).toBeUndefined();
  });

  test('other delimiters are read from MSH', () => {
    expect(streamKey('MSH#$~\\&#LIS#LAB#####ORU$R01#1#P#2.5.1\rORC#RE##F5$X')).toBe('LIS|LAB|order|F5');
  });
});

describe('forwardableText', () => {
  test('drops what comes before MSH (line breaks, a byte-order mark, a junk line)', () => {
    expect(forwardableText(Buffer.from('\r\n\uFEFFMSH|^~\\&|A|B\rPID|1', 'utf8'), 'windows-1253')).toBe('MSH|^~\\&|A|B\rPID|1');
    expect(forwardableText(Buffer.from('junk\rMSH|^~\\&|A|B', 'utf8'), 'windows-1253')).toBe('MSH|^~\\&|A|B');
    expect(forwardableText(Buffer.from('MSH|^~\\&|A|B', 'utf8'), 'windows-1253')).toBe('MSH|^~\\&|A|B');
  });

  test('undeclared bytes that are not UTF-8 are read in the channel charset (Greek in windows-1253)', () => {
    const bytes = Buffer.concat([Buffer.from('MSH|^~\\&|A|B\rNTE|1||', 'latin1'), Buffer.from([0xc1, 0xe8, 0xde, 0xed, 0xe1])]);
    expect(forwardableText(bytes, 'windows-1253')).toContain('Αθήνα');
  });
});
