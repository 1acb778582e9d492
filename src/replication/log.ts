// Structured log lines: one JSON object per line by default, so operators
// can ship them; tests pass a collector instead.

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

export interface Logger {
  (level: LogLevel | 'info' | 'warn' | 'error', message: string, fields?: Record<string, unknown>): void;
}

/** A logger writing JSON lines to stderr, tagged with a node name. */
export function jsonLogger(node: string, write: (line: string) => void = (l) => process.stderr.write(l)): Logger {
  return (level, message, fields) => {
    write(`${JSON.stringify({ time: new Date().toISOString(), level, node, message, ...fields })}\n`);
  };
}

/** A logger that drops everything (the library default when none is given). */
export const silentLogger: Logger = () => undefined;
