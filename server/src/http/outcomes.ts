import { badRequest, getStatus, OperationOutcomeError } from '@medplum/core';
import type { OperationOutcome } from '@medplum/fhirtypes';
import type { FastifyError } from 'fastify';

/** Maps anything thrown while serving a request to an OperationOutcome and its HTTP status. */
export function outcomeOf(err: unknown): { status: number; outcome: OperationOutcome } {
  if (err instanceof OperationOutcomeError) {
    return { status: getStatus(err.outcome), outcome: err.outcome };
  }
  const fastifyError = err as Partial<FastifyError>;
  switch (fastifyError.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return { status: 413, outcome: issue('too-long', 'Request body is too large') };
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return { status: 415, outcome: issue('not-supported', 'Unsupported media type') };
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return { status: 400, outcome: badRequest('Request body is empty') };
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return { status: 400, outcome: badRequest('Content-Length does not match the body') };
  }
  if (typeof fastifyError.statusCode === 'number' && fastifyError.statusCode >= 400 && fastifyError.statusCode < 500) {
    return { status: fastifyError.statusCode, outcome: badRequest(fastifyError.message ?? 'Bad request') };
  }
  // Anything else is a fault of ours, not of the request.
  return { status: 500, outcome: issue('exception', 'Internal server error') };
}

export function issue(code: 'too-long' | 'not-supported' | 'exception' | 'invalid', text: string): OperationOutcome {
  return { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, details: { text } }] };
}
