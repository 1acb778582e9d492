// Timeouts on what a secondary reads from its upstream. They live in the
// edge, not in the connection machine: a machine transition per chunk read
// would cost too much at thousands of chunks a second.
//
// - Frame stall: while a frame is unfinished, the stream must gain
//   STALL_MIN_BYTES in every `stallMs` (a window sliding in steps of an
//   eighth of it). A corrupted length would otherwise wait forever for bytes
//   that never come, or that only heartbeats trickle in; a burst right after
//   the corrupted length does not buy it a second window.
// - Heartbeat silence: once the welcome announced heartbeats, nothing at all
//   may arrive for at most the heartbeat timeout.
// Each check looks once more, a moment later, before it gives up: a timer
// due after this process's loop stalled runs before the socket's waiting
// bytes are read.
//
// Time the secondary spends paused by its own backpressure counts for
// neither: a timer that fires while reading is paused waits again, and a
// resume starts both over. Timers check lazily when they fire, instead of being re-armed on
// every chunk.

import { ZrsError } from '../errors.js';
import type { Clock } from '../ports/clock.js';

/** Bytes the stream must gain per stall timeout while a frame is unfinished. */
export const STALL_MIN_BYTES = 64 * 1024;

/** The stall window slides in steps of this share of the timeout. */
const STALL_STEPS = 8;

/** See SecondaryOptions.heartbeatTimeoutMs: the shortest default. */
const MIN_DEFAULT_HEARTBEAT_TIMEOUT_MS = 5000;

/** How long silence from a primary heartbeating every `intervalMs` may last (SecondaryOptions.heartbeatTimeoutMs); null: forever. */
export function heartbeatTimeoutMs(option: number | undefined, intervalMs: number): number | null {
  if (option === 0 || !(intervalMs > 0)) return null;
  return Math.max(option ?? Math.max(5 * intervalMs, MIN_DEFAULT_HEARTBEAT_TIMEOUT_MS), 2 * intervalMs);
}

export interface StreamWatchOptions {
  /** SecondaryOptions.frameStallTimeoutMs. */
  stallMs: number;
  /** SecondaryOptions.heartbeatTimeoutMs. */
  heartbeatTimeoutMs: number | undefined;
  /** Reading is paused by our own backpressure. */
  paused(): boolean;
  /** The stream stands inside a frame (its header read, its body not whole yet). */
  insideFrame(): boolean;
  /** Bytes of an unfinished frame held by the decoder. */
  bufferedBytes(): number;
  /** A timeout ended the connection: called once, then the watch is stopped. */
  expired(error: ZrsError): void;
}

export class StreamWatch {
  private bytesReceived = 0;
  private lastHeardMs = 0;
  private stallTimer: unknown = null;
  /** Inside a frame: bytes received by each time, at most one mark per step (oldest first). */
  private stallMarks: { atMs: number; bytes: number }[] = [];
  private silenceTimer: unknown = null;
  private heartbeatIntervalMs = 0;
  private silenceWatched = false;
  private stopped = false;

  constructor(
    private readonly clock: Clock,
    private readonly o: StreamWatchOptions,
  ) {}

  /** The welcome announced heartbeats every `intervalMs` (0: none). */
  heartbeatsEvery(intervalMs: number): void {
    this.heartbeatIntervalMs = intervalMs;
  }

  /**
   * Monotonic time where the clock has it (the real one: a wall clock stepped
   * by NTP or a resumed VM would fake or hide silence), else its time
   * (virtual, which never steps).
   */
  private nowMs(): number {
    return this.clock.load?.elapsedMs() ?? this.clock.now();
  }

  /** A chunk of `bytes` was read and decoded. */
  received(bytes: number): void {
    if (this.stopped) return;
    this.lastHeardMs = this.nowMs();
    this.bytesReceived += bytes;
    if (!this.silenceWatched && this.heartbeatIntervalMs > 0) {
      this.silenceWatched = true;
      const limitMs = heartbeatTimeoutMs(this.o.heartbeatTimeoutMs, this.heartbeatIntervalMs);
      if (limitMs !== null) this.watchSilence(limitMs, limitMs);
    }
    if (!this.o.insideFrame()) this.clearStall();
    else if (this.stallTimer === null) this.armStall();
    else this.markStall();
  }

  private markStall(): void {
    const last = this.stallMarks.at(-1);
    if (last === undefined || this.lastHeardMs - last.atMs >= this.o.stallMs / STALL_STEPS) this.stallMarks.push({ atMs: this.lastHeardMs, bytes: this.bytesReceived });
  }

  /**
   * Reading resumed after our own backpressure paused it. Both timeouts
   * start over from now: a timer firing just after the resume would
   * otherwise count the paused time as silence, or as a stall.
   */
  resumed(): void {
    if (this.stopped) return;
    this.lastHeardMs = this.nowMs();
    if (this.stallTimer !== null) {
      this.clearStall();
      this.armStall();
    }
  }

  /** Cancel both timers; nothing fires after this. */
  stop(): void {
    this.stopped = true;
    this.clearStall();
    if (this.silenceTimer !== null) this.clock.clearTimeout(this.silenceTimer);
    this.silenceTimer = null;
  }

  private clearStall(): void {
    if (this.stallTimer !== null) this.clock.clearTimeout(this.stallTimer);
    this.stallTimer = null;
    this.stallMarks = [];
  }

  /** Start a stall window now: the first check a whole timeout later. */
  private armStall(): void {
    this.stallMarks = [{ atMs: this.nowMs(), bytes: this.bytesReceived }];
    this.scheduleStallCheck(this.o.stallMs);
  }

  /** `looked`: the stall was seen once already, and the socket was read since (as for silence, below). */
  private scheduleStallCheck(afterMs: number, looked = false): void {
    this.stallTimer = this.clock.setTimeout(() => {
      this.stallTimer = null;
      if (this.stopped || !this.o.insideFrame()) return;
      if (this.o.paused()) return this.armStall(); // our own backpressure: a new window
      // What arrived in the last timeout: nothing when the last byte is older; else since the newest mark at least that old.
      const from = this.nowMs() - this.o.stallMs;
      while (this.stallMarks.length > 1 && this.stallMarks[1]!.atMs <= from) this.stallMarks.shift();
      const gained = this.lastHeardMs <= from ? 0 : this.bytesReceived - this.stallMarks[0]!.bytes;
      if (gained >= STALL_MIN_BYTES) return this.scheduleStallCheck(this.o.stallMs / STALL_STEPS); // progress: look again a step later
      if (!looked) return this.scheduleStallCheck(1, true);
      const what = gained === 0 ? 'no byte' : `${gained} bytes (under ${STALL_MIN_BYTES})`;
      this.expire(new ZrsError(`stream stalled: ${what} in ${this.o.stallMs} ms inside a frame (${this.o.bufferedBytes()} bytes buffered)`));
    }, afterMs);
  }

  /** `looked`: the silence was seen once already, and the socket was read since. */
  private watchSilence(limitMs: number, afterMs: number, looked = false): void {
    this.silenceTimer = this.clock.setTimeout(() => {
      this.silenceTimer = null;
      if (this.stopped) return;
      const now = this.nowMs();
      if (this.o.paused()) this.lastHeardMs = now; // our own backpressure, not silence
      const quietMs = now - this.lastHeardMs;
      if (quietMs < limitMs) return this.watchSilence(limitMs, limitMs - quietMs);
      if (!looked) return this.watchSilence(limitMs, 1, true);
      this.expire(new ZrsError(`no frame from the primary for ${Math.round(quietMs)} ms though it heartbeats every ${this.heartbeatIntervalMs} ms: the link is taken for dead`));
    }, afterMs);
  }

  private expire(error: ZrsError): void {
    this.stop();
    this.o.expired(error);
  }
}
