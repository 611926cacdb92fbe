import type { ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import type { BotRunResult } from './runtime.ts';

export interface PoolOptions {
  /** Processes at most, all bots together; also the executions at once (more wait). */
  size: number;
  /** An idle process exits after this long; 0 ends every process after one execution. */
  idleMs: number;
  /** The processes' heap cap (for the error message, and to retire a process whose heap grew). */
  memoryMb: number;
}

/** One execution, as the runtime hands it to the pool. */
export interface PoolTask {
  /** The bot (project and id). A process only ever serves the bot that it was started for. */
  owner: string;
  /** Whatever decides what the process runs and may do (owner, code hash, limits): same key, same process. */
  key: string;
  /** Starts a confined process for this key and gives it the bot's code (it loads it once). */
  start(): ChildProcess;
  /** What the execution needs (event, baseUrl, token); the pool adds a fresh nonce. */
  message: Record<string, unknown>;
  timeoutMs: number;
}

/** What the child answers, with the nonce of the execution it answers. */
interface ResultMessage {
  nonce?: string;
  ok: boolean;
  contentType?: string;
  body?: string;
  error?: string;
  logs: string;
  /** The bot's code could not be loaded: the process is of no further use. */
  retire?: boolean;
  heapUsed?: number;
}

type Outcome = Omit<BotRunResult, 'durationMs'>;

interface Worker {
  child: ChildProcess;
  owner: string;
  key: string;
  busy: boolean;
  /** The bot was redeployed while this process was busy: it ends after this execution. */
  stale: boolean;
  lastUsed: number;
  stderr: string;
  idleTimer?: NodeJS.Timeout;
  /** The execution in progress: only a message with its nonce may end it. */
  current?: { nonce: string; end(outcome: Outcome, reusable: boolean): void };
  exited: Promise<void>;
}

/**
 * Warm bot processes, so that an execution does not pay for starting Node and loading
 * @medplum/core (100–200 ms). A process serves one bot (owner) and one version of its code (key),
 * one execution at a time; several run side by side when executions of a bot overlap. Any
 * execution that ends abnormally (timeout, crash, exit, out of memory, a code that would not load)
 * takes its process with it: only a process that answered properly is used again.
 *
 * Work a bot leaves running after it answered stays in its process and can see that bot's later
 * executions there (their events, tokens and nonces). That is the same bot's own code, which sees
 * them anyway; other bots never share the process.
 */
export class BotProcessPool {
  private readonly options: PoolOptions;
  /** Every live process: never more than `size`. */
  private readonly workers = new Set<Worker>();
  private active = 0;
  private readonly waiting: (() => void)[] = [];
  private closed = false;

  constructor(options: PoolOptions) {
    this.options = options;
  }

  /** The process ids of the live processes (tests, diagnostics). */
  get pids(): number[] {
    return [...this.workers].map((w) => w.child.pid).filter((pid): pid is number => pid !== undefined);
  }

  async run(task: PoolTask): Promise<BotRunResult> {
    await this.acquire();
    try {
      if (this.closed) {
        return { ok: false, error: 'The server is shutting down', logs: '', durationMs: 0 };
      }
      return await this.execute(task);
    } finally {
      this.release();
    }
  }

  /** Ends every process (server shutdown) and waits until they are gone. */
  async close(): Promise<void> {
    this.closed = true;
    const exits = [...this.workers].map((w) => w.exited);
    for (const worker of this.workers) {
      this.kill(worker);
    }
    // SIGKILL cannot be refused; the bound only guards against an exit event that never comes. (The
    // timer also keeps the event loop alive until the exits are seen: the processes are unref'd.)
    let bound: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all(exits), new Promise((r) => (bound = setTimeout(r, 5000)))]);
    clearTimeout(bound);
  }

  private execute(task: PoolTask): Promise<BotRunResult> {
    const started = performance.now();
    this.retireOtherVersions(task.owner, task.key);
    const worker = this.idleWorker(task.key) ?? this.spawn(task);
    worker.busy = true;
    worker.stderr = '';
    return new Promise((resolve) => {
      let settled = false;
      const nonce = randomUUID();
      const end = (outcome: Outcome, reusable: boolean): void => {
        if (settled) {
          return;
        }
        settled = true;
        clearTimeout(timer);
        worker.current = undefined;
        if (reusable) {
          this.park(worker);
        } else {
          this.kill(worker);
        }
        resolve({ ...outcome, durationMs: Math.round(performance.now() - started) });
      };
      // The timer covers a cold start too, as it did when every execution had a new process.
      const timer = setTimeout(() => end({ ok: false, error: `Bot timed out after ${task.timeoutMs} ms`, logs: '' }, false), task.timeoutMs);
      worker.current = { nonce, end };
      worker.child.send({ ...task.message, nonce });
    });
  }

  /** The most recently used idle process of this key (the others may then idle out). */
  private idleWorker(key: string): Worker | undefined {
    let found: Worker | undefined;
    for (const w of this.workers) {
      if (w.key === key && !w.busy && !w.stale && (!found || w.lastUsed > found.lastUsed)) {
        found = w;
      }
    }
    if (found) {
      clearTimeout(found.idleTimer);
    }
    return found;
  }

  private spawn(task: PoolTask): Worker {
    if (this.workers.size >= this.options.size) {
      // Make room: the least recently used idle process, of whichever bot. There is one: busy
      // processes are fewer than the executions admitted (`size`), this one being without one yet.
      let victim: Worker | undefined;
      for (const w of this.workers) {
        if (!w.busy && (!victim || w.lastUsed < victim.lastUsed)) {
          victim = w;
        }
      }
      if (victim) {
        this.kill(victim);
      }
    }
    const child = task.start();
    let exited!: () => void;
    const worker: Worker = {
      child,
      owner: task.owner,
      key: task.key,
      busy: true,
      stale: false,
      lastUsed: performance.now(),
      stderr: '',
      exited: new Promise((r) => (exited = r)),
    };
    // An idle process must not keep the server's event loop alive; executions hold their own timer.
    child.unref();
    child.channel?.unref();
    (child.stderr as { unref?: () => void } | null)?.unref?.();
    child.stderr?.on('data', (d: Buffer) => {
      worker.stderr = (worker.stderr + d.toString()).slice(-4000);
    });
    child.on('message', (message: unknown) => {
      const m = message as ResultMessage;
      if (!worker.current || m?.nonce !== worker.current.nonce) {
        return; // sent by the bot itself (process.send), or a late answer: not the runner's current result
      }
      // A heap past half the cap (state the bot keeps, a leak) would fail a later execution: start afresh.
      const reusable = !m.retire && (m.heapUsed ?? 0) < (this.options.memoryMb * 1024 * 1024) / 2;
      worker.current.end(m.ok ? { ok: true, contentType: m.contentType, body: m.body, logs: m.logs } : { ok: false, error: m.error, logs: m.logs }, reusable);
    });
    child.on('error', (err) => {
      worker.current?.end({ ok: false, error: `Bot process failed: ${err.message}`, logs: '' }, false);
      this.kill(worker);
      if (child.pid === undefined) {
        exited(); // never started: no exit event will come
      }
    });
    child.on('exit', (exitCode, signal) => {
      this.forget(worker);
      exited();
      const reason = /heap out of memory|Allocation failed/i.test(worker.stderr)
        ? `Bot ran out of memory (${this.options.memoryMb} MB)`
        : `Bot process exited (${signal ?? `code ${exitCode}`}) before answering`;
      worker.current?.end({ ok: false, error: reason, logs: '' }, false);
    });
    this.workers.add(worker);
    return worker;
  }

  /** A redeployed bot must not run its old code: old processes end now, or after their execution. */
  private retireOtherVersions(owner: string, key: string): void {
    for (const w of this.workers) {
      if (w.owner === owner && w.key !== key) {
        if (w.busy) {
          w.stale = true;
        } else {
          this.kill(w);
        }
      }
    }
  }

  private park(worker: Worker): void {
    if (this.closed || worker.stale || this.options.idleMs === 0 || !this.workers.has(worker)) {
      this.kill(worker);
      return;
    }
    worker.busy = false;
    worker.lastUsed = performance.now();
    worker.idleTimer = setTimeout(() => this.kill(worker), this.options.idleMs);
    worker.idleTimer.unref();
  }

  /** SIGKILL, and out of the pool at once (its slot is free: the process cannot outlive the signal). */
  private kill(worker: Worker): void {
    this.forget(worker);
    worker.child.kill('SIGKILL');
  }

  private forget(worker: Worker): void {
    clearTimeout(worker.idleTimer);
    this.workers.delete(worker);
  }

  private acquire(): Promise<void> {
    if (this.active < this.options.size) {
      this.active++;
      return Promise.resolve();
    }
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  private release(): void {
    const next = this.waiting.shift();
    if (next) {
      next();
    } else {
      this.active--;
    }
  }
}
