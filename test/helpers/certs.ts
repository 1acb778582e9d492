// Test certificates made at test time with the `openssl` command: two
// unrelated CAs, a server certificate for 127.0.0.1/localhost, a client
// certificate, and an expired server certificate (`openssl ca` with an
// explicit -startdate/-enddate in the past). EC keys keep it fast.

import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { removeLater } from './fixtures.js';

export interface CertPair {
  certificate: string;
  key: string;
}

export interface TestCerts {
  dir: string;
  /** The CA that signed server, client and expired. */
  ca: string;
  /** A directory holding only ca (for `authenticate` given as a directory). */
  caDir: string;
  /** An unrelated CA that signed otherServer and otherClient. */
  otherCa: string;
  server: CertPair;
  client: CertPair;
  /** Signed by ca, valid only on 2020-01-01. */
  expired: CertPair;
  /** Signed by otherCa, for 127.0.0.1/localhost. */
  otherServer: CertPair;
  otherClient: CertPair;
  /** Signed by ca, for the DNS name other.example only. */
  wrongHost: CertPair;
}

const CA_CONFIG = `[ ca ]
default_ca = tca
[ tca ]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = pol
copy_extensions = copy
unique_subject = no
[ pol ]
commonName = supplied
`;

function openssl(cwd: string, args: string[]): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

function makeCa(dir: string, name: string): string {
  const d = join(dir, name);
  mkdirSync(d);
  writeFileSync(join(d, 'ca.cnf'), CA_CONFIG);
  writeFileSync(join(d, 'index.txt'), '');
  writeFileSync(join(d, 'serial'), '01\n');
  openssl(d, ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '3650', '-subj', `/CN=${name}`]);
  return d;
}

function sign(caDir: string, name: string, san: string | null, dates: string[] = ['-days', '365']): CertPair {
  const ext = san ? ['-addext', `subjectAltName=${san}`] : [];
  openssl(caDir, ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`, ...ext]);
  openssl(caDir, ['ca', '-batch', '-config', 'ca.cnf', '-cert', 'ca.pem', '-keyfile', 'ca.key', '-in', `${name}.csr`, '-out', `${name}.pem`, ...dates]);
  return { certificate: join(caDir, `${name}.pem`), key: join(caDir, `${name}.key`) };
}

/** Make every certificate the TLS tests use, in a new temporary directory. */
export function makeTestCerts(): TestCerts {
  const dir = mkdtempSync(join(tmpdir(), 'zrs-certs-'));
  removeLater(dir);
  const a = makeCa(dir, 'ca-a');
  const b = makeCa(dir, 'ca-b');
  const caDir = join(dir, 'trusted');
  mkdirSync(caDir);
  execFileSync('cp', [join(a, 'ca.pem'), join(caDir, 'a.pem')]);
  const loopback = 'IP:127.0.0.1,DNS:localhost';
  return {
    dir,
    ca: join(a, 'ca.pem'),
    caDir,
    otherCa: join(b, 'ca.pem'),
    server: sign(a, 'server', loopback),
    client: sign(a, 'client', null),
    expired: sign(a, 'expired', loopback, ['-startdate', '20200101000000Z', '-enddate', '20200102000000Z']),
    otherServer: sign(b, 'server', loopback),
    otherClient: sign(b, 'client', null),
    wrongHost: sign(a, 'wronghost', 'DNS:other.example'),
  };
}
