import { createServer } from 'node:net';

const given = new Set<number>();

/** A port free on 127.0.0.1 that this process has not handed out before (the kernel may offer a just-closed one again). */
export async function freePort(): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const server = createServer();
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => {
        const address = server.address();
        server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
      });
    });
    if (!given.has(port)) {
      given.add(port);
      return port;
    }
  }
}
