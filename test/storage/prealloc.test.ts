// Fill written ahead of the data file's end (src/storage/prealloc.ts): the
// fill's words, commits over it, a close that cuts it, and recovery from a
// torn sync as a property. The property writes transactions over fill, then
// puts the fill back in a random choice of the sectors written since the last
// sync (what a power cut during the next sync can leave): reopening must keep
// exactly a prefix of the transactions, every durable one among them, each
// byte for byte. fast-check prints the seed and path of a failure; replay
// with fc.assert(..., { seed, path }).

import { existsSync, readFileSync, readSync, statSync } from 'node:fs';
import { open, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { CorruptedDataError } from '../../src/errors.js';
import { nodeDisk, type StorageDisk } from '../../src/storage/disk.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { fillOf, firstFillSector, isFillRange, isFillWord, trailingFill, writeFill, writeLegacyFill } from '../../src/storage/prealloc.js';
import { sizeWithoutFill } from '../../src/storage/scan.js';
import { Z64 } from '../../src/storage/timestamp.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { collect, commit, dataBytes, fakeClock, hexOf, oidOf } from './storageHarness.js';

afterAll(cleanupTempDirs);

/**
 * Where Python ZODB's FileStorage (read_index, ZODB 5) stops reading a file's
 * transactions: at a header shorter than 23 bytes, or one whose length runs
 * past the file or whose status is 'c' (having taken that header's tid for
 * the file's last). It decodes the status byte as ASCII before those checks,
 * and fails on a byte over 0x7f: thrown here.
 */
function zodbReadIndexEnd(file: Buffer): number {
  let pos = 4;
  for (;;) {
    if (pos + 23 > file.length) return pos;
    const length = Number(file.readBigUInt64BE(pos + 8));
    const status = file[pos + 16]!;
    if (status > 0x7f) throw new Error(`ZODB cannot decode the status byte at ${pos + 16} (0x${status.toString(16)})`);
    if (pos + length + 8 > file.length || status === 0x63) return pos;
    pos += length + 8;
  }
}

describe('the fill', () => {
  it('is a function of the file offset, the same whichever buffer holds it', () => {
    const a = Buffer.alloc(64);
    writeFill(a, 4096);
    const b = Buffer.alloc(80);
    writeFill(b.subarray(8, 72), 4096); // not the start of its ArrayBuffer
    expect(b.subarray(8, 72)).toEqual(a);
    const pooled = Buffer.from(Buffer.alloc(3 + 64)).subarray(3); // an unaligned view
    writeFill(pooled, 4096);
    expect(pooled).toEqual(a);
    for (let w = 0; w < 8; w++) expect(isFillWord(a, 8 * w, 4096 + 8 * w)).toBe(true);
    // Another offset's fill differs at every word, and so does a word's neighbour.
    const c = Buffer.alloc(64);
    writeFill(c, 4096 + 64);
    for (let w = 0; w < 8; w++) expect(a.subarray(8 * w, 8 * w + 8).equals(c.subarray(8 * w, 8 * w + 8))).toBe(false);
    expect(isFillWord(a, 0, 4104)).toBe(false);
    // Across the word index's 32-bit boundary (a 32 GiB file) and the table's wrap, both ways of writing agree.
    const far = 8 * (2 ** 32 - 4);
    const stepped = Buffer.alloc(64);
    writeFill(stepped, far);
    const perWord = Buffer.from(Buffer.alloc(1 + 64)).subarray(1);
    writeFill(perWord, far);
    expect(perWord).toEqual(stepped);
    for (let w = 0; w < 8; w++) expect(isFillWord(stepped, 8 * w, far + 8 * w)).toBe(true);
    // Across the spread index's 28-bit boundary too.
    const mid = 8 * (2 ** 28 - 4);
    const midStepped = Buffer.alloc(64);
    writeFill(midStepped, mid);
    for (let w = 0; w < 8; w++) expect(isFillWord(midStepped, 8 * w, mid + 8 * w)).toBe(true);
    const wrap = Buffer.alloc(16 * 8);
    writeFill(wrap, 8 * 504); // table slots 504 … 511, then 0 … 7
    for (let w = 0; w < 16; w++) expect(isFillWord(wrap, 8 * w, 8 * (504 + w))).toBe(true);
    expect(() => writeFill(Buffer.alloc(12), 0)).toThrow(RangeError);
    expect(() => writeFill(Buffer.alloc(8), 3)).toThrow(RangeError);
  });

  it('sets the high bit of every byte, and is still unique per word in a sample of far offsets', () => {
    const seen = new Set<string>();
    for (const base of [0, 8 * 2 ** 28, 8 * 2 ** 32, 8 * (2 ** 53 - 8 * 1024)]) {
      const buf = Buffer.alloc(64 * 1024);
      writeFill(buf, base);
      for (const byte of buf) expect(byte).toBeGreaterThanOrEqual(0x80);
      for (let off = 0; off < buf.length; off += 8) seen.add(buf.toString('hex', off, off + 8));
    }
    expect(seen.size).toBe(4 * 8 * 1024);
  });

  it('still recognises the fill of files written before its bytes had their high bit set', () => {
    const legacy = Buffer.alloc(128);
    writeLegacyFill(legacy, 8192);
    const current = Buffer.alloc(128);
    writeFill(current, 8192);
    expect(legacy.equals(current)).toBe(false);
    expect(legacy.some((byte) => byte < 0x80)).toBe(true);
    for (let w = 0; w < 16; w++) expect(isFillWord(legacy, 8 * w, 8192 + 8 * w)).toBe(true);
    expect(isFillWord(legacy, 0, 8200)).toBe(false);
    expect(isFillRange(legacy.subarray(3, 13), 8192 + 3)).toBe(true);
    expect(fillOf(8195, 10, true)).toEqual(legacy.subarray(3, 13));
  });

  it('is found word by word: the first word inside a range, the run at the end of a file, a whole range', async () => {
    const fill = Buffer.alloc(256);
    writeFill(fill, 1 << 20);
    const mixed = Buffer.from(fill);
    mixed.fill(7, 0, 100); // data over the first 100 bytes
    // One word per 512-byte sector: the first whole one in range.
    expect(firstFillSector(mixed, 1 << 20)).toBe(-1); // the sector's first word is data
    expect(firstFillSector(mixed.subarray(101), (1 << 20) + 101)).toBe((1 << 20) + 104);
    expect(firstFillSector(mixed.subarray(3, 100), (1 << 20) + 3)).toBe(-1);
    const sectors = Buffer.alloc(2048);
    writeFill(sectors, 8192);
    sectors.fill(1, 0, 1024 + 5); // two sectors of data and 5 bytes of the third
    expect(firstFillSector(sectors, 8192)).toBe(8192 + 1536);
    expect(firstFillSector(sectors.subarray(1020), 8192 + 1020)).toBe(8192 + 1536);
    // A range that holds a single word of a sector, its last: that word is checked.
    const oneWord = Buffer.alloc(420, 0x41);
    fillOf(512, 8).copy(oneWord, 412);
    expect(firstFillSector(oneWord, 100)).toBe(512);
    expect(isFillRange(mixed.subarray(101, 150), (1 << 20) + 101)).toBe(true);
    expect(isFillRange(mixed.subarray(99, 150), (1 << 20) + 99)).toBe(false);

    const dir = await tempDir('zrs-fill-');
    const path = join(dir, 'f');
    const file = Buffer.concat([Buffer.alloc(1 << 20, 3), mixed]);
    await writeFile(path, file);
    const handle = await open(path, 'r');
    try {
      expect(await trailingFill(handle, 0, file.length)).toBe((1 << 20) + 104);
      expect(await trailingFill(handle, (1 << 20) + 200, file.length)).toBe((1 << 20) + 200);
      expect(await trailingFill(handle, 0, file.length - 4)).toBe(file.length - 4); // not a whole word: none
      expect(await trailingFill(handle, 0, 1 << 20)).toBe(1 << 20);
    } finally {
      await handle.close();
    }
  });
});

describe('FileStorage with fill ahead of its end', () => {
  it('commits over the fill, extends it as it runs out, and cuts it on close', async () => {
    const dir = await tempDir('zrs-fill-');
    const path = join(dir, 'Data.fs');
    const fs = await FileStorage.open(path, { create: true, preallocate: 4096, now: fakeClock() });
    const tids: Buffer[] = [];
    const sizes = new Set<number>();
    for (let i = 1; i <= 40; i++) {
      tids.push(await commit(fs, [[oidOf(i), Z64, Buffer.alloc(200, i)]]));
      const size = statSync(path).size;
      sizes.add(size);
      expect(size % 8).toBe(0);
      expect(size).toBeGreaterThanOrEqual(fs.getSize());
      dataBytes(path, fs.getSize()); // the rest is fill
      expect(await sizeWithoutFill(path)).toBe(fs.getSize());
    }
    expect(sizes.size).toBeGreaterThan(1);
    expect(sizes.size).toBeLessThan(40); // most commits only overwrite
    // A reader of the open file sees every transaction, and stops at the fill.
    const ro = await FileStorage.open(path, { readOnly: true });
    expect((await collect(ro.iterator())).map((t) => hexOf(t.tid))).toEqual(tids.map(hexOf));
    await ro.close();
    await fs.close();
    expect(statSync(path).size).toBe(fs.getSize());
    expect(await sizeWithoutFill(path)).toBe(fs.getSize());
  });

  it('is refused by Python ZODB, never read for a tid: its read_index fails on the status byte wherever the data ends', async () => {
    const dir = await tempDir('zrs-fill-');
    const path = join(dir, 'Data.fs');
    const fs = await FileStorage.open(path, { create: true, preallocate: 64 * 1024, now: fakeClock() });
    for (let i = 1; i <= 30; i++) {
      await commit(fs, [[oidOf(i), Z64, Buffer.alloc(100 + 37 * i, i)]]);
      const image = readFileSync(path); // what a crash now leaves
      expect(image.length).toBeGreaterThan(fs.getSize());
      expect(() => zodbReadIndexEnd(image)).toThrow(`status byte at ${fs.getSize() + 16}`);
      // Cut at the data's end, as the next open does, ZODB reads every transaction.
      expect(zodbReadIndexEnd(image.subarray(0, fs.getSize()))).toBe(fs.getSize());
    }
    // Whatever the data's last byte, the status byte read after it is not ASCII.
    const image = readFileSync(path);
    for (let pos = fs.getSize(); pos + 23 <= image.length; pos++) expect(image[pos + 16]).toBeGreaterThanOrEqual(0x80);
    await fs.close();
  });

  it('cuts fill of the earlier kind that a crash left past the data, keeping no side file for it', async () => {
    const dir = await tempDir('zrs-fill-');
    const path = join(dir, 'Data.fs');
    const fs = await FileStorage.open(path, { create: true, preallocate: 0, now: fakeClock() });
    const tids = [await commit(fs, [[oidOf(1), Z64, Buffer.alloc(300, 1)]]), await commit(fs, [[oidOf(2), Z64, Buffer.alloc(301, 2)]])];
    await fs.close();
    const end = statSync(path).size;
    // The fill starts at the first whole word past the data; the bytes before it are that word's fill.
    const start = Math.floor(end / 8) * 8;
    const fill = Buffer.alloc(16 * 1024);
    writeLegacyFill(fill, start);
    const handle = await open(path, 'r+');
    await handle.write(fill.subarray(end - start), 0, fill.length - (end - start), end);
    await handle.close();
    const reopened = await FileStorage.open(path, { now: fakeClock() });
    expect(reopened.tailCutOnOpen).toBeNull();
    expect((await collect(reopened.iterator())).map((t) => hexOf(t.tid))).toEqual(tids.map(hexOf));
    await reopened.close();
    expect(statSync(path).size).toBe(end);
    expect(existsSync(`${path}.tr0`)).toBe(false);
  });

  it('writes every transaction over fill, never over a hole, which a torn sync would leave reading as zeros', async () => {
    const dir = await tempDir('zrs-fill-');
    const path = join(dir, 'Data.fs');
    const notOverFill: string[] = [];
    let fillWrites = 0;
    /** Where transaction bytes written so far end (later writes below it are status bytes). */
    let dataEnd = 0;
    const disk: StorageDisk = {
      ...nodeDisk,
      write(fd, buf, pos) {
        if (isFillRange(buf, pos)) fillWrites++;
        else if (pos >= dataEnd) {
          // What the new transaction's bytes replace: fill written before them, all of it.
          const before = Buffer.alloc(buf.length);
          const got = readSync(fd, before, 0, before.length, pos);
          if (got < buf.length || !isFillRange(before, pos)) notOverFill.push(`${buf.length} bytes at ${pos}`);
          dataEnd = pos + buf.length;
        }
        nodeDisk.write(fd, buf, pos);
      },
    };
    // The first commit after an open (no fill yet), then commits that use the fill up and extend it.
    for (let round = 0; round < 2; round++) {
      const fs = await FileStorage.open(path, { create: true, preallocate: 2048, disk, now: fakeClock() });
      for (let i = 1; i <= 30; i++) await commit(fs, [[oidOf(round * 100 + i), Z64, Buffer.alloc(150, i)]]);
      await fs.close();
    }
    expect(fillWrites).toBeGreaterThan(2);
    expect(notOverFill).toEqual([]);
  });

  it('writes none without fsync, or with preallocate 0, and refuses a bad size', async () => {
    const dir = await tempDir('zrs-fill-');
    for (const options of [{ fsync: false }, { preallocate: 0 }]) {
      const path = join(dir, `${JSON.stringify(options).replace(/\W/g, '')}.fs`);
      const fs = await FileStorage.open(path, { create: true, ...options });
      await commit(fs, [[oidOf(1), Z64, Buffer.from('one')]]);
      expect(statSync(path).size).toBe(fs.getSize());
      await fs.close();
    }
    await expect(FileStorage.open(join(dir, 'bad.fs'), { create: true, preallocate: -1 })).rejects.toThrow(/preallocate/);
  });

  it('leaves no fill in the .old file of a pack, and goes on writing fill in the packed file', async () => {
    const dir = await tempDir('zrs-fill-');
    const path = join(dir, 'Data.fs');
    const clock = fakeClock();
    const fs = await FileStorage.open(path, { create: true, now: clock });
    let serial = Z64;
    for (let i = 0; i < 5; i++) serial = await commit(fs, [[oidOf(1), serial, Buffer.from(`rev ${i}`)]]);
    const before = fs.getSize();
    await fs.pack(clock() / 1000);
    expect(statSync(`${path}.old`).size).toBe(before);
    expect(fs.getSize()).toBeLessThan(before);
    await commit(fs, [[oidOf(2), Z64, Buffer.from('after the pack')]]);
    expect(statSync(path).size).toBeGreaterThan(fs.getSize());
    dataBytes(path, fs.getSize());
    await fs.close();
    expect(statSync(path).size).toBe(fs.getSize());
  });

  it("cuts a last transaction still 'c' that fill follows, and counts nothing after it: the fill in its last word is no data", async () => {
    const dir = await tempDir('zrs-fill-');
    const path = join(dir, 'Data.fs');
    const fs = await FileStorage.open(path, { create: true, preallocate: 4096, now: fakeClock() });
    await commit(fs, [[oidOf(1), Z64, Buffer.alloc(100, 1)]]);
    const tpos = fs.getSize();
    // 101 bytes of data: the transaction ends inside a word, with fill in the rest of it.
    await commit(fs, [[oidOf(2), Z64, Buffer.alloc(101, 2)]]);
    const end = fs.getSize();
    expect(end % 8).not.toBe(0);
    const image = readFileSync(path); // as a crash leaves it: fill after the end
    await fs.close();
    image[tpos + 16] = 'c'.charCodeAt(0); // its final status never reached the disk
    const crashed = join(dir, 'Crashed.fs');
    await writeFile(crashed, image);
    const reopened = await FileStorage.open(crashed, { now: fakeClock(Date.UTC(2030, 0, 1)) });
    try {
      expect(reopened.tailCutOnOpen).toMatchObject({ position: tpos, reason: "transaction still marked in progress ('c')", bytesAfter: 0 });
      expect(reopened.getSize()).toBe(tpos);
    } finally {
      await reopened.close();
    }
  });

  it('keeps a last transaction whose final bytes happen to equal the fill that follows them (it was cut as unfinished, losing it)', async () => {
    const dir = await tempDir('zrs-fill-');
    const path = join(dir, 'Data.fs');
    const fs = await FileStorage.open(path, { create: true, now: fakeClock() });
    const first = fs.getSize();
    await commit(fs, [[oidOf(1), Z64, Buffer.alloc(10, 1)]]);
    const bare = fs.getSize() - first - 8 - 10; // a transaction's length without its data bytes
    const tpos = fs.getSize();
    // Data whose transaction ends one byte into a word, that byte (its redundant length's lowest) the fill's there.
    let size = 0;
    for (let k = 1; size === 0 && k < 1_000_000; k++) {
      const end = tpos + bare + k + 8;
      if (end % 8 === 1 && ((bare + k) & 0xff) === fillOf(end - 1, 1)[0]) size = k;
    }
    expect(size).toBeGreaterThan(0);
    const tid = await commit(fs, [[oidOf(2), Z64, Buffer.alloc(size, 2)]]);
    const end = fs.getSize();
    const image = readFileSync(path); // as a crash leaves it: fill after the end
    await fs.close();
    expect(image.length).toBeGreaterThan(end);
    const crashed = join(dir, 'Crashed.fs');
    await writeFile(crashed, image);
    expect(await sizeWithoutFill(crashed)).toBe(end);
    const reopened = await FileStorage.open(crashed, { now: fakeClock(Date.UTC(2030, 0, 1)) });
    try {
      expect(hexOf(reopened.lastTransaction())).toBe(hexOf(tid));
      expect(reopened.getSize()).toBe(end);
    } finally {
      await reopened.close();
    }
    expect(existsSync(`${crashed}.tr0`)).toBe(false);
    expect(statSync(crashed).size).toBe(end);
  });

  it('still refuses damage inside a durable transaction that has intact ones after it', async () => {
    const dir = await tempDir('zrs-fill-');
    const path = join(dir, 'Data.fs');
    const fs = await FileStorage.open(path, { create: true, now: fakeClock() });
    for (let i = 1; i <= 3; i++) await commit(fs, [[oidOf(i), Z64, Buffer.from(`object ${i}`)]]);
    const [first] = await collect(fs.iterator());
    const image = readFileSync(path); // as a crash would leave it: fill after the end
    await fs.close();
    image[first!.records[0]!.pos + 24]! ^= 0xff; // its first record's transaction pointer
    const copy = join(dir, 'Copy.fs');
    await writeFile(copy, image);
    await expect(FileStorage.open(copy)).rejects.toBeInstanceOf(CorruptedDataError);
  });

  it('recovers from a torn sync to a prefix of the transactions, keeping every durable one (property)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 4 }),
        fc.array(fc.integer({ min: 1, max: 3000 }), { minLength: 1, maxLength: 6 }),
        fc.array(fc.boolean(), { minLength: 64, maxLength: 64 }),
        async (durableCount, sizes, lostSectors) => {
          const dir = await tempDir('zrs-torn-');
          const path = join(dir, 'Data.fs');
          const fs = await FileStorage.open(path, { create: true, preallocate: 4096, now: fakeClock() });
          const ends: number[] = [];
          const tids: Buffer[] = [];
          for (let i = 0; i < durableCount + sizes.length; i++) {
            tids.push(await commit(fs, [[oidOf(i + 1), Z64, Buffer.alloc(sizes[i - durableCount] ?? 100, i + 1)]]));
            ends.push(fs.getSize());
          }
          const written = readFileSync(path);
          await fs.close();
          // The sectors written after the durable transactions keep the fill, or not.
          const durableEnd = ends[durableCount - 1]!;
          const image = Buffer.from(written);
          const writtenEnd = ends.at(-1)!;
          const fill = Buffer.alloc(Math.ceil(image.length / 8) * 8);
          writeFill(fill, 0);
          for (let sector = Math.floor(durableEnd / 512) * 512, k = 0; sector < writtenEnd; sector += 512, k++) {
            if (!lostSectors[k % lostSectors.length]) continue;
            const from = Math.max(sector, durableEnd);
            fill.copy(image, from, from, Math.min(sector + 512, writtenEnd));
          }
          const crashed = join(dir, 'Crashed.fs');
          await writeFile(crashed, image);
          const reopened = await FileStorage.open(crashed, { now: fakeClock(Date.UTC(2030, 0, 1)) });
          const kept = reopened.transactionCount;
          const end = reopened.getSize();
          const readBack = (await collect(reopened.iterator())).map((t) => hexOf(t.tid));
          // The next commit appends cleanly after what was kept.
          await commit(reopened, [[oidOf(99), Z64, Buffer.from('after the crash')]]);
          await reopened.close();
          expect(kept).toBeGreaterThanOrEqual(durableCount);
          expect(readBack).toEqual(tids.slice(0, kept).map(hexOf));
          expect(end).toBe(ends[kept - 1]);
          const after = await readFile(crashed);
          expect(after.subarray(0, end)).toEqual(written.subarray(0, end));
          // A torn transaction is kept aside, its fill not (but for the words' tails).
          if (kept < tids.length && existsSync(`${crashed}.tr0`)) {
            expect(readFileSync(`${crashed}.tr0`).length).toBeLessThanOrEqual(writtenEnd - end + 7);
          }
          const again = await FileStorage.open(crashed, { readOnly: true });
          expect(again.transactionCount).toBe(kept + 1);
          await again.close();
        },
      ),
      { numRuns: 60 },
    );
  });
});
