/**
 * `npm start` on a fresh data directory (embedded PostgreSQL): the server, the seed and the agent
 * come up, and an ORU sent to the MLLP port is acknowledged by the hl7-inbound bot.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, expect, test } from 'vitest';
import { freePort } from '../../server/test/harness.ts';
import { parseAck, ROOT, sendOne } from './hl7-harness.ts';

let child: ChildProcess | undefined;
let dataDir: string | undefined;

afterAll(async () => {
  if (child && child.exitCode === null) {
    const exited = new Promise((resolve) => child?.once('exit', resolve));
    child.kill('SIGTERM');
    await exited;
  }
  if (dataDir) {
    await rm(dataDir, { recursive: true, force: true });
  }
});

test('npm start brings up the server, the seeded project and the agent: an ORU over MLLP gets the bot\'s ACK', async () => {
  dataDir = await mkdtemp(path.join(tmpdir(), 'ermis-npm-start-'));
  const [port, pgPort, mllpPort] = [await freePort(), await freePort(), await freePort()];
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    PORT: String(port),
    DATA_DIR: dataDir,
    EMBEDDED_POSTGRES_PORT: String(pgPort),
    MLLP_PORT: String(mllpPort),
    LOG_LEVEL: 'warn',
    // The app build has its own test; here it would only add time.
    SKIP_APP_BUILD: 'true',
  };
  delete env.DATABASE_URL;
  delete env.BASE_URL; // vitest sets BASE_URL=/ for its own use
  delete env.ADMIN_PASSWORD;
  child = spawn(process.execPath, ['scripts/start.ts'], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout?.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (output += d.toString()));
  const deadline = Date.now() + 100_000;
  while (!output.includes('ermis is running') && child.exitCode === null && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 200));
  }
  expect(output, output).toContain('ermis is running');
  expect(output).toMatch(/admin sign-in: {2}admin@example\.com \/ \S+ \(kept in /);
  // The agent listens once it has read its configuration.
  let ack: string | undefined;
  for (let i = 0; i < 100 && !ack; i++) {
    ack = await sendOne(mllpPort, `MSH|^~\\&|LIS|YIANNOUKAS|ERMIS|CLINIC|20261121101500||ORU^R01^ORU_R01|START-1|P|2.5.1\rPID|1||123^^^X^MR||DOE^JANE||19800101|F\rOBR|1||F-1|2345-7^Glucose^LN\rOBX|1|NM|2345-7^Glucose^LN||95|mg/dL|70-99|N|||F`, 5000).catch(() => undefined);
    if (!ack) {
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  expect(parseAck(ack), output).toMatchObject({ code: 'AA', controlId: 'START-1' });

  // The agent started as npm start starts it (no AGENT_HEARTBEAT_MS) beats every 10 s: each beat
  // is an update of its agent_connection row (an unset option once made that every millisecond).
  const db = new pg.Client({ connectionString: `postgres://postgres:ermis-local@127.0.0.1:${pgPort}/ermis` });
  await db.connect();
  try {
    const updates = async (): Promise<number> => {
      const { rows } = await db.query<{ n: string }>(`SELECT n_tup_upd AS n FROM pg_stat_user_tables WHERE relname = 'agent_connection'`);
      return Number(rows[0]?.n ?? 0);
    };
    const before = await updates();
    await new Promise((r) => setTimeout(r, 4000));
    expect(await updates() - before).toBeLessThanOrEqual(4);
  } finally {
    await db.end();
  }
}, 150_000);
