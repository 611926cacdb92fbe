import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { MedplumClient, normalizeErrorString } from '@medplum/core';
import type { Agent, Endpoint } from '@medplum/fhirtypes';
import { parseEndpointAddress } from './endpoint.ts';
import type { ChannelSettings } from './endpoint.ts';
import { Forwarder } from './forwarder.ts';
import { forwardableText, Hl7Channel } from './hl7-channel.ts';
import { DEFAULT_FALLBACK_CHARSET } from './hl7/charset.ts';
import type { Logger } from './log.ts';
import { PushHandler } from './push.ts';
import { ServerLink } from './server-link.ts';
import type { ProtocolMessage } from './server-link.ts';
import { Spool } from './spool/spool.ts';

export const AGENT_VERSION = '0.1.0';

export interface AgentOptions {
  baseUrl: string;
  clientId: string;
  clientSecret: string;
  agentId: string;
  /** Spool and cached configuration live here. */
  dataDir: string;
  log: Logger;
  heartbeatMs?: number;
  /** How long the server may take to answer one message before it counts as unreachable. */
  serverTimeoutMs?: number;
}

interface ChannelConfig {
  name: string;
  address: string;
}

/**
 * The ermis agent: reads its Agent resource (channels → Endpoint addresses), listens on each
 * `mllp://` endpoint, spools every message before answering, forwards messages to the server over
 * the agent websocket and sends what the server pushes to Devices. The last configuration read is
 * kept on disk, so that after a restart while the server is down the agent still listens and spools.
 */
export class ErmisAgent {
  private readonly options: AgentOptions;
  private readonly log: Logger;
  private readonly medplum: MedplumClient;
  private readonly link: ServerLink;
  private readonly push: PushHandler;
  private spool: Spool | undefined;
  private readonly channels = new Map<string, { channel: Hl7Channel; address: string }>();
  /** One per channel name, for the agent's whole life: a listener restarted by a reload must not strand what is queued. */
  private readonly forwarders = new Map<string, Forwarder>();
  private readonly startedAt = new Date().toISOString();

  constructor(options: AgentOptions) {
    this.options = options;
    this.log = options.log;
    this.medplum = new MedplumClient({ baseUrl: options.baseUrl, clientId: options.clientId, fetch: globalThis.fetch });
    this.link = new ServerLink(
      this.medplum,
      {
        baseUrl: options.baseUrl,
        agentId: options.agentId,
        version: AGENT_VERSION,
        heartbeatMs: options.heartbeatMs,
        stats: () => this.stats(),
        signIn: () => this.signIn(),
      },
      this.log
    );
    this.push = new PushHandler(this.log);
    this.link.on('request', (message: ProtocolMessage) => void this.onServerRequest(message));
  }

  /** The ports the channels listen on, by channel name (after start). */
  readonly ports = new Map<string, number>();

  async start(): Promise<void> {
    await mkdir(this.options.dataDir, { recursive: true });
    this.spool = await Spool.open(path.join(this.options.dataDir, 'spool'));
    let config: ChannelConfig[];
    try {
      await this.signIn();
      config = await this.readConfig();
      await this.saveConfig(config);
    } catch (err) {
      const cached = await this.cachedConfig();
      if (!cached) {
        throw new Error(`Cannot read the agent's configuration from the server and none is cached: ${normalizeErrorString(err)}`);
      }
      this.log.warn('server unreachable at start; using the cached configuration', { error: normalizeErrorString(err) });
      config = cached;
    }
    const recovered = this.spool.recovered();
    if (recovered.length) {
      this.log.info('resuming spooled messages', { count: recovered.length });
    }
    await this.applyConfig(config);
    // Also those of channels no longer configured: the server decides what becomes of them.
    for (const message of recovered) {
      const settings = this.channels.get(message.channel)?.channel.settings;
      const text = forwardableText(message.bytes, settings?.charset ?? DEFAULT_FALLBACK_CHARSET);
      if (text === undefined) {
        await this.spool.complete(message.seq, 'unreadable');
        continue;
      }
      void this.forwarderFor(message.channel).submit(message, text);
    }
    this.link.start();
  }

  async stop(): Promise<void> {
    await this.link.stop();
    for (const { channel } of this.channels.values()) {
      await channel.stop();
    }
    for (const forwarder of this.forwarders.values()) {
      forwarder.stop();
    }
    this.channels.clear();
    this.push.close();
    await this.spool?.close();
  }

  /** Client credentials; again whenever the token is missing or about to expire. */
  private async signIn(): Promise<void> {
    if (!this.medplum.isAuthenticated(60_000)) {
      await this.medplum.startClientLogin(this.options.clientId, this.options.clientSecret);
    }
  }

  /** Counters for Agent/$status (sent with each heartbeat). */
  stats(): Record<string, unknown> {
    const channels: Record<string, unknown> = {};
    for (const [name, forwarder] of this.forwarders) {
      const channel = this.channels.get(name)?.channel;
      const listener = channel?.listenerStats();
      channels[name] = {
        ...channel?.counters,
        acks: { ...channel?.counters.acks },
        queued: forwarder.depth,
        forwarded: forwarder.counters.forwarded,
        failed: forwarder.counters.failed,
        retries: forwarder.counters.retries,
        connectionsOpen: listener?.connectionsOpen ?? 0,
        connectionsTotal: listener?.connectionsTotal ?? 0,
        listening: channel !== undefined,
      };
    }
    return { startedAt: this.startedAt, spoolDepth: this.spool?.depth ?? 0, serverConnected: this.link.connected, pushes: { ...this.push.counters }, channels };
  }

  private async readConfig(): Promise<ChannelConfig[]> {
    const agent = await this.medplum.readResource('Agent', this.options.agentId, { cache: 'no-cache' });
    const config: ChannelConfig[] = [];
    for (const channel of (agent as Agent).channel ?? []) {
      const ref = channel.endpoint?.reference;
      if (!ref?.startsWith('Endpoint/')) {
        continue;
      }
      const endpoint = (await this.medplum.readReference<Endpoint>({ reference: ref }, { cache: 'no-cache' })) as Endpoint;
      if (endpoint.status && endpoint.status !== 'active') {
        continue;
      }
      if (/^mllps?:/.test(endpoint.address ?? '')) {
        config.push({ name: channel.name, address: endpoint.address as string });
      } else {
        this.log.warn('channel skipped: only mllp:// endpoints are supported', { channel: channel.name });
      }
    }
    return config;
  }

  /** Starts new channels, restarts changed ones, stops removed ones. */
  private async applyConfig(config: ChannelConfig[]): Promise<void> {
    const spool = this.spool as Spool;
    for (const [name, running] of this.channels) {
      const next = config.find((c) => c.name === name);
      if (!next || next.address !== running.address) {
        // Only the listener goes; the channel's forwarder keeps what it has queued.
        await running.channel.stop();
        this.channels.delete(name);
        this.ports.delete(name);
      }
    }
    for (const { name, address } of config) {
      if (this.channels.has(name)) {
        continue;
      }
      let settings: ChannelSettings;
      try {
        settings = parseEndpointAddress(address);
      } catch (err) {
        this.log.error('channel not started: bad endpoint address', { channel: name, error: (err as Error).message });
        continue;
      }
      const forwarder = this.forwarderFor(name);
      forwarder.setConcurrency(settings.concurrency);
      const channel = new Hl7Channel(name, settings, { spool, forwarder, link: this.link, log: this.log });
      try {
        const port = await channel.start();
        this.channels.set(name, { channel, address });
        this.ports.set(name, port);
        this.log.info('channel listening', { channel: name, port, enhanced: settings.enhanced, offline: settings.offline });
      } catch (err) {
        // One channel that cannot listen (port taken, TLS files missing) must not stop the others.
        this.log.error('channel not started', { channel: name, error: (err as Error).message });
      }
    }
  }

  private forwarderFor(name: string): Forwarder {
    let forwarder = this.forwarders.get(name);
    if (!forwarder) {
      forwarder = new Forwarder(this.link, this.spool as Spool, { concurrency: 8, timeoutMs: this.options.serverTimeoutMs ?? 60_000 }, this.log);
      this.forwarders.set(name, forwarder);
    }
    return forwarder;
  }

  private async onServerRequest(message: ProtocolMessage): Promise<void> {
    if (message.type === 'agent:transmit:request') {
      this.link.respond(await this.push.send(message));
    } else if (message.type === 'agent:reloadconfig:request') {
      try {
        const config = await this.readConfig();
        await this.saveConfig(config);
        await this.applyConfig(config);
        this.link.respond({ type: 'agent:reloadconfig:response', callback: message.callback, statusCode: 200 });
      } catch (err) {
        this.link.respond({ type: 'agent:error', callback: message.callback, statusCode: 500, body: normalizeErrorString(err) });
      }
    } else {
      this.link.respond({ type: 'agent:error', callback: message.callback, body: `Unsupported request: ${message.type}` });
    }
  }

  private configPath(): string {
    return path.join(this.options.dataDir, 'config.json');
  }

  private async saveConfig(config: ChannelConfig[]): Promise<void> {
    const tmp = `${this.configPath()}.tmp`;
    await writeFile(tmp, JSON.stringify({ agentId: this.options.agentId, channels: config }, null, 2));
    await rename(tmp, this.configPath());
  }

  private async cachedConfig(): Promise<ChannelConfig[] | undefined> {
    try {
      const cached = JSON.parse(await readFile(this.configPath(), 'utf8')) as { agentId: string; channels: ChannelConfig[] };
      return cached.agentId === this.options.agentId ? cached.channels : undefined;
    } catch {
      return undefined;
    }
  }
}
