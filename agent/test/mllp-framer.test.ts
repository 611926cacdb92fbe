import { describe, expect, test } from 'vitest';
import { MllpFramer, FRAMING_ERROR_HEAD_BYTES } from '../src/mllp/framer.ts';
import type { FramingError, FramingErrorKind } from '../src/mllp/framer.ts';
import { frameMessage } from '../src/mllp/frame.ts';
import { seededRandom } from '../../tests/support/prng.ts';

const VT = 0x0b;
const FS = 0x1c;
const CR = 0x0d;

function collect(maxFrameBytes?: number): { framer: MllpFramer; frames: string[]; errors: FramingError[] } {
  const frames: string[] = [];
  const errors: FramingError[] = [];
  const framer = new MllpFramer({ maxFrameBytes, onFrame: (f) => frames.push(f.toString('latin1')), onError: (e) => errors.push(e) });
  return { framer, frames, errors };
}

const b = (s: string): Buffer => Buffer.from(s, 'latin1');
const frame = (s: string): Buffer => frameMessage(b(s));

describe('MllpFramer', () => {
  test('one frame in one chunk', () => {
    const { framer, frames, errors } = collect();
    framer.push(frame('MSH|^~\\&|A\rPID|1'));
    expect(frames).toEqual(['MSH|^~\\&|A\rPID|1']);
    expect(errors).toEqual([]);
    expect(framer.inFrame).toBe(false);
  });

  test('byte by byte, several frames', () => {
    const { framer, frames } = collect();
    const stream = Buffer.concat([frame('first'), frame('second\r'), frame('third')]);
    for (const byte of stream) {
      framer.push(Uint8Array.of(byte));
    }
    expect(frames).toEqual(['first', 'second\r', 'third']);
  });

  test('end block split between chunks (FS | CR)', () => {
    const { framer, frames } = collect();
    framer.push(b('\x0bABC\x1c'));
    expect(frames).toEqual([]);
    expect(framer.bufferedBytes).toBe(4);
    framer.push(b('\r'));
    expect(frames).toEqual(['ABC']);
  });

  test('stray bytes before and between frames are counted and dropped', () => {
    const { framer, frames, errors } = collect();
    framer.push(Buffer.concat([b('junk\r\n'), frame('one'), b('xx'), frame('two')]));
    expect(frames).toEqual(['one', 'two']);
    expect(errors).toEqual([]);
    expect(framer.counters.strayBytes).toBe(8);
  });

  test('a new start block inside a frame reports the partial frame and starts a new one', () => {
    const { framer, frames, errors } = collect();
    framer.push(b('\x0bMSH|partial'));
    framer.push(frame('MSH|good'));
    expect(frames).toEqual(['MSH|good']);
    expect(errors).toHaveLength(1);
    expect(errors[0].kind).toBe('missing-end-block');
    expect(errors[0].head.toString('latin1')).toBe('MSH|partial');
    expect(errors[0].bytes).toBe(11);
  });

  test('bare FS not followed by CR is data; FS FS CR ends the frame with FS as data', () => {
    const { framer, frames } = collect();
    framer.push(b('\x0bA\x1cB\x1c\x1c\r'));
    expect(frames).toEqual(['A\x1cB\x1c']);
  });

  test('bare FS followed by a start block: missing end block, new frame', () => {
    const { framer, frames, errors } = collect();
    framer.push(b('\x0bA\x1c\x0bB\x1c\r'));
    expect(frames).toEqual(['B']);
    expect(errors.map((e) => e.kind)).toEqual(['missing-end-block']);
    expect(errors[0].head.toString('latin1')).toBe('A\x1c');
  });

  test('too large: reported once, skipped up to the next start block, memory bounded', () => {
    const { framer, frames, errors } = collect(100);
    framer.push(b('\x0bMSH|' + 'x'.repeat(60)));
    expect(errors).toEqual([]);
    framer.push(b('y'.repeat(60)));
    expect(errors.map((e) => e.kind)).toEqual(['too-large']);
    // The head is the frame's first bytes, up to the limit.
    expect(errors[0].head.toString('latin1')).toBe('MSH|' + 'x'.repeat(60) + 'y'.repeat(36));
    expect(framer.bufferedBytes).toBe(0);
    // The rest of the big frame, its end block and more: all dropped, not counted as stray.
    framer.push(b('z'.repeat(10_000) + '\x1c\r'));
    expect(framer.bufferedBytes).toBe(0);
    framer.push(frame('next'));
    expect(frames).toEqual(['next']);
    expect(framer.counters.strayBytes).toBe(0);
    expect(framer.counters.discardedBytes).toBeGreaterThan(10_000);
  });

  test('a frame of exactly maxFrameBytes passes, one more byte does not', () => {
    const { framer, frames, errors } = collect(10);
    framer.push(frame('0123456789'));
    framer.push(frame('0123456789A'));
    expect(frames).toEqual(['0123456789']);
    expect(errors.map((e) => e.kind)).toEqual(['too-large']);
  });

  test('head of a too-large error is capped', () => {
    const { framer, errors } = collect(FRAMING_ERROR_HEAD_BYTES * 3);
    // One chunk larger than the limit: the head still holds its beginning.
    framer.push(b('\x0bMSH|' + 'a'.repeat(FRAMING_ERROR_HEAD_BYTES * 3)));
    expect(errors[0].head.length).toBe(FRAMING_ERROR_HEAD_BYTES);
    expect(errors[0].head.subarray(0, 4).toString()).toBe('MSH|');
  });

  test('end of stream inside a frame is incomplete; outside a frame it is nothing', () => {
    const a = collect();
    a.framer.push(b('\x0bMSH|half'));
    a.framer.end();
    expect(a.frames).toEqual([]);
    expect(a.errors.map((e) => e.kind)).toEqual(['incomplete']);
    const c = collect();
    c.framer.push(b('\x0bMSH|x\x1c'));
    c.framer.end();
    expect(c.errors.map((e) => e.kind)).toEqual(['incomplete']);
    const d = collect();
    d.framer.push(Buffer.concat([frame('ok'), b('trailing junk')]));
    d.framer.end();
    expect(d.errors).toEqual([]);
    expect(d.frames).toEqual(['ok']);
  });

  test('empty frames are counted, not delivered', () => {
    const { framer, frames } = collect();
    framer.push(b('\x0b\x1c\r'));
    framer.push(frame('x'));
    expect(frames).toEqual(['x']);
    expect(framer.counters.emptyFrames).toBe(1);
  });

  test('delivered frames are copies, not views of the working buffer', () => {
    const got: Buffer[] = [];
    const framer = new MllpFramer({ onFrame: (f) => got.push(f) });
    framer.push(frame('AAAA'));
    framer.push(frame('BBBB'));
    expect(got.map((g) => g.toString())).toEqual(['AAAA', 'BBBB']);
  });

  test('rejects a non-positive maxFrameBytes', () => {
    expect(() => new MllpFramer({ maxFrameBytes: 0, onFrame: () => undefined })).toThrow(RangeError);
  });
});

// --- fuzz ------------------------------------------------------------------------------------


/** A byte-at-a-time reference model of the same rules, written as plainly as possible. */
function referenceFrames(stream: Uint8Array, max: number): { frames: string[]; errors: FramingErrorKind[] } {
  const frames: string[] = [];
  const errors: FramingErrorKind[] = [];
  let state: 'idle' | 'frame' | 'discard' = 'idle';
  let buf: number[] = [];
  let pendingFs = false;
  const push = (x: number): boolean => {
    if (buf.length + 1 > max) {
      errors.push('too-large');
      state = 'discard';
      buf = [];
      return false;
    }
    buf.push(x);
    return true;
  };
  for (const x of stream) {
    if (state === 'frame' && pendingFs) {
      pendingFs = false;
      if (x === CR) {
        if (buf.length > 0) {
          frames.push(Buffer.from(buf).toString('latin1'));
        }
        state = 'idle';
        buf = [];
        continue;
      }
      push(FS);
    }
    if (state !== 'frame') {
      if (x === VT) {
        state = 'frame';
        buf = [];
      }
      continue;
    }
    if (x === VT) {
      errors.push('missing-end-block');
      buf = [];
    } else if (x === FS) {
      pendingFs = true;
    } else {
      push(x);
    }
  }
  if (state === 'frame') {
    errors.push('incomplete');
  }
  return { frames, errors };
}

function randomSplits(stream: Buffer, rnd: () => number): Buffer[] {
  const chunks: Buffer[] = [];
  let i = 0;
  while (i < stream.length) {
    const mode = rnd();
    const size = mode < 0.3 ? 1 : mode < 0.8 ? 1 + Math.floor(rnd() * 16) : 1 + Math.floor(rnd() * 400);
    chunks.push(stream.subarray(i, i + size));
    i += size;
  }
  return chunks;
}

describe('MllpFramer fuzz', () => {
  test('random byte streams with random splits match the reference model; memory stays bounded', () => {
    const rnd = seededRandom(0xe2a15);
    const special = [VT, FS, CR, 0x41, 0x7c];
    for (let run = 0; run < 3000; run++) {
      const max = 1 + Math.floor(rnd() * 64);
      const len = Math.floor(rnd() * 600);
      const bytes = Buffer.alloc(len);
      for (let i = 0; i < len; i++) {
        bytes[i] = rnd() < 0.3 ? special[Math.floor(rnd() * special.length)] : Math.floor(rnd() * 256);
      }
      const { framer, frames, errors } = collect(max);
      for (const chunk of randomSplits(bytes, rnd)) {
        framer.push(chunk);
        expect(framer.bufferedBytes).toBeLessThanOrEqual(max + 1);
      }
      framer.end();
      const expected = referenceFrames(bytes, max);
      expect(frames, `run ${run}`).toEqual(expected.frames);
      expect(
        errors.map((e) => e.kind),
        `run ${run}`,
      ).toEqual(expected.errors);
      for (const f of frames) {
        expect(f.length).toBeLessThanOrEqual(max);
      }
    }
  });

  test('structured streams: every intact frame is delivered exactly once, in order', () => {
    const rnd = seededRandom(42);
    const randomPayload = (n: number): Buffer => {
      const out: number[] = [];
      while (out.length < n) {
        const x = Math.floor(rnd() * 256);
        if (x === VT) {
          continue;
        }
        if (x === FS) {
          // A bare FS is data as long as neither CR nor VT follows it.
          out.push(FS, 0x42);
          continue;
        }
        out.push(x);
      }
      return Buffer.from(out);
    };
    const noise = (n: number): Buffer => Buffer.from(Array.from({ length: n }, () => [0x20, 0x0a, 0x0d, 0x41, FS, 0x00][Math.floor(rnd() * 6)]));
    for (let run = 0; run < 1500; run++) {
      const max = 200;
      const parts: Buffer[] = [];
      const intact: string[] = [];
      const expectedErrors: FramingErrorKind[] = [];
      const n = 1 + Math.floor(rnd() * 8);
      for (let k = 0; k < n; k++) {
        const kind = rnd();
        if (kind < 0.55) {
          const payload = randomPayload(1 + Math.floor(rnd() * (max - 2)));
          parts.push(frameMessage(payload));
          intact.push(payload.toString('latin1'));
        } else if (kind < 0.7) {
          parts.push(noise(1 + Math.floor(rnd() * 20)));
        } else if (kind < 0.85) {
          // Cut frame: no end block; the next start block (there is always one after it) reports it.
          parts.push(Buffer.concat([Uint8Array.of(VT), randomPayload(1 + Math.floor(rnd() * 50))]));
          expectedErrors.push('missing-end-block');
          const payload = randomPayload(5);
          parts.push(frameMessage(payload));
          intact.push(payload.toString('latin1'));
        } else {
          parts.push(frameMessage(randomPayload(max + 1 + Math.floor(rnd() * 500))));
          expectedErrors.push('too-large');
        }
      }
      const stream = Buffer.concat(parts);
      const { framer, frames, errors } = collect(max);
      for (const chunk of randomSplits(stream, rnd)) {
        framer.push(chunk);
      }
      framer.end();
      expect(frames, `run ${run}`).toEqual(intact);
      expect(
        errors.map((e) => e.kind),
        `run ${run}`,
      ).toEqual(expectedErrors);
    }
  });
});
