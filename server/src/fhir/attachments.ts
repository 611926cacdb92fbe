import { createHmac, timingSafeEqual } from 'node:crypto';

/** How long a signed Binary URL stays valid. */
const URL_LIFETIME_SECONDS = 3600;

const BINARY_REF_RE = /^Binary\/([A-Za-z0-9\-.]{1,64})$/;

/**
 * Attachment URLs for Binary content. Stored resources keep `Binary/{id}`; responses carry a signed
 * `{base}storage/{id}?Expires=..&Signature=..` URL that a browser can fetch without a bearer token,
 * as Medplum's presigned URLs allow.
 */
export class AttachmentUrls {
  private readonly baseUrl: string;
  private readonly key: Buffer;

  constructor(baseUrl: string, key: Buffer) {
    this.baseUrl = baseUrl;
    this.key = key;
  }

  /** A signed, time-limited URL for the current content of Binary/{id}. */
  sign(binaryId: string, now = Date.now()): string {
    const expires = Math.floor(now / 1000) + URL_LIFETIME_SECONDS;
    return `${this.baseUrl}storage/${binaryId}?Expires=${expires}&Signature=${this.signature(binaryId, expires)}`;
  }

  verify(binaryId: string, expires: string | undefined, signature: string | undefined, now = Date.now()): boolean {
    const exp = Number(expires);
    if (!Number.isInteger(exp) || !signature || exp < now / 1000) {
      return false;
    }
    const expected = Buffer.from(this.signature(binaryId, exp));
    const given = Buffer.from(signature);
    return expected.length === given.length && timingSafeEqual(expected, given);
  }

  /** The Binary id an inbound URL points at, when it is one of ours (FHIR URL, storage URL or `Binary/id`). */
  binaryIdOf(url: string): string | undefined {
    const local = BINARY_REF_RE.exec(url);
    if (local) {
      return local[1];
    }
    for (const prefix of [this.baseUrl + 'fhir/R4/Binary/', this.baseUrl + 'storage/']) {
      if (url.startsWith(prefix)) {
        const id = url.slice(prefix.length).split(/[?/]/)[0];
        return BINARY_REF_RE.test('Binary/' + id) ? id : undefined;
      }
    }
    return undefined;
  }

  /** Rewrites every attachment URL pointing at one of our Binaries to `Binary/{id}` (before storing). */
  toStored<T>(resource: T): T {
    walkUrls(resource, (url) => {
      const id = this.binaryIdOf(url);
      return id ? `Binary/${id}` : url;
    });
    return resource;
  }

  /** Rewrites stored `Binary/{id}` attachment URLs to signed URLs (before responding). */
  toFetchable<T>(resource: T): T {
    const now = Date.now();
    walkUrls(resource, (url) => {
      const m = BINARY_REF_RE.exec(url);
      return m ? this.sign(m[1], now) : url;
    });
    return resource;
  }

  private signature(binaryId: string, expires: number): string {
    return createHmac('sha256', this.key).update(`${binaryId}\n${expires}`).digest('base64url');
  }
}

/** Visits every `url` string property; only Attachment.url can hold a Binary reference or one of our Binary URLs. */
function walkUrls(node: unknown, rewrite: (url: string) => string): void {
  if (Array.isArray(node)) {
    for (const item of node) {
      walkUrls(item, rewrite);
    }
    return;
  }
  if (!node || typeof node !== 'object') {
    return;
  }
  const obj = node as Record<string, unknown>;
  if (typeof obj.url === 'string') {
    obj.url = rewrite(obj.url);
  }
  for (const value of Object.values(obj)) {
    if (value && typeof value === 'object') {
      walkUrls(value, rewrite);
    }
  }
}
