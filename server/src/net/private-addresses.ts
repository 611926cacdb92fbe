import { BlockList } from 'node:net';

/**
 * Addresses a server-side connection must not reach unless allowed: loopback, private, link-local
 * (cloud metadata), carrier-grade NAT, unspecified, multicast and reserved ranges, and the IPv6
 * forms that embed or translate IPv4 (mapped, compatible, NAT64, 6to4, Teredo) or are local.
 * Used by rest-hook delivery and by the bot sandbox (which imports nothing else of the server).
 */
export const PRIVATE_ADDRESSES = new BlockList();
for (const [net, prefix] of [
  ['0.0.0.0', 8],
  ['10.0.0.0', 8],
  ['100.64.0.0', 10],
  ['127.0.0.0', 8],
  ['169.254.0.0', 16],
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['224.0.0.0', 4],
  ['240.0.0.0', 4],
] as const) {
  PRIVATE_ADDRESSES.addSubnet(net, prefix, 'ipv4');
}
for (const [net, prefix] of [
  ['::', 96],
  ['::1', 128],
  ['::ffff:0:0', 96],
  ['64:ff9b::', 96],
  ['64:ff9b:1::', 48],
  ['2001::', 32],
  ['2002::', 16],
  ['fc00::', 7],
  ['fe80::', 10],
  ['fec0::', 10],
  ['ff00::', 8],
] as const) {
  PRIVATE_ADDRESSES.addSubnet(net, prefix, 'ipv6');
}

export function isPrivateAddress(address: string, family: number): boolean {
  return PRIVATE_ADDRESSES.check(address, family === 6 ? 'ipv6' : 'ipv4');
}
