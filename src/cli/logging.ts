// Log output for `zrs serve`: JSON lines (jsonLogger) for machines, or one
// readable line per event when stderr is a terminal.

import { jsonLogger, type Logger, type LogLevel } from '../replication/log.js';

export type LogFormat = 'json' | 'human';

/** A logger writing `HH:MM:SS.mmm LEVEL node: message key=value …` lines. */
export function humanLogger(node: string, write: (line: string) => void, now: () => Date = () => new Date()): Logger {
  return (level, message, fields) => {
    const time = now().toISOString().slice(11, 23);
    const extra = Object.entries(fields ?? {})
      .map(([k, v]) => `${k}=${typeof v === 'string' && !/\s/.test(v) ? v : JSON.stringify(v)}`)
      .join(' ');
    write(`${time} ${level.toUpperCase().padEnd(5)} ${node}: ${message}${extra ? `  ${extra}` : ''}\n`);
  };
}

/** The logger factory for a format. */
export function loggerFactory(format: LogFormat, write: (line: string) => void): (node: string) => Logger {
  return (node) => (format === 'json' ? jsonLogger(node, write) : humanLogger(node, write));
}

export type { Logger, LogLevel };
