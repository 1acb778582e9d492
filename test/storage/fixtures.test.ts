// Every ZODB fixture opens from a temp copy and reads exactly as ZODB's own
// manifest says: headers, records, current objects, MVCC samples, history,
// undo log, blobs, and the damaged-tail open behaviour.

import { createHash } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FileStorage, decodeExtension } from '../../src/storage/FileStorage.js';
import { POSKeyError } from '../../src/errors.js';
import { oidKey } from '../../src/storage/scan.js';
import { tidToString } from '../../src/storage/timestamp.js';
import { cleanupTempDirs, copyZodbFixture, h2b, hex, readManifest } from '../helpers/fixtures.js';
import { toJsonish } from '../helpers/pickleJson.js';

afterAll(cleanupTempDirs);

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const INTACT = ['basic', 'undo', 'packed', 'blobs', 'large', 'fs21-legacy'];
const DAMAGED = ['damaged-truncated', 'damaged-checkpoint', 'damaged-trailer'];

async function openFixture(dir: string, readOnly: boolean): Promise<{ fs: FileStorage; path: string; tmp: string }> {
  const tmp = await copyZodbFixture(dir);
  const path = join(tmp, 'Data.fs');
  const blobDir = existsSync(join(tmp, 'blobs')) ? join(tmp, 'blobs') : undefined;
  const fs = await FileStorage.open(path, { readOnly, blobDir });
  return { fs, path, tmp };
}

describe.each([...INTACT, ...DAMAGED])('fixture %s', (dir) => {
  it('iterates every transaction and record exactly as the manifest', async () => {
    const m = await readManifest(dir);
    const { fs } = await openFixture(dir, true);
    try {
      const got = [];
      for await (const t of fs.iterator()) got.push(t);
      expect(got.length).toBe(m.transaction_count);
      got.forEach((t, i) => {
        const want = m.transactions[i];
        expect(hex(t.tid)).toBe(want.tid);
        expect(tidToString(t.tid)).toBe(want.timestamp);
        expect(t.status).toBe(want.status);
        expect(t.pos).toBe(want.pos);
        expect(t.length).toBe(want.tlen);
        expect(hex(t.user)).toBe(want.user_hex);
        expect(hex(t.description)).toBe(want.description_hex);
        expect(hex(t.extensionBytes)).toBe(want.extension_raw_hex);
        expect(toJsonish(decodeExtension(t.extensionBytes))).toEqual(want.extension);
        expect(t.records.length).toBe(want.record_count);
        t.records.forEach((r, j) => {
          const w = want.records[j];
          const header = fs.readDataHeaderAt(r.pos);
          expect([hex(r.oid), hex(r.tid), r.pos, header.prev, header.tloc, header.plen]).toEqual([
            w.oid,
            w.tid,
            w.pos,
            w.prev,
            w.tloc,
            w.plen,
          ]);
          expect(r.back).toBe(w.back);
          expect(hex(r.dataTxn)).toBe(w.data_txn);
          if (w.data_sha256 === null) expect(r.data).toBeNull();
          else {
            expect(r.data!.length).toBe(w.data_len);
            expect(sha(r.data!)).toBe(w.data_sha256);
          }
        });
      });
    } finally {
      await fs.close();
    }
  });
});

describe.each(INTACT)('fixture %s storage view', (dir) => {
  it('matches lastTransaction, len, size, current objects and maxoid', async () => {
    const m = await readManifest(dir);
    const s = m.storage;
    const { fs } = await openFixture(dir, true);
    try {
      expect(hex(fs.lastTransaction())).toBe(s.lastTransaction);
      expect(fs.objectCount).toBe(s.len);
      expect(fs.getSize()).toBe(s.getSize);
      expect(hex(fs.maxOid())).toBe(s.maxoid);
      for (const [oid, cur] of Object.entries<any>(s.current)) {
        expect(fs.index.get(oidKey(h2b(oid)))).toBe(cur.pos);
        if (cur.load === 'POSKeyError') {
          await expect(fs.load(h2b(oid))).rejects.toBeInstanceOf(POSKeyError);
        } else {
          const r = await fs.load(h2b(oid));
          expect(hex(r.tid)).toBe(cur.load_tid);
          expect(sha(r.data)).toBe(cur.load_sha256);
        }
      }
    } finally {
      await fs.close();
    }
  });

  it('answers loadBefore / loadSerial samples and history as ZODB does', async () => {
    const s = (await readManifest(dir)).storage;
    const { fs } = await openFixture(dir, true);
    try {
      for (const sample of s.load_samples) {
        const oid = h2b(sample.oid);
        const tid = h2b(sample.tid);
        if (sample.result?.exception === 'POSKeyError') {
          const call = sample.call.startsWith('loadBefore') ? fs.loadBefore(oid, tid) : fs.loadSerial(oid, tid);
          await expect(call).rejects.toBeInstanceOf(POSKeyError);
        } else if (sample.call.startsWith('loadBefore')) {
          const r = await fs.loadBefore(oid, tid);
          if (sample.result === null) expect(r).toBeNull();
          else {
            expect(r).not.toBeNull();
            expect(sha(r!.data)).toBe(sample.result.data_sha256);
            expect(hex(r!.tid)).toBe(sample.result.start_tid);
            expect(hex(r!.endTid)).toBe(sample.result.end_tid);
          }
        } else if (sample.call.startsWith('loadSerial')) {
          if (sample.result === null || sample.result === 'POSKeyError') {
            await expect(fs.loadSerial(oid, tid)).rejects.toBeInstanceOf(POSKeyError);
          } else expect(sha(await fs.loadSerial(oid, tid))).toBe(sample.result.data_sha256);
        } else throw new Error(`unknown sample call ${sample.call}`);
      }
      for (const [oid, entries] of Object.entries<any[]>(s.history)) {
        const got = await fs.history(h2b(oid), entries.length + 5);
        expect(got.length).toBe(entries.length);
        got.forEach((g, i) => {
          const w = entries[i];
          expect(hex(g.tid)).toBe(w.tid.__bytes_hex__);
          expect(g.time).toBeCloseTo(w.time, 5);
          expect(hex(g.user)).toBe(w.user_name.__bytes_hex__);
          expect(hex(g.description)).toBe(w.description.__bytes_hex__);
          expect(g.size).toBe(w.size);
        });
      }
    } finally {
      await fs.close();
    }
  });
});

describe('blob fixture', () => {
  it('loads every blob revision with the recorded size and digest', async () => {
    const s = (await readManifest('blobs')).storage;
    const { fs, tmp } = await openFixture('blobs', true);
    try {
      expect(s.blobs_loadBlob.length).toBeGreaterThan(0);
      for (const b of s.blobs_loadBlob) {
        const path = await fs.loadBlob(h2b(b.oid), h2b(b.tid));
        expect(path).toBe(join(tmp, 'blobs', b.blob_path));
        expect(statSync(path).size).toBe(b.size);
        expect(sha(readFileSync(path))).toBe(b.sha256);
      }
    } finally {
      await fs.close();
    }
  });
});

describe.each(DAMAGED)('damaged fixture %s', (dir) => {
  // ZODB reports the unfinished transaction's tid as lastTransaction; we
  // report the last complete one (a secondary must never claim a tid it does
  // not hold) and only keep new tids above the unfinished one.
  it('read-only open shows the complete transactions and leaves the file alone', async () => {
    const m = await readManifest(dir);
    const ob = m.open_behaviour.read_only;
    const { fs, path, tmp } = await openFixture(dir, true);
    await fs.close();
    expect(hex(fs.lastTransaction())).toBe(m.transactions.at(-1).tid);
    expect(fs.objectCount).toBe(ob.len);
    expect(fs.getSize()).toBe(ob.storage_pos);
    expect(fs.transactionCount).toBe(ob.transactions_via_storage_iterator);
    expect(statSync(path).size).toBe(ob.size_after_open_and_close);
    expect((await readdir(tmp)).filter((f) => f.includes('.tr'))).toEqual([]);
  });

  it('read-write open cuts the unfinished tail into Data.fs.tr0 and commits cleanly after it', async () => {
    const m = await readManifest(dir);
    const ob = m.open_behaviour.read_write;
    const { fs, path } = await openFixture(dir, false);
    try {
      expect(hex(fs.lastTransaction())).toBe(m.transactions.at(-1).tid);
      expect(fs.getSize()).toBe(ob.storage_pos);
      expect(statSync(path).size).toBe(ob.size_after_open_and_close);
      expect(statSync(`${path}.tr0`).size).toBe(ob.side_files['Data.fs.tr0']);
      const txn = { description: 'after recovery' };
      await fs.tpcBegin(txn);
      const oid = fs.newOid();
      fs.store(oid, Buffer.alloc(8), Buffer.from('fresh'), txn);
      await fs.tpcVote(txn);
      const tid = await fs.tpcFinish(txn);
      expect(Buffer.compare(tid, h2b(ob.lastTransaction))).toBeGreaterThan(0);
      expect((await fs.load(oid)).data.toString()).toBe('fresh');
    } finally {
      await fs.close();
    }
    const again = await FileStorage.open(path, { readOnly: true });
    expect(again.transactionCount).toBe(ob.transactions_via_storage_iterator + 1);
    await again.close();
  });
});
