import path from 'node:path';

/** Server configuration, read once from the environment (see README, "Configuration"). */
export interface ServerConfig {
  /** Server processes sharing the port (node:cluster); more than one needs REDIS_URL. */
  workers: number;
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
  /** The first admin's sign-in; without a password one is generated at first start and printed once. */
  adminEmail: string;
  adminPassword: string | undefined;
  firstProjectName: string;
  /** Where the app (and its OAuth login page) is served; by default the server itself. */
  appBaseUrl: string;
  /** Whether anyone may register and create projects (/auth/newuser, /auth/newproject). */
  registrationEnabled: boolean;
  requestsPerMinute: number;
  loginFailuresPerAccount: number;
  loginFailuresPerAddress: number;
  /** Fastify's trustProxy: false, true, or the proxies' addresses (comma-separated, CIDR allowed). */
  trustProxy: boolean | string[];
  /** Jobs (subscription deliveries, bot runs) this node runs at once; 0 runs none (another node does). */
  jobWorkers: number;
  /** First retry delay of a failed job (doubles per attempt, at most an hour). */
  jobRetryBaseMs: number;
  /** How long a claimed job is its node's before another node may take it (a crashed node's jobs wait this long). */
  jobLeaseSeconds: number;
  /** How long a subscription endpoint may take to answer. */
  subscriptionTimeoutMs: number;
  /** Wall-clock limit of a bot execution (Bot.timeout, in seconds, overrides it per bot). */
  botTimeoutMs: number;
  /** Heap limit of a bot execution's process. */
  botMemoryMb: number;
  /** Bot executions at once on this node, and bot processes at most. */
  botConcurrency: number;
  /** How long an idle bot process is kept for the bot's next execution; 0: a new process per execution. */
  botIdleMs: number;
  /** How often cron bots are looked at. */
  cronTickMs: number;
  /** Private hosts/addresses/ranges outbound calls may reach (public ones always may). */
  outboundAllowedHosts: string[];
  /** Default AuditEvent volume for projects without their own setting. */
  auditEvents: 'all' | 'writes' | 'logins' | 'none';
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): ServerConfig {
  const port = parsePort(env.PORT, 8103);
  const baseUrl = withTrailingSlash(env.BASE_URL ?? `http://localhost:${port}/`);
  return {
    port,
    workers: parsePositiveInt(env.SERVER_WORKERS, 1),
    host: env.HOST ?? '0.0.0.0',
    baseUrl,
    databaseUrl: env.DATABASE_URL || undefined,
    redisUrl: env.REDIS_URL || undefined,
    dataDir: path.resolve(env.DATA_DIR ?? '.data'),
    logLevel: env.LOG_LEVEL ?? 'info',
    maxJsonBytes: parseBytes(env.MAX_JSON_BYTES, 16 * 1024 * 1024),
    maxBinaryBytes: parseBytes(env.MAX_BINARY_BYTES, 64 * 1024 * 1024),
    databasePoolSize: parsePositiveInt(env.DATABASE_POOL_SIZE, 16),
    adminEmail: env.ADMIN_EMAIL || 'admin@example.com',
    adminPassword: env.ADMIN_PASSWORD || undefined,
    firstProjectName: env.FIRST_PROJECT_NAME || 'ermis',
    appBaseUrl: withTrailingSlash(env.APP_BASE_URL || baseUrl),
    registrationEnabled: parseBoolean(env.REGISTRATION_ENABLED, false),
    requestsPerMinute: parsePositiveInt(env.RATE_LIMIT_REQUESTS_PER_MINUTE, 6000),
    loginFailuresPerAccount: parsePositiveInt(env.LOGIN_FAILURES_PER_ACCOUNT, 10),
    loginFailuresPerAddress: parsePositiveInt(env.LOGIN_FAILURES_PER_ADDRESS, 100),
    jobWorkers: parseNonNegativeInt(env.JOB_WORKERS, 4),
    jobRetryBaseMs: parsePositiveInt(env.JOB_RETRY_BASE_MS, 1000),
    subscriptionTimeoutMs: parsePositiveInt(env.SUBSCRIPTION_TIMEOUT_MS, 30_000),
    jobLeaseSeconds: parsePositiveInt(env.JOB_LEASE_SECONDS, 90),
    botTimeoutMs: parsePositiveInt(env.BOT_TIMEOUT_MS, 30_000),
    botMemoryMb: parsePositiveInt(env.BOT_MEMORY_MB, 256),
    botConcurrency: parsePositiveInt(env.BOT_CONCURRENCY, 4),
    botIdleMs: parseNonNegativeInt(env.BOT_IDLE_MS, 30_000),
    cronTickMs: parsePositiveInt(env.CRON_TICK_MS, 10_000),
    outboundAllowedHosts: (env.OUTBOUND_ALLOWED_HOSTS ?? '').split(',').map((h) => h.trim()).filter(Boolean),
    trustProxy: !env.TRUST_PROXY || env.TRUST_PROXY === 'false' ? false : env.TRUST_PROXY === 'true' ? true : env.TRUST_PROXY.split(',').map((a) => a.trim()),
    auditEvents: parseChoice(env.AUDIT_EVENTS, ['all', 'writes', 'logins', 'none'] as const, 'all'),
  };
}

function parseNonNegativeInt(value: string | undefined, fallback: number): number {
  return value === '0' ? 0 : parsePositiveInt(value, fallback);
}

function parseBoolean(value: string | undefined, fallback: boolean): boolean {
  if (value === undefined || value === '') {
    return fallback;
  }
  if (!['true', 'false'].includes(value)) {
    throw new Error(`Expected true or false, got: ${value}`);
  }
  return value === 'true';
}

function parseChoice<T extends string>(value: string | undefined, choices: readonly T[], fallback: T): T {
  if (value === undefined || value === '') {
    return fallback;
  }
  if (!choices.includes(value as T)) {
    throw new Error(`Expected one of ${choices.join(', ')}, got: ${value}`);
  }
  return value as T;
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
