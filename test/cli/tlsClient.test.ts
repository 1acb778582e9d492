// The commands that connect to a node (status, check, promote, pack, rewind)
// against a replication port with <ssl>: with --ssl-certificate they connect
// over TLS with the certificate the node's CA signed; without it they report
// the node closing on them; the flags are checked before anything connects.

import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../../src/cli/cli.js';
import { formatAddress } from '../../src/replication/address.js';
import { Primary } from '../../src/replication/primary.js';
import { Secondary } from '../../src/replication/secondary.js';
import { tidToSeconds } from '../../src/storage/timestamp.js';
import { makeTestCerts, type TestCerts } from '../helpers/certs.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { commitMany, storageFileWith, waitForTid } from '../replication/helpers.js';
import { FAST_RECONNECT } from '../replication/netHelpers.js';
import { memoryIo } from './helpers.js';

let certs: TestCerts;
beforeAll(() => {
  certs = makeTestCerts();
});
afterAll(cleanupTempDirs);

async function run(...argv: string[]) {
  const io = memoryIo();
  const code = await runCli(argv, io);
  return { code, stdout: io.stdout, stderr: io.stderr };
}

describe('admin commands against a TLS replication port', () => {
  it('status, check, rewind, pack and promote connect with --ssl-certificate; without it the node closes on them', async () => {
    const dir = await tempDir();
    const tls = { ...certs.server, authenticate: certs.ca };
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null, tls });
    const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: primary.address, replicateTo: '127.0.0.1:0', fsync: false, reconnect: FAST_RECONNECT, auditPath: null, tls });
    const client = ['--ssl-certificate', certs.client.certificate, '--ssl-key', certs.client.key, '--ssl-authenticate', certs.ca];
    try {
      const tids = await commitMany(primary.storage, 30);
      await waitForTid(secondary, tids.at(-1)!);
      const p = formatAddress(primary.address);
      const s = formatAddress(secondary.replicationAddress!);

      const status = await run('status', '--json', ...client, s);
      expect(status.code, status.stderr).toBe(0);
      expect(JSON.parse(status.stdout)).toMatchObject({ role: 'secondary', lastTid: tids.at(-1)!.toString('hex') });
      const plain = await run('status', s);
      expect(plain.code).toBe(2);
      expect(plain.stderr).toMatch(/asked without TLS: --ssl-certificate on the command line/);

      const check = await run('check', '-w', '60', ...client, p, s);
      expect({ code: check.code, stdout: check.stdout }).toEqual({ code: 0, stdout: 'Secondary up to date.\n' });

      // A stopped node's copy of the primary's file: rewound to what it shares with the primary, asked over TLS.
      const copy = join(dir, 'copy.fs');
      copyFileSync(join(dir, 'p.fs'), copy);
      const rewind = await run('rewind', '--to-common-with', p, ...client, copy);
      expect(rewind.code, rewind.stderr).toBe(0);
      expect(rewind.stdout).toBe(`${copy}: nothing to rewind (shares its history up to ${tids.at(-1)!.toString('hex')})\n`);

      const size = primary.storage.getSize();
      const pack = await run('pack', '--no-gc', '--time', String(tidToSeconds(tids.at(-1)!) + 1), ...client, p);
      expect(pack.code, pack.stderr).toBe(0);
      expect(pack.stdout).toContain(`${p}: packed to `);
      expect(primary.storage.getSize()).toBeLessThan(size);

      // The node's certificate must name what --ssl-server-hostname names (the test CA's server is localhost).
      const named = await run('status', ...client, '--ssl-server-hostname', 'db9.example', s);
      expect(named.code).toBe(2);
      expect(named.stderr).toMatch(/db9\.example/);

      // With its primary gone, the secondary is promoted over TLS too.
      await primary.close();
      const promote = await run('promote', ...client, s);
      expect(promote.code, promote.stderr).toBe(0);
      expect(promote.stdout).toMatch(new RegExp(`^promoted ${s.replace(/\./g, '\\.')}: generation 1 starts after tid ${tids.at(-1)!.toString('hex')}`));
    } finally {
      await secondary.close();
      await primary.close();
    }
  });

  it('checks the flags before connecting: the others need --ssl-certificate, a FILE takes none, nor does --to-tid', async () => {
    const path = join(await tempDir(), 'Data.fs');
    await storageFileWith(path, 2);
    const keyOnly = await run('status', '--ssl-key', certs.client.key, '127.0.0.1:1');
    expect({ code: keyOnly.code, stderr: keyOnly.stderr }).toEqual({ code: 2, stderr: expect.stringContaining('--ssl-key needs --ssl-certificate') });
    for (const command of ['pack', 'promote']) {
      const r = await run(command, '--ssl-certificate', certs.client.certificate, path);
      expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 2, stderr: expect.stringContaining("--ssl-certificate applies to a running node's ADDRESS, not to a FILE") });
    }
    const rewind = await run('rewind', '--to-tid', '0000000000000001', '--ssl-certificate', certs.client.certificate, path);
    expect({ code: rewind.code, stderr: rewind.stderr }).toEqual({ code: 2, stderr: expect.stringContaining('--ssl-certificate applies to --to-common-with') });
    const missing = await run('status', '--ssl-certificate', join(path, '..', 'none.pem'), '127.0.0.1:1');
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('none.pem');
    const noCa = await run('status', '--ssl-certificate', certs.client.certificate, '--ssl-authenticate', join(path, '..', 'no-ca'), '127.0.0.1:1');
    expect({ code: noCa.code, stderr: noCa.stderr }).toEqual({ code: 1, stderr: expect.stringMatching(/authenticate .*no-ca: .*no such file/i) });
    // A Nagios check that cannot run is UNKNOWN, on stdout.
    const check = await run('check', '-w', '60', '--ssl-certificate', join(path, '..', 'none.pem'), '127.0.0.1:1', '127.0.0.1:2');
    expect({ code: check.code, stdout: check.stdout }).toEqual({ code: 3, stdout: expect.stringMatching(/^Can't check: TLS certificate .*none\.pem: /) });
  });
});
