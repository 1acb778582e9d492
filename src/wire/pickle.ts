// Safe pickle subset for plain values (None, bool, int, float, str, bytes, list, tuple, str-keyed dict).
// The reader never imports or calls anything except the two reductions CPython uses to rebuild bytes
// at protocols 1–2; the writer emits exactly what CPython's C pickler emits for the same value.
// With `objects`, the reader also keeps what builds other objects (globals, REDUCE, NEWOBJ, BUILD) as
// inert descriptions, never resolved or called, which the writer writes back: a transaction extension
// holding a datetime passes through replication as it was.
import { PickleError } from '../errors.js';

/** A Python tuple. Kept distinct from `PickleValue[]` (a Python list) so values round-trip exactly. */
export class PickleTuple<T = PickleValue> {
  readonly items: readonly T[];
  constructor(items: readonly T[] = []) {
    this.items = Object.freeze([...items]);
  }
  get length(): number {
    return this.items.length;
  }
}

/**
 * A Python float whose value is a whole number (`2.0`, `-0.0`), which a JS
 * number cannot tell from an int. `loads` returns one for such floats and
 * `dumps` writes it as a float, so a pickle re-encodes to the same bytes.
 * Other floats are plain numbers.
 */
export class PickleFloat {
  constructor(readonly value: number) {}
  valueOf(): number {
    return this.value;
  }
}

/**
 * A global (a class or function) named by a pickle read with `objects`:
 * only its name, never imported. Python 2 names of the modules Python 3
 * renamed (`__builtin__`, `copy_reg`) are read as their Python 3 names and
 * written back as Python 2 names below protocol 3, as CPython's pickle
 * does; other renamed modules keep the name they were read with.
 */
export class PickleGlobal {
  constructor(
    readonly module: string,
    readonly name: string,
  ) {}
}

/** What a pickle did to an object after building it: APPEND, APPENDS, SETITEM, SETITEMS or BUILD. */
export type PickleObjectStep =
  | { op: 'append' | 'appends'; items: PickleValue[] }
  | { op: 'setitem' | 'setitems'; items: PickleValue[] }
  | { op: 'build'; state: PickleValue };

/**
 * An object a pickle read with `objects` builds by calling something
 * (`reduce`: callable(*args); `newobj`: cls.__new__(cls, *args)), then
 * the steps applied to it, in order. Never built: the writer writes the
 * same opcodes back, so a value CPython reduces the same way at every
 * protocol (datetime, Decimal, set) is written byte for byte as CPython
 * writes it.
 */
export class PickleObject {
  readonly steps: PickleObjectStep[] = [];
  constructor(
    readonly kind: 'reduce' | 'newobj',
    readonly callable: PickleGlobal | PickleObject,
    readonly args: PickleTuple<PickleValue>,
  ) {}
}

/** Python 2 module names Python 3 renamed, as CPython's pickle maps them below protocol 3. */
const PY3_MODULE_OF: ReadonlyMap<string, string> = new Map([
  ['__builtin__', 'builtins'],
  ['copy_reg', 'copyreg'],
]);
const PY2_MODULE_OF: ReadonlyMap<string, string> = new Map([...PY3_MODULE_OF].map(([py2, py3]) => [py3, py2]));

/** A float read from a pickle: whole values keep their float-ness. */
function asFloat(v: number): number | PickleFloat {
  return Number.isInteger(v) ? new PickleFloat(v) : v;
}

/**
 * A Python dict; `Map` keeps Python's insertion order even for keys like `"10"`.
 * Its keys are `str`, except when read with `objects`: then any key Python
 * hashes (an int, bytes, a tuple …) is kept as read.
 */
export type PickleDict = Map<PickleKey, PickleValue>;

/**
 * A dict key: a `str`, or (read with `objects`) another value Python hashes:
 * a number, bytes, a tuple of such, or an object a pickle builds (a date, a
 * frozenset: Python wrote it as a key, so it hashed it).
 */
export type PickleKey = string | number | bigint | boolean | null | PickleFloat | Uint8Array | PickleTuple<PickleValue> | PickleGlobal | PickleObject;

/** Whether `v` can be a dict key: never a list, a dict or a plain JS object (Python hashes none of them). */
function isHashable(v: unknown): v is PickleKey {
  if (v instanceof PickleTuple) return v.items.every((i) => isHashable(i));
  if (v === null || typeof v === 'string' || typeof v === 'number' || typeof v === 'bigint' || typeof v === 'boolean') return true;
  return v instanceof PickleFloat || v instanceof Uint8Array || v instanceof PickleGlobal || v instanceof PickleObject;
}

/**
 * What `loads` returns. Python `int` is a `number` inside ±(2^53-1) and a `bigint` outside it;
 * Python `float` is a `number`, except a whole-valued one (`1.0`), which is a `PickleFloat` so it
 * does not turn into the int `1` when pickled again.
 * `bytes` is a fresh `Buffer` (never a view of the input); a Python 2 `str` is a JS string when
 * it is ASCII and a `Buffer` otherwise (ZODB's `errors='bytes'` rule).
 */
export type PickleValue =
  | null
  | boolean
  | number
  | PickleFloat
  | bigint
  | string
  | Buffer
  | PickleValue[]
  | PickleTuple<PickleValue>
  | PickleDict
  | PickleGlobal
  | PickleObject;

/**
 * What `dumps` accepts: every `PickleValue`, plus plain `Record<string, …>` dicts and any `Uint8Array`.
 * A plain object is written in JS property order, which puts integer-like keys ("10") first; use a
 * `Map` when such keys must keep Python's order.
 */
export type PickleWritable =
  | null
  | boolean
  | number
  | PickleFloat
  | bigint
  | string
  | Uint8Array
  | readonly PickleWritable[]
  | PickleTuple<PickleWritable>
  | ReadonlyMap<PickleKey, PickleWritable>
  | PickleGlobal
  | PickleObject
  | { readonly [key: string]: PickleWritable };

export interface LoadOptions {
  /** Deepest container nesting and open MARKs allowed (default 1000, about Python's recursion limit). */
  maxDepth?: number;
  /** Most items on the stack at one time (default 1,048,576). */
  maxStackItems?: number;
  /** Most memo entries (default 1,048,576). */
  maxMemoEntries?: number;
  /** Longest LONG1/LONG4 payload in bytes (default 4096). */
  maxLongBytes?: number;
  /**
   * Keep globals and the objects REDUCE, NEWOBJ and BUILD make as
   * `PickleGlobal` and `PickleObject` (default: refused). Nothing is
   * imported or called either way.
   */
  objects?: boolean;
}

export interface DumpOptions {
  protocol: 1 | 2 | 3;
  /** Python's `Pickler.fast`: no memo at all (no BINPUT/BINGET). zc.zrs writes its messages this way. */
  fast?: boolean;
  /** Deepest container nesting allowed (default 1000). */
  maxDepth?: number;
  /**
   * Most bytes written (default: no limit). A value read from a pickle can
   * share one object many times, which the writer may write out each time:
   * bound it when the value came from elsewhere.
   */
  maxBytes?: number;
}

/** Decode one pickle. Anything malformed, unsafe or out of bounds throws `PickleError` with the byte position. */
export function loads(buf: Uint8Array, options: LoadOptions = {}): PickleValue {
  return new Unpickler(buf, options).load();
}

/**
 * Encode `value` as CPython 3's C pickler does at `protocol`.
 * @example dumps(new Map([['n', 1]]), { protocol: 3 }).toString('hex') // '80037d710058010000006e71014b01732e'
 */
export function dumps(value: PickleWritable, options: DumpOptions): Buffer {
  return new Pickler(options).dump(value);
}

// ---------------------------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------------------------

/** A whitelisted callable on the stack; it only ever reaches REDUCE, never the result. */
class AllowedGlobal {
  constructor(readonly kind: 'codecs.encode' | 'bytes') {}
}

type Item = PickleValue | AllowedGlobal;

const ALLOWED_GLOBALS: ReadonlyMap<string, AllowedGlobal> = new Map([
  ['_codecs encode', new AllowedGlobal('codecs.encode')],
  ['__builtin__ bytes', new AllowedGlobal('bytes')],
  ['builtins bytes', new AllowedGlobal('bytes')],
]);

/** Opcodes that build arbitrary objects or call code; named so the error says why. */
const FORBIDDEN: ReadonlyMap<number, string> = new Map([
  [0x62, 'BUILD'], [0x69, 'INST'], [0x6f, 'OBJ'], [0x81, 'NEWOBJ'], [0x92, 'NEWOBJ_EX'],
  [0x82, 'EXT1'], [0x83, 'EXT2'], [0x84, 'EXT4'], [0x50, 'PERSID'], [0x51, 'BINPERSID'],
  [0x97, 'NEXT_BUFFER'], [0x98, 'READONLY_BUFFER'],
]);

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);
/** Python 3.11's default int_max_str_digits: longer decimal ints are refused there too. */
const MAX_DECIMAL_DIGITS = 4300;
/** Longest protocol 0 float literal read (Python writes at most 25 characters). */
const MAX_FLOAT_CHARS = MAX_DECIMAL_DIGITS + 32;
const STOP = 0x2e;

const toInt = (v: bigint): number | bigint => (v <= MAX_SAFE && v >= -MAX_SAFE ? Number(v) : v);

class Unpickler {
  private pos = 0;
  private opPos = 0;
  private stack: Item[] = [];
  private readonly marks: Item[][] = [];
  private readonly memo = new Map<number, Item>();
  private readonly maxDepth: number;
  private readonly maxStackItems: number;
  private readonly maxMemoEntries: number;
  private readonly maxLongBytes: number;
  private readonly objects: boolean;
  /** The protocol a PROTO opcode declared; 0 without one (protocols 0 and 1). */
  private protocol = 0;
  private readonly ops: ReadonlyMap<number, () => void>;

  constructor(private readonly buf: Uint8Array, o: LoadOptions) {
    this.maxDepth = o.maxDepth ?? 1000;
    this.maxStackItems = o.maxStackItems ?? 1 << 20;
    this.maxMemoEntries = o.maxMemoEntries ?? 1 << 20;
    this.maxLongBytes = o.maxLongBytes ?? 4096;
    this.objects = o.objects ?? false;
    this.ops = this.opcodeTable();
  }

  load(): PickleValue {
    while (this.pos < this.buf.length) {
      this.opPos = this.pos;
      const op = this.buf[this.pos++]!;
      if (op === STOP) return this.stop();
      this.dispatch(op);
    }
    throw this.fail('truncated pickle: no STOP opcode');
  }

  private dispatch(op: number): void {
    const handler = this.ops.get(op);
    if (handler) return handler();
    const forbidden = FORBIDDEN.get(op);
    if (forbidden) throw this.forbidden(forbidden);
    throw this.fail(`unknown or unsupported opcode 0x${op.toString(16).padStart(2, '0')}`);
  }

  private stop(): PickleValue {
    if (this.marks.length > 0) throw this.fail('STOP with an open MARK');
    if (this.stack.length !== 1) throw this.fail(`STOP with ${this.stack.length} items on the stack`);
    const value = this.plain(this.stack[0]!);
    if (this.pos !== this.buf.length) {
      throw new PickleError(`${this.buf.length - this.pos} trailing bytes after STOP`, this.pos);
    }
    assertAcyclic(value, this.maxDepth, this.opPos);
    return value;
  }

  private fail(message: string): PickleError {
    return new PickleError(message, this.opPos);
  }

  private forbidden(opcode: string): PickleError {
    return this.fail(`opcode ${opcode} is not allowed: it builds objects or calls code`);
  }

  // -- byte access -----------------------------------------------------------------------------

  private read(n: number): Uint8Array {
    if (n < 0 || n > this.buf.length - this.pos) throw this.fail(`truncated pickle: need ${n} bytes`);
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  private view(n: number): DataView {
    const b = this.read(n);
    return new DataView(b.buffer, b.byteOffset, b.byteLength);
  }

  private u8(): number {
    return this.read(1)[0]!;
  }

  private u32(): number {
    return this.view(4).getUint32(0, true);
  }

  private i32(): number {
    return this.view(4).getInt32(0, true);
  }

  private u64(): number {
    const v = this.view(8).getBigUint64(0, true);
    if (v > MAX_SAFE) throw this.fail('length does not fit in memory');
    return Number(v);
  }

  /** One text line without its '\n', as latin-1 (the text opcodes are ASCII). */
  private line(): string {
    return Buffer.from(this.lineBytes()).toString('latin1');
  }

  /** The bytes up to the next newline; the newline is consumed too. */
  private lineBytes(): Uint8Array {
    const end = this.buf.indexOf(0x0a, this.pos);
    if (end < 0) throw this.fail('truncated pickle: missing newline');
    const bytes = this.read(end - this.pos);
    this.pos += 1;
    return bytes;
  }

  /** Protocol 0 UNICODE: a line in raw-unicode-escape (latin-1 bytes, \\uXXXX and \\UXXXXXXXX). */
  private unicodeLine(): string {
    const bytes = this.lineBytes();
    try {
      return rawUnicodeEscape(bytes);
    } catch (cause) {
      throw this.fail(`bad UNICODE literal: ${(cause as Error).message}`);
    }
  }

  /** Protocol 0 STRING: a Python 2 str literal, quoted with ' or ", its escapes decoded as Python's string_escape. */
  private quotedString(text: string): Uint8Array {
    const q = text[0];
    if (text.length < 2 || (q !== "'" && q !== '"') || text[text.length - 1] !== q) throw this.fail('STRING is not a quoted literal');
    try {
      return escapeDecode(text.slice(1, -1));
    } catch (cause) {
      throw this.fail(`bad STRING literal: ${(cause as Error).message}`);
    }
  }

  // -- stack -----------------------------------------------------------------------------------

  private push(item: Item): void {
    if (this.stack.length >= this.maxStackItems) throw this.fail('stack limit exceeded');
    this.stack.push(item);
  }

  private pop(): Item {
    const item = this.stack.pop();
    if (item === undefined) throw this.fail('stack underflow');
    return item;
  }

  private top(): Item {
    const item = this.stack[this.stack.length - 1];
    if (item === undefined) throw this.fail('stack underflow');
    return item;
  }

  private mark(): void {
    if (this.marks.length >= this.maxDepth) throw this.fail('too many nested MARKs');
    this.marks.push(this.stack);
    this.stack = [];
  }

  /** Items pushed since the last MARK, which is removed. */
  private popMark(): Item[] {
    const outer = this.marks.pop();
    if (outer === undefined) throw this.fail('no MARK on the stack');
    const items = this.stack;
    this.stack = outer;
    return items;
  }

  /** A global may only be called by REDUCE; it never becomes part of a value. */
  private plain(item: Item): PickleValue {
    if (item instanceof AllowedGlobal) throw this.fail('a global may only be called, not stored');
    return item;
  }

  // -- opcode table ----------------------------------------------------------------------------

  private opcodeTable(): Map<number, () => void> {
    const c = (s: string): number => s.charCodeAt(0);
    return new Map<number, () => void>([
      [0x80, () => this.proto()],
      [0x95, () => this.frame()],
      [c('('), () => this.mark()],
      [c('0'), () => this.popTop()],
      [c('1'), () => void this.popMark()],
      [c('2'), () => this.push(this.top())],
      [c('N'), () => this.push(null)],
      [0x88, () => this.push(true)],
      [0x89, () => this.push(false)],
      [c('I'), () => this.push(this.textInt(this.line()))],
      [c('J'), () => this.push(this.i32())],
      [c('K'), () => this.push(this.u8())],
      [c('M'), () => this.push(this.view(2).getUint16(0, true))],
      [c('L'), () => this.push(this.textLong(this.line()))],
      [0x8a, () => this.push(this.binLong(this.u8()))],
      [0x8b, () => this.push(this.binLong(this.i32()))],
      [c('F'), () => this.push(asFloat(this.textFloat(this.line())))],
      [c('G'), () => this.push(asFloat(this.view(8).getFloat64(0, false)))],
      [c('X'), () => this.push(this.utf8(this.u32()))],
      [0x8c, () => this.push(this.utf8(this.u8()))],
      [0x8d, () => this.push(this.utf8(this.u64()))],
      [c('C'), () => this.push(Buffer.from(this.read(this.u8())))],
      [c('B'), () => this.push(Buffer.from(this.read(this.u32())))],
      [0x8e, () => this.push(Buffer.from(this.read(this.u64())))],
      [c('S'), () => this.push(py2str(this.quotedString(this.line())))],
      [c('V'), () => this.push(this.unicodeLine())],
      [c('U'), () => this.push(py2str(this.read(this.u8())))],
      [c('T'), () => this.push(py2str(this.read(this.i32())))],
      [c(']'), () => this.push([])],
      [c('l'), () => this.push(this.popMark().map((i) => this.plain(i)))],
      [c('a'), () => this.appendItems('append', [this.pop()])],
      [c('e'), () => this.appendItems('appends', this.popMark())],
      [c(')'), () => this.push(new PickleTuple())],
      [c('t'), () => this.push(this.tuple(this.popMark()))],
      [0x85, () => this.push(this.tuple(this.popN(1)))],
      [0x86, () => this.push(this.tuple(this.popN(2)))],
      [0x87, () => this.push(this.tuple(this.popN(3)))],
      [c('}'), () => this.push(new Map())],
      [c('d'), () => this.push(this.setItems(new Map(), this.popMark()))],
      [c('s'), () => this.setItemsOnTop('setitem', this.popN(2))],
      [c('u'), () => this.setItemsOnTop('setitems', this.popMark())],
      [c('p'), () => this.memoPut(this.textIndex(this.line()))],
      [c('q'), () => this.memoPut(this.u8())],
      [c('r'), () => this.memoPut(this.u32())],
      [0x94, () => this.memoPut(this.memo.size)],
      [c('g'), () => this.push(this.memoGet(this.textIndex(this.line())))],
      [c('h'), () => this.push(this.memoGet(this.u8()))],
      [c('j'), () => this.push(this.memoGet(this.u32()))],
      [c('c'), () => this.push(this.global(this.line(), this.line()))],
      [0x93, () => this.stackGlobal()],
      [c('R'), () => this.reduce()],
      [0x81, () => this.newObj()],
      [c('b'), () => this.build()],
    ]);
  }

  private proto(): void {
    const version = this.u8();
    if (version > 5) throw this.fail(`unsupported pickle protocol ${version}`);
    this.protocol = version;
  }

  /** Protocol 4 FRAME: an advisory length; the framed opcodes follow inline. */
  private frame(): void {
    if (this.u64() > this.buf.length - this.pos) throw this.fail('truncated pickle: FRAME longer than the input');
  }

  /** Python's POP also discards an empty MARK frame. */
  private popTop(): void {
    if (this.stack.length === 0 && this.marks.length > 0) this.popMark();
    else this.pop();
  }

  private popN(n: number): Item[] {
    if (this.stack.length < n) throw this.fail('stack underflow');
    return this.stack.splice(this.stack.length - n, n);
  }

  // -- numbers and strings ---------------------------------------------------------------------

  private decimal(text: string): bigint {
    if (text.length > MAX_DECIMAL_DIGITS + 1) throw this.fail('integer literal too long');
    if (!/^[+-]?(0+|[1-9][0-9]*)$/.test(text)) throw this.fail(`bad integer literal ${JSON.stringify(text)}`);
    return BigInt(text);
  }

  /** Protocol 0/1 `INT`: `I01`/`I00` are Python's True/False. */
  private textInt(text: string): PickleValue {
    if (text === '01') return true;
    if (text === '00') return false;
    return toInt(this.decimal(text));
  }

  private textLong(text: string): number | bigint {
    return toInt(this.decimal(text.endsWith('L') ? text.slice(0, -1) : text));
  }

  private textFloat(text: string): number {
    // Bounded first, and a pattern with one way to match each digit: the
    // older `\d+\.?\d*` backtracked quadratically on a long run of digits.
    if (text.length > MAX_FLOAT_CHARS) throw this.fail('float literal too long');
    const ok = /^[+-]?((\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|inf|infinity|nan)$/i.test(text);
    if (!ok) throw this.fail(`bad float literal ${JSON.stringify(text)}`);
    const t = text.toLowerCase().replace(/^([+-]?)inf(inity)?$/, '$1Infinity').replace(/^[+-]?nan$/, 'NaN');
    return Number(t);
  }

  /** LONG1/LONG4: little-endian two's complement. */
  private binLong(n: number): number | bigint {
    if (n < 0) throw this.fail('negative LONG4 length');
    if (n > this.maxLongBytes) throw this.fail(`long of ${n} bytes exceeds the limit`);
    const bytes = this.read(n);
    if (n === 0) return 0;
    let v = BigInt(`0x${Buffer.from(bytes).reverse().toString('hex')}`);
    if (bytes[n - 1]! & 0x80) v -= 1n << BigInt(8 * n);
    return toInt(v);
  }

  private textIndex(text: string): number {
    const v = this.decimal(text);
    if (v < 0n || v > 0xffffffffn) throw this.fail('bad memo index');
    return Number(v);
  }

  private utf8(n: number): string {
    const bytes = this.read(n);
    try {
      return decodeUtf8(bytes);
    } catch (cause) {
      if (cause instanceof PickleError) throw this.fail(cause.message);
      throw cause;
    }
  }

  // -- containers ------------------------------------------------------------------------------

  private tuple(items: Item[]): PickleTuple {
    return new PickleTuple(items.map((i) => this.plain(i)));
  }

  private appendItems(op: 'append' | 'appends', items: Item[]): void {
    const list = this.top();
    if (list instanceof PickleObject) return void list.steps.push({ op, items: items.map((i) => this.plain(i)) });
    if (!Array.isArray(list)) throw this.fail('APPEND target is not a list');
    for (const item of items) list.push(this.plain(item));
  }

  private setItemsOnTop(op: 'setitem' | 'setitems', items: Item[]): void {
    const dict = this.top();
    if (dict instanceof PickleObject) {
      if (items.length % 2 !== 0) throw this.fail('odd number of items for a dict');
      return void dict.steps.push({ op, items: items.map((i) => this.plain(i)) });
    }
    if (!(dict instanceof Map)) throw this.fail('SETITEM target is not a dict');
    this.setItems(dict, items);
  }

  private setItems(dict: PickleDict, items: Item[]): PickleDict {
    if (items.length % 2 !== 0) throw this.fail('odd number of items for a dict');
    for (let i = 0; i < items.length; i += 2) {
      const key = this.plain(items[i]!);
      // Only str keys, but when objects are kept: then any key Python hashes (an int, bytes, a tuple) is kept as read.
      if (typeof key !== 'string' && !(this.objects && isHashable(key))) throw this.fail('dict key is not a str');
      dict.set(key, this.plain(items[i + 1]!));
    }
    return dict;
  }

  // -- memo ------------------------------------------------------------------------------------

  private memoPut(index: number): void {
    if (!this.memo.has(index) && this.memo.size >= this.maxMemoEntries) throw this.fail('memo limit exceeded');
    this.memo.set(index, this.top());
  }

  private memoGet(index: number): Item {
    const item = this.memo.get(index);
    if (item === undefined) throw this.fail(`memo key ${index} was never stored`);
    return item;
  }

  // -- the only calls allowed: rebuilding bytes ------------------------------------------------

  /** One of the two bytes rebuilders; with `objects`, any other global as a `PickleGlobal`. */
  private global(module: string, name: string): AllowedGlobal | PickleGlobal {
    const allowed = ALLOWED_GLOBALS.get(`${module} ${name}`);
    if (allowed) return allowed;
    if (!this.objects) throw this.fail(`refusing global ${JSON.stringify(`${module}.${name}`)}`);
    return new PickleGlobal(this.protocol < 3 ? (PY3_MODULE_OF.get(module) ?? module) : module, name);
  }

  private stackGlobal(): void {
    const [module, name] = this.popN(2);
    if (typeof module !== 'string' || typeof name !== 'string') throw this.fail('STACK_GLOBAL needs two str');
    this.push(this.global(module, name));
  }

  private reduce(): void {
    const [callable, args] = this.popN(2);
    if (!(args instanceof PickleTuple)) throw this.fail('REDUCE arguments are not a tuple');
    if (callable instanceof AllowedGlobal) return this.push(callable.kind === 'bytes' ? this.emptyBytes(args) : this.latin1Bytes(args));
    if (!this.objects) throw this.fail('REDUCE of something that is not an allowed global');
    this.push(this.object('reduce', callable, args));
  }

  private newObj(): void {
    if (!this.objects) throw this.forbidden('NEWOBJ');
    const [cls, args] = this.popN(2);
    if (!(args instanceof PickleTuple)) throw this.fail('NEWOBJ arguments are not a tuple');
    this.push(this.object('newobj', cls, args));
  }

  private object(kind: PickleObject['kind'], callable: Item | undefined, args: PickleTuple): PickleObject {
    if (!(callable instanceof PickleGlobal || callable instanceof PickleObject)) throw this.fail(`${kind.toUpperCase()} of something that is not a global or an object`);
    return new PickleObject(kind, callable, args);
  }

  private build(): void {
    if (!this.objects) throw this.forbidden('BUILD');
    const state = this.plain(this.pop());
    const target = this.top();
    if (!(target instanceof PickleObject)) throw this.fail('BUILD target is not an object');
    target.steps.push({ op: 'build', state });
  }

  /** `bytes()`: Python 3 writes `b''` this way at protocols 1–2. */
  private emptyBytes(args: PickleTuple): Buffer {
    if (args.length !== 0) throw this.fail('bytes() is only allowed without arguments');
    return Buffer.alloc(0);
  }

  /** `_codecs.encode(text, 'latin1')`: Python 3 writes non-empty bytes this way at protocols 1–2. */
  private latin1Bytes(args: PickleTuple): Buffer {
    const [text, encoding] = args.items;
    if (args.length !== 2 || typeof text !== 'string' || encoding !== 'latin1') {
      throw this.fail("_codecs.encode is only allowed as encode(str, 'latin1')");
    }
    if (/[^\u0000-\u00ff]/.test(text)) throw this.fail('latin1 text has a code point above 255');
    return Buffer.from(text, 'latin1');
  }
}

const SIMPLE_ESCAPES: Readonly<Record<string, number>> = { '\\': 0x5c, "'": 0x27, '"': 0x22, a: 0x07, b: 0x08, f: 0x0c, n: 0x0a, r: 0x0d, t: 0x09, v: 0x0b };

/** Python's codecs.escape_decode of a str literal's body (`text` holds one byte per char). */
function escapeDecode(text: string): Buffer {
  const out: number[] = [];
  for (let i = 0; i < text.length; i++) {
    const ch = text.charCodeAt(i);
    if (ch !== 0x5c) {
      out.push(ch);
      continue;
    }
    if (i + 1 === text.length) throw new Error('\\ at the end of the literal');
    const next = text[++i]!;
    const simple = SIMPLE_ESCAPES[next];
    if (simple !== undefined) out.push(simple);
    else if (next === '\n') continue; // a line continuation
    else if (next >= '0' && next <= '7') {
      let digits = next;
      while (digits.length < 3 && i + 1 < text.length && text[i + 1]! >= '0' && text[i + 1]! <= '7') digits += text[++i];
      out.push(parseInt(digits, 8) & 0xff);
    } else if (next === 'x') {
      const hex = text.slice(i + 1, i + 3);
      if (!/^[0-9a-fA-F]{2}$/.test(hex)) throw new Error(`invalid \\x escape at ${i - 1}`);
      out.push(parseInt(hex, 16));
      i += 2;
    } else out.push(0x5c, next.charCodeAt(0)); // unknown escapes stay as they are
  }
  return Buffer.from(out);
}

const HEX4 = /^[0-9a-fA-F]{4}$/;
const HEX8 = /^[0-9a-fA-F]{8}$/;

/** Python's raw_unicode_escape decoding: latin-1 bytes, and \\uXXXX / \\UXXXXXXXX after an odd run of backslashes. */
function rawUnicodeEscape(bytes: Uint8Array): string {
  let out = '';
  for (let i = 0; i < bytes.length; ) {
    if (bytes[i] !== 0x5c) {
      out += String.fromCharCode(bytes[i++]!);
      continue;
    }
    const run = i;
    while (i < bytes.length && bytes[i] === 0x5c) i++;
    const u = bytes[i];
    if ((i - run) % 2 === 0 || (u !== 0x75 && u !== 0x55)) {
      out += '\\'.repeat(i - run);
      continue;
    }
    out += '\\'.repeat(i - run - 1);
    const count = u === 0x75 ? 4 : 8;
    const hex = Buffer.from(bytes.subarray(i + 1, i + 1 + count)).toString('latin1');
    if (!(count === 4 ? HEX4 : HEX8).test(hex)) throw new Error(`truncated \\${String.fromCharCode(u)} escape at ${i - 1}`);
    const code = parseInt(hex, 16);
    if (code > 0x10ffff) throw new Error(`\\U escape out of range at ${i - 1}`);
    out += String.fromCodePoint(code);
    i += 1 + count;
  }
  return out;
}

/** Python 2 `str` read by Python 3 with ZODB's `encoding='ASCII', errors='bytes'`. */
function py2str(bytes: Uint8Array): string | Buffer {
  const copy = Buffer.from(bytes);
  return copy.every((b) => b < 0x80) ? copy.toString('latin1') : copy;
}

/** The reader only builds DAGs; a cycle (possible via memo + APPEND) is refused, and depth is bounded. */
function assertAcyclic(root: PickleValue, maxDepth: number, position: number): void {
  const done = new Set<object>();
  const onPath = new Set<object>();
  const walk = (v: PickleValue, depth: number): void => {
    const children = childrenOf(v);
    if (children === null || done.has(v as object)) return;
    if (onPath.has(v as object)) throw new PickleError('cyclic structure', position);
    if (depth > maxDepth) throw new PickleError('nesting too deep', position);
    onPath.add(v as object);
    for (const child of children) walk(child, depth + 1);
    onPath.delete(v as object);
    done.add(v as object);
  };
  walk(root, 1);
}

function childrenOf(v: PickleValue): Iterable<PickleValue> | null {
  if (Array.isArray(v)) return v;
  if (v instanceof PickleTuple) return v.items;
  if (v instanceof Map) return v.values();
  if (v instanceof PickleObject) return [v.callable, v.args, ...v.steps.flatMap((s) => (s.op === 'build' ? [s.state] : s.items))];
  return null;
}

// ---------------------------------------------------------------------------------------------
// UTF-8 with Python's 'surrogatepass' (lone surrogates are 3-byte sequences, as pickle writes them)
// ---------------------------------------------------------------------------------------------

const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function decodeUtf8(bytes: Uint8Array): string {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    return decodeUtf8Surrogatepass(bytes);
  }
}

function decodeUtf8Surrogatepass(bytes: Uint8Array): string {
  const units: number[] = [];
  let i = 0;
  while (i < bytes.length) {
    const { codePoint, length } = utf8CodePoint(bytes, i);
    if (codePoint > 0xffff) units.push(0xd800 + ((codePoint - 0x10000) >> 10), 0xdc00 + (codePoint & 0x3ff));
    else units.push(codePoint);
    i += length;
  }
  let out = '';
  for (let k = 0; k < units.length; k += 8192) out += String.fromCharCode(...units.slice(k, k + 8192));
  return out;
}

function utf8CodePoint(bytes: Uint8Array, i: number): { codePoint: number; length: number } {
  const lead = bytes[i]!;
  if (lead < 0x80) return { codePoint: lead, length: 1 };
  const length = lead >= 0xf5 || lead < 0xc2 ? 0 : lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : 2;
  if (length === 0 || i + length > bytes.length) throw new PickleError('invalid UTF-8');
  let codePoint = lead & (0xff >> (length + 1));
  for (let k = 1; k < length; k++) {
    const b = bytes[i + k]!;
    if ((b & 0xc0) !== 0x80) throw new PickleError('invalid UTF-8');
    codePoint = (codePoint << 6) | (b & 0x3f);
  }
  const min = [0, 0, 0x80, 0x800, 0x10000][length]!;
  if (codePoint < min || codePoint > 0x10ffff) throw new PickleError('invalid UTF-8');
  return { codePoint, length };
}

function encodeUtf8(s: string): Buffer {
  if (!/\p{Cs}/u.test(s)) return Buffer.from(s, 'utf8');
  const out: number[] = [];
  for (const ch of s) pushCodePoint(out, ch.codePointAt(0)!);
  return Buffer.from(out);
}

function pushCodePoint(out: number[], cp: number): void {
  if (cp < 0x80) out.push(cp);
  else if (cp < 0x800) out.push(0xc0 | (cp >> 6), 0x80 | (cp & 0x3f));
  else if (cp < 0x10000) out.push(0xe0 | (cp >> 12), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f));
  else out.push(0xf0 | (cp >> 18), 0x80 | ((cp >> 12) & 0x3f), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f));
}

// ---------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------

/** CPython's pickler writes lists and dicts in batches of this many items. */
const BATCH_SIZE = 1000;

// Memo keys for objects that are one shared object in CPython, so CPython memoizes them once.
const CODECS_ENCODE_KEY = { global: '_codecs encode' };
const BYTES_KEY = { global: '__builtin__ bytes' };
const LATIN1_KEY = { constant: 'latin1' };
const EMPTY_BYTES_KEY = { constant: "b''" };

type MemoKey = object | string;

/**
 * CPython memoizes by identity. JS strings have none, so we follow what CPython does when it
 * re-pickles a value it just unpickled (what a zc.zrs secondary does with an extension): '' and
 * one-character latin-1 strings are shared singletons there, every other string is a fresh object.
 */
const sharedStringKey = (s: string): string | null => (s.length === 0 || (s.length === 1 && s.charCodeAt(0) < 256) ? s : null);

class Pickler {
  private readonly chunks: Buffer[] = [];
  private written = 0;
  private readonly maxBytes: number;
  private readonly memo = new Map<MemoKey, number>();
  private memoCount = 0;
  private readonly inProgress = new Set<object>();
  /** One memo key per global named, as CPython has one object per class. */
  private readonly globalKeys = new Map<string, object>();
  private depth = 0;
  private readonly protocol: 1 | 2 | 3;
  private readonly fast: boolean;
  private readonly maxDepth: number;

  constructor(o: DumpOptions) {
    if (o.protocol !== 1 && o.protocol !== 2 && o.protocol !== 3) throw new PickleError(`unsupported protocol ${String(o.protocol)}`);
    this.protocol = o.protocol;
    this.fast = o.fast ?? false;
    this.maxDepth = o.maxDepth ?? 1000;
    this.maxBytes = o.maxBytes ?? Infinity;
  }

  dump(value: PickleWritable): Buffer {
    if (this.protocol >= 2) this.write(0x80, this.protocol);
    this.save(value);
    this.write(STOP);
    return Buffer.concat(this.chunks);
  }

  private emit(b: Buffer): void {
    this.written += b.length;
    if (this.written > this.maxBytes) throw new PickleError(`pickle larger than ${this.maxBytes} bytes`);
    this.chunks.push(b);
  }

  private write(...bytes: number[]): void {
    this.emit(Buffer.from(bytes));
  }

  private writeBuffer(b: Uint8Array): void {
    this.emit(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
  }

  private writeU32(op: number, n: number): void {
    const b = Buffer.alloc(5);
    b[0] = op;
    b.writeUInt32LE(n, 1);
    this.emit(b);
  }

  private save(v: PickleWritable): void {
    if (v === null) return this.write(0x4e); // NONE
    switch (typeof v) {
      case 'boolean': return this.saveBool(v);
      case 'number': return Number.isSafeInteger(v) ? this.saveInt(v) : this.saveFloat(v);
      case 'bigint': return this.saveInt(v);
      case 'string': return this.saveStr(v);
      case 'object': return this.saveObject(v);
      default: throw new PickleError(`cannot pickle a ${typeof v}`);
    }
  }

  private saveObject(v: Exclude<PickleWritable, null | boolean | number | bigint | string>): void {
    if (v instanceof Uint8Array) return this.saveBytes(v);
    if (v instanceof PickleFloat) return this.saveFloat(v.value);
    if (v instanceof PickleGlobal) return this.saveGlobalValue(v);
    if (this.inProgress.has(v)) throw new PickleError('cannot pickle a cyclic value');
    if (this.depth >= this.maxDepth) throw new PickleError('value nested too deeply');
    if (this.saveMemoized(v)) return;
    this.inProgress.add(v);
    this.depth++;
    this.saveContainer(v);
    this.depth--;
    this.inProgress.delete(v);
  }

  private saveContainer(v: Exclude<PickleWritable, null | boolean | number | bigint | string | Uint8Array | PickleGlobal>): void {
    if (Array.isArray(v)) return this.saveList(v as readonly PickleWritable[]);
    if (v instanceof PickleTuple) return this.saveTuple(v);
    if (v instanceof PickleObject) return this.saveBuiltObject(v);
    if (v instanceof Map) return this.saveDict(v, [...v.entries()]);
    const proto: unknown = Object.getPrototypeOf(v);
    if (proto === Object.prototype || proto === null) return this.saveDict(v, Object.entries(v));
    throw new PickleError(`cannot pickle an instance of ${(proto as { constructor?: { name?: string } } | null)?.constructor?.name ?? 'unknown'}`);
  }

  // -- memo ------------------------------------------------------------------------------------

  /** Writes BINGET when `key` was memoized already. */
  private saveMemoized(key: MemoKey | null): boolean {
    const index = key === null ? undefined : this.memo.get(key);
    if (index === undefined) return false;
    if (index < 256) this.write(0x68, index); // BINGET
    else this.writeU32(0x6a, index); // LONG_BINGET
    return true;
  }

  /** BINPUT the object just written; `key` null means "never looked up again" (a fresh object). */
  private memoize(key: MemoKey | null): void {
    if (this.fast) return;
    const index = this.memoCount++;
    if (key !== null) this.memo.set(key, index);
    if (index < 256) this.write(0x71, index); // BINPUT
    else this.writeU32(0x72, index); // LONG_BINPUT
  }

  // -- scalars ---------------------------------------------------------------------------------

  private saveBool(v: boolean): void {
    if (this.protocol >= 2) return this.write(v ? 0x88 : 0x89); // NEWTRUE / NEWFALSE
    this.writeBuffer(Buffer.from(v ? 'I01\n' : 'I00\n', 'latin1'));
  }

  private saveInt(v: number | bigint): void {
    if (v >= 0 && v <= 0xff) return this.write(0x4b, Number(v)); // BININT1
    if (v >= 0 && v <= 0xffff) return this.write(0x4d, Number(v) & 0xff, Number(v) >> 8); // BININT2
    if (v >= -0x80000000 && v <= 0x7fffffff) return this.saveBinInt(Number(v));
    if (this.protocol >= 2) return this.saveBinLong(BigInt(v));
    this.writeBuffer(Buffer.from(`L${BigInt(v).toString()}L\n`, 'latin1')); // protocol 1 has only text LONG
  }

  private saveBinInt(v: number): void {
    const b = Buffer.alloc(5);
    b[0] = 0x4a; // BININT
    b.writeInt32LE(v, 1);
    this.emit(b);
  }

  private saveBinLong(v: bigint): void {
    const bytes = encodeLong(v);
    if (bytes.length < 256) this.write(0x8a, bytes.length); // LONG1
    else this.writeU32(0x8b, bytes.length); // LONG4
    this.writeBuffer(bytes);
  }

  private saveFloat(v: number): void {
    const b = Buffer.alloc(9);
    b[0] = 0x47; // BINFLOAT
    b.writeDoubleBE(v, 1);
    this.emit(b);
  }

  private saveStr(s: string): void {
    const key = this.fast ? null : sharedStringKey(s);
    if (this.saveMemoized(key)) return;
    const utf8 = encodeUtf8(s);
    this.writeU32(0x58, utf8.length); // BINUNICODE
    this.writeBuffer(utf8);
    this.memoize(key);
  }

  // -- bytes -----------------------------------------------------------------------------------

  private saveBytes(b: Uint8Array): void {
    const key = b.length === 0 ? EMPTY_BYTES_KEY : b;
    if (this.saveMemoized(key)) return;
    if (this.protocol >= 3) this.saveBinBytes(b);
    else if (b.length === 0) this.saveReducedEmptyBytes();
    else this.saveReducedBytes(b);
    this.memoize(key);
  }

  private saveBinBytes(b: Uint8Array): void {
    if (b.length <= 0xff) this.write(0x43, b.length); // SHORT_BINBYTES
    else this.writeU32(0x42, b.length); // BINBYTES
    this.writeBuffer(b);
  }

  /** `bytes()` REDUCE: how Python 3 writes b'' below protocol 3. */
  private saveReducedEmptyBytes(): void {
    this.saveGlobal('__builtin__', 'bytes', BYTES_KEY);
    this.write(0x29, 0x52); // EMPTY_TUPLE, REDUCE
  }

  /** `_codecs.encode(latin1 text, 'latin1')` REDUCE: how Python 3 writes bytes below protocol 3. */
  private saveReducedBytes(b: Uint8Array): void {
    this.saveGlobal('_codecs', 'encode', CODECS_ENCODE_KEY);
    if (this.protocol === 1) this.write(0x28); // MARK
    this.saveStr(Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('latin1'));
    this.saveLatin1Constant();
    this.write(this.protocol === 1 ? 0x74 : 0x86); // TUPLE / TUPLE2
    this.memoize(null);
    this.write(0x52); // REDUCE
  }

  /** CPython passes one interned 'latin1' object every time, so it is memoized once. */
  private saveLatin1Constant(): void {
    if (this.saveMemoized(this.fast ? null : LATIN1_KEY)) return;
    this.writeU32(0x58, 6);
    this.writeBuffer(Buffer.from('latin1', 'latin1'));
    this.memoize(LATIN1_KEY);
  }

  /** CPython memoizes a class or function once per pickle, whoever refers to it. */
  private saveGlobalValue(g: PickleGlobal): void {
    const qualified = `${g.module} ${g.name}`;
    let key = this.globalKeys.get(qualified);
    if (key === undefined) this.globalKeys.set(qualified, (key = { global: qualified }));
    const module = this.protocol < 3 ? (PY2_MODULE_OF.get(g.module) ?? g.module) : g.module;
    if (/\n/.test(module) || /\n/.test(g.name)) throw new PickleError('a global name holds a newline');
    this.saveGlobal(module, g.name, key);
  }

  /** As CPython's save_reduce: the callable, its arguments, REDUCE or NEWOBJ, the memo, then what was done to the object. */
  private saveBuiltObject(o: PickleObject): void {
    this.save(o.callable);
    this.save(o.args);
    this.write(o.kind === 'reduce' ? 0x52 : 0x81); // REDUCE / NEWOBJ
    this.memoize(o);
    for (const step of o.steps) {
      if (step.op === 'build') {
        this.save(step.state);
        this.write(0x62); // BUILD
        continue;
      }
      const batch = step.op === 'appends' || step.op === 'setitems';
      if (batch) this.write(0x28); // MARK
      for (const item of step.items) this.save(item);
      this.write({ append: 0x61, appends: 0x65, setitem: 0x73, setitems: 0x75 }[step.op]);
    }
  }

  private saveGlobal(module: string, name: string, key: object): void {
    if (this.saveMemoized(this.fast ? null : key)) return;
    this.writeBuffer(Buffer.from(`c${module}\n${name}\n`, 'latin1'));
    this.memoize(key);
  }

  // -- containers ------------------------------------------------------------------------------

  private saveTuple(t: PickleTuple<PickleWritable>): void {
    if (t.length === 0) return this.write(0x29); // EMPTY_TUPLE, never memoized
    const short = this.protocol >= 2 && t.length <= 3;
    if (!short) this.write(0x28); // MARK
    for (const item of t.items) this.save(item);
    this.write(short ? [0x85, 0x86, 0x87][t.length - 1]! : 0x74); // TUPLE1..3 / TUPLE
    this.memoize(t);
  }

  private saveList(list: readonly PickleWritable[]): void {
    this.write(0x5d); // EMPTY_LIST
    this.memoize(list);
    if (list.length === 1) {
      this.save(list[0]!);
      return this.write(0x61); // APPEND
    }
    for (let start = 0; start < list.length; start += BATCH_SIZE) {
      this.write(0x28); // MARK
      for (const item of list.slice(start, start + BATCH_SIZE)) this.save(item);
      this.write(0x65); // APPENDS
    }
  }

  /**
   * Like CPython's batch_dict_exact: one item is SETITEM; otherwise MARK…SETITEMS batches, and a
   * batch that ends exactly full is followed by an empty one (a quirk we must copy to be byte-exact).
   */
  private saveDict(key: object, entries: [unknown, PickleWritable][]): void {
    this.write(0x7d); // EMPTY_DICT
    this.memoize(key);
    if (entries.length === 1) {
      this.saveItem(entries[0]!);
      return this.write(0x73); // SETITEM
    }
    if (entries.length === 0) return;
    for (let start = 0; ; start += BATCH_SIZE) {
      const batch = entries.slice(start, start + BATCH_SIZE);
      this.write(0x28); // MARK
      for (const entry of batch) this.saveItem(entry);
      this.write(0x75); // SETITEMS
      if (batch.length < BATCH_SIZE) return;
    }
  }

  private saveItem([k, v]: [unknown, PickleWritable]): void {
    if (typeof k === 'string') this.saveStr(k);
    else if (isHashable(k)) this.save(k as PickleWritable);
    else throw new PickleError(`dict key is not a str: ${typeof k}`);
    this.save(v);
  }
}

/** Python's pickle.encode_long: minimal little-endian two's complement. */
function encodeLong(v: bigint): Buffer {
  if (v === 0n) return Buffer.alloc(0);
  const magnitude = v < 0n ? -v : v;
  const n = (magnitude.toString(2).length >> 3) + 1;
  const twos = v < 0n ? (1n << BigInt(8 * n)) + v : v;
  const bytes = Buffer.from(twos.toString(16).padStart(2 * n, '0'), 'hex').reverse();
  const trim = v < 0n && n > 1 && bytes[n - 1] === 0xff && (bytes[n - 2]! & 0x80) !== 0;
  return trim ? bytes.subarray(0, n - 1) : bytes;
}
