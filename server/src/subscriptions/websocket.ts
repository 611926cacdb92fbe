import { badRequest, OperationOutcomeError } from '@medplum/core';
import type { Bundle, ProjectMembership, Resource, Subscription } from '@medplum/fhirtypes';
import type { FastifyInstance } from 'fastify';
import type pg from 'pg';
import type { WebSocket } from 'ws';
import { authenticate } from '../auth/authenticate.ts';
import type { AuthServices } from '../auth/service.ts';
import type { RedisClient } from '../db/redis.ts';
import type { ServerServices } from '../services.ts';

const HEARTBEAT_MS = 10_000;
/** The Redis channel that announces new websocket notifications (when REDIS_URL is set). */
export const WS_CHANNEL = 'ermis:ws:notifications';
/** How long after a socket closes its login may pick up what it missed through a new subscription. */
const TAKEOVER_WINDOW = '2 minutes';
/** How long notifications are kept for replay. */
const RETENTION = '10 minutes';
/** A websocket Subscription whose socket closed this long ago (and was not taken over) is deleted. */
const ABANDONED_AFTER = '5 minutes';

interface EventRow {
  event_number: string;
  project_id: string;
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
  /** Numbers sent lately: events may commit out of number order, so a window is re-read. */
  recent: Set<number>;
}

/** Subscription ids are unique per project only. */
function keyOf(projectId: string, subscriptionId: string): string {
  return `${projectId}/${subscriptionId}`;
}

/** How far back (in event numbers) each pass re-reads, for events that committed late. */
const LATE_WINDOW = 1000;

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
  private subscriber: RedisClient | undefined;
  private heartbeat: NodeJS.Timeout | undefined;
  private sending: Promise<void> = Promise.resolve();

  private readonly fhirBase: string;

  constructor(pool: pg.Pool, auth: AuthServices) {
    this.pool = pool;
    this.auth = auth;
    this.fhirBase = `${auth.config.baseUrl}fhir/R4/`;
  }

  /**
   * With Redis, notifications are announced on a Redis channel (`subscriber` listens, the outbox
   * dispatcher publishes after each commit); without it, on Postgres NOTIFY.
   */
  async start(subscriber?: RedisClient): Promise<void> {
    if (subscriber) {
      subscriber.on('error', () => undefined);
      subscriber
        .connect()
        .then(() => subscriber.subscribe(WS_CHANNEL, () => this.schedule()))
        .catch(() => undefined);
      this.subscriber = subscriber;
    } else {
      await this.listen();
    }
    this.heartbeat = setInterval(() => {
      this.sendHeartbeats();
      // also the fallback when a notification was missed (e.g. while LISTEN reconnected)
      this.schedule();
      void this.pool.query(`DELETE FROM subscription_event WHERE created < now() - interval '${RETENTION}'`).catch(() => undefined);
      void this.expireAbandoned().catch(() => undefined);
    }, HEARTBEAT_MS);
  }

  /**
   * MedplumClient stores a new Subscription on every (re)connect and never deletes the old one:
   * a websocket Subscription whose socket closed and that nobody took over is deleted, so that it
   * stops being matched against every write. Returns how many went.
   */
  async expireAbandoned(): Promise<number> {
    const { rows } = await this.pool.query<{ project_id: string; subscription_id: string }>(
      `DELETE FROM ws_binding WHERE closed_at < now() - interval '${ABANDONED_AFTER}' RETURNING project_id, subscription_id`
    );
    for (const row of rows) {
      await this.auth.directory
        .repo(row.project_id)
        .deleteResource('Subscription', row.subscription_id)
        .catch(() => undefined);
    }
    return rows.length;
  }

  /** LISTEN on a dedicated connection; if the database drops it, listen again (and catch up). */
  private async listen(): Promise<void> {
    const client = await this.pool.connect();
    this.listener = client;
    client.on('notification', () => this.schedule());
    client.on('error', () => {
      if (this.listener !== client) {
        return; // already given back by stop()
      }
      client.release(true);
      this.listener = undefined;
      if (this.heartbeat) {
        setTimeout(() => void this.listen().then(() => this.schedule()).catch(() => undefined), 1000);
      }
    });
    await client.query('LISTEN ermis_ws');
  }

  async stop(): Promise<void> {
    clearInterval(this.heartbeat);
    this.heartbeat = undefined;
    await this.subscriber?.close().catch(() => undefined);
    for (const set of this.bindings.values()) {
      for (const binding of set) {
        binding.socket.close();
      }
    }
    await this.sending;
    // The listener may fail (and be released) while UNLISTEN runs: work on the one taken here.
    const listener = this.listener;
    this.listener = undefined;
    if (listener) {
      await listener.query('UNLISTEN *').catch(() => undefined);
      listener.release();
    }
  }

  register(app: FastifyInstance, services: ServerServices): void {
    app.get<{ Params: { id: string } }>('/fhir/R4/Subscription/:id/$get-ws-binding-token', async (request, reply) => {
      const session = await authenticate(request, reply, this.auth);
      if (!session.login) {
        throw new OperationOutcomeError(badRequest('Websocket subscriptions need a signed-in login'));
      }
      const subscription = await services.repo(session.context).readResource<Subscription>('Subscription', request.params.id);
      if (subscription.channel?.type !== 'websocket') {
        throw new OperationOutcomeError(badRequest('Subscription is not a websocket subscription'));
      }
      // Notifications are matched with the author's access: only the author may receive them.
      if (subscription.meta?.author?.reference !== session.profile.reference) {
        throw new OperationOutcomeError(badRequest('Only the author of a websocket subscription may bind to it'));
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
          void this.unbind(binding);
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
        if (binding.subscriptionId === claims?.subscription_id && binding.loginId === claims?.login_id) {
          mine.delete(binding);
          await this.unbind(binding);
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
    const membership = login.membershipId
      ? (await this.auth.directory.find<ProjectMembership>('ProjectMembership', login.membershipId, login.projectId))?.resource
      : undefined;
    if (!membership || membership.active === false || subscription.meta?.author?.reference !== membership.profile?.reference) {
      throw new Error('Only the author of a websocket subscription may bind to it');
    }
    const binding: Binding = {
      socket,
      subscriptionId: subscription.id,
      projectId: login.projectId,
      loginId: login.id,
      criteria: subscription.criteria ?? '',
      lastSent: 0,
      recent: new Set(),
    };
    socket.send(JSON.stringify(statusBundle(subscription.id, 'handshake')));
    // What this login missed since its previous subscription on the same criteria lost its socket.
    const { rows: previous } = await this.pool.query<{ subscription_id: string; last_event: string }>(
      `UPDATE ws_binding SET taken_over = true
       WHERE project_id = $4 AND login_id = $1 AND criteria = $2 AND closed_at > now() - interval '${TAKEOVER_WINDOW}'
         AND NOT taken_over AND subscription_id <> $3
       RETURNING subscription_id, last_event`,
      [binding.loginId, binding.criteria, binding.subscriptionId, binding.projectId]
    );
    for (const old of previous) {
      // Events dispatched after the new subscription existed reached it too: only older ones are replayed.
      const { rows } = await this.pool.query<EventRow>(
        `SELECT * FROM subscription_event WHERE project_id = $1 AND subscription_id = $2 AND event_number > $3
           AND created < coalesce($4::timestamptz, 'infinity') ORDER BY event_number`,
        [binding.projectId, old.subscription_id, old.last_event, subscription.meta?.lastUpdated ?? null]
      );
      for (const row of rows) {
        socket.send(JSON.stringify(notificationBundle(binding.subscriptionId, row, this.fhirBase)));
      }
    }
    await this.pool.query(
      `INSERT INTO ws_binding (subscription_id, project_id, login_id, criteria) VALUES ($1, $2, $3, $4)
       ON CONFLICT (project_id, subscription_id) DO UPDATE SET closed_at = NULL, taken_over = false`,
      [binding.subscriptionId, binding.projectId, binding.loginId, binding.criteria]
    );
    const { rows: last } = await this.pool.query<{ last_event: string }>(
      'SELECT last_event FROM ws_binding WHERE project_id = $1 AND subscription_id = $2',
      [binding.projectId, binding.subscriptionId]
    );
    binding.lastSent = Number(last[0]?.last_event ?? 0);
    const key = keyOf(binding.projectId, binding.subscriptionId);
    let set = this.bindings.get(key);
    if (!set) {
      set = new Set();
      this.bindings.set(key, set);
    }
    set.add(binding);
    this.schedule();
    return binding;
  }

  /** The socket closed or the client unbound: it may still be taken over for a while, then it expires. */
  private async unbind(binding: Binding): Promise<void> {
    const key = keyOf(binding.projectId, binding.subscriptionId);
    const set = this.bindings.get(key);
    set?.delete(binding);
    if (set?.size === 0) {
      this.bindings.delete(key);
    }
    await this.pool
      .query(
        `UPDATE ws_binding SET last_event = GREATEST(last_event, $3), closed_at = now()
         WHERE project_id = $1 AND subscription_id = $2`,
        [binding.projectId, binding.subscriptionId, binding.lastSent]
      )
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
    // Event numbers are taken before commit, so a lower number can become visible after a higher
    // one: each pass re-reads a window below the last number sent and skips what was sent.
    const since = Math.max(0, Math.min(...all.map((b) => b.lastSent)) - LATE_WINDOW);
    const keys = [...this.bindings.keys()].map((k) => k.split('/'));
    const { rows } = await this.pool.query<EventRow>(
      `SELECT * FROM subscription_event
       WHERE (project_id, subscription_id) IN (SELECT * FROM unnest($1::uuid[], $2::text[])) AND event_number > $3
       ORDER BY event_number`,
      [keys.map((k) => k[0]), keys.map((k) => k[1]), since]
    );
    for (const row of rows) {
      for (const binding of this.bindings.get(keyOf(row.project_id, row.subscription_id)) ?? []) {
        const number = Number(row.event_number);
        if (binding.recent.has(number) || number <= binding.lastSent - LATE_WINDOW || binding.socket.readyState !== binding.socket.OPEN) {
          continue;
        }
        binding.socket.send(JSON.stringify(notificationBundle(binding.subscriptionId, row, this.fhirBase)));
        binding.recent.add(number);
        binding.lastSent = Math.max(binding.lastSent, number);
      }
    }
    for (const binding of all) {
      for (const number of binding.recent) {
        if (number <= binding.lastSent - LATE_WINDOW) {
          binding.recent.delete(number);
        }
      }
    }
  }

  private sendHeartbeats(): void {
    for (const set of this.bindings.values()) {
      for (const binding of set) {
        if (binding.socket.readyState === binding.socket.OPEN) {
          binding.socket.send(JSON.stringify(statusBundle(binding.subscriptionId, 'heartbeat')));
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
