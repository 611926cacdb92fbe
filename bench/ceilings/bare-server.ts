/**
 * The ceiling for the FHIR workloads: a bare Fastify + `pg` server that stores a resource with one
 * insert and reads it with one select by primary key. No validation, no search index, no history,
 * no authentication: what the same runtime, HTTP framework, driver and database give at most.
 *
 *   node bench/ceilings/bare-server.ts <database-url> <port>
 */
import { randomUUID } from 'node:crypto';
import Fastify from 'fastify';
import pg from 'pg';

const [databaseUrl, portArg] = process.argv.slice(2);
const pool = new pg.Pool({ connectionString: databaseUrl, max: 16 });
await pool.query(`CREATE TABLE IF NOT EXISTS bench_bare_resource (
  id uuid PRIMARY KEY,
  resource_type text NOT NULL,
  content jsonb NOT NULL
)`);

const app = Fastify({ logger: false });
app.addContentTypeParser('application/fhir+json', { parseAs: 'string' }, (_request, body, done) => {
  try {
    done(null, JSON.parse(body as string));
  } catch (err) {
    done(err as Error, undefined);
  }
});

app.post<{ Params: { type: string }; Body: Record<string, unknown> }>('/fhir/R4/:type', async (request, reply) => {
  const resource = { ...request.body, id: randomUUID(), meta: { versionId: randomUUID(), lastUpdated: new Date().toISOString() } };
  await pool.query('INSERT INTO bench_bare_resource (id, resource_type, content) VALUES ($1, $2, $3)', [resource.id, request.params.type, resource]);
  return reply.code(201).header('content-type', 'application/fhir+json').send(resource);
});

app.get<{ Params: { type: string; id: string } }>('/fhir/R4/:type/:id', async (request, reply) => {
  const { rows } = await pool.query<{ content: unknown }>('SELECT content FROM bench_bare_resource WHERE id = $1 AND resource_type = $2', [request.params.id, request.params.type]);
  if (!rows.length) {
    return reply.code(404).send({ resourceType: 'OperationOutcome' });
  }
  return reply.header('content-type', 'application/fhir+json').send(rows[0].content);
});

const address = await app.listen({ host: '127.0.0.1', port: Number(portArg) });
console.log(`bare server listening ${address}`);
const stop = async (): Promise<void> => {
  await app.close();
  await pool.end();
  process.exit(0);
};
process.once('SIGTERM', () => void stop());
process.once('SIGINT', () => void stop());
