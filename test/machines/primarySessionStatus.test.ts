// The primarySession machine's status path, by pure transition(): a native
// STATUS_REQUEST in awaitingStart requests sendStatus then closes with
// 'status-served'; over zrs2 it is a protocol error; elsewhere it is ignored.

import { describe, expect, it } from 'vitest';
import { named, paramsOf, tid } from './helpers.js';
import { native, walk, zrs21 } from './adminSession.js';

describe('primarySession: status request', () => {
  it('native: sendStatus, then closed with status-served and nothing streamed', () => {
    const [s, actions] = walk({ type: 'PROTOCOL', name: native.name }, { type: 'STATUS_REQUEST' });
    expect(s.value).toBe('closed');
    expect(s.status).toBe('done');
    expect(named(actions)).toEqual(['sendStatus', 'closeStream']);
    expect(paramsOf(actions, 'closeStream')).toEqual({ reason: { kind: 'status-served' } });
    expect(s.context.startTid).toBeNull();
    expect(s.output).toMatchObject({ closeReason: { kind: 'status-served' }, lastSentTid: null, counters: { sentTransactions: 0, catchUps: 0 } });
  });

  it('zrs2: a protocol error, no status sent', () => {
    const [s, actions] = walk({ type: 'PROTOCOL', name: zrs21.name }, { type: 'STATUS_REQUEST' });
    expect(s.value).toBe('closed');
    expect(named(actions)).not.toContain('sendStatus');
    expect(s.context.closeReason).toEqual({ kind: 'protocol-error', reason: 'status request outside the native protocol' });
  });

  it('is ignored before the protocol name and once streaming', () => {
    const [s1, a1] = walk({ type: 'STATUS_REQUEST' });
    expect(s1.value).toBe('awaitingProtocol');
    expect(named(a1)).toEqual([]);
    const [s2, a2] = walk(
      { type: 'PROTOCOL', name: native.name },
      { type: 'START', startTid: tid(3), primaryLastTid: tid(3) },
      { type: 'STATUS_REQUEST' },
    );
    expect(s2.value).toBe('catchingUp');
    expect(named(a2)).toEqual([]);
  });
});
