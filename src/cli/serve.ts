// `zrs serve CONFIG`: open every storage a configuration defines (a primary
// for a <zrs> without replicate-from, a secondary otherwise, a plain
// FileStorage for a top-level <filestorage>), log one "ready" line, and run
// until SIGINT or SIGTERM. Then close: secondaries first (their upstream
// connections stop, their own listeners close), standalone storages, and
// primaries last (each drains what is committed to its connected secondaries
// before closing). A second signal during start-up or shutdown exits at once (code 1).

import { auditPathOf, ConfigError, loadZrsConfig, type PrimaryConfig, type SecondaryConfig, type StandaloneConfig, type StorageConfig } from '../config/zrs.js';
import type { ReplicationAddress } from '../ports/transport.js';
import { formatAddress } from '../replication/address.js';
import { Primary } from '../replication/primary.js';
import { Secondary } from '../replication/secondary.js';
import { FileStorage } from '../storage/FileStorage.js';
import { DEFAULT_MARKING_START_PERCENT } from '../node/collector.js';
import { metricsUrl } from '../node/metricsServer.js';
import { UsageError, type CommandSpec } from './args.js';
import { EXIT_FAILURE, EXIT_OK, type CliIo } from './io.js';
import { loggerFactory, printable, type LogFormat, type Logger } from './logging.js';
import { logOpenRepairs } from '../replication/log.js';
import { CatchUpProgress, TerminalBoard, caughtUpMessage, progressLogFields, renderProgressLine, type ProgressSample } from './progress.js';

/** How often a catching-up secondary is sampled, and how often its progress is logged off a terminal. */
const PROGRESS_SAMPLE_MS = 1000;
const PROGRESS_LOG_EVERY_MS = 10_000;

export const serveSpec: CommandSpec = {
  name: 'serve',
  positionals: ['CONFIG'],
  flags: [
    { name: 'log-format', value: 'FORMAT', choices: ['json', 'human'], help: 'json lines or readable lines (default: human on a terminal, else json)' },
    { name: 'check', help: 'only load and check the configuration, print what would run, and exit' },
    {
      name: 'marking-start',
      value: 'PERCENT',
      help: `start marking the old generation once it fills PERCENT of its limit (default ${DEFAULT_MARKING_START_PERCENT}; 0 leaves V8's own rule; see docs/OPERATIONS.md)`,
    },
  ],
  summary: 'Run the primaries, secondaries and storages a ZConfig file defines.',
  description: `
A <zrs> section without replicate-from is a primary: it serves its
FileStorage at replicate-to. With replicate-from it is a secondary: it
replicates from that address and, with replicate-to, serves further
secondaries. Logs go to stderr. SIGINT or SIGTERM closes everything
gracefully (a primary first sends what is committed to its secondaries)
and exits 0; a second signal exits at once with 1.

examples:
  zrs serve /etc/zrs/primary.conf
  zrs serve --check /etc/zrs/secondary.conf`,
};

interface Running {
  config: StorageConfig;
  /** What the ready line reports: name, kind, path and the bound addresses. */
  info: Record<string, unknown>;
  log: Logger;
  close(): Promise<void>;
  /** A secondary's catch-up progress sample at `atMs` (see progress.ts). */
  progressSample?: (atMs: number) => ProgressSample;
}

export interface ServeOptions {
  logFormat?: LogFormat;
  checkOnly?: boolean;
  /** What io.tuneCollector is given (default DEFAULT_MARKING_START_PERCENT; 0: V8's own rule). */
  markingStartPercent?: number;
}

/** `--marking-start PERCENT`: an integer from 0 to 99; a UsageError otherwise. */
export function markingStartOption(text: string | true | undefined): number | undefined {
  if (text === undefined || text === true) return undefined;
  const percent = Number(text);
  if (!/^\d+$/.test(text) || percent > 99) throw new UsageError(`option --marking-start must be an integer from 0 to 99, not ${JSON.stringify(text)}`);
  return percent;
}

export async function serve(configPath: string, io: CliIo, options: ServeOptions = {}): Promise<number> {
  const format = options.logFormat ?? (io.stderrIsTTY ? 'human' : 'json');
  // On a terminal with readable logs, catching-up secondaries show a progress line each, kept below the log lines.
  const board = io.stderrIsTTY && format === 'human' ? new TerminalBoard() : null;
  const makeLogger = loggerFactory(format, board ? (text) => io.err(board.around(text)) : io.err);
  const log = makeLogger('zrs');
  // Why the service did not start, in its log's format (a log shipper reading JSON lines gets it too); --check answers a person.
  const refuse = (message: string): number => {
    if (format === 'json' && !options.checkOnly) log('error', message);
    else io.err(`zrs serve: ${printable(message)}\n`);
    return EXIT_FAILURE;
  };
  let config;
  try {
    config = loadZrsConfig(configPath, { env: io.env });
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    return refuse(`configuration error: ${err.message}`);
  }
  if (config.storages.length === 0) return refuse(`${config.file} defines no storage (add a <zrs> or <filestorage> section)`);
  if (options.checkOnly) {
    for (const s of config.storages) await io.out(`${describe(s)}\n`);
    return EXIT_OK;
  }

  // Signals that arrive while storages open are honoured once they are open.
  let stopRequested: NodeJS.Signals | null = null;
  let wake: (() => void) | null = null;
  let shuttingDown = false;
  const unhook = io.onSignal((signal) => {
    // A second signal is the way out of a start-up or a shutdown that takes too long (a long scan, a stuck peer).
    if (shuttingDown || stopRequested) {
      log('error', `second ${signal} during ${shuttingDown ? 'shutdown' : 'start-up'}: exiting without closing cleanly`);
      io.exit(EXIT_FAILURE);
    }
    stopRequested = signal;
    wake?.();
  });

  const markingStart = options.markingStartPercent ?? DEFAULT_MARKING_START_PERCENT;
  io.tuneCollector?.(markingStart);
  const collector = io.tuneCollector === undefined ? 'as it was' : markingStart === 0 ? "V8's own rule" : `marking at ${markingStart} % of the limit`;
  const running: Running[] = [];
  let code = EXIT_OK;
  let progressTimer: ReturnType<typeof setInterval> | null = null;
  try {
    // Primaries first, so that secondaries of the same process find them listening.
    const order = [...config.storages].sort((a, b) => rank(a) - rank(b));
    for (const s of order) {
      if (stopRequested) break;
      try {
        running.push(await start(s, makeLogger(s.name)));
      } catch (err) {
        // Which of the configured storages, and where it is configured: the error itself names neither.
        const e = err as Error;
        throw Object.assign(new Error(`storage ${s.name} (${s.loc.file}:${s.loc.line}): ${e.message}`, { cause: e }), { name: e.name });
      }
    }
    progressTimer = startProgress(running, board, io);
    if (!stopRequested) {
      log('info', 'ready', { storages: running.map((r) => r.info), pid: process.pid, collector });
      // Signal handlers do not keep Node running: a configuration without a
      // listener (a plain <filestorage>) would otherwise end here at once.
      const hold = setInterval(() => undefined, 1 << 30);
      await new Promise<void>((resolve) => {
        wake = resolve;
        if (stopRequested) resolve();
      });
      clearInterval(hold);
    }
    log('info', `${stopRequested} received: closing`, { signal: stopRequested });
  } catch (err) {
    log('error', `failed to start: ${(err as Error).message}`, { error: (err as Error).name });
    code = EXIT_FAILURE;
  }
  shuttingDown = true;
  if (progressTimer) clearInterval(progressTimer);
  if (board) io.err(board.clear());
  // Close in the reverse of the start order: secondaries, standalone storages, primaries.
  for (const r of running.reverse()) {
    try {
      await r.close();
      r.log('info', 'closed');
    } catch (err) {
      r.log('error', `close failed: ${(err as Error).message}`, { error: (err as Error).name });
      code = EXIT_FAILURE;
    }
  }
  unhook();
  log('info', 'stopped', { exitCode: code });
  return code;
}

/**
 * Sample every secondary on the wall clock (this is the CLI edge); show a
 * line per catching-up secondary on the board, else log its progress every
 * PROGRESS_LOG_EVERY_MS; log one "caught up" line when it is done.
 */
function startProgress(running: Running[], board: TerminalBoard | null, io: CliIo): ReturnType<typeof setInterval> | null {
  const tracked = running.flatMap((r) =>
    r.progressSample ? [{ r, sample: r.progressSample, tracker: new CatchUpProgress({ reportEveryMs: board ? 0 : PROGRESS_LOG_EVERY_MS }) }] : [],
  );
  if (tracked.length === 0) return null;
  const tick = (): void => {
    for (const { r, sample, tracker } of tracked) {
      let event;
      try {
        event = tracker.observe(sample(Date.now()));
      } catch {
        continue; // a status that cannot be read now is sampled again at the next tick
      }
      if (event?.kind === 'progress') {
        if (board) io.err(board.set(r.config.name, renderProgressLine(r.config.name, event.figures)));
        else r.log('info', 'catching up', progressLogFields(event.figures));
      } else if (event?.kind === 'caughtUp') {
        if (board) io.err(board.remove(r.config.name));
        const f = event.figures;
        r.log('info', caughtUpMessage(f), { transactions: f.transactions, bytes: f.bytes, seconds: Math.round(f.elapsedSeconds * 10) / 10 });
      }
    }
  };
  tick(); // the state at start: what a first catch-up is measured from
  const timer = setInterval(tick, PROGRESS_SAMPLE_MS);
  timer.unref();
  return timer;
}

function rank(s: StorageConfig): number {
  return s.kind === 'primary' ? 0 : s.kind === 'filestorage' ? 1 : 2;
}

async function start(s: StorageConfig, log: Logger): Promise<Running> {
  if (s.kind === 'primary') return startPrimary(s, log);
  if (s.kind === 'secondary') return startSecondary(s, log);
  return startStandalone(s, log);
}

async function startPrimary(s: PrimaryConfig, log: Logger): Promise<Running> {
  // ZODB's `create true` starts from an empty file: open it so, then serve that storage.
  const storage = s.storage.create ? await FileStorage.open(s.options.path, { create: 'truncate', blobDir: s.options.blobDir, fsync: s.options.fsync, preallocate: s.options.preallocate }) : undefined;
  if (storage) logOpenRepairs(log, storage);
  let primary: Primary;
  try {
    primary = await Primary.open({ ...s.options, storage, log, name: s.name, ...metricsOption(s) });
  } catch (err) {
    await storage?.close();
    throw err;
  }
  const info = { ...summary(s), replicateTo: formatAddress(primary.address), ...metricsInfo(primary.metricsAddress) };
  log('info', 'primary started', { ...info, lastTid: primary.storage.lastTransaction().toString('hex') });
  return { config: s, info, log, close: () => primary.close() };
}

async function startSecondary(s: SecondaryConfig, log: Logger): Promise<Running> {
  if (s.storage.create) {
    const created = await FileStorage.open(s.options.path, { create: 'truncate', blobDir: s.options.blobDir });
    logOpenRepairs(log, created);
    await created.close();
  }
  const secondary = await Secondary.open({ ...s.options, log, name: s.name, ...metricsOption(s) });
  // Promoted (a promote request on its replicate-to): from then on the node is that primary.
  let promoted: Primary | null = null;
  const promotedSub = secondary.promoted$.subscribe((primary) => {
    promoted = primary;
    log('warn', 'promoted to primary', { generation: primary.generation.generation, startTid: primary.generation.startTid.toString('hex'), replicateTo: formatAddress(primary.address) });
  });
  const sub = secondary.status$.subscribe((st) => {
    // A lost connection ('disconnected') is told by the secondary's own log line, with its level (a clean close is no fault).
    if (st.kind === 'connecting') log('info', st.kind, { address: st.address });
    else if (st.kind === 'connected') log('info', st.replicating ? 'replicating' : 'connected', { address: st.address });
    else if (st.kind === 'backoff') log('info', 'waiting to reconnect', { retryInMs: st.retryInMs, reason: st.reason });
    else if (st.kind === 'diverged' || st.kind === 'failed') log('error', st.kind, { reason: st.reason });
  });
  // An empty secondary's catch-up is measured from the first tid it applies.
  let firstTid: Buffer | null = null;
  const firstSub = secondary.applied$.subscribe((t) => {
    firstTid = t.tid;
    firstSub.unsubscribe();
  });
  if (!secondary.storage.lastTransaction().equals(Buffer.alloc(8))) firstSub.unsubscribe();
  const to = secondary.replicationAddress;
  const info = { ...summary(s), ...(to ? { replicateTo: formatAddress(to) } : {}), ...metricsInfo(secondary.metricsAddress) };
  log('info', 'secondary started', { ...info, lastTid: secondary.storage.lastTransaction().toString('hex') });
  return {
    config: s,
    info,
    log,
    close: async () => {
      const primary: Primary | null = promoted;
      if (primary) await primary.close();
      else await secondary.close();
      sub.unsubscribe();
      firstSub.unsubscribe();
      promotedSub.unsubscribe();
    },
    progressSample: (atMs) => {
      const p: Primary | null = promoted;
      const st = p ? p.status() : secondary.status();
      return {
        atMs,
        lastTid: st.lastTid,
        upstreamTid: st.upstream?.primaryLastTid ?? null,
        bytes: secondary.storage.getSize(),
        transactions: secondary.storage.transactionCount,
        firstTid,
      };
    },
  };
}

async function startStandalone(s: StandaloneConfig, log: Logger): Promise<Running> {
  const fs = await FileStorage.open(s.options.path, s.options.open);
  logOpenRepairs(log, fs);
  const info = summary(s);
  log('info', 'storage opened', { ...info, readOnly: fs.readOnly, lastTid: fs.lastTransaction().toString('hex') });
  return { config: s, info, log, close: () => fs.close() };
}

/** `metrics-address` as a Primary/Secondary option (absent when not configured). */
function metricsOption(s: PrimaryConfig | SecondaryConfig): { metricsAddress?: ReplicationAddress } {
  return s.metricsAddress ? { metricsAddress: s.metricsAddress } : {};
}

function metricsInfo(address: ReplicationAddress | null): Record<string, unknown> {
  return address ? { metrics: metricsUrl(address) } : {};
}

function summary(s: StorageConfig): Record<string, unknown> {
  const base = { name: s.name, kind: s.kind, path: s.storage.path };
  if (s.kind === 'primary') return { ...base, replicateTo: formatAddress(s.options.replicateTo) };
  if (s.kind === 'secondary') {
    return { ...base, replicateFrom: formatAddress(s.options.replicateFrom), ...(s.options.replicateTo ? { replicateTo: formatAddress(s.options.replicateTo) } : {}) };
  }
  return base;
}

function describe(s: StorageConfig): string {
  // A section without a name of its own is named by its path: said once.
  const head = `${s.loc.file}:${s.loc.line}: ${s.kind} ${s.name === s.storage.path ? s.name : `${s.name}: ${s.storage.path}`}`;
  if (s.kind === 'primary') {
    const sync = s.options.syncReplicas ? `, commits wait for ${s.options.syncReplicas} secondary ack(s)` : '';
    return `${head}, replicating to ${formatAddress(s.options.replicateTo)}${sync}, audit log ${auditPathOf(s) ?? 'off'}`;
  }
  if (s.kind === 'secondary') {
    const to = s.options.replicateTo ? `, replicating to ${formatAddress(s.options.replicateTo)}` : '';
    return `${head}, replicating from ${formatAddress(s.options.replicateFrom)}${to}, audit log ${auditPathOf(s) ?? 'off'}`;
  }
  return `${head}${s.storage.readOnly ? ' (read-only)' : ''}`;
}
