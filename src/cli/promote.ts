// `zrs promote FILE`: offline promotion of a stopped secondary's storage:
// start generation n + 1 at its last transaction (durably), so that serving
// it as a primary (`zrs serve` with a primary config) continues a new,
// auditable history. The storage lock makes sure no server has it open.

import { FailoverHistory } from '../failover/history.js';
import { nextGeneration } from '../failover/promote.js';
import { FileStorage } from '../storage/FileStorage.js';
import type { CommandSpec } from './args.js';
import { EXIT_OK, type CliIo } from './io.js';

export const promoteSpec: CommandSpec = {
  name: 'promote',
  positionals: ['FILE'],
  flags: [],
  summary: 'Start a new generation on a stopped secondary\'s Data.fs, to serve it as the primary.',
  description: `
Opens FILE for writing (so no server may have it open), starts generation
n + 1 at its last transaction, where n is the largest generation it ever saw,
and writes FILE.generations. Then serve FILE with a primary configuration.
Make sure the old primary is down first: without an external coordinator,
nothing stops two nodes promoted at once from both accepting writes.
A running secondary is promoted in-process with Secondary.promote().

example:
  zrs promote /var/db/Data.fs && zrs serve primary.conf`,
};

export async function promote(path: string, io: CliIo): Promise<number> {
  const storage = await FileStorage.open(path);
  try {
    const history = await FailoverHistory.open(storage, { role: 'secondary' });
    try {
      const planned = nextGeneration(history, storage.lastTransaction());
      const entry = await history.generations.startNext(storage.lastTransaction());
      if (entry.generation !== planned.generation) throw new Error('bug: generation changed during promote');
      await io.out(`promoted ${path}: generation ${entry.generation} starts after tid ${entry.startTid.toString('hex')}\n`);
    } finally {
      await history.close();
    }
  } finally {
    await storage.close();
  }
  return EXIT_OK;
}
