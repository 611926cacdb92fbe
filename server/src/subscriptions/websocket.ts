import websocket from '@fastify/websocket';
import { badRequest, OperationOutcomeError } from '@medplum/core';
import type { Bundle, Resource, Subscription } from '@medplum/fhirtypes';
import type { FastifyInstance } from 'fastify';
import type pg from 'pg';
import type { WebSocket } from 'ws';
import { authenticate } from '../auth/authenticate.ts';
import type { AuthServices } from '../auth/service.ts';
import type { ServerServices } from '../services.ts';

const HEARTBEAT_MS = 10_000;
/** How long after a socket closes its login may pick up what it missed through a new subscription. */
const TAKEOVER_WINDOW = '2 minutes';
/** How long notifications are kept for replay. */
const RETENTION = '10 minutes';

interface EventRow {
  event_number: string;
  subscription_id: string;
  interaction: string;
  focus: string;
  resource: Resource | null;
  created: Date;
}

interface Binding {
  socket: WebSocket;
  subscriptionId: string;
  projectId: string;
  loginId: string;
  criteria: string;
  /** The last event number written to the socket. */
  lastSent: number;
}

/**
 * Websocket subscriptions as `MedplumClient`'s SubscriptionManager speaks them:
 * `Subscription/{id}/$get-ws-binding-token`, then `/ws/subscriptions-r4` with `bind-with-token`,
 * a handshake, `event-notification` bundles, heartbeats and ping/pong. Notifications come from the
 * `subscription_event` table (written by the outbox dispatcher), so any node can serve any socket.
 * A client that reconnects within two minutes gets the notifications it missed, also when it
 * re-creates its Subscription (as MedplumClient does): those of its login's closed subscription
 * with the same criteria are replayed to the new one.
 */
export class WebsocketHub {
  private readonly pool: pg.Pool;
  private readonly auth: AuthServices;
  private readonly bindings = new Map<string, Set<Binding>>();
  private listener: pg.PoolClient | undefined;
  private heartbeat: NodeJS.Timeout | undefined;
  private sending: Promise<void> = Promise.resolve();

  private readonly fhirBase: string;

  constructor(pool: pg.Pool, auth: AuthServices) {
    this.pool = pool;
    this.auth = auth;
    this.fhirBase = `${auth.config.baseUrl}fhir/R4/`;
  }

  async start(): Promise<void> {
    this.listener = await this.pool.connect();
    this.listener.on('notification', () => this.schedule());
    await this.listener.query('LISTEN ermis_ws');
    this.heartbeat = setInterval(() => {
      this.sendHeartbeats();
      void this.pool.query(`DELETE FROM subscription_event WHERE created < now() - interval '${RETENTION}'`).catch(() => undefined);
    }, HEARTBEAT_MS);
  }

  async stop(): Promise<void> {
    clearInterval(this.heartbeat);
    for (const set of this.bindings.values()) {
      for (const binding of set) {
        binding.socket.close();
      }
    }
    await this.sending;
    if (this.listener) {
      await this.listener.query('UNLISTEN *').catch(() => undefined);
      this.listener.release();
      this.listener = undefined;
    }
  }

  async register(app: FastifyInstance, services: ServerServices): Promise<void> {
    await app.register(websocket);
    app.get<{ Params: { id: string } }>('/fhir/R4/Subscription/:id/$get-ws-binding-token', async (request, reply) => {
      const session = await authenticate(request, reply, this.auth);
      if (!session.login) {
        throw new OperationOutcomeError(badRequest('Websocket subscriptions need a signed-in login'));
      }
      const subscription = await services.repo(session.context).readResource<Subscription>('Subscription', request.params.id);
      if (subscription.channel?.type !== 'websocket') {
        throw new OperationOutcomeError(badRequest('Subscription is not a websocket subscription'));
      }
      const lifetime = 3600;
      const token = await this.auth.keys.sign(
        { token_use: 'ws-binding', login_id: session.login.id, subscription_id: subscription.id },
        lifetime
      );
      const wsUrl = new URL('ws/subscriptions-r4', this.auth.config.baseUrl);
      wsUrl.protocol = wsUrl.protocol === 'https:' ? 'wss:' : 'ws:';
      return reply.type('application/fhir+json').send({
        resourceType: 'Parameters',
        parameter: [
          { name: 'token', valueString: token },
          { name: 'expiration', valueDateTime: new Date(Date.now() + lifetime * 1000).toISOString() },
          { name: 'subscription', valueReference: { reference: `Subscription/${subscription.id}` } },
          { name: 'websocket-url', valueUrl: wsUrl.toString() },
        ],
      });
    });
    app.get('/ws/subscriptions-r4', { websocket: true }, (socket) => {
      const mine = new Set<Binding>();
      socket.on('message', (data) => {
        void this.onMessage(socket, mine, data.toString()).catch((err: unknown) =>
          socket.send(JSON.stringify({ type: 'error', payload: { message: (err as Error).message } }))
        );
      });
      socket.on('close', () => {
        for (const binding of mine) {
          void this.unbind(binding, true);
        }
      });
    });
  }

  private async onMessage(socket: WebSocket, mine: Set<Binding>, text: string): Promise<void> {
    const message = JSON.parse(text) as { type?: string; payload?: { token?: string } };
    if (message.type === 'ping') {
      socket.send(JSON.stringify({ type: 'pong' }));
      return;
    }
    if (message.type === 'bind-with-token' && message.payload?.token) {
      const binding = await this.bind(socket, message.payload.token);
      mine.add(binding);
      return;
    }
    if (message.type === 'unbind-from-token' && message.payload?.token) {
      const claims = await this.auth.keys.verify(message.payload.token).catch(() => undefined);
      for (const binding of [...mine]) {
        if (binding.subscriptionId === claims?.subscription_id) {
          mine.delete(binding);
          await this.unbind(binding, false);
        }
      }
    }
  }

  private async bind(socket: WebSocket, token: string): Promise<Binding> {
    const claims = await this.auth.keys.verify(token).catch(() => undefined);
    if (!claims || claims.token_use !== 'ws-binding' || typeof claims.login_id !== 'string' || typeof claims.subscription_id !== 'string') {
      throw new Error('Invalid binding token');
    }
    const login = await this.auth.logins.get(claims.login_id);
    if (!login?.projectId || login.revoked) {
      throw new Error('The login of this token has ended');
    }
    const subscription = (await this.auth.directory.find<Subscription>('Subscription', claims.subscription_id, login.projectId))?.resource;
    if (!subscription || subscription.channel?.type !== 'websocket') {
      throw new Error('Subscription not found');
    }
    const binding: Binding = {
      socket,
      subscriptionId: subscription.id,
      projectId: login.projectId,
      loginId: login.id,
      criteria: subscription.criteria ?? '',
      lastSent: 0,
    };
    socket.send(JSON.stringify(statusBundle(subscription.id, 'handshake')));
    // What this login missed since its previous subscription on the same criteria lost its socket.
    const { rows: previous } = await this.pool.query<{ subscription_id: string; last_event: string }>(
      `UPDATE ws_binding SET taken_over = true
       WHERE login_id = $1 AND criteria = $2 AND closed_at > now() - interval '${TAKEOVER_WINDOW}' AND NOT taken_over AND subscription_id <> $3
       RETURNING subscription_id, last_event`,
      [binding.loginId, binding.criteria, binding.subscriptionId]
    );
    for (const old of previous) {
      const { rows } = await this.pool.query<EventRow>(
        'SELECT * FROM subscription_event WHERE subscription_id = $1 AND event_number > $2 ORDER BY event_number',
        [old.subscription_id, old.last_event]
      );
      for (const row of rows) {
        socket.send(JSON.stringify(notificationBundle(binding.subscriptionId, row, this.fhirBase)));
      }
    }
    await this.pool.query(
      `INSERT INTO ws_binding (subscription_id, project_id, login_id, criteria) VALUES ($1, $2, $3, $4)
       ON CONFLICT (subscription_id) DO UPDATE SET closed_at = NULL, taken_over = false`,
      [binding.subscriptionId, binding.projectId, binding.loginId, binding.criteria]
    );
    const { rows: last } = await this.pool.query<{ last_event: string }>('SELECT last_event FROM ws_binding WHERE subscription_id = $1', [binding.subscriptionId]);
    binding.lastSent = Number(last[0]?.last_event ?? 0);
    let set = this.bindings.get(binding.subscriptionId);
    if (!set) {
      set = new Set();
      this.bindings.set(binding.subscriptionId, set);
    }
    set.add(binding);
    this.schedule();
    return binding;
  }

  private async unbind(binding: Binding, closed: boolean): Promise<void> {
    const set = this.bindings.get(binding.subscriptionId);
    set?.delete(binding);
    if (set?.size === 0) {
      this.bindings.delete(binding.subscriptionId);
    }
    await this.pool
      .query(`UPDATE ws_binding SET last_event = GREATEST(last_event, $2), closed_at = ${closed ? 'now()' : 'closed_at'} WHERE subscription_id = $1`, [
        binding.subscriptionId,
        binding.lastSent,
      ])
      .catch(() => undefined);
  }

  /** Sends new notifications to the sockets bound on this node, one pass at a time. */
  private schedule(): void {
    this.sending = this.sending.then(() => this.sendPending()).catch(() => undefined);
  }

  private async sendPending(): Promise<void> {
    if (this.bindings.size === 0) {
      return;
    }
    const all = [...this.bindings.values()].flatMap((s) => [...s]);
    const since = Math.min(...all.map((b) => b.lastSent));
    const { rows } = await this.pool.query<EventRow>(
      'SELECT * FROM subscription_event WHERE subscription_id = ANY($1::text[]) AND event_number > $2 ORDER BY event_number',
      [[...this.bindings.keys()], since]
    );
    for (const row of rows) {
      for (const binding of this.bindings.get(row.subscription_id) ?? []) {
        const number = Number(row.event_number);
        if (number > binding.lastSent && binding.socket.readyState === binding.socket.OPEN) {
          binding.socket.send(JSON.stringify(notificationBundle(binding.subscriptionId, row, this.fhirBase)));
          binding.lastSent = number;
        }
      }
    }
  }

  private sendHeartbeats(): void {
    for (const [subscriptionId, set] of this.bindings) {
      for (const binding of set) {
        if (binding.socket.readyState === binding.socket.OPEN) {
          binding.socket.send(JSON.stringify(statusBundle(subscriptionId, 'heartbeat')));
        }
      }
    }
  }
}

function statusBundle(subscriptionId: string, type: 'handshake' | 'heartbeat'): Bundle {
  return {
    resourceType: 'Bundle',
    type: 'history',
    timestamp: new Date().toISOString(),
    entry: [{ resource: { resourceType: 'SubscriptionStatus', status: 'active', type, subscription: { reference: `Subscription/${subscriptionId}` } } }],
  };
}

function notificationBundle(subscriptionId: string, row: EventRow, fhirBase: string): Bundle {
  const status = {
    resourceType: 'SubscriptionStatus' as const,
    status: 'active' as const,
    type: 'event-notification' as const,
    subscription: { reference: `Subscription/${subscriptionId}` },
    notificationEvent: [{ eventNumber: row.event_number, timestamp: row.created.toISOString(), focus: { reference: row.focus } }],
  };
  return {
    resourceType: 'Bundle',
    type: 'history',
    timestamp: new Date().toISOString(),
    entry: row.resource
      ? [{ resource: status }, { resource: row.resource, fullUrl: fhirBase + row.focus }]
      : [{ resource: status }, { request: { method: 'DELETE', url: row.focus } }],
  };
}
