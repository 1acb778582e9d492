// The real process's output: a closed log pipe (stderr) does not end the
// process; later log lines are dropped and the command goes on. A closed
// output pipe (`zrs dump … | head`) ends the command without an error.

import { spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { BIN, ROOT, TSX_ENV } from './helpers.js';
import { storageFileWith } from '../replication/helpers.js';

afterAll(cleanupTempDirs);

it('a process whose stderr reader went away keeps running and ends normally', async () => {
  const script = join(await tempDir(), 'logs.mts');
  await writeFile(
    script,
    `import { processIo } from ${JSON.stringify(join(ROOT, 'src/cli/io.ts'))};
const io = processIo();
io.err('first line\\n');
// Keep logging after the reader closed the pipe (each line then fails with EPIPE).
for (let i = 0; i < 200; i++) {
  io.err('log line ' + i + ' ' + 'x'.repeat(1000) + '\\n');
  await new Promise((r) => setTimeout(r, 2));
}
await io.out('still alive\\n');
`,
  );
  const child = spawn(process.execPath, ['--import', 'tsx', script], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: TSX_ENV });
  let stdout = '';
  child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
  child.stderr.once('data', () => child.stderr.destroy());
  const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
  expect(stdout).toBe('still alive\n');
  expect(code).toBe(0);
}, 60_000);

it('a command whose output reader went away (zrs dump … | head) ends with 0 and says nothing', async () => {
  const path = join(await tempDir(), 'Data.fs');
  await storageFileWith(path, 3000); // a listing far larger than a pipe holds
  const child = spawn(process.execPath, [BIN, 'dump', path], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: TSX_ENV });
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  child.stdout.once('data', () => child.stdout.destroy());
  const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
  expect(stderr).toBe('');
  expect(code).toBe(0);
}, 60_000);
