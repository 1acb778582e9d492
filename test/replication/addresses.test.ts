// Where a secondary connects: an address that cannot name a peer (malformed,
// or TCP port 0, which only asks for a free port when listening) is refused
// at once with an AddressError, before the secondary's storage is opened, so
// no file stays open or locked and no reconnect loop starts. The same holds
// for the primary a rewind asks, and a primary's malformed listening address
// is refused before its storage opens too.

import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { loadZrsConfigText } from '../../src/config/zrs.js';
import { ConfigError } from '../../src/config/zconfig.js';
import { AddressError } from '../../src/errors.js';
import { connectAddress, parseAddress } from '../../src/replication/address.js';
import { rewindStorage } from '../../src/failover/rewind.js';
import { Primary } from '../../src/replication/primary.js';
import { Secondary } from '../../src/replication/secondary.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { commandAddress } from '../../src/cli/status.js';
import { UsageError } from '../../src/cli/args.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { commitMany, waitForTid } from './helpers.js';
import { NOWHERE, settleUntil } from './netHelpers.js';

afterEach(cleanupTempDirs);

describe('addresses to connect to', () => {
  it('connectAddress takes what parseAddress takes, but not TCP port 0', () => {
    expect(connectAddress('db1:5000')).toEqual({ kind: 'tcp', host: 'db1', port: 5000 });
    expect(connectAddress(5000)).toEqual({ kind: 'tcp', host: '127.0.0.1', port: 5000 });
    expect(connectAddress('/run/zrs.sock')).toEqual({ kind: 'unix', path: '/run/zrs.sock' });
    for (const zero of [0, '0', '127.0.0.1:0', '[::1]:0', { kind: 'tcp' as const, host: 'db1', port: 0 }]) {
      expect(() => connectAddress(zero)).toThrow(AddressError);
      expect(() => connectAddress(zero)).toThrow(/port 0/);
    }
    // No host name holds white space or brackets: once taken, they failed only at the name lookup.
    for (const bad of ['[]:1', 'a b:1', '[::1 ]:1', 'x]:5000']) expect(() => parseAddress(bad)).toThrow(/invalid host/);
    expect(parseAddress('[fe80::1%eth0]:5000')).toEqual({ kind: 'tcp', host: 'fe80::1%eth0', port: 5000 });
    // Listening on port 0 stays allowed.
    expect(parseAddress('127.0.0.1:0')).toEqual({ kind: 'tcp', host: '127.0.0.1', port: 0 });
  });

  it.each([
    ['port 0', '127.0.0.1:0'],
    ['a malformed address', 'db1:port'],
  ])('Secondary.open refuses %s before opening its storage, leaving the file free', async (_what, replicateFrom) => {
    const path = join(await tempDir(), 'Replica.fs');
    await expect(Secondary.open({ path, replicateFrom, fsync: false })).rejects.toBeInstanceOf(AddressError);
    // Not opened, so not locked: the file opens at once.
    const fs = await FileStorage.open(path, { create: true });
    await fs.close();
  });

  it('Primary.open refuses a malformed replicateTo before opening its storage, leaving the file free', async () => {
    const path = join(await tempDir(), 'Data.fs');
    await expect(Primary.open({ path, replicateTo: 'db1:port', fsync: false })).rejects.toBeInstanceOf(AddressError);
    const fs = await FileStorage.open(path, { create: true });
    await fs.close();
  });

  it('rewindStorage refuses port 0 as the primary to ask before opening the storage', async () => {
    const path = join(await tempDir(), 'Data.fs');
    await (await FileStorage.open(path, { create: true })).close();
    await expect(rewindStorage(path, { toCommonWith: '127.0.0.1:0' })).rejects.toBeInstanceOf(AddressError);
    const fs = await FileStorage.open(path);
    await fs.close();
  });

  it('setReplicationAddress refuses port 0 and keeps replicating from where it did', async () => {
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false });
    const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: primary.address, fsync: false });
    try {
      const before = secondary.machine.getSnapshot().context.address;
      expect(() => secondary.setReplicationAddress('127.0.0.1:0')).toThrow(AddressError);
      expect(secondary.machine.getSnapshot().context.address).toEqual(before);
    } finally {
      await secondary.close();
      await primary.close();
    }
    // Once closed, a new address is refused rather than taken in silence.
    expect(() => secondary.setReplicationAddress(primary.address)).toThrow('the secondary is closed');
  });

  it('setReplicationAddress forgets the old upstream\'s last tid: no lag is shown against a node no longer followed', async () => {
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
    const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: primary.address, fsync: false, auditPath: null });
    try {
      await waitForTid(secondary, (await commitMany(primary.storage, 2)).at(-1)!);
      await settleUntil(() => secondary.status().upstream?.primaryLastTid !== null);
      expect(secondary.status().upstream?.primaryLastTid).toEqual(primary.storage.lastTransaction());
      secondary.setReplicationAddress(NOWHERE);
      expect(secondary.status().upstream?.primaryLastTid ?? null).toBeNull();
      expect(secondary.status().upstream?.lagSeconds ?? null).toBeNull();
    } finally {
      await secondary.close();
      await primary.close();
    }
  });

  it('a configuration with replicate-from on port 0 is refused at its line', () => {
    const text = `%import zc.zrs\n<zrs>\n replicate-from 127.0.0.1:0\n <filestorage>\n  path /a\n </filestorage>\n</zrs>\n`;
    let err: unknown;
    try {
      loadZrsConfigText(text, '/x.conf', { checkDirectories: false });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toMatch(/^\/x\.conf:3: replicate-from: cannot connect to port 0/);
    // replicate-to 0 (listen on a free port) is still fine.
    expect(() => loadZrsConfigText(text.replace('replicate-from', 'replicate-to'), '/x.conf', { checkDirectories: false })).not.toThrow();
  });

  it('commands that connect (status, check, promote) take port 0 as a usage error', () => {
    expect(() => commandAddress('127.0.0.1:0')).toThrow(UsageError);
    expect(commandAddress('5000')).toEqual({ kind: 'tcp', host: '127.0.0.1', port: 5000 });
  });
});
