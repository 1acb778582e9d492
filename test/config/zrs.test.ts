// The <zrs> schema: the seed README's two examples parse as written (ports
// and paths substituted through %define), map onto Primary / Secondary
// options, and every error names file, line and key.

import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, loadZrsConfig, loadZrsConfigText } from '../../src/config/zrs.js';
import { MAX_SOCKET_PATH_BYTES } from '../../src/replication/address.js';
import type { PrimaryOptions } from '../../src/replication/primary.js';
import type { SecondaryOptions } from '../../src/replication/secondary.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { SEED_PRIMARY, SEED_SECONDARY, seedPrimary, seedSecondary } from './seed.js';

afterAll(cleanupTempDirs);

const noDirs = { checkDirectories: false };

function errorOf(text: string, file = '/etc/zrs/test.conf'): ConfigError {
  try {
    loadZrsConfigText(text, file, noDirs);
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error('no ConfigError');
}

describe('the seed README examples', () => {
  it('parse exactly as written', () => {
    const p = loadZrsConfigText(SEED_PRIMARY, '/etc/zrs/primary.conf', noDirs);
    expect(p.storages).toHaveLength(1);
    const primary = p.storages[0]!;
    expect(primary.kind).toBe('primary');
    expect(primary.loc).toEqual({ file: '/etc/zrs/primary.conf', line: 3 });
    expect(primary.options).toEqual({ path: '/path/to/data/file', replicateTo: { kind: 'tcp', host: '', port: 5000 } });

    const s = loadZrsConfigText(SEED_SECONDARY, '/etc/zrs/secondary.conf', noDirs).storages[0]!;
    expect(s.kind).toBe('secondary');
    expect(s.options).toEqual({
      path: '/path/to/secondary/data/file',
      replicateFrom: { kind: 'tcp', host: 'primary-host', port: 5000 },
      replicateTo: { kind: 'tcp', host: '', port: 5000 },
      keepAliveDelayMs: 60_000,
    });
  });

  it('parse with %define substitution and map onto Primary.open / Secondary.open options', () => {
    const p = loadZrsConfigText(seedPrimary({ PORT: '127.0.0.1:7001', DATA: '/srv/p/Data.fs' }), '/x/p.conf', noDirs).storages[0]!;
    const s = loadZrsConfigText(seedSecondary({ PRIMARY: '127.0.0.1:7001', PORT: '[::1]:7002', DATA: '/srv/s/Data.fs' }), '/x/s.conf', noDirs).storages[0]!;
    if (p.kind !== 'primary' || s.kind !== 'secondary') throw new Error('kinds');
    const po: PrimaryOptions = p.options;
    const so: SecondaryOptions = s.options;
    expect(po).toEqual({ path: '/srv/p/Data.fs', replicateTo: { kind: 'tcp', host: '127.0.0.1', port: 7001 } });
    expect(so.replicateTo).toEqual({ kind: 'tcp', host: '::1', port: 7002 });
    expect(so.replicateFrom).toEqual({ kind: 'tcp', host: '127.0.0.1', port: 7001 });
  });
});

describe('the <zrs> schema', () => {
  it('lets a secondary without blob transfer share a blob directory, whichever section comes first, and no one else', () => {
    const primary = (port: number, path: string) => `<zrs>\n replicate-to ${port}\n <filestorage>\n  path ${path}\n  blob-dir /srv/blobs\n </filestorage>\n</zrs>\n`;
    const reader = `<zrs>\n replicate-from db:5000\n transfer-blobs false\n <filestorage>\n  path /srv/s.fs\n  blob-dir /srv/blobs\n </filestorage>\n</zrs>\n`;
    for (const text of [primary(5000, '/srv/p.fs') + reader, reader + primary(5000, '/srv/p.fs')]) {
      expect(loadZrsConfigText(`%import zc.zrs\n${text}`, F, noDirs).storages).toHaveLength(2);
    }
    // A second writer of the same directory is refused, also after a reader in between.
    expect(() => loadZrsConfigText(`%import zc.zrs\n${primary(5000, '/srv/p.fs')}${reader}${primary(5001, '/srv/q.fs')}`, F, noDirs)).toThrow(/blob directory "\/srv\/blobs" is also used by the storage at/);
  });

  it('reads every key of ours, several <zrs> sections and a standalone <filestorage>', () => {
    const config = loadZrsConfigText(
      [
        '%import zc.zrs',
        '<zrs primary>',
        '  replicate-to /run/zrs/p.sock',
        '  fsync off',
        '  metrics-address 127.0.0.1:9100',
        '  <filestorage>',
        '    path /srv/p/Data.fs',
        '    blob-dir /srv/p/blobs',
        '    pack-gc false',
        '  </filestorage>',
        '</zrs>',
        '<zrs>',
        '  name replica-1',
        '  replicate-from /run/zrs/p.sock',
        '  reconnect-delay 0.5',
        '  reconnect-max-delay 30',
        '  protocol zrs2.1',
        '  transfer-blobs no',
        '  keep-alive-delay 0',
        '  <filestorage>',
        '    path /srv/s/Data.fs',
        '    blob-dir /srv/p/blobs',
        '    read-only true',
        '  </filestorage>',
        '</zrs>',
        '<filestorage archive>',
        '  path /srv/archive/Data.fs',
        '  read-only yes',
        '</filestorage>',
      ].join('\n'),
      '/etc/zrs.conf',
      noDirs,
    );
    const [p, s, f] = config.storages;
    expect(p).toMatchObject({
      kind: 'primary',
      name: 'primary',
      metricsAddress: { kind: 'tcp', host: '127.0.0.1', port: 9100 },
      storage: { packGc: false, blobDir: '/srv/p/blobs' },
      options: { path: '/srv/p/Data.fs', replicateTo: { kind: 'unix', path: '/run/zrs/p.sock' }, blobDir: '/srv/p/blobs', fsync: false },
    });
    expect(s).toMatchObject({
      kind: 'secondary',
      name: 'replica-1',
      storage: { readOnly: true },
      options: {
        replicateFrom: { kind: 'unix', path: '/run/zrs/p.sock' },
        protocol: 'zrs2.1',
        transferBlobs: false,
        reconnect: { initialMs: 500, maxMs: 30_000 },
        keepAliveDelayMs: undefined,
      },
    });
    expect(f).toMatchObject({ kind: 'filestorage', name: 'archive', options: { path: '/srv/archive/Data.fs', open: { readOnly: true, create: false } } });
  });

  it('completes reconnect settings given only in part, so delay <= cap always holds', () => {
    const one = (keys: string) =>
      loadZrsConfigText(`%import zc.zrs\n<zrs>\n replicate-from db:5000\n${keys}\n <filestorage>\n  path /a\n </filestorage>\n</zrs>\n`, '/x.conf', noDirs).storages[0]!.options;
    expect(one(' reconnect-delay 90')).toMatchObject({ reconnect: { initialMs: 90_000, maxMs: 90_000 } });
    expect(one(' reconnect-delay 0.05')).toMatchObject({ reconnect: { initialMs: 50, maxMs: 60_000 } });
    expect(one(' reconnect-max-delay 0.05')).toMatchObject({ reconnect: { initialMs: 50, maxMs: 50 } });
  });

  it('takes values at the edges of their ranges, ZConfig booleans in every spelling and indented comments', () => {
    const conf = (keys: string): string => `%import zc.zrs\n<zrs>\n replicate-from db:5000\n${keys}\n <filestorage>\n  path /a\n </filestorage>\n</zrs>\n`;
    const load = (keys: string) => loadZrsConfigText(conf(keys), '/x.conf', noDirs).storages[0]!;
    expect(load(' preallocate 1GB').options).toMatchObject({ preallocate: 1024 ** 3 });
    expect(() => load(' preallocate 1025MB')).toThrow(/preallocate/);
    // A constant delay: the cap equal to the first delay.
    expect(load(' reconnect-delay 5\n reconnect-max-delay 5').options).toMatchObject({ reconnect: { initialMs: 5000, maxMs: 5000 } });
    expect(load(' reconnect-delay 86400').options).toMatchObject({ reconnect: { initialMs: 86_400_000 } });
    expect(() => load(' reconnect-delay 86401')).toThrow('/x.conf:4: reconnect-delay: at most 86400 seconds');
    expect(load(' fsync on\n transfer-blobs off').options).toMatchObject({ fsync: true, transferBlobs: false });
    expect(load(' fsync yes\n transfer-blobs no').options).toMatchObject({ fsync: true, transferBlobs: false });
    const commented = load('   # keep-alive-delay 60\n\t# another');
    expect(commented.kind).toBe('secondary');
    expect(commented.storage.packGc).toBe(true);
  });

  it('reads a configuration file from disk, checking that data directories exist', async () => {
    const dir = await tempDir();
    await mkdir(join(dir, 'p'));
    await writeFile(join(dir, 'ok.conf'), seedPrimary({ PORT: '5000', DATA: join(dir, 'p', 'Data.fs') }));
    expect(loadZrsConfig(join(dir, 'ok.conf')).storages[0]!.kind).toBe('primary');
    await writeFile(join(dir, 'bad.conf'), seedPrimary({ PORT: '5000', DATA: join(dir, 'missing', 'Data.fs') }));
    expect(() => loadZrsConfig(join(dir, 'bad.conf'))).toThrow(`${join(dir, 'bad.conf')}:9: path: directory "${join(dir, 'missing')}" does not exist`);
  });

  it('refuses, when it reads the file, a path, an audit log or a blob directory that exists as the wrong kind', async () => {
    const dir = await tempDir();
    await mkdir(join(dir, 'p', 'Data.fs'), { recursive: true });
    await writeFile(join(dir, 'dirpath.conf'), seedPrimary({ PORT: '5000', DATA: join(dir, 'p', 'Data.fs') }));
    expect(() => loadZrsConfig(join(dir, 'dirpath.conf'))).toThrow(`${join(dir, 'dirpath.conf')}:9: path: "${join(dir, 'p', 'Data.fs')}" is a directory, not a file`);
    const storage = (extra: string) => `%import zc.zrs\n<zrs>\n replicate-to 5000\n${extra}\n <filestorage>\n  path ${join(dir, 'Data.fs')}\n  blob-dir ${join(dir, 'blobs')}\n </filestorage>\n</zrs>\n`;
    await writeFile(join(dir, 'audit.conf'), storage(` audit-log ${join(dir, 'p')}`));
    expect(() => loadZrsConfig(join(dir, 'audit.conf'))).toThrow(`${join(dir, 'audit.conf')}:4: audit-log: "${join(dir, 'p')}" is a directory, not a file`);
    await writeFile(join(dir, 'blobs'), 'a file');
    await writeFile(join(dir, 'blobs.conf'), storage(''));
    expect(() => loadZrsConfig(join(dir, 'blobs.conf'))).toThrow(`${join(dir, 'blobs.conf')}:7: blob-dir: "${join(dir, 'blobs')}" is not a directory`);
  });

  const F = '/etc/zrs/test.conf';
  const zrs = (inner: string, fs = ' <filestorage>\n  path /srv/Data.fs\n </filestorage>\n'): string => `%import zc.zrs\n<zrs>\n${inner}\n${fs}</zrs>\n`;

  it.each([
    ['an unknown key', zrs(' replicate-to 5000\n replicate-too 5001'), `${F}:4: replicate-too: unknown key in <zrs>`],
    ['an unknown key in <filestorage>', zrs(' replicate-to 5000', ' <filestorage>\n  path /srv/Data.fs\n  quota 10\n </filestorage>\n'), `${F}:6: quota: unknown key in <filestorage>`],
    ['a bad address', zrs(' replicate-to db1:http'), `${F}:3: replicate-to: invalid port in address "db1:http"`],
    ['a port out of range', zrs(' replicate-from db1:70000'), `${F}:3: replicate-from: port out of range in address "db1:70000"`],
    ['a missing <filestorage>', zrs(' replicate-to 5000', ''), `${F}:2: <zrs>: <zrs> at ${F}:2 needs a <filestorage> section holding the data file`],
    [
      'a duplicate <filestorage>',
      zrs(' replicate-to 5000', ' <filestorage>\n  path /a\n </filestorage>\n <filestorage>\n  path /b\n </filestorage>\n'),
      `${F}:7: <filestorage>: duplicate section: <zrs> holds one <filestorage> (first at ${F}:4)`,
    ],
    [
      'a duplicate named section',
      `%import zc.zrs\n<zrs main>\n replicate-to 5000\n <filestorage>\n  path /a\n </filestorage>\n</zrs>\n<zrs Main>\n replicate-to 5001\n <filestorage>\n  path /b\n </filestorage>\n</zrs>\n`,
      `${F}:8: <zrs>: duplicate section <zrs main> (first at ${F}:2)`,
    ],
    ['a duplicate key', zrs(' replicate-to 5000\n Replicate-To 5001'), `${F}:4: Replicate-To: given twice in <zrs> (first at ${F}:3)`],
    ['neither address', zrs(' keep-alive-delay 5'), `${F}:2: <zrs>: needs replicate-to (a primary) or replicate-from (a secondary)`],
    ['replicate-to equal to replicate-from', zrs(' replicate-from localhost:5000\n replicate-to 5000'), `${F}:4: replicate-to: replicate-to "5000" is the address this storage replicates from (replicate-from at ${F}:3)`],
    ['the same socket path both ways', zrs(' replicate-from /run/z.sock\n replicate-to /run/z.sock'), `${F}:4: replicate-to: replicate-to "/run/z.sock" is the address`],
    ['a bad boolean', zrs(' replicate-from db:5000\n transfer-blobs maybe'), `${F}:4: transfer-blobs: not a boolean: "maybe" (use true/false, yes/no or on/off)`],
    ['a bad number', zrs(' replicate-from db:5000\n keep-alive-delay soon'), `${F}:4: keep-alive-delay: not a number of seconds: "soon"`],
    ['a negative number', zrs(' replicate-from db:5000\n reconnect-delay -1'), `${F}:4: reconnect-delay: not a number of seconds: "-1"`],
    ['max delay below delay', zrs(' replicate-from db:5000\n reconnect-delay 5\n reconnect-max-delay 1'), `${F}:5: reconnect-max-delay: must be at least reconnect-delay (5 s)`],
    ['an unknown protocol', zrs(' replicate-from db:5000\n protocol zrs3'), `${F}:4: protocol: unknown protocol "zrs3" (expected native, zrs2.0, zrs2.1)`],
    ['a secondary-only key on a primary', zrs(' replicate-to 5000\n protocol native'), `${F}:4: protocol: applies only to a secondary`],
    ['a read-only primary', zrs(' replicate-to 5000', ' <filestorage>\n  path /a\n  read-only true\n </filestorage>\n'), `${F}:4: read-only: a primary (no replicate-from) cannot be read-only`],
    ['a filestorage without path', zrs(' replicate-to 5000', ' <filestorage>\n  blob-dir /b\n </filestorage>\n'), `${F}:4: <filestorage>: needs a path (the Data.fs file)`],
    ['<zrs> without %import zc.zrs', '<zrs>\n replicate-to 5000\n</zrs>\n', `${F}:1: <zrs>: the <zrs> section type needs "%import zc.zrs" first`],
    [
      '%import zc.zrs after the <zrs> section',
      '<zrs>\n replicate-to 5000\n <filestorage>\n  path /tmp/Data.fs\n </filestorage>\n</zrs>\n%import zc.zrs\n',
      `${F}:1: <zrs>: the <zrs> section type needs "%import zc.zrs" first (it comes after, at ${F}:7)`,
    ],
    ['an unknown %import', '%import zc.zlibstorage\n', `${F}:1: %import: unknown package "zc.zlibstorage"`],
    ['an unknown section', '%import zc.zrs\n<zeo>\n address 8100\n</zeo>\n', `${F}:2: <zeo>: unknown section type <zeo> (expected <zrs> or <filestorage>)`],
    ['a key at the top level', 'replicate-to 5000\n', `${F}:1: replicate-to: unknown key at the top level`],
    [
      'two storages on one data file',
      `%import zc.zrs\n${'<zrs>\n replicate-to 0\n <filestorage>\n  path /srv/Data.fs\n </filestorage>\n</zrs>\n'.repeat(2)}`,
      `${F}:11: path: data file "/srv/Data.fs" is also used by the storage at ${F}:2`,
    ],
    [
      'two storages on one address',
      `%import zc.zrs\n<zrs>\n replicate-to 5000\n <filestorage>\n  path /a\n </filestorage>\n</zrs>\n<zrs>\n replicate-to 5000\n <filestorage>\n  path /b\n </filestorage>\n</zrs>\n`,
      `${F}:9: replicate-to: replicate-to 5000 is also used by the storage at ${F}:2`,
    ],
    [
      'a metrics-address on the replication address',
      zrs(' replicate-to 127.0.0.1:5000\n metrics-address 5000'),
      `${F}:4: metrics-address: metrics-address 127.0.0.1:5000 is also this storage's replicate-to`,
    ],
    [
      'a port on every interface and the same port on loopback',
      `%import zc.zrs\n<zrs>\n replicate-to 5000\n <filestorage>\n  path /a\n </filestorage>\n</zrs>\n<zrs>\n replicate-from db:5000\n metrics-address 127.0.0.1:5000\n <filestorage>\n  path /b\n </filestorage>\n</zrs>\n`,
      `${F}:10: metrics-address: metrics-address 127.0.0.1:5000 is also used by the storage at ${F}:2 (its replicate-to)`,
    ],
  ])('rejects %s, naming file:line and key', (_what, text, message) => {
    const err = errorOf(text);
    expect(err.message.startsWith(message)).toBe(true);
    expect(err.file).toBe(F);
  });

  const twoListeners = (a: string, b: string): string =>
    `%import zc.zrs\n<zrs>\n replicate-to ${a}\n <filestorage>\n  path /a\n </filestorage>\n</zrs>\n<zrs>\n replicate-from db:5000\n replicate-to ${b}\n <filestorage>\n  path /b\n </filestorage>\n</zrs>\n`;

  it.each([
    ['127.0.0.1:5000', '[::1]:5000'],
    ['0.0.0.0:5000', '[::1]:5000'],
    ['10.0.0.5:5000', '127.0.0.1:5000'],
  ])('accepts listeners on the same port of hosts apart (%s and %s)', (a, b) => {
    expect(loadZrsConfigText(twoListeners(a, b), F, noDirs).storages).toHaveLength(2);
  });

  it.each([
    ['[::]:5000', '127.0.0.1:5000'],
    ['5000', '[::1]:5000'],
    ['0.0.0.0:5000', '127.0.0.1:5000'],
    ['localhost:5000', '[::1]:5000'],
    ['127.0.0.1:5000', 'localhost:5000'],
  ])('refuses listeners whose hosts overlap (%s and %s)', (a, b) => {
    expect(() => loadZrsConfigText(twoListeners(a, b), F, noDirs)).toThrow(/replicate-to .* is also used by the storage at/);
  });

  it.each([
    ['LOCALHOST:5000', '5000'],
    ['Localhost:5000', '127.0.0.1:5000'],
    ['127.0.0.2:5000', '5000'],
    ['[::ffff:127.0.0.1]:5000', '127.0.0.1:5000'],
    ['[::FFFF:127.0.0.1]:5000', '0.0.0.0:5000'],
  ])('refuses replicating from itself written another way (%s from a storage listening on %s)', (from, to) => {
    expect(() => loadZrsConfigText(zrs(` replicate-from ${from}\n replicate-to ${to}`), F, noDirs)).toThrow(/is the address this storage replicates from/);
  });

  it('refuses a metrics address on its replication listener, whatever the case of the host', () => {
    expect(() => loadZrsConfigText(zrs(' replicate-to 127.0.0.1:5000\n metrics-address LOCALHOST:5000'), F, noDirs)).toThrow(ConfigError);
  });

  it('accepts replicating from the other loopback on the port it listens on', () => {
    expect(() => loadZrsConfigText(zrs(' replicate-from [::1]:5000\n replicate-to 127.0.0.1:5000'), F, noDirs)).not.toThrow();
    expect(() => loadZrsConfigText(zrs(' replicate-from 0.0.0.0:5000\n replicate-to 127.0.0.1:5000'), F, noDirs)).toThrow(/is the address this storage replicates from/);
  });

  it('accepts replicate-to equal to the port of another host (the README secondary)', () => {
    expect(() => loadZrsConfigText(SEED_SECONDARY, F, noDirs)).not.toThrow();
  });
});

describe('synchronous replication and the audit log', () => {
  const F = '/etc/zrs/sync.conf';
  const zrs = (inner: string, path = '/srv/Data.fs'): string => `%import zc.zrs\n<zrs>\n${inner}\n <filestorage>\n  path ${path}\n </filestorage>\n</zrs>\n`;
  const load = (text: string) => loadZrsConfigText(text, F, noDirs).storages[0]!;

  it('sync-replicas, sync-timeout and audit-log reach Primary.open', () => {
    const p = load(zrs(' replicate-to 5000\n sync-replicas 2\n sync-timeout 2.5\n audit-log /var/log/zrs/p.audit'));
    if (p.kind !== 'primary') throw new Error('kind');
    const options: PrimaryOptions = p.options;
    expect(options).toMatchObject({ syncReplicas: 2, syncTimeoutMs: 2_500, auditPath: '/var/log/zrs/p.audit' });
  });

  it('preallocate reaches Primary.open and Secondary.open, in bytes', () => {
    expect(load(zrs(' replicate-to 5000\n preallocate 0')).options).toMatchObject({ preallocate: 0 });
    expect(load(zrs(' replicate-to 5000\n preallocate 4MB')).options).toMatchObject({ preallocate: 4 * 1024 * 1024 });
    expect(load(zrs(' replicate-from db:5000\n preallocate 65536')).options).toMatchObject({ preallocate: 65536 });
    expect(load(zrs(' replicate-to 5000')).options).not.toHaveProperty('preallocate');
  });

  it('heartbeat-timeout reaches Secondary.open, in ms; 0 turns the timeout off', () => {
    expect(load(zrs(' replicate-from db:5000\n heartbeat-timeout 7.5')).options).toMatchObject({ heartbeatTimeoutMs: 7500 });
    expect(load(zrs(' replicate-from db:5000\n heartbeat-timeout 0')).options).toMatchObject({ heartbeatTimeoutMs: 0 });
    expect(load(zrs(' replicate-from db:5000')).options).toMatchObject({ heartbeatTimeoutMs: undefined });
  });

  it('heartbeat-interval reaches Primary.open and a serving Secondary.open, in ms; 0 turns heartbeats off', () => {
    expect(load(zrs(' replicate-to 5000\n heartbeat-interval 2.5')).options).toMatchObject({ heartbeatIntervalMs: 2500 });
    expect(load(zrs(' replicate-from db:5000\n replicate-to 5001\n heartbeat-interval 0')).options).toMatchObject({ heartbeatIntervalMs: 0 });
    expect(load(zrs(' replicate-to 5000')).options).not.toHaveProperty('heartbeatIntervalMs');
  });

  it('send-share reaches Primary.open and Secondary.open', () => {
    expect(load(zrs(' replicate-to 5000\n send-share 0.25')).options).toMatchObject({ sendShare: 0.25 });
    expect(load(zrs(' replicate-from db:5000\n replicate-to 5001\n send-share 1')).options).toMatchObject({ sendShare: 1 });
    expect('sendShare' in load(zrs(' replicate-to 5000')).options).toBe(false);
  });

  it('audit-log off turns the log off; without the key it stays beside the data file', () => {
    const off = load(zrs(' replicate-to 5000\n audit-log OFF'));
    expect(off.options).toMatchObject({ auditPath: null });
    const plain = load(zrs(' replicate-to 5000'));
    expect('auditPath' in plain.options).toBe(false);
    expect('syncReplicas' in plain.options).toBe(false);
  });

  it('on a secondary, sync keys apply once it is promoted and audit-log to the secondary itself', () => {
    const s = load(zrs(' replicate-from db:5000\n replicate-to 5001\n sync-replicas 1\n sync-timeout 30\n audit-log /var/log/zrs/s.audit'));
    if (s.kind !== 'secondary') throw new Error('kind');
    const options: SecondaryOptions = s.options;
    expect(options).toMatchObject({ auditPath: '/var/log/zrs/s.audit', whenPromoted: { syncReplicas: 1, syncTimeoutMs: 30_000 } });
  });

  it('checks that the directory of a socket to listen at exists, and that a socket path is not longer than the system takes', async () => {
    const dir = await tempDir();
    await writeFile(join(dir, 'a.conf'), zrs(` replicate-to ${join(dir, 'missing', 'p.sock')}`, join(dir, 'Data.fs')));
    expect(() => loadZrsConfig(join(dir, 'a.conf'))).toThrow(`${join(dir, 'a.conf')}:3: replicate-to: directory "${join(dir, 'missing')}" does not exist`);
    await writeFile(join(dir, 'm.conf'), zrs(` replicate-to 5000\n metrics-address ${join(dir, 'missing', 'm.sock')}`, join(dir, 'Data.fs')));
    expect(() => loadZrsConfig(join(dir, 'm.conf'))).toThrow(`${join(dir, 'm.conf')}:4: metrics-address: directory "${join(dir, 'missing')}" does not exist`);
    const long = join(dir, `${'x'.repeat(MAX_SOCKET_PATH_BYTES)}.sock`);
    await writeFile(join(dir, 'l.conf'), zrs(` replicate-to ${long}`, join(dir, 'Data.fs')));
    expect(() => loadZrsConfig(join(dir, 'l.conf'))).toThrow(
      `${join(dir, 'l.conf')}:3: replicate-to: socket path ${JSON.stringify(long)} is ${Buffer.byteLength(long)} bytes, the most a socket path may have here is ${MAX_SOCKET_PATH_BYTES}`,
    );
    // At the limit it is taken.
    const fits = join(dir, 'x'.repeat(MAX_SOCKET_PATH_BYTES - dir.length - 1));
    expect(Buffer.byteLength(fits)).toBe(MAX_SOCKET_PATH_BYTES);
    await writeFile(join(dir, 'f.conf'), zrs(` replicate-to ${fits}`, join(dir, 'Data.fs')));
    expect(() => loadZrsConfig(join(dir, 'f.conf'))).not.toThrow();
  });

  it('names the file of a key given first in an %include\'d file', async () => {
    const dir = await tempDir();
    await writeFile(join(dir, 'inc.conf'), ' replicate-to 5000\n');
    await writeFile(join(dir, 'main.conf'), `%import zc.zrs\n<zrs>\n %include inc.conf\n replicate-to 5001\n <filestorage>\n  path ${join(dir, 'Data.fs')}\n </filestorage>\n</zrs>\n`);
    expect(() => loadZrsConfig(join(dir, 'main.conf'))).toThrow(`${join(dir, 'main.conf')}:4: replicate-to: given twice in <zrs> (first at ${join(dir, 'inc.conf')}:1)`);
  });

  it('checks that the audit log directory exists', async () => {
    const dir = await tempDir();
    await writeFile(join(dir, 'a.conf'), zrs(` replicate-to 5000\n audit-log ${join(dir, 'missing', 'p.audit')}`, join(dir, 'Data.fs')));
    expect(() => loadZrsConfig(join(dir, 'a.conf'))).toThrow(`${join(dir, 'a.conf')}:4: audit-log: directory "${join(dir, 'missing')}" does not exist`);
  });

  it.each([
    ['a sync-replicas that is not a whole number', zrs(' replicate-to 5000\n sync-replicas 1.5'), `${F}:4: sync-replicas: not a whole number: "1.5"`],
    ['a negative sync-replicas', zrs(' replicate-to 5000\n sync-replicas -1'), `${F}:4: sync-replicas: not a whole number: "-1"`],
    ['too many sync replicas', zrs(' replicate-to 5000\n sync-replicas 1001'), `${F}:4: sync-replicas: at most 1000`],
    ['a zero sync-timeout', zrs(' replicate-to 5000\n sync-timeout 0'), `${F}:4: sync-timeout: must be more than 0 seconds`],
    ['a bad sync-timeout', zrs(' replicate-to 5000\n sync-timeout 5s'), `${F}:4: sync-timeout: not a number of seconds: "5s"`],
    ['a sync-timeout under a millisecond', zrs(' replicate-to 5000\n sync-timeout 0.0001'), `${F}:4: sync-timeout: less than a millisecond: 0.0001 (use 0.001 or more)`],
    ['a reconnect-delay under a millisecond', zrs(' replicate-from db:5000\n reconnect-delay 0.0004'), `${F}:4: reconnect-delay: less than a millisecond: 0.0004 (use 0.001 or more)`],
    ['a heartbeat-timeout under a millisecond', zrs(' replicate-from db:5000\n heartbeat-timeout 0.0001'), `${F}:4: heartbeat-timeout: less than a millisecond: 0.0001 (use 0.001 or more, or 0)`],
    ['an empty audit-log', zrs(' replicate-to 5000\n audit-log'), `${F}:4: audit-log: needs a value`],
    ['a heartbeat-interval on a secondary serving none', zrs(' replicate-from db:5000\n heartbeat-interval 1'), `${F}:4: heartbeat-interval: applies only to a storage that serves secondaries (a <zrs> with replicate-to)`],
    ['a heartbeat-timeout on a primary', zrs(' replicate-to 5000\n heartbeat-timeout 5'), `${F}:4: heartbeat-timeout: applies only to a secondary (a <zrs> with replicate-from)`],
    ['a heartbeat-timeout that is not seconds', zrs(' replicate-from db:5000\n heartbeat-timeout 5s'), `${F}:4: heartbeat-timeout: not a number of seconds: "5s"`],
    ['a heartbeat-interval that is not seconds', zrs(' replicate-to 5000\n heartbeat-interval 1s'), `${F}:4: heartbeat-interval: not a number of seconds: "1s"`],
    ['a zero send-share', zrs(' replicate-to 5000\n send-share 0'), `${F}:4: send-share: must be more than 0 and at most 1`],
    ['a preallocate that is not a size', zrs(' replicate-to 5000\n preallocate 1.5MB'), `${F}:4: preallocate: not a size in bytes: "1.5MB" (e.g. 1048576, 1MB or 0)`],
    ['a preallocate above 1GB', zrs(' replicate-to 5000\n preallocate 2GB'), `${F}:4: preallocate: at most 1GB`],
    ['a send-share above 1', zrs(' replicate-to 5000\n send-share 1.5'), `${F}:4: send-share: must be more than 0 and at most 1`],
    ['a send-share in percent', zrs(' replicate-to 5000\n send-share 10%'), `${F}:4: send-share: not a decimal number: "10%"`],
    ['an audit-log on the data file', zrs(' replicate-to 5000\n audit-log /srv/Data.fs'), `${F}:4: audit-log: is the data file itself ("/srv/Data.fs")`],
    [
      'two storages on one audit log',
      `%import zc.zrs\n<zrs>\n replicate-to 5000\n audit-log /var/log/z.audit\n <filestorage>\n  path /a\n </filestorage>\n</zrs>\n<zrs>\n replicate-to 5001\n audit-log /var/log/z.audit\n <filestorage>\n  path /b\n </filestorage>\n</zrs>\n`,
      `${F}:11: audit-log: audit log "/var/log/z.audit" is also used by the storage at ${F}:2`,
    ],
    [
      "an audit log on another storage's data file",
      `%import zc.zrs\n<zrs>\n replicate-to 5000\n audit-log /b\n <filestorage>\n  path /a\n </filestorage>\n</zrs>\n<zrs>\n replicate-to 5001\n <filestorage>\n  path /b\n </filestorage>\n</zrs>\n`,
      `${F}:4: audit-log: audit log "/b" is the data file of the storage at ${F}:9`,
    ],
  ])('rejects %s, naming file:line and key', (_what, text, message) => {
    let err: unknown;
    try {
      loadZrsConfigText(text, F, noDirs);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).message).toBe(message);
  });
});
