// Our own saved index (`<file>.zrs-index`; Python ZODB ignores it): the
// oid -> position map and tid samples as of a known end of the data file,
// checksummed and written atomically. It is trusted only if the data file
// still holds, at the recorded position, the very transaction header recorded.

import { createHash } from 'node:crypto';
import { rename, readFile, rm } from 'node:fs/promises';
import { TXN_HEADER_BYTES, readU64At, writeU64At } from './format.js';
import { BigMap } from './bigMap.js';
import { preadSync, writeFileSynced } from './fileio.js';
import { oidKeyAt, TidSamples, type OidKey, type ScanState } from './scan.js';

const MAGIC = Buffer.from('ZRSIDX01', 'latin1');
const FIXED_BYTES = 8 + 8 * 5 + 8 + 8 + TXN_HEADER_BYTES;
const DIGEST_BYTES = 32;

export function indexPathFor(dataPath: string): string {
  return `${dataPath}.zrs-index`;
}

export interface SavedIndex extends ScanState {
  end: number;
}

/** Write the index beside the data file (temp file, fsync, rename). */
export async function saveIndex(dataPath: string, fd: number, state: SavedIndex): Promise<void> {
  const n = state.index.size;
  const m = state.samples.count;
  const body = Buffer.allocUnsafe(FIXED_BYTES + n * 16 + m * 16);
  let off = 0;
  off += MAGIC.copy(body, off);
  for (const v of [state.end, state.lastTxnPos, state.txnCount, n]) {
    writeU64At(body, off, v);
    off += 8;
  }
  writeU64At(body, off, m);
  off += 8;
  off += (state.lastTid ?? Buffer.alloc(8)).copy(body, off);
  off += state.maxOid.copy(body, off);
  const header = state.lastTid ? preadSync(fd, state.lastTxnPos, TXN_HEADER_BYTES) : Buffer.alloc(TXN_HEADER_BYTES);
  off += header.copy(body, off);
  for (const [key, pos] of state.index) {
    if (typeof key === 'number') writeU64At(body, off, key);
    else body.write(key, off, 'latin1');
    writeU64At(body, off + 8, pos);
    off += 16;
  }
  for (let i = 0; i < m; i++) {
    state.samples.copyTid(i, body, off);
    writeU64At(body, off + 8, state.samples.positionAt(i));
    off += 16;
  }
  const digest = createHash('sha256').update(body).digest();
  const path = indexPathFor(dataPath);
  const tmp = `${path}.tmp`;
  await writeFileSynced(tmp, [body, digest], 'w');
  await rename(tmp, path);
}

/** Load a saved index, or null when it is missing, damaged or does not match the data file. */
export async function loadIndex(dataPath: string, fd: number, fileSize: number): Promise<SavedIndex | null> {
  let raw: Buffer;
  try {
    raw = await readFile(indexPathFor(dataPath));
  } catch {
    return null;
  }
  if (raw.length < FIXED_BYTES + DIGEST_BYTES || !raw.subarray(0, 8).equals(MAGIC)) return null;
  const body = raw.subarray(0, raw.length - DIGEST_BYTES);
  if (!createHash('sha256').update(body).digest().equals(raw.subarray(raw.length - DIGEST_BYTES))) return null;
  return decodeIndex(body, fd, fileSize);
}

function decodeIndex(body: Buffer, fd: number, fileSize: number): SavedIndex | null {
  let off = 8;
  const [end, lastTxnPos, txnCount, n, m] = [0, 1, 2, 3, 4].map((i) => readU64At(body, off + i * 8)) as [number, number, number, number, number];
  off += 40;
  if (body.length !== FIXED_BYTES + n * 16 + m * 16 || end > fileSize) return null;
  const lastTidRaw = Buffer.from(body.subarray(off, off + 8));
  const maxOid = Buffer.from(body.subarray(off + 8, off + 16));
  const header = body.subarray(off + 16, off + 16 + TXN_HEADER_BYTES);
  off += 16 + TXN_HEADER_BYTES;
  const lastTid = txnCount > 0 ? lastTidRaw : null;
  if (lastTid && !preadSync(fd, lastTxnPos, TXN_HEADER_BYTES).equals(header)) return null;
  const index = new BigMap<OidKey, number>(undefined, n);
  for (let i = 0; i < n; i++, off += 16) index.set(oidKeyAt(body, off), readU64At(body, off + 8));
  const samples = new TidSamples();
  for (let i = 0; i < m; i++, off += 16) samples.add(body.subarray(off, off + 8), readU64At(body, off + 8));
  return { end, lastTxnPos, txnCount, index, samples, lastTid, maxOid };
}

export async function removeIndex(dataPath: string): Promise<void> {
  await rm(indexPathFor(dataPath), { force: true });
}
