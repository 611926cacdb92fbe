import { OperationOutcomeError, tooManyRequests } from '@medplum/core';
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes } from 'rate-limiter-flexible';
import type { RateLimiterAbstract } from 'rate-limiter-flexible';
import type { RedisClient } from '../db/redis.ts';

export interface RateLimitConfig {
  /** API requests per minute per user or client. */
  requestsPerMinute: number;
  /** Failed sign-ins per 15 minutes per account. */
  loginFailuresPerAccount: number;
  /** Failed sign-ins per 15 minutes per client address. */
  loginFailuresPerAddress: number;
}

export type LimitName = 'requests' | 'login';

/** What a consumed point leaves; sent as Medplum's `ratelimit` header. */
export interface LimitState {
  name: LimitName;
  remaining: number;
  resetSeconds: number;
}

/**
 * Rate limits with Medplum's header (`ratelimit: "requests";r=<remaining>;t=<seconds>`). Counters
 * live in Redis when it is configured (shared by all nodes), else in this process.
 */
export class RateLimits {
  private readonly requests: RateLimiterAbstract;
  private readonly logins: RateLimiterAbstract;
  private readonly addresses: RateLimiterAbstract;

  constructor(config: RateLimitConfig, redis: RedisClient | undefined) {
    const make = (keyPrefix: string, points: number, duration: number): RateLimiterAbstract => {
      const memory = new RateLimiterMemory({ keyPrefix, points, duration });
      // Redis down must not take the API down: fall back to per-node counting.
      return redis ? new RateLimiterRedis({ storeClient: redis, useRedisPackage: true, rejectIfRedisNotReady: true, keyPrefix, points, duration, insuranceLimiter: memory }) : memory;
    };
    this.requests = make('ermis:rl:req', config.requestsPerMinute, 60);
    this.logins = make('ermis:rl:login', config.loginFailuresPerAccount, 15 * 60);
    this.addresses = make('ermis:rl:addr', config.loginFailuresPerAddress, 15 * 60);
  }

  /** Counts one API request for the key (user or client); 429 past the limit. */
  consumeRequest(key: string): Promise<LimitState> {
    return consume(this.requests, 'requests', key);
  }

  /**
   * Before checking a password, every attempt takes a point from the account and the address (so
   * that parallel guesses cannot all pass a check made before any of them failed); 429 when either
   * is used up. A success gives the points back.
   */
  async beginLogin(account: string, address: string): Promise<void> {
    await consume(this.logins, 'login', account);
    await consume(this.addresses, 'login', address).catch(async (err: unknown) => {
      await this.logins.reward(account, 1);
      throw err;
    });
  }

  /** A successful sign-in clears the account's failures and returns the address's point. */
  async succeededLogin(account: string, address: string): Promise<void> {
    await this.logins.delete(account);
    await this.addresses.reward(address, 1);
  }
}

async function consume(limiter: RateLimiterAbstract, name: LimitName, key: string): Promise<LimitState> {
  try {
    const res = await limiter.consume(key);
    return { name, remaining: res.remainingPoints, resetSeconds: Math.ceil(res.msBeforeNext / 1000) };
  } catch (err) {
    if (err instanceof RateLimiterRes) {
      throw new RateLimitExceeded({ name, remaining: 0, resetSeconds: Math.ceil(err.msBeforeNext / 1000) });
    }
    throw err;
  }
}

export function rateLimitHeader(state: LimitState): string {
  return `"${state.name}";r=${state.remaining};t=${state.resetSeconds}`;
}

/** 429 with the state, so the HTTP layer can send `ratelimit` and `Retry-After`. */
export class RateLimitExceeded extends OperationOutcomeError {
  readonly state: LimitState;
  constructor(state: LimitState) {
    super(tooManyRequests);
    this.state = state;
  }
}
