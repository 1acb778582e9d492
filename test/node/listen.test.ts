// Binding to a Unix socket path replaces only a socket file a server that is
// gone left behind: a regular file (a data file named by mistake) is never
// removed, and a socket a live server answers on is never taken over.

import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import { bindServer } from '../../src/node/listen.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';

afterAll(cleanupTempDirs);

const close = (server: Server): Promise<void> => new Promise((resolve) => server.close(() => resolve()));

describe('bindServer on a Unix socket path', () => {
  it('refuses a path that holds a regular file, and leaves the file as it was', async () => {
    const path = join(await tempDir(), 'Data.fs');
    writeFileSync(path, 'precious');
    const server = createServer();
    await expect(bindServer(server, { kind: 'unix', path })).rejects.toThrow(/exists and is not a socket/);
    expect(readFileSync(path, 'utf8')).toBe('precious');
    expect(server.listening).toBe(false);
  });

  it('refuses a socket a live server answers on; the live server keeps it', async () => {
    const path = join(await tempDir(), 'repl.sock');
    const live = createServer((socket) => {
      socket.on('error', () => undefined); // the probe hangs up at once
      socket.end('live');
    });
    await bindServer(live, { kind: 'unix', path });
    try {
      const second = createServer();
      await expect(bindServer(second, { kind: 'unix', path })).rejects.toThrow(/a server is listening on this socket already/);
      expect(existsSync(path)).toBe(true);
      expect(live.listening).toBe(true);
    } finally {
      await close(live);
    }
  });

  it('replaces a socket file a server that is gone left behind', async () => {
    const path = join(await tempDir(), 'stale.sock');
    // A process that binds the socket and exits without removing it.
    const child = spawnSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(path)}, () => process.exit(0))`]);
    expect(child.status).toBe(0);
    expect(existsSync(path)).toBe(true);
    const server = createServer();
    expect(await bindServer(server, { kind: 'unix', path })).toEqual({ kind: 'unix', path });
    expect(server.listening).toBe(true);
    await close(server);
  });
});
