import { normalizeErrorString } from '@medplum/core';
import { readMsh18, charsetForMsh18, decodeWith, encodeHl7 } from './hl7/charset.ts';
import type { Logger } from './log.ts';
import { MllpClientPool, MllpTimeoutError } from './mllp/client.ts';
import type { ProtocolMessage } from './server-link.ts';

const DEFAULT_TIMEOUT_MS = 10_000;

/**
 * Messages the server pushes through the agent (Agent/$push) to a Device's `mllp://host:port`:
 * sent over kept-alive connections, one message at a time per connection, answered with the
 * destination's ACK (the first one, or the application ACK when `returnAck` asks for it).
 */
export class PushHandler {
  private readonly pool = new MllpClientPool({ keepAlive: true, maxIdleMs: 60_000, maxConnectionsPerKey: 2 });
  private readonly log: Logger;
  readonly counters = { sent: 0, failed: 0 };

  constructor(log: Logger) {
    this.log = log;
  }

  async send(request: ProtocolMessage): Promise<ProtocolMessage> {
    const answer = (statusCode: number, body: string, contentType = 'text/plain'): ProtocolMessage => ({
      type: 'agent:transmit:response',
      callback: request.callback,
      remote: request.remote,
      contentType,
      statusCode,
      body,
    });
    const url = request.remote ?? '';
    if (!/^mllp:\/\//.test(url)) {
      this.counters.failed++;
      return answer(400, `Unsupported destination: ${url}`);
    }
    const text = request.body ?? '';
    // The message goes out in the charset its MSH-18 names (UTF-8 when it names none).
    const charset = charsetForMsh18(readMsh18(Buffer.from(text, 'latin1')) ?? '') ?? 'utf-8';
    try {
      const reply = await this.pool.sendToUrl(url, encodeHl7(text, charset), DEFAULT_TIMEOUT_MS, { awaitApplicationAck: request.returnAck === 'application' });
      this.counters.sent++;
      const replyCharset = charsetForMsh18(readMsh18(reply) ?? '') ?? 'utf-8';
      return answer(200, decodeWith(reply, replyCharset), 'x-application/hl7-v2+er7');
    } catch (err) {
      this.counters.failed++;
      this.log.warn('push failed', { destination: url, error: normalizeErrorString(err) });
      // No reply in time: the message may have arrived (408, not to be resent blindly). Not connected: 502.
      const timedOut = err instanceof MllpTimeoutError && err.phase === 'reply';
      return answer(timedOut ? 408 : 502, normalizeErrorString(err));
    }
  }

  close(): void {
    this.pool.close();
  }
}
