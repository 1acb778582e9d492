// A pack's passes over the file let the event loop turn every
// PASS_TURN_BYTES, so that a node packing goes on committing and replicating
// meanwhile: its reads are mostly served from a 4 MiB window in memory,
// which alone would let it turn once a window. The rounds of a pack
// copy the transactions committed while it ran without the commit lock while
// many are left, with the same result.

import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { open } from 'node:fs/promises';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { MAGIC_BYTES } from '../../src/storage/format.js';
import { emptyScanState, scanWhole } from '../../src/storage/scan.js';
import { tidToSeconds } from '../../src/storage/timestamp.js';
import { PASS_TURN_BYTES, PassTurns } from '../../src/storage/turns.js';
import type { TransactionMeta } from '../../src/storage/types.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { allTransactions, holdNextRead, type HeldRead } from '../replication/helpers.js';

afterAll(cleanupTempDirs);

/** `n` transactions each rewriting the same `objects` objects with `bytes` bytes. */
async function commitRevisions(fs: FileStorage, oids: Buffer[], n: number, bytes: number): Promise<Buffer[]> {
  const tids: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const txn: TransactionMeta = { description: `t${i}` };
    await fs.tpcBegin(txn);
    for (const oid of oids) fs.store(oid, (await fs.load(oid).catch(() => null))?.tid ?? Buffer.alloc(8), Buffer.alloc(bytes, i % 251), txn);
    await fs.tpcVote(txn);
    tids.push(await fs.tpcFinish(txn));
  }
  return tids;
}

describe('PassTurns', () => {
  it('gives a turn every so many bytes of a pass, counting again from a pass that starts over', async () => {
    const turns = new PassTurns(100);
    expect([0, 50, 99].map((p) => turns.at(p))).toEqual([null, null, null]);
    const turn = turns.at(100);
    expect(turn).toBeInstanceOf(Promise);
    await turn;
    expect([150, 199].map((p) => turns.at(p))).toEqual([null, null]);
    expect(turns.at(200)).not.toBeNull();
    // A new pass from the start: counted from there.
    expect(turns.at(4)).toBeNull();
    expect(turns.at(103)).toBeNull();
    expect(turns.at(104)).not.toBeNull();
  });
});

describe('passes over a file', () => {
  it("a scan given turns (a pack's of its output) takes one every PASS_TURN_BYTES", async () => {
    const path = join(await tempDir(), 'Data.fs');
    const fs = await FileStorage.open(path, { create: true, fsync: false });
    await commitRevisions(fs, [fs.newOid()], 200, 8000);
    const size = fs.getSize();
    await fs.close();
    let given = 0;
    const counting = new (class extends PassTurns {
      override at(pos: number): Promise<void> | null {
        const turn = super.at(pos);
        if (turn) given += 1;
        return turn;
      }
    })();
    const handle = await open(path, 'r');
    try {
      const scanned = await scanWhole(handle, path, MAGIC_BYTES, size, emptyScanState(), counting);
      expect(scanned.end).toBe(size);
    } finally {
      await handle.close();
    }
    expect(given).toBeGreaterThanOrEqual(Math.floor((size - MAGIC_BYTES) / PASS_TURN_BYTES) - 1);
  });

  it('a pack lets the event loop turn at least every PASS_TURN_BYTES of each pass over the file', async () => {
    const path = join(await tempDir(), 'Data.fs');
    const fs = await FileStorage.open(path, { create: true, fsync: false });
    try {
      const tids = await commitRevisions(fs, [fs.newOid(), fs.newOid()], 1000, 4000);
      expect(fs.getSize()).toBeGreaterThan(8 * PASS_TURN_BYTES);
      // Each turn of the event loop (a setImmediate chain) starts a new span; the bytes a pass reads within one
      // span are what the pack processes without letting anything else run.
      let span = 0;
      let running = true;
      const spin = (): void => {
        span += 1;
        if (running) setImmediate(spin);
      };
      setImmediate(spin);
      const firstInSpan = new Map<string, number>();
      let longest = 0;
      const report = await fs
        .pack(tidToSeconds(tids.at(-1)!) + 1, undefined, {
          onProgress: (p) => {
            const key = `${span} ${p.step}`;
            const first = firstInSpan.get(key) ?? p.done;
            firstInSpan.set(key, first);
            longest = Math.max(longest, p.done - first);
          },
        })
        .finally(() => (running = false));
      expect(report.packed).toBe(true);
      // A transaction here is about 8 KB: a span ends within one of the limit (two spans may read as one, when the
      // pack's turn comes before the chain's in the same round of the loop). Without the turns, a whole 4 MiB window.
      expect(longest).toBeGreaterThan(PASS_TURN_BYTES / 2);
      expect(longest).toBeLessThanOrEqual(2 * PASS_TURN_BYTES + 16 * 1024);
    } finally {
      await fs.close();
    }
  });

  it('copies a large tail committed while the pack ran (in rounds, without the commit lock) into the packed file', async () => {
    const dir = await tempDir();
    const path = join(dir, 'Data.fs');
    const fs = await FileStorage.open(path, { create: true, fsync: false });
    let held: HeldRead | null = null;
    try {
      const oids = [fs.newOid(), fs.newOid()];
      const before = await commitRevisions(fs, oids, 20, 1000);
      held = await holdNextRead(dir);
      const end0 = fs.getSize();
      // Once the copy reaches what was committed during the pack (a round, without the commit lock), one more
      // commit: it goes through before the pack takes the lock for the last of the tail.
      const order: string[] = [];
      let late: Promise<Buffer[]> | null = null;
      const packing = fs
        .pack(tidToSeconds(before.at(-1)!) + 1e-5, undefined, {
          onProgress: (p) => {
            if (late === null && p.step === 'copy' && p.done >= end0) late = commitRevisions(fs, [oids[0]!], 1, 10).finally(() => order.push('commit'));
          },
        })
        .finally(() => order.push('pack'));
      await held.reading;
      // 300 KiB and more, past what is copied under the lock.
      const during = await commitRevisions(fs, oids, 40, 4000);
      held.release();
      const report = await packing;
      const [last] = await late!;
      expect(order).toEqual(['commit', 'pack']);
      expect({ packed: report.packed, tailTransactions: report.tailTransactions }).toEqual({ packed: true, tailTransactions: 41 });
      const kept = await allTransactions(fs);
      expect(kept.map((t) => t.tid)).toEqual([before.at(-1), ...during, last]);
      expect((await fs.load(oids[0]!)).data).toEqual(Buffer.alloc(10, 0));
      expect((await fs.load(oids[1]!)).data).toEqual(Buffer.alloc(4000, 39));
    } finally {
      held?.restore();
      await fs.close();
    }
    // What the open finds in the file, as the pack left it.
    const reopened = await FileStorage.open(path, { readOnly: true });
    try {
      expect((await allTransactions(reopened)).length).toBe(42);
    } finally {
      await reopened.close();
    }
  });
});
