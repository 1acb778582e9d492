// Which records are blob records: those whose class pickle is ZODB.blob.Blob
// itself, as ZODB's is_blob_record decides by unpickling it, whatever the
// protocol. Records as CPython pickles them (one pickler, class then state):
//
//   import pickle, sys, types, io, collections
//   sys.modules['ZODB'] = types.ModuleType('ZODB'); m = types.ModuleType('ZODB.blob'); sys.modules['ZODB.blob'] = m
//   def cls(name):
//       c = type(name, (), {}); c.__module__ = 'ZODB.blob'; c.__qualname__ = name; setattr(m, name, c); return c
//   Blob = cls('Blob'); Blobby = cls('Blobby')
//   def record(proto, meta, state=None):
//       f = io.BytesIO(); p = pickle.Pickler(f, proto); p.dump(meta); p.dump(state); return f.getvalue().hex()
//   record(proto, Blob); record(proto, (Blob, None)); record(proto, Blobby)
//   record(proto, collections.OrderedDict, {'b': (b'\0' * 7 + b'\1', Blob)})

import { describe, expect, it } from 'vitest';
import { isBlobRecord } from '../../src/storage/blobs.js';

const BLOBS: Array<[protocol: number, hex: string]> = [
  [0, '635a4f44422e626c6f620a426c6f620a70300a2e4e2e'],
  [1, '635a4f44422e626c6f620a426c6f620a71002e4e2e'],
  [2, '8002635a4f44422e626c6f620a426c6f620a71002e80024e2e'],
  [3, '8003635a4f44422e626c6f620a426c6f620a71002e80034e2e'],
  [4, '80049516000000000000008c095a4f44422e626c6f62948c04426c6f629493942e80044e2e'],
  [5, '80059516000000000000008c095a4f44422e626c6f62948c04426c6f629493942e80054e2e'],
];

const NOT_BLOBS: Array<[what: string, hex: string]> = [
  ['the class in a tuple, protocol 1', '28635a4f44422e626c6f620a426c6f620a71004e7471012e4e2e'],
  ['the class in a tuple, protocol 3', '8003635a4f44422e626c6f620a426c6f620a71004e8671012e80034e2e'],
  ['the class in a tuple, protocol 4', '80049519000000000000008c095a4f44422e626c6f62948c04426c6f629493944e86942e80044e2e'],
  ['another class of ZODB.blob, protocol 1', '635a4f44422e626c6f620a426c6f6262790a71002e4e2e'],
  ['another class of ZODB.blob, protocol 3', '8003635a4f44422e626c6f620a426c6f6262790a71002e80034e2e'],
  ['another class of ZODB.blob, protocol 4', '80049518000000000000008c095a4f44422e626c6f62948c06426c6f6262799493942e80044e2e'],
  [
    'a reference to a blob, protocol 3',
    '800363636f6c6c656374696f6e730a4f726465726564446963740a71002e80037d71015801000000627102430800000000000000017103635a4f44422e626c6f620a426c6f620a7104867105732e',
  ],
  [
    'a reference to a blob, protocol 4',
    '8004951f000000000000008c0b636f6c6c656374696f6e73948c0b4f726465726564446963749493942e8004952a000000000000007d948c01629443080000000000000001948c095a4f44422e626c6f62948c04426c6f629493948694732e',
  ],
];

describe('isBlobRecord', () => {
  it.each(BLOBS)('knows a blob record of protocol %i', (_protocol, hex) => {
    expect(isBlobRecord(Buffer.from(hex, 'hex'))).toBe(true);
  });

  it.each(NOT_BLOBS)('knows a record is not a blob record: %s', (_what, hex) => {
    expect(isBlobRecord(Buffer.from(hex, 'hex'))).toBe(false);
  });

  it('is not misled by a record cut short of its class pickle, or by nothing at all', () => {
    for (const [, hex] of BLOBS) {
      const record = Buffer.from(hex, 'hex');
      const stop = record.indexOf(0x2e, record.indexOf('Blob', 0, 'latin1') + 4);
      for (let cut = 0; cut <= stop; cut++) expect(isBlobRecord(record.subarray(0, cut)), `${hex} cut at ${cut}`).toBe(false);
    }
    expect(isBlobRecord(null)).toBe(false);
    expect(isBlobRecord(Buffer.alloc(0))).toBe(false);
  });
});
