// The native flock addon (fs-ext) is loaded when a lock is first taken, not
// when the package is imported: simulations and read-only opens run where
// the addon could not be built.

import { spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { ROOT, TSX_ENV } from '../cli/helpers.js';

afterAll(cleanupTempDirs);

it('importing the package and its simulator loads no native addon; the first lock does', async () => {
  const dir = await tempDir();
  const script = join(dir, 'load.mts');
  await writeFile(
    script,
    `import { createRequire } from 'node:module';
const loaded = (): boolean => Object.keys(createRequire(import.meta.url).cache).some((k) => k.includes('fs-ext'));
const { FileStorage } = await import(${JSON.stringify(join(ROOT, 'src/index.ts'))});
await import(${JSON.stringify(join(ROOT, 'src/sim/index.ts'))});
const before = loaded();
const fs = await FileStorage.open(${JSON.stringify(join(dir, 'Data.fs'))}, { create: true, fsync: false });
await fs.close();
console.log(JSON.stringify({ before, after: loaded() }));
`,
  );
  const child = spawn(process.execPath, ['--import', 'tsx', script], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'], env: TSX_ENV });
  let stdout = '';
  child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
  const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
  expect(code).toBe(0);
  expect(JSON.parse(stdout)).toEqual({ before: false, after: true });
}, 60_000);
