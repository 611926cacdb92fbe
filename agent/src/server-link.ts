import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { MedplumClient } from '@medplum/core';
import type { Logger } from './log.ts';

/** A message of Medplum's agent protocol (JSON over the websocket; `type` says which). */
export interface ProtocolMessage {
  type: string;
  accessToken?: string;
  agentId?: string;
  callback?: string;
  channel?: string;
  remote?: string;
  contentType?: string;
  body?: string;
  statusCode?: number;
  version?: string;
  returnAck?: string;
  stats?: unknown;
}

/** The server did not answer in time, or the link went down while it was asked. */
export class ServerUnavailableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ServerUnavailableError';
  }
}

export interface ServerLinkOptions {
  baseUrl: string;
  agentId: string;
  version: string;
  heartbeatMs?: number;
  /** First reconnect delay; doubles up to 30 s. */
  reconnectMs?: number;
  stats?: () => unknown;
  /** Signs in (client credentials) when there is no valid token. */
  signIn: () => Promise<void>;
}

/**
 * The agent's websocket to the server (`/ws/agent`, Medplum's agent protocol): connects with the
 * client login's access token, sends heartbeats (with the agent's counters), reconnects with
 * backoff, and carries transmit requests and their responses (matched by callback). Requests the
 * server sends (push, reload-config) are emitted as 'request'.
 */
export class ServerLink extends EventEmitter {
  private readonly medplum: MedplumClient;
  private readonly options: Required<Omit<ServerLinkOptions, 'stats'>> & Pick<ServerLinkOptions, 'stats'>;
  private readonly log: Logger;
  private socket: WebSocket | undefined;
  private ready = false;
  private stopped = false;
  private attempt = 0;
  private heartbeat: NodeJS.Timeout | undefined;
  private lastHeard = 0;
  private readonly waiting = new Map<string, { resolve: (m: ProtocolMessage) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();

  constructor(medplum: MedplumClient, options: ServerLinkOptions, log: Logger) {
    super();
    this.medplum = medplum;
    // Not `{ defaults, ...options }`: an option present but undefined would replace its default
    // (a heartbeat every millisecond when AGENT_HEARTBEAT_MS is unset).
    this.options = { ...options, heartbeatMs: options.heartbeatMs ?? 10_000, reconnectMs: options.reconnectMs ?? 500 };
    this.log = log;
  }

  /** Whether the link is up (connected and accepted by the server). */
  get connected(): boolean {
    return this.ready;
  }

  start(): void {
    this.stopped = false;
    void this.open();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.heartbeat);
    this.socket?.close();
    this.failAll('agent stopping');
  }

  /** Sends an inbound message to the server and resolves with the server's transmit response. */
  async transmit(request: { channel: string; remote: string; contentType: string; body: string }, timeoutMs: number): Promise<ProtocolMessage> {
    if (!this.ready) {
      throw new ServerUnavailableError('Not connected to the server');
    }
    try {
      await this.options.signIn();
    } catch (err) {
      throw new ServerUnavailableError(`Sign-in failed: ${(err as Error).message}`);
    }
    const callback = `Agent/${this.options.agentId}-${randomUUID()}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(callback);
        reject(new ServerUnavailableError(`No answer from the server within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiting.set(callback, { resolve, reject, timer });
      this.send({ type: 'agent:transmit:request', accessToken: this.medplum.getAccessToken(), callback, ...request });
    });
  }

  /** The server refused the token: the next transmit signs in afresh. */
  signInAgain(): void {
    this.medplum.clearActiveLogin();
  }

  /** Answers a request the server sent (same callback). */
  respond(message: ProtocolMessage): void {
    this.send(message);
  }

  private send(message: ProtocolMessage): void {
    if (this.socket?.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(message));
    }
  }

  private async open(): Promise<void> {
    if (this.stopped) {
      return;
    }
    try {
      await this.options.signIn();
    } catch (err) {
      this.log.warn('sign-in failed', { error: (err as Error).message });
      this.retry();
      return;
    }
    const url = new URL('ws/agent', this.options.baseUrl);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    const socket = new WebSocket(url);
    this.socket = socket;
    socket.addEventListener('open', () => {
      this.lastHeard = Date.now();
      socket.send(JSON.stringify({ type: 'agent:connect:request', accessToken: this.medplum.getAccessToken(), agentId: this.options.agentId }));
    });
    socket.addEventListener('message', (event) => {
      this.lastHeard = Date.now();
      let message: ProtocolMessage;
      try {
        message = JSON.parse(String(event.data)) as ProtocolMessage;
      } catch {
        return;
      }
      this.onMessage(message);
    });
    socket.addEventListener('close', () => {
      if (this.socket !== socket) {
        return;
      }
      const was = this.ready;
      this.ready = false;
      this.socket = undefined;
      clearInterval(this.heartbeat);
      this.failAll('connection to the server closed');
      if (was) {
        this.log.warn('disconnected from the server');
        this.emit('down');
      }
      this.retry();
    });
    socket.addEventListener('error', () => undefined); // 'close' follows
  }

  private retry(): void {
    if (this.stopped) {
      return;
    }
    const delay = Math.min(this.options.reconnectMs * 2 ** this.attempt, 30_000);
    this.attempt++;
    setTimeout(() => void this.open(), delay);
  }

  private onMessage(message: ProtocolMessage): void {
    switch (message.type) {
      case 'agent:connect:response':
      case 'connected':
        this.ready = true;
        this.attempt = 0;
        this.log.info('connected to the server');
        clearInterval(this.heartbeat);
        this.heartbeat = setInterval(() => this.beat(), this.options.heartbeatMs);
        this.beat();
        this.emit('up');
        return;
      case 'agent:heartbeat:request':
        this.send({ type: 'agent:heartbeat:response', version: this.options.version, stats: this.options.stats?.() });
        return;
      case 'agent:heartbeat:response':
        return;
      case 'agent:transmit:response':
      case 'agent:error': {
        const waiter = message.callback ? this.waiting.get(message.callback) : undefined;
        if (waiter) {
          clearTimeout(waiter.timer);
          this.waiting.delete(message.callback as string);
          waiter.resolve(message);
        } else if (message.type === 'agent:error') {
          this.log.warn('server error', { error: message.body });
          if (!this.ready) {
            this.socket?.close(); // the connect was refused: try again later
          }
        }
        return;
      }
      default:
        this.emit('request', message);
    }
  }

  /** A heartbeat with the counters; a server silent for three beats means the link is dead. */
  private beat(): void {
    if (Date.now() - this.lastHeard > 3 * this.options.heartbeatMs) {
      this.log.warn('server silent, reconnecting');
      this.socket?.close();
      return;
    }
    this.send({ type: 'agent:heartbeat:request', version: this.options.version, stats: this.options.stats?.() });
  }

  private failAll(reason: string): void {
    for (const [callback, waiter] of this.waiting) {
      clearTimeout(waiter.timer);
      waiter.reject(new ServerUnavailableError(reason));
      this.waiting.delete(callback);
    }
  }
}
