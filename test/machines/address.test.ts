// machines/ carries its own copy of the address type; keep it identical to
// the transport port's, in both directions.

import { describe, expect, expectTypeOf, it } from 'vitest';
import { formatAddress, type MachineAddress } from '../../machines/address.js';
import type { ReplicationAddress } from '../../src/ports/transport.js';

describe('MachineAddress', () => {
  it('is the same type as ReplicationAddress', () => {
    expectTypeOf<MachineAddress>().toEqualTypeOf<ReplicationAddress>();
  });

  it('formats for logs', () => {
    expect(formatAddress({ kind: 'tcp', host: 'db1', port: 5000 })).toBe('db1:5000');
    expect(formatAddress({ kind: 'unix', path: '/run/zrs.sock' })).toBe('/run/zrs.sock');
  });
});
