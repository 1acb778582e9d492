// The ZConfig syntax: sections, keys, comments, %define substitution,
// %include relative to the including file, and errors naming file and line.

import { execFileSync, spawn } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, MAX_SUBSTITUTED_CHARS, parseZConfigFile, parseZConfigText, substitute } from '../../src/config/zconfig.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';

afterAll(cleanupTempDirs);

const parse = (text: string, env: Record<string, string> = {}) => parseZConfigText(text, '/cfg/main.conf', { env });

function errorOf(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error('no ConfigError');
}

describe('ZConfig syntax', () => {
  it('builds a tree of sections and keys with their lines', () => {
    const doc = parse(
      [
        '# a comment',
        '%import zc.zrs',
        '',
        'Top-Key  some value with  spaces  ',
        '<ZRS Primary>',
        '  replicate-to 5000',
        '  <filestorage>',
        '    path /var/db/Data.fs',
        '  </FileStorage>',
        '  <empty/>',
        '</zrs>',
        'flag',
      ].join('\n'),
    );
    expect(doc.imports).toEqual([{ name: 'zc.zrs', loc: { file: '/cfg/main.conf', line: 2 }, sectionsBefore: 0 }]);
    expect(doc.root.keys.map((k) => [k.key, k.rawKey, k.value, k.loc.line])).toEqual([
      ['top-key', 'Top-Key', 'some value with  spaces', 4],
      ['flag', 'flag', '', 12],
    ]);
    const zrs = doc.root.sections[0]!;
    expect([zrs.type, zrs.name, zrs.loc.line]).toEqual(['zrs', 'primary', 5]);
    expect(zrs.keys[0]).toMatchObject({ key: 'replicate-to', value: '5000', loc: { line: 6 } });
    expect(zrs.sections.map((s) => [s.type, s.name, s.loc.line])).toEqual([
      ['filestorage', null, 7],
      ['empty', null, 10],
    ]);
    expect(zrs.sections[0]!.keys[0]).toMatchObject({ key: 'path', value: '/var/db/Data.fs', loc: { line: 8 } });
  });

  it('substitutes $NAME, ${NAME}, $(ENV) and $$', () => {
    const doc = parse(['%define DIR /var/db', '%define File data.fs', 'path $dir/${FILE}', 'home $(HOME)/x', 'price $$5'].join('\n'), { HOME: '/home/z' });
    expect(doc.root.keys.map((k) => k.value)).toEqual(['/var/db/data.fs', '/home/z/x', '$5']);
    expect(substitute('a$$b', new Map(), {})).toBe('a$b');
  });

  it('defines may be repeated with the same value only', () => {
    expect(() => parse('%define A 1\n%define a 1\n')).not.toThrow();
    expect(errorOf(() => parse('%define A 1\n%define a 2\n')).message).toBe('/cfg/main.conf:2: %define: cannot redefine a (already "1")');
  });

  it.each([
    ['x $NOPE', '/cfg/main.conf:1: x: no definition for $NOPE (use %define NOPE …)'],
    ['x ${A', "/cfg/main.conf:1: x: '${A' not followed by '}'"],
    ['x $', "/cfg/main.conf:1: x: illegal lone '$' at end of value"],
    ['x $(UNSET_VAR_FOR_TEST)', '/cfg/main.conf:1: x: environment variable UNSET_VAR_FOR_TEST is not set'],
    ['<zrs>\nkey 1\n', '/cfg/main.conf:1: section <zrs> is not closed by the end of the file'],
    ['<zrs>\n</filestorage>\n', '/cfg/main.conf:2: unbalanced section end: </filestorage> closes <zrs> opened at line 1'],
    ['</zrs>', '/cfg/main.conf:1: unexpected section end </zrs>: no section is open'],
    ['<zrs a b>\n</zrs>', '/cfg/main.conf:1: malformed section header <zrs a b>'],
    ['<zrs', '/cfg/main.conf:1: malformed section start (missing ">")'],
    ['%frobnicate x', '/cfg/main.conf:1: unknown directive %frobnicate'],
    ['%import', '/cfg/main.conf:1: %import: missing argument to %import'],
    ['%define 9x 1', '/cfg/main.conf:1: %define: not a legal substitution name: "9x"'],
  ])('reports %j with file and line', (text, message) => {
    expect(errorOf(() => parse(text)).message).toBe(message);
  });

  it('includes files relative to the including file, into the current section', async () => {
    const dir = await tempDir();
    await mkdir(join(dir, 'conf.d'));
    await writeFile(join(dir, 'main.conf'), '%define ROOT /srv\n<zrs>\n%include conf.d/storage.conf\n</zrs>\n');
    await writeFile(join(dir, 'conf.d', 'storage.conf'), '# included\nreplicate-to 5000\n%include more.conf\n');
    await writeFile(join(dir, 'conf.d', 'more.conf'), '<filestorage>\n path $ROOT/Data.fs\n</filestorage>\n');
    const doc = parseZConfigFile(join(dir, 'main.conf'));
    const zrs = doc.root.sections[0]!;
    expect(zrs.keys[0]).toMatchObject({ key: 'replicate-to', loc: { file: join(dir, 'conf.d', 'storage.conf'), line: 2 } });
    expect(zrs.sections[0]!.keys[0]).toMatchObject({ value: '/srv/Data.fs', loc: { file: join(dir, 'conf.d', 'more.conf'), line: 2 } });
    expect(doc.files).toEqual([join(dir, 'main.conf'), join(dir, 'conf.d', 'storage.conf'), join(dir, 'conf.d', 'more.conf')]);
  });

  it('takes includes nested as deep as maxIncludeDepth, and refuses one level more at its %include line', () => {
    const files: Record<string, string> = { '/c/a.conf': '%include b.conf\n', '/c/b.conf': 'x 1\n' };
    const readFile = (p: string): string => {
      if (!(p in files)) throw Object.assign(new Error(`no ${p}`), { code: 'ENOENT' });
      return files[p]!;
    };
    const parseAt = (maxIncludeDepth: number): unknown => parseZConfigText('%include a.conf\n', '/c/main.conf', { readFile, maxIncludeDepth });
    expect(() => parseAt(2)).not.toThrow();
    expect(errorOf(() => parseAt(1)).message).toBe('/c/a.conf:1: %include: includes nested deeper than 1');
  });

  it('refuses include cycles and missing includes, naming the %include line', async () => {
    const dir = await tempDir();
    await writeFile(join(dir, 'a.conf'), 'x 1\n%include b.conf\n');
    await writeFile(join(dir, 'b.conf'), '\n\n%include a.conf\n');
    const cycle = errorOf(() => parseZConfigFile(join(dir, 'a.conf')));
    expect(cycle.message).toMatch(new RegExp(`^${join(dir, 'b.conf')}:3: %include: include cycle: .*a\\.conf -> .*b\\.conf -> .*a\\.conf$`));
    await writeFile(join(dir, 'c.conf'), '%include nowhere.conf\n');
    expect(errorOf(() => parseZConfigFile(join(dir, 'c.conf'))).message).toBe(
      `${join(dir, 'c.conf')}:1: %include: cannot read ${join(dir, 'nowhere.conf')}: no such file`,
    );
  });

  it('reads a pipe as a file (/dev/stdin, a shell\'s <(…)): its text, once its writer has written it', async () => {
    const dir = await tempDir();
    const fifo = join(dir, 'f.conf');
    execFileSync('mkfifo', [fifo]);
    const writer = spawn('sh', ['-c', `printf 'a 1\\n' > '${fifo}'`]);
    const exited = new Promise((r) => writer.on('exit', r));
    // The parser reads synchronously: the writer runs in its own process meanwhile.
    expect(parseZConfigFile(fifo).root.keys.map((k) => [k.key, k.value])).toEqual([['a', '1']]);
    await exited;
  });

  it('refuses bytes that are not UTF-8, naming the line, instead of reading them as U+FFFD (a path would name another file)', async () => {
    const dir = await tempDir();
    const path = join(dir, 'latin1.conf');
    await writeFile(path, Buffer.concat([Buffer.from('<zrs>\n  replicate-to 5000\n</zrs>\n<filestorage>\n  path /var/db/caf'), Buffer.from([0xe9]), Buffer.from('.fs\n</filestorage>\n')]));
    expect(errorOf(() => parseZConfigFile(path)).message).toBe(`${path}:5: not UTF-8 text (written in another encoding?)`);
    // Lines counted as the parser ends them: a lone \r ends one.
    await writeFile(path, Buffer.concat([Buffer.from('a 1\rb 2\r\nc caf'), Buffer.from([0xe9]), Buffer.from('\r')]));
    expect(errorOf(() => parseZConfigFile(path)).message).toBe(`${path}:3: not UTF-8 text (written in another encoding?)`);
    // Included from configuration text, the file is read the same way.
    await writeFile(join(dir, 'b.conf'), Buffer.concat([Buffer.from('a 1\nb caf'), Buffer.from([0xe9]), Buffer.from('\n')]));
    expect(errorOf(() => parseZConfigText('%include b.conf\n', join(dir, 'main.conf'))).message).toBe(`${join(dir, 'b.conf')}:2: not UTF-8 text (written in another encoding?)`);
    await writeFile(path, '\ufeffa 1\n'); // a byte order mark is UTF-8, and is not part of the first line
    expect(parseZConfigFile(path).root.keys.map((k) => [k.key, k.value])).toEqual([['a', '1']]);
  });

  it('ends lines at \\r\\n, \\n or a lone \\r, as ZConfig does, and reads a long line in linear time', () => {
    expect(parse('a 1\rb 2\r\nc 3\n').root.keys.map((k) => [k.key, k.value, k.loc.line])).toEqual([['a', '1', 1], ['b', '2', 2], ['c', '3', 3]]);
    // A key, then a value with a character '.' does not match: once quadratic (a minute for 200 000 characters).
    const long = `${'a'.repeat(200_000)} ${'b'.repeat(200_000)}\u2028c`;
    expect(parse(long).root.keys[0]!.value).toHaveLength(200_002);
  });

  it('refuses a value that substitution grows past MAX_SUBSTITUTED_CHARS, naming its line, instead of running out of memory', () => {
    const defines = ['%define a xxxxxxxxxx'];
    for (const [from, to] of [['a', 'b'], ['b', 'c'], ['c', 'd'], ['d', 'e'], ['e', 'f'], ['f', 'g'], ['g', 'h']]) defines.push(`%define ${to} ${`$${from}`.repeat(10)}`);
    expect(errorOf(() => parse(defines.join('\n'))).message).toBe(`/cfg/main.conf:7: %define: the value grows past ${MAX_SUBSTITUTED_CHARS} characters after substitution`);
  });
});
