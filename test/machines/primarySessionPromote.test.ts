// The primarySession machine's promote path, by pure transition(): a native
// PROMOTE_REQUEST in awaitingStart invokes `promote`, answers with
// sendPromoteResult and closes with 'promote-served'; a rejected promise is
// answered as refused (failed); over zrs2 it is a protocol error.

import { describe, expect, it } from 'vitest';
import type { AnyEventObject } from 'xstate';
import type { PromoteOutcome } from '../../machines/primarySession.js';
import { inputOf, invoked, named, paramsOf, tid } from './helpers.js';
import { native, walk, zrs21 } from './adminSession.js';

const done = (output: PromoteOutcome): AnyEventObject => ({ type: 'xstate.done.actor.promote', output });
const promoted: PromoteOutcome = { kind: 'promoted', generation: 2, startTid: tid(5), sessionsKept: 1 };

describe('primarySession: promote request', () => {
  it('native: invokes promote with the force flag, then answers and closes with promote-served', () => {
    const [s1, a1] = walk({ type: 'PROTOCOL', name: native.name }, { type: 'PROMOTE_REQUEST', force: true });
    expect(s1.value).toBe('promoting');
    expect(invoked(a1)).toEqual(['promote']);
    expect(inputOf(a1, 'promote')).toEqual({ force: true });

    const [s2, a2] = walk({ type: 'PROTOCOL', name: native.name }, { type: 'PROMOTE_REQUEST', force: false }, done(promoted));
    expect(s2.value).toBe('closed');
    expect(named(a2)).toEqual(['sendPromoteResult', 'closeStream']);
    expect(paramsOf(a2, 'sendPromoteResult')).toEqual(promoted);
    expect(paramsOf(a2, 'closeStream')).toEqual({ reason: { kind: 'promote-served', outcome: 'promoted' } });
    expect(s2.context.startTid).toBeNull();
  });

  it('a refusal is answered the same way', () => {
    const refused: PromoteOutcome = { kind: 'refused', code: 'already-primary', reason: 'this node is already a primary' };
    const [s, a] = walk({ type: 'PROTOCOL', name: native.name }, { type: 'PROMOTE_REQUEST', force: false }, done(refused));
    expect(paramsOf(a, 'sendPromoteResult')).toEqual(refused);
    // The close reason (logged) names the refusal's code, as the answer does.
    expect(s.context.closeReason).toEqual({ kind: 'promote-served', outcome: 'already-primary' });
  });

  it('a failed promote actor is answered as refused (failed)', () => {
    const [s, a] = walk(
      { type: 'PROTOCOL', name: native.name },
      { type: 'PROMOTE_REQUEST', force: false },
      { type: 'xstate.error.actor.promote', error: new Error('disk full') },
    );
    expect(paramsOf(a, 'sendPromoteResult')).toEqual({ kind: 'refused', code: 'failed', reason: 'disk full' });
    expect(s.context.closeReason).toEqual({ kind: 'promote-served', outcome: 'failed' });
  });

  it('CLOSE waits for the promotion to finish', () => {
    const [s, a] = walk({ type: 'PROTOCOL', name: native.name }, { type: 'PROMOTE_REQUEST', force: false }, { type: 'CLOSE' });
    expect(s.value).toBe('promoting');
    expect(named(a)).toEqual([]);
  });

  it('zrs2: a protocol error, nothing promoted', () => {
    const [s, a] = walk({ type: 'PROTOCOL', name: zrs21.name }, { type: 'PROMOTE_REQUEST', force: false });
    expect(s.value).toBe('closed');
    expect(invoked(a)).toEqual([]);
    expect(s.context.closeReason).toEqual({ kind: 'protocol-error', reason: 'promote request outside the native protocol' });
  });

  it('is ignored once streaming', () => {
    const [s, a] = walk({ type: 'PROTOCOL', name: native.name }, { type: 'START', startTid: tid(3), primaryLastTid: tid(3) }, { type: 'PROMOTE_REQUEST', force: true });
    expect(s.value).toBe('catchingUp');
    expect(named(a)).toEqual([]);
  });
});
