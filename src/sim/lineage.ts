// The simulation's own record of every history its workload made: a tree of
// committed transactions, each keyed by an oracle link sha1(parent link, tid,
// content digest) computed here, independently of the product's hash chain.
// A node's log is valid exactly when it is a path from the root of this tree,
// i.e. a prefix of some primary's history: it never mixes two histories.

import { createHash } from 'node:crypto';
import type { TransactionRecord } from '../storage/types.js';

/** A transaction as the oracle sees it: its tid and a digest of its content. */
export interface TxnShape {
  tid: string;
  digest: string;
}

/** One transaction of a node's log, with its place in the tree. */
export interface LineageEntry {
  tid: string;
  link: string;
}

/** The link before the first transaction. */
export const LINEAGE_ORIGIN = '0'.repeat(40);

/** Status, metadata and every record (oid, data-txn, data) of a transaction, digested. */
export function shapeOf(t: TransactionRecord): TxnShape {
  const h = createHash('sha1');
  h.update(`${t.status}|`).update(t.user).update('|').update(t.description).update('|').update(t.extensionBytes);
  for (const r of t.records) {
    h.update(`|${r.oid.toString('hex')}:${r.dataTxn?.toString('hex') ?? '-'}:`);
    h.update(r.data === null ? 'null' : r.data);
  }
  return { tid: t.tid.toString('hex'), digest: h.digest('hex').slice(0, 16) };
}

/** The oracle link of `shape` committed right after the transaction whose link is `parent`. */
export function lineageLink(parent: string, shape: TxnShape): string {
  return createHash('sha1').update(parent).update('|').update(shape.tid).update('|').update(shape.digest).digest('hex');
}

/** Why a transaction cannot follow a node's log (the invariant it breaks). */
export type LineageFault =
  /** No primary committed this tid after the node's previous transaction, nor anywhere. */
  | { invariant: 'prefix'; detail: string }
  /** A primary committed this tid after the same predecessor, with other content. */
  | { invariant: 'corruption'; detail: string }
  /** A primary committed this tid, but in another history: the node mixes two histories. */
  | { invariant: 'lineage'; detail: string };

interface TreeNode {
  parent: string;
  tid: string;
  /** The node that committed it, while a primary. */
  by: string;
}

/**
 * Every transaction committed by any primary, in the order each primary
 * committed them (branches: promotions, split brains, lost disks).
 *
 * @example
 * const tree = new HistoryTree();
 * const a = tree.add(LINEAGE_ORIGIN, shapeA, 'p');
 * tree.follow(a, shapeB); // { link } when a primary committed B right after A
 */
export class HistoryTree {
  private readonly nodes = new Map<string, TreeNode>();
  /** `${parent}/${tid}`: some primary committed this tid right after that parent. */
  private readonly childTids = new Set<string>();
  /** tid -> links of the transactions with that tid. */
  private readonly byTid = new Map<string, string[]>();

  /** Record that `by` committed `shape` right after `parent`; returns its link. */
  add(parent: string, shape: TxnShape, by: string): string {
    const link = lineageLink(parent, shape);
    if (this.nodes.has(link)) return link;
    this.nodes.set(link, { parent, tid: shape.tid, by });
    this.childTids.add(`${parent}/${shape.tid}`);
    const same = this.byTid.get(shape.tid);
    if (same) same.push(link);
    else this.byTid.set(shape.tid, [link]);
    return link;
  }

  has(link: string): boolean {
    return this.nodes.has(link);
  }

  /** Transactions recorded. */
  get size(): number {
    return this.nodes.size;
  }

  /** The link of `shape` after `parent` when some primary committed it there, else the invariant it breaks. */
  follow(parent: string, shape: TxnShape): { link: string } | LineageFault {
    const link = lineageLink(parent, shape);
    if (this.nodes.has(link)) return { link };
    const after = parent === LINEAGE_ORIGIN ? 'as the first transaction' : `after ${this.nodes.get(parent)?.tid ?? '?'}`;
    if (this.childTids.has(`${parent}/${shape.tid}`)) {
      return { invariant: 'corruption', detail: `transaction ${shape.tid} differs from the one its primary committed ${after} (records or metadata)` };
    }
    const elsewhere = this.byTid.get(shape.tid);
    if (elsewhere) {
      const where = elsewhere.map((l) => this.nodes.get(l)!).map((t) => `${t.by} committed it after ${t.parent === LINEAGE_ORIGIN ? 'nothing' : this.nodes.get(t.parent)!.tid}`);
      return { invariant: 'lineage', detail: `transaction ${shape.tid} follows ${after.replace(/^after /, '')} here, but ${where.join('; ')}: two histories mixed` };
    }
    return { invariant: 'prefix', detail: `transaction ${shape.tid} was never committed ${after} by any primary` };
  }
}
