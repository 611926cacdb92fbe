import { allOk, badRequest, forbidden, OperationOutcomeError, Operator } from '@medplum/core';
import type { WithId } from '@medplum/core';
import type { Agent, AuditEvent, Bot, Device, Parameters, ParametersParameter } from '@medplum/fhirtypes';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { authenticate } from '../auth/authenticate.ts';
import type { AuthSession } from '../auth/sessions.ts';
import type { BotExecutor } from '../bots/executor.ts';
import { useJsonBodies } from '../http/json-body.ts';
import type { ServerServices } from '../services.ts';
import type { AgentGateway } from './gateway.ts';

const DEFAULT_WAIT_MS = 10_000;
const MAX_WAIT_MS = 120_000;

interface PushBody {
  destination?: unknown;
  body?: unknown;
  contentType?: unknown;
  waitForResponse?: unknown;
  waitTimeout?: unknown;
  returnAck?: unknown;
}

/**
 * Agent operations as Medplum names them: `$push` (send a message through the agent to a Device,
 * optionally waiting for its answer), `$status` (connection state, version and the agent's
 * counters), `$reload-config`; and `AuditEvent/{id}/$reprocess` for a failed inbound message.
 */
export async function agentRoutes(app: FastifyInstance, services: ServerServices, gateway: AgentGateway, bots: BotExecutor): Promise<void> {
  useJsonBodies(app);

  const agentOf = async (session: AuthSession, request: FastifyRequest<{ Params: { id?: string } }>): Promise<WithId<Agent>> => {
    const repo = services.repo(session.context);
    if (request.params.id) {
      return repo.readResource<Agent>('Agent', request.params.id);
    }
    const identifier = (request.query as Record<string, string | undefined>).identifier;
    if (!identifier) {
      throw new OperationOutcomeError(badRequest('Missing agent id or identifier', 'identifier'));
    }
    const agents = await repo.searchResources<Agent>({ resourceType: 'Agent', filters: [{ code: 'identifier', operator: Operator.EQUALS, value: identifier }], count: 2 });
    if (agents.length !== 1) {
      throw new OperationOutcomeError(badRequest(agents.length ? 'Several agents have this identifier' : 'No agent has this identifier', 'identifier'));
    }
    return agents[0];
  };

  const push = async (request: FastifyRequest<{ Params: { id?: string } }>, reply: FastifyReply): Promise<FastifyReply> => {
    const session = await authenticate(request, reply, services.auth);
    requireSystemActor(session, 'Agent/$push');
    const agent = await agentOf(session, request);
    const body = (request.body ?? {}) as PushBody;
    if (typeof body.body !== 'string' || body.body === '') {
      throw new OperationOutcomeError(badRequest('Missing body', 'body'));
    }
    const contentType = typeof body.contentType === 'string' ? body.contentType : 'x-application/hl7-v2+er7';
    const device = await deviceOf(services, session, body.destination);
    const url = device.url ?? '';
    if (!/^(mllp|mllps|tcp):\/\/[^/]+:\d+/.test(url)) {
      throw new OperationOutcomeError(badRequest('Destination Device has no mllp://host:port url', 'destination'));
    }
    const wait = body.waitForResponse === true;
    const waitMs = Math.min(typeof body.waitTimeout === 'number' && body.waitTimeout > 0 ? body.waitTimeout : DEFAULT_WAIT_MS, MAX_WAIT_MS);
    const projectId = agent.meta?.project ?? session.project.id;
    const answer = await gateway.request(
      projectId,
      agent.id,
      { type: 'agent:transmit:request', remote: url, contentType, body: body.body, returnAck: body.returnAck === 'application' ? 'application' : undefined },
      wait ? waitMs : undefined
    );
    const error = wait
      ? answer === undefined
        ? `No answer from the agent within ${waitMs} ms`
        : (answer.statusCode ?? 200) >= 400 || answer.type === 'agent:error'
          ? (answer.body ?? 'Agent error')
          : undefined
      : undefined;
    await gateway.messageLog
      .recordOutbound({ projectId, agent, destination: url, requester: session.profile, contentType, body: body.body, response: answer?.body, error })
      .catch((err: unknown) => console.error('agent $push: message log:', err));
    if (!wait) {
      return reply.type('application/fhir+json').send(allOk);
    }
    if (error) {
      // A timeout means the message may have been delivered: 408, which clients do not resend on
      // their own (MedplumClient retries 5xx, and a retried push would send the message twice).
      const status = answer === undefined || answer.statusCode === 408 ? 408 : 502;
      return reply.status(status).type('application/fhir+json').send(badRequest(error));
    }
    return reply.type(answer?.contentType ?? contentType).send(answer?.body ?? '');
  };
  app.post<{ Params: { id: string } }>('/fhir/R4/Agent/:id/$push', push);
  app.post('/fhir/R4/Agent/$push', push);

  const status = async (request: FastifyRequest<{ Params: { id?: string } }>, reply: FastifyReply): Promise<FastifyReply> => {
    const session = await authenticate(request, reply, services.auth);
    const agent = await agentOf(session, request);
    const state = await gateway.status(agent.meta?.project ?? session.project.id, agent.id);
    const parameter: ParametersParameter[] = [{ name: 'status', valueCode: state.status }];
    if (state.version) {
      parameter.push({ name: 'version', valueString: state.version });
    }
    if (state.lastUpdated) {
      parameter.push({ name: 'lastUpdated', valueInstant: state.lastUpdated });
    }
    parameter.push(...statsParameters(state.stats));
    return reply.type('application/fhir+json').send({ resourceType: 'Parameters', parameter } satisfies Parameters);
  };
  app.get<{ Params: { id: string } }>('/fhir/R4/Agent/:id/$status', status);
  app.get('/fhir/R4/Agent/$status', status);

  const reload = async (request: FastifyRequest<{ Params: { id?: string } }>, reply: FastifyReply): Promise<FastifyReply> => {
    const session = await authenticate(request, reply, services.auth);
    const agent = await agentOf(session, request);
    const answer = await gateway.request(agent.meta?.project ?? session.project.id, agent.id, { type: 'agent:reloadconfig:request' }, DEFAULT_WAIT_MS);
    if (!answer || answer.type === 'agent:error' || (answer.statusCode ?? 200) >= 400) {
      throw new OperationOutcomeError(badRequest(answer?.body ?? 'The agent did not confirm the reload'));
    }
    return reply.type('application/fhir+json').send(allOk);
  };
  app.get<{ Params: { id: string } }>('/fhir/R4/Agent/:id/$reload-config', reload);
  app.post<{ Params: { id: string } }>('/fhir/R4/Agent/:id/$reload-config', reload);

  app.post<{ Params: { id: string } }>('/fhir/R4/AuditEvent/:id/$reprocess', async (request, reply) => {
    const session = await authenticate(request, reply, services.auth);
    // Reprocessing runs the bot (with its own write access) on stored text: project admins only.
    if (!session.admin && !session.superAdmin) {
      throw new OperationOutcomeError(forbidden);
    }
    const repo = services.repo(session.context);
    const auditEvent = await repo.readResource<AuditEvent>('AuditEvent', request.params.id);
    const projectId = auditEvent.meta?.project ?? session.project.id;
    const { body, contentType, botId } = await gateway.messageLog.forReprocessing(projectId, auditEvent);
    // The caller must be allowed to read the bot that handles these messages.
    const bot = await repo.readResource<Bot>('Bot', botId);
    // The bot would otherwise answer an unmatched message as already handled.
    const result = await bots.execute({
      bot,
      projectId,
      input: body,
      contentType,
      requester: session.profile,
      callerLogin: session.login,
      headers: { 'x-ermis-reprocess': `AuditEvent/${auditEvent.id}` },
    });
    if (!result.ok) {
      throw new OperationOutcomeError(badRequest(`Reprocessing failed: ${result.error ?? 'bot failed'}`));
    }
    await gateway.messageLog.markReprocessed(projectId, auditEvent, result.body ?? '');
    return reply.type(result.contentType ?? 'text/plain').send(result.body ?? '');
  });
}

/**
 * Pushing makes the site's agent open a connection into the clinic network: admins, client
 * applications and bots may; ordinary users (practitioners, patients) may not.
 */
function requireSystemActor(session: AuthSession, what: string): void {
  const profile = session.profile.reference ?? '';
  if (!session.admin && !session.superAdmin && !profile.startsWith('ClientApplication/') && !profile.startsWith('Bot/')) {
    throw new OperationOutcomeError(badRequest(`${what} is for project admins, client applications and bots`));
  }
}

/** The push destination: `Device/{id}` or a `Device?…` search with exactly one match. */
async function deviceOf(services: ServerServices, session: AuthSession, destination: unknown): Promise<WithId<Device>> {
  const repo = services.repo(session.context);
  if (typeof destination !== 'string' || !destination.startsWith('Device')) {
    throw new OperationOutcomeError(badRequest('destination must be Device/{id} or a Device search', 'destination'));
  }
  if (destination.startsWith('Device/')) {
    return repo.readResource<Device>('Device', destination.slice('Device/'.length));
  }
  const query = new URLSearchParams(destination.slice(destination.indexOf('?') + 1));
  const filters = [...query.entries()].map(([code, value]) => ({ code, operator: Operator.EQUALS, value }));
  const devices = await repo.searchResources<Device>({ resourceType: 'Device', filters, count: 2 });
  if (devices.length !== 1) {
    throw new OperationOutcomeError(badRequest(devices.length ? 'Several devices match the destination' : 'No device matches the destination', 'destination'));
  }
  return devices[0];
}

/** The agent's counters (per channel and overall) as nested parameters. */
function statsParameters(stats: unknown): ParametersParameter[] {
  if (!stats || typeof stats !== 'object') {
    return [];
  }
  const part = (name: string, value: unknown): ParametersParameter | undefined => {
    if (typeof value === 'number') {
      return Number.isInteger(value) ? { name, valueInteger: value } : { name, valueDecimal: value };
    }
    if (typeof value === 'string') {
      return { name, valueString: value };
    }
    if (typeof value === 'boolean') {
      return { name, valueBoolean: value };
    }
    if (value && typeof value === 'object') {
      return { name, part: Object.entries(value).map(([k, v]) => part(k, v)).filter((p): p is ParametersParameter => p !== undefined) };
    }
    return undefined;
  };
  const root = part('stats', stats);
  return root ? [root] : [];
}
