/**
 * Outbound MLLP: one message in flight per connection (MLLP is request/response), connections
 * reused while keepAlive is on.
 *
 * Decisions:
 * - A timeout (connect or reply) destroys the connection: a late reply on it would otherwise be
 *   taken as the answer to the next message.
 * - A reused (idle) connection that the peer closed before any reply byte arrived is retried once on
 *   a fresh connection, within the same deadline. HL7 over MLLP is at-least-once anyway (receivers
 *   de-duplicate on MSH-10); a fresh connection that fails is never retried here.
 * - Frames that arrive while nothing is in flight are dropped (counted).
 * - With awaitApplicationAck, commit ACKs (MSA-1 = CA) are skipped and the next reply is returned;
 *   CE/CR are returned, they are final.
 */
import net from 'node:net';
import tls from 'node:tls';
import { ackCodeOf } from '../hl7/ack.ts';
import { MllpFramer, DEFAULT_MAX_FRAME_BYTES } from './framer.ts';
import type { FramingError } from './framer.ts';
import { frameMessage } from './frame.ts';

export class MllpError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'MllpError';
  }
}

export class MllpTimeoutError extends MllpError {
  readonly phase: 'connect' | 'reply';
  readonly timeoutMs: number;
  constructor(phase: 'connect' | 'reply', timeoutMs: number, target: string) {
    super(`MLLP ${phase} timeout after ${timeoutMs} ms (${target})`);
    this.name = 'MllpTimeoutError';
    this.phase = phase;
    this.timeoutMs = timeoutMs;
  }
}

export class MllpConnectionError extends MllpError {
  /** errno code when the socket reported one (ECONNREFUSED, ECONNRESET, ...). */
  readonly code: string | undefined;
  constructor(message: string, code?: string, cause?: unknown) {
    super(message, { cause });
    this.name = 'MllpConnectionError';
    this.code = code;
  }
}

export interface MllpClientOptions {
  host: string;
  port: number;
  /** true or TLS options (ca, cert, key, servername, rejectUnauthorized…) for MLLP over TLS. */
  tls?: boolean | tls.ConnectionOptions;
  /** Default 10 s (bounded by the send's own timeout). */
  connectTimeoutMs?: number;
  /** Keep the connection for the next message. Default true. */
  keepAlive?: boolean;
  /** Close a kept connection after this long without a message (ms). Default 60 s; 0 = never. */
  idleTimeoutMs?: number;
  maxFrameBytes?: number;
}

export interface SendOptions {
  /** Skip commit ACKs (CA) and resolve with the application ACK. */
  awaitApplicationAck?: boolean;
}

interface Waiter {
  /** The connection the message went out on: events of other (older) sockets must not touch it. */
  socket: net.Socket;
  resolve: (frame: Buffer) => void;
  reject: (err: Error) => void;
  awaitApplicationAck: boolean;
  gotBytes: boolean;
}

export class MllpClient {
  readonly host: string;
  readonly port: number;
  private readonly options: MllpClientOptions;
  private socket: net.Socket | undefined;
  private framer: MllpFramer | undefined;
  private waiter: Waiter | undefined;
  private chain: Promise<unknown> = Promise.resolve();
  private pendingCount = 0;
  private idleTimer: NodeJS.Timeout | undefined;
  /** Bumped by close(): sends queued before it fail instead of reconnecting. */
  private generation = 0;
  /** Frames received with nothing in flight. */
  unsolicitedFrames = 0;
  connectionsOpened = 0;

  constructor(options: MllpClientOptions) {
    this.options = options;
    this.host = options.host;
    this.port = options.port;
  }

  /** Messages queued or in flight on this client. */
  get pending(): number {
    return this.pendingCount;
  }

  get connected(): boolean {
    return this.socket !== undefined && !this.socket.destroyed;
  }

  /**
   * Sends one message (unframed bytes) and resolves with the reply frame's content. Calls are
   * queued: the timeout starts when this message's turn comes and covers connect + reply.
   */
  send(message: Uint8Array, timeoutMs = 30_000, options: SendOptions = {}): Promise<Buffer> {
    const generation = this.generation;
    this.pendingCount++;
    this.clearIdle();
    const run = this.chain.then(() => this.sendNow(message, timeoutMs, options, generation));
    this.chain = run.catch(() => undefined);
    return run.finally(() => {
      this.pendingCount--;
      this.armIdle();
    });
  }

  /** Closes the connection; sends queued or in flight fail with MllpConnectionError. Later sends reconnect. */
  close(): void {
    this.generation++;
    this.clearIdle();
    this.socket?.destroy();
    this.socket = undefined;
  }

  private async sendNow(message: Uint8Array, timeoutMs: number, options: SendOptions, generation: number): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    for (let attempt = 0; ; attempt++) {
      if (generation !== this.generation) {
        throw new MllpConnectionError('MLLP client closed');
      }
      const reused = this.connected;
      const socket = reused ? (this.socket as net.Socket) : await this.connect(deadline);
      try {
        return await this.exchange(socket, message, deadline, timeoutMs, options);
      } catch (err) {
        const retry = err instanceof StaleConnection && attempt === 0 && reused && Date.now() < deadline;
        if (!retry) {
          throw err instanceof StaleConnection ? err.error : err;
        }
      }
    }
  }

  private connect(deadline: number): Promise<net.Socket> {
    const target = `${this.host}:${this.port}`;
    const wait = Math.max(1, Math.min(this.options.connectTimeoutMs ?? 10_000, deadline - Date.now()));
    return new Promise((resolve, reject) => {
      const t = this.options.tls;
      const socket: net.Socket = t
        ? tls.connect({ host: this.host, port: this.port, servername: net.isIP(this.host) ? undefined : this.host, ...(t === true ? {} : t) })
        : net.connect({ host: this.host, port: this.port });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new MllpTimeoutError('connect', wait, target));
      }, wait);
      const onError = (err: NodeJS.ErrnoException): void => {
        clearTimeout(timer);
        socket.destroy();
        reject(new MllpConnectionError(`MLLP connection to ${target} failed: ${err.message}`, err.code, err));
      };
      socket.once('error', onError);
      socket.once(t ? 'secureConnect' : 'connect', () => {
        clearTimeout(timer);
        socket.off('error', onError);
        this.attach(socket);
        resolve(socket);
      });
    });
  }

  private attach(socket: net.Socket): void {
    this.connectionsOpened++;
    this.socket = socket;
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 60_000);
    const framer = new MllpFramer({
      maxFrameBytes: this.options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES,
      onFrame: (frame) => this.onFrame(socket, frame),
      onError: (error) => this.onFramingError(socket, error),
    });
    this.framer = framer;
    socket.on('data', (chunk: Buffer) => {
      if (this.waiter?.socket === socket) {
        this.waiter.gotBytes = true;
      }
      framer.push(chunk);
    });
    socket.on('error', (err: NodeJS.ErrnoException) => this.fail(socket, err.code, err));
    socket.on('close', () => this.fail(socket, undefined, undefined));
  }

  private exchange(socket: net.Socket, message: Uint8Array, deadline: number, timeoutMs: number, options: SendOptions): Promise<Buffer> {
    return new Promise<Buffer>((resolve, reject) => {
      const timer = setTimeout(
        () => {
          this.waiter = undefined;
          // The connection's state is unknown now: never reuse it.
          this.dropSocket(socket);
          reject(new MllpTimeoutError('reply', timeoutMs, `${this.host}:${this.port}`));
        },
        Math.max(1, deadline - Date.now()),
      );
      this.waiter = {
        resolve: (frame) => {
          clearTimeout(timer);
          this.waiter = undefined;
          if (this.options.keepAlive === false) {
            this.dropSocket(socket);
          }
          resolve(frame);
        },
        reject: (err) => {
          clearTimeout(timer);
          this.waiter = undefined;
          reject(err);
        },
        socket,
        awaitApplicationAck: options.awaitApplicationAck ?? false,
        gotBytes: false,
      };
      socket.write(frameMessage(message));
    });
  }

  private onFrame(socket: net.Socket, frame: Buffer): void {
    const waiter = this.waiter;
    if (!waiter || waiter.socket !== socket) {
      this.unsolicitedFrames++;
      return;
    }
    if (waiter.awaitApplicationAck && ackCodeOf(frame.toString('latin1')) === 'CA') {
      return;
    }
    waiter.resolve(frame);
  }

  private onFramingError(socket: net.Socket, error: FramingError): void {
    if (error.kind === 'incomplete') {
      return; // the close that caused it is reported by fail()
    }
    const waiter = this.waiter?.socket === socket ? this.waiter : undefined;
    this.dropSocket(socket);
    waiter?.reject(new MllpConnectionError(`MLLP framing error in reply from ${this.host}:${this.port}: ${error.kind}`, undefined));
  }

  private fail(socket: net.Socket, code: string | undefined, cause: unknown): void {
    if (this.socket === socket) {
      this.socket = undefined;
      this.framer?.end();
      this.framer = undefined;
    }
    const waiter = this.waiter;
    if (!waiter || waiter.socket !== socket) {
      return;
    }
    const err = new MllpConnectionError(`MLLP connection to ${this.host}:${this.port} closed before the reply`, code, cause);
    waiter.reject(waiter.gotBytes ? err : new StaleConnection(err));
  }

  private dropSocket(socket: net.Socket): void {
    if (this.socket === socket) {
      this.socket = undefined;
      this.framer = undefined;
    }
    socket.destroy();
  }

  private armIdle(): void {
    const idle = this.options.idleTimeoutMs ?? 60_000;
    if (this.pendingCount > 0 || idle <= 0 || !this.connected) {
      return;
    }
    this.clearIdle();
    this.idleTimer = setTimeout(() => {
      if (this.pendingCount === 0 && this.socket) {
        this.dropSocket(this.socket);
      }
    }, idle);
    this.idleTimer.unref();
  }

  private clearIdle(): void {
    if (this.idleTimer) {
      clearTimeout(this.idleTimer);
      this.idleTimer = undefined;
    }
  }
}

/** Internal marker: the connection closed before any reply byte; the real error is inside. */
class StaleConnection extends Error {
  readonly error: MllpConnectionError;
  constructor(error: MllpConnectionError) {
    super(error.message);
    this.error = error;
  }
}

export interface MllpClientPoolOptions {
  /** Reuse connections between messages. Default true. */
  keepAlive?: boolean;
  /** Close connections idle this long (ms). Default 60 s. */
  maxIdleMs?: number;
  /** Connections per host:port; further messages queue on the least busy one. Default 1. */
  maxConnectionsPerKey?: number;
  connectTimeoutMs?: number;
  tls?: boolean | tls.ConnectionOptions;
  maxFrameBytes?: number;
}

/** Clients keyed by host:port. */
export class MllpClientPool {
  private readonly options: MllpClientPoolOptions;
  private readonly clients = new Map<string, MllpClient[]>();

  constructor(options: MllpClientPoolOptions = {}) {
    this.options = options;
  }

  send(host: string, port: number, message: Uint8Array, timeoutMs = 30_000, options?: SendOptions): Promise<Buffer> {
    return this.acquire(host, port).send(message, timeoutMs, options);
  }

  /** Sends to 'mllp://host:port' (the form of Device.url in Medplum). */
  sendToUrl(url: string, message: Uint8Array, timeoutMs = 30_000, options?: SendOptions): Promise<Buffer> {
    const { host, port } = parseMllpUrl(url);
    return this.send(host, port, message, timeoutMs, options);
  }

  /** Open connections across all keys. */
  get openConnections(): number {
    let n = 0;
    for (const list of this.clients.values()) {
      n += list.filter((c) => c.connected).length;
    }
    return n;
  }

  /** The clients for a key (for inspection and tests). */
  clientsFor(host: string, port: number): readonly MllpClient[] {
    return this.clients.get(`${host}:${port}`) ?? [];
  }

  close(): void {
    for (const list of this.clients.values()) {
      for (const c of list) {
        c.close();
      }
    }
    this.clients.clear();
  }

  private acquire(host: string, port: number): MllpClient {
    const key = `${host}:${port}`;
    let list = this.clients.get(key);
    if (!list) {
      list = [];
      this.clients.set(key, list);
    }
    const idle = list.find((c) => c.pending === 0);
    if (idle) {
      return idle;
    }
    if (list.length < (this.options.maxConnectionsPerKey ?? 1)) {
      const client = new MllpClient({
        host,
        port,
        tls: this.options.tls,
        connectTimeoutMs: this.options.connectTimeoutMs,
        keepAlive: this.options.keepAlive ?? true,
        idleTimeoutMs: this.options.maxIdleMs ?? 60_000,
        maxFrameBytes: this.options.maxFrameBytes,
      });
      list.push(client);
      return client;
    }
    return list.reduce((a, b) => (b.pending < a.pending ? b : a));
  }
}

/** Parses 'mllp://host:port' (port default 2575). */
export function parseMllpUrl(url: string): { host: string; port: number } {
  const u = new URL(url);
  if (u.protocol !== 'mllp:') {
    throw new MllpError(`Not an mllp:// URL: ${url}`);
  }
  const host = u.hostname.startsWith('[') ? u.hostname.slice(1, -1) : u.hostname;
  return { host, port: u.port ? Number(u.port) : 2575 };
}
