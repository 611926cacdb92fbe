import { describe, expect, test } from 'vitest';
import { EndpointAddressError, parseEndpointAddress } from '../src/endpoint.ts';

describe('Endpoint addresses', () => {
  test('defaults: original mode, acknowledge while offline, windows-1253 for undeclared non-UTF-8', () => {
    expect(parseEndpointAddress('mllp://0.0.0.0:2575')).toMatchObject({
      host: '0.0.0.0',
      port: 2575,
      enhanced: false,
      appLevelAck: 'AL',
      offline: 'acknowledge',
      honorNE: false,
      charset: 'windows-1253',
      maxFrameBytes: 10 * 1024 * 1024,
      concurrency: 8,
      tls: undefined,
    });
  });

  test("options in the URL, Medplum's names included", () => {
    const settings = parseEndpointAddress('mllp://127.0.0.1:3000?enhanced=aa&appLevelAck=er&offline=reject&ackTimeoutMs=500&encoding=iso-8859-7&maxFrameBytes=1000&honorNE=true');
    expect(settings).toMatchObject({ enhanced: 'aa', appLevelAck: 'ER', offline: 'reject', ackTimeoutMs: 500, charset: 'iso-8859-7', maxFrameBytes: 1000, honorNE: true });
    expect(parseEndpointAddress('mllp://h:1?enhanced=true').enhanced).toBe(true);
    expect(parseEndpointAddress('mllps://h:1?cert=/c.pem&key=/k.pem&ca=/ca.pem').tls).toEqual({ cert: '/c.pem', key: '/k.pem', ca: '/ca.pem' });
  });

  test.each([
    ['http://h:1', /mllp/],
    ['mllp://h', /port/],
    ['not a url', /Not a URL/],
    ['mllp://h:1?appLevelAck=XX', /appLevelAck/],
    ['mllp://h:1?offline=maybe', /offline/],
    ['mllp://h:1?ackTimeoutMs=-5', /ackTimeoutMs/],
    ['mllps://h:1', /cert and key/],
  ])('%s is refused with a reason', (address, reason) => {
    expect(() => parseEndpointAddress(address)).toThrow(EndpointAddressError);
    expect(() => parseEndpointAddress(address)).toThrow(reason);
  });
});
