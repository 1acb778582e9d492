// The `<zrs>` schema (zc.zrs's, plus this project's own keys) over the
// ZConfig tree: validates every key and section and returns typed storage
// definitions whose `options` go straight to Primary.open / Secondary.open /
// FileStorage.open. Every error names the file, the line and the key.

import { existsSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { DEFAULT_RECONNECT } from '../../machines/secondaryConnection.js';
import type { ReplicationAddress } from '../ports/transport.js';
import { connectAddress, formatAddress, parseAddress } from '../replication/address.js';
import type { PrimaryOptions } from '../replication/primary.js';
import type { SecondaryOptions, SecondaryProtocol } from '../replication/secondary.js';
import type { OpenOptions } from '../storage/types.js';
import { sslSection } from './ssl.js';
import { ConfigError, parseZConfigFile, parseZConfigText, type ConfigDocument, type ConfigKey, type ConfigSection, type ParseOptions, type SourceLocation, where } from './zconfig.js';

/** The `<filestorage>` section (ZODB's keys this project supports). */
export interface FileStorageSettings {
  path: string;
  blobDir: string | null;
  readOnly: boolean;
  /** ZODB's `create`: start from an empty file, discarding an existing one. */
  create: boolean;
  /** Pack with garbage collection (stored for pack; serve does not pack). */
  packGc: boolean;
  loc: SourceLocation;
}

/** Exactly the Primary.open options a config can set (transport, clock, log come from the caller). */
export interface PrimaryConfigOptions extends Pick<PrimaryOptions, 'path' | 'blobDir' | 'fsync' | 'preallocate' | 'tls' | 'syncReplicas' | 'syncTimeoutMs' | 'auditPath' | 'sendShare' | 'heartbeatIntervalMs'> {
  replicateTo: ReplicationAddress;
}

/** Exactly the Secondary.open options a config can set. */
export interface SecondaryConfigOptions
  extends Pick<SecondaryOptions, 'path' | 'blobDir' | 'fsync' | 'preallocate' | 'transferBlobs' | 'protocol' | 'keepAliveDelayMs' | 'heartbeatTimeoutMs' | 'reconnect' | 'tls' | 'auditPath' | 'whenPromoted' | 'sendShare' | 'heartbeatIntervalMs'> {
  replicateFrom: ReplicationAddress;
  replicateTo?: ReplicationAddress;
}

interface StorageCommon {
  /** Node name for logs: `name`, else the section name, else the data file's path. */
  name: string;
  /** The `<zrs>` (or top-level `<filestorage>`) section. */
  loc: SourceLocation;
  storage: FileStorageSettings;
  /** `metrics-address`: where `zrs serve` serves this storage's Prometheus metrics (primaries and secondaries). */
  metricsAddress: ReplicationAddress | null;
}

export interface PrimaryConfig extends StorageCommon {
  kind: 'primary';
  options: PrimaryConfigOptions;
}

export interface SecondaryConfig extends StorageCommon {
  kind: 'secondary';
  options: SecondaryConfigOptions;
}

/** A plain top-level `<filestorage>`: opened and held, not replicated. */
export interface StandaloneConfig extends StorageCommon {
  kind: 'filestorage';
  options: { path: string; open: OpenOptions };
}

export type StorageConfig = PrimaryConfig | SecondaryConfig | StandaloneConfig;

export interface ZrsConfig {
  /** The main configuration file. */
  file: string;
  /** In file order. */
  storages: StorageConfig[];
}

export interface LoadOptions extends ParseOptions {
  /** Check that the directory of each `path` exists, as ZConfig's existing-dirpath does (default true). */
  checkDirectories?: boolean;
}

const ZRS_KEYS = new Set([
  'replicate-to',
  'replicate-from',
  'keep-alive-delay',
  'reconnect-delay',
  'reconnect-max-delay',
  'protocol',
  'transfer-blobs',
  'fsync',
  'preallocate',
  'metrics-address',
  'name',
  'sync-replicas',
  'sync-timeout',
  'audit-log',
  'send-share',
  'heartbeat-interval',
  'heartbeat-timeout',
]);
const SECONDARY_ONLY_KEYS = ['reconnect-delay', 'reconnect-max-delay', 'protocol', 'transfer-blobs', 'heartbeat-timeout'];
const FILESTORAGE_KEYS = new Set(['path', 'blob-dir', 'read-only', 'create', 'pack-gc']);
const KNOWN_IMPORTS = new Set(['zc.zrs', 'ZODB']);
const PROTOCOLS: readonly SecondaryProtocol[] = ['native', 'zrs2.0', 'zrs2.1'];
/** Most secondaries `sync-replicas` may wait for. */
const MAX_SYNC_REPLICAS = 1000;
/** Longest delay a config may ask for (one day). */
const MAX_DELAY_SECONDS = 86_400;
const LOCAL_HOSTS = new Set(['', 'localhost', '127.0.0.1', '::1', '0.0.0.0', '::']);
/** Hosts that listen on every interface. */
const WILDCARD_HOSTS = new Set(['', '0.0.0.0', '::']);
/** Where each key of a returned object was written, for errors found across storages. */
const keyLocations = new WeakMap<object, Map<string, SourceLocation>>();

function remember(target: object, keys: Map<string, ConfigKey>): void {
  keyLocations.set(target, new Map([...keys].map(([k, v]) => [k, v.loc])));
}

function keyLoc(target: object, key: string, fallback: SourceLocation): SourceLocation {
  return keyLocations.get(target)?.get(key) ?? fallback;
}

/**
 * Load and validate a configuration file.
 *
 * @example
 * const config = loadZrsConfig('/etc/zrs.conf');
 * for (const s of config.storages) if (s.kind === 'primary') await Primary.open({ ...s.options, log });
 */
export function loadZrsConfig(path: string, options: LoadOptions = {}): ZrsConfig {
  return interpretZrsConfig(parseZConfigFile(path, options), options);
}

/** Validate configuration text as if read from `file`. */
export function loadZrsConfigText(text: string, file = '<string>', options: LoadOptions = {}): ZrsConfig {
  return interpretZrsConfig(parseZConfigText(text, file, options), options);
}

/** Apply the schema to a parsed document. */
export function interpretZrsConfig(doc: ConfigDocument, options: LoadOptions = {}): ZrsConfig {
  const check = options.checkDirectories ?? true;
  for (const imp of doc.imports) {
    if (!KNOWN_IMPORTS.has(imp.name)) {
      throw ConfigError.at(imp.loc, `unknown package ${JSON.stringify(imp.name)} (known: ${[...KNOWN_IMPORTS].join(', ')})`, '%import');
    }
  }
  const root = doc.root;
  for (const k of root.keys) throw unknownKey(k, 'at the top level (keys belong inside <zrs> or <filestorage>)');
  const storages: StorageConfig[] = [];
  const names = new Map<string, ConfigSection>();
  for (const s of root.sections) {
    if (s.name !== null) {
      const id = `${s.type} ${s.name}`;
      const first = names.get(id);
      if (first) throw ConfigError.at(s.loc, `duplicate section <${id}> (first at ${where(first.loc)})`, `<${s.type}>`);
      names.set(id, s);
    }
    if (s.type === 'zrs') {
      // As ZConfig: an import applies to the sections after it.
      const at = doc.order.get(s) ?? 0;
      if (!doc.imports.some((i) => i.name === 'zc.zrs' && i.sectionsBefore <= at)) {
        const late = doc.imports.find((i) => i.name === 'zc.zrs');
        throw ConfigError.at(s.loc, `the <zrs> section type needs "%import zc.zrs" first${late ? ` (it comes after, at ${where(late.loc)})` : ''}`, '<zrs>');
      }
      storages.push(zrsSection(s, check));
    } else if (s.type === 'filestorage') {
      const fs = fileStorageSection(s, check);
      storages.push({
        kind: 'filestorage',
        name: s.name ?? fs.path,
        loc: s.loc,
        storage: fs,
        metricsAddress: null,
        options: { path: fs.path, open: { readOnly: fs.readOnly, create: fs.create ? 'truncate' : !fs.readOnly, blobDir: fs.blobDir ?? undefined } },
      });
    } else {
      throw ConfigError.at(s.loc, `unknown section type <${s.type}> (expected <zrs> or <filestorage>)`, `<${s.type}>`);
    }
  }
  checkDistinct(storages);
  return { file: doc.files[0] ?? root.loc.file, storages };
}

function zrsSection(s: ConfigSection, check: boolean): PrimaryConfig | SecondaryConfig {
  const keys = keyMap(s, ZRS_KEYS, '<zrs>');
  const inner = s.sections.filter((c) => c.type === 'filestorage');
  for (const c of s.sections) {
    if (c.type !== 'filestorage' && c.type !== 'ssl') throw ConfigError.at(c.loc, `unknown section type <${c.type}> inside <zrs> (expected <filestorage> or <ssl>)`, `<${c.type}>`);
  }
  const ssl = s.sections.filter((c) => c.type === 'ssl');
  if (ssl.length > 1) throw ConfigError.at(ssl[1]!.loc, `duplicate section: <zrs> holds at most one <ssl> (first at ${where(ssl[0]!.loc)})`, '<ssl>');
  if (inner.length === 0) throw ConfigError.at(s.loc, `<zrs> at ${where(s.loc)} needs a <filestorage> section holding the data file`, '<zrs>');
  if (inner.length > 1) throw ConfigError.at(inner[1]!.loc, `duplicate section: <zrs> holds one <filestorage> (first at ${where(inner[0]!.loc)})`, '<filestorage>');
  const storage = fileStorageSection(inner[0]!, check);
  const to = keys.get('replicate-to');
  const from = keys.get('replicate-from');
  if (!to && !from) {
    throw ConfigError.at(s.loc, 'needs replicate-to (a primary) or replicate-from (a secondary), or both (a secondary serving others)', '<zrs>');
  }
  const replicateTo = to ? listenAddress(to, '', check) : undefined;
  const replicateFrom = from ? address(from, '127.0.0.1', connectAddress) : undefined;
  if (replicateTo && replicateFrom && sameEndpoint(replicateTo, replicateFrom)) {
    throw ConfigError.at(to!.loc, `replicate-to ${JSON.stringify(to!.value)} is the address this storage replicates from (replicate-from at ${where(from!.loc)})`, 'replicate-to');
  }
  const nameKey = keys.get('name');
  if (nameKey && nameKey.value === '') throw ConfigError.at(nameKey.loc, 'needs a value', 'name');
  const common = {
    name: nameKey?.value ?? s.name ?? storage.path,
    loc: s.loc,
    storage,
    metricsAddress: keys.has('metrics-address') ? listenAddress(keys.get('metrics-address')!, '127.0.0.1', check) : null,
  };
  const fsync = optional(keys, 'fsync', boolean);
  const preallocateBytes = optional(keys, 'preallocate', bytes);
  const fill = preallocateBytes !== undefined ? { preallocate: preallocateBytes } : {};
  const blobDir = storage.blobDir ?? undefined;
  // Synchronous replication: a primary's commits wait for acks; a secondary takes it on when promoted.
  const syncReplicas = optional(keys, 'sync-replicas', count);
  const syncTimeoutSeconds = optional(keys, 'sync-timeout', (k) => seconds(k, false));
  const sync = {
    ...(syncReplicas !== undefined ? { syncReplicas } : {}),
    ...(syncTimeoutSeconds !== undefined ? { syncTimeoutMs: toMs(syncTimeoutSeconds)! } : {}),
  };
  const auditKey = keys.get('audit-log');
  const auditPath = auditKey ? auditLogPath(auditKey, storage.path, check) : undefined;
  const audit = auditPath !== undefined ? { auditPath } : {};
  const sendShare = optional(keys, 'send-share', share);
  const heartbeatKey = keys.get('heartbeat-interval');
  if (heartbeatKey && !replicateTo) throw ConfigError.at(heartbeatKey.loc, 'applies only to a storage that serves secondaries (a <zrs> with replicate-to)', 'heartbeat-interval');
  const heartbeatSeconds = optional(keys, 'heartbeat-interval', (k) => seconds(k, true));
  const serving = {
    ...(sendShare !== undefined ? { sendShare } : {}),
    ...(heartbeatSeconds !== undefined ? { heartbeatIntervalMs: toMs(heartbeatSeconds)! } : {}),
  };
  // <ssl>: TLS for both directions of this storage's replication links.
  const tls = ssl[0] ? sslSection(ssl[0], replicateTo !== undefined, check) : undefined;
  // zc.zrs accepts keep-alive-delay on any <zrs>; parse it everywhere, use it on secondaries.
  const keepAliveSeconds = optional(keys, 'keep-alive-delay', (k) => seconds(k, true));
  if (!replicateFrom) {
    for (const k of SECONDARY_ONLY_KEYS) {
      const key = keys.get(k);
      if (key) throw ConfigError.at(key.loc, 'applies only to a secondary (a <zrs> with replicate-from)', k);
    }
    if (storage.readOnly) throw ConfigError.at(inner[0]!.loc, 'a primary (no replicate-from) cannot be read-only', 'read-only');
    const primary: PrimaryConfig = {
      kind: 'primary',
      ...common,
      options: { path: storage.path, replicateTo: replicateTo!, blobDir, fsync, ...fill, ...sync, ...audit, ...serving, ...(tls ? { tls } : {}) },
    };
    remember(primary, keys);
    return primary;
  }
  const initial = optional(keys, 'reconnect-delay', (k) => seconds(k, false));
  const max = optional(keys, 'reconnect-max-delay', (k) => seconds(k, false));
  if (max !== undefined && max < (initial ?? 0)) {
    throw ConfigError.at(keys.get('reconnect-max-delay')!.loc, `must be at least reconnect-delay (${initial} s)`, 'reconnect-max-delay');
  }
  // Give the machine a consistent pair: a delay alone raises the cap to it, a cap alone lowers the delay.
  const reconnect =
    initial !== undefined || max !== undefined
      ? {
          initialMs: toMs(initial) ?? Math.min(DEFAULT_RECONNECT.initialMs, toMs(max)!),
          maxMs: toMs(max) ?? Math.max(DEFAULT_RECONNECT.maxMs, toMs(initial)!),
        }
      : undefined;
  const secondary: SecondaryConfig = {
    kind: 'secondary',
    ...common,
    options: {
      path: storage.path,
      replicateFrom,
      replicateTo,
      blobDir,
      fsync,
      ...fill,
      transferBlobs: optional(keys, 'transfer-blobs', boolean),
      protocol: optional(keys, 'protocol', protocol),
      keepAliveDelayMs: keepAliveSeconds ? keepAliveSeconds * 1000 : undefined,
      heartbeatTimeoutMs: toMs(optional(keys, 'heartbeat-timeout', (k) => seconds(k, true))),
      reconnect,
      ...audit,
      ...serving,
      ...(Object.keys(sync).length > 0 ? { whenPromoted: sync } : {}),
      ...(tls ? { tls } : {}),
    },
  };
  remember(secondary, keys);
  return secondary;
}

function fileStorageSection(s: ConfigSection, check: boolean): FileStorageSettings {
  const keys = keyMap(s, FILESTORAGE_KEYS, '<filestorage>');
  for (const c of s.sections) throw ConfigError.at(c.loc, `unknown section type <${c.type}> inside <filestorage>`, `<${c.type}>`);
  const pathKey = keys.get('path');
  if (!pathKey) throw ConfigError.at(s.loc, 'needs a path (the Data.fs file)', '<filestorage>');
  const path = nonEmpty(pathKey);
  if (check) checkPlace(pathKey, path, 'file');
  const blobKey = keys.get('blob-dir');
  const blobDir = blobKey ? nonEmpty(blobKey) : null;
  if (blobKey && check) checkPlace(blobKey, blobDir!, 'directory');
  const readOnly = optional(keys, 'read-only', boolean) ?? false;
  const create = optional(keys, 'create', boolean) ?? false;
  if (readOnly && create) throw ConfigError.at(keys.get('create')!.loc, 'cannot create a read-only storage', 'create');
  const settings: FileStorageSettings = { path, blobDir, readOnly, create, packGc: optional(keys, 'pack-gc', boolean) ?? true, loc: s.loc };
  remember(settings, keys);
  return settings;
}

/** Keys of a section by lowercased name; unknown and repeated keys are errors. */
function keyMap(s: ConfigSection, allowed: ReadonlySet<string>, section: string): Map<string, ConfigKey> {
  const out = new Map<string, ConfigKey>();
  for (const k of s.keys) {
    if (!allowed.has(k.key)) throw unknownKey(k, `in ${section} (known: ${[...allowed].join(', ')})`);
    const first = out.get(k.key);
    if (first) throw ConfigError.at(k.loc, `given twice in ${section} (first at ${where(first.loc)})`, k.rawKey);
    out.set(k.key, k);
  }
  return out;
}

function unknownKey(k: ConfigKey, context: string): ConfigError {
  return ConfigError.at(k.loc, `unknown key ${context}`, k.rawKey);
}

function optional<T>(keys: Map<string, ConfigKey>, name: string, convert: (k: ConfigKey) => T): T | undefined {
  const k = keys.get(name);
  return k ? convert(k) : undefined;
}

function nonEmpty(k: ConfigKey): string {
  if (k.value === '') throw ConfigError.at(k.loc, 'needs a value', k.rawKey);
  return k.value;
}

/** ZConfig's boolean: yes/true/on and no/false/off, any case. */
function boolean(k: ConfigKey): boolean {
  const v = k.value.toLowerCase();
  if (v === 'yes' || v === 'true' || v === 'on') return true;
  if (v === 'no' || v === 'false' || v === 'off') return false;
  throw ConfigError.at(k.loc, `not a boolean: ${JSON.stringify(k.value)} (use true/false, yes/no or on/off)`, k.rawKey);
}

function seconds(k: ConfigKey, zeroAllowed: boolean): number {
  if (!/^\d+(\.\d+)?$/.test(k.value)) throw ConfigError.at(k.loc, `not a number of seconds: ${JSON.stringify(k.value)}`, k.rawKey);
  const n = Number(k.value);
  if (!zeroAllowed && n === 0) throw ConfigError.at(k.loc, 'must be more than 0 seconds', k.rawKey);
  // Delays are kept in whole milliseconds: a smaller one would read as 0 (no delay, or off).
  if (n > 0 && n < 0.001) throw ConfigError.at(k.loc, `less than a millisecond: ${k.value} (use 0.001 or more${zeroAllowed ? ', or 0' : ''})`, k.rawKey);
  if (n > MAX_DELAY_SECONDS) throw ConfigError.at(k.loc, `at most ${MAX_DELAY_SECONDS} seconds`, k.rawKey);
  return n;
}

/** A share of the event loop: a decimal more than 0 and at most 1. */
function share(k: ConfigKey): number {
  if (!/^\d+(\.\d+)?$/.test(k.value)) throw ConfigError.at(k.loc, `not a decimal number: ${JSON.stringify(k.value)}`, k.rawKey);
  const n = Number(k.value);
  if (n <= 0 || n > 1) throw ConfigError.at(k.loc, 'must be more than 0 and at most 1', k.rawKey);
  return n;
}

/** A whole number of bytes, 0 … 1 GiB, with an optional KB, MB or GB (powers of 1024). */
function bytes(k: ConfigKey): number {
  const m = /^(\d+)\s*(KB|MB|GB)?$/i.exec(k.value);
  if (!m) throw ConfigError.at(k.loc, `not a size in bytes: ${JSON.stringify(k.value)} (e.g. 1048576, 1MB or 0)`, k.rawKey);
  const n = Number(m[1]) * 1024 ** ['', 'KB', 'MB', 'GB'].indexOf((m[2] ?? '').toUpperCase());
  if (n > 1024 ** 3) throw ConfigError.at(k.loc, 'at most 1GB', k.rawKey);
  return n;
}

/** A whole number of secondaries, 0 … MAX_SYNC_REPLICAS. */
function count(k: ConfigKey): number {
  if (!/^\d+$/.test(k.value)) throw ConfigError.at(k.loc, `not a whole number: ${JSON.stringify(k.value)}`, k.rawKey);
  const n = Number(k.value);
  if (n > MAX_SYNC_REPLICAS) throw ConfigError.at(k.loc, `at most ${MAX_SYNC_REPLICAS}`, k.rawKey);
  return n;
}

/** `audit-log PATH` or `audit-log off` (null: no audit log). */
function auditLogPath(k: ConfigKey, dataPath: string, check: boolean): string | null {
  const value = nonEmpty(k);
  if (value.toLowerCase() === 'off') return null;
  if (resolve(value) === resolve(dataPath)) throw ConfigError.at(k.loc, `is the data file itself (${JSON.stringify(dataPath)})`, k.rawKey);
  if (check) checkPlace(k, value, 'file');
  return value;
}

function toMs(s: number | undefined): number | undefined {
  return s === undefined ? undefined : Math.round(s * 1000);
}

function protocol(k: ConfigKey): SecondaryProtocol {
  const p = PROTOCOLS.find((x) => x === k.value.toLowerCase());
  if (!p) throw ConfigError.at(k.loc, `unknown protocol ${JSON.stringify(k.value)} (expected ${PROTOCOLS.join(', ')})`, k.rawKey);
  return p;
}

/** `parse`: parseAddress for where to listen, connectAddress for where to connect. */
function address(k: ConfigKey, defaultHost: string, parse: (text: string, defaultHost: string) => ReplicationAddress = parseAddress): ReplicationAddress {
  try {
    return parse(nonEmpty(k), defaultHost);
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError(k.loc.file, k.loc.line, (err as Error).message, k.rawKey, { cause: err });
  }
}

/** An address to listen at: a socket's directory must exist (the system says only "permission denied" otherwise). */
function listenAddress(k: ConfigKey, defaultHost: string, check: boolean): ReplicationAddress {
  const a = address(k, defaultHost);
  if (a.kind === 'unix' && check) checkPlace(k, a.path);
  return a;
}

/**
 * Like ZConfig's existing-dirpath: the file (or blob directory) may be
 * missing, its directory not; and what is there already must be of the kind
 * `path` names (`kind`), or the node fails only when it starts.
 */
function checkPlace(k: ConfigKey, path: string, kind?: 'file' | 'directory'): void {
  const dir = dirname(resolve(path));
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw ConfigError.at(k.loc, `directory ${JSON.stringify(dir)} does not exist`, k.rawKey);
  const found = kind && existsSync(path) ? statSync(path) : null;
  if (found && kind === 'file' && !found.isFile()) throw ConfigError.at(k.loc, `${JSON.stringify(path)} is ${found.isDirectory() ? 'a directory' : 'not a regular file'}, not a file`, k.rawKey);
  if (found && kind === 'directory' && !found.isDirectory()) throw ConfigError.at(k.loc, `${JSON.stringify(path)} is not a directory`, k.rawKey);
}

/** Would connecting to `from` reach the listener bound at `to`? (a storage replicating from itself) */
function sameEndpoint(to: ReplicationAddress, from: ReplicationAddress): boolean {
  if (to.kind === 'unix' || from.kind === 'unix') return to.kind === from.kind && resolve(formatAddress(to)) === resolve(formatAddress(from));
  if (to.port === 0 || to.port !== from.port) return false;
  const [toHost, fromHost] = [hostKey(to.host), hostKey(from.host)];
  // Every address of 127/8 reaches a listener on all interfaces of this host, as the named loopbacks do.
  return toHost === fromHost || ((LOCAL_HOSTS.has(fromHost) || isLoopbackV4(fromHost)) && hostsOverlap(toHost, fromHost));
}

/**
 * A host as the network sees it: names and IPv6 addresses are
 * case-insensitive, and an IPv4 address written as IPv6 (`::ffff:a.b.c.d`)
 * is that IPv4 address.
 */
function hostKey(host: string): string {
  const h = host.toLowerCase();
  return h.startsWith('::ffff:') && /^\d+\.\d+\.\d+\.\d+$/.test(h.slice(7)) ? h.slice(7) : h;
}

function isLoopbackV4(host: string): boolean {
  return /^127\.\d+\.\d+\.\d+$/.test(host);
}

/** Would binding both fail? Same socket path, or the same port on hosts that overlap. */
function sameListener(a: ReplicationAddress, b: ReplicationAddress): boolean {
  if (a.kind === 'unix' || b.kind === 'unix') return a.kind === b.kind && resolve(formatAddress(a)) === resolve(formatAddress(b));
  return a.port === b.port && hostsOverlap(hostKey(a.host), hostKey(b.host));
}

/**
 * Do listeners on these hosts share addresses? No host and `::` take every
 * address (both families), 0.0.0.0 every IPv4 one, localhost may be either
 * loopback; 127.0.0.1 and ::1 are apart.
 */
function hostsOverlap(a: string, b: string): boolean {
  const covers = (wide: string, h: string): boolean => WILDCARD_HOSTS.has(wide) && (wide !== '0.0.0.0' || !h.includes(':'));
  const loopback = (h: string): boolean => h === '127.0.0.1' || h === '::1';
  return a === b || covers(a, b) || covers(b, a) || (a === 'localhost' && loopback(b)) || (b === 'localhost' && loopback(a));
}

/** Two storages must not share a data file, a blob directory or a listening address. */
function checkDistinct(storages: StorageConfig[]): void {
  const paths = new Map<string, StorageConfig>();
  const blobs = new Map<string, StorageConfig[]>();
  const listens: Array<{ key: string; address: ReplicationAddress; storage: StorageConfig }> = [];
  const audits = new Map<string, StorageConfig>();
  for (const s of storages) {
    const p = resolve(s.storage.path);
    const other = paths.get(p);
    if (other) throw ConfigError.at(keyLoc(s.storage, 'path', s.storage.loc), `data file ${JSON.stringify(s.storage.path)} is also used by the storage at ${where(other.loc)}`, 'path');
    paths.set(p, s);
    if (s.storage.blobDir) {
      const b = resolve(s.storage.blobDir);
      const users = blobs.get(b) ?? [];
      // A secondary may share another storage's blob directory only with transfer-blobs false (in either order).
      const readsOnly = (x: StorageConfig): boolean => x.kind === 'secondary' && x.options.transferBlobs === false;
      const o = users.find((u) => !readsOnly(u) && !readsOnly(s));
      if (o) throw ConfigError.at(keyLoc(s.storage, 'blob-dir', s.storage.loc), `blob directory ${JSON.stringify(s.storage.blobDir)} is also used by the storage at ${where(o.loc)}`, 'blob-dir');
      blobs.set(b, [...users, s]);
    }
    // Replication and metrics listeners, each checked against every one before it (also the storage's own).
    const mine: Array<[key: string, address: ReplicationAddress | null | undefined]> = [
      ['replicate-to', s.kind === 'filestorage' ? undefined : s.options.replicateTo],
      ['metrics-address', s.metricsAddress],
    ];
    for (const [key, address] of mine) {
      if (!address || (address.kind === 'tcp' && address.port === 0)) continue;
      const o = listens.find((l) => sameListener(l.address, address));
      if (o) {
        const other = o.storage === s ? `this storage's ${o.key}` : `used by the storage at ${where(o.storage.loc)}${o.key === key ? '' : ` (its ${o.key})`}`;
        throw ConfigError.at(keyLoc(s, key, s.loc), `${key} ${formatAddress(address)} is also ${other}`, key);
      }
      listens.push({ key, address, storage: s });
    }
  }
  // After the data files: a shared data file also means a shared default audit log.
  for (const s of storages) {
    const auditPath = auditPathOf(s);
    if (auditPath !== null) {
      const a = resolve(auditPath);
      const data = storages.find((d) => resolve(d.storage.path) === a);
      if (data) throw ConfigError.at(keyLoc(s, 'audit-log', s.loc), `audit log ${JSON.stringify(auditPath)} is the data file of the storage at ${where(data.loc)}`, 'audit-log');
      const o = audits.get(a);
      if (o) throw ConfigError.at(keyLoc(s, 'audit-log', s.loc), `audit log ${JSON.stringify(auditPath)} is also used by the storage at ${where(o.loc)}`, 'audit-log');
      audits.set(a, s);
    }
  }
}

/** Where a storage's audit log goes (null: none; standalone storages have none). */
export function auditPathOf(s: StorageConfig): string | null {
  if (s.kind === 'filestorage') return null;
  const configured = s.options.auditPath;
  return configured === undefined ? `${s.storage.path}.audit` : configured;
}


export { ConfigError } from './zconfig.js';
