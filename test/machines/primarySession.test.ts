// Transition tests of the primary's per-secondary session: pure transition()
// walks for every state and edge, plus actor runs with fakes in virtual time.

import { describe, expect, it } from 'vitest';
import { createActor, fromPromise, initialTransition, SimulatedClock, transition } from 'xstate';
import { EffectNotProvidedError } from '../../machines/effects.js';
import type { ProtocolSpec } from '../../machines/handshake.js';
import {
  judgeStart,
  primarySessionMachine as machine,
  type PrimarySessionEvent,
  type SessionCloseReason,
  type StreamInput,
  type StreamOutput,
} from '../../machines/primarySession.js';
import {
  delayFired,
  doneEvent,
  errorEvent,
  inputOf,
  invoked,
  named,
  paramsOf,
  scheduled,
  settle,
  stopped,
  tid,
} from './helpers.js';

type Snapshot = ReturnType<typeof initialTransition<typeof machine>>[0];
type Actions = ReturnType<typeof initialTransition<typeof machine>>[1];

const native: ProtocolSpec = { name: 'zrs-ts/1', kind: 'native', hasVerdict: true, hasAcks: true };
const zrs21: ProtocolSpec = { name: 'zrs2.1', kind: 'zrs2', hasVerdict: false, hasAcks: false };
const input = { peer: 'test-peer', supportedProtocols: [native, zrs21], handshakeTimeoutMs: 5_000, drainTimeoutMs: 2_000 };

function start(): [Snapshot, Actions] {
  return initialTransition(machine, input);
}

function step(snapshot: Snapshot, event: PrimarySessionEvent): [Snapshot, Actions] {
  return transition(machine, snapshot, event);
}

/** Walk to catchingUp with `protocol`, the secondary at tid(start), the primary at tid(last). */
function toCatchingUp(protocol = native, startAt = 3, lastAt = 9): [Snapshot, Actions] {
  const [s0] = start();
  const [s1] = step(s0, { type: 'PROTOCOL', name: protocol.name });
  return step(s1, { type: 'START', startTid: tid(startAt), primaryLastTid: tid(lastAt) });
}

function toLive(): [Snapshot, Actions] {
  const [s0] = toCatchingUp();
  const [s1] = step(s0, { type: 'SENT', tid: tid(4) });
  const [s2] = step(s1, { type: 'SENT', tid: tid(5) });
  return step(s2, doneEvent('catchUp', { lastTid: tid(5) } satisfies StreamOutput));
}

function toDraining(): [Snapshot, Actions] {
  const [s] = toLive();
  return step(s, { type: 'CLOSE' });
}

const reach: Record<string, () => Snapshot> = {
  awaitingProtocol: () => start()[0],
  awaitingStart: () => step(start()[0], { type: 'PROTOCOL', name: native.name })[0],
  catchingUp: () => toCatchingUp()[0],
  live: () => toLive()[0],
  draining: () => toDraining()[0],
};

describe('primarySession: every state is reachable', () => {
  for (const [name, walk] of Object.entries(reach)) {
    it(name, () => expect(walk().value).toBe(name));
  }
  it('closed', () => {
    const [s] = step(toDraining()[0], doneEvent('drain', { lastTid: null }));
    expect(s.value).toBe('closed');
    expect(s.status).toBe('done');
  });
});

describe('primarySession: handshake', () => {
  it('starts awaiting the protocol frame, with a handshake timeout and empty context', () => {
    const [s, actions] = start();
    expect(s.value).toBe('awaitingProtocol');
    expect(scheduled(actions)).toEqual([{ name: 'handshakeTimeout', delayMs: 5_000 }]);
    expect(s.context).toMatchObject({
      peer: 'test-peer',
      protocol: null,
      startTid: null,
      lastSentTid: null,
      ackedTid: null,
      closeReason: null,
      counters: { sentTransactions: 0, catchUps: 0, overflows: 0 },
    });
  });

  it('accepts a supported protocol name and waits for the start frame', () => {
    const [s, actions] = step(start()[0], { type: 'PROTOCOL', name: 'zrs2.1' });
    expect(s.value).toBe('awaitingStart');
    expect(s.context.protocol).toEqual(zrs21);
    expect(scheduled(actions)).toEqual([{ name: 'handshakeTimeout', delayMs: 5_000 }]);
  });

  it('refuses an unknown protocol name as unsupported-version, then closes', () => {
    const [s, actions] = step(start()[0], { type: 'PROTOCOL', name: 'zrs9.9' });
    expect(s.value).toBe('closed');
    expect(s.status).toBe('done');
    expect(named(actions)).toEqual(['sendRefusal', 'closeStream']);
    expect(paramsOf(actions, 'sendRefusal')).toEqual({
      code: 'unsupported-version',
      reason: `unsupported protocol "zrs9.9" (this node speaks ${native.name}, zrs2.1)`,
      protocol: null,
      protocolName: 'zrs9.9',
    });
    expect(s.context.closeReason).toMatchObject({ kind: 'refused', code: 'unsupported-version' });
  });

  it('accepts a start frame: native sends WELCOME, then catch-up starts after the start tid', () => {
    const [s, actions] = toCatchingUp(native);
    expect(s.value).toBe('catchingUp');
    expect(named(actions)).toEqual(['sendWelcome']);
    expect(paramsOf(actions, 'sendWelcome')).toEqual({ protocol: native, startTid: tid(3) });
    expect(invoked(actions)).toEqual(['catchUp']);
    const catchUpInput = inputOf<StreamInput>(actions, 'catchUp');
    expect(catchUpInput.afterTid).toEqual(tid(3));
    expect(catchUpInput.protocol).toEqual(native);
    expect(s.context.startTid).toEqual(tid(3));
    expect(s.context.counters.catchUps).toBe(1);
  });

  it('zrs2.x has no verdict frames: no WELCOME is requested', () => {
    const [s, actions] = toCatchingUp(zrs21);
    expect(s.value).toBe('catchingUp');
    expect(named(actions)).toEqual([]);
    expect(invoked(actions)).toEqual(['catchUp']);
  });

  it('accepts a secondary that is exactly up to date', () => {
    const [s] = toCatchingUp(native, 9, 9);
    expect(s.value).toBe('catchingUp');
  });

  const refusals: [string, PrimarySessionEvent & { type: 'START' }, string][] = [
    ['bad-tid', { type: 'START', startTid: new Uint8Array(7), primaryLastTid: tid(9) }, 'start tid has 7 bytes, expected 8'],
    [
      'diverged',
      { type: 'START', startTid: tid(3), primaryLastTid: tid(9), edgeRefusal: { code: 'diverged', reason: 'generation 2 unknown' } },
      'generation 2 unknown',
    ],
    [
      'blobs-unavailable',
      { type: 'START', startTid: tid(3), primaryLastTid: tid(9), edgeRefusal: { code: 'blobs-unavailable', reason: 'no blob dir' } },
      'no blob dir',
    ],
    [
      'tid-too-high',
      { type: 'START', startTid: tid(10), primaryLastTid: tid(9) },
      "start tid 000000000000000a is newer than the primary's last tid 0000000000000009",
    ],
  ];
  for (const [code, event, reason] of refusals) {
    it(`refuses a start frame with ${code}, sends the refusal, closes`, () => {
      const [s, actions] = step(reach.awaitingStart!(), event);
      expect(s.value).toBe('closed');
      expect(s.context.closeReason).toEqual({ kind: 'refused', code, reason });
      expect(named(actions)).toEqual(['sendRefusal', 'closeStream']);
      expect(paramsOf(actions, 'sendRefusal')).toEqual({ code, reason, protocol: native, protocolName: native.name });
      expect(paramsOf(actions, 'closeStream')).toEqual({ reason: s.context.closeReason });
    });
  }

  it('judges divergence before position: an old primary that comes back is diverged, not just ahead', () => {
    const edgeRefusal = { code: 'diverged', reason: 'x', forkTid: tid(8) } as const;
    expect(judgeStart({ type: 'START', startTid: tid(20), primaryLastTid: tid(9), edgeRefusal })).toEqual(edgeRefusal);
  });

  it('passes the fork tid of a diverged refusal through to sendRefusal and the close reason', () => {
    const edgeRefusal = { code: 'diverged', reason: 'x', forkTid: tid(8) } as const;
    const [s, actions] = step(reach.awaitingStart!(), { type: 'START', startTid: tid(20), primaryLastTid: tid(9), edgeRefusal });
    expect(s.context.closeReason).toEqual({ kind: 'refused', ...edgeRefusal });
    expect(paramsOf(actions, 'sendRefusal')).toEqual({ ...edgeRefusal, protocol: native, protocolName: native.name });
  });

  for (const state of ['awaitingProtocol', 'awaitingStart'] as const) {
    it(`closes when the handshake times out in ${state}`, () => {
      const s0 = reach[state]!();
      const [, entryActions] =
        state === 'awaitingProtocol' ? start() : step(start()[0], { type: 'PROTOCOL', name: native.name });
      const [s, actions] = step(s0, delayFired(entryActions, 'handshakeTimeout'));
      expect(s.value).toBe('closed');
      expect(s.context.closeReason).toEqual({ kind: 'handshake-timeout', timeoutMs: 5_000 });
      expect(named(actions)).toEqual(['closeStream']);
    });

    it(`CLOSE in ${state} closes at once (nothing to drain)`, () => {
      const [s, actions] = step(reach[state]!(), { type: 'CLOSE' });
      expect(s.value).toBe('closed');
      expect(s.context.closeReason).toEqual({ kind: 'closed-before-start' });
      expect(named(actions)).toEqual(['closeStream']);
    });
  }
});

describe('primarySession: streaming', () => {
  it('records each SENT tid and counts it', () => {
    const [s0] = toCatchingUp();
    const [s1] = step(s0, { type: 'SENT', tid: tid(4) });
    expect(s1.value).toBe('catchingUp');
    expect(s1.context.lastSentTid).toEqual(tid(4));
    expect(s1.context.counters.sentTransactions).toBe(1);
  });

  it('counts every transaction a SENT carried (a raw run carries many)', () => {
    const [s0] = toCatchingUp();
    const [s1] = step(s0, { type: 'SENT', tid: tid(6), count: 3 });
    const [s2] = step(s1, { type: 'SENT', tid: tid(7) });
    expect(s2.context.counters.sentTransactions).toBe(4);
  });

  it('asserts sent tids strictly increase (from the start tid on)', () => {
    const [s0] = toCatchingUp();
    expect(() => step(s0, { type: 'SENT', tid: tid(3) })).toThrow(/does not follow/);
    const [s1] = step(s0, { type: 'SENT', tid: tid(5) });
    expect(() => step(s1, { type: 'SENT', tid: tid(4) })).toThrow(/does not follow/);
  });

  it('goes live when catch-up reaches the end; follow starts after the last sent tid', () => {
    const [s, actions] = toLive();
    expect(s.value).toBe('live');
    expect(stopped(actions)).toEqual(['catchUp']);
    expect(invoked(actions)).toEqual(['follow']);
    expect(inputOf<StreamInput>(actions, 'follow').afterTid).toEqual(tid(5));
  });

  it('goes live after a catch-up that had nothing to send; follow starts after the start tid', () => {
    const [s0] = toCatchingUp(native, 9, 9);
    const [s, actions] = step(s0, doneEvent('catchUp', { lastTid: null }));
    expect(s.value).toBe('live');
    expect(inputOf<StreamInput>(actions, 'follow').afterTid).toEqual(tid(9));
  });

  it('asserts catch-up output agrees with what it reported as SENT', () => {
    const [s0] = toCatchingUp();
    const [s1] = step(s0, { type: 'SENT', tid: tid(4) });
    expect(() => step(s1, doneEvent('catchUp', { lastTid: tid(7) }))).toThrow(/catchUp reported/);
  });

  it('falls back to catching up from the last sent tid when the follow buffer overflows', () => {
    const [s0] = toLive();
    const [s1] = step(s0, { type: 'SENT', tid: tid(6) });
    const [s, actions] = step(s1, { type: 'OVERFLOW' });
    expect(s.value).toBe('catchingUp');
    expect(stopped(actions)).toEqual(['follow']);
    expect(invoked(actions)).toEqual(['catchUp']);
    expect(inputOf<StreamInput>(actions, 'catchUp').afterTid).toEqual(tid(6));
    expect(s.context.counters).toEqual({ sentTransactions: 3, catchUps: 2, overflows: 1 });
  });

  it('closes when the commit stream ends (follow resolves)', () => {
    const [s, actions] = step(toLive()[0], doneEvent('follow'));
    expect(s.value).toBe('closed');
    expect(s.context.closeReason).toEqual({ kind: 'source-ended' });
    expect(named(actions)).toEqual(['closeStream']);
  });

  for (const [state, id] of [['catchingUp', 'catchUp'], ['live', 'follow'], ['draining', 'drain']] as const) {
    it(`closes when ${id} fails in ${state}`, () => {
      const error = new Error('log read failed');
      const [s] = step(reach[state]!(), errorEvent(id, error));
      expect(s.value).toBe('closed');
      expect(s.context.closeReason).toEqual({ kind: 'effect-failed', effect: id, error });
    });
  }
});

describe('primarySession: closing', () => {
  for (const state of ['catchingUp', 'live'] as const) {
    it(`CLOSE in ${state} drains from the last sent position`, () => {
      const [s, actions] = step(reach[state]!(), { type: 'CLOSE' });
      expect(s.value).toBe('draining');
      expect(invoked(actions)).toEqual(['drain']);
      expect(inputOf<StreamInput>(actions, 'drain').afterTid).toEqual(state === 'live' ? tid(5) : tid(3));
      expect(scheduled(actions)).toEqual([{ name: 'drainTimeout', delayMs: 2_000 }]);
    });
  }

  it('draining records SENT, ignores a second CLOSE, and closes when drain resolves', () => {
    const [s0] = toDraining();
    const [s1] = step(s0, { type: 'SENT', tid: tid(6) });
    const [s2, again] = step(s1, { type: 'CLOSE' });
    expect(s2.value).toBe('draining');
    expect(again).toEqual([]);
    const [s, actions] = step(s2, doneEvent('drain', { lastTid: tid(6) }));
    expect(s.value).toBe('closed');
    expect(s.context.closeReason).toEqual({ kind: 'drained' });
    expect(s.context.lastSentTid).toEqual(tid(6));
    expect(named(actions)).toEqual(['closeStream']);
    expect(s.output).toEqual({
      closeReason: { kind: 'drained' },
      lastSentTid: tid(6),
      ackedTid: null,
      counters: { sentTransactions: 3, catchUps: 1, overflows: 0 },
    });
  });

  it('gives up draining after drainTimeoutMs', () => {
    const [s0, entry] = toDraining();
    const [s] = step(s0, delayFired(entry, 'drainTimeout'));
    expect(s.value).toBe('closed');
    expect(s.context.closeReason).toEqual({ kind: 'drain-timeout', timeoutMs: 2_000 });
  });

  const failures: [PrimarySessionEvent, SessionCloseReason][] = [
    [{ type: 'PEER_CLOSED' }, { kind: 'peer-closed' }],
    [{ type: 'TRANSPORT_ERROR', error: new Error('ECONNRESET') }, { kind: 'transport-error', error: new Error('ECONNRESET') }],
    [{ type: 'PROTOCOL_ERROR', reason: 'frame of 99 MiB' }, { kind: 'protocol-error', reason: 'frame of 99 MiB' }],
  ];
  for (const state of Object.keys(reach)) {
    for (const [event, reason] of failures) {
      it(`${event.type} in ${state} closes with the reason recorded`, () => {
        const [s, actions] = step(reach[state]!(), event);
        expect(s.value).toBe('closed');
        expect(s.status).toBe('done');
        expect(s.context.closeReason).toEqual(reason);
        expect(named(actions)).toEqual(['closeStream']);
      });
    }

    it(`KEEPALIVE in ${state} changes nothing`, () => {
      const s0 = reach[state]!();
      const [s, actions] = step(s0, { type: 'KEEPALIVE' });
      expect(s.value).toEqual(s0.value);
      expect(s.context).toEqual(s0.context);
      expect(actions).toEqual([]);
    });
  }

  it('closed is final: the actor is done and later events change nothing', () => {
    const closes: string[] = [];
    const actor = createActor(machine.provide({ actions: { closeStream: (_, p) => closes.push(p.reason.kind) } }), {
      input,
      clock: new SimulatedClock(),
    }).start();
    actor.send({ type: 'PEER_CLOSED' });
    actor.send({ type: 'TRANSPORT_ERROR', error: new Error('late') });
    expect(actor.getSnapshot().status).toBe('done');
    expect(actor.getSnapshot().context.closeReason).toEqual({ kind: 'peer-closed' });
    expect(closes).toEqual(['peer-closed']);
  });
});

describe('primarySession: acknowledgements', () => {
  it('records ACK in any streaming state, for lag', () => {
    for (const state of ['catchingUp', 'live', 'draining']) {
      const [s] = step(reach[state]!(), { type: 'ACK', tid: tid(3) });
      expect(s.value).toBe(state);
      expect(s.context.ackedTid).toEqual(tid(3));
    }
    const [s1] = step(reach.live!(), { type: 'ACK', tid: tid(5) });
    expect(s1.context.ackedTid).toEqual(tid(5));
  });

  it('an ACK for a tid never sent is a protocol error', () => {
    const [s] = step(reach.live!(), { type: 'ACK', tid: tid(6) });
    expect(s.value).toBe('closed');
    expect(s.context.closeReason).toMatchObject({ kind: 'protocol-error' });
  });

  it('an ACK going backwards is a protocol error', () => {
    const [s1] = step(reach.live!(), { type: 'ACK', tid: tid(5) });
    const [s] = step(s1, { type: 'ACK', tid: tid(4) });
    expect(s.value).toBe('closed');
    expect(s.context.closeReason).toMatchObject({ kind: 'protocol-error' });
  });

  it('an ACK repeating the last one is allowed (PROTOCOL.md): the session goes on', () => {
    const [s1] = step(reach.live!(), { type: 'ACK', tid: tid(5) });
    const [s] = step(s1, { type: 'ACK', tid: tid(5) });
    expect(s.value).toBe('live');
    expect(s.context.ackedTid).toEqual(tid(5));
  });

  it('an ACK before the handshake completed is a protocol error', () => {
    const [s] = step(reach.awaitingStart!(), { type: 'ACK', tid: tid(1) });
    expect(s.value).toBe('closed');
    expect(s.context.closeReason).toMatchObject({ kind: 'protocol-error' });
  });
});

describe('primarySession: as an actor, in virtual time', () => {
  it('streams catch-up, follows live, overflows back, drains on CLOSE', async () => {
    const clock = new SimulatedClock();
    const calls: string[] = [];
    let followRuns = 0;
    const actor = createActor(
      machine.provide({
        actors: {
          catchUp: fromPromise<StreamOutput, StreamInput>(async ({ input }) => {
            calls.push(`catchUp after ${input.afterTid[7]}`);
            const last = input.afterTid[7] as number;
            input.session.send({ type: 'SENT', tid: tid(last + 1) });
            input.session.send({ type: 'SENT', tid: tid(last + 2) });
            return { lastTid: tid(last + 2) };
          }),
          follow: fromPromise<void, StreamInput>(({ input }) => {
            calls.push(`follow after ${input.afterTid[7]}`);
            followRuns += 1;
            if (followRuns === 1) input.session.send({ type: 'OVERFLOW' });
            return new Promise<void>(() => {}); // stays live until stopped
          }),
          drain: fromPromise<StreamOutput, StreamInput>(async ({ input }) => {
            calls.push(`drain after ${input.afterTid[7]}`);
            input.session.send({ type: 'SENT', tid: tid((input.afterTid[7] as number) + 1) });
            return { lastTid: null };
          }),
        },
        actions: {
          sendWelcome: () => calls.push('welcome'),
          sendRefusal: () => calls.push('refusal'),
          closeStream: (_, params) => calls.push(`closeStream ${params.reason.kind}`),
        },
      }),
      { input, clock },
    ).start();

    actor.send({ type: 'PROTOCOL', name: native.name });
    actor.send({ type: 'START', startTid: tid(1), primaryLastTid: tid(3) });
    await settle();
    expect(actor.getSnapshot().value).toBe('live');
    actor.send({ type: 'CLOSE' });
    await settle();

    expect(actor.getSnapshot().status).toBe('done');
    expect(calls).toEqual([
      'welcome',
      'catchUp after 1',
      'follow after 3',
      'catchUp after 3',
      'follow after 5',
      'drain after 5',
      'closeStream drained',
    ]);
    expect(actor.getSnapshot().output?.counters).toEqual({ sentTransactions: 5, catchUps: 2, overflows: 1 });
  });

  it('times out a silent peer after handshakeTimeoutMs of virtual time', () => {
    const clock = new SimulatedClock();
    const reasons: string[] = [];
    const actor = createActor(
      machine.provide({ actions: { closeStream: (_, params) => reasons.push(params.reason.kind) } }),
      { input, clock },
    ).start();
    clock.increment(4_999);
    expect(actor.getSnapshot().value).toBe('awaitingProtocol');
    clock.increment(1);
    expect(actor.getSnapshot().value).toBe('closed');
    expect(reasons).toEqual(['handshake-timeout']);
  });

  it('by default, waits 30 s of virtual time for each handshake frame and 30 s for a drain', () => {
    const { handshakeTimeoutMs: _h, drainTimeoutMs: _d, ...defaults } = input;
    const reasons: unknown[] = [];
    const quiet = machine.provide({ actions: { closeStream: (_, params) => reasons.push(params.reason) } });
    const clock = new SimulatedClock();
    const silent = createActor(quiet, { input: defaults, clock }).start();
    clock.increment(29_999);
    expect(silent.getSnapshot().value).toBe('awaitingProtocol');
    clock.increment(1);
    expect(silent.getSnapshot().value).toBe('closed');
    expect(reasons).toEqual([{ kind: 'handshake-timeout', timeoutMs: 30_000 }]);

    // A drain that never ends is given up after 30 s.
    reasons.length = 0;
    const draining = createActor(
      quiet.provide({
        actions: { sendWelcome: () => {} },
        actors: { catchUp: fromPromise(() => new Promise<StreamOutput>(() => {})), drain: fromPromise(() => new Promise<StreamOutput>(() => {})) },
      }),
      { input: defaults, clock },
    ).start();
    draining.send({ type: 'PROTOCOL', name: native.name });
    draining.send({ type: 'START', startTid: tid(1), primaryLastTid: tid(3) });
    draining.send({ type: 'CLOSE' });
    expect(draining.getSnapshot().value).toBe('draining');
    clock.increment(29_999);
    expect(draining.getSnapshot().value).toBe('draining');
    clock.increment(1);
    expect(draining.getSnapshot().value).toBe('closed');
    expect(reasons).toEqual([{ kind: 'drain-timeout', timeoutMs: 30_000 }]);
  });

  it('an effect left unprovided fails loudly with EffectNotProvidedError', async () => {
    const actor = createActor(machine.provide({ actions: { sendWelcome: () => {}, closeStream: () => {} } }), {
      input,
      clock: new SimulatedClock(),
    }).start();
    actor.send({ type: 'PROTOCOL', name: native.name });
    actor.send({ type: 'START', startTid: tid(1), primaryLastTid: tid(3) });
    await settle();
    const reason = actor.getSnapshot().context.closeReason;
    expect(reason).toMatchObject({ kind: 'effect-failed', effect: 'catchUp' });
    expect((reason as { error: unknown }).error).toBeInstanceOf(EffectNotProvidedError);
  });
});
