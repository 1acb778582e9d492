// The audit log's names are made durable (their directory synced) before
// anything depends on them: a new log before its first decision is
// acknowledged, and the side file holding a damaged tail before that tail
// is cut from the log.

import { appendFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { afterAll, expect, it, vi } from 'vitest';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { directorySyncs } from '../helpers/directorySyncs.js';

const synced = directorySyncs.synced;

vi.mock('../../src/storage/fileio.js', async (original) => (await import('../helpers/directorySyncs.js')).fileioRecordingSyncs(original));
const { AuditLog } = await import('../../src/audit/auditLog.js');
const { VirtualClock } = await import('../../src/sim/clock.js');

afterAll(cleanupTempDirs);

it('syncs the directory of a log it creates, and not on an open of an existing one', async () => {
  const path = join(await tempDir(), 'Data.fs.audit');
  synced.length = 0;
  const log = await AuditLog.open(path, { node: 'n', clock: new VirtualClock() });
  expect(synced).toEqual([dirname(path)]);
  await log.decide('config', { change: 'open' });
  await log.close();
  synced.length = 0;
  const again = await AuditLog.open(path, { node: 'n', clock: new VirtualClock() });
  expect(synced).toEqual([]);
  await again.close();
});

it('syncs the directory once the side file of a damaged tail is written, before it cuts the tail', async () => {
  const path = join(await tempDir(), 'Data.fs.audit');
  const log = await AuditLog.open(path, { node: 'n', clock: new VirtualClock() });
  await log.decide('config', { change: 'open' });
  await log.close();
  appendFileSync(path, Buffer.from([0, 0, 0, 40, 1, 2, 3])); // a record cut short
  synced.length = 0;
  const again = await AuditLog.open(path, { node: 'n', clock: new VirtualClock() });
  try {
    expect(synced).toEqual([dirname(path)]);
  } finally {
    await again.close();
  }
});
