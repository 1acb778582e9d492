// Placeholders for the named effects a machine declares. The I/O edge
// replaces every one with `.provide()`; a placeholder that still runs fails
// loudly with EffectNotProvidedError instead of hanging or doing nothing.

/** A named actor, action or guard was used without an implementation. */
export class EffectNotProvidedError extends Error {
  override name = 'EffectNotProvidedError';
  constructor(
    readonly machine: string,
    readonly effect: string,
  ) {
    super(`${machine}: effect '${effect}' was not provided; supply it with machine.provide({ … })`);
  }
}

/** Throw EffectNotProvidedError: the body of every placeholder. */
export function notProvided(machine: string, effect: string): never {
  throw new EffectNotProvidedError(machine, effect);
}
