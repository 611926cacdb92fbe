import type { AuditEvent, Bot, Patient, Project, Subscription } from '@medplum/fhirtypes';
import { describe, expect, test } from 'vitest';
import { CronScheduler, timingToCron } from '../src/bots/cron.ts';
import { startTestServer, unique, until, useTestServer } from './harness.ts';
import { alive } from '../../tests/support/processes.ts';

const t = useTestServer({ BOT_TIMEOUT_MS: '3000', BOT_MEMORY_MB: '64', JOB_RETRY_BASE_MS: '50', CRON_TICK_MS: '300' });

async function deployBot(code: string, extra: Partial<Bot> = {}): Promise<Bot> {
  const bot = (await t.medplum.post(`admin/projects/${t.server.projectId}/bot`, { name: unique('bot') })) as Bot;
  const deployed = await t.medplum.post(`fhir/R4/Bot/${bot.id}/$deploy`, { code, filename: 'index.js' });
  expect(deployed).toMatchObject({ resourceType: 'OperationOutcome', id: 'ok' });
  const current = await t.medplum.readResource('Bot', bot.id as string);
  return Object.keys(extra).length ? t.medplum.updateResource<Bot>({ ...current, ...extra }) : current;
}

async function execute(botId: string, body: string, contentType: string): Promise<{ status: number; type: string | null; text: string }> {
  const res = await fetch(`${t.server.fhirUrl}Bot/${botId}/$execute`, {
    method: 'POST',
    headers: { ...t.server.authorization, 'Content-Type': contentType },
    body,
  });
  return { status: res.status, type: res.headers.get('content-type'), text: await res.text() };
}

async function executions(botId: string, count: number): Promise<AuditEvent[]> {
  for (let i = 0; i < 200; i++) {
    await t.server.services.auth.audit.flush();
    const events = await t.medplum.searchResources('AuditEvent', { entity: `Bot/${botId}`, type: 'https://medplum.com/CodeSystem/audit-event|execute' });
    if (events.length >= count) {
      return events;
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  return [];
}

const ECHO = `
exports.handler = async function (medplum, event) {
  console.log('content type', event.contentType);
  if (event.contentType === 'x-application/hl7-v2+er7') {
    return event.input.buildAck();
  }
  if (typeof event.input === 'string') {
    return 'got ' + event.input.length + ' characters: ' + event.input.split('\\n')[0];
  }
  const patient = await medplum.createResource({ resourceType: 'Patient', name: [{ family: event.input.family }] });
  return { patient: patient.id, secret: event.secrets.LAB_KEY && event.secrets.LAB_KEY.valueString, bot: event.bot.reference, requester: event.requester && event.requester.reference };
};
`;

describe('deploy and execute', () => {
  test('JSON in, JSON out; the bot writes through its own MedplumClient and gets the project secrets', async () => {
    const project = await t.medplum.readResource('Project', t.server.projectId);
    await t.medplum.updateResource<Project>({ ...project, secret: [{ name: 'LAB_KEY', valueString: 'k-123' }] });
    const bot = await deployBot(ECHO);
    const family = unique('BotMade');
    const res = await execute(bot.id as string, JSON.stringify({ family }), 'application/json');
    expect(res.status).toBe(200);
    expect(res.type).toMatch(/^application\/json/);
    const body = JSON.parse(res.text);
    expect(body).toMatchObject({ secret: 'k-123', bot: `Bot/${bot.id}` });
    expect(body.requester).toMatch(/^Practitioner\//);
    const made = (await t.medplum.readResource('Patient', body.patient)) as Patient;
    expect(made.name?.[0].family).toBe(family);
    // the bot wrote as itself
    const extended = await (await t.server.fhir(`Patient/${body.patient}`, { headers: { 'X-Medplum': 'extended' } })).json();
    expect(extended.meta.author.reference).toBe(`Bot/${bot.id}`);
    const audits = await executions(bot.id as string, 1);
    expect(audits[0]).toMatchObject({ outcome: '0' });
    expect(audits[0].outcomeDesc).toContain('content type application/json');
  });

  test('text, CSV and HL7 v2 bodies; an Hl7Message answer comes back as HL7', async () => {
    const bot = await deployBot(ECHO);
    const text = await execute(bot.id as string, 'hello world', 'text/plain');
    expect(text).toMatchObject({ status: 200, text: 'got 11 characters: hello world' });
    expect(text.type).toMatch(/^text\/plain/);
    const csv = await execute(bot.id as string, 'code,value\n2345-7,5.4\n', 'text/csv');
    expect(csv.text).toBe('got 22 characters: code,value');
    const oru = 'MSH|^~\\&|LIS|LAB|ERMIS|CLINIC|20240102030405||ORU^R01|MSG-1|P|2.5.1\rPID|1||123\r';
    const ack = await execute(bot.id as string, oru, 'x-application/hl7-v2+er7');
    expect(ack.status).toBe(200);
    expect(ack.type).toMatch(/^x-application\/hl7-v2\+er7/);
    expect(ack.text).toMatch(/^MSH\|\^~\\&\|/);
    expect(ack.text).toContain('MSA|AA|MSG-1');
  });

  test('$execute by identifier; unknown bots and undeployed bots answer with an OperationOutcome', async () => {
    const system = 'https://ermis.example/bots';
    const value = unique('echo');
    const bot = await deployBot(ECHO, { identifier: [{ system, value }] });
    const res = await fetch(`${t.server.fhirUrl}Bot/$execute?identifier=${encodeURIComponent(`${system}|${value}`)}`, {
      method: 'POST',
      headers: { ...t.server.authorization, 'Content-Type': 'text/plain' },
      body: 'by identifier',
    });
    expect(await res.text()).toBe('got 13 characters: by identifier');
    expect((await execute('no-such-bot', '{}', 'application/json')).status).toBe(404);
    const fresh = (await t.medplum.post(`admin/projects/${t.server.projectId}/bot`, { name: unique('empty') })) as Bot;
    const undeployed = await execute(fresh.id as string, '{}', 'application/json');
    expect(undeployed.status).toBe(400);
    expect(undeployed.text).toContain('no deployed code');
    expect(bot.id).toBeDefined();
  });

  test('an ES module bot, as Medplum also accepts, runs unchanged; a handler returning nothing answers All OK', async () => {
    const esm = await deployBot(`import { getReferenceString } from '@medplum/core';
export async function handler(medplum, event) {
  return getReferenceString(event.bot) + ' got ' + event.input;
}`);
    expect((await execute(esm.id as string, 'x', 'text/plain')).text).toBe(`Bot/${esm.id} got x`);
    const quiet = await deployBot('exports.handler = async () => undefined;');
    const res = await execute(quiet.id as string, '{}', 'application/json');
    expect(JSON.parse(res.text)).toMatchObject({ resourceType: 'OperationOutcome', issue: [{ details: { text: 'All OK' } }] });
    await expect(t.medplum.post(`fhir/R4/Bot/${esm.id}/$deploy`, { code: 'export async function handler( {', filename: 'index.mjs' })).rejects.toThrow(
      'does not compile'
    );
  });

  test('$deploy refuses code that does not compile, and keeps the previous code', async () => {
    const bot = await deployBot(ECHO);
    await expect(t.medplum.post(`fhir/R4/Bot/${bot.id}/$deploy`, { code: 'exports.handler = async (', filename: 'x.js' })).rejects.toThrow('does not compile');
    await expect(t.medplum.post(`fhir/R4/Bot/${bot.id}/$deploy`, {})).rejects.toThrow('Missing code');
    expect((await execute(bot.id as string, 'still here', 'text/plain')).text).toBe('got 10 characters: still here');
  });
});

describe('asynchronous execution', () => {
  test('Prefer: respond-async answers 202 with a status URL; MedplumClient polls it to the completed AsyncJob', async () => {
    const bot = await deployBot(ECHO);
    const res = await fetch(`${t.server.fhirUrl}Bot/${bot.id}/$execute`, {
      method: 'POST',
      headers: { ...t.server.authorization, 'Content-Type': 'text/plain', Prefer: 'respond-async' },
      body: 'later',
    });
    expect(res.status).toBe(202);
    const location = res.headers.get('content-location') as string;
    expect(location).toMatch(/\/fhir\/R4\/job\/[^/]+\/status$/);
    const job = await t.medplum.get(location, { pollStatusOnAccepted: true } as RequestInit);
    expect(job).toMatchObject({ resourceType: 'AsyncJob', status: 'completed' });
    expect(job.output.parameter).toEqual([
      { name: 'responseBody', valueString: 'got 5 characters: later' },
      { name: 'contentType', valueString: 'text/plain' },
    ]);
    const failing = await deployBot("exports.handler = async () => { throw new Error('no lab profile'); };");
    const accepted = await fetch(`${t.server.fhirUrl}Bot/${failing.id}/$execute`, {
      method: 'POST',
      headers: { ...t.server.authorization, 'Content-Type': 'application/json', Prefer: 'respond-async' },
      body: '{}',
    });
    const failed = await t.medplum.get(accepted.headers.get('content-location') as string, { pollStatusOnAccepted: true } as RequestInit);
    expect(failed.status).toBe('error');
    expect(JSON.stringify(failed.output)).toContain('no lab profile');
  });
});

describe('misbehaving bots are contained', () => {
  const cases: [string, string, RegExp][] = [
    ['an async wait that never ends', 'exports.handler = () => new Promise(() => {});', /timed out after 3000 ms/],
    ['a CPU loop', 'exports.handler = async () => { for (;;) {} };', /timed out after 3000 ms/],
    ['a memory blow-up', 'exports.handler = async () => { const a = []; for (;;) a.push(new Array(1e6).fill(7)); };', /out of memory/],
    ['a thrown error', "exports.handler = async () => { throw new Error('lab profile missing'); };", /lab profile missing/],
    ['process.exit', 'exports.handler = async () => { process.exit(1); };', /exited \(code 1\)/],
    ['reading server files', "exports.handler = async () => (await import('node:fs')).readFileSync('/etc/hostname', 'utf8');", /restricted/],
    ['starting a process', "exports.handler = async () => require('child_process').execSync('id');", /not available to bots/],
    [
      'connecting to the database',
      "exports.handler = async () => { const net = await import('node:net'); await new Promise((ok, fail) => net.connect(5432, '127.0.0.1', ok).on('error', fail)); return 'connected'; };",
      /may not connect to 127\.0\.0\.1:5432/,
    ],
    [
      'reaching a private address by name',
      "exports.handler = async () => { try { await fetch('http://localhost:6379/'); } catch (err) { throw new Error(String(err.cause?.message ?? err.message)); } return 'reached'; };",
      /may not connect to localhost/,
    ],
    ['signalling the server', 'exports.handler = async () => { process.kill(process.ppid, 0); return "signalled"; };', /may not connect to other processes/],
    [
      'loading other installed packages',
      "exports.handler = async () => process.getBuiltinModule('module').createRequire(process.cwd() + '/')('pg');",
      /restricted|Cannot find module/,
    ],
  ];
  test.each(cases)('%s: the bot fails alone, with an audited error; the server keeps serving', async (_name, code, expected) => {
    const bot = await deployBot(code);
    const [res, health] = await Promise.all([
      execute(bot.id as string, '{}', 'application/json'),
      // while the bot misbehaves, other requests are answered
      (async () => {
        await new Promise((r) => setTimeout(r, 200));
        return t.server.fhir('Patient?_count=1');
      })(),
    ]);
    expect(health.status).toBe(200);
    expect(res.status).toBe(400);
    expect(JSON.parse(res.text).issue[0].details.text).toMatch(expected);
    const audits = await executions(bot.id as string, 1);
    expect(audits[0].outcome).toBe('4');
    expect(audits[0].outcomeDesc).toMatch(expected);
  });
});

test('a result the bot sends itself over the IPC channel is ignored', async () => {
  const bot = await deployBot(
    "exports.handler = async () => { process.send({ ok: true, contentType: 'text/plain', body: 'forged', logs: '' }); await new Promise((r) => setTimeout(r, 200)); return 'genuine'; };"
  );
  expect((await execute(bot.id as string, '{}', 'application/json')).text).toBe('genuine');
});

test('a result sent with the nonce of an earlier execution of the same process is ignored', async () => {
  // The bot listens to its process's messages and keeps the first nonce it sees (of the first or
  // second execution, depending on when its module loaded). (It sees the current one too: that is
  // its own execution, see pool.ts.)
  const bot = await deployBot(`let first;
process.on('message', (m) => { if (m && m.nonce && !first) first = m.nonce; });
exports.handler = async (medplum, event) => {
  if (event.input === 'forge') {
    process.send({ ok: true, contentType: 'text/plain', body: 'forged', logs: '', nonce: first });
    await new Promise((r) => setTimeout(r, 200));
  }
  return 'genuine ' + process.pid;
};`);
  const first = await execute(bot.id as string, 'plain', 'text/plain');
  expect((await execute(bot.id as string, 'plain', 'text/plain')).text).toBe(first.text);
  const third = await execute(bot.id as string, 'forge', 'text/plain');
  expect(third.text).toBe(first.text); // same process, and its own answer
});


describe('warm bot processes', () => {
  const PID_BOT = `let runs = 0;
exports.handler = async (medplum, event) => {
  console.log('execution ' + event.input);
  if (event.input === 'exit') process.exit(2);
  if (event.input === 'hang') return new Promise(() => {});
  if (event.input === 'throw') throw new Error('thrown on purpose');
  if (event.input === 'slow') await new Promise((r) => setTimeout(r, 500));
  if (event.input === 'write') await medplum.createResource({ resourceType: 'Patient', name: [{ family: 'Warm' }] });
  runs++;
  return { pid: process.pid, runs };
};`;

  async function run(botId: string, input = 'go'): Promise<{ pid: number; runs: number }> {
    const res = await execute(botId, input, 'text/plain');
    expect(res.status, res.text).toBe(200);
    return JSON.parse(res.text);
  }

  test('a second execution runs in the same process, with a new token and its own console output', async () => {
    const bot = await deployBot(PID_BOT);
    const first = await run(bot.id as string, 'write');
    const second = await run(bot.id as string, 'write');
    expect(second.pid).toBe(first.pid);
    expect(second.runs).toBe(first.runs + 1); // the module was loaded once
    // each execution's token is revoked after it: the second write worked with a token of its own
    const audits = await executions(bot.id as string, 2);
    expect(audits).toHaveLength(2);
    for (const audit of audits) {
      expect(audit.outcome).toBe('0');
      expect(audit.outcomeDesc?.match(/execution write/g)).toHaveLength(1);
    }
  });

  test('a process that exited or hung is replaced by a fresh one and the next execution succeeds; a thrown error keeps it', async () => {
    const bot = await deployBot(PID_BOT);
    const before = await run(bot.id as string);
    const exited = await execute(bot.id as string, 'exit', 'text/plain');
    expect(exited.text).toMatch(/exited \(code 2\)/);
    const afterExit = await run(bot.id as string);
    expect(afterExit.pid).not.toBe(before.pid);
    expect(afterExit.runs).toBe(1);
    const hung = await execute(bot.id as string, 'hang', 'text/plain');
    expect(hung.text).toMatch(/timed out after 3000 ms/);
    const afterHang = await run(bot.id as string);
    expect(afterHang.pid).not.toBe(afterExit.pid);
    expect(afterHang.runs).toBe(1);
    expect(await until(() => !alive(afterExit.pid))).toBe(true);
    const thrown = await execute(bot.id as string, 'throw', 'text/plain');
    expect(thrown.text).toContain('thrown on purpose');
    expect(await run(bot.id as string)).toEqual({ pid: afterHang.pid, runs: 2 });
  });

  test('two bots never share a process, even with the same code', async () => {
    const a = await deployBot(PID_BOT);
    const b = await deployBot(PID_BOT);
    const a1 = await run(a.id as string);
    const b1 = await run(b.id as string);
    const a2 = await run(a.id as string);
    const b2 = await run(b.id as string);
    expect(a2.pid).toBe(a1.pid);
    expect(b2.pid).toBe(b1.pid);
    expect(b1.pid).not.toBe(a1.pid);
    expect([a2.runs, b2.runs]).toEqual([2, 2]);
  });

  test('a redeployed bot runs its new code in a new process; the old one ends', async () => {
    const bot = await deployBot(PID_BOT);
    const old = await run(bot.id as string);
    await t.medplum.post(`fhir/R4/Bot/${bot.id}/$deploy`, { code: 'exports.handler = async () => ({ version: 2, pid: process.pid });', filename: 'index.js' });
    const res = await execute(bot.id as string, 'go', 'text/plain');
    const now = JSON.parse(res.text);
    expect(now.version).toBe(2);
    expect(now.pid).not.toBe(old.pid);
    expect(await until(() => !alive(old.pid))).toBe(true);
  });

  test('overlapping executions of one bot each get a process, and all answer', async () => {
    const bot = await deployBot(PID_BOT);
    const results = await Promise.all([1, 2, 3].map(() => run(bot.id as string, 'slow')));
    const pids = new Set(results.map((r) => r.pid));
    expect(pids.size).toBe(3);
    expect(results.map((r) => r.runs)).toEqual([1, 1, 1]);
    // afterwards they are warm: the next execution takes one of them
    expect([...pids]).toContain((await run(bot.id as string)).pid);
  });

  test('when the server stops, no bot process is left', async () => {
    const other = await startTestServer({ BOT_IDLE_MS: '600000' });
    let pids: number[] = [];
    try {
      const medplum = other.medplum();
      const bot = (await medplum.post(`admin/projects/${other.projectId}/bot`, { name: unique('bot') })) as Bot;
      await medplum.post(`fhir/R4/Bot/${bot.id}/$deploy`, { code: PID_BOT, filename: 'index.js' });
      const answers = await Promise.all(
        [1, 2].map(async () => {
          const res = await fetch(`${other.fhirUrl}Bot/${bot.id}/$execute`, {
            method: 'POST',
            headers: { ...other.authorization, 'Content-Type': 'text/plain' },
            body: 'slow',
          });
          return JSON.parse(await res.text()) as { pid: number };
        })
      );
      pids = answers.map((a) => a.pid);
      expect(new Set(pids).size).toBe(2);
      expect(pids.every(alive)).toBe(true); // warm, waiting for the next execution
    } finally {
      await other.stop();
    }
    expect(pids.filter(alive)).toEqual([]);
  });
});

describe('subscriptions with a Bot endpoint', () => {
  test('the bot runs with the resource as input', async () => {
    const family = unique('Trigger');
    const bot = await deployBot(`
exports.handler = async function (medplum, event) {
  const patient = event.input;
  await medplum.createResource({ resourceType: 'Communication', status: 'completed', subject: { reference: 'Patient/' + patient.id }, payload: [{ contentString: event.headers['X-Medplum-Interaction'] }] });
};`);
    await t.medplum.createResource<Subscription>({
      resourceType: 'Subscription',
      status: 'active',
      reason: 'bot',
      criteria: `Patient?name=${family}`,
      channel: { type: 'rest-hook', endpoint: `Bot/${bot.id}` },
    });
    const patient = await t.medplum.createResource<Patient>({ resourceType: 'Patient', name: [{ family }] });
    let found: unknown[] = [];
    for (let i = 0; i < 400 && found.length === 0; i++) {
      found = await t.medplum.searchResources('Communication', { subject: `Patient/${patient.id}` });
      await new Promise((r) => setTimeout(r, 25));
    }
    expect(found).toHaveLength(1);
    expect((found[0] as { payload: { contentString: string }[] }).payload[0].contentString).toBe('create');
  });

  test('with runAsUser the bot acts as the author of the resource', async () => {
    const family = unique('RunAs');
    const bot = await deployBot(
      `exports.handler = async (medplum, event) => { await medplum.createResource({ resourceType: 'Communication', status: 'completed', subject: { reference: 'Patient/' + event.input.id } }); };`,
      { runAsUser: true }
    );
    await t.medplum.createResource<Subscription>({
      resourceType: 'Subscription',
      status: 'active',
      reason: 'run as',
      criteria: `Patient?name=${family}`,
      channel: { type: 'rest-hook', endpoint: `Bot/${bot.id}` },
    });
    const patient = await t.medplum.createResource<Patient>({ resourceType: 'Patient', name: [{ family }] });
    let found: { id?: string }[] = [];
    for (let i = 0; i < 400 && found.length === 0; i++) {
      found = await t.medplum.searchResources('Communication', { subject: `Patient/${patient.id}` });
      await new Promise((r) => setTimeout(r, 25));
    }
    expect(found).toHaveLength(1);
    const extended = await (await t.server.fhir(`Communication/${found[0].id}`, { headers: { 'X-Medplum': 'extended' } })).json();
    const me = await t.medplum.get('auth/me');
    expect(extended.meta.author.reference).toBe(`Practitioner/${me.profile.id}`);
  });
});

describe('cron bots', () => {
  test('a cronString bot runs on schedule with itself as input, once per due time, until its schedule is removed', async () => {
    const tag = unique('cron');
    const bot = await deployBot(
      `exports.handler = async (medplum, event) => { await medplum.createResource({ resourceType: 'Communication', status: 'completed', identifier: [{ system: 'urn:cron', value: '${tag}' }], payload: [{ contentString: event.input.resourceType + '/' + event.input.id }] }); };`,
      { cronString: '* * * * * *' }
    );
    let runs: { payload?: { contentString?: string }[] }[] = [];
    for (let i = 0; i < 400 && runs.length < 2; i++) {
      runs = await t.medplum.searchResources('Communication', { identifier: `urn:cron|${tag}` });
      await new Promise((r) => setTimeout(r, 25));
    }
    expect(runs.length).toBeGreaterThanOrEqual(2);
    expect(runs[0].payload?.[0].contentString).toBe(`Bot/${bot.id}`);
    // another node (or a restart) looking at the same past seconds schedules nothing again
    const scheduled = async (): Promise<string> =>
      (await t.server.services.pool.query<{ n: string }>('SELECT count(*) AS n FROM cron_run WHERE bot_id = $1', [`${t.server.projectId}/${bot.id}`]))
        .rows[0].n;
    const before = await scheduled();
    const other = new CronScheduler(t.server.services.pool, t.server.services.jobs, 1000, () => undefined);
    const now = new Date();
    await other.tick(now, new Date(now.getTime() - 3000));
    const { rows: queued } = await t.server.services.pool.query<{ n: string }>(
      "SELECT count(*) AS n FROM job WHERE kind = 'bot-cron' AND payload->>'botId' = $1 AND created >= $2",
      [bot.id, now]
    );
    expect(Number(await scheduled())).toBeLessThanOrEqual(Number(before) + 1); // at most the second that just began
    expect(Number(queued[0].n)).toBeLessThanOrEqual(1);
    const current = await t.medplum.readResource('Bot', bot.id as string);
    await t.medplum.updateResource<Bot>({ ...current, cronString: undefined });
    await new Promise((r) => setTimeout(r, 1500));
    const settled = (await t.medplum.searchResources('Communication', { identifier: `urn:cron|${tag}` })).length;
    await new Promise((r) => setTimeout(r, 1500));
    expect((await t.medplum.searchResources('Communication', { identifier: `urn:cron|${tag}` })).length).toBe(settled);
  });

  test('cronTiming is read as cron', () => {
    expect(timingToCron({ repeat: { period: 15, periodUnit: 'min' } })).toEqual(['0 */15 * * * *']);
    expect(timingToCron({ repeat: { timeOfDay: ['07:30:00', '19:00:00'], dayOfWeek: ['mon', 'fri'] } })).toEqual(['0 30 7 * * 1,5', '0 0 19 * * 1,5']);
    expect(timingToCron({ repeat: { period: 2, periodUnit: 'h' } })).toEqual(['0 0 */2 * * *']);
    expect(timingToCron({ repeat: { period: 1, periodUnit: 'mo' } })).toEqual([]);
  });
});
