// The `zrs` command line: dispatch to one command per file, `--help` on every
// command, usage errors with exit code 2. `runCli` takes its I/O as a port so
// tests can run it in-process; src/cli/main.ts binds it to the real process.

import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { NoSuchStorageError, ZrsError } from '../errors.js';
import { commandHelp, parseArgs, UsageError, usageLine, type CommandSpec, type ParsedArgs } from './args.js';
import { audit, auditSpec } from './audit.js';
import { check, checkOptions, checkSpec } from './check.js';
import { dump, dumpSpec } from './dump.js';
import { EXIT_FAILURE, EXIT_OK, EXIT_USAGE, type CliIo } from './io.js';
import { printable, type LogFormat } from './logging.js';
import { markingStartOption, serve, serveSpec } from './serve.js';
import { status, statusOptions, statusSpec } from './status.js';
import { verify, verifySpec } from './verify.js';
import { promote, promoteSpec } from './promote.js';
import { rewind, rewindSpec } from './rewind.js';
import { pack, packSpec } from './pack.js';

interface Command {
  spec: CommandSpec;
  run(args: ParsedArgs, io: CliIo): Promise<number>;
}

const COMMANDS: readonly Command[] = [
  {
    spec: serveSpec,
    run: (a, io) =>
      serve(a.positionals[0]!, io, {
        logFormat: a.flags.get('log-format') as LogFormat | undefined,
        checkOnly: a.flags.has('check'),
        markingStartPercent: markingStartOption(a.flags.get('marking-start')),
      }),
  },
  { spec: verifySpec, run: (a, io) => verify(a.positionals[0]!, io, !a.flags.has('no-progress')) },
  { spec: dumpSpec, run: (a, io) => dump(a.positionals[0]!, io) },
  { spec: auditSpec, run: (a, io) => audit(a.positionals, io, a.flags.has('json')) },
  {
    spec: statusSpec,
    run: (a, io) => status(a.positionals[0]!, io, statusOptions(a.flags)),
  },
  { spec: checkSpec, run: (a, io) => check(a.positionals[0]!, a.positionals[1]!, io, checkOptions(a.flags)) },
  { spec: promoteSpec, run: (a, io) => promote(a, io) },
  { spec: rewindSpec, run: (a, io) => rewind(a, io) },
  { spec: packSpec, run: (a, io) => pack(a, io) },
];

/** The package version, read from the package's package.json: beside src/, or beside dist/ when running compiled. */
export const VERSION: string = packageVersion();

function packageVersion(): string {
  for (const path of ['../../package.json', '../../../package.json']) {
    const url = new URL(path, import.meta.url);
    if (!existsSync(url)) continue;
    const pkg = JSON.parse(readFileSync(url, 'utf8')) as { name?: string; version: string };
    if (pkg.name === 'zrs-ts') return pkg.version;
  }
  throw new Error(`the package.json of zrs-ts is not above ${fileURLToPath(import.meta.url)}`);
}

function mainHelp(): string {
  const width = Math.max(...COMMANDS.map((c) => c.spec.name.length));
  return [
    'usage: zrs COMMAND [OPTIONS] ARGS',
    '',
    'ZODB replicated storage: serve primaries and secondaries from a ZConfig file, inspect Data.fs files.',
    '',
    'commands:',
    ...COMMANDS.map((c) => `  ${c.spec.name.padEnd(width)}  ${c.spec.summary}`),
    '',
    "Run 'zrs COMMAND --help' for a command's options and examples.",
    "Exit codes: 0 success, 1 failure (a problem found, a configuration error, a storage error), 2 bad command line; 'status' exits 2 when the node can't be reached, and 'check' uses Nagios's 0 OK, 1 WARNING, 2 CRITICAL (see each command's --help).",
    '',
  ].join('\n');
}

/** Run the command line `argv` (without node and script); resolves to the exit code. */
export async function runCli(argv: readonly string[], io: CliIo): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined) {
    io.err(`${mainHelp()}\nzrs: missing COMMAND\n`);
    return EXIT_USAGE;
  }
  // These take nothing more (`help` one command name): anything else is a mistyped line, not a request to ignore it.
  const extra = rest[name === 'help' ? 1 : 0];
  if ((name === '--help' || name === '-h' || name === '--version' || name === 'help') && extra !== undefined) {
    return usage(io, `unexpected argument ${JSON.stringify(extra)} after ${name}`, null);
  }
  if (name === '--help' || name === '-h') {
    await io.out(mainHelp());
    return EXIT_OK;
  }
  if (name === '--version') {
    await io.out(`zrs ${VERSION}\n`);
    return EXIT_OK;
  }
  if (name === 'help') {
    // `zrs help --help` asks what `help` does: the main help says it.
    if (rest[0] === '--help' || rest[0] === '-h') rest.shift();
    const target = rest[0] === undefined ? undefined : COMMANDS.find((c) => c.spec.name === rest[0]);
    if (rest[0] !== undefined && !target) return usage(io, `unknown command ${JSON.stringify(rest[0])}`, null);
    await io.out(target ? commandHelp(target.spec) : mainHelp());
    return EXIT_OK;
  }
  const command = COMMANDS.find((c) => c.spec.name === name);
  if (!command) return usage(io, `unknown command ${JSON.stringify(name)} (commands: ${COMMANDS.map((c) => c.spec.name).join(', ')})`, null);
  let args: ParsedArgs;
  try {
    args = parseArgs(command.spec, rest);
  } catch (err) {
    if (err instanceof UsageError) return usage(io, err.message, command.spec);
    throw err;
  }
  if (args.help) {
    await io.out(commandHelp(command.spec));
    return EXIT_OK;
  }
  try {
    return await command.run(args, io);
  } catch (err) {
    // A command may find its arguments wrong only once it reads them (addresses, numbers).
    if (err instanceof UsageError) return usage(io, err.message, command.spec);
    // Operating errors (missing file, locked storage, bad format) are reported, not thrown.
    if (err instanceof NoSuchStorageError) {
      io.err(`zrs ${name}: ${err.path}: no such storage file\n`);
      return EXIT_FAILURE;
    }
    if (err instanceof ZrsError || isSystemError(err)) {
      io.err(`zrs ${name}: ${printable((err as Error).message)}\n`);
      return EXIT_FAILURE;
    }
    throw err;
  }
}

function usage(io: CliIo, message: string, spec: CommandSpec | null): number {
  const help = spec ? `${usageLine(spec)}\nRun 'zrs ${spec.name} --help' for details.` : "Run 'zrs --help' for the commands.";
  io.err(`zrs${spec ? ` ${spec.name}` : ''}: ${message}\n${help}\n`);
  return EXIT_USAGE;
}

function isSystemError(err: unknown): boolean {
  return err instanceof Error && typeof (err as NodeJS.ErrnoException).code === 'string' && typeof (err as NodeJS.ErrnoException).syscall === 'string';
}
