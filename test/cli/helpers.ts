// Test helpers for the command line: an in-memory CliIo, `zrs` child
// processes with their JSON log lines, free loopback ports, and waiting on a
// condition re-checked whenever a watched directory changes (no blind sleeps).

import { spawn, type ChildProcess } from 'node:child_process';
import { watch, type FSWatcher } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { CliIo } from '../../src/cli/io.js';
import { FileStorage } from '../../src/storage/FileStorage.js';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const BIN = fileURLToPath(new URL('../../bin/zrs.js', import.meta.url));
/** The environment for a child run under tsx: without tsx's cache, which it would leave in the system's temp dir. */
export const TSX_ENV = { ...process.env, TSX_DISABLE_CACHE: '1' };

export interface MemoryIo extends CliIo {
  stdout: string;
  stderr: string;
}

/** A CliIo collecting output; signals are never delivered. */
export function memoryIo(options: { stdoutIsTTY?: boolean; stderrIsTTY?: boolean } = {}): MemoryIo {
  const io: MemoryIo = {
    stdout: '',
    stderr: '',
    out: async (t) => {
      io.stdout += t;
    },
    err: (t) => {
      io.stderr += t;
    },
    stdoutIsTTY: options.stdoutIsTTY ?? false,
    stderrIsTTY: options.stderrIsTTY ?? false,
    env: {},
    onSignal: () => () => undefined,
    exit: (code) => {
      throw new Error(`exit ${code}`);
    },
  };
  return io;
}

export interface LogLine {
  level: string;
  node: string;
  message: string;
  [k: string]: unknown;
}

/** A `zrs` child process whose stderr JSON lines are parsed as they come. */
export class ZrsProcess {
  readonly logs: LogLine[] = [];
  stdout = '';
  stderrText = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private readonly waiters: Array<() => void> = [];
  private partial = '';

  constructor(readonly child: ChildProcess) {
    child.stdout!.setEncoding('utf8').on('data', (t: string) => (this.stdout += t));
    child.stderr!.setEncoding('utf8').on('data', (t: string) => this.onStderr(t));
    // 'close', not 'exit': the last stderr lines may still be unread at 'exit'.
    this.exited = new Promise((resolve) => child.on('close', (code, signal) => resolve({ code, signal })));
    void this.exited.then(() => this.wakeAll());
  }

  static start(args: string[], cwd = ROOT): ZrsProcess {
    return new ZrsProcess(spawn(process.execPath, [BIN, ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'] }));
  }

  private onStderr(text: string): void {
    this.stderrText += text;
    const lines = (this.partial + text).split('\n');
    this.partial = lines.pop()!;
    for (const l of lines) {
      if (!l.trim()) continue;
      try {
        this.logs.push(JSON.parse(l) as LogLine);
      } catch {
        this.logs.push({ level: 'raw', node: '', message: l });
      }
    }
    this.wakeAll();
  }

  private wakeAll(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  /** Resolve with the first log line matching, failing if the process exits first or after `timeoutMs`. */
  async waitForLog(match: (l: LogLine) => boolean, timeoutMs = 20_000): Promise<LogLine> {
    const deadline = Date.now() + timeoutMs;
    let exited = false;
    void this.exited.then(() => (exited = true));
    for (;;) {
      const hit = this.logs.find(match);
      if (hit) return hit;
      if (exited) throw new Error(`zrs exited before the expected log line; stderr:\n${this.stderrText}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for a log line; stderr:\n${this.stderrText}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  ready(): Promise<LogLine> {
    return this.waitForLog((l) => l.message === 'ready');
  }

  /** Send a signal and resolve with the exit code. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    this.child.kill(signal);
    return (await this.exited).code;
  }
}

/**
 * Resolve once `check()` is true. It is re-evaluated whenever anything
 * changes in one of `dirs` (fs.watch), with a bounded number of checks.
 */
export async function waitUntil(check: () => Promise<boolean> | boolean, dirs: string[], timeoutMs = 30_000, maxChecks = 100_000): Promise<void> {
  if (await check()) return;
  let watchers: FSWatcher[] = [];
  try {
    await new Promise<void>((resolve, reject) => {
      let checks = 0;
      let running = false;
      let again = false;
      const timer = setTimeout(() => reject(new Error(`condition not met within ${timeoutMs} ms`)), timeoutMs);
      const recheck = async (): Promise<void> => {
        if (running) {
          again = true;
          return;
        }
        running = true;
        try {
          do {
            again = false;
            if (++checks > maxChecks) throw new Error(`condition not met after ${maxChecks} checks`);
            if (await check()) {
              clearTimeout(timer);
              resolve();
              return;
            }
          } while (again);
        } catch (err) {
          clearTimeout(timer);
          reject(err);
        } finally {
          running = false;
        }
      };
      watchers = dirs.map((d) => watch(d, () => void recheck()));
      void recheck(); // a change between the first check and the watch
    });
  } finally {
    for (const w of watchers) w.close();
  }
}

/** Every transaction of a file, read-only: tid, status and a digest of its records. */
export async function transactions(path: string): Promise<string[]> {
  const fs = await FileStorage.open(path, { readOnly: true });
  try {
    const out: string[] = [];
    for await (const t of fs.iterator()) {
      const recs = t.records.map((r) => `${r.oid.toString('hex')}:${r.data ? r.data.toString('base64') : '-'}`).join(',');
      out.push(`${t.tid.toString('hex')} ${t.status} ${recs}`);
    }
    return out;
  } finally {
    await fs.close();
  }
}
