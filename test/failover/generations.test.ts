// Promoting a secondary that adopted its primary's generation history before
// catching up (found by the failover simulation: the promotion failed after
// the secondary had stopped replicating, leaving the node dead).

import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { onFileHandleSyncs } from '../helpers/fileSyncs.js';
import { ZrsError } from '../../src/errors.js';
import { GenerationHistory, generationsPathFor, writeFileAtomic } from '../../src/failover/generations.js';
import { MAX_GENERATION_HISTORY } from '../../src/wire/native.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { Z64 } from '../replication/helpers.js';

afterAll(cleanupTempDirs);

const t = (n: number): Buffer => Buffer.from(n.toString(16).padStart(16, '0'), 'hex');

describe('GenerationHistory.startNext', () => {
  it('drops the generations a lagging secondary never reached, and still numbers above them', async () => {
    const g = await GenerationHistory.open(join(await tempDir(), 'x.fs'));
    // Adopted from a primary promoted at 5; this storage holds up to 3 only.
    await g.replace([
      { generation: 0, startTid: Z64 },
      { generation: 1, startTid: t(5) },
    ]);
    expect(await g.startNext(t(3))).toEqual({ generation: 2, startTid: t(3) });
    expect(g.list).toEqual([
      { generation: 0, startTid: Z64 },
      { generation: 2, startTid: t(3) },
    ]);
    expect(g.maxSeen).toBe(2);
  });

  it('writes a check of its content, and refuses a file whose content no longer matches it (a digit changed by a stray write)', async () => {
    const path = join(await tempDir(), 'x.fs');
    const g = await GenerationHistory.open(path);
    await g.replace([
      { generation: 0, startTid: Z64 },
      { generation: 1, startTid: t(0x5f) },
    ]);
    const text = readFileSync(generationsPathFor(path), 'utf8');
    expect(JSON.parse(text).check).toMatch(/^[0-9a-f]{16}$/);
    expect((await GenerationHistory.open(path)).list).toEqual(g.list);
    const edits: Array<[string, string]> = [
      ['"startTid": "000000000000005f"', '"startTid": "000000000000004f"'],
      ['"generation": 1', '"generation": 3'],
      ['"maxSeen": 1', '"maxSeen": 7'],
    ];
    for (const [from, to] of edits) {
      expect(text).toContain(from);
      writeFileSync(generationsPathFor(path), text.replace(from, to));
      await expect(GenerationHistory.open(path)).rejects.toThrow(`${generationsPathFor(path)}: the generation history does not match its check`);
    }
    // Written before the check (or edited by hand with "check" removed): read as it is.
    const { check: _check, ...unchecked } = JSON.parse(text.replace('"000000000000005f"', '"000000000000004f"'));
    writeFileSync(generationsPathFor(path), JSON.stringify(unchecked));
    expect((await GenerationHistory.open(path)).list[1]!.startTid).toEqual(t(0x4f));
  });

  it('keeps a generation that starts exactly at its last tid', async () => {
    const g = await GenerationHistory.open(join(await tempDir(), 'x.fs'));
    await g.replace([
      { generation: 0, startTid: Z64 },
      { generation: 1, startTid: t(5) },
    ]);
    expect(await g.startNext(t(5))).toEqual({ generation: 2, startTid: t(5) });
    expect(g.list.map((e) => e.generation)).toEqual([0, 1, 2]);
  });

  it('refuses a generation past the most a handshake carries, and leaves the file as it was', async () => {
    const path = join(await tempDir(), 'x.fs');
    const g = await GenerationHistory.open(path);
    await g.replace(Array.from({ length: MAX_GENERATION_HISTORY }, (_, generation) => ({ generation, startTid: t(generation) })));
    const before = readFileSync(generationsPathFor(path), 'utf8');
    await expect(g.startNext(t(MAX_GENERATION_HISTORY))).rejects.toThrow(/the most a handshake carries/);
    expect(readFileSync(generationsPathFor(path), 'utf8')).toBe(before);
    expect(g.list).toHaveLength(MAX_GENERATION_HISTORY);
    // One fewer leaves room for exactly one more.
    await g.replace(g.list.slice(0, -1));
    expect((await g.startNext(t(MAX_GENERATION_HISTORY))).generation).toBe(MAX_GENERATION_HISTORY);
  });

  it('refuses a promotion past the largest generation number, naming the file, and leaves the file as it was', async () => {
    const path = join(await tempDir(), 'x.fs');
    const g = await GenerationHistory.open(path);
    await g.replace([
      { generation: 0, startTid: Z64 },
      { generation: Number.MAX_SAFE_INTEGER, startTid: t(5) },
    ]);
    const before = readFileSync(generationsPathFor(path), 'utf8');
    const why = `${generationsPathFor(path)}: generation ${Number.MAX_SAFE_INTEGER} was seen, the largest number a generation can take`;
    expect(g.fullAt(t(6))).toContain(why);
    await expect(g.startNext(t(6))).rejects.toThrow(why);
    expect(readFileSync(generationsPathFor(path), 'utf8')).toBe(before);
    // The largest seen counts, not only the recorded ones (maxSeen never goes back).
    await g.replace([{ generation: 0, startTid: Z64 }]);
    expect(g.fullAt(t(6))).toContain(why);
    // One below it still takes the last number.
    const h = await GenerationHistory.open(join(await tempDir(), 'y.fs'));
    await h.replace([{ generation: Number.MAX_SAFE_INTEGER - 1, startTid: Z64 }]);
    expect(h.fullAt(t(6))).toBeNull();
    expect((await h.startNext(t(6))).generation).toBe(Number.MAX_SAFE_INTEGER);
  });

  it('syncs the new content before it renames it over the file (a crash leaves the old content or the new, never an empty file)', async () => {
    const dir = await tempDir();
    const path = join(dir, 'Data.fs.generations');
    const atSync: boolean[] = [];
    const restore = await onFileHandleSyncs(dir, () => void atSync.push(existsSync(`${path}.tmp`)));
    try {
      await writeFileAtomic(path, Buffer.from('{}\n'));
    } finally {
      restore();
    }
    expect(atSync).toContain(true);
    expect(readFileSync(path, 'utf8')).toBe('{}\n');
  });

  it('refuses a damaged file with a ZrsError naming it, not a TypeError', async () => {
    const bad = ['null', '{"version":1,"generations":[null]}', '{"version":1,"generations":[{"generation":0}]}', '[]'];
    // A largest generation seen that is not a count: read as "none" it let a promotion reuse a generation.
    for (const maxSeen of ['"2"', '1.5', '-2', 'null']) bad.push(`{"version":1,"maxSeen":${maxSeen},"generations":[{"generation":0,"startTid":"0000000000000000"}]}`);
    // Histories no node writes: a generation number that is no count, a start tid of another length, numbers that
    // do not increase, start tids that go back.
    const entry = (generation: unknown, startTid: string): string => JSON.stringify({ generation, startTid });
    for (const entries of [
      [entry(-1, '0000000000000000')],
      [entry(1.5, '0000000000000000')],
      [entry(0, '00000000000000')],
      [entry(0, '0000000000000000'), entry(0, '00000000000000ff')],
      [entry(2, '0000000000000000'), entry(1, '00000000000000ff')],
      [entry(0, '00000000000000ff'), entry(1, '0000000000000001')],
    ]) {
      bad.push(`{"version":1,"generations":[${entries.join(',')}]}`);
    }
    for (const body of bad) {
      const path = join(await tempDir(), 'x.fs');
      writeFileSync(generationsPathFor(path), body);
      const opening = GenerationHistory.open(path);
      await expect(opening).rejects.toBeInstanceOf(ZrsError);
      await expect(opening).rejects.toThrow(generationsPathFor(path));
    }
    // Without maxSeen (as written before it was kept), the history's own generations are the most seen.
    const path = join(await tempDir(), 'x.fs');
    writeFileSync(generationsPathFor(path), '{"version":1,"generations":[{"generation":0,"startTid":"0000000000000000"},{"generation":3,"startTid":"00000000000000ff"}]}');
    const history = await GenerationHistory.open(path);
    expect(history.maxSeen).toBe(3);
    // -1, "none seen", is what an empty history writes.
    writeFileSync(generationsPathFor(path), '{"version":1,"maxSeen":-1,"generations":[]}');
    expect((await GenerationHistory.open(path)).maxSeen).toBe(-1);
  });
});
