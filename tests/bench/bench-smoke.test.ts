/**
 * `npm run bench` end to end in smoke mode (every workload for a second or two, tiny data): it
 * creates its database, starts and stops its processes, measures every row without errors and
 * writes a report with every row filled; afterwards no process and no database of it is left.
 * (Figures are not asserted: performance is shown by the bench itself, never by timed tests.)
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { expect, inject, test } from 'vitest';
import { alive } from '../support/processes.ts';

const ROOT = path.resolve(import.meta.dirname, '..', '..');

const MEASURED = ['pg-single', 'pg-20', 'bare-create', 'bare-read', 'mllp-echo-1', 'mllp-echo-8', 'crud', 'tx-1', 'tx-8', 'import', 'search-mix', 'read-by-id', 'adt-1', 'adt-8', 'oru-1', 'oru-8'];
const FULL_ONLY = ['tx-32', 'scale-search', 'scale-read'];


test('npm run bench (smoke mode) measures every workload without errors, reports every row and leaves nothing behind', async () => {
  const admin = new URL(inject('adminDatabaseUrl'));
  const name = `ermis_bench_smoke_${process.pid}`;
  const databaseUrl = new URL(admin);
  databaseUrl.pathname = `/${name}`;
  const out = path.join(mkdtempSync(path.join(tmpdir(), 'ermis-bench-')), 'REPORT.md');
  const env = { ...process.env };
  delete env.BASE_URL; // vitest's
  const child = spawn(process.execPath, ['bench/run.ts', '--smoke', '--out', out, '--database-url', databaseUrl.toString()], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr.on('data', (d: Buffer) => (output += d.toString()));
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  expect(code, output).toBe(0);

  const report = readFileSync(out, 'utf8');
  const rows = new Map(
    report
      .split('\n')
      .filter((l) => l.startsWith('| `'))
      .map((l) => {
        const cells = l.split(' | ');
        return [/`([^`]+)`/.exec(cells[0])?.[1] as string, cells];
      })
  );
  for (const id of MEASURED) {
    const cells = rows.get(id);
    expect(cells, `${id} in the report`).toBeDefined();
    // throughput is a positive number with its unit, the error count is zero, latency and CPU are filled
    expect(cells?.[2], id).toMatch(/^[\d,.]+ (req|resources|tx|msg)\/s$/);
    expect(Number(cells?.[2].split(' ')[0].replace(/,/g, '')), id).toBeGreaterThan(0);
    expect(cells?.[7], `${id} errors`).toBe('0');
    expect(cells?.slice(3, 6).every((c) => /^[\d.]+$/.test(c)), `${id} latency`).toBe(true);
    expect(cells?.[12], id).toMatch(/busy \d/);
  }
  for (const id of FULL_ONLY) {
    expect(rows.get(id)?.[2], id).toMatch(/^not run: full mode only/);
  }
  // every budget of DESIGN.md has a verdict, or says why it was not measured
  const budgets = report.split('## Budgets')[1].split('## Workloads')[0].split('\n').filter((l) => /^\| [A-Za-z]/.test(l) && !l.startsWith('| budget'));
  expect(budgets).toHaveLength(6);
  for (const line of budgets) {
    expect(line).toMatch(/\*\*(met|missed)\*\*|not measured: full mode only/);
    if (line.includes('**missed**')) {
      expect(line, 'a missed budget says why').toMatch(/cores busy|not CPU-bound/);
    }
  }
  expect(report).toMatch(/\| ermis server[^|]* \| \d+ MB \|/);

  // nothing left: the processes it started are gone, its database is dropped
  const pids = [...output.matchAll(/\(started [^,]+, pid (\d+)\)/g)].map((m) => Number(m[1]));
  expect(pids.length).toBeGreaterThanOrEqual(4);
  expect(pids.filter(alive)).toEqual([]);
  const db = new pg.Client({ connectionString: admin.toString() });
  await db.connect();
  try {
    expect((await db.query('SELECT 1 FROM pg_database WHERE datname = $1', [name])).rowCount).toBe(0);
  } finally {
    await db.end();
  }
}, 300_000);
