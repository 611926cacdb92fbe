/**
 * One adapter per parser, so the corpus, the probes and the throughput loop treat them alike.
 * Only the members used here are declared (local interfaces over `unknown` imports, see load.ts).
 *
 * Values are rendered as text so they can be compared: a string as is, a number with String(),
 * a Date as `Date:<ISO>`, a Buffer as `Buffer:<hex>`, HL7 null (`""`) as `null`.
 */
import type { Module } from './load.ts';
import { member } from './load.ts';

export interface Parsed {
  segmentNames(): string[];
  /** Component `component` (1-based) of repetition `repetition` (0-based) of field `field` of the n-th segment `segment`. */
  value(segment: string, occurrence: number, field: number, component: number, repetition?: number): string | undefined;
  /** Reads every component of every field of every segment (forces lazy parsers to do the work); returns how many. */
  walk(): number;
}

export interface ParserAdapter {
  name: string;
  /** Parse a JS string; throws when the library refuses the message. */
  parse(text: string): Parsed;
  /** Parse raw bytes, when the library takes bytes (and may decode them per MSH-18). */
  parseBytes?: (bytes: Buffer) => Parsed;
  /** True when the error is the library's own refusal (a typed/announced error), false for an incidental crash. */
  isRefusal(error: unknown): boolean;
}

export function render(v: unknown): string | undefined {
  if (v === undefined) return undefined;
  if (v === null) return 'null';
  if (typeof v === 'string') return v;
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (v instanceof Date) return Number.isNaN(v.getTime()) ? 'Date:Invalid' : `Date:${v.toISOString()}`;
  if (Buffer.isBuffer(v)) return `Buffer:${v.toString('hex')}`;
  return `${Object.prototype.toString.call(v)}`;
}

// ---------------------------------------------------------------- @medplum/core Hl7Message (5.2.13 here, 5.0.10 in the @medplum/hl7 child)

interface CoreField {
  components: string[][];
  getComponent(component: number, subcomponent?: number, repetition?: number): string;
}
interface CoreSegment {
  name: string;
  fields: CoreField[];
  getField(index: number): CoreField | undefined;
}
interface CoreMessage {
  segments: CoreSegment[];
}
export interface CoreMessageClass {
  parse(text: string): CoreMessage;
}

export function coreAdapter(name: string, Hl7Message: CoreMessageClass): ParserAdapter {
  return {
    name,
    parse(text) {
      const msg = Hl7Message.parse(text);
      return {
        segmentNames: () => msg.segments.map((s) => s.name).filter((n) => n !== ''),
        value(segment, occurrence, field, component, repetition = 0) {
          const seg = msg.segments.filter((s) => s.name === segment)[occurrence];
          const f = seg?.getField(field);
          if (!f || repetition >= f.components.length) return undefined;
          return f.getComponent(component, undefined, repetition);
        },
        walk() {
          let n = 0;
          for (const s of msg.segments) {
            for (const f of s.fields) {
              for (const rep of f.components) {
                for (const c of rep) {
                  n += c.length >= 0 ? 1 : 0;
                }
              }
            }
          }
          return n;
        },
      };
    },
    isRefusal: (e) => e instanceof Error && e.message === 'Invalid HL7 message',
  };
}

// ---------------------------------------------------------------- hl7v2 1.8.0 (Panates)

interface V2Component {
  getValue(subComponent?: number): unknown;
}
interface V2Repetition {
  components: V2Component[] | undefined;
  getValue(component?: number, subComponent?: number): unknown;
}
interface V2Field {
  repetitions: V2Repetition[];
}
interface V2Segment {
  segmentType: string;
  fields: (V2Field | undefined)[];
}
interface V2Message {
  segments: V2Segment[];
}
interface V2MessageClass {
  parse(input: string | Buffer, options?: { strict?: boolean }): V2Message;
}

export function hl7v2Adapter(mod: Module, strict: boolean): ParserAdapter {
  const HL7Message = member<V2MessageClass>(mod, 'HL7Message');
  const HL7Error = member<new (...args: never[]) => Error>(mod, 'HL7Error');
  const wrap = (msg: V2Message): Parsed => ({
    segmentNames: () => msg.segments.map((s) => s.segmentType),
    value(segment, occurrence, field, component, repetition = 0) {
      const seg = msg.segments.filter((s) => s.segmentType === segment)[occurrence];
      const rep = seg?.fields[field - 1]?.repetitions[repetition];
      if (!rep) return undefined;
      return render(rep.getValue(component)) ?? '';
    },
    walk() {
      let n = 0;
      for (const s of msg.segments) {
        for (const f of s.fields) {
          for (const rep of f?.repetitions ?? []) {
            for (const c of rep.components ?? []) {
              c.getValue();
              n++;
            }
          }
        }
      }
      return n;
    },
  });
  return {
    name: strict ? 'hl7v2 1.8.0 (strict)' : 'hl7v2 1.8.0',
    parse: (text) => wrap(HL7Message.parse(text, { strict })),
    parseBytes: (bytes) => wrap(HL7Message.parse(bytes, { strict })),
    isRefusal: (e) => e instanceof HL7Error,
  };
}

// ---------------------------------------------------------------- node-hl7-client 2.3.1 (the parser node-hl7-server hands to its handler)

interface NhNode {
  name: string;
  toString(): string;
  toArray(): NhNode[];
  read(path: string[]): NhNode | undefined;
}
interface NhMessageClass {
  new (props: { text: string }): NhNode;
}

export function nodeHl7ClientAdapter(mod: Module, version: string): ParserAdapter {
  const Message = member<NhMessageClass>(mod, 'Message');
  return {
    name: `node-hl7-client ${version}`,
    parse(text) {
      const msg = new Message({ text });
      const segments = msg.toArray();
      return {
        segmentNames: () => segments.map((s) => s.name),
        value(segment, occurrence, field, component, repetition = 0) {
          const seg = segments.filter((s) => s.name === segment)[occurrence];
          if (!seg) return undefined;
          const f = seg.read([String(field)]);
          if (!f) return undefined;
          if (field === 1 && segment === 'MSH') return f.toString();
          const rep = f.toArray()[repetition];
          if (!rep) return undefined;
          return rep.toArray()[component - 1]?.toString() ?? '';
        },
        walk() {
          let n = 0;
          for (const s of segments) {
            for (const f of s.toArray()) {
              for (const rep of f.toArray()) {
                for (const c of rep.toArray()) {
                  c.toString();
                  n++;
                }
              }
            }
          }
          return n;
        },
      };
    },
    isRefusal: (e) =>
      e instanceof Error && (e.constructor.name.startsWith('HL7') || e.message === 'text must begin with the MSH segment.'),
  };
}
