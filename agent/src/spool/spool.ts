import { mkdir, open, readdir, readFile, rm, truncate } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';

/** A message as the spool keeps it: the bytes exactly as they arrived, and where they came from. */
export interface SpooledMessage {
  /** Position in the spool; messages are forwarded in this order (per stream). */
  seq: number;
  channel: string;
  /** Messages of one stream (one sender connection) are forwarded one after another, in order. */
  stream: string;
  remote: string;
  receivedAt: string;
  bytes: Buffer;
}

interface MessageLine {
  k: 'm';
  s: number;
  c: string;
  st: string;
  r: string;
  t: string;
  b: string;
}

interface DoneLine {
  k: 'd';
  s: number;
  o: string;
}

interface Waiting {
  data: string;
  /** Resolved with the segment the line went to. */
  resolve: (segment: number) => void;
  reject: (err: Error) => void;
}

export interface SpoolOptions {
  /** A segment file is closed and a new one started beyond this size. */
  segmentBytes?: number;
}

/**
 * The agent's durable spool: an append-only log of segment files. A message is appended and the
 * file fdatasync'd before `append` resolves, so an ACK sent after it survives a crash or a power
 * cut of the agent. Writes that arrive while a sync is running are written and synced together
 * (group commit), so many connections share one sync. When a message has been handled a `done`
 * line follows it; on start the messages without one are pending again. A segment whose messages
 * are all done is deleted. A line torn by a crash (the last one) is cut off on open.
 */
export class Spool {
  private readonly dir: string;
  private readonly segmentBytes: number;
  private file: FileHandle | undefined;
  private segment = 0;
  private segmentSize = 0;
  private nextSeq = 1;
  /** seq → segment number, for messages not yet done. */
  private readonly open = new Map<number, number>();
  /** segment number → messages in it not yet done. */
  private readonly undone = new Map<number, number>();
  private readonly pendingAtStart: SpooledMessage[] = [];
  private queue: Waiting[] = [];
  private flushing = false;
  private closed = false;

  private constructor(dir: string, options: SpoolOptions) {
    this.dir = dir;
    this.segmentBytes = options.segmentBytes ?? 64 * 1024 * 1024;
  }

  static async open(dir: string, options: SpoolOptions = {}): Promise<Spool> {
    const spool = new Spool(dir, options);
    await spool.recover();
    return spool;
  }

  /** The messages that were spooled and not done when the spool was opened, in order. */
  recovered(): SpooledMessage[] {
    return [...this.pendingAtStart];
  }

  /** Messages in the spool that are not done. */
  get depth(): number {
    return this.open.size;
  }

  /** Appends a message; resolves once it is on disk. */
  async append(entry: Omit<SpooledMessage, 'seq'>): Promise<SpooledMessage> {
    const seq = this.nextSeq++;
    const line: MessageLine = { k: 'm', s: seq, c: entry.channel, st: entry.stream, r: entry.remote, t: entry.receivedAt, b: entry.bytes.toString('base64') };
    const segment = await this.write(JSON.stringify(line) + '\n');
    this.open.set(seq, segment);
    this.undone.set(segment, (this.undone.get(segment) ?? 0) + 1);
    return { ...entry, seq };
  }

  /** Marks a message handled (`outcome` says how); its segment goes once all of its messages are. */
  async complete(seq: number, outcome: string): Promise<void> {
    const segment = this.open.get(seq);
    if (segment === undefined) {
      return;
    }
    const line: DoneLine = { k: 'd', s: seq, o: outcome };
    await this.write(JSON.stringify(line) + '\n');
    this.open.delete(seq);
    this.undone.set(segment, (this.undone.get(segment) ?? 1) - 1);
    await this.dropFinishedSegments();
  }

  /**
   * Deletes finished segments from the oldest end only: a newer segment may hold the done lines of
   * messages in an older one that is still kept, and must outlive it.
   */
  private async dropFinishedSegments(): Promise<void> {
    const segments = [...this.undone.keys()].sort((a, b) => a - b);
    for (const segment of segments) {
      if (segment === this.segment || (this.undone.get(segment) ?? 0) > 0) {
        break;
      }
      this.undone.delete(segment);
      await rm(this.segmentPath(segment), { force: true });
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    while (this.flushing || this.queue.length) {
      await new Promise((r) => setTimeout(r, 5));
    }
    await this.file?.close();
    this.file = undefined;
  }

  private write(data: string): Promise<number> {
    if (this.closed) {
      return Promise.reject(new Error('Spool is closed'));
    }
    return new Promise((resolve, reject) => {
      this.queue.push({ data, resolve, reject });
      if (!this.flushing) {
        void this.flush();
      }
    });
  }

  /** Writes everything queued, syncs once, resolves all of it; again while more came meanwhile. */
  private async flush(): Promise<void> {
    this.flushing = true;
    try {
      while (this.queue.length) {
        const batch = this.queue;
        this.queue = [];
        let file: FileHandle | undefined;
        try {
          const data = Buffer.from(batch.map((w) => w.data).join(''), 'utf8');
          file = await this.currentFile(data.length);
          // A write may be short (a full disk): write the rest, or fail.
          let written = 0;
          while (written < data.length) {
            const { bytesWritten } = await file.write(data, written, data.length - written, null);
            if (bytesWritten <= 0) {
              throw new Error('Spool write made no progress (disk full?)');
            }
            written += bytesWritten;
          }
          await file.datasync();
          this.segmentSize += data.length;
          for (const w of batch) {
            w.resolve(this.segment);
          }
        } catch (err) {
          // Cut the file back to its last whole line, so later appends do not follow a torn one.
          await file?.truncate(this.segmentSize).catch(() => undefined);
          for (const w of batch) {
            w.reject(err as Error);
          }
        }
      }
    } finally {
      this.flushing = false;
    }
  }

  private async currentFile(adding: number): Promise<FileHandle> {
    if (this.file && this.segmentSize + adding > this.segmentBytes && this.segmentSize > 0) {
      await this.file.close();
      this.file = undefined;
      this.undone.set(this.segment, this.undone.get(this.segment) ?? 0);
      this.segment++;
      await this.dropFinishedSegments();
    }
    if (!this.file) {
      this.file = await open(this.segmentPath(this.segment), 'a');
      this.segmentSize = (await this.file.stat()).size;
      // The new file's directory entry must survive a crash too.
      await syncDirectory(this.dir);
    }
    return this.file;
  }

  private segmentPath(segment: number): string {
    return path.join(this.dir, `segment-${String(segment).padStart(8, '0')}.log`);
  }

  private async recover(): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    const segments = (await readdir(this.dir))
      .map((name) => /^segment-(\d{8})\.log$/.exec(name))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => Number(m[1]))
      .sort((a, b) => a - b);
    const messages = new Map<number, SpooledMessage & { segment: number }>();
    let maxSeq = 0;
    for (const segment of segments) {
      const file = this.segmentPath(segment);
      const text = await readFile(file, 'utf8');
      let good = 0;
      for (const line of text.split('\n')) {
        if (good + line.length + 1 > text.length) {
          break; // the last line has no newline: it was being written when the agent stopped
        }
        good += line.length + 1;
        let record: MessageLine | DoneLine;
        try {
          record = JSON.parse(line) as MessageLine | DoneLine;
        } catch {
          continue; // a damaged line inside the file: skip it, keep what follows
        }
        maxSeq = Math.max(maxSeq, record.s);
        if (record.k === 'm') {
          messages.set(record.s, {
            seq: record.s,
            channel: record.c,
            stream: record.st,
            remote: record.r,
            receivedAt: record.t,
            bytes: Buffer.from(record.b, 'base64'),
            segment,
          });
        } else {
          messages.delete(record.s);
        }
      }
      if (Buffer.byteLength(text.slice(0, good), 'utf8') !== Buffer.byteLength(text, 'utf8')) {
        await truncate(file, Buffer.byteLength(text.slice(0, good), 'utf8'));
      }
    }
    this.nextSeq = maxSeq + 1;
    this.segment = segments.length ? segments[segments.length - 1] + 1 : 1;
    for (const m of [...messages.values()].sort((a, b) => a.seq - b.seq)) {
      this.open.set(m.seq, m.segment);
      this.undone.set(m.segment, (this.undone.get(m.segment) ?? 0) + 1);
      const { segment: _segment, ...message } = m;
      this.pendingAtStart.push(message);
    }
    for (const segment of segments) {
      this.undone.set(segment, this.undone.get(segment) ?? 0);
    }
    await this.dropFinishedSegments();
  }
}

async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
