import { execFile } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { join, resolve } from 'node:path';

/** The repository root and the `medplum` CLI 5.0.10 installed by the tests/medplum-cli workspace. */
export const ROOT = resolve(import.meta.dirname, '../..');
export const BIN = join(ROOT, 'node_modules/.bin');
export const MEDPLUM = join(BIN, 'medplum');

export interface CliRun {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/**
 * The CLI's environment: nothing of the test's (vitest's BASE_URL=/ among it) but HOME (where it
 * keeps its profiles) and PATH with Node 24 first (its shebang is `env node`); `extraPath` goes
 * before that (e.g. a fake xdg-open).
 */
export function cliEnv(home: string, extraPath?: string): NodeJS.ProcessEnv {
  return { HOME: home, PATH: [extraPath, BIN, process.env.PATH ?? ''].filter(Boolean).join(':'), NO_COLOR: '1' };
}

/** Runs `medplum <args>` in `cwd` and waits for it (60 s at most); `onChild` sees the process (to kill it later). */
export function runMedplum(args: string[], cwd: string, env: NodeJS.ProcessEnv, onChild?: (child: ChildProcess) => void): Promise<CliRun> {
  return new Promise((resolvePromise) => {
    const child = execFile(MEDPLUM, args, { cwd, env, timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      resolvePromise({ exitCode: code, stdout, stderr });
    });
    onChild?.(child);
  });
}
