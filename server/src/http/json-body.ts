import { badRequest, OperationOutcomeError } from '@medplum/core';

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
