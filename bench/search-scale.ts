/**
 * Search at scale: latency of typical searches against a database filled by bench/generate.ts
 * (10,000 patients, 1,000,000 Observations), the SQL the server runs for each and its plan, and
 * Observation create throughput at that size. Writes bench/SEARCH-SCALE.md.
 *
 *   node bench/search-scale.ts <database-url> [--queries 300] [--warmup 40] [--create-seconds 20]
 *                              [--seed 1] [--out bench/SEARCH-SCALE.md] [--no-creates] [--no-wait] [--only a,b]
 *
 * The server runs in this process (Fastify on 127.0.0.1, a random port); queries go over HTTP, one
 * at a time, so each latency is a full request (routing, compile, SQL, JSON). The SQL is recorded by
 * wrapping pg's Client.prototype.query in this process only.
 */
import type { Bundle, Observation, Resource } from '@medplum/fhirtypes';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import type { ServerServices } from '../server/src/services.ts';
import { CpuMeter, ForeignCpu } from './lib/db.ts';
import { patientRecord } from './lib/fake.ts';
import { loadFixtures, SHAPES } from './lib/queries.ts';
import type { Fixtures, Shape } from './lib/queries.ts';
import { Rng } from './lib/rng.ts';
import { adminAuthorization, benchProjectId, benchRepo, buildHttpApp, serverSrcDir, startServices } from './lib/server.ts';
import { isExplainable, SqlCapture } from './lib/sql-capture.ts';
import type { CapturedSql } from './lib/sql-capture.ts';
import { mean, ms, percentile } from './lib/stats.ts';

const ANALYSIS_MARKER = '<!-- analysis: everything below this line is hand-written and kept when the bench rewrites this file -->';

interface Options {
  databaseUrl: string;
  queries: number;
  warmup: number;
  createSeconds: number;
  seed: number;
  out: string;
  creates: boolean;
  only: string[] | undefined;
  /** wait for other processes to go quiet before each measurement */
  waitQuiet: boolean;
}

function parseArgs(argv: string[]): Options {
  const o: Options = {
    databaseUrl: '',
    queries: 300,
    warmup: 40,
    createSeconds: 20,
    seed: 1,
    out: path.join(import.meta.dirname, 'SEARCH-SCALE.md'),
    creates: true,
    only: undefined,
    waitQuiet: true,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const num = (): number => {
      const n = Number(argv[++i]);
      if (!Number.isFinite(n) || n < 0) {
        usage(`invalid value for ${a}`);
      }
      return n;
    };
    if (a === '--queries') {
      o.queries = num();
    } else if (a === '--warmup') {
      o.warmup = num();
    } else if (a === '--create-seconds') {
      o.createSeconds = num();
    } else if (a === '--seed') {
      o.seed = num();
    } else if (a === '--out') {
      o.out = path.resolve(argv[++i]);
    } else if (a === '--no-creates') {
      o.creates = false;
    } else if (a === '--no-wait') {
      o.waitQuiet = false;
    } else if (a === '--only') {
      o.only = argv[++i].split(',');
    } else if (a.startsWith('-')) {
      usage(`unknown option ${a}`);
    } else {
      o.databaseUrl = a;
    }
  }
  if (!o.databaseUrl) {
    usage('missing database URL');
  }
  return o;
}

function usage(message: string): never {
  console.error(message);
  console.error(
    'usage: node bench/search-scale.ts <database-url> [--queries 300] [--warmup 40] [--create-seconds 20] [--seed 1] [--out file] [--no-creates] [--no-wait] [--only shape,...]'
  );
  process.exit(2);
}

// ------------------------------------------------------------------ measurement

interface Sample {
  url: string;
  ms: number;
  status: number;
  matches: number;
  included: number;
  total: number | undefined;
  sql: CapturedSql[];
  bytes: number;
  encoding: string;
  error?: string;
}

interface ShapeResult {
  shape: Shape;
  samples: Sample[];
  foreignCores: number;
  attempts: number;
  plans: PlanReport[];
}

interface PlanReport {
  label: string;
  url: string;
  ms: number;
  statements: { sql: string; values: unknown[] | undefined; ms: number; plan: string; usage: IndexUsage }[];
}

interface IndexUsage {
  indexes: string[];
  seqScans: string[];
}

/** The admin's `Authorization` header, set once the server is up. */
let authorization = '';

async function request(fhirBase: string, url: string): Promise<{ ms: number; status: number; body: string; encoding: string }> {
  const started = performance.now();
  // Node's fetch asks for gzip/deflate/br like a browser does, so large bundles come back compressed
  const res = await fetch(fhirBase + url, { headers: { accept: 'application/fhir+json', authorization } });
  const body = await res.text();
  return { ms: performance.now() - started, status: res.status, body, encoding: res.headers.get('content-encoding') ?? 'identity' };
}

function summarizeBody(status: number, body: string): Pick<Sample, 'matches' | 'included' | 'total' | 'error'> {
  try {
    const json = JSON.parse(body) as Bundle | { resourceType: 'OperationOutcome'; issue?: { details?: { text?: string }; diagnostics?: string }[] };
    if (json.resourceType === 'Bundle') {
      const entries = json.entry ?? [];
      const matches = entries.filter((e) => e.search?.mode !== 'include').length;
      return { matches, included: entries.length - matches, total: json.total };
    }
    const issue = (json as { issue?: { details?: { text?: string }; diagnostics?: string }[] }).issue?.[0];
    return { matches: 0, included: 0, total: undefined, error: `${status}: ${issue?.details?.text ?? issue?.diagnostics ?? body.slice(0, 200)}` };
  } catch {
    return { matches: 0, included: 0, total: undefined, error: `${status}: ${body.slice(0, 200)}` };
  }
}

function indexUsage(plan: string): IndexUsage {
  const indexes = new Set<string>();
  const seqScans = new Set<string>();
  for (const m of plan.matchAll(/Index (?:Only )?Scan(?: Backward)? using (\S+) on (\S+)/g)) {
    indexes.add(`${m[1]} (${m[2]})`);
  }
  for (const m of plan.matchAll(/Bitmap Index Scan on (\S+)/g)) {
    indexes.add(`${m[1]} (bitmap)`);
  }
  for (const m of plan.matchAll(/Seq Scan on (\S+)/g)) {
    seqScans.add(m[1]);
  }
  return { indexes: [...indexes], seqScans: [...seqScans] };
}

async function explain(db: pg.Client, sql: CapturedSql): Promise<string> {
  try {
    await db.query("SET statement_timeout = '120s'");
    const { rows } = await db.query<{ 'QUERY PLAN': string }>(`EXPLAIN (ANALYZE, BUFFERS) ${sql.text}`, sql.values as unknown[]);
    return rows.map((r) => r['QUERY PLAN']).join('\n');
  } catch (err) {
    return `EXPLAIN failed: ${(err as Error).message}`;
  }
}

async function planReport(db: pg.Client, label: string, sample: Sample): Promise<PlanReport> {
  const statements: PlanReport['statements'] = [];
  for (const sql of sample.sql.filter(isExplainable)) {
    const plan = await explain(db, sql);
    statements.push({ sql: sql.text, values: sql.values, ms: sql.ms, plan, usage: indexUsage(plan) });
  }
  return { label, url: sample.url, ms: sample.ms, statements };
}

/** Waits (up to maxSeconds) until other processes use less than `threshold` cores, so a figure is not taken under someone else's load. */
async function waitForQuiet(foreign: ForeignCpu, threshold = 0.3, maxSeconds = 180): Promise<number> {
  const until = performance.now() + maxSeconds * 1000;
  let load = 0;
  do {
    await foreign.start();
    await new Promise((r) => setTimeout(r, 3000));
    load = foreign.stop();
    if (load < threshold) {
      return load;
    }
    console.log(`  other processes use ${load.toFixed(2)} cores; waiting for a quieter machine...`);
  } while (performance.now() < until);
  return load;
}

/** Other-process load (cores) under which a measurement is kept; above it, it is repeated (up to MAX_ATTEMPTS). */
const QUIET_CORES = 0.25;
const MAX_ATTEMPTS = 3;

async function measureShape(
  shape: Shape,
  options: Options,
  fixtures: Fixtures,
  fhirBase: string,
  capture: SqlCapture,
  foreign: ForeignCpu,
  explainDb: pg.Client
): Promise<ShapeResult> {
  let best: { samples: Sample[]; foreignCores: number } | undefined;
  let attempts = 0;
  while (attempts < MAX_ATTEMPTS && (!best || best.foreignCores >= QUIET_CORES)) {
    attempts++;
    if (options.waitQuiet) {
      await waitForQuiet(foreign);
    }
    // the same queries on every attempt
    const rng = new Rng(options.seed * 1000 + SHAPES.indexOf(shape));
    for (let i = 0; i < options.warmup; i++) {
      await request(fhirBase, shape.make(rng, fixtures));
    }
    const samples: Sample[] = [];
    await foreign.start();
    for (let i = 0; i < options.queries; i++) {
      const url = shape.make(rng, fixtures);
      capture.start();
      const r = await request(fhirBase, url);
      const sql = capture.stop();
      samples.push({ url, ms: r.ms, status: r.status, sql, bytes: r.body.length, encoding: r.encoding, ...summarizeBody(r.status, r.body) });
    }
    const foreignCores = foreign.stop();
    if (!best || foreignCores < best.foreignCores) {
      best = { samples, foreignCores };
    }
    if (foreignCores >= QUIET_CORES && options.waitQuiet && attempts < MAX_ATTEMPTS) {
      console.log(`  other processes used ${foreignCores.toFixed(2)} cores during the measurement; measuring again`);
    }
  }
  const { samples, foreignCores } = best as { samples: Sample[]; foreignCores: number };
  const sorted = [...samples].sort((a, b) => a.ms - b.ms);
  const median = sorted[Math.floor(sorted.length / 2)];
  const slowest = sorted[sorted.length - 1];
  const plans = [await planReport(explainDb, 'median query', median)];
  if (slowest !== median) {
    plans.push(await planReport(explainDb, 'slowest query', slowest));
  }
  return { shape, samples, foreignCores, attempts, plans };
}

// ------------------------------------------------------------------ create throughput

interface CreateResult {
  mode: string;
  description: string;
  concurrency: number;
  seconds: number;
  resources: number;
  requests: number;
  latencies: number[];
  errors: number;
  nodeCores: number;
  machineCores: number;
  foreignCores: number;
}

function observationSource(dataset: { patients: number; observationsPerPatient: number }, seed: number): () => Observation {
  const rng = new Rng(seed);
  let queue: Observation[] = [];
  return () => {
    if (queue.length === 0) {
      // real-looking results for a random existing patient (references to its encounters stay valid)
      const n = rng.int(0, dataset.patients - 1);
      queue = patientRecord(n, Math.max(dataset.observationsPerPatient, 20)).observations;
    }
    const obs = queue.pop() as Observation;
    delete obs.id;
    return obs;
  };
}

async function runFor(
  seconds: number,
  concurrency: number,
  task: () => Promise<{ resources: number; ok: boolean }>
): Promise<{ seconds: number; resources: number; requests: number; latencies: number[]; errors: number; nodeCores: number; machineCores: number }> {
  const cpu = new CpuMeter();
  const started = performance.now();
  const deadline = started + seconds * 1000;
  let resources = 0;
  let requests = 0;
  let errors = 0;
  const latencies: number[] = [];
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < deadline) {
        const t = performance.now();
        const r = await task().catch(() => ({ resources: 0, ok: false }));
        latencies.push(performance.now() - t);
        requests++;
        if (r.ok) {
          resources += r.resources;
        } else {
          errors++;
        }
      }
    })
  );
  const elapsed = (performance.now() - started) / 1000;
  const c = cpu.sample();
  return { seconds: elapsed, resources, requests, latencies, errors, nodeCores: c.processCores, machineCores: c.machineCores };
}

async function measureCreates(
  services: ServerServices,
  fhirBase: string,
  dataset: { patients: number; observationsPerPatient: number },
  options: Options,
  foreign: ForeignCpu
): Promise<CreateResult[]> {
  const results: CreateResult[] = [];
  const repo = benchRepo(services);
  const Repository = repo.constructor as new (s: typeof services, c: typeof repo.context) => typeof repo;
  const noParameters = { get: () => undefined } as unknown as typeof services.registry;
  const unindexed = new Repository({ ...services, registry: noParameters }, repo.context);
  const next = observationSource(dataset, options.seed + 7);
  const modes: { mode: string; description: string; concurrency: number; task: () => Promise<{ resources: number; ok: boolean }> }[] = [
    {
      mode: 'repository createResource',
      description: 'in-process `repo.createResource(observation)` (unrestricted repository), one statement (autocommit) per create',
      concurrency: 8,
      task: async () => {
        await repo.createResource(next());
        return { resources: 1, ok: true };
      },
    },
    {
      // The same write path with a repository whose parameter dictionary is empty: no index rows are
      // extracted or written, so the difference to the mode above is the cost of the search index.
      mode: 'repository createResource, search index off',
      description: 'as above, but no search parameter is indexed (resource and history rows only)',
      concurrency: 8,
      task: async () => {
        await unindexed.createResource(next());
        return { resources: 1, ok: true };
      },
    },
    {
      mode: 'HTTP POST /Observation',
      description: '`POST /fhir/R4/Observation` over loopback, `Prefer: return=minimal`; the client shares the process and the 2 cores',
      concurrency: 8,
      task: async () => {
        const res = await fetch(fhirBase + 'Observation', {
          method: 'POST',
          headers: { 'content-type': 'application/fhir+json', prefer: 'return=minimal', authorization },
          body: JSON.stringify(next()),
        });
        await res.arrayBuffer();
        return { resources: 1, ok: res.status === 201 };
      },
    },
    {
      mode: 'HTTP transaction Bundle (50 Observations)',
      description: '`POST /fhir/R4/` with a transaction Bundle of 50 Observation POST entries',
      concurrency: 4,
      task: async () => {
        const entry = Array.from({ length: 50 }, () => ({ resource: next() as Resource, request: { method: 'POST' as const, url: 'Observation' } }));
        const res = await fetch(fhirBase, {
          method: 'POST',
          headers: { 'content-type': 'application/fhir+json', prefer: 'return=minimal', authorization },
          body: JSON.stringify({ resourceType: 'Bundle', type: 'transaction', entry }),
        });
        await res.arrayBuffer();
        return { resources: 50, ok: res.status === 200 };
      },
    },
  ];
  for (const m of modes) {
    let best: CreateResult | undefined;
    for (let attempt = 1; attempt <= MAX_ATTEMPTS && (!best || best.foreignCores >= QUIET_CORES); attempt++) {
      if (options.waitQuiet) {
        await waitForQuiet(foreign);
      }
      console.log(`create throughput: ${m.mode}, ${options.createSeconds} s, concurrency ${m.concurrency}...`);
      await runFor(2, m.concurrency, m.task); // warm-up
      await foreign.start();
      const r = await runFor(options.createSeconds, m.concurrency, m.task);
      const result = { mode: m.mode, description: m.description, concurrency: m.concurrency, ...r, foreignCores: foreign.stop() };
      console.log(
        `  ${Math.round(r.resources / r.seconds)} resources/s, p99 ${ms(percentile(r.latencies, 99))} ms, errors ${r.errors}, other load ${result.foreignCores.toFixed(2)} cores`
      );
      if (!best || result.foreignCores < best.foreignCores) {
        best = result;
      }
      if (!options.waitQuiet) {
        break;
      }
    }
    results.push(best as CreateResult);
  }
  return results;
}

/** Removes what the create measurement wrote (everything newer than `maxRid`), so the data set stays as generated. */
async function removeCreated(db: pg.Client, maxRid: string): Promise<number> {
  await db.query('BEGIN');
  for (const table of ['sp_token', 'sp_string', 'sp_date', 'sp_quantity', 'sp_reference', 'resource_history', 'binary_content']) {
    await db.query(`DELETE FROM ${table} WHERE rid > $1`, [maxRid]);
  }
  const { rowCount } = await db.query('DELETE FROM resource WHERE rid > $1', [maxRid]);
  await db.query('COMMIT');
  return rowCount ?? 0;
}

// ------------------------------------------------------------------ environment

interface Environment {
  cpuModel: string;
  cores: number;
  memoryGiB: number;
  kernel: string;
  node: string;
  postgres: string;
  settings: Record<string, string>;
  databaseSize: string;
  tables: { name: string; rows: number; size: string }[];
  resources: { type: string; n: number }[];
  server: string;
  dataset: { patients: number; observationsPerPatient: number };
  notes: string[];
  loads: { finishedAt: string; resourcesWritten: number; seconds: number; resourcesPerSecond: number; concurrency: number; nodeCores: number; machineBusyCores: number; complete: boolean; server?: string }[];
}

function serverDescription(): string {
  const dir = serverSrcDir();
  if (process.env.ERMIS_SERVER_LABEL) {
    return `${process.env.ERMIS_SERVER_LABEL} (${dir})`;
  }
  try {
    const repoRoot = path.resolve(dir, '..', '..');
    const head = execFileSync('git', ['-C', repoRoot, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    const dirty = execFileSync('git', ['-C', repoRoot, 'status', '--porcelain', '--', 'server/src'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    return `${dir} at ${head}${dirty ? ' with uncommitted changes in server/src' : ''}`;
  } catch {
    return dir;
  }
}

async function environment(db: pg.Client): Promise<Environment> {
  const version = (await db.query<{ v: string }>('SELECT version() AS v')).rows[0].v;
  const settings: Record<string, string> = {};
  for (const name of ['shared_buffers', 'effective_cache_size', 'work_mem', 'random_page_cost', 'synchronous_commit', 'max_wal_size', 'jit']) {
    settings[name] = (await db.query<{ s: string }>(`SELECT current_setting($1) AS s`, [name])).rows[0].s;
  }
  const size = (await db.query<{ s: string }>('SELECT pg_size_pretty(pg_database_size(current_database())) AS s')).rows[0].s;
  const tables = await db.query<{ name: string; rows: string; size: string }>(
    `SELECT c.relname AS name, c.reltuples::bigint AS rows, pg_size_pretty(pg_total_relation_size(c.oid)) AS size
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY pg_total_relation_size(c.oid) DESC LIMIT 10`
  );
  const resources = await db.query<{ type: string; n: string }>(
    'SELECT resource_type AS type, count(*) AS n FROM resource WHERE NOT deleted GROUP BY 1 ORDER BY 2 DESC'
  );
  let dataset = { patients: 0, observationsPerPatient: 0 };
  let loads: Environment['loads'] = [];
  const notes: string[] = [];
  const hasRun = await db.query("SELECT 1 FROM pg_class WHERE relname = 'bench_run'");
  if (hasRun.rowCount) {
    const runs = await db.query<{ key: string; value: never }>('SELECT key, value FROM bench_run ORDER BY key');
    for (const r of runs.rows) {
      if (r.key === 'dataset') {
        dataset = r.value;
      } else if (r.key.startsWith('load:')) {
        loads.push(r.value);
      } else {
        notes.push(`${r.key}: ${(r.value as { note?: string }).note ?? JSON.stringify(r.value)}`);
      }
    }
  }
  loads = loads.sort((a, b) => a.finishedAt.localeCompare(b.finishedAt));
  return {
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    cores: os.cpus().length,
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    postgres: version.split(' on ')[0],
    settings,
    databaseSize: size,
    tables: tables.rows.map((t) => ({ name: t.name, rows: Number(t.rows), size: t.size })),
    resources: resources.rows.map((r) => ({ type: r.type, n: Number(r.n) })),
    server: serverDescription(),
    dataset,
    notes,
    loads,
  };
}

// ------------------------------------------------------------------ report

const n0 = (n: number): string => Math.round(n).toLocaleString('en-US');

function verdict(value: number, budget: number | undefined): string {
  if (budget === undefined) {
    return '';
  }
  return value <= budget ? '**met**' : `**missed** (${(value / budget).toFixed(1)}×)`;
}

function formatSql(sql: string): string {
  return sql.replace(/\s+/g, ' ').trim();
}

function valuesText(values: unknown[] | undefined): string {
  return JSON.stringify(values ?? []).replace(/"(\w{8})-\w{4}-\w{4}-\w{4}-\w{12}"/g, '"$1…"');
}

function report(env: Environment, options: Options, shapes: ShapeResult[], creates: CreateResult[], cleanup: string, started: Date): string {
  const L: string[] = [];
  L.push('# Search at scale: results');
  L.push('');
  L.push(
    `Generated by \`bench/search-scale.ts\` on ${started.toISOString().slice(0, 16).replace('T', ' ')} UTC. ` +
      'Data from `bench/generate.ts`; how to rerun: `bench/README.md`. Every latency is a full HTTP request to the ' +
      'server running in the bench process (one request at a time, keep-alive, 127.0.0.1), after warm-up.'
  );
  L.push('');
  L.push('## Machine and data');
  L.push('');
  L.push(`| | |`);
  L.push(`|---|---|`);
  L.push(`| CPU | ${env.cores} × ${env.cpuModel} |`);
  L.push(`| memory | ${env.memoryGiB} GiB |`);
  L.push(`| OS | ${env.kernel} |`);
  L.push(`| Node | ${env.node} |`);
  L.push(`| PostgreSQL | ${env.postgres}, on the same machine; ${Object.entries(env.settings).map(([k, v]) => `${k}=${v}`).join(', ')} |`);
  L.push(`| server measured | ${env.server} |`);
  L.push(`| data set | ${n0(env.dataset.patients)} patients × ${env.dataset.observationsPerPatient} Observations; ${env.resources.map((r) => `${n0(r.n)} ${r.type}`).join(', ')} |`);
  for (const note of env.notes) {
    L.push(`| note | ${note} |`);
  }
  L.push(`| database size | ${env.databaseSize} (largest tables: ${env.tables.map((t) => `${t.name} ${t.size} / ~${n0(t.rows)} rows`).join('; ')}) |`);
  L.push('');

  if (env.loads.length > 0) {
    L.push('### Data generation (bench/generate.ts)');
    L.push('');
    L.push('Each patient is one database transaction of `createResource` calls (validation, FHIRPath index extraction, one insert statement per resource), 4 patients in flight.');
    L.push('');
    L.push('| finished (UTC) | resources written | time | resources/s | node / busy cores | complete |');
    L.push('|---|---:|---:|---:|---|---|');
    for (const l of env.loads) {
      L.push(
        `| ${l.finishedAt.slice(0, 16).replace('T', ' ')} | ${n0(l.resourcesWritten)} | ${Math.round(l.seconds)} s | ${n0(l.resourcesPerSecond)} | ${l.nodeCores} / ${l.machineBusyCores} | ${l.complete ? 'yes' : 'interrupted'} |`
      );
    }
    L.push('');
  }

  L.push('## Search latency');
  L.push('');
  L.push(
    `${options.queries} randomized queries per shape after ${options.warmup} warm-up queries (seed ${options.seed}). ` +
      '"SQL" is the time the requests spent in Postgres round trips (sum per request), the rest is the server ' +
      '(routing, compiling, JSON) and HTTP. "other load" is CPU used meanwhile by processes other than the bench and its Postgres backends ' +
      `(this is a shared machine: a measurement taken under more than ${QUIET_CORES} cores of other load is repeated, up to ${MAX_ATTEMPTS} times, and the quietest attempt kept).`
  );
  L.push('');
  L.push('| query | p50 ms | p95 ms | p99 ms | max ms | SQL p50 / p95 ms | statements / request | results (mean, included) | response (mean JSON, encoding) | status | budget (p95) | other load |');
  L.push('|---|---:|---:|---:|---:|---:|---:|---|---|---|---|---:|');
  for (const r of shapes) {
    const t = r.samples.map((s) => s.ms);
    const sqlMs = r.samples.map((s) => s.sql.reduce((a, q) => a + q.ms, 0));
    const statuses = new Map<number, number>();
    for (const s of r.samples) {
      statuses.set(s.status, (statuses.get(s.status) ?? 0) + 1);
    }
    const p95 = percentile(t, 95);
    L.push(
      `| \`${r.shape.template}\` | ${ms(percentile(t, 50))} | ${ms(p95)} | ${ms(percentile(t, 99))} | ${ms(Math.max(...t))} | ` +
        `${ms(percentile(sqlMs, 50))} / ${ms(percentile(sqlMs, 95))} | ${mean(r.samples.map((s) => s.sql.length)).toFixed(1)} | ` +
        `${mean(r.samples.map((s) => s.matches)).toFixed(1)}, ${mean(r.samples.map((s) => s.included)).toFixed(1)} | ` +
        `${n0(mean(r.samples.map((s) => s.bytes)) / 1024)} KiB, ${[...new Set(r.samples.map((s) => s.encoding))].join('/')} | ` +
        `${[...statuses].map(([k, v]) => `${v}× ${k}`).join(', ')} | ` +
        `${r.shape.budgetP95 !== undefined ? `≤ ${r.shape.budgetP95} ms: ${verdict(p95, r.shape.budgetP95)}` : 'none set'} | ${r.foreignCores.toFixed(2)}${r.attempts > 1 ? ` (best of ${r.attempts})` : ''} |`
    );
  }
  L.push('');
  const errors = shapes.flatMap((r) => r.samples.filter((s) => s.error).slice(0, 1).map((s) => `- \`${r.shape.key}\`: ${s.error}`));
  if (errors.length > 0) {
    L.push('Errors (first per shape):');
    L.push('');
    L.push(...errors);
    L.push('');
  }
  L.push(
    'Budgets: DESIGN.md sets only "search at 1M Observations: `subject`+`code`+`_sort=-date` p95 ≤ 20 ms". ' +
      'For the other shapes the nearest figure is the search mix at 1k patients, p99 ≤ 100 ms.'
  );
  L.push('');

  if (creates.length > 0) {
    L.push('## Observation create throughput at this size');
    L.push('');
    L.push(
      `Each mode runs ${options.createSeconds} s after a 2 s warm-up, against the full data set (index B-trees at 1M rows). ` +
        `The Observations are generated like the data set's, for random existing patients. ${cleanup}`
    );
    L.push('');
    L.push('| mode | concurrency | resources/s | requests/s | latency p50 / p99 ms | errors | node / busy cores | other load | reference budget |');
    L.push('|---|---:|---:|---:|---|---:|---|---:|---|');
    for (const c of creates) {
      const budget = c.mode.startsWith('HTTP transaction')
        ? 'import ≥ 3,000 resources/s (Synthea bundles)'
        : 'CRUD mix ≥ 1,300 req/s, p99 ≤ 50 ms';
      L.push(
        `| ${c.mode}: ${c.description} | ${c.concurrency} | ${n0(c.resources / c.seconds)} | ${n0(c.requests / c.seconds)} | ` +
          `${ms(percentile(c.latencies, 50))} / ${ms(percentile(c.latencies, 99))} | ${c.errors} | ${c.nodeCores.toFixed(2)} / ${c.machineCores.toFixed(2)} | ${c.foreignCores.toFixed(2)} | ${budget} |`
      );
    }
    L.push('');
  }

  L.push('## Query plans');
  L.push('');
  L.push(
    'For each shape, the SQL the server sent for its median and its slowest request, replayed with the same bind values under ' +
      '`EXPLAIN (ANALYZE, BUFFERS)` right after the timed run (warm cache). UUIDs in the values are shortened here.'
  );
  L.push('');
  for (const r of shapes) {
    L.push(`### ${r.shape.title}: \`${r.shape.template}\``);
    L.push('');
    for (const p of r.plans) {
      L.push(`**${p.label}** (${ms(p.ms)} ms): \`${p.url}\``);
      L.push('');
      if (p.statements.length === 0) {
        L.push('No SQL (answered before reaching the database).');
        L.push('');
      }
      for (const [i, s] of p.statements.entries()) {
        const usage =
          (s.usage.indexes.length ? `indexes: ${s.usage.indexes.join(', ')}` : 'no index') +
          (s.usage.seqScans.length ? `; **sequential scans: ${s.usage.seqScans.join(', ')}**` : '; no sequential scan');
        L.push(`Statement ${i + 1} (${ms(s.ms)} ms in the request): ${usage}`);
        L.push('');
        L.push('```sql');
        L.push(formatSql(s.sql));
        L.push(`-- values: ${valuesText(s.values)}`);
        L.push('```');
        L.push('');
        L.push('```');
        L.push(s.plan);
        L.push('```');
        L.push('');
      }
    }
  }
  return L.join('\n');
}

// ------------------------------------------------------------------ main

async function main(): Promise<void> {
  const options = parseArgs(process.argv.slice(2));
  const started = new Date();
  const capture = new SqlCapture();
  capture.install();
  const services = await startServices(options.databaseUrl);
  const app = await buildHttpApp(services);
  await app.listen({ port: 0, host: '127.0.0.1' });
  const address = app.server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  const fhirBase = `http://127.0.0.1:${port}/fhir/R4/`;
  authorization = await adminAuthorization(services);
  const db = new pg.Client({ connectionString: options.databaseUrl, application_name: 'ermis-bench-explain' });
  await db.connect();
  const foreign = new ForeignCpu(async () => {
    const { rows } = await db.query<{ pid: number }>('SELECT pid FROM pg_stat_activity WHERE datname = current_database()');
    return new Set(rows.map((r) => r.pid));
  });
  try {
    const env = await environment(db);
    console.log(`server ${env.server}; data ${env.resources.map((r) => `${r.n} ${r.type}`).join(', ')}; ${env.databaseSize}`);
    const fixtures = await loadFixtures(db, benchProjectId(services), 1500);
    console.log(`fixtures: ${fixtures.patients.length} patients, ${fixtures.topCodes.length} top codes, ${fixtures.anyCodes.length} codes`);

    const shapes: ShapeResult[] = [];
    for (const shape of SHAPES.filter((s) => !options.only || options.only.includes(s.key))) {
      console.log(`${shape.key}: ${shape.template}`);
      const r = await measureShape(shape, options, fixtures, fhirBase, capture, foreign, db);
      const t = r.samples.map((s) => s.ms);
      const bad = r.samples.filter((s) => s.status !== 200);
      console.log(
        `  p50 ${ms(percentile(t, 50))}  p95 ${ms(percentile(t, 95))}  p99 ${ms(percentile(t, 99))} ms` +
          `${bad.length ? `  (${bad.length} non-200: ${bad[0].error})` : ''}  other load ${r.foreignCores.toFixed(2)} cores`
      );
      shapes.push(r);
    }

    let creates: CreateResult[] = [];
    let cleanup = '';
    if (options.creates) {
      capture.uninstall();
      const maxRid = (await db.query<{ m: string }>('SELECT coalesce(max(rid), 0)::text AS m FROM resource')).rows[0].m;
      try {
        creates = await measureCreates(services, fhirBase, env.dataset.patients ? env.dataset : { patients: 1, observationsPerPatient: 20 }, options, foreign);
      } finally {
        const t = performance.now();
        const removed = await removeCreated(db, maxRid);
        await db.query('VACUUM resource, resource_history, sp_token, sp_string, sp_date, sp_quantity, sp_reference');
        cleanup = `Afterwards the ${n0(removed)} created resources were deleted again (with their history and index rows) and the tables vacuumed (${((performance.now() - t) / 1000).toFixed(0)} s), so the data set stays as generated.`;
        console.log(cleanup);
      }
    }

    const text = report(env, options, shapes, creates, cleanup, started);
    let analysis = '';
    if (existsSync(options.out)) {
      const old = readFileSync(options.out, 'utf8');
      const at = old.indexOf(ANALYSIS_MARKER);
      if (at >= 0) {
        analysis = old.slice(at + ANALYSIS_MARKER.length);
      }
    }
    mkdirSync(path.dirname(options.out), { recursive: true });
    writeFileSync(options.out, `${text}\n${ANALYSIS_MARKER}${analysis || '\n'}`);
    // every sample, for later comparison; bench/results/ is not committed (bench/.gitignore)
    const resultsDir = path.join(import.meta.dirname, 'results');
    mkdirSync(resultsDir, { recursive: true });
    const raw = path.join(resultsDir, `search-scale-${started.toISOString().replace(/[:.]/g, '-')}.json`);
    writeFileSync(
      raw,
      JSON.stringify(
        {
          started: started.toISOString(),
          options,
          env,
          shapes: shapes.map((r) => ({ key: r.shape.key, template: r.shape.template, foreignCores: r.foreignCores, samples: r.samples.map(({ sql, ...s }) => ({ ...s, sqlMs: sql.reduce((a, q) => a + q.ms, 0), statements: sql.length })) })),
          creates: creates.map(({ latencies, ...c }) => ({ ...c, p50: percentile(latencies, 50), p99: percentile(latencies, 99) })),
        },
        null,
        1
      )
    );
    console.log(`wrote ${options.out} and ${raw}`);
  } finally {
    await db.end();
    await app.close();
    await services.close();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
