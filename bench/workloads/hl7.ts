/**
 * HL7 v2 over MLLP: ADT^A01 and ORU^R01 (10 OBX) sent on 1 and 8 connections to the agent, timed
 * from send to ACK. In original mode the agent answers with the hl7-inbound bot's ACK, which comes
 * after the message's resources and its log entry are committed in one transaction.
 */
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ackCodeOf } from '../../agent/src/hl7/ack.ts';
import { MllpClient } from '../../agent/src/mllp/client.ts';
import { buildBots } from '../../scripts/build-bots.ts';
import { HL7_BOT_NAME, seed } from '../../seed/seed.ts';
import type { ErmisServer } from '../lib/ermis.ts';
import { measure } from '../lib/measure.ts';
import { startNode } from '../lib/processes.ts';
import type { BenchProcess, CpuGroups } from '../lib/processes.ts';
import type { Row, RowId } from '../lib/results.ts';
import type { ModeConfig } from '../run.ts';

const TS = '20261121101500';

/** Ten common chemistry results, LOINC-coded as the seeded Yiannoukas profile sends them. */
const OBX: [string, string, string, string, number][] = [
  ['2345-7', 'Glucose', 'mg/dL', '70-99', 95],
  ['2093-3', 'Cholesterol', 'mg/dL', '<200', 182],
  ['2571-8', 'Triglyceride', 'mg/dL', '<150', 120],
  ['2085-9', 'HDL Cholesterol', 'mg/dL', '>40', 52],
  ['13457-7', 'LDL Cholesterol (calc)', 'mg/dL', '<100', 106],
  ['2160-0', 'Creatinine', 'mg/dL', '0.7-1.3', 1.0],
  ['3094-0', 'Urea nitrogen', 'mg/dL', '7-20', 14],
  ['2951-2', 'Sodium', 'mmol/L', '136-145', 140],
  ['2823-3', 'Potassium', 'mmol/L', '3.5-5.1', 4.2],
  ['718-7', 'Hemoglobin', 'g/dL', '13.5-17.5', 14.6],
];

/** ORU^R01 with 10 OBX (about 1.3 KB) for the patient with Cyprus ID `cyId`; `filler` makes its results new. */
export function oruMessage(controlId: string, cyId: string, filler: string): string {
  return [
    `MSH|^~\\&|LIS|YIANNOUKAS|ERMIS|CLINIC|${TS}||ORU^R01^ORU_R01|${controlId}|P|2.5.1|||||CYP|UNICODE UTF-8`,
    `PID|1||${cyId}^^^CYMOI^NNCYP||GEORGIOU^ANDREAS||19610412|M`,
    `ORC|RE||${filler}`,
    `OBR|1||${filler}|24331-1^Lipid panel^LN|||20261121083000|||||||||||||||${TS}|||F`,
    ...OBX.map(([code, name, unit, range, value], i) => `OBX|${i + 1}|NM|${code}^${name}^LN||${value}|${unit}|${range}|N|||F|||20261121083000`),
  ].join('\r');
}

/** ADT^A01 admitting a new patient with Cyprus ID `cyId`. */
export function adtMessage(controlId: string, cyId: string, n: number): string {
  return [
    `MSH|^~\\&|HIS|CLINIC|ERMIS|CLINIC|${TS}||ADT^A01^ADT_A01|${controlId}|P|2.5.1|||||CYP|UNICODE UTF-8`,
    `EVN|A01|${TS}`,
    `PID|1||${cyId}^^^CYMOI^NNCYP||ΓΕΩΡΓΙΟΥ^ΕΛΕΝΗ^^^^^L~GEORGIOU^ELENI^^^^^L||${1940 + (n % 60)}0412|F|||Λεωφόρος Μακαρίου ${n % 200}^^Λευκωσία^^1065^CY`,
    `PV1|1|O|CARDIO^^^CLINIC||||1234^CHRISTODOULOU^ANDREAS`,
  ].join('\r');
}

export interface MllpLoadSpec {
  id: RowId;
  kind: Row['kind'];
  workload: string;
  port: number;
  connections: number;
  groups: CpuGroups;
  warmupMs: number;
  durationMs: number;
  maxMessages: number;
  message: (i: number) => string;
  note?: string;
  /** Called with the index of each message acknowledged AA. */
  accepted?: (i: number) => void;
}

/** Closed-loop MLLP: each connection sends its next message when the previous one is acknowledged; anything but AA is an error. */
export async function mllpLoad(spec: MllpLoadSpec): Promise<Row> {
  const clients = Array.from({ length: spec.connections }, () => new MllpClient({ host: '127.0.0.1', port: spec.port, keepAlive: true, idleTimeoutMs: 0 }));
  let next = 0;
  try {
    return await measure({
      id: spec.id,
      kind: spec.kind,
      workload: spec.workload,
      connections: spec.connections,
      unit: 'msg/s',
      groups: spec.groups,
      note: spec.note,
      load: {
        workers: spec.connections,
        warmupMs: spec.warmupMs,
        durationMs: spec.durationMs,
        maxIterations: spec.maxMessages,
        iteration: async (w, timed) => {
          const i = next++;
          const text = spec.message(i);
          await timed(text.split('|')[8].split('^').slice(0, 2).join('^'), async () => {
            const ack = (await clients[w].send(Buffer.from(text, 'utf8'), 120_000)).toString('utf8');
            const code = ackCodeOf(ack);
            if (code !== 'AA') {
              throw new Error(`ACK ${code ?? '(none)'}: ${ack.split('\r').filter((s) => /^(MSA|ERR)/.test(s)).join(' ')}`);
            }
          });
          spec.accepted?.(i);
        },
      },
    });
  } finally {
    clients.forEach((c) => c.close());
  }
}

export interface Hl7Pipeline {
  agent: BenchProcess;
  port: number;
}

/** Builds and deploys the hl7-inbound bot, seeds the lab profiles, the Agent and its channel, and starts the agent. */
export async function startHl7Pipeline(server: ErmisServer, port: number): Promise<Hl7Pipeline> {
  const [bot] = await buildBots([HL7_BOT_NAME]);
  const seeded = await seed(server.admin, { mllpPort: port, botCode: readFileSync(bot.dist, 'utf8') });
  const agent = startNode('agent', ['agent/src/main.ts', server.baseUrl, seeded.clientId, seeded.clientSecret, seeded.agentId], {
    PATH: process.env.PATH,
    AGENT_DATA_DIR: mkdtempSync(path.join(tmpdir(), 'ermis-bench-agent-')),
    LOG_LEVEL: 'warn',
  });
  // The agent logs at warn here: wait for the port instead of the "listening" line.
  const deadline = Date.now() + 60_000;
  for (;;) {
    const probe = new MllpClient({ host: '127.0.0.1', port, keepAlive: false });
    const ok = await probe.send(Buffer.from(adtMessage(`PROBE-${Date.now()}`, `PROBE${Date.now()}`, 0)), 30_000).then(
      () => true,
      () => false
    );
    probe.close();
    if (ok) {
      break;
    }
    if (agent.child.exitCode !== null || Date.now() > deadline) {
      throw new Error(`the agent did not start listening:\n${agent.output().slice(-4000)}`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  return { agent, port };
}

/** ADT^A01 and ORU^R01 on 1 and 8 connections; ORUs are for the patients the ADT runs admitted. */
export async function hl7Workloads(server: ErmisServer, pipeline: Hl7Pipeline, mode: ModeConfig, runId: string): Promise<Row[]> {
  const groups: CpuGroups = { server: { trees: [server.process.pid] }, agent: { trees: [pipeline.agent.pid] }, bench: { self: [process.pid] } };
  const admitted: string[] = [];
  const rows: Row[] = [];
  const common = { kind: 'ermis' as const, port: pipeline.port, groups, warmupMs: mode.hl7WarmupMs, durationMs: mode.hl7WindowMs, maxMessages: mode.hl7MaxMessages };
  for (const connections of [1, 8]) {
    const tag = `${runId}A${connections}`;
    rows.push(
      await mllpLoad({
        ...common,
        id: connections === 1 ? 'adt-1' : 'adt-8',
        workload: 'ADT^A01 over MLLP, new patient each (ACK after commit)',
        connections,
        message: (i) => adtMessage(`${tag}-${i}`, `${tag}${i}`, i),
        accepted: (i) => admitted.push(`${tag}${i}`),
      })
    );
  }
  let pick = 0;
  for (const connections of [1, 8]) {
    const tag = `${runId}O${connections}`;
    rows.push(
      await mllpLoad({
        ...common,
        id: connections === 1 ? 'oru-1' : 'oru-8',
        workload: 'ORU^R01 with 10 OBX over MLLP (ACK after commit)',
        connections,
        note: `for ${admitted.length.toLocaleString('en')} admitted patients`,
        message: (i) => oruMessage(`${tag}-${i}`, admitted.length ? admitted[pick++ % admitted.length] : `${tag}X`, `${tag}F${i}`),
      })
    );
  }
  return rows;
}
