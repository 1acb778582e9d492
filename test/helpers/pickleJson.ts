// Converts decoded pickle values into the JSON shape the fixture manifests
// use (bytes as {"__bytes_hex__": …}), so both can be compared directly.

import { PickleFloat } from '../../src/wire/pickle.js';

export function toJsonish(v: unknown): unknown {
  if (v === null || typeof v === 'string' || typeof v === 'boolean' || typeof v === 'number') return v;
  if (typeof v === 'bigint') return Number(v);
  if (v instanceof PickleFloat) return v.value;
  if (Buffer.isBuffer(v)) return { __bytes_hex__: v.toString('hex') };
  if (Array.isArray(v)) return v.map(toJsonish);
  if (v instanceof Map) return Object.fromEntries([...v].map(([k, x]) => [String(k), toJsonish(x)]));
  if (typeof v === 'object') {
    const items = (v as { items?: unknown }).items;
    if (Array.isArray(items) && v.constructor && v.constructor.name.includes('Tuple')) return items.map(toJsonish);
    return Object.fromEntries(Object.entries(v as object).map(([k, x]) => [k, toJsonish(x)]));
  }
  return String(v);
}
