import { createHmac, timingSafeEqual } from 'node:crypto';

/** How long a signed Binary URL stays valid. */
const URL_LIFETIME_SECONDS = 3600;

const ID = '[A-Za-z0-9\\-.]{1,64}';
const BINARY_REF_RE = new RegExp(`^Binary/(${ID})$`);

/** What a signed URL names: one version of one Binary. */
export interface BinaryVersion {
  id: string;
  versionId: string;
}

/**
 * Attachment URLs for Binary content. Stored resources keep `Binary/{id}`; responses carry a signed
 * `{base}storage/{id}/{versionId}?Expires=..&Signature=..` URL that a browser can fetch without a
 * bearer token, as Medplum's presigned URLs allow. Only Binaries the reader may read are signed.
 */
export class AttachmentUrls {
  private readonly baseUrl: string;
  private readonly key: Buffer;

  constructor(baseUrl: string, key: Buffer) {
    this.baseUrl = baseUrl;
    this.key = key;
  }

  /** A signed, time-limited URL for one Binary version. */
  sign(binary: BinaryVersion, now = Date.now()): string {
    const expires = Math.floor(now / 1000) + URL_LIFETIME_SECONDS;
    return `${this.baseUrl}storage/${binary.id}/${binary.versionId}?Expires=${expires}&Signature=${this.signature(binary, expires)}`;
  }

  verify(binary: BinaryVersion, expires: string | undefined, signature: string | undefined, now = Date.now()): boolean {
    const exp = Number(expires);
    if (!Number.isInteger(exp) || !signature || exp < now / 1000) {
      return false;
    }
    const expected = Buffer.from(this.signature(binary, exp));
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
    walkAttachmentUrls(resource, (url) => {
      const id = this.binaryIdOf(url);
      return id ? `Binary/${id}` : url;
    });
    return resource;
  }

  /** The Binary ids the resource's attachments refer to (`Binary/{id}`). */
  referencedBinaries(resource: unknown): string[] {
    const ids = new Set<string>();
    walkAttachmentUrls(resource, (url) => {
      const m = BINARY_REF_RE.exec(url);
      if (m) {
        ids.add(m[1]);
      }
      return url;
    });
    return [...ids];
  }

  /**
   * Rewrites stored `Binary/{id}` attachment URLs to signed URLs (before responding). `readable` maps
   * the ids the reader may read to their current version; other references stay as they are.
   */
  toFetchable<T>(resource: T, readable: ReadonlyMap<string, string>): T {
    const now = Date.now();
    walkAttachmentUrls(resource, (url) => {
      const m = BINARY_REF_RE.exec(url);
      const versionId = m ? readable.get(m[1]) : undefined;
      return m && versionId ? this.sign({ id: m[1], versionId }, now) : url;
    });
    return resource;
  }

  private signature(binary: BinaryVersion, expires: number): string {
    return createHmac('sha256', this.key).update(`${binary.id}\n${binary.versionId}\n${expires}`).digest('base64url');
  }
}

/**
 * Visits the `url` of every Attachment-shaped object: one that also has a contentType, title, size,
 * hash, creation, language or data. (Other `url` elements — Extension.url, Bundle.entry.request.url,
 * canonical URLs — have none of those and are left alone.)
 */
function walkAttachmentUrls(node: unknown, rewrite: (url: string) => string): void {
  if (Array.isArray(node)) {
    for (const item of node) {
      walkAttachmentUrls(item, rewrite);
    }
    return;
  }
  if (!node || typeof node !== 'object') {
    return;
  }
  const obj = node as Record<string, unknown>;
  if (typeof obj.url === 'string' && isAttachmentShaped(obj)) {
    obj.url = rewrite(obj.url);
  }
  for (const value of Object.values(obj)) {
    if (value && typeof value === 'object') {
      walkAttachmentUrls(value, rewrite);
    }
  }
}

const ATTACHMENT_KEYS = ['contentType', 'title', 'size', 'hash', 'creation', 'language', 'data'];

function isAttachmentShaped(obj: Record<string, unknown>): boolean {
  return ATTACHMENT_KEYS.some((key) => key in obj) && !('resourceType' in obj);
}
