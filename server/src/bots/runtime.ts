import { fork } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BotEvent } from '@medplum/core';
import { BotProcessPool } from './pool.ts';

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
  /** V8 heap limit of a bot's process. */
  memoryMb: number;
  /** Executions at once on this node, and bot processes at most; more executions wait. */
  concurrency: number;
  /** How long a bot's process stays up for its next execution (BOT_IDLE_MS); 0: one process per execution. */
  idleMs: number;
}

/**
 * Runs bots out of the server process, in Node processes under the permission model (they may read
 * @medplum/core and their own entry file, nothing else of the server; they may not write files or
 * start processes), with an empty environment, a heap cap and a wall-clock timeout per execution.
 * Whatever a bot does (hang, loop, throw, exhaust memory, exit), only its own process ends.
 * Processes are kept warm per bot and code version and used again (pool.ts).
 */
export class BotRuntime {
  private readonly options: RuntimeOptions;
  private readonly pool: BotProcessPool;

  constructor(options: RuntimeOptions) {
    this.options = options;
    this.pool = new BotProcessPool({ size: options.concurrency, idleMs: options.idleMs, memoryMb: options.memoryMb });
  }

  /** `bot` names the bot (project and id): its processes serve no other bot, even one with the same code. */
  run(bot: string, code: string, event: BotEvent, baseUrl: string, accessToken: string, timeoutMs = this.options.timeoutMs): Promise<BotRunResult> {
    const { allowedHosts, memoryMb } = this.options;
    // Everything a warm process was started with: if any of it differs, it is another process.
    const key = createHash('sha256').update(JSON.stringify([bot, code, baseUrl, allowedHosts, memoryMb, ALLOWED_MODULES])).digest('hex');
    return this.pool.run({
      owner: bot,
      key,
      timeoutMs,
      start: () => this.start(code, baseUrl),
      message: { kind: 'run', event, baseUrl, accessToken },
    });
  }

  /** The ids of the bot processes alive now. */
  get pids(): number[] {
    return this.pool.pids;
  }

  /** Ends every bot process (server shutdown). */
  close(): Promise<void> {
    return this.pool.close();
  }

  private start(code: string, baseUrl: string): ChildProcess {
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
    // Confines the process and compiles the bot's module before its first execution.
    child.send({ kind: 'load', code, baseUrl, allowedHosts: this.options.allowedHosts, allowedModules: ALLOWED_MODULES });
    return child;
  }
}
