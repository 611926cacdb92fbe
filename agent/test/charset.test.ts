import { describe, expect, test } from 'vitest';
import { buildAck } from '../src/hl7/ack.ts';
import { charsetForMsh18, decodeHl7, decodeWith, encodeHl7, Hl7CharsetError, readMsh18 } from '../src/hl7/charset.ts';

const GREEK = 'ΓΕΩΡΓΙΟΥ^ΑΝΔΡΕΑΣ Άλφα ώρα ς';
const msg = (msh18: string, pid5: string): string => `MSH|^~\\&|LIS|LAB|ERMIS|CLINIC|20240101120000||ORU^R01|C1|P|2.5.1|||||CY|${msh18}\rPID|1||123||${pid5}`;

describe('readMsh18', () => {
  test('reads MSH-18, first repetition, trimmed; empty; absent MSH', () => {
    expect(readMsh18(Buffer.from(msg('8859/7', 'X')))).toBe('8859/7');
    expect(readMsh18(Buffer.from(msg(' UNICODE UTF-8 ~8859/7', 'X')))).toBe('UNICODE UTF-8');
    expect(readMsh18(Buffer.from('MSH|^~\\&|A|B\rPID|1'))).toBe('');
    // MSH-3 … MSH-17 empty: 16 separators after MSH-2.
    expect(readMsh18(Buffer.from(`\xef\xbb\xbfMSH|^~\\&${'|'.repeat(16)}UNICODE UTF-8`, 'latin1'))).toBe('UNICODE UTF-8');
    expect(readMsh18(Buffer.from(`MSH|^~\\&${'|'.repeat(15)}UNICODE UTF-8`, 'latin1'))).toBe('');
    expect(readMsh18(Buffer.from('PID|1|x'))).toBeUndefined();
    expect(readMsh18(Buffer.from('MS'))).toBeUndefined();
    // Other field separator.
    expect(readMsh18(Buffer.from(`MSH#^~\\&${'#'.repeat(16)}8859/1#x`))).toBe('8859/1');
  });

  test('only the MSH line counts (MSH-18 position in another segment is ignored)', () => {
    expect(readMsh18(Buffer.from('MSH|^~\\&|A\rOBX|1|2|3|4|5|6|7|8|9|10|11|12|13|14|15|16|17|18'))).toBe('');
  });
});

describe('charsetForMsh18', () => {
  test('table 0211 values and common spellings', () => {
    expect(charsetForMsh18('8859/7')).toBe('iso-8859-7');
    expect(charsetForMsh18('ISO-8859-7')).toBe('iso-8859-7');
    expect(charsetForMsh18('ISO8859/7')).toBe('iso-8859-7');
    expect(charsetForMsh18('8859/1')).toBe('iso-8859-1');
    expect(charsetForMsh18('8859/15')).toBe('iso-8859-15');
    expect(charsetForMsh18('ASCII')).toBe('us-ascii');
    expect(charsetForMsh18('UNICODE UTF-8')).toBe('utf-8');
    expect(charsetForMsh18('UNICODE')).toBe('utf-8');
    expect(charsetForMsh18('utf8')).toBe('utf-8');
    expect(charsetForMsh18('CP1253')).toBe('windows-1253');
    expect(charsetForMsh18('windows-1253')).toBe('windows-1253');
    expect(charsetForMsh18('8859/12')).toBeUndefined();
    expect(charsetForMsh18('KLINGON')).toBeUndefined();
    expect(charsetForMsh18('')).toBeUndefined();
  });

  test('UTF-16 / UTF-32 are refused with a clear error', () => {
    expect(() => charsetForMsh18('UNICODE UTF-16')).toThrow(Hl7CharsetError);
    expect(() => charsetForMsh18('UNICODE UTF-32')).toThrow(/ASCII-compatible/);
    expect(() => decodeHl7(Buffer.from(msg('UNICODE UTF-16', 'X')))).toThrow(Hl7CharsetError);
  });
});

describe('decodeHl7 / encodeHl7', () => {
  test('Greek declared 8859/7 round-trips, and the known code points are right', () => {
    const bytes = encodeHl7(msg('8859/7', GREEK), 'iso-8859-7');
    // Ά is 0xB6 in ISO-8859-7 (0xA2 in cp1253); Ω is 0xD9 in both.
    expect(encodeHl7('Ά', 'iso-8859-7')).toEqual(Buffer.from([0xb6]));
    expect(encodeHl7('Ω', 'iso-8859-7')).toEqual(Buffer.from([0xd9]));
    const decoded = decodeHl7(bytes);
    expect(decoded).toMatchObject({ charset: 'iso-8859-7', declared: '8859/7', source: 'declared', mismatch: false });
    expect(decoded.text).toBe(msg('8859/7', GREEK));
  });

  test('undeclared cp1253 falls back to the endpoint default; a different default reads it differently', () => {
    const bytes = encodeHl7(msg('', GREEK), 'windows-1253');
    expect(encodeHl7('Ά', 'windows-1253')).toEqual(Buffer.from([0xa2]));
    const d = decodeHl7(bytes);
    expect(d).toMatchObject({ charset: 'windows-1253', source: 'fallback', mismatch: false, declared: '' });
    expect(d.text).toBe(msg('', GREEK));
    const wrong = decodeHl7(bytes, { fallback: 'iso-8859-7' });
    expect(wrong.charset).toBe('iso-8859-7');
    expect(wrong.text).not.toBe(msg('', GREEK));
    expect(wrong.text).toContain('’'); // 0xA2 read as ISO-8859-7
  });

  test('undeclared UTF-8 is detected', () => {
    const d = decodeHl7(Buffer.from(msg('', GREEK), 'utf8'));
    expect(d).toMatchObject({ charset: 'utf-8', source: 'utf8-detected', mismatch: false });
    expect(d.text).toBe(msg('', GREEK));
  });

  test('declared UTF-8 that is really cp1253: fallback, flagged as mismatch', () => {
    const d = decodeHl7(encodeHl7(msg('UNICODE UTF-8', GREEK), 'windows-1253'));
    expect(d).toMatchObject({ charset: 'windows-1253', source: 'fallback', mismatch: true, declared: 'UNICODE UTF-8' });
    expect(d.text).toBe(msg('UNICODE UTF-8', GREEK));
  });

  test('declared UTF-8 that is UTF-8, declared windows-1253 spelled as such', () => {
    expect(decodeHl7(Buffer.from(msg('UNICODE UTF-8', GREEK))).text).toBe(msg('UNICODE UTF-8', GREEK));
    const d = decodeHl7(encodeHl7(msg('CP1253', GREEK), 'windows-1253'), { fallback: 'iso-8859-7' });
    expect(d).toMatchObject({ charset: 'windows-1253', source: 'declared' });
    expect(d.text).toBe(msg('CP1253', GREEK));
  });

  test('ASCII declared: plain bytes decode as ASCII; 8-bit bytes take the undeclared path, flagged', () => {
    expect(decodeHl7(Buffer.from(msg('ASCII', 'SMITH^JOHN')))).toMatchObject({ charset: 'us-ascii', source: 'declared', mismatch: false });
    const d = decodeHl7(encodeHl7(msg('ASCII', GREEK), 'windows-1253'));
    expect(d).toMatchObject({ charset: 'windows-1253', mismatch: true });
  });

  test('unknown MSH-18 value: heuristics, flagged', () => {
    const d = decodeHl7(Buffer.from(msg('KLINGON', GREEK)));
    expect(d).toMatchObject({ charset: 'utf-8', source: 'utf8-detected', mismatch: true });
  });

  test('8859/1 keeps ISO semantics (0x80 is a C1 control, not €), unlike WHATWG latin1', () => {
    expect(decodeWith(Buffer.from([0x80, 0xe9]), 'iso-8859-1')).toBe('\u0080é');
    expect(new TextDecoder('iso-8859-1').decode(Uint8Array.of(0x80))).toBe('€');
    expect(decodeWith(Buffer.from([0x80, 0xfd]), 'iso-8859-9')).toBe('\u0080ı');
    expect(encodeHl7('\u0080é€', 'iso-8859-1')).toEqual(Buffer.from([0x80, 0xe9, 0x3f]));
  });

  test('unencodable characters become ?; decomposed accents are composed first', () => {
    expect(encodeHl7('Aλ€中', 'iso-8859-1').toString('latin1')).toBe('A???');
    expect(encodeHl7('€', 'iso-8859-15')).toEqual(Buffer.from([0xa4]));
    expect(encodeHl7('Ά'.normalize('NFD'), 'windows-1253')).toEqual(Buffer.from([0xa2]));
    expect(encodeHl7('abcΩ', 'us-ascii').toString('latin1')).toBe('abc?');
    expect(encodeHl7('ab中', 'gb18030').toString('latin1')).toBe('ab?');
  });

  test('a bad fallback is refused', () => {
    expect(() => decodeHl7(Buffer.from('MSH|^~\\&'), { fallback: 'utf-8' })).toThrow(Hl7CharsetError);
    expect(() => decodeHl7(Buffer.from('MSH|^~\\&'), { fallback: 'nope' })).toThrow(Hl7CharsetError);
    expect(() => encodeHl7('x', 'nope')).toThrow(Hl7CharsetError);
  });

  test('the ACK for a Greek message goes back in the message charset and reads back the same', () => {
    for (const [msh18, charset] of [
      ['8859/7', 'iso-8859-7'],
      ['', 'windows-1253'],
      ['UNICODE UTF-8', 'utf-8'],
    ] as const) {
      const incoming = decodeHl7(encodeHl7(msg(msh18, GREEK), charset));
      expect(incoming.charset).toBe(charset);
      const ack = buildAck(incoming.text, 'AE', { text: 'Άγνωστος ασθενής', controlId: 'A1', now: new Date(0) });
      const bytes = encodeHl7(ack, incoming.charset);
      const back = decodeHl7(bytes);
      expect(back.charset).toBe(charset);
      expect(back.text).toBe(ack);
      expect(back.text).toContain('MSA|AE|C1|Άγνωστος ασθενής');
    }
  });
});
