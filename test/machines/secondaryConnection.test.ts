// Transition tests of the secondary's connection: pure transition() walks of
// every state and edge (CLOSE from each), plus actor runs with fakes and
// xstate's SimulatedClock for backoff timing and keep-alive cadence.

import { describe, expect, it } from 'vitest';
import { createActor, fromCallback, fromPromise, initialTransition, SimulatedClock, transition, type EventObject } from 'xstate';
import type { MachineAddress } from '../../machines/address.js';
import { EffectNotProvidedError } from '../../machines/effects.js';
import type { ProtocolSpec } from '../../machines/handshake.js';
import {
  DEFAULT_RECONNECT,
  reconnectDelayMs,
  connectionSettings,
  refusalOutcome,
  haltsReplication,
  secondaryConnectionMachine as machine,
  type AbortInFlightInput,
  type ConnectInput,
  type ConnectOutput,
  type ReplicateInput,
  type SecondaryConnectionEvent,
  type SecondaryConnectionInput,
} from '../../machines/secondaryConnection.js';
import { delayFired, doneEvent, errorEvent, inputOf, invoked, named, paramsOf, scheduled, settle, stopped, tid } from './helpers.js';

type Snapshot = ReturnType<typeof initialTransition<typeof machine>>[0];
type Actions = ReturnType<typeof initialTransition<typeof machine>>[1];

const native: ProtocolSpec = { name: 'zrs-ts/1', kind: 'native', hasVerdict: true, hasAcks: true };
const zrs21: ProtocolSpec = { name: 'zrs2.1', kind: 'zrs2', hasVerdict: false, hasAcks: false };
const primaryA: MachineAddress = { kind: 'tcp', host: 'a.example', port: 5000 };
const primaryB: MachineAddress = { kind: 'unix', path: '/run/zrs.sock' };
const handle = { name: 'connection-1' };

/** A random source that replays `values`, then repeats the last one. */
function replay(...values: number[]): () => number {
  let i = 0;
  return () => values[Math.min(i++, values.length - 1)] as number;
}

function makeInput(overrides: Partial<SecondaryConnectionInput> = {}): SecondaryConnectionInput {
  return {
    address: primaryA,
    protocol: native,
    lastAppliedTid: tid(3),
    random: replay(0.5),
    reconnect: { initialMs: 100, maxMs: 1_000, factor: 2, jitter: 0.5 },
    connectTimeoutMs: 4_000,
    handshakeTimeoutMs: 3_000,
    closeTimeoutMs: 2_000,
    ...overrides,
  };
}

function step(snapshot: Snapshot, event: SecondaryConnectionEvent): [Snapshot, Actions] {
  return transition(machine, snapshot, event);
}

function toIdle(overrides?: Partial<SecondaryConnectionInput>): [Snapshot, Actions] {
  return initialTransition(machine, makeInput(overrides));
}

function toConnecting(overrides?: Partial<SecondaryConnectionInput>): [Snapshot, Actions] {
  return step(toIdle(overrides)[0], { type: 'START' });
}

function toHandshaking(overrides?: Partial<SecondaryConnectionInput>): [Snapshot, Actions] {
  return step(toConnecting(overrides)[0], doneEvent('connect', { connection: handle } satisfies ConnectOutput));
}

function toReplicating(overrides?: Partial<SecondaryConnectionInput>): [Snapshot, Actions] {
  return step(toHandshaking(overrides)[0], { type: 'WELCOME' });
}

function toBackoff(): [Snapshot, Actions] {
  return step(toConnecting()[0], errorEvent('connect', new Error('ECONNREFUSED')));
}

function toDiverged(): [Snapshot, Actions] {
  return step(toHandshaking()[0], { type: 'REFUSED', code: 'diverged', reason: 'generation 3 unknown to primary' });
}

function toFailed(): [Snapshot, Actions] {
  return step(toHandshaking()[0], { type: 'REFUSED', code: 'unsupported-version', reason: 'zrs-ts/1 unknown' });
}

function toClosing(): [Snapshot, Actions] {
  return step(toReplicating()[0], { type: 'CLOSE' });
}

function toClosed(): [Snapshot, Actions] {
  return step(toClosing()[0], doneEvent('abortInFlight'));
}

const link = (s: Snapshot): unknown => (s.value as { connected?: { link: string } }).connected?.link;

/** Every state of the machine and a walk that reaches it. */
const reach: Record<string, () => Snapshot> = {
  idle: () => toIdle()[0],
  connecting: () => toConnecting()[0],
  handshaking: () => toHandshaking()[0],
  replicating: () => toReplicating()[0],
  backoff: () => toBackoff()[0],
  diverged: () => toDiverged()[0],
  failed: () => toFailed()[0],
  closing: () => toClosing()[0],
  closed: () => toClosed()[0],
};

describe('secondaryConnection: every state is reachable', () => {
  const expected: Record<string, unknown> = {
    idle: 'idle',
    connecting: 'connecting',
    handshaking: { connected: { link: 'handshaking', keepAlive: 'off' } },
    replicating: { connected: { link: 'replicating', keepAlive: 'off' } },
    backoff: 'backoff',
    diverged: 'diverged',
    failed: 'failed',
    closing: 'closing',
    closed: 'closed',
  };
  for (const [name, walk] of Object.entries(reach)) {
    it(name, () => expect(walk().value).toEqual(expected[name]));
  }
});

describe('secondaryConnection: connecting and handshake', () => {
  it('starts idle with the input in context and nothing requested', () => {
    const [s, actions] = toIdle();
    expect(s.value).toBe('idle');
    expect(actions).toEqual([]);
    expect(s.context).toMatchObject({
      address: primaryA,
      connection: null,
      attempt: 0,
      nextRetryDelayMs: null,
      lastAppliedTid: tid(3),
      lastError: null,
      keepAliveDelayMs: null,
      reconnect: { initialMs: 100, maxMs: 1_000, factor: 2, jitter: 0.5 },
    });
  });

  it('START connects to the current address, bounded by connectTimeoutMs', () => {
    const [s, actions] = toConnecting();
    expect(s.value).toBe('connecting');
    expect(invoked(actions)).toEqual(['connect']);
    expect(inputOf<ConnectInput>(actions, 'connect')).toEqual({ address: primaryA });
    expect(scheduled(actions)).toEqual([{ name: 'connectTimeout', delayMs: 4_000 }]);
    expect(s.context.counters.connects).toBe(1);
  });

  it('once connected, sends the handshake from the last applied tid and starts the reader', () => {
    const [s, actions] = toHandshaking();
    expect(link(s)).toBe('handshaking');
    expect(s.context.connection).toBe(handle);
    expect(named(actions)).toEqual(['sendHandshake']);
    expect(paramsOf(actions, 'sendHandshake')).toEqual({ connection: handle, protocol: native, startTid: tid(3) });
    expect(invoked(actions)).toEqual(['replicate']);
    expect(inputOf<ReplicateInput>(actions, 'replicate')).toEqual({ connection: handle, protocol: native, startTid: tid(3) });
    expect(scheduled(actions)).toEqual([{ name: 'handshakeTimeout', delayMs: 3_000 }]);
  });

  it('WELCOME moves to replicating; the reader keeps running', () => {
    const [s, actions] = toReplicating();
    expect(link(s)).toBe('replicating');
    expect(stopped(actions)).toEqual([]);
    expect(invoked(actions)).toEqual([]);
  });

  it('zrs2.x has no verdict: the same machine goes straight to replicating (protocol kind is data)', () => {
    const [s, actions] = toHandshaking({ protocol: zrs21 });
    expect(link(s)).toBe('replicating');
    expect(named(actions)).toEqual(['sendHandshake']);
    expect(invoked(actions)).toEqual(['replicate']);
  });

  it('a connect failure backs off, recording the error', () => {
    const error = new Error('ECONNREFUSED');
    const [s, actions] = step(toConnecting()[0], errorEvent('connect', error));
    expect(s.value).toBe('backoff');
    expect(s.context.lastError).toEqual({ kind: 'connect-failed', error });
    expect(s.context.attempt).toBe(1);
    expect(s.context.nextRetryDelayMs).toBe(75); // 100 × (1 − 0.5 × 0.5)
    expect(scheduled(actions)).toEqual([{ name: 'reconnectDelay', delayMs: 75 }]);
  });

  it('a connect failure marked haltsReplication stops in failed: nothing scheduled, RESET connects again', () => {
    const error = Object.assign(new Error('a link is missing'), { haltsReplication: true });
    const [s, actions] = step(toConnecting()[0], errorEvent('connect', error));
    expect(s.value).toBe('failed');
    expect(s.context.lastError).toEqual({ kind: 'connect-failed', error });
    expect(scheduled(actions)).toEqual([]);
    expect(step(s, { type: 'RESET' })[0].value).toBe('connecting');
    expect(haltsReplication(error)).toBe(true);
    expect(haltsReplication(Object.assign(new Error('x'), { haltsReplication: 'yes' }))).toBe(false);
    expect(haltsReplication(null)).toBe(false);
  });

  it('a connect that hangs past connectTimeoutMs backs off; the connect actor is stopped', () => {
    const [s0, entry] = toConnecting();
    const [s, actions] = step(s0, delayFired(entry, 'connectTimeout'));
    expect(s.value).toBe('backoff');
    expect(s.context.lastError).toEqual({ kind: 'connect-timeout', timeoutMs: 4_000 });
    expect(stopped(actions)).toEqual(['connect']);
  });

  it('no verdict within handshakeTimeoutMs: drop the connection and back off', () => {
    const [s0, entry] = toHandshaking();
    const [s, actions] = step(s0, delayFired(entry, 'handshakeTimeout'));
    expect(s.value).toBe('backoff');
    expect(named(actions)).toEqual(['dropConnection']);
    expect(paramsOf(actions, 'dropConnection')).toEqual({ connection: handle });
    expect(s.context.connection).toBeNull();
    expect(s.context.lastError).toEqual({ kind: 'handshake-timeout', timeoutMs: 3_000 });
  });

  it('maps refusal codes: only waiting-can-help codes retry', () => {
    expect(refusalOutcome('diverged')).toBe('diverged');
    expect(refusalOutcome('unsupported-version')).toBe('failed');
    expect(refusalOutcome('blobs-unavailable')).toBe('failed');
    expect(refusalOutcome('internal')).toBe('retry');
    expect(refusalOutcome('tid-too-high')).toBe('retry');
    expect(refusalOutcome('bad-tid')).toBe('retry');
    expect(refusalOutcome('some-future-code')).toBe('retry');
  });

  it('REFUSED diverged: drop, record, and stay put — nothing scheduled, no retry', () => {
    const [s, actions] = toDiverged();
    expect(s.value).toBe('diverged');
    expect(named(actions)).toEqual(['dropConnection']);
    expect(scheduled(actions)).toEqual([]);
    expect(invoked(actions)).toEqual([]);
    expect(s.context.lastError).toEqual({ kind: 'refused', code: 'diverged', reason: 'generation 3 unknown to primary' });
    expect(s.context.connection).toBeNull();
  });

  it('REFUSED unsupported-version: failed, no retry', () => {
    const [s, actions] = toFailed();
    expect(s.value).toBe('failed');
    expect(scheduled(actions)).toEqual([]);
    expect(s.context.lastError).toMatchObject({ kind: 'refused', code: 'unsupported-version' });
  });

  it('REFUSED tid-too-high: back off and retry', () => {
    const [s, actions] = step(toHandshaking()[0], { type: 'REFUSED', code: 'tid-too-high', reason: 'ahead' });
    expect(s.value).toBe('backoff');
    expect(named(actions)).toEqual(['dropConnection']);
    expect(scheduled(actions)).toEqual([{ name: 'reconnectDelay', delayMs: 75 }]);
  });

  it('diverged and failed ignore everything but CLOSE, RESET and SET_ADDRESS', () => {
    for (const s0 of [reach.diverged!(), reach.failed!()]) {
      for (const event of [{ type: 'START' }, { type: 'DISCONNECTED' }, { type: 'WELCOME' }] as const) {
        const [s, actions] = step(s0, event);
        expect(s.value).toEqual(s0.value);
        expect(actions).toEqual([]);
      }
    }
  });

  it('RESET leaves diverged/failed and connects from the rewound tid, attempts reset', () => {
    for (const s0 of [reach.diverged!(), reach.failed!()]) {
      const [s1, actions] = step(s0, { type: 'RESET', lastAppliedTid: tid(2) });
      expect(s1.value).toBe('connecting');
      expect(invoked(actions)).toEqual(['connect']);
      expect(s1.context.lastAppliedTid).toEqual(tid(2));
      expect(s1.context.attempt).toBe(0);
      const [s2, connected] = step(s1, doneEvent('connect', { connection: handle }));
      expect(link(s2)).toBe('handshaking');
      expect(paramsOf<{ startTid: Uint8Array }>(connected, 'sendHandshake').startTid).toEqual(tid(2));
    }
  });

  it('RESET starts the backoff over: after failures that grew the delay, the first retry is quick again', () => {
    // Three failed connects grow the delay; a refusal that needs a change then stops it in failed.
    let [s] = toConnecting();
    for (let i = 0; i < 3; i++) {
      const [backoff, entry] = step(s, errorEvent('connect', new Error('ECONNREFUSED')));
      [s] = step(backoff, delayFired(entry, 'reconnectDelay'));
    }
    expect(s.value).toBe('connecting');
    expect(s.context.attempt).toBe(3);
    const error = Object.assign(new Error('a link is missing'), { haltsReplication: true });
    [s] = step(s, errorEvent('connect', error));
    expect(s.value).toBe('failed');
    [s] = step(s, { type: 'RESET' });
    expect(s.context.attempt).toBe(0);
    const [after, actions] = step(s, errorEvent('connect', new Error('ECONNREFUSED')));
    expect(after.context.attempt).toBe(1);
    expect(scheduled(actions)).toEqual([{ name: 'reconnectDelay', delayMs: 75 }]);
  });

  it('RESET without a tid keeps the last applied tid', () => {
    const [s] = step(reach.diverged!(), { type: 'RESET' });
    expect(s.context.lastAppliedTid).toEqual(tid(3));
  });

  it('STORAGE_CUT moves the start position back in every state, without a transition (a new address may have left diverged while a rewind ran)', () => {
    for (const name of ['idle', 'connecting', 'backoff', 'diverged', 'failed'] as const) {
      const s0 = reach[name]!();
      const [s, actions] = step(s0, { type: 'STORAGE_CUT', lastAppliedTid: tid(1) });
      expect(s.value).toEqual(s0.value);
      expect(actions).toEqual([]);
      expect(s.context.lastAppliedTid).toEqual(tid(1));
    }
    // Connecting when the cut came: the handshake starts from the cut, and what follows it is applied.
    const [c] = step(reach.connecting!(), { type: 'STORAGE_CUT', lastAppliedTid: tid(1) });
    const [h, connected] = step(c, doneEvent('connect', { connection: handle }));
    expect(paramsOf<{ startTid: Uint8Array }>(connected, 'sendHandshake').startTid).toEqual(tid(1));
    const [r] = step(h, { type: 'TXN_APPLIED', tid: tid(2) });
    expect(r.context.lastAppliedTid).toEqual(tid(2));
  });
});

describe('secondaryConnection: replicating', () => {
  it('TXN_APPLIED advances the position and clears the failure count', () => {
    const [b] = toBackoff();
    const [c] = step(b, delayFired(toBackoff()[1], 'reconnectDelay'));
    const [h] = step(c, doneEvent('connect', { connection: handle }));
    const [r] = step(h, { type: 'WELCOME' });
    expect(r.context.attempt).toBe(1);
    const [s, actions] = step(r, { type: 'TXN_APPLIED', tid: tid(4) });
    expect(s.context.lastAppliedTid).toEqual(tid(4));
    expect(s.context.attempt).toBe(0);
    expect(actions).toEqual([]);
  });

  it('TXN_APPLIED that races a disconnect still counts: accepted in backoff, closing …', () => {
    for (const state of ['backoff', 'closing', 'diverged']) {
      const [s] = step(reach[state]!(), { type: 'TXN_APPLIED', tid: tid(4) });
      expect(s.value).toBe(state);
      expect(s.context.lastAppliedTid).toEqual(tid(4));
    }
  });

  it('asserts applied tids strictly increase', () => {
    const [s0] = toReplicating();
    expect(() => step(s0, { type: 'TXN_APPLIED', tid: tid(3) })).toThrow(/does not follow/);
  });

  it('DISCONNECTED drops the connection and backs off; the next handshake starts from the new position', () => {
    const [s0] = toReplicating();
    const [s1] = step(s0, { type: 'TXN_APPLIED', tid: tid(7) });
    const error = new Error('checksum mismatch');
    const [s2, actions] = step(s1, { type: 'DISCONNECTED', error });
    expect(s2.value).toBe('backoff');
    expect(stopped(actions)).toEqual(['replicate']);
    expect(named(actions)).toEqual(['dropConnection']);
    expect(s2.context.lastError).toEqual({ kind: 'disconnected', error });
    expect(s2.context.attempt).toBe(1);
    const [s3] = step(s2, delayFired(actions, 'reconnectDelay'));
    const [, connected] = step(s3, doneEvent('connect', { connection: handle }));
    expect(paramsOf<{ startTid: Uint8Array }>(connected, 'sendHandshake').startTid).toEqual(tid(7));
  });

  it('DISCONNECTED with an error marked haltsReplication drops the connection and stops in failed', () => {
    const error = Object.assign(new Error('no blob directory'), { haltsReplication: true });
    const [s, actions] = step(toReplicating()[0], { type: 'DISCONNECTED', error });
    expect(s.value).toBe('failed');
    expect(named(actions)).toEqual(['dropConnection']);
    expect(scheduled(actions)).toEqual([]);
    expect(s.context.lastError).toEqual({ kind: 'disconnected', error });
    expect(s.context.connection).toBeNull();
  });

  it('DISCONNECTED without an error (peer closed) records null', () => {
    const [s] = step(reach.handshaking!(), { type: 'DISCONNECTED' });
    expect(s.value).toBe('backoff');
    expect(s.context.lastError).toEqual({ kind: 'disconnected', error: null });
  });

  it('a failing replicate actor backs off like a disconnect', () => {
    const error = new Error('reader crashed');
    const [s, actions] = step(reach.replicating!(), errorEvent('replicate', error));
    expect(s.value).toBe('backoff');
    expect(named(actions)).toEqual(['dropConnection']);
    expect(s.context.lastError).toEqual({ kind: 'replicate-failed', error });
  });

  it('backoff fires reconnectDelay into connecting, again at the same address', () => {
    const [s0, entry] = toBackoff();
    const [s, actions] = step(s0, delayFired(entry, 'reconnectDelay'));
    expect(s.value).toBe('connecting');
    expect(inputOf<ConnectInput>(actions, 'connect')).toEqual({ address: primaryA });
    expect(s.context.counters.connects).toBe(2);
  });
});

describe('secondaryConnection: keep-alive', () => {
  it('is off when keepAliveDelayMs is not set', () => {
    const [s, actions] = toReplicating();
    expect(s.value).toEqual({ connected: { link: 'replicating', keepAlive: 'off' } });
    expect(scheduled(actions)).toEqual([]);
  });

  it('ticks every keepAliveDelayMs while connected, sending on the current connection', () => {
    const [s0, entry] = toHandshaking({ keepAliveDelayMs: 1_000 });
    expect(s0.value).toEqual({ connected: { link: 'handshaking', keepAlive: 'ticking' } });
    expect(scheduled(entry)).toContainEqual({ name: 'keepAliveDelay', delayMs: 1_000 });
    const [s1, tick1] = step(s0, delayFired(entry, 'keepAliveDelay'));
    expect(named(tick1)).toEqual(['sendKeepAlive']);
    expect(paramsOf(tick1, 'sendKeepAlive')).toEqual({ connection: handle });
    expect(scheduled(tick1)).toEqual([{ name: 'keepAliveDelay', delayMs: 1_000 }]);
    const [s2] = step(s1, { type: 'WELCOME' });
    const [s3, tick2] = step(s2, delayFired(tick1, 'keepAliveDelay'));
    expect(named(tick2)).toEqual(['sendKeepAlive']);
    expect(s3.context.counters.keepAlivesSent).toBe(2);
    expect(link(s3)).toBe('replicating');
  });

  it('stops with the connection: leaving connected cancels the tick', () => {
    const [s0] = toReplicating({ keepAliveDelayMs: 1_000 });
    const [, actions] = step(s0, { type: 'DISCONNECTED' });
    expect(actions.filter((a) => (a.type as string) === 'xstate.cancel').length).toBe(1);
  });
});

describe('secondaryConnection: SET_ADDRESS', () => {
  it('in idle only records the address', () => {
    const [s, actions] = step(reach.idle!(), { type: 'SET_ADDRESS', address: primaryB });
    expect(s.value).toBe('idle');
    expect(s.context.address).toEqual(primaryB);
    expect(actions).toEqual([]);
  });

  it('in connecting restarts the connect at the new address', () => {
    const [s, actions] = step(reach.connecting!(), { type: 'SET_ADDRESS', address: primaryB });
    expect(s.value).toBe('connecting');
    expect(stopped(actions)).toEqual(['connect']);
    expect(inputOf<ConnectInput>(actions, 'connect')).toEqual({ address: primaryB });
  });

  for (const state of ['handshaking', 'replicating'] as const) {
    it(`in ${state} drops the connection and connects to the new address`, () => {
      const [s, actions] = step(reach[state]!(), { type: 'SET_ADDRESS', address: primaryB });
      expect(s.value).toBe('connecting');
      expect(named(actions)).toEqual(['dropConnection']);
      expect(stopped(actions)).toEqual(['replicate']);
      expect(inputOf<ConnectInput>(actions, 'connect')).toEqual({ address: primaryB });
      expect(s.context.connection).toBeNull();
    });
  }

  for (const state of ['backoff', 'diverged', 'failed'] as const) {
    it(`in ${state} connects to the new address at once, attempts reset`, () => {
      const [s, actions] = step(reach[state]!(), { type: 'SET_ADDRESS', address: primaryB });
      expect(s.value).toBe('connecting');
      expect(inputOf<ConnectInput>(actions, 'connect')).toEqual({ address: primaryB });
      expect(s.context.attempt).toBe(0);
    });
  }

  it('in closing is ignored', () => {
    const [s, actions] = step(reach.closing!(), { type: 'SET_ADDRESS', address: primaryB });
    expect(s.value).toBe('closing');
    expect(actions).toEqual([]);
  });
});

describe('secondaryConnection: CLOSE from every state', () => {
  const withConnection = new Set(['handshaking', 'replicating']);
  for (const state of ['idle', 'connecting', 'handshaking', 'replicating', 'backoff', 'diverged', 'failed']) {
    it(`CLOSE in ${state} goes to closing and aborts what is in flight`, () => {
      const [s, actions] = step(reach[state]!(), { type: 'CLOSE' });
      expect(s.value).toBe('closing');
      expect(invoked(actions)).toEqual(['abortInFlight']);
      expect(inputOf<AbortInFlightInput>(actions, 'abortInFlight')).toEqual({
        connection: withConnection.has(state) ? handle : null,
      });
      expect(named(actions)).toEqual([]); // release is abortInFlight's job here, not dropConnection's
      expect(scheduled(actions)).toEqual([{ name: 'closeTimeout', delayMs: 2_000 }]);
      if (state === 'connecting') expect(stopped(actions)).toEqual(['connect']);
      if (withConnection.has(state)) expect(stopped(actions)).toEqual(['replicate']);
    });
  }

  it('CLOSE in closing changes nothing', () => {
    const s0 = reach.closing!();
    const [s, actions] = step(s0, { type: 'CLOSE' });
    expect(s.value).toBe('closing');
    expect(actions).toEqual([]);
  });

  it('CLOSE in closed: the actor is done and stays done', async () => {
    const actor = createActor(
      machine.provide({ actors: { abortInFlight: fromPromise<void, AbortInFlightInput>(async () => {}) } }),
      { input: makeInput(), clock: new SimulatedClock() },
    ).start();
    actor.send({ type: 'CLOSE' });
    await settle();
    expect(actor.getSnapshot().value).toBe('closed');
    actor.send({ type: 'CLOSE' });
    actor.send({ type: 'START' });
    expect(actor.getSnapshot().value).toBe('closed');
    expect(actor.getSnapshot().status).toBe('done');
  });

  it('closing ends in closed when abortInFlight resolves, with the output', () => {
    const [s] = toClosed();
    expect(s.value).toBe('closed');
    expect(s.status).toBe('done');
    expect(s.context.connection).toBeNull();
    expect(s.output).toEqual({ lastAppliedTid: tid(3), lastError: null });
  });

  it('closing ends in closed when abortInFlight fails, recording why', () => {
    const error = new Error('tpcAbort failed');
    const [s] = step(reach.closing!(), errorEvent('abortInFlight', error));
    expect(s.value).toBe('closed');
    expect(s.context.lastError).toEqual({ kind: 'abort-failed', error });
  });

  it('closing is bounded by closeTimeoutMs', () => {
    const [s0, entry] = toClosing();
    const [s] = step(s0, delayFired(entry, 'closeTimeout'));
    expect(s.value).toBe('closed');
    expect(s.context.lastError).toEqual({ kind: 'close-timeout', timeoutMs: 2_000 });
  });
});

describe('secondaryConnection: reconnect delay', () => {
  const settings = { initialMs: 100, maxMs: 1_000, factor: 2, jitter: 0.5 };

  it('first retry is quick, then grows by factor, capped at maxMs', () => {
    expect([1, 2, 3, 4, 5, 6, 50].map((n) => reconnectDelayMs(settings, n, 0))).toEqual([100, 200, 400, 800, 1_000, 1_000, 1_000]);
  });

  it('jitter only removes up to `jitter` of the delay, so the cap holds', () => {
    expect(reconnectDelayMs(settings, 1, 0.5)).toBe(75);
    expect(reconnectDelayMs(settings, 9, 0.999_999)).toBe(500);
    expect(reconnectDelayMs({ ...settings, jitter: 0 }, 3, 0.9)).toBe(400);
  });

  it('rounds to the nearest millisecond', () => {
    // 100 × (1 − 0.5 × 0.33) = 83.5
    expect(reconnectDelayMs(settings, 1, 0.33)).toBe(84);
  });

  it('takes the ends of the documented ranges: jitter 1 and initialMs 0', () => {
    expect(connectionSettings({ reconnect: { jitter: 1 } }).reconnect.jitter).toBe(1);
    expect(connectionSettings({ reconnect: { initialMs: 0 } }).reconnect.initialMs).toBe(0);
    expect(() => connectionSettings({ reconnect: { jitter: 1.01 } })).toThrow(/invalid reconnect/);
    expect(() => connectionSettings({ reconnect: { initialMs: -1 } })).toThrow(/invalid reconnect/);
  });

  it('defaults keep the first retry under 100 ms and the cap at a minute', () => {
    expect(reconnectDelayMs(DEFAULT_RECONNECT, 1, 0)).toBe(100);
    expect(reconnectDelayMs(DEFAULT_RECONNECT, 1_000, 0)).toBe(60_000);
  });

  it('rejects bad settings and a random source out of range', () => {
    // A throwing context factory leaves the actor in status 'error' (xstate catches it at creation).
    const [badFactor] = initialTransition(machine, makeInput({ reconnect: { factor: 0.5 } }));
    expect(badFactor.status).toBe('error');
    expect(String(badFactor.error)).toMatch(/invalid reconnect/);
    const [badKeepAlive] = initialTransition(machine, makeInput({ keepAliveDelayMs: 0 }));
    expect(badKeepAlive.status).toBe('error');
    expect(String(badKeepAlive.error)).toMatch(/keepAliveDelayMs/);
    expect(() => reconnectDelayMs(settings, 1, 1)).toThrow(/random source/);
  });
});

describe('secondaryConnection: as an actor, in virtual time', () => {
  it('backs off with growing, capped, jittered delays drawn from the injected random source', async () => {
    const clock = new SimulatedClock();
    const connectTimes: number[] = [];
    const actor = createActor(
      machine.provide({
        actors: {
          connect: fromPromise<ConnectOutput, ConnectInput>(async () => {
            connectTimes.push(clock.now());
            throw new Error('ECONNREFUSED');
          }),
        },
      }),
      { input: makeInput({ random: replay(0.5, 0, 0.25, 0.9, 0, 0.99) }), clock },
    ).start();
    actor.send({ type: 'START' });
    await settle();
    // attempt n: min(1000, 100 × 2^(n-1)) × (1 − 0.5 × r_n)
    const expectedDelaysMs = [75, 200, 350, 440, 1_000, 505];
    for (const delayMs of expectedDelaysMs) {
      expect(actor.getSnapshot().value).toBe('backoff');
      expect(actor.getSnapshot().context.nextRetryDelayMs).toBe(delayMs);
      const before = connectTimes.length;
      clock.increment(delayMs - 1);
      await settle();
      expect(connectTimes.length).toBe(before);
      clock.increment(1);
      await settle();
      expect(connectTimes.length).toBe(before + 1);
    }
    expect(connectTimes).toEqual([0, 75, 275, 625, 1_065, 2_065, 2_570]);
  });

  it('by default, gives a connect 30 s of virtual time and a close 10 s', async () => {
    const { connectTimeoutMs: _c, closeTimeoutMs: _d, ...defaults } = makeInput();
    const clock = new SimulatedClock();
    let connects = 0;
    const actor = createActor(
      machine.provide({
        actors: {
          // The first connect hangs; the second succeeds.
          connect: fromPromise<ConnectOutput, ConnectInput>(() => (++connects === 1 ? new Promise<ConnectOutput>(() => {}) : Promise.resolve({ connection: handle }))),
          replicate: fromCallback<EventObject, ReplicateInput>(() => {}),
          abortInFlight: fromPromise(() => new Promise<void>(() => {})),
        },
        actions: { sendHandshake: () => {}, dropConnection: () => {} },
      }),
      { input: defaults, clock },
    ).start();
    actor.send({ type: 'START' });
    await settle();
    clock.increment(29_999);
    await settle();
    expect(actor.getSnapshot().value).toBe('connecting');
    clock.increment(1);
    await settle();
    expect(actor.getSnapshot().value).toBe('backoff');
    expect(actor.getSnapshot().context.lastError).toEqual({ kind: 'connect-timeout', timeoutMs: 30_000 });
    clock.increment(actor.getSnapshot().context.nextRetryDelayMs!);
    await settle();
    actor.send({ type: 'WELCOME' });
    expect(link(actor.getSnapshot())).toBe('replicating');
    // A close whose abort never ends is cut off after 10 s.
    actor.send({ type: 'CLOSE' });
    await settle();
    clock.increment(9_999);
    await settle();
    expect(actor.getSnapshot().value).toBe('closing');
    clock.increment(1);
    await settle();
    expect(actor.getSnapshot().value).toBe('closed');
    expect(actor.getSnapshot().context.lastError).toEqual({ kind: 'close-timeout', timeoutMs: 10_000 });
  });

  it('sends keep-alives at a steady cadence while connected, and stops when disconnected', async () => {
    const clock = new SimulatedClock();
    const keepAliveTimes: number[] = [];
    let connects = 0;
    const actor = createActor(
      machine.provide({
        actors: {
          connect: fromPromise<ConnectOutput, ConnectInput>(() => {
            connects += 1;
            return connects === 1 ? Promise.resolve({ connection: handle }) : new Promise<ConnectOutput>(() => {});
          }),
          replicate: fromCallback<EventObject, ReplicateInput>(() => {}),
        },
        actions: {
          sendHandshake: () => {},
          dropConnection: () => {},
          sendKeepAlive: () => keepAliveTimes.push(clock.now()),
        },
      }),
      { input: makeInput({ protocol: zrs21, keepAliveDelayMs: 1_000 }), clock },
    ).start();
    actor.send({ type: 'START' });
    await settle();
    expect(actor.getSnapshot().value).toEqual({ connected: { link: 'replicating', keepAlive: 'ticking' } });
    clock.increment(999);
    expect(keepAliveTimes).toEqual([]);
    for (let i = 0; i < 4; i++) clock.increment(i === 0 ? 1 : 1_000);
    expect(keepAliveTimes).toEqual([1_000, 2_000, 3_000, 4_000]);
    actor.send({ type: 'DISCONNECTED' });
    clock.increment(3_000);
    await settle();
    expect(keepAliveTimes).toEqual([1_000, 2_000, 3_000, 4_000]);
    expect(actor.getSnapshot().value).toBe('connecting');
  });

  it('a diverged refusal never retries, however long we wait', async () => {
    const clock = new SimulatedClock();
    let connects = 0;
    const actor = createActor(
      machine.provide({
        actors: {
          connect: fromPromise<ConnectOutput, ConnectInput>(async () => {
            connects += 1;
            return { connection: handle };
          }),
          replicate: fromCallback<EventObject, ReplicateInput>(({ sendBack }) => {
            sendBack({ type: 'REFUSED', code: 'diverged', reason: 'history differs' });
          }),
        },
        actions: { sendHandshake: () => {}, dropConnection: () => {} },
      }),
      { input: makeInput(), clock },
    ).start();
    actor.send({ type: 'START' });
    await settle();
    expect(actor.getSnapshot().value).toBe('diverged');
    clock.increment(24 * 3_600_000);
    await settle();
    expect(actor.getSnapshot().value).toBe('diverged');
    expect(connects).toBe(1);
  });

  it('an unprovided connect fails loudly with EffectNotProvidedError, recorded as the last error', async () => {
    const actor = createActor(machine, { input: makeInput(), clock: new SimulatedClock() }).start();
    actor.send({ type: 'START' });
    await settle();
    const lastError = actor.getSnapshot().context.lastError;
    expect(lastError).toMatchObject({ kind: 'connect-failed' });
    expect((lastError as { error: unknown }).error).toBeInstanceOf(EffectNotProvidedError);
  });
});
