// `npm start` (src/cli/demo.ts) as a child process interrupted with Ctrl-C:
// its nodes all run in that process, so it removes its temp directory itself
// before exiting instead of leaving data files, locks and sockets behind.

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ROOT, TSX_ENV } from './helpers.js';

const DEMO = fileURLToPath(new URL('../../src/cli/demo.ts', import.meta.url));

describe('the demo', () => {
  it('removes its temp directory and exits 130 on SIGINT in the middle of the workload', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', DEMO, '--seconds', '60'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: TSX_ENV });
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    let out = '';
    try {
      const dir = await new Promise<string>((resolve, reject) => {
        child.stdout.setEncoding('utf8').on('data', (t: string) => {
          out += t;
          const m = /ZRS demo in (\S+):/.exec(out);
          // The workload has started once its step is announced: the nodes' files exist.
          if (m && out.includes('1. committing')) resolve(m[1]!);
        });
        void exited.then(() => reject(new Error(`demo exited early:\n${out}`)));
      });
      expect(existsSync(dir)).toBe(true);
      child.kill('SIGINT');
      expect(await exited).toBe(130);
      expect(existsSync(dir)).toBe(false);
      expect(out).toContain(`SIGINT: stopped; ${dir} removed`);
    } finally {
      // A failure above leaves no demo running on for a minute (it removes its directory on SIGINT).
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGINT');
        await exited;
      }
    }
  }, 60_000);

  it('refuses arguments it does not know, and a --seconds that is not a time, before creating anything (exit 2)', async () => {
    for (const [args, message] of [
      [['--seconds', 'x'], '--seconds must be a number of seconds above 0 and at most 3600, not "x"'],
      [['--seconds'], '--seconds needs a value (N)'],
      [['--seconds=0'], '--seconds must be a number of seconds above 0 and at most 3600, not "0"'],
      [['--second', '5'], 'unknown argument "--second"'],
    ] as const) {
      const child = spawn(process.execPath, ['--import', 'tsx', DEMO, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: TSX_ENV });
      let out = '';
      let err = '';
      child.stdout.setEncoding('utf8').on('data', (t: string) => (out += t));
      child.stderr.setEncoding('utf8').on('data', (t: string) => (err += t));
      const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
      expect(code, err).toBe(2);
      expect(err).toContain(`npm start: ${message}\nusage: npm start`);
      expect(out).toBe('');
    }
  }, 60_000);
});
