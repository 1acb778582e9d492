// Log output for `zrs serve`: JSON lines (jsonLogger) for machines, or one
// readable line per event when stderr is a terminal.

import { jsonLogger, type Logger, type LogLevel } from '../replication/log.js';

export type LogFormat = 'json' | 'human';

/**
 * `text` with its control characters written as `\xNN`: a message may quote
 * bytes of a damaged file or a peer's words, which must neither break the
 * one line it is printed on nor reach the terminal as escape sequences.
 */
export function printable(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\x00-\x1f\x7f-\x9f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

/** A logger writing `HH:MM:SS.mmm LEVEL node: message key=value …` lines. */
export function humanLogger(node: string, write: (line: string) => void, now: () => Date = () => new Date()): Logger {
  return (level, message, fields) => {
    const time = now().toISOString().slice(11, 23);
    const extra = Object.entries(fields ?? {})
      .map(([k, v]) => `${k}=${printable(typeof v === 'string' && !/\s/.test(v) ? v : JSON.stringify(v))}`)
      .join(' ');
    write(`${time} ${level.toUpperCase().padEnd(5)} ${node}: ${printable(message)}${extra ? `  ${extra}` : ''}\n`);
  };
}

/** The logger factory for a format. */
export function loggerFactory(format: LogFormat, write: (line: string) => void): (node: string) => Logger {
  return (node) => (format === 'json' ? jsonLogger(node, write) : humanLogger(node, write));
}

export type { Logger, LogLevel };
