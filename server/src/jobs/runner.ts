import type pg from 'pg';
import type { OutboxDispatcher } from './outbox.ts';
import type { Job, JobQueue } from './queue.ts';

/** What a job handler throws to say how its failure should be treated. */
export class JobFailure extends Error {
  /** No retry can succeed (e.g. a refused address): the job goes to the dead-letter list at once. */
  readonly permanent: boolean;
  constructor(message: string, permanent = false) {
    super(message);
    this.permanent = permanent;
  }
}

export type JobHandler = (job: Job) => Promise<void>;

/** Dead jobs stay replayable this long. */
const DEAD_JOB_RETENTION_DAYS = 14;

export interface RunnerOptions {
  /** Jobs run at once by this node. */
  workers: number;
  /** How long a claimed job is this node's before another may take it. */
  leaseSeconds: number;
  /** First retry delay; doubles per attempt up to an hour. */
  retryBaseMs: number;
  /** Polling interval when no notification arrives (other nodes' work, retries coming due). */
  pollMs: number;
}

/**
 * Runs the outbox dispatcher and the job handlers of this node. The dispatcher is woken by this
 * node's writes, the workers by Postgres NOTIFY when a job becomes runnable (on any node); both
 * poll as a fallback (other nodes' writes, retries coming due). Waking only the loops that have
 * work keeps a write from costing a claim query per worker.
 */
export class JobRunner {
  private readonly pool: pg.Pool;
  private readonly queue: JobQueue;
  private readonly dispatcher: OutboxDispatcher;
  private readonly handlers: ReadonlyMap<string, JobHandler>;
  private readonly options: RunnerOptions;
  private listener: pg.PoolClient | undefined;
  private running = false;
  private readonly dispatcherWaiters = new Set<() => void>();
  private readonly workerWaiters = new Set<() => void>();
  private loops: Promise<void>[] = [];
  private readonly onError: (err: unknown) => void;

  constructor(
    pool: pg.Pool,
    queue: JobQueue,
    dispatcher: OutboxDispatcher,
    handlers: ReadonlyMap<string, JobHandler>,
    options: RunnerOptions,
    onError: (err: unknown) => void
  ) {
    this.pool = pool;
    this.queue = queue;
    this.dispatcher = dispatcher;
    this.handlers = handlers;
    this.options = options;
    this.onError = onError;
  }

  async start(): Promise<void> {
    if (this.options.workers <= 0) {
      return;
    }
    this.running = true;
    await this.listen();
    this.loops = [this.loop(() => this.dispatchAll(), this.dispatcherWaiters)];
    for (let i = 0; i < this.options.workers; i++) {
      this.loops.push(this.loop(() => this.runOne(), this.workerWaiters));
    }
  }

  async stop(): Promise<void> {
    this.running = false;
    this.notify(this.dispatcherWaiters);
    this.notify(this.workerWaiters);
    await Promise.all(this.loops);
    const listener = this.listener;
    if (listener) {
      this.listener = undefined;
      await listener.query('UNLISTEN *').catch(() => undefined);
      listener.release();
    }
  }

  /** LISTEN on a dedicated connection; if the database drops it, listen again (polling covers the gap). */
  private async listen(): Promise<void> {
    const client = await this.pool.connect();
    this.listener = client;
    client.on('notification', () => this.notify(this.workerWaiters));
    client.on('error', () => {
      // A client already given back (stop) may still report its connection's end: once only.
      if (this.listener !== client) {
        return;
      }
      this.listener = undefined;
      client.release(true);
      if (this.running) {
        setTimeout(() => void this.listen().catch(() => undefined), 1000);
      }
    });
    await client.query('LISTEN ermis_jobs');
  }

  /** A write on this node added outbox rows: dispatch now rather than at the next poll. */
  wake(): void {
    this.notify(this.dispatcherWaiters);
  }

  private notify(set: Set<() => void>): void {
    const waiters = [...set];
    set.clear();
    waiters.forEach((wake) => wake());
  }

  /** Repeats `step` while it finds work; otherwise sleeps until notified or the poll interval passes. */
  private async loop(step: () => Promise<boolean>, waiters: Set<() => void>): Promise<void> {
    while (this.running) {
      let worked = false;
      try {
        worked = await step();
      } catch (err) {
        this.onError(err);
      }
      if (!worked && this.running) {
        await new Promise<void>((resolve) => {
          const wake = (): void => {
            clearTimeout(timer);
            waiters.delete(wake);
            resolve();
          };
          const timer = setTimeout(wake, this.options.pollMs);
          waiters.add(wake);
        });
      }
    }
  }

  private lastPurge = 0;

  private async dispatchAll(): Promise<boolean> {
    if (Date.now() - this.lastPurge > 3600_000) {
      this.lastPurge = Date.now();
      await this.queue.purgeDead(DEAD_JOB_RETENTION_DAYS);
    }
    let any = false;
    while (this.running && (await this.dispatcher.runOnce()) > 0) {
      any = true;
    }
    return any;
  }

  private async runOne(): Promise<boolean> {
    const job = await this.queue.claim([...this.handlers.keys()], this.options.leaseSeconds);
    if (!job) {
      return false;
    }
    const handler = this.handlers.get(job.kind) as JobHandler;
    // The lease is renewed while the handler runs, so a long job is never taken by a second node.
    const renew = setInterval(
      () => void this.queue.extend(job, this.options.leaseSeconds).catch(() => undefined),
      Math.max(1000, (this.options.leaseSeconds * 1000) / 3)
    );
    try {
      await handler(job);
      await this.queue.complete(job);
    } catch (err) {
      const permanent = err instanceof JobFailure && err.permanent;
      const delay = Math.min(this.options.retryBaseMs * 2 ** (job.attempts - 1), 3600_000);
      await this.queue.fail(job, err instanceof Error ? err.message : String(err), delay, permanent);
    } finally {
      clearInterval(renew);
    }
    return true;
  }
}
