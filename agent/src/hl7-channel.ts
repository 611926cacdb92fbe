import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { ackCodeOf, ackModeOf, buildAck, recoverHeader } from './hl7/ack.ts';
import type { AckCode, AckError, AckType } from './hl7/ack.ts';
import { decodeHl7, encodeHl7, Hl7CharsetError } from './hl7/charset.ts';
import type { ChannelSettings } from './endpoint.ts';
import type { Forwarder, ForwardResult } from './forwarder.ts';
import type { Logger } from './log.ts';
import { MllpListener } from './mllp/listener.ts';
import type { ConnectionInfo, MllpListenerStats, ReplyFn } from './mllp/listener.ts';
import type { FramingError } from './mllp/framer.ts';
import type { ServerLink } from './server-link.ts';
import type { Spool, SpooledMessage } from './spool/spool.ts';

export interface ChannelCounters {
  received: number;
  /** Frames that were not HL7 (or in a charset we cannot read): answered AR, not spooled. */
  rejected: number;
  spooled: number;
  commitAcks: number;
  /** Application ACKs sent, by MSA-1. */
  acks: Record<string, number>;
  /** Answered by the offline policy because the server was unreachable. */
  offline: number;
  framingErrors: number;
  lastMessageAt?: string;
}

/** Each process start gets its own stream ids, so a recovered message never shares a stream with a new connection. */
const BOOT = randomUUID().slice(0, 8);

/**
 * One HL7 channel of the agent: an MLLP listener whose messages are written to the spool (and
 * synced) before any ACK leaves, then forwarded to the channel's bot on the server.
 *
 * Original mode (MSH-15 and MSH-16 empty, endpoint not enhanced): the bot's ACK goes back to the
 * sender. Enhanced mode (MSH-15/16 valued, or `enhanced=true` on the endpoint): a commit ACK (CA)
 * once spooled, as MSH-15 asks; the bot's ACK afterwards, as MSH-16 (or `appLevelAck`) asks.
 * While the server is unreachable the endpoint's offline policy answers: `acknowledge` (AA, or
 * the CA already sent; forwarded later, in order) or `reject` (AE with ERR 207; the sender resends).
 */
export class Hl7Channel {
  readonly name: string;
  readonly settings: ChannelSettings;
  private readonly spool: Spool;
  private readonly forwarder: Forwarder;
  private readonly link: ServerLink;
  private readonly log: Logger;
  private readonly listener: MllpListener;
  readonly counters: ChannelCounters = { received: 0, rejected: 0, spooled: 0, commitAcks: 0, acks: {}, offline: 0, framingErrors: 0 };

  constructor(name: string, settings: ChannelSettings, deps: { spool: Spool; forwarder: Forwarder; link: ServerLink; log: Logger }) {
    this.name = name;
    this.settings = settings;
    this.spool = deps.spool;
    this.forwarder = deps.forwarder;
    this.link = deps.link;
    this.log = deps.log;
    this.listener = new MllpListener({
      host: settings.host,
      port: settings.port,
      tls: settings.tls
        ? { cert: readFileSync(settings.tls.cert), key: readFileSync(settings.tls.key), ca: settings.tls.ca ? readFileSync(settings.tls.ca) : undefined }
        : undefined,
      idleTimeoutMs: settings.idleTimeoutMs,
      maxConnections: settings.maxConnections,
      maxFrameBytes: settings.maxFrameBytes,
      onMessage: (frame, conn, reply) => this.onMessage(frame, conn, reply),
      onFramingError: (error, conn) => this.onFramingError(error, conn),
    });
  }

  /** Starts listening; resolves with the port (useful with port 0). */
  async start(): Promise<number> {
    return (await this.listener.listen()).port;
  }

  async stop(): Promise<void> {
    await this.listener.close();
  }

  listenerStats(): MllpListenerStats {
    return this.listener.stats();
  }

  /**
   * Resolves with the reply that keeps the message's place on the connection (the bot's ACK in
   * original mode, the commit ACK in enhanced mode); the application ACK of enhanced mode follows
   * later through `reply`, so that the next message's commit ACK need not wait for it.
   */
  private async onMessage(frame: Buffer, conn: ConnectionInfo, reply: ReplyFn): Promise<Uint8Array | undefined> {
    this.counters.received++;
    this.counters.lastMessageAt = new Date().toISOString();
    let decoded: { text: string; charset: string };
    try {
      decoded = decodeHl7(frame, { fallback: this.settings.charset });
    } catch (err) {
      const reason = err instanceof Hl7CharsetError ? err.message : 'The message could not be decoded';
      this.counters.rejected++;
      return encodeHl7(buildAck(frame.toString('latin1'), 'AR', { error: { segment: 'MSH', sequence: 1, field: 18, hl7Code: '203', message: reason } }), 'utf-8');
    }
    const { text, charset } = decoded;
    const encode = (ack: string): Uint8Array => encodeHl7(ack, charset);
    const header = recoverHeader(text);
    const problem = header ? (headerProblem(header) ?? structureProblem(text)) : { segment: 'MSH', sequence: 1, hl7Code: '100', message: 'Not an HL7 v2 message: no MSH segment' };
    if (problem) {
      this.counters.rejected++;
      this.count('AR');
      this.log.warn('message rejected', { channel: this.name, remote: conn.remote, reason: problem.message });
      return encode(buildAck(text, 'AR', { error: problem }));
    }
    const mode = ackModeOf(text);
    const enhanced = this.settings.enhanced !== false || mode.accept !== undefined || mode.application !== undefined;
    let spooled: SpooledMessage;
    try {
      spooled = await this.spool.append({ channel: this.name, stream: streamKey(text) ?? `${BOOT}-${conn.id}`, remote: conn.remote, receivedAt: new Date().toISOString(), bytes: frame });
      this.counters.spooled++;
    } catch (err) {
      // Not stored: the sender must keep the message and send it again.
      this.log.error('spool write failed', { channel: this.name, error: (err as Error).message });
      const code: AckCode = enhanced ? 'CR' : 'AR';
      this.count(code);
      return encode(buildAck(text, code, { error: { hl7Code: '207', message: 'The message could not be stored; send it again later' } }));
    }
    const logFields = { channel: this.name, seq: spooled.seq, controlId: header?.controlId, type: header?.messageType, remote: conn.remote };
    this.log.debug('message spooled', logFields);

    if (enhanced) {
      const accept: AckType = (mode.accept as AckType | undefined) ?? 'AL';
      const application: AckType = (mode.application as AckType | undefined) ?? this.settings.appLevelAck;
      let first: string | undefined;
      if (this.settings.enhanced === 'aa') {
        this.count('AA');
        first = buildAck(text, 'AA', { text: 'Accepted' });
      } else if (accept === 'AL' || accept === 'SU') {
        this.counters.commitAcks++;
        first = buildAck(text, 'CA');
      }
      void this.forwarder.submit(spooled, fromMsh(text)).then((result) => {
        const ack = this.ackText(text, result);
        const code = ackCodeOf(ack) ?? 'AA';
        const wanted =
          this.settings.enhanced !== 'aa' &&
          (application === 'AL' ||
            (application === 'ER' && code !== 'AA') ||
            (application === 'SU' && code === 'AA') ||
            // NE|NE: most senders still wait for something; answer unless told to honour NE.
            (first === undefined && !this.settings.honorNE));
        if (wanted) {
          this.count(code);
          reply(encode(ack));
        }
      });
      return first === undefined ? undefined : encode(first);
    }

    // Original mode: the bot's ACK, unless the server cannot give one in time.
    if (!this.link.connected && this.settings.offline === 'reject') {
      this.forwarder.cancel(spooled.seq);
      await this.spool.complete(spooled.seq, 'rejected').catch(() => undefined);
      this.counters.offline++;
      this.count('AE');
      return encode(buildAck(text, 'AE', { error: { hl7Code: '207', message: 'The receiving system is unavailable; send the message again later' } }));
    }
    const outcome = this.forwarder.submit(spooled, fromMsh(text));
    const result = await Promise.race([outcome, sleep(this.link.connected ? this.settings.ackTimeoutMs : 0).then(() => undefined)]);
    if (result) {
      const ack = this.ackText(text, result);
      this.count(ackCodeOf(ack) ?? '?');
      return encode(ack);
    }
    this.counters.offline++;
    if (this.settings.offline === 'reject') {
      // Taken back unless already with the server: then it may still be processed, and the
      // sender's resend is answered as a duplicate. Never an AA the bot did not give.
      if (this.forwarder.cancel(spooled.seq)) {
        await this.spool.complete(spooled.seq, 'rejected').catch(() => undefined);
      }
      this.count('AE');
      return encode(buildAck(text, 'AE', { error: { hl7Code: '207', message: 'The receiving system is unavailable; send the message again later' } }));
    }
    // Kept in the spool and forwarded when the server is back; the sender is told it was accepted.
    this.count('AA');
    this.log.info('message queued while the server is unreachable', logFields);
    return encode(buildAck(text, 'AA', { text: 'Accepted; queued for processing' }));
  }

  private onFramingError(error: FramingError, conn: ConnectionInfo): Uint8Array | undefined {
    this.counters.framingErrors++;
    this.log.warn('framing error', { channel: this.name, remote: conn.remote, kind: error.kind });
    if (error.kind === 'too-large') {
      // What the head of the frame tells is enough to name the message in the NAK.
      const head = error.head ? error.head.toString('latin1') : '';
      this.count('AR');
      return encodeHl7(buildAck(head, 'AR', { error: { hl7Code: '104', message: `Message larger than the limit of ${this.settings.maxFrameBytes} bytes` } }), 'utf-8');
    }
    if (error.kind === 'missing-end-block') {
      // A frame cut short by the next start block: never processed; the sender learns it from the NAK.
      const head = error.head ? error.head.toString('latin1') : '';
      this.count('AR');
      return encodeHl7(buildAck(head, 'AR', { error: { hl7Code: '100', message: 'Message ended without the MLLP end block' } }), 'utf-8');
    }
    return undefined;
  }

  /** The HL7 ACK for a server answer: the bot's ACK, or an AE naming why the bot failed. */
  private ackText(messageText: string, result: ForwardResult): string {
    if (result.statusCode < 400) {
      if (/^MSH/.test(result.body)) {
        return result.body;
      }
      return buildAck(messageText, 'AA');
    }
    return buildAck(messageText, 'AE', { error: { hl7Code: '207', message: `Application error: ${result.body.slice(0, 200)}` } });
  }

  private count(code: string): void {
    this.counters.acks[code] = (this.counters.acks[code] ?? 0) + 1;
  }
}

/**
 * The text to forward: decoded as the channel reads it, from MSH on (senders put line breaks or a
 * byte-order mark first). Undefined when the charset cannot be read.
 */
export function forwardableText(bytes: Buffer, fallbackCharset: string): string | undefined {
  try {
    return fromMsh(decodeHl7(bytes, { fallback: fallbackCharset }).text);
  } catch (err) {
    if (err instanceof Hl7CharsetError) {
      return undefined;
    }
    throw err;
  }
}

/** The message from its MSH segment on. */
function fromMsh(text: string): string {
  const start = text.search(/(^|[\r\n])\uFEFF?MSH/);
  return start <= 0 ? text.replace(/^\uFEFF/, '') : text.slice(start).replace(/^[\r\n\uFEFF]+/, '');
}

/**
 * Messages about the same thing reach the bot in the order they came: those of one sender about
 * one order (ORC-3/OBR-3, else the placer number) or, for ADT, one patient (PID-3). Different
 * orders and patients go in parallel. Undefined when neither is found (then: per connection).
 */
export function streamKey(text: string): string | undefined {
  const segments = text.split(/\r\n|\r|\n/);
  const msh = segments.find((s) => s.startsWith('MSH'));
  if (!msh) {
    return undefined;
  }
  const fs = msh.charAt(3);
  const cs = msh.charAt(4) || '^';
  const field = (segment: string | undefined, n: number): string => (segment?.split(fs)[n] ?? '').split(cs)[0].split(msh.charAt(5) || '~')[0].trim();
  const mshFields = msh.split(fs);
  const sender = `${mshFields[2] ?? ''}|${mshFields[3] ?? ''}`;
  const orc = segments.find((s) => s.startsWith(`ORC${fs}`));
  const obr = segments.find((s) => s.startsWith(`OBR${fs}`));
  const order = field(orc, 3) || field(obr, 3) || field(orc, 2) || field(obr, 2);
  if (order) {
    return `${sender}|order|${order}`;
  }
  const patient = field(segments.find((s) => s.startsWith(`PID${fs}`)), 3);
  return patient ? `${sender}|patient|${patient}` : undefined;
}

/** What makes a message unusable before any processing: AR as the ACK rules say (table 0357). */
function headerProblem(header: NonNullable<ReturnType<typeof recoverHeader>>): AckError | undefined {
  if (!header.delimitersValid) {
    return { segment: 'MSH', sequence: 1, field: 2, hl7Code: '102', message: 'MSH-2 (encoding characters) is missing or invalid' };
  }
  if (!header.messageCode) {
    return { segment: 'MSH', sequence: 1, field: 9, hl7Code: '101', message: 'MSH-9 (message type) is missing' };
  }
  if (!header.controlId) {
    return { segment: 'MSH', sequence: 1, field: 10, hl7Code: '101', message: 'MSH-10 (message control ID) is missing' };
  }
  if (header.version && !/^2\.\d/.test(header.version)) {
    return { segment: 'MSH', sequence: 1, field: 12, hl7Code: '203', message: `Unsupported version ${header.version}` };
  }
  return undefined;
}

/**
 * What the parser lets through but no bot should see: one MSH, first; segment names of three
 * letters/digits (the parser would take `XX|...` as a segment and shift nothing, silently).
 */
function structureProblem(text: string): AckError | undefined {
  const segments = text.split(/\r\n|\r|\n/).filter((s) => s.trim() !== '');
  const start = segments.findIndex((s) => /^\uFEFF?MSH/.test(s));
  const names = segments.slice(start).map((s) => s.slice(0, 3));
  if (names.filter((n) => n === 'MSH').length > 1) {
    return { segment: 'MSH', sequence: 2, hl7Code: '100', message: 'More than one MSH segment: send one message per frame' };
  }
  const fs = segments[start]?.charAt(3) ?? '|';
  const bad = segments.slice(start).findIndex((s) => !/^[A-Z][A-Z0-9]{2}$/.test(s.slice(0, 3)) || (s.length > 3 && s.charAt(3) !== fs));
  if (bad > 0) {
    return { hl7Code: '100', message: `Segment ${bad + 1} has no valid segment name` };
  }
  return undefined;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
