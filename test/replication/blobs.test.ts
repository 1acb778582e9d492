// Blobs over real sockets: 0-byte, small and multi-block blobs reach native
// and zrs2.1 secondaries (and the end of a chain) as identical files; a
// secondary sharing the primary's blob directory loads them without a
// transfer; a blob file missing on the primary is reported loudly and its
// transaction is never committed on the secondary.

import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Primary } from '../../src/replication/primary.js';
import { Secondary } from '../../src/replication/secondary.js';
import type { FileStorage } from '../../src/storage/FileStorage.js';
import { Z64 } from '../../src/storage/timestamp.js';
import { interceptFileWrites } from '../helpers/fileWrites.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { commitMany, expectSameHistory, waitForState, waitForTid } from './helpers.js';
import { FAST_RECONNECT, LogCollector, sessionClosed } from './netHelpers.js';

afterAll(cleanupTempDirs);

/** A ZODB.blob.Blob record: the class pickle alone, then an empty state. */
const BLOB_RECORD = Buffer.concat([Buffer.from('\x80\x03cZODB.blob\nBlob\nq\x00.', 'latin1'), Buffer.from('\x80\x03N.', 'latin1')]);

const SIZES = [0, 10, 200 * 1024];

interface StoredBlob {
  oid: Buffer;
  tid: Buffer;
  bytes: Buffer;
}

/** One transaction per blob, each a new object. */
async function storeBlobs(fs: FileStorage, scratch: string, sizes: number[]): Promise<StoredBlob[]> {
  const out: StoredBlob[] = [];
  for (const size of sizes) {
    const bytes = randomBytes(size);
    const file = join(scratch, `blob-${out.length}-${size}`);
    await writeFile(file, bytes);
    const oid = fs.newOid();
    const txn = { description: `blob of ${size} bytes` };
    await fs.tpcBegin(txn);
    await fs.storeBlob(oid, Z64, BLOB_RECORD, file, txn);
    await fs.tpcVote(txn);
    out.push({ oid, tid: await fs.tpcFinish(txn), bytes });
  }
  return out;
}

/** Committed blob files under a blob directory: relative path (tmp/ excluded) -> size and sha256. */
function blobFiles(root: string): Map<string, string> {
  const files = new Map<string, string>();
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) {
        if (relative(root, p) !== 'tmp') walk(p);
      } else if (e.name.endsWith('.blob')) {
        const bytes = readFileSync(p);
        files.set(relative(root, p), `${bytes.length}:${createHash('sha256').update(bytes).digest('hex')}`);
      }
    }
  };
  walk(root);
  return files;
}

async function expectBlobsLoad(storage: { loadBlob(oid: Buffer, tid: Buffer): Promise<string> }, blobs: StoredBlob[]): Promise<void> {
  for (const b of blobs) {
    const path = await storage.loadBlob(b.oid, b.tid);
    expect(statSync(path).size).toBe(b.bytes.length);
    expect(readFileSync(path).equals(b.bytes)).toBe(true);
  }
}

describe('blob replication', () => {
  it('0-byte, 10-byte and 200 KiB blobs reach a native and a zrs2.1 secondary as identical files', async () => {
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), blobDir: join(dir, 'p.blobs'), replicateTo: '127.0.0.1:0', fsync: false });
    const secondaries = await Promise.all(
      (['native', 'zrs2.1'] as const).map((protocol) =>
        Secondary.open({ path: join(dir, `${protocol}.fs`), blobDir: join(dir, `${protocol}.blobs`), replicateFrom: primary.address, protocol, fsync: false, reconnect: FAST_RECONNECT }),
      ),
    );
    try {
      await commitMany(primary.storage, 2);
      const blobs = await storeBlobs(primary.storage, dir, SIZES);
      await commitMany(primary.storage, 1);
      const primaryFiles = blobFiles(join(dir, 'p.blobs'));
      expect(primaryFiles.size).toBe(3);
      for (const s of secondaries) {
        await waitForTid(s, primary.storage.lastTransaction());
        await expectSameHistory(primary.storage, s.storage);
        await expectBlobsLoad(s.storage, blobs);
      }
      for (const protocol of ['native', 'zrs2.1']) expect(blobFiles(join(dir, `${protocol}.blobs`))).toEqual(primaryFiles);
      const empty = [...primaryFiles.entries()].find(([, b]) => b.startsWith('0:'));
      expect(empty).toBeDefined();
    } finally {
      for (const s of secondaries) await s.close();
      await primary.close();
    }
  });

  it('writes blob blocks whole when each write takes only part of them (a disk filling up)', async () => {
    const dir = await tempDir();
    const restore = await interceptFileWrites(dir, (real, self, buffer, offset, length, position) => real.call(self, buffer, offset, Math.min(length, 1000), position));
    const primary = await Primary.open({ path: join(dir, 'p.fs'), blobDir: join(dir, 'p.blobs'), replicateTo: '127.0.0.1:0', fsync: false });
    try {
      const secondary = await Secondary.open({ path: join(dir, 's.fs'), blobDir: join(dir, 's.blobs'), replicateFrom: primary.address, fsync: false });
      try {
        const blobs = await storeBlobs(primary.storage, dir, [200 * 1024]);
        await waitForTid(secondary, primary.storage.lastTransaction());
        await expectBlobsLoad(secondary.storage, blobs);
      } finally {
        await secondary.close();
      }
    } finally {
      await primary.close();
      restore();
    }
    expect(blobFiles(join(dir, 's.blobs'))).toEqual(blobFiles(join(dir, 'p.blobs')));
  });

  it('replicates blobs along a chain primary -> secondary -> secondary', async () => {
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), blobDir: join(dir, 'p.blobs'), replicateTo: join(dir, 'p.sock'), fsync: false });
    const s1 = await Secondary.open({
      path: join(dir, 's1.fs'),
      blobDir: join(dir, 's1.blobs'),
      replicateFrom: join(dir, 'p.sock'),
      replicateTo: join(dir, 's1.sock'),
      fsync: false,
      reconnect: FAST_RECONNECT,
    });
    const s2 = await Secondary.open({ path: join(dir, 's2.fs'), blobDir: join(dir, 's2.blobs'), replicateFrom: join(dir, 's1.sock'), fsync: false, reconnect: FAST_RECONNECT });
    try {
      const blobs = await storeBlobs(primary.storage, dir, SIZES);
      await waitForTid(s2, blobs.at(-1)!.tid);
      await expectSameHistory(primary.storage, s2.storage);
      await expectBlobsLoad(s2.storage, blobs);
      expect(blobFiles(join(dir, 's2.blobs'))).toEqual(blobFiles(join(dir, 'p.blobs')));
      expect(blobFiles(join(dir, 's1.blobs'))).toEqual(blobFiles(join(dir, 'p.blobs')));
    } finally {
      await s2.close();
      await s1.close();
      await primary.close();
    }
  });

  it.each(['native', 'zrs2.1'] as const)('a %s secondary with transferBlobs: false shares the primary blob directory', async (protocol) => {
    const dir = await tempDir();
    const shared = join(dir, 'blobs');
    const primary = await Primary.open({ path: join(dir, 'p.fs'), blobDir: shared, replicateTo: '127.0.0.1:0', fsync: false });
    const secondary = await Secondary.open({
      path: join(dir, 's.fs'),
      blobDir: shared,
      transferBlobs: false,
      replicateFrom: primary.address,
      protocol,
      fsync: false,
      reconnect: FAST_RECONNECT,
    });
    try {
      const before = readdirSync(join(shared, 'tmp'));
      const blobs = await storeBlobs(primary.storage, dir, SIZES);
      await waitForTid(secondary, blobs.at(-1)!.tid);
      await expectSameHistory(primary.storage, secondary.storage);
      await expectBlobsLoad(secondary.storage, blobs);
      expect(blobFiles(shared).size).toBe(3);
      expect(readdirSync(join(shared, 'tmp'))).toEqual(before);
    } finally {
      await secondary.close();
      await primary.close();
    }
  });

  it.each(['native', 'zrs2.1'] as const)('a blob file missing on the primary is reported and never committed (%s)', async (protocol) => {
    const dir = await tempDir();
    const logs = new LogCollector();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), blobDir: join(dir, 'p.blobs'), replicateTo: '127.0.0.1:0', fsync: false, log: logs.log });
    const [plain] = await commitMany(primary.storage, 1);
    const [blob] = await storeBlobs(primary.storage, dir, [10]);
    const missing = primary.storage.blobs!.pathFor(blob!.oid, blob!.tid);
    await rm(missing);
    const secondary = await Secondary.open({ path: join(dir, 's.fs'), blobDir: join(dir, 's.blobs'), replicateFrom: primary.address, protocol, fsync: false, reconnect: FAST_RECONNECT });
    try {
      const entry = await logs.waitFor((e) => sessionClosed(e) && e.level !== 'info');
      expect(entry.message).toContain(missing);
      expect(entry.message).toMatch(/missing/);
      await waitForTid(secondary, plain!);
      // It retries (and fails the same way) without ever committing the blob transaction.
      await logs.waitForCount((e) => sessionClosed(e) && e.message.includes(missing), 2);
      expect(secondary.storage.lastTransaction().equals(plain!)).toBe(true);
      expect(blobFiles(join(dir, 's.blobs')).size).toBe(0);
    } finally {
      await secondary.close();
      await primary.close();
    }
  });

  it.each(['native', 'zrs2.1'] as const)('a %s secondary without a blob directory stops for good at the first blob instead of applying its record without the file', async (protocol) => {
    const dir = await tempDir();
    const logs = new LogCollector();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), blobDir: join(dir, 'p.blobs'), replicateTo: '127.0.0.1:0', fsync: false });
    const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: primary.address, protocol, fsync: false, reconnect: FAST_RECONNECT, log: logs.log });
    try {
      // Replicates while there is no blob to carry.
      const [plain] = await commitMany(primary.storage, 1);
      await waitForTid(secondary, plain!);
      await storeBlobs(primary.storage, dir, [10]);
      const stopped = await logs.waitFor((e) => e.level === 'error' && /no blob directory/.test(e.message));
      expect(stopped.message).toMatch(/the primary sends blobs but this secondary has no blob directory \(configure blob-dir/);
      // A configuration error: no retry, the connection stays in failed with the reason.
      await waitForState(secondary, 'failed');
      expect(secondary.status().upstream?.lastError).toMatch(/has no blob directory/);
      expect(logs.count((e) => /no blob directory/.test(e.message))).toBe(1);
      expect(secondary.storage.lastTransaction().equals(plain!)).toBe(true);
    } finally {
      await secondary.close();
      await primary.close();
    }
  });
});
