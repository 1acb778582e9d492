# Makes referencePickles.json, the cases of test/storage/references.test.ts:
#
#   python3 test/helpers/referencePickles.py > test/helpers/referencePickles.json
#
# Each case is a record shaped as ZODB writes one (a class pickle, then a state
# pickle, from one pickler and so one memo) holding persistent ids of every
# shape ZODB uses, at pickle protocols 0 to 5, and the oids ZODB's referencesf
# finds in it. Those come from CPython's own Unpickler, reading both pickles
# with one memo and noting each persistent id it is handed: an oid, or an
# (oid, class) pair, counts; a list (a weak or cross-database reference) does
# not. Written with CPython 3.11; any Python 3 gives the same references.
import io, pickle, struct, collections, json, sys

OD = collections.OrderedDict

class Ref:
    def __init__(self, pid): self.pid = pid
    def __hash__(self): return id(self)
    def __eq__(self, o): return self is o

def oid(n): return struct.pack('>Q', n)

class Point:
    """Keyword arguments to __new__: NEWOBJ_EX from protocol 4."""
    def __init__(self, x, ref=None): self.x = x; self.ref = ref
    def __getnewargs_ex__(self): return ((self.x,), {'ref': self.ref})

class Pair:
    """NEWOBJ from protocol 2."""
    def __init__(self, a): self.a = a
    def __getnewargs__(self): return (self.a,)

class Old:
    """Python 2's old-style instances were written with INST (protocol 0) and OBJ (1 and 2)."""

class Py2Pickler(pickle._Pickler):
    """Bytes as a Python 2 str (SHORT_BINSTRING / BINSTRING), as ZODB on Python 2 wrote oids."""
    dispatch = dict(pickle._Pickler.dispatch)
    def save_str2(self, obj):
        n = len(obj)
        if n < 256: self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else: self.write(pickle.BINSTRING + struct.pack('<i', n) + obj)
        self.memoize(obj)
    dispatch[bytes] = save_str2

class BytesPickler(pickle._Pickler):
    """Bytes as SHORT_BINBYTES / BINBYTES at protocols 1 and 2 too, as zodbpickle writes them."""
    dispatch = dict(pickle._Pickler.dispatch)
    def save_bytes(self, obj):
        n = len(obj)
        if n < 256: self.write(pickle.SHORT_BINBYTES + bytes([n]) + obj)
        else: self.write(pickle.BINBYTES + struct.pack('<I', n) + obj)
        self.memoize(obj)
    dispatch[bytes] = save_bytes

def make(proto, meta, state, pickler):
    f = io.BytesIO()
    p = pickler(f, proto)
    p.persistent_id = lambda o: o.pid if isinstance(o, Ref) else None
    p.dump(meta); p.dump(state)
    return f.getvalue()

def references(raw):
    """The oids referencesf finds in a record, as hex, in order."""
    seen = []
    u = pickle.Unpickler(io.BytesIO(raw), encoding='bytes')
    u.persistent_load = lambda pid: (seen.append(pid), object())[1]
    u.load(); u.load()
    refs = []
    for pid in seen:
        if isinstance(pid, list): continue
        o = pid[0] if isinstance(pid, tuple) else pid
        refs.append((o.encode('latin1') if isinstance(o, str) else o).hex())
    return refs

def cases(proto):
    text = proto == 0  # protocol 0 writes a persistent id as a line of ASCII text
    o = (lambda n: 'oid%05d' % n) if text else oid
    def tup(n): return (o(n), OD)
    out = {}
    refs = lambda *pids: [Ref(p) for p in pids]
    # A mapping holding an oid, an (oid, class) pair, a weak and two cross-database references.
    pids = [o(1)] if text else [o(1), tup(2), ['w', (o(3),)], ['m', ('other', o(4), OD)], ['n', ('other', o(5))]]
    out['mapping'] = (OD, {'data': dict(zip('abcde', refs(*pids)))})
    # More than 256 memo entries (LONG_BINPUT / LONG_BINGET), one pid object shared by many references.
    shared = o(7) if text else tup(7)
    items = []
    for i in range(140):
        items.append(('item %d' % i, i * 1000003, Ref(o(100 + i)) if i % 23 == 0 else None))
        if i % 50 == 0: items.append(Ref(shared))
    items.append(items[3]); items.append(items[130])
    out['many'] = ((OD, None), {'items': items})
    # A recursive structure: a tuple inside a list inside that tuple (POP_MARK, POP).
    a = []; t = (a, Ref(o(9)), 'after'); a.append(t); a.append(Ref(o(10)))
    out['recursive'] = (OD, (t, a))
    # Sets, frozensets, numbers of every size, floats, booleans, None, long text and bytes.
    s = {Ref(o(11)), 1, 2}
    out['values'] = (OD, {
        'set': s, 'frozen': frozenset({3, Ref(o(12))}), 'ints': [0, 1, -1, 255, 256, 65535, 65536, -2**31, 2**31, 2**64, -2**200, 2**2100],
        'floats': [0.5, -1e300], 'flags': (True, False, None), 'text': 'x' * 260 + '\u00e9\u4e2d', 'bytes': b'\x00' * 260,
        'last': Ref(o(13)), 'empty': ((), [], {}),
    })
    if proto >= 5: out['values'][1]['array'] = bytearray(b'abc')
    out['objects'] = (OD, [Point(1, Ref(o(14))), Point(2, None), Pair(Ref(o(18))), Ref(o(15))])
    return out

# Old-style instances as Python 2 pickled them, each with a reference in its state (class pickle, then state).
OLD = [
    ('old-style instance, protocol 0 (INST)', b"c__main__\nOld\np0\n." + b"(i__main__\nOld\np1\n(dp2\nS'ref'\np3\nPoid00016\np4\nsS'n'\nI7\nsb."),
    ('old-style instance, protocol 1 (OBJ)', b"c__main__\nOld\nq\x00." + b"(c__main__\nOld\nq\x01oq\x02}q\x03(U\x03refq\x04U\x08" + oid(17) + b"q\x05QU\x01nK\x07ub."),
]

result = []
# Protocols 1 and 2 write bytes as Python 2 did, and as zodbpickle does (CPython's own reduce them to a call,
# which ZODB's referencesf cannot read either).
picklers = {0: [('', pickle.Pickler)], 1: [(', bytes as Python 2 str', Py2Pickler), (', bytes as zodbpickle writes them', BytesPickler)]}
picklers[2] = picklers[1]
for proto in range(6):
    for label, pickler in picklers.get(proto, [('', pickle.Pickler)]):
        for name, (meta, state) in cases(proto).items():
            result.append(('%s, protocol %d%s' % (name, proto, label), make(proto, meta, state, pickler)))
result += OLD
# One case a line.
print('[\n' + ',\n'.join(json.dumps({'name': name, 'pickle': raw.hex(), 'refs': references(raw)}) for name, raw in result) + '\n]')
