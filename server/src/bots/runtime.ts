import { fork } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BotEvent } from '@medplum/core';

const CHILD = fileURLToPath(new URL('./child.ts', import.meta.url));
const ROOT = path.resolve(path.dirname(CHILD), '../../..');

/** Modules a bot may `require` (as on Medplum's vmcontext runtime, a short list). */
const ALLOWED_MODULES = ['@medplum/core'];

export interface BotRunResult {
  ok: boolean;
  /** For ok results: how to answer ($execute) — HL7, text or JSON. */
  contentType?: string;
  body?: string;
  error?: string;
  /** What the bot wrote to the console. */
  logs: string;
  durationMs: number;
}

export interface RuntimeOptions {
  /** Wall-clock limit of one execution, async work included. */
  timeoutMs: number;
  /** V8 heap limit of the execution's process. */
  memoryMb: number;
  /** Executions at once on this node; more wait. */
  concurrency: number;
}

/**
 * Runs bots out of the server process: each execution gets a fresh Node process under the
 * permission model (it may read node_modules and its own entry file, nothing else of the server;
 * it may not write files or start processes), an empty environment, a heap cap and a wall-clock
 * timeout. Whatever the bot does (hang, loop, throw, exhaust memory, exit), only that process ends.
 */
export class BotRuntime {
  private readonly options: RuntimeOptions;
  private active = 0;
  private readonly waiting: (() => void)[] = [];

  constructor(options: RuntimeOptions) {
    this.options = options;
  }

  async run(code: string, event: BotEvent, baseUrl: string, accessToken: string, timeoutMs = this.options.timeoutMs): Promise<BotRunResult> {
    await this.acquire();
    try {
      return await this.spawn(code, event, baseUrl, accessToken, timeoutMs);
    } finally {
      this.release();
    }
  }

  private acquire(): Promise<void> {
    if (this.active < this.options.concurrency) {
      this.active++;
      return Promise.resolve();
    }
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  private release(): void {
    const next = this.waiting.shift();
    if (next) {
      next();
    } else {
      this.active--;
    }
  }

  private spawn(code: string, event: BotEvent, baseUrl: string, accessToken: string, timeoutMs: number): Promise<BotRunResult> {
    const started = performance.now();
    return new Promise((resolve) => {
      let stderr = '';
      let settled = false;
      const child = fork(CHILD, [], {
        execArgv: [
          '--permission',
          `--allow-fs-read=${path.join(ROOT, 'node_modules')}`,
          `--allow-fs-read=${path.dirname(CHILD)}`,
          `--allow-fs-read=${path.join(ROOT, 'package.json')}`,
          `--allow-fs-read=${path.join(ROOT, 'server', 'package.json')}`,
          `--max-old-space-size=${this.options.memoryMb}`,
          '--disable-warning=ExperimentalWarning',
          '--disable-warning=SecurityWarning',
        ],
        env: {},
        stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
        serialization: 'advanced',
      });
      const finish = (result: Omit<BotRunResult, 'durationMs'>): void => {
        if (settled) {
          return;
        }
        settled = true;
        clearTimeout(timer);
        child.kill('SIGKILL');
        resolve({ ...result, durationMs: Math.round(performance.now() - started) });
      };
      const timer = setTimeout(() => finish({ ok: false, error: `Bot timed out after ${timeoutMs} ms`, logs: '' }), timeoutMs);
      child.stderr?.on('data', (d: Buffer) => {
        stderr = (stderr + d.toString()).slice(-4000);
      });
      child.on('message', (message: unknown) => {
        const m = message as { ok: boolean; contentType?: string; body?: string; error?: string; logs: string };
        finish(m.ok ? { ok: true, contentType: m.contentType, body: m.body, logs: m.logs } : { ok: false, error: m.error, logs: m.logs });
      });
      child.on('error', (err) => finish({ ok: false, error: `Bot process failed: ${err.message}`, logs: '' }));
      child.on('exit', (exitCode, signal) => {
        const reason = /heap out of memory|Allocation failed/i.test(stderr)
          ? `Bot ran out of memory (${this.options.memoryMb} MB)`
          : `Bot process exited (${signal ?? `code ${exitCode}`}) before answering`;
        finish({ ok: false, error: reason, logs: '' });
      });
      child.send({ code, event, baseUrl, accessToken, allowedModules: ALLOWED_MODULES });
    });
  }
}
