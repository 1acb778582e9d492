// File access for the storage: a sync pread for random access (loads hit
// the page cache; a thread-pool hop would cost more than the read), a
// windowed sequential reader for scans and iteration, opening a file to read
// it whole with errors that name it, and syncing a directory after a rename.

import { fstatSync, readSync } from 'node:fs';
import { open, rm, stat, type FileHandle } from 'node:fs/promises';
import { ZrsError } from '../errors.js';
import { readU64At } from './format.js';

/**
 * Open a file to read it whole (a data file, an audit log), refusing a
 * missing file or a directory with a message naming the path (the plain
 * errors of open and read name only the call, or nothing). A missing file's
 * error keeps the code 'ENOENT', so callers may still tell it apart.
 */
export async function openFileToRead(path: string): Promise<FileHandle> {
  if ((await pathKind(path)) === 'other') throw new ZrsError(`${path}: not a regular file`);
  let handle: FileHandle;
  try {
    handle = await open(path, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw Object.assign(new ZrsError(`${path}: no such file`, { cause: err }), { code: 'ENOENT' });
    throw err;
  }
  if ((await handle.stat()).isDirectory()) {
    await handle.close();
    throw new ZrsError(`${path}: a directory, not a file`);
  }
  return handle;
}

/**
 * What is at `path`, looked at before opening it: a FIFO would block the
 * open until something writes to it, and a device or a pipe cannot be read
 * at positions ('other' is any of those).
 */
export async function pathKind(path: string): Promise<'file' | 'directory' | 'other' | 'missing'> {
  // Only a name that leads nowhere is missing: any other failure (a name too long, a loop of links, no
  // permission) is said as it is, not as a missing file (which a caller may go on to create).
  const found = await stat(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT' || err.code === 'ENOTDIR') return null;
    throw err;
  });
  return found === null ? 'missing' : found.isFile() ? 'file' : found.isDirectory() ? 'directory' : 'other';
}

/**
 * Refuse an empty file where an existing storage is wanted (promote, rewind):
 * an open for writing would make it a new, empty storage, which is never
 * what a command given an existing data file means.
 */
export async function refuseEmptyStorage(path: string): Promise<void> {
  const found = await stat(path).catch(() => null);
  if (found?.isFile() && found.size === 0) throw new ZrsError(`${path}: an empty file, not a storage (a data file holds at least its 4-byte magic)`);
}

/**
 * The open file's size, and a token that changes when the file is written:
 * the size and the modification and change times to the nanosecond (a
 * writer overwriting fill keeps the size, and a millisecond time can miss a
 * change). One fstat for both.
 */
export function fileState(fd: number): { size: number; version: string } {
  const s = fstatSync(fd, { bigint: true });
  return { size: Number(s.size), version: `${s.size}/${s.mtimeNs}/${s.ctimeNs}` };
}

/**
 * The most one read or write call is given: Node takes at most 2^31 - 1
 * bytes a call (a longer positional read of a FileHandle aborts the
 * process), and a record or transaction may be longer.
 */
export const IO_CALL_MAX_BYTES = 1 << 30;

/** Read exactly `length` bytes at `pos`, or fewer only at end of file. */
export function preadSync(fd: number, pos: number, length: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  let got = 0;
  while (got < length) {
    const n = readSync(fd, out, got, Math.min(length - got, IO_CALL_MAX_BYTES), pos + got);
    if (n === 0) break;
    got += n;
  }
  return got === length ? out : out.subarray(0, got);
}

/**
 * A forward-moving window over a file: `has(pos, len)` says whether the bytes
 * are buffered, `fill(pos, len)` reads a new window starting at `pos`, and
 * `view(pos, len)` returns a view (valid until the next fill).
 */
export class WindowReader {
  private buf: Buffer;
  private start = 0;
  private end = 0;

  constructor(
    private readonly handle: FileHandle,
    private readonly windowBytes = 4 * 1024 * 1024,
    /** Where the readable bytes end (when known): windows are not made larger than that. */
    private readonly fileEnd: (() => number) | null = null,
    /** Where windows come from and go when replaced; without one, each window is a new buffer. */
    private readonly recycler: WindowRecycler | null = null,
  ) {
    // Nothing until the first fill, which allocates the window it reads.
    this.buf = Buffer.alloc(0);
  }

  has(pos: number, length: number): boolean {
    return pos >= this.start && pos + length <= this.end;
  }

  /** Read a window starting at `pos` holding at least `length` bytes (fewer at EOF). */
  async fill(pos: number, length: number): Promise<void> {
    const readable = this.fileEnd ? this.fileEnd() - pos : this.windowBytes;
    const want = Math.max(length, Math.min(this.windowBytes, readable));
    // A fresh buffer (or one the recycler says nothing refers to any more): views handed out earlier stay valid.
    const old = this.buf;
    this.buf = this.recycler ? this.recycler.take(want) : Buffer.allocUnsafe(want);
    this.recycler?.retire(old);
    let got = 0;
    while (got < want) {
      const { bytesRead } = await this.handle.read(this.buf, got, Math.min(want - got, IO_CALL_MAX_BYTES), pos + got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    this.start = pos;
    this.end = pos + got;
  }

  /** Bytes available from `pos` in the window. */
  available(pos: number): number {
    return pos >= this.start && pos <= this.end ? this.end - pos : 0;
  }

  /** The u64 at file position `pos`, which the window holds. */
  u64At(pos: number): number {
    return readU64At(this.buf, pos - this.start);
  }

  view(pos: number, length: number): Buffer {
    return this.buf.subarray(pos - this.start, pos - this.start + length);
  }

  /** Forget the window (the file changed under it). */
  reset(): void {
    this.start = 0;
    this.end = 0;
  }
}

/**
 * Buffers for a WindowReader's windows, reused instead of allocated anew:
 * a stream of fresh megabyte windows (one per catch-up step) starts a major
 * collection every few hundred milliseconds. A window replaced by the next
 * one is retired; retired windows become free for reuse at the next fill
 * after it, and only when `released()` says that nothing refers to their
 * bytes any more (the owner's sends have left its socket, and it keeps no
 * view of them). At most `keep` free windows are kept.
 */
export class WindowRecycler {
  private retired: Buffer[] = [];
  private free: Buffer[] = [];

  constructor(
    private readonly released: () => boolean,
    private readonly keep = 2,
  ) {}

  /** A buffer of `size` bytes for the next window. */
  take(size: number): Buffer {
    if (this.retired.length > 0 && this.released()) {
      for (const b of this.retired) if (this.free.length < this.keep) this.free.push(b);
      this.retired = [];
    }
    const i = this.free.findIndex((b) => b.length === size);
    return i < 0 ? Buffer.allocUnsafe(size) : this.free.splice(i, 1)[0]!;
  }

  /** `buf` is no longer the current window (reused only after a later take() finds it released). */
  retire(buf: Buffer): void {
    if (buf.length > 0) this.retired.push(buf);
  }
}

/**
 * Write all of `bytes` at `position` (null: at the file's current position),
 * writing again what a write did not take (a disk filling up, a file size
 * limit take part of a write and refuse the next); a write that takes
 * nothing fails. A short write left unnoticed is a file silently missing
 * its end. Returns the bytes written, `bytes.length`.
 */
export async function writeFully(handle: FileHandle, bytes: Uint8Array, position: number | null, path: string): Promise<number> {
  for (let done = 0; done < bytes.length; ) {
    const { bytesWritten } = await handle.write(bytes, done, Math.min(bytes.length - done, IO_CALL_MAX_BYTES), position === null ? null : position + done);
    if (bytesWritten === 0) throw new ZrsError(`${path}: the file took none of ${bytes.length - done} bytes written to it`);
    done += bytesWritten;
  }
  return bytes.length;
}

/**
 * Create (`wx`: refusing one that exists, EEXIST) or replace (`w`) the file
 * at `path` holding `parts` one after the other, synced. A write or sync
 * that fails removes the file: left empty or partial, it would pass for its
 * content later (a layout marker, a kept tail, an index).
 */
export async function writeFileSynced(path: string, parts: Iterable<Uint8Array>, flags: 'w' | 'wx'): Promise<void> {
  const handle = await open(path, flags);
  try {
    let at = 0;
    for (const part of parts) at += await writeFully(handle, part, at, path);
    await handle.sync();
  } catch (err) {
    await handle.close().catch(() => undefined);
    await rm(path, { force: true }).catch(() => undefined);
    throw err;
  }
  await handle.close();
}

/** What a file system or platform that cannot sync a directory answers (the rename is still atomic there). */
const DIRECTORY_SYNC_UNSUPPORTED = new Set(['EINVAL', 'ENOTSUP', 'EOPNOTSUPP', 'EISDIR', 'EPERM']);

/**
 * fsync a directory so a rename in it is durable. Where that is not
 * supported it does nothing; any other failure (EIO, EMFILE …) is thrown:
 * the rename's durability is then unknown, and nobody may report it durable.
 */
export async function syncDirectory(dir: string): Promise<void> {
  let h;
  try {
    h = await open(dir, 'r');
    await h.sync();
  } catch (err) {
    if (!DIRECTORY_SYNC_UNSUPPORTED.has((err as NodeJS.ErrnoException).code ?? '')) throw err;
  } finally {
    await h?.close();
  }
}
