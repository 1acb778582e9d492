// Failover over real loopback sockets: promote a secondary while the primary
// is down, move another secondary to it without a resync, refuse the old
// primary as diverged (no retry loop), rewind it into a side file, rejoin and
// converge; equal tids with different contents are caught.

import { existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, renameSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { Primary, type PrimaryOptions } from '../../src/replication/primary.js';
import { Secondary, type SecondaryOptions } from '../../src/replication/secondary.js';
import { FailoverHistory } from '../../src/failover/history.js';
import { chainPathFor } from '../../src/failover/hashChain.js';
import { nodeDisk, type StorageDisk } from '../../src/storage/disk.js';
import { GenerationHistory } from '../../src/failover/generations.js';
import { askForkTid, rewindOpenStorage, rewindStorage } from '../../src/failover/rewind.js';
import type { Clock } from '../../src/ports/clock.js';
import type { Transport } from '../../src/ports/transport.js';
import { systemClock } from '../../src/node/clock.js';
import { PromotionRefusedError, type PromoteOptions } from '../../src/failover/promote.js';
import { tidFromTime, tidToSeconds } from '../../src/storage/timestamp.js';
import { readAuditLog } from '../../src/audit/auditLog.js';
import { formatAddress } from '../../src/replication/address.js';
import { requestStatus } from '../../src/replication/statusClient.js';
import { requestPromotion } from '../../src/replication/promoteClient.js';
import { firstValueFrom } from 'rxjs';
import { VirtualClock } from '../../src/sim/clock.js';
import { MAX_GENERATION_HISTORY } from '../../src/wire/native.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { FakeServer, FAST_RECONNECT, LogCollector } from '../replication/netHelpers.js';
import { createNativePackr, encodeNative } from '../../src/wire/native.js';
import { allTransactions, commitMany, diskFailingOnce, expectSameHistory, storageFileWith, waitForState, waitForTid, writeFullHistory, Z64 } from '../replication/helpers.js';

afterAll(cleanupTempDirs);

const hex = (b: Buffer): string => b.toString('hex');
/** A port nothing listens on (secondaries pointed there stop receiving). */
const NOWHERE = '127.0.0.1:1';

/** A primary without fsync or audit log, serving on a free port unless told otherwise. */
function openPrimary(path: string, extra: Partial<PrimaryOptions> = {}): Promise<Primary> {
  return Primary.open({ path, replicateTo: '127.0.0.1:0', fsync: false, auditPath: null, ...extra });
}

/** A secondary of `from` without fsync or audit log, reconnecting fast. */
function openSecondary(path: string, from: SecondaryOptions['replicateFrom'], extra: Partial<SecondaryOptions> = {}): Promise<Secondary> {
  return Secondary.open({ path, replicateFrom: from, fsync: false, reconnect: FAST_RECONNECT, auditPath: null, ...extra });
}

function generationsFile(path: string): { maxSeen: number; generations: Array<{ generation: number; startTid: string }> } {
  return JSON.parse(readFileSync(`${path}.generations`, 'utf8')) as never;
}

/** A primary in `dir` (p.fs) and a secondary of it (s.fs) that replicated two commits. */
async function replicatingPair(dir: string, pExtra: Partial<PrimaryOptions> = {}, sExtra: Partial<SecondaryOptions> = {}): Promise<{ primary: Primary; secondary: Secondary; sPath: string }> {
  const primary = await openPrimary(join(dir, 'p.fs'), pExtra);
  const sPath = join(dir, 's.fs');
  const secondary = await openSecondary(sPath, primary.address, sExtra);
  await waitForTid(secondary, (await commitMany(primary.storage, 2)).at(-1)!);
  return { primary, secondary, sPath };
}

/**
 * An old primary (a.fs) that committed 20 transactions its secondary b never
 * got, b promoted, and the old primary reopened as b's secondary, refused as
 * diverged; `shared` are the 3 transactions both hold.
 */
async function divergedOldPrimary(dir: string, bExtra: Partial<SecondaryOptions> = {}): Promise<{ a: Secondary; aPath: string; promoted: Primary; shared: Buffer[] }> {
  const aPath = join(dir, 'a.fs');
  const old = await openPrimary(aPath);
  const b = await openSecondary(join(dir, 'b.fs'), old.address, { replicateTo: '127.0.0.1:0', ...bExtra });
  const shared = await commitMany(old.storage, 3);
  await waitForTid(b, shared.at(-1)!);
  b.setReplicationAddress(NOWHERE);
  await commitMany(old.storage, 20); // lost with the old primary
  await old.close();
  const promoted = await b.promote();
  const a = await openSecondary(aPath, promoted.address);
  await waitForState(a, 'diverged');
  return { a, aPath, promoted, shared };
}

/** Run `body` on a fresh storage (no fsync) and its secondary's failover history, then close both. */
async function withSecondaryHistory(body: (storage: FileStorage, history: FailoverHistory) => Promise<void>): Promise<void> {
  const storage = await FileStorage.open(join(await tempDir(), 's.fs'), { create: true, fsync: false });
  const history = await FailoverHistory.open(storage, { role: 'secondary', fsync: false });
  try {
    await body(storage, history);
  } finally {
    await history.close();
    await storage.close();
  }
}

/** The promotion is refused with `message`, and the secondary goes on replicating from `primary`. */
async function expectRefusedStillReplicating(promoting: Promise<Primary>, message: RegExp, secondary: Secondary, primary: Primary): Promise<void> {
  await expect(promoting).rejects.toThrow(PromotionRefusedError);
  await expect(promoting).rejects.toThrow(message);
  await waitForTid(secondary, (await commitMany(primary.storage, 1)).at(-1)!);
}

describe('failover', () => {
  it('promotes, moves a secondary without resync, refuses the old primary, rewinds it and lets it rejoin', async () => {
    const dir = await tempDir();
    const pPath = join(dir, 'p.fs');
    const oldPrimary = await Primary.open({ path: pPath, replicateTo: '127.0.0.1:0', fsync: false });
    const s1Log = new LogCollector();
    const s1 = await Secondary.open({ path: join(dir, 's1.fs'), replicateFrom: oldPrimary.address, replicateTo: '127.0.0.1:0', fsync: false, reconnect: FAST_RECONNECT, log: s1Log.log });
    const s2 = await Secondary.open({ path: join(dir, 's2.fs'), replicateFrom: oldPrimary.address, fsync: false, reconnect: FAST_RECONNECT });
    const s3 = await Secondary.open({ path: join(dir, 's3.fs'), replicateFrom: s1.replicationAddress!, fsync: false, reconnect: FAST_RECONNECT });
    let newPrimary: Primary | null = null;
    const closers: Array<() => Promise<void>> = [() => s3.close(), () => s2.close()];
    try {
      const shared = await commitMany(oldPrimary.storage, 5);
      await Promise.all([waitForTid(s1, shared.at(-1)!), waitForTid(s2, shared.at(-1)!), waitForTid(s3, shared.at(-1)!)]);
      expect(oldPrimary.generation).toEqual({ generation: 0, startTid: Z64 });
      expect(s1.history!.generations.list).toEqual([{ generation: 0, startTid: Z64 }]);

      // Promotion is refused while the primary is alive and connected.
      await expect(s1.promote()).rejects.toBeInstanceOf(PromotionRefusedError);

      // The primary goes on alone (its secondaries are cut off), then dies.
      s1.setReplicationAddress(NOWHERE);
      s2.setReplicationAddress(NOWHERE);
      const lost = await commitMany(oldPrimary.storage, 2);
      await oldPrimary.close();

      const s3Statuses: string[] = [];
      const s3Watch = s3.status$.subscribe((st) => s3Statuses.push(st.kind));
      newPrimary = await s1.promote();
      expect(newPrimary.generation).toEqual({ generation: 1, startTid: shared.at(-1)! });
      expect(generationsFile(join(dir, 's1.fs')).generations).toEqual([
        { generation: 0, startTid: hex(Z64) },
        { generation: 1, startTid: hex(shared.at(-1)!) },
      ]);
      expect(s1Log.count((e) => e.message.includes('PROMOTED'))).toBe(1);
      const np = newPrimary;

      // s2 moves to the new primary: nothing old is sent again.
      const s2Applied: string[] = [];
      const sub = s2.applied$.subscribe((c) => s2Applied.push(hex(c.tid)));
      s2.setReplicationAddress(np.address);
      const fresh = await commitMany(np.storage, 3);
      await waitForTid(s2, fresh.at(-1)!);
      sub.unsubscribe();
      expect(s2Applied).toEqual(fresh.map(hex));
      expect(s2.history!.generations.list).toEqual(np.generations);
      // s3 was chained from s1 and keeps replicating from the promoted node, no restart,
      // and adopted the new generation from it without reconnecting.
      await waitForTid(s3, fresh.at(-1)!);
      s3Watch.unsubscribe();
      expect(s3.history!.generations.list).toEqual(np.generations);
      expect(generationsFile(join(dir, 's3.fs')).generations.map((g) => g.generation)).toEqual([0, 1]);
      // Connected all along: no status but the current one, replayed at subscription (any other would be a reconnect).
      expect(s3Statuses).toEqual(['connected']);
      await expectSameHistory(np.storage, s2.storage);
      await expectSameHistory(np.storage, s3.storage);

      // The old primary comes back as a secondary: refused as diverged, at the fork, once.
      const oldLog = new LogCollector();
      let old = await Secondary.open({ path: pPath, replicateFrom: np.address, fsync: false, reconnect: FAST_RECONNECT, log: oldLog.log });
      const statuses: string[] = [];
      old.status$.subscribe((st) => statuses.push(st.kind === 'diverged' ? `diverged: ${st.reason}` : st.kind));
      await waitForState(old, 'diverged');
      const loud = await oldLog.waitFor((e) => e.message.startsWith('DIVERGED'));
      expect(loud.fields?.forkTid).toBe(hex(shared.at(-1)!));
      const refusal = old.machine.getSnapshot().context.lastError as unknown as { kind: string; code: string; forkTid: Buffer };
      expect(refusal.code).toBe('diverged');
      expect(Buffer.from(refusal.forkTid).equals(shared.at(-1)!)).toBe(true);
      expect(statuses.some((s) => s.startsWith('diverged: ') && s.includes('; fork at tid '))).toBe(true);
      // The refusal said where the new primary stands: the status shows it.
      expect(old.status().upstream!.primaryLastTid).toEqual(np.storage.lastTransaction());
      expect(statuses.some((s) => s.startsWith('diverged: diverged'))).toBe(false);
      // No retry loop: while several commits replicate to s2 (each round trip
      // longer than a reconnect delay here), the old primary never leaves diverged.
      const left: string[] = [];
      const watch = old.machine.subscribe((snap) => {
        if (!snap.matches('diverged')) left.push(JSON.stringify(snap.value));
      });
      for (let i = 0; i < 5; i++) {
        const [tid] = await commitMany(np.storage, 1);
        await waitForTid(s2, tid!);
      }
      watch.unsubscribe();
      expect(left).toEqual([]);
      // Each status once, as it changed (a repeated 'diverged' started a second rewind in the online example).
      expect(statuses.filter((s) => s.startsWith('diverged'))).toHaveLength(1);
      expect(statuses.filter((s, i) => s === statuses[i - 1])).toEqual([]);
      expect(s1Log.count((e) => e.message.includes('refused secondary'))).toBe(1);
      expect(old.machine.getSnapshot().matches('diverged')).toBe(true);
      await old.close();

      // Rewind: the two lost transactions go to a side file, the rest stays.
      const result = await rewindStorage(pPath, { toCommonWith: np.address });
      expect(result.forkTid).toEqual(shared.at(-1)!);
      expect(result.cutTids).toEqual(lost);
      const side = await FileStorage.open(result.sidePath!, { readOnly: true });
      expect((await allTransactions(side)).map((t) => hex(t.tid))).toEqual(lost.map(hex));
      await side.close();

      // It rejoins and converges.
      old = await Secondary.open({ path: pPath, replicateFrom: np.address, fsync: false, reconnect: FAST_RECONNECT });
      closers.push(() => old.close());
      await waitForTid(old, fresh.at(-1)!);
      await expectSameHistory(np.storage, old.storage);
      expect(old.history!.generations.list).toEqual(np.generations);
      expect(old.history!.chain.head).toEqual(np.chainHead);
    } finally {
      for (const c of closers.reverse()) await c();
      await newPrimary?.close();
      await s1.close();
    }
  });

  it('a diverged secondary rewinds online, reconnects and converges; its own secondaries handshake again', async () => {
    const dir = await tempDir();
    const aPath = join(dir, 'a.fs');
    const oldPrimary = await Primary.open({ path: aPath, replicateTo: '127.0.0.1:0', fsync: false });
    const b = await Secondary.open({ path: join(dir, 'b.fs'), replicateFrom: oldPrimary.address, replicateTo: '127.0.0.1:0', fsync: false, reconnect: FAST_RECONNECT });
    let newPrimary: Primary | null = null;
    let a: Secondary | null = null;
    let c: Secondary | null = null;
    try {
      const shared = await commitMany(oldPrimary.storage, 3);
      await waitForTid(b, shared.at(-1)!);
      b.setReplicationAddress(NOWHERE);
      const lost = await commitMany(oldPrimary.storage, 2);
      await oldPrimary.close();
      newPrimary = await b.promote();
      const fresh = await commitMany(newPrimary.storage, 2);

      // The old primary returns as a secondary serving another one, which copies its lost commits.
      a = await Secondary.open({ path: aPath, replicateFrom: newPrimary.address, replicateTo: '127.0.0.1:0', fsync: false, reconnect: FAST_RECONNECT });
      await waitForState(a, 'diverged');
      expect(a.diverged).toMatchObject({ forkTid: shared.at(-1)!, localTid: lost.at(-1)!, remoteTid: fresh.at(-1)! });
      c = await Secondary.open({ path: join(dir, 'c.fs'), replicateFrom: a.replicationAddress!, fsync: false, reconnect: FAST_RECONNECT });
      await waitForTid(c, lost.at(-1)!);
      await expect(c.rewind()).rejects.toThrow(/^rewind\(\) needs a secondary its primary refused as diverged; this one is connected/);

      const r = await a.rewind();
      expect(r.forkTid).toEqual(shared.at(-1)!);
      expect(r.cutTids).toEqual(lost);
      const side = await FileStorage.open(r.sidePath!, { readOnly: true });
      expect((await allTransactions(side)).map((t) => hex(t.tid))).toEqual(lost.map(hex));
      await side.close();
      await waitForTid(a, fresh.at(-1)!);
      await expectSameHistory(newPrimary.storage, a.storage);
      await a.history!.chain.flush();
      expect(a.history!.chain.head).toEqual(newPrimary.chainHead);
      expect(a.history!.generations.list).toEqual(newPrimary.generations);
      expect(a.diverged).toBeNull();

      // Its secondary was cut off and, holding the lost commits, is now refused by it in turn; rewound, it converges too.
      await waitForState(c, 'diverged');
      // (Its primary's last tid is whatever it had re-applied when it refused.)
      expect(c.diverged).toMatchObject({ forkTid: shared.at(-1)!, localTid: lost.at(-1)! });
      expect(c.diverged!.remoteTid).not.toBeNull();
      expect((await c.rewind()).cutTids).toEqual(lost);
      await waitForTid(c, fresh.at(-1)!);
      await expectSameHistory(newPrimary.storage, c.storage);

      const records = (await readAuditLog(`${aPath}.audit`)).records.filter((x) => x.kind === 'rewind');
      expect(records.map((x) => x.details)).toEqual([
        {
          forkTid: hex(shared.at(-1)!),
          commonWith: formatAddress(newPrimary.address),
          transactionsCut: 2,
          blobsCut: 0,
          firstCutTid: hex(lost[0]!),
          lastCutTid: hex(lost[1]!),
          sidePath: r.sidePath,
          sideBlobDir: null,
          online: true,
        },
      ]);
    } finally {
      await c?.close();
      await a?.close();
      await newPrimary?.close();
      await b.close();
      await oldPrimary.close();
    }
  });

  it('catches equal tids with different contents, and accepts equal contents', async () => {
    const dir = await tempDir();
    const tid = tidFromTime(Date.now() - 60_000);
    const craft = async (path: string, value: string): Promise<FileStorage> => {
      const fs = await FileStorage.open(path, { create: true, fsync: false });
      const txn = { user: 'u', description: 'same tid' };
      await fs.tpcBegin(txn, { tid });
      fs.store(Buffer.alloc(8, 1), Z64, Buffer.from(value), txn);
      await fs.tpcVote(txn);
      await fs.tpcFinish(txn);
      return fs;
    };
    const primaryStorage = await craft(join(dir, 'p.fs'), 'A');
    const primary = await Primary.open({ path: join(dir, 'p.fs'), storage: primaryStorage, replicateTo: '127.0.0.1:0', fsync: false });
    const log = new LogCollector();
    try {
      await (await craft(join(dir, 'other.fs'), 'B')).close();
      await (await craft(join(dir, 'same.fs'), 'A')).close();
      const later = await commitMany(primary.storage, 2);

      const other = await Secondary.open({ path: join(dir, 'other.fs'), replicateFrom: primary.address, fsync: false, reconnect: FAST_RECONNECT, log: log.log });
      await waitForState(other, 'diverged');
      const e = await log.waitFor((l) => l.message.startsWith('DIVERGED'));
      expect(e.message).toContain('different contents');
      expect(e.fields?.forkTid).toBe(hex(Z64));
      await other.close();

      const same = await Secondary.open({ path: join(dir, 'same.fs'), replicateFrom: primary.address, fsync: false, reconnect: FAST_RECONNECT });
      await waitForTid(same, later.at(-1)!);
      await expectSameHistory(primary.storage, same.storage);
      await same.close();

      // Rewinding to the fork given as a tid: everything goes to the side file, then it converges.
      const r = await rewindStorage(join(dir, 'other.fs'), { toCommonWith: Z64 });
      expect(r.cutTids).toEqual([tid]);
      const rejoined = await Secondary.open({ path: join(dir, 'other.fs'), replicateFrom: primary.address, fsync: false, reconnect: FAST_RECONNECT });
      await waitForTid(rejoined, later.at(-1)!);
      await expectSameHistory(primary.storage, rejoined.storage);
      await rejoined.close();
    } finally {
      await primary.close();
    }
  });

  it('a secondary that copied a packed primary reconnects without a false divergence', async () => {
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false });
    try {
      const serials = new Map<string, Buffer>();
      await commitMany(primary.storage, 12, 3, serials);
      await primary.storage.pack(Date.now() / 1000 + 5);
      const packed = (await allTransactions(primary.storage)).filter((t) => t.status === 'p');
      expect(packed.length).toBeGreaterThan(0);
      let s = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: primary.address, fsync: false, reconnect: FAST_RECONNECT });
      await waitForTid(s, primary.storage.lastTransaction());
      await s.history!.chain.flush();
      // Packed transactions carry the primary's links: the replica's chain ends where the primary's does.
      expect(s.history!.chain.head).toEqual(primary.chainHead);
      await s.close();
      const more = await commitMany(primary.storage, 2, 3, serials);
      s = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: primary.address, fsync: false, reconnect: FAST_RECONNECT });
      await waitForTid(s, more.at(-1)!);
      expect(s.machine.getSnapshot().matches('diverged')).toBe(false);
      await s.close();
    } finally {
      await primary.close();
    }
  });

  it('a secondary whose hash chain lost a link its primary gave does not connect again, so it never acknowledges that transaction', async () => {
    const dir = await tempDir();
    const primary = await openPrimary(join(dir, 'p.fs'));
    const sPath = join(dir, 's.fs');
    // Every sync of the secondary's chain file fails (its data file syncs as usual).
    const chainFile = chainPathFor(sPath);
    const disk: StorageDisk = {
      ...nodeDisk,
      datasync: (fd) => (readlinkSync(`/proc/self/fd/${fd}`) === chainFile ? Promise.reject(Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' })) : nodeDisk.datasync(fd)),
    };
    const logs = new LogCollector();
    let secondary: Secondary | null = null;
    try {
      await commitMany(primary.storage, 12, 3);
      await primary.storage.pack(Date.now() / 1000 + 5);
      // Transactions after the packed ones: each reported applied would acknowledge those before it.
      await commitMany(primary.storage, 2, 3);
      const packed = (await allTransactions(primary.storage)).filter((t) => t.status === 'p');
      expect(packed.length).toBeGreaterThan(0);
      const first = packed[0]!.tid.toString('hex');
      secondary = await openSecondary(sPath, primary.address, { fsync: true, disk, log: logs.log });
      const failures: string[] = [];
      secondary.status$.subscribe((st) => st.kind === 'failed' && failures.push(st.reason));
      // It stops for good, saying why, instead of trying again.
      await waitForState(secondary, 'failed');
      expect(failures).toHaveLength(1);
      expect(failures[0]).toContain(`packed transaction ${first} is in the data file without the link its primary gave`);
      expect(failures[0]).toMatch(/EIO/);
      const connects = secondary.machine.getSnapshot().context.counters.connects;
      expect(logs.count((e) => e.level === 'error' && e.message.startsWith(`packed transaction ${first}`))).toBe(1);
      // Asked to connect again, it stops again before opening a connection.
      secondary.setReplicationAddress(primary.address);
      await waitForState(secondary, 'failed');
      expect(secondary.machine.getSnapshot().context.counters.connects).toBe(connects + 1);
      expect(logs.count((e) => e.level === 'error' && e.message.startsWith(`packed transaction ${first}`))).toBe(2);
      // Promoted, it would judge secondaries holding that link by a chain that may lack it.
      await expect(secondary.promote({ replicateTo: '127.0.0.1:0' })).rejects.toThrow(`refusing to promote unless forced: packed transaction ${first}`);
      // The data file holds it (committed before its link's write failed), but it was never reported applied (nor acknowledged).
      expect(Buffer.compare(secondary.storage.lastTransaction(), packed[0]!.tid)).toBeGreaterThanOrEqual(0);
      expect(Buffer.compare(secondary.machine.getSnapshot().context.lastAppliedTid, packed[0]!.tid)).toBeLessThan(0);
      expect(secondary.history!.chain.lostLink!.toString('hex')).toBe(first);
    } finally {
      await secondary?.close().catch(() => undefined);
      await primary.close();
    }
  });

  it('a promotion whose coordinator answers while the old primary comes back is refused before the secondary stops', async () => {
    const dir = await tempDir();
    // A Unix socket, so the old primary can come back at the same address (a TCP port let go could be taken by a test in parallel).
    let primary = await openPrimary(join(dir, 'p.fs'), { replicateTo: join(dir, 'p.sock') });
    const address = primary.address;
    const secondary = await openSecondary(join(dir, 's.fs'), address, { replicateTo: '127.0.0.1:0' });
    try {
      const first = await commitMany(primary.storage, 3);
      await waitForTid(secondary, first.at(-1)!);
      await primary.close();
      await waitForState(secondary, 'backoff');
      const claimed: number[] = [];
      const promoting = secondary.promote({
        claim: async (g) => {
          claimed.push(g.generation);
          // The old primary comes back (a flapping primary) and commits while the coordinator answers.
          primary = await openPrimary(join(dir, 'p.fs'), { replicateTo: address });
          await waitForTid(secondary, (await commitMany(primary.storage, 2)).at(-1)!);
          return true;
        },
      });
      await expect(promoting).rejects.toThrow(PromotionRefusedError);
      await expect(promoting).rejects.toThrow(/while its upstream answers/);
      expect(claimed).toEqual([1]);
      // Nothing was started, and the secondary still replicates.
      expect(generationsFile(join(dir, 's.fs')).generations.filter((g) => g.generation > 0)).toEqual([]);
      await waitForTid(secondary, (await commitMany(primary.storage, 1)).at(-1)!);
    } finally {
      await secondary.close();
      await primary.close();
    }
  });

  it('a promotion that would make the history longer than a handshake carries is refused before the secondary stops', async () => {
    const dir = await tempDir();
    writeFullHistory(join(dir, 'p.fs'));
    const { primary, secondary, sPath } = await replicatingPair(dir, {}, { replicateTo: '127.0.0.1:0' });
    try {
      expect(secondary.history!.generations.list).toHaveLength(MAX_GENERATION_HISTORY);
      await expectRefusedStillReplicating(secondary.promote({ force: true }), /the most a handshake carries/, secondary, primary);
      expect(generationsFile(sPath).generations).toHaveLength(MAX_GENERATION_HISTORY);
    } finally {
      await secondary.close();
      await primary.close();
    }
  });

  it('a full history counts only the generations a promotion keeps: one that starts past the last tid leaves room', async () => {
    await withSecondaryHistory(async (storage, history) => {
      const [last] = await commitMany(storage, 1);
      // 1,023 generations up to the last tid, and one adopted that starts after it (never reached here).
      const list = [...Array.from({ length: MAX_GENERATION_HISTORY - 1 }, (_, generation) => ({ generation, startTid: Buffer.alloc(8) })), { generation: 5000, startTid: Buffer.alloc(8, 0xff) }];
      await history.generations.replace(list);
      expect(history.generations.fullAt(last!)).toBeNull();
      expect((await history.startGeneration(last!)).generation).toBe(5001);
      // Now at the cap: the next is refused.
      expect(history.generations.fullAt(last!)).toMatch(/the most a handshake carries/);
    });
  });

  it('a promotion with an option the new primary would refuse is refused before the secondary stops', async () => {
    const { primary, secondary, sPath } = await replicatingPair(await tempDir());
    try {
      const bad: PromoteOptions[] = [{ force: true, replicateTo: 'no-port-here' }, { force: true, replicateTo: '127.0.0.1:0', syncReplicas: -1 }, { force: true, replicateTo: '127.0.0.1:0', syncTimeoutMs: 0 }];
      // Nothing is started, and the secondary still replicates after each.
      for (const options of bad) await expectRefusedStillReplicating(secondary.promote(options), /bad promote option/, secondary, primary);
      expect(generationsFile(sPath).generations.map((g) => g.generation)).toEqual([0]);
    } finally {
      await secondary.close();
      await primary.close();
    }
  });

  it('a promotion reaches every node down the chain, not only the promoted node\'s own secondaries', async () => {
    const dir = await tempDir();
    const p = await openPrimary(join(dir, 'p.fs'));
    const s1 = await openSecondary(join(dir, 's1.fs'), p.address, { replicateTo: '127.0.0.1:0' });
    const s2 = await openSecondary(join(dir, 's2.fs'), s1.replicationAddress!, { replicateTo: '127.0.0.1:0' });
    const s3 = await openSecondary(join(dir, 's3.fs'), s2.replicationAddress!);
    let promoted: Primary | null = null;
    try {
      await waitForTid(s3, (await commitMany(p.storage, 2)).at(-1)!);
      await p.close();
      await waitForState(s1, 'backoff');
      promoted = await s1.promote();
      await waitForTid(s3, (await commitMany(promoted.storage, 1)).at(-1)!);
      // Two hops down, it holds the new generation before the transaction after it.
      expect(s2.history!.generations.list).toEqual(promoted.generations);
      expect(s3.history!.generations.list).toEqual(promoted.generations);
    } finally {
      await s3.close();
      await s2.close();
      await promoted?.close();
      await s1.close();
    }
  });

  it('a node promoted, restarted as a secondary and promoted again with nothing written between is refused unless forced, as zrs promote FILE is', async () => {
    const dir = await tempDir();
    const path = join(dir, 's1.fs');
    const p = await openPrimary(join(dir, 'p.fs'));
    const s1 = await openSecondary(path, p.address, { replicateTo: '127.0.0.1:0', auditPath: undefined });
    let again: Secondary | null = null;
    let promoted: Primary | null = null;
    try {
      const [last] = await commitMany(p.storage, 2).then((t) => t.slice(-1));
      await waitForTid(s1, last!);
      await p.close();
      await waitForState(s1, 'backoff');
      promoted = await s1.promote();
      expect(promoted.generation.generation).toBe(1);
      await promoted.close();
      await s1.close();
      // Restarted with its old configuration (a secondary of the primary that is gone), then promoted again.
      again = await openSecondary(path, NOWHERE, { replicateTo: '127.0.0.1:0', auditPath: undefined });
      await expect(again.promote()).rejects.toThrow(/refusing to promote: generation 1 already starts after its last transaction .*, and its audit log says this node started it/);
      expect(generationsFile(path).generations.map((g) => g.generation)).toEqual([0, 1]);
      promoted = await again.promote({ force: true });
      expect(promoted.generation).toEqual({ generation: 2, startTid: last });
    } finally {
      await promoted?.close();
      await again?.close();
      await s1.close();
    }
  });

  it('a generation a secondary adopts from a welcome (moved to the promoted node) reaches its own secondaries too', async () => {
    const dir = await tempDir();
    const p = await openPrimary(join(dir, 'p.fs'));
    const s0 = await openSecondary(join(dir, 's0.fs'), p.address, { replicateTo: '127.0.0.1:0' });
    const s1 = await openSecondary(join(dir, 's1.fs'), p.address, { replicateTo: '127.0.0.1:0' });
    const s2 = await openSecondary(join(dir, 's2.fs'), s1.replicationAddress!);
    let promoted: Primary | null = null;
    try {
      const [shared] = await commitMany(p.storage, 1);
      await Promise.all([waitForTid(s0, shared!), waitForTid(s2, shared!)]);
      await p.close();
      await waitForState(s0, 'backoff');
      promoted = await s0.promote();
      s1.setReplicationAddress(promoted.address); // s1 learns generation 1 from its welcome, s2 stays connected to s1
      await waitForTid(s2, (await commitMany(promoted.storage, 1)).at(-1)!);
      expect(s1.history!.generations.list).toEqual(promoted.generations);
      expect(s2.history!.generations.list).toEqual(promoted.generations);
    } finally {
      await s2.close();
      await s1.close();
      await promoted?.close();
      await s0.close();
    }
  });

  it('a node forced to promotion right after its primary refused it as diverged starts a generation past that primary\'s', async () => {
    const { a, promoted } = await divergedOldPrimary(await tempDir());
    try {
      // No wait: the refusal's generation is being recorded as seen while this starts.
      const again = await a.promote({ force: true, replicateTo: '127.0.0.1:0' });
      expect(promoted.generation.generation).toBe(1);
      expect(again.generation.generation).toBe(2);
      await again.close();
    } finally {
      await a.close();
      await promoted.close();
    }
  });

  it('close() during a claim that never answers gives the claim up: the promotion is refused, the claim told by its signal, and the close ends', async () => {
    const { primary, secondary, sPath } = await replicatingPair(await tempDir());
    await primary.close();
    await waitForState(secondary, 'backoff');
    let signal: AbortSignal | null = null;
    const promoting = secondary.promote({
      replicateTo: '127.0.0.1:0',
      claim: (_g, context) => {
        signal = context.signal;
        return new Promise<boolean>(() => undefined); // a coordinator that hangs
      },
    });
    const refused = promoting.catch((e: unknown) => e);
    await secondary.close();
    expect(await refused).toMatchObject({ name: 'PromotionRefusedError', message: expect.stringContaining('closed while the coordinator answered') });
    expect(signal!.aborted).toBe(true);
    // Nothing holds the file: the secondary closed, nothing was promoted.
    const again = await FileStorage.open(sPath);
    expect(again.transactionCount).toBe(2);
    await again.close();
  });

  it('close() during a promotion waits for it and closes the primary it opened', async () => {
    const { primary, secondary, sPath } = await replicatingPair(await tempDir());
    try {
      await primary.close();
      await waitForState(secondary, 'backoff');
      const promoting = secondary.promote({ replicateTo: '127.0.0.1:0' });
      const closing = secondary.close();
      // Every close() during the promotion is the same one (a second must not close the storage under the first).
      expect(secondary.close()).toBe(closing);
      await closing;
      const promoted = await promoting;
      // Closed by then: nothing holds the file, nothing listens.
      const again = await FileStorage.open(sPath);
      expect(again.transactionCount).toBe(2);
      await again.close();
      await expect(requestStatus(promoted.address)).rejects.toThrow();
      // A close() after the promotion closes the primary it became (here already closed).
      await secondary.close();
    } finally {
      await secondary.close();
    }
  });

  it('a secondary of a hung primary (it takes connections and never answers) shows the handshake timeout while it tries again, and is promoted without force', async () => {
    const dir = await tempDir();
    const clock = new VirtualClock();
    // Reads the handshake, answers nothing: a stopped process whose kernel still accepts.
    const hung = await FakeServer.start();
    const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: hung.address, replicateTo: '127.0.0.1:0', fsync: false, clock, reconnect: { initialMs: 1_000, maxMs: 1_000, jitter: 0 } });
    try {
      await hung.connection(0);
      await waitForState(secondary, 'connected');
      clock.advance(30_000); // the handshake timeout
      await waitForState(secondary, 'backoff');
      clock.advance(1_000);
      await hung.connection(1);
      await waitForState(secondary, 'connected');
      expect(secondary.status().upstream).toMatchObject({ state: 'connected.handshaking', lastError: expect.stringMatching(/handshake/) });
      const promoted = await secondary.promote();
      expect(promoted.generation.generation).toBe(1);
    } finally {
      await secondary.close();
      await hung.close();
    }
  });

  it('promoted by a request over the network: promoted$ gives the Primary to a later subscriber, applied$ ends, and close() closes the Primary', async () => {
    const { primary, secondary, sPath } = await replicatingPair(await tempDir(), {}, { replicateTo: '127.0.0.1:0' });
    try {
      const applied: Buffer[] = [];
      let appliedEnded = false;
      secondary.applied$.subscribe({ next: (t) => applied.push(t.tid), complete: () => (appliedEnded = true) });
      await primary.close();
      await waitForState(secondary, 'backoff');
      const reply = await requestPromotion(secondary.replicationAddress!);
      expect(reply.generation.generation).toBe(1);
      // Subscribed only now: the promotion happened before.
      const promoted = await firstValueFrom(secondary.promoted$);
      expect(promoted.generation.generation).toBe(1);
      expect(secondary.status()).toMatchObject({ role: 'primary', generation: { generation: 1 } });
      expect(appliedEnded).toBe(true);
      await commitMany(promoted.storage, 1);
      expect(applied).toEqual([]);
      await secondary.close();
      // Closed: nothing holds the file.
      const again = await FileStorage.open(sPath);
      expect(again.transactionCount).toBe(3);
      await again.close();
    } finally {
      await secondary.close();
    }
  });

  it('a promotion whose secondary moved on while the coordinator answered is refused before the secondary stops (forced)', async () => {
    const dir = await tempDir();
    const primary = await openPrimary(join(dir, 'p.fs'));
    const secondary = await openSecondary(join(dir, 's.fs'), primary.address, { replicateTo: '127.0.0.1:0' });
    try {
      await waitForTid(secondary, (await commitMany(primary.storage, 2)).at(-1)!);
      const promoting = secondary.promote({
        force: true,
        claim: async () => {
          await waitForTid(secondary, (await commitMany(primary.storage, 1)).at(-1)!);
          return true;
        },
      });
      await expect(promoting).rejects.toThrow(/moved on while the coordinator answered/);
      await waitForTid(secondary, (await commitMany(primary.storage, 1)).at(-1)!);
    } finally {
      await secondary.close();
      await primary.close();
    }
  });

  it("a primary whose hash chain stopped on a write error does not take a healthy secondary past the chain's head for diverged", async () => {
    const dir = await tempDir();
    // The primary's data file syncs in its own thread (datasyncSync); its chain file syncs through datasync.
    const { disk, failNext, armed } = diskFailingOnce();
    const storage = await FileStorage.open(join(dir, 'p.fs'), { create: true, disk });
    const logs = new LogCollector();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), storage, replicateTo: '127.0.0.1:0', auditPath: null, log: logs.log });
    const secondary = await openSecondary(join(dir, 's.fs'), primary.address);
    try {
      failNext();
      // More than a batch of chain entries: the batch's write is synced, and that sync fails.
      await waitForTid(secondary, (await commitMany(primary.storage, 600)).at(-1)!);
      expect(armed()).toBe(false);
      const more = await commitMany(primary.storage, 2);
      expect(Buffer.compare(primary.chainHead!.tid, more[0]!)).toBeLessThan(0);
      await waitForTid(secondary, more.at(-1)!);
      // The secondary reconnects with a last tid past the chain's head: it is served, not refused.
      secondary.setReplicationAddress(primary.address);
      await logs.waitFor((e) => e.message.includes('the hash chain stopped at tid'));
      await waitForTid(secondary, (await commitMany(primary.storage, 1)).at(-1)!);
      expect(secondary.diverged).toBeNull();
    } finally {
      await secondary.close();
      await primary.close().catch((err: Error) => expect(err.message).toMatch(/writing the hash chain failed/));
    }
  });

  it('a diverged secondary pointed at another upstream forgets that divergence (it belonged to the old one)', async () => {
    const { a, promoted } = await divergedOldPrimary(await tempDir());
    try {
      expect(a.diverged).not.toBeNull();
      a.setReplicationAddress(NOWHERE);
      expect(a.diverged).toBeNull();
    } finally {
      await a.close();
      await promoted.close();
    }
  });

  it('a rewind refuses to run beside a promotion or another rewind, and a promotion beside a rewind', async () => {
    const { a, promoted } = await divergedOldPrimary(await tempDir());
    try {
      const rewinding = a.rewind();
      await expect(a.promote({ force: true, replicateTo: '127.0.0.1:0' })).rejects.toThrow(/refusing to promote during a rewind/);
      await expect(a.rewind()).rejects.toThrow(/rewind\(\) refused during a rewind/);
      const result = await rewinding;
      expect(result.cutTids).toHaveLength(20);
      await waitForTid(a, (await commitMany(promoted.storage, 1)).at(-1)!);
    } finally {
      await a.close();
      await promoted.close();
    }
  });

  it('a pack is refused during a rewind, and a rewind waits for a pack under way', async () => {
    const { a, promoted } = await divergedOldPrimary(await tempDir());
    try {
      const rewinding = a.rewind();
      await expect(a.pack(Date.now() / 1000)).rejects.toThrow('pack() refused during a rewind');
      expect((await rewinding).cutTids).toHaveLength(20);
      await waitForTid(a, (await commitMany(promoted.storage, 1)).at(-1)!);
    } finally {
      await a.close();
      await promoted.close();
    }
    const second = await divergedOldPrimary(await tempDir());
    try {
      const order: string[] = [];
      // Packed to just after the last shared transaction (the lost ones came later, after a round trip).
      const packing = second.a.pack(tidToSeconds(second.shared.at(-1)!) + 1e-5).then((r) => order.push(`packed ${r.packed}`));
      const result = await second.a.rewind();
      order.push('rewound');
      await packing;
      expect(order).toEqual(['packed true', 'rewound']);
      expect(result.cutTids).toHaveLength(20);
      // Cut from the packed file: what it holds ends at the last shared transaction.
      expect(second.a.storage.lastTransaction()).toEqual(second.shared.at(-1));
      await waitForTid(second.a, (await commitMany(second.promoted.storage, 1)).at(-1)!);
      expect(second.a.diverged).toBeNull();
    } finally {
      await second.a.close();
      await second.promoted.close();
    }
  });

  it('a rewind whose data file a pack replaced after it saved the cut part cuts nothing, removes what it saved, and can run again', async () => {
    const { a, aPath, promoted, shared } = await divergedOldPrimary(await tempDir());
    await a.close();
    await promoted.close();
    const storage = await FileStorage.open(aPath, { fsync: false });
    const history = await FailoverHistory.open(storage, { role: 'secondary', fsync: false });
    try {
      const lost = (await allTransactions(storage)).slice(shared.length).map((t) => t.tid);
      expect(lost).toHaveLength(20);
      // The rewind's first wait for the commit lock, after it saved the cut part, lets a whole pack run first.
      const take = storage.acquireCommitLock.bind(storage);
      storage.acquireCommitLock = async () => {
        storage.acquireCommitLock = take;
        expect((await storage.pack(tidToSeconds(shared.at(-1)!) + 1e-5)).packed).toBe(true);
        return take();
      };
      const side = `${aPath}.rewound-${shared.at(-1)!.toString('hex')}`;
      await expect(rewindOpenStorage(storage, shared.at(-1)!, { history, withBlobs: false })).rejects.toThrow(
        `${aPath}: the data file was replaced (packed) while the rewind saved what it cuts; nothing was cut: rewind again`,
      );
      expect(existsSync(side)).toBe(false);
      // Nothing cut: the lost transactions are all still there, after the packed ones.
      const held = (await allTransactions(storage)).map((t) => t.tid.toString('hex'));
      expect(held.slice(-20)).toEqual(lost.map((t) => t.toString('hex')));
      const again = await rewindOpenStorage(storage, shared.at(-1)!, { history, withBlobs: false });
      expect(again.cutTids).toHaveLength(20);
      expect(storage.lastTransaction()).toEqual(shared.at(-1));
      expect(existsSync(side)).toBe(true);
    } finally {
      await history.close();
      await storage.close();
    }
  });

  it('an online rewind is refused when the diverged refusal names no fork tid (it would cut everything)', async () => {
    const dir = await tempDir();
    const sPath = join(dir, 's.fs');
    await storageFileWith(sPath, 3);
    const before = readFileSync(sPath);
    const fake = await FakeServer.start((c) => {
      void c.frame(1).then(() => {
        c.send(encodeNative({ type: 'refuse', code: 'diverged', message: 'your history is not mine' }, createNativePackr()));
      }, () => undefined);
    });
    const s = await openSecondary(sPath, fake.address, { reconnect: { initialMs: 60_000, maxMs: 60_000 } });
    try {
      await waitForState(s, 'diverged');
      await expect(s.rewind()).rejects.toThrow(/named no fork tid/);
      expect(readdirSync(dir).filter((f) => f.includes('.rewound-'))).toEqual([]);
    } finally {
      await s.close();
      await fake.close();
    }
    expect(readFileSync(sPath).subarray(0, before.length).equals(before)).toBe(true);
  });

  it('close() during an online rewind waits for it: the rewind has ended and the files agree when close() resolves', async () => {
    const { a, aPath, promoted, shared } = await divergedOldPrimary(await tempDir());
    try {
      let outcome: string | null = null;
      const rewinding = a.rewind().then(
        (r) => (outcome = `cut ${r.cutTids.length}`),
        (err: Error) => (outcome = err.message),
      );
      await a.close();
      expect(outcome).toBe('cut 20');
      await rewinding;
      // Reopened, the storage, its chain and its generations all end at the fork.
      const fs = await FileStorage.open(aPath);
      const history = await FailoverHistory.open(fs, { role: 'secondary', fsync: false });
      try {
        expect(fs.lastTransaction()).toEqual(shared.at(-1));
        expect(history.chain.head?.tid).toEqual(shared.at(-1));
      } finally {
        await history.close();
        await fs.close();
      }
    } finally {
      await a.close();
      await promoted.close();
    }
  });

  it('a rewind and a new address at once: the next connection starts from the cut, and replication goes on', async () => {
    // b's clock runs an hour behind a's (skew between hosts): what b commits once promoted has tids below a's cut ones.
    const behind: Clock = { ...systemClock, now: () => systemClock.now() - 3_600_000 };
    const { a, promoted } = await divergedOldPrimary(await tempDir(), { clock: behind });
    try {
      const fresh = await commitMany(promoted.storage, 2);
      const rewinding = a.rewind();
      a.setReplicationAddress(promoted.address);
      await rewinding;
      await waitForTid(a, fresh.at(-1)!);
      await waitForTid(a, (await commitMany(promoted.storage, 1))[0]!);
      await expectSameHistory(promoted.storage, a.storage);
    } finally {
      await a.close();
      await promoted.close();
    }
  });

  it('a promotion that fails after the secondary stopped replicating (the new primary cannot listen) releases the storage', async () => {
    const dir = await tempDir();
    const primary = await openPrimary(join(dir, 'p.fs'));
    const sPath = join(dir, 's.fs');
    const secondary = await openSecondary(sPath, primary.address, { auditPath: undefined });
    const busy = createServer();
    await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
    try {
      await waitForTid(secondary, (await commitMany(primary.storage, 3)).at(-1)!);
      await primary.close();
      await waitForState(secondary, 'backoff');
      const port = (busy.address() as AddressInfo).port;
      await expect(secondary.promote({ replicateTo: `127.0.0.1:${port}` })).rejects.toThrow(/EADDRINUSE/);
      await secondary.close();
      // Nothing holds the file: it opens again (the lock was released).
      const again = await FileStorage.open(sPath);
      expect(again.transactionCount).toBe(3);
      await again.close();
      // The audit log, closed by the detach, still gets the failure.
      const refused = (await readAuditLog(`${sPath}.audit`)).records.filter((r) => r.kind === 'promotion-refused');
      expect(refused).toHaveLength(1);
      expect(refused[0]!.details).toMatchObject({ code: 'failed', afterDetach: true, reason: expect.stringMatching(/EADDRINUSE/) });
      // The new generation starts only once the promotion is recorded, after listening: none was started.
      expect(refused[0]!.generation).toMatchObject({ generation: 0 });
      const generations = await GenerationHistory.open(sPath);
      expect(generations.list.map((g) => g.generation)).toEqual([0]);
    } finally {
      await secondary.close();
      await new Promise<void>((resolve) => busy.close(() => resolve()));
    }
  });

  it('promote() again after a promotion writes nothing into the log the new primary now holds (a second writer would write over its records)', async () => {
    const { primary, secondary, sPath } = await replicatingPair(await tempDir(), {}, { auditPath: undefined, replicateTo: '127.0.0.1:0' });
    await primary.close();
    const promoted = await secondary.promote();
    try {
      await expect(secondary.promote()).rejects.toThrow(`the secondary is closed: it was promoted, and the Primary that promote() returned (promoted$) serves its storage now, at ${formatAddress(promoted.address)}`);
      expect(() => secondary.setReplicationAddress(promoted.address)).toThrow(/^the secondary is closed: it was promoted/);
      // The new primary's next record follows its own, intact.
      await commitMany(promoted.storage, 1);
    } finally {
      await promoted.close();
    }
    const log = await readAuditLog(`${sPath}.audit`);
    expect(log.damages).toEqual([]);
    expect(log.records.map((r) => r.seq)).toEqual(log.records.map((_, i) => i + 1));
    expect(log.records.at(-1)).toMatchObject({ kind: 'config', details: { change: 'close', role: 'primary' } });
    expect(log.records.filter((r) => r.kind === 'promotion-refused')).toEqual([]);
  });

  it('a promote() refused beside a promotion under way leaves that promotion its audit log (records its refusal, closes nothing)', async () => {
    const { primary, secondary, sPath } = await replicatingPair(await tempDir(), {}, { auditPath: undefined, replicateTo: '127.0.0.1:0' });
    await primary.close();
    let answer!: (yes: boolean) => void;
    let asked!: () => void;
    const claimAsked = new Promise<void>((resolve) => (asked = resolve));
    const first = secondary.promote({
      claim: () => {
        asked();
        return new Promise<boolean>((resolve) => (answer = resolve));
      },
    });
    await claimAsked;
    const second = secondary.promote();
    // The coordinator answers while the second call records its refusal: the first goes on to detach meanwhile.
    answer(true);
    await expect(second).rejects.toThrow(/refusing to promote during a promotion/);
    const promoted = await first;
    await promoted.close();
    const kinds = (await readAuditLog(`${sPath}.audit`)).records.map((r) => (r.kind === 'config' ? `config ${(r.details as { change: string }).change}` : r.kind));
    expect(kinds).toContain('promotion-refused');
    // The secondary's log ends as a detach, the new primary's records follow it.
    expect(kinds.slice(kinds.indexOf('config detach'))).toEqual(['config detach', 'promotion', 'config open', 'config close']);
  });

  it('a promotion whose generation cannot be started after its record fails, and what is recorded after carries the generation the node is in', async () => {
    const { primary, secondary, sPath } = await replicatingPair(await tempDir(), {}, { auditPath: undefined, replicateTo: '127.0.0.1:0' });
    await primary.close();
    await waitForState(secondary, 'backoff');
    // Writing the generations file fails (its temp path is taken by a directory).
    mkdirSync(`${sPath}.generations.tmp`);
    await expect(secondary.promote()).rejects.toThrow();
    await secondary.close();
    const records = (await readAuditLog(`${sPath}.audit`)).records;
    const at = records.findIndex((r) => r.kind === 'promotion');
    expect(records[at]!.generation).toMatchObject({ generation: 1 });
    // What follows the decision: the refusal, in generation 0 still, and nothing between (no record of a
    // primary opened, which it never was): readers take the promotion back by the record right after it.
    const after = records.slice(at + 1);
    expect(after.map((r) => r.kind)).toEqual(['promotion-refused']);
    expect(after[0]!.details).toMatchObject({ afterDetach: true });
    expect(after.map((r) => (r.generation as { generation: number } | null)?.generation)).toEqual([0]);
    expect((await GenerationHistory.open(sPath)).list.map((g) => g.generation)).toEqual([0]);
  });

  it('a promotion its audit log cannot record does not start a new generation (recorded first, as every decision)', async () => {
    const { primary, secondary, sPath } = await replicatingPair(await tempDir(), {}, { auditPath: undefined });
    try {
      await primary.close();
      await waitForState(secondary, 'backoff');
      // The log's name now leads to a directory: the new primary cannot open it to record the promotion.
      renameSync(`${sPath}.audit`, `${sPath}.audit.moved`);
      mkdirSync(`${sPath}.audit`);
      await expect(secondary.promote({ replicateTo: '127.0.0.1:0' })).rejects.toThrow();
      const generations = await GenerationHistory.open(sPath);
      expect(generations.list.map((g) => g.generation)).toEqual([0]);
    } finally {
      await secondary.close();
    }
  });

  it('a promotion that fails while detaching, before the audit log was closed, records the failure in that log and closes it', async () => {
    const dir = await tempDir();
    const primary = await openPrimary(join(dir, 'p.fs'));
    const sPath = join(dir, 's.fs');
    const secondary = await openSecondary(sPath, primary.address, { auditPath: undefined, replicateTo: '127.0.0.1:0' });
    try {
      await waitForTid(secondary, (await commitMany(primary.storage, 2)).at(-1)!);
      await primary.close();
      await waitForState(secondary, 'backoff');
      // The metrics edges fail to close: the detach stops before it closes the audit log.
      const edges = (secondary as unknown as { edges: { close(): Promise<void> } }).edges;
      const closeEdges = edges.close.bind(edges);
      edges.close = async () => {
        await closeEdges();
        throw new Error('edges would not close');
      };
      await expect(secondary.promote()).rejects.toThrow(/edges would not close/);
      await secondary.close();
      const records = (await readAuditLog(`${sPath}.audit`)).records;
      const refused = records.filter((r) => r.kind === 'promotion-refused');
      expect(refused).toHaveLength(1);
      expect(refused[0]!.details).toMatchObject({ code: 'failed', afterDetach: true, reason: 'edges would not close' });
      // One writer: sequence numbers follow each other, and the log was closed (its last record is the close).
      expect(records.map((r) => r.seq)).toEqual(records.map((_, i) => records[0]!.seq + i));
      expect(records.at(-1)).toMatchObject({ kind: 'config', details: { change: 'close' } });
    } finally {
      await secondary.close();
    }
  });

  it('promote() on a closed secondary writes nothing to the audit log a new node on the same file now holds', async () => {
    const dir = await tempDir();
    const sPath = join(dir, 's.fs');
    const closed = await openSecondary(sPath, NOWHERE, { auditPath: undefined, replicateTo: '127.0.0.1:0' });
    await closed.close();
    const live = await openSecondary(sPath, NOWHERE, { auditPath: undefined });
    try {
      await expect(closed.promote()).rejects.toThrow('the secondary is closed');
      // Not a missing option: being closed is the reason, whatever else a promotion would need.
      const closedWithoutServer = await openSecondary(join(dir, 'other.fs'), NOWHERE, { auditPath: null });
      await closedWithoutServer.close();
      await expect(closedWithoutServer.promote()).rejects.toThrow('the secondary is closed');
    } finally {
      await live.close();
    }
    const records = (await readAuditLog(`${sPath}.audit`)).records;
    expect(records.filter((r) => r.kind === 'promotion-refused')).toEqual([]);
    expect(records.map((r) => r.seq)).toEqual(records.map((_, i) => records[0]!.seq + i));
  });

  it('a generation history too long for a hello fails each connect with a logged error, not an uncaught one', async () => {
    const dir = await tempDir();
    const primary = await openPrimary(join(dir, 'p.fs'));
    const sPath = join(dir, 's.fs');
    const generations = Array.from({ length: 1025 }, (_, i) => ({ generation: i, startTid: '0000000000000000' }));
    writeFileSync(`${sPath}.generations`, JSON.stringify({ version: 1, maxSeen: 1024, generations }));
    const log = new LogCollector();
    const secondary = await openSecondary(sPath, primary.address, { log: log.log });
    try {
      // Each attempt fails the same way and is retried after the backoff.
      const failed = await log.waitForCount((e) => e.level === 'error' && e.message.startsWith('cannot send a handshake'), 2);
      expect(failed[0]!.message).toMatch(/hello\.generations has more than 1024 entries/);
      expect(secondary.status().upstream?.state).toMatch(/^(backoff|connecting)/);
    } finally {
      await secondary.close();
      await primary.close();
    }
  });

  it("a secondary takes its primary's history as the welcome gives it, also when shorter: a generation it adopted from another primary goes", async () => {
    await withSecondaryHistory(async (_storage, history) => {
      const g0 = { generation: 0, startTid: Buffer.alloc(8) };
      // Adopted from a primary that was promoted (generation 1 from tid 50), never reached here.
      await history.adopt({ generation: { generation: 1, startTid: Buffer.from('0000000000000050', 'hex') }, generations: [g0, { generation: 1, startTid: Buffer.from('0000000000000050', 'hex') }] });
      expect(history.generations.list.map((g) => g.generation)).toEqual([0, 1]);
      // Moved to a primary of generation 0 only: keeping generation 1 would judge this node diverged once past tid 50.
      await history.adopt({ generation: g0, generations: [g0] });
      expect(history.generations.list.map((g) => g.generation)).toEqual([0]);
    });
  });

  it('a secondary refuses to adopt a generation that would make its history too long for a hello', async () => {
    await withSecondaryHistory(async (_storage, history) => {
      const list = Array.from({ length: 1024 }, (_, i) => ({ generation: i, startTid: Buffer.alloc(8) }));
      await history.adopt({ generation: list[1023]!, generations: list });
      // A heartbeat announcing one more generation.
      await expect(history.adopt({ generation: { generation: 1024, startTid: Buffer.alloc(8) } })).rejects.toThrow(/longer than 1024 generations/);
      expect(history.generations.list).toHaveLength(1024);
    });
  });
});

describe('a rewind and the audit log', () => {
  it('records the rewind in the generation it keeps, not in one it drops', async () => {
    const path = join(await tempDir(), 'Data.fs');
    const tids = await storageFileWith(path, 5);
    const generations = await GenerationHistory.open(path);
    await generations.replace([{ generation: 0, startTid: Buffer.from(Z64) }, { generation: 1, startTid: tids[3]! }]);
    await generations.idle();
    await rewindStorage(path, { toCommonWith: tids[1]! });
    const record = (await readAuditLog(`${path}.audit`)).records.find((r) => r.kind === 'rewind')!;
    expect(record.generation).toMatchObject({ generation: 0 });
  });
});

describe('asking a primary for the fork tid', () => {
  it('gives up reaching it within the timeout, and abandons the attempt', async () => {
    const path = join(await tempDir(), 'Data.fs');
    await storageFileWith(path, 1);
    const storage = await FileStorage.open(path);
    let abandoned = false;
    // A connect the network never completes: only the caller's signal ends it.
    const transport: Transport = {
      connect: (_address, signal) =>
        new Promise((_resolve, reject) =>
          signal?.addEventListener('abort', () => {
            abandoned = true;
            reject(new Error('connect aborted'));
          }),
        ),
      listen: () => Promise.reject(new Error('not used')),
    };
    try {
      await expect(askForkTid(storage, { kind: 'tcp', host: '127.0.0.1', port: 1 }, { transport, timeoutMs: 50 })).rejects.toThrow("can't connect to 127.0.0.1:1 within 50 ms");
      expect(abandoned).toBe(true);
      // Refused: said with what it was for.
      await expect(askForkTid(storage, { kind: 'tcp', host: '127.0.0.1', port: 1 }, {})).rejects.toThrow("can't connect to 127.0.0.1:1 to find the last common tid: connect ECONNREFUSED 127.0.0.1:1");
      // A node that takes the question and closes without a word (zc.zrs, or TLS on the port): said what it may be.
      const silent = await FakeServer.start((c) => void c.frame(1).then(() => c.destroy(), () => undefined));
      try {
        await expect(askForkTid(storage, silent.address, {})).rejects.toThrow(/the primary closed the connection without a verdict.* \(a zc\.zrs node, or a port with <ssl> asked without TLS: --ssl-certificate on the command line, a tlsTransport in the library\)$/);
      } finally {
        await silent.close();
      }
      // A refusal for another reason than divergence is no answer to the question: an error naming it, not "nothing to cut".
      const refusing = await FakeServer.start((c) => void c.frame(1).then(() => c.send(encodeNative({ type: 'refuse', code: 'loop', message: 'it replicates from you' }, createNativePackr())), () => undefined));
      try {
        await expect(askForkTid(storage, refusing.address, {})).rejects.toThrow('the primary refused (loop): it replicates from you');
      } finally {
        await refusing.close();
      }
    } finally {
      await storage.close();
    }
  });

  it('takes only a verdict for an answer: silence, another kind of server, another message or bytes that are no message are errors', async () => {
    const path = join(await tempDir(), 'Data.fs');
    await storageFileWith(path, 1);
    const storage = await FileStorage.open(path);
    const packr = createNativePackr();
    /** What askForkTid makes of a node that answers the question (the protocol name, then the hello) by `answer`. */
    const askedOf = async (answer: (c: { send(p: Uint8Array): void; sendRaw(b: Uint8Array): void }) => void, clock?: VirtualClock): Promise<string> => {
      const server = await FakeServer.start((c) => void c.frame(1).then(() => answer(c), () => undefined));
      try {
        const asking = askForkTid(storage, server.address, { timeoutMs: 1000, ...(clock ? { clock } : {}) }).then((tid) => `answered ${tid === null ? 'null' : tid.toString('hex')}`, (e: Error) => e.message);
        if (clock) {
          // The question is out (the timer is set before it is written): a second passes with no answer.
          await (await server.connection(0)).frame(1);
          clock.advance(1000);
        }
        return await asking;
      } finally {
        await server.close();
      }
    };
    try {
      expect(await askedOf(() => undefined, new VirtualClock(0))).toMatch(/^no answer from 127\.0\.0\.1:\d+ within 1000 ms$/);
      expect(await askedOf((c) => c.sendRaw(Buffer.from('HTTP/1.1 400 Bad Request\r\n\r\n')))).toMatch(/is a web server \(it answered in HTTP: a metrics address\?\), not a ZRS node$/);
      expect(await askedOf((c) => c.send(encodeNative({ type: 'heartbeat', lastTid: Z64, clockMs: 0 }, packr)))).toBe('unexpected heartbeat from the primary');
      expect(await askedOf((c) => c.send(Buffer.from([0xc1])))).toMatch(/^msgpack reserved byte 0xc1 at byte 0/);
      // A keep-alive before the verdict is passed over: the welcome says the histories agree, nothing to cut.
      const welcome = encodeNative({ type: 'welcome', lastTid: Z64, generation: { generation: 0, startTid: Z64 }, options: { blobs: false, compression: 'none' } }, packr);
      expect(await askedOf((c) => (c.send(Buffer.alloc(0)), c.send(welcome)))).toBe('answered null');
    } finally {
      await storage.close();
    }
  });
});
