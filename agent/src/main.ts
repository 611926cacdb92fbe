/**
 * Starts the ermis agent.
 *
 *   node agent/src/main.ts [baseUrl clientId clientSecret agentId]
 *
 * or with the environment: BASE_URL (the server, e.g. http://localhost:8103/), AGENT_CLIENT_ID,
 * AGENT_CLIENT_SECRET, AGENT_ID, AGENT_DATA_DIR (default .data/agent), LOG_LEVEL.
 * Medplum's agent takes the same four arguments.
 */
import path from 'node:path';
import { ErmisAgent } from './agent.ts';
import { createLogger } from './log.ts';

const [argBase, argClient, argSecret, argAgent] = process.argv.slice(2);
const baseUrl = argBase ?? process.env.BASE_URL ?? 'http://localhost:8103/';
const clientId = argClient ?? process.env.AGENT_CLIENT_ID;
const clientSecret = argSecret ?? process.env.AGENT_CLIENT_SECRET;
const agentId = argAgent ?? process.env.AGENT_ID;
if (!clientId || !clientSecret || !agentId) {
  console.error('Usage: node agent/src/main.ts <baseUrl> <clientId> <clientSecret> <agentId> (or BASE_URL, AGENT_CLIENT_ID, AGENT_CLIENT_SECRET, AGENT_ID)');
  process.exit(2);
}
const log = createLogger(process.env.LOG_LEVEL ?? 'info');
const agent = new ErmisAgent({
  baseUrl: baseUrl.endsWith('/') ? baseUrl : `${baseUrl}/`,
  clientId,
  clientSecret,
  agentId,
  dataDir: path.resolve(process.env.AGENT_DATA_DIR ?? path.join(process.env.DATA_DIR ?? '.data', 'agent')),
  log,
  heartbeatMs: process.env.AGENT_HEARTBEAT_MS ? Number(process.env.AGENT_HEARTBEAT_MS) : undefined,
});

try {
  await agent.start();
  log.info('agent started', { agentId, ports: Object.fromEntries(agent.ports) });
} catch (err) {
  log.error('agent failed to start', { error: (err as Error).message });
  process.exit(1);
}

// A failure in one message's handling must not take the agent (and every channel) down.
process.on('unhandledRejection', (reason) => log.error('unhandled rejection', { error: reason instanceof Error ? reason.message : String(reason) }));

const shutdown = (): void => {
  log.info('agent stopping');
  void agent.stop().then(() => process.exit(0));
};
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
