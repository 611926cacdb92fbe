import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const APP_DIR = path.join(REPO_ROOT, 'app');
export const APP_DIST = path.join(APP_DIR, 'dist');

/**
 * Builds the app (`vite build` into app/dist) unless the build is newer than every source file of
 * the app. The server serves app/dist only if it exists when the server starts, so call this
 * before starting a test server.
 */
export function ensureAppBuilt(): void {
  const built = mtime(path.join(APP_DIST, 'index.html'));
  const sources = ['index.html', 'vite.config.ts', 'package.json', 'src'].map((name) => path.join(APP_DIR, name));
  if (built > 0 && Math.max(...sources.map(newestMtime)) < built) {
    return;
  }
  const vite = path.join(path.dirname(createRequire(path.join(APP_DIR, 'package.json')).resolve('vite/package.json')), 'bin/vite.js');
  // vitest sets NODE_ENV=test, which would give a development build of React.
  const result = spawnSync(process.execPath, [vite, 'build', '--logLevel', 'warn'], {
    cwd: APP_DIR,
    env: { ...process.env, NODE_ENV: 'production' },
    encoding: 'utf8',
  });
  if (result.status !== 0) {
    throw new Error(`vite build failed (${result.status ?? result.signal}):\n${result.stdout}\n${result.stderr}`);
  }
}

function mtime(file: string): number {
  return statSync(file, { throwIfNoEntry: false })?.mtimeMs ?? 0;
}

function newestMtime(file: string): number {
  const stat = statSync(file, { throwIfNoEntry: false });
  if (!stat?.isDirectory()) {
    return stat?.mtimeMs ?? 0;
  }
  return Math.max(stat.mtimeMs, ...readdirSync(file).map((name) => newestMtime(path.join(file, name))));
}
