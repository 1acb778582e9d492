// A blob directory in ZODB's "bushy" layout: one directory per oid byte
// (`0x00/…/0x02`), files named `0x<tid hex>.blob`, a `.layout` file saying
// `bushy`, and a `tmp/` area for files not yet committed. Committed blob
// files are never changed (they are made read-only, as ZODB makes them);
// only an aborted transaction's files are removed.

import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { access, chmod, copyFile, lstat, mkdir, open, readdir, readFile, rename, rm, stat, unlink } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { syncDirectory, writeFileSynced } from './fileio.js';
import { POSKeyError, ZrsError } from '../errors.js';

const LAYOUT = 'bushy';

const BLOB_MARKER = Buffer.from('ZODB.blob', 'latin1');
const BLOB_GLOBAL = Buffer.from('cZODB.blob\nBlob\n', 'latin1');

/** Past a memo opcode at `p` (BINPUT, LONG_BINPUT, MEMOIZE, PUT), or `p` itself when there is none; -1: a PUT with no end. */
function afterMemo(data: Buffer, p: number): number {
  switch (data[p]) {
    case 0x71: // BINPUT n
      return p + 2;
    case 0x72: // LONG_BINPUT n
      return p + 5;
    case 0x94: // MEMOIZE
      return p + 1;
    case 0x70: {
      // PUT n\n
      const nl = data.indexOf(0x0a, p);
      return nl < 0 ? -1 : nl + 1;
    }
    default:
      return p;
  }
}

/** Past the string `text` at `p` (SHORT_BINUNICODE or BINUNICODE) and its memo opcode, or -1. */
function afterName(data: Buffer, p: number, text: string): number {
  let at: number;
  if (data[p] === 0x8c && data[p + 1] === text.length) at = p + 2;
  else if (data[p] === 0x58 && p + 5 <= data.length && data.readUInt32LE(p + 1) === text.length) at = p + 5;
  else return -1;
  return data.toString('latin1', at, at + text.length) === text ? afterMemo(data, at + text.length) : -1;
}

/**
 * Whether a record's data is a ZODB blob record: its first (class) pickle is the class
 * ZODB.blob.Blob itself, as ZODB.blob.is_blob_record decides, written by any pickle protocol
 * (GLOBAL up to protocol 3; from 4, the module and class names, then STACK_GLOBAL). A record that
 * merely refers to a blob (a persistent reference `(oid, ZODB.blob.Blob)` in its state) is not one.
 */
export function isBlobRecord(data: Buffer | null): boolean {
  if (data === null || data.length >= 4096 || !data.includes(BLOB_MARKER)) return false;
  let p = data[0] === 0x80 ? 2 : 0; // PROTO n
  if (data[p] === 0x95) p += 9; // FRAME n
  if (data.subarray(p, p + BLOB_GLOBAL.length).equals(BLOB_GLOBAL)) p += BLOB_GLOBAL.length;
  else {
    p = afterName(data, p, 'ZODB.blob');
    if (p >= 0) p = afterName(data, p, 'Blob');
    if (p < 0 || data[p] !== 0x93) return false; // STACK_GLOBAL
    p += 1;
  }
  p = afterMemo(data, p);
  return p >= 0 && data[p] === 0x2e; // STOP: the class alone
}


export interface PlacedBlob {
  oid: Buffer;
  tid: Buffer;
  stagedPath: string;
}

/**
 * A staging file whose status last changed this long ago (its writing, or its
 * rename into tmp/) belongs to no transaction still in progress: see
 * BlobDirectory.open.
 */
export const STALE_STAGING_MS = 60 * 60 * 1000;

/** The names tempPath gives. Files of other writers of tmp/ (ZODB clients share it) are never touched. */
const STAGING_NAME = /^[0-9a-f]{16}\.tmp$/;

export class BlobDirectory {
  /** Staging files a writable open removed (see open); null for a read-only open. */
  staleStagingRemoved: { files: number; bytes: number } | null = null;

  private constructor(readonly root: string) {}

  /**
   * Open (`create`: for writing, making it if need be). A writable open
   * removes the staging files in tmp/ that no transaction can still be
   * using: named as this library names them, and unchanged since before
   * `staleBeforeMs` (default: STALE_STAGING_MS ago). A process killed in the
   * middle of a commit, or a secondary in the middle of receiving blobs,
   * leaves them; nothing else would ever remove them. The age keeps the
   * files of another storage sharing the directory safe while it commits.
   */
  static async open(root: string, options: { create: boolean; staleBeforeMs?: number }): Promise<BlobDirectory> {
    const layoutPath = join(root, '.layout');
    let layout: string | null = null;
    try {
      layout = (await readFile(layoutPath, 'latin1')).trim();
    } catch {
      layout = null;
    }
    if (layout === null) {
      const entries = await readdir(root).catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT' && options.create) return [];
        if (err.code === 'ENOENT') throw new ZrsError(`blob directory ${root} does not exist`);
        throw err;
      });
      // ZODB takes an unmarked directory holding files for the "lawn" layout (its
      // auto_layout_select); read as bushy, every blob in it would be missing. Our own
      // unmarked leftover (a crash between making tmp/ and writing the marker) holds tmp/ alone.
      const used = entries.find((name) => !name.startsWith('.') && name !== 'tmp');
      if (used !== undefined) {
        throw new ZrsError(
          `blob directory ${root} has no .layout file but holds ${JSON.stringify(used)}: ZODB reads it as the "lawn" layout, and only "bushy" is supported (ZODB's migrateblobs script converts it)`,
        );
      }
      if (options.create) {
        const tmp = join(root, 'tmp');
        const made = await mkdir(tmp, { recursive: true, mode: 0o700 });
        // The new names are durable before a blob is placed under them: the layout file, and every
        // directory made, up to the first one that existed.
        const changed = new Set(directoriesGaining(tmp, made));
        if (await createDurably(layoutPath, LAYOUT)) changed.add(resolve(root));
        for (const d of changed) await syncDirectory(d);
      }
    } else if (layout !== LAYOUT) {
      throw new ZrsError(`blob directory ${root} uses layout ${JSON.stringify(layout)}; only "bushy" is supported`);
    } else if (options.create) {
      await mkdir(join(root, 'tmp'), { recursive: true, mode: 0o700 });
    }
    const dir = new BlobDirectory(root);
    if (options.create) dir.staleStagingRemoved = await removeStaleStaging(join(root, 'tmp'), options.staleBeforeMs ?? Date.now() - STALE_STAGING_MS);
    return dir;
  }

  /** Directory holding every revision of an oid. */
  oidDir(oid: Buffer): string {
    const parts: string[] = [];
    for (const byte of oid) parts.push(`0x${byte.toString(16).padStart(2, '0')}`);
    return join(this.root, ...parts);
  }

  /** Where the revision `tid` of `oid` lives once committed. */
  pathFor(oid: Buffer, tid: Buffer): string {
    return join(this.oidDir(oid), `0x${tid.toString('hex')}.blob`);
  }

  /** A fresh path in the blob temp area (same filesystem, so renames are atomic). */
  tempPath(): string {
    return join(this.root, 'tmp', `${randomBytes(8).toString('hex')}.tmp`);
  }

  /** Move a caller's file into the temp area (copy when it is on another filesystem). */
  async stage(sourcePath: string): Promise<string> {
    const staged = this.tempPath();
    try {
      await rename(sourcePath, staged);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
      await copyFile(sourcePath, staged, constants.COPYFILE_EXCL);
      try {
        await rm(sourcePath, { force: true });
      } catch (rmErr) {
        // Not moved after all: the caller keeps its file, and no copy is left in tmp/ for nobody.
        await rm(staged, { force: true }).catch(() => undefined);
        throw rmErr;
      }
    }
    return staged;
  }

  /** Copy a committed blob file into the temp area (it stays unchanged). */
  async stageCopy(sourcePath: string): Promise<string> {
    const staged = this.tempPath();
    await copyFile(sourcePath, staged, constants.COPYFILE_EXCL);
    return staged;
  }

  /**
   * Put staged files at their committed paths (called while the transaction
   * is voted). With `fsync`, each file and the directory entries that now
   * lead to it are durable when this resolves: the transaction's commit may
   * be reported right after. When one cannot be placed, those already placed
   * are removed again (the transaction will be aborted).
   */
  async place(blobs: PlacedBlob[], fsync: boolean): Promise<string[]> {
    const placed: string[] = [];
    /** Directories whose entries changed: each oid directory, and the parents of new ones. */
    const changed = new Set<string>();
    try {
      for (const b of blobs) {
        const target = this.pathFor(b.oid, b.tid);
        const dir = this.oidDir(b.oid);
        const firstCreated = await mkdir(dir, { recursive: true, mode: 0o700 });
        // Committed revisions are never changed: read-only, as ZODB leaves them.
        const { mode } = await stat(b.stagedPath);
        await chmod(b.stagedPath, mode & ~0o222);
        if (fsync) {
          await syncFile(b.stagedPath);
          changed.add(resolve(dir));
          for (const d of directoriesGaining(dir, firstCreated)) changed.add(d);
        }
        await rename(b.stagedPath, target);
        placed.push(target);
      }
      for (const d of changed) await syncDirectory(d);
    } catch (err) {
      // The error that stopped the placing is the one to report, even if removing the files placed fails too.
      await this.discard(placed).catch(() => undefined);
      throw err;
    }
    return placed;
  }

  /** Remove files of an aborted transaction (staged or already placed). */
  async discard(paths: string[]): Promise<void> {
    await Promise.all(paths.map((p) => rm(p, { force: true })));
  }

  /** Path of a committed revision, or POSKeyError when the file is missing. */
  async committedPath(oid: Buffer, tid: Buffer): Promise<string> {
    const path = this.pathFor(oid, tid);
    try {
      await access(path);
    } catch {
      throw new POSKeyError(Buffer.from(oid), Buffer.from(tid));
    }
    return path;
  }
}

async function syncFile(path: string): Promise<void> {
  const h = await open(path, 'r');
  try {
    await h.sync();
  } finally {
    await h.close();
  }
}

/**
 * The directories that gained an entry when `mkdir(dir, { recursive: true })`
 * made `firstCreated` (its result) and the ones below it: the parent of each
 * new directory. None when nothing was made.
 */
function directoriesGaining(dir: string, firstCreated: string | undefined): string[] {
  if (firstCreated === undefined) return [];
  const out: string[] = [];
  const stop = dirname(resolve(firstCreated));
  for (let d = resolve(dir); d !== stop && dirname(d) !== d; d = dirname(d)) out.push(dirname(d));
  return out;
}

/** Create `path` holding `content`, synced (see writeFileSynced); false when it exists already. */
async function createDurably(path: string, content: string): Promise<boolean> {
  try {
    await writeFileSynced(path, [Buffer.from(content, 'latin1')], 'wx');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  }
  return true;
}

/** Remove the staging files of `tmp` named as tempPath names them and unchanged since before `beforeMs`; one that cannot be removed stays. */
async function removeStaleStaging(tmp: string, beforeMs: number): Promise<{ files: number; bytes: number }> {
  const removed = { files: 0, bytes: 0 };
  for (const name of await readdir(tmp).catch(() => [] as string[])) {
    if (!STAGING_NAME.test(name)) continue;
    const path = join(tmp, name);
    const st = await lstat(path).catch(() => null);
    if (st === null || !st.isFile() || st.ctimeMs >= beforeMs) continue;
    try {
      await unlink(path);
    } catch {
      continue;
    }
    removed.files += 1;
    removed.bytes += st.size;
  }
  return removed;
}
