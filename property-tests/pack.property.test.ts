// Packs at random points of a replicating chain (primary -> s1 -> s2, real
// loopback sockets and files): each node packs its own file, to a random
// earlier transaction, while commits go on, and secondaries restart between
// (s1 keeps its Unix socket, so s2 reconnects to it). Whatever the order,
// at the end every node holds the primary's objects, no node is refused as
// diverged, and each node's transactions are the primary's, in order,
// ending at its last. SIM_RUNS sets the number of runs; a failure prints
// its seed and path, and SIM_SEED=… SIM_PATH=… replays it.

import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, expect, it } from 'vitest';
import { StorageClosedError } from '../src/errors.js';
import { Primary } from '../src/replication/primary.js';
import { Secondary } from '../src/replication/secondary.js';
import { tidToSeconds } from '../src/storage/timestamp.js';
import { cleanupTempDirs, tempDir } from '../test/helpers/fixtures.js';
import { FAST_RECONNECT } from '../test/replication/netHelpers.js';
import { allTransactions, commitMany, waitForTid } from '../test/replication/helpers.js';
import { simRuns, simSeed } from './model.js';

afterAll(cleanupTempDirs);

type Op =
  | { kind: 'commit'; count: number }
  /** Pack `node` to the transaction `back` from the last (clamped), without waiting: the next ops run during it. */
  | { kind: 'pack'; node: 'p' | 's1' | 's2'; back: number }
  | { kind: 'restart'; node: 's1' | 's2' };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('commit' as const), count: fc.integer({ min: 1, max: 8 }) }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('pack' as const), node: fc.constantFrom('p' as const, 's1' as const, 's2' as const), back: fc.integer({ min: 0, max: 20 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('restart' as const), node: fc.constantFrom('s1' as const, 's2' as const) }) },
);

async function runOps(ops: Op[]): Promise<void> {
  const dir = await tempDir('zrs-packprop-');
  const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
  const s1Socket = join(dir, 's1.sock');
  const open = (name: 's1' | 's2'): Promise<Secondary> =>
    Secondary.open({
      path: join(dir, `${name}.fs`),
      replicateFrom: name === 's1' ? primary.address : s1Socket,
      ...(name === 's1' ? { replicateTo: s1Socket } : {}),
      fsync: false,
      reconnect: FAST_RECONNECT,
      auditPath: null,
    });
  const nodes = { s1: await open('s1'), s2: await open('s2') };
  const packs: Array<Promise<unknown>> = [];
  const serials = new Map<string, Buffer>();
  const tids: Buffer[] = [];
  /** The latest pack time any node packed to: every transaction after it is on every node, packed nowhere. */
  let packedTo: Buffer = Buffer.alloc(8);
  try {
    tids.push(...(await commitMany(primary.storage, 3, 3, serials)));
    for (const op of ops) {
      if (op.kind === 'commit') tids.push(...(await commitMany(primary.storage, op.count, 3, serials)));
      else if (op.kind === 'restart') {
        await nodes[op.node].close();
        nodes[op.node] = await open(op.node);
      } else {
        const at = tidToSeconds(tids[Math.max(0, tids.length - 1 - op.back)]!);
        const node = op.node === 'p' ? primary.storage : nodes[op.node];
        // Refusals that are no fault: a restart closing the node stops its pack (a StorageClosedError, or the
        // secondary's own refusal once closed), and a node packs once at a time.
        packs.push(
          node.pack(at).then(
            (report) => {
              if (report.packed && Buffer.compare(report.packTid, packedTo) > 0) packedTo = report.packTid;
            },
            (err: Error) => (err instanceof StorageClosedError || err.message === 'the secondary is closed' || /: a pack is already running$/.test(err.message) ? null : Promise.reject(err)),
          ),
        );
      }
    }
    await Promise.all(packs);
    const last = (await commitMany(primary.storage, 1, 3, serials))[0]!;
    for (const s of Object.values(nodes)) await waitForTid(s, last);
    // Every transaction the primary committed (its own pack may have dropped some its secondaries still hold).
    const reference = new Set([...tids, last].map((t) => t.toString('hex')));
    for (const [name, s] of Object.entries(nodes)) {
      expect(s.diverged, name).toBeNull();
      const mine = (await allTransactions(s.storage)).map((t) => t.tid.toString('hex'));
      // Transactions the primary committed, in order (a pack may drop some), ending at its last; none after the
      // latest pack time is missing (a pack that lost those committed while it ran would be caught here).
      expect(mine.filter((t) => !reference.has(t)), name).toEqual([]);
      expect([...mine].sort(), name).toEqual(mine);
      expect(mine.at(-1), name).toBe(last.toString('hex'));
      const held = new Set(mine);
      const after = [...reference].filter((t) => t > packedTo.toString('hex'));
      expect(after.filter((t) => !held.has(t)), name).toEqual([]);
      for (const oid of serials.keys()) {
        const [want, got] = await Promise.all([primary.storage.load(Buffer.from(oid, 'hex')), s.storage.load(Buffer.from(oid, 'hex'))]);
        expect({ name, oid, data: got.data.toString('hex'), tid: got.tid.toString('hex') }).toEqual({ name, oid, data: want.data.toString('hex'), tid: want.tid.toString('hex') });
      }
    }
  } finally {
    await Promise.allSettled(packs);
    await nodes.s2.close();
    await nodes.s1.close();
    await primary.close();
  }
}

it('every node packing its own file at random points still holds the primary\'s objects, undiverged', async () => {
  const path = process.env.SIM_PATH;
  await fc.assert(
    fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: 14 }), (ops) => runOps(ops)),
    { numRuns: simRuns(12), seed: simSeed(), ...(path ? { path } : {}), endOnFailure: true },
  );
}, 240_000);
