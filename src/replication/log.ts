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

/** Warn that opening a storage cut an unfinished transaction off its end (a crash mid-commit), naming where its bytes are kept. */
export function logTailCut(log: Logger, storage: { path: string; tailCutOnOpen: { position: number; bytes: number; keptIn: string } | null }): void {
  const cut = storage.tailCutOnOpen;
  if (cut === null) return;
  log('warn', `${storage.path}: an unfinished transaction of ${cut.bytes} bytes at the end (a crash in the middle of a commit) was cut off and kept in ${cut.keptIn}`, {
    position: cut.position,
    bytes: cut.bytes,
    keptIn: cut.keptIn,
  });
}
