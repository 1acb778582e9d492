// A primary: a writable FileStorage that also streams every committed
// transaction to the secondaries connected to its replication address.
// Closing stops accepting, refuses new writes, drains to connected
// secondaries, then closes the storage.

import type { Clock } from '../ports/clock.js';
import type { ReplicationAddress, Transport } from '../ports/transport.js';
import { FileStorage } from '../storage/FileStorage.js';
import { systemClock } from '../node/clock.js';
import { socketTransport } from '../node/socketTransport.js';
import { parseAddress } from './address.js';
import { silentLogger, type Logger } from './log.js';
import { ReplicationServer } from './server.js';
import type { SessionStatus } from './primarySession.js';

export interface PrimaryOptions {
  /** Data.fs path (created when missing). */
  path: string;
  /** Where secondaries connect: port, host:port, [v6]:port or a Unix socket path. */
  replicateTo: string | number | ReplicationAddress;
  blobDir?: string;
  fsync?: boolean;
  /** Send a heartbeat (last tid and clock) to idle native secondaries this often. */
  heartbeatIntervalMs?: number;
  transport?: Transport;
  clock?: Clock;
  log?: Logger;
  /** An already open storage to serve instead of opening `path`. */
  storage?: FileStorage;
}

export class Primary {
  private constructor(
    /** The writable storage: commit through it as through any FileStorage. */
    readonly storage: FileStorage,
    private readonly server: ReplicationServer,
  ) {}

  /**
   * Open the storage and start listening.
   *
   * @example
   * const primary = await Primary.open({ path: 'Data.fs', replicateTo: '127.0.0.1:5000' });
   */
  static async open(options: PrimaryOptions): Promise<Primary> {
    const storage = options.storage ?? (await FileStorage.open(options.path, { create: true, blobDir: options.blobDir, fsync: options.fsync }));
    const address = typeof options.replicateTo === 'object' ? options.replicateTo : parseAddress(options.replicateTo);
    try {
      const server = await ReplicationServer.start({
        storage,
        address,
        transport: options.transport ?? socketTransport,
        clock: options.clock ?? systemClock,
        log: options.log ?? silentLogger,
        heartbeatIntervalMs: options.heartbeatIntervalMs,
      });
      return new Primary(storage, server);
    } catch (err) {
      if (!options.storage) await storage.close();
      throw err;
    }
  }

  /** The bound replication address. */
  get address(): ReplicationAddress {
    return this.server.address;
  }

  /** Connected secondaries with what each was sent and acknowledged. */
  secondaries(): SessionStatus[] {
    return this.server.status();
  }

  /** Refuse new writes, send every committed transaction to connected secondaries, close. */
  async close(): Promise<void> {
    await this.storage.closeForWrites();
    await this.server.close();
    await this.storage.close();
  }
}
