// Stand in for the disk under FileHandle.write: every file handle's write
// goes through `replace` (given the real write) until `restore()`, so a test
// can make writes short, fail, or take nothing, as a full disk does.

import { open } from 'node:fs/promises';
import { join } from 'node:path';

/** FileHandle.write(buffer, offset, length, position) as the code under test calls it. */
export type HandleWrite = (this: unknown, buffer: Uint8Array, offset: number, length: number, position: number | null) => Promise<{ bytesWritten: number; buffer: Uint8Array }>;

/** Route every FileHandle.write through `replace` (`dir`: where a probe file may be made); returns the restore. */
export async function interceptFileWrites(dir: string, replace: (real: HandleWrite, self: unknown, ...args: Parameters<HandleWrite>) => ReturnType<HandleWrite>): Promise<() => void> {
  const probe = await open(join(dir, '.write-probe'), 'w');
  const proto = Object.getPrototypeOf(probe) as { write: HandleWrite };
  await probe.close();
  const real = proto.write;
  proto.write = function (this: unknown, ...args: Parameters<HandleWrite>) {
    return replace(real, this, ...args);
  };
  return () => {
    proto.write = real;
  };
}
