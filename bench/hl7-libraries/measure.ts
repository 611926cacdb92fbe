/**
 * HL7 v2 libraries against what ermis already has, on the shared corpus (DESIGN.md, "Facts about the
 * packages"; decision docs/decisions/0010-hl7-parser-and-transport.md).
 *
 *   node bench/hl7-libraries/measure.ts --libs /tmp/hl7libs [--corpus ../shared/testdata]
 *        [--iterations 20000] [--seconds 3] [--connections 8] [--only parse,transport,install]
 *        [--npm-view] [--out /tmp/hl7-libraries.json]
 *
 * Parsers: @medplum/core 5.2.13 Hl7Message (the repo's), @medplum/core 5.0.10 (the one @medplum/hl7
 * pins; in a child process), hl7v2 1.8.0 lenient and strict, node-hl7-client (node-hl7-server's parser).
 * Transports: node-hl7-server 2.5.0, @medplum/hl7 5.0.10 Hl7Server, and a bench-local baseline framing.
 * The packages are not ermis dependencies: see README.md for the scratch directory.
 */
import { Hl7Message } from '@medplum/core';
import { fork } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { corpusRoot, loadCorpus, probes } from './corpus.ts';
import { installFacts } from './install-facts.ts';
import type { InstallFacts } from './install-facts.ts';
import { libsDir, loadFrom, medplumHl7Dir, packageVersion } from './load.ts';
import type { CorpusResult, ProbeResult, ThroughputResult } from './parse-bench.ts';
import { runCorpus, runProbes, runThroughput } from './parse-bench.ts';
import { coreAdapter, hl7v2Adapter, nodeHl7ClientAdapter } from './parsers.ts';
import type { ParserAdapter } from './parsers.ts';
import { roundTrip, SCENARIOS } from './transport.ts';
import type { RoundTripResult, ScenarioResult } from './transport.ts';

const argv = process.argv.slice(2);
const opt = (name: string, fallback: string): string => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : fallback;
};
const libs = libsDir(argv);
const iterations = Number(opt('iterations', '20000'));
const seconds = Number(opt('seconds', '3'));
const connections = Number(opt('connections', '8'));
const only = new Set(opt('only', 'parse,transport,install').split(','));
const out = opt('out', '');
const log = (s: string): void => console.log(s);

interface ParseReport {
  corpus: CorpusResult;
  probes: ProbeResult[];
  throughput: ThroughputResult;
}

const results: {
  machine: Record<string, unknown>;
  parse: ParseReport[];
  transport: ScenarioResult[];
  roundTrip: RoundTripResult[];
  install: InstallFacts[];
} = {
  machine: { node: process.version, cpus: os.cpus().length, cpu: os.cpus()[0]?.model, date: new Date().toISOString() },
  parse: [],
  transport: [],
  roundTrip: [],
  install: [],
};

function childParse(): Promise<ParseReport> {
  return new Promise((resolve, reject) => {
    const proc = fork(
      path.join(import.meta.dirname, 'child.ts'),
      ['parse-core-5.0.10', String(iterations), '--libs', libs, '--corpus', corpusRoot(argv)],
      { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] },
    );
    proc.once('message', (m) => {
      resolve(m as ParseReport);
      proc.kill();
    });
    proc.once('exit', (code) => (code ? reject(new Error(`core 5.0.10 child exited with ${code}`)) : undefined));
  });
}

if (only.has('parse')) {
  const corpus = loadCorpus(corpusRoot(argv));
  log(`# Parsers — ${corpus.length} corpus items from ${corpusRoot(argv)}\n`);
  const hl7v2 = await loadFrom(libs, 'hl7v2');
  const nhc = await loadFrom(path.join(libs, 'node_modules', 'node-hl7-server'), 'node-hl7-client');
  const adapters: ParserAdapter[] = [
    coreAdapter('@medplum/core 5.2.13', Hl7Message),
    hl7v2Adapter(hl7v2, false),
    hl7v2Adapter(hl7v2, true),
    nodeHl7ClientAdapter(nhc, packageVersion(path.join(libs, 'node_modules', 'node-hl7-server'), 'node-hl7-client')),
  ];
  for (const a of adapters) {
    results.parse.push({ corpus: runCorpus(a, corpus), probes: runProbes(a, probes()), throughput: runThroughput(a, iterations) });
  }
  results.parse.push(await childParse());
  log('| parser | accepted | refused | crashed | segment lists ≠ reference | key values: verbatim / unescaped (or 1st subcomponent) / other | parse msg/s | parse+read all msg/s |');
  log('|---|---|---|---|---|---|---|---|');
  for (const r of results.parse) {
    const c = r.corpus;
    log(
      `| ${c.parser} | ${c.accepted} | ${c.refused} | ${c.crashed} | ${c.segmentMismatch} | ${c.valuesEqualRaw} / ${c.valuesEqualUnescaped} / ${c.valuesDifferent} | ${r.throughput.parseOnlyPerSec.toLocaleString('en')} | ${r.throughput.parseAndWalkPerSec.toLocaleString('en')} |`,
    );
  }
  log(`\n(throughput: ${results.parse[0]?.throughput.bytes} byte ORU^R01 with 10 OBX, median of 3 × ${iterations}, one thread, warm)\n`);
  for (const r of results.parse) {
    log(`## ${r.corpus.parser}`);
    for (const e of r.corpus.failures.slice(0, 4)) log(`- corpus: ${e}`);
    if (r.corpus.failures.length > 4) log(`- corpus: … ${r.corpus.failures.length - 4} more`);
    for (const e of r.corpus.examples.slice(0, 5)) log(`- differs: ${e}`);
    for (const p of r.probes) {
      const vals = p.values.map((v) => `${v.at}=${JSON.stringify(v.got)}${v.ok ? ' ✓' : v.expected === '(refusal)' ? '' : ` ✗ (want ${JSON.stringify(v.expected)})`}`).join('; ');
      log(`- probe ${p.probe}: ${p.outcome}${p.error ? ` (${p.error})` : ''}${vals ? ` — ${vals}` : ''}`);
    }
    log('');
  }
}

if (only.has('transport')) {
  log('# Transports\n');
  for (const kind of ['node-hl7-server', 'medplum-hl7', 'baseline']) {
    log(`## ${kind}`);
    for (const [name, scenario] of Object.entries(SCENARIOS)) {
      let r: ScenarioResult;
      try {
        r = await scenario(kind, libs);
      } catch (e) {
        r = { server: kind, scenario: name, verdict: `bench error: ${(e as Error).message}`, detail: {} };
      }
      results.transport.push(r);
      const errs = Array.isArray(r.detail.serverErrors) && r.detail.serverErrors.length ? ` [server errors: ${r.detail.serverErrors.join(' | ')}]` : '';
      const calls = typeof r.detail.serverMessages === 'number' ? ` [handler calls: ${r.detail.serverMessages}]` : '';
      log(`- ${name}: ${r.verdict}${calls}${errs}${name.startsWith('oversized') ? ` [server RSS ${String(r.detail.serverRssMiB)} MiB, idle ${String(r.detail.baselineRssMiB)} MiB]` : ''}`);
    }
    log('');
  }
  log(`| server | connections | msg/s | p50 ms | p99 ms | timeouts | ACKs with a wrong MSA-2 | handler calls per message | server CPU ms |`);
  log('|---|---|---|---|---|---|---|---|---|');
  for (const kind of ['node-hl7-server', 'medplum-hl7', 'baseline']) {
    const r = await roundTrip(kind, libs, connections, seconds);
    results.roundTrip.push(r);
    log(`| ${kind} | ${r.connections} | ${r.perSec.toLocaleString('en')} | ${r.p50Ms} | ${r.p99Ms} | ${r.timeouts} | ${r.wrongAcks} | ${r.handlerCallsPerMessage} | ${r.serverCpuMs} |`);
  }
  log(`\n(round trip: ${connections} connections, stop-and-wait, ${seconds} s after 0.5 s warm-up, ACK sent at once)\n`);
}

if (only.has('install')) {
  log('# Install facts\n');
  log('| package | licence | deps | closure MiB | licences | published | latest (date) | peers | npm ls problems |');
  log('|---|---|---|---|---|---|---|---|---|');
  const list: [string, string][] = [
    [libs, 'hl7v2'],
    [libs, 'node-hl7-server'],
    [medplumHl7Dir(libs), '@medplum/hl7'],
  ];
  for (const [dir, name] of list) {
    const f = installFacts(dir, name, argv.includes('--npm-view'));
    results.install.push(f);
    log(
      `| ${f.package}@${f.version} | ${f.licence} | ${f.dependencies} | ${(f.closureBytes / 1048576).toFixed(1)} | ${Object.entries(f.licences).map(([l, n]) => `${l}×${n}`).join(', ')} | ${f.published?.slice(0, 10) ?? '–'} | ${f.latest ?? '–'} (${f.latestPublished?.slice(0, 10) ?? '–'}) | ${Object.entries(f.peerDependencies).map(([p, v]) => `${p} ${v}`).join(', ') || '–'} | ${f.npmLsProblems.join('; ') || 'none'} |`,
    );
    log(`|  | largest: ${f.largest.join(', ')} |||||||| `);
  }
}

if (out) {
  writeFileSync(out, JSON.stringify(results, null, 2));
  log(`\nfull results: ${out}`);
}
