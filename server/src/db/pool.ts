import pg from 'pg';

/** A connection-like object: the pool itself, or one client inside a transaction. */
export type Queryable = Pick<pg.Pool, 'query'> | pg.PoolClient;

export function createPool(connectionString: string, max: number): pg.Pool {
  const pool = new pg.Pool({ connectionString, max, application_name: 'ermis' });
  // An idle client losing its connection must not crash the process; the pool replaces it.
  pool.on('error', (err) => {
    console.error('postgres pool error', err.message);
  });
  return pool;
}
