// The compiled package: what `npm run build` (tsconfig.build.json) emits runs
// under plain Node, without tsx. Built here into a temp dir laid out as an
// installed package (package.json beside dist/), so the test checks the
// sources as they stand, not an earlier build.

import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { ROOT } from './helpers.js';

const run = promisify(execFile);
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { name: string; version: string; exports: Record<string, { default: string }> };

let installed = '';

beforeAll(async () => {
  installed = await tempDir('zrs-compiled-');
  await run(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', join(ROOT, 'tsconfig.build.json'), '--outDir', join(installed, 'dist')]);
  await writeFile(join(installed, 'package.json'), JSON.stringify({ name: pkg.name, version: pkg.version, type: 'module' }));
  await symlink(join(ROOT, 'node_modules'), join(installed, 'node_modules'));
}, 120_000);

afterAll(cleanupTempDirs);

describe('the compiled package', () => {
  it('runs the command line under plain node and finds its version', async () => {
    const { stdout } = await run(process.execPath, [join(installed, 'dist/src/cli/main.js'), '--version']);
    expect(stdout.trim()).toBe(`zrs ${pkg.version}`);
  });

  it('every entry of package.json exports loads under plain node', async () => {
    const entries = Object.entries(pkg.exports);
    expect(entries.map(([name]) => name)).toContain('./sim');
    for (const [name, target] of entries) {
      const script = `const m = await import(${JSON.stringify(join(installed, target.default))}); console.log(Object.keys(m).length);`;
      const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script]);
      expect(Number(stdout), name).toBeGreaterThan(0);
    }
  });

  it('exports the library from the entry package.json names, and it commits and reads back a transaction', async () => {
    const entry = join(installed, pkg.exports['.']!.default);
    const data = join(installed, 'Data.fs');
    const script = `
      const { FileStorage, Primary, Secondary, Z64 } = await import(${JSON.stringify(entry)});
      if (typeof Primary.open !== 'function' || typeof Secondary.open !== 'function') throw new Error('missing exports');
      const fs = await FileStorage.open(${JSON.stringify(data)}, { create: true });
      const txn = { user: 'u', description: 'compiled' };
      await fs.tpcBegin(txn);
      const oid = fs.newOid();
      fs.store(oid, Z64, Buffer.from('hello'), txn);
      await fs.tpcVote(txn);
      const tid = await fs.tpcFinish(txn);
      const { data: back } = await fs.load(oid);
      console.log(JSON.stringify({ tid: tid.toString('hex'), back: back.toString() }));
      await fs.close();`;
    const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script]);
    const out = JSON.parse(stdout) as { tid: string; back: string };
    expect(out.back).toBe('hello');
    expect(out.tid).toMatch(/^[0-9a-f]{16}$/);
    expect(out.tid).not.toBe('0000000000000000');
  });
});
