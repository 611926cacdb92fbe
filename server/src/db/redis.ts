import { createClient } from 'redis';
import type { RedisClientType } from 'redis';

export type RedisClient = RedisClientType;

/**
 * Connects to Redis when REDIS_URL is set. A single node needs no Redis; several nodes use it for
 * pub/sub fan-out and caches (later issues). Connection problems are reported by the health check,
 * not thrown at start, and the client keeps reconnecting.
 */
export function connectRedis(url: string): RedisClient {
  const client: RedisClient = createClient({
    url,
    socket: { connectTimeout: 2000, reconnectStrategy: (retries) => Math.min(retries * 200, 5000) },
  });
  client.on('error', () => undefined); // reconnects by itself; health shows the state
  client.connect().catch(() => undefined);
  return client;
}

/** True when Redis answers PING within the timeout. */
export async function pingRedis(client: RedisClient, timeoutMs = 1000): Promise<boolean> {
  if (!client.isReady) {
    return false;
  }
  try {
    const pong = await Promise.race([
      client.ping(),
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error('timeout')), timeoutMs)),
    ]);
    return pong === 'PONG';
  } catch {
    return false;
  }
}
