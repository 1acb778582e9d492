// Runs once around the whole test run. Tests spawn processes through tsx
// (the `zrs` command in a checkout, the demo), and tsx keeps a compile cache
// in the temp directory: a run that created it removes it, so a run leaves no
// temp files behind.

import { existsSync, rmSync } from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';

const TSX_CACHE = join(tmpdir(), `tsx-${userInfo().uid}`);

export default function setup(): () => void {
  const existed = existsSync(TSX_CACHE);
  return () => {
    if (!existed) rmSync(TSX_CACHE, { recursive: true, force: true });
  };
}
