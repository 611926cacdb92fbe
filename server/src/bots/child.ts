/**
 * A bot's process (started by runtime.ts under Node's permission model: it may read @medplum/core
 * and its own files, nothing else of the server; it writes nowhere and starts no process). Its
 * first message loads the bot: outgoing connections are confined to the server's API, public
 * addresses and the admin's allow-list, the process may signal no other, and the bot's module is
 * compiled. Each later message is one execution (event, a short-lived token, a nonce): it calls
 * `handler(medplum, event)` with a new MedplumClient and sends back the result (with that
 * execution's nonce) and the console output. The process serves this one bot until the runtime
 * ends it.
 */
import dgram from 'node:dgram';
import { lookup as dnsLookup } from 'node:dns';
import type { LookupAddress, LookupOptions } from 'node:dns';
import { createRequire } from 'node:module';
import net from 'node:net';
import { format } from 'node:util';
import { isPrivateAddress } from '../net/private-addresses.ts';
import type { BotEvent, Hl7Message as Hl7MessageType, MedplumClient as MedplumClientType } from '@medplum/core';

// The bot `require`s @medplum/core (CommonJS); the runner uses that same module instance, so that a
// returned Hl7Message is one of its own.
const nodeRequire = createRequire(import.meta.url);
const { Hl7Message, MedplumClient } = nodeRequire('@medplum/core') as {
  Hl7Message: typeof Hl7MessageType;
  MedplumClient: typeof MedplumClientType;
};

interface LoadMessage {
  kind: 'load';
  code: string;
  /** The server's API, which the bot may reach. */
  baseUrl: string;
  /** Private hosts/addresses the admin allows outbound (OUTBOUND_ALLOWED_HOSTS). */
  allowedHosts: string[];
  /** The modules a bot may require (Medplum's vmcontext offers a similar short list). */
  allowedModules: string[];
}

interface RunMessage {
  kind: 'run';
  /** New for each execution: proves a result comes from this runner, not from the bot calling process.send itself. */
  nonce: string;
  event: BotEvent;
  baseUrl: string;
  accessToken: string;
}

type Handler = (medplum: MedplumClientType, event: BotEvent) => unknown;

type Answer =
  | { ok: true; contentType: 'x-application/hl7-v2+er7' | 'text/plain' | 'application/json'; body: string }
  | { ok: false; error: string; retire?: true };

let logs: string[] = [];
const capture = (...args: unknown[]): void => {
  logs.push(format(...args));
};
console.log = capture;
console.info = capture;
console.warn = capture;
console.error = capture;
console.debug = capture;

// Taken before any bot code runs: the runner's answers do not go through a process.send the bot replaced.
const send = process.send?.bind(process) as (message: unknown) => boolean;

// The server went away (killed, say): the wall-clock limit lived there, so the bot ends here too.
process.on('disconnect', () => process.exit(1));

let loaded: Promise<Handler> | undefined;

// This listener also keeps the IPC channel, hence the process, alive between executions and while a
// handler awaits something that never settles (the runtime's timeout then ends it).
process.on('message', (raw: unknown) => {
  const message = raw as LoadMessage | RunMessage;
  if (message.kind === 'load' && !loaded) {
    loaded = confine(message).then(() => load(message));
    loaded.catch(() => undefined); // reported by the execution waiting for it
  } else if (message.kind === 'run') {
    void execute(message);
  }
});

async function execute(message: RunMessage): Promise<void> {
  let answer: Answer;
  try {
    const handler = await (loaded ?? Promise.reject(new Error('The bot was not loaded')));
    try {
      answer = await run(handler, message);
    } catch (err) {
      // The bot failed this execution; its process is as good as before.
      answer = { ok: false, error: err instanceof Error ? err.message : String(err) };
    }
  } catch (err) {
    answer = { ok: false, error: err instanceof Error ? err.message : String(err), retire: true };
  }
  // Console output belongs to the execution it ends with (work left over from an earlier one included).
  const output = logs.join('\n');
  logs = [];
  send({ ...answer, logs: output, nonce: message.nonce, heapUsed: process.memoryUsage().heapUsed });
}

/**
 * Confines the process before the bot runs: TCP only to the server's API (its address and port),
 * public addresses, or allow-listed hosts — checked on the resolved address, inside the socket's
 * own lookup; no Unix sockets, no UDP, no signals to other processes.
 */
async function confine(message: LoadMessage): Promise<void> {
  const api = new URL(message.baseUrl);
  const apiPort = Number(api.port || (api.protocol === 'https:' ? 443 : 80));
  const apiAddresses = new Set(
    (await new Promise<LookupAddress[]>((resolve) => dnsLookup(api.hostname.replace(/^\[|\]$/g, ''), { all: true }, (err, a) => resolve(err ? [] : a)))).map((a) => a.address)
  );
  const allowedHosts = new Set(message.allowedHosts.map((h) => h.toLowerCase()));
  const allowed = (host: string, address: string, family: number, port: number): boolean =>
    (apiAddresses.has(address) && port === apiPort) || allowedHosts.has(host.toLowerCase()) || allowedHosts.has(address) || !isPrivateAddress(address, family);
  const refuse = (what: string): Error => Object.assign(new Error(`Bots may not connect to ${what}`), { code: 'EACCES' });

  const original = net.Socket.prototype.connect;
  const guarded = function (this: net.Socket, ...args: unknown[]): net.Socket {
    // net.connect passes one normalized [options, callback] array; direct calls pass the parts.
    const first = Array.isArray(args[0]) ? (args[0] as unknown[])[0] : args[0];
    const options = (typeof first === 'object' && first !== null ? first : {}) as net.TcpSocketConnectOpts & net.IpcSocketConnectOpts;
    if (typeof first === 'string' || options.path) {
      throw refuse('local sockets');
    }
    const host = options.host ?? 'localhost';
    const port = Number(options.port);
    const family = net.isIP(host);
    if (family && !allowed(host, host, family, port)) {
      throw refuse(`${host}:${port}`);
    }
    options.lookup = (hostname: string, opts: LookupOptions, callback: (err: Error | null, address: string | LookupAddress[], family?: number) => void) => {
      dnsLookup(hostname, { ...opts, all: true }, (err, addresses) => {
        const list = (addresses ?? []) as LookupAddress[];
        const bad = list.find((a) => !allowed(hostname, a.address, a.family, port));
        if (err || bad) {
          callback(err ?? refuse(`${hostname} (${bad?.address}):${port}`), '');
        } else if (opts.all) {
          callback(null, list);
        } else {
          callback(null, list[0].address, list[0].family);
        }
      });
    };
    return (original as (...a: unknown[]) => net.Socket).apply(this, args);
  };
  Object.defineProperty(net.Socket.prototype, 'connect', { value: guarded, writable: false, configurable: false });
  Object.defineProperty(dgram, 'createSocket', {
    value: () => {
      throw refuse('UDP');
    },
    writable: false,
    configurable: false,
  });
  Object.defineProperty(process, 'kill', {
    value: (pid: number) => {
      if (pid !== process.pid) {
        throw refuse('other processes');
      }
      process.exit(1);
    },
    writable: false,
    configurable: false,
  });
}

/** Compiles the bot's module once; its module-level state lives as long as the process. */
function load(message: LoadMessage): Handler {
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
  return handler as Handler;
}

async function run(handler: Handler, message: RunMessage): Promise<Answer> {
  const medplum = new MedplumClient({ baseUrl: message.baseUrl, fetch: (url: string, init: RequestInit) => fetch(url, init) });
  medplum.setAccessToken(message.accessToken);
  const event = { ...message.event };
  if (event.contentType === 'x-application/hl7-v2+er7' && typeof event.input === 'string') {
    (event as { input: unknown }).input = Hl7Message.parse(event.input);
  }
  const result: unknown = await handler(medplum, event);
  if (result instanceof Hl7Message) {
    return { ok: true, contentType: 'x-application/hl7-v2+er7', body: result.toString() };
  }
  if (typeof result === 'string') {
    return { ok: true, contentType: 'text/plain', body: result };
  }
  if (result === undefined) {
    // Medplum answers a handler that returns nothing with an "All OK" OperationOutcome.
    const allOk = { resourceType: 'OperationOutcome', id: 'allok', issue: [{ severity: 'information', code: 'informational', details: { text: 'All OK' } }] };
    return { ok: true, contentType: 'application/json', body: JSON.stringify(allOk) };
  }
  return { ok: true, contentType: 'application/json', body: JSON.stringify(result ?? null) };
}
