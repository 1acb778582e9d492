// TLS on the replication link with certificates made at test time: good
// certificates replicate (CA as a file or a directory); a secondary refuses
// a primary whose certificate is from another CA, expired or for another
// host; a primary refuses a client certificate from another CA, a client
// without a certificate, and plain TCP. Every refusal is logged and leaves
// the secondary's storage empty.

import { createConnection, createServer, type AddressInfo, type Socket } from 'node:net';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TlsHandshakeError } from '../../src/errors.js';
import { tlsTransport, type TlsOptions } from '../../src/node/tlsTransport.js';
import { Primary } from '../../src/replication/primary.js';
import { Secondary } from '../../src/replication/secondary.js';
import { requestStatus } from '../../src/replication/statusClient.js';
import { makeTestCerts, type TestCerts } from '../helpers/certs.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { commitMany, expectSameHistory, waitForTid, Z64 } from '../replication/helpers.js';
import { FAST_RECONNECT, FramedSocket, LogCollector, settleUntil } from '../replication/netHelpers.js';
import { VirtualClock } from '../../src/sim/clock.js';

let certs: TestCerts;
beforeAll(() => {
  certs = makeTestCerts();
});
afterAll(cleanupTempDirs);

function serverTls(over: Partial<TlsOptions> = {}): TlsOptions {
  return { ...certs.server, authenticate: certs.ca, ...over };
}

function clientTls(over: Partial<TlsOptions> = {}): TlsOptions {
  return { ...certs.client, authenticate: certs.ca, checkHostname: true, ...over };
}

interface Pair {
  primary: Primary;
  secondary: Secondary;
  primaryLog: LogCollector;
  secondaryLog: LogCollector;
  close(): Promise<void>;
}

async function pair(primaryTls: TlsOptions, secondaryTls: TlsOptions | undefined, commits = 5): Promise<Pair> {
  const dir = await tempDir();
  const primaryLog = new LogCollector();
  const secondaryLog = new LogCollector();
  const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, tls: primaryTls, log: primaryLog.log });
  await commitMany(primary.storage, commits);
  const secondary = await Secondary.open({
    path: join(dir, 's.fs'),
    replicateFrom: primary.address,
    fsync: false,
    reconnect: FAST_RECONNECT,
    tls: secondaryTls,
    log: secondaryLog.log,
  });
  return {
    primary,
    secondary,
    primaryLog,
    secondaryLog,
    close: async () => {
      await secondary.close();
      await primary.close();
    },
  };
}

const refusedPrimary = (e: { message: string }): boolean => e.message.startsWith('TLS: refused primary');
const refusedSecondary = (e: { message: string }): boolean => e.message.startsWith('TLS: refused secondary');

/** Resolve once the secondary's connection machine has entered backoff `n` times. */
function backoffs(secondary: Secondary, n: number, ms = 15_000): Promise<void> {
  return new Promise((resolve, reject) => {
    let seen = 0;
    let last: unknown = null;
    const timer = setTimeout(() => {
      sub.unsubscribe();
      reject(new Error(`only ${seen} of ${n} reconnect attempts within ${ms} ms`));
    }, ms);
    const sub = secondary.machine.subscribe((snap) => {
      const inBackoff = snap.matches('backoff');
      if (inBackoff && last !== 'backoff') seen += 1;
      last = inBackoff ? 'backoff' : 'other';
      if (seen >= n) {
        clearTimeout(timer);
        sub.unsubscribe();
        resolve();
      }
    });
  });
}

/** Let the secondary retry a few times (each attempt refused), then check nothing arrived. */
async function expectNothingReplicated(p: Pair): Promise<void> {
  await backoffs(p.secondary, 3);
  expect(p.secondary.storage.lastTransaction().equals(Z64)).toBe(true);
  expect(p.primary.secondaries()).toEqual([]);
  expect(p.primaryLog.count((e) => e.message.startsWith('secondary connected'))).toBe(0);
}

describe('tlsTransport: good certificates', () => {
  it('replicates the history and live commits with mutual authentication and a hostname check', async () => {
    const p = await pair(serverTls(), clientTls());
    try {
      await waitForTid(p.secondary, p.primary.storage.lastTransaction());
      const live = await commitMany(p.primary.storage, 3);
      await waitForTid(p.secondary, live.at(-1)!);
      await expectSameHistory(p.primary.storage, p.secondary.storage);
      expect(p.primaryLog.count(refusedSecondary)).toBe(0);
      expect(p.secondaryLog.count(refusedPrimary)).toBe(0);
    } finally {
      await p.close();
    }
  });

  it('takes authenticate as a directory of CA files, and a server-hostname to check', async () => {
    const p = await pair(serverTls({ authenticate: certs.caDir }), clientTls({ authenticate: certs.caDir, serverHostname: 'localhost' }));
    try {
      await waitForTid(p.secondary, p.primary.storage.lastTransaction());
    } finally {
      await p.close();
    }
  });

  it('replicates through a TLS chain (a secondary serving further secondaries)', async () => {
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, tls: serverTls() });
    const middle = await Secondary.open({
      path: join(dir, 'm.fs'),
      replicateFrom: primary.address,
      replicateTo: '127.0.0.1:0',
      fsync: false,
      tls: { ...certs.server, authenticate: certs.ca },
    });
    const leaf = await Secondary.open({ path: join(dir, 'l.fs'), replicateFrom: middle.replicationAddress!, fsync: false, tls: clientTls() });
    try {
      const tids = await commitMany(primary.storage, 4);
      await waitForTid(leaf, tids.at(-1)!);
      await expectSameHistory(primary.storage, leaf.storage);
    } finally {
      await leaf.close();
      await middle.close();
      await primary.close();
    }
  });
});

describe('tlsTransport: the secondary refuses the primary', () => {
  it('when the primary certificate is from another CA; the primary says the secondary ended the handshake, not that it refused it', async () => {
    const p = await pair(serverTls({ ...certs.otherServer, authenticate: certs.ca }), clientTls());
    try {
      const line = await p.secondaryLog.waitFor(refusedPrimary);
      expect(line.level).toBe('error');
      expect(line.message).toMatch(/certificate/i);
      await expectNothingReplicated(p);
      const ended = await p.primaryLog.waitFor((e) => e.message.startsWith('TLS: secondary '));
      expect(ended.message).toMatch(/ended the handshake.*: it may have refused this node's certificate, and its log says why$/);
      expect(p.primaryLog.count(refusedSecondary)).toBe(0);
    } finally {
      await p.close();
    }
  });

  it('when the primary certificate has expired', async () => {
    const p = await pair(serverTls(certs.expired), clientTls());
    try {
      const line = await p.secondaryLog.waitFor(refusedPrimary);
      expect(line.message).toMatch(/expired/i);
      expect(line.fields?.code).toBe('CERT_HAS_EXPIRED');
      await expectNothingReplicated(p);
    } finally {
      await p.close();
    }
  });

  it('when check-hostname is on and the certificate names another host', async () => {
    const p = await pair(serverTls(certs.wrongHost), clientTls());
    try {
      const line = await p.secondaryLog.waitFor(refusedPrimary);
      expect(line.message).toMatch(/altnames|hostname/i);
      await expectNothingReplicated(p);
    } finally {
      await p.close();
    }
  });

  it('checks the name server-hostname gives instead of the address: the certificate for other.example passes, the right one for 127.0.0.1 does not', async () => {
    const named = await pair(serverTls(certs.wrongHost), clientTls({ serverHostname: 'other.example' }));
    try {
      await waitForTid(named.secondary, named.primary.storage.lastTransaction());
    } finally {
      await named.close();
    }
    const other = await pair(serverTls(), clientTls({ serverHostname: 'not-this-host.example' }));
    try {
      const line = await other.secondaryLog.waitFor(refusedPrimary);
      expect(line.message).toMatch(/altnames|hostname/i);
      await expectNothingReplicated(other);
    } finally {
      await other.close();
    }
  });

  it('accepts that certificate when check-hostname is off (the chain still verifies)', async () => {
    const p = await pair(serverTls(certs.wrongHost), clientTls({ checkHostname: false }));
    try {
      await waitForTid(p.secondary, p.primary.storage.lastTransaction());
    } finally {
      await p.close();
    }
  });
});

describe('tlsTransport: closing a listener', () => {
  it('writes the line it held back for secondaries that ended the handshake, and leaves no timer', async () => {
    const clock = new VirtualClock(Date.now()); // never moved: a held line goes out only at close
    const lines: string[] = [];
    const server = tlsTransport({ ...certs.otherServer, authenticate: certs.ca, log: (_level, message) => void lines.push(message), clock });
    const listener = await server.listen({ kind: 'tcp', host: '127.0.0.1', port: 0 }, (s) => s.destroy());
    const client = tlsTransport({ ...certs.client, authenticate: certs.ca });
    const hangUp = (): Promise<void> => client.connect(listener.address).then((s) => s.destroy(), () => undefined);
    try {
      // The first is said at once; the second waits for the interval, on the clock.
      await hangUp();
      await settleUntil(() => lines.some((l) => l.includes('ended the handshake')));
      await hangUp();
      await settleUntil(() => clock.pendingTimers === 1);
    } finally {
      await listener.close();
    }
    expect(lines.filter((l) => l.includes('ended the handshake'))).toHaveLength(2);
    expect(clock.pendingTimers).toBe(0);
  });
});

describe('tlsTransport: the primary refuses the secondary', () => {
  it('when the client certificate is from another CA', async () => {
    const p = await pair(serverTls(), clientTls(certs.otherClient));
    try {
      const line = await p.primaryLog.waitFor(refusedSecondary);
      expect(line.level).toBe('warn');
      expect(line.message).toMatch(/certificate/i);
      expect(line.fields?.peer).toMatch(/^127\.0\.0\.1:[1-9]\d*$/);
      await expectNothingReplicated(p);
      // The secondary hears no alert (the primary drops the socket): its log points at the certificate, not at zc.zrs.
      const stopped = p.secondaryLog.entries.find((e) => e.message.includes('replication from') && e.message.includes('stopped'));
      expect(stopped?.message).toMatch(/over TLS, most likely the primary rejected this secondary's certificate/);
    } finally {
      await p.close();
    }
  });

  it('when the client certificate has expired', async () => {
    const p = await pair(serverTls(), clientTls(certs.expired));
    try {
      const line = await p.primaryLog.waitFor(refusedSecondary);
      expect(line.message).toMatch(/expired/i);
      await expectNothingReplicated(p);
    } finally {
      await p.close();
    }
  });

  it('when a plain-TCP secondary connects', async () => {
    const p = await pair(serverTls(), undefined);
    try {
      const line = await p.primaryLog.waitFor(refusedSecondary);
      expect(line.message).toMatch(/wrong version|unknown protocol|http request|packet length/i);
      await expectNothingReplicated(p);
    } finally {
      await p.close();
    }
  });

  it('sends a plain client no replication data at all', async () => {
    const dir = await tempDir();
    const log = new LogCollector();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, tls: serverTls(), log: log.log });
    try {
      await commitMany(primary.storage, 3);
      const raw = await FramedSocket.connect(primary.address);
      const chunks: Buffer[] = [];
      raw.onChunk = (c) => chunks.push(c);
      raw.send(Buffer.from('zrs-ts/1', 'latin1'));
      raw.send(Buffer.alloc(8));
      await raw.waitClosed();
      await log.waitFor(refusedSecondary);
      // At most a TLS alert record (content type 21), never a replication frame.
      for (const c of chunks) expect(c[0]).toBe(21);
    } finally {
      await primary.close();
    }
  });
});

describe('tlsTransport: configuration errors', () => {
  it('a listener needs authenticate', async () => {
    const t = tlsTransport({ ...certs.server });
    await expect(t.listen({ kind: 'tcp', host: '127.0.0.1', port: 0 }, () => undefined)).rejects.toBeInstanceOf(TlsHandshakeError);
  });

  it('a missing certificate file fails at open', async () => {
    expect(() => tlsTransport({ certificate: join(certs.dir, 'missing.pem'), authenticate: certs.ca })).toThrow(/ENOENT/);
  });

  it('a certificate or key that is not one (text, a directory, a certificate without its key) fails at open, naming the files', async () => {
    const dir = await tempDir();
    const text = join(dir, 'notes.pem');
    await writeFile(text, 'not a certificate\n');
    expect(() => tlsTransport({ certificate: text, authenticate: certs.ca })).toThrow(`TLS certificate ${text} (with its key): `);
    expect(() => tlsTransport({ certificate: dir, authenticate: certs.ca })).toThrow(new RegExp(`^TLS certificate ${dir}: .*EISDIR`));
    expect(() => tlsTransport({ certificate: certs.server.certificate, key: text, authenticate: certs.ca })).toThrow(
      `TLS certificate ${certs.server.certificate} and key ${text}: `,
    );
  });

  it('an authenticate file whose certificate does not parse fails at open, naming the file', async () => {
    const dir = await tempDir();
    const ca = join(dir, 'ca.pem');
    await writeFile(ca, '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n');
    expect(() => tlsTransport({ ...certs.server, authenticate: ca })).toThrow(TlsHandshakeError);
    expect(() => tlsTransport({ ...certs.server, authenticate: ca })).toThrow(`authenticate ${ca}: not a certificate: `);
    // A good CA file still opens.
    expect(() => tlsTransport({ ...certs.server, authenticate: certs.ca })).not.toThrow();
  });

  it('an authenticate directory without certificates is an error', async () => {
    const empty = await tempDir();
    expect(() => tlsTransport({ ...certs.server, authenticate: empty })).toThrow(TlsHandshakeError);
  });
});

describe('tlsTransport: a peer that takes the connection and never answers', () => {
  /** A plain TCP server that accepts and says nothing; `accepted(n)` resolves with its n-th connection. */
  async function silentServer(): Promise<{ port: number; accepted: (n: number) => Promise<Socket>; close(): void }> {
    const sockets: Socket[] = [];
    const waiting: Array<() => void> = [];
    const server = createServer((s) => {
      s.on('error', () => undefined);
      s.resume(); // read and drop the ClientHello, so the other side's close is seen
      sockets.push(s);
      for (const w of waiting.splice(0)) w();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const accepted = async (n: number): Promise<Socket> => {
      while (sockets.length < n) await new Promise<void>((resolve) => waiting.push(resolve));
      return sockets[n - 1]!;
    };
    return { port: (server.address() as AddressInfo).port, accepted, close: () => (sockets.forEach((s) => s.destroy()), server.close()) };
  }
  const closedByPeer = (s: Socket): Promise<void> => new Promise((resolve) => (s.destroyed ? resolve() : s.once('close', () => resolve())));

  it('a connect gives up after the handshake timeout, and its socket is closed', async () => {
    const srv = await silentServer();
    try {
      const t = tlsTransport({ ...clientTls(), handshakeTimeoutMs: 100 });
      await expect(t.connect({ kind: 'tcp', host: '127.0.0.1', port: srv.port })).rejects.toThrow(/no TLS handshake within 100 ms/);
      await closedByPeer(await srv.accepted(1));
    } finally {
      srv.close();
    }
  });

  it('a status request that timed out closes its connection attempt', async () => {
    const srv = await silentServer();
    try {
      const transport = tlsTransport(clientTls({ checkHostname: false }));
      await expect(requestStatus(`127.0.0.1:${srv.port}`, { transport, timeoutMs: 100 })).rejects.toThrow(/timed out/);
      await closedByPeer(await srv.accepted(1));
    } finally {
      srv.close();
    }
  });

  it("a secondary's close() closes the connection attempt under way", async () => {
    const srv = await silentServer();
    const secondary = await Secondary.open({ path: join(await tempDir(), 's.fs'), replicateFrom: `127.0.0.1:${srv.port}`, fsync: false, reconnect: FAST_RECONNECT, tls: clientTls(), auditPath: null });
    try {
      const attempt = await srv.accepted(1);
      await secondary.close();
      await closedByPeer(attempt);
    } finally {
      await secondary.close();
      srv.close();
    }
  });
});

describe('tlsTransport: a flood of connections', () => {
  it('turns away connections past maxConnections before their handshake (each held a descriptor until its timeout), and words refusals as one line with a count', async () => {
    const log = new LogCollector();
    const accepted: unknown[] = [];
    const listener = await tlsTransport({ ...serverTls(), log: log.log }).listen({ kind: 'tcp', host: '127.0.0.1', port: 0 }, (s) => accepted.push(s), { maxConnections: 3 });
    const sockets: Socket[] = [];
    try {
      const address = listener.address as { port: number };
      const closedEarly: Promise<void>[] = [];
      for (let i = 0; i < 8; i++) {
        const s = createConnection({ host: '127.0.0.1', port: address.port });
        s.on('error', () => undefined);
        sockets.push(s);
        closedEarly.push(new Promise((resolve) => s.once('close', () => resolve())));
        await new Promise((resolve) => s.once('connect', resolve));
      }
      // Five of the eight are closed at once; three wait in their handshakes.
      await Promise.all(closedEarly.slice(3));
      const turnedAway = await log.waitFor((e) => e.message.startsWith('TLS: turned away'));
      expect(turnedAway.message).toMatch(/^TLS: turned away 1 connection\(s\) \(the last from 127\.0\.0\.1:\d+\): 3 already open, the most allowed \(maxConnections\)$/);
      // Plain bytes where a handshake should be: the first refusal is logged at once, the next ones wait for the interval.
      for (const s of sockets.slice(0, 3)) s.write('not a TLS client hello\r\n\r\n');
      await Promise.all(closedEarly.slice(0, 3));
      await log.waitFor((e) => e.message.startsWith('TLS: refused secondary'));
      expect(log.count((e) => e.message.startsWith('TLS: refused secondary'))).toBe(1);
      expect(log.count((e) => e.message.startsWith('TLS: turned away'))).toBe(1);
      expect(accepted).toEqual([]);
    } finally {
      for (const s of sockets) s.destroy();
      await listener.close();
    }
  });
});
