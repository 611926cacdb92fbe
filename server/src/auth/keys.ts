import { randomUUID } from 'node:crypto';
import { exportJWK, generateKeyPair, importJWK, jwtVerify, SignJWT } from 'jose';
import type { CryptoKey, JWK, JWTPayload } from 'jose';
import type pg from 'pg';

/** The algorithms whose signatures are accepted. `none` and HMAC are never accepted. */
const ACCEPTED_ALGS = ['ES256', 'RS256'];
/** Verified tokens kept (about 1 KB each); the cache is emptied when full. */
const VERIFIED_CACHE_MAX = 10_000;

interface LoadedKey {
  kid: string;
  alg: string;
  publicJwk: JWK;
  publicKey: CryptoKey | Uint8Array;
  privateKey: CryptoKey | Uint8Array;
}

/**
 * The server's token signing keys, kept in Postgres so that every node and every restart signs
 * and verifies with the same keys. An ES256 key is generated on first start.
 */
export class SigningKeys {
  private readonly keys: LoadedKey[];
  readonly issuer: string;

  private constructor(keys: LoadedKey[], issuer: string) {
    this.keys = keys;
    this.issuer = issuer;
  }

  static async load(pool: pg.Pool, issuer: string): Promise<SigningKeys> {
    const client = await pool.connect();
    try {
      await client.query('BEGIN');
      // Several nodes may start at once: one generates, the others wait and read its key.
      await client.query("SELECT pg_advisory_xact_lock(hashtext('ermis.signing_key'))");
      const existing = await client.query('SELECT 1 FROM signing_key WHERE active LIMIT 1');
      if (existing.rows.length === 0) {
        const { publicKey, privateKey } = await generateKeyPair('ES256', { extractable: true });
        const kid = randomUUID();
        await client.query('INSERT INTO signing_key (kid, alg, public_jwk, private_jwk) VALUES ($1, $2, $3, $4)', [
          kid,
          'ES256',
          await exportJWK(publicKey),
          await exportJWK(privateKey),
        ]);
      }
      const { rows } = await client.query<{ kid: string; alg: string; public_jwk: JWK; private_jwk: JWK }>(
        'SELECT kid, alg, public_jwk, private_jwk FROM signing_key WHERE active ORDER BY created DESC'
      );
      await client.query('COMMIT');
      const keys = await Promise.all(
        rows.map(async (row) => ({
          kid: row.kid,
          alg: row.alg,
          publicJwk: { ...row.public_jwk, kid: row.kid, alg: row.alg, use: 'sig' },
          publicKey: await importJWK(row.public_jwk, row.alg),
          privateKey: await importJWK(row.private_jwk, row.alg),
        }))
      );
      return new SigningKeys(keys, issuer);
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw err;
    } finally {
      client.release();
    }
  }

  /** Signs claims with the newest key; `iss`, `iat` and `exp` are set here. */
  async sign(claims: JWTPayload, lifetimeSeconds: number): Promise<string> {
    const key = this.keys[0];
    const now = Math.floor(Date.now() / 1000);
    return new SignJWT({ ...claims })
      .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: 'JWT' })
      .setIssuer(this.issuer)
      .setIssuedAt(now)
      .setNotBefore(now - 5)
      .setExpirationTime(now + lifetimeSeconds)
      .sign(key.privateKey);
  }

  /**
   * Tokens already verified, until they expire: a client sends the same token with every request,
   * and an ECDSA verification costs about a tenth of a simple request's CPU. Revocation is not
   * affected: the session checks the login on every request.
   */
  private readonly verified = new Map<string, JWTPayload>();

  /** Verifies signature (by `kid`), algorithm, issuer and expiry; throws on any failure. */
  async verify(token: string): Promise<JWTPayload> {
    const known = this.verified.get(token);
    if (known) {
      if ((known.exp ?? 0) * 1000 > Date.now()) {
        return known;
      }
      this.verified.delete(token);
    }
    const payload = await this.verifySignature(token);
    if (this.verified.size >= VERIFIED_CACHE_MAX) {
      this.verified.clear();
    }
    // Access tokens come with every request; other tokens are presented once.
    if (payload.token_use === 'access' && typeof payload.exp === 'number') {
      this.verified.set(token, Object.freeze(payload));
    }
    return payload;
  }

  private async verifySignature(token: string): Promise<JWTPayload> {
    const { payload } = await jwtVerify(
      token,
      async (header) => {
        const key = this.keys.find((k) => k.kid === header.kid);
        if (!key || header.alg !== key.alg) {
          throw new Error('Unknown signing key');
        }
        return key.publicKey;
      },
      { issuer: this.issuer, algorithms: ACCEPTED_ALGS }
    );
    return payload;
  }

  jwks(): { keys: JWK[] } {
    return { keys: this.keys.map((k) => k.publicJwk) };
  }
}
