// Random fault schedules from a seed, for soak runs and quick experiments:
// a workload of commits and undos interleaved with partitions, resets,
// half-open links, flipped bytes, crashes/restarts, chain changes and disk faults.
// The chain stays acyclic: a secondary only ever follows 'p' or an earlier one.

import { seededRandom } from '../ports/random.js';
import type { ScheduledOp, SimOp, SimPlan } from './cluster.js';

export interface RandomPlanOptions {
  /** Number of secondaries the cluster has (s1..sN). Default 2. */
  secondaries?: number;
  /** Operations in the schedule. Default 30. */
  ops?: number;
  /** Largest gap between two operations in virtual ms. Default 400. */
  maxGapMs?: number;
  /** Allow crashing the primary too. Default true. */
  crashPrimary?: boolean;
  /** Allow flipped bytes (primary -> secondary direction). Default true. */
  corruption?: boolean;
  /** Allow chain reconfiguration. Default true. */
  chains?: boolean;
  /** Allow disk faults (slow, full, back to ok). Default true. */
  disks?: boolean;
  livenessMs?: number;
}

/**
 * A random plan for a cluster built with the same number of secondaries.
 *
 * @example
 * const cluster = await SimCluster.create({ seed, secondaries: 3 });
 * const result = await cluster.run(randomPlan(seed, { secondaries: 3 }));
 */
export function randomPlan(seed: number, options: RandomPlanOptions = {}): SimPlan {
  const rnd = seededRandom(seed ^ 0x5eed);
  const int = (n: number): number => Math.floor(rnd.next() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;
  const secondaries = Array.from({ length: options.secondaries ?? 2 }, (_, i) => `s${i + 1}`);
  const nodes = ['p', ...secondaries];
  const upstream = new Map(secondaries.map((s) => [s, 'p']));
  const down = new Set<string>();
  const schedule: ScheduledOp[] = [];
  let at = 0;
  const linkOf = (): [string, string] => {
    const s = pick(secondaries);
    return [upstream.get(s)!, s];
  };
  for (let i = 0; i < (options.ops ?? 30); i++) {
    at += int(options.maxGapMs ?? 400);
    const r = rnd.next();
    let op: SimOp;
    if (r < 0.45) op = { kind: 'commit', records: 1 + int(5), bytes: pick([16, 64, 300, 2000, 20_000]), twice: rnd.next() < 0.2 };
    else if (r < 0.5) op = { kind: 'undo', back: int(3), count: 1 + int(2) };
    else if (r < 0.58) {
      const [a, b] = linkOf();
      op = { kind: 'partition', a, b, oneWay: rnd.next() < 0.3 };
    } else if (r < 0.65) op = { kind: 'heal', mode: rnd.next() < 0.5 ? 'deliver' : 'reset' };
    else if (r < 0.7) {
      const [a, b] = linkOf();
      op = { kind: 'reset', a, b };
    } else if (r < 0.74) {
      const [a, b] = linkOf();
      op = { kind: 'halfOpen', a, b, dead: rnd.next() < 0.5 ? a : b };
    } else if (r < 0.8 && (options.corruption ?? true)) {
      const [a, b] = linkOf();
      op = { kind: 'corrupt', from: a, to: b };
    } else if (r < 0.9) {
      const candidates = nodes.filter((n) => (options.crashPrimary ?? true) || n !== 'p');
      const n = pick(candidates);
      if (down.has(n)) {
        down.delete(n);
        op = { kind: 'restart', node: n };
      } else {
        down.add(n);
        op = { kind: 'crash', node: n, style: rnd.next() < 0.5 ? 'process' : 'host' };
      }
    } else if (r < 0.94 && (options.disks ?? true)) {
      const n = pick(nodes);
      const mode = pick(['ok', 'ok', 'slow', 'full'] as const);
      op = mode === 'slow' ? { kind: 'disk', node: n, mode, ms: pick([20, 300, 2000]) } : { kind: 'disk', node: n, mode };
    } else if (options.chains ?? true) {
      const idx = 1 + int(secondaries.length);
      const s = nodes[idx]!;
      const up = nodes[int(idx)]!;
      upstream.set(s, up);
      op = { kind: 'reconfigure', node: s, upstream: up };
    } else op = { kind: 'commit', records: 1, bytes: 64 };
    schedule.push({ atMs: at, op });
  }
  return { schedule, livenessMs: options.livenessMs ?? 120_000 };
}
