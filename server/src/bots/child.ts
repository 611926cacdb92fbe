/**
 * One bot execution, in a process of its own (started by runtime.ts under Node's permission model:
 * it may read node_modules and nothing else of the server, write nowhere, start no process).
 * It imports nothing of the server: it gets the bot's code, the event and a short-lived token over
 * IPC, calls `handler(medplum, event)`, and sends back the result and the console output.
 */
import { createRequire } from 'node:module';
import { format } from 'node:util';
import type { BotEvent, Hl7Message as Hl7MessageType, MedplumClient as MedplumClientType } from '@medplum/core';

// The bot `require`s @medplum/core (CommonJS); the runner uses that same module instance, so that a
// returned Hl7Message is one of its own.
const nodeRequire = createRequire(import.meta.url);
const { Hl7Message, MedplumClient } = nodeRequire('@medplum/core') as {
  Hl7Message: typeof Hl7MessageType;
  MedplumClient: typeof MedplumClientType;
};

interface ExecuteMessage {
  code: string;
  event: BotEvent;
  baseUrl: string;
  accessToken: string;
  /** The modules a bot may require (Medplum's vmcontext offers a similar short list). */
  allowedModules: string[];
}

type ResultMessage =
  | { ok: true; contentType: 'x-application/hl7-v2+er7' | 'text/plain' | 'application/json'; body: string; logs: string }
  | { ok: false; error: string; logs: string };

const logs: string[] = [];
const capture = (...args: unknown[]): void => {
  logs.push(format(...args));
};
console.log = capture;
console.info = capture;
console.warn = capture;
console.error = capture;
console.debug = capture;

function send(message: ResultMessage): void {
  process.send?.(message, () => process.exit(0));
}

process.once('message', (raw: unknown) => {
  // A handler awaiting something that never settles leaves nothing on the event loop; this keeps the
  // process up so that it ends by the runtime's timeout (and is reported as such), not silently.
  const keepAlive = setInterval(() => undefined, 60_000);
  void run(raw as ExecuteMessage)
    .then(send, (err: unknown) => send({ ok: false, error: err instanceof Error ? err.message : String(err), logs: logs.join('\n') }))
    .finally(() => clearInterval(keepAlive));
});

async function run(message: ExecuteMessage): Promise<ResultMessage> {
  const allowed = new Set(message.allowedModules);
  const botRequire = (name: string): unknown => {
    if (!allowed.has(name)) {
      throw new Error(`Module not available to bots: ${name}`);
    }
    return nodeRequire(name);
  };
  // Bots are CommonJS (what `medplum bot deploy` ships): `exports.handler = ...`.
  const module = { exports: {} as Record<string, unknown> };
  new Function('exports', 'require', 'module', message.code)(module.exports, botRequire, module);
  const handler = module.exports.handler;
  if (typeof handler !== 'function') {
    throw new Error('The bot exports no handler function');
  }
  const medplum = new MedplumClient({ baseUrl: message.baseUrl, fetch: (url: string, init: RequestInit) => fetch(url, init) });
  medplum.setAccessToken(message.accessToken);
  const event = { ...message.event };
  if (event.contentType === 'x-application/hl7-v2+er7' && typeof event.input === 'string') {
    (event as { input: unknown }).input = Hl7Message.parse(event.input);
  }
  const result: unknown = await handler(medplum, event);
  const output = logs.join('\n');
  if (result instanceof Hl7Message) {
    return { ok: true, contentType: 'x-application/hl7-v2+er7', body: result.toString(), logs: output };
  }
  if (typeof result === 'string') {
    return { ok: true, contentType: 'text/plain', body: result, logs: output };
  }
  if (result === undefined) {
    // Medplum answers a handler that returns nothing with an "All OK" OperationOutcome.
    const allOk = { resourceType: 'OperationOutcome', id: 'allok', issue: [{ severity: 'information', code: 'informational', details: { text: 'All OK' } }] };
    return { ok: true, contentType: 'application/json', body: JSON.stringify(allOk), logs: output };
  }
  return { ok: true, contentType: 'application/json', body: JSON.stringify(result ?? null), logs: output };
}
