import type { Logger } from './log.ts';
import { ServerUnavailableError } from './server-link.ts';
import type { ProtocolMessage, ServerLink } from './server-link.ts';
import type { Spool, SpooledMessage } from './spool/spool.ts';

/** The server's definitive answer to a message: the bot's ACK (200) or why the bot failed (4xx). */
export interface ForwardResult {
  statusCode: number;
  body: string;
  contentType?: string;
}

interface Job {
  message: SpooledMessage;
  text: string;
  /** Copies of one message (same sender and MSH-10) share it: they may go together (the server runs them one after another). */
  copyKey: string;
  running: boolean;
  /** Failed tries so far, and when the next may start (backoff per message, not per channel). */
  failures: number;
  notBefore: number;
  waiters: ((result: ForwardResult) => void)[];
}

export interface ForwarderOptions {
  /** Messages in flight at once (each stream still one at a time). */
  concurrency: number;
  /** How long the server may take to answer one message before it counts as unreachable. */
  timeoutMs: number;
  /** First retry delay while the server is unreachable; doubles up to 30 s. */
  retryMs?: number;
}

/**
 * Sends spooled messages to the server, in spool order per stream (one sender connection's
 * messages one after another; different connections in parallel), and marks each done in the
 * spool once the server gave a definitive answer. While the server is unreachable (no link, a
 * timeout, a 5xx or an auth failure) messages stay queued and are retried; nothing is dropped.
 */
export class Forwarder {
  private readonly link: ServerLink;
  private readonly spool: Spool;
  private readonly options: Required<ForwarderOptions>;
  private readonly log: Logger;
  private readonly queue: Job[] = [];
  /** Streams with a message in flight: which message (copy key), and how many copies of it. */
  private readonly busyStreams = new Map<string, { copyKey: string; count: number }>();
  private running = 0;
  private retryTimer: NodeJS.Timeout | undefined;
  private stopped = false;
  readonly counters = { forwarded: 0, failed: 0, retries: 0 };

  constructor(link: ServerLink, spool: Spool, options: ForwarderOptions, log: Logger) {
    this.link = link;
    this.spool = spool;
    this.options = { ...options, retryMs: options.retryMs ?? 500 };
    this.log = log;
    link.on('up', () => {
      // Back: retry now rather than when the backoff would have.
      for (const job of this.queue) {
        job.notBefore = 0;
        job.failures = 0;
      }
      this.pump();
    });
  }

  /** Messages in flight at once (a reloaded endpoint may change it). */
  setConcurrency(concurrency: number): void {
    this.options.concurrency = Math.max(1, concurrency);
    this.pump();
  }

  /** Messages waiting or in flight. */
  get depth(): number {
    return this.queue.length;
  }

  /** Queues a spooled message; resolves with the server's answer (possibly much later). */
  submit(message: SpooledMessage, text: string): Promise<ForwardResult> {
    return new Promise((resolve) => {
      this.queue.push({ message, text, copyKey: copyKeyOf(text), running: false, failures: 0, notBefore: 0, waiters: [resolve] });
      this.pump();
    });
  }

  /** Takes a message back that has not been sent yet (the sender was told to resend it); false if it is in flight. */
  cancel(seq: number): boolean {
    const index = this.queue.findIndex((j) => j.message.seq === seq);
    if (index < 0 || this.queue[index].running) {
      return false;
    }
    this.queue.splice(index, 1);
    return true;
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.retryTimer);
  }

  private pump(): void {
    if (this.stopped || !this.link.connected) {
      return;
    }
    const now = Date.now();
    // A stream whose first message waits for its retry holds back that stream only.
    const held = new Set<string>();
    let nextRetry = Infinity;
    for (const job of this.queue) {
      if (this.running >= this.options.concurrency) {
        break;
      }
      const busy = this.busyStreams.get(job.message.stream);
      if (job.running || (busy && busy.copyKey !== job.copyKey) || held.has(job.message.stream)) {
        continue;
      }
      if (job.notBefore > now) {
        held.add(job.message.stream);
        nextRetry = Math.min(nextRetry, job.notBefore);
        continue;
      }
      job.running = true;
      this.running++;
      this.busyStreams.set(job.message.stream, { copyKey: job.copyKey, count: (busy?.count ?? 0) + 1 });
      void this.send(job);
    }
    if (nextRetry !== Infinity) {
      this.scheduleRetry(nextRetry - now);
    }
  }

  private async send(job: Job): Promise<void> {
    let answer: ProtocolMessage | undefined;
    try {
      answer = await this.link.transmit(
        { channel: job.message.channel, remote: job.message.remote, contentType: 'x-application/hl7-v2+er7', body: job.text },
        this.options.timeoutMs
      );
    } catch (err) {
      // Whatever failed (sign-in, the socket), the message stays queued and is tried again.
      if (!(err instanceof ServerUnavailableError)) {
        this.log.warn('forwarding failed', { seq: job.message.seq, error: (err as Error).message });
      }
    }
    if (answer?.statusCode === 401) {
      this.link.signInAgain(); // the token was refused: a new one before the next try
    }
    const status = answer?.statusCode ?? (answer?.type === 'agent:error' ? 503 : 0);
    const definitive = answer !== undefined && answer.type === 'agent:transmit:response' && status !== 0 && status < 500 && status !== 401 && status !== 403;
    this.running--;
    const busy = this.busyStreams.get(job.message.stream);
    if (busy && busy.count > 1) {
      busy.count--;
    } else {
      this.busyStreams.delete(job.message.stream);
    }
    if (!definitive) {
      job.running = false;
      job.failures++;
      job.notBefore = Date.now() + Math.min(this.options.retryMs * 2 ** (job.failures - 1), 30_000);
      this.counters.retries++;
      this.log.warn('server did not take the message; will retry', { seq: job.message.seq, channel: job.message.channel, status, reason: answer?.body?.slice(0, 200) });
      this.pump();
      return;
    }
    const result: ForwardResult = { statusCode: status, body: answer?.body ?? '', contentType: answer?.contentType };
    if (status >= 400) {
      this.counters.failed++;
    } else {
      this.counters.forwarded++;
    }
    try {
      await this.spool.complete(job.message.seq, status < 400 ? 'processed' : 'failed');
    } catch (err) {
      this.log.error('spool write failed', { seq: job.message.seq, error: (err as Error).message });
    }
    this.queue.splice(this.queue.indexOf(job), 1);
    for (const waiter of job.waiters) {
      waiter(result);
    }
    this.pump();
  }

  private scheduleRetry(delayMs: number): void {
    if (this.stopped) {
      return;
    }
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.pump();
    }, Math.max(delayMs, 10));
  }
}

/** Sender (MSH-3, MSH-4) and control ID (MSH-10): what copies of one message share. */
function copyKeyOf(text: string): string {
  const msh = text.slice(0, text.search(/[\r\n]|$/));
  const fs = msh.charAt(3) || '|';
  const fields = msh.split(fs);
  return `${fields[2] ?? ''}|${fields[3] ?? ''}|${fields[9] ?? ''}`;
}
