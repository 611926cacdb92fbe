/**
 * MLLP framing on raw bytes: <VT 0x0B> message <FS 0x1C><CR 0x0D>.
 *
 * Decisions:
 * - Bytes outside a frame are discarded and counted (`strayBytes`).
 * - A start block inside a frame means the previous frame lost its end block: that partial
 *   frame is reported as 'missing-end-block' and a new frame starts at the new start block.
 * - A frame over `maxFrameBytes` is reported as 'too-large' as soon as the limit is crossed;
 *   the rest of it is skipped until the next start block, so memory stays bounded.
 * - A bare FS not followed by CR is kept as data: the MLLP end block is the two-byte pair, and
 *   a lone FS cannot end a frame anyway (the peer waiting for a reply would never send the CR).
 * - An empty frame (VT FS CR) is counted and ignored: there is no message to answer.
 * - End of stream inside a frame is reported as 'incomplete'; nothing is delivered.
 */

export const START_BLOCK = 0x0b;
export const END_BLOCK = 0x1c;
export const CARRIAGE_RETURN = 0x0d;

export const DEFAULT_MAX_FRAME_BYTES = 10 * 1024 * 1024;

/** How many leading bytes of a broken frame are kept so the caller can recover MSH-10 for a NAK. */
export const FRAMING_ERROR_HEAD_BYTES = 4096;

export type FramingErrorKind = 'missing-end-block' | 'too-large' | 'incomplete';

export interface FramingError {
  kind: FramingErrorKind;
  /** The first bytes of the broken frame (at most FRAMING_ERROR_HEAD_BYTES): usually holds the MSH. */
  head: Buffer;
  /** Bytes of the frame received when the error was detected. */
  bytes: number;
}

export interface MllpFramerOptions {
  maxFrameBytes?: number;
  onFrame: (frame: Buffer) => void;
  onError?: (error: FramingError) => void;
}

export interface MllpFramerCounters {
  frames: number;
  emptyFrames: number;
  strayBytes: number;
  /** Bytes of too-large frames thrown away. */
  discardedBytes: number;
  errors: Record<FramingErrorKind, number>;
}

type State = 'idle' | 'frame' | 'discard';

const INITIAL_CAPACITY = 4096;

export class MllpFramer {
  readonly maxFrameBytes: number;
  readonly counters: MllpFramerCounters = {
    frames: 0,
    emptyFrames: 0,
    strayBytes: 0,
    discardedBytes: 0,
    errors: { 'missing-end-block': 0, 'too-large': 0, incomplete: 0 },
  };

  private readonly onFrame: (frame: Buffer) => void;
  private readonly onError: (error: FramingError) => void;
  private state: State = 'idle';
  private buf: Buffer = Buffer.alloc(0);
  private len = 0;
  /** The previous byte of the frame was FS; it is held back until we know whether CR follows. */
  private pendingFs = false;

  constructor(options: MllpFramerOptions) {
    this.maxFrameBytes = options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    if (!(this.maxFrameBytes > 0)) {
      throw new RangeError('maxFrameBytes must be positive');
    }
    this.onFrame = options.onFrame;
    this.onError = options.onError ?? (() => undefined);
  }

  /** Bytes of the current partial frame held in memory (never above maxFrameBytes + 1). */
  get bufferedBytes(): number {
    return this.len + (this.pendingFs ? 1 : 0);
  }

  /** True while inside a frame (its start block seen, its end block not yet). */
  get inFrame(): boolean {
    return this.state === 'frame';
  }

  push(chunk: Uint8Array): void {
    const n = chunk.length;
    let i = 0;
    while (i < n) {
      if (this.state !== 'frame') {
        const sb = chunk.indexOf(START_BLOCK, i);
        const skipped = (sb === -1 ? n : sb) - i;
        if (this.state === 'discard') {
          this.counters.discardedBytes += skipped;
        } else {
          this.counters.strayBytes += skipped;
        }
        if (sb === -1) {
          return;
        }
        this.startFrame();
        i = sb + 1;
        continue;
      }

      if (this.pendingFs) {
        this.pendingFs = false;
        if (chunk[i] === CARRIAGE_RETURN) {
          this.finishFrame();
          i++;
          continue;
        }
        // Bare FS: it was data after all.
        if (!this.append(Uint8Array.of(END_BLOCK), 0, 1)) {
          continue;
        }
      }

      let j = i;
      while (j < n) {
        const b = chunk[j];
        if (b === START_BLOCK || b === END_BLOCK) {
          break;
        }
        j++;
      }
      if (!this.append(chunk, i, j)) {
        // Too large: now in 'discard'; resume scanning for a start block from the same place.
        continue;
      }
      if (j === n) {
        return;
      }
      if (chunk[j] === START_BLOCK) {
        this.fail('missing-end-block');
        this.startFrame();
      } else {
        this.pendingFs = true;
      }
      i = j + 1;
    }
  }

  /** End of stream: a frame still open is reported as 'incomplete' and dropped. */
  end(): void {
    if (this.state === 'frame') {
      this.fail('incomplete');
    }
    this.reset('idle');
  }

  private startFrame(): void {
    this.reset('frame');
  }

  private reset(state: State): void {
    this.state = state;
    this.len = 0;
    this.pendingFs = false;
    // Do not keep a large buffer alive after a big frame.
    if (this.buf.length > INITIAL_CAPACITY * 16) {
      this.buf = Buffer.alloc(0);
    }
  }

  /** Appends src[from, to) to the frame; false (and state 'discard') when the frame gets too large. */
  private append(src: Uint8Array, from: number, to: number): boolean {
    const add = to - from;
    if (add === 0) {
      return true;
    }
    const needed = this.len + add;
    if (needed > this.maxFrameBytes) {
      // Keep the frame's first bytes for the error's head even when they came in this very chunk.
      const room = Math.min(add, FRAMING_ERROR_HEAD_BYTES - this.len, this.maxFrameBytes - this.len);
      if (room > 0) {
        this.append(src, from, from + room);
      }
      const counted = this.len;
      this.fail('too-large', needed);
      this.counters.discardedBytes += counted;
      this.reset('discard');
      return false;
    }
    if (needed > this.buf.length) {
      let cap = Math.max(INITIAL_CAPACITY, this.buf.length * 2);
      while (cap < needed) {
        cap *= 2;
      }
      const next = Buffer.allocUnsafe(Math.min(cap, this.maxFrameBytes));
      this.buf.copy(next, 0, 0, this.len);
      this.buf = next;
    }
    this.buf.set(src.subarray(from, to), this.len);
    this.len = needed;
    return true;
  }

  private finishFrame(): void {
    if (this.len === 0) {
      this.counters.emptyFrames++;
    } else {
      // Copy: the working buffer is reused for the next frame.
      const frame = Buffer.from(this.buf.subarray(0, this.len));
      this.counters.frames++;
      this.reset('idle');
      this.onFrame(frame);
      return;
    }
    this.reset('idle');
  }

  private fail(kind: FramingErrorKind, bytes?: number): void {
    this.counters.errors[kind]++;
    const head = Buffer.from(this.buf.subarray(0, Math.min(this.len, FRAMING_ERROR_HEAD_BYTES)));
    this.onError({ kind, head, bytes: bytes ?? this.len + (this.pendingFs ? 1 : 0) });
  }
}
