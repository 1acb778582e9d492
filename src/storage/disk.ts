// The data file's disk I/O as a port: positional writes, truncation and
// datasync. FileStorage writes through it, so a simulator can make the disk
// slow or full; the default is node:fs. Writes and truncation stay
// synchronous (as the storage does them); datasync is asynchronous.

import { fdatasync, fdatasyncSync, ftruncateSync, writeSync } from 'node:fs';
import { IO_CALL_MAX_BYTES } from './fileio.js';

/**
 * What FileStorage needs from a disk for its data file.
 *
 * @example
 * const disk: StorageDisk = { ...nodeDisk, datasync: async (fd) => { await nodeDisk.datasync(fd); metrics.syncs += 1; } };
 * const fs = await FileStorage.open('Data.fs', { create: true, disk });
 */
export interface StorageDisk {
  /** Write all of `buf` at `pos`; throws (e.g. code 'ENOSPC') when it cannot. */
  write(fd: number, buf: Buffer, pos: number): void;
  /** Cut the file to `length` bytes. */
  truncate(fd: number, length: number): void;
  /** Resolve once every byte written so far is on stable storage. */
  datasync(fd: number): Promise<void>;
  /** The same, in the calling thread (optional: without it every sync is asynchronous). */
  datasyncSync?(fd: number): void;
}

/** The real disk: node:fs. */
export const nodeDisk: StorageDisk = {
  write(fd, buf, pos) {
    let off = 0;
    while (off < buf.length) off += writeSync(fd, buf, off, Math.min(buf.length - off, IO_CALL_MAX_BYTES), pos + off);
  },
  truncate(fd, length) {
    ftruncateSync(fd, length);
  },
  datasync(fd) {
    return new Promise<void>((resolve, reject) => fdatasync(fd, (err) => (err ? reject(err) : resolve())));
  },
  datasyncSync(fd) {
    fdatasyncSync(fd);
  },
};
