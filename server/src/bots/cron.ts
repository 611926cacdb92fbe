import { CronExpressionParser } from 'cron-parser';
import type { Bot, Timing } from '@medplum/fhirtypes';
import type pg from 'pg';
import type { Directory } from '../auth/directory.ts';
import type { Job, JobQueue, NewJob } from '../jobs/queue.ts';
import { JobFailure } from '../jobs/runner.ts';
import type { JobHandler } from '../jobs/runner.ts';
import type { BotExecutor } from './executor.ts';

interface CronPayload {
  [key: string]: unknown;
  botId: string;
  scheduledFor: string;
}

/**
 * Cron bots (`Bot.cronString`, or `Bot.cronTiming` read as cron): every node looks at the clock
 * now and then and enqueues the runs that fell due in the last window. Each run is first recorded
 * in `cron_run` (bot and due time, kept a day), so however many nodes or restarts see it, it runs
 * once, and a node that was down for less than the window catches up.
 */
export class CronScheduler {
  private readonly pool: pg.Pool;
  private readonly queue: JobQueue;
  private readonly tickMs: number;
  private timer: NodeJS.Timeout | undefined;
  private last = new Date();
  private readonly onError: (err: unknown) => void;

  constructor(pool: pg.Pool, queue: JobQueue, tickMs: number, onError: (err: unknown) => void) {
    this.pool = pool;
    this.queue = queue;
    this.tickMs = tickMs;
    this.onError = onError;
  }

  start(): void {
    // Runs due shortly before this node started are still scheduled (cron_run stops doubles).
    this.last = new Date(Date.now() - 2 * this.tickMs);
    this.timer = setInterval(() => void this.tick().catch(this.onError), this.tickMs);
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** Schedules the runs due in (`from`, `now`]; by default since the previous tick. */
  async tick(now = new Date(), from = this.last): Promise<void> {
    this.last = now;
    const { rows } = await this.pool.query<{ project_id: string; content: string }>(
      `SELECT project_id, content FROM resource
       WHERE resource_type = 'Bot' AND NOT deleted AND (content::jsonb ? 'cronString' OR content::jsonb ? 'cronTiming')`
    );
    const candidates: { projectId: string; botId: string; due: Date }[] = [];
    for (const row of rows) {
      const bot = JSON.parse(row.content) as Bot & { id: string };
      for (const expression of cronExpressions(bot)) {
        for (const due of dueTimes(expression, from, now)) {
          candidates.push({ projectId: row.project_id, botId: `${row.project_id}/${bot.id}`, due });
        }
      }
    }
    if (candidates.length === 0) {
      return;
    }
    // The run is claimed in cron_run first: whichever node (or restart) sees it again, one job.
    const { rows: claimed } = await this.pool.query<{ bot_id: string; due: Date }>(
      `INSERT INTO cron_run (bot_id, due) SELECT * FROM unnest($1::text[], $2::timestamptz[]) ON CONFLICT DO NOTHING RETURNING bot_id, due`,
      [candidates.map((c) => c.botId), candidates.map((c) => c.due)]
    );
    const jobs: NewJob[] = claimed.map((c) => {
      const [projectId, botId] = c.bot_id.split('/');
      const payload: CronPayload = { botId, scheduledFor: c.due.toISOString() };
      return { projectId, kind: 'bot-cron', payload, maxAttempts: 1 };
    });
    await this.queue.enqueue(jobs);
    if (Math.random() < 0.01) {
      await this.pool.query("DELETE FROM cron_run WHERE due < now() - interval '1 day'");
    }
  }
}

/** The cron expressions of a bot: its cronString, or its cronTiming translated. */
export function cronExpressions(bot: Bot): string[] {
  if (bot.cronString?.trim()) {
    return [bot.cronString.trim()];
  }
  return bot.cronTiming ? timingToCron(bot.cronTiming) : [];
}

/** `Timing.repeat` as cron: `timeOfDay` (with `dayOfWeek`), or every `period` `periodUnit`. */
export function timingToCron(timing: Timing): string[] {
  const repeat = timing.repeat;
  if (!repeat) {
    return [];
  }
  const days = repeat.dayOfWeek?.length ? repeat.dayOfWeek.map((d) => ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'].indexOf(d)).join(',') : '*';
  if (repeat.timeOfDay?.length) {
    return repeat.timeOfDay.map((time) => {
      const [h, m, s] = time.split(':').map(Number);
      return `${s || 0} ${m || 0} ${h} * * ${days}`;
    });
  }
  const period = Math.max(1, Math.round(repeat.period ?? 1));
  switch (repeat.periodUnit) {
    case 's':
      return [`*/${period} * * * * ${days}`];
    case 'min':
      return [`0 */${period} * * * ${days}`];
    case 'h':
      return [`0 0 */${period} * * ${days}`];
    case 'd':
      return [`0 0 0 */${period} * ${days}`];
    default:
      return [];
  }
}

function dueTimes(expression: string, from: Date, to: Date): Date[] {
  try {
    const iterator = CronExpressionParser.parse(expression, { currentDate: from, endDate: to });
    const out: Date[] = [];
    while (iterator.hasNext() && out.length < 1000) {
      out.push(iterator.next().toDate());
    }
    return out;
  } catch {
    return []; // an invalid expression schedules nothing (the Bot write could not know)
  }
}

/** A cron run: the bot gets itself as input, as on Medplum. */
export function cronHandler(directory: Directory, executor: BotExecutor): JobHandler {
  return async (job: Job): Promise<void> => {
    const payload = job.payload as CronPayload;
    const bot = (await directory.find<Bot>('Bot', payload.botId, job.projectId))?.resource;
    if (!bot || cronExpressions(bot).length === 0) {
      return;
    }
    const result = await executor.execute({ bot, projectId: job.projectId, input: bot, contentType: 'application/fhir+json' });
    if (!result.ok) {
      throw new JobFailure(result.error ?? 'bot failed');
    }
  };
}
