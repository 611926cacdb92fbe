import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { afterAll, afterEach, beforeAll, describe, expect, test, vi } from 'vitest';
import { MllpFramer } from '../src/mllp/framer.ts';
import type { FramingError } from '../src/mllp/framer.ts';
import { frameMessage } from '../src/mllp/frame.ts';
import { MllpListener } from '../src/mllp/listener.ts';
import type { ConnectionInfo, MllpListenerOptions } from '../src/mllp/listener.ts';
import { MllpClient } from '../src/mllp/client.ts';

/** A raw MLLP peer for driving the listener byte by byte. */
class Peer {
  readonly socket: net.Socket;
  private readonly frames: Buffer[] = [];
  private waiting: (() => void) | undefined;
  readonly closed: Promise<void>;

  constructor(socket: net.Socket) {
    this.socket = socket;
    const framer = new MllpFramer({
      onFrame: (f) => {
        this.frames.push(f);
        this.waiting?.();
      },
    });
    socket.on('data', (c: Buffer) => framer.push(c));
    socket.on('error', () => undefined);
    this.closed = new Promise((r) => socket.once('close', () => r()));
  }

  static connect(port: number, options: { allowHalfOpen?: boolean } = {}): Promise<Peer> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ host: '127.0.0.1', port, allowHalfOpen: options.allowHalfOpen });
      s.once('connect', () => resolve(new Peer(s)));
      s.once('error', reject);
    });
  }

  write(data: Uint8Array | string): void {
    this.socket.write(typeof data === 'string' ? Buffer.from(data, 'latin1') : data);
  }

  async frame(timeoutMs = 2000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    while (this.frames.length === 0) {
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error('no frame within timeout');
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiting = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
    return (this.frames.shift() as Buffer).toString('latin1');
  }

  async frames_(n: number, timeoutMs = 2000): Promise<string[]> {
    const out: string[] = [];
    for (let i = 0; i < n; i++) {
      out.push(await this.frame(timeoutMs));
    }
    return out;
  }

  get received(): number {
    return this.frames.length;
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function until(cond: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) {
      throw new Error('condition not met in time');
    }
    await sleep(5);
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return Promise.race([p, sleep(ms).then(() => Promise.reject(new Error(`${what} did not happen within ${ms} ms`)))]);
}

const listeners: MllpListener[] = [];
const peers: Peer[] = [];

async function start(options: Partial<MllpListenerOptions> = {}): Promise<{ listener: MllpListener; port: number }> {
  const listener = new MllpListener({
    host: '127.0.0.1',
    port: 0,
    onMessage: async (frame) => Buffer.from(`ACK:${frame.toString('latin1')}`, 'latin1'),
    ...options,
  });
  listeners.push(listener);
  const { port } = await listener.listen();
  return { listener, port };
}

async function connect(port: number, options?: { allowHalfOpen?: boolean }): Promise<Peer> {
  const peer = await Peer.connect(port, options);
  peers.push(peer);
  return peer;
}

afterEach(async () => {
  for (const p of peers.splice(0)) {
    p.socket.destroy();
  }
  await Promise.all(listeners.splice(0).map((l) => l.close(500)));
});

describe('MllpListener over TCP', () => {
  test('answers one message framed on the same connection, with counters and remote', async () => {
    let seen: ConnectionInfo | undefined;
    const { listener, port } = await start({
      onMessage: async (frame, conn) => {
        seen = conn;
        return Buffer.from(`ACK:${frame.toString()}`);
      },
    });
    const peer = await connect(port);
    peer.write(frameMessage(Buffer.from('MSH|1')));
    expect(await peer.frame()).toBe('ACK:MSH|1');
    expect(seen?.remote).toBe(`127.0.0.1:${peer.socket.localPort}`);
    expect(seen?.tls).toBe(false);
    const stats = listener.stats();
    expect(stats).toMatchObject({ connectionsOpen: 1, connectionsTotal: 1, messages: 1, repliesSent: 1, bytesIn: 8, bytesOut: 12 });
    expect(listener.counters.framingErrors).toBe(0);
  });

  test('message written byte by byte, and random splits', async () => {
    const { port } = await start();
    const peer = await connect(port);
    const msg = frameMessage(Buffer.from('MSH|^~\\&|LAB|X\rPID|1||123'));
    for (const byte of msg) {
      peer.write(Uint8Array.of(byte));
      await new Promise((r) => setImmediate(r));
    }
    expect(await peer.frame()).toBe('ACK:MSH|^~\\&|LAB|X\rPID|1||123');
    const many = Buffer.concat(Array.from({ length: 20 }, (_, i) => frameMessage(Buffer.from(`M${i}`))));
    let i = 0;
    while (i < many.length) {
      const n = 1 + ((i * 7) % 11);
      peer.write(many.subarray(i, i + n));
      i += n;
      await new Promise((r) => setImmediate(r));
    }
    expect(await peer.frames_(20)).toEqual(Array.from({ length: 20 }, (_, k) => `ACK:M${k}`));
  });

  test('several frames in one write and several messages per connection', async () => {
    const { listener, port } = await start();
    const peer = await connect(port);
    peer.write(Buffer.concat([frameMessage(Buffer.from('A')), frameMessage(Buffer.from('B')), frameMessage(Buffer.from('C'))]));
    expect(await peer.frames_(3)).toEqual(['ACK:A', 'ACK:B', 'ACK:C']);
    peer.write(frameMessage(Buffer.from('D')));
    expect(await peer.frame()).toBe('ACK:D');
    expect(listener.stats().connectionsTotal).toBe(1);
  });

  test('pipelined messages are answered in arrival order although handlers finish out of order', async () => {
    const finished: string[] = [];
    const { port } = await start({
      onMessage: async (frame) => {
        const text = frame.toString();
        await sleep(text === 'first' ? 80 : text === 'second' ? 40 : 0);
        finished.push(text);
        return Buffer.from(`ACK:${text}`);
      },
    });
    const peer = await connect(port);
    peer.write(Buffer.concat(['first', 'second', 'third'].map((t) => frameMessage(Buffer.from(t)))));
    expect(await peer.frames_(3)).toEqual(['ACK:first', 'ACK:second', 'ACK:third']);
    expect(finished).toEqual(['third', 'second', 'first']);
  });

  test('early replies (commit ACK) keep their place; late replies follow their message, or go out at once', async () => {
    // Payload 'name/handlerMs/lateMs': commit ACK at once; handlerMs later the handler settles
    // (with the AA when lateMs is 0, else with nothing and the AA is sent lateMs after the start).
    const { port } = await start({
      onMessage: async (frame, _conn, reply) => {
        const [name, handlerMs, lateMs] = frame.toString().split('/');
        reply(Buffer.from(`CA:${name}`));
        if (Number(lateMs) > 0) {
          setTimeout(() => reply(Buffer.from(`AA:${name}`)), Number(lateMs));
        }
        await sleep(Number(handlerMs));
        return Number(lateMs) > 0 ? undefined : Buffer.from(`AA:${name}`);
      },
    });
    const peer = await connect(port);
    // 'three' and 'four' settle at once and send their AA at 30 ms, while 'one' is still running:
    // their AAs wait for their turn. 'five' sends its AA at 250 ms, long after its turn: at once,
    // after 'six' (which settles at 100 ms).
    peer.write(Buffer.concat(['one/100/0', 'two/0/0', 'three/0/30', 'four/0/30', 'five/0/250', 'six/100/0'].map((t) => frameMessage(Buffer.from(t)))));
    expect(await peer.frames_(12)).toEqual([
      'CA:one',
      'AA:one',
      'CA:two',
      'AA:two',
      'CA:three',
      'AA:three',
      'CA:four',
      'AA:four',
      'CA:five',
      'CA:six',
      'AA:six',
      'AA:five',
    ]);
  });
});

describe('MllpListener: broken input', () => {
  test('stray bytes before a frame are dropped and counted', async () => {
    const { listener, port } = await start();
    const peer = await connect(port);
    peer.write('garbage\r\n');
    peer.write(frameMessage(Buffer.from('OK')));
    expect(await peer.frame()).toBe('ACK:OK');
    expect(listener.stats().strayBytes).toBe(9);
  });

  test('missing end block: the lead answers the partial frame through onFramingError, in order', async () => {
    const errors: FramingError[] = [];
    const { listener, port } = await start({
      onFramingError: (error) => {
        errors.push(error);
        return Buffer.from(`NAK:${error.kind}:${error.head.toString()}`);
      },
    });
    const peer = await connect(port);
    peer.write(Buffer.concat([frameMessage(Buffer.from('before')), Buffer.from('\x0bMSH|cut'), frameMessage(Buffer.from('after'))]));
    expect(await peer.frames_(3)).toEqual(['ACK:before', 'NAK:missing-end-block:MSH|cut', 'ACK:after']);
    expect(errors).toHaveLength(1);
    expect(listener.stats().framingErrors['missing-end-block']).toBe(1);
  });

  test('too-large frame gets a NAK, then a good frame on the same connection is answered', async () => {
    const handled: string[] = [];
    const { listener, port } = await start({
      maxFrameBytes: 1000,
      onMessage: async (frame) => {
        handled.push(frame.toString().slice(0, 10));
        return Buffer.from('ACK:good');
      },
      onFramingError: async (error) => {
        await sleep(20);
        return Buffer.from(`NAK:${error.kind}:${error.head.subarray(0, 9).toString()}`);
      },
    });
    const peer = await connect(port);
    peer.write(frameMessage(Buffer.from('MSH|big|' + 'x'.repeat(50_000))));
    peer.write(frameMessage(Buffer.from('MSH|small')));
    expect(await peer.frames_(2)).toEqual(['NAK:too-large:MSH|big|x', 'ACK:good']);
    expect(handled).toEqual(['MSH|small']);
    expect(listener.stats().framingErrors['too-large']).toBe(1);
    expect(listener.stats().connectionsOpen).toBe(1);
  });

  test('a framing handler that throws leaves no reply but the connection keeps working', async () => {
    const { port } = await start({
      onFramingError: () => {
        throw new Error('boom');
      },
    });
    const peer = await connect(port);
    peer.write(Buffer.concat([Buffer.from('\x0bcut'), frameMessage(Buffer.from('after'))]));
    expect(await peer.frame()).toBe('ACK:after');
  });

  test('connection dropped mid-frame: nothing delivered, counted as incomplete', async () => {
    const delivered: string[] = [];
    const kinds: string[] = [];
    const { listener, port } = await start({
      onMessage: async (frame) => {
        delivered.push(frame.toString());
        return undefined;
      },
      onFramingError: (e) => {
        kinds.push(e.kind);
      },
    });
    const peer = await connect(port);
    peer.write('\x0bMSH|^~\\&|half a message');
    await until(() => listener.stats().bytesIn > 0);
    peer.socket.destroy();
    await until(() => listener.stats().connectionsOpen === 0);
    expect(delivered).toEqual([]);
    expect(kinds).toEqual(['incomplete']);
    expect(listener.stats().framingErrors.incomplete).toBe(1);
  });

  test('handler that throws: onHandlerError supplies the reply', async () => {
    const { listener, port } = await start({
      onMessage: async () => {
        throw new Error('spool full');
      },
      onHandlerError: (err) => Buffer.from(`AR:${(err as Error).message}`),
    });
    const peer = await connect(port);
    peer.write(frameMessage(Buffer.from('x')));
    expect(await peer.frame()).toBe('AR:spool full');
    expect(listener.stats().handlerErrors).toBe(1);
  });
});

describe('MllpListener: connection management', () => {
  test('a peer that half-closes after sending still gets its reply, then the connection ends', async () => {
    const { listener, port } = await start({
      onMessage: async (frame) => {
        await sleep(30);
        return Buffer.from(`ACK:${frame.toString()}`);
      },
    });
    const peer = await connect(port, { allowHalfOpen: true });
    peer.socket.end(frameMessage(Buffer.from('last')));
    expect(await peer.frame()).toBe('ACK:last');
    await withTimeout(
      new Promise<void>((r) => (peer.socket.readableEnded ? r() : peer.socket.once('end', () => r()))),
      2000,
      'server end',
    );
    await until(() => listener.stats().connectionsOpen === 0);
  });

  test('idle connections are closed; a connection waiting on its handler is not idle', async () => {
    const { listener, port } = await start({
      idleTimeoutMs: 100,
      onMessage: async () => {
        await sleep(250);
        return Buffer.from('late but fine');
      },
    });
    const idle = await connect(port);
    const started = Date.now();
    await withTimeout(idle.closed, 2000, 'idle close');
    expect(Date.now() - started).toBeGreaterThanOrEqual(90);
    expect(listener.stats().idleTimeouts).toBe(1);

    const busy = await connect(port);
    busy.write(frameMessage(Buffer.from('slow')));
    expect(await busy.frame()).toBe('late but fine');
    await withTimeout(busy.closed, 2000, 'idle close after reply');
    expect(listener.stats().idleTimeouts).toBe(2);
  });

  test('maxConnections: extra connections are closed at once; the others keep working', async () => {
    const { listener, port } = await start({ maxConnections: 2 });
    const a = await connect(port);
    const b = await connect(port);
    await until(() => listener.stats().connectionsOpen === 2);
    const c = await connect(port);
    await withTimeout(c.closed, 2000, 'rejected connection close');
    expect(listener.stats().connectionsRejected).toBe(1);
    a.write(frameMessage(Buffer.from('a')));
    b.write(frameMessage(Buffer.from('b')));
    expect(await a.frame()).toBe('ACK:a');
    expect(await b.frame()).toBe('ACK:b');
    a.socket.destroy();
    await until(() => listener.stats().connectionsOpen === 1);
    const d = await connect(port);
    d.write(frameMessage(Buffer.from('d')));
    expect(await d.frame()).toBe('ACK:d');
  });

  test('keep-alive is on for accepted sockets (half-open detection)', async () => {
    const { port } = await start({ keepAliveDelayMs: 12_345 });
    // Node has no getter for SO_KEEPALIVE: watch the call.
    const spy = vi.spyOn(net.Socket.prototype, 'setKeepAlive');
    try {
      const peer = await connect(port);
      peer.write(frameMessage(Buffer.from('k')));
      await peer.frame();
      expect(spy).toHaveBeenCalledWith(true, 12_345);
    } finally {
      spy.mockRestore();
    }
  });

  test('pipelining beyond maxPendingPerConnection pauses reading; nothing is lost', async () => {
    const releases: Array<() => void> = [];
    const { listener, port } = await start({
      maxPendingPerConnection: 2,
      onMessage: async (frame) => {
        await new Promise<void>((r) => releases.push(r));
        return Buffer.from(`ACK:${frame.toString()}`);
      },
    });
    const peer = await connect(port);
    for (let i = 0; i < 40; i++) {
      peer.write(frameMessage(Buffer.from(`m${i}`)));
      await sleep(1);
    }
    await sleep(20);
    // Reading stopped after 2 pending messages (plus what one more read had already brought in).
    expect(listener.stats().messages).toBeGreaterThanOrEqual(2);
    expect(listener.stats().messages).toBeLessThan(10);
    const replies: string[] = [];
    while (replies.length < 40) {
      releases.splice(0).forEach((r) => r());
      while (peer.received > 0) {
        replies.push(await peer.frame());
      }
      await sleep(2);
    }
    expect(replies).toEqual(Array.from({ length: 40 }, (_, i) => `ACK:m${i}`));
  }, 10_000);

  test('close() is graceful: pending replies go out, then connections end and close resolves', async () => {
    const { listener, port } = await start({
      onMessage: async () => {
        await sleep(80);
        return Buffer.from('finished');
      },
    });
    const peer = await connect(port);
    peer.write(frameMessage(Buffer.from('work')));
    await until(() => listener.stats().messages === 1);
    const closing = listener.close(2000);
    expect(await peer.frame()).toBe('finished');
    await withTimeout(closing, 2000, 'listener close');
    await withTimeout(peer.closed, 2000, 'peer close');
    // No new connections after close.
    await expect(Peer.connect(port)).rejects.toThrow();
  });
});

describe('MllpListener over TLS', () => {
  let dir: string;
  let cert: Buffer;
  let key: Buffer;
  let clientCert: Buffer;
  let clientKey: Buffer;

  beforeAll(() => {
    // Node cannot issue X.509 certificates by itself; openssl is on the machine.
    dir = mkdtempSync(path.join(tmpdir(), 'mllp-tls-'));
    const make = (name: string, cn: string): void => {
      execFileSync(
        'openssl',
        ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1', '-subj', `/CN=${cn}`, '-addext', `subjectAltName=DNS:${cn},IP:127.0.0.1`, '-keyout', path.join(dir, `${name}.key`), '-out', path.join(dir, `${name}.crt`)],
        { stdio: 'ignore', timeout: 10_000 },
      );
    };
    make('server', 'localhost');
    make('client', 'lab-lis');
    cert = readFileSync(path.join(dir, 'server.crt'));
    key = readFileSync(path.join(dir, 'server.key'));
    clientCert = readFileSync(path.join(dir, 'client.crt'));
    clientKey = readFileSync(path.join(dir, 'client.key'));
  });

  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  test('messages and replies over TLS; the client verifies the server certificate', async () => {
    let info: ConnectionInfo | undefined;
    const { listener, port } = await start({
      tls: { key, cert },
      onMessage: async (frame, conn) => {
        info = conn;
        return Buffer.from(`ACK:${frame.toString()}`);
      },
    });
    const client = new MllpClient({ host: '127.0.0.1', port, tls: { ca: cert, servername: 'localhost' } });
    try {
      expect((await client.send(Buffer.from('MSH|secure'), 3000)).toString()).toBe('ACK:MSH|secure');
      expect((await client.send(Buffer.from('MSH|again'), 3000)).toString()).toBe('ACK:MSH|again');
    } finally {
      client.close();
    }
    expect(info?.tls).toBe(true);
    expect(listener.stats().connectionsTotal).toBe(1);
    // A client that does not trust the certificate cannot talk to it.
    const untrusting = new MllpClient({ host: '127.0.0.1', port, tls: { servername: 'localhost' } });
    await expect(untrusting.send(Buffer.from('x'), 3000)).rejects.toMatchObject({ name: 'MllpConnectionError' });
    untrusting.close();
  });

  test('mutual TLS: clients without a trusted certificate are refused; the CN is reported', async () => {
    let info: ConnectionInfo | undefined;
    const { listener, port } = await start({
      tls: { key, cert, ca: clientCert, requestCert: true, rejectUnauthorized: true },
      onMessage: async (frame, conn) => {
        info = conn;
        return Buffer.from(`ACK:${frame.toString()}`);
      },
    });
    const anonymous = tls.connect({ host: '127.0.0.1', port, ca: cert, servername: 'localhost' });
    anonymous.on('error', () => undefined);
    await withTimeout(new Promise((r) => anonymous.once('close', r)), 3000, 'refused client close');
    expect(info).toBeUndefined();
    expect(listener.stats().messages).toBe(0);

    const client = new MllpClient({ host: '127.0.0.1', port, tls: { ca: cert, servername: 'localhost', cert: clientCert, key: clientKey } });
    try {
      expect((await client.send(Buffer.from('MSH|mtls'), 3000)).toString()).toBe('ACK:MSH|mtls');
    } finally {
      client.close();
    }
    expect(info?.authorized).toBe(true);
    expect(info?.peerCommonName).toBe('lab-lis');
  });
});
