import { createHash, randomUUID } from 'node:crypto';
import { badRequest, getReferenceString, normalizeErrorString, OperationOutcomeError } from '@medplum/core';
import type { WithId } from '@medplum/core';
import type { Agent, Bot } from '@medplum/fhirtypes';
import type { FastifyInstance } from 'fastify';
import type pg from 'pg';
import type { WebSocket } from 'ws';
import type { AuthServices } from '../auth/service.ts';
import type { AuthSession } from '../auth/sessions.ts';
import type { BotExecutor } from '../bots/executor.ts';
import type { BotRunResult } from '../bots/runtime.ts';
import { MessageLog } from './message-log.ts';

/** How often the server looks at its sockets; an agent silent for 3 heartbeats is dropped. */
const HEARTBEAT_MS = 10_000;
const SILENT_LIMIT_MS = 3 * HEARTBEAT_MS;
const HL7_CONTENT_TYPE = 'x-application/hl7-v2+er7';
/** In a bot's error: the failure was the server's (storage), the message should come again. */
const RETRY_MARKER = '[ermis:retry]';

/** A message of Medplum's agent protocol (JSON text frames; `type` says which). */
export interface AgentMessage {
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
  /** For pushes: whether the agent answers with the first ACK (a CA) or waits for the application ACK. */
  returnAck?: string;
  /** ermis's agent reports its counters with each heartbeat (Medplum's server ignores the field). */
  stats?: unknown;
}

interface Connection {
  socket: WebSocket;
  projectId: string;
  agentId: string;
  /** The agent's own login: transmits re-check their token, this one is for the record. */
  session: AuthSession;
  lastSeen: number;
}

type Waiter = (message: AgentMessage) => void;

/**
 * The server side of Medplum's agent websocket (`/ws/agent`): an agent connects with a client
 * login's access token and its Agent id, sends heartbeats and `agent:transmit:request` messages
 * (each with its token, checked again), which run the bot of the named channel as Medplum does:
 * the HL7 text goes to the bot, its answer (the ACK) comes back in `agent:transmit:response`.
 *
 * A bot that fails answers statusCode 400 and the message is kept in the message log as failed
 * (it can be reprocessed); a failure of the server itself (database down) answers 503, and the
 * agent keeps the message in its spool and tries again.
 *
 * The other direction (Agent/$push, $reload-config) reaches the agent wherever its socket is: on
 * this node directly, on another through the agent_relay table and Postgres NOTIFY.
 */
export class AgentGateway {
  readonly nodeId = randomUUID();
  private readonly pool: pg.Pool;
  private readonly auth: AuthServices;
  private readonly bots: BotExecutor;
  private readonly log: MessageLog;
  private readonly connections = new Map<string, Connection>();
  private readonly waiters = new Map<string, Waiter>();
  /** The last bot run of each inbound message on this node, by copyKey: a copy of it waits its turn. */
  private readonly inbound = new Map<string, Promise<unknown>>();
  private listener: pg.PoolClient | undefined;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(pool: pg.Pool, auth: AuthServices, bots: BotExecutor) {
    this.pool = pool;
    this.auth = auth;
    this.bots = bots;
    this.log = new MessageLog(auth);
  }

  get messageLog(): MessageLog {
    return this.log;
  }

  async start(): Promise<void> {
    await this.listen();
    this.timer = setInterval(() => void this.sweep().catch(() => undefined), HEARTBEAT_MS);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    for (const conn of this.connections.values()) {
      conn.socket.close(1001, 'server stopping');
    }
    // The listener may fail (and be released) while UNLISTEN runs: work on the one taken here.
    const listener = this.listener;
    this.listener = undefined;
    if (listener) {
      await listener.query('UNLISTEN *').catch(() => undefined);
      listener.release();
    }
  }

  register(app: FastifyInstance): void {
    app.get('/ws/agent', { websocket: true }, (socket, request) => {
      let conn: Connection | undefined;
      socket.on('message', (data) => {
        let message: AgentMessage;
        try {
          message = JSON.parse(data.toString()) as AgentMessage;
        } catch {
          send(socket, { type: 'agent:error', body: 'Invalid JSON' });
          return;
        }
        void this.onMessage(socket, message, request.ip, conn, (c) => (conn = c)).catch((err: unknown) =>
          send(socket, { type: 'agent:error', body: normalizeErrorString(err), callback: message.callback })
        );
      });
      socket.on('close', () => {
        if (conn && this.connections.get(keyOf(conn.projectId, conn.agentId)) === conn) {
          this.connections.delete(keyOf(conn.projectId, conn.agentId));
          void this.pool
            .query(`UPDATE agent_connection SET status = 'disconnected' WHERE project_id = $1 AND agent_id = $2 AND node_id = $3`, [
              conn.projectId,
              conn.agentId,
              this.nodeId,
            ])
            .catch(() => undefined);
        }
      });
    });
  }

  private async onMessage(
    socket: WebSocket,
    message: AgentMessage,
    address: string,
    conn: Connection | undefined,
    setConn: (c: Connection) => void
  ): Promise<void> {
    switch (message.type) {
      case 'agent:connect:request':
      case 'connect':
        setConn(await this.connect(socket, message, address));
        return;
      case 'agent:heartbeat:request':
      case 'agent:heartbeat:response':
        if (conn) {
          conn.lastSeen = Date.now();
          await this.pool.query(
            `UPDATE agent_connection SET last_heartbeat = now(), version = COALESCE($4, version), stats = COALESCE($5, stats)
              WHERE project_id = $1 AND agent_id = $2 AND node_id = $3`,
            [conn.projectId, conn.agentId, this.nodeId, message.version ?? null, message.stats === undefined ? null : JSON.stringify(message.stats)]
          );
        }
        if (message.type === 'agent:heartbeat:request') {
          send(socket, { type: 'agent:heartbeat:response', version: SERVER_AGENT_PROTOCOL_VERSION });
        }
        return;
      case 'agent:transmit:request':
        if (!conn) {
          throw new Error('Not connected: send agent:connect:request first');
        }
        conn.lastSeen = Date.now();
        send(socket, await this.transmit(conn, message));
        return;
      case 'agent:transmit:response':
      case 'agent:reloadconfig:response':
      case 'agent:error':
        // Only the connected agent may answer, and only what was asked of it.
        if (conn && message.callback?.startsWith(`Agent/${conn.agentId}-`)) {
          await this.answer(conn, message);
        }
        return;
      default:
        send(socket, { type: 'agent:error', body: `Unknown message type: ${message.type}`, callback: message.callback });
    }
  }

  private async connect(socket: WebSocket, message: AgentMessage, address: string): Promise<Connection> {
    if (!message.accessToken || !message.agentId) {
      throw new Error('agent:connect:request needs accessToken and agentId');
    }
    const session = await this.auth.sessions.fromAccessToken(message.accessToken);
    // An agent signs in as a client application (as Medplum's does); a user's token may not stand in
    // for it, or any member who can read the Agent could take its socket and what is pushed to it.
    if (!session.profile.reference?.startsWith('ClientApplication/') && !session.admin && !session.superAdmin) {
      throw new Error('An agent connects with a client application login');
    }
    const agent = await this.auth.directory.repo(session.project.id, session.profile).readResource<Agent>('Agent', message.agentId);
    if (agent.status === 'off') {
      throw new Error('Agent is off');
    }
    const conn: Connection = { socket, projectId: session.project.id, agentId: agent.id, session, lastSeen: Date.now() };
    const previous = this.connections.get(keyOf(conn.projectId, conn.agentId));
    if (previous && previous.socket !== socket) {
      previous.socket.close(4000, 'replaced by a newer connection');
    }
    this.connections.set(keyOf(conn.projectId, conn.agentId), conn);
    await this.pool.query(
      `INSERT INTO agent_connection (project_id, agent_id, node_id, status, remote_address)
       VALUES ($1, $2, $3, 'connected', $4)
       ON CONFLICT (project_id, agent_id) DO UPDATE
         SET node_id = $3, status = 'connected', remote_address = $4, connected_at = now(), last_heartbeat = now()`,
      [conn.projectId, conn.agentId, this.nodeId, address]
    );
    send(socket, { type: 'agent:connect:response' });
    return conn;
  }

  /** Runs the channel's bot on an inbound message; the response carries the bot's answer (the ACK). */
  private async transmit(conn: Connection, message: AgentMessage): Promise<AgentMessage> {
    const reply = (statusCode: number, body: string, contentType = 'text/plain'): AgentMessage => ({
      type: 'agent:transmit:response',
      channel: message.channel,
      remote: message.remote,
      callback: message.callback,
      contentType,
      statusCode,
      body,
    });
    let session: AuthSession;
    let agent: WithId<Agent>;
    let bot: WithId<Bot>;
    try {
      session = await this.auth.sessions.fromAccessToken(message.accessToken ?? '');
      const repo = this.auth.directory.repo(session.project.id, session.profile);
      agent = await repo.readResource<Agent>('Agent', conn.agentId);
      const channel = agent.channel?.find((c) => c.name === message.channel);
      if (!channel?.targetReference?.reference?.startsWith('Bot/')) {
        // A configuration problem, not the message's: the agent keeps it until the channel is back.
        return reply(503, `Agent has no channel ${JSON.stringify(message.channel ?? '')} with a Bot target`);
      }
      bot = await repo.readResource<Bot>('Bot', channel.targetReference.reference.slice('Bot/'.length));
    } catch (err) {
      return reply(err instanceof OperationOutcomeError ? 401 : 503, normalizeErrorString(err));
    }
    const contentType = message.contentType ?? HL7_CONTENT_TYPE;
    // Senders put line breaks, spaces or a byte-order mark before MSH; the bot's parser wants MSH first.
    const body = contentType === HL7_CONTENT_TYPE ? (message.body ?? '').replace(/^[\s\uFEFF]+(?=MSH)/, '') : (message.body ?? '');
    let result: BotRunResult;
    if (contentType === HL7_CONTENT_TYPE && !/^MSH/.test(body)) {
      // Never run, but kept (logged as failed) like any message the bot could not take.
      result = { ok: false, error: 'Not an HL7 v2 message (no MSH segment)', logs: '', durationMs: 0 };
    } else {
      try {
        // Copies of one message at once (a sender resending while the first is still with the bot,
        // a spooled copy and a resend after an agent restart) would each pass the bot's duplicate
        // check before either is logged: one after another, the later ones are duplicates.
        result = await this.oneAtATime(`${session.project.id}/${bot.id}/${copyKey(body)}`, () =>
          this.bots.execute({
            bot,
            projectId: session.project.id,
            input: body,
            contentType,
            requester: session.profile,
            callerLogin: session.login,
            headers: { 'x-forwarded-for': message.remote, 'x-ermis-agent': getReferenceString(agent), 'x-ermis-channel': message.channel },
          })
        );
      } catch (err) {
        if (!(err instanceof OperationOutcomeError)) {
          return reply(503, normalizeErrorString(err));
        }
        // The execution could not start (no code deployed, no membership): the message is kept as failed.
        result = { ok: false, error: normalizeErrorString(err), logs: '', durationMs: 0 };
      }
    }
    if (result.ok) {
      return reply(200, result.body ?? '', result.contentType ?? 'text/plain');
    }
    // The bot says the server failed it (storage away): the agent keeps the message and retries.
    if (result.error?.includes(RETRY_MARKER)) {
      return reply(503, result.error);
    }
    try {
      await this.log.recordFailedInbound({ projectId: session.project.id, agent, bot, channel: message.channel, remote: message.remote, contentType, body, error: result.error ?? 'Bot failed' });
    } catch (err) {
      // Not kept anywhere on the server: the agent must keep it.
      return reply(503, `The failed message could not be logged: ${normalizeErrorString(err)}`);
    }
    return reply(400, result.error ?? 'Bot failed');
  }

  /** Runs `run` once every earlier run under `key` has settled. */
  private async oneAtATime<T>(key: string, run: () => Promise<T>): Promise<T> {
    const before = this.inbound.get(key);
    const current = before ? before.then(run, run) : run();
    const settled = current.catch(() => undefined);
    this.inbound.set(key, settled);
    try {
      return await current;
    } finally {
      if (this.inbound.get(key) === settled) {
        this.inbound.delete(key);
      }
    }
  }

  /**
   * Sends a message to a connected agent and, when `waitMs` is given, waits for the message that
   * answers it (same callback). Throws when the agent is not connected anywhere.
   */
  async request(projectId: string, agentId: string, message: AgentMessage, waitMs?: number): Promise<AgentMessage | undefined> {
    const callback = message.callback ?? `Agent/${agentId}-${randomUUID()}`;
    const outgoing = { ...message, callback };
    const local = this.connections.get(keyOf(projectId, agentId));
    const answered = waitMs === undefined ? undefined : this.waitFor(callback, waitMs);
    if (local) {
      send(local.socket, outgoing);
    } else {
      const { rows } = await this.pool.query<{ node_id: string }>(
        `SELECT node_id FROM agent_connection WHERE project_id = $1 AND agent_id = $2 AND status = 'connected'
            AND last_heartbeat > now() - make_interval(secs => $3)`,
        [projectId, agentId, SILENT_LIMIT_MS / 1000]
      );
      if (rows.length === 0) {
        this.waiters.delete(callback);
        throw new OperationOutcomeError(badRequest('Agent is not connected'));
      }
      const id = randomUUID();
      await this.pool.query('INSERT INTO agent_relay (id, project_id, agent_id, message) VALUES ($1, $2, $3, $4)', [
        id,
        projectId,
        agentId,
        JSON.stringify(outgoing),
      ]);
      // Addressed to the node holding the socket: the others must not take the row.
      await this.pool.query(`SELECT pg_notify('ermis_agent', $1)`, [`send:${rows[0].node_id}:${id}`]);
    }
    return answered;
  }

  private waitFor(callback: string, waitMs: number): Promise<AgentMessage | undefined> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiters.delete(callback);
        resolve(undefined);
      }, waitMs);
      this.waiters.set(callback, (m) => {
        clearTimeout(timer);
        this.waiters.delete(callback);
        resolve(m);
      });
    });
  }

  /** An agent answered a request: to the waiter on this node, or through the relay table to another. */
  private async answer(conn: Connection, message: AgentMessage): Promise<void> {
    const callback = message.callback as string;
    const waiter = this.waiters.get(callback);
    if (waiter) {
      waiter(message);
      return;
    }
    // NOTIFY payloads are capped at 8000 bytes: the answer goes in a row, the notification names it.
    const id = randomUUID();
    await this.pool.query('INSERT INTO agent_relay (id, project_id, agent_id, message) VALUES ($1, $2, $3, $4)', [id, conn.projectId, conn.agentId, JSON.stringify(message)]);
    await this.pool.query(`SELECT pg_notify('ermis_agent', $1)`, [`answer:${id}:${callback}`]);
  }

  private async listen(): Promise<void> {
    const client = await this.pool.connect();
    this.listener = client;
    client.on('notification', (n) => void this.onNotification(n.payload ?? '').catch(() => undefined));
    client.on('error', () => {
      if (this.listener !== client) {
        return; // already given back by stop()
      }
      client.release(true);
      this.listener = undefined;
      if (!this.stopped) {
        setTimeout(() => void this.listen().catch(() => undefined), 1000);
      }
    });
    await client.query('LISTEN ermis_agent');
  }

  private async onNotification(payload: string): Promise<void> {
    if (payload.startsWith('send:')) {
      const [nodeId, id] = payload.slice('send:'.length).split(':');
      if (nodeId !== this.nodeId) {
        return;
      }
      const { rows } = await this.pool.query<{ project_id: string; agent_id: string; message: AgentMessage }>(
        'DELETE FROM agent_relay WHERE id = $1 RETURNING project_id, agent_id, message',
        [id]
      );
      const row = rows[0];
      const conn = row && this.connections.get(keyOf(row.project_id, row.agent_id));
      if (conn) {
        send(conn.socket, row.message);
      } else if (row) {
        // The agent left this node meanwhile: its waiter learns it from the timeout.
        console.warn(`agent gateway: relayed message for Agent/${row.agent_id} arrived after its socket closed`);
      }
    } else if (payload.startsWith('answer:')) {
      const rest = payload.slice('answer:'.length);
      const id = rest.slice(0, rest.indexOf(':'));
      const callback = rest.slice(rest.indexOf(':') + 1);
      const waiter = this.waiters.get(callback);
      if (!waiter) {
        return; // another node asked
      }
      const { rows } = await this.pool.query<{ message: AgentMessage }>('DELETE FROM agent_relay WHERE id = $1 RETURNING message', [id]);
      if (rows[0]) {
        waiter(rows[0].message);
      }
    }
  }

  /** Drops sockets that stopped sending heartbeats, and old relay rows. */
  private async sweep(): Promise<void> {
    const now = Date.now();
    for (const conn of this.connections.values()) {
      if (now - conn.lastSeen > SILENT_LIMIT_MS) {
        conn.socket.terminate();
      } else {
        send(conn.socket, { type: 'agent:heartbeat:request' });
      }
    }
    await this.pool.query(`DELETE FROM agent_relay WHERE created < now() - interval '1 hour'`);
  }

  /** The connection state of an agent as Agent/$status reports it. */
  async status(projectId: string, agentId: string): Promise<{ status: 'connected' | 'disconnected' | 'unknown'; version?: string; lastUpdated?: string; stats?: unknown }> {
    const { rows } = await this.pool.query<{ status: string; version: string | null; last_heartbeat: Date; stats: unknown }>(
      'SELECT status, version, last_heartbeat, stats FROM agent_connection WHERE project_id = $1 AND agent_id = $2',
      [projectId, agentId]
    );
    const row = rows[0];
    if (!row) {
      return { status: 'unknown' };
    }
    const silent = Date.now() - row.last_heartbeat.getTime() > SILENT_LIMIT_MS;
    return {
      status: row.status === 'connected' && !silent ? 'connected' : 'disconnected',
      version: row.version ?? undefined,
      lastUpdated: row.last_heartbeat.toISOString(),
      stats: row.stats ?? undefined,
    };
  }
}

/** Reported in heartbeat responses (Medplum sends its server version there). */
const SERVER_AGENT_PROTOCOL_VERSION = '0.1.0';

/**
 * What copies of one inbound message share: for HL7 the sender and control ID (MSH-3, MSH-4,
 * MSH-10: a resend may carry a new MSH-7), otherwise the text itself.
 */
function copyKey(body: string): string {
  const msh = /^MSH(.)([^\r\n]*)/.exec(body);
  if (msh) {
    const fields = msh[2].split(msh[1]);
    // fields[0] is MSH-2, so MSH-n is fields[n - 2].
    const controlId = fields[8]?.trim();
    if (controlId) {
      return `hl7:${fields[1] ?? ''}|${fields[2] ?? ''}|${controlId}`;
    }
  }
  return `sha256:${createHash('sha256').update(body).digest('hex')}`;
}

function keyOf(projectId: string, agentId: string): string {
  return `${projectId}/${agentId}`;
}

function send(socket: WebSocket, message: AgentMessage): void {
  if (socket.readyState === socket.OPEN) {
    socket.send(JSON.stringify(message));
  }
}
