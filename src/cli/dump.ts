// `zrs dump FILE`: every transaction and data record, in the format of
// ZODB's fsdump (ZODB.FileStorage.fsdump), so the two can be diffed. Reads
// through a read-only FileStorage, so, like ZODB's FileIterator, it stops
// before an unfinished or damaged last transaction. A file the storage will
// not open (damage with intact transactions after it) is opened again to
// stop at the damage, as fsdump's reading stops there: the transactions
// before it are listed, then the damage is named (exit 1).

import { CorruptedDataError } from '../errors.js';
import { FileStorage } from '../storage/FileStorage.js';
import { TXN_HEADER_BYTES } from '../storage/format.js';
import { tidToString } from '../storage/timestamp.js';
import type { CommandSpec } from './args.js';
import { EXIT_FAILURE, EXIT_OK, type CliIo } from './io.js';
import { pickleClass } from './pickleClass.js';
import { printable } from './logging.js';

export const dumpSpec: CommandSpec = {
  name: 'dump',
  positionals: ['FILE'],
  flags: [],
  summary: 'List the transactions and data records of a Data.fs, like ZODB\'s fsdump.',
  description: `
For each transaction: its number, tid, time, the offset of its first data
record, status, user and description; for each record: oid, data size,
class (read from the pickle without unpickling it) and, for a backpointer,
the tid of the record it points at (bp=). The file is opened read-only and
may be in use by a running server. A file damaged before its end is listed
up to the damage, which is then named on stderr (exit 1).

example:
  zrs dump /var/db/Data.fs | less`,
};

/** Flush the text buffer to stdout once it holds this many characters. */
const FLUSH_CHARS = 64 * 1024;

export async function dump(path: string, io: CliIo): Promise<number> {
  let fs: FileStorage;
  let damage: CorruptedDataError | null = null;
  try {
    fs = await FileStorage.open(path, { readOnly: true });
  } catch (err) {
    if (!(err instanceof CorruptedDataError)) throw err;
    // The same checks, stopping where they failed: what precedes the damage is listed.
    damage = err;
    fs = await FileStorage.open(path, { readOnly: true, stopAtDamage: true });
  }
  let buf = '';
  const line = async (text: string): Promise<void> => {
    buf += `${text}\n`;
    if (buf.length >= FLUSH_CHARS) {
      const out = buf;
      buf = '';
      await io.out(out);
    }
  };
  try {
    let i = 0;
    for await (const t of fs.iterator()) {
      const offset = t.pos + TXN_HEADER_BYTES + t.user.length + t.description.length + t.extensionBytes.length;
      await line(`Trans #${pad5(i++)} tid=${t.tid.toString('hex')} time=${tidToString(t.tid)} offset=${offset}`);
      await line(`    status=${pyStrRepr(t.status)} user=${pyBytesRepr(t.user)} description=${pyBytesRepr(t.description)}`);
      let j = 0;
      for (const r of t.records) {
        let size = '';
        let cls = 'undo or abort of object creation';
        if (r.data !== null) {
          const [module, name] = pickleClass(r.data);
          size = ` size=${r.data.length}`;
          cls = `${module}.${name}`;
        }
        const bp = r.dataTxn ? ` bp=${r.dataTxn.toString('hex')}` : '';
        await line(`  data #${pad5(j++)} oid=${r.oid.toString('hex')}${size} class=${cls}${bp}`);
      }
    }
    if (buf) await io.out(buf);
    if (damage) {
      io.err(`zrs dump: ${printable(damage.message)} (listed up to it; zrs verify ${path} tells more)\n`);
      return EXIT_FAILURE;
    }
    // Silence here would read as "that is all the file holds".
    const tail = fs.unreadTailOnOpen;
    if (tail) io.err(`zrs dump: ${path}: stopped at offset ${tail.pos}, before the end of the data: ${tail.reason} (a transaction still being committed, or damage: zrs verify ${path} tells)\n`);
  } finally {
    await fs.close();
  }
  return EXIT_OK;
}

function pad5(n: number): string {
  return String(n).padStart(5, '0');
}

/** Python's repr() of a bytes object. */
export function pyBytesRepr(b: Uint8Array): string {
  return `b${quoted(Array.from(b), b.includes(0x27) && !b.includes(0x22))}`;
}

/** Python's repr() of a short str of Latin-1 characters (the status byte). */
export function pyStrRepr(s: string): string {
  const codes = Array.from(s, (c) => c.charCodeAt(0));
  return quoted(codes, s.includes("'") && !s.includes('"'), true);
}

function quoted(codes: number[], useDouble: boolean, isStr = false): string {
  const q = useDouble ? 0x22 : 0x27;
  let out = String.fromCharCode(q);
  for (const c of codes) {
    if (c === q || c === 0x5c) out += `\\${String.fromCharCode(c)}`;
    else if (c === 0x09) out += '\\t';
    else if (c === 0x0a) out += '\\n';
    else if (c === 0x0d) out += '\\r';
    else if (c < 0x20 || c === 0x7f || (c > 0x7f && !(isStr && c >= 0xa1 && c !== 0xad))) out += `\\x${c.toString(16).padStart(2, '0')}`;
    else out += String.fromCharCode(c);
  }
  return out + String.fromCharCode(q);
}
