import pg from 'pg';

/** One statement the server sent to Postgres, with its bind values and round-trip time. */
export interface CapturedSql {
  text: string;
  values: unknown[] | undefined;
  ms: number;
}

/**
 * Records the SQL that the server runs, by wrapping `pg.Client.prototype.query` in this process
 * (the pool's clients inherit it). Only the bench process is affected; the server code is not
 * changed. Recording is off until `start()`.
 */
export class SqlCapture {
  private log: CapturedSql[] | undefined;
  private readonly original = pg.Client.prototype.query;

  install(): void {
    const original = this.original;
    const capture = this;
    pg.Client.prototype.query = function (this: pg.Client, ...args: unknown[]): unknown {
      const log = capture.log;
      if (!log) {
        return (original as (...a: unknown[]) => unknown).apply(this, args);
      }
      const started = performance.now();
      const first = args[0] as string | { text?: string; values?: unknown[] };
      const text = typeof first === 'string' ? first : (first?.text ?? '');
      const values = Array.isArray(args[1]) ? (args[1] as unknown[]) : typeof first === 'object' ? first?.values : undefined;
      const record = (): void => {
        log.push({ text, values, ms: performance.now() - started });
      };
      // pg-pool calls client.query(text, values, callback); the repository awaits the promise form
      const last = args.length - 1;
      if (typeof args[last] === 'function') {
        const callback = args[last] as (...a: unknown[]) => unknown;
        args[last] = (...cbArgs: unknown[]): unknown => {
          record();
          return callback(...cbArgs);
        };
        return (original as (...a: unknown[]) => unknown).apply(this, args);
      }
      const result = (original as (...a: unknown[]) => unknown).apply(this, args);
      if (result && typeof (result as Promise<unknown>).then === 'function') {
        (result as Promise<unknown>).then(record, record);
      }
      return result;
    } as typeof pg.Client.prototype.query;
  }

  uninstall(): void {
    pg.Client.prototype.query = this.original;
  }

  start(): void {
    this.log = [];
  }

  /** Stops recording and returns what was recorded since start(). */
  stop(): CapturedSql[] {
    const log = this.log ?? [];
    this.log = undefined;
    return log;
  }
}

/** Statements worth explaining: reads, not transaction control. */
export function isExplainable(sql: CapturedSql): boolean {
  return /^\s*(WITH\b[\s\S]*\bSELECT|SELECT)\b/i.test(sql.text) && !/\b(INSERT|UPDATE|DELETE)\b/i.test(sql.text) && !/\bFOR UPDATE\b/i.test(sql.text) && !/pg_advisory/i.test(sql.text);
}
