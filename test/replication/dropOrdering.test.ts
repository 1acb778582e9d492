// A connection dropped at once (a new replication address) is aborted after
// the event its applier is in the middle of. A transaction whose begin is
// still waiting for the storage's commit lock when the connection drops is
// begun, then aborted: aborted first, before it had begun, it would begin
// afterwards with nobody left to end it, holding the commit lock, and every
// later transaction (the next connection's too) would wait for it for ever.

import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { Primary } from '../../src/replication/primary.js';
import { Secondary } from '../../src/replication/secondary.js';
import type { FileStorage } from '../../src/storage/FileStorage.js';
import { Z64 } from '../../src/storage/timestamp.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { BLOB_RECORD, commitMany, waitForTid } from './helpers.js';
import { FAST_RECONNECT, settleUntil } from './netHelpers.js';

afterAll(cleanupTempDirs);

it('aborts a transaction that was waiting to begin when its connection was dropped only once it has begun, so the next connection applies it', async () => {
  const dir = await tempDir();
  const primary = await Primary.open({ path: join(dir, 'p.fs'), blobDir: join(dir, 'p.blobs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
  const secondary = await Secondary.open({ path: join(dir, 's.fs'), blobDir: join(dir, 's.blobs'), replicateFrom: primary.address, fsync: false, reconnect: FAST_RECONNECT, auditPath: null });
  let release: (() => void) | null = null;
  try {
    await commitMany(primary.storage, 1);
    await waitForTid(secondary, primary.storage.lastTransaction());
    // Nothing else writes to a secondary's storage: the test takes its commit lock to hold the next begin.
    const inner = (secondary as unknown as { inner: FileStorage }).inner;
    const waitingBegins = (inner as unknown as { waitingBegins: Map<unknown, unknown> }).waitingBegins;
    release = await inner.acquireCommitLock();
    // A transaction with a blob comes as begin, record, blob blocks, commit (not as a raw run).
    const file = join(dir, 'blob');
    await writeFile(file, 'the blob');
    const oid = primary.storage.newOid();
    const txn = { description: 'with a blob' };
    await primary.storage.tpcBegin(txn);
    await primary.storage.storeBlob(oid, Z64, BLOB_RECORD, file, txn);
    await primary.storage.tpcVote(txn);
    const tid = await primary.storage.tpcFinish(txn);
    await settleUntil(() => waitingBegins.size === 1);
    // The connection is dropped (to connect again to the same primary) while its applier waits to begin the transaction.
    secondary.setReplicationAddress(primary.address);
    expect(secondary.machine.getSnapshot().matches('connected')).toBe(false);
    release();
    release = null;
    await waitForTid(secondary, tid, 10_000);
    expect(secondary.machine.getSnapshot().context.counters.connects).toBe(2);
    expect((await secondary.storage.load(oid)).data.equals(BLOB_RECORD)).toBe(true);
  } finally {
    release?.();
    await secondary.close();
    await primary.close();
  }
});
