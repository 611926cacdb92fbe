/**
 * HTTP for the load: an undici connection pool per target (keep-alive, no pipelining), a bearer
 * token when there is one, and a typed error for any status other than the one expected.
 */
import { Pool } from 'undici';

export class UnexpectedStatus extends Error {
  readonly status: number;
  constructor(method: string, path: string, status: number, body: string) {
    super(`${method} ${path.split('?')[0]} → ${status} ${body.slice(0, 200)}`);
    this.status = status;
  }
}

export interface HttpResponse {
  status: number;
  text: string;
}

export class HttpTarget {
  private readonly pool: Pool;
  private readonly basePath: string;
  private readonly authorization: string | undefined;

  /** `baseUrl`: e.g. http://127.0.0.1:8103/fhir/R4/ (paths are relative to it). */
  constructor(baseUrl: string, connections: number, token?: string) {
    const url = new URL(baseUrl);
    this.pool = new Pool(url.origin, { connections, pipelining: 1, headersTimeout: 120_000, bodyTimeout: 120_000 });
    this.basePath = url.pathname.endsWith('/') ? url.pathname : `${url.pathname}/`;
    this.authorization = token ? `Bearer ${token}` : undefined;
  }

  /** Sends one request; throws UnexpectedStatus unless the status is one of `expect`. */
  async request(method: string, path: string, body?: unknown, expect: number[] = [200, 201]): Promise<HttpResponse> {
    const headers: Record<string, string> = { accept: 'application/fhir+json' };
    if (this.authorization) {
      headers.authorization = this.authorization;
    }
    let payload: string | undefined;
    if (body !== undefined) {
      headers['content-type'] = 'application/fhir+json';
      payload = typeof body === 'string' ? body : JSON.stringify(body);
    }
    const response = await this.pool.request({ method: method as 'GET', path: this.basePath + path, headers, body: payload });
    const text = await response.body.text();
    if (!expect.includes(response.statusCode)) {
      throw new UnexpectedStatus(method, path, response.statusCode, text);
    }
    return { status: response.statusCode, text };
  }

  async json<T>(method: string, path: string, body?: unknown, expect?: number[]): Promise<T> {
    return JSON.parse((await this.request(method, path, body, expect)).text) as T;
  }

  close(): Promise<void> {
    return this.pool.close();
  }
}
