// `zrs rewind FILE --to-common-with ADDRESS`: cut a diverged storage (an old
// primary after a failover) back to the last transaction it shares with the
// new primary; the cut transactions go to FILE.rewound-<tid> (readable with
// `zrs dump`). Then the node can rejoin as a secondary.

import { rewindStorage } from '../failover/rewind.js';
import type { CommandSpec, ParsedArgs } from './args.js';
import { UsageError } from './args.js';
import { EXIT_OK, type CliIo } from './io.js';
import { commandAddress } from './status.js';
import { TLS_CLIENT_FLAGS, tlsClientFlags, tlsClientTransport } from './tlsClient.js';

export const rewindSpec: CommandSpec = {
  name: 'rewind',
  positionals: ['FILE'],
  flags: [
    { name: 'to-common-with', value: 'ADDRESS', help: "the new primary's replication address (host:port or a Unix socket path); it names the fork tid" },
    { name: 'to-tid', value: 'TID', help: 'rewind to this tid (16 hex digits) instead of asking a primary' },
    { name: 'blob-dir', value: 'DIR', help: "the storage's blob directory: cut blob files are saved beside the side file" },
    { name: 'audit-log', value: 'PATH', help: 'the audit log to record the rewind in (default FILE.audit; "off" for none)' },
    ...tlsClientFlags('with --to-common-with'),
  ],
  oneOf: ['to-common-with', 'to-tid'],
  summary: 'Truncate a diverged Data.fs to the last transaction it shares with a primary, saving the rest.',
  description: `
Asks the primary at ADDRESS where FILE's history forked from its own (the
same handshake a secondary makes), copies every transaction after that tid
into FILE.rewound-<tid> (a FileStorage: inspect it with zrs dump), truncates
FILE there and fixes FILE.chain and FILE.generations. The storage must not be
open. The rewind is recorded in FILE.audit (fork tid, what was cut, the side
file). Afterwards start the node as a secondary of that primary.

example:
  zrs rewind /var/db/Data.fs --to-common-with newprimary:5000`,
};

export async function rewind(args: ParsedArgs, io: CliIo): Promise<number> {
  const path = args.positionals[0]!;
  const address = args.flags.get('to-common-with');
  const tid = args.flags.get('to-tid');
  if (typeof tid === 'string' && !/^[0-9a-fA-F]{16}$/.test(tid)) throw new UsageError(`--to-tid must be 16 hex digits, got ${JSON.stringify(tid)}`);
  const tls = TLS_CLIENT_FLAGS.find((f) => args.flags.has(f.name));
  if (typeof tid === 'string' && tls) throw new UsageError(`--${tls.name} applies to --to-common-with: --to-tid asks no node`);
  const blobDir = args.flags.get('blob-dir');
  const audit = args.flags.get('audit-log');
  const result = await rewindStorage(path, {
    // A malformed address is a usage error (exit 2), as in every command that takes one.
    toCommonWith: typeof tid === 'string' ? Buffer.from(tid, 'hex') : commandAddress(String(address)),
    transport: tlsClientTransport(args.flags),
    blobDir: typeof blobDir === 'string' ? blobDir : undefined,
    ...(typeof audit === 'string' ? { auditPath: audit.toLowerCase() === 'off' ? null : audit } : {}),
  });
  // A promotion undone: its generation goes though no transaction does.
  const dropped =
    result.generationsDropped.length === 0 ? '' : `; dropped generation(s) ${result.generationsDropped.map((g) => `${g.generation} (from tid ${g.startTid.toString('hex')})`).join(', ')}`;
  if (result.cutTids.length === 0) {
    const what = dropped ? 'no transaction to cut' : 'nothing to rewind';
    await io.out(`${path}: ${what} (shares its history up to ${result.forkTid.toString('hex')})${dropped}\n`);
  } else {
    await io.out(
      `${path}: rewound to tid ${result.forkTid.toString('hex')}; ${result.cutTids.length} transaction(s) saved in ${result.sidePath}` +
        `${result.sideBlobDir ? ` (${result.blobsCut} blob file(s) in ${result.sideBlobDir})` : ''}${dropped}\n`,
    );
    const missing = result.blobsMissing;
    if (missing.length > 0) {
      io.err(`zrs rewind: ${missing.length} cut blob record(s) had no blob file before the rewind and are kept in the side file without one: ${missing.slice(0, 10).join(', ')}${missing.length > 10 ? ', …' : ''}\n`);
    }
  }
  return EXIT_OK;
}
