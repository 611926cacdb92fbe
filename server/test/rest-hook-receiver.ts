import { createServer } from 'node:http';
import type { IncomingHttpHeaders, Server } from 'node:http';
import { until } from './harness.ts';

export interface Delivery {
  headers: IncomingHttpHeaders;
  body: string;
  status: number;
}

/**
 * A rest-hook endpoint on 127.0.0.1 for tests: records every request and answers with the next
 * status of `responses` (then `fallback`).
 */
export class RestHookReceiver {
  readonly deliveries: Delivery[] = [];
  responses: number[] = [];
  fallback = 200;
  private server: Server | undefined;
  url = '';

  async start(): Promise<void> {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const status = this.responses.shift() ?? this.fallback;
        this.deliveries.push({ headers: req.headers, body: Buffer.concat(chunks).toString('utf8'), status });
        res.writeHead(status).end();
      });
    });
    await new Promise<void>((resolve) => this.server?.listen(0, '127.0.0.1', resolve));
    const address = this.server.address();
    this.url = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}/hook`;
  }

  async stop(): Promise<void> {
    await new Promise<void>((resolve) => this.server?.close(() => resolve()));
  }

  /** Deliveries for a subscription (by X-Medplum-Subscription). */
  of(subscriptionId: string): Delivery[] {
    return this.deliveries.filter((d) => d.headers['x-medplum-subscription'] === subscriptionId);
  }

  /** Waits (bounded) until `predicate` holds; returns whether it did. */
  until(predicate: () => boolean, timeoutMs = 20_000): Promise<boolean> {
    return until(predicate, timeoutMs);
  }
}
