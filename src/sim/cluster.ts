// The public simulation harness: a primary and N secondaries (chains allowed)
// built from the real Primary/Secondary classes over a SimNetwork and a
// VirtualClock, a workload, a fault schedule, a trace, and invariant verdicts
// (prefix, no partial transaction, no loss, convergence) after every step.
// Failover: secondaries can be promoted (several primaries may run at once:
// a split brain), primaries demoted, disks lost and diverged nodes rewound.
// Every node's log must then be a path of the tree of every commit any
// primary made (src/sim/lineage.ts): it never mixes two histories.
// Determinism: one event (a timer or a network delivery) per step, then
// settle() waits until real async work (file I/O, promise chains) is done.

import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, openSync, closeSync, readSync, fstatSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { setImmediate as nextRound } from 'node:timers/promises';
import { seededRandom, type Random } from '../ports/random.js';
import type { ReplicationAddress } from '../ports/transport.js';
import type { Logger } from '../replication/log.js';
import { Primary } from '../replication/primary.js';
import { Secondary, type SecondaryProtocol } from '../replication/secondary.js';
import type { PrimarySession, SessionStatus } from '../replication/primarySession.js';
import type { ReplicationServer } from '../replication/server.js';
import { POSKeyError, RewindIncompleteError, StorageWriteError, ZrsError } from '../errors.js';
import { readAuditLog, type AuditRecord } from '../audit/auditLog.js';
import { defaultAuditPath, promotionTakenBack } from '../audit/nodeAudit.js';
import { generationsPathFor } from '../failover/generations.js';
import { chainPathFor } from '../failover/hashChain.js';
import { PromotionRefusedError } from '../failover/promote.js';
import { rewindStorage } from '../failover/rewind.js';
import type { ReplicationMutations } from '../replication/mutations.js';
import { FileStorage } from '../storage/FileStorage.js';
import { SECTOR_BYTES, fillOf } from '../storage/prealloc.js';
import { tidPlusOne, Z64 } from '../storage/timestamp.js';
import type { CommittedTransaction, TransactionMeta, TransactionRecord } from '../storage/types.js';
import { DEFAULT_VIRTUAL_EPOCH_MS, VirtualClock, type ClockView } from './clock.js';
import { SimDisk, type DiskMode, type SimDiskView } from './disk.js';
import { HistoryTree, LINEAGE_ORIGIN, lineageLink, shapeOf, type LineageEntry, type TxnShape } from './lineage.js';
import { SimNetwork, SimNetworkError, type CrashStyle, type HealMode } from './network.js';

// ---------------------------------------------------------------- public types

export interface SimClusterOptions {
  /** Feeds every random decision (network, workload, backoff jitter). */
  seed: number;
  /**
   * Secondaries: a count (s1..sN, all replicating from the primary) or a list
   * naming each one's upstream ('p' or an earlier secondary: chains).
   */
  secondaries?: number | ReadonlyArray<{ name: string; upstream: string }>;
  /**
   * Directory for the data files: created when missing, and it must be empty
   * (files of an earlier run would be reopened, and the run would not replay).
   * Default: a fresh temp dir, removed by close().
   */
  dir?: string;
  protocol?: SecondaryProtocol;
  /** Secondaries send keep-alives this often (needed to notice half-open links). Default 1000. */
  keepAliveDelayMs?: number | null;
  /** Primary (and chain) heartbeats to idle native secondaries, in virtual ms; off by default (the library's default is 1000). */
  heartbeatIntervalMs?: number;
  /** Secondaries' heartbeat timeout (SecondaryOptions.heartbeatTimeoutMs), in virtual ms; the library's default when not given. */
  heartbeatTimeoutMs?: number;
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
  /**
   * Test-only: deliberate bugs switched on in every secondary, for mutation
   * checks (a property must fail with one on). All off by default.
   */
  mutations?: ReplicationMutations;
  /**
   * Every primary (the first, and each promoted one) waits for this many
   * native secondaries' acks before a commit returns to its caller
   * (PrimaryOptions.syncReplicas). Default 0.
   */
  syncReplicas?: number;
  /** PrimaryOptions.syncTimeoutMs (virtual). Default 10 000. */
  syncTimeoutMs?: number;
  /**
   * Check the 'acknowledged' invariant: after every promotion and at
   * convergence, the current primary holds every commit acknowledged to its
   * caller. Meaningful when promotions pick the most advanced secondary and
   * no split brain happens (a rewind legitimately cuts the loser's commits).
   */
  checkAcknowledged?: boolean;
}

/** One operation of a workload or fault schedule. */
export type SimOp =
  /** On `node` (a running primary), by default on the current primary. */
  /** `twice`: the first object is stored a second time in the same transaction (two records of it, as ZODB allows). */
  | { kind: 'commit'; records?: number; bytes?: number; node?: string; twice?: boolean }
  /** Undo `count` (default 1) of the workload's transactions in one transaction, newest first, starting `back` from the last. */
  | { kind: 'undo'; back?: number; count?: number }
  | { kind: 'partition'; a: string; b: string; oneWay?: boolean }
  | { kind: 'isolate'; node: string }
  | { kind: 'heal'; a?: string; b?: string; mode?: HealMode }
  | { kind: 'reset'; a: string; b: string }
  | { kind: 'halfOpen'; a: string; b: string; dead?: string }
  | { kind: 'corrupt'; from: string; to: string }
  | { kind: 'crash'; node: string; style?: CrashStyle }
  /** A secondary restarts replicating from `upstream` when given (needed after a lost disk if the current primary is itself). */
  | { kind: 'restart'; node: string; upstream?: string }
  | { kind: 'reconfigure'; node: string; upstream: string }
  | { kind: 'latency'; a: string; b: string; ms: number }
  /** The node's disk: 'slow' (each datasync takes `ms` virtual ms, default 500), 'full' (growing writes fail), 'ok'. */
  | { kind: 'disk'; node: string; mode: DiskMode; ms?: number }
  /** Secondary.promote(): the node becomes a writable primary (generation n + 1) and the current primary (a running primary only becomes the current one). */
  | { kind: 'promote'; node: string; force?: boolean }
  /** Stop a primary (a crash) and restart it, data kept, as a secondary of `upstream`. */
  | { kind: 'demote'; node: string; upstream: string }
  /** Crash the node and lose its data file, generations and hash chain: it restarts as an empty secondary. */
  | { kind: 'loseDisk'; node: string }
  /** Stop the node, rewindStorage() it against `upstream` (default: its own, else the current primary), restart it as its secondary. */
  | { kind: 'rewind'; node: string; upstream?: string };

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

export type InvariantName = 'prefix' | 'lineage' | 'partial' | 'corruption' | 'no-loss' | 'acknowledged' | 'convergence' | 'audit' | 'error';

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
  /** Crashes that found written bytes no completed sync covered (the crash image could tear them). */
  unsyncedCrashes: number;
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

/** A commit the workload made, once it is durable on its primary, and what its caller was told. */
export interface SimCommitRecord {
  tid: string;
  /** The primary it was committed on. */
  node: string;
  /** Its place in the history tree (src/sim/lineage.ts). */
  link: string;
  /**
   * 'acknowledged': tpcFinish resolved for the caller (after the acks, with
   * syncReplicas); 'failed': it rejected (sync timeout, or the primary died
   * first), though the transaction may be committed; 'pending': not yet.
   */
  outcome: 'pending' | 'acknowledged' | 'failed';
  reason?: string;
}

/** Thrown by assertInvariants() when a verdict fails (converge() returns false instead); carries the trace. */
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
  /** The node's disk (its mode survives restarts) and this incarnation's view of it. */
  disk: SimDisk;
  diskView: SimDiskView | null;
  /** Secondaries: tid of the last transaction known durable (from applied$). */
  durableTid: Buffer;
  /** A crashed secondary: the last transaction it reported durable, which its log must hold when it restarts. */
  durableAtCrash: Buffer | null;
  /**
   * The newest transaction an upstream session heard this node acknowledge,
   * and the incarnation that sent the ack (acks promise durability: after a
   * crash, the log must hold it).
   */
  acked: { incarnation: number; tid: Buffer } | null;
  /** A crashed secondary: the incarnation that crashed, whose acks its log must hold when it restarts. */
  crashedIncarnation: number | null;
  /** The failover decisions made on this node, in order, which its audit log must show (as auditedDecisions() reads them). */
  decisions: string[];
  subs: Array<{ unsubscribe(): void }>;
  /** The part of this node's log checked against the history tree: its path in it. */
  verified: Verified;
  /** Set when its connection was refused as diverged: its log must stay as it was until a rewind. */
  refused: { incarnation: number; lastTid: string } | null;
  /** While a primary: its durable history as the workload made it (the model), else null. */
  model: LineageEntry[] | null;
  /** Commits begun on it and not yet durable, in commit order (in doubt when it crashes). */
  inFlight: InFlight[];
  /** Durable commits still being read into the model (in order). */
  recording: Promise<void>;
  recordingPending: number;
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

/** The serial a writer read: the object's current tid, Z64 when the storage does not have it. */
async function serialOf(fs: FileStorage, oid: Buffer): Promise<Buffer> {
  try {
    const [current] = await fs.history(oid, 1);
    return current?.tid ?? Z64;
  } catch (err) {
    if (err instanceof POSKeyError) return Z64;
    throw err;
  }
}

/**
 * The promotions and rewinds an audit log records, in order, as the harness
 * notes them. A promotion taken back (promotionTakenBack: the record of its
 * failure comes next) is left out, by the rule the audit's own reading of a
 * node's past applies.
 * @internal (exported for its test)
 */
export function auditedDecisions(records: readonly AuditRecord[]): string[] {
  const out: string[] = [];
  records.forEach((r, i) => {
    if (r.kind === 'promotion' && !promotionTakenBack(records, i)) out.push(`promotion to generation ${String(r.details.newGeneration)} after ${String(r.details.startTid)}`);
    else if (r.kind === 'rewind') out.push(`rewind to ${String(r.details.forkTid)}`);
  });
  return out;
}

/** `storage` holds the transaction `tid` (Z64, before the first, always). */
async function holds(storage: Pick<FileStorage, 'iterator'>, tid: Buffer): Promise<boolean> {
  if (tid.equals(Z64)) return true;
  for await (const t of storage.iterator(tid, tid)) if (t.tid.equals(tid)) return true;
  return false;
}

interface Verified {
  incarnation: number;
  lastTid: Buffer;
  entries: LineageEntry[];
  /** A violation was found in this incarnation's log: it is not walked further. */
  faulted: boolean;
}

const unverified = (incarnation: number): Verified => ({ incarnation, lastTid: Z64, entries: [], faulted: false });

interface InFlight {
  incarnation: number;
  description: string;
  /** The digest of the records the workload stored (recordsDigest), when it knows them exactly. */
  records?: string;
  record: SimCommitRecord;
  text: (tid: string) => string;
}

/** A digest of records as (oid, data) pairs, in order: what a commit stored, or what a transaction holds. */
function recordsDigest(records: ReadonlyArray<{ oid: Buffer; data: Buffer | null }>): string {
  const h = createHash('sha1');
  for (const r of records) h.update(`${r.oid.toString('hex')}:${r.data?.length ?? -1}:`).update(r.data ?? '');
  return h.digest('hex');
}

/** Files that live on a node's disk beside its data file: generations, hash chain and audit log. */
function sideFilesOf(dataPath: string): string[] {
  return [generationsPathFor(dataPath), chainPathFor(dataPath), defaultAuditPath(dataPath)];
}

/**
 * Small, so that the simulation writes fill often and runs out of it on a
 * full disk quickly: transactions of up to 2 KiB go over fill.
 */
const SIM_PREALLOCATE_BYTES = 16 * 1024;

/**
 * Put the fill back in the 512-byte sectors of `image` between `from` and `to`
 * (written, not synced, when the crash came): every sector from a random one
 * on, and now and then one before it (the disk wrote them out of order).
 */
function tearSectors(image: Buffer, from: number, to: number, random: Random): void {
  const first = Math.floor(from / SECTOR_BYTES) * SECTOR_BYTES;
  const lost = first + SECTOR_BYTES * Math.floor(random.next() * (Math.ceil((to - first) / SECTOR_BYTES) + 1));
  for (let sector = first; sector < to; sector += SECTOR_BYTES) {
    if (sector < lost && random.next() >= 0.1) continue;
    const start = Math.max(sector, from);
    fillOf(start, Math.min(sector + SECTOR_BYTES, to) - start).copy(image, start);
  }
}

/** Copy the side files of `from` beside `to`: a crash image or a new incarnation keeps them. */
function carrySideFiles(from: string, to: string): void {
  for (const side of sideFilesOf(from)) if (existsSync(side)) copyFileSync(side, `${to}${side.slice(from.length)}`);
}

const PORT = 5000;

/**
 * A fresh directory for a cluster's files: under ZRS_SIM_TMPDIR when set,
 * else in memory (/dev/shm) where there is one, else the system temp dir.
 * Durability is simulated (SimDisk), so real syncs and unlinks only cost time.
 */
function makeSimDir(): string {
  const roots = [process.env.ZRS_SIM_TMPDIR, '/dev/shm', tmpdir()].filter((r): r is string => !!r);
  for (const root of roots.slice(0, -1)) {
    try {
      return mkdtempSync(join(root, 'zrs-sim-'));
    } catch {
      // Not there, or not writable: the next root.
    }
  }
  return mkdtempSync(join(roots.at(-1)!, 'zrs-sim-'));
}

/** `dir`, created when missing; an error when it holds anything (an earlier run's files would be reopened). */
function emptyDir(dir: string): string {
  mkdirSync(dir, { recursive: true });
  const found = readdirSync(dir);
  if (found.length > 0) {
    throw new Error(`SimCluster: dir ${dir} is not empty (${found.slice(0, 3).join(', ')}${found.length > 3 ? ', …' : ''}): a run reopens the files it finds and does not replay; give an empty directory, or none`);
  }
  return dir;
}

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
  /** Every transaction any primary made durable, as a tree of histories (the oracle). */
  private readonly tree = new HistoryTree();
  /** The node commits go to by default: 'p', then each promoted node. */
  private current = 'p';
  /** Oracle link -> the product's hash chain link the committing primary computed for it. */
  private readonly productLinks = new Map<string, string>();
  private readonly commitRecords: SimCommitRecord[] = [];
  private txnNumber = 0;
  private diskFaults = 0;
  private readonly oids: Buffer[] = [];
  private readonly disposals: Array<Promise<unknown>> = [];
  private readonly ownsDir: boolean;
  readonly dir: string;
  private activityCounter = 0;
  private closed = false;
  readonly stats: SimStats = { steps: 0, timersFired: 0, ops: 0, commits: 0, applied: 0, faults: 0, crashes: 0, unsyncedCrashes: 0, chunks: 0, bytes: 0, virtualMs: 0 };

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
    this.dir = options.dir === undefined ? makeSimDir() : emptyDir(options.dir);
  }

  /** Build and start the cluster; every secondary starts connecting at virtual time 0. */
  static async create(options: SimClusterOptions): Promise<SimCluster> {
    const c = new SimCluster(options);
    const specs =
      typeof options.secondaries === 'object'
        ? options.secondaries
        : Array.from({ length: options.secondaries ?? 2 }, (_, i) => ({ name: `s${i + 1}`, upstream: 'p' }));
    c.addNode('p', 'primary', null);
    c.requireNode('p').model = [];
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
      disk: new SimDisk(this.clock, name, (text) => this.note(name, text)),
      diskView: null,
      durableTid: Z64,
      durableAtCrash: null,
      acked: null,
      crashedIncarnation: null,
      decisions: [],
      subs: [],
      verified: unverified(-1),
      refused: null,
      model: null,
      inFlight: [],
      recording: Promise.resolve(),
      recordingPending: 0,
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

  /** The current primary's running Primary (null while it is down, or no longer a primary). */
  get primary(): Primary | null {
    const n = this.requireNode(this.current);
    return n.up ? n.primary : null;
  }

  /** The current primary: 'p', then the last promoted node. Commits go there by default. */
  get primaryName(): string {
    return this.current;
  }

  roleOf(name: string): 'primary' | 'secondary' {
    return this.requireNode(name).role;
  }

  /** The node's last durable tid (hex), or null while it is down. */
  lastTidOf(name: string): string | null {
    const n = this.requireNode(name);
    if (!n.up) return null;
    return (n.primary ? n.primary.localStorage.lastDurableTid : n.durableTid).toString('hex');
  }

  /** The node's connection was refused as diverged and it waits for a rewind (or another upstream). */
  isDiverged(name: string): boolean {
    const n = this.requireNode(name);
    return n.up && n.secondary !== null && n.connState.includes('diverged');
  }

  /** Tids (hex) of the node's log as far as the last check verified it. */
  historyOf(name: string): string[] {
    return this.requireNode(name).verified.entries.map((e) => e.tid);
  }

  /** Every commit made durable on a primary, with what its caller was told. */
  get commits(): readonly SimCommitRecord[] {
    return this.commitRecords;
  }

  secondary(name: string): Secondary | null {
    return this.requireNode(name).secondary;
  }

  /** Tids committed by the workload on the current primary's history, in order (hex). */
  get committedTids(): string[] {
    return (this.requireNode(this.current).model ?? []).map((e) => e.tid);
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

  /** A node's id in upstream paths: from the seed, so that runs replay byte for byte. */
  private nodeIdOf(n: { name: string; incarnation: number }): Buffer {
    return createHash('sha256').update(`${this.options.seed}|${n.name}|${n.incarnation}|node-id`).digest().subarray(0, 8);
  }

  private log(node: string): Logger {
    return (level, message) => {
      if (level === 'warn' || level === 'error') this.note(node, `${level}: ${this.withoutDir(message)}`);
    };
  }

  /** Messages name files in the temp dir: drop the dir so traces do not depend on it. */
  private withoutDir(text: string): string {
    return text.includes(this.dir) ? text.replaceAll(`${this.dir}/`, '').replaceAll(this.dir, '.') : text;
  }

  private async startNode(n: SimNode): Promise<void> {
    n.incarnation += 1;
    const previous = n.path;
    n.path = join(this.dir, `${n.name}.${n.incarnation}.fs`);
    if (previous) {
      writeFileSync(n.path, readFileSync(previous));
      carrySideFiles(previous, n.path);
    }
    this.network.restart(n.name);
    const transport = this.network.transport(n.name);
    const clock = this.clock.view(n.name);
    n.clock = clock;
    // Every sync goes to the node's simulated disk (immediate unless it is slow).
    const disk = n.disk.view();
    n.diskView = disk;
    if (n.role === 'primary') {
      const storage = await FileStorage.open(n.path, { create: true, fsync: true, disk, preallocate: SIM_PREALLOCATE_BYTES, now: () => this.clock.now() });
      n.primary = await Primary.open({
        path: n.path,
        storage,
        replicateTo: n.address,
        transport,
        clock,
        fsync: true,
        heartbeatIntervalMs: this.options.heartbeatIntervalMs ?? 0,
        nodeId: this.nodeIdOf(n),
        syncReplicas: this.options.syncReplicas,
        syncTimeoutMs: this.options.syncTimeoutMs,
        name: n.name,
        log: this.log(n.name),
      });
      this.followCommits(n);
    } else {
      const upstream = this.requireNode(n.upstream!);
      n.secondary = await Secondary.open({
        path: n.path,
        replicateFrom: upstream.address,
        replicateTo: n.address,
        protocol: this.options.protocol,
        fsync: true,
        disk,
        preallocate: SIM_PREALLOCATE_BYTES,
        mutations: this.options.mutations,
        heartbeatIntervalMs: this.options.heartbeatIntervalMs ?? 0,
        heartbeatTimeoutMs: this.options.heartbeatTimeoutMs,
        keepAliveDelayMs: this.options.keepAliveDelayMs === undefined ? 1000 : (this.options.keepAliveDelayMs ?? undefined),
        reconnect: { initialMs: 50, maxMs: 2000, ...this.options.reconnect },
        transport,
        clock,
        random: seededRandom(hash32(`${this.options.seed}|${n.name}|${n.incarnation}`)),
        nodeId: this.nodeIdOf(n),
        name: n.name,
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
            if (v.includes('diverged') && n.refused === null) n.refused = { incarnation: n.incarnation, lastTid: n.durableTid.toString('hex') };
          }
        }),
      );
      n.durableTid = s.storage.lastTransaction();
      n.subs.push(
        s.applied$.subscribe((t) => {
          n.durableTid = t.tid;
          this.stats.applied += 1;
          this.activityCounter += 1;
          this.note(n.name, `apply ${t.tid.toString('hex')}`);
        }),
      );
    }
    this.watchAcks(n);
    disk.opened();
    n.up = true;
    n.sessions = '';
    this.note(n.name, `start #${n.incarnation} (${n.role}${n.upstream ? ` of ${n.upstream}` : ''})`);
  }

  /** Crash a node: abrupt for its peers; its file keeps what its disk synced, and maybe more of what was written. */
  private async crashNode(n: SimNode, style: CrashStyle): Promise<void> {
    if (!n.up) return;
    this.stats.crashes += 1;
    // The file as the crash leaves it: every byte a completed sync covers, maybe more of what was written.
    // Durable is what the disk synced, not what the storage says it did (a storage that says so early must lose).
    const fd = openSync(n.path, 'r');
    let image: Buffer;
    try {
      const size = fstatSync(fd).size;
      const writtenEnd = (n.primary?.storage ?? n.secondary?.storage)?.getSize() ?? size;
      const committedEnd = Math.min(n.diskView?.unsyncedFrom(fd) ?? writtenEnd, writtenEnd);
      if (committedEnd < writtenEnd) this.stats.unsyncedCrashes += 1;
      if (size > writtenEnd) {
        // Transactions written over preallocated fill: each sector of what was not synced may keep the fill.
        image = Buffer.alloc(size);
        readSync(fd, image, 0, size, 0);
        tearSectors(image, committedEnd, writtenEnd, this.random);
      } else {
        // Appended: the file keeps some prefix of what was not synced.
        const keep = committedEnd + Math.floor(this.random.next() * (size - committedEnd + 1));
        image = Buffer.alloc(keep);
        readSync(fd, image, 0, keep, 0);
      }
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
    // Syncs under way return now (the node is already down: their commits stay in doubt).
    n.diskView?.kill();
    n.diskView = null;
    // The old objects are gone for the simulation (inert transport, dead clock);
    // closing them only releases their file descriptors.
    if (old) this.dispose(`${n.name}#${n.incarnation}`, old);
    const crashPath = `${n.path}.crash`;
    writeFileSync(crashPath, image);
    carrySideFiles(n.path, crashPath);
    n.path = crashPath;
    // A secondary acknowledged what it reported applied: nothing of it may be missing after the crash.
    n.durableAtCrash = n.role === 'secondary' ? n.durableTid : null;
    n.crashedIncarnation = n.role === 'secondary' ? n.incarnation : null;
    n.verified = unverified(-1);
    n.refused = null;
  }

  // ---------------------------------------------------------------- workload

  /** The node a commit goes to: `name`, or the current primary, when it is a running primary. */
  private writer(name: string | undefined): SimNode | null {
    const n = this.requireNode(name ?? this.current);
    return n.up && n.primary ? n : null;
  }

  private async commit(records: number, bytes: number, node: string | undefined, twice: boolean): Promise<void> {
    const w = this.writer(node);
    if (!w) {
      this.note(node ?? this.current, 'commit skipped: not a running primary');
      return;
    }
    const fs = w.primary!.storage;
    const n = this.txnNumber++;
    const txn = { user: 'sim', description: `txn ${n}`, extension: { n } };
    await fs.tpcBegin(txn);
    const mine: Buffer[] = [];
    const stored: Array<{ oid: Buffer; data: Buffer }> = [];
    for (let r = 0; r < records; r++) {
      const update = this.oids.length > 0 && this.random.next() < 0.5;
      const oid = update ? this.oids[Math.floor(this.random.next() * this.oids.length)]! : fs.newOid();
      if (mine.some((m) => m.equals(oid))) continue;
      mine.push(oid);
      const fill = `${n}.${r}.${Math.floor(this.random.next() * 1e9)};`;
      const data = Buffer.alloc(bytes, fill);
      stored.push({ oid, data });
      fs.store(oid, await serialOf(fs, oid), data, txn);
    }
    if (twice && stored.length > 0) {
      // Stored again under the same serial: the transaction holds two records of it, the second current.
      const { oid } = stored[0]!;
      const data = Buffer.alloc(bytes, `${n}.again.${Math.floor(this.random.next() * 1e9)};`);
      stored.push({ oid, data });
      fs.store(oid, await serialOf(fs, oid), data, txn);
    }
    if (!(await this.vote(w, fs, txn, `commit of txn ${n}`))) return;
    for (const oid of mine) if (!this.oids.some((o) => o.equals(oid))) this.oids.push(oid);
    this.finish(w, fs, txn, (tid) => `commit ${tid} (${mine.length} records × ${bytes} B)`, recordsDigest(stored));
  }

  private async undo(back: number, count: number): Promise<void> {
    const w = this.writer(undefined);
    const model = w?.model ?? [];
    if (!w || model.length === 0) {
      this.note(this.current, 'undo skipped');
      return;
    }
    // Newest first, as an operator undoing several transactions at once does (an object two of them changed gets a record per undo).
    const newest = Math.max(0, model.length - 1 - back);
    const targets = model.slice(Math.max(0, newest + 1 - count), newest + 1).reverse().map((m) => Buffer.from(m.tid, 'hex'));
    const what = `undo ${targets.map((t) => t.toString('hex')).join(', ')}`;
    const fs = w.primary!.storage;
    const txn = { user: 'sim', description: what };
    await fs.tpcBegin(txn);
    const oids: Buffer[] = [];
    try {
      for (const target of targets) oids.push(...(await fs.undo(target, txn)));
    } catch (err) {
      await fs.tpcAbort(txn);
      this.note(w.name, `${what} refused: ${this.withoutDir((err as Error).message)}`);
      return;
    }
    if (!(await this.vote(w, fs, txn, what))) return;
    this.finish(w, fs, txn, (tid) => `${what} as ${tid} (${oids.length} records)`);
  }

  /** Vote; when the disk refuses the write, abort: nothing of the transaction is committed. */
  private async vote(w: SimNode, fs: FileStorage, txn: TransactionMeta, what: string): Promise<boolean> {
    try {
      await fs.tpcVote(txn);
      return true;
    } catch (err) {
      await fs.tpcAbort(txn);
      if (!(err instanceof StorageWriteError)) throw err;
      this.note(w.name, `${what} failed: ${err.code ?? 'write error'} (aborted, file cut back to ${err.position})`);
      return false;
    }
  }

  /**
   * Finish without waiting (a slow disk, or the acks syncReplicas waits for,
   * return in virtual time, which only moves between steps). The model takes
   * the transaction when it becomes durable on the primary (followCommits);
   * the record notes whether tpcFinish then resolved for the caller. If the
   * primary crashes first, the commit is in doubt (checkNoLoss).
   */
  private finish(w: SimNode, fs: FileStorage, txn: TransactionMeta, text: (tid: string) => string, records?: string): void {
    const entry: InFlight = { incarnation: w.incarnation, description: String(txn.description ?? ''), records, text, record: { tid: '', node: w.name, link: '', outcome: 'pending' } };
    w.inFlight.push(entry);
    const alive = (): boolean => w.up && w.incarnation === entry.incarnation;
    const sync = (this.options.syncReplicas ?? 0) > 0;
    fs.tpcFinish(txn).then(
      (tid) => {
        const hex = tid.toString('hex');
        // Nobody hears of a commit whose process died while it waited.
        entry.record.outcome = alive() ? 'acknowledged' : 'failed';
        if (!alive()) entry.record.reason = 'the primary crashed first';
        else if (sync) this.note(w.name, `${hex} acknowledged to the caller`);
        this.activityCounter += 1;
      },
      (err: Error) => {
        entry.record.outcome = 'failed';
        entry.record.reason = err.name;
        // Failed before it became durable: it never will (after, it is a sync timeout).
        const pending = w.inFlight.indexOf(entry);
        if (pending >= 0 && alive()) w.inFlight.splice(pending, 1);
        if (alive()) this.note(w.name, `${entry.description} failed for the caller: ${this.withoutDir(err.message)}`);
        this.activityCounter += 1;
      },
    );
  }

  /** A primary's durable commits feed its model and the history tree, in order. */
  private followCommits(n: SimNode): void {
    const p = n.primary!;
    n.subs.push(
      p.localStorage.commits$.subscribe((c) => {
        const head = p.chainHead;
        const link = head?.tid.equals(c.tid) ? head.hash.toString('hex') : null;
        n.recordingPending += 1;
        n.recording = n.recording
          .then(() => this.recordDurable(n, p.localStorage, c, link))
          .catch((err: Error) => this.violate('error', n.name, err.stack ?? err.message))
          .finally(() => {
            n.recordingPending -= 1;
            this.activityCounter += 1;
          });
      }),
    );
  }

  private async recordDurable(n: SimNode, fs: FileStorage, c: CommittedTransaction, productLink: string | null): Promise<void> {
    const model = n.model;
    if (!model) return;
    const hex = c.tid.toString('hex');
    if (model.length > 0 && Buffer.compare(c.tid, Buffer.from(model.at(-1)!.tid, 'hex')) <= 0) return; // applied before a promotion
    let description = '';
    let shape: TxnShape | null = null;
    let digest = '';
    for await (const t of fs.iterator(c.tid, c.tid)) {
      description = t.description.toString('utf8');
      shape = shapeOf(t);
      digest = recordsDigest(t.records);
    }
    const entry = n.inFlight[0];
    if (!shape || !entry || entry.description !== description) {
      this.violate('no-loss', n.name, `${hex} (${description || 'unreadable'}) became durable but nobody committed it${entry ? ` (next commit: ${entry.description})` : ''}`);
      return;
    }
    n.inFlight.shift();
    // The model takes what the primary holds: it must be what the workload stored, or every replica copying it would pass.
    if (entry.records !== undefined && entry.records !== digest) {
      this.violate('corruption', n.name, `${hex} (${entry.description}) became durable with records other than those committed`);
      return;
    }
    const link = this.tree.add(model.at(-1)?.link ?? LINEAGE_ORIGIN, shape, n.name);
    model.push({ tid: hex, link });
    if (productLink !== null) this.productLinks.set(link, productLink);
    Object.assign(entry.record, { tid: hex, link });
    this.commitRecords.push(entry.record);
    this.stats.commits += 1;
    this.note(n.name, entry.text(hex));
  }

  // ---------------------------------------------------------------- operations

  /** Apply one workload or fault operation now, then settle and check. */
  async apply(op: SimOp): Promise<void> {
    this.assertOpen('apply');
    this.stats.ops += 1;
    switch (op.kind) {
      case 'commit':
        await this.commit(op.records ?? 3, op.bytes ?? 64, op.node, op.twice ?? false);
        break;
      case 'undo':
        await this.undo(op.back ?? 0, op.count ?? 1);
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
      case 'restart':
        await this.restart(this.requireNode(op.node), op.upstream);
        break;
      case 'reconfigure':
        this.reconfigure(op.node, op.upstream);
        break;
      case 'latency':
        this.network.setLatency(op.a, op.b, op.ms);
        break;
      case 'disk':
        if (op.mode !== 'ok') this.diskFaults += 1;
        this.requireNode(op.node).disk.setMode(op.mode, op.ms);
        break;
      case 'promote':
        await this.promote(this.requireNode(op.node), op.force ?? false);
        break;
      case 'demote':
        await this.demote(this.requireNode(op.node), op.upstream);
        break;
      case 'loseDisk':
        await this.loseDisk(this.requireNode(op.node));
        break;
      case 'rewind':
        await this.rewind(this.requireNode(op.node), op.upstream);
        break;
      default:
        throw new Error(`SimCluster.apply: unknown op kind ${JSON.stringify((op as { kind?: unknown }).kind)}`);
    }
    await this.settle();
    this.flushStep(`op ${describeOp(op)}`);
    if (this.options.checkEveryStep ?? true) await this.check();
  }

  /** Point a secondary at another upstream (any node it would not form a cycle with). */
  private reconfigure(name: string, upstream: string): void {
    const n = this.requireNode(name);
    if (n.role !== 'secondary') throw new Error(`reconfigure ${name} -> ${upstream}: ${name} is not a secondary (demote it)`);
    this.assertUpstream(name, upstream);
    n.upstream = upstream;
    n.refused = null;
    this.note(name, `replicate from ${upstream}`);
    n.secondary?.setReplicationAddress(this.requireNode(upstream).address);
  }

  /** Replication from `upstream` to `name` must not go round in a cycle. */
  private assertUpstream(name: string, upstream: string): void {
    this.requireNode(upstream);
    for (let u: string | null = upstream, hops = 0; u !== null; u = this.requireNode(u).upstream, hops++) {
      if (u === name || hops > this.nodes.size) throw new Error(`${name} cannot replicate from ${upstream}: replication would go round in a cycle`);
    }
  }

  private async restart(n: SimNode, upstream: string | undefined): Promise<void> {
    if (n.up) return;
    if (n.role === 'secondary') {
      const from = upstream ?? n.upstream ?? (this.current !== n.name ? this.current : null);
      if (from === null) {
        this.note(n.name, 'restart skipped: its disk was lost and it has no upstream (promote another node first)');
        return;
      }
      this.assertUpstream(n.name, from);
      n.upstream = from;
    }
    await this.startNode(n);
    if (n.role === 'primary') await this.checkNoLoss(n);
    else await this.checkSecondaryKept(n);
  }

  /**
   * A restarted secondary's log still holds the last transaction it reported
   * durable before its crash, and the last one it acknowledged upstream (an
   * ack is a promise of durability: synchronous replication counts on it).
   */
  private async checkSecondaryKept(n: SimNode): Promise<void> {
    const want = n.durableAtCrash;
    const crashed = n.crashedIncarnation;
    n.durableAtCrash = null;
    n.crashedIncarnation = null;
    const storage = n.secondary?.storage;
    if (!storage) return;
    const last = (): string => storage.lastTransaction().toString('hex');
    if (want && !(await holds(storage, want))) {
      this.violate('no-loss', n.name, `${want.toString('hex')}, reported applied (and acknowledged) before the crash, is missing after restart (last ${last()})`);
      return;
    }
    const acked = crashed !== null && n.acked?.incarnation === crashed ? n.acked.tid : null;
    if (acked && !(await holds(storage, acked))) {
      this.violate('no-loss', n.name, `${acked.toString('hex')}, acknowledged to its upstream before the crash, is missing after restart (last ${last()}; last reported applied ${want?.toString('hex') ?? 'none'})`);
    }
  }

  /** Sessions whose acks are followed (followAcks). */
  private readonly followedSessions = new WeakSet<PrimarySession>();

  /** Follow the acks every session of `n`'s server hears, open and to come, until `n` stops or changes role. */
  private watchAcks(n: SimNode): void {
    const stop = this.serverOf(n)?.watchSessions((session) => this.followAcks(session));
    if (stop) n.subs.push({ unsubscribe: stop });
  }

  /**
   * Note each ack `session` hears from a node of the cluster (its peer is
   * `<node>#c<connection>`), under the incarnation that connected (a late ack
   * of a crashed one counts for it, never for the node restarted since).
   */
  private followAcks(session: PrimarySession): void {
    // A promoted node's server is watched again: its open sessions are followed already.
    if (this.followedSessions.has(session)) return;
    this.followedSessions.add(session);
    const hash = session.peer.indexOf('#');
    const from = hash > 0 ? this.nodes.get(session.peer.slice(0, hash)) : undefined;
    if (!from) return;
    const incarnation = from.incarnation;
    session.progress$.subscribe(({ ackedTid }) => {
      if (ackedTid === null || from.incarnation !== incarnation) return;
      if (from.acked?.incarnation === incarnation && Buffer.compare(ackedTid, from.acked.tid) <= 0) return;
      from.acked = { incarnation, tid: Buffer.from(ackedTid) };
    });
  }

  /** The node's replication server: a Primary's, or a Secondary's that serves further secondaries (not exposed; read for the harness only). */
  private serverOf(n: SimNode): ReplicationServer | null {
    const node = n.primary ?? n.secondary;
    return node === null ? null : (node as unknown as { server: ReplicationServer | null }).server;
  }

  // ---------------------------------------------------------------- failover

  /**
   * Run `work` (real async work that may need virtual time: a promotion, a
   * rewind asking its upstream over the network) while stepping the clock.
   */
  private async whileRunning<T>(work: Promise<T>, maxMs: number, what: string): Promise<T> {
    let done = false;
    const tracked = work.finally(() => (done = true));
    // Awaited below; until then a rejection is only recorded.
    tracked.catch(() => undefined);
    await this.settle();
    if (!done) this.flushStep(`${what}: under way in virtual time`);
    const deadline = this.clock.now() + maxMs;
    while (!done && (await this.step(deadline)));
    if (!done) throw new Error(`${what}: not finished within ${maxMs} virtual ms`);
    return tracked;
  }

  /**
   * Secondary.promote(): the node becomes a writable primary and the current
   * primary. A running primary is only made the current one (the operator
   * picks among the primaries of a split brain).
   */
  private async promote(n: SimNode, force: boolean): Promise<void> {
    if (n.up && n.primary) {
      this.current = n.name;
      this.note(n.name, 'now the current primary');
      this.checkAcknowledged(n);
      return;
    }
    const s = n.up ? n.secondary : null;
    if (!s) {
      this.note(n.name, 'promote skipped: not a running secondary');
      return;
    }
    const options = { force, heartbeatIntervalMs: this.options.heartbeatIntervalMs ?? 0, syncReplicas: this.options.syncReplicas, syncTimeoutMs: this.options.syncTimeoutMs };
    let primary: Primary;
    try {
      primary = await this.whileRunning(s.promote(options), 60_000, `promote ${n.name}`);
    } catch (err) {
      if (!(err instanceof PromotionRefusedError)) throw err;
      this.note(n.name, `promotion refused: ${err.message}`);
      return;
    }
    for (const sub of n.subs) sub.unsubscribe();
    n.subs = [];
    Object.assign(n, { role: 'primary', upstream: null, primary, secondary: null, refused: null, connState: '', inFlight: [] });
    // The same server goes on serving (its sessions kept): the acks its secondaries send still count.
    this.watchAcks(n);
    n.durableTid = primary.localStorage.lastDurableTid;
    await this.walk(n);
    n.model = [...n.verified.entries];
    this.followCommits(n);
    this.current = n.name;
    const g = primary.generation;
    n.decisions.push(`promotion to generation ${g.generation} after ${g.startTid.toString('hex')}`);
    this.note(n.name, `promoted: generation ${g.generation} after ${g.startTid.toString('hex')}`);
    this.checkAcknowledged(n);
  }

  /** Stop a primary (a crash: durable data kept) and restart it as a secondary of `upstream`. */
  private async demote(n: SimNode, upstream: string): Promise<void> {
    if (n.role !== 'primary') throw new Error(`demote ${n.name}: not a primary`);
    this.assertUpstream(n.name, upstream);
    await this.crashNode(n, 'process');
    Object.assign(n, { role: 'secondary', upstream });
    this.note(n.name, `demoted: restarts as a secondary of ${upstream}`);
    await this.startNode(n);
    // Nothing cut its log: every transaction durable on it is still there.
    await this.leaveModel(n, true);
  }

  /**
   * A former primary restarted as a secondary: commits in doubt at its crash
   * that survived join the tree, then it has no model. `strict` when its log
   * was not cut (a demotion), not after a rewind.
   */
  private async leaveModel(n: SimNode, strict: boolean): Promise<void> {
    if (n.secondary) await this.reconcile(n, n.secondary.storage, strict);
    Object.assign(n, { model: null, inFlight: [] });
  }

  /** Crash the node and lose its disk: it is an empty secondary from now on (restart it). */
  private async loseDisk(n: SimNode): Promise<void> {
    await this.crashNode(n, 'host');
    if (n.path) for (const f of [n.path, ...sideFilesOf(n.path)]) rmSync(f, { force: true });
    Object.assign(n, { path: '', role: 'secondary', upstream: null, model: null, inFlight: [], refused: null, durableAtCrash: null, crashedIncarnation: null, decisions: [] });
    this.note(n.name, 'disk lost: data file, generations, hash chain and audit log are gone');
  }

  /**
   * The operator's repair of a diverged node: stop it, rewindStorage() it
   * against `upstream` (which names the fork over the network), restart it
   * as that node's secondary. A rewind that cannot reach `upstream` cuts
   * nothing (noted); the node restarts anyway.
   */
  private async rewind(n: SimNode, upstreamName: string | undefined): Promise<void> {
    const upstream = upstreamName ?? n.upstream ?? this.current;
    this.assertUpstream(n.name, upstream);
    await this.crashNode(n, 'process');
    // A rewind cuts on purpose what the new upstream does not hold.
    Object.assign(n, { role: 'secondary', upstream, refused: null, durableAtCrash: null, crashedIncarnation: null });
    if (n.path) {
      this.network.restart(n.name);
      const clock = this.clock.view(n.name);
      try {
        const options = { toCommonWith: this.requireNode(upstream).address, transport: this.network.transport(n.name), clock, timeoutMs: 10_000 };
        const r = await this.whileRunning(rewindStorage(n.path, options), 60_000, `rewind ${n.name}`);
        const fork = r.forkTid.toString('hex');
        n.decisions.push(`rewind to ${fork}`);
        this.note(n.name, r.sidePath ? `rewound to ${fork} against ${upstream}: ${r.cutTids.length} transactions cut into ${basename(r.sidePath)}` : `rewind against ${upstream}: nothing to cut`);
      } catch (err) {
        if (!(err instanceof ZrsError || err instanceof SimNetworkError)) throw err;
        // Failed after its record was written: the log shows the rewind begun.
        if (err instanceof RewindIncompleteError) n.decisions.push(`rewind to ${err.forkTid.toString('hex')}`);
        this.note(n.name, `rewind against ${upstream} failed: ${this.withoutDir(err.message)}`);
      } finally {
        clock.kill();
      }
    }
    await this.startNode(n);
    await this.leaveModel(n, false);
  }

  /** With checkAcknowledged: `n` (the current primary) holds every commit acknowledged to its caller. */
  private checkAcknowledged(n: SimNode): void {
    if (!this.options.checkAcknowledged) return;
    const held = new Set(n.verified.entries.map((e) => e.link));
    const lost = this.commitRecords.filter((r) => r.outcome === 'acknowledged' && !held.has(r.link));
    if (lost.length === 0) return;
    const some = lost.slice(0, 3).map((r) => `${r.tid} (committed on ${r.node})`);
    this.violate('acknowledged', n.name, `${lost.length} commit(s) acknowledged to their callers are not in its history: ${some.join(', ')}${lost.length > 3 ? ' …' : ''}`);
  }

  // ---------------------------------------------------------------- time

  /** Fire the next timer or network event due by `untilMs` (absolute virtual), settle, check. False when none. */
  async step(untilMs = Number.POSITIVE_INFINITY): Promise<boolean> {
    this.assertOpen('step');
    if (!(untilMs >= 0)) throw new RangeError(`SimCluster.step(${untilMs}): untilMs must be a number >= 0`);
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
    this.assertOpen('advance');
    if (!(Number.isFinite(ms) && ms >= 0)) throw new RangeError(`SimCluster.advance(${ms}): ms must be a finite number >= 0`);
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
    // Rounds spent waiting for real file I/O do not count: a real fsync on a
    // loaded machine may take any number of rounds, and always ends.
    for (let busy = 0; quiet < 2; ) {
      await nextRound();
      const now = this.activity();
      if (ioInFlight()) {
        quiet = 0;
        last = now;
      } else if (now !== last) {
        if (++busy > maxRounds) throw new Error(`settle: still busy after ${maxRounds} rounds`);
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
    return this.serverOf(n)?.status() ?? [];
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

  /** Invariant 3: the restarted primary holds every transaction that was durable on it (see reconcile). */
  private async checkNoLoss(n: SimNode): Promise<void> {
    const fs = n.primary?.localStorage;
    if (fs) await this.reconcile(n, fs, true);
  }

  /**
   * After a crash of a node that was a primary: its log holds, in order and
   * unchanged, every transaction that was durable on it (`strict`: after a
   * restart or a demotion; after a rewind only the part its log still has
   * must match); after those, only commits in flight at the crash may follow, in commit order:
   * they enter its model and the history tree.
   */
  private async reconcile(n: SimNode, fs: { iterator(): AsyncIterable<TransactionRecord> }, strict: boolean): Promise<void> {
    await n.recording;
    const model = n.model;
    if (!model) return;
    const inDoubt = n.inFlight.splice(0);
    let i = 0;
    let parent = LINEAGE_ORIGIN;
    for await (const t of fs.iterator()) {
      const shape = shapeOf(t);
      const want = model[i];
      if (want) {
        if (want.link !== lineageLink(parent, shape)) {
          // Not strict: the walk judges what follows the part still shared.
          if (strict) this.violate('no-loss', n.name, `durable ${want.tid} (#${i}) is replaced by ${shape.tid} after restart`);
          return;
        }
      } else {
        // Past the durable end: a commit in doubt at the crash may have survived.
        const entry = inDoubt.shift();
        if (!entry || entry.description !== t.description.toString('utf8')) {
          if (strict) this.violate('no-loss', n.name, `transaction ${shape.tid} (#${i}) after restart: nobody committed it`);
          return;
        }
        // It survived whole or not at all: records that are not what was stored are damage recovery kept.
        if (entry.records !== undefined && entry.records !== recordsDigest(t.records)) {
          this.violate('corruption', n.name, `in-doubt ${shape.tid} (${entry.description}) survived the crash with records other than those committed`);
          return;
        }
        const link = this.tree.add(parent, shape, n.name);
        model.push({ tid: shape.tid, link });
        Object.assign(entry.record, { tid: shape.tid, link });
        this.commitRecords.push(entry.record);
        this.stats.commits += 1;
        this.note(n.name, `in-doubt ${shape.tid} (${entry.description}) survived the crash`);
      }
      parent = model[i]!.link;
      i += 1;
    }
    if (strict && i < model.length) {
      this.violate('no-loss', n.name, `durable ${model[i]!.tid} (#${i}) is missing after restart`);
      return;
    }
    for (const lost of inDoubt) this.note(n.name, `in-doubt ${lost.description} lost in the crash`);
  }

  /**
   * Check every running node: its durable log is a path of the history tree
   * (a prefix of some primary's history, the records unchanged: invariants 1
   * and 4, and no mixed histories), its hash chain agrees with the committing
   * primary's, a node refused as diverged has not moved, and nothing partial
   * is visible on a secondary. Returns the violations found by this call.
   */
  async check(): Promise<Violation[]> {
    this.assertOpen('check');
    const before = this.violationsList.length;
    for (const n of this.nodes.values()) {
      if (!n.up || (!n.primary && !n.secondary) || n.recordingPending > 0) continue;
      const found = this.violationsList.length;
      await this.walk(n);
      if (this.violationsList.length === found) this.checkPartial(n);
      this.checkChain(n);
      this.checkRefused(n);
    }
    return this.violationsList.slice(before);
  }

  /** Extend the node's verified path with the transactions durable since the last check. */
  private async walk(n: SimNode): Promise<void> {
    const storage = n.primary?.localStorage ?? n.secondary?.storage;
    if (!storage) return;
    if (n.verified.incarnation !== n.incarnation) n.verified = unverified(n.incarnation);
    const v = n.verified;
    // What iterates is what is durable; later finished transactions are still syncing.
    const lastTid = n.primary ? n.primary.localStorage.lastDurableTid : n.durableTid;
    if (v.faulted || lastTid.equals(v.lastTid)) return;
    const start = v.entries.length === 0 ? null : tidPlusOne(v.lastTid);
    for await (const t of storage.iterator(start)) {
      const next = this.tree.follow(v.entries.at(-1)?.link ?? LINEAGE_ORIGIN, shapeOf(t));
      if (!('link' in next)) {
        this.violate(next.invariant, n.name, `#${v.entries.length}: ${next.detail}`);
        v.faulted = true;
        return;
      }
      v.entries.push({ tid: t.tid.toString('hex'), link: next.link });
      v.lastTid = t.tid;
    }
  }

  private checkPartial(n: SimNode): void {
    const s = n.secondary;
    if (!s || n.verified.faulted) return;
    const v = n.verified;
    const lastTid = n.durableTid;
    if (!lastTid.equals(v.lastTid)) {
      this.violate('partial', n.name, `last durable transaction ${lastTid.toString('hex')} is not the last complete one ${v.lastTid.toString('hex')}`);
      return;
    }
    const syncing = !s.storage.lastTransaction().equals(lastTid);
    if (!syncing && s.storage.transactionCount !== v.entries.length) {
      this.violate('partial', n.name, `transactionCount ${s.storage.transactionCount} but ${v.entries.length} transactions iterate`);
    }
  }

  /** The node's hash chain link at its head is the one the primary that committed that transaction computed. */
  private checkChain(n: SimNode): void {
    const head = n.primary ? n.primary.chainHead : (n.secondary?.history?.chain.head ?? null);
    const entries = n.verified.entries;
    if (!head || n.verified.faulted) return;
    const tid = head.tid.toString('hex');
    for (let i = entries.length - 1; i >= 0 && i >= entries.length - 16; i--) {
      if (entries[i]!.tid !== tid) continue;
      const want = this.productLinks.get(entries[i]!.link);
      if (want !== undefined && want !== head.hash.toString('hex')) {
        this.violate('lineage', n.name, `its hash chain link at ${tid} is not the one the primary that committed it computed`);
        n.verified.faulted = true;
      }
      return;
    }
  }

  /** A node refused as diverged keeps its log as it was until it is rewound (or pointed elsewhere). */
  private checkRefused(n: SimNode): void {
    const r = n.refused;
    if (!r || r.incarnation !== n.incarnation || !n.secondary) return;
    const now = n.durableTid.toString('hex');
    if (now === r.lastTid) return;
    this.violate('lineage', n.name, `refused as diverged at ${r.lastTid}, it moved to ${now} without a rewind`);
    n.refused = null;
  }

  /** Throw an InvariantViolationError (with the trace) if any verdict failed so far. */
  assertInvariants(): void {
    if (this.violationsList.length) throw new InvariantViolationError(this.violationsList, this.traceLines);
  }

  /** Every other node is a running secondary holding exactly the current primary's durable history. */
  isConverged(): boolean {
    const head = this.requireNode(this.current);
    const p = head.up ? head.primary : null;
    if (!p || head.inFlight.length > 0 || head.recordingPending > 0) return false;
    const last = p.localStorage.lastDurableTid;
    for (const n of this.nodes.values()) {
      if (n === head) continue;
      if (n.role !== 'secondary' || !n.secondary || !n.up) return false;
      if (!n.durableTid.equals(last) || !n.secondary.storage.lastTransaction().equals(last)) return false;
      if (this.otherContents(n, head)) return false;
    }
    return true;
  }

  /** Both logs were verified up to the same tid, but end in different transactions (a split brain's equal tids). */
  private otherContents(n: SimNode, head: SimNode): boolean {
    const mine = n.verified;
    const theirs = head.verified;
    return mine.lastTid.equals(theirs.lastTid) && mine.entries.at(-1)?.link !== theirs.entries.at(-1)?.link;
  }

  /** The node is a running secondary whose connection is replicating (past its handshake). */
  isReplicating(name: string): boolean {
    const n = this.requireNode(name);
    return n.up && n.secondary !== null && n.connState.includes('"replicating"');
  }

  /**
   * The liveness phase: heal every partition, restart crashed nodes, then
   * run virtual time (at most `maxMs`) until every secondary equals the
   * current primary. Records a 'convergence' violation when it does not.
   */
  async converge(maxMs = 120_000): Promise<boolean> {
    this.assertOpen('converge');
    if (!(Number.isFinite(maxMs) && maxMs >= 0)) throw new RangeError(`SimCluster.converge(${maxMs}): maxMs must be a finite number >= 0`);
    this.traceLines.push(`${String(this.elapsedMs).padStart(7)} ms  --   liveness phase (up to ${maxMs} ms)`);
    this.network.heal(undefined, undefined, 'deliver');
    for (const n of this.nodes.values()) {
      if (n.disk.mode === 'ok') continue;
      n.disk.setMode('ok');
      this.note(n.name, 'disk ok');
    }
    for (const n of this.nodes.values()) if (!n.up) await this.apply({ kind: 'restart', node: n.name });
    await this.settle();
    this.flushStep('healed');
    const deadline = this.clock.now() + maxMs;
    while (!this.isConverged() && !this.stopped) {
      if (!(await this.step(deadline))) break;
    }
    await this.check();
    const head = this.requireNode(this.current);
    if (!this.isConverged()) {
      const states = this.nodeNames
        .filter((name) => name !== this.current)
        .map((name) => {
          const n = this.requireNode(name);
          const other = n.up && this.otherContents(n, this.requireNode(this.current)) ? ' (other contents)' : '';
          return `${name}${n.role === 'primary' ? ' (a primary)' : ''}@${n.up ? this.lastTidOf(name) : 'down'}${other} ${n.connState}`;
        });
      this.violate('convergence', '*', `not converged within ${maxMs} ms: ${this.current}@${this.primary ? this.lastTidOf(this.current) : 'down'}; ${states.join('; ')}`);
      return false;
    }
    // Every log equals the primary's: the verified paths end where its path ends.
    const reference = head.verified.entries;
    for (const n of this.nodes.values()) {
      if (n === head) continue;
      const mine = n.verified.entries;
      if (mine.length !== reference.length || mine.at(-1)?.link !== reference.at(-1)?.link) {
        this.violate('convergence', n.name, `holds ${mine.length} of ${reference.length} transactions of ${this.current}'s history`);
      }
    }
    await this.checkWholeLogs();
    await this.checkAuditLogs();
    this.checkAcknowledged(head);
    this.traceLines.push(`${String(this.elapsedMs).padStart(7)} ms  --   converged`);
    return this.violationsList.length === 0;
  }

  /**
   * Walk every node's whole log again, from its first transaction: the
   * checks along the way read each transaction once, as it became durable,
   * so a transaction damaged in place later would otherwise go unseen.
   * (Where each log ends was compared just before.)
   */
  private async checkWholeLogs(): Promise<void> {
    for (const n of this.nodes.values()) {
      n.verified = unverified(n.incarnation);
      await this.walk(n);
    }
  }

  /**
   * Every node's audit log is intact (a tail torn by a crash is cut when the
   * node reopens it) and shows the failover decisions made on the node, in
   * order: each promotion with its generation, each rewind with its fork.
   */
  private async checkAuditLogs(): Promise<void> {
    await this.settle();
    for (const n of this.nodes.values()) {
      if (!n.path || !existsSync(defaultAuditPath(n.path))) {
        if (n.decisions.length > 0) this.violate('audit', n.name, `no audit log, though ${n.decisions.length} decision(s) were made on this node`);
        continue;
      }
      const read = await readAuditLog(defaultAuditPath(n.path));
      for (const d of read.damages) this.violate('audit', n.name, `audit log damaged at offset ${d.offset}: ${d.reason}`);
      const logged = auditedDecisions(read.records);
      if (logged.join('; ') !== n.decisions.join('; ')) {
        this.violate('audit', n.name, `audit log shows [${logged.join('; ')}], the node made [${n.decisions.join('; ')}]`);
      }
    }
  }

  /**
   * Run a plan: each scheduled operation at its virtual time, every network
   * event and timer in between as its own step, then the liveness phase.
   */
  async run(plan: SimPlan): Promise<SimRunResult> {
    this.assertOpen('run');
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
    this.stats.faults = ns.faults + this.stats.crashes + this.diskFaults;
    this.stats.chunks = ns.chunks;
    this.stats.bytes = ns.bytes;
    this.stats.virtualMs = this.elapsedMs;
    return { ok: this.violationsList.length === 0, violations: [...this.violationsList], trace: this.traceLines, stats: { ...this.stats } };
  }

  /** Stop every node and remove the temp dir (when the cluster made it). */
  private assertOpen(what: string): void {
    if (this.closed) throw new Error(`SimCluster.${what}: the cluster is closed`);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const n of this.nodes.values()) {
      for (const s of n.subs) s.unsubscribe();
      n.subs = [];
      // As a crash: inert transports, so no close waits for bytes to drain.
      if (n.up) this.network.crash(n.name, 'process');
      n.clock?.kill();
      n.diskView?.kill();
      n.diskView = null;
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
      return `commit ${op.records ?? 3}×${op.bytes ?? 64}B${op.node ? ` on ${op.node}` : ''}`;
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
      return `restart ${op.node}${op.upstream ? ` as a secondary of ${op.upstream}` : ''}`;
    case 'reconfigure':
      return `reconfigure ${op.node} -> ${op.upstream}`;
    case 'latency':
      return `latency ${op.a}<->${op.b} ${op.ms} ms`;
    case 'disk':
      return `disk ${op.node} ${op.mode}${op.mode === 'slow' ? ` ${op.ms ?? 500} ms` : ''}`;
    case 'promote':
      return `promote ${op.node}${op.force ? ' (forced)' : ''}`;
    case 'demote':
      return `demote ${op.node} to a secondary of ${op.upstream}`;
    case 'loseDisk':
      return `lose the disk of ${op.node}`;
    case 'rewind':
      return `rewind ${op.node}${op.upstream ? ` against ${op.upstream}` : ''}`;
  }
}

