// The secondary's connection to its primary: connect, handshake, replicate,
// back off and retry. Applied tids strictly increase; a diverged or
// unsupported refusal never loops; CLOSE is honoured from every state.

import { assertEvent, assign, fromCallback, fromPromise, setup, type EventObject } from 'xstate';
import type { MachineAddress } from './address.js';
import { notProvided } from './effects.js';
import type { ProtocolSpec, Refusal, RefusalCode } from './handshake.js';
import { assertTidAfter, type Tid } from './tid.js';

const MACHINE = 'secondaryConnection';

// ---------------------------------------------------------------- events

/** Leave `idle` and connect. */
export interface SecondaryStartEvent {
  type: 'START';
}

/** Stop for good: abort any half-received transaction, close the socket, end in `closed`. */
export interface SecondaryCloseEvent {
  type: 'CLOSE';
}

/** Use another primary: drop the current connection (if any) and connect there now. In `idle` only records it. */
export interface SetAddressEvent {
  type: 'SET_ADDRESS';
  address: MachineAddress;
}

/**
 * Leave `diverged` or `failed` and connect again, e.g. after an explicit
 * rewind. `lastAppliedTid` is the storage's last tid after the rewind.
 */
export interface ResetEvent {
  type: 'RESET';
  lastAppliedTid?: Tid;
}

/**
 * The storage was cut back (an online rewind): the next handshake starts at
 * `lastAppliedTid`. A storage fact like TXN_APPLIED, accepted in every state
 * (a new address may have left `diverged` while the rewind ran).
 */
export interface StorageCutEvent {
  type: 'STORAGE_CUT';
  lastAppliedTid: Tid;
}

/** The primary accepted the handshake (protocols with a verdict; from replicate). */
export interface WelcomeEvent {
  type: 'WELCOME';
}

/**
 * The primary refused the handshake (protocols with a verdict; from
 * replicate). `code` is kept as received: unknown future codes retry.
 */
export interface RefusedEvent extends Refusal<RefusalCode | (string & {})> {
  type: 'REFUSED';
}

/**
 * A whole transaction was committed to the local storage. Accepted in every
 * state; send it right after tpcFinish returns (via sendBack, or straight to
 * the actor so it survives the reader being stopped).
 */
export interface TxnAppliedEvent {
  type: 'TXN_APPLIED';
  tid: Tid;
}

/**
 * The connection ended (from replicate): peer closed (no error), transport
 * error, bad frame, checksum mismatch, storage failure … (with error).
 */
export interface DisconnectedEvent {
  type: 'DISCONNECTED';
  error?: Error;
}

export type SecondaryConnectionEvent =
  | SecondaryStartEvent
  | SecondaryCloseEvent
  | SetAddressEvent
  | ResetEvent
  | StorageCutEvent
  | WelcomeEvent
  | RefusedEvent
  | TxnAppliedEvent
  | DisconnectedEvent;

/** The events the `replicate` actor sends back. */
export type ReplicateEvent = WelcomeEvent | RefusedEvent | TxnAppliedEvent | DisconnectedEvent;

// ---------------------------------------------------------------- context

/** Capped exponential backoff with subtractive jitter. */
export interface ReconnectSettings {
  /** Delay before the first retry: keep it small. */
  initialMs: number;
  /** Upper bound of every delay, jitter included. */
  maxMs: number;
  /** Growth per consecutive failure (>= 1). */
  factor: number;
  /** Fraction in [0, 1] of the delay that random jitter may remove. */
  jitter: number;
}

/**
 * Opaque to the machine: whatever the edge's `connect` returns (its socket,
 * decoder and in-flight transaction). Handed back to every effect that needs it.
 */
export type ConnectionHandle = object;

/** Why the last attempt ended; the edge logs it and reports status. */
export type ConnectionFailure =
  | { kind: 'connect-failed'; error: unknown }
  | { kind: 'connect-timeout'; timeoutMs: number }
  | { kind: 'handshake-timeout'; timeoutMs: number }
  | ({ kind: 'refused' } & Refusal<string>)
  | { kind: 'disconnected'; error: Error | null }
  | { kind: 'replicate-failed'; error: unknown }
  | { kind: 'abort-failed'; error: unknown }
  | { kind: 'close-timeout'; timeoutMs: number };

export interface SecondaryConnectionCounters {
  /** Connection attempts started. */
  connects: number;
  /** Keep-alive frames requested. */
  keepAlivesSent: number;
}

export interface SecondaryConnectionContext {
  address: MachineAddress;
  readonly protocol: ProtocolSpec;
  /** Injected uniform source in [0, 1) for jitter; never Math.random. */
  readonly random: () => number;
  readonly reconnect: ReconnectSettings;
  /** Keep-alive period while connected; null disables keep-alives. */
  readonly keepAliveDelayMs: number | null;
  readonly connectTimeoutMs: number;
  readonly handshakeTimeoutMs: number;
  readonly closeTimeoutMs: number;
  /** The open connection (set in `connected`, kept for `closing`), else null. */
  connection: ConnectionHandle | null;
  /** Consecutive failed attempts since the last applied transaction (or SET_ADDRESS / RESET). */
  attempt: number;
  /** The delay chosen on entering `backoff`. */
  nextRetryDelayMs: number | null;
  /** The local storage's last tid: the start position of the next handshake. */
  lastAppliedTid: Tid;
  lastError: ConnectionFailure | null;
  counters: SecondaryConnectionCounters;
}

export interface SecondaryConnectionInput {
  address: MachineAddress;
  protocol: ProtocolSpec;
  /** The storage's last tid (8 zero bytes when empty). */
  lastAppliedTid: Tid;
  /** Uniform in [0, 1), e.g. `() => rng.next()` from src/ports/random.ts. */
  random: () => number;
  /** Defaults: 100 ms, 60 000 ms, ×2, 0.2. */
  reconnect?: Partial<ReconnectSettings>;
  /** Default null (no keep-alives). */
  keepAliveDelayMs?: number | null;
  /** Defaults: connect 30 000, handshake verdict 30 000, close 10 000. */
  connectTimeoutMs?: number;
  handshakeTimeoutMs?: number;
  closeTimeoutMs?: number;
}

export interface SecondaryConnectionOutput {
  lastAppliedTid: Tid;
  lastError: ConnectionFailure | null;
}

// ---------------------------------------------------------------- effects

/** Input of `connect`. */
export interface ConnectInput {
  address: MachineAddress;
}

/** Output of `connect`. */
export interface ConnectOutput {
  connection: ConnectionHandle;
}

/** Input of `replicate`. */
export interface ReplicateInput {
  connection: ConnectionHandle;
  protocol: ProtocolSpec;
  /** The position sent in the handshake; applied tids must follow it. */
  startTid: Tid;
}

/** Input of `abortInFlight`. */
export interface AbortInFlightInput {
  /** The connection open when CLOSE arrived, or null. */
  connection: ConnectionHandle | null;
}

/** Params of `sendHandshake`. */
export interface HandshakeParams {
  connection: ConnectionHandle;
  protocol: ProtocolSpec;
  startTid: Tid;
}

/** Params of `sendKeepAlive` and `dropConnection`. */
export interface ConnectionParams {
  connection: ConnectionHandle;
}

// ---------------------------------------------------------------- pure helpers

export const DEFAULT_RECONNECT: Readonly<ReconnectSettings> = { initialMs: 100, maxMs: 60_000, factor: 2, jitter: 0.2 };
const DEFAULT_CONNECT_TIMEOUT_MS = 30_000;
const DEFAULT_HANDSHAKE_TIMEOUT_MS = 30_000;
const DEFAULT_CLOSE_TIMEOUT_MS = 10_000;

/**
 * The delay before retry number `attempt` (1 = first retry):
 * min(maxMs, initialMs × factor^(attempt-1)), minus up to `jitter` of it.
 * Never above maxMs, never below (1 - jitter) of the un-jittered delay.
 */
export function reconnectDelayMs(settings: ReconnectSettings, attempt: number, random01: number): number {
  if (!(attempt >= 1)) throw new Error(`bug: reconnect attempt ${attempt} < 1`);
  if (!(random01 >= 0 && random01 < 1)) throw new Error(`bug: random source returned ${random01}, expected [0, 1)`);
  const baseMs = Math.min(settings.maxMs, settings.initialMs * settings.factor ** (attempt - 1));
  return Math.round(baseMs * (1 - settings.jitter * random01));
}

/**
 * A `connect` failure no retry can mend, marked by the edge (an error with
 * `haltsReplication: true`): the machine stops in `failed` instead of
 * backing off, until RESET or SET_ADDRESS.
 */
export function haltsReplication(error: unknown): boolean {
  return typeof error === 'object' && error !== null && (error as { haltsReplication?: unknown }).haltsReplication === true;
}

/**
 * What a refusal leads to: only retry when waiting can help. `diverged` needs
 * an explicit rewind; `unsupported-version` and `blobs-unavailable` need a
 * configuration change; everything else (tid-too-high, bad-tid, internal,
 * codes from a newer primary) retries after the reconnect delay.
 */
export function refusalOutcome(code: string): 'diverged' | 'failed' | 'retry' {
  if (code === 'diverged') return 'diverged';
  if (code === 'unsupported-version' || code === 'blobs-unavailable') return 'failed';
  return 'retry';
}

/**
 * The reconnect settings with their defaults filled in, and the keep-alive
 * delay, as the machine runs with them; an Error naming the setting for
 * values it cannot run with (the machine's context is built from this, and
 * a caller can check before starting one).
 */
export function connectionSettings(input: Pick<SecondaryConnectionInput, 'reconnect' | 'keepAliveDelayMs'>): { reconnect: ReconnectSettings; keepAliveDelayMs: number | null } {
  const keepAliveDelayMs = input.keepAliveDelayMs ?? null;
  if (keepAliveDelayMs !== null && !(keepAliveDelayMs > 0)) throw new Error(`keepAliveDelayMs must be > 0, got ${keepAliveDelayMs}`);
  // Undefined fields keep their defaults (a spread would overwrite them).
  const r: ReconnectSettings = { ...DEFAULT_RECONNECT, ...Object.fromEntries(Object.entries(input.reconnect ?? {}).filter(([, v]) => v !== undefined)) };
  const ok = r.initialMs >= 0 && r.maxMs >= r.initialMs && r.factor >= 1 && r.jitter >= 0 && r.jitter <= 1;
  if (!ok) {
    throw new Error(`invalid reconnect settings ${JSON.stringify(r)}: initialMs >= 0, maxMs >= initialMs, factor >= 1 and jitter from 0 to 1 (defaults ${JSON.stringify(DEFAULT_RECONNECT)})`);
  }
  return { reconnect: r, keepAliveDelayMs };
}

function createContext(input: SecondaryConnectionInput): SecondaryConnectionContext {
  const { reconnect, keepAliveDelayMs } = connectionSettings(input);
  return {
    address: input.address,
    protocol: input.protocol,
    random: input.random,
    reconnect,
    keepAliveDelayMs,
    connectTimeoutMs: input.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS,
    handshakeTimeoutMs: input.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS,
    closeTimeoutMs: input.closeTimeoutMs ?? DEFAULT_CLOSE_TIMEOUT_MS,
    connection: null,
    attempt: 0,
    nextRetryDelayMs: null,
    lastAppliedTid: input.lastAppliedTid,
    lastError: null,
    counters: { connects: 0, keepAlivesSent: 0 },
  };
}

function openConnection(context: SecondaryConnectionContext): ConnectionHandle {
  if (context.connection === null) throw new Error('bug: secondaryConnection connected without a connection');
  return context.connection;
}

/** The dropConnection request every exit from `connected` but CLOSE makes. */
const dropCurrentConnection = {
  type: 'dropConnection',
  params: ({ context }: { context: SecondaryConnectionContext }): ConnectionParams => ({ connection: openConnection(context) }),
} as const;

/** A connect that failed: record why. */
const connectFailed = {
  type: 'fail',
  params: ({ event }: { event: { error?: unknown } }): { failure: ConnectionFailure } => ({ failure: { kind: 'connect-failed', error: event.error } }),
} as const;

/** A connection that ended (DISCONNECTED): drop it and record why. */
const disconnected = [
  dropCurrentConnection,
  'forgetConnection',
  {
    type: 'fail',
    params: ({ event }: { event: { error?: Error } }): { failure: ConnectionFailure } => ({ failure: { kind: 'disconnected', error: event.error ?? null } }),
  },
] as const;

// ---------------------------------------------------------------- machine

/**
 * The secondary's connection to a primary.
 *
 * The edge must provide (with `.provide()`):
 * - actor `connect` (promise, {@link ConnectInput} → {@link ConnectOutput}):
 *   open a stream; reject when refused/unreachable (with an error marked
 *   `haltsReplication: true` when no retry can help: the machine then stops
 *   in `failed`). If `signal` aborts after
 *   the stream opened, destroy it (CLOSE or SET_ADDRESS raced the connect).
 * - actor `replicate` (callback, {@link ReplicateInput}): the one reader of the
 *   connection, from its first byte. Decodes frames; for protocols with a
 *   verdict, first sends back WELCOME or REFUSED {code, reason}; then decodes
 *   and applies each transaction (tpcBegin … tpcFinish), sending TXN_APPLIED
 *   {tid} with the newest durable tid (it may skip tids: the implementation
 *   reports at most every 20 ms while streaming; ACK to the primary when
 *   `protocol.hasAcks`); sends DISCONNECTED {error?} once when the stream
 *   ends or anything fails, after reporting the newest tid.
 *   Its cleanup only detaches its handlers; release is dropConnection's job.
 * - actor `abortInFlight` (promise, {@link AbortInFlightInput} → void): abort
 *   any half-received transaction (tpcAbort) and close the socket; resolve when
 *   both are done. Must accept null.
 * - action `sendHandshake` ({@link HandshakeParams}): write the protocol-name
 *   frame and the start frame (for native: with the generation history).
 * - action `sendKeepAlive` ({@link ConnectionParams}): write a zero-length frame.
 * - action `dropConnection` ({@link ConnectionParams}): on every exit from
 *   `connected` except CLOSE: abort the half-received transaction and destroy
 *   the socket, synchronously starting both.
 *
 * @example
 * const connection = createActor(secondaryConnectionMachine.provide({ actors, actions }), {
 *   input: { address, protocol, lastAppliedTid: storage.lastTransaction(), random: () => rng.next() },
 *   clock,
 * }).start();
 * connection.send({ type: 'START' });
 */
export const secondaryConnectionMachine = setup({
  types: {
    context: {} as SecondaryConnectionContext,
    events: {} as SecondaryConnectionEvent,
    input: {} as SecondaryConnectionInput,
    output: {} as SecondaryConnectionOutput,
  },
  actors: {
    connect: fromPromise<ConnectOutput, ConnectInput>(() => notProvided(MACHINE, 'connect')),
    replicate: fromCallback<EventObject, ReplicateInput>(() => notProvided(MACHINE, 'replicate')),
    abortInFlight: fromPromise<void, AbortInFlightInput>(() => notProvided(MACHINE, 'abortInFlight')),
  },
  actions: {
    sendHandshake: (_args, _params: HandshakeParams) => notProvided(MACHINE, 'sendHandshake'),
    sendKeepAlive: (_args, _params: ConnectionParams) => notProvided(MACHINE, 'sendKeepAlive'),
    dropConnection: (_args, _params: ConnectionParams) => notProvided(MACHINE, 'dropConnection'),
    forgetConnection: assign({ connection: null }),
    fail: assign((_args, params: { failure: ConnectionFailure }) => ({ lastError: params.failure })),
    recordRefusal: assign(({ event }) => {
      assertEvent(event, 'REFUSED');
      const { type: _type, ...refusal } = event;
      return { lastError: { kind: 'refused', ...refusal } };
    }),
    reset: assign(({ context, event }) => {
      assertEvent(event, 'RESET');
      return { attempt: 0, nextRetryDelayMs: null, lastAppliedTid: event.lastAppliedTid ?? context.lastAppliedTid };
    }),
    setAddress: assign(({ event }) => {
      assertEvent(event, 'SET_ADDRESS');
      return { address: event.address, attempt: 0, nextRetryDelayMs: null };
    }),
  },
  guards: {
    verdictNotExpected: ({ context }) => !context.protocol.hasVerdict,
    keepAliveEnabled: ({ context }) => context.keepAliveDelayMs !== null,
    refusedDiverged: ({ event }) => {
      assertEvent(event, 'REFUSED');
      return refusalOutcome(event.code) === 'diverged';
    },
    /** A connect or a connection failed with an error no retry can mend. */
    errorHalts: ({ event }) => haltsReplication((event as { error?: unknown }).error),
    refusedForGood: ({ event }) => {
      assertEvent(event, 'REFUSED');
      return refusalOutcome(event.code) === 'failed';
    },
  },
  delays: {
    reconnectDelay: ({ context }) => context.nextRetryDelayMs ?? 0,
    keepAliveDelay: ({ context }) => context.keepAliveDelayMs ?? 0,
    connectTimeout: ({ context }) => context.connectTimeoutMs,
    handshakeTimeout: ({ context }) => context.handshakeTimeoutMs,
    closeTimeout: ({ context }) => context.closeTimeoutMs,
  },
}).createMachine({
  id: MACHINE,
  context: ({ input }) => createContext(input),
  initial: 'idle',
  output: ({ context }) => ({ lastAppliedTid: context.lastAppliedTid, lastError: context.lastError }),
  on: {
    CLOSE: '.closing',
    // A storage fact, not a connection event: accepted in every state so a
    // commit that races a disconnect still moves the next start position.
    TXN_APPLIED: {
      actions: assign(({ context, event }) => {
        assertTidAfter('applied', context.lastAppliedTid, event.tid);
        return { lastAppliedTid: event.tid, attempt: 0 };
      }),
    },
    STORAGE_CUT: { actions: assign({ lastAppliedTid: ({ event }) => event.lastAppliedTid }) },
  },
  states: {
    idle: {
      on: {
        START: 'connecting',
        SET_ADDRESS: { actions: 'setAddress' },
      },
    },
    connecting: {
      entry: assign({ counters: ({ context }) => ({ ...context.counters, connects: context.counters.connects + 1 }) }),
      invoke: {
        id: 'connect',
        src: 'connect',
        input: ({ context }) => ({ address: context.address }),
        onDone: { target: 'connected', actions: assign({ connection: ({ event }) => event.output.connection }) },
        onError: [
          { guard: 'errorHalts', target: 'failed', actions: connectFailed },
          { target: 'backoff', actions: connectFailed },
        ],
      },
      after: {
        connectTimeout: {
          target: 'backoff',
          actions: { type: 'fail', params: ({ context }) => ({ failure: { kind: 'connect-timeout', timeoutMs: context.connectTimeoutMs } }) },
        },
      },
      on: {
        SET_ADDRESS: { target: 'connecting', reenter: true, actions: 'setAddress' },
      },
    },
    connected: {
      type: 'parallel',
      invoke: {
        id: 'replicate',
        src: 'replicate',
        input: ({ context }) => ({ connection: openConnection(context), protocol: context.protocol, startTid: context.lastAppliedTid }),
        onError: {
          target: 'backoff',
          actions: [
            dropCurrentConnection,
            'forgetConnection',
            { type: 'fail', params: ({ event }) => ({ failure: { kind: 'replicate-failed', error: event.error } }) },
          ],
        },
      },
      on: {
        DISCONNECTED: [
          { guard: 'errorHalts', target: 'failed', actions: disconnected },
          { target: 'backoff', actions: disconnected },
        ],
        SET_ADDRESS: {
          target: 'connecting',
          actions: [
            dropCurrentConnection,
            'forgetConnection',
            'setAddress',
          ],
        },
      },
      states: {
        link: {
          initial: 'handshaking',
          states: {
            handshaking: {
              entry: {
                type: 'sendHandshake',
                params: ({ context }) => ({ connection: openConnection(context), protocol: context.protocol, startTid: context.lastAppliedTid }),
              },
              always: { guard: 'verdictNotExpected', target: 'replicating' },
              after: {
                handshakeTimeout: {
                  target: '#secondaryConnection.backoff',
                  actions: [
                    dropCurrentConnection,
                    'forgetConnection',
                    { type: 'fail', params: ({ context }) => ({ failure: { kind: 'handshake-timeout', timeoutMs: context.handshakeTimeoutMs } }) },
                  ],
                },
              },
              on: {
                WELCOME: 'replicating',
                REFUSED: [
                  { guard: 'refusedDiverged', target: '#secondaryConnection.diverged', actions: [dropCurrentConnection, 'forgetConnection', 'recordRefusal'] },
                  { guard: 'refusedForGood', target: '#secondaryConnection.failed', actions: [dropCurrentConnection, 'forgetConnection', 'recordRefusal'] },
                  { target: '#secondaryConnection.backoff', actions: [dropCurrentConnection, 'forgetConnection', 'recordRefusal'] },
                ],
              },
            },
            replicating: {},
          },
        },
        keepAlive: {
          initial: 'deciding',
          states: {
            deciding: {
              always: [{ guard: 'keepAliveEnabled', target: 'ticking' }, { target: 'off' }],
            },
            off: {},
            ticking: {
              after: {
                keepAliveDelay: {
                  target: 'ticking',
                  reenter: true,
                  actions: [
                    { type: 'sendKeepAlive', params: ({ context }) => ({ connection: openConnection(context) }) },
                    assign({ counters: ({ context }) => ({ ...context.counters, keepAlivesSent: context.counters.keepAlivesSent + 1 }) }),
                  ],
                },
              },
            },
          },
        },
      },
    },
    backoff: {
      entry: assign(({ context }) => {
        const attempt = context.attempt + 1;
        return { attempt, nextRetryDelayMs: reconnectDelayMs(context.reconnect, attempt, context.random()) };
      }),
      after: { reconnectDelay: 'connecting' },
      on: {
        SET_ADDRESS: { target: 'connecting', actions: 'setAddress' },
      },
    },
    diverged: {
      on: {
        RESET: { target: 'connecting', actions: 'reset' },
        SET_ADDRESS: { target: 'connecting', actions: 'setAddress' },
      },
    },
    failed: {
      on: {
        RESET: { target: 'connecting', actions: 'reset' },
        SET_ADDRESS: { target: 'connecting', actions: 'setAddress' },
      },
    },
    closing: {
      invoke: {
        id: 'abortInFlight',
        src: 'abortInFlight',
        input: ({ context }) => ({ connection: context.connection }),
        onDone: { target: 'closed', actions: 'forgetConnection' },
        onError: {
          target: 'closed',
          actions: ['forgetConnection', { type: 'fail', params: ({ event }) => ({ failure: { kind: 'abort-failed', error: event.error } }) }],
        },
      },
      after: {
        closeTimeout: {
          target: 'closed',
          actions: ['forgetConnection', { type: 'fail', params: ({ context }) => ({ failure: { kind: 'close-timeout', timeoutMs: context.closeTimeoutMs } }) }],
        },
      },
      on: {
        CLOSE: {},
      },
    },
    closed: { type: 'final' },
  },
});

export type SecondaryConnectionMachine = typeof secondaryConnectionMachine;
