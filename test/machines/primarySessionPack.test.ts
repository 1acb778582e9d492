// The primarySession machine's pack path, by pure transition(): a native
// PACK_REQUEST in awaitingStart invokes `pack` with the time and gc flag,
// answers with sendPackResult and closes with 'pack-served'; a rejected
// promise is answered as refused (failed); a CLOSE waits for the answer; over
// zrs2 it is a protocol error.

import { describe, expect, it } from 'vitest';
import type { AnyEventObject } from 'xstate';
import type { PackOutcome, PrimarySessionEvent } from '../../machines/primarySession.js';
import { inputOf, invoked, named, paramsOf, tid } from './helpers.js';
import { native, walk, zrs21 } from './adminSession.js';

const request: PrimarySessionEvent = { type: 'PACK_REQUEST', time: 1_700_000_000.5, gc: false };
const done = (output: PackOutcome): AnyEventObject => ({ type: 'xstate.done.actor.pack', output });
const packed: PackOutcome = {
  kind: 'packed',
  report: { packed: true, packTid: tid(5), sizeBefore: 1000, sizeAfter: 400, tailTransactions: 2, blobFiles: 'none', removedBlobFiles: 0, blobFilesNotRemoved: 0, blobRemovalError: null },
};

describe('primarySession: pack request', () => {
  it('native: invokes pack with the time and gc flag, then answers and closes with pack-served', () => {
    const [s1, a1] = walk({ type: 'PROTOCOL', name: native.name }, request);
    expect(s1.value).toBe('packing');
    expect(invoked(a1)).toEqual(['pack']);
    expect(inputOf(a1, 'pack')).toEqual({ time: 1_700_000_000.5, gc: false });

    const [s2, a2] = walk({ type: 'PROTOCOL', name: native.name }, request, done(packed));
    expect(s2.value).toBe('closed');
    expect(named(a2)).toEqual(['sendPackResult', 'closeStream']);
    expect(paramsOf(a2, 'sendPackResult')).toEqual(packed);
    expect(paramsOf(a2, 'closeStream')).toEqual({ reason: { kind: 'pack-served', outcome: 'packed' } });
    expect(s2.context.startTid).toBeNull();
  });

  it('a refusal is answered the same way, its code in the close reason', () => {
    const refused: PackOutcome = { kind: 'refused', code: 'not-packable', reason: 'this node does not accept pack requests' };
    const [s, a] = walk({ type: 'PROTOCOL', name: native.name }, request, done(refused));
    expect(paramsOf(a, 'sendPackResult')).toEqual(refused);
    expect(s.context.closeReason).toEqual({ kind: 'pack-served', outcome: 'not-packable' });
  });

  it('a failed pack actor is answered as refused (failed)', () => {
    const [s, a] = walk({ type: 'PROTOCOL', name: native.name }, request, { type: 'xstate.error.actor.pack', error: new Error('a pack is already running') });
    expect(paramsOf(a, 'sendPackResult')).toEqual({ kind: 'refused', code: 'failed', reason: 'a pack is already running' });
    expect(s.context.closeReason).toEqual({ kind: 'pack-served', outcome: 'failed' });
  });

  it('CLOSE waits for the answer; the peer going away ends the session at once', () => {
    const [s, a] = walk({ type: 'PROTOCOL', name: native.name }, request, { type: 'CLOSE' });
    expect(s.value).toBe('packing');
    expect(named(a)).toEqual([]);
    const [s2, a2] = walk({ type: 'PROTOCOL', name: native.name }, request, { type: 'PEER_CLOSED' });
    expect(s2.value).toBe('closed');
    expect(named(a2)).toEqual(['closeStream']);
    expect(s2.context.closeReason).toEqual({ kind: 'peer-closed' });
  });

  it('zrs2: a protocol error, nothing packed', () => {
    const [s, a] = walk({ type: 'PROTOCOL', name: zrs21.name }, request);
    expect(s.value).toBe('closed');
    expect(invoked(a)).toEqual([]);
    expect(s.context.closeReason).toEqual({ kind: 'protocol-error', reason: 'pack request outside the native protocol' });
  });

  it('is ignored once streaming', () => {
    const [s, a] = walk({ type: 'PROTOCOL', name: native.name }, { type: 'START', startTid: tid(3), primaryLastTid: tid(3) }, request);
    expect(s.value).toBe('catchingUp');
    expect(named(a)).toEqual([]);
  });
});
