/**
 * The ceiling for the HL7 workloads: the agent's own MLLP listener answering every message with an
 * AA at once (no spool, no server, no storage). What the transport gives at most.
 *
 *   node bench/ceilings/mllp-echo.ts <port>
 */
import { buildAck } from '../../agent/src/hl7/ack.ts';
import { MllpListener } from '../../agent/src/mllp/listener.ts';

const listener = new MllpListener({
  host: '127.0.0.1',
  port: Number(process.argv[2]),
  onMessage: async (frame) => Buffer.from(buildAck(frame.toString('latin1'), 'AA'), 'latin1'),
});
const address = await listener.listen();
console.log(`mllp echo listening ${address.port}`);
const stop = async (): Promise<void> => {
  await listener.close();
  process.exit(0);
};
process.once('SIGTERM', () => void stop());
process.once('SIGINT', () => void stop());
