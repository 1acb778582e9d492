// The primarySession machine as an admin client meets it (status, promote
// and pack requests), walked with pure transition() from its start.

import { initialTransition, transition, type AnyEventObject } from 'xstate';
import type { ProtocolSpec } from '../../machines/handshake.js';
import { primarySessionMachine as machine, type PrimarySessionEvent } from '../../machines/primarySession.js';

type Snapshot = ReturnType<typeof initialTransition<typeof machine>>[0];

export const native: ProtocolSpec = { name: 'zrs-ts/1', kind: 'native', hasVerdict: true, hasAcks: true };
export const zrs21: ProtocolSpec = { name: 'zrs2.1', kind: 'zrs2', hasVerdict: false, hasAcks: false };

/** The session's snapshot and the actions of its last step, after `events` (invoked actors' done and error events among them). */
export function walk(...events: Array<PrimarySessionEvent | AnyEventObject>): ReturnType<typeof transition<typeof machine>> {
  let [snap, actions] = initialTransition(machine, { peer: 'admin-client', supportedProtocols: [native, zrs21] });
  for (const e of events) [snap, actions] = transition(machine, snap as Snapshot, e as PrimarySessionEvent);
  return [snap, actions] as ReturnType<typeof transition<typeof machine>>;
}
