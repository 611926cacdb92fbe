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
 * now and then and enqueues the runs that fell due in the last window. Each run has a dedupe key
 * (bot and minute), so however many nodes schedule it, it runs once, and a node that was down
 * for less than the window catches up.
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
    // Runs due shortly before this node started are still scheduled (the dedupe key stops doubles).
    this.last = new Date(Date.now() - 2 * this.tickMs);
    this.timer = setInterval(() => void this.tick().catch(this.onError), this.tickMs);
  }

  stop(): void {
    clearInterval(this.timer);
  }

  async tick(now = new Date()): Promise<void> {
    const from = this.last;
    this.last = now;
    const { rows } = await this.pool.query<{ project_id: string; content: string }>(
      `SELECT project_id, content FROM resource
       WHERE resource_type = 'Bot' AND NOT deleted AND (content::jsonb ? 'cronString' OR content::jsonb ? 'cronTiming')`
    );
    const jobs: NewJob[] = [];
    for (const row of rows) {
      const bot = JSON.parse(row.content) as Bot & { id: string };
      for (const expression of cronExpressions(bot)) {
        for (const due of dueTimes(expression, from, now)) {
          const payload: CronPayload = { botId: bot.id, scheduledFor: due.toISOString() };
          jobs.push({ projectId: row.project_id, kind: 'bot-cron', payload, maxAttempts: 1, dedupeKey: `cron:${bot.id}:${due.toISOString()}` });
        }
      }
    }
    await this.queue.enqueue(jobs);
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
