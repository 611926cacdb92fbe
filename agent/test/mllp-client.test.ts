import net from 'node:net';
import { afterEach, describe, expect, test } from 'vitest';
import { MllpClient, MllpClientPool, MllpConnectionError, MllpTimeoutError, parseMllpUrl } from '../src/mllp/client.ts';
import { MllpFramer } from '../src/mllp/framer.ts';
import { frameMessage } from '../src/mllp/frame.ts';
import { MllpListener } from '../src/mllp/listener.ts';
import type { MllpListenerOptions } from '../src/mllp/listener.ts';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) {
    await c();
  }
});

async function listener(options: Partial<MllpListenerOptions> = {}): Promise<{ l: MllpListener; port: number }> {
  const l = new MllpListener({ host: '127.0.0.1', port: 0, onMessage: async (f) => Buffer.from(`ACK:${f.toString()}`), ...options });
  const { port } = await l.listen();
  cleanups.push(() => l.close(500));
  return { l, port };
}

/** A scripted raw server: onFrame(frameText, socket, connectionIndex). */
async function rawServer(onFrame: (text: string, socket: net.Socket, conn: number) => void): Promise<{ port: number; connections: () => number; frames: string[] }> {
  let conns = 0;
  const frames: string[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    const index = conns++;
    sockets.add(socket);
    socket.on('error', () => undefined);
    const framer = new MllpFramer({
      onFrame: (f) => {
        frames.push(f.toString());
        onFrame(f.toString(), socket, index);
      },
    });
    socket.on('data', (c: Buffer) => framer.push(c));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  cleanups.push(
    () =>
      new Promise<void>((r) => {
        for (const s of sockets) {
          s.destroy();
        }
        server.close(() => r());
      }),
  );
  return { port: (server.address() as net.AddressInfo).port, connections: () => conns, frames };
}

function client(options: ConstructorParameters<typeof MllpClient>[0]): MllpClient {
  const c = new MllpClient(options);
  cleanups.push(() => c.close());
  return c;
}

describe('MllpClient', () => {
  test('sends and returns the reply frame; the connection is reused', async () => {
    const { l, port } = await listener();
    const c = client({ host: '127.0.0.1', port });
    expect((await c.send(Buffer.from('one'), 2000)).toString()).toBe('ACK:one');
    expect((await c.send(Buffer.from('two'), 2000)).toString()).toBe('ACK:two');
    expect(c.connectionsOpened).toBe(1);
    expect(l.stats().connectionsTotal).toBe(1);
    expect(c.connected).toBe(true);
  });

  test('concurrent sends go one at a time on the connection and get their own replies', async () => {
    let inFlight = 0;
    let maxInFlight = 0;
    const { port } = await listener({
      onMessage: async (f) => {
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        await sleep(10);
        inFlight--;
        return Buffer.from(`ACK:${f.toString()}`);
      },
    });
    const c = client({ host: '127.0.0.1', port });
    const replies = await Promise.all(['a', 'b', 'c', 'd'].map((m) => c.send(Buffer.from(m), 2000)));
    expect(replies.map((r) => r.toString())).toEqual(['ACK:a', 'ACK:b', 'ACK:c', 'ACK:d']);
    expect(maxInFlight).toBe(1);
  });

  test('keepAlive false: a new connection per message', async () => {
    const { l, port } = await listener();
    const c = client({ host: '127.0.0.1', port, keepAlive: false });
    await c.send(Buffer.from('1'), 2000);
    await c.send(Buffer.from('2'), 2000);
    expect(c.connectionsOpened).toBe(2);
    expect(l.stats().connectionsTotal).toBe(2);
  });

  test('reply timeout: typed error, the connection is dropped, a late reply is not mistaken for the next one', async () => {
    const server = await rawServer((text, socket) => {
      const delay = text === 'slow' ? 300 : 0;
      setTimeout(() => socket.write(frameMessage(Buffer.from(`ACK:${text}`))), delay);
    });
    const c = client({ host: '127.0.0.1', port: server.port });
    const started = Date.now();
    const err = await c.send(Buffer.from('slow'), 100).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MllpTimeoutError);
    expect((err as MllpTimeoutError).phase).toBe('reply');
    expect(Date.now() - started).toBeLessThan(1000);
    expect(c.connected).toBe(false);
    expect((await c.send(Buffer.from('fast'), 2000)).toString()).toBe('ACK:fast');
    expect(server.connections()).toBe(2);
  });

  test('connection refused: MllpConnectionError with ECONNREFUSED', async () => {
    const probe = net.createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', () => r()));
    const port = (probe.address() as net.AddressInfo).port;
    await new Promise<void>((r) => probe.close(() => r()));
    const c = client({ host: '127.0.0.1', port });
    const err = await c.send(Buffer.from('x'), 2000).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MllpConnectionError);
    expect((err as MllpConnectionError).code).toBe('ECONNREFUSED');
  });

  test('connect timeout (a TLS server that never answers the handshake)', async () => {
    const server = await rawServer(() => undefined);
    const c = client({ host: '127.0.0.1', port: server.port, tls: { rejectUnauthorized: false }, connectTimeoutMs: 100 });
    const err = await c.send(Buffer.from('x'), 2000).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MllpTimeoutError);
    expect((err as MllpTimeoutError).phase).toBe('connect');
  });

  test('the server closing a fresh connection without a reply: MllpConnectionError, no retry', async () => {
    const server = await rawServer((_text, socket) => socket.destroy());
    const c = client({ host: '127.0.0.1', port: server.port });
    await expect(c.send(Buffer.from('x'), 2000)).rejects.toBeInstanceOf(MllpConnectionError);
    expect(server.connections()).toBe(1);
  });

  test('a reused connection closed by the server before replying is retried once on a new one', async () => {
    const server = await rawServer((text, socket, conn) => {
      if (conn === 0 && text === 'second') {
        socket.destroy();
        return;
      }
      socket.write(frameMessage(Buffer.from(`ACK:${text}`)));
    });
    const c = client({ host: '127.0.0.1', port: server.port });
    expect((await c.send(Buffer.from('first'), 2000)).toString()).toBe('ACK:first');
    expect((await c.send(Buffer.from('second'), 2000)).toString()).toBe('ACK:second');
    expect(server.connections()).toBe(2);
    expect(server.frames).toEqual(['first', 'second', 'second']);
  });

  test('awaitApplicationAck skips the commit ACK; without it the CA is the reply', async () => {
    const server = await rawServer((text, socket) => {
      const id = text.split('|')[9];
      socket.write(frameMessage(Buffer.from(`MSH|^~\\&|B||A||20240101||ACK^R01^ACK|c${id}|P|2.5.1\rMSA|CA|${id}`)));
      setTimeout(() => socket.write(frameMessage(Buffer.from(`MSH|^~\\&|B||A||20240101||ACK^R01^ACK|a${id}|P|2.5.1\rMSA|AA|${id}`))), 20);
    });
    const msg = (id: string): Buffer => Buffer.from(`MSH|^~\\&|A||B||20240101||ORU^R01|${id}|P|2.5.1|||AL|AL`);
    const c = client({ host: '127.0.0.1', port: server.port, keepAlive: false });
    const app = await c.send(msg('M1'), 2000, { awaitApplicationAck: true });
    expect(app.toString()).toContain('MSA|AA|M1');
    const commit = await c.send(msg('M2'), 2000);
    expect(commit.toString()).toContain('MSA|CA|M2');
  });

  test('a frame from the server while nothing is in flight is dropped and counted', async () => {
    const server = await rawServer((text, socket) => {
      socket.write(frameMessage(Buffer.from(`ACK:${text}`)));
      setTimeout(() => socket.write(frameMessage(Buffer.from('unsolicited'))), 10);
    });
    const c = client({ host: '127.0.0.1', port: server.port });
    expect((await c.send(Buffer.from('a'), 2000)).toString()).toBe('ACK:a');
    await sleep(50);
    expect(c.unsolicitedFrames).toBe(1);
    expect((await c.send(Buffer.from('b'), 2000)).toString()).toBe('ACK:b');
  });

  test('idle connections are closed after idleTimeoutMs and reopened on demand', async () => {
    const { l, port } = await listener();
    const c = client({ host: '127.0.0.1', port, idleTimeoutMs: 50 });
    await c.send(Buffer.from('1'), 2000);
    expect(c.connected).toBe(true);
    await sleep(120);
    expect(c.connected).toBe(false);
    await c.send(Buffer.from('2'), 2000);
    expect(l.stats().connectionsTotal).toBe(2);
  });
});

describe('MllpClientPool', () => {
  test('reuses one connection per host:port and keeps destinations apart', async () => {
    const a = await listener({ onMessage: async (f) => Buffer.from(`A:${f.toString()}`) });
    const b = await listener({ onMessage: async (f) => Buffer.from(`B:${f.toString()}`) });
    const pool = new MllpClientPool();
    cleanups.push(() => pool.close());
    expect((await pool.send('127.0.0.1', a.port, Buffer.from('1'), 2000)).toString()).toBe('A:1');
    expect((await pool.send('127.0.0.1', a.port, Buffer.from('2'), 2000)).toString()).toBe('A:2');
    expect((await pool.sendToUrl(`mllp://127.0.0.1:${b.port}`, Buffer.from('3'), 2000)).toString()).toBe('B:3');
    expect(a.l.stats().connectionsTotal).toBe(1);
    expect(b.l.stats().connectionsTotal).toBe(1);
    expect(pool.openConnections).toBe(2);
  });

  test('maxConnectionsPerKey opens parallel connections for concurrent messages', async () => {
    const { l, port } = await listener({
      onMessage: async (f) => {
        await sleep(30);
        return Buffer.from(`ACK:${f.toString()}`);
      },
    });
    const pool = new MllpClientPool({ maxConnectionsPerKey: 2 });
    cleanups.push(() => pool.close());
    const replies = await Promise.all(['1', '2', '3', '4'].map((m) => pool.send('127.0.0.1', port, Buffer.from(m), 2000)));
    expect(replies.map((r) => r.toString())).toEqual(['ACK:1', 'ACK:2', 'ACK:3', 'ACK:4']);
    expect(l.stats().connectionsTotal).toBe(2);
    expect(pool.clientsFor('127.0.0.1', port)).toHaveLength(2);
  });

  test('timeouts reject with MllpTimeoutError; keepAlive false and maxIdleMs close connections', async () => {
    const silent = await rawServer(() => undefined);
    const pool = new MllpClientPool({ keepAlive: false });
    cleanups.push(() => pool.close());
    await expect(pool.send('127.0.0.1', silent.port, Buffer.from('x'), 80)).rejects.toBeInstanceOf(MllpTimeoutError);

    const { port } = await listener();
    await pool.send('127.0.0.1', port, Buffer.from('y'), 2000);
    expect(pool.openConnections).toBe(0);

    const idlePool = new MllpClientPool({ maxIdleMs: 50 });
    cleanups.push(() => idlePool.close());
    await idlePool.send('127.0.0.1', port, Buffer.from('z'), 2000);
    expect(idlePool.openConnections).toBe(1);
    await sleep(120);
    expect(idlePool.openConnections).toBe(0);
  });

  test('parseMllpUrl', () => {
    expect(parseMllpUrl('mllp://lab.example:2576')).toEqual({ host: 'lab.example', port: 2576 });
    expect(parseMllpUrl('mllp://10.0.0.5')).toEqual({ host: '10.0.0.5', port: 2575 });
    expect(parseMllpUrl('mllp://[::1]:3000')).toEqual({ host: '::1', port: 3000 });
    expect(() => parseMllpUrl('http://x:1')).toThrow(/mllp/);
  });
});

describe('MllpClient.close', () => {
  test('close() fails the message in flight and the queued ones without reconnecting; later sends reconnect', async () => {
    const server = await rawServer((text, socket) => {
      if (text !== 'hang') {
        socket.write(frameMessage(Buffer.from(`ACK:${text}`)));
      }
    });
    const c = client({ host: '127.0.0.1', port: server.port });
    await c.send(Buffer.from('warm'), 2000);
    const inFlight = c.send(Buffer.from('hang'), 2000);
    const queued = c.send(Buffer.from('queued'), 2000);
    await sleep(20);
    c.close();
    await expect(inFlight).rejects.toBeInstanceOf(MllpConnectionError);
    await expect(queued).rejects.toBeInstanceOf(MllpConnectionError);
    expect(server.frames).toEqual(['warm', 'hang']);
    expect(server.connections()).toBe(1);
    expect((await c.send(Buffer.from('again'), 2000)).toString()).toBe('ACK:again');
    expect(server.connections()).toBe(2);
  });
});
