import { readdirSync, readFileSync } from 'node:fs';
import os from 'node:os';
import pg from 'pg';

/** Creates the database named in `url` when it does not exist (connecting to `postgres` on the same server). */
export async function ensureDatabase(url: string): Promise<boolean> {
  const target = new URL(url);
  const name = decodeURIComponent(target.pathname.replace(/^\//, ''));
  if (!/^[A-Za-z0-9_]+$/.test(name)) {
    throw new Error(`Database name must be [A-Za-z0-9_]+: ${name}`);
  }
  const admin = new URL(url);
  admin.pathname = '/postgres';
  const client = new pg.Client({ connectionString: admin.toString() });
  await client.connect();
  try {
    const { rowCount } = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [name]);
    if (rowCount) {
      return false;
    }
    await client.query(`CREATE DATABASE ${name}`);
    return true;
  } finally {
    await client.end();
  }
}

/** CPU time of the whole machine (all cores), from /proc/stat: busy and total jiffies. */
export function machineCpu(): { busy: number; total: number } {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n')[0];
    const fields = line.trim().split(/\s+/).slice(1).map(Number);
    const idle = fields[3] + (fields[4] ?? 0);
    const total = fields.reduce((a, b) => a + b, 0);
    return { busy: total - idle, total };
  } catch {
    return { busy: 0, total: 0 };
  }
}

/** Samples CPU use between two points: this process (in cores) and the whole machine (in cores). */
export class CpuMeter {
  private proc = process.cpuUsage();
  private machine = machineCpu();
  private at = performance.now();

  sample(): { processCores: number; machineCores: number } {
    const proc = process.cpuUsage(this.proc);
    const machine = machineCpu();
    const seconds = (performance.now() - this.at) / 1000;
    const cores = os.cpus().length;
    const machineCores =
      machine.total > this.machine.total ? ((machine.busy - this.machine.busy) / (machine.total - this.machine.total)) * cores : 0;
    this.proc = process.cpuUsage();
    this.machine = machine;
    this.at = performance.now();
    return { processCores: (proc.user + proc.system) / 1e6 / Math.max(seconds, 1e-9), machineCores };
  }
}

function processTicks(exclude: ReadonlySet<number>): Map<number, number> {
  const ticks = new Map<number, number>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || exclude.has(Number(entry))) {
      continue;
    }
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      // fields after the command name (which may contain spaces) start after the last ')'
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks.set(Number(entry), Number(fields[11]) + Number(fields[12])); // utime, stime
    } catch {
      // the process ended meanwhile
    }
  }
  return ticks;
}

/**
 * CPU used by other processes than the bench and its own Postgres backends (another engineer's test
 * run, autovacuum, the checkpointer...), in cores, so that a figure measured on a shared machine can
 * be read with the load it competed with. Processes that end within the interval are not counted,
 * so this is a lower bound. Linux only; 0 elsewhere.
 */
export class ForeignCpu {
  private readonly exclude: () => Promise<Set<number>>;
  private startTicks = new Map<number, number>();
  private startAt = 0;
  private excluded = new Set<number>();

  constructor(exclude: () => Promise<Set<number>>) {
    this.exclude = exclude;
  }

  async start(): Promise<void> {
    this.excluded = await this.exclude();
    this.excluded.add(process.pid);
    this.startTicks = processTicks(this.excluded);
    this.startAt = performance.now();
  }

  /** Cores used by other processes since start(). */
  stop(): number {
    const seconds = (performance.now() - this.startAt) / 1000;
    let ticks = 0;
    for (const [pid, now] of processTicks(this.excluded)) {
      ticks += now - (this.startTicks.get(pid) ?? 0);
    }
    return seconds > 0 ? ticks / 100 / seconds : 0; // USER_HZ is 100 on Linux
  }
}
