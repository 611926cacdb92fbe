import type { BotEvent } from '@medplum/core';
import { afterEach, describe, expect, test } from 'vitest';
import { BotRuntime } from '../src/bots/runtime.ts';
import type { RuntimeOptions } from '../src/bots/runtime.ts';
import { until } from './harness.ts';
import { alive } from '../../tests/support/processes.ts';

// The runtime alone, without a server: these bots never call the API, so its address and token are dummies.
const BASE_URL = 'http://127.0.0.1:9/';

const BOT = `
exports.handler = async (medplum, event) => {
  if (event.input === 'slow') await new Promise((r) => setTimeout(r, 300));
  if (event.input === 'grow') globalThis.kept = Array.from({ length: 700 }, () => new Array(1e4).fill(1.5));
  return String(process.pid);
};`;

const runtimes: BotRuntime[] = [];
afterEach(async () => {
  await Promise.all(runtimes.splice(0).map((r) => r.close()));
});

function runtime(options: Partial<RuntimeOptions> = {}): BotRuntime {
  const r = new BotRuntime({ allowedHosts: [], timeoutMs: 10_000, memoryMb: 96, concurrency: 2, idleMs: 60_000, ...options });
  runtimes.push(r);
  return r;
}

async function pidOf(r: BotRuntime, bot: string, input = 'go', code = BOT): Promise<number> {
  const event = { bot: { reference: `Bot/${bot}` }, contentType: 'text/plain', input, secrets: {} } as BotEvent;
  const result = await r.run(`project/${bot}`, code, event, BASE_URL, 'token');
  expect(result.ok, result.error).toBe(true);
  return Number(result.body);
}


describe('the bot process pool', () => {
  test('it holds at most `concurrency` processes; another bot takes the least recently used idle one', async () => {
    const r = runtime({ concurrency: 2 });
    const a = await pidOf(r, 'a');
    const b = await pidOf(r, 'b');
    expect(r.pids.sort()).toEqual([a, b].sort());
    expect(await pidOf(r, 'b')).toBe(b); // b is now the most recently used
    const c = await pidOf(r, 'c');
    expect(r.pids.sort()).toEqual([b, c].sort());
    expect(await until(() => !alive(a))).toBe(true);
    expect(await pidOf(r, 'b')).toBe(b);
  });

  test('more overlapping executions than processes wait for one; all answer and the bound holds', async () => {
    const r = runtime({ concurrency: 2 });
    let most = 0;
    const watch = setInterval(() => (most = Math.max(most, r.pids.length)), 5);
    try {
      const pids = await Promise.all(['a', 'a', 'b', 'b', 'c', 'a'].map((bot) => pidOf(r, bot, 'slow')));
      expect(pids).toHaveLength(6);
    } finally {
      clearInterval(watch);
    }
    expect(most).toBeGreaterThan(0);
    expect(most).toBeLessThanOrEqual(2);
    expect(r.pids.length).toBeLessThanOrEqual(2);
  });

  test('an idle process exits after idleMs', async () => {
    const r = runtime({ idleMs: 200 });
    const pid = await pidOf(r, 'a');
    expect(await until(() => r.pids.length === 0 && !alive(pid))).toBe(true);
    expect(await pidOf(r, 'a')).not.toBe(pid);
  });

  test('with idleMs 0 every execution has a process of its own', async () => {
    const r = runtime({ idleMs: 0 });
    const first = await pidOf(r, 'a');
    const second = await pidOf(r, 'a');
    expect(second).not.toBe(first);
  });

  test('a process whose heap grew past half the cap is not used again', async () => {
    const r = runtime({ memoryMb: 96 });
    const steady = await pidOf(r, 'a');
    expect(await pidOf(r, 'a')).toBe(steady);
    const grown = await pidOf(r, 'a', 'grow'); // keeps ~56 MB of the 96
    expect(grown).toBe(steady);
    expect(await pidOf(r, 'a')).not.toBe(grown);
  });

  test('a bot whose code does not load fails, and its process is not kept', async () => {
    const r = runtime();
    const event = { bot: { reference: 'Bot/x' }, contentType: 'text/plain', input: 'x', secrets: {} } as BotEvent;
    const result = await r.run('project/x', 'exports.notAHandler = 1;', event, BASE_URL, 'token');
    expect(result).toMatchObject({ ok: false, error: 'The bot exports no handler function' });
    expect(r.pids).toEqual([]);
  });

  test('close ends every process; executions after it are refused', async () => {
    const r = runtime();
    const pids = await Promise.all([pidOf(r, 'a', 'slow'), pidOf(r, 'b', 'slow')]);
    expect(pids.every(alive)).toBe(true);
    await r.close();
    expect(pids.filter(alive)).toEqual([]);
    expect(r.pids).toEqual([]);
    const event = { bot: { reference: 'Bot/a' }, contentType: 'text/plain', input: 'x', secrets: {} } as BotEvent;
    expect(await r.run('project/a', BOT, event, BASE_URL, 'token')).toMatchObject({ ok: false, error: 'The server is shutting down' });
  });
});
