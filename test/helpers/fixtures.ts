// Test helpers: locate ../shared/fixtures (failing loudly when absent), copy
// fixture files into fresh temp directories, and remove them afterwards.

import { existsSync } from 'node:fs';
import { chmod, cp, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const FIXTURES = fileURLToPath(new URL('../../../shared/fixtures/', import.meta.url));

/** Absolute path of a fixture; throws (never skips) when it is missing. */
export function fixturePath(...parts: string[]): string {
  const p = join(FIXTURES, ...parts);
  if (!existsSync(p)) throw new Error(`fixture missing: ${p} (the shared fixtures must sit beside the project)`);
  return p;
}

export async function readManifest<T = any>(dir: string, name = 'manifest.json'): Promise<T> {
  return JSON.parse(await readFile(fixturePath('zodb', dir, name), 'utf8')) as T;
}

const made: string[] = [];

/** Remove `dir` in cleanupTempDirs() too (for directories made elsewhere). */
export function removeLater(dir: string): void {
  made.push(dir);
}

/** A new empty temp directory, removed by cleanupTempDirs(). */
export async function tempDir(prefix = 'zrs-test-'): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), prefix));
  made.push(d);
  return d;
}

/** Copy `zodb/<dir>` (Data.fs and any blob dir) into a temp dir; returns the temp dir. */
export async function copyZodbFixture(dir: string): Promise<string> {
  const d = await tempDir();
  await cp(fixturePath('zodb', dir), d, { recursive: true });
  await makeWritable(d);
  return d;
}

/** Fixtures are read-only; their copies must not be. */
async function makeWritable(path: string): Promise<void> {
  await chmod(path, 0o755);
  for (const e of await readdir(path, { withFileTypes: true })) {
    const p = join(path, e.name);
    if (e.isDirectory()) await makeWritable(p);
    else await chmod(p, 0o644);
  }
}

export async function cleanupTempDirs(): Promise<void> {
  while (made.length) await rm(made.pop()!, { recursive: true, force: true });
}

export const hex = (b: Buffer | null | undefined): string | null => (b ? b.toString('hex') : null);
export const h2b = (s: string): Buffer => Buffer.from(s, 'hex');
