// The failover history of one open storage: its generation history and its
// hash chain together, with what the handshake needs on each side (the
// secondary's hello fields, the primary's verdict and welcome fields, the
// secondary's adoption of the primary's generations).

import type { Refusal } from '../../machines/handshake.js';
import { ProtocolError } from '../errors.js';
import type { FileStorage } from '../storage/FileStorage.js';
import { Z64 } from '../storage/timestamp.js';
import { MAX_GENERATION_HISTORY, type ChainHead, type GenerationEntry, type HelloMessage, type WelcomeMessage } from '../wire/native.js';
import { judgeHistory, type HistoryVerdict } from './divergence.js';
import { GenerationHistory, generationsReachedBy } from './generations.js';
import { HashChain } from './hashChain.js';

export interface FailoverHistoryOptions {
  /** A primary's storage gets generation 0 when it has no history yet. */
  role: 'primary' | 'secondary';
  /** fsync chain appends (default true). */
  fsync?: boolean;
}

/** The `hello` fields describing a secondary's history. */
export interface HelloHistoryFields {
  generations: GenerationEntry[];
  chainHead?: ChainHead;
  chainSamples?: ChainHead[];
}

/**
 * @example
 * const history = await FailoverHistory.open(storage, { role: 'primary' });
 * history.generations.current; // { generation: 0, startTid: Z64 }
 */
export class FailoverHistory {
  private constructor(
    readonly generations: GenerationHistory,
    private currentChain: HashChain,
    private readonly storage: FileStorage,
    private readonly fsync: boolean | undefined,
    /** A secondary's: its history still grows from an upstream (false once promoted). */
    private replica: boolean,
  ) {}

  static async open(storage: FileStorage, options: FailoverHistoryOptions): Promise<FailoverHistory> {
    const generations = await GenerationHistory.open(storage.path);
    if (options.role === 'primary') await generations.ensureInitial();
    const chain = await HashChain.open(storage, { fsync: options.fsync });
    return new FailoverHistory(generations, chain, storage, options.fsync, options.role === 'secondary');
  }

  /**
   * Start generation n + 1 at `startTid` (a promotion): from now on this
   * storage's history grows only by its own commits.
   */
  async startGeneration(startTid: Buffer): Promise<GenerationEntry> {
    const entry = await this.generations.startNext(startTid);
    // Only once the generation is durable: a failed write leaves the replica as it was.
    this.replica = false;
    return entry;
  }

  /** The storage's hash chain. */
  get chain(): HashChain {
    return this.currentChain;
  }

  /**
   * After the open storage was cut back to `forkTid` (an online rewind): drop
   * the links past it (by reopening the chain on the shorter file) and the
   * generations starting at or after it, durably.
   */
  async cutTo(forkTid: Buffer): Promise<void> {
    // A chain stopped by a write error fails its close; the reopened one is rebuilt from the data file.
    await this.currentChain.close().catch(() => undefined);
    this.currentChain = await HashChain.open(this.storage, { fsync: this.fsync });
    await this.generations.cutFrom(forkTid);
  }

  /** What a secondary whose last tid is `startTid` says in its hello. */
  helloFields(startTid: Buffer): HelloHistoryFields {
    // Generations adopted but not reached say nothing of what this node holds.
    const generations = generationsReachedBy(this.generations.list, startTid);
    const hash = this.chain.hashAt(startTid);
    if (hash === null) return { generations };
    return {
      generations,
      chainHead: { tid: Buffer.from(startTid), hash },
      chainSamples: this.chain.samples(generations.map((g) => g.startTid)).filter((s) => Buffer.compare(s.tid, startTid) < 0),
    };
  }

  /**
   * The primary's verdict on a hello (pure reads). A chain stopped by a
   * write error knows nothing past its head: a secondary that is further
   * cannot be judged (`unknown`), never taken for diverged.
   */
  verdict(hello: Pick<HelloMessage, 'startTid' | 'generations' | 'chainHead'> & { chainSamples?: ChainHead[] }): HistoryVerdict {
    const head = this.chain.head?.tid ?? Z64;
    if (this.chain.failure !== null && Buffer.compare(hello.startTid, head) > 0) return { kind: 'unknown' };
    return judgeHistory(
      { generations: this.generations.list, hashAt: (tid) => this.chain.hashAt(tid), lastTid: head, replica: this.replica, neverHeld: (tid) => this.storage.provesNeverHeld(tid) },
      hello,
    );
  }

  /** The refusal for a hello, or undefined when the secondary may replicate. */
  refusalFor(hello: Pick<HelloMessage, 'startTid' | 'generations' | 'chainHead'> & { chainSamples?: ChainHead[] }): Refusal | undefined {
    const v = this.verdict(hello);
    if (v.kind === 'diverged') return { code: 'diverged', reason: `${v.reason}; fork at tid ${v.forkTid.toString('hex')}`, forkTid: v.forkTid };
    if (v.kind === 'inconsistent') return { code: 'bad-tid', reason: v.reason };
    return undefined;
  }

  /**
   * The refusal for a peer that gives nothing but its last tid (zc.zrs's
   * protocols), judged by position alone: `diverged` for a tid this storage
   * provably never held (a node of another history, such as an old primary
   * after a failover), else undefined.
   */
  refusalForStartTid(startTid: Buffer): Refusal | undefined {
    const v = this.verdict({ startTid, generations: [] });
    if (v.kind !== 'diverged') return undefined;
    // zc.zrs's protocols carry no fork tid, and a tid alone does not give one: the reason says what to do.
    return { code: 'diverged', reason: `${v.reason}: the secondary holds history this node never had (an old primary, or a node of another history); rewind it (zrs rewind --to-common-with) before it replicates from here` };
  }

  /** The welcome fields: the current generation and the whole history. */
  welcomeFields(): Pick<WelcomeMessage, 'generation'> & { generations: GenerationEntry[] } {
    const list = this.generations.list;
    return { generation: list[list.length - 1] ?? { generation: 0, startTid: Buffer.alloc(8) }, generations: list };
  }

  /** A secondary adopts its primary's history from welcome (durably). */
  async adopt(welcome: { generation: GenerationEntry; generations?: GenerationEntry[] }): Promise<void> {
    const list = welcome.generations && welcome.generations.length > 0 ? welcome.generations : mergeCurrent(this.generations.list, welcome.generation);
    // A hello carries the whole history: a longer one could never be sent again.
    if (list.length > MAX_GENERATION_HISTORY) {
      throw new ProtocolError(`the primary's generation ${welcome.generation.generation} would make this node's history longer than ${MAX_GENERATION_HISTORY} generations`);
    }
    const mine = this.generations.list;
    const same = list.length === mine.length && list.every((g, i) => g.generation === mine[i]!.generation && g.startTid.equals(mine[i]!.startTid));
    if (!same) await this.generations.replace(list);
    await this.generations.noteSeen(welcome.generation.generation);
  }

  async close(): Promise<void> {
    // A generation noted as seen (a refusal's) is on disk before the storage is let go.
    await this.generations.idle();
    await this.chain.close();
  }
}

function mergeCurrent(list: GenerationEntry[], current: GenerationEntry): GenerationEntry[] {
  const kept = list.filter((g) => g.generation < current.generation && Buffer.compare(g.startTid, current.startTid) <= 0);
  return [...kept, current];
}
