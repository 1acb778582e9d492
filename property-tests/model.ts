// Model-based simulation of a replicated cluster: fast-check generates a
// cluster shape, a seed for the simulated network, and a list of commands
// (Commit, Undo, Partition, Heal, Reset, HalfOpen, Corrupt, CrashNode,
// RestartNode, Reconfigure, Disk (slow, full, ok), AdvanceTime). The model is the cluster's
// configuration; the invariants are checked by the harness after every
// step, then a liveness phase heals everything and asserts convergence.
// Shared by the vitest properties and the `sim`/`soak` scripts.

import fc from 'fast-check';
import type { SecondaryProtocol } from '../src/replication/secondary.js';
import { InvariantViolationError, SimCluster, describeOp, type DiskMode, type SimClusterOptions, type SimOp, type SimStats } from '../src/sim/index.js';

/** The secondaries every generated cluster has. */
export const SECONDARIES = ['s1', 's2', 's3'] as const;
const NODES = ['p', ...SECONDARIES] as const;

export interface ClusterModel {
  upstream: Map<string, string>;
  down: Set<string>;
  commits: number;
}

/** What one simulated run was and did. */
export interface RunRecord {
  trace: string[];
  seed: number;
  cluster: string;
  commands: string;
  stats: SimStats | null;
}

/** The last simulated run, so a failing or replayed case can print its trace. */
export const lastRun: RunRecord = { trace: [], seed: 0, cluster: '', commands: '', stats: null };

/** The last run that failed: the counterexample fast-check reports (after shrinking, too). */
export const lastFailure: { run: RunRecord | null } = { run: null };

/** Totals over every run in this process (the soak script reports them). */
export const totals = { runs: 0, faults: 0, events: 0, commits: 0, virtualMs: 0, runsWithCommits: 0, unsyncedCrashes: 0, heartbeatTimeouts: 0 };

/**
 * Property runs still going. A time limit (fast-check's
 * interruptAfterTimeLimit) ends a property while a run is under way and
 * abandons that run, which still removes its cluster's files when it ends:
 * a test file waits for them (settleRuns) before it is done.
 */
const runsInFlight = new Set<Promise<unknown>>();

/** Run `run` as a property run that settleRuns waits for. */
export async function trackedRun<T>(run: () => Promise<T>): Promise<T> {
  const p = run();
  runsInFlight.add(p);
  try {
    return await p;
  } finally {
    runsInFlight.delete(p);
  }
}

/** Wait until no property run is under way (abandoned ones included). */
export async function settleRuns(): Promise<void> {
  while (runsInFlight.size > 0) await Promise.allSettled([...runsInFlight]);
}

/** One command = one harness operation (or a stretch of virtual time), then the invariants. */
class OpCommand implements fc.AsyncCommand<ClusterModel, SimCluster> {
  constructor(
    readonly op: SimOp | { kind: 'advance'; ms: number },
    private readonly precondition: (m: ClusterModel) => boolean,
    private readonly update: (m: ClusterModel) => void = () => undefined,
  ) {}

  check(m: Readonly<ClusterModel>): boolean {
    return this.precondition(m as ClusterModel);
  }

  async run(m: ClusterModel, cluster: SimCluster): Promise<void> {
    if (this.op.kind === 'advance') await cluster.advance(this.op.ms);
    else if (this.op.kind === 'corrupt' && this.op.from === UPSTREAM) {
      // Flip a byte on the link the secondary replicates over right now.
      await cluster.apply({ ...this.op, from: cluster.upstreamOf(this.op.to) ?? 'p' });
    } else await cluster.apply(this.op);
    this.update(m);
    cluster.assertInvariants();
  }

  toString(): string {
    if (this.op.kind === 'advance') return `advance ${this.op.ms} ms`;
    return describeOp(this.op);
  }
}

/**
 * Several steps as one command, run with no time between them unless one
 * is an advance: how a generated run reaches states a single step rarely
 * does (a crash while a sync is under way, a partition the heartbeats see).
 */
class StepsCommand implements fc.AsyncCommand<ClusterModel, SimCluster> {
  constructor(
    private readonly steps: OpCommand[],
    private readonly precondition: (m: ClusterModel) => boolean,
    private readonly update: (m: ClusterModel) => void = () => undefined,
  ) {}

  check(m: Readonly<ClusterModel>): boolean {
    return this.precondition(m as ClusterModel);
  }

  async run(m: ClusterModel, cluster: SimCluster): Promise<void> {
    for (const step of this.steps) await step.run(m, cluster);
    this.update(m);
  }

  toString(): string {
    return this.steps.map(String).join(', then ');
  }
}

/** Stands for the secondary's current upstream in corrupt commands. */
const UPSTREAM = 'upstream';

const node = fc.constantFrom(...NODES);
const secondary = fc.constantFrom(...SECONDARIES);
const pair = fc.tuple(node, node).filter(([a, b]) => a !== b);

export const COMMAND_KINDS = ['commit', 'undo', 'partition', 'heal', 'reset', 'halfOpen', 'crash', 'restart', 'reconfigure', 'corrupt', 'disk', 'advance', 'crashMidSync', 'stall'] as const;
export type CommandKind = (typeof COMMAND_KINDS)[number];

export interface CommandOptions {
  /** Only these commands (default: all). */
  kinds?: readonly CommandKind[];
  /** Record sizes commits choose from. */
  recordBytes?: readonly number[];
  /** Include flipped bytes (primary/upstream -> secondary). */
  corruption?: boolean;
  /** Include crashes of the primary. */
  crashPrimary?: boolean;
}

/** The command arbitraries, with their preconditions and model updates. */
export function commandArbitraries(options: CommandOptions = {}): Array<fc.Arbitrary<fc.AsyncCommand<ClusterModel, SimCluster>>> {
  const up = (n: string) => (m: ClusterModel) => !m.down.has(n);
  const all: Record<CommandKind, fc.Arbitrary<fc.AsyncCommand<ClusterModel, SimCluster>>> = {
    commit: fc
      .record({ records: fc.integer({ min: 1, max: 5 }), bytes: fc.constantFrom(...(options.recordBytes ?? [16, 200, 3000, 40_000])), twice: fc.integer({ min: 0, max: 4 }).map((x) => x === 0) })
      .map(({ records, bytes, twice }) => new OpCommand({ kind: 'commit', records, bytes, twice }, up('p'), (m) => void (m.commits += 1))),
    undo: fc
      .record({ back: fc.integer({ min: 0, max: 2 }), count: fc.integer({ min: 1, max: 2 }) })
      .map(({ back, count }) => new OpCommand({ kind: 'undo', back, count }, (m) => up('p')(m) && m.commits > 0)),
    partition: fc.tuple(pair, fc.boolean()).map(([[a, b], oneWay]) => new OpCommand({ kind: 'partition', a, b, oneWay }, () => true)),
    heal: fc.constantFrom('deliver' as const, 'reset' as const).map((mode) => new OpCommand({ kind: 'heal', mode }, () => true)),
    reset: pair.map(([a, b]) => new OpCommand({ kind: 'reset', a, b }, () => true)),
    halfOpen: fc.tuple(pair, fc.boolean()).map(([[a, b], first]) => new OpCommand({ kind: 'halfOpen', a, b, dead: first ? a : b }, () => true)),
    crash: fc
      .tuple(node.filter((n) => options.crashPrimary !== false || n !== 'p'), fc.constantFrom('process' as const, 'host' as const))
      .map(([n, style]) => new OpCommand({ kind: 'crash', node: n, style }, up(n), (m) => void m.down.add(n))),
    restart: node.map((n) => new OpCommand({ kind: 'restart', node: n }, (m) => m.down.has(n), (m) => void m.down.delete(n))),
    reconfigure: fc.tuple(fc.integer({ min: 1, max: SECONDARIES.length }), fc.nat()).map(([i, j]) => {
      const name = NODES[i]!;
      const upstream = NODES[j % i]!;
      return new OpCommand({ kind: 'reconfigure', node: name, upstream }, () => true, (m) => void m.upstream.set(name, upstream));
    }),
    corrupt: secondary.map((s) => new OpCommand({ kind: 'corrupt', from: UPSTREAM, to: s }, () => true)),
    disk: fc
      .tuple(node, fc.constantFrom<DiskMode>('ok', 'slow', 'full'), fc.constantFrom(20, 300, 2000))
      .map(([n, mode, ms]) => new OpCommand(mode === 'slow' ? { kind: 'disk', node: n, mode, ms } : { kind: 'disk', node: n, mode }, () => true)),
    advance: fc.oneof(fc.integer({ min: 1, max: 3000 }), fc.integer({ min: 1, max: 50 })).map((ms) => new OpCommand({ kind: 'advance', ms }, () => true)),
    // A slow disk, a commit that reaches the node, and a crash before its sync returns.
    crashMidSync: fc
      .tuple(node.filter((n) => options.crashPrimary !== false || n !== 'p'), fc.constantFrom('process' as const, 'host' as const), fc.integer({ min: 0, max: 80 }))
      .map(([n, style, afterMs]) => {
        const steps = [
          new OpCommand({ kind: 'disk', node: n, mode: 'slow', ms: 2000 }, () => true),
          new OpCommand({ kind: 'commit', records: 2, bytes: 3000 }, () => true),
          new OpCommand({ kind: 'advance', ms: afterMs }, () => true),
          new OpCommand({ kind: 'crash', node: n, style }, () => true),
        ];
        return new StepsCommand(steps, (m) => up('p')(m) && up(n)(m), (m) => {
          m.commits += 1;
          m.down.add(n);
        });
      }),
    // A partition long enough for heartbeats to take the link for dead.
    stall: fc.tuple(pair, fc.integer({ min: 1200, max: 3000 })).map(([[a, b], ms]) => new StepsCommand([new OpCommand({ kind: 'partition', a, b, oneWay: false }, () => true), new OpCommand({ kind: 'advance', ms }, () => true)], () => true)),
  };
  const kinds = options.kinds ?? COMMAND_KINDS.filter((k) => k !== 'corrupt' || options.corruption !== false);
  // Commits and time weigh double: without them the faults have nothing to act on.
  return kinds.flatMap((k) => (k === 'commit' || k === 'advance' ? [all[k], all[k]] : [all[k]]));
}

/** A cluster shape: each secondary follows 'p' or an earlier secondary. */
export const clusterShape = fc.tuple(fc.nat(), fc.nat()).map(([a, b]) => [
  { name: 's1', upstream: 'p' },
  { name: 's2', upstream: ['p', 's1'][a % 2]! },
  { name: 's3', upstream: ['p', 's1', 's2'][b % 3]! },
]);

export interface PropertyOptions extends CommandOptions {
  maxCommands?: number;
  /** fast-check's replayPath for the command list (replaying a shrunk counterexample). */
  replayPath?: string;
  /** Cluster options besides seed and shape (network sizes, keep-alive …). */
  cluster?: Omit<SimClusterOptions, 'seed' | 'secondaries'>;
  livenessMs?: number;
}

/** Virtual ms a generated run lets its cluster start before the first command. */
const START_MS = 300;

/**
 * The property: for every seed, cluster shape and command list, the
 * invariants hold after every step and the cluster converges afterwards.
 */
export function clusterProperty(options: PropertyOptions = {}): fc.IAsyncPropertyWithHooks<[number, Array<{ name: string; upstream: string }>, SecondaryProtocol, Iterable<fc.AsyncCommand<ClusterModel, SimCluster>>]> {
  return fc.asyncProperty(
    fc.integer({ min: 0, max: 0x7fffffff }),
    clusterShape,
    fc.constantFrom<SecondaryProtocol>('native', 'native', 'zrs2.1', 'zrs2.0'),
    // size 'max': up to maxCommands (fast-check's default size stops at 10).
    fc.commands(commandArbitraries(options), { maxCommands: options.maxCommands ?? 25, size: 'max', replayPath: options.replayPath }),
    (seed, shape, protocol, commands) => {
      const about = {
        cluster: `${shape.map((s) => `${s.name}<-${s.upstream}`).join(' ')} (${options.cluster?.protocol ?? protocol})`,
        // Read once the run is over: before it, the list names no command yet.
        get commands(): string {
          return String(commands);
        },
      };
      return recordedRun({ protocol, ...options.cluster, seed, secondaries: shape }, about, async (cluster) => {
        const model: ClusterModel = { upstream: new Map(shape.map((s) => [s.name, s.upstream])), down: new Set(), commits: 0 };
        // The secondaries connect and catch up first: faults then meet links that carry something.
        await cluster.advance(START_MS);
        await fc.asyncModelRun(() => ({ model, real: cluster }), commands);
        await cluster.converge(options.livenessMs ?? 120_000);
        cluster.assertInvariants();
      });
    },
  );
}

/**
 * Run `body` on a fresh cluster and close it; record the run (lastRun,
 * lastFailure, totals). A failure is rethrown with the trace's tail.
 */
export async function recordedRun(
  options: SimClusterOptions,
  about: { cluster: string; commands: string },
  body: (cluster: SimCluster) => Promise<void>,
): Promise<void> {
  return trackedRun(() => runRecorded(options, about, body));
}

async function runRecorded(options: SimClusterOptions, about: { cluster: string; commands: string }, body: (cluster: SimCluster) => Promise<void>): Promise<void> {
  const cluster = await SimCluster.create(options);
  let failure: Error | null = null;
  try {
    await body(cluster);
  } catch (err) {
    failure = withTrace(err, cluster);
  }
  const stats = cluster.result().stats;
  await cluster.close();
  const run: RunRecord = { trace: cluster.trace, seed: options.seed, ...about, stats };
  Object.assign(lastRun, run);
  totals.runs += 1;
  totals.faults += stats.faults;
  totals.events += stats.steps + stats.ops;
  totals.commits += stats.commits;
  totals.virtualMs += stats.virtualMs;
  if (stats.commits > 0) totals.runsWithCommits += 1;
  totals.unsyncedCrashes += stats.unsyncedCrashes;
  totals.heartbeatTimeouts += cluster.trace.filter((l) => l.includes('the link is taken for dead')).length;
  if (failure) {
    lastFailure.run = run;
    throw failure;
  }
}

/** Attach the readable trace (its tail) to a failure, so fast-check prints it. */
export function withTrace(err: unknown, cluster: SimCluster, lines = Number(process.env.SIM_TRACE_LINES ?? 120)): Error {
  const trace = cluster.trace;
  const tail = trace.slice(-lines).join('\n');
  const head = err instanceof InvariantViolationError ? err.message : err instanceof Error ? (err.stack ?? err.message) : String(err);
  const e = new Error(
    `${head}\n--- trace (last ${Math.min(lines, trace.length)} of ${trace.length} lines; the replay command prints all of it) ---\n${tail}`,
  );
  return e;
}

/**
 * The fast-check seed: SIM_SEED when set; a fixed one under CI, so a landing
 * is judged on a known set of runs; otherwise fresh each run, to explore
 * (a failure prints its seed and path for replay either way).
 */
export function simSeed(): number | undefined {
  const n = Number(process.env.SIM_SEED);
  if (Number.isInteger(n)) return n;
  return process.env.CI ? CI_SEED : undefined;
}

/** The seed CI runs the model with (any fixed value; changing it explores a new set). */
export const CI_SEED = 20261127;

/** Runs per property, from SIM_RUNS (default `fallback`). */
export function simRuns(fallback: number): number {
  const n = Number(process.env.SIM_RUNS);
  return Number.isFinite(n) && n > 0 ? Math.floor(n) : fallback;
}
