/**
 * Structured logs (one JSON object per line on stdout). They carry ids, counts and states, never
 * message content: no names, identifiers or results (PHI) unless LOG_LEVEL=debug asks for it
 * explicitly with AGENT_LOG_PHI=true.
 */
export type Level = 'debug' | 'info' | 'warn' | 'error';
const ORDER: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

export function createLogger(level: string = 'info', write: (line: string) => void = (line) => process.stdout.write(line + '\n')): Logger {
  const min = ORDER[(level as Level) in ORDER ? (level as Level) : 'info'];
  const emit = (lvl: Level, msg: string, fields?: Record<string, unknown>): void => {
    if (ORDER[lvl] >= min) {
      write(JSON.stringify({ time: new Date().toISOString(), level: lvl, msg, ...fields }));
    }
  };
  return {
    debug: (m, f) => emit('debug', m, f),
    info: (m, f) => emit('info', m, f),
    warn: (m, f) => emit('warn', m, f),
    error: (m, f) => emit('error', m, f),
  };
}
