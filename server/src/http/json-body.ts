import { badRequest, OperationOutcomeError } from '@medplum/core';
import type { FastifyInstance } from 'fastify';

/** application/json, application/fhir+json, application/json-patch+json and any other +json type. */
export const JSON_TYPES = /^application\/([a-z0-9.+-]+\+)?json(-patch\+json)?$/;

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Decodes a JSON request body strictly: invalid UTF-8 and invalid JSON are both a 400 with an OperationOutcome. */
export function parseJsonBody(body: Buffer): unknown {
  let text: string;
  try {
    text = utf8.decode(body);
  } catch {
    throw new OperationOutcomeError(badRequest('Request body is not valid UTF-8'));
  }
  if (text.trim() === '') {
    return undefined;
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new OperationOutcomeError(badRequest(`Invalid JSON: ${(err as Error).message}`));
  }
}

/** Replaces a plugin's body parsers by the strict JSON one, for every JSON media type. */
export function useJsonBodies(app: FastifyInstance): void {
  app.removeAllContentTypeParsers();
  app.addContentTypeParser(JSON_TYPES, { parseAs: 'buffer' }, (_req, body, done) => {
    try {
      done(null, parseJsonBody(body as Buffer));
    } catch (err) {
      done(err as Error, undefined);
    }
  });
}
