// A record of more than 2 GiB, as Python ZODB can write one: reading it
// takes several read calls (Node takes at most 2^31 - 1 bytes a call, and a
// longer positional read of a FileHandle aborted the whole process). The file
// is sparse: its data is a hole, so it costs no disk, only memory to read.

import { closeSync, ftruncateSync, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { tidFromTime } from '../../src/storage/timestamp.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';

afterAll(cleanupTempDirs);

const PLEN = 2 ** 31 + 16;
const OID = Buffer.from('0000000000000000', 'hex');

/** A Data.fs holding one transaction with one record of PLEN zero bytes (a hole). */
function sparseFile(path: string): Buffer {
  const tid = tidFromTime(Date.UTC(2026, 0, 1));
  const tlen = 23 + 42 + PLEN;
  const txn = Buffer.alloc(23);
  tid.copy(txn, 0);
  txn.writeBigUInt64BE(BigInt(tlen), 8);
  txn.write(' ', 16, 'latin1');
  const rec = Buffer.alloc(42);
  OID.copy(rec, 0);
  tid.copy(rec, 8);
  rec.writeBigUInt64BE(4n, 24); // tloc
  rec.writeBigUInt64BE(BigInt(PLEN), 34);
  const trailer = Buffer.alloc(8);
  trailer.writeBigUInt64BE(BigInt(tlen));
  const fd = openSync(path, 'w');
  try {
    writeSync(fd, Buffer.from('FS30'), 0, 4, 0);
    writeSync(fd, txn, 0, 23, 4);
    writeSync(fd, rec, 0, 42, 27);
    ftruncateSync(fd, 4 + tlen + 8);
    writeSync(fd, trailer, 0, 8, 4 + tlen);
  } finally {
    closeSync(fd);
  }
  return tid;
}

it('iterates over and loads a record of more than 2 GiB (the iterator aborted the process; load threw a RangeError)', async () => {
  const path = join(await tempDir(), 'Data.fs');
  const tid = sparseFile(path);
  const fs = await FileStorage.open(path, { readOnly: true });
  try {
    let records = 0;
    for await (const t of fs.iterator()) {
      expect(t.tid).toEqual(tid);
      for (const r of t.records) {
        records++;
        expect(r.data!.length).toBe(PLEN);
      }
    }
    expect(records).toBe(1);
    const loaded = await fs.load(OID);
    expect(loaded.tid).toEqual(tid);
    expect(loaded.data.length).toBe(PLEN);
    expect(loaded.data[PLEN - 1]).toBe(0);
  } finally {
    await fs.close();
  }
}, 120_000);
