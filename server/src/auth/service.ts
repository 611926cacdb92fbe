import type { RepositoryServices } from '../fhir/repo/postgres-repository.ts';
import type { RedisClient } from '../db/redis.ts';
import { AuditLog } from './audit.ts';
import type { AuditVolume } from './audit.ts';
import { Clients } from './clients.ts';
import { Directory } from './directory.ts';
import { SigningKeys } from './keys.ts';
import { LoginStore } from './logins.ts';
import { RateLimits } from './rate-limit.ts';
import type { RateLimitConfig } from './rate-limit.ts';
import { Sessions } from './sessions.ts';
import { TokenIssuer } from './tokens.ts';

export interface AuthConfig {
  baseUrl: string;
  /** Where the login page lives (`{appBaseUrl}oauth`). */
  appBaseUrl: string;
  /** Whether anyone may register a user and create a project (`/auth/newuser`, `/auth/newproject`). */
  registrationEnabled: boolean;
  rateLimits: RateLimitConfig;
  auditEvents: AuditVolume;
}

/** Everything authentication needs, shared by the auth routes and the FHIR routes. */
export interface AuthServices {
  config: AuthConfig;
  keys: SigningKeys;
  logins: LoginStore;
  directory: Directory;
  sessions: Sessions;
  clients: Clients;
  tokens: TokenIssuer;
  rateLimits: RateLimits;
  audit: AuditLog;
  firstProjectId: string;
  close(): Promise<void>;
}

export async function createAuthServices(
  base: RepositoryServices,
  config: AuthConfig,
  projects: { systemProjectId: string; firstProjectId: string },
  redis: RedisClient | undefined
): Promise<AuthServices> {
  const keys = await SigningKeys.load(base.pool, config.baseUrl);
  const logins = new LoginStore(base.pool);
  const directory = new Directory(base, projects.systemProjectId);
  const audit = new AuditLog(directory, config.baseUrl, config.auditEvents);
  return {
    config,
    keys,
    logins,
    directory,
    sessions: new Sessions(directory, logins, keys),
    clients: new Clients(directory, `${config.baseUrl}oauth2/token`),
    tokens: new TokenIssuer(keys, `${config.baseUrl}fhir/R4/`),
    rateLimits: new RateLimits(config.rateLimits, redis),
    audit,
    firstProjectId: projects.firstProjectId,
    close: () => audit.close(),
  };
}
