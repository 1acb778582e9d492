// The primary's side of one replication connection: handshake, catch-up from
// the log, live following, draining on close. Tids sent strictly increase;
// every path ends in `closed` with a recorded closeReason.

import { assertEvent, assign, enqueueActions, fromPromise, setup } from 'xstate';
import { notProvided } from './effects.js';
import { findProtocol, type ProtocolSpec, type Refusal } from './handshake.js';
import { assertTidAfter, compareTids, isWellFormedTid, tidHex, TID_LENGTH, type Tid } from './tid.js';

const MACHINE = 'primarySession';

// ---------------------------------------------------------------- events

/** First frame: the protocol name, decoded as text by the edge (an empty one names no protocol). */
export interface ProtocolEvent {
  type: 'PROTOCOL';
  name: string;
}

/**
 * Second frame, decoded with the chosen protocol's codec. The edge
 * adds what only the storage knows, so the machine judges the handshake
 * without calling out: `primaryLastTid` is the storage's last tid at the
 * moment the frame was decoded (8 zero bytes for an empty storage), and
 * `edgeRefusal` is the edge's verdict on what needs the storage's records
 * (native only): generation histories (`diverged` with forkTid, or `bad-tid`
 * for an inconsistent history) and blob support (`blobs-unavailable`).
 */
export interface SessionStartEvent {
  type: 'START';
  /** The secondary's last tid, as received (its length is checked here). */
  startTid: Tid;
  primaryLastTid: Tid;
  edgeRefusal?: Refusal;
}

/**
 * Second frame was a status request instead of a start (native
 * protocol family): the edge answers it with one status message
 * (`sendStatus`), then the session closes without streaming anything.
 */
export interface StatusRequestEvent {
  type: 'STATUS_REQUEST';
}

/**
 * Second frame was a promote request instead of a start (native
 * protocol family): the edge's `promote` actor carries it out, `sendPromoteResult`
 * answers, then the session closes without streaming anything.
 */
export interface PromoteRequestEvent {
  type: 'PROMOTE_REQUEST';
  /** Promote even while connected to a live primary, or while diverged. */
  force: boolean;
}

/**
 * Second frame was a pack request instead of a start (native protocol
 * family): the edge's `pack` actor packs the node's own file,
 * `sendPackResult` answers, then the session closes without streaming anything.
 */
export interface PackRequestEvent {
  type: 'PACK_REQUEST';
  /** The pack time, in seconds since the epoch. */
  time: number;
  /** Garbage-collect too. */
  gc: boolean;
}

/**
 * Transactions up to this tid were written to the socket (from catchUp,
 * follow or drain). The edge may report several writes in one SENT (`count`),
 * but before it sends any other event and before a streaming actor settles,
 * so every transition but a timeout's (handshake, drain) sees the position
 * as it is.
 */
export interface SentEvent {
  type: 'SENT';
  tid: Tid;
  /** How many transactions this write carried (a raw batch carries many); default 1. */
  count?: number;
}

/** The follow buffer overflowed: fall back to reading the log (from follow). */
export interface OverflowEvent {
  type: 'OVERFLOW';
}

/**
 * The secondary acknowledged it applied everything up to `tid` (native
 * protocol). The edge may keep acks that are in range ({@link isAckInRange})
 * and report the newest later, like SENT; one out of range closes the session.
 */
export interface AckEvent {
  type: 'ACK';
  tid: Tid;
}

/** A zero-length frame from the secondary. Ignored in every state. */
export interface KeepAliveEvent {
  type: 'KEEPALIVE';
}

/** Local shutdown: drain what is committed (when streaming), then close. */
export interface SessionCloseEvent {
  type: 'CLOSE';
}

/** The socket ended from the other side. */
export interface PeerClosedEvent {
  type: 'PEER_CLOSED';
}

/** The socket failed (reset, write error …). */
export interface TransportErrorEvent {
  type: 'TRANSPORT_ERROR';
  error: Error;
}

/** The secondary sent bytes the codec rejects (oversized frame, garbage, unexpected message). */
export interface ProtocolErrorEvent {
  type: 'PROTOCOL_ERROR';
  reason: string;
}

export type PrimarySessionEvent =
  | ProtocolEvent
  | SessionStartEvent
  | StatusRequestEvent
  | PromoteRequestEvent
  | PackRequestEvent
  | SentEvent
  | OverflowEvent
  | AckEvent
  | KeepAliveEvent
  | SessionCloseEvent
  | PeerClosedEvent
  | TransportErrorEvent
  | ProtocolErrorEvent;

// ---------------------------------------------------------------- context

/** Why the session ended; the edge logs it and picks end() vs destroy(). */
export type SessionCloseReason =
  | ({ kind: 'refused' } & Refusal)
  | { kind: 'peer-closed' }
  | { kind: 'transport-error'; error: Error }
  | { kind: 'protocol-error'; reason: string }
  | { kind: 'handshake-timeout'; timeoutMs: number }
  | { kind: 'closed-before-start' }
  | { kind: 'status-served' }
  /** `outcome`: 'promoted', or the refusal's code. */
  | { kind: 'promote-served'; outcome: 'promoted' | Extract<PromoteOutcome, { kind: 'refused' }>['code'] }
  /** `outcome`: 'packed', or the refusal's code. */
  | { kind: 'pack-served'; outcome: 'packed' | Extract<PackOutcome, { kind: 'refused' }>['code'] }
  | { kind: 'drained' }
  | { kind: 'drain-timeout'; timeoutMs: number }
  | { kind: 'source-ended' }
  | { kind: 'effect-failed'; effect: 'catchUp' | 'follow' | 'drain'; error: unknown }
  /** Never from the machine: the edge's, when the machine itself failed (an action threw). */
  | { kind: 'actor-failed'; error: unknown };

export interface PrimarySessionCounters {
  /** Transactions written to this secondary. */
  sentTransactions: number;
  /** Times the session entered catchingUp (1 + overflows, once started). */
  catchUps: number;
  /** Times the follow buffer overflowed. */
  overflows: number;
}

export interface PrimarySessionContext {
  /** Peer description, for logs. */
  readonly peer: string;
  readonly supportedProtocols: readonly ProtocolSpec[];
  readonly handshakeTimeoutMs: number;
  readonly drainTimeoutMs: number;
  /** Name from the first frame, even when unsupported (for the refusal). */
  protocolName: string | null;
  /** The protocol kind once accepted. */
  protocol: ProtocolSpec | null;
  /** The secondary's position from the start frame, once accepted. */
  startTid: Tid | null;
  /** Last tid written to the socket in this session. */
  lastSentTid: Tid | null;
  /** Last tid the secondary acknowledged (native protocol), for lag. */
  ackedTid: Tid | null;
  closeReason: SessionCloseReason | null;
  counters: PrimarySessionCounters;
}

export interface PrimarySessionInput {
  peer: string;
  /** Protocols this primary speaks (the edge builds the list). Must not be empty. */
  supportedProtocols: readonly ProtocolSpec[];
  /** Each handshake frame must arrive within this. Default 30 000. */
  handshakeTimeoutMs?: number;
  /** Bound on draining at close. Default 30 000. */
  drainTimeoutMs?: number;
}

/** What the machine's final state outputs (also readable from context). */
export interface PrimarySessionOutput {
  closeReason: SessionCloseReason | null;
  lastSentTid: Tid | null;
  ackedTid: Tid | null;
  counters: PrimarySessionCounters;
}

// ---------------------------------------------------------------- effects

/** Where streaming actors report progress: the session actor itself. */
export interface SessionProgressSink {
  send(event: SentEvent | OverflowEvent): void;
}

/**
 * Input of catchUp, follow and drain. Stream transactions with tid >
 * `afterTid` in order, report them with `SENT {tid, count}` to `session`
 * (see {@link SentEvent} for when), and check `signal.aborted` before every
 * write: once aborted, write nothing more (the next streaming actor starts
 * from the last SENT tid).
 */
export interface StreamInput {
  protocol: ProtocolSpec;
  afterTid: Tid;
  session: SessionProgressSink;
}

/** Output of catchUp and drain: the tid of the last transaction written, or null if none. */
export interface StreamOutput {
  lastTid: Tid | null;
}

/** Params of sendWelcome. */
export interface WelcomeParams {
  protocol: ProtocolSpec;
  startTid: Tid;
}

/** Params of sendRefusal. */
export interface RefusalParams extends Refusal {
  /** The accepted protocol, or null when the name itself was refused. */
  protocol: ProtocolSpec | null;
  protocolName: string | null;
}

/** Input of `promote`. */
export interface PromoteInput {
  force: boolean;
}

/**
 * Output of `promote` and params of `sendPromoteResult`: the node became a
 * primary (its new generation, the tid that generation starts after, the
 * downstream sessions it kept), or why not.
 */
export type PromoteOutcome =
  | { kind: 'promoted'; generation: number; startTid: Tid; sessionsKept: number }
  | { kind: 'refused'; code: 'already-primary' | 'refused' | 'not-promotable' | 'failed'; reason: string };

/** Input of `pack`. */
export interface PackInput {
  /** The pack time, in seconds since the epoch. */
  time: number;
  gc: boolean;
}

/**
 * Output of `pack` and params of `sendPackResult`: the pack's report (see
 * PackedMessage in src/wire/native.ts for its fields; the machine only
 * passes it on), or why it was refused or failed.
 */
export type PackOutcome =
  | { kind: 'packed'; report: PackSummary }
  | { kind: 'refused'; code: 'refused' | 'not-packable' | 'gc-refused' | 'failed'; reason: string };

/** What a requested pack did, as its answer carries it. */
export interface PackSummary {
  packed: boolean;
  packTid: Tid;
  sizeBefore: number;
  sizeAfter: number;
  tailTransactions: number;
  blobFiles: 'none' | 'deleted' | 'kept';
  removedBlobFiles: number;
  blobFilesNotRemoved: number;
  blobRemovalError: string | null;
}

/** Params of closeStream. */
export interface CloseStreamParams {
  reason: SessionCloseReason;
}

// ---------------------------------------------------------------- pure helpers

const DEFAULT_HANDSHAKE_TIMEOUT_MS = 30_000;
const DEFAULT_DRAIN_TIMEOUT_MS = 30_000;

/**
 * Judge a start frame: the refusal to send, or null to accept. Order: form,
 * then the edge's history/blob verdict, then position — so an old primary
 * that comes back ahead in tids is told `diverged` (stop) rather than
 * `tid-too-high` (retry forever); a secondary merely ahead of an upstream
 * that lags gets no history verdict, and `tid-too-high` (retry).
 */
export function judgeStart(start: SessionStartEvent): Refusal | null {
  if (!isWellFormedTid(start.startTid)) {
    return { code: 'bad-tid', reason: `start tid has ${start.startTid.length} bytes, expected ${TID_LENGTH}` };
  }
  if (start.edgeRefusal !== undefined) {
    return start.edgeRefusal;
  }
  if (compareTids(start.startTid, start.primaryLastTid) > 0) {
    return {
      code: 'tid-too-high',
      reason: `start tid ${tidHex(start.startTid)} is newer than the primary's last tid ${tidHex(start.primaryLastTid)}`,
    };
  }
  return null;
}

/** The tid after which the next transaction is due. Only valid once started. */
export function streamPosition(context: PrimarySessionContext): Tid {
  const position = context.lastSentTid ?? context.startTid;
  if (position === null) throw new Error('bug: primarySession streaming before a start tid was accepted');
  return position;
}

/**
 * An ack may name any tid from the last one acknowledged (`acked`) up to the
 * stream's position (the last tid sent, else the start tid). The first may
 * name a tid before the start: the secondary holds everything up to its
 * start already, so such an ack says nothing new, and is kept as it is.
 */
export function isAckInRange(position: Tid | null, acked: Tid | null, tid: Tid): boolean {
  if (position === null || !isWellFormedTid(tid)) return false;
  if (compareTids(tid, position) > 0) return false;
  return acked === null || compareTids(tid, acked) >= 0;
}

/** The answer to an admin request whose actor rejected: refused, code `failed`, with the error's message. */
function failedOutcome(error: unknown): { kind: 'refused'; code: 'failed'; reason: string } {
  return { kind: 'refused', code: 'failed', reason: error instanceof Error ? error.message : String(error) };
}

function streamInput(context: PrimarySessionContext, session: SessionProgressSink): StreamInput {
  if (context.protocol === null) throw new Error('bug: primarySession streaming without a protocol');
  return { protocol: context.protocol, afterTid: streamPosition(context), session };
}

function createContext(input: PrimarySessionInput): PrimarySessionContext {
  if (input.supportedProtocols.length === 0) throw new Error('primarySession: supportedProtocols is empty');
  return {
    peer: input.peer,
    supportedProtocols: input.supportedProtocols,
    handshakeTimeoutMs: input.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS,
    drainTimeoutMs: input.drainTimeoutMs ?? DEFAULT_DRAIN_TIMEOUT_MS,
    protocolName: null,
    protocol: null,
    startTid: null,
    lastSentTid: null,
    ackedTid: null,
    closeReason: null,
    counters: { sentTransactions: 0, catchUps: 0, overflows: 0 },
  };
}

// ---------------------------------------------------------------- machine

/**
 * The primary's per-secondary session.
 *
 * The edge must provide (with `.provide()`):
 * - actors `catchUp`, `follow`, `drain`: promise actors taking {@link StreamInput}.
 *   catchUp resolves {@link StreamOutput} once it reached the log's end as
 *   it was when catchUp started (commits keep coming: chasing the end would
 *   never finish); follow first reads from the log what was committed after
 *   `afterTid` before it subscribed, then forwards commits through a bounded
 *   buffer, sends `OVERFLOW` when the buffer overflows (meanwhile too), and
 *   resolves only when the commit stream completes;
 *   drain writes everything committed up to now and resolves {@link StreamOutput}.
 *   All reject on failure (log read error …); all honour `signal`.
 * - action `sendWelcome` ({@link WelcomeParams}): write the WELCOME frame.
 *   Requested only for protocols with `hasVerdict`.
 * - action `sendRefusal` ({@link RefusalParams}): write a REFUSED frame when
 *   the peer can read one (protocol?.hasVerdict, or an unknown name of the
 *   native family); otherwise write nothing. `closeStream` follows at once.
 * - action `sendStatus` (no params): write one status message describing the
 *   node; requested on STATUS_REQUEST (native protocols only), `closeStream`
 *   ({ kind: 'status-served' }) follows at once.
 * - actor `promote` (promise, {@link PromoteInput} → {@link PromoteOutcome}):
 *   on PROMOTE_REQUEST (native protocols only), promote the node this session
 *   belongs to, or say why not. Then action `sendPromoteResult`
 *   ({@link PromoteOutcome}) writes the answer and `closeStream`
 *   ({ kind: 'promote-served' }) follows; a rejected promise is answered as
 *   refused with code `failed`.
 * - actor `pack` (promise, {@link PackInput} → {@link PackOutcome}): on
 *   PACK_REQUEST (native protocols only), pack the node's own file (the
 *   edge sends progress meanwhile). Then action `sendPackResult`
 *   ({@link PackOutcome}) answers and `closeStream` ({ kind: 'pack-served' })
 *   follows; a rejected promise is answered as refused with code `failed`.
 *   A CLOSE meanwhile waits for the answer: the node's close stops its
 *   packs first, so the pack ends soon.
 * - action `closeStream` ({@link CloseStreamParams}): entry of `closed`; end()
 *   the stream (flushing a refusal) or destroy() it on a transport error, and log.
 *
 * Events from the edge: PROTOCOL, START, STATUS_REQUEST, PROMOTE_REQUEST or PACK_REQUEST, ACK, KEEPALIVE, CLOSE, PEER_CLOSED,
 * TRANSPORT_ERROR, PROTOCOL_ERROR. From the streaming actors: SENT, OVERFLOW.
 *
 * @example
 * const session = createActor(primarySessionMachine.provide({ actors, actions }), {
 *   input: { peer: stream.peer, supportedProtocols },
 *   clock,
 * }).start();
 */
export const primarySessionMachine = setup({
  types: {
    context: {} as PrimarySessionContext,
    events: {} as PrimarySessionEvent,
    input: {} as PrimarySessionInput,
    output: {} as PrimarySessionOutput,
  },
  actors: {
    catchUp: fromPromise<StreamOutput, StreamInput>(() => notProvided(MACHINE, 'catchUp')),
    follow: fromPromise<void, StreamInput>(() => notProvided(MACHINE, 'follow')),
    drain: fromPromise<StreamOutput, StreamInput>(() => notProvided(MACHINE, 'drain')),
    promote: fromPromise<PromoteOutcome, PromoteInput>(() => notProvided(MACHINE, 'promote')),
    pack: fromPromise<PackOutcome, PackInput>(() => notProvided(MACHINE, 'pack')),
  },
  actions: {
    sendWelcome: (_args, _params: WelcomeParams) => notProvided(MACHINE, 'sendWelcome'),
    sendRefusal: (_args, _params: RefusalParams) => notProvided(MACHINE, 'sendRefusal'),
    sendStatus: () => notProvided(MACHINE, 'sendStatus'),
    sendPromoteResult: (_args, _params: PromoteOutcome) => notProvided(MACHINE, 'sendPromoteResult'),
    sendPackResult: (_args, _params: PackOutcome) => notProvided(MACHINE, 'sendPackResult'),
    closeStream: (_args, _params: CloseStreamParams) => notProvided(MACHINE, 'closeStream'),
    recordSent: assign(({ context, event }) => {
      assertEvent(event, 'SENT');
      assertTidAfter('sent', context.lastSentTid ?? context.startTid, event.tid);
      return {
        lastSentTid: event.tid,
        counters: { ...context.counters, sentTransactions: context.counters.sentTransactions + (event.count ?? 1) },
      };
    }),
    close: assign((_args, params: { reason: SessionCloseReason }) => ({ closeReason: params.reason })),
  },
  guards: {
    protocolSupported: ({ context, event }) => {
      assertEvent(event, 'PROTOCOL');
      return findProtocol(context.supportedProtocols, event.name) !== undefined;
    },
    startRefused: ({ event }) => {
      assertEvent(event, 'START');
      return judgeStart(event) !== null;
    },
    nativeOnly: ({ context }) => context.protocol?.kind === 'native',
    ackInvalid: ({ context, event }) => {
      assertEvent(event, 'ACK');
      return !isAckInRange(context.lastSentTid ?? context.startTid, context.ackedTid, event.tid);
    },
  },
  delays: {
    handshakeTimeout: ({ context }) => context.handshakeTimeoutMs,
    drainTimeout: ({ context }) => context.drainTimeoutMs,
  },
}).createMachine({
  id: MACHINE,
  context: ({ input }) => createContext(input),
  initial: 'awaitingProtocol',
  output: ({ context }) => ({
    closeReason: context.closeReason,
    lastSentTid: context.lastSentTid,
    ackedTid: context.ackedTid,
    counters: context.counters,
  }),
  on: {
    KEEPALIVE: {},
    PEER_CLOSED: { target: '.closed', actions: { type: 'close', params: { reason: { kind: 'peer-closed' } } } },
    TRANSPORT_ERROR: {
      target: '.closed',
      actions: { type: 'close', params: ({ event }) => ({ reason: { kind: 'transport-error', error: event.error } }) },
    },
    PROTOCOL_ERROR: {
      target: '.closed',
      actions: { type: 'close', params: ({ event }) => ({ reason: { kind: 'protocol-error', reason: event.reason } }) },
    },
    ACK: [
      {
        guard: 'ackInvalid',
        target: '.closed',
        actions: {
          type: 'close',
          params: ({ context, event }) => ({
            reason: {
              kind: 'protocol-error',
              reason: `ack of tid ${tidHex(event.tid)} outside (${tidHex(context.ackedTid)}, ${tidHex(context.lastSentTid ?? context.startTid)}]`,
            },
          }),
        },
      },
      { actions: assign({ ackedTid: ({ event }) => event.tid }) },
    ],
  },
  states: {
    awaitingProtocol: {
      after: {
        handshakeTimeout: {
          target: 'closed',
          actions: { type: 'close', params: ({ context }) => ({ reason: { kind: 'handshake-timeout', timeoutMs: context.handshakeTimeoutMs } }) },
        },
      },
      on: {
        PROTOCOL: [
          {
            guard: 'protocolSupported',
            target: 'awaitingStart',
            actions: assign({
              protocolName: ({ event }) => event.name,
              protocol: ({ context, event }) => findProtocol(context.supportedProtocols, event.name) ?? null,
            }),
          },
          {
            target: 'closed',
            actions: [
              assign({ protocolName: ({ event }) => event.name }),
              {
                type: 'close',
                params: ({ context, event }) => ({
                  reason: {
                    kind: 'refused',
                    code: 'unsupported-version',
                    // The names it does speak: a zrs2.0 secondary learns a node that stores blobs speaks zrs2.1 only.
                    reason: `unsupported protocol ${JSON.stringify(event.name)} (this node speaks ${context.supportedProtocols.map((p) => p.name).join(', ')})`,
                  },
                }),
              },
            ],
          },
        ],
        CLOSE: { target: 'closed', actions: { type: 'close', params: { reason: { kind: 'closed-before-start' } } } },
      },
    },
    awaitingStart: {
      after: {
        handshakeTimeout: {
          target: 'closed',
          actions: { type: 'close', params: ({ context }) => ({ reason: { kind: 'handshake-timeout', timeoutMs: context.handshakeTimeoutMs } }) },
        },
      },
      on: {
        START: [
          {
            guard: 'startRefused',
            target: 'closed',
            actions: {
              type: 'close',
              params: ({ event }) => {
                const refusal = judgeStart(event);
                if (refusal === null) throw new Error('bug: startRefused guard and judgeStart disagree');
                return { reason: { kind: 'refused', ...refusal } };
              },
            },
          },
          {
            target: 'catchingUp',
            actions: [
              assign({ startTid: ({ event }) => event.startTid }),
              enqueueActions(({ context, enqueue }) => {
                if (context.protocol?.hasVerdict && context.startTid !== null) {
                  enqueue({ type: 'sendWelcome', params: { protocol: context.protocol, startTid: context.startTid } });
                }
              }),
            ],
          },
        ],
        STATUS_REQUEST: [
          { guard: 'nativeOnly', target: 'closed', actions: ['sendStatus', { type: 'close', params: { reason: { kind: 'status-served' } } }] },
          { target: 'closed', actions: { type: 'close', params: { reason: { kind: 'protocol-error', reason: 'status request outside the native protocol' } } } },
        ],
        PROMOTE_REQUEST: [
          { guard: 'nativeOnly', target: 'promoting' },
          { target: 'closed', actions: { type: 'close', params: { reason: { kind: 'protocol-error', reason: 'promote request outside the native protocol' } } } },
        ],
        PACK_REQUEST: [
          { guard: 'nativeOnly', target: 'packing' },
          { target: 'closed', actions: { type: 'close', params: { reason: { kind: 'protocol-error', reason: 'pack request outside the native protocol' } } } },
        ],
        CLOSE: { target: 'closed', actions: { type: 'close', params: { reason: { kind: 'closed-before-start' } } } },
      },
    },
    promoting: {
      invoke: {
        id: 'promote',
        src: 'promote',
        input: ({ event }) => ({ force: event.type === 'PROMOTE_REQUEST' && event.force }),
        onDone: {
          target: 'closed',
          actions: [
            { type: 'sendPromoteResult', params: ({ event }) => event.output },
            { type: 'close', params: ({ event }) => ({ reason: { kind: 'promote-served', outcome: event.output.kind === 'promoted' ? 'promoted' : event.output.code } }) },
          ],
        },
        onError: {
          target: 'closed',
          actions: [
            { type: 'sendPromoteResult', params: ({ event }) => failedOutcome(event.error) },
            { type: 'close', params: { reason: { kind: 'promote-served', outcome: 'failed' } } },
          ],
        },
      },
      on: {
        // A promotion once started is finished; the session closes after answering.
        CLOSE: {},
      },
    },
    packing: {
      invoke: {
        id: 'pack',
        src: 'pack',
        input: ({ event }) => {
          assertEvent(event, 'PACK_REQUEST');
          return { time: event.time, gc: event.gc };
        },
        onDone: {
          target: 'closed',
          actions: [
            { type: 'sendPackResult', params: ({ event }) => event.output },
            { type: 'close', params: ({ event }) => ({ reason: { kind: 'pack-served', outcome: event.output.kind === 'packed' ? 'packed' : event.output.code } }) },
          ],
        },
        onError: {
          target: 'closed',
          actions: [
            { type: 'sendPackResult', params: ({ event }) => failedOutcome(event.error) },
            { type: 'close', params: { reason: { kind: 'pack-served', outcome: 'failed' } } },
          ],
        },
      },
      on: {
        // Answered once the pack ends: the node's close stops its packs before it closes its sessions.
        CLOSE: {},
      },
    },
    catchingUp: {
      entry: assign({ counters: ({ context }) => ({ ...context.counters, catchUps: context.counters.catchUps + 1 }) }),
      invoke: {
        id: 'catchUp',
        src: 'catchUp',
        input: ({ context, self }) => streamInput(context, self),
        onDone: {
          target: 'live',
          // An assertion inside assign so pure transition() checks it too.
          actions: assign(({ context, event }) => {
            const { lastTid } = event.output;
            if (lastTid !== null && (context.lastSentTid === null || compareTids(lastTid, context.lastSentTid) !== 0)) {
              throw new Error(`bug: catchUp reported last tid ${tidHex(lastTid)} but SENT ${tidHex(context.lastSentTid)}`);
            }
            return {};
          }),
        },
        onError: {
          target: 'closed',
          actions: { type: 'close', params: ({ event }) => ({ reason: { kind: 'effect-failed', effect: 'catchUp', error: event.error } }) },
        },
      },
      on: {
        SENT: { actions: 'recordSent' },
        CLOSE: 'draining',
      },
    },
    live: {
      invoke: {
        id: 'follow',
        src: 'follow',
        input: ({ context, self }) => streamInput(context, self),
        onDone: { target: 'closed', actions: { type: 'close', params: { reason: { kind: 'source-ended' } } } },
        onError: {
          target: 'closed',
          actions: { type: 'close', params: ({ event }) => ({ reason: { kind: 'effect-failed', effect: 'follow', error: event.error } }) },
        },
      },
      on: {
        SENT: { actions: 'recordSent' },
        OVERFLOW: {
          target: 'catchingUp',
          actions: assign({ counters: ({ context }) => ({ ...context.counters, overflows: context.counters.overflows + 1 }) }),
        },
        CLOSE: 'draining',
      },
    },
    draining: {
      invoke: {
        id: 'drain',
        src: 'drain',
        input: ({ context, self }) => streamInput(context, self),
        onDone: { target: 'closed', actions: { type: 'close', params: { reason: { kind: 'drained' } } } },
        onError: {
          target: 'closed',
          actions: { type: 'close', params: ({ event }) => ({ reason: { kind: 'effect-failed', effect: 'drain', error: event.error } }) },
        },
      },
      after: {
        drainTimeout: {
          target: 'closed',
          actions: { type: 'close', params: ({ context }) => ({ reason: { kind: 'drain-timeout', timeoutMs: context.drainTimeoutMs } }) },
        },
      },
      on: {
        SENT: { actions: 'recordSent' },
        CLOSE: {},
      },
    },
    closed: {
      type: 'final',
      entry: enqueueActions(({ context, enqueue }) => {
        const reason = context.closeReason;
        if (reason === null) throw new Error('bug: primarySession closed without a reason');
        if (reason.kind === 'refused') {
          const { kind: _kind, ...refusal } = reason;
          enqueue({ type: 'sendRefusal', params: { ...refusal, protocol: context.protocol, protocolName: context.protocolName } });
        }
        enqueue({ type: 'closeStream', params: { reason } });
      }),
    },
  },
});

export type PrimarySessionMachine = typeof primarySessionMachine;
