// Recorded zc.zrs primary streams replayed into a TypeScript Secondary through
// a fake primary (a raw socket server on loopback): the secondary's handshake
// must match what the real client sent, and the resulting Data.fs (and blob
// directory) must match the fixture the real primary served.

import { statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { Secondary, type SecondaryProtocol } from '../../src/replication/secondary.js';
import { cleanupTempDirs, copyZodbFixture, fixturePath, tempDir } from '../helpers/fixtures.js';
import { expectSameHistory, waitForTid } from '../replication/helpers.js';
import {
  chunk,
  copyHistoryUpTo,
  describeChunking,
  filesUnder,
  readBin,
  readTranscriptJson,
  sentBytes,
  startFakePrimary,
  writeChunks,
  zrsFixture,
  type Chunking,
} from './helpers.js';

afterAll(cleanupTempDirs);

interface ReplayCase {
  /** The primary->secondary stream. */
  bin: string;
  /** The recorded handshake: a scenario .json's `sent`, or a real secondary's own bytes. */
  handshake: () => Promise<Buffer>;
  protocol: SecondaryProtocol;
  /** zodb fixture directory the real primary served. */
  source: 'basic' | 'undo' | 'packed' | 'blobs' | 'large';
  /** Exclusive start tid (zero: an empty secondary). */
  startTid: () => Promise<Buffer>;
}

const fromJson = (name: string) => async (): Promise<Buffer> => sentBytes(await readTranscriptJson(`${name}.json`));
const startFromJson = (name: string) => async (): Promise<Buffer> => Buffer.from((await readTranscriptJson(`${name}.json`)).start_tid, 'hex');
const zero = async (): Promise<Buffer> => Buffer.alloc(8);

function scenario(name: string, protocol: SecondaryProtocol, source: ReplayCase['source']): [string, ReplayCase] {
  return [name, { bin: `${name}.bin`, handshake: fromJson(name), protocol, source, startTid: startFromJson(name) }];
}

function realSecondary(source: ReplayCase['source'], protocol: SecondaryProtocol): [string, ReplayCase] {
  const name = `real-secondary-${source}`;
  return [
    name,
    { bin: `${name}.primary-to-secondary.bin`, handshake: () => readBin(`${name}.secondary-to-primary.bin`), protocol, source, startTid: zero },
  ];
}

const CASES: Array<[string, ReplayCase]> = [
  scenario('basic-zrs2.0-from-zero', 'zrs2.0', 'basic'),
  scenario('basic-zrs2.1-from-zero', 'zrs2.1', 'basic'),
  scenario('basic-zrs2.0-from-mid', 'zrs2.0', 'basic'),
  scenario('undo-zrs2.0-from-zero', 'zrs2.0', 'undo'),
  scenario('packed-zrs2.0-from-zero', 'zrs2.0', 'packed'),
  scenario('blobs-zrs2.1-from-zero', 'zrs2.1', 'blobs'),
  scenario('blobs-zrs2.1-from-mid', 'zrs2.1', 'blobs'),
  scenario('large-zrs2.0-from-zero', 'zrs2.0', 'large'),
  realSecondary('basic', 'zrs2.0'),
  realSecondary('undo', 'zrs2.0'),
  realSecondary('packed', 'zrs2.0'),
  realSecondary('blobs', 'zrs2.1'),
  realSecondary('large', 'zrs2.0'),
];

/** Chunkings to try: always whole and random; 1-to-3-byte chunks only for small streams. */
function chunkings(size: number, name: string): Chunking[] {
  const seed = [...name].reduce((h, c) => (h * 31 + c.charCodeAt(0)) >>> 0, 7);
  const out: Chunking[] = [{ kind: 'whole' }, { kind: 'random', max: size > 100_000 ? 200_000 : 4096, seed }];
  if (size <= 30_000) out.push({ kind: 'small', max: 3, seed: seed + 1 });
  return out;
}

async function lastTidOf(fs: FileStorage): Promise<Buffer> {
  return fs.lastTransaction();
}

/** Every (transcript, chunking) pair, sized from the .bin at collection time (a missing one fails loudly). */
const RUNS = CASES.flatMap(([name, c]) =>
  chunkings(statSync(zrsFixture(c.bin)).size, name).map((chunking) => [name, describeChunking(chunking), c, chunking] as const),
);

describe('replaying recorded zc.zrs primary streams into a TypeScript Secondary', () => {
  it.each(RUNS)('%s, chunks: %s: gives the source fixture (Data.fs and blobs)', async (name, _label, c, chunking) => {
    const bin = await readBin(c.bin);
    const expectedHandshake = await c.handshake();
    const startTid = await c.startTid();
    const hasBlobs = c.source === 'blobs';

    const src = await copyZodbFixture(c.source);
    const source = await FileStorage.open(join(src, 'Data.fs'), { readOnly: true, blobDir: hasBlobs ? join(src, 'blobs') : undefined });
    const dir = await tempDir('zrs-interop-replay-');
    const path = join(dir, 'Data.fs');
    const blobDir = hasBlobs ? join(dir, 'blobs') : undefined;
    try {
      if (!startTid.equals(Buffer.alloc(8))) await copyHistoryUpTo(source, path, startTid, blobDir);
      const fake = await startFakePrimary(expectedHandshake.length, (conn) => writeChunks(conn.socket, chunk(bin, chunking)));
      try {
        const secondary = await Secondary.open({ path, replicateFrom: fake.address, protocol: c.protocol, blobDir, fsync: false });
        try {
          const handshake = await (await fake.connection(0)).handshake;
          expect(handshake.toString('hex'), 'secondary handshake').toBe(expectedHandshake.toString('hex'));
          await waitForTid(secondary, await lastTidOf(source), 60_000);
          await expectSameHistory(source, secondary.storage);
          expect(fake.connections.length, `one connection (${describeChunking(chunking)})`).toBe(1);
        } finally {
          await secondary.close();
        }
      } finally {
        await fake.close();
      }
      // zc.zrs's secondary writes a byte-identical file; so must this one (from-mid files
      // were built by restore, which writes what zc.zrs's secondary would have).
      const [mine, theirs] = [await readFile(path), await readFile(fixturePath('zodb', c.source, 'Data.fs'))];
      expect(mine.length).toBe(theirs.length);
      expect(mine.equals(theirs), 'byte-identical Data.fs').toBe(true);
      if (hasBlobs) {
        const want = await filesUnder(join(src, 'blobs'));
        const got = await filesUnder(blobDir!);
        for (const k of [...got.keys()]) if (k.startsWith('tmp')) got.delete(k);
        expect([...got.keys()].sort()).toEqual([...want.keys()].sort());
        for (const [k, v] of want) expect(got.get(k)?.equals(v), `blob ${k}`).toBe(true);
        // zc.zrs's own secondary loses this one (B with blocks = 0); ours keeps a 0-byte file.
        const empty = got.get('0x00/0x00/0x00/0x00/0x00/0x00/0x00/0x02/0x03f9b75a26666666.blob');
        expect(empty?.length).toBe(0);
      }
    } finally {
      await source.close();
    }
  });
});
