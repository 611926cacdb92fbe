/**
 * Child processes of measure.ts (forked with IPC). One MLLP server per process, so that
 * @medplum/hl7 (which pins @medplum/core 5.0.10) never shares a process with the repo's core 5.2.13,
 * and so that the load generator in the parent does not share a thread with the server it measures.
 *
 *   node child.ts server <node-hl7-server|medplum-hl7|baseline> <config-json> --libs <dir>
 *   node child.ts parse-core-5.0.10 <iterations> --libs <dir>
 *
 * "baseline" is a bench-local minimal MLLP framing (about 60 lines below) around @medplum/core 5.2.13's
 * Hl7Message: a yardstick for what the libraries cost, not ermis's transport (that is agent/src/mllp).
 */
import { Hl7Message } from '@medplum/core';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { corpusRoot, loadCorpus, probes } from './corpus.ts';
import { libsDir, loadFrom, medplumHl7Dir, member, packageVersion } from './load.ts';
import type { Module } from './load.ts';
import { runCorpus, runProbes, runThroughput } from './parse-bench.ts';
import type { CoreMessageClass } from './parsers.ts';
import { coreAdapter } from './parsers.ts';

export interface ServerConfig {
  port: number;
  /** Charset the library is told to use for the connection, if any. */
  encoding?: string;
  /** @medplum/hl7's enhanced mode flag. */
  enhanced?: boolean;
  /** Time the handler waits before acknowledging: stands for the receiver's durable write (fsync). */
  ackDelayMs?: number;
  /** The handler itself sends CA after its "durable write", then AA. */
  appCommitAck?: boolean;
  /** baseline only */
  maxFrameBytes?: number;
  partialFrameTimeoutMs?: number;
}

export interface ServerEvent {
  at: number;
  kind: 'message' | 'ack-sent' | 'error';
  controlId?: string;
  pid51?: string;
  detail?: string;
}

export interface ServerReport {
  events: ServerEvent[];
  messages: number;
  errors: number;
  rssBytes: number;
  arrayBuffersBytes: number;
  cpuUserMs: number;
}

const events: ServerEvent[] = [];
let messages = 0;
let errors = 0;
const KEEP_EVENTS = 200;

function record(e: ServerEvent): void {
  if (e.kind === 'message') messages++;
  if (e.kind === 'error') errors++;
  if (events.length < KEEP_EVENTS) events.push(e);
}

function send(msg: unknown): void {
  process.send?.(msg);
}

// ---------------------------------------------------------------- node-hl7-server 2.5.0

interface NhNode {
  toString(): string;
}
interface NhMessage {
  get(path: string): NhNode;
}
interface NhRequest {
  getMessage(): NhMessage;
}
interface NhResponse {
  sendResponse(type: string): Promise<void>;
}
interface NhInbound {
  on(event: string, listener: (arg: unknown) => void): void;
  close(): Promise<boolean>;
}
interface NhServer {
  createInbound(props: { port: number; encoding?: string }, handler: (req: NhRequest, res: NhResponse) => Promise<void>): NhInbound;
}
type NhServerClass = new (props: { bindAddress: string }) => NhServer;

async function startNodeHl7Server(mod: Module, cfg: ServerConfig): Promise<() => Promise<void>> {
  const Server = member<NhServerClass>(mod, 'Server');
  const server = new Server({ bindAddress: '127.0.0.1' });
  const props: { port: number; encoding?: string } = { port: cfg.port };
  if (cfg.encoding) props.encoding = cfg.encoding;
  const inbound = server.createInbound(props, async (req, res) => {
    const msg = req.getMessage();
    const controlId = msg.get('MSH.10').toString();
    record({ at: Date.now(), kind: 'message', controlId, pid51: msg.get('PID.5.1').toString() });
    if (cfg.ackDelayMs) await sleep(cfg.ackDelayMs);
    if (cfg.appCommitAck) {
      await res.sendResponse('CA');
      record({ at: Date.now(), kind: 'ack-sent', controlId, detail: 'CA' });
    }
    await res.sendResponse('AA');
    record({ at: Date.now(), kind: 'ack-sent', controlId, detail: 'AA' });
  });
  for (const ev of ['data.error', 'client.error', 'error']) {
    inbound.on(ev, (err) => record({ at: Date.now(), kind: 'error', detail: `${ev}: ${err instanceof Error ? err.message : String(err)}` }));
  }
  await new Promise<void>((resolve) => inbound.on('listen', () => resolve()));
  return async () => {
    await inbound.close();
  };
}

// ---------------------------------------------------------------- @medplum/hl7 5.0.10

interface MpField {
  getComponent(component: number): string;
}
interface MpSegment {
  getField(index: number): MpField | undefined;
}
interface MpMessage {
  getSegment(name: string): MpSegment | undefined;
  buildAck(options?: { ackCode: string }): MpMessage;
}
interface MpConnection {
  addEventListener(type: 'message', listener: (event: { message: MpMessage }) => void): void;
  addEventListener(type: 'error', listener: (event: { error: Error }) => void): void;
  send(reply: MpMessage): void;
}
interface MpServer {
  start(port: number, encoding?: string, enhancedMode?: boolean): Promise<void>;
  stop(options?: { forceDrainTimeoutMs?: number }): Promise<void>;
}
type MpServerClass = new (handler: (connection: MpConnection) => void) => MpServer;

async function startMedplumHl7(mod: Module, cfg: ServerConfig): Promise<() => Promise<void>> {
  const Hl7Server = member<MpServerClass>(mod, 'Hl7Server');
  const server = new Hl7Server((connection) => {
    connection.addEventListener('message', (event) => {
      const msg = event.message;
      const controlId = msg.getSegment('MSH')?.getField(10)?.getComponent(1) ?? '';
      record({ at: Date.now(), kind: 'message', controlId, pid51: msg.getSegment('PID')?.getField(5)?.getComponent(1) });
      void (async () => {
        if (cfg.ackDelayMs) await sleep(cfg.ackDelayMs);
        if (cfg.appCommitAck) {
          connection.send(msg.buildAck({ ackCode: 'CA' }));
          record({ at: Date.now(), kind: 'ack-sent', controlId, detail: 'CA' });
        }
        connection.send(msg.buildAck({ ackCode: 'AA' }));
        record({ at: Date.now(), kind: 'ack-sent', controlId, detail: 'AA' });
      })();
    });
    connection.addEventListener('error', (event) => record({ at: Date.now(), kind: 'error', detail: event.error.message }));
  });
  await server.start(cfg.port, cfg.encoding, cfg.enhanced ?? false);
  return async () => {
    await server.stop({ forceDrainTimeoutMs: 0 });
  };
}

// ---------------------------------------------------------------- baseline: minimal framing + core 5.2.13

const VT = 0x0b;
const FS = 0x1c;
const CR = 0x0d;

function charsetOf(frame: Buffer): string {
  const headerEnd = frame.indexOf(CR);
  const header = frame.subarray(0, headerEnd < 0 ? frame.length : headerEnd).toString('latin1');
  const msh18 = header.split(header[3] ?? '|')[17]?.split(header[4] ?? '^')[0] ?? '';
  const map: Record<string, string> = { '8859/7': 'iso-8859-7', '8859/1': 'iso-8859-1', 'UNICODE UTF-8': 'utf-8', '': 'utf-8' };
  return map[msh18] ?? 'utf-8';
}

async function startBaseline(cfg: ServerConfig): Promise<() => Promise<void>> {
  const maxFrame = cfg.maxFrameBytes ?? 1024 * 1024;
  const sockets = new Set<net.Socket>();
  const frameOut = (text: string): Buffer => Buffer.concat([Buffer.from([VT]), Buffer.from(text, 'utf8'), Buffer.from([FS, CR])]);
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.setNoDelay(true);
    let pending: Buffer = Buffer.alloc(0);
    let partialTimer: NodeJS.Timeout | undefined;
    const handle = (frame: Buffer): void => {
      let msg: Hl7Message;
      try {
        msg = Hl7Message.parse(new TextDecoder(charsetOf(frame)).decode(frame));
      } catch (e) {
        record({ at: Date.now(), kind: 'error', detail: `unparseable frame: ${(e as Error).message}` });
        socket.write(frameOut('MSH|^~\\&|ERMIS||||||ACK|0|P|2.5.1\rMSA|AR||unparseable message'));
        return;
      }
      const controlId = msg.getSegment('MSH')?.getField(10)?.getComponent(1) ?? '';
      record({ at: Date.now(), kind: 'message', controlId, pid51: msg.getSegment('PID')?.getField(5)?.getComponent(1) });
      void (async () => {
        if (cfg.ackDelayMs) await sleep(cfg.ackDelayMs);
        if (cfg.appCommitAck) {
          socket.write(frameOut(msg.buildAck({ ackCode: 'CA' }).toString()));
          record({ at: Date.now(), kind: 'ack-sent', controlId, detail: 'CA' });
        }
        socket.write(frameOut(msg.buildAck({ ackCode: 'AA' }).toString()));
        record({ at: Date.now(), kind: 'ack-sent', controlId, detail: 'AA' });
      })();
    };
    socket.on('data', (chunk: Buffer) => {
      pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
      for (;;) {
        const start = pending.indexOf(VT);
        if (start < 0) {
          pending = Buffer.alloc(0);
          break;
        }
        const end = pending.indexOf(FS, start + 1);
        if (end < 0 || end + 1 >= pending.length) {
          pending = pending.subarray(start);
          break;
        }
        if (pending[end + 1] !== CR) {
          pending = pending.subarray(end + 1);
          continue;
        }
        handle(pending.subarray(start + 1, end));
        pending = pending.subarray(end + 2);
      }
      if (pending.length > maxFrame) {
        record({ at: Date.now(), kind: 'error', detail: `frame over ${maxFrame} bytes: connection closed` });
        socket.destroy();
        return;
      }
      clearTimeout(partialTimer);
      if (pending.length && cfg.partialFrameTimeoutMs) {
        partialTimer = setTimeout(() => {
          record({ at: Date.now(), kind: 'error', detail: `no end block within ${cfg.partialFrameTimeoutMs} ms: connection closed` });
          socket.destroy();
        }, cfg.partialFrameTimeoutMs);
      }
    });
    socket.on('error', (e) => record({ at: Date.now(), kind: 'error', detail: e.message }));
    socket.on('close', () => {
      clearTimeout(partialTimer);
      sockets.delete(socket);
    });
  });
  await new Promise<void>((resolve) => server.listen(cfg.port, '127.0.0.1', resolve));
  return async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
}

// ---------------------------------------------------------------- main

async function main(): Promise<void> {
  const [mode, arg] = process.argv.slice(2);
  const libs = libsDir(process.argv);
  if (mode === 'parse-core-5.0.10') {
    const dir = medplumHl7Dir(libs);
    const core = await loadFrom(dir, '@medplum/core');
    const adapter = coreAdapter(`@medplum/core ${packageVersion(dir, '@medplum/core')}`, member<CoreMessageClass>(core, 'Hl7Message'));
    const corpus = loadCorpus(corpusRoot(process.argv));
    send({
      type: 'parse',
      corpus: runCorpus(adapter, corpus),
      probes: runProbes(adapter, probes()),
      throughput: runThroughput(adapter, Number(arg)),
    });
    return;
  }
  if (mode !== 'server') throw new Error(`unknown mode ${mode}`);
  const kind = arg;
  const cfg = JSON.parse(process.argv[4]) as ServerConfig;
  process.on('uncaughtException', (e) => {
    record({ at: Date.now(), kind: 'error', detail: `uncaughtException: ${e.message}` });
  });
  let stop: () => Promise<void>;
  if (kind === 'node-hl7-server') stop = await startNodeHl7Server(await loadFrom(libs, 'node-hl7-server'), cfg);
  else if (kind === 'medplum-hl7') stop = await startMedplumHl7(await loadFrom(medplumHl7Dir(libs), '@medplum/hl7'), cfg);
  else if (kind === 'baseline') stop = await startBaseline(cfg);
  else throw new Error(`unknown server ${kind}`);
  const cpu0 = process.cpuUsage();
  process.on('message', (m: unknown) => {
    const type = typeof m === 'object' && m !== null && 'type' in m ? m.type : undefined;
    if (type === 'report') {
      const mem = process.memoryUsage();
      const report: ServerReport = {
        events,
        messages,
        errors,
        rssBytes: mem.rss,
        arrayBuffersBytes: mem.arrayBuffers,
        cpuUserMs: process.cpuUsage(cpu0).user / 1000,
      };
      send({ type: 'report', report });
    } else if (type === 'exit') {
      void stop().finally(() => process.exit(0));
      setTimeout(() => process.exit(0), 500).unref();
    }
  });
  send({ type: 'ready' });
}

await main();
