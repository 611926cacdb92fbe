import type pg from 'pg';
import type { JobQueue, NewJob } from './queue.ts';

/** One committed write, as the outbox holds it. */
export interface OutboxEvent {
  id: string;
  projectId: string;
  resourceType: string;
  resourceId: string;
  versionId: string;
  previousVersionId: string | null;
  interaction: 'create' | 'update' | 'delete';
}

/** Turns events into jobs; runs inside the dispatching transaction (`db` is its client). */
export type EventHandler = (events: OutboxEvent[], db: pg.PoolClient) => Promise<NewJob[]>;

/**
 * Moves outbox rows into jobs: in one transaction it takes a batch (SKIP LOCKED, so nodes share
 * the work), asks the handlers for jobs, inserts them and deletes the rows. A crash before commit
 * leaves the rows for the next round.
 */
export class OutboxDispatcher {
  private readonly pool: pg.Pool;
  private readonly queue: JobQueue;
  private readonly handlers: EventHandler[];

  /** Called after a batch commits (e.g. to tell other nodes over Redis that notifications wait). */
  onCommitted: (() => void) | undefined;

  constructor(pool: pg.Pool, queue: JobQueue, handlers: EventHandler[]) {
    this.pool = pool;
    this.queue = queue;
    this.handlers = handlers;
  }

  /** Dispatches one batch; returns how many events it took. */
  async runOnce(batchSize = 200): Promise<number> {
    const client = await this.pool.connect();
    try {
      await client.query('BEGIN');
      const { rows } = await client.query<{
        id: string;
        project_id: string;
        resource_type: string;
        resource_id: string;
        version_id: string;
        previous_version_id: string | null;
        interaction: OutboxEvent['interaction'];
      }>(
        `DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id FOR UPDATE SKIP LOCKED LIMIT $1)
         RETURNING *`,
        [batchSize]
      );
      const events: OutboxEvent[] = rows
        .map((r) => ({
          id: r.id,
          projectId: r.project_id,
          resourceType: r.resource_type,
          resourceId: r.resource_id,
          versionId: r.version_id,
          previousVersionId: r.previous_version_id,
          interaction: r.interaction,
        }))
        .sort((a, b) => Number(a.id) - Number(b.id));
      if (events.length > 0) {
        const jobs: NewJob[] = [];
        for (const handler of this.handlers) {
          jobs.push(...(await handler(events, client)));
        }
        await this.queue.enqueue(jobs, client);
      }
      await client.query('COMMIT');
      if (events.length > 0) {
        this.onCommitted?.();
      }
      return events.length;
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw err;
    } finally {
      client.release();
    }
  }
}
