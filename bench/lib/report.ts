/**
 * REPORT.md: the machine, every workload's throughput and latency beside its ceiling from the same
 * run and its published anchor per vCPU, the budgets of DESIGN.md with how far each is met or
 * missed and why (from the CPU each process used during the window), peak memory.
 */
import type { ModeConfig } from '../run.ts';
import type { Row, RowId, Skipped } from './results.ts';
import { ms } from './stats.ts';

export interface MachineInfo {
  mode: string;
  date: string;
  cpus: string;
  vcpus: number;
  memoryGb: number;
  os: string;
  node: string;
  postgres: string;
  commit: string;
  /** How ermis was configured for the run. */
  setup: string;
}

interface Anchor {
  label: string;
  /** The anchor's throughput per vCPU (per core), in the row's unit. */
  perVcpu: number;
}

/** Published figures, per vCPU of the published setup; sources and credibility in ../shared/reference/performance-anchors.md. */
const ANCHORS: Partial<Record<RowId, Anchor>> = {
  crud: { label: 'Medplum 1,420 req/s on 16 vCPU (HAPI 191/vCPU, Aidbox 326/vCPU)', perVcpu: 1420 / 16 },
  'search-mix': { label: 'Medplum 1,796 req/s on 16 vCPU (HAPI 63/vCPU, Aidbox 213/vCPU)', perVcpu: 1796 / 16 },
  import: { label: 'Medplum 764 resources/s on 16 vCPU (HAPI 138/vCPU, Aidbox 167/vCPU)', perVcpu: 764 / 16 },
  'tx-1': { label: 'Blaze 1,282 tx/s at 1 VU, 128-core EPYC 9555', perVcpu: 1282 / 128 },
  'tx-8': { label: 'Blaze 5,408 tx/s at 8 VUs, 128-core EPYC 9555', perVcpu: 5408 / 128 },
  'tx-32': { label: 'Blaze 5,617 tx/s at 64 VUs, 128-core EPYC 9555', perVcpu: 5617 / 128 },
  'read-by-id': { label: 'Blaze 48,868 req/s at 64 VUs, 24-core Ryzen (Medplum cluster: 347/vCPU authenticated)', perVcpu: 48868 / 24 },
  'scale-read': { label: 'Blaze 48,868 req/s at 64 VUs over 1M patients, 24-core Ryzen', perVcpu: 48868 / 24 },
  'oru-1': { label: 'InterSystems Ensemble 2015.1: 5,560 msg/s on 28 cores, persisted', perVcpu: 5560 / 28 },
  'oru-8': { label: 'InterSystems Ensemble 2015.1: 5,560 msg/s on 28 cores, persisted (Iguana: 486 msg/s a box)', perVcpu: 5560 / 28 },
  'adt-1': { label: 'InterSystems Ensemble 2015.1: 5,560 msg/s on 28 cores, persisted', perVcpu: 5560 / 28 },
  'adt-8': { label: 'InterSystems Ensemble 2015.1: 5,560 msg/s on 28 cores, persisted', perVcpu: 5560 / 28 },
};

/** Earlier measurements of the same ceilings on a 2-core development machine (performance-anchors.md §6; not published). */
const EARLIER_CEILINGS: Partial<Record<RowId, string>> = {
  'pg-single': 'pgbench resource + history row: 4,253 tx/s at c=8',
  'pg-20': 'pgbench 20 resources a transaction: 16.7k resources/s at c=8',
  'bare-create': 'thin fastify + pg: 5,545 creates/s at c=32',
  'bare-read': 'thin fastify + pg: 8,858 reads/s at c=32',
  'mllp-echo-1': '@medplum/hl7 echo: 3,726 msg/s on 1 connection',
  'mllp-echo-8': '@medplum/hl7 echo: 6,498 msg/s on 8 connections',
};

/** Which ceiling of the same run each ermis workload is compared with, and why that one. */
const CEILING_OF: Partial<Record<RowId, RowId>> = {
  crud: 'bare-create',
  'tx-1': 'pg-single',
  'tx-8': 'pg-single',
  'tx-32': 'pg-single',
  import: 'pg-20',
  'search-mix': 'bare-read',
  'read-by-id': 'bare-read',
  'scale-read': 'bare-read',
  'oru-1': 'mllp-echo-1',
  'adt-1': 'mllp-echo-1',
  'oru-8': 'mllp-echo-8',
  'adt-8': 'mllp-echo-8',
};

interface Budget {
  row: RowId;
  text: string;
  /** How the measurement compares: each check gives a verdict and a sentence. */
  checks: ((row: Row, rows: Map<RowId, Row>) => { met: boolean; text: string })[];
}

const atLeast = (target: number, unit: string) => (row: Row) => ({
  met: row.throughput >= target,
  text:
    row.throughput >= target
      ? `${fmt(row.throughput)} ${unit} ≥ ${fmt(target)}`
      : `${fmt(row.throughput)} ${unit} is ${pct(row.throughput / target)} of ${fmt(target)} (short by ${fmt(target - row.throughput)})`,
});

const latency = (which: 'p95' | 'p99', limit: number) => (row: Row) => {
  const value = row.load[which];
  return {
    met: value <= limit,
    text: value <= limit ? `${which} ${ms(value)} ms ≤ ${limit} ms` : `${which} ${ms(value)} ms is ${(value / limit).toFixed(1)}× the ${limit} ms`,
  };
};

const BUDGETS: Budget[] = [
  { row: 'crud', text: 'CRUD mix ≥ 1,300 req/s, p99 ≤ 50 ms', checks: [atLeast(1300, 'req/s'), latency('p99', 50)] },
  { row: 'search-mix', text: 'search mix (1k patients) ≥ 900 req/s, p99 ≤ 100 ms', checks: [atLeast(900, 'req/s'), latency('p99', 100)] },
  { row: 'import', text: 'Synthea bundle import ≥ 3,000 resources/s', checks: [atLeast(3000, 'resources/s')] },
  {
    row: 'read-by-id',
    text: 'read by id ≥ 50 % of the bare server\'s reads/s',
    checks: [
      (row, rows) => {
        const bare = rows.get('bare-read');
        if (!bare) {
          return { met: false, text: 'no bare-server read ceiling in this run' };
        }
        const ratio = row.throughput / bare.throughput;
        return { met: ratio >= 0.5, text: `${fmt(row.throughput)} req/s is ${pct(ratio)} of the bare server's ${fmt(bare.throughput)}${ratio >= 0.5 ? '' : ` (short by ${fmt(bare.throughput * 0.5 - row.throughput)} req/s)`}` };
      },
    ],
  },
  { row: 'oru-8', text: 'ORU^R01 (10 OBX) over MLLP ≥ 600 msg/s on 8 connections, ACK p99 ≤ 50 ms', checks: [atLeast(600, 'msg/s'), latency('p99', 50)] },
  { row: 'scale-search', text: 'search at 1M Observations (subject + code + _sort=-date) p95 ≤ 20 ms', checks: [latency('p95', 20)] },
];

/**
 * What each workload spends its time on, as measured in this project (CPU profiles of the server,
 * statement counts and Postgres logs taken while developing the bench): the standing part of "why".
 */
const COST_NOTES: Partial<Record<RowId, string>> = {
  crud:
    'Per request about 6 statements against the bare server\'s 1: the login check, the write (resource, history, outbox and 10–20 search-index rows in one prepared statement), an AuditEvent insert (AUDIT_EVENTS=all audits every request), BEGIN/COMMIT and a lock read for updates and deletes, the outbox dispatch. Per write the server validates against the R4 definitions and extracts index values with FHIRPath (about a third of its CPU). The server\'s JavaScript runs on one core; SERVER_WORKERS=2 did not help on 2 cores (CRUD −16 %, import +9 %), Postgres needs the other one.',
  'search-mix':
    'Postgres is the limit (about 1.6 of 2 cores, the server about 0.3): about 5 ms of Postgres CPU per search, for one SQL statement (planned anew for each request) with an EXISTS per parameter ordered by id with LIMIT 21, the login check and an AuditEvent insert. The id-ordered plan stops early for common values but crosses every non-matching resource of the type that comes before the matches: an earlier run that loaded Blaze\'s transaction Observations (no category) before the 1k patients managed 44 req/s. An index on (project, type, id) did not help (206 against 245 req/s). Next: prepared search statements, one AuditEvent insert for many requests, and a value-index-first plan where the matches are few.',
  import:
    'The server\'s one JavaScript thread is the limit (about 1.0 core busy, Postgres about 0.5): fhir-router handles the Bundle entry by entry, and each resource is validated, its search-index values extracted with FHIRPath and written with one prepared statement. The ceiling writes pre-serialised rows with two indexes.',
  'read-by-id': 'A read checks the token and the login (one select), reads by (project, type, id) and writes an AuditEvent (AUDIT_EVENTS=all); the bare server does one select.',
  'scale-read': 'As read by id, with the tables at 1M rows.',
  'oru-8':
    'Measured per ORU message: about 40 ms of server CPU and 40 ms of Postgres CPU, in about 60 SQL statements. The hl7-inbound bot runs in a warm process (decision 0012) with a login and token of its own per execution, makes about 6 API requests (duplicate check, patient match, order, earlier results; the lab profile is cached), each authenticated and audited (AUDIT_EVENTS=all), then writes one transaction of about 13 resources (10 Observations, the report, the log entry, the raw message) with a savepoint per entry. The budget (600 msg/s) leaves about 3 ms of CPU per message: it needs the mapping in-process (no API round trips) and one bulk write per message, not a faster bot. The ACK waits for all of it (original mode).',
  'oru-1': 'As ORU on 8 connections, one message at a time.',
  'adt-1': 'An ADT^A01 runs the bot as an ORU does: the duplicate check, a patient search and one transaction with the Patient and the log entry.',
  'adt-8': 'An ADT^A01 runs the bot as an ORU does: the duplicate check, a patient search and one transaction with the Patient and the log entry.',
  'scale-search': 'One compiled SQL statement over the token and reference index tables at 1M Observations (query plans in bench/SEARCH-SCALE.md).',
};

function fmt(n: number): string {
  if (!Number.isFinite(n)) {
    return '–';
  }
  return n >= 100 ? Math.round(n).toLocaleString('en') : n >= 10 ? n.toFixed(1) : n.toFixed(2);
}

function pct(ratio: number): string {
  return Number.isFinite(ratio) ? `${(ratio * 100).toFixed(ratio < 0.1 ? 1 : 0)} %` : '–';
}

function cpuText(row: Row, vcpus: number): string {
  const order = ['server', 'agent', 'echo', 'postgres', 'bench', 'other'];
  const names: Record<string, string> = { server: 'server', agent: 'agent', echo: 'echo', postgres: 'Postgres', bench: 'load generator', other: 'other' };
  const parts = order.filter((k) => row.cpu.cores[k] !== undefined).map((k) => `${names[k]} ${row.cpu.cores[k].toFixed(2)}`);
  const total = Object.values(row.cpu.cores).reduce((a, b) => a + b, 0);
  return `${parts.join(', ')} (of ${vcpus}; busy ${total.toFixed(2)})`;
}

/** The measured part of "why": where the CPU went during the window. */
function bottleneck(row: Row, vcpus: number): string {
  const c = row.cpu.cores;
  const total = Object.values(c).reduce((a, b) => a + b, 0);
  const server = (c.server ?? 0) + (c.agent ?? 0);
  const parts: string[] = [];
  if (total >= vcpus * 0.9) {
    parts.push(`the machine was CPU-bound (${total.toFixed(2)} of ${vcpus} cores busy: ${cpuText(row, vcpus)})`);
  } else if (total >= vcpus * 0.75) {
    parts.push(`the machine was nearly CPU-bound (${total.toFixed(2)} of ${vcpus} cores busy: ${cpuText(row, vcpus)}), little left for more concurrency`);
  } else {
    parts.push(`the machine was not CPU-bound (${total.toFixed(2)} of ${vcpus} cores: ${cpuText(row, vcpus)}), so time went to waiting (round trips, locks, fsync, one-at-a-time work)`);
  }
  if ((c.server ?? 0) >= 0.85) {
    parts.push('the server process was at about one core, the limit of its JavaScript thread');
  }
  if ((c.postgres ?? 0) > server && (c.postgres ?? 0) > 0.5) {
    parts.push('Postgres used more CPU than ermis');
  }
  return parts.join('; ');
}

export function writeReport(input: { machine: MachineInfo; mode: ModeConfig; rows: Row[]; skipped: Skipped[]; peaks: { process: string; mb: number }[]; minutes: number }): string {
  const { machine, rows, skipped, peaks } = input;
  const byId = new Map(rows.map((r) => [r.id, r]));
  const out: string[] = [];
  const line = (s = ''): void => {
    out.push(s);
  };
  line('# ermis benchmark report');
  line();
  line(
    `Written by \`npm run bench\`${machine.mode === 'full' ? '' : ` (${machine.mode} mode)`} on ${machine.date} at commit ${machine.commit}, in ${input.minutes.toFixed(1)} minutes. ` +
      'Every workload ran against processes started by the run (the ermis server as `node server/src/main.ts`, the agent, the ceiling servers) over 127.0.0.1, from an empty database the run created. ' +
      'The load generator is a Node process on the same machine and shares its cores. How to rerun and what each workload is: `bench/README.md`.'
  );
  line();
  line('## Machine');
  line();
  line('| | |');
  line('|---|---|');
  line(`| CPU | ${machine.cpus} |`);
  line(`| memory | ${machine.memoryGb.toFixed(0)} GiB |`);
  line(`| OS | ${machine.os} |`);
  line(`| Node | ${machine.node} |`);
  line(`| PostgreSQL | ${machine.postgres} |`);
  line(`| ermis | ${machine.setup} |`);
  line();

  line('## Budgets (DESIGN.md)');
  line();
  line('| budget | measured | verdict | why |');
  line('|---|---|---|---|');
  for (const budget of BUDGETS) {
    const row = byId.get(budget.row);
    if (!row) {
      const skip = skipped.find((s) => s.id === budget.row);
      line(`| ${budget.text} | not measured: ${skip?.reason ?? 'the workload did not run'} | – | – |`);
      continue;
    }
    const results = budget.checks.map((check) => check(row, byId));
    const met = results.every((r) => r.met) && row.load.errors === 0;
    const errors = row.load.errors ? `; ${row.load.errors} errors` : '';
    const why = met ? '–' : `${bottleneck(row, machine.vcpus)}. ${COST_NOTES[budget.row] ?? ''}`.trim();
    line(`| ${budget.text} | ${results.map((r) => r.text).join('; ')}${errors} | **${met ? 'met' : 'missed'}** | ${why} |`);
  }
  line();

  line('## Workloads');
  line();
  line('Throughput over the measured window (after a warm-up); latency from send to the complete response (HTTP) or the ACK (MLLP). The ceiling is the row of the same run named in the column; the anchor is the published figure divided by the vCPUs (cores) it ran on, against ours divided by ' + `${machine.vcpus}. CPU is cores used during the window.`);
  line();
  line('| workload | conn. | throughput | p50 ms | p95 ms | p99 ms | requests | errors | ceiling (this run) | vs ceiling | anchor per vCPU | vs anchor | CPU (cores) |');
  line('|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---:|---|');
  for (const row of rows) {
    const ceilingId = CEILING_OF[row.id];
    const ceiling = ceilingId ? byId.get(ceilingId) : undefined;
    const anchor = ANCHORS[row.id];
    const earlier = EARLIER_CEILINGS[row.id];
    const ceilingCell = row.kind === 'ceiling' ? `is a ceiling (earlier on a 2-core box: ${earlier ?? '–'})` : ceiling ? `${ceiling.id}: ${fmt(ceiling.throughput)} ${ceiling.unit}` : 'none: a latency budget';
    const ratio = ceiling ? pct(row.throughput / ceiling.throughput) : '–';
    const anchorCell = anchor ? `${fmt(anchor.perVcpu)} ${row.unit} (${anchor.label})` : row.kind === 'ceiling' ? 'the machine itself' : 'none published';
    const anchorRatio = anchor ? `${(row.throughput / machine.vcpus / anchor.perVcpu).toFixed(2)}×` : '–';
    const note = row.note ? ` — ${row.note}` : '';
    line(
      `| \`${row.id}\` ${row.workload}${note} | ${row.connections} | ${fmt(row.throughput)} ${row.unit} | ${ms(row.load.p50)} | ${ms(row.load.p95)} | ${ms(row.load.p99)} | ${row.load.requests.toLocaleString('en')} | ${row.load.errors} | ${ceilingCell} | ${ratio} | ${anchorCell} | ${anchorRatio} | ${cpuText(row, machine.vcpus)} |`
    );
  }
  for (const skip of skipped) {
    line(`| \`${skip.id}\` ${skip.workload} | – | not run: ${skip.reason} | – | – | – | – | – | – | – | – | – | – |`);
  }
  line();

  const errored = rows.filter((r) => r.load.errorSamples.length);
  if (errored.length) {
    line('### Errors');
    line();
    for (const row of errored) {
      line(`- \`${row.id}\`: ${row.load.errors} errors; first: ${row.load.errorSamples.map((s) => `\`${s.replace(/`/g, "'")}\``).join('; ')}`);
    }
    line();
  }

  for (const id of ['crud', 'search-mix'] as const) {
    const row = byId.get(id);
    if (!row) {
      continue;
    }
    line(`### Per operation: \`${id}\``);
    line();
    line('| operation | requests | errors | p50 ms | p95 ms | p99 ms |');
    line('|---|---:|---:|---:|---:|---:|');
    for (const op of row.load.ops) {
      line(`| ${op.op} | ${op.count.toLocaleString('en')} | ${op.errors} | ${ms(op.p50)} | ${ms(op.p95)} | ${ms(op.p99)} |`);
    }
    line();
  }

  line('## Peak memory');
  line();
  line('| process | peak resident (VmHWM) |');
  line('|---|---:|');
  for (const peak of peaks) {
    line(`| ${peak.process} | ${Number.isFinite(peak.mb) ? `${peak.mb.toFixed(0)} MB` : '–'} |`);
  }
  line();

  line('## How the ports differ from the originals');
  line();
  line('- CRUD mix: Health Samurai run 300 VUs for 10 minutes with k6 on a 64-core host; here 32 connections (more only queue on 2 cores) from a Node/undici driver, resources of the same types and links written for ermis (their seed files are not reproduced). Deletes accept 200 or 204.');
  line('- Search mix: the string, date and token groups of their `searchConfig.js` with its values. Token values such as `http://loinc.org|8302-2` and `AMB,EMER` are sent as system|code and OR lists; their script escapes `|` and `,` in every value, which turns those into searches for literal codes that match nothing.');
  line('- Import: Synthea cannot be built or downloaded here; the bundles come from `bench/lib/synthea-bundles.ts` (the shape of a Synthea patient bundle, fewer encounters per patient), posted by 8 connections instead of 20 VUs.');
  line('- Transaction: Blaze\'s two-entry Bundle as in its `transaction.js`, from an empty table on this machine\'s disk.');
  line('- HL7: messages sent with the agent\'s own MLLP client; the ACK of ORU and ADT is the hl7-inbound bot\'s, after its transaction committed (original mode).');
  line('- Anchors come from other hardware (8–128 cores, dedicated load generators); the per-vCPU ratio is indicative only. The anchors\' sources and credibility: `../shared/reference/performance-anchors.md`.');
  line();
  return out.join('\n');
}
