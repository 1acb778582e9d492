// The real process's output: a closed log pipe (stderr) does not end the
// process; later log lines are dropped and the command goes on.

import { spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { ROOT, TSX_ENV } from './helpers.js';

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
