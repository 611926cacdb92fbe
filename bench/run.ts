/**
 * `npm run bench`: ermis against the published anchors and against this machine's own ceilings.
 *
 *   node bench/run.ts [--quick | --smoke] [--out FILE] [--database-url URL] [--redis-url URL] [--keep-db]
 *
 * Full (default, about 30 min on the 2-core machine): every workload, 1k patients for the search mix, then 1M
 * Observations for search at scale; rewrites bench/REPORT.md. Quick (under 10 min): shorter
 * windows, fewer patients, no 1M data set; writes bench/results/REPORT-quick.md. Smoke (about
 * 1–2 min, for the test suite): every workload for a second or two, tiny data, writes where --out says.
 *
 * Each run creates its database (dropped first if it exists, dropped again at the end unless
 * --keep-db), starts and stops its own processes, and sends load to 127.0.0.1 only, bounded in
 * time and count.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import pg from 'pg';
import { freePort } from './lib/ports.ts';
import { clientToken, createBenchClient, startErmis } from './lib/ermis.ts';
import type { ErmisServer } from './lib/ermis.ts';
import { childPids, peakRssMb, ROOT, setBenchDatabase, stopAll, stopChildrenOnExit } from './lib/processes.ts';
import { writeReport } from './lib/report.ts';
import type { MachineInfo } from './lib/report.ts';
import type { Row, Skipped } from './lib/results.ts';
import { bareServerCeilings, mllpEchoCeilings, postgresCeilings } from './workloads/ceilings.ts';
import { blazeTransaction, createSharedResources, crudMix, readById, resourceIds, scaleSearch, searchMix, syntheaImport } from './workloads/fhir.ts';
import type { FhirTarget } from './workloads/fhir.ts';
import { hl7Workloads, startHl7Pipeline } from './workloads/hl7.ts';

export interface ModeConfig {
  name: 'full' | 'quick' | 'smoke';
  warmupMs: number;
  windowMs: number;
  txWindowMs: number;
  ceilingWarmupMs: number;
  ceilingWindowMs: number;
  crudConnections: number;
  txConnections: number[];
  importConnections: number;
  importPatients: number;
  encountersPerPatient: number;
  importMaxMs: number;
  searchConnections: number;
  readConnections: number;
  hl7WarmupMs: number;
  hl7WindowMs: number;
  hl7MaxMessages: number;
  /** The 1M-Observation data set (full mode only): patients × Observations each. */
  scale?: { patients: number; observationsPerPatient: number };
  scaleQueries: number;
}

const MODES: Record<ModeConfig['name'], ModeConfig> = {
  full: {
    name: 'full',
    warmupMs: 15_000,
    windowMs: 90_000,
    txWindowMs: 45_000,
    ceilingWarmupMs: 5_000,
    ceilingWindowMs: 30_000,
    crudConnections: 32,
    txConnections: [1, 8, 32],
    importConnections: 8,
    importPatients: 1000,
    encountersPerPatient: 8,
    importMaxMs: 15 * 60_000,
    searchConnections: 30,
    readConnections: 32,
    hl7WarmupMs: 5_000,
    hl7WindowMs: 45_000,
    hl7MaxMessages: 50_000,
    scale: { patients: 10_000, observationsPerPatient: 100 },
    scaleQueries: 2_000,
  },
  quick: {
    name: 'quick',
    warmupMs: 5_000,
    windowMs: 25_000,
    txWindowMs: 15_000,
    ceilingWarmupMs: 2_000,
    ceilingWindowMs: 10_000,
    crudConnections: 32,
    txConnections: [1, 8],
    importConnections: 8,
    importPatients: 1000,
    encountersPerPatient: 2,
    importMaxMs: 150_000,
    searchConnections: 30,
    readConnections: 32,
    hl7WarmupMs: 3_000,
    hl7WindowMs: 15_000,
    hl7MaxMessages: 20_000,
    scaleQueries: 0,
  },
  smoke: {
    name: 'smoke',
    warmupMs: 300,
    windowMs: 1_500,
    txWindowMs: 1_000,
    ceilingWarmupMs: 200,
    ceilingWindowMs: 1_000,
    crudConnections: 4,
    txConnections: [1, 8],
    importConnections: 4,
    importPatients: 8,
    encountersPerPatient: 1,
    importMaxMs: 60_000,
    searchConnections: 4,
    readConnections: 4,
    hl7WarmupMs: 300,
    hl7WindowMs: 2_000,
    hl7MaxMessages: 30,
    scaleQueries: 0,
  },
};

interface Args {
  mode: ModeConfig;
  out: string;
  databaseUrl: string;
  redisUrl: string | undefined;
  serverWorkers: number;
  keepDb: boolean;
}

function parseArgs(argv: string[]): Args {
  let mode = MODES.full;
  let out: string | undefined;
  let databaseUrl = process.env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/ermis_bench';
  let redisUrl: string | undefined = process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379/7';
  let keepDb = false;
  let serverWorkers = 1;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--quick') {
      mode = MODES.quick;
    } else if (a === '--smoke') {
      mode = MODES.smoke;
    } else if (a === '--out') {
      out = argv[++i];
    } else if (a === '--database-url') {
      databaseUrl = argv[++i];
    } else if (a === '--redis-url') {
      redisUrl = argv[++i] || undefined;
    } else if (a === '--scale') {
      // e.g. 100x10: a small "1M" data set, to check the scale workloads quickly
      const [patients, observationsPerPatient] = (argv[++i] ?? '').split('x').map(Number);
      mode = { ...mode, scale: { patients, observationsPerPatient }, scaleQueries: mode.scaleQueries || 200 };
    } else if (a === '--server-workers') {
      serverWorkers = Number(argv[++i]);
    } else if (a === '--keep-db') {
      keepDb = true;
    } else {
      console.error(`unknown argument ${a}\nusage: node bench/run.ts [--quick | --smoke] [--out FILE] [--database-url URL] [--redis-url URL|''] [--server-workers N] [--scale PATIENTSxOBSERVATIONS] [--keep-db]`);
      process.exit(2);
    }
  }
  const defaultOut = mode.name === 'full' ? path.join(ROOT, 'bench', 'REPORT.md') : path.join(ROOT, 'bench', 'results', `REPORT-${mode.name}.md`);
  if (!Number.isInteger(serverWorkers) || serverWorkers < 1 || (serverWorkers > 1 && !redisUrl)) {
    console.error('--server-workers must be a positive integer, and more than 1 needs Redis');
    process.exit(2);
  }
  return { mode, out: path.resolve(out ?? defaultOut), databaseUrl, redisUrl, serverWorkers, keepDb };
}

function databaseName(url: string): string {
  const name = decodeURIComponent(new URL(url).pathname.slice(1));
  if (!/^[a-z0-9_]+$/.test(name)) {
    throw new Error(`bench database name must be [a-z0-9_]+: ${name}`);
  }
  return name;
}

async function withMaintenance<T>(url: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const admin = new URL(url);
  admin.pathname = '/postgres';
  const client = new pg.Client({ connectionString: admin.toString() });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

async function recreateDatabase(url: string): Promise<void> {
  const name = databaseName(url);
  await withMaintenance(url, async (c) => {
    await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    await c.query(`CREATE DATABASE ${name}`);
  });
}

async function dropDatabase(url: string): Promise<void> {
  const name = databaseName(url);
  await withMaintenance(url, (c) => c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`));
}

async function analyzeDatabase(url: string): Promise<void> {
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  try {
    await db.query('VACUUM (ANALYZE)');
  } finally {
    await db.end();
  }
}

async function machineInfo(databaseUrl: string, mode: ModeConfig, setup: string): Promise<MachineInfo> {
  const db = new pg.Client({ connectionString: databaseUrl });
  await db.connect();
  try {
    const version = (await db.query<{ v: string }>('SELECT version() AS v')).rows[0].v;
    const settings = await db.query<{ name: string; setting: string; unit: string | null }>(
      `SELECT name, setting, unit FROM pg_settings WHERE name IN ('shared_buffers','synchronous_commit','fsync','max_connections','work_mem','wal_level')`
    );
    const commit = await new Promise<string>((resolve) => {
      const git = spawn('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT });
      let out = '';
      git.stdout.on('data', (d: Buffer) => (out += d.toString()));
      git.on('close', () => resolve(out.trim() || 'unknown'));
      git.on('error', () => resolve('unknown'));
    });
    return {
      mode: mode.name,
      date: new Date().toISOString().replace('T', ' ').slice(0, 16) + ' UTC',
      cpus: `${os.cpus().length} × ${os.cpus()[0]?.model ?? 'unknown'}`,
      vcpus: os.cpus().length,
      memoryGb: os.totalmem() / 1024 ** 3,
      os: `${os.type()} ${os.release()}`,
      node: process.version,
      postgres: `${version.split(' on ')[0]}; ${settings.rows.map((s) => `${s.name}=${s.setting}${s.unit && s.unit !== '' ? ` (${s.unit})` : ''}`).join(', ')}`,
      commit,
      setup,
    };
  } finally {
    await db.end();
  }
}

/** Runs bench/generate.ts (the repository's own write path, in its own process) to reach the 1M-Observation data set. */
async function generateScaleData(databaseUrl: string, scale: NonNullable<ModeConfig['scale']>): Promise<void> {
  const child = spawn(process.execPath, ['bench/generate.ts', databaseUrl, String(scale.patients), String(scale.observationsPerPatient)], { cwd: ROOT, stdio: ['ignore', 'inherit', 'inherit'] });
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  if (code !== 0) {
    throw new Error(`bench/generate.ts failed (${code})`);
  }
}

/** Peak memory of the server's processes: the server (or with SERVER_WORKERS > 1 the primary and each worker) and its bot processes. */
function serverPeaks(server: ErmisServer, label: string, workers: number): { process: string; mb: number }[] {
  const children = childPids(server.process.pid);
  if (workers > 1) {
    return [{ process: `${label}, primary`, mb: peakRssMb(server.process.pid) }, ...children.map((pid, i) => ({ process: `${label}, worker ${i + 1}`, mb: peakRssMb(pid) }))];
  }
  return [{ process: label, mb: peakRssMb(server.process.pid) }, ...children.map((pid, i) => ({ process: `${label}: bot process ${i + 1}`, mb: peakRssMb(pid) }))];
}

/** The bench client's token, and the processes whose CPU the FHIR workloads report. */
async function fhirTarget(server: ErmisServer): Promise<FhirTarget> {
  const client = await createBenchClient(server);
  return {
    fhirUrl: server.fhirUrl,
    token: await clientToken(server, client),
    groups: { server: { trees: [server.process.pid] }, bench: { self: [process.pid] } },
  };
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const { mode } = args;
  stopChildrenOnExit();
  const started = Date.now();
  const rows: Row[] = [];
  const skipped: Skipped[] = [];
  const peaks: { process: string; mb: number }[] = [];
  console.log(`ermis bench, ${mode.name} mode: database ${databaseName(args.databaseUrl)}, report → ${path.relative(process.cwd(), args.out)}`);
  await recreateDatabase(args.databaseUrl);
  setBenchDatabase(databaseName(args.databaseUrl));
  try {
    const setup = `SERVER_WORKERS=${args.serverWorkers}, ${args.redisUrl ? 'Redis' : 'no Redis'}, every other setting at its default (AUDIT_EVENTS=all, BOT_CONCURRENCY=4, DATABASE_POOL_SIZE=16 per process)`;
    const machine = await machineInfo(args.databaseUrl, mode, setup);

    console.log('ceilings');
    rows.push(...(await postgresCeilings(args.databaseUrl, mode)));
    rows.push(...(await bareServerCeilings(args.databaseUrl, await freePort(), mode)));
    rows.push(...(await mllpEchoCeilings(await freePort(), mode)));

    console.log('ermis');
    let server = await startErmis(args.databaseUrl, await freePort(), { redisUrl: args.redisUrl, workers: args.serverWorkers });
    let target = await fhirTarget(server);
    rows.push(await crudMix(target, mode));
    const shared = await createSharedResources(target);
    const imported = await syntheaImport(target, mode, shared);
    rows.push(imported);
    // A bulk load outruns autovacuum: without fresh statistics the planner takes a just-loaded
    // table for empty (searches became 20× slower). Production gets there by autovacuum a minute later.
    await analyzeDatabase(args.databaseUrl);
    rows.push(await searchMix(target, mode, `over the imported data: ${imported.note}`));
    rows.push(await readById(target, mode, await resourceIds(args.databaseUrl, 500_000), 'read-by-id', 'over the imported data'));
    // After the searches: each transaction leaves a Patient and an Observation (tens of thousands),
    // and the search mix is specified over the 1k patients of the import.
    for (const connections of mode.txConnections) {
      rows.push(await blazeTransaction(target, mode, connections));
    }

    console.log('HL7 v2');
    const pipeline = await startHl7Pipeline(server, await freePort());
    rows.push(...(await hl7Workloads(server, pipeline, mode, `R${Date.now().toString(36).toUpperCase()}`)));
    peaks.push({ process: 'agent', mb: peakRssMb(pipeline.agent.pid) });
    await pipeline.agent.stop();
    peaks.push(...serverPeaks(server, 'ermis server', args.serverWorkers));
    await server.process.stop();

    if (mode.scale) {
      console.log(`search at scale: generating ${(mode.scale.patients * mode.scale.observationsPerPatient).toLocaleString('en')} Observations`);
      await generateScaleData(args.databaseUrl, mode.scale);
      server = await startErmis(args.databaseUrl, await freePort(), { redisUrl: args.redisUrl, workers: args.serverWorkers });
      target = await fhirTarget(server);
      const note = `${mode.scale.patients.toLocaleString('en')} patients × ${mode.scale.observationsPerPatient} Observations (bench/generate.ts) besides the imported data`;
      rows.push(await scaleSearch(target, args.databaseUrl, mode, note));
      rows.push(await readById(target, mode, await resourceIds(args.databaseUrl, 1_000_000, 'Observation'), 'scale-read', 'over the 1M Observations'));
      peaks.push(...serverPeaks(server, 'ermis server (1M data set)', args.serverWorkers));
      await server.process.stop();
    } else {
      const reason = 'full mode only (generating 1M Observations takes about 10 minutes)';
      skipped.push({ id: 'scale-search', workload: 'search at 1M Observations: Observation?subject={patient}&code={loinc}&_sort=-date', reason });
      skipped.push({ id: 'scale-read', workload: 'read by id: GET Observation/{id} over the 1M Observations', reason });
    }
    for (const connections of [1, 8, 32]) {
      if (!mode.txConnections.includes(connections)) {
        skipped.push({ id: connections === 32 ? 'tx-32' : connections === 8 ? 'tx-8' : 'tx-1', workload: `transaction on ${connections} connections`, reason: 'full mode only' });
      }
    }
    mkdirSync(path.dirname(args.out), { recursive: true });
    writeFileSync(args.out, writeReport({ machine, mode, rows, skipped, peaks, minutes: (Date.now() - started) / 60_000 }));
    console.log(`report written: ${args.out} (${((Date.now() - started) / 60_000).toFixed(1)} min)`);
  } finally {
    await stopAll();
    if (!args.keepDb) {
      await dropDatabase(args.databaseUrl).catch((err: Error) => console.error(`could not drop the bench database: ${err.message}`));
    }
  }
}

await main().catch(async (err: Error) => {
  console.error(`bench failed: ${err.stack ?? err.message}`);
  await stopAll();
  process.exit(1);
});
