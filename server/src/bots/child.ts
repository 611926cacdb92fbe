/**
 * One bot execution, in a process of its own (started by runtime.ts under Node's permission model:
 * it may read @medplum/core and its own files, nothing else of the server; it writes nowhere and
 * starts no process). Before the bot's code runs, outgoing connections are confined to the
 * server's API, public addresses and the admin's allow-list, and the process may signal no other.
 * It gets the bot's code, the event and a short-lived token over IPC, calls
 * `handler(medplum, event)`, and sends back the result (with the runtime's nonce) and the console output.
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

interface ExecuteMessage {
  /** Proves a result comes from this runner, not from the bot calling process.send itself. */
  nonce: string;
  /** Private hosts/addresses the admin allows outbound (OUTBOUND_ALLOWED_HOSTS). */
  allowedHosts: string[];
  code: string;
  event: BotEvent;
  baseUrl: string;
  accessToken: string;
  /** The modules a bot may require (Medplum's vmcontext offers a similar short list). */
  allowedModules: string[];
}

type ResultMessage = { nonce?: string } & (
  | { ok: true; contentType: 'x-application/hl7-v2+er7' | 'text/plain' | 'application/json'; body: string; logs: string }
  | { ok: false; error: string; logs: string }
);

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

// The server went away (killed, say): the wall-clock limit lived there, so the bot ends here too.
process.on('disconnect', () => process.exit(1));

process.once('message', (raw: unknown) => {
  const message = raw as ExecuteMessage;
  const nonce = message.nonce;
  // A handler awaiting something that never settles leaves nothing on the event loop; this keeps the
  // process up so that it ends by the runtime's timeout (and is reported as such), not silently.
  const keepAlive = setInterval(() => undefined, 60_000);
  void confine(message)
    .then(() => run(message))
    .then(
      (result) => send({ ...result, nonce }),
      (err: unknown) => send({ ok: false, error: err instanceof Error ? err.message : String(err), logs: logs.join('\n'), nonce })
    )
    .finally(() => clearInterval(keepAlive));
});

/**
 * Confines the process before the bot runs: TCP only to the server's API (its address and port),
 * public addresses, or allow-listed hosts — checked on the resolved address, inside the socket's
 * own lookup; no Unix sockets, no UDP, no signals to other processes.
 */
async function confine(message: ExecuteMessage): Promise<void> {
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
