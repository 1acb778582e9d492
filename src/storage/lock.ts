// The `<file>.lock` lock file, taken with flock(LOCK_EX|LOCK_NB) like
// zc.lockfile (which Python ZODB uses), so our processes and ZODB's exclude
// each other. The lock is released when the descriptor closes.

import { closeSync, openSync, writeSync, ftruncateSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { hostname } from 'node:os';
import { LockedError, ZrsError } from '../errors.js';

type Flock = (fd: number, flags: 'exnb' | 'un') => void;

/**
 * fs-ext's flockSync, loaded when a lock is first taken: a process that
 * takes none (a simulation, reads of a file opened read-only) runs where
 * the native addon could not be built.
 */
let flockSync: Flock | null = null;

function flock(path: string): Flock {
  if (flockSync === null) {
    try {
      flockSync = (createRequire(import.meta.url)('fs-ext') as { flockSync: Flock }).flockSync;
    } catch (err) {
      throw new ZrsError(`cannot lock ${path}: the fs-ext native addon did not load (\`npm rebuild fs-ext\` builds it): ${(err as Error).message}`, { cause: err });
    }
  }
  return flockSync;
}

export class LockFile {
  private constructor(readonly path: string, private fd: number | null) {}

  /** Take the lock or throw LockedError naming the file. */
  static acquire(path: string): LockFile {
    const lock = flock(path);
    const fd = openSync(path, 'a+');
    try {
      lock(fd, 'exnb');
    } catch (err) {
      closeSync(fd);
      throw new LockedError(path, { cause: err });
    }
    // Like zc.lockfile: the content is informational (pid and host); failing to write it releases the lock.
    try {
      ftruncateSync(fd, 0);
      writeSync(fd, ` ${process.pid} ${hostname()}\n`, 0);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
    return new LockFile(path, fd);
  }

  release(): void {
    if (this.fd === null) return;
    const fd = this.fd;
    this.fd = null;
    closeSync(fd);
  }
}

/**
 * Whether some process may hold the lock of `lockPath` (a storage has its
 * data file open for writing), looked up without taking it: taking it even
 * for a moment could make a storage opening then fail as locked. Reads
 * Linux's /proc/locks for a lock on the file's inode; false when there is
 * no lock file, true when it cannot tell.
 */
export async function lockMayBeHeld(lockPath: string): Promise<boolean> {
  let ino: bigint;
  try {
    ino = (await stat(lockPath, { bigint: true })).ino;
  } catch {
    return false;
  }
  let locks: string;
  try {
    locks = await readFile('/proc/locks', 'latin1');
  } catch {
    return true;
  }
  // Lines like "1: FLOCK  ADVISORY  WRITE 4711 08:01:1234567 0 EOF": the sixth field is device:inode. Only the
  // inode is compared: a lock on the same inode of another device makes the file look in use, which costs a wait.
  return locks.split('\n').some((line) => {
    const at = /\s[0-9a-f]+:[0-9a-f]+:(\d+)\s/.exec(line);
    return at !== null && BigInt(at[1]!) === ino;
  });
}
