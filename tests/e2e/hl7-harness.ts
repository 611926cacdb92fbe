/**
 * What the HL7 pipeline tests share: the agent as a real child process (`node agent/src/main.ts`)
 * against a real server, the project seeded by seed/seed.ts (lab profiles, the hl7-inbound bot,
 * the Agent and its Endpoint), and a plain-socket MLLP sender that frames bytes itself (not the
 * agent's own client: the tests should not lean on the code they test).
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { MedplumClient } from '@medplum/core';
import type { Parameters } from '@medplum/fhirtypes';
import { buildBots } from '../../scripts/build-bots.ts';
import { seed } from '../../seed/seed.ts';
import type { SeedResult } from '../../seed/seed.ts';
import { freePort, startTestServer } from '../../server/test/harness.ts';
import type { TestServer } from '../../server/test/harness.ts';

export const ROOT = path.resolve(import.meta.dirname, '../..');
export const TESTDATA = path.resolve(ROOT, '../shared/testdata');
export const VT = 0x0b;
export const FS = 0x1c;
export const CR = 0x0d;

let botCode: string | undefined;

/** The hl7-inbound bot built once per test file. */
export async function hl7BotCode(): Promise<string> {
  if (!botCode) {
    const [built] = await buildBots(['hl7-inbound']);
    botCode = readFileSync(built.dist, 'utf8');
  }
  return botCode;
}

export interface SeededPipeline extends SeedResult {
  port: number;
}

/** Seeds the project for an agent whose lab channel listens on a free port. */
export async function seedPipeline(medplum: MedplumClient, channelOptions?: string): Promise<SeededPipeline> {
  const port = await freePort();
  const result = await seed(medplum, { mllpPort: port, channelOptions, botCode: await hl7BotCode() });
  return { ...result, port };
}

export interface Pipeline {
  server: TestServer;
  /** The first project's admin. */
  medplum: MedplumClient;
  seeded: SeededPipeline;
  agent: AgentProcess;
}

/** A test server (in this process), the project seeded, the agent started and connected. */
export async function startPipeline(channelOptions?: string): Promise<Pipeline> {
  const server = await startTestServer();
  const medplum = server.medplum();
  const seeded = await seedPipeline(medplum, channelOptions);
  const agent = await startAgent(server.baseUrl, seeded);
  await waitConnected(medplum, seeded.agentId);
  return { server, medplum, seeded, agent };
}

export async function stopPipeline(pipeline: Partial<Pipeline>): Promise<void> {
  if (pipeline.agent) {
    await stopAgent(pipeline.agent);
  }
  await pipeline.server?.stop();
}

export interface AgentProcess {
  child: ChildProcess;
  dataDir: string;
  output(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Starts the agent; resolves once its channel listens. `dataDir` is kept across restarts (the spool). */
export async function startAgent(baseUrl: string, seeded: SeedResult, dataDir = mkdtempSync(path.join(tmpdir(), 'ermis-agent-'))): Promise<AgentProcess> {
  const child = spawn(process.execPath, ['agent/src/main.ts', baseUrl, seeded.clientId, seeded.clientSecret, seeded.agentId], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', AGENT_DATA_DIR: dataDir, LOG_LEVEL: 'info', AGENT_HEARTBEAT_MS: '1000' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout?.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (output += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((done) => child.once('exit', (code, signal) => done({ code, signal })));
  const agent: AgentProcess = { child, dataDir, output: () => output, exited };
  const deadline = Date.now() + 30_000;
  while (!output.includes('"msg":"channel listening"')) {
    if (child.exitCode !== null || Date.now() > deadline) {
      throw new Error(`agent did not start (exit ${child.exitCode}):\n${output}`);
    }
    await sleep(50);
  }
  return agent;
}

export async function stopAgent(agent: AgentProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (agent.child.exitCode === null && agent.child.signalCode === null) {
    agent.child.kill(signal);
    await agent.exited;
  }
}

/** Waits until Agent/$status says connected (the websocket is up). */
export async function waitConnected(medplum: MedplumClient, agentId: string, timeoutMs = 30_000): Promise<Parameters> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const status = (await medplum.get(medplum.fhirUrl('Agent', agentId, '$status'), { cache: 'no-cache' })) as Parameters;
    if (status.parameter?.find((p) => p.name === 'status')?.valueCode === 'connected') {
      return status;
    }
    if (Date.now() > deadline) {
      throw new Error(`agent not connected: ${JSON.stringify(status)}`);
    }
    await sleep(100);
  }
}

export function frame(message: string | Buffer): Buffer {
  const body = typeof message === 'string' ? Buffer.from(message, 'utf8') : message;
  return Buffer.concat([Buffer.from([VT]), body, Buffer.from([FS, CR])]);
}

/**
 * An MLLP connection from a test: writes raw bytes, collects reply frames (decoded as UTF-8 unless
 * told otherwise).
 */
export class MllpSender {
  private readonly socket: net.Socket;
  private buffer = Buffer.alloc(0);
  private readonly frames: Buffer[] = [];
  private readonly waiters: (() => void)[] = [];
  closed = false;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => {
      this.buffer = Buffer.concat([this.buffer, chunk]);
      for (;;) {
        const start = this.buffer.indexOf(VT);
        const end = this.buffer.indexOf(FS, start + 1);
        if (start < 0 || end < 0 || end + 1 >= this.buffer.length) {
          break;
        }
        this.frames.push(this.buffer.subarray(start + 1, end));
        this.buffer = this.buffer.subarray(end + 2);
      }
      this.waiters.splice(0).forEach((w) => w());
    });
    socket.on('close', () => {
      this.closed = true;
      this.waiters.splice(0).forEach((w) => w());
    });
    socket.on('error', () => undefined);
  }

  static connect(port: number): Promise<MllpSender> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: '127.0.0.1', port }, () => resolve(new MllpSender(socket)));
      socket.once('error', reject);
    });
  }

  write(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  /** The next reply frame (raw bytes), or undefined after `timeoutMs` or when the connection closed. */
  async nextFrame(timeoutMs = 30_000): Promise<Buffer | undefined> {
    const deadline = Date.now() + timeoutMs;
    while (this.frames.length === 0) {
      if (this.closed || Date.now() > deadline) {
        return undefined;
      }
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, Math.max(1, Math.min(200, deadline - Date.now())));
      });
    }
    return this.frames.shift();
  }

  async next(timeoutMs?: number): Promise<string | undefined> {
    return (await this.nextFrame(timeoutMs))?.toString('utf8');
  }

  /** Sends one message and waits for one reply. */
  async send(message: string | Buffer, timeoutMs?: number): Promise<string | undefined> {
    this.write(frame(message));
    return this.next(timeoutMs);
  }

  destroy(): void {
    this.socket.destroy();
  }

  end(): void {
    this.socket.end();
  }
}

/** Sends one message on a fresh connection and returns the reply. */
export async function sendOne(port: number, message: string | Buffer, timeoutMs?: number): Promise<string | undefined> {
  const sender = await MllpSender.connect(port);
  try {
    return await sender.send(message, timeoutMs);
  } finally {
    sender.destroy();
  }
}

/** MSA-1, MSA-2 and the ERR segments of an ACK. */
export function parseAck(ack: string | undefined): { code?: string; controlId?: string; text?: string; errors: string[][] } {
  const segments = (ack ?? '').split(/\r|\n/).filter(Boolean);
  const msa = segments.find((s) => s.startsWith('MSA'))?.split('|') ?? [];
  return { code: msa[1], controlId: msa[2], text: msa[3], errors: segments.filter((s) => s.startsWith('ERR')).map((s) => s.split('|')) };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
