// Persistent references inside a ZODB record, as ZODB's `referencesf` finds
// them: a walk over the opcodes of the record's two pickles (class, state) that
// imports nothing and calls nothing; malformed input throws, never guesses.

import { PickleError } from '../errors.js';

/** A tuple built by the pickle, kept so `(oid, class)` references can be read. */
class TupleItem {
  constructor(readonly items: readonly Item[]) {}
}

/** Any list: ZODB's weak and cross-database references are lists and are skipped. */
const LIST = Symbol('list');
/** Anything else (ints, dicts, globals, reduced objects …): only its place on the stack matters. */
const OTHER = Symbol('other');

type Item = Buffer | TupleItem | typeof LIST | typeof OTHER;

/** ZODB's referencesf reads the class pickle and the state pickle, nothing after. */
const PICKLES_PER_RECORD = 2;

/** What an opcode does to the stack once its argument has been read. */
type Op = (w: Walker) => void;

class Walker {
  pos = 0;
  stack: Item[] = [];
  marks: number[] = [];
  /** Shared by both pickles: ZODB writes them with one pickler, so the state may BINGET the class. */
  readonly memo = new Map<number, Item>();
  readonly refs: Buffer[] = [];

  constructor(readonly buf: Buffer) {}

  fail(detail: string, at = this.pos): never {
    throw new PickleError(`not a ZODB record pickle: ${detail} at byte ${at}`, at);
  }

  take(n: number): Buffer {
    if (n < 0 || this.pos + n > this.buf.length) this.fail(`argument of ${n} bytes runs past the end`);
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  line(): Buffer {
    const nl = this.buf.indexOf(0x0a, this.pos);
    if (nl < 0) this.fail('text argument has no newline');
    const out = this.buf.subarray(this.pos, nl);
    this.pos = nl + 1;
    return out;
  }

  u8(): number {
    return this.take(1)[0]!;
  }

  u32le(): number {
    return this.take(4).readUInt32LE(0);
  }

  u64le(): number {
    const v = this.take(8).readBigUInt64LE(0);
    if (v > BigInt(this.buf.length)) this.fail(`length ${v} exceeds the record`);
    return Number(v);
  }

  push(item: Item): void {
    this.stack.push(item);
  }

  pop(): Item {
    const floor = this.marks.length ? this.marks[this.marks.length - 1]! : 0;
    if (this.stack.length <= floor) this.fail('stack underflow');
    return this.stack.pop()!;
  }

  top(): Item {
    const floor = this.marks.length ? this.marks[this.marks.length - 1]! : 0;
    if (this.stack.length <= floor) this.fail('stack underflow');
    return this.stack[this.stack.length - 1]!;
  }

  popMark(): Item[] {
    const mark = this.marks.pop();
    if (mark === undefined) this.fail('no MARK to pop to');
    return this.stack.splice(mark);
  }

  popN(n: number): Item[] {
    const out: Item[] = [];
    for (let i = 0; i < n; i++) out.unshift(this.pop());
    return out;
  }

  get(index: number): void {
    const v = this.memo.get(index);
    if (v === undefined) this.fail(`memo entry ${index} was never stored`);
    this.push(v);
  }

  put(index: number): void {
    this.memo.set(index, this.top());
  }

  /** A persistent id, read the way referencesf reads it. */
  persistentId(pid: Item): void {
    if (Buffer.isBuffer(pid)) this.refs.push(Buffer.from(pid));
    else if (pid instanceof TupleItem) {
      const oid = pid.items[0];
      if (!Buffer.isBuffer(oid)) this.fail('persistent reference tuple does not start with an oid');
      this.refs.push(Buffer.from(oid));
    } else if (pid !== LIST) this.fail('persistent id is neither an oid, a tuple nor a list');
    // persistent_load's result takes the id's place; its value is never looked at.
    this.push(OTHER);
  }
}

const decimal = (w: Walker, raw: Buffer): number => {
  const s = raw.toString('latin1');
  if (!/^\d+$/.test(s)) w.fail(`bad memo index ${JSON.stringify(s)}`);
  return Number(s);
};

const pushOther = (skip: number): Op => (w) => {
  w.take(skip);
  w.push(OTHER);
};
const sized = (len: (w: Walker) => number, asRef: boolean): Op => (w) => {
  const bytes = w.take(len(w));
  w.push(asRef ? bytes : OTHER);
};
const u8 = (w: Walker): number => w.u8();
const u32 = (w: Walker): number => w.u32le();
const u64 = (w: Walker): number => w.u64le();

/** Every opcode of protocols 0-5 that a record pickle may hold. */
const OPS: ReadonlyMap<number, Op> = new Map<number, Op>([
  [0x28 /* MARK */, (w) => void w.marks.push(w.stack.length)],
  [0x30 /* POP */, (w) => {
    const floor = w.marks.length ? w.marks[w.marks.length - 1]! : -1;
    if (floor === w.stack.length) w.marks.pop();
    else w.pop();
  }],
  [0x31 /* POP_MARK */, (w) => void w.popMark()],
  [0x32 /* DUP */, (w) => w.push(w.top())],
  [0x46 /* FLOAT */, (w) => (w.line(), w.push(OTHER))],
  [0x49 /* INT */, (w) => (w.line(), w.push(OTHER))],
  [0x4c /* LONG */, (w) => (w.line(), w.push(OTHER))],
  [0x53 /* STRING */, (w) => (w.line(), w.push(OTHER))],
  [0x56 /* UNICODE */, (w) => (w.line(), w.push(OTHER))],
  [0x4a /* BININT */, pushOther(4)],
  [0x4b /* BININT1 */, pushOther(1)],
  [0x4d /* BININT2 */, pushOther(2)],
  [0x47 /* BINFLOAT */, pushOther(8)],
  [0x4e /* NONE */, pushOther(0)],
  [0x88 /* NEWTRUE */, pushOther(0)],
  [0x89 /* NEWFALSE */, pushOther(0)],
  [0x8a /* LONG1 */, sized(u8, false)],
  [0x8b /* LONG4 */, sized(u32, false)],
  // Strings and bytes may be oids: a Python 2 str, Python 3 bytes, or text that is all ASCII.
  [0x54 /* BINSTRING */, sized(u32, true)],
  [0x55 /* SHORT_BINSTRING */, sized(u8, true)],
  [0x42 /* BINBYTES */, sized(u32, true)],
  [0x43 /* SHORT_BINBYTES */, sized(u8, true)],
  [0x8e /* BINBYTES8 */, sized(u64, true)],
  [0x58 /* BINUNICODE */, sized(u32, true)],
  [0x8c /* SHORT_BINUNICODE */, sized(u8, true)],
  [0x8d /* BINUNICODE8 */, sized(u64, true)],
  [0x96 /* BYTEARRAY8 */, sized(u64, false)],
  [0x29 /* EMPTY_TUPLE */, (w) => w.push(new TupleItem([]))],
  [0x74 /* TUPLE */, (w) => w.push(new TupleItem(w.popMark()))],
  [0x85 /* TUPLE1 */, (w) => w.push(new TupleItem(w.popN(1)))],
  [0x86 /* TUPLE2 */, (w) => w.push(new TupleItem(w.popN(2)))],
  [0x87 /* TUPLE3 */, (w) => w.push(new TupleItem(w.popN(3)))],
  [0x5d /* EMPTY_LIST */, (w) => w.push(LIST)],
  [0x6c /* LIST */, (w) => (w.popMark(), w.push(LIST))],
  [0x7d /* EMPTY_DICT */, (w) => w.push(OTHER)],
  [0x64 /* DICT */, (w) => (w.popMark(), w.push(OTHER))],
  [0x8f /* EMPTY_SET */, (w) => w.push(OTHER)],
  [0x91 /* FROZENSET */, (w) => (w.popMark(), w.push(OTHER))],
  // Container contents never matter: the container stays where it is.
  [0x61 /* APPEND */, (w) => void w.pop()],
  [0x65 /* APPENDS */, (w) => void w.popMark()],
  [0x73 /* SETITEM */, (w) => void w.popN(2)],
  [0x75 /* SETITEMS */, (w) => void w.popMark()],
  [0x90 /* ADDITEMS */, (w) => void w.popMark()],
  // Globals and object construction are noted, never resolved or called.
  [0x63 /* GLOBAL */, (w) => (w.line(), w.line(), w.push(OTHER))],
  [0x93 /* STACK_GLOBAL */, (w) => (w.popN(2), w.push(OTHER))],
  [0x52 /* REDUCE */, (w) => (w.popN(2), w.push(OTHER))],
  [0x62 /* BUILD */, (w) => void w.pop()],
  [0x81 /* NEWOBJ */, (w) => (w.popN(2), w.push(OTHER))],
  [0x92 /* NEWOBJ_EX */, (w) => (w.popN(3), w.push(OTHER))],
  [0x6f /* OBJ */, (w) => (w.popMark(), w.push(OTHER))],
  [0x69 /* INST */, (w) => (w.line(), w.line(), w.popMark(), w.push(OTHER))],
  [0x82 /* EXT1 */, pushOther(1)],
  [0x83 /* EXT2 */, pushOther(2)],
  [0x84 /* EXT4 */, pushOther(4)],
  [0x50 /* PERSID */, (w) => w.persistentId(Buffer.from(w.line()))],
  [0x51 /* BINPERSID */, (w) => w.persistentId(w.pop())],
  [0x67 /* GET */, (w) => w.get(decimal(w, w.line()))],
  [0x68 /* BINGET */, (w) => w.get(w.u8())],
  [0x6a /* LONG_BINGET */, (w) => w.get(w.u32le())],
  [0x70 /* PUT */, (w) => w.put(decimal(w, w.line()))],
  [0x71 /* BINPUT */, (w) => w.put(w.u8())],
  [0x72 /* LONG_BINPUT */, (w) => w.put(w.u32le())],
  [0x94 /* MEMOIZE */, (w) => w.put(w.memo.size)],
  [0x80 /* PROTO */, (w) => void w.u8()],
  [0x95 /* FRAME */, (w) => void w.take(8)],
  [0x98 /* READONLY_BUFFER */, (w) => void w.top()],
]);

const STOP = 0x2e;

/** Walk one pickle from `w.pos` through its STOP. */
function walkPickle(w: Walker): void {
  w.stack = [];
  w.marks = [];
  for (;;) {
    if (w.pos >= w.buf.length) w.fail('pickle ends without STOP');
    const at = w.pos;
    const op = w.buf[w.pos++]!;
    if (op === STOP) {
      if (w.stack.length !== 1 || w.marks.length) w.fail('STOP with an unbalanced stack', at);
      return;
    }
    const handler = OPS.get(op);
    if (!handler) w.fail(`unsupported opcode 0x${op.toString(16).padStart(2, '0')}`, at);
    handler(w);
  }
}

/**
 * Oids a ZODB record refers to, in pickle order (duplicates kept), as ZODB's
 * `ZODB.serialize.referencesf`: persistent ids that are an oid or an
 * `(oid, class)` tuple count; weak and cross-database references (lists) do
 * not. Reads the class pickle and the state pickle; throws PickleError on
 * anything that is not a well-formed pickle.
 *
 * @example
 * await storage.pack(Date.now() / 1000 - 86400, zodbReferences);
 */
export function zodbReferences(data: Buffer): Buffer[] {
  const w = new Walker(data);
  for (let n = 0; n < PICKLES_PER_RECORD && w.pos < data.length; n++) walkPickle(w);
  return w.refs;
}
