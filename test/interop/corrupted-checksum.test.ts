// The corrupted-checksum replay of replay-into-real-secondary.json, into a
// TypeScript Secondary: the first md5 byte of transaction #2's C message is
// flipped. zc.zrs's secondary logged "Bad checksum", closed the connection
// and kept transactions #0 and #1 (file = the fixture's first 746 bytes).
// Ours must stop at the same place, log a typed error, and reconnect from
// the last good tid; fed the rest of the history then, it ends byte-identical.

import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Secondary } from '../../src/replication/secondary.js';
import { encodeMessage, decodeMessage } from '../../src/wire/zrs2.js';
import { cleanupTempDirs, fixturePath, tempDir } from '../helpers/fixtures.js';
import { waitForTid } from '../replication/helpers.js';
import { framed, logCollector, readBin, readTranscriptJson, restream, sentBytes, splitTransactions, startFakePrimary } from './helpers.js';

afterAll(cleanupTempDirs);

interface ReplayJson {
  'replay basic with corrupted checksum': {
    handshake_received_hex: string;
    secondary_closed_connection: boolean;
    secondary_lastTransaction: string;
    corruption: string;
    tid_of_txn_before_corrupted_one: string;
    secondary_file_size: number;
    fixture_pos_of_corrupted_txn: number;
    secondary_file_is_prefix_of_fixture: boolean;
  };
}

describe('recorded stream helpers', () => {
  it('restream() of transactions #27.. from tid #26 is the recorded from-mid stream', async () => {
    const txns = splitTransactions(await readBin('basic-zrs2.0-from-zero.bin'));
    const mid = await readTranscriptJson('basic-zrs2.0-from-mid.json');
    const start = Buffer.from(mid.start_tid, 'hex');
    const i = txns.findIndex((t) => t.tid.equals(start));
    expect(i).toBe(26);
    expect(restream(txns.slice(i + 1), start).equals(await readBin('basic-zrs2.0-from-mid.bin'))).toBe(true);
  });
});

describe('corrupted checksum, as replayed into the real zc.zrs secondary', () => {
  it('stops before the bad transaction, keeps the earlier ones, reconnects from the last good tid', async () => {
    const expected = (await readTranscriptJson<ReplayJson>('replay-into-real-secondary.json'))['replay basic with corrupted checksum'];
    expect(expected.corruption).toMatch(/txn index 2/);
    const bin = await readBin('basic-zrs2.0-from-zero.bin');
    const txns = splitTransactions(bin);
    const handshake = sentBytes(await readTranscriptJson('basic-zrs2.0-from-zero.json'));
    expect(handshake.toString('hex')).toBe(expected.handshake_received_hex);

    // Flip the first digest byte of transaction #2's C message (same length: 'A' -> '@').
    const bad = txns[2]!;
    const c = bad.frames.at(-1)!;
    const m = decodeMessage(c.payload);
    if (m.type !== 'C' || m.digest === null) throw new Error('transaction #2 does not end with a C carrying a digest');
    const digest = Buffer.from(m.digest);
    digest[0]! ^= 1;
    const corruptedC = encodeMessage({ type: 'C', digest });
    expect(corruptedC.length).toBe(c.payload.length);
    const corrupted = framed(txns.flatMap((t) => t.frames.map((f) => (f === c ? corruptedC : f.payload))));
    expect(corrupted.length).toBe(bin.length);

    const goodTid = Buffer.from(expected.tid_of_txn_before_corrupted_one, 'hex');
    expect(txns[1]!.tid.equals(goodTid)).toBe(true);

    const dir = await tempDir('zrs-interop-corrupt-');
    const path = join(dir, 'Data.fs');
    const log = logCollector();
    let release!: () => void;
    const checked = new Promise<void>((resolve) => (release = resolve));
    const fake = await startFakePrimary(handshake.length, async (conn, index, hs) => {
      if (index === 0) conn.socket.write(corrupted);
      else {
        // What a primary would send to a secondary starting at its handshake tid.
        await checked;
        const start = hs.subarray(hs.length - 8);
        const from = txns.findIndex((t) => t.tid.equals(start));
        conn.socket.write(restream(txns.slice(from + 1), start));
      }
    });
    try {
      const secondary = await Secondary.open({
        path,
        replicateFrom: fake.address,
        protocol: 'zrs2.0',
        fsync: false,
        log: log.log,
        reconnect: { initialMs: 10, maxMs: 50, jitter: 0 },
      });
      try {
        // The secondary drops the connection and comes back with its last good tid.
        const second = await fake.connection(1);
        const hs = await second.handshake;
        expect(hs.subarray(0, 10).toString('hex')).toBe('000000067a7273322e30');
        expect(hs.subarray(10).toString('hex')).toBe(`00000008${expected.tid_of_txn_before_corrupted_one}`);
        expect(fake.connections[0]!.socket.destroyed || fake.connections[0]!.socket.readableEnded).toBe(true);

        expect(secondary.storage.lastTransaction().toString('hex')).toBe(expected.secondary_lastTransaction);
        const file = await readFile(path);
        const fixture = await readFile(fixturePath('zodb', 'basic', 'Data.fs'));
        expect(file.length).toBe(expected.secondary_file_size);
        expect(file.equals(fixture.subarray(0, expected.fixture_pos_of_corrupted_txn))).toBe(true);

        const stopped = log.lines.find((l) => l.level === 'warn' && /stopped/.test(l.message));
        expect(stopped?.fields?.error).toBe('ChecksumMismatchError');

        release();
        await waitForTid(secondary, txns.at(-1)!.tid);
        expect(fake.connections.length).toBe(2);
      } finally {
        release();
        await secondary.close();
      }
    } finally {
      await fake.close();
    }
    expect((await readFile(path)).equals(await readFile(fixturePath('zodb', 'basic', 'Data.fs')))).toBe(true);
  });
});
