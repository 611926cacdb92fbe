/**
 * The shared HL7 corpus, a reference reading of it, the synthetic probes and the throughput message.
 *
 * The reference reading is deliberately naive (split segments on CR, LF or CRLF, fields on MSH-1,
 * then repetitions, components, and resolve the standard escapes): for well-formed messages it is
 * what any parser should return, so a parser that disagrees with it on a corpus message is worth
 * looking at.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';

/** --corpus <dir>, default the shared test data next to the repository (../shared/testdata). */
export function corpusRoot(argv: readonly string[]): string {
  const i = argv.indexOf('--corpus');
  if (i >= 0) return path.resolve(argv[i + 1]);
  return path.resolve(import.meta.dirname, '../../../shared/testdata');
}

export interface CorpusItem {
  id: string;
  text: string;
}

export function loadCorpus(root: string): CorpusItem[] {
  const files: string[] = [];
  const visit = (dir: string): void => {
    for (const name of readdirSync(dir).sort()) {
      const full = path.join(dir, name);
      if (statSync(full).isDirectory()) visit(full);
      else if (name.endsWith('.hl7')) files.push(full);
    }
  };
  visit(root);
  const items: CorpusItem[] = [];
  for (const file of files) {
    const text = readFileSync(file, 'utf8');
    const id = path.relative(root, file);
    items.push({ id, text });
    // A batch file (FHS/BHS ... BTS/FTS) is refused by message parsers; its messages are added one by one.
    if (/^(FHS|BHS)/.test(text)) {
      const lines = text.split(/\r\n|\r|\n/);
      let current: string[] = [];
      let n = 0;
      const flush = (): void => {
        if (current.length) items.push({ id: `${id}#${++n}`, text: current.join('\r') });
        current = [];
      };
      for (const line of lines) {
        if (line.startsWith('MSH')) flush();
        if (/^(FHS|BHS|BTS|FTS)/.test(line)) {
          flush();
          continue;
        }
        if (line.startsWith('MSH') || current.length) current.push(line);
      }
      flush();
    }
  }
  return items;
}

export interface Delimiters {
  field: string;
  component: string;
  repetition: string;
  escape: string;
  subcomponent: string;
}

export function unescapeHl7(value: string, d: Delimiters): string {
  if (!value.includes(d.escape)) return value;
  const e = d.escape.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  return value.replace(new RegExp(`${e}([^${e}]*)${e}`, 'g'), (whole, seq: string) => {
    switch (seq) {
      case 'F':
        return d.field;
      case 'S':
        return d.component;
      case 'T':
        return d.subcomponent;
      case 'R':
        return d.repetition;
      case 'E':
        return d.escape;
    }
    if (/^X([0-9A-Fa-f]{2})+$/.test(seq)) return Buffer.from(seq.slice(1), 'hex').toString('latin1');
    return whole;
  });
}

/** The naive reference reading. */
export class Reference {
  readonly segments: string[][];
  readonly d: Delimiters;
  constructor(text: string) {
    const lines = text.split(/\r\n|\r|\n/).filter((l) => l !== '');
    const enc = lines[0]?.slice(3, 8) ?? '|^~\\&';
    this.d = { field: enc[0], component: enc[1], repetition: enc[2], escape: enc[3], subcomponent: enc[4] };
    this.segments = lines.map((l) => l.split(this.d.field));
  }
  names(): string[] {
    return this.segments.map((s) => s[0]);
  }
  raw(segment: string, occurrence: number, field: number, component: number, repetition = 0): string | undefined {
    const seg = this.segments.filter((s) => s[0] === segment)[occurrence];
    if (!seg) return undefined;
    let text: string | undefined;
    if (segment === 'MSH') {
      if (field === 1) return this.d.field;
      text = seg[field - 1];
    } else {
      text = seg[field];
    }
    if (text === undefined) return undefined;
    if (segment === 'MSH' && field === 2) return text;
    const rep = text.split(this.d.repetition)[repetition];
    if (rep === undefined) return undefined;
    return rep.split(this.d.component)[component - 1] ?? '';
  }
  unescaped(segment: string, occurrence: number, field: number, component: number, repetition = 0): string | undefined {
    const raw = this.raw(segment, occurrence, field, component, repetition);
    if (raw === undefined || (segment === 'MSH' && field <= 2)) return raw;
    // A component that holds subcomponents: compare its first subcomponent, as the libraries differ there.
    return unescapeHl7(raw, this.d);
  }
}

/** Field positions compared on every corpus message: [segment, field, component, repetition]. */
export const KEY_FIELDS: readonly [string, number, number, number][] = [
  ['MSH', 3, 1, 0],
  ['MSH', 7, 1, 0],
  ['MSH', 9, 1, 0],
  ['MSH', 9, 2, 0],
  ['MSH', 10, 1, 0],
  ['MSH', 12, 1, 0],
  ['PID', 3, 1, 0],
  ['PID', 3, 1, 1],
  ['PID', 5, 1, 0],
  ['PID', 5, 2, 0],
  ['PID', 7, 1, 0],
  ['OBR', 4, 1, 0],
  ['OBR', 7, 1, 0],
  ['OBX', 2, 1, 0],
  ['OBX', 3, 1, 0],
  ['OBX', 5, 1, 0],
  ['OBX', 6, 1, 0],
  ['OBX', 7, 1, 0],
  ['OBX', 14, 1, 0],
];

// ---------------------------------------------------------------- synthetic probes

export interface Probe {
  id: string;
  what: string;
  text: string;
  /** For the byte probes: the bytes a socket or file would deliver. */
  bytes?: Buffer;
  /** Expected values: [segment, occurrence, field, component, repetition, expected]. */
  expect: [string, number, number, number, number, string][];
  /** True when a careful parser should refuse this input. */
  shouldRefuse?: boolean;
}

const MSH = (extra = '', version = '2.5.1', charset = ''): string =>
  `MSH|^~\\&|LAB|ACME|ERMIS|CLINIC|20240105083000+0200||ORU^R01^ORU_R01|CTRL1|P|${version}|||AL|NE||${charset}${extra}`;

export const GREEK_FAMILY = 'ΠΑΠΑΔΟΠΟΥΛΟΣ';
export const GREEK_GIVEN = 'ΓΙΏΡΓΟΣ';
export const GREEK_TEST = 'Γλυκόζη νηστείας';

export function greekMessage(charset: string): string {
  return [
    MSH('', '2.5.1', charset),
    `PID|1||123456^^^ACME^MR||${GREEK_FAMILY}^${GREEK_GIVEN}||19700101|M`,
    `OBX|1|NM|1558-6^${GREEK_TEST}^LN||5.4|mmol/L|3.9-5.5|N|||F`,
  ].join('\r');
}

export function probes(): Probe[] {
  const pid = 'PID|1||A1^^^H^MR~B2^^^N^NI||DOE^JOHN||19700101|M';
  const obx = (value: string, type = 'ST'): string => `OBX|1|${type}|1558-6^Glucose^LN||${value}|mmol/L|3.9-5.5|N|||F`;
  return [
    {
      id: 'escapes',
      what: 'OBX-5 with \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\X41\\',
      text: [MSH(), pid, obx('a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\X41\\g')].join('\r'),
      expect: [['OBX', 0, 5, 1, 0, 'a|b^c&d~e\\fAg']],
    },
    {
      id: 'repetitions',
      what: 'PID-3 with two repetitions',
      text: [MSH(), pid].join('\r'),
      expect: [
        ['PID', 0, 3, 1, 0, 'A1'],
        ['PID', 0, 3, 1, 1, 'B2'],
        ['PID', 0, 3, 5, 1, 'NI'],
      ],
    },
    {
      id: 'msh-numbering',
      what: 'MSH-1, MSH-2, MSH-9.2, MSH-10, MSH-12, MSH-15, MSH-18',
      text: [MSH('', '2.5.1', 'UNICODE UTF-8'), pid].join('\r'),
      expect: [
        ['MSH', 0, 1, 1, 0, '|'],
        ['MSH', 0, 2, 1, 0, '^~\\&'],
        ['MSH', 0, 9, 2, 0, 'R01'],
        ['MSH', 0, 10, 1, 0, 'CTRL1'],
        ['MSH', 0, 12, 1, 0, '2.5.1'],
        ['MSH', 0, 15, 1, 0, 'AL'],
        ['MSH', 0, 18, 1, 0, 'UNICODE UTF-8'],
      ],
    },
    {
      id: 'other-delimiters',
      what: 'MSH#$%*@ (field #, component $, repetition %, escape *, subcomponent @)',
      text: ['MSH#$%*@#LAB#ACME#ERMIS#CLINIC#20240105##ORU$R01#CTRL2#P#2.5.1', 'PID#1##A1%B2##DOE$JOHN*F*X'].join('\r'),
      expect: [
        ['MSH', 0, 9, 2, 0, 'R01'],
        ['PID', 0, 3, 1, 1, 'B2'],
        ['PID', 0, 5, 2, 0, 'JOHN#X'],
      ],
    },
    {
      id: 'five-encoding-chars',
      what: 'v2.7 MSH-2 with the truncation character (^~\\&#)',
      text: [MSH().replace('|^~\\&|', '|^~\\&#|').replace('|2.5.1|', '|2.7|'), pid].join('\r'),
      expect: [
        ['MSH', 0, 3, 1, 0, 'LAB'],
        ['MSH', 0, 10, 1, 0, 'CTRL1'],
        ['PID', 0, 5, 1, 0, 'DOE'],
      ],
    },
    {
      id: 'no-encoding-chars',
      what: 'MSH without MSH-2 (fields shifted left by one)',
      text: ['MSH|LAB|ACME|ERMIS|CLINIC|20240105||ORU^R01|CTRL3|P|2.5.1', pid].join('\r'),
      expect: [],
      shouldRefuse: true,
    },
    {
      id: 'not-msh',
      what: 'first segment is PID',
      text: [pid, obx('5.4', 'NM')].join('\r'),
      expect: [],
      shouldRefuse: true,
    },
    { id: 'empty', what: 'empty string', text: '', expect: [], shouldRefuse: true },
    {
      id: 'lf-segments',
      what: 'segments separated by LF only (as in the mappinginventory files)',
      text: [MSH(), pid, obx('5.4', 'NM')].join('\n'),
      expect: [
        ['PID', 0, 5, 1, 0, 'DOE'],
        ['OBX', 0, 5, 1, 0, '5.4'],
      ],
    },
    {
      id: 'crlf-segments',
      what: 'segments separated by CRLF',
      text: [MSH(), pid, obx('5.4', 'NM')].join('\r\n'),
      expect: [
        ['PID', 0, 5, 1, 0, 'DOE'],
        ['OBX', 0, 5, 1, 0, '5.4'],
      ],
    },
    {
      id: 'bom',
      what: 'UTF-8 byte order mark before MSH',
      text: `\uFEFF${[MSH(), pid].join('\r')}`,
      expect: [['PID', 0, 5, 1, 0, 'DOE']],
    },
    {
      id: 'short-segment-name',
      what: 'a segment named "PI" (two letters) after MSH',
      text: [MSH(), 'PI|1||A1'].join('\r'),
      expect: [],
      shouldRefuse: true,
    },
    {
      id: 'two-msh',
      what: 'two messages concatenated without framing',
      text: [MSH(), pid, MSH().replace('CTRL1', 'CTRL9'), pid].join('\r'),
      expect: [],
      shouldRefuse: true,
    },
    {
      id: 'hl7-null',
      what: 'OBX-5 = "" (HL7 null, delete)',
      text: [MSH(), pid, obx('""')].join('\r'),
      expect: [['OBX', 0, 5, 1, 0, '""']],
    },
    {
      id: 'wrong-type',
      what: 'NM value "abc", MSH-7 "2024-01-05" (not a DTM)',
      text: [MSH().replace('20240105083000+0200', '2024-01-05'), pid, obx('abc', 'NM')].join('\r'),
      expect: [
        ['OBX', 0, 5, 1, 0, 'abc'],
        ['MSH', 0, 7, 1, 0, '2024-01-05'],
      ],
    },
    {
      id: 'numbers-and-dates-verbatim',
      what: 'NM "5.40" and DTM "202401" kept as sent',
      text: [MSH(), pid, obx('5.40', 'NM').replace('|||F', '|||F|||202401')].join('\r'),
      expect: [
        ['OBX', 0, 5, 1, 0, '5.40'],
        ['OBX', 0, 14, 1, 0, '202401'],
      ],
    },
    {
      id: 'greek-string',
      what: 'Greek text already decoded to a JS string',
      text: greekMessage('UNICODE UTF-8'),
      expect: [
        ['PID', 0, 5, 1, 0, GREEK_FAMILY],
        ['OBX', 0, 3, 2, 0, GREEK_TEST],
      ],
    },
    {
      id: 'greek-8859-7-bytes',
      what: 'ISO-8859-7 bytes, MSH-18 = 8859/7, given as bytes',
      text: greekMessage('8859/7'),
      bytes: encode88597(greekMessage('8859/7')),
      expect: [
        ['PID', 0, 5, 1, 0, GREEK_FAMILY],
        ['OBX', 0, 3, 2, 0, GREEK_TEST],
      ],
    },
    {
      id: 'greek-utf8-bytes',
      what: 'UTF-8 bytes, MSH-18 = UNICODE UTF-8, given as bytes',
      text: greekMessage('UNICODE UTF-8'),
      bytes: Buffer.from(greekMessage('UNICODE UTF-8'), 'utf8'),
      expect: [['PID', 0, 5, 1, 0, GREEK_FAMILY]],
    },
  ];
}

/** ISO-8859-7 encoder for the characters used here (ASCII + Greek), so the bench needs no iconv. */
export function encode88597(text: string): Buffer {
  const out = Buffer.alloc(text.length);
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) out[i] = c;
    else if (c >= 0x0386 && c <= 0x03ce) out[i] = c - 0x0386 + 0xb6; // Ά..ώ map linearly onto 0xB6..0xFE
    else throw new Error(`no ISO-8859-7 byte for U+${c.toString(16)}`);
  }
  return out;
}

/** An ORU^R01 with 10 OBX, about 1.4 KB: the throughput message. */
export function oru10(controlId = 'CTRL-0001'): string {
  const analytes: [string, string, string, string, string][] = [
    ['2345-7', 'Glucose [Mass/volume] in Serum or Plasma', '98', 'mg/dL', '70-99'],
    ['2160-0', 'Creatinine [Mass/volume] in Serum or Plasma', '0.9', 'mg/dL', '0.7-1.3'],
    ['3094-0', 'Urea nitrogen [Mass/volume] in Serum or Plasma', '14', 'mg/dL', '7-20'],
    ['2951-2', 'Sodium [Moles/volume] in Serum or Plasma', '140', 'mmol/L', '135-145'],
    ['2823-3', 'Potassium [Moles/volume] in Serum or Plasma', '4.2', 'mmol/L', '3.5-5.1'],
    ['2075-0', 'Chloride [Moles/volume] in Serum or Plasma', '101', 'mmol/L', '98-107'],
    ['2028-9', 'Carbon dioxide, total [Moles/volume] in Serum or Plasma', '25', 'mmol/L', '22-29'],
    ['17861-6', 'Calcium [Mass/volume] in Serum or Plasma', '9.6', 'mg/dL', '8.6-10.3'],
    ['2885-2', 'Protein [Mass/volume] in Serum or Plasma', '7.1', 'g/dL', '6.0-8.3'],
    ['1751-7', 'Albumin [Mass/volume] in Serum or Plasma', '4.4', 'g/dL', '3.5-5.2'],
  ];
  return [
    `MSH|^~\\&|LIS|ACMELAB|ERMIS|CLINIC|20240105083000+0200||ORU^R01^ORU_R01|${controlId}|P|2.5.1|||AL|NE||UNICODE UTF-8`,
    'PID|1||123456^^^ACME^MR~987654321^^^CY^NI||DOE^JOHN^Q||19700101|M|||1 MAIN ST^^NICOSIA^^1010^CY',
    'ORC|RE|ORD-1|FIL-1||CM',
    'OBR|1|ORD-1|FIL-1|24323-8^Comprehensive metabolic panel^LN|||20240105070000+0200|||||||||1234^SMITH^ANNA||||||20240105080000+0200|||F',
    ...analytes.map(
      ([code, name, value, unit, range], i) =>
        `OBX|${i + 1}|NM|${code}^${name}^LN||${value}|${unit}|${range}|N|||F|||20240105075500+0200`,
    ),
  ].join('\r');
}
