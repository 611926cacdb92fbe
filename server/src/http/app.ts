import websocket from '@fastify/websocket';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import compress from '@fastify/compress';
import cors from '@fastify/cors';
import { allOk, badRequest, created, notFound, OperationOutcomeError } from '@medplum/core';
import type { FhirRequest, FhirResponse, HttpMethod } from '@medplum/fhir-router';
import type { Binary, Resource } from '@medplum/fhirtypes';
import Fastify from 'fastify';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { authenticate } from '../auth/authenticate.ts';
import { RateLimitExceeded, rateLimitHeader } from '../auth/rate-limit.ts';
import { adminRoutes } from '../auth/routes/admin.ts';
import { loginRoutes } from '../auth/routes/login.ts';
import { oauthRoutes } from '../auth/routes/oauth.ts';
import { wellKnownRoutes } from '../auth/routes/wellknown.ts';
import type { AuthSession } from '../auth/sessions.ts';
import { readStoredBinary } from '../fhir/repo/storage-read.ts';
import type { PostgresRepository } from '../fhir/repo/postgres-repository.ts';
import { registerAppStatic } from './app-static.ts';
import { botRoutes } from '../bots/routes.ts';
import { agentRoutes } from '../agent/routes.ts';
import { handleFhirRequest, parseIfMatch } from '../fhir/router.ts';
import type { ServerServices } from '../services.ts';
import { VERSION } from '../services.ts';
import { sendFhirResponse, sendJson } from './fhir-response.ts';
import { guarded } from '../db/errors.ts';
import { pingRedis } from '../db/redis.ts';
import { parseJsonBody, useJsonBodies } from './json-body.ts';
import { outcomeOf } from './outcomes.ts';

const FHIR_PREFIX = '/fhir/R4';

const APP_DIST = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../app/dist');

/** Builds the HTTP server: FHIR REST under /fhir/R4, raw Binary, signed storage URLs, auth, the app, health. */
export async function buildApp(services: ServerServices): Promise<FastifyInstance> {
  const app = Fastify({
    logger: services.config.logLevel === 'silent' ? false : { level: services.config.logLevel },
    bodyLimit: services.config.maxJsonBytes,
    // Behind a proxy, request.ip is the client's address (rate limits, AuditEvents) only if trusted.
    trustProxy: services.config.trustProxy,
    // Ids and queries are case-sensitive and may contain encoded characters; fhir-router does its own parsing.
    routerOptions: { ignoreTrailingSlash: true, maxParamLength: 500 },
  });
  await app.register(compress, { global: true, threshold: 1024 });
  // Bearer tokens, not cookies, authorize API calls, so any origin may call (SMART apps run anywhere).
  await app.register(cors, {
    origin: true,
    methods: ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'],
    allowedHeaders: ['Authorization', 'Content-Type', 'Accept', 'If-Match', 'If-None-Exist', 'If-None-Match', 'If-Modified-Since', 'Prefer', 'X-Medplum', 'X-Security-Context', 'Cache-Control', 'Pragma'],
    exposedHeaders: ['ETag', 'Location', 'Content-Location', 'Last-Modified', 'ratelimit', 'Retry-After'],
    maxAge: 3600,
  });

  app.setErrorHandler((err, request, reply) => {
    if (err instanceof RateLimitExceeded) {
      reply.header('ratelimit', rateLimitHeader(err.state)).header('Retry-After', String(Math.max(1, err.state.resetSeconds)));
    }
    const { status, outcome } = outcomeOf(err);
    if (status >= 500) {
      request.log.error({ err }, 'request failed');
    }
    reply.status(status);
    return sendJson(request, reply, outcome);
  });
  app.setNotFoundHandler((request, reply) => {
    reply.status(404);
    return sendJson(request, reply, notFound);
  });

  app.get('/healthcheck', async (_request, reply) => {
    const postgres = await services.pool.query('SELECT 1').then(
      () => true,
      () => false
    );
    const redis = services.redis ? await pingRedis(services.redis) : undefined;
    const ok = postgres && redis !== false;
    reply.status(ok ? 200 : 503);
    return { ok, version: VERSION, platform: process.platform, runtime: process.version, postgres, redis };
  });
  await app.register(async (scope) => wellKnownRoutes(scope, services.auth));
  await app.register(async (scope) => oauthRoutes(scope, services.auth));
  await app.register(async (scope) => loginRoutes(scope, services.auth));
  await app.register(async (scope) => adminRoutes(scope, services.auth, services.jobs));
  await app.register(async (scope) => botRoutes(scope, services, services.bots));
  // One websocket server for the app (two registrations would both answer each upgrade).
  await app.register(websocket);
  await app.register(async (scope) => services.websockets.register(scope, services));
  await app.register(async (scope) => services.agents.register(scope));
  await app.register(async (scope) => agentRoutes(scope, services, services.agents, services.bots));
  await app.register(async (binary) => binaryRoutes(binary, services));
  await app.register(async (fhir) => fhirRoutes(fhir, services));
  await registerAppStatic(app, APP_DIST);
  if (!app.hasRoute({ method: 'GET', url: '/' })) {
    app.get('/', async () => ({ ok: true }));
  }
  return app;
}

/** JSON FHIR REST: everything under /fhir/R4 except raw Binary content. */
async function fhirRoutes(app: FastifyInstance, services: ServerServices): Promise<void> {
  useJsonBodies(app);
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_req, body, done) => {
    // POST _search: repeated parameters (date=ge..&date=le..) must all be kept
    const params: Record<string, string[]> = {};
    for (const [key, value] of new URLSearchParams(body as string)) {
      (params[key] ??= []).push(value);
    }
    done(null, params);
  });

  app.get(`${FHIR_PREFIX}/metadata`, async (request, reply) => sendJson(request, reply, services.capabilityStatement));

  const handler = async (request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> => {
    const session = await authenticate(request, reply, services.auth);
    return audited(services, session, request, async () => {
      const repo = services.repo(session.context);
      const response = await handleFhirRequest(services.router, repo, toFhirRequest(request));
      return { repo, response };
    }, reply);
  };
  app.route({ method: ['GET', 'POST', 'PUT', 'PATCH', 'DELETE'], url: `${FHIR_PREFIX}`, handler });
  app.route({ method: ['GET', 'POST', 'PUT', 'PATCH', 'DELETE'], url: `${FHIR_PREFIX}/*`, handler });
}

/** Runs a FHIR interaction for a session, sends its response, and records the access (off the request path). */
async function audited(
  services: ServerServices,
  session: AuthSession,
  request: FastifyRequest,
  run: () => Promise<{ repo: PostgresRepository; response: FhirResponse } | { sent: FastifyReply }>,
  reply: FastifyReply
): Promise<FastifyReply> {
  let status = 500;
  let resource: string | undefined;
  try {
    const result = await run();
    if (!('sent' in result)) {
      const body = result.response[1];
      if (body?.id && body.resourceType !== 'Bundle' && body.resourceType !== 'OperationOutcome') {
        resource = `${body.resourceType}/${body.id}`;
      }
      await sendFhirResponse(request, reply, services, result.repo, result.response);
    }
    status = reply.statusCode;
    return reply;
  } catch (err) {
    status = outcomeOf(err).status;
    throw err;
  } finally {
    services.auth.audit.fhirAccess(session.project, session.profile, {
      method: request.method,
      url: request.url.slice(FHIR_PREFIX.length) || '/',
      status,
      remoteAddress: request.ip,
      resource,
    });
  }
}

function toFhirRequest(request: FastifyRequest): FhirRequest {
  const url = request.url.slice(FHIR_PREFIX.length) || '/';
  return {
    method: request.method as HttpMethod,
    url,
    pathname: '',
    params: {},
    query: {},
    body: request.body,
    headers: request.headers,
    config: { transactions: true, graphqlMaxDepth: 12, graphqlMaxSearches: 100 },
  };
}

/**
 * Binary content: `POST /fhir/R4/Binary` and `PUT /fhir/R4/Binary/{id}` take raw bytes of any type
 * (a JSON Binary resource is stored as a resource); `GET` returns the bytes with their Content-Type
 * unless FHIR JSON is asked for. `/storage/{id}` serves the signed URLs attachments carry.
 */
async function binaryRoutes(app: FastifyInstance, services: ServerServices): Promise<void> {
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer', bodyLimit: services.config.maxBinaryBytes }, (_req, body, done) => {
    done(null, body);
  });

  const writeBinary = async (request: FastifyRequest, reply: FastifyReply, id?: string): Promise<FastifyReply> => {
    const session = await authenticate(request, reply, services.auth);
    return audited(services, session, request, async () => {
      // Kept whole (charset included): it is what a later download answers with.
      const contentType = (request.headers['content-type'] ?? 'application/octet-stream').trim();
      const body = (request.body as Buffer | undefined) ?? Buffer.alloc(0);
      const repo = services.repo(session.context);
      if (/json$/.test(contentType.split(';')[0])) {
        const parsed = parseJsonBody(body) as Resource | undefined;
        if (parsed?.resourceType === 'Binary') {
          const fhirRequest = toFhirRequest(request);
          fhirRequest.body = parsed;
          return { repo, response: await handleFhirRequest(services.router, repo, fhirRequest) };
        }
      }
      if (id) {
        const result = await repo.upsertBinary(id, contentType, body, parseIfMatch(request.headers['if-match']));
        return { repo, response: [result.created ? created : allOk, result.resource] as FhirResponse };
      }
      const securityContext = request.headers['x-security-context'];
      const binary = await repo.createBinary(contentType, body, securityContext ? { reference: String(securityContext) } : undefined);
      return { repo, response: [created, binary] as FhirResponse };
    }, reply);
  };

  app.post(`${FHIR_PREFIX}/Binary`, (request, reply) => writeBinary(request, reply));
  app.put<{ Params: { id: string } }>(`${FHIR_PREFIX}/Binary/:id`, (request, reply) => writeBinary(request, reply, request.params.id));

  const readBinary = async (
    request: FastifyRequest<{ Params: { id: string; vid?: string } }>,
    reply: FastifyReply
  ): Promise<FastifyReply> => {
    const session = await authenticate(request, reply, services.auth);
    return audited(services, session, request, async () => {
      const repo = services.repo(session.context);
      const { id, vid } = request.params;
      const binary = vid ? await repo.readVersion<Binary>('Binary', id, vid) : await repo.readResource<Binary>('Binary', id);
      const data = await repo.readBinaryData(binary);
      const accept = request.headers.accept ?? '';
      if (accept.includes('application/fhir+json')) {
        return { repo, response: [allOk, { ...binary, data: data.length ? data.toString('base64') : undefined }] as FhirResponse };
      }
      if (binary.meta?.versionId) {
        reply.header('ETag', `W/"${binary.meta.versionId}"`);
      }
      return { sent: sendRawContent(reply, binary.contentType, data) };
    }, reply);
  };
  app.get(`${FHIR_PREFIX}/Binary/:id`, readBinary);
  app.get(`${FHIR_PREFIX}/Binary/:id/_history/:vid`, readBinary);

  app.get<{ Params: { id: string; versionId: string }; Querystring: { Expires?: string; Signature?: string } }>(
    '/storage/:id/:versionId',
    async (request, reply) => {
      const binary = { id: request.params.id, versionId: request.params.versionId };
      if (!services.attachments.verify(binary, request.query.Expires, request.query.Signature)) {
        throw new OperationOutcomeError({ ...badRequest('Invalid or expired signature'), id: 'forbidden' });
      }
      const stored = await readStoredBinary(guarded(services.pool), binary);
      if (!stored) {
        throw new OperationOutcomeError(notFound);
      }
      return sendRawContent(reply, stored.contentType, stored.data);
    }
  );
}

/**
 * Uploaded bytes are served from the API's own origin, so they must not run as a page there:
 * a sandboxing CSP, no MIME sniffing, and active types (HTML, SVG, XML, scripts) as downloads.
 */
function sendRawContent(reply: FastifyReply, contentType: string | undefined, data: Buffer): FastifyReply {
  const type = contentType ?? 'application/octet-stream';
  reply.header('Content-Type', type);
  reply.header('Content-Security-Policy', "sandbox; default-src 'none'");
  reply.header('X-Content-Type-Options', 'nosniff');
  if (/html|svg|xml|javascript|ecmascript/i.test(type)) {
    reply.header('Content-Disposition', 'attachment');
  }
  return reply.send(data);
}
