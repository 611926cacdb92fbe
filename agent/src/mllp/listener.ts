/**
 * Inbound MLLP listener (plain TCP or TLS).
 *
 * Guarantees:
 * - Replies on a connection go out in the order its messages arrived, whatever order the handlers
 *   finish in (pipelined senders). A handler may send early replies (a commit ACK) through `reply`
 *   before its final one; they keep their place in the order. `reply` called after the handler
 *   has finished writes at once (a late application ACK in enhanced mode).
 * - A frame is handed to onMessage only when complete; a connection that closes mid-frame drops
 *   the partial frame (reported as 'incomplete', nothing processed).
 * - A peer that half-closes (FIN) after sending still gets its pending replies, then the
 *   connection is ended (plain TCP; over TLS a FIN closes the connection).
 * - Memory per connection is bounded: frames by maxFrameBytes, pending messages by
 *   maxPendingPerConnection (reading pauses while the handlers catch up).
 */
import net from 'node:net';
import tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import { MllpFramer, DEFAULT_MAX_FRAME_BYTES } from './framer.ts';
import type { FramingError, FramingErrorKind } from './framer.ts';
import { formatRemote, frameMessage } from './frame.ts';

export interface MllpTlsOptions {
  key: string | Buffer;
  cert: string | Buffer;
  /** CA(s) for verifying client certificates. */
  ca?: string | Buffer | Array<string | Buffer>;
  /** Ask clients for a certificate (mutual TLS). */
  requestCert?: boolean;
  /** With requestCert: refuse clients without a valid certificate. Default true. */
  rejectUnauthorized?: boolean;
  /** Drop connections that have not completed the TLS handshake by then. Default 10 s. */
  handshakeTimeoutMs?: number;
}

export interface ConnectionInfo {
  readonly id: number;
  /** 'ip:port' of the peer. */
  readonly remote: string;
  readonly remoteAddress: string;
  readonly remotePort: number;
  readonly localPort: number;
  readonly tls: boolean;
  /** TLS: whether the client certificate was verified; undefined for plain TCP. */
  readonly authorized: boolean | undefined;
  /** TLS: subject CN of the client certificate, when one was presented. */
  readonly peerCommonName: string | undefined;
  readonly openedAt: Date;
}

/**
 * Sends one reply (unframed bytes; the listener frames it). Before the handler has finished, the
 * reply is queued in this message's place in the connection's order; after, it is written at once.
 * Returns false when the connection is gone.
 */
export type ReplyFn = (message: Uint8Array) => boolean;

/**
 * Handles one complete frame. Replies are sent through `reply` and/or returned (the returned bytes
 * are sent last). The message's place in the reply order is held until the promise settles: to let
 * later messages be answered while waiting for something slow (e.g. an application ACK after a
 * commit ACK), settle the promise and call `reply` later.
 */
export type MessageHandler = (frame: Buffer, conn: ConnectionInfo, reply: ReplyFn) => Promise<Uint8Array | undefined | void>;

/**
 * Called for each framing error. For 'missing-end-block' and 'too-large' the returned bytes (e.g. a
 * NAK built from error.head) are sent, in order, as the reply for the broken frame. For
 * 'incomplete' (connection closing mid-frame) the return value is ignored.
 */
export type FramingErrorHandler = (
  error: FramingError,
  conn: ConnectionInfo,
  reply: ReplyFn,
) => Uint8Array | undefined | void | Promise<Uint8Array | undefined | void>;

/** onMessage threw: the returned bytes, if any, are sent as that message's reply. */
export type HandlerErrorHandler = (err: unknown, frame: Buffer, conn: ConnectionInfo) => Uint8Array | undefined;

export interface MllpListenerOptions {
  /** Default '0.0.0.0'. */
  host?: string;
  /** 0 for an ephemeral port. */
  port: number;
  tls?: MllpTlsOptions;
  maxFrameBytes?: number;
  /** Close a connection without traffic for this long (ms). Default 5 min; 0 disables. */
  idleTimeoutMs?: number;
  /** Further connections are closed at once. Default 100. */
  maxConnections?: number;
  /** TCP keep-alive probe delay (ms) to detect half-open peers. Default 60 s. */
  keepAliveDelayMs?: number;
  /** Messages awaiting their reply before reading from the socket pauses. Default 64. */
  maxPendingPerConnection?: number;
  onMessage: MessageHandler;
  onFramingError?: FramingErrorHandler;
  onHandlerError?: HandlerErrorHandler;
  onConnection?: (conn: ConnectionInfo) => void;
  onDisconnect?: (conn: ConnectionInfo, reason: DisconnectReason) => void;
}

export type DisconnectReason = 'closed' | 'idle-timeout' | 'error' | 'listener-closed';

export interface MllpListenerStats {
  connectionsOpen: number;
  connectionsTotal: number;
  connectionsRejected: number;
  messages: number;
  repliesSent: number;
  bytesIn: number;
  bytesOut: number;
  framingErrors: Record<FramingErrorKind, number>;
  strayBytes: number;
  emptyFrames: number;
  handlerErrors: number;
  idleTimeouts: number;
  socketErrors: number;
  tlsErrors: number;
}

interface Slot {
  early: Uint8Array[];
  done: boolean;
  final: Uint8Array | undefined;
  /** Replies sent after the handler settled but before the slot's turn: they follow `final`. */
  late: Uint8Array[];
  flushed: boolean;
}

export class MllpListener {
  private readonly options: MllpListenerOptions;
  private readonly server: net.Server;
  private readonly connections = new Set<Connection>();
  /** Every TCP socket, TLS handshakes included, so close() can end them all. */
  private readonly rawSockets = new Set<net.Socket>();
  private nextId = 1;
  private closing = false;
  private closedStray = 0;
  private closedEmpty = 0;
  private readonly tally: Omit<MllpListenerStats, 'connectionsOpen' | 'strayBytes' | 'emptyFrames'> = {
    connectionsTotal: 0,
    connectionsRejected: 0,
    messages: 0,
    repliesSent: 0,
    bytesIn: 0,
    bytesOut: 0,
    framingErrors: { 'missing-end-block': 0, 'too-large': 0, incomplete: 0 },
    handlerErrors: 0,
    idleTimeouts: 0,
    socketErrors: 0,
    tlsErrors: 0,
  };

  constructor(options: MllpListenerOptions) {
    this.options = options;
    if (options.tls) {
      const t = options.tls;
      const server = tls.createServer(
        {
          key: t.key,
          cert: t.cert,
          ca: t.ca,
          requestCert: t.requestCert ?? false,
          rejectUnauthorized: t.rejectUnauthorized ?? true,
          // Half-open TLS sockets whose handshake failed would otherwise linger; TLS peers that
          // half-close lose replies not yet written (rare: TLS has its own close_notify).
          allowHalfOpen: false,
          handshakeTimeout: t.handshakeTimeoutMs ?? 10_000,
        },
        (socket) => this.accept(socket, true),
      );
      server.on('tlsClientError', () => {
        this.tally.tlsErrors++;
      });
      this.server = server;
    } else {
      this.server = net.createServer({ allowHalfOpen: true }, (socket) => this.accept(socket, false));
    }
    this.server.on('connection', (raw: net.Socket) => {
      this.rawSockets.add(raw);
      raw.once('close', () => this.rawSockets.delete(raw));
    });
  }

  /** Starts listening; resolves with the bound address (its port is the ephemeral one with port 0). */
  listen(): Promise<AddressInfo> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      this.server.once('error', onError);
      this.server.listen(this.options.port, this.options.host ?? '0.0.0.0', () => {
        this.server.off('error', onError);
        resolve(this.server.address() as AddressInfo);
      });
    });
  }

  get port(): number {
    return (this.server.address() as AddressInfo | null)?.port ?? 0;
  }

  /** stats() flattened, for logs and status reports. */
  get counters(): Record<string, number> {
    const { framingErrors, ...rest } = this.stats();
    const flat: Record<string, number> = { ...rest, framingErrors: 0 };
    for (const [kind, n] of Object.entries(framingErrors)) {
      flat[`framingErrors.${kind}`] = n;
      flat.framingErrors += n;
    }
    return flat;
  }

  stats(): MllpListenerStats {
    let stray = this.closedStray;
    let empty = this.closedEmpty;
    for (const c of this.connections) {
      stray += c.framer.counters.strayBytes;
      empty += c.framer.counters.emptyFrames;
    }
    return {
      ...this.tally,
      framingErrors: { ...this.tally.framingErrors },
      connectionsOpen: this.connections.size,
      strayBytes: stray,
      emptyFrames: empty,
    };
  }

  /**
   * Graceful close: stop accepting, stop reading, let pending replies go out, then end each
   * connection. Connections still open after timeoutMs are destroyed.
   */
  async close(timeoutMs = 10_000): Promise<void> {
    this.closing = true;
    const serverClosed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const c of this.connections) {
      c.beginClose();
    }
    const timer = setTimeout(() => {
      for (const c of this.connections) {
        c.destroy('listener-closed');
      }
      for (const raw of this.rawSockets) {
        raw.destroy();
      }
    }, timeoutMs);
    try {
      await serverClosed;
    } finally {
      clearTimeout(timer);
    }
  }

  private accept(socket: net.Socket, isTls: boolean): void {
    const max = this.options.maxConnections ?? 100;
    if (this.closing || this.connections.size >= max) {
      this.tally.connectionsRejected++;
      socket.destroy();
      return;
    }
    this.tally.connectionsTotal++;
    const conn = new Connection(this, socket, isTls, this.nextId++);
    this.connections.add(conn);
    this.options.onConnection?.(conn.info);
  }

  // --- used by Connection -------------------------------------------------------------------

  /** @internal */
  get opts(): MllpListenerOptions {
    return this.options;
  }

  /** @internal */
  get isClosing(): boolean {
    return this.closing;
  }

  /** @internal */
  get stat(): typeof this.tally {
    return this.tally;
  }

  /** @internal */
  removed(conn: Connection, reason: DisconnectReason): void {
    if (this.connections.delete(conn)) {
      this.closedStray += conn.framer.counters.strayBytes;
      this.closedEmpty += conn.framer.counters.emptyFrames;
      this.options.onDisconnect?.(conn.info, reason);
    }
  }
}

class Connection {
  readonly info: ConnectionInfo;
  readonly framer: MllpFramer;
  private readonly listener: MllpListener;
  private readonly socket: net.Socket;
  private readonly queue: Slot[] = [];
  private readonly maxPending: number;
  private readonly idleMs: number;
  private idleTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private peerEnded = false;
  private closingGracefully = false;
  private paused = false;
  private reason: DisconnectReason = 'closed';

  constructor(listener: MllpListener, socket: net.Socket, isTls: boolean, id: number) {
    this.listener = listener;
    this.socket = socket;
    const opts = listener.opts;
    this.maxPending = opts.maxPendingPerConnection ?? 64;
    this.idleMs = opts.idleTimeoutMs ?? 5 * 60_000;
    let authorized: boolean | undefined;
    let peerCommonName: string | undefined;
    if (isTls) {
      const t = socket as tls.TLSSocket;
      authorized = t.authorized;
      const cn = t.getPeerCertificate()?.subject?.CN;
      peerCommonName = Array.isArray(cn) ? cn[0] : cn || undefined;
    }
    this.info = Object.freeze({
      id,
      remote: formatRemote(socket.remoteAddress, socket.remotePort),
      remoteAddress: socket.remoteAddress ?? '',
      remotePort: socket.remotePort ?? 0,
      localPort: socket.localPort ?? 0,
      tls: isTls,
      authorized,
      peerCommonName,
      openedAt: new Date(),
    });
    this.framer = new MllpFramer({
      maxFrameBytes: opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES,
      onFrame: (frame) => this.onFrame(frame),
      onError: (error) => this.onFramingError(error),
    });

    socket.setNoDelay(true);
    socket.setKeepAlive(true, opts.keepAliveDelayMs ?? 60_000);
    socket.on('data', (chunk: Buffer) => {
      this.listener.stat.bytesIn += chunk.length;
      this.touch();
      this.framer.push(chunk);
    });
    socket.on('end', () => {
      // Peer half-closed: a partial frame can no longer complete; answer what is pending, then end.
      this.peerEnded = true;
      this.framer.end();
      this.flush();
    });
    socket.on('error', () => {
      this.listener.stat.socketErrors++;
      this.reason = 'error';
    });
    socket.on('close', () => this.onClose());
    this.touch();
  }

  beginClose(): void {
    this.closingGracefully = true;
    this.socket.pause();
    this.flush();
  }

  destroy(reason: DisconnectReason): void {
    if (!this.closed) {
      this.reason = reason;
      this.socket.destroy();
    }
  }

  private onFrame(frame: Buffer): void {
    if (this.closingGracefully) {
      // Not answered: the sender will resend to the next listener.
      return;
    }
    this.listener.stat.messages++;
    const slot = this.newSlot();
    const { onMessage, onHandlerError } = this.listener.opts;
    const reply = this.replyFn(slot);
    let result: Promise<Uint8Array | undefined | void>;
    try {
      result = Promise.resolve(onMessage(frame, this.info, reply));
    } catch (err) {
      result = Promise.reject(err);
    }
    result.then(
      (final) => this.complete(slot, final ?? undefined),
      (err: unknown) => {
        this.listener.stat.handlerErrors++;
        let final: Uint8Array | undefined;
        try {
          final = onHandlerError?.(err, frame, this.info);
        } catch {
          final = undefined;
        }
        this.complete(slot, final);
      },
    );
  }

  private onFramingError(error: FramingError): void {
    this.listener.stat.framingErrors[error.kind]++;
    const handler = this.listener.opts.onFramingError;
    if (error.kind === 'incomplete') {
      // The peer is gone or has stopped sending: nothing to answer, only to report.
      try {
        Promise.resolve(handler?.(error, this.info, () => false)).catch(() => undefined);
      } catch {
        // reporting must not break the connection's teardown
      }
      return;
    }
    const slot = this.newSlot();
    let result: Promise<Uint8Array | undefined | void>;
    try {
      result = Promise.resolve(handler?.(error, this.info, this.replyFn(slot)));
    } catch (err) {
      result = Promise.reject(err);
    }
    result.then(
      (final) => this.complete(slot, final ?? undefined),
      () => {
        this.listener.stat.handlerErrors++;
        this.complete(slot, undefined);
      },
    );
  }

  private newSlot(): Slot {
    const slot: Slot = { early: [], done: false, final: undefined, late: [], flushed: false };
    this.queue.push(slot);
    if (this.queue.length >= this.maxPending && !this.paused) {
      this.paused = true;
      this.socket.pause();
    }
    return slot;
  }

  private replyFn(slot: Slot): ReplyFn {
    return (message) => {
      if (this.closed || this.socket.writableEnded) {
        return false;
      }
      if (slot.flushed) {
        this.write(message);
        return true;
      }
      (slot.done ? slot.late : slot.early).push(Uint8Array.from(message));
      this.flush();
      return true;
    };
  }

  private complete(slot: Slot, final: Uint8Array | undefined): void {
    slot.final = final;
    slot.done = true;
    this.flush();
  }

  private flush(): void {
    while (this.queue.length > 0) {
      const head = this.queue[0];
      for (const early of head.early) {
        this.write(early);
      }
      head.early = [];
      if (!head.done) {
        break;
      }
      if (head.final !== undefined) {
        this.write(head.final);
      }
      for (const late of head.late) {
        this.write(late);
      }
      head.late = [];
      head.flushed = true;
      this.queue.shift();
    }
    if (this.paused && this.queue.length < this.maxPending && !this.closingGracefully) {
      this.paused = false;
      this.socket.resume();
    }
    if (this.queue.length === 0 && (this.peerEnded || this.closingGracefully) && !this.closed && !this.socket.writableEnded) {
      if (this.closingGracefully) {
        this.reason = 'listener-closed';
      }
      this.socket.end();
    }
  }

  private write(message: Uint8Array): void {
    if (this.closed || this.socket.writableEnded) {
      return;
    }
    const framed = frameMessage(message);
    this.listener.stat.bytesOut += framed.length;
    this.listener.stat.repliesSent++;
    this.socket.write(framed);
    this.touch();
  }

  private touch(): void {
    if (this.idleMs <= 0 || this.closed) {
      return;
    }
    if (this.idleTimer) {
      this.idleTimer.refresh();
      return;
    }
    this.idleTimer = setTimeout(() => this.onIdle(), this.idleMs);
    this.idleTimer.unref();
  }

  private onIdle(): void {
    if (this.closed) {
      return;
    }
    if (this.queue.length > 0) {
      // Waiting on our own handlers is not the peer being idle.
      this.idleTimer?.refresh();
      return;
    }
    this.listener.stat.idleTimeouts++;
    this.destroy('idle-timeout');
  }

  private onClose(): void {
    if (this.closed) {
      return;
    }
    this.closed = true;
    if (this.idleTimer) {
      clearTimeout(this.idleTimer);
    }
    // A frame still open is dropped (reported as 'incomplete'); handlers already running finish,
    // their replies have nowhere to go.
    this.framer.end();
    for (const slot of this.queue) {
      slot.flushed = true;
    }
    this.queue.length = 0;
    this.listener.removed(this, this.reason);
  }
}
