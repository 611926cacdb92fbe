import type { AckType } from './hl7/ack.ts';

/** What an HL7 channel's Endpoint.address says, e.g. `mllp://0.0.0.0:2575?enhanced=true&offline=reject`. */
export interface ChannelSettings {
  host: string;
  port: number;
  /** `mllps://` (or tls=true): TLS with the certificate and key files named by `cert` / `key` (and `ca` for client certificates). */
  tls?: { cert: string; key: string; ca?: string };
  /** Enhanced acknowledgement: commit ACK (CA) once spooled; `aa` answers AA at once and never the bot's ACK (Medplum's option). */
  enhanced: boolean | 'aa';
  /** Which application ACKs are passed on in enhanced mode when MSH-16 is empty (Medplum's appLevelAck). */
  appLevelAck: AckType;
  /** Answer even when MSH-15 and MSH-16 are both NE (most senders wait for a reply anyway); `honorNE=true` sends nothing. */
  honorNE: boolean;
  /** While the server is unreachable: `acknowledge` (AA/CA now, forward later in order) or `reject` (AE: the sender retries). */
  offline: 'acknowledge' | 'reject';
  /** How long an original-mode sender waits for the bot's ACK before the offline policy answers. */
  ackTimeoutMs: number;
  /** Charset of messages without MSH-18 that are not valid UTF-8. */
  charset: string;
  maxFrameBytes: number;
  idleTimeoutMs: number;
  maxConnections: number;
  /** Messages forwarded at once (one per sender connection at a time). */
  concurrency: number;
}

export class EndpointAddressError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'EndpointAddressError';
  }
}

const ACK_TYPES = new Set(['AL', 'NE', 'ER', 'SU']);

export function parseEndpointAddress(address: string): ChannelSettings {
  let url: URL;
  try {
    url = new URL(address);
  } catch {
    throw new EndpointAddressError(`Not a URL: ${address}`);
  }
  if (url.protocol !== 'mllp:' && url.protocol !== 'mllps:') {
    throw new EndpointAddressError(`Not an mllp:// address: ${address}`);
  }
  const port = Number(url.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535 || url.port === '') {
    throw new EndpointAddressError(`An mllp address needs a port: ${address}`);
  }
  const q = url.searchParams;
  const number = (name: string, fallback: number): number => {
    const raw = q.get(name);
    if (raw === null) {
      return fallback;
    }
    const n = Number(raw);
    if (!Number.isFinite(n) || n < 0) {
      throw new EndpointAddressError(`${name} must be a non-negative number: ${raw}`);
    }
    return n;
  };
  const enhancedRaw = (q.get('enhanced') ?? 'false').toLowerCase();
  const enhanced = enhancedRaw === 'aa' ? 'aa' : enhancedRaw === 'true';
  const appLevelAck = (q.get('appLevelAck') ?? 'AL').toUpperCase();
  if (!ACK_TYPES.has(appLevelAck)) {
    throw new EndpointAddressError(`appLevelAck must be AL, NE, ER or SU: ${appLevelAck}`);
  }
  const offline = q.get('offline') ?? 'acknowledge';
  if (offline !== 'acknowledge' && offline !== 'reject') {
    throw new EndpointAddressError(`offline must be acknowledge or reject: ${offline}`);
  }
  const useTls = url.protocol === 'mllps:' || q.get('tls') === 'true';
  let tls: ChannelSettings['tls'];
  if (useTls) {
    const cert = q.get('cert');
    const key = q.get('key');
    if (!cert || !key) {
      throw new EndpointAddressError('TLS needs cert and key (file paths on the agent host)');
    }
    tls = { cert, key, ca: q.get('ca') ?? undefined };
  }
  return {
    host: url.hostname.replace(/^\[|\]$/g, '') || '0.0.0.0',
    port,
    tls,
    enhanced,
    appLevelAck: appLevelAck as AckType,
    honorNE: q.get('honorNE') === 'true',
    offline,
    ackTimeoutMs: number('ackTimeoutMs', 30_000),
    charset: q.get('charset') ?? q.get('encoding') ?? 'windows-1253',
    maxFrameBytes: number('maxFrameBytes', 10 * 1024 * 1024),
    idleTimeoutMs: number('idleTimeoutMs', 5 * 60_000),
    maxConnections: number('maxConnections', 100),
    concurrency: Math.max(1, number('concurrency', 8)),
  };
}
