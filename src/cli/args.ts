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
  /** Names of flags of which exactly one must be given, shown as `(--a A | --b B)` in the usage line. */
  oneOf?: readonly string[];
  summary: string;
  /** Longer text after the usage line. */
  description: string;
}

export interface ParsedArgs {
  help: boolean;
  positionals: string[];
  flags: Map<string, string | true>;
}

/**
 * Whether `word` is one of the command's own options: `--name` (with or
 * without `=value`) or `-x` for one of its short names. (Help is not: as an
 * option's value, `-h` is that value, refused by the option's own check.)
 */
function isOptionOf(spec: CommandSpec, word: string): boolean {
  if (word.startsWith('--')) {
    const name = word.slice(2).split('=')[0]!;
    return spec.flags.some((f) => f.name === name);
  }
  return /^-[a-zA-Z]/.test(word) && spec.flags.some((f) => f.short === word[1]);
}

/**
 * Parse `args` for `spec`. `--help` / `-h` given as an option (not after `--`,
 * not as another option's value) wins over every other check: the first
 * problem found is thrown only once the whole line has been read without one.
 */
export function parseArgs(spec: CommandSpec, args: readonly string[]): ParsedArgs {
  const positionals: string[] = [];
  const flags = new Map<string, string | true>();
  let help = false;
  let problem: UsageError | null = null;
  const fail = (message: string): void => {
    problem ??= new UsageError(message, spec.name);
  };
  const take = (flag: FlagSpec, label: string, value: string | true): void => {
    if (flags.has(flag.name)) return fail(`option --${flag.name} given twice`);
    if (typeof value === 'string' && flag.choices && !flag.choices.includes(value)) {
      return fail(`option ${label} must be one of ${flag.choices.join(', ')}, not ${JSON.stringify(value)}`);
    }
    flags.set(flag.name, value);
  };
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--') {
      positionals.push(...args.slice(i + 1));
      break;
    }
    if (a === '--help') {
      help = true;
      continue;
    }
    if (a.startsWith('-') && !a.startsWith('--') && a.length > 1) {
      // A short group: booleans bundled, the first one taking a value ends it (`-mw30`, `-w 30`).
      for (let j = 1; j < a.length; j++) {
        if (a[j] === 'h') {
          help = true;
          continue;
        }
        const flag = spec.flags.find((f) => f.short !== undefined && f.short === a[j]);
        if (!flag) {
          fail(`unknown option -${a[j]}`);
          continue;
        }
        if (!flag.value) {
          take(flag, `-${flag.short}`, true);
          continue;
        }
        const separate = j + 1 >= a.length;
        const value = separate ? args[++i] : a.slice(j + 1);
        if (value === undefined) fail(`option -${flag.short} needs a value (${flag.value})`);
        else if (separate && isOptionOf(spec, value)) fail(`option -${flag.short} needs a value (${flag.value}), not the option ${value}`);
        else take(flag, `-${flag.short}`, value);
        break;
      }
      continue;
    }
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const name = a.slice(2, eq < 0 ? undefined : eq);
      const flag = spec.flags.find((f) => f.name === name);
      if (!flag) {
        fail(`unknown option ${a.slice(0, eq < 0 ? undefined : eq)}`);
        continue;
      }
      if (!flag.value) {
        if (eq >= 0) fail(`option --${name} takes no value`);
        else take(flag, `--${name}`, true);
        continue;
      }
      const value = eq >= 0 ? a.slice(eq + 1) : args[++i];
      if (value === undefined) fail(`option --${name} needs a value (${flag.value})`);
      // The next word naming an option of this command is an option given too soon, not a value:
      // taken as the value, it left the command's operands one short, and the error named the wrong one.
      else if (eq < 0 && isOptionOf(spec, value)) fail(`option --${name} needs a value (${flag.value}), not the option ${value}`);
      else take(flag, `--${name}`, value);
      continue;
    }
    positionals.push(a);
  }
  if (help) return { help: true, positionals: [], flags: new Map() };
  if (problem) throw problem;
  if (positionals.length < spec.positionals.length) {
    throw new UsageError(`missing ${spec.positionals.slice(positionals.length).join(' ')}`, spec.name);
  }
  if (positionals.length > spec.positionals.length && !spec.repeatLast) {
    throw new UsageError(`unexpected argument ${JSON.stringify(positionals[spec.positionals.length])}`, spec.name);
  }
  if (spec.oneOf && spec.oneOf.filter((name) => flags.has(name)).length !== 1) {
    throw new UsageError(`give exactly one of ${spec.oneOf.map((name) => `--${name}`).join(' or ')}`, spec.name);
  }
  return { help: false, positionals, flags };
}

function flagLabel(f: FlagSpec): string {
  return `${f.short ? `-${f.short}, ` : ''}--${f.name}${f.value ? ` ${f.value}` : ''}`;
}

export function usageLine(spec: CommandSpec): string {
  const label = (f: FlagSpec): string => `${f.short ? `-${f.short}` : `--${f.name}`}${f.value ? ` ${f.value}` : ''}`;
  const group = spec.flags.filter((f) => spec.oneOf?.includes(f.name));
  const flags = [
    ...(group.length > 0 ? [`(${group.map(label).join(' | ')})`] : []),
    ...spec.flags.filter((f) => !group.includes(f)).map((f) => `[${label(f)}]`),
  ].join(' ');
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
