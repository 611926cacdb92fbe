/**
 * Fills a database with synthetic clinical data through ermis's real write path: for each patient,
 * one database transaction that creates the Patient, its Encounters and its Observations with
 * `PostgresRepository.createResource` (validation against the R4 definitions, FHIRPath index
 * extraction, the one-statement insert), exactly what a transaction Bundle does minus HTTP and
 * Bundle bookkeeping.
 *
 *   node bench/generate.ts <database-url> <patients> <observations-per-patient> [--concurrency N] [--no-vacuum]
 *
 * Ids are deterministic (name-based UUIDs of the patient number), and each patient is one
 * transaction, so a run that is interrupted (Ctrl-C, crash) is continued by running the same command
 * again: patients already present are skipped. Raising <patients> later adds patients.
 */
import type { Resource } from '@medplum/fhirtypes';
import type { ServerServices } from '../server/src/services.ts';
import { CpuMeter, ensureDatabase } from './lib/db.ts';
import { organizations, patientId, patientRecord } from './lib/fake.ts';
import { benchProjectId, benchRepo, serverSrcDir, startServices } from './lib/server.ts';

interface Options {
  databaseUrl: string;
  patients: number;
  observationsPerPatient: number;
  concurrency: number;
  vacuum: boolean;
}

function parseArgs(argv: string[]): Options {
  const positional: string[] = [];
  let concurrency = 4;
  let vacuum = true;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--concurrency' || a === '-c') {
      concurrency = Number(argv[++i]);
    } else if (a === '--no-vacuum') {
      vacuum = false;
    } else if (a === '--help' || a === '-h') {
      usage(0);
    } else if (a.startsWith('-')) {
      usage(2, `unknown option ${a}`);
    } else {
      positional.push(a);
    }
  }
  const [databaseUrl, patients = '10000', perPatient = '100'] = positional;
  if (!databaseUrl) {
    usage(2, 'missing database URL');
  }
  const options = {
    databaseUrl,
    patients: Number(patients),
    observationsPerPatient: Number(perPatient),
    concurrency,
    vacuum,
  };
  for (const [k, v] of Object.entries({ patients: options.patients, 'observations-per-patient': options.observationsPerPatient, concurrency })) {
    if (!Number.isInteger(v) || v < (k === 'observations-per-patient' ? 0 : 1)) {
      usage(2, `invalid ${k}: ${v}`);
    }
  }
  return options;
}

function usage(code: number, message?: string): never {
  if (message) {
    console.error(message);
  }
  console.error('usage: node bench/generate.ts <database-url> <patients> <observations-per-patient> [--concurrency N] [--no-vacuum]');
  process.exit(code);
}

/** The bench's own bookkeeping table in the generated database: what was asked for and how fast it went. */
async function recordRun(services: ServerServices, options: Options): Promise<void> {
  await services.pool.query(`CREATE TABLE IF NOT EXISTS bench_run (
    key text PRIMARY KEY,
    value jsonb NOT NULL,
    updated timestamptz NOT NULL DEFAULT now()
  )`);
  const { rows } = await services.pool.query<{ value: { observationsPerPatient: number } }>(
    "SELECT value FROM bench_run WHERE key = 'dataset'"
  );
  if (rows.length > 0 && rows[0].value.observationsPerPatient !== options.observationsPerPatient) {
    throw new Error(
      `This database was generated with ${rows[0].value.observationsPerPatient} observations per patient; ` +
        `resume with the same value or use another database`
    );
  }
  await services.pool.query(
    `INSERT INTO bench_run (key, value) VALUES ('dataset', $1)
     ON CONFLICT (key) DO UPDATE SET value = jsonb_set(bench_run.value, '{patients}',
       to_jsonb(greatest((bench_run.value->>'patients')::int, ($1::jsonb->>'patients')::int))), updated = now()`,
    [JSON.stringify({ patients: options.patients, observationsPerPatient: options.observationsPerPatient })]
  );
}

/** Patient numbers (0-based) in [0, patients) that are not in the database yet. */
async function missingPatients(services: ServerServices, patients: number): Promise<number[]> {
  const missing: number[] = [];
  const chunk = 5000;
  for (let from = 0; from < patients; from += chunk) {
    const numbers = Array.from({ length: Math.min(chunk, patients - from) }, (_, i) => from + i);
    const { rows } = await services.pool.query<{ id: string }>(
      `SELECT id FROM resource WHERE project_id = $1 AND resource_type = 'Patient' AND id = ANY($2::text[])`,
      [benchProjectId(services), numbers.map(patientId)]
    );
    const present = new Set(rows.map((r) => r.id));
    for (const n of numbers) {
      if (!present.has(patientId(n))) {
        missing.push(n);
      }
    }
  }
  return missing;
}

function fmt(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

function duration(seconds: number): string {
  if (!Number.isFinite(seconds)) {
    return '?';
  }
  const m = Math.floor(seconds / 60);
  const s = Math.round(seconds % 60);
  return m > 0 ? `${m}m${String(s).padStart(2, '0')}s` : `${s}s`;
}

async function main(): Promise<void> {
  const options = parseArgs(process.argv.slice(2));
  const created = await ensureDatabase(options.databaseUrl);
  console.log(`${created ? 'created' : 'using existing'} database ${new URL(options.databaseUrl).pathname.slice(1)}; server sources ${serverSrcDir()}`);
  const services = await startServices(options.databaseUrl, { DATABASE_POOL_SIZE: String(options.concurrency + 2) });
  let stopping = false;
  process.once('SIGINT', () => {
    console.log('\nSIGINT: finishing the patients in flight, then stopping (run the same command again to continue)');
    stopping = true;
  });
  try {
    await recordRun(services, options);
    const repo = benchRepo(services);
    for (const org of organizations()) {
      await repo.updateResource(org); // update-as-create: idempotent
    }
    const todo = await missingPatients(services, options.patients);
    console.log(
      `${fmt(options.patients - todo.length)} of ${fmt(options.patients)} patients already present; ` +
        `writing ${fmt(todo.length)} patients × ${options.observationsPerPatient} observations (+ encounters), concurrency ${options.concurrency}`
    );

    let next = 0;
    let patientsDone = 0;
    let resourcesDone = 0;
    let observationsDone = 0;
    const started = performance.now();
    const overallCpu = new CpuMeter();
    const intervalCpu = new CpuMeter();
    let lastResources = 0;
    let lastAt = started;
    const progress = (): void => {
      const now = performance.now();
      const elapsed = (now - started) / 1000;
      const rate = resourcesDone / elapsed;
      const recent = (resourcesDone - lastResources) / ((now - lastAt) / 1000);
      const cpu = intervalCpu.sample();
      const remaining = ((todo.length - patientsDone) * (options.observationsPerPatient + 4)) / Math.max(rate, 1);
      console.log(
        `${duration(elapsed)}  patients ${fmt(patientsDone)}/${fmt(todo.length)}  resources ${fmt(resourcesDone)}  ` +
          `${fmt(recent)}/s now, ${fmt(rate)}/s overall  cpu: node ${cpu.processCores.toFixed(2)} of ${cpu.machineCores.toFixed(2)} busy cores  ETA ${duration(remaining)}`
      );
      lastResources = resourcesDone;
      lastAt = now;
    };
    const timer = setInterval(progress, 10_000);

    const worker = async (): Promise<void> => {
      while (!stopping && next < todo.length) {
        const n = todo[next++];
        const record = patientRecord(n, options.observationsPerPatient);
        const resources: Resource[] = [record.patient, ...record.encounters, ...record.observations];
        await repo.withTransaction(async (tx) => {
          for (const resource of resources) {
            await tx.createResource(resource, { assignedId: true });
          }
        });
        patientsDone++;
        resourcesDone += resources.length;
        observationsDone += record.observations.length;
      }
    };
    try {
      await Promise.all(Array.from({ length: options.concurrency }, worker));
    } finally {
      clearInterval(timer);
    }
    progress();
    const seconds = (performance.now() - started) / 1000;
    const cpu = overallCpu.sample();
    const summary = {
      finishedAt: new Date().toISOString(),
      patientsWritten: patientsDone,
      resourcesWritten: resourcesDone,
      observationsWritten: observationsDone,
      seconds: Math.round(seconds * 10) / 10,
      resourcesPerSecond: Math.round(resourcesDone / Math.max(seconds, 1e-9)),
      concurrency: options.concurrency,
      server: process.env.ERMIS_SERVER_LABEL ?? serverSrcDir(),
      nodeCores: Math.round(cpu.processCores * 100) / 100,
      machineBusyCores: Math.round(cpu.machineCores * 100) / 100,
      complete: !stopping && patientsDone === todo.length,
    };
    console.log(
      `wrote ${fmt(resourcesDone)} resources (${fmt(observationsDone)} observations) in ${duration(seconds)}: ` +
        `${fmt(summary.resourcesPerSecond)} resources/s`
    );
    if (resourcesDone > 0) {
      await services.pool.query(
        `INSERT INTO bench_run (key, value) VALUES ('load:' || $1, $2)`,
        [summary.finishedAt, JSON.stringify(summary)]
      );
    }
    if (summary.complete && options.vacuum) {
      const t = performance.now();
      console.log('VACUUM (ANALYZE) so that planner statistics and the visibility map are current...');
      await services.pool.query('VACUUM (ANALYZE)');
      console.log(`done in ${duration((performance.now() - t) / 1000)}`);
    }
    const { rows } = await services.pool.query<{ type: string; n: string }>(
      `SELECT resource_type AS type, count(*) AS n FROM resource WHERE NOT deleted GROUP BY 1 ORDER BY 2 DESC`
    );
    const size = await services.pool.query<{ size: string }>('SELECT pg_size_pretty(pg_database_size(current_database())) AS size');
    console.log(`database now holds ${rows.map((r) => `${fmt(Number(r.n))} ${r.type}`).join(', ')}; size ${size.rows[0].size}`);
    if (!summary.complete) {
      process.exitCode = 130;
    }
  } finally {
    await services.close();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
