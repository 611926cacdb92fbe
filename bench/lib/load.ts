/**
 * Closed-loop load: N workers each repeat an iteration (one or more timed requests) as fast as the
 * system answers, first for a warm-up, then for a measured window. Bounded in time and in count.
 * Only requests that start inside the window are counted.
 */
import { percentile } from './stats.ts';

export interface OpResult {
  op: string;
  count: number;
  errors: number;
  p50: number;
  p95: number;
  p99: number;
}

export interface LoadResult {
  /** Length of the measured window (s). */
  seconds: number;
  /** Requests (timed operations) started in the window and finished. */
  requests: number;
  errors: number;
  /** Requests per second over the window. */
  throughput: number;
  p50: number;
  p95: number;
  p99: number;
  ops: OpResult[];
  /** The first few distinct error messages. */
  errorSamples: string[];
}

/** Times one operation inside an iteration; a thrown error counts as that operation's error and ends the iteration. */
export type Timed = <T>(op: string, fn: () => Promise<T>) => Promise<T>;

export interface LoadOptions {
  workers: number;
  warmupMs: number;
  durationMs: number;
  /** Stop the window after this many iterations (a bound on count as well as time; default 1,000,000). */
  maxIterations?: number;
  iteration: (worker: number, timed: Timed) => Promise<void>;
  /** Called when the measured window opens and when the load has ended (to measure CPU over the window). */
  onWindow?: { start(): void; end(): void };
}

class IterationFailed extends Error {}

export async function closedLoop(options: LoadOptions): Promise<LoadResult> {
  const latencies = new Map<string, number[]>();
  const errors = new Map<string, number>();
  const errorSamples = new Set<string>();
  const started = performance.now();
  const windowStart = started + options.warmupMs;
  const windowEnd = windowStart + options.durationMs;
  let iterations = 0;
  let stopAt = windowEnd;
  const inWindow = (t: number): boolean => t >= windowStart && t < stopAt;

  const timed: Timed = async (op, fn) => {
    const t0 = performance.now();
    try {
      const value = await fn();
      if (inWindow(t0)) {
        let list = latencies.get(op);
        if (!list) {
          latencies.set(op, (list = []));
        }
        list.push(performance.now() - t0);
      }
      return value;
    } catch (err) {
      if (inWindow(t0)) {
        errors.set(op, (errors.get(op) ?? 0) + 1);
        if (errorSamples.size < 5) {
          errorSamples.add(`${op}: ${(err as Error).message}`.slice(0, 300));
        }
      }
      throw new IterationFailed((err as Error).message);
    }
  };

  const worker = async (index: number): Promise<void> => {
    while (performance.now() < stopAt) {
      const t0 = performance.now();
      try {
        await options.iteration(index, timed);
      } catch (err) {
        if (!(err instanceof IterationFailed)) {
          throw err;
        }
        // A failing system must not turn the loop into a busy spin.
        await new Promise((r) => setTimeout(r, 10));
      }
      if (inWindow(t0)) {
        iterations++;
        if (iterations >= (options.maxIterations ?? 1_000_000)) {
          stopAt = Math.min(stopAt, performance.now());
        }
      }
    }
  };
  const opening = setTimeout(() => options.onWindow?.start(), options.warmupMs);
  await Promise.all(Array.from({ length: options.workers }, (_, i) => worker(i)));
  clearTimeout(opening);
  options.onWindow?.end();

  const seconds = (Math.min(stopAt, windowEnd) - windowStart) / 1000;
  const all = [...latencies.values()].flat();
  const ops: OpResult[] = [...new Set([...latencies.keys(), ...errors.keys()])].sort().map((op) => {
    const list = latencies.get(op) ?? [];
    return { op, count: list.length, errors: errors.get(op) ?? 0, p50: percentile(list, 50), p95: percentile(list, 95), p99: percentile(list, 99) };
  });
  const errorCount = [...errors.values()].reduce((a, b) => a + b, 0);
  return {
    seconds,
    requests: all.length,
    errors: errorCount,
    throughput: seconds > 0 ? all.length / seconds : Number.NaN,
    p50: percentile(all, 50),
    p95: percentile(all, 95),
    p99: percentile(all, 99),
    ops,
    errorSamples: [...errorSamples],
  };
}
