import { CARRIAGE_RETURN, END_BLOCK, START_BLOCK } from './framer.ts';

/** Wraps a message in an MLLP frame: VT + message + FS CR. */
export function frameMessage(message: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(message.length + 3);
  out[0] = START_BLOCK;
  out.set(message, 1);
  out[message.length + 1] = END_BLOCK;
  out[message.length + 2] = CARRIAGE_RETURN;
  return out;
}

/** 'ip:port', with IPv4-mapped IPv6 addresses shown as IPv4 and IPv6 in brackets. */
export function formatRemote(address: string | undefined, port: number | undefined): string {
  let host = address ?? 'unknown';
  if (host.startsWith('::ffff:') && host.includes('.')) {
    host = host.slice(7);
  } else if (host.includes(':')) {
    host = `[${host}]`;
  }
  return `${host}:${port ?? 0}`;
}
