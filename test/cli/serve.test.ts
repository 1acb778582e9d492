// `zrs serve` as real child processes over loopback: the seed README's two
// configurations (primary, then a secondary with replicate-from, replicate-to
// and keep-alive-delay), a three-level Unix-socket chain replicating blobs,
// and SIGTERM in the middle of a workload. Every wait is driven by log lines
// or file-system events, bounded by a timeout.

import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { verifyFile } from '../../src/cli/verify.js';
import { Primary } from '../../src/replication/primary.js';
import { Z64 } from '../../src/storage/timestamp.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { sizeWithoutFill } from '../../src/storage/scan.js';
import { cleanupTempDirs, copyZodbFixture, tempDir } from '../helpers/fixtures.js';
import { seedPrimary, seedSecondary } from '../config/seed.js';
import { transactions, waitUntil, ZrsProcess } from './helpers.js';

const children: ZrsProcess[] = [];
function start(config: string, ...flags: string[]): ZrsProcess {
  const p = ZrsProcess.start(['serve', '--log-format', 'json', ...flags, config]);
  children.push(p);
  return p;
}

afterEach(async () => {
  // A failed test must not leave servers running.
  for (const c of children.splice(0)) if (c.child.exitCode === null && c.child.signalCode === null) await c.stop('SIGKILL');
});
afterAll(cleanupTempDirs);

/** A data file's size without the fill a running storage writes ahead of its end. */
const size = async (path: string): Promise<number> => (existsSync(path) ? await sizeWithoutFill(path) : -1);

async function blobFiles(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.name.endsWith('.blob')) out.set(relative(dir, p), (await readFile(p)).toString('base64'));
    }
  };
  await walk(dir);
  return out;
}

describe('zrs serve', () => {
  it('runs the seed README primary and secondary configurations until SIGTERM', async () => {
    const pDir = await copyZodbFixture('basic'); // 53 transactions already committed
    const sDir = await tempDir();
    const pConf = join(pDir, 'primary.conf');
    const sConf = join(sDir, 'secondary.conf');
    // Loopback only: the README's bare port becomes 127.0.0.1:PORT through %define. Port 0, the one bound read
    // back from the ready line: a port found free first could be taken before the node binds it.
    await writeFile(pConf, seedPrimary({ PORT: '127.0.0.1:0', DATA: join(pDir, 'Data.fs') }));

    const primary = start(pConf);
    const ready = await primary.ready();
    expect(ready.storages).toEqual([{ name: join(pDir, 'Data.fs'), kind: 'primary', path: join(pDir, 'Data.fs'), replicateTo: expect.stringMatching(/^127\.0\.0\.1:\d+$/) }]);
    const [{ replicateTo: primaryAddress }] = ready.storages as [{ replicateTo: string }];
    expect(primaryAddress).not.toBe('127.0.0.1:0');
    expect(ready.collector).toBe('marking at 80 % of the limit');
    await writeFile(sConf, seedSecondary({ PRIMARY: primaryAddress, PORT: '127.0.0.1:0', DATA: join(sDir, 'Data.fs') }));
    const secondary = start(sConf, '--marking-start', '0');
    const sReady = await secondary.ready();
    expect(sReady.collector).toBe("V8's own rule");
    expect(sReady.storages).toMatchObject([{ kind: 'secondary', replicateFrom: primaryAddress, replicateTo: expect.stringMatching(/^127\.0\.0\.1:[1-9]\d*$/) }]);

    const want = await size(join(pDir, 'Data.fs'));
    await waitUntil(async () => (await size(join(sDir, 'Data.fs'))) === want, [sDir]);

    expect(await secondary.stop('SIGTERM')).toBe(0);
    expect(await primary.stop('SIGTERM')).toBe(0);
    for (const p of [primary, secondary]) {
      expect(p.logs.map((l) => l.message)).toEqual(expect.arrayContaining(['ready', 'SIGTERM received: closing', 'closed', 'stopped']));
      expect(p.logs.filter((l) => l.level === 'error')).toEqual([]);
    }
    const pTxns = await transactions(join(pDir, 'Data.fs'));
    expect(pTxns).toHaveLength(53);
    expect(await transactions(join(sDir, 'Data.fs'))).toEqual(pTxns);
    expect(await verifyFile(join(sDir, 'Data.fs'))).toMatchObject({ ok: true, transactions: 53 });
  });

  it('replicates a blob down a three-level chain over Unix sockets, ending with equal file sizes', async () => {
    const pDir = await copyZodbFixture('blobs'); // Data.fs and blobs/ with 9 blob revisions
    const root = await tempDir();
    for (const d of ['s1', 's2']) await mkdir(join(root, d));
    const conf = join(root, 'chain.conf');
    await writeFile(
      conf,
      [
        '%import zc.zrs',
        `%define P ${pDir}`,
        `%define DIR ${root}`,
        '<zrs primary>',
        '  replicate-to $DIR/p.sock',
        '  <filestorage>',
        '    path $P/Data.fs',
        '    blob-dir $P/blobs',
        '  </filestorage>',
        '</zrs>',
        '<zrs middle>',
        '  replicate-from $DIR/p.sock',
        '  replicate-to $DIR/s1.sock',
        '  reconnect-delay 0.05',
        '  <filestorage>',
        '    path $DIR/s1/Data.fs',
        '    blob-dir $DIR/s1/blobs',
        '  </filestorage>',
        '</zrs>',
        '<zrs leaf>',
        '  replicate-from $DIR/s1.sock',
        '  reconnect-delay 0.05',
        '  <filestorage>',
        '    path ${DIR}/s2/Data.fs',
        '    blob-dir ${DIR}/s2/blobs',
        '  </filestorage>',
        '</zrs>',
      ].join('\n'),
    );
    const serve = start(conf);
    const ready = await serve.ready();
    expect((ready.storages as Array<{ name: string }>).map((s) => s.name)).toEqual(['primary', 'middle', 'leaf']);
    const want = await size(join(pDir, 'Data.fs'));
    await waitUntil(async () => (await size(join(root, 's2', 'Data.fs'))) === want, [join(root, 's2')]);
    expect(await serve.stop('SIGTERM')).toBe(0);

    const sizes = await Promise.all([join(pDir, 'Data.fs'), join(root, 's1', 'Data.fs'), join(root, 's2', 'Data.fs')].map(size));
    expect(sizes).toEqual([want, want, want]);
    const blobs = await blobFiles(join(pDir, 'blobs'));
    expect(blobs.size).toBe(9);
    expect(await blobFiles(join(root, 's1', 'blobs'))).toEqual(blobs);
    expect(await blobFiles(join(root, 's2', 'blobs'))).toEqual(blobs);
    expect(await transactions(join(root, 's2', 'Data.fs'))).toEqual(await transactions(join(pDir, 'Data.fs')));
  });

  it('keeps a storage without replication (a top-level <filestorage>) open until SIGTERM', async () => {
    const dir = await tempDir();
    const conf = join(dir, 'plain.conf');
    await writeFile(conf, `<filestorage>\n path ${join(dir, 'Data.fs')}\n</filestorage>\n`);
    const p = start(conf);
    await p.ready();
    // Nothing listens, so only the wait itself keeps the process running until the signal.
    expect(p.child.exitCode).toBe(null);
    expect(await p.stop('SIGTERM')).toBe(0);
    expect(p.logs.map((l) => l.message)).toEqual(expect.arrayContaining(['ready', 'SIGTERM received: closing', 'closed', 'stopped']));
  });

  it('SIGTERM in the middle of a workload leaves a complete file: reopening cuts nothing', async () => {
    const dir = await tempDir();
    await mkdir(join(dir, 's'));
    const primary = await Primary.open({ path: join(dir, 'primary.fs'), replicateTo: '127.0.0.1:0', fsync: false });
    const address = primary.address;
    if (address.kind !== 'tcp') throw new Error('tcp expected');
    const conf = join(dir, 'secondary.conf');
    await writeFile(
      conf,
      `%import zc.zrs\n<zrs>\n replicate-from 127.0.0.1:${address.port}\n reconnect-delay 0.05\n <filestorage>\n  path ${join(dir, 's', 'Data.fs')}\n </filestorage>\n</zrs>\n`,
    );
    // The workload: transactions of 20 records, committed as fast as the primary takes them.
    let stop = false;
    let committed = 0;
    const workload = (async () => {
      const oids = Array.from({ length: 20 }, () => primary.storage.newOid());
      const serials = oids.map(() => Z64);
      while (!stop) {
        const txn = { description: `txn ${committed}` };
        await primary.storage.tpcBegin(txn);
        oids.forEach((oid, i) => primary.storage.store(oid, serials[i]!, Buffer.alloc(1000, committed % 251), txn));
        await primary.storage.tpcVote(txn);
        const tid = await primary.storage.tpcFinish(txn);
        serials.fill(tid);
        committed++;
        // Without fsync a commit may finish in microtasks only: let timers, watches and pipes run.
        await new Promise((resolve) => setImmediate(resolve));
      }
    })();
    try {
      const secondary = start(conf);
      await secondary.ready();
      const sPath = join(dir, 's', 'Data.fs');
      // Let it replicate a good part of the stream (≥ 100 transactions of ~21 KiB), then stop it mid-way.
      await waitUntil(async () => (await size(sPath)) > 100 * 21_000, [join(dir, 's')]);
      expect(await secondary.stop('SIGTERM')).toBe(0);
      expect(committed).toBeGreaterThan(0);
      stop = true;
      await workload;

      expect(existsSync(`${sPath}.tr0`)).toBe(false);
      const before = await size(sPath);
      const reopened = await FileStorage.open(sPath); // read-write: would cut an unfinished tail
      const last = reopened.lastTransaction();
      await reopened.close();
      expect(existsSync(`${sPath}.tr0`)).toBe(false);
      expect(await size(sPath)).toBe(before);
      const check = await verifyFile(sPath);
      expect(check.ok).toBe(true);
      const replica = await transactions(sPath);
      const all = await transactions(join(dir, 'primary.fs'));
      expect(replica.length).toBeGreaterThanOrEqual(100);
      expect(replica).toEqual(all.slice(0, replica.length));
      expect(replica.at(-1)!.startsWith(last.toString('hex'))).toBe(true);
    } finally {
      stop = true;
      await workload;
      await primary.close();
    }
  });
});
