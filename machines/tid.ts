// Transaction ids as the machines see them: 8 raw bytes, big-endian, ordered
// bytewise. Pure helpers only; Buffer is a Uint8Array, so the edges pass
// Buffers straight in.

/** A ZODB transaction id: exactly TID_LENGTH bytes (a Buffer is fine). */
export type Tid = Uint8Array;

/** Length of every well-formed tid. */
export const TID_LENGTH = 8;

/** True when `tid` has the length of a tid. */
export function isWellFormedTid(tid: Uint8Array): boolean {
  return tid.length === TID_LENGTH;
}

/** Bytewise comparison: negative when a < b, 0 when equal, positive when a > b. */
export function compareTids(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const d = (a[i] as number) - (b[i] as number);
    if (d !== 0) return d;
  }
  return a.length - b.length;
}

/** Lowercase hex, for error messages and logs. */
export function tidHex(tid: Uint8Array | null | undefined): string {
  if (!tid) return 'none';
  let s = '';
  for (const byte of tid) s += byte.toString(16).padStart(2, '0');
  return s;
}

/**
 * Assert that `next` comes strictly after `previous` (null = nothing yet).
 * A failure is a bug in the edge that feeds the machine, never an operating
 * error: it throws, and the actor stops with that error.
 */
export function assertTidAfter(what: string, previous: Tid | null, next: Tid): void {
  if (previous !== null && compareTids(next, previous) <= 0) {
    throw new Error(`bug: ${what} tid ${tidHex(next)} does not follow ${tidHex(previous)}`);
  }
}
