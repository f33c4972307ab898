// JSON logs (pino) on stderr, so stdout stays free for command output.
import { pino, type Logger } from 'pino';

export type { Logger };

export function createLogger(name: string, level = process.env.FFR_LOG_LEVEL ?? 'info'): Logger {
  return pino({ name, level }, pino.destination(2));
}
