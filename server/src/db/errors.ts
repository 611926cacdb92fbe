import { OperationOutcomeError } from '@medplum/core';
import type pg from 'pg';
import type { Queryable } from './pool.ts';

/** Postgres error codes the repository handles itself rather than reporting as a server error. */
const EXPECTED = new Set(['23505', '40001', '40P01']);

/**
 * A database failure, carried as an OperationOutcome with code `exception` (HTTP 500) so that no
 * SQL text reaches a client, even where fhir-router turns errors into outcomes itself. `code` keeps
 * the Postgres error code for the retry and conflict logic.
 */
export class DatabaseError extends OperationOutcomeError {
  readonly code: string | undefined;

  constructor(cause: unknown) {
    super(
      { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'exception', details: { text: 'Internal server error' } }] },
      { cause }
    );
    this.code = (cause as { code?: string }).code;
  }
}

/** A deadlock: the transaction can simply run again. (READ COMMITTED raises no serialization failures.) */
export function isRetryable(err: unknown): boolean {
  return err instanceof DatabaseError && err.code === '40P01';
}

/**
 * Wraps a pool or client so that every failed query throws a DatabaseError (logged unless expected).
 * `onError` sees each one first, even if a caller later turns it into an OperationOutcome.
 */
export function guarded(db: Queryable, onError?: (err: DatabaseError) => void): Queryable {
  return {
    query: (async (...args: Parameters<pg.Pool['query']>) => {
      try {
        return await (db.query as (...a: unknown[]) => Promise<unknown>)(...args);
      } catch (err) {
        const wrapped = err instanceof DatabaseError ? err : new DatabaseError(err);
        if (!EXPECTED.has(wrapped.code ?? '')) {
          console.error('database error', wrapped.code, (err as Error).message);
        }
        onError?.(wrapped);
        throw wrapped;
      }
    }) as pg.Pool['query'],
  };
}

/** pool.connect, with a failure (database down, pool closed) reported as a DatabaseError. */
export async function connect(pool: pg.Pool): Promise<pg.PoolClient> {
  try {
    return await pool.connect();
  } catch (err) {
    console.error('database connection failed', (err as Error).message);
    throw new DatabaseError(err);
  }
}
