// Judging a secondary's history against the primary's (pure, no I/O): is the
// secondary simply behind, or does it hold transactions the primary never had
// (an old primary after a failover, a node promoted in a split brain, or the
// same tid with different contents)? Diverged histories are refused with the
// last tid both share (forkTid), never merged.

import { Z64 } from '../storage/timestamp.js';
import type { ChainHead, GenerationEntry } from '../wire/native.js';
import { generationsReachedBy, sameGeneration } from './generations.js';

/** What the primary knows about its own history. */
export interface PrimaryHistoryView {
  /** Oldest first. */
  readonly generations: readonly GenerationEntry[];
  /** The primary's link at `tid`, or null when it has no transaction with that tid. */
  hashAt(tid: Buffer): Buffer | null;
  /** The primary's last transaction (8 zero bytes when it has none). */
  readonly lastTid: Buffer;
  /**
   * The judging node is itself a secondary: its history still grows from
   * upstream, so a secondary ahead of it may only be waiting for it. A
   * primary's history grows only by its own commits: ahead of it is
   * another history.
   */
  readonly replica?: boolean;
  /**
   * Whether the primary's file shows that it never held a transaction with
   * this tid (FileStorage.provesNeverHeld). Without it, a tid missing from
   * the primary's chain proves nothing for a peer that sent no chain.
   */
  neverHeld?(tid: Buffer): boolean;
}

/** What a secondary says about its history in `hello`. */
export interface SecondaryHistoryClaim {
  startTid: Buffer;
  generations: readonly GenerationEntry[];
  chainHead?: ChainHead;
  chainSamples?: readonly ChainHead[];
}

export type HistoryVerdict =
  | { kind: 'behind' }
  /** Not enough information to tell (a peer without a hash chain, ahead in tids): let the position check decide. */
  | { kind: 'unknown' }
  | { kind: 'inconsistent'; reason: string }
  | { kind: 'diverged'; forkTid: Buffer; reason: string };

const hex = (b: Buffer): string => b.toString('hex');
const minTid = (a: Buffer | null, b: Buffer | null): Buffer | null => (a === null ? b : b === null ? a : Buffer.compare(a, b) <= 0 ? a : b);

/**
 * Judge a secondary's claim.
 *
 * @example
 * const v = judgeHistory(primaryView, { startTid, generations, chainHead });
 * if (v.kind === 'diverged') refuse('diverged', v.reason, v.forkTid);
 */
export function judgeHistory(primary: PrimaryHistoryView, claim: SecondaryHistoryClaim): HistoryVerdict {
  const head = claim.chainHead;
  if (head && !head.tid.equals(claim.startTid)) return { kind: 'inconsistent', reason: `chain head tid ${hex(head.tid)} is not the start tid ${hex(claim.startTid)}` };
  // Only the generations the secondary reached say anything of its data.
  const generationProblem = checkGenerationClaim(primary.generations, generationsReachedBy(claim.generations, claim.startTid));
  let positionProblem: string | null = null;
  if (!claim.startTid.equals(Z64)) {
    const mine = primary.hashAt(claim.startTid);
    if (head) {
      // Ahead of an upstream that is itself a secondary, it may be waiting for that one to catch up.
      if (mine === null && primary.replica === true && Buffer.compare(claim.startTid, primary.lastTid) > 0 && generationProblem === null && !forkedAhead(primary, claim)) {
        return { kind: 'unknown' };
      }
      if (mine === null) positionProblem = `the secondary's last transaction ${hex(claim.startTid)} is not in the primary's history`;
      else if (!mine.equals(head.hash)) positionProblem = `transaction ${hex(claim.startTid)} has different contents on the primary and the secondary`;
    } else if (mine === null && generationProblem === null) {
      // No chain from the peer: only a tid the primary's file shows it never held proves divergence.
      if (primary.neverHeld?.(claim.startTid) !== true) return { kind: 'unknown' };
      positionProblem = `the secondary's last transaction ${hex(claim.startTid)} is not in the primary's history, which holds transactions before and after it`;
    }
  }
  const reason = generationProblem ?? positionProblem;
  if (reason === null) return { kind: 'behind' };
  return { kind: 'diverged', forkTid: forkPoint(primary, claim), reason };
}

/**
 * Whether a secondary ahead of an upstream secondary's last tid provably
 * holds another history: a generation the upstream has (a promotion) that
 * began before the secondary's last tid and that the secondary does not
 * claim (an old primary come back ahead, which must stop, not retry), or one
 * of its samples at or below the upstream's last tid that the upstream lacks
 * or holds otherwise. Nothing of that: it may be a secondary moved behind
 * one that lags, which the position check then tells to retry
 * (`tid-too-high`).
 */
function forkedAhead(primary: PrimaryHistoryView, claim: SecondaryHistoryClaim): boolean {
  const unclaimed = (m: GenerationEntry): boolean => m.generation > 0 && !claim.generations.some((g) => sameGeneration(g, m));
  if (primary.generations.some((m) => unclaimed(m) && Buffer.compare(m.startTid, claim.startTid) < 0)) return true;
  return (claim.chainSamples ?? []).some((s) => {
    if (Buffer.compare(s.tid, primary.lastTid) > 0) return false;
    const mine = primary.hashAt(s.tid);
    return mine === null || !mine.equals(s.hash);
  });
}

/** The generation a node without a recorded history is in (what its welcome announces). */
const IMPLICIT_FIRST: readonly GenerationEntry[] = [{ generation: 0, startTid: Z64 }];

/** Why the secondary's generations cannot be a prefix of the primary's, or null. */
function checkGenerationClaim(recorded: readonly GenerationEntry[], theirs: readonly GenerationEntry[]): string | null {
  // A node that has recorded no generation yet (a secondary that has not met its
  // own primary) is in generation 0 from the start, as its welcome says.
  const mine = recorded.length > 0 ? recorded : IMPLICIT_FIRST;
  for (const g of theirs) {
    const same = mine.find((m) => m.generation === g.generation);
    if (!same) return `the secondary claims generation ${g.generation} (from tid ${hex(g.startTid)}), which the primary does not know`;
    if (!sameGeneration(same, g)) return `generation ${g.generation} began at tid ${hex(same.startTid)} on the primary but at ${hex(g.startTid)} on the secondary`;
  }
  return null;
}

/**
 * The last tid both histories share. Samples (the secondary's links at a few
 * tids) bound it: the newest sample with an equal link is shared, the oldest
 * with a different or missing one is not. Within those bounds, the first
 * generation boundary the two do not share is where they forked (a promotion
 * starts a generation at the promoted node's last tid). Without a boundary
 * there, the newest shared sample is the answer (a lower bound: rewinding to
 * it cuts a few shared transactions too, which then replicate again).
 */
export function forkPoint(primary: PrimaryHistoryView, claim: SecondaryHistoryClaim): Buffer {
  const samples = [...(claim.chainSamples ?? []), ...(claim.chainHead ? [claim.chainHead] : [])];
  let lower: Buffer = Buffer.from(Z64);
  let upper: Buffer | null = null;
  for (const s of samples) {
    const mine = primary.hashAt(s.tid);
    if (mine !== null && mine.equals(s.hash)) {
      if (Buffer.compare(s.tid, lower) > 0) lower = s.tid;
    } else upper = minTid(upper, s.tid);
  }
  if (upper !== null && Buffer.compare(lower, upper) >= 0) lower = Buffer.from(Z64); // inconsistent samples: trust nothing
  let boundary: Buffer | null = null;
  for (const m of primary.generations) {
    if (!claim.generations.some((g) => sameGeneration(g, m))) boundary = minTid(boundary, m.startTid);
  }
  for (const g of claim.generations) {
    if (!primary.generations.some((m) => sameGeneration(g, m))) boundary = minTid(boundary, g.startTid);
  }
  const limit = minTid(upper, claim.startTid);
  // The secondary's first transaction is always among its samples: a boundary
  // older than it is not in its history. (Two nodes that started the same
  // generation at the same tid look alike; the fork is then before the boundary.)
  const first = samples.reduce<Buffer | null>((m, s) => minTid(m, s.tid), null);
  let fork: Buffer = lower;
  if (boundary !== null && Buffer.compare(boundary, lower) >= 0 && (limit === null || Buffer.compare(boundary, limit) <= 0) && !boundary.equals(upper ?? Buffer.alloc(0))) {
    const secondaryMayHave = boundary.equals(Z64) || first === null || Buffer.compare(boundary, first) >= 0;
    if (secondaryMayHave && (boundary.equals(Z64) || primary.hashAt(boundary) !== null)) fork = boundary;
  }
  // A rewind drops the generations that start after the fork: every generation
  // the primary refused must go, even one older than data both share (the
  // secondary's history then cannot be judged behind again otherwise).
  const known = primary.generations.length > 0 ? primary.generations : IMPLICIT_FIRST;
  for (const g of claim.generations) {
    if (!known.some((m) => sameGeneration(m, g)) && Buffer.compare(g.startTid, fork) < 0) fork = g.startTid;
  }
  return Buffer.from(fork);
}
