// Helpers for walking machines with xstate's pure transition(): read the
// requested effects out of the returned actions and build the events the
// runtime would deliver (delays firing, invoked actors finishing).

import type { AnyEventObject } from 'xstate';

interface ActionLike {
  type: string;
  params?: unknown;
}

interface RaiseParams {
  event: AnyEventObject;
  delay?: number;
}

interface SpawnParams {
  id: string;
  src: string;
  input?: unknown;
}

/** Named (non-internal) actions requested, in order. */
export function named(actions: readonly ActionLike[]): string[] {
  return actions.map((a) => a.type).filter((t) => !t.startsWith('xstate.'));
}

/** Params of the single requested named action `type`. */
export function paramsOf<T = Record<string, unknown>>(actions: readonly ActionLike[], type: string): T {
  const found = actions.filter((a) => a.type === type);
  if (found.length !== 1) throw new Error(`expected one '${type}' action, got ${found.length}`);
  return (found[0] as ActionLike).params as T;
}

/** Sources of the actors invoked, in order. */
export function invoked(actions: readonly ActionLike[]): string[] {
  return actions.filter((a) => a.type === 'xstate.spawnChild').map((a) => (a.params as SpawnParams).src);
}

/** Input given to the invoked actor `src`. */
export function inputOf<T = Record<string, unknown>>(actions: readonly ActionLike[], src: string): T {
  const spawn = actions.find((a) => a.type === 'xstate.spawnChild' && (a.params as SpawnParams).src === src);
  if (!spawn) throw new Error(`actor '${src}' was not invoked`);
  return (spawn.params as SpawnParams).input as T;
}

/** Ids of the invoked actors stopped, in order. */
export function stopped(actions: readonly ActionLike[]): string[] {
  return actions.filter((a) => a.type === 'xstate.stopChild').map((a) => (a.params as { id: string }).id);
}

/** Delayed events scheduled (`after`), as {name, delayMs}; name is the delay's name. */
export function scheduled(actions: readonly ActionLike[]): { name: string; delayMs: number }[] {
  return actions
    .filter((a) => a.type === 'xstate.raise' && (a.params as RaiseParams).delay !== undefined)
    .map((a) => {
      const p = a.params as RaiseParams;
      return { name: delayName(p.event.type), delayMs: p.delay as number };
    });
}

/** The event xstate delivers when the `after` delay `name` requested in `actions` fires. */
export function delayFired<E>(actions: readonly ActionLike[], name: string): E {
  const raise = actions.find(
    (a) => a.type === 'xstate.raise' && delayName((a.params as RaiseParams).event.type) === name,
  );
  if (!raise) throw new Error(`delay '${name}' was not scheduled`);
  return (raise.params as RaiseParams).event as E;
}

function delayName(eventType: string): string {
  // xstate.after.<delay>.<state id>
  return eventType.split('.')[2] ?? '';
}

/** The event an invoked promise actor with `id` sends when it resolves. */
export function doneEvent<E>(id: string, output?: unknown): E {
  return { type: `xstate.done.actor.${id}`, output } as E;
}

/** The event an invoked actor with `id` sends when it fails. */
export function errorEvent<E>(id: string, error: unknown): E {
  return { type: `xstate.error.actor.${id}`, error } as E;
}

/** An 8-byte tid whose last byte is n (n < 256). */
export function tid(n: number): Uint8Array {
  const t = new Uint8Array(8);
  t[7] = n;
  return t;
}

/** Let settled promises deliver their results (promise actors) — no timers involved. */
export async function settle(rounds = 20): Promise<void> {
  for (let i = 0; i < rounds; i++) await Promise.resolve();
}
