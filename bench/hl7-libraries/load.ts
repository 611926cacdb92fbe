/**
 * Loading packages that are not ermis dependencies: they live in a scratch directory (see README.md)
 * and are resolved from there with createRequire, then imported. Everything comes back as `unknown`;
 * the small interfaces in parsers.ts / server-child.ts describe only what this bench calls, and
 * `member()` checks that each of those members exists before it is used.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

export type Module = Record<string, unknown>;

export async function loadFrom(dir: string, name: string): Promise<Module> {
  const require = createRequire(path.join(path.resolve(dir), 'package.json'));
  const resolved = require.resolve(name);
  const mod: unknown = await import(pathToFileURL(resolved).href);
  if (typeof mod !== 'object' || mod === null) {
    throw new Error(`${name}: import did not return a module`);
  }
  return mod as Module;
}

export function packageVersion(dir: string, name: string): string {
  // Not require(`${name}/package.json`): some packages do not export it.
  for (let d = path.resolve(dir); ; d = path.dirname(d)) {
    const file = path.join(d, 'node_modules', name, 'package.json');
    if (existsSync(file)) {
      const pkg: unknown = JSON.parse(readFileSync(file, 'utf8'));
      return typeof pkg === 'object' && pkg !== null && 'version' in pkg && typeof pkg.version === 'string' ? pkg.version : '?';
    }
    if (d === path.dirname(d)) return '?';
  }
}

/** A named export that must be a class or function; typed by the caller's local interface. */
export function member<T>(mod: Module, name: string): T {
  const value = mod[name] ?? (typeof mod.default === 'object' && mod.default !== null ? (mod.default as Module)[name] : undefined);
  if (typeof value !== 'function') {
    throw new Error(`export ${name} is missing (got ${typeof value})`);
  }
  return value as T;
}

/** Where the scratch packages are: --libs <dir> or HL7_LIBS_DIR. */
export function libsDir(argv: readonly string[]): string {
  const i = argv.indexOf('--libs');
  const dir = i >= 0 ? argv[i + 1] : process.env.HL7_LIBS_DIR;
  if (!dir) {
    throw new Error('give the scratch directory with --libs <dir> or HL7_LIBS_DIR (see bench/hl7-libraries/README.md)');
  }
  return path.resolve(dir);
}

/** @medplum/hl7 pins @medplum/core 5.0.10, so it has its own folder below the scratch directory. */
export function medplumHl7Dir(libs: string): string {
  return path.join(libs, 'medplum-hl7');
}
