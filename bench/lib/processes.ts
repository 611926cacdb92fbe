/**
 * The bench's child processes (the ermis server, the agent, the ceiling servers) and what they cost:
 * CPU per process group from /proc, peak memory (VmHWM). Every child is registered so that the run
 * leaves none behind, whether it ends normally, fails or is interrupted.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';

export const ROOT = path.resolve(import.meta.dirname, '..', '..');

export interface BenchProcess {
  name: string;
  child: ChildProcess;
  pid: number;
  output(): string;
  /** Resolves once `text` appears in the output; rejects when the process exits first or after `timeoutMs`. */
  waitFor(text: string | RegExp, timeoutMs: number): Promise<void>;
  stop(): Promise<void>;
}

const running = new Set<BenchProcess>();

/** Starts `node <args>` from the repository root with the given environment (stdout and stderr kept, last 64 KB). */
export function startNode(name: string, args: string[], env: NodeJS.ProcessEnv): BenchProcess {
  const child = spawn(process.execPath, args, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const append = (d: Buffer): void => {
    output = (output + d.toString()).slice(-65_536);
  };
  child.stdout?.on('data', append);
  child.stderr?.on('data', append);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const proc: BenchProcess = {
    name,
    child,
    pid: child.pid ?? -1,
    output: () => output,
    waitFor: async (text, timeoutMs) => {
      const deadline = Date.now() + timeoutMs;
      const found = (): boolean => (typeof text === 'string' ? output.includes(text) : text.test(output));
      while (!found()) {
        if (child.exitCode !== null || child.signalCode !== null) {
          throw new Error(`${name} exited (${child.signalCode ?? child.exitCode}) before "${text}":\n${output.slice(-4000)}`);
        }
        if (Date.now() > deadline) {
          throw new Error(`${name}: no "${text}" within ${timeoutMs / 1000} s:\n${output.slice(-4000)}`);
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    stop: async () => {
      running.delete(proc);
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const killer = setTimeout(() => child.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(killer);
      }
    },
  };
  running.add(proc);
  console.log(`  (started ${name}, pid ${proc.pid})`);
  return proc;
}

/** Stops every child still running (SIGTERM, SIGKILL after 10 s). */
export async function stopAll(): Promise<void> {
  await Promise.all([...running].map((p) => p.stop()));
}

/** On exit, Ctrl-C or SIGTERM, children are killed (synchronously on exit: no awaiting there). */
export function stopChildrenOnExit(): void {
  process.once('exit', () => {
    for (const p of running) {
      p.child.kill('SIGKILL');
    }
  });
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      console.error(`\n${signal}: stopping the bench's processes`);
      void stopAll().finally(() => process.exit(130));
    });
  }
}

interface ProcStat {
  pid: number;
  cmdline: string;
  ppid: number;
  comm: string;
  /** utime + stime, in clock ticks. */
  own: number;
  /** cutime + cstime: children that exited and were reaped. */
  reaped: number;
}

function readStat(pid: number): ProcStat | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const close = text.lastIndexOf(')');
    const comm = text.slice(text.indexOf('(') + 1, close);
    const f = text.slice(close + 2).split(' ');
    // after "pid (comm) ": state ppid ... utime(12th) stime cutime cstime
    const cmdline = comm === 'postgres' ? readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ').trim() : '';
    return { pid, ppid: Number(f[1]), comm, cmdline, own: Number(f[11]) + Number(f[12]), reaped: Number(f[13]) + Number(f[14]) };
  } catch {
    return undefined;
  }
}

function allStats(): ProcStat[] {
  const stats: ProcStat[] = [];
  for (const entry of readdirSync('/proc')) {
    if (/^\d+$/.test(entry)) {
      const s = readStat(Number(entry));
      if (s) {
        stats.push(s);
      }
    }
  }
  return stats;
}

/** A process and its live descendants (those that exited are in their parent's reaped ticks). */
function tree(stats: ProcStat[], root: number): ProcStat[] {
  const children = new Map<number, ProcStat[]>();
  for (const s of stats) {
    children.set(s.ppid, [...(children.get(s.ppid) ?? []), s]);
  }
  const found: ProcStat[] = [];
  const stack = stats.filter((s) => s.pid === root);
  while (stack.length) {
    const s = stack.pop() as ProcStat;
    found.push(s);
    stack.push(...(children.get(s.pid) ?? []));
  }
  return found;
}

const TICKS_PER_SECOND = 100;

/** Per group: process trees (a pid with its descendants) and single processes (`self`, without children). */
export interface CpuGroups {
  [group: string]: { trees?: number[]; self?: number[] };
}

export interface CpuUse {
  /** Cores used on average per group, plus `postgres` (every postgres process) and `other` (the rest of the machine). */
  cores: Record<string, number>;
  seconds: number;
}

function machineBusyTicks(): number {
  const fields = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  return fields.reduce((a, b) => a + b, 0) - fields[3] - (fields[4] ?? 0);
}

/** The database whose backends count as "Postgres" (set by the run); other databases' backends count as other load. */
let benchDatabase: string | undefined;
export function setBenchDatabase(name: string): void {
  benchDatabase = name;
}

/**
 * Postgres CPU that belongs to the bench: the server's own processes (WAL writer, checkpointer…)
 * and the backends connected to the bench database, not backends of other databases on the same
 * server. The postmaster counts without its reaped children (exited backends of any database).
 */
function postgresTicks(s: ProcStat): number {
  if (s.comm !== 'postgres') {
    return 0;
  }
  if (!s.cmdline.startsWith('postgres:')) {
    return s.own; // the postmaster
  }
  // "postgres: [15/main: ]user database host(port) state" (the cluster prefix is Debian's)
  const backend = /^postgres: (?:[^:\s]+: )?(?:autovacuum worker )?\S+ (\S+) (?:\S+\(\d+\)|\[local\])/.exec(s.cmdline);
  if (backend && benchDatabase && backend[1] !== benchDatabase) {
    return 0;
  }
  return s.own + s.reaped;
}

/** Starts measuring CPU per group (root pids with their process trees); `stop()` gives cores used meanwhile. */
export function cpuMeter(groups: CpuGroups): { stop(): CpuUse } {
  // Per process, so that a process ending during the window (an idle pool connection's backend,
  // a bot process) loses only its own last ticks instead of making its group's sum go down.
  const snapshot = (): Map<string, Map<number, number>> => {
    const stats = allStats();
    const result = new Map<string, Map<number, number>>();
    for (const [group, pids] of Object.entries(groups)) {
      const ticks = new Map<number, number>();
      for (const root of pids.trees ?? []) {
        for (const s of tree(stats, root)) {
          ticks.set(s.pid, s.own + s.reaped);
        }
      }
      for (const s of stats.filter((x) => pids.self?.includes(x.pid))) {
        ticks.set(s.pid, s.own);
      }
      result.set(group, ticks);
    }
    result.set('postgres', new Map(stats.filter((s) => s.comm === 'postgres').map((s) => [s.pid, postgresTicks(s)])));
    return result;
  };
  const before = snapshot();
  const machineBefore = machineBusyTicks();
  const started = performance.now();
  return {
    stop: () => {
      const after = snapshot();
      const seconds = (performance.now() - started) / 1000;
      const cores: Record<string, number> = {};
      let accounted = 0;
      for (const [group, ticks] of after) {
        const earlier = before.get(group) ?? new Map<number, number>();
        let delta = 0;
        for (const [pid, t] of ticks) {
          delta += Math.max(0, t - (earlier.get(pid) ?? 0));
        }
        cores[group] = delta / TICKS_PER_SECOND / seconds;
        accounted += cores[group];
      }
      const machine = (machineBusyTicks() - machineBefore) / TICKS_PER_SECOND / seconds;
      cores.other = Math.max(0, machine - accounted);
      return { cores, seconds };
    },
  };
}

/** Live child processes of `pid`. */
export function childPids(pid: number): number[] {
  return allStats().filter((s) => s.ppid === pid).map((s) => s.pid);
}

/** Peak resident memory of a process so far (VmHWM), in MB; NaN when it is gone. */
export function peakRssMb(pid: number): number {
  try {
    const match = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match ? Number(match[1]) / 1024 : Number.NaN;
  } catch {
    return Number.NaN;
  }
}
