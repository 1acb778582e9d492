// `zrs promote` and `zrs rewind` in-process: a new generation on a stopped
// storage; a rewind to a given tid with the cut part in a dumpable side file.

import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { createConnection, createServer, type AddressInfo, type Socket } from 'node:net';
import { join } from 'node:path';
import { firstValueFrom } from 'rxjs';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { AuditLog, readAuditLog, type AuditRecord } from '../../src/audit/auditLog.js';
import { systemClock } from '../../src/node/clock.js';
import { auditedDecisions } from '../../src/sim/cluster.js';
import { runCli } from '../../src/cli/cli.js';
import type { ReplicationAddress } from '../../src/ports/transport.js';
import { formatAddress } from '../../src/replication/address.js';
import { Primary } from '../../src/replication/primary.js';
import { Secondary } from '../../src/replication/secondary.js';
import { requestStatus } from '../../src/replication/statusClient.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { GenerationHistory } from '../../src/failover/generations.js';
import { MAX_GENERATION_HISTORY } from '../../src/wire/native.js';
import { interceptFileWrites } from '../helpers/fileWrites.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { BLOB_RECORD, commitMany, expectSameHistory, storageFileWith, waitForTid, writeFullHistory } from '../replication/helpers.js';
import { FAST_RECONNECT, NOWHERE } from '../replication/netHelpers.js';
import { memoryIo, ZrsProcess, type LogLine } from './helpers.js';

afterAll(cleanupTempDirs);

async function run(...argv: string[]) {
  const io = memoryIo();
  const code = await runCli(argv, io);
  return { code, stdout: io.stdout, stderr: io.stderr };
}

describe('zrs promote / zrs rewind', () => {
  it('an offline promotion of a history at the cap is refused before the audit log is touched', async () => {
    const dir = await tempDir();
    const path = join(dir, 'Data.fs');
    await storageFileWith(path, 1);
    writeFullHistory(path);
    const r = await run('promote', path);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/the most a handshake carries/);
    expect(existsSync(`${path}.audit`)).toBe(false);
    expect(JSON.parse(readFileSync(`${path}.generations`, 'utf8')).generations).toHaveLength(MAX_GENERATION_HISTORY);
  });

  it('an offline promotion whose audit log cannot be opened promotes nothing', async () => {
    const dir = await tempDir();
    const path = join(dir, 'Data.fs');
    await storageFileWith(path, 2);
    await writeFile(`${path}.audit`, 'not an audit log at all\n'.repeat(4));
    for (let i = 0; i < 2; i++) {
      const r = await run('promote', path);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/audit/i);
    }
    expect(existsSync(`${path}.generations`)).toBe(false);
    // And nothing is left open: the file can be promoted once the log is out of the way.
    expect((await run('promote', '--audit-log', 'off', path)).code).toBe(0);
  });

  it('an offline promotion whose decision cannot be written starts no generation', async () => {
    const dir = await tempDir();
    const path = join(dir, 'Data.fs');
    await storageFileWith(path, 2);
    // Every write of the promotion record fails (a disk full).
    const restore = await interceptFileWrites(dir, (real, self, buffer, ...rest) =>
      Buffer.from(buffer).includes('"kind":"promotion"')
        ? Promise.reject(Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', syscall: 'write' }))
        : real.call(self, buffer, ...rest),
    );
    try {
      const r = await run('promote', path);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/ENOSPC/);
    } finally {
      restore();
    }
    expect(existsSync(`${path}.generations`) ? (JSON.parse(readFileSync(`${path}.generations`, 'utf8')) as { generations: unknown[] }).generations : []).toHaveLength(0);
    expect((await readAuditLog(`${path}.audit`)).records.map((x) => x.kind)).not.toContain('promotion');
  });

  it('a rewind whose audit log cannot be opened cuts nothing', async () => {
    const dir = await tempDir();
    const path = join(dir, 'Data.fs');
    const fs = await FileStorage.open(path, { create: true, fsync: false });
    const tids = await commitMany(fs, 4);
    await fs.close();
    const before = readFileSync(path);
    await writeFile(`${path}.audit`, 'not an audit log at all\n');
    const r = await run('rewind', path, '--to-tid', tids[1]!.toString('hex'));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/not an audit log/);
    expect(readFileSync(path).equals(before)).toBe(true);
    expect(readdirSync(dir).filter((f) => f.includes('.rewound-'))).toEqual([]);
    // Nothing left open or locked: with the log out of the way, the rewind goes through.
    expect((await run('rewind', '--audit-log', 'off', path, '--to-tid', tids[1]!.toString('hex'))).code).toBe(0);
  });

  it('an offline promotion of a secondary that adopted its primary\'s generation at its last tid goes through', async () => {
    // Its primary was promoted (generation 1 at the secondary's last tid) and lost before writing: the
    // secondary holds generation 1 without having started it, and is the one to promote now.
    const dir = await tempDir();
    const path = join(dir, 'Data.fs');
    const tids = await storageFileWith(path, 2);
    writeFileSync(`${path}.generations`, JSON.stringify({ version: 1, maxSeen: 1, generations: [{ generation: 0, startTid: '0000000000000000' }, { generation: 1, startTid: tids.at(-1)!.toString('hex') }] }));
    const r = await run('promote', path);
    expect(r).toMatchObject({ code: 0, stdout: `promoted ${path}: generation 2 starts after tid ${tids.at(-1)!.toString('hex')}\n` });
  });

  it('a promotion that stopped after its record is taken back in the audit log when the node opens again, and nothing else is', async () => {
    const dir = await tempDir();
    const path = join(dir, 'Data.fs');
    const last = (await storageFileWith(path, 2)).at(-1)!.toString('hex');
    /** The record `zrs promote FILE` writes before it starts generation 1, with no start after it (the process stopped). */
    const stoppedPromotion = async (): Promise<void> => {
      const log = await AuditLog.open(`${path}.audit`, { node: 'Data.fs', continueNode: true, clock: systemClock });
      await log.decide('promotion', { previousRole: 'secondary', offline: true, previousGeneration: 0, newGeneration: 1, startTid: last, sessionsKept: 0, requestedBy: 'zrs promote FILE' });
      await log.close();
    };
    const promotions = (records: AuditRecord[]): string[] => records.filter((r) => r.kind.startsWith('promotion')).map((r) => r.kind);
    const kinds = async (): Promise<string[]> => promotions((await readAuditLog(`${path}.audit`)).records);
    await stoppedPromotion();
    // Opened as a secondary: the promotion is taken back first, once.
    for (let i = 0; i < 2; i++) {
      const secondary = await Secondary.open({ path, replicateFrom: NOWHERE, fsync: false, reconnect: FAST_RECONNECT });
      await secondary.close();
    }
    expect(await kinds()).toEqual(['promotion', 'promotion-refused']);
    const takenBack = (await readAuditLog(`${path}.audit`)).records.find((r) => r.kind === 'promotion-refused')!;
    expect(takenBack.details).toMatchObject({ code: 'not-started', afterRecord: true, requestedBy: 'zrs promote FILE' });
    expect(takenBack.details.reason).toMatch(/did not start generation 1 after tid [0-9a-f]{16}: the node's generation history has never held it/);
    expect((await run('audit', `${path}.audit`)).stdout).toMatch(/promotion TAKEN BACK \(not-started\): the promotion recorded at .* did not start generation 1/);
    // Stopped again, then promoted offline: taken back, then made; a primary opened on it takes back nothing.
    await stoppedPromotion();
    expect((await run('promote', path)).stdout).toBe(`promoted ${path}: generation 1 starts after tid ${last}\n`);
    const primary = await Primary.open({ path, replicateTo: '127.0.0.1:0', fsync: false });
    await primary.close();
    const records = (await readAuditLog(`${path}.audit`)).records;
    expect(promotions(records)).toEqual(['promotion', 'promotion-refused', 'promotion', 'promotion-refused', 'promotion']);
    // Read as the failure simulator reads a node's log: one promotion made.
    expect(auditedDecisions(records)).toEqual([`promotion to generation 1 after ${last}`]);
  });

  it('a promotion whose generation a rewind cut before recording itself is not taken back: the history has seen that generation', async () => {
    const dir = await tempDir();
    const path = join(dir, 'Data.fs');
    const last = (await storageFileWith(path, 2)).at(-1)!;
    expect((await run('promote', path)).code).toBe(0);
    // The rewind that cut generation 1 stopped before its record: the generation is gone from the list, not from what was seen.
    await (await GenerationHistory.open(path)).cutFrom(last);
    const generations = await GenerationHistory.open(path);
    expect([generations.list.map((g) => g.generation), generations.maxSeen]).toEqual([[0], 1]);
    const secondary = await Secondary.open({ path, replicateFrom: NOWHERE, fsync: false, reconnect: FAST_RECONNECT });
    await secondary.close();
    expect((await readAuditLog(`${path}.audit`)).records.filter((r) => r.kind.startsWith('promotion')).map((r) => r.kind)).toEqual(['promotion']);
  });

  it('a rewind that undoes a promotion and cuts no transaction says which generation it dropped, and so does the audit log', async () => {
    const dir = await tempDir();
    const path = join(dir, 'Data.fs');
    const tids = await storageFileWith(path, 2);
    const last = tids.at(-1)!.toString('hex');
    expect((await run('promote', path)).code).toBe(0);
    const r = await run('rewind', path, '--to-tid', last);
    expect(r).toMatchObject({ code: 0, stdout: `${path}: no transaction to cut (shares its history up to ${last}); dropped generation(s) 1 (from tid ${last})\n` });
    const gens = JSON.parse(readFileSync(`${path}.generations`, 'utf8')) as { generations: unknown[] };
    expect(gens.generations).toHaveLength(1);
    const audit = await run('audit', `${path}.audit`);
    expect(audit.stdout).toContain(`REWIND: nothing to cut after the given tid ${last}; dropped generation(s) 1 (from tid ${last})`);
  });

  it('refuses to rewind a storage with blobs opened without its blob directory: the cut files would stay behind', async () => {
    const dir = await tempDir();
    const path = join(dir, 'Data.fs');
    const blobDir = join(dir, 'blobs');
    const fs = await FileStorage.open(path, { create: true, fsync: false, blobDir });
    const [kept] = await commitMany(fs, 1);
    const txn = { user: 'u', description: 'a blob' };
    await fs.tpcBegin(txn);
    const blobFile = join(dir, 'upload');
    writeFileSync(blobFile, 'blob bytes');
    await fs.storeBlob(fs.newOid(), Buffer.alloc(8), BLOB_RECORD, blobFile, txn);
    await fs.tpcVote(txn);
    await fs.tpcFinish(txn);
    await fs.close();
    const r = await run('rewind', path, '--to-tid', kept!.toString('hex'));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/holds a blob \(oid 0x[0-9a-f]{16}\), and the storage was opened without its blob directory: give it \(zrs rewind --blob-dir DIR\).*nothing was cut\n$/);
    expect(readdirSync(dir).filter((f) => f.includes('.rewound-'))).toEqual([]);
    const again = await FileStorage.open(path, { readOnly: true });
    expect(again.transactionCount).toBe(2);
    await again.close();
    // A mistyped one is not made (empty) and cut against: refused too.
    const typo = await run('rewind', path, '--to-tid', kept!.toString('hex'), '--blob-dir', join(dir, 'blobz'));
    expect(typo).toMatchObject({ code: 1, stderr: `zrs rewind: the blob directory ${join(dir, 'blobz')} does not exist: give the storage's own (its blob-dir); nothing was cut\n` });
    expect(existsSync(join(dir, 'blobz'))).toBe(false);
    // With it, the blob file goes aside with its transaction.
    const ok = await run('rewind', path, '--to-tid', kept!.toString('hex'), '--blob-dir', blobDir);
    expect(ok.stdout).toContain('1 transaction(s) saved in');
    expect(ok.stdout).toContain('(1 blob file(s) in');
  });

  it.each(['forced', 'rewound (recorded in another log)'])('refuses to promote offline a node its primary refused as diverged, unless %s; then its generation goes past the primary\'s', async (how) => {
    const dir = await tempDir();
    const aPath = join(dir, 'a.fs');
    const old = await Primary.open({ path: aPath, replicateTo: '127.0.0.1:0', fsync: false });
    const b = await Secondary.open({ path: join(dir, 'b.fs'), replicateFrom: old.address, replicateTo: '127.0.0.1:0', fsync: false, reconnect: FAST_RECONNECT });
    let promoted: Primary | null = null;
    try {
      await waitForTid(b, (await commitMany(old.storage, 3)).at(-1)!);
      b.setReplicationAddress('127.0.0.1:1');
      await commitMany(old.storage, 2); // lost with the old primary
      await old.close();
      promoted = await b.promote();
      // The old primary, reopened as the new one's secondary, is refused as diverged (recorded in a.fs.audit).
      const a = await Secondary.open({ path: aPath, replicateFrom: promoted.address, fsync: false, reconnect: FAST_RECONNECT });
      await waitForMachine(a, (v) => v === '"diverged"', 'diverged');
      await a.close();
      const r = await run('promote', aPath);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(new RegExp(`^zrs promote: ${esc(aPath)}: its audit log says ${esc(formatAddress(promoted.address))} refused it as diverged \\(.*\\): promoted, it would start a history beside that one; rewind it first \\(zrs rewind --to-common-with ${esc(formatAddress(promoted.address))}\\), or --force\n$`));
      // Recording elsewhere, or nowhere, does not skip what the node's own log says.
      expect((await run('promote', '--audit-log', 'off', aPath)).code).toBe(1);
      expect((await run('promote', '--audit-log', join(dir, 'other.audit'), aPath)).code).toBe(1);
      let promotedOffline;
      if (how === 'forced') promotedOffline = await run('promote', '--force', aPath);
      else {
        // The rewind recorded elsewhere answers the refusal recorded in a.fs.audit: they are read in time order.
        const other = join(dir, 'other.audit');
        expect((await run('rewind', aPath, '--to-common-with', formatAddress(promoted.address), '--audit-log', other)).code).toBe(0);
        promotedOffline = await run('promote', '--audit-log', other, aPath);
      }
      expect(promotedOffline).toMatchObject({ code: 0, stdout: expect.stringContaining(': generation 2 starts after tid') });
    } finally {
      await promoted?.close();
      await b.close();
    }
  });

  it('promotes offline, then rewinds to a tid', async () => {
    const dir = await tempDir();
    const path = join(dir, 'Data.fs');
    const fs = await FileStorage.open(path, { create: true, fsync: false });
    const tids = await commitMany(fs, 4);
    await fs.close();

    let io = memoryIo();
    expect(await runCli(['promote', path], io)).toBe(0);
    expect(io.stdout).toContain(`generation 1 starts after tid ${tids[3]!.toString('hex')}`);
    // Run again with nothing written since: refused, unless forced.
    io = memoryIo();
    expect(await runCli(['promote', path], io)).toBe(1);
    expect(io.stderr).toBe(
      `zrs promote: ${path}: generation 1 already starts after its last transaction (tid ${tids[3]!.toString('hex')}), and its audit log says this node started it: it was promoted and nothing was written since; serve it as a primary, or --force for another generation\n`,
    );
    io = memoryIo();
    expect(await runCli(['promote', '--force', path], io)).toBe(0);
    expect(io.stdout).toContain('generation 2');
    const gens = JSON.parse(readFileSync(`${path}.generations`, 'utf8')) as { generations: unknown[] };
    expect(gens.generations).toHaveLength(3);

    io = memoryIo();
    expect(await runCli(['rewind', path, '--to-tid', tids[1]!.toString('hex')], io)).toBe(0);
    expect(io.stdout).toContain('2 transaction(s) saved in');
    const t3 = tids[3]!.toString('hex');
    expect(io.stdout).toContain(`; dropped generation(s) 1 (from tid ${t3}), 2 (from tid ${t3})\n`);
    // The side file stands alone: no lock or index file of its own beside it.
    expect(readdirSync(dir).filter((f) => f.includes('.rewound-'))).toEqual([`Data.fs.rewound-${tids[1]!.toString('hex')}`]);
    io = memoryIo();
    expect(await runCli(['dump', `${path}.rewound-${tids[1]!.toString('hex')}`], io)).toBe(0);
    expect(io.stdout).toContain(`tid=${tids[2]!.toString('hex')}`);
    expect(io.stdout).toContain(`tid=${tids[3]!.toString('hex')}`);
    const after = await FileStorage.open(path, { readOnly: true });
    expect(after.lastTransaction()).toEqual(tids[1]);
    await after.close();

    // A malformed tid is a usage error; a data file that is not there is no address to promote.
    io = memoryIo();
    expect(await runCli(['rewind', path, '--to-tid', 'zz'], io)).toBe(2);
    expect(io.stderr).toContain('--to-tid must be 16 hex digits, got "zz"');
    io = memoryIo();
    expect(await runCli(['rewind', path, '--to-tid', '03f1'], io)).toBe(2);
    expect(io.stderr).toContain('--to-tid must be 16 hex digits, got "03f1"');
    io = memoryIo();
    expect(await runCli(['promote', join(dir, 'missing.fs')], io)).toBe(1);
    expect(io.stderr).toBe(`zrs promote: ${join(dir, 'missing.fs')}: no such file (FILE must be an existing data file; ADDRESS a running node's replication address)\n`);

    // A path that is not a storage file is refused before a lock file is made for it.
    for (const wrong of [join(dir, 'missing.fs'), dir]) {
      io = memoryIo();
      expect(await runCli(['rewind', wrong, '--to-tid', tids[1]!.toString('hex')], io)).not.toBe(0);
      expect(existsSync(`${wrong}.lock`)).toBe(false);
    }

    io = memoryIo();
    expect(await runCli(['rewind', path], io)).not.toBe(0);

    // Both offline decisions are in the storage's audit log; online-only options are usage errors.
    const records = (await readAuditLog(`${path}.audit`)).records;
    expect(records.map((x) => [x.node, x.kind, x.details.newGeneration ?? x.details.transactionsCut])).toEqual([
      ['Data.fs', 'promotion', 1],
      ['Data.fs', 'promotion', 2],
      ['Data.fs', 'rewind', 2],
    ]);
    expect(records[2]!.details).toMatchObject({ offline: true, commonWith: 'tid', forkTid: tids[1]!.toString('hex'), firstCutTid: tids[2]!.toString('hex'), lastCutTid: tids[3]!.toString('hex') });
    // zrs audit says the tid was given, not "common with tid".
    expect((await run('audit', `${path}.audit`)).stdout).toContain(`REWOUND to tid ${tids[1]!.toString('hex')} (given): 2 transaction(s) cut, ${tids[2]!.toString('hex')} .. ${t3}`);
    expect((await run('promote', '--timeout', '5', path)).code).toBe(2);
    expect((await run('promote', '--audit-log', 'off', '127.0.0.1:1')).code).toBe(2);
  });
});

/** A loopback TCP relay to `target`; `cut()` drops every relayed connection and stops listening (a partition). */
async function relay(target: ReplicationAddress): Promise<{ address: string; cut(): Promise<void> }> {
  if (target.kind !== 'tcp') throw new Error('tcp only');
  const sockets = new Set<Socket>();
  const server = createServer((inbound) => {
    const outbound = createConnection({ host: target.host, port: target.port });
    for (const s of [inbound, outbound]) {
      sockets.add(s);
      s.on('error', () => undefined);
      s.once('close', () => sockets.delete(s));
    }
    inbound.pipe(outbound);
    outbound.pipe(inbound);
    inbound.once('close', () => outbound.destroy());
    outbound.once('close', () => inbound.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    address: `127.0.0.1:${port}`,
    cut: async () => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of sockets) s.destroy();
      await closed;
    },
  };
}

/** Resolve once the secondary's connection machine satisfies `test` (checked on every snapshot). */
function waitForMachine(s: Secondary, test: (value: string) => boolean, what: string, ms = 15_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const value = (): string => JSON.stringify(s.machine.getSnapshot().value);
    if (test(value())) return resolve();
    const timer = setTimeout(() => {
      sub.unsubscribe();
      reject(new Error(`secondary never ${what}; it is ${value()}`));
    }, ms);
    const sub = s.machine.subscribe(() => {
      if (!test(value())) return;
      clearTimeout(timer);
      sub.unsubscribe();
      resolve();
    });
  });
}

const hexOf = (b: Buffer): string => b.toString('hex');
const esc = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** Assert that `lines` contain a line matching each pattern, in this order (other lines may come between). */
/**
 * Lines matching `patterns` in this order. Records of two nodes stamped in
 * the same millisecond are merged in the order of the files given, not in
 * the order they happened, so one may also match earlier in the same
 * millisecond as the line matched before it.
 */
function expectInOrder(lines: string[], patterns: RegExp[]): void {
  const timeOf = (line: string): string => line.slice(0, line.indexOf(' '));
  let at = 0;
  for (const p of patterns) {
    const found = lines.findIndex((l, i) => i >= at && p.test(l));
    if (found >= 0) {
      at = found + 1;
      continue;
    }
    const time = at > 0 ? timeOf(lines[at - 1]!) : null;
    if (lines.some((l, i) => i < at && timeOf(l) === time && p.test(l))) continue;
    throw new Error(`no line matching ${p} after line ${at}:\n${lines.slice(at).join('\n')}`);
  }
}

describe('failover over real sockets, driven and read through the command line', () => {
  it('zrs promote ADDRESS promotes a running secondary; zrs rewind and zrs audit tell the whole story', async () => {
    const dir = await tempDir();
    const pPath = join(dir, 'p.fs');
    const s1Path = join(dir, 's1.fs');
    const oldPrimary = await Primary.open({ path: pPath, replicateTo: '127.0.0.1:0', fsync: false, name: 'p' });
    const link = await relay(oldPrimary.address);
    const s1 = await Secondary.open({ path: s1Path, replicateFrom: link.address, replicateTo: '127.0.0.1:0', fsync: false, reconnect: FAST_RECONNECT, name: 's1' });
    const s1Address = formatAddress(s1.replicationAddress!);
    const s3 = await Secondary.open({ path: join(dir, 's3.fs'), replicateFrom: s1.replicationAddress!, fsync: false, reconnect: FAST_RECONNECT, name: 's3' });
    const promotedPrimary = firstValueFrom(s1.promoted$);
    let newPrimary: Primary | null = null;
    let old: Secondary | null = null;
    try {
      const shared = await commitMany(oldPrimary.storage, 3);
      await Promise.all([waitForTid(s1, shared.at(-1)!), waitForTid(s3, shared.at(-1)!)]);

      // Refused while it still replicates from a live primary; a primary is never promoted.
      let r = await run('promote', s1Address);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(new RegExp(`^zrs promote: ${esc(s1Address)} did not promote itself \\(refused\\): refusing to promote while its upstream answers`));
      r = await run('promote', formatAddress(oldPrimary.address));
      expect(r.code).toBe(1);
      expect(r.stderr).toBe(`zrs promote: ${formatAddress(oldPrimary.address)} did not promote itself (already-primary): this node is already a primary\n`);
      expect(s1.machine.getSnapshot().matches('connected')).toBe(true);

      // The link to s1 breaks; the old primary takes two more commits, then dies.
      await link.cut();
      await waitForMachine(s1, (v) => !v.includes('connected'), 'lost its primary');
      const lost = await commitMany(oldPrimary.storage, 2);
      await oldPrimary.close();

      // Promoted while running: generation 1 from the last shared tid, s3 kept.
      r = await run('promote', s1Address);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect(r.stdout).toBe(`promoted ${s1Address}: generation 1 starts after tid ${hexOf(shared.at(-1)!)}; 1 downstream session(s) kept\n`);
      newPrimary = await promotedPrimary;
      expect(newPrimary.generation).toEqual({ generation: 1, startTid: shared.at(-1)! });
      const status = await requestStatus(s1Address);
      expect(status).toMatchObject({ role: 'primary', name: 's1', generation: { generation: 1 }, upstream: null });
      const fresh = await commitMany(newPrimary.storage, 2);
      await waitForTid(s3, fresh.at(-1)!);
      r = await run('promote', s1Address);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain('(already-primary)');

      // The old primary comes back as a secondary: refused, with the fork and the new primary's last tid.
      old = await Secondary.open({ path: pPath, replicateFrom: s1Address, fsync: false, reconnect: FAST_RECONNECT, name: 'p' });
      await waitForMachine(old, (v) => v === '"diverged"', 'diverged');
      expect(old.diverged).toMatchObject({ name: 'DivergedHistoryError', forkTid: shared.at(-1)!, localTid: lost.at(-1)!, remoteTid: fresh.at(-1)! });
      expect(old.status().upstream?.state).toBe('diverged');
      await old.close();
      old = null;

      // Rewound offline against the new primary, it rejoins and converges.
      r = await run('rewind', pPath, '--to-common-with', s1Address);
      expect(r.code).toBe(0);
      expect(r.stdout).toBe(`${pPath}: rewound to tid ${hexOf(shared.at(-1)!)}; 2 transaction(s) saved in ${pPath}.rewound-${hexOf(shared.at(-1)!)}\n`);
      old = await Secondary.open({ path: pPath, replicateFrom: s1Address, fsync: false, reconnect: FAST_RECONNECT, name: 'p' });
      await waitForTid(old, fresh.at(-1)!);
      await expectSameHistory(newPrimary.storage, old.storage);
      await old.close();
      old = null;
      await s3.close();
      await newPrimary.close();
      newPrimary = null;

      // One timeline from both nodes' audit logs.
      r = await run('audit', `${s1Path}.audit`, `${pPath}.audit`);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      const lines = r.stdout.trimEnd().split('\n');
      const [sharedHex, freshHex] = [hexOf(shared.at(-1)!), hexOf(fresh.at(-1)!)];
      const node = (name: string, kind: string): string => `  #\\d+  ${name}( gen \\d+)?  ${kind} +`;
      expectInOrder(lines, [
        new RegExp(`${node('p', 'config')}open role=primary replicateTo=${esc(formatAddress(oldPrimary.address))}`),
        new RegExp(`${node('s1', 'config')}open role=secondary replicateFrom=${esc(link.address)}`),
        new RegExp(`${node('s1', 'handshake')}secondary ${esc(link.address)}: welcome zrs-ts/1 from tid 0{16}`),
        new RegExp(`${node('s1', 'handshake')}primary 127\\.0\\.0\\.1:\\d+: promote request`),
        new RegExp(`${node('s1', 'promotion-refused')}promotion REFUSED \\(refused\\): refusing to promote while its upstream answers \\(connected\\.replicating, from ${esc(link.address)}\\)`),
        new RegExp(`${node('p', 'promotion-refused')}promotion REFUSED \\(already-primary\\): this node is already a primary`),
        new RegExp(`${node('s1', 'disconnection')}secondaryConnection ${esc(link.address)} connection lost: disconnected`),
        new RegExp(`${node('p', 'config')}close role=primary`),
        new RegExp(`${node('s1', 'config')}detach role=secondary`),
        new RegExp(`${node('s1 gen 1', 'connection')}primarySession 127\\.0\\.0\\.1:\\d+ still connected \\(live\\), kept`),
        new RegExp(
          `${node('s1', 'promotion')}PROMOTED secondary -> primary \\(was replicating from ${esc(link.address)}\\): generation 1 starts after tid ${sharedHex}; 1 downstream session\\(s\\) kept; requested by 127\\.0\\.0\\.1:\\d+$`,
        ),
        new RegExp(`${node('s1 gen 1', 'config')}open role=primary replicateTo=${esc(s1Address)}`),
        new RegExp(`${node('s1 gen 1', 'handshake')}primary 127\\.0\\.0\\.1:\\d+: REFUSED \\(diverged\\): the secondary's .* fork at tid ${sharedHex}`),
        new RegExp(`${node('p', 'handshake')}secondary ${esc(s1Address)}: REFUSED \\(diverged\\): the secondary's .* fork at tid ${sharedHex}; primary's last tid ${freshHex}$`),
        new RegExp(
          `${node('p', 'rewind')}REWOUND to tid ${sharedHex} \\(common with ${esc(s1Address)}\\): 2 transaction\\(s\\) cut, ${hexOf(lost[0]!)} \\.\\. ${hexOf(lost[1]!)}, 0 blob file\\(s\\); saved in ${esc(pPath)}\\.rewound-${sharedHex}$`,
        ),
        new RegExp(`${node('p', 'handshake')}secondary ${esc(s1Address)}: welcome zrs-ts/1 from tid ${sharedHex}`),
        new RegExp(`${node('s1 gen 1', 'config')}close role=primary`),
      ]);
      // The decisions carry their structured details too.
      const json = (await run('audit', '--json', `${s1Path}.audit`)).stdout.trim().split('\n').map((l) => JSON.parse(l) as { kind: string; details: Record<string, unknown> });
      expect(json.find((x) => x.kind === 'promotion')?.details).toMatchObject({
        previousRole: 'secondary',
        previousUpstream: link.address,
        previousGeneration: 0,
        newGeneration: 1,
        startTid: sharedHex,
        sessionsKept: 1,
        forced: false,
      });
    } finally {
      await old?.close();
      await s3.close();
      await newPrimary?.close();
      await s1.close();
      await oldPrimary.close();
      await link.cut();
    }
  });
});

describe('zrs serve with sync-replicas, sync-timeout and audit-log, promoted over its address', () => {
  const children: ZrsProcess[] = [];
  afterEach(async () => {
    for (const c of children.splice(0)) if (c.child.exitCode === null && c.child.signalCode === null) await c.stop('SIGKILL');
  });

  it('a served secondary becomes a primary with its configured sync replication; a served primary refuses; audit-log off writes none', async () => {
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false });
    let primaryOpen = true;
    try {
      const sDir = join(dir, 's');
      const auditDir = join(dir, 'audit');
      await mkdir(sDir);
      await mkdir(auditDir);
      const sConf = join(dir, 's.conf');
      await writeFile(
        sConf,
        [
          '%import zc.zrs',
          '<zrs replica>',
          `  replicate-from ${formatAddress(primary.address)}`,
          '  replicate-to 127.0.0.1:0',
          '  reconnect-delay 0.01',
          '  reconnect-max-delay 0.05',
          '  sync-replicas 1',
          '  sync-timeout 2.5',
          `  audit-log ${join(auditDir, 'replica.audit')}`,
          '  <filestorage>',
          `    path ${join(sDir, 'Data.fs')}`,
          '  </filestorage>',
          '</zrs>',
          '',
        ].join('\n'),
      );
      const pConf = join(dir, 'p2.conf');
      await writeFile(pConf, `%import zc.zrs\n<zrs other>\n replicate-to 127.0.0.1:0\n audit-log off\n <filestorage>\n  path ${join(dir, 'other.fs')}\n </filestorage>\n</zrs>\n`);

      const secondary = ZrsProcess.start(['serve', '--log-format', 'json', sConf]);
      children.push(secondary);
      const other = ZrsProcess.start(['serve', '--log-format', 'json', pConf]);
      children.push(other);
      // Port 0, the one bound read back from the ready line: a port found free first could be taken before the node binds it.
      const boundAddress = (ready: LogLine): string => (ready.storages as [{ replicateTo: string }])[0].replicateTo;
      const [sReady, pReady] = await Promise.all([secondary.ready(), other.ready()]);
      const [sAddress, pAddress] = [boundAddress(sReady), boundAddress(pReady)];
      expect([sAddress, pAddress]).toEqual([expect.stringMatching(/^127\.0\.0\.1:[1-9]\d*$/), expect.stringMatching(/^127\.0\.0\.1:[1-9]\d*$/)]);
      const tids = await commitMany(primary.storage, 2);
      // The acknowledgement follows the secondary's sync, which no file change marks; its status then holds the tid.
      await primary.waitForReplication(tids[1]!, { replicas: 1, timeoutMs: 30_000 });
      expect((await requestStatus(sAddress)).lastTid).toEqual(tids[1]!);

      // The upstream goes away; once the replica noticed, it is promoted.
      await primary.close();
      primaryOpen = false;
      await secondary.waitForLog((l) => l.message === 'waiting to reconnect');
      let r = await run('promote', sAddress);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect(r.stdout).toBe(`promoted ${sAddress}: generation 1 starts after tid ${hexOf(tids[1]!)}; 0 downstream session(s) kept\n`);
      await secondary.waitForLog((l) => l.message === 'promoted to primary' && l.generation === 1);
      expect(await requestStatus(sAddress)).toMatchObject({ role: 'primary', name: 'replica', generation: { generation: 1, startTid: tids[1]! } });

      // The served primary refuses, and keeps no audit log.
      r = await run('promote', pAddress);
      expect(r.code).toBe(1);
      expect(r.stderr).toBe(`zrs promote: ${pAddress} did not promote itself (already-primary): this node is already a primary\n`);
      expect(existsSync(join(dir, 'other.fs.audit'))).toBe(false);

      // SIGTERM closes the promoted node as the primary it is.
      expect(await secondary.stop()).toBe(0);
      expect(await other.stop()).toBe(0);
      expect(secondary.logs.filter((l) => l.level === 'error')).toEqual([]);
      expect(existsSync(join(sDir, 'Data.fs.audit'))).toBe(false);
      const records = (await readAuditLog(join(auditDir, 'replica.audit'))).records;
      const configs = records.filter((x) => x.kind === 'config').map((x) => x.details);
      expect(configs).toEqual([
        expect.objectContaining({ change: 'open', role: 'secondary' }),
        expect.objectContaining({ change: 'detach', role: 'secondary' }),
        expect.objectContaining({ change: 'open', role: 'primary', replicateTo: sAddress, syncReplicas: 1, syncTimeoutMs: 2_500 }),
        expect.objectContaining({ change: 'close', role: 'primary' }),
      ]);
      expect(records.find((x) => x.kind === 'promotion')).toMatchObject({ node: 'replica', details: { newGeneration: 1, startTid: hexOf(tids[1]!), requestedBy: expect.stringMatching(/^127\.0\.0\.1:\d+$/) } });
    } finally {
      if (primaryOpen) await primary.close();
    }
  });
});
