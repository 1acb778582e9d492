// The simulation properties by name, so a counterexample is replayed by the
// very property that found it: `npm run sim -- --property NAME --seed S
// --path P [--replay-path R]`. A property is a base (which cases fast-check
// generates) plus the deliberate bugs switched on (mutation checks); the
// same base without them is the control that must pass.

import fc from 'fast-check';
import type { ReplicationMutations } from '../src/replication/mutations.js';
import { InvariantViolationError, type ScheduledOp, type SimStats } from '../src/sim/index.js';
import { clusterProperty, lastFailure, lastRun, recordedRun, type RunRecord } from './model.js';

/** Which cases a property generates. */
type Base = 'default' | 'corruption' | 'corruption-native' | 'reset-storm';

interface PropertySpec {
  base: Base;
  mutations?: ReplicationMutations;
  /** Heartbeats on: every interval (virtual ms), and the secondaries' timeout. */
  heartbeats?: { intervalMs: number; timeoutMs: number };
  /** What the property (or its mutation) is about, for listings. */
  about: string;
}

const SPECS = {
  default: { base: 'default', about: 'every command kind, random cluster shape and protocol (the CI property)' },
  corruption: { base: 'corruption', about: 'commits of 40 KB records, flipped bytes and time' },
  'corruption-native': { base: 'corruption-native', about: 'the corruption cases over the native protocol only' },
  heartbeats: {
    base: 'default',
    heartbeats: { intervalMs: 200, timeoutMs: 1000 },
    about: 'the default property with heartbeats every 200 ms: partitions longer than 1 s make secondaries drop the link and reconnect',
  },
  'reset-storm': { base: 'reset-storm', about: 'large transactions over zrs2.1, with resets of p<->s1 at generated instants' },
  'mutation-checksum': { base: 'corruption', mutations: { skipChecksum: true }, about: 'the secondary does not verify the stream checksum' },
  'mutation-no-abort': { base: 'reset-storm', mutations: { noAbortOnDisconnect: true }, about: 'a half-received transaction is not aborted on disconnect' },
  'mutation-no-sync': { base: 'default', mutations: { skipSync: true }, about: 'the secondary reports transactions applied without syncing them' },
  'mutation-ack-early': { base: 'default', mutations: { ackBeforeSync: true }, about: 'the secondary acknowledges transactions once written, before their sync' },
  'mutation-early-commit': {
    base: 'corruption-native',
    mutations: { commitBeforeCommitMessage: true },
    about: 'the secondary commits once the records are in, before the commit message',
  },
} satisfies Record<string, PropertySpec>;

export type PropertyName = keyof typeof SPECS;

export const PROPERTY_NAMES = Object.keys(SPECS) as PropertyName[];

export function isPropertyName(name: string): name is PropertyName {
  return Object.hasOwn(SPECS, name);
}

/** A property's name with its deliberate bugs switched off: the control that must pass. */
export function controlOf(name: PropertyName): PropertyName {
  return SPECS[name].base;
}

export function describeProperty(name: PropertyName): string {
  return SPECS[name].about;
}

export interface NamedPropertyOptions {
  /** fast-check's replayPath for command lists (from a counterexample). */
  replayPath?: string;
}

/** The property called `name`. */
export function namedProperty(name: PropertyName, options: NamedPropertyOptions = {}): fc.IAsyncPropertyWithHooks<unknown[]> {
  const spec: PropertySpec = SPECS[name];
  const mutations = spec.mutations;
  const heartbeats = spec.heartbeats ? { heartbeatIntervalMs: spec.heartbeats.intervalMs, heartbeatTimeoutMs: spec.heartbeats.timeoutMs } : {};
  const property = (() => {
    switch (spec.base) {
      case 'default':
        return clusterProperty({ maxCommands: 25, replayPath: options.replayPath, cluster: { mutations, ...heartbeats } });
      case 'corruption':
        return clusterProperty({ kinds: ['commit', 'corrupt', 'advance'], recordBytes: [40_000], maxCommands: 12, replayPath: options.replayPath, cluster: { mutations } });
      case 'corruption-native':
        return clusterProperty({
          kinds: ['commit', 'corrupt', 'advance'],
          recordBytes: [40_000],
          maxCommands: 12,
          replayPath: options.replayPath,
          cluster: { protocol: 'native', mutations },
        });
      case 'reset-storm':
        return resetStormProperty(mutations);
    }
  })();
  return property as unknown as fc.IAsyncPropertyWithHooks<unknown[]>;
}

/**
 * Six commits of five 40 KB records and up to six resets of p<->s1 at
 * generated instants. zrs2.1 sends one frame per record, so a reset can land
 * inside a transaction: the secondary must abort it.
 */
function resetStormProperty(mutations: ReplicationMutations | undefined): fc.IAsyncPropertyWithHooks<[number, number[]]> {
  return fc.asyncProperty(fc.integer({ min: 0, max: 0x7fffffff }), fc.array(fc.integer({ min: 0, max: 300 }), { minLength: 1, maxLength: 6 }), (seed, resetsAtMs) => {
    const schedule: ScheduledOp[] = [
      ...Array.from({ length: 6 }, (_, i): ScheduledOp => ({ atMs: i * 50, op: { kind: 'commit', records: 5, bytes: 40_000 } })),
      ...resetsAtMs.map((atMs): ScheduledOp => ({ atMs, op: { kind: 'reset', a: 'p', b: 's1' } })),
    ];
    const about = { cluster: 's1<-p (zrs2.1)', commands: `resets at ${resetsAtMs.join(', ')} ms` };
    const options = { seed, secondaries: 1, protocol: 'zrs2.1' as const, maxChunkBytes: 4096, bufferLimitBytes: 16_384, mutations };
    return recordedRun(options, about, async (cluster) => {
      const result = await cluster.run({ schedule, livenessMs: 30_000 });
      if (!result.ok) throw new InvariantViolationError(result.violations, result.trace);
    });
  });
}

export interface Counterexample {
  property: PropertyName;
  seed: number;
  path: string;
  replayPath?: string;
}

/** The counterexample a failed fc.check reports, or null when it passed. */
export function counterexampleOf(property: PropertyName, details: fc.RunDetails<unknown[]>): Counterexample | null {
  if (!details.failed || details.counterexamplePath === null) return null;
  const replayPath = /replayPath="([^"]*)"/.exec(fc.stringify(details.counterexample))?.[1];
  return { property, seed: details.seed, path: details.counterexamplePath, ...(replayPath ? { replayPath } : {}) };
}

/** The command that replays a counterexample, with its full trace. */
export function replayCommand(c: Counterexample): string {
  return `npm run sim -- --property ${c.property} --seed ${c.seed} --path ${c.path}${c.replayPath ? ` --replay-path ${c.replayPath}` : ''}`;
}

export interface ReplayResult {
  failed: boolean;
  /** The failure (the violations), without the trace. */
  message: string;
  trace: string[];
  cluster: string;
  commands: string;
  seed: number;
  stats: SimStats | null;
}

/**
 * Run one case of a named property again: the counterexample at `path`
 * (exactly, with `replayPath` for shrunk command lists), or the first case
 * fast-check generates for `seed`. What `npm run sim` runs.
 */
export async function replay(request: { property: PropertyName; seed: number; path?: string; replayPath?: string }): Promise<ReplayResult> {
  const property = namedProperty(request.property, { replayPath: request.replayPath });
  const details = await fc.check(property, { seed: request.seed, path: request.path, numRuns: 1, endOnFailure: true });
  const message = String((details.errorInstance as Error | null)?.message ?? '').split('\n--- trace')[0]!;
  return { failed: details.failed, message, trace: [...lastRun.trace], cluster: lastRun.cluster, commands: lastRun.commands, seed: lastRun.seed, stats: lastRun.stats };
}

export interface CheckOptions {
  numRuns: number;
  seed?: number;
  /** Stop at the first failure (no shrinking). */
  endOnFailure?: boolean;
  interruptAfterTimeLimit?: number;
  /** A property stopped by its time limit fails (with its seed) instead of passing on the runs it made. */
  markInterruptAsFailure?: boolean;
}

/** fc.check a named property; a failure carries its counterexample and the trace of that run. */
export async function checkNamed(
  name: PropertyName,
  options: CheckOptions,
): Promise<{ details: fc.RunDetails<unknown[]>; counterexample: Counterexample | null; trace: string[] }> {
  lastFailure.run = null;
  const details = await fc.check(namedProperty(name), options);
  const counterexample = counterexampleOf(name, details);
  // (Read through a cast: the assignment above narrows it for the compiler, not for the awaited runs.)
  const failed = lastFailure.run as RunRecord | null;
  return { details, counterexample, trace: counterexample && failed ? [...failed.trace] : [] };
}

/** fc.assert for a named property, whose failure report ends with its replay command. */
export async function assertNamed(name: PropertyName, options: CheckOptions): Promise<void> {
  const { details, counterexample } = await checkNamed(name, options);
  if (!details.failed) return;
  const replay = counterexample ? `\nreplay: ${replayCommand(counterexample)}` : '';
  throw new Error(`${fc.defaultReportMessage(details)}${replay}`);
}
