// Generation history of one storage, kept durably beside its data file in
// `<data file>.generations` (JSON, replaced atomically: temp + fsync + rename
// + directory fsync). Invariants: generation numbers strictly increase, start
// tids never decrease, and `maxSeen` (the largest generation this node ever
// saw) never decreases, so a promotion always starts a strictly greater one.

import { open, readFile, rename, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { createHash } from 'node:crypto';
import { ZrsError } from '../errors.js';
import { syncDirectory } from '../storage/fileio.js';
import { Z64 } from '../storage/timestamp.js';
import { MAX_GENERATION_HISTORY, type GenerationEntry } from '../wire/native.js';

export type { GenerationEntry };

/** Path of the generation history of the storage at `dataPath`. */
export function generationsPathFor(dataPath: string): string {
  return `${dataPath}.generations`;
}

const FORMAT_VERSION = 1;

interface GenerationsFile {
  version: number;
  /** Largest generation number ever seen (adopted, or started here). */
  maxSeen: number;
  generations: Array<{ generation: number; startTid: string }>;
  /** contentCheck of the fields above (files written before it have none: read as they are). */
  check?: string;
}

/**
 * The first 16 hex digits of the sha256 of the history's content, written
 * in a canonical form: a changed digit in a start tid or a generation
 * number (a stray write, bit rot) is found on open, never taken for the
 * node's history.
 */
function contentCheck(maxSeen: unknown, generations: unknown): string {
  return createHash('sha256').update(JSON.stringify({ version: FORMAT_VERSION, maxSeen, generations })).digest('hex').slice(0, 16);
}

/** Why a history of `length` generations takes no further one. */
function historyFullMessage(length: number): string {
  return `this node's history holds ${length} generations, the most a handshake carries (${MAX_GENERATION_HISTORY}): no further generation can start`;
}

/** Throws ZrsError unless `list` is a well-formed history (oldest first). */
export function checkGenerations(list: readonly GenerationEntry[], where = 'generation history'): void {
  for (let i = 0; i < list.length; i++) {
    const e = list[i]!;
    if (!Number.isSafeInteger(e.generation) || e.generation < 0) throw new ZrsError(`${where}: bad generation number ${e.generation}`);
    if (e.startTid.length !== 8) throw new ZrsError(`${where}: start tid must be 8 bytes`);
    if (i > 0) {
      const before = list[i - 1]!;
      if (e.generation <= before.generation) throw new ZrsError(`${where}: generation numbers must strictly increase`);
      if (Buffer.compare(e.startTid, before.startTid) < 0) throw new ZrsError(`${where}: start tids must not decrease`);
    }
  }
}

/**
 * The generations of `list` a node whose last transaction is `lastTid` has
 * reached: those starting at or before it. One starting after it holds
 * nothing the node has (adopted from a welcome before catching up); one
 * starting at it counts (the node may have been promoted there).
 */
export function generationsReachedBy(list: readonly GenerationEntry[], lastTid: Buffer): GenerationEntry[] {
  return list.filter((g) => Buffer.compare(g.startTid, lastTid) <= 0);
}

/** The generations a rewind to `tid` keeps: those starting before it. */
export function generationsBefore(list: readonly GenerationEntry[], tid: Buffer): GenerationEntry[] {
  return list.filter((g) => Buffer.compare(g.startTid, tid) < 0);
}

/** Same number and same start tid. */
export function sameGeneration(a: GenerationEntry, b: GenerationEntry): boolean {
  return a.generation === b.generation && a.startTid.equals(b.startTid);
}

const copyEntry = (e: GenerationEntry): GenerationEntry => ({ generation: e.generation, startTid: Buffer.from(e.startTid) });

/**
 * The durable generation history of one storage.
 *
 * @example
 * const gens = await GenerationHistory.open('Data.fs');
 * if (gens.list.length === 0) await gens.replace([{ generation: 0, startTid: Z64 }]);
 */
export class GenerationHistory {
  private constructor(
    readonly path: string,
    private entries: GenerationEntry[],
    private seen: number,
  ) {}

  /** Read `<dataPath>.generations`; an absent file is an empty history. */
  static async open(dataPath: string): Promise<GenerationHistory> {
    const path = generationsPathFor(dataPath);
    const { entries, maxSeen } = await readGenerationsFile(path);
    return new GenerationHistory(path, entries, maxSeen);
  }

  /** Oldest first (copies). */
  get list(): GenerationEntry[] {
    return this.entries.map(copyEntry);
  }

  /** The current (last) generation, or null for an empty history. */
  get current(): GenerationEntry | null {
    const last = this.entries[this.entries.length - 1];
    return last ? copyEntry(last) : null;
  }

  /** The largest generation number this node ever saw (-1 when none). */
  get maxSeen(): number {
    return this.seen;
  }

  /** Writes one after the other: two at once would share the temp file, and the later could be lost. */
  private queue: Promise<unknown> = Promise.resolve();

  private serial<T>(op: () => Promise<T>): Promise<T> {
    const run = this.queue.then(op, op);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** Resolves once every change asked for so far is on disk (or failed): what a promotion plans from. */
  idle(): Promise<void> {
    return this.queue.then(() => undefined);
  }

  /** Replace the history (e.g. adopt the primary's from `welcome`), durably. */
  replace(list: readonly GenerationEntry[]): Promise<void> {
    return this.serial(() => this.replaceNow(list));
  }

  private async replaceNow(list: readonly GenerationEntry[]): Promise<void> {
    checkGenerations(list);
    const entries = list.map(copyEntry);
    const seen = Math.max(this.seen, ...entries.map((e) => e.generation));
    await writeGenerationsFile(this.path, entries, seen);
    this.entries = entries;
    this.seen = seen;
  }

  /** Note a generation seen elsewhere (a welcome, a refusal), so a later promotion goes past it. */
  noteSeen(generation: number): Promise<void> {
    return this.serial(async () => {
      if (generation <= this.seen) return;
      await writeGenerationsFile(this.path, this.entries, generation);
      this.seen = generation;
    });
  }

  /** The generation a primary opened on this storage starts with when it has none: 0 from the beginning. */
  async ensureInitial(): Promise<void> {
    if (this.entries.length === 0) await this.replace([{ generation: 0, startTid: Buffer.from(Z64) }]);
  }

  /**
   * Start generation max(everything seen) + 1 at `startTid` (promotion), durably.
   * Invariant 5: the new number is strictly greater than any this node saw.
   * Generations that start after `startTid` are dropped: a secondary adopts
   * its primary's history before it has caught up, and promoted then, it
   * never reached them (its history is a prefix of the one before).
   */
  startNext(startTid: Buffer): Promise<GenerationEntry> {
    return this.serial(() => this.startNextNow(startTid));
  }

  private async startNextNow(startTid: Buffer): Promise<GenerationEntry> {
    const base = this.keptAt(startTid);
    const last = base[base.length - 1]!;
    if (Buffer.compare(startTid, last.startTid) < 0) throw new ZrsError('a new generation cannot start before the first one');
    const full = this.fullAt(startTid);
    if (full !== null) throw new ZrsError(full);
    const next: GenerationEntry = { generation: this.nextNumber(), startTid: Buffer.from(startTid) };
    await this.replaceNow([...base, next]);
    return copyEntry(next);
  }

  /**
   * Why no generation can start at `startTid`, as the history is already as
   * long as a hello carries (it could never be sent again), or as the
   * largest number seen leaves none above it; or null.
   */
  fullAt(startTid: Buffer): string | null {
    const length = this.keptAt(startTid).length;
    if (length >= MAX_GENERATION_HISTORY) return historyFullMessage(length);
    const next = this.nextNumber();
    if (!Number.isSafeInteger(next)) return `${this.path}: generation ${next - 1} was seen, the largest number a generation can take: no further generation can start`;
    return null;
  }

  /** The number a promotion takes: one above every generation this node saw. */
  nextNumber(): number {
    return Math.max(this.seen, ...this.recorded().map((e) => e.generation)) + 1;
  }

  /** The recorded history; a storage without one was served by a primary of generation 0 from the beginning. */
  private recorded(): GenerationEntry[] {
    return this.entries.length > 0 ? this.entries : [{ generation: 0, startTid: Buffer.from(Z64) }];
  }

  /** The generations a promotion at `startTid` keeps: the first, and those starting at or before it. */
  private keptAt(startTid: Buffer): GenerationEntry[] {
    return this.recorded().filter((e, i) => i === 0 || Buffer.compare(e.startTid, startTid) <= 0);
  }

  /** Drop generations that start at or after `tid` (rewind), durably; maxSeen is kept. */
  cutFrom(tid: Buffer): Promise<void> {
    return this.serial(async () => {
      const kept = generationsBefore(this.entries, tid);
      await writeGenerationsFile(this.path, kept, this.seen);
      this.entries = kept;
    });
  }
}

async function readGenerationsFile(path: string): Promise<{ entries: GenerationEntry[]; maxSeen: number }> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { entries: [], maxSeen: -1 };
    throw err;
  }
  let parsed: GenerationsFile;
  try {
    parsed = JSON.parse(text) as GenerationsFile;
  } catch (err) {
    throw new ZrsError(`${path}: not a generation history: ${(err as Error).message}`, { cause: err });
  }
  if (typeof parsed !== 'object' || parsed === null || parsed.version !== FORMAT_VERSION || !Array.isArray(parsed.generations)) {
    throw new ZrsError(`${path}: unsupported generation history format`);
  }
  if (parsed.check !== undefined && parsed.check !== contentCheck(parsed.maxSeen, parsed.generations)) {
    throw new ZrsError(`${path}: the generation history does not match its check (damaged, or edited without removing "check"); see docs/FAILOVER.md, Generations`);
  }
  const entries = parsed.generations.map((g: GenerationsFile['generations'][number] | null) => {
    if (typeof g !== 'object' || g === null) throw new ZrsError(`${path}: bad generation entry ${JSON.stringify(g)}`);
    if (typeof g.startTid !== 'string' || !/^[0-9a-f]{16}$/.test(g.startTid)) throw new ZrsError(`${path}: bad start tid`);
    return { generation: g.generation, startTid: Buffer.from(g.startTid, 'hex') };
  });
  checkGenerations(entries, path);
  // Never below a generation the node saw (a promotion must not reuse one): a value that is not a count is damage, not "none".
  if (parsed.maxSeen !== undefined && !(Number.isSafeInteger(parsed.maxSeen) && parsed.maxSeen >= -1)) throw new ZrsError(`${path}: bad maxSeen ${JSON.stringify(parsed.maxSeen)}`);
  const maxSeen = parsed.maxSeen ?? -1;
  return { entries, maxSeen: Math.max(maxSeen, ...entries.map((e) => e.generation)) };
}

async function writeGenerationsFile(path: string, entries: readonly GenerationEntry[], maxSeen: number): Promise<void> {
  const generations = entries.map((e) => ({ generation: e.generation, startTid: e.startTid.toString('hex') }));
  const body: GenerationsFile = { version: FORMAT_VERSION, maxSeen, generations, check: contentCheck(maxSeen, generations) };
  await writeFileAtomic(path, Buffer.from(`${JSON.stringify(body, null, 2)}\n`));
}

/** Write `bytes` to `path` so a crash leaves either the old or the new content. */
export async function writeFileAtomic(path: string, bytes: Buffer): Promise<void> {
  const temp = `${path}.tmp`;
  const h = await open(temp, 'w');
  try {
    await h.writeFile(bytes);
    await h.sync();
  } finally {
    await h.close();
  }
  try {
    await rename(temp, path);
  } catch (err) {
    await rm(temp, { force: true });
    throw err;
  }
  await syncDirectory(dirname(path));
}
