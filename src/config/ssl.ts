// The `<ssl>` section inside `<zrs>`: ZEO's keys (certificate, key,
// authenticate, check-hostname, server-hostname) turned into the TlsOptions a
// Primary or Secondary takes. `password-function` is not supported (keys must
// be unencrypted PEM); it is reported like any unknown key.

import { existsSync } from 'node:fs';
import type { TlsOptions } from '../node/tlsTransport.js';
import { ConfigError, type ConfigKey, type ConfigSection, where } from './zconfig.js';

const SSL_KEYS = new Set(['certificate', 'key', 'authenticate', 'check-hostname', 'server-hostname']);

/**
 * Parse an `<ssl>` section. `listens`: the storage serves secondaries
 * (replicate-to), so `authenticate` is required to verify their certificates.
 */
export function sslSection(s: ConfigSection, listens: boolean, checkFiles: boolean): TlsOptions {
  const keys = new Map<string, ConfigKey>();
  for (const k of s.keys) {
    if (!SSL_KEYS.has(k.key)) {
      const hint = k.key === 'password-function' ? ' (encrypted keys are not supported: use an unencrypted PEM key file)' : '';
      throw ConfigError.at(k.loc, `unknown key in <ssl>${hint} (known: ${[...SSL_KEYS].join(', ')})`, k.rawKey);
    }
    const first = keys.get(k.key);
    if (first) throw ConfigError.at(k.loc, `given twice in <ssl> (first at ${where(first.loc)})`, k.rawKey);
    keys.set(k.key, k);
  }
  for (const c of s.sections) throw ConfigError.at(c.loc, `unknown section type <${c.type}> inside <ssl>`, `<${c.type}>`);
  const path = (name: string): string | undefined => {
    const k = keys.get(name);
    if (!k) return undefined;
    if (k.value === '') throw ConfigError.at(k.loc, 'needs a value', k.rawKey);
    if (checkFiles && !existsSync(k.value)) throw ConfigError.at(k.loc, `${JSON.stringify(k.value)} does not exist`, k.rawKey);
    return k.value;
  };
  const certificate = path('certificate');
  if (certificate === undefined) throw ConfigError.at(s.loc, 'needs certificate (a PEM file with this node\'s certificate)', '<ssl>');
  const authenticate = path('authenticate');
  if (listens && authenticate === undefined) {
    throw ConfigError.at(s.loc, 'needs authenticate (a CA file or directory) on a storage with replicate-to: secondaries\' certificates are always verified', '<ssl>');
  }
  const check = keys.get('check-hostname');
  const serverHostname = keys.get('server-hostname');
  if (serverHostname && serverHostname.value === '') throw ConfigError.at(serverHostname.loc, 'needs a value', serverHostname.rawKey);
  const options: TlsOptions = { certificate };
  const key = path('key');
  if (key !== undefined) options.key = key;
  if (authenticate !== undefined) options.authenticate = authenticate;
  if (check) options.checkHostname = boolean(check);
  if (serverHostname) options.serverHostname = serverHostname.value;
  return options;
}

function boolean(k: ConfigKey): boolean {
  const v = k.value.toLowerCase();
  if (v === 'yes' || v === 'true' || v === 'on') return true;
  if (v === 'no' || v === 'false' || v === 'off') return false;
  throw ConfigError.at(k.loc, `not a boolean: ${JSON.stringify(k.value)} (use true/false, yes/no or on/off)`, k.rawKey);
}
