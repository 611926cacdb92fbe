import { lookup as dnsLookup } from 'node:dns';
import type { LookupAddress, LookupOptions } from 'node:dns';
import http from 'node:http';
import https from 'node:https';
import { BlockList, isIP } from 'node:net';
import { isPrivateAddress } from '../net/private-addresses.ts';

export class OutboundRefused extends Error {}

/**
 * Which outbound destinations are allowed: public addresses always; private ones only when the
 * admin lists them (`OUTBOUND_ALLOWED_HOSTS`: host names, addresses or CIDR ranges).
 */
export class OutboundPolicy {
  private readonly hosts = new Set<string>();
  private readonly allowed = new BlockList();

  constructor(allowList: readonly string[]) {
    for (const entry of allowList.map((e) => e.trim()).filter(Boolean)) {
      const [address, prefix] = entry.split('/');
      const family = isIP(address);
      if (family && prefix !== undefined) {
        this.allowed.addSubnet(address, Number(prefix), family === 4 ? 'ipv4' : 'ipv6');
      } else if (family) {
        this.allowed.addAddress(address, family === 4 ? 'ipv4' : 'ipv6');
      } else {
        this.hosts.add(entry.toLowerCase());
      }
    }
  }

  private addressAllowed(host: string, address: string, family: number): boolean {
    const type = family === 6 ? 'ipv6' : 'ipv4';
    return this.hosts.has(host.toLowerCase()) || this.allowed.check(address, type) || !isPrivateAddress(address, family);
  }

  /**
   * A `lookup` for http(s).request that resolves and checks in one step, so the address checked is
   * the address connected to (no DNS rebinding between check and connect).
   */
  lookupFor(host: string): (hostname: string, options: LookupOptions, callback: (err: Error | null, address: string | LookupAddress[], family?: number) => void) => void {
    return (hostname, options, callback) => {
      dnsLookup(hostname, { ...options, all: true }, (err, addresses) => {
        if (err) {
          callback(err, '');
          return;
        }
        const list = addresses as LookupAddress[];
        const refused = list.find((a) => !this.addressAllowed(host, a.address, a.family));
        if (refused) {
          callback(new OutboundRefused(`Refused outbound address ${refused.address} for ${host}`), '');
          return;
        }
        if (options.all) {
          callback(null, list);
        } else {
          callback(null, list[0].address, list[0].family);
        }
      });
    };
  }

  /** POSTs a body; resolves with the status, rejects on network errors, refusals and the timeout. */
  post(url: string, headers: Record<string, string>, body: string, timeoutMs: number): Promise<number> {
    const target = new URL(url);
    if (target.protocol !== 'http:' && target.protocol !== 'https:') {
      return Promise.reject(new OutboundRefused(`Unsupported URL scheme ${target.protocol}`));
    }
    const hostname = target.hostname.replace(/^\[|\]$/g, '');
    const literal = isIP(hostname);
    if (literal && !this.addressAllowed(hostname, hostname, literal)) {
      return Promise.reject(new OutboundRefused(`Refused outbound address ${hostname}`));
    }
    const transport = target.protocol === 'https:' ? https : http;
    return new Promise((resolve, reject) => {
      const request = transport.request(
        target,
        {
          method: 'POST',
          headers: { ...headers, 'Content-Length': Buffer.byteLength(body).toString() },
          lookup: this.lookupFor(hostname),
          timeout: timeoutMs,
        },
        (response) => {
          response.resume();
          response.on('end', () => resolve(response.statusCode ?? 0));
          response.on('error', reject);
        }
      );
      // `timeout` is an idle timeout; this one bounds the whole exchange (a trickling answer too).
      const deadline = setTimeout(() => request.destroy(new Error(`No complete answer within ${timeoutMs} ms`)), timeoutMs);
      request.on('timeout', () => request.destroy(new Error(`No answer within ${timeoutMs} ms`)));
      request.on('error', reject);
      request.on('close', () => clearTimeout(deadline));
      request.end(body);
    });
  }
}
