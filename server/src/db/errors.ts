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

/** Wraps a pool or client so that every failed query throws a DatabaseError (logged unless expected). */
export function guarded(db: Queryable): Queryable {
  return {
    query: (async (...args: Parameters<pg.Pool['query']>) => {
      try {
        return await (db.query as (...a: unknown[]) => Promise<unknown>)(...args);
      } catch (err) {
        const wrapped = new DatabaseError(err);
        if (!EXPECTED.has(wrapped.code ?? '')) {
          console.error('database error', wrapped.code, (err as Error).message);
        }
        throw wrapped;
      }
    }) as pg.Pool['query'],
  };
}
