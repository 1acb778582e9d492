// The README's first example, run as written: only its paths and address are
// moved into a temp dir (a Unix socket for 127.0.0.1:5000, which a test in
// parallel could hold), and its import points at the sources. It must print
// the replicated tid and end by itself.

import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { ROOT, TSX_ENV } from './helpers.js';

const run = promisify(execFile);

afterAll(cleanupTempDirs);

/** The first TypeScript block after `heading` in README.md. */
function exampleAfter(heading: string): string {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const from = readme.indexOf(heading);
  expect(from, `README.md has no "${heading}"`).toBeGreaterThanOrEqual(0);
  const block = /```ts\n([\s\S]*?)```/.exec(readme.slice(from));
  expect(block, `no ts block after "${heading}"`).not.toBeNull();
  return block![1]!;
}

describe('README.md', () => {
  it('its first example replicates a commit and ends by itself', async () => {
    const dir = await tempDir();
    const example = exampleAfter('## A primary and a secondary over loopback');
    for (const literal of ["'zrs-ts'", "'/tmp/p'", "'/tmp/s'", "'/tmp/p/Data.fs'", "'/tmp/s/Data.fs'", "'127.0.0.1:5000'"]) expect(example).toContain(literal);
    const script = example
      .replaceAll("'zrs-ts'", JSON.stringify(join(ROOT, 'src/index.ts')))
      .replaceAll("'/tmp/p", `'${join(dir, 'p')}`)
      .replaceAll("'/tmp/s", `'${join(dir, 's')}`)
      .replaceAll("'127.0.0.1:5000'", JSON.stringify(join(dir, 'p.sock')));
    const file = join(dir, 'example.mts');
    await writeFile(file, script);
    const { stdout } = await run(process.execPath, ['--import', 'tsx', file], { cwd: ROOT, timeout: 60_000, env: TSX_ENV });
    expect(stdout).toMatch(/^replicated [0-9a-f]{16}\n$/);
  }, 90_000);
});
