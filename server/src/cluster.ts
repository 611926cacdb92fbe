/**
 * SERVER_WORKERS > 1: the primary process forks that many server processes sharing the port
 * (node:cluster), so that the server's JavaScript uses more than one core. The processes are
 * nodes of one ermis as several machines would be: they share Postgres and Redis (session
 * invalidation, websocket announcements), the job queue and the agent relay. The first worker
 * starts alone (migrations, the first admin), the others once it listens; a worker that dies is
 * replaced; SIGTERM/SIGINT stop them all.
 */
import cluster from 'node:cluster';
import type { Worker } from 'node:cluster';

const RESTART_DELAY_MS = 1000;
const SHUTDOWN_TIMEOUT_MS = 20_000;

export interface ClusterOptions {
  workers: number;
  /** Environment every worker gets on top of the primary's (e.g. the embedded database's URL). */
  env: Record<string, string>;
  /** Called after every worker has exited on shutdown (e.g. to stop the embedded database). */
  onStopped: () => Promise<void>;
}

export async function runPrimary(options: ClusterOptions): Promise<void> {
  let stopping = false;
  const fork = (): Worker => {
    const worker = cluster.fork(options.env);
    worker.once('exit', (code, signal) => {
      if (!stopping) {
        console.error(`server worker ${worker.process.pid} exited (${signal ?? code}); starting another`);
        // A second apart: a worker that cannot start must not turn into a fork loop.
        setTimeout(() => !stopping && fork(), RESTART_DELAY_MS);
      }
    });
    return worker;
  };
  const listening = (worker: Worker): Promise<void> =>
    new Promise((resolve, reject) => {
      worker.once('listening', () => resolve());
      worker.once('exit', (code) => reject(new Error(`the first server worker exited (${code}) before listening`)));
    });
  await listening(fork());
  for (let i = 1; i < options.workers; i++) {
    fork();
  }
  const shutdown = async (signal: NodeJS.Signals): Promise<void> => {
    stopping = true;
    console.log(`${signal}: stopping ${Object.keys(cluster.workers ?? {}).length} server workers`);
    await Promise.all(
      Object.values(cluster.workers ?? {}).map(
        (worker) =>
          new Promise<void>((resolve) => {
            if (!worker || worker.isDead()) {
              resolve();
              return;
            }
            // A worker that does not finish its shutdown in time is killed.
            const kill = setTimeout(() => worker.process.kill('SIGKILL'), SHUTDOWN_TIMEOUT_MS);
            worker.once('exit', () => {
              clearTimeout(kill);
              resolve();
            });
            worker.process.kill(signal);
          })
      )
    );
    await options.onStopped();
    process.exit(0);
  };
  process.once('SIGINT', () => void shutdown('SIGINT'));
  process.once('SIGTERM', () => void shutdown('SIGTERM'));
}
