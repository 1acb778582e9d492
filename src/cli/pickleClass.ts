// The class of a ZODB data record, read from its first pickle without
// unpickling anything, following ZODB.utils.get_pickle_metadata: strip the
// protocol opcode, take a leading GLOBAL (`c` or `(c`) as module and class;
// otherwise walk a few opcodes (strings, tuples, STACK_GLOBAL, memo) up to
// the first STOP. Anything else gives ['', ''] (fsdump then prints "class=.").

type Value = string | null | { module: string; name: string } | Value[];

/** Most opcodes looked at before giving up (class pickles are tiny). */
const MAX_OPCODES = 64;

/** [module, class] of a record's first pickle, or ['', ''] when it has none we can read. */
export function pickleClass(data: Buffer): [string, string] {
  let d = data;
  if (d.length >= 2 && d[0] === 0x80) d = d.subarray(2);
  const prefix = d[0] === 0x63 ? 1 : d[0] === 0x28 && d[1] === 0x63 ? 2 : 0;
  if (prefix) {
    const first = d.indexOf(0x0a, prefix);
    const second = first < 0 ? -1 : d.indexOf(0x0a, first + 1);
    if (second < 0) return ['', ''];
    const module = utf8(d.subarray(prefix, first));
    const name = utf8(d.subarray(first + 1, second));
    return module === null || name === null ? ['', ''] : [module, name];
  }
  return fromValue(walk(d));
}

function fromValue(v: Value | undefined): [string, string] {
  if (v && typeof v === 'object' && !Array.isArray(v)) return [v.module, v.name];
  if (Array.isArray(v)) {
    const first = v[0];
    if (first && typeof first === 'object' && !Array.isArray(first)) return [first.module, first.name];
    const pair = Array.isArray(first) ? first : v;
    if (pair.length === 2 && typeof pair[0] === 'string' && typeof pair[1] === 'string') return [pair[0], pair[1]];
  }
  return ['', ''];
}

function utf8(b: Buffer): string | null {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(b);
  } catch {
    return null;
  }
}

/** Evaluate the small opcode subset class pickles use; undefined on anything else. */
function walk(d: Buffer): Value | undefined {
  const stack: Array<Value | typeof MARK> = [];
  const memo: Value[] = [];
  let p = 0;
  const need = (n: number): boolean => p + n <= d.length;
  const popMark = (): Value[] | undefined => {
    const i = stack.lastIndexOf(MARK);
    if (i < 0) return undefined;
    const items = stack.splice(i).slice(1) as Value[];
    return items;
  };
  const top = (): Value | undefined => {
    const v = stack[stack.length - 1];
    return v === MARK ? undefined : v;
  };
  for (let n = 0; n < MAX_OPCODES && p < d.length; n++) {
    const op = d[p++]!;
    switch (op) {
      case 0x2e: // STOP
        return top();
      case 0x95: // FRAME
        p += 8;
        break;
      case 0x80: // PROTO
        p += 1;
        break;
      case 0x28: // MARK
        stack.push(MARK);
        break;
      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x29: // EMPTY_TUPLE
        stack.push([]);
        break;
      case 0x74: {
        // TUPLE
        const items = popMark();
        if (!items) return undefined;
        stack.push(items);
        break;
      }
      case 0x85:
      case 0x86:
      case 0x87: {
        // TUPLE1..3
        const k = op - 0x84;
        if (stack.length < k) return undefined;
        const items = stack.splice(stack.length - k) as Value[];
        if (items.includes(MARK as never)) return undefined;
        stack.push(items);
        break;
      }
      case 0x8c: // SHORT_BINUNICODE
      case 0x55: {
        // SHORT_BINSTRING
        if (!need(1)) return undefined;
        const len = d[p]!;
        p += 1;
        if (!need(len)) return undefined;
        const s = utf8(d.subarray(p, (p += len)));
        if (s === null) return undefined;
        stack.push(s);
        break;
      }
      case 0x58: // BINUNICODE
      case 0x54: {
        // BINSTRING
        if (!need(4)) return undefined;
        const len = d.readUInt32LE(p);
        p += 4;
        if (!need(len)) return undefined;
        const s = utf8(d.subarray(p, (p += len)));
        if (s === null) return undefined;
        stack.push(s);
        break;
      }
      case 0x93: {
        // STACK_GLOBAL
        const name = stack.pop();
        const module = stack.pop();
        if (typeof name !== 'string' || typeof module !== 'string') return undefined;
        stack.push({ module, name });
        break;
      }
      case 0x63: {
        // GLOBAL
        const a = d.indexOf(0x0a, p);
        const b = a < 0 ? -1 : d.indexOf(0x0a, a + 1);
        if (b < 0) return undefined;
        const module = utf8(d.subarray(p, a));
        const name = utf8(d.subarray(a + 1, b));
        if (module === null || name === null) return undefined;
        stack.push({ module, name });
        p = b + 1;
        break;
      }
      case 0x94: {
        // MEMOIZE
        const v = top();
        if (v === undefined) return undefined;
        memo.push(v);
        break;
      }
      case 0x71: // BINPUT
      case 0x72: {
        // LONG_BINPUT
        const size = op === 0x71 ? 1 : 4;
        if (!need(size)) return undefined;
        const idx = size === 1 ? d[p]! : d.readUInt32LE(p);
        p += size;
        const v = top();
        if (v === undefined) return undefined;
        memo[idx] = v;
        break;
      }
      case 0x68: // BINGET
      case 0x6a: {
        // LONG_BINGET
        const size = op === 0x68 ? 1 : 4;
        if (!need(size)) return undefined;
        const idx = size === 1 ? d[p]! : d.readUInt32LE(p);
        p += size;
        const v = memo[idx];
        if (v === undefined) return undefined;
        stack.push(v);
        break;
      }
      default:
        return undefined;
    }
  }
  return undefined;
}

const MARK = Symbol('mark');
