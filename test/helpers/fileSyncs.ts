// Watching syncs of open files: every FileHandle's sync() and datasync() call
// `onSync(fd)` first, then do what they do. For tests that a file is made
// durable before something depends on it (its rename, its record's use).

import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { vi } from 'vitest';

/** Spy on FileHandle syncs (`scratchDir` holds a probe file for a moment); returns the restore. */
export async function onFileHandleSyncs(scratchDir: string, onSync: (fd: number) => void): Promise<() => void> {
  const probe = await open(join(scratchDir, '.sync-probe'), 'w');
  const proto = Object.getPrototypeOf(probe) as FileHandle;
  await probe.close();
  const spies = (['sync', 'datasync'] as const).map((name) => {
    const original = proto[name];
    return vi.spyOn(proto, name).mockImplementation(function (this: FileHandle) {
      onSync(this.fd);
      return original.call(this);
    });
  });
  return () => spies.forEach((s) => s.mockRestore());
}
