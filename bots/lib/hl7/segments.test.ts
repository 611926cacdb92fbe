import { Hl7Context } from '@medplum/core';
import { describe, expect, test } from 'vitest';
import { charsetLabel, component, hasField, rawComponent, rawRepetitions, textLines, unescapeHl7 } from './segments.ts';
import { parseHl7 } from './test-support.ts';

const ctx = new Hl7Context();

describe('@medplum/core Hl7Message facts we rely on', () => {
  const msg = parseHl7('MSH|^~\\&|LIS|BIOANALYTICA|ERMIS|CLINIC|20250101120000||ORU^R01^ORU_R01|MSG1|P|2.5.1\nPID|1||X\\F\\Y');

  test('MSH numbering: getField(3) is MSH-3 (core shifts MSH by one), MSH-1/2 are the delimiters', () => {
    const msh = msg.getSegment('MSH');
    expect(msh?.getField(1).toString()).toBe('|');
    expect(msh?.getField(2).toString()).toBe('^~\\&');
    expect(msh && component(msh, 3)).toBe('LIS');
    expect(msh && component(msh, 4)).toBe('BIOANALYTICA');
    expect(msh && component(msh, 9, 2)).toBe('R01');
    expect(msh && component(msh, 10)).toBe('MSG1');
  });

  test('core leaves escapes alone; component() resolves them', () => {
    const pid = msg.getSegment('PID');
    expect(pid?.getComponent(3, 1)).toBe('X\\F\\Y');
    expect(pid && component(pid, 3)).toBe('X|Y');
  });

  test('core throws for a missing repetition; our accessors return empty', () => {
    const pid = msg.getSegment('PID');
    expect(() => pid?.getField(3).getComponent(1, undefined, 5)).toThrow();
    expect(pid && rawComponent(pid, 3, 1, 5)).toBe('');
    expect(pid && rawComponent(pid, 99)).toBe('');
    expect(pid && rawRepetitions(pid, 99)).toEqual([]);
    expect(pid && hasField(pid, 2)).toBe(false);
  });
});

describe('unescapeHl7', () => {
  test('delimiter escapes', () => {
    expect(unescapeHl7('a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f', ctx)).toBe('a|b^c&d~e\\f');
  });

  test('escapes follow the message delimiters, not the defaults', () => {
    const odd = new Hl7Context('\r', '!', '@', '%', '$', '*');
    expect(unescapeHl7('1$F$2$S$3$T$4$R$5$E$', odd)).toBe('1!2@3*4%5$');
  });

  test('formatting: .br and .sp become line breaks, highlighting and other commands are dropped', () => {
    expect(unescapeHl7('line 1\\.br\\line 2', ctx)).toBe('line 1\nline 2');
    expect(unescapeHl7('a\\.sp 2\\b', ctx)).toBe('a\n\nb');
    expect(unescapeHl7('\\H\\HIGH\\N\\ normal', ctx)).toBe('HIGH normal');
    expect(unescapeHl7('\\.in +4\\indented\\.fi\\', ctx)).toBe('indented');
    expect(unescapeHl7('a\\Zlocal\\b', ctx)).toBe('ab');
  });

  test('\\X..\\ hex bytes decode in the message charset (Greek in ISO 8859-7 and UTF-8)', () => {
    // Κάλιο in ISO-8859-7: CA DC EB E9 EF
    expect(unescapeHl7('\\XCADCEBE9EF\\', ctx, '8859/7')).toBe('Κάλιο');
    expect(unescapeHl7('\\XCE9ACEACCEBBCEB9CEBF\\', ctx, 'UNICODE UTF-8')).toBe('Κάλιο');
    expect(unescapeHl7('\\X41\\', ctx)).toBe('A');
  });

  test('broken sequences are kept literally, never lost', () => {
    expect(unescapeHl7('C:\\path', ctx)).toBe('C:\\path');
    expect(unescapeHl7('50\\% off\\', ctx)).toBe('50\\% off\\');
    expect(unescapeHl7('\\XZZ\\', ctx)).toBe('\\XZZ\\');
    expect(unescapeHl7('\\X4\\', ctx)).toBe('\\X4\\');
  });

  test('Greek text without escapes passes through', () => {
    expect(unescapeHl7('Τροπονίνη Ι υψηλής ευαισθησίας', ctx)).toBe('Τροπονίνη Ι υψηλής ευαισθησίας');
  });
});

describe('charsetLabel and textLines', () => {
  test('table 0211 names to TextDecoder labels', () => {
    expect(charsetLabel('8859/7')).toBe('iso-8859-7');
    expect(charsetLabel('UNICODE UTF-8')).toBe('utf-8');
    expect(charsetLabel('')).toBe('utf-8');
    expect(charsetLabel('windows-1253')).toBe('windows-1253');
  });

  test('repetitions are lines, components are kept with their separator', () => {
    const nte = parseHl7('MSH|^~\\&|A|B|||20250101||ORU^R01|1|P|2.5.1\nNTE|1|L|first^part~second\\.br\\third').getSegment('NTE');
    expect(nte && textLines(nte, 3)).toBe('first^part\nsecond\nthird');
  });
});
