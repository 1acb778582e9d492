// The public simulation harness: a primary and N secondaries (chains allowed)
// built from the real Primary/Secondary classes over a SimNetwork and a
// VirtualClock, a workload, a fault schedule, a trace, and invariant verdicts
// (prefix, no partial transaction, no loss, convergence) after every step.
// Determinism: one event (a timer or a network delivery) per step, then
// settle() waits until real async work (file I/O, promise chains) is done.

import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, openSync, closeSync, readSync, fstatSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setImmediate as nextRound } from 'node:timers/promises';
import { seededRandom, type Random } from '../ports/random.js';
import type { ReplicationAddress } from '../ports/transport.js';
import type { Logger } from '../replication/log.js';
import { Primary } from '../replication/primary.js';
import { Secondary, type SecondaryProtocol } from '../replication/secondary.js';
import type { SessionStatus } from '../replication/primarySession.js';
import { FileStorage } from '../storage/FileStorage.js';
import { tidPlusOne, Z64 } from '../storage/timestamp.js';
import type { TransactionRecord } from '../storage/types.js';
import { DEFAULT_VIRTUAL_EPOCH_MS, VirtualClock, type ClockView } from './clock.js';
import { SimNetwork, type CrashStyle, type HealMode } from './network.js';

// ---------------------------------------------------------------- public types

export interface SimClusterOptions {
  /** Feeds every random decision (network, workload, backoff jitter). */
  seed: number;
  /**
   * Secondaries: a count (s1..sN, all replicating from the primary) or a list
   * naming each one's upstream ('p' or an earlier secondary: chains).
   */
  secondaries?: number | ReadonlyArray<{ name: string; upstream: string }>;
  /** Directory for the data files (a fresh temp dir by default, removed by close()). */
  dir?: string;
  protocol?: SecondaryProtocol;
  /** Secondaries send keep-alives this often (needed to notice half-open links). Default 1000. */
  keepAliveDelayMs?: number | null;
  /** Primary (and chain) heartbeats to idle native secondaries; off by default. */
  heartbeatIntervalMs?: number;
  reconnect?: { initialMs?: number; maxMs?: number; factor?: number; jitter?: number };
  latencyMs?: { min: number; max: number };
  bufferLimitBytes?: number;
  maxChunkBytes?: number;
  /** Trace every delivered chunk (default true; turn off for long soaks). */
  traceChunks?: boolean;
  /** Check the invariants after every step (default true). */
  checkEveryStep?: boolean;
  /** Stop the run at the first violation (default true). */
  failFast?: boolean;
}

/** One operation of a workload or fault schedule. */
export type SimOp =
  | { kind: 'commit'; records?: number; bytes?: number }
  | { kind: 'undo'; back?: number }
  | { kind: 'partition'; a: string; b: string; oneWay?: boolean }
  | { kind: 'isolate'; node: string }
  | { kind: 'heal'; a?: string; b?: string; mode?: HealMode }
  | { kind: 'reset'; a: string; b: string }
  | { kind: 'halfOpen'; a: string; b: string; dead?: string }
  | { kind: 'corrupt'; from: string; to: string }
  | { kind: 'crash'; node: string; style?: CrashStyle }
  | { kind: 'restart'; node: string }
  | { kind: 'reconfigure'; node: string; upstream: string }
  | { kind: 'latency'; a: string; b: string; ms: number };

export interface ScheduledOp {
  /** Virtual ms after the start of the run. */
  atMs: number;
  op: SimOp;
}

export interface SimPlan {
  schedule: ReadonlyArray<ScheduledOp>;
  /** Virtual time allowed for convergence after the faults stop. Default 120 000. */
  livenessMs?: number;
}

export type InvariantName = 'prefix' | 'partial' | 'corruption' | 'no-loss' | 'convergence' | 'error';

export interface Violation {
  invariant: InvariantName;
  node: string;
  /** Virtual ms since the start. */
  atMs: number;
  detail: string;
}

export interface SimStats {
  steps: number;
  timersFired: number;
  ops: number;
  commits: number;
  applied: number;
  faults: number;
  crashes: number;
  chunks: number;
  bytes: number;
  virtualMs: number;
}

export interface SimRunResult {
  ok: boolean;
  violations: Violation[];
  trace: string[];
  stats: SimStats;
}

/** Thrown by assertInvariants()/converge() when a verdict fails; carries the trace. */
export class InvariantViolationError extends Error {
  override name = 'InvariantViolationError';
  constructor(
    readonly violations: Violation[],
    readonly trace: string[],
  ) {
    super(`${violations.map((v) => `[${v.invariant}] ${v.node} at ${v.atMs} ms: ${v.detail}`).join('\n')}`);
  }
}

// ---------------------------------------------------------------- internals

interface Shape {
  tid: string;
  digest: string;
}

interface SimNode {
  name: string;
  role: 'primary' | 'secondary';
  upstream: string | null;
  address: ReplicationAddress;
  incarnation: number;
  path: string;
  up: boolean;
  primary: Primary | null;
  secondary: Secondary | null;
  clock: ClockView | null;
  subs: Array<{ unsubscribe(): void }>;
  /** Verified prefix of this node's log (secondaries). */
  verified: { count: number; lastTid: Buffer; incarnation: number };
  sessions: string;
  connState: string;
}

/** Requests (libuv) still in flight: while any is, async work is not done. */
function ioInFlight(): boolean {
  for (const r of process.getActiveResourcesInfo()) if (r.startsWith('FSReq') || r.endsWith('CloseReq')) return true;
  return false;
}

function hash32(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193) >>> 0;
  return h >>> 0;
}

function shapeOf(t: TransactionRecord): Shape {
  const h = createHash('sha1');
  h.update(`${t.status}|`).update(t.user).update('|').update(t.description).update('|').update(t.extensionBytes);
  for (const r of t.records) {
    h.update(`|${r.oid.toString('hex')}:${r.dataTxn?.toString('hex') ?? '-'}:`);
    h.update(r.data === null ? 'null' : r.data);
  }
  return { tid: t.tid.toString('hex'), digest: h.digest('hex').slice(0, 16) };
}

const PORT = 5000;

/**
 * A simulated cluster: real Primary and Secondary actors over a simulated
 * network and a virtual clock.
 *
 * @example
 * const cluster = await SimCluster.create({ seed: 42, secondaries: 2 });
 * const result = await cluster.run({
 *   schedule: [
 *     { atMs: 0, op: { kind: 'commit', records: 3 } },
 *     { atMs: 50, op: { kind: 'partition', a: 'p', b: 's1' } },
 *     { atMs: 60, op: { kind: 'commit' } },
 *     { atMs: 500, op: { kind: 'crash', node: 's2' } },
 *     { atMs: 900, op: { kind: 'restart', node: 's2' } },
 *   ],
 * });
 * await cluster.close();
 * if (!result.ok) console.log(result.violations, result.trace.join('\n'));
 */
export class SimCluster {
  readonly clock: VirtualClock;
  readonly network: SimNetwork;
  private readonly random: Random;
  private readonly nodes = new Map<string, SimNode>();
  private readonly traceLines: string[] = [];
  private stepLines: Array<{ node: string; text: string }> = [];
  private readonly violationsList: Violation[] = [];
  /** The primary's committed history as the workload made it (the model). */
  private readonly model: Shape[] = [];
  private primaryLog: Shape[] = [];
  private primaryLogIncarnation = -1;
  private readonly serials = new Map<string, Buffer>();
  private readonly oids: Buffer[] = [];
  private readonly disposals: Array<Promise<unknown>> = [];
  private readonly ownsDir: boolean;
  readonly dir: string;
  private activityCounter = 0;
  private closed = false;
  readonly stats: SimStats = { steps: 0, timersFired: 0, ops: 0, commits: 0, applied: 0, faults: 0, crashes: 0, chunks: 0, bytes: 0, virtualMs: 0 };

  private constructor(private readonly options: SimClusterOptions) {
    this.random = seededRandom(options.seed);
    this.clock = new VirtualClock(DEFAULT_VIRTUAL_EPOCH_MS);
    const traceChunks = options.traceChunks ?? true;
    this.network = new SimNetwork({
      clock: this.clock,
      random: seededRandom(Math.floor(this.random.next() * 2 ** 32)),
      latencyMs: options.latencyMs,
      bufferLimitBytes: options.bufferLimitBytes,
      maxChunkBytes: options.maxChunkBytes,
      trace: (node, text) => {
        if (traceChunks || !/ chunk \d+B$/.test(text)) this.note(node, text);
      },
    });
    this.ownsDir = options.dir === undefined;
    this.dir = options.dir ?? mkdtempSync(join(tmpdir(), 'zrs-sim-'));
  }

  /** Build and start the cluster; every secondary starts connecting at virtual time 0. */
  static async create(options: SimClusterOptions): Promise<SimCluster> {
    const c = new SimCluster(options);
    const specs =
      typeof options.secondaries === 'object'
        ? options.secondaries
        : Array.from({ length: options.secondaries ?? 2 }, (_, i) => ({ name: `s${i + 1}`, upstream: 'p' }));
    c.addNode('p', 'primary', null);
    for (const s of specs) {
      if (!c.nodes.has(s.upstream)) throw new Error(`secondary ${s.name}: upstream ${s.upstream} must be defined before it`);
      c.addNode(s.name, 'secondary', s.upstream);
    }
    try {
      for (const n of c.nodes.values()) await c.startNode(n);
      await c.settle();
      c.flushStep('start');
    } catch (err) {
      await c.close();
      throw err;
    }
    return c;
  }

  private addNode(name: string, role: SimNode['role'], upstream: string | null): void {
    if (this.nodes.has(name)) throw new Error(`duplicate node ${name}`);
    this.nodes.set(name, {
      name,
      role,
      upstream,
      address: { kind: 'tcp', host: name, port: PORT },
      incarnation: 0,
      path: '',
      up: false,
      primary: null,
      secondary: null,
      clock: null,
      subs: [],
      verified: { count: 0, lastTid: Z64, incarnation: -1 },
      sessions: '',
      connState: '',
    });
  }

  // ---------------------------------------------------------------- inspection

  /** Node names: 'p' first, then the secondaries in order. */
  get nodeNames(): string[] {
    return [...this.nodes.keys()];
  }

  get secondaryNames(): string[] {
    return [...this.nodes.values()].filter((n) => n.role === 'secondary').map((n) => n.name);
  }

  upstreamOf(name: string): string | null {
    return this.requireNode(name).upstream;
  }

  isUp(name: string): boolean {
    return this.requireNode(name).up;
  }

  /** The running Primary (null while crashed). */
  get primary(): Primary | null {
    return this.requireNode('p').primary;
  }

  secondary(name: string): Secondary | null {
    return this.requireNode(name).secondary;
  }

  /** Tids committed by the workload, in order (hex). */
  get committedTids(): string[] {
    return this.model.map((s) => s.tid);
  }

  get trace(): string[] {
    return this.traceLines;
  }

  get violations(): Violation[] {
    return this.violationsList;
  }

  /** Virtual ms since the start. */
  get elapsedMs(): number {
    return this.clock.now() - DEFAULT_VIRTUAL_EPOCH_MS;
  }

  private requireNode(name: string): SimNode {
    const n = this.nodes.get(name);
    if (!n) throw new Error(`no node ${name}`);
    return n;
  }

  // ---------------------------------------------------------------- node lifecycle

  private log(node: string): Logger {
    return (level, message) => {
      if (level === 'warn' || level === 'error') this.note(node, `${level}: ${message}`);
    };
  }

  private async startNode(n: SimNode): Promise<void> {
    n.incarnation += 1;
    const previous = n.path;
    n.path = join(this.dir, `${n.name}.${n.incarnation}.fs`);
    if (previous) writeFileSync(n.path, readFileSync(previous));
    this.network.restart(n.name);
    const transport = this.network.transport(n.name);
    const clock = this.clock.view(n.name);
    n.clock = clock;
    if (n.role === 'primary') {
      const storage = await FileStorage.open(n.path, { create: true, fsync: false, now: () => this.clock.now() });
      n.primary = await Primary.open({
        path: n.path,
        storage,
        replicateTo: n.address,
        transport,
        clock,
        fsync: false,
        heartbeatIntervalMs: this.options.heartbeatIntervalMs,
        log: this.log(n.name),
      });
    } else {
      const upstream = this.requireNode(n.upstream!);
      n.secondary = await Secondary.open({
        path: n.path,
        replicateFrom: upstream.address,
        replicateTo: n.address,
        protocol: this.options.protocol,
        fsync: false,
        keepAliveDelayMs: this.options.keepAliveDelayMs === undefined ? 1000 : (this.options.keepAliveDelayMs ?? undefined),
        reconnect: { initialMs: 50, maxMs: 2000, ...this.options.reconnect },
        transport,
        clock,
        random: seededRandom(hash32(`${this.options.seed}|${n.name}|${n.incarnation}`)),
        log: this.log(n.name),
      });
      const s = n.secondary;
      n.connState = '';
      n.subs.push(
        s.machine.subscribe((snap) => {
          const v = JSON.stringify(snap.value);
          if (v !== n.connState) {
            n.connState = v;
            this.note(n.name, `connection ${v}`);
          }
        }),
      );
      n.subs.push(
        s.applied$.subscribe((t) => {
          this.stats.applied += 1;
          this.activityCounter += 1;
          this.note(n.name, `apply ${t.tid.toString('hex')}`);
        }),
      );
    }
    n.up = true;
    n.sessions = '';
    this.note(n.name, `start #${n.incarnation} (${n.role}${n.upstream ? ` of ${n.upstream}` : ''})`);
  }

  /** Crash a node: abrupt for its peers; its file keeps what was written (>= the durable end). */
  private async crashNode(n: SimNode, style: CrashStyle): Promise<void> {
    if (!n.up) return;
    this.stats.crashes += 1;
    // The file as the crash leaves it: every durable byte, maybe more of what was written.
    const committedEnd = n.primary ? n.primary.storage.durableEnd : n.secondary!.storage.getSize();
    const fd = openSync(n.path, 'r');
    let image: Buffer;
    try {
      const size = fstatSync(fd).size;
      const keep = committedEnd + Math.floor(this.random.next() * (size - committedEnd + 1));
      image = Buffer.alloc(keep);
      readSync(fd, image, 0, keep, 0);
    } finally {
      closeSync(fd);
    }
    this.network.crash(n.name, style);
    n.clock?.kill();
    for (const s of n.subs) s.unsubscribe();
    n.subs = [];
    n.up = false;
    const old = n.primary ?? n.secondary;
    n.primary = null;
    n.secondary = null;
    // The old objects are gone for the simulation (inert transport, dead clock);
    // closing them only releases their file descriptors.
    if (old) this.dispose(`${n.name}#${n.incarnation}`, old);
    const crashPath = `${n.path}.crash`;
    writeFileSync(crashPath, image);
    n.path = crashPath;
    n.verified = { count: 0, lastTid: Z64, incarnation: -1 };
  }

  // ---------------------------------------------------------------- workload

  private async commit(records: number, bytes: number): Promise<void> {
    const p = this.primary;
    if (!p) {
      this.note('p', 'commit skipped: primary down');
      return;
    }
    const fs = p.storage;
    const n = this.stats.commits;
    const txn = { user: 'sim', description: `txn ${n}`, extension: { n } };
    await fs.tpcBegin(txn);
    const mine: Buffer[] = [];
    for (let r = 0; r < records; r++) {
      const update = this.oids.length > 0 && this.random.next() < 0.5;
      const oid = update ? this.oids[Math.floor(this.random.next() * this.oids.length)]! : fs.newOid();
      if (mine.some((m) => m.equals(oid))) continue;
      mine.push(oid);
      const fill = `${n}.${r}.${Math.floor(this.random.next() * 1e9)};`;
      fs.store(oid, this.serials.get(oid.toString('hex')) ?? Z64, Buffer.alloc(bytes, fill), txn);
    }
    await fs.tpcVote(txn);
    const tid = await fs.tpcFinish(txn);
    for (const oid of mine) {
      this.serials.set(oid.toString('hex'), tid);
      if (!this.oids.some((o) => o.equals(oid))) this.oids.push(oid);
    }
    this.stats.commits += 1;
    await this.recordModel(tid, `commit ${tid.toString('hex')} (${mine.length} records × ${bytes} B)`);
  }

  private async undo(back: number): Promise<void> {
    const p = this.primary;
    if (!p || this.model.length === 0) {
      this.note('p', 'undo skipped');
      return;
    }
    const target = Buffer.from(this.model[Math.max(0, this.model.length - 1 - back)]!.tid, 'hex');
    const fs = p.storage;
    const txn = { user: 'sim', description: `undo ${target.toString('hex')}` };
    await fs.tpcBegin(txn);
    let oids: Buffer[];
    try {
      oids = await fs.undo(target, txn);
      await fs.tpcVote(txn);
    } catch (err) {
      await fs.tpcAbort(txn);
      this.note('p', `undo ${target.toString('hex')} refused: ${(err as Error).message}`);
      return;
    }
    const tid = await fs.tpcFinish(txn);
    for (const oid of oids) this.serials.set(oid.toString('hex'), tid);
    this.stats.commits += 1;
    await this.recordModel(tid, `undo ${target.toString('hex')} as ${tid.toString('hex')} (${oids.length} objects)`);
  }

  private async recordModel(tid: Buffer, text: string): Promise<void> {
    for await (const t of this.primary!.storage.iterator(tid, tid)) this.model.push(shapeOf(t));
    this.activityCounter += 1;
    this.note('p', text);
  }

  // ---------------------------------------------------------------- operations

  /** Apply one workload or fault operation now, then settle and check. */
  async apply(op: SimOp): Promise<void> {
    this.stats.ops += 1;
    switch (op.kind) {
      case 'commit':
        await this.commit(op.records ?? 3, op.bytes ?? 64);
        break;
      case 'undo':
        await this.undo(op.back ?? 0);
        break;
      case 'partition':
        this.network.partition(op.a, op.b, op.oneWay ?? false);
        break;
      case 'isolate':
        this.network.isolate(op.node);
        break;
      case 'heal':
        this.network.heal(op.a, op.b, op.mode ?? 'deliver');
        break;
      case 'reset':
        this.network.resetBetween(op.a, op.b);
        break;
      case 'halfOpen':
        for (const c of this.network.liveConnections()) {
          if ((c.client === op.a && c.server === op.b) || (c.client === op.b && c.server === op.a)) this.network.halfOpen(c.id, op.dead ?? op.b);
        }
        break;
      case 'corrupt':
        this.network.corruptNext(op.from, op.to);
        break;
      case 'crash':
        await this.crashNode(this.requireNode(op.node), op.style ?? 'process');
        break;
      case 'restart': {
        const n = this.requireNode(op.node);
        if (!n.up) {
          await this.startNode(n);
          if (n.role === 'primary') await this.checkNoLoss();
        }
        break;
      }
      case 'reconfigure':
        this.reconfigure(op.node, op.upstream);
        break;
      case 'latency':
        this.network.setLatency(op.a, op.b, op.ms);
        break;
    }
    await this.settle();
    this.flushStep(`op ${describeOp(op)}`);
    if (this.options.checkEveryStep ?? true) await this.check();
  }

  /** Point a secondary at another upstream (the primary or an earlier secondary: no cycles). */
  private reconfigure(name: string, upstream: string): void {
    const n = this.requireNode(name);
    const order = this.nodeNames;
    if (n.role !== 'secondary' || order.indexOf(upstream) < 0 || order.indexOf(upstream) >= order.indexOf(name)) {
      throw new Error(`reconfigure ${name} -> ${upstream}: the upstream must be 'p' or a secondary listed before it`);
    }
    n.upstream = upstream;
    this.note(name, `replicate from ${upstream}`);
    n.secondary?.setReplicationAddress(this.requireNode(upstream).address);
  }

  // ---------------------------------------------------------------- time

  /** Fire the next timer or network event due by `untilMs` (absolute virtual), settle, check. False when none. */
  async step(untilMs = Number.POSITIVE_INFINITY): Promise<boolean> {
    const before = this.clock.fired;
    if (!this.clock.runNext(untilMs)) return false;
    this.stats.steps += 1;
    this.stats.timersFired += this.clock.fired - before;
    await this.settle();
    this.flushStep('');
    if (this.options.checkEveryStep ?? true) await this.check();
    return true;
  }

  /** Run every event due within `ms` of virtual time, one step at a time. */
  async advance(ms: number): Promise<void> {
    const until = this.clock.now() + ms;
    while (await this.step(until)) if (this.stopped) return;
    this.clock.skipTo(until);
  }

  private get stopped(): boolean {
    return (this.options.failFast ?? true) && this.violationsList.length > 0;
  }

  /**
   * Wait until real async work is done: no file request in flight and no
   * change on the network, the clock or the nodes for two event-loop rounds.
   */
  async settle(maxRounds = 100_000): Promise<void> {
    let last = this.activity();
    let quiet = 0;
    for (let round = 0; quiet < 2; round++) {
      if (round > maxRounds) throw new Error(`settle: still busy after ${maxRounds} rounds`);
      await nextRound();
      const now = this.activity();
      if (ioInFlight() || now !== last) {
        quiet = 0;
        last = now;
      } else quiet += 1;
    }
    this.pollSessions();
  }

  private activity(): string {
    return `${this.clock.version}/${this.network.version}/${this.activityCounter}/${this.traceLines.length + this.stepLines.length}`;
  }

  /** Primary sessions are not exposed as actors: trace their state changes at step ends. */
  private pollSessions(): void {
    for (const n of this.nodes.values()) {
      if (!n.up) continue;
      const sessions = this.sessionsOf(n);
      const text = sessions.map((s) => `${s.peer}:${s.state}`).join(' ');
      if (text !== n.sessions) {
        n.sessions = text;
        this.note(n.name, `sessions [${text}]`);
      }
    }
  }

  private sessionsOf(n: SimNode): SessionStatus[] {
    if (n.primary) return n.primary.secondaries();
    // A Secondary does not expose its ReplicationServer; read it for the trace only.
    const server = (n.secondary as unknown as { server: { status(): SessionStatus[] } | null } | null)?.server;
    return server?.status() ?? [];
  }

  // ---------------------------------------------------------------- trace

  private note(node: string, text: string): void {
    this.stepLines.push({ node, text });
  }

  /**
   * End a step: lines produced by racing async work are grouped by node
   * (stable within a node) so the trace does not depend on I/O timing.
   */
  private flushStep(what: string): void {
    const order = (node: string): string => (node === 'net' ? '0' : node === 'p' ? '1' : `2${node}`);
    const lines = this.stepLines
      .map((l, i) => ({ ...l, i }))
      .sort((a, b) => (order(a.node) < order(b.node) ? -1 : order(a.node) > order(b.node) ? 1 : a.i - b.i));
    this.stepLines = [];
    const t = String(this.elapsedMs).padStart(7);
    if (what) this.traceLines.push(`${t} ms  --   ${what}`);
    for (const l of lines) this.traceLines.push(`${t} ms  ${l.node.padEnd(4)} ${l.text}`);
  }

  // ---------------------------------------------------------------- invariants

  private violate(invariant: InvariantName, node: string, detail: string): void {
    this.violationsList.push({ invariant, node, atMs: this.elapsedMs, detail });
    this.traceLines.push(`${String(this.elapsedMs).padStart(7)} ms  !!   ${invariant} violated on ${node}: ${detail}`);
  }

  private async refreshPrimaryLog(): Promise<void> {
    const p = this.requireNode('p');
    if (!p.primary) return;
    const fs = p.primary.storage;
    if (this.primaryLogIncarnation !== p.incarnation) {
      this.primaryLog = [];
      this.primaryLogIncarnation = p.incarnation;
    }
    const last = this.primaryLog.at(-1)?.tid;
    if (last === fs.lastDurableTid.toString('hex')) return;
    const start = last ? tidPlusOne(Buffer.from(last, 'hex')) : null;
    for await (const t of fs.iterator(start)) this.primaryLog.push(shapeOf(t));
  }

  /** Invariant 3: the restarted primary holds every transaction it committed. */
  private async checkNoLoss(): Promise<void> {
    await this.refreshPrimaryLog();
    const log = this.primaryLog;
    for (let i = 0; i < this.model.length; i++) {
      const m = this.model[i]!;
      const got = log[i];
      if (!got || got.tid !== m.tid || got.digest !== m.digest) {
        this.violate('no-loss', 'p', `committed ${m.tid} (#${i}) is ${got ? `replaced by ${got.tid}` : 'missing'} after restart`);
        return;
      }
    }
    if (log.length > this.model.length) this.violate('no-loss', 'p', `${log.length - this.model.length} transactions nobody committed`);
  }

  /**
   * Check invariants 1 and 4 on every running secondary: its log is a prefix
   * of the primary's (same tids, same records), and nothing partial is visible.
   * Returns the violations found by this call.
   */
  async check(): Promise<Violation[]> {
    const before = this.violationsList.length;
    await this.refreshPrimaryLog();
    const reference = this.primaryLog.length >= this.model.length ? this.primaryLog : this.model;
    for (const n of this.nodes.values()) {
      const s = n.secondary;
      if (!s || !n.up) continue;
      const v = n.verified;
      if (v.incarnation !== n.incarnation) n.verified = { count: 0, lastTid: Z64, incarnation: n.incarnation };
      const storage = s.storage;
      const lastTid = storage.lastTransaction();
      if (lastTid.equals(n.verified.lastTid)) continue;
      const start = n.verified.count === 0 ? null : tidPlusOne(n.verified.lastTid);
      for await (const t of storage.iterator(start)) {
        const got = shapeOf(t);
        const want = reference[n.verified.count];
        if (!want || want.tid !== got.tid) {
          this.violate('prefix', n.name, `transaction #${n.verified.count} is ${got.tid}, the primary's is ${want?.tid ?? 'nothing'}`);
          break;
        }
        if (want.digest !== got.digest) {
          this.violate('corruption', n.name, `transaction ${got.tid} differs from the primary's (records or metadata)`);
          break;
        }
        n.verified.count += 1;
        n.verified.lastTid = t.tid;
      }
      if (this.violationsList.length === before && !storage.lastTransaction().equals(n.verified.lastTid)) {
        this.violate('partial', n.name, `last transaction ${storage.lastTransaction().toString('hex')} is not the last complete one ${n.verified.lastTid.toString('hex')}`);
      }
      if (this.violationsList.length === before && storage.transactionCount !== n.verified.count) {
        this.violate('partial', n.name, `transactionCount ${storage.transactionCount} but ${n.verified.count} transactions iterate`);
      }
    }
    return this.violationsList.slice(before);
  }

  /** Throw an InvariantViolationError (with the trace) if any verdict failed so far. */
  assertInvariants(): void {
    if (this.violationsList.length) throw new InvariantViolationError(this.violationsList, this.traceLines);
  }

  /** Every running secondary holds exactly the primary's history. */
  isConverged(): boolean {
    const p = this.requireNode('p').primary;
    if (!p) return false;
    const last = p.storage.lastDurableTid;
    for (const n of this.nodes.values()) {
      if (n.role !== 'secondary') continue;
      if (!n.secondary || !n.up) return false;
      if (!n.secondary.storage.lastTransaction().equals(last)) return false;
    }
    return true;
  }

  /**
   * The liveness phase: heal every partition, restart crashed nodes, then
   * run virtual time (at most `maxMs`) until every secondary equals the
   * primary. Records a 'convergence' violation when it does not.
   */
  async converge(maxMs = 120_000): Promise<boolean> {
    this.traceLines.push(`${String(this.elapsedMs).padStart(7)} ms  --   liveness phase (up to ${maxMs} ms)`);
    this.network.heal(undefined, undefined, 'deliver');
    for (const n of this.nodes.values()) if (!n.up) await this.apply({ kind: 'restart', node: n.name });
    await this.settle();
    this.flushStep('healed');
    const deadline = this.clock.now() + maxMs;
    while (!this.isConverged() && !this.stopped) {
      if (!(await this.step(deadline))) break;
    }
    await this.check();
    if (!this.isConverged()) {
      const states = this.secondaryNames.map((s) => {
        const n = this.requireNode(s);
        return `${s}@${n.secondary?.storage.lastTransaction().toString('hex') ?? 'down'} ${n.connState}`;
      });
      this.violate('convergence', '*', `not converged within ${maxMs} ms: primary@${this.primary?.storage.lastDurableTid.toString('hex') ?? 'down'}; ${states.join('; ')}`);
      return false;
    }
    // Every log equals the primary's: the verified prefixes have its full length.
    for (const s of this.secondaryNames) {
      const n = this.requireNode(s);
      if (n.verified.count !== this.primaryLog.length) this.violate('convergence', s, `holds ${n.verified.count} of ${this.primaryLog.length} transactions`);
    }
    this.traceLines.push(`${String(this.elapsedMs).padStart(7)} ms  --   converged`);
    return this.violationsList.length === 0;
  }

  /**
   * Run a plan: each scheduled operation at its virtual time, every network
   * event and timer in between as its own step, then the liveness phase.
   */
  async run(plan: SimPlan): Promise<SimRunResult> {
    const start = this.clock.now();
    const schedule = [...plan.schedule].sort((a, b) => a.atMs - b.atMs);
    try {
      for (const s of schedule) {
        if (this.stopped) break;
        const at = start + s.atMs;
        if (at > this.clock.now()) await this.advance(at - this.clock.now());
        if (this.stopped) break;
        await this.apply(s.op);
      }
      if (!this.stopped) await this.converge(plan.livenessMs ?? 120_000);
    } catch (err) {
      this.violate('error', '*', (err as Error).stack ?? String(err));
    }
    return this.result();
  }

  result(): SimRunResult {
    const ns = this.network.stats;
    this.stats.faults = ns.faults + this.stats.crashes;
    this.stats.chunks = ns.chunks;
    this.stats.bytes = ns.bytes;
    this.stats.virtualMs = this.elapsedMs;
    return { ok: this.violationsList.length === 0, violations: [...this.violationsList], trace: this.traceLines, stats: { ...this.stats } };
  }

  /** Stop every node and remove the temp dir (when the cluster made it). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const n of this.nodes.values()) {
      for (const s of n.subs) s.unsubscribe();
      n.subs = [];
      n.clock?.kill();
      const obj = n.primary ?? n.secondary;
      if (obj) this.dispose(`${n.name}#${n.incarnation}`, obj);
      n.primary = null;
      n.secondary = null;
      n.up = false;
    }
    // Dead clocks: closing cannot wait for a timer; streams are inert. Bound the wait anyway.
    for (let round = 0; this.pendingDisposals.size > 0 && round < 100_000; round++) await nextRound();
    if (this.pendingDisposals.size > 0) this.traceLines.push(`close: still closing after the wait: ${[...this.pendingDisposals].join(', ')}`);
    if (this.ownsDir) rmSync(this.dir, { recursive: true, force: true, maxRetries: 3 });
  }

  /** Close a crashed incarnation in the background, only to release its files. */
  private dispose(label: string, obj: { close(): Promise<void> }): void {
    this.pendingDisposals.add(label);
    this.disposals.push(
      obj.close().then(
        () => void this.pendingDisposals.delete(label),
        (err: Error) => {
          this.pendingDisposals.delete(label);
          this.traceLines.push(`close ${label} failed: ${err.message}`);
        },
      ),
    );
  }

  /** Crashed incarnations whose close has not finished (for leak hunting). */
  readonly pendingDisposals = new Set<string>();
}

/** A short, stable description of an operation for traces and counterexamples. */
export function describeOp(op: SimOp): string {
  switch (op.kind) {
    case 'commit':
      return `commit ${op.records ?? 3}×${op.bytes ?? 64}B`;
    case 'undo':
      return `undo -${op.back ?? 0}`;
    case 'partition':
      return `partition ${op.a}${op.oneWay ? '->' : '<->'}${op.b}`;
    case 'isolate':
      return `isolate ${op.node}`;
    case 'heal':
      return `heal ${op.a ?? '*'}${op.b ? `<->${op.b}` : ''} ${op.mode ?? 'deliver'}`;
    case 'reset':
      return `reset ${op.a}<->${op.b}`;
    case 'halfOpen':
      return `half-open ${op.a}<->${op.b} (${op.dead ?? op.b} forgets)`;
    case 'corrupt':
      return `corrupt ${op.from}>${op.to}`;
    case 'crash':
      return `crash ${op.node} (${op.style ?? 'process'})`;
    case 'restart':
      return `restart ${op.node}`;
    case 'reconfigure':
      return `reconfigure ${op.node} -> ${op.upstream}`;
    case 'latency':
      return `latency ${op.a}<->${op.b} ${op.ms} ms`;
  }
}

