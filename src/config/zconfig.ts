// A parser for ZConfig's configuration syntax (the format ZEO and Zope use),
// schema-free: it yields a tree of sections and keys, each remembering the
// file and line it came from, so that every later error can name them.
//
// Syntax (as ZConfig's cfgparser): one construct per line, lines trimmed;
// `#…` comment lines and blank lines; `<type [name]>` … `</type>` sections
// (`<type [name]/>` is an empty one; type and name are case-insensitive and
// stored lowercased); `key value` lines (key case-insensitive, value the rest
// of the line); `%import pkg`, `%define NAME value`, `%include path`.
// Values, %define values and directive arguments substitute `$NAME`,
// `${NAME}` (defines, case-insensitive), `$(NAME)` (environment) and `$$`.

import { readFileSync, realpathSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { ZrsError } from '../errors.js';

/** Where a construct was written. */
export interface SourceLocation {
  file: string;
  line: number;
}

/** `FILE:LINE`: a key may come from an %include'd file, so a line number alone can point into the wrong one. */
export function where(loc: SourceLocation): string {
  return `${loc.file}:${loc.line}`;
}

export interface ConfigKey {
  /** Lowercased key, for matching. */
  key: string;
  /** The key as written. */
  rawKey: string;
  /** The value after substitution ('' when the line holds only the key). */
  value: string;
  loc: SourceLocation;
}

export interface ConfigSection {
  /** Lowercased section type ('' for the top level). */
  type: string;
  /** Lowercased section name, or null. */
  name: string | null;
  loc: SourceLocation;
  keys: ConfigKey[];
  sections: ConfigSection[];
}

export interface ConfigImport {
  name: string;
  loc: SourceLocation;
  /** Sections opened before it, in reading order (%include'd files in place): what it may apply to comes after. */
  sectionsBefore: number;
}

export interface ConfigDocument {
  /** The top level: keys and sections outside any section. */
  root: ConfigSection;
  imports: ConfigImport[];
  /** Final %define values (lowercased names). */
  defines: ReadonlyMap<string, string>;
  /** Every file read, the main file first. */
  files: string[];
  /** Each section's place in reading order (0 for the first opened). */
  order: ReadonlyMap<ConfigSection, number>;
}

/** A configuration error, always naming the file and line, and the key when there is one. */
export class ConfigError extends ZrsError {
  override name = 'ConfigError';
  constructor(
    readonly file: string,
    readonly line: number,
    readonly detail: string,
    readonly key: string | null = null,
    options?: { cause?: unknown },
  ) {
    // Line 0: about the file as a whole (it cannot be read).
    super(`${file}${line > 0 ? `:${line}` : ''}: ${key ? `${key}: ` : ''}${detail}`, options);
  }

  static at(loc: SourceLocation, detail: string, key: string | null = null): ConfigError {
    return new ConfigError(loc.file, loc.line, detail, key);
  }
}

export interface ParseOptions {
  /** Environment for `$(NAME)`; default process.env. */
  env?: Readonly<Record<string, string | undefined>>;
  /** Predefined `%define` values (names are case-insensitive). */
  defines?: Readonly<Record<string, string>>;
  /** Read a file (tests pass an in-memory map). Default: UTF-8 from disk. */
  readFile?: (path: string) => string;
  /** Deepest %include nesting (default 32). */
  maxIncludeDepth?: number;
}

// [^] rather than '.': a line may hold characters '.' does not match (U+2028), and a pattern that
// cannot match them backtracks over the whole line from every start (quadratic in its length).
const KEY_VALUE_RX = /^([^\s()]+)\s*(\S[^]*)?$/;
/** The longest value substitution may build (`%define`s that double a value ten times over would exhaust memory). */
export const MAX_SUBSTITUTED_CHARS = 1 << 20;
const SECTION_START_RX = /^([^\s()]+)(?:\s+([^\s()]+))?$/;
const DEFINE_NAME_RX = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const SUBST_NAME_RX = /^[a-zA-Z_][a-zA-Z0-9_]*/;

/**
 * Substitute `$NAME`, `${NAME}`, `$(ENV)` and `$$` in `text`.
 * Throws a plain message string (the caller adds the location).
 *
 * @example substitute('${HOME}/Data.fs', new Map([['home', '/var']]), {}) // '/var/Data.fs'
 */
export function substitute(
  text: string,
  defines: ReadonlyMap<string, string>,
  env: Readonly<Record<string, string | undefined>>,
): string {
  if (!text.includes('$')) return text;
  let out = '';
  let i = 0;
  while (i < text.length) {
    const j = text.indexOf('$', i);
    if (j < 0) {
      out += text.slice(i);
      break;
    }
    out += text.slice(i, j);
    const c = text[j + 1];
    if (c === undefined) throw new SubstitutionError("illegal lone '$' at end of value");
    if (c === '$') {
      out += '$';
      i = j + 2;
      continue;
    }
    let name: string;
    let kind: 'define' | 'env' = 'define';
    if (c === '{' || c === '(') {
      const close = c === '{' ? '}' : ')';
      const m = SUBST_NAME_RX.exec(text.slice(j + 2));
      if (!m) throw new SubstitutionError(`'$${c}' not followed by a name`);
      name = m[0];
      if (text[j + 2 + name.length] !== close) throw new SubstitutionError(`'$${c}${name}' not followed by '${close}'`);
      i = j + 3 + name.length;
      if (c === '(') kind = 'env';
    } else {
      const m = SUBST_NAME_RX.exec(text.slice(j + 1));
      if (!m) throw new SubstitutionError("'$' not followed by '$' or a name");
      name = m[0];
      i = j + 1 + name.length;
    }
    const value = kind === 'define' ? defines.get(name.toLowerCase()) : env[name];
    if (value === undefined) {
      throw new SubstitutionError(kind === 'define' ? `no definition for $${name} (use %define ${name} …)` : `environment variable ${name} is not set`);
    }
    out += value;
    if (out.length > MAX_SUBSTITUTED_CHARS) throw new SubstitutionError(`the value grows past ${MAX_SUBSTITUTED_CHARS} characters after substitution`);
  }
  return out;
}

class SubstitutionError extends Error {}

interface OpenSection {
  section: ConfigSection;
}

/** Parses one file and (recursively) the files it includes. */
class Parser {
  readonly imports: ConfigImport[] = [];
  /** Every section in the order it was opened. */
  readonly sectionsOpened = new Map<ConfigSection, number>();
  readonly files: string[] = [];
  readonly defines = new Map<string, string>();
  private readonly including: string[] = [];

  constructor(private readonly options: Required<Pick<ParseOptions, 'env' | 'readFile' | 'maxIncludeDepth'>>) {}

  parseFile(path: string, into: ConfigSection, from: SourceLocation | null): void {
    const real = realPath(path);
    if (this.including.includes(real)) {
      const chain = [...this.including.slice(this.including.indexOf(real)), real].join(' -> ');
      throw ConfigError.at(from ?? { file: path, line: 0 }, `include cycle: ${chain}`, '%include');
    }
    if (this.including.length > this.options.maxIncludeDepth) {
      throw ConfigError.at(from ?? { file: path, line: 0 }, `includes nested deeper than ${this.options.maxIncludeDepth}`, '%include');
    }
    let text: string;
    try {
      text = this.options.readFile(path);
    } catch (err) {
      if (err instanceof NotUtf8Error) throw new ConfigError(path, err.line, err.message, null, { cause: err });
      const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message;
      if (from) throw new ConfigError(from.file, from.line, `cannot read ${path}: ${why}`, '%include', { cause: err });
      throw new ConfigError(path, 0, `cannot read configuration: ${why}`, null, { cause: err });
    }
    this.files.push(path);
    this.including.push(real);
    try {
      this.parseText(text, path, into);
    } finally {
      this.including.pop();
    }
  }

  private parseText(text: string, file: string, top: ConfigSection): void {
    const stack: OpenSection[] = [];
    const current = (): ConfigSection => stack[stack.length - 1]?.section ?? top;
    // Universal newlines, as ZConfig reads files: \r\n, \n or a lone \r.
    const lines = text.split(/\r\n|\r|\n/);
    lines.forEach((raw, index) => {
      const loc: SourceLocation = { file, line: index + 1 };
      const line = raw.trim();
      if (line === '' || line.startsWith('#')) return;
      if (line.startsWith('</')) {
        if (!line.endsWith('>')) throw ConfigError.at(loc, 'malformed section end (missing ">")');
        const type = line.slice(2, -1).trim().toLowerCase();
        const open = stack.pop();
        if (!open) throw ConfigError.at(loc, `unexpected section end </${type}>: no section is open`);
        if (open.section.type !== type) {
          throw ConfigError.at(loc, `unbalanced section end: </${type}> closes <${open.section.type}> opened at line ${open.section.loc.line}`);
        }
        return;
      }
      if (line.startsWith('<')) {
        if (!line.endsWith('>')) throw ConfigError.at(loc, 'malformed section start (missing ">")');
        let rest = line.slice(1, -1);
        const empty = rest.endsWith('/');
        if (empty) rest = rest.slice(0, -1);
        const m = SECTION_START_RX.exec(rest.trim());
        if (!m) throw ConfigError.at(loc, `malformed section header <${rest.trim()}>`);
        const section: ConfigSection = { type: m[1]!.toLowerCase(), name: m[2] ? m[2].toLowerCase() : null, loc, keys: [], sections: [] };
        this.sectionsOpened.set(section, this.sectionsOpened.size);
        current().sections.push(section);
        if (!empty) stack.push({ section });
        return;
      }
      if (line.startsWith('%')) return this.directive(line.slice(1), loc, current());
      const m = KEY_VALUE_RX.exec(line);
      if (!m) throw ConfigError.at(loc, `malformed line ${JSON.stringify(line)}`);
      const rawKey = m[1]!;
      const value = m[2] === undefined ? '' : this.replace(m[2], loc, rawKey);
      current().keys.push({ key: rawKey.toLowerCase(), rawKey, value, loc });
    });
    const open = stack.pop();
    if (open) {
      throw ConfigError.at(open.section.loc, `section <${open.section.type}${open.section.name ? ` ${open.section.name}` : ''}> is not closed by the end of the file`);
    }
  }

  private directive(rest: string, loc: SourceLocation, section: ConfigSection): void {
    const m = KEY_VALUE_RX.exec(rest);
    if (!m) throw ConfigError.at(loc, 'missing or unrecognized directive');
    const name = m[1]!;
    const arg = m[2];
    if (name !== 'define' && name !== 'import' && name !== 'include') throw ConfigError.at(loc, `unknown directive %${name}`);
    if (!arg) throw ConfigError.at(loc, `missing argument to %${name}`, `%${name}`);
    if (name === 'import') {
      this.imports.push({ name: this.replace(arg.trim(), loc, '%import'), loc, sectionsBefore: this.sectionsOpened.size });
    } else if (name === 'include') {
      const target = this.replace(arg.trim(), loc, '%include');
      const path = isAbsolute(target) ? target : resolve(dirname(loc.file), target);
      this.parseFile(path, section, loc);
    } else {
      const parts = /^(\S+)(?:\s+(.*))?$/.exec(arg)!;
      const defName = parts[1]!;
      const key = defName.toLowerCase();
      if (!DEFINE_NAME_RX.test(defName)) throw ConfigError.at(loc, `not a legal substitution name: ${JSON.stringify(defName)}`, '%define');
      const value = this.replace(parts[2] ?? '', loc, '%define');
      const existing = this.defines.get(key);
      if (existing !== undefined && existing !== value) {
        throw ConfigError.at(loc, `cannot redefine ${defName} (already ${JSON.stringify(existing)})`, '%define');
      }
      this.defines.set(key, value);
    }
  }

  private replace(text: string, loc: SourceLocation, key: string): string {
    try {
      return substitute(text, this.defines, this.options.env);
    } catch (err) {
      if (err instanceof SubstitutionError) throw ConfigError.at(loc, err.message, key);
      throw err;
    }
  }
}

/**
 * The text of a configuration file (or of a pipe: `/dev/stdin`, a shell's
 * `<(…)`; a FIFO waits for its writer, as any reader of one does), in UTF-8.
 * Bytes that are not UTF-8 are refused, naming the line, rather than read
 * as U+FFFD: a path with them would name another file, and a new storage
 * would be created there.
 */
function readConfigFile(path: string): string {
  const bytes = readFileSync(path);
  const strict = new TextDecoder('utf-8', { fatal: true });
  try {
    return strict.decode(bytes);
  } catch {
    // The first line that does not decode, its lines ended as the parser ends them (\r\n, \r or \n).
    let line = 1;
    let start = 0;
    for (let i = 0; i <= bytes.length; i++) {
      const c = bytes[i];
      if (i < bytes.length && c !== 0x0a && c !== 0x0d) continue;
      try {
        strict.decode(bytes.subarray(start, i));
      } catch {
        break;
      }
      if (c === 0x0d && bytes[i + 1] === 0x0a) i += 1;
      start = i + 1;
      line += 1;
    }
    throw new NotUtf8Error(line);
  }
}

class NotUtf8Error extends Error {
  constructor(readonly line: number) {
    super('not UTF-8 text (written in another encoding?)');
  }
}

function realPath(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return resolve(path);
  }
}

/**
 * Parse a ZConfig file (and everything it includes) into a location-carrying tree.
 *
 * @example
 * const doc = parseZConfigFile('/etc/zrs.conf');
 * for (const s of doc.root.sections) console.log(s.type, s.name, `${s.loc.file}:${s.loc.line}`);
 */
export function parseZConfigFile(path: string, options: ParseOptions = {}): ConfigDocument {
  const parser = new Parser({
    env: options.env ?? process.env,
    readFile: options.readFile ?? readConfigFile,
    maxIncludeDepth: options.maxIncludeDepth ?? 32,
  });
  for (const [k, v] of Object.entries(options.defines ?? {})) parser.defines.set(k.toLowerCase(), v);
  const root: ConfigSection = { type: '', name: null, loc: { file: path, line: 0 }, keys: [], sections: [] };
  parser.parseFile(path, root, null);
  return { root, imports: parser.imports, defines: parser.defines, files: parser.files, order: parser.sectionsOpened };
}

/** Parse configuration text as if it were the file `file` (includes resolve relative to it). */
export function parseZConfigText(text: string, file = '<string>', options: ParseOptions = {}): ConfigDocument {
  const read = options.readFile ?? readConfigFile;
  const main = resolve(file);
  return parseZConfigFile(main, { ...options, readFile: (p) => (p === main ? text : read(p)) });
}
