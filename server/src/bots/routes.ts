import { allOk, badRequest, notFound, Operator, OperationOutcomeError } from '@medplum/core';
import type { WithId } from '@medplum/core';
import type { AsyncJob, Bot } from '@medplum/fhirtypes';
import type { AsyncExecutePayload } from './async.ts';
import { transform } from 'esbuild';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { authenticate } from '../auth/authenticate.ts';
import type { AuthSession } from '../auth/sessions.ts';
import { useJsonBodies } from '../http/json-body.ts';
import type { ServerServices } from '../services.ts';
import type { BotExecutor } from './executor.ts';

/** Content types handed to the bot as text (HL7 v2 is parsed into an Hl7Message in the bot's process). */
const TEXT_TYPES = /^(text\/[a-z0-9.+-]+|x-application\/hl7-v2\+er7|application\/hl7-v2)$/;

/**
 * `Bot/{id}/$deploy` (`{code, filename}` → an executable Binary the Bot points at) and
 * `Bot/{id}/$execute`, `Bot/$execute?identifier=` with JSON, form, text, CSV and HL7 bodies.
 */
export async function botRoutes(app: FastifyInstance, services: ServerServices, executor: BotExecutor): Promise<void> {
  useJsonBodies(app);
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_req, body, done) => {
    done(null, Object.fromEntries(new URLSearchParams(body as string)));
  });
  app.addContentTypeParser(TEXT_TYPES, { parseAs: 'string' }, (_req, body, done) => done(null, body));

  app.post<{ Params: { id: string } }>('/fhir/R4/Bot/:id/$deploy', async (request, reply) => {
    const session = await authenticate(request, reply, services.auth);
    const repo = services.repo(session.context);
    const bot = await repo.readResource<Bot>('Bot', request.params.id);
    const body = (request.body ?? {}) as { code?: unknown; filename?: unknown };
    if (typeof body.code !== 'string' || body.code.trim() === '') {
      throw new OperationOutcomeError(badRequest('Missing code', 'code'));
    }
    const filename = typeof body.filename === 'string' && body.filename ? body.filename : 'index.js';
    const executable = await toCommonJs(body.code, filename);
    const binary = await repo.createBinary('application/javascript', Buffer.from(executable, 'utf8'));
    await repo.updateResource<Bot>({ ...bot, executableCode: { contentType: 'application/javascript', url: `Binary/${binary.id}`, title: filename } });
    return reply.type('application/fhir+json').send(allOk);
  });

  const execute = async (request: FastifyRequest<{ Params: { id?: string } }>, reply: FastifyReply): Promise<FastifyReply> => {
    const session = await authenticate(request, reply, services.auth);
    const bot = await findBot(services, session, request);
    const contentType = (request.headers['content-type'] ?? 'application/json').split(';')[0].trim();
    const input = request.method === 'GET' ? queryInput(request.query) : request.body;
    const projectId = bot.meta?.project ?? session.project.id;
    if (/respond-async/.test(String(request.headers.prefer ?? ''))) {
      // Accepted now, run by the job queue; the AsyncJob tells how it went.
      const asyncJob = await services.auth.directory.repo(projectId, session.profile).createResource<AsyncJob>({
        resourceType: 'AsyncJob',
        status: 'accepted',
        requestTime: new Date().toISOString(),
        request: `${services.config.baseUrl}${request.url.replace(/^\//, '')}`,
      });
      const payload: AsyncExecutePayload = {
        botId: bot.id,
        asyncJobId: asyncJob.id,
        input: input ?? null,
        contentType: request.method === 'GET' ? 'application/json' : contentType,
        requester: session.profile.reference,
        callerLoginId: session.login?.id,
      };
      await services.jobs.enqueue([{ projectId, kind: 'bot-async', payload, maxAttempts: 1 }]);
      return reply
        .status(202)
        .header('Content-Location', `${services.config.baseUrl}fhir/R4/job/${asyncJob.id}/status`)
        .type('application/fhir+json')
        .send(asyncJob);
    }
    const result = await executor.execute({
      bot,
      projectId,
      input,
      contentType: request.method === 'GET' ? 'application/json' : contentType,
      requester: session.profile,
      callerLogin: session.login,
      // ermis's own headers are set by the server (the agent gateway, $reprocess), never by a caller.
      headers: Object.fromEntries(Object.entries(request.headers).filter(([name]) => !name.toLowerCase().startsWith('x-ermis-'))),
      traceId: typeof request.headers['x-trace-id'] === 'string' ? request.headers['x-trace-id'] : undefined,
    });
    if (!result.ok) {
      throw new OperationOutcomeError(badRequest(result.error ?? 'Bot failed'));
    }
    return reply.type(result.contentType ?? 'application/json').send(result.body ?? '');
  };
  // The status of an asynchronous operation: 202 while it runs, then the AsyncJob with the answer.
  app.get<{ Params: { id: string } }>('/fhir/R4/job/:id/status', async (request, reply) => {
    const session = await authenticate(request, reply, services.auth);
    const asyncJob = await services.repo(session.context).readResource<AsyncJob>('AsyncJob', request.params.id);
    const running = asyncJob.status === 'accepted' || asyncJob.status === 'active';
    if (running) {
      // MedplumClient keeps polling the Content-Location of a 202.
      reply.header('Content-Location', `${services.config.baseUrl}fhir/R4/job/${asyncJob.id}/status`);
    }
    return reply.status(running ? 202 : 200).type('application/fhir+json').send(asyncJob);
  });
  app.post<{ Params: { id: string } }>('/fhir/R4/Bot/:id/$execute', execute);
  app.get<{ Params: { id: string } }>('/fhir/R4/Bot/:id/$execute', execute);
  app.post('/fhir/R4/Bot/$execute', execute);
  app.get('/fhir/R4/Bot/$execute', execute);
}

/**
 * Bots run as CommonJS. ES module code (`export async function handler`, `.mjs`), which Medplum
 * accepts too, is converted once here; either way a syntax error is a 400 now rather than at
 * every execution.
 */
async function toCommonJs(code: string, filename: string): Promise<string> {
  const esm = filename.endsWith('.mjs') || (!filename.endsWith('.cjs') && /^\s*(export\s|import\s[^(])/m.test(code));
  let output = code;
  if (esm) {
    try {
      output = (await transform(code, { format: 'cjs', loader: 'js', platform: 'node', target: 'node22' })).code;
    } catch (err) {
      throw new OperationOutcomeError(badRequest(`Bot code does not compile: ${(err as Error).message.split('\n')[0]}`, 'code'));
    }
  }
  try {
    new Function('exports', 'require', 'module', output);
  } catch (err) {
    throw new OperationOutcomeError(badRequest(`Bot code does not compile: ${(err as Error).message}`, 'code'));
  }
  return output;
}

/** The bot by id, or by `?identifier=system|value`, as the caller may read it. */
async function findBot(services: ServerServices, session: AuthSession, request: FastifyRequest<{ Params: { id?: string } }>): Promise<WithId<Bot>> {
  const repo = services.repo(session.context);
  if (request.params.id) {
    return repo.readResource<Bot>('Bot', request.params.id);
  }
  const identifier = (request.query as Record<string, string | undefined>).identifier;
  if (!identifier) {
    throw new OperationOutcomeError(badRequest('Missing bot id or identifier', 'identifier'));
  }
  const bots = await repo.searchResources<Bot>({ resourceType: 'Bot', filters: [{ code: 'identifier', operator: Operator.EQUALS, value: identifier }], count: 2 });
  if (bots.length !== 1) {
    throw new OperationOutcomeError(bots.length === 0 ? notFound : badRequest('Several bots have this identifier', 'identifier'));
  }
  return bots[0];
}

function queryInput(query: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries((query ?? {}) as Record<string, string | string[]>)) {
    if (key !== 'identifier') {
      out[key] = Array.isArray(value) ? value[0] : value;
    }
  }
  return out;
}
