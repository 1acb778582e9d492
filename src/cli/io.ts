// The command line's view of its process: output streams, whether they are
// terminals, the environment, signals and a last-resort exit. Commands take
// this port, so tests run them in-process with collected output.

import { tuneCollector } from '../node/collector.js';

export interface CliIo {
  /** Write to standard output; resolves once the stream accepts more (backpressure). */
  out(text: string): Promise<void>;
  /** Write to standard error (logs, progress, problems). */
  err(text: string): void;
  readonly stdoutIsTTY: boolean;
  readonly stderrIsTTY: boolean;
  readonly env: Readonly<Record<string, string | undefined>>;
  /** Call `handler` on SIGINT / SIGTERM until the returned function is called. */
  onSignal(handler: (signal: NodeJS.Signals) => void): () => void;
  /** Leave at once (a second signal during shutdown). */
  exit(code: number): never;
  /** Tune the process's garbage collector (node/collector.ts's tuneCollector); absent where commands run in a host's process. */
  tuneCollector?(percent: number): void;
}

/** Exit codes shared by every command. */
export const EXIT_OK = 0;
/** The command ran and found a problem (bad file, failed storage, config error). */
export const EXIT_FAILURE = 1;
/** The command line itself was wrong. */
export const EXIT_USAGE = 2;

/** The real process. */
export function processIo(): CliIo {
  // `zrs dump … | head` closes the pipe early: that is not an error.
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(EXIT_OK);
    throw e;
  });
  // A log reader that went away (`zrs serve 2>&1 | head`, a shipper restarting) must not take a serving node down with it.
  let stderrGone = false;
  process.stderr.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code !== 'EPIPE') throw e;
    stderrGone = true;
  });
  return {
    out: (text) =>
      new Promise((resolve) => {
        if (process.stdout.write(text)) resolve();
        else process.stdout.once('drain', () => resolve());
      }),
    err: (text) => {
      if (!stderrGone) process.stderr.write(text);
    },
    stdoutIsTTY: process.stdout.isTTY === true,
    stderrIsTTY: process.stderr.isTTY === true,
    env: process.env,
    onSignal(handler) {
      const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM'];
      for (const s of signals) process.on(s, handler);
      return () => {
        for (const s of signals) process.off(s, handler);
      };
    },
    exit: (code) => process.exit(code),
    tuneCollector,
  };
}
