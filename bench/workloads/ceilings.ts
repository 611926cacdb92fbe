/**
 * The machine's own ceilings, measured in the same run: Postgres alone (the write a create makes,
 * singly and 20 resources to a transaction), a bare Fastify + pg server (one insert per create, one
 * select per read) and the MLLP transport answering at once.
 */
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { HttpTarget } from '../lib/http.ts';
import { measure } from '../lib/measure.ts';
import { startNode } from '../lib/processes.ts';
import type { Row } from '../lib/results.ts';
import { Rng } from '../lib/rng.ts';
import { crudResource } from '../lib/crud-resources.ts';
import { mllpLoad, oruMessage } from './hl7.ts';
import type { ModeConfig } from '../run.ts';

/** A 1.3 KB Observation, the size of the CRUD mix's and of a lab result. */
function sampleResource(): Record<string, unknown> {
  return { ...crudResource('Observation', (t) => `${t}/${randomUUID()}`, 0), id: randomUUID(), meta: { versionId: randomUUID(), lastUpdated: new Date().toISOString() }, note: [{ text: 'x'.repeat(700) }] };
}

export async function postgresCeilings(databaseUrl: string, mode: ModeConfig): Promise<Row[]> {
  const admin = new pg.Client({ connectionString: databaseUrl });
  await admin.connect();
  // The two tables a create writes (current version and history), with their primary keys.
  await admin.query(`CREATE TABLE bench_pg_resource (id uuid PRIMARY KEY, content jsonb NOT NULL, last_updated timestamptz NOT NULL)`);
  await admin.query(`CREATE TABLE bench_pg_history (version_id uuid PRIMARY KEY, id uuid NOT NULL, content jsonb NOT NULL, last_updated timestamptz NOT NULL)`);
  const connections = 8;
  const clients = await Promise.all(
    Array.from({ length: connections }, async () => {
      const c = new pg.Client({ connectionString: databaseUrl });
      await c.connect();
      return c;
    })
  );
  const insert = `WITH r AS (INSERT INTO bench_pg_resource (id, content, last_updated) SELECT * FROM unnest($1::uuid[], $2::jsonb[], $3::timestamptz[]) RETURNING id, content, last_updated)
    INSERT INTO bench_pg_history (version_id, id, content, last_updated) SELECT gen_random_uuid(), id, content, last_updated FROM r`;
  const write = async (client: pg.Client, n: number): Promise<void> => {
    const rows = Array.from({ length: n }, sampleResource);
    const now = new Date().toISOString();
    await client.query(insert, [rows.map((r) => r.id), rows.map((r) => JSON.stringify(r)), rows.map(() => now)]);
  };
  const groups = { bench: { self: [process.pid] } };
  const rows: Row[] = [];
  try {
    for (const [id, n] of [['pg-single', 1], ['pg-20', 20]] as const) {
      rows.push(
        await measure({
          id,
          kind: 'ceiling',
          workload: n === 1 ? 'Postgres alone: one resource per transaction (resource + history row, 1.3 KB JSONB)' : 'Postgres alone: 20 resources per transaction (40 rows in one statement)',
          connections,
          unit: n === 1 ? 'tx/s' : 'resources/s',
          groups,
          load: { workers: connections, warmupMs: mode.ceilingWarmupMs, durationMs: mode.ceilingWindowMs, iteration: (w, timed) => timed('write', () => write(clients[w], n)) },
          throughput: (load) => load.throughput * n,
        })
      );
    }
  } finally {
    await Promise.all(clients.map((c) => c.end()));
    await admin.query('DROP TABLE bench_pg_resource, bench_pg_history');
    await admin.end();
  }
  return rows;
}

export async function bareServerCeilings(databaseUrl: string, port: number, mode: ModeConfig): Promise<Row[]> {
  const server = startNode('bare server', ['bench/ceilings/bare-server.ts', databaseUrl, String(port)], { PATH: process.env.PATH });
  await server.waitFor('bare server listening', 30_000);
  const connections = 32;
  const http = new HttpTarget(`http://127.0.0.1:${port}/fhir/R4/`, connections);
  const groups = { server: { trees: [server.pid] }, bench: { self: [process.pid] } };
  const ids: string[] = [];
  const rows: Row[] = [];
  try {
    const body = JSON.stringify(crudResource('Observation', (t) => `${t}/${randomUUID()}`, 0));
    rows.push(
      await measure({
        id: 'bare-create',
        kind: 'ceiling',
        workload: 'bare Fastify + pg server: POST Observation (JSON parse, one insert)',
        connections,
        unit: 'req/s',
        groups,
        load: {
          workers: connections,
          warmupMs: mode.ceilingWarmupMs,
          durationMs: mode.ceilingWindowMs,
          iteration: async (_w, timed) => {
            const created = await timed('create', () => http.json<{ id: string }>('POST', 'Observation', body, [201]));
            if (ids.length < 200_000) {
              ids.push(created.id);
            }
          },
        },
      })
    );
    const rng = new Rng(11);
    rows.push(
      await measure({
        id: 'bare-read',
        kind: 'ceiling',
        workload: 'bare Fastify + pg server: GET Observation/{id} (one select by primary key)',
        connections,
        unit: 'req/s',
        groups,
        note: `random over ${ids.length.toLocaleString('en')} ids`,
        load: { workers: connections, warmupMs: mode.ceilingWarmupMs, durationMs: mode.ceilingWindowMs, iteration: (_w, timed) => timed('read', () => http.request('GET', `Observation/${rng.pick(ids)}`, undefined, [200])).then(() => undefined) },
      })
    );
  } finally {
    await http.close();
    await server.stop();
    const db = new pg.Client({ connectionString: databaseUrl });
    await db.connect();
    await db.query('DROP TABLE IF EXISTS bench_bare_resource');
    await db.end();
  }
  return rows;
}

export async function mllpEchoCeilings(port: number, mode: ModeConfig): Promise<Row[]> {
  const echo = startNode('mllp echo', ['bench/ceilings/mllp-echo.ts', String(port)], { PATH: process.env.PATH });
  await echo.waitFor('mllp echo listening', 30_000);
  const rows: Row[] = [];
  try {
    for (const connections of [1, 8]) {
      rows.push(
        await mllpLoad({
          id: connections === 1 ? 'mllp-echo-1' : 'mllp-echo-8',
          kind: 'ceiling',
          workload: 'MLLP echo: the agent\'s listener answering AA at once (ORU^R01, 10 OBX)',
          port,
          connections,
          groups: { echo: { trees: [echo.pid] }, bench: { self: [process.pid] } },
          warmupMs: mode.ceilingWarmupMs,
          durationMs: mode.ceilingWindowMs,
          maxMessages: 2_000_000,
          message: (i) => echoMessage(i),
        })
      );
    }
  } finally {
    await echo.stop();
  }
  return rows;
}

function echoMessage(i: number): string {
  return oruMessage(`ECHO-${i}`, `E${i}`, `EF-${i}`);
}
