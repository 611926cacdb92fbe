import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { loadMigrations, migrate } from '../src/db/migrate.ts';
import { createTestDatabase } from './harness.ts';

let pools: pg.Pool[] = [];

function newPool(url: string): pg.Pool {
  const pool = new pg.Pool({ connectionString: url, max: 2 });
  pools.push(pool);
  return pool;
}

let emptyDatabaseUrl: string;

beforeAll(async () => {
  // A copy of the migrated template, then emptied: migrations must run on it from scratch.
  emptyDatabaseUrl = await createTestDatabase();
  const pool = newPool(emptyDatabaseUrl);
  await pool.query('DROP SCHEMA public CASCADE; CREATE SCHEMA public');
});

afterAll(async () => {
  await Promise.all(pools.map((p) => p.end()));
  pools = [];
});

describe('migrations', () => {
  test('several nodes starting at once apply each migration exactly once', async () => {
    const nodes = Array.from({ length: 4 }, () => newPool(emptyDatabaseUrl));
    const applied = await Promise.all(nodes.map((pool) => migrate(pool)));
    const all = (await loadMigrations()).map((m) => m.version);
    // exactly one node applied everything; the others found nothing left to do
    expect(applied.filter((a) => a.length > 0)).toEqual([all]);
    const { rows } = await nodes[0].query<{ version: number }>('SELECT version FROM schema_migration ORDER BY version');
    expect(rows.map((r) => r.version)).toEqual(all);
    expect(await migrate(nodes[0])).toEqual([]);
  });

  test('a database migrated by a newer server is refused', async () => {
    const pool = newPool(emptyDatabaseUrl);
    await migrate(pool);
    await pool.query(`INSERT INTO schema_migration (version, name) VALUES (9999, 'from_the_future')`);
    await expect(migrate(pool)).rejects.toThrow(/newer than this server/);
    await pool.query('DELETE FROM schema_migration WHERE version = 9999');
  });

  test('migration files must be numbered without gaps', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'ermis-migrations-'));
    try {
      await writeFile(path.join(dir, '0001_a.sql'), 'SELECT 1');
      await writeFile(path.join(dir, '0003_c.sql'), 'SELECT 1');
      await expect(loadMigrations(dir)).rejects.toThrow(/gap or duplicate/);
    } finally {
      await rm(dir, { recursive: true });
    }
  });
});
