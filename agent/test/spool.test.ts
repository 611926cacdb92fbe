import { appendFile, mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, test } from 'vitest';
import { Spool } from '../src/spool/spool.ts';

const dirs: string[] = [];
afterEach(async () => {
  for (const dir of dirs.splice(0)) {
    await rm(dir, { recursive: true, force: true });
  }
});

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'ermis-spool-'));
  dirs.push(dir);
  return dir;
}

const message = (n: number, stream = 's1'): { channel: string; stream: string; remote: string; receivedAt: string; bytes: Buffer } => ({
  channel: 'lab',
  stream,
  remote: '127.0.0.1:5000',
  receivedAt: new Date(0).toISOString(),
  bytes: Buffer.from(`MSH|^~\\&|LIS|LAB|||||ORU^R01|M${n}|P|2.5.1\rOBX|1|ST|X||Θετικό ${n}`, 'utf8'),
});

describe('Spool', () => {
  test('messages appended and not completed come back, in order, with their bytes, after a reopen', async () => {
    const dir = await tempDir();
    const spool = await Spool.open(dir);
    const a = await spool.append(message(1));
    const b = await spool.append(message(2, 's2'));
    const c = await spool.append(message(3));
    await spool.complete(b.seq, 'processed');
    await spool.close();

    const again = await Spool.open(dir);
    const pending = again.recovered();
    expect(pending.map((m) => m.seq)).toEqual([a.seq, c.seq]);
    expect(pending[0].bytes.equals(message(1).bytes)).toBe(true);
    expect(pending[1].stream).toBe('s1');
    expect(again.depth).toBe(2);
    // New messages continue the numbering (order across restarts holds).
    const d = await again.append(message(4));
    expect(d.seq).toBeGreaterThan(c.seq);
    await again.close();
  });

  test('a line torn by a crash (no newline at the end) is cut off; what was complete survives', async () => {
    const dir = await tempDir();
    const spool = await Spool.open(dir);
    await spool.append(message(1));
    await spool.close();
    const [segment] = (await readdir(dir)).filter((f) => f.startsWith('segment-'));
    const file = path.join(dir, segment);
    const sizeBefore = (await stat(file)).size;
    await appendFile(file, '{"k":"m","s":2,"c":"lab","st":"s1","r":"x","t":"y","b":"TVNI'); // the crash
    const again = await Spool.open(dir);
    expect(again.recovered().map((m) => m.bytes.toString('utf8').slice(0, 3))).toEqual(['MSH']);
    expect((await stat(file)).size).toBe(sizeBefore);
    await again.append(message(3));
    await again.close();
    const third = await Spool.open(dir);
    expect(third.recovered()).toHaveLength(2);
    await third.close();
  });

  test('segments whose messages are all done are deleted; the log does not grow without end', async () => {
    const dir = await tempDir();
    const spool = await Spool.open(dir, { segmentBytes: 2000 });
    const seqs: number[] = [];
    for (let i = 0; i < 40; i++) {
      seqs.push((await spool.append(message(i))).seq);
    }
    expect((await readdir(dir)).filter((f) => f.startsWith('segment-')).length).toBeGreaterThan(3);
    for (const seq of seqs) {
      await spool.complete(seq, 'processed');
    }
    await spool.append(message(99)); // rolls over once more
    const left = (await readdir(dir)).filter((f) => f.startsWith('segment-'));
    expect(left.length).toBeLessThanOrEqual(2);
    await spool.close();
    const again = await Spool.open(dir);
    expect(again.recovered()).toHaveLength(1);
    await again.close();
  });

  test('a damaged line inside a segment is skipped; the complete lines after it survive', async () => {
    const dir = await tempDir();
    const spool = await Spool.open(dir);
    await spool.append(message(1));
    await spool.close();
    const [segment] = (await readdir(dir)).filter((f) => f.startsWith('segment-'));
    await appendFile(path.join(dir, segment), '{"k":"m","s":2,"c"\n');
    const again = await Spool.open(dir);
    await again.append(message(3));
    await again.close();
    await appendFile(path.join(dir, segment), JSON.stringify({ k: 'm', s: 9, c: 'lab', st: 's1', r: 'x', t: 'y', b: Buffer.from('MSH|9').toString('base64') }) + '\n');
    const third = await Spool.open(dir);
    expect(third.recovered().map((m) => m.bytes.toString('utf8').slice(0, 5))).toEqual(['MSH|^', 'MSH|^', 'MSH|9']); // by sequence: 1, 2 (the append after the damage), 9
    await third.close();
  });

  test('a finished segment is kept while an older one still has messages (it holds their done lines)', async () => {
    const dir = await tempDir();
    const spool = await Spool.open(dir, { segmentBytes: 600 });
    const old = await spool.append(message(1));
    const newer: number[] = [];
    for (let i = 2; i < 12; i++) {
      newer.push((await spool.append(message(i))).seq);
    }
    for (const seq of newer) {
      await spool.complete(seq, 'processed');
    }
    await spool.close();
    const again = await Spool.open(dir);
    expect(again.recovered().map((m) => m.seq)).toEqual([old.seq]);
    await again.complete(old.seq, 'processed');
    await again.close();
    const third = await Spool.open(dir);
    expect(third.recovered()).toHaveLength(0);
    await third.close();
  });

  test('concurrent appends share syncs and all resolve; every one is on disk', async () => {
    const dir = await tempDir();
    const spool = await Spool.open(dir);
    const appended = await Promise.all(Array.from({ length: 200 }, (_, i) => spool.append(message(i, `s${i % 8}`))));
    expect(new Set(appended.map((m) => m.seq)).size).toBe(200);
    await spool.close();
    const text = (await Promise.all((await readdir(dir)).map((f) => readFile(path.join(dir, f), 'utf8')))).join('');
    expect(text.split('\n').filter((l) => l.startsWith('{"k":"m"')).length).toBe(200);
  });

  test('completing an unknown or already completed message changes nothing; a closed spool refuses appends', async () => {
    const dir = await tempDir();
    const spool = await Spool.open(dir);
    const a = await spool.append(message(1));
    await spool.complete(a.seq, 'processed');
    await spool.complete(a.seq, 'processed');
    await spool.complete(12345, 'processed');
    expect(spool.depth).toBe(0);
    await spool.close();
    await expect(spool.append(message(2))).rejects.toThrow(/closed/);
  });
});
