import { OperationOutcomeError, unauthorized } from '@medplum/core';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { secretMatches } from './clients.ts';
import { rateLimitHeader } from './rate-limit.ts';
import type { AuthServices } from './service.ts';
import type { AuthSession } from './sessions.ts';

/**
 * The session of an API request: a Bearer access token, or a client application's Basic
 * credentials. Counts the request against the caller's rate limit and sets the `ratelimit` header.
 */
export async function authenticate(request: FastifyRequest, reply: FastifyReply, auth: AuthServices): Promise<AuthSession> {
  const header = request.headers.authorization ?? '';
  let session: AuthSession;
  try {
    if (/^Bearer /i.test(header)) {
      session = await auth.sessions.fromAccessToken(header.slice(7).trim());
    } else if (/^Basic /i.test(header)) {
      const decoded = Buffer.from(header.slice(6).trim(), 'base64').toString('utf8');
      const colon = decoded.indexOf(':');
      if (colon < 0) {
        throw new OperationOutcomeError(unauthorized);
      }
      session = await auth.sessions.fromClientSecret(decoded.slice(0, colon), decoded.slice(colon + 1), secretMatches);
    } else {
      throw new OperationOutcomeError(unauthorized);
    }
  } catch (err) {
    reply.header('WWW-Authenticate', 'Bearer realm="ermis", error="invalid_token"');
    throw err;
  }
  const key = session.login?.userId ? `user:${session.login.userId}` : `client:${session.clientId ?? session.profile.reference}`;
  const limit = await auth.rateLimits.consumeRequest(key);
  reply.header('ratelimit', rateLimitHeader(limit));
  return session;
}

/** The address a request came from (the proxy's view when behind the bundled nginx). */
export function remoteAddress(request: FastifyRequest): string {
  return request.ip;
}
