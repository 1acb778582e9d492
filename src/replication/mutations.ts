// Deliberate bugs a secondary can be built with, for the simulation's
// mutation checks only: a property suite that still passes with one of them
// switched on proves nothing. Test-only: not part of the public API (not
// exported from src/index.ts); every switch is off by default, and off costs
// one boolean test where the correct behaviour happens.

/** Which deliberate bugs are on (all off when absent). */
export interface ReplicationMutations {
  /** Apply a transaction's commit without comparing the stream checksum. */
  readonly skipChecksum?: boolean;
  /** Keep a half-received transaction pending when the connection drops, instead of aborting it. */
  readonly noAbortOnDisconnect?: boolean;
  /**
   * Finish a transaction as soon as all its records have arrived (the native
   * inline form announces them with the transaction), before the commit
   * message and its checksum.
   */
  readonly commitBeforeCommitMessage?: boolean;
  /** Report transactions applied (and acknowledge them) without ever syncing the file. */
  readonly skipSync?: boolean;
  /**
   * Acknowledge a transaction (or a run of them) to the upstream as soon as
   * it is written, before the sync that makes it durable; it is still
   * reported applied only once durable.
   */
  readonly ackBeforeSync?: boolean;
}

export type MutationName = keyof ReplicationMutations;

export const MUTATION_NAMES: readonly MutationName[] = ['skipChecksum', 'noAbortOnDisconnect', 'commitBeforeCommitMessage', 'skipSync', 'ackBeforeSync'];

/** The default: no deliberate bug. */
export const NO_MUTATIONS: ReplicationMutations = Object.freeze({});
