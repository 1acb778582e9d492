// `zrs promote` and `zrs rewind` in-process: a new generation on a stopped
// storage; a rewind to a given tid with the cut part in a dumpable side file.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { runCli } from '../../src/cli/cli.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { commitMany } from '../replication/helpers.js';
import { memoryIo } from './helpers.js';

afterAll(cleanupTempDirs);

describe('zrs promote / zrs rewind', () => {
  it('promotes offline, then rewinds to a tid', async () => {
    const dir = await tempDir();
    const path = join(dir, 'Data.fs');
    const fs = await FileStorage.open(path, { create: true, fsync: false });
    const tids = await commitMany(fs, 4);
    await fs.close();

    let io = memoryIo();
    expect(await runCli(['promote', path], io)).toBe(0);
    expect(io.stdout).toContain(`generation 1 starts after tid ${tids[3]!.toString('hex')}`);
    io = memoryIo();
    expect(await runCli(['promote', path], io)).toBe(0);
    expect(io.stdout).toContain('generation 2');
    const gens = JSON.parse(readFileSync(`${path}.generations`, 'utf8')) as { generations: unknown[] };
    expect(gens.generations).toHaveLength(3);

    io = memoryIo();
    expect(await runCli(['rewind', path, '--to-tid', tids[1]!.toString('hex')], io)).toBe(0);
    expect(io.stdout).toContain('2 transaction(s) saved in');
    io = memoryIo();
    expect(await runCli(['dump', `${path}.rewound-${tids[1]!.toString('hex')}`], io)).toBe(0);
    expect(io.stdout).toContain(`tid=${tids[2]!.toString('hex')}`);
    expect(io.stdout).toContain(`tid=${tids[3]!.toString('hex')}`);
    const after = await FileStorage.open(path, { readOnly: true });
    expect(after.lastTransaction()).toEqual(tids[1]);
    await after.close();

    io = memoryIo();
    expect(await runCli(['rewind', path], io)).not.toBe(0);
  });
});
