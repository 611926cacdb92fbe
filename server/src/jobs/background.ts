import type pg from 'pg';
import { AgentGateway } from '../agent/gateway.ts';
import type { AuthServices } from '../auth/service.ts';
import { asyncExecuteHandler } from '../bots/async.ts';
import { CronScheduler, cronHandler } from '../bots/cron.ts';
import { BotExecutor } from '../bots/executor.ts';
import { BotRuntime } from '../bots/runtime.ts';
import { botSubscriptionHandler } from '../bots/subscription.ts';
import type { ServerConfig } from '../config.ts';
import type { RedisClient } from '../db/redis.ts';
import { subscriptionMatcher } from '../subscriptions/matcher.ts';
import { OutboundPolicy } from '../subscriptions/outbound.ts';
import { restHookHandler } from '../subscriptions/rest-hook.ts';
import { WebsocketHub, WS_CHANNEL } from '../subscriptions/websocket.ts';
import { OutboxDispatcher } from './outbox.ts';
import { JobQueue } from './queue.ts';
import { JobRunner } from './runner.ts';

export interface BackgroundWork {
  jobs: JobQueue;
  bots: BotExecutor;
  websockets: WebsocketHub;
  agents: AgentGateway;
  /** This node wrote resources: dispatch their outbox rows now. */
  wake(): void;
  stop(): Promise<void>;
}

/**
 * What a node does besides answering requests: the outbox dispatcher and job runner (subscription
 * deliveries, bot runs), the cron scheduler, the websocket hub and the agent gateway. With JOB_WORKERS=0 the node runs
 * no jobs and schedules no cron runs (others do), but still serves its websockets.
 */
export async function startBackgroundWork(deps: {
  pool: pg.Pool;
  config: ServerConfig;
  auth: AuthServices;
  redis: RedisClient | undefined;
}): Promise<BackgroundWork> {
  const { pool, config, auth, redis } = deps;
  const logError = (err: unknown): void => console.error('job runner:', err);
  const jobs = new JobQueue(pool);
  const runtime = new BotRuntime({
    timeoutMs: config.botTimeoutMs,
    memoryMb: config.botMemoryMb,
    concurrency: config.botConcurrency,
    idleMs: config.botIdleMs,
    allowedHosts: config.outboundAllowedHosts,
  });
  const bots = new BotExecutor(auth, runtime);
  const dispatcher = new OutboxDispatcher(pool, jobs, [subscriptionMatcher(auth.directory, auth.sessions, logError)]);
  if (redis) {
    // Websocket notifications may have been stored: every node's hub looks.
    dispatcher.onCommitted = () => void (redis.isReady ? redis.publish(WS_CHANNEL, '') : Promise.resolve()).catch(() => undefined);
  }
  const runner = new JobRunner(
    pool,
    jobs,
    dispatcher,
    new Map([
      [
        'rest-hook',
        restHookHandler({
          db: pool,
          directory: auth.directory,
          outbound: new OutboundPolicy(config.outboundAllowedHosts),
          audit: auth.audit,
          timeoutMs: config.subscriptionTimeoutMs,
        }),
      ],
      ['bot', botSubscriptionHandler(pool, auth.directory, bots)],
      ['bot-cron', cronHandler(auth.directory, bots)],
      ['bot-async', asyncExecuteHandler(auth.directory, auth.logins, bots)],
    ]),
    {
      workers: config.jobWorkers,
      // A lease shorter than the longest job would let a second node run it while the first still does.
      leaseSeconds: Math.max(config.jobLeaseSeconds, Math.ceil(Math.max(config.subscriptionTimeoutMs, config.botTimeoutMs) / 1000) + 5),
      retryBaseMs: config.jobRetryBaseMs,
      pollMs: 250,
    },
    logError
  );
  await runner.start();
  const cron = new CronScheduler(pool, jobs, config.cronTickMs, logError);
  if (config.jobWorkers > 0) {
    cron.start();
  }
  const websockets = new WebsocketHub(pool, auth);
  await websockets.start(redis?.duplicate());
  const agents = new AgentGateway(pool, auth, bots);
  await agents.start();
  return {
    jobs,
    bots,
    websockets,
    agents,
    wake: () => runner.wake(),
    stop: async () => {
      cron.stop();
      await runner.stop();
      await websockets.stop();
      await agents.stop();
      // Last: the job runner and agents above may still have been waiting for a bot.
      await runtime.close();
    },
  };
}
