/**
 * Install facts for a package as installed in the scratch directory: its dependency closure
 * (count, bytes on disk, licences) read from node_modules, and optionally `npm view` (publish dates,
 * latest version, peer dependencies).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';

export interface InstallFacts {
  package: string;
  version: string;
  licence: string;
  dependencies: number;
  closureBytes: number;
  licences: Record<string, number>;
  largest: string[];
  peerDependencies: Record<string, string>;
  published?: string;
  latest?: string;
  latestPublished?: string;
  npmLsProblems: string[];
}

interface PackageJson {
  name?: string;
  version?: string;
  license?: unknown;
  dependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
}

function readJson(file: string): PackageJson {
  return JSON.parse(readFileSync(file, 'utf8')) as PackageJson;
}

function dirBytes(dir: string): number {
  let total = 0;
  for (const name of readdirSync(dir)) {
    if (name === 'node_modules') continue;
    const full = path.join(dir, name);
    const st = statSync(full);
    total += st.isDirectory() ? dirBytes(full) : st.size;
  }
  return total;
}

/** Node's lookup: from `fromDir` upwards, the first node_modules/<name>. */
function locate(name: string, fromDir: string, root: string): string | undefined {
  let dir = fromDir;
  for (;;) {
    const candidate = path.join(dir, 'node_modules', name);
    if (existsSync(path.join(candidate, 'package.json'))) return candidate;
    if (dir === root || dir === path.dirname(dir)) return undefined;
    dir = path.dirname(dir);
  }
}

function licenceOf(pkg: PackageJson): string {
  return typeof pkg.license === 'string' ? pkg.license : pkg.license === undefined ? '(none)' : JSON.stringify(pkg.license);
}

function npmJson(args: string[], cwd: string): unknown {
  try {
    return JSON.parse(execFileSync('npm', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 60_000 }));
  } catch (e) {
    const out = (e as { stdout?: unknown }).stdout;
    if (typeof out === 'string' && out.trim().startsWith('{')) return JSON.parse(out);
    return undefined;
  }
}

export function installFacts(installDir: string, name: string, withNpmView: boolean): InstallFacts {
  const top = locate(name, installDir, installDir);
  if (!top) throw new Error(`${name} is not installed under ${installDir}`);
  const seen = new Map<string, PackageJson>();
  const queue = [top];
  while (queue.length) {
    const dir = queue.shift() as string;
    if (seen.has(dir)) continue;
    const pkg = readJson(path.join(dir, 'package.json'));
    seen.set(dir, pkg);
    for (const dep of Object.keys({ ...pkg.dependencies, ...pkg.peerDependencies })) {
      const found = locate(dep, dir, installDir);
      if (found) queue.push(found);
    }
  }
  const licences: Record<string, number> = {};
  const sizes: [string, number][] = [];
  for (const [dir, pkg] of seen) {
    const l = licenceOf(pkg);
    licences[l] = (licences[l] ?? 0) + 1;
    sizes.push([`${pkg.name}@${pkg.version}`, dirBytes(dir)]);
  }
  sizes.sort((a, b) => b[1] - a[1]);
  const self = seen.get(top) as PackageJson;
  const facts: InstallFacts = {
    package: name,
    version: self.version ?? '?',
    licence: licenceOf(self),
    dependencies: seen.size - 1,
    closureBytes: sizes.reduce((a, [, b]) => a + b, 0),
    licences,
    largest: sizes.slice(0, 4).map(([n, b]) => `${n} ${(b / 1048576).toFixed(1)} MiB`),
    peerDependencies: self.peerDependencies ?? {},
    npmLsProblems: [],
  };
  if (withNpmView) {
    const view = npmJson(['view', name, 'time', 'dist-tags', '--json'], installDir);
    if (typeof view === 'object' && view !== null) {
      const v = view as { time?: Record<string, string>; 'dist-tags'?: Record<string, string> };
      facts.published = v.time?.[facts.version];
      facts.latest = v['dist-tags']?.latest;
      if (facts.latest) facts.latestPublished = v.time?.[facts.latest];
    }
  }
  const ls = npmJson(['ls', '--all', '--json'], installDir);
  if (typeof ls === 'object' && ls !== null && 'problems' in ls && Array.isArray(ls.problems)) {
    facts.npmLsProblems = ls.problems.map(String);
  }
  return facts;
}
