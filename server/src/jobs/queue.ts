import type { Queryable } from '../db/pool.ts';

export type JobStatus = 'pending' | 'running' | 'dead';

export interface Job<P = Record<string, unknown>> {
  id: string;
  /** This claim's lease; finishing or failing the job needs it. */
  lease: string;
  projectId: string;
  kind: string;
  payload: P;
  status: JobStatus;
  attempts: number;
  maxAttempts: number;
  runAt: Date;
  lastError: string | null;
  created: Date;
  updated: Date;
}

interface JobRow {
  id: string;
  lease: string;
  project_id: string;
  kind: string;
  payload: Record<string, unknown>;
  status: JobStatus;
  attempts: number;
  max_attempts: number;
  run_at: Date;
  last_error: string | null;
  created: Date;
  updated: Date;
}

function toJob(row: JobRow): Job {
  return {
    id: row.id,
    lease: row.lease,
    projectId: row.project_id,
    kind: row.kind,
    payload: row.payload,
    status: row.status,
    attempts: row.attempts,
    maxAttempts: row.max_attempts,
    runAt: row.run_at,
    lastError: row.last_error,
    created: row.created,
    updated: row.updated,
  };
}

export interface NewJob {
  projectId: string;
  kind: string;
  payload: Record<string, unknown>;
  maxAttempts: number;
  /** At most one job ever exists per key (a second enqueue of it does nothing). */
  dedupeKey?: string;
}

/**
 * The `job` table as a queue: claimed with FOR UPDATE SKIP LOCKED under a lease, so several nodes
 * share it and a job whose node dies is claimed again when its lease runs out (at least once).
 */
export class JobQueue {
  private readonly db: Queryable;

  constructor(db: Queryable) {
    this.db = db;
  }

  /** Adds jobs; pass a transaction's client to enqueue atomically with other writes. */
  async enqueue(jobs: NewJob[], db: Queryable = this.db): Promise<void> {
    if (jobs.length === 0) {
      return;
    }
    await db.query(
      `INSERT INTO job (project_id, kind, payload, max_attempts, dedupe_key)
       SELECT * FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::int[], $5::text[])
       ON CONFLICT (dedupe_key) DO NOTHING`,
      [
        jobs.map((j) => j.projectId),
        jobs.map((j) => j.kind),
        jobs.map((j) => JSON.stringify(j.payload)),
        jobs.map((j) => j.maxAttempts),
        jobs.map((j) => j.dedupeKey ?? null),
      ]
    );
  }

  /** Takes one due job of the given kinds (or of an expired lease), leased for `leaseSeconds`. */
  async claim(kinds: readonly string[], leaseSeconds: number): Promise<Job | undefined> {
    // A job whose node died on its last attempt is not run again: it is dead.
    await this.db.query(
      `UPDATE job SET status = 'dead', locked_until = NULL, updated = now(),
              last_error = coalesce(last_error || '; ', '') || 'lease expired on the last attempt'
       WHERE status = 'running' AND locked_until < now() AND attempts >= max_attempts AND kind = ANY($1::text[])`,
      [kinds]
    );
    const { rows } = await this.db.query<JobRow>(
      `UPDATE job SET status = 'running', attempts = attempts + 1, locked_until = now() + make_interval(secs => $2),
              lease = gen_random_uuid(), updated = now()
       WHERE id = (
         SELECT id FROM job
         WHERE kind = ANY($1::text[])
           AND ((status = 'pending' AND run_at <= now()) OR (status = 'running' AND locked_until < now()))
         ORDER BY run_at
         FOR UPDATE SKIP LOCKED
         LIMIT 1)
       RETURNING *`,
      [kinds, leaseSeconds]
    );
    return rows[0] ? toJob(rows[0]) : undefined;
  }

  /** Keeps a running job's lease alive; false when the lease was lost (another node may run it). */
  async extend(job: Job, leaseSeconds: number): Promise<boolean> {
    const { rowCount } = await this.db.query(
      `UPDATE job SET locked_until = now() + make_interval(secs => $3) WHERE id = $1 AND lease = $2 AND status = 'running'`,
      [job.id, job.lease, leaseSeconds]
    );
    return rowCount === 1;
  }

  /** Finished (or nothing left to do): the job goes; its AuditEvents tell what happened. */
  async complete(job: Job): Promise<void> {
    await this.db.query('DELETE FROM job WHERE id = $1 AND lease = $2', [job.id, job.lease]);
  }

  /** A failed attempt: due again after `retryInMs`, or dead once its attempts are used up (or when `permanent`). */
  async fail(job: Job, error: string, retryInMs: number, permanent = false): Promise<JobStatus> {
    const dead = permanent || job.attempts >= job.maxAttempts;
    await this.db.query(
      `UPDATE job SET status = $2, last_error = $3, locked_until = NULL, updated = now(),
              run_at = CASE WHEN $2 = 'pending' THEN now() + make_interval(secs => $4) ELSE run_at END
       WHERE id = $1 AND lease = $5`,
      [job.id, dead ? 'dead' : 'pending', error.slice(0, 2000), retryInMs / 1000, job.lease]
    );
    return dead ? 'dead' : 'pending';
  }

  /** Drops dead jobs nobody replayed within `days` (their AuditEvents remain). */
  async purgeDead(days: number): Promise<void> {
    await this.db.query(`DELETE FROM job WHERE status = 'dead' AND updated < now() - make_interval(days => $1)`, [days]);
  }

  /** Dead jobs of a project, newest first (the dead-letter list). */
  async dead(projectId: string, limit = 100): Promise<Job[]> {
    const { rows } = await this.db.query<JobRow>(
      `SELECT * FROM job WHERE project_id = $1 AND status = 'dead' ORDER BY updated DESC LIMIT $2`,
      [projectId, limit]
    );
    return rows.map(toJob);
  }

  /** Puts a dead job of the project back in the queue with fresh attempts; false if there is none. */
  async replay(projectId: string, id: string): Promise<boolean> {
    if (!/^\d{1,19}$/.test(id)) {
      return false;
    }
    const { rowCount } = await this.db.query(
      `UPDATE job SET status = 'pending', attempts = 0, run_at = now(), last_error = NULL, updated = now()
       WHERE id = $1 AND project_id = $2 AND status = 'dead'`,
      [id, projectId]
    );
    return rowCount === 1;
  }
}
