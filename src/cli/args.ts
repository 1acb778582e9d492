// A small, strict argument parser: each command declares its flags and
// positional arguments; anything else is a UsageError (exit code 2).

import { ZrsError } from '../errors.js';

export class UsageError extends ZrsError {
  override name = 'UsageError';
  constructor(message: string, readonly command: string | null = null) {
    super(message);
  }
}

export interface FlagSpec {
  /** Long name without dashes, e.g. 'log-format'. */
  name: string;
  /** One-letter alias (`-w 30`, `-w30`; booleans may be bundled: `-mw30`). */
  short?: string;
  /** Takes a value (`--name VALUE` or `--name=VALUE`); else a boolean switch. */
  value?: string;
  /** Allowed values, when restricted. */
  choices?: readonly string[];
  help: string;
}

export interface CommandSpec {
  name: string;
  /** Positional argument names, all required, e.g. ['CONFIG']. */
  positionals: readonly string[];
  /** The last positional may be given more than once (`FILE [FILE...]`). */
  repeatLast?: boolean;
  flags: readonly FlagSpec[];
  summary: string;
  /** Longer text after the usage line. */
  description: string;
}

export interface ParsedArgs {
  help: boolean;
  positionals: string[];
  flags: Map<string, string | true>;
}

/** Parse `args` for `spec`; `--help` / `-h` anywhere wins over every other check. */
export function parseArgs(spec: CommandSpec, args: readonly string[]): ParsedArgs {
  if (args.some((a) => a === '--help' || a === '-h')) return { help: true, positionals: [], flags: new Map() };
  const positionals: string[] = [];
  const flags = new Map<string, string | true>();
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--') {
      positionals.push(...args.slice(i + 1));
      break;
    }
    if (a.startsWith('-') && !a.startsWith('--') && a.length > 1) {
      i = parseShort(spec, args, i, flags);
      continue;
    }
    if (a.startsWith('-') && a !== '-') {
      const eq = a.indexOf('=');
      const name = a.slice(a.startsWith('--') ? 2 : 1, eq < 0 ? undefined : eq);
      const flag = spec.flags.find((f) => f.name === name);
      if (!flag || !a.startsWith('--')) throw new UsageError(`unknown option ${a.slice(0, eq < 0 ? undefined : eq)}`, spec.name);
      if (flags.has(name)) throw new UsageError(`option --${name} given twice`, spec.name);
      if (!flag.value) {
        if (eq >= 0) throw new UsageError(`option --${name} takes no value`, spec.name);
        flags.set(name, true);
        continue;
      }
      const value = eq >= 0 ? a.slice(eq + 1) : args[++i];
      if (value === undefined) throw new UsageError(`option --${name} needs a value (${flag.value})`, spec.name);
      if (flag.choices && !flag.choices.includes(value)) {
        throw new UsageError(`option --${name} must be one of ${flag.choices.join(', ')}, not ${JSON.stringify(value)}`, spec.name);
      }
      flags.set(name, value);
      continue;
    }
    positionals.push(a);
  }
  if (positionals.length < spec.positionals.length) {
    throw new UsageError(`missing ${spec.positionals.slice(positionals.length).join(' ')}`, spec.name);
  }
  if (positionals.length > spec.positionals.length && !spec.repeatLast) {
    throw new UsageError(`unexpected argument ${JSON.stringify(positionals[spec.positionals.length])}`, spec.name);
  }
  return { help: false, positionals, flags };
}

/** Parse the short-option group at args[i] into `flags`; returns the index of the last argument used. */
function parseShort(spec: CommandSpec, args: readonly string[], i: number, flags: Map<string, string | true>): number {
  const a = args[i]!;
  for (let j = 1; j < a.length; j++) {
    const flag = spec.flags.find((f) => f.short !== undefined && f.short === a[j]);
    if (!flag) throw new UsageError(`unknown option -${a[j]}`, spec.name);
    if (flags.has(flag.name)) throw new UsageError(`option --${flag.name} given twice`, spec.name);
    if (!flag.value) {
      flags.set(flag.name, true);
      continue;
    }
    const value = j + 1 < a.length ? a.slice(j + 1) : args[++i];
    if (value === undefined) throw new UsageError(`option -${flag.short} needs a value (${flag.value})`, spec.name);
    if (flag.choices && !flag.choices.includes(value)) {
      throw new UsageError(`option -${flag.short} must be one of ${flag.choices.join(', ')}, not ${JSON.stringify(value)}`, spec.name);
    }
    flags.set(flag.name, value);
    break;
  }
  return i;
}

function flagLabel(f: FlagSpec): string {
  return `${f.short ? `-${f.short}, ` : ''}--${f.name}${f.value ? ` ${f.value}` : ''}`;
}

export function usageLine(spec: CommandSpec): string {
  const flags = spec.flags.map((f) => `[${f.short ? `-${f.short}` : `--${f.name}`}${f.value ? ` ${f.value}` : ''}]`).join(' ');
  const more = spec.repeatLast ? [`[${spec.positionals.at(-1)!}...]`] : [];
  return `usage: zrs ${spec.name} ${[flags, ...spec.positionals, ...more].filter(Boolean).join(' ')}`;
}

/** The text `zrs COMMAND --help` prints. */
export function commandHelp(spec: CommandSpec): string {
  const lines = [usageLine(spec), '', spec.summary, '', spec.description.trim(), '', 'options:'];
  const width = Math.max(...spec.flags.map((f) => flagLabel(f).length), '-h, --help'.length);
  for (const f of spec.flags) lines.push(`  ${flagLabel(f).padEnd(width)}  ${f.help}`);
  lines.push(`  ${'-h, --help'.padEnd(width)}  show this help`);
  return `${lines.join('\n')}\n`;
}
