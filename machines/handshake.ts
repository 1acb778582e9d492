// What both ends of a replication connection agree on before any
// transaction flows: protocol descriptors (data, not code paths) and the
// refusal codes a primary may answer with.

import type { Tid } from './tid.js';

/**
 * A replication protocol as data. The machines never branch on the name;
 * they read these flags. The edge picks the codec from `kind`.
 */
export interface ProtocolSpec {
  /** The protocol name exactly as sent in the first frame, e.g. 'zrs2.1'. */
  readonly name: string;
  /** Codec family: zc.zrs's pickled protocol or this project's msgpack one. */
  readonly kind: 'zrs2' | 'native';
  /** The primary answers the start frame with WELCOME or REFUSED (native); zrs2.x just starts sending. */
  readonly hasVerdict: boolean;
  /** The secondary sends ACK {tid} after applying (native only). */
  readonly hasAcks: boolean;
}

/**
 * Why a primary refuses a secondary (the codes of docs/PROTOCOL.md, same set
 * as RefuseCode in src/wire/native.ts; test/machines/handshake.test.ts checks).
 * - `unsupported-version`: the protocol name is not one it speaks
 * - `bad-tid`: a tid of the wrong length, or a history inconsistent with it
 * - `tid-too-high`: the secondary claims a tid newer than the primary's last
 * - `diverged`: the secondary holds transactions the primary never had
 * - `blobs-unavailable`: blob support differs between the two storages
 * - `loop`: the serving node replicates, directly or through others, from the secondary
 * - `internal`: the primary failed (storage error, shutting down)
 */
export type RefusalCode = 'unsupported-version' | 'bad-tid' | 'tid-too-high' | 'diverged' | 'blobs-unavailable' | 'loop' | 'internal';

/** A refusal as it travels in a `refuse` frame and into logs. */
export interface Refusal<Code extends string = RefusalCode> {
  readonly code: Code;
  readonly reason: string;
  /** For `diverged`: the last tid both histories share. */
  readonly forkTid?: Tid;
  /** The primary's last tid when it refused, when it said. */
  readonly primaryLastTid?: Tid;
}

/** Find the spec for a protocol name, or undefined when it is not supported. */
export function findProtocol(supported: readonly ProtocolSpec[], name: string): ProtocolSpec | undefined {
  return supported.find((p) => p.name === name);
}
