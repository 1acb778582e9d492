// Fuzzed zrs2 frames into a TypeScript Secondary. A fake primary sends the
// recorded basic stream's transactions #0 and #1 intact, waits until they are
// applied, then sends transaction #2 with one control message (T, S or C)
// mutated, truncated, given an unknown opcode, or replaced by a pickle that
// calls os.system, followed by the rest of the recording. The secondary must
// log a typed error, drop the connection (it reconnects from #1's tid), and
// commit nothing of transaction #2. fast-check prints the seed on failure.

import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import * as errors from '../../src/errors.js';
import { Secondary } from '../../src/replication/secondary.js';
import { cleanupTempDirs, fixturePath, tempDir } from '../helpers/fixtures.js';
import { waitForTid } from '../replication/helpers.js';
import { framed, logCollector, readBin, readTranscriptJson, sentBytes, splitTransactions, startFakePrimary, type StreamTransaction } from './helpers.js';

afterAll(cleanupTempDirs);

/** Names of the library's typed errors (ZrsError and its subclasses). */
const TYPED_ERRORS = new Set(
  Object.values(errors)
    .filter((v): v is typeof errors.ZrsError => typeof v === 'function' && (v === errors.ZrsError || v.prototype instanceof errors.ZrsError))
    .map((C) => C.name), // each class sets `name` to its class name
);

/** A protocol-0 pickle that would run `os.system('touch …')` if anything ever called it. */
const EVIL = (marker: string): Buffer => Buffer.from(`cos\nsystem\n(S'touch ${marker}'\ntR.`, 'latin1');

/** Bytes that are not pickle opcodes at all. */
const UNKNOWN_OPCODES = [0x00, 0x01, 0x21, 0x22, 0x2b, 0x2f, 0x3f, 0x41, 0x5a, 0x60, 0x7b, 0x99, 0xa0, 0xc8, 0xfe, 0xff];

type Mutation =
  | { kind: 'flip'; frame: number; at: number; xor: number }
  | { kind: 'truncate'; frame: number; keep: number }
  | { kind: 'opcode'; frame: number; at: number; op: number }
  | { kind: 'overwrite'; frame: number; at: number; bytes: Uint8Array }
  | { kind: 'evil'; frame: number };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), frame: fc.nat(), at: fc.nat(), xor: fc.integer({ min: 1, max: 255 }) }),
  fc.record({ kind: fc.constant('truncate' as const), frame: fc.nat(), keep: fc.nat() }),
  fc.record({ kind: fc.constant('opcode' as const), frame: fc.nat(), at: fc.nat(), op: fc.constantFrom(...UNKNOWN_OPCODES) }),
  fc.record({ kind: fc.constant('overwrite' as const), frame: fc.nat(), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) }),
  fc.record({ kind: fc.constant('evil' as const), frame: fc.nat() }),
);

/** Transaction #2's payloads with one control message changed (always to different bytes). */
function mutate(txn: StreamTransaction, m: Mutation, marker: string): Buffer[] {
  const controls = txn.frames.map((f, i) => (f.control ? i : -1)).filter((i) => i >= 0);
  const target = controls[m.frame % controls.length]!;
  const original = txn.frames[target]!.payload;
  let changed: Buffer;
  switch (m.kind) {
    case 'flip':
      changed = Buffer.from(original);
      changed[m.at % changed.length]! ^= m.xor;
      break;
    case 'truncate':
      changed = original.subarray(0, m.keep % original.length);
      break;
    case 'opcode': {
      const at = m.at % (original.length + 1);
      changed = Buffer.concat([original.subarray(0, at), Buffer.from([m.op]), original.subarray(at)]);
      break;
    }
    case 'overwrite': {
      changed = Buffer.from(original);
      const at = m.at % changed.length;
      changed.set(m.bytes.subarray(0, changed.length - at), at);
      if (changed.equals(original)) changed[at]! ^= 0xff;
      break;
    }
    case 'evil':
      changed = EVIL(marker);
      break;
  }
  return txn.frames.map((f, i) => (i === target ? changed : f.payload));
}

describe('fuzzed control messages into a zrs2 secondary', () => {
  it('close the connection with a typed error and commit nothing of the transaction', async () => {
    const bin = await readBin('basic-zrs2.0-from-zero.bin');
    const txns = splitTransactions(bin);
    const handshake = sentBytes(await readTranscriptJson('basic-zrs2.0-from-zero.json'));
    const fixture = await readFile(fixturePath('zodb', 'basic', 'Data.fs'));
    const prefix = framed(txns.slice(0, 2).flatMap((t) => t.frames.map((f) => f.payload)));
    const rest = framed(txns.slice(3).flatMap((t) => t.frames.map((f) => f.payload)));
    const goodTid = txns[1]!.tid;
    expect(TYPED_ERRORS.has('ProtocolError') && TYPED_ERRORS.has('ChecksumMismatchError')).toBe(true);

    await fc.assert(
      fc.asyncProperty(mutation, async (m) => {
        const dir = await tempDir('zrs-interop-fuzz-');
        const path = join(dir, 'Data.fs');
        const marker = join(dir, 'PWNED');
        const log = logCollector();
        let secondary: Secondary | null = null;
        let applied!: () => void;
        const firstTwo = new Promise<void>((resolve) => (applied = resolve));
        const fake = await startFakePrimary(handshake.length, async (conn, index) => {
          if (index > 0) return; // the reconnection: nothing more to send
          conn.socket.write(prefix);
          await firstTwo;
          conn.socket.write(framed(mutate(txns[2]!, m, marker)));
          conn.socket.write(rest);
        });
        try {
          secondary = await Secondary.open({
            path,
            replicateFrom: fake.address,
            protocol: 'zrs2.0',
            fsync: false,
            log: log.log,
            reconnect: { initialMs: 5, maxMs: 20, jitter: 0 },
          });
          await waitForTid(secondary, goodTid, 10_000);
          applied();
          // Dropped and back, from the last good tid.
          const hs = await (await fake.connection(1)).handshake;
          expect(hs.subarray(10).toString('hex')).toBe(`00000008${goodTid.toString('hex')}`);
          const stopped = log.lines.filter((l) => l.level === 'warn' && /stopped/.test(l.message));
          expect(stopped.length, JSON.stringify(log.lines)).toBeGreaterThan(0);
          expect(TYPED_ERRORS.has(String(stopped[0]!.fields?.error)), JSON.stringify(stopped[0])).toBe(true);
          expect(secondary.storage.lastTransaction().equals(goodTid)).toBe(true);
          const file = await readFile(path);
          expect(file.equals(fixture.subarray(0, file.length))).toBe(true);
          expect(file.length).toBe(fixture.indexOf(txns[2]!.tid, 4));
          await expect(readFile(marker)).rejects.toMatchObject({ code: 'ENOENT' });
        } finally {
          await secondary?.close();
          await fake.close();
        }
      }),
      {
        numRuns: 40,
        // Always covered, whatever the seed: os.system in T, S and C; an unknown opcode first; an empty C.
        examples: [[{ kind: 'evil', frame: 0 }], [{ kind: 'evil', frame: 1 }], [{ kind: 'evil', frame: 99 }], [{ kind: 'opcode', frame: 0, at: 0, op: 0xff }], [{ kind: 'truncate', frame: 99, keep: 0 }]],
      },
    );
  });
});
