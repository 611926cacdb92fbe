import { fork } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BotEvent } from '@medplum/core';

const CHILD = fileURLToPath(new URL('./child.ts', import.meta.url));
const ROOT = path.resolve(path.dirname(CHILD), '../../..');
const PRIVATE_ADDRESSES_FILE = fileURLToPath(new URL('../net/private-addresses.ts', import.meta.url));

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
  /** Private hosts/addresses bots may reach besides the server's API (OUTBOUND_ALLOWED_HOSTS). */
  allowedHosts: string[];
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
      const nonce = randomUUID();
      const child = fork(CHILD, [], {
        execArgv: [
          '--permission',
          // @medplum/core has no dependencies: it is all a bot may load. (Not node_modules as a
          // whole: workspace links there lead back into the server's sources.)
          `--allow-fs-read=${path.join(ROOT, 'node_modules', '@medplum', 'core')}`,
          `--allow-fs-read=${path.dirname(CHILD)}`,
          `--allow-fs-read=${PRIVATE_ADDRESSES_FILE}`,
          `--allow-fs-read=${path.join(ROOT, 'package.json')}`,
          `--allow-fs-read=${path.join(ROOT, 'server', 'package.json')}`,
          `--max-old-space-size=${this.options.memoryMb}`,
          '--disable-warning=ExperimentalWarning',
          '--disable-warning=SecurityWarning',
        ],
        env: {},
        stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
        serialization: 'advanced',
        // As root, bots run as nobody: they can then neither signal the server nor read its files.
        ...(process.getuid?.() === 0 ? { uid: 65534, gid: 65534 } : {}),
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
        const m = message as { ok: boolean; contentType?: string; body?: string; error?: string; logs: string; nonce?: string };
        if (m.nonce !== nonce) {
          return; // written by the bot itself (process.send), not by the runner
        }
        finish(m.ok ? { ok: true, contentType: m.contentType, body: m.body, logs: m.logs } : { ok: false, error: m.error, logs: m.logs });
      });
      child.on('error', (err) => finish({ ok: false, error: `Bot process failed: ${err.message}`, logs: '' }));
      child.on('exit', (exitCode, signal) => {
        const reason = /heap out of memory|Allocation failed/i.test(stderr)
          ? `Bot ran out of memory (${this.options.memoryMb} MB)`
          : `Bot process exited (${signal ?? `code ${exitCode}`}) before answering`;
        finish({ ok: false, error: reason, logs: '' });
      });
      child.send({ nonce, allowedHosts: this.options.allowedHosts, code, event, baseUrl, accessToken, allowedModules: ALLOWED_MODULES });
    });
  }
}
