/**
 * Transport scenarios, driven from the parent over 127.0.0.1 against a server in a child process.
 * The client side is a raw socket, so every server sees exactly the same bytes.
 */
import { fork } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ServerConfig, ServerReport } from './child.ts';
import { encode88597, GREEK_FAMILY, greekMessage, oru10 } from './corpus.ts';

const VT = 0x0b;
const FS = 0x1c;
const CR = 0x0d;

export function frame(body: Buffer | string): Buffer {
  const b = typeof body === 'string' ? Buffer.from(body, 'utf8') : body;
  return Buffer.concat([Buffer.from([VT]), b, Buffer.from([FS, CR])]);
}

export interface AckFrame {
  at: number;
  msa1: string;
  msa2: string;
  msh10: string;
}

function readAck(text: string, at: number): AckFrame {
  const segs = text.split(/\r|\n/);
  const msh = segs.find((s) => s.startsWith('MSH'))?.split('|') ?? [];
  const msa = segs.find((s) => s.startsWith('MSA'))?.split('|') ?? [];
  return { at, msa1: msa[1] ?? '', msa2: msa[2] ?? '', msh10: msh[9] ?? '' };
}

export class RawClient {
  readonly frames: AckFrame[] = [];
  closedAt: number | undefined;
  private buf = Buffer.alloc(0);
  private waiters: (() => void)[] = [];
  readonly socket: net.Socket;
  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      this.buf = Buffer.concat([this.buf, chunk]);
      for (;;) {
        const s = this.buf.indexOf(VT);
        const e = this.buf.indexOf(FS, s + 1);
        if (s < 0 || e < 0) break;
        this.frames.push(readAck(this.buf.subarray(s + 1, e).toString('utf8'), Date.now()));
        this.buf = this.buf.subarray(e + 2);
      }
      this.wake();
    });
    socket.on('close', () => {
      this.closedAt = Date.now();
      this.wake();
    });
    socket.on('error', () => undefined);
  }
  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
  static connect(port: number): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ port, host: '127.0.0.1' }, () => resolve(new RawClient(socket)));
      socket.once('error', reject);
    });
  }
  write(data: Buffer): Promise<void> {
    return new Promise((resolve) => {
      if (this.closedAt !== undefined || this.socket.destroyed) return resolve();
      if (this.socket.write(data)) return resolve();
      const done = (): void => {
        this.socket.off('drain', done);
        this.socket.off('close', done);
        resolve();
      };
      this.socket.once('drain', done);
      this.socket.once('close', done);
    });
  }
  /** Resolves true once `n` frames have arrived in total, false on timeout or close. */
  async waitFrames(n: number, timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (this.frames.length < n) {
      if (this.closedAt !== undefined) return false;
      const left = deadline - Date.now();
      if (left <= 0) return false;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    return true;
  }
  close(): void {
    this.socket.destroy();
  }
}

// ---------------------------------------------------------------- server child

export class ServerChild {
  readonly proc: ChildProcess;
  readonly port: number;
  private constructor(proc: ChildProcess, port: number) {
    this.proc = proc;
    this.port = port;
  }
  static async start(kind: string, cfg: Omit<ServerConfig, 'port'>, libs: string): Promise<ServerChild> {
    const port = await freePort();
    const script = path.join(import.meta.dirname, 'child.ts');
    const proc = fork(script, ['server', kind, JSON.stringify({ ...cfg, port }), '--libs', libs], {
      stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
    });
    await new Promise<void>((resolve, reject) => {
      proc.once('message', () => resolve());
      proc.once('exit', (code) => reject(new Error(`${kind} server exited with ${code}`)));
    });
    return new ServerChild(proc, port);
  }
  report(): Promise<ServerReport> {
    return new Promise((resolve) => {
      const onMessage = (m: unknown): void => {
        if (typeof m === 'object' && m !== null && 'type' in m && m.type === 'report' && 'report' in m) {
          this.proc.off('message', onMessage);
          resolve(m.report as ServerReport);
        }
      };
      this.proc.on('message', onMessage);
      this.proc.send({ type: 'report' });
    });
  }
  async stop(): Promise<void> {
    const exited = new Promise<void>((resolve) => this.proc.once('exit', () => resolve()));
    this.proc.send({ type: 'exit' });
    await Promise.race([exited, sleep(2000)]);
    if (this.proc.exitCode === null) this.proc.kill('SIGKILL');
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

// ---------------------------------------------------------------- scenarios

export interface ScenarioResult {
  server: string;
  scenario: string;
  verdict: string;
  detail: Record<string, unknown>;
}

/** Marker verdict: replaced by what the handler read from PID-5.1. */
const GREEK = '(greek)';
const msg = (controlId: string): string => oru10(controlId);
const acks = (c: RawClient): string => c.frames.map((f) => `${f.msa1}:${f.msa2}`).join(' ') || '(none)';

type Scenario = (kind: string, libs: string) => Promise<ScenarioResult>;

async function withServer(
  kind: string,
  libs: string,
  cfg: Omit<ServerConfig, 'port'>,
  body: (port: number) => Promise<{ verdict: string; detail: Record<string, unknown> }>,
  scenario: string,
): Promise<ScenarioResult> {
  const server = await ServerChild.start(kind, cfg, libs);
  try {
    const r = await body(server.port);
    const rep = await server.report();
    const errs = rep.events.filter((e) => e.kind === 'error').map((e) => e.detail);
    const pids = rep.events.filter((e) => e.kind === 'message').map((e) => e.pid51 ?? '');
    let verdict = r.verdict;
    if (verdict === GREEK) {
      const seen = pids[0];
      verdict =
        seen === undefined
          ? `handler never called; ACKs ${String(r.detail.acks)}`
          : `handler read PID-5.1 ${JSON.stringify(seen)}: ${seen === GREEK_FAMILY ? 'correct' : 'WRONG'}`;
    }
    return {
      server: kind,
      scenario,
      verdict,
      detail: {
        ...r.detail,
        serverMessages: rep.messages,
        serverErrors: errs.slice(0, 3),
        serverRssMiB: +(rep.rssBytes / 1048576).toFixed(1),
      },
    };
  } finally {
    await server.stop();
  }
}

export const SCENARIOS: Record<string, Scenario> = {
  'one message': (kind, libs) =>
    withServer(kind, libs, {}, async (port) => {
      const c = await RawClient.connect(port);
      await c.write(frame(msg('ONE-1')));
      await c.waitFrames(1, 2000);
      c.close();
      const f = c.frames[0];
      return { verdict: f ? `ACK ${f.msa1}, MSA-2 ${f.msa2}, ACK MSH-10 "${f.msh10}"` : 'no ACK in 2 s', detail: { acks: acks(c) } };
    }, 'one message'),

  'three in a row, one connection': (kind, libs) =>
    withServer(kind, libs, {}, async (port) => {
      const c = await RawClient.connect(port);
      for (let i = 1; i <= 3; i++) {
        await c.write(frame(msg(`SEQ-${i}`)));
        await c.waitFrames(i, 2000);
      }
      await sleep(300);
      c.close();
      const ok = c.frames.length === 3 && c.frames.every((f, i) => f.msa2 === `SEQ-${i + 1}` && f.msa1 === 'AA');
      return { verdict: ok ? 'all three ACKed AA with the right MSA-2' : `got ${c.frames.length} ACKs: ${acks(c)}`, detail: { acks: acks(c) } };
    }, 'three in a row, one connection'),

  'split packets': (kind, libs) =>
    withServer(kind, libs, {}, async (port) => {
      const c = await RawClient.connect(port);
      const f = frame(msg('SPLIT-1'));
      // VT alone, body in two pieces, FS alone, CR alone — 30 ms apart so each is its own TCP segment.
      const cuts = [1, 600, f.length - 2, f.length - 1, f.length];
      let prev = 0;
      for (const cut of cuts) {
        await c.write(f.subarray(prev, cut));
        prev = cut;
        await sleep(30);
      }
      await c.waitFrames(1, 2000);
      c.close();
      const ok = c.frames.length === 1 && c.frames[0].msa2 === 'SPLIT-1';
      return { verdict: ok ? 'reassembled, one ACK' : `got ${acks(c)}`, detail: { acks: acks(c) } };
    }, 'split packets'),

  'merged packets': (kind, libs) =>
    withServer(kind, libs, {}, async (port) => {
      const c = await RawClient.connect(port);
      await c.write(Buffer.concat([frame(msg('MERGED-1')), frame(msg('MERGED-2'))]));
      await c.waitFrames(2, 2000);
      c.close();
      const ok = c.frames.length === 2 && c.frames[0].msa2 === 'MERGED-1' && c.frames[1].msa2 === 'MERGED-2';
      return { verdict: ok ? 'both messages ACKed' : `got ${acks(c)}`, detail: { acks: acks(c) } };
    }, 'merged packets'),

  'unparseable frame, then a good one': (kind, libs) =>
    withServer(kind, libs, {}, async (port) => {
      const c = await RawClient.connect(port);
      await c.write(frame('PID|1||123^^^ACME^MR||DOE^JOHN'));
      const nak = await c.waitFrames(1, 1000);
      await c.write(frame(msg('AFTER-BAD-1')));
      await c.waitFrames(nak ? 2 : 1, 2000);
      c.close();
      return {
        verdict: `${nak ? `answered the bad frame with ${c.frames[0].msa1}` : 'no answer to the bad frame (sender waits for its timeout)'}; then ${acks(c)}`,
        detail: { acks: acks(c), closed: c.closedAt !== undefined },
      };
    }, 'unparseable frame, then a good one'),

  'missing end block': (kind, libs) =>
    withServer(kind, libs, { partialFrameTimeoutMs: 1000 }, async (port) => {
      const c = await RawClient.connect(port);
      const t0 = Date.now();
      await c.write(Buffer.concat([Buffer.from([VT]), Buffer.from(msg('NOEND-1'))]));
      await c.waitFrames(1, 1500);
      const closedAfter = c.closedAt !== undefined ? c.closedAt - t0 : undefined;
      let next = 'connection closed';
      if (c.closedAt === undefined) {
        await c.write(frame(msg('NOEND-2')));
        await c.waitFrames(c.frames.length + 1, 2000);
        next = `next frame on the same connection answered: ${acks(c)}`;
      }
      c.close();
      return {
        verdict: `${closedAfter !== undefined ? `server closed the connection after ${closedAfter} ms` : 'connection left open, nothing sent back in 1.5 s'}; ${next}`,
        detail: { acks: acks(c) },
      };
    }, 'missing end block'),

  'oversized frame (8 MiB, no end block)': (kind, libs) =>
    withServer(kind, libs, {}, async (port) => {
      const server0 = await ServerChild.start(kind, {}, libs); // fresh process for an RSS reference
      const base = await server0.report();
      await server0.stop();
      const c = await RawClient.connect(port);
      const chunk = Buffer.alloc(64 * 1024, 'A');
      const t0 = Date.now();
      await c.write(Buffer.concat([Buffer.from([VT]), Buffer.from(msg('BIG-1').slice(0, 200))]));
      let sent = 0;
      while (sent < 8 * 1024 * 1024 && c.closedAt === undefined) {
        await c.write(chunk);
        sent += chunk.length;
      }
      const writeMs = Date.now() - t0;
      await sleep(300);
      c.close();
      return {
        verdict:
          c.closedAt !== undefined
            ? `server closed the connection after ${(sent / 1048576).toFixed(1)} MiB`
            : `accepted all ${(sent / 1048576).toFixed(0)} MiB into one pending frame (${writeMs} ms to push)`,
        detail: { sentBytes: sent, writeMs, baselineRssMiB: +(base.rssBytes / 1048576).toFixed(1) },
      };
    }, 'oversized frame (8 MiB, no end block)'),

  'ACK after a 200 ms durable write': (kind, libs) =>
    withServer(kind, libs, { ackDelayMs: 200 }, async (port) => {
      const c = await RawClient.connect(port);
      const t0 = Date.now();
      await c.write(frame(msg('DUR-1')));
      await c.waitFrames(1, 2000);
      await sleep(300);
      c.close();
      const times = c.frames.map((f) => `${f.msa1} at +${f.at - t0} ms`).join(', ');
      const early = c.frames.filter((f) => f.at - t0 < 190);
      return {
        verdict: early.length ? `an ACK left before the write finished: ${times}` : `first ACK only after the write: ${times}`,
        detail: { acks: acks(c) },
      };
    }, 'ACK after a 200 ms durable write'),

  'enhanced mode (library flag), 200 ms write': (kind, libs) =>
    withServer(kind, libs, { enhanced: true, ackDelayMs: 200 }, async (port) => {
      const c = await RawClient.connect(port);
      const t0 = Date.now();
      // oru10 carries MSH-15 = AL, MSH-16 = NE: the sender asks for the commit ACK only.
      await c.write(frame(msg('ENH-1')));
      await c.waitFrames(2, 1500);
      c.close();
      const times = c.frames.map((f) => `${f.msa1} at +${f.at - t0} ms`).join(', ') || '(none)';
      return { verdict: times, detail: { acks: acks(c) } };
    }, 'enhanced mode (library flag), 200 ms write'),

  'CA sent by the application after a 200 ms write, then AA': (kind, libs) =>
    withServer(kind, libs, { appCommitAck: true, ackDelayMs: 200 }, async (port) => {
      const c = await RawClient.connect(port);
      const t0 = Date.now();
      await c.write(frame(msg('APPCA-1')));
      await c.waitFrames(2, 1500);
      c.close();
      const times = c.frames.map((f) => `${f.msa1} at +${f.at - t0} ms`).join(', ') || '(none)';
      return { verdict: times, detail: { acks: acks(c) } };
    }, 'CA sent by the application after a 200 ms write, then AA'),

  'Greek, ISO-8859-7 bytes, MSH-18 8859/7, default charset': (kind, libs) => greek(kind, libs, undefined),
  'Greek, ISO-8859-7 bytes, MSH-18 8859/7, charset configured': (kind, libs) =>
    greek(kind, libs, kind === 'node-hl7-server' ? 'latin1' : kind === 'medplum-hl7' ? 'iso-8859-7' : undefined),
  'Greek, UTF-8 bytes, server configured for 8859-7 (mixed senders)': (kind, libs) =>
    withServer(kind, libs, kind === 'medplum-hl7' ? { encoding: 'iso-8859-7' } : {}, async (port) => {
      const c = await RawClient.connect(port);
      await c.write(frame(Buffer.from(greekMessage('UNICODE UTF-8'), 'utf8')));
      await c.waitFrames(1, 2000);
      c.close();
      return { verdict: GREEK, detail: { acks: acks(c) } };
    }, 'Greek, UTF-8 bytes, server configured for 8859-7 (mixed senders)'),
};

async function greek(kind: string, libs: string, encoding: string | undefined): Promise<ScenarioResult> {
  const name = `Greek, ISO-8859-7 bytes, MSH-18 8859/7, ${encoding === undefined ? 'default charset' : 'charset configured'}`;
  return withServer(kind, libs, encoding ? { encoding } : {}, async (port) => {
    const c = await RawClient.connect(port);
    await c.write(frame(encode88597(greekMessage('8859/7'))));
    await c.waitFrames(1, 2000);
    c.close();
    return { verdict: GREEK, detail: { acks: acks(c), encoding: encoding ?? '(default)' } };
  }, name);
}

// ---------------------------------------------------------------- throughput

export interface RoundTripResult {
  server: string;
  connections: number;
  seconds: number;
  messages: number;
  perSec: number;
  p50Ms: number;
  p99Ms: number;
  timeouts: number;
  /** ACKs whose MSA-2 is not the control id of the message just sent. */
  wrongAcks: number;
  /** How many times the server's handler ran per message sent (1 is right; more means redelivery). */
  handlerCallsPerMessage: number;
  serverCpuMs: number;
}

export async function roundTrip(kind: string, libs: string, connections: number, seconds: number): Promise<RoundTripResult> {
  const server = await ServerChild.start(kind, {}, libs);
  const latencies: number[] = [];
  let timeouts = 0;
  let wrongAcks = 0;
  try {
    const clients = await Promise.all(Array.from({ length: connections }, () => RawClient.connect(server.port)));
    // Warm-up: 200 round trips per connection are not counted.
    const run = async (c: RawClient, idx: number, until: number, count: boolean): Promise<void> => {
      let i = 0;
      while (Date.now() < until) {
        const t = process.hrtime.bigint();
        const id = `RT-${idx}-${i++}`;
        await c.write(frame(msg(id)));
        if (!(await c.waitFrames(c.frames.length + 1, 2000))) {
          timeouts++;
          return;
        }
        if (count && c.frames[c.frames.length - 1].msa2 !== id) wrongAcks++;
        if (count) latencies.push(Number(process.hrtime.bigint() - t) / 1e6);
      }
    };
    await Promise.all(clients.map((c, i) => run(c, i, Date.now() + 500, false)));
    const before = await server.report();
    const t0 = Date.now();
    await Promise.all(clients.map((c, i) => run(c, i, t0 + seconds * 1000, true)));
    const elapsed = (Date.now() - t0) / 1000;
    const after = await server.report();
    for (const c of clients) c.close();
    const sorted = [...latencies].sort((a, b) => a - b);
    const pct = (p: number): number => (sorted.length ? +sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))].toFixed(2) : Number.NaN);
    return {
      server: kind,
      connections,
      seconds: +elapsed.toFixed(2),
      messages: latencies.length,
      perSec: Math.round(latencies.length / elapsed),
      p50Ms: pct(0.5),
      p99Ms: pct(0.99),
      timeouts,
      wrongAcks,
      handlerCallsPerMessage: latencies.length ? +((after.messages - before.messages) / latencies.length).toFixed(2) : Number.NaN,
      serverCpuMs: Math.round(after.cpuUserMs - before.cpuUserMs),
    };
  } finally {
    await server.stop();
  }
}
