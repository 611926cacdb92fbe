import path from 'node:path';

/** Server configuration, read once from the environment (see README, "Configuration"). */
export interface ServerConfig {
  port: number;
  host: string;
  /** Public base URL, always with a trailing slash. */
  baseUrl: string;
  /** Postgres connection string; undefined means "start embedded Postgres under dataDir". */
  databaseUrl: string | undefined;
  redisUrl: string | undefined;
  dataDir: string;
  logLevel: string;
  /** Largest accepted FHIR JSON body, in bytes. */
  maxJsonBytes: number;
  /** Largest accepted raw Binary body, in bytes. */
  maxBinaryBytes: number;
  databasePoolSize: number;
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): ServerConfig {
  const port = parsePort(env.PORT, 8103);
  const baseUrl = withTrailingSlash(env.BASE_URL ?? `http://localhost:${port}/`);
  return {
    port,
    host: env.HOST ?? '0.0.0.0',
    baseUrl,
    databaseUrl: env.DATABASE_URL || undefined,
    redisUrl: env.REDIS_URL || undefined,
    dataDir: path.resolve(env.DATA_DIR ?? '.data'),
    logLevel: env.LOG_LEVEL ?? 'info',
    maxJsonBytes: parseBytes(env.MAX_JSON_BYTES, 16 * 1024 * 1024),
    maxBinaryBytes: parseBytes(env.MAX_BINARY_BYTES, 64 * 1024 * 1024),
    databasePoolSize: parsePositiveInt(env.DATABASE_POOL_SIZE, 16),
  };
}

function withTrailingSlash(url: string): string {
  return url.endsWith('/') ? url : url + '/';
}

function parsePort(value: string | undefined, fallback: number): number {
  if (value === undefined || value === '') {
    return fallback;
  }
  const port = Number(value);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`Invalid port: ${value}`);
  }
  return port;
}

function parsePositiveInt(value: string | undefined, fallback: number): number {
  if (value === undefined || value === '') {
    return fallback;
  }
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) {
    throw new Error(`Expected a positive integer, got: ${value}`);
  }
  return n;
}

function parseBytes(value: string | undefined, fallback: number): number {
  return parsePositiveInt(value, fallback);
}
