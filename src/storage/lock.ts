// The `<file>.lock` lock file, taken with flock(LOCK_EX|LOCK_NB) like
// zc.lockfile (which Python ZODB uses), so our processes and ZODB's exclude
// each other. The lock is released when the descriptor closes.

import { closeSync, openSync, writeSync, ftruncateSync } from 'node:fs';
import { createRequire } from 'node:module';
import { hostname } from 'node:os';
import { LockedError } from '../errors.js';

const require = createRequire(import.meta.url);
const { flockSync } = require('fs-ext') as { flockSync(fd: number, flags: 'exnb' | 'un'): void };

export class LockFile {
  private constructor(readonly path: string, private fd: number | null) {}

  /** Take the lock or throw LockedError naming the file. */
  static acquire(path: string): LockFile {
    const fd = openSync(path, 'a+');
    try {
      flockSync(fd, 'exnb');
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
