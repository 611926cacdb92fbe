/**
 * Builds every bot (`bots/<name>/src/index.ts`) into the CommonJS file `medplum bot deploy` ships
 * (`bots/<name>/dist/index.js`): one bundle per bot, for Node, with @medplum/core left to the bot
 * runtime (which provides it; a bundled copy would also break `instanceof Hl7Message` there).
 * A bot that would need any other module at run time fails the build: bots import only @medplum/core.
 *
 * `npm run build:bots` (all bots) or `node scripts/build-bots.ts [name ...]`.
 */
import { build } from 'esbuild';
import { existsSync, readdirSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';

export const ROOT = resolve(import.meta.dirname, '..');
const RUNTIME_MODULES = new Set(['@medplum/core']);

export interface BuiltBot {
  name: string;
  source: string;
  dist: string;
}

/** The bots under `<root>/bots`: every folder with a `src/index.ts`. */
export function listBots(root = ROOT): string[] {
  const dir = join(root, 'bots');
  if (!existsSync(dir)) {
    return [];
  }
  return readdirSync(dir, { withFileTypes: true })
    .filter((d) => d.isDirectory() && existsSync(join(dir, d.name, 'src', 'index.ts')))
    .map((d) => d.name)
    .sort();
}

export async function buildBots(names?: string[], root = ROOT): Promise<BuiltBot[]> {
  const all = listBots(root);
  const wanted = names?.length ? names : all;
  const unknown = wanted.filter((n) => !all.includes(n));
  if (unknown.length) {
    throw new Error(`No such bot: ${unknown.join(', ')} (bots: ${all.join(', ') || 'none'})`);
  }
  const built: BuiltBot[] = [];
  for (const name of wanted) {
    const source = join(root, 'bots', name, 'src', 'index.ts');
    const dist = join(root, 'bots', name, 'dist', 'index.js');
    const result = await build({
      entryPoints: [source],
      outfile: dist,
      bundle: true,
      platform: 'node',
      format: 'cjs',
      target: 'node22',
      external: [...RUNTIME_MODULES],
      metafile: true,
      logLevel: 'silent',
      legalComments: 'none',
    });
    const imports = Object.values(result.metafile.outputs).flatMap((o) => o.imports.filter((i) => i.external).map((i) => i.path));
    const foreign = [...new Set(imports.filter((p) => !RUNTIME_MODULES.has(p)))];
    if (foreign.length) {
      throw new Error(`Bot ${name} requires ${foreign.join(', ')} at run time; bots may use only ${[...RUNTIME_MODULES].join(', ')}`);
    }
    built.push({ name, source, dist });
  }
  return built;
}

if (import.meta.main) {
  try {
    for (const bot of await buildBots(process.argv.slice(2))) {
      console.log(`${bot.name}: ${relative(ROOT, bot.source)} -> ${relative(ROOT, bot.dist)}`);
    }
  } catch (err) {
    console.error(err instanceof Error ? err.message : err);
    process.exitCode = 1;
  }
}
