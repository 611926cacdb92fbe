/**
 * `npm start`: ermis on one machine. Builds the app and the bots, starts the server (embedded
 * PostgreSQL when DATABASE_URL is unset), seeds the project (lab profiles, the hl7-inbound bot,
 * the Agent and its MLLP channel) and starts the agent on MLLP_PORT. Prints the URLs and the admin
 * sign-in. Ctrl-C stops everything.
 *
 * Without ADMIN_PASSWORD a password is generated on the first start and kept in
 * {DATA_DIR}/admin-password (so that the seed can sign in on later starts too).
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { buildBots } from './build-bots.ts';
import { HL7_BOT_NAME, seed, signIn } from '../seed/seed.ts';

const ROOT = path.resolve(import.meta.dirname, '..');
const dataDir = path.resolve(ROOT, process.env.DATA_DIR ?? '.data');
const port = Number(process.env.PORT ?? 8103);
const baseUrl = process.env.BASE_URL && /^https?:/.test(process.env.BASE_URL) ? process.env.BASE_URL : `http://localhost:${port}/`;
const mllpPort = Number(process.env.MLLP_PORT ?? 2575);
const adminEmail = process.env.ADMIN_EMAIL ?? 'admin@example.com';

mkdirSync(dataDir, { recursive: true });
const passwordFile = path.join(dataDir, 'admin-password');
const adminPassword =
  process.env.ADMIN_PASSWORD ??
  (existsSync(passwordFile)
    ? readFileSync(passwordFile, 'utf8').trim()
    : (() => {
        const generated = randomBytes(12).toString('base64url');
        writeFileSync(passwordFile, generated + '\n', { mode: 0o600 });
        return generated;
      })());

const children: ChildProcess[] = [];
const stopAll = (code: number): void => {
  for (const child of children) {
    if (child.exitCode === null) {
      child.kill('SIGTERM');
    }
  }
  setTimeout(() => process.exit(code), 2000).unref();
};
process.once('SIGINT', () => stopAll(0));
process.once('SIGTERM', () => stopAll(0));

function run(name: string, args: string[], env: NodeJS.ProcessEnv): ChildProcess {
  const child = spawn(process.execPath, args, { cwd: ROOT, env, stdio: ['ignore', 'inherit', 'inherit'] });
  child.once('exit', (code, signal) => {
    console.log(`${name} exited (${signal ?? code})`);
    stopAll(code ?? 1);
  });
  children.push(child);
  return child;
}

async function npmRun(args: string[]): Promise<void> {
  const child = spawn('npm', args, { cwd: ROOT, stdio: 'inherit' });
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  if (code !== 0) {
    throw new Error(`npm ${args.join(' ')} failed (${code})`);
  }
}

async function waitHealthy(timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await fetch(`${baseUrl}healthcheck`).then((r) => r.ok, () => false)) {
      return;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`The server did not become healthy within ${timeoutMs / 1000} s`);
}

try {
  if (process.env.SKIP_APP_BUILD !== 'true') {
    await npmRun(['run', 'build', '-w', 'app']);
  }
  const [bot] = await buildBots([HL7_BOT_NAME]);
  const env = { ...process.env, BASE_URL: baseUrl, ADMIN_EMAIL: adminEmail, ADMIN_PASSWORD: adminPassword, DATA_DIR: dataDir };
  run('server', ['server/src/main.ts'], env);
  await waitHealthy(120_000);
  const medplum = await signIn(baseUrl, adminEmail, adminPassword);
  const seeded = await seed(medplum, { mllpPort, botCode: readFileSync(bot.dist, 'utf8') });
  run('agent', ['agent/src/main.ts', baseUrl, seeded.clientId, seeded.clientSecret, seeded.agentId], {
    PATH: process.env.PATH,
    AGENT_DATA_DIR: path.join(dataDir, 'agent'),
    LOG_LEVEL: process.env.LOG_LEVEL ?? 'info',
  });
  console.log(
    [
      '',
      `ermis is running`,
      `  app and login:  ${baseUrl}`,
      `  FHIR base:      ${baseUrl}fhir/R4/`,
      `  MLLP (HL7 v2):  127.0.0.1:${mllpPort} (agent ${seeded.agentId}, channel lab-results → bot ${seeded.botId})`,
      `  admin sign-in:  ${adminEmail} / ${process.env.ADMIN_PASSWORD ? '(ADMIN_PASSWORD)' : `${adminPassword} (kept in ${passwordFile})`}`,
      '',
    ].join('\n')
  );
} catch (err) {
  console.error(`npm start failed: ${(err as Error).message}`);
  stopAll(1);
}
