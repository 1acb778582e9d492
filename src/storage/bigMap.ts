// Maps and sets keyed by oid or record position that may outgrow V8's limit
// of 2^24 (16,777,216) entries in one Map or Set: a storage's index holds one
// entry per object, pack's and verify's tables one per object or record, and
// large ZODB databases hold more objects than that. Each starts as a single
// Map or Set (the common case keeps V8's own speed and insertion order) and
// splits into shards by key once it holds SPLIT_AT entries; split, it is
// iterated shard by shard.

/** Keys: non-negative integers (oids as numbers, positions) or strings (oids past 2^53). */
export type BigKey = number | string;

/** 64 shards: a key's shard is the top SHARD_BITS bits of its hash. */
const SHARD_BITS = 6;
const SHARDS = 1 << SHARD_BITS;
/** Well below the limit, so no single shard reaches it before 64 × 2^24 entries in all. */
const SPLIT_AT = 1 << 23;

/**
 * A key's shard: the top 6 bits of a multiplicative hash (positions of
 * records of one size are a multiple apart, and a plain remainder put them
 * all in one shard; a string's last character has as few values as its
 * alphabet: hex gave 16 shards).
 */
function shardOf(key: BigKey): number {
  if (typeof key === 'number') return Math.imul((key >>> 0) ^ ((key / 4294967296) >>> 0), 0x9e3779b1) >>> (32 - SHARD_BITS);
  let h = 0;
  for (let i = Math.max(0, key.length - 4); i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x9e3779b1);
  return h >>> (32 - SHARD_BITS);
}

/** A Map past 2^24 entries (see above); used wherever a Map of one entry per object or record was. */
export class BigMap<K extends BigKey, V> implements Map<K, V> {
  private one: Map<K, V> | null = new Map();
  private shards: Map<K, V>[] = [];
  private count = 0;

  /**
   * `splitAt`: entries held in one Map before it splits (default 2^23).
   * `expected`: entries it will hold, when known (a saved index): as many
   * or more than `splitAt`, it starts split rather than copy them all over
   * half way.
   */
  constructor(
    private readonly splitAt = SPLIT_AT,
    expected = 0,
  ) {
    if (expected >= splitAt) this.split(new Map());
  }

  get size(): number {
    return this.one !== null ? this.one.size : this.count;
  }

  get(key: K): V | undefined {
    return this.one !== null ? this.one.get(key) : this.shards[shardOf(key)]!.get(key);
  }

  has(key: K): boolean {
    return this.one !== null ? this.one.has(key) : this.shards[shardOf(key)]!.has(key);
  }

  set(key: K, value: V): this {
    const one = this.one;
    if (one !== null) {
      one.set(key, value);
      if (one.size >= this.splitAt) this.split(one);
      return this;
    }
    const shard = this.shards[shardOf(key)]!;
    const before = shard.size;
    shard.set(key, value);
    this.count += shard.size - before;
    return this;
  }

  delete(key: K): boolean {
    if (this.one !== null) return this.one.delete(key);
    const deleted = this.shards[shardOf(key)]!.delete(key);
    if (deleted) this.count--;
    return deleted;
  }

  clear(): void {
    this.one = new Map();
    this.shards = [];
    this.count = 0;
  }

  forEach(callback: (value: V, key: K, map: Map<K, V>) => void, thisArg?: unknown): void {
    for (const [k, v] of this.entries()) callback.call(thisArg, v, k, this);
  }

  *entries(): MapIterator<[K, V]> {
    if (this.one !== null) yield* this.one.entries();
    else for (const shard of this.shards) yield* shard.entries();
    return undefined;
  }

  *keys(): MapIterator<K> {
    for (const [k] of this.entries()) yield k;
    return undefined;
  }

  *values(): MapIterator<V> {
    for (const [, v] of this.entries()) yield v;
    return undefined;
  }

  [Symbol.iterator](): MapIterator<[K, V]> {
    return this.entries();
  }

  get [Symbol.toStringTag](): string {
    return 'BigMap';
  }

  private split(one: Map<K, V>): void {
    this.shards = Array.from({ length: SHARDS }, () => new Map<K, V>());
    for (const [k, v] of one) this.shards[shardOf(k)]!.set(k, v);
    this.count = one.size;
    this.one = null;
  }
}

/** A Set past 2^24 entries, as BigMap. */
export class BigSet<K extends BigKey> {
  private readonly map: BigMap<K, true>;

  constructor(splitAt = SPLIT_AT) {
    this.map = new BigMap<K, true>(splitAt);
  }

  get size(): number {
    return this.map.size;
  }

  has(key: K): boolean {
    return this.map.has(key);
  }

  add(key: K): this {
    this.map.set(key, true);
    return this;
  }

  delete(key: K): boolean {
    return this.map.delete(key);
  }

  [Symbol.iterator](): MapIterator<K> {
    return this.map.keys();
  }
}
