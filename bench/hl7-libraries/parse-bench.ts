/**
 * Parser measurements: the corpus (accepted / refused / crashed, agreement with the reference reading),
 * the synthetic probes, and throughput on the 10-OBX ORU.
 */
import type { CorpusItem, Probe } from './corpus.ts';
import { KEY_FIELDS, oru10, Reference } from './corpus.ts';
import type { ParserAdapter, Parsed } from './parsers.ts';

export interface CorpusResult {
  parser: string;
  items: number;
  accepted: number;
  refused: number;
  crashed: number;
  walkFailed: number;
  /** Accepted messages whose segment list differs from the reference reading. */
  segmentMismatch: number;
  /** Compared key values, and how many equal the reference (raw text or unescaped text). */
  valuesCompared: number;
  valuesEqualRaw: number;
  valuesEqualUnescaped: number;
  valuesDifferent: number;
  examples: string[];
  failures: string[];
}

function errorText(e: unknown): string {
  return e instanceof Error ? `${e.constructor.name}: ${e.message.split('\n')[0].slice(0, 120)}` : String(e);
}

export function runCorpus(adapter: ParserAdapter, corpus: readonly CorpusItem[]): CorpusResult {
  const r: CorpusResult = {
    parser: adapter.name,
    items: corpus.length,
    accepted: 0,
    refused: 0,
    crashed: 0,
    walkFailed: 0,
    segmentMismatch: 0,
    valuesCompared: 0,
    valuesEqualRaw: 0,
    valuesEqualUnescaped: 0,
    valuesDifferent: 0,
    examples: [],
    failures: [],
  };
  for (const item of corpus) {
    let parsed: Parsed;
    try {
      parsed = adapter.parse(item.text);
    } catch (e) {
      if (adapter.isRefusal(e)) r.refused++;
      else r.crashed++;
      r.failures.push(`${item.id}: ${adapter.isRefusal(e) ? 'refused' : 'CRASH'} ${errorText(e)}`);
      continue;
    }
    r.accepted++;
    try {
      parsed.walk();
    } catch (e) {
      r.walkFailed++;
      r.failures.push(`${item.id}: walk failed ${errorText(e)}`);
    }
    const ref = new Reference(item.text);
    const refNames = ref.names();
    let names: string[] = [];
    try {
      names = parsed.segmentNames();
    } catch (e) {
      r.failures.push(`${item.id}: segment list failed ${errorText(e)}`);
    }
    if (names.join(',') !== refNames.join(',')) {
      r.segmentMismatch++;
      if (r.examples.length < 12) {
        r.examples.push(`${item.id}: segments [${names.slice(0, 6).join(',')}${names.length > 6 ? ',…' : ''}] (${names.length}) vs reference ${refNames.length}`);
      }
    }
    for (const [seg, field, comp, rep] of KEY_FIELDS) {
      const occurrences = refNames.filter((n) => n === seg).length;
      for (let occ = 0; occ < occurrences; occ++) {
        const raw = ref.raw(seg, occ, field, comp, rep);
        if (raw === undefined || raw === '') continue;
        const unescaped = ref.unescaped(seg, occ, field, comp, rep);
        let got: string | undefined;
        try {
          got = parsed.value(seg, occ, field, comp, rep);
        } catch (e) {
          got = `(threw ${errorText(e)})`;
        }
        r.valuesCompared++;
        if (got === raw) r.valuesEqualRaw++;
        else if (got === unescaped || (unescaped !== undefined && got === unescaped.split(ref.d.subcomponent)[0])) r.valuesEqualUnescaped++;
        else {
          r.valuesDifferent++;
          if (r.examples.length < 12) {
            r.examples.push(`${item.id}: ${seg}[${occ}]-${field}.${comp}${rep ? `~${rep}` : ''} = ${JSON.stringify(got)} (sent ${JSON.stringify(raw)})`);
          }
        }
      }
    }
  }
  return r;
}

export interface ProbeResult {
  probe: string;
  what: string;
  outcome: 'accepted' | 'refused' | 'crashed' | 'bytes not supported';
  error?: string;
  values: { at: string; expected: string; got: string | undefined; ok: boolean }[];
  /** For probes that a careful parser should refuse: did it? */
  refusedAsItShould?: boolean;
}

export function runProbes(adapter: ParserAdapter, list: readonly Probe[]): ProbeResult[] {
  const out: ProbeResult[] = [];
  for (const probe of list) {
    const res: ProbeResult = { probe: probe.id, what: probe.what, outcome: 'accepted', values: [] };
    let parsed: Parsed | undefined;
    try {
      if (probe.bytes) {
        if (!adapter.parseBytes) {
          res.outcome = 'bytes not supported';
        } else {
          parsed = adapter.parseBytes(probe.bytes);
        }
      } else {
        parsed = adapter.parse(probe.text);
      }
    } catch (e) {
      res.outcome = adapter.isRefusal(e) ? 'refused' : 'crashed';
      res.error = errorText(e);
    }
    if (parsed) {
      for (const [seg, occ, field, comp, rep, expected] of probe.expect) {
        let got: string | undefined;
        try {
          got = parsed.value(seg, occ, field, comp, rep);
        } catch (e) {
          got = `(threw ${errorText(e)})`;
        }
        res.values.push({ at: `${seg}-${field}.${comp}${rep ? `~${rep}` : ''}`, expected, got, ok: got === expected });
      }
      if (probe.id === 'two-msh' || probe.id === 'no-encoding-chars' || probe.id === 'short-segment-name') {
        let names: string[] = [];
        try {
          names = parsed.segmentNames();
        } catch {
          names = ['(threw)'];
        }
        res.values.push({ at: 'segments', expected: '(refusal)', got: names.join(','), ok: false });
      }
    }
    if (probe.shouldRefuse) res.refusedAsItShould = res.outcome === 'refused';
    out.push(res);
  }
  return out;
}

export interface ThroughputResult {
  parser: string;
  bytes: number;
  iterations: number;
  /** Median of the rounds, messages per second. */
  parseOnlyPerSec: number;
  parseAndWalkPerSec: number;
  valuesPerMessage: number;
}

function rate(iterations: number, fn: (text: string) => void, texts: readonly string[]): number {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < iterations; i++) fn(texts[i % texts.length]);
  const ns = Number(process.hrtime.bigint() - t0);
  return iterations / (ns / 1e9);
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** Single thread, warm: 2,000 warm-up parses, then 3 rounds of `iterations`; the median round counts. */
export function runThroughput(adapter: ParserAdapter, iterations: number): ThroughputResult {
  // Distinct control ids so no library can cache a whole message string between iterations.
  const texts = Array.from({ length: 64 }, (_, i) => oru10(`CTRL-${String(i).padStart(4, '0')}`));
  let sink = 0;
  const parseOnly = (t: string): void => {
    const p = adapter.parse(t);
    sink += p === undefined ? 1 : 0;
  };
  const parseWalk = (t: string): void => {
    sink += adapter.parse(t).walk();
  };
  rate(2000, parseWalk, texts);
  const a: number[] = [];
  const b: number[] = [];
  for (let round = 0; round < 3; round++) {
    a.push(rate(iterations, parseOnly, texts));
    b.push(rate(iterations, parseWalk, texts));
  }
  const values = adapter.parse(texts[0]).walk();
  if (sink < 0) console.log(sink);
  return {
    parser: adapter.name,
    bytes: Buffer.byteLength(texts[0]),
    iterations,
    parseOnlyPerSec: Math.round(median(a)),
    parseAndWalkPerSec: Math.round(median(b)),
    valuesPerMessage: values,
  };
}
