// The machines' refusal codes and protocol lookup stay in step with the
// native codec's (src/wire/native.ts), which machines/ may not import.

import { describe, expect, expectTypeOf, it } from 'vitest';
import { findProtocol, type ProtocolSpec, type RefusalCode } from '../../machines/handshake.js';
import { REFUSE_CODES, type RefuseCode } from '../../src/wire/native.js';

describe('handshake types', () => {
  it('RefusalCode is the wire RefuseCode', () => {
    expectTypeOf<RefusalCode>().toEqualTypeOf<RefuseCode>();
    const all: readonly RefusalCode[] = REFUSE_CODES;
    expect(all.length).toBe(7);
  });

  it('finds a protocol by its exact name', () => {
    const zrs21: ProtocolSpec = { name: 'zrs2.1', kind: 'zrs2', hasVerdict: false, hasAcks: false };
    expect(findProtocol([zrs21], 'zrs2.1')).toBe(zrs21);
    expect(findProtocol([zrs21], 'zrs2.10')).toBeUndefined();
  });
});
