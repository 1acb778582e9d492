// Model-based simulation of failover: fast-check generates a seed and a list
// of commands (Commit, CrashNode, RestartNode, Partition, Heal, Disk, Promote,
// Reconfigure, LoseDisk, Rewind, AdvanceTime) run against a SimCluster; the
// harness checks its invariants after every step (every node's log is a path
// of the history tree: no mixed histories; refused nodes stay put until
// rewound). The end phase heals, rewinds every diverged node, points every
// node at the final primary and requires them all to hold its history.
// The model mirrors the cluster's roles after each command, for preconditions.

import fc from 'fast-check';
import { InvariantViolationError, SimCluster, describeOp, type DiskMode, type SimClusterOptions, type SimOp } from '../src/sim/index.js';
import { trackedRun } from './model.js';

/** What preconditions look at: each node's role, liveness and upstream, and the current primary. */
export interface FailoverModel {
  nodes: string[];
  current: string;
  role: Map<string, 'primary' | 'secondary'>;
  up: Map<string, boolean>;
  upstream: Map<string, string | null>;
  /** Failovers so far, and how many commits were recorded when the current primary took over. */
  failovers: number;
  commitsAtFailover: number;
  /**
   * Redundancy is back since the last failover: a commit on the current
   * primary was acknowledged, so (acks being cumulative) syncReplicas
   * secondaries hold its whole history again.
   */
  redundant: boolean;
}

/** Totals over every run in this process, to show the properties are not vacuous. */
export const failoverTotals = { runs: 0, promotions: 0, splitBrains: 0, refusals: 0, rewindsThatCut: 0, disksLost: 0, acknowledged: 0, failedForCaller: 0 };

/** The last run, so a failure can print its trace. */
export const lastFailoverRun: { trace: string[]; seed: number; commands: string } = { trace: [], seed: 0, commands: '' };

export function observe(m: FailoverModel, cluster: SimCluster): void {
  if (cluster.primaryName !== m.current) {
    m.failovers += 1;
    m.commitsAtFailover = cluster.commits.length;
  }
  m.current = cluster.primaryName;
  m.redundant = m.failovers === 0 || cluster.commits.slice(m.commitsAtFailover).some((r) => r.node === m.current && r.outcome === 'acknowledged');
  for (const n of m.nodes) {
    m.role.set(n, cluster.roleOf(n));
    m.up.set(n, cluster.isUp(n));
    m.upstream.set(n, cluster.upstreamOf(n));
  }
}

const isUp = (m: FailoverModel, n: string): boolean => m.up.get(n) === true;
const isPrimary = (m: FailoverModel, n: string): boolean => m.role.get(n) === 'primary';
const upSecondaries = (m: FailoverModel): string[] => m.nodes.filter((n) => isUp(m, n) && !isPrimary(m, n));
/** The current primary is a primary (it may be down): others can be pointed at it. */
const currentIsPrimary = (m: FailoverModel): boolean => isPrimary(m, m.current);

/** Running nodes, most advanced (newest durable last tid) first; ties by name. */
export function byProgress(cluster: SimCluster, nodes: readonly string[]): string[] {
  const last = (n: string): string => cluster.lastTidOf(n) ?? '';
  return [...nodes].sort((a, b) => (last(a) === last(b) ? (a < b ? -1 : 1) : last(a) < last(b) ? 1 : -1));
}

/** One command: an action on the cluster (choosing its targets from the real state when it runs), then the invariants. */
class FailoverCommand implements fc.AsyncCommand<FailoverModel, SimCluster> {
  constructor(
    private readonly label: string,
    private readonly precondition: (m: FailoverModel) => boolean,
    private readonly action: (m: FailoverModel, cluster: SimCluster) => Promise<void>,
  ) {}

  check(m: Readonly<FailoverModel>): boolean {
    return this.precondition(m as FailoverModel);
  }

  async run(m: FailoverModel, cluster: SimCluster): Promise<void> {
    await this.action(m, cluster);
    observe(m, cluster);
    cluster.assertInvariants();
  }

  toString(): string {
    return this.label;
  }
}

/** A command that is one harness operation. */
function op(o: SimOp, precondition: (m: FailoverModel) => boolean): FailoverCommand {
  return new FailoverCommand(describeOp(o), precondition, (_m, c) => c.apply(o));
}

export type PromoteMode = 'best' | 'worst' | 'any';

async function promote(m: FailoverModel, cluster: SimCluster, mode: PromoteMode, pick: number): Promise<void> {
  const ranked = byProgress(cluster, upSecondaries(m));
  if (ranked.length === 0) return;
  const target = mode === 'best' ? ranked[0]! : mode === 'worst' ? ranked[ranked.length - 1]! : ranked[pick % ranked.length]!;
  failoverTotals.promotions += 1;
  if (m.nodes.some((n) => isUp(m, n) && isPrimary(m, n))) failoverTotals.splitBrains += 1;
  await cluster.apply({ kind: 'promote', node: target, force: true });
}

/** Point `node` at the current primary: a secondary is reconfigured, a stale primary demoted. */
async function follow(m: FailoverModel, cluster: SimCluster, node: string): Promise<void> {
  if (node === m.current) return;
  if (isPrimary(m, node)) await cluster.apply({ kind: 'demote', node, upstream: m.current });
  else if (!isUp(m, node)) await cluster.apply({ kind: 'restart', node, upstream: m.current });
  else if (m.upstream.get(node) !== m.current || cluster.isDiverged(node)) await cluster.apply({ kind: 'reconfigure', node, upstream: m.current });
}

export interface FailoverCommandOptions {
  nodes: readonly string[];
  /**
   * 'chaos': promotions of any secondary at any time (split brains),
   * commits on stale primaries, lost disks anywhere, rewinds.
   * 'durability': the only failover is losing the current primary's disk
   * and promoting a secondary chosen by `promote` (default the most advanced).
   */
  mode: 'chaos' | 'durability';
  promote?: PromoteMode;
}

export function failoverCommands(o: FailoverCommandOptions): Array<fc.Arbitrary<fc.AsyncCommand<FailoverModel, SimCluster>>> {
  const node = fc.constantFrom(...o.nodes);
  const pair = fc.tuple(node, node).filter(([a, b]) => a !== b);
  const anyPrimaryUp = (m: FailoverModel): boolean => m.nodes.some((n) => isUp(m, n) && isPrimary(m, n));
  const canRestart = (n: string) => (m: FailoverModel) => !isUp(m, n) && (isPrimary(m, n) || m.upstream.get(n) != null || (m.current !== n && currentIsPrimary(m)));
  const chaos = o.mode === 'chaos';

  const commit = fc
    .record({ records: fc.integer({ min: 1, max: 4 }), bytes: fc.constantFrom(16, 200, 3000), stale: chaos ? fc.boolean() : fc.constant(false) })
    .map(
      ({ records, bytes, stale }) =>
        new FailoverCommand(`commit ${records}×${bytes}B${stale ? ' on a stale primary' : ''}`, anyPrimaryUp, async (m, c) => {
          const others = m.nodes.filter((n) => n !== m.current && isUp(m, n) && isPrimary(m, n));
          const target = stale && others.length > 0 ? others[0]! : isUp(m, m.current) && isPrimary(m, m.current) ? m.current : (others[0] ?? m.current);
          await c.apply({ kind: 'commit', records, bytes, node: target });
        }),
    );
  const crash = fc
    .tuple(node, fc.constantFrom('process' as const, 'host' as const))
    .map(([n, style]) => op({ kind: 'crash', node: n, style }, (m) => isUp(m, n)));
  const restart = node.map((n) => new FailoverCommand(`restart ${n}`, canRestart(n), (m, c) => c.apply({ kind: 'restart', node: n, ...(m.upstream.get(n) == null && !isPrimary(m, n) ? { upstream: m.current } : {}) })));
  const partition = fc.tuple(pair, fc.boolean()).map(([[a, b], oneWay]) => op({ kind: 'partition', a, b, oneWay }, () => true));
  const heal = fc.constantFrom('deliver' as const, 'reset' as const).map((mode) => op({ kind: 'heal', mode }, () => true));
  const advance = fc.oneof(fc.integer({ min: 1, max: 3000 }), fc.integer({ min: 1, max: 100 })).map((ms) => new FailoverCommand(`advance ${ms} ms`, () => true, (_m, c) => c.advance(ms)));
  // Slow disks keep commits in doubt longer; full ones fail writes (the end phase makes every disk ok).
  const disk = fc
    .tuple(node, fc.constantFrom<DiskMode>(...(chaos ? (['ok', 'slow', 'full'] as const) : (['ok', 'slow'] as const))), fc.constantFrom(20, 300, 2000))
    .map(([n, mode, ms]) => op(mode === 'slow' ? { kind: 'disk', node: n, mode, ms } : { kind: 'disk', node: n, mode }, () => true));
  // Then a few hundred virtual ms: the handshake (and a refusal) happens within the command.
  const reconfigure = node.map(
    (n) =>
      new FailoverCommand(`point ${n} at the current primary`, (m) => currentIsPrimary(m) && n !== m.current, async (m, c) => {
        await follow(m, c, n);
        await c.advance(300);
      }),
  );

  if (chaos) {
    const promoteCmd = fc
      .tuple(fc.constantFrom<PromoteMode>('best', 'any'), fc.nat({ max: 5 }))
      .map(([mode, pick]) => new FailoverCommand(`promote ${mode === 'best' ? 'the most advanced secondary' : `secondary #${pick}`}`, (m) => upSecondaries(m).length > 0, (m, c) => promote(m, c, mode, pick)));
    // Some other node stays up, so the end phase always finds one holding data.
    const loseDisk = node.map((n) =>
      new FailoverCommand(`lose the disk of ${n}`, (m) => m.nodes.some((o) => o !== n && isUp(m, o)), async (_m, c) => {
        failoverTotals.disksLost += 1;
        await c.apply({ kind: 'loseDisk', node: n });
      }),
    );
    const rewind = fc.nat({ max: 5 }).map((pick) =>
      new FailoverCommand(`rewind a diverged node (else node #${pick})`, (m) => currentIsPrimary(m) && m.nodes.length > 1, async (m, c) => {
        const candidates = m.nodes.filter((n) => n !== m.current);
        const diverged = candidates.filter((n) => c.isDiverged(n));
        const target = diverged.length > 0 ? diverged[pick % diverged.length]! : candidates[pick % candidates.length]!;
        await c.apply({ kind: 'rewind', node: target, upstream: m.current });
      }),
    );
    // Both sides of a split brain take writes: their histories fork.
    const commitEverywhere = fc.constantFrom(16, 3000).map(
      (bytes) =>
        new FailoverCommand(`commit 1×${bytes}B on every running primary`, anyPrimaryUp, async (m, c) => {
          for (const n of m.nodes) if (isUp(m, n) && isPrimary(m, n)) await c.apply({ kind: 'commit', records: 1, bytes, node: n });
        }),
    );
    // fc.commands picks uniformly among these: repeats weigh the mix.
    return [commit, commit, commit, commitEverywhere, crash, restart, restart, partition, heal, disk, advance, advance, promoteCmd, promoteCmd, reconfigure, reconfigure, loseDisk, rewind];
  }

  // Durability: the only disk lost is the current primary's, once
  // redundancy is back after the previous failover (one failure at a time:
  // syncReplicas = n covers the loss of the primary's disk, not of the
  // secondaries that acknowledged). Each loss is followed, once every node
  // that kept its disk is up again, by a promotion.
  const hasDisk = (m: FailoverModel, n: string): boolean => isPrimary(m, n) || m.upstream.get(n) != null;
  const loseCurrent = fc.constant(null).map(
    () =>
      new FailoverCommand('lose the disk of the current primary', (m) => currentIsPrimary(m) && m.redundant && m.nodes.some((o) => o !== m.current && isUp(m, o)), async (m, c) => {
        failoverTotals.disksLost += 1;
        await c.apply({ kind: 'loseDisk', node: m.current });
      }),
  );
  const mode = o.promote ?? 'best';
  const promoteAfterLoss = fc.constant(null).map(
    () =>
      new FailoverCommand(
        `promote the ${mode === 'best' ? 'most' : 'least'} advanced secondary`,
        (m) => !currentIsPrimary(m) && upSecondaries(m).length > 0 && m.nodes.every((n) => isUp(m, n) || !hasDisk(m, n)),
        (m, c) => promote(m, c, mode, 0),
      ),
  );
  return [commit, commit, commit, crash, restart, restart, partition, heal, disk, advance, advance, loseCurrent, promoteAfterLoss, promoteAfterLoss, reconfigure];
}

/**
 * The end phase, as the runbook has an operator do it: heal every link;
 * restart every node that kept its disk; if the current primary is no longer
 * one (its disk was lost, or it was demoted), choose the most advanced
 * running primary, else promote the most advanced secondary; point every
 * other node at it (stale primaries demoted, empty nodes restarted); rewind
 * every node refused as diverged (up to three rounds); then converge, and
 * require every node to hold exactly the final primary's transactions.
 */
export async function endPhase(cluster: SimCluster, livenessMs: number): Promise<void> {
  const m: FailoverModel = emptyModel(cluster);
  await cluster.apply({ kind: 'heal', mode: 'deliver' });
  // Every node that still has its disk comes back as it was.
  for (const n of m.nodes) if (!isUp(m, n) && (isPrimary(m, n) || m.upstream.get(n) != null)) await cluster.apply({ kind: 'restart', node: n });
  observe(m, cluster);
  if (!isPrimary(m, m.current)) {
    // The current primary lost its disk or was demoted: the operator picks
    // the most advanced running primary, else the most advanced secondary.
    const primaries = byProgress(cluster, m.nodes.filter((n) => isUp(m, n) && isPrimary(m, n)));
    const chosen = primaries[0] ?? byProgress(cluster, upSecondaries(m))[0];
    if (chosen === undefined) throw new Error('end phase: no node with data left to be the primary');
    await cluster.apply({ kind: 'promote', node: chosen, force: true });
    observe(m, cluster);
  }
  for (const n of m.nodes) {
    await follow(m, cluster, n);
    observe(m, cluster);
  }
  for (let round = 0; round < 3; round++) {
    // Until every node was refused or replicates (a connect to an address that was down waits up to 20 s).
    const settled = (): boolean => m.nodes.every((n) => n === m.current || cluster.isDiverged(n) || cluster.isReplicating(n));
    for (let waitedMs = 0; waitedMs < 60_000 && (waitedMs === 0 || !settled()); waitedMs += 1_000) await cluster.advance(1_000);
    observe(m, cluster);
    const diverged = m.nodes.filter((n) => cluster.isDiverged(n));
    if (diverged.length === 0) break;
    for (const n of diverged) await cluster.apply({ kind: 'rewind', node: n, upstream: m.current });
  }
  await cluster.converge(livenessMs);
  cluster.assertInvariants();
  const want = cluster.historyOf(cluster.primaryName);
  for (const n of m.nodes) {
    const got = cluster.historyOf(n);
    if (got.length !== want.length || got.some((t, i) => t !== want[i])) {
      throw new Error(`after convergence ${n} holds ${got.length} transactions, the final primary ${cluster.primaryName} ${want.length}, and they differ`);
    }
  }
}

function emptyModel(cluster: SimCluster): FailoverModel {
  const m: FailoverModel = { nodes: cluster.nodeNames, current: cluster.primaryName, role: new Map(), up: new Map(), upstream: new Map(), failovers: 0, commitsAtFailover: 0, redundant: true };
  observe(m, cluster);
  return m;
}

export interface FailoverPropertyOptions extends Omit<FailoverCommandOptions, 'nodes'> {
  secondaries: number;
  maxCommands?: number;
  /** Run the end phase (heal, rewind, reconnect, converge) after the commands. */
  converge: boolean;
  cluster?: Omit<SimClusterOptions, 'seed' | 'secondaries'>;
  livenessMs?: number;
  /** fast-check's replayPath of the command list (printed with a counterexample), to replay it with its seed and path. */
  replayPath?: string;
}

/**
 * The property: for every seed and command list, the invariants hold after
 * every step (and, with `converge`, every node ends with the final primary's
 * history).
 */
export function failoverProperty(o: FailoverPropertyOptions): fc.IAsyncPropertyWithHooks<[number, Iterable<fc.AsyncCommand<FailoverModel, SimCluster>>]> {
  const nodes = ['p', ...Array.from({ length: o.secondaries }, (_, i) => `s${i + 1}`)];
  return fc.asyncProperty(
    fc.integer({ min: 0, max: 0x7fffffff }),
    // 'medium': about half of maxCommands on average (the default size averages under 5).
    fc.commands(failoverCommands({ nodes, mode: o.mode, promote: o.promote }), { maxCommands: o.maxCommands ?? 25, size: 'medium', replayPath: o.replayPath }),
    (seed, commands) => trackedRun(() => failoverRun(o, seed, commands)),
  );
}

async function failoverRun(o: FailoverPropertyOptions, seed: number, commands: Iterable<fc.AsyncCommand<FailoverModel, SimCluster>>): Promise<void> {
  const cluster = await SimCluster.create({ protocol: 'native', ...o.cluster, seed, secondaries: o.secondaries });
  lastFailoverRun.seed = seed;
  lastFailoverRun.commands = String(commands);
  try {
    const model = emptyModel(cluster);
    await fc.asyncModelRun(() => ({ model, real: cluster }), commands);
    if (o.converge) await endPhase(cluster, o.livenessMs ?? 60_000);
    cluster.assertInvariants();
  } catch (err) {
    throw failoverFailure(err, cluster, seed);
  } finally {
    lastFailoverRun.trace = cluster.trace;
    failoverTotals.runs += 1;
    failoverTotals.refusals += cluster.trace.filter((l) => l.endsWith('connection "diverged"')).length;
    failoverTotals.rewindsThatCut += cluster.trace.filter((l) => l.includes(' rewound to ')).length;
    failoverTotals.acknowledged += cluster.commits.filter((r) => r.outcome === 'acknowledged').length;
    failoverTotals.failedForCaller += cluster.commits.filter((r) => r.outcome === 'failed').length;
    await cluster.close();
  }
}

/** The failure with the simulation seed, the replay command and the tail of the trace (fast-check adds its seed and path). */
export function failoverFailure(err: unknown, cluster: SimCluster, seed: number, lines = Number(process.env.SIM_TRACE_LINES ?? 150)): Error {
  const trace = cluster.trace;
  const head = err instanceof InvariantViolationError ? err.message : err instanceof Error ? (err.stack ?? err.message) : String(err);
  return new Error(
    [
      head,
      `--- simulation seed ${seed}; replay: SIM_SEED=<seed> SIM_PATH=<path> SIM_REPLAY_PATH=<replayPath after the commands> npx vitest run property-tests/failover.property.test.ts -t '<part of the test name>' (SIM_TRACE_LINES=100000 for the whole trace)`,
      `--- trace (last ${Math.min(lines, trace.length)} of ${trace.length} lines) ---`,
      trace.slice(-lines).join('\n'),
    ].join('\n'),
  );
}
